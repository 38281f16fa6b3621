//! The deployment files, checked as Helm, the cluster and the kernel would: the chart lints and
//! rejects unknown values; every document of the plain manifest and of the chart rendered with
//! default and with every optional value is read into the Kubernetes API types, and a field the
//! API does not know (a typo) fails; and the tracer, run with exactly the user and capabilities
//! the DaemonSet grants, attaches and traces, plaintext and TLS. (`cargo xtask test` also checks that the plain
//! manifest is the chart's current rendering.)

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tests::{
    Broker,
    certs::Certs,
    client_env, produce_and_consume, produce_and_consume_env,
    tracer::{Tracer, logged, proc_status},
    venv,
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The YAML documents of `text`.
fn parse(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Every document of the plain manifest.
fn manifest() -> Vec<Value> {
    parse(&std::fs::read_to_string(deploy_dir().join("kubernetes/kafka-tracer.yaml")).unwrap())
}

/// The DaemonSet's tracer container in `docs`.
fn container(docs: &[Value]) -> &Value {
    &find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
}

/// Runs Helm (installed by `cargo xtask setup`'s test environment) on the chart.
fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(venv().join("bin/helm"))
        .args(args)
        .arg(deploy_dir().join("helm/kafka-tracer"))
        .output()
        .expect("helm is installed by `cargo xtask test`");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The chart rendered as release `tracer` in namespace `observability` with `values` on top of
/// the defaults.
fn render(values: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", "tracer", "--namespace", "observability"];
    for v in values {
        args.extend(["--set-json", v]);
    }
    helm(&args).map(|text| parse(&text))
}

/// Every optional value set.
const ALL_OPTIONS: [&str; 11] = [
    r#"serviceMonitor={"enabled":true,"interval":"15s","labels":{"release":"prometheus"}}"#,
    r#"otlp={"endpoint":"","protocol":"grpc","compression":"gzip"}"#,
    r#"serviceRules=["cmdline:billing-worker=billing","exe:/opt/app=app"]"#,
    r#"resourceAttributes={"k8s.cluster.name":"prod-eu","deployment.environment":"prod"}"#,
    r#"extraEnv=[{"name":"KAFKA_TRACER_LOG","value":"debug"}]"#,
    r#"podLabels={"team":"data"}"#,
    r#"priorityClassName="system-node-critical""#,
    r#"metricsBindAddress="::""#,
    r#"networkPolicy={"enabled":true,"scrapeNamespaces":["monitoring","ops"]}"#,
    r#"recordHeaders="none""#,
    "readTls=false",
];

/// The prometheus-operator ServiceMonitor fields the chart uses (a CRD: not in k8s-openapi),
/// with unknown fields refused as the operator's schema would.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
}

/// Reads `doc` into its API type and back: the API's fields only survive the trip, so any
/// difference is a field Kubernetes would reject or ignore.
fn check(doc: &Value) -> Result<(), String> {
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
        doc: &Value,
    ) -> Result<Value, String> {
        let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net};
    let kind = (doc["apiVersion"].as_str(), doc["kind"].as_str());
    let back = match kind {
        (Some("v1"), Some("Namespace")) => round_trip::<core::Namespace>(doc),
        (Some("v1"), Some("ServiceAccount")) => round_trip::<core::ServiceAccount>(doc),
        (Some("v1"), Some("Service")) => round_trip::<core::Service>(doc),
        (Some("apps/v1"), Some("DaemonSet")) => round_trip::<apps::DaemonSet>(doc),
        (Some("networking.k8s.io/v1"), Some("NetworkPolicy")) => {
            round_trip::<net::NetworkPolicy>(doc)
        }
        (Some("monitoring.coreos.com/v1"), Some("ServiceMonitor")) => {
            round_trip::<ServiceMonitor>(doc)
        }
        other => return Err(format!("unexpected kind {other:?}")),
    }?;
    if &back == doc {
        Ok(())
    } else {
        Err(format!(
            "fields the API does not know:\n{}\nread as:\n{}",
            serde_json::to_string_pretty(doc).unwrap(),
            serde_json::to_string_pretty(&back).unwrap()
        ))
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:?}"))
}

#[test]
fn manifests_match_the_kubernetes_api() {
    let sets = [
        ("the plain manifest", manifest()),
        ("the chart's defaults", render(&[]).unwrap()),
        ("the chart with every option", render(&ALL_OPTIONS).unwrap()),
    ];
    for (name, docs) in &sets {
        assert!(docs.len() >= 2, "{name}: {docs:?}");
        for doc in docs {
            if let Err(e) = check(doc) {
                panic!("{name}: {}: {e}", doc["kind"]);
            }
        }
    }
    // A typo must fail: the check is not a formality.
    let mut ds = find(&sets[0].1, "DaemonSet").clone();
    let spec = ds["spec"]["template"]["spec"].as_object_mut().unwrap();
    let host_pid = spec.remove("hostPID").unwrap();
    spec.insert("hostPid".into(), host_pid);
    assert!(check(&ds).is_err());
    let mut sm = find(&sets[2].1, "ServiceMonitor").clone();
    sm["spec"]["endpoints"][0]["intervall"] = json!("15s");
    assert!(check(&sm).is_err());
}

