//! `kafka-tracer --check`: what this node's kernel offers the tracer, capability by capability,
//! with the fix for anything missing, and then the proof: the capture loaded, attached and
//! detached again with nothing left in the kernel. A DaemonSet can run it as an init container;
//! the README's kernel requirements are these lines.

use std::fmt;

use super::{
    Capture, CaptureConfig, CaptureMode, CopyPath, SOCK_TRACEPOINTS, pick_mode, preflight,
};

/// How a capability stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Present.
    Ok,
    /// Missing, with a fallback that keeps the tracer working (it says which).
    Fallback,
    /// Missing: the tracer cannot run.
    Missing,
    /// Not probed (the kernel answers probes only to a privileged process).
    Skipped,
}

/// One line of the report.
#[derive(Debug)]
pub struct Finding {
    pub what: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Fallback => "fallback",
            Verdict::Missing => "MISSING",
            Verdict::Skipped => "skipped",
        };
        write!(f, "  {v:<9} {:<20} {}", self.what, self.detail)
    }
}

/// The findings so far.
#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, what: &'static str, verdict: Verdict, detail: String) {
        self.0.push(Finding {
            what,
            verdict,
            detail,
        });
    }

    /// A check's outcome: its detail when it passed, else its error, as a finding of `otherwise`.
    fn check(&mut self, what: &'static str, result: anyhow::Result<String>, otherwise: Verdict) {
        match result {
            Ok(detail) => self.add(what, Verdict::Ok, detail),
            Err(e) => self.add(what, otherwise, format!("{e:#}")),
        }
    }
}

