//! Kernel capture against this machine's kernel: the real eBPF programs, real sockets, real
//! syscalls. Needs root (CAP_BPF + CAP_PERFMON); `cargo xtask test` runs it so.

use std::{
    collections::HashMap,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use tests::{SendCall, frames, messages, payload, read_to_end_alternating, send_all};
use tracer::{
    capture::{Capture, CaptureConfig, CaptureMode, CopyPath, KernelCounters, RingRecord},
    pipeline::{Pipeline, PipelineConfig},
    reassembly::Stream,
};
use tracer_common::{ConnEvent, ConnTuple, DataHeader, Direction, Syscall};

/// What a test saw from the capture.
#[derive(Default)]
struct Seen {
    /// Each record's header and the stream bytes it covers (bytes skipped on purpose as
    /// zeroes).
    data: Vec<(DataHeader, Vec<u8>)>,
    opens: Vec<ConnEvent>,
    closes: Vec<ConnEvent>,
    /// The capture runs the selective copy: records may skip bytes (else none may).
    skims: bool,
}

impl Seen {
    fn take(&mut self, capture: &mut Capture) {
        capture.drain(|r| match r.expect("well-formed record") {
            RingRecord::Data(d) => {
                // A walked stream's records are runs (the selective copy's format); traffic
                // that is not Kafka is never skipped, so its runs join into the payload.
                let mut bytes = Vec::new();
                for run in d.runs() {
                    let run = run.expect("well-formed runs");
                    assert!(
                        self.skims || run.skipped == 0,
                        "bytes that are not Kafka are never skipped"
                    );
                    bytes.resize(bytes.len() + run.skipped as usize, 0);
                    bytes.extend_from_slice(run.bytes);
                }
                let mut hdr = d.hdr;
                hdr.chunk_len = bytes.len() as u32;
                self.data.push((hdr, bytes));
            }
            RingRecord::Open(e) => self.opens.push(e),
            RingRecord::Close(e) => self.closes.push(e),
            RingRecord::Tls(e) => panic!("no TLS connection in these tests: {e:?}"),
            RingRecord::Exec(_) => unreachable!("the capture keeps exec records"),
        });
    }

    /// Drains until `done` holds or `timeout` passes.
    async fn until(
        &mut self,
        capture: &mut Capture,
        timeout: Duration,
        done: impl Fn(&Seen) -> bool,
    ) {
        let end = Instant::now() + timeout;
        loop {
            self.take(capture);
            if done(self) || Instant::now() > end {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), capture.readable()).await;
        }
    }

    /// Drains until the closes of a connection's two ends have come, and checks they did. A
    /// close record comes when the kernel frees the socket, after the last FIN and ACK; on a
    /// loaded machine (guest kernels booting beside the test) one was still missing after 10 s
    /// (cause not found yet), so the wait is long and a missing close reports what was seen.
    async fn until_both_closed(&mut self, capture: &mut Capture) {
        self.until(capture, Duration::from_secs(30), |s| s.closes.len() >= 2)
            .await;
        assert_eq!(
            self.closes.len(),
            2,
            "close of both ends seen: opens {:?}, closes {:?}, kernel counters {:?}",
            self.opens,
            self.closes,
            capture.counters()
        );
    }

    /// Rebuilds each (connection, direction) stream, settled against the close totals (so a
    /// stream none of whose records arrived still shows its loss).
    fn streams(&self) -> HashMap<(u64, Direction), Rebuilt> {
        let mut out: HashMap<(u64, Direction), Rebuilt> = HashMap::new();
        for (h, bytes) in &self.data {
            let dir = Direction::from_u8(h.direction).unwrap();
            let e = out.entry((h.conn_id, dir)).or_default();
            e.first.get_or_insert(*h);
            let piece = e
                .stream
                .push(h.stream_offset + h.chunk_offset as u64, bytes);
            e.bytes.extend_from_slice(piece.bytes);
        }
        for c in &self.closes {
            for (dir, total) in [
                (Direction::Egress, c.tx_bytes),
                (Direction::Ingress, c.rx_bytes),
            ] {
                out.entry((c.conn_id, dir))
                    .or_default()
                    .stream
                    .finish(total);
            }
        }
        out
    }
}

/// One direction of one connection, rebuilt from records.
#[derive(Default)]
struct Rebuilt {
    bytes: Vec<u8>,
    stream: Stream,
    /// The first data header, where any record arrived.
    first: Option<DataHeader>,
}

/// Port filter on `port`, both ends of each connection, no detection, and this test process
/// traced too (it runs the servers).
fn config(port: u16) -> CaptureConfig {
    CaptureConfig {
        ports: vec![port],
        server_side: true,
        detect_kafka: false,
        exclude_self: false,
        ..CaptureConfig::default()
    }
}

/// The server end for tcp-peer, on a thread: reads what the peer sends (alternating read and
/// recvmsg), answers with the second side's messages, and returns what it read.
fn serve_peer(listener: TcpListener) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let got = read_to_end_alternating(conn.as_raw_fd()).unwrap();
        for (call, data) in messages(2).0 {
            send_all(conn.as_raw_fd(), call, &data).unwrap();
        }
        got
    })
}

fn has_port(t: &ConnTuple, port: u16) -> bool {
    t.lport == port || t.rport == port
}

