//! Kernel side of kafka-tracer: copies the bytes that processes send and receive on TCP sockets
//! into the `EVENTS` ring buffer, built only on tracepoints (no kprobes, no fentry), so it runs on
//! every kernel that has the syscall tracepoints (fd mode) or the socket ones (sock mode).
//!
//! The life of one captured call, in one of two modes:
//! - sock mode (Linux 6.3+): `sock:sock_send_length` / `sock:sock_recv_length` fire inside the
//!   syscall, after the bytes moved, with the `struct sock` and the byte count; the syscall's
//!   buffers are read from the task's saved registers, and the copy happens there (`sock`).
//!   No syscall tracepoint is attached.
//! - fd mode: `sys_enter_<call>` stashes the arguments (fd, buffer or iovec/msghdr pointer) of a
//!   call on a `(tgid, fd)` that connect/accept/close tracking (and /proc, at startup) put in
//!   `CONNS`, keyed by thread in `ARGS`; `sys_exit_<call>` learns how many bytes moved.
//!
//! Either way the copy (`copy`) reserves that range of the connection's directional stream (an
//! atomic add on the stream offset, so any loss shows up as a gap), and copies the user buffers
//! into records of at most `CHUNK_SIZE` bytes, with `bpf_loop` or, on kernels without it,
//! bounded loops and tail calls. With the selective copy on, programs of their own (the `_skim`
//! variants) follow each produce request and fetch response of a walked connection and skip
//! record values (`skim`).
//!
//! TLS connections are read in the TLS library instead (uprobes: `tls` for OpenSSL, `gotls`
//! for Go's crypto/tls), their ciphertext not copied. Nothing is dropped silently: every byte not delivered is counted in `COUNTERS`.
#![no_std]
#![no_main]
// The bpf target has no `AtomicU64`; the intrinsic lowers to BPF's atomic fetch-add.
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::size_of,
};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_loop,
            bpf_probe_read_user as probe_read_user_raw,
        },
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    CHUNK_SIZE, Config, ConnEvent, ConnState, ConnTuple, DATA_HEADER_SIZE, DataHeader, Direction,
    MAX_IOV, SockOffsets, Syscall, SyscallArgs, counter, flags, kind, mode,
    skim::{InFlight, Skim, WINDOW},
    track,
};

mod copy;
mod entry;
mod fd;
mod gotls;
mod skim;
mod sock;
mod tls;
mod wake;

use copy::{MmsgSum, Walk};
use entry::stash;
use fd::exit_setup;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: u64 = 2;
const EINPROGRESS: i64 = 115;
const TCP_ESTABLISHED: i32 = 1;
/// Upper bound on `bpf_loop` steps for one syscall: one step per chunk, per iovec, per mmsg
/// message, and on a walked stream per field and per copied or skipped range (a few per
/// record of a batch walked, see `skim`): the helper's own limit, which a 16 MiB syscall of
/// the smallest walked records stays under.
const MAX_WALK_STEPS: u32 = 1 << 23;
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
    wake_bytes: 0,
    skim: 0,
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
/// fd mode's syscall arguments between entry and exit, by pid_tgid: one entry per thread that
/// makes data syscalls on a tracked fd, kept between its syscalls (`entry::stash`). LRU:
/// threads that ended leave theirs behind, and the least recently used go first; room for as
/// many threads as a busy node runs.
#[map]
static ARGS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(65536, 0);
/// Tracked (or sniffed) connections, by `struct sock` address (sock mode) or `tgid << 32 | fd`.
/// LRU: in fd mode a process that exits without close() leaves its entries behind. Its size is
/// set at load (`--kernel-connections`); a connection a full table drops is counted by the
/// daemon when it goes idle (`forgotten_connections`).
#[map]
static CONNS: LruHashMap<u64, ConnState> =
    LruHashMap::with_max_entries(tracer_common::DEFAULT_KERNEL_CONNECTIONS, 0);
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
/// A walked connection's two walks (`skim`): its requests (Produce) and its responses
/// (Fetch), and the Fetch requests the first saw, which the second needs to know a response.
#[repr(C)]
struct Walks {
    requests: Skim,
    responses: Skim,
    fetches: InFlight,
}

/// Where each walked connection's streams are (`skim`), by conn key. Separate from `CONNS` so
/// that only walked connections pay for the state (360 bytes each); a connection whose entry
/// the LRU evicted is copied whole (its walks cannot restart mid-stream).
#[map]
static SKIMS: LruHashMap<u64, Walks> = LruHashMap::with_max_entries(16384, 0);
/// Walks at the streams' starts, inserted into `SKIMS` from here: built on the stack they
/// would take most of the bounded path's stack. The policy is set from `Config::skim` by each
/// syscall's walk (`skim::begin`): read-only data cannot take it from the loader's config.
static SKIM_START: Walks = Walks {
    requests: Skim::from_start(tracer_common::skim::policy::ALL),
    responses: Skim::responses_from_start(tracer_common::skim::policy::ALL),
    fetches: InFlight::new(),
};

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
    /// The walked stream's state during the syscall and the connection's Fetch requests
    /// (copied from and back to `SKIMS`), and the parse window.
    skim: Skim,
    fetches: InFlight,
    win: [u8; WINDOW],
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

/// A field of the tracepoint's record, at `offset` in its format, loaded from the context
/// itself. Tracepoint programs may load from their record directly, which costs one
/// instruction where `TracePointContext::read_at` calls `bpf_probe_read_kernel`, a helper with
/// fault handling: four to eight of those ran on every read and write of every traced process.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: offsets are constants inside the tracepoint's format (the verifier refuses a
    // load past the record), aligned to `T`.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().add(offset) as *const T) }
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
            e.submit(wake::flags());
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
    // Only a connection seen from its first byte can be walked: its stream starts a frame; and
    // only one whose ends the port filter tells apart. The two fields are read alone: a copy
    // of the whole `Config` would take stack this call chain does not have on older kernels.
    // SAFETY: plain reads of the loader-set read-only data, as `config` does.
    let (skim_on, filtered) = unsafe {
        (
            core::ptr::read_volatile(&raw const CONFIG.skim),
            core::ptr::read_volatile(&raw const CONFIG.filter_ports),
        )
    };
    let walked =
        skim_on != 0 && filtered != 0 && how == track::FULL && extra_flags & flags::MIDSTREAM == 0;
    // The ports are looked up again only for a connection that is walked.
    let skim = match walked
        .then(|| tracer_common::request_direction(&tuple, |p| unsafe { PORTS.get(&p) }.is_some()))
        .flatten()
    {
        Some(dir) => SKIMS.insert(&key, &SKIM_START, 0).is_ok() as u8 * (dir as u8 + 1),
        None => 0,
    };
    let st = ConnState {
        conn_id: next_conn_id(),
        tx_bytes: 0,
        rx_bytes: 0,
        tuple,
        track: how,
        flags: extra_flags | sniff,
        fd_noted: 0,
        skim,
        _pad: [0; 4],
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
        if st.skim != 0 {
            let _ = SKIMS.remove(&key);
        }
    }
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
