//! Command-line flags. Every flag can also be set through the environment variable named in its
//! help, which is how the DaemonSet configures the tracer.

use std::{path::PathBuf, time::Duration};

use clap::{ArgAction, Parser};

use crate::{
    capture::{CaptureConfig, CaptureMode, CopyPath, RecordHeaders},
    export::{
        ConsoleFormat, Exporter, ResourceConfig, Sampler, ServiceRule, SettingFile, TlsFiles,
        TracesConfig,
        otlp::{self, OtlpConfig},
        parse_key_values,
    },
    kafka::DecodeOptions,
    pipeline::PipelineConfig,
    spans::{KeyMode, RecordKeys},
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "kafka-tracer",
    version,
    about = "Traces Apache Kafka producers and consumers from the kernel with eBPF, without \
             changing any application.",
    long_about = None
)]
pub struct Args {
    /// Print what this kernel offers the tracer (each capability, its fallback or fix), load and
    /// detach the capture once, and exit: 0 when the tracer can run here, 1 when not.
    #[arg(long)]
    pub check: bool,

    /// Kafka broker ports: connections with one of these local or remote ports are captured.
    #[arg(
        long,
        env = "KAFKA_TRACER_PORTS",
        value_delimiter = ',',
        default_value = "9092"
    )]
    pub ports: Vec<u16>,

    /// Capture every TCP connection, whatever its port (ignores --ports).
    #[arg(long, env = "KAFKA_TRACER_ALL_PORTS")]
    pub all_ports: bool,

    /// Also recognise Kafka on other ports, from the first bytes of each new connection.
    #[arg(long, env = "KAFKA_TRACER_DETECT_KAFKA", default_value_t = true, action = ArgAction::Set)]
    pub detect_kafka: bool,

    /// Bytes per direction of a connection on another port examined before deciding it is Kafka.
    #[arg(long, env = "KAFKA_TRACER_SNIFF_BYTES", default_value_t = crate::capture::DEFAULT_SNIFF_BYTES)]
    pub sniff_bytes: u32,

    /// Trace only these process ids (repeat or comma-separate; default: all processes).
    #[arg(long = "pid", env = "KAFKA_TRACER_PIDS", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Trace only processes in these cgroup v2 directories, e.g.
    /// /sys/fs/cgroup/system.slice/kafka.service (default: all cgroups).
    #[arg(long = "cgroup", env = "KAFKA_TRACER_CGROUPS", value_delimiter = ',')]
    pub cgroups: Vec<PathBuf>,

    /// Bytes copied from one syscall at most; the rest is counted as truncated. Consumers read
    /// a fetch response of several MiB in one syscall when they are behind (librdkafka at
    /// 400k records/s: up to about 5 MiB), and records past the cap get no span.
    #[arg(long, env = "KAFKA_TRACER_MAX_BYTES_PER_SYSCALL", default_value_t = crate::capture::DEFAULT_MAX_BYTES_PER_SYSCALL)]
    pub max_bytes_per_syscall: u32,

    /// Size of the kernel-to-daemon ring buffer in bytes (a power of two). Larger absorbs
    /// longer bursts before records are dropped (and counted), and costs twice its size in
    /// RSS (the kernel maps its pages twice for wrap-around reads). 8 MiB carries a saturated
    /// librdkafka client on a 2-core node without a drop.
    #[arg(long, env = "KAFKA_TRACER_RING_BUFFER_BYTES", default_value_t = crate::capture::DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_bytes: u32,

    /// Connections the kernel follows at once (144 bytes of kernel memory each). Past
    /// it the least recently used is dropped: its later bytes are not copied (fd mode) or come
    /// back as a new connection joined midstream (sock mode), counted in
    /// `forgotten_connections` when it goes idle. With Kafka detection on (the default), every
    /// open TCP connection of the traced processes holds an entry, Kafka or not.
    #[arg(long, env = "KAFKA_TRACER_KERNEL_CONNECTIONS", default_value_t = crate::capture::DEFAULT_KERNEL_CONNECTIONS)]
    pub kernel_connections: u32,

    /// How connections are identified: `sock` needs Linux 6.3+ (socket tracepoints) and BTF,
    /// `fd` works on any kernel with syscall tracepoints, `auto` picks sock when it can.
    #[arg(long, env = "KAFKA_TRACER_CAPTURE_MODE", value_enum, default_value_t = CaptureMode::Auto)]
    pub capture_mode: CaptureMode,

    /// How the kernel copies the bytes: `loop` (the bpf_loop helper, Linux 5.17 on), `bounded`
    /// (bounded loops and tail calls, any kernel with BPF ring buffers), or `auto` (loop where
    /// the kernel has it).
    #[arg(long, env = "KAFKA_TRACER_COPY_PATH", value_enum, default_value_t = CopyPath::Auto)]
    pub copy_path: CopyPath,

    /// Walk each client's produce requests and fetch responses in the kernel and skip the
    /// values of uncompressed records (the tracer never reads them; their headers and every
    /// other field are copied, and the skipped bytes are counted as `kernel_skipped_bytes`, not
    /// as loss). Off by default: today the walk costs the client more CPU than the copy it
    /// saves (see the README's performance section). Linux 5.17+ (the `bpf_loop` copy path).
    #[arg(long, env = "KAFKA_TRACER_SELECTIVE_COPY", default_value_t = false, action = ArgAction::Set)]
    pub selective_copy: bool,

    /// Records whose headers (where producers' trace contexts travel) the tracer reads: `all`,
    /// `uncompressed` (the kernel skips compressed batches' records), or `none` (it skips every
    /// batch's records and copies only batch headers: the cheapest copy). Sends and polls stay
    /// linked by topic, partition and offset either way; a record whose headers are not read
    /// starts its own trace (counted as `records_headers_unread`). Any but `all` turns the
    /// selective copy on.
    #[arg(long, env = "KAFKA_TRACER_RECORD_HEADERS", value_enum, default_value_t = RecordHeaders::All)]
    pub record_headers: RecordHeaders,

    /// Read the plaintext of TLS connections from the TLS library (OpenSSL and the libraries
    /// with its symbols) of the processes that talk to Kafka, with uprobes.
    #[arg(long, env = "KAFKA_TRACER_TLS", default_value_t = true, action = ArgAction::Set)]
    pub tls: bool,

    /// Connections followed at once in the daemon; records of further ones are counted and
    /// dropped, bounding memory.
    #[arg(long, env = "KAFKA_TRACER_MAX_CONNECTIONS", default_value_t = crate::pipeline::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Bytes of one Kafka frame kept for decoding; larger frames (big fetch responses) are
    /// decoded from their first part, and counted as partial.
    #[arg(long, env = "KAFKA_TRACER_MAX_FRAME_BYTES", default_value_t = crate::pipeline::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Bytes all connections may hold in frame buffers together; past it, bytes are skipped
    /// and counted.
    #[arg(long, env = "KAFKA_TRACER_MAX_BUFFERED_BYTES", default_value_t = crate::pipeline::DEFAULT_MAX_BUFFERED_BYTES)]
    pub max_buffered_bytes: usize,

    /// Requests awaiting a response per connection. The Java and Go clients pipeline up to 5
    /// by default; librdkafka sends as many as the socket takes while a broker is slow
    /// (hundreds). Past it the oldest are given up and counted (evicted_requests).
    #[arg(long, env = "KAFKA_TRACER_MAX_IN_FLIGHT", default_value_t = crate::pipeline::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Bytes all connections' requests awaiting a response may hold together (estimated: the
    /// frames' bytes and produce requests' record tables); past it the oldest of the
    /// connection that gets a request are given up and counted (evicted_requests).
    #[arg(long, env = "KAFKA_TRACER_MAX_IN_FLIGHT_BYTES", default_value_t = crate::pipeline::DEFAULT_MAX_IN_FLIGHT_BYTES)]
    pub max_in_flight_bytes: usize,

    /// Ask a broker for its topic metadata when traffic names a topic only by id (Produce and
    /// Fetch v13+) and no Metadata response naming it has been seen yet.
    #[arg(long, env = "KAFKA_TRACER_RESOLVE_TOPIC_IDS", default_value_t = true, action = ArgAction::Set)]
    pub resolve_topic_ids: bool,

    /// Record keys on spans of single-record batches (`messaging.kafka.message.key`): `off`
    /// (default: keys may hold personal data), `plain`, or `hash`: 64 bits of a BLAKE3 hash
    /// keyed with the deployment's secret (--record-key-secret-file or
    /// KAFKA_TRACER_RECORD_KEY_SECRET). Equal keys hash equally on every tracer sharing the
    /// secret; without the secret nobody can test a hash against guessed keys (an unkeyed hash of
    /// a low-entropy key, an account number say, is reversed by hashing every candidate). Without
    /// a secret, one is drawn at each start: hashes then differ between tracers and restarts.
    /// Record values never leave the tracer.
    #[arg(long, env = "KAFKA_TRACER_RECORD_KEYS", value_enum, default_value_t = KeyMode::Off)]
    pub record_keys: KeyMode,

    /// A file whose contents key the record-key hash (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "KAFKA_TRACER_RECORD_KEY_SECRET_FILE")]
    pub record_key_secret_file: Option<std::path::PathBuf>,

    /// The record-key hash's secret itself (prefer the file: environments are visible to
    /// whoever can read /proc/PID/environ).
    #[arg(long, env = "KAFKA_TRACER_RECORD_KEY_SECRET", hide_env_values = true)]
    pub record_key_secret: Option<String>,

    /// Where spans go: `otlp` (to the OTLP endpoint below), `console` (standard output, see
    /// --console-format) or `none`. Default: `otlp` when an OTLP endpoint is configured, else
    /// `console`.
    #[arg(long, env = "OTEL_TRACES_EXPORTER")]
    pub traces_exporter: Option<String>,

    /// The console's form: `json` (one OTLP-JSON export request per line, the OpenTelemetry
    /// file format that the Collector's otlpjsonfile receiver reads) or `pretty` (a line per
    /// span, for reading).
    #[arg(long, env = "KAFKA_TRACER_CONSOLE_FORMAT", value_enum, default_value_t = ConsoleFormat::Json)]
    pub console_format: ConsoleFormat,

    /// OTLP receiver, e.g. http://otel-collector:4318 for HTTP or :4317 for gRPC (Jaeger
    /// all-in-one listens on both). HTTP exporters append /v1/traces to it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP receiver for traces only, used as given (overrides --otlp-endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP transport: `http/protobuf` (the OpenTelemetry default), `grpc` or `http/json`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: String,

    /// OTLP transport for traces only (overrides --otlp-protocol).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")]
    pub otlp_traces_protocol: Option<String>,

    /// Compression of export requests: `gzip` or `none`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION", default_value = "none")]
    pub otlp_compression: String,

    /// Headers sent with every export, `key=value,key2=value2` (e.g. an API key).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", default_value = "")]
    pub otlp_headers: String,

    /// PEM file of the CA certificates that sign the OTLP server's certificate (https://
    /// endpoints), instead of the system's roots.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_certificate: Option<PathBuf>,

    /// The same, for traces only (overrides --otlp-certificate).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")]
    pub otlp_traces_certificate: Option<PathBuf>,

    /// PEM file of the client certificate (chain) for mutual TLS with the OTLP server; needs
    /// --otlp-client-key.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")]
    pub otlp_client_certificate: Option<PathBuf>,

    /// The same, for traces only (overrides --otlp-client-certificate).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE")]
    pub otlp_traces_client_certificate: Option<PathBuf>,

    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_KEY")]
    pub otlp_client_key: Option<PathBuf>,

    /// The same, for traces only (overrides --otlp-client-key).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY")]
    pub otlp_traces_client_key: Option<PathBuf>,

    /// Milliseconds an export may take before it is given up (and its spans counted as dropped).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000)]
    pub otlp_timeout_ms: u64,

    /// Sampler, as OpenTelemetry names them (parentbased_always_on, traceidratio, ...). The
    /// decision depends only on the trace id and the producer's flag, so every node agrees.
    #[arg(long, env = "OTEL_TRACES_SAMPLER")]
    pub sampler: Option<String>,

    /// The sampler's ratio, 0 to 1.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub sampler_arg: Option<String>,

    /// Spans of requests slower than this (milliseconds) are kept whatever the sampler says,
    /// as are spans with a Kafka error.
    #[arg(long, env = "KAFKA_TRACER_SLOW_THRESHOLD_MS", default_value_t = 1000)]
    pub slow_threshold_ms: u64,

    /// service.name for every traced process without a rule or an OTEL_SERVICE_NAME of its
    /// own (default: the program an interpreter runs, else the executable name).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// service.name rules, `FIELD:TEXT=NAME` (repeat or comma-separate): processes whose
    /// executable (`exe`), command line (`cmdline`) or cgroup path (`cgroup`) contains TEXT
    /// report as NAME; the first match wins, before any other naming.
    #[arg(long = "service-rule", env = "KAFKA_TRACER_SERVICE_RULES", value_delimiter = ',', value_parser = parse_service_rule)]
    pub service_rules: Vec<ServiceRule>,

    /// The kubelet's container log links, `<pod>_<namespace>_<container>-<id>.log`: they name
    /// the pod, namespace and container of a traced process (mount it read-only from the host
    /// in Kubernetes; absent elsewhere, and then unused).
    #[arg(
        long,
        env = "KAFKA_TRACER_CONTAINER_LOGS",
        default_value = "/var/log/containers"
    )]
    pub container_logs: PathBuf,

    /// This node's name, for `k8s.node.name` (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "KAFKA_TRACER_NODE_NAME")]
    pub node_name: Option<String>,

    /// Extra resource attributes, `key=value,key2=value2`.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES", default_value = "")]
    pub resource_attributes: String,

    /// Spans waiting for export at most; when full the oldest are dropped and counted.
    #[arg(long, env = "KAFKA_TRACER_EXPORT_QUEUE", default_value_t = 8192)]
    pub export_queue: usize,

    /// Address of the Prometheus endpoint (/metrics, /healthz); `off` disables it. Local only
    /// by default: set 0.0.0.0:9464 to let Prometheus scrape it from elsewhere.
    #[arg(
        long,
        env = "KAFKA_TRACER_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: String,

    /// Series per Kafka metric family at most (topics x partitions x groups); past it,
    /// counters and histograms add to an `<overflow>` series and gauges are not kept, both
    /// counted in kafka_tracer_metric_series_overflow_total.
    #[arg(long, env = "KAFKA_TRACER_METRICS_MAX_SERIES", default_value_t = crate::metrics::DEFAULT_MAX_SERIES)]
    pub metrics_max_series: usize,

    /// Time without traffic after which a connection is forgotten (a process that exits
    /// without closing its sockets leaves no other trace in fd mode): `900`, `900s`, `15m`.
    #[arg(long, env = "KAFKA_TRACER_IDLE_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time between log lines with the tracer's counters: `10`, `10s`, `500ms`, `1m`.
    #[arg(long, env = "KAFKA_TRACER_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Log filter (tracing env-filter syntax), e.g. `info` or `tracer=debug`.
    #[arg(long, env = "KAFKA_TRACER_LOG", default_value = "info")]
    pub log: String,
}

