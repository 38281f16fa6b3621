//! `cargo xtask run --demo` as a newcomer runs it: the demo binary prints linked traces through
//! Apache Kafka, from a Java producer to a Go consumer group, named after the services the
//! clients call themselves (their own OTEL_SERVICE_NAME, read by the tracer from their
//! environment).

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
