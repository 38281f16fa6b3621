//! Field offsets of `struct sock_common` from the running kernel's BTF.
//!
//! In sock mode the eBPF side reads the endpoints of connections that were established before
//! the tracer started straight from the socket. Those offsets change with kernel version and
//! configuration, so they come from `/sys/kernel/btf/vmlinux`, not from a header. Only the small
//! part of the BTF format needed to walk struct members is parsed here (aya keeps its parser's
//! type lookups private).

use std::collections::HashMap;

use tracer_common::SockOffsets;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("BTF data is truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("not BTF data (bad magic)")]
    BadMagic,
    #[error("BTF has no `struct {0}`")]
    NoStruct(&'static str),
    #[error("`struct sock_common` has no field `{0}`")]
    NoField(&'static str),
    #[error("field `{0}` lies beyond 64 KiB into `struct sock_common`")]
    FarField(&'static str),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

/// One type's entry: its name, kind, member count and where its members start.
struct Entry {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    body: usize,
}

/// The BTF's sections and where each type's entry starts, by type id. Entries are read where
/// they lie when asked for: the kernel's BTF holds over a hundred thousand types, and a tree
/// of them (a `Vec` of members each) held about 8 MiB at start-up, the daemon's peak memory.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of each type id's entry (id 0 is `void`, which has none).
    starts: Vec<u32>,
}

/// Anonymous structs and unions nested deeper than this are not looked into: the kernel's
/// nest two deep, and a hostile blob naming itself as its own member would recurse forever.
const MAX_NESTING: u32 = 8;

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at.saturating_add(4))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed(at))
}

fn entry_at(types: &[u8], at: usize) -> Result<Entry, BtfError> {
    let info = u32_at(types, at + 4)?;
    Ok(Entry {
        name_off: u32_at(types, at)?,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        body: at + 12,
    })
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::BadMagic);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed(16))?;
            let end = start.checked_add(len).ok_or(BtfError::Malformed(16))?;
            data.get(start..end).ok_or(BtfError::Malformed(start))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;

        // Type ids count from 1 in section order; a type's size is 12 bytes and what its kind
        // adds after them.
        let mut starts = vec![0];
        let mut at = 0;
        while at < types.len() {
            let e = entry_at(types, at)?;
            starts.push(u32::try_from(at).map_err(|_| BtfError::Malformed(at))?);
            at = e.body
                + match e.kind {
                    KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                    KIND_ARRAY => 12,
                    KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => e.vlen * 12,
                    KIND_ENUM | KIND_FUNC_PROTO => e.vlen * 8,
                    _ => 0,
                };
        }
        Ok(Self {
            types,
            strings,
            starts,
        })
    }

    fn entry(&self, id: u32) -> Option<Entry> {
        let at = *self.starts.get(id as usize).filter(|_| id != 0)?;
        entry_at(self.types, at as usize).ok()
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn struct_named(&self, name: &'static str) -> Result<Entry, BtfError> {
        (1..self.starts.len() as u32)
            .filter_map(|id| self.entry(id))
            .find(|e| e.kind == KIND_STRUCT && self.name(e.name_off) == name.as_bytes())
            .ok_or(BtfError::NoStruct(name))
    }

    fn member(&self, e: &Entry, i: usize) -> Result<Member, BtfError> {
        let m = e.body + i * 12;
        let raw = u32_at(self.types, m + 8)?;
        Ok(Member {
            name_off: u32_at(self.types, m)?,
            type_id: u32_at(self.types, m + 4)?,
            // With kind_flag the top 8 bits are a bitfield size.
            bit_offset: if e.kind_flag { raw & 0x00ff_ffff } else { raw },
        })
    }

    /// Byte offsets of every named field of `e`, looking through anonymous structs and unions
    /// (`skc_daddr` sits in an anonymous struct inside an anonymous union).
    fn field_offsets(
        &self,
        e: &Entry,
        base_bits: u32,
        depth: u32,
        out: &mut HashMap<Vec<u8>, u32>,
    ) -> Result<(), BtfError> {
        for i in 0..e.vlen {
            let m = self.member(e, i)?;
            let bits = base_bits.saturating_add(m.bit_offset);
            let name = self.name(m.name_off);
            if name.is_empty() {
                if let Some(inner) = self.entry(m.type_id)
                    && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && depth < MAX_NESTING
                {
                    self.field_offsets(&inner, bits, depth + 1, out)?;
                }
            } else {
                out.entry(name.to_vec()).or_insert(bits / 8);
            }
        }
        Ok(())
    }
}

