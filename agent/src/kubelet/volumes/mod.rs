//! Pod volumes on this node (DESIGN.md §7), laid out as upstream's kubelet lays them:
//! `<pods dir>/<pod uid>/volumes/<plugin>/<name>` with plugins `kubernetes.io~empty-dir`,
//! `~configmap`, `~secret`, `~downward-api` and `~projected`; hostPath volumes are the host
//! path itself after its [`host_path`] type check.
//!
//! emptyDir is a 0777 directory (a tmpfs with `medium: Memory`, sized by `sizeLimit`);
//! configMap files live on disk, secret, downwardAPI and projected files on a tmpfs; their
//! files are written by the [`atomic_writer`] from the payload [`projection`] computes, and
//! re-synced every [`RESYNC`] so updates of ConfigMaps and Secrets reach running pods.
//! Projected service-account tokens come from the TokenRequest API
//! (`serviceaccounts/<name>/token`, bound to the pod) and are renewed at 80 % of their life;
//! when a token cannot be had the volume is not ready and the pod does not start.
//!
//! Owns setting up and tearing down a pod's volume directories. It must never delete or
//! follow anything outside `<pods dir>/<pod uid>` (hostPath contents are never touched on
//! teardown), and it does not call the runtime: [`mounts`] hands the bind mounts to CRI.
pub mod atomic_writer;
pub mod host_path;
pub mod mounts;
pub mod projection;
pub mod tmpfs;

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{ConfigMap, Pod, Secret, ServiceAccount, Volume},
};
use kube::{api::PostParams, Api, Client};
use serde_json::json;
use tracing::{debug, info};

use super::env::{get_optional, Allocatable};
use atomic_writer::Payload;
use projection::{Fetched, ProjectionError, DEFAULT_MODE};

/// How often the files of API-data volumes are refreshed.
pub const RESYNC: Duration = Duration::from_secs(10);
/// Token lifetime asked for when the source sets none (upstream's default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// A volume ready to be bind-mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    /// Where it is on the node.
    pub host_path: PathBuf,
    /// Whether every mount of it is read-only (configMap, secret, downwardAPI, projected).
    pub read_only: bool,
}

/// A pod's prepared volumes by name.
pub type PodVolumes = BTreeMap<String, PreparedVolume>;

/// What went wrong setting up one volume.
#[derive(Debug, thiserror::Error)]
pub enum SetUpFailure {
    /// The hostPath type check failed.
    #[error(transparent)]
    HostPath(#[from] host_path::HostPathError),
    /// Mounting its tmpfs failed.
    #[error(transparent)]
    Mount(#[from] tmpfs::MountError),
    /// Its files could not be computed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// Its files could not be written.
    #[error(transparent)]
    Write(#[from] atomic_writer::WriteError),
    /// Reading an object, or requesting a token, failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The API answered a TokenRequest without a token.
    #[error("the TokenRequest for service account {0:?} returned no token")]
    EmptyToken(String),
    /// A directory could not be made.
    #[error("creating {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A volume type the kubelet does not support.
    #[error("unsupported volume type")]
    Unsupported,
}

/// Why a pod's volumes are not ready, or could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// One volume could not be set up (upstream's `FailedMount` event message).
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {cause}")]
    SetUp {
        /// The volume.
        volume: String,
        /// Why.
        #[source]
        cause: Box<SetUpFailure>,
    },
    /// A tmpfs could not be unmounted; the directory is kept.
    #[error("unmounting {path}: {cause}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        cause: tmpfs::MountError,
    },
    /// Something is still mounted under the pod's directory; nothing was removed.
    #[error("{0} is still mounted; the pod's volume directory is kept")]
    StillMounted(String),
    /// Removing the pod's directory failed.
    #[error("removing {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The plugin directory name of a volume kind (upstream's escaped plugin names).
pub fn plugin_dir(volume: &Volume) -> Option<&'static str> {
    if volume.empty_dir.is_some() {
        Some("kubernetes.io~empty-dir")
    } else if volume.config_map.is_some() {
        Some("kubernetes.io~configmap")
    } else if volume.secret.is_some() {
        Some("kubernetes.io~secret")
    } else if volume.downward_api.is_some() {
        Some("kubernetes.io~downward-api")
    } else if volume.projected.is_some() {
        Some("kubernetes.io~projected")
    } else {
        None
    }
}

fn bytes_of(quantity: &str) -> Option<u64> {
    let milli = super::runtime_config::parse_milli(quantity)?;
    u64::try_from(milli / 1000).ok()
}

/// The pod's memory limit: the app containers' limits summed (or the largest init
/// container's, when larger), when every container has one.
fn pod_memory_limit(pod: &Pod) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &k8s_openapi::api::core::v1::Container| {
        let q = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        bytes_of(&q.0)
    };
    let mut app = 0u64;
    for container in &spec.containers {
        app = app.saturating_add(limit(container)?);
    }
    let mut init = 0u64;
    for container in spec.init_containers.iter().flatten() {
        init = init.max(limit(container)?);
    }
    Some(app.max(init))
}

