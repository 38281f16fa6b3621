//! Decodes the recorded real client traffic in tests/fixtures (see its README) through the
//! framing, session and decoders, and checks what the clients themselves reported.

use std::{collections::BTreeSet, path::Path};

use tracer::{
    kafka::{
        Catalog, DecodeOptions, Exchange, Request, Response, Session, SessionCounters,
        records::Compression,
    },
    reassembly::Stream,
};
use tracer_common::Direction;

const TRACEPARENT: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The exchanges of every connection of a case, and the session counters.
fn replay(case: &Path) -> (Vec<Exchange>, SessionCounters) {
    let mut exchanges = Vec::new();
    let mut counters = SessionCounters::default();
    let mut files: Vec<_> = std::fs::read_dir(case)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rec"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no recordings", case.display());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let mut session = Session::new(false, 8 << 20, 64);
        let mut streams = [Stream::default(), Stream::default()];
        let mut at = 0;
        let mut t = 0;
        while at < bytes.len() {
            let dir = if bytes[at] == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            let data = &bytes[at + 5..at + 5 + len];
            at += 5 + len;
            t += 1000;
            let s = &mut streams[dir as usize];
            let pos = s.bytes;
            let piece = s.push(pos, data);
            session.push(
                dir,
                &piece,
                t,
                t + 10,
                &DecodeOptions::default(),
                &mut counters,
                &mut |e| exchanges.push(e),
            );
        }
        session.close(&mut counters, &mut |e| exchanges.push(e));
    }
    (exchanges, counters)
}

/// (offset, headers) of records, in order.
type Seen = Vec<(i64, Vec<(Vec<u8>, Vec<u8>)>)>;

fn check_case(name: &str, codec: Compression) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let (exchanges, counters) = replay(&dir);
    assert_eq!(
        counters.undecodable_requests + counters.undecodable_responses,
        0,
        "{name}: {counters:?}"
    );
    assert_eq!(counters.unmatched_responses, 0, "{name}: {counters:?}");
    let topic = format!("fx-{name}");
    let mut catalog = Catalog::default();
    let broker = "127.0.0.1:9092".parse().unwrap();
    for e in &exchanges {
        catalog.learn(e, 1, broker);
    }
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
                        let headers = p
                            .records
                            .headers_of(rec)
                            .map(|(k, v)| (k.to_vec(), v.unwrap_or_default().to_vec()))
                            .collect();
                        produced
                            .push((p.records.absolute_offset(rec, Some(r.base_offset)), headers));
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
                        let headers = p
                            .records
                            .headers_of(rec)
                            .map(|(k, v)| (k.to_vec(), v.unwrap_or_default().to_vec()))
                            .collect();
                        fetched.push((p.records.absolute_offset(rec, None), headers));
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
                    (b"traceparent".to_vec(), TRACEPARENT.to_vec()),
                    (b"seq".to_vec(), i.to_string().into_bytes()),
                ],
            )
        })
        .collect();
    assert_eq!(
        produced, expected,
        "{name}: produced records (versions {versions:?})"
    );
    assert_eq!(
        fetched, expected,
        "{name}: fetched records (versions {versions:?})"
    );
    // What the clients reported agrees: offsets 0..4 produced and consumed.
    let clients = std::fs::read_to_string(dir.join("clients.json")).unwrap();
    for i in 0..5 {
        assert!(
            clients.contains(&format!("\"offset\": {i}")),
            "{name}: clients.json lacks offset {i}"
        );
    }
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
}

/// Replays one recording with each record cut into pieces of `step` bytes, and with the bytes
/// in `drop` (stream positions of the sent direction) missing.
fn replay_cut(
    file: &Path,
    step: usize,
    drop: Option<std::ops::Range<u64>>,
) -> (usize, SessionCounters) {
    let bytes = std::fs::read(file).unwrap();
    let mut session = Session::new(false, 8 << 20, 64);
    let mut streams = [Stream::default(), Stream::default()];
    let mut pos = [0u64; 2];
    let mut counters = SessionCounters::default();
    let mut n = 0;
    let mut at = 0;
    while at < bytes.len() {
        let dir = if bytes[at] == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        for piece in bytes[at + 5..at + 5 + len].chunks(step) {
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
        at += 5 + len;
    }
    (n, counters)
}

/// Recorded streams cut into pieces of any size decode to the same exchanges; with bytes
/// missing they never panic, the loss shows in the counters, and what follows still decodes.
#[test]
fn recorded_streams_survive_any_split_and_loss() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for case in std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for file in std::fs::read_dir(case.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
        {
            if file.extension().is_none_or(|x| x != "rec") {
                continue;
            }
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
            let sent: u64 = {
                let b = std::fs::read(&file).unwrap();
                let (mut at, mut total) = (0, 0u64);
                while at < b.len() {
                    let len = u32::from_le_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
                    if b[at] == 0 {
                        total += len as u64;
                    }
                    at += 5 + len;
                }
                total
            };
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
}
