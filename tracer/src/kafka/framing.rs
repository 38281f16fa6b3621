//! Kafka framing: cuts one direction of a connection into frames by their 4-byte size
//! prefix, across any split of the stream into syscalls, and finds frame starts again after a
//! gap or a bad size prefix. Byte streams themselves are `reassembly`'s; what a frame holds is
//! the decoders'.

use crate::{counters::Counter, reassembly::Piece};

/// A frame cut from a stream by its 4-byte big-endian size prefix.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame without its size prefix: all of it, or a prefix when `complete` is false.
    pub body: &'a [u8],
    /// Size the prefix announced.
    pub size: usize,
    /// False when bytes inside the frame were lost or it exceeded the buffer cap: `body` is
    /// then the part before the first missing byte.
    pub complete: bool,
    /// Kernel time of the syscall entry that carried the first byte, and of the syscall exit
    /// that carried the last.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The framer had just resynchronised: the frame start is a guess that decoding must
    /// confirm (the consumer rejects it by returning false from `emit`).
    pub after_resync: bool,
    /// The kernel skipped bytes of the frame on purpose (the selective copy): they read as
    /// zeroes.
    pub skipped: bool,
}

/// Counters of the framing stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FramerCounters {
    pub frames: u64,
    /// Frames emitted incomplete (a gap inside them, or larger than the cap).
    pub partial_frames: u64,
    /// Times the framer lost the frame boundaries and searched for them again.
    pub resyncs: u64,
    /// Bytes thrown away while searching for a frame start (and those of the search window
    /// when the connection closed).
    pub resync_skipped_bytes: u64,
    /// Frames the connection's close cut short (a peer that announced a frame and never sent
    /// it): dropped undecoded.
    pub unfinished_frames: u64,
    /// Skipped ranges (see `tracer_common::skim`) that were not inside a frame being read:
    /// taken as gaps.
    pub misplaced_skips: u64,
}

impl FramerCounters {
    /// Every counter, for the stats line and `/metrics`.
    pub fn named(&self) -> Vec<Counter> {
        vec![
            Counter::count("frames", self.frames, "Kafka frames"),
            Counter::count(
                "partial_frames",
                self.partial_frames,
                "frames missing bytes or over the cap",
            ),
            Counter::count(
                "resyncs",
                self.resyncs,
                "times frame boundaries were searched for again",
            ),
            Counter::count(
                "resync_skipped_bytes",
                self.resync_skipped_bytes,
                "bytes skipped while resynchronising",
            ),
            Counter::count(
                "unfinished_frames",
                self.unfinished_frames,
                "frames cut short by the connection's close, dropped undecoded",
            ),
            Counter::loss(
                "misplaced_skips",
                self.misplaced_skips,
                "ranges the kernel skipped outside a frame being read, taken as gaps",
            ),
        ]
    }

    pub fn add(&mut self, o: &Self) {
        self.frames += o.frames;
        self.partial_frames += o.partial_frames;
        self.resyncs += o.resyncs;
        self.resync_skipped_bytes += o.resync_skipped_bytes;
        self.unfinished_frames += o.unfinished_frames;
        self.misplaced_skips += o.misplaced_skips;
    }
}

/// Splits one direction of a connection into length-prefixed frames.
///
/// Gaps of known size inside a frame keep the framing (the frame's end is known); a gap that
/// crosses a frame boundary, a bad size prefix or a mid-stream start makes the framer search
/// for a plausible frame start with the caller's `plausible` test. Memory is bounded by the
/// frame cap, and by a 64 KiB window while searching.
#[derive(Debug)]
pub struct Framer {
    /// The size prefix while it is incomplete, then the frame body (up to the cap).
    buf: Vec<u8>,
    /// Size of the frame being read, once its prefix is in.
    size: Option<usize>,
    /// Body bytes of the current frame gone by (kept, lost or skipped).
    consumed: usize,
    /// Bytes of the current frame were lost or cut: it is emitted incomplete, and nothing after
    /// the first missing byte is kept.
    damaged: bool,
    /// Bytes of the current frame were skipped by the kernel on purpose.
    skips: bool,
    synced: bool,
    after_resync: bool,
    first_ns: u64,
    last_ns: u64,
    max_frame: usize,
    pub counters: FramerCounters,
}

/// Bytes kept while searching for a frame start.
const RESYNC_WINDOW: usize = 64 << 10;
/// Largest size prefix believed (Kafka's own request cap; responses are smaller in practice).
const MAX_FRAME_SIZE: usize = 100 << 20;

