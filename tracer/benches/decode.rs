//! `cargo bench -p tracer --bench decode`: decoding throughput of Produce request and Fetch
//! response streams, uncompressed and zstd, through the tracer's path (framing, header, body,
//! every record and its headers) next to a full `kafka-protocol` decode of the same bytes, and
//! the zstd path next to the bare zstd decompressor. Prints ratios measured in this one run.
//!
//! Times on a shared machine vary by a fifth from run to run; `--once` decodes each stream once,
//! for an instruction count that does not: `valgrind --tool=callgrind
//! --toggle-collect='*Framer*push*' <bench binary> --once` counts the tracer's path alone.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        FetchResponse, ProduceRequest, RequestHeader as KHeader, ResponseHeader as KRespHeader,
        TopicName,
        fetch_response::{FetchableTopicResponse, PartitionData},
        produce_request::{PartitionProduceData, TopicProduceData},
    },
    protocol::{Decodable, Encodable, StrBytes},
    records::{Compression, RecordBatchDecoder},
};
use tracer::{
    kafka::{
        DecodeOptions, Framer, Request, Response, decode_request, decode_response,
        parse_request_header, parse_response_header,
    },
    reassembly::Stream,
};

const RECORDS_PER_BATCH: usize = 100;
const PARTITIONS: usize = 4;
const FRAMES: usize = 64;
const VALUE: usize = 1024;
#[path = "../tests/support/mod.rs"]
mod support;

/// A JSON-like value: fixed field names and random hex digits, so it compresses about 2-3x
/// with zstd, as typical event payloads do.
fn value(seed: i64) -> Bytes {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(VALUE);
    while v.len() < VALUE {
        v.extend_from_slice(b"{\"id\":\"");
        for _ in 0..24 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(b"0123456789abcdef"[(x & 15) as usize]);
        }
        v.extend_from_slice(b"\",\"kind\":\"order\"}");
    }
    v.truncate(VALUE);
    Bytes::from(v)
}

fn batch(codec: Compression, base: i64) -> Bytes {
    let records = (0..RECORDS_PER_BATCH as i64)
        .map(|i| (Some(Bytes::from(format!("key-{i}"))), Some(value(base + i))));
    support::batch(base, codec, true, records)
}

fn frame(header: impl FnOnce(&mut BytesMut), body: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    header(&mut b);
    body(&mut b);
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

const PRODUCE_V: i16 = 10;
const FETCH_V: i16 = 16;

fn produce_stream(codec: Compression) -> Vec<u8> {
    let mut s = Vec::new();
    for c in 0..FRAMES {
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(
                        (0..PARTITIONS as i32)
                            .map(|p| {
                                PartitionProduceData::default()
                                    .with_index(p)
                                    .with_records(Some(batch(codec, 0)))
                            })
                            .collect(),
                    ),
            ]);
        let h = KHeader::default()
            .with_request_api_key(0)
            .with_request_api_version(PRODUCE_V)
            .with_correlation_id(c as i32)
            .with_client_id(Some(StrBytes::from_static_str("bench")));
        s.extend(frame(
            |b| h.encode(b, 2).unwrap(),
            |b| req.encode(b, PRODUCE_V).unwrap(),
        ));
    }
    s
}

fn fetch_stream(codec: Compression) -> Vec<u8> {
    let mut s = Vec::new();
    for c in 0..FRAMES {
        let resp = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic_id(uuid::Uuid::from_bytes([7; 16]))
                .with_partitions(
                    (0..PARTITIONS as i32)
                        .map(|p| {
                            PartitionData::default()
                                .with_partition_index(p)
                                .with_high_watermark(1 << 20)
                                .with_records(Some(batch(codec, (c * RECORDS_PER_BATCH) as i64)))
                        })
                        .collect(),
                ),
        ]);
        let h = KRespHeader::default().with_correlation_id(c as i32);
        s.extend(frame(
            |b| h.encode(b, 1).unwrap(),
            |b| resp.encode(b, FETCH_V).unwrap(),
        ));
    }
    s
}

/// Records whose header was read, over the given partitions.
fn with_header<'a>(parts: impl Iterator<Item = &'a tracer::kafka::PartitionRecords>) -> usize {
    parts.map(|p| p.headers.len().min(p.record_count())).sum()
}

/// The tracer's path: 8 KiB capture chunks -> framer -> header -> body decode (records and
/// headers read). Returns records seen.
fn tracer_decode(stream: &[u8], fetch: bool) -> usize {
    let opts = DecodeOptions::default();
    let mut framer = Framer::new(8 << 20, true);
    let mut s = Stream::default();
    let mut records = 0;
    let never: &dyn Fn(&[u8]) -> Option<bool> = &|_| Some(false);
    for (i, chunk) in stream.chunks(8192).enumerate() {
        let piece = s.push((i * 8192) as u64, chunk);
        framer.push(&piece, 0, 0, never, &mut |f| {
            if fetch {
                let (_, at) = parse_response_header(f.body, 1, FETCH_V).unwrap();
                let Response::Fetch(r) =
                    decode_response(1, FETCH_V, &f.body[at..], false, &opts).unwrap()
                else {
                    unreachable!()
                };
                records += with_header(r.partitions.iter().map(|p| &p.records));
            } else {
                let (h, at) = parse_request_header(f.body).unwrap();
                let Request::Produce(r) = decode_request(&h, &f.body[at..], false, &opts).unwrap()
                else {
                    unreachable!()
                };
                records += with_header(r.partitions.iter().map(|p| &p.records));
            }
            true
        });
    }
    records
}

