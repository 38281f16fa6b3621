//! Metadata, ApiVersions, ListOffsets and the consumer-group APIs, through the `kafka-protocol`
//! crate: these are rare next to Produce and Fetch, so a copy of the body costs nothing that
//! matters, and the crate's generated decoders cover every version.

use bytes::Bytes;
use kafka_protocol::{
    messages::{
        ApiVersionsResponse as KApiVersions, FindCoordinatorRequest, FindCoordinatorResponse,
        HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
        LeaveGroupRequest, LeaveGroupResponse, ListOffsetsResponse, MetadataResponse as KMetadata,
        OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
        SyncGroupRequest, SyncGroupResponse,
    },
    protocol::Decodable,
};

use super::{DecodeError, TopicRef, api};

fn decode<T: Decodable>(body: &[u8], version: i16) -> Result<T, DecodeError> {
    T::decode(&mut Bytes::copy_from_slice(body), version)
        .map_err(|e| DecodeError::Protocol(format!("{e:#}")))
}

fn text(s: &str) -> String {
    s.to_string()
}

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

pub fn decode_metadata(body: &[u8], version: i16) -> Result<MetadataResponse, DecodeError> {
    let m: KMetadata = decode(body, version)?;
    Ok(MetadataResponse {
        cluster_id: m.cluster_id.as_deref().map(text),
        controller_id: *m.controller_id,
        brokers: m
            .brokers
            .iter()
            .map(|b| Broker {
                node_id: *b.node_id,
                host: text(&b.host),
                port: b.port,
                rack: b.rack.as_deref().map(text),
            })
            .collect(),
        topics: m
            .topics
            .iter()
            .map(|t| MetadataTopic {
                name: t.name.as_deref().map(|n| text(n)),
                topic_id: t.topic_id.into_bytes(),
                error_code: t.error_code,
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, *p.leader_id))
                    .collect(),
            })
            .collect(),
    })
}

pub fn decode_api_versions(body: &[u8], version: i16) -> Result<ApiVersionsResponse, DecodeError> {
    let a: KApiVersions = decode(body, version)?;
    Ok(ApiVersionsResponse {
        error_code: a.error_code,
        apis: a
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect(),
    })
}

pub fn decode_list_offsets(body: &[u8], version: i16) -> Result<Vec<OffsetEntry>, DecodeError> {
    let l: ListOffsetsResponse = decode(body, version)?;
    Ok(l.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| OffsetEntry {
                topic: TopicRef::name(t.name.as_bytes()),
                partition: p.partition_index,
                error_code: p.error_code,
                offset: p.offset,
            })
        })
        .collect())
}

pub fn decode_group_request(
    api_key: i16,
    version: i16,
    body: &[u8],
) -> Result<GroupInfo, DecodeError> {
    let mut g = GroupInfo {
        api_key,
        ..GroupInfo::default()
    };
    match api_key {
        api::FIND_COORDINATOR => {
            let r: FindCoordinatorRequest = decode(body, version)?;
            // key_type 0 is a group (1 a transactional id).
            if r.key_type == 0 {
                g.group_id = if version >= 4 {
                    r.coordinator_keys.first().map(|k| text(k))
                } else {
                    Some(text(&r.key))
                };
            }
        }
        api::JOIN_GROUP => {
            let r: JoinGroupRequest = decode(body, version)?;
            g.group_id = Some(text(&r.group_id));
            g.member_id = Some(text(&r.member_id)).filter(|m| !m.is_empty());
        }
        api::SYNC_GROUP => {
            let r: SyncGroupRequest = decode(body, version)?;
            g.group_id = Some(text(&r.group_id));
            g.member_id = Some(text(&r.member_id));
            g.generation = Some(r.generation_id);
        }
        api::HEARTBEAT => {
            let r: HeartbeatRequest = decode(body, version)?;
            g.group_id = Some(text(&r.group_id));
            g.member_id = Some(text(&r.member_id));
            g.generation = Some(r.generation_id);
        }
        api::LEAVE_GROUP => {
            let r: LeaveGroupRequest = decode(body, version)?;
            g.group_id = Some(text(&r.group_id));
        }
        api::OFFSET_COMMIT => {
            let r: OffsetCommitRequest = decode(body, version)?;
            g.group_id = Some(text(&r.group_id));
            g.member_id = Some(text(&r.member_id));
            g.generation = Some(r.generation_id_or_member_epoch);
            for t in &r.topics {
                let topic = if version >= 10 {
                    TopicRef::Id(t.topic_id.into_bytes())
                } else {
                    TopicRef::name(t.name.as_bytes())
                };
                for p in &t.partitions {
                    g.offsets.push(OffsetEntry {
                        topic: topic.clone(),
                        partition: p.partition_index,
                        error_code: 0,
                        offset: p.committed_offset,
                    });
                }
            }
        }
        api::OFFSET_FETCH => {
            let r: OffsetFetchRequest = decode(body, version)?;
            g.group_id = if version >= 8 {
                r.groups.first().map(|x| text(&x.group_id))
            } else {
                Some(text(&r.group_id))
            };
        }
        _ => {}
    }
    Ok(g)
}

