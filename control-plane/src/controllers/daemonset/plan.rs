//! The DaemonSet controller's decisions, as plain functions (upstream's `daemon_controller.go`
//! `podsShouldBeOnNode`, `NodeShouldRunDaemonPod`, `update.go` and `updateDaemonSetStatus`):
//! which nodes should run a daemon pod, the pod for a node, which pods to create and delete,
//! which old pods a rolling update replaces now, and the status.
//!
//! Owns these decisions; it must not do I/O.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetStatus},
        core::v1::{
            Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            Pod, PodSpec, Toleration,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::client::{cached_pod::CachedPodSpec, CachedPod};
use crate::{
    controllers::{deployment::rollout::scaled_value, pods},
    scheduler::{cache::NodeInfo, filters},
};

/// The pod label with the DaemonSet's generation when the pod was made (deprecated upstream,
/// still written).
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// Tolerations every daemon pod gets, so node problems neither keep it off nor evict it.
fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    let mut list = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        list.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    list
}

/// Adds the default tolerations a pod spec lacks.
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network.unwrap_or(false);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for wanted in default_tolerations(host_network) {
        let present = tolerations.iter().any(|t| {
            t.key == wanted.key && t.operator == wanted.operator && t.effect == wanted.effect
        });
        if !present {
            tolerations.push(wanted);
        }
    }
}

/// Whether the DaemonSet should run a pod on the node, and whether a pod already there may
/// keep running (it tolerates the node's NoExecute taints), as upstream's
/// `NodeShouldRunDaemonPod`: nodeName, nodeSelector and required node affinity decide both;
/// NoSchedule taints keep new pods off only.
pub fn node_should_run(node: &Arc<Node>, ds: &DaemonSet) -> (bool, bool) {
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    let template = ds.spec.as_ref().map(|s| &s.template);
    let spec = template.and_then(|t| t.spec.as_ref());
    if spec
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    // What the two filters below read of the daemon pod, and no more: its node selector,
    // node affinity and tolerations (with the defaults every daemon pod gets).
    let mut placement = PodSpec {
        host_network: spec.and_then(|s| s.host_network),
        node_selector: spec.and_then(|s| s.node_selector.clone()),
        affinity: spec.and_then(|s| s.affinity.clone()),
        tolerations: spec.and_then(|s| s.tolerations.clone()),
        ..PodSpec::default()
    };
    add_default_tolerations(&mut placement);
    let pod = CachedPod {
        spec: Some(CachedPodSpec {
            host_network: placement.host_network,
            node_selector: placement.node_selector,
            affinity: placement.affinity.map(Box::new),
            tolerations: placement.tolerations,
            ..CachedPodSpec::default()
        }),
        ..CachedPod::default()
    };
    let info = NodeInfo::for_filters(node.clone());
    if filters::node_affinity(&pod, &info).is_err() {
        return (false, false);
    }
    if filters::taint_toleration(&pod, &info).is_ok() {
        return (true, true);
    }
    let tolerations = filters::tolerations(&pod);
    let evicted = filters::taints(&info)
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .any(|taint| !tolerations.iter().any(|t| filters::tolerates(t, taint)));
    (false, !evicted)
}

/// The node a daemon pod is for: its `spec.nodeName`, or the single node its required
/// affinity names by `metadata.name`.
pub fn target_node(pod: &CachedPod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(name.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|term| {
        term.match_fields.iter().flatten().find_map(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            (r.key == "metadata.name" && r.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        })
    })
}

