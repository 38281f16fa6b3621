//! Every Produce (v3-v13) and Fetch (v4-v18) version a current broker speaks: messages encoded
//! by the `kafka-protocol` crate (generated from Kafka's message definitions), records encoded
//! by its record-batch encoder with every codec, decoded by the tracer's zero-copy decoders.

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
        fetch_request::{FetchPartition, FetchTopic},
        fetch_response::{FetchableTopicResponse, PartitionData},
        produce_request::{PartitionProduceData, TopicProduceData},
        produce_response::{PartitionProduceResponse, TopicProduceResponse},
    },
    protocol::{Encodable, StrBytes},
    records::Compression as KCompression,
};
use tracer::kafka::{
    DecodeOptions, Request, RequestHeader, Response, TopicRef, api, decode_request,
    decode_response, records::Compression,
};

pub(crate) const ID: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];
mod support;

pub(crate) fn encode<T: Encodable>(m: &T, version: i16) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b, version).unwrap();
    b.to_vec()
}

/// Three records at `base`, with a traceparent header, compressed with `codec`.
fn batch(base: i64, codec: KCompression) -> Bytes {
    let records = (0..3).map(|i| {
        (
            Some(Bytes::from(format!("k{i}"))),
            Some(Bytes::from(vec![b'v'; 100])),
        )
    });
    support::batch(base, codec, true, records)
}

fn codecs() -> [(KCompression, Compression); 5] {
    [
        (KCompression::None, Compression::None),
        (KCompression::Gzip, Compression::Gzip),
        (KCompression::Snappy, Compression::Snappy),
        (KCompression::Lz4, Compression::Lz4),
        (KCompression::Zstd, Compression::Zstd),
    ]
}

pub(crate) fn header(api_key: i16, version: i16) -> RequestHeader {
    RequestHeader {
        api_key,
        api_version: version,
        correlation_id: 1,
        client_id: None,
    }
}

fn expect_topic(t: &TopicRef, version: i16, by_id_from: i16) {
    if version >= by_id_from {
        assert_eq!(t, &TopicRef::Id(ID), "v{version}");
    } else {
        assert_eq!(t.to_string(), "orders", "v{version}");
    }
}

fn check_records(
    p: &tracer::kafka::PartitionRecords,
    codec: Compression,
    base: Option<i64>,
    first: i64,
) {
    assert_eq!(p.record_count(), 3);
    for (i, r) in p.records.iter().enumerate() {
        assert_eq!(p.batches[r.batch as usize].compression, codec);
        assert_eq!(p.absolute_offset(r, base), first + i as i64);
        assert_eq!(r.timestamp, 1_700_000_000_000 + i as i64);
        assert_eq!((r.key_len, r.value_len), (2, 100));
        let h: Vec<_> = p.headers_of(r).collect();
        assert_eq!(
            h,
            vec![(&b"traceparent"[..], Some(support::TRACEPARENT.as_bytes()))]
        );
    }
}

#[test]
fn produce_every_version_and_codec() {
    for version in 3..=13 {
        for (kc, codec) in codecs() {
            let req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1500)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str("orders")))
                        .with_topic_id(uuid::Uuid::from_bytes(ID))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(2)
                                .with_records(Some(batch(0, kc))),
                        ]),
                ]);
            let body = encode(&req, version);
            let Request::Produce(p) = decode_request(
                &header(api::PRODUCE, version),
                &body,
                false,
                &DecodeOptions::default(),
            )
            .unwrap() else {
                panic!("not produce")
            };
            assert_eq!(
                (p.acks, p.timeout_ms, p.partitions.len(), p.truncated),
                (-1, 1500, 1, false)
            );
            expect_topic(&p.partitions[0].topic, version, 13);
            assert_eq!(p.partitions[0].partition, 2);
            check_records(&p.partitions[0].records, codec, Some(40), 40);
        }
        let resp = ProduceResponse::default()
            .with_throttle_time_ms(7)
            .with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_topic_id(uuid::Uuid::from_bytes(ID))
                    .with_partition_responses(vec![
                        PartitionProduceResponse::default()
                            .with_index(2)
                            .with_base_offset(40)
                            .with_error_code(0),
                    ]),
            ]);
        let Response::Produce(r) = decode_response(
            api::PRODUCE,
            version,
            &encode(&resp, version),
            false,
            &DecodeOptions::default(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                r.throttle_time_ms,
                r.partitions.len(),
                r.partitions[0].base_offset,
                r.partitions[0].partition
            ),
            (7, 1, 40, 2)
        );
        expect_topic(&r.partitions[0].topic, version, 13);
    }
}

