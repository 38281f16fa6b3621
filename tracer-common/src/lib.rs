//! Types shared by the eBPF programs (`tracer-ebpf`) and the daemon (`tracer`).
//!
//! Every type here is `#[repr(C)]` and crosses the kernel/user boundary as raw bytes (ring-buffer
//! records, map keys and values, the read-only `CONFIG` global), so a field added here changes
//! both sides at once. Integers are in host byte order unless a name says otherwise.
#![no_std]
// The skim rule's index barrier (`skim::opaque`) is an asm statement on the bpf target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

/// Payload bytes carried by one ring-buffer data record at most. A syscall that moved more is split
/// into several records, each naming its offset, so userspace rebuilds the exact stream. The
/// per-CPU staging buffer is twice this (see tracer-ebpf), and per-CPU map values are capped at
/// 32 KiB by the kernel.
pub const CHUNK_SIZE: usize = 8 * 1024;

/// Connections the kernel's `CONNS` table holds by default (userspace sets the size at load,
/// `--kernel-connections`).
pub const DEFAULT_KERNEL_CONNECTIONS: u32 = 65536;

/// A record wakes the daemon only if it was last woken this long ago, or the ring buffer holds
/// more than `Config::wake_bytes`; the daemon looks again this long after every read that found
/// records, so a record that woke nobody waits at most this long. At a steady load that is
/// about a hundred wake-ups a second instead of one per record, and an idle daemon sleeps.
/// (50 ms cut the daemon's share at 10k records/s from 2.2% to 1.4% of a core, but in two of
/// three saturated benchmarks the first traced run lost records to a full ring: not kept. 20 ms
/// cut it from 1.87% to 1.53%, but 4 of 21 saturated traced runs lost 967 to 2,901 records to a
/// full ring, against 3 of 21 losing 967 each at 10 ms in the same hour: not kept either.)
pub const WAKE_INTERVAL_NS: u64 = 10_000_000;

/// Past `Config::wake_bytes`, records wake the daemon at most this often: each forced wake-up
/// is an interrupt inside the traced process's syscall, and a daemon behind the mark is usually
/// awake already. Short enough that the rest of the ring outlasts it at loopback rates.
pub const MARK_WAKE_SPACING_NS: u64 = 1_000_000;

/// Messages of one `sendmmsg`/`recvmmsg` that are copied; the rest are reported as truncated.
pub const MAX_MMSG: u32 = 16;
/// iovecs of one message that are walked (the kernel's own limit, UIO_MAXIOV).
pub const MAX_IOV: u32 = 1024;

/// `EventHeader::kind` values.
pub mod kind {
    /// A [`DataHeader`](super::DataHeader) followed by `chunk_len` payload bytes.
    pub const DATA: u8 = 1;
    /// A [`ConnEvent`](super::ConnEvent): a tracked connection was established or first seen.
    pub const OPEN: u8 = 2;
    /// A [`ConnEvent`](super::ConnEvent): a tracked connection was closed.
    pub const CLOSE: u8 = 3;
    /// A [`ConnEvent`](super::ConnEvent): a connection turned out to be TLS and its plaintext
    /// is read from the TLS library from now on. The event names the connection as it was
    /// (its ciphertext so far is of no use); an [`OPEN`] with a new `conn_id` and
    /// [`flags::TLS`](super::flags::TLS) follows, whose streams are the plaintext.
    pub const TLS: u8 = 4;
    /// A [`ConnEvent`](super::ConnEvent) with only `pid_tgid` set: a traced process ran a new
    /// program (`execve`), whose TLS library may be worth probing before it connects.
    pub const EXEC: u8 = 5;
}

/// Direction of a data record, seen from the process that made the syscall.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the process sent.
    Egress = 0,
    /// Bytes the process received.
    Ingress = 1,
}

impl Direction {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Egress),
            1 => Some(Self::Ingress),
            _ => None,
        }
    }
}

