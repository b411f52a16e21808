//! Resource arithmetic as kube-scheduler does it: `Quantity` strings parsed to integers (CPU
//! in millicores, everything else in whole units, rounded up), a pod's effective request
//! (the larger of its containers' sum plus restartable init containers and each regular init
//! container on its own, plus the pod overhead), and a node's allocatable.
//!
//! Owns the numbers only; which resources fit where is [`super::filters`]' job.
use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::api::resource::Quantity};

use crate::client::{cached_pod::CachedContainer, CachedPod};

/// Resource amounts by name: `cpu` in millicores, the rest in units (bytes for memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Everything else (extended resources, hugepages), in units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        for (name, amount) in &other.scalar {
            let entry = self.scalar.entry(name.clone()).or_insert(0);
            *entry = entry.saturating_add(*amount);
        }
    }

    /// Subtracts `other` from these.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        for (name, amount) in &other.scalar {
            let entry = self.scalar.entry(name.clone()).or_insert(0);
            *entry = entry.saturating_sub(*amount);
        }
    }

    /// Each resource the larger of the two.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, amount) in &other.scalar {
            let entry = self.scalar.entry(name.clone()).or_insert(0);
            *entry = (*entry).max(*amount);
        }
    }

    /// Parses a resource list (`requests`, `allocatable`, `overhead`). Unparsable quantities
    /// count as zero: the API server validated them on the way in.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut out = Self::default();
        for (name, quantity) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => out.milli_cpu = parse_milli(&quantity.0).unwrap_or(0),
                "memory" => out.memory = parse_units(&quantity.0).unwrap_or(0),
                "ephemeral-storage" => {
                    out.ephemeral_storage = parse_units(&quantity.0).unwrap_or(0)
                }
                "pods" => {}
                other => {
                    out.scalar
                        .insert(other.to_owned(), parse_units(&quantity.0).unwrap_or(0));
                }
            }
        }
        out
    }
}

/// What a node offers: its allocatable resources and how many pods it takes.
pub fn allocatable(node: &Node) -> (Resources, i64) {
    let list = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let pods = list
        .and_then(|l| l.get("pods"))
        .and_then(|q| parse_units(&q.0))
        .unwrap_or(0);
    (Resources::from_list(list), pods)
}

fn container_requests(container: &CachedContainer) -> Resources {
    let resources = container.resources.as_ref();
    // A limit without a request means a request equal to the limit (API defaulting does this
    // too; repeated here for objects stored before it).
    let mut requests = resources
        .and_then(|r| r.requests.clone())
        .unwrap_or_default();
    if let Some(limits) = resources.and_then(|r| r.limits.as_ref()) {
        for (name, quantity) in limits {
            requests
                .entry(name.clone())
                .or_insert_with(|| quantity.clone());
        }
    }
    Resources::from_list(Some(&requests))
}

/// The pod's effective request (kube-scheduler's `computePodResourceRequest`).
pub fn pod_requests(pod: &CachedPod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut total = Resources::default();
    for container in &spec.containers {
        total.add(&container_requests(container));
    }
    // Init containers run one at a time before the app containers; restartable ones
    // (sidecars) keep running alongside everything after them.
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for init in spec.init_containers.iter().flatten() {
        let requests = container_requests(init);
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&requests);
            init_peak.max_with(&sidecars);
        } else {
            let mut peak = sidecars.clone();
            peak.add(&requests);
            init_peak.max_with(&peak);
        }
    }
    total.add(&sidecars);
    total.max_with(&init_peak);
    total.add(&Resources::from_list(spec.overhead.as_ref()));
    total
}

/// Splits a quantity into its number and its suffix's multiplier as (numerator, denominator).
fn split(text: &str) -> Option<(f64, f64)> {
    let text = text.trim();
    let suffix_start = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .or_else(|| {
            // `1e3` is an exponent, but a trailing lone `E` is exa.
            text.ends_with(['e', 'E']).then(|| text.len() - 1)
        })
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(suffix_start);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        _ => return None,
    };
    number.is_finite().then_some((number, multiplier))
}

/// A quantity in thousandths, rounded up (`Quantity.MilliValue`).
pub fn parse_milli(text: &str) -> Option<i64> {
    let (number, multiplier) = split(text)?;
    Some(clamp((number * multiplier * 1000.0).ceil()))
}

/// A quantity in units, rounded up (`Quantity.Value`).
pub fn parse_units(text: &str) -> Option<i64> {
    let (number, multiplier) = split(text)?;
    Some(clamp((number * multiplier).ceil()))
}

fn clamp(value: f64) -> i64 {
    if value >= i64::MAX as f64 {
        i64::MAX
    } else if value <= i64::MIN as f64 {
        i64::MIN
    } else {
        value as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};

    fn q(text: &str) -> Quantity {
        Quantity(text.to_owned())
    }

    fn container(cpu: &str, memory: &str) -> Container {
        Container {
            name: "c".to_owned(),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_owned(), q(cpu)),
                    ("memory".to_owned(), q(memory)),
                ])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    #[test]
    fn quantities_parse_as_upstream_rounds_them() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1.0001"), Some(1001));
        assert_eq!(parse_units("1Ki"), Some(1024));
        assert_eq!(parse_units("128Mi"), Some(134_217_728));
        assert_eq!(parse_units("1G"), Some(1_000_000_000));
        assert_eq!(parse_units("1e3"), Some(1000));
        assert_eq!(parse_units("2E"), Some(2_000_000_000_000_000_000));
        assert_eq!(parse_units("110"), Some(110));
        assert_eq!(parse_units("1x"), None);
        assert_eq!(parse_units(""), None);
    }

    #[test]
    fn pod_request_takes_the_larger_of_init_and_app_containers_plus_overhead() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("100m", "100Mi"), container("200m", "50Mi")],
                init_containers: Some(vec![container("500m", "10Mi")]),
                overhead: Some(BTreeMap::from([("cpu".to_owned(), q("10m"))])),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let requests = pod_requests(&CachedPod::from(pod));
        assert_eq!(requests.milli_cpu, 510);
        assert_eq!(requests.memory, 150 * 1024 * 1024);
    }

    #[test]
    fn sidecar_init_containers_add_to_the_app_containers() {
        let mut sidecar = container("100m", "10Mi");
        sidecar.restart_policy = Some("Always".to_owned());
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("200m", "10Mi")],
                init_containers: Some(vec![sidecar]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(pod_requests(&CachedPod::from(pod)).milli_cpu, 300);
    }
}
