//! What workload controllers ask of pods (upstream's `controller_utils`): active, ready,
//! available; controller references and adoption; pods stamped from a template; the order
//! in which surplus pods are deleted.
//!
//! Owns these pod facts, the pod-from-template recipe and the slow-start creation of pods
//! ([`create_slow_start`]), the one place workload controllers create pods.
use std::{cmp::Ordering, collections::BTreeMap};

use k8s_openapi::{
    api::core::v1::{Pod, PodTemplateSpec},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time},
    jiff::Timestamp,
    Metadata, Resource,
};

use crate::client::CachedPod;

/// Seconds since the epoch, now.
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A `Time` for now.
pub fn now_time() -> Time {
    Time(Timestamp::new(now_seconds(), 0).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn seconds(time: &Time) -> i64 {
    time.0.as_second()
}

/// Whether the pod finished (Succeeded or Failed).
pub fn is_terminal(pod: &CachedPod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the pod counts as a replica: not finished, not being deleted.
pub fn is_active(pod: &CachedPod) -> bool {
    !is_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// The time the pod became Ready, if it is Ready.
pub fn ready_since(pod: &CachedPod) -> Option<i64> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map_or(0, seconds))
}

/// Whether the pod is Ready.
pub fn is_ready(pod: &CachedPod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been Ready for `min_ready_seconds`.
pub fn is_available(pod: &CachedPod, min_ready_seconds: i32, now: i64) -> bool {
    match ready_since(pod) {
        Some(since) => min_ready_seconds <= 0 || since + i64::from(min_ready_seconds) <= now,
        None => false,
    }
}

/// The controlling owner reference, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// A controlling, blocking owner reference to `owner`.
pub fn controller_reference<K>(owner: &K) -> OwnerReference
where
    K: Resource + Metadata<Ty = ObjectMeta>,
{
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_owned(),
        kind: K::KIND.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from a template, owned by `owner`, named `<prefix>-<random>` by the server.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: &str,
    owner: OwnerReference,
) -> Pod {
    let template_meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn phase_rank(pod: &CachedPod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    }
}

fn restarts(pod: &CachedPod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// Orders pods so that the ones to delete first come first (upstream's `ActivePods`
/// ordering): unscheduled, then pending, then not ready, then ready for less time, then
/// more restarts, then newer.
pub fn deletion_order(a: &CachedPod, b: &CachedPod) -> Ordering {
    let assigned = |p: &CachedPod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| {
            // Ready for less time first.
            let since = |p: &CachedPod| ready_since(p).unwrap_or(i64::MAX);
            since(b).cmp(&since(a))
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map_or(0, seconds);
            created(b).cmp(&created(a))
        })
}

/// Creates `pods` as upstream's controllers do (slow start: batches of 1, 2, 4, ... and no
/// further batch after one with a failure), recording `SuccessfulCreate` / `FailedCreate`
/// on `owner` and telling `expectations` about every creation that failed or was never
/// tried, since the informer will never see those. Returns how many were created and the
/// first error.
pub async fn create_slow_start(
    api: &crate::client::Api<Pod>,
    pods: Vec<Pod>,
    owner: &k8s_openapi::api::core::v1::ObjectReference,
    recorder: &crate::client::events::Recorder,
    expectations: &super::expectations::Expectations,
    key: &str,
) -> (usize, Option<crate::client::ClientError>) {
    use crate::client::events::EventType;
    let mut created = 0;
    let mut remaining = pods.as_slice();
    let mut batch = 1usize;
    while !remaining.is_empty() {
        let (now, later) = remaining.split_at(batch.min(remaining.len()));
        let results = futures::future::join_all(now.iter().map(|pod| api.create(pod))).await;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(pod) => {
                    created += 1;
                    recorder.record(
                        owner.clone(),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.metadata.name.unwrap_or_default()),
                    );
                }
                Err(e) => {
                    expectations.creation_observed(key);
                    recorder.record(
                        owner.clone(),
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    );
                    first_error.get_or_insert(e);
                }
            }
        }
        remaining = later;
        if first_error.is_some() {
            for _ in remaining {
                expectations.creation_observed(key);
            }
            return (created, first_error);
        }
        batch *= 2;
    }
    (created, None)
}

/// Whether a label map contains every key/value of `wanted`.
pub fn labels_contain(
    labels: Option<&BTreeMap<String, String>>,
    wanted: Option<&BTreeMap<String, String>>,
) -> bool {
    wanted
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(node: Option<&str>, phase: &str, ready: bool) -> CachedPod {
        CachedPod::from(Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: if ready { "True" } else { "False" }.to_owned(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        })
    }

    #[test]
    fn surplus_pods_go_unscheduled_first_then_pending_then_unready() {
        let mut pods = [
            pod(Some("n"), "Running", true),
            pod(Some("n"), "Running", false),
            pod(None, "Pending", false),
            pod(Some("n"), "Pending", false),
        ];
        pods.sort_by(deletion_order);
        assert!(pods[0]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none());
        assert_eq!(
            pods[1].status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Pending")
        );
        assert!(!is_ready(&pods[2]));
        assert!(is_ready(&pods[3]));
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let mut p = pod(Some("n"), "Running", true);
        if let Some(c) = p.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].last_transition_time = Some(Time(
                Timestamp::new(100, 0).unwrap_or(Timestamp::UNIX_EPOCH),
            ));
        }
        assert!(is_available(&p, 0, 100));
        assert!(!is_available(&p, 10, 105));
        assert!(is_available(&p, 10, 110));
    }
}
