//! Sock mode: the `sock:sock_*_length` tracepoints tie a stashed syscall to its `struct sock`
//! (endpoints read at BTF offsets), and the TCP state tracepoints open and close connections.

use super::*;

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
    if args.syscall == 0 || args.direction != dir as u8 || args.conn_key != 0 {
        // No syscall of ours under way, another socket call nested in this one, or an mmsg
        // already tied.
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
    if let Some(st) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: map value pointer, valid for this program run.
        let st = unsafe { &mut *st };
        if st.fd_noted == 0 {
            // The connection's first syscall (a client's ClientHello on a TLS connection,
            // before any TLS call on it): its process is one whose TLS calls are read.
            let _ = tls::FD_SOCKS.insert(
                &((id & 0xffff_ffff_0000_0000) | args.fd as u32 as u64),
                &sk,
                0,
            );
            tls::note_process((id >> 32) as u32);
            st.fd_noted = 1;
        }
    }
    tls::nested(ctx, id, sk);
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
