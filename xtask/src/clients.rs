//! The Apache Kafka broker and the Java and Go clients of the end-to-end tests and the demo,
//! installed from Maven Central and the Go module proxy into a cache outside `target/`
//! (`$XDG_CACHE_HOME/kafka-tracer`, else `~/.cache/kafka-tracer`), so `cargo clean` keeps them
//! and a second run finds them in well under a second.
//!
//! - `tests/java/pom.xml` names the broker (`kafka_2.13`), `kafka-clients`, `kafka-streams` and
//!   the broker's logging; `mvn dependency:copy-dependencies` puts their jars in one directory,
//!   whose name carries a hash of the POM, so a changed pin installs afresh.
//! - `tests/java/src/JavaClient.java` is compiled with `javac` against those jars (no Maven
//!   build plugins to download).
//! - `tests/go` is built with `go build`: franz-go and sarama, pinned by its go.mod and go.sum.
//! - `tests/jaeger` pins Jaeger v2 (its go.mod says which and why); its binary, named by a hash
//!   of go.mod and go.sum, is built once (a few minutes) and kept.
//!
//! Their paths reach the tests and the demo through the environment ([`Paths::export`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    command::{output, run},
    setup::apt_package,
};

/// Where the installed parts are.
pub struct Paths {
    /// Every jar of the broker and the Java clients (a classpath is `libs/*`).
    pub libs: PathBuf,
    /// The compiled Java clients (`JavaClient`).
    pub java_clients: PathBuf,
    /// The Go clients' binary, and the same built stripped (no symbol table).
    pub go_client: PathBuf,
    pub go_client_stripped: PathBuf,
    /// Jaeger v2, where the tests find exported traces again.
    pub jaeger: PathBuf,
}

impl Paths {
    fn vars(&self) -> [(&'static str, &Path); 5] {
        [
            ("KAFKA_TRACER_KAFKA_LIBS", &self.libs),
            ("KAFKA_TRACER_JAVA_CLIENTS", &self.java_clients),
            ("KAFKA_TRACER_GO_CLIENT", &self.go_client),
            ("KAFKA_TRACER_GO_CLIENT_STRIPPED", &self.go_client_stripped),
            ("KAFKA_TRACER_JAEGER", &self.jaeger),
        ]
    }

    /// Hands the paths to a test or demo process.
    pub fn export(&self, cmd: &mut Command) {
        cmd.envs(self.vars());
    }

    /// Prints them as shell assignments, for running single tests by hand.
    pub fn print(&self) {
        for (k, v) in self.vars() {
            println!("export {k}={}", v.display());
        }
    }
}

/// Installs what is missing, checks what is there.
pub fn install(root: &Path) -> anyhow::Result<Paths> {
    let cache = cache_dir()?;
    let java_dir = root.join("tests/java");
    let libs = jars(&java_dir, &cache)?;
    let java_clients = java_clients(&java_dir, &libs, &cache)?;
    let go_dir = root.join("tests/go");
    let go_client = go_build(&go_dir, &cache.join("bin/goclient"), &[])?;
    // The same clients without a symbol table, as stripped release builds ship.
    let go_client_stripped = go_build(
        &go_dir,
        &cache.join("bin/goclient-stripped"),
        &["-ldflags=-s -w"],
    )?;
    let jaeger = jaeger(&root.join("tests/jaeger"), &cache)?;
    Ok(Paths {
        libs,
        java_clients,
        go_client,
        go_client_stripped,
        jaeger,
    })
}

/// `$XDG_CACHE_HOME/kafka-tracer` or `~/.cache/kafka-tracer`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("kafka-tracer"))
}

/// A short, stable hash of some files' contents (FNV-1a), to name what was built from them.
fn fingerprint(files: &[&Path]) -> anyhow::Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        for b in std::fs::read(f).with_context(|| format!("reading {}", f.display()))? {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

/// Makes `dir` by filling a `.partial` sibling with `make` and renaming it, so an interrupted
/// install never leaves a directory that looks complete.
fn fill(dir: &Path, make: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    make(&partial)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir).with_context(|| format!("renaming to {}", dir.display()))
}

/// Java 17+ and Maven, from Debian's packages when missing.
fn java_tools() -> anyhow::Result<()> {
    apt_package("openjdk-17-jdk-headless", &["java", "javac"])?;
    apt_package("maven", &["mvn"])
}

/// The broker's and clients' jars, copied by Maven into `cache/kafka-libs-<pom hash>`.
fn jars(java_dir: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let pom = java_dir.join("pom.xml");
    let dir = cache.join(format!("kafka-libs-{}", fingerprint(&[&pom])?));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    java_tools()?;
    fill(&dir, |partial| {
        run(Command::new("mvn")
            .current_dir(java_dir)
            .args(["--batch-mode", "--quiet", "dependency:copy-dependencies"])
            .arg(format!("-DoutputDirectory={}", partial.display())))
        .context("copying the Apache Kafka jars from Maven Central (tests/java/pom.xml)")?;
        Ok(std::fs::write(partial.join(".complete"), "")?)
    })?;
    Ok(dir)
}

/// `JavaClient` compiled into `cache/java-clients-<source and pom hash>`.
fn java_clients(java_dir: &Path, libs: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let source = java_dir.join("src/JavaClient.java");
    let pom = java_dir.join("pom.xml");
    let dir = cache.join(format!("java-clients-{}", fingerprint(&[&source, &pom])?));
    if dir.join("JavaClient.class").exists() {
        return Ok(dir);
    }
    java_tools()?;
    fill(&dir, |partial| {
        run(Command::new("javac")
            .args(["-nowarn", "-d"])
            .arg(partial)
            .arg("-cp")
            .arg(libs.join("*"))
            .arg(&source))
    })?;
    Ok(dir)
}

/// The Go clients built into `bin` with extra `flags`; `go build` keeps its own cache, so this
/// is quick when nothing changed.
fn go_build(go_dir: &Path, bin: &Path, flags: &[&str]) -> anyhow::Result<PathBuf> {
    let version = output(Command::new("go").arg("version")).map_err(|_| {
        anyhow::anyhow!(
            "Go is not installed: the Go clients (franz-go, sarama) need Go 1.26 or later from https://go.dev/dl (Debian's golang package is too old)"
        )
    })?;
    let status = Command::new("go")
        .current_dir(go_dir)
        .args(["build", "-mod=readonly"])
        .args(flags)
        .arg("-o")
        .arg(bin)
        .arg(".")
        .status()
        .context("starting go build")?;
    if !status.success() {
        bail!(
            "building the Go clients in {} failed ({status}) with {}",
            go_dir.display(),
            version.trim()
        );
    }
    Ok(bin.to_path_buf())
}

/// Jaeger, built from the module `tests/jaeger` pins into `cache/bin/jaeger-<hash>`, once.
fn jaeger(jaeger_dir: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let (module, sums) = (jaeger_dir.join("go.mod"), jaeger_dir.join("go.sum"));
    let bin = cache.join(format!("bin/jaeger-{}", fingerprint(&[&module, &sums])?));
    if bin.exists() {
        return Ok(bin);
    }
    let partial = bin.with_extension("partial");
    run(Command::new("go")
        .current_dir(jaeger_dir)
        .args(["build", "-mod=readonly", "-trimpath", "-o"])
        .arg(&partial)
        .arg("github.com/jaegertracing/jaeger/cmd/jaeger"))
    .context("building Jaeger from tests/jaeger")?;
    std::fs::rename(&partial, &bin).with_context(|| format!("renaming to {}", bin.display()))?;
    Ok(bin)
}
