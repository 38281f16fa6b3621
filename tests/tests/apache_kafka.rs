//! End-to-end scenarios against Apache Kafka itself (4.4, KRaft, one node), with the clients
//! most producers and consumers use: the Java client (kafka-clients, Kafka Streams), the Go
//! clients franz-go and sarama, and librdkafka. Every record a producer reports delivered must
//! be covered by a send span, and every record a consumer reports consumed by a poll span that
//! hangs under its send span; the negotiated Produce and Fetch versions, codecs, headers and
//! group protocols are those of the README's client table, each row checked here. The spans
//! go to a real Jaeger and are read back through its query API: by topic, by service, and by
//! offset for single-record batches.

use std::time::Duration;

use tests::{
    BackgroundClient, Broker, TRACEPARENT, client,
    jaeger::Jaeger,
    receiver::{Received, hex},
    seen::{self, Seen, records},
    summary,
    tracer::{Tracer, free_port, logged, sample, scrape},
};

/// A tracer exporting to `jaeger` over OTLP/HTTP, on the broker's port.
fn tracer(broker: &Broker, name: &str, jaeger: &Jaeger) -> Tracer {
    let endpoint = jaeger.otlp_http_endpoint();
    Tracer::start_with(
        broker.port,
        name,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    )
}

/// The same, with /metrics on a free port: the tracer and that address.
fn tracer_with_metrics(broker: &Broker, name: &str, jaeger: &Jaeger) -> (Tracer, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let endpoint = jaeger.otlp_http_endpoint();
    let tracer = Tracer::start_with(
        broker.port,
        name,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("KAFKA_TRACER_METRICS_ADDR", metrics.as_str()),
        ],
    );
    (tracer, metrics)
}

/// Every span a stopped tracer exported (its last stats line says how many), once Jaeger
/// holds them all.
fn settled(jaeger: &Jaeger, log: &str) -> Vec<Received> {
    jaeger.settle(logged(log, "spans_exported"))
}

/// The client id each test client sends.
fn client_id(lib: &str) -> String {
    format!("tracer-test-{lib}")
}

/// One row of the client table: who produces with which codec, who consumes and how, and the
/// Produce and Fetch versions the clients negotiate with Apache Kafka 4.4.
struct Row {
    producer: &'static str,
    codec: &'static str,
    produce_version: i64,
    consumer: &'static str,
    /// None: partition assignment; Some(protocol): a group with that `group.protocol`
    /// (`classic` for the Go clients, which have no other).
    group: Option<&'static str>,
    fetch_version: i64,
}

const ROWS: [Row; 10] = [
    Row {
        producer: "java",
        codec: "lz4",
        produce_version: 13,
        consumer: "franz",
        group: None,
        fetch_version: 18,
    },
    Row {
        producer: "java",
        codec: "snappy",
        produce_version: 13,
        consumer: "sarama",
        group: None,
        fetch_version: 12,
    },
    Row {
        producer: "java",
        codec: "zstd",
        produce_version: 13,
        consumer: "java",
        group: Some("consumer"),
        fetch_version: 18,
    },
    Row {
        producer: "franz",
        codec: "snappy",
        produce_version: 13,
        consumer: "java",
        group: Some("classic"),
        fetch_version: 18,
    },
    Row {
        producer: "franz",
        codec: "gzip",
        produce_version: 13,
        consumer: "java",
        group: None,
        fetch_version: 18,
    },
    Row {
        producer: "franz",
        codec: "none",
        produce_version: 13,
        consumer: "franz",
        group: Some("classic"),
        fetch_version: 18,
    },
    Row {
        producer: "sarama",
        codec: "zstd",
        produce_version: 10,
        consumer: "java",
        group: Some("consumer"),
        fetch_version: 18,
    },
    Row {
        producer: "sarama",
        codec: "lz4",
        produce_version: 10,
        consumer: "confluent",
        group: None,
        fetch_version: 16,
    },
    Row {
        producer: "sarama",
        codec: "gzip",
        produce_version: 10,
        consumer: "franz",
        group: None,
        fetch_version: 18,
    },
    Row {
        producer: "confluent",
        codec: "zstd",
        produce_version: 10,
        consumer: "java",
        group: None,
        fetch_version: 18,
    },
];

