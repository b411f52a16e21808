//! The StatefulSet controller's decisions, as plain functions (upstream's
//! `stateful_set_utils.go` and the decision half of `stateful_set_control.go`): pod identity
//! (`<set>-<ordinal>`, hostname and subdomain, the pod-name and pod-index labels), claims from
//! `volumeClaimTemplates` (`<template>-<set>-<ordinal>`), which pod to create, delete or
//! replace next — in ordinal order for OrderedReady, all at once for Parallel, updates from
//! the highest ordinal down to the partition — and the status.
//!
//! Owns these decisions; it must not do I/O.
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetStatus},
        core::v1::{
            PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::client::CachedPod;
use crate::controllers::{history::POD_REVISION_LABEL, pods};

/// The pod label with the pod's own name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The first ordinal (`spec.ordinals.start`, default 0).
pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0)
}

/// `spec.replicas`.
pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

fn set_name(set: &StatefulSet) -> &str {
    set.metadata.name.as_deref().unwrap_or_default()
}

/// The ordinal of a pod of this set (`<set>-<n>`), if it is one.
pub fn ordinal_of(set: &StatefulSet, pod_name: &str) -> Option<i32> {
    let (parent, number) = pod_name.rsplit_once('-')?;
    if parent != set_name(set) || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// The name of the pod with an ordinal.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set_name(set))
}

/// Whether pods are started and stopped one at a time, in order.
pub fn is_ordered(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        .is_none_or(|p| p != "Parallel")
}

/// Whether updates replace pods (RollingUpdate, the default) rather than wait for the user
/// to delete them (OnDelete).
pub fn is_rolling(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t != "OnDelete")
}

/// Ordinals below the partition keep the current revision during a rolling update.
pub fn partition(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0)
}

fn min_ready(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// The claims a pod of this ordinal uses, as they are to be created.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|template| {
            let template_name = template.metadata.name.clone().unwrap_or_default();
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            // Deleted with the set: the set controls the claim from the start (the retention
            // policy moves the reference to a condemned pod when scaling deletes claims too).
            let owner_references = delete_with_set.then(|| vec![pods::controller_reference(set)]);
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(format!("{template_name}-{}-{ordinal}", set_name(set))),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references,
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The pod with an ordinal, from the template of `revision` (its name is written into the
/// pod's `controller-revision-hash` label).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let name = pod_name(set, ordinal);
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.to_owned(), name.clone());
    labels.insert(POD_INDEX_LABEL.to_owned(), ordinal.to_string());
    labels.insert(POD_REVISION_LABEL.to_owned(), revision.to_owned());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(service) = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(service);
    }
    let claims = claims_for(set, ordinal);
    let claim_volumes: BTreeMap<String, String> = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
        .zip(&claims)
        .map(|(template, claim)| {
            (
                template.metadata.name.clone().unwrap_or_default(),
                claim.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut volumes: Vec<Volume> = claim_volumes
        .iter()
        .map(|(volume, claim)| Volume {
            name: volume.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Volume::default()
        })
        .collect();
    volumes.extend(
        spec.volumes
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !claim_volumes.contains_key(&v.name)),
    );
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![pods::controller_reference(set)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The revision a pod was made from.
pub fn revision_of(pod: &CachedPod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_REVISION_LABEL))
        .map_or("", String::as_str)
}

fn is_terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_running_and_ready(pod: &CachedPod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && pods::is_ready(pod)
}

fn is_running_and_available(pod: &CachedPod, min_ready: i32, now: i64) -> bool {
    is_running_and_ready(pod) && pods::is_available(pod, min_ready, now)
}

fn is_healthy(pod: &CachedPod) -> bool {
    is_running_and_ready(pod) && !is_terminating(pod)
}

/// Which revision a pod is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    /// The revision the set ran before the update (kept below the partition).
    Current,
    /// The revision of the set's template now.
    Update,
}

/// One write of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the pod with this ordinal (its claims first).
    Create {
        /// The pod's ordinal.
        ordinal: i32,
        /// Which template it is made from.
        revision: Revision,
    },
    /// Delete a pod (failed, surplus, or outdated).
    Delete {
        /// The pod's name.
        name: String,
        /// Its UID, as the deletion's precondition.
        uid: String,
    },
}

/// The revision a new pod with this ordinal gets: below the partition of a rolling update the
/// current one, otherwise the update one.
pub fn revision_for(set: &StatefulSet, ordinal: i32) -> Revision {
    if is_rolling(set) && ordinal < start_ordinal(set) + partition(set) {
        Revision::Current
    } else {
        Revision::Update
    }
}