/// The syscall that moved the bytes (or, for [`Syscall::Connect`]..., set up the connection).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Write = 1,
    Writev = 2,
    Sendto = 3,
    Sendmsg = 4,
    Sendmmsg = 5,
    Read = 6,
    Readv = 7,
    Recvfrom = 8,
    Recvmsg = 9,
    Recvmmsg = 10,
    Connect = 11,
    Accept = 12,
    Bind = 13,
    /// Plaintext handed to, or returned by, the TLS library (`SSL_write`/`SSL_write_ex`,
    /// `SSL_read`/`SSL_read_ex`), read by uprobes.
    SslWrite = 14,
    SslRead = 15,
}

impl Syscall {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Write,
            2 => Self::Writev,
            3 => Self::Sendto,
            4 => Self::Sendmsg,
            5 => Self::Sendmmsg,
            6 => Self::Read,
            7 => Self::Readv,
            8 => Self::Recvfrom,
            9 => Self::Recvmsg,
            10 => Self::Recvmmsg,
            11 => Self::Connect,
            12 => Self::Accept,
            13 => Self::Bind,
            14 => Self::SslWrite,
            15 => Self::SslRead,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Writev => "writev",
            Self::Sendto => "sendto",
            Self::Sendmsg => "sendmsg",
            Self::Sendmmsg => "sendmmsg",
            Self::Read => "read",
            Self::Readv => "readv",
            Self::Recvfrom => "recvfrom",
            Self::Recvmsg => "recvmsg",
            Self::Recvmmsg => "recvmmsg",
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Bind => "bind",
            Self::SslWrite => "SSL_write",
            Self::SslRead => "SSL_read",
        }
    }
}

/// `DataHeader::flags` and `ConnEvent::flags` bits.
pub mod flags {
    /// The syscall moved more than `Config::max_bytes_per_syscall` (or the mmsg/iov walk limits):
    /// only `captured_len` of `syscall_len` bytes are sent.
    pub const TRUNCATED: u8 = 1;
    /// The connection is on a port outside the filter and is being sniffed: userspace decides
    /// whether it is Kafka and answers through the `VERDICTS` map.
    pub const SNIFF: u8 = 2;
    /// The connection was first seen mid-stream (it existed before the tracer started).
    pub const MIDSTREAM: u8 = 4;
    /// The connection's streams are TLS plaintext, read from the TLS library.
    pub const TLS: u8 = 8;
    /// The connection's first bytes were a TLS handshake and no TLS library call has been tied
    /// to it yet: its ciphertext is not copied (counted instead).
    pub const TLS_CIPHERTEXT: u8 = 16;
    /// The payload is runs (see [`skim`](crate::skim)): each the bytes skipped before it on
    /// purpose (`u32`, little-endian), the bytes copied (`u16`) and those bytes. The record
    /// covers the stream from `chunk_offset` for the sum of both.
    pub const RUNS: u8 = 32;
}

/// TCP connection endpoints, seen from the traced process. IPv4 addresses use the first four
/// bytes of `laddr`/`raddr`. An address unknown to the capture (fd mode, before /proc is read)
/// is all zeroes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnTuple {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// Header of a data record. The payload follows it in the same ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    /// Always [`kind::DATA`].
    pub kind: u8,
    /// A [`Direction`].
    pub direction: u8,
    /// A [`Syscall`].
    pub syscall: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// The file descriptor the syscall used.
    pub fd: i32,
    /// `bpf_get_current_pid_tgid()`: tgid (process id) in the high half, thread id in the low half.
    pub pid_tgid: u64,
    /// Unique id of the connection for the lifetime of the capture (never reused).
    pub conn_id: u64,
    /// Key of the connection in the `CONNS` map: the `struct sock` address in sock mode,
    /// `tgid << 32 | fd` in fd mode. Userspace writes sniff verdicts under this key.
    pub conn_key: u64,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at syscall entry and exit.
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    /// Position, in this direction's byte stream, of the syscall's first byte. Consecutive
    /// syscalls on a connection have consecutive offsets, so any gap (ring buffer full, read
    /// failure, truncation) is visible to userspace.
    pub stream_offset: u64,
    /// Bytes the syscall transferred (its return value, or the sum over an mmsg vector).
    pub syscall_len: u32,
    /// Bytes of the syscall the capture copies (`<= syscall_len`).
    pub captured_len: u32,
    /// Offset of this record's payload within the syscall's bytes.
    pub chunk_offset: u32,
    /// Payload bytes that follow this header.
    pub chunk_len: u32,
    /// Thread name (`comm`), NUL-padded.
    pub comm: [u8; 16],
    pub tuple: ConnTuple,
}

