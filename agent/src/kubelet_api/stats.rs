//! `/stats/summary`: the kubelet's Summary API (`stats/v1alpha1`, the field names of
//! upstream's `k8s.io/kubelet/pkg/apis/stats/v1alpha1`). The node's cpu, memory, network and
//! rlimit come from `/proc`, its filesystem from the agent's data directory, the `pods`
//! system container from `<root>/kubepods`; each pod with a ready sandbox gets its pod
//! cgroup's cpu and memory, its sandbox's network namespace's interfaces and its task count,
//! and each of its running containers its own cgroup's cpu and memory
//! ([`resource_usage`](super::resource_usage) reads them). `usageNanoCores` is the rate since
//! the previous request that came at least a second earlier, so the first request has none
//! (upstream's CRI stats provider also derives it from a cached sample). Volume, rootfs, log
//! and ephemeral-storage usage are not reported.
//!
//! Owns the Summary's shape and its assembly; it reads and never changes anything.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_cri::v1::{Container, ContainerState, PodSandbox, PodSandboxState};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::resource_usage::{Cgroups, InterfaceCounters, MemoryUsage, Proc};

/// The interface upstream reports as a network's default (cAdvisor's choice).
const DEFAULT_INTERFACE: &str = "eth0";
/// The shortest window a cpu rate is taken over.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// The Summary API's document.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The node's stats.
    pub node: NodeStats,
    /// Each pod's stats.
    pub pods: Vec<PodStats>,
}

/// The node's stats.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// This node.
    pub node_name: String,
    /// System containers (`pods`: every pod's cgroup).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system_containers: Vec<ContainerStats>,
    /// When the node booted.
    pub start_time: String,
    /// cpu.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// Network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// The filesystem of the agent's data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    /// Process IDs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimit: Option<RlimitStats>,
}

/// Process ID limits (upstream's field names are lower case).
#[derive(Debug, Clone, Serialize)]
pub struct RlimitStats {
    /// When they were read.
    pub time: String,
    /// The most process IDs.
    #[serde(rename = "maxpid", skip_serializing_if = "Option::is_none")]
    pub max_pid: Option<i64>,
    /// Tasks now.
    #[serde(rename = "curproc", skip_serializing_if = "Option::is_none")]
    pub current_processes: Option<i64>,
}

/// A pod's stats.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// The pod.
    pub pod_ref: PodReference,
    /// When its sandbox was made.
    pub start_time: String,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
    /// The pod cgroup's cpu.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// The pod cgroup's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The pod's network namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// Its tasks.
    #[serde(rename = "process_stats", skip_serializing_if = "Option::is_none")]
    pub process_stats: Option<ProcessStats>,
}

/// Which pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodReference {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
}

/// A pod's task count.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStats {
    /// Tasks in the pod cgroup.
    #[serde(rename = "process_count", skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u64>,
}

/// A container's stats.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name in its pod.
    pub name: String,
    /// When it was made.
    pub start_time: String,
    /// cpu.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// cpu usage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was read.
    pub time: String,
    /// Nanoseconds of cpu a second, over the last window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Nanoseconds of cpu so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory usage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was read.
    pub time: String,
    /// The limit less the working set, when there is a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Everything in use.
    pub usage_bytes: u64,
    /// The working set.
    pub working_set_bytes: u64,
    /// Anonymous and swap cache memory.
    pub rss_bytes: u64,
    /// Minor page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
}

/// One interface's counters.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    /// The interface.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Send errors.
    pub tx_errors: u64,
}

/// A network namespace's interfaces: the default one inline, and all of them.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkStats {
    /// When they were read.
    pub time: String,
    /// The default interface (`eth0`, else the first).
    #[serde(flatten)]
    pub default: InterfaceStats,
    /// Every interface but loopback.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStats>,
}

/// A filesystem's usage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// When it was read.
    pub time: String,
    /// Bytes free for unprivileged users.
    pub available_bytes: u64,
    /// Size.
    pub capacity_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Free inodes.
    pub inodes_free: u64,
    /// Inodes.
    pub inodes: u64,
    /// Inodes in use.
    pub inodes_used: u64,
}

