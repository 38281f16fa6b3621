//! Spans from decoded traffic: the producer's and the consumer's spans, built independently (as
//! two tracers on two nodes would, each with its own catalog), land in one trace with the
//! consumer span the child of the producer span.

use std::path::Path;

use tracer::{
    correlate,
    kafka::{Catalog, DecodeOptions, Exchange, Request, Session, SessionCounters},
    pipeline::ConnExchange,
    spans::{RecordKeys, Span, SpanCounters, SpanKind, spans},
};
use tracer_common::ConnTuple;

mod support;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// The client-side exchanges of a recording, as observed on a loopback connection to 9092.
fn observed(file: &Path) -> Vec<ConnExchange> {
    let out = support::replay(
        file,
        Session::new(false, 8 << 20, 64),
        &mut SessionCounters::default(),
    );
    let mut tuple = ConnTuple {
        family: libc::AF_INET as u16,
        lport: 40000,
        rport: 9092,
        ..Default::default()
    };
    tuple.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    tuple.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    out.into_iter()
        .map(|exchange| ConnExchange {
            conn_id: 1,
            tgid: 7,
            comm: [0; 16],
            tuple,
            exchange,
        })
        .collect()
}

/// One node: its connections' exchanges teach its own catalog, then become spans.
fn node(files: &[std::path::PathBuf]) -> (Vec<Span>, SpanCounters) {
    let all: Vec<ConnExchange> = files.iter().flat_map(|f| observed(f)).collect();
    let mut catalog = Catalog::default();
    for o in &all {
        catalog.learn(&o.exchange, o.tgid, o.broker());
    }
    let mut counters = SpanCounters::default();
    let spans = all
        .iter()
        .flat_map(|o| spans(o, &catalog, &RecordKeys::Off, &mut counters))
        .collect();
    (spans, counters)
}

/// A recording's files, split by what they carry: the producer's and the consumer's.
fn split(case: &str) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let (mut producer, mut consumer) = (Vec::new(), Vec::new());
    for f in support::recordings(&support::fixtures().join(case)) {
        let ex = observed(&f);
        let has = |k: i16| ex.iter().any(|o| o.exchange.header.api_key == k);
        // Metadata-only connections teach both nodes' catalogs (each client has its own).
        if has(0) || !has(1) {
            producer.push(f.clone());
        }
        if has(1) || !has(0) {
            consumer.push(f);
        }
    }
    (producer, consumer)
}

#[test]
fn recorded_traffic_with_traceparent_links_producer_and_consumer() {
    for case in [
        "confluent-zstd",
        "confluent-none",
        "kafka-python-gzip",
        "kafka-python-lz4",
    ] {
        let (p_files, c_files) = split(case);
        let (p_spans, pc) = node(&p_files);
        let (c_spans, cc) = node(&c_files);
        let producer: Vec<_> = p_spans
            .iter()
            .filter(|s| s.kind == SpanKind::Producer)
            .collect();
        let consumer: Vec<_> = c_spans
            .iter()
            .filter(|s| s.kind == SpanKind::Consumer)
            .collect();
        assert_eq!(producer.len(), 1, "{case}: one produced batch {producer:?}");
        assert!(!consumer.is_empty(), "{case}: fetched batches");
        let p = producer[0];
        assert_eq!(
            correlate::hex(&p.trace_id),
            TRACE,
            "{case}: producer joins the header's trace"
        );
        assert_eq!(
            p.parent_span_id.map(|s| correlate::hex(&s)).as_deref(),
            Some(PARENT),
            "{case}: as its child"
        );
        assert_eq!(p.name, format!("send fx-{case}"));
        assert_eq!(
            p.span_id,
            correlate::batch_ids("tansu_cluster", &format!("fx-{case}"), 0, 0).1,
            "{case}: derived span id"
        );
        for c in &consumer {
            assert_eq!(c.trace_id, p.trace_id, "{case}: consumer in the same trace");
            assert_eq!(
                c.parent_span_id,
                Some(p.span_id),
                "{case}: child of the producer span"
            );
            assert_eq!(c.name, format!("poll fx-{case}"));
        }
        let attr = |s: &Span, k: &str| {
            s.attributes
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| format!("{v:?}"))
        };
        assert_eq!(
            attr(p, "messaging.batch.message_count").as_deref(),
            Some("Int(5)")
        );
        assert_eq!(
            attr(p, "messaging.destination.partition.id").as_deref(),
            Some("Str(\"0\")")
        );
        assert!(attr(p, "messaging.kafka.cluster.id").is_some());
        assert_eq!((pc.unlinked_produces, cc.unnamed_topics), (0, 0), "{case}");
        // Broker-side views and other APIs make no spans.
        assert!(
            p_spans
                .iter()
                .chain(&c_spans)
                .all(|s| matches!(s.kind, SpanKind::Producer | SpanKind::Consumer))
        );
    }
}

