//! Node-pressure eviction, as upstream's kubelet does it (the "Node-pressure Eviction" page
//! on kubernetes.io): every monitoring interval (upstream 10 s) the signals are observed —
//! `memory.available` (the node's memory capacity less the working set of the cgroup root:
//! the whole machine from `/proc/meminfo` when that is `/`, else that cgroup's, read by
//! [`resource_usage`](crate::kubelet_api::resource_usage)), `nodefs.available` /
//! `nodefs.inodesFree` (the filesystem of the agent's data directory) and
//! `imagefs.available` / `imagefs.inodesFree` (the runtime's image filesystem, from CRI
//! `ImageFsInfo`) — and compared with the thresholds: hard ones (`--eviction-hard`,
//! upstream syntax and defaults) and soft ones (`--eviction-soft`, which call for eviction
//! only once met for their `--eviction-soft-grace-period`, and give the evicted pod at
//! most `--eviction-max-pod-grace-period`); `--eviction-minimum-reclaim` keeps a met
//! threshold met until that much more is free. A met threshold (soft ones at once) sets
//! the node condition MemoryPressure or DiskPressure, which stays True until no threshold
//! of its kind has been met for the pressure transition period (upstream 5 min). Under
//! disk pressure node-level resources are reclaimed first where the images are (unused
//! images through [`image_gc`](super::image_gc), then dead containers): for the image
//! filesystem's signals, and for the node filesystem's only when the images are on it
//! ([`reclaims_images`]); if the threshold is still met, one pod is evicted: the active
//! pods that are not critical (static, mirror, priority ≥ 2000000000) ranked as upstream —
//! usage above requests first, then lower priority, then the larger usage over requests
//! (memory: the pod cgroup's working set; disk: its volumes and logs on the node
//! filesystem, in bytes or inodes). The pod worker carries the eviction out
//! ([`Evictions`]): it kills the containers (grace 0 for a hard threshold), reports phase
//! Failed, reason `Evicted`, upstream's message (the threshold as a quantity, then each
//! container using more than it requests, [`offending_containers`]) and a DisruptionTarget
//! condition ([`evicted_status`]), stops the sandbox and removes the volumes; an `Evicted`
//! event with upstream's annotations is recorded. As upstream, the manager then waits (at
//! most 30 s) for that clean-up before it observes again, so the freed space is seen before
//! anything else is evicted.
//!
//! Every pass, before the thresholds, a pod with an emptyDir over its `sizeLimit` is
//! evicted (the emptyDir part of upstream's local storage eviction,
//! [`empty_dir_over_limit`]; the pod and container `ephemeral-storage` limits are not
//! enforced: that needs the containers' writable layers, which are not measured).
//!
//! Each pass that finds a threshold calling for eviction records `EvictionThresholdMet`
//! ("Attempting to reclaim memory") on the Node first, as upstream does.
//!
//! While the node is under pressure, new pods are refused as upstream's eviction admission
//! refuses them ([`admission_refusal`]): under memory pressure alone BestEffort pods that do
//! not tolerate the memory-pressure taint, under disk pressure every pod; critical pods never.
//!
//! Owns the signals, thresholds, ranking and the node pressure state. The decisions are
//! plain functions; the I/O (stats, CRI, the pod list) is the thin [`run`] loop. It never
//! kills a container itself (the pod worker does) and never writes the Node (the node
//! status reporter publishes what [`NodePressure`] says).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use corten_cri::runtime::CriClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatsRequest, ListContainersRequest,
    RemoveContainerRequest,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    events::{EventRecorder, EventType},
    image_gc::{self, ImageGc},
    pod_sources::PodSources,
    runtime_config::{self, CONTAINER_NAME_LABEL, POD_UID_LABEL},
    static_pods::{MIRROR_ANNOTATION, SOURCE_ANNOTATION},
};
use crate::kubelet_api::resource_usage::{Cgroups, Proc};

/// Upstream's `--eviction-hard` default.
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%";
/// Upstream's `--eviction-pressure-transition-period` default.
pub const DEFAULT_TRANSITION_PERIOD: Duration = Duration::from_secs(300);
/// Upstream's monitoring interval.
pub const DEFAULT_MONITORING_INTERVAL: Duration = Duration::from_secs(10);
/// Pods at or above this priority are critical and never evicted (upstream's
/// `SystemCriticalPriority`).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
/// The grace period of a pod evicted for a hard threshold.
pub const HARD_EVICTION_GRACE_SECONDS: i64 = 0;

/// What is wrong with an eviction flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThresholdError {
    /// The signal is not one the kubelet knows.
    #[error("unknown eviction signal {0:?} (use memory.available, nodefs.available, nodefs.inodesFree, imagefs.available or imagefs.inodesFree)")]
    UnknownSignal(String),
    /// The entry has no operator.
    #[error("eviction threshold {0:?} has no {1:?} operator")]
    NoOperator(String, char),
    /// The quantity or percentage does not parse (or is negative, or a percentage over 100).
    #[error("invalid quantity {0:?} in eviction flag")]
    BadQuantity(String),
    /// The same signal is given twice.
    #[error("eviction signal {0} given twice")]
    Duplicate(&'static str),
    /// A soft threshold has no grace period.
    #[error(
        "grace period must be specified for the soft eviction threshold {0} \
         (--eviction-soft-grace-period)"
    )]
    NoGracePeriod(&'static str),
    /// A duration does not parse.
    #[error("invalid duration {0:?} (use e.g. 10s, 5m, 1m30s)")]
    BadDuration(String),
    /// A threshold's quantity is zero, or a minimum reclaim's percentage is (upstream
    /// refuses both).
    #[error("eviction quantity in {0:?} must be positive")]
    NotPositive(String),
}

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// The node's memory capacity less its working set.
    MemoryAvailable,
    /// Free bytes of the node filesystem (the agent's data directory).
    NodeFsAvailable,
    /// Free inodes of the node filesystem.
    NodeFsInodesFree,
    /// Free bytes of the runtime's image filesystem.
    ImageFsAvailable,
    /// Free inodes of the runtime's image filesystem.
    ImageFsInodesFree,
}

/// The node condition a signal feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PressureKind {
    /// MemoryPressure.
    Memory,
    /// DiskPressure.
    Disk,
}

impl Signal {
    const ALL: [Signal; 5] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
    ];

    /// Its name in flags.
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
        }
    }

    fn parse(name: &str) -> Result<Self, ThresholdError> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| ThresholdError::UnknownSignal(name.to_owned()))
    }

    /// The resource it measures, as upstream's eviction message names it.
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
        }
    }

    /// The condition it feeds.
    pub fn pressure(self) -> PressureKind {
        match self {
            Signal::MemoryAvailable => PressureKind::Memory,
            _ => PressureKind::Disk,
        }
    }

    /// Whether it counts inodes rather than bytes.
    fn counts_inodes(self) -> bool {
        matches!(self, Signal::NodeFsInodesFree | Signal::ImageFsInodesFree)
    }
}

/// A quantity or a percentage of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Bytes (or inodes), and how the flag wrote them.
    Quantity(u64, Suffix),
    /// Percent of the capacity.
    Percent(f64),
}

/// The kind of suffix a quantity was written with, which is how upstream prints it back
/// (a Quantity keeps its format: `500M` stays `500M`, `1024Mi` becomes `1Gi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffix {
    /// `Ki`, `Mi`, `Gi`, `Ti`.
    Binary,
    /// None, or `k`, `M`, `G`, `T`.
    Decimal,
}

impl Amount {
    fn parse(text: &str) -> Result<Self, ThresholdError> {
        let bad = || ThresholdError::BadQuantity(text.to_owned());
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            // Upstream parses the percentage as a float32.
            let value: f32 = percent.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&value) {
                return Err(bad());
            }
            return Ok(Amount::Percent(f64::from(value)));
        }
        let milli = runtime_config::parse_milli(text).ok_or_else(bad)?;
        let units = u64::try_from(milli).map_err(|_| bad())? / 1000;
        let suffix = if text.ends_with('i') {
            Suffix::Binary
        } else {
            Suffix::Decimal
        };
        Ok(Amount::Quantity(units, suffix))
    }

    /// The amount in units, given the capacity. A percentage is taken as upstream takes it:
    /// a float32 fraction (percent / 100) of the capacity, truncated.
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            Amount::Quantity(q, _) => q,
            Amount::Percent(p) => {
                let fraction = p as f32 / 100.0;
                (capacity as f64 * f64::from(fraction)) as u64
            }
        }
    }
}

/// Bytes as a Kubernetes quantity: the largest binary suffix that divides them exactly.
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A count as a Kubernetes decimal quantity: the largest of k, M, G, T, P, E that divides it
/// exactly (how upstream prints inodes).
pub fn format_decimal(count: u64) -> String {
    for (suffix, unit) in [
        ("E", 1_000_000_000_000_000_000u64),
        ("P", 1_000_000_000_000_000),
        ("T", 1_000_000_000_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ] {
        if count >= unit && count.is_multiple_of(unit) {
            return format!("{}{suffix}", count / unit);
        }
    }
    count.to_string()
}

/// One threshold: evict when the signal's value is below `amount` (for a soft threshold,
/// once it has been so for its grace period).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// What is measured.
    pub signal: Signal,
    /// The value below which it is met.
    pub amount: Amount,
    /// How much more must be free before a met threshold stops being met.
    pub min_reclaim: Option<Amount>,
    /// How long it must be met before pods are evicted: zero for a hard threshold
    /// (`--eviction-hard`), its `--eviction-soft-grace-period` for a soft one.
    pub grace_period: Duration,
}

