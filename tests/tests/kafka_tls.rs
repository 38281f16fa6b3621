//! Kafka over TLS and SASL, against Apache Kafka's own SSL, SASL_SSL and SASL_PLAINTEXT
//! listeners (certificates made by the test): the tracer reads OpenSSL clients' plaintext from
//! their TLS library (librdkafka with the OpenSSL it bundles, kafka-python through CPython's
//! `ssl`), links their send and poll spans as on plaintext connections, and counts a client
//! whose TLS it cannot read (Java's JSSE) while naming its process in the log.

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

/// librdkafka and kafka-python over TLS: every record produced is in a send span carrying the
/// producer's trace context, every record consumed in a poll span under it.
#[test]
fn openssl_clients_are_traced_over_tls() {
    let certs = Certs::make("kafka-tls").unwrap();
    let broker = Broker::apache_secure(&certs).unwrap();
    let ports = broker.secure.unwrap();
    let bootstrap = format!("127.0.0.1:{}", ports.ssl);
    let (_rt, receiver) = Receiver::in_background();
    let endpoint = receiver.http_endpoint();
    let tracer = Tracer::start_with(
        ports.ssl,
        "kafka-tls",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let env = security("SSL", &certs, None);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut runs = Vec::new();
    for lib in ["confluent", "kafka-python"] {
        let topic = format!("tls-{lib}");
        broker.create_topic(&topic, 1).unwrap();
        let produced = records(
            &client_env(
                &env,
                &[
                    "produce",
                    lib,
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
            .unwrap(),
        );
        let consumed = records(
            &client_env(
                &env,
                &[
                    "consume",
                    lib,
                    &bootstrap,
                    &topic,
                    "5",
                    "--partition",
                    "0",
                    "--timeout",
                    "30",
                ],
            )
            .unwrap(),
        );
        runs.push((lib, topic, produced, consumed));
    }
    let (_, log) = tracer.stop_with_log();
    for (lib, topic, produced, consumed) in &runs {
        let seen = Seen::of(&receiver, topic);
        seen.summary(&format!("TLS {lib}"), produced);
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
        "e2e TLS: tls_connections={} kernel_tls_calls={} kernel_tls_untied_calls={} kernel_tls_ciphertext_bytes={}",
        logged(&log, "tls_connections"),
        logged(&log, "kernel_tls_calls"),
        logged(&log, "kernel_tls_untied_calls"),
        logged(&log, "kernel_tls_ciphertext_bytes"),
    ));
    assert!(logged(&log, "tls_connections") >= 4, "{log}");
    assert_eq!(logged(&log, "tls_undecoded_connections"), 0, "{log}");
}
