//! `cargo xtask bench overhead`: what tracing costs a real client. librdkafka (confluent-kafka)
//! produces and then consumes 1 KiB records as fast as it can against a local tansu broker (or,
//! with `--tls`, over TLS to Apache Kafka's SSL listener, the tracer reading the plaintext from
//! librdkafka's OpenSSL), in runs alternating without and with kafka-tracer attached (100%
//! sampling, OTLP/HTTP to a local receiver). Prints the client's throughput traced/untraced, the tracer's CPU time per
//! 10k records, its peak resident memory, and the completeness account: records produced and
//! consumed against records in send and poll spans, with every loss counter of the tracer, so a
//! record without a span is either explained by a counter or reported as unexplained.
//!
//! Next to the wall-clock ratios, which a noisy 2-core machine spreads widely, it prints each
//! party's CPU time per million records (client and broker from /proc and rusage, the daemon
//! from /proc, the eBPF programs from `kernel.bpf_stats_enabled`), which is steadier.
//!
//! With `--rate N` the client produces N records a second while it consumes them as they come
//! (a steady load, not a saturating one), and the benchmark prints the tracer's share of a core
//! at that rate.
//!
//!   overhead [--runs N] [--records N] [--size BYTES] [--rate N] [--tls]

use std::{process::ExitCode, time::Duration};

use serde_json::Value;
use tests::{
    Broker,
    certs::Certs,
    client_env, median,
    receiver::Receiver,
    tracer::{Resident, Tracer, logged, proc_status},
};

struct Run {
    traced: bool,
    produce_rps: f64,
    consume_rps: f64,
    /// Wall time of producing (with `--rate`, of the whole steady load).
    produce_s: f64,
    /// CPU seconds of the daemon, of the kernel's eBPF programs (all of this machine's, with
    /// `kernel.bpf_stats_enabled`), of the client and of the broker, during the client's run.
    tracer_cpu_s: f64,
    ebpf_s: f64,
    client_cpu_s: f64,
    broker_cpu_s: f64,
    tracer_peak_rss_kib: u64,
    /// What the tracer had resident at the end of the run.
    tracer_resident: Resident,
    /// Records in the send and poll spans received, against records produced and consumed.
    send_records: u64,
    poll_records: u64,
    produced: u64,
    consumed: u64,
    /// The tracer's counters of anything lost on the way, those above zero.
    losses: Vec<(&'static str, u64)>,
    /// Bytes the kernel copied to the daemon, and those it skipped on purpose (record values).
    copied_bytes: u64,
    skipped_bytes: u64,
}

/// Every counter that can account for a record without a span: kernel drops and truncation,
/// framing and decoding failures, sampling, export.
const LOSS_COUNTERS: [&str; 15] = [
    "kernel_ringbuf_full_records",
    "kernel_ringbuf_full_bytes",
    "kernel_truncated_bytes",
    "kernel_read_failure_bytes",
    "buffer_full_bytes",
    "bad_records",
    "resync_skipped_bytes",
    "misplaced_skips",
    "undecodable_requests",
    "undecodable_responses",
    "undecodable_batches",
    "unanswered_requests",
    "spans_sampled_out",
    "spans_queue_dropped",
    "spans_export_failed",
];

/// User plus system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / tick
}

/// User plus system CPU seconds of this process's waited-for children so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// eBPF run time of every program loaded now, in seconds (counted while BPF statistics are on).
fn ebpf_seconds() -> f64 {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.run_time().as_secs_f64())
        .sum()
}

fn peak_rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmHWM")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The broker a run talks to: a tansu broker of its own, or (TLS) Apache Kafka's SSL listener,
/// one broker for every run (a JVM takes seconds to start), a topic per run.
#[expect(clippy::large_enum_variant, reason = "one per benchmark")]
enum Target {
    Plain,
    Tls {
        broker: Broker,
        _certs: Certs,
        env: Vec<(&'static str, String)>,
    },
}

impl Target {
    fn new(tls: bool) -> anyhow::Result<Self> {
        if !tls {
            return Ok(Self::Plain);
        }
        let certs = Certs::make("overhead")?;
        let broker = Broker::apache_secure(&certs)?;
        let env = vec![
            ("KT_SECURITY_PROTOCOL", "SSL".to_string()),
            ("KT_SSL_CA", certs.ca.display().to_string()),
        ];
        Ok(Self::Tls {
            broker,
            _certs: certs,
            env,
        })
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Plain => "confluent-kafka -> tansu",
            Self::Tls { .. } => "confluent-kafka over TLS -> Apache Kafka's SSL listener",
        }
    }
}

