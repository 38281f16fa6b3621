//! Open TCP sockets of running processes, from /proc: in fd mode the kernel side only learns of
//! connections through connect/accept, so the ones that already exist when the tracer starts
//! (and the listening sockets that accepted connections inherit their port from) come from here.

use std::{collections::HashMap, fs, path::Path};

use tracer_common::ConnTuple;

/// An open TCP socket of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSocket {
    pub tgid: u32,
    pub fd: i32,
    pub tuple: ConnTuple,
    pub listening: bool,
}

/// A row of /proc/<pid>/net/tcp{,6}: endpoints, TCP state and socket inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpRow {
    tuple: ConnTuple,
    state: u8,
    inode: u64,
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0a;

/// Parses `ADDR:PORT` as printed by the kernel: the address as native-endian 32-bit words in
/// hex (one for IPv4, four for IPv6), the port in hex.
fn parse_endpoint(s: &str) -> Option<([u8; 16], u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut out = [0u8; 16];
    if addr.len() != 8 && addr.len() != 32 {
        return None;
    }
    for (i, word) in addr.as_bytes().chunks(8).enumerate() {
        let w = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some((out, port))
}

fn parse_tcp_table(text: &str, family: u16) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (laddr, lport) = parse_endpoint(f.get(1)?)?;
            let (raddr, rport) = parse_endpoint(f.get(2)?)?;
            Some(TcpRow {
                tuple: ConnTuple {
                    family,
                    lport,
                    rport,
                    _pad: 0,
                    laddr,
                    raddr,
                },
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Socket inode of an fd link target such as `socket:[12345]`.
fn socket_inode(link: &Path) -> Option<u64> {
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Established and listening TCP sockets of the processes that `want` accepts, across every
/// network namespace those processes are in. Processes that vanish during the scan, or whose
/// fds cannot be read, are skipped.
pub fn tcp_sockets(proc_root: &Path, want: impl Fn(u32) -> bool) -> Vec<ProcSocket> {
    let mut by_inode: HashMap<u64, Vec<(u32, i32)>> = HashMap::new();
    // One process per network namespace, to read that namespace's tables once.
    let mut netns: HashMap<String, u32> = HashMap::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(tgid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !want(tgid) {
            continue;
        }
        let dir = entry.path();
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut any = false;
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(inode) = fs::read_link(fd.path())
                .ok()
                .as_deref()
                .and_then(socket_inode)
            {
                by_inode.entry(inode).or_default().push((tgid, n));
                any = true;
            }
        }
        if any && let Ok(ns) = fs::read_link(dir.join("ns/net")) {
            netns
                .entry(ns.to_string_lossy().into_owned())
                .or_insert(tgid);
        }
    }
    let mut out = Vec::new();
    for tgid in netns.values() {
        for (file, family) in [("tcp", libc::AF_INET), ("tcp6", libc::AF_INET6)] {
            let path = proc_root.join(tgid.to_string()).join("net").join(file);
            let Ok(text) = fs::read_to_string(path) else {
                continue;
            };
            for row in parse_tcp_table(&text, family as u16) {
                if row.state != TCP_ESTABLISHED && row.state != TCP_LISTEN {
                    continue;
                }
                for &(tgid, fd) in by_inode.get(&row.inode).into_iter().flatten() {
                    out.push(ProcSocket {
                        tgid,
                        fd,
                        tuple: row.tuple,
                        listening: row.state == TCP_LISTEN,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines copied from /proc/net/tcp and /proc/net/tcp6 on the development machine (Linux
    /// 6.18): a listener on 127.0.0.1:9092, a client connection to it, and a v6 listener.
    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:2384 01 00000000:00000000 00:00000000 00000000     0        0 81240 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:2384 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81300 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_ipv4_rows() {
        let rows = parse_tcp_table(TCP4, libc::AF_INET as u16);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].state, rows[0].inode, rows[0].tuple.lport),
            (TCP_LISTEN, 81234, 9092)
        );
        let t = rows[1].tuple;
        assert_eq!(
            (t.lport, t.rport, &t.laddr[..4], &t.raddr[..4]),
            (50000, 9092, &[127, 0, 0, 1][..], &[127, 0, 0, 1][..])
        );
        assert_eq!(rows[1].state, TCP_ESTABLISHED);
    }

    #[test]
    fn parses_ipv6_rows() {
        let rows = parse_tcp_table(TCP6, libc::AF_INET6 as u16);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].tuple.laddr, std::net::Ipv6Addr::LOCALHOST.octets());
        assert_eq!(rows[0].tuple.lport, 9092);
    }

    #[test]
    fn garbage_rows_are_skipped() {
        let text = "header\n 0: zz:1 00:00 01 x x x 0 0 1\n 1: 0100007F:2384\n\n";
        assert!(parse_tcp_table(text, 2).is_empty());
        assert_eq!(socket_inode(Path::new("socket:[77]")), Some(77));
        assert_eq!(socket_inode(Path::new("pipe:[77]")), None);
    }

    #[test]
    fn finds_own_listening_and_connected_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let me = std::process::id();
        let found = tcp_sockets(Path::new("/proc"), |p| p == me);
        let fd_of = |fd: i32| found.iter().find(|s| s.fd == fd).cloned();
        use std::os::fd::AsRawFd;
        let l = fd_of(listener.as_raw_fd()).expect("listener found");
        assert!(l.listening && l.tuple.lport == port && l.tgid == me);
        let c = fd_of(client.as_raw_fd()).expect("client found");
        assert!(!c.listening && c.tuple.rport == port);
    }
}