/// A child process (tcp-peer) talks to a server thread of this process over loopback; both
/// sides' streams, rebuilt from the records, must equal what was sent, byte for byte.
async fn byte_exact(mode: CaptureMode, bind: &str, copy_path: CopyPath) {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let mut capture = Capture::start(&CaptureConfig {
        mode,
        copy_path,
        ..config(port)
    })
    .expect("capture starts");
    assert_eq!(capture.mode(), mode);
    if copy_path != CopyPath::Auto {
        assert_eq!(capture.copy_path(), copy_path);
    }

    let server = serve_peer(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_tcp-peer"))
        .arg(addr.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tcp-peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, client_sent) = messages(1);
    let (_, server_sent) = messages(2);
    assert_eq!(
        server.join().unwrap(),
        client_sent,
        "the server got what the client sent"
    );

    let mut seen = Seen::default();
    seen.until_both_closed(&mut capture).await;
    assert!(
        seen.opens.len() >= 2,
        "open of both ends seen: {:?}",
        seen.opens
    );

    let me = std::process::id();
    let streams = seen.streams();
    let side = |mine: bool, dir: Direction| {
        streams
            .iter()
            .find_map(|((_, d), r)| {
                let h = r.first.as_ref()?;
                (*d == dir && ((h.pid_tgid >> 32) as u32 == me) == mine && has_port(&h.tuple, port))
                    .then_some((&r.bytes, &r.stream, h))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {dir:?} stream of the {} side",
                    if mine { "server" } else { "client" }
                )
            })
    };
    for (mine, dir, expected) in [
        (false, Direction::Egress, &client_sent),
        (false, Direction::Ingress, &server_sent),
        (true, Direction::Ingress, &client_sent),
        (true, Direction::Egress, &server_sent),
    ] {
        let (bytes, stream, h) = side(mine, dir);
        assert_eq!(
            stream.discontinuities,
            0,
            "{dir:?} stream of pid {} has gaps",
            h.pid_tgid >> 32
        );
        assert_eq!(bytes.len(), expected.len());
        assert!(
            bytes == expected,
            "{dir:?} stream of pid {} differs",
            h.pid_tgid >> 32
        );
    }
    // The client process is not this one; its records name the server port as remote.
    let (_, _, client_hdr) = side(false, Direction::Egress);
    assert_ne!(client_hdr.pid_tgid >> 32, me as u64);
    assert_eq!(client_hdr.tuple.rport, port);
    assert_eq!(side(true, Direction::Ingress).2.tuple.lport, port);
    // Each syscall kind was seen where it was used.
    let calls = |mine: bool, dir: Direction| -> Vec<Syscall> {
        let mut v: Vec<_> = seen
            .data
            .iter()
            .filter(|(h, _)| h.direction == dir as u8 && ((h.pid_tgid >> 32) as u32 == me) == mine)
            .filter_map(|(h, _)| Syscall::from_u8(h.syscall))
            .collect();
        v.dedup();
        v
    };
    for c in [Syscall::Write, Syscall::Writev, Syscall::Sendmsg] {
        assert!(
            calls(false, Direction::Egress).contains(&c),
            "client {c:?} captured"
        );
        assert!(
            calls(true, Direction::Egress).contains(&c),
            "server {c:?} captured"
        );
    }
    for c in [Syscall::Read, Syscall::Recvmsg] {
        assert!(
            calls(true, Direction::Ingress).contains(&c),
            "server {c:?} captured"
        );
    }
    // Close records carry the kernel's totals, which match the bytes sent.
    let total = |c: &ConnEvent| (c.tx_bytes + c.rx_bytes) as usize;
    assert!(
        seen.closes
            .iter()
            .all(|c| total(c) == client_sent.len() + server_sent.len())
    );
    let k = capture.counters().unwrap();
    assert_eq!(k.lost_bytes(), 0, "{k:?}");
    assert!(k.bytes >= 2 * (client_sent.len() + server_sent.len()) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sock_mode_rebuilds_ipv4_streams_byte_exact() {
    byte_exact(CaptureMode::Sock, "127.0.0.1:0", CopyPath::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sock_mode_rebuilds_ipv6_streams_byte_exact() {
    byte_exact(CaptureMode::Sock, "[::1]:0", CopyPath::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_mode_rebuilds_streams_byte_exact() {
    byte_exact(CaptureMode::Fd, "127.0.0.1:0", CopyPath::Auto).await;
}

/// The copy kernels without `bpf_loop` get (bounded loops and tail calls), forced here: the
/// 1 MiB sendmsg takes several programs of the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounded_copy_rebuilds_streams_byte_exact_in_sock_mode() {
    byte_exact(CaptureMode::Sock, "127.0.0.1:0", CopyPath::Bounded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounded_copy_rebuilds_streams_byte_exact_in_fd_mode() {
    byte_exact(CaptureMode::Fd, "127.0.0.1:0", CopyPath::Bounded).await;
}

/// A bounded copy ends with the kernel's tail-call limit (33 calls after the first program,
/// 32 before Linux 5.17): a syscall larger than the chain can copy is delivered as an exact
/// prefix and the rest is counted as truncated, a gap of that size in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounded_copy_counts_what_its_chain_cannot_reach() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut capture = Capture::start(&CaptureConfig {
        copy_path: CopyPath::Bounded,
        max_bytes_per_syscall: 64 << 20,
        ring_buffer_bytes: 64 << 20,
        ..config(port)
    })
    .unwrap();
    const TOTAL: usize = 24 << 20;
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0; TOTAL];
        use std::io::Read as _;
        s.read_exact(&mut buf).unwrap();
    });
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let data = payload(11, TOTAL);
    send_all(client.as_raw_fd(), SendCall::Write, &data).unwrap();
    server.join().unwrap();
    drop(client);
    let mut seen = Seen::default();
    seen.until(&mut capture, Duration::from_secs(10), |s| {
        s.closes.len() >= 2
    })
    .await;
    let me = std::process::id() as u64;
    let writes: Vec<_> = seen
        .data
        .iter()
        .filter(|(h, _)| {
            h.direction == Direction::Egress as u8
                && h.pid_tgid >> 32 == me
                && h.syscall == Syscall::Write as u8
        })
        .collect();
    let first = writes.first().expect("the write was copied").0;
    // One write syscall of the whole payload (a blocking write on loopback returns when all
    // is sent), copied from its start.
    assert_eq!(first.syscall_len as usize, TOTAL);
    let copied: Vec<u8> = writes
        .iter()
        .filter(|(h, _)| h.stream_offset == first.stream_offset)
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    assert!(
        copied.len() >= 16 << 20 && copied.len() < TOTAL,
        "the chain copies at least 16 MiB and not all of 24: {}",
        copied.len()
    );
    assert!(copied == data[..copied.len()], "the copied prefix is exact");
    let k = capture.counters().unwrap();
    assert!(
        k.truncated_bytes >= (TOTAL - copied.len()) as u64,
        "the rest is counted: {k:?}"
    );
    let streams = seen.streams();
    let r = &streams[&(first.conn_id, Direction::Egress)];
    assert_eq!(r.stream.lost_bytes, (TOTAL - copied.len()) as u64);
}

/// One connection on a port in the filter and one outside it, same process, same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_outside_the_port_filter_yields_no_payload() {
    for mode in modes() {
        let inside = TcpListener::bind("127.0.0.1:0").unwrap();
        let outside = TcpListener::bind("127.0.0.1:0").unwrap();
        let (pin, pout) = (
            inside.local_addr().unwrap().port(),
            outside.local_addr().unwrap().port(),
        );
        let mut capture = Capture::start(&CaptureConfig {
            mode,
            ..config(pin)
        })
        .unwrap();
        for (l, port) in [(&inside, pin), (&outside, pout)] {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut s, _) = l.accept().unwrap();
            use std::io::{Read as _, Write as _};
            c.write_all(&payload(port as u64, 50_000)).unwrap();
            let mut buf = vec![0; 50_000];
            s.read_exact(&mut buf).unwrap();
        }
        let mut seen = Seen::default();
        seen.until(&mut capture, Duration::from_secs(5), |s| {
            s.data
                .iter()
                .map(|(h, _)| h.chunk_len as usize)
                .sum::<usize>()
                >= 100_000
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen.take(&mut capture);
        let on = |port: u16| {
            seen.data
                .iter()
                .filter(|(h, _)| has_port(&h.tuple, port))
                .map(|(h, _)| h.chunk_len as usize)
                .sum::<usize>()
        };
        assert_eq!(
            on(pin),
            100_000,
            "{mode:?}: both ends of the filtered port captured"
        );
        assert_eq!(on(pout), 0, "{mode:?}: nothing captured outside the filter");
        assert_eq!(
            seen.data.len(),
            seen.data
                .iter()
                .filter(|(h, _)| has_port(&h.tuple, pin))
                .count()
        );
    }
}

/// A ring buffer far too small for the load: records are lost, and every lost byte is counted
/// by the kernel and shows up as a gap of exactly that size in the rebuilt streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_buffer_loses_bytes_only_with_a_count() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut capture = Capture::start(&CaptureConfig {
        ring_buffer_bytes: 16 << 10,
        ..config(port)
    })
    .unwrap();
    const TOTAL: usize = 8 << 20;
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0; TOTAL];
        use std::io::Read as _;
        s.read_exact(&mut buf).unwrap();
        close_rx.recv().unwrap();
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let data = payload(7, 1 << 20);
    for _ in 0..TOTAL >> 20 {
        send_all(client.as_raw_fd(), SendCall::Write, &data).unwrap();
    }
    // Let the reader finish while nobody drains the ring: it overflows.
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = Seen::default();
    seen.take(&mut capture);
    close_tx.send(()).unwrap();
    server.join().unwrap();
    use std::io::Write as _;
    client.flush().unwrap();
    drop(client);
    seen.until(&mut capture, Duration::from_secs(5), |s| {
        s.closes.len() >= 2
    })
    .await;
    assert_eq!(
        seen.closes.len(),
        2,
        "close records arrive once there is room"
    );

    let k: KernelCounters = capture.counters().unwrap();
    assert!(
        k.ringbuf_full_records > 0 && k.ringbuf_full_bytes > 0,
        "overflow counted: {k:?}"
    );
    let streams = seen.streams();
    let delivered: u64 = streams.values().map(|r| r.bytes.len() as u64).sum();
    let gaps: u64 = streams.values().map(|r| r.stream.lost_bytes).sum();
    // Client egress and server ingress each carried TOTAL bytes. Some reads of the 8 MiB
    // backlog may also exceed the per-syscall cap: truncation is counted the same way.
    assert_eq!(delivered + k.lost_bytes(), 2 * TOTAL as u64, "{k:?}");
    assert_eq!(
        gaps,
        k.lost_bytes(),
        "every gap is counted, every count is a gap"
    );
    // Whatever did arrive sits at the right place in the stream.
    for r in streams.values() {
        assert!(r.bytes.len() <= 2 * TOTAL);
    }
}

