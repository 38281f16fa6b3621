//! Hostile connections against the real tracer, broker and clients: a thousand idle Kafka
//! connections, a hundred sending garbage, frames announced at the size cap and never sent, a
//! client that never reads its responses, a broker that never answers many connections' large
//! requests, a flood of tiny requests, and more connections than the kernel's connection table
//! holds. The tracer's memory stays under its bound (the DaemonSet's 64 MiB request), every
//! oddity lands in a counter, and a well-behaved producer and consumer running alongside are
//! still traced and linked.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use tests::{
    Broker,
    frames::{compact, request_header, request_header_v1, sized},
    payload, produce_and_consume, summary,
    tracer::{PeakRss, Tracer, logged, named, rss_kib},
};
use tracer::pipeline::{DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_IN_FLIGHT};

/// The memory bound the deployment promises (requests.memory of the DaemonSet), in KiB.
const BOUND_KIB: u64 = 64 << 10;

/// An ApiVersions v0 request frame: the smallest request every broker answers.
fn api_versions(correlation_id: i32) -> Vec<u8> {
    sized(request_header_v1(18, 0, correlation_id, b"hostile"))
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
        let mut head = (DEFAULT_MAX_FRAME_BYTES as i32 - 1).to_be_bytes().to_vec();
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
    // Then every hostile connection closes: what the tracer held for them is counted.
    let (requests_before_close, unanswered_before_close) = (
        tracer.wait_logged("requests", |n| n >= 51_000),
        tracer.wait_logged("unanswered_requests", |_| true),
    );
    drop(held);
    let stalled = tracer.wait_logged("unfinished_frames", |n| n >= 20);
    let (spans, log) = tracer.stop_with_log();
    let peak = rss.stop();

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

    // Each counter against what was sent. The good clients add a few hundred exchanges at
    // most (metadata, produce, fetches, group calls): `GOOD` bounds them.
    const GOOD: u64 = 2_000;
    let answered = 1_000 + 50_000;
    let counted = |name| logged(&log, name);
    // Every request framed and decoded: the answered ones, the deaf client's (the last perhaps
    // cut by the write timeout), the stalled frames never (they are dropped at the close).
    let requests = counted("requests");
    assert!(
        (answered + deaf_sent..=answered + deaf_sent + 1 + GOOD).contains(&requests),
        "requests: {requests}, {deaf_sent} deaf: {log}"
    );
    let responses = counted("responses");
    assert!(
        (answered..=answered + GOOD).contains(&responses),
        "responses: {responses}: {log}"
    );
    // The deaf client's requests (its responses were never read, so never seen): counted as
    // the in-flight window overflowed, and the rest at the close.
    let unanswered = counted("unanswered_requests");
    assert!(
        counted("evicted_requests") >= deaf_sent.saturating_sub(DEFAULT_MAX_IN_FLIGHT as u64),
        "evicted past --max-in-flight: {deaf_sent} deaf: {log}"
    );
    assert!(
        unanswered_before_close >= deaf_sent.saturating_sub(DEFAULT_MAX_IN_FLIGHT as u64)
            && (deaf_sent..=deaf_sent + 1 + GOOD / 10).contains(&unanswered),
        "unanswered: {unanswered_before_close} before the close, {unanswered} after; {deaf_sent} deaf: {log}"
    );
    assert!(requests >= requests_before_close);
    // The 20 frames announced at 16 MiB: cut short by the close, dropped undecoded; garbage
    // whose first four bytes happen to be a size is another such frame.
    let lucky = (0..100u64)
        .filter(|i| {
            let p = payload(*i, 4);
            let size = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            (4..=100 << 20).contains(&size)
        })
        .count() as u64;
    assert!(
        (20..=20 + lucky + 1).contains(&stalled),
        "unfinished frames: {stalled}, {lucky} garbage streams start with a size: {log}"
    );
    // The garbage: every byte of the streams that start without a size is skipped while
    // searching for a frame start (or framed, if a guess looked like a request); no other
    // connection's bytes are.
    let garbage = 100 * (64 << 10) as u64;
    let skipped = counted("resync_skipped_bytes");
    let undecodable = counted("undecodable_requests");
    assert!(
        skipped <= garbage && skipped >= (100 - lucky) * (64 << 10) - undecodable * (64 << 10),
        "skipped {skipped} of {garbage} garbage bytes ({lucky} streams start with a size, {undecodable} undecodable requests): {log}"
    );
    assert!(undecodable <= 100 + lucky, "{undecodable}: {log}");
    summary(&format!(
        "e2e hostile counters: requests {requests}, responses {responses}, unanswered {unanswered} ({deaf_sent} deaf), unfinished frames {stalled} ({lucky} garbage streams start with a size), skipped {skipped} of {garbage} garbage bytes, undecodable requests {undecodable}"
    ));
    // Nothing was lost on the way: every byte reached the daemon.
    for loss in [
        "kernel_ringbuf_full_bytes",
        "kernel_read_failure_bytes",
        "buffer_full_bytes",
        "refused_records",
        "bad_records",
    ] {
        assert_eq!(counted(loss), 0, "{loss}: {log}");
    }
}

