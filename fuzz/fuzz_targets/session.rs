//! Framing, resynchronisation, request/response pairing and every decoder behind them: the
//! input is cut into pieces of both directions, some with bytes missing before them, as the
//! capture would deliver a hostile or damaged stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    kafka::{DecodeOptions, Session, SessionCounters},
    reassembly::Stream,
};
use tracer_common::Direction;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let opts = DecodeOptions {
        max_decompressed: 1 << 20,
        ..DecodeOptions::default()
    };
    // Flag bit 0: mid-stream; bit 1: roles known from the ports, as for `--ports` connections.
    let mut session = Session::new(flags & 1 != 0, 1 << 20, 8);
    if flags & 2 != 0 {
        session = session.with_requests_from(Direction::Egress);
    }
    let mut streams = [Stream::default(), Stream::default()];
    let mut pos = [0u64; 2];
    let mut counters = SessionCounters::default();
    // Each piece: a control byte (direction, bytes lost before it, length), then its bytes.
    while let Some((&ctl, tail)) = rest.split_first() {
        let dir = if ctl & 0x80 != 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let lost = if ctl & 0x40 != 0 {
            (ctl & 0x0f) as u64
        } else {
            0
        };
        let len = (((ctl & 0x30) >> 4) as usize + 1) * 16;
        let (piece, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        let d = dir as usize;
        pos[d] += lost;
        let p = streams[d].push(pos[d], piece);
        pos[d] += piece.len() as u64;
        session.push(dir, &p, 0, 0, &opts, &mut counters, &mut |_| {});
        assert!(session.buffered() <= 4 << 20, "framer memory bounded");
    }
    session.close(&mut counters, &mut |_| {});
});
