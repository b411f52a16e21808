//! Table output (`meta.k8s.io/v1` Table) for `kubectl get`: the columns kube-apiserver
//! prints for each resource (NAME and AGE everywhere, plus per-resource columns), with the
//! object (or its metadata) attached to each row as the client asked.
use serde_json::{json, Value};

use super::resources::ResourceDef;

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// The Content-Type of a Table response.
pub const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

fn columns(def: &ResourceDef) -> Vec<Value> {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    match def.plural {
        "namespaces" => columns.push(json!({"name": "Status", "type": "string", "format": "", "description": "The status of the namespace", "priority": 0})),
        "configmaps" => columns.push(json!({"name": "Data", "type": "integer", "format": "", "description": "Number of data entries", "priority": 0})),
        "secrets" => {
            columns.push(json!({"name": "Type", "type": "string", "format": "", "description": "The type of the secret", "priority": 0}));
            columns.push(json!({"name": "Data", "type": "integer", "format": "", "description": "Number of data entries", "priority": 0}));
        }
        "serviceaccounts" => columns.push(json!({"name": "Secrets", "type": "integer", "format": "", "description": "Number of secrets", "priority": 0})),
        "leases" => columns.push(json!({"name": "Holder", "type": "string", "format": "", "description": "The holder of the lease", "priority": 0})),
        "deployments" => {
            columns.push(col("Ready", "Number of the pod with ready state", 0));
            columns.push(col("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", 0));
            columns.push(col("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", 0));
        }
        "replicasets" => {
            columns.push(col("Desired", "Number of desired pods", 0));
            columns.push(col("Current", "Number of actual replicas", 0));
            columns.push(col("Ready", "Number of ready replicas", 0));
        }
        "services" => {
            columns.push(col("Type", "The type of the service", 0));
            columns.push(col("Cluster-IP", "The cluster IP of the service", 0));
            columns.push(col("External-IP", "The external IPs of the service", 0));
            columns.push(col("Port(s)", "The ports of the service", 0));
        }
        "pods" => {
            columns.push(col("Ready", "The aggregate readiness state of this pod for accepting traffic.", 0));
            columns.push(col("Status", "The aggregate status of the containers in this pod.", 0));
            columns.push(col("Restarts", "The number of times the containers in this pod have been restarted.", 0));
        }
        "nodes" => {
            columns.push(col("Status", "The status of the node", 0));
            columns.push(col("Version", "Kubelet Version reported by the node.", 0));
        }
        _ => {}
    }
    for (name, kind, _, priority) in &def.printer_columns {
        let kind = if *kind == "date" { "string" } else { kind };
        columns.push(json!({"name": name, "type": kind, "format": "", "description": "", "priority": priority}));
    }
    columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    match def.plural {
        "deployments" | "replicasets" => {
            columns.push(col(
                "Containers",
                "Names of each container in the template.",
                1,
            ));
            columns.push(col(
                "Images",
                "Images referenced by each container in the template.",
                1,
            ));
            columns.push(col("Selector", "Label selector for pods.", 1));
        }
        "services" => columns.push(col("Selector", "The selector of the service", 1)),
        "pods" => {
            columns.push(col("IP", "The IP address assigned to the pod", 1));
            columns.push(col("Node", "The node the pod is scheduled on", 1));
        }
        _ => {}
    }
    columns
}

fn col(name: &str, description: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "format": "", "description": description, "priority": priority})
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn joined(obj: &Value, pointer: &str, field: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get(field).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".to_owned())
}

