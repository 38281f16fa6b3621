//! A real Jaeger v2 (built by `cargo xtask` from `tests/jaeger`, path in `KAFKA_TRACER_JAEGER`),
//! keeping traces in memory (`tests/jaeger/config.yaml`): one per test on free ports, or the
//! demo's on the usual ones. The tests export to its OTLP receiver and find traces again
//! through its query API, as a user would: by service, by topic, by offset.
//!
//! Searching by attribute goes through the gRPC query API (`jaeger.api_v3.QueryService`): the
//! pinned release's HTTP `/api/v3/traces` takes a service but no attributes (those came in
//! v2.19, which the Go module proxy does not serve). The HTTP API serves the README's `curl`
//! examples and the demo's trace URLs.

use std::{
    collections::{HashMap, HashSet},
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    broker::die_with_parent,
    receiver::{Received, hex, received},
    seen::{Seen, Spans},
    summary,
    tracer::{free_port, service_name},
};

/// The ports one Jaeger listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// OTLP over HTTP (`/v1/traces`) and gRPC.
    pub otlp_http: u16,
    pub otlp_grpc: u16,
    /// The query service's HTTP API (and the UI's place) and its gRPC API.
    pub query: u16,
    pub query_grpc: u16,
}

impl Ports {
    /// Jaeger's usual ports, as its documentation and the README name them.
    pub const USUAL: Self = Self {
        otlp_http: 4318,
        otlp_grpc: 4317,
        query: 16686,
        query_grpc: 16685,
    };

    /// Ports nothing listens on now, so tests run side by side.
    pub fn free() -> Self {
        Self {
            otlp_http: free_port(),
            otlp_grpc: free_port(),
            query: free_port(),
            query_grpc: free_port(),
        }
    }
}

/// TLS on Jaeger's OTLP receivers: its certificate and key, and the CA whose client
/// certificates it requires (mutual TLS) when there is one.
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A running Jaeger, killed on drop.
pub struct Jaeger {
    child: Child,
    pub ports: Ports,
    /// `https` when the OTLP receivers serve TLS.
    scheme: &'static str,
    log: PathBuf,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The jaeger.api_v3 messages the tests send, as its `query_service.proto` numbers them (the
/// answers are OpenTelemetry's own `TracesData`).
mod api_v3 {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TraceQueryParameters {
        #[prost(string, tag = "1")]
        pub service_name: String,
        #[prost(map = "string, string", tag = "3")]
        pub attributes: HashMap<String, String>,
        #[prost(message, optional, tag = "4")]
        pub start_time_min: Option<Timestamp>,
        #[prost(message, optional, tag = "5")]
        pub start_time_max: Option<Timestamp>,
        /// Traces returned at most (the memory store refuses 0).
        #[prost(int32, tag = "8")]
        pub search_depth: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FindTracesRequest {
        #[prost(message, optional, tag = "1")]
        pub query: Option<TraceQueryParameters>,
    }
}

impl Jaeger {
    /// One on free ports of 127.0.0.1, OTLP without TLS.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Ports::free(), None)
    }

    /// One on `ports` of 127.0.0.1, its OTLP receivers serving `tls` when given; waits (at
    /// most 60 s) until its query API answers.
    pub fn start_with(ports: Ports, tls: Option<&ServerTls>) -> anyhow::Result<Self> {
        let bin = crate::broker::installed("KAFKA_TRACER_JAEGER")?;
        let dir = std::env::temp_dir().join(format!("kt-jaeger-{}", ports.query));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jaeger/config.yaml"));
        if let Some(tls) = tls {
            // A second configuration merges into the first (the collector's own rule).
            let overlay = dir.join("tls.yaml");
            std::fs::write(&overlay, tls_overlay(tls))?;
            cmd.arg("--config").arg(overlay);
        }
        let log = dir.join("stderr");
        cmd.env("JAEGER_HOST", "127.0.0.1")
            .env("JAEGER_OTLP_HTTP_PORT", ports.otlp_http.to_string())
            .env("JAEGER_OTLP_GRPC_PORT", ports.otlp_grpc.to_string())
            .env("JAEGER_QUERY_PORT", ports.query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", ports.query_grpc.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout"))?)
            .stderr(std::fs::File::create(&log)?);
        die_with_parent(&mut cmd);
        let mut jaeger = Self {
            child: cmd.spawn()?,
            ports,
            scheme: if tls.is_some() { "https" } else { "http" },
            log,
        };
        let end = Instant::now() + Duration::from_secs(60);
        while jaeger.get("/api/v3/services").is_err() {
            if let Some(status) = jaeger.child.try_wait()? {
                anyhow::bail!("Jaeger exited ({status}): {}", jaeger.log_tail());
            }
            if Instant::now() > end {
                anyhow::bail!("Jaeger did not answer in 60 s: {}", jaeger.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(jaeger)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }

    /// The OTLP/HTTP base endpoint (exporters append `/v1/traces`).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.ports.otlp_http)
    }

    /// The OTLP/gRPC endpoint.
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.ports.otlp_grpc)
    }

