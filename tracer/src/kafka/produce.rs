//! Produce requests (v3-v13) and responses, decoded without copying the records first.
//! Flexible encoding from v9; topics named by id from v13.

use super::{
    DecodeError, TopicRef, api, check_version, ended_early, flexible_request,
    partition_records::{DecodeOptions, PartitionRecords},
    read_topic,
    records::with_decompressor,
    wire::Reader,
};

#[derive(Debug, Clone, PartialEq)]
pub struct ProduceRequest {
    pub transactional_id: Option<String>,
    /// 0: no response will come; 1: leader; -1: all in-sync replicas.
    pub acks: i16,
    pub timeout_ms: i32,
    pub partitions: Vec<ProducePartition>,
    /// Decoded from an incomplete frame: partitions after the cut are missing, and the last
    /// one's records may be.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProducePartition {
    pub topic: TopicRef,
    pub partition: i32,
    pub records: PartitionRecords,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProduceResponse {
    pub partitions: Vec<ProducePartitionResponse>,
    pub throttle_time_ms: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartitionResponse {
    pub topic: TopicRef,
    pub partition: i32,
    pub error_code: i16,
    /// Offset the broker gave the first record (-1 on error).
    pub base_offset: i64,
    /// Broker append time, or -1 when the topic uses create time.
    pub log_append_time_ms: i64,
}

/// Checks the version; returns whether it uses the flexible encoding.
fn check(version: i16) -> Result<bool, DecodeError> {
    check_version("Produce", version, 3..=13)?;
    Ok(flexible_request(api::PRODUCE, version))
}

fn topic(r: &mut Reader<'_>, version: i16, flexible: bool) -> Result<TopicRef, DecodeError> {
    read_topic(r, flexible, version, 13)
}

/// Decodes a produce request; `partial` when `body` is only the start of the frame.
pub fn decode_request(
    body: &[u8],
    version: i16,
    partial: bool,
    opts: &DecodeOptions,
) -> Result<ProduceRequest, DecodeError> {
    let flexible = check(version)?;
    let mut r = Reader::new(body);
    let transactional_id = r.string(flexible)?.map(super::names::id);
    let acks = r.i16()?;
    let timeout_ms = r.i32()?;
    let mut out = ProduceRequest {
        transactional_id,
        acks,
        timeout_ms,
        partitions: Vec::new(),
        truncated: false,
    };
    // Counts are checked against the bytes present, which a cut frame does not have.
    let min = |n| if partial { 0 } else { n };
    // A cut frame ends wherever its bytes end: what was decoded up to there is the result.
    let walked = with_decompressor(opts.max_decompressed, |d| -> Result<(), DecodeError> {
        for _ in 0..r.array_len(flexible, min(2))? {
            let topic = topic(&mut r, version, flexible)?;
            for _ in 0..r.array_len(flexible, min(5))? {
                let partition = r.i32()?;
                let (field, cut) = r.records_field(flexible, partial)?;
                out.partitions.push(ProducePartition {
                    topic: topic.clone(),
                    partition,
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

pub fn decode_response(body: &[u8], version: i16) -> Result<ProduceResponse, DecodeError> {
    let flexible = check(version)?;
    let mut r = Reader::new(body);
    let mut partitions = Vec::new();
    for _ in 0..r.array_len(flexible, 2)? {
        let topic = topic(&mut r, version, flexible)?;
        for _ in 0..r.array_len(flexible, 14)? {
            let partition = r.i32()?;
            let error_code = r.i16()?;
            let base_offset = r.i64()?;
            let log_append_time_ms = r.i64()?;
            if version >= 5 {
                r.i64()?; // log_start_offset
            }
            if version >= 8 {
                for _ in 0..r.array_len(flexible, 4)? {
                    r.i32()?; // batch_index
                    r.string(flexible)?; // batch_index_error_message
                    r.skip_tags(flexible)?;
                }
                r.string(flexible)?; // error_message
            }
            r.skip_tags(flexible)?;
            partitions.push(ProducePartitionResponse {
                topic: topic.clone(),
                partition,
                error_code,
                base_offset,
                log_append_time_ms,
            });
        }
        r.skip_tags(flexible)?;
    }
    let throttle_time_ms = r.i32()?;
    r.skip_tags(flexible)?;
    Ok(ProduceResponse {
        partitions,
        throttle_time_ms,
    })
}
