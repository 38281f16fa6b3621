//! Owned summaries of the records in one partition's RECORDS field: what the later stages
//! need (offsets, timestamps, sizes, headers for trace context) without keeping the frame.
//!
//! Per partition, headers live in one byte arena and one span list, so a batch of records costs
//! a few vector pushes, not an allocation per record or header.

use std::ops::Range;

use super::records::{
    Batch, BatchHeader, Batches, Compression, Decompressor, Record, RecordError, Records,
};

/// The smallest encoded record: a one-byte length, then attributes, timestamp delta, offset
/// delta, key length, value length and header count of one byte each.
const MIN_RECORD_BYTES: usize = 7;

/// What to keep from records.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// Keep record keys (off by default: keys may be personal data).
    pub keys: bool,
    /// Header values longer than this are kept only up to this length (traceparent is 55
    /// bytes, tracestate at most 512).
    pub max_header_value: usize,
    /// Largest decompressed batch.
    pub max_decompressed: usize,
    /// Set per frame by the session, never configured: the kernel skipped bytes of the frame
    /// on purpose ([`Frame::skipped`](super::Frame)), so a batch whose records start with a
    /// zero byte (no record or codec does) is one whose records it skipped whole.
    pub skipped_by_kernel: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            keys: false,
            max_header_value: 512,
            max_decompressed: 16 << 20,
            skipped_by_kernel: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    /// As written: 0 in produce requests (the broker assigns offsets), the real offset in fetch
    /// responses.
    pub base_offset: i64,
    pub record_count: i32,
    pub last_offset_delta: i32,
    pub compression: Compression,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub log_append_time: bool,
    pub producer_id: i64,
    pub transactional: bool,
    pub control: bool,
    /// Part of a transaction that was aborted (read from a `read_committed` fetch response's
    /// aborted-transaction list): the client drops its records, so they were not consumed.
    pub aborted: bool,
    /// Size of the batch on the wire.
    pub bytes: u32,
    /// The kernel skipped the batch's records (`--record-headers`): its records are known
    /// from the header alone (offsets, the base timestamp), without keys or headers.
    pub records_skipped: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// Index of the record's batch in `PartitionRecords::batches`.
    pub batch: u32,
    pub offset_delta: i32,
    /// Milliseconds since the epoch (create or append time, per the batch).
    pub timestamp: i64,
    /// -1 for a null key or value, or for one the kernel skipped
    /// ([`BatchInfo::records_skipped`]).
    pub key_len: i32,
    pub value_len: i32,
    /// The key's bytes in `PartitionRecords::arena`, when keys are kept.
    pub key: Option<Range<u32>>,
    /// The record's headers in `PartitionRecords::headers`.
    pub headers: Range<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Range<u32>,
    /// `None` for a null value.
    pub value: Option<Range<u32>>,
    /// The value was longer than `max_header_value` and is cut.
    pub cut: bool,
}

/// The records of one partition in one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionRecords {
    pub batches: Vec<BatchInfo>,
    pub records: Vec<RecordInfo>,
    pub headers: Vec<HeaderSpan>,
    pub arena: Vec<u8>,
    /// The field ended in a partial batch (normal in fetch responses).
    pub truncated_tail: bool,
    /// Legacy (magic 0/1) message sets skipped.
    pub legacy_batches: u32,
    /// Batches whose records could not be read (corrupt data, failed or oversized
    /// decompression); their header is still in `batches`.
    pub undecodable_batches: u32,
    /// Records of batches the kernel skipped: their headers (and trace contexts) were not read.
    pub headers_unread: u32,
    pub last_error: Option<RecordError>,
    pub bytes: u32,
}

impl PartitionRecords {
    /// The records of batch `batch`, in order. Records are pushed batch by batch, so they are
    /// sorted by batch: two binary searches, not a pass over the partition's records per batch
    /// (which made a fetch of many small batches quadratic).
    pub fn of_batch(&self, batch: u32) -> impl Iterator<Item = &RecordInfo> {
        let start = self.records.partition_point(|r| r.batch < batch);
        let end = self.records.partition_point(|r| r.batch <= batch);
        self.records.get(start..end).unwrap_or_default().iter()
    }

    /// Reads a RECORDS field.
    pub fn collect(field: &[u8], d: &mut Decompressor, opts: &DecodeOptions) -> Self {
        let mut out = Self {
            bytes: field.len() as u32,
            ..Self::default()
        };
        let mut batches = Batches::new(field);
        for batch in batches.by_ref() {
            match batch {
                Ok(batch) => out.push_batch(&batch, d, opts),
                // The field cannot be walked past a batch that does not frame.
                Err(e) => {
                    out.undecodable(e);
                    break;
                }
            }
        }
        out.truncated_tail = batches.truncated_tail;
        out.legacy_batches = batches.legacy;
        out
    }

