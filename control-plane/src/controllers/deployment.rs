//! The Deployment controller (kube-controller-manager's `deployment`): claims ReplicaSets by
//! selector, keeps one ReplicaSet per pod template (`<deployment>-<pod-template-hash>`), rolls
//! from old to new ones (RollingUpdate within maxSurge/maxUnavailable, or Recreate), scales
//! them in proportion when the Deployment is scaled mid-rollout, numbers revisions (so
//! `kubectl rollout history|undo` work), prunes history beyond `revisionHistoryLimit`, holds
//! still while paused and reports status with the Progressing and Available conditions.
//!
//! Owns ReplicaSets' specs and the Deployment's status and revision annotation. The numbers
//! come from [`rollout`]; this file only reads caches and writes them. It must not touch pods
//! (the ReplicaSet controller does) except to read them for Recreate.
pub mod rollout;

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use tracing::{debug, info};

use self::rollout::{
    calculate_status, find_new, history_to_delete, is_paused, is_rolling, is_scaling_event,
    max_surge, new_rs_annotations, paused_condition, progress_check_after, replicas, revision_of,
    rolling_new_size, rolling_old_steps, rollout_status, rs_replicas, scale_plan, set_condition,
    set_replicas_annotations, template, ScaleStep, HASH_LABEL, REVISION,
};
use super::{
    claim::claim,
    history::template_hash,
    pods::{self, controller_of, controller_reference},
    runner::{run_workers, Requeue},
};
use crate::{
    apiserver::rest::PatchKind,
    client::{
        events::{reference_to, EventType, Recorder},
        informer::{key_of, split_key},
        labels::selector_matches,
        leader::Leadership,
        Api, CachedPod, Client, ClientError, Informer, Informers, WorkQueue,
    },
};

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
) -> Result<(), ClientError> {
    let deployments = informers.get::<Deployment>()?;
    let sets = informers.get::<ReplicaSet>()?;
    let pods = informers.get::<CachedPod>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        deployments.on_change(Box::new(move |old, new| {
            if let Some(d) = new.or(old) {
                queue.add(key_of(d.as_ref()));
            }
        }));
    }
    {
        let queue = queue.clone();
        let deployments = deployments.clone();
        sets.on_change(Box::new(move |old, new| {
            for set in [old, new].into_iter().flatten() {
                match deployment_key(&set.metadata) {
                    Some(key) => queue.add(key),
                    None => enqueue_matching(&queue, &deployments, set),
                }
            }
        }));
    }
    {
        // Recreate waits for old pods to be gone: their removal is news.
        let queue = queue.clone();
        let sets = sets.clone();
        pods.on_change(Box::new(move |old, new| {
            let (Some(pod), None) = (old, new) else {
                return;
            };
            let Some(owner) = controller_of(&pod.metadata).filter(|o| o.kind == "ReplicaSet")
            else {
                return;
            };
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            if let Some(set) = sets.get(&format!("{namespace}/{}", owner.name)) {
                if let Some(key) = deployment_key(&set.metadata) {
                    queue.add(key);
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        deployments,
        sets,
        pods,
        recorder,
    });
    run_workers("deployment", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

/// The key of the Deployment controlling an object.
fn deployment_key(meta: &ObjectMeta) -> Option<String> {
    super::claim::controller_key(meta, "apps/v1", "Deployment")
}

/// An orphan ReplicaSet: every Deployment whose selector matches may adopt it.
fn enqueue_matching(queue: &WorkQueue, deployments: &Informer<Deployment>, set: &ReplicaSet) {
    super::claim::enqueue_selecting(queue, deployments, &set.metadata, |d| {
        d.spec.as_ref().map(|s| &s.selector)
    });
}

struct Controller {
    client: Client,
    deployments: Informer<Deployment>,
    sets: Informer<ReplicaSet>,
    pods: Informer<CachedPod>,
    recorder: Recorder,
}

/// One sync's view: the Deployment as last written and its ReplicaSets.
struct Sync {
    d: Deployment,
    sets: Vec<ReplicaSet>,
    deployments: Api<Deployment>,
    set_api: Api<ReplicaSet>,
}

impl Sync {
    fn name(&self) -> String {
        self.d.metadata.name.clone().unwrap_or_default()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.sets
            .iter()
            .position(|rs| rs.metadata.name.as_deref() == Some(name))
    }

    /// The new ReplicaSet (if any) and all the others.
    fn split(&self, new: Option<usize>) -> (Option<&ReplicaSet>, Vec<ReplicaSet>) {
        let olds = self
            .sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .map(|(_, rs)| rs.clone())
            .collect();
        (new.map(|i| &self.sets[i]), olds)
    }
}

impl Controller {
    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        let Some(cached) = self.deployments.get(key) else {
            return Ok(None);
        };
        let (namespace, _) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let mut sync = Sync {
            d: (*cached).clone(),
            sets: Vec::new(),
            deployments: self.client.namespaced::<Deployment>(namespace)?,
            set_api: self.client.namespaced::<ReplicaSet>(namespace)?,
        };
        let selector = sync
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|m| m.is_empty())
        {
            self.recorder.record(
                reference_to(&sync.d),
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required."
                    .to_owned(),
            );
            return Ok(None);
        }
        let deleting = sync.d.metadata.deletion_timestamp.is_some();
        let candidates = self.sets.list_namespace(namespace);
        let owned = claim(
            &sync.set_api,
            &controller_reference(&sync.d),
            &selector,
            deleting,
            candidates,
            None,
        )
        .await?;
        sync.sets = owned.iter().map(|rs| (**rs).clone()).collect();

        if deleting {
            let new = self.sync_revision(&mut sync, false).await?;
            return self.write_status(&mut sync, new, false).await;
        }
        self.check_paused_conditions(&mut sync).await?;
        if is_paused(&sync.d) || is_scaling_event(&sync.d, &sync.sets) {
            return self.scale_only(&mut sync).await;
        }
        if is_rolling(&sync.d) {
            self.rolling(&mut sync).await
        } else {
            self.recreate(&mut sync).await
        }
    }

    /// Finds (or, with `create`, creates) the new ReplicaSet and brings revision numbers up to
    /// date (upstream's `getAllReplicaSetsAndSyncRevision`). Returns its index in
    /// `sync.sets`.
    async fn sync_revision(
        &self,
        sync: &mut Sync,
        create: bool,
    ) -> Result<Option<usize>, ClientError> {
        let new = find_new(&sync.d, &sync.sets);
        let max_old = sync
            .sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .map(|(_, rs)| revision_of(rs))
            .max()
            .unwrap_or(0);
        let next = max_old + 1;
        if let Some(i) = new {
            let current = &sync.sets[i];
            let (annotations, changed) =
                new_rs_annotations(&sync.d, current.metadata.annotations.as_ref(), next, true);
            let min_ready = sync.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let current_min_ready = current.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if changed || min_ready.unwrap_or(0) != current_min_ready.unwrap_or(0) {
                let mut updated = current.clone();
                updated.metadata.annotations = Some(annotations);
                updated
                    .spec
                    .get_or_insert_with(Default::default)
                    .min_ready_seconds = min_ready;
                let name = updated.metadata.name.clone().unwrap_or_default();
                sync.sets[i] = sync.set_api.replace(&name, &updated).await?;
                return Ok(Some(i));
            }
            let revision = current
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .cloned()
                .unwrap_or_default();
            self.set_deployment_revision(sync, &revision).await?;
            let found_message = format!(
                "Found new replica set {:?}",
                sync.sets[i].metadata.name.as_deref().unwrap_or_default()
            );
            if rollout::has_progress_deadline(&sync.d)
                && rollout::condition(sync.d.status.as_ref(), rollout::PROGRESSING).is_none()
            {
                let mut status = sync.d.status.clone().unwrap_or_default();
                set_condition(
                    &mut status,
                    rollout::new_condition(
                        rollout::PROGRESSING,
                        "True",
                        rollout::FOUND_NEW_RS,
                        found_message,
                        &pods::now_time(),
                    ),
                );
                self.replace_status(sync, status).await?;
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        self.create_new_replica_set(sync, next).await.map(Some)
    }

    async fn create_new_replica_set(
        &self,
        sync: &mut Sync,
        revision: i64,
    ) -> Result<usize, ClientError> {
        let d = &sync.d;
        let namespace = d.metadata.namespace.clone().unwrap_or_default();
        let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
        let mut pod_template = template(d);
        let hash = template_hash(&pod_template, collision_count);
        let mut labels = pod_template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.to_owned(), hash.clone());
        pod_template
            .metadata
            .get_or_insert_with(Default::default)
            .labels = Some(labels.clone());
        let mut selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.to_owned(), hash.clone());
        let total: i32 = sync.sets.iter().map(rs_replicas).sum();
        let size = rollout::new_rs_replicas(d, total, 0);
        let (annotations, _) = new_rs_annotations(d, None, revision, false);
        let name = format!("{}-{hash}", sync.name());
        let set = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_reference(d)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(pod_template),
            }),
            status: None,
        };
        let now = pods::now_time();
        let (created, fresh) = match sync.set_api.create(&set).await {
            Ok(created) => (created, true),
            Err(e) if e.is_already_exists() => {
                let existing = sync.set_api.get(&name).await?;
                let ours = existing.as_ref().is_some_and(|rs| {
                    controller_of(&rs.metadata)
                        .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref())
                        && rs
                            .spec
                            .as_ref()
                            .and_then(|s| s.template.as_ref())
                            .is_some_and(|t| rollout::equal_ignore_hash(t, &template(d)))
                });
                match existing {
                    Some(existing) if ours => (existing, false),
                    _ => {
                        // A hash collision: another template got this name. Try the next hash.
                        let mut status = d.status.clone().unwrap_or_default();
                        status.collision_count =
                            Some(collision_count.unwrap_or(0).saturating_add(1));
                        info!(deployment = %sync.name(), replicaset = %name, "pod-template-hash collision");
                        self.replace_status(sync, status).await?;
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                let message = format!("Failed to create new replica set {name:?}: {e}");
                if rollout::has_progress_deadline(d) {
                    let mut status = d.status.clone().unwrap_or_default();
                    set_condition(
                        &mut status,
                        rollout::new_condition(
                            rollout::PROGRESSING,
                            "False",
                            rollout::FAILED_RS_CREATE,
                            message.clone(),
                            &now,
                        ),
                    );
                    self.replace_status(sync, status).await?;
                }
                self.recorder.record(
                    reference_to(&sync.d),
                    EventType::Warning,
                    rollout::FAILED_RS_CREATE,
                    message,
                );
                return Err(e);
            }
        };
        if fresh && size > 0 {
            self.recorder.record(
                reference_to(&sync.d),
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {size}"),
            );
        }
        let index = match sync.index_of(&name) {
            Some(i) => {
                sync.sets[i] = created;
                i
            }
            None => {
                sync.sets.push(created);
                sync.sets.len() - 1
            }
        };
        self.set_deployment_revision(sync, &revision.to_string())
            .await?;
        if fresh && rollout::has_progress_deadline(&sync.d) {
            let mut status = sync.d.status.clone().unwrap_or_default();
            set_condition(
                &mut status,
                rollout::new_condition(
                    rollout::PROGRESSING,
                    "True",
                    rollout::NEW_RS_CREATED,
                    format!("Created new replica set {name:?}"),
                    &now,
                ),
            );
            self.replace_status(sync, status).await?;
        }
        Ok(index)
    }

    /// Records the revision on the Deployment itself (`deployment.kubernetes.io/revision`).
    async fn set_deployment_revision(
        &self,
        sync: &mut Sync,
        revision: &str,
    ) -> Result<(), ClientError> {
        let current = sync
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .map(String::as_str);
        if revision.is_empty() || current == Some(revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "annotations": {REVISION: revision},
            "resourceVersion": sync.d.metadata.resource_version,
        }});
        sync.d = sync
            .deployments
            .patch(&sync.name(), PatchKind::Merge, &patch)
            .await?;
        Ok(())
    }

    async fn replace_status(
        &self,
        sync: &mut Sync,
        status: k8s_openapi::api::apps::v1::DeploymentStatus,
    ) -> Result<(), ClientError> {
        if sync.d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = sync.d.clone();
        updated.status = Some(status);
        sync.d = sync
            .deployments
            .replace_status(&sync.name(), &updated)
            .await?;
        Ok(())
    }

    async fn check_paused_conditions(&self, sync: &mut Sync) -> Result<(), ClientError> {
        if let Some(condition) = paused_condition(&sync.d, &pods::now_time()) {
            let mut status = sync.d.status.clone().unwrap_or_default();
            set_condition(&mut status, condition);
            self.replace_status(sync, status).await?;
        }
        Ok(())
    }

    /// Resizes a ReplicaSet and refreshes its replicas annotations; `operation` forces the
    /// write for annotation changes alone (proportional scaling).
    async fn scale(&self, sync: &mut Sync, step: &ScaleStep) -> Result<bool, ClientError> {
        let Some(i) = sync.index_of(&step.name) else {
            return Ok(false);
        };
        let current = rs_replicas(&sync.sets[i]);
        let operation = match step.operation {
            Some(op) => op,
            None if current == step.to => return Ok(false),
            None if current < step.to => "up",
            None => "down",
        };
        let mut updated = sync.sets[i].clone();
        let size_changed = current != step.to;
        let annotations_changed = set_replicas_annotations(
            &mut updated,
            replicas(&sync.d),
            replicas(&sync.d) + max_surge(&sync.d),
        );
        if !size_changed && !annotations_changed {
            return Ok(false);
        }
        updated.spec.get_or_insert_with(Default::default).replicas = Some(step.to);
        sync.sets[i] = sync.set_api.replace(&step.name, &updated).await?;
        if size_changed {
            self.recorder.record(
                reference_to(&sync.d),
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {operation} replica set {} from {current} to {}",
                    step.name, step.to
                ),
            );
        }
        Ok(size_changed)
    }

    /// Scaling alone (a paused Deployment, or a change of replicas): no rollout progress.
    async fn scale_only(&self, sync: &mut Sync) -> Result<Requeue, ClientError> {
        let new = self.sync_revision(sync, false).await?;
        let (new_rs, olds) = sync.split(new);
        let steps = scale_plan(&sync.d, new_rs, &olds);
        for step in &steps {
            self.scale(sync, step).await?;
        }
        if is_paused(&sync.d) {
            self.cleanup(sync, new).await?;
        }
        self.write_status(sync, new, false).await
    }

    async fn rolling(&self, sync: &mut Sync) -> Result<Requeue, ClientError> {
        let new = self.sync_revision(sync, true).await?;
        let Some(new) = new else {
            return Ok(None);
        };
        let (new_rs, _) = sync.split(Some(new));
        let all: Vec<&ReplicaSet> = sync.sets.iter().collect();
        if let Some(size) = new_rs.and_then(|rs| rolling_new_size(&sync.d, rs, &all)) {
            let step = ScaleStep {
                name: sync.sets[new].metadata.name.clone().unwrap_or_default(),
                to: size,
                operation: None,
            };
            if self.scale(sync, &step).await? {
                return self.write_status(sync, Some(new), true).await;
            }
        }
        let (new_rs, olds) = sync.split(Some(new));
        let steps = new_rs
            .map(|rs| rolling_old_steps(&sync.d, rs, &olds))
            .unwrap_or_default();
        let mut scaled_down = false;
        for step in &steps {
            scaled_down |= self.scale(sync, step).await?;
        }
        if scaled_down {
            return self.write_status(sync, Some(new), true).await;
        }
        let (new_rs, _) = sync.split(Some(new));
        let all: Vec<&ReplicaSet> = sync.sets.iter().collect();
        let status = rollout_status(&sync.d, &all, new_rs, &pods::now_time());
        if rollout::deployment_complete(&sync.d, &status) {
            self.cleanup(sync, Some(new)).await?;
        }
        self.write_status(sync, Some(new), true).await
    }

    async fn recreate(&self, sync: &mut Sync) -> Result<Requeue, ClientError> {
        let mut new = self.sync_revision(sync, false).await?;
        let (_, olds) = sync.split(new);
        let mut scaled_down = false;
        for old in olds.iter().filter(|rs| rs_replicas(rs) > 0) {
            let step = ScaleStep {
                name: old.metadata.name.clone().unwrap_or_default(),
                to: 0,
                operation: None,
            };
            scaled_down |= self.scale(sync, &step).await?;
        }
        if scaled_down || self.old_pods_running(sync, new) {
            return self.write_status(sync, new, true).await;
        }
        if new.is_none() {
            new = self.sync_revision(sync, true).await?;
        }
        if let Some(i) = new {
            let step = ScaleStep {
                name: sync.sets[i].metadata.name.clone().unwrap_or_default(),
                to: replicas(&sync.d),
                operation: None,
            };
            self.scale(sync, &step).await?;
        }
        let (new_rs, _) = sync.split(new);
        let all: Vec<&ReplicaSet> = sync.sets.iter().collect();
        let status = rollout_status(&sync.d, &all, new_rs, &pods::now_time());
        if rollout::deployment_complete(&sync.d, &status) {
            self.cleanup(sync, new).await?;
        }
        self.write_status(sync, new, true).await
    }

    /// Whether any pod of an old ReplicaSet is still there and not finished (terminating pods
    /// count: Recreate means no overlap).
    fn old_pods_running(&self, sync: &Sync, new: Option<usize>) -> bool {
        let (new_rs, olds) = sync.split(new);
        let counted: i32 = olds
            .iter()
            .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
            .sum();
        if counted > 0 {
            return true;
        }
        let new_uid = new_rs.and_then(|rs| rs.metadata.uid.clone());
        let old_uids: HashSet<String> = olds
            .iter()
            .filter_map(|rs| rs.metadata.uid.clone())
            .collect();
        let namespace = sync.d.metadata.namespace.as_deref().unwrap_or_default();
        let selector = sync
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        self.pods.list_namespace(namespace).iter().any(|pod| {
            let Some(owner) = controller_of(&pod.metadata) else {
                return false;
            };
            selector_matches(&selector, pod.metadata.labels.as_ref())
                && Some(&owner.uid) != new_uid.as_ref()
                && old_uids.contains(&owner.uid)
                && !pods::is_terminal(pod)
        })
    }

    /// Deletes old ReplicaSets beyond the history limit.
    async fn cleanup(&self, sync: &mut Sync, new: Option<usize>) -> Result<(), ClientError> {
        let (_, olds) = sync.split(new);
        for name in history_to_delete(&sync.d, &olds) {
            let uid = sync
                .index_of(&name)
                .and_then(|i| sync.sets[i].metadata.uid.clone());
            debug!(deployment = %sync.name(), replicaset = %name, "deleting old history");
            sync.set_api
                .delete(&name, json!({"preconditions": {"uid": uid}}))
                .await?;
        }
        Ok(())
    }

    /// Writes the status the ReplicaSets add up to; with `rollout`, the Progressing condition
    /// moves on too. Returns when to look again for a progress deadline.
    async fn write_status(
        &self,
        sync: &mut Sync,
        new: Option<usize>,
        rollout: bool,
    ) -> Result<Requeue, ClientError> {
        let now = pods::now_time();
        let (new_rs, _) = sync.split(new);
        let all: Vec<&ReplicaSet> = sync.sets.iter().collect();
        let status = if rollout {
            rollout_status(&sync.d, &all, new_rs, &now)
        } else {
            calculate_status(&sync.d, &all, new_rs, &now)
        };
        let requeue = progress_check_after(&sync.d, &status, now.0.as_second());
        self.replace_status(sync, status).await?;
        Ok(requeue)
    }
}
