//! Liveness, readiness and startup probes, as upstream's prober manager runs them: one task
//! per probe of each running container (keyed by container ID, so a restarted container gets
//! fresh probes), the first check after `initialDelaySeconds` counted from the container's
//! start, then one every `periodSeconds`, each bounded by `timeoutSeconds`; a result flips
//! after `successThreshold` consecutive passes or `failureThreshold` consecutive failures.
//! Until a startup probe passes, liveness and readiness are not run and the container is
//! neither started nor ready; a readiness probe starts out failing; a failed liveness or
//! startup probe asks for the container to be killed (the pod worker kills it and the restart
//! policy decides what follows).
//!
//! Owns probe scheduling and results. It must not touch containers itself (the pod worker
//! kills and restarts) nor report status (it hands [`ContainerHealth`] to `status`).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use corten_cri::runtime::CriClient;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::task::AbortHandle;
use tracing::{debug, info};

use super::{
    checks,
    events::{EventRecorder, EventType},
    observed::{ContainerHealth, Observed, RunState},
};

/// Upstream's defaults.
const DEFAULT_PERIOD: i32 = 10;
const DEFAULT_TIMEOUT: i32 = 1;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Restarts the container when it fails.
    Liveness,
    /// Decides whether the container is ready.
    Readiness,
    /// Holds the other two back until it passes; restarts the container when it fails.
    Startup,
}

impl ProbeKind {
    fn name(self) -> &'static str {
        match self {
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
            Self::Startup => "Startup",
        }
    }

    fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Self::Liveness => container.liveness_probe.as_ref(),
            Self::Readiness => container.readiness_probe.as_ref(),
            Self::Startup => container.startup_probe.as_ref(),
        }
    }
}

/// A probe's timing and thresholds, with upstream's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Seconds after the container's start before the first check.
    pub initial_delay: i64,
    /// Seconds between checks.
    pub period: Duration,
    /// Bound of one check.
    pub timeout: Duration,
    /// Consecutive passes that make the result a pass.
    pub success_threshold: u32,
    /// Consecutive failures that make the result a failure.
    pub failure_threshold: u32,
}

impl ProbeTiming {
    /// The timing of `probe` (liveness and startup probes always need one pass, as upstream
    /// validation demands).
    pub fn of(kind: ProbeKind, probe: &Probe) -> Self {
        let positive =
            |value: Option<i32>, default: i32| value.filter(|v| *v > 0).unwrap_or(default);
        let success = match kind {
            ProbeKind::Readiness => positive(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            _ => 1,
        };
        Self {
            initial_delay: i64::from(probe.initial_delay_seconds.unwrap_or(0).max(0)),
            period: Duration::from_secs(positive(probe.period_seconds, DEFAULT_PERIOD) as u64),
            timeout: Duration::from_secs(positive(probe.timeout_seconds, DEFAULT_TIMEOUT) as u64),
            success_threshold: success as u32,
            failure_threshold: positive(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD) as u32,
        }
    }
}

/// Consecutive passes and failures against the thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    result: bool,
    passes: u32,
    failures: u32,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Thresholds {
    /// Counting from an initial result.
    pub fn new(initial: bool, timing: &ProbeTiming) -> Self {
        Self {
            result: initial,
            passes: 0,
            failures: 0,
            success_threshold: timing.success_threshold.max(1),
            failure_threshold: timing.failure_threshold.max(1),
        }
    }

    /// Counts one check; returns the result when this check decided it (it may be the same
    /// as before, as when the first pass confirms an initial pass).
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.passes >= self.success_threshold {
                self.result = true;
                return Some(true);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.failure_threshold {
                self.result = false;
                return Some(false);
            }
        }
        None
    }

    /// The current result.
    pub fn result(&self) -> bool {
        self.result
    }
}