/// Records each row produces.
const RECORDS: usize = 6;

/// Every row of the client table: the producer's records all in send spans with the row's
/// codec, Produce version and (for the clients given one) the W3C trace context of their
/// headers; the consumer's records all in poll spans linked to those send spans, with the
/// row's Fetch version and group name.
#[test]
fn java_go_and_librdkafka_clients_are_traced_through_apache_kafka() {
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::apache().unwrap();
    let tracer = tracer(&broker, "apache-clients", &jaeger);
    let bootstrap = broker.bootstrap();
    let mut runs = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        let topic = format!("ak-{}-{}-{}", row.producer, row.codec, row.consumer);
        broker.create_topic(&topic, 1).unwrap();
        let count = RECORDS.to_string();
        let mut produce = vec![
            "produce",
            row.producer,
            &bootstrap,
            &topic,
            &count,
            row.codec,
            "--partition",
            "0",
        ];
        // Half of the rows carry a trace context in their headers, half are linked by offset.
        if i % 2 == 0 {
            produce.extend(["--traceparent", TRACEPARENT]);
        }
        let produced = records(&client(&produce).unwrap());
        let group = format!("ak-group-{i}");
        let mut consume = vec![
            "consume",
            row.consumer,
            &bootstrap,
            &topic,
            &count,
            "--timeout",
            "40",
        ];
        match row.group {
            Some(protocol) => {
                consume.extend(["--group", &group]);
                if row.consumer == "java" {
                    consume.extend(["--protocol", protocol]);
                }
            }
            None => consume.extend(["--partition", "0"]),
        }
        let consumed = records(&client(&consume).unwrap());
        runs.push((i, topic, group, produced, consumed));
    }
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    for (i, topic, group, produced, consumed) in &runs {
        let row = &ROWS[*i];
        let seen = jaeger.seen(topic);
        let (producer, consumer) = (client_id(row.producer), client_id(row.consumer));
        let send = seen.sends_where(seen::client(&producer, false)).send;
        let poll = seen.polls_where(seen::client(&consumer, false)).poll;
        let scenario = format!(
            "Apache Kafka {} {} -> {}{}",
            row.producer,
            row.codec,
            row.consumer,
            row.group
                .map(|p| format!(" (group, {p} protocol)"))
                .unwrap_or_default()
        );
        seen.summary(&scenario, produced);
        let unpolled = seen.unpolled(consumed);
        summary(&format!(
            "e2e {scenario}: {} records consumed, {unpolled} without a linked poll span",
            consumed.len()
        ));
        assert_eq!(produced.len(), RECORDS, "{scenario}");
        assert_eq!(consumed.len(), RECORDS, "{scenario}");
        assert!(!send.is_empty(), "{scenario}: send spans: {log}");
        assert_eq!(seen.lost(produced), 0, "{scenario}: {log}");
        assert_eq!(unpolled, 0, "{scenario}: {log}");
        for s in &send {
            assert_eq!(
                s.attr("messaging.kafka.compression").as_deref(),
                Some(row.codec)
            );
            assert_eq!(
                s.attr("messaging.kafka.request.version"),
                Some(row.produce_version.to_string()),
                "{scenario}: Produce version"
            );
            if i % 2 == 0 {
                assert_eq!(hex(&s.span.trace_id), TRACEPARENT[3..35], "{scenario}");
                assert_eq!(
                    hex(&s.span.parent_span_id),
                    TRACEPARENT[36..52],
                    "{scenario}"
                );
            }
        }
        for p in &poll {
            assert_eq!(
                p.attr("messaging.kafka.request.version"),
                Some(row.fetch_version.to_string()),
                "{scenario}: Fetch version"
            );
            if row.group.is_some() {
                assert_eq!(
                    p.attr("messaging.consumer.group.name").as_deref(),
                    Some(group.as_str()),
                    "{scenario}: group on the poll span"
                );
            }
        }
    }
    assert_eq!(logged(&log, "undecodable_requests"), 0, "{log}");
    assert_eq!(logged(&log, "undecodable_responses"), 0, "{log}");
}

