//! Where in an object file the TLS probes go, as (program, file offsets) pairs:
//! - OpenSSL (and forks, and copies linked into other objects): the entries of `SSL_write`,
//!   `SSL_write_ex`, `SSL_read`, `SSL_read_ex` and `SSL_set_fd`, and return probes on the four
//!   data calls, from the dynamic or the full symbol table;
//! - Go's `crypto/tls` (1.18 on: the register ABI, and a build-info layout that says so): the
//!   entries of `(*Conn).Write` and `(*Conn).Read` and each of their return instructions,
//!   found by decoding the functions' machine code (x86-64): Go moves goroutine stacks, which
//!   breaks the return address a uretprobe plants. A stripped program is read through Go's own
//!   function table (`.gopclntab`), which the runtime needs and stripping keeps.
//!
//! The object is mapped, not read: only the pages of its symbol tables and of the two Go
//! functions are touched.

use anyhow::Context as _;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// The probes of an OpenSSL-like library, by program: the symbols each is attached to. The
/// return programs serve both directions (the entry stashed which).
const OPENSSL: [(&str, &[&str]); 7] = [
    ("ssl_write", &["SSL_write"]),
    ("ssl_write_ex", &["SSL_write_ex"]),
    ("ssl_read", &["SSL_read"]),
    ("ssl_read_ex", &["SSL_read_ex"]),
    ("ssl_ret", &["SSL_write", "SSL_read"]),
    ("ssl_ex_ret", &["SSL_write_ex", "SSL_read_ex"]),
    ("ssl_set_fd", &["SSL_set_fd"]),
];

/// Go's functions and their entry programs; every return instruction of both gets
/// [`GO_RETURN`].
const GO: [(&str, &str); 2] = [
    ("crypto/tls.(*Conn).Write", "go_tls_write"),
    ("crypto/tls.(*Conn).Read", "go_tls_read"),
];
const GO_RETURN: &str = "go_tls_ret";

/// Every TLS probe program, to load them once (the return programs as [`program`] names them).
pub const PROGRAMS: [&str; 10] = [
    "ssl_write",
    "ssl_write_ex",
    "ssl_read",
    "ssl_read_ex",
    "ssl_ret",
    "ssl_ex_ret",
    "ssl_set_fd",
    "go_tls_write",
    "go_tls_read",
    GO_RETURN,
];

/// The program that serves probe point `base` on this kernel: the return programs, which copy
/// the plaintext, have a variant for kernels without `bpf_loop` (`bounded`).
pub fn program(base: &'static str, bounded: bool) -> &'static str {
    match (base, bounded) {
        ("ssl_ret", true) => "ssl_ret_bounded",
        ("ssl_ex_ret", true) => "ssl_ex_ret_bounded",
        (GO_RETURN, true) => "go_tls_ret_bounded",
        (other, _) => other,
    }
}

/// The TLS library an object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    OpenSsl,
    GoTls,
}

/// Where the probes of one object go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoints {
    pub library: Library,
    /// (program, file offsets), each with at least one offset.
    pub points: Vec<(&'static str, Vec<u64>)>,
}

/// The probe points of an object the caller opened, or `None` when it holds no TLS library the
/// tracer reads (a Go program built before 1.18 is reported as an error, to be logged).
pub fn find(file: &std::fs::File) -> anyhow::Result<Option<ProbePoints>> {
    // SAFETY: a read-only private mapping; a file changed under it can only give wrong
    // offsets, which is no worse than a stale library.
    let map = unsafe { memmap2::Mmap::map(file) }.context("mapping it")?;
    let Ok(elf) = object::File::parse(&*map) else {
        return Ok(None);
    };
    // One pass over the symbol tables (a Go program has tens of thousands of symbols, and the
    // first run of a new program races the tracer to its first TLS call).
    let functions = Functions::of(&elf);
    if let Some(points) = openssl(&functions) {
        return Ok(Some(points));
    }
    go(&elf, &functions, &map)
}

