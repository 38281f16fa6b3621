//! Decodes the recorded real client traffic in tests/fixtures (see its README) through the
//! framing, session and decoders, and checks what the clients themselves reported.

use std::{collections::BTreeSet, path::Path};

use tracer::{
    kafka::{
        Catalog, DecodeOptions, Exchange, Request, Response, Session, SessionCounters,
        records::Compression,
    },
    pipeline::ConnExchange,
    reassembly::Stream,
};
use tracer_common::Direction;

mod support;

/// The exchanges of every connection of a case, and the session counters.
fn replay(case: &Path) -> (Vec<Exchange>, SessionCounters) {
    let mut exchanges = Vec::new();
    let mut counters = SessionCounters::default();
    let files = support::recordings(case);
    assert!(!files.is_empty(), "{}: no recordings", case.display());
    for file in files {
        // The recorder kept the clients' ends of connections to the broker's port: requests go
        // out, as the daemon knows from `--ports`.
        let session = Session::new(false, 8 << 20, 64).with_requests_from(Direction::Egress);
        exchanges.extend(support::replay(&file, session, &mut counters));
    }
    (exchanges, counters)
}

/// (offset, headers) of records, in order.
type Seen = Vec<(i64, Vec<(Vec<u8>, Vec<u8>)>)>;

/// What the recorded clients reported (clients.json): the offsets they produced, and the
/// offset and headers of each record they consumed.
struct Reported {
    produced: Vec<i64>,
    consumed: Seen,
    /// The consumer's own JSON entries (delivery counts and acknowledgements of a share group).
    consumed_raw: Vec<serde_json::Value>,
}

