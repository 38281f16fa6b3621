//! Kernel side of kafka-tracer: copies the bytes that processes send and receive on TCP sockets
//! into the `EVENTS` ring buffer, built only on tracepoints (no kprobes, no fentry), so it runs on
//! every kernel that has the syscall tracepoints.
//!
//! The life of one captured syscall:
//! 1. `sys_enter_<call>` stashes the arguments (fd, buffer or iovec/msghdr pointer) in `ARGS`,
//!    keyed by thread.
//! 2. The stash is tied to a TCP connection: in sock mode by `sock:sock_send_length` /
//!    `sock:sock_recv_length`, which fire inside the syscall with the `struct sock`; in fd mode at
//!    entry, by the `(tgid, fd)` that connect/accept/close tracking (and /proc, at startup) put in
//!    `CONNS`.
//! 3. `sys_exit_<call>` learns how many bytes moved, reserves that range of the connection's
//!    directional stream (an atomic add on the stream offset, so any loss shows up as a gap), and
//!    copies the user buffers with `bpf_loop` into records of at most `CHUNK_SIZE` bytes.
//!
//! Nothing is dropped silently: every byte not delivered is counted in `COUNTERS`.
#![no_std]
#![no_main]
// The bpf target has no `AtomicU64`; the intrinsic lowers to BPF's atomic fetch-add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::size_of,
};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_loop,
            bpf_probe_read_user as probe_read_user_raw,
        },
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    CHUNK_SIZE, Config, ConnEvent, ConnState, ConnTuple, DATA_HEADER_SIZE, DataHeader, Direction,
    MAX_IOV, SockOffsets, Syscall, SyscallArgs, counter, flags, kind, mode, track,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: u64 = 2;
const EINPROGRESS: i64 = 115;
const TCP_ESTABLISHED: i32 = 1;
/// Upper bound on `bpf_loop` steps for one syscall: one step per chunk, per iovec and per
/// mmsg message, far above what a capped syscall needs.
const MAX_WALK_STEPS: u32 = 1 << 16;
/// `struct mmsghdr` and `struct user_msghdr` layouts on 64-bit kernels.
const MMSGHDR_SIZE: u64 = 64;
const MMSG_LEN_OFFSET: u64 = 56;
const MSGHDR_IOV_OFFSET: u64 = 16;
const MSGHDR_IOVLEN_OFFSET: u64 = 24;
const IOVEC_SIZE: u64 = 16;

/// Set by the loader (read-only data): mode, filters, caps, `struct sock_common` offsets.
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    mode: mode::SOCK,
    self_tgid: 0,
    filter_ports: 0,
    server_side: 0,
    filter_pids: 0,
    filter_cgroups: 0,
    detect: 0,
    sniff_bytes: 0,
    max_bytes_per_syscall: 0,
    sock: SockOffsets {
        daddr: 0,
        rcv_saddr: 0,
        dport: 0,
        num: 0,
        family: 0,
        v6_daddr: 0,
        v6_rcv_saddr: 0,
        has_v6: 0,
    },
};

/// All records for userspace. Its size is set by the loader (`--ring-buffer-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);
/// Loss and volume counters, indexed by `tracer_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// Per-CPU staging area for data records (too large for the 512-byte stack).
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU counter for connection ids.
#[map]
static NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Syscall arguments between entry and exit, by pid_tgid. LRU: a thread killed inside a
/// syscall never reaches the exit that would remove its entry.
#[map]
static ARGS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(16384, 0);
/// Tracked (or sniffed) connections, by `struct sock` address (sock mode) or `tgid << 32 | fd`.
/// LRU: in fd mode a process that exits without close() leaves its entries behind.
#[map]
static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);
/// Sockets already found to be outside the filter, so the filter is evaluated once per socket.
#[map]
static IGNORED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);
/// Port filter (`--ports`), local or remote port, host byte order.
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);
/// Process filter (`--pid`).
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
/// Cgroup filter (`--cgroup`).
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);
/// Userspace's answer for sniffed connections (`track::FULL` or `track::IGNORE`), by conn key.
#[map]
static VERDICTS: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);
/// fd mode: bound sockets, `tgid << 32 | fd` -> `family << 16 | port`, so that accepted
/// connections learn their local port.
#[map]
static LISTENERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU working memory of one `sys_exit`. The walk state lives here rather than on the stack
/// on purpose: the verifier tracks stack values precisely and would explore every iovec count
/// as a separate state, while map values are opaque to it, so the `bpf_loop` callbacks verify
/// in one pass.
#[repr(C)]
struct Scratch {
    walk: Walk,
    mmsg: MmsgSum,
    /// Immediately followed by `data`: a record is the bytes from `hdr` on.
    hdr: DataHeader,
    /// Twice the chunk size: the copy destination offset is masked to `CHUNK_SIZE - 1` and the
    /// length bounded by `CHUNK_SIZE`, which the verifier can prove in bounds.
    data: [u8; 2 * CHUNK_SIZE],
}

