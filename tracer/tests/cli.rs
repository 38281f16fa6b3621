//! The `kafka-tracer` binary as a user meets it: flags, environment variables and the one-line
//! errors for bad configuration and missing privileges.

use std::process::{Command, Output};

use clap::CommandFactory as _;
use tracer::cli::Args;

fn tracer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kafka-tracer"))
}

/// Asserts a failed run printed exactly one line, an error containing every `needle`.
fn one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("kafka-tracer: error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing from: {stderr}");
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let out = tracer().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let cmd = Args::command();
    let flags: Vec<_> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (l, a.get_env())))
        .collect();
    assert!(flags.len() >= 12, "{flags:?}");
    for (long, env) in flags {
        // Actions, not settings: an environment variable must not turn the daemon into them.
        if ["help", "version", "check"].contains(&long) {
            continue;
        }
        assert!(help.contains(&format!("--{long}")), "--{long} not in help");
        let env = env.unwrap_or_else(|| panic!("--{long} has no environment variable"));
        assert!(
            help.contains(&format!("[env: {}", env.to_string_lossy())),
            "env of --{long} not in help"
        );
    }
}

#[test]
fn bad_value_is_one_clear_line_from_flag_or_environment() {
    let out = tracer()
        .args(["--ring-buffer-bytes", "1000"])
        .output()
        .unwrap();
    one_line_error(&out, &["--ring-buffer-bytes", "power of two"]);
    let out = tracer()
        .env("KAFKA_TRACER_RING_BUFFER_BYTES", "3000")
        .output()
        .unwrap();
    one_line_error(&out, &["3000", "power of two"]);
    let out = tracer().args(["--log", "[[["]).output().unwrap();
    one_line_error(&out, &["--log"]);
    let out = tracer()
        .args(["--cgroup", "/sys/fs/cgroup/no-such-group"])
        .output()
        .unwrap();
    one_line_error(&out, &["no-such-group", "/sys/fs/cgroup"]);
    let out = tracer()
        .args(["--record-keys", "hash"])
        .env("KAFKA_TRACER_RECORD_KEY_SECRET", "short")
        .output()
        .unwrap();
    one_line_error(&out, &["record-key secret", "5 bytes", "16 random bytes"]);
    let out = tracer()
        .args([
            "--record-keys",
            "hash",
            "--record-key-secret-file",
            "/no/such/secret",
        ])
        .output()
        .unwrap();
    one_line_error(
        &out,
        &["/no/such/secret", "KAFKA_TRACER_RECORD_KEY_SECRET_FILE"],
    );
}

/// The record-key secret never shows in the help text, even when it is set.
#[test]
fn help_hides_the_record_key_secret() {
    let out = tracer()
        .arg("--help")
        .env("KAFKA_TRACER_RECORD_KEY_SECRET", "s3cr3t-value-xyz")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("KAFKA_TRACER_RECORD_KEY_SECRET"), "{help}");
    assert!(!help.contains("s3cr3t-value-xyz"), "{help}");
}

#[test]
fn unprivileged_run_names_the_missing_capabilities_and_the_fix() {
    // As root here: drop to nobody with no capabilities, as a user who forgot sudo would be.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ]);
        c.arg(env!("CARGO_BIN_EXE_kafka-tracer"));
        c
    } else {
        tracer()
    };
    let out = cmd.output().unwrap();
    one_line_error(
        &out,
        &["missing privileges", "CAP_BPF", "CAP_PERFMON", "root"],
    );
}
