//! Prometheus metrics (OpenMetrics text): what SREs watch on a Kafka client fleet, from the
//! exchanges the tracer decodes, and the tracer's own health counters.
//!
//! Series are keyed by bounded labels (api, topic, partition, group, error code); past
//! [`MAX_SERIES`] per family, new series are refused and counted, so a flood of topic names
//! cannot grow memory. The main loop renders a snapshot every second; the HTTP server only
//! hands that snapshot out.

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use crate::{
    kafka::{Catalog, Request, Response, api_name},
    pipeline::Observed,
};

/// Series kept per metric family.
pub const MAX_SERIES: usize = 10_000;

/// Histogram bucket bounds, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const E2E_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; 12],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64; 12], v: f64) {
        for (i, b) in bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// A family of series keyed by label values.
struct Family<K, V> {
    series: HashMap<K, V>,
    refused: u64,
}

impl<K: std::hash::Hash + Eq, V: Default> Family<K, V> {
    fn new() -> Self {
        Self {
            series: HashMap::new(),
            refused: 0,
        }
    }

    fn get(&mut self, k: K) -> Option<&mut V> {
        if self.series.len() >= MAX_SERIES && !self.series.contains_key(&k) {
            self.refused += 1;
            return None;
        }
        Some(self.series.entry(k).or_default())
    }
}

