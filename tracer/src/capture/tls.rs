//! Uprobes on the TLS libraries of the processes that talk to Kafka, so their plaintext is
//! read (the kernel side is `tracer-ebpf/src/tls.rs`).
//!
//! A process is searched when the tracer starts (if it has a connection on a broker port) and
//! when one of its Kafka connections first carries bytes (at most every few seconds, for a
//! library loaded later). Its mappings (`/proc/PID/maps`) are searched for any object that
//! holds a TLS library the tracer reads (`probe_points`: OpenSSL, in the system's `libssl`, a
//! fork with the same symbols, or a copy linked into another object such as the `librdkafka`
//! the confluent-kafka wheel carries; Go's crypto/tls in a Go program). Each object is parsed
//! once, by device and inode, opened through `/proc/PID/root` (or `map_files` for a deleted
//! file) so containers work, and probed for every process that maps it: a process
//! started later is read from its first call, with no race against the tracer. The probes go
//! through the file the tracer opened (a short-lived process cannot take the path away
//! halfway), all of an object's or none, and a process that exits before its files are opened
//! leaves nothing remembered against them: the next process that maps them tries again. The kernel
//! notes the processes with a traced connection (at its first syscall, before any TLS call on
//! it); the probes return at once in any other process (the cost there is the breakpoint trap,
//! a microsecond or two per TLS call).

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::probe_points;
use crate::counters::Counter;
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::HashMap as BpfHashMap,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};

/// A process is searched again for TLS libraries (one it loaded later) at most this often.
const RESCAN: Duration = Duration::from_secs(10);

/// Objects, and processes searched, remembered at most.
const MAX_OBJECTS: usize = 4096;
const MAX_SEARCHED: usize = 16384;

/// A mapped object, as `/proc/PID/maps` names it: device and inode.
type ObjectId = (String, u64);

/// What an object is to the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Object {
    /// Defines no TLS function (or could not be read).
    Plain,
    /// Probed (for every process that maps it).
    Probed,
    /// Defines TLS functions, but a probe could not be attached (logged once).
    Failed,
}

/// A process searched: its start time (so a reused pid is searched afresh), when, and whether
/// it maps a probed object.
struct Searched {
    start: u64,
    at: Instant,
    probed: bool,
}

/// The TLS probes.
#[derive(Default)]
pub struct TlsProbes {
    objects: HashMap<ObjectId, Object>,
    searched: HashMap<u32, Searched>,
    attach_failures: u64,
    unreadable_objects: u64,
    unsearchable_processes: u64,
    /// The steps ([`Unread`], one bit each) whose refusal by permission was logged.
    refusals_said: u8,
    /// False when the kernel refused the programs: nothing is probed (said once at start).
    enabled: bool,
    /// The kernel has no `bpf_loop`: the return programs' bounded variants copy.
    bounded: bool,
}

impl TlsProbes {
    /// Loads the programs; without them (a kernel without uprobes) TLS stays unread, and the
    /// log says so once.
    pub fn load(ebpf: &mut Ebpf, bounded: bool) -> Self {
        let mut probes = Self {
            bounded,
            ..Self::default()
        };
        match load_programs(ebpf, bounded) {
            Ok(()) => probes.enabled = true,
            Err(e) => tracing::warn!(
                "TLS plaintext will not be read: {e:#} (uprobes need CONFIG_UPROBES and perf events)"
            ),
        }
        probes
    }

    /// Whether the programs loaded (TLS is read).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Searches process `tgid` for TLS libraries and probes those not probed yet, unless it
    /// was searched less than [`RESCAN`] ago. Returns whether it maps a probed library.
    pub fn probe(&mut self, ebpf: &mut Ebpf, tgid: u32) -> bool {
        self.search(ebpf, tgid, true)
    }

    /// Searches a process that just started a program: only the program and the loader are
    /// mapped yet, so the search is not remembered (the libraries it loads are found when it
    /// connects).
    pub fn probe_program(&mut self, ebpf: &mut Ebpf, tgid: u32) {
        self.search(ebpf, tgid, false);
    }