#[test]
fn fetch_every_version_and_codec() {
    for version in 4..=18 {
        let req = FetchRequest::default()
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_topic_id(uuid::Uuid::from_bytes(ID))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(2)
                            .with_fetch_offset(40)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]);
        let Request::Fetch(f) = decode_request(
            &header(api::FETCH, version),
            &encode(&req, version),
            false,
            &DecodeOptions::default(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                f.max_wait_ms,
                f.partitions.len(),
                f.partitions[0].fetch_offset,
                f.partitions[0].partition
            ),
            (500, 1, 40, 2),
            "v{version}"
        );
        expect_topic(&f.partitions[0].topic, version, 13);
        for (kc, codec) in codecs() {
            let resp = FetchResponse::default().with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_topic_id(uuid::Uuid::from_bytes(ID))
                    .with_partitions(vec![
                        PartitionData::default()
                            .with_partition_index(2)
                            .with_high_watermark(43)
                            .with_records(Some(batch(40, kc))),
                    ]),
            ]);
            let body = encode(&resp, version);
            let Response::Fetch(f) =
                decode_response(api::FETCH, version, &body, false, &DecodeOptions::default())
                    .unwrap()
            else {
                panic!()
            };
            assert_eq!(
                (
                    f.partitions.len(),
                    f.partitions[0].high_watermark,
                    f.truncated
                ),
                (1, 43, false),
                "v{version}"
            );
            expect_topic(&f.partitions[0].topic, version, 13);
            check_records(&f.partitions[0].records, codec, None, 40);
            // The same response cut anywhere inside its records still decodes, as a prefix.
            for cut in [body.len() - 1, body.len() - 50, body.len() - 120] {
                let Response::Fetch(t) = decode_response(
                    api::FETCH,
                    version,
                    &body[..cut],
                    true,
                    &DecodeOptions::default(),
                )
                .unwrap() else {
                    panic!()
                };
                assert!(
                    t.truncated && t.partitions[0].records.record_count() <= 3,
                    "v{version} cut {cut}"
                );
            }
        }
    }
}

mod admin {
    use kafka_protocol::messages::{
        ApiVersionsResponse, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
        HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, ListOffsetsResponse,
        MetadataResponse, OffsetCommitRequest, OffsetFetchResponse, SyncGroupResponse, TopicName,
        api_versions_response::ApiVersion,
        find_coordinator_response::Coordinator,
        list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
        metadata_response::{
            MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
        },
        offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
        offset_fetch_response::{
            OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
            OffsetFetchResponseTopic, OffsetFetchResponseTopics,
        },
    };
    use kafka_protocol::protocol::StrBytes;
    use tracer::kafka::{
        DecodeOptions, Request, Response, TopicRef, api, decode_request, decode_response,
    };

