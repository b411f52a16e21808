//! From a Pod to the CRI's words: the sandbox config (metadata, labels the kubelet finds
//! its sandboxes by, hostname, log directory, cgroup parent by QoS class, namespaces, port
//! mappings) and each container's config (image, command, args, the env and mounts resolved
//! by `env` and `volumes`, working dir, log path, Linux resources from requests and limits
//! as the kubelet computes them).
//!
//! Owns that translation as plain functions (unit-tested without a runtime); it must not
//! call the runtime.
use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PortMapping, Protocol,
};
use k8s_openapi::api::core::v1::{Container, Pod};

use super::env::expand;

/// Label carrying the pod's UID on sandboxes and containers (upstream's name).
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
/// Label carrying the pod's name.
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// Label carrying the pod's namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label carrying the container's name.
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

/// CFS period the kubelet uses (100 ms).
const CPU_PERIOD: i64 = 100_000;

/// The pod's QoS class as upstream computes it.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for container in &containers {
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        for name in ["cpu", "memory"] {
            let request = requests.and_then(|r| r.get(name)).map(|q| q.0.as_str());
            let limit = limits.and_then(|l| l.get(name)).map(|q| q.0.as_str());
            if request.is_some() || limit.is_some() {
                any = true;
            }
            match (request, limit) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if parse_milli(r) != parse_milli(l) => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A quantity in thousandths (`100m` → 100, `1` → 1000, `1Ki` → 1 024 000).
pub fn parse_milli(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    let value = (number * multiplier * 1000.0).ceil();
    value.is_finite().then_some(value as i64)
}

fn meta(pod: &Pod) -> (&str, &str, &str) {
    let m = &pod.metadata;
    (
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or("default"),
        m.uid.as_deref().unwrap_or_default(),
    )
}

/// The labels that identify a pod's sandbox.
pub fn sandbox_labels(pod: &Pod) -> HashMap<String, String> {
    let (name, namespace, uid) = meta(pod);
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(POD_NAME_LABEL.to_owned(), name.to_owned());
    labels.insert(POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    labels.insert(POD_UID_LABEL.to_owned(), uid.to_owned());
    labels
}

/// The pod's cgroup parent: `<root>/kubepods[/burstable|/besteffort]/pod<uid>`.
pub fn cgroup_parent(pod: &Pod, cgroup_root: &str) -> String {
    let (_, _, uid) = meta(pod);
    let root = cgroup_root.trim_end_matches('/');
    match qos_class(pod) {
        "Guaranteed" => format!("{root}/kubepods/pod{uid}"),
        "Burstable" => format!("{root}/kubepods/burstable/pod{uid}"),
        _ => format!("{root}/kubepods/besteffort/pod{uid}"),
    }
}

/// The pod's log directory under the agent's log root (upstream's layout).
pub fn log_directory(pod: &Pod, log_root: &str) -> String {
    let (name, namespace, uid) = meta(pod);
    format!(
        "{}/{namespace}_{name}_{uid}",
        log_root.trim_end_matches('/')
    )
}

/// The sandbox config for a pod.
pub fn sandbox_config(
    pod: &Pod,
    attempt: u32,
    cgroup_root: &str,
    log_root: &str,
) -> PodSandboxConfig {
    let (name, namespace, uid) = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.to_owned());
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp as i32,
                Some("SCTP") => Protocol::Sctp as i32,
                _ => Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.to_owned(),
            namespace: namespace.to_owned(),
            attempt,
        }),
        hostname: if host_network {
            String::new()
        } else {
            hostname
        },
        log_directory: log_directory(pod, log_root),
        port_mappings,
        labels: sandbox_labels(pod),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(pod, cgroup_root),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod fields env reads that the API object may not carry yet (see [`super::env`]).
pub use super::env::PodFields;

/// Linux resources for a container from its requests and limits (cpu shares from the
/// request, CFS quota and memory limit from the limits, oom_score_adj by QoS).
pub fn linux_resources(pod: &Pod, container: &Container) -> LinuxContainerResources {
    let resources = container.resources.as_ref();
    let quantity = |list: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
                    name: &str| {
        list.and_then(|l| l.get(name))
            .and_then(|q| parse_milli(&q.0))
    };
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let cpu_request = quantity(requests, "cpu").or(quantity(limits, "cpu"));
    let shares = cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2));
    let (cpu_period, cpu_quota) = match quantity(limits, "cpu") {
        Some(m) => (CPU_PERIOD, (m * CPU_PERIOD / 1000).max(1000)),
        None => (0, 0),
    };
    let memory = quantity(limits, "memory").map_or(0, |m| m / 1000);
    let oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = quantity(requests, "memory").map_or(0, |m| m / 1000);
            let total = total_memory().max(1);
            (1000 - 1000 * request / total).clamp(3, 999)
        }
    };
    LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares: shares,
        memory_limit_in_bytes: memory,
        oom_score_adj,
        ..Default::default()
    }
}

