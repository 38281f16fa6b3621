//! The tracer stopped as an orchestrator stops it: SIGTERM must flush and detach everything it
//! loaded, and even SIGKILL must leave no eBPF program or map behind (the kernel frees them
//! with the process's last descriptor). Checked with bpftool, by the ids the tracer's own
//! programs and maps had while it ran. Its own test binary, its tests one at a time
//! ([`ALONE`]): no other tracer loads programs meanwhile.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tests::{
    BackgroundClient, Broker, covered_offsets, summary,
    tracer::{Tracer, named},
};

/// Held by each test: the program and map checks need no other tracer starting meanwhile.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Ids of the loaded eBPF programs (`prog`) or maps (`map`).
fn ids(kind: &str) -> BTreeSet<u64> {
    let out = std::process::Command::new("bpftool")
        .args([kind, "show", "--json"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// SIGTERM and SIGKILL: every program and map the tracer made goes with it, the TLS uprobes
/// it attached to a running client's libraries (librdkafka's OpenSSL, the system's libssl)
/// included.
#[test]
fn sigterm_and_sigkill_leave_no_program_or_map_behind() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Broker::start().unwrap();
    broker.create_topic("faults-idle", 1).unwrap();
    // A client connected before each tracer starts: the tracer probes its TLS libraries.
    let client = BackgroundClient::start(&[
        "consume",
        "confluent",
        &broker.bootstrap(),
        "faults-idle",
        "1",
        "--partition",
        "0",
        "--timeout",
        "60",
    ])
    .unwrap();
    broker.wait_for_clients(1, Duration::from_secs(20)).unwrap();
    for (signal, name) in [(libc::SIGTERM, "sigterm"), (libc::SIGKILL, "sigkill")] {
        let (progs_before, maps_before) = (ids("prog"), ids("map"));
        let mut tracer = Tracer::start(broker.port, name);
        tracer.wait_logged("tls_probed_objects", |n| n >= 1);
        let progs: BTreeSet<u64> = ids("prog").difference(&progs_before).copied().collect();
        let maps: BTreeSet<u64> = ids("map").difference(&maps_before).copied().collect();
        assert!(
            progs.len() >= 10 && !maps.is_empty(),
            "{name}: {progs:?} {maps:?}"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(tracer.child.id() as i32, signal) };
        let status = tracer.child.wait().unwrap();
        if signal == libc::SIGTERM {
            assert!(status.success(), "SIGTERM: a clean exit, got {status}");
        }
        // The kernel frees them once the last reference is gone (RCU: not always at once).
        let end = Instant::now() + Duration::from_secs(10);
        let left = loop {
            let left_progs: Vec<u64> = ids("prog").intersection(&progs).copied().collect();
            let left_maps: Vec<u64> = ids("map").intersection(&maps).copied().collect();
            if (left_progs.is_empty() && left_maps.is_empty()) || Instant::now() > end {
                break (left_progs, left_maps);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            left,
            (vec![], vec![]),
            "{name}: programs and maps left behind"
        );
    }
    client.kill();
}

/// The offsets an OTLP-JSON send or poll span covers (ints are JSON strings there); none for
/// a send span whose response the tracer did not see (one in flight when it attached).
fn offsets(span: &serde_json::Value) -> Option<std::ops::RangeInclusive<i64>> {
    covered_offsets(|k| {
        tests::tracer::attr(span, k)?["intValue"]
            .as_str()?
            .parse()
            .ok()
    })
}

/// A tracer killed with SIGKILL while a producer and a consumer are running, and started again
/// (as a DaemonSet restarts it): the new one attaches next to the old one's leftovers, and
/// every record delivered after it attached has a send span, its fetches linked under it.
#[test]
fn a_tracer_killed_mid_stream_and_restarted_traces_on() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Broker::start().unwrap();
    broker.create_topic("killed", 1).unwrap();
    let first = Tracer::start(broker.port, "killed-first");
    let consumer = BackgroundClient::start(&[
        "consume",
        "confluent",
        &broker.bootstrap(),
        "killed",
        "150",
        "--partition",
        "0",
        "--timeout",
        "40",
    ])
    .unwrap();
    let producer = BackgroundClient::start(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "killed",
        "150",
        "none",
        "--partition",
        "0",
        "--flush-every",
        "1",
        "--interval",
        "0.1",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let mut first = first;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGKILL) };
    first.child.wait().unwrap();
    let second = Tracer::start(broker.port, "killed-second");
    let attached = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let produced: serde_json::Value = serde_json::from_str(&producer.finish().unwrap()).unwrap();
    consumer.finish().unwrap();
    let (spans, log) = second.stop_with_log();
    // Delivered a second after the restart: produced while the new tracer watched.
    let after: Vec<i64> = produced
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["time"].as_f64().unwrap() > attached + 1.0)
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    let send = named(&spans, "send killed");
    let poll = named(&spans, "poll killed");
    let uncovered: Vec<i64> = after
        .iter()
        .filter(|o| {
            !send
                .iter()
                .any(|s| offsets(s).is_some_and(|r| r.contains(o)))
        })
        .copied()
        .collect();
    let first_after = *after.first().expect("records after the restart");
    let polls_after: Vec<_> = poll
        .iter()
        .filter(|p| offsets(p).is_some_and(|r| *r.start() >= first_after))
        .collect();
    let linked = polls_after
        .iter()
        .filter(|p| send.iter().any(|s| s["spanId"] == p["parentSpanId"]))
        .count();
    summary(&format!(
        "e2e tracer SIGKILL and restart: {} records after the restart, {} without a send span, {linked} of {} later poll spans linked",
        after.len(),
        uncovered.len(),
        polls_after.len()
    ));
    assert!(after.len() >= 40, "attached at {attached}: {produced}");
    assert_eq!(uncovered, Vec::<i64>::new(), "{log}");
    assert!(!polls_after.is_empty(), "{} poll spans: {log}", poll.len());
    assert_eq!(linked, polls_after.len(), "{log}");
}
