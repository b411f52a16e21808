//! The DaemonSet controller (kube-controller-manager's `daemonset`): one pod per eligible node
//! — eligible by nodeSelector, required node affinity and taints, with the tolerations
//! upstream gives every daemon pod — pinned to its node by a required node affinity on
//! `metadata.name` so the scheduler binds it; follows node changes (labels, taints, nodes
//! coming and going); records each template as a ControllerRevision
//! (`<daemonset>-<hash>`, pods labelled `controller-revision-hash`); replaces old pods with
//! RollingUpdate — within maxUnavailable, or with maxSurge a new pod beside the old one on up
//! to maxSurge nodes, the old one deleted once the new one is available — or leaves that to the
//! user with OnDelete; reports status.
//!
//! Owns daemon pods, the DaemonSet's revisions and its status. Decisions come from [`plan`];
//! this file reads the caches and applies them. It must not bind pods (the scheduler does).
pub mod plan;

use std::{collections::HashSet, sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{ControllerRevision, DaemonSet},
    core::v1::{Node, Pod},
};
use serde_json::json;
use tracing::debug;

use super::{
    claim::claim,
    expectations::Expectations,
    history::{self, POD_REVISION_LABEL},
    pods::{self, controller_of, controller_reference},
    runner::{run_workers, Requeue},
};
use crate::client::{
    events::{reference_to, EventType, Recorder},
    informer::{key_of, split_key},
    leader::Leadership,
    Api, CachedPod, Client, ClientError, Informer, Informers, WorkQueue,
};

