//! The selective copy's rule (`tracer_common::skim`, which the kernel runs on a walked
//! connection's two streams) over any bytes, cut into segments anywhere: it never panics, and
//! what it leaves out never changes what the daemon decodes (the skipped bytes read as
//! zeroes, and no decoder looks at a record value): the walked runs decode as the same pieces
//! do with the skipped bytes put back. Under the policies that skip whole records
//! (`--record-headers`), which the control byte picks too, the same frames decode, with the
//! same headers. The input is a control byte, the request stream's length (`u32`, little
//! endian), the request stream, then the response stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    kafka::{DecodeOptions, Exchange, Session, SessionCounters},
    reassembly::Stream,
};
use tracer_common::{
    Direction,
    skim::{InFlight, Part, Skim, policy},
};

/// One walked stream as runs of (skipped before, bytes).
type Runs<'a> = Vec<(u64, &'a [u8])>;

/// The exchanges decoded from the request and response streams given as runs; with `whole`,
/// the skipped bytes are taken from the streams instead, as pieces of their own.
fn decode(runs: [&Runs<'_>; 2], whole: Option<[&[u8]; 2]>) -> (Vec<Exchange>, SessionCounters) {
    let opts = DecodeOptions {
        max_decompressed: 1 << 20,
        ..DecodeOptions::default()
    };
    let mut session = Session::new(false, 1 << 20, 8).with_requests_from(Direction::Egress);
    let mut counters = SessionCounters::default();
    let mut out = Vec::new();
    for (side, dir) in [Direction::Egress, Direction::Ingress]
        .into_iter()
        .enumerate()
    {
        let mut stream = Stream::default();
        let mut pos = 0;
        for &(skipped, bytes) in runs[side] {
            let mut pieces = Vec::new();
            match whole {
                Some(w) if skipped > 0 => {
                    let from = pos as usize;
                    pieces.push(stream.push(pos, &w[side][from..from + skipped as usize]));
                    pos += skipped;
                    pieces.push(stream.push(pos, bytes));
                }
                _ => {
                    pos += skipped;
                    pieces.push(stream.push_run(pos, skipped, bytes));
                }
            }
            pos += bytes.len() as u64;
            for piece in pieces {
                session.push(dir, &piece, 0, 0, &opts, &mut counters, &mut |e| {
                    out.push(e)
                });
            }
        }
    }
    session.close(&mut counters, &mut |e| out.push(e));
    (out, counters)
}

/// Walks `stream` with `sk` in segments of 1 to 256 bytes cut by `seed`.
fn walk<'a>(sk: &mut Skim, fetches: &mut InFlight, stream: &'a [u8], seed: &mut u64) -> Runs<'a> {
    let mut runs = Vec::new();
    let (mut skipped, mut pos, mut rest) = (0u64, 0u64, stream);
    while !rest.is_empty() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let n = (1 + *seed % 256).min(rest.len() as u64) as usize;
        let (seg, after) = rest.split_at(n);
        sk.walk(pos, seg, fetches, &mut |part| match part {
            Part::Skip(n) => skipped += n,
            Part::Copy(b) => {
                runs.push((skipped, b));
                skipped = 0;
            }
        });
        pos += n as u64;
        rest = after;
    }
    if skipped > 0 {
        runs.push((skipped, &[][..]));
    }
    runs
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let (requests, responses) = rest.split_at((u32::from_le_bytes(*len) as usize).min(rest.len()));
    let mut seed = cut as u64 | 1;
    let policy = [policy::ALL, policy::UNCOMPRESSED, policy::NONE][cut as usize % 3];
    // The requests first: the response walk follows the Fetch requests they hold.
    let mut fetches = InFlight::new();
    let sent = walk(
        &mut Skim::from_start(policy),
        &mut fetches,
        requests,
        &mut seed,
    );
    let received = walk(
        &mut Skim::responses_from_start(policy),
        &mut fetches,
        responses,
        &mut seed,
    );
    let walked = decode([&sent, &received], None);
    let whole = decode([&sent, &received], Some([requests, responses]));
    if policy == policy::ALL {
        let show = |(e, c): &(Vec<Exchange>, SessionCounters)| format!("{e:?} {c:?}");
        assert_eq!(show(&walked), show(&whole), "the walk changed what decodes");
    } else {
        let headers =
            |e: &[Exchange]| format!("{:?}", e.iter().map(|e| &e.header).collect::<Vec<_>>());
        assert_eq!(
            headers(&walked.0),
            headers(&whole.0),
            "the walk changed the framing"
        );
    }
});
