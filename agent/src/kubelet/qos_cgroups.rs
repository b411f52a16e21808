//! QoS-level cgroups, as upstream's kubelet makes them with `--cgroups-per-qos` (its node
//! container manager and QoS container manager): `<root>/kubepods` is sized to the node's
//! allocatable (cpu shares from the allocatable cpu, a memory limit of the allocatable
//! memory) and holds the Guaranteed pods; `kubepods/burstable` gets the cpu shares of the
//! sum of its pods' cpu requests (at least 2), and `kubepods/besteffort` the minimum of 2
//! shares. The pod worker calls [`QosCgroups::update`] with the node's pods every pass,
//! before any pod cgroup is made, so the tiers follow pods as they come and go; the files are
//! written when the values change, and again every minute (upstream's periodic update).
//!
//! The files are those of [`pod_cgroups`](super::pod_cgroups): v1 controllers on v1 and
//! hybrid hosts, v2 files on a pure v2 host. Owns the three QoS cgroups' limits, nothing
//! below them.
use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use tracing::{debug, warn};

use super::{
    env::Allocatable,
    pod_cgroups::{self, milli_cpu_to_shares, PodLimits, MIN_SHARES},
    runtime_config::{self, parse_milli},
};

/// How often the tiers are written even without a change (upstream: a minute).
const PERIODIC_UPDATE: Duration = Duration::from_secs(60);

/// The three QoS cgroups' limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosLimits {
    /// `kubepods`: the node's allocatable.
    pub kubepods: PodLimits,
    /// `kubepods/burstable`: the burstable pods' cpu requests.
    pub burstable: PodLimits,
    /// `kubepods/besteffort`: the minimum shares.
    pub besteffort: PodLimits,
}

/// cpu shares only.
fn shares(cpu_shares: i64) -> PodLimits {
    PodLimits {
        cpu_shares,
        cpu_quota: None,
        memory: None,
    }
}

/// Whether the pod still holds resources (upstream's active pods: not Succeeded or Failed).
fn active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The QoS cgroups' limits for the node's `allocatable` and the pods bound to it.
pub fn qos_limits<'a>(
    allocatable: &Allocatable,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> QosLimits {
    let cpu = allocatable
        .get("cpu")
        .and_then(|q| parse_milli(q))
        .unwrap_or(0);
    let memory = allocatable
        .get("memory")
        .and_then(|q| parse_milli(q))
        .map(|m| m / 1000)
        .filter(|&m| m > 0);
    let burstable_milli: i64 = pods
        .into_iter()
        .filter(|p| active(p))
        .filter(|p| runtime_config::qos_class(p) == "Burstable")
        .map(pod_cgroups::pod_cpu_request)
        .sum();
    QosLimits {
        kubepods: PodLimits {
            cpu_shares: milli_cpu_to_shares(cpu),
            cpu_quota: None,
            memory,
        },
        burstable: shares(milli_cpu_to_shares(burstable_milli)),
        besteffort: shares(MIN_SHARES),
    }
}

/// Writes `limits` to the QoS cgroups under `cgroup_root` in the cgroup filesystems at `fs`,
/// the parent first.
pub fn write(fs: &Path, cgroup_root: &str, limits: &QosLimits) -> io::Result<()> {
    let kubepods = format!("{}/kubepods", cgroup_root.trim_end_matches('/'));
    pod_cgroups::write_limits(fs, &kubepods, &limits.kubepods)?;
    pod_cgroups::write_limits(fs, &format!("{kubepods}/burstable"), &limits.burstable)?;
    pod_cgroups::write_limits(fs, &format!("{kubepods}/besteffort"), &limits.besteffort)
}

/// Keeps the QoS cgroups of one node in step with its pods.
#[derive(Debug)]
pub struct QosCgroups {
    fs: PathBuf,
    cgroup_root: String,
    allocatable: Allocatable,
    /// What was last written, and when.
    written: Option<(QosLimits, Instant)>,
}

impl QosCgroups {
    /// The QoS cgroups under `cgroup_root` of a node with `allocatable`.
    pub fn new(cgroup_root: &str, allocatable: Allocatable) -> Self {
        Self::with_fs(Path::new(pod_cgroups::CGROUP_FS), cgroup_root, allocatable)
    }

    /// The same under the cgroup filesystems at `fs`.
    pub fn with_fs(fs: &Path, cgroup_root: &str, allocatable: Allocatable) -> Self {
        Self {
            fs: fs.to_path_buf(),
            cgroup_root: cgroup_root.to_owned(),
            allocatable,
            written: None,
        }
    }

