//! The resources the API server serves: for each, its group/version/kind, names, scope,
//! where it lives in the store (kube-apiserver's etcd layout), and how its objects are
//! checked. Discovery, routing and storage all read this one table.
//!
//! Owns resource metadata only; handlers own behaviour.
use serde_json::Value;

/// How a resource's objects are checked beyond metadata.
pub type Check = fn(&Value) -> Result<(), String>;

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
    /// Decodes the object as its typed form, so malformed objects are refused.
    pub check: Check,
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
     labels: $labels:expr, $ty:ty) => {
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
            check: typed::<$ty>,
        }
    };
}

/// The built-in resources served today.
pub fn builtin() -> Vec<ResourceDef> {
    use k8s_openapi::api::{coordination::v1 as coordination, core::v1 as core};
    vec![
        resource!("", "v1", "Namespace", "namespaces", "namespace", namespaced: false,
            short: &["ns"], categories: &[], storage: "namespaces", spec: false,
            labels: true, core::Namespace),
        resource!("", "v1", "ConfigMap", "configmaps", "configmap", namespaced: true,
            short: &["cm"], categories: &[], storage: "configmaps", spec: false,
            labels: false, core::ConfigMap),
        resource!("", "v1", "Secret", "secrets", "secret", namespaced: true,
            short: &[], categories: &[], storage: "secrets", spec: false,
            labels: false, core::Secret),
        resource!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", namespaced: true,
            short: &["sa"], categories: &[], storage: "serviceaccounts", spec: false,
            labels: false, core::ServiceAccount),
        resource!("", "v1", "Event", "events", "event", namespaced: true,
            short: &["ev"], categories: &[], storage: "events", spec: false,
            labels: false, core::Event),
        resource!("", "v1", "PodTemplate", "podtemplates", "podtemplate", namespaced: true,
            short: &[], categories: &[], storage: "podtemplates", spec: false,
            labels: false, core::PodTemplate),
        resource!("", "v1", "LimitRange", "limitranges", "limitrange", namespaced: true,
            short: &["limits"], categories: &[], storage: "limitranges", spec: false,
            labels: false, core::LimitRange),
        resource!("coordination.k8s.io", "v1", "Lease", "leases", "lease", namespaced: true,
            short: &[], categories: &[], storage: "leases", spec: false,
            labels: false, coordination::Lease),
    ]
}

/// The table of served resources, looked up by group, version and plural.
#[derive(Debug, Clone)]
pub struct Registry {
    resources: Vec<ResourceDef>,
}

impl Registry {
    /// The built-in resources.
    pub fn new() -> Self {
        Self {
            resources: builtin(),
        }
    }

    /// Every served resource.
    pub fn all(&self) -> &[ResourceDef] {
        &self.resources
    }

    /// The resource at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The served groups with their versions, core first, in a stable order.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in &self.resources {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
                Some(_) => {}
                None => groups.push((r.group, vec![r.version])),
            }
        }
        groups
    }

    /// The resources of one group version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceDef> + 'a {
        self.resources
            .iter()
            .filter(move |r| r.group == group && r.version == version)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
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
        assert!(
            (cm.check)(&serde_json::json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).is_ok()
        );
        assert!(
            (cm.check)(&serde_json::json!({"metadata": {"name": "a"}, "data": {"k": 5}})).is_err()
        );
    }
}