/// A duration: a whole number with a unit (`ms`, `s`, `m`, `h`), or without one in seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().map_err(|_| {
        format!("{s:?} is not a duration: use a number with ms, s, m or h, e.g. 10s")
    })?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

fn parse_service_rule(s: &str) -> Result<ServiceRule, String> {
    ServiceRule::parse(s).map_err(|e| e.to_string())
}

impl Args {
    pub fn capture_config(&self) -> anyhow::Result<CaptureConfig> {
        Ok(CaptureConfig {
            mode: self.capture_mode,
            ports: if self.all_ports {
                Vec::new()
            } else {
                self.ports.clone()
            },
            server_side: false,
            detect_kafka: self.detect_kafka,
            sniff_bytes: self.sniff_bytes,
            pids: self.pids.clone(),
            cgroup_ids: crate::capture::cgroup_ids(&self.cgroups)?,
            max_bytes_per_syscall: self.max_bytes_per_syscall,
            ring_buffer_bytes: self.ring_buffer_bytes,
            kernel_connections: self.kernel_connections,
            exclude_self: true,
            tls: self.tls,
            copy_path: self.copy_path,
            selective_copy: self.selective_copy,
            record_headers: self.record_headers,
        })
    }
}

impl Args {
    /// What spans say of record keys, with the hash keyed from the configured secret.
    pub fn record_keys(&self) -> anyhow::Result<RecordKeys> {
        use anyhow::Context as _;
        Ok(match self.record_keys {
            KeyMode::Off => RecordKeys::Off,
            KeyMode::Plain => RecordKeys::Plain,
            KeyMode::Hash => {
                let secret = match (&self.record_key_secret_file, &self.record_key_secret) {
                    (Some(file), _) => std::fs::read(file).with_context(|| {
                        format!(
                            "reading the record-key secret {} (--record-key-secret-file / KAFKA_TRACER_RECORD_KEY_SECRET_FILE)",
                            file.display()
                        )
                    })?,
                    (None, Some(s)) => s.clone().into_bytes(),
                    (None, None) => {
                        tracing::warn!(
                            "--record-keys hash without a secret: hashing with a key drawn for this run, so hashes differ between tracers and restarts; set KAFKA_TRACER_RECORD_KEY_SECRET_FILE for stable ones"
                        );
                        let mut k = [0u8; 32];
                        // SAFETY: valid buffer of its length.
                        let n = unsafe { libc::getrandom(k.as_mut_ptr().cast(), k.len(), 0) };
                        anyhow::ensure!(n == 32, "no random bytes for the record-key hash");
                        k.to_vec()
                    }
                };
                anyhow::ensure!(
                    secret.len() >= 16,
                    "the record-key secret is {} bytes: use at least 16 random bytes",
                    secret.len()
                );
                RecordKeys::hashed_with(&secret)
            }
        })
    }