/// The size of a memory-backed emptyDir's tmpfs, as upstream sizes it: the pod's memory
/// limit (the node's allocatable memory when the pod has none), capped by `sizeLimit`.
pub fn memory_volume_size(pod: &Pod, volume: &Volume, allocatable: &Allocatable) -> Option<u64> {
    let size_limit = volume
        .empty_dir
        .as_ref()
        .and_then(|e| e.size_limit.as_ref())
        .and_then(|q| bytes_of(&q.0));
    let base = pod_memory_limit(pod).or_else(|| bytes_of(allocatable.get("memory")?));
    match (base, size_limit) {
        (Some(base), Some(limit)) => Some(base.min(limit)),
        (base, limit) => base.or(limit),
    }
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    refresh_at: Instant,
}

#[derive(Debug, Default)]
struct PodState {
    synced_at: Option<Instant>,
    volumes: PodVolumes,
    /// Tokens by (volume name, source index).
    tokens: HashMap<(String, usize), CachedToken>,
    /// The last failure reported as an event, and when.
    reported: Option<(String, Instant)>,
}

/// How often the same setup failure of a pod is reported again.
const REPORT_AGAIN: Duration = Duration::from_secs(30);

/// Sets up, refreshes and tears down the volumes of this node's pods.
pub struct VolumeManager {
    client: Client,
    pods_dir: PathBuf,
    allocatable: Allocatable,
    pods: Mutex<HashMap<String, PodState>>,
}

impl std::fmt::Debug for VolumeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeManager")
            .field("pods_dir", &self.pods_dir)
            .finish_non_exhaustive()
    }
}

fn io_failure(path: &Path) -> impl FnOnce(std::io::Error) -> SetUpFailure + '_ {
    move |source| SetUpFailure::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes a directory (and its parents) with exactly `mode`.
