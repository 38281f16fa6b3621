//! The brokers the end-to-end tests run against, each on 127.0.0.1 with free ports and stopped
//! on drop: Apache Kafka itself (the broker users run: KRaft, one node in combined mode, from
//! the jars `cargo xtask test` copies from Maven Central), and tansu (a Kafka-compatible broker
//! written in Rust, from the Python virtualenv) as a second, independent implementation.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long Apache Kafka may take to format its storage and listen (a cold JVM on a loaded
/// 2-core machine takes 5-15 s).
const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(90);
/// tansu listens within milliseconds.
const TANSU_START_TIMEOUT: Duration = Duration::from_secs(10);
/// The cluster id every test broker is formatted with (Kafka's quickstart example id).
const CLUSTER_ID: &str = "MkU3OEVBNTcwNTJENDM2Qk";

/// Which broker implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kafka,
    Tansu,
}

/// A running broker.
pub struct Broker {
    child: Child,
    /// The PLAINTEXT listener's port.
    pub port: u16,
    pub kind: Kind,
    /// Apache Kafka's configuration, data and log (removed on drop).
    dir: Option<PathBuf>,
    /// The TLS and SASL listeners, when started with them.
    pub secure: Option<SecurePorts>,
}

/// The listeners of [`Broker::apache_secure`] besides PLAINTEXT: TLS, SASL over TLS, and SASL
/// without TLS, each SASL one taking PLAIN and SCRAM-SHA-512 for [`SASL_USER`].
#[derive(Clone, Copy, Debug)]
pub struct SecurePorts {
    pub ssl: u16,
    pub sasl_ssl: u16,
    pub sasl_plaintext: u16,
}

/// The SASL user of the secure broker, and its password: the secret a test looks for in every
/// output of the tracer.
pub const SASL_USER: &str = "alice";
pub const SASL_PASSWORD: &str = "alice-s3cret-p4ssw0rd-never-logged";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A directory named by an environment variable that `cargo xtask test` sets.
pub fn installed(var: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .with_context(|| format!("{var} is not set: run the tests with `cargo xtask test`, which installs Apache Kafka and the Java and Go clients and sets it"))
}

/// The classpath of Apache Kafka's jars (broker, clients, streams, logging).
pub fn kafka_classpath() -> anyhow::Result<String> {
    Ok(format!(
        "{}/*",
        installed("KAFKA_TRACER_KAFKA_LIBS")?.display()
    ))
}

/// A JVM that starts quickly and stays small: tests start many short-lived ones.
pub fn java(classpath: &str) -> Command {
    let mut c = Command::new("java");
    c.args([
        "-Xmx512m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-cp",
        classpath,
    ]);
    c
}

