//! Converting JSON schemas — k8s-openapi's (OpenAPI 3.0, as schemars writes them) and CRDs'
//! structural `openAPIV3Schema`s — to Swagger 2.0 schemas that kubectl's OpenAPI v2 parser
//! (kube-openapi `pkg/util/proto`) accepts, the way kube-apiserver publishes them:
//!
//! - `$ref`s point into `#/definitions/`, with nothing beside them but a description and
//!   vendor extensions; a single-element `allOf` around a `$ref` becomes that `$ref`;
//! - `oneOf`, `anyOf`, `not` and other keywords Swagger 2.0 lacks are dropped, as upstream's
//!   CRD publisher drops them; `nullable` values become untyped (kubectl would otherwise
//!   refuse an explicit `null`) and leave their parent's `required`;
//! - `x-kubernetes-preserve-unknown-fields` drops `properties` and `items` (kubectl would
//!   otherwise refuse the unknown fields the server keeps); an array left without `items`
//!   becomes untyped; `type` is always a single string;
//! - objects with `properties` say `type: object`; an embedded resource gets `apiVersion`,
//!   `kind` and `metadata`;
//! - every `x-…` vendor extension is kept.
//!
//! Pure functions on `serde_json::Value`; must not know which types exist or name them.
use serde_json::{json, Map, Value};

/// Where the document keeps its schemas.
pub const DEFINITIONS: &str = "#/definitions/";

/// Where OpenAPI 3.0 documents (and schemars) keep them.
const COMPONENTS: &str = "#/components/schemas/";

/// The definition of object metadata, which every resource's `metadata` refers to.
pub const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Converts one schema and everything nested in it.
pub fn to_swagger(schema: &Value) -> Value {
    Value::Object(convert(schema))
}

/// A `$ref` to a definition of the document.
pub fn reference(definition: &str) -> Value {
    json!({ "$ref": format!("{DEFINITIONS}{definition}") })
}

