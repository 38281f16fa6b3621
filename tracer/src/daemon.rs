//! The `kafka-tracer` process: runs the capture and feeds its records through the pipeline
//! until SIGINT or SIGTERM, then detaches every program.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{Capture, KernelCounters, comm_str},
    cli::Args,
    correlate::Sampler,
    export::{
        Queue, ResourceConfig, Resources,
        otlp::{self, OtlpConfig},
        otlp_json, parse_key_values,
    },
    kafka::{MetadataResponse, Request, Response, api_name, lookup},
    metrics::{Metrics, render_counters},
    pipeline::{Observed, Pipeline, PipelineCounters},
    spans::SpanCounters,
};

/// Spans written per export call.
const EXPORT_BATCH: usize = 512;

/// Where exported spans go.
enum Sink {
    Console,
    Otlp(otlp::Exporter),
    Nowhere,
}

/// What happens to spans after building, and its counters.
struct Traces {
    sampler: Sampler,
    keys: crate::spans::RecordKeys,
    slow_ns: u64,
    sink: Sink,
    resources: Resources,
    queue: Queue,
    clock_offset_ns: i64,
    counters: SpanCounters,
    sampled_out: u64,
    /// Spans handed to the console, or to the OTLP exporter task.
    exported: u64,
}

impl Traces {
    /// Needs the async runtime (the OTLP exporter is a task).
    fn new(args: &Args) -> anyhow::Result<Self> {
        let clock_offset_ns = realtime_ns() - monotonic_ns() as i64;
        let exporter = args.traces_exporter.clone().unwrap_or_else(|| {
            if args.otlp_endpoint.is_some() || args.otlp_traces_endpoint.is_some() {
                "otlp".into()
            } else {
                "console".into()
            }
        });
        let sink = match exporter.as_str() {
            "otlp" => {
                let protocol = otlp::Protocol::parse(
                    args.otlp_traces_protocol
                        .as_deref()
                        .unwrap_or(&args.otlp_protocol),
                )?;
                let gzip = match args.otlp_compression.as_str() {
                    "gzip" => true,
                    "none" | "" => false,
                    other => anyhow::bail!(
                        "unsupported OTEL_EXPORTER_OTLP_COMPRESSION {other:?}: use gzip or none"
                    ),
                };
                let exporter = otlp::spawn(OtlpConfig {
                    protocol,
                    url: protocol.traces_url(
                        args.otlp_endpoint.as_deref(),
                        args.otlp_traces_endpoint.as_deref(),
                    ),
                    headers: parse_key_values(&args.otlp_headers),
                    timeout: Duration::from_millis(args.otlp_timeout_ms.max(1)),
                    gzip,
                    clock_offset_ns,
                })?;
                Sink::Otlp(exporter)
            }
            "console" | "stdout" | "logging" => Sink::Console,
            "none" => Sink::Nowhere,
            other => anyhow::bail!(
                "unsupported OTEL_TRACES_EXPORTER / --traces-exporter {other:?}: use otlp, console or none"
            ),
        };
        let sampler = Sampler::from_otel(args.sampler.as_deref(), args.sampler_arg.as_deref())?;
        Ok(Self {
            sampler,
            keys: args.record_keys()?,
            slow_ns: args.slow_threshold_ms.saturating_mul(1_000_000),
            sink,
            resources: Resources::new(ResourceConfig {
                service: args.service_name.clone(),
                extra: parse_key_values(&args.resource_attributes),
                rules: args.service_rules.clone(),
                container_logs: args.container_logs.clone(),
                node_name: args.node_name.clone(),
            }),
            queue: Queue::new(args.export_queue),
            clock_offset_ns,
            counters: SpanCounters::default(),
            sampled_out: 0,
            exported: 0,
        })
    }

    fn add(&mut self, o: &Observed, p: &Pipeline) {
        for span in crate::spans::spans(o, &p.catalog, &self.keys, &mut self.counters) {
            let slow = span.end_ns.saturating_sub(span.start_ns) > self.slow_ns;
            if self.sampler.keep(
                &span.trace_id,
                span.parent_sampled,
                span.error_code.is_some(),
                slow,
            ) {
                let r = self.resources.of(o.tgid, comm_str(&o.comm));
                self.queue.push(r, span);
            } else {
                self.sampled_out += 1;
            }
        }
    }