    use super::{ID, encode, header};

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_string())
    }

    /// Versions of a message type both sides of a current broker speak.
    fn versions<T: kafka_protocol::protocol::Message>() -> std::ops::RangeInclusive<i16> {
        T::VERSIONS.min..=T::VERSIONS.max
    }

    fn response(key: i16, version: i16, body: &[u8]) -> Response {
        decode_response(key, version, body, false, &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{key} v{version}: {e}"))
    }

    fn group_request(key: i16, version: i16, body: &[u8]) -> tracer::kafka::GroupInfo {
        match decode_request(
            &header(key, version),
            body,
            false,
            &DecodeOptions::default(),
        ) {
            Ok(Request::Group(g)) => g,
            other => panic!("{key} v{version}: {other:?}"),
        }
    }

    fn group_response(key: i16, version: i16, body: &[u8]) -> tracer::kafka::GroupInfo {
        match response(key, version, body) {
            Response::Group(g) => g,
            other => panic!("{key} v{version}: {other:?}"),
        }
    }

    #[test]
    fn metadata_every_version() {
        for v in versions::<MetadataResponse>() {
            let m = MetadataResponse::default()
                .with_cluster_id(Some(s("cluster-1")))
                .with_controller_id(BrokerId(1))
                .with_brokers(vec![
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host(s("10.0.0.1"))
                        .with_port(9092),
                ])
                .with_topics(vec![
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(s("orders"))))
                        .with_topic_id(uuid::Uuid::from_bytes(ID))
                        .with_partitions(vec![
                            MetadataResponsePartition::default()
                                .with_partition_index(3)
                                .with_leader_id(BrokerId(1))
                                .with_replica_nodes(vec![BrokerId(1), BrokerId(2)]),
                        ]),
                ]);
            let Response::Metadata(d) = response(api::METADATA, v, &encode(&m, v)) else {
                panic!()
            };
            assert_eq!(d.brokers.len(), 1, "v{v}");
            assert_eq!(
                (d.brokers[0].host.as_str(), d.brokers[0].port),
                ("10.0.0.1", 9092)
            );
            assert_eq!(
                d.cluster_id.as_deref(),
                (v >= 2).then_some("cluster-1"),
                "v{v}"
            );
            assert_eq!(d.topics[0].name.as_deref(), Some("orders"));
            assert_eq!(
                d.topics[0].topic_id,
                if v >= 10 { ID } else { [0; 16] },
                "v{v}"
            );
            assert_eq!(d.topics[0].partitions, vec![(3, 1)], "v{v}");
        }
    }

    #[test]
    fn api_versions_every_version() {
        for v in versions::<ApiVersionsResponse>() {
            let m = ApiVersionsResponse::default().with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(0)
                    .with_min_version(3)
                    .with_max_version(13),
            ]);
            let Response::ApiVersions(d) = response(api::API_VERSIONS, v, &encode(&m, v)) else {
                panic!()
            };
            assert_eq!(d.apis, vec![(0, 3, 13)], "v{v}");
        }
    }

    #[test]
    fn list_offsets_every_version() {
        for v in versions::<ListOffsetsResponse>() {
            let m = ListOffsetsResponse::default().with_topics(vec![
                ListOffsetsTopicResponse::default()
                    .with_name(TopicName(s("orders")))
                    .with_partitions(vec![
                        ListOffsetsPartitionResponse::default()
                            .with_partition_index(2)
                            .with_offset(77),
                    ]),
            ]);
            let Response::ListOffsets(d) = response(api::LIST_OFFSETS, v, &encode(&m, v)) else {
                panic!()
            };
            assert_eq!(
                (d[0].topic.to_string().as_str(), d[0].partition, d[0].offset),
                ("orders", 2, 77),
                "v{v}"
            );
        }
    }

    #[test]
    fn group_apis_every_version() {
        for v in versions::<FindCoordinatorRequest>() {
            let req = if v >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g1")])
            } else {
                FindCoordinatorRequest::default().with_key(s("g1"))
            };
            assert_eq!(
                group_request(api::FIND_COORDINATOR, v, &encode(&req, v))
                    .group_id
                    .as_deref(),
                Some("g1"),
                "v{v}"
            );
            let resp = if v >= 4 {
                FindCoordinatorResponse::default().with_coordinators(vec![
                    Coordinator::default()
                        .with_key(s("g1"))
                        .with_node_id(BrokerId(4))
                        .with_host(s("b4"))
                        .with_port(9094),
                ])
            } else {
                FindCoordinatorResponse::default()
                    .with_node_id(BrokerId(4))
                    .with_host(s("b4"))
                    .with_port(9094)
            };
            let g = group_response(api::FIND_COORDINATOR, v, &encode(&resp, v));
            assert_eq!(g.coordinator, Some((4, "b4".to_string(), 9094)), "v{v}");
        }
        for v in versions::<JoinGroupRequest>() {
            let req = JoinGroupRequest::default()
                .with_group_id(GroupId(s("g1")))
                .with_member_id(s("m1"));
            let g = group_request(api::JOIN_GROUP, v, &encode(&req, v));
            assert_eq!(
                (g.group_id.as_deref(), g.member_id.as_deref()),
                (Some("g1"), Some("m1")),
                "v{v}"
            );
            let resp = JoinGroupResponse::default()
                .with_generation_id(5)
                .with_member_id(s("m1"))
                .with_leader(s("m1"))
                .with_error_code(0);
            let g = group_response(api::JOIN_GROUP, v, &encode(&resp, v));
            assert_eq!(
                (g.generation, g.member_id.as_deref()),
                (Some(5), Some("m1")),
                "v{v}"
            );
        }
        for v in versions::<HeartbeatRequest>() {
            let req = HeartbeatRequest::default()
                .with_group_id(GroupId(s("g1")))
                .with_generation_id(5)
                .with_member_id(s("m1"));
            let g = group_request(api::HEARTBEAT, v, &encode(&req, v));
            assert_eq!(
                (g.group_id.as_deref(), g.generation, g.member_id.as_deref()),
                (Some("g1"), Some(5), Some("m1")),
                "v{v}"
            );
        }
        for v in versions::<SyncGroupResponse>() {
            let resp = SyncGroupResponse::default().with_error_code(27);
            assert_eq!(
                group_response(api::SYNC_GROUP, v, &encode(&resp, v)).error_code,
                27,
                "v{v}"
            );
        }
        for v in versions::<OffsetCommitRequest>() {
            let t = OffsetCommitRequestTopic::default().with_partitions(vec![
                OffsetCommitRequestPartition::default()
                    .with_partition_index(2)
                    .with_committed_offset(41),
            ]);
            let t = if v >= 10 {
                t.with_topic_id(uuid::Uuid::from_bytes(ID))
            } else {
                t.with_name(TopicName(s("orders")))
            };
            let req = OffsetCommitRequest::default()
                .with_group_id(GroupId(s("g1")))
                .with_topics(vec![t]);
            let g = group_request(api::OFFSET_COMMIT, v, &encode(&req, v));
            assert_eq!(g.group_id.as_deref(), Some("g1"));
            let topic = if v >= 10 {
                TopicRef::Id(ID)
            } else {
                TopicRef::Name("orders".into())
            };
            assert_eq!(
                g.offsets,
                vec![tracer::kafka::OffsetEntry {
                    topic,
                    partition: 2,
                    error_code: 0,
                    offset: 41
                }],
                "v{v}"
            );
        }
        for v in versions::<OffsetFetchResponse>() {
            let resp = if v >= 8 {
                let t = OffsetFetchResponseTopics::default().with_partitions(vec![
                    OffsetFetchResponsePartitions::default()
                        .with_partition_index(2)
                        .with_committed_offset(41),
                ]);
                let t = if v >= 10 {
                    t.with_topic_id(uuid::Uuid::from_bytes(ID))
                } else {
                    t.with_name(TopicName(s("orders")))
                };
                OffsetFetchResponse::default().with_groups(vec![
                    OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(s("g1")))
                        .with_topics(vec![t]),
                ])
            } else {
                OffsetFetchResponse::default().with_topics(vec![
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s("orders")))
                        .with_partitions(vec![
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(2)
                                .with_committed_offset(41),
                        ]),
                ])
            };
            let g = group_response(api::OFFSET_FETCH, v, &encode(&resp, v));
            assert_eq!(g.offsets.len(), 1, "v{v}");
            assert_eq!(
                (g.offsets[0].partition, g.offsets[0].offset),
                (2, 41),
                "v{v}"
            );
            if v >= 8 {
                assert_eq!(g.group_id.as_deref(), Some("g1"));
            }
        }
    }
}