#[inline(always)]
fn config() -> Config {
    // SAFETY: CONFIG is plain data; the volatile read stops the compiler from folding the
    // zero initialiser, since the loader rewrites it.
    unsafe { core::ptr::read_volatile(&raw const CONFIG) }
}

#[inline(always)]
fn count(index: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs on one CPU do not preempt each other.
        unsafe { *c += n };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

fn next_conn_id() -> u64 {
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    match NEXT_ID.get_ptr_mut(0) {
        Some(n) => unsafe {
            *n += 1;
            // Ids from userspace (fd mode, /proc) have the top bit set; these never do.
            ((*n << 12) | (cpu & 0xfff)) & !(1 << 63)
        },
        None => 0,
    }
}

/// Whether the current task is traced at all: not the tracer itself, and inside the pid and
/// cgroup filters when they are set.
#[inline(always)]
fn task_traced(cfg: &Config, tgid: u32) -> bool {
    if tgid == cfg.self_tgid {
        return false;
    }
    if cfg.filter_pids != 0 && unsafe { PIDS.get(&tgid) }.is_none() {
        return false;
    }
    if cfg.filter_cgroups != 0 {
        // SAFETY: helper without arguments.
        let cg = unsafe { bpf_get_current_cgroup_id() };
        if unsafe { CGROUPS.get(&cg) }.is_none() {
            return false;
        }
    }
    true
}

/// How a connection with these endpoints is captured, or `None` to ignore it.
#[inline(always)]
fn classify(cfg: &Config, t: &ConnTuple) -> Option<u8> {
    cfg.classify(t, |port| unsafe { PORTS.get(&port) }.is_some())
}

fn emit_conn_event<C: aya_ebpf::EbpfContext>(ctx: &C, kind: u8, key: u64, st: &ConnState, fd: i32) {
    match EVENTS.reserve::<ConnEvent>(0) {
        Some(mut e) => {
            e.write(ConnEvent {
                kind,
                flags: st.flags,
                _pad: [0; 2],
                fd,
                pid_tgid: bpf_get_current_pid_tgid(),
                conn_id: st.conn_id,
                conn_key: key,
                ts_ns: now(),
                tx_bytes: st.tx_bytes,
                rx_bytes: st.rx_bytes,
                tuple: st.tuple,
            });
            e.submit(0);
        }
        None => {
            count(counter::RINGBUF_FULL_CONN_EVENTS, 1);
            if kind == tracer_common::kind::OPEN {
                warn!(ctx, "ring buffer full: connection open record lost");
            }
        }
    }
}

/// Adds a connection to `CONNS` and reports it. Returns false when the table is full.
fn open_conn<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    key: u64,
    tuple: ConnTuple,
    how: u8,
    extra_flags: u8,
    fd: i32,
) -> bool {
    let sniff = if how == track::SNIFF { flags::SNIFF } else { 0 };
    let st = ConnState {
        conn_id: next_conn_id(),
        tx_bytes: 0,
        rx_bytes: 0,
        tuple,
        track: how,
        flags: extra_flags | sniff,
        _pad: [0; 6],
    };
    if CONNS.insert(&key, &st, 0).is_err() {
        count(counter::CONNS_FULL, 1);
        warn!(ctx, "connection table full: connection not traced");
        return false;
    }
    emit_conn_event(ctx, kind::OPEN, key, &st, fd);
    true
}

