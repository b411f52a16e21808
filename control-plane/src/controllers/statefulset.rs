//! The StatefulSet controller (kube-controller-manager's `statefulset`): pods with stable
//! identities `<set>-<ordinal>` (hostname, `serviceName` subdomain, pod-name and pod-index
//! labels), their PersistentVolumeClaims from `volumeClaimTemplates` created before them,
//! OrderedReady (one at a time, each waiting for its predecessors to be Running and Ready,
//! scale-down from the highest ordinal) or Parallel management, and updates by
//! ControllerRevision — RollingUpdate from the highest ordinal down to the partition, or
//! OnDelete — with the revision in each pod's `controller-revision-hash` label; reports
//! status with currentRevision and updateRevision.
//!
//! Claims follow `persistentVolumeClaimRetentionPolicy` through owner references the garbage
//! collector acts on: the set controls them with `whenDeleted: Delete`, a condemned pod (scaled
//! away) with `whenScaled: Delete`; a pod whose claim still belongs to an earlier pod of its
//! name waits for that claim to go.
//!
//! Owns the set's pods, its claims (creation and owner references only: no provisioner is
//! needed), revisions and status. Decisions come from [`plan`] and [`retention`]; this file
//! reads the caches and applies them.
pub mod plan;
pub mod retention;

