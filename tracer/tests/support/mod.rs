//! What the integration tests and the decode benchmark share: reading the `.rec` recordings of
//! real client traffic (see fixtures/README.md) and encoding record batches with the reference
//! encoder (the `kafka-protocol` crate). One copy each, so a change of the recording format or
//! of a batch field is made once.

#![allow(dead_code)] // Each test crate uses its part.

use std::path::{Path, PathBuf};

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
use tracer_common::{
    Direction,
    skim::{InFlight, Part, Skim, policy},
};

/// The directory of the recorded cases (tests/fixtures, see its README).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The recordings (`.rec` files) of the case directory `case`, sorted.
pub fn recordings(case: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(case)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rec"))
        .collect();
    files.sort();
    files
}

/// Every recording of every case.
pub fn all_recordings() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    cases.sort();
    cases.iter().flat_map(|c| recordings(c)).collect()
}

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
pub fn replay(file: &Path, session: Session, counters: &mut SessionCounters) -> Vec<Exchange> {
    replay_walked(file, session, counters, policy::ALL, None).exchanges
}

/// A run of a walked stream: its position, the bytes skipped right before it, its bytes.
pub type SkimRun = (u64, u64, Vec<u8>);

/// What the kernel's selective copy sends for one syscall that moved `data` from stream
/// position `pos` of a walked stream, its buffer cut into segments (iovecs) of the lengths
/// `segment` gives: the runs its `flags::RUNS` records carry (`Skim::walk`, the rule the eBPF
/// walk in `tracer-ebpf/src/skim.rs` takes step by step).
/// `gave_up` counts the steps that copied a frame whole or stopped the walk.
pub fn skim_syscall(
    sk: &mut Skim,
    fetches: &mut InFlight,
    mut pos: u64,
    data: &[u8],
    segment: &mut dyn FnMut() -> usize,
    gave_up: &mut u64,
) -> Vec<SkimRun> {
    let mut runs: Vec<SkimRun> = Vec::new();
    let mut skipped = 0u64;
    let mut rest = data;
    while !rest.is_empty() {
        let (seg, after) = rest.split_at(segment().clamp(1, rest.len()));
        rest = after;
        *gave_up += sk.walk(pos, seg, fetches, &mut |part| match part {
            Part::Skip(n) => {
                skipped += n;
                pos += n;
            }
            Part::Copy(bytes) => {
                match runs.last_mut() {
                    Some((p, _, b)) if skipped == 0 && *p + b.len() as u64 == pos => {
                        b.extend_from_slice(bytes)
                    }
                    _ => runs.push((pos, skipped, bytes.to_vec())),
                }
                skipped = 0;
                pos += bytes.len() as u64;
            }
        });
    }
    if skipped > 0 {
        runs.push((pos, skipped, Vec::new()));
    }
    runs
}

/// What [`replay_walked`] found.
pub struct Walked {
    pub exchanges: Vec<Exchange>,
    /// Bytes the walk skipped.
    pub skipped: u64,
    /// Steps that copied a frame whole or stopped the walk.
    pub gave_up: u64,
}

/// Replays the recording `file` as `replay` does; with `segment`, both directions walked by
/// the selective copy under `policy` (the sent one as requests, the received one as
/// responses) with syscalls cut into segments by it.
pub fn replay_walked(
    file: &Path,
    mut session: Session,
    counters: &mut SessionCounters,
    policy: u8,
    mut segment: Option<&mut dyn FnMut() -> usize>,
) -> Walked {
    let bytes = std::fs::read(file).unwrap();
    let mut streams = [Stream::default(), Stream::default()];
    let mut walks = [Skim::from_start(policy), Skim::responses_from_start(policy)];
    let mut fetches = InFlight::new();
    let mut out = Vec::new();
    let mut gave_up = 0;
    for (i, (dir, data)) in chunks(&bytes).into_iter().enumerate() {
        let t = (i as u64 + 1) * 1000;
        let s = &mut streams[dir as usize];
        let runs = match segment.as_mut() {
            Some(segment) => {
                let pos = s.bytes + s.skipped_bytes;
                let sk = &mut walks[usize::from(dir == Direction::Ingress)];
                skim_syscall(sk, &mut fetches, pos, data, *segment, &mut gave_up)
            }
            None => vec![(s.bytes + s.skipped_bytes, 0, data.to_vec())],
        };
        for (pos, skipped, run) in &runs {
            let piece = s.push_run(*pos, *skipped, run);
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
    }
    session.close(counters, &mut |e| out.push(e));
    Walked {
        exchanges: out,
        skipped: streams[0].skipped_bytes + streams[1].skipped_bytes,
        gave_up,
    }
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
