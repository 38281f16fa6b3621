//! `cargo xtask image`: the container image of deploy/Containerfile, built with podman, then
//! checked from its own files: exported and run in a chroot (this machine's podman cannot run
//! containers: crun's setrlimit needs CAP_SYS_RESOURCE), where the daemon must print its
//! version and attach its eBPF programs with the image's libraries alone.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    command::{output, run},
    setup::{self, as_root},
};

/// The image's name, as the DaemonSet refers to it.
pub fn tag() -> String {
    format!("kafka-tracer:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the image from the release binary (already built) and checks it.
pub fn build(root: &Path) -> anyhow::Result<()> {
    setup::podman()?;
    let stage = root.join("target/image");
    let rootfs = stage.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let bin = root.join("target/release/kafka-tracer");
    // The daemon and every library the dynamic loader would map, at the same paths.
    let libs = output(Command::new("ldd").arg(&bin))?;
    let files = std::iter::once(PathBuf::from("/usr/local/bin/kafka-tracer")).chain(
        libs.split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from),
    );
    for file in files {
        let to = rootfs.join(file.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("has a parent"))?;
        let from = if file.starts_with("/usr/local/bin") {
            bin.clone()
        } else {
            file
        };
        // Follows symlinks: the soname path holds the library itself.
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    run(as_root("podman".as_ref())
        .args(["build", "--quiet", "--tag", &tag(), "--file"])
        .arg(root.join("deploy/Containerfile"))
        .arg(&stage))?;
    check(&stage.join("check"))?;
    println!("image {} built and checked", tag());
    Ok(())
}

/// Exports the image's files to `dir` and runs its daemon there.
fn check(dir: &Path) -> anyhow::Result<()> {
    // A check cut short may have left its mounts: never delete through them.
    unmount(dir);
    let _ = run(as_root("rm".as_ref())
        .args(["-rf", "--one-file-system"])
        .arg(dir));
    std::fs::create_dir_all(dir)?;
    let id = output(as_root("podman".as_ref()).args(["create", &tag()]))?;
    let id = id.trim();
    let export = as_root("podman".as_ref())
        .args(["export", id])
        .stdout(Stdio::piped())
        .spawn()
        .context("podman export")?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(export.stdout.context("podman export output")?)
        .status()?;
    run(as_root("podman".as_ref()).args(["rm", id]))?;
    if !untar.success() {
        bail!("unpacking the image failed");
    }
    let version = output(
        as_root("chroot".as_ref())
            .arg(dir)
            .args(["/usr/local/bin/kafka-tracer", "--version"]),
    )?;
    if version.trim() != format!("kafka-tracer {}", env!("CARGO_PKG_VERSION")) {
        bail!("the image's daemon printed {version:?}");
    }
    // The kernel interfaces a container runtime would give it.
    for (what, flag) in [("proc", "--bind"), ("sys", "--rbind")] {
        std::fs::create_dir_all(dir.join(what))?;
        run(as_root("mount".as_ref())
            .arg(flag)
            .arg(format!("/{what}"))
            .arg(dir.join(what)))?;
    }
    let attached = attach_in(dir);
    unmount(dir);
    attached
}

fn unmount(dir: &Path) {
    for what in ["sys", "proc"] {
        if dir.join(what).exists() {
            let _ = as_root("umount".as_ref())
                .arg("-R")
                .arg(dir.join(what))
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Starts the image's daemon in the chroot `dir`, waits for its programs to attach, and stops
/// it with SIGINT, expecting a clean exit.
fn attach_in(dir: &Path) -> anyhow::Result<()> {
    let log = dir.with_extension("log");
    let mut child = as_root("chroot".as_ref())
        .arg(dir)
        .args([
            "/usr/local/bin/kafka-tracer",
            "--ports",
            "1",
            "--metrics-addr",
            "off",
            "--traces-exporter",
            "none",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("running the image's daemon")?;
    let end = Instant::now() + Duration::from_secs(30);
    let attached = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("capture attached") {
            break true;
        }
        if Instant::now() > end || child.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signalling our own child.
    unsafe { kill(child.id() as i32, 2) };
    let status = child.wait()?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !attached || !status.success() {
        bail!("the image's daemon did not attach and exit cleanly ({status}):\n{text}");
    }
    Ok(())
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
