//! The scheduler's picture of the cluster: per node, the Node object and what the pods
//! bound (or assumed) to it take — requests, host ports, labels for affinity. Assumed pods
//! are those the scheduler chose a node for whose binding is still in flight, so the next
//! pod already sees their requests (kube-scheduler's assume/forget).
//!
//! It also keeps the topology spread counts of recent constraint sets up to date
//! ([`SpreadIndex`]): every pod and node change below is told to it.
//!
//! Owns that bookkeeping; it is fed by informer events and by the scheduling loop alone
//! (one task), so it needs no locks. It must not decide placement.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Bound,
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Node, Taint};

use super::{
    affinity::has_pod_affinity,
    resources::{allocatable, pod_requests, Resources},
    spread::{ConstraintSet, Domains, SpreadIndex},
};
use crate::client::CachedPod;

/// CPU counted for a container without a CPU request, for scoring only (upstream's 100m).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory counted for a container without a memory request, for scoring only (200 MB).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// A host port a pod takes: protocol, host IP ("0.0.0.0" for any), port.
pub type HostPort = (String, String, i32);

/// What the scheduler needs of a pod, computed once.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod.
    pub pod: Arc<CachedPod>,
    /// `namespace/name`.
    pub key: String,
    /// Effective requests.
    pub requests: Resources,
    /// CPU and memory with upstream's non-zero defaults, for scoring.
    pub non_zero: (i64, i64),
    /// Host ports it asks for.
    pub host_ports: Vec<HostPort>,
}

impl PodInfo {
    /// Computes the pod's scheduling facts.
    pub fn new(pod: Arc<CachedPod>) -> Self {
        let meta = &pod.metadata;
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        let requests = pod_requests(&pod);
        let mut non_zero = (0i64, 0i64);
        let mut host_ports = Vec::new();
        if let Some(spec) = pod.spec.as_ref() {
            for container in &spec.containers {
                let r = Resources::from_list(
                    container
                        .resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref()),
                );
                let requested = container
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref());
                let has = |name: &str| requested.is_some_and(|m| m.contains_key(name));
                non_zero.0 += if has("cpu") {
                    r.milli_cpu
                } else {
                    DEFAULT_MILLI_CPU
                };
                non_zero.1 += if has("memory") {
                    r.memory
                } else {
                    DEFAULT_MEMORY
                };
                for port in container.ports.iter().flatten() {
                    if let Some(host_port) = port.host_port.filter(|p| *p > 0) {
                        host_ports.push((
                            port.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                            port.host_ip
                                .clone()
                                .filter(|ip| !ip.is_empty())
                                .unwrap_or_else(|| "0.0.0.0".to_owned()),
                            host_port,
                        ));
                    }
                }
            }
        }
        Self {
            pod,
            key,
            requests,
            non_zero,
            host_ports,
        }
    }

    /// The pod's priority (0 when unset).
    pub fn priority(&self) -> i32 {
        self.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
    }
}

/// One node and what its pods take. What every filter reads of the Node (name,
/// `unschedulable`, taints) is copied here, so that looking through hundreds of nodes for one
/// pod reads these entries and not each Node object behind them.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The Node (None while only pods bound to it are known). Set through [`NodeInfo::new`]
    /// or the cache, which keep the copies below in step.
    pub node: Option<Arc<Node>>,
    /// The Node's name ("" while the Node is unknown).
    name: String,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// `spec.taints`.
    pub taints: Vec<Taint>,
    /// Allocatable resources.
    pub allocatable: Resources,
    /// How many pods it takes.
    pub allowed_pods: i64,
    /// The sum of its pods' requests.
    pub requested: Resources,
    /// CPU and memory with non-zero defaults, for scoring.
    pub non_zero_requested: (i64, i64),
    /// Its pods, by key.
    pub pods: HashMap<String, PodInfo>,
    /// Host ports in use.
    pub used_ports: HashMap<HostPort, u32>,
    /// Image names present (from `status.images`), with sizes.
    pub images: HashMap<String, i64>,
    /// How many of its pods have pod (anti-)affinity terms.
    pub pods_with_affinity: usize,
    /// Pods nominated to this node by preemption that [`NodeInfo::pods`] holds for one
    /// scheduling attempt (the scheduler's view of a node with them added); the cache's
    /// own entries never have any.
    pub nominated: Vec<Arc<CachedPod>>,
}

