//! Pod topology spread (upstream's `PodTopologySpread` plugin with the `System` defaulting
//! type): a pod's `topologySpreadConstraints` — or, for a pod without any, the system
//! defaults (hostname with maxSkew 3 and zone with maxSkew 5, both `ScheduleAnyway`, over the
//! selector of the Services, ReplicationController, ReplicaSet or StatefulSet that own or
//! select it) — resolved into [`ConstraintSet`]s, and how many matching pods each topology
//! domain holds.
//!
//! Those counts are kept incrementally ([`SpreadIndex`], held by the cache): the first pod
//! of a constraint set counts the cluster once; after that every pod or node change adjusts
//! the counts, so a scheduling attempt reads them in O(constraints) per node instead of
//! recounting every pod of every node (upstream's PreFilter/PreScore do that recount once
//! per attempt). [`FilterState`] and [`ScoreState`] are one attempt's view of them.
//!
//! Owns constraint resolution, the counts and the spread filter and score verdicts; it must
//! not look at resources or inter-pod affinity, and must not write anything.
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        apps::v1::{ReplicaSet, StatefulSet},
        core::v1::{
            Affinity, NodeAffinity, ReplicationController, Service, TopologySpreadConstraint,
        },
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};

use super::{
    cache::NodeInfo,
    filters::{self, Reason},
};
use crate::client::{cached_pod::CachedPodSpec, CachedPod};
use crate::client::{labels::selector_matches, Informer};

/// The node label of a node's own domain; scores count it on the node itself.
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
/// The node label of a node's zone.
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";

/// How many constraint sets the index keeps counts for; the least recently used goes first.
const INDEX_CAPACITY: usize = 16;

const REASON_SKEW: &str = "node(s) didn't match pod topology spread constraints";
const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// A constraint's selector as upstream parses it.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// A missing `labelSelector`: selects no pod.
    Nothing,
    /// Every requirement must hold. One without requirements selects every pod, yet counts
    /// none in a domain (upstream's `countPodsMatchSelector` skips an empty selector).
    Labels(LabelSelector),
}

impl Selector {
    fn from_api(selector: Option<&LabelSelector>) -> Self {
        match selector {
            None => Self::Nothing,
            Some(selector) => Self::Labels(selector.clone()),
        }
    }

    /// Whether it has no requirement at all (upstream's `Selector.Empty()`).
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Nothing => false,
            Self::Labels(s) => {
                s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                    && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
            }
        }
    }

    /// Whether a label set is selected.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        match self {
            Self::Nothing => false,
            Self::Labels(s) => selector_matches(s, labels),
        }
    }

    /// Adds the requirement `key in (value)`; a selector of nothing stays one.
    fn require(&mut self, key: &str, value: &str) {
        if let Self::Labels(s) = self {
            s.match_expressions
                .get_or_insert_with(Vec::new)
                .push(LabelSelectorRequirement {
                    key: key.to_owned(),
                    operator: "In".to_owned(),
                    values: Some(vec![value.to_owned()]),
                });
        }
    }
}

/// One topology spread constraint, resolved (upstream's internal `topologySpreadConstraint`).
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    /// How far a domain may run ahead of the least loaded one.
    pub max_skew: i32,
    /// The node label whose values are the domains.
    pub topology_key: String,
    /// Which pods count (with `matchLabelKeys` merged in).
    pub selector: Selector,
    /// Below this many eligible domains the global minimum counts as 0.
    pub min_domains: i32,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes matching the pod's node
    /// selector and required node affinity count.
    pub honor_node_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default Ignore): only nodes whose NoSchedule/NoExecute
    /// taints the pod tolerates count.
    pub honor_taints: bool,
}