    /// The query service's base URL.
    pub fn query_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.query)
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        http_get(self.ports.query, path)
    }

    /// The HTTP query that finds the traces with a span of `service` that started in the last
    /// hour (the README's `curl` example).
    pub fn service_query(&self, service: &str) -> String {
        let now = unix_now();
        format!(
            "/api/v3/traces?query.service_name={service}&query.start_time_min={}&query.start_time_max={}&query.num_traces=1000",
            rfc3339(now - 3600),
            rfc3339(now + 60)
        )
    }

    /// The spans of every trace found by an HTTP query (`/api/v3/traces...`), as
    /// `(service, span)` in Jaeger's OTLP JSON; empty while none matches.
    pub fn http_traces(&self, path: &str) -> anyhow::Result<Vec<(String, Value)>> {
        let body = match self.get(path) {
            Ok(b) => b,
            // Jaeger answers "not found" while no trace matches.
            Err(e) if e.to_string().contains("404") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_str(&body)?;
        let mut out = Vec::new();
        for rs in v["result"]["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let service = service_name(rs);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((service.clone(), span.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Every span of the traces with a span that matches: of `service` (any when `None`) and
    /// with every one of `attributes`, started within the last hour.
    pub fn find(
        &self,
        service: Option<&str>,
        attributes: &[(&str, &str)],
    ) -> anyhow::Result<Vec<Received>> {
        let now = unix_now();
        let at = |seconds| Some(api_v3::Timestamp { seconds, nanos: 0 });
        let request = api_v3::FindTracesRequest {
            query: Some(api_v3::TraceQueryParameters {
                service_name: service.unwrap_or_default().to_string(),
                attributes: attributes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                start_time_min: at(now - 3600),
                start_time_max: at(now + 3600),
                search_depth: 10_000,
            }),
        };
        let url = format!("http://127.0.0.1:{}", self.ports.query_grpc);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            use opentelemetry_proto::tonic::trace::v1::TracesData;
            let channel = tonic::transport::Endpoint::from_shared(url)?
                .timeout(Duration::from_secs(10))
                .connect()
                .await?;
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                "/jaeger.api_v3.QueryService/FindTraces",
            );
            let codec = tonic_prost::ProstCodec::<api_v3::FindTracesRequest, TracesData>::default();
            let mut stream = grpc
                .server_streaming(tonic::Request::new(request), path, codec)
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(traces) = stream.message().await? {
                out.extend(received(traces.resource_spans));
            }
            Ok(out)
        })
    }

    /// Waits (at most 30 s) until Jaeger holds exactly `exported` spans, as many as the tracers
    /// that export to it say they delivered (`spans_exported` of their last stats lines), and
    /// returns them; fails when it holds more, or fewer in time.
    pub fn settle(&self, exported: u64) -> Vec<Received> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let all = self.find(None, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            let held = all.len() as u64;
            let listed = || {
                all.iter()
                    .map(|r| format!("{} [{}] {}", r.span.name, r.service, hex(&r.span.span_id)))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert!(
                held <= exported,
                "Jaeger holds {held} spans, {exported} exported:\n{}",
                listed()
            );
            if held == exported {
                return all;
            }
            assert!(
                Instant::now() < end,
                "Jaeger holds {held} of the {exported} spans exported: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The spans of `topic` as a user finds them in Jaeger: by the topic's name, each also
    /// found by its service and by its offset ([`Self::assert_findable`], said in the
    /// end-to-end summary). Call [`Self::settle`] first.
    pub fn seen(&self, topic: &str) -> Seen {
        let seen = Seen::of(self, topic);
        let found = self.assert_findable(topic, &seen);
        summary(&format!("e2e Jaeger {topic}: {found}"));
        seen
    }

    /// Checks that a user finds the spans of `seen` (one topic's, found by its name) as Jaeger
    /// users look for them: each in the traces of its service, and each single-record batch by
    /// `(topic, partition, offset)` in one trace with every poll span linked under it. Returns
    /// what was checked, for the scenario's summary line.
    pub fn assert_findable(&self, topic: &str, seen: &Seen) -> String {
        let spans: Vec<&Received> = seen.send.iter().chain(&seen.poll).collect();
        let services: HashSet<&str> = spans.iter().map(|r| r.service.as_str()).collect();
        for service in &services {
            let found: HashSet<Vec<u8>> = self
                .find(Some(service), &[("messaging.destination.name", topic)])
                .unwrap_or_else(|e| panic!("{e:#}"))
                .into_iter()
                .map(|r| r.span.span_id)
                .collect();
            for r in spans.iter().filter(|r| r.service == *service) {
                assert!(
                    found.contains(&r.span.span_id),
                    "{} of {service} not found by its service: {r:?}",
                    r.span.name
                );
            }
        }
        let mut by_offset = 0;
        for send in &seen.send {
            let (Some(offset), Some(partition)) = (
                send.attr("messaging.kafka.offset"),
                send.attr("messaging.destination.partition.id"),
            ) else {
                continue;
            };
            let trace = self
                .find(
                    None,
                    &[
                        ("messaging.destination.name", topic),
                        ("messaging.destination.partition.id", &partition),
                        ("messaging.kafka.offset", &offset),
                    ],
                )
                .unwrap_or_else(|e| panic!("{e:#}"));
            let ids: HashMap<&[u8], &Received> = trace
                .iter()
                .map(|r| (r.span.span_id.as_slice(), r))
                .collect();
            assert!(
                ids.contains_key(send.span.span_id.as_slice()),
                "send span of offset {offset} not found by it: {send:?}"
            );
            for poll in seen
                .poll
                .iter()
                .filter(|p| p.span.parent_span_id == send.span.span_id)
            {
                let found = ids.get(poll.span.span_id.as_slice());
                assert!(
                    found.is_some_and(|f| f.span.trace_id == send.span.trace_id),
                    "poll span under offset {offset} (trace {}) not in its trace",
                    hex(&send.span.trace_id)
                );
            }
            by_offset += 1;
        }
        format!(
            "found in Jaeger by topic, by each of {} services, and {by_offset} single-record batches by offset",
            services.len()
        )
    }
}

impl Spans for Jaeger {
    /// The spans about one topic: found by `messaging.destination.name`, which returns whole
    /// traces, so other topics' spans in them are left out.
    fn topic(&self, topic: &str) -> Vec<Received> {
        self.find(None, &[("messaging.destination.name", topic)])
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .filter(|r| r.attr("messaging.destination.name").as_deref() == Some(topic))
            .collect()
    }
}

/// An HTTP/1.0 GET of the query API on `port` of 127.0.0.1 (so the answer is neither chunked
/// nor kept alive): the body of a 200, else an error with the status line.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer: {answer}"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}: {body}"
    );
    Ok(body.to_string())
}

/// The second configuration that puts TLS on both OTLP receivers.
fn tls_overlay(tls: &ServerTls) -> String {
    let mut block = format!(
        "        tls:\n          cert_file: {}\n          key_file: {}\n",
        tls.cert.display(),
        tls.key.display()
    );
    if let Some(ca) = &tls.client_ca {
        block.push_str(&format!("          client_ca_file: {}\n", ca.display()));
    }
    format!("receivers:\n  otlp:\n    protocols:\n      grpc:\n{block}      http:\n{block}")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `secs` since the Unix epoch in RFC 3339 (UTC).
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_855_792), "2026-11-28T08:49:52Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn the_tls_overlay_puts_tls_on_both_receivers() {
        let tls = super::ServerTls {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
            client_ca: Some("/ca.pem".into()),
        };
        let y = super::tls_overlay(&tls);
        assert_eq!(y.matches("cert_file: /c.pem").count(), 2, "{y}");
        assert_eq!(y.matches("client_ca_file: /ca.pem").count(), 2, "{y}");
        assert!(y.starts_with("receivers:\n  otlp:\n    protocols:\n      grpc:\n        tls:"));
    }
}
