//! Rebuilds each connection's two byte streams from capture records.
//!
//! Every data record names its position in its direction's stream (the kernel advances the
//! stream offset by every byte a syscall moved, copied or not), so a lost record, a truncated
//! syscall or a sniff window shows up here as a gap of a known size rather than as silently
//! joined bytes. The Kafka framing (`kafka::framing`) must resynchronise after a gap. Bytes the
//! kernel skipped on purpose (record values, see `tracer_common::skim`) are not a gap: the
//! piece after them says how many there were, and the framer keeps its place.

use std::collections::HashMap;

use tracer_common::{ConnTuple, Direction};

use crate::capture::{DataRecord, Run};

/// A contiguous run of bytes, possibly after a discontinuity.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Bytes missing right before `bytes` (0 with `discontinuity` for an overlap).
    pub lost: u64,
    /// The stream does not continue from the previous piece: a framer must resynchronise.
    pub discontinuity: bool,
    /// Bytes the kernel skipped on purpose right before `bytes` (after any lost ones).
    pub skipped: u64,
    pub bytes: &'a [u8],
}

/// One direction of one connection.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// Position of the next expected byte.
    next: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Bytes known to be missing.
    pub lost_bytes: u64,
    /// Bytes the kernel skipped on purpose.
    pub skipped_bytes: u64,
    /// Discontinuities (gaps and overlaps).
    pub discontinuities: u64,
}

impl Stream {
    /// Places `bytes`, which start at stream position `pos`.
    pub fn push<'a>(&mut self, pos: u64, bytes: &'a [u8]) -> Piece<'a> {
        self.push_run(pos, 0, bytes)
    }

    /// Places `bytes`, which start at stream position `pos` after `skipped` bytes the kernel
    /// did not copy on purpose.
    pub fn push_run<'a>(&mut self, pos: u64, skipped: u64, bytes: &'a [u8]) -> Piece<'a> {
        let from = pos.saturating_sub(skipped);
        let discontinuity = from != self.next;
        let lost = from.saturating_sub(self.next);
        if discontinuity {
            self.discontinuities += 1;
            self.lost_bytes += lost;
        }
        self.next = pos + bytes.len() as u64;
        self.bytes += bytes.len() as u64;
        self.skipped_bytes += skipped;
        Piece {
            lost,
            discontinuity,
            skipped,
            bytes,
        }
    }

    /// Accounts for bytes the stream is known to have carried past the last piece (a closed
    /// connection's final totals): they were lost.
    pub fn finish(&mut self, total: u64) {
        if total > self.next {
            self.lost_bytes += total - self.next;
            self.discontinuities += 1;
            self.next = total;
        }
    }
}

/// What is known of a connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub tuple: ConnTuple,
    /// The kernel's key for it in `CONNS`: whether the kernel still follows it is asked there.
    pub key: u64,
    /// Process and thread name of the last data record (the owner).
    pub tgid: u32,
    pub comm: [u8; 16],
    /// Indexed by `Direction as usize`: egress, ingress.
    pub streams: [Stream; 2],
    /// Kernel time (CLOCK_MONOTONIC ns) of the last record.
    pub last_ns: u64,
}

/// Connection table with a bound on its size: past `max_connections`, records of new
/// connections are refused and counted rather than growing memory.
#[derive(Debug)]
pub struct Reassembler {
    conns: HashMap<u64, Connection>,
    max_connections: usize,
    /// Data records refused because the table was full.
    pub refused_records: u64,
}

impl Reassembler {
    pub fn new(max_connections: usize) -> Self {
        Self {
            conns: HashMap::new(),
            max_connections,
            refused_records: 0,
        }
    }

