//! Template history (upstream's `controller/history` and `ComputeHash`): the stable hash of a
//! pod template that names Deployments' ReplicaSets (`pod-template-hash`) and DaemonSets'
//! revisions, and the ControllerRevisions in which DaemonSets and StatefulSets record each
//! template they ran, as the strategic-merge patch `{"spec":{"template":{...,
//! "$patch":"replace"}}}` that `kubectl rollout undo` applies back. StatefulSet revisions are
//! named by the hash of that data ([`new_revision`]), DaemonSet ones by the template hash.
//!
//! Owns hashing, revision naming and numbering, and the choice of revisions to prune (plain
//! functions), plus creating and renumbering revisions. It must not decide which revision an
//! owner runs: DaemonSets and StatefulSets do.
use std::collections::{BTreeMap, HashSet};

use k8s_openapi::{
    api::{apps::v1::ControllerRevision, core::v1::PodTemplateSpec},
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference},
        runtime::RawExtension,
    },
};
use serde_json::{json, Value};

use crate::{
    apiserver::rest::PatchKind,
    client::{Api, ClientError},
};

/// The label carrying a ControllerRevision's hash (upstream's `ControllerRevisionHashLabel`).
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// The pod label naming the revision a DaemonSet or StatefulSet pod was made from.
pub const POD_REVISION_LABEL: &str = "controller-revision-hash";

/// How many times a hash collision is resolved by bumping the collision count before giving
/// up for this sync.
const MAX_COLLISIONS: usize = 5;

