//! Claiming dependents by selector (upstream's `ControllerRefManager`): a controller owns the
//! objects whose controller reference names it and that still match its selector; it adopts
//! orphans that match (unless it is being deleted) and releases owned objects that stopped
//! matching. Deployments claim ReplicaSets this way; DaemonSets, StatefulSets and Jobs claim
//! pods.
//!
//! The decision ([`decide`]) is a plain function; [`claim`] applies it with patches that carry
//! the object's resourceVersion, so an adoption never overwrites a concurrent change of its
//! owner references. It must not create or delete objects.
use std::sync::Arc;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
    Metadata, Resource,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use tracing::debug;

use super::pods::controller_of;
use crate::{
    apiserver::rest::PatchKind,
    client::{informer::key_of, labels::selector_matches, Api, ClientError, Informer, WorkQueue},
};

/// The `namespace/name` key of the `kind` (of `api_version`) that controls an object.
pub fn controller_key(meta: &ObjectMeta, api_version: &str, kind: &str) -> Option<String> {
    let owner = controller_of(meta)?;
    (owner.kind == kind && owner.api_version == api_version).then(|| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            owner.name
        )
    })
}

/// Queues every owner in `meta`'s namespace whose selector matches its labels: an orphan
/// may be adopted by any of them.
pub fn enqueue_selecting<K>(
    queue: &WorkQueue,
    owners: &Informer<K>,
    meta: &ObjectMeta,
    selector: impl Fn(&K) -> Option<&LabelSelector>,
) where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    for owner in owners.list_namespace(namespace) {
        if selector(&owner).is_some_and(|s| selector_matches(s, meta.labels.as_ref())) {
            queue.add(key_of(owner.as_ref()));
        }
    }
}

/// What to do with one candidate object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours and matching: keep it.
    Owned,
    /// An orphan that matches: take it.
    Adopt,
    /// Ours but no longer matching: let it go.
    Release,
    /// Someone else's, or not ours to touch now.
    Ignore,
}

/// Decides the fate of one object for the owner with `owner_uid`.
pub fn decide(
    meta: &ObjectMeta,
    owner_uid: &str,
    selector: &LabelSelector,
    owner_deleting: bool,
) -> Claim {
    let matches = selector_matches(selector, meta.labels.as_ref());
    match controller_of(meta) {
        Some(owner) if owner.uid == owner_uid => {
            if matches {
                Claim::Owned
            } else if owner_deleting {
                Claim::Ignore
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None if matches && !owner_deleting && meta.deletion_timestamp.is_none() => Claim::Adopt,
        None => Claim::Ignore,
    }
}

/// The patch that adds `owner` as controller (plus `finalizer`, if any), guarded by the
/// object's resourceVersion.
fn adopt_patch(meta: &ObjectMeta, owner: &OwnerReference, finalizer: Option<&str>) -> Value {
    let mut refs = meta.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != owner.uid);
    refs.push(owner.clone());
    let mut metadata = json!({
        "ownerReferences": refs,
        "resourceVersion": meta.resource_version,
    });
    if let Some(finalizer) = finalizer {
        let mut finalizers = meta.finalizers.clone().unwrap_or_default();
        if !finalizers.iter().any(|f| f == finalizer) {
            finalizers.push(finalizer.to_owned());
        }
        metadata["finalizers"] = json!(finalizers);
    }
    json!({ "metadata": metadata })
}

/// The patch that removes the reference to `owner_uid`, guarded by the resourceVersion.
fn release_patch(meta: &ObjectMeta, owner_uid: &str) -> Value {
    let refs: Vec<&OwnerReference> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .collect();
    json!({"metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version}})
}

/// Claims `candidates` for `owner`: returns the objects it controls after adopting and
/// releasing. `adopt_finalizer` is added to adopted objects (the Job controller's tracking
/// finalizer). A conflict or a vanished object skips that object; the next sync sees it again.
/// The candidates are in their cached form `C` (a [`crate::client::CachedPod`] for pods), the
/// writes go through `api` of the full type `K`; an adopted object comes back as `C`.
pub async fn claim<K, C>(
    api: &Api<K>,
    owner: &OwnerReference,
    selector: &LabelSelector,
    owner_deleting: bool,
    candidates: Vec<Arc<C>>,
    adopt_finalizer: Option<&str>,
) -> Result<Vec<Arc<C>>, ClientError>
where
    K: Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned,
    C: Metadata<Ty = ObjectMeta> + From<K>,
{
    let mut owned = Vec::new();
    for object in candidates {
        let meta = object.metadata();
        let name = meta.name.clone().unwrap_or_default();
        match decide(meta, &owner.uid, selector, owner_deleting) {
            Claim::Owned => owned.push(object),
            Claim::Ignore => {}
            Claim::Adopt => {
                let patch = adopt_patch(meta, owner, adopt_finalizer);
                match api.patch(&name, PatchKind::Merge, &patch).await {
                    Ok(adopted) => {
                        debug!(kind = K::KIND, %name, owner = %owner.name, "adopted");
                        owned.push(Arc::new(C::from(adopted)));
                    }
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
            Claim::Release => {
                let patch = release_patch(meta, &owner.uid);
                match api.patch(&name, PatchKind::Merge, &patch).await {
                    Ok(_) => debug!(kind = K::KIND, %name, owner = %owner.name, "released"),
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(labels: &[(&str, &str)], controller: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            owner_references: controller.map(|uid| {
                vec![OwnerReference {
                    uid: uid.to_owned(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            resource_version: Some("7".to_owned()),
            ..ObjectMeta::default()
        }
    }

    fn selector() -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            ..LabelSelector::default()
        }
    }

    #[test]
    fn owners_keep_adopt_and_release_by_selector() {
        let s = selector();
        assert_eq!(
            decide(&meta(&[("app", "web")], Some("me")), "me", &s, false),
            Claim::Owned
        );
        assert_eq!(
            decide(&meta(&[("app", "db")], Some("me")), "me", &s, false),
            Claim::Release
        );
        assert_eq!(
            decide(&meta(&[("app", "db")], Some("me")), "me", &s, true),
            Claim::Ignore
        );
        assert_eq!(
            decide(&meta(&[("app", "web")], None), "me", &s, false),
            Claim::Adopt
        );
        assert_eq!(
            decide(&meta(&[("app", "web")], None), "me", &s, true),
            Claim::Ignore
        );
        assert_eq!(
            decide(&meta(&[("app", "web")], Some("other")), "me", &s, false),
            Claim::Ignore
        );
        let mut terminating = meta(&[("app", "web")], None);
        terminating.deletion_timestamp = Some(super::super::pods::now_time());
        assert_eq!(decide(&terminating, "me", &s, false), Claim::Ignore);
    }

    #[test]
    fn adoption_patches_are_guarded_by_resource_version() {
        let owner = OwnerReference {
            uid: "me".to_owned(),
            name: "job".to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        };
        let patch = adopt_patch(&meta(&[("app", "web")], None), &owner, Some("f"));
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "me");
        assert_eq!(patch["metadata"]["finalizers"], json!(["f"]));
        let released = release_patch(&meta(&[], Some("me")), "me");
        assert_eq!(released["metadata"]["ownerReferences"], json!([]));
    }
}
