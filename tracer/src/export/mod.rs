//! Everything after a span is built: the sampler (`sampling`), the resource of each traced
//! process (`resource`, `k8s`), a bounded queue that drops the oldest spans (counted) rather
//! than blocking capture or growing, and the sinks (`traces`): the console (`console`: the
//! OTLP-JSON file format, one export request per line, or a line per span for a person), and
//! `otlp`, which sends the spans to an OTLP receiver, over TLS when asked (`tls`).

mod console;
mod k8s;
pub mod otlp;
mod resource;
mod sampling;
mod tls;
mod traces;

pub use console::ConsoleFormat;
pub use resource::{Resource, ResourceConfig, Resources, ServiceRule, parse_key_values};
pub use sampling::{Sampler, SamplerConfigError};
pub use tls::{SettingFile, TlsFiles};
pub use traces::{Exporter, Traces, TracesConfig};

use std::{collections::VecDeque, fmt::Write as _, sync::Arc};

use crate::{
    correlate::hex,
    kafka::error_name,
    spans::{Span, Value},
};

/// Spans waiting for export; full, it drops the oldest.
pub struct Queue {
    spans: VecDeque<(Arc<Resource>, Span)>,
    capacity: usize,
    pub dropped: u64,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self {
            spans: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    pub fn push(&mut self, resource: Arc<Resource>, span: Span) {
        if self.spans.len() >= self.capacity {
            self.spans.pop_front();
            self.dropped += 1;
        }
        self.spans.push_back((resource, span));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Up to `n` spans, oldest first.
    pub fn take(&mut self, n: usize) -> Vec<(Arc<Resource>, Span)> {
        let n = n.min(self.spans.len());
        self.spans.drain(..n).collect()
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_attributes<'a>(out: &mut String, attrs: impl Iterator<Item = (&'a str, &'a Value)>) {
    out.push('[');
    for (i, (k, v)) in attrs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"key\":");
        json_str(out, k);
        match v {
            Value::Str(s) => {
                out.push_str(",\"value\":{\"stringValue\":");
                json_str(out, s);
                out.push_str("}}");
            }
            // int64 is a string in the protobuf JSON mapping.
            Value::Int(n) => {
                let _ = write!(out, ",\"value\":{{\"intValue\":\"{n}\"}}}}");
            }
        }
    }
    out.push(']');
}

/// The spans of a batch grouped by resource, in first-seen order.
pub fn by_resource(batch: &[(Arc<Resource>, Span)]) -> Vec<(&Arc<Resource>, Vec<&Span>)> {
    let mut groups: Vec<(&Arc<Resource>, Vec<&Span>)> = Vec::new();
    for (r, s) in batch {
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, r)) {
            Some((_, spans)) => spans.push(s),
            None => groups.push((r, vec![s])),
        }
    }
    groups
}

/// A batch as one OTLP-JSON `ExportTraceServiceRequest` (`{"resourceSpans":[...]}`, a
/// `ResourceSpans` per resource): the body of an OTLP/HTTP-JSON export, and a line of the
/// console output, the OpenTelemetry file exporter's format that the Collector's
/// `otlpjsonfile` receiver reads. `clock_offset_ns` turns the kernel's CLOCK_MONOTONIC times
/// into Unix times.
pub fn otlp_json_request(batch: &[(Arc<Resource>, Span)], clock_offset_ns: i64) -> String {
    let mut out = String::from("{\"resourceSpans\":[");
    for (i, (resource, spans)) in by_resource(batch).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"resource\":{\"attributes\":");
        json_attributes(
            &mut out,
            resource.attributes.iter().map(|(k, v)| (k.as_str(), v)),
        );
        out.push_str("},\"scopeSpans\":[{\"scope\":{\"name\":\"kafka-tracer\",\"version\":");
        json_str(&mut out, env!("CARGO_PKG_VERSION"));
        out.push_str("},\"spans\":[");
        for (i, s) in spans.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            span_json(&mut out, s, clock_offset_ns);
        }
        out.push_str("]}]}");
    }
    out.push_str("]}");
    out
}

