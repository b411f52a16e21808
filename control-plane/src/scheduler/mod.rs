//! The scheduler (DESIGN.md §6): binds each pending pod whose `schedulerName` is
//! `default-scheduler` to a node, as kube-scheduler does — pop the highest-priority pod,
//! filter nodes ([`filters`], [`affinity`], [`spread`]), score the feasible ones
//! ([`scores`]), assume the pod on the best node in the [`cache`] and write the binding in
//! the background. Topology spread counts are not recounted per attempt: the cache keeps
//! them up to date for the constraint sets recently scheduled with ([`spread::SpreadIndex`]),
//! and pods without constraints of their own get upstream's system defaults (hostname and
//! zone, scoring only) over the selectors of the Services and controllers that own them.
//! A pod that fits nowhere gets `PodScheduled=False` with the reasons, a `FailedScheduling`
//! event, and waits in the [`queue`] for a cluster change; preemption ([`preemption`]) may
//! first evict lower-priority pods to make room.
//!
//! Owns placement. It reads pods, nodes and namespaces through informers (and Services,
//! ReplicaSets and StatefulSets for the spread defaults) and writes only bindings, pod
//! status conditions, nominated node names, evictions (for preemption) and events. It
//! schedules only while this process leads (the `kube-scheduler` Lease).
pub mod affinity;
pub mod cache;
pub mod filters;
pub mod preemption;
pub mod queue;
pub mod resources;
pub mod scores;
pub mod spread;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::{ReplicaSet, StatefulSet},
        core::v1::{
            Binding, Namespace, Node, ObjectReference, Pod, ReplicationController, Service,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, info, warn};

use crate::client::{
    events::{reference_to, EventType, Recorder},
    leader::Leadership,
    Api, CachedPod, Client, ClientError, Informers,
};
use affinity::{Context, NamespaceLabels};
use cache::{Cache, NodeInfo, PodInfo};
use queue::SchedulingQueue;
use spread::{PodSpread, WorkloadInformers};

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Clusters this small are searched completely (upstream's `minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES: usize = 100;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The `schedulerName` this scheduler serves.
    pub name: String,
    /// Percentage of nodes to search for feasible ones (0: upstream's adaptive default).
    pub percentage_of_nodes_to_score: u32,
    /// This process's identity, for events.
    pub identity: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_SCHEDULER.to_owned(),
            percentage_of_nodes_to_score: 0,
            identity: "corten-server".to_owned(),
        }
    }
}

/// What the informers and binding tasks tell the scheduling loop.
#[derive(Debug)]
enum Change {
    Pod(Option<Arc<CachedPod>>, Option<Arc<CachedPod>>),
    Node(Option<Arc<Node>>, Option<Arc<Node>>),
    Namespace(Option<Arc<Namespace>>),
    BindFailed(String, String),
}

/// Starts the scheduler; it schedules while `leadership` is true.
pub fn start(
    client: &Client,
    informers: &Informers,
    config: SchedulerConfig,
    leadership: Leadership,
) -> Result<(), ClientError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let pods = informers.get::<CachedPod>()?;
    let nodes = informers.get::<Node>()?;
    let namespaces = informers.get::<Namespace>()?;
    // What the system default spread constraints select by; ReplicationControllers only
    // where the API serves them.
    let workloads = WorkloadInformers {
        services: Some(informers.get::<Service>()?),
        replication_controllers: informers.get::<ReplicationController>().ok(),
        replica_sets: Some(informers.get::<ReplicaSet>()?),
        stateful_sets: Some(informers.get::<StatefulSet>()?),
    };
    let sender = tx.clone();
    pods.on_change(Box::new(move |old, new| {
        let _ = sender.send(Change::Pod(old.cloned(), new.cloned()));
    }));
    let sender = tx.clone();
    nodes.on_change(Box::new(move |old, new| {
        let _ = sender.send(Change::Node(old.cloned(), new.cloned()));
    }));
    let sender = tx.clone();
    namespaces.on_change(Box::new(move |_, new| {
        let _ = sender.send(Change::Namespace(new.cloned()));
    }));
    let scheduler = Scheduler {
        pods: client.all::<Pod>()?,
        recorder: Recorder::new(client.clone(), "default-scheduler", &config.identity),
        client: client.clone(),
        config,
        cache: Cache::default(),
        queue: SchedulingQueue::new(),
        namespaces: NamespaceLabels::new(),
        workloads: workloads.clone(),
        changes: tx,
        next_start: String::new(),
        nominated: HashMap::new(),
    };
    let mut syncs: Vec<SyncWait> = vec![
        Box::pin(async move { pods.synced().await }),
        Box::pin(async move { nodes.synced().await }),
        Box::pin(async move { namespaces.synced().await }),
    ];
    if let Some(services) = workloads.services {
        syncs.push(Box::pin(async move { services.synced().await }));
    }
    if let Some(controllers) = workloads.replication_controllers {
        syncs.push(Box::pin(async move { controllers.synced().await }));
    }
    if let Some(sets) = workloads.replica_sets {
        syncs.push(Box::pin(async move { sets.synced().await }));
    }
    if let Some(sets) = workloads.stateful_sets {
        syncs.push(Box::pin(async move { sets.synced().await }));
    }
    tokio::spawn(scheduler.run(rx, leadership, syncs));
    Ok(())
}

type SyncWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

struct Scheduler {
    client: Client,
    pods: Api<Pod>,
    recorder: Recorder,
    config: SchedulerConfig,
    cache: Cache,
    queue: SchedulingQueue,
    namespaces: NamespaceLabels,
    workloads: WorkloadInformers,
    changes: mpsc::UnboundedSender<Change>,
    /// The node the next pod's search starts at (upstream's `nextStartNodeIndex`, kept
    /// as a name).
    next_start: String,
    /// Pending pods nominated to a node by preemption: they hold room there against pods
    /// of lower priority.
    nominated: HashMap<String, (String, PodInfo)>,
}

fn pod_key(pod: &CachedPod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn is_bound(pod: &CachedPod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

impl Scheduler {
    fn is_ours(&self, pod: &CachedPod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_SCHEDULER);
        name == self.config.name
    }

    fn apply(&mut self, change: Change) {
        let now = Instant::now();
        match change {
            Change::Pod(old, new) => match new {
                Some(pod) => {
                    let key = pod_key(&pod);
                    if is_bound(&pod) || pod.metadata.deletion_timestamp.is_some() {
                        self.nominated.remove(&key);
                    }
                    if is_bound(&pod) {
                        self.queue.remove(&key);
                        let finished_or_moved = !cache::occupies_node(&pod);
                        self.cache.set_pod(pod);
                        if finished_or_moved {
                            self.queue.move_all_unschedulable(now);
                        }
                    } else if pod.metadata.deletion_timestamp.is_some() || !self.is_ours(&pod) {
                        self.queue.remove(&key);
                    } else if !self.cache.is_assumed(&key) {
                        // Status-only changes (our own PodScheduled=False among them) do not
                        // make a pod worth retrying; spec and label changes do.
                        let relevant = old.as_deref().is_none_or(|old| spec_changed(old, &pod));
                        if let Some(node) = pod
                            .status
                            .as_ref()
                            .and_then(|s| s.nominated_node_name.clone())
                            .filter(|n| !n.is_empty())
                        {
                            self.nominated
                                .insert(key.clone(), (node, PodInfo::new(pod.clone())));
                        }
                        self.queue.add_or_update(&key, pod, relevant);
                    }
                }
                None => {
                    if let Some(pod) = old {
                        let key = pod_key(&pod);
                        self.nominated.remove(&key);
                        self.queue.remove(&key);
                        self.cache.remove_pod(&key);
                        self.queue.move_all_unschedulable(now);
                    }
                }
            },
            Change::Node(old, new) => {
                let relevant = match (&old, &new) {
                    (Some(old), Some(new)) => node_changed(old, new),
                    _ => true,
                };
                match new {
                    Some(node) => self.cache.set_node(node),
                    None => {
                        if let Some(name) = old.and_then(|n| n.metadata.name.clone()) {
                            self.cache.remove_node(&name);
                        }
                    }
                }
                if relevant {
                    self.queue.move_all_unschedulable(now);
                }
            }
            Change::Namespace(Some(namespace)) => {
                if let Some(name) = namespace.metadata.name.clone() {
                    self.namespaces
                        .insert(name, namespace.metadata.labels.clone().unwrap_or_default());
                }
            }
            Change::Namespace(None) => {}
            Change::BindFailed(key, node) => {
                warn!(pod = %key, %node, "binding failed; retrying after backoff");
                self.cache.remove_pod(&key);
                self.queue.retry_later(&key, now);
            }
        }
    }

    async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<Change>,
        mut leadership: Leadership,
        syncs: Vec<SyncWait>,
    ) {
        for sync in syncs {
            sync.await;
        }
        info!(scheduler = %self.config.name, "scheduler caches synced");
        let mut stale_check = tokio::time::interval(Duration::from_secs(30));
        loop {
            // Every change the informers reported comes first, so each attempt sees the
            // cluster as it is.
            while let Ok(change) = changes.try_recv() {
                self.apply(change);
            }
            let now = Instant::now();
            let next_backoff = self.queue.flush_backoff(now);
            if *leadership.borrow() {
                if let Some((key, pod)) = self.queue.pop() {
                    self.schedule_one(key, pod).await;
                    // One pod at a time, then let the server's other tasks (API requests,
                    // bindings, informers) run on this worker: a busy queue must not starve
                    // the writes it depends on.
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            let wake = next_backoff.unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                change = changes.recv() => match change {
                    Some(change) => self.apply(change),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => {}
                _ = stale_check.tick() => self.queue.flush_stale_unschedulable(Instant::now()),
                changed = leadership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// How many feasible nodes to look for before scoring (upstream's
    /// `numFeasibleNodesToFind`).
    fn feasible_nodes_to_find(&self, total: usize) -> usize {
        if total < MIN_FEASIBLE_NODES {
            return total;
        }
        let percentage = match self.config.percentage_of_nodes_to_score {
            0 => (50 - (total / 125) as i64).max(5) as usize,
            p => (p as usize).min(100),
        };
        (total * percentage / 100).max(MIN_FEASIBLE_NODES)
    }

    async fn schedule_one(&mut self, key: String, pod: Arc<CachedPod>) {
        let info = PodInfo::new(pod.clone());
        let spread = PodSpread::new(&info.pod, &self.workloads);
        for set in [&spread.hard, &spread.soft].into_iter().flatten() {
            self.cache.prepare_spread(set);
        }
        let context = Context::new(&info, &self.cache, &self.namespaces, &spread);
        let total = self.cache.node_count();
        let wanted = self.feasible_nodes_to_find(total);
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let start = self.next_start.clone();
        let mut walk = self.cache.nodes_from(&start);
        for node in walk.by_ref() {
            let with_nominated = self.with_nominated(&info, node);
            let node_view = with_nominated.as_ref().unwrap_or(node);
            match filters::run_all(&info, node_view, &context) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= wanted {
                        break;
                    }
                }
                Err(reason) => *reasons.entry(reason.0).or_insert(0) += 1,
            }
        }
        // The next pod's search starts where this one stopped (after a full round, where it
        // started).
        let next = walk.next().map(|n| n.name().to_owned());
        drop(walk);
        if let Some(next) = next {
            self.next_start = next;
        }
        if feasible.is_empty() {
            let summary = summarize(total, &reasons);
            let nominated =
                preemption::try_preempt(&info, &self.cache, &context, &self.pods, &self.recorder)
                    .await;
            let message = match &nominated {
                Some(node) => format!("{summary} preemption: victims evicted on node {node}."),
                None => format!(
                    "{summary} preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
                ),
            };
            debug!(pod = %key, %message, "unschedulable");
            if let Some(node) = &nominated {
                self.nominated
                    .insert(key.clone(), (node.clone(), PodInfo::new(pod.clone())));
            }
            self.queue.unschedulable(&key, Instant::now());
            self.mark_unschedulable(&pod, message, nominated).await;
            return;
        }
        let scores = scores::score_all(&info, &feasible, &context, |image| {
            self.cache.image_spread(image)
        });
        let best = select_host(&scores);
        let node = feasible[best].name().to_owned();
        self.queue.remove(&key);
        self.cache.assume(info, &node);
        self.bind(pod, node);
    }

    /// The node as a pod of `info`'s priority sees it: with the pods nominated to it that
    /// are at least as important (`None` when there are none). They take room and count
    /// toward topology spread there, as upstream's filters with nominated pods do.
    fn with_nominated(&self, info: &PodInfo, node: &NodeInfo) -> Option<NodeInfo> {
        if self.nominated.is_empty() {
            return None;
        }
        let name = node.name();
        let mut view: Option<NodeInfo> = None;
        for (key, (nominated_node, nominated)) in &self.nominated {
            if nominated_node != name || *key == info.key || nominated.priority() < info.priority()
            {
                continue;
            }
            let view = view.get_or_insert_with(|| node.clone());
            view.add_pod(nominated.clone());
            view.nominated.push(nominated.pod.clone());
        }
        view
    }

    fn bind(&self, pod: Arc<CachedPod>, node: String) {
        let api = self.pods.clone();
        let recorder = self.recorder.clone();
        let changes = self.changes.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectMeta::default()
                },
                target: ObjectReference {
                    kind: Some("Node".to_owned()),
                    name: Some(node.clone()),
                    ..ObjectReference::default()
                },
            };
            let result = match client.namespaced::<Pod>(&namespace) {
                Ok(api) => api.bind(&binding).await,
                Err(e) => Err(e),
            };
            drop(api);
            match result {
                Ok(()) => recorder.record(
                    reference_to(pod.as_ref()),
                    EventType::Normal,
                    "Scheduled",
                    format!("Successfully assigned {namespace}/{name} to {node}"),
                ),
                Err(e) => {
                    debug!(pod = %name, error = %e, "bind failed");
                    let _ = changes.send(Change::BindFailed(format!("{namespace}/{name}"), node));
                }
            }
        });
    }

    /// Records why a pod fits nowhere: a `FailedScheduling` event (queued) and the
    /// `PodScheduled=False` condition, written before the next pod is tried — as upstream,
    /// so a burst of unschedulable pods costs one write at a time, not a task per pod. The
    /// write is skipped when the pod already says the same (upstream's `updatePod` check).
    async fn mark_unschedulable(
        &self,
        pod: &Arc<CachedPod>,
        message: String,
        nominated: Option<String>,
    ) {
        self.recorder.record(
            reference_to(pod.as_ref()),
            EventType::Warning,
            "FailedScheduling",
            message.clone(),
        );
        let status = pod.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_ref());
        let previous = conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled");
        let same_condition = previous.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message.as_str())
        });
        let same_nomination = match &nominated {
            Some(node) => status.and_then(|s| s.nominated_node_name.as_ref()) == Some(node),
            None => true,
        };
        if same_condition && same_nomination {
            return;
        }
        let mut patched: Vec<serde_json::Value> = conditions
            .into_iter()
            .flatten()
            .filter(|c| c.type_ != "PodScheduled")
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let transition = match previous {
            Some(c) if c.status == "False" => c
                .last_transition_time
                .as_ref()
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or_else(|| json!(crate::apiserver::objects::now())),
            _ => json!(crate::apiserver::objects::now()),
        };
        patched.push(json!({
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": transition,
        }));
        let mut status = json!({"conditions": patched});
        if let Some(node) = nominated {
            status["nominatedNodeName"] = json!(node);
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let result = match self.client.namespaced::<Pod>(namespace) {
            Ok(api) => api.patch_status(name, &json!({"status": status})).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            debug!(pod = %name, error = %e, "could not record PodScheduled=False");
        }
    }
}

