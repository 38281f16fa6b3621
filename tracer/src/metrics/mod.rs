//! Prometheus metrics: what SREs watch on a Kafka client fleet, from the exchanges the tracer
//! decodes (this file), and the tracer's own counters; `exposition` serves both in the
//! OpenMetrics text format, encoded by `prometheus-client` on each scrape.
//!
//! Series are keyed by labels from the wire (topics, groups: checked and bounded in length by
//! `kafka::names`) and bounded in number per family (`--metrics-max-series`): past the bound,
//! counters and histograms add to an `<overflow>` series and gauges are refused, both counted
//! in `kafka_tracer_metric_series_overflow_total`. So `/metrics` has a maximum size (see
//! `tests::worst_case_size`).

mod exposition;
mod family;

pub use exposition::{Exposition, serve};

use std::sync::Arc;

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{
    counters::Counter,
    kafka::{
        Catalog, FetchPartitionResponse, RecordInfo, Request, Response, ShareRequest, TopicRef,
        api_name,
    },
    pipeline::ConnExchange,
};
use family::{BUCKETS, Family, Histogram};

/// Series per metric family, by default: OpenTelemetry's default cardinality limit.
pub const DEFAULT_MAX_SERIES: usize = 2000;

/// Histogram bucket bounds, in seconds.
const LATENCY_BUCKETS: [f64; BUCKETS] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const E2E_BUCKETS: [f64; BUCKETS] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

type Topic = Arc<str>;
type Group = Arc<str>;

/// A topic's name (an id until a lookup names it).
fn topic(catalog: &Catalog, t: &TopicRef) -> Topic {
    catalog
        .topic_name(t)
        .unwrap_or_else(|| t.to_string().into())
}

