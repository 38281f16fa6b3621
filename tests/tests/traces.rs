//! The `kafka-tracer` binary run as a user runs it, against a real broker (tansu) and real
//! clients (confluent-kafka): the spans it writes (OTLP-JSON on standard output, or exported
//! to Jaeger and to the test receiver) link the producer and the consumer, also when two
//! separately started tracers each see one side.

use std::time::Duration;

use serde_json::Value;
use tests::{
    Broker, client, consume,
    jaeger::Jaeger,
    produce_and_consume,
    tracer::{PeakRss, Tracer, attr, logged, named, rss_kib},
};

#[test]
fn producer_and_consumer_spans_join_the_header_trace() {
    let broker = Broker::start().unwrap();
    broker.create_topic("e2e-header", 1).unwrap();
    let tracer = Tracer::start(broker.port, "header");
    produce_and_consume(&broker.bootstrap(), "e2e-header", "3", "zstd").unwrap();
    let spans = tracer.stop();
    let (send, poll) = (
        named(&spans, "send e2e-header"),
        named(&spans, "poll e2e-header"),
    );
    assert_eq!(send.len(), 1, "{spans:#?}");
    assert!(!poll.is_empty(), "{spans:#?}");
    let p = send[0];
    assert_eq!(p["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(p["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(p["kind"], 4);
    assert_eq!(attr(p, "messaging.system").unwrap()["stringValue"], "kafka");
    assert_eq!(
        attr(p, "messaging.destination.partition.id").unwrap()["stringValue"],
        "0"
    );
    assert_eq!(
        attr(p, "messaging.batch.message_count").unwrap()["intValue"],
        "3"
    );
    for c in poll {
        assert_eq!(c["traceId"], p["traceId"]);
        assert_eq!(c["parentSpanId"], p["spanId"]);
        assert_eq!(c["kind"], 5);
    }
}

/// With `--selective-copy` the kernel skips the values of the records the producer sends and
/// the consumer fetches: every record is still in a send span under its header's trace
/// context, every poll span under its send span, and the skipped bytes are counted as
/// skipped, never as loss.
#[test]
fn the_selective_copy_skips_values_and_keeps_header_traces() {
    let run = selective_run("selective", "none", ("KAFKA_TRACER_SELECTIVE_COPY", "true"));
    for p in &run.send {
        assert_eq!(p["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(p["parentSpanId"], "b7ad6b7169203331");
    }
    let skipped = logged(&run.log, "kernel_skipped_bytes");
    assert!(
        (2 * N * SIZE..2 * N * (SIZE + 100)).contains(&skipped),
        "the values, and only them, skipped once sent and once fetched: {skipped}"
    );
    assert_eq!(logged(&run.log, "records_headers_unread"), 0);
}

/// With `--record-headers none` the kernel copies only the batch headers of the (compressed)
/// batches the producer sends and the consumer fetches: every record is still in a send span
/// and every poll span under its send span, linked by offset; the records whose headers went
/// unread are counted, on each side.
#[test]
fn without_record_headers_sends_and_polls_stay_linked_by_offset() {
    let run = selective_run("noheaders", "lz4", ("KAFKA_TRACER_RECORD_HEADERS", "none"));
    for p in &run.send {
        assert_ne!(
            p["traceId"], "0af7651916cd43dd8448eb211c80319c",
            "no header was read"
        );
    }
    assert!(logged(&run.log, "kernel_skipped_bytes") > 0, "{}", run.log);
    assert_eq!(
        logged(&run.log, "records_headers_unread"),
        2 * N,
        "{}",
        run.log
    );
}

/// Records the selective-copy tests produce, and the size of each value.
const N: u64 = 300;
const SIZE: u64 = 2000;

/// What a selective-copy run left: its send and poll spans, and the tracer's log.
struct SelectiveRun {
    send: Vec<Value>,
    log: String,
}

/// Produces `N` records of `SIZE` bytes with a traceparent header (librdkafka, codec `codec`)
/// and consumes them, traced with `setting`; checks what every policy keeps: every record in a
/// send and a poll span, each poll under a send span, and no skip taken as loss or given up.
fn selective_run(name: &str, codec: &str, setting: (&str, &str)) -> SelectiveRun {
    let topic = format!("e2e-{name}");
    let broker = Broker::start().unwrap();
    broker.create_topic(&topic, 1).unwrap();
    let tracer = Tracer::start_with(broker.port, name, &[setting]);
    let bootstrap = broker.bootstrap();
    let (n, size) = (N.to_string(), SIZE.to_string());
    client(&[
        "produce",
        "confluent",
        &bootstrap,
        &topic,
        &n,
        codec,
        "--traceparent",
        tests::TRACEPARENT,
        "--partition",
        "0",
        "--size",
        &size,
        "--linger-ms",
        "50",
    ])
    .unwrap();
    consume(&bootstrap, &topic, &n).unwrap();
    let (spans, log) = tracer.stop_with_log();
    let (send, poll) = (
        named(&spans, &format!("send {topic}")),
        named(&spans, &format!("poll {topic}")),
    );
    let offsets = |spans: &[&Value]| -> std::collections::BTreeSet<i64> {
        spans
            .iter()
            .flat_map(|s| {
                let num = |k: &str| {
                    attr(s, k)
                        .and_then(|v| v["intValue"].as_str().or(v["stringValue"].as_str()))?
                        .parse::<i64>()
                        .ok()
                };
                tests::covered_offsets(num).into_iter().flatten()
            })
            .collect()
    };
    let all = (0..N as i64).collect();
    assert_eq!(offsets(&send), all, "every record in a send span");
    assert_eq!(offsets(&poll), all, "every record in a poll span");
    let sends: Vec<&Value> = send.iter().map(|s| &s["spanId"]).collect();
    assert!(
        poll.iter().all(|c| sends.contains(&&c["parentSpanId"])),
        "{poll:#?}"
    );
    for c in [
        "misplaced_skips",
        "kernel_skim_unparsed_frames",
        "kernel_skim_stopped_streams",
    ] {
        assert_eq!(logged(&log, c), 0, "{c}: {log}");
    }
    SelectiveRun {
        send: send.into_iter().cloned().collect(),
        log,
    }
}

/// The console output is the OpenTelemetry file format: the Collector's own reader of OTLP-JSON
/// (pdata's unmarshaler, which its `otlpjsonfile` receiver uses) decodes every line and finds
/// every span the tracer wrote, under its process's service.
#[test]
fn console_output_is_read_by_the_collectors_otlp_json_reader() {
    let broker = Broker::start().unwrap();
    broker.create_topic("e2e-jsonfile", 1).unwrap();
    let tracer = Tracer::start(broker.port, "jsonfile");
    produce_and_consume(&broker.bootstrap(), "e2e-jsonfile", "3", "gzip").unwrap();
    let file = tracer.stdout_file().to_path_buf();
    let (spans, log) = tracer.stop_with_log();
    let reader = tests::broker::installed("KAFKA_TRACER_GO_CLIENT").unwrap();
    let out = std::process::Command::new(reader)
        .arg("otlpjson")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Collector's reader refused the console output: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = read["names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tests::summary(&format!(
        "e2e console as an OTLP-JSON file: {} lines, {} spans read by the Collector's reader",
        read["lines"], read["spans"]
    ));
    assert_eq!(read["spans"].as_u64(), Some(spans.len() as u64), "{read}");
    assert_eq!(
        logged(&log, "spans_exported"),
        spans.len() as u64,
        "every exported span is in the file: {log}"
    );
    for name in ["send e2e-jsonfile", "poll e2e-jsonfile"] {
        assert!(names.contains(&name), "{name}: {read}");
    }
    assert!(
        read["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.as_str().is_some_and(|s| !s.is_empty())),
        "{read}"
    );
}

/// `--console-format pretty`: a line per span that says what, which records, who, and the
/// ids to find the trace by.
#[test]
fn the_pretty_console_shows_a_line_per_span() {
    let broker = Broker::start().unwrap();
    broker.create_topic("e2e-pretty", 1).unwrap();
    let tracer = Tracer::start_with(
        broker.port,
        "pretty",
        &[("KAFKA_TRACER_CONSOLE_FORMAT", "pretty")],
    );
    produce_and_consume(&broker.bootstrap(), "e2e-pretty", "3", "none").unwrap();
    let (text, log) = tracer.stop_with_output();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len() as u64,
        logged(&log, "spans_exported"),
        "a line per span: {text}"
    );
    let send = lines
        .iter()
        .find(|l| l.contains(" send e2e-pretty ["))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        send.contains("] partition 0 offsets 0-2 (3 records), ")
            && send.contains(" ms, trace 0af7651916cd43dd8448eb211c80319c span ")
            && send.ends_with(" parent b7ad6b7169203331"),
        "{send}"
    );
    let poll = lines
        .iter()
        .find(|l| l.contains(" poll e2e-pretty ["))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        poll.contains(" trace 0af7651916cd43dd8448eb211c80319c "),
        "{poll}"
    );
}