impl Constraint {
    fn from_api(
        constraint: &TopologySpreadConstraint,
        pod_labels: Option<&BTreeMap<String, String>>,
    ) -> Self {
        let mut selector = Selector::from_api(constraint.label_selector.as_ref());
        // matchLabelKeys: the pod's own values for those keys join the selector.
        for key in constraint.match_label_keys.iter().flatten() {
            if let Some(value) = pod_labels.and_then(|l| l.get(key)) {
                selector.require(key, value);
            }
        }
        Self {
            max_skew: constraint.max_skew,
            topology_key: constraint.topology_key.clone(),
            selector,
            min_domains: constraint.min_domains.unwrap_or(1),
            honor_node_affinity: constraint.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: constraint.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    /// A system default constraint (`ScheduleAnyway`) over `selector`.
    fn system_default(max_skew: i32, topology_key: &str, selector: Selector) -> Self {
        Self {
            max_skew,
            topology_key: topology_key.to_owned(),
            selector,
            min_domains: 1,
            honor_node_affinity: true,
            honor_taints: false,
        }
    }

    /// Whether an existing pod counts in its domain: same namespace as the incoming pod,
    /// not terminating, selected (upstream's `countPodsMatchSelector`).
    pub fn counts(&self, pod: &CachedPod, namespace: &str) -> bool {
        !self.selector.is_empty()
            && pod.metadata.deletion_timestamp.is_none()
            && pod.metadata.namespace.as_deref().unwrap_or_default() == namespace
            && self.selector.matches(pod.metadata.labels.as_ref())
    }
}

/// A pod's constraints of one kind (hard or soft) with everything that decides which nodes
/// and pods they count: two pods with equal sets share their counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstraintSet {
    /// The incoming pod's namespace: only pods there count.
    pub namespace: String,
    /// The constraints, in the pod's order.
    pub constraints: Vec<Constraint>,
    /// Whether a node must carry every constraint's key to count for any of them (false
    /// only for the system defaults, so nodes without a zone still spread by hostname).
    pub require_all_keys: bool,
    /// The incoming pod's node selection as far as a constraint honors it: nodeSelector
    /// and required node affinity, tolerations.
    placement: CachedPod,
}

impl ConstraintSet {
    fn new(pod: &CachedPod, constraints: Vec<Constraint>, require_all_keys: bool) -> Self {
        let spec = pod.spec.as_ref();
        let affinity = constraints.iter().any(|c| c.honor_node_affinity);
        let taints = constraints.iter().any(|c| c.honor_taints);
        let required = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            });
        let placement = CachedPod {
            spec: Some(CachedPodSpec {
                node_selector: spec
                    .and_then(|s| s.node_selector.clone())
                    .filter(|s| affinity && !s.is_empty()),
                affinity: required.filter(|_| affinity).map(|required| {
                    Box::new(Affinity {
                        node_affinity: Some(NodeAffinity {
                            required_during_scheduling_ignored_during_execution: Some(required),
                            ..NodeAffinity::default()
                        }),
                        ..Affinity::default()
                    })
                }),
                tolerations: spec
                    .and_then(|s| s.tolerations.clone())
                    .filter(|t| taints && !t.is_empty()),
                ..CachedPodSpec::default()
            }),
            ..CachedPod::default()
        };
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            constraints,
            require_all_keys,
            placement,
        }
    }

    /// For each constraint, the node's domain when the node counts for it (upstream's
    /// `nodeLabelsMatchSpreadConstraints` and `matchNodeInclusionPolicies`).
    fn domains_of<'n>(&self, node: &'n NodeInfo) -> Vec<Option<&'n str>> {
        let none = || vec![None; self.constraints.len()];
        let Some(labels) = node.node.as_ref().map(|n| n.metadata.labels.as_ref()) else {
            return none();
        };
        let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
        if self.require_all_keys
            && self
                .constraints
                .iter()
                .any(|c| label(&c.topology_key).is_none())
        {
            return none();
        }
        let mut affinity_ok = None;
        let mut taints_ok = None;
        self.constraints
            .iter()
            .map(|c| {
                let value = label(&c.topology_key)?;
                if c.honor_node_affinity
                    && !*affinity_ok.get_or_insert_with(|| {
                        filters::node_affinity(&self.placement, node).is_ok()
                    })
                {
                    return None;
                }
                if c.honor_taints
                    && !*taints_ok.get_or_insert_with(|| {
                        filters::taint_toleration(&self.placement, node).is_ok()
                    })
                {
                    return None;
                }
                Some(value)
            })
            .collect()
    }
}

