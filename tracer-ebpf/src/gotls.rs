//! TLS plaintext from Go's `crypto/tls` (franz-go, sarama, any Go client): uprobes at the entry
//! of `(*Conn).Write` and `(*Conn).Read` and at every return instruction of both (found by
//! disassembly in the daemon; never uretprobes, which break when Go moves a goroutine's
//! stack). Go's register ABI (1.17 on) passes the receiver in RAX and the buffer in RBX (RCX
//! its length) and returns the count in RAX; the running goroutine is in R14, which pairs an
//! entry with its return even when the goroutine moved to another thread in between.
//!
//! The connection comes from the `tls.Conn` itself: its `net.Conn` is a `*net.TCPConn`, whose
//! `netFD` holds the socket's fd (`poll.FD.Sysfd`, offset 16, the same from Go 1.9 to today).
//! An fd is trusted only if it names a traced connection whose bytes were TLS.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::{ProcPtr, TlsCall};

use super::*;

/// Go TLS calls between entry and return, by (process, goroutine).
#[map]
static GO_CALLS: LruHashMap<ProcPtr, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// `tls.Conn.conn` (a `net.Conn` interface: itab, data) is the struct's first field.
const CONN_DATA: u64 = 8;
/// `netFD.pfd.Sysfd`, after the 16-byte `fdMutex`.
const NETFD_SYSFD: u64 = 16;

/// The registers of the probed instruction.
#[inline(always)]
fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    // SAFETY: the context of a uprobe program points at the task's saved registers.
    unsafe { &*ctx.regs }
}

fn enter(ctx: &ProbeContext, dir: Direction) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !tls::process_traced(tgid) {
        return 0;
    }
    let r = regs(ctx);
    let conn = r.rax;
    let obj = ProcPtr {
        tgid,
        _pad: 0,
        ptr: conn,
    };
    if tls::tied(&obj).is_none()
        && let Some(key) = socket_of(tgid, conn)
    {
        tls::tie(&obj, key);
    }
    let goroutine = ProcPtr {
        tgid,
        _pad: 0,
        ptr: r.r14,
    };
    let call = TlsCall {
        ssl: conn,
        buf: r.rbx,
        len_ptr: 0,
        ts_enter_ns: now(),
        direction: dir as u8,
        _pad: [0; 7],
    };
    if GO_CALLS.insert(&goroutine, &call, 0).is_err() {
        count(counter::TLS_ARGS_FULL, 1);
    }
    0
}

/// The traced TLS connection a `*tls.Conn` reads and writes, from its socket's fd.
#[inline(always)]
fn socket_of(tgid: u32, conn: u64) -> Option<u64> {
    // SAFETY: user pointers, checked by the helper.
    let fd = unsafe {
        let data: u64 = bpf_probe_read_user((conn + CONN_DATA) as *const u64).ok()?;
        let netfd: u64 = bpf_probe_read_user(data as *const u64).ok()?;
        bpf_probe_read_user((netfd + NETFD_SYSFD) as *const i64).ok()?
    };
    if !(0..1 << 24).contains(&fd) {
        return None;
    }
    let key = tls::connection_of_fd(tgid, fd as i32)?;
    let st = unsafe { CONNS.get(&key) }?;
    (st.flags & (flags::TLS | flags::TLS_CIPHERTEXT) != 0).then_some(key)
}

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Egress)
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Ingress)
}

/// At a return instruction of `Write` or `Read`: RAX holds the byte count.
#[uprobe]
pub fn go_tls_ret(ctx: ProbeContext) -> u32 {
    ret(&ctx, copy::Walker::Loop)
}

/// The same, for kernels without `bpf_loop`.
#[uprobe]
pub fn go_tls_ret_bounded(ctx: ProbeContext) -> u32 {
    ret(&ctx, copy::Walker::Bounded(&copy::COPY_MORE_PROBE))
}

#[inline(always)]
fn ret(ctx: &ProbeContext, walker: copy::Walker) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let r = regs(ctx);
    let goroutine = ProcPtr {
        tgid,
        _pad: 0,
        ptr: r.r14,
    };
    let Some(call) = (unsafe { GO_CALLS.get(&goroutine) }).copied() else {
        return 0;
    };
    let _ = GO_CALLS.remove(&goroutine);
    let n = r.rax as i64;
    if n <= 0 {
        return 0;
    }
    let obj = ProcPtr {
        tgid,
        _pad: 0,
        ptr: call.ssl,
    };
    tls::plaintext(ctx, tls::tied(&obj), &call, n as u64, walker);
    0
}
