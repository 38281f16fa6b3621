//! `cargo xtask bench copy`: what each copy path costs on this kernel. A client streams bytes to
//! a server over loopback on a traced port, in runs alternating between no capture, the
//! `bpf_loop` copy and the bounded copy (loops of fixed steps continued by tail calls), the
//! ring buffer drained as the daemon drains it. With BPF statistics on
//! (`kernel.bpf_stats_enabled`, held by this process) each run reads the kernel time its
//! programs took. Prints per path: traffic throughput, bytes copied, kernel time per MiB copied,
//! and the bounded path's ratios to the loop's, all measured in this one run.
//!
//!   copy-cost [--runs N] [--mib N] [--write BYTES]

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
fn run(path: Option<CopyPath>, total: u64, write: usize) -> anyhow::Result<Run> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mib_s = |t: Duration| total as f64 / t.as_secs_f64() / 1048576.0;
    let Some(path) = path else {
        return Ok(Run {
            mib_s: mib_s(stream(listener, total, write)?),
            copied: 0,
            lost: 0,
            kernel: Duration::ZERO,
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
    let before: Duration = capture.programs().iter().map(|p| p.run_time).sum();
    let writer = std::thread::spawn(move || stream(listener, total, write));
    while !writer.is_finished() {
        capture.drain(|_| {});
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the stream panicked"))??;
    capture.drain(|_| {});
    let after: Duration = capture.programs().iter().map(|p| p.run_time).sum();
    let k = capture.counters()?;
    Ok(Run {
        mib_s: mib_s(elapsed),
        copied: k.bytes,
        lost: k.lost_bytes(),
        kernel: after.saturating_sub(before),
    })
}

fn main() -> ExitCode {
    let args = tests::BenchArgs::parse(
        "copy-cost",
        "[--runs N] [--mib N] [--write BYTES]",
        &["--runs", "--mib", "--write"],
        &[],
    );
    let runs = args.number("--runs", 3).max(1);
    let total = args.number("--mib", 256) << 20;
    let write = args.number("--write", 65536).clamp(1, 16 << 20) as usize;
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
            match run(*path, total, write) {
                Ok(run) => {
                    eprintln!(
                        "run {r} {name}: {:.0} MiB/s, {} bytes copied, {} lost, kernel {:?}",
                        run.mib_s, run.copied, run.lost, run.kernel
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
        summary.push((mib_s, ns_per_mib));
    }
    println!(
        "  bounded/bpf_loop: kernel time per MiB {:.2}, throughput {:.2}; traced/untraced throughput: bpf_loop {:.2}, bounded {:.2}",
        summary[2].1 / summary[1].1,
        summary[2].0 / summary[1].0,
        summary[1].0 / summary[0].0,
        summary[2].0 / summary[0].0,
    );
    ExitCode::SUCCESS
}
