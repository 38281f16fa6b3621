//! Kernel capture: loads the eBPF programs, attaches them to tracepoints and hands the records
//! from the ring buffer to the next stage.
//!
//! Two ways of identifying connections, chosen by [`CaptureMode`]:
//! - **sock** (kernels with `sock:sock_send_length`, about 6.3 on): each syscall is tied to its
//!   `struct sock`; `sock:inet_sock_set_state` reports opens and `tcp:tcp_destroy_sock` closes,
//!   and connections that predate the tracer are read from the socket itself (offsets from BTF).
//! - **fd** (older kernels: Ubuntu 22.04's 5.15, RHEL 9, Amazon Linux 2023's 6.1): connections are
//!   `(tgid, fd)` pairs learnt from connect/accept/bind/close, seeded from /proc at startup.

pub mod check;
mod preflight;
mod probe_points;
mod procfs;
mod record;
mod tls;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{ProgramFd, TracePoint},
};
use tokio::io::unix::AsyncFd;
use tracer_common::{Config, ConnState, counter, flags, mode, skim, track};

use crate::counters::Counter;

pub use procfs::{ProcSocket, tcp_sockets};
pub use record::{
    ConnEventExt, DataRecord, RingRecord, RingRecordError, Run, Runs, comm_str, endpoints,
};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// How connections are identified (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureMode {
    /// sock when the kernel has the sock length tracepoints and BTF, else fd.
    Auto,
    /// Tie syscalls to sockets with `sock:sock_{send,recv}_length` (Linux 6.3 on).
    Sock,
    /// Track connections by (process, file descriptor): any kernel with syscall tracepoints.
    Fd,
}

/// How the kernel copies a syscall's bytes (see `tracer-ebpf/src/copy.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CopyPath {
    /// `bpf_loop` when the kernel has it (5.17 on, or a backport), else bounded.
    Auto,
    /// One `bpf_loop` call per syscall.
    Loop,
    /// Bounded loops continued by tail calls: any kernel with BPF ring buffers (5.10 on).
    Bounded,
}

/// Which records' headers the tracer reads (`--record-headers`): headers carry the producers'
/// trace contexts; offsets and counts, which link sends to polls, come from batch headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordHeaders {
    /// Every record's (compressed batches are copied whole: their headers are compressed).
    All,
    /// Uncompressed records' only: the kernel skips compressed batches' records.
    Uncompressed,
    /// None: the kernel skips every batch's records and copies its header.
    None,
}

/// What to capture. The daemon builds this from its flags; tests build it directly.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub mode: CaptureMode,
    /// Connections to one of these remote ports are captured in full. Empty: every TCP
    /// connection is.
    pub ports: Vec<u16>,
    /// Also capture connections with one of `ports` as local port (this host is the broker).
    pub server_side: bool,
    /// Sniff connections on other ports and capture those that userspace finds to be Kafka.
    pub detect_kafka: bool,
    /// Bytes per direction sent to userspace for a sniffed connection before its verdict.
    pub sniff_bytes: u32,
    /// Only these processes (empty: all).
    pub pids: Vec<u32>,
    /// Only these cgroups, by id (the inode number of the cgroup v2 directory; empty: all).
    pub cgroup_ids: Vec<u64>,
    /// Cap on bytes copied per syscall; the excess is counted as truncated.
    pub max_bytes_per_syscall: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Connections the kernel follows at once (its `CONNS` table); past it, the least recently
    /// used is dropped, which the daemon counts when that connection goes idle.
    pub kernel_connections: u32,
    /// Leave out this process's own connections (the daemon's Kafka requests and exports).
    /// Off only where this process is itself the traffic under test.
    pub exclude_self: bool,
    /// Read TLS plaintext from the TLS libraries of processes that talk to Kafka (uprobes).
    pub tls: bool,
    pub copy_path: CopyPath,
    /// The kernel walks client produce requests and skips the values of uncompressed records
    /// (known gaps); otherwise every byte is copied.
    pub selective_copy: bool,
    /// Records whose headers are read; any but `All` walks produce requests (as
    /// `selective_copy` does) and skips the other records whole.
    pub record_headers: RecordHeaders,
}