/// 32-bit FNV-1a.
fn fnv32a(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in part.iter() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// Encodes a string with consonants and digits only, so it never spells a word (upstream's
/// `rand.SafeEncodeString`).
fn safe_encode(text: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

fn hash_bytes(data: &[u8], collision_count: Option<i32>) -> String {
    let collision = collision_count.map(|c| c.to_string()).unwrap_or_default();
    let sum = fnv32a(&[data, collision.as_bytes()]);
    safe_encode(&sum.to_string())
}

/// The `pod-template-hash` of a Deployment's template: stable for equal templates, changed by
/// `collisionCount`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    hash_bytes(&bytes, collision_count)
}

/// The revision data of a template: the patch that restores it.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".to_owned(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The template recorded in a revision.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(map) = template.as_object_mut() {
        map.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// The hash of revision data (upstream's `HashControllerRevision`).
pub fn revision_hash(data: &Value, collision_count: Option<i32>) -> String {
    hash_bytes(data.to_string().as_bytes(), collision_count)
}

/// `<parent>-<hash>`, with the parent's name cut so the whole stays a valid name.
pub fn revision_name(parent: &str, hash: &str) -> String {
    let prefix: String = parent.chars().take(223).collect();
    format!("{prefix}-{hash}")
}

/// Sorts revisions oldest first: by number, then creation time, then name.
pub fn sort_revisions(revisions: &mut [ControllerRevision]) {
    revisions.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| {
                let created = |r: &ControllerRevision| {
                    r.metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or(0, |t| t.0.as_second())
                };
                created(a).cmp(&created(b))
            })
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// The number the next revision gets.
pub fn next_revision(revisions: &[ControllerRevision]) -> i64 {
    revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// Whether two revisions record the same data.
pub fn equal_data(revision: &ControllerRevision, data: &Value) -> bool {
    revision.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// The revisions to delete to keep at most `limit` of those not in `live` (oldest go
/// first). `revisions` must be sorted oldest first.
pub fn revisions_to_prune(
    revisions: &[ControllerRevision],
    live: &HashSet<String>,
    limit: i32,
) -> Vec<String> {
    let history: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    let surplus = history.len().saturating_sub(limit.max(0) as usize);
    history
        .into_iter()
        .take(surplus)
        .filter_map(|r| r.metadata.name.clone())
        .collect()
}

/// A new revision object (not yet created).
pub fn new_revision(
    namespace: &str,
    parent: &str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    data: Value,
    number: i64,
    collision_count: Option<i32>,
) -> ControllerRevision {
    let hash = revision_hash(&data, collision_count);
    let mut labels = labels;
    labels.insert(REVISION_HASH_LABEL.to_owned(), hash.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(parent, &hash)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data)),
        revision: number,
    }
}

/// Creates the revision `build(collision_count)` makes; a name taken by different data is a
/// hash collision, resolved by bumping `collision_count` (which the caller records in its
/// status). Returns the revision that holds the data, existing or new.
pub async fn create_revision(
    api: &Api<ControllerRevision>,
    owner_uid: &str,
    build: impl Fn(i32) -> ControllerRevision,
    collision_count: &mut i32,
) -> Result<ControllerRevision, ClientError> {
    let mut last_error = None;
    for _ in 0..MAX_COLLISIONS {
        let revision = build(*collision_count);
        let name = revision.metadata.name.clone().unwrap_or_default();
        match api.create(&revision).await {
            Ok(created) => return Ok(created),
            Err(e) if e.is_already_exists() => {
                if let Some(existing) = api.get(&name).await? {
                    let ours = super::pods::controller_of(&existing.metadata)
                        .is_some_and(|r| r.uid == owner_uid);
                    let data = revision.data.as_ref().map(|d| &d.0);
                    if ours && data.is_some_and(|d| equal_data(&existing, d)) {
                        return Ok(existing);
                    }
                }
                *collision_count = collision_count.saturating_add(1);
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or(ClientError::NotServed("ControllerRevision")))
}

/// Gives an existing revision a new number (a rollback to it), guarded by its
/// resourceVersion.
pub async fn renumber(
    api: &Api<ControllerRevision>,
    revision: &ControllerRevision,
    number: i64,
) -> Result<ControllerRevision, ClientError> {
    if revision.revision == number {
        return Ok(revision.clone());
    }
    let name = revision.metadata.name.clone().unwrap_or_default();
    let patch = json!({
        "metadata": {"resourceVersion": revision.metadata.resource_version},
        "revision": number,
    });
    api.patch(&name, PatchKind::Merge, &patch).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".to_owned(),
                    image: Some(image.to_owned()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv32a(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv32a(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv32a(&[b"foo"]), 0xa9f3_7ed7);
        assert_eq!(fnv32a(&[b"fo", b"o"]), fnv32a(&[b"foo"]));
    }

    #[test]
    fn template_hashes_are_stable_safe_and_follow_collisions() {
        let a = template_hash(&template("nginx:1"), None);
        assert_eq!(a, template_hash(&template("nginx:1"), None));
        assert_ne!(a, template_hash(&template("nginx:2"), None));
        assert_ne!(a, template_hash(&template("nginx:1"), Some(1)));
        assert!(
            a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{a}"
        );
        assert!(!a.is_empty() && a.len() <= 10);
    }

    #[test]
    fn revision_data_round_trips_the_template() {
        let data = template_patch(&template("nginx:1"));
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let revision = new_revision(
            "ns",
            "ds",
            OwnerReference::default(),
            BTreeMap::new(),
            data.clone(),
            3,
            None,
        );
        assert_eq!(template_of(&revision), Some(template("nginx:1")));
        let name = revision.metadata.name.clone().unwrap_or_default();
        assert!(name.starts_with("ds-"), "{name}");
        assert_eq!(
            revision
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_HASH_LABEL)),
            Some(&name["ds-".len()..].to_owned())
        );
        assert!(equal_data(&revision, &data));
    }

    #[test]
    fn pruning_keeps_live_revisions_and_the_newest_history() {
        let revision = |name: &str, number: i64| ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            revision: number,
            data: None,
        };
        let mut revisions = vec![
            revision("d", 4),
            revision("a", 1),
            revision("c", 3),
            revision("b", 2),
        ];
        sort_revisions(&mut revisions);
        assert_eq!(next_revision(&revisions), 5);
        let live = HashSet::from(["d".to_owned()]);
        assert_eq!(revisions_to_prune(&revisions, &live, 1), ["a", "b"]);
        assert!(revisions_to_prune(&revisions, &live, 10).is_empty());
        assert_eq!(revisions_to_prune(&revisions, &live, 0), ["a", "b", "c"]);
    }
}
