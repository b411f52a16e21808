//! The files of the API-data volumes (configMap, secret, downwardAPI, projected), computed
//! as plain data from the pod and the objects fetched for it: keys projected to paths
//! (`items`, or every key), file modes (`items[].mode`, else `defaultMode`, else 0644),
//! `optional` sources that may be missing, downward API values, and service-account tokens
//! obtained beforehand.
//!
//! Owns that computation; it must not do I/O (fetching is the volume manager's job, writing
//! is the atomic writer's).
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, Secret,
};

use super::atomic_writer::{FileData, Payload};
use crate::kubelet::env::{self, Allocatable, PodFields};

/// The mode of files whose source sets none.
pub const DEFAULT_MODE: i32 = 0o644;

/// Why a volume's files cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// A required ConfigMap or Secret does not exist.
    #[error("{kind} \"{name}\" not found")]
    NotFound {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An `items` key is not in the object.
    #[error("{kind} references non-existent {kind} key: {key}")]
    MissingKey {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The key.
        key: String,
    },
    /// A downward API item cannot be resolved.
    #[error("downward API item {path}: {source}")]
    Downward {
        /// The item's path.
        path: String,
        /// Why.
        source: env::EnvError,
    },
    /// A service-account token was not obtained.
    #[error("no service account token for {path}")]
    NoToken {
        /// The projected path.
        path: String,
    },
    /// A mode outside 0..=0777.
    #[error("invalid file mode {0:o}")]
    InvalidMode(i32),
}

fn mode(mode: Option<i32>, default: i32) -> Result<u32, ProjectionError> {
    let value = mode.unwrap_or(default);
    if !(0..=0o777).contains(&value) {
        return Err(ProjectionError::InvalidMode(value));
    }
    Ok(value as u32)
}

/// A ConfigMap's data and binary data as bytes.
pub fn config_map_bytes(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// A Secret's data (and write-only stringData, should a server keep it) as bytes.
pub fn secret_bytes(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.as_bytes().to_vec());
    }
    out
}

/// Projects an object's keys: the `items` (key → path, own mode) or every key under its
/// own name. A missing object is empty when `optional`, else an error; so is a missing
/// item key.
pub fn project_keys(
    kind: &'static str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: i32,
    payload: &mut Payload,
) -> Result<(), ProjectionError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(ProjectionError::NotFound {
            kind,
            name: name.to_owned(),
        });
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, content) in data {
                let mode = mode(None, default_mode)?;
                payload.insert(key, FileData { content, mode });
            }
        }
        Some(items) => {
            for item in items {
                let Some(content) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(ProjectionError::MissingKey {
                        kind,
                        key: item.key.clone(),
                    });
                };
                payload.insert(
                    item.path.clone(),
                    FileData {
                        content: content.clone(),
                        mode: mode(item.mode, default_mode)?,
                    },
                );
            }
        }
    }
    Ok(())
}

/// Adds downward API files: a `fieldRef` (metadata name, namespace, uid, labels,
/// annotations) or a `resourceFieldRef` (of a named container, with divisor) each.
pub fn project_downward(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    allocatable: &Allocatable,
    payload: &mut Payload,
) -> Result<(), ProjectionError> {
    for item in items {
        let fail = |source| ProjectionError::Downward {
            path: item.path.clone(),
            source,
        };
        let value = if let Some(field) = &item.field_ref {
            env::field_value(pod, &field.field_path, &PodFields::default(), true).map_err(fail)?
        } else if let Some(r) = &item.resource_field_ref {
            let container = r.container_name.clone().unwrap_or_default();
            env::resource_value(
                pod,
                &container,
                &r.resource,
                r.divisor.as_ref(),
                allocatable,
            )
            .map_err(fail)?
        } else {
            String::new()
        };
        payload.insert(
            item.path.clone(),
            FileData {
                content: value.into_bytes(),
                mode: mode(item.mode, default_mode)?,
            },
        );
    }
    Ok(())
}

/// The objects and tokens a projected volume reads, fetched beforehand.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// ConfigMaps by name (`None`: does not exist).
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    /// Secrets by name (`None`: does not exist).
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// Service-account tokens by the index of their source.
    pub tokens: BTreeMap<usize, String>,
}