pub const DATA_HEADER_SIZE: usize = core::mem::size_of::<DataHeader>();

/// A connection lifecycle record ([`kind::OPEN`] or [`kind::CLOSE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u8,
    /// [`flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// The file descriptor, where known (fd mode), else -1.
    pub fd: i32,
    /// Task that caused the event. Socket state changes can run in softirq context, where this is
    /// whatever task happened to run: data records carry the reliable owner.
    pub pid_tgid: u64,
    pub conn_id: u64,
    pub conn_key: u64,
    pub ts_ns: u64,
    /// Total bytes sent and received on the connection while tracked (CLOSE only).
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tuple: ConnTuple,
}

/// Value of the `CONNS` map: one tracked (or sniffed) TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnState {
    pub conn_id: u64,
    /// Next stream offsets (bytes sent / received so far); updated atomically by the kernel.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tuple: ConnTuple,
    /// One of the [`track`] values.
    pub track: u8,
    /// [`flags`] bits reported on every record of the connection.
    pub flags: u8,
    /// Sock mode: the `(tgid, fd)` of the connection is in `FD_SOCKS` (for TLS libraries that
    /// name their connection by fd).
    pub fd_noted: u8,
    /// 1 + the [`Direction`] of the connection's requests when its streams are walked for
    /// the selective copy ([`skim`]; the other direction carries the responses), else 0.
    pub skim: u8,
    pub _pad: [u8; 4],
}

/// `ConnState::track` and `VERDICTS` values.
pub mod track {
    /// Capture every byte.
    pub const FULL: u8 = 1;
    /// Capture the first `Config::sniff_bytes` of each direction until userspace decides.
    pub const SNIFF: u8 = 2;
    /// Userspace decided this is not Kafka: stop copying.
    pub const IGNORE: u8 = 3;
}

/// Whether a stream that starts with `type`, `major`, `minor` and the 16-bit `len` starts with
/// a TLS record: a handshake (a client's first bytes), or, on a connection first seen
/// mid-stream, application data too. No Kafka stream starts so: its size prefix would announce
/// hundreds of megabytes. The one rule for the kernel, which stops copying the ciphertext, and
/// the daemon, which tells the user about connections it cannot read.
#[inline(always)]
pub const fn tls_record(r#type: u8, major: u8, minor: u8, len: u16, midstream: bool) -> bool {
    const HANDSHAKE: u8 = 22;
    const APPLICATION_DATA: u8 = 23;
    // A record holds at most 2^14 bytes of plaintext plus the cipher's expansion.
    let sane = len > 0 && len <= (1 << 14) + 2048;
    major == 3
        && minor <= 4
        && sane
        && (r#type == HANDSHAKE || (midstream && r#type == APPLICATION_DATA))
}

/// Field offsets in `struct sock_common`, read from the running kernel's BTF by userspace.
/// Used in sock mode to learn the endpoints of connections that existed before the tracer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    pub daddr: u16,
    pub rcv_saddr: u16,
    pub dport: u16,
    pub num: u16,
    pub family: u16,
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
    /// 0 when the kernel was built without IPv6 (the two v6 offsets are then unused).
    pub has_v6: u16,
}

/// How connections are identified; see `Config::mode`.
pub mod mode {
    /// `sock:sock_send_length`/`sock_recv_length` carry each socket call's `struct sock` and
    /// byte count, and the copy runs there (kernels 6.3 on); `sock:inet_sock_set_state` gives
    /// opens and closes.
    pub const SOCK: u32 = 0;
    /// Connections keyed by (tgid, fd), learnt from connect/accept/bind/close syscalls and
    /// from /proc at startup: for kernels without the sock length tracepoints.
    pub const FD: u32 = 1;
}

