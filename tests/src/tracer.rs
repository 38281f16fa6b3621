//! The `kafka-tracer` binary run as a user runs it: a separate process started with flags and
//! OTEL_* variables, stopped with SIGINT, its spans read from standard output (the OTLP-JSON
//! file format: one export request per line) and its counters from its log.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// The daemon binary built by `cargo xtask test` (or named by KAFKA_TRACER_BIN), by a path
/// without `..` (a qemu guest holds it at that path, without the directories around it).
pub fn binary() -> PathBuf {
    std::env::var_os("KAFKA_TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent();
            workspace.map_or_else(PathBuf::new, |w| w.join("target/release/kafka-tracer"))
        })
}

pub struct Tracer {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Tracer {
    /// Starts the daemon on the broker's port and waits until its programs are attached and its
    /// loop runs: its first stats line comes after the start-up's heap (the kernel's BTF, the
    /// eBPF object) is handed back, so a memory reading taken then is the attached tracer's,
    /// not its start-up peak (read before it, "attached" RSS was 26 or 31 MiB by chance, and a
    /// test's growth check could see memory fall below it).
    pub fn start(port: u16, name: &str) -> Self {
        Self::start_with(port, name, &[])
    }

    /// Same, with extra environment variables (the OTEL_* settings).
    pub fn start_with(port: u16, name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on(&[port], name, env)
    }

    /// Same, on several broker ports.
    pub fn start_on(ports: &[u16], name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(ports, name, env, &[])
    }

