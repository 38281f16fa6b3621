//! Helpers shared by the end-to-end tests: deterministic payloads, sockets driven with the exact
//! syscalls the capture must understand, and collection of capture records.

use std::{io, os::fd::RawFd};

/// How a message is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendCall {
    Write,
    /// writev with the buffer split into uneven iovecs.
    Writev,
    /// sendmsg with the buffer split into uneven iovecs.
    Sendmsg,
}

/// The messages each side sends: 1 byte, 100 KiB and 1 MiB, each with a different syscall.
pub const MESSAGES: [(SendCall, usize); 3] = [
    (SendCall::Write, 1),
    (SendCall::Writev, 100 << 10),
    (SendCall::Sendmsg, 1 << 20),
];

/// Deterministic pseudo-random bytes (xorshift64*), different for each seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The messages of one side, seeded by `side`, and their concatenation.
pub fn messages(side: u64) -> (Vec<(SendCall, Vec<u8>)>, Vec<u8>) {
    let msgs: Vec<_> = MESSAGES
        .iter()
        .enumerate()
        .map(|(i, &(call, len))| (call, payload(side * 16 + i as u64, len)))
        .collect();
    let all = msgs.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    (msgs, all)
}

fn check(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Uneven iovec boundaries, to exercise the kernel walk across iovecs and chunks.
fn split(data: &[u8]) -> Vec<&[u8]> {
    let cuts = [1, 4095, 8193, 262_144];
    let mut parts = Vec::new();
    let mut rest = data;
    for c in cuts {
        if rest.len() <= c {
            break;
        }
        let (a, b) = rest.split_at(c);
        parts.push(a);
        rest = b;
    }
    parts.push(rest);
    parts
}

/// Sends all of `data` on `fd` with `call` (continuing with the same call after a short send).
pub fn send_all(fd: RawFd, call: SendCall, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = match call {
            // SAFETY: valid buffer of the given length.
            SendCall::Write => check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })?,
            SendCall::Writev | SendCall::Sendmsg => {
                let iov: Vec<libc::iovec> = split(data)
                    .iter()
                    .map(|p| libc::iovec {
                        iov_base: p.as_ptr() as *mut _,
                        iov_len: p.len(),
                    })
                    .collect();
                if call == SendCall::Writev {
                    // SAFETY: iovecs point into `data`, alive for the call.
                    check(unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as i32) })?
                } else {
                    // SAFETY: as above; the msghdr only names the iovecs.
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.as_ptr() as *mut _;
                    msg.msg_iovlen = iov.len();
                    check(unsafe { libc::sendmsg(fd, &msg, 0) })?
                }
            }
        };
        data = &data[n..];
    }
    Ok(())
}

/// Reads until EOF, alternating read(2) and recvmsg(2) with two iovecs.
pub fn read_to_end_alternating(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut a, mut b) = (vec![0u8; 3000], vec![0u8; 70_000]);
    for i in 0.. {
        let n = if i % 2 == 0 {
            // SAFETY: valid buffer.
            let n = check(unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) })?;
            out.extend_from_slice(&b[..n]);
            n
        } else {
            let mut iov = [
                libc::iovec {
                    iov_base: a.as_mut_ptr().cast(),
                    iov_len: a.len(),
                },
                libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                },
            ];
            // SAFETY: the msghdr names two valid iovecs.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = 2;
            let n = check(unsafe { libc::recvmsg(fd, &mut msg, 0) })?;
            out.extend_from_slice(&a[..n.min(a.len())]);
            if n > a.len() {
                out.extend_from_slice(&b[..n - a.len()]);
            }
            n
        };
        if n == 0 {
            break;
        }
    }
    Ok(out)
}