/// The capture's defaults that `--help` also shows, written once.
pub const DEFAULT_SNIFF_BYTES: u32 = 1024;
pub const DEFAULT_MAX_BYTES_PER_SYSCALL: u32 = 16 << 20;
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;
pub use tracer_common::DEFAULT_KERNEL_CONNECTIONS;
/// Below this, the kernel's LRU lists (a batch of free entries per CPU) would drop connections
/// long before the table is full.
const MIN_KERNEL_CONNECTIONS: u32 = 64;

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            mode: CaptureMode::Auto,
            ports: vec![9092],
            server_side: false,
            detect_kafka: true,
            sniff_bytes: DEFAULT_SNIFF_BYTES,
            pids: Vec::new(),
            cgroup_ids: Vec::new(),
            max_bytes_per_syscall: DEFAULT_MAX_BYTES_PER_SYSCALL,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            kernel_connections: DEFAULT_KERNEL_CONNECTIONS,
            exclude_self: true,
            tls: true,
            copy_path: CopyPath::Auto,
            selective_copy: false,
            record_headers: RecordHeaders::All,
        }
    }
}

/// The data syscalls whose buffers are copied, as (entry program, tracepoint suffix).
const DATA_SYSCALLS: [&str; 10] = [
    "write", "writev", "sendto", "sendmsg", "sendmmsg", "read", "readv", "recvfrom", "recvmsg",
    "recvmmsg",
];
/// fd mode: connection setup syscalls whose exits go to the shared `sys_exit` program.
const SETUP_SYSCALLS: [&str; 4] = ["connect", "accept", "accept4", "bind"];
/// sock mode: the socket tracepoints, the two that copy (each served by the program of its
/// name, in the copy variant) and the two that open and close connections.
const SOCK_TRACEPOINTS: [(&str, &str); 4] = [
    ("sock", "sock_send_length"),
    ("sock", "sock_recv_length"),
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_destroy_sock"),
];
const SOCK_COPIES: usize = 2;

/// Totals of the kernel-side counters (see `tracer_common::counter`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ringbuf_full_records: u64,
    pub ringbuf_full_bytes: u64,
    pub ringbuf_full_conn_events: u64,
    pub truncated_syscalls: u64,
    pub truncated_bytes: u64,
    pub read_failure_bytes: u64,
    pub args_full: u64,
    pub conns_full: u64,
    pub records: u64,
    pub bytes: u64,
    pub sniff_skipped_bytes: u64,
    pub tls_calls: u64,
    pub tls_untied_calls: u64,
    pub tls_untied_bytes: u64,
    pub tls_ciphertext_bytes: u64,
    pub tls_args_full: u64,
    pub skipped_bytes: u64,
    pub skim_unparsed_frames: u64,
    pub skim_stopped_streams: u64,
    pub uncopyable_bytes: u64,
}

impl KernelCounters {
    /// Bytes of tracked connections that never reached userspace, for any reason.
    pub fn lost_bytes(&self) -> u64 {
        self.ringbuf_full_bytes
            + self.truncated_bytes
            + self.read_failure_bytes
            + self.tls_untied_bytes
            + self.uncopyable_bytes
    }

