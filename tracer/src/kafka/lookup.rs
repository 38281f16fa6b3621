//! Asks a broker for its topic ids, when the wire named a topic only by id (Produce and Fetch
//! v13+) and no Metadata response carrying it has been seen: a client that started before the
//! tracer would otherwise stay unnamed until its next metadata refresh (5 minutes by default).
//!
//! One short-lived connection per lookup: ApiVersions to pick a Metadata version both sides
//! speak, then Metadata for all topics. The tracer's own process is excluded from capture, so
//! these requests are never traced. Brokers that need TLS or SASL refuse it; that is counted.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use kafka_protocol::{
    messages::{ApiVersionsRequest, MetadataRequest, RequestHeader as KHeader},
    protocol::{Encodable, StrBytes},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{MetadataResponse, admin, api, parse_response_header};

/// How long a lookup may take; exchanges waiting for it wait a little longer at most.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response read (Metadata for a very large cluster is a few MiB).
const MAX_RESPONSE: usize = 32 << 20;
/// Highest Metadata version asked for (v10+ carries topic ids).
const METADATA_VERSION: i16 = 12;

async fn call(
    stream: &mut TcpStream,
    api_key: i16,
    version: i16,
    correlation_id: i32,
    body: &impl Encodable,
) -> anyhow::Result<Vec<u8>> {
    let mut frame = BytesMut::new();
    let header = KHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("kafka-tracer")));
    let header_version = if super::flexible_request(api_key, version) {
        2
    } else {
        1
    };
    header
        .encode(&mut frame, header_version)
        .context("encoding request header")?;
    body.encode(&mut frame, version)
        .context("encoding request")?;
    stream
        .write_all(&(frame.len() as i32).to_be_bytes())
        .await?;
    stream.write_all(&frame).await?;
    let size = stream.read_i32().await.context("reading response size")?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| (4..=MAX_RESPONSE).contains(&s))
        .context("implausible response size")?;
    let mut body = vec![0; size];
    stream
        .read_exact(&mut body)
        .await
        .context("reading response")?;
    let (h, at) = parse_response_header(&body, api_key, version)?;
    if h.correlation_id != correlation_id {
        bail!("response to another request ({})", h.correlation_id);
    }
    Ok(body.split_off(at))
}

/// The broker's metadata for all topics.
pub async fn metadata(broker: SocketAddr, timeout: Duration) -> anyhow::Result<MetadataResponse> {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(broker)
            .await
            .with_context(|| format!("connecting to {broker}"))?;
        let versions = admin::decode_api_versions(
            &call(
                &mut s,
                api::API_VERSIONS,
                0,
                1,
                &ApiVersionsRequest::default(),
            )
            .await?,
            0,
        )?;
        let max = versions
            .apis
            .iter()
            .find(|(k, _, _)| *k == api::METADATA)
            .map(|&(_, _, max)| max)
            .context("broker does not offer Metadata")?;
        let version = max.min(METADATA_VERSION);
        if version < 10 {
            bail!("broker speaks Metadata up to v{max}, which has no topic ids");
        }
        // topics: null asks for every topic.
        let request = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        let body = call(&mut s, api::METADATA, version, 2, &request).await?;
        Ok(admin::decode_metadata(&body, version)?)
    })
    .await
    .with_context(|| format!("metadata lookup at {broker} timed out"))?
}