/// Kafka metrics from decoded exchanges.
pub struct Metrics {
    /// (api, topic) -> request duration.
    request_duration: Family<(&'static str, Arc<str>), Histogram>,
    /// (direction, topic, partition) -> (records, bytes).
    records: Family<(&'static str, Arc<str>, i32), (u64, u64)>,
    /// (group, topic, partition) -> lag in records.
    lag: Family<(Arc<str>, Arc<str>, i32), i64>,
    /// (group, topic, partition) -> last committed offset (OffsetCommit requests).
    committed: Family<(Arc<str>, Arc<str>, i32), i64>,
    /// (topic, partition) -> latest high watermark (Fetch responses).
    high_watermark: Family<(Arc<str>, i32), i64>,
    /// topic -> record timestamp to consumer reception.
    e2e: Family<Arc<str>, Histogram>,
    /// (api, error code) -> count.
    errors: Family<(&'static str, i16), u64>,
    /// (share group, topic, outcome) -> records: delivered, redelivered (delivery count above
    /// one), and acknowledged as accepted, released or rejected.
    share: Family<(Arc<str>, Arc<str>, &'static str), u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Prometheus label value escaping.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            request_duration: Family::new(),
            records: Family::new(),
            lag: Family::new(),
            committed: Family::new(),
            high_watermark: Family::new(),
            e2e: Family::new(),
            errors: Family::new(),
            share: Family::new(),
        }
    }

    /// Series refused because a family was full.
    pub fn refused_series(&self) -> u64 {
        self.request_duration.refused
            + self.records.refused
            + self.lag.refused
            + self.committed.refused
            + self.high_watermark.refused
            + self.e2e.refused
            + self.errors.refused
            + self.share.refused
    }

    /// Records what an exchange says. `clock_offset_ns` turns kernel times into Unix times.
    pub fn observe(&mut self, o: &Observed, catalog: &Catalog, clock_offset_ns: i64) {
        let ex = &o.exchange;
        if !ex.client_side {
            return;
        }
        let api = api_name(ex.header.api_key);
        let duration = ex
            .response_ns
            .map(|(_, end)| end.saturating_sub(ex.request_ns.0) as f64 / 1e9);
        if let Some(code) = ex
            .response
            .as_ref()
            .and_then(|r| r.as_ref().ok())
            .and_then(Response::error_code)
            && let Some(n) = self.errors.get((api, code))
        {
            *n += 1;
        }
        let name = |t| {
            catalog
                .topic_name(t)
                .unwrap_or_else(|| t.to_string().into())
        };
        match (&ex.request, &ex.response) {
            (Ok(Request::Produce(req)), _) => {
                for p in &req.partitions {
                    let topic = name(&p.topic);
                    if let Some(d) = duration
                        && let Some(h) = self.request_duration.get((api, topic.clone()))
                    {
                        h.observe(&LATENCY_BUCKETS, d);
                    }
                    if let Some(c) = self.records.get(("produced", topic, p.partition)) {
                        c.0 += p.records.record_count() as u64;
                        c.1 += p.records.bytes as u64;
                    }
                }
            }
            (Ok(Request::Fetch(req)), Some(Ok(Response::Fetch(resp)))) => {
                let group: Arc<str> = ex
                    .header
                    .client_id
                    .as_deref()
                    .and_then(|c| catalog.group(o.tgid, c))
                    .unwrap_or_else(|| "".into());
                let received_ms =
                    (ex.response_ns.map_or(0, |(_, e)| e) as i64 + clock_offset_ns) / 1_000_000;
                for p in &resp.partitions {
                    let topic = name(&p.topic);
                    if let Some(d) = duration
                        && let Some(h) = self.request_duration.get((api, topic.clone()))
                    {
                        h.observe(&LATENCY_BUCKETS, d);
                    }
                    if let Some(c) = self.records.get(("consumed", topic.clone(), p.partition)) {
                        c.0 += p.records.record_count() as u64;
                        c.1 += p.records.bytes as u64;
                    }
                    // Lag: the high watermark minus the position after this fetch.
                    let asked = req
                        .partitions
                        .iter()
                        .find(|r| r.partition == p.partition && name(&r.topic) == topic)
                        .map(|r| r.fetch_offset);
                    let next = p
                        .records
                        .records
                        .last()
                        .map(|r| p.records.absolute_offset(r, None) + 1)
                        .or(asked);
                    if p.high_watermark >= 0 {
                        if let Some(next) = next
                            && let Some(l) =
                                self.lag.get((group.clone(), topic.clone(), p.partition))
                        {
                            *l = (p.high_watermark - next).max(0);
                        }
                        if let Some(hw) = self.high_watermark.get((topic.clone(), p.partition)) {
                            *hw = p.high_watermark;
                        }
                    }
                    for r in &p.records.records {
                        let age = (received_ms - r.timestamp) as f64 / 1e3;
                        if age >= 0.0
                            && let Some(h) = self.e2e.get(topic.clone())
                        {
                            h.observe(&E2E_BUCKETS, age);
                        }
                    }
                }
            }
            (Ok(Request::Group(g)), Some(Ok(Response::Group(resp))))
                if g.api_key == crate::kafka::api::OFFSET_COMMIT && resp.error_code == 0 =>
            {
                if let Some(group) = g.group_id.as_deref() {
                    let group: Arc<str> = group.into();
                    // A commit the broker refused (error_code above) leaves the previous one.
                    for c in &g.offsets {
                        if let Some(v) =
                            self.committed
                                .get((group.clone(), name(&c.topic), c.partition))
                        {
                            *v = c.offset;
                        }
                    }
                }
                self.observe_duration(api, duration);
            }
            (Ok(Request::Share(req)), Some(Ok(resp))) => {
                let group: Arc<str> = req.group_id.as_deref().unwrap_or("").into();
                let mut add = |topic: Arc<str>, outcome, n: u64| {
                    if n > 0
                        && let Some(c) = self.share.get((group.clone(), topic, outcome))
                    {
                        *c = c.saturating_add(n);
                    }
                };
                if let Response::ShareFetch(f) = resp {
                    for p in &f.partitions {
                        let topic = name(&p.topic);
                        for a in &p.acquired {
                            add(topic.clone(), "delivered", a.len());
                            if a.delivery_count > 1 {
                                add(topic.clone(), "redelivered", a.len());
                            }
                        }
                    }
                }
                // Acknowledgements count once the broker took the request.
                if resp.error_code().is_none() {
                    for a in &req.acknowledgements {
                        let topic = name(&a.topic);
                        add(topic.clone(), "accepted", a.counts.accepted);
                        add(topic.clone(), "released", a.counts.released);
                        add(topic, "rejected", a.counts.rejected);
                    }
                }
                self.observe_duration(api, duration);
            }
            _ => self.observe_duration(api, duration),
        }
    }

    /// The duration of an exchange that names no topic.
    fn observe_duration(&mut self, api: &'static str, duration: Option<f64>) {
        if let Some(d) = duration
            && let Some(h) = self.request_duration.get((api, "".into()))
        {
            h.observe(&LATENCY_BUCKETS, d);
        }
    }

    /// The Kafka families in OpenMetrics text.
    pub fn render(&self, out: &mut String) {
        let hist =
            |out: &mut String, name: &str, labels: &str, h: &Histogram, bounds: &[f64; 12]| {
                for (b, c) in bounds.iter().zip(h.counts) {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
            };
        out.push_str("# TYPE kafka_request_duration_seconds histogram\n# HELP kafka_request_duration_seconds Time from a request's first byte to its response's last, seen by the client.\n");
        for ((api, topic), h) in &self.request_duration.series {
            hist(
                out,
                "kafka_request_duration_seconds",
                &format!("api=\"{api}\",topic=\"{}\"", label(topic)),
                h,
                &LATENCY_BUCKETS,
            );
        }
        out.push_str(
            "# TYPE kafka_records counter\n# HELP kafka_records Records produced or consumed.\n",
        );
        out.push_str("# TYPE kafka_record_bytes counter\n# HELP kafka_record_bytes Record batch bytes produced or consumed, as sent.\n");
        for ((dir, topic, partition), (n, bytes)) in &self.records.series {
            let l = format!(
                "direction=\"{dir}\",topic=\"{}\",partition=\"{partition}\"",
                label(topic)
            );
            let _ = writeln!(out, "kafka_records_total{{{l}}} {n}");
            let _ = writeln!(out, "kafka_record_bytes_total{{{l}}} {bytes}");
        }
        out.push_str("# TYPE kafka_consumer_lag gauge\n# HELP kafka_consumer_lag Records between a consumer's position and the partition's high watermark, at its last fetch.\n");
        for ((group, topic, partition), lag) in &self.lag.series {
            let _ = writeln!(
                out,
                "kafka_consumer_lag{{group=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {lag}",
                label(group),
                label(topic)
            );
        }
        out.push_str("# TYPE kafka_partition_high_watermark gauge\n# HELP kafka_partition_high_watermark Offset after the last record of a partition, at its latest fetch.\n");
        for ((topic, partition), hw) in &self.high_watermark.series {
            let _ = writeln!(
                out,
                "kafka_partition_high_watermark{{topic=\"{}\",partition=\"{partition}\"}} {hw}",
                label(topic)
            );
        }
        out.push_str("# TYPE kafka_consumer_committed_offset gauge\n# HELP kafka_consumer_committed_offset The offset a consumer group last committed.\n");
        out.push_str("# TYPE kafka_consumer_committed_lag gauge\n# HELP kafka_consumer_committed_lag Records between a group's committed offset and the partition's latest high watermark: what a restarted consumer would have to read.\n");
        for ((group, topic, partition), offset) in &self.committed.series {
            let l = format!(
                "group=\"{}\",topic=\"{}\",partition=\"{partition}\"",
                label(group),
                label(topic)
            );
            let _ = writeln!(out, "kafka_consumer_committed_offset{{{l}}} {offset}");
            if let Some(hw) = self.high_watermark.series.get(&(topic.clone(), *partition)) {
                let _ = writeln!(
                    out,
                    "kafka_consumer_committed_lag{{{l}}} {}",
                    (hw - offset).max(0)
                );
            }
        }
        out.push_str("# TYPE kafka_end_to_end_latency_seconds histogram\n# HELP kafka_end_to_end_latency_seconds From a record's timestamp to its reception by a consumer.\n");
        for (topic, h) in &self.e2e.series {
            hist(
                out,
                "kafka_end_to_end_latency_seconds",
                &format!("topic=\"{}\"", label(topic)),
                h,
                &E2E_BUCKETS,
            );
        }
        out.push_str("# TYPE kafka_share_records counter\n# HELP kafka_share_records Share-group records delivered, redelivered (delivery count above one), and acknowledged as accepted, released or rejected.\n");
        for ((group, topic, outcome), n) in &self.share.series {
            let _ = writeln!(
                out,
                "kafka_share_records_total{{group=\"{}\",topic=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(group),
                label(topic)
            );
        }
        out.push_str("# TYPE kafka_errors counter\n# HELP kafka_errors Responses carrying a Kafka error code.\n");
        for ((api, code), n) in &self.errors.series {
            let _ = writeln!(
                out,
                "kafka_errors_total{{api=\"{api}\",code=\"{code}\"}} {n}"
            );
        }
    }
}

/// Renders `(name, value, help)` counters of the tracer itself.
pub fn render_counters(out: &mut String, prefix: &str, counters: &[(&str, u64, &str)]) {
    for (name, value, help) in counters {
        let _ = writeln!(
            out,
            "# TYPE {prefix}_{name} counter\n# HELP {prefix}_{name} {help}\n{prefix}_{name}_total {value}"
        );
    }
}

/// Serves the latest snapshot at `/metrics` (and `/healthz`) on `addr`.
pub async fn serve(
    addr: std::net::SocketAddr,
    snapshot: Arc<std::sync::Mutex<String>>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics endpoint to {addr} (--metrics-addr): is the port in use?")
    })?;
    tracing::info!("metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let snapshot = snapshot.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut req),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let line = String::from_utf8_lossy(&req[..n]);
                let (status, ctype, body) = if line.starts_with("GET /metrics") {
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        snapshot.lock().map(|s| s.clone()).unwrap_or_default() + "# EOF\n",
                    )
                } else if line.starts_with("GET /healthz") {
                    ("200 OK", "text/plain", "ok\n".to_string())
                } else {
                    ("404 Not Found", "text/plain", "not found\n".to_string())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_bounded_and_labels_escaped() {
        let mut f: Family<u32, u64> = Family::new();
        for k in 0..(MAX_SERIES as u32 + 5) {
            if let Some(v) = f.get(k) {
                *v += 1;
            }
        }
        assert_eq!((f.series.len(), f.refused), (MAX_SERIES, 5));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut h = Histogram::default();
        h.observe(&LATENCY_BUCKETS, 0.003);
        assert_eq!((h.counts[2], h.counts[3], h.count), (0, 1, 1));
    }
}