/// RFC 3339 (seconds) of `seconds` since the epoch.
fn rfc3339(seconds: i64) -> String {
    Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn memory_stats(time: &str, memory: MemoryUsage) -> MemoryStats {
    MemoryStats {
        time: time.to_owned(),
        available_bytes: memory.available(),
        usage_bytes: memory.usage,
        working_set_bytes: memory.working_set,
        rss_bytes: memory.rss,
        page_faults: memory.page_faults,
        major_page_faults: memory.major_page_faults,
    }
}

fn network_stats(time: &str, interfaces: Vec<InterfaceCounters>) -> Option<NetworkStats> {
    let all: Vec<InterfaceStats> = interfaces
        .into_iter()
        .map(|i| InterfaceStats {
            name: i.name,
            rx_bytes: i.rx_bytes,
            rx_errors: i.rx_errors,
            tx_bytes: i.tx_bytes,
            tx_errors: i.tx_errors,
        })
        .collect();
    let default = all
        .iter()
        .find(|i| i.name == DEFAULT_INTERFACE)
        .or_else(|| all.first())?
        .clone();
    Some(NetworkStats {
        time: time.to_owned(),
        default,
        interfaces: all,
    })
}

/// Usage of the filesystem holding `path`.
pub(crate) fn fs_stats(time: &str, path: &Path) -> Option<FsStats> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let block = stat.fragment_size();
    let blocks = stat.blocks();
    let free = stat.blocks_free();
    let inodes = stat.files();
    let inodes_free = stat.files_free();
    Some(FsStats {
        time: time.to_owned(),
        available_bytes: stat.blocks_available().saturating_mul(block),
        capacity_bytes: blocks.saturating_mul(block),
        used_bytes: blocks.saturating_sub(free).saturating_mul(block),
        inodes_free,
        inodes,
        inodes_used: inodes.saturating_sub(inodes_free),
    })
}

/// A cpu counter's last sample and the rate derived from it.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    usage: u64,
    rate: Option<u64>,
}

/// Builds Summaries for one node.
#[derive(Debug)]
pub struct StatsProvider {
    node_name: String,
    cgroup_root: String,
    data_dir: PathBuf,
    cgroups: Cgroups,
    proc: Proc,
    samples: Mutex<HashMap<String, CpuSample>>,
}

impl StatsProvider {
    /// The stats of node `node_name`, whose pods are under `cgroup_root` and whose agent
    /// keeps its data in `data_dir`, read from this host.
    pub fn new(node_name: &str, cgroup_root: &str, data_dir: &Path) -> Self {
        Self::with_sources(
            node_name,
            cgroup_root,
            data_dir,
            Cgroups::host(),
            Proc::host(),
        )
    }

    /// The same, read from `cgroups` and `proc`.
    pub fn with_sources(
        node_name: &str,
        cgroup_root: &str,
        data_dir: &Path,
        cgroups: Cgroups,
        proc: Proc,
    ) -> Self {
        Self {
            node_name: node_name.to_owned(),
            cgroup_root: cgroup_root.trim_end_matches('/').to_owned(),
            data_dir: data_dir.to_path_buf(),
            cgroups,
            proc,
            samples: Mutex::new(HashMap::new()),
        }
    }

    /// cpu stats from the counter `usage` of `key`, with the rate since a sample at least
    /// [`MIN_RATE_WINDOW`] old.
    fn cpu(&self, key: &str, time: &str, usage: Option<u64>, now: Instant) -> Option<CpuStats> {
        let usage = usage?;
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let rate = match samples.get(key).copied() {
            Some(last) if now.duration_since(last.at) < MIN_RATE_WINDOW => last.rate,
            last => {
                let rate = last.and_then(|last| {
                    let window = now.duration_since(last.at).as_nanos();
                    let used = u128::from(usage.checked_sub(last.usage)?);
                    u64::try_from(used * 1_000_000_000 / window.max(1)).ok()
                });
                samples.insert(
                    key.to_owned(),
                    CpuSample {
                        at: now,
                        usage,
                        rate,
                    },
                );
                rate
            }
        };
        Some(CpuStats {
            time: time.to_owned(),
            usage_nano_cores: rate,
            usage_core_nano_seconds: Some(usage),
        })
    }

    /// The pod cgroup of the pod with `uid`, whichever QoS class it is under.
    fn pod_cgroup(&self, uid: &str) -> Option<String> {
        ["kubepods", "kubepods/burstable", "kubepods/besteffort"]
            .iter()
            .map(|qos| format!("{}/{qos}/pod{uid}", self.cgroup_root))
            .find(|c| self.cgroups.exists(c))
    }

    fn container_stats(
        &self,
        name: &str,
        created_ns: i64,
        cgroup: Option<&str>,
        time: &str,
        now: Instant,
    ) -> ContainerStats {
        ContainerStats {
            name: name.to_owned(),
            start_time: rfc3339(created_ns / 1_000_000_000),
            cpu: cgroup.and_then(|c| self.cpu(c, time, self.cgroups.cpu_usage_ns(c), now)),
            memory: cgroup
                .and_then(|c| self.cgroups.memory(c))
                .map(|m| memory_stats(time, m)),
        }
    }