fn close_conn<C: aya_ebpf::EbpfContext>(ctx: &C, key: u64, fd: i32) {
    if let Some(st) = unsafe { CONNS.get(&key) } {
        let st = *st;
        emit_conn_event(ctx, kind::CLOSE, key, &st, fd);
        let _ = CONNS.remove(&key);
        let _ = VERDICTS.remove(&key);
    }
}

// ---------------------------------------------------------------------------------------------
// Syscall entry: stash the arguments.
// ---------------------------------------------------------------------------------------------

/// Common entry for the data syscalls. `flags_at` is the tracepoint offset of the `flags`
/// argument of recv calls, to skip MSG_PEEK (those bytes are read again by a later call).
#[inline(always)]
fn enter_data(ctx: &TracePointContext, syscall: Syscall, dir: Direction, flags_at: usize) -> u32 {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !task_traced(&cfg, tgid) {
        return 0;
    }
    // Field layout shared by every data syscall's entry tracepoint: fd@16, pointer@24, count@32.
    let fd = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(u64::MAX) as i32;
    if flags_at != 0 && unsafe { ctx.read_at::<u64>(flags_at) }.unwrap_or(0) & MSG_PEEK != 0 {
        return 0;
    }
    let mut conn_key = 0;
    if cfg.mode == mode::FD {
        let key = ((tgid as u64) << 32) | (fd as u32 as u64);
        if unsafe { CONNS.get(&key) }.is_none() {
            return 0;
        }
        conn_key = key;
    }
    stash(
        id,
        SyscallArgs {
            conn_key,
            buf: unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0),
            count: unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0),
            ts_enter_ns: now(),
            fd,
            syscall: syscall as u8,
            direction: dir as u8,
            _pad: [0; 2],
        },
    );
    0
}

#[inline(always)]
fn stash(id: u64, args: SyscallArgs) {
    if ARGS.insert(&id, &args, 0).is_err() {
        count(counter::ARGS_FULL, 1);
    }
}

macro_rules! data_entry {
    ($name:ident, $syscall:ident, $dir:ident, $flags_at:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            enter_data(&ctx, Syscall::$syscall, Direction::$dir, $flags_at)
        }
    };
}

data_entry!(sys_enter_write, Write, Egress, 0);
data_entry!(sys_enter_writev, Writev, Egress, 0);
data_entry!(sys_enter_sendto, Sendto, Egress, 0);
data_entry!(sys_enter_sendmsg, Sendmsg, Egress, 0);
data_entry!(sys_enter_sendmmsg, Sendmmsg, Egress, 0);
data_entry!(sys_enter_read, Read, Ingress, 0);
data_entry!(sys_enter_readv, Readv, Ingress, 0);
data_entry!(sys_enter_recvfrom, Recvfrom, Ingress, 40);
data_entry!(sys_enter_recvmsg, Recvmsg, Ingress, 32);
data_entry!(sys_enter_recvmmsg, Recvmmsg, Ingress, 40);

// ---------------------------------------------------------------------------------------------
// Sock mode: tie the syscall to its socket, follow connection state.
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    tie_to_sock(&ctx, Direction::Egress);
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    tie_to_sock(&ctx, Direction::Ingress);
    0
}

