//! `cargo xtask fuzz`: runs every cargo-fuzz target of fuzz/ with libFuzzer's memory and time
//! limits, the `session`, `decoders` and `skim` targets seeded from the recorded real traffic in
//! tracer/tests/fixtures (whole connections and their single frames), and every target with
//! the inputs that once failed it (fuzz/regressions/<target>, committed). Any crash, leak,
//! allocation over the limit or hang fails the command.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::toolchain;

pub const TARGETS: [&str; 4] = ["session", "decoders", "records", "skim"];

/// Runs each target for `seconds`.
pub fn run(root: &Path, seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let nightly = toolchain::ebpf(root)?;
    seed_corpora(root)?;
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let mut summary = Vec::new();
    for t in targets {
        let out = toolchain::cargo_of(&nightly)
            .current_dir(root.join("fuzz"))
            .args(["fuzz", "run", "-O", t, "--"])
            // No allocation may exceed 128 MB (the decoders' bounds are 1 MiB frames and
            // batches in the targets), no input may take 10 s.
            .args([
                format!("-max_total_time={seconds}"),
                "-rss_limit_mb=1024".into(),
                "-malloc_limit_mb=128".into(),
                "-timeout=10".into(),
            ])
            .output()
            .with_context(|| format!("starting cargo fuzz for {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let done = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("no summary")
            .to_string();
        let cov = log
            .lines()
            .rev()
            .find(|l| l.contains(" cov: "))
            .and_then(|l| l.split(" cov: ").nth(1))
            .and_then(|c| c.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        if !out.status.success() {
            eprintln!("{log}");
            bail!(
                "fuzz target {t} failed ({}); the input is under fuzz/artifacts/{t}/",
                out.status
            );
        }
        summary.push(format!("fuzz {t}: {done}, coverage {cov}, 0 crashes"));
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

/// One recorded connection: its data records, each (direction, bytes); direction 0 is what the
/// client sent. The format is tracer/tests/fixtures/README.md's.
fn recording(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut records = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let end = (at + 5 + len).min(bytes.len());
        records.push((bytes[at], &bytes[at + 5..end]));
        at = end;
    }
    records
}

/// The frames (size prefix removed) of one direction's bytes.
fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(size) = stream.get(at..at + 4) {
        let size = u32::from_be_bytes(size.try_into().expect("4 bytes")) as usize;
        let Some(frame) = stream.get(at + 4..at + 4 + size) else {
            break;
        };
        out.push(frame);
        at += 4 + size;
    }
    out
}

/// Seeds from every recorded connection: for `session`, the connection as 64-byte pieces each
/// behind a control byte (direction bit, no loss, length class 3); for `decoders`, each request
/// frame and each response frame behind its request's API key and version; for `skim`, the
/// requests the client sent and the responses it received, behind a segment seed and the
/// requests' length.
fn seed_corpora(root: &Path) -> anyhow::Result<()> {
    let fixtures = root.join("tracer/tests/fixtures");
    let cases =
        std::fs::read_dir(&fixtures).with_context(|| format!("reading {}", fixtures.display()))?;
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for case in cases.flatten().filter(|e| e.path().is_dir()) {
        let recordings = std::fs::read_dir(case.path())
            .with_context(|| format!("reading {}", case.path().display()))?;
        for rec in recordings.flatten().map(|e| e.path()) {
            if rec.extension().is_none_or(|x| x != "rec") {
                continue;
            }
            let bytes =
                std::fs::read(&rec).with_context(|| format!("reading {}", rec.display()))?;
            let name = format!(
                "{}-{}",
                case.file_name().to_string_lossy(),
                rec.file_name().unwrap_or_default().to_string_lossy()
            );
            let records = recording(&bytes);
            let mut session = vec![0u8];
            let mut streams = [Vec::new(), Vec::new()];
            for (dir, data) in &records {
                for piece in data.chunks(64) {
                    session.push(if *dir == 0 { 0x30 } else { 0xb0 });
                    session.extend_from_slice(piece);
                }
                streams[usize::from(*dir != 0)].extend_from_slice(data);
            }
            seeds.push(("session", name.clone(), session));
            let sent = (streams[0].len() as u32).to_le_bytes();
            let skim = [&[7u8], &sent[..], &streams[0], &streams[1]].concat();
            seeds.push(("skim", name.clone(), skim));
            // Requests name the key and version their responses (same correlation id) answer.
            let mut asked = std::collections::HashMap::new();
            for (i, request) in frames(&streams[0]).into_iter().enumerate() {
                if let (Some(kv), Some(corr)) = (request.get(..4), request.get(4..8)) {
                    asked.insert(corr.to_vec(), [kv[1], kv[3]]);
                }
                seeds.push((
                    "decoders",
                    format!("{name}-req{i}"),
                    [&[0u8], request].concat(),
                ));
            }
            for (i, response) in frames(&streams[1]).into_iter().enumerate() {
                if let Some(kv) = response.get(..4).and_then(|corr| asked.get(corr)) {
                    let seed = [&[1u8], &kv[..], response].concat();
                    seeds.push(("decoders", format!("{name}-resp{i}"), seed));
                }
            }
        }
    }
    for target in TARGETS {
        let dir = root.join("fuzz/regressions").join(target);
        for input in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = input.file_name().to_string_lossy().into_owned();
            let seed = std::fs::read(input.path())
                .with_context(|| format!("reading {}", input.path().display()))?;
            seeds.push((target, format!("regression-{name}"), seed));
        }
    }
    for (target, name, seed) in seeds {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::write(corpus.join(&name), seed)
            .with_context(|| format!("writing fuzz seed {target}/{name}"))?;
    }
    Ok(())
}
