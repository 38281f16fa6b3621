//! `cargo xtask run --demo` as a newcomer runs it: the demo binary prints linked traces through
//! Apache Kafka, from a Java producer to a Go consumer group, named after the services the
//! clients call themselves (their own OTEL_SERVICE_NAME, read by the tracer from their
//! environment); with `--jaeger`, the URLs it prints answer with those traces from Jaeger.

use std::io::BufRead as _;

#[test]
fn the_demo_shows_linked_traces() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("2 traces link a producer to its consumer. Trace "),
        "{stdout}"
    );
    for needle in [
        "    send demo-orders [checkout] partition 0 offsets 0-2",
        "    send demo-orders [inventory] partition 1 offsets 0-1",
        "        poll demo-orders [shipping] partition 0",
        ", group shipping,",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
}

/// `cargo xtask run --demo --jaeger`: each trace URL the demo prints answers, while it waits for
/// Ctrl-C, with a trace from Jaeger that holds the producer's send span and the consumer's
/// poll span; each service query it prints finds traces; Ctrl-C ends it cleanly.
#[test]
fn the_jaeger_demo_prints_urls_that_find_the_traces() {
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--jaeger")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    let mut waiting = false;
    for line in std::io::BufReader::new(demo.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        waiting = line.contains("until you press Ctrl-C");
        printed.push(line);
        if waiting {
            break;
        }
    }
    let stdout = printed.join("\n");
    if !waiting {
        let out = demo.wait_with_output().unwrap();
        panic!(
            "the demo ended ({}) before waiting: {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let urls: Vec<&str> = printed
        .iter()
        .filter_map(|l| l.trim().strip_prefix("http://127.0.0.1:16686"))
        .collect();
    let (traces, queries): (Vec<&str>, Vec<&str>) = urls.iter().partition(|u| !u.contains('?'));
    assert_eq!(traces.len(), 2, "a URL per trace: {stdout}");
    assert_eq!(queries.len(), 3, "a query per service: {stdout}");
    for path in traces.iter().chain(&queries) {
        let body = tests::jaeger::http_get(16686, path).unwrap_or_else(|e| panic!("{path}: {e:#}"));
        for name in ["send demo-orders", "poll demo-orders"] {
            assert!(
                body.contains(&format!("\"name\":\"{name}\"")),
                "{name} missing from {path}: {body}"
            );
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let out = demo.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 traces link a producer to its consumer, found in Jaeger."),
        "{stdout}"
    );
}