    /// Writes the tiers for `pods` (the pods bound to the node) when they changed or a
    /// minute passed; a failure is logged and retried on the next call.
    pub fn update<'a>(&mut self, pods: impl IntoIterator<Item = &'a Pod>) {
        let limits = qos_limits(&self.allocatable, pods);
        let current = self
            .written
            .is_some_and(|(last, at)| last == limits && at.elapsed() < PERIODIC_UPDATE);
        if current {
            return;
        }
        match write(&self.fs, &self.cgroup_root, &limits) {
            Ok(()) => {
                debug!(?limits, "QoS cgroups updated");
                self.written = Some((limits, Instant::now()));
            }
            Err(e) => {
                warn!(error = %e, "updating the QoS cgroups failed");
                self.written = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    fn node(cpu: &str, memory: &str) -> Allocatable {
        [("cpu", cpu), ("memory", memory), ("pods", "110")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn with_resources(resources: serde_json::Value) -> Pod {
        pod(serde_json::json!({"spec": {"containers": [{"name": "a", "resources": resources}]}}))
    }

    #[test]
    fn tiers_follow_allocatable_and_burstable_requests() {
        let guaranteed =
            with_resources(serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}}));
        let burstable = with_resources(serde_json::json!({"requests": {"cpu": "250m"}}));
        let more = pod(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Mi"}}},
            {"name": "b", "resources": {"requests": {"memory": "1Mi"}, "limits": {"cpu": "2"}}}]}}));
        let best = pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}}));
        let mut finished = with_resources(serde_json::json!({"requests": {"cpu": "4"}}));
        finished.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".to_owned()),
            ..Default::default()
        });
        let allocatable = node("2", "4096Ki");
        let limits = qos_limits(
            &allocatable,
            [&guaranteed, &burstable, &more, &best, &finished],
        );
        assert_eq!(
            limits.kubepods,
            PodLimits {
                cpu_shares: 2048,
                cpu_quota: None,
                memory: Some(4 << 20)
            }
        );
        // 250m + (100m + 2 as its limit stands for its request) = 2350m.
        assert_eq!(limits.burstable, shares(2406));
        assert_eq!(limits.besteffort, shares(2));
        // No burstable pod: the minimum.
        let none = qos_limits(&allocatable, [&guaranteed, &best]);
        assert_eq!(none.burstable, shares(2));
        // A tiny request still gets the minimum.
        let tiny = with_resources(serde_json::json!({"requests": {"cpu": "1m"}}));
        assert_eq!(qos_limits(&allocatable, [&tiny]).burstable, shares(2));
        // No allocatable memory: no limit.
        assert_eq!(qos_limits(&node("500m", "0"), []).kubepods.memory, None);
        assert_eq!(qos_limits(&node("500m", "0"), []).kubepods.cpu_shares, 512);
    }

    #[test]
    fn updates_write_the_tiers_when_pods_change() -> io::Result<()> {
        let fs = tempfile::tempdir()?;
        std::fs::create_dir(fs.path().join("cpu"))?;
        std::fs::create_dir(fs.path().join("memory"))?;
        let read = |dir: &str, cgroup: &str, file: &str| -> io::Result<String> {
            std::fs::read_to_string(fs.path().join(dir).join("node").join(cgroup).join(file))
        };
        let mut qos = QosCgroups::with_fs(fs.path(), "/node/", node("1", "1Mi"));
        qos.update([]);
        assert_eq!(read("cpu", "kubepods", "cpu.shares")?, "1024");
        assert_eq!(
            read("memory", "kubepods", "memory.limit_in_bytes")?,
            "1048576"
        );
        assert_eq!(read("cpu", "kubepods/burstable", "cpu.shares")?, "2");
        assert_eq!(read("cpu", "kubepods/besteffort", "cpu.shares")?, "2");
        let burstable = with_resources(serde_json::json!({"requests": {"cpu": "500m"}}));
        qos.update([&burstable]);
        assert_eq!(read("cpu", "kubepods/burstable", "cpu.shares")?, "512");
        // Unchanged: nothing is written (a file changed behind its back stays).
        std::fs::write(
            fs.path().join("cpu/node/kubepods/burstable/cpu.shares"),
            "7",
        )?;
        qos.update([&burstable]);
        assert_eq!(read("cpu", "kubepods/burstable", "cpu.shares")?, "7");
        // The pod gone: back to the minimum.
        qos.update([]);
        assert_eq!(read("cpu", "kubepods/burstable", "cpu.shares")?, "2");
        Ok(())
    }
}
