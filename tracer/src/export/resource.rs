//! The OpenTelemetry resource of each traced process: who sent or received the records. The
//! service name is what a Jaeger user searches by, so it is chosen with care, most specific
//! first: an operator's rule, the process's own `OTEL_SERVICE_NAME` (an application already
//! configured for OpenTelemetry keeps its name), the tracer's `OTEL_SERVICE_NAME` or
//! `service.name` resource attribute, the program an interpreter runs (`python3 orders.py`
//! is `orders`, `java -jar billing.jar` is `billing`), the executable, the thread name.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::k8s;
use crate::spans::Value;

/// The attributes of a traced process, as an OpenTelemetry resource.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub attributes: Vec<(String, Value)>,
}

/// What a service rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// The executable's file name.
    Exe,
    /// The command line, arguments separated by spaces.
    Cmdline,
    /// The process's cgroup paths (its container, pod or systemd unit).
    Cgroup,
}

/// `FIELD:TEXT=NAME`: processes whose FIELD contains TEXT report as service NAME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRule {
    field: Field,
    text: String,
    name: String,
}

impl ServiceRule {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "invalid service rule {s:?} (--service-rule / KAFKA_TRACER_SERVICE_RULES): use FIELD:TEXT=NAME with FIELD exe, cmdline or cgroup, e.g. cmdline:orders.jar=orders"
            )
        };
        let (field, rest) = s.split_once(':').ok_or_else(bad)?;
        let (text, name) = rest.rsplit_once('=').ok_or_else(bad)?;
        let field = match field.trim() {
            "exe" => Field::Exe,
            "cmdline" => Field::Cmdline,
            "cgroup" => Field::Cgroup,
            _ => return Err(bad()),
        };
        let (text, name) = (text.trim(), name.trim());
        if text.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            field,
            text: text.into(),
            name: name.into(),
        })
    }
}

/// What /proc says of a process, as far as naming goes.
#[derive(Debug, Default)]
struct Process {
    exe: Option<String>,
    comm: Option<String>,
    /// The program part of `args[0]` (see [`command`]).
    command: Option<String>,
    args: Vec<String>,
    cgroup: String,
    /// `OTEL_SERVICE_NAME` in the process's environment.
    own_service: Option<String>,
}

/// Bytes read from a /proc file at most: command lines and environments can be huge.
const PROC_READ_LIMIT: u64 = 64 << 10;

fn read_limited(path: PathBuf) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(PROC_READ_LIMIT).read_to_end(&mut out);
    }
    out
}

impl Process {
    fn read(dir: PathBuf) -> Self {
        let nul_separated = |b: Vec<u8>| -> Vec<String> {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        };
        let args = nul_separated(read_limited(dir.join("cmdline")));
        let file_name =
            |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let command = args.first().map(|a| command(a));
        Self {
            // The exe link needs ptrace access (CAP_SYS_PTRACE for processes with more
            // capabilities than the tracer's); the command line, readable by all, names the
            // program too.
            exe: std::fs::read_link(dir.join("exe"))
                .ok()
                .and_then(|p| file_name(&p))
                .or_else(|| command.as_deref().and_then(|c| file_name(c.as_ref()))),
            command,
            comm: std::fs::read_to_string(dir.join("comm"))
                .ok()
                .map(|s| s.trim().to_string()),
            args,
            cgroup: String::from_utf8_lossy(&read_limited(dir.join("cgroup"))).into_owned(),
            own_service: nul_separated(read_limited(dir.join("environ")))
                .into_iter()
                .find_map(|v| {
                    v.strip_prefix("OTEL_SERVICE_NAME=")
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                }),
        }
    }

    fn matches(&self, rule: &ServiceRule) -> bool {
        match rule.field {
            Field::Exe => self.exe.as_deref().is_some_and(|e| e.contains(&rule.text)),
            Field::Cmdline => self.args.join(" ").contains(&rule.text),
            Field::Cgroup => self.cgroup.contains(&rule.text),
        }
    }
}

