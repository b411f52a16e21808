//! `spec.persistentVolumeClaimRetentionPolicy` (upstream's claim-ownership helpers in
//! `stateful_set_utils.go` and `stateful_pod_control.go`): the owner references a pod's claims
//! should carry so the garbage collector deletes them as the policy says — a controller
//! reference to the set with `whenDeleted: Delete`, to a condemned pod (its ordinal beyond
//! `replicas`) with `whenScaled: Delete` — and whether a claim is stale (still owned by an
//! earlier pod of that name), which holds the new pod back until the claim is gone.
//!
//! Owns these decisions; it must not do I/O. Claims owned by another controller, or by an
//! earlier set or pod of the same name (stale references), are left alone.
use k8s_openapi::{
    api::{apps::v1::StatefulSet, core::v1::PersistentVolumeClaim},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};

use super::plan::{ordinal_of, replicas, start_ordinal};
use crate::client::CachedPod;
use crate::controllers::pods::controller_reference;

/// What happens to claims on one occasion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The claims stay.
    Retain,
    /// The claims are deleted.
    Delete,
}

/// The policy: (whenDeleted, whenScaled). Anything but `Delete` means Retain (unknown values
/// are treated as Retain, as upstream does).
pub fn policy(set: &StatefulSet) -> (Retention, Retention) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let of = |value: Option<&str>| match value {
        Some("Delete") => Retention::Delete,
        _ => Retention::Retain,
    };
    (
        of(policy.and_then(|p| p.when_deleted.as_deref())),
        of(policy.and_then(|p| p.when_scaled.as_deref())),
    )
}

/// Whether the pod's ordinal is beyond the set's range (it is being scaled away).
pub fn is_condemned(set: &StatefulSet, pod: &CachedPod) -> bool {
    let Some(ordinal) = pod
        .metadata
        .name
        .as_deref()
        .and_then(|n| ordinal_of(set, n))
    else {
        return false;
    };
    let start = start_ordinal(set);
    ordinal < start || ordinal >= start + replicas(set)
}

/// Whether a reference points at an object of this kind and name (whatever its UID).
fn refers_to(reference: &OwnerReference, api_version: &str, kind: &str, name: &str) -> bool {
    let group = |v: &str| v.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
    group(&reference.api_version) == group(api_version)
        && reference.kind == kind
        && reference.name == name
}

struct Owners {
    set: OwnerReference,
    pod: OwnerReference,
}

fn owners(set: &StatefulSet, pod: &CachedPod) -> Owners {
    Owners {
        set: controller_reference(set),
        pod: controller_reference(pod),
    }
}

impl Owners {
    fn is_ours(&self, reference: &OwnerReference) -> bool {
        [&self.set, &self.pod]
            .iter()
            .any(|o| refers_to(reference, &o.api_version, &o.kind, &o.name))
    }

    /// A reference to the set's or pod's name with another UID: an earlier incarnation.
    fn stale(&self, refs: &[OwnerReference]) -> bool {
        refs.iter().any(|r| {
            [&self.set, &self.pod]
                .iter()
                .any(|o| refers_to(r, &o.api_version, &o.kind, &o.name) && r.uid != o.uid)
        })
    }

    /// A controller reference to something other than our set and pod.
    fn unexpected_controller(&self, refs: &[OwnerReference]) -> bool {
        refs.iter()
            .any(|r| r.controller == Some(true) && !self.is_ours(r))
    }
}

/// The owner references the claim of `pod` should carry under the set's policy, or None when
/// they are right already or the claim is not ours to change (upstream's
/// `isClaimOwnerUpToDate` and `updateClaimOwnerRefForSetAndPod`): with whenDeleted Delete a
/// controller reference to the set — unless the pod is condemned and whenScaled is Delete, then
/// to the pod instead; with whenScaled Delete alone, to a condemned pod only.
pub fn wanted_owners(
    set: &StatefulSet,
    pod: &CachedPod,
    claim: &PersistentVolumeClaim,
) -> Option<Vec<OwnerReference>> {
    let refs = claim.metadata.owner_references.clone().unwrap_or_default();
    let owners = owners(set, pod);
    // Owned by an earlier set or pod of these names: the garbage collector's to sort out.
    if owners.stale(&refs) {
        return None;
    }
    let ours = |r: &OwnerReference| owners.is_ours(r);
    let mut wanted: Vec<OwnerReference> = refs.iter().filter(|r| !ours(r)).cloned().collect();
    if !owners.unexpected_controller(&refs) {
        let (when_deleted, when_scaled) = policy(set);
        let condemned = is_condemned(set, pod);
        let to_pod = when_scaled == Retention::Delete && condemned;
        let to_set = when_deleted == Retention::Delete && !to_pod;
        if to_set {
            wanted.push(owners.set.clone());
        }
        if to_pod {
            wanted.push(owners.pod.clone());
        }
    }
    let same = wanted.len() == refs.len()
        && wanted.iter().all(|w| {
            refs.iter()
                .any(|r| r.uid == w.uid && r.controller == w.controller && r.name == w.name)
        });
    (!same).then_some(wanted)
}

/// Whether a claim of a pod about to be created is still owned by an earlier pod of the same
/// name (whenScaled Delete only): the pod waits for the garbage collector to delete it.
pub fn is_stale(set: &StatefulSet, pod_name: &str, claim: &PersistentVolumeClaim) -> bool {
    if policy(set).1 == Retention::Retain {
        return false;
    }
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| refers_to(r, "v1", "Pod", pod_name))
}

#[cfg(test)]
mod tests;