/// `sock:sock_{send,recv}_length` (sk@8, family@16, protocol@18) fire in the syscall's task,
/// so the stash of the current thread belongs to the socket `sk`.
fn tie_to_sock(ctx: &TracePointContext, dir: Direction) {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = ARGS.get_ptr_mut(&id) else {
        return;
    };
    // SAFETY: map value pointer, valid for this program run.
    let args = unsafe { &mut *args };
    if args.direction != dir as u8 || args.conn_key != 0 {
        return; // another socket call nested in this syscall, or an mmsg already tied
    }
    let proto = unsafe { ctx.read_at::<u16>(18) }.unwrap_or(0);
    let family = unsafe { ctx.read_at::<u16>(16) }.unwrap_or(0);
    if proto != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return;
    }
    let sk = unsafe { ctx.read_at::<u64>(8) }.unwrap_or(0);
    if sk == 0 {
        return;
    }
    if unsafe { CONNS.get(&sk) }.is_none() {
        // First syscall seen on a connection that was established before the tracer started.
        if unsafe { IGNORED.get(&sk) }.is_some() {
            return;
        }
        let cfg = config();
        let Some(tuple) = tuple_from_sock(sk, &cfg.sock) else {
            return;
        };
        match classify(&cfg, &tuple) {
            Some(how) => {
                if !open_conn(ctx, sk, tuple, how, flags::MIDSTREAM, args.fd) {
                    return;
                }
            }
            None => {
                let _ = IGNORED.insert(&sk, &1, 0);
                return;
            }
        }
    }
    args.conn_key = sk;
}

/// Endpoints of a socket read from its `struct sock_common`, at offsets from the kernel's BTF.
fn tuple_from_sock(sk: u64, off: &SockOffsets) -> Option<ConnTuple> {
    // SAFETY: bpf_probe_read_kernel checks the address; sk comes from the tracepoint.
    unsafe {
        let family: u16 = bpf_probe_read_kernel((sk + off.family as u64) as *const u16).ok()?;
        let lport: u16 = bpf_probe_read_kernel((sk + off.num as u64) as *const u16).ok()?;
        let dport: u16 = bpf_probe_read_kernel((sk + off.dport as u64) as *const u16).ok()?;
        let mut t = ConnTuple {
            family,
            lport,
            rport: u16::from_be(dport),
            ..ConnTuple::default()
        };
        if family == AF_INET {
            let l: [u8; 4] = bpf_probe_read_kernel((sk + off.rcv_saddr as u64) as *const _).ok()?;
            let r: [u8; 4] = bpf_probe_read_kernel((sk + off.daddr as u64) as *const _).ok()?;
            t.laddr[..4].copy_from_slice(&l);
            t.raddr[..4].copy_from_slice(&r);
        } else if family == AF_INET6 && off.has_v6 != 0 {
            t.laddr = bpf_probe_read_kernel((sk + off.v6_rcv_saddr as u64) as *const _).ok()?;
            t.raddr = bpf_probe_read_kernel((sk + off.v6_daddr as u64) as *const _).ok()?;
        } else {
            return None;
        }
        Some(t)
    }
}

/// `sock:inet_sock_set_state`: skaddr@8, newstate@20, sport@24, dport@26, family@28,
/// protocol@30, saddr@32, daddr@36, saddr_v6@40, daddr_v6@56. Only establishment is used: a
/// socket reaches TCP_CLOSE (through TIME_WAIT, say) while its owner may still have unread
/// bytes to receive, so the end of a connection is `tcp:tcp_destroy_sock` instead.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let proto = unsafe { ctx.read_at::<u16>(30) }.unwrap_or(0);
    let newstate = unsafe { ctx.read_at::<i32>(20) }.unwrap_or(0);
    if proto != IPPROTO_TCP || newstate != TCP_ESTABLISHED {
        return 0;
    }
    let sk = unsafe { ctx.read_at::<u64>(8) }.unwrap_or(0);
    if unsafe { CONNS.get(&sk) }.is_some() {
        return 0;
    }
    let family = unsafe { ctx.read_at::<u16>(28) }.unwrap_or(0);
    let mut t = ConnTuple {
        family,
        lport: unsafe { ctx.read_at::<u16>(24) }.unwrap_or(0),
        rport: unsafe { ctx.read_at::<u16>(26) }.unwrap_or(0),
        ..ConnTuple::default()
    };
    if family == AF_INET {
        t.laddr[..4].copy_from_slice(&unsafe { ctx.read_at::<[u8; 4]>(32) }.unwrap_or([0; 4]));
        t.raddr[..4].copy_from_slice(&unsafe { ctx.read_at::<[u8; 4]>(36) }.unwrap_or([0; 4]));
    } else {
        t.laddr = unsafe { ctx.read_at::<[u8; 16]>(40) }.unwrap_or([0; 16]);
        t.raddr = unsafe { ctx.read_at::<[u8; 16]>(56) }.unwrap_or([0; 16]);
    }
    let cfg = config();
    match classify(&cfg, &t) {
        Some(how) => {
            open_conn(&ctx, sk, t, how, 0, -1);
        }
        None => {
            let _ = IGNORED.insert(&sk, &1, 0);
        }
    }
    0
}

