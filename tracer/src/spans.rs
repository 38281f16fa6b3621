//! Spans from decoded exchanges, following the OpenTelemetry messaging conventions for Kafka:
//! a PRODUCER span `send {topic}` per produced batch, a CONSUMER span `poll {topic}` per
//! fetched batch.
//!
//! One rule, applied by every tracer to the same record batch, gives both sides the same
//! identities without coordination (see `correlate`):
//! - the producer span's id is derived from (cluster, topic, partition, base offset);
//! - its trace is the records' trace context when they all carry the same one (the span is then
//!   that context's child), else the derived batch trace, with a link to each distinct context;
//! - a consumer span is a child of that producer span, in that trace.

use std::sync::Arc;

use tracer_common::ConnTuple;

use crate::{
    capture::endpoints,
    correlate::{self, TraceContext},
    counters::Counter,
    kafka::{
        Acknowledgement, AcquiredRecords, BatchInfo, Catalog, EndTxn, FetchPartitionResponse,
        PartitionRecords, ProducePartition, ProduceRequest, ProduceResponse, Request, Response,
        SharePartitionResponse, TopicRef,
    },
    pipeline::ConnExchange,
};

/// Whether spans carry record keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyMode {
    #[default]
    Off,
    Plain,
    Hash,
}

/// What spans say of record keys: nothing, the key, or a keyed hash of it.
#[derive(Clone, Debug, Default)]
pub enum RecordKeys {
    #[default]
    Off,
    Plain,
    /// BLAKE3 keyed with a key derived from the deployment's secret: equal record keys give
    /// equal hashes on every tracer sharing the secret, and without it a hash cannot be tested
    /// against guessed keys.
    Hash([u8; 32]),
}

impl RecordKeys {
    /// Hashing keyed by `secret`.
    pub fn hashed_with(secret: &[u8]) -> Self {
        Self::Hash(blake3::derive_key("kafka-tracer record keys v1", secret))
    }

    fn value(&self, key: &[u8]) -> Option<Value> {
        match self {
            Self::Off => None,
            Self::Plain => Some(Value::Str(String::from_utf8_lossy(key).into())),
            Self::Hash(k) => {
                let h = blake3::keyed_hash(k, key);
                let hex: String = h.as_bytes()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Some(Value::Str(hex.into()))
            }
        }
    }
}

/// The key of the only record of batch `batch`, when the batch has one record and keys are on.
fn single_key(p: &PartitionRecords, batch: u32, keys: &RecordKeys) -> Option<Value> {
    let mut records = p.of_batch(batch);
    let (only, None) = (records.next()?, records.next()) else {
        return None;
    };
    keys.value(p.slice(only.key.as_ref()?))
}

/// Links kept per span; the rest are counted.
pub const MAX_LINKS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Producer,
    Consumer,
    /// A settle operation (share-group acknowledgement).
    Client,
}

impl SpanKind {
    /// The OTLP `SpanKind` number: CLIENT = 3, PRODUCER = 4, CONSUMER = 5.
    pub fn otlp(self) -> i32 {
        match self {
            Self::Client => 3,
            Self::Producer => 4,
            Self::Consumer => 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Arc<str>),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Str(s.into())
    }
}

impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Self {
        Self::Str(s)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub tracestate: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub tracestate: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// Kernel times (CLOCK_MONOTONIC ns): request sent or received, response complete.
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub links: Vec<Link>,
    /// Kafka error code, when the response carried one for this partition.
    pub error_code: Option<i16>,
    /// The producer's sampling decision, from the record headers.
    pub parent_sampled: Option<bool>,
    /// The traced process.
    pub tgid: u32,
}

/// What span building could not do, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanCounters {
    pub producer_spans: u64,
    pub consumer_spans: u64,
    /// SASL authentication spans.
    pub authentication_spans: u64,
    /// Produce without offsets (acks=0, or an error): the span has no derived identity, so a
    /// consumer cannot be linked to it.
    pub unlinked_produces: u64,
    /// Links beyond [`MAX_LINKS`] dropped.
    pub links_dropped: u64,
    /// Batches of topics whose name is not known yet (topic id not resolved).
    pub unnamed_topics: u64,
    /// Fetched batches of aborted transactions: a read_committed consumer drops them, so they
    /// get no poll span.
    pub aborted_batches: u64,
}

