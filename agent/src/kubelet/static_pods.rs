//! Static pods (upstream's file pod source): every regular file in the agent's manifest
//! directory (`<data dir>/manifests`, looked at every two seconds) is a pod manifest in YAML
//! or JSON, whatever its name ends in, as upstream reads them; files whose names start with a
//! dot are skipped and directories are not entered. A manifest is a pod of this node named
//! `<name>-<node>`, in its namespace or `default`, whose UID is a hash of the manifest, its
//! file name and the node (annotated `kubernetes.io/config.hash` with it and
//! `kubernetes.io/config.source: file`), tolerating every NoExecute taint as upstream's
//! static pods do. A UID written in the manifest is ignored (upstream keeps it), so that a
//! changed manifest is always a new pod.
//!
//! The pod worker runs static pods from the manifests themselves
//! ([`PodSources`](super::pod_sources::PodSources) puts them beside the API's pods), so
//! they start and keep running while the API server is unreachable; a changed manifest is a
//! new pod (the old one's containers stop, the new one's start once they have), a removed
//! manifest stops its containers.
//!
//! Each static pod is shown in the API by its mirror pod ([`keep_mirrors`]): the same pod
//! annotated `kubernetes.io/config.mirror` with the hash and owned by the Node, created once
//! the API answers and the Node exists, recreated when deleted by hand (its deletion is
//! finished at once, as upstream's kubelet does; the containers are untouched), replaced
//! when its manifest changes and deleted with it. Every mirror pod on this node without a
//! static pod of its name and hash is deleted. The pod worker writes the static pod's
//! status to its mirror pod.
//!
//! A manifest that does not parse, is not a v1 Pod, or names a pod another manifest already
//! named is logged once and skipped; the others still run.
//!
//! Owns reading manifests and the mirror pods' lifecycle; it never touches containers.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Node, Pod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    api::{DeleteParams, PostParams, Preconditions},
    Api, Client,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::pod_sources::PodSources;

/// The annotation that marks a mirror pod; its value is the static pod's hash.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The static pod's hash (also its UID).
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Where the pod came from (`file`).
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";

/// How often the manifest directory is read.
const PERIOD: Duration = Duration::from_secs(2);
/// How often the mirror pods are compared with the static pods.
const MIRROR_PERIOD: Duration = Duration::from_secs(1);

/// The static pods, by UID.
pub type StaticPodSet = BTreeMap<String, Arc<Pod>>;

/// Why a manifest is not a pod.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Starts like JSON (`{`) but is not JSON.
    #[error("{file}: not a JSON manifest: {source}")]
    Json {
        /// The manifest's file name.
        file: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// Not YAML (nor JSON).
    #[error("{file}: not a YAML or JSON manifest: {source}")]
    Yaml {
        /// The manifest's file name.
        file: String,
        /// The parser's error.
        source: serde_yaml::Error,
    },
    /// The file could not be read.
    #[error("{file}: cannot read the manifest: {source}")]
    Read {
        /// The manifest's file name.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A document, but not a v1 Pod with a name.
    #[error("{file}: {reason}")]
    Invalid {
        /// The manifest's file name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Another manifest (earlier in name order) already names this pod.
    #[error("{file}: pod {namespace}/{name} is already the pod of {first}")]
    Duplicate {
        /// The manifest's file name.
        file: String,
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
        /// The manifest that runs it.
        first: String,
    },
}

/// FNV-1a, 64 bits: stable across builds, so a restarted agent finds its static pods (their
/// UIDs, hence their sandboxes) and their mirror pods current.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A manifest as JSON: text that starts with `{` is JSON, anything else YAML (of which only
/// the first document counts), as upstream's YAML-to-JSON step decides.
fn parse(file: &str, text: &str) -> Result<Value, ManifestError> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|source| ManifestError::Json {
            file: file.to_owned(),
            source,
        });
    }
    let yaml = |source| ManifestError::Yaml {
        file: file.to_owned(),
        source,
    };
    match serde_yaml::Deserializer::from_str(text).next() {
        Some(document) => Value::deserialize(document).map_err(yaml),
        None => Ok(Value::Null),
    }
}

