//! The `kafka-tracer` process: runs the capture and feeds its records through the pipeline
//! until SIGINT or SIGTERM, then detaches every program.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{Capture, comm_str, monotonic_ns},
    cli::Args,
    counters::{self, Counter},
    export::Traces,
    kafka::{
        DecodeError, FetchResponse, MetadataResponse, ProduceRequest, Request, Response, api_name,
        lookup,
    },
    metrics::Exposition,
    pipeline::{ConnExchange, Pipeline},
};

/// Runs the tracer until interrupted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything slow: a stop that comes while the capture loads is kept until the loop
    // below takes it (a process started with SIGINT ignored, as a background job is, would
    // otherwise lose it).
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut traces = Traces::new(args.traces_config()?)?;
    let metrics = Arc::new(Exposition::new(args.metrics_max_series));
    let mut capture = Capture::start(&args.capture_config()?)?;
    // Serve metrics only once the capture runs: a bad setting or a missing privilege stays a
    // single error line.
    serve_metrics(&args.metrics_addr, &metrics).await?;
    let mut pipeline = Pipeline::new(args.pipeline_config());
    for tgid in capture.probe_tls_of_connected(&args.capture_config()?.ports)? {
        pipeline.tls_probed(tgid);
    }
    // Loading parsed the kernel's BTF and the eBPF object; that memory is free now, and the
    // allocator's high trim threshold (see main.rs) would otherwise keep it resident.
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    let mut stats = tokio::time::interval(args.stats_interval.max(Duration::from_secs(1)));
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut logged: Vec<Counter> = Vec::new();
    let mut lookups = TopicLookups::new(args.resolve_topic_ids);
    loop {
        tokio::select! {
            r = capture.readable() => {
                r?;
                capture.drain(|rec| pipeline.on_record(rec));
                // A new program's resource is read at once: a short-lived client may be gone
                // by the time the daemon, busy, reaches its first exchange.
                let execs = capture.take_execs();
                for &tgid in &execs {
                    traces.resources.program_started(tgid);
                }
                capture.probe_programs(&execs);
                for tgid in pipeline.take_new_processes() {
                    traces.resources.prefetch(tgid);
                    if capture.probe_tls(tgid) {
                        pipeline.tls_probed(tgid);
                    }
                }
                for (key, is_kafka) in pipeline.take_verdicts() {
                    if let Err(e) = capture.set_verdict(key, is_kafka) {
                        tracing::warn!("{e:#}");
                    }
                }
                observe(&mut pipeline, &metrics, &mut traces);
                traces.flush(false);
                lookups.ask(pipeline.take_unknown_topic_brokers());
            }
            Some((broker, result)) = lookups.answers.recv() => {
                pipeline.learn_lookup(broker, result);
                observe(&mut pipeline, &metrics, &mut traces);
            }
            _ = flush.tick() => {
                pipeline.release_parked(false);
                pipeline.check_tls(monotonic_ns());
                observe(&mut pipeline, &metrics, &mut traces);
                traces.flush(true);
                metrics.publish(counters(&capture, &pipeline, &traces, &metrics)?);
            }
            _ = stats.tick() => {
                pipeline.evict_idle(monotonic_ns(), args.idle_timeout.as_nanos() as u64, |key, id| {
                    capture.follows(key, id)
                });
                let now = counters(&capture, &pipeline, &traces, &metrics)?;
                if counters::news(&now, &logged) {
                    log_counters(&now);
                    logged = now;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    // Shutdown: what is still in the ring buffer becomes spans, and every span is exported.
    capture.drain(|rec| pipeline.on_record(rec));
    pipeline.release_parked(true);
    observe(&mut pipeline, &metrics, &mut traces);
    traces
        .finish(Duration::from_millis(args.otlp_timeout_ms.max(1)))
        .await;
    log_counters(&counters(&capture, &pipeline, &traces, &metrics)?);
    tracing::info!("detaching");
    Ok(())
}

/// Serves `/metrics` and `/healthz` on `addr` (`off`: not at all).
async fn serve_metrics(addr: &str, metrics: &Arc<Exposition>) -> anyhow::Result<()> {
    if addr == "off" {
        return Ok(());
    }
    let parsed = addr.parse().map_err(|e| {
        anyhow::anyhow!(
            "invalid --metrics-addr {addr:?} ({e}): use host:port, e.g. 127.0.0.1:9464, or off"
        )
    })?;
    crate::metrics::serve(parsed, metrics.clone()).await
}

/// A broker is asked for its topics at most this often.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(30);

/// Metadata requests to brokers whose traffic named topics only by id, each in a task of its
/// own; their answers come back on `answers`.
struct TopicLookups {
    enabled: bool,
    tx: tokio::sync::mpsc::Sender<(SocketAddr, anyhow::Result<MetadataResponse>)>,
    answers: tokio::sync::mpsc::Receiver<(SocketAddr, anyhow::Result<MetadataResponse>)>,
    /// When each broker was last asked. Bounded: brokers are few, and a flood of addresses
    /// only resets the rate limit.
    last: HashMap<SocketAddr, Instant>,
}

impl TopicLookups {
    fn new(enabled: bool) -> Self {
        let (tx, answers) = tokio::sync::mpsc::channel(64);
        Self {
            enabled,
            tx,
            answers,
            last: HashMap::new(),
        }
    }

    /// Asks each of `brokers` that was not asked in the last [`LOOKUP_INTERVAL`].
    fn ask(&mut self, brokers: impl IntoIterator<Item = SocketAddr>) {
        for broker in brokers {
            if !self.enabled || !self.due(broker) {
                continue;
            }
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let r = lookup::metadata(broker, lookup::TIMEOUT).await;
                let _ = tx.send((broker, r)).await;
            });
        }
    }

    /// Whether `broker` may be asked now; notes the time if so.
    fn due(&mut self, broker: SocketAddr) -> bool {
        if self
            .last
            .get(&broker)
            .is_some_and(|t| t.elapsed() < LOOKUP_INTERVAL)
        {
            return false;
        }
        if self.last.len() >= 4096 {
            self.last.clear();
        }
        self.last.insert(broker, Instant::now());
        true
    }
}

/// Exchanges the pipeline completed become log lines, metrics and spans.
fn observe(pipeline: &mut Pipeline, metrics: &Exposition, traces: &mut Traces) {
    for o in pipeline.take_exchanges() {
        log_exchange(&o, pipeline);
        metrics.observe(&o, &pipeline.catalog, traces.clock_offset_ns);
        traces.add(&o, pipeline);
    }
}

/// One debug line per exchange (spans come from the export stage).
fn log_exchange(o: &ConnExchange, p: &Pipeline) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let ex = &o.exchange;
    let h = &ex.header;
    let latency = ex
        .response_ns
        .map(|(_, end)| end.saturating_sub(ex.request_ns.0) / 1000);
    let detail = match (&ex.request, &ex.response) {
        (Ok(Request::Produce(r)), resp) => produce_detail(r, resp, p),
        (_, Some(Ok(Response::Fetch(f)))) => fetch_detail(f, p),
        (_, Some(Err(e))) => format!("response undecodable: {e}"),
        (Err(e), _) => format!("request undecodable: {e}"),
        _ => String::new(),
    };
    let error = ex
        .response
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .and_then(Response::error_code);
    tracing::debug!(
        pid = o.tgid,
        comm = comm_str(&o.comm),
        broker = %o.broker(),
        client_id = h.client_id.as_deref().unwrap_or(""),
        latency_us = latency,
        error,
        "{} v{} {detail}",
        api_name(h.api_key),
        h.api_version
    );
}

