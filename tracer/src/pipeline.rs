//! The userspace stages after the capture, for every connection: byte streams (reassembly),
//! frames and decoded request/response exchanges (kafka), and the sniff verdicts that tell the
//! kernel which connections on unlisted ports are Kafka.

use std::{collections::HashMap, net::SocketAddr};

use tracer_common::{ConnTuple, Direction};

use crate::{
    capture::{
        ConnEventExt as _, DataRecord, RingRecord, RingRecordError, Run, comm_str, endpoints,
    },
    counters::Counter,
    kafka::{self, Catalog, DecodeOptions, Exchange, FramerCounters, Session, SessionCounters},
    reassembly::{Piece, Reassembler},
};

/// Limits of the pipeline; each bounds memory, and each overflow is counted.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub max_connections: usize,
    /// Bytes of one frame kept for decoding; larger frames are decoded from this prefix.
    pub max_frame_bytes: usize,
    /// Requests awaiting a response, per connection.
    pub max_in_flight: usize,
    /// What all connections' requests awaiting a response may weigh together (estimated
    /// bytes).
    pub max_in_flight_bytes: usize,
    /// Bytes buffered by all connections' framers together.
    pub max_buffered_bytes: usize,
    pub decode: DecodeOptions,
    /// Exchanges naming unknown topic ids wait this long for the broker lookup that names
    /// them (zero: no lookups, no waiting).
    pub park: std::time::Duration,
    /// The broker ports (`--ports`): on a connection to or from one, which end sends the
    /// requests is known from the ports alone.
    pub ports: Vec<u16>,
}

impl PipelineConfig {
    /// The direction requests travel on a connection with `tuple`, when the ports tell.
    fn request_direction(&self, tuple: &ConnTuple) -> Option<Direction> {
        tracer_common::request_direction(tuple, |p| self.ports.contains(&p))
    }
}

/// Exchanges waiting for a topic lookup at most; past it the oldest goes on unnamed.
const MAX_PARKED: usize = 4096;
/// New connections' processes noted between two drains at most (the rest are named later,
/// when their spans are built).
const MAX_NEW_PROCESSES: usize = 4096;

/// The bounds' defaults, written once: `--help` shows them and tests get them from
/// `PipelineConfig::default`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65536;
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 128 << 20;

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            decode: DecodeOptions::default(),
            park: std::time::Duration::ZERO,
            ports: Vec::new(),
        }
    }
}

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
    /// Of those, connections the kernel had stopped following with no close seen.
    pub forgotten_connections: u64,
    /// Bytes not framed because all framers together held --max-buffered-bytes.
    pub buffer_full_bytes: u64,
    /// Catalog entries (topic ids, clusters, groups) refused because a table was full.
    pub catalog_refused: u64,
    /// Metadata lookups sent to brokers for unknown topic ids, and those that failed.
    pub topic_lookups: u64,
    pub topic_lookup_failures: u64,
    /// Connections whose TLS plaintext is read from the TLS library.
    pub tls_connections: u64,
    /// TLS connections whose plaintext the tracer cannot read, open now.
    pub tls_undecoded_connections: u64,
    pub framing: FramerCounters,
    pub kafka: SessionCounters,
}

impl PipelineCounters {
    /// Every counter, with the framers' and sessions', for the stats line and `/metrics`.
    pub fn named(&self) -> Vec<Counter> {
        let mut all = vec![
            Counter::loss(
                "bad_records",
                self.bad_records,
                "ring-buffer records that did not parse",
            ),
            Counter::loss(
                "refused_records",
                self.refused_records,
                "records of connections beyond --max-connections",
            ),
            Counter::count(
                "detected_kafka",
                self.detected_kafka,
                "sniffed connections found to be Kafka",
            ),
            Counter::count(
                "detected_other",
                self.detected_other,
                "sniffed connections found not to be Kafka",
            ),
            Counter::count(
                "evicted_connections",
                self.evicted_idle,
                "connections forgotten after --idle-timeout",
            ),
            Counter::loss(
                "forgotten_connections",
                self.forgotten_connections,
                "connections the kernel stopped following with no close seen (dropped from its full table, --kernel-connections, or the close record lost): their later bytes were not copied (fd mode) or came under a new connection (sock mode)",
            ),
            Counter::loss(
                "buffer_full_bytes",
                self.buffer_full_bytes,
                "bytes skipped: frame buffers full",
            ),
            Counter::count(
                "catalog_refused",
                self.catalog_refused,
                "topic ids, clusters and groups not remembered: their table was full",
            ),
            Counter::count(
                "topic_lookups",
                self.topic_lookups,
                "metadata lookups for unknown topic ids",
            ),
            Counter::count(
                "topic_lookup_failures",
                self.topic_lookup_failures,
                "failed metadata lookups",
            ),
            Counter::count(
                "tls_connections",
                self.tls_connections,
                "TLS connections whose plaintext is read from the TLS library",
            ),
            Counter::level(
                "tls_undecoded_connections",
                self.tls_undecoded_connections,
                "TLS connections open now whose plaintext the tracer cannot read (the log names their processes)",
            ),
            Counter::count(
                "invalid_names",
                kafka::names::refused(),
                "topic names and ids from the wire that broke their rule, kept as <invalid>",
            ),
        ];
        all.extend(self.framing.named());
        all.extend(self.kafka.named());
        all
    }
}