impl Threshold {
    /// Whether it is a hard threshold (no grace period), as upstream tells them apart.
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }
}

/// Parses `--eviction-hard` or `--eviction-soft` (`signal<quantity` entries, comma
/// separated; empty: none), without grace periods. As upstream, `0%` and `100%` set no
/// threshold and a quantity must be positive.
pub fn parse_thresholds(text: &str) -> Result<Vec<Threshold>, ThresholdError> {
    let mut out: Vec<Threshold> = Vec::new();
    let mut seen: HashSet<Signal> = HashSet::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, quantity) = entry
            .split_once('<')
            .ok_or_else(|| ThresholdError::NoOperator(entry.to_owned(), '<'))?;
        let signal = Signal::parse(name.trim())?;
        if !seen.insert(signal) {
            return Err(ThresholdError::Duplicate(signal.name()));
        }
        let quantity = quantity.trim();
        if quantity == "0%" || quantity == "100%" {
            continue;
        }
        let amount = Amount::parse(quantity)?;
        if matches!(amount, Amount::Quantity(0, _)) {
            return Err(ThresholdError::NotPositive(entry.to_owned()));
        }
        out.push(Threshold {
            signal,
            amount,
            min_reclaim: None,
            grace_period: Duration::ZERO,
        });
    }
    Ok(out)
}

/// Parses `--eviction-soft` with `--eviction-soft-grace-period` (`signal=duration` entries):
/// every soft threshold needs a grace period; grace periods of signals without a soft
/// threshold are ignored, as upstream ignores them.
pub fn parse_soft_thresholds(
    soft: &str,
    grace_periods: &str,
) -> Result<Vec<Threshold>, ThresholdError> {
    let mut periods: HashMap<Signal, Duration> = HashMap::new();
    for entry in grace_periods
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, duration) = entry
            .split_once('=')
            .ok_or_else(|| ThresholdError::NoOperator(entry.to_owned(), '='))?;
        periods.insert(Signal::parse(name.trim())?, parse_duration(duration)?);
    }
    let mut thresholds = parse_thresholds(soft)?;
    for threshold in &mut thresholds {
        threshold.grace_period = *periods
            .get(&threshold.signal)
            .ok_or(ThresholdError::NoGracePeriod(threshold.signal.name()))?;
    }
    Ok(thresholds)
}

/// Applies `--eviction-minimum-reclaim` (`signal=quantity` entries) to `thresholds` (hard
/// and soft ones of the signal; as upstream, one for a signal without a threshold does
/// nothing).
pub fn apply_minimum_reclaim(
    thresholds: &mut [Threshold],
    text: &str,
) -> Result<(), ThresholdError> {
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, quantity) = entry
            .split_once('=')
            .ok_or_else(|| ThresholdError::NoOperator(entry.to_owned(), '='))?;
        let signal = Signal::parse(name.trim())?;
        let amount = Amount::parse(quantity)?;
        if amount == Amount::Percent(0.0) {
            return Err(ThresholdError::NotPositive(entry.to_owned()));
        }
        for threshold in thresholds.iter_mut().filter(|t| t.signal == signal) {
            threshold.min_reclaim = Some(amount);
        }
    }
    Ok(())
}

/// Parses a Go-style duration: `300ms`, `10s`, `5m`, `1h`, `1m30s`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ThresholdError> {
    let bad = || ThresholdError::BadDuration(text.to_owned());
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(seconds);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// One signal's observed value and the capacity it is a part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// What is available (bytes or inodes).
    pub available: u64,
    /// The capacity.
    pub capacity: u64,
}

/// Whether `threshold` is met by `observation`; with `enforce_min_reclaim` (the threshold
/// was met last time) it stays met until its minimum reclaim is free on top of it.
pub fn threshold_met(
    threshold: &Threshold,
    observation: Observation,
    enforce_min_reclaim: bool,
) -> bool {
    let mut quantity = threshold.amount.of(observation.capacity);
    if enforce_min_reclaim {
        if let Some(reclaim) = threshold.min_reclaim {
            quantity = quantity.saturating_add(reclaim.of(observation.capacity));
        }
    }
    observation.available < quantity
}

/// A node pressure condition's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConditionState {
    /// Whether the node is under this pressure.
    pub under: bool,
    /// When that last changed (RFC 3339); empty until it first changes.
    pub since: String,
}

/// What the node status reports about pressure (read by [`node`](super::node)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePressure {
    /// MemoryPressure.
    pub memory: ConditionState,
    /// DiskPressure.
    pub disk: ConditionState,
}

impl NodePressure {
    /// The MemoryPressure and DiskPressure conditions as upstream writes them (`status`,
    /// `reason`, `message`, and the transition time when known).
    pub fn conditions(&self) -> [(&'static str, &ConditionState, &'static str, &'static str); 2] {
        let memory = if self.memory.under {
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        };
        let disk = if self.disk.under {
            ("KubeletHasDiskPressure", "kubelet has disk pressure")
        } else {
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
        };
        [
            ("MemoryPressure", &self.memory, memory.0, memory.1),
            ("DiskPressure", &self.disk, disk.0, disk.1),
        ]
    }
}

/// The thresholds' state between passes, as upstream keeps it: which drove eviction last
/// time (their minimum reclaim applies), since when each met threshold has been met (for
/// soft thresholds' grace periods) and when each kind of pressure was last seen (for the
/// transition period). Thresholds are known by their place in the list.
#[derive(Debug)]
pub struct PressureTracker {
    thresholds: Vec<Threshold>,
    transition: Duration,
    met_last: HashSet<usize>,
    first_met: HashMap<usize, Instant>,
    last_seen: HashMap<PressureKind, Instant>,
}

impl PressureTracker {
    /// A tracker of `thresholds` whose conditions clear `transition` after the last
    /// threshold of their kind stops being met.
    pub fn new(thresholds: Vec<Threshold>, transition: Duration) -> Self {
        Self {
            thresholds,
            transition,
            met_last: HashSet::new(),
            first_met: HashMap::new(),
            last_seen: HashMap::new(),
        }
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &[Threshold] {
        &self.thresholds
    }

    /// Takes this pass's observations at `now`: returns the thresholds that call for
    /// eviction now — met, and for a soft one met for its whole grace period (memory first,
    /// then hard before soft, in flag order) — and whether the node is under memory and
    /// disk pressure, which a met threshold sets at once, grace period or not. A signal
    /// without an observation meets nothing.
    pub fn observe(
        &mut self,
        observations: &HashMap<Signal, Observation>,
        now: Instant,
    ) -> (Vec<Threshold>, bool, bool) {
        let met: Vec<usize> = (0..self.thresholds.len())
            .filter(|i| {
                let t = &self.thresholds[*i];
                observations
                    .get(&t.signal)
                    .is_some_and(|o| threshold_met(t, *o, self.met_last.contains(i)))
            })
            .collect();
        self.first_met.retain(|i, _| met.contains(i));
        for &i in &met {
            self.first_met.entry(i).or_insert(now);
            self.last_seen
                .insert(self.thresholds[i].signal.pressure(), now);
        }
        let ready: Vec<usize> = met
            .into_iter()
            .filter(|i| {
                self.first_met.get(i).is_some_and(|&since| {
                    now.saturating_duration_since(since) >= self.thresholds[*i].grace_period
                })
            })
            .collect();
        self.met_last = ready.iter().copied().collect();
        let mut ready: Vec<Threshold> = ready
            .into_iter()
            .map(|i| self.thresholds[i].clone())
            .collect();
        ready.sort_by_key(|t| t.signal.pressure() != PressureKind::Memory);
        let under = |kind| {
            self.last_seen
                .get(&kind)
                .is_some_and(|&at| now.saturating_duration_since(at) < self.transition || at == now)
        };
        let (memory, disk) = (under(PressureKind::Memory), under(PressureKind::Disk));
        (ready, memory, disk)
    }
}

/// A pod as the ranking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its UID.
    pub uid: String,
    /// Its priority (0 when unset).
    pub priority: i32,
    /// What it uses of the starved resource.
    pub usage: u64,
    /// What it requests of it.
    pub request: u64,
}

/// Ranks pods for eviction as upstream does: those using more than they request first,
/// then lower priority first, then the larger usage over request first.
pub fn rank(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| {
        let exceeds = |c: &Candidate| c.usage > c.request;
        let over = |c: &Candidate| i128::from(c.usage) - i128::from(c.request);
        exceeds(b)
            .cmp(&exceeds(a))
            .then(a.priority.cmp(&b.priority))
            .then(over(b).cmp(&over(a)))
    });
}

/// Whether the kubelet never evicts `pod`: a static or mirror pod, or one at system
/// critical priority.
pub fn is_critical(pod: &Pod) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let static_or_mirror = annotations.is_some_and(|a| {
        a.contains_key(MIRROR_ANNOTATION) || a.get(SOURCE_ANNOTATION).is_some_and(|s| s != "api")
    });
    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    static_or_mirror || priority >= SYSTEM_CRITICAL_PRIORITY
}

/// The reason of an evicted or refused pod, and of its event (upstream's `Reason`).
pub const REASON: &str = "Evicted";