/// A pod's spread constraints: its own, or the system defaults.
#[derive(Debug, Clone, Default)]
pub struct PodSpread {
    /// `DoNotSchedule` constraints (filter).
    pub hard: Option<ConstraintSet>,
    /// `ScheduleAnyway` constraints, or the system defaults (score).
    pub soft: Option<ConstraintSet>,
}

impl PodSpread {
    /// Resolves the constraints of `pod`; `workloads` finds the selector of the system
    /// defaults for a pod without constraints of its own.
    pub fn new(pod: &CachedPod, workloads: &dyn Workloads) -> Self {
        let own = pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or_default();
        let labels = pod.metadata.labels.as_ref();
        if !own.is_empty() {
            let of_kind = |action: &str| {
                let constraints: Vec<Constraint> = own
                    .iter()
                    .filter(|c| c.when_unsatisfiable == action)
                    .map(|c| Constraint::from_api(c, labels))
                    .collect();
                (!constraints.is_empty()).then(|| ConstraintSet::new(pod, constraints, true))
            };
            return Self {
                hard: of_kind("DoNotSchedule"),
                soft: of_kind("ScheduleAnyway"),
            };
        }
        let selector = default_selector(pod, workloads);
        if selector.is_empty() {
            return Self::default();
        }
        let defaults = vec![
            Constraint::system_default(3, HOSTNAME_KEY, selector.clone()),
            Constraint::system_default(5, ZONE_KEY, selector),
        ];
        Self {
            hard: None,
            soft: Some(ConstraintSet::new(pod, defaults, false)),
        }
    }
}

/// What the system defaults read to find a pod's workloads (upstream's listers).
pub trait Workloads {
    /// The Services of a namespace.
    fn services(&self, namespace: &str) -> Vec<Arc<Service>>;
    /// One ReplicationController.
    fn replication_controller(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ReplicationController>>;
    /// One ReplicaSet.
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>>;
    /// One StatefulSet.
    fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>>;
}

/// [`Workloads`] read from informers; a resource without one (not served) has no objects.
#[derive(Debug, Clone, Default)]
pub struct WorkloadInformers {
    /// Services.
    pub services: Option<Informer<Service>>,
    /// ReplicationControllers.
    pub replication_controllers: Option<Informer<ReplicationController>>,
    /// ReplicaSets.
    pub replica_sets: Option<Informer<ReplicaSet>>,
    /// StatefulSets.
    pub stateful_sets: Option<Informer<StatefulSet>>,
}

impl Workloads for WorkloadInformers {
    fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.services
            .as_ref()
            .map(|i| i.list_namespace(namespace))
            .unwrap_or_default()
    }

    fn replication_controller(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ReplicationController>> {
        self.replication_controllers
            .as_ref()?
            .get(&format!("{namespace}/{name}"))
    }

    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets
            .as_ref()?
            .get(&format!("{namespace}/{name}"))
    }

    fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.stateful_sets
            .as_ref()?
            .get(&format!("{namespace}/{name}"))
    }
}

/// A selector's requirements, `None` when an operator is unknown (upstream fails to
/// parse such a selector and ignores it).
fn requirements_of(selector: &LabelSelector) -> Option<Vec<LabelSelectorRequirement>> {
    let mut requirements: Vec<LabelSelectorRequirement> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| LabelSelectorRequirement {
            key: key.clone(),
            operator: "In".to_owned(),
            values: Some(vec![value.clone()]),
        })
        .collect();
    for requirement in selector.match_expressions.iter().flatten() {
        if !matches!(
            requirement.operator.as_str(),
            "In" | "NotIn" | "Exists" | "DoesNotExist"
        ) {
            return None;
        }
        requirements.push(requirement.clone());
    }
    Some(requirements)
}