    /// Same, started through `wrapper` (a command and its arguments, such as `setpriv ...`,
    /// given the daemon's path and arguments after them).
    pub fn start_wrapped(
        ports: &[u16],
        name: &str,
        env: &[(&str, &str)],
        wrapper: &[String],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("kt-traces-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (stdout, stderr) = (dir.join("spans.jsonl"), dir.join("log"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = command
            .arg("--ports")
            .arg(
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .args(["--stats-interval", "1"])
            // Tracers run in parallel: no shared metrics port unless a test sets its own, and
            // no sniffing of the other tests' brokers (each test names its broker's port).
            .env("KAFKA_TRACER_METRICS_ADDR", "off")
            .env("KAFKA_TRACER_DETECT_KAFKA", "false")
            .env_remove("OTEL_TRACES_EXPORTER")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("kafka-tracer binary (cargo xtask test builds it)");
        let t = Self {
            child,
            stdout,
            stderr,
        };
        let end = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&t.stderr)
            .unwrap_or_default()
            .split_once("capture attached")
            .is_some_and(|(_, after)| after.contains("counters"))
        {
            assert!(
                Instant::now() < end,
                "tracer did not start: {}",
                std::fs::read_to_string(&t.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    /// The file its standard output goes to.
    pub fn stdout_file(&self) -> &std::path::Path {
        &self.stdout
    }

    /// Stops it with SIGINT (it flushes its spans); its standard output and its log.
    pub fn stop_with_output(mut self) -> (String, String) {
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.stderr).unwrap();
        assert!(status.success(), "tracer exited with {status}: {log}");
        (std::fs::read_to_string(&self.stdout).unwrap(), log)
    }

    /// Waits (at most 30 s) until the counter `name` in the tracer's latest stats line
    /// satisfies `ok`; returns its value.
    pub fn wait_logged(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let v = stats_line(&log).and_then(|l| counter(l, name));
            match v {
                Some(v) if ok(v) => return v,
                _ if Instant::now() > end => panic!("{name} stayed at {v:?}: {log}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stops it with SIGINT (it flushes its spans) and returns every span it wrote.
    pub fn stop(self) -> Vec<Value> {
        self.stop_with_log().0
    }

    /// Same, with its log.
    pub fn stop_with_log(self) -> (Vec<Value>, String) {
        let (resource_spans, log) = self.stop_with_resources();
        let spans = resource_spans
            .iter()
            .flat_map(|(_, spans)| spans.iter().cloned())
            .collect();
        (spans, log)
    }

    /// Same, each span with the service name of its resource.
    pub fn stop_with_resources(self) -> (Vec<(String, Vec<Value>)>, String) {
        let (stdout, log) = self.stop_with_output();
        let spans = stdout
            .lines()
            .flat_map(|l| {
                let request: Value =
                    serde_json::from_str(l).expect("one OTLP-JSON export request per line");
                let resource_spans = request["resourceSpans"]
                    .as_array()
                    .cloned()
                    .expect("{\"resourceSpans\":[...]}");
                resource_spans.into_iter().map(|rs| {
                    let spans = rs["scopeSpans"][0]["spans"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    (service_name(&rs), spans)
                })
            })
            .collect();
        (spans, log)
    }
}

/// The `service.name` of an OTLP-JSON `ResourceSpans` (empty if it has none).
pub fn service_name(resource_spans: &Value) -> String {
    resource_spans["resource"]["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"))
        .and_then(|kv| kv["value"]["stringValue"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A span attribute's OTLP-JSON value.
pub fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// The spans with this name.
pub fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// The tracer's latest stats line (`counters: ...`).
fn stats_line(log: &str) -> Option<&str> {
    log.lines().rev().find_map(|l| {
        l.split_once("counters: ")
            .or_else(|| l.split_once("counters (with losses): "))
            .map(|(_, rest)| rest)
    })
}

/// The value of `name=N` in a stats line.
fn counter(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}

/// The value of counter `name` in the tracer's last stats line (the one it logs on exit).
pub fn logged(log: &str, name: &str) -> u64 {
    stats_line(log)
        .and_then(|l| counter(l, name))
        .unwrap_or_else(|| panic!("{name} not in the last stats line: {log}"))
}

/// The first word of field `key` (`VmRSS`, `CapEff`, ...) in /proc/PID/status.
pub fn proc_status(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    line.split_whitespace().next().map(str::to_string)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS").unwrap().parse().unwrap()
}

/// A process's resident memory by what it is, in KiB, from /proc/PID/smaps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resident {
    /// Mapped eBPF maps: the ring buffers, whose data pages are mapped twice (so a reader sees
    /// a record that wraps as one slice) and resident from the start. Kernel memory the
    /// process did not allocate, counted twice by RSS.
    pub bpf_maps: u64,
    /// The process's own executable.
    pub program: u64,
    /// Other files mapped (shared libraries).
    pub libraries: u64,
    /// Anonymous memory: heap, stacks, the allocator's arenas.
    pub anonymous: u64,
}

impl Resident {
    /// `None` once the process is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let mut r = Self::default();
        let mut slot = &mut r.anonymous;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if let Some(kib) = line.strip_prefix("Rss:") {
                *slot += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            } else if first.contains('-') && !first.ends_with(':') {
                // A mapping's first line: range, perms, offset, device, inode, then the name.
                let name = words.nth(4).unwrap_or("");
                slot = if name.starts_with("anon_inode:bpf-map") {
                    &mut r.bpf_maps
                } else if std::path::Path::new(name) == exe {
                    &mut r.program
                } else if name.starts_with('/') {
                    &mut r.libraries
                } else {
                    &mut r.anonymous
                };
            }
        }
        Some(r)
    }
}

/// Samples a process's resident memory every 100 ms until stopped; the peak in KiB.
pub struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    /// Starts sampling process `pid`.
    pub fn watch(pid: u32) -> Self {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // Until the process is gone (it may exit before the sampler is stopped).
                if let Some(kib) = proc_status(pid, "VmRSS").and_then(|v| v.parse().ok()) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, peak, thread }
    }

    /// The peak so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling; the peak.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.peak.clone();
        self.thread.join().unwrap();
        peak.load(Ordering::Relaxed)
    }
}

/// A port nothing listens on now (for a tracer's /metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The tracer's /metrics at `addr`, as Prometheus gets it (status line and headers included).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).expect("the tracer's metrics port");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request sent");
    let mut body = String::new();
    c.read_to_string(&mut body).expect("response read");
    body
}

/// A scrape's body, parsed by an OpenMetrics parser (not the encoder's crate); panics with the
/// body if it breaks the format.
pub fn parse_metrics(
    scrape: &str,
) -> openmetrics_parser::MetricsExposition<
    openmetrics_parser::OpenMetricsType,
    openmetrics_parser::OpenMetricsValue,
> {
    let body = scrape.split_once("\r\n\r\n").map_or(scrape, |(_, b)| b);
    openmetrics_parser::openmetrics::parse_openmetrics(body)
        .unwrap_or_else(|e| panic!("/metrics is not OpenMetrics ({e:?}): {body}"))
}

/// The value of the sample of `name` (with its suffix: `_total`, `_count`, ...) whose labels
/// include `labels`, in a parsed scrape.
pub fn metric(
    parsed: &openmetrics_parser::MetricsExposition<
        openmetrics_parser::OpenMetricsType,
        openmetrics_parser::OpenMetricsValue,
    >,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    use openmetrics_parser::OpenMetricsValue as V;
    let (family, suffix) = [("_total", "total"), ("_count", "count"), ("_sum", "sum")]
        .iter()
        .find_map(|(s, k)| Some((name.strip_suffix(s)?, *k)))
        .filter(|(f, _)| parsed.families.contains_key(*f))
        .unwrap_or((name, ""));
    let f = parsed.families.get(family)?;
    f.iter_samples().find_map(|s| {
        let set = s.get_labelset().ok()?;
        let has = |k: &str, v: &str| set.iter().any(|(n, x)| n == k && x == v);
        if !labels.iter().all(|(k, v)| has(k, v)) {
            return None;
        }
        match (&s.value, suffix) {
            (V::Counter(c), _) => Some(c.value.as_f64()),
            (V::Gauge(g), _) | (V::Unknown(g), _) => Some(g.as_f64()),
            (V::Histogram(h), "count") => Some(h.count? as f64),
            (V::Histogram(h), "sum") => Some(h.sum?.as_f64()),
            _ => None,
        }
    })
}

/// The value of the sample `series` (name and labels, as exposed) in a scrape.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
