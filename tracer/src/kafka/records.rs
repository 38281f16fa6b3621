//! Record batches (magic 2) as carried in Produce requests and Fetch responses: batch headers,
//! decompression with every codec, and zero-copy iteration over records and their headers.
//!
//! Legacy message sets (magic 0 and 1) are recognised, counted and skipped. A batch cut short
//! at the end of a RECORDS field is normal in fetch responses (the broker fills up to the byte
//! limit) and ends iteration without an error.

use std::io::Read as _;

use super::wire::{Reader, WireError};

/// Bytes of a v2 batch header, up to and including the record count.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before `batch_length` counts: base offset and the length itself.
const LOG_OVERHEAD: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 5] = [Self::None, Self::Gzip, Self::Snappy, Self::Lz4, Self::Zstd];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("{0} data does not decompress: {1}")]
    Decompress(&'static str, String),
    #[error("batch decompresses to more than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("batch header is inconsistent: {0}")]
    Corrupt(&'static str),
}

/// The fixed header of a v2 record batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn compression(&self) -> Result<Compression, RecordError> {
        Ok(match self.attributes & 0x07 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            c => return Err(RecordError::UnknownCodec(c as u8)),
        })
    }

    /// Timestamps are the broker's append time rather than the producer's create time.
    pub fn log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }

    pub fn transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// Transaction markers, not user records.
    pub fn control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// One batch: its header and its (possibly compressed) records section.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    pub records: &'a [u8],
}

/// Iterates over the batches of a RECORDS field.
pub struct Batches<'a> {
    r: Reader<'a>,
    /// A partial batch ended the field (normal in fetch responses).
    pub truncated_tail: bool,
    /// Legacy (magic 0/1) message sets skipped.
    pub legacy: u32,
    failed: bool,
}

impl<'a> Batches<'a> {
    pub fn new(records: &'a [u8]) -> Self {
        Self {
            r: Reader::new(records),
            truncated_tail: false,
            legacy: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<Batch<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.r.remaining() == 0 {
                return None;
            }
            let rest = self.r.rest();
            if rest.len() < LOG_OVERHEAD + 5 {
                self.truncated_tail = true;
                return None;
            }
            let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
            let magic = rest[16] as i8;
            if len < 0 || (magic == 2 && (len as usize) < BATCH_HEADER_LEN - LOG_OVERHEAD) {
                self.failed = true;
                return Some(Err(RecordError::Corrupt("batch length too small")));
            }
            let total = LOG_OVERHEAD + len as usize;
            if rest.len() < total {
                self.truncated_tail = true;
                return None;
            }
            let whole = self.r.bytes(total).expect("length checked");
            match magic {
                0 | 1 => {
                    self.legacy += 1;
                    continue;
                }
                2 => {}
                _ => {
                    self.failed = true;
                    return Some(Err(RecordError::Corrupt("unknown magic")));
                }
            }
            let mut h = Reader::new(whole);
            let header = (|| -> Result<BatchHeader, WireError> {
                Ok(BatchHeader {
                    base_offset: h.i64()?,
                    batch_length: h.i32()?,
                    partition_leader_epoch: h.i32()?,
                    magic: h.i8()?,
                    crc: h.u32()?,
                    attributes: h.i16()?,
                    last_offset_delta: h.i32()?,
                    base_timestamp: h.i64()?,
                    max_timestamp: h.i64()?,
                    producer_id: h.i64()?,
                    producer_epoch: h.i16()?,
                    base_sequence: h.i32()?,
                    record_count: h.i32()?,
                })
            })();
            return Some(match header {
                Ok(header) if header.record_count < 0 => {
                    self.failed = true;
                    Err(RecordError::Corrupt("negative record count"))
                }
                Ok(header) => Ok(Batch {
                    header,
                    records: h.rest(),
                }),
                Err(e) => {
                    self.failed = true;
                    Err(e.into())
                }
            });
        }
    }
}

/// Decompression buffer with a size limit (no batch may make it grow past `limit`), and the
/// zstd context: creating one per batch costs more than decompressing a small batch (it
/// allocates the frame's window, 2 MiB for librdkafka's frames), so both are kept per thread and
/// reached through [`with_decompressor`].
pub struct Decompressor {
    buf: Vec<u8>,
    limit: usize,
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
}

/// Capacity a thread's decompression buffer keeps between uses.
const KEEP_CAPACITY: usize = 4 << 20;

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Decompressor> = std::cell::RefCell::new(Decompressor::new(0));
}

/// Runs `f` with this thread's decompressor, limited to `limit` bytes per batch.
pub fn with_decompressor<R>(limit: usize, f: impl FnOnce(&mut Decompressor) -> R) -> R {
    DECOMPRESSOR.with(|cell| {
        let mut d = cell.borrow_mut();
        d.limit = limit;
        let r = f(&mut d);
        if d.buf.capacity() > KEEP_CAPACITY {
            d.buf = Vec::new();
        }
        r
    })
}

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

