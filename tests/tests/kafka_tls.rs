//! Kafka over TLS and SASL, against Apache Kafka's own SSL, SASL_SSL and SASL_PLAINTEXT
//! listeners (certificates made by the test): the tracer reads the plaintext of clients from
//! their TLS library (librdkafka with the OpenSSL it bundles, kafka-python through CPython's
//! `ssl`, franz-go and sarama through Go's crypto/tls), links their send and poll spans as on
//! plaintext connections, and counts a client whose TLS it cannot read (Java's JSSE) while
//! naming its process in the log. Every client process starts after the tracer and loads its
//! TLS library then.

use tests::{
    Broker, TRACEPARENT,
    broker::{SASL_PASSWORD, SASL_USER},
    certs::Certs,
    client_env,
    receiver::Receiver,
    seen::{Seen, records},
    summary,
    tracer::{Tracer, logged},
};

/// The clients' environment for `protocol` (SSL, SASL_SSL, SASL_PLAINTEXT) with `mechanism`.
fn security(protocol: &str, certs: &Certs, mechanism: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![("KT_SECURITY_PROTOCOL", protocol.to_string())];
    if protocol.contains("SSL") {
        env.push(("KT_SSL_CA", certs.ca.display().to_string()));
    }
    if let Some(m) = mechanism {
        env.push(("KT_SASL_MECHANISM", m.to_string()));
        env.push(("KT_SASL_USER", SASL_USER.to_string()));
        env.push(("KT_SASL_PASSWORD", SASL_PASSWORD.to_string()));
    }
    env
}

/// A client library's first run under a tracer, its records not asserted on: the tracer
/// probes a library it has never seen when the program starts (a Go program's exec) or makes
/// its first connection (a library loaded by a Python process), which takes milliseconds to
/// tens of milliseconds, and a fast client can make its first TLS calls sooner. Every later
/// run is read from its first call (the probes stay on the library's file).
fn first_run(broker: &Broker, env: &[(&str, &str)], bootstrap: &str, lib: &str) {
    let topic = format!("tls-first-run-{lib}");
    broker.create_topic(&topic, 1).unwrap();
    produce(env, lib, bootstrap, &topic, "1", &[]);
}

/// `lib` producing `count` uncompressed records to partition 0 of `topic`, with `extra`
/// arguments added; the client's output.
fn produce(
    env: &[(&str, &str)],
    lib: &str,
    bootstrap: &str,
    topic: &str,
    count: &str,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "produce",
        lib,
        bootstrap,
        topic,
        count,
        "none",
        "--partition",
        "0",
    ];
    args.extend_from_slice(extra);
    client_env(env, &args).unwrap()
}

/// (partition, offset) of records, as a client reports them.
type Offsets = Vec<(i64, i64)>;

/// `lib` producing `count` records to partition 0 of `topic` (with `produce_args` added), then
/// consuming them: the (partition, offset) of each, as the client reports them.
fn exchange(
    env: &[(&str, &str)],
    lib: &str,
    bootstrap: &str,
    topic: &str,
    count: &str,
    produce_args: &[&str],
) -> (Offsets, Offsets) {
    let produced = records(&produce(env, lib, bootstrap, topic, count, produce_args));
    let consume = [
        "consume",
        lib,
        bootstrap,
        topic,
        count,
        "--partition",
        "0",
        "--timeout",
        "30",
    ];
    (produced, records(&client_env(env, &consume).unwrap()))
}

/// librdkafka, kafka-python, franz-go and sarama (and franz-go from a stripped binary, read
/// through Go's function table) over TLS: every record produced is in a send span carrying the
/// producer's trace context, every record consumed in a poll span under it.
#[test]
fn tls_clients_are_traced_through_their_tls_library() {
    let log = tls_clients_traced(
        "loop",
        &[
            "confluent",
            "kafka-python",
            "franz",
            "sarama",
            "franz-stripped",
        ],
    );
    assert!(logged(&log, "tls_connections") >= 9, "{log}");
    assert!(
        logged(&log, "tls_probed_objects") >= 3,
        "libssl, librdkafka, the Go client: {log}"
    );
}