/// The report: every capability, then the capture's own load and detach with `cfg` (the
/// daemon's settings: a forced mode or copy path is loaded as asked). Must run inside a tokio
/// runtime (the capture registers its ring buffer).
pub fn report(cfg: &CaptureConfig) -> Vec<Finding> {
    let mut r = Report::default();
    r.add(
        "kernel",
        Verdict::Ok,
        format!(
            "Linux {} (kafka-tracer needs {} or later)",
            preflight::kernel_release(),
            preflight::MIN_KERNEL
        ),
    );
    if let Err(e) = preflight::check_privileges() {
        r.add("privileges", Verdict::Missing, format!("{e:#}"));
        r.add(
            "kernel features",
            Verdict::Skipped,
            "the kernel answers its probes only to a process with those privileges".into(),
        );
        return r.0;
    }
    r.add(
        "privileges",
        Verdict::Ok,
        "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)".into(),
    );
    if cfg.tls {
        r.check(
            "TLS privileges",
            preflight::check_tls_privileges()
                .map(|()| "CAP_SYS_PTRACE and CAP_SYS_ADMIN: TLS libraries are probed".into()),
            Verdict::Fallback,
        );
    }
    r.check(
        "ring buffer",
        preflight::require_ring_buffer().map(|()| "BPF ring buffer maps".into()),
        Verdict::Missing,
    );
    let tracefs = preflight::ensure_tracefs();
    r.check(
        "tracefs",
        tracefs
            .as_ref()
            .map(|t| t.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e:#}")),
        Verdict::Missing,
    );
    if preflight::has_bpf_loop() {
        r.add(
            "bpf_loop",
            Verdict::Ok,
            "helper 181 present: a syscall's copy is one bpf_loop".into(),
        );
    } else {
        r.add(
            "bpf_loop",
            Verdict::Fallback,
            "absent (Linux 5.17+): the copy runs in bounded loops continued by tail calls".into(),
        );
    }
    let btf = preflight::kernel_btf().map(drop);
    if let Ok(tracefs) = &tracefs {
        tracepoints(&mut r, tracefs, btf.is_ok());
    }
    r.check(
        "BTF",
        btf.map(|()| crate::btf::VMLINUX_BTF.into()),
        Verdict::Fallback,
    );
    if can_run(&r.0) {
        r.0.push(load_and_detach(cfg));
    }
    r.0
}

/// What tracefs shows: the connection mode the kernel allows, the syscall tracepoints, uprobes.
fn tracepoints(r: &mut Report, tracefs: &std::path::Path, btf: bool) {
    let missing: Vec<String> = SOCK_TRACEPOINTS
        .iter()
        .filter(|(c, t)| !preflight::has_tracepoint(tracefs, c, t))
        .map(|(c, t)| format!("{c}:{t}"))
        .collect();
    let sock = missing.is_empty() && btf;
    if sock {
        r.add(
            "connections",
            Verdict::Ok,
            "sock mode: socket calls copied at the socket tracepoints".into(),
        );
    } else {
        let why = if missing.is_empty() {
            "no kernel BTF".to_string()
        } else {
            format!("no {} (Linux 6.3+)", missing.join(", "))
        };
        r.add(
            "connections",
            Verdict::Fallback,
            format!("{why}: fd mode, connections tracked by process and file descriptor"),
        );
    }
    // fd mode's: sock mode attaches none.
    r.check(
        "syscall tracepoints",
        pick_mode(CaptureMode::Fd).map(|_| "fd mode's reads, writes and set-up".into()),
        if sock {
            Verdict::Fallback
        } else {
            Verdict::Missing
        },
    );
    if preflight::has_uprobes(tracefs) {
        r.add(
            "uprobes",
            Verdict::Ok,
            "TLS plaintext read from OpenSSL and Go crypto/tls".into(),
        );
    } else {
        r.add(
            "uprobes",
            Verdict::Fallback,
            "absent (CONFIG_UPROBE_EVENTS): TLS connections are counted, not read".into(),
        );
    }
}

/// Loads and attaches the capture as the daemon would, drops it, and checks that none of its
/// programs is left in the kernel.
fn load_and_detach(cfg: &CaptureConfig) -> Finding {
    let finding = |verdict, detail| Finding {
        what: "load and detach",
        verdict,
        detail,
    };
    let capture = match Capture::start(cfg) {
        Ok(c) => c,
        Err(e) => return finding(Verdict::Missing, format!("{e:#}")),
    };
    let mode = format!("{:?}", capture.mode()).to_lowercase();
    let copy = match capture.copy_path() {
        CopyPath::Loop => "bpf_loop",
        _ => "bounded",
    };
    let programs = capture.programs();
    let ids: Vec<u32> = programs.iter().map(|p| p.id).collect();
    drop(capture);
    // Listing programs needs CAP_SYS_ADMIN; without it the detach is not verified.
    let left = || -> Result<Vec<u32>, aya::programs::ProgramError> {
        let mut left = Vec::new();
        for p in aya::programs::loaded_programs() {
            let id = p?.id();
            if ids.contains(&id) {
                left.push(id);
            }
        }
        Ok(left)
    };
    // The kernel frees programs after an RCU grace period: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while left().is_ok_and(|l| !l.is_empty()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let loaded = format!(
        "{} programs loaded in {mode} mode with the {copy} copy; {}",
        ids.len(),
        heaviest(&programs)
    );
    match left() {
        Ok(l) if l.is_empty() => finding(Verdict::Ok, format!("{loaded}, all gone after detach")),
        Ok(l) => finding(
            Verdict::Missing,
            format!("{loaded}; programs {l:?} outlived the capture: report this as a bug"),
        ),
        Err(_) => finding(
            Verdict::Ok,
            format!("{loaded} and detached (not verified: listing programs needs CAP_SYS_ADMIN)"),
        ),
    }
}

/// The program the verifier took the most instructions to accept, against its budget: a
/// kernel whose verifier explores more (a stable update did, for the selective copy) refuses
/// a program at the budget, so what is left of it is worth seeing before that.
fn heaviest(programs: &[super::LoadedProgram]) -> String {
    match programs
        .iter()
        .filter_map(|p| Some((p.verified_insns?, &p.name)))
        .max()
    {
        Some((n, name)) => format!(
            "the verifier took {n} instructions for the largest, {name} ({:.1}% of its budget \
             of {})",
            100.0 * f64::from(n) / f64::from(super::VERIFIER_BUDGET),
            super::VERIFIER_BUDGET
        ),
        None => "this kernel does not report the verifier's work (Linux 5.16+ does)".into(),
    }
}

/// Whether the tracer can run, by the report.
pub fn can_run(report: &[Finding]) -> bool {
    report.iter().all(|f| f.verdict != Verdict::Missing)
}
