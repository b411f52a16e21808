//! Node lifecycle (kube-controller-manager's `nodelifecycle` and `taint-eviction`
//! controllers): a node whose kubelet stops renewing its Lease in `kube-node-lease` (and
//! stops posting status) for the node monitor grace period gets its conditions set to
//! `Unknown` ("Kubelet stopped posting node status.") and its pods marked not Ready; nodes
//! carry the `node.kubernetes.io/not-ready` / `unreachable` taints (NoSchedule and NoExecute)
//! and `unschedulable` as their Ready condition and cordon say, and the NoSchedule taints of
//! the MemoryPressure, DiskPressure, PIDPressure and NetworkUnavailable conditions while
//! they are True (upstream's TaintNodesByCondition); pods on a node with NoExecute
//! taints they do not tolerate are deleted — at once, or after their `tolerationSeconds`.
//!
//! Owns node health conditions written on the kubelet's behalf, those taints, and
//! taint-based evictions. Heartbeats are measured on this process's clock: a change in the
//! Lease or in the Ready condition's heartbeat counts as a probe, as upstream does.
use std::{collections::HashMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, NodeCondition, Pod, Taint, Toleration},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use super::pods;
use crate::{
    apiserver::rest::PatchKind,
    client::{
        events::{reference_to, EventType, Recorder},
        leader::Leadership,
        CachedPod, Client, ClientError, Informer, Informers,
    },
    scheduler::filters::tolerates,
};

/// The taint of a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a node whose Ready condition is Unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a cordoned node.
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The NoSchedule taints of the node conditions that are True when something is wrong
/// (upstream's TaintNodesByCondition): condition type and taint key.
pub const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// Timings (upstream: grace 50 s, monitor period 5 s).
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// How long a node may go without a heartbeat before it is Unknown.
    pub grace_period: Duration,
    /// How often nodes are looked at.
    pub monitor_period: Duration,
}

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
    config: LifecycleConfig,
) -> Result<(), ClientError> {
    let controller = Lifecycle {
        client: client.clone(),
        nodes: informers.get::<Node>()?,
        leases: informers.get::<Lease>()?,
        pods: informers.get::<CachedPod>()?,
        recorder,
        config,
        probes: HashMap::new(),
    };
    tokio::spawn(controller.run(leadership));
    Ok(())
}

/// The last heartbeat seen for a node and when it was seen.
#[derive(Debug, Clone)]
struct Probe {
    lease_renew: Option<String>,
    ready_heartbeat: Option<String>,
    seen_at: Instant,
}

struct Lifecycle {
    client: Client,
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods: Informer<CachedPod>,
    recorder: Recorder,
    config: LifecycleConfig,
    probes: HashMap<String, Probe>,
}

fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == kind)
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    condition(node, "Ready")
}

fn time_text(time: &Option<Time>) -> Option<String> {
    time.as_ref().map(|t| t.0.to_string())
}

/// The taints a node should carry for its conditions and cordon, with their effects.
pub fn wanted_taints(node: &Node) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    match ready_condition(node).map(|c| c.status.as_str()) {
        Some("False") => {
            out.push((NOT_READY, "NoSchedule"));
            out.push((NOT_READY, "NoExecute"));
        }
        Some("Unknown") => {
            out.push((UNREACHABLE, "NoSchedule"));
            out.push((UNREACHABLE, "NoExecute"));
        }
        // No Ready condition yet: a new node is not ready for pods.
        None => out.push((NOT_READY, "NoSchedule")),
        _ => {}
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        out.push((UNSCHEDULABLE, "NoSchedule"));
    }
    for (kind, taint) in CONDITION_TAINTS {
        if condition(node, kind).is_some_and(|c| c.status == "True") {
            out.push((taint, "NoSchedule"));
        }
    }
    out
}

/// When a pod must leave a node with these NoExecute taints: `Some(None)` at once,
/// `Some(Some(t))` at `t` (seconds since the epoch), `None` never.
pub fn eviction_time(tolerations: &[Toleration], taints: &[Taint]) -> Option<Option<i64>> {
    let mut deadline: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(None);
        }
        // The shortest tolerationSeconds among the matching tolerations; none means forever.
        let seconds = matching.iter().filter_map(|t| t.toleration_seconds).min();
        if let Some(seconds) = seconds {
            let added = taint
                .time_added
                .as_ref()
                .map_or_else(pods::now_seconds, |t| t.0.as_second());
            let at = added + seconds.max(0);
            deadline = Some(deadline.map_or(at, |d: i64| d.min(at)));
        }
    }
    deadline.map(Some)
}

