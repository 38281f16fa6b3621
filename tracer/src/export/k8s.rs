//! Which container and Kubernetes pod a process belongs to, from what the node itself shows:
//! the process's cgroup paths (container id, pod UID) and the kubelet's log links in
//! /var/log/containers, named `<pod>_<namespace>_<container>-<container id>.log`, which give the
//! pod's name, namespace and container name. No API server access (and so no RBAC) is needed;
//! the workload is recognised from the pod name as controllers generate it.

use std::path::Path;

/// What a process's cgroup paths say about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// 64 hex characters, as containerd, CRI-O, Docker and Podman name containers.
    pub id: String,
    /// With dashes, whichever cgroup driver (systemd writes underscores) named it.
    pub pod_uid: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID as cgroups write it: `pod` then 36 characters, dashes or underscores.
fn pod_uid(segment: &str) -> Option<String> {
    // `kubepods-burstable-pod<uid>.slice`: the last "pod" (hex digits hold no 'o').
    let at = segment.rfind("pod")?;
    let uid = segment.get(at + 3..at + 3 + 36)?;
    let dashed = uid.replace('_', "-");
    let ok = dashed.len() == 36
        && dashed.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    ok.then_some(dashed)
}

/// Reads /proc/PID/cgroup (v1 or v2, systemd or cgroupfs driver): the container id is the last
/// 64-hex segment of a path (`cri-containerd-ID.scope`, `crio-ID.scope`, `docker-ID.scope`,
/// `libpod-ID.scope`, `/docker/ID`, `/kubepods/burstable/podUID/ID`), the pod UID the `pod`
/// segment above it.
pub fn container(cgroup: &str) -> Option<Container> {
    cgroup.lines().find_map(|line| {
        // `hierarchy:controllers:path`; the path may hold colons only in theory.
        let path = line.splitn(3, ':').nth(2)?;
        let segments: Vec<&str> = path.split('/').collect();
        let (at, id) = segments.iter().enumerate().rev().find_map(|(i, seg)| {
            let name = seg.strip_suffix(".scope").unwrap_or(seg);
            let id = name.rsplit(['-', ':']).next()?;
            is_container_id(id).then(|| (i, id.to_string()))
        })?;
        let pod_uid = segments[..at].iter().rev().find_map(|s| pod_uid(s));
        Some(Container { id, pod_uid })
    })
}

/// A pod and container, from the kubelet's log link of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub container: String,
}

/// Log links read at most per lookup (a node runs a few hundred containers).
const MAX_LOG_LINKS: usize = 100_000;

/// Finds container `id` among the kubelet's log links in `dir` (/var/log/containers).
pub fn pod(dir: &Path, id: &str) -> Option<Pod> {
    let suffix = format!("-{id}.log");
    std::fs::read_dir(dir)
        .ok()?
        .take(MAX_LOG_LINKS)
        .filter_map(Result::ok)
        .find_map(|e| {
            let name = e.file_name();
            let rest = name.to_str()?.strip_suffix(&suffix)?;
            // Pod names, namespaces and container names are DNS names: no underscores.
            let mut parts = rest.splitn(3, '_');
            Some(Pod {
                name: parts.next()?.to_string(),
                namespace: parts.next()?.to_string(),
                container: parts.next()?.to_string(),
            })
        })
}

/// The alphabet Kubernetes uses for generated name suffixes and pod-template hashes (no
/// vowels, no 0/1/3, so that no word is spelled).
fn generated(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// The workload that owns a pod, as its controller names pods: `<deployment>-<hash>-<suffix>`
/// (a Deployment's ReplicaSet), `<statefulset>-<ordinal>`, `<daemonset or job>-<suffix>`.
/// Returns the semantic-convention attribute for the kind when it is certain, and the name.
pub fn workload(pod: &str) -> Option<(Option<&'static str>, &str)> {
    let (head, last) = pod.rsplit_once('-')?;
    if last.bytes().all(|b| b.is_ascii_digit()) && !last.is_empty() {
        return Some((Some("k8s.statefulset.name"), head));
    }
    if !generated(last, 5..=5) {
        return None;
    }
    match head.rsplit_once('-') {
        Some((deployment, hash)) if generated(hash, 6..=10) => {
            Some((Some("k8s.deployment.name"), deployment))
        }
        _ => Some((None, head)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1ba4b6c2c7bd9e5a0d6a1c9e0f2b4d6e8a0c2e4f6a8b0c2d4e6f8a0b2c4d6e";
    const UID: &str = "8a3b2c1d-4e5f-4a6b-9c8d-7e6f5a4b3c2d";

    /// Cgroup files in the layouts of the common runtimes and drivers (shapes as kubelet,
    /// containerd, CRI-O, Docker and Podman write them; ids replaced).
    #[test]
    fn containers_and_pods_from_cgroup_paths() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            // cgroup v2, systemd driver, containerd
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Some(UID),
            ),
            // cgroup v2, systemd driver, CRI-O, guaranteed QoS
            (
                format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
                Some(UID),
            ),
            // cgroup v2 seen from inside another cgroup namespace
            (
                format!("0::/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                Some(UID),
            ),
            // cgroup v1, cgroupfs driver, containerd
            (
                format!(
                    "12:memory:/kubepods/burstable/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}"
                ),
                Some(UID),
            ),
            // cgroup v1, Docker
            (
                format!("12:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}"),
                None,
            ),
            // cgroup v2, systemd driver, Docker and Podman
            (format!("0::/system.slice/docker-{ID}.scope"), None),
            (
                format!("0::/machine.slice/libpod-{ID}.scope/container"),
                None,
            ),
        ];
        for (cgroup, uid) in cases {
            let c = container(&cgroup).unwrap_or_else(|| panic!("{cgroup}"));
            assert_eq!(c.id, ID, "{cgroup}");
            assert_eq!(c.pod_uid.as_deref(), uid, "{cgroup}");
        }
        for none in [
            "0::/user.slice/user-0.slice/session-2.scope",
            "0::/",
            "0::/system.slice/kafka.service",
        ] {
            assert_eq!(container(none), None, "{none}");
        }
    }

    #[test]
    fn pods_from_the_kubelets_log_links() {
        let dir = std::env::temp_dir().join(format!("kt-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let other = "0".repeat(64);
        for f in [
            format!("orders-7c9d8f6b5d-x2k4p_shop_app-{ID}.log"),
            format!("orders-7c9d8f6b5d-x2k4p_shop_istio-proxy-{other}.log"),
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        assert_eq!(
            pod(&dir, ID),
            Some(Pod {
                name: "orders-7c9d8f6b5d-x2k4p".into(),
                namespace: "shop".into(),
                container: "app".into()
            })
        );
        assert_eq!(pod(&dir, &"f".repeat(64)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn workloads_from_generated_pod_names() {
        for (pod, want) in [
            (
                "orders-7c9d8f6b5d-x2k4p",
                Some((Some("k8s.deployment.name"), "orders")),
            ),
            ("kafka-2", Some((Some("k8s.statefulset.name"), "kafka"))),
            ("kafka-tracer-x2k4p", Some((None, "kafka-tracer"))),
            ("standalone", None),
            ("my-pod-name", None),
        ] {
            assert_eq!(workload(pod), want, "{pod}");
        }
    }
}