/// Helm's own checks pass, and a misspelt or ill-typed value is refused (values.schema.json)
/// instead of being silently ignored.
#[test]
fn the_chart_lints_and_refuses_unknown_values() {
    helm(&["lint", "--strict"]).unwrap();
    for bad in [
        r#"otlp={"endpiont":"http://collector:4318"}"#,
        r#"sampling={"sampler":"sometimes"}"#,
        r#"kafkaPorts=["9092"]"#,
        r#"serviceRules=["billing"]"#,
        r#"otlp={"endpoint":"https://collector:4318"}"#,
        r#"metricsBindAddress="0.0.0.0:9464""#,
        r#"recordHeaders="values""#,
        r#"networkPolicy={"enabled":true,"scrapeNamespaces":["Not A Namespace"]}"#,
    ] {
        let err = render(&[bad]).expect_err(bad);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{bad}: {err}"
        );
    }
}

/// What each option turns into: the environment the daemon reads and the scrape objects aimed
/// at the pods.
#[test]
fn chart_values_reach_the_daemon() {
    let env = |docs: &[Value]| -> Vec<(String, Value)> {
        container(docs)["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
            .collect()
    };
    let value = |env: &[(String, Value)], name: &str| {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    let defaults = render(&[]).unwrap();
    let env_defaults = env(&defaults);
    assert_eq!(
        value(&env_defaults, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some(json!("http://otel-collector.observability:4318"))
    );
    assert_eq!(
        value(&env_defaults, "KAFKA_TRACER_PORTS"),
        Some(json!("9092"))
    );
    assert_eq!(
        value(&env_defaults, "KAFKA_TRACER_RECORD_HEADERS"),
        Some(json!("all"))
    );
    // TLS is read by default, which needs CAP_SYS_PTRACE; without it, neither.
    let caps = |docs: &[Value]| container(docs)["securityContext"]["capabilities"]["add"].clone();
    assert_eq!(
        value(&env_defaults, "KAFKA_TRACER_TLS"),
        Some(json!("true"))
    );
    assert_eq!(
        caps(&defaults),
        json!(["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"])
    );
    assert!(defaults.iter().all(|d| d["kind"] != "ServiceMonitor"));
    assert!(defaults.iter().all(|d| d["kind"] != "NetworkPolicy"));
    assert_eq!(
        value(&env_defaults, "KAFKA_TRACER_METRICS_ADDR"),
        Some(json!("0.0.0.0:9464"))
    );

    let all = render(&ALL_OPTIONS).unwrap();
    let env_all = env(&all);
    // No endpoint: the variable is left out, and the daemon prints spans to its log.
    assert_eq!(value(&env_all, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
    assert_eq!(
        value(&env_all, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        Some(json!("grpc"))
    );
    assert_eq!(
        value(&env_all, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        Some(json!("gzip"))
    );
    assert_eq!(
        value(&env_all, "KAFKA_TRACER_SERVICE_RULES"),
        Some(json!("cmdline:billing-worker=billing,exe:/opt/app=app"))
    );
    assert_eq!(
        value(&env_all, "OTEL_RESOURCE_ATTRIBUTES"),
        Some(json!(
            "deployment.environment=prod,k8s.cluster.name=prod-eu"
        ))
    );
    assert_eq!(value(&env_all, "KAFKA_TRACER_LOG"), Some(json!("debug")));
    assert_eq!(value(&env_all, "KAFKA_TRACER_TLS"), Some(json!("false")));
    assert_eq!(caps(&all), json!(["BPF", "PERFMON"]));
    assert_eq!(
        value(&env_all, "KAFKA_TRACER_RECORD_HEADERS"),
        Some(json!("none"))
    );
    assert_eq!(
        value(&env_all, "KAFKA_TRACER_METRICS_ADDR"),
        Some(json!("[::]:9464"))
    );
    // The NetworkPolicy selects the tracer pods, and admits the scrapers to the metrics port.
    let policy = find(&all, "NetworkPolicy");
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &find(&all, "DaemonSet")["spec"]["template"]["metadata"]["labels"][k],
            v,
            "policy selector {k}"
        );
    }
    let rule = &policy["spec"]["ingress"][0];
    assert_eq!(
        rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["monitoring", "ops"])
    );
    assert_eq!(rule["ports"][0]["port"], "metrics");
    // The ServiceMonitor finds the Service, and the Service the DaemonSet's pods and port.
    let ds = find(&all, "DaemonSet");
    let service = find(&all, "Service");
    let monitor = find(&all, "ServiceMonitor");
    let pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    assert_eq!(pod_labels["team"], "data");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "service selector {k}");
    }
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "monitor selector {k}");
    }
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"],
        "metrics"
    );
    assert_eq!(monitor["metadata"]["namespace"], "observability");
}