/// Kafka metrics from decoded exchanges.
pub struct Metrics {
    /// (api, topic) -> request duration.
    request_duration: Family<(&'static str, Topic), Histogram>,
    /// (direction, topic, partition) -> (records, bytes).
    records: Family<(&'static str, Topic, i32), (u64, u64)>,
    /// (group, topic, partition) -> lag in records.
    lag: Family<(Group, Topic, i32), i64>,
    /// (group, topic, partition) -> last committed offset (OffsetCommit requests).
    committed: Family<(Group, Topic, i32), i64>,
    /// (topic, partition) -> latest high watermark (Fetch responses).
    high_watermark: Family<(Topic, i32), i64>,
    /// topic -> record timestamp to consumer reception.
    e2e: Family<(Topic,), Histogram>,
    /// (api, error code) -> count.
    errors: Family<(&'static str, i16), u64>,
    /// (share group, topic, outcome) -> records: delivered, redelivered (delivery count above
    /// one), and acknowledged as accepted, released or rejected.
    share: Family<(Group, Topic, &'static str), u64>,
}

impl Metrics {
    /// Families of at most `max_series` series each (plus their overflow series).
    pub fn new(max_series: usize) -> Self {
        let max = max_series.max(1);
        Self {
            request_duration: Family::new(&["api", "topic"], max),
            records: Family::new(&["direction", "topic", "partition"], max),
            lag: Family::new(&["group", "topic", "partition"], max),
            committed: Family::new(&["group", "topic", "partition"], max),
            high_watermark: Family::new(&["topic", "partition"], max),
            e2e: Family::new(&["topic"], max),
            errors: Family::new(&["api", "code"], max),
            share: Family::new(&["group", "topic", "outcome"], max),
        }
    }

    /// The metrics' own counter: observations past a family's bound.
    pub fn named(&self) -> Vec<Counter> {
        let overflowed = self.request_duration.overflowed
            + self.records.overflowed
            + self.lag.overflowed
            + self.committed.overflowed
            + self.high_watermark.overflowed
            + self.e2e.overflowed
            + self.errors.overflowed
            + self.share.overflowed;
        vec![Counter::count(
            "metric_series_overflow",
            overflowed,
            "observations past a metric family's series bound (--metrics-max-series): added to its <overflow> series, or dropped for gauges",
        )]
    }

    /// Records what an exchange says. `clock_offset_ns` turns kernel times into Unix times.
    pub fn observe(&mut self, o: &ConnExchange, catalog: &Catalog, clock_offset_ns: i64) {
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
        {
            *self.errors.add((api, code)) += 1;
        }
        match (&ex.request, &ex.response) {
            (Ok(Request::Produce(req)), _) => {
                for p in &req.partitions {
                    let topic = topic(catalog, &p.topic);
                    self.observe_duration(api, topic.clone(), duration);
                    let c = self.records.add(("produced", topic, p.partition));
                    c.0 += p.records.record_count() as u64;
                    c.1 += p.records.bytes as u64;
                }
            }
            (Ok(Request::Fetch(req)), Some(Ok(Response::Fetch(resp)))) => {
                let group: Group = ex
                    .header
                    .client_id
                    .as_deref()
                    .and_then(|c| catalog.group(o.tgid, c))
                    .unwrap_or_else(|| "".into());
                let received_ms =
                    (ex.response_ns.map_or(0, |(_, e)| e) as i64 + clock_offset_ns) / 1_000_000;
                for p in &resp.partitions {
                    let topic = topic(catalog, &p.topic);
                    self.observe_duration(api, topic.clone(), duration);
                    let asked = req
                        .partitions
                        .iter()
                        .find(|r| {
                            r.partition == p.partition && self::topic(catalog, &r.topic) == topic
                        })
                        .map(|r| r.fetch_offset);
                    self.observe_fetched(&group, topic, p, asked, received_ms);
                }
            }
            (Ok(Request::Group(g)), Some(Ok(Response::Group(resp))))
                if g.api_key == crate::kafka::api::OFFSET_COMMIT && resp.error_code == 0 =>
            {
                // A commit the broker refused (error_code above) leaves the previous one.
                if let Some(group) = g.group_id.as_deref() {
                    let group: Group = group.into();
                    for c in &g.offsets {
                        let key = (group.clone(), topic(catalog, &c.topic), c.partition);
                        if let Some(v) = self.committed.set(key) {
                            *v = c.offset;
                        }
                    }
                }
                self.observe_duration(api, "".into(), duration);
            }
            (Ok(Request::Share(req)), Some(Ok(resp))) => {
                self.observe_share(catalog, req, resp);
                self.observe_duration(api, "".into(), duration);
            }
            _ => self.observe_duration(api, "".into(), duration),
        }
    }

    /// What one partition of a Fetch response says: records and bytes consumed, the group's
    /// lag after it, the high watermark, and each record's age. Records of aborted
    /// transactions (which a read_committed consumer drops) and transaction markers are
    /// neither consumed nor timed.
    fn observe_fetched(
        &mut self,
        group: &Group,
        topic: Topic,
        p: &FetchPartitionResponse,
        asked: Option<i64>,
        received_ms: i64,
    ) {
        let kept = |r: &&RecordInfo| {
            !p.records
                .batches
                .get(r.batch as usize)
                .is_some_and(|b| b.aborted || b.control)
        };
        let c = self.records.add(("consumed", topic.clone(), p.partition));
        c.0 += p.records.records.iter().filter(kept).count() as u64;
        c.1 += p.records.bytes as u64;
        // Lag: the high watermark minus the position after this fetch.
        let next = p
            .records
            .records
            .last()
            .map(|r| p.records.absolute_offset(r, None) + 1)
            .or(asked);
        if p.high_watermark >= 0 {
            if let Some(next) = next
                && let Some(l) = self.lag.set((group.clone(), topic.clone(), p.partition))
            {
                *l = (p.high_watermark - next).max(0);
            }
            if let Some(hw) = self.high_watermark.set((topic.clone(), p.partition)) {
                *hw = p.high_watermark;
            }
        }
        let ages = || {
            p.records
                .records
                .iter()
                .filter(kept)
                .map(|r| (received_ms - r.timestamp) as f64 / 1e3)
                .filter(|age| *age >= 0.0)
        };
        let n = ages().count() as u64;
        if n > 0 {
            // One series lookup per partition, not per record.
            let h = self.e2e.add_many((topic,), n);
            ages().for_each(|age| h.observe(&E2E_BUCKETS, age));
        }
    }

    /// Share-group records delivered (and redelivered) by a ShareFetch, and acknowledged by a
    /// ShareFetch or ShareAcknowledge the broker took.
    fn observe_share(&mut self, catalog: &Catalog, req: &ShareRequest, resp: &Response) {
        let group: Group = req.group_id.as_deref().unwrap_or("").into();
        let mut add = |topic: Topic, outcome, n: u64| {
            if n > 0 {
                let c = self.share.add((group.clone(), topic, outcome));
                *c = c.saturating_add(n);
            }
        };
        if let Response::ShareFetch(f) = resp {
            for p in &f.partitions {
                let topic = topic(catalog, &p.topic);
                for a in &p.acquired {
                    add(topic.clone(), "delivered", a.len());
                    if a.delivery_count > 1 {
                        add(topic.clone(), "redelivered", a.len());
                    }
                }
            }
        }
        if resp.error_code().is_none() {
            for a in &req.acknowledgements {
                let topic = topic(catalog, &a.topic);
                add(topic.clone(), "accepted", a.counts.accepted);
                add(topic.clone(), "released", a.counts.released);
                add(topic, "rejected", a.counts.rejected);
            }
        }
    }

    /// The duration of an exchange, by api and topic (empty for exchanges that name none).
    fn observe_duration(&mut self, api: &'static str, topic: Topic, duration: Option<f64>) {
        if let Some(d) = duration {
            self.request_duration
                .add((api, topic))
                .observe(&LATENCY_BUCKETS, d);
        }
    }

    /// Encodes every Kafka family.
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.request_duration.describe(
            &mut out,
            "kafka_request_duration_seconds",
            "Time from a request's first byte to its response's last, seen by the client.",
            MetricType::Histogram,
            |_, h| Some(h.with(&LATENCY_BUCKETS)),
        )?;
        self.records.describe(
            &mut out,
            "kafka_records",
            "Records produced or consumed.",
            MetricType::Counter,
            |_, (n, _)| Some(ConstCounter::new(*n)),
        )?;
        self.records.describe(
            &mut out,
            "kafka_record_bytes",
            "Record batch bytes produced or consumed, as sent.",
            MetricType::Counter,
            |_, (_, b)| Some(ConstCounter::new(*b)),
        )?;
        self.lag
            .describe(&mut out, "kafka_consumer_lag", "Records between a consumer's position and the partition's high watermark, at its last fetch.", MetricType::Gauge, |_, l| Some(ConstGauge::new(*l)))?;
        self.high_watermark.describe(
            &mut out,
            "kafka_partition_high_watermark",
            "Offset after the last record of a partition, at its latest fetch.",
            MetricType::Gauge,
            |_, hw| Some(ConstGauge::new(*hw)),
        )?;
        self.committed.describe(
            &mut out,
            "kafka_consumer_committed_offset",
            "The offset a consumer group last committed.",
            MetricType::Gauge,
            |_, o| Some(ConstGauge::new(*o)),
        )?;
        self.committed
            .describe(&mut out, "kafka_consumer_committed_lag", "Records between a group's committed offset and the partition's latest high watermark: what a restarted consumer would have to read.", MetricType::Gauge, |(_, topic, partition), o| {
            let hw = self.high_watermark.get(&(topic.clone(), *partition))?;
            Some(ConstGauge::new((hw - o).max(0)))
        })?;
        self.e2e.describe(
            &mut out,
            "kafka_end_to_end_latency_seconds",
            "From a record's timestamp to its reception by a consumer.",
            MetricType::Histogram,
            |_, h| Some(h.with(&E2E_BUCKETS)),
        )?;
        self.share
            .describe(&mut out, "kafka_share_records", "Share-group records delivered, redelivered (delivery count above one), and acknowledged as accepted, released or rejected.", MetricType::Counter, |_, n| Some(ConstCounter::new(*n)))?;
        self.errors.describe(
            &mut out,
            "kafka_errors",
            "Responses carrying a Kafka error code.",
            MetricType::Counter,
            |_, n| Some(ConstCounter::new(*n)),
        )
    }
}

#[cfg(test)]
mod tests {
    use openmetrics_parser::{MetricNumber, OpenMetricsValue, openmetrics::parse_openmetrics};

    use super::*;

    /// Every family holds `n` series (plus overflow), named by `topic(i)` and `group(i)`.
    fn fill(
        m: &mut Metrics,
        n: usize,
        topic: impl Fn(usize) -> Topic,
        group: impl Fn(usize) -> Group,
    ) {
        for i in 0..n {
            let (t, g, p) = (topic(i), group(i), i32::MAX - i as i32);
            m.request_duration
                .add(("OffsetForLeaderEpoch", t.clone()))
                .observe(&LATENCY_BUCKETS, 1e-3 + i as f64);
            *m.records.add(("consumed", t.clone(), p)) = (u64::MAX, u64::MAX);
            if let Some(v) = m.lag.set((g.clone(), t.clone(), p)) {
                *v = i64::MIN;
            }
            if let Some(v) = m.committed.set((g.clone(), t.clone(), p)) {
                *v = i64::MAX;
            }
            if let Some(v) = m.high_watermark.set((t.clone(), p)) {
                *v = i64::MAX;
            }
            m.e2e
                .add((t.clone(),))
                .observe(&E2E_BUCKETS, 1e9 + i as f64);
            *m.errors.add(("OffsetForLeaderEpoch", -(i as i16))) = u64::MAX;
            *m.share.add((g, t, "redelivered")) = u64::MAX;
        }
    }

    fn exposition(
        max_series: usize,
        n: usize,
        topic: impl Fn(usize) -> Topic,
        group: impl Fn(usize) -> Group,
    ) -> String {
        let e = Exposition::new(max_series);
        fill(&mut lock_for_test(&e), n, topic, group);
        let mut table = lock_for_test(&e).named();
        table.push(Counter::level("export_queue", 3, "spans waiting"));
        e.publish(table);
        e.text()
    }

    fn label(s: &openmetrics_parser::Sample<OpenMetricsValue>, name: &str) -> String {
        let set = s.get_labelset().expect("labels");
        set.iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn lock_for_test(e: &Exposition) -> std::sync::MutexGuard<'_, Metrics> {
        e.kafka_for_test()
    }

    #[test]
    fn the_exposition_parses_with_escaped_labels_and_overflow_series() {
        let group = |i: usize| -> Group { format!("g\"{i}\\").into() };
        let text = exposition(3, 5, |i| format!("topic.{i}").into(), group);
        let parsed = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let f = &parsed.families;
        // Three series per family, then an overflow series (one per fixed label value).
        let records = &f["kafka_records"];
        assert_eq!(records.iter_samples().count(), 4, "{text}");
        let overflow = records
            .iter_samples()
            .find(|s| label(s, "topic") == family::OVERFLOW)
            .expect("an overflow series");
        assert_eq!(label(overflow, "direction"), "consumed");
        assert_eq!(label(overflow, "partition"), family::OVERFLOW);
        // Gauges keep three series and refuse the rest; a group's quote and backslash survive.
        let lag = &f["kafka_consumer_lag"];
        assert_eq!(lag.iter_samples().count(), 3);
        let groups: Vec<String> = lag.iter_samples().map(|s| label(s, "group")).collect();
        assert!(groups.iter().any(|g| g == "g\"0\\"), "{groups:?}");
        let hist = &f["kafka_end_to_end_latency_seconds"];
        assert_eq!(hist.iter_samples().count(), 4);
        // Families that overflowed: 5 (records) is 2 past, for each of the eight.
        let counter = |name: &str| match &f[name].iter_samples().next().map(|s| &s.value) {
            Some(OpenMetricsValue::Counter(c)) => c.value.as_f64(),
            Some(OpenMetricsValue::Gauge(MetricNumber::Int(v))) => *v as f64,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(counter("kafka_tracer_metric_series_overflow"), 16.0);
        assert_eq!(counter("kafka_tracer_export_queue"), 3.0);
    }

    /// The largest `/metrics` body with the default bound, in bytes (the README states it).
    const MAX_EXPOSITION_BYTES: usize = 30_000_000;

    /// The largest `/metrics` can get with the default bound: every family full of Kafka's
    /// longest legal topic names (249 characters) and 255-byte group ids made of quotes (each
    /// escaped to two bytes), with the largest values. The README states this figure.
    #[test]
    fn worst_case_size() {
        let topic = |i: usize| -> Topic { format!("{i:.>249}").into() };
        let group = |i: usize| -> Group { format!("{i:\">255}").into() };
        let text = exposition(DEFAULT_MAX_SERIES, DEFAULT_MAX_SERIES + 10, topic, group);
        eprintln!("worst-case /metrics: {} bytes", text.len());
        assert!(text.len() <= MAX_EXPOSITION_BYTES, "{} bytes", text.len());
        assert!(
            text.len() > MAX_EXPOSITION_BYTES * 9 / 10,
            "the case is no longer the worst: {} bytes",
            text.len()
        );
    }
}