/// The eBPF programs' read-only configuration (the `CONFIG` global), set by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// A [`mode`] value.
    pub mode: u32,
    /// The capture's own process, never traced (its own Kafka requests, its exports).
    pub self_tgid: u32,
    /// Non-zero: only connections with a remote port in `PORTS` (a client's connection to a
    /// broker) are captured in full.
    pub filter_ports: u32,
    /// Non-zero: connections with a local port in `PORTS` (this host is the broker) are too.
    pub server_side: u32,
    /// Non-zero: only processes in `PIDS` are traced.
    pub filter_pids: u32,
    /// Non-zero: only cgroups in `CGROUPS` are traced.
    pub filter_cgroups: u32,
    /// Non-zero: connections outside the port filter are sniffed (see [`track::SNIFF`]).
    pub detect: u32,
    /// Bytes of each direction sent to userspace for a sniffed connection before a verdict.
    pub sniff_bytes: u32,
    /// Cap on bytes copied from one syscall; the rest is counted as truncated.
    pub max_bytes_per_syscall: u32,
    /// Unread bytes in the ring buffer past which records wake the daemon every
    /// [`MARK_WAKE_SPACING_NS`] instead of every [`WAKE_INTERVAL_NS`].
    pub wake_bytes: u32,
    /// Non-zero: client connections' produce requests are walked and what the tracer does not
    /// read is skipped, under this [`skim::policy`]; zero copies every byte.
    pub skim: u32,
    pub sock: SockOffsets,
}

impl Config {
    /// How a connection with endpoints `t` is captured (a [`track`] value), or `None` to
    /// ignore it; `listed` says whether a port is in `PORTS`. The one rule for connections the
    /// kernel sees open and for those userspace finds in `/proc` at start.
    #[inline(always)]
    pub fn classify(&self, t: &ConnTuple, listed: impl Fn(u16) -> bool) -> Option<u8> {
        if self.filter_ports == 0 || listed(t.rport) {
            Some(track::FULL)
        } else if listed(t.lport) {
            // The broker's end: spans and metrics come from clients' ends, so copying it would
            // only cost (on a broker node, all of the broker's traffic).
            (self.server_side != 0).then_some(track::FULL)
        } else if self.detect != 0 {
            Some(track::SNIFF)
        } else {
            None
        }
    }
}

/// Which direction of a connection carries Kafka requests, from which end's port is a broker
/// port: the client's end sends them, the broker's end receives them. The one rule for the
/// kernel's walk and the daemon's pairing.
#[inline(always)]
pub fn request_direction(t: &ConnTuple, listed: impl Fn(u16) -> bool) -> Option<Direction> {
    if listed(t.rport) {
        Some(Direction::Egress)
    } else if listed(t.lport) {
        Some(Direction::Ingress)
    } else {
        None
    }
}

