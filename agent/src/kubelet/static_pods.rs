//! Static pods (upstream's file pod source): every regular file in the agent's manifest
//! directory (`<data dir>/manifests`, looked at every two seconds) is a pod manifest in YAML
//! or JSON, whatever its name ends in, as upstream reads them; files whose names start with a
//! dot are skipped and directories are not entered. A manifest is a pod of this node named
//! `<name>-<node>`, in its namespace or `default`. It reaches the pod worker
//! as its mirror pod in the API: spec.nodeName set to this node, annotated
//! `kubernetes.io/config.mirror` (and `config.hash`, `config.source: file`) with a hash of
//! the manifest, owned by the Node, tolerating every NoExecute taint as upstream's static pods
//! do. A changed manifest replaces the pod (the old mirror is deleted, then the new one
//! created); a removed manifest deletes its mirror pod, and the pod worker stops the
//! containers before the pod leaves the API; a mirror pod deleted by hand comes back.
//!
//! A manifest that does not parse or is not a v1 Pod is logged once and skipped; the others
//! still run. Unlike upstream, the containers run from the mirror pod, so they do not run while the API
//! server is unreachable, and deleting the mirror pod restarts them.
//!
//! Owns reading manifests and the mirror pods' lifecycle; it never touches containers.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    Api, Client,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

/// The annotation that marks a mirror pod; its value is the static pod's hash.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The static pod's hash.
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Where the pod came from (`file`).
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";

/// How often the manifest directory is read.
const PERIOD: Duration = Duration::from_secs(2);

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
}

/// FNV-1a, 64 bits: stable across builds, so a restarted agent finds its mirror pods current.
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

/// The mirror pod for the manifest `text` of file `file` on node `node` (whose UID is
/// `node_uid`).
pub fn mirror_pod(
    file: &str,
    text: &str,
    node: &str,
    node_uid: &str,
) -> Result<Value, ManifestError> {
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
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "generateName",
        "managedFields",
    ] {
        metadata.remove(field);
    }
    metadata.insert("name".to_owned(), json!(format!("{name}-{node}")));
    metadata.insert("namespace".to_owned(), json!(namespace));
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[HASH_ANNOTATION] = json!(hash);
    annotations[MIRROR_ANNOTATION] = json!(hash);
    annotations[SOURCE_ANNOTATION] = json!("file");
    metadata.insert(
        "ownerReferences".to_owned(),
        json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid,
            "controller": true}]),
    );
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
    Ok(pod)
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

/// The mirror pods the manifests ask for, by (namespace, name), and the manifests that are
/// not pods; one bad manifest leaves the others alone.
fn wanted_mirrors(
    files: Vec<(String, std::io::Result<String>)>,
    node: &str,
    node_uid: &str,
) -> (BTreeMap<(String, String), Value>, Vec<ManifestError>) {
    let mut wanted = BTreeMap::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        let pod = text
            .map_err(|source| ManifestError::Read {
                file: file.clone(),
                source,
            })
            .and_then(|text| mirror_pod(&file, &text, node, node_uid));
        match pod {
            Ok(pod) => {
                let key = (
                    pod["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
                wanted.insert(key, pod);
            }
            Err(e) => errors.push(e),
        }
    }
    (wanted, errors)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Keeps the mirror pods in the API in step with the manifests in `dir`, forever.
pub async fn run(client: Client, node: String, dir: PathBuf) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!(dir = %dir.display(), error = %e, "cannot make the static pod directory");
    }
    let mut reported: HashSet<String> = HashSet::new();
    loop {
        if let Err(e) = sync(&client, &node, &dir, &mut reported).await {
            warn!(error = %e, "syncing static pods failed");
        }
        tokio::time::sleep(PERIOD).await;
    }
}