/// `tcp:tcp_destroy_sock` (skaddr@8): the socket is freed, nothing more can be read from it.
#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let sk = unsafe { ctx.read_at::<u64>(8) }.unwrap_or(0);
    close_conn(&ctx, sk, -1);
    let _ = IGNORED.remove(&sk);
    0
}

// ---------------------------------------------------------------------------------------------
// fd mode: connections by (tgid, fd) from connect/accept/bind/close.
// ---------------------------------------------------------------------------------------------

/// Stash for connect/bind (sockaddr@24) and accept (upeer_sockaddr@24): fd@16.
fn enter_setup(ctx: &TracePointContext, syscall: Syscall) -> u32 {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    if !task_traced(&cfg, (id >> 32) as u32) {
        return 0;
    }
    stash(
        id,
        SyscallArgs {
            conn_key: 0,
            buf: unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0),
            count: 0,
            ts_enter_ns: now(),
            fd: unsafe { ctx.read_at::<u64>(16) }.unwrap_or(u64::MAX) as i32,
            syscall: syscall as u8,
            direction: Direction::Egress as u8,
            _pad: [0; 2],
        },
    );
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_setup(&ctx, Syscall::Connect)
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_setup(&ctx, Syscall::Accept)
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    enter_setup(&ctx, Syscall::Bind)
}

/// `close(fd)`: fd@16.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let fd = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(u64::MAX) as u32;
    let key = (id & 0xffff_ffff_0000_0000) | fd as u64;
    close_conn(&ctx, key, fd as i32);
    let _ = LISTENERS.remove(&key);
    0
}

/// Family, port (host order) and address of a user `struct sockaddr_in{,6}`.
fn read_sockaddr(ptr: u64) -> Option<(u16, u16, [u8; 16])> {
    if ptr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe {
        let family: u16 = bpf_probe_read_user(ptr as *const u16).ok()?;
        let port: u16 = u16::from_be(bpf_probe_read_user((ptr + 2) as *const u16).ok()?);
        let mut addr = [0u8; 16];
        if family == AF_INET {
            let a: [u8; 4] = bpf_probe_read_user((ptr + 4) as *const _).ok()?;
            addr[..4].copy_from_slice(&a);
        } else if family == AF_INET6 {
            addr = bpf_probe_read_user((ptr + 8) as *const _).ok()?;
        } else {
            return None;
        }
        Some((family, port, addr))
    }
}