/// The functions of interest an object defines: name -> (file offset, size).
struct Functions(std::collections::HashMap<&'static str, (u64, u64)>);

impl Functions {
    fn of(elf: &object::File<'_>) -> Self {
        let wanted = |name: &str| -> Option<&'static str> {
            OPENSSL
                .iter()
                .flat_map(|(_, symbols)| symbols.iter().copied())
                .chain(GO.iter().map(|(n, _)| *n))
                .find(|w| *w == name)
        };
        let mut found = std::collections::HashMap::new();
        for sym in elf.dynamic_symbols().chain(elf.symbols()) {
            let Some(name) = sym.name().ok().and_then(wanted) else {
                continue;
            };
            if !sym.is_definition() || found.contains_key(name) {
                continue;
            }
            let Some(section) = sym
                .section_index()
                .and_then(|i| elf.section_by_index(i).ok())
            else {
                continue;
            };
            let (Some((file_offset, _)), Some(off)) = (
                section.file_range(),
                sym.address().checked_sub(section.address()),
            ) else {
                continue;
            };
            found.insert(name, (file_offset + off, sym.size()));
        }
        Self(found)
    }

    fn get(&self, name: &str) -> Option<(u64, u64)> {
        self.0.get(name).copied()
    }
}

fn openssl(functions: &Functions) -> Option<ProbePoints> {
    if functions.get("SSL_write").is_none() && functions.get("SSL_read").is_none() {
        return None;
    }
    let points = OPENSSL
        .iter()
        .map(|(program, symbols)| {
            let offsets: Vec<u64> = symbols
                .iter()
                .filter_map(|s| functions.get(s).map(|(o, _)| o))
                .collect();
            (*program, offsets)
        })
        .filter(|(_, offsets)| !offsets.is_empty())
        .collect();
    Some(ProbePoints {
        library: Library::OpenSsl,
        points,
    })
}

fn go(
    elf: &object::File<'_>,
    functions: &Functions,
    data: &[u8],
) -> anyhow::Result<Option<ProbePoints>> {
    let Some(buildinfo) = elf.section_by_name(".go.buildinfo") else {
        return Ok(None);
    };
    // A stripped program has no symbol table; Go's own function table (.gopclntab) remains.
    let stripped;
    let functions = if functions.get(GO[0].0).is_none() && functions.get(GO[1].0).is_none() {
        stripped = Functions(gopclntab(elf, &GO.map(|(n, _)| n)).unwrap_or_default());
        &stripped
    } else {
        functions
    };
    if functions.get(GO[0].0).is_none() && functions.get(GO[1].0).is_none() {
        return Ok(None);
    }
    let info = buildinfo.data().unwrap_or_default();
    anyhow::ensure!(
        go_register_abi(info),
        "a Go program built before Go 1.18: its crypto/tls is not read (the tracer reads Go's register ABI)"
    );
    anyhow::ensure!(
        elf.architecture() == object::Architecture::X86_64,
        "Go's crypto/tls is read on x86-64 only"
    );
    let mut points = Vec::new();
    let mut returns = Vec::new();
    for (name, program) in GO {
        let Some((offset, size)) = functions.get(name) else {
            continue;
        };
        let code = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(o, s)| data.get(o..o.checked_add(s)?))
            .with_context(|| format!("{name} lies outside the file"))?;
        let rets = return_offsets(code);
        anyhow::ensure!(!rets.is_empty(), "{name} has no return instruction");
        points.push((program, vec![offset]));
        returns.extend(rets.into_iter().map(|r| offset + r));
    }
    points.push((GO_RETURN, returns));
    Ok(Some(ProbePoints {
        library: Library::GoTls,
        points,
    }))
}

