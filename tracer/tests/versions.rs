//! Every Produce (v3-v13) and Fetch (v4-v18) version a current broker speaks: messages encoded
//! by the `kafka-protocol` crate (generated from Kafka's message definitions), records encoded
//! by its record-batch encoder with every codec, decoded by the tracer's zero-copy decoders.

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    indexmap::IndexMap,
    messages::{
        FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
        fetch_request::{FetchPartition, FetchTopic},
        fetch_response::{FetchableTopicResponse, PartitionData},
        produce_request::{PartitionProduceData, TopicProduceData},
        produce_response::{PartitionProduceResponse, TopicProduceResponse},
    },
    protocol::{Encodable, StrBytes},
    records::{
        Compression as KCompression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    },
};
use tracer::kafka::{
    DecodeOptions, Request, RequestHeader, Response, TopicRef, api, decode_request,
    decode_response, records::Compression,
};

const ID: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];
const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn encode<T: Encodable>(m: &T, version: i16) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b, version).unwrap();
    b.to_vec()
}

/// Three records at `base`, with a traceparent header, compressed with `codec`.
fn batch(base: i64, codec: KCompression) -> Bytes {
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: base + i,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(vec![b'v'; 100])),
            headers: IndexMap::from([(
                StrBytes::from_static_str("traceparent"),
                Some(Bytes::from_static(TP.as_bytes())),
            )]),
        })
        .collect();
    let mut b = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut b,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: codec,
        },
    )
    .unwrap();
    b.freeze()
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

fn header(api_key: i16, version: i16) -> RequestHeader {
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
        assert_eq!(h, vec![(&b"traceparent"[..], Some(TP.as_bytes()))]);
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