/// The same through the copy path of kernels without `bpf_loop` (forced here): the uprobes'
/// bounded walks and their tail calls, for OpenSSL (librdkafka) and Go's crypto/tls.
#[test]
fn tls_clients_are_traced_with_the_bounded_copy() {
    let log = tls_clients_traced("bounded", &["confluent", "franz"]);
    assert!(log.contains("copy=Bounded"), "{log}");
}

/// Produces and consumes five records over TLS with each of `libs`, the tracer copying on
/// `copy_path`; checks every record is in linked spans, and returns the tracer's log.
fn tls_clients_traced(copy_path: &str, libs: &[&str]) -> String {
    let certs = Certs::make(&format!("kafka-tls-{copy_path}")).unwrap();
    let broker = Broker::apache_secure(&certs).unwrap();
    let ports = broker.secure.unwrap();
    let bootstrap = format!("127.0.0.1:{}", ports.ssl);
    let (_rt, receiver) = Receiver::in_background();
    let endpoint = receiver.http_endpoint();
    let tracer = Tracer::start_with(
        ports.ssl,
        &format!("kafka-tls-{copy_path}"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("KAFKA_TRACER_COPY_PATH", copy_path),
        ],
    );
    let env = security("SSL", &certs, None);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for lib in libs {
        first_run(&broker, &env, &bootstrap, lib);
    }
    let mut runs = Vec::new();
    for lib in libs {
        let topic = format!("tls-{copy_path}-{lib}");
        broker.create_topic(&topic, 1).unwrap();
        let (produced, consumed) = exchange(
            &env,
            lib,
            &bootstrap,
            &topic,
            "5",
            &["--traceparent", TRACEPARENT],
        );
        runs.push((lib, topic, produced, consumed));
    }
    let (_, log) = tracer.stop_with_log();
    for (lib, topic, produced, consumed) in &runs {
        let seen = Seen::of(&receiver, topic);
        seen.summary(&format!("TLS {lib} ({copy_path} copy)"), produced);
        assert_eq!(produced.len(), 5, "{lib}");
        assert_eq!(consumed.len(), 5, "{lib}");
        assert_eq!(
            seen.lost(produced),
            0,
            "{lib}: every record in a send span: {log}"
        );
        assert_eq!(
            seen.unpolled(consumed),
            0,
            "{lib}: every record polled: {log}"
        );
    }
    summary(&format!(
        "e2e TLS ({copy_path} copy): tls_connections={} kernel_tls_calls={} kernel_tls_untied_calls={} kernel_tls_ciphertext_bytes={}",
        logged(&log, "tls_connections"),
        logged(&log, "kernel_tls_calls"),
        logged(&log, "kernel_tls_untied_calls"),
        logged(&log, "kernel_tls_ciphertext_bytes"),
    ));
    assert_eq!(logged(&log, "tls_undecoded_connections"), 0, "{log}");
    log
}

