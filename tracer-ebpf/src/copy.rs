//! Syscall exit: how many bytes moved decides the range of the connection's stream reserved, and
//! the user buffers (plain, iovec, msghdr, mmsghdr) are copied into ring-buffer records of at
//! most `CHUNK_SIZE` bytes; whatever cannot be delivered is counted. TLS library calls (`tls`,
//! `gotls`) copy their plaintext through the same path.
//!
//! The copy is one walk (`walk_step`) over a state kept in the per-CPU scratch, run one of two
//! ways, chosen at load time (the records, positions and counters are the same either way):
//! - with `bpf_loop` (Linux 5.17 on): one helper call runs every step;
//! - without it (5.10 to 5.16): `BOUNDED_STEPS` steps in a bounded loop, then a tail call to
//!   `copy_more_*`, which runs as many and calls itself again, up to the kernel's 33 tail calls
//!   per chain; what is left after that is counted as truncated.
//!
//! On a walked connection (`skim`, `bpf_loop` path only) each step asks the selective copy's
//! rule first, and the records are runs of copied bytes after skipped ones.

use tracer_common::skim::RUN_HEADER;

use super::*;

/// How a copy walk runs.
#[derive(Clone, Copy)]
pub(crate) enum Walker {
    /// `bpf_loop`.
    Loop,
    /// `bpf_loop`, with the selective copy's steps on walked connections (`skim`). A program
    /// of its own, loaded only when the selective copy is on: the walk multiplies what the
    /// verifier explores, and the default copy should not depend on a verifier taking it.
    LoopSkim,
    /// Bounded loops continued by tail calls to the continuation in this map (a program of
    /// the caller's type).
    Bounded(&'static ProgramArray),
}

/// The continuation of bounded walks started by tracepoints, set by the loader. One map per
/// program type: a program array takes the type of the first program that uses it and refuses
/// programs of any other.
#[map]
pub(crate) static COPY_MORE_TP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The same for uprobes (TLS calls' plaintext).
#[map]
pub(crate) static COPY_MORE_PROBE: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Walk steps one program runs in bounded mode: 64 steps of up to a chunk each, 34 programs
/// in a chain (the first and 33 tail calls), cover more than 16 MiB (the default cap).
const BOUNDED_STEPS: u32 = 64;

/// One program for every `sys_exit_*` tracepoint (all share `ret@16`); the stash says which
/// syscall it was.
#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, Walker::Loop)
}

/// The same, walking the connections the selective copy is on for (`--record-headers`,
/// `--selective-copy`).
#[tracepoint]
pub fn sys_exit_skim(ctx: TracePointContext) -> u32 {
    exit(&ctx, Walker::LoopSkim)
}

/// The same, for kernels without `bpf_loop`.
#[tracepoint]
pub fn sys_exit_bounded(ctx: TracePointContext) -> u32 {
    exit(&ctx, Walker::Bounded(&COPY_MORE_TP))
}

#[inline(always)]
fn exit(ctx: &TracePointContext, walker: Walker) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = ARGS.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this program run. The entry stays for the thread's
    // next syscall (`entry::stash`); `syscall` 0 marks it spent.
    let args = unsafe { *slot };
    if args.syscall == 0 {
        return 0;
    }
    unsafe { (*slot).syscall = 0 };
    let ret = field::<i64>(ctx, 16);
    if args.syscall >= Syscall::Connect as u8 {
        exit_setup(ctx, &args, ret);
    } else if args.conn_key != 0 && ret > 0 {
        exit_data(ctx, &args, ret as u64, false, walker);
    }
    0
}

/// The continuation of a bounded walk started by a tracepoint program.
#[tracepoint]
pub fn copy_more_tp(ctx: TracePointContext) -> u32 {
    more(&ctx, &COPY_MORE_TP);
    0
}

/// The continuation of a bounded walk started by a uprobe (a TLS call's plaintext).
#[aya_ebpf::macros::uprobe]
pub fn copy_more_probe(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
    more(&ctx, &COPY_MORE_PROBE);
    0
}