/// A request/response exchange and the connection it happened on.
#[derive(Debug, Clone)]
pub struct ConnExchange {
    pub conn_id: u64,
    /// The traced process and thread name.
    pub tgid: u32,
    pub comm: [u8; 16],
    pub tuple: ConnTuple,
    pub exchange: Exchange,
}

impl ConnExchange {
    /// The broker's address: the remote end for a client, the local end for a broker.
    pub fn broker(&self) -> SocketAddr {
        let (local, remote) = endpoints(&self.tuple);
        if self.exchange.client_side {
            remote
        } else {
            local
        }
    }
}

/// First bytes of each direction of a sniffed connection, until a verdict.
#[derive(Default)]
struct Sniff {
    prefix: [Vec<u8>; 2],
    verdict: [Option<bool>; 2],
}

/// Bytes kept per direction while sniffing: a request header's fixed part and a client id.
const SNIFF_PREFIX: usize = 64;

/// A connection whose first bytes were a TLS record and that no TLS library call has been tied
/// to (yet): the kernel copies none of its ciphertext.
struct Ciphertext {
    tgid: u32,
    comm: [u8; 16],
    tuple: ConnTuple,
    /// Kernel time of its first record.
    since_ns: u64,
    /// Reported as undecoded (past [`TLS_TIE_WAIT_NS`]).
    undecoded: bool,
}

/// How long a TLS connection may wait for a TLS library call to be tied to it (OpenSSL
/// clients' first call comes right after the handshake) before it is reported as one the
/// tracer cannot read.
const TLS_TIE_WAIT_NS: u64 = 3_000_000_000;
/// Processes named in a log line about undecoded TLS at most (each once).
const MAX_TLS_REPORTED: usize = 4096;

pub struct Pipeline {
    cfg: PipelineConfig,
    reassembly: Reassembler,
    sessions: HashMap<u64, Session>,
    /// Bytes held by all sessions' framers.
    buffered: usize,
    /// What all sessions' requests in flight weigh.
    held: usize,
    /// Framing counters of sessions already gone.
    closed_framing: FramerCounters,
    sniffing: HashMap<u64, Sniff>,
    /// Connections gone idle that the kernel no longer followed: counted as forgotten at the
    /// next eviction pass unless their close, still in the ring buffer then, came meanwhile.
    unfollowed: std::collections::HashSet<u64>,
    /// Verdicts to write to the kernel after the current drain, as (conn key, is Kafka).
    verdicts: Vec<(u64, bool)>,
    exchanges: Vec<ConnExchange>,
    /// Exchanges waiting for a lookup to name their topics, oldest first (bounded).
    parked: std::collections::VecDeque<(std::time::Instant, ConnExchange)>,
    /// Brokers whose exchanges named topic ids the catalog does not know.
    unknown_topic_brokers: std::collections::HashSet<SocketAddr>,
    pub catalog: Catalog,
    counters: PipelineCounters,
    /// See [`Pipeline::take_new_processes`].
    new_processes: Vec<u32>,
    /// TLS connections not (yet) read from their TLS library, by connection id.
    ciphertext: HashMap<u64, Ciphertext>,
    /// Processes whose TLS library calls are probed ([`Pipeline::tls_probed`]).
    tls_probed: std::collections::HashSet<u32>,
    /// Processes already named in an undecoded-TLS log line.
    tls_reported: std::collections::HashSet<u32>,
    /// First records of TLS connections beyond --max-connections.
    ciphertext_refused: u64,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Self {
        Self {
            reassembly: Reassembler::new(cfg.max_connections),
            cfg,
            sessions: HashMap::new(),
            buffered: 0,
            held: 0,
            closed_framing: FramerCounters::default(),
            sniffing: HashMap::new(),
            unfollowed: Default::default(),
            verdicts: Vec::new(),
            exchanges: Vec::new(),
            parked: std::collections::VecDeque::new(),
            unknown_topic_brokers: std::collections::HashSet::new(),
            catalog: Catalog::default(),
            counters: PipelineCounters::default(),
            new_processes: Vec::new(),
            ciphertext: HashMap::new(),
            tls_probed: std::collections::HashSet::new(),
            tls_reported: std::collections::HashSet::new(),
            ciphertext_refused: 0,
        }
    }