    /// The Summary for the runtime's `sandboxes` and `containers` at `now` (`time` is its
    /// RFC 3339 form): pods with a ready sandbox, with their running containers.
    pub fn summary(
        &self,
        sandboxes: &[PodSandbox],
        containers: &[Container],
        time: &str,
        now: Instant,
    ) -> Summary {
        let kubepods = format!("{}/kubepods", self.cgroup_root);
        let (max_pid, current_processes) = self.proc.pid_counts();
        let node = NodeStats {
            node_name: self.node_name.clone(),
            system_containers: vec![self.container_stats(
                "pods",
                self.proc.boot_time().unwrap_or(0) * 1_000_000_000,
                self.cgroups.exists(&kubepods).then_some(kubepods.as_str()),
                time,
                now,
            )],
            start_time: rfc3339(self.proc.boot_time().unwrap_or(0)),
            cpu: self.cpu("/node", time, self.proc.cpu_usage_ns(), now),
            memory: self.proc.memory().map(|m| memory_stats(time, m)),
            network: network_stats(time, self.proc.interfaces("self")),
            fs: fs_stats(time, &self.data_dir),
            rlimit: Some(RlimitStats {
                time: time.to_owned(),
                max_pid,
                current_processes,
            }),
        };
        let mut pods: Vec<PodStats> = Vec::new();
        let mut ready: Vec<&PodSandbox> = sandboxes
            .iter()
            .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
            .collect();
        // The newest ready sandbox of a pod stands for it.
        ready.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        for sandbox in ready {
            let Some(meta) = sandbox.metadata.as_ref() else {
                continue;
            };
            if pods.iter().any(|p| p.pod_ref.uid == meta.uid) {
                continue;
            }
            let cgroup = self.pod_cgroup(&meta.uid);
            let mut running: Vec<ContainerStats> = containers
                .iter()
                .filter(|c| c.pod_sandbox_id == sandbox.id)
                .filter(|c| c.state == ContainerState::ContainerRunning as i32)
                .filter_map(|c| {
                    let name = &c.metadata.as_ref()?.name;
                    let own = cgroup.as_ref().map(|p| format!("{p}/{}", c.id));
                    Some(self.container_stats(name, c.created_at, own.as_deref(), time, now))
                })
                .collect();
            running.sort_by(|a, b| a.name.cmp(&b.name));
            let sandbox_cgroup = cgroup.as_ref().map(|p| format!("{p}/{}", sandbox.id));
            let network = sandbox_cgroup
                .and_then(|c| self.cgroups.processes(&c).first().copied())
                .and_then(|pid| network_stats(time, self.proc.interfaces(&pid.to_string())));
            let pod_cgroup = cgroup.as_deref();
            pods.push(PodStats {
                pod_ref: PodReference {
                    name: meta.name.clone(),
                    namespace: meta.namespace.clone(),
                    uid: meta.uid.clone(),
                },
                start_time: rfc3339(sandbox.created_at / 1_000_000_000),
                containers: running,
                cpu: pod_cgroup.and_then(|c| self.cpu(c, time, self.cgroups.cpu_usage_ns(c), now)),
                memory: pod_cgroup
                    .and_then(|c| self.cgroups.memory(c))
                    .map(|m| memory_stats(time, m)),
                network,
                process_stats: pod_cgroup.map(|c| ProcessStats {
                    process_count: self.cgroups.tasks(c),
                }),
            });
        }
        pods.sort_by(|a, b| {
            (&a.pod_ref.namespace, &a.pod_ref.name).cmp(&(&b.pod_ref.namespace, &b.pod_ref.name))
        });
        self.forget_except(&pods);
        Summary { node, pods }
    }

    /// Drops the cpu samples of cgroups no longer reported.
    fn forget_except(&self, pods: &[PodStats]) {
        let kubepods = format!("{}/kubepods", self.cgroup_root);
        let live: Vec<String> = pods
            .iter()
            .map(|p| format!("/pod{}", p.pod_ref.uid))
            .collect();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.retain(|key, _| {
            key == "/node"
                || *key == kubepods
                || live
                    .iter()
                    .any(|pod| key.ends_with(pod.as_str()) || key.contains(&format!("{pod}/")))
        });
    }
}

