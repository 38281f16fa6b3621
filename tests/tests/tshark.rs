//! Cross-check of the decoders against Wireshark's Kafka dissector (tshark), on the recorded
//! real traffic in tracer/tests/fixtures: each recording is turned into a pcap (text2pcap, with
//! TCP sequence numbers per direction) and read by both. Wireshark 4.0 (Debian 12) decodes
//! bodies only up to Produce v8, Fetch v11, Metadata v9 and ApiVersions v3, older than what these
//! clients speak, so every request is compared by API key, version and correlation id, and
//! bodies where the dissector read them: Metadata topic names, OffsetCommit offsets.

use std::{fmt::Write as _, path::Path, process::Command};

use tracer::{
    kafka::{DecodeOptions, Exchange, Request, Response, Session, SessionCounters},
    reassembly::Stream,
};
use tracer_common::Direction;

/// (direction, bytes) of each record of a recording.
fn records(file: &Path) -> Vec<(u8, Vec<u8>)> {
    let b = std::fs::read(file).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = u32::from_le_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((b[at], b[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    out
}

/// tshark's rows for the recording: api key, version, correlation id, topic, partition, offset
/// of client-sent frames ('|'-separated, empty fields where the dissector has none).
fn tshark_requests(file: &Path, dir: &Path) -> Vec<Vec<String>> {
    let mut text = String::new();
    for (d, bytes) in records(file) {
        for chunk in bytes.chunks(60000) {
            text.push_str(if d == 0 { "O\n" } else { "I\n" });
            for (i, line) in chunk.chunks(16).enumerate() {
                let _ = write!(text, "{:06x}", i * 16);
                for b in line {
                    let _ = write!(text, " {b:02x}");
                }
                text.push('\n');
            }
        }
    }
    let (txt, pcap) = (dir.join("in.txt"), dir.join("in.pcap"));
    std::fs::write(&txt, text).unwrap();
    let st = Command::new("text2pcap")
        .args(["-q", "-D", "-T", "9092,40000", "-4", "127.0.0.1,127.0.0.2"])
        .arg(&txt)
        .arg(&pcap)
        .status()
        .expect("text2pcap (cargo xtask setup installs tshark)");
    assert!(st.success());
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-d",
            "tcp.port==9092,kafka",
            "-Y",
            "tcp.dstport==9092",
            "-T",
            "fields",
            "-E",
            "separator=|",
        ])
        .args([
            "-e",
            "kafka.api_key",
            "-e",
            "kafka.api_version",
            "-e",
            "kafka.correlation_id",
            "-e",
            "kafka.topic_name",
            "-e",
            "kafka.partition_id",
            "-e",
            "kafka.offset",
        ])
        .output()
        .expect("tshark");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('|'))
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

fn decode(file: &Path) -> Vec<Exchange> {
    let mut session = Session::new(false, 8 << 20, 64);
    let mut streams = [Stream::default(), Stream::default()];
    let mut out = Vec::new();
    let mut counters = SessionCounters::default();
    for (d, bytes) in records(file) {
        let dir = if d == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let s = &mut streams[dir as usize];
        let pos = s.bytes;
        let piece = s.push(pos, &bytes);
        session.push(
            dir,
            &piece,
            0,
            0,
            &DecodeOptions::default(),
            &mut counters,
            &mut |e| out.push(e),
        );
    }
    session.close(&mut counters, &mut |e| out.push(e));
    out.sort_by_key(|e| e.header.correlation_id);
    out
}

#[test]
fn decoders_agree_with_wiresharks_kafka_dissector() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/tests/fixtures");
    let tmp = std::env::temp_dir().join(format!("kt-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (mut requests, mut topics, mut commits) = (0, 0, 0);
    for case in [
        "confluent-none",
        "confluent-zstd",
        "kafka-python-gzip",
        "kafka-python-snappy",
    ] {
        for file in std::fs::read_dir(root.join(case))
            .unwrap()
            .flatten()
            .map(|e| e.path())
        {
            if file.extension().is_none_or(|x| x != "rec") {
                continue;
            }
            let theirs = tshark_requests(&file, &tmp);
            let ours = decode(&file);
            let ids: Vec<(String, String, String)> = theirs
                .iter()
                .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
                .collect();
            let mine: Vec<(String, String, String)> = ours
                .iter()
                .map(|e| {
                    (
                        e.header.api_key.to_string(),
                        e.header.api_version.to_string(),
                        e.header.correlation_id.to_string(),
                    )
                })
                .collect();
            assert_eq!(mine, ids, "{}: requests", file.display());
            requests += mine.len();
            for (row, e) in theirs.iter().zip(&ours) {
                if let Ok(Request::Group(g)) = &e.request
                    && !g.offsets.is_empty()
                {
                    let o = &g.offsets[0];
                    assert_eq!(
                        (
                            o.topic.to_string(),
                            o.partition.to_string(),
                            o.offset.to_string()
                        ),
                        (row[3].clone(), row[4].clone(), row[5].clone()),
                        "{}: OffsetCommit",
                        file.display()
                    );
                    commits += 1;
                }
            }
            // Topic names in Metadata responses, as the dissector reads them.
            let out = Command::new("tshark")
                .arg("-r")
                .arg(tmp.join("in.pcap"))
                .args([
                    "-d",
                    "tcp.port==9092,kafka",
                    "-Y",
                    "kafka.api_key==3 && tcp.srcport==9092",
                    "-T",
                    "fields",
                    "-e",
                    "kafka.topic_name",
                ])
                .output()
                .unwrap();
            let theirs: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .flat_map(|l| l.split(',').map(str::to_string))
                .filter(|s| !s.is_empty())
                .collect();
            let mine: Vec<String> = ours
                .iter()
                .filter_map(|e| match &e.response {
                    Some(Ok(Response::Metadata(m))) => Some(
                        m.topics
                            .iter()
                            .filter_map(|t| t.name.clone())
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect();
            // Wireshark 4.0 reads Metadata up to v9 and gives up on some later responses (the
            // kafka-python ones): compare where it produced names.
            if !theirs.is_empty() {
                assert_eq!(mine, theirs, "{}: Metadata topics", file.display());
                topics += theirs.len();
            }
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    eprintln!("agreed on {requests} requests, {topics} Metadata topics, {commits} OffsetCommits");
    assert!(requests > 40 && topics > 0 && commits > 0);
}
