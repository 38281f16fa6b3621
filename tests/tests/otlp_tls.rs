//! OTLP export over TLS, as collectors and SaaS backends take it: `https://` endpoints over
//! gRPC, HTTP/protobuf and HTTP/JSON, checked against a CA file (`OTEL_EXPORTER_OTLP_CERTIFICATE`)
//! or the system's roots, with client certificates for mutual TLS. Every certificate is made
//! by the test. The failures a user meets (a wrong CA, a server that wants a client
//! certificate, a CA file not there yet) are one clear log line and spans counted as failed,
//! and the tracer keeps running: a CA file that appears later is taken.

use tests::{
    Broker,
    certs::Certs,
    produce_and_consume,
    receiver::{Receiver, ReceiverTls},
    summary,
    tracer::{Tracer, logged},
};

/// The receiver serving `certs`' server certificate (requiring client certificates with
/// `mutual`), on a runtime of its own.
fn tls_receiver(certs: &Certs, mutual: bool) -> (tokio::runtime::Runtime, Receiver) {
    Receiver::in_background_with(Some(ReceiverTls {
        grpc: certs.server_config(mutual, &[b"h2"]).unwrap(),
        http: certs.server_config(mutual, &[b"http/1.1"]).unwrap(),
    }))
}

/// Runs a tracer with `env` while librdkafka produces and consumes 3 records on `topic`; its
/// log and the spans it built.
fn traced(broker: &Broker, topic: &str, env: &[(&str, &str)]) -> (String, u64) {
    broker.create_topic(topic, 1).unwrap();
    let tracer = Tracer::start_with(broker.port, topic, env);
    produce_and_consume(&broker.bootstrap(), topic, "3", "none").unwrap();
    let (_, log) = tracer.stop_with_log();
    let built = logged(&log, "producer_spans") + logged(&log, "consumer_spans");
    assert!(built >= 2, "a send and a poll span: {log}");
    assert!(log.contains("detaching"), "a clean exit: {log}");
    (log, built)
}

/// The endpoint of `receiver` for `protocol`.
fn endpoint(receiver: &Receiver, protocol: &str) -> String {
    if protocol == "grpc" {
        receiver.endpoint()
    } else {
        receiver.http_endpoint()
    }
}

/// Every protocol to a server whose certificate a CA file vouches for; HTTP/JSON through the
/// system's roots instead (`SSL_CERT_FILE`, as a distribution's store would hold the CA).
#[test]
fn spans_reach_an_https_endpoint_over_every_protocol() {
    let certs = Certs::make("protocols").unwrap();
    let (_rt, receiver) = tls_receiver(&certs, false);
    let broker = Broker::start().unwrap();
    let ca = certs.ca.to_str().unwrap();
    for (protocol, roots) in [
        ("http/protobuf", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        ("grpc", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"),
        ("http/json", "SSL_CERT_FILE"),
    ] {
        let topic = format!("tls-{}", protocol.replace('/', "-"));
        let url = endpoint(&receiver, protocol);
        assert!(url.starts_with("https://"), "{url}");
        let (log, built) = traced(
            &broker,
            &topic,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                (roots, ca),
            ],
        );
        let received = receiver.topic(&topic).len() as u64;
        summary(&format!(
            "e2e OTLP over TLS, {protocol} (roots from {roots}): {built} spans built, {received} received"
        ));
        assert_eq!(received, built, "{protocol}: {log}");
        assert_eq!(logged(&log, "spans_export_failed"), 0, "{log}");
    }
}

/// A server that requires client certificates: the tracer with one (the `_TRACES_` variables)
/// delivers; without one, every span is counted as failed and the log says what to set.
#[test]
fn mutual_tls_needs_the_client_certificate() {
    let certs = Certs::make("mutual").unwrap();
    let (_rt, receiver) = tls_receiver(&certs, true);
    let broker = Broker::start().unwrap();
    let (ca, cert, key) = (
        certs.ca.to_str().unwrap(),
        certs.client_cert.to_str().unwrap(),
        certs.client_key.to_str().unwrap(),
    );
    for protocol in ["grpc", "http/protobuf"] {
        let url = endpoint(&receiver, protocol);
        let tag = protocol.replace('/', "-");
        let topic = format!("mtls-{tag}");
        // The traces-only endpoint is used as given: HTTP's needs its path.
        let traces_url = if protocol == "grpc" {
            url.clone()
        } else {
            format!("{url}/v1/traces")
        };
        let (log, built) = traced(
            &broker,
            &topic,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces_url),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", cert),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", key),
            ],
        );
        let received = receiver.topic(&topic).len() as u64;
        assert_eq!(
            received, built,
            "{protocol} with a client certificate: {log}"
        );
        let refused = format!("mtls-refused-{tag}");
        let (log, built) = traced(
            &broker,
            &refused,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
            ],
        );
        summary(&format!(
            "e2e OTLP over mutual TLS, {protocol}: {received} spans delivered with a client certificate, {} of {built} failed without one",
            logged(&log, "spans_export_failed")
        ));
        assert!(receiver.topic(&refused).is_empty(), "{log}");
        assert_eq!(logged(&log, "spans_export_failed"), built, "{log}");
        let failure = log
            .lines()
            .find(|l| l.contains("OTLP export failed"))
            .unwrap_or_else(|| panic!("no failure line: {log}"));
        assert!(
            failure.contains(
                "set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY"
            ),
            "{protocol}: {failure}"
        );
    }
}

