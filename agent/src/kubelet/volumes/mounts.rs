//! A container's CRI mounts from its `volumeMounts` and the pod's prepared volumes:
//! `readOnly` (forced for the API-data volumes, as upstream), `subPath` / `subPathExpr`
//! (expanded over the container's environment; relative, without `..`, created as a
//! directory when missing, and never resolving outside its volume) and `mountPropagation`.
//!
//! Owns that translation; it must not mount anything itself (the runtime bind-mounts).
use std::{
    fs,
    path::{Component, Path, PathBuf},
};

use k8s_cri::v1::{KeyValue, Mount, MountPropagation};
use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::PodVolumes;
use crate::kubelet::env::expand;

/// Why a container's mounts cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    /// A volumeMount names a volume the pod does not have (or that is not ready).
    #[error("volumeMount {0:?} names no prepared volume of the pod")]
    UnknownVolume(String),
    /// A subPath is absolute, climbs with `..`, or resolves outside its volume.
    #[error("invalid subPath {0:?}")]
    InvalidSubPath(String),
    /// The subPath directory could not be made or resolved.
    #[error("subPath {path}: {source}")]
    SubPathIo {
        /// The path on the node.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An unknown mountPropagation.
    #[error("invalid mountPropagation {0:?}")]
    InvalidPropagation(String),
}

fn check_relative(sub: &str) -> Result<(), MountsError> {
    let fine = Path::new(sub)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if fine {
        Ok(())
    } else {
        Err(MountsError::InvalidSubPath(sub.to_owned()))
    }
}

/// The node path of a subPath inside `volume`: walked one component at a time, each
/// existing one resolved (symlinks followed) and required to stay inside the volume, each
/// missing one created as a directory inside it — so nothing is ever made outside.
fn sub_path(volume: &Path, sub: &str) -> Result<PathBuf, MountsError> {
    check_relative(sub)?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| MountsError::SubPathIo { path, source }
    };
    let base = fs::canonicalize(volume).map_err(io(volume))?;
    let mut current = base.clone();
    for component in Path::new(sub).components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let next = current.join(name);
        if fs::symlink_metadata(&next).is_ok() {
            let resolved = fs::canonicalize(&next).map_err(io(&next))?;
            if !resolved.starts_with(&base) {
                return Err(MountsError::InvalidSubPath(sub.to_owned()));
            }
            current = resolved;
        } else {
            fs::create_dir(&next).map_err(io(&next))?;
            current = next;
        }
    }
    Ok(current)
}

fn propagation(mount: &VolumeMount) -> Result<i32, MountsError> {
    Ok(match mount.mount_propagation.as_deref() {
        None | Some("") | Some("None") => MountPropagation::PropagationPrivate,
        Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
        Some("Bidirectional") => MountPropagation::PropagationBidirectional,
        Some(other) => return Err(MountsError::InvalidPropagation(other.to_owned())),
    } as i32)
}

/// The CRI mounts of a container.
pub fn container_mounts(
    container: &Container,
    volumes: &PodVolumes,
    env: &[KeyValue],
) -> Result<Vec<Mount>, MountsError> {
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(&mount.name)
            .ok_or_else(|| MountsError::UnknownVolume(mount.name.clone()))?;
        let sub = match (&mount.sub_path, &mount.sub_path_expr) {
            (Some(sub), _) if !sub.is_empty() => Some(sub.clone()),
            (_, Some(expr)) if !expr.is_empty() => Some(expand(expr, |key| {
                env.iter()
                    .rev()
                    .find(|kv| kv.key == key)
                    .map(|kv| kv.value.clone())
            })),
            _ => None,
        };
        let host_path = match sub {
            Some(sub) => sub_path(&volume.host_path, &sub)?,
            None => volume.host_path.clone(),
        };
        out.push(Mount {
            container_path: mount.mount_path.clone(),
            host_path: host_path.to_string_lossy().into_owned(),
            readonly: volume.read_only || mount.read_only == Some(true),
            selinux_relabel: false,
            propagation: propagation(mount)?,
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::volumes::PreparedVolume;
    use serde_json::json;

    #[test]
    fn mounts_carry_read_only_sub_paths_and_propagation() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let config = dir.path().join("config");
        fs::create_dir_all(&data)?;
        fs::create_dir_all(&config)?;
        std::os::unix::fs::symlink("/etc", data.join("escape"))?;
        let mut volumes = PodVolumes::new();
        volumes.insert(
            "data".into(),
            PreparedVolume {
                host_path: data.clone(),
                read_only: false,
            },
        );
        volumes.insert(
            "config".into(),
            PreparedVolume {
                host_path: config.clone(),
                read_only: true,
            },
        );
        let container: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "data", "mountPath": "/ro", "readOnly": true, "mountPropagation": "HostToContainer"},
            {"name": "data", "mountPath": "/sub", "subPath": "a/b"},
            {"name": "data", "mountPath": "/expr", "subPathExpr": "pods/$(POD)"},
            {"name": "config", "mountPath": "/config"},
        ]}))?;
        let env = vec![KeyValue {
            key: "POD".into(),
            value: "web".into(),
        }];
        let mounts = container_mounts(&container, &volumes, &env)?;
        let canonical = fs::canonicalize(&data)?;
        let summary: Vec<(&str, String, bool)> = mounts
            .iter()
            .map(|m| (m.container_path.as_str(), m.host_path.clone(), m.readonly))
            .collect();
        assert_eq!(
            summary,
            [
                ("/data", data.display().to_string(), false),
                ("/ro", data.display().to_string(), true),
                ("/sub", canonical.join("a/b").display().to_string(), false),
                (
                    "/expr",
                    canonical.join("pods/web").display().to_string(),
                    false
                ),
                ("/config", config.display().to_string(), true),
            ]
        );
        assert!(data.join("a/b").is_dir());
        assert_eq!(
            mounts[1].propagation,
            MountPropagation::PropagationHostToContainer as i32
        );
        assert_eq!(
            mounts[0].propagation,
            MountPropagation::PropagationPrivate as i32
        );

        for bad in [
            "../x",
            "/abs",
            "escape",
            "escape/passwd",
            "escape/corten-never-made",
        ] {
            let c: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
                {"name": "data", "mountPath": "/x", "subPath": bad}]}))?;
            assert!(container_mounts(&c, &volumes, &env).is_err(), "{bad}");
        }
        assert!(!Path::new("/etc/corten-never-made").exists());
        let unknown: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
            {"name": "nope", "mountPath": "/x"}]}))?;
        assert!(matches!(
            container_mounts(&unknown, &volumes, &env),
            Err(MountsError::UnknownVolume(_))
        ));
        Ok(())
    }
}
