//! `cargo xtask run --demo`: a newcomer's first minute with kafka-tracer. Starts a local Apache
//! Kafka broker, the tracer on its port, two producers and a consumer group (real client
//! libraries, unchanged: a Java producer puts a W3C `traceparent` on its records as an
//! instrumented service would, a Go producer (sarama) sends none, and a Go consumer group
//! (franz-go) reads both), then prints the traces the tracer built from the kernel's view of
//! their sockets, as trees. With `--jaeger` it also starts Jaeger on its usual ports, exports
//! there, prints each trace as Jaeger's query API gives it back with the URLs that find it, and
//! keeps Jaeger up until Ctrl-C. With OTEL_EXPORTER_OTLP_ENDPOINT set (and no `--jaeger`), the
//! spans go there instead (a Jaeger or collector of the user's) and the demo says where to
//! look.

use std::{
    collections::{BTreeMap, HashSet},
    process::ExitCode,
};

use anyhow::Context as _;
use serde_json::Value;
use tests::{
    Broker, Interrupts, client_env,
    jaeger::{Jaeger, Ports},
    tracer::{Tracer, logged},
};

/// The services the demo's clients call themselves.
const SERVICES: [&str; 3] = ["checkout", "inventory", "shipping"];

const TOPIC: &str = "demo-orders";

fn main() -> ExitCode {
    let with_jaeger = std::env::args().skip(1).any(|a| a == "--jaeger");
    match run(with_jaeger) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A fresh W3C traceparent (sampled), so each run shows a new trace.
fn traceparent() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos()) as u64
        ^ u64::from(std::process::id()) << 32;
    let a = tests::payload(seed, 24);
    let hex: String = a.iter().map(|b| format!("{b:02x}")).collect();
    format!("00-{}-{}-01", &hex[..32], &hex[32..48])
}

fn run(with_jaeger: bool) -> anyhow::Result<()> {
    let jaeger = if with_jaeger {
        eprintln!("demo: starting Jaeger");
        Some(Jaeger::start_with(Ports::USUAL, None).context(
            "starting Jaeger on its usual ports (4317, 4318, 16685, 16686): if one already runs there, use it instead: OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 cargo xtask run --demo",
        )?)
    } else {
        None
    };
    eprintln!("demo: starting Apache Kafka (about 10 s)");
    let broker = Broker::apache()?;
    broker.create_topic(TOPIC, 2)?;
    eprintln!("demo: Apache Kafka on {}", broker.bootstrap());
    // Where spans go: the demo's Jaeger, the user's OTLP settings when there are some, else
    // the terminal.
    let otel: Vec<(&str, String)> = match &jaeger {
        Some(j) => vec![("OTEL_EXPORTER_OTLP_ENDPOINT", j.otlp_http_endpoint())],
        None => [
            "OTEL_TRACES_EXPORTER",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k, v)))
        .collect(),
    };
    let env: Vec<(&str, &str)> = otel.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tracer = Tracer::start_with(broker.port, "demo", &env);
    eprintln!("demo: kafka-tracer attached; running the clients (about 15 s)");
    let bootstrap = broker.bootstrap();
    let tp = traceparent();
    client_env(
        &[("OTEL_SERVICE_NAME", "checkout")],
        &[
            "produce",
            "java",
            &bootstrap,
            TOPIC,
            "3",
            "zstd",
            "--traceparent",
            &tp,
            "--partition",
            "0",
        ],
    )?;
    client_env(
        &[("OTEL_SERVICE_NAME", "inventory")],
        &[
            "produce",
            "sarama",
            &bootstrap,
            TOPIC,
            "2",
            "gzip",
            "--partition",
            "1",
        ],
    )?;
    client_env(
        &[("OTEL_SERVICE_NAME", "shipping")],
        &[
            "consume",
            "franz",
            &bootstrap,
            TOPIC,
            "5",
            "--group",
            "shipping",
            "--timeout",
            "40",
        ],
    )?;
    let (resource_spans, log) = tracer.stop_with_resources();
    if let Some(jaeger) = &jaeger {
        return show_in_jaeger(jaeger, &log, &tp);
    }
    let spans: Vec<(String, Value)> = resource_spans
        .into_iter()
        .flat_map(|(service, spans)| spans.into_iter().map(move |s| (service.clone(), s)))
        .collect();
    if spans.is_empty() && !otel.is_empty() {
        println!(
            "Spans went to your OTLP endpoint. In Jaeger (http://localhost:16686) search service \
             `checkout`, or tag messaging.destination.name={TOPIC}; the header's trace id is {}.",
            &tp[3..35]
        );
        return Ok(());
    }
    let linked = print_traces(&spans, |_| ());
    anyhow::ensure!(
        linked > 0,
        "no producer span with a consumer span under it; the tracer's log:\n{log}"
    );
    println!(
        "{linked} traces link a producer to its consumer. {}",
        explained(&tp)
    );
    Ok(())
}

