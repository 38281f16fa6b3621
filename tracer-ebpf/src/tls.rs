//! TLS plaintext from OpenSSL (and the libraries that carry its symbols: a statically linked
//! copy inside librdkafka, say), read by uprobes on `SSL_write`, `SSL_write_ex`, `SSL_read` and
//! `SSL_read_ex` at entry and return, and tied to the connection it travels on:
//! - by the socket syscall the call makes on the same thread (the syscall tracepoints see it and
//!   call [`nested`]), which marks the connection as TLS: its ciphertext is no longer copied;
//! - by `SSL_set_fd`, where the library names the socket itself, for calls that make no
//!   syscall (a read served from the library's buffer).
//!
//! The plaintext goes through the same copy as a syscall's bytes (`copy::exit_data`), on the
//! connection's streams: at the tie the connection takes a new id and its streams start again
//! from zero, so the daemon sees a fresh plaintext connection. Calls that cannot be tied
//! (memory BIOs, as asyncio uses) are counted.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::ConnEvent;

use crate::copy::Walker;
use tracer_common::{ProcPtr, TlsCall};

use super::*;

/// TLS calls between entry and return, by pid_tgid. LRU: a thread can die inside a call.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);
/// The connection (`CONNS` key) of each TLS connection object seen in a call with a syscall.
#[map]
static SSL_CONNS: LruHashMap<ProcPtr, u64> = LruHashMap::with_max_entries(65536, 0);
/// The fd each TLS connection object was given by `SSL_set_fd`.
#[map]
static SSL_FDS: LruHashMap<ProcPtr, i32> = LruHashMap::with_max_entries(65536, 0);
/// Sock mode: `tgid << 32 | fd` -> `struct sock` of the TCP connections seen, so that an fd a
/// TLS library names leads to its connection.
#[map]
pub(crate) static FD_SOCKS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);
/// Processes with a traced connection, noted by the kernel at the connection's first syscall
/// (before any TLS call on it) and by the daemon for those that predate it. The probes are on
/// every process that maps a probed library; the others return at once.
#[map]
pub(crate) static KAFKA_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// Notes that process `tgid` has a traced connection.
#[inline(always)]
pub(crate) fn note_process(tgid: u32) {
    let _ = KAFKA_TGIDS.insert(&tgid, &1, 0);
}

fn enter(ctx: &ProbeContext, dir: Direction, ex: bool) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !process_traced((id >> 32) as u32) {
        return 0;
    }
    let call = TlsCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        len_ptr: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        ts_enter_ns: now(),
        direction: dir as u8,
        _pad: [0; 7],
    };
    if TLS_CALLS.insert(&id, &call, 0).is_err() {
        count(counter::TLS_ARGS_FULL, 1);
    }
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Egress, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Egress, true)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Ingress, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Ingress, true)
}

/// `SSL_write`/`SSL_read` return the byte count (or <= 0) as an `int`: the upper half of the
/// register is not part of it.
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    ret(&ctx, Walker::Loop)
}

/// The same, for kernels without `bpf_loop`.
#[uretprobe]
pub fn ssl_ret_bounded(ctx: RetProbeContext) -> u32 {
    ret(&ctx, Walker::Bounded(&copy::COPY_MORE_PROBE))
}

#[inline(always)]
fn ret(ctx: &RetProbeContext, walker: Walker) -> u32 {
    let ret = ctx.ret::<u64>() as i32;
    leave(ctx, if ret > 0 { ret as u64 } else { 0 }, false, walker);
    0
}

/// `SSL_write_ex`/`SSL_read_ex` return 1 (an `int`) and write the count through their last
/// argument.
#[uretprobe]
pub fn ssl_ex_ret(ctx: RetProbeContext) -> u32 {
    ex_ret(&ctx, Walker::Loop)
}

/// The same, for kernels without `bpf_loop`.
#[uretprobe]
pub fn ssl_ex_ret_bounded(ctx: RetProbeContext) -> u32 {
    ex_ret(&ctx, Walker::Bounded(&copy::COPY_MORE_PROBE))
}

#[inline(always)]
fn ex_ret(ctx: &RetProbeContext, walker: Walker) -> u32 {
    let ret = ctx.ret::<u64>() as i32;
    leave(ctx, if ret == 1 { 1 } else { 0 }, true, walker);
    0
}

/// `SSL_set_fd(ssl, fd)`.
#[uprobe]
pub fn ssl_set_fd(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !process_traced(tgid) {
        return 0;
    }
    let key = ProcPtr {
        tgid: (id >> 32) as u32,
        _pad: 0,
        ptr: ctx.arg::<u64>(0).unwrap_or(0),
    };
    let fd = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as i32;
    let _ = SSL_FDS.insert(&key, &fd, 0);
    0
}

/// A TLS call returns having moved `n` bytes (for `_ex` calls, `n` is 1 for success and the
/// count is read from the call's length pointer): its plaintext is copied on its connection.
#[inline(always)]
fn leave<C: aya_ebpf::EbpfContext>(ctx: &C, n: u64, ex: bool, walker: Walker) {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(&id);
    let n = if ex && n == 1 {
        // SAFETY: user pointer, checked by the helper.
        unsafe { bpf_probe_read_user(call.len_ptr as *const u64) }.unwrap_or(0)
    } else {
        n
    };
    if n == 0 {
        return;
    }
    let obj = ProcPtr {
        tgid: (id >> 32) as u32,
        _pad: 0,
        ptr: call.ssl,
    };
    plaintext(ctx, connection_of(&obj), &call, n, walker);
}

