//! Checks run before loading anything, so that a missing privilege or kernel feature gives one
//! line naming the cause and the fix instead of an errno from deep inside the loader.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::btf;

/// Where tracefs is normally mounted; older systems only have it under debugfs.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability set of this process, from /proc/self/status.
fn effective_caps() -> anyhow::Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("/proc/self/status has no CapEff line")?;
    u64::from_str_radix(hex.trim(), 16).context("parsing CapEff in /proc/self/status")
}

/// Loading tracing programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN on kernels before
/// 5.8, where those two do not exist).
pub fn check_privileges() -> anyhow::Result<()> {
    let caps = effective_caps()?;
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "missing privileges: loading eBPF tracing programs needs CAP_BPF and CAP_PERFMON (or \
         CAP_SYS_ADMIN); run as root (sudo kafka-tracer ...) or grant them, e.g. `setcap \
         cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_ptrace+ep kafka-tracer`"
    )
}

/// Reading TLS plaintext needs CAP_SYS_PTRACE (opening the clients' libraries through
/// `/proc/PID/root`) and CAP_SYS_ADMIN (since a 2025 fix, backported to the stable kernels,
/// uprobes are created only for it).
pub fn check_tls_privileges() -> anyhow::Result<()> {
    let caps = effective_caps()?;
    let missing: Vec<&str> = [
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(c, _)| caps & (1 << c) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "missing {}: TLS plaintext is not read, TLS connections are only counted; grant \
         CAP_SYS_PTRACE (to open clients' libraries) and CAP_SYS_ADMIN (to attach uprobes), \
         e.g. the chart's readTls, or set --tls false",
        missing.join(" and ")
    )
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
pub fn ensure_tracefs() -> anyhow::Result<PathBuf> {
    if let Some(root) = TRACEFS_ROOTS
        .iter()
        .map(Path::new)
        .find(|r| r.join("events").is_dir())
    {
        return Ok(root.to_path_buf());
    }
    let target = Path::new(TRACEFS_ROOTS[0]);
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant");
    let (src, dst, fstype) = (c("nodev"), c(TRACEFS_ROOTS[0]), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !target.join("events").is_dir() {
        bail!(
            "tracefs is not mounted and mounting it at {} failed ({}): run `mount -t tracefs \
             nodev /sys/kernel/tracing` on the host, or mount /sys/kernel/tracing into the \
             container",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted tracefs at {}", target.display());
    Ok(target.to_path_buf())
}

/// Whether the kernel has the tracepoint `category/name`.
pub fn has_tracepoint(tracefs: &Path, category: &str, name: &str) -> bool {
    tracefs.join("events").join(category).join(name).is_dir()
}

/// Fails with the missing tracepoint and what it means when any of `points` is absent.
pub fn require_tracepoints(tracefs: &Path, points: &[(&str, &str)]) -> anyhow::Result<()> {
    for (category, name) in points {
        if !has_tracepoint(tracefs, category, name) {
            let why = if *category == "syscalls" {
                "the kernel was built without CONFIG_FTRACE_SYSCALLS, which kafka-tracer needs \
                 to see socket reads and writes; use a kernel with syscall tracepoints"
            } else {
                "this kernel lacks it; run with `--capture-mode fd` (connections tracked by \
                 process and file descriptor)"
            };
            bail!(
                "kernel tracepoint {category}:{name} is missing ({} has no such event): {why}",
                tracefs.join("events").display()
            );
        }
    }
    Ok(())
}

/// The oldest kernel the tracer runs on: the BPF ring buffer came in 5.8.
pub const MIN_KERNEL: &str = "5.8";

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "(unknown release)".into())
}

/// Fails with the kernel's release and the minimum when there is no BPF ring buffer.
pub fn require_ring_buffer() -> anyhow::Result<()> {
    match aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
        Ok(true) => Ok(()),
        Ok(false) => bail!(
            "this kernel ({}) has no BPF ring buffer, which kafka-tracer copies its records \
             through: it needs Linux {MIN_KERNEL} or later",
            kernel_release()
        ),
        Err(e) => Err(anyhow::Error::new(e).context("probing the kernel for BPF ring buffers")),
    }
}

/// Whether tracepoint programs may call `bpf_loop` (helper 181: Linux 5.17, or a backport).
pub fn has_bpf_loop() -> bool {
    aya::sys::is_helper_supported(
        aya::programs::ProgramType::TracePoint,
        aya::sys::BpfHelper::BPF_FUNC_loop,
    )
    .unwrap_or(false)
}

/// Whether uprobes can be attached (the TLS libraries are read through them).
pub fn has_uprobes(tracefs: &Path) -> bool {
    tracefs.join("uprobe_events").exists()
        || Path::new("/sys/bus/event_source/devices/uprobe").exists()
}

/// The running kernel's BTF, needed for `struct sock_common` offsets in sock mode.
pub fn kernel_btf() -> anyhow::Result<Vec<u8>> {
    fs::read(btf::VMLINUX_BTF).with_context(|| {
        format!(
            "kernel BTF not readable at {} (kernel built without CONFIG_DEBUG_INFO_BTF?): use a \
             kernel with BTF, or run with `--capture-mode fd`, which does not need it",
            btf::VMLINUX_BTF
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake tracefs with only the named events.
    fn fake_tracefs(events: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "kt-tracefs-{}-{}",
            std::process::id(),
            events.len()
        ));
        let _ = fs::remove_dir_all(&root);
        for e in events {
            fs::create_dir_all(root.join("events").join(e)).unwrap();
        }
        root
    }

    #[test]
    fn missing_tracepoints_name_cause_and_fix() {
        let root = fake_tracefs(&["syscalls/sys_enter_write"]);
        require_tracepoints(&root, &[("syscalls", "sys_enter_write")]).unwrap();
        let e = require_tracepoints(&root, &[("syscalls", "sys_exit_write")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("syscalls:sys_exit_write") && e.contains("CONFIG_FTRACE_SYSCALLS"),
            "{e}"
        );
        let e = require_tracepoints(&root, &[("sock", "sock_send_length")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sock:sock_send_length") && e.contains("--capture-mode fd"),
            "{e}"
        );
        assert!(has_tracepoint(&root, "syscalls", "sys_enter_write"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn this_process_privileges_are_read() {
        // Root in CI and on the dev box; the check must agree with the capability set.
        let caps = effective_caps().unwrap();
        assert_eq!(
            check_privileges().is_ok(),
            caps & (1 << CAP_SYS_ADMIN) != 0
                || (caps & (1 << CAP_BPF) != 0 && caps & (1 << CAP_PERFMON) != 0)
        );
    }
}