/// What the traces show.
fn explained(tp: &str) -> String {
    format!(
        "Trace {} is the one `checkout` (Java) started in its records' `traceparent` header; the \
         other trace id was derived from the batch's (topic, partition, offset): `inventory` \
         (Go, sarama) sent no header at all. `shipping` is a Go consumer group (franz-go). No \
         client was changed; the tracer saw their sockets from the kernel.",
        &tp[3..35]
    )
}

/// The traces as Jaeger's HTTP query API gives them back, found by each service, with the URL
/// of each trace and the queries that find them; then Jaeger stays up until Ctrl-C.
fn show_in_jaeger(jaeger: &Jaeger, log: &str, tp: &str) -> anyhow::Result<()> {
    jaeger.settle(logged(log, "spans_exported"));
    let mut spans = Vec::new();
    let mut seen = HashSet::new();
    for service in SERVICES {
        for (s, span) in jaeger.http_traces(&jaeger.service_query(service))? {
            if seen.insert(span["spanId"].as_str().unwrap_or_default().to_string()) {
                spans.push((s, span));
            }
        }
    }
    let base = jaeger.query_url();
    let linked = print_traces(&spans, |trace| {
        println!("    {base}/api/v3/traces/{trace}");
    });
    anyhow::ensure!(
        linked > 0,
        "Jaeger shows no producer span with a consumer span under it; the tracer's log:\n{log}"
    );
    println!(
        "{linked} traces link a producer to its consumer, found in Jaeger. {}",
        explained(tp)
    );
    println!(
        "\nEach URL above is one trace from Jaeger's query API. The queries that find them by service:"
    );
    for service in SERVICES {
        println!("    {base}{}", jaeger.service_query(service));
    }
    let interrupts = Interrupts::block();
    println!(
        "Jaeger keeps them, with OTLP on {} and {}, until you press Ctrl-C.",
        jaeger.otlp_grpc_endpoint(),
        jaeger.otlp_http_endpoint()
    );
    interrupts.wait();
    Ok(())
}

/// Prints each trace as a tree of `name (service, details, duration)`, then `after(trace id)`;
/// returns how many hold a consumer span under a producer span.
fn print_traces(spans: &[(String, Value)], after: impl Fn(&str)) -> usize {
    let mut traces: BTreeMap<&str, Vec<&(String, Value)>> = BTreeMap::new();
    for s in spans {
        traces
            .entry(s.1["traceId"].as_str().unwrap_or_default())
            .or_default()
            .push(s);
    }
    let attr = |s: &Value, k: &str| -> Option<String> {
        let v = &s["attributes"].as_array()?.iter().find(|a| a["key"] == k)?["value"];
        v["stringValue"]
            .as_str()
            .or(v["intValue"].as_str())
            .map(str::to_string)
    };
    let nanos = |s: &Value, k: &str| s[k].as_str().and_then(|n| n.parse::<u64>().ok());
    let line = |depth: usize, (service, s): &(String, Value)| {
        let offsets = attr(s, "messaging.kafka.offset").unwrap_or_else(|| {
            format!(
                "{}-{}",
                attr(s, "messaging.kafka.first_offset").unwrap_or_default(),
                attr(s, "messaging.kafka.last_offset").unwrap_or_default()
            )
        });
        let ms = match (nanos(s, "startTimeUnixNano"), nanos(s, "endTimeUnixNano")) {
            (Some(a), Some(b)) => format!("{:.1} ms", b.saturating_sub(a) as f64 / 1e6),
            _ => String::new(),
        };
        let group = attr(s, "messaging.consumer.group.name")
            .map(|g| format!(", group {g}"))
            .unwrap_or_default();
        println!(
            "{}{} [{service}] partition {} offsets {offsets}{group}, {ms}",
            "    ".repeat(depth),
            s["name"].as_str().unwrap_or_default(),
            attr(s, "messaging.destination.partition.id").unwrap_or_default(),
        );
    };
    let mut linked = 0;
    for (trace, spans) in &traces {
        let ids: Vec<&str> = spans
            .iter()
            .filter_map(|s| s.1["spanId"].as_str())
            .collect();
        let roots: Vec<_> = spans
            .iter()
            .filter(|s| {
                s.1["parentSpanId"]
                    .as_str()
                    .is_none_or(|p| !ids.contains(&p))
            })
            .collect();
        println!("trace {trace}");
        let mut has_child = false;
        for root in roots {
            line(1, root);
            for child in spans
                .iter()
                .filter(|c| c.1["parentSpanId"].as_str() == root.1["spanId"].as_str())
            {
                line(2, child);
                has_child = true;
            }
        }
        linked += usize::from(has_child);
        after(trace);
        println!();
    }
    linked
}
