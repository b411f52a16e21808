//! What the runtime says about one pod, reduced to plain data the kubelet's decisions read:
//! its sandbox (ready or not, IP) and, per container name, the latest attempt (state, exit
//! code, times, restart count), plus why a container is waiting when the kubelet itself
//! held it back (image not present, crash-loop backoff, create error), and what the probes
//! found about running containers.
//!
//! Owns the shape of observations; filling it from CRI is the pod worker's job.
use std::collections::HashMap;

/// A container attempt's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// The runtime does not know.
    Unknown,
}

/// The latest attempt of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerObservation {
    /// Runtime ID.
    pub id: String,
    /// State.
    pub state: RunState,
    /// Exit code when exited.
    pub exit_code: i32,
    /// Runtime reason (`Completed`, `Error`, `OOMKilled`).
    pub reason: String,
    /// Runtime message.
    pub message: String,
    /// Start time, seconds since the epoch (0 if never started).
    pub started_at: i64,
    /// Finish time, seconds since the epoch (0 if running).
    pub finished_at: i64,
    /// Attempt number (the restart count).
    pub attempt: u32,
    /// Image as asked for.
    pub image: String,
    /// Image ID the runtime resolved.
    pub image_ref: String,
}

/// The pod's sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxObservation {
    /// Runtime ID.
    pub id: String,
    /// Whether it is ready (running, with its network).
    pub ready: bool,
    /// The pod IP.
    pub ip: Option<String>,
    /// Attempt number.
    pub attempt: u32,
}

/// Everything observed about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The newest sandbox.
    pub sandbox: Option<SandboxObservation>,
    /// Latest attempt per container name.
    pub containers: HashMap<String, ContainerObservation>,
    /// The attempt before the latest, per name of a container that restarted.
    pub previous: HashMap<String, ContainerObservation>,
    /// Containers the kubelet holds back: name → (reason, message).
    pub waiting: HashMap<String, (String, String)>,
    /// What the probes found, per name of a running container that has probes (a running
    /// container without probes is started and ready).
    pub health: HashMap<String, ContainerHealth>,
}

/// What a running container's probes found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerHealth {
    /// Its startup probe passed (or it has none).
    pub started: bool,
    /// It is started and its readiness probe passes (or it has none).
    pub ready: bool,
}

impl Observed {
    /// The latest attempt of a container.
    pub fn container(&self, name: &str) -> Option<&ContainerObservation> {
        self.containers.get(name)
    }
}
