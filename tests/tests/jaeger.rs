//! Traces where users look at them: the tracer exports to a real Jaeger v2 over OTLP (HTTP and
//! gRPC), and the traces are found again through Jaeger's HTTP query API by service (the
//! README's `curl` query), with the producer's send span and the consumer's poll span in one
//! trace, parent and child, under the trace context the producer's records carried; and over
//! mutual TLS, Jaeger's receivers serving certificates the test made.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    Broker, TRACEPARENT, client_env,
    jaeger::Jaeger,
    summary,
    tracer::{Tracer, attr, logged},
};

/// The trace and span ids of [`TRACEPARENT`].
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// A string attribute of a span.
fn text<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key)?["stringValue"].as_str()
}

#[test]
fn linked_traces_are_found_in_jaeger() {
    let jaeger = Jaeger::start().unwrap();
    let broker = Broker::start().unwrap();
    let bootstrap = broker.bootstrap();
    for (protocol, endpoint) in [
        ("http/protobuf", jaeger.otlp_http_endpoint()),
        ("grpc", jaeger.otlp_grpc_endpoint()),
    ] {
        let tag = protocol.replace('/', "-");
        let topic = format!("jaeger-{tag}");
        let (producer, consumer) = (format!("orders-{tag}"), format!("billing-{tag}"));
        broker.create_topic(&topic, 1).unwrap();
        let tracer = Tracer::start_with(
            broker.port,
            &format!("jaeger-{tag}"),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ],
        );
        client_env(
            &[("OTEL_SERVICE_NAME", &producer)],
            &[
                "produce",
                "confluent",
                &bootstrap,
                &topic,
                "5",
                "none",
                "--traceparent",
                TRACEPARENT,
                "--partition",
                "0",
            ],
        )
        .unwrap();
        client_env(
            &[("OTEL_SERVICE_NAME", &consumer)],
            &[
                "consume",
                "confluent",
                &bootstrap,
                &topic,
                "5",
                "--partition",
                "0",
                "--timeout",
                "20",
            ],
        )
        .unwrap();
        let (_, log) = tracer.stop_with_log();

        // Found by the producer's service: the whole trace, the consumer's span included.
        let send_name = format!("send {topic}");
        let poll_name = format!("poll {topic}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let spans = loop {
            let spans = jaeger
                .http_traces(&jaeger.service_query(&producer))
                .unwrap();
            let has = |name: &str| spans.iter().any(|(_, s)| s["name"] == name);
            if (has(&send_name) && has(&poll_name)) || Instant::now() > deadline {
                break spans;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let find = |name: &str| {
            spans
                .iter()
                .find(|(_, s)| s["name"] == name)
                .unwrap_or_else(|| panic!("{name} not in Jaeger: {spans:?}\ntracer log: {log}"))
        };
        let (send_service, send) = find(&send_name);
        let (poll_service, poll) = find(&poll_name);
        summary(&format!(
            "e2e Jaeger over {protocol}: {} spans in the traces of {producer}; send by {send_service}, poll by {poll_service}",
            spans.len()
        ));
        // A client that exited before the daemon (on a loaded machine) read its environment
        // is named after its thread, and counted; the trace's structure holds either way.
        let gone = logged(&log, "processes_gone_unnamed");
        if gone == 0 {
            assert_eq!((send_service, poll_service), (&producer, &consumer));
        } else {
            eprintln!("{gone} clients gone before they were read: {send_service}, {poll_service}");
            let named = [send_service == &producer, poll_service == &consumer];
            assert!(named.iter().filter(|n| !**n).count() <= gone as usize);
        }
        assert_eq!(send["traceId"].as_str(), Some(TRACE), "{send}");
        assert_eq!(send["parentSpanId"].as_str(), Some(PARENT), "{send}");
        assert_eq!(poll["traceId"], send["traceId"], "{poll}");
        assert_eq!(poll["parentSpanId"], send["spanId"], "{poll}");
        for s in [send, poll] {
            assert_eq!(
                text(s, "messaging.destination.name"),
                Some(topic.as_str()),
                "{s}"
            );
            assert_eq!(text(s, "messaging.system"), Some("kafka"), "{s}");
        }
        // And by the consumer's service: the same trace.
        let theirs = jaeger
            .http_traces(&jaeger.service_query(poll_service))
            .unwrap();
        assert!(
            theirs.iter().any(|(_, s)| s["spanId"] == send["spanId"]),
            "{theirs:?}"
        );
    }
}

/// Jaeger's OTLP receivers serving mutual TLS (a CA, server and client certificate made by the
/// test): the tracer exports over `https://` on gRPC and HTTP with the CA and its client
/// certificate, and each protocol's trace is found again by its topic, linked.
#[test]
fn traces_reach_jaeger_over_mutual_tls() {
    let certs = tests::certs::Certs::make("jaeger").unwrap();
    let jaeger = Jaeger::start_with(
        tests::jaeger::Ports::free(),
        Some(&tests::jaeger::ServerTls {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            client_ca: Some(certs.ca.clone()),
        }),
    )
    .unwrap();
    let broker = Broker::start().unwrap();
    let mut exported = 0;
    let mut topics = Vec::new();
    for (protocol, endpoint) in [
        ("grpc", jaeger.otlp_grpc_endpoint()),
        ("http/protobuf", jaeger.otlp_http_endpoint()),
    ] {
        assert!(endpoint.starts_with("https://"), "{endpoint}");
        let topic = format!("jaeger-mtls-{}", protocol.replace('/', "-"));
        broker.create_topic(&topic, 1).unwrap();
        let tracer = Tracer::start_with(
            broker.port,
            &topic,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", certs.ca.to_str().unwrap()),
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    certs.client_cert.to_str().unwrap(),
                ),
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                    certs.client_key.to_str().unwrap(),
                ),
            ],
        );
        tests::produce_and_consume(&broker.bootstrap(), &topic, "3", "none").unwrap();
        let (_, log) = tracer.stop_with_log();
        assert_eq!(logged(&log, "spans_export_failed"), 0, "{log}");
        exported += logged(&log, "spans_exported");
        topics.push(topic);
    }
    // Without its certificate the tracer is refused: the TLS really is mutual.
    broker.create_topic("jaeger-mtls-refused", 1).unwrap();
    let endpoint = jaeger.otlp_http_endpoint();
    let tracer = Tracer::start_with(
        broker.port,
        "jaeger-mtls-refused",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", certs.ca.to_str().unwrap()),
        ],
    );
    tests::produce_and_consume(&broker.bootstrap(), "jaeger-mtls-refused", "3", "none").unwrap();
    let (_, log) = tracer.stop_with_log();
    assert_eq!(logged(&log, "spans_exported"), 0, "{log}");
    assert!(logged(&log, "spans_export_failed") >= 2, "{log}");
    jaeger.settle(exported);
    for topic in &topics {
        let seen = jaeger.seen(topic);
        assert_eq!(seen.send.len(), 1, "{topic}");
        assert!(!seen.poll.is_empty(), "{topic}");
        assert_eq!(seen.linked(), seen.poll.len(), "{topic}");
    }
    summary(&format!(
        "e2e Jaeger over mutual TLS: {exported} spans exported over gRPC and HTTP, all found by topic"
    ));
}