    /// One batch: its header, and unless it is a control batch, its records.
    fn push_batch(&mut self, batch: &Batch<'_>, d: &mut Decompressor, opts: &DecodeOptions) {
        let h = &batch.header;
        let compression = match h.compression() {
            Ok(c) => c,
            Err(e) => return self.undecodable(e),
        };
        let index = self.batches.len() as u32;
        let skipped = opts.skipped_by_kernel && !h.control() && batch.records.first() == Some(&0);
        self.batches.push(BatchInfo {
            base_offset: h.base_offset,
            record_count: h.record_count,
            last_offset_delta: h.last_offset_delta,
            compression,
            base_timestamp: h.base_timestamp,
            max_timestamp: h.max_timestamp,
            log_append_time: h.log_append_time(),
            producer_id: h.producer_id,
            transactional: h.transactional(),
            control: h.control(),
            aborted: false,
            bytes: (batch.records.len() + super::records::BATCH_HEADER_LEN) as u32,
            records_skipped: skipped,
        });
        if h.control() {
            return;
        }
        if skipped {
            return self.push_skipped(index, h, batch.records.len());
        }
        let data = match d.records(batch) {
            Ok(data) => data,
            Err(e) => return self.undecodable(e),
        };
        // Room for the batch's records at once (a record takes at least MIN_RECORD_BYTES, so
        // a count the bytes cannot hold reserves no more than the bytes allow).
        let fits = data.len() / MIN_RECORD_BYTES;
        self.records
            .reserve((h.record_count.max(0) as usize).min(fits));
        for record in Records::new(data, h.record_count) {
            match record {
                Ok(r) => self.push_record(index, h, &r, opts),
                Err(e) => return self.undecodable(e),
            }
        }
    }

    /// One record of batch `index`: sizes, timestamp, the key when kept, and its headers
    /// (values cut at `max_header_value`) in the arena.
    fn push_record(&mut self, index: u32, h: &BatchHeader, r: &Record<'_>, opts: &DecodeOptions) {
        let key = match (opts.keys, r.key) {
            (true, Some(k)) => Some(self.push_arena(k)),
            _ => None,
        };
        let first_header = self.headers.len() as u32;
        for (name, value) in r.headers() {
            let name = self.push_arena(name);
            let cut = value.is_some_and(|v| v.len() > opts.max_header_value);
            let value = value.map(|v| self.push_arena(&v[..v.len().min(opts.max_header_value)]));
            self.headers.push(HeaderSpan { name, value, cut });
        }
        self.records.push(RecordInfo {
            batch: index,
            offset_delta: r.offset_delta,
            timestamp: if h.log_append_time() {
                h.max_timestamp
            } else {
                h.base_timestamp.saturating_add(r.timestamp_delta)
            },
            key_len: r.key.map_or(-1, |k| k.len() as i32),
            value_len: r.value.map_or(-1, |v| v.len() as i32),
            key,
            headers: first_header..self.headers.len() as u32,
        });
    }

    /// The records of batch `index`, which the kernel skipped (`len` bytes): one per offset
    /// the header covers, at its base timestamp, without key, value or headers. A producer's
    /// batch holds consecutive offsets; the count is held to what `len` bytes could encode.
    fn push_skipped(&mut self, index: u32, h: &BatchHeader, len: usize) {
        let count = (h.record_count.max(0) as usize).min(len / MIN_RECORD_BYTES);
        self.records.reserve(count);
        self.records
            .extend((0..count as i32).map(|offset_delta| RecordInfo {
                batch: index,
                offset_delta,
                timestamp: h.base_timestamp,
                key_len: -1,
                value_len: -1,
                key: None,
                headers: 0..0,
            }));
        self.headers_unread += count as u32;
    }

    /// A batch whose records could not be read; its header, when it framed, stays.
    fn undecodable(&mut self, e: RecordError) {
        self.undecodable_batches += 1;
        self.last_error = Some(e);
    }

    /// Bytes its tables hold on the heap (what keeping it costs).
    pub fn heap_bytes(&self) -> usize {
        self.batches.capacity() * size_of::<BatchInfo>()
            + self.records.capacity() * size_of::<RecordInfo>()
            + self.headers.capacity() * size_of::<HeaderSpan>()
            + self.arena.capacity()
    }

    fn push_arena(&mut self, bytes: &[u8]) -> Range<u32> {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        start..self.arena.len() as u32
    }

