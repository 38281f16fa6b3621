//! Share groups (KIP-932, queues for Kafka; GA in Kafka 4.2): ShareFetch (v1-v2) hands a
//! member ordinary record batches plus the ranges it acquired (with their delivery count), and
//! acknowledgements (accept, release, reject per offset range) travel in the next ShareFetch or
//! in ShareAcknowledge (v1-v2). Topics are named by id. Layouts checked against Kafka 4.4's
//! message schemas; v0 was never released in a broker.

use super::{
    DecodeError, TopicRef, check_version, ended_early,
    partition_records::{DecodeOptions, PartitionRecords},
    records::with_decompressor,
    wire::Reader,
};

/// What a member acknowledges for one offset range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcknowledgeCounts {
    pub accepted: u64,
    pub released: u64,
    pub rejected: u64,
}

/// One acknowledgement batch of a ShareFetch or ShareAcknowledge request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub topic: TopicRef,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub counts: AcknowledgeCounts,
}

/// A ShareFetch or ShareAcknowledge request: who asks, and what it acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRequest {
    pub group_id: Option<String>,
    pub member_id: Option<String>,
    pub acknowledgements: Vec<Acknowledgement>,
}

/// Records a share-group member acquired: `first..=last`, delivered `delivery_count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquiredRecords {
    pub first_offset: i64,
    pub last_offset: i64,
    pub delivery_count: i16,
}