fn delete(pod: &CachedPod) -> Action {
    Action::Delete {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

/// What to do now, given the set's pods (upstream's `updateStatefulSet`): replace failed
/// pods, create missing ones, delete those beyond `replicas` from the highest ordinal down,
/// then replace outdated pods from the highest ordinal down to the partition. With
/// OrderedReady, each step waits for every lower ordinal to be Running and Ready and only one
/// write happens per sync; with Parallel, creations and deletions happen together.
pub fn plan(
    set: &StatefulSet,
    pods: &[Arc<CachedPod>],
    update_revision: &str,
    now: i64,
) -> Vec<Action> {
    let start = start_ordinal(set);
    let count = replicas(set);
    let mut replicas: Vec<Option<&Arc<CachedPod>>> = vec![None; count as usize];
    let mut condemned: Vec<(i32, &Arc<CachedPod>)> = Vec::new();
    for pod in pods {
        let Some(ordinal) = pod
            .metadata
            .name
            .as_deref()
            .and_then(|n| ordinal_of(set, n))
        else {
            continue;
        };
        if ordinal >= start && ordinal < start + count {
            replicas[(ordinal - start) as usize] = Some(pod);
        } else {
            condemned.push((ordinal, pod));
        }
    }
    condemned.sort_by_key(|c| std::cmp::Reverse(c.0));
    let ordered = is_ordered(set);
    let min_ready = min_ready(set);
    // The first unhealthy pod in ordinal order (missing replicas count as unhealthy): a
    // condemned pod that is it may go even though it is not Ready.
    let replica_unhealthy = replicas.iter().any(|p| p.is_none_or(|p| !is_healthy(p)));
    let first_unhealthy: Option<&str> = if replica_unhealthy {
        None
    } else {
        condemned
            .iter()
            .rev()
            .find(|(_, p)| !is_healthy(p))
            .and_then(|(_, p)| p.metadata.name.as_deref())
    };
    let mut actions = Vec::new();
    for (index, pod) in replicas.iter().enumerate() {
        let ordinal = start + index as i32;
        match pod {
            Some(pod) if pods::is_terminal(pod) && !is_terminating(pod) => {
                // Failed (or finished): replaced once the old pod is gone.
                actions.push(delete(pod));
                if ordered {
                    return actions;
                }
            }
            Some(pod) => {
                if ordered
                    && (is_terminating(pod)
                        || !is_running_and_ready(pod)
                        || !is_running_and_available(pod, min_ready, now))
                {
                    return actions;
                }
            }
            None => {
                actions.push(Action::Create {
                    ordinal,
                    revision: revision_for(set, ordinal),
                });
                if ordered {
                    return actions;
                }
            }
        }
    }
    for (_, pod) in &condemned {
        if is_terminating(pod) {
            if ordered {
                return actions;
            }
            continue;
        }
        let first = first_unhealthy.is_some() && first_unhealthy == pod.metadata.name.as_deref();
        if ordered && !first && !is_running_and_available(pod, min_ready, now) {
            return actions;
        }
        actions.push(delete(pod));
        if ordered {
            return actions;
        }
    }
    if !is_rolling(set) {
        return actions;
    }
    let update_min = partition(set).min(count);
    for index in (update_min..count).rev() {
        let Some(pod) = replicas[index as usize] else {
            return actions;
        };
        if revision_of(pod) != update_revision && !is_terminating(pod) {
            actions.push(delete(pod));
            return actions;
        }
        if !is_healthy(pod) {
            return actions;
        }
    }
    actions
}

/// The status the pods add up to (upstream's `computeReplicaStatus` and
/// `completeRollingUpdate`).
pub fn status(
    set: &StatefulSet,
    pods: &[Arc<CachedPod>],
    current_revision: &str,
    update_revision: &str,
    collision_count: Option<i32>,
    now: i64,
) -> StatefulSetStatus {
    let members: Vec<&Arc<CachedPod>> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .and_then(|n| ordinal_of(set, n))
                .is_some()
        })
        .collect();
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        current_revision: Some(current_revision.to_owned()),
        update_revision: Some(update_revision.to_owned()),
        collision_count,
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        ..StatefulSetStatus::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for pod in members {
        status.replicas += 1;
        if is_running_and_ready(pod) {
            ready += 1;
            if is_running_and_available(pod, min_ready(set), now) {
                available += 1;
            }
        }
        if !is_terminating(pod) {
            if revision_of(pod) == current_revision {
                current += 1;
            }
            if revision_of(pod) == update_revision {
                updated += 1;
            }
        }
    }
    if is_rolling(set) && updated == status.replicas && ready == status.replicas {
        current = updated;
        status.current_revision = Some(update_revision.to_owned());
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    status
}

#[cfg(test)]
mod tests;