/// A steady trickle of small writes wakes the reader far less often than once per record, and
/// no record is left behind: the reader here only waits on `readable` (no polling of its own),
/// so a record that woke nobody and was never re-read would hang it until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_between_wake_ups_arrive_without_a_wake_up_each() {
    const WRITES: usize = 100;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut capture = Capture::start(&config(port)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        use std::io::Read as _;
        s.read_to_end(&mut got).unwrap();
        got.len()
    });
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_nodelay(true).unwrap();
        for i in 0..WRITES {
            use std::io::Write as _;
            c.write_all(&[i as u8]).unwrap();
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    let mut seen = Seen::default();
    let mut wake_ups = 0;
    let end = Instant::now() + Duration::from_secs(10);
    while seen.closes.len() < 2 {
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, capture.readable())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "records left unread: {} closes and {} data records seen",
                    seen.closes.len(),
                    seen.data.len()
                )
            })
            .unwrap();
        wake_ups += 1;
        seen.take(&mut capture);
    }
    client.join().unwrap();
    assert_eq!(server.join().unwrap(), WRITES);
    let streams = seen.streams();
    let delivered: usize = streams.values().map(|r| r.bytes.len()).sum();
    assert_eq!(delivered, 2 * WRITES, "both ends' bytes, none lost");
    assert!(
        wake_ups * 3 < seen.data.len(),
        "{wake_ups} wake-ups for {} records",
        seen.data.len()
    );
}