/// The `wanted` functions in Go's function table (`.gopclntab`, Go 1.18 on), as (file offset,
/// size): for programs whose symbol table was stripped. The table's header gives the number
/// of functions and where the names and the `functab` (entry offset from the start of `.text`,
/// and the offset of each function's `_func`, whose second word indexes its name) lie; a
/// function ends where the next begins.
fn gopclntab(
    elf: &object::File<'_>,
    wanted: &[&'static str],
) -> Option<std::collections::HashMap<&'static str, (u64, u64)>> {
    let tab = elf.section_by_name(".gopclntab")?.data().ok()?;
    let text = elf.section_by_name(".text")?;
    let (text_file_offset, _) = text.file_range()?;
    let u32_at = |at: usize| Some(u32::from_le_bytes(tab.get(at..at + 4)?.try_into().ok()?));
    let word = |at: usize| Some(u64::from_le_bytes(tab.get(at..at + 8)?.try_into().ok()?));
    // Go 1.18-1.19 and 1.20 on; pointers of 8 bytes.
    let magic = u32_at(0)?;
    if !matches!(magic, 0xffff_fff0 | 0xffff_fff1) || *tab.get(7)? != 8 {
        return None;
    }
    let nfunc = usize::try_from(word(8)?).ok()?;
    let funcnames = usize::try_from(word(32)?).ok()?;
    let pcln = usize::try_from(word(64)?).ok()?;
    let mut found = std::collections::HashMap::new();
    for i in 0..nfunc.min(tab.len() / 8) {
        let entry_at = pcln.checked_add(i.checked_mul(8)?)?;
        let (entry, funcoff) = (u32_at(entry_at)?, u32_at(entry_at + 4)?);
        let next = u32_at(entry_at + 8)?;
        let name_off = u32_at(pcln.checked_add(funcoff as usize)?.checked_add(4)?)?;
        let name_at = funcnames.checked_add(name_off as usize)?;
        let name = tab.get(name_at..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        if let Some(w) = wanted.iter().find(|w| w.as_bytes() == name) {
            found.insert(
                *w,
                (
                    text_file_offset + u64::from(entry),
                    u64::from(next.saturating_sub(entry)),
                ),
            );
            if found.len() == wanted.len() {
                break;
            }
        }
    }
    Some(found)
}

/// Offsets of the return instructions in x86-64 machine code, decoded instruction by
/// instruction (a byte 0xc3 inside another instruction is not one).
fn return_offsets(code: &[u8]) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::new();
    for instruction in &mut decoder {
        if instruction.mnemonic() == Mnemonic::Ret {
            out.push(instruction.ip());
        }
    }
    out
}

/// Whether a `.go.buildinfo` section says Go 1.18 or later (build info with inline strings,
/// flag 2 of its header), whose functions take their arguments in registers.
fn go_register_abi(info: &[u8]) -> bool {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    info.starts_with(MAGIC) && info.get(15).is_some_and(|flags| flags & 2 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_are_found_by_decoding_not_by_bytes() {
        // mov eax, 0xc3c3c3c3 ; ret ; int3 ; movabs rax, 0xc3 ; ret 8
        let code = [
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xcc, 0x48, 0xb8, 0xc3, 0, 0, 0, 0, 0, 0, 0, 0xc2,
            0x08, 0x00,
        ];
        assert_eq!(return_offsets(&code), [5, 17]);
    }

    #[test]
    fn the_register_abi_is_told_by_the_build_info() {
        let mut info = b"\xff Go buildinf:".to_vec();
        info.extend([8, 2]);
        assert!(go_register_abi(&info));
        info[15] = 0;
        assert!(!go_register_abi(&info));
        assert!(!go_register_abi(b"garbage"));
    }

    /// The system's libssl (exported symbols).
    #[test]
    fn openssl_probes_are_found_in_libssl() {
        let lib = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
        .expect("Debian's libssl3 (a dependency of the test machine's apt)");
        let p = find(&std::fs::File::open(lib).unwrap())
            .unwrap()
            .expect("libssl defines SSL_write");
        assert_eq!(p.library, Library::OpenSsl);
        let programs: Vec<&str> = p.points.iter().map(|(n, _)| *n).collect();
        assert_eq!(programs, OPENSSL.map(|(p, _)| p));
        assert!(p.points.iter().all(|(_, o)| o.iter().all(|o| *o > 0)));
        let rets = &p.points.iter().find(|(n, _)| *n == "ssl_ret").unwrap().1;
        assert_eq!(rets.len(), 2, "SSL_write and SSL_read");
        // A program that only imports them, or defines none, has none.
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(find(&exe).unwrap(), None);
    }
}
