//! A real OTLP trace receiver for the tests, built from the official protocol definitions
//! (`opentelemetry-proto`): gRPC (tonic's generated service over hyper's HTTP/2) on one port,
//! HTTP/protobuf and HTTP/JSON (hyper, the JSON read by the protos' own serde mapping) on
//! another, gzip accepted on both, and TLS (optionally mutual) on both when asked. It stores
//! every span it receives so tests can ask what a user would ask Jaeger: the spans of a trace,
//! of a service, of a topic.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{ResourceSpans, Span},
};

/// A received span with the service it came from.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    /// A string or integer attribute, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    /// Records the span covers (`messaging.batch.message_count`, else one).
    pub fn records(&self) -> u64 {
        self.attr("messaging.batch.message_count")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        })
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Received>>>);

/// The spans of some `ResourceSpans`, each with its resource's service name.
pub fn received(resource_spans: Vec<ResourceSpans>) -> impl Iterator<Item = Received> {
    resource_spans.into_iter().flat_map(|rs| {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| attr(&r.attributes, "service.name"))
            .unwrap_or_default();
        rs.scope_spans
            .into_iter()
            .flat_map(|ss| ss.spans)
            .map(move |span| Received {
                service: service.clone(),
                span,
            })
    })
}

impl Store {
    fn add(&self, request: ExportTraceServiceRequest) {
        self.0
            .lock()
            .expect("store lock")
            .extend(received(request.resource_spans));
    }

    /// One OTLP/HTTP request: 200 with the stored spans, 400 for what does not decode.
    async fn http(
        self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
        use http_body_util::BodyExt as _;
        use prost::Message as _;
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (ctype, encoding) = (header("content-type"), header("content-encoding"));
        let path = req.uri().path().to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec());
        let decoded = body.map_err(|e| e.to_string()).and_then(|body| {
            let body = if encoding == "gzip" {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
                    .map_err(|e| e.to_string())?;
                out
            } else {
                body
            };
            if path != "/v1/traces" {
                Err(format!("path {path}"))
            } else if ctype == "application/json" {
                serde_json::from_slice::<ExportTraceServiceRequest>(&body)
                    .map_err(|e| e.to_string())
            } else if ctype == "application/x-protobuf" {
                ExportTraceServiceRequest::decode(&body[..]).map_err(|e| e.to_string())
            } else {
                Err(format!("content type {ctype:?}"))
            }
        });
        let (status, body) = match decoded {
            Ok(request) => {
                self.add(request);
                let ok = ExportTraceServiceResponse::default();
                let body = if ctype == "application/json" {
                    b"{}".to_vec()
                } else {
                    ok.encode_to_vec()
                };
                (200, body)
            }
            Err(e) => (400, e.into_bytes()),
        };
        let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
        resp.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_str(&ctype)
                .unwrap_or(hyper::header::HeaderValue::from_static("text/plain")),
        );
        Ok(resp)
    }
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver on 127.0.0.1, stopped on drop.
pub struct Receiver {
    /// OTLP/gRPC port.
    pub port: u16,
    /// OTLP/HTTP port.
    pub http_port: u16,
    /// `https` when it serves TLS.
    scheme: &'static str,
    store: Store,
    _shutdown: tokio::sync::watch::Sender<()>,
}

/// TLS for the receiver's two ports: a configuration for gRPC (ALPN `h2`) and one for HTTP.
pub struct ReceiverTls {
    pub grpc: Arc<rustls::ServerConfig>,
    pub http: Arc<rustls::ServerConfig>,
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Accepts connections on `listener` until `stop` changes, shakes TLS hands with `tls` when
/// given (a failed handshake just closes that connection), and serves each with `serve`,
/// which stopping interrupts too, as a stopped collector would.
fn accept_loop<F>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: tokio::sync::watch::Receiver<()>,
    serve: impl Fn(hyper_util::rt::TokioIo<Box<dyn Io>>) -> F + Clone + Send + 'static,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut stop_accepting = stop.clone();
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop_accepting.changed() => return,
            };
            let Ok((conn, _)) = conn else { continue };
            let (tls, serve, mut stop) = (tls.clone(), serve.clone(), stop.clone());
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    Some(tls) => match tls.accept(conn).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(conn),
                };
                tokio::select! {
                    _ = serve(hyper_util::rt::TokioIo::new(io)) => {}
                    _ = stop.changed() => {}
                }
            });
        }
    });
}

impl Receiver {
    /// Starts it on free ports, or on `ports` (gRPC, HTTP) to come back where a stopped one
    /// was. Needs a tokio runtime.
    pub async fn start(ports: Option<(u16, u16)>) -> anyhow::Result<Self> {
        Self::start_with(ports, None).await
    }

    /// Same, serving TLS on both ports when `tls` is given.
    pub async fn start_with(
        ports: Option<(u16, u16)>,
        tls: Option<ReceiverTls>,
    ) -> anyhow::Result<Self> {
        let (grpc, http) = ports.unwrap_or((0, 0));
        let grpc = tokio::net::TcpListener::bind(("127.0.0.1", grpc)).await?;
        let http = tokio::net::TcpListener::bind(("127.0.0.1", http)).await?;
        let (port, http_port) = (grpc.local_addr()?.port(), http.local_addr()?.port());
        let store = Store::default();
        let (tx, rx) = tokio::sync::watch::channel(());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (grpc_tls, http_tls) = match tls {
            Some(t) => (Some(t.grpc), Some(t.http)),
            None => (None, None),
        };
        let service = TraceServiceServer::new(store.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        accept_loop(grpc, grpc_tls, rx.clone(), move |io| {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
            }
        });
        let s = store.clone();
        accept_loop(http, http_tls, rx, move |io| {
            let s = s.clone();
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        io,
                        hyper::service::service_fn(move |req| s.clone().http(req)),
                    )
                    .await;
            }
        });
        Ok(Self {
            port,
            http_port,
            scheme,
            store,
            _shutdown: tx,
        })
    }

    /// A receiver on a runtime of its own, for tests whose thread drives blocking clients.
    pub fn in_background() -> (tokio::runtime::Runtime, Self) {
        Self::in_background_with(None)
    }

    /// Same, serving TLS when `tls` is given.
    pub fn in_background_with(tls: Option<ReceiverTls>) -> (tokio::runtime::Runtime, Self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let receiver = rt
            .block_on(Self::start_with(None, tls))
            .expect("the OTLP receiver starts");
        (rt, receiver)
    }

    /// The OTLP/gRPC endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The OTLP/HTTP base endpoint (exporters append /v1/traces).
    pub fn http_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.http_port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.store.0.lock().expect("store lock").clone()
    }

    /// The spans of one trace (id as hex).
    pub fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|r| hex(&r.span.trace_id) == trace_id)
            .collect()
    }

    /// The spans of one service.
    pub fn service(&self, service: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|r| r.service == service)
            .collect()
    }

    /// The spans about one topic.
    pub fn topic(&self, topic: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|r| r.attr("messaging.destination.name").as_deref() == Some(topic))
            .collect()
    }
}

/// Lower-case hex of an id.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