fn span_json(out: &mut String, s: &Span, clock_offset_ns: i64) {
    let unix = |ns: u64| (ns as i64).saturating_add(clock_offset_ns).max(0);
    let _ = write!(
        out,
        "{{\"traceId\":\"{}\",\"spanId\":\"{}\"",
        hex(&s.trace_id),
        hex(&s.span_id)
    );
    if let Some(p) = s.parent_span_id {
        let _ = write!(out, ",\"parentSpanId\":\"{}\"", hex(&p));
    }
    if let Some(ts) = &s.tracestate {
        out.push_str(",\"traceState\":");
        json_str(out, ts);
    }
    out.push_str(",\"name\":");
    json_str(out, &s.name);
    let kind = s.kind.otlp();
    let _ = write!(
        out,
        ",\"kind\":{kind},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\"",
        unix(s.start_ns),
        unix(s.end_ns)
    );
    out.push_str(",\"attributes\":");
    let error = s.error_code.map(|c| Value::Str(error_name(c).into()));
    json_attributes(
        out,
        s.attributes
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(error.as_ref().map(|e| ("error.type", e))),
    );
    if !s.links.is_empty() {
        out.push_str(",\"links\":[");
        for (i, l) in s.links.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"traceId\":\"{}\",\"spanId\":\"{}\"",
                hex(&l.trace_id),
                hex(&l.span_id)
            );
            if let Some(ts) = &l.tracestate {
                out.push_str(",\"traceState\":");
                json_str(out, ts);
            }
            out.push('}');
        }
        out.push(']');
    }
    match s.error_code {
        // STATUS_CODE_ERROR = 2.
        Some(code) => {
            let _ = write!(
                out,
                ",\"status\":{{\"code\":2,\"message\":\"Kafka error {code} ({})\"}}",
                error_name(code)
            );
        }
        None => out.push_str(",\"status\":{}"),
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::SpanKind;

    fn span(kind: SpanKind, error: Option<i16>) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            tracestate: Some("a=\"b\"".into()),
            name: "send orders".into(),
            kind,
            start_ns: 1_000,
            end_ns: 2_000,
            attributes: vec![
                ("messaging.system", "kafka".into()),
                ("messaging.kafka.offset", 42.into()),
            ],
            links: vec![crate::spans::Link {
                trace_id: [4; 16],
                span_id: [5; 8],
                tracestate: None,
            }],
            error_code: error,
            parent_sampled: None,
            tgid: 9,
        }
    }

    #[test]
    fn otlp_json_follows_the_protobuf_mapping() {
        let r = Arc::new(Resource {
            attributes: vec![("service.name".into(), "shop".into())],
        });
        let line = otlp_json_request(
            &[
                (r.clone(), span(SpanKind::Producer, None)),
                (r, span(SpanKind::Consumer, Some(3))),
            ],
            1_700_000_000_000_000_000,
        );
        assert_eq!(line.lines().count(), 1, "one line");
        assert_eq!(
            line.matches(r#"{"resource":"#).count(),
            1,
            "one object per resource"
        );
        for needle in [
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}}]}"#,
            r#""traceId":"01010101010101010101010101010101","spanId":"0202020202020202","parentSpanId":"0303030303030303""#,
            r#""traceState":"a=\"b\"""#,
            r#""kind":4,"startTimeUnixNano":"1700000000000001000","endTimeUnixNano":"1700000000000002000""#,
            r#"{"key":"messaging.kafka.offset","value":{"intValue":"42"}}"#,
            r#""links":[{"traceId":"04040404040404040404040404040404","spanId":"0505050505050505"}]"#,
            r#""kind":5"#,
            r#"{"key":"error.type","value":{"stringValue":"UNKNOWN_TOPIC_OR_PARTITION"}}"#,
            r#""status":{"code":2,"message":"Kafka error 3 (UNKNOWN_TOPIC_OR_PARTITION)"}"#,
        ] {
            assert!(line.contains(needle), "{needle} missing from {line}");
        }
    }

    #[test]
    fn queue_drops_the_oldest_when_full() {
        let r = Arc::new(Resource { attributes: vec![] });
        let mut q = Queue::new(2);
        for n in 0..5u64 {
            let mut s = span(SpanKind::Producer, None);
            s.start_ns = n;
            q.push(r.clone(), s);
        }
        assert_eq!((q.len(), q.dropped), (2, 3));
        let kept: Vec<u64> = q.take(10).iter().map(|(_, s)| s.start_ns).collect();
        assert_eq!(kept, vec![3, 4]);
    }
}