impl Framer {
    /// `synced`: the stream is known to start at a frame boundary (seen from connection start).
    pub fn new(max_frame: usize, synced: bool) -> Self {
        Self {
            buf: Vec::new(),
            size: None,
            consumed: 0,
            damaged: false,
            skips: false,
            synced,
            after_resync: false,
            first_ns: 0,
            last_ns: 0,
            max_frame,
            counters: FramerCounters::default(),
        }
    }

    /// Whether frame boundaries are known (false while searching for one).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Bytes held (for the global memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets a frame start found by resynchronising whose frame has not completed: it was
    /// searched for under a hypothesis that turned out wrong.
    pub fn drop_guess(&mut self) {
        if self.synced && self.after_resync {
            self.unsync();
        }
    }

    /// The stream ended: what is buffered will never be framed, and is counted as such.
    pub fn close(&mut self) {
        if !self.synced {
            self.counters.resync_skipped_bytes += self.buf.len() as u64;
        } else if self.size.is_some() || !self.buf.is_empty() {
            self.counters.unfinished_frames += 1;
        }
        self.buf = Vec::new();
        self.size = None;
        self.consumed = 0;
        self.skips = false;
    }

    fn unsync(&mut self) {
        if self.synced {
            self.counters.resyncs += 1;
        }
        self.synced = false;
        self.size = None;
        self.consumed = 0;
        self.damaged = false;
        self.skips = false;
        self.counters.resync_skipped_bytes += self.buf.len() as u64;
        self.buf.clear();
    }