/// The selector the system defaults spread a pod by (upstream's `DefaultSelector`): the
/// selectors of the Services in its namespace that select it, and of the
/// ReplicationController, ReplicaSet or StatefulSet that controls it. Empty when there
/// are none.
pub fn default_selector(pod: &CachedPod, workloads: &dyn Workloads) -> Selector {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = pod.metadata.labels.as_ref();
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    for service in workloads.services(namespace) {
        // A Service without a selector selects nothing, not everything.
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        if selector
            .iter()
            .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
        {
            set.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut requirements = Vec::new();
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    if let Some(owner) = controller {
        match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("v1", "ReplicationController") => {
                if let Some(rc) = workloads.replication_controller(namespace, &owner.name) {
                    let selector = rc.spec.as_ref().and_then(|s| s.selector.as_ref());
                    set.extend(
                        selector
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
            }
            ("apps/v1", "ReplicaSet") => {
                if let Some(rs) = workloads.replica_set(namespace, &owner.name) {
                    let selector = rs.spec.as_ref().map(|s| &s.selector);
                    requirements.extend(selector.and_then(requirements_of).into_iter().flatten());
                }
            }
            ("apps/v1", "StatefulSet") => {
                if let Some(ss) = workloads.stateful_set(namespace, &owner.name) {
                    let selector = ss.spec.as_ref().map(|s| &s.selector);
                    requirements.extend(selector.and_then(requirements_of).into_iter().flatten());
                }
            }
            _ => {}
        }
    }
    Selector::Labels(LabelSelector {
        match_labels: (!set.is_empty()).then_some(set),
        match_expressions: (!requirements.is_empty()).then_some(requirements),
    })
}

/// One domain: how many eligible nodes carry its value and how many matching pods they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Domain {
    nodes: usize,
    pods: i64,
}

/// The domains of one constraint with their matching pod counts.
#[derive(Debug, Clone, Default)]
pub struct Domains {
    values: HashMap<String, Domain>,
    /// Matching pods → how many domains hold that many, for the global minimum.
    by_count: BTreeMap<i64, usize>,
}

impl Domains {
    fn count_in(&mut self, pods: i64) {
        *self.by_count.entry(pods).or_insert(0) += 1;
    }

    fn count_out(&mut self, pods: i64) {
        if let Some(domains) = self.by_count.get_mut(&pods) {
            *domains -= 1;
            if *domains == 0 {
                self.by_count.remove(&pods);
            }
        }
    }

    /// Counts an eligible node holding `pods` matching pods.
    fn add_node(&mut self, value: &str, pods: i64) {
        let old = self.values.get(value).copied();
        if let Some(old) = old {
            self.count_out(old.pods);
        }
        let domain = match self.values.get_mut(value) {
            Some(domain) => domain,
            None => self.values.entry(value.to_owned()).or_default(),
        };
        domain.nodes += 1;
        domain.pods += pods;
        let now = domain.pods;
        self.count_in(now);
    }

    /// Stops counting an eligible node holding `pods` matching pods.
    fn remove_node(&mut self, value: &str, pods: i64) {
        let Some(domain) = self.values.get_mut(value) else {
            return;
        };
        let before = *domain;
        domain.nodes = domain.nodes.saturating_sub(1);
        domain.pods -= pods;
        let after = *domain;
        self.count_out(before.pods);
        if after.nodes == 0 {
            self.values.remove(value);
        } else {
            self.count_in(after.pods);
        }
    }

    /// A matching pod came (`delta` 1) or went (-1) on an eligible node of the domain.
    fn add_pods(&mut self, value: &str, delta: i64) {
        let Some(domain) = self.values.get_mut(value) else {
            return;
        };
        let before = domain.pods;
        domain.pods += delta;
        let after = domain.pods;
        self.count_out(before);
        self.count_in(after);
    }

    /// Matching pods in a domain (0 for one no eligible node carries).
    pub fn pods(&self, value: &str) -> i64 {
        self.values.get(value).map_or(0, |d| d.pods)
    }

    /// How many domains there are.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there is no domain.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The fewest matching pods of any domain.
    pub fn min(&self) -> Option<i64> {
        self.by_count.keys().next().copied()
    }

    /// The global minimum `min` (as the filter took it) after domain `value` comes to hold
    /// `pods`: it moves only when `value` was the one domain at the minimum, and then to the
    /// lower of its new count and the next count any domain holds. A `min` the filter forced
    /// (0, for too few domains) stays.
    pub fn min_with(&self, value: &str, pods: i64, min: i64) -> i64 {
        let Some(domain) = self.values.get(value) else {
            return min;
        };
        let alone_at_min = self.min() == Some(min)
            && domain.pods == min
            && self.by_count.get(&min).copied() == Some(1);
        if !alone_at_min {
            return min;
        }
        let next = self.by_count.keys().nth(1).copied().unwrap_or(pods);
        pods.min(next)
    }

    /// Every domain with its matching pods.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.values.iter().map(|(v, d)| (v.as_str(), d.pods))
    }
}

/// The counts of one constraint set over the whole cluster.
#[derive(Debug, Clone)]
pub struct SpreadCounts {
    set: ConstraintSet,
    domains: Vec<Domains>,
}

impl SpreadCounts {
    /// Counts from scratch over `nodes` (those with a Node object).
    pub fn build<'n>(set: &ConstraintSet, nodes: impl Iterator<Item = &'n NodeInfo>) -> Self {
        let mut counts = Self {
            set: set.clone(),
            domains: vec![Domains::default(); set.constraints.len()],
        };
        for node in nodes {
            counts.node(node, true);
        }
        counts
    }

    /// The domains of each constraint, in the set's order.
    pub fn domains(&self) -> &[Domains] {
        &self.domains
    }

    /// Adds (or removes) a node with its pods.
    fn node(&mut self, node: &NodeInfo, add: bool) {
        let domains = self.set.domains_of(node);
        for (i, value) in domains.into_iter().enumerate() {
            let Some(value) = value else {
                continue;
            };
            let constraint = &self.set.constraints[i];
            let pods = node
                .pods
                .values()
                .filter(|p| constraint.counts(&p.pod, &self.set.namespace))
                .count() as i64;
            if add {
                self.domains[i].add_node(value, pods);
            } else {
                self.domains[i].remove_node(value, pods);
            }
        }
    }

    /// A pod came (`delta` 1) to or went (-1) from `node`.
    fn pod(&mut self, node: &NodeInfo, pod: &CachedPod, delta: i64) {
        if pod.metadata.namespace.as_deref().unwrap_or_default() != self.set.namespace
            || pod.metadata.deletion_timestamp.is_some()
        {
            return;
        }
        let counted: Vec<bool> = self
            .set
            .constraints
            .iter()
            .map(|c| c.counts(pod, &self.set.namespace))
            .collect();
        if !counted.contains(&true) {
            return;
        }
        for (i, value) in self.set.domains_of(node).into_iter().enumerate() {
            if let (Some(value), true) = (value, counted[i]) {
                self.domains[i].add_pods(value, delta);
            }
        }
    }
}

