//! `cargo xtask manifest`: deploy/kubernetes/kafka-tracer.yaml, the plain manifest for clusters
//! without Helm, rendered from the chart (deploy/helm/kafka-tracer) with its default values, so
//! the chart is the one source of both. `cargo xtask test` fails when the committed file differs
//! from a fresh rendering, or when the chart's appVersion is not the daemon's version (the image
//! tag `cargo xtask image` builds).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::command::output;

const MANIFEST: &str = "deploy/kubernetes/kafka-tracer.yaml";
const CHART: &str = "deploy/helm/kafka-tracer";

const HEADER: &str = "\
# kafka-tracer as a DaemonSet: one tracer per node, least privilege. Generated from the Helm
# chart deploy/helm/kafka-tracer with its default values by `cargo xtask manifest`: edit the
# chart, not this file.
#   kubectl apply -f deploy/kubernetes/kafka-tracer.yaml
# Set OTEL_EXPORTER_OTLP_ENDPOINT to your collector (or Jaeger) and the image to where you
# pushed `cargo xtask image`.
apiVersion: v1
kind: Namespace
metadata:
  name: kafka-tracer
";

/// The manifest as the chart renders it now (with the Helm `setup::helm` installs).
fn render(root: &Path) -> anyhow::Result<String> {
    let chart = std::fs::read_to_string(root.join(CHART).join("Chart.yaml"))?;
    let app_version = format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"));
    if !chart.lines().any(|l| l == app_version) {
        bail!("{CHART}/Chart.yaml: expected `{app_version}` (the workspace version)");
    }
    let rendered = output(
        Command::new(root.join(".venv/bin/helm"))
            .current_dir(root)
            .args([
                "template",
                "kafka-tracer",
                CHART,
                "--namespace",
                "kafka-tracer",
            ]),
    )?;
    Ok(format!("{HEADER}{rendered}"))
}

/// Writes the manifest, or with `check` fails if the committed one is out of date.
pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let fresh = render(root)?;
    let path = root.join(MANIFEST);
    if !check {
        return std::fs::write(&path, fresh).with_context(|| format!("writing {MANIFEST}"));
    }
    let committed =
        std::fs::read_to_string(&path).with_context(|| format!("reading {MANIFEST}"))?;
    if committed != fresh {
        bail!("{MANIFEST} differs from the chart's rendering: run `cargo xtask manifest`");
    }
    Ok(())
}