/// The program part of a command line's first argument, which is all the tracer exports of a
/// command line: a process that rewrote its title (setproctitle, Perl's `$0`, Node's
/// `process.title`) may have put its whole command line, secrets included, into `args[0]`, so
/// it is cut at the first whitespace and before any `=`, and bounded like every other id.
fn command(arg0: &str) -> String {
    let end = arg0
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(arg0.len());
    crate::kafka::names::id(&arg0.as_bytes()[..end])
}

/// The file name of a path without its extension: `/srv/orders.py` is `orders`.
fn stem(path: &str) -> Option<String> {
    let p = std::path::Path::new(path);
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

/// The program an interpreter or a JVM runs, from its arguments (`args[0]` is the
/// interpreter): the script, module, jar or main class. `None` for other executables and
/// for interactive or `-c`/`-e` runs.
fn program(exe: &str, args: &[String]) -> Option<String> {
    let rest = args.get(1..)?;
    let kind = exe.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let mut it = rest.iter();
    match kind {
        "python" | "pypy" => {
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-m" => return it.next().map(|m| m.rsplit('.').next().unwrap_or(m).into()),
                    "-c" => return None,
                    "-W" | "-X" | "--check-hash-based-pycs" => {
                        it.next();
                    }
                    a if a.starts_with('-') => {}
                    a => return stem(a),
                }
            }
            None
        }
        "java" => {
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-jar" => return it.next().and_then(|j| stem(j)),
                    "-m" | "--module" => {
                        return it.next().map(|m| m.split('/').next().unwrap_or(m).into());
                    }
                    "-cp" | "-classpath" | "--class-path" | "-p" | "--module-path"
                    | "--add-opens" | "--add-exports" | "--add-modules" => {
                        it.next();
                    }
                    a if a.starts_with('-') => {}
                    class => return class.rsplit('.').next().map(str::to_string),
                }
            }
            None
        }
        "node" | "ruby" | "perl" | "php" | "bun" | "deno" => {
            for a in it {
                match a.as_str() {
                    // Inline code (`node -e/-p`, `perl -e/-E`, `ruby -e`, `php -r`) names no
                    // program, and may hold anything.
                    "-e" | "-E" | "--eval" | "-p" | "--print" | "-r" => return None,
                    "run" if kind == "deno" || kind == "bun" => {}
                    a if a.starts_with('-') => {}
                    a => return stem(a),
                }
            }
            None
        }
        "dotnet" => rest
            .iter()
            .find(|a| a.ends_with(".dll"))
            .and_then(|a| stem(a)),
        _ => None,
    }
}

/// How resources are named.
#[derive(Debug, Default)]
pub struct ResourceConfig {
    /// The tracer's `OTEL_SERVICE_NAME`.
    pub service: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, added to every resource.
    pub extra: Vec<(String, String)>,
    pub rules: Vec<ServiceRule>,
    /// The kubelet's container log links (/var/log/containers), naming pods.
    pub container_logs: PathBuf,
    /// `k8s.node.name`, from the DaemonSet's downward API.
    pub node_name: Option<String>,
}

/// Resources by process, read from /proc once per process and [`RESOURCE_TTL`] (a pid can be
/// reused by another program), in a bounded table.
pub struct Resources {
    by_tgid: HashMap<u32, (Arc<Resource>, Instant)>,
    host: String,
    /// The tracer's `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`).
    service: Option<String>,
    cfg: ResourceConfig,
    proc_root: PathBuf,
}

const MAX_RESOURCES: usize = 16384;
const RESOURCE_TTL: Duration = Duration::from_secs(60);

