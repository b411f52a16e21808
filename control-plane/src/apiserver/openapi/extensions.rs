//! Upstream's `x-kubernetes-*` vendor extensions of the built-in types, which k8s-openapi's
//! schemas leave out: the strategic-merge-patch metadata (`x-kubernetes-patch-strategy`,
//! `x-kubernetes-patch-merge-key`) that `kubectl apply` computes its patches from once it
//! finds a type in `/openapi/v2`, and the server-side-apply list and map semantics
//! (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`).
//!
//! The facts live in `upstream_extensions.txt`, one definition per unindented line (with
//! its own extensions after the name) and one property per indented line below it:
//!
//! ```text
//! io.k8s.api.core.v1.ObjectReference map-type=atomic
//!   fieldPath list-type=atomic
//! ```
//!
//! `key=value` stands for `x-kubernetes-key: value`; `list-map-keys` takes a comma-separated
//! list. They are Kubernetes 1.33's published OpenAPI facts for the definitions corten serves.
//! This module must not decide which definitions exist or change anything but extensions.
use std::{collections::HashMap, sync::OnceLock};

use serde_json::Value;
use tracing::warn;

const TABLE: &str = include_str!("upstream_extensions.txt");

/// The extensions of one definition: its own, and its properties'.
#[derive(Debug, Default)]
pub struct DefinitionExtensions {
    /// `x-kubernetes-…` name and value of the definition itself.
    pub own: Vec<(String, Value)>,
    /// Property name, then its extensions.
    pub properties: Vec<(String, Vec<(String, Value)>)>,
}

/// Parses the table; a line that does not parse is returned as an error with its number.
pub fn parse(text: &str) -> Result<HashMap<String, DefinitionExtensions>, String> {
    let mut table: HashMap<String, DefinitionExtensions> = HashMap::new();
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else {
            continue;
        };
        let mut extensions = Vec::new();
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!("line {number}: {word:?} is not key=value"));
            };
            if key.is_empty() || value.is_empty() {
                return Err(format!("line {number}: {word:?} has an empty side"));
            }
            let value = if key == "list-map-keys" {
                Value::from(value.split(',').collect::<Vec<_>>())
            } else {
                Value::from(value)
            };
            extensions.push((format!("x-kubernetes-{key}"), value));
        }
        if line.starts_with(char::is_whitespace) {
            let Some(definition) = current.as_ref().and_then(|d| table.get_mut(d)) else {
                return Err(format!("line {number}: a property before any definition"));
            };
            if extensions.is_empty() {
                return Err(format!("line {number}: {name} has no extensions"));
            }
            definition.properties.push((name.to_owned(), extensions));
        } else {
            let definition = table.entry(name.to_owned()).or_default();
            definition.own.extend(extensions);
            current = Some(name.to_owned());
        }
    }
    Ok(table)
}

fn table() -> &'static HashMap<String, DefinitionExtensions> {
    static PARSED: OnceLock<HashMap<String, DefinitionExtensions>> = OnceLock::new();
    PARSED.get_or_init(|| {
        parse(TABLE).unwrap_or_else(|err| {
            warn!(%err, "upstream_extensions.txt does not parse; serving no extensions");
            HashMap::new()
        })
    })
}

/// The extensions known for one definition.
pub fn of(definition: &str) -> Option<&'static DefinitionExtensions> {
    table().get(definition)
}

/// Every definition the table knows.
pub fn definitions() -> impl Iterator<Item = &'static str> {
    table().keys().map(String::as_str)
}

/// Adds upstream's extensions to a converted definition and its properties. Properties the
/// definition does not have are left alone.
pub fn apply(definition: &str, schema: &mut Value) {
    let Some(extensions) = of(definition) else {
        return;
    };
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    for (key, value) in &extensions.own {
        object.insert(key.clone(), value.clone());
    }
    let Some(Value::Object(properties)) = object.get_mut("properties") else {
        return;
    };
    for (property, list) in &extensions.properties {
        if let Some(Value::Object(target)) = properties.get_mut(property) {
            for (key, value) in list {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_table_parses() {
        let parsed = parse(TABLE);
        assert!(parsed.is_ok(), "{parsed:?}");
        let Some(pod_spec) = of("io.k8s.api.core.v1.PodSpec") else {
            panic!("PodSpec has extensions");
        };
        let containers = pod_spec
            .properties
            .iter()
            .find(|(name, _)| name == "containers")
            .map(|(_, ext)| ext.clone())
            .unwrap_or_default();
        let get = |key: &str| {
            containers
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("x-kubernetes-patch-merge-key"), Some(json!("name")));
        assert_eq!(get("x-kubernetes-patch-strategy"), Some(json!("merge")));
        assert_eq!(get("x-kubernetes-list-map-keys"), Some(json!(["name"])));
    }

    #[test]
    fn bad_lines_are_reported() {
        assert!(parse("  orphan list-type=atomic\n").is_err());
        assert!(parse("io.x.A\n  field nothing\n").is_err());
        assert!(parse("io.x.A\n  field\n").is_err());
        let Ok(parsed) = parse("# comment\nio.x.A map-type=atomic\n  f list-map-keys=a,b\n") else {
            panic!("valid table");
        };
        let a = &parsed["io.x.A"];
        assert_eq!(
            a.own,
            vec![("x-kubernetes-map-type".into(), json!("atomic"))]
        );
        assert_eq!(
            a.properties,
            vec![(
                "f".into(),
                vec![("x-kubernetes-list-map-keys".into(), json!(["a", "b"]))]
            )]
        );
    }

    #[test]
    fn extensions_are_added_to_existing_properties_only() {
        let mut schema = json!({"type": "object", "properties": {
            "strategy": {"$ref": "#/definitions/io.k8s.api.apps.v1.DeploymentStrategy"}}});
        apply("io.k8s.api.apps.v1.DeploymentSpec", &mut schema);
        assert_eq!(
            schema["properties"]["strategy"]["x-kubernetes-patch-strategy"],
            "retainKeys"
        );
        assert!(schema["properties"].get("template").is_none());
    }
}
