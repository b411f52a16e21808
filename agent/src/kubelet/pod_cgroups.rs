//! Pod-level cgroups, as upstream's pod container manager makes them with the cgroupfs
//! driver: before a pod's sandbox runs, its cgroup (`<root>/kubepods[/burstable|/besteffort]
//! /pod<uid>`, see [`runtime_config::cgroup_parent`]) gets the pod's cpu shares from the sum
//! of its requests, a CFS quota when every container limits cpu, and a memory limit when
//! every container limits memory (init containers count by their largest, as upstream sums);
//! a BestEffort pod gets the minimum shares only. On cgroup v1 (and hybrid hosts, whose
//! controllers are v1) the files are `cpu.shares`, `cpu.cfs_quota_us`,
//! `memory.limit_in_bytes`; on a pure v2 host `cpu.weight`, `cpu.max`, `memory.max`. Once
//! the pod's containers are gone its cgroup directories are removed (rmdir only: a cgroup
//! still holding processes stays).
//!
//! Owns those files; the containers' own cgroups are the runtime's (from CRI resources).
use std::{
    io,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::{debug, warn};

use super::runtime_config::{self, parse_milli};

/// Where cgroup filesystems are mounted.
pub const CGROUP_FS: &str = "/sys/fs/cgroup";
/// The kubelet's CFS period (100 ms).
const CPU_PERIOD: i64 = 100_000;
/// Upstream's minimum and maximum cpu shares.
pub const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
/// Upstream's minimum CFS quota (1 ms).
const MIN_QUOTA: i64 = 1_000;

/// The pod cgroup's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLimits {
    /// cpu shares (v1 `cpu.shares`).
    pub cpu_shares: i64,
    /// CFS quota in µs per [`CPU_PERIOD`], when every container limits cpu.
    pub cpu_quota: Option<i64>,
    /// Memory limit in bytes, when every container limits memory.
    pub memory: Option<i64>,
}

/// One resource of one container in thousandths: its request (defaulting to its limit) and
/// its limit.
fn amounts(container: &Container, name: &str) -> (i64, Option<i64>) {
    let resources = container.resources.as_ref();
    let limit = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(name))
        .and_then(|q| parse_milli(&q.0));
    let request = resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|l| l.get(name))
        .and_then(|q| parse_milli(&q.0))
        .or(limit);
    (request.unwrap_or(0), limit)
}

/// A pod's total of one resource, as upstream's PodRequests/PodLimits: the app containers
/// and sidecars summed, or the largest regular init container when that is more; `None` for
/// the limit when a container has none.
fn totals(pod: &Pod, name: &str) -> (i64, Option<i64>) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, None);
    };
    let inits = spec.init_containers.iter().flatten();
    let sidecars = inits
        .clone()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut request = 0i64;
    let mut limit = Some(0i64);
    for container in spec.containers.iter().chain(sidecars) {
        let (r, l) = amounts(container, name);
        request += r;
        limit = limit.zip(l).map(|(a, b)| a + b);
    }
    for init in inits.filter(|c| c.restart_policy.as_deref() != Some("Always")) {
        let (r, l) = amounts(init, name);
        request = request.max(r);
        limit = limit.zip(l).map(|(a, b)| a.max(b));
    }
    (request, limit)
}

