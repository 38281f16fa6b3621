//! fd mode's syscall entry: a data syscall on a tracked `(tgid, fd)` has its arguments (fd,
//! buffer or iovec/msghdr pointer) stashed in `ARGS` by thread, for the exit to copy from.
//! (Sock mode copies at the socket tracepoints, `sock`, and attaches no syscall tracepoint.)

use super::*;

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
    let fd = field::<u64>(ctx, 16) as i32;
    if flags_at != 0 && field::<u64>(ctx, flags_at) & MSG_PEEK != 0 {
        return 0;
    }
    let conn_key = ((tgid as u64) << 32) | (fd as u32 as u64);
    if unsafe { CONNS.get(&conn_key) }.is_none() {
        return 0;
    }
    tls::nested(ctx, id, conn_key);
    stash(
        id,
        SyscallArgs {
            conn_key,
            buf: field::<u64>(ctx, 24),
            count: field::<u64>(ctx, 32),
            ts_enter_ns: now(),
            fd,
            syscall: syscall as u8,
            direction: dir as u8,
            _pad: [0; 2],
        },
    );
    0
}

/// A thread's entry stays in `ARGS` from one syscall to the next and is overwritten in place;
/// only a thread's first syscall inserts. An insert and a delete on every syscall (the LRU's
/// bucket lock and free lists) cost more than the rest of the entry and exit programs.
#[inline(always)]
pub(crate) fn stash(id: u64, args: SyscallArgs) {
    if let Some(slot) = ARGS.get_ptr_mut(&id) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe { *slot = args };
    } else if ARGS.insert(&id, &args, 0).is_err() {
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