/// A unique string of `len` bytes for request `i` (`illegal`: with characters no topic name
/// may have).
fn unique(i: usize, len: usize, illegal: bool) -> Vec<u8> {
    let mut s = format!("{}{i:08}-", if illegal { "bad name/" } else { "x" }).into_bytes();
    s.resize(len, b'a' + (i % 26) as u8);
    s
}

/// Strings from the wire as a hostile client sends them, to the real broker: Produce v9
/// requests each naming a unique 1 MB topic, FindCoordinator and OffsetCommit requests with
/// unique 1 MB group ids and topic names with illegal characters, every request with a unique
/// 30 kB client id (a client id is an INT16-sized string). Before names were checked, 40 such requests took the tracer from 51 MB to
/// 198 MB and /metrics to 80 MB. Now the tracer's memory stays within 16 MiB of where it was,
/// /metrics under 1 MiB, every refused string is counted, and a well-behaved client is traced.
#[test]
fn hostile_strings_leave_memory_and_metrics_bounded() {
    const REQUESTS: usize = 40;
    let broker = Broker::start().unwrap();
    broker.create_topic("hostile-strings", 1).unwrap();
    let addr = format!("127.0.0.1:{}", broker.port);
    let metrics = format!("127.0.0.1:{}", tests::tracer::free_port());
    let tracer = Tracer::start_with(
        broker.port,
        "hostile-strings",
        &[("KAFKA_TRACER_METRICS_ADDR", metrics.as_str())],
    );
    let pid = tracer.child.id();
    let attached = rss_kib(pid);
    let rss = PeakRss::watch(pid);
    let send = |f: Vec<u8>| {
        // The broker may close a connection over such a request: one connection each.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&f).unwrap();
        let _ = read_frame(&mut s);
    };
    for i in 0..REQUESTS {
        let client_id = unique(i, 30_000, false);
        // Produce v9: null transactional id, acks 1, timeout, one topic with one partition and
        // null records.
        let mut body = vec![0];
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1000i32.to_be_bytes());
        body.push(2);
        body.extend(compact(&unique(i, 1 << 20, false)));
        body.push(2);
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend([0, 0, 0, 0]);
        send(sized(
            [request_header(0, 9, i as i32, &client_id), body].concat(),
        ));
        // FindCoordinator v3: a 1 MB group id.
        let mut body = compact(&unique(i, 1 << 20, true));
        body.extend([0, 0]);
        send(sized(
            [request_header(10, 3, i as i32, &client_id), body].concat(),
        ));
        // OffsetCommit v8: a 1 MB group id committing an offset of an illegally named topic.
        let mut body = compact(&unique(i, 1 << 20, true));
        body.extend_from_slice(&(-1i32).to_be_bytes()); // generation
        body.extend(compact(b"")); // member id
        body.push(0); // null group instance id
        body.push(2);
        body.extend(compact(&unique(i, 300, true)));
        body.push(2);
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&7i64.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes()); // leader epoch
        body.push(0); // null metadata
        body.extend([0, 0, 0]);
        send(sized(
            [request_header(8, 8, i as i32, &client_id), body].concat(),
        ));
    }
    let hostile_peak = rss.peak();
    produce_and_consume(&broker.bootstrap(), "hostile-strings", "5", "none").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let body = tests::tracer::scrape(&metrics);
    let (spans, log) = tracer.stop_with_log();
    let peak = rss.stop();
    let invalid = logged(&log, "invalid_names");
    summary(&format!(
        "e2e hostile strings: {REQUESTS} x (Produce naming a 1 MB topic, FindCoordinator and OffsetCommit with 1 MB groups), each with a 30 kB client id; tracer RSS {attached} KiB attached, {hostile_peak} KiB peak under them; /metrics {} bytes; invalid_names {invalid}; well-behaved client: {} send spans",
        body.len(),
        named(&spans, "send hostile-strings").len()
    ));
    assert!(
        hostile_peak < attached + (16 << 10),
        "memory: {attached} KiB -> {hostile_peak} KiB (lost to a full ring: {} records, {} opens and closes; {} connections evicted idle)",
        logged(&log, "kernel_ringbuf_full_records"),
        logged(&log, "kernel_ringbuf_full_conn_events"),
        logged(&log, "evicted_connections"),
    );
    assert!(peak < BOUND_KIB, "{peak} KiB");
    assert!(body.len() < 1 << 20, "/metrics is {} bytes", body.len());
    assert!(
        !body.contains("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        "{}",
        &body[..4096.min(body.len())]
    );
    // Each request's client id, and its topic or group name (the OffsetCommit's topic too):
    // 3 client ids + 4 names per round, each refused at least once.
    assert!(invalid >= (7 * REQUESTS) as u64, "{invalid} refused: {log}");
    assert_eq!(named(&spans, "send hostile-strings").len(), 1, "{log}");
    assert!(!named(&spans, "poll hostile-strings").is_empty(), "{log}");
    assert!(
        spans
            .iter()
            .all(|s| s["name"].as_str().is_some_and(|n| n.len() < 300)),
        "span names bounded"
    );
}