/// cpu shares for `milli` thousandths of a CPU (upstream's MilliCPUToShares): 1024 a CPU,
/// at least [`MIN_SHARES`] (also for none) and at most [`MAX_SHARES`].
pub fn milli_cpu_to_shares(milli: i64) -> i64 {
    (milli.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// The pod's cpu request in thousandths of a CPU, as upstream's PodRequests sums it.
pub fn pod_cpu_request(pod: &Pod) -> i64 {
    totals(pod, "cpu").0
}

/// The pod cgroup's limits as upstream's ResourceConfigForPod computes them.
pub fn pod_limits(pod: &Pod) -> PodLimits {
    if runtime_config::qos_class(pod) == "BestEffort" {
        return PodLimits {
            cpu_shares: MIN_SHARES,
            cpu_quota: None,
            memory: None,
        };
    }
    let (cpu_request, cpu_limit) = totals(pod, "cpu");
    let (_, memory_limit) = totals(pod, "memory");
    PodLimits {
        cpu_shares: milli_cpu_to_shares(cpu_request),
        cpu_quota: cpu_limit
            .filter(|&m| m > 0)
            .map(|m| (m * CPU_PERIOD / 1000).max(MIN_QUOTA)),
        memory: memory_limit.filter(|&m| m > 0).map(|m| m / 1000),
    }
}

/// Whether the host runs the unified (pure v2) hierarchy.
pub fn pure_v2(fs: &Path) -> bool {
    fs.join("cgroup.controllers").is_file()
}

/// v1 cpu shares as v2 `cpu.weight` (upstream's conversion).
fn weight(shares: i64) -> i64 {
    1 + ((shares - 2) * 9999) / 262_142
}

/// The files to write for `limits`: (controller directory, file, value); the controller
/// directory is `None` on a pure v2 host.
fn files(limits: &PodLimits, v2: bool) -> Vec<(Option<&'static str>, &'static str, String)> {
    if v2 {
        return vec![
            (None, "cpu.weight", weight(limits.cpu_shares).to_string()),
            (
                None,
                "cpu.max",
                format!(
                    "{} {CPU_PERIOD}",
                    limits.cpu_quota.map_or("max".to_owned(), |q| q.to_string())
                ),
            ),
            (
                None,
                "memory.max",
                limits.memory.map_or("max".to_owned(), |m| m.to_string()),
            ),
        ];
    }
    vec![
        (Some("cpu"), "cpu.shares", limits.cpu_shares.to_string()),
        (Some("cpu"), "cpu.cfs_period_us", CPU_PERIOD.to_string()),
        (
            Some("cpu"),
            "cpu.cfs_quota_us",
            limits.cpu_quota.unwrap_or(-1).to_string(),
        ),
        (
            Some("memory"),
            "memory.limit_in_bytes",
            limits.memory.unwrap_or(-1).to_string(),
        ),
    ]
}

/// The v1 hierarchy that holds `controller` (`cpu` may be mounted as `cpu,cpuacct`).
pub fn v1_dir(fs: &Path, controller: &str) -> Option<PathBuf> {
    let exact = fs.join(controller);
    if exact.is_dir() {
        return Some(exact);
    }
    std::fs::read_dir(fs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(',').any(|c| c == controller))
        })
}

/// Makes the pod's cgroup with its limits (before its sandbox runs).
pub fn apply(pod: &Pod, cgroup_root: &str) -> io::Result<()> {
    let parent = runtime_config::cgroup_parent(pod, cgroup_root);
    let limits = pod_limits(pod);
    write_limits(Path::new(CGROUP_FS), &parent, &limits)?;
    debug!(pod = ?pod.metadata.name, cgroup = %parent, ?limits, "pod cgroup ready");
    Ok(())
}

/// Makes the cgroup `cgroup` (a path from the hierarchies' root) in every hierarchy that
/// holds a controller of `limits` under the cgroup filesystems at `fs`, and writes `limits`.
pub(super) fn write_limits(fs: &Path, cgroup: &str, limits: &PodLimits) -> io::Result<()> {
    let relative = cgroup.trim_start_matches('/');
    let v2 = pure_v2(fs);
    for (controller, file, value) in files(limits, v2) {
        let base = match controller {
            None => fs.to_path_buf(),
            Some(c) => match v1_dir(fs, c) {
                Some(dir) => dir,
                None => continue,
            },
        };
        let dir = base.join(relative);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(file), &value)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))?;
    }
    Ok(())
}

