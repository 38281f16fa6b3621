//! `cargo xtask test`: everything a change must pass, in the order that fails fastest: set-up,
//! formatting, the manifest, lints, the build, every test (unit, kernel, end-to-end), a short
//! fuzz of each decoder, and the container image.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cargo, clients, fuzz, image, kernels, manifest, setup, toolchain};

/// Runs it all; `args` go to `cargo test` (a test name filter, say).
pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    setup::all(root)?;
    setup::test_env(root)?;
    let clients = clients::install(root)?;
    let kernels = kernels::install()?;
    cargo(root, &["fmt", "--all", "--", "--check"])
        .context("formatting differs: run `cargo fmt --all`")?;
    manifest::run(root, true)?;
    cargo(
        root,
        &[
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // Default members (all but the eBPF crate, which build.rs compiles for the bpf
    // target). Release: the tests drive real traffic, and share the build with
    // `cargo xtask run`.
    cargo(root, &["build", "--release", "--all-targets"])?;
    // The end-to-end scenarios each append a summary line here.
    let summary = root.join("target/e2e-summary.txt");
    let _ = std::fs::remove_file(&summary);
    let mut test = setup::as_root("cargo".as_ref());
    clients.export(&mut test);
    test.env(kernels::VAR, &kernels);
    test.env("RUSTUP_TOOLCHAIN", toolchain::USERSPACE)
        .current_dir(root)
        .args(["test", "--release"])
        .args(args);
    let (status, passed, failed) = run_counting_tests(&mut test)?;
    if let Ok(lines) = std::fs::read_to_string(&summary) {
        let mut lines: Vec<&str> = lines.lines().collect();
        lines.sort();
        println!("\nend-to-end summary:\n{}\n", lines.join("\n"));
    }
    if !status.success() {
        bail!("tests failed ({status}): {passed} passed, {failed} failed");
    }
    // A short run of every fuzz target: seconds, not minutes (`cargo xtask fuzz` is the
    // long one). Then the container image, built and run from its own files.
    fuzz::run(root, 10, &[])?;
    image::build(root)?;
    // One closing line for the whole run: cargo's own last line is a doc-test summary.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, passing its output through and adding up its `test result:` lines.
fn run_counting_tests(cmd: &mut Command) -> anyhow::Result<(std::process::ExitStatus, u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    let count = |line: &str, word: &str| -> u64 {
        line.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if line.starts_with("test result:") {
            passed += count(&line, "passed");
            failed += count(&line, "failed");
        }
    }
    Ok((child.wait()?, passed, failed))
}
