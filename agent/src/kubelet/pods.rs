//! The pod worker: runs the pods of this node's [`PodSources`] — the API's pods bound to
//! the node (not mirror pods) and the static pods from the manifest directory — and for
//! each one observes the runtime, carries out the [`plan`](super::plan) (sandbox, images,
//! containers), reports the [`status`](super::status) (a static pod's to its mirror pod,
//! once the API shows one), kills containers whose liveness or startup probe failed
//! ([`probes`](super::probes)), runs postStart hooks, and on deletion runs preStop hooks and
//! stops the containers within the grace period ([`lifecycle`](super::lifecycle)), removes
//! the sandbox and only then removes the pod from the API (the kubelet's final delete). A
//! static pod whose manifest is gone terminates the same way, without the API; a static pod
//! waits to start while another of its name (its manifest's previous version) terminates.
//! Each pod syncs in its own task. A pod the [`eviction`](super::eviction) manager evicts
//! has its containers killed and is reported Failed / Evicted; it never runs again.
//! Sandboxes of pods that are in no source are removed: a static pod's at once, the others
//! once the API's pods have been listed. Every pass first brings the QoS cgroups ([`qos_cgroups`](super::qos_cgroups)) in
//! step with the node's pods.
//!
//! Owns the CRI calls for pods; decisions are in `plan`, shapes in `runtime_config`.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use corten_cri::runtime::CriClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    ImageStatusRequest, ListContainersRequest, ListPodSandboxRequest, PodSandboxFilter,
    PodSandboxState, PodSandboxStatusRequest, PullImageRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    Api, Client,
};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::{
    container_inputs::{self, ContainerInputs, InputsError},
    env,
    events::{EventRecorder, EventType},
    eviction::{self, Eviction, Evictions, HARD_EVICTION_GRACE_SECONDS},
    lifecycle,
    node::now_rfc3339,
    observed::{ContainerObservation, Observed, RunState, SandboxObservation},
    plan::{self, Action},
    pod_cgroups,
    pod_sources::PodSources,
    probes::ProbeManager,
    qos_cgroups::QosCgroups,
    runtime_config::{self, PodFields, CONTAINER_NAME_LABEL, POD_UID_LABEL},
    static_pods, status,
    volumes::{VolumeError, VolumeManager},
};

/// How often every pod is looked at even without a change.
const RESYNC: Duration = Duration::from_secs(1);

/// Where pods go on this node.
#[derive(Debug, Clone)]
pub struct PodWorkerConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's IP (the pods' hostIP).
    pub host_ip: String,
    /// The cgroup under which pod cgroups are made.
    pub cgroup_root: String,
    /// Where pod log directories go.
    pub log_root: String,
    /// Evictions the eviction manager asks for.
    pub evictions: Evictions,
    /// The node's pressure, for the admission of new pods.
    pub pressure: tokio::sync::watch::Receiver<eviction::NodePressure>,
}