/// The EXTERNAL-IP column as kubectl's printer fills it: externalIPs for ClusterIP and
/// NodePort Services, the load balancer's ingress (IPs or hostnames, long lists cut to 13
/// characters and "...") and then the externalIPs for LoadBalancers (`<pending>` with
/// neither), the external name for ExternalName.
fn service_external_ip(obj: &Value) -> String {
    let strings = |pointer: &str| -> Vec<String> {
        obj.pointer(pointer)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let external_ips = strings("/spec/externalIPs");
    let kind = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    match kind {
        "ClusterIP" | "NodePort" if external_ips.is_empty() => "<none>".to_owned(),
        "ClusterIP" | "NodePort" => external_ips.join(","),
        "LoadBalancer" => {
            let ingress: std::collections::BTreeSet<&str> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                })
                .collect();
            let mut ingress = ingress.into_iter().collect::<Vec<_>>().join(",");
            if ingress.chars().count() > 16 {
                ingress = format!("{}...", ingress.chars().take(13).collect::<String>());
            }
            let all: Vec<String> = (!ingress.is_empty())
                .then_some(ingress)
                .into_iter()
                .chain(external_ips)
                .collect();
            if all.is_empty() {
                "<pending>".to_owned()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => obj
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => "<unknown>".to_owned(),
    }
}

fn service_ports(obj: &Value) -> String {
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text: Vec<String> = ports
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{port}:{node_port}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    if text.is_empty() {
        "<none>".to_owned()
    } else {
        text.join(",")
    }
}

fn count(value: Option<&Value>) -> usize {
    value.and_then(Value::as_object).map_or(0, |m| m.len())
}

fn age(created: &str) -> String {
    let Ok(created) =
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
    else {
        return "<unknown>".to_owned();
    };
    let secs = (time::OffsetDateTime::now_utc() - created)
        .whole_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86_400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    let name = obj
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    let mut cells = vec![name];
    match def.plural {
        "namespaces" => cells.push(obj.pointer("/status/phase").cloned().unwrap_or(json!(""))),
        "configmaps" => cells.push(json!(count(obj.get("data")) + count(obj.get("binaryData")))),
        "secrets" => {
            cells.push(obj.get("type").cloned().unwrap_or(json!("Opaque")));
            cells.push(json!(count(obj.get("data"))));
        }
        "serviceaccounts" => cells.push(json!(obj
            .get("secrets")
            .and_then(Value::as_array)
            .map_or(0, Vec::len))),
        "leases" => cells.push(
            obj.pointer("/spec/holderIdentity")
                .cloned()
                .unwrap_or(json!("")),
        ),
        "deployments" => {
            cells.push(json!(format!(
                "{}/{}",
                int(obj, "/status/readyReplicas"),
                int(obj, "/spec/replicas")
            )));
            cells.push(json!(int(obj, "/status/updatedReplicas")));
            cells.push(json!(int(obj, "/status/availableReplicas")));
        }
        "replicasets" => {
            cells.push(json!(int(obj, "/spec/replicas")));
            cells.push(json!(int(obj, "/status/replicas")));
            cells.push(json!(int(obj, "/status/readyReplicas")));
        }
        "services" => {
            cells.push(
                obj.pointer("/spec/type")
                    .cloned()
                    .unwrap_or(json!("ClusterIP")),
            );
            cells.push(
                obj.pointer("/spec/clusterIP")
                    .cloned()
                    .unwrap_or(json!("<none>")),
            );
            cells.push(json!(service_external_ip(obj)));
            cells.push(json!(service_ports(obj)));
        }
        "pods" => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .map(|s| s.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
                .sum();
            cells.push(json!(format!("{ready}/{total}")));
            cells.push(
                obj.pointer("/status/phase")
                    .cloned()
                    .unwrap_or(json!("Pending")),
            );
            cells.push(json!(restarts));
        }
        "nodes" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| {
                    c.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                })
                .and_then(|c| c.get("status").and_then(Value::as_str))
                == Some("True");
            cells.push(json!(if ready { "Ready" } else { "NotReady" }));
            cells.push(
                obj.pointer("/status/nodeInfo/kubeletVersion")
                    .cloned()
                    .unwrap_or(json!("")),
            );
        }
        _ => {}
    }
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for (_, kind, pointer, _) in &def.printer_columns {
        let value = obj.pointer(pointer).cloned().unwrap_or(Value::Null);
        let value = match (*kind, value.as_str()) {
            ("date", Some(time)) => json!(age(time)),
            _ => value,
        };
        cells.push(value);
    }
    cells.push(json!(age(created)));
    match def.plural {
        "deployments" | "replicasets" => {
            cells.push(json!(joined(obj, "/spec/template/spec/containers", "name")));
            cells.push(json!(joined(
                obj,
                "/spec/template/spec/containers",
                "image"
            )));
            cells.push(json!(selector(obj, "/spec/selector/matchLabels")));
        }
        "services" => cells.push(json!(selector(obj, "/spec/selector"))),
        "pods" => {
            cells.push(
                obj.pointer("/status/podIP")
                    .cloned()
                    .unwrap_or(json!("<none>")),
            );
            cells.push(
                obj.pointer("/spec/nodeName")
                    .cloned()
                    .unwrap_or(json!("<none>")),
            );
        }
        _ => {}
    }
    cells
}

fn row_object(def: &ResourceDef, obj: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => {
            let mut full = obj.clone();
            full["apiVersion"] = json!(def.api_version());
            full["kind"] = json!(def.kind);
            full
        }
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        }),
    }
}

/// A Table of `objects` with list metadata `metadata`; `include` is the `includeObject`
/// parameter (`None`, `Metadata` (default) or `Object`).
pub fn table(def: &ResourceDef, objects: &[Value], metadata: Value, include: &str) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| json!({"cells": cells(def, obj), "object": row_object(def, obj, include)}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(def),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_external_ips_read_as_kubectl_prints_them() {
        let column = |spec: Value, status: Value| {
            service_external_ip(&json!({"spec": spec, "status": status}))
        };
        assert_eq!(column(json!({"type": "ClusterIP"}), json!({})), "<none>");
        assert_eq!(
            column(
                json!({"type": "NodePort", "externalIPs": ["192.0.2.1", "192.0.2.2"]}),
                json!({})
            ),
            "192.0.2.1,192.0.2.2"
        );
        assert_eq!(
            column(json!({"type": "LoadBalancer"}), json!({})),
            "<pending>"
        );
        assert_eq!(
            column(
                json!({"type": "LoadBalancer", "externalIPs": ["192.0.2.9"]}),
                json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}})
            ),
            "203.0.113.7,192.0.2.9"
        );
        assert_eq!(
            column(
                json!({"type": "LoadBalancer"}),
                json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]}})
            ),
            "203.0.113.7,l..."
        );
        assert_eq!(
            column(
                json!({"type": "ExternalName", "externalName": "example.com"}),
                json!({})
            ),
            "example.com"
        );
    }
    use crate::apiserver::resources::Registry;

    #[test]
    fn kubectl_accept_header_asks_for_a_table() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn configmap_rows_count_data() {
        let registry = Registry::new();
        let Some(def) = registry.find("", "v1", "configmaps") else {
            panic!("configmaps are served");
        };
        let cm = json!({"metadata": {"name": "a", "creationTimestamp": "2020-01-01T00:00:00Z"}, "data": {"x": "1", "y": "2"}});
        let t = table(&def, &[cm], json!({}), "Metadata");
        assert_eq!(t["rows"][0]["cells"][0], "a");
        assert_eq!(t["rows"][0]["cells"][1], 2);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"].as_array().map(Vec::len), Some(3));
    }
}
