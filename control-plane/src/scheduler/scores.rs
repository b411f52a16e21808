//! Scores: how good a feasible node is for a pod, one function per kube-scheduler score
//! plugin, each 0–100 after normalization, summed with upstream's default weights
//! (NodeResourcesFit 1, NodeResourcesBalancedAllocation 1, ImageLocality 1, InterPodAffinity
//! 2, NodeAffinity 2, PodTopologySpread 2, TaintToleration 3).
//!
//! Owns the ranking of feasible nodes; it must not reject nodes (that is filtering).
use super::{
    affinity::Context,
    cache::{NodeInfo, PodInfo},
    filters,
};

/// The highest score a plugin gives.
pub const MAX_SCORE: i64 = 100;

const WEIGHT_FIT: i64 = 1;
const WEIGHT_BALANCED: i64 = 1;
const WEIGHT_IMAGE: i64 = 1;
const WEIGHT_POD_AFFINITY: i64 = 2;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_SPREAD: i64 = 2;
const WEIGHT_TAINT: i64 = 3;

/// Image sizes below this add nothing to locality (upstream's 23 MB).
const IMAGE_MIN: i64 = 23 * 1024 * 1024;
/// Per container, sizes above this add no more (upstream's 1000 MB).
const IMAGE_MAX_PER_CONTAINER: i64 = 1000 * 1024 * 1024;

/// `NodeResourcesFit` with the LeastAllocated strategy over cpu and memory.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let part = |requested: i64, allocatable: i64| {
        if allocatable <= 0 || requested > allocatable {
            0
        } else {
            (allocatable - requested) * MAX_SCORE / allocatable
        }
    };
    let cpu = part(
        node.non_zero_requested.0 + pod.non_zero.0,
        node.allocatable.milli_cpu,
    );
    let memory = part(
        node.non_zero_requested.1 + pod.non_zero.1,
        node.allocatable.memory,
    );
    (cpu + memory) / 2
}

/// `NodeResourcesBalancedAllocation`: cpu and memory fractions close to each other.
pub fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let fraction = |requested: i64, allocatable: i64| {
        if allocatable <= 0 {
            1.0
        } else {
            (requested as f64 / allocatable as f64).min(1.0)
        }
    };
    let cpu = fraction(
        node.requested.milli_cpu + pod.requests.milli_cpu,
        node.allocatable.milli_cpu,
    );
    let memory = fraction(
        node.requested.memory + pod.requests.memory,
        node.allocatable.memory,
    );
    let std_dev = (cpu - memory).abs() / 2.0;
    ((1.0 - std_dev) * MAX_SCORE as f64) as i64
}

/// `ImageLocality`: images already on the node, scaled by how widely they are spread.
pub fn image_locality(images: &[PodImage], node: &NodeInfo) -> i64 {
    let mut sum = 0i64;
    for image in images {
        let size = node
            .images
            .get(&image.name)
            .or_else(|| node.images.get(&image.normalized));
        if let Some(size) = size {
            sum += (*size as f64 * image.spread) as i64;
        }
    }
    let max = IMAGE_MAX_PER_CONTAINER * images.len().max(1) as i64;
    let clamped = sum.clamp(IMAGE_MIN, max);
    MAX_SCORE * (clamped - IMAGE_MIN) / (max - IMAGE_MIN).max(1)
}

/// One container image of the pod, prepared once per scheduling attempt.
#[derive(Debug, Clone)]
pub struct PodImage {
    /// As the pod names it.
    pub name: String,
    /// As nodes report it.
    pub normalized: String,
    /// The fraction of nodes that have it.
    pub spread: f64,
}

/// The pod's container images with their spread.
pub fn pod_images(pod: &PodInfo, spread: impl Fn(&str) -> f64) -> Vec<PodImage> {
    pod.pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.image.clone())
        .map(|name| PodImage {
            normalized: normalized_image(&name),
            spread: spread(&name),
            name,
        })
        .collect()
}

/// `busybox` → `docker.io/library/busybox:latest`, the form nodes report.
pub fn normalized_image(image: &str) -> String {
    let (name, tag) = match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_owned(), t.to_owned()),
        _ => (image.to_owned(), "latest".to_owned()),
    };
    let name = if name.contains('/') {
        let first = name.split('/').next().unwrap_or_default();
        if first.contains('.') || first.contains(':') || first == "localhost" {
            name
        } else {
            format!("docker.io/{name}")
        }
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{name}:{tag}")
}

/// Raw `NodeAffinity` preferred score: the weights of matching preferred terms.
pub fn node_affinity_raw(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|term| filters::term_matches(&term.preference, node))
        .map(|term| i64::from(term.weight))
        .sum()
}

/// Raw `TaintToleration` score: untolerated PreferNoSchedule taints (fewer is better).
pub fn taint_raw(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let tolerations: Vec<_> = filters::tolerations(&pod.pod)
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .collect();
    filters::taints(node)
        .iter()
        .filter(|taint| taint.effect == "PreferNoSchedule")
        .filter(|taint| !tolerations.iter().any(|t| filters::tolerates(t, taint)))
        .count() as i64
}

/// Scales raw scores to 0–100 (higher raw is better unless `reverse`).
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|r| {
            let scaled = if max == 0 { 0 } else { r * MAX_SCORE / max };
            if reverse {
                MAX_SCORE - scaled
            } else {
                scaled
            }
        })
        .collect()
}

/// Totals for feasible nodes, in the order given.
pub fn score_all(
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    context: &Context<'_>,
    image_spread: impl Fn(&str) -> f64,
) -> Vec<i64> {
    let images = pod_images(pod, image_spread);
    let mut totals: Vec<i64> = nodes
        .iter()
        .map(|node| {
            WEIGHT_FIT * least_allocated(pod, node)
                + WEIGHT_BALANCED * balanced_allocation(pod, node)
                + WEIGHT_IMAGE * image_locality(&images, node)
        })
        .collect();
    let node_affinity: Vec<i64> = nodes.iter().map(|n| node_affinity_raw(pod, n)).collect();
    for (total, score) in totals.iter_mut().zip(normalize(&node_affinity, false)) {
        *total += WEIGHT_NODE_AFFINITY * score;
    }
    let taints: Vec<i64> = nodes.iter().map(|n| taint_raw(pod, n)).collect();
    for (total, score) in totals.iter_mut().zip(normalize(&taints, true)) {
        *total += WEIGHT_TAINT * score;
    }
    if context.scores_affinity() {
        let raw: Vec<i64> = nodes.iter().map(|n| context.affinity_score(n)).collect();
        let min = raw.iter().copied().min().unwrap_or(0);
        let max = raw.iter().copied().max().unwrap_or(0);
        for (total, r) in totals.iter_mut().zip(raw) {
            if max > min {
                *total += WEIGHT_POD_AFFINITY * MAX_SCORE * (r - min) / (max - min);
            }
        }
    }
    if let Some(spread) = context.spread_scores(nodes) {
        for (total, score) in totals.iter_mut().zip(spread) {
            *total += WEIGHT_SPREAD * score;
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_normalized_as_nodes_report_them() {
        assert_eq!(
            normalized_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalized_image("corten/busybox:1"),
            "docker.io/corten/busybox:1"
        );
        assert_eq!(
            normalized_image("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(
            normalized_image("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
    }

    #[test]
    fn normalization_scales_to_the_best_node() {
        assert_eq!(normalize(&[0, 5, 10], false), vec![0, 50, 100]);
        assert_eq!(normalize(&[0, 1, 2], true), vec![100, 50, 0]);
        assert_eq!(normalize(&[0, 0], true), vec![100, 100]);
    }
}