/// Runs more steps of the walk in the scratch, and hands on again when they do not finish it.
#[inline(always)]
fn more<C: aya_ebpf::EbpfContext>(ctx: &C, next: &ProgramArray) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    if !bounded_steps() {
        // SAFETY: the continuation takes the same context; on success this never returns.
        let _ = unsafe { next.tail_call(ctx, 0) };
    }
    // Done, or the chain's last program: what is left counts as truncated.
    finish_walk(s, false);
}

/// [`BOUNDED_STEPS`] steps of the walk; whether it finished.
#[inline(always)]
fn bounded_steps() -> bool {
    for i in 0..BOUNDED_STEPS {
        // SAFETY: the step only touches the per-CPU scratch.
        if unsafe { walk_step::<false>(i, core::ptr::null_mut()) } != 0 {
            return true;
        }
    }
    false
}

/// State of the copy walk over a syscall's buffers, shared with the `bpf_loop` callback.
#[repr(C)]
pub(crate) struct Walk {
    /// Current contiguous user segment and its bytes left to copy.
    pub(crate) base: u64,
    pub(crate) seg_rem: u64,
    /// Next iovec to read and how many are left in the current message.
    pub(crate) iov_ptr: u64,
    pub(crate) iov_left: u64,
    /// Next mmsghdr to read and how many are left.
    pub(crate) msg_ptr: u64,
    pub(crate) msg_left: u64,
    /// Bytes left in the current message (the syscall's return value for single-message calls).
    pub(crate) msg_rem: u64,
    /// Bytes left to copy under the cap.
    pub(crate) cap_left: u64,
    /// Bytes staged in the scratch buffer, and the syscall offset of the first of them.
    pub(crate) fill: u64,
    pub(crate) chunk_start: u64,
    /// Set when the ring buffer is full: the rest of the syscall is counted, not copied.
    pub(crate) failed: u64,
    /// The bytes are a TLS call's plaintext (no TLS record to look for at their start).
    pub(crate) plaintext: u64,
    /// Stream bytes the staged record covers (copied, and skipped in runs).
    pub(crate) covered: u64,
    /// The stream is walked (`skim`): records are runs, and bytes may be skipped. 1: the
    /// connection's requests, 2: its responses.
    pub(crate) skim_on: u64,
    /// Runs: where the open run's length is in the staged bytes (`NO_RUN`: none open), its
    /// length, and the bytes skipped since it.
    pub(crate) run_at: u64,
    pub(crate) run_len: u64,
    pub(crate) skipped: u64,
}

/// `Walk::run_at` when no run is open.
pub(crate) const NO_RUN: u64 = u64::MAX;

/// Copies what a syscall moved, or (`plaintext`) what a TLS library call handed over or
/// returned, on the connection's stream. A TLS connection's syscalls carry ciphertext: counted,
/// not copied. Inlined into each program: a tail call must be made from a function that
/// returns an integer (the program itself), not from a subprogram returning nothing.
#[inline(always)]
pub(crate) fn exit_data<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    args: &SyscallArgs,
    ret: u64,
    plaintext: bool,
    walker: Walker,
) {
    let Some(conn) = CONNS.get_ptr_mut(&args.conn_key) else {
        return;
    };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: map value pointers, valid for this program run; the scratch is per-CPU and
    // nothing else runs on this CPU until the program ends.
    let conn = unsafe { &mut *conn };
    let total = start_walk(s, args, ret, walker);
    if !plaintext && conn.flags & (flags::TLS | flags::TLS_CIPHERTEXT) != 0 {
        count(counter::TLS_CIPHERTEXT_BYTES, total);
        return;
    }

    let stream_offset = reserve(conn, args.direction, total);

    let Some(cap) = copy_cap(conn, args.conn_key, stream_offset, total) else {
        return;
    };
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

    // SAFETY: per-CPU scratch, see above.
    let (w, hdr) = unsafe { (&mut (*s).walk, &mut (*s).hdr) };
    hdr.kind = kind::DATA;
    hdr.direction = args.direction;
    hdr.syscall = args.syscall;
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
    w.plaintext = plaintext as u64;
    let skimmed = matches!(walker, Walker::LoopSkim);
    if skimmed && !plaintext && conn.skim != 0 {
        let responses = conn.skim != args.direction + 1;
        skim::begin(s, args.conn_key, captured < total, responses);
    }
    match walker {
        Walker::Loop | Walker::LoopSkim => {
            let step = if skimmed {
                walk_step::<true> as *mut c_void
            } else {
                walk_step::<false> as *mut c_void
            };
            // SAFETY: the callback only touches the per-CPU scratch.
            unsafe { bpf_loop(MAX_WALK_STEPS, step, core::ptr::null_mut(), 0) };
        }
        Walker::Bounded(next) => {
            if !bounded_steps() {
                // SAFETY: the continuation takes the same context; on success this never
                // returns, and it finishes the walk itself.
                let _ = unsafe { next.tail_call(ctx, 0) };
            }
        }
    }
    finish_walk(s, skimmed);
}