/// A syscall above --max-bytes-per-syscall is cut, flagged, counted, and leaves a gap of the
/// cut size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_syscalls_are_truncated_visibly() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cap = 64 << 10;
    let mut capture = Capture::start(&CaptureConfig {
        max_bytes_per_syscall: cap,
        ..config(port)
    })
    .unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        read_to_end_alternating(s.as_raw_fd()).unwrap().len()
    });
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let data = payload(9, 1 << 20);
    send_all(client.as_raw_fd(), SendCall::Write, &data).unwrap();
    drop(client);
    assert_eq!(server.join().unwrap(), 1 << 20);
    let mut seen = Seen::default();
    seen.until(&mut capture, Duration::from_secs(5), |s| {
        s.closes.len() >= 2
    })
    .await;
    let me = std::process::id() as u64;
    let egress: Vec<_> = seen
        .data
        .iter()
        .filter(|(h, _)| h.direction == Direction::Egress as u8 && h.pid_tgid >> 32 == me)
        .collect();
    assert!(!egress.is_empty());
    let h = egress[0].0;
    assert!(
        h.flags & tracer_common::flags::TRUNCATED != 0,
        "record flagged truncated"
    );
    assert_eq!((h.syscall_len as usize, h.captured_len), (1 << 20, cap));
    let got: Vec<u8> = egress.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    assert_eq!(got, data[..cap as usize], "the captured prefix is exact");
    let k = capture.counters().unwrap();
    assert!(
        k.truncated_syscalls >= 1 && k.truncated_bytes >= (1 << 20) - cap as u64,
        "{k:?}"
    );
    let streams = seen.streams();
    let r = &streams[&(h.conn_id, Direction::Egress)];
    assert_eq!(r.stream.lost_bytes, (1 << 20) - cap as u64);
}

/// Bytes a connection moves with no user buffer to read (`sendfile` here; splice and io_uring
/// alike) cannot be copied, but sock mode sees them at the socket tracepoint: they are a gap
/// of exactly their size between the bytes written around them, counted as
/// `uncopyable_bytes`, never silently missing from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sock_mode_counts_bytes_sent_without_a_user_buffer_as_a_gap() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut capture = Capture::start(&CaptureConfig {
        mode: CaptureMode::Sock,
        ..config(port)
    })
    .unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        read_to_end_alternating(s.as_raw_fd()).unwrap()
    });
    let file_bytes = payload(3, 20_000);
    let path = std::env::temp_dir().join(format!("sendfile-{}", std::process::id()));
    std::fs::write(&path, &file_bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    send_all(client.as_raw_fd(), SendCall::Write, b"before").unwrap();
    let mut sent = 0;
    while sent < file_bytes.len() {
        // SAFETY: two open descriptors; the kernel advances its own file offset.
        let n = unsafe {
            libc::sendfile(
                client.as_raw_fd(),
                file.as_raw_fd(),
                std::ptr::null_mut(),
                file_bytes.len() - sent,
            )
        };
        assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
        sent += n as usize;
    }
    send_all(client.as_raw_fd(), SendCall::Write, b"after").unwrap();
    drop(client);
    let _ = std::fs::remove_file(&path);
    let received = server.join().unwrap();
    assert_eq!(received.len(), 6 + 20_000 + 5);
    let mut seen = Seen::default();
    seen.until(&mut capture, Duration::from_secs(10), |s| {
        s.closes.len() >= 2
    })
    .await;
    let k = capture.counters().unwrap();
    assert_eq!(k.uncopyable_bytes, 20_000, "{k:?}");
    // The client's end sent it all; the server's end read it all with read/recvmsg.
    let client_end = seen
        .opens
        .iter()
        .find(|e| e.tuple.rport == port)
        .expect("the client's end opened")
        .conn_id;
    let streams = seen.streams();
    let sent = &streams[&(client_end, Direction::Egress)];
    assert_eq!(sent.bytes, b"beforeafter");
    assert_eq!(sent.stream.lost_bytes, 20_000);
    let server_end = seen
        .opens
        .iter()
        .find(|e| e.tuple.lport == port)
        .expect("the server's end opened")
        .conn_id;
    assert_eq!(streams[&(server_end, Direction::Ingress)].bytes, received);
}