pub fn decode_group_response(
    api_key: i16,
    version: i16,
    body: &[u8],
) -> Result<GroupInfo, DecodeError> {
    let mut g = GroupInfo {
        api_key,
        ..GroupInfo::default()
    };
    match api_key {
        api::FIND_COORDINATOR => {
            let r: FindCoordinatorResponse = decode(body, version)?;
            if version >= 4 {
                if let Some(c) = r.coordinators.first() {
                    g.error_code = c.error_code;
                    g.group_id = Some(text(&c.key));
                    g.coordinator = Some((*c.node_id, text(&c.host), c.port));
                }
            } else {
                g.error_code = r.error_code;
                g.coordinator = Some((*r.node_id, text(&r.host), r.port));
            }
        }
        api::JOIN_GROUP => {
            let r: JoinGroupResponse = decode(body, version)?;
            g.error_code = r.error_code;
            g.member_id = Some(text(&r.member_id));
            g.generation = Some(r.generation_id);
        }
        api::SYNC_GROUP => g.error_code = decode::<SyncGroupResponse>(body, version)?.error_code,
        api::HEARTBEAT => g.error_code = decode::<HeartbeatResponse>(body, version)?.error_code,
        api::LEAVE_GROUP => g.error_code = decode::<LeaveGroupResponse>(body, version)?.error_code,
        api::OFFSET_COMMIT => {
            let r: OffsetCommitResponse = decode(body, version)?;
            g.error_code = r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .find(|&e| e != 0)
                .unwrap_or(0);
        }
        api::OFFSET_FETCH => {
            let r: OffsetFetchResponse = decode(body, version)?;
            if version >= 8 {
                if let Some(grp) = r.groups.first() {
                    g.group_id = Some(text(&grp.group_id));
                    g.error_code = grp.error_code;
                    for t in &grp.topics {
                        let topic = if version >= 10 {
                            TopicRef::Id(t.topic_id.into_bytes())
                        } else {
                            TopicRef::name(t.name.as_bytes())
                        };
                        for p in &t.partitions {
                            g.offsets.push(OffsetEntry {
                                topic: topic.clone(),
                                partition: p.partition_index,
                                error_code: p.error_code,
                                offset: p.committed_offset,
                            });
                        }
                    }
                }
            } else {
                g.error_code = r.error_code;
                for t in &r.topics {
                    for p in &t.partitions {
                        g.offsets.push(OffsetEntry {
                            topic: TopicRef::name(t.name.as_bytes()),
                            partition: p.partition_index,
                            error_code: p.error_code,
                            offset: p.committed_offset,
                        });
                    }
                }
            }
        }
        _ => {}
    }
    Ok(g)
}