    fn search(&mut self, ebpf: &mut Ebpf, tgid: u32, remember: bool) -> bool {
        if !self.enabled {
            return false;
        }
        let Some(start) = start_time(tgid) else {
            return false;
        };
        if let Some(s) = self.searched.get(&tgid)
            && s.start == start
            && s.at.elapsed() < RESCAN
        {
            return s.probed;
        }
        let mappings = match mappings(tgid) {
            Ok(m) => m,
            Err(e) => {
                self.not_read(Unread::Mappings, &format!("process {tgid}"), &e);
                return false;
            }
        };
        let mut probed = false;
        for m in mappings {
            let state = match self.objects.get(&m.id) {
                Some(known) => *known,
                None => {
                    let Some(state) = self.add(ebpf, tgid, start, &m) else {
                        // Gone: its other objects cannot be opened through it either.
                        return false;
                    };
                    if self.objects.len() < MAX_OBJECTS {
                        self.objects.insert(m.id.clone(), state);
                    }
                    state
                }
            };
            probed |= state == Object::Probed;
        }
        if !remember {
            return probed;
        }
        if self.searched.len() >= MAX_SEARCHED {
            self.searched.clear();
        }
        self.searched.insert(
            tgid,
            Searched {
                start,
                at: Instant::now(),
                probed,
            },
        );
        probed
    }

    /// Parses an object first seen in process `tgid` (started at `start`) and, when it defines
    /// TLS functions, probes them. `None` when the process exited before its file was opened.
    fn add(&mut self, ebpf: &mut Ebpf, tgid: u32, start: u64, m: &Mapping) -> Option<Object> {
        let file = match self.open(tgid, start, m)? {
            Some(file) => file,
            None => return Some(Object::Plain),
        };
        let found = match probe_points::find(&file) {
            Ok(Some(f)) => f,
            Ok(None) => return Some(Object::Plain),
            Err(e) => {
                self.not_read(Unread::Object, &format!("{} (pid {tgid})", m.path), &e);
                return Some(Object::Plain);
            }
        };
        // The kernel resolves the path when it creates a probe: the tracer's own descriptor
        // still names the file when the process, and its /proc/PID/root, are gone by then.
        let opened = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let mut links = Vec::with_capacity(found.points.len());
        for (program, offsets) in &found.points {
            let program = probe_points::program(program, self.bounded);
            match attach(ebpf, program, offsets, &opened) {
                Ok(link) => links.push((program, link)),
                Err(e) => {
                    // All or none: an object half probed would miss the returns of the calls
                    // it copies, or copy calls twice once probed again.
                    detach(ebpf, links);
                    self.not_read(Unread::Probe, &format!("{} (probe {program})", m.path), &e);
                    return Some(Object::Failed);
                }
            }
        }
        tracing::info!(pid = tgid, object = %m.path, library = ?found.library, "reading TLS plaintext through this object");
        Some(Object::Probed)
    }

    /// Opens a mapped object through process `tgid` (started at `start`); `Some(None)` when it
    /// cannot be read, `None` when the process exited first: that says nothing about the object
    /// (counted with the processes not searched), and the next process that maps it tries again.
    fn open(&mut self, tgid: u32, start: u64, m: &Mapping) -> Option<Option<std::fs::File>> {
        let path = m.open_path(tgid);
        let e = match std::fs::File::open(&path) {
            Ok(file) => return Some(Some(file)),
            Err(e) => anyhow::Error::new(e).context(format!("opening {}", path.display())),
        };
        if start_time(tgid) != Some(start) {
            self.not_read(Unread::Mappings, &format!("process {tgid} (exited)"), &e);
            return None;
        }
        self.not_read(Unread::Object, &format!("{} (pid {tgid})", m.path), &e);
        Some(None)
    }

