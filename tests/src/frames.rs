//! Kafka frames built by hand, for tests that need what a client library would never send
//! (a frame the kernel's walk must read exactly, requests to a broker that never answers,
//! hostile strings): what the tests look at is exact, the rest plausible.

/// A zigzag varint.
fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A flexible encoding's unsigned varint.
fn uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A v2 record batch of `values.len()` records without key or headers; returns it and
/// where each value lies in it.
pub fn batch(values: &[Vec<u8>]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut records = Vec::new();
    let mut ranges = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut r = vec![0u8]; // attributes
        varint(&mut r, 0); // timestamp delta
        varint(&mut r, i as i64); // offset delta
        varint(&mut r, -1); // no key
        varint(&mut r, v.len() as i64);
        let at = r.len();
        r.extend_from_slice(v);
        varint(&mut r, 0); // no headers
        let mut len = Vec::new();
        varint(&mut len, r.len() as i64);
        ranges.push(
            61 + records.len() + len.len() + at..61 + records.len() + len.len() + at + v.len(),
        );
        records.extend(len);
        records.extend(r);
    }
    let mut b = Vec::new();
    b.extend(0i64.to_be_bytes()); // base offset
    b.extend(((49 + records.len()) as i32).to_be_bytes()); // length
    b.extend(0i32.to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend(0u32.to_be_bytes()); // crc (the walk does not check it)
    b.extend(0i16.to_be_bytes()); // attributes: uncompressed
    b.extend((values.len() as i32 - 1).to_be_bytes()); // last offset delta
    b.extend(1_700_000_000_000i64.to_be_bytes()); // base timestamp
    b.extend(1_700_000_000_000i64.to_be_bytes()); // max timestamp
    b.extend((-1i64).to_be_bytes()); // producer id
    b.extend((-1i16).to_be_bytes()); // producer epoch
    b.extend((-1i32).to_be_bytes()); // base sequence
    b.extend((values.len() as i32).to_be_bytes());
    assert_eq!(b.len(), 61);
    b.extend(records);
    (b, ranges)
}

/// `body` behind its size.
pub fn sized(body: Vec<u8>) -> Vec<u8> {
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

/// A request header v1 (the one non-flexible requests take): api key, version, correlation
/// id and `client_id` as a plain nullable string.
pub fn request_header_v1(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    client_id: &[u8],
) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(api_key.to_be_bytes());
    h.extend(version.to_be_bytes());
    h.extend(correlation_id.to_be_bytes());
    h.extend((client_id.len() as i16).to_be_bytes());
    h.extend(client_id);
    h
}

/// A request header v2 (flexible requests): v1's fields, `client_id` still a plain string,
/// then an empty tagged-fields section.
pub fn request_header(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    client_id: &[u8],
) -> Vec<u8> {
    let mut h = request_header_v1(api_key, version, correlation_id, client_id);
    h.push(0);
    h
}

/// A COMPACT_STRING.
pub fn compact(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    uvarint(&mut out, s.len() as u64 + 1);
    out.extend_from_slice(s);
    out
}

/// The fields of a flexible topic with one partition, up to its records, which follow.
fn topic_start(out: &mut Vec<u8>) {
    uvarint(out, 2); // one topic
    uvarint(out, 7);
    out.extend(b"orders");
    uvarint(out, 2); // one partition
    out.extend(0i32.to_be_bytes());
}

/// A Produce v9 request carrying `batch`; the frame and where `batch` starts in it.
pub fn produce(correlation_id: i32, batch: &[u8]) -> (Vec<u8>, usize) {
    let mut b = request_header(0, 9, correlation_id, b"skim");
    b.push(0); // no transactional id
    b.extend((-1i16).to_be_bytes()); // acks
    b.extend(30_000i32.to_be_bytes()); // timeout
    topic_start(&mut b);
    uvarint(&mut b, batch.len() as u64 + 1);
    let at = 4 + b.len();
    b.extend(batch);
    b.extend([0, 0, 0]); // partition, topic and request tags
    (sized(b), at)
}

/// A Fetch v12 request (the walk reads only its header).
pub fn fetch(correlation_id: i32) -> Vec<u8> {
    let mut b = request_header(1, 12, correlation_id, b"skim");
    b.extend([0u8; 24]);
    sized(b)
}

/// A response to a request the walk does not follow.
pub fn other_response(correlation_id: i32) -> Vec<u8> {
    let mut b = correlation_id.to_be_bytes().to_vec();
    b.extend([0u8; 100]);
    sized(b)
}

/// A Fetch v12 response carrying `batch`; the frame and where `batch` starts in it.
pub fn fetched(correlation_id: i32, batch: &[u8]) -> (Vec<u8>, usize) {
    let mut b = correlation_id.to_be_bytes().to_vec();
    b.push(0); // no tagged fields
    b.extend(0i32.to_be_bytes()); // throttle time
    b.extend(0i16.to_be_bytes()); // error code
    b.extend(7i32.to_be_bytes()); // session id
    topic_start(&mut b);
    b.extend(0i16.to_be_bytes()); // error code
    b.extend(10i64.to_be_bytes()); // high watermark
    b.extend(10i64.to_be_bytes()); // last stable offset
    b.extend(0i64.to_be_bytes()); // log start offset
    b.push(0); // no aborted transactions (null)
    b.extend((-1i32).to_be_bytes()); // preferred read replica
    uvarint(&mut b, batch.len() as u64 + 1);
    let at = 4 + b.len();
    b.extend(batch);
    b.extend([0, 0, 0]); // partition, topic and response tags
    (sized(b), at)
}
