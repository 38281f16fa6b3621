//! The selective copy's rule (`tracer_common::skim`, which the kernel runs) over real client
//! traffic and over produce requests of every version: what it leaves out decodes to exactly
//! what the whole stream decodes to, whatever the split of the stream into syscalls and
//! iovecs, and the bytes it leaves out are the record values. Under the policies that give up
//! record headers (`--record-headers uncompressed|none`) the records of the batches concerned are
//! left out whole, and they decode to the same batches and offsets, without their headers.

use bytes::Bytes;
use kafka_protocol::{
    messages::{
        FetchRequest, FetchResponse, ProduceRequest, ProducerId, TopicName,
        fetch_request::{FetchPartition, FetchTopic},
        fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData},
        produce_request::{PartitionProduceData, TopicProduceData},
    },
    protocol::{Encodable, StrBytes},
    records::Compression as KCompression,
};
use tracer::kafka::{
    BatchInfo, Exchange, PartitionRecords, Request, Response, Session, SessionCounters,
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

/// The records of every partition of the produce requests and fetch responses in
/// `exchanges`.
fn records_of(exchanges: &[Exchange]) -> Vec<&PartitionRecords> {
    let mut out = Vec::new();
    for e in exchanges {
        if let Ok(Request::Produce(p)) = &e.request {
            out.extend(p.partitions.iter().map(|p| &p.records));
        }
        if let Some(Ok(Response::Fetch(f))) = &e.response {
            out.extend(f.partitions.iter().map(|p| &p.records));
        }
    }
    out
}

/// What a walk that skips whole records keeps of a partition's records: its batches and
/// record offsets, and the records' timestamps, values' lengths and headers but in the batches
/// `skipped` says.
fn kept_records(r: &PartitionRecords, skipped: &dyn Fn(&BatchInfo) -> bool) -> String {
    let mut out = format!("{} {}\n", r.undecodable_batches, r.truncated_tail);
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
    out
}

/// What a walk that skips whole records keeps of `exchanges`: everything but, in produce
/// requests and fetch responses, the records of the batches `skipped` says, of which only the
/// offsets are left.
fn kept(exchanges: &[Exchange], skipped: &dyn Fn(&BatchInfo) -> bool) -> String {
    let mut out = String::new();
    for e in exchanges {
        out += &format!(
            "{:?} {:?} {:?}\n",
            e.header, e.request_complete, e.response_complete
        );
        match &e.request {
            Ok(Request::Produce(p)) => {
                for part in &p.partitions {
                    out += &format!("{:?} {}\n", part.topic, part.partition);
                    out += &kept_records(&part.records, skipped);
                }
            }
            other => out += &format!("{other:?}\n"),
        }
        match &e.response {
            Some(Ok(Response::Fetch(f))) => {
                out += &format!(
                    "fetch {} {} {} {}\n",
                    f.throttle_time_ms, f.error_code, f.session_id, f.truncated
                );
                for part in &f.partitions {
                    out += &format!(
                        "{:?} {} {} {} {} {}\n",
                        part.topic,
                        part.partition,
                        part.error_code,
                        part.high_watermark,
                        part.last_stable_offset,
                        part.log_start_offset
                    );
                    out += &kept_records(&part.records, skipped);
                }
            }
            other => out += &format!("{other:?}\n"),
        }
    }
    out
}

/// Records of the batches `policy` skips, in `exchanges`.
fn records_skipped_under(policy: u8, exchanges: &[Exchange]) -> u64 {
    records_of(exchanges)
        .into_iter()
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

/// A request frame: header (client id, tags when `flexible`) and body.
fn request(
    api_key: i16,
    version: i16,
    flexible: bool,
    correlation_id: i32,
    body: &impl Encodable,
) -> Vec<u8> {
    let client = b"skim-test";
    let mut f = Vec::new();
    f.extend_from_slice(&api_key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&correlation_id.to_be_bytes());
    f.extend_from_slice(&(client.len() as i16).to_be_bytes());
    f.extend_from_slice(client);
    sized(f, flexible, version, body)
}

/// A response frame: header (tags when `flexible`) and body.
fn response(version: i16, flexible: bool, correlation_id: i32, body: &impl Encodable) -> Vec<u8> {
    sized(
        correlation_id.to_be_bytes().to_vec(),
        flexible,
        version,
        body,
    )
}

/// A frame of the header fields `f`, the header's empty tags when `flexible`, and `body`
/// encoded at `version`, behind its size.
fn sized(mut f: Vec<u8>, flexible: bool, version: i16, body: &impl Encodable) -> Vec<u8> {
    if flexible {
        f.push(0); // no tagged fields
    }
    let mut b = bytes::BytesMut::new();
    body.encode(&mut b, version).unwrap();
    f.extend_from_slice(&b);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend(f);
    out
}

/// A recording of `frames`, each `(direction, bytes)`, in syscalls of at most 100 kB as a
/// client's reads and writes go; removed when dropped.
struct Recording(std::path::PathBuf);

impl Recording {
    fn new(name: &str, frames: &[(Direction, Vec<u8>)]) -> Self {
        let path = std::env::temp_dir().join(format!("skim-{name}-{}.rec", std::process::id()));
        let mut rec = Vec::new();
        for (dir, frame) in frames {
            for chunk in frame.chunks(100_000) {
                rec.push(*dir as u8);
                rec.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
                rec.extend_from_slice(chunk);
            }
        }
        std::fs::write(&path, &rec).unwrap();
        Self(path)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The recording walked under `all` with every split decodes as it does whole, no walk gives
/// up, and the bytes skipped are `values`. Returns what the whole recording decodes to.
fn assert_walks_all(rec: &Recording, values: u64) -> Vec<Exchange> {
    let mut c = SessionCounters::default();
    let exchanges = support::replay(&rec.0, session(), &mut c);
    let whole = format!("{exchanges:?}");
    for (name, mut split) in splits() {
        let mut c2 = SessionCounters::default();
        let w = support::replay_walked(&rec.0, session(), &mut c2, policy::ALL, Some(&mut split));
        assert_eq!(format!("{:?}", w.exchanges), whole, "split {name}");
        assert_eq!(c2, c, "split {name}");
        assert_eq!(w.gave_up, 0, "split {name}");
        assert_eq!(
            w.skipped, values,
            "split {name}: every value of 32 bytes or more in an uncompressed batch of large records, only those"
        );
    }
    exchanges
}

/// As [`assert_walks_all`], and under the policies that give up record headers the recording
/// decodes as it does whole but for the records of the batches they give up, which are
/// skipped with the values `all` skips under `uncompressed` and alone under `none`.
fn assert_walks(rec: &Recording, values: u64) -> Vec<Exchange> {
    let exchanges = assert_walks_all(rec, values);
    // Without record headers: the records of exactly the batches the policy gives up.
    for policy in [policy::UNCOMPRESSED, policy::NONE] {
        let records: u64 = records_of(&exchanges)
            .into_iter()
            .flat_map(|r| &r.batches)
            .filter(|b| skipped_under(policy, b))
            .map(records_len)
            .sum();
        assert!(records > 0, "policy {policy}");
        let expected = kept(&exchanges, &|b| skipped_under(policy, b));
        for (name, mut split) in splits() {
            let mut c2 = SessionCounters::default();
            let w = support::replay_walked(&rec.0, session(), &mut c2, policy, Some(&mut split));
            let at = format!("policy {policy}, split {name}");
            assert_eq!(kept(&w.exchanges, &|b| b.records_skipped), expected, "{at}");
            assert_eq!(w.gave_up, 0, "{at}");
            // Under `uncompressed`, the uncompressed batches' values are skipped as under `all`.
            let values = if policy == policy::UNCOMPRESSED {
                values
            } else {
                0
            };
            assert_eq!(w.skipped, records + values, "{at}");
        }
    }
    exchanges
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
    let mut frames = Vec::new();
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
        let flexible = version >= 9;
        frames.push((
            Direction::Egress,
            request(0, version, flexible, i as i32, &req),
        ));
    }
    let rec = Recording::new("produce", &frames);
    let exchanges = assert_walks(&rec, (value_bytes * uncompressed_batches) as u64);
    assert_eq!(exchanges.len(), 11);
    assert!(exchanges.iter().all(|e| e.request.is_ok()), "{exchanges:?}");
}

/// Fetch requests and their responses of every version the walk follows (4 to 18), with long
/// values, long names, several topics, partitions and batches, compressed batches, aborted
/// transactions (none, null, several) and a last batch cut by the broker's size limit, and
/// more requests in flight than the walk keeps (their oldest responses copied whole): the
/// walk skips the values of the uncompressed batches of large records it reaches, and the
/// responses decode as they do whole.
#[test]
fn fetch_responses_of_every_version_decode_the_same_walked() {
    let sizes = [40, 3000, 10, 500, 31, 32, 70_000];
    let value_bytes: u64 = sizes.iter().filter(|&&n| n >= 32).sum::<usize>() as u64;
    let long_topic = "t".repeat(200);
    let topics = [("orders", [7u8; 16]), (long_topic.as_str(), [8; 16])];
    let fetch = |version: i16| {
        FetchRequest::default()
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_topics(
                topics
                    .iter()
                    .map(|(name, id)| {
                        let t = FetchTopic::default();
                        if version >= 13 {
                            t.with_topic_id(uuid::Uuid::from_bytes(*id))
                        } else {
                            t.with_topic(TopicName(StrBytes::from_string(name.to_string())))
                        }
                        .with_partitions(vec![
                            FetchPartition::default().with_partition_max_bytes(1 << 20),
                        ])
                    })
                    .collect(),
            )
    };
    let aborted = |n: i64| {
        (0..n)
            .map(|k| {
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(900 + k))
                    .with_first_offset(k)
            })
            .collect::<Vec<_>>()
    };
    let partition = |index, aborted, records: Vec<u8>| {
        PartitionData::default()
            .with_partition_index(index)
            .with_high_watermark(1000)
            .with_last_stable_offset(1000)
            .with_aborted_transactions(aborted)
            .with_records(Some(Bytes::from(records)))
    };
    let whole_batch = |base| batch(base, KCompression::None, &sizes).to_vec();
    let fetched = |version: i16| {
        let mut two = whole_batch(0);
        two.extend(whole_batch(7));
        // A batch, then a batch cut in its records, as a broker's size limit cuts one.
        let mut cut = whole_batch(20);
        let next = whole_batch(27);
        cut.extend_from_slice(&next[..next.len() / 2]);
        // A batch, then the start of a batch's header.
        let mut stub = whole_batch(40);
        stub.extend_from_slice(&next[..30]);
        let topic = |(name, id): (&str, [u8; 16])| {
            let t = FetchableTopicResponse::default();
            if version >= 13 {
                t.with_topic_id(uuid::Uuid::from_bytes(id))
            } else {
                t.with_topic(TopicName(StrBytes::from_string(name.to_string())))
            }
        };
        FetchResponse::default()
            .with_session_id(if version >= 7 { 3 } else { 0 })
            .with_responses(vec![
                topic(topics[0]).with_partitions(vec![
                    partition(0, None, two),
                    partition(
                        1,
                        Some(vec![]),
                        batch(0, KCompression::Zstd, &sizes).to_vec(),
                    ),
                    partition(2, Some(aborted(3)), whole_batch(0)),
                    partition(3, Some(aborted(1)), cut),
                    // Records too small for a walk to pay: copied whole.
                    partition(
                        4,
                        None,
                        batch(0, KCompression::None, &[40, 40, 40]).to_vec(),
                    ),
                ]),
                topic(topics[1]).with_partitions(vec![partition(5, None, stub)]),
            ])
    };
    // The whole uncompressed batches of large records in each response.
    let walked_batches = 5;
    let mut frames = Vec::new();
    let mut values = 0;
    let mut corr = 0;
    for version in 4..=18 {
        corr += 1;
        let flexible = version >= 12;
        frames.push((
            Direction::Egress,
            request(1, version, flexible, corr, &fetch(version)),
        ));
        frames.push((
            Direction::Ingress,
            response(version, flexible, corr, &fetched(version)),
        ));
        values += value_bytes * walked_batches;
    }
    let rec = Recording::new("fetch", &frames);
    let exchanges = assert_walks(&rec, values);
    assert_eq!(exchanges.len(), 15);
    for e in &exchanges {
        let Some(Ok(Response::Fetch(f))) = &e.response else {
            panic!("{e:?}");
        };
        assert_eq!(f.partitions.len(), 6, "{e:?}");
        assert!(f.partitions[3].records.truncated_tail, "{e:?}");
        assert!(f.partitions[5].records.truncated_tail, "{e:?}");
    }
    // Ten requests in flight: the walk keeps eight, the first two responses are copied whole.
    let mut frames = Vec::new();
    for c in 0..10 {
        frames.push((Direction::Egress, request(1, 17, true, c, &fetch(17))));
    }
    for c in 0..10 {
        frames.push((Direction::Ingress, response(17, true, c, &fetched(17))));
    }
    let rec = Recording::new("fetch-inflight", &frames);
    let exchanges = assert_walks_all(&rec, 8 * walked_batches * value_bytes);
    assert_eq!(exchanges.len(), 10);
}