    /// Places a run of a data record in its stream. `None` when the connection table is full.
    pub fn push<'a>(&mut self, rec: &DataRecord<'_>, run: Run<'a>) -> Option<Piece<'a>> {
        let full = self.conns.len() >= self.max_connections;
        let conn = match self.conns.entry(rec.hdr.conn_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.refused_records += 1;
                return None;
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Connection {
                tuple: rec.hdr.tuple,
                key: rec.hdr.conn_key,
                tgid: 0,
                comm: [0; 16],
                streams: Default::default(),
                last_ns: 0,
            }),
        };
        conn.tgid = rec.tgid();
        conn.comm = rec.hdr.comm;
        conn.last_ns = rec.hdr.ts_exit_ns;
        let stream = &mut conn.streams[rec.direction() as usize];
        Some(stream.push_run(run.pos, run.skipped, run.bytes))
    }

    pub fn get(&self, conn_id: u64) -> Option<&Connection> {
        self.conns.get(&conn_id)
    }

    /// Removes a closed connection, settling its streams against the kernel's final totals.
    pub fn close(&mut self, conn_id: u64, tx_total: u64, rx_total: u64) -> Option<Connection> {
        let mut c = self.conns.remove(&conn_id)?;
        c.streams[Direction::Egress as usize].finish(tx_total);
        c.streams[Direction::Ingress as usize].finish(rx_total);
        Some(c)
    }

    /// Drops connections with no record since `now_ns - idle_ns` and returns their ids and
    /// kernel keys. No close record comes for a socket whose process exited without close() in
    /// fd mode (the kernel closes its files without the syscall), nor for one the kernel
    /// dropped from its full table, so silence is the only sign left.
    pub fn evict_idle(&mut self, now_ns: u64, idle_ns: u64) -> Vec<(u64, u64)> {
        let cutoff = now_ns.saturating_sub(idle_ns);
        let idle: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_ns < cutoff)
            .map(|(id, c)| (*id, c.key))
            .collect();
        for (id, _) in &idle {
            self.conns.remove(id);
        }
        idle
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_pieces_join_without_discontinuity() {
        let mut s = Stream::default();
        assert!(!s.push(0, b"abc").discontinuity);
        let p = s.push(3, b"de");
        assert_eq!((p.lost, p.discontinuity, p.bytes), (0, false, &b"de"[..]));
        assert_eq!((s.bytes, s.lost_bytes, s.discontinuities), (5, 0, 0));
    }

    fn record(conn_id: u64, ts: u64, payload: &[u8]) -> DataRecord<'_> {
        let mut hdr: tracer_common::DataHeader = unsafe { std::mem::zeroed() };
        hdr.kind = tracer_common::kind::DATA;
        hdr.conn_id = conn_id;
        hdr.conn_key = conn_id + 100;
        hdr.ts_exit_ns = ts;
        hdr.chunk_len = payload.len() as u32;
        hdr.captured_len = payload.len() as u32;
        DataRecord { hdr, payload }
    }

    /// Places a plain record (one run).
    fn place<'a>(r: &mut Reassembler, rec: &DataRecord<'a>) -> Option<Piece<'a>> {
        let run = rec.runs().next()?.ok()?;
        r.push(rec, run)
    }

    #[test]
    fn table_is_bounded_and_idle_connections_are_evicted() {
        let mut r = Reassembler::new(2);
        assert!(place(&mut r, &record(1, 100, b"a")).is_some());
        assert!(place(&mut r, &record(2, 500, b"b")).is_some());
        assert!(
            place(&mut r, &record(3, 600, b"c")).is_none(),
            "third connection refused"
        );
        assert_eq!(r.refused_records, 1);
        assert_eq!(r.evict_idle(1000, 600), vec![(1, 101)]);
        assert!(r.get(1).is_none() && r.get(2).is_some());
        assert!(
            place(&mut r, &record(3, 700, b"c")).is_some(),
            "room again after eviction"
        );
        let c = r.close(3, 5, 0).unwrap();
        assert_eq!((c.streams[0].bytes, c.streams[0].lost_bytes), (1, 4));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn skipped_bytes_are_no_gap() {
        let mut s = Stream::default();
        s.push(0, b"abc");
        let p = s.push_run(13, 10, b"de");
        assert_eq!((p.lost, p.discontinuity, p.skipped), (0, false, 10));
        let p = s.push_run(20, 3, b"f");
        assert_eq!((p.lost, p.discontinuity, p.skipped), (2, true, 3));
        assert_eq!((s.bytes, s.skipped_bytes, s.lost_bytes), (6, 13, 2));
    }

    #[test]
    fn gaps_are_measured_and_overlaps_flagged() {
        let mut s = Stream::default();
        s.push(0, b"abc");
        let p = s.push(10, b"x");
        assert_eq!((p.lost, p.discontinuity), (7, true));
        let p = s.push(5, b"yy");
        assert_eq!((p.lost, p.discontinuity), (0, true));
        s.finish(20);
        assert_eq!((s.lost_bytes, s.discontinuities), (7 + 13, 3));
        s.finish(20);
        assert_eq!(s.discontinuities, 3, "finishing twice changes nothing");
    }
}