use std::{collections::HashSet, sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{ControllerRevision, StatefulSet},
    core::v1::{PersistentVolumeClaim, Pod},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use tracing::debug;

use self::plan::{Action, Revision};
use super::{
    claim::claim,
    history,
    pods::{self, controller_of, controller_reference},
    runner::{run_workers, Requeue},
};
use crate::client::{
    events::{reference_to, EventType, Recorder},
    informer::{key_of, split_key},
    leader::Leadership,
    Api, CachedPod, Client, ClientError, Informer, Informers, WorkQueue,
};

/// How soon a pod held back by a stale claim is looked at again.
const STALE_CLAIM_RETRY: Duration = Duration::from_secs(1);

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
) -> Result<(), ClientError> {
    let sets = informers.get::<StatefulSet>()?;
    let pods = informers.get::<CachedPod>()?;
    let revisions = informers.get::<ControllerRevision>()?;
    let claims = informers.get::<PersistentVolumeClaim>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        sets.on_change(Box::new(move |old, new| {
            if let Some(set) = new.or(old) {
                queue.add(key_of(set.as_ref()));
            }
        }));
    }
    {
        let queue = queue.clone();
        let sets = sets.clone();
        pods.on_change(Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                match owner_key(&pod.metadata) {
                    Some(key) => queue.add(key),
                    None => enqueue_matching(&queue, &sets, pod),
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
    {
        // A claim that goes may unblock a pod waiting for it (a stale claim).
        let queue = queue.clone();
        let sets = sets.clone();
        claims.on_change(Box::new(move |old, new| {
            if let (Some(claim), None) = (old, new) {
                let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
                for set in sets.list_namespace(namespace) {
                    queue.add(key_of(set.as_ref()));
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        sets,
        pods,
        revisions,
        claims,
        recorder,
    });
    run_workers("statefulset", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

/// The key of the StatefulSet controlling an object.
fn owner_key(meta: &ObjectMeta) -> Option<String> {
    super::claim::controller_key(meta, "apps/v1", "StatefulSet")
}

/// Orphan pods: every StatefulSet in the namespace whose selector matches may adopt.
fn enqueue_matching(queue: &WorkQueue, sets: &Informer<StatefulSet>, pod: &CachedPod) {
    super::claim::enqueue_selecting(queue, sets, &pod.metadata, |s| {
        s.spec.as_ref().map(|s| &s.selector)
    });
}

struct Controller {
    client: Client,
    sets: Informer<StatefulSet>,
    pods: Informer<CachedPod>,
    revisions: Informer<ControllerRevision>,
    claims: Informer<PersistentVolumeClaim>,
    recorder: Recorder,
}

/// The two revisions a set is between.
struct Revisions {
    current: ControllerRevision,
    update: ControllerRevision,
    collision_count: i32,
    all: Vec<ControllerRevision>,
}

fn name_of(revision: &ControllerRevision) -> String {
    revision.metadata.name.clone().unwrap_or_default()
}

impl Controller {
    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        let Some(cached) = self.sets.get(key) else {
            return Ok(None);
        };
        let set = (*cached).clone();
        let (namespace, _) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let pods_api = self.client.namespaced::<Pod>(namespace)?;
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let selector = set
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let deleting = set.metadata.deletion_timestamp.is_some();
        // Only pods named like members are adopted.
        let candidates: Vec<Arc<CachedPod>> = self
            .pods
            .list_namespace(namespace)
            .into_iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .and_then(|n| plan::ordinal_of(&set, n))
                    .is_some()
                    || controller_of(&p.metadata).is_some_and(|o| o.uid == uid)
            })
            .collect();
        let owned = claim(
            &pods_api,
            &controller_reference(&set),
            &selector,
            deleting,
            candidates,
            None,
        )
        .await?;
        let revisions = self.revisions(&set).await?;
        let now = pods::now_seconds();
        let mut failure = None;
        let mut blocked = false;
        if !deleting {
            // Claims get the owners the retention policy calls for before condemned pods go.
            if let Err(e) = self.fix_claim_owners(&set, &owned).await {
                failure = Some(e);
            }
            let actions = plan::plan(&set, &owned, &name_of(&revisions.update), now);
            for action in &actions {
                if failure.is_some() {
                    break;
                }
                match self.apply(&set, &pods_api, &revisions, action).await {
                    Ok(applied) => blocked |= !applied,
                    Err(e) => failure = Some(e),
                }
            }
        }
        let status = plan::status(
            &set,
            &owned,
            &name_of(&revisions.current),
            &name_of(&revisions.update),
            Some(revisions.collision_count),
            now,
        );
        if set.status.as_ref() != Some(&status) {
            let mut updated = set.clone();
            updated.status = Some(status.clone());
            let name = set.metadata.name.clone().unwrap_or_default();
            self.client
                .namespaced::<StatefulSet>(namespace)?
                .replace_status(&name, &updated)
                .await?;
        }
        self.prune_history(&set, &owned, &revisions).await?;
        if let Some(e) = failure {
            return Err(e);
        }
        let min_ready = set
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let waiting = min_ready > 0 && status.ready_replicas != status.available_replicas;
        if blocked {
            // A stale claim holds a pod back: look again soon (its deletion also wakes us).
            return Ok(Some(STALE_CLAIM_RETRY));
        }
        Ok(waiting.then(|| Duration::from_secs(min_ready as u64)))
    }

    /// The current and update revisions (upstream's `getStatefulSetRevisions`): the update
    /// revision records the set's template, created, or renumbered when an older revision
    /// already holds it (a rollback).
    async fn revisions(&self, set: &StatefulSet) -> Result<Revisions, ClientError> {
        let namespace = set.metadata.namespace.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let api = self.client.namespaced::<ControllerRevision>(&namespace)?;
        let mut all: Vec<ControllerRevision> = self
            .revisions
            .list_namespace(&namespace)
            .into_iter()
            .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
            .map(|r| (*r).clone())
            .collect();
        history::sort_revisions(&mut all);
        let template = set
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let data = history::template_patch(&template);
        let next = history::next_revision(&all);
        let mut collision_count = set
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let equal = all.iter().rev().find(|r| history::equal_data(r, &data));
        let update = match equal {
            Some(equal) if all.last().map(name_of) == Some(name_of(equal)) => equal.clone(),
            Some(equal) => history::renumber(&api, equal, next).await?,
            None => {
                let labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                let owner = controller_reference(set);
                let build = |collision: i32| {
                    history::new_revision(
                        &namespace,
                        &name,
                        owner.clone(),
                        labels.clone(),
                        data.clone(),
                        next,
                        Some(collision),
                    )
                };
                history::create_revision(&api, &uid, build, &mut collision_count).await?
            }
        };
        let wanted = set.status.as_ref().and_then(|s| s.current_revision.clone());
        let current = all
            .iter()
            .find(|r| r.metadata.name.is_some() && r.metadata.name == wanted)
            .cloned()
            .unwrap_or_else(|| update.clone());
        Ok(Revisions {
            current,
            update,
            collision_count,
            all,
        })
    }

    /// Applies one action; false when a pod creation waits for a stale claim to go.
    async fn apply(
        &self,
        set: &StatefulSet,
        pods_api: &Api<Pod>,
        revisions: &Revisions,
        action: &Action,
    ) -> Result<bool, ClientError> {
        let set_name = set.metadata.name.clone().unwrap_or_default();
        match action {
            Action::Create { ordinal, revision } => {
                let (template, revision_name) = match revision {
                    Revision::Current => (
                        history::template_of(&revisions.current).unwrap_or_else(|| {
                            set.spec
                                .as_ref()
                                .map(|s| s.template.clone())
                                .unwrap_or_default()
                        }),
                        name_of(&revisions.current),
                    ),
                    Revision::Update => (
                        set.spec
                            .as_ref()
                            .map(|s| s.template.clone())
                            .unwrap_or_default(),
                        name_of(&revisions.update),
                    ),
                };
                let pod = plan::new_pod(set, &template, &revision_name, *ordinal);
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                if let Some(stale) = self.stale_claim(set, *ordinal, &pod_name) {
                    debug!(pod = %pod_name, claim = %stale, "waiting for a stale claim to be deleted");
                    return Ok(false);
                }
                self.create_claims(set, *ordinal, &pod_name).await?;
                match pods_api.create(&pod).await {
                    Ok(_) => self.recorder.record(
                        reference_to(set),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                    ),
                    // The cache is behind: it exists already.
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => {
                        self.recorder.record(
                            reference_to(set),
                            EventType::Warning,
                            "FailedCreate",
                            format!(
                                "create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                            ),
                        );
                        return Err(e);
                    }
                }
            }
            Action::Delete { name, uid } => {
                match pods_api
                    .delete(name, json!({"preconditions": {"uid": uid}}))
                    .await
                {
                    Ok(()) => self.recorder.record(
                        reference_to(set),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("delete Pod {name} in StatefulSet {set_name} successful"),
                    ),
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
    }

    /// A claim of the pod with this ordinal still owned by an earlier pod of its name.
    fn stale_claim(&self, set: &StatefulSet, ordinal: i32, pod_name: &str) -> Option<String> {
        let namespace = set.metadata.namespace.as_deref().unwrap_or_default();
        plan::claims_for(set, ordinal)
            .into_iter()
            .find_map(|claim| {
                let name = claim.metadata.name.unwrap_or_default();
                let existing = self.claims.get(&format!("{namespace}/{name}"))?;
                retention::is_stale(set, pod_name, &existing).then_some(name)
            })
    }

    /// Gives the claims of the set's pods the owner references the retention policy calls for
    /// (upstream's `UpdatePodClaimForRetentionPolicy`).
    async fn fix_claim_owners(
        &self,
        set: &StatefulSet,
        pods: &[Arc<CachedPod>],
    ) -> Result<(), ClientError> {
        let namespace = set.metadata.namespace.clone().unwrap_or_default();
        let api = self
            .client
            .namespaced::<PersistentVolumeClaim>(&namespace)?;
        let set_name = set.metadata.name.clone().unwrap_or_default();
        for pod in pods {
            let Some(ordinal) = pod
                .metadata
                .name
                .as_deref()
                .and_then(|n| plan::ordinal_of(set, n))
            else {
                continue;
            };
            for claim in plan::claims_for(set, ordinal) {
                let name = claim.metadata.name.unwrap_or_default();
                let Some(existing) = self.claims.get(&format!("{namespace}/{name}")) else {
                    continue;
                };
                if existing.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Some(owners) = retention::wanted_owners(set, pod, &existing) else {
                    continue;
                };
                let mut updated = (*existing).clone();
                updated.metadata.owner_references = (!owners.is_empty()).then_some(owners);
                match api.replace(&name, &updated).await {
                    Ok(_) => {
                        debug!(statefulset = %set_name, claim = %name, "claim owners follow the retention policy")
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        self.recorder.record(
                            reference_to(set),
                            EventType::Warning,
                            "FailedUpdate",
                            format!("update Claim {name} for Pod {} in StatefulSet {set_name} failed error: {e}", pod.metadata.name.as_deref().unwrap_or_default()),
                        );
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates the claims of a pod that do not exist yet; a claim being deleted holds the pod
    /// back.
    async fn create_claims(
        &self,
        set: &StatefulSet,
        ordinal: i32,
        pod_name: &str,
    ) -> Result<(), ClientError> {
        let namespace = set.metadata.namespace.clone().unwrap_or_default();
        let api = self
            .client
            .namespaced::<PersistentVolumeClaim>(&namespace)?;
        let set_name = set.metadata.name.clone().unwrap_or_default();
        for claim in plan::claims_for(set, ordinal) {
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            if let Some(existing) = self.claims.get(&format!("{namespace}/{claim_name}")) {
                if existing.metadata.deletion_timestamp.is_some() {
                    return Err(ClientError::Api(
                        crate::apiserver::status::ApiError::conflict(
                            "",
                            "persistentvolumeclaims",
                            &claim_name,
                            "the claim is being deleted; the pod waits for it to be gone",
                        ),
                    ));
                }
                continue;
            }
            match api.create(&claim).await {
                Ok(_) => self.recorder.record(
                    reference_to(set),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"),
                ),
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes revisions beyond `revisionHistoryLimit` that neither the set nor a pod uses.
    async fn prune_history(
        &self,
        set: &StatefulSet,
        pods: &[Arc<CachedPod>],
        revisions: &Revisions,
    ) -> Result<(), ClientError> {
        let mut live: HashSet<String> =
            HashSet::from([name_of(&revisions.current), name_of(&revisions.update)]);
        live.extend(pods.iter().map(|p| plan::revision_of(p).to_owned()));
        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let namespace = set.metadata.namespace.clone().unwrap_or_default();
        let api = self.client.namespaced::<ControllerRevision>(&namespace)?;
        for doomed in history::revisions_to_prune(&revisions.all, &live, limit) {
            debug!(statefulset = ?set.metadata.name, revision = %doomed, "pruning history");
            api.delete(&doomed, json!({})).await?;
        }
        Ok(())
    }
}