    /// The export stage's settings: exporter (OTLP protocol, URL, compression), sampler,
    /// record keys, resources and queue.
    pub fn traces_config(&self) -> anyhow::Result<TracesConfig> {
        let exporter = self.traces_exporter.clone().unwrap_or_else(|| {
            if self.otlp_endpoint.is_some() || self.otlp_traces_endpoint.is_some() {
                "otlp".into()
            } else {
                "console".into()
            }
        });
        let exporter = match exporter.as_str() {
            "otlp" => {
                let protocol = otlp::Protocol::parse(
                    self.otlp_traces_protocol
                        .as_deref()
                        .unwrap_or(&self.otlp_protocol),
                )?;
                let gzip = match self.otlp_compression.as_str() {
                    "gzip" => true,
                    "none" | "" => false,
                    other => anyhow::bail!(
                        "unsupported OTEL_EXPORTER_OTLP_COMPRESSION {other:?}: use gzip or none"
                    ),
                };
                let url = protocol.traces_url(
                    self.otlp_endpoint.as_deref(),
                    self.otlp_traces_endpoint.as_deref(),
                );
                let tls = self.otlp_tls()?;
                if tls.is_set() && !url.starts_with("https:") {
                    tracing::warn!(
                        "the OTLP certificate settings are not used: the endpoint is not https://"
                    );
                }
                Exporter::Otlp(OtlpConfig {
                    protocol,
                    url,
                    headers: parse_key_values(&self.otlp_headers),
                    timeout: Duration::from_millis(self.otlp_timeout_ms.max(1)),
                    gzip,
                    tls,
                    clock_offset_ns: 0,
                })
            }
            "console" | "stdout" | "logging" => Exporter::Console(self.console_format),
            "none" => Exporter::None,
            other => anyhow::bail!(
                "unsupported OTEL_TRACES_EXPORTER / --traces-exporter {other:?}: use otlp, console or none"
            ),
        };
        Ok(TracesConfig {
            exporter,
            sampler: Sampler::from_otel(self.sampler.as_deref(), self.sampler_arg.as_deref())?,
            keys: self.record_keys()?,
            slow_ns: self.slow_threshold_ms.saturating_mul(1_000_000),
            resources: ResourceConfig {
                service: self.service_name.clone(),
                extra: parse_key_values(&self.resource_attributes),
                rules: self.service_rules.clone(),
                container_logs: self.container_logs.clone(),
                node_name: self.node_name.clone(),
            },
            queue: self.export_queue,
        })
    }