/// With the selective copy on, the kernel's walk skips exactly the record values of a
/// produce request and of a fetch response, at both ends of the connection (the client's
/// requests go out and its responses come in, the server's the other way round), and every
/// other byte arrives as sent: a response it cannot place (not a Fetch) is copied whole.
/// Kernels without `bpf_loop` (5.10) copy every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selective_copy_skips_exactly_the_record_values_both_ways() {
    use std::io::{Read as _, Write as _};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut capture = Capture::start(&CaptureConfig {
        selective_copy: true,
        ..config(port)
    })
    .expect("capture starts");
    let walks = capture.copy_path() == CopyPath::Loop;
    let values: Vec<Vec<u8>> = (0..20u8).map(|i| vec![b'a' + i; 1500]).collect();
    let (batch, ranges) = frames::batch(&values);
    let (produce, produce_at) = frames::produce(1, &batch);
    let (fetched, fetched_at) = frames::fetched(3, &batch);
    let sent = [produce.clone(), frames::fetch(3)].concat();
    let received = [frames::other_response(1), fetched.clone()].concat();
    // What the walk leaves of each stream: the values zeroed where it skips them.
    let zeroed = |stream: &[u8], at: usize| {
        let mut s = stream.to_vec();
        if walks {
            for r in &ranges {
                s[at + r.start..at + r.end].fill(0);
            }
        }
        s
    };
    let fetched_in_stream = frames::other_response(1).len() + fetched_at;
    let expected = [
        (Direction::Egress, zeroed(&sent, produce_at)),
        (Direction::Ingress, zeroed(&received, fetched_in_stream)),
    ];
    {
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; sent.len()];
        client.write_all(&produce).unwrap();
        server.read_exact(&mut buf[..produce.len()]).unwrap();
        server.write_all(&frames::other_response(1)).unwrap();
        client.write_all(&frames::fetch(3)).unwrap();
        server.read_exact(&mut buf[produce.len()..]).unwrap();
        assert_eq!(buf, sent);
        server.write_all(&fetched).unwrap();
        let mut got = vec![0u8; received.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, received);
    }
    let mut seen = Seen {
        skims: true,
        ..Seen::default()
    };
    seen.until_both_closed(&mut capture).await;
    let streams = seen.streams();
    for server in [false, true] {
        for (client_dir, bytes) in &expected {
            // The server's end sends what the client's receives.
            let dir = if server {
                match client_dir {
                    Direction::Egress => Direction::Ingress,
                    Direction::Ingress => Direction::Egress,
                }
            } else {
                *client_dir
            };
            let (_, r) = streams
                .iter()
                .find(|((_, d), r)| {
                    *d == dir
                        && r.first.as_ref().is_some_and(|h| {
                            has_port(&h.tuple, port) && (h.tuple.lport == port) == server
                        })
                })
                .unwrap_or_else(|| panic!("no {dir:?} stream at the server ({server}) end"));
            let at = format!(
                "{dir:?} at the {} end",
                if server { "server" } else { "client" }
            );
            assert_eq!(r.stream.discontinuities, 0, "{at}");
            assert_eq!(r.bytes.len(), bytes.len(), "{at}");
            assert!(
                r.bytes == *bytes,
                "{at}: the bytes differ from the sent ones with values zeroed (walked: {walks})"
            );
        }
    }
    let k = capture.counters().unwrap();
    assert_eq!(k.lost_bytes(), 0, "{k:?}");
    let value_bytes: u64 = values.iter().map(|v| v.len() as u64).sum();
    // Each value skipped four times: sent and received, by the client and by the server.
    let skipped = if walks { 4 * value_bytes } else { 0 };
    assert_eq!(k.skipped_bytes, skipped, "{k:?}");
    assert_eq!(
        (k.skim_unparsed_frames, k.skim_stopped_streams),
        (0, 0),
        "{k:?}"
    );
}

/// By default only clients' ends are copied: the broker's end (the filtered port is its local
/// port) would cost without adding spans, which come from clients' ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_client_end_is_captured_by_default() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let mut capture = Capture::start(&CaptureConfig {
        server_side: false,
        ..config(port)
    })
    .unwrap();
    let server = serve_peer(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_tcp-peer"))
        .arg(addr.to_string())
        .output()
        .unwrap();
    assert!(out.status.success());
    server.join().unwrap();
    let mut seen = Seen::default();
    seen.until(&mut capture, Duration::from_secs(10), |s| {
        !s.closes.is_empty()
    })
    .await;
    let me = std::process::id();
    let bytes = |server: bool| -> usize {
        seen.data
            .iter()
            .filter(|(h, _)| {
                has_port(&h.tuple, port) && ((h.pid_tgid >> 32) as u32 == me) == server
            })
            .map(|(h, _)| h.chunk_len as usize)
            .sum()
    };
    assert_eq!(bytes(false), messages(1).1.len() + messages(2).1.len());
    assert_eq!(bytes(true), 0, "the server's end is not copied");
}

