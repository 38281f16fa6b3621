//! OTLP export with the messages of the official protocol definitions (`opentelemetry-proto`),
//! over the three transports the specification names: gRPC, HTTP/protobuf and HTTP/JSON, with
//! optional gzip. Each request holds one `ResourceSpans` per traced process. The exporter runs
//! as its own task behind a small bounded channel and encodes there, so a slow or absent
//! backend never blocks capture: batches that do not fit, or that the backend refuses after
//! a short retry, are counted as dropped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource as ProtoResource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span as ProtoSpan, Status, span::Link as ProtoLink,
        status::StatusCode,
    },
};

use super::{Resource, by_resource, otlp_json_request, tls::TlsFiles};
use crate::{
    kafka::error_name,
    spans::{Span, Value},
};

/// OTLP transports, as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Protocol {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "grpc" => Self::Grpc,
            "http/protobuf" => Self::HttpProtobuf,
            "http/json" => Self::HttpJson,
            other => anyhow::bail!(
                "unsupported OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: use grpc, http/protobuf or http/json"
            ),
        })
    }

    /// The URL spans are sent to. As the specification says, the generic endpoint is a base
    /// URL to which HTTP exporters append `/v1/traces`, while the traces-only endpoint is used
    /// as given; the defaults are the collector's ports on localhost.
    pub fn traces_url(self, generic: Option<&str>, traces: Option<&str>) -> String {
        match (traces, generic, self) {
            (Some(t), _, _) => t.to_string(),
            (None, Some(g), Self::Grpc) => g.to_string(),
            (None, Some(g), _) => format!("{}/v1/traces", g.trim_end_matches('/')),
            (None, None, Self::Grpc) => "http://localhost:4317".into(),
            (None, None, _) => "http://localhost:4318/v1/traces".into(),
        }
    }
}

/// Where and how to export, from the OTEL_EXPORTER_OTLP_* settings.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// The full URL (see [`Protocol::traces_url`]).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    /// CA and client certificate for `https://` URLs.
    pub tls: TlsFiles,
    /// Turns the kernel's CLOCK_MONOTONIC times into Unix times.
    pub clock_offset_ns: i64,
}

/// Export outcomes, shared with the daemon.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub exported_spans: AtomicU64,
    pub failed_spans: AtomicU64,
    pub failed_requests: AtomicU64,
    /// Attempts repeated after a transient failure.
    pub retries: AtomicU64,
}

fn value(v: &Value) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Value::Str(s) => any_value::Value::StringValue(s.to_string()),
            Value::Int(n) => any_value::Value::IntValue(*n),
        }),
    }
}

fn kv(k: &str, v: &Value) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(value(v)),
        ..Default::default()
    }
}