fn reported(dir: &Path) -> Reported {
    let text = std::fs::read_to_string(dir.join("clients.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let produced = list("produced")
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    let consumed_raw = list("consumed");
    let consumed = consumed_raw
        .iter()
        .map(|r| {
            let headers = r["headers"]
                .as_object()
                .map(|h| {
                    // A JSON object: read back in key order (see `by_key`).
                    h.iter()
                        .map(|(k, v)| {
                            (
                                k.as_bytes().to_vec(),
                                v.as_str().unwrap_or("").as_bytes().to_vec(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (r["offset"].as_i64().unwrap(), headers)
        })
        .collect();
    Reported {
        produced,
        consumed,
        consumed_raw,
    }
}

/// Every exchange of a case decoded, its topic ids resolved: the case's directory, exchanges
/// and a catalog that learnt from them.
fn decoded(name: &str) -> (std::path::PathBuf, Vec<Exchange>, Catalog) {
    let dir = support::fixtures().join(name);
    let (exchanges, counters) = replay(&dir);
    assert_eq!(
        counters.undecodable_requests + counters.undecodable_responses,
        0,
        "{name}: {counters:?}"
    );
    assert_eq!(counters.unmatched_responses, 0, "{name}: {counters:?}");
    let mut catalog = Catalog::default();
    let broker = "127.0.0.1:9092".parse().unwrap();
    for e in &exchanges {
        catalog.learn(e, 1, broker);
    }
    (dir, exchanges, catalog)
}

fn headers(
    p: &tracer::kafka::PartitionRecords,
    rec: &tracer::kafka::RecordInfo,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    p.headers_of(rec)
        .map(|(k, v)| (k.to_vec(), v.unwrap_or_default().to_vec()))
        .collect()
}

/// Records with their headers in key order, as clients.json (a JSON object per record) gives
/// them back.
fn by_key(mut seen: Seen) -> Seen {
    for (_, h) in &mut seen {
        h.sort();
    }
    seen
}

fn check_case(name: &str, codec: Compression) {
    let (dir, exchanges, catalog) = decoded(name);
    let topic = format!("fx-{name}");
    let mut produced: Seen = Vec::new();
    let mut fetched: Seen = Vec::new();
    let mut versions = BTreeSet::new();
    for e in &exchanges {
        versions.insert((
            tracer::kafka::api_name(e.header.api_key),
            e.header.api_version,
        ));
        match (&e.request, &e.response) {
            (Ok(Request::Produce(req)), Some(Ok(Response::Produce(resp)))) => {
                for p in &req.partitions {
                    assert_eq!(
                        catalog.topic_name(&p.topic).as_deref(),
                        Some(topic.as_str())
                    );
                    assert_eq!(p.partition, 0);
                    let r = resp
                        .partitions
                        .iter()
                        .find(|r| r.partition == p.partition)
                        .expect("partition answered");
                    assert_eq!(r.error_code, 0);
                    assert!(
                        p.records.batches.iter().all(|b| b.compression == codec),
                        "{name}: {:?}",
                        p.records.batches
                    );
                    for rec in &p.records.records {
                        produced.push((
                            p.records.absolute_offset(rec, Some(r.base_offset)),
                            headers(&p.records, rec),
                        ));
                    }
                }
            }
            (_, Some(Ok(Response::Fetch(f)))) => {
                for p in &f.partitions {
                    assert_eq!(
                        catalog.topic_name(&p.topic).as_deref(),
                        Some(topic.as_str()),
                        "{name}: topic id resolved through Metadata"
                    );
                    for rec in &p.records.records {
                        assert_eq!(p.records.batches[rec.batch as usize].compression, codec);
                        fetched.push((
                            p.records.absolute_offset(rec, None),
                            headers(&p.records, rec),
                        ));
                    }
                    assert!(p.high_watermark >= p.records.record_count() as i64);
                }
            }
            _ => {}
        }
    }
    let expected: Seen = (0..5)
        .map(|i| {
            (
                i,
                vec![
                    (
                        b"traceparent".to_vec(),
                        support::TRACEPARENT.as_bytes().to_vec(),
                    ),
                    (b"seq".to_vec(), i.to_string().into_bytes()),
                ],
            )
        })
        .collect();
    assert_eq!(
        produced, expected,
        "{name}: produced records (versions {versions:?})"
    );
    // What the clients themselves reported: the offsets they produced, and each record they
    // consumed with its headers.
    let clients = reported(&dir);
    assert_eq!(
        produced.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        clients.produced,
        "{name}: offsets the producer reported"
    );
    assert_eq!(
        by_key(fetched),
        clients.consumed,
        "{name}: fetched records (versions {versions:?})"
    );
    eprintln!(
        "{name}: {} exchanges, versions {versions:?}",
        exchanges.len()
    );
}

macro_rules! cases {
    ($($test:ident: $name:literal, $codec:ident;)*) => {$(
        #[test]
        fn $test() {
            check_case($name, Compression::$codec);
        }
    )*};
}

cases! {
    confluent_none: "confluent-none", None;
    confluent_gzip: "confluent-gzip", Gzip;
    confluent_snappy: "confluent-snappy", Snappy;
    confluent_lz4: "confluent-lz4", Lz4;
    confluent_zstd: "confluent-zstd", Zstd;
    kafka_python_none: "kafka-python-none", None;
    kafka_python_gzip: "kafka-python-gzip", Gzip;
    kafka_python_snappy: "kafka-python-snappy", Snappy;
    kafka_python_lz4: "kafka-python-lz4", Lz4;
    kafka_python_zstd: "kafka-python-zstd", Zstd;
    apache_java_none: "apache-java-none", None;
    apache_java_gzip: "apache-java-gzip", Gzip;
    apache_java_snappy: "apache-java-snappy", Snappy;
    apache_java_lz4: "apache-java-lz4", Lz4;
    apache_java_zstd: "apache-java-zstd", Zstd;
    apache_franz_none: "apache-franz-none", None;
    apache_franz_gzip: "apache-franz-gzip", Gzip;
    apache_franz_snappy: "apache-franz-snappy", Snappy;
    apache_franz_lz4: "apache-franz-lz4", Lz4;
    apache_franz_zstd: "apache-franz-zstd", Zstd;
    apache_sarama_none: "apache-sarama-none", None;
    apache_sarama_gzip: "apache-sarama-gzip", Gzip;
    apache_sarama_snappy: "apache-sarama-snappy", Snappy;
    apache_sarama_lz4: "apache-sarama-lz4", Lz4;
    apache_sarama_zstd: "apache-sarama-zstd", Zstd;
}

/// Java transactions against Apache Kafka: commit 3, abort 2, commit 2, then a read_committed
/// consumer. Every record was produced; the fetch responses carry the aborted batch, which the
/// decoder marks, and what is left (no control batch, nothing aborted) is exactly what the
/// consumer reported.
#[test]
fn apache_java_transactions() {
    let (dir, exchanges, catalog) = decoded("apache-java-transactions");
    let clients = reported(&dir);
    let mut delivered = Vec::new();
    let mut aborted = BTreeSet::new();
    for e in &exchanges {
        if let Some(Ok(Response::Fetch(f))) = &e.response {
            for p in &f.partitions {
                for rec in &p.records.records {
                    let b = &p.records.batches[rec.batch as usize];
                    let offset = p.records.absolute_offset(rec, None);
                    if b.aborted {
                        aborted.insert(offset);
                    } else if !b.control {
                        delivered.push((offset, headers(&p.records, rec)));
                    }
                }
            }
        }
    }
    // 3 + marker + 2 aborted + marker + 2 + marker: the aborted ones are offsets 4 and 5.
    assert_eq!(clients.produced, [0, 1, 2, 4, 5, 7, 8]);
    assert_eq!(aborted, BTreeSet::from([4, 5]));
    // The metrics count what the consumer was given: neither aborted records nor markers.
    let metrics = tracer::metrics::Exposition::new(100);
    for exchange in exchanges {
        let o = ConnExchange {
            conn_id: 1,
            tgid: 1,
            comm: [0; 16],
            tuple: Default::default(),
            exchange,
        };
        // Replay times are nanoseconds from zero: shift them past the records' timestamps.
        metrics.observe(&o, &catalog, 2_000_000_000_000_000_000);
    }
    let text = metrics.text();
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text).unwrap();
    let sum = |family: &str, consumed_only: bool| -> f64 {
        parsed.families[family]
            .iter_samples()
            .filter(|s| {
                !consumed_only
                    || s.get_labelset()
                        .unwrap()
                        .iter()
                        .any(|(k, v)| k == "direction" && v == "consumed")
            })
            .map(|s| match &s.value {
                openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
                openmetrics_parser::OpenMetricsValue::Histogram(h) => h.count.unwrap_or(0) as f64,
                other => panic!("{other:?}"),
            })
            .sum()
    };
    assert_eq!(sum("kafka_records", true), delivered.len() as f64, "{text}");
    assert_eq!(
        sum("kafka_end_to_end_latency_seconds", false),
        delivered.len() as f64,
        "{text}"
    );
    delivered.dedup_by_key(|(o, _)| *o);
    assert_eq!(by_key(delivered), clients.consumed);
}

/// A Java share-group member against Apache Kafka, releasing its first two records: the
/// decoded ShareFetch responses acquire each record once, the released two twice (delivery
/// count 2), as the client reported; the acknowledgements it sent add up to 2 released and 5
/// accepted.
#[test]
fn apache_java_share_group() {
    let (dir, exchanges, _) = decoded("apache-java-share");
    let clients = reported(&dir);
    let mut acquired: Vec<(i64, i16)> = Vec::new();
    let (mut released, mut accepted) = (0, 0);
    for e in &exchanges {
        if let Ok(Request::Share(r)) = &e.request
            && matches!(&e.response, Some(Ok(resp)) if resp.error_code().is_none())
        {
            assert_eq!(r.group_id.as_deref(), Some("fx-share"));
            for a in &r.acknowledgements {
                released += a.counts.released;
                accepted += a.counts.accepted;
            }
        }
        if let Some(Ok(Response::ShareFetch(f))) = &e.response {
            for p in &f.partitions {
                for a in &p.acquired {
                    acquired
                        .extend((a.first_offset..=a.last_offset).map(|o| (o, a.delivery_count)));
                }
            }
        }
    }
    let reported: Vec<(i64, i16)> = clients
        .consumed_raw
        .iter()
        .map(|d| {
            (
                d["offset"].as_i64().unwrap(),
                d["delivery_count"].as_i64().unwrap() as i16,
            )
        })
        .collect();
    assert_eq!(acquired, reported);
    assert_eq!((released, accepted), (2, 5));
}

/// Replays one recording with each record cut into pieces of `step` bytes, and with the bytes
/// in `drop` (stream positions of the sent direction) missing.
fn replay_cut(
    file: &Path,
    step: usize,
    drop: Option<std::ops::Range<u64>>,
) -> (usize, SessionCounters) {
    let bytes = std::fs::read(file).unwrap();
    let mut session = Session::new(false, 8 << 20, 64).with_requests_from(Direction::Egress);
    let mut streams = [Stream::default(), Stream::default()];
    let mut pos = [0u64; 2];
    let mut counters = SessionCounters::default();
    let mut n = 0;
    for (dir, data) in support::chunks(&bytes) {
        for piece in data.chunks(step) {
            let p = pos[dir as usize];
            pos[dir as usize] += piece.len() as u64;
            if dir == Direction::Egress && drop.as_ref().is_some_and(|d| d.contains(&p)) {
                continue;
            }
            let piece = streams[dir as usize].push(p, piece);
            session.push(
                dir,
                &piece,
                0,
                0,
                &DecodeOptions::default(),
                &mut counters,
                &mut |_| n += 1,
            );
        }
    }
    (n, counters)
}

/// Recorded streams cut into pieces of any size decode to the same exchanges; with bytes
/// missing they never panic, the loss shows in the counters, and what follows still decodes.
#[test]
fn recorded_streams_survive_any_split_and_loss() {
    for file in support::all_recordings() {
        let (whole, c) = replay_cut(&file, usize::MAX, None);
        for step in [1, 3, 7, 64, 1000] {
            let (n, c2) = replay_cut(&file, step, None);
            assert_eq!(
                (n, c2),
                (whole, c),
                "{} in pieces of {step}",
                file.display()
            );
        }
        let bytes = std::fs::read(&file).unwrap();
        let sent: u64 = support::chunks(&bytes)
            .iter()
            .filter(|(dir, _)| *dir == Direction::Egress)
            .map(|(_, data)| data.len() as u64)
            .sum();
        for start in (0..sent).step_by(13) {
            let (n, c2) = replay_cut(&file, 5, Some(start..start + 9));
            // Nine lost bytes damage at most the two frames they touch; the framing (or a
            // resync) carries on with the rest.
            assert!(
                n <= whole && n + 2 >= whole,
                "{}: {n} of {whole} exchanges after losing {start}..+9",
                file.display()
            );
            assert!(c2.requests <= c.requests);
        }
    }
}
