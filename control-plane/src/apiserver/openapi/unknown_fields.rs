//! Unknown fields of built-in objects: walks an object along its type's schema (from
//! k8s-openapi) and removes the fields the type does not know, reporting them for
//! `fieldValidation`.
//!
//! Must not check custom resources (their CRD's schema does, in [`crate::apiserver::crds`]).
use serde_json::Value;

/// The schema of a built-in type and every schema it refers to, built once per type.
fn type_schema(
    def: &crate::apiserver::resources::ResourceDef,
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
/// instead ([`crate::apiserver::crds::validate`]).
pub fn prune_unknown_fields(
    def: &crate::apiserver::resources::ResourceDef,
    obj: &mut Value,
) -> Vec<String> {
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
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resources::Registry;

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
