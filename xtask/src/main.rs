//! `cargo xtask <command>`: the project's own build, setup, run and test entry points, so a new
//! machine needs nothing but rustup and cargo.

mod clients;
mod command;
mod fuzz;
mod image;
mod kernels;
mod manifest;
mod setup;
mod test;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set up, run and test kafka-tracer"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: pinned toolchains, rust-src, bpf-linker; mount tracefs.
    Setup {
        /// Also what the tests need (brokers, Java and Go clients, Python clients, tools), and
        /// print the environment that points the tests at them.
        #[arg(long)]
        tests: bool,
    },
    /// Set up, build, and run kafka-tracer (as root, through sudo when needed).
    Run {
        /// Instead: start a local broker, the tracer, two producers and a consumer group, and
        /// print the linked traces (about 15 s).
        #[arg(long, conflicts_with = "args")]
        demo: bool,
        /// With --demo: also start Jaeger on its usual ports, export to it, print each trace's
        /// URL in its query API, and keep it up until Ctrl-C.
        #[arg(long, requires = "demo")]
        jaeger: bool,
        /// Arguments for kafka-tracer (see `cargo xtask run -- --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the pinned Jaeger v2 on its usual ports (OTLP 4317 and 4318, query API 16686)
    /// until Ctrl-C, to send the tracer's spans to without a container engine.
    Jaeger,
    /// Fuzz every decoder target (cargo-fuzz, libFuzzer), the session target seeded from the
    /// recorded real traffic.
    Fuzz {
        /// Minutes per target.
        #[arg(long, conflicts_with = "seconds")]
        minutes: Option<u64>,
        /// Seconds per target (default 60).
        #[arg(long)]
        seconds: Option<u64>,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Record the decoder fixtures (tracer/tests/fixtures) from real clients and brokers:
    /// `tansu` (librdkafka, kafka-python), `apache` (Java, franz-go, sarama), or both.
    RecordFixtures {
        /// Which set (default: both).
        which: Option<String>,
    },
    /// Build the container image (deploy/Containerfile, podman) and check it: its daemon must
    /// run and attach from the image's own files.
    Image,
    /// Render deploy/kubernetes/kafka-tracer.yaml from the Helm chart (deploy/helm).
    Manifest {
        /// Only check that the committed file is up to date.
        #[arg(long)]
        check: bool,
    },
    /// Run a benchmark: `decode` (default: decoding throughput against kafka-protocol and the
    /// bare decompressor) or `overhead` (a real client's throughput without and with the
    /// tracer, its CPU and memory) or `copy` (the kernel's two copy paths, bpf_loop and
    /// bounded, against each other on this kernel).
    Bench {
        #[arg(default_value = "decode")]
        which: String,
        /// Extra arguments for the benchmark, e.g. `-- --runs 5 --records 500000`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, and run every test (unit and against the kernel),
    /// then fuzz each decoder briefly.
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.command {
        Cmd::Setup { tests } => {
            setup::all(&root)?;
            if tests {
                setup::test_env(&root)?;
                clients::install(&root)?.print();
                println!("export {}={}", kernels::VAR, kernels::install()?.display());
            }
            Ok(())
        }
        Cmd::Run {
            demo: true, jaeger, ..
        } => {
            setup::all(&root)?;
            let args = if jaeger {
                vec!["--jaeger".to_string()]
            } else {
                Vec::new()
            };
            tests_binary(&root, "demo", &args)
        }
        Cmd::Jaeger => tests_binary(&root, "jaeger", &[]),
        Cmd::Run { args, .. } => {
            setup::all(&root)?;
            cargo(&root, &["build", "--release", "--package", "tracer"])?;
            let bin = root.join("target/release/kafka-tracer");
            let status = setup::as_root(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            if !status.success() {
                bail!("kafka-tracer exited with {status}");
            }
            Ok(())
        }
        Cmd::Fuzz {
            minutes,
            seconds,
            targets,
        } => {
            setup::all(&root)?;
            setup::test_env(&root)?;
            fuzz::run(
                &root,
                minutes.map_or(seconds.unwrap_or(60), |m| m * 60),
                &targets,
            )
        }
        Cmd::RecordFixtures { which } => {
            setup::all(&root)?;
            tests_binary(
                &root,
                "record-fixtures",
                &which.into_iter().collect::<Vec<_>>(),
            )
        }
        Cmd::Image => {
            setup::all(&root)?;
            cargo(&root, &["build", "--release", "--package", "tracer"])?;
            image::build(&root)
        }
        Cmd::Manifest { check } => {
            setup::python_env(&root)?;
            setup::helm(&root)?;
            manifest::run(&root, check)
        }
        Cmd::Bench { which, args } => {
            setup::all(&root)?;
            match which.as_str() {
                "decode" => cargo(
                    &root,
                    &["bench", "--package", "tracer", "--bench", "decode"],
                ),
                "overhead" => tests_binary(&root, "overhead", &args),
                "copy" => tests_binary(&root, "copy-cost", &args),
                other => bail!("unknown benchmark {other:?}: use decode, overhead or copy"),
            }
        }
        Cmd::Test { args } => test::run(&root, &args),
    }
}

/// Builds the daemon and the `tests` crate's binary `name` (the demo, the overhead benchmark:
/// programs that drive the real broker and clients), and runs it as root with `args`.
fn tests_binary(root: &Path, name: &str, args: &[String]) -> anyhow::Result<()> {
    setup::python_env(root)?;
    let clients = clients::install(root)?;
    cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "tracer",
            "--package",
            "tests",
            "--bin",
            "kafka-tracer",
            "--bin",
            name,
        ],
    )?;
    let mut cmd = setup::as_root(&root.join("target/release").join(name));
    clients.export(&mut cmd);
    let status = cmd
        .args(args)
        .status()
        .with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// The workspace root: this crate's parent directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Runs `cargo ARGS` in the workspace with the pinned userspace toolchain.
fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    command::run(toolchain::cargo().current_dir(root).args(args))
}
