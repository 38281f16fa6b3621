//! The selective copy's rule (`tracer_common::skim`, which the kernel runs on every client's
//! request stream) over any bytes, cut into segments anywhere: it never panics, and what it
//! leaves out never changes what the daemon decodes (the skipped bytes read as zeroes, and no
//! decoder looks at a record value): the walked runs decode as the same pieces do with the
//! skipped bytes put back. Under the policies that skip whole records (`--record-headers`),
//! which the control byte picks too, the same frames decode, with the same request headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    kafka::{DecodeOptions, Exchange, Session, SessionCounters},
    reassembly::Stream,
};
use tracer_common::{
    Direction,
    skim::{Part, Skim, policy},
};

/// The exchanges decoded from the request stream given as runs of (skipped before, bytes);
/// with `whole`, the skipped bytes are taken from it instead, as pieces of their own.
fn decode(runs: &[(u64, &[u8])], whole: Option<&[u8]>) -> (Vec<Exchange>, SessionCounters) {
    let opts = DecodeOptions {
        max_decompressed: 1 << 20,
        ..DecodeOptions::default()
    };
    let mut session = Session::new(false, 1 << 20, 8).with_requests_from(Direction::Egress);
    let mut stream = Stream::default();
    let mut counters = SessionCounters::default();
    let mut out = Vec::new();
    let mut pos = 0;
    for &(skipped, bytes) in runs {
        let mut pieces = Vec::new();
        match whole {
            Some(w) if skipped > 0 => {
                let from = pos as usize;
                pieces.push(stream.push(pos, &w[from..from + skipped as usize]));
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
            session.push(Direction::Egress, &piece, 0, 0, &opts, &mut counters, &mut |e| {
                out.push(e)
            });
        }
    }
    session.close(&mut counters, &mut |e| out.push(e));
    (out, counters)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    // Segments of 1 to 256 bytes, cut by the control byte's seed.
    let mut seed = cut as u64 | 1;
    let policy = [policy::ALL, policy::UNCOMPRESSED, policy::NONE][cut as usize % 3];
    let mut sk = Skim::from_start(policy);
    let mut runs: Vec<(u64, &[u8])> = Vec::new();
    let (mut skipped, mut pos, mut rest) = (0u64, 0u64, stream);
    while !rest.is_empty() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (1 + seed % 256).min(rest.len() as u64) as usize;
        let (seg, after) = rest.split_at(n);
        sk.walk(pos, seg, &mut |part| match part {
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
        runs.push((skipped, &[]));
    }
    let walked = decode(&runs, None);
    let whole = decode(&runs, Some(stream));
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