fn one(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    run: u64,
    traced: bool,
    n: u64,
    size: u64,
    rate: u64,
) -> anyhow::Result<Run> {
    let topic = format!("overhead-{run}-{traced}");
    let own;
    let (broker, port, env): (&Broker, u16, &[(&str, String)]) = match target {
        Target::Plain => {
            own = Broker::start()?;
            (&own, own.port, &[])
        }
        Target::Tls { broker, env, .. } => (broker, broker.secure.map_or(0, |p| p.ssl), env),
    };
    broker.create_topic(&topic, 1)?;
    let receiver = rt.block_on(Receiver::start(None))?;
    let endpoint = receiver.http_endpoint();
    let tracer = traced.then(|| {
        Tracer::start_with(
            port,
            "overhead",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_TRACES_SAMPLER", "always_on"),
            ],
        )
    });
    let cpu_before = tracer.as_ref().map_or(0.0, |t| cpu_seconds(t.child.id()));
    let (ebpf_before, client_before, broker_before) = (
        ebpf_seconds(),
        children_cpu_seconds(),
        cpu_seconds(broker.pid()),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (bootstrap, n, size, rate) = (
        format!("127.0.0.1:{port}"),
        n.to_string(),
        size.to_string(),
        rate.to_string(),
    );
    let out: Value = serde_json::from_str(&client_env(
        &env,
        &[
            "perf",
            "confluent",
            &bootstrap,
            &topic,
            &n,
            "none",
            "--size",
            &size,
            "--rate",
            &rate,
        ],
    )?)?;
    // The client is the only child reaped meanwhile.
    let (ebpf_s, client_cpu_s, broker_cpu_s) = (
        ebpf_seconds() - ebpf_before,
        children_cpu_seconds() - client_before,
        cpu_seconds(broker.pid()) - broker_before,
    );
    let (mut cpu, mut rss, mut resident, mut losses, mut copied, mut skipped) =
        (0.0, 0, Resident::default(), Vec::new(), 0, 0);
    if let Some(t) = tracer {
        // Let it finish what the ring buffer still holds before measuring.
        std::thread::sleep(Duration::from_secs(1));
        cpu = cpu_seconds(t.child.id()) - cpu_before;
        rss = peak_rss_kib(t.child.id());
        resident = Resident::of(t.child.id()).unwrap_or_default();
        let (_, log) = t.stop_with_log();
        (copied, skipped) = (
            logged(&log, "kernel_bytes"),
            logged(&log, "kernel_skipped_bytes"),
        );
        losses = LOSS_COUNTERS
            .iter()
            .map(|&c| (c, logged(&log, c)))
            .filter(|(_, v)| *v > 0)
            .collect();
    }
    let spans = receiver.topic(&topic);
    let sum = |name: &str| -> u64 {
        spans
            .iter()
            .filter(|s| s.span.name == name)
            .map(|s| s.records())
            .sum()
    };
    let num = |k: &str| out[k].as_f64().unwrap_or(0.0);
    Ok(Run {
        traced,
        produce_rps: num("produced") / num("produce_s"),
        produce_s: num("produce_s"),
        consume_rps: num("consumed") / num("consume_s"),
        tracer_cpu_s: cpu,
        ebpf_s,
        client_cpu_s,
        broker_cpu_s,
        tracer_peak_rss_kib: rss,
        tracer_resident: resident,
        send_records: sum(&format!("send {topic}")),
        poll_records: sum(&format!("poll {topic}")),
        produced: num("produced") as u64,
        consumed: num("consumed") as u64,
        losses,
        copied_bytes: copied,
        skipped_bytes: skipped,
    })
}

/// The median of `v` with its spread, as text with `digits` decimals: `median (min-max)`.
fn spread(v: Vec<f64>, digits: usize) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    format!("{:.digits$} ({lo:.digits$}-{hi:.digits$})", median(v))
}

