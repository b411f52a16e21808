//! The disruption controller (kube-controller-manager's `disruption`): keeps every
//! PodDisruptionBudget's status — expected, currently healthy and desired healthy pods,
//! `disruptionsAllowed`, the `DisruptionAllowed` condition and the `disruptedPods` the
//! eviction subresource recorded — so that evictions are refused exactly when they would
//! break the budget.
//!
//! Owns PDB status; evictions themselves are the API server's (`rest::evict`).
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{ReplicaSet, StatefulSet},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::json;

use super::{
    pods,
    runner::{run_workers, Requeue},
};
use crate::client::{
    informer::{key_of, split_key},
    labels::selector_matches,
    leader::Leadership,
    CachedPod, Client, ClientError, Informer, Informers, WorkQueue,
};

/// How long an eviction's record keeps its pod out of the healthy count (upstream: 2 min).
const DISRUPTED_TIMEOUT: i64 = 120;

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
) -> Result<(), ClientError> {
    let budgets = informers.get::<PodDisruptionBudget>()?;
    let pods = informers.get::<CachedPod>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        budgets.on_change(Box::new(move |_, new| {
            if let Some(budget) = new {
                queue.add(key_of(budget.as_ref()));
            }
        }));
    }
    {
        let queue = queue.clone();
        let budgets = budgets.clone();
        pods.on_change(Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                for budget in budgets.list_namespace(namespace) {
                    let selected = budget
                        .spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .is_some_and(|s| selector_matches(s, pod.metadata.labels.as_ref()));
                    if selected {
                        queue.add(key_of(budget.as_ref()));
                    }
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        budgets,
        pods,
        sets: informers.get::<ReplicaSet>()?,
        stateful: informers.get::<StatefulSet>()?,
    });
    run_workers("disruption", queue, leadership, 1, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

/// `value` of `total`, rounded up for percentages.
pub fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(text) => {
            let percent: f64 = text.trim_end_matches('%').parse().unwrap_or(0.0);
            (percent * f64::from(total) / 100.0).ceil() as i32
        }
    }
}

/// The desired number of healthy pods for a budget with `expected` pods.
pub fn desired_healthy(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    expected: i32,
) -> i32 {
    match (min_available, max_unavailable) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => (expected - scaled(max, expected)).max(0),
        (None, None) => expected,
    }
}

struct Controller {
    client: Client,
    budgets: Informer<PodDisruptionBudget>,
    pods: Informer<CachedPod>,
    sets: Informer<ReplicaSet>,
    stateful: Informer<StatefulSet>,
}

impl Controller {
    /// The pods the budget expects: the replicas of their controllers, or the pods
    /// themselves for an integer minAvailable.
    fn expected(&self, namespace: &str, selected: &[Arc<CachedPod>], integer_min: bool) -> i32 {
        if integer_min {
            return selected.len() as i32;
        }
        let mut controllers: BTreeMap<String, i32> = BTreeMap::new();
        let mut uncontrolled = 0;
        for pod in selected {
            match pods::controller_of(&pod.metadata) {
                Some(owner) if owner.kind == "ReplicaSet" => {
                    let replicas = self
                        .sets
                        .get(&format!("{namespace}/{}", owner.name))
                        .and_then(|s| s.spec.as_ref().and_then(|s| s.replicas))
                        .unwrap_or(1);
                    controllers.insert(owner.uid.clone(), replicas);
                }
                Some(owner) if owner.kind == "StatefulSet" => {
                    let replicas = self
                        .stateful
                        .get(&format!("{namespace}/{}", owner.name))
                        .and_then(|s| s.spec.as_ref().and_then(|s| s.replicas))
                        .unwrap_or(1);
                    controllers.insert(owner.uid.clone(), replicas);
                }
                _ => uncontrolled += 1,
            }
        }
        controllers.values().sum::<i32>() + uncontrolled
    }

    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        self.pods.synced().await;
        let Some(budget) = self.budgets.get(key) else {
            return Ok(None);
        };
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let spec = budget.spec.clone().unwrap_or_default();
        let selected: Vec<Arc<CachedPod>> = match &spec.selector {
            Some(selector) => self
                .pods
                .list_namespace(namespace)
                .into_iter()
                .filter(|p| selector_matches(selector, p.metadata.labels.as_ref()))
                .filter(|p| !pods::is_terminal(p))
                .collect(),
            None => Vec::new(),
        };
        let now = pods::now_seconds();
        // Evictions recorded by the API server, until their pod is gone or they expire.
        let mut disrupted = budget
            .status
            .as_ref()
            .and_then(|s| s.disrupted_pods.clone())
            .unwrap_or_default();
        disrupted.retain(|pod_name, at| {
            let alive = selected.iter().any(|p| {
                p.metadata.name.as_deref() == Some(pod_name.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            });
            alive && at.0.as_second() + DISRUPTED_TIMEOUT > now
        });
        let healthy = selected
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pods::is_ready(p))
            .filter(|p| !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default()))
            .count() as i32;
        let integer_min = matches!(spec.min_available, Some(IntOrString::Int(_)));
        let expected = self.expected(namespace, &selected, integer_min);
        let desired = desired_healthy(
            spec.min_available.as_ref(),
            spec.max_unavailable.as_ref(),
            expected,
        );
        let allowed = (healthy - desired).max(0);
        let current = budget.status.clone().unwrap_or_default();
        let unchanged = current.current_healthy == healthy
            && current.desired_healthy == desired
            && current.expected_pods == expected
            && current.disruptions_allowed == allowed
            && current.observed_generation == budget.metadata.generation
            && current.disrupted_pods.clone().unwrap_or_default() == disrupted;
        if !unchanged {
            let (status, reason) = if allowed > 0 {
                ("True", "SufficientPods")
            } else {
                ("False", "InsufficientPods")
            };
            let patch = json!({"status": {
                "currentHealthy": healthy,
                "desiredHealthy": desired,
                "expectedPods": expected,
                "disruptionsAllowed": allowed,
                "observedGeneration": budget.metadata.generation,
                "disruptedPods": if disrupted.is_empty() { serde_json::Value::Null } else { json!(disrupted) },
                "conditions": [{
                    "type": "DisruptionAllowed", "status": status, "reason": reason, "message": "",
                    "observedGeneration": budget.metadata.generation,
                    "lastTransitionTime": crate::apiserver::objects::now(),
                }],
            }});
            self.client
                .namespaced::<PodDisruptionBudget>(namespace)?
                .patch_status(name, &patch)
                .await?;
        }
        // Look again when the oldest eviction record expires.
        Ok(disrupted
            .values()
            .map(|at| at.0.as_second() + DISRUPTED_TIMEOUT - now)
            .min()
            .map(|s| Duration::from_secs(s.max(1) as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_scale_percentages_up() {
        assert_eq!(desired_healthy(Some(&IntOrString::Int(2)), None, 5), 2);
        assert_eq!(
            desired_healthy(Some(&IntOrString::String("50%".into())), None, 5),
            3
        );
        assert_eq!(desired_healthy(None, Some(&IntOrString::Int(1)), 5), 4);
        assert_eq!(
            desired_healthy(None, Some(&IntOrString::String("30%".into())), 5),
            3
        );
        assert_eq!(desired_healthy(None, None, 3), 3);
        assert_eq!(desired_healthy(None, Some(&IntOrString::Int(9)), 3), 0);
    }
}