/// With detection on, a connection on an unlisted port that opens with a Kafka request is
/// captured in full once userspace says so; one that opens with HTTP is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_on_an_unlisted_port_is_detected_and_other_protocols_are_dropped() {
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let kafka_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pk, ph) = (
        kafka_l.local_addr().unwrap().port(),
        http_l.local_addr().unwrap().port(),
    );
    let sniff = 512;
    let mut capture = Capture::start(&CaptureConfig {
        detect_kafka: true,
        sniff_bytes: sniff,
        ..config(unused.local_addr().unwrap().port())
    })
    .unwrap();
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    // An ApiVersions v3 request header (key 18, version 3, correlation id 1, client id "probe").
    let kafka_first = b"\x00\x00\x00\x0f\x00\x12\x00\x03\x00\x00\x00\x01\x00\x05probe\x00".to_vec();
    let http_first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let rest = payload(11, 200_000);
    let mut conns = Vec::new();
    for (l, port, first) in [(&kafka_l, pk, &kafka_first), (&http_l, ph, &http_first)] {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        send_all(c.as_raw_fd(), SendCall::Write, first).unwrap();
        // The server reads the first request, as a broker would before anything else.
        let mut buf = vec![0; first.len()];
        use std::io::Read as _;
        (&s).read_exact(&mut buf).unwrap();
        conns.push((c, s));
    }
    // Feed records to the daemon's pipeline until it has seen the first bytes of both (it judges
    // each record as it comes), then hand the verdicts to the kernel, as the daemon does. Other
    // tests' connections are sniffed too: only ours are asserted on.
    let mut data: Vec<(DataHeader, usize)> = Vec::new();
    let on = |data: &[(DataHeader, usize)], port: u16| {
        data.iter()
            .filter(|(h, _)| has_port(&h.tuple, port))
            .map(|(_, n)| *n)
            .sum::<usize>()
    };
    let end = Instant::now() + Duration::from_secs(5);
    while (on(&data, pk) < 2 * kafka_first.len() || on(&data, ph) < 2 * http_first.len())
        && Instant::now() < end
    {
        capture.drain(|r| {
            if let Ok(RingRecord::Data(d)) = &r {
                data.push((d.hdr, d.payload.len()));
            }
            pipeline.on_record(r);
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (key, is_kafka) in pipeline.take_verdicts() {
        capture.set_verdict(key, is_kafka).unwrap();
    }
    assert!(pipeline.counters().detected_kafka >= 1 && pipeline.counters().detected_other >= 1);
    for (c, s) in &conns {
        send_all(c.as_raw_fd(), SendCall::Write, &rest).unwrap();
        let mut buf = vec![0; rest.len()];
        use std::io::Read as _;
        (&*s).read_exact(&mut buf).unwrap();
    }
    drop(conns);
    let mut seen = Seen::default();
    seen.until(&mut capture, Duration::from_secs(5), |s| {
        s.closes.len() >= 4
    })
    .await;
    for (h, _) in &seen.data {
        data.push((*h, h.chunk_len as usize));
    }
    // Kafka connection: both ends, everything after the verdict.
    assert_eq!(on(&data, pk), 2 * (kafka_first.len() + rest.len()));
    // HTTP connection: only the first request, nothing after the verdict.
    assert_eq!(on(&data, ph), 2 * http_first.len());
    assert!(capture.counters().unwrap().lost_bytes() == 0);
}

/// Bad configuration is one clear error, not a panic.
#[tokio::test]
async fn bad_ring_size_is_a_clear_error() {
    let e = Capture::start(&CaptureConfig {
        ring_buffer_bytes: 10_000,
        ..CaptureConfig::default()
    })
    .err()
    .expect("refused");
    assert!(format!("{e:#}").contains("power of two"), "{e:#}");
}

/// Connections established before the capture starts are traced from their next syscall on:
/// sock mode finds them by their socket, fd mode from /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_before_the_capture_are_traced_mid_stream() {
    use std::io::{Read as _, Write as _};
    for (mode, bind) in modes()
        .into_iter()
        .flat_map(|m| [(m, "127.0.0.1:0"), (m, "[::1]:0")])
    {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let before = payload(21, 10_000);
        client.write_all(&before).unwrap();
        server.read_exact(&mut vec![0; before.len()]).unwrap();

        let mut capture = Capture::start(&CaptureConfig {
            mode,
            ..config(port)
        })
        .unwrap();
        let (request, reply) = (payload(22, 30_000), payload(23, 70_000));
        client.write_all(&request).unwrap();
        server.read_exact(&mut vec![0; request.len()]).unwrap();
        server.write_all(&reply).unwrap();
        client.read_exact(&mut vec![0; reply.len()]).unwrap();
        drop((client, server));

        let mut seen = Seen::default();
        seen.until(&mut capture, Duration::from_secs(5), |s| {
            s.closes.len() >= 2
        })
        .await;
        assert_eq!(seen.closes.len(), 2, "{mode:?}: both ends closed");
        let streams = seen.streams();
        let find = |dir: Direction, lport_is_server: bool| {
            streams
                .iter()
                .find(|((_, d), r)| {
                    *d == dir
                        && r.first
                            .is_some_and(|h| (h.tuple.lport == port) == lport_is_server)
                })
                .map(|(_, r)| r)
                .unwrap_or_else(|| panic!("{mode:?}: no {dir:?} stream"))
        };
        for (dir, server_end, expected) in [
            (Direction::Egress, false, &request),
            (Direction::Ingress, true, &request),
            (Direction::Egress, true, &reply),
            (Direction::Ingress, false, &reply),
        ] {
            let r = find(dir, server_end);
            assert!(
                r.bytes == *expected,
                "{mode:?} {dir:?} server_end={server_end}: bytes differ"
            );
            assert_eq!(r.stream.discontinuities, 0);
            assert!(
                r.first.unwrap().flags & tracer_common::flags::MIDSTREAM != 0,
                "flagged mid-stream"
            );
            // Endpoints read from the kernel's socket (sock) or /proc (fd), both families.
            let (local, remote) = tracer::capture::endpoints(&r.first.unwrap().tuple);
            let (server_addr, peer) = if server_end {
                (local, remote)
            } else {
                (remote, local)
            };
            assert_eq!(server_addr, addr, "{mode:?}: server endpoint");
            assert_eq!(peer.ip(), addr.ip(), "{mode:?}: client address");
        }
    }
}

/// The capture modes this kernel offers: fd everywhere, sock where it has the
/// `sock:sock_*_length` tracepoints.
fn modes() -> Vec<CaptureMode> {
    let sock = ["sock_send_length", "sock_recv_length"].iter().all(|t| {
        std::path::Path::new("/sys/kernel/tracing/events/sock")
            .join(t)
            .is_dir()
    });
    if sock {
        vec![CaptureMode::Sock, CaptureMode::Fd]
    } else {
        vec![CaptureMode::Fd]
    }
}

/// The cgroup v2 hierarchy (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones).
fn cgroup2_root() -> std::path::PathBuf {
    tests::mount_point("cgroup2", None).expect("a cgroup2 mount")
}

/// Three captures over the same traffic: one filtered on the client's cgroup, one on the
/// server's process, one on a process that has no traffic. Each sees exactly its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_cgroup_filters_select_whose_traffic_is_captured() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let cgroup = cgroup2_root().join(format!("kafka-tracer-test-{}", std::process::id()));
    std::fs::create_dir(&cgroup).unwrap();
    let cg_id = tracer::capture::cgroup_ids(std::slice::from_ref(&cgroup)).unwrap();
    let me = std::process::id();
    let mut by_cgroup = Capture::start(&CaptureConfig {
        cgroup_ids: cg_id,
        ..config(port)
    })
    .unwrap();
    let mut by_pid = Capture::start(&CaptureConfig {
        pids: vec![me],
        ..config(port)
    })
    .unwrap();
    let mut by_idle_pid = Capture::start(&CaptureConfig {
        pids: vec![1],
        ..config(port)
    })
    .unwrap();

    let server = serve_peer(listener);
    let child = Command::new("sh")
        .stdout(std::process::Stdio::piped())
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" \"$1\"",
            cgroup.display()
        ))
        .arg(env!("CARGO_BIN_EXE_tcp-peer"))
        .arg(addr.to_string())
        .spawn()
        .unwrap();
    let child_pid = child.id() as u64;
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    server.join().unwrap();
    std::fs::remove_dir(&cgroup).unwrap();

    let (mut a, mut b, mut c) = (Seen::default(), Seen::default(), Seen::default());
    let total = (messages(1).1.len() + messages(2).1.len()) as u32;
    let bytes = |s: &Seen| s.data.iter().map(|(h, _)| h.chunk_len).sum::<u32>();
    a.until(&mut by_cgroup, Duration::from_secs(5), |s| {
        bytes(s) >= total
    })
    .await;
    b.until(&mut by_pid, Duration::from_secs(5), |s| bytes(s) >= total)
        .await;
    c.take(&mut by_idle_pid);
    assert_eq!(
        bytes(&a),
        total,
        "cgroup filter: the client's both directions"
    );
    assert!(a.data.iter().all(|(h, _)| h.pid_tgid >> 32 == child_pid));
    assert_eq!(bytes(&b), total, "pid filter: the server's both directions");
    assert!(b.data.iter().all(|(h, _)| h.pid_tgid >> 32 == me as u64));
    assert!(c.data.is_empty(), "pid 1 sent nothing on this port");
}