/// A broker that takes requests and never answers, and eight connections sending it 64
/// produce requests of 64 KiB each: 32 MiB in flight, while each connection stays far under
/// the count bound (`--max-in-flight`, 1,024), so only the bound on what every connection's
/// requests hold together (`--max-in-flight-bytes`, set to 16 MiB here to keep the load light
/// beside the other tests) can keep the tracer's memory in check. Past it exactly the requests
/// over the bound are given up, counted as evicted; the close reports the rest unanswered.
#[test]
fn requests_in_flight_are_bounded_in_bytes_across_connections() {
    const CONNECTIONS: usize = 8;
    const PER_CONNECTION: usize = 64;
    const VALUE: usize = 64 << 10;
    const BOUND: u64 = 16 << 20;
    let deaf = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = deaf.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in deaf.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || std::io::copy(&mut s, &mut std::io::sink()));
        }
    });
    let tracer = Tracer::start_with(
        port,
        "hostile-in-flight",
        &[("KAFKA_TRACER_MAX_IN_FLIGHT_BYTES", &BOUND.to_string())],
    );
    let pid = tracer.child.id();
    let attached = rss_kib(pid);
    let rss = PeakRss::watch(pid);
    let (batch, _) = tests::frames::batch(&[payload(7, VALUE)]);
    let mut held = Vec::new();
    let mut sent = 0;
    for c in 0..CONNECTIONS {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for i in 0..PER_CONNECTION {
            let (frame, _) = tests::frames::produce((c * PER_CONNECTION + i) as i32, &batch);
            s.write_all(&frame).unwrap();
            sent += 1;
        }
        // Paced to what the tracer has framed (4 MiB at a time, half the ring buffer): a
        // full ring would lose requests, and the counts below are exact.
        tracer.wait_logged("requests", |n| n >= sent);
        held.push(s);
    }
    let evicted = tracer.wait_logged("evicted_requests", |_| true);
    drop(held);
    let unanswered = tracer.wait_logged("unanswered_requests", |n| n >= sent);
    let (_, log) = tracer.stop_with_log();
    let peak = rss.stop();
    summary(&format!(
        "e2e requests in flight: {CONNECTIONS} connections x {PER_CONNECTION} produce requests of {} KiB to a broker that never answers; {evicted} of {sent} evicted past --max-in-flight-bytes, {unanswered} unanswered in all; tracer RSS {attached} KiB attached, {peak} KiB peak",
        VALUE >> 10
    ));
    assert_eq!(logged(&log, "kernel_ringbuf_full_records"), 0, "{log}");
    assert_eq!(logged(&log, "requests"), sent, "{log}");
    // Each request weighs its 64 KiB frame and under 2 KiB more (its decoded state, the
    // client id, the record table), so 248 to 255 of them fit in 16 MiB.
    let fit = BOUND / (VALUE as u64 + 2048)..=BOUND / VALUE as u64 - 1;
    assert!(
        fit.contains(&(sent - evicted)),
        "{evicted} of {sent} evicted: {} held, {fit:?} fit in {BOUND} bytes: {log}",
        sent - evicted
    );
    assert_eq!(unanswered, sent, "{log}");
    assert!(peak < BOUND_KIB, "{peak} KiB");
}

