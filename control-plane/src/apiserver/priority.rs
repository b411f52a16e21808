//! Pod priority, as kube-apiserver's `Priority` admission plugin does it: a new pod's
//! `priorityClassName` (or the cluster's globalDefault class) resolves to `spec.priority`
//! and `spec.preemptionPolicy`; a pod that names a missing class, or states a priority that
//! differs from its class's, is refused (403). The two built-in classes
//! `system-node-critical` and `system-cluster-critical` exist from the first start.
//!
//! Owns that resolution only; the scheduler reads the result.
use serde_json::{json, Value};

use super::{
    rest::{Query, Rest},
    status::ApiError,
};

/// The built-in classes: name, value, description.
pub const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// Creates the built-in PriorityClasses when they are missing.
pub async fn bootstrap(rest: &Rest) -> Result<(), ApiError> {
    let Some(def) = rest
        .registry
        .find("scheduling.k8s.io", "v1", "priorityclasses")
    else {
        return Err(ApiError::internal("priorityclasses are not served"));
    };
    for (name, value, description) in SYSTEM_CLASSES {
        if rest.get(&def, None, name).await.is_ok() {
            continue;
        }
        let class = json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "description": description,
        });
        match rest.create(&def, None, class, &Query::new()).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves a new pod's priority from its class.
pub async fn admit(rest: &Rest, pod: &mut Value) -> Result<(), ApiError> {
    let Some(def) = rest
        .registry
        .find("scheduling.k8s.io", "v1", "priorityclasses")
    else {
        return Ok(());
    };
    let class_name = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let class = if class_name.is_empty() {
        // The globalDefault class, if one exists.
        let list = rest.list(&def, None, &Query::new()).await?;
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["globalDefault"] == json!(true))
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0))
            .cloned()
    } else {
        match rest.get(&def, None, &class_name).await {
            Ok(class) => Some(class),
            Err(e) if e.code == 404 => {
                return Err(ApiError::forbidden(
                    "",
                    "pods",
                    pod.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    &format!("no PriorityClass with name {class_name} was found"),
                ))
            }
            Err(e) => return Err(e),
        }
    };
    let (name, value, policy) = match &class {
        Some(class) => (
            class["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            class["value"].as_i64().unwrap_or(0),
            class["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")
                .to_owned(),
        ),
        None => (String::new(), 0, "PreemptLowerPriority".to_owned()),
    };
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if let Some(stated) = spec.get("priority").and_then(Value::as_i64) {
        if stated != value {
            return Err(ApiError::forbidden(
                "",
                "pods",
                &pod_name,
                &format!("the integer value of priority ({stated}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"),
            ));
        }
    }
    if let Some(stated) = spec.get("preemptionPolicy").and_then(Value::as_str) {
        if class.is_some() && stated != policy {
            return Err(ApiError::forbidden(
                "",
                "pods",
                &pod_name,
                &format!("the string value of PreemptionPolicy ({stated}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"),
            ));
        }
    }
    if !name.is_empty() {
        spec.insert("priorityClassName".to_owned(), json!(name));
    }
    spec.insert("priority".to_owned(), json!(value));
    spec.entry("preemptionPolicy").or_insert(json!(policy));
    Ok(())
}