fn is_true(schema: &Map<String, Value>, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn convert(schema: &Value) -> Map<String, Value> {
    let Some(input) = schema.as_object() else {
        // `true` (anything) and other non-object schemas: an untyped value.
        return Map::new();
    };
    // A single-element allOf is a wrapper (schemars puts descriptions beside a $ref that way):
    // the wrapped schema, under the wrapper's own keywords.
    let mut merged = input.clone();
    if let Some(Value::Array(all_of)) = merged.remove("allOf") {
        if let [Value::Object(inner)] = all_of.as_slice() {
            for (key, value) in inner {
                merged.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
    }
    if let Some(target) = merged.get("$ref").and_then(Value::as_str) {
        let mut out = Map::new();
        // A reference outside the document's definitions cannot be followed: untyped.
        if let Some(name) = target
            .strip_prefix(COMPONENTS)
            .or_else(|| target.strip_prefix(DEFINITIONS))
        {
            out.insert("$ref".into(), Value::from(format!("{DEFINITIONS}{name}")));
        }
        for (key, value) in &merged {
            if key == "description" || key.starts_with("x-") {
                out.insert(key.clone(), value.clone());
            }
        }
        return out;
    }
    let nullable = is_true(&merged, "nullable");
    let opaque = nullable || is_true(&merged, "x-kubernetes-preserve-unknown-fields");
    let mut out = Map::new();
    for (key, value) in &merged {
        let kept = match key.as_str() {
            "properties" if !opaque => value.as_object().map(|properties| {
                Value::Object(
                    properties
                        .iter()
                        .map(|(name, schema)| (name.clone(), Value::Object(convert(schema))))
                        .collect(),
                )
            }),
            "items" if !opaque => value.is_object().then(|| Value::Object(convert(value))),
            "additionalProperties" if !nullable => match value {
                Value::Bool(_) => Some(value.clone()),
                Value::Object(_) => Some(Value::Object(convert(value))),
                _ => None,
            },
            "type" if !nullable => single_type(value),
            "required" => value.as_array().map(|names| {
                Value::Array(names.iter().filter(|n| n.is_string()).cloned().collect())
            }),
            "enum" => value.is_array().then(|| value.clone()),
            "default" | "example" => Some(value.clone()),
            "format" | "title" | "description" | "pattern" | "discriminator" => {
                value.is_string().then(|| value.clone())
            }
            "exclusiveMaximum" | "exclusiveMinimum" | "uniqueItems" | "readOnly" => {
                value.is_boolean().then(|| value.clone())
            }
            "maximum" | "minimum" | "multipleOf" => value.is_number().then(|| value.clone()),
            "maxLength" | "minLength" | "maxItems" | "minItems" | "maxProperties"
            | "minProperties" => (value.is_u64() || value.is_i64()).then(|| value.clone()),
            "externalDocs" => value.as_object().map(|docs| {
                Value::Object(
                    docs.iter()
                        .filter(|(k, v)| {
                            matches!(k.as_str(), "description" | "url") && v.is_string()
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            }),
            other if other.starts_with("x-") => Some(value.clone()),
            // oneOf, anyOf, not, nullable, allOf, const, ...: not Swagger 2.0.
            _ => None,
        };
        if let Some(kept) = kept {
            out.insert(key.clone(), kept);
        }
    }
    if out.get("type").and_then(Value::as_str) == Some("array") && !out.contains_key("items") {
        out.remove("type");
    }
    if let Some(Value::Object(properties)) = out.get_mut("properties") {
        if is_true(&merged, "x-kubernetes-embedded-resource") {
            for (field, schema) in [
                ("apiVersion", json!({"type": "string"})),
                ("kind", json!({"type": "string"})),
                ("metadata", reference(OBJECT_META)),
            ] {
                properties.entry(field).or_insert(schema);
            }
        }
        out.entry("type").or_insert_with(|| Value::from("object"));
    }
    // Fields that may be null, and fields of an object whose fields are not described, are
    // not required of kubectl.
    let nullable_fields: Vec<&String> = merged
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter(|(_, s)| s.as_object().is_some_and(|s| is_true(s, "nullable")))
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default();
    let has_properties = out.contains_key("properties");
    if let Some(Value::Array(required)) = out.get_mut("required") {
        required.retain(|name| {
            has_properties
                && !nullable_fields
                    .iter()
                    .any(|n| Some(n.as_str()) == name.as_str())
        });
        if required.is_empty() {
            out.remove("required");
        }
    }
    out
}

/// One type name: kube-openapi refuses several, and "null" is no type in Swagger 2.0.
fn single_type(value: &Value) -> Option<Value> {
    match value {
        Value::String(t) if t != "null" => Some(value.clone()),
        Value::Array(types) => {
            let named: Vec<&Value> = types
                .iter()
                .filter(|t| t.as_str().is_some_and(|t| t != "null"))
                .collect();
            match named.as_slice() {
                [only] => Some((*only).clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What keeps a schema from being one kubectl's parser accepts: keywords Swagger 2.0 lacks,
/// several types, arrays without items, `$ref`s with a type or properties beside them or
/// pointing outside `definitions`. Empty for every schema [`to_swagger`] returns.
pub fn violations(schema: &Value, path: &str, found: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        found.push(format!("{path}: not an object"));
        return;
    };
    for (key, value) in map {
        let at = format!("{path}/{key}");
        match key.as_str() {
            "properties" => match value.as_object() {
                Some(properties) => {
                    for (name, property) in properties {
                        violations(property, &format!("{at}/{name}"), found);
                    }
                }
                None => found.push(format!("{at}: not an object")),
            },
            "items" => violations(value, &at, found),
            "additionalProperties" if value.is_object() => violations(value, &at, found),
            "type" if !value.is_string() => found.push(format!("{at}: not one type")),
            "$ref" => {
                if !value.as_str().is_some_and(|r| r.starts_with(DEFINITIONS)) {
                    found.push(format!("{at}: outside the definitions"));
                }
                if map.contains_key("type") || map.contains_key("properties") {
                    found.push(format!("{at}: a type or properties beside it"));
                }
            }
            "format"
            | "title"
            | "description"
            | "default"
            | "multipleOf"
            | "maximum"
            | "exclusiveMaximum"
            | "minimum"
            | "exclusiveMinimum"
            | "maxLength"
            | "minLength"
            | "pattern"
            | "maxItems"
            | "minItems"
            | "uniqueItems"
            | "maxProperties"
            | "minProperties"
            | "required"
            | "enum"
            | "additionalProperties"
            | "type"
            | "discriminator"
            | "readOnly"
            | "externalDocs"
            | "example" => {}
            other if other.starts_with("x-") => {}
            other => found.push(format!("{path}: {other} is not Swagger 2.0")),
        }
    }
    if map.get("type").and_then(Value::as_str) == Some("array") && !map.contains_key("items") {
        found.push(format!("{path}: an array without items"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(schema: &Value) -> Value {
        let converted = to_swagger(schema);
        let mut found = Vec::new();
        violations(&converted, "", &mut found);
        assert!(found.is_empty(), "{found:?} in {converted}");
        converted
    }

    #[test]
    fn references_are_rewritten_and_wrappers_removed() {
        let schema = json!({
            "description": "PodSpec",
            "properties": {
                "affinity": {
                    "allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.Affinity"}],
                    "description": "If specified, the pod's scheduling constraints",
                },
                "containers": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"},
                },
            },
            "required": ["containers"],
        });
        let converted = clean(&schema);
        assert_eq!(converted["type"], "object");
        assert_eq!(
            converted["properties"]["affinity"],
            json!({
                "$ref": "#/definitions/io.k8s.api.core.v1.Affinity",
                "description": "If specified, the pod's scheduling constraints",
            })
        );
        assert_eq!(
            converted["properties"]["containers"]["items"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        assert_eq!(converted["required"], json!(["containers"]));
    }

    #[test]
    fn json_schema_keywords_swagger_lacks_are_dropped() {
        let schema = json!({
            "type": "object",
            "required": ["port", "maybe"],
            "properties": {
                "port": {"x-kubernetes-int-or-string": true,
                    "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "either": {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
                "maybe": {"type": "string", "nullable": true},
                "tags": {"type": "array", "items": {"type": "string"},
                    "x-kubernetes-list-type": "set"},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"a": {"type": "string"}}},
                "anything": {"type": "array", "x-kubernetes-preserve-unknown-fields": true,
                    "items": {"type": "string"}},
                "pair": {"type": ["string", "null"], "const": "x", "exclusiveMinimum": 3},
            },
        });
        let converted = clean(&schema);
        let properties = &converted["properties"];
        assert_eq!(
            properties["port"],
            json!({"x-kubernetes-int-or-string": true})
        );
        assert_eq!(properties["either"], json!({}));
        assert_eq!(
            properties["maybe"],
            json!({}),
            "nullable values are untyped"
        );
        assert_eq!(converted["required"], json!(["port"]));
        assert_eq!(properties["tags"]["x-kubernetes-list-type"], "set");
        assert_eq!(
            properties["extra"],
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
        );
        assert_eq!(
            properties["anything"],
            json!({"x-kubernetes-preserve-unknown-fields": true})
        );
        assert_eq!(properties["pair"], json!({"type": "string"}));
        let text = converted.to_string();
        for keyword in ["oneOf", "anyOf", "nullable", "allOf", "const"] {
            assert!(!text.contains(keyword), "{keyword} left in {text}");
        }
    }

    #[test]
    fn embedded_resources_get_their_type_fields() {
        let schema = json!({"type": "object", "x-kubernetes-embedded-resource": true,
            "properties": {"spec": {"type": "object", "additionalProperties": {"type": "string"}}}});
        let converted = clean(&schema);
        assert_eq!(converted["properties"]["kind"]["type"], "string");
        assert_eq!(
            converted["properties"]["metadata"]["$ref"],
            format!("{DEFINITIONS}{OBJECT_META}")
        );
        assert_eq!(
            converted["properties"]["spec"]["additionalProperties"]["type"],
            "string"
        );
    }

    #[test]
    fn violations_are_found() {
        let mut found = Vec::new();
        violations(
            &json!({"type": ["string", "integer"], "properties": {
                "a": {"$ref": "#/components/schemas/X", "type": "object"},
                "b": {"type": "array"},
                "c": {"oneOf": []},
            }}),
            "",
            &mut found,
        );
        assert_eq!(found.len(), 5, "{found:?}");
    }
}
