//! Sock mode: `sock:sock_send_length` and `sock:sock_recv_length` fire inside the syscall that
//! moved bytes on a socket, with its `struct sock` (endpoints read at BTF offsets) and the byte
//! count, so the bytes are copied right there: which buffers the syscall used is read from the
//! task's saved user registers. No syscall tracepoint is attached, so the reads and writes of
//! files, pipes and untraced sockets, every process's, run none of the tracer's programs. The
//! TCP state tracepoints open and close connections.

use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};

use super::{
    copy::{COPY_MORE_TP, Walker, exit_data, reserve},
    *,
};

/// One copy program per direction and copy walk (`copy::Walker`): each is verified with only
/// the walk it runs, as the syscall exits are.
macro_rules! sock_copy {
    ($name:ident, $dir:ident, $walker:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_sock(&ctx, Direction::$dir, $walker);
            0
        }
    };
}

sock_copy!(sock_send_length, Egress, Walker::Loop);
sock_copy!(sock_send_length_skim, Egress, Walker::LoopSkim);
sock_copy!(
    sock_send_length_bounded,
    Egress,
    Walker::Bounded(&COPY_MORE_TP)
);
sock_copy!(sock_recv_length, Ingress, Walker::Loop);
sock_copy!(sock_recv_length_skim, Ingress, Walker::LoopSkim);
sock_copy!(
    sock_recv_length_bounded,
    Ingress,
    Walker::Bounded(&COPY_MORE_TP)
);

/// `sock:sock_{send,recv}_length` (sk@8, family@16, protocol@18, ret@20, flags@24) fire in the
/// task that made the call, after the bytes moved: the connection's stream grows by `ret`.
#[inline(always)]
fn on_sock(ctx: &TracePointContext, dir: Direction, walker: Walker) {
    let ret = field::<i32>(ctx, 20);
    if ret <= 0 {
        return;
    }
    if dir == Direction::Ingress && field::<i32>(ctx, 24) as u32 as u64 & MSG_PEEK != 0 {
        // Peeked bytes are read again by a later call.
        return;
    }
    let proto = field::<u16>(ctx, 18);
    let family = field::<u16>(ctx, 16);
    if proto != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return;
    }
    let sk = field::<u64>(ctx, 8);
    if sk == 0 {
        return;
    }
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    if !task_traced(&cfg, (id >> 32) as u32) {
        return;
    }
    // First call seen on a connection that was established before the tracer started: opened
    // here, or ignored from now on (before the registers are read).
    let mut open = None;
    if unsafe { CONNS.get(&sk) }.is_none() {
        if unsafe { IGNORED.get(&sk) }.is_some() {
            return;
        }
        let Some(tuple) = tuple_from_sock(sk, &cfg.sock) else {
            return;
        };
        let Some(how) = classify(&cfg, &tuple) else {
            let _ = IGNORED.insert(&sk, &1, 0);
            return;
        };
        open = Some((tuple, how));
    }
    let call = current_call(dir);
    if let Some((tuple, how)) = open
        && !open_conn(ctx, sk, tuple, how, flags::MIDSTREAM, call.fd)
    {
        return;
    }
    let Some(conn) = CONNS.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: map value pointer, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.fd_noted == 0 && call.fd >= 0 {
        // The connection's first call (a client's ClientHello on a TLS connection, before any
        // TLS call on it): its process is one whose TLS calls are read.
        let _ = tls::FD_SOCKS.insert(
            &((id & 0xffff_ffff_0000_0000) | call.fd as u32 as u64),
            &sk,
            0,
        );
        tls::note_process((id >> 32) as u32);
        conn.fd_noted = 1;
    }
    tls::nested(ctx, id, sk);
    if call.syscall == 0 {
        // sendfile, splice, io_uring, sendmmsg/recvmmsg: no user buffer to copy. The stream
        // still moved on: a gap the daemon sees, counted as lost on a connection it reads.
        reserve(conn, dir as u8, ret as u64);
        if conn.track == track::FULL {
            count(counter::UNCOPYABLE_BYTES, ret as u64);
        }
        return;
    }
    let args = SyscallArgs {
        conn_key: sk,
        ..call
    };
    exit_data(ctx, &args, ret as u64, false, walker);
}

/// `struct pt_regs` offsets (x86-64, the architecture the tracer is built for): the syscall
/// number as it entered (`orig_ax`) and its first three arguments (`di`, `si`, `dx`).
const REGS_ORIG_AX: u64 = 120;
const REGS_DI: u64 = 112;
const REGS_SI: u64 = 104;
const REGS_DX: u64 = 96;

/// The data syscall this task is in, read from its saved user registers: its fd, buffer (or
/// iovec array, or msghdr) and length (or iovec count). `syscall` 0 when the bytes moved
/// without one whose buffers can be read (sendfile, splice, io_uring, the mmsg calls).
#[inline(always)]
fn current_call(dir: Direction) -> SyscallArgs {
    let mut call = SyscallArgs {
        conn_key: 0,
        buf: 0,
        count: 0,
        ts_enter_ns: now(),
        fd: -1,
        syscall: 0,
        direction: dir as u8,
        _pad: [0; 2],
    };
    // SAFETY: helpers without side effects; the registers are read with the checked helper.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let reg = |off: u64| unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.ok();
    let (Some(nr), Some(fd), Some(buf), Some(count)) =
        (reg(REGS_ORIG_AX), reg(REGS_DI), reg(REGS_SI), reg(REGS_DX))
    else {
        return call;
    };
    let syscall = match (dir, nr) {
        (Direction::Egress, 1) => Syscall::Write,
        (Direction::Egress, 20) => Syscall::Writev,
        (Direction::Egress, 44) => Syscall::Sendto,
        (Direction::Egress, 46) => Syscall::Sendmsg,
        (Direction::Ingress, 0) => Syscall::Read,
        (Direction::Ingress, 19) => Syscall::Readv,
        (Direction::Ingress, 45) => Syscall::Recvfrom,
        (Direction::Ingress, 47) => Syscall::Recvmsg,
        _ => return call,
    };
    call.syscall = syscall as u8;
    call.fd = fd as i32;
    call.buf = buf;
    call.count = count;
    call
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
    let proto = field::<u16>(&ctx, 30);
    let newstate = field::<i32>(&ctx, 20);
    if proto != IPPROTO_TCP || newstate != TCP_ESTABLISHED {
        return 0;
    }
    let sk = field::<u64>(&ctx, 8);
    if unsafe { CONNS.get(&sk) }.is_some() {
        return 0;
    }
    let family = field::<u16>(&ctx, 28);
    let mut t = ConnTuple {
        family,
        lport: field::<u16>(&ctx, 24),
        rport: field::<u16>(&ctx, 26),
        ..ConnTuple::default()
    };
    if family == AF_INET {
        t.laddr[..4].copy_from_slice(&field::<[u8; 4]>(&ctx, 32));
        t.raddr[..4].copy_from_slice(&field::<[u8; 4]>(&ctx, 36));
    } else {
        t.laddr = field::<[u8; 16]>(&ctx, 40);
        t.raddr = field::<[u8; 16]>(&ctx, 56);
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
    let sk = field::<u64>(&ctx, 8);
    close_conn(&ctx, sk, -1);
    let _ = IGNORED.remove(&sk);
    0
}