/// Offsets of the `struct sock_common` fields the capture reads, from raw BTF bytes.
pub fn sock_offsets(btf: &[u8]) -> Result<SockOffsets, BtfError> {
    let btf = Btf::parse(btf)?;
    let sock_common = btf.struct_named("sock_common")?;
    let mut fields = HashMap::new();
    btf.field_offsets(&sock_common, 0, 0, &mut fields)?;
    let get = |name: &'static str| -> Result<Option<u16>, BtfError> {
        fields
            .get(name.as_bytes())
            .map(|&o| u16::try_from(o).map_err(|_| BtfError::FarField(name)))
            .transpose()
    };
    let need = |name: &'static str| get(name)?.ok_or(BtfError::NoField(name));
    let v6_daddr = get("skc_v6_daddr")?;
    let v6_rcv_saddr = get("skc_v6_rcv_saddr")?;
    Ok(SockOffsets {
        daddr: need("skc_daddr")?,
        rcv_saddr: need("skc_rcv_saddr")?,
        dport: need("skc_dport")?,
        num: need("skc_num")?,
        family: need("skc_family")?,
        v6_daddr: v6_daddr.unwrap_or(0),
        v6_rcv_saddr: v6_rcv_saddr.unwrap_or(0),
        has_v6: u16::from(v6_daddr.is_some() && v6_rcv_saddr.is_some()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct sock_common { union { u64 skc_addrpair; struct { u32
    /// skc_daddr; u32 skc_rcv_saddr; }; }; u32 skc_hash; u16 skc_dport; u16 skc_num; u16
    /// skc_family; }` (the real layout's first fields), with or without the v6 fields.
    fn blob(with_v6: bool) -> Vec<u8> {
        let mut strings = b"\0".to_vec();
        let mut name = |s: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let (n_int, n_sc, n_pair, n_d, n_r, n_hash, n_dport, n_num, n_fam, n_v6d, n_v6r) = (
            name("int"),
            name("sock_common"),
            name("skc_addrpair"),
            name("skc_daddr"),
            name("skc_rcv_saddr"),
            name("skc_hash"),
            name("skc_dport"),
            name("skc_num"),
            name("skc_family"),
            name("skc_v6_daddr"),
            name("skc_v6_rcv_saddr"),
        );
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // 1: int (4 bytes)
        push(&[n_int, KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { skc_daddr@0; skc_rcv_saddr@32 bits }
        push(&[0, (KIND_STRUCT << 24) | 2, 8, n_d, 1, 0, n_r, 1, 32]);
        // 3: anonymous union { skc_addrpair; struct 2 }
        push(&[0, (KIND_UNION << 24) | 2, 8, n_pair, 1, 0, 0, 2, 0]);
        // 4: struct sock_common
        let mut sc = vec![n_sc, (KIND_STRUCT << 24) | if with_v6 { 7 } else { 5 }, 96];
        sc.extend([
            0, 3, 0, n_hash, 1, 64, n_dport, 1, 96, n_num, 1, 112, n_fam, 1, 128,
        ]);
        if with_v6 {
            sc.extend([n_v6d, 1, 56 * 8, n_v6r, 1, 72 * 8]);
        }
        push(&sc);
        let mut out = Vec::new();
        out.extend([0x9f, 0xeb, 1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(w.to_le_bytes());
        }
        out.extend(&types);
        out.extend(&strings);
        out
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let off = sock_offsets(&blob(true)).unwrap();
        assert_eq!(
            off,
            SockOffsets {
                daddr: 0,
                rcv_saddr: 4,
                dport: 12,
                num: 14,
                family: 16,
                v6_daddr: 56,
                v6_rcv_saddr: 72,
                has_v6: 1,
            }
        );
    }

    #[test]
    fn kernel_without_ipv6_has_no_v6_offsets() {
        let off = sock_offsets(&blob(false)).unwrap();
        assert_eq!((off.has_v6, off.family), (0, 16));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let good = blob(true);
        for cut in 0..good.len() {
            let _ = sock_offsets(&good[..cut]);
        }
        assert!(matches!(sock_offsets(b"nope"), Err(BtfError::BadMagic)));
    }

    #[test]
    fn a_struct_nesting_itself_ends() {
        // sock_common's first member, the anonymous union (type 3), made sock_common (type 4):
        // header 24 bytes, types 1 to 3 take 88, then sock_common's 12 and the member's name.
        let mut b = blob(true);
        let at = 24 + 88 + 12 + 4;
        assert_eq!(u32_at(&b, at).unwrap(), 3);
        b[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            sock_offsets(&b),
            Err(BtfError::NoField("skc_daddr"))
        ));
    }

    #[test]
    fn running_kernel_btf_parses() {
        // Every kernel this tracer supports publishes BTF; CI runs on such a kernel.
        let data = std::fs::read(VMLINUX_BTF).expect("kernel BTF at /sys/kernel/btf/vmlinux");
        let off = sock_offsets(&data).unwrap();
        // These four have sat at the head of struct sock_common since long before BTF existed.
        assert_eq!(
            (off.daddr, off.rcv_saddr, off.dport, off.num),
            (0, 4, 12, 14)
        );
        assert_eq!(off.has_v6, 1);
    }
}