impl SpanCounters {
    /// Every counter, for the stats line and `/metrics`.
    pub fn named(&self) -> Vec<Counter> {
        vec![
            Counter::count(
                "producer_spans",
                self.producer_spans,
                "send and transaction spans built",
            ),
            Counter::count(
                "consumer_spans",
                self.consumer_spans,
                "poll and acknowledgement spans built",
            ),
            Counter::count(
                "authentication_spans",
                self.authentication_spans,
                "SASL authentication spans built",
            ),
            Counter::count(
                "unlinked_produces",
                self.unlinked_produces,
                "produce batches without offsets (acks=0 or errors)",
            ),
            Counter::count(
                "links_dropped",
                self.links_dropped,
                "span links beyond the cap",
            ),
            Counter::count(
                "unknown_topic_spans",
                self.unnamed_topics,
                "batches whose topic id was not resolved",
            ),
            Counter::count(
                "aborted_batches",
                self.aborted_batches,
                "fetched batches of aborted transactions (dropped by read_committed consumers; no span)",
            ),
        ]
    }
}

/// Where the trace of a batch comes from.
struct BatchTrace {
    trace_id: [u8; 16],
    parent: Option<[u8; 8]>,
    tracestate: Option<String>,
    sampled: Option<bool>,
    links: Vec<Link>,
}

/// The distinct trace contexts of the records of batch `batch` in `p`.
fn contexts(p: &PartitionRecords, batch: u32) -> Vec<TraceContext> {
    let mut out: Vec<TraceContext> = Vec::new();
    for r in p.of_batch(batch) {
        if let Some(c) = correlate::extract(p.headers_of(r))
            && !out
                .iter()
                .any(|o| o.trace_id == c.trace_id && o.span_id == c.span_id)
        {
            out.push(c);
        }
    }
    out
}

fn batch_trace(
    ctxs: Vec<TraceContext>,
    derived_trace: [u8; 16],
    counters: &mut SpanCounters,
) -> BatchTrace {
    if let [one] = ctxs.as_slice() {
        return BatchTrace {
            trace_id: one.trace_id,
            parent: Some(one.span_id),
            tracestate: one.tracestate.clone(),
            sampled: one.sampled,
            links: Vec::new(),
        };
    }
    counters.links_dropped += ctxs.len().saturating_sub(MAX_LINKS) as u64;
    let sampled = ctxs.iter().any(|c| c.sampled == Some(true)).then_some(true);
    BatchTrace {
        trace_id: derived_trace,
        parent: None,
        tracestate: None,
        sampled,
        links: ctxs
            .into_iter()
            .take(MAX_LINKS)
            .map(|c| Link {
                trace_id: c.trace_id,
                span_id: c.span_id,
                tracestate: c.tracestate,
            })
            .collect(),
    }
}

/// A span id no other tracer will derive: for spans nobody needs to find again.
fn random_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    // SAFETY: valid buffer; getrandom never fails for 8 bytes once the pool is initialised.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), 8, 0) };
    if n != 8 || id == [0; 8] {
        id = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1)
        .to_be_bytes();
    }
    id
}

fn random_trace_id() -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&random_span_id());
    t[8..].copy_from_slice(&random_span_id());
    t
}

/// Attributes every span of an exchange has.
fn partition_attributes(
    o: &ConnExchange,
    topic: &Arc<str>,
    partition: i32,
    catalog: &Catalog,
    tuple: &ConnTuple,
) -> Vec<(&'static str, Value)> {
    let mut a: Vec<(&'static str, Value)> = vec![
        ("messaging.destination.name", topic.clone().into()),
        (
            "messaging.destination.partition.id",
            Value::Str(partition.to_string().into()),
        ),
    ];
    a.extend(connection(o, catalog, tuple));
    a
}

/// Attributes of every span of an exchange, topic or not: the system, the broker and the
/// connection, the client id, the cluster, the request's version.
fn connection(
    o: &ConnExchange,
    catalog: &Catalog,
    tuple: &ConnTuple,
) -> Vec<(&'static str, Value)> {
    let (local, remote) = endpoints(tuple);
    let broker = o.broker();
    let mut a: Vec<(&'static str, Value)> = vec![
        ("messaging.system", "kafka".into()),
        ("server.address", Value::Str(broker.ip().to_string().into())),
        ("server.port", (broker.port() as i64).into()),
        (
            "network.peer.address",
            Value::Str(remote.ip().to_string().into()),
        ),
        ("network.peer.port", (remote.port() as i64).into()),
        ("network.local.port", (local.port() as i64).into()),
        // The Produce/Fetch version the client and broker agreed on (not a semantic
        // convention): what a version-dependent difference between clients comes down to.
        (
            "messaging.kafka.request.version",
            i64::from(o.exchange.header.api_version).into(),
        ),
    ];
    if let Some(c) = &o.exchange.header.client_id {
        a.push(("messaging.client.id", c.as_str().into()));
    }
    if let Some(c) = catalog.cluster_id(&broker) {
        a.push(("messaging.kafka.cluster.id", c.into()));
    }
    a
}