/// A full decode with kafka-protocol: header, message, and every record batch.
fn reference_decode(stream: &[u8], fetch: bool) -> usize {
    let mut buf = Bytes::copy_from_slice(stream);
    let mut records = 0;
    while buf.has_remaining() {
        let len = buf.get_i32() as usize;
        let mut f = buf.split_to(len);
        let batches: Vec<Bytes> = if fetch {
            KRespHeader::decode(&mut f, 1).unwrap();
            let r = FetchResponse::decode(&mut f, FETCH_V).unwrap();
            r.responses
                .into_iter()
                .flat_map(|t| t.partitions)
                .filter_map(|p| p.records)
                .collect()
        } else {
            KHeader::decode(&mut f, 2).unwrap();
            let r = ProduceRequest::decode(&mut f, PRODUCE_V).unwrap();
            r.topic_data
                .into_iter()
                .flat_map(|t| t.partition_data)
                .filter_map(|p| p.records)
                .collect()
        };
        for mut b in batches {
            for set in RecordBatchDecoder::decode_all(&mut b).unwrap() {
                records += set.records.iter().filter(|r| !r.headers.is_empty()).count();
            }
        }
    }
    records
}

/// The compressed records sections of the stream's batches (after each 61-byte batch header).
fn zstd_payloads(stream: &[u8], fetch: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Bytes::copy_from_slice(stream);
    while buf.has_remaining() {
        let len = buf.get_i32() as usize;
        let mut f = buf.split_to(len);
        let batches: Vec<Bytes> = if fetch {
            KRespHeader::decode(&mut f, 1).unwrap();
            FetchResponse::decode(&mut f, FETCH_V)
                .unwrap()
                .responses
                .into_iter()
                .flat_map(|t| t.partitions)
                .filter_map(|p| p.records)
                .collect()
        } else {
            KHeader::decode(&mut f, 2).unwrap();
            ProduceRequest::decode(&mut f, PRODUCE_V)
                .unwrap()
                .topic_data
                .into_iter()
                .flat_map(|t| t.partition_data)
                .filter_map(|p| p.records)
                .collect()
        };
        out.extend(batches.iter().map(|b| b[61..].to_vec()));
    }
    out
}

/// The bare zstd decompressor over those sections: one reused context, a preallocated output
/// buffer, nothing else. The ceiling for the compressed path.
fn raw_zstd(
    payloads: &[Vec<u8>],
    out: &mut Vec<u8>,
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
) -> usize {
    use std::io::Read as _;
    payloads
        .iter()
        .map(|p| {
            out.clear();
            zstd::stream::read::Decoder::with_context(p.as_slice(), dctx)
                .read_to_end(out)
                .unwrap()
        })
        .sum()
}

/// Best time of several runs of `f`, each repeated for about `budget`.
/// Best time per run of `f` over three rounds of `budget` each; with a zero budget (`--once`),
/// one run, so that an instruction count (callgrind) is the same from one run to the next.
fn time(budget: Duration, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut out = 0;
    let rounds = if budget.is_zero() { 1 } else { 3 };
    for _ in 0..rounds {
        let start = Instant::now();
        let mut reps = 0u32;
        loop {
            out = std::hint::black_box(f());
            reps += 1;
            if start.elapsed() >= budget {
                break;
            }
        }
        best = best.min(start.elapsed() / reps);
    }
    (best, out)
}

fn main() {
    let flag = |f: &str| std::env::args().any(|a| a == f);
    let budget = Duration::from_millis(if flag("--once") {
        0
    } else if flag("--quick") {
        100
    } else {
        700
    });
    println!(
        "{:<34} {:>10} {:>12} {:>14} {:>10}",
        "stream (64 frames x 4 partitions x 100 records of 1 KiB)",
        "MB/s",
        "Mrecords/s",
        "kafka-protocol",
        "ratio"
    );
    for (name, codec, fetch) in [
        ("Produce v10, uncompressed", Compression::None, false),
        ("Produce v10, zstd", Compression::Zstd, false),
        ("Fetch v16, uncompressed", Compression::None, true),
        ("Fetch v16, zstd", Compression::Zstd, true),
    ] {
        let stream = if fetch {
            fetch_stream(codec)
        } else {
            produce_stream(codec)
        };
        let (ours, n) = time(budget, || tracer_decode(&stream, fetch));
        let (theirs, m) = time(budget, || reference_decode(&stream, fetch));
        assert_eq!(
            n, m,
            "{name}: both decoders see every record and its header"
        );
        assert_eq!(n, FRAMES * PARTITIONS * RECORDS_PER_BATCH);
        let mbs = stream.len() as f64 / ours.as_secs_f64() / 1e6;
        let mrs = n as f64 / ours.as_secs_f64() / 1e6;
        let ref_mbs = stream.len() as f64 / theirs.as_secs_f64() / 1e6;
        println!(
            "{name:<34} {mbs:>10.0} {mrs:>12.2} {ref_mbs:>11.0} MB/s {:>9.1}x",
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
        if codec == Compression::Zstd {
            let payloads = zstd_payloads(&stream, fetch);
            let mut out = Vec::with_capacity(4 << 20);
            let mut dctx = zstd::zstd_safe::DCtx::create();
            let (raw, bytes) = time(budget, || raw_zstd(&payloads, &mut out, &mut dctx));
            println!(
                "  {:<32} {:>10.0} MB/s wire, {:.0} MB/s decompressed; tracer path at {:.0}% of its speed",
                "bare zstd decompressor",
                stream.len() as f64 / raw.as_secs_f64() / 1e6,
                bytes as f64 / raw.as_secs_f64() / 1e6,
                100.0 * raw.as_secs_f64() / ours.as_secs_f64()
            );
        }
    }
}