/// Parses `key=value` pairs separated by commas (`OTEL_RESOURCE_ATTRIBUTES`,
/// `OTEL_EXPORTER_OTLP_HEADERS`), values percent-decoded as the specification asks.
pub fn parse_key_values(s: &str) -> Vec<(String, String)> {
    let decode = |v: &str| {
        let b = v.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Some(h) = v
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(h);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

impl Resources {
    pub fn new(cfg: ResourceConfig) -> Self {
        let mut host = [0u8; 256];
        // SAFETY: valid buffer and length.
        let host = if unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0 {
            let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
            String::from_utf8_lossy(&host[..end]).into_owned()
        } else {
            String::new()
        };
        let service = cfg.service.clone().or_else(|| {
            cfg.extra
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        });
        Self {
            by_tgid: HashMap::new(),
            host,
            service,
            cfg,
            proc_root: "/proc".into(),
        }
    }

    /// Reads process `tgid`'s resource now, while it runs: a short-lived client (a CLI tool, a
    /// batch job) may have exited by the time its first exchange ends, and with it its
    /// command line and environment.
    pub fn prefetch(&mut self, tgid: u32) {
        let fresh = self
            .by_tgid
            .get(&tgid)
            .is_some_and(|(_, at)| at.elapsed() < RESOURCE_TTL);
        if !fresh && self.proc_root.join(tgid.to_string()).join("comm").exists() {
            self.of(tgid, "");
        }
    }

    /// The resource of process `tgid` (`comm` is its thread name, the last fallback).
    pub fn of(&mut self, tgid: u32, comm: &str) -> Arc<Resource> {
        if let Some((r, at)) = self.by_tgid.get(&tgid)
            && at.elapsed() < RESOURCE_TTL
        {
            return r.clone();
        }
        let p = Process::read(self.proc_root.join(tgid.to_string()));
        let container = k8s::container(&p.cgroup);
        let pod = container
            .as_ref()
            .and_then(|c| k8s::pod(&self.cfg.container_logs, &c.id));
        let workload = pod.as_ref().and_then(|p| k8s::workload(&p.name));
        let service = self
            .cfg
            .rules
            .iter()
            .find(|r| p.matches(r))
            .map(|r| r.name.clone())
            .or_else(|| p.own_service.clone())
            .or_else(|| self.service.clone())
            .or_else(|| workload.map(|(_, name)| name.to_string()))
            .or_else(|| p.exe.as_deref().and_then(|e| program(e, &p.args)))
            .or_else(|| p.exe.clone())
            .or_else(|| p.comm.clone())
            .unwrap_or_else(|| comm.to_string());
        // Named by another process (its environment, its file names): bounded like a wire id.
        let service = crate::kafka::names::id(service.as_bytes());
        let mut attributes: Vec<(String, Value)> = vec![
            ("service.name".into(), service.as_str().into()),
            ("process.pid".into(), (tgid as i64).into()),
            ("host.name".into(), self.host.as_str().into()),
            ("telemetry.sdk.name".into(), "kafka-tracer".into()),
        ];
        if let Some(exe) = &p.exe {
            let exe = crate::kafka::names::id(exe.as_bytes());
            attributes.push(("process.executable.name".into(), exe.as_str().into()));
        }
        if let Some(c) = &p.command {
            // The command line can hold secrets; its program name alone cannot.
            attributes.push(("process.command".into(), c.as_str().into()));
        }
        if let Some(c) = &container {
            attributes.push(("container.id".into(), c.id.as_str().into()));
            if let Some(uid) = &c.pod_uid {
                attributes.push(("k8s.pod.uid".into(), uid.as_str().into()));
            }
        }
        if let Some(pod) = &pod {
            for (k, v) in [
                ("k8s.pod.name", &pod.name),
                ("k8s.namespace.name", &pod.namespace),
                ("k8s.container.name", &pod.container),
            ] {
                attributes.push((k.into(), v.as_str().into()));
            }
            if let Some((Some(kind), name)) = workload {
                attributes.push((kind.into(), name.into()));
            }
        }
        if let Some(node) = &self.cfg.node_name {
            attributes.push(("k8s.node.name".into(), node.as_str().into()));
        }
        for (k, v) in &self.cfg.extra {
            if k != "service.name" {
                attributes.push((k.clone(), v.as_str().into()));
            }
        }
        let r = Arc::new(Resource { attributes });
        if self.by_tgid.len() >= MAX_RESOURCES {
            self.by_tgid.clear();
        }
        self.by_tgid.insert(tgid, (r.clone(), Instant::now()));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn rewritten_titles_give_only_their_program() {
        for (arg0, want) in [
            ("/usr/bin/worker", "/usr/bin/worker"),
            // setproctitle: the whole command line in args[0].
            ("worker --password=hunter2 --user admin", "worker"),
            ("app:--db-password=hunter2", "app:--db-password"),
            ("nginx: master process /usr/sbin/nginx", "nginx:"),
            ("PASSWORD=hunter2", "PASSWORD"),
            ("\tworker", ""),
        ] {
            let got = command(arg0);
            assert_eq!(got, want, "{arg0:?}");
            assert!(!got.contains("hunter2"));
        }
        assert_eq!(command(&"x".repeat(4096)), crate::kafka::names::INVALID);
    }

    /// A process that rewrote its title: no secret in any resource attribute.
    #[test]
    fn a_rewritten_title_leaves_no_secret_in_the_resource() {
        let root = std::env::temp_dir().join(format!("kt-proc-title-{}", std::process::id()));
        let proc_dir = root.join("4242");
        std::fs::create_dir_all(&proc_dir).unwrap();
        std::fs::write(
            proc_dir.join("cmdline"),
            b"billing-worker --password=hunter2 --token=abc\0\0",
        )
        .unwrap();
        std::fs::write(proc_dir.join("comm"), b"billing-worker\n").unwrap();
        let mut resources = Resources::new(ResourceConfig::default());
        resources.proc_root = root.clone();
        let res = resources.of(4242, "billing-worker");
        let _ = std::fs::remove_dir_all(&root);
        for (k, v) in &res.attributes {
            assert!(!format!("{v:?}").contains("hunter2"), "{k}: {v:?}");
            assert!(!format!("{v:?}").contains("abc"), "{k}: {v:?}");
        }
        assert!(
            res.attributes
                .iter()
                .any(|(k, v)| k == "service.name" && format!("{v:?}").contains("billing-worker"))
        );
    }

    #[test]
    fn interpreters_are_named_after_their_program() {
        for (exe, cmdline, want) in [
            (
                "python3.11",
                "python3 -u /srv/app/orders.py --fast",
                Some("orders"),
            ),
            (
                "python3",
                "python3 -X dev -m billing.worker",
                Some("worker"),
            ),
            ("python3", "python3 -c print(1)", None),
            ("python3", "python3", None),
            (
                "java",
                "java -Xmx1g -jar /opt/billing-1.2.jar",
                Some("billing-1.2"),
            ),
            (
                "java",
                "java -cp a.jar:b.jar com.shop.OrderService x",
                Some("OrderService"),
            ),
            (
                "java",
                "java --module-path m -m shop.orders/com.shop.Main",
                Some("shop.orders"),
            ),
            ("node", "node --inspect server.js", Some("server")),
            ("node", "node -e 1", None),
            ("node", "node -p process.env.SECRET", None),
            ("perl", "perl -E say$ENV{TOKEN}", None),
            ("dotnet", "dotnet /app/Payments.dll", Some("Payments")),
            ("kafka-producer", "kafka-producer --x", None),
        ] {
            assert_eq!(
                program(exe, &args(cmdline)).as_deref(),
                want,
                "{exe}: {cmdline}"
            );
        }
    }

    #[test]
    fn rules_parse_and_match() {
        let r = ServiceRule::parse("cmdline:orders.jar=orders").unwrap();
        let p = Process {
            exe: Some("java".into()),
            args: args("java -jar /srv/orders.jar"),
            cgroup: "0::/system.slice/pay.service".into(),
            ..Default::default()
        };
        assert!(p.matches(&r));
        assert!(p.matches(&ServiceRule::parse("cgroup:pay.service=pay").unwrap()));
        assert!(p.matches(&ServiceRule::parse("exe:jav=j").unwrap()));
        assert!(!p.matches(&ServiceRule::parse("exe:python=p").unwrap()));
        for bad in ["orders", "cmd:x=y", "exe:=y", "exe:x=", "exe:x"] {
            let e = ServiceRule::parse(bad).unwrap_err().to_string();
            assert!(e.contains("FIELD:TEXT=NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn key_values_are_split_and_decoded() {
        assert_eq!(
            parse_key_values("deployment.environment=prod, team=pay%2Cments,bad,=x"),
            vec![
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "pay,ments".into())
            ]
        );
    }

    #[test]
    fn the_most_specific_name_wins() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let exe = exe.file_name().unwrap().to_string_lossy().into_owned();
        let name = |r: &Resource| r.attributes[0].1.clone();
        let cfg = |service: Option<&str>, extra: Vec<(String, String)>, rules| ResourceConfig {
            service: service.map(str::to_string),
            extra,
            rules,
            ..Default::default()
        };
        let mut r = Resources::new(cfg(None, vec![("team".into(), "pay".into())], vec![]));
        let res = r.of(me, "x");
        assert_eq!(name(&res), exe.as_str().into());
        assert!(res.attributes.contains(&("team".into(), "pay".into())));
        assert!(res.attributes.iter().any(|(k, _)| k == "process.command"));
        let mut r = Resources::new(cfg(
            None,
            vec![("service.name".into(), "from-attrs".into())],
            vec![],
        ));
        assert_eq!(name(&r.of(me, "x")), "from-attrs".into());
        let rule = ServiceRule::parse(&format!("exe:{exe}=ruled")).unwrap();
        let mut r = Resources::new(cfg(Some("global"), vec![], vec![rule]));
        assert_eq!(name(&r.of(me, "x")), "ruled".into());
        let mut r = Resources::new(cfg(Some("global"), vec![], vec![]));
        assert_eq!(name(&r.of(me, "x")), "global".into());
    }

    /// A process in a Kubernetes pod (its /proc and the kubelet's log links laid out as on a
    /// node): container, pod and workload attributes, and the workload as service name.
    #[test]
    fn pods_name_their_processes() {
        let id = "3f1ba4b6c2c7bd9e5a0d6a1c9e0f2b4d6e8a0c2e4f6a8b0c2d4e6f8a0b2c4d6e";
        let uid = "8a3b2c1d-4e5f-4a6b-9c8d-7e6f5a4b3c2d";
        let root = std::env::temp_dir().join(format!("kt-node-{}", std::process::id()));
        let (proc_dir, logs) = (root.join("proc/4242"), root.join("logs"));
        std::fs::create_dir_all(&proc_dir).unwrap();
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(
            proc_dir.join("cgroup"),
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope\n",
                uid.replace('-', "_")
            ),
        )
        .unwrap();
        std::fs::write(proc_dir.join("cmdline"), b"python3\0/app/worker.py\0").unwrap();
        std::fs::write(
            logs.join(format!("orders-7c9d8f6b5d-x2k4p_shop_app-{id}.log")),
            "",
        )
        .unwrap();
        let mut r = Resources::new(ResourceConfig {
            container_logs: logs,
            node_name: Some("node-1".into()),
            ..Default::default()
        });
        r.proc_root = root.join("proc");
        let res = r.of(4242, "python3");
        std::fs::remove_dir_all(&root).unwrap();
        for (k, v) in [
            ("service.name", "orders"),
            ("container.id", id),
            ("k8s.pod.uid", uid),
            ("k8s.pod.name", "orders-7c9d8f6b5d-x2k4p"),
            ("k8s.namespace.name", "shop"),
            ("k8s.container.name", "app"),
            ("k8s.deployment.name", "orders"),
            ("k8s.node.name", "node-1"),
        ] {
            assert!(
                res.attributes.contains(&(k.into(), v.into())),
                "{k}={v} missing: {:?}",
                res.attributes
            );
        }
    }
}