fn main() -> ExitCode {
    let args = tests::BenchArgs::parse(
        "overhead",
        "[--runs N] [--records N] [--size BYTES] [--rate N] [--tls]",
        &["--runs", "--records", "--size", "--rate"],
        &["--tls"],
    );
    let (runs, n, size) = (
        args.number("--runs", 7),
        args.number("--records", 200_000),
        args.number("--size", 1024),
    );
    let steady = args.number("--rate", 0);
    // Held for the whole benchmark: the eBPF programs' run time is counted while it is open.
    let _stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("overhead: error: enabling BPF run-time statistics (root needed): {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let tls = args.flag("--tls");
    let target = match Target::new(tls) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("overhead: starting the broker failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut all = Vec::new();
    println!(
        "overhead: {runs} runs x (untraced, traced), {n} records of {size} B, {}, one partition",
        target.describe()
    );
    println!(
        "run  traced  produce rec/s  consume rec/s  tracer CPU s  peak RSS MiB  records in send/poll spans"
    );
    for r in 0..runs {
        // Alternate which goes first, so that drift favours neither.
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for traced in order {
            match one(&rt, &target, r, traced, n, size, steady) {
                Ok(run) => {
                    println!(
                        "{r:>3}  {:>6}  {:>13.0}  {:>13.0}  {:>12.2}  {:>12.1}  {}",
                        if traced { "yes" } else { "no" },
                        run.produce_rps,
                        run.consume_rps,
                        run.tracer_cpu_s,
                        run.tracer_peak_rss_kib as f64 / 1024.0,
                        if traced {
                            format!(
                                "{}/{} of {}/{}",
                                run.send_records, run.poll_records, run.produced, run.consumed
                            )
                        } else {
                            "-".into()
                        }
                    );
                    all.push(run);
                }
                Err(e) => {
                    eprintln!("overhead: run {r} failed: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let pick = |traced: bool, f: fn(&Run) -> f64| {
        median(all.iter().filter(|r| r.traced == traced).map(f).collect())
    };
    let produce = pick(true, |r| r.produce_rps) / pick(false, |r| r.produce_rps);
    let consume = pick(true, |r| r.consume_rps) / pick(false, |r| r.consume_rps);
    // Each pair's own ratio (its two runs back to back): their spread is how far apart one
    // setting's ratios fall on this machine, the resolution of the medians above.
    let pairs = |f: fn(&Run) -> f64| -> Vec<f64> {
        all.chunks(2)
            .filter_map(|p| {
                let (t, u) = match p {
                    [a, b] if a.traced => (a, b),
                    [a, b] => (b, a),
                    _ => return None,
                };
                Some(f(t) / f(u))
            })
            .collect()
    };
    let traced: Vec<&Run> = all.iter().filter(|r| r.traced).collect();
    // Each record is produced once and consumed once: CPU per 10k records through the tracer.
    let cpu_per_10k = median(
        traced
            .iter()
            .map(|r| r.tracer_cpu_s / ((r.produced + r.consumed) as f64 / 10_000.0))
            .collect(),
    );
    let highest = traced.iter().max_by_key(|r| r.tracer_peak_rss_kib);
    let peak = highest.map_or(0, |r| r.tracer_peak_rss_kib);
    // A record without a span is explained when some loss counter moved in that run.
    let missing = |r: &Run| {
        r.produced.saturating_sub(r.send_records) + r.consumed.saturating_sub(r.poll_records)
    };
    let missing_total: u64 = traced.iter().map(|r| missing(r)).sum();
    let unexplained: u64 = traced
        .iter()
        .filter(|r| r.losses.is_empty())
        .map(|r| missing(r))
        .sum();
    let rate = median(traced.iter().map(|r| r.produce_rps).collect());
    let of = |traced: bool, f: fn(&Run) -> f64| -> Vec<f64> {
        all.iter().filter(|r| r.traced == traced).map(f).collect()
    };
    println!("\nthroughput, median (min-max) records/s:");
    for (name, f) in [
        ("produce", (|r: &Run| r.produce_rps) as fn(&Run) -> f64),
        ("consume", |r: &Run| r.consume_rps),
    ] {
        println!(
            "  {name}  untraced {}  traced {}",
            spread(of(false, f), 0),
            spread(of(true, f), 0)
        );
    }
    // CPU per million records (each produced and consumed once): steadier than wall clock.
    let per_m = |f: fn(&Run) -> f64, traced: bool| {
        median(
            all.iter()
                .filter(|r| r.traced == traced)
                .map(|r| f(r) / ((r.produced + r.consumed) as f64 / 2e6))
                .collect(),
        )
    };
    println!("CPU seconds per million records produced and consumed, medians (untraced / traced):");
    println!(
        "  client {:.2} / {:.2}  broker {:.2} / {:.2}  tracer daemon - / {:.2}  eBPF - / {:.2}",
        per_m(|r| r.client_cpu_s, false),
        per_m(|r| r.client_cpu_s, true),
        per_m(|r| r.broker_cpu_s, false),
        per_m(|r| r.broker_cpu_s, true),
        per_m(|r| r.tracer_cpu_s, true),
        per_m(|r| r.ebpf_s, true),
    );
    if steady == 0 {
        // Saturated, with client, broker and tracer sharing the cores, throughput follows the
        // CPU they spend together: this is the throughput ratio the CPU times predict, without
        // the wall clock's noise. The eBPF time is inside the client's and broker's (their
        // syscalls run the programs).
        let spent = |traced: bool| {
            per_m(|r| r.client_cpu_s, traced)
                + per_m(|r| r.broker_cpu_s, traced)
                + if traced {
                    per_m(|r| r.tracer_cpu_s, true)
                } else {
                    0.0
                }
        };
        println!(
            "  CPU ratio (client + broker untraced / client + broker + daemon traced)  {:.3}",
            spent(false) / spent(true)
        );
    }
    let mb_per_m = |f: fn(&Run) -> u64| {
        median(
            traced
                .iter()
                .map(|r| f(r) as f64 / 1e6 / ((r.produced + r.consumed) as f64 / 2e6))
                .collect(),
        )
    };
    println!(
        "kernel to daemon per million records, median: {:.0} MB copied, {:.0} MB skipped (record values with KAFKA_TRACER_SELECTIVE_COPY=true, records with KAFKA_TRACER_RECORD_HEADERS=none)",
        mb_per_m(|r| r.copied_bytes),
        mb_per_m(|r| r.skipped_bytes),
    );
    if steady > 0 {
        // Each record produced and consumed at `steady`: the tracer's share of a core meanwhile.
        let share = |f: fn(&Run) -> f64| {
            100.0 * median(traced.iter().map(|r| f(r) / r.produce_s).collect())
        };
        let (daemon, ebpf) = (share(|r| r.tracer_cpu_s), share(|r| r.ebpf_s));
        println!(
            "at {steady} records/s each way: tracer daemon {daemon:.2}% of one core, eBPF {ebpf:.2}% ({:.2}% and {:.2}% per 10k records/s; goal <= 0.1% per 10k records/s)",
            daemon / (steady as f64 / 10_000.0),
            ebpf / (steady as f64 / 10_000.0),
        );
    }
    println!("\nmedians, traced / untraced:");
    println!(
        "  produce throughput ratio  {produce:.3}  (goal >= 0.98); pair by pair {}",
        spread(pairs(|r| r.produce_rps), 3)
    );
    println!(
        "  consume throughput ratio  {consume:.3}  (goal >= 0.98); pair by pair {}",
        spread(pairs(|r| r.consume_rps), 3)
    );
    println!(
        "  tracer CPU per 10k records  {:.3} s (saturated: batches are large; --rate measures a steady load, where they are small)",
        cpu_per_10k,
    );
    println!(
        "  tracer peak RSS  {:.1} MiB  (goal <= 40 MiB)",
        peak as f64 / 1024.0
    );
    if let Some(r) = highest {
        let m = |kib: u64| kib as f64 / 1024.0;
        let r = r.tracer_resident;
        println!(
            "    resident after that run: eBPF maps {:.1} MiB (the ring buffers, data pages mapped twice), program {:.1}, libraries {:.1}, anonymous {:.1}",
            m(r.bpf_maps),
            m(r.program),
            m(r.libraries),
            m(r.anonymous),
        );
    }
    println!(
        "\ncompleteness at {rate:.0} records/s produced (traced runs together): {} produced, {} consumed, {missing_total} without a span, {unexplained} unexplained (goal 0)",
        traced.iter().map(|r| r.produced).sum::<u64>(),
        traced.iter().map(|r| r.consumed).sum::<u64>(),
    );
    for (i, r) in traced.iter().enumerate() {
        println!(
            "  traced run {i}: {} of {} produced in send spans, {} of {} consumed in poll spans; loss counters above zero: {}",
            r.send_records,
            r.produced,
            r.poll_records,
            r.consumed,
            if r.losses.is_empty() {
                "none".to_string()
            } else {
                r.losses
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
    }
    ExitCode::SUCCESS
}
