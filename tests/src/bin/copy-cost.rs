//! `cargo xtask bench copy`: what each copy path costs on this kernel. A client streams bytes to
//! a server over loopback on a traced port, in runs alternating between no capture, the
//! `bpf_loop` copy and the bounded copy (loops of fixed steps continued by tail calls), the
//! ring buffer drained as the daemon drains it. With BPF statistics on
//! (`kernel.bpf_stats_enabled`, held by this process) each run reads the kernel time its
//! programs took. Prints per path: traffic throughput, bytes copied, kernel time per MiB copied,
//! and the bounded path's ratios to the loop's, all measured in this one run.
//!
//! Every process on a node pays for the capture on the syscalls it makes on other files too
//! (pipes, eventfds, log files): the programs run before they know the fd is no traced socket.
//! Each run also times `--calls` writes of 64 bytes to `/dev/null` and prints what the capture
//! adds to one such call, in wall time and in its programs' kernel time.
//!
//!   copy-cost [--runs N] [--mib N] [--write BYTES] [--calls N]

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

use tracer::capture::{Capture, CaptureConfig, CopyPath};

/// One run's outcome.
struct Run {
    /// Traffic throughput, MiB/s.
    mib_s: f64,
    /// Bytes the kernel delivered, and lost (ring buffer full, truncated).
    copied: u64,
    lost: u64,
    /// Kernel time of every capture program during the run.
    kernel: Duration,
    /// One write to `/dev/null`: its wall time, and the capture programs' kernel time.
    null_call: Duration,
    null_kernel: Duration,
}

/// One path's medians over its runs.
struct Summary {
    mib_s: f64,
    ns_per_mib: f64,
    /// A write to `/dev/null`: wall time, and the programs' kernel time.
    null_ns: f64,
    null_kernel_ns: f64,
}

/// Kernel time every capture program has taken since statistics were enabled.
fn programs_time(capture: &Capture) -> Duration {
    capture.programs().iter().map(|p| p.run_time).sum()
}

/// `calls` writes of 64 bytes to `/dev/null`; the time one took, on average.
fn null_writes(calls: u32) -> std::io::Result<Duration> {
    let mut null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let start = Instant::now();
    for _ in 0..calls {
        null.write_all(&[0u8; 64])?;
    }
    Ok(start.elapsed() / calls)
}

/// Streams `total` bytes in writes of `write` bytes from a client to a server thread on
/// `listener`; how long it took.
fn stream(listener: TcpListener, total: u64, write: usize) -> std::io::Result<Duration> {
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        while s.read(&mut buf)? > 0 {}
        Ok(())
    });
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    let chunk = vec![0x5au8; write];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        c.write_all(&chunk)?;
        sent += write as u64;
    }
    drop(c);
    server
        .join()
        .map_err(|_| std::io::Error::other("server panicked"))??;
    Ok(start.elapsed())
}

