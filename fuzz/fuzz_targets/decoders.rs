//! Every request and response decoder, at every version, on arbitrary bodies, whole or cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::kafka::{
    DecodeOptions, RequestHeader, decode_request, decode_response, parse_request_header,
    parse_response_header,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let api_key = (data[0] % 20) as i16;
    let version = (data[1] % 20) as i16;
    let partial = data[2] & 1 != 0;
    let body = &data[3..];
    let opts = DecodeOptions {
        max_decompressed: 1 << 20,
        ..DecodeOptions::default()
    };
    let header = RequestHeader {
        api_key,
        api_version: version,
        correlation_id: 0,
        client_id: None,
    };
    let _ = decode_request(&header, body, partial, &opts);
    let _ = decode_response(api_key, version, body, partial, &opts);
    let _ = parse_request_header(body);
    let _ = parse_response_header(body, api_key, version);
});