    pub fn on_record(&mut self, rec: Result<RingRecord<'_>, RingRecordError>) {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                self.counters.bad_records += 1;
                tracing::warn!("unparsable ring-buffer record: {e}");
                return;
            }
        };
        match rec {
            RingRecord::Open(ev) => {
                let (l, r) = endpoints(&ev.tuple);
                tracing::debug!(conn = ev.conn_id, %l, %r, midstream = ev.midstream(), "connection opened");
            }
            // The capture keeps these (a new program to search for TLS libraries).
            RingRecord::Exec(_) => {}
            RingRecord::Tls(ev) => {
                // What the connection carried so far was ciphertext (or the start of a
                // handshake): gone without a count; its plaintext comes under a new id.
                self.counters.tls_connections += 1;
                self.ciphertext.remove(&ev.conn_id);
                self.sniffing.remove(&ev.conn_id);
                self.remove_session(ev.conn_id);
                self.reassembly.close(ev.conn_id, ev.tx_bytes, ev.rx_bytes);
                tracing::debug!(
                    conn = ev.conn_id,
                    "TLS connection: its plaintext is read from the TLS library"
                );
            }
            RingRecord::Close(ev) => {
                self.unfollowed.remove(&ev.conn_id);
                self.ciphertext.remove(&ev.conn_id);
                self.sniffing.remove(&ev.conn_id);
                self.end_session(ev.conn_id);
                if let Some(c) = self.reassembly.close(ev.conn_id, ev.tx_bytes, ev.rx_bytes) {
                    let (l, r) = endpoints(&c.tuple);
                    let [tx, rx] = &c.streams;
                    tracing::debug!(
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
            RingRecord::Data(d) => self.on_data(&d),
        }
    }

    fn on_data(&mut self, d: &DataRecord<'_>) {
        if self.ciphertext.contains_key(&d.hdr.conn_id) {
            return;
        }
        if d.starts_ciphertext() {
            if self.ciphertext.len() >= self.cfg.max_connections {
                self.ciphertext_refused += 1;
                return;
            }
            tracing::debug!(
                conn = d.hdr.conn_id,
                pid = d.tgid(),
                "TLS connection: its first bytes are a TLS record"
            );
            // Its process's TLS library is worth probing now: its first call comes right
            // after the handshake.
            if self.new_processes.len() < MAX_NEW_PROCESSES {
                self.new_processes.push(d.tgid());
            }
            self.ciphertext.insert(
                d.hdr.conn_id,
                Ciphertext {
                    tgid: d.tgid(),
                    comm: d.hdr.comm,
                    tuple: d.hdr.tuple,
                    since_ns: d.hdr.ts_exit_ns,
                    undecoded: false,
                },
            );
            return;
        }
        for run in d.runs() {
            match run {
                Ok(run) => self.on_run(d, run),
                Err(e) => {
                    self.counters.bad_records += 1;
                    tracing::warn!("unparsable ring-buffer record: {e}");
                    return;
                }
            }
        }
    }

    /// One run of a data record's bytes (a plain record is one).
    fn on_run(&mut self, d: &DataRecord<'_>, run: Run<'_>) {
        let Some(mut piece) = self.reassembly.push(d, run) else {
            return;
        };
        if d.sniffing() {
            self.sniff(d);
        }
        let conn_id = d.hdr.conn_id;
        let (cfg, sessions) = (&self.cfg, &mut self.sessions);
        let new_processes = &mut self.new_processes;
        let session = sessions.entry(conn_id).or_insert_with(|| {
            if new_processes.len() < MAX_NEW_PROCESSES {
                new_processes.push(d.tgid());
            }
            let session = Session::new(d.midstream(), cfg.max_frame_bytes, cfg.max_in_flight);
            match cfg.request_direction(&d.hdr.tuple) {
                Some(dir) => session.with_requests_from(dir),
                None => session,
            }
        });
        if self.buffered > self.cfg.max_buffered_bytes && !piece.bytes.is_empty() {
            // Over the global bound: this piece becomes a gap the framer knows the size of.
            self.counters.buffer_full_bytes += piece.bytes.len() as u64;
            piece = Piece {
                lost: piece.lost + piece.skipped + piece.bytes.len() as u64,
                discontinuity: true,
                skipped: 0,
                bytes: &[],
            };
        }
        let (before, held_before) = (session.buffered(), session.held());
        session.hold_at_most(
            self.cfg
                .max_in_flight_bytes
                .saturating_sub(self.held - held_before),
        );
        let (exchanges, parked, catalog, unknown) = (
            &mut self.exchanges,
            &mut self.parked,
            &mut self.catalog,
            &mut self.unknown_topic_brokers,
        );
        let park = !self.cfg.park.is_zero();
        let (tgid, comm, tuple) = (d.tgid(), d.hdr.comm, d.hdr.tuple);
        session.push(
            d.direction(),
            &piece,
            d.hdr.ts_enter_ns,
            d.hdr.ts_exit_ns,
            &self.cfg.decode,
            &mut self.counters.kafka,
            &mut |exchange| {
                let o = ConnExchange {
                    conn_id,
                    tgid,
                    comm,
                    tuple,
                    exchange,
                };
                catalog.learn(&o.exchange, tgid, o.broker());
                if catalog.has_unknown_topic(&o.exchange) {
                    unknown.insert(o.broker());
                    if park {
                        if parked.len() >= MAX_PARKED
                            && let Some((_, oldest)) = parked.pop_front()
                        {
                            exchanges.push(oldest);
                        }
                        parked.push_back((std::time::Instant::now(), o));
                        return;
                    }
                }
                exchanges.push(o);
            },
        );
        self.buffered = self.buffered - before + session.buffered();
        self.held = self.held - held_before + session.held();
    }

    /// Forgets a connection's session, and what its framers and requests in flight held.
    fn remove_session(&mut self, conn_id: u64) -> Option<Session> {
        let s = self.sessions.remove(&conn_id)?;
        self.buffered -= s.buffered();
        self.held -= s.held();
        Some(s)
    }

    fn end_session(&mut self, conn_id: u64) {
        let Some(mut s) = self.remove_session(conn_id) else {
            return;
        };
        s.close_framers();
        for f in s.framers() {
            self.closed_framing.add(&f.counters);
        }
        if let Some(c) = self.reassembly.get(conn_id) {
            let (tgid, comm, tuple) = (c.tgid, c.comm, c.tuple);
            let exchanges = &mut self.exchanges;
            s.close(&mut self.counters.kafka, &mut |exchange| {
                exchanges.push(ConnExchange {
                    conn_id,
                    tgid,
                    comm,
                    tuple,
                    exchange,
                })
            });
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

    /// Processes whose connections carried their first bytes since the last call: their
    /// resources are worth reading now, while they still run, and their TLS libraries worth
    /// probing.
    pub fn take_new_processes(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.new_processes)
    }

    /// Verdicts reached since the last call.
    pub fn take_verdicts(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.verdicts)
    }

    /// Takes the answer of a Metadata lookup at `broker`.
    pub fn learn_lookup(
        &mut self,
        broker: SocketAddr,
        result: anyhow::Result<kafka::MetadataResponse>,
    ) {
        self.counters.topic_lookups += 1;
        match result {
            Ok(m) => self.catalog.learn_metadata(&m, broker),
            Err(e) => {
                self.counters.topic_lookup_failures += 1;
                tracing::debug!("topic id lookup failed: {e:#}");
            }
        }
        // The answer is in: what it named, and what this broker could not name, goes on.
        let catalog = &self.catalog;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .parked
            .drain(..)
            .partition(|(_, o)| o.broker() == broker || !catalog.has_unknown_topic(&o.exchange));
        self.parked = waiting.into();
        self.exchanges.extend(ready.into_iter().map(|(_, o)| o));
    }

    /// Lets exchanges that waited longer than the configured time (or all, at shutdown) go on
    /// with their topics named by id.
    pub fn release_parked(&mut self, all: bool) {
        while let Some((at, _)) = self.parked.front() {
            if !all && at.elapsed() < self.cfg.park {
                break;
            }
            let (_, o) = self.parked.pop_front().expect("front exists");
            self.exchanges.push(o);
        }
    }

    /// Brokers that named topics by ids not yet known, since the last call.
    pub fn take_unknown_topic_brokers(&mut self) -> Vec<SocketAddr> {
        self.unknown_topic_brokers.drain().collect()
    }

    /// Exchanges completed since the last call.
    pub fn take_exchanges(&mut self) -> Vec<ConnExchange> {
        std::mem::take(&mut self.exchanges)
    }

    /// Forgets connections with no record for `idle_ns` before `now_ns` (kernel clock).
    /// `follows(key, id)` says whether the kernel still follows a connection under that id: one
    /// it does not, and whose close does not follow before the next pass, was dropped from the
    /// kernel's full table (or its close record was lost), and that is counted.
    pub fn evict_idle(&mut self, now_ns: u64, idle_ns: u64, follows: impl Fn(u64, u64) -> bool) {
        // A ciphertext connection sends no records after its first: it goes at its close, or
        // when its process is gone (one that exits without close(), in fd mode).
        self.ciphertext.retain(|_, c| {
            now_ns.saturating_sub(c.since_ns) < idle_ns
                || std::path::Path::new(&format!("/proc/{}", c.tgid)).exists()
        });
        self.counters.forgotten_connections += self.unfollowed.len() as u64;
        self.unfollowed.clear();
        let evicted = self.reassembly.evict_idle(now_ns, idle_ns);
        for &(id, key) in &evicted {
            self.sniffing.remove(&id);
            self.end_session(id);
            if !follows(key, id) {
                self.unfollowed.insert(id);
            }
        }
        self.counters.evicted_idle += evicted.len() as u64;
    }

    /// Process `tgid`'s TLS library calls are probed now: its TLS connections will be read.
    pub fn tls_probed(&mut self, tgid: u32) {
        if self.tls_probed.len() < MAX_TLS_REPORTED || self.tls_probed.contains(&tgid) {
            self.tls_probed.insert(tgid);
        }
    }

    /// Reports TLS connections that waited [`TLS_TIE_WAIT_NS`] before `now_ns` (kernel clock)
    /// for a TLS library call to be tied to them: the log names each process once, and the
    /// `tls_undecoded_connections` level counts them while they stay open.
    pub fn check_tls(&mut self, now_ns: u64) {
        for c in self.ciphertext.values_mut() {
            if c.undecoded || now_ns.saturating_sub(c.since_ns) < TLS_TIE_WAIT_NS {
                continue;
            }
            c.undecoded = true;
            if self.tls_reported.len() >= MAX_TLS_REPORTED || !self.tls_reported.insert(c.tgid) {
                continue;
            }
            let (_, broker) = endpoints(&c.tuple);
            if self.tls_probed.contains(&c.tgid) {
                tracing::warn!(
                    pid = c.tgid,
                    comm = comm_str(&c.comm),
                    %broker,
                    "TLS connection not traced: the process's TLS library calls could not be tied to it (a memory BIO, as asyncio uses, makes no socket call inside them)"
                );
            } else {
                tracing::warn!(
                    pid = c.tgid,
                    comm = comm_str(&c.comm),
                    %broker,
                    "TLS connection not traced: the process encrypts with a TLS library the tracer does not read (Java's JSSE, or one without OpenSSL's or Go's symbols)"
                );
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.reassembly.len()
    }

    /// Bytes held by the framers of all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Every counter of the pipeline, and the connections it follows now.
    pub fn named(&self) -> Vec<Counter> {
        let mut all = vec![Counter::level(
            "connections",
            self.connections() as u64,
            "connections followed now",
        )];
        all.extend(self.counters().named());
        all
    }

    pub fn counters(&self) -> PipelineCounters {
        let mut c = self.counters;
        c.refused_records = self.reassembly.refused_records + self.ciphertext_refused;
        c.catalog_refused = self.catalog.refused;
        c.tls_undecoded_connections =
            self.ciphertext.values().filter(|c| c.undecoded).count() as u64;
        c.framing = self.closed_framing;
        for s in self.sessions.values() {
            for f in s.framers() {
                c.framing.add(&f.counters);
            }
        }
        c
    }
}