/// The span of a transaction's end (EndTxn): `commit transaction` or `abort transaction`, with
/// the transactional id and producer id that the transaction's send spans carry too.
fn end_txn_span(o: &ConnExchange, catalog: &Catalog, t: &EndTxn, error: Option<i16>) -> Span {
    let (start, end) = exchange_times(o);
    let outcome = if t.committed { "commit" } else { "abort" };
    let mut attributes = connection(o, catalog, &o.tuple);
    attributes.push(("messaging.operation.type", "settle".into()));
    attributes.push(("messaging.operation.name", outcome.into()));
    attributes.push((
        "messaging.kafka.transactional_id",
        t.transactional_id.as_str().into(),
    ));
    attributes.push(("messaging.kafka.producer_id", t.producer_id.into()));
    Span {
        trace_id: random_trace_id(),
        span_id: random_span_id(),
        parent_span_id: None,
        tracestate: None,
        name: format!("{outcome} transaction"),
        kind: SpanKind::Client,
        start_ns: start,
        end_ns: end,
        attributes,
        links: Vec::new(),
        error_code: error,
        parent_sampled: None,
        tgid: o.tgid,
    }
}

/// The span of a SASL authentication (`SaslAuthenticate`): `authenticate`, with the mechanism
/// the connection's handshake named and, when the broker refused the credentials, an error
/// status (SASL_AUTHENTICATION_FAILED). The credentials themselves are never read.
fn authenticate_span(
    o: &ConnExchange,
    catalog: &Catalog,
    mechanism: Option<&str>,
    code: i16,
) -> Span {
    let (start, end) = exchange_times(o);
    let mut attributes = connection(o, catalog, &o.tuple);
    attributes.push(("messaging.operation.name", "authenticate".into()));
    if let Some(m) = mechanism {
        attributes.push(("messaging.kafka.sasl.mechanism", m.into()));
    }
    Span {
        trace_id: random_trace_id(),
        span_id: random_span_id(),
        parent_span_id: None,
        tracestate: None,
        name: "authenticate".into(),
        kind: SpanKind::Client,
        start_ns: start,
        end_ns: end,
        attributes,
        links: Vec::new(),
        error_code: (code != 0).then_some(code),
        parent_sampled: None,
        tgid: o.tgid,
    }
}

/// Offsets of a batch as attributes: the offset for one record, first and last otherwise.
fn offsets(a: &mut Vec<(&'static str, Value)>, first: i64, count: usize) {
    if count == 1 {
        a.push(("messaging.kafka.offset", first.into()));
    } else {
        a.push(("messaging.batch.message_count", (count as i64).into()));
        a.push(("messaging.kafka.first_offset", first.into()));
        a.push((
            "messaging.kafka.last_offset",
            (first + count as i64 - 1).into(),
        ));
    }
}

fn topic_name(catalog: &Catalog, t: &TopicRef, counters: &mut SpanCounters) -> Arc<str> {
    catalog.topic_name(t).unwrap_or_else(|| {
        counters.unnamed_topics += 1;
        t.to_string().into()
    })
}

/// From the request's first byte to the response's last (or the request's last, unanswered).
fn exchange_times(o: &ConnExchange) -> (u64, u64) {
    let ex = &o.exchange;
    (
        ex.request_ns.0,
        ex.response_ns.map_or(ex.request_ns.1, |(_, e)| e),
    )
}

/// What a consumer received of one batch: the records `first..first + count` of batch `batch`.
struct Received<'a> {
    topic: &'a Arc<str>,
    partition: i32,
    records: &'a PartitionRecords,
    batch: u32,
    first: i64,
    count: usize,
    group: Option<Arc<str>>,
    /// Share groups: how often these records have been delivered (1 the first time).
    delivery_count: Option<i16>,
    error_code: i16,
}

