//! `/metrics`: the Kafka families and the tracer's counter table, encoded in the OpenMetrics
//! text format by `prometheus-client` when a scraper asks (never on a timer), and `/healthz`.
//! The main loop updates both under a lock it holds for one exchange at a time.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::Metrics;
use crate::{
    counters::{Counter, Kind},
    kafka::Catalog,
    pipeline::ConnExchange,
};

/// A lock whose holder panicked still guards consistent counters: take it anyway.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `/metrics` shows, shared by the main loop and the HTTP server.
pub struct Exposition {
    registry: Registry,
    kafka: Arc<Mutex<Metrics>>,
    counters: Arc<Mutex<Vec<Counter>>>,
}

struct KafkaFamilies(Arc<Mutex<Metrics>>);

/// The registry's collectors must be `Debug`; the families' contents are no help there.
impl std::fmt::Debug for KafkaFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaFamilies")
    }
}

impl Collector for KafkaFamilies {
    fn encode(&self, out: DescriptorEncoder<'_>) -> std::fmt::Result {
        lock(&self.0).encode(out)
    }
}

/// The tracer's counter table, as `kafka_tracer_<name>_total` counters and
/// `kafka_tracer_<name>` gauges.
#[derive(Debug)]
struct TracerCounters(Arc<Mutex<Vec<Counter>>>);

impl Collector for TracerCounters {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> std::fmt::Result {
        for c in lock(&self.0).iter() {
            let name = format!("kafka_tracer_{}", c.name);
            if c.kind == Kind::Level {
                let g = ConstGauge::new(i64::try_from(c.value).unwrap_or(i64::MAX));
                g.encode(out.encode_descriptor(&name, c.help, None, g.metric_type())?)?;
            } else {
                let n = ConstCounter::new(c.value);
                n.encode(out.encode_descriptor(&name, c.help, None, n.metric_type())?)?;
            }
        }
        Ok(())
    }
}

impl Exposition {
    /// Kafka families of at most `max_series` series each.
    pub fn new(max_series: usize) -> Self {
        let kafka = Arc::new(Mutex::new(Metrics::new(max_series)));
        let counters = Arc::new(Mutex::new(Vec::new()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(KafkaFamilies(kafka.clone())));
        registry.register_collector(Box::new(TracerCounters(counters.clone())));
        Self {
            registry,
            kafka,
            counters,
        }
    }

    /// Adds what an exchange says to the Kafka families.
    pub fn observe(&self, o: &ConnExchange, catalog: &Catalog, clock_offset_ns: i64) {
        lock(&self.kafka).observe(o, catalog, clock_offset_ns);
    }

    /// The Kafka families' own counters.
    pub fn named(&self) -> Vec<Counter> {
        lock(&self.kafka).named()
    }

    /// Replaces the counter table shown.
    pub fn publish(&self, counters: Vec<Counter>) {
        *lock(&self.counters) = counters;
    }

    #[cfg(test)]
    pub(super) fn kafka_for_test(&self) -> MutexGuard<'_, Metrics> {
        lock(&self.kafka)
    }

    /// The whole exposition, `# EOF` included.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String fails only if an encoder refuses its input.
            tracing::warn!("encoding /metrics: {e}");
        }
        out
    }
}

/// Serves `exposition` at `/metrics` (and `/healthz`) on `addr`.
pub async fn serve(addr: std::net::SocketAddr, exposition: Arc<Exposition>) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics endpoint to {addr} (--metrics-addr): is the port in use?")
    })?;
    tracing::info!("metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let exposition = exposition.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut req),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let (status, ctype, body) = if req[..n].starts_with(b"GET /metrics") {
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        exposition.text(),
                    )
                } else if req[..n].starts_with(b"GET /healthz") {
                    ("200 OK", "text/plain", "ok\n".to_string())
                } else {
                    ("404 Not Found", "text/plain", "not found\n".to_string())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(())
}
