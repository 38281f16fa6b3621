//! The console sink's two forms. `json` writes each exported batch as one line holding one
//! OTLP-JSON export request, the OpenTelemetry file exporter's format, so `kafka-tracer | tee
//! spans.jsonl` can be read by the Collector's `otlpjsonfile` receiver and similar tools.
//! `pretty` writes a line per span for a person watching a terminal: when, what, who, which
//! records, how long, and the ids to look the trace up by.

use std::{fmt::Write as _, sync::Arc};

use super::{Resource, otlp_json_request};
use crate::{
    correlate::hex,
    kafka::error_name,
    spans::{Span, Value},
};

/// How the console writes spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsoleFormat {
    /// One OTLP-JSON `{"resourceSpans":[...]}` object per line.
    #[default]
    Json,
    /// One line per span, for reading.
    Pretty,
}

/// The text the console writes for one batch, ending in a newline.
pub fn render(
    batch: &[(Arc<Resource>, Span)],
    format: ConsoleFormat,
    clock_offset_ns: i64,
) -> String {
    match format {
        ConsoleFormat::Json => {
            let mut line = otlp_json_request(batch, clock_offset_ns);
            line.push('\n');
            line
        }
        ConsoleFormat::Pretty => {
            let mut out = String::new();
            for (resource, span) in batch {
                pretty_line(&mut out, resource, span, clock_offset_ns);
            }
            out
        }
    }
}

/// `06:40:01.123 send orders [checkout] partition 0 offsets 0-2, 1.2 ms, trace T span S
/// parent P`, with the group, the error and the links when there are some.
fn pretty_line(out: &mut String, resource: &Resource, s: &Span, clock_offset_ns: i64) {
    let text = |v: Option<&Value>| match v {
        Some(Value::Str(s)) => s.to_string(),
        Some(Value::Int(n)) => n.to_string(),
        None => String::new(),
    };
    let attr = |k: &str| s.attributes.iter().find(|(n, _)| *n == k).map(|(_, v)| v);
    let service = resource
        .attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| text(Some(v)))
        .unwrap_or_default();
    let ms = (s.start_ns as i64).saturating_add(clock_offset_ns).max(0) / 1_000_000;
    let day_ms = ms.rem_euclid(86_400_000);
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:03} {} [{service}]",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
        s.name
    );
    if let Some(p) = attr("messaging.destination.partition.id") {
        let _ = write!(out, " partition {}", text(Some(p)));
    }
    match (
        attr("messaging.kafka.offset"),
        attr("messaging.kafka.first_offset"),
    ) {
        (Some(o), _) => {
            let _ = write!(out, " offset {}", text(Some(o)));
        }
        (None, Some(first)) => {
            let last = text(attr("messaging.kafka.last_offset"));
            let _ = write!(out, " offsets {}-{last}", text(Some(first)));
        }
        (None, None) => {}
    }
    if let Some(n) = attr("messaging.batch.message_count") {
        let _ = write!(out, " ({} records)", text(Some(n)));
    }
    if let Some(g) = attr("messaging.consumer.group.name") {
        let _ = write!(out, ", group {}", text(Some(g)));
    }
    if let Some(code) = s.error_code {
        let _ = write!(out, ", error {}", error_name(code));
    }
    let _ = write!(
        out,
        ", {:.1} ms, trace {} span {}",
        s.end_ns.saturating_sub(s.start_ns) as f64 / 1e6,
        hex(&s.trace_id),
        hex(&s.span_id)
    );
    if let Some(p) = s.parent_span_id {
        let _ = write!(out, " parent {}", hex(&p));
    }
    if !s.links.is_empty() {
        let _ = write!(out, " links {}", s.links.len());
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{Link, SpanKind};

    fn span(attributes: Vec<(&'static str, Value)>, error_code: Option<i16>) -> Span {
        Span {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            parent_span_id: Some([0xef; 8]),
            tracestate: None,
            name: "poll orders".into(),
            kind: SpanKind::Consumer,
            start_ns: 3_723_004_000_000,
            end_ns: 3_723_005_500_000,
            attributes,
            links: vec![Link {
                trace_id: [1; 16],
                span_id: [2; 8],
                tracestate: None,
            }],
            error_code,
            parent_sampled: None,
            tgid: 1,
        }
    }

    #[test]
    fn pretty_lines_say_what_who_which_records_and_the_ids() {
        let r = Arc::new(Resource {
            attributes: vec![("service.name".into(), "shipping".into())],
        });
        let batch = [
            (
                r.clone(),
                span(
                    vec![
                        ("messaging.destination.partition.id", "2".into()),
                        ("messaging.batch.message_count", 3.into()),
                        ("messaging.kafka.first_offset", 40.into()),
                        ("messaging.kafka.last_offset", 42.into()),
                        ("messaging.consumer.group.name", "billing".into()),
                    ],
                    None,
                ),
            ),
            (
                r,
                span(
                    vec![
                        ("messaging.destination.partition.id", "0".into()),
                        ("messaging.kafka.offset", 7.into()),
                    ],
                    Some(3),
                ),
            ),
        ];
        let text = render(&batch, ConsoleFormat::Pretty, 0);
        let lines: Vec<&str> = text.lines().collect();
        let ids = format!(
            "trace {} span {} parent {} links 1",
            "ab".repeat(16),
            "cd".repeat(8),
            "ef".repeat(8)
        );
        assert_eq!(
            lines[0],
            format!(
                "01:02:03.004 poll orders [shipping] partition 2 offsets 40-42 (3 records), group billing, 1.5 ms, {ids}"
            )
        );
        assert_eq!(
            lines[1],
            format!(
                "01:02:03.004 poll orders [shipping] partition 0 offset 7, error UNKNOWN_TOPIC_OR_PARTITION, 1.5 ms, {ids}"
            )
        );
        let json = render(&batch, ConsoleFormat::Json, 0);
        assert_eq!(json.lines().count(), 1);
        assert!(json.starts_with(r#"{"resourceSpans":[{"resource":"#) && json.ends_with("]}\n"));
    }
}
