//! The ReplicaSet controller (kube-controller-manager's `replicaset`): keeps `spec.replicas`
//! active pods matching the selector — adopting orphans that match, releasing owned pods
//! that stopped matching, creating pods from the template in slow-start batches, deleting
//! surplus pods in upstream's order — and reports replicas, fullyLabeled, ready and
//! available counts in status.
//!
//! Owns ReplicaSets' pods and status. It must not touch a ReplicaSet's spec (Deployments do)
//! or pods owned by another controller.
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{ReplicaSet, ReplicaSetStatus},
    core::v1::Pod,
};
use serde_json::json;
use tracing::debug;

use super::{
    expectations::Expectations,
    pods::{self, controller_of, controller_reference},
    runner::{run_workers, Requeue},
};
use crate::{
    apiserver::rest::PatchKind,
    client::{
        events::{reference_to, EventType, Recorder},
        informer::split_key,
        labels::selector_matches,
        leader::Leadership,
        CachedPod, Client, ClientError, Informer, Informers, WorkQueue,
    },
};

/// Most pods created or deleted in one pass (upstream's `burstReplicas`).
const BURST: usize = 500;

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
) -> Result<(), ClientError> {
    let sets = informers.get::<ReplicaSet>()?;
    let pods = informers.get::<CachedPod>()?;
    let queue = WorkQueue::new();
    let expectations = Expectations::new();
    sets.on_change(super::expectations::owner_handler(
        queue.clone(),
        expectations.clone(),
    ));
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        let sets = sets.clone();
        pods.on_change(Box::new(move |old, new| {
            on_pod_change(&queue, &expectations, &sets, old, new);
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        sets,
        pods,
        expectations,
        recorder,
    });
    run_workers("replicaset", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

/// The key of the ReplicaSet controlling a pod.
fn owner_key(pod: &CachedPod) -> Option<String> {
    super::claim::controller_key(&pod.metadata, "apps/v1", "ReplicaSet")
}

fn on_pod_change(
    queue: &WorkQueue,
    expectations: &Expectations,
    sets: &Informer<ReplicaSet>,
    old: Option<&Arc<CachedPod>>,
    new: Option<&Arc<CachedPod>>,
) {
    let uid = |p: &CachedPod| p.metadata.uid.clone().unwrap_or_default();
    match (old, new) {
        (None, Some(pod)) => match owner_key(pod) {
            Some(key) => {
                expectations.creation_observed(&key);
                if pod.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(&key, &uid(pod));
                }
                queue.add(key);
            }
            None => enqueue_matching(queue, sets, pod),
        },
        (Some(before), Some(pod)) => {
            let key = owner_key(pod);
            if let Some(key) = &key {
                if pod.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(key, &uid(pod));
                }
                queue.add(key.clone());
            }
            let old_key = owner_key(before);
            if old_key.is_some() && old_key != key {
                queue.add(old_key.unwrap_or_default());
            }
            if key.is_none() && before.metadata.labels != pod.metadata.labels {
                enqueue_matching(queue, sets, pod);
            }
        }
        (Some(pod), None) => {
            if let Some(key) = owner_key(pod) {
                expectations.deletion_observed(&key, &uid(pod));
                queue.add(key);
            }
        }
        (None, None) => {}
    }
}

/// Orphans: every ReplicaSet in the namespace whose selector matches may adopt.
fn enqueue_matching(queue: &WorkQueue, sets: &Informer<ReplicaSet>, pod: &CachedPod) {
    super::claim::enqueue_selecting(queue, sets, &pod.metadata, |s| {
        s.spec.as_ref().map(|s| &s.selector)
    });
}

struct Controller {
    client: Client,
    sets: Informer<ReplicaSet>,
    pods: Informer<CachedPod>,
    expectations: Expectations,
    recorder: Recorder,
}

impl Controller {
    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        let Some(set) = self.sets.get(key) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let deleting = set.metadata.deletion_timestamp.is_some();
        let pods_api = self.client.namespaced::<Pod>(namespace)?;

        // Claim: adopt matching orphans, release owned pods that stopped matching.
        let mut owned: Vec<Arc<CachedPod>> = Vec::new();
        for pod in self.pods.list_namespace(namespace) {
            let matches = selector_matches(&spec.selector, pod.metadata.labels.as_ref());
            match controller_of(&pod.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if !deleting {
                        let refs: Vec<_> = pod
                            .metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let patch =
                            json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                        match pods_api.patch(&name, PatchKind::Merge, &patch).await {
                            Ok(_) => debug!(replicaset = key, pod = %name, "released"),
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                None if matches && !deleting && pods::is_active(&pod) => {
                    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(controller_reference(set.as_ref()));
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                    match pods_api.patch(&name, PatchKind::Merge, &patch).await {
                        Ok(adopted) => owned.push(Arc::new(CachedPod::from(adopted))),
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
        let mut active: Vec<Arc<CachedPod>> = owned
            .iter()
            .filter(|p| pods::is_active(p))
            .cloned()
            .collect();

        let mut failure = None;
        if self.expectations.satisfied(key) && !deleting {
            let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
            if active.len() < wanted {
                let missing = (wanted - active.len()).min(BURST);
                failure = self
                    .create_pods(key, namespace, name, &set, missing)
                    .await
                    .err();
            } else if active.len() > wanted {
                let surplus = (active.len() - wanted).min(BURST);
                active.sort_by(|a, b| pods::deletion_order(a, b));
                let victims: Vec<Arc<CachedPod>> = active.drain(..surplus).collect();
                self.expectations.expect(
                    key,
                    0,
                    victims
                        .iter()
                        .map(|p| p.metadata.uid.clone().unwrap_or_default()),
                );
                for victim in victims {
                    let victim_name = victim.metadata.name.clone().unwrap_or_default();
                    let options = json!({"preconditions": {"uid": victim.metadata.uid}});
                    match pods_api.delete(&victim_name, options).await {
                        Ok(()) => self.recorder.record(
                            reference_to(set.as_ref()),
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted pod: {victim_name}"),
                        ),
                        Err(e) => {
                            self.expectations.deletion_observed(
                                key,
                                victim.metadata.uid.as_deref().unwrap_or_default(),
                            );
                            failure = Some(e);
                        }
                    }
                }
            }
        }
        let requeue = self.update_status(&set, &owned, failure.as_ref()).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(requeue),
        }
    }

    /// Creates `count` pods in batches of 1, 2, 4, ... stopping at the first failure.
    async fn create_pods(
        &self,
        key: &str,
        namespace: &str,
        name: &str,
        set: &ReplicaSet,
        count: usize,
    ) -> Result<(), ClientError> {
        let template = set
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let pods_api = self.client.namespaced::<Pod>(namespace)?;
        self.expectations.expect(key, count as i64, Vec::new());
        let pod = pods::pod_from_template(
            &template,
            namespace,
            &format!("{name}-"),
            controller_reference(set),
        );
        let (_, error) = pods::create_slow_start(
            &pods_api,
            vec![pod; count],
            &reference_to(set),
            &self.recorder,
            &self.expectations,
            key,
        )
        .await;
        if let Some(e) = error {
            return Err(e);
        }
        Ok(())
    }

    async fn update_status(
        &self,
        set: &ReplicaSet,
        owned: &[Arc<CachedPod>],
        failure: Option<&ClientError>,
    ) -> Result<Requeue, ClientError> {
        let spec = set.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = pods::now_seconds();
        let active: Vec<&Arc<CachedPod>> = owned.iter().filter(|p| pods::is_active(p)).collect();
        let template_labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        let ready = active.iter().filter(|p| pods::is_ready(p)).count() as i32;
        let available = active
            .iter()
            .filter(|p| pods::is_available(p, min_ready, now))
            .count() as i32;
        let mut status = ReplicaSetStatus {
            replicas: active.len() as i32,
            fully_labeled_replicas: Some(
                active
                    .iter()
                    .filter(|p| pods::labels_contain(p.metadata.labels.as_ref(), template_labels))
                    .count() as i32,
            ),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            terminating_replicas: None,
            observed_generation: set.metadata.generation,
            conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        };
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "ReplicaFailure");
        if let Some(e) = failure {
            conditions.push(k8s_openapi::api::apps::v1::ReplicaSetCondition {
                type_: "ReplicaFailure".to_owned(),
                status: "True".to_owned(),
                reason: Some("FailedCreate".to_owned()),
                message: Some(e.to_string()),
                last_transition_time: Some(pods::now_time()),
            });
        }
        if status.conditions.as_ref().is_some_and(Vec::is_empty) {
            status.conditions = None;
        }
        let unchanged = set.status.as_ref().is_some_and(|current| {
            current.replicas == status.replicas
                && current.fully_labeled_replicas.unwrap_or(0)
                    == status.fully_labeled_replicas.unwrap_or(0)
                && current.ready_replicas.unwrap_or(0) == status.ready_replicas.unwrap_or(0)
                && current.available_replicas.unwrap_or(0) == status.available_replicas.unwrap_or(0)
                && current.observed_generation == status.observed_generation
                && current.conditions.as_ref().map_or(0, Vec::len)
                    == status.conditions.as_ref().map_or(0, Vec::len)
        });
        if !unchanged {
            let name = set.metadata.name.clone().unwrap_or_default();
            let namespace = set.metadata.namespace.clone().unwrap_or_default();
            let mut updated = set.clone();
            updated.status = Some(status);
            self.client
                .namespaced::<ReplicaSet>(&namespace)?
                .replace_status(&name, &updated)
                .await?;
        }
        // Pods ready but not yet available: look again when they will be.
        let waiting = min_ready > 0 && ready > available;
        Ok(waiting.then(|| Duration::from_secs(min_ready as u64)))
    }
}
