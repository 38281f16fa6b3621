//! The selective copy's rule (`tracer_common::skim`, which the kernel runs) over real client
//! traffic and over produce requests of every version: what it leaves out decodes to exactly
//! what the whole stream decodes to, whatever the split of the stream into syscalls and
//! iovecs, and the bytes it leaves out are the record values. Under the policies that give up
//! record headers (`--record-headers uncompressed|none`) the records of the batches concerned are
//! left out whole, and they decode to the same batches and offsets, without their headers.

use bytes::Bytes;
use kafka_protocol::{
    messages::{
        ProduceRequest, TopicName,
        produce_request::{PartitionProduceData, TopicProduceData},
    },
    protocol::{Encodable, StrBytes},
    records::Compression as KCompression,
};
use tracer::kafka::{
    BatchInfo, Exchange, PartitionRecords, Request, Session, SessionCounters,
    records::{BATCH_HEADER_LEN, Compression},
};
use tracer_common::{
    Direction,
    skim::{MIN_SKIP, policy},
};

mod support;

fn session() -> Session {
    Session::new(false, 8 << 20, 64).with_requests_from(Direction::Egress)
}

/// Segment lengths from a xorshift sequence, 1 to `max` bytes.
fn segments(max: u64) -> impl FnMut() -> usize {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (1 + x % max) as usize
    }
}