/// Transactions of the Java client (transactions v2: partitions added through Produce): every
/// transactional record has a send span, committed or aborted; a `read_committed` consumer
/// (KIP-848 group) is never shown consuming an aborted record, although the fetch responses
/// carry those batches; a `read_uncommitted` consumer (franz-go) is, as it does consume them.
#[test]
fn aborted_transactions_are_never_reported_as_consumed() {
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::apache().unwrap();
    broker.create_topic("ak-txn", 1).unwrap();
    let tracer = tracer(&broker, "apache-transactions", &jaeger);
    let bootstrap = broker.bootstrap();
    let transact = |count: &str, abort: bool| {
        let mut args = vec![
            "transact",
            "java",
            &bootstrap,
            "ak-txn",
            count,
            "none",
            "--partition",
            "0",
        ];
        if abort {
            args.push("--abort");
        }
        records(&client(&args).unwrap())
    };
    let committed_first = transact("4", false);
    let aborted = transact("3", true);
    let committed_last = transact("2", false);
    let committed: Vec<(i64, i64)> = committed_first
        .iter()
        .chain(&committed_last)
        .copied()
        .collect();
    let read_committed = records(
        &client(&[
            "consume",
            "java",
            &broker.bootstrap(),
            "ak-txn",
            &committed.len().to_string(),
            "--group",
            "ak-txn-committed",
            "--protocol",
            "consumer",
            "--read-committed",
            "--timeout",
            "40",
        ])
        .unwrap(),
    );
    // Everything in the log but the three markers.
    let everything = records(
        &client(&[
            "consume",
            "franz",
            &broker.bootstrap(),
            "ak-txn",
            &(committed.len() + aborted.len()).to_string(),
            "--partition",
            "0",
            "--timeout",
            "40",
        ])
        .unwrap(),
    );
    let (_, log) = tracer.stop_with_log();
    let all = settled(&jaeger, &log);
    let seen = jaeger.seen("ak-txn");
    let all_produced: Vec<(i64, i64)> = committed.iter().chain(&aborted).copied().collect();
    seen.summary("Apache Kafka transactions", &all_produced);
    let (java, franz) = (client_id("java"), client_id("franz"));
    // Each consumer's poll spans, with every send span.
    let committed_view = seen.polls_where(seen::client(&java, false));
    let uncommitted_view = seen.polls_where(seen::client(&franz, false));
    let aborted_polled = committed_view.polled(&aborted);
    summary(&format!(
        "e2e Apache Kafka transactions: {} committed and {} aborted records, read_committed consumed {} ({} of them in poll spans, {aborted_polled} aborted records shown consumed), read_uncommitted consumed {}, aborted_batches {}",
        committed.len(),
        aborted.len(),
        read_committed.len(),
        read_committed.len() - committed_view.unpolled(&read_committed),
        everything.len(),
        logged(&log, "aborted_batches"),
    ));
    assert_eq!(
        seen.lost(&all_produced),
        0,
        "every transactional record sent: {log}"
    );
    assert_eq!(
        read_committed, committed,
        "the client drops the aborted records"
    );
    assert_eq!(committed_view.unpolled(&read_committed), 0, "{log}");
    assert_eq!(
        aborted_polled, 0,
        "no aborted record in a read_committed poll span"
    );
    assert!(logged(&log, "aborted_batches") >= 1, "{log}");
    assert_eq!(everything.len(), all_produced.len());
    // Each transaction ends in a span saying how, with the transactional id its send spans
    // carry: two commits and one abort, the abort's id on the aborted records' send spans.
    let ends: Vec<(String, String)> = all
        .iter()
        .filter(|r| r.span.name.ends_with(" transaction"))
        .map(|r| {
            (
                r.span.name.clone(),
                r.attr("messaging.kafka.transactional_id")
                    .unwrap_or_default(),
            )
        })
        .collect();
    let ended = |how: &str| ends.iter().filter(|(n, _)| n == how).count();
    assert_eq!(
        (ended("commit transaction"), ended("abort transaction")),
        (2, 1),
        "{ends:?}"
    );
    let aborted_view = Seen {
        send: seen
            .send
            .iter()
            .filter(|s| {
                let id = s.attr("messaging.kafka.transactional_id");
                ends.iter()
                    .any(|(n, t)| n == "abort transaction" && Some(t) == id.as_ref())
            })
            .cloned()
            .collect(),
        poll: Vec::new(),
        ack: Vec::new(),
    };
    assert_eq!(
        aborted_view.lost(&aborted),
        0,
        "the abort names the aborted sends: {ends:?}"
    );
    assert_eq!(aborted_view.lost(&committed), committed.len());
    assert_eq!(
        uncommitted_view.unpolled(&everything),
        0,
        "read_uncommitted consumes aborted records too: {log}"
    );
}