    /// Feeds one piece of the stream (see [`Stream::push`]); `emit` gets every frame completed
    /// and returns whether it could make sense of it: a frame found by resynchronising that it
    /// rejects was a wrong guess, and the search resumes. `plausible` says whether bytes start
    /// a frame (`None`: not enough bytes to tell).
    pub fn push(
        &mut self,
        piece: &Piece<'_>,
        first_ns: u64,
        last_ns: u64,
        plausible: &dyn Fn(&[u8]) -> Option<bool>,
        emit: &mut dyn FnMut(Frame<'_>) -> bool,
    ) {
        if piece.discontinuity {
            self.gap(piece.lost, emit);
        }
        if piece.skipped > 0 {
            self.skipped(piece.skipped, emit);
        }
        let mut owned: Vec<u8>;
        let mut input: &[u8] = piece.bytes;
        loop {
            if !self.synced {
                match self.search(input, plausible) {
                    Some(found) => {
                        owned = found;
                        input = &owned;
                        self.synced = true;
                        self.after_resync = true;
                    }
                    None => return,
                }
            }
            match self.feed(input, first_ns, last_ns, emit) {
                None => return,
                Some(rest) => {
                    owned = rest;
                    input = &owned;
                }
            }
        }
    }

    /// Frames synced bytes. Returns the bytes left when the framing is lost on the way.
    fn feed(
        &mut self,
        mut bytes: &[u8],
        first_ns: u64,
        last_ns: u64,
        emit: &mut dyn FnMut(Frame<'_>) -> bool,
    ) -> Option<Vec<u8>> {
        while !bytes.is_empty() {
            if self.size.is_none() && self.buf.is_empty() {
                self.first_ns = first_ns;
                // A whole frame inside this piece is decoded where it lies, never copied.
                if let Some(size) = whole_frame(bytes, self.max_frame) {
                    self.last_ns = last_ns;
                    let frame = Frame {
                        body: &bytes[4..4 + size],
                        size,
                        complete: true,
                        first_ns,
                        last_ns,
                        after_resync: self.after_resync,
                        skipped: false,
                    };
                    let wrong_guess = deliver(&mut self.counters, frame, emit);
                    bytes = &bytes[4 + size..];
                    if wrong_guess {
                        // A wrong guess: its body counts as skipped, and the search resumes.
                        self.counters.resync_skipped_bytes += size as u64;
                        self.unsync();
                        return Some(bytes.to_vec());
                    }
                    self.after_resync = false;
                    continue;
                }
            }
            self.last_ns = last_ns;
            let Some(size) = self.size else {
                let n = (4 - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.buf.len() == 4 {
                    let size =
                        i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    if size < 4 || size as usize > MAX_FRAME_SIZE {
                        // The prefix's four bytes count as skipped with the rest.
                        self.unsync();
                        return Some(bytes.to_vec());
                    }
                    self.buf.clear();
                    self.size = Some(size as usize);
                    self.consumed = 0;
                }
                continue;
            };
            let n = (size - self.consumed).min(bytes.len());
            let keep = if self.damaged {
                0
            } else {
                n.min(self.max_frame - self.buf.len())
            };
            self.grow(keep, size);
            self.buf.extend_from_slice(&bytes[..keep]);
            if keep < n {
                self.damaged = true; // over the cap
            }
            self.consumed += n;
            bytes = &bytes[n..];
            if self.consumed == size {
                self.finish(emit);
                if !self.synced {
                    return Some(bytes.to_vec());
                }
            }
        }
        None
    }

    /// Makes room for `more` bytes of a frame of `size`: doubling, as a Vec would, but never
    /// past the frame (or the cap), so a multi-MiB frame costs a few allocations and its last
    /// one is exact. Room is not taken from what the size prefix announces: a peer announcing
    /// 16 MiB and sending nothing would otherwise hold 16 MiB of the global budget.
    fn grow(&mut self, more: usize, size: usize) {
        let (len, cap) = (self.buf.len(), self.buf.capacity());
        if cap - len >= more {
            return;
        }
        let want = (len + more).max(cap * 2).min(size.min(self.max_frame));
        self.buf.reserve_exact(want.max(len + more) - len);
    }

    /// The kernel skipped `n` bytes on purpose (record values): inside a frame they read as
    /// zeroes, which no decoder looks at, and the framing holds. Anywhere else the kernel's walk
    /// and the framing disagree: the bytes are a gap.
    fn skipped(&mut self, n: u64, emit: &mut dyn FnMut(Frame<'_>) -> bool) {
        let Some(size) = self.size.filter(|_| self.synced) else {
            self.counters.misplaced_skips += 1;
            self.gap(n, emit);
            return;
        };
        let left = (size - self.consumed) as u64;
        if n > left {
            self.counters.misplaced_skips += 1;
            self.gap(n, emit);
            return;
        }
        let n = n as usize;
        self.skips = true;
        let keep = if self.damaged {
            0
        } else {
            n.min(self.max_frame - self.buf.len())
        };
        self.grow(keep, size);
        self.buf.resize(self.buf.len() + keep, 0);
        if keep < n {
            self.damaged = true; // over the cap
        }
        self.consumed += n;
        if self.consumed == size {
            self.finish(emit);
        }
    }

    /// `lost` bytes are missing before the next piece (0: the next piece overlaps).
    fn gap(&mut self, lost: u64, emit: &mut dyn FnMut(Frame<'_>) -> bool) {
        if !self.synced {
            // Bytes on both sides of a gap are not contiguous: search again after it.
            self.counters.resync_skipped_bytes += self.buf.len() as u64;
            self.buf.clear();
            return;
        }
        let Some(size) = self.size else {
            // At or inside a size prefix: where the next frame starts is lost.
            self.unsync();
            return;
        };
        let left = (size - self.consumed) as u64;
        if lost == 0 {
            self.unsync();
        } else if lost > left {
            // The gap runs past this frame's end: emit what came before it, then search, as
            // the next frame started inside the gap.
            self.damaged = true;
            self.consumed = size;
            self.finish(emit);
            self.unsync();
        } else {
            // Inside this frame: keep what came before, count the rest as gone by.
            self.damaged = true;
            self.consumed += lost as usize;
            if lost == left {
                self.finish(emit);
            }
        }
    }

    fn finish(&mut self, emit: &mut dyn FnMut(Frame<'_>) -> bool) {
        let Some(size) = self.size else { return };
        let frame = Frame {
            body: &self.buf,
            size,
            complete: !self.damaged,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            after_resync: self.after_resync,
            skipped: self.skips,
        };
        if deliver(&mut self.counters, frame, emit) {
            self.unsync();
            return;
        }
        self.after_resync = false;
        self.buf.clear();
        if self.buf.capacity() > RESYNC_WINDOW {
            self.buf.shrink_to(RESYNC_WINDOW);
        }
        self.size = None;
        self.consumed = 0;
        self.damaged = false;
        self.skips = false;
    }

    /// Looks for a frame start in what is buffered plus `bytes`. Returns the bytes from the
    /// start found on, or None (keeping at most the search window) to wait for more.
    fn search(
        &mut self,
        bytes: &[u8],
        plausible: &dyn Fn(&[u8]) -> Option<bool>,
    ) -> Option<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while at < self.buf.len() {
            match plausible(&self.buf[at..]) {
                Some(true) => {
                    self.counters.resync_skipped_bytes += at as u64;
                    let found = self.buf.split_off(at);
                    self.buf.clear();
                    return Some(found);
                }
                Some(false) => at += 1,
                None => break,
            }
        }
        self.counters.resync_skipped_bytes += at as u64;
        self.buf.drain(..at);
        if self.buf.len() > RESYNC_WINDOW {
            let cut = self.buf.len() - RESYNC_WINDOW;
            self.counters.resync_skipped_bytes += cut as u64;
            self.buf.drain(..cut);
        }
        None
    }
}

/// Counts `frame` and hands it to `emit`; whether it was a frame start found by
/// resynchronising that `emit` rejected (a wrong guess).
fn deliver(
    counters: &mut FramerCounters,
    frame: Frame<'_>,
    emit: &mut dyn FnMut(Frame<'_>) -> bool,
) -> bool {
    counters.frames += 1;
    if !frame.complete {
        counters.partial_frames += 1;
    }
    let guess = frame.after_resync;
    !emit(frame) && guess
}

/// The body size of the frame at the start of `bytes` when all of it is there, its size
/// prefix believable and the body within `cap`.
fn whole_frame(bytes: &[u8], cap: usize) -> Option<usize> {
    let prefix: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let size = usize::try_from(i32::from_be_bytes(prefix)).ok()?;
    ((4..=MAX_FRAME_SIZE.min(cap)).contains(&size) && bytes.len() - 4 >= size).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reassembly::Stream;

    /// Frames that arrive whole in one piece come out as when they arrive byte by byte, without
    /// passing through the buffer.
    #[test]
    fn whole_frames_are_framed_in_place() {
        let stream = frame(&[b"abcd", &[9; 300], b"wxyz"]);
        let any = |_: &[u8]| Some(true);
        let mut whole = Framer::new(1 << 20, true);
        let at_once = run(&mut whole, &[(0, &stream)], &any);
        assert_eq!(whole.buffered(), 0, "nothing copied");
        let mut split = Framer::new(1 << 20, true);
        let pieces: Vec<(u64, &[u8])> = (0..stream.len())
            .map(|i| (i as u64, &stream[i..i + 1]))
            .collect();
        assert_eq!(at_once, run(&mut split, &pieces, &any));
        assert_eq!(at_once.len(), 3);
        assert_eq!(whole.counters, split.counters);
    }

    /// Frames `bytes` with the prefix sizes given, as one stream.
    fn frame(sizes_and_bodies: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for b in sizes_and_bodies {
            v.extend((b.len() as i32).to_be_bytes());
            v.extend_from_slice(b);
        }
        v
    }

    /// Frames seen as (body, complete, after_resync).
    fn run(
        f: &mut Framer,
        pieces: &[(u64, &[u8])],
        plausible: &dyn Fn(&[u8]) -> Option<bool>,
    ) -> Vec<(Vec<u8>, bool, bool)> {
        let mut s = Stream::default();
        let mut out = Vec::new();
        for (pos, bytes) in pieces {
            let piece = s.push(*pos, bytes);
            f.push(&piece, 1, 2, plausible, &mut |fr| {
                out.push((fr.body.to_vec(), fr.complete, fr.after_resync));
                true
            });
        }
        out
    }

    const NEVER: &dyn Fn(&[u8]) -> Option<bool> = &|_| Some(false);

    #[test]
    fn frames_split_and_merged_across_pieces() {
        // Kafka frames hold at least a correlation id: 4 bytes.
        let stream = frame(&[b"first", b"four", b"second!", b"last"]);
        for cut in 0..stream.len() {
            let mut f = Framer::new(1 << 20, true);
            let got = run(
                &mut f,
                &[(0, &stream[..cut]), (cut as u64, &stream[cut..])],
                NEVER,
            );
            let bodies: Vec<_> = got.iter().map(|g| g.0.clone()).collect();
            assert_eq!(
                bodies,
                vec![
                    b"first".to_vec(),
                    b"four".to_vec(),
                    b"second!".to_vec(),
                    b"last".to_vec()
                ],
                "cut at {cut}"
            );
            assert!(got.iter().all(|g| g.1 && !g.2));
        }
    }

    #[test]
    fn a_gap_inside_a_frame_keeps_the_framing() {
        let stream = frame(&[b"0123456789", b"next"]);
        let mut f = Framer::new(1 << 20, true);
        // Bytes 8..10 of the stream (inside the first body) are lost.
        let got = run(&mut f, &[(0, &stream[..8]), (10, &stream[10..])], NEVER);
        assert_eq!(
            got,
            vec![
                (b"0123".to_vec(), false, false),
                (b"next".to_vec(), true, false)
            ]
        );
        assert_eq!((f.counters.partial_frames, f.counters.resyncs), (1, 0));
    }

    /// Bytes the kernel skipped inside a frame read as zeroes, and the framing holds; a skip
    /// outside a frame is a gap.
    #[test]
    fn skipped_bytes_inside_a_frame_read_as_zeroes() {
        let stream = frame(&[b"0123456789", b"next"]);
        let mut f = Framer::new(1 << 20, true);
        let mut s = Stream::default();
        let mut out = Vec::new();
        for (pos, skipped, bytes) in [(0, 0, &stream[..6]), (10, 4, &stream[10..])] {
            let piece = s.push_run(pos, skipped, bytes);
            f.push(&piece, 1, 2, NEVER, &mut |fr| {
                out.push((fr.body.to_vec(), fr.complete));
                true
            });
        }
        assert_eq!(
            out,
            vec![
                ([&b"01"[..], &[0; 4], b"6789"].concat(), true),
                (b"next".to_vec(), true)
            ]
        );
        assert_eq!((f.counters.misplaced_skips, f.counters.resyncs), (0, 0));
        // A skip across a frame's end, or between frames, is not the kernel's walk: a gap.
        for (skip_from, skipped) in [(12, 4), (14, 2)] {
            let mut f = Framer::new(1 << 20, true);
            let mut s = Stream::default();
            for (pos, skipped, bytes) in [
                (0, 0, &stream[..skip_from]),
                (
                    skip_from as u64 + skipped,
                    skipped,
                    &stream[skip_from + skipped as usize..],
                ),
            ] {
                let piece = s.push_run(pos, skipped, bytes);
                f.push(&piece, 1, 2, NEVER, &mut |_| true);
            }
            assert_eq!(f.counters.misplaced_skips, 1, "skip at {skip_from}");
            assert!(f.counters.resyncs + f.counters.partial_frames > 0);
        }
    }

    #[test]
    fn a_gap_ending_exactly_at_a_frame_end_keeps_the_framing() {
        let stream = frame(&[b"0123456789", b"next"]);
        let mut f = Framer::new(1 << 20, true);
        let got = run(&mut f, &[(0, &stream[..6]), (14, &stream[14..])], NEVER);
        assert_eq!(
            got,
            vec![
                (b"01".to_vec(), false, false),
                (b"next".to_vec(), true, false)
            ]
        );
    }

    #[test]
    fn a_gap_across_a_boundary_resyncs_on_a_plausible_start() {
        let stream = frame(&[b"0123456789", b"AAjunk", b"Bgood", b"Bmore"]);
        let mut f = Framer::new(1 << 20, true);
        // Frames starting with size then 'B' are "plausible".
        let plausible: &dyn Fn(&[u8]) -> Option<bool> = &|b| {
            if b.len() < 5 {
                None
            } else {
                Some(b[0] == 0 && b[4] == b'B')
            }
        };
        let got = run(&mut f, &[(0, &stream[..5]), (18, &stream[18..])], plausible);
        // The first frame's byte before the gap comes out as an incomplete frame; the search
        // skips the junk frame and resumes at the first plausible one.
        assert_eq!(
            got,
            vec![
                (b"0".to_vec(), false, false),
                (b"Bgood".to_vec(), true, true),
                (b"Bmore".to_vec(), true, false)
            ]
        );
        assert_eq!(f.counters.resyncs, 1);
        assert!(f.counters.resync_skipped_bytes > 0);
    }

    #[test]
    fn oversized_frames_give_their_prefix_and_framing_continues() {
        let big = vec![7u8; 100];
        let stream = frame(&[&big, b"after"]);
        let mut f = Framer::new(10, true);
        let got = run(&mut f, &[(0, &stream)], NEVER);
        assert_eq!(
            got,
            vec![
                (vec![7u8; 10], false, false),
                (b"after".to_vec(), true, false)
            ]
        );
    }

    #[test]
    fn a_bad_size_prefix_resyncs_instead_of_emitting_garbage() {
        let mut stream = b"\xff\xff\xff\xffGARBAGE".to_vec();
        stream.extend(frame(&[b"Bokay"]));
        let mut f = Framer::new(1 << 20, true);
        let plausible: &dyn Fn(&[u8]) -> Option<bool> = &|b| {
            if b.len() < 5 {
                None
            } else {
                Some(b[..4] == [0, 0, 0, 5] && b[4] == b'B')
            }
        };
        let got = run(&mut f, &[(0, &stream)], plausible);
        assert_eq!(got, vec![(b"Bokay".to_vec(), true, true)]);
        // Every byte before the frame is counted: the bad prefix and the garbage.
        assert_eq!(f.counters.resync_skipped_bytes, 4 + 7);
    }

    #[test]
    fn a_close_counts_what_was_held() {
        // A frame announced and never sent.
        let mut f = Framer::new(1 << 20, true);
        run(&mut f, &[(0, &[0, 0, 0, 100, 1, 2, 3])], NEVER);
        f.close();
        assert_eq!(
            (
                f.counters.unfinished_frames,
                f.counters.frames,
                f.buffered()
            ),
            (1, 0, 0)
        );
        // Bytes waiting in the search window count as skipped.
        let mut f = Framer::new(1 << 20, false);
        let maybe: &dyn Fn(&[u8]) -> Option<bool> = &|_| None;
        run(&mut f, &[(0, b"abcdef")], maybe);
        assert_eq!(f.counters.resync_skipped_bytes, 0);
        f.close();
        assert_eq!(
            (
                f.counters.resync_skipped_bytes,
                f.counters.unfinished_frames
            ),
            (6, 0)
        );
    }

    #[test]
    fn a_rejected_resync_guess_resumes_the_search() {
        // "B" frames are plausible, but the consumer only accepts bodies starting "Bok".
        let stream = [b"zz".to_vec(), frame(&[b"Bbad!", b"xxxx", b"Bokay"])].concat();
        let mut f = Framer::new(1 << 20, false);
        let plausible: &dyn Fn(&[u8]) -> Option<bool> = &|b| {
            if b.len() < 5 {
                None
            } else {
                Some(b[..3] == [0, 0, 0] && b[4] == b'B')
            }
        };
        let mut s = Stream::default();
        let mut got = Vec::new();
        let piece = s.push(0, &stream);
        f.push(&piece, 1, 2, plausible, &mut |fr| {
            let ok = fr.body.starts_with(b"Bok");
            if ok {
                got.push(fr.body.to_vec());
            }
            ok
        });
        assert_eq!(got, vec![b"Bokay".to_vec()]);
    }

    /// Memory follows the bytes that came, not the size a peer announces; a frame arriving in
    /// pieces never gets more room than its size.
    #[test]
    fn announced_sizes_are_not_reserved() {
        let mut f = Framer::new(16 << 20, true);
        let mut head = ((16 << 20) - 1i32).to_be_bytes().to_vec();
        head.extend_from_slice(&[7; 10]);
        assert!(run(&mut f, &[(0, &head)], NEVER).is_empty());
        assert!(f.buffered() < 1 << 10, "{}", f.buffered());

        let mut f = Framer::new(16 << 20, true);
        let size = 3 << 20;
        let mut frame = (size as i32).to_be_bytes().to_vec();
        frame.extend((0..size).map(|i| i as u8));
        let (mut stream, mut out) = (Stream::default(), Vec::new());
        let mut peak = 0;
        for (i, chunk) in frame.chunks(64 << 10).enumerate() {
            let piece = stream.push((i * (64 << 10)) as u64, chunk);
            f.push(&piece, 1, 2, NEVER, &mut |fr| {
                out.push(fr.body.to_vec());
                true
            });
            peak = peak.max(f.buffered());
        }
        assert!(peak <= size, "never past the frame: {peak}");
        assert_eq!(out.len(), 1);
        assert!(out[0] == frame[4..], "the frame's bytes");
    }

    #[test]
    fn search_memory_is_bounded() {
        let mut f = Framer::new(1 << 20, false);
        let noise = vec![0xabu8; 1 << 20];
        assert!(run(&mut f, &[(0, &noise)], &|_| Some(false)).is_empty());
        let wait: &dyn Fn(&[u8]) -> Option<bool> = &|_| None;
        assert!(run(&mut f, &[(1 << 20, &noise)], wait).is_empty());
        assert!(f.buffered() <= 3 << 20, "{}", f.buffered());
        assert!(f.buf.len() <= RESYNC_WINDOW);
    }
}