/// Removes the cgroup directories of the pod with UID `uid` (whatever its QoS class was),
/// in every hierarchy; a directory that still holds a cgroup or a process stays.
pub fn remove(uid: &str, cgroup_root: &str) {
    let fs = Path::new(CGROUP_FS);
    let root = cgroup_root.trim_matches('/');
    let mut bases = vec![fs.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(fs) {
        bases.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for base in bases {
        for qos in ["kubepods", "kubepods/burstable", "kubepods/besteffort"] {
            let dir = base.join(root).join(qos).join(format!("pod{uid}"));
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(dir = %dir.display(), error = %e, "removing a pod cgroup failed"),
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

    #[test]
    fn pod_limits_follow_upstreams_sums() {
        let guaranteed = pod(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "250m", "memory": "32Mi"}}}]}}));
        assert_eq!(
            pod_limits(&guaranteed),
            PodLimits {
                cpu_shares: 768,
                cpu_quota: Some(75_000),
                memory: Some(96 << 20)
            }
        );
        // One container without a memory limit: no pod memory limit; cpu limits all set.
        let burstable = pod(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}));
        assert_eq!(
            pod_limits(&burstable),
            PodLimits {
                cpu_shares: 1126,
                cpu_quota: Some(200_000),
                memory: None
            }
        );
        // A bigger init container sets the pod's request and limit.
        let init = pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}],
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}]}}));
        assert_eq!(
            pod_limits(&init),
            PodLimits {
                cpu_shares: 2048,
                cpu_quota: Some(200_000),
                memory: Some(1 << 30)
            }
        );
        let best = pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(
            pod_limits(&best),
            PodLimits {
                cpu_shares: 2,
                cpu_quota: None,
                memory: None
            }
        );
    }

    #[test]
    fn millicores_become_shares() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(2), 2);
        assert_eq!(milli_cpu_to_shares(3), 3);
        assert_eq!(milli_cpu_to_shares(250), 256);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1500), 1536);
        assert_eq!(milli_cpu_to_shares(-5), 2);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES);
        assert_eq!(milli_cpu_to_shares(i64::MAX), MAX_SHARES);
    }

    #[test]
    fn limits_are_written_in_the_v1_hierarchies() -> io::Result<()> {
        let fs = tempfile::tempdir()?;
        std::fs::create_dir(fs.path().join("cpu,cpuacct"))?;
        std::fs::create_dir(fs.path().join("memory"))?;
        let limits = PodLimits {
            cpu_shares: 512,
            cpu_quota: Some(50_000),
            memory: Some(64 << 20),
        };
        write_limits(fs.path(), "/root/kubepods/podx", &limits)?;
        let read = |dir: &str, file: &str| {
            std::fs::read_to_string(fs.path().join(dir).join("root/kubepods/podx").join(file))
        };
        assert_eq!(read("cpu,cpuacct", "cpu.shares")?, "512");
        assert_eq!(read("cpu,cpuacct", "cpu.cfs_quota_us")?, "50000");
        assert_eq!(
            read("memory", "memory.limit_in_bytes")?,
            (64u64 << 20).to_string()
        );
        Ok(())
    }

    #[test]
    fn files_for_v1_and_v2() {
        let limits = PodLimits {
            cpu_shares: 1024,
            cpu_quota: None,
            memory: Some(1 << 20),
        };
        let v1 = files(&limits, false);
        assert!(v1.contains(&(Some("cpu"), "cpu.cfs_quota_us", "-1".to_owned())));
        assert!(v1.contains(&(
            Some("memory"),
            "memory.limit_in_bytes",
            "1048576".to_owned()
        )));
        let v2 = files(&limits, true);
        assert!(v2.contains(&(None, "cpu.max", "max 100000".to_owned())));
        assert!(v2.contains(&(None, "cpu.weight", "39".to_owned())));
        assert!(v2.contains(&(None, "memory.max", "1048576".to_owned())));
    }
}