/// A Kafka Streams application (exactly_once_v2) between two topics: its consumer's poll spans
/// link to the input's send spans, its transactional producer's send spans cover every output
/// record, and a consumer of the output links to those.
#[test]
fn a_kafka_streams_application_is_traced_on_both_sides() {
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::apache().unwrap();
    broker.create_topic("ak-streams-in", 1).unwrap();
    broker.create_topic("ak-streams-out", 1).unwrap();
    let tracer = tracer(&broker, "apache-streams", &jaeger);
    let input = records(
        &client(&[
            "produce",
            "franz",
            &broker.bootstrap(),
            "ak-streams-in",
            "5",
            "snappy",
            "--partition",
            "0",
            "--traceparent",
            TRACEPARENT,
        ])
        .unwrap(),
    );
    let streams = BackgroundClient::start(&[
        "streams",
        "java",
        &broker.bootstrap(),
        "ak-streams-in",
        "ak-streams-out",
        "5",
        "--app-id",
        "ak-streams-app",
        "--timeout",
        "60",
    ])
    .unwrap();
    let out = streams.finish().unwrap();
    assert!(out.contains("\"complete\":true"), "{out}");
    let output = records(
        &client(&[
            "consume",
            "franz",
            &broker.bootstrap(),
            "ak-streams-out",
            "5",
            "--partition",
            "0",
            "--timeout",
            "40",
        ])
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    let inside = jaeger.seen("ak-streams-in");
    let outside = jaeger.seen("ak-streams-out");
    let app = client_id("java");
    let app_polls = inside.polls_where(seen::client(&app, true));
    let app_sends = outside.sends_where(seen::client(&app, true));
    inside.summary("Apache Kafka Streams input", &input);
    app_sends.summary("Apache Kafka Streams output", &output);
    assert_eq!(output.len(), 5);
    assert_eq!(inside.lost(&input), 0, "{log}");
    assert_eq!(
        app_polls.unpolled(&input),
        0,
        "the application's polls: {log}"
    );
    assert!(
        app_polls
            .poll
            .iter()
            .all(|p| p.attr("messaging.consumer.group.name").as_deref() == Some("ak-streams-app")),
        "the application id is the group"
    );
    assert_eq!(app_sends.lost(&output), 0, "the application's sends: {log}");
    assert_eq!(app_sends.unpolled(&output), 0, "{log}");
}

/// A share group (KIP-932) member, the Java `KafkaShareConsumer`, releases the first records it
/// gets and accepts the rest: the released ones come back with delivery count 2. Every delivery
/// has a poll span under its send span, carrying the group and delivery count; each
/// acknowledgement an `ack` span with what became of its records; and /metrics counts
/// deliveries, redeliveries, acceptances, releases and rejections exactly as the client saw them.
#[test]
fn share_group_deliveries_and_acknowledgements_are_traced_and_counted() {
    const RECORDS: usize = 10;
    const RELEASED: usize = 3;
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::apache().unwrap();
    broker.create_topic("ak-share", 1).unwrap();
    let (tracer, metrics) = tracer_with_metrics(&broker, "apache-share", &jaeger);
    let produced = records(
        &client(&[
            "produce",
            "franz",
            &broker.bootstrap(),
            "ak-share",
            &RECORDS.to_string(),
            "none",
            "--partition",
            "0",
        ])
        .unwrap(),
    );
    let out = client(&[
        "share",
        "java",
        &broker.bootstrap(),
        "ak-share",
        &RECORDS.to_string(),
        "--group",
        "ak-share-group",
        "--release",
        &RELEASED.to_string(),
        "--timeout",
        "60",
    ])
    .unwrap();
    let deliveries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let count = |key: &str, want: &str| {
        deliveries
            .iter()
            .filter(|d| d[key].to_string().trim_matches('"') == want)
            .count() as f64
    };
    let (redelivered, released, accepted) = (
        count("delivery_count", "2"),
        count("ack", "release"),
        count("ack", "accept"),
    );
    let series = |outcome: &str| {
        format!(
            r#"kafka_share_records_total{{group="ak-share-group",topic="ak-share",outcome="{outcome}"}}"#
        )
    };
    // The last acknowledgement's answer reaches /metrics within a second or two.
    let mut body = String::new();
    for _ in 0..50 {
        body = scrape(&metrics);
        if sample(&body, &series("accepted")) == Some(accepted) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    let seen = jaeger.seen("ak-share");
    let delivered: Vec<(i64, i64)> = records(&out);
    let polls = seen.polls_where(seen::client(&client_id("java"), false));
    let ack_total = |attr: &str| -> f64 {
        seen.ack
            .iter()
            .filter_map(|a| a.attr(attr)?.parse::<f64>().ok())
            .sum()
    };
    summary(&format!(
        "e2e Apache Kafka share group: {} records produced, {} deliveries ({redelivered} redelivered), {released} released and {accepted} accepted by the client; {} poll spans, {} of the deliveries without a linked poll span; {} ack spans; /metrics delivered {:?} redelivered {:?} released {:?} accepted {:?}",
        produced.len(),
        delivered.len(),
        polls.poll.len(),
        polls.unpolled(&delivered),
        seen.ack.len(),
        sample(&body, &series("delivered")),
        sample(&body, &series("redelivered")),
        sample(&body, &series("released")),
        sample(&body, &series("accepted")),
    ));
    assert_eq!(produced.len(), RECORDS);
    assert_eq!(
        (redelivered, released, accepted),
        (RELEASED as f64, RELEASED as f64, RECORDS as f64),
        "the client's own account: {out}"
    );
    assert_eq!(polls.unpolled(&delivered), 0, "{log}");
    for p in &polls.poll {
        assert_eq!(
            p.attr("messaging.consumer.group.name").as_deref(),
            Some("ak-share-group")
        );
        assert!(p.attr("messaging.kafka.share.delivery_count").is_some());
    }
    // The redelivered records are in poll spans saying so.
    let again = polls
        .polls_where(|p| p.attr("messaging.kafka.share.delivery_count").as_deref() == Some("2"));
    let redelivered_records: Vec<(i64, i64)> = deliveries
        .iter()
        .filter(|d| d["delivery_count"] == 2)
        .map(|d| {
            (
                d["partition"].as_i64().unwrap(),
                d["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(again.unpolled(&redelivered_records), 0, "{log}");
    assert_eq!(
        sample(&body, &series("delivered")),
        Some(delivered.len() as f64),
        "{body}"
    );
    assert_eq!(
        sample(&body, &series("redelivered")),
        Some(redelivered),
        "{body}"
    );
    assert_eq!(sample(&body, &series("released")), Some(released), "{body}");
    assert_eq!(sample(&body, &series("accepted")), Some(accepted), "{body}");
    assert_eq!(sample(&body, &series("rejected")), None, "{body}");
    assert_eq!(ack_total("messaging.kafka.share.released"), released);
    assert_eq!(ack_total("messaging.kafka.share.accepted"), accepted);
    // Acknowledgements hang under the send span of what they settle.
    let parents: std::collections::HashSet<Vec<u8>> =
        seen.send.iter().map(|s| s.span.span_id.clone()).collect();
    assert!(
        seen.ack
            .iter()
            .all(|a| parents.contains(&a.span.parent_span_id)),
        "ack spans under their send spans: {log}"
    );
}

/// A Java consumer group over three partitions keeps one incremental fetch session (KIP-227):
/// after its first fetch, requests and responses name only the partitions that changed. Records
/// produced to all three, then to one only, are each in a linked poll span, and /metrics ends
/// with no lag, the commits at the high watermarks, and an end-to-end latency per record.
#[test]
fn incremental_fetch_sessions_keep_spans_lag_and_latency_right() {
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::apache().unwrap();
    broker.create_topic("ak-sessions", 3).unwrap();
    let (tracer, metrics) = tracer_with_metrics(&broker, "apache-sessions", &jaeger);
    let bootstrap = broker.bootstrap();
    let consumer = BackgroundClient::start(&[
        "consume",
        "java",
        &bootstrap,
        "ak-sessions",
        "35",
        "--group",
        "ak-sessions-group",
        "--protocol",
        "classic",
        "--timeout",
        "60",
    ])
    .unwrap();
    // Keys spread the first 30 over the partitions; the last 5 go to partition 1 alone, while
    // the consumer's session is established.
    let mut produced =
        records(&client(&["produce", "franz", &bootstrap, "ak-sessions", "30", "none"]).unwrap());
    std::thread::sleep(Duration::from_secs(4));
    produced.extend(records(
        &client(&[
            "produce",
            "franz",
            &bootstrap,
            "ak-sessions",
            "5",
            "none",
            "--partition",
            "1",
        ])
        .unwrap(),
    ));
    let consumed = records(&consumer.finish().unwrap());
    let series = |family: &str, p: i64| {
        format!(r#"{family}{{group="ak-sessions-group",topic="ak-sessions",partition="{p}"}}"#)
    };
    let high: std::collections::BTreeMap<i64, i64> =
        produced.iter().fold(Default::default(), |mut m, (p, o)| {
            let e = m.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
            m
        });
    // The commit on close reaches /metrics within a second or two.
    let mut body = String::new();
    for _ in 0..50 {
        body = scrape(&metrics);
        if high.iter().all(|(p, hw)| {
            sample(&body, &series("kafka_consumer_committed_offset", *p)) == Some(*hw as f64)
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, log) = tracer.stop_with_log();
    settled(&jaeger, &log);
    let seen = jaeger.seen("ak-sessions");
    let polls = seen.polls_where(seen::client(&client_id("java"), false));
    let latencies = sample(
        &body,
        r#"kafka_end_to_end_latency_seconds_count{topic="ak-sessions"}"#,
    );
    summary(&format!(
        "e2e Apache Kafka incremental fetch sessions: {} records produced over {} partitions, {} consumed, {} without a linked poll span, end-to-end latencies {latencies:?}",
        produced.len(),
        high.len(),
        consumed.len(),
        polls.unpolled(&consumed),
    ));
    assert_eq!(consumed.len(), 35);
    assert_eq!(high.len(), 3, "records on every partition: {produced:?}");
    assert_eq!(seen.lost(&produced), 0, "{log}");
    assert_eq!(polls.unpolled(&consumed), 0, "{log}");
    for (p, hw) in &high {
        assert_eq!(
            sample(&body, &series("kafka_consumer_lag", *p)),
            Some(0.0),
            "partition {p}: {body}"
        );
        assert_eq!(
            sample(&body, &series("kafka_consumer_committed_offset", *p)),
            Some(*hw as f64),
            "partition {p}: {body}"
        );
        assert_eq!(
            sample(&body, &series("kafka_consumer_committed_lag", *p)),
            Some(0.0),
            "partition {p}: {body}"
        );
    }
    assert!(latencies >= Some(35.0), "{body}");
}