/// Indexes of the per-CPU `COUNTERS` array: everything the kernel side loses or skips.
pub mod counter {
    /// Data records that did not fit in the ring buffer (consumer too slow or ring too small).
    pub const RINGBUF_FULL_RECORDS: u32 = 0;
    /// Payload bytes lost with them (including the rest of the syscall after the first failure).
    pub const RINGBUF_FULL_BYTES: u32 = 1;
    /// Connection open/close records that did not fit in the ring buffer.
    pub const RINGBUF_FULL_CONN_EVENTS: u32 = 2;
    /// Syscalls larger than the per-syscall cap (or the mmsg/iov walk limits).
    pub const TRUNCATED_SYSCALLS: u32 = 3;
    /// Bytes past the cap, not copied.
    pub const TRUNCATED_BYTES: u32 = 4;
    /// `bpf_probe_read_user` failures (page not resident); those bytes are not sent.
    pub const READ_FAILURE_BYTES: u32 = 5;
    /// Syscall argument stash (`ARGS`) insertions that failed.
    pub const ARGS_FULL: u32 = 6;
    /// Connections that could not be added to `CONNS`.
    pub const CONNS_FULL: u32 = 7;
    /// Data records sent to userspace.
    pub const RECORDS: u32 = 8;
    /// Payload bytes sent to userspace.
    pub const BYTES: u32 = 9;
    /// Bytes of sniffed connections not sent because the sniff budget was spent.
    pub const SNIFF_SKIPPED_BYTES: u32 = 10;
    /// `recv*(MSG_PEEK)` calls skipped (the bytes are read again by a later call).
    pub const PEEKS: u32 = 11;
    /// TLS calls whose plaintext was copied.
    pub const TLS_CALLS: u32 = 12;
    /// TLS calls that could not be tied to a connection (no socket syscall inside the call and
    /// no fd set: memory BIOs), and their plaintext bytes, not copied.
    pub const TLS_UNTIED_CALLS: u32 = 13;
    pub const TLS_UNTIED_BYTES: u32 = 14;
    /// Ciphertext of TLS connections, not copied (their plaintext is, where a TLS library
    /// call was tied to them).
    pub const TLS_CIPHERTEXT_BYTES: u32 = 15;
    /// TLS call entries that could not be stashed (`TLS_CALLS` map full).
    pub const TLS_ARGS_FULL: u32 = 16;
    /// Bytes not copied on purpose: record values (or records) the selective copy skipped
    /// ([`skim`]).
    pub const SKIPPED_BYTES: u32 = 17;
    /// Produce requests the walk could not follow, copied whole from where it stopped.
    pub const SKIM_UNPARSED_FRAMES: u32 = 18;
    /// Streams whose walk lost the framing (or a byte of the stream): copied whole from then.
    pub const SKIM_STOPPED_STREAMS: u32 = 19;
    /// Bytes a traced connection moved in calls whose buffers cannot be read in sock mode
    /// (sendfile, splice, io_uring, the mmsg calls): a gap in the stream.
    pub const UNCOPYABLE_BYTES: u32 = 20;
    pub const COUNT: u32 = 21;
}

/// A TLS library call between its entry and its return (`TLS_CALLS`, keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCall {
    /// The library's connection object (`SSL *`).
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `SSL_*_ex`: where the library writes the byte count; 0 for calls that return it.
    pub len_ptr: u64,
    pub ts_enter_ns: u64,
    /// A [`Direction`].
    pub direction: u8,
    pub _pad: [u8; 7],
}

/// A pointer in one process (a TLS library's connection object): pointers are per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcPtr {
    pub tgid: u32,
    pub _pad: u32,
    pub ptr: u64,
}

/// Stash of a syscall's arguments between its entry and exit (`ARGS`, keyed by pid_tgid);
/// `syscall` 0 once the exit has taken them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallArgs {
    /// `CONNS` key once the syscall is known to be on a tracked TCP socket, else 0.
    pub conn_key: u64,
    /// Buffer, iovec array, msghdr, mmsghdr array or sockaddr pointer.
    pub buf: u64,
    /// Length, iovec count, mmsg count, or (accept) the addrlen pointer.
    pub count: u64,
    pub ts_enter_ns: u64,
    pub fd: i32,
    /// A [`Syscall`].
    pub syscall: u8,
    /// A [`Direction`].
    pub direction: u8,
    pub _pad: [u8; 2],
}

pub mod skim;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data `#[repr(C)]` structs without padding holes that matter.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ConnState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of [`Config::classify`]: (ports filtered, server side, detect, remote port
    /// listed, local port listed) -> how.
    #[test]
    fn classification_cases() {
        let full = Some(track::FULL);
        let sniff = Some(track::SNIFF);
        let cases = [
            ((false, false, false, false, false), full),
            ((true, false, false, true, false), full),
            ((true, false, true, true, true), full),
            ((true, false, false, false, true), None),
            ((true, true, false, false, true), full),
            ((true, false, true, false, true), None),
            ((true, false, true, false, false), sniff),
            ((true, false, false, false, false), None),
        ];
        for ((filter, server, detect, remote, local), want) in cases {
            let cfg = Config {
                filter_ports: filter.into(),
                server_side: server.into(),
                detect: detect.into(),
                ..Default::default()
            };
            let t = ConnTuple {
                rport: 9092,
                lport: 40000,
                ..Default::default()
            };
            let listed = |p: u16| (p == 9092 && remote) || (p == 40000 && local);
            assert_eq!(
                cfg.classify(&t, listed),
                want,
                "{filter} {server} {detect} {remote} {local}"
            );
        }
    }
}