/// The running kernel's (major, minor), the oracle for what auto mode and `--check` pick:
/// `bpf_loop` came in 5.17, the `sock:sock_*_length` tracepoints in 6.3.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap(), parts.next().unwrap())
}

/// Auto mode and the auto copy path settle on what this kernel offers: sock mode from 6.3,
/// fd mode before; `bpf_loop` from 5.17, the bounded copy before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_picks_what_the_kernel_offers() {
    let version = kernel_version();
    let capture = Capture::start(&CaptureConfig::default()).unwrap();
    let (mode, copy) = (capture.mode(), capture.copy_path());
    eprintln!("Linux {version:?}: {mode:?} mode, {copy:?} copy");
    let expected_mode = if version >= (6, 3) {
        CaptureMode::Sock
    } else {
        CaptureMode::Fd
    };
    let expected_copy = if version >= (5, 17) {
        CopyPath::Loop
    } else {
        CopyPath::Bounded
    };
    assert_eq!((mode, copy), (expected_mode, expected_copy));
}

/// `kafka-tracer --check` as root: every line ok or a named fallback (those this kernel's
/// version implies), the capture loaded and detached, exit 0. Without privileges: the
/// privileges line is missing with its fix, and exit 1.
#[test]
fn the_check_reports_what_this_kernel_offers() {
    let version = kernel_version();
    let out = Command::new(tests::tracer::binary())
        .arg("--check")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "{report}");
    let line = |what: &str| verdict(&report, what);
    let fallback_unless = |ok: bool| if ok { "ok" } else { "fallback" };
    assert_eq!(line("bpf_loop"), fallback_unless(version >= (5, 17)));
    assert_eq!(line("connections"), fallback_unless(version >= (6, 3)));
    for what in [
        "kernel",
        "privileges",
        "TLS privileges",
        "ring buffer",
        "tracefs",
        "syscall tracepoints",
    ] {
        assert_eq!(line(what), "ok", "{what}: {report}");
    }
    assert_eq!(line("load and detach"), "ok");
    assert!(report.contains("all gone after detach"), "{report}");
    // With the selective copy, whose walk is the largest program: loaded, and with half the
    // verifier's budget to spare, so that a kernel exploring more is seen here before one
    // refuses it (Linux 6.18.44 refused the walk as it was, at 1M instructions).
    let out = Command::new(tests::tracer::binary())
        .args(["--check", "--ports", "9092", "--record-headers", "none"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert_eq!(verdict(&report, "load and detach"), "ok", "{report}");
    if version >= (5, 16) {
        let share = report
            .split_once("% of its budget")
            .and_then(|(before, _)| before.rsplit_once('(')?.1.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no verifier share: {report}"));
        assert!(share < 50.0, "{share}% of the verifier's budget: {report}");
        if version >= (5, 17) {
            // The walk's copy variant (`sys_exit_skim` in fd mode, a socket tracepoint's in
            // sock mode) is the largest.
            assert!(report.contains("_skim ("), "{report}");
        }
    } else {
        assert!(report.contains("does not report the verifier"), "{report}");
    }

    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["--inh-caps", "-all", "--bounding-set", "-all", "--"])
        .arg(tests::tracer::binary())
        .arg("--check")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(verdict(&report, "privileges"), "MISSING", "{report}");
    // Nothing is claimed of what only a privileged process can probe.
    assert_eq!(verdict(&report, "kernel features"), "skipped", "{report}");
    assert!(report.contains("CAP_BPF and CAP_PERFMON"), "{report}");
    assert!(!report.contains("load and detach"), "not tried: {report}");
}

/// The verdict word (ok, fallback, MISSING, skipped) of `report`'s line about `what`.
fn verdict(report: &str, what: &str) -> String {
    report
        .lines()
        .find_map(|l| {
            let (word, rest) = l.trim().split_once(' ')?;
            rest.trim_start()
                .starts_with(what)
                .then(|| word.to_string())
        })
        .unwrap_or_else(|| panic!("no {what} line: {report}"))
}

/// This binary's tests again, on the older kernels users' nodes run (Debian's 5.10 and 6.1
/// cloud kernels under qemu, both at once): each passes there except the sock-mode ones (those
/// kernels lack its tracepoints), so auto mode, fd mode, the bounded copy, `--check`, the loss
/// counters and the detach are checked against real older verifiers and tracepoints.
#[test]
fn the_capture_tests_pass_on_older_kernels() {
    const SKIP: [&str; 2] = ["sock_mode", "older_kernels"];
    let me = std::env::current_exe().unwrap();
    let list = Command::new(&me)
        .args(["--list", "--format", "terse"])
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.ends_with(": test") && !SKIP.iter().any(|s| l.contains(s)))
        .count();
    let mut command = vec![me.display().to_string(), "--test-threads=1".into()];
    for s in SKIP {
        command.extend(["--skip".into(), s.into()]);
    }
    let files = [
        me.clone(),
        env!("CARGO_BIN_EXE_tcp-peer").into(),
        tests::tracer::binary(),
        "/bin/sh".into(),
        "/usr/bin/setpriv".into(),
    ];
    let guests: Vec<_> = tests::guest::kernels()
        .into_iter()
        .map(|kernel| {
            let (command, files) = (command.clone(), files.clone());
            std::thread::spawn(move || {
                let files: Vec<&std::path::Path> = files.iter().map(|f| f.as_path()).collect();
                let run = tests::guest::run(
                    &kernel,
                    env!("CARGO_BIN_EXE_guest-init").as_ref(),
                    &files,
                    &[command],
                    Duration::from_secs(1200),
                );
                (kernel.line, run)
            })
        })
        .collect();
    for guest in guests {
        let (line, run) = guest.join().unwrap();
        let run = run.unwrap_or_else(|e| panic!("the {line} guest: {e:#}"));
        let result = run
            .console
            .lines()
            .find_map(|l| l.trim().strip_prefix("test result: "))
            .unwrap_or_else(|| panic!("no test result from the {line} guest:\n{}", run.console));
        tests::summary(&format!(
            "e2e kernel {line} under qemu: capture tests {result} (guest wall time {:.0} s)",
            run.elapsed.as_secs_f64()
        ));
        assert_eq!(run.exits, [0], "the {line} guest:\n{}", run.console);
        assert!(
            result.starts_with(&format!("ok. {expected} passed; 0 failed")),
            "{expected} tests expected to pass on {line}: {result}\n{}",
            run.console
        );
    }
}