/// The files of a projected volume, source by source (a later source's path wins).
pub fn project_projected(
    pod: &Pod,
    volume: &ProjectedVolumeSource,
    fetched: &Fetched,
    allocatable: &Allocatable,
) -> Result<Payload, ProjectionError> {
    let default_mode = volume.default_mode.unwrap_or(DEFAULT_MODE);
    let mut payload = Payload::new();
    for (index, source) in volume.sources.iter().flatten().enumerate() {
        if let Some(cm) = &source.config_map {
            let data = fetched
                .config_maps
                .get(&cm.name)
                .and_then(Option::as_ref)
                .map(config_map_bytes);
            project_keys(
                "configmap",
                &cm.name,
                data,
                cm.items.as_deref(),
                cm.optional == Some(true),
                default_mode,
                &mut payload,
            )?;
        }
        if let Some(secret) = &source.secret {
            let data = fetched
                .secrets
                .get(&secret.name)
                .and_then(Option::as_ref)
                .map(secret_bytes);
            project_keys(
                "secret",
                &secret.name,
                data,
                secret.items.as_deref(),
                secret.optional == Some(true),
                default_mode,
                &mut payload,
            )?;
        }
        if let Some(downward) = &source.downward_api {
            project_downward(
                pod,
                downward.items.as_deref().unwrap_or_default(),
                default_mode,
                allocatable,
                &mut payload,
            )?;
        }
        if let Some(token) = &source.service_account_token {
            let text = fetched
                .tokens
                .get(&index)
                .ok_or_else(|| ProjectionError::NoToken {
                    path: token.path.clone(),
                })?;
            payload.insert(
                token.path.clone(),
                FileData {
                    content: text.as_bytes().to_vec(),
                    mode: mode(None, default_mode)?,
                },
            );
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(payload: &Payload, path: &str) -> Option<(String, u32)> {
        payload
            .get(path)
            .map(|f| (String::from_utf8_lossy(&f.content).into_owned(), f.mode))
    }

    #[test]
    fn keys_project_to_paths_with_modes() -> Result<(), ProjectionError> {
        let data: BTreeMap<String, Vec<u8>> = [
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
        ]
        .into();
        let mut all = Payload::new();
        project_keys(
            "configmap",
            "cm",
            Some(data.clone()),
            None,
            false,
            0o600,
            &mut all,
        )?;
        assert_eq!(text(&all, "a"), Some(("1".into(), 0o600)));
        assert_eq!(text(&all, "b"), Some(("2".into(), 0o600)));

        let items: Vec<KeyToPath> = serde_json::from_value(json!([
            {"key": "a", "path": "dir/renamed", "mode": 0o400}, {"key": "b", "path": "b.txt"}]))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut some = Payload::new();
        project_keys(
            "configmap",
            "cm",
            Some(data.clone()),
            Some(&items),
            false,
            DEFAULT_MODE,
            &mut some,
        )?;
        assert_eq!(some.len(), 2);
        assert_eq!(text(&some, "dir/renamed"), Some(("1".into(), 0o400)));
        assert_eq!(text(&some, "b.txt"), Some(("2".into(), 0o644)));

        let missing: Vec<KeyToPath> = serde_json::from_value(json!([{"key": "zz", "path": "z"}]))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Payload::new();
        assert_eq!(
            project_keys(
                "configmap",
                "cm",
                Some(data.clone()),
                Some(&missing),
                false,
                DEFAULT_MODE,
                &mut out
            ),
            Err(ProjectionError::MissingKey {
                kind: "configmap",
                key: "zz".into()
            })
        );
        project_keys(
            "configmap",
            "cm",
            Some(data),
            Some(&missing),
            true,
            DEFAULT_MODE,
            &mut out,
        )?;
        assert!(out.is_empty());
        assert_eq!(
            project_keys("secret", "s", None, None, false, DEFAULT_MODE, &mut out)
                .map_err(|e| e.to_string()),
            Err("secret \"s\" not found".to_owned())
        );
        project_keys("secret", "s", None, None, true, DEFAULT_MODE, &mut out)?;
        assert!(out.is_empty());
        let one: BTreeMap<String, Vec<u8>> = [("k".to_owned(), b"v".to_vec())].into();
        assert_eq!(
            project_keys("secret", "s", Some(one), None, false, 0o1777, &mut out),
            Err(ProjectionError::InvalidMode(0o1777))
        );
        Ok(())
    }

    #[test]
    fn projected_volumes_combine_sources() -> Result<(), ProjectionError> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "tier": "a"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "128Mi"}}}]}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let volume: ProjectedVolumeSource = serde_json::from_value(json!({
            "defaultMode": 0o640,
            "sources": [
                {"configMap": {"name": "cm", "items": [{"key": "k", "path": "cm-k"}]}},
                {"secret": {"name": "sec"}},
                {"downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o444},
                    {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}},
                {"serviceAccountToken": {"path": "token", "audience": "api"}},
            ]}))
        .unwrap_or_else(|e| panic!("{e}"));
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "cm"}, "data": {"k": "v", "other": "x"}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "sec"}, "data": {"pw": "c2VjcmV0"}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut fetched = Fetched {
            config_maps: [("cm".to_owned(), Some(cm))].into(),
            secrets: [("sec".to_owned(), Some(secret))].into(),
            tokens: BTreeMap::new(),
        };
        assert_eq!(
            project_projected(&pod, &volume, &fetched, &Allocatable::new()),
            Err(ProjectionError::NoToken {
                path: "token".into()
            })
        );
        fetched.tokens.insert(3, "jwt".into());
        let payload = project_projected(&pod, &volume, &fetched, &Allocatable::new())?;
        assert_eq!(text(&payload, "cm-k"), Some(("v".into(), 0o640)));
        assert_eq!(text(&payload, "pw"), Some(("secret".into(), 0o640)));
        assert_eq!(
            text(&payload, "labels"),
            Some(("app=\"web\"\ntier=\"a\"".into(), 0o640))
        );
        assert_eq!(text(&payload, "name"), Some(("p".into(), 0o444)));
        assert_eq!(text(&payload, "mem"), Some(("128".into(), 0o640)));
        assert_eq!(text(&payload, "token"), Some(("jwt".into(), 0o640)));
        assert_eq!(payload.len(), 6);
        Ok(())
    }
}