/// SASL PLAIN and SCRAM-SHA-512, over TLS and without, through librdkafka, kafka-python and the
/// Java client (without TLS: JSSE is not readable), and a refused password: every record is in
/// linked spans, each authentication is counted and becomes an `authenticate` span (the refused
/// one with an error status), and the password appears nowhere the tracer writes: not in a
/// span, not in its log at debug level, not in /metrics, although every client's environment
/// holds it.
#[test]
fn sasl_is_traced_and_no_credential_leaves_the_tracer() {
    let certs = Certs::make("kafka-sasl").unwrap();
    let broker = Broker::apache_secure(&certs).unwrap();
    let ports = broker.secure.unwrap();
    let (_rt, receiver) = Receiver::in_background();
    let endpoint = receiver.http_endpoint();
    let metrics = format!("127.0.0.1:{}", tests::tracer::free_port());
    let tracer = Tracer::start_on(
        &[ports.sasl_ssl, ports.sasl_plaintext],
        "kafka-sasl",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("KAFKA_TRACER_METRICS_ADDR", &metrics),
            ("KAFKA_TRACER_LOG", "tracer=debug"),
        ],
    );
    let cases = [
        ("SASL_SSL", ports.sasl_ssl, "PLAIN", "confluent"),
        ("SASL_SSL", ports.sasl_ssl, "SCRAM-SHA-512", "kafka-python"),
        (
            "SASL_PLAINTEXT",
            ports.sasl_plaintext,
            "SCRAM-SHA-512",
            "confluent",
        ),
        ("SASL_PLAINTEXT", ports.sasl_plaintext, "PLAIN", "java"),
        ("SASL_SSL", ports.sasl_ssl, "SCRAM-SHA-512", "franz"),
        ("SASL_SSL", ports.sasl_ssl, "PLAIN", "sarama"),
    ];
    let ssl_env = security("SASL_SSL", &certs, Some("PLAIN"));
    let ssl_env: Vec<(&str, &str)> = ssl_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for lib in ["confluent", "kafka-python", "franz"] {
        first_run(
            &broker,
            &ssl_env,
            &format!("127.0.0.1:{}", ports.sasl_ssl),
            lib,
        );
    }
    let mut runs = Vec::new();
    for (protocol, port, mechanism, lib) in cases {
        let topic = format!(
            "sasl-{}-{}-{lib}",
            protocol.to_lowercase(),
            mechanism.to_lowercase()
        );
        broker.create_topic(&topic, 1).unwrap();
        let bootstrap = format!("127.0.0.1:{port}");
        let env = security(protocol, &certs, Some(mechanism));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (produced, consumed) = exchange(&env, lib, &bootstrap, &topic, "4", &[]);
        runs.push((
            format!("{protocol} {mechanism} {lib}"),
            topic,
            produced,
            consumed,
        ));
    }
    // A refused password.
    let mut wrong = security("SASL_PLAINTEXT", &certs, Some("PLAIN"));
    wrong.retain(|(k, _)| *k != "KT_SASL_PASSWORD");
    wrong.push(("KT_SASL_PASSWORD", "not-the-password".into()));
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = client_env(
        &wrong,
        &[
            "produce",
            "kafka-python",
            &format!("127.0.0.1:{}", ports.sasl_plaintext),
            "sasl-refused",
            "1",
            "none",
        ],
    );
    assert!(refused.is_err(), "a wrong password is refused: {refused:?}");
    let scrape = tests::tracer::scrape(&metrics);
    let (stdout, log) = tracer.stop_with_output();

    for (case, topic, produced, consumed) in &runs {
        let seen = Seen::of(&receiver, topic);
        seen.summary(&format!("SASL {case}"), produced);
        assert_eq!((produced.len(), consumed.len()), (4, 4), "{case}");
        assert_eq!(
            seen.lost(produced),
            0,
            "{case}: every record in a send span: {log}"
        );
        assert_eq!(
            seen.unpolled(consumed),
            0,
            "{case}: every record polled: {log}"
        );
    }
    let auth: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|r| r.span.name == "authenticate")
        .collect();
    let failed: Vec<_> = auth
        .iter()
        .filter(|r| r.attr("error.type").as_deref() == Some("SASL_AUTHENTICATION_FAILED"))
        .collect();
    let (authentications, failures) = (
        logged(&log, "sasl_authentications"),
        logged(&log, "sasl_authentication_failures"),
    );
    summary(&format!(
        "e2e SASL: {authentications} authentications ({failures} refused), {} authenticate spans ({} with an error); mechanisms {:?}",
        auth.len(),
        failed.len(),
        auth.iter()
            .filter_map(|r| r.attr("messaging.kafka.sasl.mechanism"))
            .collect::<std::collections::BTreeSet<_>>()
    ));
    // Each client makes at least two connections (bootstrap and broker), each authenticated.
    assert!(authentications >= 2 * 2 * runs.len() as u64, "{log}");
    assert!(failures >= 1, "{log}");
    assert_eq!(
        auth.len() as u64,
        authentications,
        "a span per authentication"
    );
    assert_eq!(failed.len() as u64, failures);
    for m in ["PLAIN", "SCRAM-SHA-512"] {
        assert!(
            auth.iter()
                .any(|r| r.attr("messaging.kafka.sasl.mechanism").as_deref() == Some(m)),
            "{m}"
        );
    }
    // No credential in anything the tracer wrote or exported.
    let spans = format!("{:?}", receiver.spans());
    for (what, text) in [
        ("the spans", &spans),
        ("the log", &log),
        ("standard output", &stdout),
        ("/metrics", &scrape),
    ] {
        assert!(!text.contains(SASL_PASSWORD), "the password is in {what}");
        assert!(
            !text.contains("not-the-password"),
            "the wrong password is in {what}"
        );
    }
}