/// More connections than the kernel's connection table holds (`--kernel-connections`, 128
/// here): the kernel drops the least recently used, and the daemon counts each such connection
/// when it goes idle (`forgotten_connections`), while connections the kernel still follows go
/// idle uncounted. Each connection sends one request to a listener that never answers.
#[test]
fn connections_the_kernels_full_table_drops_are_counted() {
    const TABLE: u64 = 128;
    raise_fd_limit();
    let deaf = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = deaf.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in deaf.incoming() {
            let Ok(s) = s else { return };
            held.push(s);
        }
    });
    let tracer = Tracer::start_with(
        port,
        "kernel-table",
        &[
            ("KAFKA_TRACER_KERNEL_CONNECTIONS", &TABLE.to_string()),
            ("KAFKA_TRACER_IDLE_TIMEOUT", "2s"),
        ],
    );
    let mut sent = 0u64;
    let mut open = |n: u64| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(&api_versions(sent as i32)).unwrap();
                sent += 1;
                s
            })
            .collect()
    };
    // Within the table: the kernel still follows them when they go idle.
    let few = open(50);
    tracer.wait_logged("requests", |n| n >= 50);
    tracer.wait_logged("evicted_connections", |n| n >= 50);
    // A connection the kernel no longer follows is counted one eviction pass (a stats
    // interval, 1 s) after it goes idle, unless its close comes in between.
    std::thread::sleep(Duration::from_secs(3));
    let within = tracer.wait_logged("forgotten_connections", |_| true);
    // Past it: of 400 more, all but at most a table's worth were dropped by the kernel.
    let many = open(400);
    tracer.wait_logged("requests", |n| n >= 450);
    tracer.wait_logged("evicted_connections", |n| n >= 450);
    let forgotten = tracer.wait_logged("forgotten_connections", |n| n >= 400 - TABLE);
    drop((few, many));
    let (_, log) = tracer.stop_with_log();
    summary(&format!(
        "e2e kernel connection table of {TABLE}: 50 connections idle within it, {within} forgotten; 400 more, {forgotten} forgotten by the kernel and counted"
    ));
    assert_eq!(within, 0, "{log}");
    assert!(
        (400 - TABLE..=400).contains(&forgotten),
        "{forgotten} of 400 forgotten: {log}"
    );
    assert_eq!(logged(&log, "requests"), 450, "{log}");
}
