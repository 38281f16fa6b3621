//! Helpers shared by the end-to-end tests: deterministic payloads, sockets driven with the exact
//! syscalls the capture must understand, and collection of capture records.

pub mod broker;
pub mod certs;
pub mod cpu_limit;
pub mod frames;
pub mod guest;
pub mod jaeger;
pub mod receiver;
pub mod seen;
pub mod tracer;

pub use broker::Broker;

use std::{io, os::fd::RawFd};

/// How a message is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendCall {
    Write,
    /// writev with the buffer split into uneven iovecs.
    Writev,
    /// sendmsg with the buffer split into uneven iovecs.
    Sendmsg,
}

/// The messages each side sends: 1 byte, 100 KiB and 1 MiB, each with a different syscall.
pub const MESSAGES: [(SendCall, usize); 3] = [
    (SendCall::Write, 1),
    (SendCall::Writev, 100 << 10),
    (SendCall::Sendmsg, 1 << 20),
];

/// Deterministic pseudo-random bytes (xorshift64*), different for each seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The messages of one side, seeded by `side`, and their concatenation.
pub fn messages(side: u64) -> (Vec<(SendCall, Vec<u8>)>, Vec<u8>) {
    let msgs: Vec<_> = MESSAGES
        .iter()
        .enumerate()
        .map(|(i, &(call, len))| (call, payload(side * 16 + i as u64, len)))
        .collect();
    let all = msgs.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    (msgs, all)
}

fn check(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Uneven iovec boundaries, to exercise the kernel walk across iovecs and chunks.
fn split(data: &[u8]) -> Vec<&[u8]> {
    let cuts = [1, 4095, 8193, 262_144];
    let mut parts = Vec::new();
    let mut rest = data;
    for c in cuts {
        if rest.len() <= c {
            break;
        }
        let (a, b) = rest.split_at(c);
        parts.push(a);
        rest = b;
    }
    parts.push(rest);
    parts
}

/// Sends all of `data` on `fd` with `call` (continuing with the same call after a short send).
pub fn send_all(fd: RawFd, call: SendCall, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = match call {
            // SAFETY: valid buffer of the given length.
            SendCall::Write => check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })?,
            SendCall::Writev | SendCall::Sendmsg => {
                let iov: Vec<libc::iovec> = split(data)
                    .iter()
                    .map(|p| libc::iovec {
                        iov_base: p.as_ptr() as *mut _,
                        iov_len: p.len(),
                    })
                    .collect();
                if call == SendCall::Writev {
                    // SAFETY: iovecs point into `data`, alive for the call.
                    check(unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as i32) })?
                } else {
                    // SAFETY: as above; the msghdr only names the iovecs.
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.as_ptr() as *mut _;
                    msg.msg_iovlen = iov.len();
                    check(unsafe { libc::sendmsg(fd, &msg, 0) })?
                }
            }
        };
        data = &data[n..];
    }
    Ok(())
}

/// Reads until EOF, alternating read(2) and recvmsg(2) with two iovecs.
pub fn read_to_end_alternating(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut a, mut b) = (vec![0u8; 3000], vec![0u8; 70_000]);
    for i in 0.. {
        let n = if i % 2 == 0 {
            // SAFETY: valid buffer.
            let n = check(unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) })?;
            out.extend_from_slice(&b[..n]);
            n
        } else {
            let mut iov = [
                libc::iovec {
                    iov_base: a.as_mut_ptr().cast(),
                    iov_len: a.len(),
                },
                libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                },
            ];
            // SAFETY: the msghdr names two valid iovecs.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = 2;
            let n = check(unsafe { libc::recvmsg(fd, &mut msg, 0) })?;
            out.extend_from_slice(&a[..n.min(a.len())]);
            if n > a.len() {
                out.extend_from_slice(&b[..n - a.len()]);
            }
            n
        };
        if n == 0 {
            break;
        }
    }
    Ok(out)
}

/// The project's Python virtualenv (tansu and the client libraries), set up by xtask.
pub fn venv() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv")
}

/// The command of a test client: `args` are `OP LIB ...` as tests/kafka/client.py takes them,
/// and LIB picks the program: `confluent` (librdkafka) and `kafka-python` run client.py in the
/// virtualenv, `franz` and `sarama` the Go clients (tests/go; `franz-stripped` from a binary
/// built without a symbol table), `java` the Java clients
/// (tests/java: kafka-clients and kafka-streams), so a test swaps libraries and keeps its
/// assertions.
fn client_command(args: &[&str]) -> std::process::Command {
    let installed = |var| broker::installed(var).unwrap_or_else(|e| panic!("{e:#}"));
    match args.get(1).copied() {
        Some("franz" | "sarama") => {
            let mut cmd = std::process::Command::new(installed("KAFKA_TRACER_GO_CLIENT"));
            cmd.args(args);
            cmd
        }
        // The same franz-go client, from a binary without a symbol table.
        Some("franz-stripped") => {
            let mut cmd = std::process::Command::new(installed("KAFKA_TRACER_GO_CLIENT_STRIPPED"));
            cmd.arg(args[0]).arg("franz").args(&args[2..]);
            cmd
        }
        Some("java") => {
            let classpath = format!(
                "{}:{}",
                installed("KAFKA_TRACER_JAVA_CLIENTS").display(),
                broker::kafka_classpath().unwrap_or_else(|e| panic!("{e:#}"))
            );
            let mut cmd = broker::java(&classpath);
            cmd.arg("JavaClient").arg(args[0]).args(&args[2..]);
            cmd
        }
        _ => {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/client.py");
            let mut cmd = std::process::Command::new(venv().join("bin/python"));
            cmd.arg(script).args(args);
            cmd
        }
    }
}

