//! Records the decoder fixtures in tracer/tests/fixtures: real client<->broker byte streams,
//! captured by kafka-tracer's own eBPF capture on this machine, for confluent-kafka (librdkafka)
//! and kafka-python producing and consuming 5 records with every codec against tansu.
//!
//! `cargo run --release -p tests --bin record-fixtures` (as root). Each connection of a client is
//! written as `<case>/<n>.rec`: the sequence of its data records, each `direction (0 sent,
//! 1 received) u8, length u32 LE, bytes`, in capture order, so request/response order is kept.

use std::{collections::BTreeMap, io::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use tests::{Broker, TRACEPARENT, client};
use tracer::capture::{Capture, CaptureConfig, Record};

const LIBS: [&str; 2] = ["confluent", "kafka-python"];
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/tests/fixtures");
    let broker = Broker::start()?;
    for lib in LIBS {
        for codec in CODECS {
            let case = format!("{lib}-{codec}");
            let topic = format!("fx-{case}");
            broker.create_topic(&topic, 1)?;
            let mut capture = Capture::start(&CaptureConfig {
                ports: vec![broker.port],
                detect_kafka: false,
                ..CaptureConfig::default()
            })?;
            let produced = client(&[
                "produce",
                lib,
                &broker.bootstrap(),
                &topic,
                "5",
                codec,
                "--traceparent",
                TRACEPARENT,
                "--partition",
                "0",
            ])?;
            let consumed = client(&[
                "consume",
                lib,
                &broker.bootstrap(),
                &topic,
                "5",
                "--partition",
                "0",
                "--timeout",
                "20",
            ])?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Client side only: connections whose remote port is the broker's.
            let mut conns: BTreeMap<u64, Vec<(u8, Vec<u8>)>> = BTreeMap::new();
            capture.drain(|r| {
                if let Ok(Record::Data(d)) = r
                    && d.hdr.tuple.rport == broker.port
                {
                    conns
                        .entry(d.hdr.conn_id)
                        .or_default()
                        .push((d.hdr.direction, d.payload.to_vec()));
                }
            });
            let k = capture.counters()?;
            anyhow::ensure!(k.lost_bytes() == 0, "{case}: capture lost bytes: {k:?}");
            let dir = out_dir.join(&case);
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
                format!("{{\"produced\": {produced}, \"consumed\": {consumed}}}\n"),
            )
            .context("writing clients.json")?;
            println!("{case}: {} connections", conns.len());
        }
    }
    Ok(())
}
