//! Hostile connections against the real tracer, broker and clients: a thousand idle Kafka
//! connections, a hundred sending garbage, frames announced at the size cap and never sent, a
//! client that never reads its responses, and a flood of tiny requests. The tracer's memory
//! stays under its bound (the DaemonSet's 64 MiB request), every oddity lands in a counter, and
//! a well-behaved producer and consumer running alongside are still traced and linked.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use tests::{
    Broker, payload, produce_and_consume, summary,
    tracer::{PeakRss, Tracer, logged, named, rss_kib},
};

/// The memory bound the deployment promises (requests.memory of the DaemonSet), in KiB.
const BOUND_KIB: u64 = 64 << 10;

/// An ApiVersions v0 request frame: the smallest request every broker answers.
fn api_versions(correlation_id: i32) -> Vec<u8> {
    let client_id = b"hostile";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Reads one response frame.
fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size)?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// Room for the thousand connections on both ends (the broker inherits the limit).
fn raise_fd_limit() {
    let limit = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: setrlimit with a valid struct; the tests run as root.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

#[test]
fn hostile_connections_leave_memory_bounded_and_clients_traced() {
    raise_fd_limit();
    let broker = Broker::start().unwrap();
    broker.create_topic("hostile", 1).unwrap();
    let addr = format!("127.0.0.1:{}", broker.port);
    let tracer = Tracer::start(broker.port, "hostile");
    let pid = tracer.child.id();
    let attached = rss_kib(pid);
    let rss = PeakRss::watch(pid);
    let mut held = Vec::new();

    // 1,000 idle connections, each after one answered request (so the tracer keeps state).
    for i in 0..1000 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&api_versions(i)).unwrap();
        read_frame(&mut s).unwrap();
        held.push(s);
    }
    // 100 connections sending 64 KiB of garbage each.
    for i in 0..100 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&payload(i, 64 << 10));
        held.push(s);
    }
    // 20 requests announced at 16 MiB (the frame cap) whose bodies never come: a framer that
    // reserved what a frame announces would hold 320 MiB.
    for i in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut head = ((16 << 20) - 1i32).to_be_bytes().to_vec();
        head.extend_from_slice(&api_versions(i)[4..]);
        s.write_all(&head).unwrap();
        held.push(s);
    }
    // A client that never reads: requests until the broker stops taking them.
    let mut deaf = TcpStream::connect(&addr).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut deaf_sent = 0;
    for i in 0..50_000 {
        if deaf.write_all(&api_versions(i)).is_err() {
            break;
        }
        deaf_sent += 1;
    }
    held.push(deaf);
    // A flood of tiny requests: 50,000 round trips, 100 in flight at a time.
    let mut flood = TcpStream::connect(&addr).unwrap();
    for round in 0..500 {
        let batch: Vec<u8> = (0..100)
            .flat_map(|i| api_versions(round * 100 + i))
            .collect();
        flood.write_all(&batch).unwrap();
        for _ in 0..100 {
            read_frame(&mut flood).unwrap();
        }
    }
    let hostile_peak = rss.peak();

    // Meanwhile, a well-behaved producer and consumer.
    produce_and_consume(&broker.bootstrap(), "hostile", "20", "none").unwrap();
    let (spans, log) = tracer.stop_with_log();
    let peak = rss.stop();
    drop(held);

    let send = named(&spans, "send hostile");
    let poll = named(&spans, "poll hostile");
    summary(&format!(
        "e2e hostile connections: 1,000 idle + 100 garbage + 20 stalled 16 MiB frames + 1 deaf ({deaf_sent} requests unread) + 50,000 tiny requests; tracer RSS {attached} KiB attached, {hostile_peak} KiB peak under them, {peak} KiB peak overall; well-behaved client: {} send and {} poll spans",
        send.len(),
        poll.len()
    ));
    assert!(
        peak < BOUND_KIB,
        "memory bound: {peak} KiB peak (attached at {attached} KiB)"
    );
    // Still tracing the good clients: one send span for the batch, polls under it.
    assert_eq!(send.len(), 1, "{log}");
    assert!(!poll.is_empty(), "{log}");
    assert!(
        poll.iter()
            .all(|p| p["parentSpanId"] == send[0]["spanId"] && p["traceId"] == send[0]["traceId"])
    );
    // Every request seen; the unread ones counted once the in-flight window overflowed.
    assert!(
        logged(&log, "requests") >= 50_000 + 1000 + deaf_sent,
        "{log}"
    );
    assert!(
        logged(&log, "unanswered_requests") >= deaf_sent.saturating_sub(256),
        "{log}"
    );
    // The garbage: skipped while searching for a frame, or framed and refused.
    assert!(
        logged(&log, "resync_skipped_bytes") + logged(&log, "undecodable_requests") > 0,
        "{log}"
    );
}