    /// Counts a failed step and logs why TLS through `what` is not read. A refusal by permission is logged once for
    /// each step with the capability that fixes it, then at debug level: a node without the
    /// capability would otherwise log a line per library of every process. A mapping that
    /// could not be read otherwise is a process gone meanwhile (debug); other failures warn.
    fn not_read(&mut self, step: Unread, what: &str, e: &anyhow::Error) {
        *match step {
            Unread::Mappings => &mut self.unsearchable_processes,
            Unread::Object => &mut self.unreadable_objects,
            Unread::Probe => &mut self.attach_failures,
        } += 1;
        let denied = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        });
        let bit = 1 << step as u8;
        if denied && self.refusals_said & bit == 0 {
            self.refusals_said |= bit;
            let (fix, counter) = step.fix();
            tracing::warn!(
                "TLS through {what} is not read: {e:#} ({fix}; further refusals are logged at debug level and counted in {counter})"
            );
        } else if denied || matches!(step, Unread::Mappings) {
            tracing::debug!("TLS through {what} is not read: {e:#}");
        } else {
            tracing::warn!("TLS through {what} is not read: {e:#}");
        }
    }

    /// The probes' counters, for the stats line and `/metrics`.
    pub fn named(&self) -> Vec<Counter> {
        let count = |s| self.objects.values().filter(|o| **o == s).count() as u64;
        vec![
            Counter::level(
                "tls_probed_objects",
                count(Object::Probed),
                "TLS libraries (objects with OpenSSL's functions) probed",
            ),
            Counter::count(
                "tls_probe_failures",
                self.attach_failures,
                "TLS probes that could not be attached (the log names the library)",
            ),
            Counter::count(
                "tls_unreadable_objects",
                self.unreadable_objects,
                "mapped objects that could not be read to look for TLS functions",
            ),
            Counter::count(
                "tls_unsearchable_processes",
                self.unsearchable_processes,
                "processes not searched for TLS libraries: gone before their mappings or files were read, or refused (CAP_SYS_PTRACE)",
            ),
        ]
    }
}

/// The step of probing a process that failed.
#[derive(Clone, Copy)]
enum Unread {
    /// Reading its mappings.
    Mappings,
    /// Opening a mapped object through `/proc/PID/root`.
    Object,
    /// Attaching a uprobe to an object.
    Probe,
}

impl Unread {
    /// What the kernel wants for the step, and the counter of its failures.
    fn fix(self) -> (&'static str, &'static str) {
        match self {
            Self::Mappings => (
                "reading another process's mappings needs CAP_SYS_PTRACE",
                "tls_unsearchable_processes",
            ),
            Self::Object => (
                "opening another process's files through /proc/PID/root needs CAP_SYS_PTRACE",
                "tls_unreadable_objects",
            ),
            Self::Probe => (
                "creating uprobes needs CAP_SYS_ADMIN on current kernels",
                "tls_probe_failures",
            ),
        }
    }
}

/// Notes processes that have traced connections already (they predate the tracer) in the
/// kernel's `KAFKA_TGIDS`, whose TLS calls the probes read.
pub fn note_processes(ebpf: &mut Ebpf, tgids: &[u32]) -> anyhow::Result<()> {
    let mut map: BpfHashMap<_, u32, u8> =
        BpfHashMap::try_from(ebpf.map_mut("KAFKA_TGIDS").context("no map KAFKA_TGIDS")?)?;
    for t in tgids {
        map.insert(t, &1, 0)?;
    }
    Ok(())
}

fn load_programs(ebpf: &mut Ebpf, bounded: bool) -> anyhow::Result<()> {
    let load = |ebpf: &mut Ebpf, name: &str| -> anyhow::Result<()> {
        uprobe(ebpf, name)?
            .load()
            .with_context(|| format!("loading {name}"))
    };
    for name in probe_points::PROGRAMS {
        load(ebpf, probe_points::program(name, bounded))?;
    }
    if bounded {
        // The continuation of the return programs' bounded walks.
        load(ebpf, "copy_more_probe")?;
        let fd = uprobe(ebpf, "copy_more_probe")?.fd()?.try_clone()?;
        super::set_continuation(ebpf, "COPY_MORE_PROBE", &fd)?;
    }
    Ok(())
}

/// The uprobe program `name`.
fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("eBPF object has no program {name}"))?
        .try_into()?)
}

/// Attaches `program` at `offsets` of the object at `path`, for every process.
fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    offsets: &[u64],
    path: &Path,
) -> anyhow::Result<UProbeLinkId> {
    let link = uprobe(ebpf, program)?.attach(
        offsets
            .iter()
            .map(|o| UProbeAttachLocation::AbsoluteOffset(*o)),
        path,
        UProbeScope::AllProcesses,
    )?;
    Ok(link)
}

