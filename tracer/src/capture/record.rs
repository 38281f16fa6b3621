//! Typed views of the ring-buffer records written by the eBPF programs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{
    ConnEvent, ConnTuple, DATA_HEADER_SIZE, DataHeader, Direction, Syscall, flags, kind,
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

impl DataRecord<'_> {
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

    /// The record starts its stream with a TLS record: the connection's bytes are ciphertext
    /// (the kernel copies no more of them).
    pub fn starts_ciphertext(&self) -> bool {
        let p = self.payload;
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