fn span(s: &Span, clock_offset_ns: i64) -> ProtoSpan {
    let unix = |ns: u64| (ns as i64).saturating_add(clock_offset_ns).max(0) as u64;
    let mut attributes: Vec<KeyValue> = s.attributes.iter().map(|(k, v)| kv(k, v)).collect();
    if let Some(code) = s.error_code {
        attributes.push(kv("error.type", &Value::Str(error_name(code).into())));
    }
    ProtoSpan {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.tracestate.clone().unwrap_or_default(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: s.kind.otlp(),
        start_time_unix_nano: unix(s.start_ns),
        end_time_unix_nano: unix(s.end_ns),
        attributes,
        links: s
            .links
            .iter()
            .map(|l| ProtoLink {
                trace_id: l.trace_id.to_vec(),
                span_id: l.span_id.to_vec(),
                trace_state: l.tracestate.clone().unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        status: s.error_code.map(|code| Status {
            code: StatusCode::Error as i32,
            message: format!("Kafka error {code} ({})", error_name(code)),
        }),
        ..Default::default()
    }
}

/// One export request for a batch: a `ResourceSpans` per process.
pub fn request(batch: &[(Arc<Resource>, Span)], clock_offset_ns: i64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: by_resource(batch)
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: r.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "kafka-tracer".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans
                        .into_iter()
                        .map(|s| span(s, clock_offset_ns))
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// A batch of spans with their resources, as queued.
pub type Batch = Vec<(Arc<Resource>, Span)>;

/// The exporter task's inputs and outputs.
pub struct Exporter {
    /// Batches with their span counts. A full channel means the backend is behind: the
    /// caller drops and counts. Dropping it ends the task once what was sent is exported.
    pub tx: tokio::sync::mpsc::Sender<Batch>,
    pub counters: Arc<ExportCounters>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Attempts per batch: a backend restarting or briefly overloaded costs no spans.
const ATTEMPTS: u32 = 3;

/// Why one export attempt failed.
struct Failure {
    message: String,
    /// Worth another attempt (unavailable, overloaded, timed out), as the specification lists.
    transient: bool,
}

/// The connector of both transports: TCP, and TLS for `https://` URLs.
type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// One connection to the backend, by transport.
#[expect(clippy::large_enum_variant, reason = "a single instance per process")]
enum Transport {
    Grpc {
        client: TraceServiceClient<tonic::transport::Channel>,
        headers: tonic::metadata::MetadataMap,
    },
    Http {
        client: hyper_util::client::legacy::Client<Connector, http_body_util::Full<bytes::Bytes>>,
        uri: hyper::Uri,
        headers: hyper::HeaderMap,
        json: bool,
    },
}

/// Checks the settings that cannot change while the tracer runs (the URL and the headers):
/// the tracer refuses to start without them right.
pub fn check(cfg: &OtlpConfig) -> anyhow::Result<()> {
    uri(cfg)?;
    headers(cfg).map(drop)
}

/// The endpoint as a URI with a host, `http` or `https`.
fn uri(cfg: &OtlpConfig) -> anyhow::Result<hyper::Uri> {
    let bad_url = || {
        format!(
            "invalid OTLP endpoint {:?} (OTEL_EXPORTER_OTLP_ENDPOINT): use a URL such as http://collector:{} or https://collector:{0}",
            redacted(&cfg.url),
            if cfg.protocol == Protocol::Grpc {
                4317
            } else {
                4318
            }
        )
    };
    let uri: hyper::Uri = cfg.url.parse().with_context(bad_url)?;
    anyhow::ensure!(
        uri.host().is_some() && matches!(uri.scheme_str(), Some("http" | "https")),
        "{}",
        bad_url()
    );
    Ok(uri)
}

/// The configured headers, in one map for both transports (gRPC metadata is HTTP/2 headers).
fn headers(cfg: &OtlpConfig) -> anyhow::Result<hyper::HeaderMap> {
    let mut headers = hyper::HeaderMap::new();
    for (k, v) in &cfg.headers {
        let bad = || {
            format!("invalid header {k:?} in OTEL_EXPORTER_OTLP_HEADERS: use key=value,key2=value2")
        };
        headers.insert(
            hyper::header::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .with_context(bad)?,
            hyper::header::HeaderValue::from_str(v).with_context(bad)?,
        );
    }
    Ok(headers)
}

/// TCP with the export timeout, and TLS (ALPN `h2` for gRPC) when the URL says `https`; the
/// TLS files are read here.
fn connector(cfg: &OtlpConfig, https: bool) -> anyhow::Result<Connector> {
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(cfg.timeout));
    let tls = if https {
        Arc::unwrap_or_clone(cfg.tls.client_config()?)
    } else {
        // Never used: plain `http://` connections pass through.
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    Ok(if cfg.protocol == Protocol::Grpc {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    })
}

impl Transport {
    fn new(cfg: &OtlpConfig) -> anyhow::Result<Self> {
        let uri = uri(cfg)?;
        let mut headers = headers(cfg)?;
        let connector = connector(cfg, uri.scheme_str() == Some("https"))?;
        Ok(match cfg.protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(cfg.url.clone())?
                    .connect_timeout(cfg.timeout)
                    .timeout(cfg.timeout)
                    .connect_with_connector_lazy(connector);
                let mut client = TraceServiceClient::new(channel);
                if cfg.gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Self::Grpc {
                    client,
                    headers: tonic::metadata::MetadataMap::from_headers(headers),
                }
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let json = cfg.protocol == Protocol::HttpJson;
                let ctype = if json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                };
                headers.insert(hyper::header::CONTENT_TYPE, ctype.parse()?);
                if cfg.gzip {
                    headers.insert(hyper::header::CONTENT_ENCODING, "gzip".parse()?);
                }
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
                Self::Http {
                    client,
                    uri,
                    headers,
                    json,
                }
            }
        })
    }

    async fn send(&mut self, batch: &Batch, cfg: &OtlpConfig) -> Result<(), Failure> {
        match self {
            Self::Grpc { client, headers } => {
                let mut request = tonic::Request::new(request(batch, cfg.clock_offset_ns));
                *request.metadata_mut() = headers.clone();
                client.export(request).await.map(drop).map_err(|e| Failure {
                    transient: matches!(
                        e.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::ResourceExhausted
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Aborted
                    ),
                    message: match std::error::Error::source(&e) {
                        Some(cause) => {
                            format!("{:?}: {}: {}", e.code(), e.message(), causes(cause))
                        }
                        None => format!("{:?}: {}", e.code(), e.message()),
                    },
                })
            }
            Self::Http {
                client,
                uri,
                headers,
                json,
            } => {
                use prost::Message as _;
                let body = if *json {
                    otlp_json_request(batch, cfg.clock_offset_ns).into_bytes()
                } else {
                    request(batch, cfg.clock_offset_ns).encode_to_vec()
                };
                let body = if cfg.gzip { gzip(&body) } else { body };
                let mut req = hyper::Request::post(uri.clone())
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .map_err(|e| Failure {
                        message: e.to_string(),
                        transient: false,
                    })?;
                *req.headers_mut() = headers.clone();
                let status = match tokio::time::timeout(cfg.timeout, client.request(req)).await {
                    Err(_) => {
                        return Err(Failure {
                            message: "timed out".into(),
                            transient: true,
                        });
                    }
                    Ok(Err(e)) => {
                        return Err(Failure {
                            message: causes(&e),
                            transient: true,
                        });
                    }
                    Ok(Ok(resp)) => resp.status(),
                };
                if status.is_success() {
                    Ok(())
                } else {
                    Err(Failure {
                        message: format!("HTTP {status}"),
                        transient: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    })
                }
            }
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// A failure's message and every cause under it (a TLS handshake failure sits a few levels
/// down in a connection error), each once.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = c.source();
    }
    out
}

/// The exporter's transport, built when the task starts and built again when that failed or
/// when a TLS file changed, so a certificate mounted late or rotated is picked up.
struct Link {
    transport: Result<Transport, String>,
    stamp: Vec<Option<std::time::SystemTime>>,
}

impl Link {
    fn new(cfg: &OtlpConfig) -> Self {
        let link = Self {
            transport: Transport::new(cfg).map_err(|e| format!("{e:#}")),
            stamp: cfg.tls.stamp(),
        };
        if let Err(e) = &link.transport {
            tracing::warn!(url = %redacted(&cfg.url), "OTLP export cannot connect until this is fixed, spans are counted as failed: {e}");
        }
        link
    }

    fn current(&mut self, cfg: &OtlpConfig) -> Result<&mut Transport, Failure> {
        if self.transport.is_err() || (cfg.tls.is_set() && cfg.tls.stamp() != self.stamp) {
            *self = Self {
                transport: Transport::new(cfg).map_err(|e| format!("{e:#}")),
                stamp: cfg.tls.stamp(),
            };
        }
        self.transport.as_mut().map_err(|e| Failure {
            message: e.clone(),
            transient: false,
        })
    }
}

/// Starts the exporter task. Settings that cannot change (URL, headers) are checked here,
/// before capture starts; a TLS file that cannot be read is logged, and retried at each export.
pub fn spawn(cfg: OtlpConfig) -> anyhow::Result<Exporter> {
    check(&cfg)?;
    let mut link = Link::new(&cfg);
    let counters = Arc::new(ExportCounters::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(4);
    let c = counters.clone();
    let task = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let n = batch.len() as u64;
            let mut attempt = 1;
            loop {
                let sent = match link.current(&cfg) {
                    Ok(transport) => transport.send(&batch, &cfg).await,
                    Err(f) => Err(f),
                };
                match sent {
                    Ok(()) => {
                        c.exported_spans.fetch_add(n, Ordering::Relaxed);
                        break;
                    }
                    Err(f) if f.transient && attempt < ATTEMPTS => {
                        c.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        attempt += 1;
                    }
                    Err(f) => {
                        c.failed_spans.fetch_add(n, Ordering::Relaxed);
                        if c.failed_requests.fetch_add(1, Ordering::Relaxed) % 100 == 0 {
                            let hint = super::tls::hint(
                                &f.message,
                                cfg.url.starts_with("https:"),
                                cfg.tls.client.is_some(),
                            );
                            tracing::warn!(url = %redacted(&cfg.url), "OTLP export failed ({n} spans dropped): {}{hint}", f.message);
                        }
                        break;
                    }
                }
            }
        }
    });
    Ok(Exporter { tx, counters, task })
}

/// A URL as it may be logged: user info (credentials) and query (tokens) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority.to_string(), |(_, h)| format!("***@{h}"));
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_string(),
    };
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_hide_credentials_and_queries() {
        for (url, want) in [
            (
                "http://collector:4318/v1/traces",
                "http://collector:4318/v1/traces",
            ),
            (
                "https://user:pa55@collector.example:443/v1/traces?api-key=t0ken",
                "https://***@collector.example:443/v1/traces?***",
            ),
            ("http://tok@host?x=1", "http://***@host?***"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redacted(url), want, "{url}");
        }
    }

    #[test]
    fn urls_follow_the_specification() {
        let http = Protocol::parse("http/protobuf").unwrap();
        let grpc = Protocol::parse("grpc").unwrap();
        assert_eq!(
            http.traces_url(Some("http://c:4318/"), None),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http.traces_url(Some("http://c:4318"), Some("http://t:1/x")),
            "http://t:1/x"
        );
        assert_eq!(
            http.traces_url(None, None),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            grpc.traces_url(Some("http://c:4317"), None),
            "http://c:4317"
        );
        assert_eq!(grpc.traces_url(None, None), "http://localhost:4317");
        let e = Protocol::parse("thrift").unwrap_err().to_string();
        assert!(e.contains("grpc, http/protobuf or http/json"), "{e}");
    }
}