/// Detaches the probes already attached to an object whose other probes failed.
fn detach(ebpf: &mut Ebpf, links: Vec<(&str, UProbeLinkId)>) {
    for (program, link) in links {
        if let Err(e) = uprobe(ebpf, program).and_then(|p| Ok(p.detach(link)?)) {
            tracing::warn!("detaching {program} from an object half probed: {e:#}");
        }
    }
}

/// A file-backed executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    id: ObjectId,
    /// The path in the process's own mount namespace.
    path: String,
    /// `start-end`, for `/proc/PID/map_files` when the file was deleted.
    range: String,
    deleted: bool,
}

impl Mapping {
    /// The path to open the object at from the tracer: through the process's root, so a
    /// container's files are found.
    fn open_path(&self, tgid: u32) -> PathBuf {
        if self.deleted {
            PathBuf::from(format!("/proc/{tgid}/map_files/{}", self.range))
        } else {
            PathBuf::from(format!("/proc/{tgid}/root{}", self.path))
        }
    }
}

/// The executable file mappings of a process, one per object.
fn mappings(tgid: u32) -> anyhow::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/maps"))?;
    Ok(parse_maps(&text))
}

/// Parses `/proc/PID/maps`: `start-end perms offset dev inode path`; keeps executable file
/// mappings, one per (device, inode).
fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut seen = HashSet::new();
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(6, ' ');
            let (range, perms, _offset, dev, inode) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let path = f.next()?.trim_start();
            let inode: u64 = inode.parse().ok()?;
            if !perms.contains('x') || inode == 0 || !path.starts_with('/') {
                return None;
            }
            let (path, deleted) = match path.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (path, false),
            };
            let id = (dev.to_string(), inode);
            seen.insert(id.clone()).then(|| Mapping {
                id,
                path: path.to_string(),
                range: range.to_string(),
                deleted,
            })
        })
        .collect()
}

/// Field 22 of `/proc/PID/stat` (after the parenthesised name, which may hold spaces).
fn start_time(tgid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_each_executable_object_once() {
        let text = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 1234 /usr/bin/python3.11
55d0a0001000-55d0a0100000 r-xp 00001000 fd:01 1234 /usr/bin/python3.11
7f0000000000-7f0000100000 r-xp 00020000 fd:01 77   /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000100000-7f0000200000 r-xp 00120000 fd:01 77   /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000300000-7f0000301000 r-xp 00000000 00:00 0    [vdso]
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
7f0000500000-7f0000600000 r-xp 00000000 00:2a 99   /tmp/librdkafka.so (deleted)
";
        let m = parse_maps(text);
        let paths: Vec<(&str, bool)> = m.iter().map(|m| (m.path.as_str(), m.deleted)).collect();
        assert_eq!(
            paths,
            [
                ("/usr/bin/python3.11", false),
                ("/usr/lib/x86_64-linux-gnu/libssl.so.3", false),
                ("/tmp/librdkafka.so", true)
            ]
        );
        assert_eq!(
            m[2].open_path(42),
            PathBuf::from("/proc/42/map_files/7f0000500000-7f0000600000")
        );
        assert_eq!(
            m[1].open_path(42),
            PathBuf::from("/proc/42/root/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
    }

    /// The mappings of a process that exits between reading its maps and opening its files:
    /// the failure is the process's, not the object's.
    #[test]
    fn a_process_that_exits_mid_search_leaves_its_objects_to_the_next() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let tgid = child.id();
        let start = start_time(tgid).unwrap();
        let maps = (0..100)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(10));
                mappings(tgid).unwrap()
            })
            .find(|m| m.iter().any(|m| m.path.contains("libc")))
            .expect("sleep maps libc");
        let mut probes = TlsProbes::default();
        assert!(matches!(probes.open(tgid, start, &maps[0]), Some(Some(_))));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(probes.open(tgid, start, &maps[0]).is_none());
        assert_eq!(probes.unsearchable_processes, 1);
        assert_eq!(probes.unreadable_objects, 0);
        // A process still there whose file cannot be opened: the object is unreadable.
        let me = std::process::id();
        let missing = Mapping {
            path: "/nonexistent/libssl.so.3".into(),
            ..maps[0].clone()
        };
        assert!(matches!(
            probes.open(me, start_time(me).unwrap(), &missing),
            Some(None)
        ));
        assert_eq!(probes.unreadable_objects, 1);
    }

    #[test]
    fn start_times_tell_processes_apart() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
