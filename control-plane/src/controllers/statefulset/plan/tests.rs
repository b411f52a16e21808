//! Unit tests of the StatefulSet decisions.
use super::*;
use k8s_openapi::{
    api::{
        apps::v1::{
            RollingUpdateStatefulSetStrategy, StatefulSetOrdinals, StatefulSetSpec,
            StatefulSetUpdateStrategy,
        },
        core::v1::{Container, PersistentVolumeClaimSpec, PodCondition, PodSpec, PodStatus},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
    jiff::Timestamp,
};

fn set(replicas: i32) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("sts-uid".to_owned()),
            generation: Some(3),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some("web-svc".to_owned()),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "web".to_owned(),
                        image: Some("web:1".to_owned()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_owned()),
                    labels: Some(BTreeMap::from([("tier".to_owned(), "disk".to_owned())])),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec::default()),
                status: None,
            }]),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: None,
                }),
            }),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn parallel(mut s: StatefulSet) -> StatefulSet {
    if let Some(spec) = s.spec.as_mut() {
        spec.pod_management_policy = Some("Parallel".to_owned());
    }
    s
}

#[derive(Clone, Copy)]
enum State {
    Pending,
    Ready,
    Failed,
    Terminating,
}

fn pod(s: &StatefulSet, ordinal: i32, revision: &str, state: State) -> Arc<CachedPod> {
    let mut pod = new_pod(
        s,
        &s.spec.clone().unwrap_or_default().template,
        revision,
        ordinal,
    );
    pod.metadata.uid = Some(format!("uid-{ordinal}"));
    let (phase, ready) = match state {
        State::Pending => ("Pending", false),
        State::Ready | State::Terminating => ("Running", true),
        State::Failed => ("Failed", false),
    };
    if matches!(state, State::Terminating) {
        pod.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    }
    pod.status = Some(PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".to_owned(),
            status: if ready { "True" } else { "False" }.to_owned(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    Arc::new(CachedPod::from(pod))
}

fn create(ordinal: i32) -> Action {
    Action::Create {
        ordinal,
        revision: Revision::Update,
    }
}

fn delete_of(ordinal: i32) -> Action {
    Action::Delete {
        name: format!("web-{ordinal}"),
        uid: format!("uid-{ordinal}"),
    }
}

#[test]
fn ordinals_belong_to_their_set_only() {
    let s = set(3);
    assert_eq!(ordinal_of(&s, "web-0"), Some(0));
    assert_eq!(ordinal_of(&s, "web-12"), Some(12));
    assert_eq!(ordinal_of(&s, "web-x"), None);
    assert_eq!(ordinal_of(&s, "web-"), None);
    assert_eq!(ordinal_of(&s, "webby-0"), None);
    assert_eq!(ordinal_of(&s, "web-web-0"), None);
    assert_eq!(ordinal_of(&s, "web--1"), None);
    assert_eq!(ordinal_of(&s, "web-99999999999999999999"), None);
}

#[test]
fn ordered_ready_creates_one_pod_after_the_previous_is_ready() {
    let s = set(3);
    assert_eq!(plan(&s, &[], "rev-b", 0), [create(0)]);
    assert!(
        plan(&s, &[pod(&s, 0, "rev-b", State::Pending)], "rev-b", 0).is_empty(),
        "web-0 is not ready"
    );
    assert_eq!(
        plan(&s, &[pod(&s, 0, "rev-b", State::Ready)], "rev-b", 0),
        [create(1)]
    );
    let two = [
        pod(&s, 0, "rev-b", State::Ready),
        pod(&s, 1, "rev-b", State::Ready),
    ];
    assert_eq!(plan(&s, &two, "rev-b", 0), [create(2)]);
    // A missing lower ordinal comes back first.
    assert_eq!(
        plan(&s, &[pod(&s, 1, "rev-b", State::Ready)], "rev-b", 0),
        [create(0)]
    );
}

#[test]
fn parallel_creates_and_deletes_all_at_once() {
    let s = parallel(set(3));
    assert_eq!(plan(&s, &[], "rev-b", 0), [create(0), create(1), create(2)]);
    let s = parallel(set(1));
    let pods = [
        pod(&s, 0, "rev-b", State::Ready),
        pod(&s, 1, "rev-b", State::Pending),
        pod(&s, 2, "rev-b", State::Ready),
    ];
    assert_eq!(plan(&s, &pods, "rev-b", 0), [delete_of(2), delete_of(1)]);
}

#[test]
fn scale_down_goes_from_the_highest_ordinal_one_at_a_time() {
    let s = set(1);
    let pods = [
        pod(&s, 0, "rev-b", State::Ready),
        pod(&s, 1, "rev-b", State::Ready),
        pod(&s, 2, "rev-b", State::Ready),
    ];
    assert_eq!(plan(&s, &pods, "rev-b", 0), [delete_of(2)]);
    let waiting = [
        pod(&s, 0, "rev-b", State::Ready),
        pod(&s, 1, "rev-b", State::Ready),
        pod(&s, 2, "rev-b", State::Terminating),
    ];
    assert!(
        plan(&s, &waiting, "rev-b", 0).is_empty(),
        "web-2 must be gone before web-1 goes"
    );
    // An unhealthy condemned pod that is the first unhealthy one may go anyway.
    let stuck = [
        pod(&s, 0, "rev-b", State::Ready),
        pod(&s, 1, "rev-b", State::Pending),
    ];
    assert_eq!(plan(&s, &stuck, "rev-b", 0), [delete_of(1)]);
    let blocked = [
        pod(&s, 0, "rev-b", State::Ready),
        pod(&s, 1, "rev-b", State::Pending),
        pod(&s, 2, "rev-b", State::Ready),
    ];
    // The healthy highest ordinal is not held back by an unhealthy lower condemned pod.
    assert_eq!(plan(&s, &blocked, "rev-b", 0), [delete_of(2)]);
}

#[test]
fn failed_pods_are_replaced() {
    let s = set(2);
    let pods = [
        pod(&s, 0, "rev-b", State::Failed),
        pod(&s, 1, "rev-b", State::Ready),
    ];
    assert_eq!(plan(&s, &pods, "rev-b", 0), [delete_of(0)]);
}

#[test]
fn rolling_updates_go_down_from_the_highest_ordinal_to_the_partition() {
    let s = set(3);
    let old = [
        pod(&s, 0, "rev-a", State::Ready),
        pod(&s, 1, "rev-a", State::Ready),
        pod(&s, 2, "rev-a", State::Ready),
    ];
    assert_eq!(plan(&s, &old, "rev-b", 0), [delete_of(2)]);
    let mid = [
        pod(&s, 0, "rev-a", State::Ready),
        pod(&s, 1, "rev-a", State::Ready),
        pod(&s, 2, "rev-b", State::Pending),
    ];
    assert!(
        plan(&s, &mid, "rev-b", 0).is_empty(),
        "waits for web-2 to be ready"
    );
    let next = [
        pod(&s, 0, "rev-a", State::Ready),
        pod(&s, 1, "rev-a", State::Ready),
        pod(&s, 2, "rev-b", State::Ready),
    ];
    assert_eq!(plan(&s, &next, "rev-b", 0), [delete_of(1)]);
    // With a partition of 2, ordinals 0 and 1 stay at the current revision.
    let mut partitioned = set(3);
    if let Some(rolling) = partitioned
        .spec
        .as_mut()
        .and_then(|s| s.update_strategy.as_mut())
        .and_then(|u| u.rolling_update.as_mut())
    {
        rolling.partition = Some(2);
    }
    assert!(plan(&partitioned, &next, "rev-b", 0).is_empty());
    assert_eq!(revision_for(&partitioned, 1), Revision::Current);
    assert_eq!(revision_for(&partitioned, 2), Revision::Update);
    // OnDelete leaves outdated pods alone.
    let mut on_delete = set(3);
    if let Some(strategy) = on_delete
        .spec
        .as_mut()
        .and_then(|s| s.update_strategy.as_mut())
    {
        strategy.type_ = Some("OnDelete".to_owned());
    }
    assert!(plan(&on_delete, &old, "rev-b", 0).is_empty());
}

#[test]
fn pods_get_their_identity_and_claims() {
    let mut s = set(3);
    if let Some(spec) = s.spec.as_mut() {
        spec.ordinals = Some(StatefulSetOrdinals { start: Some(5) });
    }
    assert_eq!(start_ordinal(&s), 5);
    assert_eq!(plan(&s, &[], "rev-b", 0), [create(5)]);
    let p = new_pod(
        &s,
        &s.spec.clone().unwrap_or_default().template,
        "web-abc",
        6,
    );
    assert_eq!(p.metadata.name.as_deref(), Some("web-6"));
    let labels = p.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(POD_NAME_LABEL).map(String::as_str),
        Some("web-6")
    );
    assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("6"));
    assert_eq!(
        labels.get(POD_REVISION_LABEL).map(String::as_str),
        Some("web-abc")
    );
    let spec = p.spec.clone().unwrap_or_default();
    assert_eq!(spec.hostname.as_deref(), Some("web-6"));
    assert_eq!(spec.subdomain.as_deref(), Some("web-svc"));
    let volumes = spec.volumes.unwrap_or_default();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "data");
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("data-web-6")
    );
    let claims = claims_for(&s, 6);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-6"));
    let claim_labels = claims[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(claim_labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(claim_labels.get("tier").map(String::as_str), Some("disk"));
    assert!(
        claims[0].metadata.owner_references.is_none(),
        "retained by default"
    );
}

#[test]
fn status_counts_revisions_and_completes_rolling_updates() {
    let s = set(2);
    let pods = [
        pod(&s, 0, "rev-a", State::Ready),
        pod(&s, 1, "rev-b", State::Pending),
    ];
    let st = status(&s, &pods, "rev-a", "rev-b", None, 0);
    assert_eq!(st.replicas, 2);
    assert_eq!(st.ready_replicas, Some(1));
    assert_eq!(st.current_replicas, Some(1));
    assert_eq!(st.updated_replicas, Some(1));
    assert_eq!(st.current_revision.as_deref(), Some("rev-a"));
    assert_eq!(st.observed_generation, Some(3));
    let done = [
        pod(&s, 0, "rev-b", State::Ready),
        pod(&s, 1, "rev-b", State::Ready),
    ];
    let st = status(&s, &done, "rev-a", "rev-b", None, 0);
    assert_eq!(st.current_revision.as_deref(), Some("rev-b"));
    assert_eq!(st.current_replicas, Some(2));
}