/// The static pod that the manifest `text` of file `file` asks for on node `node`.
pub fn static_pod(file: &str, text: &str, node: &str) -> Result<Pod, ManifestError> {
    let invalid = |reason: &str| ManifestError::Invalid {
        file: file.to_owned(),
        reason: reason.to_owned(),
    };
    let mut pod = parse(file, text)?;
    if pod.get("kind").and_then(Value::as_str) != Some("Pod")
        || pod.get("apiVersion").and_then(Value::as_str) != Some("v1")
    {
        return Err(invalid("not a v1 Pod"));
    }
    let name = pod["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("no metadata.name"))?
        .to_owned();
    if !pod["spec"]["containers"].is_array() {
        return Err(invalid("no spec.containers"));
    }
    // The hash covers what the manifest says and where it runs (upstream hashes the pod,
    // the node name and the file).
    let hash = format!(
        "{:016x}",
        fnv1a(&[
            file.as_bytes(),
            node.as_bytes(),
            serde_json::to_string(&pod).unwrap_or_default().as_bytes()
        ])
    );
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    let metadata = pod["metadata"]
        .as_object_mut()
        .ok_or_else(|| invalid("no metadata"))?;
    for field in [
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generateName",
        "managedFields",
        "ownerReferences",
        "finalizers",
    ] {
        metadata.remove(field);
    }
    metadata.insert("uid".to_owned(), json!(hash));
    metadata.insert("name".to_owned(), json!(format!("{name}-{node}")));
    metadata.insert("namespace".to_owned(), json!(namespace));
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.remove(MIRROR_ANNOTATION);
    }
    annotations[HASH_ANNOTATION] = json!(hash);
    annotations[SOURCE_ANNOTATION] = json!("file");
    let spec = &mut pod["spec"];
    spec["nodeName"] = json!(node);
    let tolerations = spec
        .as_object_mut()
        .ok_or_else(|| invalid("spec is not an object"))?
        .entry("tolerations")
        .or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        list.push(json!({"operator": "Exists", "effect": "NoExecute"}));
    }
    if let Some(object) = pod.as_object_mut() {
        object.remove("status");
    }
    serde_json::from_value(pod).map_err(|e| invalid(&format!("not a valid pod: {e}")))
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether `pod` is a static pod read from a manifest (its UID is its hash), not an API pod.
pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, SOURCE_ANNOTATION) == Some("file")
        && pod.metadata.uid.is_some()
        && annotation(pod, HASH_ANNOTATION) == pod.metadata.uid.as_deref()
}

/// Whether a runtime sandbox (its labels and annotations, the pod's UID under the label
/// `uid_label`) belongs to a static pod: the pod's annotations, which the sandbox carries,
/// say so.
pub fn is_static_sandbox<S: std::hash::BuildHasher>(
    labels: &HashMap<String, String, S>,
    annotations: &HashMap<String, String, S>,
    uid_label: &str,
) -> bool {
    annotations.get(SOURCE_ANNOTATION).map(String::as_str) == Some("file")
        && labels.get(uid_label).is_some()
        && annotations.get(HASH_ANNOTATION) == labels.get(uid_label)
}

/// Whether `pod` (from the API) is a mirror pod.
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, MIRROR_ANNOTATION).is_some()
}

/// Whether `mirror` is the current mirror pod of `static_pod`: same namespace and name,
/// the static pod's hash, not being deleted.
pub fn is_mirror_of(mirror: &Pod, static_pod: &Pod) -> bool {
    mirror.metadata.namespace == static_pod.metadata.namespace
        && mirror.metadata.name == static_pod.metadata.name
        && mirror.metadata.deletion_timestamp.is_none()
        && annotation(mirror, MIRROR_ANNOTATION).is_some()
        && annotation(mirror, MIRROR_ANNOTATION) == annotation(static_pod, HASH_ANNOTATION)
}

/// The mirror pod of `static_pod` on the node whose UID is `node_uid`: the same pod, its
/// UID left to the API server, annotated with the hash and owned by the Node.
pub fn mirror_pod(static_pod: &Pod, node_uid: &str) -> Pod {
    let mut mirror = static_pod.clone();
    let hash = annotation(static_pod, HASH_ANNOTATION)
        .unwrap_or_default()
        .to_owned();
    mirror.metadata.uid = None;
    mirror.metadata.resource_version = None;
    mirror
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR_ANNOTATION.to_owned(), hash);
    let node = static_pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    mirror.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Node".to_owned(),
        name: node,
        uid: node_uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    mirror.status = None;
    mirror
}