/// A TLS call `call` on connection `key` moved `n` bytes of plaintext: they are copied on the
/// connection's stream (which becomes a TLS connection if it was not one yet). Without a
/// connection they are counted.
#[inline(always)]
pub(crate) fn plaintext<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    key: Option<u64>,
    call: &TlsCall,
    n: u64,
    walker: Walker,
) {
    let Some(key) = key else {
        count(counter::TLS_UNTIED_CALLS, 1);
        count(counter::TLS_UNTIED_BYTES, n);
        return;
    };
    let Some(conn) = CONNS.get_ptr_mut(&key) else {
        count(counter::TLS_UNTIED_CALLS, 1);
        count(counter::TLS_UNTIED_BYTES, n);
        return;
    };
    // SAFETY: map value pointer, valid for this program run.
    become_tls(ctx, key, unsafe { &mut *conn });
    count(counter::TLS_CALLS, 1);
    let egress = call.direction == Direction::Egress as u8;
    copy::exit_data(
        ctx,
        &SyscallArgs {
            conn_key: key,
            buf: call.buf,
            count: n,
            ts_enter_ns: call.ts_enter_ns,
            fd: -1,
            syscall: if egress {
                Syscall::SslWrite
            } else {
                Syscall::SslRead
            } as u8,
            direction: call.direction,
            _pad: [0; 2],
        },
        n,
        true,
        walker,
    );
}

/// The connection of a TLS connection object: the one a syscall inside one of its calls was
/// on, else the one its `SSL_set_fd` fd names.
#[inline(always)]
fn connection_of(obj: &ProcPtr) -> Option<u64> {
    if let Some(key) = unsafe { SSL_CONNS.get(obj) } {
        return Some(*key);
    }
    let fd = *unsafe { SSL_FDS.get(obj) }?;
    let key = connection_of_fd(obj.tgid, fd)?;
    let _ = SSL_CONNS.insert(obj, &key, 0);
    Some(key)
}

/// The traced connection (`CONNS` key) that process `tgid` knows as `fd`.
#[inline(always)]
pub(crate) fn connection_of_fd(tgid: u32, fd: i32) -> Option<u64> {
    let key = ((tgid as u64) << 32) | fd as u32 as u64;
    if config().mode == mode::FD {
        Some(key)
    } else {
        unsafe { FD_SOCKS.get(&key) }.copied()
    }
}

/// Remembers that TLS connection object `obj` uses connection `key`.
#[inline(always)]
pub(crate) fn tie(obj: &ProcPtr, key: u64) {
    let _ = SSL_CONNS.insert(obj, &key, 0);
}

/// The connection a TLS connection object uses, when it is known.
#[inline(always)]
pub(crate) fn tied(obj: &ProcPtr) -> Option<u64> {
    unsafe { SSL_CONNS.get(obj) }.copied()
}

/// Whether process `tgid` has a traced connection (see [`KAFKA_TGIDS`]) and is traced.
#[inline(always)]
pub(crate) fn process_traced(tgid: u32) -> bool {
    unsafe { KAFKA_TGIDS.get(&tgid) }.is_some() && task_traced(&config(), tgid)
}

/// A syscall of thread `id` was tied to connection `key`: when the thread is inside a TLS
/// call, that call's connection object uses this connection, which is TLS from now on.
#[inline(always)]
pub(crate) fn nested<C: aya_ebpf::EbpfContext>(ctx: &C, id: u64, key: u64) {
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }) else {
        return;
    };
    let obj = ProcPtr {
        tgid: (id >> 32) as u32,
        _pad: 0,
        ptr: call.ssl,
    };
    tie(&obj, key);
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        // SAFETY: map value pointer, valid for this program run.
        become_tls(ctx, key, unsafe { &mut *conn });
    }
}

/// Makes `conn` a TLS connection, once: the daemon is told to drop what it had of it (a
/// [`kind::TLS`] record naming it as it was), and it comes back under a new id with empty
/// streams that carry plaintext. Both streams are marked mid-stream: calls made before the
/// probes were attached are not seen. A sniffed connection is sniffed again, on plaintext.
#[inline(always)]
pub(crate) fn become_tls<C: aya_ebpf::EbpfContext>(ctx: &C, key: u64, conn: &mut ConnState) {
    if conn.flags & flags::TLS != 0 {
        return;
    }
    emit_conn_event(ctx, kind::TLS, key, conn, -1);
    conn.conn_id = next_conn_id();
    conn.tx_bytes = 0;
    conn.rx_bytes = 0;
    conn.flags = (conn.flags & !flags::TLS_CIPHERTEXT) | flags::TLS | flags::MIDSTREAM;
    if conn.track != track::FULL {
        conn.track = track::SNIFF;
        conn.flags |= flags::SNIFF;
        let _ = VERDICTS.remove(&key);
    }
    emit_conn_event(ctx, kind::OPEN, key, conn, -1);
}

/// `sched:sched_process_exec`: a traced process runs a new program. The daemon searches it for
/// TLS libraries at once (a Go program carries its own), before it connects anywhere.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !task_traced(&config(), (id >> 32) as u32) {
        return 0;
    }
    if let Some(mut e) = EVENTS.reserve::<ConnEvent>(0) {
        e.write(ConnEvent {
            kind: kind::EXEC,
            flags: 0,
            _pad: [0; 2],
            fd: -1,
            pid_tgid: id,
            conn_id: 0,
            conn_key: 0,
            ts_ns: now(),
            tx_bytes: 0,
            rx_bytes: 0,
            tuple: ConnTuple::default(),
        });
        // Now: the daemon probes the new program's TLS libraries before its first TLS call.
        e.submit(wake::NOW);
    } else {
        count(counter::RINGBUF_FULL_CONN_EVENTS, 1);
    }
    0
}