/// No headers, and two tracer processes that never talk, one seeing only the producer and the
/// other only the consumer, as on two nodes, both exporting to one Jaeger: the ids still
/// match, and Jaeger shows one trace with the consumer's span under the producer's.
#[test]
fn two_tracers_link_records_without_headers() {
    let jaeger = Jaeger::start().unwrap();
    let endpoint = jaeger.otlp_http_endpoint();
    let otlp = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let broker = Broker::start().unwrap();
    broker.create_topic("e2e-plain", 1).unwrap();
    let a = Tracer::start_with(broker.port, "node-a", &otlp);
    client(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "e2e-plain",
        "4",
        "none",
        "--partition",
        "0",
    ])
    .unwrap();
    let (_, a_log) = a.stop_with_log();
    let b = Tracer::start_with(broker.port, "node-b", &otlp);
    consume(&broker.bootstrap(), "e2e-plain", "4").unwrap();
    let (_, b_log) = b.stop_with_log();
    let (a_spans, b_spans) = (
        logged(&a_log, "producer_spans") + logged(&a_log, "consumer_spans"),
        logged(&b_log, "producer_spans") + logged(&b_log, "consumer_spans"),
    );
    assert_eq!(
        (
            logged(&a_log, "consumer_spans"),
            logged(&b_log, "producer_spans")
        ),
        (0, 0),
        "node a saw no consumer, node b no producer"
    );
    jaeger.settle(logged(&a_log, "spans_exported") + logged(&b_log, "spans_exported"));
    let seen = jaeger.seen("e2e-plain");
    assert_eq!(seen.send.len(), 1, "{a_spans} spans on node a: {a_log}");
    assert!(!seen.poll.is_empty(), "{b_spans} spans on node b: {b_log}");
    let send = &seen.send[0].span;
    assert!(send.parent_span_id.is_empty(), "no header: a root span");
    for c in &seen.poll {
        assert_eq!(
            c.span.trace_id, send.trace_id,
            "same derived trace on both nodes"
        );
        assert_eq!(
            c.span.parent_span_id, send.span_id,
            "consumer under the producer span"
        );
    }
}

