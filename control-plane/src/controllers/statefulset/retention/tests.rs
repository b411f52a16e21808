//! Unit tests of the claim retention policy.
use super::*;
use std::collections::BTreeMap;

use k8s_openapi::{
    api::apps::v1::{StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};

use crate::controllers::statefulset::plan::claims_for;

fn set(replicas: i32, when_deleted: &str, when_scaled: &str) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some("db".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("set-uid".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), "db".to_owned())])),
                ..LabelSelector::default()
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_owned()),
                    ..ObjectMeta::default()
                },
                ..PersistentVolumeClaim::default()
            }]),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(when_deleted.to_owned()),
                    when_scaled: Some(when_scaled.to_owned()),
                },
            ),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn pod(ordinal: i32, uid: &str) -> CachedPod {
    CachedPod {
        metadata: ObjectMeta {
            name: Some(format!("db-{ordinal}")),
            namespace: Some("default".to_owned()),
            uid: Some(uid.to_owned()),
            ..ObjectMeta::default()
        },
        ..CachedPod::default()
    }
}

fn claim(refs: Vec<OwnerReference>) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data-db-1".to_owned()),
            owner_references: (!refs.is_empty()).then_some(refs),
            ..ObjectMeta::default()
        },
        ..PersistentVolumeClaim::default()
    }
}

/// (kind, uid, controller) of each reference.
fn summary(refs: &[OwnerReference]) -> Vec<(String, String, bool)> {
    refs.iter()
        .map(|r| (r.kind.clone(), r.uid.clone(), r.controller == Some(true)))
        .collect()
}

#[test]
fn claims_are_owned_as_the_policy_says() {
    let in_range = pod(1, "pod-uid");
    let scaled_away = pod(3, "pod-uid");
    let set_ref = ("StatefulSet".to_owned(), "set-uid".to_owned(), true);
    let pod_ref = ("Pod".to_owned(), "pod-uid".to_owned(), true);
    let cases = [
        ("Retain", "Retain", &in_range, vec![]),
        ("Retain", "Retain", &scaled_away, vec![]),
        ("Delete", "Retain", &in_range, vec![set_ref.clone()]),
        ("Delete", "Retain", &scaled_away, vec![set_ref.clone()]),
        ("Retain", "Delete", &in_range, vec![]),
        ("Retain", "Delete", &scaled_away, vec![pod_ref.clone()]),
        ("Delete", "Delete", &in_range, vec![set_ref.clone()]),
        ("Delete", "Delete", &scaled_away, vec![pod_ref.clone()]),
        // Unknown values mean Retain.
        ("Keep", "Sometimes", &scaled_away, vec![]),
    ];
    for (when_deleted, when_scaled, pod, want) in cases {
        let s = set(2, when_deleted, when_scaled);
        let got = wanted_owners(&s, pod, &claim(vec![]));
        let label = format!("{when_deleted}/{when_scaled} for {:?}", pod.metadata.name);
        if want.is_empty() {
            assert_eq!(got, None, "{label}: nothing to change");
        } else {
            let refs = got.unwrap_or_default();
            assert_eq!(summary(&refs), want, "{label}");
            // Applied, it is up to date.
            assert_eq!(wanted_owners(&s, pod, &claim(refs)), None, "{label}");
        }
    }
    // Scaling back up moves the claim from the pod to the set again.
    let s = set(4, "Delete", "Delete");
    let owned_by_pod = claim(vec![controller_reference(&scaled_away)]);
    assert_eq!(
        wanted_owners(&s, &scaled_away, &owned_by_pod).map(|r| summary(&r)),
        Some(vec![set_ref])
    );
    // Retain/Retain drops the references this controller put there, keeps others.
    let other = OwnerReference {
        api_version: "example.com/v1".to_owned(),
        kind: "Backup".to_owned(),
        name: "nightly".to_owned(),
        uid: "backup-uid".to_owned(),
        controller: None,
        block_owner_deletion: None,
    };
    let s = set(2, "Retain", "Retain");
    let mixed = claim(vec![controller_reference(&s), other.clone()]);
    assert_eq!(
        wanted_owners(&s, &in_range, &mixed).map(|r| summary(&r)),
        Some(vec![("Backup".to_owned(), "backup-uid".to_owned(), false)])
    );
}

#[test]
fn foreign_controllers_and_stale_references_are_respected() {
    let s = set(2, "Delete", "Delete");
    let old_pod = pod(3, "earlier-pod-uid");
    let new_pod = pod(3, "pod-uid");
    // An earlier pod of the same name owns it: hands off.
    let stale = claim(vec![controller_reference(&old_pod)]);
    assert_eq!(wanted_owners(&s, &new_pod, &stale), None);
    assert!(is_stale(&s, "db-3", &stale), "creating db-3 waits for it");
    assert!(!is_stale(&s, "db-4", &stale));
    assert!(
        !is_stale(&set(2, "Delete", "Retain"), "db-3", &stale),
        "claims kept on scale-down are reused, never stale"
    );
    // Another controller: our references go, none are added.
    let foreign = OwnerReference {
        api_version: "example.com/v1".to_owned(),
        kind: "Operator".to_owned(),
        name: "op".to_owned(),
        uid: "op-uid".to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let contested = claim(vec![foreign.clone(), controller_reference(&s)]);
    assert_eq!(
        wanted_owners(&s, &pod(1, "pod-uid"), &contested).map(|r| summary(&r)),
        Some(vec![("Operator".to_owned(), "op-uid".to_owned(), true)])
    );
    assert_eq!(
        wanted_owners(&s, &pod(1, "pod-uid"), &claim(vec![foreign])),
        None
    );
    // A claim created for whenDeleted Delete is controlled by the set from the start.
    let created = claims_for(&s, 0);
    assert_eq!(
        summary(
            created[0]
                .metadata
                .owner_references
                .as_deref()
                .unwrap_or(&[])
        ),
        [("StatefulSet".to_owned(), "set-uid".to_owned(), true)]
    );
    assert_eq!(wanted_owners(&s, &pod(0, "p0"), &created[0]), None);
    assert!(is_condemned(&s, &pod(2, "x")) && !is_condemned(&s, &pod(1, "x")));
}