/// Pins a pod to one node the way the scheduler understands: a required node affinity term
/// on `metadata.name` replaces the template's terms (upstream's
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`).
fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![node.to_owned()]),
        }]),
        match_expressions: None,
    };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    affinity
}

/// The daemon pod for a node (created with `generateName: <ds>-`).
pub fn pod_for_node(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(
        super::super::history::POD_REVISION_LABEL.to_owned(),
        hash.to_owned(),
    );
    if let Some(generation) = ds.metadata.generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.to_owned(), generation.to_string());
    }
    let mut spec = template.spec.unwrap_or_default();
    add_default_tolerations(&mut spec);
    spec.affinity = Some(pin_to_node(spec.affinity.take(), node));
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![pods::controller_reference(ds)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Daemon pods by the node they are for (pods finished and being deleted are gone already).
pub fn pods_by_node(pods: &[Arc<CachedPod>]) -> BTreeMap<String, Vec<Arc<CachedPod>>> {
    let mut by_node: BTreeMap<String, Vec<Arc<CachedPod>>> = BTreeMap::new();
    for pod in pods {
        if pods::is_terminal(pod) && pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod.clone());
        }
    }
    for list in by_node.values_mut() {
        list.sort_by(|a, b| oldest_first(a, b));
    }
    by_node
}

/// Creation order, running before others among equals.
fn oldest_first(a: &CachedPod, b: &CachedPod) -> std::cmp::Ordering {
    let created = |p: &CachedPod| {
        p.metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    };
    created(a)
        .cmp(&created(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// What the manage loop does: nodes that need a pod, and pods to delete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// Nodes to create a daemon pod on.
    pub create_on: Vec<String>,
    /// Pods (by name) to delete.
    pub delete: Vec<String>,
}

/// Compares every node's daemon pods with what should run there (upstream's
/// `podsShouldBeOnNode` and `getUnscheduledPodsWithoutNode`): a missing pod is created, a
/// failed or finished one is replaced, extra ones and those on nodes where the DaemonSet may
/// no longer run are deleted, and unscheduled pods for nodes that no longer exist go too.
/// Without surge the extra pods are all but the oldest; with surge a node keeps its oldest
/// current pod and its oldest old pod, the old one only while it is Ready and the current one
/// is not yet available — and a node whose pods are all terminating gets its new pod at once.
pub fn plan_nodes(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<CachedPod>>>,
    hash: &str,
    now: i64,
) -> NodePlan {
    let surging = allows_surge(ds);
    let mut plan = NodePlan::default();
    let name = |p: &CachedPod| p.metadata.name.clone().unwrap_or_default();
    for node in nodes {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let (should_run, should_continue) = node_should_run(node, ds);
        let daemon_pods = by_node.get(&node_name);
        match daemon_pods {
            None if should_run => plan.create_on.push(node_name),
            Some(list) if should_continue => {
                let mut running = Vec::new();
                for pod in list {
                    if pod.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    if pods::is_terminal(pod) {
                        plan.delete.push(name(pod));
                    } else {
                        running.push(pod);
                    }
                }
                if !surging {
                    // Pods are sorted oldest first: the oldest stays.
                    plan.delete.extend(running.iter().skip(1).map(|p| name(p)));
                } else if running.is_empty() {
                    if should_run {
                        plan.create_on.push(node_name);
                    }
                } else {
                    plan.delete.extend(
                        surge_excess(ds, &running, hash, now)
                            .iter()
                            .map(|p| name(p)),
                    );
                }
            }
            Some(list) if !should_continue => plan.delete.extend(
                list.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| name(p)),
            ),
            _ => {}
        }
    }
    let known: HashMap<&str, ()> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref().map(|name| (name, ())))
        .collect();
    for (node, list) in by_node {
        if known.contains_key(node.as_str()) {
            continue;
        }
        plan.delete.extend(
            list.iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_deref())
                            .is_none_or(str::is_empty)
                })
                .map(|p| name(p)),
        );
    }
    plan
}

/// The pods to delete among a node's running pods (oldest first) when surging: all but the
/// oldest current and the oldest old pod, and the old one too once it is not Ready or the
/// current one is available.
fn surge_excess<'a>(
    ds: &DaemonSet,
    running: &[&'a Arc<CachedPod>],
    hash: &str,
    now: i64,
) -> Vec<&'a Arc<CachedPod>> {
    let mut excess = Vec::new();
    let mut oldest_new = None;
    let mut oldest_old = None;
    for pod in running {
        let slot = if revision_of(pod) == Some(hash) {
            &mut oldest_new
        } else {
            &mut oldest_old
        };
        match slot {
            None => *slot = Some(*pod),
            Some(_) => excess.push(*pod),
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
        if !pods::is_ready(old) || pods::is_available(new, min_ready(ds), now) {
            excess.push(old);
        }
    }
    excess
}

/// The pod's `controller-revision-hash` label.
fn revision_of(pod: &CachedPod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(super::super::history::POD_REVISION_LABEL)
        .map(String::as_str)
}

/// Whether a pod runs the current template.
pub fn is_updated(pod: &CachedPod, hash: &str, generation: Option<i64>) -> bool {
    let label = |key: &str| {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    };
    (!hash.is_empty() && label(super::super::history::POD_REVISION_LABEL) == Some(hash))
        || generation
            .is_some_and(|g| label(TEMPLATE_GENERATION_LABEL) == Some(g.to_string().as_str()))
}

fn min_ready(ds: &DaemonSet) -> i32 {
    ds.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// How many nodes should run the DaemonSet.
pub fn desired_count(ds: &DaemonSet, nodes: &[Arc<Node>]) -> i32 {
    nodes.iter().filter(|n| node_should_run(n, ds).0).count() as i32
}

/// maxUnavailable for `desired` nodes (percentages round up; zero with no surge becomes one).
pub fn max_unavailable(ds: &DaemonSet, desired: i32) -> i32 {
    let rolling = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref());
    let one = IntOrString::Int(1);
    let zero = IntOrString::Int(0);
    let unavailable = scaled_value(
        rolling
            .and_then(|r| r.max_unavailable.as_ref())
            .unwrap_or(&one),
        desired,
        true,
    )
    .unwrap_or(1);
    let surge = scaled_value(
        rolling.and_then(|r| r.max_surge.as_ref()).unwrap_or(&zero),
        desired,
        true,
    )
    .unwrap_or(0);
    if desired > 0 && unavailable == 0 && surge == 0 {
        1
    } else {
        unavailable
    }
}

/// maxSurge for `desired` nodes (percentages round up); 0 unless the strategy is
/// RollingUpdate.
pub fn max_surge(ds: &DaemonSet, desired: i32) -> i32 {
    if !is_rolling(ds) {
        return 0;
    }
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_surge.as_ref())
        .and_then(|surge| scaled_value(surge, desired, true))
        .unwrap_or(0)
        .max(0)
}

/// Whether a node may run two pods (an old and a new one) during an update: maxSurge is not
/// zero (upstream's `AllowsSurge`).
pub fn allows_surge(ds: &DaemonSet) -> bool {
    max_surge(ds, 1) > 0
}

/// Whether the update strategy is RollingUpdate (the default) rather than OnDelete.
pub fn is_rolling(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t != "OnDelete")
}

/// A node's live current pod and live old pod, each if there is one.
type CurrentAndOld<'a> = (Option<&'a Arc<CachedPod>>, Option<&'a Arc<CachedPod>>);

/// A node's live pods as (current, old), at most one of each; `None` when it has more (the
/// manage loop prunes the extras).
fn current_and_old<'a>(
    list: &'a [Arc<CachedPod>],
    hash: &str,
    generation: Option<i64>,
) -> Option<CurrentAndOld<'a>> {
    let (mut new, mut old) = (None, None);
    for pod in list
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_updated(pod, hash, generation) {
            &mut new
        } else {
            &mut old
        };
        if slot.replace(pod).is_some() {
            return None;
        }
    }
    Some((new, old))
}

/// The old pods a rolling update without surge deletes now (upstream's `rollingUpdate` with
/// maxSurge 0): unavailable old pods always, available ones only while fewer than
/// maxUnavailable nodes are unavailable; the manage loop then creates their replacements.
pub fn rolling_deletions(
    ds: &DaemonSet,
    by_node: &BTreeMap<String, Vec<Arc<CachedPod>>>,
    hash: &str,
    max_unavailable: i32,
    now: i64,
) -> Vec<String> {
    let generation = ds.metadata.generation;
    let mut unavailable = 0;
    let mut replace_now = Vec::new();
    let mut candidates = Vec::new();
    for list in by_node.values() {
        // At most one current and one old pod per node; anything else is the manage loop's
        // to sort out and counts as unavailable meanwhile.
        match current_and_old(list, hash, generation) {
            None | Some((None, None) | (Some(_), Some(_))) => unavailable += 1,
            Some((Some(new), None)) => {
                if !pods::is_available(new, min_ready(ds), now) {
                    unavailable += 1;
                }
            }
            Some((None, Some(old))) => {
                let name = old.metadata.name.clone().unwrap_or_default();
                if !pods::is_available(old, min_ready(ds), now) {
                    replace_now.push(name);
                } else if unavailable < max_unavailable {
                    candidates.push(name);
                }
            }
        }
    }
    let room = (max_unavailable - unavailable).max(0) as usize;
    replace_now.extend(candidates.into_iter().take(room));
    replace_now
}

/// A rolling update with maxSurge (upstream's `rollingUpdate` when surging), as a [`NodePlan`]
/// of nodes that get their new pod beside the old one and old pods to delete: a node whose old
/// pod is unavailable gets its new pod at once; other nodes get theirs while fewer than
/// `max_surge` nodes have a new pod that is not yet available; an old pod goes once the new
/// one on its node is available. Old pods on nodes the DaemonSet no longer fits go only as
/// pods elsewhere become available beyond `desired`, so availability never drops.
pub fn surge_update(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<CachedPod>>>,
    hash: &str,
    max_surge: i32,
    desired: i32,
    now: i64,
) -> NodePlan {
    let generation = ds.metadata.generation;
    let min_ready = min_ready(ds);
    let known: HashMap<&str, &Arc<Node>> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref().map(|name| (name, n)))
        .collect();
    let mut plan = NodePlan::default();
    let mut unfit_old = Vec::new();
    let mut candidates = Vec::new();
    let mut surging = 0;
    let mut available = 0;
    for (node_name, list) in by_node {
        // Nodes that are gone are the manage loop's to clean up.
        let Some(node) = known.get(node_name.as_str()) else {
            continue;
        };
        let Some((new, old)) = current_and_old(list, hash, generation) else {
            // Excess pods: the manage loop prunes them; the node counts as surging.
            surging += 1;
            continue;
        };
        let counted = old.or(new);
        if counted.is_some_and(|p| pods::is_available(p, min_ready, now)) {
            available += 1;
        }
        let Some(old) = old else {
            continue;
        };
        let old_name = old.metadata.name.clone().unwrap_or_default();
        match new {
            None => {
                let fits = node_should_run(node, ds).0;
                if !pods::is_available(old, min_ready, now) {
                    if fits {
                        plan.create_on.push(node_name.clone());
                    } else {
                        plan.delete.push(old_name);
                    }
                } else if !fits {
                    unfit_old.push(old_name);
                } else if surging < max_surge {
                    candidates.push(node_name.clone());
                }
            }
            Some(new) => {
                if pods::is_available(new, min_ready, now) {
                    plan.delete.push(old_name);
                } else {
                    surging += 1;
                }
            }
        }
    }
    let spare = (available - desired).max(0) as usize;
    plan.delete.extend(unfit_old.into_iter().take(spare));
    let room = (max_surge - surging).max(0) as usize;
    plan.create_on.extend(candidates.into_iter().take(room));
    plan
}

/// Seconds until the first Ready pod that is not yet available becomes available (it has been
/// Ready for minReadySeconds), if any.
pub fn next_available(ds: &DaemonSet, pods: &[Arc<CachedPod>], now: i64) -> Option<i64> {
    let min_ready = i64::from(min_ready(ds));
    if min_ready <= 0 {
        return None;
    }
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| pods::ready_since(p))
        .map(|since| since + min_ready - now)
        .filter(|left| *left > 0)
        .min()
}

/// The status the nodes and pods add up to.
pub fn status(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<CachedPod>>>,
    hash: &str,
    now: i64,
) -> DaemonSetStatus {
    let mut desired = 0;
    let mut current = 0;
    let mut misscheduled = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    for node in nodes {
        let node_name = node.metadata.name.as_deref().unwrap_or_default();
        let (should_run, _) = node_should_run(node, ds);
        let first = by_node.get(node_name).and_then(|list| list.first());
        if !should_run {
            if first.is_some() {
                misscheduled += 1;
            }
            continue;
        }
        desired += 1;
        let Some(pod) = first else {
            continue;
        };
        current += 1;
        if pods::is_ready(pod) {
            ready += 1;
            if pods::is_available(pod, min_ready(ds), now) {
                available += 1;
            }
        }
        if is_updated(pod, hash, ds.metadata.generation) {
            updated += 1;
        }
    }
    DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

#[cfg(test)]
mod tests;
