//! The filters and scores that look at other pods: inter-pod affinity and anti-affinity
//! (`InterPodAffinity`), and topology spread constraints (`PodTopologySpread`, whose counts
//! [`spread`](super::spread) keeps). Both need counts over the whole cluster, so a
//! scheduling attempt gathers them once into a [`Context`] (upstream's PreFilter / PreScore
//! state) and then checks each node cheaply.
//!
//! Owns the inter-pod affinity counts and both per-node verdicts; it must not look at
//! resources or taints.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{
    api::core::v1::PodAffinityTerm, apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{
    cache::{Cache, NodeInfo, PodInfo},
    filters::Reason,
    spread::{FilterState, PodSpread, ScoreState},
};
use crate::client::CachedPod;

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

    fn matches(&self, pod: &CachedPod) -> bool {
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

/// Everything the pod-aware filters and scores need for one pod; it borrows the cache's
/// spread counts and the pod's resolved constraints.
#[derive(Debug, Default)]
pub struct Context<'a> {
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
    spread_filter: Option<FilterState<'a>>,
    spread_score: Option<ScoreState<'a>>,
}

fn required_terms(pod: &CachedPod, namespaces: &NamespaceLabels) -> (Vec<Term>, Vec<Term>) {
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
fn preferred_terms(pod: &CachedPod, namespaces: &NamespaceLabels) -> Vec<Term> {
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
pub fn has_pod_affinity(pod: &CachedPod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

impl<'a> Context<'a> {
    /// Computes the counts for `pod` over the cluster in `cache`; `spread` holds the pod's
    /// topology spread constraints, whose counts the cache keeps when they were prepared
    /// ([`Cache::prepare_spread`]) and are counted here otherwise.
    pub fn new(
        pod: &PodInfo,
        cache: &'a Cache,
        namespaces: &NamespaceLabels,
        spread: &'a PodSpread,
    ) -> Self {
        let mut context = Self {
            spread_filter: spread.hard.as_ref().map(|set| {
                FilterState::new(&pod.pod, set, cache.spread_domains(set), cache.nodes())
            }),
            spread_score: spread
                .soft
                .as_ref()
                .map(|set| ScoreState::new(set, cache.spread_domains(set), cache.nodes())),
            ..Self::default()
        };
        let (affinity, anti) = required_terms(&pod.pod, namespaces);
        let preferred = preferred_terms(&pod.pod, namespaces);
        context.self_matches_affinity =
            !affinity.is_empty() && affinity.iter().all(|t| t.matches(&pod.pod));
        context.affinity_counts = vec![HashMap::new(); affinity.len()];
        context.anti_counts = vec![HashMap::new(); anti.len()];
        let own_terms = !affinity.is_empty() || !anti.is_empty() || !preferred.is_empty();
        if !own_terms && cache.pods_with_affinity() == 0 {
            // Nothing to count: no terms of its own, and no placed pod has terms about others.
            return context;
        }
        let mut affinity_anywhere = false;
        for node in cache.nodes() {
            if !own_terms && node.pods_with_affinity == 0 {
                continue;
            }
            // The pod being scheduled is pending, so it is on no node: no self-check needed.
            for other in node.pods.values() {
                let other_pod = &other.pod;
                if own_terms {
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
        context
    }

    /// `InterPodAffinity` and `PodTopologySpread` filters for one node.
    pub fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        // Upstream's plugin order: PodTopologySpread before InterPodAffinity.
        if let Some(spread) = &self.spread_filter {
            spread.check(node)?;
        }
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
        Ok(())
    }

    /// The raw preferred inter-pod affinity score of a node (normalized by the caller).
    pub fn affinity_score(&self, node: &NodeInfo) -> i64 {
        self.preferred.on(node)
    }

    /// Normalized topology spread scores of the feasible nodes, in their order; `None`
    /// when no constraint scores (upstream's PreScore skip).
    pub fn spread_scores(&self, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
        self.spread_score.as_ref().map(|s| s.scores(nodes))
    }

    /// Whether preferred pod affinity scores nodes.
    pub fn scores_affinity(&self) -> bool {
        !self.preferred.is_empty()
    }
}
