//! What the end-to-end scenarios assert, in the terms a user checks in Jaeger: the send and poll
//! spans of a topic, which records they cover, and whether each poll span hangs under the send
//! span of the batch it fetched. Records are the clients' own reports (the JSON lines of
//! tests/kafka/client.py, tests/go and tests/java), so a record the tracer missed shows.

use std::collections::HashSet;

use serde_json::Value;

use crate::{
    covered_offsets,
    receiver::{Received, Receiver},
    summary,
};

/// (partition, offset) of each record a producer reports delivered, or a consumer consumed.
pub fn records(output: &str) -> Vec<(i64, i64)> {
    let v: Value = serde_json::from_str(output).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("error").is_none())
        .map(|r| {
            (
                r["partition"].as_i64().unwrap(),
                r["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Whether a span comes from the client whose client id is `id` (`prefix`: or starts with it,
/// as Kafka Streams' clients' ids do).
pub fn client(id: &str, prefix: bool) -> impl Fn(&Received) -> bool + '_ {
    move |r| {
        r.attr("messaging.client.id")
            .is_some_and(|c| c == id || (prefix && c.starts_with(id)))
    }
}

/// Where a test finds the spans the tracers exported: the test's OTLP receiver, or Jaeger
/// through its query API.
pub trait Spans {
    /// The spans about one topic (`messaging.destination.name`).
    fn topic(&self, topic: &str) -> Vec<Received>;
}

impl Spans for Receiver {
    fn topic(&self, topic: &str) -> Vec<Received> {
        Receiver::topic(self, topic)
    }
}

/// The spans of one topic, as Jaeger shows them, and how they link.
pub struct Seen {
    pub send: Vec<Received>,
    pub poll: Vec<Received>,
    /// Share-group acknowledgements (`ack` spans).
    pub ack: Vec<Received>,
}

impl Seen {
    pub fn of(spans: &impl Spans, topic: &str) -> Self {
        let mut seen = Self {
            send: Vec::new(),
            poll: Vec::new(),
            ack: Vec::new(),
        };
        for r in spans.topic(topic) {
            match r.span.name.strip_suffix(topic) {
                Some("send ") => seen.send.push(r),
                Some("poll ") => seen.poll.push(r),
                Some("ack ") => seen.ack.push(r),
                _ => panic!("only send, poll and ack spans: {}", r.span.name),
            }
        }
        seen
    }

    /// The same send spans, and only the poll spans `keep` accepts.
    pub fn polls_where(&self, keep: impl Fn(&Received) -> bool) -> Self {
        Self {
            send: self.send.clone(),
            poll: self.poll.iter().filter(|r| keep(r)).cloned().collect(),
            ack: self.ack.clone(),
        }
    }

    /// The same poll spans, and only the send spans `keep` accepts.
    pub fn sends_where(&self, keep: impl Fn(&Received) -> bool) -> Self {
        Self {
            send: self.send.iter().filter(|r| keep(r)).cloned().collect(),
            poll: self.poll.clone(),
            ack: self.ack.clone(),
        }
    }

    fn parents(&self) -> HashSet<(Vec<u8>, Vec<u8>)> {
        self.send
            .iter()
            .map(|s| (s.span.trace_id.clone(), s.span.span_id.clone()))
            .collect()
    }

    /// Poll spans whose parent is a received send span, in its trace.
    pub fn linked(&self) -> usize {
        let parents = self.parents();
        self.poll
            .iter()
            .filter(|c| parents.contains(&(c.span.trace_id.clone(), c.span.parent_span_id.clone())))
            .count()
    }

    /// Whether one of `spans` covers record `offset` of `partition`.
    fn covered(spans: &[&Received], partition: i64, offset: i64) -> bool {
        spans.iter().any(|s| {
            let num = |k: &str| s.attr(k).and_then(|v| v.parse::<i64>().ok());
            num("messaging.destination.partition.id") == Some(partition)
                && covered_offsets(num).is_some_and(|o| o.contains(&offset))
        })
    }

    /// Records produced without a send span covering them.
    pub fn lost(&self, produced: &[(i64, i64)]) -> usize {
        let send: Vec<&Received> = self.send.iter().collect();
        produced
            .iter()
            .filter(|(p, o)| !Self::covered(&send, *p, *o))
            .count()
    }

    /// Records covered by a poll span, linked or not.
    pub fn polled(&self, consumed: &[(i64, i64)]) -> usize {
        let poll: Vec<&Received> = self.poll.iter().collect();
        consumed
            .iter()
            .filter(|(p, o)| Self::covered(&poll, *p, *o))
            .count()
    }

    /// Records consumed without a poll span that covers them and hangs under its send span.
    pub fn unpolled(&self, consumed: &[(i64, i64)]) -> usize {
        let parents = self.parents();
        let linked: Vec<&Received> = self
            .poll
            .iter()
            .filter(|c| parents.contains(&(c.span.trace_id.clone(), c.span.parent_span_id.clone())))
            .collect();
        consumed
            .iter()
            .filter(|(p, o)| !Self::covered(&linked, *p, *o))
            .count()
    }

    /// The scenario's line in the end-to-end summary.
    pub fn summary(&self, scenario: &str, produced: &[(i64, i64)]) {
        summary(&format!(
            "e2e {scenario}: {} records produced, {} send + {} poll spans received, {} of {} poll spans linked to their send span, {} records without a send span",
            produced.len(),
            self.send.len(),
            self.poll.len(),
            self.linked(),
            self.poll.len(),
            self.lost(produced)
        ));
    }
}