/// Counts of the constraint sets pods were recently scheduled with, kept up to date as
/// pods and nodes change (the cache calls it on every change).
#[derive(Debug, Default)]
pub struct SpreadIndex {
    entries: Vec<(SpreadCounts, u64)>,
    clock: u64,
}

impl SpreadIndex {
    /// Makes sure `set` is counted, counting `nodes` if it is new.
    pub fn prepare<'n>(&mut self, set: &ConstraintSet, nodes: impl Iterator<Item = &'n NodeInfo>) {
        self.clock += 1;
        if let Some(entry) = self.entries.iter_mut().find(|(c, _)| c.set == *set) {
            entry.1 = self.clock;
            return;
        }
        if self.entries.len() >= INDEX_CAPACITY {
            if let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(i, _)| i)
            {
                self.entries.swap_remove(oldest);
            }
        }
        self.entries
            .push((SpreadCounts::build(set, nodes), self.clock));
    }

    /// The counts of `set`, if it is kept.
    pub fn get(&self, set: &ConstraintSet) -> Option<&[Domains]> {
        self.entries
            .iter()
            .find(|(c, _)| c.set == *set)
            .map(|(c, _)| c.domains())
    }

    /// How many constraint sets are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A node (with a Node object) starts counting, with the pods it holds.
    pub fn node_added(&mut self, node: &NodeInfo) {
        for (counts, _) in &mut self.entries {
            counts.node(node, true);
        }
    }

    /// A node (as it was counted) stops counting, with the pods it holds.
    pub fn node_removed(&mut self, node: &NodeInfo) {
        for (counts, _) in &mut self.entries {
            counts.node(node, false);
        }
    }

    /// A pod was placed on `node`.
    pub fn pod_added(&mut self, node: &NodeInfo, pod: &CachedPod) {
        if node.node.is_none() {
            return;
        }
        for (counts, _) in &mut self.entries {
            counts.pod(node, pod, 1);
        }
    }

    /// A pod left `node`.
    pub fn pod_removed(&mut self, node: &NodeInfo, pod: &CachedPod) {
        if node.node.is_none() {
            return;
        }
        for (counts, _) in &mut self.entries {
            counts.pod(node, pod, -1);
        }
    }
}

