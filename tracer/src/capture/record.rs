//! Typed views of the ring-buffer records written by the eBPF programs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{
    ConnEvent, ConnTuple, DATA_HEADER_SIZE, DataHeader, Direction, Syscall, flags, kind,
    skim::RUN_HEADER,
};

/// One record from the ring buffer. Data payloads borrow the ring buffer's memory.
#[derive(Debug)]
pub enum RingRecord<'a> {
    Data(DataRecord<'a>),
    Open(ConnEvent),
    Close(ConnEvent),
    /// The connection (as it was: its old id) turned out to be TLS; its plaintext follows
    /// under a new id.
    Tls(ConnEvent),
    /// A traced process (this tgid) ran a new program.
    Exec(u32),
}

#[derive(Debug)]
pub struct DataRecord<'a> {
    pub hdr: DataHeader,
    pub payload: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingRecordError {
    #[error("ring-buffer record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown ring-buffer record kind {0}")]
    UnknownKind(u8),
    #[error("data record announces {announced} payload bytes but carries {carried}")]
    BadLength { announced: u32, carried: usize },
    #[error("data record's runs end in a cut run ({carried} bytes left)")]
    BadRuns { carried: usize },
}

/// Reads a `#[repr(C)]` plain-data value from the start of `bytes`.
fn read_pod<T: Copy>(bytes: &[u8]) -> Result<T, RingRecordError> {
    if bytes.len() < size_of::<T>() {
        return Err(RingRecordError::Short(bytes.len()));
    }
    // SAFETY: length checked; T is a plain-data repr(C) type valid for any bit pattern (only
    // integers and byte arrays), and read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

impl<'a> RingRecord<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RingRecordError> {
        match bytes.first().copied() {
            Some(kind::DATA) => {
                let hdr: DataHeader = read_pod(bytes)?;
                let payload = &bytes[DATA_HEADER_SIZE..];
                // The kernel rounds records up to 8 bytes; the header says how many are payload.
                let payload =
                    payload
                        .get(..hdr.chunk_len as usize)
                        .ok_or(RingRecordError::BadLength {
                            announced: hdr.chunk_len,
                            carried: payload.len(),
                        })?;
                Ok(Self::Data(DataRecord { hdr, payload }))
            }
            Some(kind::OPEN) => Ok(Self::Open(read_pod(bytes)?)),
            Some(kind::CLOSE) => Ok(Self::Close(read_pod(bytes)?)),
            Some(kind::TLS) => Ok(Self::Tls(read_pod(bytes)?)),
            Some(kind::EXEC) => Ok(Self::Exec(
                (read_pod::<ConnEvent>(bytes)?.pid_tgid >> 32) as u32,
            )),
            Some(other) => Err(RingRecordError::UnknownKind(other)),
            None => Err(RingRecordError::Short(0)),
        }
    }
}

/// A contiguous run of a data record's stream bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run<'a> {
    /// Stream position of `bytes`.
    pub pos: u64,
    /// Bytes the kernel skipped on purpose right before `bytes`.
    pub skipped: u64,
    pub bytes: &'a [u8],
}

/// The runs of a data record, in stream order; a malformed run ends them with an error.
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    pos: u64,
    rest: &'a [u8],
    runs: bool,
}

impl<'a> Iterator for Runs<'a> {
    type Item = Result<Run<'a>, RingRecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.runs {
            // A plain record is one run, which may be empty.
            self.runs = true;
            return Some(Ok(Run {
                pos: self.pos,
                skipped: 0,
                bytes: std::mem::take(&mut self.rest),
            }));
        }
        if self.rest.is_empty() {
            return None;
        }
        let Some((head, rest)) = self.rest.split_at_checked(RUN_HEADER) else {
            return Some(Err(self.malformed()));
        };
        let skipped = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let len = u16::from_le_bytes([head[4], head[5]]) as usize;
        let Some((bytes, rest)) = rest.split_at_checked(len) else {
            return Some(Err(self.malformed()));
        };
        let pos = self.pos + skipped;
        self.pos = pos + len as u64;
        self.rest = rest;
        Some(Ok(Run {
            pos,
            skipped,
            bytes,
        }))
    }
}

impl Runs<'_> {
    fn malformed(&mut self) -> RingRecordError {
        let carried = self.rest.len();
        self.rest = &[];
        RingRecordError::BadRuns { carried }
    }
}

