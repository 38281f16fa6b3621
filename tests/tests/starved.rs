//! A starved tracer stays honest: the daemon held to a quarter of a core (a cgroup CPU quota)
//! with a small ring buffer, while librdkafka produces and consumes flat out. Whatever it cannot
//! keep up with must show in a loss counter, no poll span may hang under the send span of
//! another batch, and once the load stops it must trace new traffic again.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    Broker, client, covered_offsets,
    cpu_limit::CpuLimit,
    produce_and_consume,
    receiver::{Received, Receiver},
    summary,
    tracer::{Tracer, logged},
};

/// Every counter that can account for a record without a span (as the overhead benchmark's).
const LOSS_COUNTERS: [&str; 13] = [
    "kernel_ringbuf_full_records",
    "kernel_ringbuf_full_bytes",
    "kernel_truncated_bytes",
    "kernel_read_failure_bytes",
    "buffer_full_bytes",
    "resync_skipped_bytes",
    "misplaced_skips",
    "partial_frames",
    "undecodable_requests",
    "undecodable_responses",
    "undecodable_batches",
    "unanswered_requests",
    "spans_queue_dropped",
];

fn num(s: &Received, k: &str) -> Option<i64> {
    s.attr(k)?.parse().ok()
}

#[test]
fn a_starved_tracer_counts_what_it_loses_and_catches_up() {
    const RECORDS: u64 = 200_000;
    let limit = CpuLimit::new("starved", 0.25).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = rt.block_on(Receiver::start(None)).unwrap();
    let broker = Broker::start().unwrap();
    for t in ["starved", "starved-after"] {
        broker.create_topic(t, 1).unwrap();
    }
    let endpoint = receiver.http_endpoint();
    let tracer = Tracer::start_wrapped(
        &[broker.port],
        "starved",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("KAFKA_TRACER_RING_BUFFER_BYTES", "1048576"),
        ],
        &limit.wrapper(),
    );
    let bootstrap = broker.bootstrap();
    let out: Value = serde_json::from_str(
        &client(&[
            "perf",
            "confluent",
            &bootstrap,
            "starved",
            &RECORDS.to_string(),
            "none",
            "--size",
            "1024",
        ])
        .unwrap(),
    )
    .unwrap();
    let (produced, consumed) = (
        out["produced"].as_u64().unwrap(),
        out["consumed"].as_u64().unwrap(),
    );
    let throttled = limit.throttled_periods();

    // The load has stopped: new traffic is traced again, linked, within a minute.
    produce_and_consume(&bootstrap, "starved-after", "2", "none").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let caught_up = loop {
        let after = receiver.topic("starved-after");
        let has = |n: &str| after.iter().any(|r| r.span.name == n);
        if has("send starved-after") && has("poll starved-after") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let (_, log) = tracer.stop_with_log();
    assert!(
        caught_up,
        "no linked spans for traffic after the load: {log}"
    );

    let spans = receiver.topic("starved");
    let send: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.name == "send starved")
        .collect();
    let poll: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.name == "poll starved")
        .collect();
    let (sent, polled) = (
        send.iter().map(|s| s.records()).sum::<u64>(),
        poll.iter().map(|s| s.records()).sum::<u64>(),
    );
    // A linked poll span hangs under the send span of its own records.
    let mut linked = 0;
    for p in &poll {
        let Some(parent) = send
            .iter()
            .find(|s| s.span.span_id == p.span.parent_span_id)
        else {
            continue;
        };
        linked += 1;
        let (theirs, mine) = (
            covered_offsets(|k| num(parent, k)).unwrap(),
            covered_offsets(|k| num(p, k)).unwrap(),
        );
        assert!(
            theirs.contains(mine.start()) && theirs.contains(mine.end()),
            "poll of {mine:?} under the send of {theirs:?}"
        );
    }
    let losses: Vec<String> = LOSS_COUNTERS
        .iter()
        .map(|c| (c, logged(&log, c)))
        .filter(|(_, v)| *v > 0)
        .map(|(c, v)| format!("{c}={v}"))
        .collect();
    summary(&format!(
        "e2e starved tracer (a quarter of a core, throttled in {throttled} periods, 1 MiB ring): {produced} produced, {consumed} consumed, {sent} in send spans, {polled} in poll spans ({linked} of {} linked, none under another batch); loss counters above zero: {}; traced again after the load",
        poll.len(),
        if losses.is_empty() {
            "none".to_string()
        } else {
            losses.join(" ")
        }
    ));
    assert!(throttled > 0, "the limit never held the tracer back");
    assert_eq!((produced, consumed), (RECORDS, RECORDS));
    assert!(sent <= produced && polled <= consumed, "{sent} {polled}");
    // Nothing silently lost: a record without a span is accounted for by a counter.
    if sent < produced || polled < consumed {
        assert!(
            !losses.is_empty(),
            "records without spans and no loss counted: {log}"
        );
    }
}