async fn sync(
    client: &Client,
    node: &str,
    dir: &Path,
    reported: &mut HashSet<String>,
) -> kube::Result<()> {
    let files = manifests(dir);
    let all: Api<Pod> = Api::all(client.clone());
    let on_node = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mirrors: BTreeMap<(String, String), Pod> = on_node
        .items
        .into_iter()
        .filter(|p| annotation(p, MIRROR_ANNOTATION).is_some())
        .filter(|p| annotation(p, SOURCE_ANNOTATION) == Some("file"))
        .map(|p| {
            let key = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            (key, p)
        })
        .collect();
    if files.is_empty() && mirrors.is_empty() {
        return Ok(());
    }
    let node_uid = Api::<Node>::all(client.clone())
        .get(node)
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    let (wanted, errors) = wanted_mirrors(files, node, &node_uid);
    for e in errors {
        let message = e.to_string();
        if reported.insert(message.clone()) {
            warn!(error = %message, "skipping a static pod manifest");
        }
    }
    for ((namespace, name), pod) in &mirrors {
        let current = wanted
            .get(&(namespace.clone(), name.clone()))
            .is_some_and(|w| {
                w["metadata"]["annotations"][MIRROR_ANNOTATION].as_str()
                    == annotation(pod, MIRROR_ANNOTATION)
            });
        if current || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        info!(%namespace, %name, "deleting the mirror pod of a removed or changed static pod");
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    for ((namespace, name), pod) in wanted {
        if mirrors.contains_key(&(namespace.clone(), name.clone())) {
            // Current, or being deleted (replaced once it is gone).
            continue;
        }
        let object: Pod = match serde_json::from_value(pod) {
            Ok(object) => object,
            Err(e) => {
                let message = format!("{namespace}/{name}: {e}");
                if reported.insert(message.clone()) {
                    warn!(error = %message, "skipping a static pod manifest");
                }
                continue;
            }
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => info!(%namespace, %name, "created the mirror pod of a static pod"),
            // A pod of that name that is not our mirror: upstream also leaves it alone.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let message = format!("{namespace}/{name}: {}", e.message);
                if reported.insert(message.clone()) {
                    warn!(error = %message, "cannot create a mirror pod");
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_becomes_a_mirror_pod_of_the_node() {
        let text = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web",
            "uid": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}"#;
        let pod = mirror_pod("web.json", text, "n0", "node-uid").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pod["metadata"]["name"], "web-n0");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert!(pod["metadata"]["uid"].is_null());
        assert_eq!(pod["spec"]["nodeName"], "n0");
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations[MIRROR_ANNOTATION], annotations[HASH_ANNOTATION]);
        assert_eq!(annotations[SOURCE_ANNOTATION], "file");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "node-uid");
        assert_eq!(
            pod["spec"]["tolerations"][0],
            json!({"operator": "Exists", "effect": "NoExecute"})
        );
        // The same manifest hashes the same; a change, or another node, differently.
        let again =
            mirror_pod("web.json", text, "n0", "node-uid").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, pod);
        let changed = text.replace("\"i\"", "\"j\"");
        let other = mirror_pod("web.json", &changed, "n0", "u").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            other["metadata"]["annotations"][HASH_ANNOTATION],
            annotations[HASH_ANNOTATION]
        );
        let elsewhere = mirror_pod("web.json", text, "n1", "u").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            elsewhere["metadata"]["annotations"][HASH_ANNOTATION],
            annotations[HASH_ANNOTATION]
        );
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
        let from_json =
            mirror_pod("m", json_text, "n0", "u").unwrap_or_else(|e| panic!("json: {e}"));
        let from_yaml =
            mirror_pod("m", yaml_text, "n0", "u").unwrap_or_else(|e| panic!("yaml: {e}"));
        assert_eq!(from_yaml, from_json);
        assert_eq!(from_yaml["metadata"]["name"], "web-n0");
        assert_eq!(from_yaml["metadata"]["namespace"], "kube-system");
        assert_eq!(
            from_yaml["spec"]["containers"][0]["command"],
            json!(["sleep", "10"])
        );
        // Only the first document of a YAML stream counts.
        let two = format!("{yaml_text}---\napiVersion: v1\nkind: Service\n");
        assert_eq!(
            mirror_pod("m", &two, "n0", "u").unwrap_or_else(|e| panic!("{e}")),
            from_json
        );
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(matches!(
            mirror_pod("a", "{not json", "n0", "u"),
            Err(ManifestError::Json { .. })
        ));
        assert!(matches!(
            mirror_pod("a", "kind: Pod\n  bad: [indent", "n0", "u"),
            Err(ManifestError::Yaml { .. })
        ));
        // YAML, but not a pod.
        assert!(matches!(
            mirror_pod("a", "name: web", "n0", "u"),
            Err(ManifestError::Invalid { .. })
        ));
        assert!(matches!(
            mirror_pod("a", "", "n0", "u"),
            Err(ManifestError::Invalid { .. })
        ));
        assert!(matches!(
            mirror_pod(
                "a",
                r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}"#,
                "n0",
                "u"
            ),
            Err(ManifestError::Invalid { .. })
        ));
        assert!(matches!(
            mirror_pod(
                "a",
                r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": []}}"#,
                "n0",
                "u"
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
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.yaml", "b.yml", "c.json", "d.manifest"]);
        let (wanted, errors) = wanted_mirrors(files, "n0", "u");
        assert!(errors.is_empty(), "{errors:?}");
        let pods: Vec<&str> = wanted.keys().map(|(_, name)| name.as_str()).collect();
        assert_eq!(pods, ["a-n0", "b-n0", "c-n0", "d-n0"]);
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
        ];
        let (wanted, errors) = wanted_mirrors(files, "n0", "u");
        let pods: Vec<&str> = wanted.keys().map(|(_, name)| name.as_str()).collect();
        assert_eq!(pods, ["a-n0", "z-n0"]);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        for (message, file) in messages.iter().zip([
            "broken.json",
            "broken.yaml",
            "service.yaml",
            "unreadable.yaml",
        ]) {
            assert!(message.starts_with(&format!("{file}: ")), "{message}");
        }
        assert!(matches!(errors[0], ManifestError::Json { .. }));
        assert!(matches!(errors[1], ManifestError::Yaml { .. }));
        assert!(matches!(errors[2], ManifestError::Invalid { .. }));
        assert!(matches!(errors[3], ManifestError::Read { .. }));
    }
}
