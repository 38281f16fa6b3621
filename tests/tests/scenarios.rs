//! End-to-end scenarios as a user meets them: the real `kafka-tracer` binary as its own
//! process, a real broker (tansu), real clients (confluent-kafka / librdkafka and kafka-python),
//! spans exported over HTTP/protobuf (the OpenTelemetry default) to a real Jaeger and found
//! again through its query API, by topic, service and offset (the outage scenario uses the
//! test receiver, which it can stop and start). Each scenario ends with a one-line summary (also collected in
//! target/e2e-summary.txt, which `cargo xtask test` prints).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    BackgroundClient, Broker, client, consume, covered_offsets,
    jaeger::Jaeger,
    receiver::Receiver,
    seen::{Seen, records as delivered},
    summary,
    tracer::{PeakRss, Tracer, free_port, logged, scrape},
};

/// What a scenario runs against: Jaeger, and a broker with `topic` in `partitions` partitions.
fn parts(topic: &str, partitions: u32) -> (Jaeger, Broker) {
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::start().unwrap();
    broker.create_topic(topic, partitions).unwrap();
    (jaeger, broker)
}

/// The tracer's environment for exporting to `jaeger` with the default OTLP protocol.
fn otlp(jaeger: &Jaeger) -> Vec<(&'static str, String)> {
    vec![("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_http_endpoint())]
}

/// The spans a stopped tracer exported (its last stats line says how many), once Jaeger
/// holds them all.
fn settled(jaeger: &Jaeger, log: &str) -> Vec<tests::receiver::Received> {
    jaeger.settle(logged(log, "spans_exported"))
}

fn start_tracer(port: u16, name: &str, env: &[(&str, String)]) -> Tracer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Tracer::start_with(port, name, &env)
}

/// Every codec, produced by both client libraries and consumed by librdkafka: each batch has a
/// send span covering its records, and each fetched batch a poll span under it.
#[test]
fn every_codec_is_traced_and_linked() {
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::start().unwrap();
    let tracer = start_tracer(broker.port, "codecs", &otlp(&jaeger));
    let mut produced = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        broker.create_topic(&topic, 1).unwrap();
        let mut mine = Vec::new();
        for lib in ["confluent", "kafka-python"] {
            let out = client(&[
                "produce",
                lib,
                &broker.bootstrap(),
                &topic,
                "4",
                codec,
                "--partition",
                "0",
            ])
            .unwrap();
            mine.extend(delivered(&out));
        }
        let consumed = delivered(&consume(&broker.bootstrap(), &topic, "8").unwrap());
        produced.push((codec, topic, mine, consumed));
    }
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    for (codec, topic, mine, consumed) in &produced {
        let seen = jaeger.seen(topic);
        seen.summary(&format!("codec {codec}"), mine);
        assert_eq!(seen.send.len(), 2, "one batch per client ({codec}): {log}");
        assert_eq!(seen.lost(mine), 0, "{codec}");
        assert_eq!(consumed.len(), 8, "{codec}");
        assert_eq!(
            seen.unpolled(consumed),
            0,
            "{codec}: every consumed record polled: {log}"
        );
        assert!(!seen.poll.is_empty(), "{codec}");
        assert_eq!(seen.linked(), seen.poll.len(), "{codec}");
        for s in &seen.send {
            assert_eq!(
                s.attr("messaging.kafka.compression").as_deref(),
                Some(*codec),
                "{codec}"
            );
        }
    }
}

