//! Strategic merge patch, as kubectl sends it for built-in types (`kubectl apply`, `edit`,
//! `label`, `patch --type strategic`): maps merge, lists of objects with a merge key merge
//! element by element, and the directives `$patch` (replace / delete / merge),
//! `$retainKeys`, `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>` apply.
//!
//! The merge keys are the built-in types' `patchMergeKey` tags; lists without one are
//! replaced, as upstream does for atomic lists.
use serde_json::{Map, Value};

/// The merge key of a list field, by field name (and, for `ports`, by element shape).
pub fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "ports" => {
            if sample.is_some_and(|e| e.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Lists of scalars that merge as sets instead of being replaced.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch to `original`.
pub fn apply(original: &mut Value, patch: &Value) {
    match (original, patch) {
        (Value::Object(target), Value::Object(patch)) => merge_map(target, patch),
        (target, patch) => *target = strip(patch),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_map(patch);
            return;
        }
        Some("delete") => {
            target.clear();
            return;
        }
        _ => {}
    }
    for (key, value) in patch {
        // Directives are handled after the merge.
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(sub) => match target.get_mut(key) {
                Some(Value::Object(existing)) => merge_map(existing, sub),
                _ if sub.get("$patch").and_then(Value::as_str) == Some("delete") => {
                    target.remove(key);
                }
                _ => {
                    target.insert(key.clone(), Value::Object(strip_map(sub)));
                }
            },
            Value::Array(items) => {
                let merged = match target.remove(key) {
                    Some(Value::Array(existing)) => merge_list(key, existing, items),
                    _ => items.iter().filter(|i| !is_delete(i)).map(strip).collect(),
                };
                target.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
    // Directives that act on the merged result.
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            if let (Some(Value::Array(list)), Some(order)) =
                (target.get_mut(field), value.as_array())
            {
                reorder(field, list, order);
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
}

fn is_delete(item: &Value) -> bool {
    item.get("$patch").and_then(Value::as_str) == Some("delete")
}

fn merge_list(field: &str, mut existing: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    if is_set_list(field) {
        for item in patch {
            if !existing.contains(item) {
                existing.push(item.clone());
            }
        }
        return existing;
    }
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip)
            .collect();
    }
    let Some(key) = merge_key(field, patch.first().or(existing.first())) else {
        return patch.iter().filter(|i| !is_delete(i)).map(strip).collect();
    };
    for item in patch {
        let id = item.get(key);
        let position = id.and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
        match (position, is_delete(item)) {
            (Some(at), true) => {
                existing.remove(at);
            }
            (None, true) => {}
            (Some(at), false) => apply(&mut existing[at], item),
            (None, false) => existing.push(strip(item)),
        }
    }
    existing
}

fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let key = merge_key(field, list.first());
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let rank = |v: &Value| {
        let wanted = id(v);
        order
            .iter()
            .position(|o| match key {
                Some(k) => o.get(k) == Some(&wanted),
                None => *o == wanted,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

/// A patch value without directives (for inserting new content).
fn strip(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_map(map)),
        Value::Array(items) => Value::Array(items.iter().map(strip).collect()),
        other => other.clone(),
    }
}

fn strip_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let mut deploy = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "side", "image": "b:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]
        }}}});
        apply(&mut deploy, &patch);
        let containers = &deploy["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "a:2");
        assert_eq!(containers[0]["env"].as_array().map(Vec::len), Some(2));
        assert_eq!(containers[1]["name"], "side");
        assert!(deploy["spec"]["template"]["spec"]
            .get("$setElementOrder/containers")
            .is_none());
    }

    #[test]
    fn directives_delete_and_replace() {
        let mut obj = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}, "metadata": {"finalizers": ["x"]}});
        let patch = json!({
            "spec": {"containers": [{"name": "a", "$patch": "delete"}],
                     "strategy": {"$retainKeys": ["type"], "type": "Recreate"}},
            "metadata": {"finalizers": ["y"], "$deleteFromPrimitiveList/finalizers": ["x"]}
        });
        apply(&mut obj, &patch);
        assert_eq!(obj["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(obj["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(obj["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn lists_without_merge_keys_are_replaced_and_nulls_delete() {
        let mut obj = json!({"spec": {"args": ["a", "b"], "x": 1}});
        apply(&mut obj, &json!({"spec": {"args": ["c"], "x": null}}));
        assert_eq!(obj, json!({"spec": {"args": ["c"]}}));
    }
}
