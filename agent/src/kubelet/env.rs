//! A container's environment as upstream's kubelet builds it (`makeEnvironmentVariables`):
//! `envFrom` (ConfigMaps and Secrets, with prefix; invalid names skipped and reported),
//! then `env` in order — `value` with `$(VAR)` expansion over earlier variables and the
//! service variables (`$$` escapes), `fieldRef`, `resourceFieldRef` (with divisor; an
//! unset limit is the node's allocatable), `configMapKeyRef` and `secretKeyRef` (optional
//! honoured) — then the service-link variables (`<SVC>_SERVICE_HOST`, docker-style
//! `<SVC>_PORT_...`) that the container does not define itself.
//!
//! Owns that computation as pure functions over objects fetched beforehand ([`fetch`] is
//! the only I/O: GETs of the referenced ConfigMaps and Secrets and a list of Services; a
//! static pod does without the Services when the API does not answer, as upstream's
//! kubelet does not make static pods wait for them). It must not talk to the runtime; a
//! failure here is the caller's `CreateContainerConfigError`.
use std::collections::{BTreeMap, BTreeSet};

use k8s_cri::v1::KeyValue;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Service},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{Api, Client};
use tracing::debug;

use super::runtime_config::parse_milli;

/// The namespace whose `kubernetes` Service every pod sees (upstream's master service).
pub const MASTER_SERVICE_NAMESPACE: &str = "default";