/// Ratio sampling at 0.5 on two tracers that never talk, one seeing only the producer and the
/// other only the consumer: both keep exactly the same traces, and only about half of them.
#[test]
fn two_tracers_sampling_at_half_keep_the_same_traces() {
    let broker = Broker::start().unwrap();
    broker.create_topic("e2e-sampled", 1).unwrap();
    let sampler = [
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
    ];
    const BATCHES: usize = 40;
    let a = Tracer::start_with(broker.port, "sampled-a", &sampler);
    client(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "e2e-sampled",
        &BATCHES.to_string(),
        "none",
        "--partition",
        "0",
        "--flush-every",
        "1",
    ])
    .unwrap();
    let (a_spans, a_log) = a.stop_with_log();
    let b = Tracer::start_with(broker.port, "sampled-b", &sampler);
    consume(&broker.bootstrap(), "e2e-sampled", &BATCHES.to_string()).unwrap();
    let b_spans = b.stop();
    let traces = |spans: &[&Value]| -> std::collections::BTreeSet<String> {
        spans
            .iter()
            .map(|s| s["traceId"].as_str().unwrap().to_string())
            .collect()
    };
    let kept_a = traces(&named(&a_spans, "send e2e-sampled"));
    let kept_b = traces(&named(&b_spans, "poll e2e-sampled"));
    eprintln!("kept {} of {BATCHES} batch traces", kept_a.len());
    assert!(
        (1..BATCHES).contains(&kept_a.len()),
        "a ratio of 0.5 keeps some, not all: {}",
        kept_a.len()
    );
    assert_eq!(
        logged(&a_log, "spans_sampled_out") as usize + kept_a.len(),
        BATCHES,
        "{a_log}"
    );
    assert_eq!(kept_a, kept_b, "both nodes keep the same traces");
}