/// Only what `only_cpu_and_memory` asks for (upstream's query): the node's and pods' cpu and
/// memory, their containers', and nothing else.
pub fn only_cpu_and_memory(mut summary: Summary) -> Summary {
    summary.node.network = None;
    summary.node.fs = None;
    summary.node.rlimit = None;
    for pod in &mut summary.pods {
        pod.network = None;
        pod.process_stats = None;
    }
    summary
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{ContainerMetadata, PodSandboxMetadata};
    use serde_json::Value;

    use super::*;
    use crate::kubelet_api::resource_usage::tests::write;

    fn sandbox(id: &str, name: &str, uid: &str, state: PodSandboxState) -> PodSandbox {
        PodSandbox {
            id: id.to_owned(),
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            state: state as i32,
            created_at: 1_700_000_100_000_000_000,
            ..Default::default()
        }
    }

    fn container(id: &str, sandbox: &str, name: &str, state: ContainerState) -> Container {
        Container {
            id: id.to_owned(),
            pod_sandbox_id: sandbox.to_owned(),
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            state: state as i32,
            created_at: 1_700_000_200_000_000_000,
            ..Default::default()
        }
    }

    /// A host with one burstable pod (uid u1, sandbox s1, container c1 running, c2 exited).
    fn host(root: &Path) -> StatsProvider {
        let pod = "cpu,cpuacct/node/kubepods/burstable/podu1";
        write(
            root,
            "cg/cpu,cpuacct/node/kubepods/cpuacct.usage",
            "9000000000",
        );
        write(
            root,
            "cg/memory/node/kubepods/memory.usage_in_bytes",
            "900000",
        );
        write(
            root,
            "cg/memory/node/kubepods/memory.stat",
            "total_inactive_file 0\n",
        );
        write(root, &format!("cg/{pod}/cpuacct.usage"), "2000000000");
        write(root, &format!("cg/{pod}/c1/cpuacct.usage"), "1500000000");
        let memory = "cg/memory/node/kubepods/burstable/podu1";
        write(root, &format!("{memory}/memory.usage_in_bytes"), "300000");
        write(
            root,
            &format!("{memory}/memory.stat"),
            "total_inactive_file 100000\ntotal_rss 150000\n",
        );
        write(root, &format!("{memory}/memory.limit_in_bytes"), "1000000");
        write(
            root,
            &format!("{memory}/c1/memory.usage_in_bytes"),
            "200000",
        );
        write(
            root,
            &format!("{memory}/c1/memory.stat"),
            "total_inactive_file 50000\n",
        );
        write(root, &format!("{memory}/s1/cgroup.procs"), "4242\n");
        write(
            root,
            "cg/pids/node/kubepods/burstable/podu1/pids.current",
            "3",
        );
        write(
            root,
            "proc/stat",
            "cpu  100 0 100 1000 0 0 0 0 0 0\nbtime 1700000000\n",
        );
        write(
            root,
            "proc/meminfo",
            "MemTotal: 4000 kB\nMemFree: 1000 kB\nInactive(file): 1000 kB\n",
        );
        let dev = |name: &str| {
            format!(
                "h1\nh2\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  {name}: 70 1 0 0 0 0 0 0 80 1 0 0 0 0 0 0\n"
            )
        };
        write(root, "proc/self/net/dev", &dev("eth0"));
        write(root, "proc/4242/net/dev", &dev("eth0"));
        StatsProvider::with_sources(
            "n0",
            "/node/",
            root,
            Cgroups::at(&root.join("cg")),
            Proc::at(&root.join("proc"), 100),
        )
    }

    #[test]
    fn the_summary_has_upstreams_shape_and_the_cgroups_values() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let stats = host(dir.path());
        let sandboxes = [
            sandbox("s1", "web", "u1", PodSandboxState::SandboxReady),
            sandbox("s0", "gone", "u0", PodSandboxState::SandboxNotready),
        ];
        let containers = [
            container("c1", "s1", "app", ContainerState::ContainerRunning),
            container("c2", "s1", "init", ContainerState::ContainerExited),
        ];
        let now = Instant::now();
        let summary = stats.summary(&sandboxes, &containers, "2024-01-01T00:00:00Z", now);
        let doc = serde_json::to_value(&summary).unwrap_or_else(|e| panic!("{e}"));
        let node = &doc["node"];
        assert_eq!(node["nodeName"], "n0");
        assert_eq!(node["startTime"], "2023-11-14T22:13:20Z");
        assert_eq!(node["cpu"]["usageCoreNanoSeconds"], 2_000_000_000u64);
        assert!(node["cpu"].get("usageNanoCores").is_none());
        assert_eq!(node["memory"]["usageBytes"], 3000 * 1024);
        assert_eq!(node["memory"]["workingSetBytes"], 2000 * 1024);
        assert_eq!(node["memory"]["availableBytes"], 2000 * 1024);
        assert_eq!(node["network"]["name"], "eth0");
        assert_eq!(node["network"]["rxBytes"], 70);
        assert_eq!(node["network"]["txBytes"], 80);
        assert_eq!(
            node["network"]["interfaces"].as_array().map(Vec::len),
            Some(1)
        );
        assert!(node["fs"]["capacityBytes"].as_u64() > Some(0));
        assert!(node["fs"]["inodes"].is_u64());
        assert_eq!(node["systemContainers"][0]["name"], "pods");
        assert_eq!(node["systemContainers"][0]["memory"]["usageBytes"], 900_000);
        let pods = doc["pods"].as_array().cloned().unwrap_or_default();
        assert_eq!(pods.len(), 1, "{pods:?}");
        let pod = &pods[0];
        assert_eq!(
            pod["podRef"],
            serde_json::json!({"name": "web", "namespace": "default", "uid": "u1"})
        );
        assert_eq!(pod["startTime"], "2023-11-14T22:15:00Z");
        assert_eq!(pod["cpu"]["usageCoreNanoSeconds"], 2_000_000_000u64);
        assert_eq!(pod["memory"]["usageBytes"], 300_000);
        assert_eq!(pod["memory"]["workingSetBytes"], 200_000);
        assert_eq!(pod["memory"]["rssBytes"], 150_000);
        assert_eq!(pod["memory"]["availableBytes"], 800_000);
        assert_eq!(pod["network"]["rxBytes"], 70);
        assert_eq!(pod["process_stats"]["process_count"], 3);
        let listed: Vec<&Value> = pod["containers"].as_array().into_iter().flatten().collect();
        assert_eq!(listed.len(), 1, "only running containers: {listed:?}");
        assert_eq!(listed[0]["name"], "app");
        assert_eq!(listed[0]["startTime"], "2023-11-14T22:16:40Z");
        assert_eq!(listed[0]["cpu"]["usageCoreNanoSeconds"], 1_500_000_000u64);
        assert_eq!(listed[0]["memory"]["workingSetBytes"], 150_000);
        assert!(listed[0]["memory"].get("availableBytes").is_none());

        // A second later, the cpu counters have moved: rates.
        let pod_cpu = dir
            .path()
            .join("cg/cpu,cpuacct/node/kubepods/burstable/podu1/cpuacct.usage");
        std::fs::write(&pod_cpu, "2500000000").unwrap_or_else(|e| panic!("{e}"));
        let later = now + Duration::from_secs(2);
        let again = stats.summary(&sandboxes, &containers, "2024-01-01T00:00:02Z", later);
        assert_eq!(
            again.pods[0].cpu.as_ref().and_then(|c| c.usage_nano_cores),
            Some(250_000_000)
        );
        assert_eq!(
            again.pods[0].containers[0]
                .cpu
                .as_ref()
                .and_then(|c| c.usage_nano_cores),
            Some(0)
        );
        // Asked again within the window: the same rate, the sample kept.
        std::fs::write(&pod_cpu, "9999999999").unwrap_or_else(|e| panic!("{e}"));
        let soon = stats.summary(
            &sandboxes,
            &containers,
            "t",
            later + Duration::from_millis(10),
        );
        assert_eq!(
            soon.pods[0].cpu.as_ref().and_then(|c| c.usage_nano_cores),
            Some(250_000_000)
        );

        let trimmed = only_cpu_and_memory(again);
        assert!(trimmed.node.network.is_none() && trimmed.pods[0].network.is_none());
        assert!(trimmed.pods[0].memory.is_some());
    }

    #[test]
    fn samples_of_pods_gone_are_dropped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let stats = host(dir.path());
        let sandboxes = [sandbox("s1", "web", "u1", PodSandboxState::SandboxReady)];
        let containers = [container(
            "c1",
            "s1",
            "app",
            ContainerState::ContainerRunning,
        )];
        let now = Instant::now();
        stats.summary(&sandboxes, &containers, "t", now);
        let keys = |stats: &StatsProvider| {
            let mut keys: Vec<String> = stats
                .samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&stats),
            [
                "/node",
                "/node/kubepods",
                "/node/kubepods/burstable/podu1",
                "/node/kubepods/burstable/podu1/c1"
            ]
        );
        stats.summary(&[], &[], "t", now);
        assert_eq!(keys(&stats), ["/node", "/node/kubepods"]);
    }
}
