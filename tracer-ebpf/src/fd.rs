//! fd mode: connections are `(tgid, fd)` pairs, learnt from connect, accept and bind exits and
//! forgotten at close (userspace seeds those that existed before the tracer from /proc).

use super::*;

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
            buf: field::<u64>(ctx, 24),
            count: 0,
            ts_enter_ns: now(),
            fd: field::<u64>(ctx, 16) as i32,
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
    let fd = field::<u64>(&ctx, 16) as u32;
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

pub(crate) fn exit_setup(ctx: &TracePointContext, args: &SyscallArgs, ret: i64) {
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
            if let Some(how) = classify(&cfg, &t)
                && open_conn(ctx, key, t, how, 0, args.fd)
            {
                tls::note_process((tgid_hi >> 32) as u32);
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
            if let Some(how) = classify(&cfg, &t)
                && open_conn(ctx, tgid_hi | ret as u32 as u64, t, how, 0, ret as i32)
            {
                tls::note_process((tgid_hi >> 32) as u32);
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
