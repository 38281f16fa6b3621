//! Recognising Kafka on a connection from its first bytes.
//!
//! Decides from a stream's first bytes whether a connection on a port outside the
//! configured list speaks Kafka (the capture's sniff verdict).

/// Largest request a broker accepts by default (`socket.request.max.bytes`, 100 MiB).
pub const MAX_REQUEST_SIZE: i32 = 100 * 1024 * 1024;
/// Highest API key the tracer considers plausible (Kafka 4.x defines keys up to the 80s).
const MAX_API_KEY: i16 = 95;
/// Highest API version considered plausible (Fetch, the highest, is at 18 in Kafka 4.x).
const MAX_API_VERSION: i16 = 25;
/// Versions past the newest that the `kafka-protocol` tables know, still taken as Kafka: clients
/// newer than the tables send them (the Java client 4.4 sends ApiVersions v5, OffsetCommit v10,
/// ShareFetch v2), and each Kafka release adds at most a version or two per API.
const NEWER_VERSIONS: i16 = 3;
/// Size prefix + api key + api version + correlation id + client id length.
const HEADER_PREFIX: usize = 4 + 2 + 2 + 4 + 2;

/// Whether `bytes`, the first bytes of one direction of a connection, start with a Kafka
/// request header: `None` until enough bytes are there to tell.
pub fn looks_like_request(bytes: &[u8]) -> Option<bool> {
    let be16 = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    };
    let be32 = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Each field is judged as soon as it is there, so an HTTP or TLS stream is rejected by its
    // first four bytes (an absurd size) without waiting for more.
    let size = be32(0)?;
    if !(HEADER_PREFIX as i32 - 4..=MAX_REQUEST_SIZE).contains(&size) {
        return Some(false);
    }
    let api_key = be16(4)?;
    if !(0..=MAX_API_KEY).contains(&api_key) {
        return Some(false);
    }
    let api_version = be16(6)?;
    if !(0..=MAX_API_VERSION).contains(&api_version) {
        return Some(false);
    }
    // Keys and versions the protocol defines, from Kafka's message definitions (keys unknown to
    // them pass on the ranges above, and versions a little past their newest, so newer clients
    // are still recognised).
    if let Ok(key) = kafka_protocol::messages::ApiKey::try_from(api_key) {
        let v = key.valid_versions();
        if api_version < v.min || api_version > v.max.saturating_add(NEWER_VERSIONS) {
            return Some(false);
        }
    }
    if be32(8)? < 0 {
        return Some(false); // correlation ids count up from 0
    }
    let client_id_len = be16(12)?;
    if client_id_len < -1 || client_id_len as i32 > size - (HEADER_PREFIX as i32 - 4) {
        return Some(false);
    }
    // Client ids are printable text; check what is already here.
    let id = bytes
        .get(HEADER_PREFIX..)
        .unwrap_or_default()
        .iter()
        .take(client_id_len.max(0) as usize);
    Some(id.copied().all(|b| b.is_ascii_graphic() || b == b' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ApiVersions v3 request laid out by hand from the Kafka protocol spec, as librdkafka
    /// 2.16 sends it on connect: size 37, key 18, version 3, correlation id 1, client id
    /// "rdkafka", then the flexible header's empty tag buffer and the body (client software
    /// name and version as compact strings, empty tag buffer).
    const API_VERSIONS: &[u8] =
        b"\x00\x00\x00\x25\x00\x12\x00\x03\x00\x00\x00\x01\x00\x07rdkafka\x00\x0blibrdkafka\x072.16.0\x00";

    #[test]
    fn accepts_a_request_header() {
        assert_eq!(API_VERSIONS.len(), 4 + 37);
        assert_eq!(looks_like_request(API_VERSIONS), Some(true));
        // Decidable from the fixed prefix alone.
        assert_eq!(looks_like_request(&API_VERSIONS[..14]), Some(true));
        assert_eq!(looks_like_request(&API_VERSIONS[..13]), None);
    }

    #[test]
    fn accepts_versions_newer_than_the_tables_within_reach() {
        // The Java client 4.4 opens with ApiVersions v5; the kafka-protocol tables stop at v4.
        let mut v5 = API_VERSIONS.to_vec();
        v5[6..8].copy_from_slice(&5i16.to_be_bytes());
        assert_eq!(looks_like_request(&v5), Some(true));
        let mut far = API_VERSIONS.to_vec();
        far[6..8].copy_from_slice(&(4 + NEWER_VERSIONS + 1).to_be_bytes());
        assert_eq!(looks_like_request(&far), Some(false));
    }

    #[test]
    fn rejects_other_protocols_early() {
        assert_eq!(looks_like_request(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(looks_like_request(b"GET "), Some(false));
        assert_eq!(looks_like_request(b"\x16\x03\x01\x02\x00\x01"), Some(false)); // TLS hello
        assert_eq!(looks_like_request(b"SSH-2.0-OpenSSH_9.2"), Some(false));
        assert_eq!(looks_like_request(b"\x00\x00\x00\x10\x7f\x00"), Some(false)); // api key 32512
        assert_eq!(looks_like_request(b""), None);
    }

    #[test]
    fn rejects_binary_client_id_and_bad_lengths() {
        let mut r = API_VERSIONS.to_vec();
        r[15] = 0x01;
        assert_eq!(looks_like_request(&r), Some(false));
        let mut r = API_VERSIONS.to_vec();
        r[12..14].copy_from_slice(&500i16.to_be_bytes());
        assert_eq!(looks_like_request(&r), Some(false));
        let mut r = API_VERSIONS.to_vec();
        r[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(looks_like_request(&r), Some(false));
    }

    #[test]
    fn never_panics_on_any_prefix_of_noise() {
        let mut x = 0x1234_5678u32;
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = looks_like_request(&bytes);
        }
    }
}
