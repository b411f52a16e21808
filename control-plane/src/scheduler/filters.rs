//! Filters: whether a pod may run on a node, one function per kube-scheduler filter plugin,
//! each answering with upstream's reason text when it may not (those texts reach users in
//! `FailedScheduling` events and the pod's `PodScheduled` condition).
//!
//! Owns the yes/no of placement for one (pod, node) pair; it must not score or write.
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

use super::{
    affinity,
    cache::{NodeInfo, PodInfo},
};
use crate::client::CachedPod;

/// Why a node does not fit; equal reasons are counted together in the summary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason(pub String);

/// Runs every filter; the first failure is the node's reason.
pub fn run_all(
    pod: &PodInfo,
    node: &NodeInfo,
    context: &affinity::Context<'_>,
) -> Result<(), Reason> {
    node_unschedulable(&pod.pod, node)?;
    node_name(&pod.pod, node)?;
    node_affinity(&pod.pod, node)?;
    taint_toleration(&pod.pod, node)?;
    node_ports(pod, node)?;
    resources_fit(pod, node)?;
    context.filter(pod, node)?;
    Ok(())
}

fn reason(text: impl Into<String>) -> Reason {
    Reason(text.into())
}

/// `NodeUnschedulable`: cordoned nodes take only pods that tolerate it.
pub fn node_unschedulable(pod: &CachedPod, node: &NodeInfo) -> Result<(), Reason> {
    if !node.unschedulable {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".to_owned(),
        effect: "NoSchedule".to_owned(),
        ..Taint::default()
    };
    if tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
        Ok(())
    } else {
        Err(reason("node(s) were unschedulable"))
    }
}

/// `NodeName`: a pod that names a node fits only there.
pub fn node_name(pod: &CachedPod, node: &NodeInfo) -> Result<(), Reason> {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(wanted) if !wanted.is_empty() && wanted != node.name() => {
            Err(reason("node(s) didn't match the requested node name"))
        }
        _ => Ok(()),
    }
}

/// `NodeAffinity`: `nodeSelector` and required node affinity.
pub fn node_affinity(pod: &CachedPod, node: &NodeInfo) -> Result<(), Reason> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let label = |key: &str| {
        node.node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(key))
            .map(String::as_str)
    };
    let fail = || Err(reason("node(s) didn't match Pod's node affinity/selector"));
    for (key, value) in spec.node_selector.iter().flatten() {
        if label(key) != Some(value.as_str()) {
            return fail();
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        if !required
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node))
        {
            return fail();
        }
    }
    Ok(())
}

/// Whether a node selector term matches the node (its expressions and fields all hold; a
/// term with neither matches nothing).
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.node.as_ref().and_then(|n| n.metadata.labels.as_ref());
    expressions
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then(|| node.name());
            requirement_matches(r, value)
        })
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// The pod's tolerations.
pub fn tolerations(pod: &CachedPod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// Whether a toleration tolerates a taint (core/v1 `Toleration.ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or_default();
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if !effect_ok {
        return false;
    }
    if key.is_empty() {
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The node's taints.
pub fn taints(node: &NodeInfo) -> &[Taint] {
    &node.taints
}

/// `TaintToleration`: every NoSchedule and NoExecute taint must be tolerated.
pub fn taint_toleration(pod: &CachedPod, node: &NodeInfo) -> Result<(), Reason> {
    let tolerations = tolerations(pod);
    for taint in taints(node) {
        if !matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            let value = taint.value.as_deref().unwrap_or_default();
            return Err(reason(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key, value
            )));
        }
    }
    Ok(())
}

/// `NodePorts`: host ports must be free (a wildcard host IP conflicts with every IP).
pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    for (protocol, ip, port) in &pod.host_ports {
        let taken = node.used_ports.keys().any(|(p, i, n)| {
            n == port && p == protocol && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
        });
        if taken {
            return Err(reason(
                "node(s) didn't have free ports for the requested pod ports",
            ));
        }
    }
    Ok(())
}

/// `NodeResourcesFit`: the pod count and every requested resource must fit.
pub fn resources_fit(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        return Err(reason("Too many pods"));
    }
    let wanted = &pod.requests;
    let free = |allocatable: i64, requested: i64| allocatable.saturating_sub(requested);
    if wanted.milli_cpu > 0
        && wanted.milli_cpu > free(node.allocatable.milli_cpu, node.requested.milli_cpu)
    {
        return Err(reason("Insufficient cpu"));
    }
    if wanted.memory > 0 && wanted.memory > free(node.allocatable.memory, node.requested.memory) {
        return Err(reason("Insufficient memory"));
    }
    if wanted.ephemeral_storage > 0
        && wanted.ephemeral_storage
            > free(
                node.allocatable.ephemeral_storage,
                node.requested.ephemeral_storage,
            )
    {
        return Err(reason("Insufficient ephemeral-storage"));
    }
    for (name, amount) in &wanted.scalar {
        let allocatable = node.allocatable.scalar.get(name).copied().unwrap_or(0);
        let requested = node.requested.scalar.get(name).copied().unwrap_or(0);
        if *amount > 0 && *amount > free(allocatable, requested) {
            return Err(reason(format!("Insufficient {name}")));
        }
    }
    Ok(())
}