impl NodeInfo {
    /// A node with no pods counted yet (what the filters need to judge one Node alone).
    pub fn new(node: Arc<Node>) -> Self {
        let mut info = Self::default();
        info.set_node(node);
        info
    }

    /// A node with only what the node filters read (name, `unschedulable`, taints and the
    /// Node for its labels): no resources or images, for callers that judge placement
    /// rules alone (the DaemonSet controller asks this of every node on every sync).
    pub fn for_filters(node: Arc<Node>) -> Self {
        let spec = node.spec.as_ref();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            node: Some(node),
            ..Self::default()
        }
    }

    /// The node's name ("" when unknown).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_node(&mut self, node: Arc<Node>) {
        node.metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .clone_into(&mut self.name);
        let spec = node.spec.as_ref();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let (allocatable, pods) = allocatable(&node);
        self.allocatable = allocatable;
        self.allowed_pods = pods;
        self.images = node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|image| {
                let size = image.size_bytes.unwrap_or(0);
                image
                    .names
                    .iter()
                    .flatten()
                    .map(move |name| (name.clone(), size))
            })
            .collect();
        self.node = Some(node);
    }

    /// Counts a pod on this node.
    pub fn add_pod(&mut self, info: PodInfo) {
        if has_pod_affinity(&info.pod) {
            self.pods_with_affinity += 1;
        }
        self.requested.add(&info.requests);
        self.non_zero_requested.0 += info.non_zero.0;
        self.non_zero_requested.1 += info.non_zero.1;
        for port in &info.host_ports {
            *self.used_ports.entry(port.clone()).or_insert(0) += 1;
        }
        if let Some(old) = self.pods.insert(info.key.clone(), info) {
            self.forget_usage(&old);
        }
    }

    fn forget_usage(&mut self, info: &PodInfo) {
        if has_pod_affinity(&info.pod) {
            self.pods_with_affinity = self.pods_with_affinity.saturating_sub(1);
        }
        self.requested.sub(&info.requests);
        self.non_zero_requested.0 -= info.non_zero.0;
        self.non_zero_requested.1 -= info.non_zero.1;
        for port in &info.host_ports {
            if let Some(count) = self.used_ports.get_mut(port) {
                *count -= 1;
                if *count == 0 {
                    self.used_ports.remove(port);
                }
            }
        }
    }

    /// Stops counting a pod on this node.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        match self.pods.remove(key) {
            Some(info) => {
                self.forget_usage(&info);
                true
            }
            None => false,
        }
    }
}

fn forget_image(counts: &mut HashMap<String, usize>, image: &str) {
    if let Some(count) = counts.get_mut(image) {
        *count -= 1;
        if *count == 0 {
            counts.remove(image);
        }
    }
}

/// Whether a pod holds resources on its node: bound and not finished.
pub fn occupies_node(pod: &CachedPod) -> bool {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    bound && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Every node and every bound or assumed pod.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    /// Pod key → node it is on (bound or assumed).
    pod_nodes: HashMap<String, String>,
    /// Pods assumed on a node, binding in flight.
    assumed: HashSet<String>,
    /// Image name → how many nodes have it.
    image_nodes: HashMap<String, usize>,
    /// Nodes with a Node object.
    node_total: usize,
    /// Placed pods with pod (anti-)affinity terms of their own.
    pods_with_affinity: usize,
    /// Topology spread counts of recently used constraint sets.
    spread: SpreadIndex,
}

/// Whether a node change may move topology spread counts: its labels (domains, node
/// affinity) or taints (`nodeTaintsPolicy`).
fn topology_changed(old: &Node, new: &Node) -> bool {
    let taints = |n: &Node| n.spec.as_ref().and_then(|s| s.taints.clone());
    old.metadata.labels != new.metadata.labels || taints(old) != taints(new)
}