/// The machine's memory in bytes (from /proc/meminfo; 0 when unreadable).
pub fn total_memory() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The namespaces of the pod's sandbox and containers, as upstream's kubelet sets them:
/// network and IPC shared in the pod (or the node's), PID per container unless the pod
/// shares its process namespace (or uses the node's).
fn namespace_options(pod: &Pod) -> NamespaceOption {
    let spec = pod.spec.clone().unwrap_or_default();
    let node_or = |node: Option<bool>, otherwise: NamespaceMode| {
        if node.unwrap_or(false) {
            NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    NamespaceOption {
        network: node_or(spec.host_network, NamespaceMode::Pod),
        pid: node_or(
            spec.host_pid,
            if spec.share_process_namespace.unwrap_or(false) {
                NamespaceMode::Pod
            } else {
                NamespaceMode::Container
            },
        ),
        ipc: node_or(spec.host_ipc, NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The config of one container of the pod, with its environment and mounts resolved by the
/// caller ([`super::env`], [`super::volumes::mounts`]); `$(VAR)` in command and args expand
/// over that environment.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: Vec<KeyValue>,
    mounts: Vec<Mount>,
) -> ContainerConfig {
    let (name, namespace, uid) = meta(pod);
    let mut labels = HashMap::new();
    labels.insert(POD_NAME_LABEL.to_owned(), name.to_owned());
    labels.insert(POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    labels.insert(POD_UID_LABEL.to_owned(), uid.to_owned());
    labels.insert(CONTAINER_NAME_LABEL.to_owned(), container.name.clone());
    let vars: BTreeMap<String, String> = env
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let lookup = |key: &str| vars.get(key).cloned();
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: container
            .command
            .iter()
            .flatten()
            .map(|c| expand(c, lookup))
            .collect(),
        args: container
            .args
            .iter()
            .flatten()
            .map(|a| expand(a, lookup))
            .collect(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env,
        mounts,
        labels,
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(LinuxContainerConfig {
            resources: Some(linux_resources(pod, container)),
            // Without these the runtime's default (POD, 0) would put every container in the
            // pause process's PID namespace, as if shareProcessNamespace were set.
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        let best = pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(qos_class(&best), "BestEffort");
        let guaranteed = pod(
            serde_json::json!({"spec": {"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
        );
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable = pod(
            serde_json::json!({"spec": {"containers": [{"name": "a", "resources": {
            "requests": {"cpu": "100m"}}}]}}),
        );
        assert_eq!(qos_class(&burstable), "Burstable");
        assert_eq!(
            cgroup_parent(&burstable, "/corten-lab/x/n0/"),
            "/corten-lab/x/n0/kubepods/burstable/pod"
        );
    }

    #[test]
    fn resources_become_shares_quota_and_memory_limits() {
        let p = pod(
            serde_json::json!({"spec": {"containers": [{"name": "a", "resources": {
            "requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}}]}}),
        );
        let spec = p.spec.clone().unwrap_or_default();
        let r = linux_resources(&p, &spec.containers[0]);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 50_000));
        assert_eq!(r.memory_limit_in_bytes, 128 * 1024 * 1024);
        assert!((3..=999).contains(&r.oom_score_adj));
    }

    #[test]
    fn sandbox_config_carries_identity_ports_and_namespaces() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}));
        let config = sandbox_config(&p, 0, "/root", "/var/log/pods");
        assert_eq!(config.hostname, "web");
        assert_eq!(config.log_directory, "/var/log/pods/ns_web_u1");
        assert_eq!(
            config.labels.get(POD_UID_LABEL).map(String::as_str),
            Some("u1")
        );
        assert_eq!(config.port_mappings.len(), 1);
        let ns = config
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options);
        assert_eq!(ns.map(|n| n.network), Some(NamespaceMode::Pod as i32));
    }

    #[test]
    fn containers_get_their_own_pid_namespace_unless_the_pod_shares_one() {
        let pid_of = |spec: serde_json::Value| {
            let p = pod(serde_json::json!({"spec": spec}));
            let container = p.spec.clone().unwrap_or_default().containers[0].clone();
            container_config(&p, &container, 0, Vec::new(), Vec::new())
                .linux
                .and_then(|l| l.security_context)
                .and_then(|s| s.namespace_options)
                .map(|n| (n.pid, n.network))
        };
        let own = pid_of(serde_json::json!({"containers": [{"name": "a"}]}));
        assert_eq!(
            own,
            Some((NamespaceMode::Container as i32, NamespaceMode::Pod as i32))
        );
        let shared = pid_of(serde_json::json!({"shareProcessNamespace": true,
            "containers": [{"name": "a"}]}));
        assert_eq!(shared.map(|(pid, _)| pid), Some(NamespaceMode::Pod as i32));
    }
}
