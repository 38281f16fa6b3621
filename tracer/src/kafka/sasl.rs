//! SASL authentication: `SaslHandshake` (17, v0-1) names the mechanism, `SaslAuthenticate`
//! (36, v0-2, flexible from v2) carries the credentials (PLAIN passwords, SCRAM proofs, OAuth
//! tokens) and says whether the broker accepted them. Only the mechanism and the error code
//! are read: the authentication bytes of either direction are never decoded, kept or logged
//! (after a `SaslHandshake` v0, raw tokens follow outside Kafka's framing; `Session` skips
//! those unread).

use super::{DecodeError, check_version, names, wire::Reader};

/// SaslHandshake v0 is followed by raw SASL tokens, v1 by `SaslAuthenticate` requests.
const HANDSHAKE_VERSIONS: std::ops::RangeInclusive<i16> = 0..=1;
const AUTHENTICATE_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

/// The mechanism a SaslHandshake request asks for.
pub fn decode_handshake_request(body: &[u8], version: i16) -> Result<String, DecodeError> {
    check_version("SaslHandshake", version, HANDSHAKE_VERSIONS)?;
    let mut r = Reader::new(body);
    Ok(names::mechanism(r.string(false)?.unwrap_or_default()))
}

/// A SaslHandshake response's error code (the mechanisms it lists are not needed).
pub fn decode_handshake_response(body: &[u8], version: i16) -> Result<i16, DecodeError> {
    check_version("SaslHandshake", version, HANDSHAKE_VERSIONS)?;
    Ok(Reader::new(body).i16()?)
}

/// A SaslAuthenticate response's error code: its error message and the broker's
/// authentication bytes (a SCRAM server signature, say) are not read.
pub fn decode_authenticate_response(body: &[u8], version: i16) -> Result<i16, DecodeError> {
    check_version("SaslAuthenticate", version, AUTHENTICATE_VERSIONS)?;
    Ok(Reader::new(body).i16()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_mechanism_and_the_outcome_are_read() {
        // SaslHandshake v1 request: mechanism "SCRAM-SHA-512".
        let mut req = (13i16).to_be_bytes().to_vec();
        req.extend_from_slice(b"SCRAM-SHA-512");
        assert_eq!(decode_handshake_request(&req, 1).unwrap(), "SCRAM-SHA-512");
        let mut bad = (4i16).to_be_bytes().to_vec();
        bad.extend_from_slice(b"a b\n");
        assert_eq!(decode_handshake_request(&bad, 1).unwrap(), names::INVALID);
        // SaslAuthenticate v2 response: error 58 (SASL_AUTHENTICATION_FAILED), a message, bytes.
        let mut resp = 58i16.to_be_bytes().to_vec();
        resp.extend_from_slice(b"\x10Authentication failed\x05scram");
        assert_eq!(decode_authenticate_response(&resp, 2).unwrap(), 58);
        assert!(decode_authenticate_response(&resp, 3).is_err());
        assert_eq!(
            decode_handshake_response(&0i16.to_be_bytes(), 0).unwrap(),
            0
        );
    }
}