/// What the kubelet remembers about a pod between passes.
#[derive(Debug, Default)]
struct Memory {
    waiting: HashMap<String, (String, String)>,
    started_at: i64,
    /// The status last written, and the UID of the API pod it went to (a static pod's
    /// mirror pod may be replaced).
    reported: Option<(String, Value)>,
    /// The admission refused the pod: it never starts, even before the watch shows it
    /// Failed (upstream's status manager keeps the rejection locally too).
    rejected: bool,
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// `pod`, deleted now: how a static pod whose manifest is gone terminates.
fn retired(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    pod
}

fn full_name(pod: &Pod) -> (Option<&str>, Option<&str>) {
    (
        pod.metadata.namespace.as_deref(),
        pod.metadata.name.as_deref(),
    )
}

/// Runs the pod worker forever over the pods of `sources`.
pub async fn run(client: Client, cri: CriClient, config: PodWorkerConfig, sources: PodSources) {
    let events = EventRecorder::new(client.clone(), config.node_name.clone());
    let volumes = VolumeManager::new(
        client.clone(),
        std::path::PathBuf::from(&config.log_root),
        env::node_allocatable(),
    );
    let worker = Arc::new(Worker {
        volumes,
        allocatable: env::node_allocatable(),
        probes: ProbeManager::new(cri.clone(), events.clone()),
        events,
        client,
        cri,
        config,
        sources: sources.clone(),
        memory: Mutex::new(HashMap::new()),
        busy: Mutex::new(HashMap::new()),
        retiring: Mutex::new(HashMap::new()),
    });
    let mut generation: u64 = 0;
    let mut qos = QosCgroups::new(&worker.config.cgroup_root, worker.allocatable.clone());
    // The resourceVersion each pod's last sync started from, and when every pod was last
    // synced: between these full passes (every RESYNC) only pods whose object changed sync,
    // so a burst of watch events (every status write is one) does not resync every pod on
    // the node each time.
    let mut synced_versions: HashMap<String, Option<String>> = HashMap::new();
    let mut last_full_pass: Option<Instant> = None;
    // The static pods of the last pass: one missing now had its manifest removed or changed.
    let mut known_static = static_pods::StaticPodSet::new();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = sources.changed() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
        first = false;
        let statics = sources.static_pods();
        let retiring = {
            let mut retiring = lock(&worker.retiring);
            for (uid, pod) in &known_static {
                if !statics.contains_key(uid) && !retiring.contains_key(uid) {
                    info!(pod = ?pod.metadata.name, "the static pod's manifest is gone: stopping it");
                    retiring.insert(uid.clone(), Arc::new(retired(pod)));
                }
            }
            retiring.clone()
        };
        let mut live: HashSet<String> = statics.keys().cloned().collect();
        live.extend(retiring.keys().cloned());
        let mut pods: Vec<Arc<Pod>> = sources
            .pods()
            .into_iter()
            .filter(|p| {
                // A static pod starts once the pod of its name it replaces has stopped
                // (upstream's pod workers start one static pod of a name at a time).
                !static_pods::is_static(p)
                    || !retiring.values().any(|r| full_name(r) == full_name(p))
            })
            .collect();
        pods.extend(retiring.into_values());
        known_static = statics;
        live.extend(pods.iter().map(|p| uid_of(p)));
        let full = last_full_pass.is_none_or(|at| at.elapsed() >= RESYNC);
        if full {
            last_full_pass = Some(Instant::now());
        }
        // The QoS tiers first, so a new pod's cgroup lands in a tier that counts it.
        qos.update(pods.iter().map(|p| p.as_ref()));
        // Each pod syncs in its own task, so a pod that waits (a grace period, a hook, a
        // probe kill) holds up no other; a pod still syncing is skipped this pass, unless it
        // is now being deleted: then its sync (a postStart hook may run forever) is
        // cancelled and termination starts, as upstream's pod workers do.
        for pod in pods {
            let uid = uid_of(&pod);
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let version = pod.metadata.resource_version.clone();
            if !full && !deleting && synced_versions.get(&uid) == Some(&version) {
                continue;
            }
            let mut busy = lock(&worker.busy);
            match busy.get(&uid) {
                Some(running) if running.terminating || !deleting => continue,
                Some(running) => running.task.abort(),
                None => {}
            }
            synced_versions.insert(uid.clone(), version);
            generation += 1;
            let this = generation;
            let task = tokio::spawn({
                let worker = worker.clone();
                let uid = uid.clone();
                async move {
                    if let Err(e) = worker.sync(&pod).await {
                        warn!(pod = ?pod.metadata.name, error = %e, "pod sync failed");
                    }
                    let mut busy = lock(&worker.busy);
                    if busy.get(&uid).is_some_and(|r| r.generation == this) {
                        busy.remove(&uid);
                    }
                }
            });
            busy.insert(
                uid,
                RunningSync {
                    generation: this,
                    terminating: deleting,
                    task: task.abort_handle(),
                },
            );
        }
        synced_versions.retain(|uid, _| live.contains(uid));
        // Until the API's pods have been listed, every sandbox of an API pod would look
        // orphaned: a restarted agent must adopt its pods, not remove them.
        if full {
            if let Err(e) = worker.remove_orphans(&live, sources.api_synced()).await {
                warn!(error = %e, "removing orphaned sandboxes failed");
            }
        }
    }
}

/// A failure of one pod pass (retried on the next).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A CRI call failed.
    #[error("CRI {call}: {status}")]
    Cri {
        /// The call.
        call: &'static str,
        /// What the runtime said.
        status: tonic::Status,
    },
    /// An API call failed.
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    /// The pod's volumes could not be removed.
    #[error("volumes: {0}")]
    Volumes(#[from] VolumeError),
}

fn cri(call: &'static str) -> impl FnOnce(tonic::Status) -> SyncError {
    move |status| SyncError::Cri { call, status }
}