/// The poll span of what a consumer received of one batch, in the trace of the batch's send
/// span (or of the trace context its records carry).
fn poll_span(at: &Where<'_>, counters: &mut SpanCounters, r: Received<'_>) -> Span {
    let (o, catalog, cluster, keys) = (at.o, at.catalog, at.cluster, at.keys);
    let (start, end) = exchange_times(o);
    let b = &r.records.batches[r.batch as usize];
    let (derived_trace, producer_span) =
        correlate::batch_ids(cluster, r.topic, r.partition, b.base_offset);
    let trace = batch_trace(contexts(r.records, r.batch), derived_trace, counters);
    let mut attributes = partition_attributes(o, r.topic, r.partition, catalog, &o.tuple);
    attributes.push(("messaging.operation.type", "receive".into()));
    attributes.push(("messaging.operation.name", "poll".into()));
    offsets(&mut attributes, r.first, r.count);
    if let Some(k) = single_key(r.records, r.batch, keys) {
        attributes.push(("messaging.kafka.message.key", k));
    }
    if let Some(g) = r.group {
        attributes.push(("messaging.consumer.group.name", g.into()));
    }
    if let Some(n) = r.delivery_count {
        attributes.push(("messaging.kafka.share.delivery_count", i64::from(n).into()));
    }
    // End-to-end: from the batch's (first record's) timestamp to reception.
    attributes.push((
        "messaging.kafka.batch.timestamp_ms",
        b.base_timestamp.into(),
    ));
    counters.consumer_spans += 1;
    Span {
        trace_id: trace.trace_id,
        span_id: random_span_id(),
        parent_span_id: Some(producer_span),
        tracestate: trace.tracestate,
        name: format!("poll {}", r.topic),
        kind: SpanKind::Consumer,
        start_ns: start,
        end_ns: end,
        attributes,
        links: trace.links,
        error_code: (r.error_code != 0).then_some(r.error_code),
        parent_sampled: trace.sampled,
        tgid: o.tgid,
    }
}

/// The part of batch `b` in the acquired ranges: its first offset, how many offsets, and the
/// highest delivery count among them; `None` when none of it was acquired.
fn acquired_in(b: &BatchInfo, acquired: &[AcquiredRecords]) -> Option<(i64, usize, i16)> {
    if b.control {
        return None;
    }
    let last = b.base_offset.saturating_add(i64::from(b.last_offset_delta));
    let mut found: Option<(i64, usize, i16)> = None;
    for a in acquired {
        let (from, to) = (a.first_offset.max(b.base_offset), a.last_offset.min(last));
        if from > to {
            continue;
        }
        let n = usize::try_from(to - from + 1).unwrap_or(usize::MAX);
        found = Some(match found {
            None => (from, n, a.delivery_count),
            Some((f, c, d)) => (f.min(from), c.saturating_add(n), d.max(a.delivery_count)),
        });
    }
    found
}

/// The settle span of a share-group acknowledgement: the range, what became of it (accepted,
/// released for redelivery, rejected), under the send span of the first delivered batch it
/// covers and linked to the others' (from the catalog's memory of recent deliveries).
fn ack_span(
    at: &Where<'_>,
    counters: &mut SpanCounters,
    a: &Acknowledgement,
    group: Option<Arc<str>>,
) -> Span {
    let (o, catalog, cluster) = (at.o, at.catalog, at.cluster);
    let (start, end) = exchange_times(o);
    let topic = topic_name(catalog, &a.topic, counters);
    let mut bases = catalog
        .share_batches(o.tgid, &a.topic, a.partition, a.first_offset, a.last_offset)
        .into_iter()
        .map(|base| correlate::batch_ids(cluster, &topic, a.partition, base));
    let (trace_id, parent) = match bases.next() {
        Some((t, s)) => (t, Some(s)),
        None => (random_trace_id(), None),
    };
    let links: Vec<Link> = bases
        .take(MAX_LINKS)
        .map(|(trace_id, span_id)| Link {
            trace_id,
            span_id,
            tracestate: None,
        })
        .collect();
    let mut attributes = partition_attributes(o, &topic, a.partition, catalog, &o.tuple);
    attributes.push(("messaging.operation.type", "settle".into()));
    attributes.push(("messaging.operation.name", "ack".into()));
    attributes.push(("messaging.kafka.first_offset", a.first_offset.into()));
    attributes.push(("messaging.kafka.last_offset", a.last_offset.into()));
    if let Some(g) = group {
        attributes.push(("messaging.consumer.group.name", g.into()));
    }
    for (name, n) in [
        ("messaging.kafka.share.accepted", a.counts.accepted),
        ("messaging.kafka.share.released", a.counts.released),
        ("messaging.kafka.share.rejected", a.counts.rejected),
    ] {
        if n > 0 {
            attributes.push((name, i64::try_from(n).unwrap_or(i64::MAX).into()));
        }
    }
    counters.consumer_spans += 1;
    Span {
        trace_id,
        span_id: random_span_id(),
        parent_span_id: parent,
        tracestate: None,
        name: format!("ack {topic}"),
        kind: SpanKind::Client,
        start_ns: start,
        end_ns: end,
        attributes,
        links,
        error_code: None,
        parent_sampled: None,
        tgid: o.tgid,
    }
}

