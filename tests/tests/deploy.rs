//! The deployment files, checked as the cluster and the kernel would: every manifest under
//! deploy/kubernetes is read into the Kubernetes API types, and a field the API does not know
//! (a typo) fails; and the tracer, run with exactly the user and capabilities the DaemonSet
//! grants, attaches and traces.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tests::{
    Broker, TRACEPARENT, client, consume,
    tracer::{Tracer, proc_status},
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every YAML document of every manifest, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(deploy_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc).unwrap();
                if !v.is_null() {
                    docs.push((path.display().to_string(), v));
                }
            }
        }
    }
    docs
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
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core};
    let kind = (doc["apiVersion"].as_str(), doc["kind"].as_str());
    let back = match kind {
        (Some("v1"), Some("Namespace")) => round_trip::<core::Namespace>(doc),
        (Some("v1"), Some("ServiceAccount")) => round_trip::<core::ServiceAccount>(doc),
        (Some("v1"), Some("Service")) => round_trip::<core::Service>(doc),
        (Some("apps/v1"), Some("DaemonSet")) => round_trip::<apps::DaemonSet>(doc),
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

#[test]
fn manifests_match_the_kubernetes_api() {
    let docs = documents();
    assert!(docs.len() >= 3, "{docs:?}");
    for (file, doc) in &docs {
        if let Err(e) = check(doc) {
            panic!("{file}: {}: {e}", doc["kind"]);
        }
    }
    // A typo must fail: the check is not a formality.
    let (_, mut ds) = docs
        .into_iter()
        .find(|(_, d)| d["kind"] == "DaemonSet")
        .unwrap();
    let spec = ds["spec"]["template"]["spec"].as_object_mut().unwrap();
    let host_pid = spec.remove("hostPID").unwrap();
    spec.insert("hostPid".into(), host_pid);
    assert!(check(&ds).is_err());
}

/// The DaemonSet's container security context: user and added capabilities.
fn granted() -> (u64, Vec<String>) {
    let (_, ds) = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "DaemonSet")
        .unwrap();
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
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

/// As a container runtime would start it from the DaemonSet: the manifest's user, only its
/// capabilities in the bounding set, no privilege escalation. The tracer attaches, traces a
/// producer and a consumer, and names them (from their command lines: the exe link of a
/// process with more capabilities than the tracer's is not readable).
#[test]
fn the_daemonsets_capabilities_are_enough() {
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
    let broker = Broker::start().unwrap();
    broker.create_topic("least-privilege", 1).unwrap();
    let tracer = Tracer::start_wrapped(broker.port, "least-privilege", &[], &wrapper);
    let effective =
        u64::from_str_radix(&proc_status(tracer.child.id(), "CapEff").unwrap(), 16).unwrap();
    // CAP_PERFMON = 38, CAP_BPF = 39.
    assert_eq!(
        effective,
        (1 << 38) | (1 << 39),
        "only the granted capabilities"
    );
    client(&[
        "produce",
        "confluent",
        &broker.bootstrap(),
        "least-privilege",
        "2",
        "none",
        "--traceparent",
        TRACEPARENT,
        "--partition",
        "0",
    ])
    .unwrap();
    consume(&broker.bootstrap(), "least-privilege", "2").unwrap();
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