struct Worker {
    client: Client,
    cri: CriClient,
    config: PodWorkerConfig,
    sources: PodSources,
    memory: Mutex<HashMap<String, Memory>>,
    /// Pods whose sync is under way, by UID.
    busy: Mutex<HashMap<String, RunningSync>>,
    /// Static pods whose manifest is gone (or changed), by UID, until they have stopped.
    retiring: Mutex<HashMap<String, Arc<Pod>>>,
    probes: ProbeManager,
    events: EventRecorder,
    volumes: VolumeManager,
    allocatable: env::Allocatable,
}

/// A pod's sync under way.
struct RunningSync {
    /// Tells this sync from a later one of the same pod.
    generation: u64,
    /// Whether it is the pod's termination.
    terminating: bool,
    task: tokio::task::AbortHandle,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    fn memory<T>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut all = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(uid.to_owned()).or_default())
    }

    /// Reads the runtime's view of a pod.
    async fn observe(&self, uid: &str) -> Result<Observed, SyncError> {
        let mut cri = self.cri.clone();
        let labels: HashMap<String, String> = [(POD_UID_LABEL.to_owned(), uid.to_owned())].into();
        let sandboxes = cri
            .runtime()
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: labels.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(cri_err("ListPodSandbox"))?
            .into_inner()
            .items;
        let newest = sandboxes.iter().max_by_key(|s| s.created_at);
        let mut observed = Observed::default();
        if let Some(sandbox) = newest {
            let ready = sandbox.state == PodSandboxState::SandboxReady as i32;
            let ip = if ready {
                cri.runtime()
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: sandbox.id.clone(),
                        verbose: false,
                    })
                    .await
                    .map_err(cri_err("PodSandboxStatus"))?
                    .into_inner()
                    .status
                    .and_then(|s| s.network)
                    .map(|n| n.ip)
                    .filter(|ip| !ip.is_empty())
            } else {
                None
            };
            observed.sandbox = Some(SandboxObservation {
                id: sandbox.id.clone(),
                ready,
                ip,
                attempt: sandbox.metadata.as_ref().map_or(0, |m| m.attempt),
            });
        }
        let containers = cri
            .runtime()
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    label_selector: labels,
                    pod_sandbox_id: observed
                        .sandbox
                        .as_ref()
                        .map(|s| s.id.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(cri_err("ListContainers"))?
            .into_inner()
            .containers;
        // The latest attempt per container name, and the one before it (its lastState).
        let mut attempts: HashMap<String, Vec<(u32, String)>> = HashMap::new();
        for container in containers {
            let name = container
                .labels
                .get(CONTAINER_NAME_LABEL)
                .cloned()
                .unwrap_or_default();
            let attempt = container.metadata.as_ref().map_or(0, |m| m.attempt);
            attempts
                .entry(name)
                .or_default()
                .push((attempt, container.id));
        }
        for (name, mut list) in attempts {
            list.sort_unstable_by_key(|(attempt, _)| std::cmp::Reverse(*attempt));
            let mut newest_first = list.into_iter();
            if let Some((attempt, id)) = newest_first.next() {
                let latest = self.container_observation(id, attempt).await?;
                observed.containers.insert(name.clone(), latest);
            }
            if let Some((attempt, id)) = newest_first.next() {
                let previous = self.container_observation(id, attempt).await?;
                observed.previous.insert(name, previous);
            }
        }
        Ok(observed)
    }

    /// One container attempt as the runtime reports it.
    async fn container_observation(
        &self,
        id: String,
        attempt: u32,
    ) -> Result<ContainerObservation, SyncError> {
        let status = self
            .cri
            .clone()
            .runtime()
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .map_err(cri_err("ContainerStatus"))?
            .into_inner()
            .status
            .unwrap_or_default();
        let state = match ContainerState::try_from(status.state) {
            Ok(ContainerState::ContainerCreated) => RunState::Created,
            Ok(ContainerState::ContainerRunning) => RunState::Running,
            Ok(ContainerState::ContainerExited) => RunState::Exited,
            _ => RunState::Unknown,
        };
        Ok(ContainerObservation {
            id,
            state,
            exit_code: status.exit_code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            started_at: status.started_at / 1_000_000_000,
            finished_at: status.finished_at / 1_000_000_000,
            attempt,
            image: status.image.map(|i| i.image).unwrap_or_default(),
            image_ref: status.image_ref.clone(),
        })
    }

    async fn sync(&self, pod: &Pod) -> Result<(), SyncError> {
        let uid = uid_of(pod);
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(pod).await;
        }
        // A static pod's status lives on its mirror pod: the pod as the API shows it.
        let shown;
        let pod = if static_pods::is_static(pod) {
            shown = self.with_mirror_status(pod);
            &shown
        } else {
            pod
        };
        // An eviction asked for, or carried out before: the pod runs no more.
        if let Some(eviction) = self.config.evictions.pending(&uid) {
            return self.evict(pod, Some(&eviction)).await;
        }
        if self.config.evictions.contains(&uid) || eviction::was_evicted(pod) {
            return self.evict(pod, None).await;
        }
        // Upstream's eviction admission: a pod this node has not started is refused while
        // the node's pressure says so; once refused, it stays so.
        if self.memory(&uid, |m| m.rejected) {
            return Ok(());
        }
        let refusal = eviction::admission_refusal(&self.config.pressure.borrow(), pod);
        if let Some(refusal) = refusal {
            if self.not_started(pod, &uid).await? {
                return self.reject(pod, &refusal).await;
            }
        }
        let now = now_seconds();
        // The start time already reported (by this agent before a restart) stays.
        let reported_start = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.as_second())
            .filter(|&t| t > 0);
        self.memory(&uid, |m| {
            if m.started_at == 0 {
                m.started_at = reported_start.unwrap_or(now);
            }
        });
        let mut observed = self.observe(&uid).await?;
        self.probes.sync_pod(pod, &observed);
        if self.kill_unhealthy(pod, &observed).await? {
            observed = self.observe(&uid).await?;
            self.probes.sync_pod(pod, &observed);
        }
        let actions = if self.volumes_ready(pod, &observed).await {
            plan::plan(pod, &observed, now)
        } else {
            Vec::new()
        };
        let made_sandbox = actions
            .iter()
            .any(|a| matches!(a, Action::CreateSandbox { .. }));
        for action in actions {
            self.carry_out(pod, &observed, action).await?;
        }
        if made_sandbox {
            // As upstream's SyncPod does, the containers start in the pass that made the
            // sandbox, not one watch event later.
            let observed = self.observe(&uid).await?;
            self.probes.sync_pod(pod, &observed);
            for action in plan::plan(pod, &observed, now_seconds()) {
                if !matches!(action, Action::CreateSandbox { .. }) {
                    self.carry_out(pod, &observed, action).await?;
                }
            }
        }
        let mut observed = self.observe(&uid).await?;
        self.probes.sync_pod(pod, &observed);
        let (waiting, started_at) = self.memory(&uid, |m| (m.waiting.clone(), m.started_at));
        observed.waiting = waiting;
        observed.health = self.probes.health(&uid);
        let status = status::pod_status(
            pod,
            &observed,
            &self.config.host_ip,
            started_at,
            now_seconds(),
        );
        let Some(target) = self.status_target(pod) else {
            return Ok(());
        };
        let changed = self.memory(&uid, |m| {
            m.reported
                .as_ref()
                .is_none_or(|(to, reported)| *to != target || *reported != status)
        });
        if changed {
            self.report(pod, status).await?;
        }
        Ok(())
    }

    /// Whether this node has not started `pod`: no start time reported or remembered, still
    /// Pending, and nothing of it in the runtime.
    async fn not_started(&self, pod: &Pod, uid: &str) -> Result<bool, SyncError> {
        let status = pod.status.as_ref();
        let pending = status
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|phase| phase == "Pending");
        let reported_start = status.is_some_and(|s| s.start_time.is_some());
        if !pending || reported_start || self.memory(uid, |m| m.started_at != 0) {
            return Ok(false);
        }
        let observed = self.observe(uid).await?;
        Ok(observed.sandbox.is_none() && observed.containers.is_empty())
    }

    /// Refuses a pod this node has not started, as upstream's kubelet rejects a pod its
    /// admission refuses: phase Failed, reason Evicted, the message after "Pod was rejected:
    /// ", and a Warning event. The pod never starts (it counts as evicted from then on).
    async fn reject(&self, pod: &Pod, message: &str) -> Result<(), SyncError> {
        let status = json!({
            "phase": "Failed",
            "reason": eviction::REASON,
            "message": format!("Pod was rejected: {message}"),
            "qosClass": runtime_config::qos_class(pod),
            "startTime": now_rfc3339(),
        });
        self.report(pod, status).await?;
        self.memory(&uid_of(pod), |m| m.rejected = true);
        self.events
            .record(pod, None, EventType::Warning, eviction::REASON, message);
        info!(pod = ?pod.metadata.name, message, "rejected by the eviction admission");
        Ok(())
    }

    /// A static pod with the status of its mirror pod (none while there is no mirror).
    fn with_mirror_status(&self, pod: &Pod) -> Pod {
        let mut shown = pod.clone();
        shown.status = self
            .sources
            .mirror_of(pod)
            .and_then(|mirror| mirror.status.clone());
        shown
    }

    /// The UID of the API pod that shows `pod`'s status: the pod itself, or a static pod's
    /// mirror pod (`None` while the API shows none).
    fn status_target(&self, pod: &Pod) -> Option<String> {
        if static_pods::is_static(pod) {
            self.sources
                .mirror_of(pod)
                .and_then(|mirror| mirror.metadata.uid.clone())
        } else {
            Some(uid_of(pod))
        }
    }

    /// Writes the pod's status (a merge patch) to the pod, or to a static pod's mirror pod,
    /// and remembers it as reported. A static pod without a mirror pod reports nothing yet
    /// (its status is written once the mirror pod is there).
    async fn report(&self, pod: &Pod, status: Value) -> Result<(), SyncError> {
        let Some(target) = self.status_target(pod) else {
            return Ok(());
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let written = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status.clone()})),
            )
            .await;
        match written {
            Ok(_) => {}
            // The mirror pod went (deleted by hand): its successor gets the status.
            Err(kube::Error::Api(e)) if e.code == 404 && static_pods::is_static(pod) => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
        self.memory(&uid_of(pod), |m| m.reported = Some((target, status)));
        Ok(())
    }

    fn fields(&self, observed: &Observed) -> PodFields {
        let pod_ip = observed
            .sandbox
            .as_ref()
            .and_then(|s| s.ip.clone())
            .unwrap_or_default();
        PodFields {
            pod_ips: [pod_ip.clone()]
                .into_iter()
                .filter(|ip| !ip.is_empty())
                .collect(),
            pod_ip,
            host_ip: self.config.host_ip.clone(),
            host_ips: vec![self.config.host_ip.clone()],
        }
    }

    /// Sets up (or refreshes) the pod's volumes. When they are not ready it says why — a
    /// `FailedMount` event, and `ContainerCreating` with the message on containers not yet
    /// created — and returns false, so nothing starts this pass.
    async fn volumes_ready(&self, pod: &Pod, observed: &Observed) -> bool {
        let uid = uid_of(pod);
        match self.volumes.ensure(pod).await {
            Ok(_) => {
                self.memory(&uid, |m| {
                    m.waiting.retain(|_, (reason, message)| {
                        !(reason == "ContainerCreating" && message.starts_with("MountVolume."))
                    })
                });
                true
            }
            Err(e) => {
                let message = e.to_string();
                warn!(pod = ?pod.metadata.name, error = %message, "the pod's volumes are not ready");
                if self.volumes.should_report(&uid, &message) {
                    self.events
                        .record(pod, None, EventType::Warning, "FailedMount", &message);
                }
                let spec = pod.spec.clone().unwrap_or_default();
                let pending: Vec<String> = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter())
                    .filter(|c| observed.container(&c.name).is_none())
                    .map(|c| c.name.clone())
                    .collect();
                self.memory(&uid, |m| {
                    for name in pending {
                        m.waiting
                            .insert(name, ("ContainerCreating".to_owned(), message.clone()));
                    }
                });
                false
            }
        }
    }

    /// A container's environment and mounts; `None` when they cannot be resolved, with the
    /// container waiting (`CreateContainerConfigError` and upstream's message) and an event.
    async fn container_inputs(
        &self,
        pod: &Pod,
        container: &k8s_openapi::api::core::v1::Container,
        observed: &Observed,
    ) -> Result<Option<ContainerInputs>, SyncError> {
        let uid = uid_of(pod);
        let resolved = container_inputs::resolve(
            &self.client,
            &self.volumes,
            pod,
            container,
            &self.fields(observed),
            &self.allocatable,
        )
        .await;
        match resolved {
            Ok(inputs) => {
                for warning in &inputs.warnings {
                    self.events.record(
                        pod,
                        Some(&container.name),
                        EventType::Warning,
                        "InvalidEnvironmentVariableNames",
                        warning,
                    );
                }
                Ok(Some(inputs))
            }
            Err(InputsError::Api(e)) => Err(e.into()),
            Err(e) => {
                let reason = e.reason();
                let message = e.to_string();
                if self.volumes.should_report(&uid, &message) {
                    let event = format!("Error: {message}");
                    self.events.record(
                        pod,
                        Some(&container.name),
                        EventType::Warning,
                        "Failed",
                        &event,
                    );
                }
                self.memory(&uid, |m| {
                    m.waiting
                        .insert(container.name.clone(), (reason.to_owned(), message))
                });
                Ok(None)
            }
        }
    }

    async fn carry_out(
        &self,
        pod: &Pod,
        observed: &Observed,
        action: Action,
    ) -> Result<(), SyncError> {
        let uid = uid_of(pod);
        let mut cri = self.cri.clone();
        match action {
            Action::CreateSandbox { attempt } => {
                let config = runtime_config::sandbox_config(
                    pod,
                    attempt,
                    &self.config.cgroup_root,
                    &self.config.log_root,
                );
                std::fs::create_dir_all(&config.log_directory).ok();
                if let Err(e) = pod_cgroups::apply(pod, &self.config.cgroup_root) {
                    warn!(pod = ?pod.metadata.name, error = %e, "setting the pod cgroup's limits failed");
                }
                info!(pod = ?pod.metadata.name, attempt, "creating the pod sandbox");
                cri.runtime()
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map_err(cri_err("RunPodSandbox"))?;
            }
            Action::Start {
                name,
                init,
                attempt,
            } => {
                let spec = pod.spec.clone().unwrap_or_default();
                let container = if init {
                    spec.init_containers
                        .iter()
                        .flatten()
                        .find(|c| c.name == name)
                        .cloned()
                } else {
                    spec.containers.iter().find(|c| c.name == name).cloned()
                };
                let (Some(container), Some(sandbox)) = (container, observed.sandbox.as_ref())
                else {
                    return Ok(());
                };
                if !self.ensure_image(&uid, &container).await? {
                    return Ok(());
                }
                let sandbox_config = runtime_config::sandbox_config(
                    pod,
                    sandbox.attempt,
                    &self.config.cgroup_root,
                    &self.config.log_root,
                );
                let Some(inputs) = self.container_inputs(pod, &container, observed).await? else {
                    return Ok(());
                };
                let config = runtime_config::container_config(
                    pod,
                    &container,
                    attempt,
                    inputs.env,
                    inputs.mounts,
                );
                let created = cri
                    .runtime()
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: sandbox.id.clone(),
                        config: Some(config),
                        sandbox_config: Some(sandbox_config),
                    })
                    .await;
                let id = match created {
                    Ok(r) => r.into_inner().container_id,
                    Err(status) => {
                        self.memory(&uid, |m| {
                            m.waiting.insert(
                                name.clone(),
                                (
                                    "CreateContainerError".to_owned(),
                                    status.message().to_owned(),
                                ),
                            )
                        });
                        return Ok(());
                    }
                };
                if let Err(status) = cri
                    .runtime()
                    .start_container(StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                {
                    self.memory(&uid, |m| {
                        m.waiting.insert(
                            name.clone(),
                            ("RunContainerError".to_owned(), status.message().to_owned()),
                        )
                    });
                    return Ok(());
                }
                debug!(pod = ?pod.metadata.name, container = %name, attempt, "started");
                self.memory(&uid, |m| m.waiting.remove(&name));
                let pod_ip = self.fields(observed).pod_ip;
                if lifecycle::post_start(&self.cri, &self.events, pod, &container, &id, &pod_ip)
                    .await
                    .is_err()
                {
                    let kill = lifecycle::Kill {
                        pod,
                        container: Some(&container),
                        name: &name,
                        container_id: &id,
                        pod_ip: &pod_ip,
                        grace_seconds: lifecycle::grace_seconds(pod),
                        reason: Some(format!("FailedPostStartHook: container {name}")),
                    };
                    lifecycle::kill_container(&self.cri, &self.events, kill)
                        .await
                        .map_err(cri_err("StopContainer"))?;
                }
            }
            Action::Backoff { name, until } => {
                let delay = (until - now_seconds()).max(0);
                let message = format!(
                    "back-off {delay}s restarting failed container={name} pod={}_{}({uid})",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                );
                self.memory(&uid, |m| {
                    m.waiting
                        .insert(name, ("CrashLoopBackOff".to_owned(), message))
                });
            }
            Action::StopSandbox => {
                if let Some(sandbox) = &observed.sandbox {
                    cri.runtime()
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: sandbox.id.clone(),
                        })
                        .await
                        .map_err(cri_err("StopPodSandbox"))?;
                }
            }
        }
        Ok(())
    }

    /// Makes sure the container's image is there, as its pull policy says; false (with a
    /// waiting reason recorded) when it is not.
    async fn ensure_image(
        &self,
        uid: &str,
        container: &k8s_openapi::api::core::v1::Container,
    ) -> Result<bool, SyncError> {
        let mut cri = self.cri.clone();
        let image = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".to_owned());
        let spec = ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let present = cri
            .images()
            .image_status(ImageStatusRequest {
                image: Some(spec.clone()),
                verbose: false,
            })
            .await
            .map_err(cri_err("ImageStatus"))?
            .into_inner()
            .image
            .is_some();
        let name = container.name.clone();
        if present && policy != "Always" {
            return Ok(true);
        }
        if policy == "Never" {
            let message =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            self.memory(uid, |m| {
                m.waiting
                    .insert(name, ("ErrImageNeverPull".to_owned(), message))
            });
            return Ok(false);
        }
        match cri
            .images()
            .pull_image(PullImageRequest {
                image: Some(spec),
                auth: None,
                sandbox_config: None,
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(status) => {
                let message = format!("Failed to pull image \"{image}\": {}", status.message());
                self.memory(uid, |m| {
                    m.waiting.insert(name, ("ErrImagePull".to_owned(), message))
                });
                Ok(false)
            }
        }
    }

    /// Kills the containers a failed liveness or startup probe asks to kill (their preStop
    /// hooks run, within the pod's grace period or the probe's own); true when it killed one.
    async fn kill_unhealthy(&self, pod: &Pod, observed: &Observed) -> Result<bool, SyncError> {
        let requests = self.probes.kill_requests(pod);
        let pod_ip = self.fields(observed).pod_ip;
        let spec = pod.spec.clone().unwrap_or_default();
        for request in &requests {
            let container = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == request.name);
            let kill = lifecycle::Kill {
                pod,
                container,
                name: &request.name,
                container_id: &request.container_id,
                pod_ip: &pod_ip,
                grace_seconds: request
                    .grace_override
                    .unwrap_or_else(|| lifecycle::grace_seconds(pod)),
                reason: Some(request.message.clone()),
            };
            lifecycle::kill_container(&self.cri, &self.events, kill)
                .await
                .map_err(cri_err("StopContainer"))?;
        }
        Ok(!requests.is_empty())
    }

    /// Graceful termination (upstream's killPod): every running container's preStop hook,
    /// then SIGTERM and SIGKILL when the grace period runs out, all containers at once; then
    /// the sandbox is removed, and only then the kubelet's own delete with grace 0 removes
    /// the pod from the API (a static pod is not in the API: it is only forgotten).
    async fn terminate(&self, pod: &Pod) -> Result<(), SyncError> {
        let uid = uid_of(pod);
        self.probes.forget_pod(&uid);
        let observed = self.observe(&uid).await?;
        self.stop_running(pod, &observed, lifecycle::grace_seconds(pod))
            .await;
        self.remove_sandboxes(&uid).await?;
        pod_cgroups::remove(&uid, &self.config.cgroup_root);
        self.volumes.tear_down(&uid)?;
        if static_pods::is_static(pod) {
            // Its mirror pod is the mirror keeper's to delete; nothing else in the API.
            info!(pod = ?pod.metadata.name, "static pod stopped");
            self.forget(&uid);
            lock(&self.retiring).remove(&uid);
            return Ok(());
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => info!(pod = %name, "terminated and removed"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        self.forget(&uid);
        Ok(())
    }

    /// Forgets what is remembered about a pod that is gone.
    fn forget(&self, uid: &str) {
        lock(&self.memory).remove(uid);
        self.config.evictions.forget(uid);
    }

    /// Kills every running container of the pod at once (preStop hooks, then SIGTERM and
    /// SIGKILL when `grace` runs out).
    async fn stop_running(&self, pod: &Pod, observed: &Observed, grace: i64) {
        let pod_ip = self.fields(observed).pod_ip;
        let spec = pod.spec.clone().unwrap_or_default();
        let running: Vec<(&String, &ContainerObservation)> = observed
            .containers
            .iter()
            .filter(|(_, c)| c.state == RunState::Running)
            .collect();
        let stopped = futures::future::join_all(running.into_iter().map(|(name, c)| {
            let container = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|spec| &spec.name == name);
            let kill = lifecycle::Kill {
                pod,
                container,
                name,
                container_id: &c.id,
                pod_ip: &pod_ip,
                grace_seconds: grace,
                reason: Some(format!("Stopping container {name}")),
            };
            lifecycle::kill_container(&self.cri, &self.events, kill)
        }))
        .await;
        for result in stopped {
            // The sandbox's stop or removal that follows takes what did not stop.
            if let Err(e) = result {
                warn!(error = %e, "stopping a container failed");
            }
        }
    }

    /// Carries out an eviction (upstream's kill with an eviction status): every running
    /// container is killed with the eviction's grace period, the pod is reported Failed /
    /// Evicted ([`eviction::evicted_status`]), then its sandbox is stopped and its volumes
    /// removed. With no eviction pending (a pod evicted earlier, e.g. before an agent
    /// restart) it only makes sure nothing of the pod runs; its status stays as reported.
    async fn evict(&self, pod: &Pod, eviction: Option<&Eviction>) -> Result<(), SyncError> {
        let uid = uid_of(pod);
        let observed = self.observe(&uid).await?;
        let running = observed.sandbox.as_ref().is_some_and(|s| s.ready)
            || observed
                .containers
                .values()
                .any(|c| c.state == RunState::Running);
        if !running && eviction.is_none() {
            return Ok(());
        }
        self.probes.forget_pod(&uid);
        let grace = eviction.map_or(HARD_EVICTION_GRACE_SECONDS, |e| e.grace_seconds);
        self.stop_running(pod, &observed, grace).await;
        if let Some(eviction) = eviction {
            let observed = self.observe(&uid).await?;
            let started_at = self.memory(&uid, |m| m.started_at);
            let mut status = status::pod_status(
                pod,
                &observed,
                &self.config.host_ip,
                started_at,
                now_seconds(),
            );
            if started_at == 0 {
                if let Some(status) = status.as_object_mut() {
                    status.remove("startTime");
                }
            }
            let status = eviction::evicted_status(status, &eviction.message, &now_rfc3339());
            self.report(pod, status).await?;
            info!(pod = ?pod.metadata.name, "evicted");
            self.config.evictions.done(&uid);
        }
        if let Some(sandbox) = observed.sandbox.as_ref().filter(|s| s.ready) {
            self.cri
                .clone()
                .runtime()
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                })
                .await
                .map_err(cri_err("StopPodSandbox"))?;
        }
        self.volumes.tear_down(&uid)?;
        // The eviction manager waits for this before it looks at the node again.
        self.config.evictions.cleaned_up(&uid);
        Ok(())
    }

    async fn remove_sandboxes(&self, uid: &str) -> Result<(), SyncError> {
        let mut cri = self.cri.clone();
        let labels: HashMap<String, String> = [(POD_UID_LABEL.to_owned(), uid.to_owned())].into();
        let sandboxes = cri
            .runtime()
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: labels,
                    ..Default::default()
                }),
            })
            .await
            .map_err(cri_err("ListPodSandbox"))?
            .into_inner()
            .items;
        for sandbox in sandboxes {
            cri.runtime()
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                })
                .await
                .map_err(cri_err("StopPodSandbox"))?;
            cri.runtime()
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: sandbox.id,
                })
                .await
                .map_err(cri_err("RemovePodSandbox"))?;
        }
        Ok(())
    }

    /// Removes the sandboxes of pods that are in no source (not in `live`). Before the API's
    /// pods have been listed (`api_synced` false) only static pods' sandboxes can be told
    /// orphaned (by the annotations they carry): a manifest removed while the agent was down
    /// stops even while the API server is away.
    async fn remove_orphans(
        &self,
        live: &HashSet<String>,
        api_synced: bool,
    ) -> Result<(), SyncError> {
        let mut cri = self.cri.clone();
        let sandboxes = cri
            .runtime()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(cri_err("ListPodSandbox"))?
            .into_inner()
            .items;
        let orphans: HashSet<String> = sandboxes
            .iter()
            .filter(|s| {
                api_synced
                    || static_pods::is_static_sandbox(&s.labels, &s.annotations, POD_UID_LABEL)
            })
            .filter_map(|s| s.labels.get(POD_UID_LABEL))
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        for uid in orphans {
            info!(%uid, "removing the sandbox of a pod that no longer exists");
            self.probes.forget_pod(&uid);
            self.remove_sandboxes(&uid).await?;
            pod_cgroups::remove(&uid, &self.config.cgroup_root);
            self.volumes.tear_down(&uid)?;
            self.forget(&uid);
        }
        Ok(())
    }
}

fn cri_err(call: &'static str) -> impl FnOnce(tonic::Status) -> SyncError {
    cri(call)
}