/// A CA that did not sign the server's certificate: spans counted as failed, one line naming
/// the failure and the variable to set. A CA file that is not there: one line naming the
/// variable and the file at start, spans counted as failed, and once the file is in place
/// the tracer, still running, delivers.
#[test]
fn a_wrong_or_missing_ca_is_counted_and_the_tracer_keeps_running() {
    let certs = Certs::make("wrong").unwrap();
    let (_rt, receiver) = tls_receiver(&certs, false);
    let broker = Broker::start().unwrap();
    let url = receiver.http_endpoint();
    let (log, built) = traced(
        &broker,
        "tls-wrong-ca",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                certs.other_ca.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(logged(&log, "spans_export_failed"), built, "{log}");
    assert!(receiver.topic("tls-wrong-ca").is_empty());
    let failure = log
        .lines()
        .find(|l| l.contains("OTLP export failed"))
        .unwrap_or_else(|| panic!("no failure line: {log}"));
    assert!(
        failure.contains("UnknownIssuer") && failure.contains("set OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{failure}"
    );

    // The CA file appears while the tracer runs.
    let late = certs.dir.join("late-ca.pem");
    broker.create_topic("tls-late-ca", 1).unwrap();
    let tracer = Tracer::start_with(
        broker.port,
        "tls-late-ca",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", late.to_str().unwrap()),
        ],
    );
    produce_and_consume(&broker.bootstrap(), "tls-late-ca", "2", "none").unwrap();
    let failed = tracer.wait_logged("spans_export_failed", |n| n >= 2);
    std::fs::copy(&certs.ca, &late).unwrap();
    tests::client(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "tls-late-ca",
        "2",
        "none",
        "--partition",
        "0",
    ])
    .unwrap();
    let (_, log) = tracer.stop_with_log();
    let start_line = log
        .lines()
        .find(|l| l.contains("cannot connect until this is fixed"))
        .unwrap_or_else(|| panic!("no line at start: {log}"));
    assert!(
        start_line.contains("reading OTEL_EXPORTER_OTLP_CERTIFICATE")
            && start_line.contains("late-ca.pem"),
        "{start_line}"
    );
    let delivered = receiver.topic("tls-late-ca").len() as u64;
    summary(&format!(
        "e2e OTLP over TLS, failures: {built} of {built} spans failed with the wrong CA; with a CA file that came late, {failed} failed before it and {delivered} delivered after"
    ));
    assert!(delivered >= 1, "a send span after the CA came: {log}");
    assert_eq!(
        logged(&log, "spans_exported"),
        delivered,
        "what was exported arrived: {log}"
    );
    assert_eq!(
        logged(&log, "spans_exported") + logged(&log, "spans_export_failed"),
        logged(&log, "producer_spans") + logged(&log, "consumer_spans"),
        "every span delivered or failed: {log}"
    );
}

/// Bad TLS settings that cannot work are refused at start, with one line saying which.
#[test]
fn a_client_certificate_without_its_key_is_refused_at_start() {
    let certs = Certs::make("half").unwrap();
    let out = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/kafka-tracer"),
    )
    .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1")
    .env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &certs.client_cert)
    .env_remove("OTEL_EXPORTER_OTLP_CLIENT_KEY")
    .env("KAFKA_TRACER_METRICS_ADDR", "off")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set without OTEL_EXPORTER_OTLP_CLIENT_KEY"
        ),
        "{stderr}"
    );
}