impl Decompressor {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            zstd: None,
        }
    }

    /// The batch's records, decompressed when needed (into this buffer).
    pub fn records<'s, 'a: 's>(&'s mut self, batch: &Batch<'a>) -> Result<&'s [u8], RecordError> {
        let codec = batch.header.compression()?;
        if codec == Compression::None {
            return Ok(batch.records);
        }
        self.buf.clear();
        let limit = self.limit;
        let input = batch.records;
        match codec {
            Compression::None => unreachable!("handled above"),
            Compression::Gzip => read_bounded(
                flate2::read::MultiGzDecoder::new(input),
                &mut self.buf,
                limit,
                codec,
            )?,
            Compression::Lz4 => read_bounded(
                lz4_flex::frame::FrameDecoder::new(input),
                &mut self.buf,
                limit,
                codec,
            )?,
            Compression::Zstd => {
                let dctx = self.zstd.get_or_insert_with(zstd::zstd_safe::DCtx::create);
                zstd_into(dctx, input, &mut self.buf, limit)?
            }
            Compression::Snappy => {
                if let Some(framed) = input.strip_prefix(XERIAL_MAGIC) {
                    // xerial framing (Java clients): version and compatible version, then
                    // length-prefixed raw snappy blocks.
                    let mut r = Reader::new(framed);
                    r.bytes(8)?;
                    while r.remaining() > 0 {
                        let n = r.i32()?;
                        let block = r.bytes(
                            usize::try_from(n)
                                .map_err(|_| RecordError::Corrupt("negative snappy block"))?,
                        )?;
                        snappy_block(block, &mut self.buf, limit)?;
                    }
                } else {
                    snappy_block(input, &mut self.buf, limit)?;
                }
            }
        }
        Ok(&self.buf)
    }
}

fn read_bounded(
    r: impl std::io::Read,
    out: &mut Vec<u8>,
    limit: usize,
    codec: Compression,
) -> Result<(), RecordError> {
    let n = r
        .take(limit as u64 + 1)
        .read_to_end(out)
        .map_err(|e| RecordError::Decompress(codec.name(), e.to_string()))?;
    if n > limit {
        return Err(RecordError::TooLarge { limit });
    }
    Ok(())
}

/// Decompresses zstd frames (one, or several concatenated) into `out`, at most `limit` bytes,
/// in one shot: the output serves as the decoder's history. Streaming would allocate the window
/// each frame header declares (up to 128 MiB whatever the content, a fuzzer's 347-byte batch
/// asked for it), where this needs only the room the frames' content sizes call for.
fn zstd_into(
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
    src: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), RecordError> {
    use zstd::zstd_safe::{decompress_bound, get_error_name};
    let fail = |code: usize| RecordError::Decompress("zstd", get_error_name(code).to_string());
    // Content sizes when the headers declare them, else the most the blocks can hold.
    let bound = decompress_bound(src).map_err(fail)?;
    let over = bound > limit as u64;
    out.reserve_exact(if over { limit } else { bound as usize });
    match dctx.decompress(out, src) {
        // The buffer may have had more room than this limit from earlier use.
        Ok(_) if out.len() > limit => Err(RecordError::TooLarge { limit }),
        Ok(_) => Ok(()),
        // Content beyond the room given: more than the limit allows.
        Err(_) if over => Err(RecordError::TooLarge { limit }),
        Err(code) => Err(fail(code)),
    }
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), RecordError> {
    let len = snap::raw::decompress_len(block)
        .map_err(|e| RecordError::Decompress("snappy", e.to_string()))?;
    if out.len() + len > limit {
        return Err(RecordError::TooLarge { limit });
    }
    let at = out.len();
    out.resize(at + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[at..])
        .map_err(|e| RecordError::Decompress("snappy", e.to_string()))?;
    Ok(())
}

/// One record, borrowing its batch's (decompressed) bytes.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    headers: Reader<'a>,
    header_count: u32,
}

impl<'a> Record<'a> {
    /// The record's headers, `(name, value)`; a malformed header ends the iteration.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            r: self.headers,
            left: self.header_count,
        }
    }

    pub fn header_count(&self) -> u32 {
        self.header_count
    }
}

#[derive(Clone)]
pub struct Headers<'a> {
    r: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut field = || -> Result<Option<&'a [u8]>, WireError> {
            let n = self.r.varint()?;
            if n < 0 {
                Ok(None)
            } else {
                self.r.bytes(n as usize).map(Some)
            }
        };
        match (field(), field()) {
            (Ok(Some(name)), Ok(value)) => Some((name, value)),
            _ => {
                self.left = 0;
                None
            }
        }
    }
}