/// The probe results of one container attempt.
#[derive(Debug, Clone, Default)]
struct Results {
    has_startup: bool,
    has_readiness: bool,
    started: bool,
    ready: bool,
    /// Why the container must be killed (a liveness or startup probe failed).
    kill: Option<String>,
}

impl Results {
    fn health(&self) -> ContainerHealth {
        let started = !self.has_startup || self.started;
        ContainerHealth {
            started,
            ready: started && (!self.has_readiness || self.ready),
        }
    }
}

/// A running container whose probes are being run.
struct Tracked {
    pod_uid: String,
    name: String,
    results: Arc<Mutex<Results>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A probe failure that asks for a container to be killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    /// Container name.
    pub name: String,
    /// Runtime ID of the attempt to kill.
    pub container_id: String,
    /// Why (upstream's wording: "Container X failed liveness probe, will be restarted").
    pub message: String,
    /// The probe's own `terminationGracePeriodSeconds`, when it sets one.
    pub grace_override: Option<i64>,
}

/// Runs the probes of every container on this node.
#[derive(Clone)]
pub struct ProbeManager {
    cri: CriClient,
    events: EventRecorder,
    tracked: Arc<Mutex<HashMap<String, Tracked>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn probed_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    let sidecars = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.map(|s| s.containers.iter())
        .into_iter()
        .flatten()
        .chain(sidecars)
}

/// `(started, ready)` as the pod's status in the API reports the container attempt
/// `container_id`, when it does.
fn reported_status(pod: &Pod, container_id: &str) -> Option<(bool, bool)> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|s| {
            s.container_id
                .as_deref()
                .and_then(|id| id.split_once("://"))
                .is_some_and(|(_, id)| id == container_id)
        })
        .map(|s| (s.started.unwrap_or(false), s.ready))
}

fn has_probes(container: &Container) -> bool {
    container.liveness_probe.is_some()
        || container.readiness_probe.is_some()
        || container.startup_probe.is_some()
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl std::fmt::Debug for ProbeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeManager")
            .field("containers", &lock(&self.tracked).len())
            .finish_non_exhaustive()
    }
}

impl ProbeManager {
    /// A manager with no probes running.
    pub fn new(cri: CriClient, events: EventRecorder) -> Self {
        Self {
            cri,
            events,
            tracked: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Starts probes for the pod's running containers that have none yet and stops those of
    /// attempts that are no longer running.
    pub fn sync_pod(&self, pod: &Pod, observed: &Observed) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pod_ip = observed
            .sandbox
            .as_ref()
            .and_then(|s| s.ip.clone())
            .unwrap_or_default();
        let mut running = Vec::new();
        for container in probed_containers(pod).filter(|c| has_probes(c)) {
            let Some(attempt) = observed
                .container(&container.name)
                .filter(|c| c.state == RunState::Running)
            else {
                continue;
            };
            running.push(attempt.id.clone());
            let mut tracked = lock(&self.tracked);
            if tracked.contains_key(&attempt.id) {
                continue;
            }
            let entry = self.start(pod, container, &attempt.id, attempt.started_at, &pod_ip);
            tracked.insert(attempt.id.clone(), entry);
        }
        lock(&self.tracked).retain(|id, t| t.pod_uid != uid || running.contains(id));
    }

    /// Stops every probe of a pod (it is terminating or gone).
    pub fn forget_pod(&self, uid: &str) {
        lock(&self.tracked).retain(|_, t| t.pod_uid != uid);
    }

    /// What the probes found, per container name, for the pod's current attempts.
    pub fn health(&self, uid: &str) -> HashMap<String, ContainerHealth> {
        lock(&self.tracked)
            .values()
            .filter(|t| t.pod_uid == uid)
            .map(|t| (t.name.clone(), lock(&t.results).health()))
            .collect()
    }

    /// Containers of the pod that a failed liveness or startup probe wants killed.
    pub fn kill_requests(&self, pod: &Pod) -> Vec<KillRequest> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        lock(&self.tracked)
            .iter()
            .filter(|(_, t)| t.pod_uid == uid)
            .filter_map(|(id, t)| {
                let message = lock(&t.results).kill.clone()?;
                let container = probed_containers(pod).find(|c| c.name == t.name);
                let grace_override = container.and_then(|c| {
                    [ProbeKind::Liveness, ProbeKind::Startup]
                        .into_iter()
                        .filter_map(|k| k.of(c))
                        .find_map(|p| p.termination_grace_period_seconds)
                });
                Some(KillRequest {
                    name: t.name.clone(),
                    container_id: id.clone(),
                    message,
                    grace_override,
                })
            })
            .collect()
    }

