//! The `kafka-tracer` process: runs the capture and feeds its records through the pipeline
//! until SIGINT or SIGTERM, then detaches every program.

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{
        Capture, ConnEventExt as _, DataRecord, KernelCounters, Record, comm_str, endpoints,
    },
    cli::Args,
    kafka,
    reassembly::Reassembler,
};

/// Counters of the userspace side of the pipeline.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineCounters {
    /// Ring-buffer records that did not parse (kernel/daemon version mismatch).
    pub bad_records: u64,
    /// Data records of connections beyond --max-connections.
    pub refused_records: u64,
    /// Sniffed connections found to be Kafka, and not.
    pub detected_kafka: u64,
    pub detected_other: u64,
    /// Connections forgotten after --idle-timeout without a record.
    pub evicted_idle: u64,
}

/// First bytes of each direction of a sniffed connection, until a verdict.
#[derive(Default)]
struct Sniff {
    prefix: [Vec<u8>; 2],
    verdict: [Option<bool>; 2],
}

/// Stages after the capture.
pub struct Pipeline {
    reassembly: Reassembler,
    sniffing: HashMap<u64, Sniff>,
    /// Verdicts to write to the kernel after the current drain, as (conn key, is Kafka).
    verdicts: Vec<(u64, bool)>,
    pub counters: PipelineCounters,
}

/// Bytes kept per direction while sniffing: a request header's fixed part and a client id.
const SNIFF_PREFIX: usize = 64;

impl Pipeline {
    pub fn new(max_connections: usize) -> Self {
        Self {
            reassembly: Reassembler::new(max_connections),
            sniffing: HashMap::new(),
            verdicts: Vec::new(),
            counters: PipelineCounters::default(),
        }
    }

    pub fn on_record(&mut self, rec: Result<Record<'_>, crate::capture::RecordError>) {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                self.counters.bad_records += 1;
                tracing::warn!("unparsable ring-buffer record: {e}");
                return;
            }
        };
        match rec {
            Record::Open(ev) => {
                let (l, r) = endpoints(&ev.tuple);
                tracing::debug!(conn = ev.conn_id, %l, %r, midstream = ev.midstream(), "connection opened");
            }
            Record::Close(ev) => {
                self.sniffing.remove(&ev.conn_id);
                if let Some(c) = self.reassembly.close(ev.conn_id, ev.tx_bytes, ev.rx_bytes) {
                    let (l, r) = endpoints(&c.tuple);
                    let [tx, rx] = &c.streams;
                    tracing::info!(
                        pid = c.tgid,
                        comm = comm_str(&c.comm),
                        %l,
                        %r,
                        sent = tx.bytes,
                        received = rx.bytes,
                        lost = tx.lost_bytes + rx.lost_bytes,
                        "connection closed"
                    );
                }
            }
            Record::Data(d) => {
                if self.reassembly.push(&d).is_none() {
                    self.counters.refused_records = self.reassembly.refused_records;
                    return;
                }
                if d.sniffing() {
                    self.sniff(&d);
                }
            }
        }
    }

    /// Looks for a Kafka request header at the start of the connection. Kafka clients speak
    /// first, so on a connection seen from its start the first bytes decide; on one first seen
    /// mid-stream either direction may begin with a request, and both must fail to reject it.
    fn sniff(&mut self, d: &DataRecord<'_>) {
        let conn_id = d.hdr.conn_id;
        let s = self.sniffing.entry(conn_id).or_default();
        let dir = d.direction() as usize;
        if s.verdict[dir].is_some() || d.position() != s.prefix[dir].len() as u64 {
            return;
        }
        let take = d.payload.len().min(SNIFF_PREFIX - s.prefix[dir].len());
        s.prefix[dir].extend_from_slice(&d.payload[..take]);
        s.verdict[dir] = kafka::looks_like_request(&s.prefix[dir]);
        let decided = match s.verdict {
            [Some(true), _] | [_, Some(true)] => Some(true),
            [Some(false), Some(false)] => Some(false),
            [Some(false), None] | [None, Some(false)] if !d.midstream() => Some(false),
            _ => None,
        };
        if let Some(is_kafka) = decided {
            self.sniffing.remove(&conn_id);
            self.verdicts.push((d.hdr.conn_key, is_kafka));
            if is_kafka {
                self.counters.detected_kafka += 1;
                tracing::info!(conn = conn_id, "Kafka detected on a port outside --ports");
            } else {
                self.counters.detected_other += 1;
            }
        }
    }

    /// Verdicts reached since the last call.
    pub fn take_verdicts(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.verdicts)
    }

    /// Forgets connections idle for longer than `idle`.
    pub fn evict_idle(&mut self, idle: Duration) {
        let evicted = self
            .reassembly
            .evict_idle(monotonic_ns(), idle.as_nanos() as u64);
        for id in &evicted {
            self.sniffing.remove(id);
        }
        self.counters.evicted_idle += evicted.len() as u64;
    }

    pub fn connections(&self) -> usize {
        self.reassembly.len()
    }
}

/// Runs the tracer until interrupted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.capture_config()?;
    let mut capture = Capture::start(&cfg)?;
    let mut pipeline = Pipeline::new(args.max_connections);
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut stats = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    let mut last = (KernelCounters::default(), PipelineCounters::default());
    loop {
        tokio::select! {
            r = capture.readable() => {
                r?;
                capture.drain(|rec| pipeline.on_record(rec));
                for (key, is_kafka) in pipeline.take_verdicts() {
                    if let Err(e) = capture.set_verdict(key, is_kafka) {
                        tracing::warn!("{e:#}");
                    }
                }
            }
            _ = stats.tick() => {
                pipeline.evict_idle(Duration::from_secs(args.idle_timeout));
                let now = (capture.counters()?, pipeline.counters);
                if now != last {
                    log_counters(&now.0, &now.1, pipeline.connections());
                    last = now;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    capture.drain(|rec| pipeline.on_record(rec));
    log_counters(
        &capture.counters()?,
        &pipeline.counters,
        pipeline.connections(),
    );
    tracing::info!("detaching");
    Ok(())
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
        + p.refused_records;
    let PipelineCounters {
        bad_records,
        refused_records,
        detected_kafka,
        detected_other,
        evicted_idle,
    } = *p;
    let kernel = k
        .named()
        .iter()
        .map(|(n, v, _)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let line = format!(
        "connections={connections} bad_records={bad_records} refused_records={refused_records} \
         detected_kafka={detected_kafka} detected_other={detected_other} \
         evicted_idle={evicted_idle} {kernel}"
    );
    if lost > 0 {
        tracing::warn!("capture counters (with losses): {line}");
    } else {
        tracing::info!("capture counters: {line}");
    }
}