/// A consumer group (kafka-python, subscribing) over three partitions: its poll spans carry
/// the group's name, and /metrics shows its lag and commits per partition.
#[test]
fn consumer_groups_are_named_and_their_lag_measured() {
    let (jaeger, broker) = parts("groups", 3);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env = otlp(&jaeger);
    env.push(("KAFKA_TRACER_METRICS_ADDR", metrics.clone()));
    let tracer = start_tracer(broker.port, "groups", &env);
    let produced = delivered(
        &client(&[
            "produce",
            "confluent",
            &broker.bootstrap(),
            "groups",
            "30",
            "none",
        ])
        .unwrap(),
    );
    let consumed = delivered(
        &client(&[
            "consume",
            "kafka-python",
            &broker.bootstrap(),
            "groups",
            "30",
            "--group",
            "scenario-group",
            "--timeout",
            "40",
        ])
        .unwrap(),
    );
    let partitions: BTreeSet<i64> = produced.iter().map(|(p, _)| *p).collect();
    // Scrape once the group's commit of every partition has reached /metrics.
    let committed = |body: &str| {
        partitions.iter().all(|p| {
            body.contains(&format!(
                r#"kafka_consumer_committed_offset{{group="scenario-group",topic="groups",partition="{p}"}}"#
            ))
        })
    };
    let mut body = scrape(&metrics);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !committed(&body) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        body = scrape(&metrics);
    }
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    let seen = jaeger.seen("groups");
    seen.summary("consumer group", &produced);
    assert_eq!(seen.lost(&produced), 0);
    assert_eq!(consumed.len(), 30);
    assert_eq!(
        seen.unpolled(&consumed),
        0,
        "every consumed record polled: {log}"
    );
    assert!(!seen.poll.is_empty());
    assert_eq!(seen.linked(), seen.poll.len());
    for p in &seen.poll {
        assert_eq!(
            p.attr("messaging.consumer.group.name").as_deref(),
            Some("scenario-group")
        );
    }
    assert!(partitions.len() > 1, "keys spread over partitions");
    for p in partitions {
        let series = format!(r#"group="scenario-group",topic="groups",partition="{p}"}}"#);
        for family in ["kafka_consumer_lag", "kafka_consumer_committed_offset"] {
            assert!(
                body.contains(&format!("{family}{{{series}")),
                "{family} for partition {p}: {body}"
            );
        }
    }
}

/// Many small batches over three partitions with no linger: librdkafka pipelines requests on
/// one connection. Every record is covered by a send span, every poll span is linked.
#[test]
fn partitions_and_pipelined_requests_are_all_traced() {
    let (jaeger, broker) = parts("pipelined", 3);
    let tracer = start_tracer(broker.port, "pipelined", &otlp(&jaeger));
    let produced = delivered(
        &client(&[
            "produce",
            "confluent",
            &broker.bootstrap(),
            "pipelined",
            "3000",
            "none",
            "--linger-ms",
            "0",
            // Batches of at most 16 KiB: dozens of requests, more than one in flight.
            "--batch-bytes",
            "16384",
            "--size",
            "200",
        ])
        .unwrap(),
    );
    let consumed = delivered(
        &client(&[
            "consume",
            "confluent",
            &broker.bootstrap(),
            "pipelined",
            "3000",
            "--group",
            "pipelined-group",
            "--timeout",
            "40",
        ])
        .unwrap(),
    );
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    let seen = jaeger.seen("pipelined");
    seen.summary("partitions and pipelining", &produced);
    // Requests in flight together: send spans of one process that overlap in time without
    // being the same request.
    let mut requests: Vec<(u64, u64)> = seen
        .send
        .iter()
        .map(|s| (s.span.start_time_unix_nano, s.span.end_time_unix_nano))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    requests.sort();
    let overlapping = requests.windows(2).filter(|w| w[1].0 < w[0].1).count();
    summary(&format!(
        "e2e partitions and pipelining: {} produce requests, {overlapping} started before the previous one was answered",
        requests.len()
    ));
    assert_eq!(produced.len(), 3000);
    assert_eq!(seen.lost(&produced), 0, "{log}");
    assert_eq!(consumed.len(), 3000);
    assert_eq!(
        seen.unpolled(&consumed),
        0,
        "every consumed record polled: {log}"
    );
    let partitions: BTreeSet<String> = seen
        .send
        .iter()
        .filter_map(|s| s.attr("messaging.destination.partition.id"))
        .collect();
    assert_eq!(partitions.len(), 3);
    assert!(!seen.poll.is_empty());
    assert_eq!(seen.linked(), seen.poll.len());
    assert!(overlapping > 0, "pipelined requests: {requests:?}");
}