/// Reserves the next `n` bytes of the connection's stream in direction `dir` (a `Direction`)
/// and returns where they start. The add is atomic so the stream length never drifts; the
/// offset is read just before it because the generic BPF CPU that aya-build targets cannot
/// return the old value from an atomic add. Only two threads writing the same socket at the
/// same instant could see one offset twice, which userspace treats as an overlap and resyncs on.
#[inline(always)]
pub(crate) fn reserve(conn: &mut ConnState, dir: u8, n: u64) -> u64 {
    let counter = if dir == Direction::Egress as u8 {
        &raw mut conn.tx_bytes
    } else {
        &raw mut conn.rx_bytes
    };
    // SAFETY: a field of the map value `conn`, which outlives this call.
    unsafe {
        let offset = core::ptr::read_volatile(counter);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n);
        offset
    }
}

/// After the walk: what it could not copy is counted, and a stream whose first bytes are a
/// TLS record is marked (the rest of the connection is ciphertext, not copied unless a TLS call
/// is tied to it; the daemon reads the same record and tells the user when none is).
/// `skimmed`: the walk could take the selective copy's steps (`Walker::LoopSkim`).
#[inline(always)]
fn finish_walk(s: *mut Scratch, skimmed: bool) {
    // SAFETY: per-CPU scratch; the first record's bytes are still at the start of `data`.
    let (w, hdr, d) = unsafe { (&(*s).walk, &(*s).hdr, &(*s).data) };
    if w.failed == 0 && w.cap_left > 0 {
        // The walk ran out of steps or of iovecs before `captured` bytes: report, never hide.
        count(counter::TRUNCATED_BYTES, w.cap_left);
    }
    if skimmed && w.skim_on != 0 {
        skim::end(s, w.failed != 0 || w.cap_left > 0);
    }
    let captured = hdr.captured_len as u64;
    if w.plaintext != 0 || hdr.stream_offset != 0 || captured > CHUNK_SIZE as u64 || captured < 5 {
        return;
    }
    // Runs start with a run header; the first run holds the stream's first bytes.
    let o = if w.skim_on != 0 { RUN_HEADER } else { 0 };
    let Some(conn) = CONNS.get_ptr_mut(&hdr.conn_key) else {
        return;
    };
    // SAFETY: map value pointer, valid for this program run.
    let conn = unsafe { &mut *conn };
    let len = u16::from_be_bytes([d[o + 3], d[o + 4]]);
    let midstream = conn.flags & flags::MIDSTREAM != 0;
    if tracer_common::tls_record(d[o], d[o + 1], d[o + 2], len, midstream) {
        conn.flags |= flags::TLS_CIPHERTEXT;
    }
}