    fn start(
        &self,
        pod: &Pod,
        container: &Container,
        container_id: &str,
        started_at: i64,
        pod_ip: &str,
    ) -> Tracked {
        // A container this kubelet (or one before a restart) already reported keeps what was
        // reported until its probes say otherwise, so an agent restart does not flip a
        // Ready pod to not ready (nor an unready one to ready).
        let reported = reported_status(pod, container_id);
        let results = Arc::new(Mutex::new(Results {
            has_startup: container.startup_probe.is_some(),
            has_readiness: container.readiness_probe.is_some(),
            started: reported.is_some_and(|(started, _)| started),
            ready: reported.is_some_and(|(_, ready)| ready),
            ..Results::default()
        }));
        let mut tasks = Vec::new();
        for kind in [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ] {
            let Some(probe) = kind.of(container) else {
                continue;
            };
            let worker = ProbeWorker {
                kind,
                timing: ProbeTiming::of(kind, probe),
                check: checks::from_probe(probe, container, pod_ip),
                cri: self.cri.clone(),
                events: self.events.clone(),
                pod: pod.clone(),
                container_name: container.name.clone(),
                container_id: container_id.to_owned(),
                started_at,
                results: results.clone(),
            };
            tasks.push(tokio::spawn(worker.run()).abort_handle());
        }
        debug!(pod = ?pod.metadata.name, container = %container.name, probes = tasks.len(), "probing");
        Tracked {
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            name: container.name.clone(),
            results,
            tasks,
        }
    }
}

/// One probe of one container attempt.
struct ProbeWorker {
    kind: ProbeKind,
    timing: ProbeTiming,
    check: Result<checks::Check, checks::CheckError>,
    cri: CriClient,
    events: EventRecorder,
    pod: Pod,
    container_name: String,
    container_id: String,
    started_at: i64,
    results: Arc<Mutex<Results>>,
}