/// A run: with `path`, the capture is attached to the listener's port first and drained (as the
/// daemon drains it) until the stream ends.
fn run(path: Option<CopyPath>, total: u64, write: usize, calls: u32) -> anyhow::Result<Run> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mib_s = |t: Duration| total as f64 / t.as_secs_f64() / 1048576.0;
    let Some(path) = path else {
        return Ok(Run {
            mib_s: mib_s(stream(listener, total, write)?),
            copied: 0,
            lost: 0,
            kernel: Duration::ZERO,
            null_call: null_writes(calls)?,
            null_kernel: Duration::ZERO,
        });
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    let mut capture = Capture::start(&CaptureConfig {
        ports: vec![listener.local_addr()?.port()],
        server_side: true,
        detect_kafka: false,
        // Both ends are this process.
        exclude_self: false,
        copy_path: path,
        ..CaptureConfig::default()
    })?;
    let before = programs_time(&capture);
    let writer = std::thread::spawn(move || stream(listener, total, write));
    while !writer.is_finished() {
        capture.drain(|_| {});
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the stream panicked"))??;
    capture.drain(|_| {});
    let after = programs_time(&capture);
    let k = capture.counters()?;
    let null_call = null_writes(calls)?;
    let after_null = programs_time(&capture);
    Ok(Run {
        mib_s: mib_s(elapsed),
        copied: k.bytes,
        lost: k.lost_bytes(),
        kernel: after.saturating_sub(before),
        null_call,
        null_kernel: after_null.saturating_sub(after) / calls,
    })
}

fn main() -> ExitCode {
    let args = tests::BenchArgs::parse(
        "copy-cost",
        "[--runs N] [--mib N] [--write BYTES] [--calls N]",
        &["--runs", "--mib", "--write", "--calls"],
        &[],
    );
    let runs = args.number("--runs", 3).max(1);
    let total = args.number("--mib", 256) << 20;
    let write = args.number("--write", 65536).clamp(1, 16 << 20) as usize;
    let calls = args.number("--calls", 1_000_000).clamp(1, u32::MAX as u64) as u32;
    // Held for the whole benchmark: programs' run time is counted while it is open.
    let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("copy-cost: error: enabling BPF run-time statistics (root needed): {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths = [
        ("untraced", None),
        ("bpf_loop", Some(CopyPath::Loop)),
        ("bounded", Some(CopyPath::Bounded)),
    ];
    let mut results: Vec<Vec<Run>> = paths.iter().map(|_| Vec::new()).collect();
    for r in 0..runs {
        for (i, (name, path)) in paths.iter().enumerate() {
            match run(*path, total, write, calls) {
                Ok(run) => {
                    eprintln!(
                        "run {r} {name}: {:.0} MiB/s, {} bytes copied, {} lost, kernel {:?}; /dev/null write {:?} (kernel {:?})",
                        run.mib_s, run.copied, run.lost, run.kernel, run.null_call, run.null_kernel
                    );
                    results[i].push(run);
                }
                Err(e) => {
                    eprintln!("copy-cost: error: {name}: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    drop(stats);
    let mut summary = Vec::new();
    println!(
        "copy cost on Linux {} ({runs} runs of {} MiB in {write}-byte writes, medians):",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        total >> 20
    );
    for ((name, _), runs) in paths.iter().zip(&results) {
        let mib_s = tests::median(runs.iter().map(|r| r.mib_s).collect());
        let ns_per_mib = tests::median(
            runs.iter()
                .map(|r| r.kernel.as_nanos() as f64 / (r.copied.max(1) as f64 / 1048576.0))
                .collect(),
        );
        let copied: u64 = runs.iter().map(|r| r.copied).sum();
        let lost: u64 = runs.iter().map(|r| r.lost).sum();
        if name == &"untraced" {
            println!("  {name:<9} {mib_s:>8.0} MiB/s");
        } else {
            println!(
                "  {name:<9} {mib_s:>8.0} MiB/s  {:>8.1} us kernel per MiB copied  ({copied} bytes copied, {lost} lost)",
                ns_per_mib / 1000.0
            );
        }
        let ns = |d: fn(&Run) -> Duration| {
            tests::median(runs.iter().map(|r| d(r).as_nanos() as f64).collect())
        };
        summary.push(Summary {
            mib_s,
            ns_per_mib,
            null_ns: ns(|r| r.null_call),
            null_kernel_ns: ns(|r| r.null_kernel),
        });
    }
    let (untraced, looped, bounded) = (&summary[0], &summary[1], &summary[2]);
    println!(
        "  a 64-byte write to /dev/null ({calls} calls a run, medians): untraced {:.0} ns; bpf_loop {:.0} ns (+{:.0}, programs {:.0} ns); bounded {:.0} ns (+{:.0}, programs {:.0} ns)",
        untraced.null_ns,
        looped.null_ns,
        looped.null_ns - untraced.null_ns,
        looped.null_kernel_ns,
        bounded.null_ns,
        bounded.null_ns - untraced.null_ns,
        bounded.null_kernel_ns,
    );
    println!(
        "  bounded/bpf_loop: kernel time per MiB {:.2}, throughput {:.2}; traced/untraced throughput: bpf_loop {:.2}, bounded {:.2}",
        bounded.ns_per_mib / looped.ns_per_mib,
        bounded.mib_s / looped.mib_s,
        looped.mib_s / untraced.mib_s,
        bounded.mib_s / untraced.mib_s,
    );
    ExitCode::SUCCESS
}
