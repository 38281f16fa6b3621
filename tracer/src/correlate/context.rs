//! Trace context carried in record headers: W3C Trace Context (`traceparent`, `tracestate`)
//! and Zipkin B3 (the single `b3` header and the multi-header `X-B3-*` form).

/// A span context read from a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `Some(true/false)` when the producer said whether it sampled; `None` when B3 deferred.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on as is (at most 512 bytes, per the specification).
    pub tracestate: Option<String>,
}

const MAX_TRACESTATE: usize = 512;

fn hex_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// A 64- or 128-bit hex trace id (B3 allows both; a 64-bit one is left-padded with zeros).
fn trace_id(s: &[u8]) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    match s.len() {
        32 => hex_into(s, &mut id)?,
        16 => hex_into(s, &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(id)
}

fn span_id(s: &[u8]) -> Option<[u8; 8]> {
    let mut id = [0u8; 8];
    hex_into(s, &mut id)?;
    (id != [0; 8]).then_some(id)
}

/// `traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; later versions may append
/// fields, which are ignored as the specification asks; version ff is invalid.
fn traceparent(v: &[u8]) -> Option<TraceContext> {
    let mut parts = v.split(|&b| b == b'-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let mut ver = [0u8; 1];
    hex_into(version, &mut ver)?;
    if ver[0] == 0xff || (ver[0] == 0 && parts.next().is_some()) || trace.len() != 32 {
        return None;
    }
    let mut f = [0u8; 1];
    hex_into(flags, &mut f)?;
    Some(TraceContext {
        trace_id: trace_id(trace)?,
        span_id: span_id(span)?,
        sampled: Some(f[0] & 1 == 1),
        tracestate: None,
    })
}

/// `b3: <trace id>-<span id>[-<sampling>[-<parent span id>]]`, or just `b3: <sampling>` (no
/// context).
fn b3_single(v: &[u8]) -> Option<TraceContext> {
    let mut parts = v.split(|&b| b == b'-');
    let (trace, span) = (parts.next()?, parts.next()?);
    Some(TraceContext {
        trace_id: trace_id(trace)?,
        span_id: span_id(span)?,
        sampled: parts.next().and_then(b3_sampled),
        tracestate: None,
    })
}

/// B3 sampling state: `1`/`d` (debug) sample, `0` do not; anything else defers.
fn b3_sampled(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// The trace context of a record, from its headers: W3C first (with its tracestate), then B3
/// single, then B3 multi. Header names are compared case-insensitively; invalid values are
/// ignored, as the specifications ask.
pub fn extract<'a>(
    headers: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Option<TraceContext> {
    let (mut w3c, mut state, mut b3) = (None, None, None);
    let (mut x_trace, mut x_span, mut x_sampled, mut x_debug) = (None, None, None, false);
    for (name, value) in headers {
        let Some(v) = value else { continue };
        let v = v.trim_ascii();
        if name.eq_ignore_ascii_case(b"traceparent") {
            w3c = w3c.or_else(|| traceparent(v));
        } else if name.eq_ignore_ascii_case(b"tracestate") {
            if v.len() <= MAX_TRACESTATE {
                state = std::str::from_utf8(v).ok().map(str::to_string);
            }
        } else if name.eq_ignore_ascii_case(b"b3") {
            b3 = b3.or_else(|| b3_single(v));
        } else if name.eq_ignore_ascii_case(b"x-b3-traceid") {
            x_trace = trace_id(v);
        } else if name.eq_ignore_ascii_case(b"x-b3-spanid") {
            x_span = span_id(v);
        } else if name.eq_ignore_ascii_case(b"x-b3-sampled") {
            x_sampled = b3_sampled(v);
        } else if name.eq_ignore_ascii_case(b"x-b3-flags") {
            x_debug = v == b"1";
        }
    }
    if let Some(mut c) = w3c {
        c.tracestate = state.filter(|s| !s.is_empty());
        return Some(c);
    }
    b3.or_else(|| {
        Some(TraceContext {
            trace_id: x_trace?,
            span_id: x_span?,
            sampled: if x_debug { Some(true) } else { x_sampled },
            tracestate: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], Option<&'a [u8]>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
            .collect()
    }

    const TRACE: [u8; 16] = [
        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31,
        0x9c,
    ];
    const SPAN: [u8; 8] = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];

    #[test]
    fn w3c_with_tracestate() {
        let c = extract(h(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]))
        .unwrap();
        assert_eq!(
            (c.trace_id, c.span_id, c.sampled, c.tracestate.as_deref()),
            (TRACE, SPAN, Some(true), Some("congo=t61rcWkgMzE"))
        );
        let c = extract(h(&[(
            "TraceParent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )]))
        .unwrap();
        assert_eq!(c.sampled, Some(false));
        // A future version with more fields is read; version 00 with more fields is not.
        assert!(
            extract(h(&[(
                "traceparent",
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what"
            )]))
            .is_some()
        );
        assert!(
            extract(h(&[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x"
            )]))
            .is_none()
        );
    }

    #[test]
    fn invalid_w3c_is_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "",
        ] {
            assert_eq!(extract(h(&[("traceparent", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn b3_single_and_multi() {
        let c = extract(h(&[(
            "b3",
            "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(
            (c.trace_id, c.span_id, c.sampled),
            (TRACE, SPAN, Some(true))
        );
        // 64-bit trace ids are left-padded; deferred sampling is None.
        let c = extract(h(&[("b3", "8448eb211c80319c-b7ad6b7169203331")])).unwrap();
        assert_eq!(
            (&c.trace_id[..8], &c.trace_id[8..], c.sampled),
            (&[0u8; 8][..], &TRACE[8..], None)
        );
        let c = extract(h(&[
            ("X-B3-TraceId", "0af7651916cd43dd8448eb211c80319c"),
            ("X-B3-SpanId", "b7ad6b7169203331"),
            ("X-B3-Sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(
            (c.trace_id, c.span_id, c.sampled),
            (TRACE, SPAN, Some(false))
        );
        let c = extract(h(&[
            ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"),
            ("x-b3-spanid", "b7ad6b7169203331"),
            ("x-b3-flags", "1"),
        ]))
        .unwrap();
        assert_eq!(c.sampled, Some(true), "debug flag samples");
        assert_eq!(
            extract(h(&[("X-B3-TraceId", "0af7651916cd43dd8448eb211c80319c")])),
            None
        );
        assert_eq!(
            extract(h(&[("b3", "0")])),
            None,
            "sampling-only b3 has no context"
        );
    }

    #[test]
    fn w3c_wins_over_b3_and_other_headers_are_ignored() {
        let c = extract(h(&[
            ("seq", "1"),
            ("b3", "11111111111111111111111111111111-2222222222222222-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ]))
        .unwrap();
        assert_eq!(c.trace_id, TRACE);
        assert_eq!(extract(h(&[("seq", "1")])), None);
        assert_eq!(extract([(&b"traceparent"[..], None)]), None, "null value");
    }
}
