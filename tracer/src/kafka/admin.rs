//! Metadata, ApiVersions, ListOffsets and the consumer-group APIs: only the fields the tracer
//! uses, read with the bounds-checked [`Reader`]. (The `kafka-protocol` crate decodes these too,
//! but it sizes vectors from the untrusted element counts before reading them, so hostile bytes
//! could make it allocate gigabytes; its encoders serve as the reference in the tests.)

use super::{
    DecodeError, TopicRef, api, check_version, header::flexible_request, names, read_topic,
    wire::Reader,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTopic {
    pub name: Option<String>,
    pub topic_id: [u8; 16],
    pub error_code: i16,
    /// (partition, leader broker id)
    pub partitions: Vec<(i32, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResponse {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: Vec<Broker>,
    pub topics: Vec<MetadataTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionsResponse {
    pub error_code: i16,
    /// (api key, min version, max version)
    pub apis: Vec<(i16, i16, i16)>,
}

/// A committed, fetched or listed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetEntry {
    pub topic: TopicRef,
    pub partition: i32,
    pub error_code: i16,
    pub offset: i64,
}

/// What a group API message says about a consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    pub api_key: i16,
    pub group_id: Option<String>,
    pub member_id: Option<String>,
    pub generation: Option<i32>,
    pub error_code: i16,
    /// Committed offsets (OffsetCommit request, OffsetFetch response).
    pub offsets: Vec<OffsetEntry>,
    /// The coordinator (FindCoordinator response): node, host, port.
    pub coordinator: Option<(i32, String, i32)>,
}

/// A STRING or NULLABLE_STRING id (group, member, host, cluster), checked and bounded.
fn string(r: &mut Reader<'_>, flexible: bool) -> Result<Option<String>, DecodeError> {
    Ok(r.string(flexible)?.map(names::id))
}

/// An array of INT32, skipped.
fn skip_i32s(r: &mut Reader<'_>, flexible: bool) -> Result<(), DecodeError> {
    for _ in 0..r.array_len(flexible, 4)? {
        r.i32()?;
    }
    Ok(())
}

pub fn decode_metadata(body: &[u8], version: i16) -> Result<MetadataResponse, DecodeError> {
    check_version("Metadata", version, 0..=13)?;
    let flex = flexible_request(api::METADATA, version);
    let mut r = Reader::new(body);
    if version >= 3 {
        r.i32()?; // throttle_time_ms
    }
    let mut brokers = Vec::new();
    for _ in 0..r.array_len(flex, 10)? {
        let node_id = r.i32()?;
        let host = string(&mut r, flex)?.unwrap_or_default();
        let port = r.i32()?;
        let rack = if version >= 1 {
            string(&mut r, flex)?
        } else {
            None
        };
        r.skip_tags(flex)?;
        brokers.push(Broker {
            node_id,
            host,
            port,
            rack,
        });
    }
    let cluster_id = if version >= 2 {
        string(&mut r, flex)?
    } else {
        None
    };
    let controller_id = if version >= 1 { r.i32()? } else { -1 };
    let mut topics = Vec::new();
    for _ in 0..r.array_len(flex, 4)? {
        let error_code = r.i16()?;
        let name = r.string(flex)?.map(|n| names::topic(n).to_string());
        let topic_id = if version >= 10 { r.uuid()? } else { [0; 16] };
        if version >= 1 {
            r.i8()?; // is_internal
        }
        let mut partitions = Vec::new();
        for _ in 0..r.array_len(flex, 10)? {
            r.i16()?; // error_code
            let index = r.i32()?;
            let leader = r.i32()?;
            if version >= 7 {
                r.i32()?; // leader_epoch
            }
            skip_i32s(&mut r, flex)?; // replica_nodes
            skip_i32s(&mut r, flex)?; // isr_nodes
            if version >= 5 {
                skip_i32s(&mut r, flex)?; // offline_replicas
            }
            r.skip_tags(flex)?;
            partitions.push((index, leader));
        }
        if version >= 8 {
            r.i32()?; // topic_authorized_operations
        }
        r.skip_tags(flex)?;
        topics.push(MetadataTopic {
            name,
            topic_id,
            error_code,
            partitions,
        });
    }
    Ok(MetadataResponse {
        cluster_id,
        controller_id,
        brokers,
        topics,
    })
}

pub fn decode_api_versions(body: &[u8], version: i16) -> Result<ApiVersionsResponse, DecodeError> {
    // v5 (Kafka 4.4) has v4's layout (checked against the 4.4 message schema).
    check_version("ApiVersions", version, 0..=5)?;
    let flex = version >= 3;
    let mut r = Reader::new(body);
    let error_code = r.i16()?;
    let mut apis = Vec::new();
    for _ in 0..r.array_len(flex, 6)? {
        let entry = (r.i16()?, r.i16()?, r.i16()?);
        r.skip_tags(flex)?;
        apis.push(entry);
    }
    Ok(ApiVersionsResponse { error_code, apis })
}

pub fn decode_list_offsets(body: &[u8], version: i16) -> Result<Vec<OffsetEntry>, DecodeError> {
    // v11 (Kafka 4.4) has v10's layout (checked against the 4.4 message schema).
    check_version("ListOffsets", version, 1..=11)?;
    let flex = flexible_request(api::LIST_OFFSETS, version);
    let mut r = Reader::new(body);
    if version >= 2 {
        r.i32()?; // throttle_time_ms
    }
    let mut out = Vec::new();
    for _ in 0..r.array_len(flex, 2)? {
        let topic = read_topic(&mut r, flex, version, i16::MAX)?;
        for _ in 0..r.array_len(flex, 22)? {
            let partition = r.i32()?;
            let error_code = r.i16()?;
            r.i64()?; // timestamp
            let offset = r.i64()?;
            if version >= 4 {
                r.i32()?; // leader_epoch
            }
            r.skip_tags(flex)?;
            out.push(OffsetEntry {
                topic: topic.clone(),
                partition,
                error_code,
                offset,
            });
        }
        r.skip_tags(flex)?;
    }
    Ok(out)
}

pub fn decode_group_request(
    api_key: i16,
    version: i16,
    body: &[u8],
) -> Result<GroupInfo, DecodeError> {
    let flex = flexible_request(api_key, version);
    let mut r = Reader::new(body);
    let mut g = GroupInfo {
        api_key,
        ..GroupInfo::default()
    };
    match api_key {
        api::FIND_COORDINATOR => {
            find_coordinator_request(&mut r, flex, version, &mut g)?;
        }
        api::JOIN_GROUP | api::SYNC_GROUP | api::HEARTBEAT => {
            check_version("group", version, 0..=9)?;
            g.group_id = string(&mut r, flex)?;
            if api_key == api::JOIN_GROUP {
                r.i32()?; // session_timeout_ms
                if version >= 1 {
                    r.i32()?; // rebalance_timeout_ms
                }
            } else {
                g.generation = Some(r.i32()?);
            }
            g.member_id = string(&mut r, flex)?.filter(|m| !m.is_empty());
        }
        api::LEAVE_GROUP => {
            check_version("LeaveGroup", version, 0..=5)?;
            g.group_id = string(&mut r, flex)?;
        }
        api::OFFSET_COMMIT => {
            offset_commit_request(&mut r, flex, version, &mut g)?;
        }
        api::CONSUMER_GROUP_HEARTBEAT | api::SHARE_GROUP_HEARTBEAT => {
            check_version("group heartbeat", version, 0..=1)?;
            g.group_id = string(&mut r, flex)?;
            g.member_id = string(&mut r, flex)?.filter(|m| !m.is_empty());
            g.generation = Some(r.i32()?); // member epoch
        }
        api::OFFSET_FETCH => {
            check_version("OffsetFetch", version, 0..=10)?;
            g.group_id = if version >= 8 {
                if r.array_len(flex, 1)? > 0 {
                    string(&mut r, flex)?
                } else {
                    None
                }
            } else {
                string(&mut r, flex)?
            };
        }
        _ => {}
    }
    Ok(g)
}

/// OffsetCommit: the group, its generation and member, and each partition's offset.
fn offset_commit_request(
    r: &mut Reader<'_>,
    flex: bool,
    version: i16,
    g: &mut GroupInfo,
) -> Result<(), DecodeError> {
    check_version("OffsetCommit", version, 0..=10)?;
    g.group_id = string(r, flex)?;
    if version >= 1 {
        g.generation = Some(r.i32()?);
        g.member_id = string(r, flex)?;
    }
    if version >= 7 {
        r.string(flex)?; // group_instance_id
    }
    if (2..=4).contains(&version) {
        r.i64()?; // retention_time_ms
    }
    for _ in 0..r.array_len(flex, 2)? {
        let topic = read_topic(r, flex, version, 10)?;
        for _ in 0..r.array_len(flex, 14)? {
            let partition = r.i32()?;
            let offset = r.i64()?;
            if version >= 6 {
                r.i32()?; // committed_leader_epoch
            }
            if version == 1 {
                r.i64()?; // commit_timestamp
            }
            r.string(flex)?; // committed_metadata
            r.skip_tags(flex)?;
            g.offsets.push(OffsetEntry {
                topic: topic.clone(),
                partition,
                error_code: 0,
                offset,
            });
        }
        r.skip_tags(flex)?;
    }
    Ok(())
}

/// FindCoordinator: the group asked for (key type 0; 1 is a transactional id).
fn find_coordinator_request(
    r: &mut Reader<'_>,
    flex: bool,
    version: i16,
    g: &mut GroupInfo,
) -> Result<(), DecodeError> {
    check_version("FindCoordinator", version, 0..=6)?;
    let key = if version <= 3 { string(r, flex)? } else { None };
    let key_type = if version >= 1 { r.i8()? } else { 0 };
    let keys = if version >= 4 {
        let n = r.array_len(flex, 1)?;
        let first = if n > 0 { string(r, flex)? } else { None };
        for _ in 1..n {
            r.string(flex)?;
        }
        first
    } else {
        key
    };
    // key_type 0 is a group (1 a transactional id).
    if key_type == 0 {
        g.group_id = keys;
    }
    Ok(())
}

pub fn decode_group_response(
    api_key: i16,
    version: i16,
    body: &[u8],
) -> Result<GroupInfo, DecodeError> {
    let flex = flexible_request(api_key, version);
    let mut r = Reader::new(body);
    let mut g = GroupInfo {
        api_key,
        ..GroupInfo::default()
    };
    // throttle_time_ms leads every one of these responses from the version given.
    let throttle_from = match api_key {
        api::CONSUMER_GROUP_HEARTBEAT | api::SHARE_GROUP_HEARTBEAT => 0,
        api::JOIN_GROUP => 2,
        api::OFFSET_COMMIT | api::OFFSET_FETCH => 3,
        _ => 1,
    };
    if version >= throttle_from {
        r.i32()?;
    }
    match api_key {
        api::FIND_COORDINATOR => {
            find_coordinator_response(&mut r, flex, version, &mut g)?;
        }
        api::JOIN_GROUP => {
            check_version("JoinGroup", version, 0..=9)?;
            g.error_code = r.i16()?;
            g.generation = Some(r.i32()?);
            if version >= 7 {
                r.string(flex)?; // protocol_type
            }
            r.string(flex)?; // protocol_name
            r.string(flex)?; // leader
            if version >= 9 {
                r.i8()?; // skip_assignment
            }
            g.member_id = string(&mut r, flex)?;
        }
        api::SYNC_GROUP | api::HEARTBEAT | api::LEAVE_GROUP => {
            check_version("group", version, 0..=5)?;
            g.error_code = r.i16()?;
        }
        api::CONSUMER_GROUP_HEARTBEAT | api::SHARE_GROUP_HEARTBEAT => {
            check_version("group heartbeat", version, 0..=1)?;
            g.error_code = r.i16()?;
            r.string(flex)?; // error_message
            g.member_id = string(&mut r, flex)?.filter(|m| !m.is_empty());
            g.generation = Some(r.i32()?); // member epoch
        }
        api::OFFSET_COMMIT => {
            offset_commit_response(&mut r, flex, version, &mut g)?;
        }
        api::OFFSET_FETCH => {
            offset_fetch_response(&mut r, flex, version, &mut g)?;
        }
        _ => {}
    }
    Ok(g)
}

/// OffsetFetch: the committed offset of each partition, and the error.
fn offset_fetch_response(
    r: &mut Reader<'_>,
    flex: bool,
    version: i16,
    g: &mut GroupInfo,
) -> Result<(), DecodeError> {
    check_version("OffsetFetch", version, 0..=10)?;
    let topics = |r: &mut Reader<'_>, g: &mut GroupInfo| -> Result<(), DecodeError> {
        for _ in 0..r.array_len(flex, 2)? {
            let topic = read_topic(r, flex, version, 10)?;
            for _ in 0..r.array_len(flex, 16)? {
                let partition = r.i32()?;
                let offset = r.i64()?;
                if version >= 5 {
                    r.i32()?; // committed_leader_epoch
                }
                r.string(flex)?; // metadata
                let error_code = r.i16()?;
                r.skip_tags(flex)?;
                g.offsets.push(OffsetEntry {
                    topic: topic.clone(),
                    partition,
                    error_code,
                    offset,
                });
            }
            r.skip_tags(flex)?;
        }
        Ok(())
    };
    if version >= 8 {
        if r.array_len(flex, 4)? > 0 {
            g.group_id = string(r, flex)?;
            topics(r, g)?;
            g.error_code = r.i16()?;
        }
    } else {
        topics(r, g)?;
        if version >= 2 {
            g.error_code = r.i16()?;
        }
    }
    Ok(())
}

/// OffsetCommit: the first partition error, if any.
fn offset_commit_response(
    r: &mut Reader<'_>,
    flex: bool,
    version: i16,
    g: &mut GroupInfo,
) -> Result<(), DecodeError> {
    check_version("OffsetCommit", version, 0..=10)?;
    'topics: for _ in 0..r.array_len(flex, 2)? {
        read_topic(r, flex, version, 10)?;
        for _ in 0..r.array_len(flex, 6)? {
            r.i32()?;
            let e = r.i16()?;
            r.skip_tags(flex)?;
            if e != 0 {
                g.error_code = e;
                break 'topics;
            }
        }
        r.skip_tags(flex)?;
    }
    Ok(())
}

/// FindCoordinator: the coordinator of the (first) group asked for, and the error.
fn find_coordinator_response(
    r: &mut Reader<'_>,
    flex: bool,
    version: i16,
    g: &mut GroupInfo,
) -> Result<(), DecodeError> {
    check_version("FindCoordinator", version, 0..=6)?;
    if version >= 4 {
        let n = r.array_len(flex, 12)?;
        if n > 0 {
            g.group_id = string(r, flex)?;
            let node = r.i32()?;
            let host = string(r, flex)?.unwrap_or_default();
            let port = r.i32()?;
            g.error_code = r.i16()?;
            g.coordinator = Some((node, host, port));
        }
    } else {
        g.error_code = r.i16()?;
        if version >= 1 {
            r.string(flex)?; // error_message
        }
        let node = r.i32()?;
        let host = string(r, flex)?.unwrap_or_default();
        g.coordinator = Some((node, host, r.i32()?));
    }
    Ok(())
}
