//! The filters and scores that look at other pods: inter-pod affinity and anti-affinity
//! (`InterPodAffinity`) and topology spread constraints (`PodTopologySpread`). Both need
//! counts over the whole cluster, so they are computed once per scheduling attempt into a
//! [`Context`] (upstream's PreFilter / PreScore state) and then checked per node cheaply.
//!
//! Owns those counts and their per-node verdicts; it must not look at resources or taints.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{
    api::core::v1::{Pod, PodAffinityTerm, TopologySpreadConstraint},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{
    cache::{Cache, NodeInfo, PodInfo},
    filters::{self, Reason},
};

/// Labels of every namespace, for `namespaceSelector`.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

pub use crate::client::labels::selector_matches;

/// One affinity term, resolved: which namespaces and labels it selects, and its key.
#[derive(Debug, Clone)]
struct Term {
    selector: LabelSelector,
    /// `None`: every namespace.
    namespaces: Option<Vec<String>>,
    topology_key: String,
    weight: i64,
}

impl Term {
    fn new(
        term: &PodAffinityTerm,
        owner_namespace: &str,
        namespaces: &NamespaceLabels,
        weight: i32,
    ) -> Self {
        let listed = term.namespaces.clone().unwrap_or_default();
        let resolved = match &term.namespace_selector {
            None if listed.is_empty() => Some(vec![owner_namespace.to_owned()]),
            None => Some(listed),
            Some(selector)
                if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && selector
                        .match_expressions
                        .as_ref()
                        .is_none_or(|m| m.is_empty()) =>
            {
                None
            }
            Some(selector) => {
                let mut chosen: Vec<String> = namespaces
                    .iter()
                    .filter(|(_, labels)| selector_matches(selector, Some(labels)))
                    .map(|(name, _)| name.clone())
                    .collect();
                chosen.extend(listed);
                Some(chosen)
            }
        };
        Self {
            // A term without a selector selects no pods (upstream treats nil as nothing).
            selector: term.label_selector.clone().unwrap_or(LabelSelector {
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "\u{0}never".to_owned(),
                        operator: "Exists".to_owned(),
                        values: None,
                    },
                ]),
                ..LabelSelector::default()
            }),
            namespaces: resolved,
            topology_key: term.topology_key.clone(),
            weight: i64::from(weight),
        }
    }

    fn matches(&self, pod: &Pod) -> bool {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        self.namespaces
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == namespace))
            && selector_matches(&self.selector, pod.metadata.labels.as_ref())
    }
}