/// The daemon exporting over OTLP to a real receiver with `protocol` (and gzip when asked):
/// the spans arrive, linked, under the producing and consuming programs' service names.
async fn spans_reach_an_otlp_receiver(protocol: &str, gzip: bool) {
    let receiver = tests::receiver::Receiver::start(None).await.unwrap();
    let broker = Broker::start().unwrap();
    let topic = format!("e2e-otlp-{}", protocol.replace('/', "-"));
    broker.create_topic(&topic, 1).unwrap();
    let endpoint = if protocol == "grpc" {
        receiver.endpoint()
    } else {
        receiver.http_endpoint()
    };
    let tracer = Tracer::start_with(
        broker.port,
        &topic,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            (
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                if gzip { "gzip" } else { "none" },
            ),
        ],
    );
    let bootstrap = broker.bootstrap();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        produce_and_consume(&bootstrap, &t, "2", "lz4").unwrap();
    })
    .await
    .unwrap();
    let (stdout_spans, log) = tokio::task::spawn_blocking(move || tracer.stop_with_log())
        .await
        .unwrap();
    assert!(stdout_spans.is_empty(), "OTLP, not the console");
    let spans = receiver.topic(&topic);
    let send: Vec<_> = spans
        .iter()
        .filter(|r| r.span.name == format!("send {topic}"))
        .collect();
    let poll: Vec<_> = spans
        .iter()
        .filter(|r| r.span.name == format!("poll {topic}"))
        .collect();
    assert_eq!(send.len(), 1, "{spans:#?}\n{log}");
    assert!(!poll.is_empty(), "{spans:#?}");
    // Queried like Jaeger: the header's trace holds both.
    let trace = receiver.trace("0af7651916cd43dd8448eb211c80319c");
    assert!(trace.len() >= 2);
    assert_eq!(send[0].span.kind, 4);
    assert_eq!(
        tests::receiver::hex(&send[0].span.parent_span_id),
        "b7ad6b7169203331"
    );
    for c in &poll {
        assert_eq!(c.span.parent_span_id, send[0].span.span_id);
        assert_eq!(c.span.kind, 5);
    }
    // python3 .../client.py: the service is the script, not the interpreter; unless a client
    // exited before the daemon (on a loaded machine) read it, which the daemon counts.
    let services: Vec<_> = spans.iter().map(|r| r.service.as_str()).collect();
    let unnamed = logged(&log, "processes_gone_unnamed");
    let named = receiver.service("client").len();
    if unnamed == 0 {
        assert_eq!(
            named,
            spans.len(),
            "service.name from the program: {services:?}"
        );
    } else {
        // Each gone client is named after one of its threads.
        let mut others: Vec<_> = services.iter().filter(|s| **s != "client").collect();
        others.sort();
        others.dedup();
        eprintln!("{unnamed} clients gone before they were read: {services:?}");
        assert!(others.len() <= unnamed as usize, "{services:?}\n{log}");
    }
    assert_eq!(
        send[0].attr("messaging.batch.message_count").as_deref(),
        Some("2")
    );
    assert!(send[0].span.start_time_unix_nano > 1_700_000_000_000_000_000);
    assert!(log.contains("export_failed=0"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_grpc_receiver_gzipped() {
    spans_reach_an_otlp_receiver("grpc", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_protobuf_receiver() {
    spans_reach_an_otlp_receiver("http/protobuf", false).await;
}

/// The console's JSON encoder, read back by the official protos' serde mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_json_receiver_gzipped() {
    spans_reach_an_otlp_receiver("http/json", true).await;
}

/// No receiver at the endpoint: the tracer keeps running, its export queue stays within its
/// bound, the counters of failed and dropped spans grow, and every span is accounted for.
#[test]
fn an_unreachable_otlp_endpoint_is_counted_not_fatal() {
    let broker = Broker::start().unwrap();
    broker.create_topic("e2e-down", 1).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let tracer = Tracer::start_with(
        broker.port,
        "down",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ("KAFKA_TRACER_EXPORT_QUEUE", "64"),
        ],
    );
    let pid = tracer.child.id();
    let before = rss_kib(pid);
    let rss = PeakRss::watch(pid);
    // One request, hence one span, per record.
    let bootstrap = broker.bootstrap();
    let producer = std::thread::spawn(move || {
        client(&[
            "produce",
            "confluent",
            &bootstrap,
            "e2e-down",
            "600",
            "none",
            "--partition",
            "0",
            "--flush-every",
            "1",
        ])
        .unwrap()
    });
    producer.join().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let peak = rss.stop();
    let (_, log) = tracer.stop_with_log();
    eprintln!("tracer RSS: {before} KiB attached, {peak} KiB peak");
    let failed_over_time: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(" spans_export_failed="))
        .map(|l| logged(l, "spans_export_failed"))
        .collect();
    assert!(
        failed_over_time.windows(2).all(|w| w[0] <= w[1])
            && failed_over_time.first() < failed_over_time.last(),
        "a growing failure counter: {failed_over_time:?}"
    );
    let (producer_spans, failed, dropped) = (
        logged(&log, "producer_spans"),
        logged(&log, "spans_export_failed"),
        logged(&log, "spans_queue_dropped"),
    );
    assert!(producer_spans >= 600, "{log}");
    assert!(dropped > 0, "the bounded queue dropped the oldest: {log}");
    assert_eq!(
        producer_spans + logged(&log, "consumer_spans"),
        logged(&log, "spans_exported")
            + failed
            + dropped
            + logged(&log, "export_queue")
            + logged(&log, "spans_sampled_out"),
        "every span delivered, failed or dropped: {log}"
    );
    assert!(
        peak.saturating_sub(before) < 16 << 10,
        "memory stays bounded: {before} KiB -> {peak} KiB"
    );
    assert!(log.contains("detaching"), "clean exit: {log}");
}

/// /metrics, scraped as Prometheus would: consumer lag and end-to-end latency for the topic,
/// the tracer's own health counters, and what it has cost (its CPU time, and with BPF
/// statistics on, held here as `sysctl kernel.bpf_stats_enabled=1` would, its programs' time).
#[test]
fn metrics_show_lag_latency_and_health() {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .expect("turning BPF statistics on (Linux 5.8+, as root)");
    let started = std::time::Instant::now();
    let broker = Broker::start().unwrap();
    broker.create_topic("e2e-metrics", 1).unwrap();
    let addr = format!("127.0.0.1:{}", tests::tracer::free_port());
    let tracer = Tracer::start_with(
        broker.port,
        "metrics",
        &[("KAFKA_TRACER_METRICS_ADDR", &addr)],
    );
    client(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "e2e-metrics",
        "5",
        "none",
        "--partition",
        "0",
    ])
    .unwrap();
    // A group consumes 3 of the 5 and commits: its fetches reached the end of the partition,
    // its commit did not.
    client(&[
        "consume",
        "confluent",
        &broker.bootstrap(),
        "e2e-metrics",
        "3",
        "--group",
        "e2e-metrics-group",
        "--timeout",
        "20",
    ])
    .unwrap();
    // Scrape once the group's commit has reached /metrics.
    let series = r#"group="e2e-metrics-group",topic="e2e-metrics",partition="0"}"#;
    let committed = format!("kafka_consumer_committed_offset{{{series} 3");
    let mut body = tests::tracer::scrape(&addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !body.contains(&committed) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        body = tests::tracer::scrape(&addr);
    }
    let _ = tracer.stop();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    // Read as a scraper would: parsed by an OpenMetrics parser, values found by their labels.
    let parsed = tests::tracer::parse_metrics(&body);
    let value = |family: &str, labels: &[(&str, &str)]| {
        tests::tracer::metric(&parsed, family, labels)
            .unwrap_or_else(|| panic!("{family} {labels:?} missing: {body}"))
    };
    let series = [
        ("group", "e2e-metrics-group"),
        ("topic", "e2e-metrics"),
        ("partition", "0"),
    ];
    assert_eq!(value("kafka_consumer_lag", &series), 0.0);
    assert_eq!(value("kafka_consumer_committed_offset", &series), 3.0);
    assert_eq!(value("kafka_consumer_committed_lag", &series), 2.0);
    let partition = [("topic", "e2e-metrics"), ("partition", "0")];
    assert_eq!(value("kafka_partition_high_watermark", &partition), 5.0);
    let e2e = value(
        "kafka_end_to_end_latency_seconds_count",
        &[("topic", "e2e-metrics")],
    );
    assert!((3.0..=5.0).contains(&e2e), "fetched records timed: {e2e}");
    assert_eq!(
        value(
            "kafka_records_total",
            &[
                ("direction", "produced"),
                ("topic", "e2e-metrics"),
                ("partition", "0")
            ]
        ),
        5.0
    );
    assert!(
        value(
            "kafka_request_duration_seconds_count",
            &[("api", "Produce"), ("topic", "e2e-metrics")]
        ) >= 1.0
    );
    for health in [
        "kafka_tracer_kernel_ringbuf_full_records_total",
        "kafka_tracer_spans_queue_dropped_total",
        "kafka_tracer_undecodable_requests_total",
        "kafka_tracer_undecodable_responses_total",
        "kafka_tracer_metric_series_overflow_total",
    ] {
        assert_eq!(value(health, &[]), 0.0, "{health}");
    }
    // What tracing cost: nanoseconds, within what the machine's cores could have spent since
    // the test started (a unit off by a thousand fails one bound or the other).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceiling = started.elapsed().as_nanos() as f64 * cores as f64;
    let daemon = value("kafka_tracer_daemon_cpu_ns_total", &[]);
    let ebpf = value("kafka_tracer_ebpf_run_ns_total", &[]);
    let runs = value("kafka_tracer_ebpf_runs_total", &[]);
    println!("e2e metrics: daemon CPU {daemon} ns, eBPF {ebpf} ns in {runs} runs");
    assert!((1e6..ceiling).contains(&daemon), "daemon CPU {daemon} ns");
    assert!(
        runs >= 10.0,
        "the programs ran for each Kafka syscall: {runs}"
    );
    assert!(
        (runs..ceiling).contains(&ebpf),
        "eBPF {ebpf} ns over {runs} runs"
    );
}
