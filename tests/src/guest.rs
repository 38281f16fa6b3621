//! Older kernels under qemu: boots one of the kernels `cargo xtask test` installs (Debian's cloud
//! kernels, `KAFKA_TRACER_KERNELS/<line>/vmlinuz`) with an initramfs made here of the host's own
//! test binaries and the shared objects they load, and a small init (`guest-init`) that runs the
//! given commands and reports their exit codes on the serial console. Software emulation only
//! (a KVM boot hung on these machines), so each guest runs a few times slower than the host.

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A kernel to boot: its line ("5.10", "6.1") and image.
pub struct Kernel {
    pub line: String,
    pub vmlinuz: PathBuf,
}

/// The kernels `cargo xtask test` installed, oldest first.
pub fn kernels() -> Vec<Kernel> {
    let dir = std::env::var_os("KAFKA_TRACER_KERNELS")
        .map(PathBuf::from)
        .expect("KAFKA_TRACER_KERNELS names the qemu kernels (cargo xtask test installs them)");
    let mut out: Vec<Kernel> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().join("vmlinuz").is_file())
        .map(|e| Kernel {
            line: e.file_name().to_string_lossy().into_owned(),
            vmlinuz: e.path().join("vmlinuz"),
        })
        .collect();
    let version =
        |k: &Kernel| -> Vec<u32> { k.line.split('.').filter_map(|p| p.parse().ok()).collect() };
    out.sort_by_key(version);
    assert!(!out.is_empty(), "no kernels in {}", dir.display());
    out
}

/// What a guest printed and how each command ended.
pub struct Run {
    /// The serial console, the kernel's and the commands' output.
    pub console: String,
    /// Each command's exit code, in order (fewer than asked when the guest died).
    pub exits: Vec<i32>,
    pub elapsed: Duration,
}

/// Boots `kernel` with `init` as PID 1 and `files` (host paths, kept at the same paths in the
/// guest, with the shared objects each loads) and runs `commands` in order; stops the guest
/// after `timeout`.
pub fn run(
    kernel: &Kernel,
    init: &Path,
    files: &[&Path],
    commands: &[Vec<String>],
    timeout: Duration,
) -> anyhow::Result<Run> {
    let dir = std::env::temp_dir().join(format!("kt-guest-{}-{}", std::process::id(), kernel.line));
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    let listed: String = commands.iter().map(|c| c.join("\t") + "\n").collect();
    let mut archive = Cpio::default();
    archive.file("init", &std::fs::read(init)?)?;
    archive.file("guest-commands", listed.as_bytes())?;
    let mut all: BTreeSet<PathBuf> = BTreeSet::new();
    for f in files {
        all.insert(f.to_path_buf());
        all.extend(shared_objects(f)?);
    }
    for f in &all {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let name = f.to_str().context("a path that is not UTF-8")?;
        archive.file(name.trim_start_matches('/'), &bytes)?;
    }
    std::fs::write(&initrd, archive.finish())?;

    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-m",
            "2048",
            "-smp",
            "2",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
        ])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask test installs it)")?;
    let mut stdout = child.stdout.take().context("qemu's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = start.elapsed();
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    // Kept for reading after a failure (the assertion shows only its end).
    let log = std::env::temp_dir().join(format!("kt-guest-{}.log", kernel.line));
    let _ = std::fs::write(&log, &console);
    let exits = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kt-guest: exit "))
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect();
    match status {
        None => bail!("the {} guest ran past {timeout:?}:\n{console}", kernel.line),
        Some(s) if !s.success() => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("qemu failed ({s}): {err}\n{console}")
        }
        Some(_) => Ok(Run {
            console,
            exits,
            elapsed,
        }),
    }
}

/// The shared objects `binary` loads, with the dynamic loader, as `ldd` lists them.
fn shared_objects(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// An initramfs: an uncompressed cpio archive in the "newc" format the kernel unpacks, with the
/// directories of every file.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        let size = u32::try_from(data.len()).context("a file of 4 GiB or more")?;
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A regular executable file at `name` (relative to the root), after its directories.
    fn file(&mut self, name: &str, data: &[u8]) -> anyhow::Result<()> {
        let mut parent = String::new();
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if self.dirs.insert(parent.clone()) {
                let dir = parent.clone();
                self.entry(&dir, 0o040755, &[])?;
            }
        }
        self.entry(name, 0o100755, data)
    }

    fn finish(mut self) -> Vec<u8> {
        let _ = self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}
