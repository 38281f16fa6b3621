//! The kernels the capture tests also run on under qemu: Debian's cloud kernels (BTF, BPF,
//! tracepoints, a serial console built in), one per kernel line that users' nodes run, taken
//! from the Debian registry with a private apt configuration (the machine's own sources and
//! state are left alone) and kept in the cache outside `target/`, one directory per line with
//! its `vmlinuz` and the package it came from.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{
    command::{output, run},
    setup::apt_package,
};

/// A kernel line: the Debian suite that ships it and its package's name up to the ABI number.
struct Line {
    /// The directory name in the cache, and the version the tests announce.
    name: &'static str,
    suite: &'static str,
    /// `linux-image-<prefix><abi>-cloud-amd64`; the newest ABI the suite serves is taken.
    prefix: &'static str,
}

/// 5.10 (Debian 11, Amazon Linux 2's line): neither `bpf_loop` nor the `sock:*_length`
/// tracepoints. 6.1 (Debian 12): `bpf_loop`, no `sock:*_length` tracepoints.
const LINES: [Line; 2] = [
    Line {
        name: "5.10",
        suite: "bullseye",
        prefix: "5.10.0-",
    },
    Line {
        name: "6.1",
        suite: "bookworm",
        prefix: "6.1.0-",
    },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The variable that hands the kernels' directory to the tests.
pub const VAR: &str = "KAFKA_TRACER_KERNELS";

/// qemu and every kernel line, installed when missing; the directory holding `<line>/vmlinuz`.
pub fn install() -> anyhow::Result<PathBuf> {
    apt_package("qemu-system-x86", &["qemu-system-x86_64"])?;
    let dir = crate::clients::cache_dir()?.join("kernels");
    for line in &LINES {
        let target = dir.join(line.name);
        if target.join("vmlinuz").is_file() {
            continue;
        }
        fetch(line, &target).with_context(|| {
            format!(
                "fetching Debian's {} cloud kernel ({}) for the kernel tests",
                line.name, line.suite
            )
        })?;
    }
    Ok(dir)
}

/// Downloads the newest `linux-image-<prefix>*-cloud-amd64` of the line's suite and keeps its
/// `vmlinuz` in `target`.
fn fetch(line: &Line, target: &Path) -> anyhow::Result<()> {
    let work = target.with_file_name(format!("{}.download", line.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("lists/partial"))?;
    std::fs::create_dir_all(work.join("cache/archives/partial"))?;
    let sources = work.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [signed-by={KEYRING}] {MIRROR} {} main\n", line.suite),
    )?;
    let private = [
        format!("-oDir::Etc::sourcelist={}", sources.display()),
        "-oDir::Etc::sourceparts=-".to_string(),
        format!("-oDir::State::Lists={}", work.join("lists").display()),
        format!("-oDir::Cache={}", work.join("cache").display()),
        "-oAPT::Get::List-Cleanup=0".to_string(),
        // The files are root's, in root's cache: no hand-over to the _apt user.
        "-oAPT::Sandbox::User=root".to_string(),
    ];
    run(Command::new("apt-get")
        .args(&private)
        .args(["-qq", "update"]))?;
    let names = output(Command::new("apt-cache").args(&private).arg("pkgnames"))?;
    let package = newest(&names, line.prefix).with_context(|| {
        format!(
            "{} serves no linux-image-{}*-cloud-amd64",
            line.suite, line.prefix
        )
    })?;
    run(Command::new("apt-get")
        .args(&private)
        .args(["-qq", "download", &package])
        .current_dir(&work))?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let extracted = work.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    let vmlinuz = std::fs::read_dir(extracted.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the package has no boot/vmlinuz-*")?;
    std::fs::create_dir_all(target)?;
    std::fs::copy(&vmlinuz, target.join("vmlinuz.part"))?;
    std::fs::write(target.join("package"), format!("{package}\n"))?;
    // Renamed last: a present vmlinuz means a complete download.
    std::fs::rename(target.join("vmlinuz.part"), target.join("vmlinuz"))?;
    std::fs::remove_dir_all(&work)?;
    eprintln!("xtask: kernel {} from {package}", line.name);
    Ok(())
}

/// The `linux-image-<prefix><abi>-cloud-amd64` with the highest ABI number among `names`.
fn newest(names: &str, prefix: &str) -> Option<String> {
    let start = format!("linux-image-{prefix}");
    names
        .lines()
        .filter_map(|n| {
            let abi = n.strip_prefix(&start)?.strip_suffix("-cloud-amd64")?;
            Some((abi.parse::<u32>().ok()?, n.to_string()))
        })
        .max()
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_newest_abi_of_a_line_is_picked() {
        let names = "linux-image-6.1.0-9-cloud-amd64\nlinux-image-6.1.0-57-cloud-amd64\n\
                     linux-image-6.1.0-57-cloud-amd64-dbg\nlinux-image-6.1.0-56-cloud-amd64\n\
                     linux-image-6.1.0-57-amd64\nlinux-image-5.10.0-32-cloud-amd64\n";
        assert_eq!(
            super::newest(names, "6.1.0-").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            super::newest(names, "5.10.0-").as_deref(),
            Some("linux-image-5.10.0-32-cloud-amd64")
        );
        assert_eq!(super::newest(names, "4.19.0-"), None);
    }
}
