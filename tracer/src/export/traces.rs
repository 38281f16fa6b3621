//! What happens to a span once it is built: the sampler decides, the process's resource is
//! attached, the bounded queue holds it, and the sink (console, OTLP, nowhere) takes it; with
//! the counters of each step.

use std::time::Duration;

use crate::{
    capture::{comm_str, monotonic_ns},
    counters::Counter,
    export::{
        ConsoleFormat, Queue, ResourceConfig, Resources, Sampler, console,
        otlp::{self, OtlpConfig},
    },
    pipeline::{ConnExchange, Pipeline},
    spans::{RecordKeys, SpanCounters},
};

/// Spans written per export call.
const EXPORT_BATCH: usize = 512;

/// Where spans go, as configured.
pub enum Exporter {
    Console(ConsoleFormat),
    /// Its clock offset is the tracer's own, set at start.
    Otlp(OtlpConfig),
    None,
}

/// Everything the export stage is set up with (built from the flags by `cli`).
pub struct TracesConfig {
    pub exporter: Exporter,
    pub sampler: Sampler,
    pub keys: RecordKeys,
    /// Spans slower than this are kept whatever the sampler says.
    pub slow_ns: u64,
    pub resources: ResourceConfig,
    /// Spans waiting for export at most.
    pub queue: usize,
}

/// Where exported spans go.
enum Sink {
    Console(ConsoleFormat),
    Otlp(otlp::Exporter),
    Nowhere,
}

/// What happens to spans after building, and its counters.
pub struct Traces {
    sampler: Sampler,
    keys: RecordKeys,
    slow_ns: u64,
    sink: Sink,
    pub resources: Resources,
    queue: Queue,
    pub clock_offset_ns: i64,
    counters: SpanCounters,
    sampled_out: u64,
    /// Spans handed to the console, or to the OTLP exporter task.
    exported: u64,
}

impl Traces {
    /// Needs the async runtime (the OTLP exporter is a task).
    pub fn new(cfg: TracesConfig) -> anyhow::Result<Self> {
        let clock_offset_ns = realtime_ns() - monotonic_ns() as i64;
        let sink = match cfg.exporter {
            Exporter::Otlp(otlp) => Sink::Otlp(otlp::spawn(OtlpConfig {
                clock_offset_ns,
                ..otlp
            })?),
            Exporter::Console(format) => Sink::Console(format),
            Exporter::None => Sink::Nowhere,
        };
        Ok(Self {
            sampler: cfg.sampler,
            keys: cfg.keys,
            slow_ns: cfg.slow_ns,
            sink,
            resources: Resources::new(cfg.resources),
            queue: Queue::new(cfg.queue),
            clock_offset_ns,
            counters: SpanCounters::default(),
            sampled_out: 0,
            exported: 0,
        })
    }

    pub fn add(&mut self, o: &ConnExchange, p: &Pipeline) {
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
    pub fn flush(&mut self, all: bool) {
        use std::io::Write as _;
        while self.queue.len() >= EXPORT_BATCH || (all && !self.queue.is_empty()) {
            let batch = self.queue.take(EXPORT_BATCH);
            let n = batch.len();
            match &self.sink {
                Sink::Console(format) => {
                    let text = console::render(&batch, *format, self.clock_offset_ns);
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

    /// Every counter of span building and export, for the stats line and `/metrics`.
    pub fn named(&self) -> Vec<Counter> {
        let (exported, failed, retries) = self.export_outcome();
        let mut all = self.counters.named();
        all.extend([
            Counter::loss(
                "processes_gone_unnamed",
                self.resources.gone(),
                "processes that exited before the tracer read their resource (spans named after the thread)",
            ),
            Counter::count(
                "spans_sampled_out",
                self.sampled_out,
                "spans the sampler dropped",
            ),
            Counter::count(
                "spans_exported",
                exported,
                "spans delivered to the exporter's destination",
            ),
            Counter::loss(
                "spans_export_failed",
                failed,
                "spans the OTLP backend did not take",
            ),
            Counter::count(
                "export_retries",
                retries,
                "export attempts repeated after a transient failure",
            ),
            Counter::loss(
                "spans_queue_dropped",
                self.queue.dropped,
                "spans dropped: export queue full",
            ),
            Counter::level(
                "export_queue",
                self.queue.len() as u64,
                "spans waiting for export",
            ),
        ]);
        all
    }

    /// Exports every span still queued and waits, at most `timeout`, for the OTLP exporter to
    /// deliver what it was handed; spans it could not deliver in time count as failed.
    pub async fn finish(&mut self, timeout: Duration) {
        self.flush(true);
        let handed = self.exported;
        if let Sink::Otlp(e) = &mut self.sink {
            // Closing the exporter's channel ends its task once what was sent is exported.
            let (closed, _) = tokio::sync::mpsc::channel(1);
            drop(std::mem::replace(&mut e.tx, closed));
            if tokio::time::timeout(timeout, &mut e.task).await.is_err() {
                use std::sync::atomic::Ordering::Relaxed;
                e.task.abort();
                let c = &e.counters;
                let settled = c.exported_spans.load(Relaxed) + c.failed_spans.load(Relaxed);
                c.failed_spans
                    .fetch_add(handed.saturating_sub(settled), Relaxed);
            }
        }
    }
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
fn realtime_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
