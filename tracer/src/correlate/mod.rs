//! Trace identity of Kafka records: the context a record carries in its headers, and, for
//! records without one, identifiers derived from where the record sits in the log.
//!
//! Tracers on different nodes never talk to each other. The producer's node and the consumer's
//! node still agree on identifiers because both derive them from the same facts: the cluster,
//! topic and partition, and the base offset of the record batch. Brokers store producer batches
//! as written and serve them unchanged, so the batch a consumer fetches starts at the same base
//! offset the produce response assigned.

mod context;

pub use context::{TraceContext, extract};

/// Version tag of the derivation: changing the inputs or the hash is a new tag, so that
/// tracers of different versions never produce colliding but unrelated ids.
const DERIVATION: &[u8] = b"kafka-tracer/batch/v1";

/// Trace and span id of the producer batch at `base_offset` of `topic`/`partition` in
/// `cluster`: the identity both the producing and the consuming side give that batch when its
/// records carry no trace context.
pub fn batch_ids(
    cluster: &str,
    topic: &str,
    partition: i32,
    base_offset: i64,
) -> ([u8; 16], [u8; 8]) {
    let mut input = Vec::with_capacity(DERIVATION.len() + cluster.len() + topic.len() + 14);
    input.extend_from_slice(DERIVATION);
    input.extend_from_slice(cluster.as_bytes());
    input.push(0);
    input.extend_from_slice(topic.as_bytes());
    input.push(0);
    input.extend_from_slice(&partition.to_be_bytes());
    input.extend_from_slice(&base_offset.to_be_bytes());
    let mut trace = xxhash_rust::xxh3::xxh3_128(&input).to_be_bytes();
    input.push(1);
    let mut span = xxhash_rust::xxh3::xxh3_64(&input).to_be_bytes();
    // All-zero ids are invalid in W3C and OTLP.
    if trace == [0; 16] {
        trace[15] = 1;
    }
    if span == [0; 8] {
        span[7] = 1;
    }
    (trace, span)
}

/// Lower-case hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_stable_and_distinct() {
        let a = batch_ids("cluster-1", "orders", 0, 40);
        assert_eq!(a, batch_ids("cluster-1", "orders", 0, 40));
        for other in [
            batch_ids("cluster-2", "orders", 0, 40),
            batch_ids("cluster-1", "order", 0, 40),
            batch_ids("cluster-1", "orders", 1, 40),
            batch_ids("cluster-1", "orders", 0, 41),
            // The separator keeps ("ab", "c") apart from ("a", "bc").
            batch_ids("cluster-1o", "rders", 0, 40),
        ] {
            assert_ne!(a.0, other.0);
            assert_ne!(a.1, other.1);
        }
    }

    #[test]
    fn batch_ids_are_pinned_across_versions() {
        // Known answer: tracers of this derivation version anywhere compute exactly these. If
        // this changes, old and new tracers no longer link: bump DERIVATION instead.
        let (t, s) = batch_ids("tansu_cluster", "orders", 2, 1000);
        assert_eq!((hex(&t).as_str(), hex(&s).as_str()), (PINNED.0, PINNED.1));
    }

    const PINNED: (&str, &str) = ("c71cccfd1829735f165ccb39dce35955", "cd2b4e9e85a8a18e");
}