#[test]
fn produce_without_offsets_is_counted_and_not_linked() {
    let (p_files, _) = split("confluent-none");
    let mut all: Vec<ConnExchange> = p_files.iter().flat_map(|f| observed(f)).collect();
    for o in &mut all {
        if let Ok(Request::Produce(_)) = &o.exchange.request {
            o.exchange.response = None; // as with acks=0
        }
    }
    let mut catalog = Catalog::default();
    for o in &all {
        catalog.learn(&o.exchange, o.tgid, o.broker());
    }
    let mut counters = SpanCounters::default();
    let spans: Vec<Span> = all
        .iter()
        .flat_map(|o| spans(o, &catalog, &RecordKeys::Off, &mut counters))
        .collect();
    assert_eq!(spans.len(), 1);
    assert_eq!(counters.unlinked_produces, 1);
    // Still in the header's trace, under the producer's span, but with an id nobody derives.
    assert_eq!(correlate::hex(&spans[0].trace_id), TRACE);
    assert_ne!(
        spans[0].span_id,
        correlate::batch_ids("tansu_cluster", "fx-confluent-none", 0, 0).1
    );
}

/// A produce exchange of one batch of `count` records (keyed with `key`) at base offset 40 of
/// partition 1 of "plain", and the fetch exchange returning it, encoded by kafka-protocol.
fn exchange_pair(count: i64, key: Option<&'static [u8]>) -> (ConnExchange, ConnExchange) {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::{
        messages::{
            FetchResponse, ProduceRequest, ProduceResponse, TopicName,
            fetch_response::{FetchableTopicResponse, PartitionData},
            produce_request::{PartitionProduceData, TopicProduceData},
            produce_response::{PartitionProduceResponse, TopicProduceResponse},
        },
        protocol::{Encodable, StrBytes},
        records::Compression,
    };
    use tracer::kafka::{RequestHeader, decode_request, decode_response};

    let batch = |base: i64| {
        let records =
            (0..count).map(|_| (key.map(Bytes::from_static), Some(Bytes::from_static(b"v"))));
        support::batch(base, Compression::None, false, records)
    };
    let enc = |m: &dyn Fn(&mut BytesMut)| {
        let mut b = BytesMut::new();
        m(&mut b);
        b.to_vec()
    };
    let topic = || TopicName(StrBytes::from_static_str("plain"));
    let req = enc(&|b| {
        ProduceRequest::default()
            .with_acks(1)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(1)
                            .with_records(Some(batch(0))),
                    ]),
            ])
            .encode(b, 9)
            .unwrap()
    });
    let resp = enc(&|b| {
        ProduceResponse::default()
            .with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(topic())
                    .with_partition_responses(vec![
                        PartitionProduceResponse::default()
                            .with_index(1)
                            .with_base_offset(40),
                    ]),
            ])
            .encode(b, 9)
            .unwrap()
    });
    let fetch = enc(&|b| {
        FetchResponse::default()
            .with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(topic())
                    .with_partitions(vec![
                        PartitionData::default()
                            .with_partition_index(1)
                            .with_high_watermark(43)
                            .with_records(Some(batch(40))),
                    ]),
            ])
            .encode(b, 12)
            .unwrap()
    });
    // As the daemon decodes with --record-keys plain or hash (Off is applied when building spans).
    let opts = DecodeOptions {
        keys: true,
        ..DecodeOptions::default()
    };
    let header = |key, version| RequestHeader {
        api_key: key,
        api_version: version,
        correlation_id: 1,
        client_id: Some("c".into()),
    };
    let mut tuple = ConnTuple {
        family: libc::AF_INET as u16,
        lport: 40000,
        rport: 9092,
        ..Default::default()
    };
    tuple.raddr[..4].copy_from_slice(&[10, 0, 0, 9]);
    let obs = |exchange| ConnExchange {
        conn_id: 1,
        tgid: 7,
        comm: [0; 16],
        tuple,
        exchange,
    };
    let ex = |key, version, req: Result<Request, _>, resp| Exchange {
        header: header(key, version),
        request: req,
        request_complete: true,
        response: Some(resp),
        response_complete: true,
        client_side: true,
        request_ns: (1, 2),
        response_ns: Some((3, 4)),
    };
    let produce = obs(ex(
        0,
        9,
        decode_request(&header(0, 9), &req, false, &opts),
        decode_response(0, 9, &resp, false, &opts),
    ));
    let fetch_req = tracer::kafka::FetchRequest {
        replica_id: -1,
        max_wait_ms: 500,
        min_bytes: 1,
        isolation_level: 0,
        session_id: 0,
        session_epoch: -1,
        partitions: Vec::new(),
        rack_id: None,
    };
    let consume = obs(ex(
        1,
        12,
        Ok(Request::Fetch(fetch_req)),
        decode_response(1, 12, &fetch, false, &opts),
    ));
    (produce, consume)
}