/// The DaemonSet's container security context: user and added capabilities.
fn granted() -> (u64, Vec<String>) {
    let docs = manifest();
    let sc = &container(&docs)["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let caps = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_ascii_lowercase())
        .collect();
    (sc["runAsUser"].as_u64().unwrap(), caps)
}

/// The capability numbers of the names a manifest may grant (linux/capability.h).
const CAPABILITY_BITS: [(&str, u32); 4] = [
    ("sys_ptrace", 19),
    ("sys_admin", 21),
    ("perfmon", 38),
    ("bpf", 39),
];

/// The tracer on `port`, started as a container runtime would start it from the DaemonSet:
/// the manifest's user, only its capabilities in the bounding set, no privilege escalation.
/// Checks that it holds exactly those capabilities.
fn as_the_daemonset(port: u16, name: &str) -> Tracer {
    let (user, caps) = granted();
    let set = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let wrapper: Vec<String> = [
        "setpriv",
        "--reuid",
        &user.to_string(),
        "--regid",
        &user.to_string(),
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps",
        &set,
        "--bounding-set",
        &set,
        "--",
    ]
    .map(str::to_string)
    .to_vec();
    let tracer = Tracer::start_wrapped(&[port], name, &[], &wrapper);
    let effective =
        u64::from_str_radix(&proc_status(tracer.child.id(), "CapEff").unwrap(), 16).unwrap();
    let expected = caps.iter().fold(0u64, |bits, c| {
        let (_, bit) = CAPABILITY_BITS
            .iter()
            .find(|(n, _)| *n == c.as_str())
            .unwrap_or_else(|| panic!("capability {c} not in CAPABILITY_BITS"));
        bits | 1 << bit
    });
    assert_eq!(
        effective, expected,
        "only the granted capabilities: {caps:?}"
    );
    tracer
}

/// The tracer started as the DaemonSet starts it attaches, traces a producer and a consumer,
/// and names them from their command lines.
#[test]
fn the_daemonsets_capabilities_are_enough() {
    let broker = Broker::start().unwrap();
    broker.create_topic("least-privilege", 1).unwrap();
    let tracer = as_the_daemonset(broker.port, "least-privilege");
    produce_and_consume(&broker.bootstrap(), "least-privilege", "2", "none").unwrap();
    let (resources, log) = tracer.stop_with_resources();
    let spans: Vec<(&str, &Value)> = resources
        .iter()
        .flat_map(|(service, spans)| spans.iter().map(move |s| (service.as_str(), s)))
        .collect();
    let send: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s["name"] == "send least-privilege")
        .collect();
    let poll: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s["name"] == "poll least-privilege")
        .collect();
    assert_eq!(send.len(), 1, "{log}");
    assert!(!poll.is_empty(), "{log}");
    assert!(
        poll.iter()
            .all(|(_, p)| p["parentSpanId"] == send[0].1["spanId"])
    );
    assert!(
        spans.iter().all(|(service, _)| *service == "client"),
        "named from the command line: {resources:?}"
    );
}

/// The same for a client over TLS: the tracer finds its TLS library in the client's mappings,
/// opens it through `/proc/PID/root` (which the kernel allows only to a process that may ptrace
/// the client: a client running as root holds more capabilities than the tracer) and attaches
/// uprobes to it (CAP_SYS_ADMIN), and reads the plaintext: the records are in linked spans.
#[test]
fn the_daemonsets_capabilities_read_tls() {
    let certs = Certs::make("least-privilege-tls").unwrap();
    let broker = Broker::apache_secure(&certs).unwrap();
    let port = broker.secure.unwrap().ssl;
    let bootstrap = format!("127.0.0.1:{port}");
    let tracer = as_the_daemonset(port, "least-privilege-tls");
    let env = [
        ("KT_SECURITY_PROTOCOL", "SSL".to_string()),
        ("KT_SSL_CA", certs.ca.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The library is probed at the client's first connection, which a fast client can outrun
    // (see kafka_tls.rs): a first run, not asserted on.
    broker.create_topic("least-privilege-tls-first", 1).unwrap();
    client_env(
        &env,
        &[
            "produce",
            "confluent",
            &bootstrap,
            "least-privilege-tls-first",
            "1",
            "none",
        ],
    )
    .unwrap();
    broker.create_topic("least-privilege-tls", 1).unwrap();
    produce_and_consume_env(&env, &bootstrap, "least-privilege-tls", "3", "none").unwrap();
    let (spans, log) = tracer.stop_with_log();
    assert!(logged(&log, "tls_probed_objects") >= 1, "{log}");
    let send: Vec<_> = spans
        .iter()
        .filter(|s| s["name"] == "send least-privilege-tls")
        .collect();
    let poll: Vec<_> = spans
        .iter()
        .filter(|s| s["name"] == "poll least-privilege-tls")
        .collect();
    assert!(!send.is_empty(), "{log}");
    assert!(!poll.is_empty(), "{log}");
    assert!(
        poll.iter()
            .all(|p| send.iter().any(|s| p["parentSpanId"] == s["spanId"])),
        "{log}"
    );
}