fn node_label<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a str> {
    node.node
        .as_ref()
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Counts per (topology key, value).
/// Topology key → domain value → count (grouped by key so that a node is checked with one
/// lookup per key, not one per domain).
#[derive(Debug, Default)]
struct DomainCounts(HashMap<String, HashMap<String, i64>>);

impl DomainCounts {
    fn add(&mut self, key: &str, value: &str, amount: i64) {
        let values = match self.0.get_mut(key) {
            Some(values) => values,
            None => self.0.entry(key.to_owned()).or_default(),
        };
        match values.get_mut(value) {
            Some(count) => *count += amount,
            None => {
                values.insert(value.to_owned(), amount);
            }
        }
    }

    /// The sum over the node's domains.
    fn on(&self, node: &NodeInfo) -> i64 {
        self.0
            .iter()
            .filter_map(|(key, values)| values.get(node_label(node, key)?))
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One topology spread constraint with its per-domain counts.
#[derive(Debug)]
struct Spread {
    constraint: TopologySpreadConstraint,
    counts: HashMap<String, i64>,
    /// Whether the incoming pod matches its own selector (it counts once placed).
    self_match: i64,
}

/// Everything the pod-aware filters and scores need for one pod.
#[derive(Debug, Default)]
pub struct Context {
    required_affinity: Vec<Term>,
    affinity_counts: Vec<HashMap<String, i64>>,
    /// Whether some pod anywhere matches all required affinity terms.
    affinity_anywhere: bool,
    self_matches_affinity: bool,
    required_anti: Vec<Term>,
    anti_counts: Vec<HashMap<String, i64>>,
    /// Domains where an existing pod's required anti-affinity rejects the incoming pod.
    existing_anti: DomainCounts,
    /// Preferred (anti-)affinity weights per domain, both directions.
    preferred: DomainCounts,
    spread_filter: Vec<Spread>,
    spread_score: Vec<Spread>,
}

fn required_terms(pod: &Pod, namespaces: &NamespaceLabels) -> (Vec<Term>, Vec<Term>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let resolve = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
        terms
            .into_iter()
            .flatten()
            .map(|t| Term::new(t, namespace, namespaces, 1))
            .collect()
    };
    (
        resolve(
            affinity
                .and_then(|a| a.pod_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
        ),
        resolve(
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
        ),
    )
}

/// Preferred terms with signed weights (affinity positive, anti-affinity negative).
fn preferred_terms(pod: &Pod, namespaces: &NamespaceLabels) -> Vec<Term> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let attracting = affinity
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .map(|t| (t, 1));
    let repelling = affinity
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .map(|t| (t, -1));
    attracting
        .chain(repelling)
        .map(|(term, sign)| {
            Term::new(
                &term.pod_affinity_term,
                namespace,
                namespaces,
                sign * term.weight,
            )
        })
        .collect()
}

/// Whether a pod has pod affinity or anti-affinity terms (its own, which other pods must
/// respect too).
pub fn has_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

impl Context {
    /// Computes the counts for `pod` over the cluster in `cache`.
    pub fn new(pod: &PodInfo, cache: &Cache, namespaces: &NamespaceLabels) -> Self {
        let mut context = Self::default();
        let (affinity, anti) = required_terms(&pod.pod, namespaces);
        let preferred = preferred_terms(&pod.pod, namespaces);
        let (spread_filter, spread_score) = spread_constraints(&pod.pod);
        context.self_matches_affinity =
            !affinity.is_empty() && affinity.iter().all(|t| t.matches(&pod.pod));
        context.affinity_counts = vec![HashMap::new(); affinity.len()];
        context.anti_counts = vec![HashMap::new(); anti.len()];
        let namespace = pod.pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut spreads: Vec<Spread> =
            spread_filter
                .into_iter()
                .chain(spread_score.iter().cloned())
                .map(|constraint| {
                    let self_match =
                        i64::from(constraint.label_selector.as_ref().is_some_and(|s| {
                            selector_matches(s, pod.pod.metadata.labels.as_ref())
                        }));
                    Spread {
                        constraint,
                        counts: HashMap::new(),
                        self_match,
                    }
                })
                .collect();
        let any_pod_work = !affinity.is_empty()
            || !anti.is_empty()
            || !preferred.is_empty()
            || !spreads.is_empty();
        if !any_pod_work && cache.pods_with_affinity() == 0 {
            // Nothing to count: no terms of its own, and no placed pod has terms about others.
            return context;
        }
        let mut affinity_anywhere = false;
        for node in cache.nodes() {
            // Topology spread counts only nodes the pod could go to by affinity/selector.
            let eligible = !spreads.is_empty() && filters::node_affinity(&pod.pod, node).is_ok();
            if eligible {
                for spread in &mut spreads {
                    if let Some(value) = node_label(node, &spread.constraint.topology_key) {
                        if !spread.counts.contains_key(value) {
                            spread.counts.insert(value.to_owned(), 0);
                        }
                    }
                }
            }
            if !any_pod_work && node.pods_with_affinity == 0 {
                continue;
            }
            // The pod being scheduled is pending, so it is on no node: no self-check needed.
            for other in node.pods.values() {
                let other_pod = &other.pod;
                if any_pod_work {
                    if !affinity.is_empty() && affinity.iter().all(|t| t.matches(other_pod)) {
                        affinity_anywhere = true;
                    }
                    for (i, term) in affinity.iter().enumerate() {
                        if term.matches(other_pod) {
                            if let Some(value) = node_label(node, &term.topology_key) {
                                *context.affinity_counts[i]
                                    .entry(value.to_owned())
                                    .or_insert(0) += 1;
                            }
                        }
                    }
                    for (i, term) in anti.iter().enumerate() {
                        if term.matches(other_pod) {
                            if let Some(value) = node_label(node, &term.topology_key) {
                                *context.anti_counts[i].entry(value.to_owned()).or_insert(0) += 1;
                            }
                        }
                    }
                    for term in &preferred {
                        if term.matches(other_pod) {
                            if let Some(value) = node_label(node, &term.topology_key) {
                                context
                                    .preferred
                                    .add(&term.topology_key, value, term.weight);
                            }
                        }
                    }
                    if eligible {
                        for spread in &mut spreads {
                            let same_ns =
                                other_pod.metadata.namespace.as_deref() == Some(namespace);
                            let selected =
                                spread.constraint.label_selector.as_ref().is_some_and(|s| {
                                    selector_matches(s, other_pod.metadata.labels.as_ref())
                                });
                            let terminating = other_pod.metadata.deletion_timestamp.is_some();
                            if same_ns && selected && !terminating {
                                if let Some(value) =
                                    node_label(node, &spread.constraint.topology_key)
                                {
                                    match spread.counts.get_mut(value) {
                                        Some(count) => *count += 1,
                                        None => {
                                            spread.counts.insert(value.to_owned(), 1);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                // Symmetry: existing pods' own terms about the incoming pod.
                if has_pod_affinity(other_pod) {
                    let (_, their_anti) = required_terms(other_pod, namespaces);
                    for term in their_anti {
                        if term.matches(&pod.pod) {
                            if let Some(value) = node_label(node, &term.topology_key) {
                                context.existing_anti.add(&term.topology_key, value, 1);
                            }
                        }
                    }
                    for term in preferred_terms(other_pod, namespaces) {
                        if term.matches(&pod.pod) {
                            if let Some(value) = node_label(node, &term.topology_key) {
                                context
                                    .preferred
                                    .add(&term.topology_key, value, term.weight);
                            }
                        }
                    }
                }
            }
        }
        context.affinity_anywhere = affinity_anywhere;
        context.required_affinity = affinity;
        context.required_anti = anti;
        let filter_count = spreads.len() - spread_score.len();
        let score_spreads = spreads.split_off(filter_count);
        context.spread_filter = spreads;
        context.spread_score = score_spreads;
        context
    }

    /// `InterPodAffinity` and `PodTopologySpread` filters for one node.
    pub fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        if self.existing_anti.on(node) > 0 {
            return Err(Reason(
                "node(s) didn't satisfy existing pods anti-affinity rules".to_owned(),
            ));
        }
        for (i, term) in self.required_anti.iter().enumerate() {
            if let Some(value) = node_label(node, &term.topology_key) {
                if self.anti_counts[i].get(value).copied().unwrap_or(0) > 0 {
                    return Err(Reason(
                        "node(s) didn't match pod anti-affinity rules".to_owned(),
                    ));
                }
            }
        }
        if !self.required_affinity.is_empty() {
            let fail = || Err(Reason("node(s) didn't match pod affinity rules".to_owned()));
            // The first pod of a group that selects itself may go anywhere with the keys.
            let bootstrap = !self.affinity_anywhere && self.self_matches_affinity;
            for (i, term) in self.required_affinity.iter().enumerate() {
                let Some(value) = node_label(node, &term.topology_key) else {
                    return fail();
                };
                if !bootstrap && self.affinity_counts[i].get(value).copied().unwrap_or(0) == 0 {
                    return fail();
                }
            }
        }
        for spread in &self.spread_filter {
            let Some(value) = node_label(node, &spread.constraint.topology_key) else {
                return Err(Reason(
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .to_owned(),
                ));
            };
            let min_domains = spread.constraint.min_domains.unwrap_or(1).max(1) as usize;
            let global_min = if spread.counts.len() < min_domains {
                0
            } else {
                spread.counts.values().copied().min().unwrap_or(0)
            };
            let here = spread.counts.get(value).copied().unwrap_or(0);
            let skew = here + spread.self_match - global_min;
            if skew > i64::from(spread.constraint.max_skew) {
                return Err(Reason(
                    "node(s) didn't match pod topology spread constraints".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The raw preferred inter-pod affinity score of a node (normalized by the caller).
    pub fn affinity_score(&self, node: &NodeInfo) -> i64 {
        self.preferred.on(node)
    }

    /// The raw topology spread score of a node: matching pods in its domains, weighted by
    /// how many domains each constraint has (lower is better; `None` when the node lacks a
    /// constraint's key).
    pub fn spread_score(&self, node: &NodeInfo) -> Option<f64> {
        let mut total = 0.0;
        for spread in &self.spread_score {
            let value = node_label(node, &spread.constraint.topology_key)?;
            let weight = ((spread.counts.len() + 2) as f64).ln();
            let count = spread.counts.get(value).copied().unwrap_or(0) as f64;
            total += (count + f64::from(spread.constraint.max_skew - 1)) * weight;
        }
        Some(total)
    }

    /// Whether any spread constraint scores nodes.
    pub fn scores_spread(&self) -> bool {
        !self.spread_score.is_empty()
    }

    /// Whether preferred pod affinity scores nodes.
    pub fn scores_affinity(&self) -> bool {
        !self.preferred.is_empty()
    }
}

/// The pod's constraints, split into hard (DoNotSchedule) and soft (ScheduleAnyway).
fn spread_constraints(pod: &Pod) -> (Vec<TopologySpreadConstraint>, Vec<TopologySpreadConstraint>) {
    let all = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.clone())
        .unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let all: Vec<TopologySpreadConstraint> = all
        .into_iter()
        .map(|mut c| {
            // matchLabelKeys: the pod's values for those keys join the selector.
            for key in c.match_label_keys.clone().into_iter().flatten() {
                if let Some(value) = labels.get(&key) {
                    let selector = c.label_selector.get_or_insert_with(LabelSelector::default);
                    selector
                        .match_labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, value.clone());
                }
            }
            c
        })
        .collect();
    all.into_iter()
        .partition(|c| c.when_unsatisfiable == "DoNotSchedule")
}
