//! Records the decoder fixtures in tracer/tests/fixtures: real client<->broker byte streams,
//! captured by kafka-tracer's own eBPF capture on this machine.
//!
//! - `tansu`: confluent-kafka (librdkafka) and kafka-python producing and consuming 5 records
//!   with every codec against tansu;
//! - `apache`: the Java client, franz-go and sarama doing the same against Apache Kafka 4.4,
//!   plus Java transactions (commit, abort, commit, then a read_committed consumer) and a Java
//!   share-group member that releases its first two records.
//!
//! `cargo xtask record-fixtures [tansu|apache]` (as root; both by default). Each connection of a
//! client is written as `<case>/<n>.rec`: the sequence of its data records, each `direction (0
//! sent, 1 received) u8, length u32 LE, bytes`, in capture order, so request/response order is
//! kept. `clients.json` holds what the clients reported producing and consuming.

use std::{collections::BTreeMap, io::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use tests::{Broker, TRACEPARENT, client};
use tracer::capture::{Capture, CaptureConfig, RecordHeaders, RingRecord};

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// One recorded case: what to run, with `{bootstrap}` and `{topic}` filled in.
struct Case {
    name: String,
    /// Client runs whose outputs go into clients.json under `produced`.
    produce: Vec<Vec<String>>,
    /// The consumer run, under `consumed`.
    consume: Vec<String>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Produce 5 records with the test headers, then consume them by assignment, with `lib`.
fn codec_case(prefix: &str, lib: &str, codec: &str) -> Case {
    Case {
        name: format!("{prefix}{lib}-{codec}"),
        produce: vec![args(&[
            "produce",
            lib,
            "{bootstrap}",
            "{topic}",
            "5",
            codec,
            "--traceparent",
            TRACEPARENT,
            "--partition",
            "0",
        ])],
        consume: args(&[
            "consume",
            lib,
            "{bootstrap}",
            "{topic}",
            "5",
            "--partition",
            "0",
            "--timeout",
            "20",
        ]),
    }
}

fn apache_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = ["java", "franz", "sarama"]
        .iter()
        .flat_map(|lib| CODECS.map(|codec| codec_case("apache-", lib, codec)))
        .collect();
    let transact = |count: &str, abort: bool| {
        let mut a = args(&[
            "transact",
            "java",
            "{bootstrap}",
            "{topic}",
            count,
            "none",
            "--partition",
            "0",
        ]);
        if abort {
            a.push("--abort".into());
        }
        a
    };
    cases.push(Case {
        name: "apache-java-transactions".into(),
        produce: vec![
            transact("3", false),
            transact("2", true),
            transact("2", false),
        ],
        consume: args(&[
            "consume",
            "java",
            "{bootstrap}",
            "{topic}",
            "5",
            "--group",
            "fx-committed",
            "--protocol",
            "consumer",
            "--read-committed",
            "--timeout",
            "30",
        ]),
    });
    cases.push(Case {
        name: "apache-java-share".into(),
        produce: vec![args(&[
            "produce",
            "franz",
            "{bootstrap}",
            "{topic}",
            "5",
            "none",
            "--partition",
            "0",
        ])],
        consume: args(&[
            "share",
            "java",
            "{bootstrap}",
            "{topic}",
            "5",
            "--group",
            "fx-share",
            "--release",
            "2",
            "--timeout",
            "30",
        ]),
    });
    cases
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/tests/fixtures");
    let which = std::env::args().nth(1);
    if which.as_deref().is_none_or(|w| w == "tansu") {
        let broker = Broker::start()?;
        let cases: Vec<Case> = ["confluent", "kafka-python"]
            .iter()
            .flat_map(|lib| CODECS.map(|codec| codec_case("", lib, codec)))
            .collect();
        for case in &cases {
            record(&broker, case, &out_dir).await?;
        }
    }
    if which.as_deref().is_none_or(|w| w == "apache") {
        let broker = Broker::apache()?;
        for case in &apache_cases() {
            record(&broker, case, &out_dir).await?;
        }
    }
    Ok(())
}

/// Runs one case against `broker` under a capture and writes its recordings.
async fn record(broker: &Broker, case: &Case, out_dir: &Path) -> anyhow::Result<()> {
    let topic = format!("fx-{}", case.name);
    broker.create_topic(&topic, 1)?;
    let bootstrap = broker.bootstrap();
    let fill = |a: &Vec<String>| -> Vec<String> {
        a.iter()
            .map(|s| {
                s.replace("{bootstrap}", &bootstrap)
                    .replace("{topic}", &topic)
            })
            .collect()
    };
    let run = |a: &Vec<String>| {
        let a = fill(a);
        client(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut capture = Capture::start(&CaptureConfig {
        ports: vec![broker.port],
        detect_kafka: false,
        // Fixtures hold every byte the clients sent, record values too.
        selective_copy: false,
        record_headers: RecordHeaders::All,
        ..CaptureConfig::default()
    })?;
    let mut produced = Vec::new();
    for p in &case.produce {
        let out: serde_json::Value = serde_json::from_str(&run(p)?)?;
        produced.extend(out.as_array().cloned().unwrap_or_default());
    }
    let consumed = run(&case.consume)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Client side only: connections whose remote port is the broker's.
    let mut conns: BTreeMap<u64, Vec<(u8, Vec<u8>)>> = BTreeMap::new();
    capture.drain(|r| {
        if let Ok(RingRecord::Data(d)) = r
            && d.hdr.tuple.rport == broker.port
        {
            conns
                .entry(d.hdr.conn_id)
                .or_default()
                .push((d.hdr.direction, d.payload.to_vec()));
        }
    });
    let k = capture.counters()?;
    anyhow::ensure!(
        k.lost_bytes() == 0,
        "{}: capture lost bytes: {k:?}",
        case.name
    );
    let dir = out_dir.join(&case.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for (n, records) in conns.values().enumerate() {
        let mut f = std::fs::File::create(dir.join(format!("{n}.rec")))?;
        for (d, bytes) in records {
            f.write_all(&[*d])?;
            f.write_all(&(bytes.len() as u32).to_le_bytes())?;
            f.write_all(bytes)?;
        }
    }
    std::fs::write(
        dir.join("clients.json"),
        format!(
            "{{\"produced\": {}, \"consumed\": {consumed}}}\n",
            serde_json::Value::Array(produced)
        ),
    )
    .context("writing clients.json")?;
    println!("{}: {} connections", case.name, conns.len());
    Ok(())
}
