//! OTLP export over gRPC, with the messages of the official protocol definitions
//! (`opentelemetry-proto`): one `ResourceSpans` per traced process in each request. The
//! exporter runs as its own task behind a small bounded channel, so a slow or absent backend
//! never blocks capture: batches that do not fit, or that the backend refuses, are counted as
//! dropped.

use std::{
    str::FromStr as _,
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

use super::{Resource, by_resource, error_name};
use crate::spans::{Span, SpanKind, Value};

/// Where and how to export, from the OTEL_EXPORTER_OTLP_* settings.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Export outcomes, shared with the daemon.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub exported_spans: AtomicU64,
    pub failed_spans: AtomicU64,
    pub failed_requests: AtomicU64,
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
        // SPAN_KIND_PRODUCER = 4, SPAN_KIND_CONSUMER = 5.
        kind: match s.kind {
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        },
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

/// The exporter task's inputs and outputs.
pub struct Exporter {
    /// Requests with their span counts. A full channel means the backend is behind: the
    /// caller drops and counts. Dropping it ends the task once what was sent is exported.
    pub tx: tokio::sync::mpsc::Sender<(usize, ExportTraceServiceRequest)>,
    pub counters: Arc<ExportCounters>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the exporter task.
pub fn spawn(cfg: OtlpConfig) -> anyhow::Result<Exporter> {
    let channel = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
        .with_context(|| format!("invalid OTLP endpoint {:?} (OTEL_EXPORTER_OTLP_ENDPOINT): use a URL such as http://collector:4317", cfg.endpoint))?
        .connect_timeout(cfg.timeout)
        .timeout(cfg.timeout)
        .connect_lazy();
    let mut headers = tonic::metadata::MetadataMap::new();
    for (k, v) in &cfg.headers {
        let key = tonic::metadata::MetadataKey::from_str(&k.to_ascii_lowercase())
            .with_context(|| format!("invalid header name {k:?} in OTEL_EXPORTER_OTLP_HEADERS"))?;
        let value = v.parse().with_context(|| {
            format!("invalid value for header {k:?} in OTEL_EXPORTER_OTLP_HEADERS")
        })?;
        headers.insert(key, value);
    }
    let counters = Arc::new(ExportCounters::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, ExportTraceServiceRequest)>(4);
    let c = counters.clone();
    let task = tokio::spawn(async move {
        let mut client = TraceServiceClient::new(channel);
        while let Some((n, req)) = rx.recv().await {
            let mut request = tonic::Request::new(req);
            *request.metadata_mut() = headers.clone();
            match client.export(request).await {
                Ok(_) => {
                    c.exported_spans.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    c.failed_spans.fetch_add(n as u64, Ordering::Relaxed);
                    if c.failed_requests.fetch_add(1, Ordering::Relaxed) % 100 == 0 {
                        tracing::warn!(endpoint = %cfg.endpoint, "OTLP export failed ({n} spans dropped): {}", e.message());
                    }
                }
            }
        }
    });
    Ok(Exporter { tx, counters, task })
}