/// Upstream's eviction admission of a new pod: the message (`The node had condition:
/// [MemoryPressure]. `) when the node's pressure refuses it, none when it is admitted. Under
/// memory pressure alone a pod that is not BestEffort is admitted, and so is a BestEffort pod
/// that tolerates the `node.kubernetes.io/memory-pressure` NoSchedule taint; under disk
/// pressure no pod is; a critical pod always is.
pub fn admission_refusal(pressure: &NodePressure, pod: &Pod) -> Option<String> {
    let conditions: Vec<&str> = pressure
        .conditions()
        .iter()
        .filter(|(_, state, _, _)| state.under)
        .map(|(name, ..)| *name)
        .collect();
    if conditions.is_empty() || is_critical(pod) {
        return None;
    }
    if !pressure.disk.under {
        let best_effort = runtime_config::qos_class(pod) == "BestEffort";
        if !best_effort || tolerates_memory_pressure(pod) {
            return None;
        }
    }
    // Go's %v of the condition list.
    Some(format!(
        "The node had condition: [{}]. ",
        conditions.join(" ")
    ))
}

/// Whether `pod` tolerates the memory-pressure taint (`NoSchedule`), as upstream's
/// `ToleratesTaint` matches a toleration.
fn tolerates_memory_pressure(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .into_iter()
        .flatten()
        .any(|t| {
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "NoSchedule");
            let key = t.key.as_deref().unwrap_or_default();
            let key_ok = key.is_empty() || key == "node.kubernetes.io/memory-pressure";
            let operator = t.operator.as_deref().unwrap_or("Equal");
            let value_ok = match operator {
                "Exists" => true,
                // The taint's value is empty.
                "Equal" | "" => t.value.as_deref().unwrap_or_default().is_empty(),
                _ => false,
            };
            effect_ok && key_ok && value_ok
        })
}

/// Whether the kubelet has started the pod (reported its start time).
fn has_started(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| s.start_time.is_some())
}

/// Whether the pod still runs on the node: not in a terminal phase, not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Failed" | "Succeeded"))
}

/// Whether the pod was evicted (phase Failed, reason Evicted).
pub fn was_evicted(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some(REASON)
    })
}

/// The pod's request of `resource` (`memory` or `ephemeral-storage`) in bytes: the larger
/// of its app containers' sum and its largest init container, as upstream sums requests.
pub fn pod_request(pod: &Pod, resource: &str) -> u64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let request = |c: &k8s_openapi::api::core::v1::Container| -> u64 {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| runtime_config::parse_milli(&q.0))
            .and_then(|m| u64::try_from(m / 1000).ok())
            .unwrap_or(0)
    };
    let apps: u64 = spec.containers.iter().map(request).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(request)
        .max()
        .unwrap_or(0);
    apps.max(init)
}

/// Upstream's eviction message for `threshold` met with `available` left. The threshold is
/// shown as a quantity (a percentage as that share of the capacity, in bytes as upstream
/// prints it); inodes are counts.
pub fn eviction_message(threshold: &Threshold, observation: Observation) -> String {
    let resource = threshold.signal.resource();
    let inodes = threshold.signal.counts_inodes();
    // As upstream: a percentage as the binary quantity it stands for, a quantity as written.
    let quantity = match threshold.amount {
        Amount::Percent(_) => format_bytes(threshold.amount.of(observation.capacity)),
        Amount::Quantity(q, Suffix::Decimal) => format_decimal(q),
        Amount::Quantity(q, Suffix::Binary) => format_bytes(q),
    };
    let available = if inodes {
        format_decimal(observation.available)
    } else {
        format_bytes(observation.available)
    };
    format!(
        "The node was low on resource: {resource}. Threshold quantity: {quantity}, available: {available}. "
    )
}

/// A running container of the pod to evict and its use of the starved resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    /// Its name in the pod spec.
    pub name: String,
    /// What it uses, when measured: memory, its working set; ephemeral-storage, its writable
    /// layer and its logs (upstream measures no container's inodes).
    pub usage: Option<u64>,
    /// What it requests, in bytes.
    pub request: u64,
    /// That request as the spec writes it (`0` when it requests none).
    pub request_text: String,
}

/// What upstream appends to the eviction message for the containers that use more of
/// `resource` than they request, and the annotations of the Evicted event
/// (`offending_containers`, `offending_containers_usage`, `starved_resource`).
pub fn offending_containers(
    resource: &str,
    containers: &[ContainerUsage],
) -> (String, BTreeMap<String, String>) {
    let mut message = String::new();
    let (mut names, mut usages) = (Vec::new(), Vec::new());
    for container in containers {
        let Some(usage) = container.usage.filter(|&u| u > container.request) else {
            continue;
        };
        let usage = format_bytes(usage);
        message.push_str(&format!(
            "Container {} was using {usage}, request is {}, has larger consumption of {resource}. ",
            container.name, container.request_text
        ));
        names.push(container.name.clone());
        usages.push(usage);
    }
    let annotations = BTreeMap::from([
        ("offending_containers".to_owned(), names.join(",")),
        ("offending_containers_usage".to_owned(), usages.join(",")),
        ("starved_resource".to_owned(), resource.to_owned()),
    ]);
    (message, annotations)
}

/// The status of an evicted pod: `status` (what the pod worker computed after the kill)
/// with phase Failed, reason Evicted, the message, and a DisruptionTarget condition.
pub fn evicted_status(mut status: Value, message: &str, now: &str) -> Value {
    status["phase"] = json!("Failed");
    status["reason"] = json!(REASON);
    status["message"] = json!(message);
    let target = json!({"type": "DisruptionTarget", "status": "True",
        "reason": "TerminationByKubelet", "message": message,
        "lastProbeTime": null, "lastTransitionTime": now});
    match status["conditions"].as_array_mut() {
        Some(conditions) => {
            conditions.retain(|c| c["type"] != "DisruptionTarget");
            conditions.push(target);
        }
        None => status["conditions"] = json!([target]),
    }
    status
}

/// A container as dead-container collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadCandidate {
    /// Its ID.
    pub id: String,
    /// Its pod's UID.
    pub pod_uid: String,
    /// Its name in the pod.
    pub name: String,
    /// Its attempt.
    pub attempt: u32,
    /// Whether it has exited.
    pub exited: bool,
}

/// The dead containers to remove when reclaiming disk: all exited containers but the
/// newest exited one of each pod's container (upstream's one dead container per pod
/// container, kept for its logs and last state).
pub fn dead_containers_to_remove(containers: &[DeadCandidate]) -> Vec<String> {
    let mut by_container: HashMap<(&str, &str), Vec<&DeadCandidate>> = HashMap::new();
    for c in containers.iter().filter(|c| c.exited) {
        by_container
            .entry((c.pod_uid.as_str(), c.name.as_str()))
            .or_default()
            .push(c);
    }
    let mut out: Vec<String> = by_container
        .into_values()
        .flat_map(|mut dead| {
            dead.sort_by_key(|c| std::cmp::Reverse(c.attempt));
            dead.into_iter().skip(1).map(|c| c.id.clone())
        })
        .collect();
    out.sort();
    out
}

/// An eviction the pod worker is to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The status message (and event message).
    pub message: String,
    /// The containers' grace period.
    pub grace_seconds: i64,
}

/// An eviction and how far the pod worker has got with it.
#[derive(Debug, Clone)]
struct EvictionState {
    eviction: Eviction,
    /// The pod was killed and reported Failed.
    done: bool,
    /// Its sandbox was stopped and its volumes removed.
    cleaned_up: bool,
}

/// Evictions by pod UID: the eviction manager asks for them, the pod worker carries them
/// out and remembers them until the pod is gone (so that a pod whose Failed status has not
/// come back through the watch yet is not started again).
#[derive(Debug, Clone, Default)]
pub struct Evictions(Arc<Mutex<HashMap<String, EvictionState>>>);

impl Evictions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, EvictionState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for `uid` to be evicted (unless it already is).
    pub fn request(&self, uid: &str, eviction: Eviction) {
        self.lock().entry(uid.to_owned()).or_insert(EvictionState {
            eviction,
            done: false,
            cleaned_up: false,
        });
    }

    /// The eviction asked for `uid` and not yet carried out.
    pub fn pending(&self, uid: &str) -> Option<Eviction> {
        self.lock()
            .get(uid)
            .filter(|state| !state.done)
            .map(|state| state.eviction.clone())
    }

    /// Whether `uid` was asked for or evicted already.
    pub fn contains(&self, uid: &str) -> bool {
        self.lock().contains_key(uid)
    }

    /// Marks `uid`'s eviction as carried out.
    pub fn done(&self, uid: &str) {
        if let Some(state) = self.lock().get_mut(uid) {
            state.done = true;
        }
    }

    /// Marks the resources of evicted `uid` (its sandbox, its volumes) as reclaimed.
    pub fn cleaned_up(&self, uid: &str) {
        if let Some(state) = self.lock().get_mut(uid) {
            state.cleaned_up = state.done;
        }
    }

    /// Whether nothing of `uid`'s eviction is left to do: carried out and cleaned up, or
    /// forgotten (the pod is gone).
    pub fn is_cleaned_up(&self, uid: &str) -> bool {
        self.lock().get(uid).is_none_or(|state| state.cleaned_up)
    }

    /// Forgets `uid` (the pod is gone).
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

