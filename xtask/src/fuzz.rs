//! `cargo xtask fuzz`: runs every cargo-fuzz target of fuzz/ with libFuzzer's memory and time
//! limits, the `session` target seeded from the recorded real traffic in
//! tracer/tests/fixtures. Any crash, leak, allocation over the limit or hang fails the command.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::setup;

pub const TARGETS: [&str; 3] = ["session", "decoders", "records"];

/// Runs each target for `seconds`.
pub fn run(root: &Path, seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let nightly = setup::ebpf_toolchain(root)?;
    seed_session_corpus(root)?;
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let mut summary = Vec::new();
    for t in targets {
        let out = Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .arg(format!("+{nightly}"))
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

/// Writes each recorded connection as an input of the `session` target: 64-byte pieces, each
/// behind a control byte (direction bit, no loss, length class 3).
fn seed_session_corpus(root: &Path) -> anyhow::Result<()> {
    let corpus = root.join("fuzz/corpus/session");
    std::fs::create_dir_all(&corpus)?;
    let fixtures = root.join("tracer/tests/fixtures");
    let cases =
        std::fs::read_dir(&fixtures).with_context(|| format!("reading {}", fixtures.display()))?;
    for case in cases.flatten().filter(|e| e.path().is_dir()) {
        let recordings = std::fs::read_dir(case.path())
            .with_context(|| format!("reading {}", case.path().display()))?;
        for rec in recordings.flatten().map(|e| e.path()) {
            if rec.extension().is_none_or(|x| x != "rec") {
                continue;
            }
            let bytes =
                std::fs::read(&rec).with_context(|| format!("reading {}", rec.display()))?;
            let mut seed = vec![0u8];
            let mut at = 0;
            while at + 5 <= bytes.len() {
                let len =
                    u32::from_le_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
                let ctl = if bytes[at] == 0 { 0x30 } else { 0xb0 };
                for piece in bytes[at + 5..(at + 5 + len).min(bytes.len())].chunks(64) {
                    seed.push(ctl);
                    seed.extend_from_slice(piece);
                }
                at += 5 + len;
            }
            let name = format!(
                "{}-{}",
                case.file_name().to_string_lossy(),
                rec.file_name().unwrap_or_default().to_string_lossy()
            );
            std::fs::write(corpus.join(&name), seed)
                .with_context(|| format!("writing fuzz seed {name}"))?;
        }
    }
    Ok(())
}