fn make_dir(path: &Path, mode: u32) -> Result<(), SetUpFailure> {
    fs::create_dir_all(path).map_err(io_failure(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_failure(path))
}

impl VolumeManager {
    /// A manager keeping volumes under `pods_dir`.
    pub fn new(client: Client, pods_dir: PathBuf, allocatable: Allocatable) -> Self {
        Self {
            client,
            pods_dir,
            allocatable,
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// `<pods dir>/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    fn with_state<T>(&self, uid: &str, f: impl FnOnce(&mut PodState) -> T) -> T {
        let mut all = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(uid.to_owned()).or_default())
    }

    /// Whether a setup failure of a pod should be reported (as a `FailedMount` event) now:
    /// a new message, or the same one [`REPORT_AGAIN`] after its last report.
    pub fn should_report(&self, uid: &str, message: &str) -> bool {
        self.with_state(uid, |s| {
            let due = s
                .reported
                .as_ref()
                .is_none_or(|(last, at)| last != message || at.elapsed() >= REPORT_AGAIN);
            if due {
                s.reported = Some((message.to_owned(), Instant::now()));
            }
            due
        })
    }

    /// Makes sure the pod's volumes are set up, refreshing API-data volumes when the last
    /// sync is older than [`RESYNC`]; returns them for the containers' mounts.
    pub async fn ensure(&self, pod: &Pod) -> Result<PodVolumes, VolumeError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let fresh = self.with_state(&uid, |s| {
            s.synced_at
                .filter(|t| t.elapsed() < RESYNC)
                .map(|_| s.volumes.clone())
        });
        if let Some(volumes) = fresh {
            return Ok(volumes);
        }
        let mut prepared = PodVolumes::new();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let ready =
                self.set_up(pod, &uid, volume)
                    .await
                    .map_err(|cause| VolumeError::SetUp {
                        volume: volume.name.clone(),
                        cause: Box::new(cause),
                    })?;
            prepared.insert(volume.name.clone(), ready);
        }
        self.with_state(&uid, |s| {
            s.synced_at = Some(Instant::now());
            s.volumes = prepared.clone();
        });
        Ok(prepared)
    }

    async fn set_up(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
    ) -> Result<PreparedVolume, SetUpFailure> {
        if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            host_path::check(&path, host.type_.as_deref())?;
            return Ok(PreparedVolume {
                host_path: path,
                read_only: false,
            });
        }
        let plugin = plugin_dir(volume).ok_or(SetUpFailure::Unsupported)?;
        let dir = self
            .pod_dir(uid)
            .join("volumes")
            .join(plugin)
            .join(&volume.name);
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(empty) = &volume.empty_dir {
            make_dir(&dir, 0o777)?;
            if empty.medium.as_deref() == Some("Memory") {
                tmpfs::ensure_mounted(&dir, memory_volume_size(pod, volume, &self.allocatable))?;
            }
            return Ok(PreparedVolume {
                host_path: dir,
                read_only: false,
            });
        }
        let payload = if let Some(source) = &volume.config_map {
            make_dir(&dir, 0o755)?;
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            let data = get_optional(&api, &source.name)
                .await?
                .map(|cm| projection::config_map_bytes(&cm));
            let mut payload = Payload::new();
            projection::project_keys(
                "configmap",
                &source.name,
                data,
                source.items.as_deref(),
                source.optional == Some(true),
                source.default_mode.unwrap_or(DEFAULT_MODE),
                &mut payload,
            )?;
            payload
        } else {
            make_dir(&dir, 0o755)?;
            tmpfs::ensure_mounted(&dir, None)?;
            if let Some(source) = &volume.secret {
                let name = source.secret_name.clone().unwrap_or_default();
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let data = get_optional(&api, &name)
                    .await?
                    .map(|s| projection::secret_bytes(&s));
                let mut payload = Payload::new();
                projection::project_keys(
                    "secret",
                    &name,
                    data,
                    source.items.as_deref(),
                    source.optional == Some(true),
                    source.default_mode.unwrap_or(DEFAULT_MODE),
                    &mut payload,
                )?;
                payload
            } else if let Some(source) = &volume.downward_api {
                let mut payload = Payload::new();
                projection::project_downward(
                    pod,
                    source.items.as_deref().unwrap_or_default(),
                    source.default_mode.unwrap_or(DEFAULT_MODE),
                    &self.allocatable,
                    &mut payload,
                )?;
                payload
            } else if let Some(source) = &volume.projected {
                let fetched = self.fetch_projected(pod, uid, volume).await?;
                projection::project_projected(pod, source, &fetched, &self.allocatable)?
            } else {
                return Err(SetUpFailure::Unsupported);
            }
        };
        if atomic_writer::write(&dir, &payload)? {
            debug!(volume = %volume.name, pod = ?pod.metadata.name, "volume files updated");
        }
        Ok(PreparedVolume {
            host_path: dir,
            read_only: true,
        })
    }

    /// Fetches the ConfigMaps, Secrets and tokens a projected volume reads.
    async fn fetch_projected(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
    ) -> Result<Fetched, SetUpFailure> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut fetched = Fetched::default();
        let sources = volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten());
        for (index, source) in sources.enumerate() {
            if let Some(cm) = &source.config_map {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                let object = get_optional(&api, &cm.name).await?;
                fetched.config_maps.insert(cm.name.clone(), object);
            }
            if let Some(secret) = &source.secret {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let object = get_optional(&api, &secret.name).await?;
                fetched.secrets.insert(secret.name.clone(), object);
            }
            if let Some(token) = &source.service_account_token {
                let key = (volume.name.clone(), index);
                let cached = self.with_state(uid, |s| {
                    s.tokens
                        .get(&key)
                        .filter(|t| Instant::now() < t.refresh_at)
                        .map(|t| t.token.clone())
                });
                let text = match cached {
                    Some(text) => text,
                    None => {
                        let seconds = token
                            .expiration_seconds
                            .unwrap_or(DEFAULT_TOKEN_SECONDS)
                            .max(1);
                        let text = self
                            .request_token(pod, token.audience.as_deref(), seconds)
                            .await?;
                        let refresh_at =
                            Instant::now() + Duration::from_secs((seconds as u64) * 4 / 5);
                        self.with_state(uid, |s| {
                            s.tokens.insert(
                                key,
                                CachedToken {
                                    token: text.clone(),
                                    refresh_at,
                                },
                            )
                        });
                        text
                    }
                };
                fetched.tokens.insert(index, text);
            }
        }
        Ok(fetched)
    }

    /// Asks the API for a token of the pod's service account, bound to the pod.
    async fn request_token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        seconds: i64,
    ) -> Result<String, SetUpFailure> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let audiences: Vec<&str> = audience.filter(|a| !a.is_empty()).into_iter().collect();
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.metadata.name,
                    "uid": pod.metadata.uid,
                },
            },
        });
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let answer: TokenRequest = api
            .create_subresource("token", &account, &PostParams::default(), &body)
            .await?;
        answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or(SetUpFailure::EmptyToken(account))
    }

    /// Removes a pod's volumes: unmounts its tmpfs mounts, then deletes
    /// `<pods dir>/<uid>` (symlinks are removed, never followed; hostPath volumes live
    /// elsewhere and are not touched). Nothing is deleted while anything is still mounted.
    pub fn tear_down(&self, uid: &str) -> Result<(), VolumeError> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
            return Ok(());
        }
        remove_pod_dir(&self.pod_dir(uid))?;
        info!(%uid, "removed the pod's volumes");
        Ok(())
    }
}

