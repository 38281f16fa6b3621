//! Transactions: EndTxn (v0-5; flexible from v3), the producer's commit or abort of what it
//! sent since its last one. (Transactions v2, KIP-890, add partitions through Produce itself, so
//! EndTxn is the one transaction request every transactional producer sends.)

use super::{DecodeError, api, check_version, flexible_request, names, wire::Reader};

/// An EndTxn request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndTxn {
    pub transactional_id: String,
    pub producer_id: i64,
    pub committed: bool,
}

const VERSIONS: std::ops::RangeInclusive<i16> = 0..=5;

pub fn decode_request(body: &[u8], version: i16) -> Result<EndTxn, DecodeError> {
    check_version("EndTxn", version, VERSIONS)?;
    let flexible = flexible_request(api::END_TXN, version);
    let mut r = Reader::new(body);
    let transactional_id = r.string(flexible)?.map(names::id).unwrap_or_default();
    let producer_id = r.i64()?;
    r.i16()?; // producer_epoch
    let committed = r.i8()? != 0;
    Ok(EndTxn {
        transactional_id,
        producer_id,
        committed,
    })
}

/// An EndTxn response's error code.
pub fn decode_response(body: &[u8], version: i16) -> Result<i16, DecodeError> {
    check_version("EndTxn", version, VERSIONS)?;
    let mut r = Reader::new(body);
    r.i32()?; // throttle_time_ms
    Ok(r.i16()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_abort_decode_in_both_encodings() {
        // v5 (flexible): compact string "tx" (length + 1), producer 7, epoch 0, commit, no tags.
        let v5 = b"\x03tx\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x01\x00";
        assert_eq!(
            decode_request(v5, 5).unwrap(),
            EndTxn {
                transactional_id: "tx".into(),
                producer_id: 7,
                committed: true
            }
        );
        // v0: int16 length, abort.
        let v0 = b"\x00\x02tx\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00";
        assert!(!decode_request(v0, 0).unwrap().committed);
        assert_eq!(decode_response(b"\x00\x00\x00\x00\x00\x30", 5).unwrap(), 48);
        assert!(decode_request(v5, 6).is_err());
    }
}