/// The manifests in `dir`, by file name, sorted: every regular file (or link to one) whose
/// name does not start with a dot, with its text or why it could not be read.
fn manifests(dir: &Path) -> Vec<(String, std::io::Result<String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, std::io::Result<String>)> = entries
        .flatten()
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                return None;
            }
            Some((name, std::fs::read_to_string(e.path())))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The static pods the manifests ask for, by UID, and the manifests that are not pods; one
/// bad manifest leaves the others alone. Of two manifests naming the same pod, the first in
/// name order runs.
fn static_pods(
    files: Vec<(String, std::io::Result<String>)>,
    node: &str,
) -> (StaticPodSet, Vec<ManifestError>) {
    let mut pods = StaticPodSet::new();
    let mut names: HashMap<(String, String), String> = HashMap::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        let pod = text
            .map_err(|source| ManifestError::Read {
                file: file.clone(),
                source,
            })
            .and_then(|text| static_pod(&file, &text, node));
        let pod = match pod {
            Ok(pod) => pod,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Some(first) = names.get(&(namespace.clone(), name.clone())) {
            errors.push(ManifestError::Duplicate {
                file,
                namespace,
                name,
                first: first.clone(),
            });
            continue;
        }
        names.insert((namespace, name), file);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        pods.insert(uid, Arc::new(pod));
    }
    (pods, errors)
}

/// Reads the static pods in `dir` now, logging each bad manifest once (`reported` remembers
/// them).
pub fn read_dir(dir: &Path, node: &str, reported: &mut HashSet<String>) -> StaticPodSet {
    let (pods, errors) = static_pods(manifests(dir), node);
    let mut now_bad = HashSet::new();
    for e in errors {
        let message = e.to_string();
        if !reported.contains(&message) {
            warn!(error = %message, "skipping a static pod manifest");
        }
        now_bad.insert(message);
    }
    // A manifest fixed and broken again is reported again.
    *reported = now_bad;
    pods
}

/// Follows the manifest directory forever: every [`PERIOD`] the static pods are read again,
/// and a change is published on `pods` and signalled on `changed`.
pub async fn follow_dir(
    dir: PathBuf,
    node: String,
    pods: watch::Sender<StaticPodSet>,
    changed: Arc<Notify>,
    mut reported: HashSet<String>,
) {
    loop {
        tokio::time::sleep(PERIOD).await;
        let now = read_dir(&dir, &node, &mut reported);
        let modified = pods.send_if_modified(|current| {
            if *current == now {
                return false;
            }
            *current = now;
            true
        });
        if modified {
            changed.notify_one();
        }
    }
}

/// A mirror pod to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID (the delete's precondition).
    pub uid: String,
}

/// What the mirror pods need, as plain data.
#[derive(Debug, Default, PartialEq)]
pub struct MirrorPlan {
    /// Mirror pods without a current static pod (orphaned, outdated, or deleted by hand and
    /// waiting for their kubelet): deleted at once.
    pub delete: Vec<MirrorRef>,
    /// Static pods without a mirror pod: one is created for each.
    pub create: Vec<Arc<Pod>>,
    /// Static pods whose name an API pod that is no mirror pod holds: no mirror for them
    /// (upstream leaves such a pod alone too).
    pub taken: Vec<String>,
}