/// Most pods created or deleted in one pass (upstream's `BurstReplicas`).
const BURST: usize = 250;

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
) -> Result<(), ClientError> {
    let sets = informers.get::<DaemonSet>()?;
    let pods = informers.get::<CachedPod>()?;
    let nodes = informers.get::<Node>()?;
    let revisions = informers.get::<ControllerRevision>()?;
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
    {
        let queue = queue.clone();
        let sets = sets.clone();
        nodes.on_change(Box::new(move |old, new| {
            let relevant = match (old, new) {
                (Some(old), Some(new)) => {
                    old.metadata.labels != new.metadata.labels
                        || old.spec.as_ref().and_then(|s| s.taints.as_ref())
                            != new.spec.as_ref().and_then(|s| s.taints.as_ref())
                }
                _ => true,
            };
            if relevant {
                for ds in sets.list() {
                    queue.add(key_of(ds.as_ref()));
                }
            }
        }));
    }
    {
        let queue = queue.clone();
        revisions.on_change(Box::new(move |old, new| {
            for revision in [old, new].into_iter().flatten() {
                if let Some(key) = owner_key(&revision.metadata) {
                    queue.add(key);
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        sets,
        pods,
        nodes,
        revisions,
        expectations,
        recorder,
    });
    run_workers("daemonset", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

/// The key of the DaemonSet controlling an object.
fn owner_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    super::claim::controller_key(meta, "apps/v1", "DaemonSet")
}

fn on_pod_change(
    queue: &WorkQueue,
    expectations: &Expectations,
    sets: &Informer<DaemonSet>,
    old: Option<&Arc<CachedPod>>,
    new: Option<&Arc<CachedPod>>,
) {
    let uid = |p: &CachedPod| p.metadata.uid.clone().unwrap_or_default();
    match (old, new) {
        (None, Some(pod)) => match owner_key(&pod.metadata) {
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
            let key = owner_key(&pod.metadata);
            if let Some(key) = &key {
                if pod.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(key, &uid(pod));
                }
                queue.add(key.clone());
            }
            if let Some(old_key) = owner_key(&before.metadata).filter(|k| Some(k) != key.as_ref()) {
                queue.add(old_key);
            }
            if key.is_none() && before.metadata.labels != pod.metadata.labels {
                enqueue_matching(queue, sets, pod);
            }
        }
        (Some(pod), None) => {
            if let Some(key) = owner_key(&pod.metadata) {
                expectations.deletion_observed(&key, &uid(pod));
                queue.add(key);
            }
        }
        (None, None) => {}
    }
}

/// Orphan pods: every DaemonSet in the namespace whose selector matches may adopt.
fn enqueue_matching(queue: &WorkQueue, sets: &Informer<DaemonSet>, pod: &CachedPod) {
    super::claim::enqueue_selecting(queue, sets, &pod.metadata, |s| {
        s.spec.as_ref().map(|s| &s.selector)
    });
}

struct Controller {
    client: Client,
    sets: Informer<DaemonSet>,
    pods: Informer<CachedPod>,
    nodes: Informer<Node>,
    revisions: Informer<ControllerRevision>,
    expectations: Expectations,
    recorder: Recorder,
}

impl Controller {
    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        let Some(cached) = self.sets.get(key) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        if cached.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let mut ds = (*cached).clone();
        let (namespace, _) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let pods_api = self.client.namespaced::<Pod>(namespace)?;
        let selector = ds
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let satisfied = self.expectations.satisfied(key);
        let owned = claim(
            &pods_api,
            &controller_reference(&ds),
            &selector,
            false,
            self.pods.list_namespace(namespace),
            None,
        )
        .await?;
        let hash = self.sync_history(&mut ds, &owned).await?;
        let nodes: Vec<Arc<Node>> = self.nodes.list();
        let by_node = plan::pods_by_node(&owned);
        let now = pods::now_seconds();
        let mut failure = None;
        if satisfied {
            let node_plan = plan::plan_nodes(&ds, &nodes, &by_node, &hash, now);
            let mut create_on = node_plan.create_on;
            let mut delete = node_plan.delete;
            if plan::is_rolling(&ds) {
                let desired = plan::desired_count(&ds, &nodes);
                let surge = plan::max_surge(&ds, desired);
                let (more_nodes, more_deletes) = if surge > 0 {
                    let update =
                        plan::surge_update(&ds, &nodes, &by_node, &hash, surge, desired, now);
                    (update.create_on, update.delete)
                } else {
                    let budget = plan::max_unavailable(&ds, desired);
                    let doomed = plan::rolling_deletions(&ds, &by_node, &hash, budget, now);
                    (Vec::new(), doomed)
                };
                for node in more_nodes {
                    if !create_on.contains(&node) {
                        create_on.push(node);
                    }
                }
                for name in more_deletes {
                    if !delete.contains(&name) {
                        delete.push(name);
                    }
                }
            }
            failure = self
                .sync_nodes(key, &ds, &pods_api, &owned, &create_on, &delete, &hash)
                .await
                .err();
        }
        let status = plan::status(&ds, &nodes, &by_node, &hash, now);
        if ds.status.as_ref() != Some(&status) {
            let mut updated = ds.clone();
            updated.status = Some(status.clone());
            let name = ds.metadata.name.clone().unwrap_or_default();
            self.client
                .namespaced::<DaemonSet>(namespace)?
                .replace_status(&name, &updated)
                .await?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        // Look again when a Ready pod becomes available (a surging node's new pod included).
        Ok(plan::next_available(&ds, &owned, now).map(|left| Duration::from_secs(left as u64)))
    }

    /// Makes sure the current template has a revision (numbered after every other one),
    /// prunes history, and returns the current revision's hash.
    async fn sync_history(
        &self,
        ds: &mut DaemonSet,
        pods: &[Arc<CachedPod>],
    ) -> Result<String, ClientError> {
        let namespace = ds.metadata.namespace.clone().unwrap_or_default();
        let name = ds.metadata.name.clone().unwrap_or_default();
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let api = self.client.namespaced::<ControllerRevision>(&namespace)?;
        let mut revisions: Vec<ControllerRevision> = self
            .revisions
            .list_namespace(&namespace)
            .into_iter()
            .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
            .map(|r| (*r).clone())
            .collect();
        history::sort_revisions(&mut revisions);
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let data = history::template_patch(&template);
        let (matching, others): (Vec<&ControllerRevision>, Vec<&ControllerRevision>) = revisions
            .iter()
            .partition(|r| history::equal_data(r, &data));
        let next = others.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let current = match matching.last() {
            Some(current) if current.revision < next => {
                history::renumber(&api, current, next).await?
            }
            Some(current) => (*current).clone(),
            None => {
                let start = ds
                    .status
                    .as_ref()
                    .and_then(|s| s.collision_count)
                    .unwrap_or(0);
                let mut collisions = start;
                let owner = controller_reference(&*ds);
                let labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                let annotations = ds.metadata.annotations.clone();
                let build = |collision: i32| {
                    let hash =
                        history::template_hash(&template, (collision > 0).then_some(collision));
                    let mut labels = labels.clone();
                    labels.insert(POD_REVISION_LABEL.to_owned(), hash.clone());
                    ControllerRevision {
                        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                            name: Some(history::revision_name(&name, &hash)),
                            namespace: Some(namespace.clone()),
                            labels: Some(labels),
                            annotations: annotations.clone(),
                            owner_references: Some(vec![owner.clone()]),
                            ..Default::default()
                        },
                        data: Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
                            data.clone(),
                        )),
                        revision: next,
                    }
                };
                let result = history::create_revision(&api, &uid, build, &mut collisions).await;
                if collisions != start {
                    let mut status = ds.status.clone().unwrap_or_default();
                    status.collision_count = Some(collisions);
                    let mut updated = ds.clone();
                    updated.status = Some(status);
                    *ds = self
                        .client
                        .namespaced::<DaemonSet>(&namespace)?
                        .replace_status(&name, &updated)
                        .await?;
                }
                result?
            }
        };
        let hash = current
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_REVISION_LABEL))
            .cloned()
            .unwrap_or_default();
        // History beyond the limit, except revisions pods still run.
        let mut live: HashSet<String> =
            HashSet::from([current.metadata.name.clone().unwrap_or_default()]);
        let pod_hashes: HashSet<&str> = pods
            .iter()
            .filter_map(|p| {
                p.metadata
                    .labels
                    .as_ref()?
                    .get(POD_REVISION_LABEL)
                    .map(String::as_str)
            })
            .collect();
        for revision in &revisions {
            let revision_hash = revision
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_REVISION_LABEL));
            if revision_hash.is_some_and(|h| pod_hashes.contains(h.as_str())) {
                live.insert(revision.metadata.name.clone().unwrap_or_default());
            }
        }
        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        for doomed in history::revisions_to_prune(&revisions, &live, limit) {
            debug!(daemonset = %name, revision = %doomed, "pruning history");
            api.delete(&doomed, json!({})).await?;
        }
        Ok(hash)
    }

    /// Creates pods on `create_on` (slow start: 1, 2, 4, ...) and deletes `delete`.
    #[allow(clippy::too_many_arguments)]
    async fn sync_nodes(
        &self,
        key: &str,
        ds: &DaemonSet,
        pods_api: &Api<Pod>,
        owned: &[Arc<CachedPod>],
        create_on: &[String],
        delete: &[String],
        hash: &str,
    ) -> Result<(), ClientError> {
        let create_on = &create_on[..create_on.len().min(BURST)];
        let delete = &delete[..delete.len().min(BURST)];
        let victims: Vec<&Arc<CachedPod>> = owned
            .iter()
            .filter(|p| p.metadata.name.as_ref().is_some_and(|n| delete.contains(n)))
            .collect();
        self.expectations.expect(
            key,
            create_on.len() as i64,
            victims
                .iter()
                .map(|p| p.metadata.uid.clone().unwrap_or_default()),
        );
        let wanted: Vec<Pod> = create_on
            .iter()
            .map(|node| plan::pod_for_node(ds, hash, node))
            .collect();
        let (_, mut first_error) = super::pods::create_slow_start(
            pods_api,
            wanted,
            &reference_to(ds),
            &self.recorder,
            &self.expectations,
            key,
        )
        .await;
        for victim in victims {
            let name = victim.metadata.name.clone().unwrap_or_default();
            let options = json!({"preconditions": {"uid": victim.metadata.uid}});
            match pods_api.delete(&name, options).await {
                Ok(()) => self.recorder.record(
                    reference_to(ds),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                ),
                Err(e) => {
                    self.expectations
                        .deletion_observed(key, victim.metadata.uid.as_deref().unwrap_or_default());
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