impl ProbeWorker {
    async fn run(self) {
        let wait = (self.started_at + self.timing.initial_delay - now_seconds()).max(0);
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        // Liveness starts out passing, readiness failing, startup not yet passed — unless an
        // earlier report of this same attempt said otherwise.
        let initial = {
            let results = lock(&self.results);
            match self.kind {
                ProbeKind::Liveness => true,
                ProbeKind::Readiness => results.ready,
                ProbeKind::Startup => results.started,
            }
        };
        if self.kind == ProbeKind::Startup && initial {
            return;
        }
        let mut thresholds = Thresholds::new(initial, &self.timing);
        let mut ticks = tokio::time::interval(self.timing.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let held_back = {
                let results = lock(&self.results);
                self.kind != ProbeKind::Startup && results.has_startup && !results.started
            };
            if held_back {
                continue;
            }
            let outcome = match &self.check {
                Ok(check) => {
                    checks::run(&self.cri, &self.container_id, check, self.timing.timeout).await
                }
                Err(e) => checks::Outcome {
                    success: false,
                    message: e.to_string(),
                },
            };
            if !outcome.success {
                debug!(pod = ?self.pod.metadata.name, container = %self.container_name,
                    probe = self.kind.name(), message = %outcome.message, "probe failed");
                self.events.record(
                    &self.pod,
                    Some(&self.container_name),
                    EventType::Warning,
                    "Unhealthy",
                    &format!(
                        "{} probe failed: {}",
                        self.kind.name(),
                        outcome.message.trim_end()
                    ),
                );
            }
            let Some(result) = thresholds.record(outcome.success) else {
                continue;
            };
            let mut results = lock(&self.results);
            match (self.kind, result) {
                (ProbeKind::Readiness, ready) => results.ready = ready,
                (ProbeKind::Startup, true) => {
                    results.started = true;
                    return;
                }
                (ProbeKind::Liveness, true) => {}
                (kind, false) => {
                    let message = format!(
                        "Container {} failed {} probe, will be restarted",
                        self.container_name,
                        kind.name().to_lowercase()
                    );
                    info!(pod = ?self.pod.metadata.name, %message);
                    results.kill = Some(message);
                    // On hold until the container is replaced (upstream's onHold).
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_attempt_keeps_its_reported_readiness() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "a"}]},
            "status": {"containerStatuses": [{"name": "a", "image": "i", "imageID": "",
                "restartCount": 0, "ready": true, "started": true,
                "containerID": "containerd://abc"}]}}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reported_status(&pod, "abc"), Some((true, true)));
        // Another attempt starts from scratch.
        assert_eq!(reported_status(&pod, "def"), None);
    }

    fn probe(value: serde_json::Value) -> Probe {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn timings_default_as_upstream() {
        let timing = ProbeTiming::of(ProbeKind::Readiness, &probe(serde_json::json!({})));
        assert_eq!(
            timing,
            ProbeTiming {
                initial_delay: 0,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        let set = probe(
            serde_json::json!({"initialDelaySeconds": 5, "periodSeconds": 2,
            "timeoutSeconds": 3, "successThreshold": 2, "failureThreshold": 1}),
        );
        let readiness = ProbeTiming::of(ProbeKind::Readiness, &set);
        assert_eq!(
            (
                readiness.initial_delay,
                readiness.period.as_secs(),
                readiness.timeout.as_secs()
            ),
            (5, 2, 3)
        );
        assert_eq!(
            (readiness.success_threshold, readiness.failure_threshold),
            (2, 1)
        );
        // Liveness and startup probes need one pass, whatever the spec says.
        assert_eq!(
            ProbeTiming::of(ProbeKind::Liveness, &set).success_threshold,
            1
        );
    }

    #[test]
    fn results_flip_only_after_their_thresholds() {
        let timing = ProbeTiming::of(
            ProbeKind::Readiness,
            &probe(serde_json::json!({"successThreshold": 2, "failureThreshold": 3})),
        );
        let mut readiness = Thresholds::new(false, &timing);
        assert_eq!(readiness.record(true), None);
        assert!(!readiness.result());
        assert_eq!(readiness.record(true), Some(true));
        assert_eq!(readiness.record(false), None);
        assert_eq!(readiness.record(false), None);
        // A pass in between starts the failure count again.
        assert_eq!(readiness.record(true), None);
        assert_eq!(readiness.record(false), None);
        assert_eq!(readiness.record(false), None);
        assert!(readiness.result());
        assert_eq!(readiness.record(false), Some(false));
        assert!(!readiness.result());
    }

    #[test]
    fn a_startup_probe_holds_readiness_back() {
        let mut results = Results {
            has_startup: true,
            has_readiness: false,
            ..Results::default()
        };
        assert_eq!(
            results.health(),
            ContainerHealth {
                started: false,
                ready: false
            }
        );
        results.started = true;
        assert_eq!(
            results.health(),
            ContainerHealth {
                started: true,
                ready: true
            }
        );
        results.has_readiness = true;
        assert_eq!(
            results.health(),
            ContainerHealth {
                started: true,
                ready: false
            }
        );
        results.ready = true;
        assert_eq!(
            results.health(),
            ContainerHealth {
                started: true,
                ready: true
            }
        );
    }
}
