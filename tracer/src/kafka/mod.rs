//! Kafka wire decoding: request and response headers, Produce and Fetch (zero-copy, every
//! version a current broker speaks, record batches with every codec and record headers), and
//! Metadata, ApiVersions, ListOffsets, group, share-group, transaction and SASL APIs (their fields the
//! tracer uses, read by the same bounds-checked reader: the `kafka-protocol` crate, which sizes
//! vectors from untrusted counts, serves only as the reference encoder in the tests).
//!
//! Decoders take one complete frame body and return owned summaries: the frame buffer is reused
//! as soon as the call returns.

mod admin;
mod catalog;
mod errors;
mod fetch;
mod framing;
mod header;
pub mod lookup;
pub mod names;
mod partition_records;
mod produce;
pub mod records;
mod sasl;
mod session;
mod share;
mod sniff;
mod txn;
pub mod wire;

pub use admin::{
    ApiVersionsResponse, Broker, GroupInfo, MetadataResponse, MetadataTopic, OffsetEntry,
};
pub use catalog::Catalog;
pub use errors::error_name;
pub use fetch::{FetchPartitionRequest, FetchPartitionResponse, FetchRequest, FetchResponse};
pub use framing::{Frame, Framer, FramerCounters};
pub use header::{
    RequestHeader, ResponseHeader, api_name, flexible_request, parse_request_header,
    parse_response_header,
};
pub use partition_records::{BatchInfo, DecodeOptions, HeaderSpan, PartitionRecords, RecordInfo};
pub use produce::{ProducePartition, ProducePartitionResponse, ProduceRequest, ProduceResponse};
pub use session::{Exchange, Session, SessionCounters};
pub use share::{
    AcknowledgeCounts, Acknowledgement, AcquiredRecords, ShareFetchResponse,
    SharePartitionResponse, ShareRequest,
};
pub use sniff::{MAX_REQUEST_SIZE, looks_like_request};
pub use txn::EndTxn;

/// API keys the tracer decodes.
pub mod api {
    pub const PRODUCE: i16 = 0;
    pub const FETCH: i16 = 1;
    pub const LIST_OFFSETS: i16 = 2;
    pub const METADATA: i16 = 3;
    pub const OFFSET_COMMIT: i16 = 8;
    pub const OFFSET_FETCH: i16 = 9;
    /// Names the SASL mechanism; v0 is followed by raw (unframed by Kafka) SASL tokens.
    pub const SASL_HANDSHAKE: i16 = 17;
    pub const FIND_COORDINATOR: i16 = 10;
    pub const JOIN_GROUP: i16 = 11;
    pub const HEARTBEAT: i16 = 12;
    pub const LEAVE_GROUP: i16 = 13;
    pub const SYNC_GROUP: i16 = 14;
    pub const API_VERSIONS: i16 = 18;
    pub const END_TXN: i16 = 26;
    /// Carries SASL credentials, never decoded.
    pub const SASL_AUTHENTICATE: i16 = 36;
    /// KIP-848 consumer groups: replaces JoinGroup, SyncGroup and Heartbeat.
    pub const CONSUMER_GROUP_HEARTBEAT: i16 = 68;
    /// KIP-932 share groups.
    pub const SHARE_GROUP_HEARTBEAT: i16 = 76;
    pub const SHARE_FETCH: i16 = 78;
    pub const SHARE_ACKNOWLEDGE: i16 = 79;
}

/// The consumer- and share-group APIs, decoded into [`GroupInfo`].
const GROUP_APIS: [i16; 9] = [
    api::FIND_COORDINATOR,
    api::JOIN_GROUP,
    api::SYNC_GROUP,
    api::HEARTBEAT,
    api::LEAVE_GROUP,
    api::OFFSET_COMMIT,
    api::OFFSET_FETCH,
    api::CONSUMER_GROUP_HEARTBEAT,
    api::SHARE_GROUP_HEARTBEAT,
];

/// Fails for a version outside `range` of the named API.
pub(crate) fn check_version(
    api: &'static str,
    version: i16,
    range: std::ops::RangeInclusive<i16>,
) -> Result<(), DecodeError> {
    if range.contains(&version) {
        Ok(())
    } else {
        Err(DecodeError::Version { api, version })
    }
}

/// The outcome of decoding a message that may be cut short (`partial`): running out of bytes
/// then ends the message rather than failing it. Returns whether it ended early.
pub(crate) fn ended_early(
    partial: bool,
    walked: Result<(), DecodeError>,
) -> Result<bool, DecodeError> {
    match walked {
        Ok(()) => Ok(false),
        Err(DecodeError::Wire(wire::WireError::Short { .. })) if partial => Ok(true),
        Err(e) => Err(e),
    }
}

/// A topic field: a name before version `id_from`, a topic id from it on.
pub(crate) fn read_topic(
    r: &mut wire::Reader<'_>,
    flexible: bool,
    version: i16,
    id_from: i16,
) -> Result<TopicRef, DecodeError> {
    Ok(if version >= id_from {
        TopicRef::Id(r.uuid()?)
    } else {
        TopicRef::name(r.string(flexible)?.unwrap_or_default())
    })
}

/// A topic as a message names it: by name, or (Produce v13+, Fetch v13+) by id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopicRef {
    Name(std::sync::Arc<str>),
    Id([u8; 16]),
}

impl TopicRef {
    pub(crate) fn name(bytes: &[u8]) -> Self {
        Self::Name(names::topic(bytes))
    }
}

