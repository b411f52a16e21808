//! API discovery: the legacy documents (`/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`)
//! and aggregated discovery (`apidiscovery.k8s.io` `v2` and `v2beta1`), chosen by the
//! client's Accept header as kube-apiserver does. All built from the resource registry.
use serde_json::{json, Value};

use super::resources::{Registry, ResourceDef};

/// The aggregated discovery version a client accepts, if any (first acceptable wins).
pub fn aggregated_version(accept: &str) -> Option<&'static str> {
    for media in accept.split(',') {
        let mut params = media.split(';').map(str::trim);
        let base = params.next().unwrap_or_default();
        if base != "application/json" {
            continue;
        }
        let (mut g, mut v, mut r#as) = (None, None, None);
        for param in params {
            match param.split_once('=') {
                Some(("g", value)) => g = Some(value),
                Some(("v", value)) => v = Some(value),
                Some(("as", value)) => r#as = Some(value),
                _ => {}
            }
        }
        if g == Some("apidiscovery.k8s.io") && r#as == Some("APIGroupDiscoveryList") {
            match v {
                Some("v2") => return Some("v2"),
                Some("v2beta1") => return Some("v2beta1"),
                _ => {}
            }
        }
    }
    None
}

/// The Content-Type of an aggregated discovery response.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `GET /apis`.
pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(group, _)| !group.is_empty())
        .map(|(group, versions)| group_doc(group, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/GROUP`, if the group is served.
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    registry
        .groups()
        .into_iter()
        .find(|(group, _)| *group == name && !group.is_empty())
        .map(|(group, versions)| {
            let mut doc = group_doc(group, &versions);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        })
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /api/v1` or `GET /apis/GROUP/VERSION`, if served.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources: Vec<Value> = Vec::new();
    for r in registry.in_group_version(group, version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            });
            let (kind, verbs) = subresource_kind(&r, sub);
            entry["group"] = kind["group"].clone();
            entry["version"] = kind["version"].clone();
            entry["kind"] = kind["kind"].clone();
            entry["verbs"] = verbs;
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The kind a subresource answers with, and its verbs.
fn subresource_kind(r: &ResourceDef, sub: &str) -> (Value, Value) {
    match sub {
        "scale" => (
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            json!(["get", "patch", "update"]),
        ),
        "binding" => (
            json!({"group": "", "version": "v1", "kind": "Binding"}),
            json!(["create"]),
        ),
        "eviction" => (
            json!({"group": "policy", "version": "v1", "kind": "Eviction"}),
            json!(["create"]),
        ),
        "exec" => (
            json!({"group": "", "version": "v1", "kind": "PodExecOptions"}),
            json!(["create", "get"]),
        ),
        "attach" => (
            json!({"group": "", "version": "v1", "kind": "PodAttachOptions"}),
            json!(["create", "get"]),
        ),
        "portforward" => (
            json!({"group": "", "version": "v1", "kind": "PodPortForwardOptions"}),
            json!(["create", "get"]),
        ),
        "log" => (
            json!({"group": "", "version": "v1", "kind": "Pod"}),
            json!(["get"]),
        ),
        // Every proxied method, named as upstream's connect verbs are.
        "proxy" => (
            json!({"group": r.group, "version": r.version, "kind": format!("{}ProxyOptions", r.kind)}),
            json!(["create", "delete", "get", "patch", "update"]),
        ),
        "token" => (
            json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}),
            json!(["create"]),
        ),
        _ => (
            json!({"group": r.group, "version": r.version, "kind": r.kind}),
            json!(["get", "patch", "update"]),
        ),
    }
}

fn discovery_resource(r: &ResourceDef) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let (kind, verbs) = subresource_kind(r, sub);
            json!({"subresource": sub, "responseKind": kind, "verbs": verbs})
        })
        .collect();
    json!({
        "subresources": subresources,
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
        "shortNames": r.short_names,
        "categories": r.categories,
    })
}

/// Aggregated discovery for `/api` (`core`) or `/apis` (every named group).
pub fn aggregated(registry: &Registry, core: bool, version: &str) -> Value {
    let items: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(group, _)| group.is_empty() == core)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .in_group_version(group, v)
                        .iter()
                        .map(discovery_resource)
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_aggregated_discovery() {
        let kubectl_133 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(kubectl_133), Some("v2"));
        let kubectl_127 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(kubectl_127), Some("v2beta1"));
        assert_eq!(aggregated_version("application/json"), None);
    }

    #[test]
    fn the_token_subresource_is_discoverable() {
        let registry = Registry::new();
        let legacy = resource_list(&registry, "", "v1").unwrap_or_default();
        let token = legacy["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "serviceaccounts/token"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(token["kind"], "TokenRequest");
        assert_eq!(token["group"], "authentication.k8s.io");
        assert_eq!(token["version"], "v1");
        assert_eq!(token["verbs"], json!(["create"]));
        let doc = aggregated(&registry, true, "v2");
        let sa = doc["items"][0]["versions"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "serviceaccounts"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            sa["subresources"],
            json!([{"subresource": "token", "verbs": ["create"], "responseKind":
                {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}}])
        );
    }

    #[test]
    fn core_group_lists_configmaps() {
        let registry = Registry::new();
        let doc = aggregated(&registry, true, "v2");
        let resources = &doc["items"][0]["versions"][0]["resources"];
        assert!(resources
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["resource"] == "configmaps")));
        assert!(resource_list(&registry, "", "v1").is_some());
        assert!(resource_list(&registry, "nope", "v1").is_none());
    }
}