/// Pod fields the API object does not carry yet when containers start.
#[derive(Debug, Clone, Default)]
pub struct PodFields {
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.podIPs`.
    pub pod_ips: Vec<String>,
    /// `status.hostIP`.
    pub host_ip: String,
    /// `status.hostIPs`.
    pub host_ips: Vec<String>,
}

/// The node's allocatable resources (`cpu`, `memory`, `ephemeral-storage` → quantity),
/// which stand in for a container's unset limits.
pub type Allocatable = BTreeMap<String, String>;

/// This node's allocatable, as the kubelet reports it in the Node's status.
pub fn node_allocatable() -> Allocatable {
    super::node::capacity()
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// The API objects a container's environment reads, fetched beforehand; `None` means the
/// object does not exist.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    /// ConfigMaps of the pod's namespace by name.
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    /// Secrets of the pod's namespace by name.
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// Services of the pod's namespace and the master service(s).
    pub services: Vec<Service>,
}

/// The environment and what was skipped on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// The variables, in order.
    pub vars: Vec<KeyValue>,
    /// Warnings for an event (`InvalidEnvironmentVariableNames`).
    pub skipped: Vec<String>,
}

/// Why a container's environment cannot be built (the container waits with
/// `CreateContainerConfigError` and this message, as upstream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A required ConfigMap does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A required key is not in a ConfigMap.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyMissing {
        /// The key.
        key: String,
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap.
        name: String,
    },
    /// A required Secret does not exist.
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    /// A required key is not in a Secret.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyMissing {
        /// The key.
        key: String,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret.
        name: String,
    },
    /// A fieldRef path the kubelet does not know.
    #[error("unsupported fieldPath: {0}")]
    UnsupportedField(String),
    /// A resourceFieldRef the kubelet cannot compute.
    #[error("resourceFieldRef {resource} of container {container:?}: {reason}")]
    Resource {
        /// The resource (`limits.cpu`).
        resource: String,
        /// The container it names.
        container: String,
        /// What is wrong.
        reason: String,
    },
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Expands `$(NAME)` through `lookup`; `$$` is a literal `$`; unknown references and any
/// other `$` stay as written.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some((key, tail)) = after.strip_prefix('(').and_then(|b| b.split_once(')')) {
            match lookup(key) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(key);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Whether `name` may be an environment variable name (upstream's relaxed rule: printable
/// ASCII without `=`, not empty).
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=')
}

/// The value of a `fieldRef` path, for env (`volume` false) or a downwardAPI volume
/// (`volume` true, where whole `metadata.labels` / `metadata.annotations` are allowed and
/// the `spec.*` / `status.*` paths are not).
pub fn field_value(
    pod: &Pod,
    path: &str,
    fields: &PodFields,
    volume: bool,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let map_entry = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|p| p.strip_suffix("']"))
            .map(|key| {
                map.as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    if let Some(value) = map_entry(&meta.labels, "metadata.labels['") {
        return Ok(value);
    }
    if let Some(value) = map_entry(&meta.annotations, "metadata.annotations['") {
        return Ok(value);
    }
    let spec = pod.spec.as_ref();
    let value = match (path, volume) {
        ("metadata.name", _) => meta.name.clone().unwrap_or_default(),
        ("metadata.namespace", _) => namespace_of(pod).to_owned(),
        ("metadata.uid", _) => meta.uid.clone().unwrap_or_default(),
        ("metadata.labels", true) => format_map(meta.labels.as_ref()),
        ("metadata.annotations", true) => format_map(meta.annotations.as_ref()),
        ("spec.nodeName", false) => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ("spec.serviceAccountName", false) => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        ("status.hostIP", false) => fields.host_ip.clone(),
        ("status.hostIPs", false) => fields.host_ips.join(","),
        ("status.podIP", false) => fields.pod_ip.clone(),
        ("status.podIPs", false) => fields.pod_ips.join(","),
        _ => return Err(EnvError::UnsupportedField(path.to_owned())),
    };
    Ok(value)
}

/// A map as a downwardAPI file: `key="value"` lines sorted by key, values quoted as Go's
/// `%q` does, no newline after the last.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `resourceFieldRef` value: the named container's request or limit of `resource`
/// (`limits.cpu`, `requests.memory`, ...) divided by `divisor` (default 1) and rounded up;
/// an unset limit is the node's allocatable, an unset request is the limit or 0.
pub fn resource_value(
    pod: &Pod,
    container_name: &str,
    resource: &str,
    divisor: Option<&Quantity>,
    allocatable: &Allocatable,
) -> Result<String, EnvError> {
    let fail = |reason: &str| EnvError::Resource {
        resource: resource.to_owned(),
        container: container_name.to_owned(),
        reason: reason.to_owned(),
    };
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| fail("the pod has no spec"))?;
    let container = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container_name)
        .ok_or_else(|| fail("no such container"))?;
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| fail("unsupported resource"))?;
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") {
        return Err(fail("unsupported resource"));
    }
    let resources = container.resources.as_ref();
    let get = |list: Option<&BTreeMap<String, Quantity>>| {
        list.and_then(|l| l.get(name)).map(|q| q.0.clone())
    };
    let limit = get(resources.and_then(|r| r.limits.as_ref()));
    let request = get(resources.and_then(|r| r.requests.as_ref()));
    let text = match kind {
        "limits" => limit.or_else(|| allocatable.get(name).cloned()),
        "requests" => request.or(limit),
        _ => return Err(fail("unsupported resource")),
    }
    .unwrap_or_else(|| "0".to_owned());
    let value = parse_milli(&text).ok_or_else(|| fail("unparsable quantity"))?;
    let divisor_text = divisor.map_or("1", |d| d.0.as_str());
    let divisor = parse_milli(divisor_text)
        .filter(|d| *d > 0)
        .ok_or_else(|| fail("invalid divisor"))?;
    Ok(((value + divisor - 1).div_euclid(divisor)).to_string())
}

/// The service-link variables of the Services a pod sees: those of its namespace when
/// `enableServiceLinks` (default true), and always the master service(s) in `default`
/// (a Service of the pod's own namespace with the same name wins). Services without a
/// cluster IP are left out.
pub fn service_env(pod: &Pod, services: &[Service]) -> Vec<(String, String)> {
    let namespace = namespace_of(pod);
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for service in services {
        let name = service.metadata.name.clone().unwrap_or_default();
        let ns = service.metadata.namespace.as_deref().unwrap_or("default");
        let ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        if matches!(ip, None | Some("") | Some("None")) {
            continue;
        }
        if ns == MASTER_SERVICE_NAMESPACE && name == "kubernetes" {
            chosen.entry(name).or_insert(service);
        } else if ns == namespace && links {
            chosen.insert(name, service);
        }
    }
    let mut out = Vec::new();
    for (name, service) in chosen {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let prefix = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        if let Some(first) = ports.first() {
            out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        }
        for port in &ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                let suffix = port_name.to_uppercase().replace('-', "_");
                out.push((
                    format!("{prefix}_SERVICE_PORT_{suffix}"),
                    port.port.to_string(),
                ));
            }
        }
        if let Some(first) = ports.first() {
            let protocol = first.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            out.push((
                format!("{prefix}_PORT"),
                format!("{protocol}://{ip}:{}", first.port),
            ));
        }
        for port in &ports {
            let protocol = port.protocol.as_deref().unwrap_or("TCP").to_uppercase();
            let lower = protocol.to_lowercase();
            let base = format!("{prefix}_PORT_{}_{protocol}", port.port);
            out.push((base.clone(), format!("{lower}://{ip}:{}", port.port)));
            out.push((format!("{base}_PROTO"), lower));
            out.push((format!("{base}_PORT"), port.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

/// Variables in declaration order; a later definition replaces the value in place.
#[derive(Default)]
struct Ordered {
    keys: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Ordered {
    fn set(&mut self, key: String, value: String) {
        if self.values.insert(key.clone(), value).is_none() {
            self.keys.push(key);
        }
    }
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, String> {
    let mut data = cm.data.clone().unwrap_or_default();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.entry(k.clone())
            .or_insert_with(|| String::from_utf8_lossy(&v.0).into_owned());
    }
    data
}

fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone());
    }
    data
}

/// Builds a container's environment from the pod, the fields known at start, the node's
/// allocatable and the fetched objects.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    fields: &PodFields,
    allocatable: &Allocatable,
    sources: &EnvSources,
) -> Result<Environment, EnvError> {
    let namespace = namespace_of(pod);
    let mut env = Ordered::default();
    let mut skipped = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, data) = if let Some(source) = &from.config_map_ref {
            let name = source.name.clone();
            match sources.config_maps.get(&name).and_then(Option::as_ref) {
                Some(cm) => ("configMap", name, config_map_data(cm)),
                None if source.optional == Some(true) => continue,
                None => return Err(EnvError::ConfigMapNotFound(name)),
            }
        } else if let Some(source) = &from.secret_ref {
            let name = source.name.clone();
            match sources.secrets.get(&name).and_then(Option::as_ref) {
                Some(secret) => ("secret", name, secret_data(secret)),
                None if source.optional == Some(true) => continue,
                None => return Err(EnvError::SecretNotFound(name)),
            }
        } else {
            continue;
        };
        let mut invalid = Vec::new();
        for (key, value) in data {
            let full = format!("{prefix}{key}");
            if valid_env_name(&full) {
                env.set(full, value);
            } else {
                invalid.push(full);
            }
        }
        if !invalid.is_empty() {
            skipped.push(format!(
                "Keys [{}] from the EnvFrom {kind} {namespace}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", ")
            ));
        }
    }
    let services = service_env(pod, &sources.services);
    let service_map: BTreeMap<&str, &str> = services
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match (value.as_deref().filter(|v| !v.is_empty()), value_from) {
            (Some(text), _) => Some(expand(text, |key| {
                env.values
                    .get(key)
                    .cloned()
                    .or_else(|| service_map.get(key).map(|v| (*v).to_owned()))
            })),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    Some(field_value(pod, &field.field_path, fields, false)?)
                } else if let Some(r) = &from.resource_field_ref {
                    let target = r.container_name.as_deref().unwrap_or(&container.name);
                    let target = if target.is_empty() {
                        &container.name
                    } else {
                        target
                    };
                    Some(resource_value(
                        pod,
                        target,
                        &r.resource,
                        r.divisor.as_ref(),
                        allocatable,
                    )?)
                } else if let Some(key_ref) = &from.config_map_key_ref {
                    let optional = key_ref.optional == Some(true);
                    match sources
                        .config_maps
                        .get(&key_ref.name)
                        .and_then(Option::as_ref)
                    {
                        Some(cm) => match config_map_data(cm).remove(&key_ref.key) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => {
                                return Err(EnvError::ConfigMapKeyMissing {
                                    key: key_ref.key.clone(),
                                    namespace: namespace.to_owned(),
                                    name: key_ref.name.clone(),
                                })
                            }
                        },
                        None if optional => None,
                        None => return Err(EnvError::ConfigMapNotFound(key_ref.name.clone())),
                    }
                } else if let Some(key_ref) = &from.secret_key_ref {
                    let optional = key_ref.optional == Some(true);
                    match sources.secrets.get(&key_ref.name).and_then(Option::as_ref) {
                        Some(secret) => match secret_data(secret).remove(&key_ref.key) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => {
                                return Err(EnvError::SecretKeyMissing {
                                    key: key_ref.key.clone(),
                                    namespace: namespace.to_owned(),
                                    name: key_ref.name.clone(),
                                })
                            }
                        },
                        None if optional => None,
                        None => return Err(EnvError::SecretNotFound(key_ref.name.clone())),
                    }
                } else {
                    Some(String::new())
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = resolved {
            env.set(name.clone(), value);
        }
    }
    let mut vars: Vec<KeyValue> = env
        .keys
        .iter()
        .map(|key| KeyValue {
            key: key.clone(),
            value: env.values.get(key).cloned().unwrap_or_default(),
        })
        .collect();
    for (key, value) in services {
        if !env.values.contains_key(&key) {
            vars.push(KeyValue { key, value });
        }
    }
    Ok(Environment { vars, skipped })
}

/// The names of ConfigMaps and Secrets a container's environment reads.
pub fn referenced_objects(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.config_map_key_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.insert(r.name.clone());
        }
    }
    (config_maps, secrets)
}

/// GETs an object, `None` when it does not exist.
pub async fn get_optional<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(object) => Ok(Some(object)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fetches what a container's environment reads: its ConfigMaps and Secrets (one GET
/// each), the Services of the pod's namespace (when service links are on) and the master
/// `kubernetes` Service. A watch-backed cache is the follow-up.
pub async fn fetch(
    client: &Client,
    pod: &Pod,
    container: &Container,
) -> Result<EnvSources, kube::Error> {
    let namespace = namespace_of(pod);
    let (config_maps, secrets) = referenced_objects(container);
    let mut sources = EnvSources::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for name in config_maps {
        let object = get_optional(&cm_api, &name).await?;
        sources.config_maps.insert(name, object);
    }
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in secrets {
        let object = get_optional(&secret_api, &name).await?;
        sources.secrets.insert(name, object);
    }
    match fetch_services(client, pod).await {
        Ok(services) => sources.services = services,
        // A static pod must run while the API server is away (it may be the API server).
        Err(e) if super::static_pods::is_static(pod) => {
            debug!(error = %e, "no Services for a static pod's environment");
        }
        Err(e) => return Err(e),
    }
    Ok(sources)
}

/// The Services a pod's environment shows: those of its namespace (when service links are
/// on) and the master `kubernetes` Service.
async fn fetch_services(client: &Client, pod: &Pod) -> Result<Vec<Service>, kube::Error> {
    let mut services = Vec::new();
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    if links {
        let api: Api<Service> = Api::namespaced(client.clone(), namespace_of(pod));
        services = api.list(&Default::default()).await?.items;
    }
    let master: Api<Service> = Api::namespaced(client.clone(), MASTER_SERVICE_NAMESPACE);
    if let Some(kubernetes) = get_optional(&master, "kubernetes").await? {
        services.push(kubernetes);
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pairs(env: &Environment) -> Vec<(String, String)> {
        env.vars
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect()
    }

    fn resolve_first(p: &Pod, sources: &EnvSources) -> Result<Environment, EnvError> {
        let spec = p.spec.clone().unwrap_or_default();
        let fields = PodFields {
            pod_ip: "10.42.0.5".into(),
            pod_ips: vec!["10.42.0.5".into(), "fd00::5".into()],
            host_ip: "172.30.0.10".into(),
            host_ips: vec!["172.30.0.10".into()],
        };
        let allocatable: Allocatable = [
            ("cpu".to_owned(), "2".to_owned()),
            ("memory".to_owned(), "4Gi".to_owned()),
        ]
        .into();
        resolve(p, &spec.containers[0], &fields, &allocatable, sources)
    }

    #[test]
    fn expansion_references_earlier_values_and_escapes() {
        let vars: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        let lookup = |k: &str| vars.get(k).cloned();
        assert_eq!(expand("$(A)-$$(A)-$(B)", lookup), "1-$(A)-$(B)");
        assert_eq!(expand("$A $ $(A", lookup), "$A $ $(A");
        assert_eq!(expand("x$$$(A)", lookup), "x$1");
    }

    #[test]
    fn values_fields_and_resources_resolve_in_order() {
        let p = pod(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1",
            "labels": {"app": "x"}, "annotations": {"note": "hi"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [{"name": "a",
          "resources": {"requests": {"memory": "64Mi"}, "limits": {"cpu": "500m"}},
          "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)-$$(A)-$(MISSING)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
            {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM_LIMIT_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "MEM_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
            {"name": "IP_AGAIN", "value": "$(IP)"},
            {"name": "A", "value": "2"},
        ]}]}}));
        let env = resolve_first(&p, &EnvSources::default()).unwrap_or_else(|e| panic!("{e}"));
        let expected: Vec<(String, String)> = [
            ("A", "2"),
            ("B", "1-$(A)-$(MISSING)"),
            ("POD", "web"),
            ("NS", "ns"),
            ("UID", "u1"),
            ("NODE", "n1"),
            ("SA", "sa"),
            ("IP", "10.42.0.5"),
            ("IPS", "10.42.0.5,fd00::5"),
            ("HOST", "172.30.0.10"),
            ("APP", "x"),
            ("NOTE", "hi"),
            ("CPU_M", "500"),
            ("CPU", "1"),
            ("MEM_LIMIT_MI", "4096"),
            ("MEM_REQ", "67108864"),
            ("IP_AGAIN", "10.42.0.5"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(pairs(&env), expected);
        let bad = pod(json!({"spec": {"containers": [{"name": "a", "env": [
            {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}]}}));
        assert_eq!(
            resolve_first(&bad, &EnvSources::default()),
            Err(EnvError::UnsupportedField("spec.bogus".into()))
        );
    }

    fn sources() -> EnvSources {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"},
            "data": {"color": "blue", "bad=key": "x", "size": "3"}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "sec"},
            "data": {"password": "aHVudGVyMg=="}}))
        .unwrap_or_else(|e| panic!("{e}"));
        EnvSources {
            config_maps: [("cfg".to_owned(), Some(cm)), ("gone".to_owned(), None)].into(),
            secrets: [("sec".to_owned(), Some(secret))].into(),
            services: Vec::new(),
        }
    }

    #[test]
    fn config_maps_and_secrets_feed_env_and_env_from() {
        let p = pod(
            json!({"metadata": {"namespace": "ns"}, "spec": {"containers": [{"name": "a",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CM_"},
                        {"secretRef": {"name": "sec"}},
                        {"configMapRef": {"name": "gone", "optional": true}}],
            "env": [
              {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
              {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
              {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
              {"name": "CM_size", "value": "4"},
            ]}]}}),
        );
        let env = resolve_first(&p, &sources()).unwrap_or_else(|e| panic!("{e}"));
        let got = pairs(&env);
        let expected: Vec<(String, String)> = [
            ("CM_color", "blue"),
            ("CM_size", "4"),
            ("password", "hunter2"),
            ("COLOR", "blue"),
            ("PW", "hunter2"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, expected);
        assert_eq!(env.skipped.len(), 1);
        assert!(env.skipped[0].contains("CM_bad=key"), "{:?}", env.skipped);
        assert!(env.skipped[0].contains("ns/cfg"), "{:?}", env.skipped);
    }

    #[test]
    fn missing_required_sources_are_config_errors() {
        let missing_key = pod(
            json!({"metadata": {"namespace": "ns"}, "spec": {"containers": [{"name": "a",
          "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}]}]}}),
        );
        let err = resolve_first(&missing_key, &sources()).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("couldn't find key nope in ConfigMap ns/cfg".to_owned())
        );
        let missing_secret = pod(json!({"spec": {"containers": [{"name": "a",
          "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}]}}));
        assert_eq!(
            resolve_first(&missing_secret, &sources()),
            Err(EnvError::SecretNotFound("other".into()))
        );
        let missing_from = pod(json!({"spec": {"containers": [{"name": "a",
          "envFrom": [{"configMapRef": {"name": "gone"}}]}]}}));
        assert_eq!(
            resolve_first(&missing_from, &sources()),
            Err(EnvError::ConfigMapNotFound("gone".into()))
        );
    }

    fn service(namespace: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "ports": ports}}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn service_links_follow_upstream_names() {
        let services = vec![
            service(
                "default",
                "kubernetes",
                "10.43.0.1",
                json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
            service(
                "ns",
                "my-web",
                "10.43.0.20",
                json!([{"name": "http-alt", "port": 8080}, {"port": 53, "protocol": "UDP"}]),
            ),
            service("ns", "headless", "None", json!([{"port": 1}])),
            service("other", "elsewhere", "10.43.0.30", json!([{"port": 1}])),
        ];
        let p = pod(
            json!({"metadata": {"namespace": "ns"}, "spec": {"containers": [{"name": "a",
            "env": [{"name": "URL", "value": "http://$(MY_WEB_SERVICE_HOST):$(MY_WEB_SERVICE_PORT)"},
                    {"name": "MY_WEB_SERVICE_HOST", "value": "mine"}]}]}}),
        );
        let sources = EnvSources {
            services: services.clone(),
            ..Default::default()
        };
        let env = resolve_first(&p, &sources).unwrap_or_else(|e| panic!("{e}"));
        let map: BTreeMap<String, String> = pairs(&env).into_iter().collect();
        assert_eq!(map["URL"], "http://10.43.0.20:8080");
        assert_eq!(map["MY_WEB_SERVICE_HOST"], "mine");
        assert_eq!(map["MY_WEB_SERVICE_PORT_HTTP_ALT"], "8080");
        assert_eq!(map["MY_WEB_PORT"], "tcp://10.43.0.20:8080");
        assert_eq!(map["MY_WEB_PORT_53_UDP"], "udp://10.43.0.20:53");
        assert_eq!(map["MY_WEB_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(map["MY_WEB_PORT_53_UDP_PORT"], "53");
        assert_eq!(map["MY_WEB_PORT_53_UDP_ADDR"], "10.43.0.20");
        assert_eq!(map["KUBERNETES_SERVICE_HOST"], "10.43.0.1");
        assert_eq!(map["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(map["KUBERNETES_PORT_443_TCP"], "tcp://10.43.0.1:443");
        assert!(!map
            .keys()
            .any(|k| k.starts_with("HEADLESS_") || k.starts_with("ELSEWHERE_")));
        assert_eq!(
            env.vars
                .iter()
                .filter(|kv| kv.key == "MY_WEB_SERVICE_HOST")
                .count(),
            1
        );
        let no_links = pod(json!({"metadata": {"namespace": "ns"},
            "spec": {"enableServiceLinks": false, "containers": [{"name": "a"}]}}));
        let env = resolve_first(&no_links, &sources).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<String> = env.vars.into_iter().map(|kv| kv.key).collect();
        assert!(keys.contains(&"KUBERNETES_SERVICE_HOST".to_owned()));
        assert!(!keys.iter().any(|k| k.starts_with("MY_WEB")));
    }

    #[test]
    fn downward_maps_are_sorted_and_quoted() {
        let map: BTreeMap<String, String> = [
            ("b".to_owned(), "two \"quoted\"\nline".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]
        .into();
        assert_eq!(
            format_map(Some(&map)),
            "a=\"1\"\nb=\"two \\\"quoted\\\"\\nline\""
        );
        let p = pod(json!({"metadata": {"labels": {"k": "v"}}}));
        assert_eq!(
            field_value(&p, "metadata.labels", &PodFields::default(), true),
            Ok("k=\"v\"".to_owned())
        );
        assert!(field_value(&p, "metadata.labels", &PodFields::default(), false).is_err());
        assert!(field_value(&p, "status.podIP", &PodFields::default(), true).is_err());
    }
}