/// Runs tests/kafka/client.py with the virtualenv's Python; returns its JSON output line.
pub fn client(args: &[&str]) -> anyhow::Result<String> {
    client_env(&[], args)
}

/// librdkafka consuming `count` records of partition 0 of `topic` from the start (20 s at most).
pub fn consume(bootstrap: &str, topic: &str, count: &str) -> anyhow::Result<String> {
    consume_env(&[], bootstrap, topic, count)
}

/// The same with environment variables for the client (its security settings).
pub fn consume_env(
    env: &[(&str, &str)],
    bootstrap: &str,
    topic: &str,
    count: &str,
) -> anyhow::Result<String> {
    client_env(
        env,
        &[
            "consume",
            "confluent",
            bootstrap,
            topic,
            count,
            "--partition",
            "0",
            "--timeout",
            "20",
        ],
    )
}

/// librdkafka producing `count` records in `codec` to partition 0 of `topic`, each with the
/// W3C header [`TRACEPARENT`], then consuming them as [`consume`] does.
pub fn produce_and_consume(
    bootstrap: &str,
    topic: &str,
    count: &str,
    codec: &str,
) -> anyhow::Result<()> {
    produce_and_consume_env(&[], bootstrap, topic, count, codec)
}

/// The same with environment variables for the clients (their security settings).
pub fn produce_and_consume_env(
    env: &[(&str, &str)],
    bootstrap: &str,
    topic: &str,
    count: &str,
    codec: &str,
) -> anyhow::Result<()> {
    client_env(
        env,
        &[
            "produce",
            "confluent",
            bootstrap,
            topic,
            count,
            codec,
            "--traceparent",
            TRACEPARENT,
            "--partition",
            "0",
        ],
    )?;
    consume_env(env, bootstrap, topic, count).map(drop)
}

/// The record offsets a send or poll span covers, from its attributes (`num` reads one as an
/// integer): `messaging.kafka.offset` for one record, else the batch's first and last offsets.
pub fn covered_offsets(num: impl Fn(&str) -> Option<i64>) -> Option<std::ops::RangeInclusive<i64>> {
    match num("messaging.kafka.offset") {
        Some(o) => Some(o..=o),
        None => Some(num("messaging.kafka.first_offset")?..=num("messaging.kafka.last_offset")?),
    }
}

/// Same as [`client`], with environment variables for the client process.
pub fn client_env(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<String> {
    finish(
        client_command(args).envs(env.iter().copied()).output()?,
        args,
    )
}

/// A client running in the background (to be running before, or across, something).
pub struct BackgroundClient {
    child: std::process::Child,
    args: Vec<String>,
}

impl BackgroundClient {
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_env(&[], args)
    }

    /// Same, with environment variables for the client process.
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Self> {
        let child = client_command(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        Ok(Self {
            child,
            args: args.iter().map(|a| a.to_string()).collect(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (a client waiting for records that will not come).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for it; its JSON output line.
    pub fn finish(self) -> anyhow::Result<String> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        finish(self.child.wait_with_output()?, &args)
    }
}

fn finish(out: std::process::Output, args: &[&str]) -> anyhow::Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Appends one line to the end-to-end summary that `cargo xtask test` prints after the tests
/// (target/e2e-summary.txt), and to the test's own output.
pub fn summary(line: &str) {
    use std::io::Write as _;
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-summary.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A W3C traceparent used by the tests.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// SIGINT and SIGTERM held back from the calling thread, to be waited for: Ctrl-C ends a demo
/// that keeps Jaeger up, and the demo stops its children itself. Block them just before saying
/// "press Ctrl-C" (a signal before that takes its default action, which stops the program at
/// any earlier step, its children with it through PR_SET_PDEATHSIG).
pub struct Interrupts(libc::sigset_t);

impl Interrupts {
    pub fn block() -> Self {
        // SAFETY: sigset manipulation on a local set; pthread_sigmask on the calling thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Self(set)
        }
    }

    /// Waits for one of them.
    pub fn wait(self) {
        let mut signal = 0;
        // SAFETY: the set is initialised; sigwait writes the signal number.
        unsafe { libc::sigwait(&self.0, &mut signal) };
    }
}

/// A benchmark's command line: options that take a number, and flags. `--help` prints the
/// usage; anything else unknown, or an option without a number, is one error line and exit 2,
/// never a run with defaults the user did not ask for.
pub struct BenchArgs {
    args: Vec<String>,
}

impl BenchArgs {
    /// Reads this program's arguments against `usage`, which names every option (`--x N`)
    /// and flag (`--y`) it takes.
    pub fn parse(program: &str, usage: &str, numbers: &[&str], flags: &[&str]) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let fail = |why: String| -> ! {
            eprintln!("{program}: error: {why}\nusage: {program} {usage}");
            std::process::exit(2)
        };
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if a == "--help" || a == "-h" {
                println!("usage: {program} {usage}");
                std::process::exit(0);
            } else if numbers.contains(&a) {
                if args
                    .get(i + 1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_none()
                {
                    fail(format!("{a} takes a number"));
                }
                i += 2;
            } else if flags.contains(&a) {
                i += 1;
            } else {
                fail(format!("unknown argument {a:?}"));
            }
        }
        Self { args }
    }

    /// The number after `name`, else `default`.
    pub fn number(&self, name: &str, default: u64) -> u64 {
        self.args
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Whether flag `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }
}

/// The median of `v` (the upper one of an even count); `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Where the filesystem of `fstype` (with `option` among its mount options, when given) is
/// mounted.
pub fn mount_point(fstype: &str, option: Option<&str>) -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&fstype)
            && option.is_none_or(|o| f.get(3).is_some_and(|opts| opts.split(',').any(|x| x == o))))
        .then(|| std::path::PathBuf::from(f[1]))
    })
}
