//! The Rust toolchains the workspace builds with, and the one way xtask runs cargo.
//!
//! xtask itself builds with whatever toolchain rustup has as its default: the repository root has
//! no `rust-toolchain.toml`, because a pin to a toolchain that is not installed stops every cargo
//! command before xtask can run when rustup does not install pins by itself
//! (`RUSTUP_AUTO_INSTALL=0`, as on many CI images). xtask then installs the pinned toolchains
//! and runs every other cargo command through them.

use std::{path::Path, process::Command};

use anyhow::{Context as _, anyhow};

use crate::command::{output, run};

/// The userspace toolchain: aya 0.16 needs rustc 1.98 or later (the workspace's
/// `rust-version`), which the stable toolchains of common distributions and images predate.
pub const USERSPACE: &str = "1.99.1";

/// `cargo` of the userspace toolchain (through rustup's proxy, which `RUSTUP_TOOLCHAIN` steers
/// past any toolchain file).
pub fn cargo() -> Command {
    cargo_of(USERSPACE)
}

/// `cargo` of toolchain `name`.
pub fn cargo_of(name: &str) -> Command {
    let mut c = Command::new("cargo");
    c.env("RUSTUP_TOOLCHAIN", name);
    c
}

/// The eBPF crate's pinned nightly, from tracer-ebpf/rust-toolchain.toml (also read by
/// tracer/build.rs).
pub fn ebpf(root: &Path) -> anyhow::Result<String> {
    let file = root.join("tracer-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"').to_string())
        .ok_or_else(|| anyhow!("no `channel = ...` in {}", file.display()))
}

/// Installs toolchain `name` with `components` unless both are present.
pub fn install(name: &str, components: &[&str]) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        name,
    ]));
    if let Ok(list) = &installed
        && components.iter().all(|c| {
            list.lines()
                .any(|l| l.starts_with(&format!("{c}-")) || l == *c)
        })
    {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", name, "--profile", "minimal"]);
    for c in components {
        cmd.args(["--component", c]);
    }
    run(&mut cmd)
}
