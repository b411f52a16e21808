//! Preemption (kube-scheduler's DefaultPreemption): when a pod fits nowhere, find a node
//! where evicting pods of lower priority makes it fit, evict as few and as unimportant ones
//! as possible, and nominate the node on the preemptor (`status.nominatedNodeName`); the
//! preemptor is scheduled once the victims are gone.
//!
//! Owns the choice of victims and node; the deletes go through the API like any client's.
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tracing::{info, warn};

use super::{
    affinity::Context,
    cache::{Cache, NodeInfo, PodInfo},
    filters,
};
use crate::client::{
    events::{reference_to, EventType, Recorder},
    Api, CachedPod,
};

/// A node where preemption works and what it costs.
#[derive(Debug)]
struct Candidate {
    node: String,
    victims: Vec<Arc<CachedPod>>,
}

impl Candidate {
    /// Upstream's order: lowest highest-victim priority, then lowest priority sum, then
    /// fewest victims.
    fn cost(&self) -> (i32, i64, usize) {
        let priorities = self.victims.iter().map(|v| priority(v));
        (
            priorities.clone().max().unwrap_or(i32::MIN),
            priorities.map(i64::from).sum(),
            self.victims.len(),
        )
    }
}

fn priority(pod: &CachedPod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn may_preempt(pod: &CachedPod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        .is_none_or(|p| p != "Never")
}

/// Whether the pod fits the node as it is in `node` (with a context computed for it).
fn fits(pod: &PodInfo, node: &NodeInfo, context: &Context<'_>) -> bool {
    filters::run_all(pod, node, context).is_ok()
}

/// The victims on one node, or `None` when evicting every lower-priority pod is not enough.
fn victims_on(
    pod: &PodInfo,
    node: &NodeInfo,
    context: &Context<'_>,
) -> Option<Vec<Arc<CachedPod>>> {
    let preemptor_priority = pod.priority();
    let mut lower: Vec<PodInfo> = node
        .pods
        .values()
        .filter(|p| p.priority() < preemptor_priority)
        .filter(|p| p.pod.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    let mut trial = node.clone();
    for victim in &lower {
        trial.remove_pod(&victim.key);
    }
    if !fits(pod, &trial, context) {
        return None;
    }
    // Reprieve as many as possible, the most important first.
    lower.sort_by_key(|p| std::cmp::Reverse(p.priority()));
    let mut victims = Vec::new();
    for candidate in lower {
        trial.add_pod(candidate.clone());
        if !fits(pod, &trial, context) {
            trial.remove_pod(&candidate.key);
            victims.push(candidate.pod.clone());
        }
    }
    Some(victims)
}

/// Tries to make room for `pod`, with the attempt's `context`; returns the nominated node
/// when victims were (or are being) evicted for it.
pub async fn try_preempt(
    pod: &PodInfo,
    cache: &Cache,
    context: &Context<'_>,
    pods: &Api<Pod>,
    recorder: &Recorder,
) -> Option<String> {
    if !may_preempt(&pod.pod) {
        return None;
    }
    // Victims already on their way out for this pod: wait for them, evict no more.
    let nominated = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.clone())
        .filter(|n| !n.is_empty());
    if let Some(node) = nominated.as_deref().and_then(|n| cache.node(n)) {
        let waiting = node
            .pods
            .values()
            .any(|p| p.pod.metadata.deletion_timestamp.is_some() && p.priority() < pod.priority());
        if waiting {
            return nominated;
        }
    }
    let best = cache
        .nodes()
        .filter(|node| {
            // Preemption cannot help where a filter fails for reasons no eviction changes.
            filters::node_unschedulable(&pod.pod, node).is_ok()
                && filters::node_name(&pod.pod, node).is_ok()
                && filters::node_affinity(&pod.pod, node).is_ok()
                && filters::taint_toleration(&pod.pod, node).is_ok()
        })
        .filter_map(|node| {
            victims_on(pod, node, context).map(|victims| Candidate {
                node: node.name().to_owned(),
                victims,
            })
        })
        .min_by_key(Candidate::cost)?;
    info!(
        preemptor = %pod.key,
        node = %best.node,
        victims = best.victims.len(),
        "preempting lower-priority pods"
    );
    for victim in &best.victims {
        let namespace = victim.metadata.namespace.clone().unwrap_or_default();
        let name = victim.metadata.name.clone().unwrap_or_default();
        recorder.record(
            reference_to(victim.as_ref()),
            EventType::Normal,
            "Preempted",
            format!(
                "Preempted by pod {} on node {}",
                pod.pod.metadata.uid.as_deref().unwrap_or_default(),
                best.node
            ),
        );
        let options = json!({
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": victim.metadata.uid},
        });
        let api = pods.clone();
        let deleted = match api_in(&api, &namespace) {
            Some(api) => api.delete(&name, options).await,
            None => continue,
        };
        if let Err(e) = deleted {
            warn!(victim = %name, error = %e, "could not evict a preemption victim");
        }
    }
    Some(best.node)
}

/// The pods API in one namespace, from the cluster-wide one.
fn api_in(all: &Api<Pod>, namespace: &str) -> Option<Api<Pod>> {
    all.client().namespaced::<Pod>(namespace).ok()
}
