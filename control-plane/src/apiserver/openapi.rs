//! OpenAPI documents. `/openapi/v2` is what kubectl downloads before it validates or applies
//! anything, as JSON or as the gnostic `openapi.v2.Document` protobuf
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) that kubectl asks for; it
//! carries no definitions yet, so kubectl leaves schema checks to the server. `/openapi/v3`
//! lists one document per group version, and each carries the schemas of its types (from
//! k8s-openapi, or the CRD's) tagged with `x-kubernetes-group-version-kind`, which is what
//! `kubectl explain` reads.
use serde_json::{json, Value};

use super::resources::{Check, Registry};

/// The media type kubectl requests for the protobuf form.
pub const PROTOBUF_V2: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The Content-Type of the protobuf form: kube-apiserver answers with a dot where the
/// request had `@`, because Go's media type parser refuses `@` in a subtype.
pub const PROTOBUF_V2_RESPONSE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an Accept header asks for the protobuf form.
pub fn wants_protobuf(accept: &str) -> bool {
    accept
        .split(',')
        .any(|m| m.split(';').next().map(str::trim) == Some(PROTOBUF_V2))
}

/// The JSON form.
pub fn v2_json(version: &str) -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": {},
        "definitions": {},
    })
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field (wire type 2).
fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, (number << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The protobuf form: `Document{swagger=1, info=2{title=1, version=2}, paths=8, definitions=9}`.
pub fn v2_protobuf(version: &str) -> Vec<u8> {
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    field(&mut doc, 8, &[]);
    field(&mut doc, 9, &[]);
    doc
}

/// The path of a group version's v3 document (`api/v1`, `apis/G/V`).
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

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
    fn protobuf_document_encodes_its_fields() {
        let doc = v2_protobuf("v1.33.0");
        // swagger = "2.0"
        assert_eq!(&doc[..5], &[0x0a, 3, b'2', b'.', b'0']);
        // info: tag 2, then title "Kubernetes"
        assert_eq!(doc[5], 0x12);
        assert_eq!(&doc[7..9], &[0x0a, 10]);
        // paths and definitions present and empty
        assert!(doc.ends_with(&[0x42, 0, 0x4a, 0]));
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(!wants_protobuf("application/json"));
    }

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

/// The schema of a built-in type and every schema it refers to, built once per type.
fn type_schema(
    def: &super::resources::ResourceDef,
) -> Option<std::sync::Arc<(Value, serde_json::Map<String, Value>)>> {
    type Cache = std::collections::HashMap<
        (&'static str, &'static str),
        std::sync::Arc<(Value, serde_json::Map<String, Value>)>,
    >;
    static CACHE: std::sync::OnceLock<std::sync::Mutex<Cache>> = std::sync::OnceLock::new();
    let register = def.openapi?;
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let entry = cache.entry((def.group, def.kind)).or_insert_with(|| {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let root = Value::from(register(&mut generator));
        std::sync::Arc::new((root, generator.take_definitions(true)))
    });
    Some(entry.clone())
}

/// Removes the fields of `obj` that the built-in type's schema does not know (as decoding
/// into the Go type does in kube-apiserver) and returns them as `a.b[0].c` paths, which
/// `fieldValidation=Strict` refuses. Custom resources are pruned by their CRD's schema
/// instead ([`super::crds::validate`]).
pub fn prune_unknown_fields(def: &super::resources::ResourceDef, obj: &mut Value) -> Vec<String> {
    let Some(schema) = type_schema(def) else {
        return Vec::new();
    };
    let (root, definitions) = &*schema;
    let mut found = Vec::new();
    walk(definitions, root, obj, "", &mut found);
    found
}

/// Follows `$ref` and single-element `allOf` wrappers to the schema that describes a value.
fn resolve<'a>(
    definitions: &'a serde_json::Map<String, Value>,
    mut schema: &'a Value,
) -> &'a Value {
    for _ in 0..16 {
        if let Some(name) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
        {
            match definitions.get(name) {
                Some(target) => schema = target,
                None => return schema,
            }
        } else if let Some([only]) = schema
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            schema = only;
        } else {
            return schema;
        }
    }
    schema
}

fn walk(
    definitions: &serde_json::Map<String, Value>,
    schema: &Value,
    value: &mut Value,
    path: &str,
    found: &mut Vec<String>,
) {
    let schema = resolve(definitions, schema);
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if properties.is_none() && additional.is_none() {
                // An opaque object (e.g. RawExtension): nothing to check inside.
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match properties.and_then(|p| p.get(&key)).or(additional) {
                    Some(child_schema) => {
                        if let Some(child) = map.get_mut(&key) {
                            walk(definitions, child_schema, child, &child_path, found);
                        }
                    }
                    None if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind") => {}
                    None => {
                        map.remove(&key);
                        found.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(
                        definitions,
                        item_schema,
                        item,
                        &format!("{path}[{i}]"),
                        found,
                    );
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod unknown_field_tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_at_any_depth() {
        let registry = Registry::new();
        let Some(def) = registry.find("apps", "v1", "deployments") else {
            panic!("deployments are served");
        };
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"any": "label"}, "bogus": 1},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "imagee": "typo"}]}
            }, "strategy": {"type": "Recreate"}}
        });
        let mut obj = obj;
        let found = prune_unknown_fields(&def, &mut obj);
        assert_eq!(
            found,
            vec![
                "metadata.bogus".to_owned(),
                "spec.template.spec.containers[0].imagee".to_owned()
            ]
        );
        assert!(obj["spec"]["template"]["spec"]["containers"][0]
            .get("imagee")
            .is_none());
        assert_eq!(obj["metadata"]["labels"]["any"], "label");
    }
}