impl std::fmt::Display for TopicRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Id(id) => {
                for (i, b) in id.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Records(#[from] records::RecordError),
    #[error("unsupported {api} version {version}")]
    Version { api: &'static str, version: i16 },
    #[error("{0}")]
    Protocol(String),
}

/// A decoded request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    /// A group API (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
    /// OffsetFetch): the group and what it says about it.
    Group(GroupInfo),
    /// A transaction's commit or abort.
    EndTxn(EndTxn),
    /// ShareFetch or ShareAcknowledge (the header's API key tells which): the share group and
    /// the acknowledgements.
    Share(ShareRequest),
    /// SaslHandshake: the mechanism asked for.
    SaslHandshake(String),
    /// SaslAuthenticate, its credentials unread: the mechanism its connection's handshake
    /// named, when the handshake was seen.
    SaslAuthenticate(Option<String>),
    /// Any other API: header only.
    Other,
}

/// A decoded response body.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    Metadata(MetadataResponse),
    ApiVersions(ApiVersionsResponse),
    Group(GroupInfo),
    /// ListOffsets: (topic, partition, error, offset).
    ListOffsets(Vec<OffsetEntry>),
    ShareFetch(ShareFetchResponse),
    /// ShareAcknowledge: its top-level error code.
    ShareAcknowledge(i16),
    /// EndTxn: its error code.
    EndTxn(i16),
    /// SaslHandshake and SaslAuthenticate: their error codes.
    SaslHandshake(i16),
    SaslAuthenticate(i16),
    /// Any other API: the top-level error code where the tracer knows where it is.
    Other,
}

impl Response {
    /// The first non-zero Kafka error code of the response, if any.
    pub fn error_code(&self) -> Option<i16> {
        let first = |mut it: Box<dyn Iterator<Item = i16> + '_>| it.find(|&e| e != 0);
        match self {
            Self::Produce(p) => first(Box::new(p.partitions.iter().map(|p| p.error_code))),
            Self::Fetch(f) => (f.error_code != 0)
                .then_some(f.error_code)
                .or_else(|| first(Box::new(f.partitions.iter().map(|p| p.error_code)))),
            Self::Metadata(m) => first(Box::new(m.topics.iter().map(|t| t.error_code))),
            Self::ApiVersions(a) => (a.error_code != 0).then_some(a.error_code),
            Self::Group(g) => (g.error_code != 0).then_some(g.error_code),
            Self::ListOffsets(o) => first(Box::new(o.iter().map(|e| e.error_code))),
            Self::ShareFetch(f) => (f.error_code != 0)
                .then_some(f.error_code)
                .or_else(|| first(Box::new(f.partitions.iter().map(|p| p.error_code)))),
            Self::ShareAcknowledge(e)
            | Self::EndTxn(e)
            | Self::SaslHandshake(e)
            | Self::SaslAuthenticate(e) => (*e != 0).then_some(*e),
            Self::Other => None,
        }
    }
}

/// Decodes a request body (the frame after its header); `partial` when the frame was cut.
pub fn decode_request(
    h: &RequestHeader,
    body: &[u8],
    partial: bool,
    opts: &DecodeOptions,
) -> Result<Request, DecodeError> {
    Ok(match h.api_key {
        api::PRODUCE => {
            Request::Produce(produce::decode_request(body, h.api_version, partial, opts)?)
        }
        api::FETCH => Request::Fetch(fetch::decode_request(body, h.api_version)?),
        api::SHARE_FETCH => Request::Share(share::decode_fetch_request(body, h.api_version)?),
        api::END_TXN => Request::EndTxn(txn::decode_request(body, h.api_version)?),
        api::SASL_HANDSHAKE => {
            Request::SaslHandshake(sasl::decode_handshake_request(body, h.api_version)?)
        }
        api::SASL_AUTHENTICATE => Request::SaslAuthenticate(None),
        api::SHARE_ACKNOWLEDGE => {
            Request::Share(share::decode_acknowledge_request(body, h.api_version)?)
        }
        k if GROUP_APIS.contains(&k) => {
            Request::Group(admin::decode_group_request(h.api_key, h.api_version, body)?)
        }
        _ => Request::Other,
    })
}

/// Decodes a response body, given the request it answers; `partial` when the frame was cut.
pub fn decode_response(
    api_key: i16,
    version: i16,
    body: &[u8],
    partial: bool,
    opts: &DecodeOptions,
) -> Result<Response, DecodeError> {
    Ok(match api_key {
        api::PRODUCE => Response::Produce(produce::decode_response(body, version)?),
        api::FETCH => Response::Fetch(fetch::decode_response(body, version, partial, opts)?),
        api::METADATA => Response::Metadata(admin::decode_metadata(body, version)?),
        api::API_VERSIONS => Response::ApiVersions(admin::decode_api_versions(body, version)?),
        api::LIST_OFFSETS => Response::ListOffsets(admin::decode_list_offsets(body, version)?),
        api::SHARE_FETCH => {
            Response::ShareFetch(share::decode_fetch_response(body, version, partial, opts)?)
        }
        api::SHARE_ACKNOWLEDGE => {
            Response::ShareAcknowledge(share::decode_acknowledge_response(body, version)?)
        }
        api::END_TXN => Response::EndTxn(txn::decode_response(body, version)?),
        api::SASL_HANDSHAKE => {
            Response::SaslHandshake(sasl::decode_handshake_response(body, version)?)
        }
        api::SASL_AUTHENTICATE => {
            Response::SaslAuthenticate(sasl::decode_authenticate_response(body, version)?)
        }
        k if GROUP_APIS.contains(&k) => {
            Response::Group(admin::decode_group_response(api_key, version, body)?)
        }
        _ => Response::Other,
    })
}