/// Upstream's limit on waiting for an evicted pod's clean-up.
pub const POD_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often that clean-up is checked (upstream's poll frequency).
pub const POD_CLEANUP_POLL: Duration = Duration::from_secs(1);

/// Waits, as upstream's eviction manager does after an eviction, until the pod worker has
/// killed `uid` and reclaimed what it held (so its freed space or memory is observed before
/// anything else is evicted), at most `timeout`; returns whether it was cleaned up.
pub async fn wait_for_cleanup(
    evictions: &Evictions,
    uid: &str,
    timeout: Duration,
    poll: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if evictions.is_cleaned_up(uid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// What the eviction manager does (corten-agent's flags).
#[derive(Debug, Clone)]
pub struct EvictionPolicy {
    /// The hard thresholds, then the soft ones (`--eviction-hard`, `--eviction-soft`,
    /// `--eviction-soft-grace-period`, `--eviction-minimum-reclaim`).
    pub thresholds: Vec<Threshold>,
    /// `--eviction-max-pod-grace-period`: the longest grace period a pod evicted for a soft
    /// threshold gets.
    pub max_pod_grace_seconds: i64,
    /// `--eviction-pressure-transition-period`.
    pub transition: Duration,
    /// How often signals are observed.
    pub interval: Duration,
}

/// The eviction flags' texts, as given to corten-agent.
#[derive(Debug, Clone, Copy)]
pub struct EvictionFlags<'a> {
    /// `--eviction-hard`.
    pub hard: &'a str,
    /// `--eviction-soft`.
    pub soft: &'a str,
    /// `--eviction-soft-grace-period`.
    pub soft_grace_period: &'a str,
    /// `--eviction-max-pod-grace-period` (seconds).
    pub max_pod_grace_period: i64,
    /// `--eviction-minimum-reclaim`.
    pub minimum_reclaim: &'a str,
    /// `--eviction-pressure-transition-period`.
    pub transition: &'a str,
    /// The monitoring interval.
    pub interval: &'a str,
}

impl EvictionPolicy {
    /// The policy from the flags.
    pub fn from_flags(flags: &EvictionFlags<'_>) -> Result<Self, ThresholdError> {
        let mut thresholds = parse_thresholds(flags.hard)?;
        thresholds.extend(parse_soft_thresholds(flags.soft, flags.soft_grace_period)?);
        apply_minimum_reclaim(&mut thresholds, flags.minimum_reclaim)?;
        let interval = parse_duration(flags.interval)?;
        if interval.is_zero() {
            return Err(ThresholdError::BadDuration("0".to_owned()));
        }
        Ok(Self {
            thresholds,
            max_pod_grace_seconds: flags.max_pod_grace_period,
            transition: parse_duration(flags.transition)?,
            interval,
        })
    }
}

/// The grace period of a pod evicted for `threshold`: upstream's immediate one for a hard
/// threshold; for a soft one the lesser of the pod's `terminationGracePeriodSeconds`
/// (default 30) and `--eviction-max-pod-grace-period`, never below zero.
pub fn eviction_grace_seconds(threshold: &Threshold, pod: &Pod, max_pod_grace_seconds: i64) -> i64 {
    if threshold.is_hard() {
        return HARD_EVICTION_GRACE_SECONDS;
    }
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    own.min(max_pod_grace_seconds).max(0)
}

/// Where the eviction manager looks.
#[derive(Debug, Clone)]
pub struct EvictionConfig {
    /// The thresholds and timing.
    pub policy: EvictionPolicy,
    /// This node.
    pub node_name: String,
    /// The cgroup pods are under (its working set is the node's).
    pub cgroup_root: String,
    /// The agent's data directory (the node filesystem).
    pub data_dir: PathBuf,
    /// Where pod logs and volumes are (`<data dir>/pods`).
    pub pods_dir: PathBuf,
    /// The pods the kubelet runs (for the local storage limits, checked every pass).
    pub pods: PodSources,
}

/// Bytes and inodes available and in total on the filesystem holding `path`.
pub(crate) fn filesystem(path: &Path) -> Option<(Observation, Observation)> {
    let stats = crate::kubelet_api::stats::fs_stats("", path)?;
    Some((
        Observation {
            available: stats.available_bytes,
            capacity: stats.capacity_bytes,
        },
        Observation {
            available: stats.inodes_free,
            capacity: stats.inodes,
        },
    ))
}

/// What the eviction loop reads from the node.
struct Sources {
    cgroups: Cgroups,
    proc: Proc,
}

impl Sources {
    /// `memory.available`: capacity less the working set of the node (the cgroup root's,
    /// or the whole machine's when that is `/`).
    fn memory(&self, cgroup_root: &str) -> Option<Observation> {
        let machine = self.proc.memory()?;
        let capacity = machine.limit?;
        let working_set = if cgroup_root.trim_end_matches('/').is_empty() {
            machine.working_set
        } else {
            self.cgroups.memory(cgroup_root)?.working_set
        };
        Some(Observation {
            available: capacity.saturating_sub(working_set),
            capacity,
        })
    }
}

/// Every signal's observation now.
async fn observe(
    sources: &Sources,
    cri: &mut CriClient,
    config: &EvictionConfig,
) -> HashMap<Signal, Observation> {
    let mut out = HashMap::new();
    if let Some(memory) = sources.memory(&config.cgroup_root) {
        out.insert(Signal::MemoryAvailable, memory);
    }
    if let Some((bytes, inodes)) = filesystem(&config.data_dir) {
        out.insert(Signal::NodeFsAvailable, bytes);
        out.insert(Signal::NodeFsInodesFree, inodes);
    }
    let image_fs = image_gc::image_fs_mountpoint(cri).await;
    if let Some((bytes, inodes)) = image_fs.as_deref().and_then(filesystem) {
        out.insert(Signal::ImageFsAvailable, bytes);
        out.insert(Signal::ImageFsInodesFree, inodes);
    }
    out
}

/// Bytes and inodes used under `dir` on its own filesystem (bounded to 100 000 entries: past
/// that, at least what was counted).  It walks the tree: call it off the async runtime.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let device = root.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            if inodes >= 100_000 {
                return (bytes, inodes);
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != device {
                continue;
            }
            inodes += 1;
            // Directories' own blocks count too, as `du` counts them.
            bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// What `pod` uses of the resource `signal` measures: memory, or its volumes and logs on
/// the node filesystem in bytes (inodes for the inode signals).
fn pod_usage(pod: &Pod, signal: Signal, sources: &Sources, config: &EvictionConfig) -> u64 {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    match signal.pressure() {
        PressureKind::Memory => sources
            .cgroups
            .memory(&runtime_config::cgroup_parent(pod, &config.cgroup_root))
            .map_or(0, |m| m.working_set),
        PressureKind::Disk => {
            let logs = runtime_config::log_directory(pod, &config.pods_dir.to_string_lossy());
            let (volume_bytes, volume_inodes) = disk_usage(&config.pods_dir.join(&uid));
            let (log_bytes, log_inodes) = disk_usage(Path::new(&logs));
            if signal.counts_inodes() {
                volume_inodes + log_inodes
            } else {
                volume_bytes + log_bytes
            }
        }
    }
}

/// The running containers of `pod` and what they use of `resource` (sorted by name), or
/// `None` when the runtime cannot list them.
async fn container_usages(
    cri: &mut CriClient,
    pod: &Pod,
    resource: &str,
    sources: &Sources,
    config: &EvictionConfig,
) -> Option<Vec<ContainerUsage>> {
    let uid = pod.metadata.uid.clone()?;
    let spec = pod.spec.as_ref()?;
    let listed = cri
        .runtime()
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: HashMap::from([(POD_UID_LABEL.to_owned(), uid)]),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| debug!(error = %e, "listing the evicted pod's containers failed"))
        .ok()?
        .into_inner()
        .containers;
    let cgroup = runtime_config::cgroup_parent(pod, &config.cgroup_root);
    let logs = runtime_config::log_directory(pod, &config.pods_dir.to_string_lossy());
    let mut out = Vec::new();
    for container in listed
        .iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
    {
        let Some(name) = container.metadata.as_ref().map(|m| m.name.clone()) else {
            continue;
        };
        let Some(declared) = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
        else {
            continue;
        };
        let usage = match resource {
            "memory" => sources
                .cgroups
                .memory(&format!("{cgroup}/{}", container.id))
                .map(|m| m.working_set),
            "ephemeral-storage" => cri
                .runtime()
                .container_stats(ContainerStatsRequest {
                    container_id: container.id.clone(),
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().stats)
                .and_then(|s| s.writable_layer)
                .and_then(|w| w.used_bytes)
                .map(|rootfs| rootfs.value + disk_usage(&Path::new(&logs).join(&name)).0),
            _ => None,
        };
        let request = declared
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource));
        out.push(ContainerUsage {
            name,
            usage,
            request: request
                .and_then(|q| runtime_config::parse_milli(&q.0))
                .and_then(|m| u64::try_from(m / 1000).ok())
                .unwrap_or(0),
            request_text: request.map_or_else(|| "0".to_owned(), |q| q.0.clone()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Some(out)
}

/// Removes dead containers as [`dead_containers_to_remove`] says; returns how many.
async fn remove_dead_containers(cri: &mut CriClient) -> usize {
    let listed = cri
        .runtime()
        .list_containers(ListContainersRequest { filter: None })
        .await;
    let containers = match listed {
        Ok(r) => r.into_inner().containers,
        Err(e) => {
            warn!(error = %e, "listing containers for garbage collection failed");
            return 0;
        }
    };
    let candidates: Vec<DeadCandidate> = containers
        .iter()
        .map(|c| DeadCandidate {
            id: c.id.clone(),
            pod_uid: c.labels.get(POD_UID_LABEL).cloned().unwrap_or_default(),
            name: c
                .labels
                .get(CONTAINER_NAME_LABEL)
                .cloned()
                .unwrap_or_default(),
            attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
            exited: c.state == ContainerState::ContainerExited as i32,
        })
        .collect();
    let mut removed = 0;
    for id in dead_containers_to_remove(&candidates) {
        match cri
            .runtime()
            .remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            Ok(_) => removed += 1,
            Err(e) => warn!(container = %id, error = %e, "removing a dead container failed"),
        }
    }
    removed
}

/// Publishes the pressure conditions when they change, with their transition times.
fn publish(conditions: &watch::Sender<NodePressure>, memory: bool, disk: bool) {
    conditions.send_if_modified(|state| {
        let mut changed = false;
        for (condition, under, name) in [
            (&mut state.memory, memory, "MemoryPressure"),
            (&mut state.disk, disk, "DiskPressure"),
        ] {
            if condition.under != under {
                info!(condition = name, under, "node pressure changed");
                condition.under = under;
                condition.since = super::node::now_rfc3339();
                changed = true;
            }
        }
        changed
    });
}

/// Runs the eviction manager forever: observe, publish the conditions, reclaim, evict.
pub async fn run(
    client: Client,
    mut cri: CriClient,
    config: EvictionConfig,
    mut image_gc: ImageGc,
    evictions: Evictions,
    conditions: watch::Sender<NodePressure>,
) {
    let sources = Sources {
        cgroups: Cgroups::host(),
        proc: Proc::host(),
    };
    let events = EventRecorder::new(client.clone(), config.node_name.clone());
    let policy = &config.policy;
    let mut tracker = PressureTracker::new(policy.thresholds.clone(), policy.transition);
    let mut tick = tokio::time::interval(policy.interval);
    let mut last_reclaim_event: Option<(&'static str, Instant)> = None;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        image_gc.periodic(&mut cri).await;
        let mut observations = observe(&sources, &mut cri, &config).await;
        let (mut met, memory, disk) = tracker.observe(&observations, Instant::now());
        publish(&conditions, memory, disk);
        // As upstream, a pod over a local storage limit is evicted whatever the thresholds
        // say, and then nothing else in this pass.
        let over = tokio::task::spawn_blocking({
            let (config, events, evictions) = (config.clone(), events.clone(), evictions.clone());
            move || local_storage_eviction(&config, &events, &evictions)
        })
        .await
        .unwrap_or_default();
        if !over.is_empty() {
            for uid in over {
                wait_for_cleanup(&evictions, &uid, POD_CLEANUP_TIMEOUT, POD_CLEANUP_POLL).await;
            }
            continue;
        }
        let Some(first) = met.first().cloned() else {
            continue;
        };
        // As upstream, on the Node before anything is reclaimed; repeated at most every
        // EVENT_REPEAT for one resource (upstream's recorder folds the repeats into one
        // event and lets one through every five minutes).
        let resource = first.signal.resource();
        info!(resource, "attempting to reclaim");
        let now = Instant::now();
        if last_reclaim_event
            .is_none_or(|(last, at)| last != resource || now.duration_since(at) >= EVENT_REPEAT)
        {
            events.record_node(
                EventType::Warning,
                "EvictionThresholdMet",
                &format!("Attempting to reclaim {resource}"),
            );
            last_reclaim_event = Some((resource, now));
        }
        // Disk: reclaim node-level resources first, where images and containers live, and
        // look again.
        if first.signal.pressure() == PressureKind::Disk
            && reclaims_images(
                first.signal,
                dedicated_image_fs(&mut cri, &config.data_dir).await,
            )
        {
            let freed = image_gc.delete_unused(&mut cri).await;
            let removed = remove_dead_containers(&mut cri).await;
            info!(
                signal = first.signal.name(),
                freed_bytes = freed,
                removed_containers = removed,
                "reclaimed node-level resources"
            );
            observations = observe(&sources, &mut cri, &config).await;
            let (again, memory, disk) = tracker.observe(&observations, Instant::now());
            publish(&conditions, memory, disk);
            met = again;
        }
        let Some(threshold) = met.first() else {
            continue;
        };
        let Some(observation) = observations.get(&threshold.signal).copied() else {
            continue;
        };
        let context = EvictionContext {
            config: &config,
            sources: &sources,
            events: &events,
            evictions: &evictions,
        };
        if let Some(uid) = evict_one(&context, &mut cri, threshold, observation).await {
            if wait_for_cleanup(&evictions, &uid, POD_CLEANUP_TIMEOUT, POD_CLEANUP_POLL).await {
                debug!(%uid, "the evicted pod was cleaned up");
            } else {
                info!(%uid, "timed out waiting for the evicted pod to be cleaned up");
            }
        }
    }
}

/// Upstream's local storage eviction of the emptyDir limits: every active pod (not
/// critical) with an emptyDir over its `sizeLimit` is evicted at once (grace 0) with
/// upstream's message and an `Evicted` event. Returns the UIDs asked for. It walks the
/// volumes: run it off the async runtime.
fn local_storage_eviction(
    config: &EvictionConfig,
    events: &EventRecorder,
    evictions: &Evictions,
) -> Vec<String> {
    let mut asked = Vec::new();
    for pod in config.pods.pods() {
        if !is_active(&pod) || is_critical(&pod) {
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if evictions.contains(&uid) {
            continue;
        }
        let volumes = config.pods_dir.join(&uid).join("volumes");
        let usage = |name: &str| {
            let dir = volumes.join("kubernetes.io~empty-dir").join(name);
            dir.exists().then(|| disk_usage(&dir).0)
        };
        let Some(message) = empty_dir_over_limit(&pod, usage) else {
            continue;
        };
        info!(pod = ?pod.metadata.name, namespace = ?pod.metadata.namespace, %message, "evicting");
        events.record(&pod, None, EventType::Warning, REASON, &message);
        evictions.request(
            &uid,
            Eviction {
                message,
                grace_seconds: HARD_EVICTION_GRACE_SECONDS,
            },
        );
        asked.push(uid);
    }
    asked
}

/// The message for the first emptyDir of `pod` that uses more than its `sizeLimit`
/// (`usage` gives a volume's bytes, none when unknown), as upstream words it: `Usage of
/// EmptyDir volume "scratch" exceeds the limit "8Mi". `. A zero limit limits nothing.
pub fn empty_dir_over_limit(pod: &Pod, usage: impl Fn(&str) -> Option<u64>) -> Option<String> {
    let volumes = pod.spec.as_ref()?.volumes.as_ref()?;
    volumes.iter().find_map(|volume| {
        let limit = volume.empty_dir.as_ref()?.size_limit.as_ref()?;
        let Ok(Amount::Quantity(bytes, suffix)) = Amount::parse(&limit.0) else {
            return None;
        };
        let used = usage(&volume.name)?;
        // The limit in its canonical form, as upstream's Quantity prints it.
        let shown = match suffix {
            Suffix::Binary => format_bytes(bytes),
            Suffix::Decimal => format_decimal(bytes),
        };
        (bytes > 0 && used > bytes).then(|| {
            format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {shown:?}. ",
                volume.name
            )
        })
    })
}

/// How often the same `EvictionThresholdMet` is recorded again while it holds.
const EVENT_REPEAT: Duration = Duration::from_secs(300);

/// Whether reclaiming images and dead containers can relieve `signal`, as upstream decides:
/// always for the image filesystem's signals, and for the node filesystem's only when the
/// images are on it (no dedicated image filesystem).
pub fn reclaims_images(signal: Signal, dedicated_image_fs: bool) -> bool {
    match signal {
        Signal::ImageFsAvailable | Signal::ImageFsInodesFree => true,
        Signal::NodeFsAvailable | Signal::NodeFsInodesFree => !dedicated_image_fs,
        Signal::MemoryAvailable => false,
    }
}

/// Whether the runtime's image filesystem is another filesystem than the node's (the data
/// directory's); unknown counts as the same one.
async fn dedicated_image_fs(cri: &mut CriClient, data_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(image_fs) = image_gc::image_fs_mountpoint(cri).await else {
        return false;
    };
    match (std::fs::metadata(data_dir), std::fs::metadata(&image_fs)) {
        (Ok(node), Ok(images)) => node.dev() != images.dev(),
        _ => false,
    }
}

/// What choosing and asking for an eviction needs.
struct EvictionContext<'a> {
    config: &'a EvictionConfig,
    sources: &'a Sources,
    events: &'a EventRecorder,
    evictions: &'a Evictions,
}

/// Asks the pod worker to evict the first ranked pod for `threshold`; returns its UID when
/// an eviction was asked for.
async fn evict_one(
    context: &EvictionContext<'_>,
    cri: &mut CriClient,
    threshold: &Threshold,
    observation: Observation,
) -> Option<String> {
    let EvictionContext {
        config,
        sources,
        events,
        evictions,
    } = context;
    // The pods the kubelet admitted and started (a pod it has not started yet, which the
    // admission may still refuse, is not a candidate, as in upstream's active pods).
    let pods: Vec<Pod> = config
        .pods
        .pods()
        .into_iter()
        .filter(|p| is_active(p) && !is_critical(p) && has_started(p))
        .map(|p| (*p).clone())
        .collect();
    let resource = threshold.signal.resource();
    let mut candidates: Vec<Candidate> = pods
        .iter()
        .map(|p| Candidate {
            uid: p.metadata.uid.clone().unwrap_or_default(),
            priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            usage: pod_usage(p, threshold.signal, sources, config),
            request: pod_request(p, resource),
        })
        .collect();
    rank(&mut candidates);
    let Some(victim) = candidates.first() else {
        warn!(
            signal = threshold.signal.name(),
            "eviction threshold met, but no pod can be evicted"
        );
        return None;
    };
    let pod = pods
        .iter()
        .find(|p| p.metadata.uid.as_deref() == Some(&victim.uid))?;
    if evictions.contains(&victim.uid) {
        debug!(pod = ?pod.metadata.name, "eviction already under way");
        return None;
    }
    let mut message = eviction_message(threshold, observation);
    let mut annotations = BTreeMap::new();
    if let Some(containers) = container_usages(cri, pod, resource, sources, config).await {
        let (lines, offending) = offending_containers(resource, &containers);
        message.push_str(&lines);
        annotations = offending;
    }
    info!(pod = ?pod.metadata.name, namespace = ?pod.metadata.namespace, %message, "evicting");
    events.record_annotated(
        pod,
        None,
        EventType::Warning,
        REASON,
        &message,
        &annotations,
    );
    evictions.request(
        &victim.uid,
        Eviction {
            message,
            grace_seconds: eviction_grace_seconds(
                threshold,
                pod,
                config.policy.max_pod_grace_seconds,
            ),
        },
    );
    Some(victim.uid.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn upstream_defaults_and_syntax_parse() {
        let thresholds = parse_thresholds(DEFAULT_EVICTION_HARD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            thresholds,
            [
                Threshold {
                    signal: Signal::MemoryAvailable,
                    amount: Amount::Quantity(100 << 20, Suffix::Binary),
                    min_reclaim: None,
                    grace_period: Duration::ZERO,
                },
                Threshold {
                    signal: Signal::NodeFsAvailable,
                    amount: Amount::Percent(10.0),
                    min_reclaim: None,
                    grace_period: Duration::ZERO,
                },
                Threshold {
                    signal: Signal::NodeFsInodesFree,
                    amount: Amount::Percent(5.0),
                    min_reclaim: None,
                    grace_period: Duration::ZERO,
                },
                Threshold {
                    signal: Signal::ImageFsAvailable,
                    amount: Amount::Percent(15.0),
                    min_reclaim: None,
                    grace_period: Duration::ZERO,
                },
            ]
        );
        assert_eq!(parse_thresholds(""), Ok(Vec::new()));
        assert_eq!(
            parse_thresholds("memory.available<1Gi , imagefs.inodesFree<1000").map(|t| t.len()),
            Ok(2)
        );
        assert_eq!(
            parse_thresholds("memory.free<1Gi"),
            Err(ThresholdError::UnknownSignal("memory.free".to_owned()))
        );
        assert!(matches!(
            parse_thresholds("memory.available=1Gi"),
            Err(ThresholdError::NoOperator(..))
        ));
        assert!(matches!(
            parse_thresholds("nodefs.available<120%"),
            Err(ThresholdError::BadQuantity(_))
        ));
        assert!(matches!(
            parse_thresholds("nodefs.available<-1"),
            Err(ThresholdError::BadQuantity(_))
        ));
        assert_eq!(
            parse_thresholds("memory.available<1Gi,memory.available<2Gi"),
            Err(ThresholdError::Duplicate("memory.available"))
        );
        // As upstream: 0% and 100% set no threshold; a quantity must be positive.
        assert_eq!(
            parse_thresholds("nodefs.available<0%,imagefs.available<100%"),
            Ok(Vec::new())
        );
        assert_eq!(
            parse_thresholds("memory.available<0"),
            Err(ThresholdError::NotPositive("memory.available<0".to_owned()))
        );
        let mut thresholds = parse_thresholds("memory.available<1Gi").unwrap_or_default();
        assert_eq!(
            apply_minimum_reclaim(&mut thresholds, "memory.available=500Mi"),
            Ok(())
        );
        assert_eq!(
            thresholds[0].min_reclaim,
            Some(Amount::Quantity(500 << 20, Suffix::Binary))
        );
        // As upstream, one for a signal without a threshold changes nothing.
        assert_eq!(
            apply_minimum_reclaim(&mut thresholds, "nodefs.available=1Gi"),
            Ok(())
        );
        assert_eq!(thresholds.len(), 1);
        assert!(matches!(
            apply_minimum_reclaim(&mut thresholds, "memory.available=0%"),
            Err(ThresholdError::NotPositive(_))
        ));
    }

    #[test]
    fn percentages_are_float32_fractions_of_the_capacity_as_upstream() {
        let percent = |text: &str| Amount::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(percent("50%").of(256 << 20), 128 << 20);
        // float32(10)/100 is a little over a tenth: upstream gets 100 (not 99) of 1000.
        assert_eq!(percent("10%").of(1000), 100);
        assert_eq!(percent("7.5%").of(1000), 75);
        // 15% of 100 GiB with float32(0.15) = 0.150000006: 640 bytes over the exact share.
        assert_eq!(percent("15%").of(100 << 30), 16_106_128_000);
    }

    fn flags<'a>(hard: &'a str, soft: &'a str, grace: &'a str) -> EvictionFlags<'a> {
        EvictionFlags {
            hard,
            soft,
            soft_grace_period: grace,
            max_pod_grace_period: 60,
            minimum_reclaim: "",
            transition: "5m",
            interval: "10s",
        }
    }

    #[test]
    fn soft_thresholds_take_their_grace_periods_from_their_own_flag() {
        let policy = EvictionPolicy::from_flags(&EvictionFlags {
            minimum_reclaim: "memory.available=100Mi",
            ..flags(
                "memory.available<100Mi",
                "memory.available<1Gi, nodefs.available<15%",
                "memory.available=1m30s,nodefs.available=2m,imagefs.available=5m",
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let summary: Vec<(Signal, Duration, Option<Amount>)> = policy
            .thresholds
            .iter()
            .map(|t| (t.signal, t.grace_period, t.min_reclaim))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    Signal::MemoryAvailable,
                    Duration::ZERO,
                    Some(Amount::Quantity(100 << 20, Suffix::Binary))
                ),
                (
                    Signal::MemoryAvailable,
                    Duration::from_secs(90),
                    Some(Amount::Quantity(100 << 20, Suffix::Binary))
                ),
                (Signal::NodeFsAvailable, Duration::from_secs(120), None),
            ]
        );
        assert!(policy.thresholds[0].is_hard() && !policy.thresholds[1].is_hard());
        assert_eq!(policy.max_pod_grace_seconds, 60);
        // Every soft threshold needs a grace period.
        assert_eq!(
            EvictionPolicy::from_flags(&flags("", "nodefs.available<10%", "memory.available=1m"))
                .map(|_| ()),
            Err(ThresholdError::NoGracePeriod("nodefs.available"))
        );
        assert!(matches!(
            EvictionPolicy::from_flags(&flags("", "", "memory.free=1m")),
            Err(ThresholdError::UnknownSignal(_))
        ));
        assert!(matches!(
            EvictionPolicy::from_flags(&flags("", "memory.available<1Gi", "memory.available=x")),
            Err(ThresholdError::BadDuration(_))
        ));
        assert!(matches!(
            EvictionPolicy::from_flags(&flags("", "memory.available<1Gi", "memory.available")),
            Err(ThresholdError::NoOperator(..))
        ));
    }

    #[test]
    fn a_soft_threshold_evicts_only_after_its_grace_period_without_a_break() {
        let policy = EvictionPolicy::from_flags(&flags(
            "memory.available<100",
            "memory.available<500",
            "memory.available=30s",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut tracker = PressureTracker::new(policy.thresholds, Duration::from_secs(60));
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let memory = |available| {
            HashMap::from([(
                Signal::MemoryAvailable,
                Observation {
                    available,
                    capacity: 1000,
                },
            )])
        };
        // Met: the condition is set at once, eviction waits for the grace period.
        let (ready, under, _) = tracker.observe(&memory(400), at(0));
        assert!(ready.is_empty() && under);
        let (ready, _, _) = tracker.observe(&memory(400), at(29));
        assert!(ready.is_empty());
        // A break starts the grace period again.
        let (ready, under, _) = tracker.observe(&memory(600), at(30));
        assert!(ready.is_empty() && under);
        let (ready, _, _) = tracker.observe(&memory(400), at(31));
        assert!(ready.is_empty());
        let (ready, _, _) = tracker.observe(&memory(400), at(61));
        assert_eq!(
            ready.iter().map(|t| t.grace_period).collect::<Vec<_>>(),
            [Duration::from_secs(30)]
        );
        // The hard threshold needs no grace period and comes first.
        let (ready, _, _) = tracker.observe(&memory(50), at(62));
        assert_eq!(
            ready.iter().map(Threshold::is_hard).collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn soft_evictions_give_the_lesser_grace_period_hard_ones_none() {
        let hard = parse_thresholds("memory.available<1Gi")
            .unwrap_or_default()
            .remove(0);
        let soft = Threshold {
            grace_period: Duration::from_secs(60),
            ..hard.clone()
        };
        let with_grace = |grace: Option<i64>| {
            pod(json!({"spec": {"containers": [], "terminationGracePeriodSeconds": grace}}))
        };
        assert_eq!(
            eviction_grace_seconds(&hard, &with_grace(Some(30)), 60),
            HARD_EVICTION_GRACE_SECONDS
        );
        assert_eq!(eviction_grace_seconds(&soft, &with_grace(Some(10)), 60), 10);
        assert_eq!(
            eviction_grace_seconds(&soft, &with_grace(Some(120)), 60),
            60
        );
        // The pod's default is 30 s; upstream's default maximum (0) kills at once.
        assert_eq!(eviction_grace_seconds(&soft, &with_grace(None), 45), 30);
        assert_eq!(eviction_grace_seconds(&soft, &with_grace(None), 0), 0);
        assert_eq!(eviction_grace_seconds(&soft, &with_grace(None), -5), 0);
    }

    #[test]
    fn durations_parse_as_go_writes_them() {
        let ok = |t: &str| parse_duration(t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("5m0s"), Duration::from_secs(300));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn thresholds_compare_quantities_percentages_and_minimum_reclaim() {
        let memory = Threshold {
            signal: Signal::MemoryAvailable,
            amount: Amount::Quantity(100, Suffix::Decimal),
            min_reclaim: Some(Amount::Quantity(50, Suffix::Decimal)),
            grace_period: Duration::ZERO,
        };
        let at = |available| Observation {
            available,
            capacity: 1000,
        };
        assert!(threshold_met(&memory, at(99), false));
        assert!(!threshold_met(&memory, at(100), false));
        // Once met, it stays met until the minimum reclaim is free on top.
        assert!(threshold_met(&memory, at(120), true));
        assert!(!threshold_met(&memory, at(150), true));
        let disk = Threshold {
            signal: Signal::NodeFsAvailable,
            amount: Amount::Percent(10.0),
            min_reclaim: None,
            grace_period: Duration::ZERO,
        };
        assert!(threshold_met(&disk, at(99), false));
        assert!(!threshold_met(&disk, at(100), true));
    }

    #[test]
    fn pressure_lasts_the_transition_period_after_the_last_met_threshold() {
        let thresholds =
            parse_thresholds("memory.available<100,nodefs.available<10%").unwrap_or_default();
        let mut tracker = PressureTracker::new(thresholds, Duration::from_secs(30));
        let start = Instant::now();
        let observe = |memory: u64, disk: u64| {
            HashMap::from([
                (
                    Signal::MemoryAvailable,
                    Observation {
                        available: memory,
                        capacity: 1000,
                    },
                ),
                (
                    Signal::NodeFsAvailable,
                    Observation {
                        available: disk,
                        capacity: 1000,
                    },
                ),
            ])
        };
        let (met, memory, disk) = tracker.observe(&observe(500, 500), start);
        assert!(met.is_empty() && !memory && !disk);
        // Both met: memory comes first.
        let (met, memory, disk) = tracker.observe(&observe(50, 50), start + Duration::from_secs(1));
        assert_eq!(
            met.iter().map(|t| t.signal).collect::<Vec<_>>(),
            [Signal::MemoryAvailable, Signal::NodeFsAvailable]
        );
        assert!(memory && disk);
        // Resolved, but within the transition period: still under pressure, nothing met.
        let (met, memory, disk) =
            tracker.observe(&observe(500, 500), start + Duration::from_secs(30));
        assert!(met.is_empty() && memory && disk);
        // The transition period after memory's last met threshold is over; disk is met again.
        let (_, memory, disk) = tracker.observe(&observe(500, 50), start + Duration::from_secs(31));
        assert!(!memory && disk);
        let (_, memory, disk) =
            tracker.observe(&observe(500, 500), start + Duration::from_secs(32));
        assert!(!memory && disk);
        let (_, memory, disk) =
            tracker.observe(&observe(500, 500), start + Duration::from_secs(61));
        assert!(!memory && !disk);
        // A signal without an observation meets nothing.
        let (met, _, _) = tracker.observe(&HashMap::new(), start + Duration::from_secs(62));
        assert!(met.is_empty());
    }

    #[test]
    fn ranking_puts_usage_over_requests_first_then_priority_then_excess() {
        let c = |uid: &str, priority, usage, request| Candidate {
            uid: uid.to_owned(),
            priority,
            usage,
            request,
        };
        let mut pods = vec![
            c("guaranteed-within", 0, 50, 100),
            c("besteffort-small", 0, 10, 0),
            c("burstable-over-high-priority", 1000, 500, 100),
            c("besteffort-big", 0, 300, 0),
            c("low-priority-within", -10, 10, 100),
        ];
        rank(&mut pods);
        let order: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(
            order,
            [
                "besteffort-big",
                "besteffort-small",
                "burstable-over-high-priority",
                "low-priority-within",
                "guaranteed-within",
            ]
        );
    }

    #[test]
    fn critical_static_and_terminal_pods_are_left_alone() {
        let plain = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": []}}));
        assert!(!is_critical(&plain) && is_active(&plain));
        let critical = pod(json!({"spec": {"containers": [], "priority": 2000001000}}));
        assert!(is_critical(&critical));
        let mirror =
            pod(json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "h"}}}));
        assert!(is_critical(&mirror));
        let from_api =
            pod(json!({"metadata": {"annotations": {"kubernetes.io/config.source": "api"}}}));
        assert!(!is_critical(&from_api));
        let failed = pod(json!({"status": {"phase": "Failed", "reason": "Evicted"}}));
        assert!(!is_active(&failed) && was_evicted(&failed));
        let deleting = pod(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert!(!is_active(&deleting) && !was_evicted(&deleting));
    }

    #[test]
    fn requests_sum_app_containers_or_take_the_largest_init_container() {
        let p = pod(json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"memory": "300Mi"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"memory": "100Mi", "ephemeral-storage": "1Gi"}}},
                {"name": "b", "resources": {"requests": {"memory": "150Mi"}}},
                {"name": "c"}]}}));
        assert_eq!(pod_request(&p, "memory"), 300 << 20);
        assert_eq!(pod_request(&p, "ephemeral-storage"), 1 << 30);
        assert_eq!(pod_request(&pod(json!({})), "memory"), 0);
    }

    #[test]
    fn an_empty_dir_over_its_size_limit_is_named_as_upstream_names_it() {
        let p = pod(json!({"spec": {"containers": [], "volumes": [
            {"name": "config", "configMap": {"name": "c"}},
            {"name": "unlimited", "emptyDir": {}},
            {"name": "zero", "emptyDir": {"sizeLimit": "0"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "8Mi"}},
            {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "1M"}}]}}));
        let usage = |used: [(&'static str, u64); 3]| {
            move |name: &str| used.iter().find(|(n, _)| *n == name).map(|(_, u)| *u)
        };
        // Within every limit (8 MiB exactly is not over it); no limit, no eviction.
        let within = usage([
            ("unlimited", 1 << 30),
            ("zero", 1 << 30),
            ("scratch", 8 << 20),
        ]);
        assert_eq!(empty_dir_over_limit(&p, within), None);
        let over = usage([
            ("scratch", (8 << 20) + 4096),
            ("cache", 2_000_000),
            ("zero", 0),
        ]);
        assert_eq!(
            empty_dir_over_limit(&p, over).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"8Mi\". ")
        );
        let cache = usage([("cache", 1_000_001), ("scratch", 0), ("zero", 0)]);
        assert_eq!(
            empty_dir_over_limit(&p, cache).as_deref(),
            Some("Usage of EmptyDir volume \"cache\" exceeds the limit \"1M\". ")
        );
        // The limit is shown canonical, as upstream's Quantity prints it.
        let big = pod(json!({"spec": {"containers": [], "volumes": [
            {"name": "big", "emptyDir": {"sizeLimit": "1024Mi"}}]}}));
        assert_eq!(
            empty_dir_over_limit(&big, |_| Some(2 << 30)).as_deref(),
            Some("Usage of EmptyDir volume \"big\" exceeds the limit \"1Gi\". ")
        );
        // Unknown usage (the volume is not set up yet) evicts nothing.
        let unknown = usage([("other", 1 << 30), ("x", 0), ("y", 0)]);
        assert_eq!(empty_dir_over_limit(&p, unknown), None);
    }

    #[test]
    fn admission_refuses_as_upstreams_eviction_admission() {
        let pressure = |memory: bool, disk: bool| NodePressure {
            memory: ConditionState {
                under: memory,
                since: String::new(),
            },
            disk: ConditionState {
                under: disk,
                since: String::new(),
            },
        };
        let best_effort = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        let burstable = pod(json!({"spec": {"containers": [{"name": "c",
            "resources": {"requests": {"memory": "10Mi"}}}]}}));
        let tolerating = |toleration: Value| {
            pod(json!({"spec": {"containers": [{"name": "c"}], "tolerations": [toleration]}}))
        };
        let mut critical = best_effort.clone();
        critical
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SOURCE_ANNOTATION.to_owned(), "file".to_owned());
        let memory = Some("The node had condition: [MemoryPressure]. ".to_owned());
        let disk = Some("The node had condition: [DiskPressure]. ".to_owned());
        let both = Some("The node had condition: [MemoryPressure DiskPressure]. ".to_owned());
        let cases = [
            (pressure(false, false), &best_effort, None),
            (pressure(true, false), &best_effort, memory.clone()),
            (pressure(true, false), &burstable, None),
            (pressure(false, true), &burstable, disk),
            (pressure(true, true), &burstable, both),
            (pressure(true, true), &critical, None),
            (
                pressure(true, false),
                &tolerating(json!({"key": "node.kubernetes.io/memory-pressure",
                    "operator": "Exists", "effect": "NoSchedule"})),
                None,
            ),
            (
                pressure(true, false),
                &tolerating(json!({"operator": "Exists"})),
                None,
            ),
            (
                pressure(true, false),
                &tolerating(json!({"key": "node.kubernetes.io/memory-pressure",
                    "operator": "Equal", "value": "x"})),
                memory.clone(),
            ),
            (
                pressure(true, false),
                &tolerating(json!({"key": "node.kubernetes.io/memory-pressure",
                    "operator": "Exists", "effect": "NoExecute"})),
                memory.clone(),
            ),
            (
                pressure(true, false),
                &tolerating(json!({"key": "node.kubernetes.io/disk-pressure",
                    "operator": "Exists"})),
                memory,
            ),
        ];
        for (i, (pressure, pod, expected)) in cases.iter().enumerate() {
            assert_eq!(&admission_refusal(pressure, pod), expected, "case {i}");
        }
    }

    #[test]
    fn the_message_status_and_conditions_say_what_upstream_says() {
        // (threshold, available, capacity, message). A percentage is shown as the quantity
        // it stands for, as upstream shows it.
        let cases: [(&str, u64, u64, &str); 6] = [
            (
                "memory.available<100Mi",
                50 << 20,
                1 << 30,
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ",
            ),
            (
                "nodefs.inodesFree<5%",
                12,
                1000,
                "The node was low on resource: inodes. Threshold quantity: 50, available: 12. ",
            ),
            (
                "nodefs.available<50%",
                100 << 20,
                256 << 20,
                "The node was low on resource: ephemeral-storage. Threshold quantity: 128Mi, available: 100Mi. ",
            ),
            (
                "nodefs.inodesFree<1000",
                5000,
                1 << 20,
                "The node was low on resource: inodes. Threshold quantity: 1k, available: 5k. ",
            ),
            // A decimal quantity stays decimal, a binary one binary (canonical).
            (
                "nodefs.available<500M",
                100 << 20,
                1 << 30,
                "The node was low on resource: ephemeral-storage. Threshold quantity: 500M, available: 100Mi. ",
            ),
            (
                "memory.available<1024Mi",
                100 << 20,
                4 << 30,
                "The node was low on resource: memory. Threshold quantity: 1Gi, available: 100Mi. ",
            ),
        ];
        for (text, available, capacity, expected) in cases {
            let threshold = parse_thresholds(text).unwrap_or_default().remove(0);
            let observation = Observation {
                available,
                capacity,
            };
            assert_eq!(
                eviction_message(&threshold, observation),
                expected,
                "{text}"
            );
        }
        let message = cases[0].3.to_owned();
        assert_eq!(format_decimal(999), "999");
        assert_eq!(format_decimal(1500), "1500");
        assert_eq!(format_decimal(2_000_000), "2M");
        assert_eq!(format_bytes(1536), "1536");
        assert_eq!(format_bytes(3 << 10), "3Ki");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        let status = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"},
            {"type": "DisruptionTarget", "status": "False"}]});
        let evicted = evicted_status(status, &message, "2026-01-01T00:00:00Z");
        assert_eq!(evicted["phase"], "Failed");
        assert_eq!(evicted["reason"], "Evicted");
        assert_eq!(evicted["message"], message.as_str());
        let conditions = evicted["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1]["type"], "DisruptionTarget");
        assert_eq!(conditions[1]["status"], "True");
        assert_eq!(conditions[1]["reason"], "TerminationByKubelet");
        let bare = evicted_status(json!({}), "m", "t");
        assert_eq!(bare["conditions"][0]["type"], "DisruptionTarget");
    }

    #[test]
    fn containers_over_their_requests_are_named_as_upstream_names_them() {
        let c = |name: &str, usage, request, text: &str| ContainerUsage {
            name: name.to_owned(),
            usage,
            request,
            request_text: text.to_owned(),
        };
        let containers = [
            c("app", Some(300 << 20), 0, "0"),
            c("within", Some(10 << 20), 64 << 20, "64Mi"),
            c("unmeasured", None, 0, "0"),
            c("side", Some(100 << 20), 64 << 20, "64Mi"),
        ];
        let (lines, annotations) = offending_containers("memory", &containers);
        assert_eq!(
            lines,
            "Container app was using 300Mi, request is 0, has larger consumption of memory. \
             Container side was using 100Mi, request is 64Mi, has larger consumption of memory. "
        );
        assert_eq!(annotations["offending_containers"], "app,side");
        assert_eq!(annotations["offending_containers_usage"], "300Mi,100Mi");
        assert_eq!(annotations["starved_resource"], "memory");
        let (lines, annotations) = offending_containers("inodes", &[]);
        assert_eq!(lines, "");
        assert_eq!(annotations["offending_containers"], "");
        assert_eq!(annotations["starved_resource"], "inodes");
    }

    #[test]
    fn node_conditions_use_upstream_reasons() {
        let mut pressure = NodePressure::default();
        let reasons = |p: &NodePressure| {
            p.conditions()
                .map(|(kind, state, reason, _)| (kind, state.under, reason))
        };
        assert_eq!(
            reasons(&pressure),
            [
                ("MemoryPressure", false, "KubeletHasSufficientMemory"),
                ("DiskPressure", false, "KubeletHasNoDiskPressure")
            ]
        );
        pressure.memory.under = true;
        pressure.disk.under = true;
        assert_eq!(
            reasons(&pressure),
            [
                ("MemoryPressure", true, "KubeletHasInsufficientMemory"),
                ("DiskPressure", true, "KubeletHasDiskPressure")
            ]
        );
    }

    #[test]
    fn an_eviction_is_pending_until_done_and_remembered_until_forgotten() {
        let evictions = Evictions::default();
        let eviction = Eviction {
            message: "m".to_owned(),
            grace_seconds: 0,
        };
        evictions.request("u", eviction.clone());
        evictions.request(
            "u",
            Eviction {
                message: "other".to_owned(),
                grace_seconds: 5,
            },
        );
        assert_eq!(evictions.pending("u"), Some(eviction));
        evictions.done("u");
        assert_eq!(evictions.pending("u"), None);
        assert!(evictions.contains("u"));
        evictions.forget("u");
        assert!(!evictions.contains("u"));
    }

    #[test]
    fn an_eviction_is_cleaned_up_only_after_it_was_carried_out() {
        let evictions = Evictions::default();
        let eviction = Eviction {
            message: "m".to_owned(),
            grace_seconds: 0,
        };
        evictions.request("u", eviction);
        assert!(!evictions.is_cleaned_up("u"));
        evictions.cleaned_up("u");
        assert!(!evictions.is_cleaned_up("u"), "not carried out yet");
        evictions.done("u");
        assert!(!evictions.is_cleaned_up("u"));
        evictions.cleaned_up("u");
        assert!(evictions.is_cleaned_up("u"));
        // A forgotten (deleted) pod has nothing left to clean up.
        assert!(evictions.is_cleaned_up("gone"));
    }

    #[tokio::test]
    async fn the_manager_waits_for_the_clean_up_but_not_forever() {
        let evictions = Evictions::default();
        evictions.request(
            "u",
            Eviction {
                message: "m".to_owned(),
                grace_seconds: 0,
            },
        );
        let poll = Duration::from_millis(5);
        assert!(!wait_for_cleanup(&evictions, "u", Duration::from_millis(30), poll).await);
        let worker = evictions.clone();
        let cleaning = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            worker.done("u");
            worker.cleaned_up("u");
        });
        assert!(wait_for_cleanup(&evictions, "u", Duration::from_secs(10), poll).await);
        cleaning.await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn images_are_reclaimed_only_where_they_live() {
        for dedicated in [false, true] {
            assert!(reclaims_images(Signal::ImageFsAvailable, dedicated));
            assert!(reclaims_images(Signal::ImageFsInodesFree, dedicated));
            assert_eq!(
                reclaims_images(Signal::NodeFsAvailable, dedicated),
                !dedicated
            );
            assert_eq!(
                reclaims_images(Signal::NodeFsInodesFree, dedicated),
                !dedicated
            );
            assert!(!reclaims_images(Signal::MemoryAvailable, dedicated));
        }
    }

    #[test]
    fn disk_usage_counts_bytes_and_inodes_of_one_filesystem() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sub = dir.path().join("volumes/scratch");
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(sub.join("fill"), vec![1u8; 64 << 10]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("small"), b"x").unwrap_or_else(|e| panic!("{e}"));
        let (bytes, inodes) = disk_usage(dir.path());
        assert!(bytes >= 64 << 10, "{bytes} bytes");
        // volumes, scratch, fill, small
        assert_eq!(inodes, 4);
        assert_eq!(disk_usage(&dir.path().join("missing")), (0, 0));
    }

    #[test]
    fn memory_available_is_capacity_less_the_working_set_of_the_cgroup_root() {
        use crate::kubelet_api::resource_usage::tests::write;
        let fs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = fs.path();
        write(
            root,
            "proc/meminfo",
            "MemTotal: 1000 kB\nMemFree: 200 kB\nInactive(file): 300 kB\n",
        );
        write(root, "cgroup/memory/node/memory.usage_in_bytes", "400000\n");
        write(
            root,
            "cgroup/memory/node/memory.stat",
            "total_inactive_file 100000\n",
        );
        let sources = Sources {
            cgroups: Cgroups::at(&root.join("cgroup")),
            proc: Proc::at(&root.join("proc"), 100),
        };
        // The whole machine: 1000 kB less (800 - 300) kB.
        assert_eq!(
            sources.memory("/"),
            Some(Observation {
                available: 500 * 1024,
                capacity: 1000 * 1024
            })
        );
        // A node cgroup: 1000 kB less its 300 000 bytes of working set.
        assert_eq!(
            sources.memory("/node"),
            Some(Observation {
                available: 1_024_000 - 300_000,
                capacity: 1_024_000
            })
        );
        // Not there (yet): no observation, so no threshold is met.
        assert_eq!(sources.memory("/other"), None);
    }

    #[test]
    fn dead_containers_keep_the_newest_exited_attempt_of_each() {
        let c = |id: &str, uid: &str, name: &str, attempt, exited| DeadCandidate {
            id: id.to_owned(),
            pod_uid: uid.to_owned(),
            name: name.to_owned(),
            attempt,
            exited,
        };
        let containers = [
            c("a0", "p1", "app", 0, true),
            c("a1", "p1", "app", 1, true),
            c("a2", "p1", "app", 2, false),
            c("s0", "p1", "side", 0, true),
            c("b0", "p2", "app", 0, true),
            c("b1", "p2", "app", 1, true),
            c("b2", "p2", "app", 2, true),
        ];
        assert_eq!(dead_containers_to_remove(&containers), ["a0", "b0", "b1"]);
    }
}