/// Unmounts the tmpfs volumes under a pod's directory and removes it, unless something is
/// still mounted there. Symlinks are removed, never followed.
pub fn remove_pod_dir(pod_dir: &Path) -> Result<(), VolumeError> {
    match fs::symlink_metadata(pod_dir) {
        Ok(meta) if meta.is_dir() => {}
        _ => return Ok(()),
    }
    // Only real directories are walked: a symlink never leads the unmount elsewhere.
    let real_dirs = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    for plugin in real_dirs(&pod_dir.join("volumes")) {
        for path in real_dirs(&plugin) {
            tmpfs::unmount(&path).map_err(|cause| VolumeError::Unmount {
                path: path.clone(),
                cause,
            })?;
        }
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", pod_dir.display());
    if let Some(point) = tmpfs::mount_points(&info)
        .into_iter()
        .find(|p| p.starts_with(&prefix) || *p == prefix.trim_end_matches('/'))
    {
        return Err(VolumeError::StillMounted(point));
    }
    fs::remove_dir_all(pod_dir).map_err(|source| VolumeError::Remove {
        path: pod_dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_pod_dir_never_follows_links_out() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let outside = root.path().join("host");
        fs::create_dir_all(&outside)?;
        fs::write(outside.join("keep"), "host data")?;
        let pod_dir = root.path().join("pods/uid-1");
        let volume = pod_dir.join("volumes/kubernetes.io~configmap/cfg");
        fs::create_dir_all(&volume)?;
        let payload: Payload = [(
            "key".to_owned(),
            atomic_writer::FileData {
                content: b"v".to_vec(),
                mode: 0o644,
            },
        )]
        .into();
        atomic_writer::write(&volume, &payload)?;
        std::os::unix::fs::symlink(&outside, volume.join("escape"))?;
        std::os::unix::fs::symlink(&outside, pod_dir.join("volumes/link"))?;
        remove_pod_dir(&pod_dir)?;
        assert!(!pod_dir.exists());
        assert_eq!(fs::read_to_string(outside.join("keep"))?, "host data");
        // A missing directory, or a link in its place, is left alone.
        remove_pod_dir(&pod_dir)?;
        std::os::unix::fs::symlink(&outside, &pod_dir)?;
        remove_pod_dir(&pod_dir)?;
        assert!(outside.join("keep").exists());
        Ok(())
    }

    #[test]
    fn plugins_and_sizes_follow_upstream_names() {
        let volume: Volume = serde_json::from_value(json!({"name": "scratch",
            "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plugin_dir(&volume), Some("kubernetes.io~empty-dir"));
        let mib = 1024 * 1024;
        let allocatable: Allocatable = [("memory".to_owned(), "1Gi".to_owned())].into();
        let pod = |containers: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": containers}}))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let limited =
            |memory: &str| json!({"name": memory, "resources": {"limits": {"memory": memory}}});
        // No pod limit: the node's allocatable, capped by sizeLimit.
        let open = pod(json!([{"name": "a"}, limited("32Mi")]));
        assert_eq!(
            memory_volume_size(&open, &volume, &allocatable),
            Some(64 * mib)
        );
        let unlimited: Volume =
            serde_json::from_value(json!({"name": "m", "emptyDir": {"medium": "Memory"}}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            memory_volume_size(&open, &unlimited, &allocatable),
            Some(1024 * mib)
        );
        // Every container limited: their sum, capped by sizeLimit.
        let small = pod(json!([limited("16Mi"), limited("32Mi")]));
        assert_eq!(
            memory_volume_size(&small, &volume, &allocatable),
            Some(48 * mib)
        );
        let big = pod(json!([limited("100Mi"), limited("28Mi")]));
        assert_eq!(
            memory_volume_size(&big, &volume, &allocatable),
            Some(64 * mib)
        );
        assert_eq!(
            memory_volume_size(&big, &unlimited, &allocatable),
            Some(128 * mib)
        );
        let projected: Volume =
            serde_json::from_value(json!({"name": "p", "projected": {"sources": []}}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plugin_dir(&projected), Some("kubernetes.io~projected"));
        let host: Volume =
            serde_json::from_value(json!({"name": "h", "hostPath": {"path": "/tmp"}}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plugin_dir(&host), None);
    }
}