/// Makes `cmd`'s process get SIGKILL when the thread that starts it ends, so a test that is
/// itself killed leaves no broker behind holding ports.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe; no allocation between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl Broker {
    /// The broker's process id (the benchmark weighs its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A tansu broker (in-memory log).
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut broker = Self {
            child: Self::spawn_tansu(port)?,
            port,
            kind: Kind::Tansu,
            dir: None,
            secure: None,
        };
        broker.wait_listening(TANSU_START_TIMEOUT)?;
        Ok(broker)
    }

    /// An Apache Kafka broker: KRaft, one node acting as broker and controller, every internal
    /// topic (offsets, transactions, share-group state) with one replica and one partition, so
    /// transactions and share groups work on one node and it starts quickly.
    pub fn apache() -> anyhow::Result<Self> {
        Self::apache_with(None)
    }

    /// The same, with TLS, SASL_SSL and SASL_PLAINTEXT listeners besides PLAINTEXT: the
    /// server certificate of `certs` (a PEM keystore), and the user [`SASL_USER`] for PLAIN
    /// and SCRAM-SHA-512.
    pub fn apache_secure(certs: &crate::certs::Certs) -> anyhow::Result<Self> {
        Self::apache_with(Some(certs))
    }

    fn apache_with(certs: Option<&crate::certs::Certs>) -> anyhow::Result<Self> {
        let classpath = kafka_classpath()?;
        let (port, controller) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("kt-kafka-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let secure = match certs {
            Some(_) => Some(SecurePorts {
                ssl: free_port()?,
                sasl_ssl: free_port()?,
                sasl_plaintext: free_port()?,
            }),
            None => None,
        };
        let (mut listeners, mut advertised, mut map, mut extra) = (
            format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"),
            format!("PLAINTEXT://127.0.0.1:{port}"),
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_string(),
            String::new(),
        );
        if let (Some(certs), Some(p)) = (certs, &secure) {
            let secure = format!(
                ",SSL://127.0.0.1:{},SASL_SSL://127.0.0.1:{},SASL_PLAINTEXT://127.0.0.1:{}",
                p.ssl, p.sasl_ssl, p.sasl_plaintext
            );
            listeners.push_str(&secure);
            advertised.push_str(&secure);
            map.push_str(",SSL:SSL,SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT");
            // A PEM keystore: the private key, then the certificate chain.
            let keystore = dir.join("keystore.pem");
            std::fs::write(
                &keystore,
                std::fs::read_to_string(&certs.server_key)?
                    + &std::fs::read_to_string(&certs.server_cert)?,
            )?;
            extra = format!(
                "ssl.keystore.type=PEM
ssl.keystore.location={keystore}
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config={plain}
listener.name.sasl_plaintext.plain.sasl.jaas.config={plain}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram}
",
                keystore = keystore.display(),
                plain = format!(
                    "org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USER}=\"{SASL_PASSWORD}\";"
                ),
                scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            );
        }
        let config = dir.join("server.properties");
        std::fs::write(
            &config,
            format!(
                "process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners={listeners}
advertised.listeners={advertised}
controller.listener.names=CONTROLLER
listener.security.protocol.map={map}
{extra}log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
",
                data = dir.join("data").display()
            ),
        )?;
        // The broker logs to a file, whose last lines explain a failed start.
        let log4j = dir.join("log4j2.properties");
        std::fs::write(
            &log4j,
            format!(
                "rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName={}
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
",
                dir.join("broker.log").display()
            ),
        )?;
        let log4j_opt = format!("-Dlog4j2.configurationFile={}", log4j.display());
        let mut format = java(&classpath);
        format
            .arg(&log4j_opt)
            .args(["kafka.tools.StorageTool", "format", "--standalone"])
            .args(["--cluster-id", CLUSTER_ID, "--config"])
            .arg(&config);
        if secure.is_some() {
            // SCRAM credentials live in the metadata log, written at format time in KRaft.
            format.arg("--add-scram").arg(format!(
                "SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]"
            ));
        }
        let format = format
            .output()
            .context("starting java (cargo xtask test installs a JDK)")?;
        if !format.status.success() {
            bail!(
                "formatting Apache Kafka's storage failed: {}",
                String::from_utf8_lossy(&format.stderr)
            );
        }
        let mut cmd = java(&classpath);
        cmd.arg(&log4j_opt)
            .arg("kafka.Kafka")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr"))?);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting Apache Kafka")?;
        let mut broker = Self {
            child,
            port,
            kind: Kind::Kafka,
            dir: Some(dir),
            secure,
        };
        broker.wait_listening(KAFKA_START_TIMEOUT)?;
        Ok(broker)
    }

    /// Waits until the broker accepts connections; fails with its last log lines.
    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{:?} broker did not listen on {} within {timeout:?} ({}); its last log lines:\n{}",
                    self.kind,
                    self.port,
                    exited.map_or("still running".into(), |s| s.to_string()),
                    self.last_log_lines(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The last `n` lines of Apache Kafka's log and standard error.
    pub fn last_log_lines(&self, n: usize) -> String {
        let Some(dir) = &self.dir else {
            return "(tansu logs nothing)".into();
        };
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "{}\n{}",
            tail(&dir.join("broker.log")),
            tail(&dir.join("stderr"))
        )
    }

    /// Stops the broker and starts a new one on the same port, as a restart would (tansu keeps
    /// its log in memory: topics must be created again).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.kind == Kind::Tansu, "only tansu restarts here");
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn_tansu(self.port)?;
        self.wait_listening(TANSU_START_TIMEOUT)
    }

    fn tansu() -> PathBuf {
        super::venv().join("bin/tansu")
    }

    /// A tansu process listening on `port`.
    fn spawn_tansu(port: u16) -> anyhow::Result<Child> {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(Self::tansu());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        cmd.spawn()
            .context("starting tansu (run `cargo xtask setup`)")
    }

    /// Client connections established to this broker's PLAINTEXT listener now.
    pub fn client_connections(&self) -> usize {
        client_connections_to(self.port)
    }

    /// Waits until at least `n` client connections to the broker are established.
    pub fn wait_for_clients(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_for_clients_on(self.port, n, timeout)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) -> anyhow::Result<()> {
        let out = match self.kind {
            Kind::Tansu => Command::new(Self::tansu())
                .args([
                    "topic",
                    "create",
                    "--broker",
                    &format!("tcp://127.0.0.1:{}", self.port),
                ])
                .args(["--partitions", &partitions.to_string(), name])
                .output()?,
            // The AdminClient of librdkafka: a JVM per topic would cost seconds each.
            Kind::Kafka => super::client_command(&[
                "create-topic",
                "confluent",
                &self.bootstrap(),
                name,
                &partitions.to_string(),
            ])
            .output()?,
        };
        anyhow::ensure!(
            out.status.success(),
            "creating topic {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Client connections established now to `port` of this host (from /proc/net/tcp and tcp6).
pub fn client_connections_to(port: u16) -> usize {
    let port = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            // local_address rem_address st: the remote end is the broker, 01 = ESTABLISHED.
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && format!("{} ", f[2]).ends_with(&port) && f[3] == "01"
        })
        .count()
}

/// Waits until at least `n` client connections to `port` are established.
pub fn wait_for_clients_on(port: u16, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while client_connections_to(port) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {n} client connections to port {port} after {timeout:?}",
            client_connections_to(port)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
