//! What the integration tests and the decode benchmark share: reading the `.rec` recordings of
//! real client traffic (see fixtures/README.md) and encoding record batches with the reference
//! encoder (the `kafka-protocol` crate). One copy each, so a change of the recording format or
//! of a batch field is made once.

#![allow(dead_code)] // Each test crate uses its part.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    indexmap::IndexMap,
    protocol::StrBytes,
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};
use tracer::{
    kafka::{DecodeOptions, Exchange, Session, SessionCounters},
    reassembly::Stream,
};
use tracer_common::Direction;

/// The chunks of a recording, in order: each is what one syscall of the recorded client moved
/// (a direction byte, 0 for what it sent, a little-endian u32 length, the bytes).
pub fn chunks(bytes: &[u8]) -> Vec<(Direction, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let dir = if bytes[at] == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((dir, &bytes[at + 5..at + 5 + len]));
        at += 5 + len;
    }
    out
}

/// Replays the recording `file` through `session`, each chunk the next piece of its direction's
/// stream, 1 µs after the previous one; closes the session at the end.
pub fn replay(file: &Path, mut session: Session, counters: &mut SessionCounters) -> Vec<Exchange> {
    let bytes = std::fs::read(file).unwrap();
    let mut streams = [Stream::default(), Stream::default()];
    let mut out = Vec::new();
    for (i, (dir, data)) in chunks(&bytes).into_iter().enumerate() {
        let t = (i as u64 + 1) * 1000;
        let s = &mut streams[dir as usize];
        let piece = s.push(s.bytes, data);
        session.push(
            dir,
            &piece,
            t,
            t + 10,
            &DecodeOptions::default(),
            counters,
            &mut |e| out.push(e),
        );
    }
    session.close(counters, &mut |e| out.push(e));
    out
}

/// The W3C trace context the encoded batches carry.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A v2 record batch of records at offsets `base`.., with keys and values from `records`, each
/// with a `traceparent` header when `traced`, compressed with `codec`.
pub fn batch(
    base: i64,
    codec: Compression,
    traced: bool,
    records: impl IntoIterator<Item = (Option<Bytes>, Option<Bytes>)>,
) -> Bytes {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: base + i as i64,
            // kafka-protocol starts a new batch when offset - sequence changes.
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key,
            value,
            headers: if traced {
                IndexMap::from([(
                    StrBytes::from_static_str("traceparent"),
                    Some(Bytes::from_static(TRACEPARENT.as_bytes())),
                )])
            } else {
                IndexMap::new()
            },
        })
        .collect();
    let mut b = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut b,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: codec,
        },
    )
    .unwrap();
    b.freeze()
}