/// The spans of one exchange seen by the client (producer or consumer); none for the broker
/// side or for other APIs.
pub fn spans(
    o: &ConnExchange,
    catalog: &Catalog,
    keys: &RecordKeys,
    counters: &mut SpanCounters,
) -> Vec<Span> {
    let ex = &o.exchange;
    if !ex.client_side {
        return Vec::new();
    }
    let cluster = catalog.cluster_id(&o.broker());
    let at = Where {
        o,
        catalog,
        cluster: cluster.as_deref().unwrap_or(""),
        keys,
    };
    let mut out = Vec::new();
    match (&ex.request, &ex.response) {
        (Ok(Request::Produce(req)), resp) => {
            let answers = match resp {
                Some(Ok(Response::Produce(r))) => Some(r),
                _ => None,
            };
            for p in req
                .partitions
                .iter()
                .filter(|p| p.records.record_count() > 0)
            {
                send_spans(&at, req, p, answers, counters, &mut out);
            }
        }
        (Ok(Request::Fetch(_)), Some(Ok(Response::Fetch(f)))) => {
            let group = ex
                .header
                .client_id
                .as_deref()
                .and_then(|c| catalog.group(o.tgid, c));
            for p in &f.partitions {
                fetch_poll_spans(&at, p, group.clone(), counters, &mut out);
            }
        }
        (Ok(Request::Share(req)), resp) => {
            let group: Option<Arc<str>> = req.group_id.as_deref().map(Into::into);
            if let Some(Ok(Response::ShareFetch(f))) = resp {
                for p in &f.partitions {
                    share_poll_spans(&at, p, group.clone(), counters, &mut out);
                }
            }
            for a in &req.acknowledgements {
                out.push(ack_span(&at, counters, a, group.clone()));
            }
        }
        (Ok(Request::SaslAuthenticate(mechanism)), Some(Ok(Response::SaslAuthenticate(code)))) => {
            counters.authentication_spans += 1;
            out.push(authenticate_span(o, catalog, mechanism.as_deref(), *code));
        }
        (Ok(Request::EndTxn(t)), resp) => {
            let error = match resp {
                Some(Ok(r)) => r.error_code(),
                _ => None,
            };
            counters.producer_spans += 1;
            out.push(end_txn_span(o, catalog, t, error));
        }
        _ => {}
    }
    out
}

/// Where an exchange happened, and what spans of it need besides the message.
struct Where<'a> {
    o: &'a ConnExchange,
    catalog: &'a Catalog,
    cluster: &'a str,
    keys: &'a RecordKeys,
}

