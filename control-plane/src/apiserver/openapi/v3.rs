//! The `/openapi/v3` documents: an index of group versions, and per group version the schemas
//! of its types (from k8s-openapi, or the CRD's) tagged with `x-kubernetes-group-version-kind`
//! and a path per resource whose GET operation leads `kubectl explain` to its schema.
//!
//! Must not serve `/openapi/v2` ([`super::v2`] does) or decide which resources exist.
use serde_json::{json, Value};

use super::gv_path;
use crate::apiserver::resources::{Check, Registry};

/// `GET /openapi/v3`: the documents there are, by group version.
pub fn v3_index(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let path = gv_path(group, version);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/G/V`, if that group version is served.
pub fn v3_group_version(registry: &Registry, path: &str, version_text: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", version] => ("", *version),
        ["apis", group, version] => (*group, *version),
        _ => return None,
    };
    let defs = registry.in_group_version(group, version);
    if defs.is_empty() {
        return None;
    }
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    let mut custom = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for def in &defs {
        let gvk = json!([{"group": def.group, "version": def.version, "kind": def.kind}]);
        let name = if let Some(register) = def.openapi {
            let reference = register(&mut generator);
            let name = reference
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .map(str::to_owned);
            if let Some(name) = &name {
                kinds.push((name.clone(), gvk));
            }
            name
        } else if let Check::Schema(schema) = &def.check {
            let reversed: Vec<&str> = def.group.split('.').rev().collect();
            let name = format!("{}.{}.{}", reversed.join("."), def.version, def.kind);
            let mut schema = (**schema).clone();
            schema["x-kubernetes-group-version-kind"] = gvk;
            custom.insert(name.clone(), schema);
            Some(name)
        } else {
            None
        };
        // kubectl explain finds a resource's schema through the GET operation on its path.
        if let Some(name) = name {
            let base = format!("/{}", gv_path(def.group, def.version));
            let path = if def.namespaced {
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", def.plural)
            } else {
                format!("{base}/{}/{{name}}", def.plural)
            };
            let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
            let mut item = json!({"get": {
                "operationId": format!("read{}", def.kind),
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}}},
            }});
            // kubectl sends fieldValidation=Strict (and skips its own schema checks) for the
            // kinds whose PATCH declares the parameter: the built-in ones, whose unknown fields
            // this server finds.
            if def.openapi.is_some() {
                item["patch"] = json!({
                    "operationId": format!("patch{}", def.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [
                        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                        {"name": "force", "in": "query", "schema": {"type": "boolean"}},
                    ],
                    "responses": {"200": {"description": "OK"}},
                });
            }
            paths.insert(path, item);
        }
    }
    let mut schemas = generator.take_definitions(true);
    for (name, gvk) in kinds {
        if let Some(schema) = schemas.get_mut(&name) {
            schema["x-kubernetes-group-version-kind"] = gvk;
        }
    }
    schemas.extend(custom);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": version_text},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_documents_carry_tagged_schemas() {
        let registry = Registry::new();
        let index = v3_index(&registry);
        assert!(index["paths"].get("apis/apps/v1").is_some());
        let Some(doc) = v3_group_version(&registry, "apis/apps/v1", "v1.33.0") else {
            panic!("apps/v1 is served");
        };
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(doc["components"]["schemas"]
            .get("io.k8s.api.apps.v1.DeploymentStrategy")
            .is_some());
        assert!(v3_group_version(&registry, "apis/nope/v1", "v").is_none());
    }
}