impl<'a> DataRecord<'a> {
    pub fn direction(&self) -> Direction {
        Direction::from_u8(self.hdr.direction).unwrap_or(Direction::Egress)
    }

    pub fn syscall(&self) -> Option<Syscall> {
        Syscall::from_u8(self.hdr.syscall)
    }

    pub fn tgid(&self) -> u32 {
        (self.hdr.pid_tgid >> 32) as u32
    }

    pub fn tid(&self) -> u32 {
        self.hdr.pid_tgid as u32
    }

    /// Position of this record's first byte in its direction's stream.
    pub fn position(&self) -> u64 {
        self.hdr.stream_offset + self.hdr.chunk_offset as u64
    }

    pub fn truncated(&self) -> bool {
        self.hdr.flags & flags::TRUNCATED != 0
    }

    pub fn sniffing(&self) -> bool {
        self.hdr.flags & flags::SNIFF != 0
    }

    /// The connection was first seen mid-stream (it predates the tracer).
    pub fn midstream(&self) -> bool {
        self.hdr.flags & flags::MIDSTREAM != 0
    }

    /// The bytes are TLS plaintext, read from the TLS library.
    pub fn tls(&self) -> bool {
        self.hdr.flags & flags::TLS != 0
    }

    /// The record's bytes as runs of the stream: the whole payload for a plain record, each
    /// run of a [`flags::RUNS`] record (bytes skipped on purpose, then bytes copied).
    pub fn runs(&self) -> Runs<'a> {
        Runs {
            pos: self.position(),
            rest: self.payload,
            runs: self.hdr.flags & flags::RUNS != 0,
        }
    }

    /// The record's first copied bytes (its payload, or its first run's).
    fn leading(&self) -> &'a [u8] {
        match self.runs().next() {
            Some(Ok(r)) if r.skipped == 0 => r.bytes,
            _ => &[],
        }
    }

    /// The record starts its stream with a TLS record: the connection's bytes are ciphertext
    /// (the kernel copies no more of them).
    pub fn starts_ciphertext(&self) -> bool {
        let p = self.leading();
        self.position() == 0
            && !self.tls()
            && p.len() >= 5
            && tracer_common::tls_record(
                p[0],
                p[1],
                p[2],
                u16::from_be_bytes([p[3], p[4]]),
                self.midstream(),
            )
    }

    pub fn comm(&self) -> &str {
        comm_str(&self.hdr.comm)
    }
}

/// Flag accessors for connection records.
pub trait ConnEventExt {
    /// The connection existed before the tracer started.
    fn midstream(&self) -> bool;
}

impl ConnEventExt for ConnEvent {
    fn midstream(&self) -> bool {
        self.flags & flags::MIDSTREAM != 0
    }
}

/// The thread name without its NUL padding.
pub fn comm_str(comm: &[u8; 16]) -> &str {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    std::str::from_utf8(&comm[..end]).unwrap_or("?")
}