/// Sets the walk up for the syscall's buffers (plain, iovec, msghdr or mmsghdr) and returns the
/// bytes the syscall moved (for mmsg calls, the sum of the messages' lengths).
#[inline(always)]
fn start_walk(s: *mut Scratch, args: &SyscallArgs, ret: u64, walker: Walker) -> u64 {
    // SAFETY: per-CPU scratch, valid for this program run.
    let w = unsafe { &mut (*s).walk };
    // Field by field in place: a `Walk` literal would be built on the stack first, and the
    // bounded path's call chain has no stack to spare.
    // SAFETY: `w` is the scratch's walk, plain integers for which zero is valid.
    unsafe { core::ptr::write_bytes(w as *mut Walk, 0, 1) };
    w.msg_rem = ret;
    w.run_at = NO_RUN;
    let syscall = args.syscall;
    let total = if syscall == Syscall::Write as u8
        || syscall == Syscall::Read as u8
        || syscall == Syscall::Sendto as u8
        || syscall == Syscall::Recvfrom as u8
        || syscall == Syscall::SslWrite as u8
        || syscall == Syscall::SslRead as u8
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
        if !matches!(walker, Walker::Bounded(_)) {
            // SAFETY: the callback only touches the per-CPU scratch.
            unsafe { bpf_loop(MAX_IOV, sum_mmsg as *mut c_void, core::ptr::null_mut(), 0) };
        } else {
            for i in 0..MAX_IOV {
                // SAFETY: as above.
                if unsafe { sum_mmsg(i, core::ptr::null_mut()) } != 0 {
                    break;
                }
            }
        }
        m.total
    };
    if w.iov_left > MAX_IOV as u64 {
        w.iov_left = MAX_IOV as u64;
    }
    total
}

/// Bytes of this syscall to copy: the per-syscall cap, or what is left of a sniffed
/// connection's budget; `None` when nothing is copied (ignored, or past the budget, counted).
/// A sniffed connection takes userspace's verdict here.
#[inline(always)]
fn copy_cap(conn: &mut ConnState, key: u64, stream_offset: u64, total: u64) -> Option<u64> {
    let cfg = config();
    let mut cap = cfg.max_bytes_per_syscall as u64;
    if conn.track == track::SNIFF {
        match unsafe { VERDICTS.get(&key) }.copied() {
            Some(track::FULL) => {
                conn.track = track::FULL;
                conn.flags &= !flags::SNIFF;
            }
            Some(_) => {
                conn.track = track::IGNORE;
                return None;
            }
            None => {
                let budget = cfg.sniff_bytes as u64;
                if stream_offset >= budget {
                    count(counter::SNIFF_SKIPPED_BYTES, total);
                    return None;
                }
                if budget - stream_offset < cap {
                    cap = budget - stream_offset;
                }
            }
        }
    } else if conn.track != track::FULL {
        return None;
    }
    Some(cap)
}

