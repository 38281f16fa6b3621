//! Fetch requests (v4-v18) and responses, decoded without copying the records first. Flexible
//! encoding from v12; topics named by id from v13; replica id moved to a tagged field in v15.

use super::{
    DecodeError, TopicRef, api, check_version, ended_early, flexible_request,
    partition_records::{DecodeOptions, PartitionRecords},
    read_topic,
    records::with_decompressor,
    wire::Reader,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// -1 for consumers; a broker id for follower replicas (v4-v14 only).
    pub replica_id: i32,
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub isolation_level: i8,
    pub session_id: i32,
    pub session_epoch: i32,
    pub partitions: Vec<FetchPartitionRequest>,
    pub rack_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionRequest {
    pub topic: TopicRef,
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchResponse {
    pub throttle_time_ms: i32,
    pub error_code: i16,
    pub session_id: i32,
    pub partitions: Vec<FetchPartitionResponse>,
    /// Decoded from an incomplete frame (a broker-side capture misses the records it sends
    /// with sendfile): partitions after the cut are missing, and the last one's records may be.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchPartitionResponse {
    pub topic: TopicRef,
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: PartitionRecords,
}

/// A transaction a read_committed fetch response says was aborted: the batches of
/// `producer_id` from `first_offset` on, up to that producer's abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AbortedTransaction {
    producer_id: i64,
    first_offset: i64,
}

/// Marks the transactional batches that belong to an aborted transaction, as the Java
/// consumer finds them: a producer's transaction is open-and-aborted from the first offset the
/// list gives for it until its next control batch (the abort marker).
fn mark_aborted(records: &mut PartitionRecords, aborted: &mut [AbortedTransaction]) {
    if aborted.is_empty() {
        return;
    }
    aborted.sort_unstable_by_key(|a| a.first_offset);
    let mut next = 0;
    // Producers with an aborted transaction in progress at the current batch. The list comes
    // from the frame, so this is bounded by its size.
    let mut open: Vec<i64> = Vec::new();
    for b in &mut records.batches {
        let last = b.base_offset + i64::from(b.last_offset_delta);
        while let Some(a) = aborted.get(next).filter(|a| a.first_offset <= last) {
            open.push(a.producer_id);
            next += 1;
        }
        let Some(at) = open.iter().position(|&p| p == b.producer_id) else {
            continue;
        };
        if b.control {
            open.swap_remove(at);
        } else if b.transactional {
            b.aborted = true;
        }
    }
}

/// Checks the version; returns whether it uses the flexible encoding.
fn check(version: i16) -> Result<bool, DecodeError> {
    check_version("Fetch", version, 4..=18)?;
    Ok(flexible_request(api::FETCH, version))
}

fn topic(r: &mut Reader<'_>, version: i16, flexible: bool) -> Result<TopicRef, DecodeError> {
    read_topic(r, flexible, version, 13)
}

pub fn decode_request(body: &[u8], version: i16) -> Result<FetchRequest, DecodeError> {
    let flexible = check(version)?;
    let mut r = Reader::new(body);
    let replica_id = if version <= 14 { r.i32()? } else { -1 };
    let max_wait_ms = r.i32()?;
    let min_bytes = r.i32()?;
    r.i32()?; // max_bytes
    let isolation_level = r.i8()?;
    let (session_id, session_epoch) = if version >= 7 {
        (r.i32()?, r.i32()?)
    } else {
        (0, -1)
    };
    let mut partitions = Vec::new();
    for _ in 0..r.array_len(flexible, 2)? {
        let topic = topic(&mut r, version, flexible)?;
        for _ in 0..r.array_len(flexible, 16)? {
            let partition = r.i32()?;
            if version >= 9 {
                r.i32()?; // current_leader_epoch
            }
            let fetch_offset = r.i64()?;
            if version >= 12 {
                r.i32()?; // last_fetched_epoch
            }
            if version >= 5 {
                r.i64()?; // log_start_offset
            }
            let partition_max_bytes = r.i32()?;
            r.skip_tags(flexible)?;
            partitions.push(FetchPartitionRequest {
                topic: topic.clone(),
                partition,
                fetch_offset,
                partition_max_bytes,
            });
        }
        r.skip_tags(flexible)?;
    }
    if version >= 7 {
        for _ in 0..r.array_len(flexible, 2)? {
            topic(&mut r, version, flexible)?;
            for _ in 0..r.array_len(flexible, 4)? {
                r.i32()?;
            }
            r.skip_tags(flexible)?;
        }
    }
    let rack_id = if version >= 11 {
        r.string(flexible)?.map(super::names::id)
    } else {
        None
    };
    r.skip_tags(flexible)?;
    Ok(FetchRequest {
        replica_id,
        max_wait_ms,
        min_bytes,
        isolation_level,
        session_id,
        session_epoch,
        partitions,
        rack_id,
    })
}

/// Decodes a fetch response; `partial` when `body` is only the start of the frame.
pub fn decode_response(
    body: &[u8],
    version: i16,
    partial: bool,
    opts: &DecodeOptions,
) -> Result<FetchResponse, DecodeError> {
    let flexible = check(version)?;
    let mut r = Reader::new(body);
    let throttle_time_ms = r.i32()?;
    let (error_code, session_id) = if version >= 7 {
        (r.i16()?, r.i32()?)
    } else {
        (0, 0)
    };
    let mut out = FetchResponse {
        throttle_time_ms,
        error_code,
        session_id,
        partitions: Vec::new(),
        truncated: false,
    };
    // Counts are checked against the bytes present, which a cut frame does not have.
    let min = |n| if partial { 0 } else { n };
    // A cut frame ends wherever its bytes end: what was decoded up to there is the result.
    let walked = with_decompressor(opts.max_decompressed, |d| -> Result<(), DecodeError> {
        for _ in 0..r.array_len(flexible, min(2))? {
            let topic = topic(&mut r, version, flexible)?;
            for _ in 0..r.array_len(flexible, min(30))? {
                let partition = r.i32()?;
                let error_code = r.i16()?;
                let high_watermark = r.i64()?;
                let last_stable_offset = r.i64()?;
                let log_start_offset = if version >= 5 { r.i64()? } else { -1 };
                // Present (possibly empty) only in answers to read_committed fetches.
                let mut aborted = Vec::new();
                for _ in 0..r.array_len(flexible, min(16))? {
                    aborted.push(AbortedTransaction {
                        producer_id: r.i64()?,
                        first_offset: r.i64()?,
                    });
                    r.skip_tags(flexible)?;
                }
                if version >= 11 {
                    r.i32()?; // preferred_read_replica
                }
                let (field, cut) = r.records_field(flexible, partial)?;
                let mut records = PartitionRecords::collect(field, d, opts);
                mark_aborted(&mut records, &mut aborted);
                out.partitions.push(FetchPartitionResponse {
                    topic: topic.clone(),
                    partition,
                    error_code,
                    high_watermark,
                    last_stable_offset,
                    log_start_offset,
                    records,
                });
                if cut {
                    out.truncated = true;
                    return Ok(());
                }
                r.skip_tags(flexible)?;
            }
            r.skip_tags(flexible)?;
        }
        r.skip_tags(flexible)?;
        Ok(())
    });
    out.truncated |= ended_early(partial, walked)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{BatchInfo, records::Compression};

    fn batch(base_offset: i64, records: i32, producer_id: i64, kind: &str) -> BatchInfo {
        BatchInfo {
            base_offset,
            record_count: records,
            last_offset_delta: records - 1,
            compression: Compression::None,
            base_timestamp: 0,
            max_timestamp: 0,
            log_append_time: false,
            producer_id,
            transactional: kind != "plain",
            control: kind == "marker",
            aborted: false,
            bytes: 0,
            records_skipped: false,
        }
    }

    /// Producer 7 commits offsets 0-2 (marker at 3), producer 8 aborts 4-5 (marker 6) while
    /// producer 7's second transaction 7-8 is aborted too (marker 10), with a plain batch at 9
    /// between: only the two aborted transactions' data batches are marked.
    #[test]
    fn aborted_transactions_mark_their_batches_up_to_the_marker() {
        let mut records = PartitionRecords {
            batches: vec![
                batch(0, 3, 7, "txn"),
                batch(3, 1, 7, "marker"),
                batch(4, 2, 8, "txn"),
                batch(6, 1, 8, "marker"),
                batch(7, 2, 7, "txn"),
                batch(9, 1, -1, "plain"),
                batch(10, 1, 7, "marker"),
                batch(11, 2, 8, "txn"),
            ],
            ..PartitionRecords::default()
        };
        let mut aborted = [
            AbortedTransaction {
                producer_id: 7,
                first_offset: 7,
            },
            AbortedTransaction {
                producer_id: 8,
                first_offset: 4,
            },
        ];
        mark_aborted(&mut records, &mut aborted);
        let marked: Vec<i64> = records
            .batches
            .iter()
            .filter(|b| b.aborted)
            .map(|b| b.base_offset)
            .collect();
        // Producer 8's batch at 11 starts a new transaction after its abort marker.
        assert_eq!(marked, [4, 7]);
    }

    #[test]
    fn without_an_aborted_list_nothing_is_marked() {
        let mut records = PartitionRecords {
            batches: vec![batch(0, 3, 7, "txn")],
            ..PartitionRecords::default()
        };
        mark_aborted(&mut records, &mut []);
        assert!(!records.batches[0].aborted);
    }
}