fn node_label<'n>(node: &'n NodeInfo, key: &str) -> Option<&'n str> {
    node.node
        .as_ref()
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Counts kept by the index, or counted for this attempt alone.
fn counts_for<'a>(
    set: &'a ConstraintSet,
    kept: Option<&'a [Domains]>,
    nodes: impl Iterator<Item = &'a NodeInfo>,
) -> Cow<'a, [Domains]> {
    match kept {
        Some(domains) => Cow::Borrowed(domains),
        None => Cow::Owned(SpreadCounts::build(set, nodes).domains),
    }
}

/// One hard constraint as the filter checks it.
#[derive(Debug)]
struct Check {
    /// The global minimum, 0 while there are fewer domains than `minDomains`.
    min_match: i64,
    /// 1 when the incoming pod matches the selector itself.
    self_match: i64,
}

/// The spread filter for one scheduling attempt (upstream's PreFilter state).
#[derive(Debug)]
pub struct FilterState<'a> {
    set: &'a ConstraintSet,
    domains: Cow<'a, [Domains]>,
    checks: Vec<Check>,
}

impl<'a> FilterState<'a> {
    /// The filter of `pod`'s hard constraints over counts `kept` by the index (or counted
    /// now over `nodes` when the index does not keep them).
    pub fn new(
        pod: &CachedPod,
        set: &'a ConstraintSet,
        kept: Option<&'a [Domains]>,
        nodes: impl Iterator<Item = &'a NodeInfo>,
    ) -> Self {
        let domains = counts_for(set, kept, nodes);
        let checks = set
            .constraints
            .iter()
            .zip(domains.iter())
            .map(|(constraint, domains)| {
                let min = domains.min().unwrap_or(i64::from(i32::MAX));
                let too_few = (domains.len() as i64) < i64::from(constraint.min_domains);
                Check {
                    min_match: if too_few { 0 } else { min },
                    self_match: i64::from(
                        constraint.selector.matches(pod.metadata.labels.as_ref()),
                    ),
                }
            })
            .collect();
        Self {
            set,
            domains,
            checks,
        }
    }