/// Compares the static pods with the API's pods on this node.
pub fn mirror_plan(statics: &StaticPodSet, api_pods: &[Arc<Pod>]) -> MirrorPlan {
    let mut plan = MirrorPlan::default();
    let key = |pod: &Pod| {
        (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        )
    };
    let by_name: HashMap<(String, String), &Arc<Pod>> =
        statics.values().map(|p| (key(p), p)).collect();
    let mut named: HashSet<(String, String)> = HashSet::new();
    for pod in api_pods {
        let name = key(pod);
        named.insert(name.clone());
        if !is_mirror(pod) {
            if by_name.contains_key(&name) {
                plan.taken.push(format!("{}/{}", name.0, name.1));
            }
            continue;
        }
        let current = by_name
            .get(&name)
            .is_some_and(|static_pod| is_mirror_of(pod, static_pod));
        if !current {
            plan.delete.push(MirrorRef {
                namespace: name.0,
                name: name.1,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
            });
        }
    }
    for (name, static_pod) in by_name {
        // A mirror being replaced is created once the old one is gone from the API.
        if !named.contains(&name) {
            plan.create.push(static_pod.clone());
        }
    }
    plan.create.sort_by_key(|p| key(p));
    plan
}

/// Keeps a mirror pod in the API for every static pod, forever (every [`MIRROR_PERIOD`],
/// once the pod watch has listed this node's pods).
pub async fn keep_mirrors(client: Client, node: String, sources: PodSources) {
    let mut reported: HashSet<String> = HashSet::new();
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(MIRROR_PERIOD).await;
        if !sources.api_synced() {
            continue;
        }
        let plan = mirror_plan(&sources.static_pods(), &sources.api_pods_on_node());
        for name in &plan.taken {
            if reported.insert(name.clone()) {
                warn!(pod = %name, "a pod that is not a mirror pod holds a static pod's name: no mirror pod");
            }
        }
        match apply_mirror_plan(&client, &node, plan).await {
            Ok(()) => last_error = None,
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    warn!(error = %message, "updating the mirror pods failed (retried)");
                } else {
                    debug!(error = %message, "updating the mirror pods failed (retried)");
                }
                last_error = Some(message);
            }
        }
    }
}

