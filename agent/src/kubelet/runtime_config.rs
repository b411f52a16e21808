//! From a Pod to the CRI's words: the sandbox config (metadata, labels the kubelet finds
//! its sandboxes by, hostname, log directory, cgroup parent by QoS class, namespaces, port
//! mappings) and each container's config (image, command, args, env, working dir, log path,
//! Linux resources from requests and limits as the kubelet computes them).
//!
//! Owns that translation as plain functions (unit-tested without a runtime); it must not
//! call the runtime.
use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

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
                namespace_options: Some(NamespaceOption {
                    network: if host_network {
                        NamespaceMode::Node
                    } else {
                        NamespaceMode::Pod
                    } as i32,
                    pid: if spec.host_pid.unwrap_or(false) {
                        NamespaceMode::Node
                    } else if spec.share_process_namespace.unwrap_or(false) {
                        NamespaceMode::Pod
                    } else {
                        NamespaceMode::Container
                    } as i32,
                    ipc: if spec.host_ipc.unwrap_or(false) {
                        NamespaceMode::Node
                    } else {
                        NamespaceMode::Pod
                    } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What env `valueFrom.fieldRef` may read, resolved by the caller.
#[derive(Debug, Clone, Default)]
pub struct PodFields {
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.hostIP`.
    pub host_ip: String,
}

/// Resolves a container's environment: plain values, `$(VAR)` references to earlier
/// variables, and `fieldRef`s to the pod's own fields. Sources the agent cannot resolve yet
/// are left out.
pub fn environment(pod: &Pod, container: &Container, fields: &PodFields) -> Vec<KeyValue> {
    let (name, namespace, uid) = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut resolved: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for EnvVar {
        name: key,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let value = match (value, value_from) {
            (Some(v), _) => Some(expand(v, &resolved)),
            (None, Some(from)) => {
                from.field_ref
                    .as_ref()
                    .and_then(|f| match f.field_path.as_str() {
                        "metadata.name" => Some(name.to_owned()),
                        "metadata.namespace" => Some(namespace.to_owned()),
                        "metadata.uid" => Some(uid.to_owned()),
                        "spec.nodeName" => spec.node_name.clone(),
                        "spec.serviceAccountName" => spec.service_account_name.clone(),
                        "status.podIP" => Some(fields.pod_ip.clone()),
                        "status.hostIP" => Some(fields.host_ip.clone()),
                        path => path
                            .strip_prefix("metadata.labels['")
                            .and_then(|p| p.strip_suffix("']"))
                            .and_then(|label| pod.metadata.labels.as_ref()?.get(label).cloned()),
                    })
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            resolved.insert(key.clone(), value.clone());
            out.push(KeyValue {
                key: key.clone(),
                value,
            });
        }
    }
    out
}

/// Expands `$(NAME)` from earlier variables; `$$` escapes; unknown references stay.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let key = &body[..end];
                    match vars.get(key) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(key);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

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

/// The config of one container of the pod.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    fields: &PodFields,
) -> ContainerConfig {
    let (name, namespace, uid) = meta(pod);
    let mut labels = HashMap::new();
    labels.insert(POD_NAME_LABEL.to_owned(), name.to_owned());
    labels.insert(POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    labels.insert(POD_UID_LABEL.to_owned(), uid.to_owned());
    labels.insert(CONTAINER_NAME_LABEL.to_owned(), container.name.clone());
    let env = environment(pod, container, fields);
    let vars: BTreeMap<String, String> = env
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
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
            .map(|c| expand(c, &vars))
            .collect(),
        args: container
            .args
            .iter()
            .flatten()
            .map(|a| expand(a, &vars))
            .collect(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env,
        labels,
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(LinuxContainerConfig {
            resources: Some(linux_resources(pod, container)),
            ..Default::default()
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
    fn environment_resolves_values_references_and_fields() {
        let p = pod(serde_json::json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "a", "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)-$$(A)-$(MISSING)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ]}]}}));
        let spec = p.spec.clone().unwrap_or_default();
        let fields = PodFields {
            pod_ip: "10.42.0.5".into(),
            host_ip: "172.30.0.10".into(),
        };
        let env: Vec<(String, String)> = environment(&p, &spec.containers[0], &fields)
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        assert_eq!(
            env,
            [
                ("A".into(), "1".into()),
                ("B".into(), "1-$(A)-$(MISSING)".into()),
                ("POD".into(), "web".into()),
                ("IP".into(), "10.42.0.5".into()),
                ("APP".into(), "x".into()),
            ]
        );
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
}