    /// Bytes of a span in the arena.
    pub fn slice(&self, r: &Range<u32>) -> &[u8] {
        &self.arena[r.start as usize..r.end as usize]
    }

    /// `(name, value)` of a record's headers.
    pub fn headers_of<'s>(
        &'s self,
        rec: &RecordInfo,
    ) -> impl Iterator<Item = (&'s [u8], Option<&'s [u8]>)> + 's {
        self.headers[rec.headers.start as usize..rec.headers.end as usize]
            .iter()
            .map(|h| (self.slice(&h.name), h.value.as_ref().map(|v| self.slice(v))))
    }

    /// Absolute offset of a record. In a fetch response batches carry their real base offset.
    /// In a produce request they do not: the broker assigns `assigned_base` (from the produce
    /// response) to the first record, and later batches follow on.
    pub fn absolute_offset(&self, rec: &RecordInfo, assigned_base: Option<i64>) -> i64 {
        self.first_offset(rec.batch, assigned_base) + rec.offset_delta as i64
    }

    /// Absolute offset of the first record of batch `batch` (as [`Self::absolute_offset`]).
    pub fn first_offset(&self, batch: u32, assigned_base: Option<i64>) -> i64 {
        match assigned_base {
            None => self
                .batches
                .get(batch as usize)
                .map_or(0, |b| b.base_offset),
            Some(first) => {
                let earlier = self.batches.iter().take(batch as usize);
                first + earlier.map(|b| b.last_offset_delta as i64 + 1).sum::<i64>()
            }
        }
    }

    /// Number of user records (control batches excluded).
    pub fn record_count(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::records::{
        BATCH_HEADER_LEN,
        tests::{TestRecord, encode_batch},
    };

    #[test]
    fn each_batch_gives_its_own_records() {
        let mut field = encode_batch(10, Compression::None, &[(b"", b"a", &[]), (b"", b"b", &[])]);
        field.extend(encode_batch(12, Compression::Zstd, &[(b"", b"c", &[])]));
        field.extend(encode_batch(13, Compression::None, &[]));
        let d: TestRecord<'_> = (b"", b"d", &[]);
        field.extend(encode_batch(13, Compression::None, &[d; 3]));
        let p = PartitionRecords::collect(
            &field,
            &mut Decompressor::new(1 << 20),
            &DecodeOptions::default(),
        );
        assert_eq!(p.batches.len(), 4);
        let offsets =
            |b: u32| -> Vec<i64> { p.of_batch(b).map(|r| p.absolute_offset(r, None)).collect() };
        assert_eq!(offsets(0), [10, 11]);
        assert_eq!(offsets(1), [12]);
        assert_eq!(offsets(2), [] as [i64; 0]);
        assert_eq!(offsets(3), [13, 14, 15]);
        assert_eq!(offsets(4), [] as [i64; 0]);
    }

    /// A batch whose records the kernel skipped (zeroes in the frame) is known from its header:
    /// one record per offset, no headers, counted; a count the skipped bytes could not hold is
    /// cut to what they could (no allocation a hostile header asks for); without the kernel's
    /// word, zeroes are an undecodable batch.
    #[test]
    fn records_the_kernel_skipped_are_known_by_offset() {
        let r: TestRecord<'_> = (b"", &[7; 40], &[("traceparent", b"00-x")]);
        let mut field = encode_batch(0, Compression::Lz4, &[r; 5]);
        field[BATCH_HEADER_LEN..].fill(0);
        let mut huge = field.clone();
        huge[BATCH_HEADER_LEN - 4..BATCH_HEADER_LEN].copy_from_slice(&i32::MAX.to_be_bytes());
        let skipped = DecodeOptions {
            skipped_by_kernel: true,
            ..DecodeOptions::default()
        };
        let mut d = Decompressor::new(1 << 20);
        let p = PartitionRecords::collect(&field, &mut d, &skipped);
        assert!(p.batches[0].records_skipped);
        let offsets: Vec<i64> = p
            .records
            .iter()
            .map(|r| p.absolute_offset(r, Some(9)))
            .collect();
        assert_eq!(offsets, [9, 10, 11, 12, 13]);
        assert!(p.headers.is_empty());
        assert_eq!((p.headers_unread, p.undecodable_batches), (5, 0));
        let h = PartitionRecords::collect(&huge, &mut d, &skipped);
        let room = (field.len() - BATCH_HEADER_LEN) / MIN_RECORD_BYTES;
        assert_eq!(h.records.len(), room);
        let plain = PartitionRecords::collect(&field, &mut d, &DecodeOptions::default());
        assert_eq!((plain.records.len(), plain.undecodable_batches), (0, 1));
    }
}
