//! A metric family bounded in series: past its bound, counters and histograms add to one
//! `<overflow>` series per kept label (api, direction, outcome), so totals stay right while
//! memory and `/metrics` stay bounded; gauges, which cannot be summed, are refused. Both are
//! counted.

use std::{borrow::Cow, collections::HashMap, hash::Hash, sync::Arc};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};

/// The label value of the series that stands for every series past a family's bound.
pub const OVERFLOW: &str = "<overflow>";

/// One label value of a series key.
pub trait Label: Clone + Hash + Eq {
    /// The value in the overflow series: unchanged for labels from a fixed set (api names,
    /// directions, outcomes, error codes), [`OVERFLOW`] for those from the wire.
    fn overflow(&self) -> Self;
    fn text(&self) -> Cow<'_, str>;
}

/// Names the tracer picks (api, direction, outcome): a fixed set, kept in the overflow series.
impl Label for &'static str {
    fn overflow(&self) -> Self {
        self
    }
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

/// Names from the wire (topics, groups): checked and bounded in length by `kafka::names`,
/// unbounded in number.
impl Label for Arc<str> {
    fn overflow(&self) -> Self {
        OVERFLOW.into()
    }
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

/// Partitions: unbounded in number. `i32::MIN` stands for the overflow series.
impl Label for i32 {
    fn overflow(&self) -> Self {
        i32::MIN
    }
    fn text(&self) -> Cow<'_, str> {
        if *self == i32::MIN {
            Cow::Borrowed(OVERFLOW)
        } else {
            Cow::Owned(self.to_string())
        }
    }
}

/// Kafka error codes: at most 65,536 values, most of them never sent.
impl Label for i16 {
    fn overflow(&self) -> Self {
        *self
    }
    fn text(&self) -> Cow<'_, str> {
        Cow::Owned(self.to_string())
    }
}

/// The labels of a series, in the order of the family's label names.
pub trait Key: Clone + Hash + Eq {
    fn overflow(&self) -> Self;
    fn texts(&self) -> Vec<Cow<'_, str>>;
}

macro_rules! key {
    ($($t:ident . $i:tt),+) => {
        impl<$($t: Label),+> Key for ($($t,)+) {
            fn overflow(&self) -> Self {
                ($(self.$i.overflow(),)+)
            }
            fn texts(&self) -> Vec<Cow<'_, str>> {
                vec![$(self.$i.text()),+]
            }
        }
    };
}
key!(A.0);
key!(A.0, B.1);
key!(A.0, B.1, C.2);

/// Series of one metric family, at most `max` of them plus the overflow series.
pub struct Family<K, V> {
    pub names: &'static [&'static str],
    series: HashMap<K, V>,
    max: usize,
    /// Observations that went to an overflow series, or were refused (gauges).
    pub overflowed: u64,
}

