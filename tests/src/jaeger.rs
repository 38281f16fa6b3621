//! A real Jaeger v2 (built by `cargo xtask` from `tests/jaeger`, path in `KAFKA_TRACER_JAEGER`),
//! one per test on free ports, keeping traces in memory; the tests export to its OTLP receiver
//! and find traces again through its query API (`/api/v3`), as a user would.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    broker::die_with_parent,
    tracer::{free_port, service_name},
};

/// A running Jaeger.
pub struct Jaeger {
    child: Child,
    /// OTLP over HTTP (`/v1/traces`) and gRPC.
    pub otlp_http_port: u16,
    pub otlp_grpc_port: u16,
    /// The query service's HTTP API.
    pub query_port: u16,
    log: PathBuf,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OTLP in, memory storage, the query API; nothing else listens (no fixed port is taken, so
/// tests run side by side).
const CONFIG: &str = r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "127.0.0.1:${env:JAEGER_QUERY_PORT}"
    grpc:
      endpoint: "127.0.0.1:${env:JAEGER_QUERY_GRPC_PORT}"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "127.0.0.1:${env:JAEGER_OTLP_GRPC_PORT}"
      http:
        endpoint: "127.0.0.1:${env:JAEGER_OTLP_HTTP_PORT}"
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#;

impl Jaeger {
    /// Starts one and waits (at most 60 s) until its query API answers.
    pub fn start() -> anyhow::Result<Self> {
        let bin = std::env::var("KAFKA_TRACER_JAEGER").map_err(|_| {
            anyhow::anyhow!(
                "KAFKA_TRACER_JAEGER is not set: run the tests through `cargo xtask test`"
            )
        })?;
        let dir = std::env::temp_dir().join(format!("kt-jaeger-{}", free_port()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.yaml");
        std::fs::write(&config, CONFIG)?;
        let log = dir.join("log");
        let (otlp_http_port, otlp_grpc_port, query_port) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .env("JAEGER_OTLP_HTTP_PORT", otlp_http_port.to_string())
            .env("JAEGER_OTLP_GRPC_PORT", otlp_grpc_port.to_string())
            .env("JAEGER_QUERY_PORT", query_port.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", free_port().to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("stderr"))?);
        die_with_parent(&mut cmd);
        let mut jaeger = Self {
            child: cmd.spawn()?,
            otlp_http_port,
            otlp_grpc_port,
            query_port,
            log: dir.join("stderr"),
        };
        let end = Instant::now() + Duration::from_secs(60);
        while jaeger.get("/api/v3/services").is_err() {
            if let Some(status) = jaeger.child.try_wait()? {
                anyhow::bail!("Jaeger exited ({status}): {}", jaeger.log_tail());
            }
            if Instant::now() > end {
                anyhow::bail!("Jaeger did not answer in 60 s: {}", jaeger.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(jaeger)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }

    /// An HTTP/1.0 GET of the query API (so the answer is neither chunked nor kept alive): the
    /// body of a 200, else an error with the status line.
    fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.query_port))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut answer = String::new();
        c.read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no HTTP answer: {answer}"))?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}: {body}"
        );
        Ok(body.to_string())
    }

    /// The spans of every trace with a span of `service` that started in the last hour, as
    /// `(service, span)` in OTLP JSON (`/api/v3/traces`; an empty list while there are none).
    pub fn traces_of(&self, service: &str) -> anyhow::Result<Vec<(String, Value)>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        let path = format!(
            "/api/v3/traces?query.service_name={service}&query.start_time_min={}&query.start_time_max={}&query.num_traces=1000",
            rfc3339(now - 3600),
            rfc3339(now + 60)
        );
        let body = match self.get(&path) {
            Ok(b) => b,
            // Jaeger answers "not found" while no trace matches.
            Err(e) if e.to_string().contains("404") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_str(&body)?;
        let mut out = Vec::new();
        for rs in v["result"]["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let service = service_name(rs);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((service.clone(), span.clone()));
                }
            }
        }
        Ok(out)
    }
}

/// `secs` since the Unix epoch in RFC 3339 (UTC).
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_855_792), "2026-11-28T08:49:52Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
