//! Builds the eBPF programs (`tracer-ebpf`) with the pinned nightly and bpf-linker, and leaves
//! the object in OUT_DIR, where `capture` embeds it: `cargo build` alone gives a runnable daemon.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("tracer crate has no parent directory"))?
        .join("tracer-ebpf");
    // The pinned nightly, from the file that also pins it for `cargo xtask setup`.
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let pin = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let toolchain = pin
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"'))
        .ok_or_else(|| anyhow!("no `channel = ...` in {}", toolchain_file.display()))?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    // aya-build forwards every line the nested cargo prints as a `cargo:warning`, which cargo
    // then replays on each build: quiet keeps only its errors and real warnings.
    // SAFETY: the build script is single-threaded here; nothing reads the environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs the pinned nightly, rust-src and bpf-linker")
}
