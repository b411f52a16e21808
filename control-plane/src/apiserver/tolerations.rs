//! kube-apiserver's `DefaultTolerationSeconds` admission: a new pod that does not already
//! tolerate `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` with effect
//! NoExecute gets tolerations for both, for 300 seconds — so a node that stops answering
//! keeps its pods for five minutes before the node lifecycle controller evicts them.
//!
//! Owns those two default tolerations only.
use serde_json::{json, Value};

/// How long pods tolerate a not-ready or unreachable node by default.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Adds the default NoExecute tolerations a pod lacks.
pub fn admit(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            let operator = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            let t_key = t.get("key").and_then(Value::as_str).unwrap_or_default();
            (effect.is_empty() || effect == "NoExecute")
                && (t_key == key || (t_key.is_empty() && operator == "Exists"))
        });
        if !covered {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_both_defaults_unless_they_tolerate_already() {
        let mut pod = json!({"spec": {"containers": []}});
        admit(&mut pod);
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        let mut own = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
        ]}});
        admit(&mut own);
        let list = own["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["tolerationSeconds"], 5);
        let mut everything = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        admit(&mut everything);
        assert_eq!(
            everything["spec"]["tolerations"].as_array().map(Vec::len),
            Some(1)
        );
    }
}
