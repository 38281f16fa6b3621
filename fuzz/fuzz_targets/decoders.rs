//! Every request and response decoder, at every version, on whole frames (header included, as
//! the session hands them over), complete or cut. The corpus is seeded with the real frames of
//! the recorded fixtures (`cargo xtask fuzz` writes them).
//!
//! Input: a control byte (bit 0: response, bit 1: cut short), then for a request the frame;
//! for a response the API key and version it answers (one byte each), then the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::kafka::{
    DecodeOptions, decode_request, decode_response, parse_request_header, parse_response_header,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let partial = control & 2 != 0;
    let opts = DecodeOptions {
        max_decompressed: 1 << 20,
        ..DecodeOptions::default()
    };
    if control & 1 == 0 {
        if let Ok((header, at)) = parse_request_header(rest) {
            let _ = decode_request(&header, &rest[at..], partial, &opts);
        }
    } else if let [key, version, frame @ ..] = rest {
        let (key, version) = (*key as i16, *version as i16);
        if let Ok((_, at)) = parse_response_header(frame, key, version) {
            let _ = decode_response(key, version, &frame[at..], partial, &opts);
        }
    }
});