    /// Whether `node` keeps every constraint's skew:
    /// `matching pods in its domain + self - global minimum <= maxSkew`. Pods nominated to
    /// the node count in its domain, and move the minimum when that domain was the only one
    /// holding it (upstream updates its PreFilter state with each nominated pod this way).
    pub fn check(&self, node: &NodeInfo) -> Result<(), Reason> {
        let all_keys = self
            .set
            .constraints
            .iter()
            .all(|c| node_label(node, &c.topology_key).is_some());
        for ((constraint, domains), check) in self
            .set
            .constraints
            .iter()
            .zip(self.domains.iter())
            .zip(&self.checks)
        {
            let Some(value) = node_label(node, &constraint.topology_key) else {
                return Err(Reason(REASON_MISSING_LABEL.to_owned()));
            };
            let nominated = if all_keys {
                node.nominated
                    .iter()
                    .filter(|pod| constraint.counts(pod, &self.set.namespace))
                    .count() as i64
            } else {
                0
            };
            let pods = domains.pods(value);
            let min = if nominated > 0 {
                domains.min_with(value, pods + nominated, check.min_match)
            } else {
                check.min_match
            };
            let skew = pods + nominated + check.self_match - min;
            if skew > i64::from(constraint.max_skew) {
                return Err(Reason(REASON_SKEW.to_owned()));
            }
        }
        Ok(())
    }
}

/// The spread score for one scheduling attempt (upstream's PreScore state).
#[derive(Debug)]
pub struct ScoreState<'a> {
    set: &'a ConstraintSet,
    domains: Cow<'a, [Domains]>,
}

impl<'a> ScoreState<'a> {
    /// The score of `set` over counts `kept` by the index (or counted now over `nodes`).
    pub fn new(
        set: &'a ConstraintSet,
        kept: Option<&'a [Domains]>,
        nodes: impl Iterator<Item = &'a NodeInfo>,
    ) -> Self {
        Self {
            set,
            domains: counts_for(set, kept, nodes),
        }
    }

    /// Normalized scores (0–100, fewer matching pods around is better) of the feasible
    /// nodes, in their order.
    pub fn scores(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        let constraints = &self.set.constraints;
        let has_all_keys = |node: &NodeInfo| {
            constraints
                .iter()
                .all(|c| node_label(node, &c.topology_key).is_some())
        };
        let ignored: Vec<bool> = nodes
            .iter()
            .map(|n| self.set.require_all_keys && !has_all_keys(n))
            .collect();
        let scored = ignored.iter().filter(|i| !**i).count();
        // Each constraint weighs by the log of how many domains the feasible nodes span.
        let weights: Vec<f64> = constraints
            .iter()
            .map(|c| {
                let size = if c.topology_key == HOSTNAME_KEY {
                    scored
                } else {
                    nodes
                        .iter()
                        .zip(&ignored)
                        .filter(|(_, ignored)| !**ignored)
                        .map(|(n, _)| node_label(n, &c.topology_key).unwrap_or_default())
                        .collect::<HashSet<&str>>()
                        .len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        let raw: Vec<Option<i64>> = nodes
            .iter()
            .zip(&ignored)
            .map(|(node, ignored)| {
                if *ignored {
                    return None;
                }
                let mut score = 0.0;
                for ((c, domains), weight) in
                    constraints.iter().zip(self.domains.iter()).zip(&weights)
                {
                    let Some(value) = node_label(node, &c.topology_key) else {
                        continue;
                    };
                    let count = if c.topology_key == HOSTNAME_KEY {
                        node.pods
                            .values()
                            .filter(|p| c.counts(&p.pod, &self.set.namespace))
                            .count() as i64
                    } else {
                        domains.pods(value)
                    };
                    score += count as f64 * weight + f64::from(c.max_skew - 1);
                }
                Some(score.round() as i64)
            })
            .collect();
        normalize(&raw)
    }
}

/// Upstream's NormalizeScore: the node with the fewest matching pods gets 100; ignored
/// nodes get 0.
fn normalize(raw: &[Option<i64>]) -> Vec<i64> {
    let present = raw.iter().flatten().copied();
    let min = present.clone().min().unwrap_or(0);
    let max = present.fold(0, i64::max);
    raw.iter()
        .map(|score| match score {
            None => 0,
            Some(_) if max == 0 => super::scores::MAX_SCORE,
            Some(s) => super::scores::MAX_SCORE * (max + min - s) / max,
        })
        .collect()
}

#[cfg(test)]
mod tests;
