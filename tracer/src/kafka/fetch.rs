//! Fetch requests (v4-v18) and responses, decoded without copying the records first. Flexible
//! encoding from v12; topics named by id from v13; replica id moved to a tagged field in v15.

use super::{
    DecodeError, TopicRef, api, check_version, ended_early, flexible_request, read_topic,
    records::with_decompressor,
    summary::{DecodeOptions, PartitionRecords},
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
        r.string(flexible)?
            .map(|s| String::from_utf8_lossy(s).into_owned())
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
                for _ in 0..r.array_len(flexible, min(16))? {
                    r.i64()?; // producer_id
                    r.i64()?; // first_offset
                    r.skip_tags(flexible)?;
                }
                if version >= 11 {
                    r.i32()?; // preferred_read_replica
                }
                let (field, cut) = r.records_field(flexible, partial)?;
                out.partitions.push(FetchPartitionResponse {
                    topic: topic.clone(),
                    partition,
                    error_code,
                    high_watermark,
                    last_stable_offset,
                    log_start_offset,
                    records: PartitionRecords::collect(field, d, opts),
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
