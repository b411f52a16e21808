//! CustomResourceDefinitions: turning a CRD into served resources (one per served
//! version), checking custom objects against the CRD's structural OpenAPI v3 schema (unknown
//! fields pruned, as kube-apiserver does), and the controller that keeps the registry in
//! step with the stored CRDs and marks them `NamesAccepted` and `Established`.
//!
//! Owns everything CRD-specific; the rest of the API server treats custom resources like
//! built-in ones through [`ResourceDef`]. Conversion between versions is `None` only (the
//! object keeps its stored form with the requested apiVersion), and `pattern` and CEL rules
//! in schemas are not evaluated yet.
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{
    objects,
    resources::{intern, intern_list, Check, ResourceDef},
    rest::Rest,
    status::Cause,
};
use crate::store::{RangeEnd, Txn, TxnOp, WatchRequest};

/// Where CRDs are stored.
pub const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// A JSONPath like `.spec.replicas` as a JSON pointer (`/spec/replicas`).
fn pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut out, part| {
            out.push('/');
            out.push_str(part);
            out
        })
}

/// The resources a CRD defines, one per served version.
pub fn definitions(crd: &Value) -> Result<Vec<ResourceDef>, String> {
    let spec = crd.get("spec").ok_or("the CRD has no spec")?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .ok_or("spec.group is required")?;
    let names = spec.get("names").ok_or("spec.names is required")?;
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .ok_or("spec.names.plural is required")?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("spec.names.kind is required")?;
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |key: &str| -> Vec<String> {
        names
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions is required")?;
    let mut defs = Vec::new();
    for version in versions {
        if version.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let name = version
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a version has no name")?;
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        let mut subresources = Vec::new();
        if version.pointer("/subresources/status").is_some() {
            subresources.push("status".to_owned());
        }
        let scale_paths = version.pointer("/subresources/scale").map(|scale| {
            let path = |key: &str, default: &str| {
                intern(&pointer(
                    scale.get(key).and_then(Value::as_str).unwrap_or(default),
                ))
            };
            let selector = scale
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(|p| intern(&pointer(p)));
            (
                path("specReplicasPath", ".spec.replicas"),
                path("statusReplicasPath", ".status.replicas"),
                selector,
            )
        });
        if scale_paths.is_some() {
            subresources.push("scale".to_owned());
        }
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|columns| {
                columns
                    .iter()
                    .filter_map(|c| {
                        let name = c.get("name")?.as_str()?;
                        let kind = c.get("type").and_then(Value::as_str).unwrap_or("string");
                        let path = c.get("jsonPath")?.as_str()?;
                        let priority = c
                            .get("priority")
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                            .min(9) as u8;
                        Some((intern(name), intern(kind), intern(&pointer(path)), priority))
                    })
                    .collect()
            })
            .unwrap_or_default();
        defs.push(ResourceDef {
            group: intern(group),
            version: intern(name),
            kind: intern(kind),
            plural: intern(plural),
            singular: intern(&singular),
            namespaced,
            short_names: intern_list(&strings("shortNames")),
            categories: intern_list(&strings("categories")),
            storage: intern(&format!("{group}/{plural}")),
            has_spec: true,
            label_names: false,
            subresources: intern_list(&subresources),
            check: Check::Schema(Arc::new(schema)),
            scale_paths,
            printer_columns,
            conversion: None,
            openapi: None,
        });
    }
    Ok(defs)
}

/// Semantic checks of a CRD beyond its typed form.
pub fn check_definition(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = objects::name(crd).unwrap_or_default();
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            format!("must be spec.names.plural+\".\"+spec.group ({plural}.{group})"),
        ));
    }
    if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            "should be a domain with at least one dot",
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    // Checked without building the resources, which would intern names of a CRD that may
    // be refused (see `resources::intern`).
    let names = crd.pointer("/spec/names");
    for field in ["plural", "kind"] {
        if names
            .and_then(|n| n.get(field))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(&format!("spec.names.{field}")));
        }
    }
    if versions.iter().any(|v| {
        v.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    }) {
        causes.push(Cause::required("spec.versions[].name"));
    }
    if !versions
        .iter()
        .any(|v| v.get("served").and_then(Value::as_bool) == Some(true))
    {
        causes.push(Cause::invalid(
            "spec.versions",
            "at least one version must be served",
        ));
    }
    causes
}