    /// Every counter, for the stats line and `/metrics`.
    pub fn named(&self) -> Vec<Counter> {
        vec![
            Counter::loss(
                "kernel_ringbuf_full_records",
                self.ringbuf_full_records,
                "data records lost: ring buffer full",
            ),
            Counter::loss(
                "kernel_ringbuf_full_bytes",
                self.ringbuf_full_bytes,
                "payload bytes lost: ring buffer full",
            ),
            Counter::loss(
                "kernel_ringbuf_full_conn_events",
                self.ringbuf_full_conn_events,
                "connection open/close records lost: ring buffer full",
            ),
            Counter::loss(
                "kernel_truncated_syscalls",
                self.truncated_syscalls,
                "syscalls larger than --max-bytes-per-syscall",
            ),
            Counter::loss(
                "kernel_truncated_bytes",
                self.truncated_bytes,
                "payload bytes past the per-syscall cap",
            ),
            Counter::loss(
                "kernel_read_failure_bytes",
                self.read_failure_bytes,
                "payload bytes the kernel could not read from user memory",
            ),
            Counter::loss(
                "kernel_args_full",
                self.args_full,
                "syscalls not traced: argument table full",
            ),
            Counter::loss(
                "kernel_conns_full",
                self.conns_full,
                "connections not traced: connection table full",
            ),
            Counter::count("kernel_records", self.records, "data records delivered"),
            Counter::count("kernel_bytes", self.bytes, "payload bytes delivered"),
            Counter::count(
                "kernel_sniff_skipped_bytes",
                self.sniff_skipped_bytes,
                "bytes of not-yet-classified connections beyond the sniff budget",
            ),
            Counter::count(
                "kernel_tls_calls",
                self.tls_calls,
                "TLS library calls whose plaintext was copied",
            ),
            Counter::loss(
                "kernel_tls_untied_calls",
                self.tls_untied_calls,
                "TLS library calls not tied to a connection (memory BIOs), plaintext not copied",
            ),
            Counter::loss(
                "kernel_tls_untied_bytes",
                self.tls_untied_bytes,
                "plaintext bytes of TLS calls not tied to a connection",
            ),
            Counter::count(
                "kernel_tls_ciphertext_bytes",
                self.tls_ciphertext_bytes,
                "ciphertext bytes of TLS connections, not copied",
            ),
            Counter::loss(
                "kernel_tls_args_full",
                self.tls_args_full,
                "TLS library calls not traced: call table full",
            ),
            Counter::count(
                "kernel_skipped_bytes",
                self.skipped_bytes,
                "record values of produce requests not copied on purpose (known gaps, not loss)",
            ),
            Counter::count(
                "kernel_skim_unparsed_frames",
                self.skim_unparsed_frames,
                "produce requests the kernel's walk could not follow, copied whole",
            ),
            Counter::count(
                "kernel_skim_stopped_streams",
                self.skim_stopped_streams,
                "request streams whose walk lost its place, copied whole from then on",
            ),
            Counter::loss(
                "kernel_uncopyable_bytes",
                self.uncopyable_bytes,
                "bytes of traced connections moved by calls whose buffers cannot be read (sendfile, splice, io_uring, sendmmsg/recvmmsg in sock mode)",
            ),
        ]
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns` timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One of the capture's programs in the kernel.
#[derive(Clone, Debug)]
pub struct LoadedProgram {
    /// The kernel's id for it (never reused while the kernel runs).
    pub id: u32,
    pub name: String,
    pub run_time: std::time::Duration,
    /// Instructions the verifier walked to accept it (Linux 5.16+ reports them): how close it
    /// came to the kernel's budget of [`VERIFIER_BUDGET`].
    pub verified_insns: Option<u32>,
}

/// Instructions the kernel's verifier walks at most for one program before it refuses it.
pub const VERIFIER_BUDGET: u32 = 1_000_000;

/// A loaded and attached capture. Dropping it detaches every program and frees every map.
pub struct Capture {
    mode: CaptureMode,
    /// `Loop` or `Bounded`, never `Auto`.
    copy_path: CopyPath,
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    verdicts: BpfHashMap<MapData, u64, u8>,
    tls: tls::TlsProbes,
    /// Processes that ran a new program, since the last [`Capture::take_execs`].
    execs: Vec<u32>,
    /// When to read the ring buffer again without a wake-up: set by every drain that found
    /// records, cleared when it passes (see [`tracer_common::WAKE_INTERVAL_NS`]).
    recheck: Option<tokio::time::Instant>,
    /// Owns the programs (and so their attachments) and the remaining maps.
    ebpf: Ebpf,
}

/// Programs started between two drains, searched at most (the rest are searched when they
/// connect).
const MAX_EXECS: usize = 4096;

/// Past this fraction of the ring buffer unread, records wake the daemon every
/// [`tracer_common::MARK_WAKE_SPACING_NS`]: well before the ring fills, at the rates a
/// saturated client reaches within the wake-up interval.
const WAKE_FRACTION: u32 = 4;

/// How long after a drain that found records the ring buffer is read again.
const RECHECK: std::time::Duration =
    std::time::Duration::from_nanos(tracer_common::WAKE_INTERVAL_NS);

impl Capture {
    /// Checks the system, loads and attaches the programs. Must run inside a tokio runtime.
    pub fn start(cfg: &CaptureConfig) -> anyhow::Result<Self> {
        if !cfg.ring_buffer_bytes.is_power_of_two() || cfg.ring_buffer_bytes < 4096 {
            bail!(
                "invalid --ring-buffer-bytes {}: it must be a power of two of at least 4096",
                cfg.ring_buffer_bytes
            );
        }
        if cfg.kernel_connections < MIN_KERNEL_CONNECTIONS {
            bail!(
                "invalid --kernel-connections {}: it must be at least {MIN_KERNEL_CONNECTIONS}",
                cfg.kernel_connections
            );
        }
        preflight::check_privileges()?;
        preflight::require_ring_buffer()?;
        let mode = pick_mode(cfg.mode)?;
        let copy_path = pick_copy_path(cfg.copy_path)?;
        let config = kernel_config(cfg, mode, copy_path)?;
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", cfg.ring_buffer_bytes)
            .map_max_entries("CONNS", cfg.kernel_connections)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel failed")?;
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_kernel_logger(logger)?,
            Err(e) => tracing::debug!("eBPF programs log nothing: {e}"),
        }

        fill_set(&mut ebpf, "PORTS", cfg.ports.iter().copied())?;
        fill_set(&mut ebpf, "PIDS", cfg.pids.iter().copied())?;
        fill_set(&mut ebpf, "CGROUPS", cfg.cgroup_ids.iter().copied())?;
        if mode == CaptureMode::Fd {
            seed_fd_connections(&mut ebpf, cfg, &config)?;
        }

        let copies = copy_programs(mode, copy_path, config.skim != 0);
        load_copy(&mut ebpf, &copies, copy_path)?;
        attach_programs(&mut ebpf, mode, &copies)?;
        let tls = if cfg.tls {
            let probes = tls::TlsProbes::load(&mut ebpf, copy_path == CopyPath::Bounded);
            if probes.enabled() {
                attach(
                    &mut ebpf,
                    "sched_process_exec",
                    "sched",
                    &["sched_process_exec".into()],
                )?;
            }
            probes
        } else {
            tls::TlsProbes::default()
        };

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("eBPF object has no map {name}"))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
        // (which owns the RingBuf) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with the runtime: {e}"))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
        let verdicts = BpfHashMap::try_from(take(&mut ebpf, "VERDICTS")?)?;
        tracing::info!(
            mode = ?mode,
            copy = ?copy_path,
            ports = ?cfg.ports,
            detect_kafka = config.detect != 0,
            ring_buffer_bytes = cfg.ring_buffer_bytes,
            "capture attached"
        );
        Ok(Self {
            mode,
            copy_path,
            ring,
            counters,
            verdicts,
            tls,
            execs: Vec::new(),
            recheck: None,
            ebpf,
        })
    }

    /// The mode in effect (never `Auto`).
    pub fn mode(&self) -> CaptureMode {
        self.mode
    }

    /// The copy path in effect (never `Auto`).
    pub fn copy_path(&self) -> CopyPath {
        self.copy_path
    }

    /// The programs loaded into the kernel, with the time they ran when BPF statistics are on
    /// (`kernel.bpf_stats_enabled`): what `--check` sees go away, what the benchmark weighs.
    pub fn programs(&self) -> Vec<LoadedProgram> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(LoadedProgram {
                    id: info.id(),
                    name: name.to_string(),
                    run_time: info.run_time(),
                    verified_insns: info.verified_instruction_count(),
                })
            })
            .collect()
    }

    /// What the capture's programs have cost the kernel: their run time and runs, summed. The
    /// kernel counts them only while BPF statistics are on (`sysctl kernel.bpf_stats_enabled=1`,
    /// or a process holding them on, as the benchmark does); otherwise both stay at 0.
    pub fn usage(&self) -> Vec<Counter> {
        let (mut ns, mut runs) = (0u64, 0u64);
        for (_, p) in self.ebpf.programs() {
            if let Ok(info) = p.info() {
                ns = ns.saturating_add(info.run_time().as_nanos() as u64);
                runs = runs.saturating_add(info.run_count());
            }
        }
        vec![
            Counter::usage(
                "ebpf_run_ns",
                ns,
                "nanoseconds the tracer's eBPF programs ran in the kernel, counted while kernel.bpf_stats_enabled is 1 (else 0)",
            ),
            Counter::usage(
                "ebpf_runs",
                runs,
                "runs of the tracer's eBPF programs, counted while kernel.bpf_stats_enabled is 1 (else 0)",
            ),
        ]
    }

    /// Waits until the ring buffer may have records: a wake-up from the kernel, or the re-read
    /// due after a drain that found some (records written since woke nobody).
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        let Some(at) = self.recheck else {
            self.ring.readable_mut().await?.clear_ready();
            return Ok(());
        };
        tokio::select! {
            guard = self.ring.readable_mut() => guard?.clear_ready(),
            () = tokio::time::sleep_until(at) => self.recheck = None,
        }
        Ok(())
    }

    /// Passes every record now in the ring buffer to `f`; returns how many there were.
    /// Records the parser rejects are passed as errors (they would mean a kernel/daemon
    /// version mismatch), so the caller counts them.
    /// Programs that traced processes started run are kept for [`Self::take_execs`]
    /// rather than passed on.
    pub fn drain(&mut self, mut f: impl FnMut(Result<RingRecord<'_>, RingRecordError>)) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            match RingRecord::parse(&item) {
                Ok(RingRecord::Exec(tgid)) => {
                    if self.execs.len() < MAX_EXECS {
                        self.execs.push(tgid);
                    }
                }
                rec => f(rec),
            }
            n += 1;
        }
        if n > 0 {
            self.recheck = Some(tokio::time::Instant::now() + RECHECK);
        }
        n
    }

    /// Processes that started a new program since the last call (with TLS reading on).
    pub fn take_execs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.execs)
    }

    /// Probes the TLS libraries of the programs `execs` started (a Go program carries its own
    /// crypto/tls): searched before they connect, they are read from their first TLS call.
    pub fn probe_programs(&mut self, execs: &[u32]) {
        for &tgid in execs {
            self.tls.probe_program(&mut self.ebpf, tgid);
        }
    }

    /// Current kernel counters, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<KernelCounters> {
        let sum = |i: u32| -> anyhow::Result<u64> { Ok(self.counters.get(&i, 0)?.iter().sum()) };
        Ok(KernelCounters {
            ringbuf_full_records: sum(counter::RINGBUF_FULL_RECORDS)?,
            ringbuf_full_bytes: sum(counter::RINGBUF_FULL_BYTES)?,
            ringbuf_full_conn_events: sum(counter::RINGBUF_FULL_CONN_EVENTS)?,
            truncated_syscalls: sum(counter::TRUNCATED_SYSCALLS)?,
            truncated_bytes: sum(counter::TRUNCATED_BYTES)?,
            read_failure_bytes: sum(counter::READ_FAILURE_BYTES)?,
            args_full: sum(counter::ARGS_FULL)?,
            conns_full: sum(counter::CONNS_FULL)?,
            records: sum(counter::RECORDS)?,
            bytes: sum(counter::BYTES)?,
            sniff_skipped_bytes: sum(counter::SNIFF_SKIPPED_BYTES)?,
            tls_calls: sum(counter::TLS_CALLS)?,
            tls_untied_calls: sum(counter::TLS_UNTIED_CALLS)?,
            tls_untied_bytes: sum(counter::TLS_UNTIED_BYTES)?,
            tls_ciphertext_bytes: sum(counter::TLS_CIPHERTEXT_BYTES)?,
            tls_args_full: sum(counter::TLS_ARGS_FULL)?,
            skipped_bytes: sum(counter::SKIPPED_BYTES)?,
            skim_unparsed_frames: sum(counter::SKIM_UNPARSED_FRAMES)?,
            skim_stopped_streams: sum(counter::SKIM_STOPPED_STREAMS)?,
            uncopyable_bytes: sum(counter::UNCOPYABLE_BYTES)?,
        })
    }

    /// Answers a sniffed connection: capture it in full (`kafka`) or stop copying it.
    pub fn set_verdict(&mut self, conn_key: u64, kafka: bool) -> anyhow::Result<()> {
        let v = if kafka { track::FULL } else { track::IGNORE };
        self.verdicts
            .insert(&conn_key, &v, 0)
            .context("writing a sniff verdict")
    }

    /// Probes the TLS library of process `tgid` (once, then again at most every few seconds
    /// for one it loaded later); whether it has TLS probes now.
    pub fn probe_tls(&mut self, tgid: u32) -> bool {
        self.tls.probe(&mut self.ebpf, tgid)
    }

    /// Probes the TLS libraries of the processes with a connection on a broker port now (they
    /// predate the tracer); those that map one.
    pub fn probe_tls_of_connected(&mut self, ports: &[u16]) -> anyhow::Result<Vec<u32>> {
        let me = std::process::id();
        let mut tgids: Vec<u32> = tcp_sockets(std::path::Path::new("/proc"), |p| p != me)
            .into_iter()
            .filter(|s| !s.listening && (ports.is_empty() || ports.contains(&s.tuple.rport)))
            .map(|s| s.tgid)
            .collect();
        tgids.sort_unstable();
        tgids.dedup();
        tls::note_processes(&mut self.ebpf, &tgids)?;
        tgids.retain(|&t| self.probe_tls(t));
        Ok(tgids)
    }

    /// The TLS probes' counters.
    pub fn tls_named(&self) -> Vec<Counter> {
        self.tls.named()
    }

    /// Whether the kernel still follows the connection at `key` (a `CONNS` key) as `conn_id`:
    /// not when its full table dropped it, or it closed.
    pub fn follows(&self, key: u64, conn_id: u64) -> bool {
        let Some(map) = self.ebpf.map("CONNS") else {
            return true;
        };
        BpfHashMap::<_, u64, ConnState>::try_from(map)
            .and_then(|conns| conns.get(&key, 0))
            .is_ok_and(|st| st.conn_id == conn_id)
    }

    /// Forgets the verdict of a closed connection (its key may be reused).
    pub fn forget_verdict(&mut self, conn_key: u64) {
        let _ = self.verdicts.remove(&conn_key);
    }
}

/// Loads tracepoint program `program` unless it is loaded.
fn load_tracepoint<'a>(ebpf: &'a mut Ebpf, program: &str) -> anyhow::Result<&'a mut TracePoint> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("eBPF object has no program {program}"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "the kernel refused eBPF program {program} (see the verifier log above)"
            ))
        })?;
    }
    Ok(prog)
}

/// The copy path `asked` resolves to on this kernel (`Auto`: `bpf_loop`'s when the kernel offers
/// that helper, else the bounded one).
fn pick_copy_path(asked: CopyPath) -> anyhow::Result<CopyPath> {
    Ok(match asked {
        CopyPath::Auto if preflight::has_bpf_loop() => CopyPath::Loop,
        CopyPath::Auto => {
            tracing::info!(
                "this kernel has no bpf_loop: copying with bounded loops and tail calls"
            );
            CopyPath::Bounded
        }
        CopyPath::Loop if !preflight::has_bpf_loop() => bail!(
            "this kernel ({}) lacks the bpf_loop helper (Linux 5.17+, or a backport): use \
             --copy-path bounded (or auto)",
            preflight::kernel_release()
        ),
        p => p,
    })
}

/// The name suffix of the copy programs with the selective copy's walk.
const SKIM: &str = "_skim";

/// A program that copies, and the tracepoints (of one category) it serves.
struct CopyProgram {
    name: String,
    category: &'static str,
    points: Vec<String>,
}

/// The programs that copy in `mode`: the syscall exits in fd mode, the two socket length
/// tracepoints in sock mode; each in the variant of `path` (resolved, never `Auto`): on the
/// `bpf_loop` path, the one with the selective copy's walk only when it is on (`skim`), since
/// that walk is most of what the verifier explores.
fn copy_programs(mode: CaptureMode, path: CopyPath, skim: bool) -> Vec<CopyProgram> {
    let variant = match (path, skim) {
        (CopyPath::Bounded, _) => "_bounded",
        (_, true) => SKIM,
        (_, false) => "",
    };
    if mode == CaptureMode::Sock {
        return SOCK_TRACEPOINTS[..SOCK_COPIES]
            .iter()
            .map(|&(category, point)| CopyProgram {
                name: format!("{point}{variant}"),
                category,
                points: vec![point.to_string()],
            })
            .collect();
    }
    let points = DATA_SYSCALLS
        .iter()
        .chain(&SETUP_SYSCALLS)
        .map(|s| format!("sys_exit_{s}"))
        .collect();
    vec![CopyProgram {
        name: format!("sys_exit{variant}"),
        category: "syscalls",
        points,
    }]
}

/// Loads the copy programs of `path` and, for the bounded path, the walk's continuations.
fn load_copy(ebpf: &mut Ebpf, copies: &[CopyProgram], path: CopyPath) -> anyhow::Result<()> {
    for copy in copies {
        load_tracepoint(ebpf, &copy.name).map_err(|e| {
            if copy.name.ends_with(SKIM) {
                e.context(
                    "the selective copy (--record-headers uncompressed or none, --selective-copy) \
                     is refused by this kernel; without it every byte is copied",
                )
            } else {
                e
            }
        })?;
    }
    if path == CopyPath::Bounded {
        let more = load_tracepoint(ebpf, "copy_more_tp")?.fd()?.try_clone()?;
        set_continuation(ebpf, "COPY_MORE_TP", &more)?;
    }
    Ok(())
}

/// Puts `program` in the program array `map` as the continuation of bounded copy walks.
fn set_continuation(ebpf: &mut Ebpf, map: &str, program: &ProgramFd) -> anyhow::Result<()> {
    let mut slots: ProgramArray<_> = ProgramArray::try_from(
        ebpf.map_mut(map)
            .with_context(|| format!("eBPF object has no map {map}"))?,
    )?;
    slots
        .set(0, program, 0)
        .with_context(|| format!("filling {map}"))
}

fn attach(ebpf: &mut Ebpf, program: &str, category: &str, points: &[String]) -> anyhow::Result<()> {
    let prog = load_tracepoint(ebpf, program)?;
    for p in points {
        prog.attach(category, p)
            .with_context(|| format!("attaching {program} to tracepoint {category}:{p}"))?;
    }
    Ok(())
}

/// The mode to run in (`auto` decided by what the kernel has), once every tracepoint it needs
/// is known to exist: a missing one is one clear error here rather than a load failure.
fn pick_mode(asked: CaptureMode) -> anyhow::Result<CaptureMode> {
    let tracefs = preflight::ensure_tracefs()?;
    let mode = match asked {
        CaptureMode::Auto
            if SOCK_TRACEPOINTS
                .iter()
                .all(|(c, t)| preflight::has_tracepoint(&tracefs, c, t))
                && std::path::Path::new(crate::btf::VMLINUX_BTF).exists() =>
        {
            CaptureMode::Sock
        }
        CaptureMode::Auto => CaptureMode::Fd,
        m => m,
    };
    // Sock mode copies at the socket tracepoints: it needs no syscall tracepoint.
    let mut points: Vec<(&str, String)> = Vec::new();
    match mode {
        CaptureMode::Sock => points.extend(SOCK_TRACEPOINTS.map(|(c, t)| (c, t.to_string()))),
        _ => {
            for s in DATA_SYSCALLS.iter().chain(&SETUP_SYSCALLS) {
                points.push(("syscalls", format!("sys_enter_{s}")));
                points.push(("syscalls", format!("sys_exit_{s}")));
            }
            points.push(("syscalls", "sys_enter_close".into()));
        }
    }
    let named: Vec<(&str, &str)> = points.iter().map(|(c, n)| (*c, n.as_str())).collect();
    preflight::require_tracepoints(&tracefs, &named)?;
    Ok(mode)
}

/// The programs' `CONFIG` for `cfg` in `mode` (sock mode reads its field offsets from BTF).
/// The selective copy runs on the `bpf_loop` path only: the bounded path's chain of programs
/// copies every byte (the walk would not fit the older verifiers' budget).
fn kernel_config(cfg: &CaptureConfig, mode: CaptureMode, path: CopyPath) -> anyhow::Result<Config> {
    let sock = if mode == CaptureMode::Sock {
        crate::btf::sock_offsets(&preflight::kernel_btf()?)
            .context("reading `struct sock_common` from the kernel's BTF")?
    } else {
        Default::default()
    };
    Ok(Config {
        mode: if mode == CaptureMode::Sock {
            mode::SOCK
        } else {
            mode::FD
        },
        // tgid 0 is the idle task, which never makes syscalls.
        self_tgid: if cfg.exclude_self {
            std::process::id()
        } else {
            0
        },
        filter_ports: u32::from(!cfg.ports.is_empty()),
        server_side: u32::from(cfg.server_side),
        filter_pids: u32::from(!cfg.pids.is_empty()),
        filter_cgroups: u32::from(!cfg.cgroup_ids.is_empty()),
        detect: u32::from(cfg.detect_kafka && !cfg.ports.is_empty()),
        sniff_bytes: cfg.sniff_bytes,
        max_bytes_per_syscall: cfg.max_bytes_per_syscall,
        wake_bytes: cfg.ring_buffer_bytes / WAKE_FRACTION,
        skim: u32::from(skim_policy(cfg, path)),
        sock,
    })
}

/// The walk's [`skim::policy`] for `cfg` on `path`, or 0 when every byte is copied.
fn skim_policy(cfg: &CaptureConfig, path: CopyPath) -> u8 {
    let policy = match cfg.record_headers {
        RecordHeaders::All if cfg.selective_copy => skim::policy::ALL,
        RecordHeaders::All => return 0,
        RecordHeaders::Uncompressed => skim::policy::UNCOMPRESSED,
        RecordHeaders::None => skim::policy::NONE,
    };
    if path != CopyPath::Loop || cfg.ports.is_empty() {
        tracing::warn!(
            "the selective copy (--selective-copy, --record-headers) needs the bpf_loop copy \
             path (Linux 5.17+) and a port filter (--ports): every byte is copied, and every \
             record's headers read"
        );
        return 0;
    }
    policy
}

/// fd mode's entry programs, each with the tracepoints it serves.
const FD_ENTRIES: [(&str, &[&str]); 4] = [
    ("sys_enter_close", &["sys_enter_close"]),
    ("sys_enter_bind", &["sys_enter_bind"]),
    ("sys_enter_connect", &["sys_enter_connect"]),
    (
        "sys_enter_accept",
        &["sys_enter_accept", "sys_enter_accept4"],
    ),
];

/// Attaches the programs of `mode`: the copies first; in sock mode the connection tracepoints,
/// in fd mode the syscall entries last (an entry stashed before its exit is attached would only
/// linger in the LRU stash).
fn attach_programs(
    ebpf: &mut Ebpf,
    mode: CaptureMode,
    copies: &[CopyProgram],
) -> anyhow::Result<()> {
    for copy in copies {
        attach(ebpf, &copy.name, copy.category, &copy.points)?;
    }
    if mode == CaptureMode::Sock {
        for (c, t) in &SOCK_TRACEPOINTS[SOCK_COPIES..] {
            attach(ebpf, t, c, &[t.to_string()])?;
        }
        return Ok(());
    }
    for (program, points) in FD_ENTRIES {
        let points: Vec<String> = points.iter().map(|p| p.to_string()).collect();
        attach(ebpf, program, "syscalls", &points)?;
    }
    for s in DATA_SYSCALLS {
        let name = format!("sys_enter_{s}");
        attach(ebpf, &name, "syscalls", std::slice::from_ref(&name))?;
    }
    Ok(())
}

fn fill_set<K: aya::Pod>(
    ebpf: &mut Ebpf,
    map: &str,
    keys: impl Iterator<Item = K>,
) -> anyhow::Result<()> {
    let mut set: BpfHashMap<_, K, u8> = BpfHashMap::try_from(
        ebpf.map_mut(map)
            .with_context(|| format!("eBPF object has no map {map}"))?,
    )?;
    for k in keys {
        set.insert(&k, &1, 0)
            .with_context(|| format!("filling filter map {map}"))?;
    }
    Ok(())
}

/// fd mode: registers the connections and listeners that exist before the programs attach.
fn seed_fd_connections(
    ebpf: &mut Ebpf,
    cfg: &CaptureConfig,
    kernel: &Config,
) -> anyhow::Result<()> {
    let me = std::process::id();
    let sockets = tcp_sockets(std::path::Path::new("/proc"), |p| {
        (p != me || !cfg.exclude_self) && (cfg.pids.is_empty() || cfg.pids.contains(&p))
    });
    let key = |s: &ProcSocket| ((s.tgid as u64) << 32) | s.fd as u32 as u64;
    {
        let mut listeners: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(ebpf.map_mut("LISTENERS").context("no map LISTENERS")?)?;
        for s in sockets.iter().filter(|s| s.listening) {
            let v = ((s.tuple.family as u32) << 16) | s.tuple.lport as u32;
            listeners.insert(&key(s), &v, 0)?;
        }
    }
    let mut conns: BpfHashMap<_, u64, ConnState> =
        BpfHashMap::try_from(ebpf.map_mut("CONNS").context("no map CONNS")?)?;
    let mut seeded = 0u64;
    for s in sockets.iter().filter(|s| !s.listening) {
        let Some(how) = kernel.classify(&s.tuple, |p| cfg.ports.contains(&p)) else {
            continue;
        };
        seeded += 1;
        let st = ConnState {
            // The kernel's ids never have the top bit set.
            conn_id: (1 << 63) | seeded,
            tuple: s.tuple,
            track: how,
            flags: flags::MIDSTREAM | if how == track::SNIFF { flags::SNIFF } else { 0 },
            ..Default::default()
        };
        conns.insert(&key(s), &st, 0)?;
    }
    tracing::info!(
        connections = seeded,
        "fd mode: seeded existing connections from /proc"
    );
    Ok(())
}

/// Forwards the eBPF programs' `aya-log` messages (rare, off the hot path) to `tracing`.
fn spawn_kernel_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> anyhow::Result<()> {
    // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the eBPF log buffer with the runtime: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                break;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Resolves `--cgroup` paths to cgroup ids (on cgroup v2 the id is the directory's inode).
pub fn cgroup_ids(paths: &[PathBuf]) -> anyhow::Result<Vec<u64>> {
    use std::os::unix::fs::MetadataExt as _;
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).map(|m| m.ino()).with_context(|| {
                format!(
                    "cgroup {} not found: pass a directory under /sys/fs/cgroup",
                    p.display()
                )
            })
        })
        .collect()
}