impl Cache {
    /// Adds or updates a node.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let info = self.nodes.entry(name).or_default();
        for image in info.images.keys() {
            forget_image(&mut self.image_nodes, image);
        }
        let recount = match info.node.as_deref() {
            None => {
                self.node_total += 1;
                true
            }
            Some(old) => topology_changed(old, &node),
        };
        if recount && info.node.is_some() {
            self.spread.node_removed(info);
        }
        info.set_node(node);
        if recount {
            self.spread.node_added(info);
        }
        for image in info.images.keys() {
            *self.image_nodes.entry(image.clone()).or_insert(0) += 1;
        }
    }

    /// The fraction of nodes that have an image (ImageLocality's spread factor).
    pub fn image_spread(&self, image: &str) -> f64 {
        let total = self.node_count().max(1) as f64;
        let count = self
            .image_nodes
            .get(image)
            .or_else(|| {
                self.image_nodes
                    .get(&super::scores::normalized_image(image))
            })
            .copied()
            .unwrap_or(0);
        count as f64 / total
    }

    /// Removes a node (its pods stay known until they go).
    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            for image in info.images.keys() {
                forget_image(&mut self.image_nodes, image);
            }
            info.images.clear();
            if info.node.is_some() {
                self.spread.node_removed(info);
            }
            if info.node.take().is_some() {
                self.node_total -= 1;
            }
            info.name.clear();
            info.unschedulable = false;
            info.taints.clear();
            if info.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Records a pod as the informer sees it: bound pods take their node's resources; a
    /// pod that finished or was unbound gives them back. An assumed pod is confirmed.
    pub fn set_pod(&mut self, pod: Arc<CachedPod>) {
        let info = PodInfo::new(pod);
        let key = info.key.clone();
        self.assumed.remove(&key);
        self.remove_pod(&key);
        if !occupies_node(&info.pod) {
            return;
        }
        let node = info
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        self.pod_nodes.insert(key, node.clone());
        self.place(info, node);
    }

    /// Counts a pod on its node, in the node and in the cluster-wide tallies.
    fn place(&mut self, info: PodInfo, node: String) {
        if has_pod_affinity(&info.pod) {
            self.pods_with_affinity += 1;
        }
        let node = self.nodes.entry(node).or_default();
        self.spread.pod_added(node, &info.pod);
        node.add_pod(info);
    }

    /// Forgets a pod (deleted, or its assumption failed).
    pub fn remove_pod(&mut self, key: &str) {
        self.assumed.remove(key);
        if let Some(node) = self.pod_nodes.remove(key) {
            if let Some(info) = self.nodes.get_mut(&node) {
                if let Some(pod) = info.pods.get(key) {
                    if has_pod_affinity(&pod.pod) {
                        self.pods_with_affinity = self.pods_with_affinity.saturating_sub(1);
                    }
                    self.spread.pod_removed(info, &pod.pod);
                }
                info.remove_pod(key);
                if info.node.is_none() && info.pods.is_empty() {
                    self.nodes.remove(&node);
                }
            }
        }
    }

    /// Puts a pod on a node before its binding is written.
    pub fn assume(&mut self, info: PodInfo, node: &str) {
        let key = info.key.clone();
        self.remove_pod(&key);
        self.pod_nodes.insert(key.clone(), node.to_owned());
        self.assumed.insert(key);
        self.place(info, node.to_owned());
    }

    /// Whether the pod is assumed (binding in flight) or bound.
    pub fn is_placed(&self, key: &str) -> bool {
        self.pod_nodes.contains_key(key)
    }

    /// Whether the pod is assumed but not yet seen bound.
    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    /// Nodes that exist (have a Node object), in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.node.is_some())
    }

    /// Every node once, in name order from `start` (inclusive) round to the one before it:
    /// the scheduler's round-robin walk, which upstream keeps as an index into its node list.
    pub fn nodes_from<'a>(&'a self, start: &'a str) -> impl Iterator<Item = &'a NodeInfo> {
        self.nodes
            .range::<str, _>((Bound::Included(start), Bound::Unbounded))
            .chain(
                self.nodes
                    .range::<str, _>((Bound::Unbounded, Bound::Excluded(start))),
            )
            .map(|(_, info)| info)
            .filter(|n| n.node.is_some())
    }

    /// How many placed pods have pod (anti-)affinity terms.
    pub fn pods_with_affinity(&self) -> usize {
        self.pods_with_affinity
    }

    /// Makes sure the spread counts of a constraint set are kept, counting the cluster
    /// once for a set not seen recently.
    pub fn prepare_spread(&mut self, set: &ConstraintSet) {
        let nodes = self.nodes.values().filter(|n| n.node.is_some());
        self.spread.prepare(set, nodes);
    }

    /// The kept spread counts of a constraint set (see [`Cache::prepare_spread`]).
    pub fn spread_domains(&self, set: &ConstraintSet) -> Option<&[Domains]> {
        self.spread.get(set)
    }

    /// How many nodes exist.
    pub fn node_count(&self) -> usize {
        self.node_total
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).filter(|n| n.node.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        name: &str,
        node: &str,
        anti_affinity: bool,
    ) -> Result<Arc<CachedPod>, serde_json::Error> {
        let mut spec = json!({"nodeName": node, "containers": [{"name": "main"}]});
        if anti_affinity {
            spec["affinity"] = json!({"podAntiAffinity": {}});
        }
        Ok(Arc::new(serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec,
        }))?))
    }

    #[test]
    fn pods_with_affinity_are_tallied_as_they_come_and_go() -> Result<(), serde_json::Error> {
        let mut cache = Cache::default();
        cache.set_pod(pod("a", "n1", true)?);
        cache.set_pod(pod("b", "n2", true)?);
        cache.set_pod(pod("c", "n2", false)?);
        assert_eq!(cache.pods_with_affinity(), 2);
        // An update replaces the pod: still one.
        cache.set_pod(pod("a", "n1", true)?);
        assert_eq!(cache.pods_with_affinity(), 2);
        // Terms dropped, a pod deleted, one assumed elsewhere.
        cache.set_pod(pod("b", "n2", false)?);
        cache.remove_pod("ns/a");
        assert_eq!(cache.pods_with_affinity(), 0);
        cache.assume(PodInfo::new(pod("d", "", true)?), "n3");
        assert_eq!(cache.pods_with_affinity(), 1);
        let per_node: usize = cache.nodes.values().map(|n| n.pods_with_affinity).sum();
        assert_eq!(per_node, 1);
        Ok(())
    }

    fn node(name: &str, spec: serde_json::Value) -> Result<Arc<Node>, serde_json::Error> {
        Ok(Arc::new(serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": spec}),
        )?))
    }

    #[test]
    fn the_round_robin_walk_visits_every_known_node_once_from_any_start(
    ) -> Result<(), serde_json::Error> {
        let mut cache = Cache::default();
        for name in ["n1", "n2", "n3", "n4"] {
            cache.set_node(node(name, json!({}))?);
        }
        // Pods on a node whose Node is unknown make an entry the walk skips.
        cache.set_pod(pod("p", "ghost", false)?);
        let walk = |start: &str| -> Vec<String> {
            cache
                .nodes_from(start)
                .map(|n| n.name().to_owned())
                .collect()
        };
        assert_eq!(walk(""), ["n1", "n2", "n3", "n4"]);
        assert_eq!(walk("n3"), ["n3", "n4", "n1", "n2"]);
        // A start that is gone (or never was) begins at the next name.
        assert_eq!(walk("n25"), ["n3", "n4", "n1", "n2"]);
        assert_eq!(walk("zz"), ["n1", "n2", "n3", "n4"]);
        Ok(())
    }

    #[test]
    fn node_fields_the_filters_read_follow_the_node() -> Result<(), serde_json::Error> {
        let mut cache = Cache::default();
        let taint = json!({"key": "k", "effect": "NoSchedule"});
        cache.set_node(node(
            "n1",
            json!({"unschedulable": true, "taints": [taint]}),
        )?);
        let info = cache.node("n1").cloned().unwrap_or_default();
        assert_eq!(
            (info.name(), info.unschedulable, info.taints.len()),
            ("n1", true, 1)
        );
        // Uncordoned and untainted by an update.
        cache.set_node(node("n1", json!({}))?);
        let info = cache.node("n1").cloned().unwrap_or_default();
        assert_eq!(
            (info.name(), info.unschedulable, info.taints.len()),
            ("n1", false, 0)
        );
        // A Node built for one filter alone carries them too.
        let alone = NodeInfo::new(node("n2", json!({"unschedulable": true}))?);
        assert!(alone.unschedulable);
        // A removed Node leaves nothing of it behind.
        cache.set_pod(pod("p", "n1", false)?);
        cache.remove_node("n1");
        assert!(cache.node("n1").is_none());
        let left = cache.nodes.get("n1").cloned().unwrap_or_default();
        assert_eq!((left.name(), left.taints.len()), ("", 0));
        Ok(())
    }
}