/// Whether a pod changed in a way that may change where it fits (upstream's
/// `isPodUpdated`: anything but status, resourceVersion, managedFields and finalizers).
fn spec_changed(old: &CachedPod, new: &CachedPod) -> bool {
    let strip = |pod: &CachedPod| {
        let mut pod = pod.clone();
        pod.metadata.resource_version = None;
        pod.metadata.generation = None;
        pod.metadata.managed_fields = None;
        pod.metadata.finalizers = None;
        pod.status = None;
        pod
    };
    strip(old) != strip(new)
}

/// Whether a node changed in a way that may let pending pods fit.
fn node_changed(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.unschedulable, s.taints.clone()));
    let status = |n: &Node| {
        n.status
            .as_ref()
            .map(|s| (s.allocatable.clone(), s.images.clone()))
    };
    old.metadata.labels != new.metadata.labels
        || spec(old) != spec(new)
        || status(old) != status(new)
}

/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {a: b}.`
pub fn summarize(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}

/// The index of the best score; ties are broken at random (reservoir sampling).
fn select_host(scores: &[i64]) -> usize {
    let mut best = 0;
    let mut ties = 0u32;
    for (i, score) in scores.iter().enumerate() {
        if *score > scores[best] {
            best = i;
            ties = 1;
        } else if *score == scores[best] {
            ties += 1;
            if rand::random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}