async fn apply_mirror_plan(client: &Client, node: &str, plan: MirrorPlan) -> kube::Result<()> {
    for mirror in plan.delete {
        let api: Api<Pod> = Api::namespaced(client.clone(), &mirror.namespace);
        // Upstream's kubelet deletes mirror pods at once, whatever grace a hand-made delete
        // asked for: no kubelet runs their containers, so there is nothing to wait for.
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(mirror.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&mirror.name, &params).await {
            Ok(_) => info!(namespace = %mirror.namespace, name = %mirror.name,
                "deleted a mirror pod that no current static pod has"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    if plan.create.is_empty() {
        return Ok(());
    }
    // Mirror pods are owned by the Node: none before it is registered.
    let Some(node_object) = Api::<Node>::all(client.clone()).get_opt(node).await? else {
        debug!(%node, "no Node yet: mirror pods wait");
        return Ok(());
    };
    let node_uid = node_object.metadata.uid.unwrap_or_default();
    for static_pod in plan.create {
        let mirror = mirror_pod(&static_pod, &node_uid);
        let namespace = mirror.metadata.namespace.clone().unwrap_or_default();
        let name = mirror.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        match api.create(&PostParams::default(), &mirror).await {
            Ok(_) => info!(%namespace, %name, "created the mirror pod of a static pod"),
            // Made in an earlier pass that the watch has not shown yet, or a pod of that
            // name that is no mirror (reported from the plan once the watch shows it).
            Err(kube::Error::Api(e)) if e.code == 409 => {
                debug!(%namespace, %name, "the mirror pod's name is taken");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(pod: &Pod) -> Value {
        serde_json::to_value(pod).unwrap_or_else(|e| panic!("{e}"))
    }

    fn static_value(file: &str, text: &str, node: &str) -> Value {
        value(&static_pod(file, text, node).unwrap_or_else(|e| panic!("{file}: {e}")))
    }

    #[test]
    fn a_manifest_becomes_a_static_pod_of_the_node_keyed_by_its_hash() {
        let text = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web",
            "uid": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}"#;
        let pod = static_value("web.json", text, "n0");
        assert_eq!(pod["metadata"]["name"], "web-n0");
        assert_eq!(pod["metadata"]["namespace"], "default");
        let annotations = &pod["metadata"]["annotations"];
        // The UID is the hash, whatever the manifest said.
        assert_eq!(pod["metadata"]["uid"], annotations[HASH_ANNOTATION]);
        assert_ne!(pod["metadata"]["uid"], "x");
        assert_eq!(annotations[SOURCE_ANNOTATION], "file");
        assert!(annotations[MIRROR_ANNOTATION].is_null());
        assert_eq!(pod["spec"]["nodeName"], "n0");
        assert_eq!(
            pod["spec"]["tolerations"][0],
            json!({"operator": "Exists", "effect": "NoExecute"})
        );
        let parsed: Pod = serde_json::from_value(pod.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert!(is_static(&parsed));
        assert!(!is_mirror(&parsed));
        // The same manifest hashes the same; a change, or another node, differently.
        assert_eq!(static_value("web.json", text, "n0"), pod);
        let changed = text.replace("\"i\"", "\"j\"");
        let other = static_value("web.json", &changed, "n0");
        assert_ne!(other["metadata"]["uid"], pod["metadata"]["uid"]);
        let elsewhere = static_value("web.json", text, "n1");
        assert_ne!(elsewhere["metadata"]["uid"], pod["metadata"]["uid"]);
        let renamed = static_value("web2.json", text, "n0");
        assert_ne!(renamed["metadata"]["uid"], pod["metadata"]["uid"]);
    }

    #[test]
    fn the_mirror_pod_is_the_static_pod_owned_by_the_node() {
        let text = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web",
            "labels": {"tier": "static"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}"#;
        let static_pod = static_pod("web.json", text, "n0").unwrap_or_else(|e| panic!("{e}"));
        let mirror = mirror_pod(&static_pod, "node-uid");
        let json = value(&mirror);
        assert!(json["metadata"]["uid"].is_null());
        assert_eq!(json["metadata"]["name"], "web-n0");
        assert_eq!(json["metadata"]["labels"]["tier"], "static");
        let annotations = &json["metadata"]["annotations"];
        assert_eq!(annotations[MIRROR_ANNOTATION], annotations[HASH_ANNOTATION]);
        assert_eq!(
            annotations[MIRROR_ANNOTATION].as_str(),
            static_pod.metadata.uid.as_deref()
        );
        assert_eq!(annotations[SOURCE_ANNOTATION], "file");
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(json["metadata"]["ownerReferences"][0]["name"], "n0");
        assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], "node-uid");
        assert_eq!(json["spec"], value(&static_pod)["spec"]);
        assert!(is_mirror(&mirror));
        assert!(!is_static(&mirror));
        // As the API server returns it (with its own UID), it mirrors the static pod.
        let mut stored = mirror.clone();
        stored.metadata.uid = Some("api-uid".to_owned());
        assert!(is_mirror_of(&stored, &static_pod));
        let changed = text.replace("\"i\"", "\"j\"");
        let newer = static_pod_or_panic("web.json", &changed);
        assert!(!is_mirror_of(&stored, &newer));
        stored.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!is_mirror_of(&stored, &static_pod));
    }

    fn static_pod_or_panic(file: &str, text: &str) -> Pod {
        static_pod(file, text, "n0").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn static_sandboxes_are_told_by_their_annotations() {
        let labels: HashMap<String, String> = [("uid".to_owned(), "h".to_owned())].into();
        let annotations: HashMap<String, String> = [
            (SOURCE_ANNOTATION.to_owned(), "file".to_owned()),
            (HASH_ANNOTATION.to_owned(), "h".to_owned()),
        ]
        .into();
        assert!(is_static_sandbox(&labels, &annotations, "uid"));
        let other: HashMap<String, String> = [("uid".to_owned(), "u".to_owned())].into();
        assert!(!is_static_sandbox(&other, &annotations, "uid"));
        assert!(!is_static_sandbox(&labels, &HashMap::new(), "uid"));
        assert!(!is_static_sandbox(&HashMap::new(), &annotations, "uid"));
    }

    #[test]
    fn an_api_pod_is_never_taken_for_a_static_one() {
        // The same annotations on a pod whose UID the API server chose.
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "x", "uid": "u",
            "annotations": {SOURCE_ANNOTATION: "file", HASH_ANNOTATION: "h"}}}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!is_static(&pod));
    }

    #[test]
    fn yaml_and_json_manifests_make_the_same_pod() {
        let json_text = r#"{"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "kube-system", "labels": {"tier": "static"}},
            "spec": {"containers": [{"name": "c", "image": "i", "command": ["sleep", "10"],
                "env": [{"name": "N", "value": "1"}]}]}}"#;
        let yaml_text = "# a comment\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  \
            namespace: kube-system\n  labels:\n    tier: static\nspec:\n  containers:\n  - name: c\n    \
            image: i\n    command: [sleep, \"10\"]\n    env:\n    - {name: N, value: \"1\"}\n";
        let from_json = static_value("m", json_text, "n0");
        let from_yaml = static_value("m", yaml_text, "n0");
        assert_eq!(from_yaml, from_json);
        assert_eq!(from_yaml["metadata"]["name"], "web-n0");
        assert_eq!(from_yaml["metadata"]["namespace"], "kube-system");
        assert_eq!(
            from_yaml["spec"]["containers"][0]["command"],
            json!(["sleep", "10"])
        );
        // Only the first document of a YAML stream counts.
        let two = format!("{yaml_text}---\napiVersion: v1\nkind: Service\n");
        assert_eq!(static_value("m", &two, "n0"), from_json);
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(matches!(
            static_pod("a", "{not json", "n0"),
            Err(ManifestError::Json { .. })
        ));
        assert!(matches!(
            static_pod("a", "kind: Pod\n  bad: [indent", "n0"),
            Err(ManifestError::Yaml { .. })
        ));
        // YAML, but not a pod.
        assert!(matches!(
            static_pod("a", "name: web", "n0"),
            Err(ManifestError::Invalid { .. })
        ));
        assert!(matches!(
            static_pod("a", "", "n0"),
            Err(ManifestError::Invalid { .. })
        ));
        assert!(matches!(
            static_pod(
                "a",
                r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}"#,
                "n0",
            ),
            Err(ManifestError::Invalid { .. })
        ));
        assert!(matches!(
            static_pod(
                "a",
                r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": []}}"#,
                "n0",
            ),
            Err(ManifestError::Invalid { .. })
        ));
        // A pod in shape only: a field of the wrong type.
        assert!(matches!(
            static_pod(
                "a",
                r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                    "spec": {"containers": [{"name": 3}]}}"#,
                "n0",
            ),
            Err(ManifestError::Invalid { .. })
        ));
    }

    fn pod_yaml(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  \
             - name: c\n    image: i\n"
        )
    }

    fn names(pods: &StaticPodSet) -> Vec<String> {
        let mut names: Vec<String> = pods
            .values()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_visible_file_is_read_whatever_its_name() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a.yaml"), pod_yaml("a"))?;
        std::fs::write(dir.path().join("b.yml"), pod_yaml("b"))?;
        std::fs::write(
            dir.path().join("c.json"),
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c"},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}"#,
        )?;
        // Upstream reads any name: the extension does not matter.
        std::fs::write(dir.path().join("d.manifest"), pod_yaml("d"))?;
        std::fs::write(dir.path().join(".e.yaml.swp"), pod_yaml("e"))?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub").join("f.yaml"), pod_yaml("f"))?;
        let files = manifests(dir.path());
        let file_names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(file_names, ["a.yaml", "b.yml", "c.json", "d.manifest"]);
        let mut reported = HashSet::new();
        let pods = read_dir(dir.path(), "n0", &mut reported);
        assert!(reported.is_empty(), "{reported:?}");
        assert_eq!(names(&pods), ["a-n0", "b-n0", "c-n0", "d-n0"]);
        for (uid, pod) in &pods {
            assert_eq!(pod.metadata.uid.as_ref(), Some(uid));
            assert!(is_static(pod));
        }
        Ok(())
    }

    #[test]
    fn a_bad_manifest_leaves_the_others_alone() {
        let files = vec![
            ("a.yaml".to_owned(), Ok(pod_yaml("a"))),
            ("broken.json".to_owned(), Ok("{not json".to_owned())),
            ("broken.yaml".to_owned(), Ok("spec: [".to_owned())),
            (
                "service.yaml".to_owned(),
                Ok("apiVersion: v1\nkind: Service\n".to_owned()),
            ),
            (
                "unreadable.yaml".to_owned(),
                Err(std::io::Error::from(std::io::ErrorKind::InvalidData)),
            ),
            ("z.yaml".to_owned(), Ok(pod_yaml("z"))),
            // The same pod again: the first manifest keeps it.
            ("zz.yaml".to_owned(), Ok(pod_yaml("a"))),
        ];
        let (pods, errors) = static_pods(files, "n0");
        assert_eq!(names(&pods), ["a-n0", "z-n0"]);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 5, "{messages:?}");
        for (message, file) in messages.iter().zip([
            "broken.json",
            "broken.yaml",
            "service.yaml",
            "unreadable.yaml",
            "zz.yaml",
        ]) {
            assert!(message.starts_with(&format!("{file}: ")), "{message}");
        }
        assert!(matches!(errors[0], ManifestError::Json { .. }));
        assert!(matches!(errors[1], ManifestError::Yaml { .. }));
        assert!(matches!(errors[2], ManifestError::Invalid { .. }));
        assert!(matches!(errors[3], ManifestError::Read { .. }));
        assert!(matches!(errors[4], ManifestError::Duplicate { .. }));
        assert!(messages[4].contains("a.yaml"), "{}", messages[4]);
    }

    fn set(pods: &[&Pod]) -> StaticPodSet {
        pods.iter()
            .map(|p| {
                (
                    p.metadata.uid.clone().unwrap_or_default(),
                    Arc::new((*p).clone()),
                )
            })
            .collect()
    }

    fn stored_mirror(static_pod: &Pod, uid: &str) -> Arc<Pod> {
        let mut mirror = mirror_pod(static_pod, "node-uid");
        mirror.metadata.uid = Some(uid.to_owned());
        Arc::new(mirror)
    }

    fn api_pod(name: &str, uid: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
                "uid": uid}, "spec": {"nodeName": "n0", "containers": []}}))
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn delete(name: &str, uid: &str) -> MirrorRef {
        MirrorRef {
            namespace: "default".to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        }
    }

    #[test]
    fn mirror_pods_follow_the_static_pods() {
        let a = static_pod_or_panic("a.yaml", &pod_yaml("a"));
        let b = static_pod_or_panic("b.yaml", &pod_yaml("b"));
        let b2 = static_pod_or_panic("b.yaml", &pod_yaml("b").replace("image: i", "image: j"));
        let c = static_pod_or_panic("c.yaml", &pod_yaml("c"));
        let statics = set(&[&a, &b2, &c]);
        let mut deleted_by_hand = (*stored_mirror(&c, "mc")).clone();
        deleted_by_hand.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let gone = static_pod_or_panic("gone.yaml", &pod_yaml("gone"));
        let api = vec![
            // Current: kept.
            stored_mirror(&a, "ma"),
            // Outdated (its manifest changed): deleted, replaced once gone.
            stored_mirror(&b, "mb"),
            // Deleted by hand: its deletion finished, then made again.
            Arc::new(deleted_by_hand),
            // No static pod any more: deleted.
            stored_mirror(&gone, "mgone"),
            // An ordinary pod: none of the kubelet's mirror business.
            api_pod("web", "w"),
        ];
        let plan = mirror_plan(&statics, &api);
        assert_eq!(
            plan.delete,
            vec![
                delete("b-n0", "mb"),
                delete("c-n0", "mc"),
                delete("gone-n0", "mgone")
            ]
        );
        assert!(plan.create.is_empty(), "{:?}", plan.create);
        assert!(plan.taken.is_empty());
        // Once the API shows them gone, the missing mirrors are made.
        let api = vec![stored_mirror(&a, "ma"), api_pod("web", "w")];
        let plan = mirror_plan(&statics, &api);
        assert!(plan.delete.is_empty());
        let created: Vec<Option<String>> = plan
            .create
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(created, [Some("b-n0".to_owned()), Some("c-n0".to_owned())]);
        assert_eq!(plan.create[0].metadata.uid, b2.metadata.uid);
        // An API pod that holds a static pod's name is left alone, and no mirror is made.
        let plan = mirror_plan(&set(&[&a]), &[api_pod("a-n0", "x")]);
        assert_eq!(
            plan,
            MirrorPlan {
                taken: vec!["default/a-n0".to_owned()],
                ..MirrorPlan::default()
            }
        );
    }
}
