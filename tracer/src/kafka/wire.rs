//! Zero-copy reader for Kafka's wire primitives: fixed-width big-endian integers, varints,
//! (compact, nullable) strings and bytes, arrays, UUIDs and tagged-field sections.
//!
//! Every read is bounds-checked and returns a typed error: input is hostile.

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message ends early (needed {needed} more bytes at offset {at})")]
    Short { at: usize, needed: usize },
    #[error("invalid varint at offset {0}")]
    Varint(usize),
    #[error("negative or oversized length {len} at offset {at}")]
    Length { at: usize, len: i64 },
    #[error("array of {count} elements at offset {at} cannot fit in the message")]
    Count { at: usize, count: i64 },
}

pub type Result<T> = std::result::Result<T, WireError>;

#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Short {
                at: self.pos,
                needed: n.saturating_sub(self.remaining()),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    #[inline]
    pub fn i8(&mut self) -> Result<i8> {
        Ok(self.array::<1>()?[0] as i8)
    }
    #[inline]
    pub fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn uuid(&mut self) -> Result<[u8; 16]> {
        self.array()
    }

    /// Unsigned LEB128, at most 5 bytes (32 bits).
    #[inline]
    pub fn uvarint(&mut self) -> Result<u32> {
        let start = self.pos;
        let mut v: u32 = 0;
        for i in 0..5 {
            let b = *self.buf.get(self.pos).ok_or(WireError::Short {
                at: self.pos,
                needed: 1,
            })?;
            self.pos += 1;
            if i == 4 && b > 0x0f {
                return Err(WireError::Varint(start));
            }
            v |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Varint(start))
    }

    /// Zigzag-encoded signed varint (record fields), at most 5 bytes.
    #[inline]
    pub fn varint(&mut self) -> Result<i32> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }

    /// Zigzag-encoded signed varlong, at most 10 bytes.
    #[inline]
    pub fn varlong(&mut self) -> Result<i64> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(WireError::Short {
                at: self.pos,
                needed: 1,
            })?;
            self.pos += 1;
            if i == 9 && b > 0x01 {
                return Err(WireError::Varint(start));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err(WireError::Varint(start))
    }

    /// Length of a string, bytes or array field: `None` for null (-1, or 0 in compact form).
    #[inline]
    fn length(&mut self, compact: bool, wide: bool) -> Result<Option<usize>> {
        let at = self.pos;
        let len: i64 = if compact {
            self.uvarint()? as i64 - 1
        } else if wide {
            self.i32()? as i64
        } else {
            self.i16()? as i64
        };
        match len {
            -1 => Ok(None),
            l if l < 0 => Err(WireError::Length { at, len: l }),
            l => Ok(Some(l as usize)),
        }
    }

    /// STRING / NULLABLE_STRING (or their compact forms), as raw bytes.
    pub fn string(&mut self, compact: bool) -> Result<Option<&'a [u8]>> {
        match self.length(compact, false)? {
            Some(n) => self.bytes(n).map(Some),
            None => Ok(None),
        }
    }

    /// A RECORDS field (null reads as empty). In a message known to be cut short (`partial`),
    /// a field announced longer than what is left gives what is left, and `true`.
    pub fn records_field(&mut self, compact: bool, partial: bool) -> Result<(&'a [u8], bool)> {
        match self.length(compact, true)? {
            Some(n) if partial && n > self.remaining() => Ok((self.bytes(self.remaining())?, true)),
            Some(n) => Ok((self.bytes(n)?, false)),
            None => Ok((&[], false)),
        }
    }

    /// Element count of an ARRAY (or compact/nullable array); null reads as 0. Each element
    /// takes at least `min_element` bytes, so a count that cannot fit is rejected before any
    /// caller allocates for it.
    pub fn array_len(&mut self, compact: bool, min_element: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.length(compact, true)?.unwrap_or(0);
        if n.saturating_mul(min_element.max(1)) > self.remaining() {
            return Err(WireError::Count {
                at,
                count: n as i64,
            });
        }
        Ok(n)
    }

    /// Skips a tagged-field section (flexible versions), returning `(tag, value)` pairs to `f`.
    pub fn tagged_fields(&mut self, mut f: impl FnMut(u32, &'a [u8])) -> Result<()> {
        let n = self.uvarint()?;
        for _ in 0..n {
            let tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            f(tag, self.bytes(size)?);
        }
        Ok(())
    }

    /// Skips a tagged-field section when `flexible`.
    pub fn skip_tags(&mut self, flexible: bool) -> Result<()> {
        if flexible {
            self.tagged_fields(|_, _| {})
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_varints() {
        let mut r = Reader::new(&[0x01, 0x02, 0xff, 0xff, 0xff, 0xfe, 0x96, 0x01, 0x03, 0x01]);
        assert_eq!(r.i16().unwrap(), 0x0102);
        assert_eq!(r.i32().unwrap(), -2);
        assert_eq!(r.uvarint().unwrap(), 150);
        assert_eq!(r.varint().unwrap(), -2);
        assert_eq!(r.varlong().unwrap(), -1);
        assert_eq!(r.remaining(), 0);
        assert!(matches!(r.i8(), Err(WireError::Short { .. })));
    }

    #[test]
    fn varints_of_every_length_round_trip() {
        fn leb(mut u: u64, out: &mut Vec<u8>) {
            while u >= 0x80 {
                out.push(u as u8 | 0x80);
                u >>= 7;
            }
            out.push(u as u8);
        }
        let signed = (-300i64..300).chain([i32::MIN as i64, i32::MAX as i64, i64::MIN, i64::MAX]);
        for v in signed {
            let mut b = Vec::new();
            leb(((v << 1) ^ (v >> 63)) as u64, &mut b);
            let mut r = Reader::new(&b);
            assert_eq!(r.varlong(), Ok(v), "{b:?}");
            assert_eq!(r.remaining(), 0);
            if let Ok(v32) = i32::try_from(v) {
                assert_eq!(Reader::new(&b).varint(), Ok(v32), "{b:?}");
            }
        }
        for u in (0u32..300).chain([16_383, 16_384, u32::MAX]) {
            let mut b = Vec::new();
            leb(u as u64, &mut b);
            let mut r = Reader::new(&b);
            assert_eq!(r.uvarint(), Ok(u), "{b:?}");
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn overlong_varints_are_errors() {
        assert_eq!(Reader::new(&[0xff; 6]).uvarint(), Err(WireError::Varint(0)));
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x1f]).uvarint(),
            Err(WireError::Varint(0))
        );
        assert_eq!(
            Reader::new(&[0xff; 11]).varlong(),
            Err(WireError::Varint(0))
        );
        assert!(matches!(
            Reader::new(&[0x80]).uvarint(),
            Err(WireError::Short { .. })
        ));
    }

    #[test]
    fn strings_bytes_and_arrays() {
        let mut r = Reader::new(b"\x00\x02hi\xff\xff\x03ab\x00\x00\x00\x00\x01z\x00\x00\x00\x02");
        assert_eq!(r.string(false).unwrap(), Some(&b"hi"[..]));
        assert_eq!(r.string(false).unwrap(), None);
        assert_eq!(r.string(true).unwrap(), Some(&b"ab"[..]));
        assert_eq!(r.string(true).unwrap(), None);
        assert_eq!(r.records_field(false, false).unwrap(), (&b"z"[..], false));
        // An array of 2 elements of at least 4 bytes cannot fit in the 0 bytes left.
        assert!(matches!(
            r.array_len(false, 4),
            Err(WireError::Count { count: 2, .. })
        ));
    }

    #[test]
    fn huge_and_negative_lengths_are_rejected_without_allocating() {
        assert!(matches!(
            Reader::new(b"\x7f\xff\xff\xff").records_field(false, false),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            Reader::new(b"\xff\xfe").string(false),
            Err(WireError::Length { len: -2, .. })
        ));
        assert!(matches!(
            Reader::new(b"\x7f\xff\xff\xff").array_len(false, 1),
            Err(WireError::Count { .. })
        ));
    }

    #[test]
    fn a_cut_records_field_gives_what_is_there() {
        let mut r = Reader::new(b"\x00\x00\x00\x05ab");
        assert_eq!(r.records_field(false, true).unwrap(), (&b"ab"[..], true));
        assert!(matches!(
            Reader::new(b"\x00\x00\x00\x05ab").records_field(false, false),
            Err(WireError::Short { .. })
        ));
        assert_eq!(
            Reader::new(b"\xff\xff\xff\xff")
                .records_field(false, true)
                .unwrap(),
            (&b""[..], false)
        );
    }

    #[test]
    fn tagged_fields_are_walked() {
        let mut r = Reader::new(b"\x02\x00\x01a\x05\x02bc!");
        let mut seen = Vec::new();
        r.tagged_fields(|t, v| seen.push((t, v.to_vec()))).unwrap();
        assert_eq!(seen, vec![(0, b"a".to_vec()), (5, b"bc".to_vec())]);
        assert_eq!(r.rest(), b"!");
    }
}