impl Lifecycle {
    async fn run(mut self, mut leadership: Leadership) {
        self.nodes.synced().await;
        self.leases.synced().await;
        self.pods.synced().await;
        let mut tick = tokio::time::interval(self.config.monitor_period);
        loop {
            tick.tick().await;
            if !*leadership.borrow_and_update() {
                // A new leader starts every node's grace period afresh.
                self.probes.clear();
                continue;
            }
            for node in self.nodes.list() {
                if let Err(e) = self.monitor(&node).await {
                    if !e.is_conflict() && !e.is_not_found() {
                        warn!(node = ?node.metadata.name, error = %e, "node lifecycle pass failed");
                    }
                }
            }
        }
    }

    async fn monitor(&mut self, node: &Arc<Node>) -> Result<(), ClientError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = self.leases.get(&format!("kube-node-lease/{name}"));
        let lease_renew = lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string());
        let ready_heartbeat = ready_condition(node).and_then(|c| time_text(&c.last_heartbeat_time));
        let now = Instant::now();
        let probe = self.probes.entry(name.clone()).or_insert_with(|| Probe {
            lease_renew: lease_renew.clone(),
            ready_heartbeat: ready_heartbeat.clone(),
            seen_at: now,
        });
        if probe.lease_renew != lease_renew || probe.ready_heartbeat != ready_heartbeat {
            *probe = Probe {
                lease_renew,
                ready_heartbeat,
                seen_at: now,
            };
        }
        let silent = now.duration_since(probe.seen_at) > self.config.grace_period;
        let ready = ready_condition(node).map(|c| c.status.clone());
        if silent && ready.as_deref() != Some("Unknown") {
            self.mark_unknown(node, &name).await?;
            return Ok(());
        }
        self.reconcile_taints(node, &name).await?;
        self.evict(node, &name).await
    }

    /// Sets every kubelet condition to Unknown and the node's pods to not Ready.
    async fn mark_unknown(&self, node: &Node, name: &str) -> Result<(), ClientError> {
        info!(
            node = name,
            "node stopped posting status; marking it Unknown"
        );
        let now = pods::now_time();
        let mut conditions: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if !conditions.iter().any(|c| c.type_ == "Ready") {
            conditions.push(NodeCondition {
                type_: "Ready".to_owned(),
                ..NodeCondition::default()
            });
        }
        for condition in &mut conditions {
            if !matches!(
                condition.type_.as_str(),
                "Ready" | "MemoryPressure" | "DiskPressure" | "PIDPressure"
            ) {
                continue;
            }
            if condition.status != "Unknown" {
                condition.last_transition_time = Some(now.clone());
            }
            condition.status = "Unknown".to_owned();
            condition.reason = Some("NodeStatusUnknown".to_owned());
            condition.message = Some("Kubelet stopped posting node status.".to_owned());
            condition.last_heartbeat_time =
                condition.last_heartbeat_time.clone().or(Some(now.clone()));
        }
        let mut updated = node.clone();
        if let Some(status) = updated.status.as_mut() {
            status.conditions = Some(conditions);
        } else {
            updated.status = Some(k8s_openapi::api::core::v1::NodeStatus {
                conditions: Some(conditions),
                ..Default::default()
            });
        }
        self.client
            .all::<Node>()?
            .replace_status(name, &updated)
            .await?;
        self.recorder.record(
            reference_to(node),
            EventType::Normal,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        // Pods on the node are not Ready any more (so their endpoints stop receiving).
        for pod in self.pods_on(name) {
            if !pods::is_ready(&pod) {
                continue;
            }
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let mut conditions = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            for condition in &mut conditions {
                if condition.type_ == "Ready" || condition.type_ == "ContainersReady" {
                    condition.status = "False".to_owned();
                    condition.reason = Some("NodeNotReady".to_owned());
                    condition.last_transition_time = Some(now.clone());
                }
            }
            let patch = json!({"status": {"conditions": conditions}});
            if let Err(e) = self
                .client
                .namespaced::<Pod>(&namespace)?
                .patch_status(&pod_name, &patch)
                .await
            {
                warn!(pod = %pod_name, error = %e, "could not mark a pod not Ready");
            }
        }
        Ok(())
    }

    fn pods_on(&self, node: &str) -> Vec<Arc<CachedPod>> {
        self.pods
            .list()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .collect()
    }

    async fn reconcile_taints(&self, node: &Node, name: &str) -> Result<(), ClientError> {
        let wanted = wanted_taints(node);
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours: Vec<&str> = [NOT_READY, UNREACHABLE, UNSCHEDULABLE]
            .into_iter()
            .chain(CONDITION_TAINTS.map(|(_, taint)| taint))
            .collect();
        let mut next: Vec<Taint> = current
            .iter()
            .filter(|t| {
                !ours.contains(&t.key.as_str())
                    || wanted.contains(&(t.key.as_str(), t.effect.as_str()))
            })
            .cloned()
            .collect();
        for (key, effect) in &wanted {
            if !next.iter().any(|t| t.key == *key && t.effect == *effect) {
                next.push(Taint {
                    key: (*key).to_owned(),
                    effect: (*effect).to_owned(),
                    time_added: (*effect == "NoExecute").then(pods::now_time),
                    value: None,
                });
            }
        }
        if next == current {
            return Ok(());
        }
        let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": next}});
        self.client
            .all::<Node>()?
            .patch(name, PatchKind::Merge, &patch)
            .await?;
        Ok(())
    }

    async fn evict(&self, node: &Node, name: &str) -> Result<(), ClientError> {
        let taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if taints.is_empty() {
            return Ok(());
        }
        let now = pods::now_seconds();
        for pod in self.pods_on(name) {
            if pod.metadata.deletion_timestamp.is_some() || pods::is_terminal(&pod) {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let due = match eviction_time(&tolerations, &taints) {
                None => continue,
                Some(None) => true,
                Some(Some(at)) => at <= now,
            };
            if !due {
                continue;
            }
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            info!(pod = %pod_name, node = name, "evicting a pod from a NoExecute-tainted node");
            self.recorder.record(
                reference_to(pod.as_ref()),
                EventType::Normal,
                "TaintManagerEviction",
                format!("Marking for deletion Pod {namespace}/{pod_name}"),
            );
            let api = self.client.namespaced::<Pod>(&namespace)?;
            let condition = json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": crate::apiserver::objects::now(),
            }]}});
            // The condition is best effort; the delete is what matters.
            let _ = api.patch(&pod_name, PatchKind::Strategic, &condition).await;
            api.delete(
                &pod_name,
                json!({"preconditions": {"uid": pod.metadata.uid}}),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};

    fn node(ready: Option<&str>, cordoned: bool) -> Node {
        Node {
            spec: Some(NodeSpec {
                unschedulable: Some(cordoned),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|status| {
                    vec![NodeCondition {
                        type_: "Ready".to_owned(),
                        status: status.to_owned(),
                        ..NodeCondition::default()
                    }]
                }),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn taints_follow_the_ready_condition_and_the_cordon() {
        assert!(wanted_taints(&node(Some("True"), false)).is_empty());
        assert_eq!(
            wanted_taints(&node(Some("Unknown"), false)),
            [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]
        );
        assert_eq!(
            wanted_taints(&node(Some("False"), true)),
            [
                (NOT_READY, "NoSchedule"),
                (NOT_READY, "NoExecute"),
                (UNSCHEDULABLE, "NoSchedule")
            ]
        );
        assert_eq!(
            wanted_taints(&node(None, false)),
            [(NOT_READY, "NoSchedule")]
        );
    }

    #[test]
    fn pressure_conditions_bring_their_no_schedule_taints() {
        let mut pressed = node(Some("True"), false);
        if let Some(conditions) = pressed.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            for (kind, status) in [
                ("MemoryPressure", "False"),
                ("DiskPressure", "True"),
                ("PIDPressure", "Unknown"),
                ("NetworkUnavailable", "True"),
            ] {
                conditions.push(NodeCondition {
                    type_: kind.to_owned(),
                    status: status.to_owned(),
                    ..NodeCondition::default()
                });
            }
        }
        assert_eq!(
            wanted_taints(&pressed),
            [
                ("node.kubernetes.io/disk-pressure", "NoSchedule"),
                ("node.kubernetes.io/network-unavailable", "NoSchedule")
            ]
        );
    }

    #[test]
    fn eviction_waits_for_the_shortest_matching_toleration() {
        let taint = Taint {
            key: UNREACHABLE.to_owned(),
            effect: "NoExecute".to_owned(),
            time_added: Some(Time(
                k8s_openapi::jiff::Timestamp::new(1000, 0)
                    .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            )),
            value: None,
        };
        let toleration = |seconds: Option<i64>| Toleration {
            key: Some(UNREACHABLE.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            toleration_seconds: seconds,
            value: None,
        };
        assert_eq!(eviction_time(&[], std::slice::from_ref(&taint)), Some(None));
        assert_eq!(
            eviction_time(&[toleration(None)], std::slice::from_ref(&taint)),
            None
        );
        assert_eq!(
            eviction_time(
                &[toleration(Some(300)), toleration(Some(5))],
                std::slice::from_ref(&taint)
            ),
            Some(Some(1005))
        );
    }
}