#[repr(C)]
pub(crate) struct MmsgSum {
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

/// Sends the staged bytes as one data record (runs: after the run of a skip still pending).
#[inline(always)]
pub(crate) fn flush(s: *mut Scratch, w: &mut Walk) {
    if w.skim_on != 0 {
        skim::close_runs(s, w);
    }
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
    if EVENTS.output(rec, wake::flags()).is_ok() {
        count(counter::RECORDS, 1);
        count(counter::BYTES, len);
    } else {
        count(counter::RINGBUF_FULL_RECORDS, 1);
        count(counter::RINGBUF_FULL_BYTES, w.covered + w.cap_left);
        w.failed = 1;
    }
    w.chunk_start += w.covered;
    w.covered = 0;
    w.fill = 0;
}

/// One step of the copy: move to the next mmsg message or iovec, or copy one piece of the
/// current segment into the scratch buffer (sending it when full). Returns 1 to stop. `SKIM`:
/// walked streams take the selective copy's steps; only the `_skim` copy programs have them
/// (the default `bpf_loop` copy should not pay the verifier for a walk it does not run, and the
/// bounded path's 64 inlined steps per program would not fit the budget with them, so
/// userspace turns the selective copy off there).
unsafe extern "C" fn walk_step<const SKIM: bool>(_i: u32, _ctx: *mut c_void) -> i64 {
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
    if SKIM && w.skim_on != 0 {
        return skim::step(s, w);
    }

    // A whole chunk left in this segment, nothing staged, and more than a chunk to copy (so
    // the first chunk of a syscall of at most one chunk, which `finish_walk` reads, is staged).
    if w.fill == 0 && w.seg_rem >= CHUNK_SIZE as u64 && w.cap_left > CHUNK_SIZE as u64 {
        direct_chunk(s, w);
        return i64::from(w.failed != 0);
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
    let Some(rc) = stage(s, w, n) else {
        return 1;
    };
    settle(s, w, n, rc, CHUNK_SIZE as u64 - 1)
}

/// After `n` bytes were staged with the read's result `rc`: they count as staged, or, unreadable
/// user memory, what is staged is sent and they are a gap; the record goes when its staged
/// bytes pass `full_past` or the cap is reached. Returns 1 to stop the walk.
#[inline(always)]
pub(crate) fn settle(s: *mut Scratch, w: &mut Walk, n: u64, rc: i64, full_past: u64) -> i64 {
    if rc == 0 {
        w.fill += n;
        w.covered += n;
    } else {
        count(counter::READ_FAILURE_BYTES, n);
        flush(s, w);
        w.chunk_start += n;
    }
    if w.failed != 0 {
        return 1;
    }
    if w.cap_left == 0 || w.fill > full_past {
        flush(s, w);
        if w.cap_left == 0 || w.failed != 0 {
            return 1;
        }
    }
    0
}

/// A ring-buffer record of a whole chunk.
#[repr(C)]
struct ChunkRecord {
    hdr: DataHeader,
    data: [u8; CHUNK_SIZE],
}

/// Copies a whole chunk of the current segment straight into its ring-buffer record, with no
/// staging in the scratch: the bytes are copied once in the kernel instead of twice (most of a
/// large syscall's bytes take this way). Counted as [`flush`] counts a record.
#[inline(always)]
fn direct_chunk(s: *mut Scratch, w: &mut Walk) {
    const N: u64 = CHUNK_SIZE as u64;
    match EVENTS.reserve::<ChunkRecord>(0) {
        Some(mut rec) => {
            let r = rec.as_mut_ptr();
            // SAFETY: `r` is the reserved record, `s` the per-CPU scratch; the read is of
            // exactly the record's data array.
            let rc = unsafe {
                (*r).hdr = (*s).hdr;
                (*r).hdr.chunk_offset = w.chunk_start as u32;
                (*r).hdr.chunk_len = N as u32;
                probe_read_user_raw(
                    (&raw mut (*r).data) as *mut c_void,
                    N as u32,
                    w.base as *const c_void,
                )
            };
            if rc == 0 {
                rec.submit(wake::flags());
                count(counter::RECORDS, 1);
                count(counter::BYTES, N);
            } else {
                // Unreadable user memory: a gap of the chunk, as in the staged copy.
                rec.discard(0);
                count(counter::READ_FAILURE_BYTES, N);
            }
        }
        None => {
            count(counter::RINGBUF_FULL_RECORDS, 1);
            count(counter::RINGBUF_FULL_BYTES, w.cap_left);
            w.failed = 1;
        }
    }
    w.advance(N);
    w.chunk_start += N;
}

/// Reads `n` bytes of the segment into the staged record at `fill` and moves past them;
/// `None` (nothing read) when `n` is over a chunk, else the helper's result.
#[inline(always)]
pub(crate) fn stage(s: *mut Scratch, w: &mut Walk, n: u64) -> Option<i64> {
    // Older verifiers (6.1, 5.10) lose the bounds of a length LLVM clamps with selects; the
    // check on a value the optimiser cannot see through stays in the code they read.
    let n = opaque(n);
    if n > CHUNK_SIZE as u64 {
        return None;
    }
    let at = (w.fill & (CHUNK_SIZE as u64 - 1)) as usize;
    // SAFETY: at < CHUNK_SIZE and n <= CHUNK_SIZE, inside the 2 * CHUNK_SIZE data array.
    let rc = unsafe {
        let dst = (*s).data.as_mut_ptr().add(at) as *mut c_void;
        probe_read_user_raw(dst, n as u32, w.base as *const c_void)
    };
    w.advance(n);
    Some(rc)
}

impl Walk {
    /// Moves past `n` bytes of the segment, copied or not.
    #[inline(always)]
    pub(crate) fn advance(&mut self, n: u64) {
        self.base += n;
        self.seg_rem -= n;
        self.msg_rem = self.msg_rem.saturating_sub(n);
        self.cap_left -= n;
    }
}

/// `v`, hidden from the optimiser (libbpf's `barrier_var`): a bound checked on the result is
/// checked in the program the verifier reads, not folded into earlier clamps.
#[inline(always)]
pub(crate) fn opaque(mut v: u64) -> u64 {
    // SAFETY: one register move onto itself, which only claims to change `v`.
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}
