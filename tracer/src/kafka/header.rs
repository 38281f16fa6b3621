//! Request and response headers. Which header version a message uses depends on its API and
//! version (flexible versions add tagged fields; ApiVersions responses never do), taken from
//! the `kafka-protocol` crate's tables, generated from Kafka's own message definitions.

use kafka_protocol::messages::ApiKey;

use super::{DecodeError, wire::Reader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub correlation_id: i32,
}

/// The API's name as the Kafka protocol guide spells it.
pub fn api_name(api_key: i16) -> &'static str {
    match api_key {
        0 => "Produce",
        1 => "Fetch",
        2 => "ListOffsets",
        3 => "Metadata",
        8 => "OffsetCommit",
        9 => "OffsetFetch",
        10 => "FindCoordinator",
        11 => "JoinGroup",
        12 => "Heartbeat",
        13 => "LeaveGroup",
        14 => "SyncGroup",
        15 => "DescribeGroups",
        16 => "ListGroups",
        17 => "SaslHandshake",
        18 => "ApiVersions",
        19 => "CreateTopics",
        20 => "DeleteTopics",
        22 => "InitProducerId",
        24 => "AddPartitionsToTxn",
        25 => "AddOffsetsToTxn",
        26 => "EndTxn",
        28 => "TxnOffsetCommit",
        32 => "DescribeConfigs",
        36 => "SaslAuthenticate",
        37 => "CreatePartitions",
        60 => "DescribeCluster",
        68 => "ConsumerGroupHeartbeat",
        71 => "GetTelemetrySubscriptions",
        72 => "PushTelemetry",
        _ => "Unknown",
    }
}

/// Whether this request version uses the flexible (tagged-field, compact) encoding.
pub fn flexible_request(api_key: i16, version: i16) -> bool {
    ApiKey::try_from(api_key).is_ok_and(|k| k.request_header_version(version) >= 2)
}

/// Parses a request header at the start of a frame body (after the size prefix); returns the
/// header and the offset of the request body.
pub fn parse_request_header(frame: &[u8]) -> Result<(RequestHeader, usize), DecodeError> {
    let mut r = Reader::new(frame);
    let api_key = r.i16()?;
    let api_version = r.i16()?;
    let correlation_id = r.i32()?;
    // Header v0 (no client id) is only used by ControlledShutdown v0, which the tracer never
    // needs: every other request has a client id, and flexible ones add tagged fields.
    let client_id = r.string(false)?.map(super::names::id);
    r.skip_tags(flexible_request(api_key, api_version))?;
    Ok((
        RequestHeader {
            api_key,
            api_version,
            correlation_id,
            client_id,
        },
        r.position(),
    ))
}

/// Parses a response header for a request of `api_key`/`version`; returns it and the offset of
/// the response body.
pub fn parse_response_header(
    frame: &[u8],
    api_key: i16,
    version: i16,
) -> Result<(ResponseHeader, usize), DecodeError> {
    let mut r = Reader::new(frame);
    let correlation_id = r.i32()?;
    let tagged = ApiKey::try_from(api_key).is_ok_and(|k| k.response_header_version(version) >= 1);
    r.skip_tags(tagged)?;
    Ok((ResponseHeader { correlation_id }, r.position()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_versions_follow_the_api_tables() {
        // Produce is flexible from v9, Fetch from v12, ApiVersions from v3.
        assert!(!flexible_request(0, 8) && flexible_request(0, 9));
        assert!(!flexible_request(1, 11) && flexible_request(1, 12));
        assert!(flexible_request(18, 3));
        assert!(!flexible_request(999, 3));
        // ApiVersions v3 request: flexible header with tags after the client id.
        let (h, body) =
            parse_request_header(b"\x00\x12\x00\x03\x00\x00\x00\x07\x00\x02id\x00rest").unwrap();
        assert_eq!(
            (
                h.api_key,
                h.api_version,
                h.correlation_id,
                h.client_id.as_deref(),
                body
            ),
            (18, 3, 7, Some("id"), 13)
        );
        // ... but its response header has no tags.
        assert_eq!(
            parse_response_header(b"\x00\x00\x00\x07\x00", 18, 3)
                .unwrap()
                .1,
            4
        );
        // A flexible Fetch response does.
        assert_eq!(
            parse_response_header(b"\x00\x00\x00\x07\x00", 1, 16)
                .unwrap()
                .1,
            5
        );
        assert_eq!(api_name(1), "Fetch");
    }
}