impl<K: Key, V: Default> Family<K, V> {
    pub fn new(names: &'static [&'static str], max: usize) -> Self {
        Self {
            names,
            series: HashMap::new(),
            max,
            overflowed: 0,
        }
    }

    fn full_without(&self, k: &K) -> bool {
        self.series.len() >= self.max && !self.series.contains_key(k)
    }

    /// The series of `k` for a counter or histogram: the overflow series once the family is
    /// full. Overflow keys keep only fixed-set labels, so they add a few series at most.
    pub fn add(&mut self, k: K) -> &mut V {
        self.add_many(k, 1)
    }

    /// [`Self::add`] for `observations` about to be made at once (one lookup for a whole
    /// batch's records); all of them count as overflowed when the series is the overflow one.
    pub fn add_many(&mut self, k: K, observations: u64) -> &mut V {
        let k = if self.full_without(&k) {
            self.overflowed += observations;
            k.overflow()
        } else {
            k
        };
        self.series.entry(k).or_default()
    }

    /// The series of `k` for a gauge, or none once the family is full (counted).
    pub fn set(&mut self, k: K) -> Option<&mut V> {
        if self.full_without(&k) {
            self.overflowed += 1;
            return None;
        }
        Some(self.series.entry(k).or_default())
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.series.get(k)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Encodes the family as `name`: the metric `metric` makes of each series (none: the
    /// series is left out) under the series' labels. A family without series is left out
    /// whole (parsers disagree on empty families).
    pub fn describe<'a, M: EncodeMetric + 'a>(
        &'a self,
        out: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        metric_type: MetricType,
        mut metric: impl FnMut(&'a K, &'a V) -> Option<M>,
    ) -> std::fmt::Result {
        let series: Vec<(&K, M)> = self
            .series
            .iter()
            .filter_map(|(k, v)| Some((k, metric(k, v)?)))
            .collect();
        if series.is_empty() {
            return Ok(());
        }
        let mut family = out.encode_descriptor(name, help, None, metric_type)?;
        for (k, m) in series {
            let texts = k.texts();
            let labels: Vec<(&str, &str)> = self
                .names
                .iter()
                .copied()
                .zip(texts.iter().map(|t| t.as_ref()))
                .collect();
            m.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A histogram with fixed bucket bounds, counts per bucket (not cumulative), the last for
/// values above every bound.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS + 1],
    sum: f64,
}

/// Buckets of every histogram.
pub const BUCKETS: usize = 12;

impl Histogram {
    pub fn observe(&mut self, bounds: &[f64; BUCKETS], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(BUCKETS);
        self.counts[i] += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The histogram with its bucket bounds, to encode.
    pub fn with<'a>(&'a self, bounds: &'a [f64; BUCKETS]) -> Bucketed<'a> {
        Bucketed(self, bounds)
    }
}

/// A histogram and its bucket bounds.
#[derive(Debug)]
pub struct Bucketed<'a>(&'a Histogram, &'a [f64; BUCKETS]);

impl EncodeMetric for Bucketed<'_> {
    fn encode(&self, mut e: MetricEncoder<'_>) -> std::fmt::Result {
        let Self(h, bounds) = self;
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.counts)
            .collect();
        e.encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_counters_overflow_and_gauges_are_refused() {
        let mut f: Family<(&'static str, Arc<str>, i32), u64> =
            Family::new(&["direction", "topic", "partition"], 3);
        for t in ["a", "b", "c", "d", "e"] {
            *f.add(("produced", t.into(), 1)) += 1;
        }
        *f.add(("consumed", "f".into(), 2)) += 1;
        // Three series, then one overflow series per direction.
        assert_eq!(f.len(), 5);
        assert_eq!(f.overflowed, 3);
        assert_eq!(f.get(&("produced", OVERFLOW.into(), i32::MIN)), Some(&2));
        assert_eq!(f.get(&("consumed", OVERFLOW.into(), i32::MIN)), Some(&1));
        // An existing series still counts as itself.
        *f.add(("produced", "a".into(), 1)) += 1;
        assert_eq!(f.get(&("produced", "a".into(), 1)), Some(&2));
        // Observations made at once count one by one past the bound, and not before it.
        *f.add_many(("produced", "g".into(), 1), 4) += 4;
        *f.add_many(("produced", "a".into(), 1), 4) += 4;
        assert_eq!(f.overflowed, 7);
        assert_eq!(f.get(&("produced", OVERFLOW.into(), i32::MIN)), Some(&6));

        let mut g: Family<(Arc<str>,), i64> = Family::new(&["topic"], 1);
        assert!(g.set(("a".into(),)).is_some());
        assert!(g.set(("b".into(),)).is_none());
        assert!(g.set(("a".into(),)).is_some());
        assert_eq!((g.len(), g.overflowed), (1, 1));
    }

    #[test]
    fn histogram_counts_each_value_once() {
        let bounds = [1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.];
        let mut h = Histogram::default();
        for v in [0.5, 2.0, 2.5, 100.0] {
            h.observe(&bounds, v);
        }
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts[BUCKETS], 1);
        assert_eq!((h.count(), h.sum), (4, 105.0));
    }
}
