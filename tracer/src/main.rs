//! `kafka-tracer`: see `kafka-tracer --help`.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::{cli::Args, daemon};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "kafka-tracer: error: invalid --log filter {:?}: {e}",
                args.log
            );
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kafka-tracer: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the cause and, from the failing check, the fix. No backtrace.
            eprintln!("kafka-tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