/// A named way to cut syscalls into segments: each call gives the next segment's length.
type Split = (&'static str, Box<dyn FnMut() -> usize>);

/// Every split the tests replay with: whole syscalls, iovecs of up to 80 bytes (fields cut
/// everywhere, carried into the next segment), and of up to 5000.
fn splits() -> Vec<Split> {
    vec![
        ("whole", Box::new(|| usize::MAX)),
        ("80", Box::new(segments(80))),
        ("5000", Box::new(segments(5000))),
    ]
}

/// Every recorded connection of every client and codec: the walk follows every produce request
/// to its end (the recorded values are shorter than the skip threshold: nothing is skipped),
/// and the walked stream decodes to the same exchanges, with the same counters, as the whole.
#[test]
fn recorded_traffic_decodes_the_same_walked() {
    let files = support::all_recordings();
    for file in &files {
        let mut c = SessionCounters::default();
        let whole = format!("{:?}", support::replay(file, session(), &mut c));
        for (name, mut split) in splits() {
            let mut c2 = SessionCounters::default();
            let w = support::replay_walked(file, session(), &mut c2, policy::ALL, Some(&mut split));
            let at = format!("{} ({name})", file.display());
            assert_eq!(format!("{:?}", w.exchanges), whole, "{at}");
            assert_eq!(c2, c, "{at}");
            // Every client's produce requests are followed to their last record.
            assert_eq!(w.gave_up, 0, "{at}");
        }
    }
    assert!(files.len() > 100, "{} recordings", files.len());
}

/// Whether the walk under `policy` skips the records of batch `b` (read whole): every batch's
/// under `none`, compressed ones' under `uncompressed`; never a control batch's or records of
/// fewer than 32 bytes.
fn skipped_under(policy: u8, b: &BatchInfo) -> bool {
    let dropped = match policy {
        policy::NONE => true,
        policy::UNCOMPRESSED => b.compression != Compression::None,
        _ => false,
    };
    dropped && !b.control && records_len(b) >= MIN_SKIP && b.record_count > 0
}

/// Bytes of a batch's records section (the batch after its header).
fn records_len(b: &BatchInfo) -> u64 {
    (b.bytes as usize - BATCH_HEADER_LEN) as u64
}

/// The records of every partition of the produce requests in `exchanges`.
fn produced(exchanges: &[Exchange]) -> impl Iterator<Item = &PartitionRecords> {
    exchanges
        .iter()
        .filter_map(|e| match &e.request {
            Ok(Request::Produce(p)) => Some(p),
            _ => None,
        })
        .flat_map(|p| p.partitions.iter().map(|p| &p.records))
}

/// What a walk that skips whole records keeps of `exchanges`: everything but, in produce
/// requests, the records of the batches `skipped` says, of which only the offsets are left.
fn kept(exchanges: &[Exchange], skipped: &dyn Fn(&BatchInfo) -> bool) -> String {
    let mut out = String::new();
    for e in exchanges {
        out += &format!("{:?} {:?} {:?}\n", e.header, e.response, e.request_complete);
        let Ok(Request::Produce(p)) = &e.request else {
            out += &format!("{:?}\n", e.request);
            continue;
        };
        for part in &p.partitions {
            let r = &part.records;
            out += &format!(
                "{:?} {} {}\n",
                part.topic, part.partition, r.undecodable_batches
            );
            for b in &r.batches {
                out += &format!(
                    "{:?}\n",
                    BatchInfo {
                        records_skipped: false,
                        ..b.clone()
                    }
                );
            }
            for rec in &r.records {
                let b = &r.batches[rec.batch as usize];
                out += &format!("  {} @{}", rec.batch, r.absolute_offset(rec, None));
                if !skipped(b) {
                    let headers: Vec<_> = r.headers_of(rec).collect();
                    out += &format!(" {} {} {headers:?}", rec.timestamp, rec.value_len);
                }
                out += "\n";
            }
        }
    }
    out
}

/// Records of the batches `policy` skips, in `exchanges`.
fn records_skipped_under(policy: u8, exchanges: &[Exchange]) -> u64 {
    produced(exchanges)
        .map(|r| {
            r.records
                .iter()
                .filter(|rec| skipped_under(policy, &r.batches[rec.batch as usize]))
                .count() as u64
        })
        .sum()
}

/// Every recorded connection walked under the policies that skip whole records: the same
/// frames, batches and record offsets decode; the records of exactly the batches the policy
/// gives up are unread (counted, their headers gone), the others' headers read as whole.
#[test]
fn recorded_traffic_keeps_offsets_without_record_headers() {
    let mut unread = [0u64; 2];
    for file in support::all_recordings() {
        let mut c = SessionCounters::default();
        let whole = support::replay(&file, session(), &mut c);
        for (i, policy) in [policy::UNCOMPRESSED, policy::NONE].into_iter().enumerate() {
            let expected = kept(&whole, &|b| skipped_under(policy, b));
            let skipped_records = records_skipped_under(policy, &whole);
            for (name, mut split) in splits() {
                let mut c2 = SessionCounters::default();
                let w = support::replay_walked(&file, session(), &mut c2, policy, Some(&mut split));
                let at = format!("{} (policy {policy}, {name})", file.display());
                assert_eq!(kept(&w.exchanges, &|b| b.records_skipped), expected, "{at}");
                assert_eq!(c2.records_headers_unread, skipped_records, "{at}");
                let others = SessionCounters {
                    records_headers_unread: 0,
                    ..c2
                };
                assert_eq!(others, c, "{at}");
                assert_eq!(w.gave_up, 0, "{at}");
                unread[i] += c2.records_headers_unread;
            }
        }
    }
    // The recordings hold compressed and uncompressed batches: both policies skip some.
    assert!(unread[0] > 0 && unread[1] > unread[0], "{unread:?}");
}

/// A produce request frame of `version`: header (client id, tags when flexible) and body.
fn frame(version: i16, correlation_id: i32, req: &ProduceRequest) -> Vec<u8> {
    let mut body = bytes::BytesMut::new();
    req.encode(&mut body, version).unwrap();
    let client = b"skim-test";
    let mut f = Vec::new();
    f.extend_from_slice(&0i16.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&correlation_id.to_be_bytes());
    f.extend_from_slice(&(client.len() as i16).to_be_bytes());
    f.extend_from_slice(client);
    if version >= 9 {
        f.push(0); // no tagged fields
    }
    f.extend_from_slice(&body);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend(f);
    out
}

/// Records with values of `sizes` bytes (one with a key longer than the parse window), with
/// a traceparent header.
fn batch(base: i64, codec: KCompression, sizes: &[usize]) -> Bytes {
    support::batch(
        base,
        codec,
        true,
        sizes.iter().enumerate().map(|(i, &n)| {
            let key = if i == 1 {
                vec![b'k'; 100]
            } else {
                vec![b'k'; 3]
            };
            (Some(Bytes::from(key)), Some(Bytes::from(vec![b'v'; n])))
        }),
    )
}

/// Produce requests of every version with long values, long names, several topics,
/// partitions and batches, compressed batches and batches of small records among them: the
/// walk skips the values of the uncompressed batches of large records, and the requests
/// decode as they do whole.
#[test]
fn produce_requests_of_every_version_decode_the_same_walked() {
    let sizes = [40, 3000, 10, 500, 31, 32, 70_000];
    let value_bytes: usize = sizes.iter().filter(|&&n| n >= 32).sum();
    let long_topic = "t".repeat(200);
    let mut stream = Vec::new();
    let mut uncompressed_batches = 0;
    for (i, version) in (3..=13).enumerate() {
        let partition = |index, records| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(Some(records))
        };
        let mut two = batch(0, KCompression::None, &sizes).to_vec();
        two.extend_from_slice(&batch(7, KCompression::None, &sizes));
        let req = ProduceRequest::default()
            .with_transactional_id(
                (i % 2 == 1).then(|| StrBytes::from_string("x".repeat(90)).into()),
            )
            .with_acks(-1)
            .with_timeout_ms(1500)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_topic_id(uuid::Uuid::from_bytes([7; 16]))
                    .with_partition_data(vec![
                        partition(0, Bytes::from(two)),
                        partition(1, batch(0, KCompression::Zstd, &sizes)),
                        // Records too small for a walk to pay: copied whole.
                        partition(2, batch(0, KCompression::None, &[40, 40, 40])),
                    ]),
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(long_topic.clone())))
                    .with_topic_id(uuid::Uuid::from_bytes([8; 16]))
                    .with_partition_data(vec![partition(3, batch(0, KCompression::None, &sizes))]),
            ]);
        uncompressed_batches += 3;
        stream.extend(frame(version, i as i32, &req));
    }
    // One syscall per 100 kB, as a client's writes go.
    let dir = std::env::temp_dir().join(format!("skim-{}.rec", std::process::id()));
    let mut rec = Vec::new();
    for chunk in stream.chunks(100_000) {
        rec.push(0u8);
        rec.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        rec.extend_from_slice(chunk);
    }
    std::fs::write(&dir, &rec).unwrap();
    let mut c = SessionCounters::default();
    let exchanges = support::replay(&dir, session(), &mut c);
    assert_eq!(exchanges.len(), 11, "{c:?}");
    assert!(exchanges.iter().all(|e| e.request.is_ok()), "{exchanges:?}");
    let whole = format!("{exchanges:?}");
    for (name, mut split) in splits() {
        let mut c2 = SessionCounters::default();
        let w = support::replay_walked(&dir, session(), &mut c2, policy::ALL, Some(&mut split));
        assert_eq!(format!("{:?}", w.exchanges), whole, "split {name}");
        assert_eq!(c2, c, "split {name}");
        assert_eq!(w.gave_up, 0, "split {name}");
        assert_eq!(
            w.skipped,
            (value_bytes * uncompressed_batches) as u64,
            "split {name}: every value of 32 bytes or more in an uncompressed batch of large records, only those"
        );
    }
    // Without record headers: the records of exactly the batches the policy gives up.
    for policy in [policy::UNCOMPRESSED, policy::NONE] {
        let records: u64 = produced(&exchanges)
            .flat_map(|r| &r.batches)
            .filter(|b| skipped_under(policy, b))
            .map(records_len)
            .sum();
        let expected = kept(&exchanges, &|b| skipped_under(policy, b));
        for (name, mut split) in splits() {
            let mut c2 = SessionCounters::default();
            let w = support::replay_walked(&dir, session(), &mut c2, policy, Some(&mut split));
            let at = format!("policy {policy}, split {name}");
            assert_eq!(kept(&w.exchanges, &|b| b.records_skipped), expected, "{at}");
            assert_eq!(w.gave_up, 0, "{at}");
            // Under `uncompressed`, the uncompressed batches' values are skipped as under `all`.
            let values = if policy == policy::UNCOMPRESSED {
                value_bytes * uncompressed_batches
            } else {
                0
            };
            assert_eq!(w.skipped, records + values as u64, "{at}");
        }
    }
    let _ = std::fs::remove_file(&dir);
}