/// Iterates over the records of a decompressed records section.
pub struct Records<'a> {
    r: Reader<'a>,
    left: i32,
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8], count: i32) -> Self {
        Self {
            r: Reader::new(data),
            left: count,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left <= 0 {
            return None;
        }
        self.left -= 1;
        let record = (|| -> Result<Record<'a>, RecordError> {
            let len = self.r.varint()?;
            let body = self.r.bytes(
                usize::try_from(len).map_err(|_| RecordError::Corrupt("negative record length"))?,
            )?;
            let mut r = Reader::new(body);
            let _attributes = r.i8()?;
            let timestamp_delta = r.varlong()?;
            let offset_delta = r.varint()?;
            let field = |r: &mut Reader<'a>| -> Result<Option<&'a [u8]>, WireError> {
                let n = r.varint()?;
                if n < 0 {
                    Ok(None)
                } else {
                    r.bytes(n as usize).map(Some)
                }
            };
            let key = field(&mut r)?;
            let value = field(&mut r)?;
            let header_count = r.varint()?;
            let header_count = u32::try_from(header_count)
                .map_err(|_| RecordError::Corrupt("negative header count"))?;
            Ok(Record {
                timestamp_delta,
                offset_delta,
                key,
                value,
                headers: r,
                header_count,
            })
        })();
        if record.is_err() {
            self.left = 0;
        }
        Some(record)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (key, value, headers) of a record to encode.
    pub type TestRecord<'a> = (&'a [u8], &'a [u8], &'a [(&'a str, &'a [u8])]);

    /// Encodes records the way Kafka clients do (for tests; the fixtures hold real client bytes).
    pub fn encode_batch(
        base_offset: i64,
        codec: Compression,
        records: &[TestRecord<'_>],
    ) -> Vec<u8> {
        fn varint(v: i64, out: &mut Vec<u8>) {
            let mut u = ((v << 1) ^ (v >> 63)) as u64;
            while u >= 0x80 {
                out.push((u as u8) | 0x80);
                u >>= 7;
            }
            out.push(u as u8);
        }
        let mut body = Vec::new();
        for (i, (key, value, headers)) in records.iter().enumerate() {
            let mut r = vec![0u8];
            varint(i as i64 * 3, &mut r); // timestamp delta
            varint(i as i64, &mut r); // offset delta
            varint(key.len() as i64, &mut r);
            r.extend_from_slice(key);
            varint(value.len() as i64, &mut r);
            r.extend_from_slice(value);
            varint(headers.len() as i64, &mut r);
            for (n, v) in *headers {
                varint(n.len() as i64, &mut r);
                r.extend_from_slice(n.as_bytes());
                varint(v.len() as i64, &mut r);
                r.extend_from_slice(v);
            }
            varint(r.len() as i64, &mut body);
            body.extend_from_slice(&r);
        }
        let compressed = match codec {
            Compression::None => body,
            Compression::Gzip => {
                use std::io::Write as _;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&body).unwrap();
                e.finish().unwrap()
            }
            Compression::Snappy => snap::raw::Encoder::new().compress_vec(&body).unwrap(),
            Compression::Lz4 => {
                use std::io::Write as _;
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(&body).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::bulk::compress(&body, 1).unwrap(),
        };
        let attributes: i16 = match codec {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        };
        let mut b = Vec::new();
        b.extend(base_offset.to_be_bytes());
        b.extend(0i32.to_be_bytes()); // length, patched below
        b.extend(0i32.to_be_bytes()); // leader epoch
        b.push(2);
        b.extend(0u32.to_be_bytes()); // crc (not checked by the decoder)
        b.extend(attributes.to_be_bytes());
        b.extend((records.len() as i32 - 1).to_be_bytes());
        b.extend(1_700_000_000_000i64.to_be_bytes());
        b.extend(1_700_000_000_000i64.to_be_bytes());
        b.extend((-1i64).to_be_bytes());
        b.extend((-1i16).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.extend((records.len() as i32).to_be_bytes());
        b.extend(compressed);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// (absolute offset, value, headers) of every record.
    type Decoded = (i64, Vec<u8>, Vec<(String, Vec<u8>)>);

    fn decode_all(bytes: &[u8]) -> Vec<Decoded> {
        let mut d = Decompressor::new(1 << 20);
        let mut out = Vec::new();
        for batch in Batches::new(bytes) {
            let batch = batch.unwrap();
            let data = d.records(&batch).unwrap().to_vec();
            for r in Records::new(&data, batch.header.record_count) {
                let r = r.unwrap();
                let headers = r
                    .headers()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(n).into_owned(),
                            v.unwrap_or_default().to_vec(),
                        )
                    })
                    .collect();
                out.push((
                    batch.header.base_offset + r.offset_delta as i64,
                    r.value.unwrap().to_vec(),
                    headers,
                ));
            }
        }
        out
    }

    #[test]
    fn every_codec_round_trips_records_and_headers() {
        let tp: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        for codec in Compression::ALL {
            let bytes = encode_batch(
                40,
                codec,
                &[(b"k1", b"v1", &[("traceparent", tp)]), (b"", b"v2", &[])],
            );
            let got = decode_all(&bytes);
            assert_eq!(got.len(), 2, "{codec:?}");
            assert_eq!((got[0].0, got[1].0), (40, 41));
            assert_eq!(got[0].1, b"v1");
            assert_eq!(got[0].2, vec![("traceparent".to_string(), tp.to_vec())]);
            assert!(got[1].2.is_empty());
        }
    }

    #[test]
    fn xerial_framed_snappy_is_understood() {
        let body = encode_batch(0, Compression::None, &[(b"", b"hello", &[("h", b"x")])]);
        let raw = &body[BATCH_HEADER_LEN..];
        let block = snap::raw::Encoder::new().compress_vec(raw).unwrap();
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend(1i32.to_be_bytes());
        framed.extend(1i32.to_be_bytes());
        framed.extend((block.len() as i32).to_be_bytes());
        framed.extend(&block);
        let mut b = body[..BATCH_HEADER_LEN].to_vec();
        b[21..23].copy_from_slice(&2i16.to_be_bytes()); // attributes: snappy
        b.extend(&framed);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        assert_eq!(decode_all(&b)[0].1, b"hello");
    }

    #[test]
    fn partial_trailing_batch_ends_iteration_quietly() {
        let mut bytes = encode_batch(0, Compression::None, &[(b"", b"a", &[])]);
        let second = encode_batch(1, Compression::None, &[(b"", b"b", &[])]);
        bytes.extend_from_slice(&second[..second.len() - 3]);
        let mut it = Batches::new(&bytes);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().is_none());
        assert!(it.truncated_tail);
    }

    #[test]
    fn legacy_message_sets_are_counted_and_skipped() {
        let mut legacy = vec![0u8; 8];
        legacy.extend(14i32.to_be_bytes());
        legacy.extend([0, 0, 0, 0, 1, 0]); // crc, magic 1, attributes
        legacy.extend([0u8; 8]);
        legacy.extend(encode_batch(5, Compression::None, &[(b"", b"z", &[])]));
        let mut it = Batches::new(&legacy);
        assert_eq!(it.next().unwrap().unwrap().header.base_offset, 5);
        assert_eq!(it.legacy, 1);
    }

    #[test]
    fn decompression_is_bounded() {
        let big = vec![b'a'; 100_000];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = encode_batch(0, codec, &[(b"", &big, &[])]);
            let batch = Batches::new(&bytes).next().unwrap().unwrap();
            let mut d = Decompressor::new(10_000);
            assert_eq!(
                d.records(&batch).unwrap_err(),
                RecordError::TooLarge { limit: 10_000 },
                "{codec:?}"
            );
        }
    }

    /// Frames as streaming compressors write them (no content size; the window of a high level,
    /// here the format's largest default, 128 MiB), and two such frames back to back, decode in
    /// one shot; the bound holds for them too.
    #[test]
    fn streamed_zstd_frames_decode_whatever_window_they_declare() {
        use std::io::Write as _;
        use zstd::zstd_safe::CParameter;
        let content: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut e = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
        e.set_parameter(CParameter::WindowLog(27)).unwrap();
        e.write_all(&content).unwrap();
        let frame = e.finish().unwrap();
        let declared = zstd::zstd_safe::get_frame_content_size(&frame).unwrap();
        assert_eq!(declared, None, "a streamed frame declares no content size");
        let two = [frame.clone(), frame].concat();
        let mut dctx = zstd::zstd_safe::DCtx::create();
        let mut out = Vec::new();
        zstd_into(&mut dctx, &two, &mut out, 1 << 20).unwrap();
        assert!(
            out == [content.as_slice(), &content].concat(),
            "both frames' content"
        );
        assert!(
            out.capacity() < 1 << 20,
            "room from the blocks, not the window"
        );
        out.clear();
        assert_eq!(
            zstd_into(&mut dctx, &two, &mut out, 60_000).unwrap_err(),
            RecordError::TooLarge { limit: 60_000 }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let good = encode_batch(0, Compression::Zstd, &[(b"key", b"value", &[("a", b"b")])]);
        let mut d = Decompressor::new(1 << 16);
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                for batch in Batches::new(&bad).flatten() {
                    if let Ok(data) = d.records(&batch) {
                        let data = data.to_vec();
                        for r in Records::new(&data, batch.header.record_count).flatten() {
                            let _ = r.headers().count();
                        }
                    }
                }
            }
        }
    }
}