    /// Exports what is queued (all of it with `all`, else full batches only).
    fn flush(&mut self, all: bool) {
        use std::io::Write as _;
        while self.queue.len() >= EXPORT_BATCH || (all && !self.queue.is_empty()) {
            let batch = self.queue.take(EXPORT_BATCH);
            let n = batch.len();
            match &self.sink {
                Sink::Console => {
                    let mut text = String::new();
                    otlp_json(&mut text, &batch, self.clock_offset_ns, "\n");
                    text.push('\n');
                    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes()) {
                        tracing::warn!("writing spans to standard output: {e}");
                        self.queue.dropped += n as u64;
                        continue;
                    }
                }
                Sink::Otlp(e) => {
                    // The exporter is behind (backend slow or down): drop, never wait.
                    if e.tx.try_send(batch).is_err() {
                        self.queue.dropped += n as u64;
                        continue;
                    }
                }
                Sink::Nowhere => {}
            }
            self.exported += n as u64;
        }
    }
}

/// The metrics snapshot: Kafka families and every counter of the tracer.
fn render_metrics(m: &Metrics, k: &KernelCounters, p: &PipelineCounters, t: &Traces) -> String {
    let mut out = String::new();
    m.render(&mut out);
    render_counters(&mut out, "kafka_tracer_kernel", &k.named());
    let (f, s, c) = (&p.framing, &p.kafka, &t.counters);
    let (exported, failed, retries) = t.export_outcome();
    render_counters(
        &mut out,
        "kafka_tracer",
        &[
            (
                "bad_records",
                p.bad_records,
                "ring-buffer records that did not parse",
            ),
            (
                "refused_records",
                p.refused_records,
                "records of connections beyond --max-connections",
            ),
            (
                "buffer_full_bytes",
                p.buffer_full_bytes,
                "bytes skipped: frame buffers full",
            ),
            (
                "evicted_connections",
                p.evicted_idle,
                "connections forgotten after --idle-timeout",
            ),
            ("frames", f.frames, "Kafka frames"),
            (
                "partial_frames",
                f.partial_frames,
                "frames missing bytes or over the cap",
            ),
            (
                "resyncs",
                f.resyncs,
                "times frame boundaries were searched for again",
            ),
            (
                "resync_skipped_bytes",
                f.resync_skipped_bytes,
                "bytes skipped while resynchronising",
            ),
            ("requests", s.requests, "requests decoded"),
            (
                "undecodable_frames",
                s.undecodable_requests + s.undecodable_responses,
                "frames that did not decode",
            ),
            (
                "unmatched_responses",
                s.unmatched_responses,
                "responses without their request",
            ),
            (
                "unanswered_requests",
                s.unanswered_requests,
                "requests without a response",
            ),
            (
                "legacy_batches",
                s.legacy_batches,
                "legacy message sets skipped",
            ),
            (
                "undecodable_batches",
                s.undecodable_batches,
                "record batches that could not be read",
            ),
            (
                "topic_lookups",
                p.topic_lookups,
                "metadata lookups for unknown topic ids",
            ),
            (
                "topic_lookup_failures",
                p.topic_lookup_failures,
                "failed metadata lookups",
            ),
            (
                "unknown_topic_spans",
                c.unnamed_topics,
                "batches whose topic id was not resolved",
            ),
            (
                "sasl_tokens",
                s.sasl_tokens,
                "raw SASL tokens after a SaslHandshake v0, skipped unread",
            ),
            (
                "invalid_names",
                crate::kafka::names::refused(),
                "topic names and ids from the wire that broke their rule, kept as <invalid>",
            ),
            (
                "aborted_batches",
                c.aborted_batches,
                "fetched batches of aborted transactions (dropped by read_committed consumers; no span)",
            ),
            ("spans", c.producer_spans + c.consumer_spans, "spans built"),
            (
                "spans_sampled_out",
                t.sampled_out,
                "spans the sampler dropped",
            ),
            (
                "spans_exported",
                exported,
                "spans delivered to the exporter's destination",
            ),
            (
                "spans_export_failed",
                failed,
                "spans the OTLP backend did not take",
            ),
            (
                "export_retries",
                retries,
                "export attempts repeated after a transient failure",
            ),
            (
                "spans_queue_dropped",
                t.queue.dropped,
                "spans dropped: export queue full",
            ),
            (
                "unlinked_produces",
                c.unlinked_produces,
                "produce batches without offsets (acks=0 or errors)",
            ),
            (
                "links_dropped",
                c.links_dropped,
                "span links beyond the cap",
            ),
            (
                "metric_series_refused",
                m.refused_series(),
                "metric series refused: family full",
            ),
        ],
    );
    let _ = std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "# TYPE kafka_tracer_export_queue gauge\n# HELP kafka_tracer_export_queue Spans waiting for export.\nkafka_tracer_export_queue {}\n",
            t.queue.len()
        ),
    );
    out
}