/// Records without headers: both sides derive the same trace from the batch's position.
#[test]
fn records_without_headers_share_a_derived_trace() {
    let (produce, consume) = exchange_pair(3, None);
    // Two nodes, two catalogs, no cluster id known on either (the derivation still agrees).
    let (mut c1, mut c2) = (SpanCounters::default(), SpanCounters::default());
    let p = spans(&produce, &Catalog::default(), &RecordKeys::Off, &mut c1);
    let c = spans(&consume, &Catalog::default(), &RecordKeys::Off, &mut c2);
    assert_eq!((p.len(), c.len()), (1, 1));
    let (trace, span) = correlate::batch_ids("", "plain", 1, 40);
    assert_eq!(
        (p[0].trace_id, p[0].span_id, p[0].parent_span_id),
        (trace, span, None)
    );
    assert_eq!((c[0].trace_id, c[0].parent_span_id), (trace, Some(span)));
    assert!(p[0].links.is_empty() && c[0].links.is_empty());
}

/// Keys reach single-record spans only when enabled, in plain or hashed form; the hash is keyed
/// by the deployment's secret.
#[test]
fn record_keys_are_opt_in_and_can_be_hashed() {
    let (produce, consume) = exchange_pair(1, Some(b"user-42"));
    let key = |mode: RecordKeys, o: &ConnExchange| {
        let s = spans(o, &Catalog::default(), &mode, &mut SpanCounters::default());
        s[0].attributes
            .iter()
            .find(|(k, _)| *k == "messaging.kafka.message.key")
            .map(|(_, v)| format!("{v:?}"))
    };
    assert_eq!(key(RecordKeys::Off, &produce), None);
    assert_eq!(key(RecordKeys::Off, &consume), None);
    assert_eq!(
        key(RecordKeys::Plain, &produce).as_deref(),
        Some("Str(\"user-42\")")
    );
    assert_eq!(
        key(RecordKeys::Plain, &consume).as_deref(),
        Some("Str(\"user-42\")")
    );
    let secret = RecordKeys::hashed_with(b"0123456789abcdef-deployment");
    let hashed = key(secret.clone(), &produce).unwrap();
    assert!(
        !hashed.contains("user") && hashed.len() == "Str(\"\")".len() + 16,
        "{hashed}"
    );
    assert_eq!(
        key(secret, &consume).unwrap(),
        hashed,
        "the same hash on both sides"
    );
    // Another secret, another hash: the unkeyed hash of a guessed key tells nothing.
    assert_ne!(
        key(RecordKeys::hashed_with(b"another-secret-0123"), &produce).unwrap(),
        hashed
    );
    // Several records: no single key to name.
    let (many, _) = exchange_pair(3, Some(b"user-42"));
    assert_eq!(key(RecordKeys::Plain, &many), None);
}
