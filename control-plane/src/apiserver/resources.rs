//! The resources the API server serves: for each, its group/version/kind, names, scope,
//! where it lives in the store (kube-apiserver's etcd layout), and how its objects are
//! checked. Discovery, routing and storage all read this one table.
//!
//! Owns resource metadata only; handlers own behaviour. It keeps the `/openapi/v2` document
//! built from the table (by [`super::openapi`]) and counts the table's changes, so that the
//! document is rebuilt only when CRDs change what is served.
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use serde_json::Value;

/// Converts objects between a resource's form and its stored form.
#[derive(Debug)]
pub struct Conversion {
    /// To the stored form (before a write).
    pub to_storage: fn(&mut Value),
    /// From the stored form (after a read).
    pub from_storage: fn(&mut Value),
}

/// How a resource's objects are checked beyond metadata.
#[derive(Debug, Clone)]
pub enum Check {
    /// Decoding into the built-in type must succeed.
    Typed(fn(&Value) -> Result<(), String>),
    /// A custom resource: its CRD's OpenAPI v3 schema (unknown fields are pruned, then the
    /// object must match).
    Schema(Arc<Value>),
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group ("" for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name (the URL segment).
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`, ...).
    pub categories: &'static [&'static str],
    /// Store key segment under `/registry/` (kube-apiserver's layout).
    pub storage: &'static str,
    /// Whether `metadata.generation` follows `spec` changes.
    pub has_spec: bool,
    /// Whether the object names must be DNS labels (63 chars) rather than subdomains.
    pub label_names: bool,
    /// Subresources served (`status`, `scale`, `binding`, `eviction`, `token`, the kubelet's
    /// `log`, `exec`, `attach`, `portforward` and `proxy`).
    pub subresources: &'static [&'static str],
    /// How objects are checked.
    pub check: Check,
    /// `(spec replicas, status replicas, label selector)` JSON pointers of the scale
    /// subresource.
    pub scale_paths: Option<(&'static str, &'static str, Option<&'static str>)>,
    /// Extra table columns `(name, type, JSON pointer, priority)` (CRD printer columns).
    pub printer_columns: Vec<(&'static str, &'static str, &'static str, u8)>,
    /// How objects of this resource are converted to and from the form they are stored in
    /// (when another resource shares their storage, like events.k8s.io Events).
    pub conversion: Option<&'static Conversion>,
    /// Registers the built-in type's OpenAPI schema (and those it refers to) and returns a
    /// reference to it; custom resources carry their schema in [`Check::Schema`].
    pub openapi: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
}

impl ResourceDef {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key of an object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/{name}", self.storage),
            _ => format!("/registry/{}/{name}", self.storage),
        }
    }

    /// The store prefix of a list (all namespaces, or one).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.storage),
            _ => format!("/registry/{}/", self.storage),
        }
    }

    /// Checks an object of this resource; custom resources may be pruned of unknown fields.
    pub fn check(&self, obj: &mut Value) -> Result<(), Vec<super::status::Cause>> {
        match &self.check {
            Check::Typed(decode) => {
                decode(obj).map_err(|m| vec![super::status::Cause::invalid("<body>", m)])
            }
            Check::Schema(schema) => super::crds::validate(schema, obj),
        }
    }

    /// Whether `status` is written only through the status subresource (and dropped on
    /// create and ignored on updates of the main resource).
    pub fn status_is_subresource(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// The verbs served for this resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<(), String> {
    T::deserialize(value).map(drop).map_err(|e| e.to_string())
}

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, namespaced: $ns:expr,
     short: $short:expr, categories: $cat:expr, storage: $storage:expr, spec: $spec:expr,
     labels: $labels:expr, sub: $sub:expr, $ty:ty) => {
        ResourceDef {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            storage: $storage,
            has_spec: $spec,
            label_names: $labels,
            subresources: $sub,
            check: Check::Typed(typed::<$ty>),
            scale_paths: if $sub.contains(&"scale") {
                Some(("/spec/replicas", "/status/replicas", Some("/spec/selector")))
            } else {
                None
            },
            printer_columns: Vec::new(),
            conversion: None,
            openapi: Some(|generator: &mut schemars::SchemaGenerator| {
                generator.subschema_for::<$ty>()
            }),
        }
    };
}

const NONE: &[&str] = &[];
const STATUS: &[&str] = &["status"];
const STATUS_SCALE: &[&str] = &["status", "scale"];
const POD_SUBRESOURCES: &[&str] = &[
    "status",
    "binding",
    "eviction",
    "log",
    "exec",
    "attach",
    "portforward",
];
const SERVICE_ACCOUNT_SUBRESOURCES: &[&str] = &["token"];
const NODE_SUBRESOURCES: &[&str] = &["status", "proxy"];
const ALL: &[&str] = &["all"];

/// The built-in resources served today.
pub fn builtin() -> Vec<ResourceDef> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, policy::v1 as policy, rbac::v1 as rbac,
        scheduling::v1 as scheduling,
    };
    vec![
        resource!("", "v1", "Namespace", "namespaces", "namespace", namespaced: false,
            short: &["ns"], categories: NONE, storage: "namespaces", spec: false,
            labels: true, sub: STATUS, core::Namespace),
        resource!("", "v1", "ConfigMap", "configmaps", "configmap", namespaced: true,
            short: &["cm"], categories: NONE, storage: "configmaps", spec: false,
            labels: false, sub: NONE, core::ConfigMap),
        resource!("", "v1", "Secret", "secrets", "secret", namespaced: true,
            short: NONE, categories: NONE, storage: "secrets", spec: false,
            labels: false, sub: NONE, core::Secret),
        resource!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", namespaced: true,
            short: &["sa"], categories: NONE, storage: "serviceaccounts", spec: false,
            labels: false, sub: SERVICE_ACCOUNT_SUBRESOURCES, core::ServiceAccount),
        resource!("", "v1", "Event", "events", "event", namespaced: true,
            short: &["ev"], categories: NONE, storage: "events", spec: false,
            labels: false, sub: NONE, core::Event),
        resource!("", "v1", "PodTemplate", "podtemplates", "podtemplate", namespaced: true,
            short: NONE, categories: NONE, storage: "podtemplates", spec: false,
            labels: false, sub: NONE, core::PodTemplate),
        resource!("", "v1", "LimitRange", "limitranges", "limitrange", namespaced: true,
            short: &["limits"], categories: NONE, storage: "limitranges", spec: false,
            labels: false, sub: NONE, core::LimitRange),
        resource!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", namespaced: true,
            short: &["quota"], categories: NONE, storage: "resourcequotas", spec: false,
            labels: false, sub: STATUS, core::ResourceQuota),
        resource!("", "v1", "Pod", "pods", "pod", namespaced: true,
            short: &["po"], categories: ALL, storage: "pods", spec: false,
            labels: false, sub: POD_SUBRESOURCES, core::Pod),
        resource!("", "v1", "Service", "services", "service", namespaced: true,
            short: &["svc"], categories: ALL, storage: "services/specs", spec: false,
            labels: true, sub: STATUS, core::Service),
        resource!("", "v1", "Endpoints", "endpoints", "endpoints", namespaced: true,
            short: &["ep"], categories: NONE, storage: "services/endpoints", spec: false,
            labels: false, sub: NONE, core::Endpoints),
        resource!("", "v1", "Node", "nodes", "node", namespaced: false,
            short: &["no"], categories: NONE, storage: "minions", spec: false,
            labels: false, sub: NODE_SUBRESOURCES, core::Node),
        resource!("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", namespaced: false,
            short: &["pv"], categories: NONE, storage: "persistentvolumes", spec: false,
            labels: false, sub: STATUS, core::PersistentVolume),
        resource!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", namespaced: true,
            short: &["pvc"], categories: NONE, storage: "persistentvolumeclaims", spec: false,
            labels: false, sub: STATUS, core::PersistentVolumeClaim),
        resource!("apps", "v1", "Deployment", "deployments", "deployment", namespaced: true,
            short: &["deploy"], categories: ALL, storage: "deployments", spec: true,
            labels: false, sub: STATUS_SCALE, apps::Deployment),
        resource!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", namespaced: true,
            short: &["rs"], categories: ALL, storage: "replicasets", spec: true,
            labels: false, sub: STATUS_SCALE, apps::ReplicaSet),
        resource!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", namespaced: true,
            short: &["sts"], categories: ALL, storage: "statefulsets", spec: true,
            labels: false, sub: STATUS_SCALE, apps::StatefulSet),
        resource!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", namespaced: true,
            short: &["ds"], categories: ALL, storage: "daemonsets", spec: true,
            labels: false, sub: STATUS, apps::DaemonSet),
        resource!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", namespaced: true,
            short: NONE, categories: NONE, storage: "controllerrevisions", spec: false,
            labels: false, sub: NONE, apps::ControllerRevision),
        resource!("batch", "v1", "Job", "jobs", "job", namespaced: true,
            short: NONE, categories: ALL, storage: "jobs", spec: true,
            labels: false, sub: STATUS, batch::Job),
        resource!("batch", "v1", "CronJob", "cronjobs", "cronjob", namespaced: true,
            short: &["cj"], categories: ALL, storage: "cronjobs", spec: true,
            labels: false, sub: STATUS, batch::CronJob),
        resource!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", namespaced: true,
            short: NONE, categories: NONE, storage: "endpointslices", spec: false,
            labels: false, sub: NONE, discovery::EndpointSlice),
        resource!("coordination.k8s.io", "v1", "Lease", "leases", "lease", namespaced: true,
            short: NONE, categories: NONE, storage: "leases", spec: false,
            labels: false, sub: NONE, coordination::Lease),
        {
            let mut events = resource!("events.k8s.io", "v1", "Event", "events", "event", namespaced: true,
                short: &["ev"], categories: NONE, storage: "events", spec: false,
                labels: false, sub: NONE, k8s_openapi::api::events::v1::Event);
            events.conversion = Some(&super::events::CONVERSION);
            events
        },
        resource!("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", namespaced: false,
            short: &["pc"], categories: NONE, storage: "priorityclasses", spec: false,
            labels: false, sub: NONE, scheduling::PriorityClass),
        resource!("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", namespaced: true,
            short: &["pdb"], categories: NONE, storage: "poddisruptionbudgets", spec: true,
            labels: false, sub: STATUS, policy::PodDisruptionBudget),
        resource!("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", namespaced: false,
            short: &["crd", "crds"], categories: &["api-extensions"], storage: "apiextensions.k8s.io/customresourcedefinitions", spec: true,
            labels: false, sub: STATUS, k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition),
        resource!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", namespaced: true,
            short: NONE, categories: NONE, storage: "roles", spec: false,
            labels: false, sub: NONE, rbac::Role),
        resource!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", namespaced: true,
            short: NONE, categories: NONE, storage: "rolebindings", spec: false,
            labels: false, sub: NONE, rbac::RoleBinding),
        resource!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", namespaced: false,
            short: NONE, categories: NONE, storage: "clusterroles", spec: false,
            labels: false, sub: NONE, rbac::ClusterRole),
        resource!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", namespaced: false,
            short: NONE, categories: NONE, storage: "clusterrolebindings", spec: false,
            labels: false, sub: NONE, rbac::ClusterRoleBinding),
    ]
}

/// The table of served resources: the built-in ones and those that CRDs add at run time.
#[derive(Debug)]
pub struct Registry {
    builtin: Vec<ResourceDef>,
    custom: RwLock<BTreeMap<String, Vec<ResourceDef>>>,
    /// Counts the changes of `custom`, so that documents derived from the table know when
    /// to be rebuilt.
    generation: std::sync::atomic::AtomicU64,
    /// The `/openapi/v2` document of the current generation, built on first use.
    openapi_v2: super::openapi::V2Cache,
}

impl Registry {
    /// The built-in resources.
    pub fn new() -> Self {
        Self {
            builtin: builtin(),
            custom: RwLock::new(BTreeMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            openapi_v2: super::openapi::V2Cache::default(),
        }
    }

    /// How many times the served custom resources changed; read it before reading the
    /// table, so that a document built from it is never newer than its generation says.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Where the `/openapi/v2` document of this table is kept ([`super::openapi::v2_document`]).
    pub fn openapi_v2_cache(&self) -> &super::openapi::V2Cache {
        &self.openapi_v2
    }

    fn custom(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<ResourceDef>>> {
        self.custom.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves the resources a CRD defines (replacing what it defined before).
    pub fn set_custom(&self, crd: &str, defs: Vec<ResourceDef>) {
        let mut custom = self.custom.write().unwrap_or_else(|p| p.into_inner());
        custom.insert(crd.to_owned(), defs);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Stops serving a CRD's resources.
    pub fn remove_custom(&self, crd: &str) -> Option<Vec<ResourceDef>> {
        let mut custom = self.custom.write().unwrap_or_else(|p| p.into_inner());
        let removed = custom.remove(crd);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        removed
    }

    /// Every served resource.
    pub fn all(&self) -> Vec<ResourceDef> {
        let mut all = self.builtin.clone();
        all.extend(self.custom().values().flatten().cloned());
        all
    }

    /// The resource at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        let matches =
            |r: &&ResourceDef| r.group == group && r.version == version && r.plural == plural;
        if let Some(def) = self.builtin.iter().find(matches) {
            return Some(def.clone());
        }
        self.custom().values().flatten().find(matches).cloned()
    }

    /// The served groups with their versions, core first, in a stable order.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in self.all() {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
                Some(_) => {}
                None => groups.push((r.group, vec![r.version])),
            }
        }
        groups
    }

    /// The resources of one group version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<ResourceDef> {
        self.all()
            .into_iter()
            .filter(|r| r.group == group && r.version == version)
            .collect()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// A string that lives for the rest of the process, shared by every CRD that uses it, so
/// that custom resources fit the same `&'static str` table as built-in ones. Bounded by the
/// number of distinct names ever defined.
pub fn intern(text: &str) -> &'static str {
    static TABLE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut table = TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(existing) = table.get(text) {
        return existing;
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    table.insert(leaked);
    leaked
}

/// A list of interned strings, interned as a whole (the same list is leaked only once).
pub fn intern_list(items: &[String]) -> &'static [&'static str] {
    type Table = std::collections::HashMap<Vec<&'static str>, &'static [&'static str]>;
    static TABLE: std::sync::OnceLock<std::sync::Mutex<Table>> = std::sync::OnceLock::new();
    let interned: Vec<&'static str> = items.iter().map(|s| intern(s)).collect();
    let mut table = TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(existing) = table.get(&interned) {
        return existing;
    }
    let leaked: &'static [&'static str] = Box::leak(interned.clone().into_boxed_slice());
    table.insert(interned, leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        let registry = Registry::new();
        let cm = registry
            .find("", "v1", "configmaps")
            .map(|r| r.key(Some("default"), "x"));
        assert_eq!(cm.as_deref(), Some("/registry/configmaps/default/x"));
        let ns = registry
            .find("", "v1", "namespaces")
            .map(|r| r.key(None, "kube-system"));
        assert_eq!(ns.as_deref(), Some("/registry/namespaces/kube-system"));
    }

    #[test]
    fn typed_checks_refuse_malformed_objects() {
        let registry = Registry::new();
        let Some(cm) = registry.find("", "v1", "configmaps") else {
            panic!("configmaps are served");
        };
        assert!(cm
            .check(&mut serde_json::json!({"metadata": {"name": "a"}, "data": {"k": "v"}}))
            .is_ok());
        assert!(cm
            .check(&mut serde_json::json!({"metadata": {"name": "a"}, "data": {"k": 5}}))
            .is_err());
    }
}
