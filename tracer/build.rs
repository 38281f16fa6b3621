//! Builds the eBPF programs (`tracer-ebpf`) with the pinned nightly and bpf-linker, and leaves
//! the object in OUT_DIR, where `capture` embeds it: `cargo build` alone gives a runnable daemon.
use anyhow::{Context as _, anyhow};

/// Nightly that compiles the eBPF crate. Its LLVM major must match bpf-linker's; keep in step
/// with `xtask/src/setup.rs`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("tracer crate has no parent directory"))?
        .join("tracer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs the pinned nightly, rust-src and bpf-linker")
}