/// Runs the tracer until interrupted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut traces = Traces::new(&args)?;
    let mut metrics = Metrics::new();
    let cfg = args.capture_config()?;
    let mut capture = Capture::start(&cfg)?;
    // Serve metrics only once the capture runs: a bad setting or a missing privilege stays a
    // single error line.
    let snapshot = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if args.metrics_addr != "off" {
        let addr = args.metrics_addr.parse().map_err(|e| {
            anyhow::anyhow!(
                "invalid --metrics-addr {:?} ({e}): use host:port, e.g. 127.0.0.1:9464, or off",
                args.metrics_addr
            )
        })?;
        crate::metrics::serve(addr, snapshot.clone()).await?;
    }
    let mut pipeline = Pipeline::new(args.pipeline_config());
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut stats = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut last = (KernelCounters::default(), PipelineCounters::default());
    let (lookup_tx, mut lookup_rx) =
        tokio::sync::mpsc::channel::<(SocketAddr, anyhow::Result<MetadataResponse>)>(64);
    let mut last_lookup: HashMap<SocketAddr, Instant> = HashMap::new();
    loop {
        tokio::select! {
            r = capture.readable() => {
                r?;
                capture.drain(|rec| pipeline.on_record(rec));
                for tgid in pipeline.take_new_processes() {
                    traces.resources.prefetch(tgid);
                }
                for (key, is_kafka) in pipeline.take_verdicts() {
                    if let Err(e) = capture.set_verdict(key, is_kafka) {
                        tracing::warn!("{e:#}");
                    }
                }
                observe(&mut pipeline, &mut metrics, &mut traces);
                traces.flush(false);
                for broker in pipeline.take_unknown_topic_brokers() {
                    if args.resolve_topic_ids && lookup_due(&mut last_lookup, broker) {
                        let tx = lookup_tx.clone();
                        tokio::spawn(async move {
                            let r = lookup::metadata(broker, lookup::TIMEOUT).await;
                            let _ = tx.send((broker, r)).await;
                        });
                    }
                }
            }
            Some((broker, result)) = lookup_rx.recv() => {
                pipeline.learn_lookup(broker, result);
                observe(&mut pipeline, &mut metrics, &mut traces);
            }
            _ = flush.tick() => {
                pipeline.release_parked(false);
                observe(&mut pipeline, &mut metrics, &mut traces);
                traces.flush(true);
                let m = render_metrics(&metrics, &capture.counters()?, &pipeline.counters(), &traces);
                if let Ok(mut s) = snapshot.lock() {
                    *s = m;
                }
            }
            _ = stats.tick() => {
                pipeline.evict_idle(monotonic_ns(), Duration::from_secs(args.idle_timeout).as_nanos() as u64);
                let now = (capture.counters()?, pipeline.counters());
                if now != last {
                    log_counters(&now.0, &now.1, pipeline.connections());
                    log_traces(&traces);
                    last = now;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    // Shutdown: what is still in the ring buffer becomes spans, and every span is exported.
    capture.drain(|rec| pipeline.on_record(rec));
    pipeline.release_parked(true);
    observe(&mut pipeline, &mut metrics, &mut traces);
    traces.flush(true);
    let handed = traces.exported;
    if let Sink::Otlp(e) = &mut traces.sink {
        // Closing the exporter's channel ends its task once what was sent is exported; wait
        // for that, for a bounded time.
        let (closed, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut e.tx, closed));
        if tokio::time::timeout(
            Duration::from_millis(args.otlp_timeout_ms.max(1)),
            &mut e.task,
        )
        .await
        .is_err()
        {
            // Spans still waiting in the exporter are lost: count them with the failures.
            use std::sync::atomic::Ordering::Relaxed;
            e.task.abort();
            let c = &e.counters;
            let settled = c.exported_spans.load(Relaxed) + c.failed_spans.load(Relaxed);
            c.failed_spans
                .fetch_add(handed.saturating_sub(settled), Relaxed);
        }
    }
    log_counters(
        &capture.counters()?,
        &pipeline.counters(),
        pipeline.connections(),
    );
    log_traces(&traces);
    tracing::info!("detaching");
    Ok(())
}

/// A broker is asked for its topics at most this often.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(30);

/// Whether `broker` may be asked now; notes the time if so. The table is bounded: brokers are
/// few, and a flood of addresses only resets the rate limit.
fn lookup_due(last: &mut HashMap<SocketAddr, Instant>, broker: SocketAddr) -> bool {
    if last
        .get(&broker)
        .is_some_and(|t| t.elapsed() < LOOKUP_INTERVAL)
    {
        return false;
    }
    if last.len() >= 4096 {
        last.clear();
    }
    last.insert(broker, Instant::now());
    true
}

/// Exchanges the pipeline completed become log lines, metrics and spans.
fn observe(pipeline: &mut Pipeline, metrics: &mut Metrics, traces: &mut Traces) {
    for o in pipeline.take_exchanges() {
        log_exchange(&o, pipeline);
        metrics.observe(&o, &pipeline.catalog, traces.clock_offset_ns);
        traces.add(&o, pipeline);
    }
}

/// One debug line per exchange (spans come from the export stage).
fn log_exchange(o: &Observed, p: &Pipeline) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let ex = &o.exchange;
    let h = &ex.header;
    let micros = |(a, b): (u64, u64)| b.saturating_sub(a) / 1000;
    let latency = ex
        .response_ns
        .map(|(_, end)| micros((ex.request_ns.0, end)));
    let detail = match (&ex.request, &ex.response) {
        (Ok(Request::Produce(r)), resp) => {
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
        (_, Some(Ok(Response::Fetch(f)))) => {
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

impl Traces {
    /// Spans delivered, failed, and retried attempts: the OTLP exporter's outcome, or what
    /// the console took.
    fn export_outcome(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.sink {
            Sink::Otlp(e) => (
                e.counters.exported_spans.load(Relaxed),
                e.counters.failed_spans.load(Relaxed),
                e.counters.retries.load(Relaxed),
            ),
            _ => (self.exported, 0, 0),
        }
    }
}

fn log_traces(t: &Traces) {
    let c = &t.counters;
    let (sent, failed, _) = t.export_outcome();
    tracing::info!(
        "spans: producer={} consumer={} exported={sent} export_failed={failed} sampled_out={} \
         queue_dropped={} queued={} unlinked_produces={} links_dropped={} unnamed_topics={} aborted_batches={}",
        c.producer_spans,
        c.consumer_spans,
        t.sampled_out,
        t.queue.dropped,
        t.queue.len(),
        c.unlinked_produces,
        c.links_dropped,
        c.unnamed_topics,
        c.aborted_batches
    );
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
fn realtime_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns` timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One log line with every kernel and pipeline counter; a warning when anything was lost.
fn log_counters(k: &KernelCounters, p: &PipelineCounters, connections: usize) {
    let lost = k.lost_bytes()
        + k.ringbuf_full_conn_events
        + k.args_full
        + k.conns_full
        + p.bad_records
        + p.refused_records
        + p.buffer_full_bytes;
    let kernel = k
        .named()
        .iter()
        .map(|(n, v, _)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let (f, s) = (&p.framing, &p.kafka);
    let line = format!(
        "connections={connections} bad_records={} refused_records={} detected_kafka={} \
         detected_other={} evicted_idle={} buffer_full_bytes={} frames={} partial_frames={} \
         resyncs={} resync_skipped_bytes={} requests={} responses={} undecodable_requests={} \
         undecodable_responses={} unmatched_responses={} unanswered_requests={} acks0_produces={} \
         legacy_batches={} undecodable_batches={} topic_lookups={} topic_lookup_failures={} \
         sasl_tokens={} invalid_names={} {kernel}",
        p.bad_records,
        p.refused_records,
        p.detected_kafka,
        p.detected_other,
        p.evicted_idle,
        p.buffer_full_bytes,
        f.frames,
        f.partial_frames,
        f.resyncs,
        f.resync_skipped_bytes,
        s.requests,
        s.responses,
        s.undecodable_requests,
        s.undecodable_responses,
        s.unmatched_responses,
        s.unanswered_requests,
        s.acks0_produces,
        s.legacy_batches,
        s.undecodable_batches,
        p.topic_lookups,
        p.topic_lookup_failures,
        s.sasl_tokens,
        crate::kafka::names::refused(),
    );
    if lost > 0 {
        tracing::warn!("counters (with losses): {line}");
    } else {
        tracing::info!("counters: {line}");
    }
}
