//! The pods this node runs, from their two sources, as upstream's kubelet config merges
//! them: the API (the pods bound to this node, one watch with `spec.nodeName=<node>`) and
//! the manifest directory ([`static_pods`](super::static_pods), keyed by their hash UIDs).
//! Mirror pods come from the API but are no source of containers: they only show static
//! pods in the API.
//!
//! The static pods are read once before anything else and never wait for the API, so the
//! pod worker runs them while the API server is unreachable. Until the watch has listed
//! once, the API's part is empty and [`PodSources::api_synced`] is false: who removes what
//! is not in the sources (the pod worker's orphan sweep, but for static pods' sandboxes;
//! the mirror pods' keeper) must wait for it. After that the API's part is the watch's last
//! view, kept while the server is away.
//!
//! Owns the pod watch and the current static pod set; it decides nothing about pods.
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
    Api, Client,
};
use tokio::sync::{watch, Notify};
use tracing::warn;

use super::static_pods::{self, StaticPodSet};

/// Where the worker's pods come from; cheap to clone.
#[derive(Clone)]
pub struct PodSources {
    api: Store<Pod>,
    api_synced: Arc<AtomicBool>,
    statics: watch::Receiver<StaticPodSet>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for PodSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSources")
            .field("api_synced", &self.api_synced())
            .field("static_pods", &self.statics.borrow().len())
            .finish_non_exhaustive()
    }
}

impl PodSources {
    /// Reads the manifest directory `manifest_dir` now, then follows it and the API's pods
    /// on node `node` in the background.
    pub fn start(client: Client, node: &str, manifest_dir: PathBuf) -> Self {
        let changed = Arc::new(Notify::new());
        if let Err(e) = std::fs::create_dir_all(&manifest_dir) {
            warn!(dir = %manifest_dir.display(), error = %e, "cannot make the static pod directory");
        }
        let mut reported = HashSet::new();
        let first = static_pods::read_dir(&manifest_dir, node, &mut reported);
        let (statics_tx, statics) = watch::channel(first);
        tokio::spawn(static_pods::follow_dir(
            manifest_dir,
            node.to_owned(),
            statics_tx,
            changed.clone(),
            reported,
        ));

        let pods: Api<Pod> = Api::all(client);
        let (api, writer) = reflector::store::<Pod>();
        let watch_config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = reflector::reflector(writer, watcher(pods, watch_config))
            .default_backoff()
            .touched_objects();
        tokio::spawn(crate::watches::notify_on_change(
            "Pod",
            stream,
            changed.clone(),
        ));
        let api_synced = Arc::new(AtomicBool::new(false));
        {
            let (api, api_synced, changed) = (api.clone(), api_synced.clone(), changed.clone());
            tokio::spawn(async move {
                if api.wait_until_ready().await.is_ok() {
                    api_synced.store(true, Ordering::SeqCst);
                    changed.notify_one();
                }
            });
        }
        Self {
            api,
            api_synced,
            statics,
            changed,
        }
    }

    /// Waits until a source changed (a watch event, a changed manifest directory, the first
    /// list of the API's pods).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether the API's pods have been listed at least once.
    pub fn api_synced(&self) -> bool {
        self.api_synced.load(Ordering::SeqCst)
    }

    /// Every API pod on this node, mirror pods included.
    pub fn api_pods_on_node(&self) -> Vec<Arc<Pod>> {
        self.api.state()
    }

    /// The static pods, by UID.
    pub fn static_pods(&self) -> StaticPodSet {
        self.statics.borrow().clone()
    }

    /// The pods whose containers this node runs: the API's pods that are not mirror pods,
    /// then the static pods.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        let mut pods: Vec<Arc<Pod>> = self
            .api
            .state()
            .into_iter()
            .filter(|p| !static_pods::is_mirror(p))
            .collect();
        pods.extend(self.statics.borrow().values().cloned());
        pods
    }

    /// The current mirror pod of `static_pod` in the API, if the watch shows one.
    pub fn mirror_of(&self, static_pod: &Pod) -> Option<Arc<Pod>> {
        let name = static_pod.metadata.name.as_deref()?;
        let namespace = static_pod.metadata.namespace.as_deref().unwrap_or_default();
        self.api
            .get(&ObjectRef::new(name).within(namespace))
            .filter(|p| static_pods::is_mirror_of(p, static_pod))
    }
}