/// Local and remote socket addresses of a tuple.
pub fn endpoints(t: &ConnTuple) -> (SocketAddr, SocketAddr) {
    let ip = |a: &[u8; 16]| -> IpAddr {
        if t.family == libc::AF_INET6 as u16 {
            IpAddr::V6(Ipv6Addr::from(*a))
        } else {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        }
    };
    (
        SocketAddr::new(ip(&t.laddr), t.lport),
        SocketAddr::new(ip(&t.raddr), t.rport),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(chunk_len: u32) -> DataHeader {
        DataHeader {
            kind: kind::DATA,
            direction: Direction::Ingress as u8,
            syscall: Syscall::Recvmsg as u8,
            flags: flags::TRUNCATED,
            fd: 7,
            pid_tgid: (42 << 32) | 43,
            conn_id: 1,
            conn_key: 2,
            cgroup_id: 3,
            ts_enter_ns: 4,
            ts_exit_ns: 5,
            stream_offset: 100,
            syscall_len: 10,
            captured_len: 8,
            chunk_offset: 4,
            chunk_len,
            comm: *b"client\0\0\0\0\0\0\0\0\0\0",
            tuple: ConnTuple::default(),
        }
    }

    fn bytes_of(h: &DataHeader, payload: &[u8], pad: usize) -> Vec<u8> {
        // SAFETY: DataHeader is repr(C) plain data without padding.
        let raw = unsafe {
            std::slice::from_raw_parts((h as *const DataHeader).cast::<u8>(), DATA_HEADER_SIZE)
        };
        let mut v = raw.to_vec();
        v.extend_from_slice(payload);
        v.extend(std::iter::repeat_n(0, pad));
        v
    }

    #[test]
    fn data_record_round_trip_ignores_ring_padding() {
        let bytes = bytes_of(&header(4), b"abcd", 4);
        let RingRecord::Data(d) = RingRecord::parse(&bytes).unwrap() else {
            panic!("not data")
        };
        assert_eq!(d.payload, b"abcd");
        assert_eq!((d.tgid(), d.tid(), d.position()), (42, 43, 104));
        assert!(d.truncated() && !d.sniffing());
        assert_eq!(
            (d.direction(), d.syscall(), d.comm()),
            (Direction::Ingress, Some(Syscall::Recvmsg), "client")
        );
    }

    /// A run: `skipped` (u32), the bytes' length (u16), the bytes.
    fn run(skipped: u32, bytes: &[u8]) -> Vec<u8> {
        let mut v = skipped.to_le_bytes().to_vec();
        v.extend((bytes.len() as u16).to_le_bytes());
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn runs_place_their_bytes_after_what_was_skipped() {
        let payload = [run(0, b"head"), run(1000, b"tail"), run(7, b"")].concat();
        let mut h = header(payload.len() as u32);
        h.flags |= flags::RUNS;
        let bytes = bytes_of(&h, &payload, 2);
        let RingRecord::Data(d) = RingRecord::parse(&bytes).unwrap() else {
            panic!("not data")
        };
        let runs: Vec<_> = d.runs().map(Result::unwrap).collect();
        let at = |pos, skipped, bytes| Run {
            pos,
            skipped,
            bytes,
        };
        assert_eq!(
            runs,
            [
                at(104, 0, &b"head"[..]),
                at(1108, 1000, &b"tail"[..]),
                at(1119, 7, &b""[..])
            ]
        );
        // A plain record is one run of its payload, even an empty one.
        let plain = bytes_of(&header(0), b"", 0);
        let RingRecord::Data(d) = RingRecord::parse(&plain).unwrap() else {
            panic!("not data")
        };
        assert_eq!(d.runs().count(), 1);
        // Cut runs end the record with an error, never a panic or a read past it.
        for cut in 1..payload.len() {
            let mut h = header(cut as u32);
            h.flags |= flags::RUNS;
            let bytes = bytes_of(&h, &payload[..cut], 0);
            let RingRecord::Data(d) = RingRecord::parse(&bytes).unwrap() else {
                panic!("not data")
            };
            let last = d.runs().last().unwrap();
            let whole_runs = [0, 10, 20, 26];
            assert_eq!(last.is_err(), !whole_runs.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_records_are_errors() {
        let bytes = bytes_of(&header(9), b"abcd", 0);
        assert_eq!(
            RingRecord::parse(&bytes).unwrap_err(),
            RingRecordError::BadLength {
                announced: 9,
                carried: 4
            }
        );
        assert_eq!(
            RingRecord::parse(&[kind::DATA; 10]).unwrap_err(),
            RingRecordError::Short(10)
        );
        assert_eq!(
            RingRecord::parse(&[99; 200]).unwrap_err(),
            RingRecordError::UnknownKind(99)
        );
        assert_eq!(
            RingRecord::parse(&[]).unwrap_err(),
            RingRecordError::Short(0)
        );
        assert_eq!(
            RingRecord::parse(&[kind::CLOSE; 3]).unwrap_err(),
            RingRecordError::Short(3)
        );
    }

    #[test]
    fn endpoints_render_both_families() {
        let mut t = ConnTuple {
            family: libc::AF_INET as u16,
            lport: 5000,
            rport: 9092,
            ..Default::default()
        };
        t.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let (l, r) = endpoints(&t);
        assert_eq!(
            (l.to_string(), r.to_string()),
            ("127.0.0.1:5000".into(), "10.1.2.3:9092".into())
        );
        t.family = libc::AF_INET6 as u16;
        t.raddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(endpoints(&t).1.to_string(), "[::1]:9092");
    }
}