    /// The OTLP exporter's TLS files, each named with the setting it came from (the
    /// traces-only one when set). A client certificate needs its key, and the other way round.
    fn otlp_tls(&self) -> anyhow::Result<TlsFiles> {
        let pick = |traces: &Option<PathBuf>, traces_name, generic: &Option<PathBuf>, name| match (
            traces, generic,
        ) {
            (Some(path), _) => Some(SettingFile {
                path: path.clone(),
                setting: traces_name,
            }),
            (None, Some(path)) => Some(SettingFile {
                path: path.clone(),
                setting: name,
            }),
            (None, None) => None,
        };
        let ca = pick(
            &self.otlp_traces_certificate,
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            &self.otlp_certificate,
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        );
        let cert = pick(
            &self.otlp_traces_client_certificate,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            &self.otlp_client_certificate,
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        );
        let key = pick(
            &self.otlp_traces_client_key,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            &self.otlp_client_key,
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        );
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(c), None) => anyhow::bail!(
                "{} is set without OTEL_EXPORTER_OTLP_CLIENT_KEY: mutual TLS needs the certificate's private key too",
                c.setting
            ),
            (None, Some(k)) => anyhow::bail!(
                "{} is set without OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: mutual TLS needs the certificate too",
                k.setting
            ),
        };
        Ok(TlsFiles { ca, client })
    }

    pub fn pipeline_config(&self) -> PipelineConfig {
        PipelineConfig {
            max_connections: self.max_connections,
            max_frame_bytes: self.max_frame_bytes,
            max_in_flight: self.max_in_flight,
            max_in_flight_bytes: self.max_in_flight_bytes,
            max_buffered_bytes: self.max_buffered_bytes,
            decode: DecodeOptions {
                keys: self.record_keys != KeyMode::Off,
                ..DecodeOptions::default()
            },
            // Spans of a topic known only by id wait for the broker's answer to be named.
            park: if self.resolve_topic_ids {
                crate::kafka::lookup::TIMEOUT + std::time::Duration::from_secs(1)
            } else {
                std::time::Duration::ZERO
            },
            // With every port traced, a port says nothing about who the broker is.
            ports: if self.all_ports {
                Vec::new()
            } else {
                self.ports.clone()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_defaults_hold() {
        let a = Args::try_parse_from(["kafka-tracer"]).unwrap();
        let c = a.capture_config().unwrap();
        assert_eq!(
            (c.ports.as_slice(), c.detect_kafka, c.max_bytes_per_syscall),
            (&[9092][..], true, 16 << 20)
        );
        let a = Args::try_parse_from([
            "kafka-tracer",
            "--ports",
            "9092,19092",
            "--detect-kafka",
            "false",
            "--pid",
            "1,2",
            "--capture-mode",
            "fd",
            "--all-ports",
        ])
        .unwrap();
        let c = a.capture_config().unwrap();
        assert_eq!(
            (c.ports.len(), c.detect_kafka, c.pids.as_slice(), c.mode),
            (0, false, &[1, 2][..], CaptureMode::Fd)
        );
    }

    #[test]
    fn durations_take_units() {
        let d = |v: &str| {
            let a = Args::try_parse_from(["kafka-tracer", "--stats-interval", v]).unwrap();
            a.stats_interval
        };
        assert_eq!(d("2s"), Duration::from_secs(2));
        assert_eq!(d("2"), Duration::from_secs(2));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("15m"), Duration::from_secs(900));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        let a = Args::try_parse_from(["kafka-tracer"]).unwrap();
        assert_eq!(
            (a.idle_timeout, a.stats_interval),
            (Duration::from_secs(900), Duration::from_secs(10))
        );
    }

    #[test]
    fn bad_values_are_rejected_with_a_message() {
        let e = Args::try_parse_from(["kafka-tracer", "--ports", "99999"]).unwrap_err();
        assert!(e.to_string().contains("--ports"), "{e}");
        let e = Args::try_parse_from(["kafka-tracer", "--capture-mode", "kprobe"]).unwrap_err();
        assert!(e.to_string().contains("possible values"), "{e}");
        let a = Args::try_parse_from(["kafka-tracer", "--cgroup", "/nonexistent/cg"]).unwrap();
        let e = a.capture_config().unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/cg"));
    }
}
