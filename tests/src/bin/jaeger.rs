//! `cargo xtask jaeger`: the pinned Jaeger v2 on its usual ports (OTLP on 4317 and 4318, the
//! query API on 16686 and 16685), traces kept in memory, until Ctrl-C: a place to send the
//! tracer's spans on a machine without a container engine.

use std::process::ExitCode;

use tests::{
    Interrupts,
    jaeger::{Jaeger, Ports},
};

fn main() -> ExitCode {
    let jaeger = match Jaeger::start_with(Ports::USUAL, None) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("jaeger: error: {e:#} (is another Jaeger or collector on these ports?)");
            return ExitCode::FAILURE;
        }
    };
    let query = jaeger.query_url();
    let interrupts = Interrupts::block();
    println!(
        "Jaeger is up: OTLP on {} (gRPC) and {} (HTTP), the query API on {query}.\n\
         In another terminal: OTEL_EXPORTER_OTLP_ENDPOINT={} cargo xtask run\n\
         The services that sent spans: curl {query}/api/v3/services\n\
         A service's traces: curl '{query}/api/v3/traces?query.service_name=SERVICE&query.start_time_min=FROM&query.start_time_max=TO' (times in RFC 3339)\n\
         Ctrl-C stops it (traces are kept in memory only).",
        jaeger.otlp_grpc_endpoint(),
        jaeger.otlp_http_endpoint(),
        jaeger.otlp_http_endpoint(),
    );
    interrupts.wait();
    ExitCode::SUCCESS
}