fn exit_setup(ctx: &TracePointContext, args: &SyscallArgs, ret: i64) {
    let tgid_hi = bpf_get_current_pid_tgid() & 0xffff_ffff_0000_0000;
    let cfg = config();
    match Syscall::from_u8(args.syscall) {
        Some(Syscall::Connect) if ret == 0 || ret == -EINPROGRESS => {
            let Some((family, port, addr)) = read_sockaddr(args.buf) else {
                return;
            };
            let key = tgid_hi | args.fd as u32 as u64;
            let t = ConnTuple {
                family,
                rport: port,
                raddr: addr,
                ..ConnTuple::default()
            };
            if let Some(how) = classify(&cfg, &t) {
                open_conn(ctx, key, t, how, 0, args.fd);
            }
        }
        Some(Syscall::Accept) if ret >= 0 => {
            let listener = unsafe { LISTENERS.get(&(tgid_hi | args.fd as u32 as u64)) }
                .copied()
                .unwrap_or(0);
            let mut t = ConnTuple {
                family: (listener >> 16) as u16,
                lport: listener as u16,
                ..ConnTuple::default()
            };
            if let Some((family, port, addr)) = read_sockaddr(args.buf) {
                t.family = family;
                t.rport = port;
                t.raddr = addr;
            }
            if let Some(how) = classify(&cfg, &t) {
                open_conn(ctx, tgid_hi | ret as u32 as u64, t, how, 0, ret as i32);
            }
        }
        Some(Syscall::Bind) if ret == 0 => {
            if let Some((family, port, _)) = read_sockaddr(args.buf) {
                let v = ((family as u32) << 16) | port as u32;
                let _ = LISTENERS.insert(&(tgid_hi | args.fd as u32 as u64), &v, 0);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Syscall exit: copy the transferred bytes.
// ---------------------------------------------------------------------------------------------

/// One program for every `sys_exit_*` tracepoint (all share `ret@16`); the stash says which
/// syscall it was.
#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = (unsafe { ARGS.get(&id) }).copied() else {
        return 0;
    };
    let _ = ARGS.remove(&id);
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    if args.syscall >= Syscall::Connect as u8 {
        exit_setup(&ctx, &args, ret);
    } else if args.conn_key != 0 && ret > 0 {
        exit_data(&args, ret as u64);
    }
    0
}

/// State of the copy walk over a syscall's buffers, shared with the `bpf_loop` callback.
#[repr(C)]
struct Walk {
    /// Current contiguous user segment and its bytes left to copy.
    base: u64,
    seg_rem: u64,
    /// Next iovec to read and how many are left in the current message.
    iov_ptr: u64,
    iov_left: u64,
    /// Next mmsghdr to read and how many are left.
    msg_ptr: u64,
    msg_left: u64,
    /// Bytes left in the current message (the syscall's return value for single-message calls).
    msg_rem: u64,
    /// Bytes left to copy under the cap.
    cap_left: u64,
    /// Bytes staged in the scratch buffer, and the syscall offset of the first of them.
    fill: u64,
    chunk_start: u64,
    /// Set when the ring buffer is full: the rest of the syscall is counted, not copied.
    failed: u64,
}

fn exit_data(args: &SyscallArgs, ret: u64) {
    let Some(conn) = CONNS.get_ptr_mut(&args.conn_key) else {
        return;
    };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: map value pointers, valid for this program run; the scratch is per-CPU and
    // nothing else runs on this CPU until the program ends.
    let (conn, w, hdr) = unsafe { (&mut *conn, &mut (*s).walk, &mut (*s).hdr) };
    let cfg = config();

    *w = Walk {
        base: 0,
        seg_rem: 0,
        iov_ptr: 0,
        iov_left: 0,
        msg_ptr: 0,
        msg_left: 0,
        msg_rem: ret,
        cap_left: 0,
        fill: 0,
        chunk_start: 0,
        failed: 0,
    };
    let syscall = args.syscall;
    let total = if syscall == Syscall::Write as u8
        || syscall == Syscall::Read as u8
        || syscall == Syscall::Sendto as u8
        || syscall == Syscall::Recvfrom as u8
    {
        w.base = args.buf;
        w.seg_rem = ret;
        ret
    } else if syscall == Syscall::Writev as u8 || syscall == Syscall::Readv as u8 {
        w.iov_ptr = args.buf;
        w.iov_left = args.count;
        ret
    } else if syscall == Syscall::Sendmsg as u8 || syscall == Syscall::Recvmsg as u8 {
        // SAFETY: user pointers, checked by the helper.
        unsafe {
            w.iov_ptr =
                bpf_probe_read_user((args.buf + MSGHDR_IOV_OFFSET) as *const u64).unwrap_or(0);
            w.iov_left =
                bpf_probe_read_user((args.buf + MSGHDR_IOVLEN_OFFSET) as *const u64).unwrap_or(0);
        }
        ret
    } else {
        // sendmmsg/recvmmsg: ret is the number of messages; each mmsghdr has its length.
        w.msg_ptr = args.buf;
        w.msg_left = ret;
        w.msg_rem = 0;
        // SAFETY: per-CPU scratch, see above.
        let m = unsafe { &mut (*s).mmsg };
        m.ptr = args.buf;
        m.n = ret;
        m.total = 0;
        // SAFETY: the callback only touches the per-CPU scratch.
        unsafe { bpf_loop(MAX_IOV, sum_mmsg as *mut c_void, core::ptr::null_mut(), 0) };
        m.total
    };
    if w.iov_left > MAX_IOV as u64 {
        w.iov_left = MAX_IOV as u64;
    }

    let dir_counter = if args.direction == Direction::Egress as u8 {
        &raw mut conn.tx_bytes
    } else {
        &raw mut conn.rx_bytes
    };
    // SAFETY: the map value outlives this call. The add is atomic so the stream length never
    // drifts; the offset is read just before it because the generic BPF CPU that aya-build
    // targets cannot return the old value from an atomic add. Only two threads writing the same
    // socket at the same instant could see one offset twice, which userspace treats as an
    // overlap and resyncs on.
    let stream_offset = unsafe { core::ptr::read_volatile(dir_counter) };
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dir_counter, total) };

    let mut cap = cfg.max_bytes_per_syscall as u64;
    if conn.track == track::SNIFF {
        match unsafe { VERDICTS.get(&args.conn_key) }.copied() {
            Some(track::FULL) => {
                conn.track = track::FULL;
                conn.flags &= !flags::SNIFF;
            }
            Some(_) => {
                conn.track = track::IGNORE;
                return;
            }
            None => {
                let budget = cfg.sniff_bytes as u64;
                if stream_offset >= budget {
                    count(counter::SNIFF_SKIPPED_BYTES, total);
                    return;
                }
                if budget - stream_offset < cap {
                    cap = budget - stream_offset;
                }
            }
        }
    } else if conn.track != track::FULL {
        return;
    }

    let captured = if total > cap { cap } else { total };
    let mut rec_flags = conn.flags;
    if captured < total {
        if conn.track == track::SNIFF {
            count(counter::SNIFF_SKIPPED_BYTES, total - captured);
        } else {
            rec_flags |= flags::TRUNCATED;
            count(counter::TRUNCATED_SYSCALLS, 1);
            count(counter::TRUNCATED_BYTES, total - captured);
        }
    }
    if captured == 0 {
        return;
    }

    hdr.kind = kind::DATA;
    hdr.direction = args.direction;
    hdr.syscall = syscall;
    hdr.flags = rec_flags;
    hdr.fd = args.fd;
    hdr.pid_tgid = bpf_get_current_pid_tgid();
    hdr.conn_id = conn.conn_id;
    hdr.conn_key = args.conn_key;
    // SAFETY: helper without arguments.
    hdr.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    hdr.ts_enter_ns = args.ts_enter_ns;
    hdr.ts_exit_ns = now();
    hdr.stream_offset = stream_offset;
    hdr.syscall_len = total as u32;
    hdr.captured_len = captured as u32;
    hdr.chunk_offset = 0;
    hdr.chunk_len = 0;
    hdr.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    hdr.tuple = conn.tuple;

    w.cap_left = captured;
    // SAFETY: the callback only touches the per-CPU scratch.
    unsafe {
        bpf_loop(
            MAX_WALK_STEPS,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if w.failed == 0 && w.cap_left > 0 {
        // The walk ran out of steps or of iovecs before `captured` bytes: report, never hide.
        count(counter::TRUNCATED_BYTES, w.cap_left);
    }
}

#[repr(C)]
struct MmsgSum {
    ptr: u64,
    n: u64,
    total: u64,
}

unsafe extern "C" fn sum_mmsg(i: u32, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch.
    let s = unsafe { &mut (*scratch).mmsg };
    if i as u64 >= s.n {
        return 1;
    }
    let at = s.ptr + i as u64 * MMSGHDR_SIZE + MMSG_LEN_OFFSET;
    s.total += unsafe { bpf_probe_read_user(at as *const u32) }.unwrap_or(0) as u64;
    0
}

/// Sends the staged bytes as one data record.
#[inline(always)]
fn flush(s: *mut Scratch, w: &mut Walk) {
    let mut len = w.fill;
    if len > CHUNK_SIZE as u64 {
        len = CHUNK_SIZE as u64;
    }
    if len == 0 {
        return;
    }
    // SAFETY: per-CPU scratch; the record is the header plus `len <= CHUNK_SIZE` bytes of it.
    let rec = unsafe {
        (*s).hdr.chunk_offset = w.chunk_start as u32;
        (*s).hdr.chunk_len = len as u32;
        core::slice::from_raw_parts(
            (&raw const (*s).hdr) as *const u8,
            DATA_HEADER_SIZE + len as usize,
        )
    };
    if EVENTS.output(rec, 0).is_ok() {
        count(counter::RECORDS, 1);
        count(counter::BYTES, len);
    } else {
        count(counter::RINGBUF_FULL_RECORDS, 1);
        count(counter::RINGBUF_FULL_BYTES, len + w.cap_left);
        w.failed = 1;
    }
    w.chunk_start += len;
    w.fill = 0;
}

/// One step of the copy: move to the next mmsg message or iovec, or copy one piece of the
/// current segment into the scratch buffer (sending it when full). Returns 1 to stop.
unsafe extern "C" fn walk_step(_i: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch.
    let w = unsafe { &mut (*s).walk };
    if w.seg_rem == 0 {
        if w.msg_rem != 0 && w.iov_left != 0 {
            // SAFETY: user pointers, checked by the helper.
            let (base, len) = unsafe {
                (
                    bpf_probe_read_user(w.iov_ptr as *const u64).unwrap_or(0),
                    bpf_probe_read_user((w.iov_ptr + 8) as *const u64).unwrap_or(0),
                )
            };
            w.iov_ptr += IOVEC_SIZE;
            w.iov_left -= 1;
            w.base = base;
            w.seg_rem = if len < w.msg_rem { len } else { w.msg_rem };
            return 0;
        }
        if w.msg_left != 0 {
            let m = w.msg_ptr;
            // SAFETY: user pointers, checked by the helper.
            unsafe {
                w.iov_ptr = bpf_probe_read_user((m + MSGHDR_IOV_OFFSET) as *const u64).unwrap_or(0);
                let n = bpf_probe_read_user((m + MSGHDR_IOVLEN_OFFSET) as *const u64).unwrap_or(0);
                w.iov_left = if n > MAX_IOV as u64 {
                    MAX_IOV as u64
                } else {
                    n
                };
                w.msg_rem =
                    bpf_probe_read_user((m + MMSG_LEN_OFFSET) as *const u32).unwrap_or(0) as u64;
            }
            w.msg_ptr += MMSGHDR_SIZE;
            w.msg_left -= 1;
            return 0;
        }
        flush(s, w);
        return 1;
    }

    let mut n = w.seg_rem;
    let room = CHUNK_SIZE as u64 - (w.fill & (CHUNK_SIZE as u64 - 1));
    if n > room {
        n = room;
    }
    if n > w.cap_left {
        n = w.cap_left;
    }
    if n > CHUNK_SIZE as u64 {
        n = CHUNK_SIZE as u64;
    }
    let at = (w.fill & (CHUNK_SIZE as u64 - 1)) as usize;
    // SAFETY: at < CHUNK_SIZE and n <= CHUNK_SIZE, inside the 2 * CHUNK_SIZE data array.
    let rc = unsafe {
        let dst = (*s).data.as_mut_ptr().add(at) as *mut c_void;
        probe_read_user_raw(dst, n as u32, w.base as *const c_void)
    };
    w.base += n;
    w.seg_rem -= n;
    w.msg_rem = w.msg_rem.saturating_sub(n);
    w.cap_left -= n;
    if rc == 0 {
        w.fill += n;
    } else {
        // Unreadable user memory: send what is staged and leave a gap of n bytes.
        count(counter::READ_FAILURE_BYTES, n);
        flush(s, w);
        w.chunk_start += n;
    }
    if w.failed != 0 {
        return 1;
    }
    if w.cap_left == 0 || w.fill >= CHUNK_SIZE as u64 {
        flush(s, w);
        if w.cap_left == 0 || w.failed != 0 {
            return 1;
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

const _: () = assert!(size_of::<DataHeader>() == DATA_HEADER_SIZE);