/// A Java client over TLS (JSSE, which no uprobe reads): its connections are counted as TLS
/// the tracer cannot read, while they are open, and the log names its process once.
#[test]
fn a_tls_client_the_tracer_cannot_read_is_counted_and_named() {
    let certs = Certs::make("kafka-jsse").unwrap();
    let broker = Broker::apache_secure(&certs).unwrap();
    let ports = broker.secure.unwrap();
    broker.create_topic("jsse", 1).unwrap();
    let tracer = Tracer::start_with(ports.ssl, "kafka-jsse", &[]);
    let env = security("SSL", &certs, None);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bootstrap = format!("127.0.0.1:{}", ports.ssl);
    // A consumer waiting for records that never come keeps its connections open.
    let consumer = tests::BackgroundClient::start_env(
        &env,
        &[
            "consume",
            "java",
            &bootstrap,
            "jsse",
            "1",
            "--partition",
            "0",
            "--timeout",
            "12",
        ],
    )
    .unwrap();
    let open = tracer.wait_logged("tls_undecoded_connections", |n| n >= 1);
    let pid = consumer.pid();
    let _ = consumer.finish();
    let (spans, log) = tracer.stop_with_log();
    let named: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS connection not traced"))
        .collect();
    summary(&format!(
        "e2e TLS a tracer cannot read (Java's JSSE): {open} connections counted while open, {} log line naming the process, {} spans",
        named.len(),
        spans.len()
    ));
    assert_eq!(named.len(), 1, "once per process: {log}");
    assert!(named[0].contains(&format!("pid={pid}")), "{}", named[0]);
    assert!(named[0].contains("JSSE"), "{}", named[0]);
    assert!(
        spans.is_empty(),
        "nothing decoded from ciphertext: {spans:?}"
    );
    assert_eq!(
        logged(&log, "resyncs"),
        0,
        "ciphertext is not framed: {log}"
    );
}

/// A TLS producer already running when the tracer starts: its process is probed at start, its
/// next TLS calls tie its connection, and every record it delivers a second after the tracer
/// attached is in a send span.
#[test]
fn a_tls_client_started_before_the_tracer_is_traced_from_attach() {
    let certs = Certs::make("kafka-tls-early").unwrap();
    let broker = Broker::apache_secure(&certs).unwrap();
    let ports = broker.secure.unwrap();
    broker.create_topic("tls-early", 1).unwrap();
    let env = security("SSL", &certs, None);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bootstrap = format!("127.0.0.1:{}", ports.ssl);
    let producer = tests::BackgroundClient::start_env(
        &env,
        &[
            "produce",
            "confluent",
            &bootstrap,
            "tls-early",
            "40",
            "none",
            "--partition",
            "0",
            "--flush-every",
            "1",
            "--interval",
            "0.1",
        ],
    )
    .unwrap();
    tests::broker::wait_for_clients_on(ports.ssl, 1, std::time::Duration::from_secs(30)).unwrap();
    let (_rt, receiver) = Receiver::in_background();
    let endpoint = receiver.http_endpoint();
    let tracer = Tracer::start_with(
        ports.ssl,
        "kafka-tls-early",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let attached = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out: serde_json::Value = serde_json::from_str(&producer.finish().unwrap()).unwrap();
    let (_, log) = tracer.stop_with_log();
    let after: Vec<(i64, i64)> = out
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["time"].as_f64().unwrap() > attached + 1.0)
        .map(|r| {
            (
                r["partition"].as_i64().unwrap(),
                r["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let seen = Seen::of(&receiver, "tls-early");
    seen.summary("TLS client before the tracer", &after);
    assert!(after.len() >= 10, "{out}");
    assert_eq!(seen.lost(&after), 0, "{log}");
    assert!(logged(&log, "tls_connections") >= 1, "{log}");
}
