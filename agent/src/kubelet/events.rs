//! Events the kubelet records about pods (`Unhealthy`, `Killing`, `FailedPostStartHook`,
//! `FailedPreStopHook`, `Evicted`), written as core/v1 Events in the pod's namespace, and
//! about its node (`EvictionThresholdMet`) in `default`, with source `kubelet` on this node,
//! as upstream's event recorder writes them.
//!
//! Owns writing one event; it never blocks the caller (each write is its own task) and never
//! fails it (a lost event is logged, not retried).
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::{api::PostParams, Api, Client};
use serde_json::json;
use tracing::debug;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// Writes events about pods on this node.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    node_name: String,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder for this node.
    pub fn new(client: Client, node_name: String) -> Self {
        Self { client, node_name }
    }

    /// Records an event about a container of a pod (`container` names it; `None` for the
    /// pod itself).
    pub fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        self.record_annotated(pod, container, kind, reason, message, &BTreeMap::new());
    }

    /// [`EventRecorder::record`] with annotations on the Event (upstream's
    /// `AnnotatedEventf`, e.g. the eviction manager's).
    pub fn record_annotated(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: &str,
        annotations: &BTreeMap<String, String>,
    ) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let involved = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": pod_name,
            "uid": pod.metadata.uid,
            "fieldPath": container.map(|c| format!("spec.containers{{{c}}}")),
        });
        self.post(&namespace, involved, kind, reason, message, annotations);
    }

    /// Records an event about this node (upstream's node reference: kind Node, the node's
    /// name as its UID, in the `default` namespace), e.g. `EvictionThresholdMet`.
    pub fn record_node(&self, kind: EventType, reason: &str, message: &str) {
        let involved = json!({
            "kind": "Node",
            "name": self.node_name,
            "uid": self.node_name,
        });
        self.post("default", involved, kind, reason, message, &BTreeMap::new());
    }

    /// Writes one event about `involved` in `namespace`, in its own task.
    fn post(
        &self,
        namespace: &str,
        involved: serde_json::Value,
        kind: EventType,
        reason: &str,
        message: &str,
        annotations: &BTreeMap<String, String>,
    ) {
        let involved_name = involved["name"].as_str().unwrap_or_default().to_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let timestamp = k8s_openapi::jiff::Timestamp::from_second(now.as_secs() as i64)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{involved_name}.{:x}", now.as_nanos()), "namespace": namespace,
                "annotations": (!annotations.is_empty()).then_some(annotations)},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": match kind { EventType::Normal => "Normal", EventType::Warning => "Warning" },
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        });
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), namespace);
        let reason = reason.to_owned();
        tokio::spawn(async move {
            let event = match serde_json::from_value(event) {
                Ok(event) => event,
                Err(e) => {
                    debug!(error = %e, "building an event failed");
                    return;
                }
            };
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                debug!(%reason, error = %e, "recording an event failed");
            }
        });
    }
}