/// A send span per record batch of one partition of a Produce request. Its identity comes from
/// the offsets the broker answered, so a consumer's tracer can derive the same.
fn send_spans(
    at: &Where<'_>,
    req: &ProduceRequest,
    p: &ProducePartition,
    answers: Option<&ProduceResponse>,
    counters: &mut SpanCounters,
    out: &mut Vec<Span>,
) {
    let (o, catalog) = (at.o, at.catalog);
    let (start, end) = exchange_times(o);
    let topic = topic_name(catalog, &p.topic, counters);
    let answer = answers.and_then(|r| {
        r.partitions.iter().find(|a| {
            a.partition == p.partition && catalog.topic_name(&a.topic).as_deref() == Some(&topic)
        })
    });
    let base = answer
        .filter(|a| a.error_code == 0 && a.base_offset >= 0)
        .map(|a| a.base_offset);
    for (i, b) in p.records.batches.iter().enumerate() {
        let batch = i as u32;
        if b.control {
            continue;
        }
        // The broker assigns consecutive offsets to the request's batches.
        let first = base.map(|base| p.records.first_offset(batch, Some(base)));
        let ctxs = contexts(&p.records, batch);
        let (trace, span_id) = match first {
            Some(first) => {
                let (t, s) = correlate::batch_ids(at.cluster, &topic, p.partition, first);
                (batch_trace(ctxs, t, counters), s)
            }
            None => {
                counters.unlinked_produces += 1;
                (
                    batch_trace(ctxs, random_trace_id(), counters),
                    random_span_id(),
                )
            }
        };
        counters.producer_spans += 1;
        out.push(Span {
            trace_id: trace.trace_id,
            span_id,
            parent_span_id: trace.parent,
            tracestate: trace.tracestate,
            name: format!("send {topic}"),
            kind: SpanKind::Producer,
            start_ns: start,
            end_ns: end,
            attributes: send_attributes(at, req, p, batch, &topic, first),
            links: trace.links,
            error_code: answer.map(|a| a.error_code).filter(|&e| e != 0),
            parent_sampled: trace.sampled,
            tgid: o.tgid,
        });
    }
}

/// The attributes of the send span of batch `batch`: the partition's and the connection's,
/// the batch's offsets (when the broker assigned them) or its size, codec, transaction and key.
fn send_attributes(
    at: &Where<'_>,
    req: &ProduceRequest,
    p: &ProducePartition,
    batch: u32,
    topic: &Arc<str>,
    first: Option<i64>,
) -> Vec<(&'static str, Value)> {
    let b = &p.records.batches[batch as usize];
    let count = p.records.of_batch(batch).count();
    let mut attributes = partition_attributes(at.o, topic, p.partition, at.catalog, &at.o.tuple);
    attributes.push(("messaging.operation.type", "send".into()));
    attributes.push(("messaging.operation.name", "send".into()));
    match first {
        Some(first) => offsets(&mut attributes, first, count),
        None => attributes.push(("messaging.batch.message_count", (count as i64).into())),
    }
    attributes.push(("messaging.kafka.compression", b.compression.name().into()));
    if let Some(t) = &req.transactional_id {
        attributes.push(("messaging.kafka.transactional_id", t.as_str().into()));
        attributes.push(("messaging.kafka.producer_id", b.producer_id.into()));
    }
    if let Some(k) = single_key(&p.records, batch, at.keys) {
        attributes.push(("messaging.kafka.message.key", k));
    }
    attributes
}

/// A poll span per record batch of one partition of a Fetch response; batches of aborted
/// transactions get none (a read_committed consumer drops them).
fn fetch_poll_spans(
    at: &Where<'_>,
    p: &FetchPartitionResponse,
    group: Option<Arc<str>>,
    counters: &mut SpanCounters,
    out: &mut Vec<Span>,
) {
    let topic = topic_name(at.catalog, &p.topic, counters);
    counters.aborted_batches += p.records.batches.iter().filter(|b| b.aborted).count() as u64;
    for (i, b) in p
        .records
        .batches
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.control && !b.aborted)
    {
        let count = p.records.of_batch(i as u32).count();
        if count == 0 {
            continue;
        }
        let received = Received {
            topic: &topic,
            partition: p.partition,
            records: &p.records,
            batch: i as u32,
            first: b.base_offset,
            count,
            group: group.clone(),
            delivery_count: None,
            error_code: p.error_code,
        };
        out.push(poll_span(at, counters, received));
    }
}

/// A poll span per record batch of one partition of a ShareFetch response, for the records
/// this member acquired (only those were delivered to it).
fn share_poll_spans(
    at: &Where<'_>,
    p: &SharePartitionResponse,
    group: Option<Arc<str>>,
    counters: &mut SpanCounters,
    out: &mut Vec<Span>,
) {
    let topic = topic_name(at.catalog, &p.topic, counters);
    for (i, b) in p.records.batches.iter().enumerate() {
        let Some((first, count, delivery_count)) = acquired_in(b, &p.acquired) else {
            continue;
        };
        let received = Received {
            topic: &topic,
            partition: p.partition,
            records: &p.records,
            batch: i as u32,
            first,
            count,
            group: group.clone(),
            delivery_count: Some(delivery_count),
            error_code: p.error_code,
        };
        out.push(poll_span(at, counters, received));
    }
}