impl AcquiredRecords {
    /// Number of offsets in the range (0 for a malformed one).
    pub fn len(&self) -> u64 {
        u64::try_from(
            self.last_offset
                .saturating_sub(self.first_offset)
                .saturating_add(1),
        )
        .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SharePartitionResponse {
    pub topic: TopicRef,
    pub partition: i32,
    pub error_code: i16,
    pub records: PartitionRecords,
    pub acquired: Vec<AcquiredRecords>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShareFetchResponse {
    pub error_code: i16,
    pub partitions: Vec<SharePartitionResponse>,
    pub truncated: bool,
}

const VERSIONS: std::ops::RangeInclusive<i16> = 1..=2;

/// The acknowledgement types of KIP-932 added up over a range: one type for the whole range, or
/// one per offset.
fn counts(first: i64, last: i64, types: &[i8]) -> AcknowledgeCounts {
    let mut c = AcknowledgeCounts::default();
    let mut add = |t: i8, n: u64| match t {
        1 => c.accepted = c.accepted.saturating_add(n),
        2 => c.released = c.released.saturating_add(n),
        3 => c.rejected = c.rejected.saturating_add(n),
        _ => {} // 0: a gap (no record there); 4: renew (v2), not an outcome
    };
    match types {
        [one] => add(
            *one,
            u64::try_from(last.saturating_sub(first).saturating_add(1)).unwrap_or(0),
        ),
        many => many.iter().for_each(|&t| add(t, 1)),
    }
    c
}

/// The topics' acknowledgement batches, as both requests lay them out.
fn acknowledgements(r: &mut Reader<'_>) -> Result<Vec<Acknowledgement>, DecodeError> {
    let mut out = Vec::new();
    for _ in 0..r.array_len(true, 18)? {
        let topic = TopicRef::Id(r.uuid()?);
        for _ in 0..r.array_len(true, 6)? {
            let partition = r.i32()?;
            for _ in 0..r.array_len(true, 18)? {
                let first_offset = r.i64()?;
                let last_offset = r.i64()?;
                let n = r.array_len(true, 1)?;
                let types = r.bytes(n)?;
                let types: Vec<i8> = types.iter().map(|&b| b as i8).collect();
                r.skip_tags(true)?;
                out.push(Acknowledgement {
                    topic: topic.clone(),
                    partition,
                    first_offset,
                    last_offset,
                    counts: counts(first_offset, last_offset, &types),
                });
            }
            r.skip_tags(true)?;
        }
        r.skip_tags(true)?;
    }
    Ok(out)
}

fn text(b: Option<&[u8]>) -> Option<String> {
    b.map(super::names::id)
}

/// A ShareFetch or ShareAcknowledge request: both open with the group, the member and the
/// share session's epoch and end with the acknowledgements; `between` reads what one of them
/// has in the middle.
fn decode_request(
    body: &[u8],
    between: impl FnOnce(&mut Reader<'_>) -> Result<(), DecodeError>,
) -> Result<ShareRequest, DecodeError> {
    let mut r = Reader::new(body);
    let group_id = text(r.string(true)?);
    let member_id = text(r.string(true)?);
    r.i32()?; // share_session_epoch
    between(&mut r)?;
    Ok(ShareRequest {
        group_id,
        member_id,
        acknowledgements: acknowledgements(&mut r)?,
    })
}

/// A ShareFetch request: group, member and the acknowledgements it carries.
pub fn decode_fetch_request(body: &[u8], version: i16) -> Result<ShareRequest, DecodeError> {
    check_version("ShareFetch", version, VERSIONS)?;
    decode_request(body, |r| {
        // max_wait_ms, min_bytes, max_bytes, max_records, batch_size
        for _ in 0..5 {
            r.i32()?;
        }
        if version >= 2 {
            r.i8()?; // share_acquire_mode
            r.i8()?; // is_renew_ack
        }
        Ok(())
    })
}

/// A ShareAcknowledge request.
pub fn decode_acknowledge_request(body: &[u8], version: i16) -> Result<ShareRequest, DecodeError> {
    check_version("ShareAcknowledge", version, VERSIONS)?;
    decode_request(body, |r| {
        if version >= 2 {
            r.i8()?; // is_renew_ack
        }
        Ok(())
    })
}

/// A ShareAcknowledge response's top-level error code.
pub fn decode_acknowledge_response(body: &[u8], version: i16) -> Result<i16, DecodeError> {
    check_version("ShareAcknowledge", version, VERSIONS)?;
    let mut r = Reader::new(body);
    r.i32()?; // throttle_time_ms
    Ok(r.i16()?)
}

/// A ShareFetch response; `partial` when `body` is only the start of the frame.
pub fn decode_fetch_response(
    body: &[u8],
    version: i16,
    partial: bool,
    opts: &DecodeOptions,
) -> Result<ShareFetchResponse, DecodeError> {
    check_version("ShareFetch", version, VERSIONS)?;
    let mut r = Reader::new(body);
    r.i32()?; // throttle_time_ms
    let mut out = ShareFetchResponse {
        error_code: r.i16()?,
        partitions: Vec::new(),
        truncated: false,
    };
    r.string(true)?; // error_message
    r.i32()?; // acquisition_lock_timeout_ms
    let min = |n| if partial { 0 } else { n };
    let walked = with_decompressor(opts.max_decompressed, |d| -> Result<(), DecodeError> {
        for _ in 0..r.array_len(true, min(18))? {
            let topic = TopicRef::Id(r.uuid()?);
            for _ in 0..r.array_len(true, min(20))? {
                let partition = r.i32()?;
                let error_code = r.i16()?;
                r.string(true)?; // error_message
                r.i16()?; // acknowledge_error_code
                r.string(true)?; // acknowledge_error_message
                r.i32()?; // current_leader.leader_id
                r.i32()?; // current_leader.leader_epoch
                r.skip_tags(true)?;
                let (field, cut) = r.records_field(true, partial)?;
                let records = PartitionRecords::collect(field, d, opts);
                let mut part = SharePartitionResponse {
                    topic: topic.clone(),
                    partition,
                    error_code,
                    records,
                    acquired: Vec::new(),
                };
                if cut {
                    out.partitions.push(part);
                    out.truncated = true;
                    return Ok(());
                }
                for _ in 0..r.array_len(true, min(19))? {
                    part.acquired.push(AcquiredRecords {
                        first_offset: r.i64()?,
                        last_offset: r.i64()?,
                        delivery_count: r.i16()?,
                    });
                    r.skip_tags(true)?;
                }
                r.skip_tags(true)?;
                out.partitions.push(part);
            }
            r.skip_tags(true)?;
        }
        Ok(())
    });
    out.truncated |= ended_early(partial, walked)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledge_types_add_up_per_range_or_per_offset() {
        // One type for the whole range 10..=14.
        assert_eq!(
            counts(10, 14, &[2]),
            AcknowledgeCounts {
                released: 5,
                ..Default::default()
            }
        );
        // One per offset: accept, gap, reject, accept.
        assert_eq!(
            counts(0, 3, &[1, 0, 3, 1]),
            AcknowledgeCounts {
                accepted: 2,
                rejected: 1,
                ..Default::default()
            }
        );
        // A hostile range does not overflow.
        assert_eq!(counts(i64::MIN, i64::MAX, &[1]).accepted, i64::MAX as u64);
        assert_eq!(counts(5, 1, &[1]).accepted, 0);
    }
}