/// A producer and a consumer already running when the tracer starts: it picks their
/// connections up mid-stream, names the topic the consumer's Fetch v16 only gives by id (it
/// asks the broker), and links what it sees.
#[test]
fn clients_started_before_the_tracer_are_traced_from_attach() {
    let (jaeger, broker) = parts("early", 1);
    let consumer = BackgroundClient::start(&[
        "consume",
        "confluent",
        &broker.bootstrap(),
        "early",
        "40",
        "--partition",
        "0",
        "--timeout",
        "30",
    ])
    .unwrap();
    let producer = BackgroundClient::start(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "early",
        "40",
        "none",
        "--partition",
        "0",
        "--flush-every",
        "1",
        "--interval",
        "0.15",
    ])
    .unwrap();
    // Both clients connected (each keeps a connection to the broker) before the tracer starts.
    broker.wait_for_clients(2, Duration::from_secs(20)).unwrap();
    let tracer = start_tracer(broker.port, "early", &otlp(&jaeger));
    let attached = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let produced: Vec<(i64, i64, f64)> = {
        let v: Value = serde_json::from_str(&producer.finish().unwrap()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["partition"].as_i64().unwrap(),
                    r["offset"].as_i64().unwrap(),
                    r["time"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    consumer.finish().unwrap();
    let (_, log) = tracer.stop_with_log();
    let all = settled(&jaeger, &log);
    let seen = jaeger.seen("early");
    // Records delivered a second after attach were produced while the tracer was watching.
    let after: Vec<(i64, i64)> = produced
        .iter()
        .filter(|(_, _, t)| *t > attached + 1.0)
        .map(|(p, o, _)| (*p, *o))
        .collect();
    seen.summary("clients before the tracer", &after);
    assert!(after.len() >= 10, "{produced:?}");
    assert_eq!(seen.lost(&after), 0, "{log}");
    assert!(!seen.poll.is_empty(), "fetches by topic id named: {log}");
    // Batches produced before the tracer attached have no send span to link to.
    let (first_after, unlinked) = (after[0].1, seen.poll.len() - seen.linked());
    let polled_before = seen
        .poll
        .iter()
        .filter(|p| {
            let offsets = covered_offsets(|k| p.attr(k)?.parse().ok()).unwrap();
            *offsets.start() < first_after
        })
        .count();
    assert!(
        unlinked <= polled_before,
        "{unlinked} unlinked, {polled_before} polled before"
    );
    let misnamed: Vec<(String, Option<String>)> = all
        .iter()
        .filter(|r| r.attr("messaging.destination.name").as_deref() != Some("early"))
        .map(|r| (r.span.name.clone(), r.attr("messaging.destination.name")))
        .collect();
    assert!(
        misnamed.is_empty(),
        "no span named by topic id: {misnamed:?}"
    );
}

/// The broker restarts while a producer is sending: the client reconnects, the tracer keeps
/// tracing the new connections, and nothing crashes.
#[test]
fn a_broker_restart_is_survived() {
    let (jaeger, mut broker) = parts("restart", 1);
    let tracer = start_tracer(broker.port, "restart", &otlp(&jaeger));
    let producer = BackgroundClient::start(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "restart",
        "50",
        "none",
        "--partition",
        "0",
        "--flush-every",
        "1",
        "--interval",
        "0.1",
        "--tolerate-errors",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart().unwrap();
    broker.create_topic("restart", 1).unwrap();
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let out = producer.finish().unwrap();
    let produced = delivered(&out);
    // tansu keeps its log in memory: offsets start again from 0 after the restart, so the
    // records delivered last are the new log's.
    let after: Vec<(i64, i64)> = {
        let restart_at = produced
            .windows(2)
            .position(|w| w[1].1 < w[0].1)
            .map_or(0, |i| i + 1);
        produced[restart_at..].to_vec()
    };
    let consumed =
        delivered(&consume(&broker.bootstrap(), "restart", &after.len().to_string()).unwrap());
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    let seen = jaeger.seen("restart");
    let before = seen
        .send
        .iter()
        .filter(|s| s.span.start_time_unix_nano < restarted)
        .count();
    seen.summary("broker restart", &produced);
    assert!(before > 0, "spans before the restart");
    assert!(after.len() >= 10, "{out}");
    assert!(
        after.iter().all(|(p, o)| seen.send.iter().any(|s| {
            s.span.start_time_unix_nano > restarted
                && s.attr("messaging.destination.partition.id") == Some(p.to_string())
                && s.attr("messaging.kafka.offset") == Some(o.to_string())
        })),
        "every record after the restart traced: {log}"
    );
    assert!(!seen.poll.is_empty());
    assert_eq!(seen.linked(), seen.poll.len());
    assert_eq!(consumed, after, "the new log, consumed");
    assert_eq!(
        seen.unpolled(&consumed),
        0,
        "every consumed record polled: {log}"
    );
    assert!(log.contains("detaching"), "clean exit: {log}");
}

/// How long the OTLP receiver stays away in the outage scenario.
const OUTAGE: Duration = Duration::from_secs(60);

/// The OTLP receiver goes away for [`OUTAGE`] while a producer keeps sending, and comes back on
/// the same port: the tracer stays up with bounded memory, counts what it could not deliver,
/// and delivers again afterwards; every span is delivered, failed or dropped, none unaccounted.
#[test]
fn an_otlp_receiver_outage_is_counted_and_export_resumes() {
    let (rt, receiver) = Receiver::in_background();
    let broker = Broker::start().unwrap();
    broker.create_topic("outage", 1).unwrap();
    let ports = (receiver.port, receiver.http_port);
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint())];
    env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "1000".into()));
    let tracer = start_tracer(broker.port, "outage", &env);
    let pid = tracer.child.id();
    let bootstrap = broker.bootstrap();
    // One request, hence one send span, per record; `interval` seconds between records.
    let produce_args = |n: &'static str, interval: &'static str| {
        vec![
            "produce".to_string(),
            "confluent".into(),
            bootstrap.clone(),
            "outage".into(),
            n.into(),
            "none".into(),
            "--partition".into(),
            "0".into(),
            "--flush-every".into(),
            "1".into(),
            "--interval".into(),
            interval.into(),
        ]
    };
    let produce = |n, interval| {
        let args = produce_args(n, interval);
        delivered(&client(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap())
    };
    let wait_for = |r: &Receiver, n: usize| {
        let end = Instant::now() + Duration::from_secs(10);
        while Seen::of(r, "outage").send.len() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = produce("3", "0");
    wait_for(&receiver, 3);
    let before = Seen::of(&receiver, "outage");
    let attached_kib = tests::tracer::rss_kib(pid);
    let rss = PeakRss::watch(pid);
    drop(receiver);
    // Steady traffic through the outage: 5 records a second.
    let outage_start = Instant::now();
    let steady_args = produce_args("250", "0.2");
    let steady =
        BackgroundClient::start(&steady_args.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
    std::thread::sleep(OUTAGE.saturating_sub(outage_start.elapsed()));
    let receiver = {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            match rt.block_on(Receiver::start(Some(ports))) {
                Ok(r) => break r,
                Err(e) if Instant::now() > end => panic!("receiver did not come back: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    let during = delivered(&steady.finish().unwrap());
    let last = produce("3", "0");
    wait_for(&receiver, 3);
    let (_, log) = tracer.stop_with_log();
    let peak_kib = rss.stop();
    let after = Seen::of(&receiver, "outage");
    let all: Vec<(i64, i64)> = first.iter().chain(&during).chain(&last).copied().collect();
    summary(&format!(
        "e2e OTLP outage of {} s: {} records produced, {} send spans before the outage, {} after, {} spans failed, tracer RSS {} KiB at the start and {} KiB peak",
        OUTAGE.as_secs(),
        all.len(),
        before.send.len(),
        after.send.len(),
        logged(&log, "spans_export_failed"),
        attached_kib,
        peak_kib,
    ));
    assert_eq!(before.lost(&first), 0);
    assert_eq!(after.lost(&last), 0, "export resumed: {log}");
    assert!(
        logged(&log, "spans_export_failed") >= 150,
        "the outage's spans counted as failed: {log}"
    );
    assert_eq!(
        logged(&log, "producer_spans") + logged(&log, "consumer_spans"),
        logged(&log, "spans_exported")
            + logged(&log, "spans_export_failed")
            + logged(&log, "spans_queue_dropped")
            + logged(&log, "export_queue")
            + logged(&log, "spans_sampled_out"),
        "every span accounted for: {log}"
    );
    assert!(
        peak_kib < attached_kib + (16 << 10),
        "memory stays bounded: {attached_kib} KiB -> {peak_kib} KiB"
    );
}
