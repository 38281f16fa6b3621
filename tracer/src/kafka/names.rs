//! Strings from the wire that the tracer keeps (topic names, client, group, member and
//! transactional ids, hosts): checked and bounded before they are stored, so no peer can make
//! the tracer hold megabytes per string, or put control characters and arbitrary bytes into
//! span names, attributes, metric labels or logs. A string that breaks the rule is replaced by
//! [`INVALID`] and counted ([`refused`]).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

/// What stands in for a string that broke its rule.
pub const INVALID: &str = "<invalid>";

/// Kafka's own limit on topic names (`Topic.MAX_NAME_LENGTH`), of `[a-zA-Z0-9._-]`.
pub const MAX_TOPIC: usize = 249;

/// Longest id kept (client, group, member, transactional ids, hosts, cluster ids): Kafka sets no
/// limit, real ids are tens of characters (a member id is a client id plus a UUID).
pub const MAX_ID: usize = 255;

static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Strings replaced by [`INVALID`] since the start.
pub fn refused() -> u64 {
    REFUSED.load(Relaxed)
}

fn invalid() -> &'static str {
    REFUSED.fetch_add(1, Relaxed);
    INVALID
}

/// A topic name, if it follows Kafka's rule.
pub fn topic(b: &[u8]) -> Arc<str> {
    let legal = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    match std::str::from_utf8(b) {
        Ok(s) if !s.is_empty() && s.len() <= MAX_TOPIC && b.iter().all(legal) => s.into(),
        _ => invalid().into(),
    }
}

/// An id: UTF-8 text of at most [`MAX_ID`] bytes without control characters.
pub fn id(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.len() <= MAX_ID && !s.chars().any(char::is_control) => s.to_owned(),
        _ => invalid().to_owned(),
    }
}

/// A SASL mechanism name (RFC 4422: at most 20 of `[A-Z0-9_-]`).
pub fn mechanism(b: &[u8]) -> String {
    let legal = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_');
    if !b.is_empty() && b.len() <= 20 && b.iter().all(legal) {
        String::from_utf8_lossy(b).into_owned()
    } else {
        invalid().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        assert_eq!(&*topic(b"orders.v2_eu-1"), "orders.v2_eu-1");
        let before = refused();
        for bad in [
            &b""[..],
            b"has space",
            b"slash/",
            b"\xff\xfe",
            "caf\u{e9}".as_bytes(),
            &[b'a'; MAX_TOPIC + 1],
        ] {
            assert_eq!(&*topic(bad), INVALID, "{bad:?}");
        }
        assert_eq!(&*topic(&[b'a'; MAX_TOPIC]), "a".repeat(MAX_TOPIC));
        assert!(refused() >= before + 6);
    }

    #[test]
    fn ids_are_bounded_text() {
        assert_eq!(id(b"consumer-orders-1"), "consumer-orders-1");
        assert_eq!(id("Zürich-app".as_bytes()), "Zürich-app");
        assert_eq!(id(b""), "");
        assert_eq!(id(&[b'x'; MAX_ID + 1]), INVALID);
        assert_eq!(id(b"line\nbreak"), INVALID);
        assert_eq!(id(b"\x1b[31mred"), INVALID);
        assert_eq!(id(b"\xc3"), INVALID);
    }
}