/// A Produce exchange in the debug line: acks, records per partition, assigned base offsets.
fn produce_detail(
    r: &ProduceRequest,
    resp: &Option<Result<Response, DecodeError>>,
    p: &Pipeline,
) -> String {
    let offsets: Vec<String> = match resp {
        Some(Ok(Response::Produce(pr))) => pr
            .partitions
            .iter()
            .map(|x| format!("{}@{}", x.partition, x.base_offset))
            .collect(),
        _ => Vec::new(),
    };
    let parts: Vec<String> = r
        .partitions
        .iter()
        .map(|x| {
            format!(
                "{}[{}]:{} records",
                p.catalog.topic_name(&x.topic).as_deref().unwrap_or("?"),
                x.partition,
                x.records.record_count()
            )
        })
        .collect();
    format!(
        "acks={} {} base_offsets={}",
        r.acks,
        parts.join(" "),
        offsets.join(",")
    )
}

/// A Fetch response in the debug line: records and high watermark per partition.
fn fetch_detail(f: &FetchResponse, p: &Pipeline) -> String {
    let parts: Vec<String> = f
        .partitions
        .iter()
        .filter(|x| x.records.record_count() > 0)
        .map(|x| {
            format!(
                "{}[{}]:{} records hw={}",
                p.catalog.topic_name(&x.topic).as_deref().unwrap_or("?"),
                x.partition,
                x.records.record_count(),
                x.high_watermark
            )
        })
        .collect();
    parts.join(" ")
}

/// Every counter of the tracer, in the order of the stats line.
fn counters(
    capture: &Capture,
    pipeline: &Pipeline,
    traces: &Traces,
    metrics: &Exposition,
) -> anyhow::Result<Vec<Counter>> {
    let mut all = pipeline.named();
    all.extend(traces.named());
    all.extend(metrics.named());
    all.extend(capture.counters()?.named());
    all.extend(capture.tls_named());
    all.push(daemon_cpu());
    all.extend(capture.usage());
    Ok(all)
}

/// The CPU time (user and system) the daemon has used: with `ebpf_run_ns`, what tracing costs
/// a node, per node, from `/metrics`.
fn daemon_cpu() -> Counter {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    Counter::usage(
        "daemon_cpu_ns",
        ns(u.ru_utime) + ns(u.ru_stime),
        "nanoseconds of CPU time (user and system) the tracer's daemon has used",
    )
}

/// The stats line: every counter; a warning when anything was lost.
fn log_counters(all: &[Counter]) {
    let line = counters::log_line(all);
    if counters::lost(all) > 0 {
        tracing::warn!("counters (with losses): {line}");
    } else {
        tracing::info!("counters: {line}");
    }
}