/// Checks a custom object against its schema, pruning fields the schema does not know.
pub fn validate(schema: &Value, obj: &mut Value) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    if let (Some(map), Some(properties)) = (obj.as_object_mut(), schema.get("properties")) {
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match properties.get(&key) {
                Some(child) => {
                    if let Some(value) = map.get_mut(&key) {
                        node(child, value, &key, &mut causes);
                    }
                }
                None if preserve => {}
                None => {
                    map.remove(&key);
                }
            }
        }
        required(schema, map, "", &mut causes);
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

fn required(
    schema: &Value,
    map: &serde_json::Map<String, Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(name) && !matches!(name, "apiVersion" | "kind" | "metadata") {
            let field = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            causes.push(Cause::required(&field));
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn node(schema: &Value, value: &mut Value, path: &str, causes: &mut Vec<Cause>) {
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !matches!(type_name(value), "integer" | "string") {
            causes.push(Cause::invalid(
                path,
                format!("Invalid value: {value}: {path} in body must be of type integer or string"),
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let fits = actual == expected || (expected == "number" && actual == "integer");
        if !fits {
            causes.push(Cause::invalid(path, format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\"")));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let allowed: Vec<String> = options.iter().map(Value::to_string).collect();
            causes.push(Cause {
                reason: "FieldValueNotSupported".to_owned(),
                message: format!(
                    "Unsupported value: {value}: supported values: {}",
                    allowed.join(", ")
                ),
                field: path.to_owned(),
            });
        }
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(number) = value.as_f64() {
        if let Some(min) = bound("minimum") {
            if number < min
                || (number == min && schema.get("exclusiveMinimum") == Some(&json!(true)))
            {
                causes.push(Cause::invalid(path, format!("Invalid value: {value}: {path} in body should be greater than or equal to {min}")));
            }
        }
        if let Some(max) = bound("maximum") {
            if number > max
                || (number == max && schema.get("exclusiveMaximum") == Some(&json!(true)))
            {
                causes.push(Cause::invalid(path, format!("Invalid value: {value}: {path} in body should be less than or equal to {max}")));
            }
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as f64;
        if bound("minLength").is_some_and(|m| length < m)
            || bound("maxLength").is_some_and(|m| length > m)
        {
            causes.push(Cause::invalid(path, format!("Invalid value: {value}: {path} in body has a length outside the schema's bounds")));
        }
    }
    match value {
        Value::Object(map) => {
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = format!("{path}.{key}");
                let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
                match child_schema {
                    Some(child) => {
                        if let Some(child_value) = map.get_mut(&key) {
                            node(child, child_value, &child_path, causes);
                        }
                    }
                    None if preserve
                        || schema.get("additionalProperties") == Some(&json!(true)) => {}
                    None => {
                        map.remove(&key);
                    }
                }
            }
            required(schema, map, path, causes);
        }
        Value::Array(items) => {
            if bound("minItems").is_some_and(|m| (items.len() as f64) < m)
                || bound("maxItems").is_some_and(|m| (items.len() as f64) > m)
            {
                causes.push(Cause::invalid(
                    path,
                    format!("{path} in body has a number of items outside the schema's bounds"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    node(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
        }
        _ => {}
    }
}

fn crd_def(rest: &Rest) -> Option<ResourceDef> {
    rest.registry
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

/// Serves what the stored CRDs define, marks new ones Established, and returns the revision
/// the state was read at.
pub async fn sync_all(rest: &Rest) -> Result<i64, super::status::ApiError> {
    let Some(def) = crd_def(rest) else {
        return Ok(0);
    };
    let list = rest.list(&def, None, &Default::default()).await?;
    let mut crds = list["items"].as_array().cloned().unwrap_or_default();
    for crd in &mut crds {
        crd["apiVersion"] = json!(def.api_version());
        crd["kind"] = json!(def.kind);
        serve(rest, &def, crd).await;
    }
    Ok(list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0))
}

async fn serve(rest: &Rest, def: &ResourceDef, crd: &Value) {
    let name = objects::name(crd).unwrap_or_default().to_owned();
    match definitions(crd) {
        Ok(defs) => {
            rest.registry.set_custom(&name, defs);
            let established = crd
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
            if !established {
                let now = objects::now();
                let status = json!({"status": {
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                    "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
                    "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).map(|v| v.iter().filter(|v| v["storage"] == true).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
                }});
                if let Err(err) = rest
                    .update_status(def, None, &name, status, &Default::default())
                    .await
                {
                    warn!(crd = %name, "marking the CRD established: {}", err.message);
                }
            }
            info!(crd = %name, "serving");
        }
        Err(message) => warn!(crd = %name, "cannot serve: {message}"),
    }
}

/// Stops serving a deleted CRD and deletes its custom objects.
async fn unserve(rest: &Rest, name: &str) {
    let Some(defs) = rest.registry.remove_custom(name) else {
        return;
    };
    if let Some(def) = defs.first() {
        let prefix = format!("/registry/{}/", def.storage);
        let txn = Txn {
            compare: Vec::new(),
            success: vec![TxnOp::Delete {
                key: prefix.into_bytes(),
                end: RangeEnd::Prefix,
                prev_kv: false,
            }],
            failure: Vec::new(),
        };
        if let Err(err) = rest.store.txn(txn).await {
            warn!(crd = name, "deleting its custom objects: {err}");
        }
    }
    info!(crd = name, "no longer served");
}

/// Follows CRD changes for the life of the server.
pub fn run(rest: Rest, mut from: i64) {
    tokio::spawn(async move {
        loop {
            let request = WatchRequest {
                key: CRD_PREFIX.as_bytes().to_vec(),
                end: RangeEnd::Prefix,
                start_revision: from + 1,
                prev_kv: true,
            };
            let mut stream = match rest.store.watch(request).await {
                Ok(stream) => stream,
                Err(err) => {
                    warn!("watching CRDs: {err}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    from = sync_all(&rest).await.unwrap_or(from);
                    continue;
                }
            };
            while let Some(batch) = stream.next().await {
                let Ok(batch) = batch else { break };
                from = batch.revision;
                let Some(def) = crd_def(&rest) else { continue };
                for event in batch.events {
                    match event.kind {
                        crate::store::EventKind::Put => {
                            if let Ok(crd) = super::rest::decode(&event.kv) {
                                serve(&rest, &def, &crd).await;
                            }
                        }
                        crate::store::EventKind::Delete => {
                            let key = String::from_utf8_lossy(&event.kv.key).into_owned();
                            if let Some(name) = key.strip_prefix(CRD_PREFIX) {
                                unserve(&rest, name).await;
                            }
                        }
                    }
                }
            }
            // The watch ended (compaction or a store restart): read the whole state again.
            from = sync_all(&rest).await.unwrap_or(from);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.demo.corten.io"},
            "spec": {
                "group": "demo.corten.io",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 0},
                            "color": {"type": "string", "enum": ["red", "blue"]},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                        }},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }}}
                }]
            }
        })
    }

    #[test]
    fn a_crd_becomes_a_served_resource() -> Result<(), String> {
        let defs = definitions(&widget_crd())?;
        assert_eq!(defs.len(), 1);
        let def = &defs[0];
        assert_eq!(
            (def.group, def.version, def.kind, def.plural),
            ("demo.corten.io", "v1", "Widget", "widgets")
        );
        assert_eq!(
            def.key(Some("ns"), "w"),
            "/registry/demo.corten.io/widgets/ns/w"
        );
        assert_eq!(def.subresources, &["status", "scale"]);
        assert_eq!(def.scale_paths.map(|p| p.0), Some("/spec/size"));
        assert_eq!(def.printer_columns[0].2, "/spec/size");
        assert!(check_definition(&widget_crd()).is_empty());
        let mut bad = widget_crd();
        bad["metadata"]["name"] = json!("wrong");
        assert!(!check_definition(&bad).is_empty());
        Ok(())
    }

    #[test]
    fn schemas_check_types_and_prune_unknown_fields() {
        let schema = widget_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        let mut ok = json!({"apiVersion": "demo.corten.io/v1", "kind": "Widget", "metadata": {"name": "a"},
            "spec": {"size": 3, "extra": true, "labels": {"a": "b"}}, "status": {"anything": 1}, "junk": 1});
        assert!(validate(&schema, &mut ok).is_ok());
        assert!(
            ok["spec"].get("extra").is_none() && ok.get("junk").is_none(),
            "unknown fields are pruned"
        );
        assert_eq!(ok["status"]["anything"], 1, "preserved subtree is kept");
        let mut wrong_type = json!({"spec": {"size": "big"}});
        let causes = validate(&schema, &mut wrong_type).err().unwrap_or_default();
        assert_eq!(causes.len(), 1);
        assert!(
            causes[0].message.contains("must be of type integer"),
            "{causes:?}"
        );
        let mut missing = json!({"spec": {}});
        assert!(validate(&schema, &mut missing).is_err());
        let mut bad_enum = json!({"spec": {"size": 1, "color": "green"}});
        assert!(validate(&schema, &mut bad_enum).is_err());
        let mut negative = json!({"spec": {"size": -1}});
        assert!(validate(&schema, &mut negative).is_err());
    }
}
