//! `/metrics`: a few of upstream kubelet's metrics in the Prometheus text format (0.0.4):
//! `kubelet_node_name`, `kubelet_running_pods` (pods with a ready sandbox) and
//! `kubelet_running_containers` by `container_state` (every container the runtime holds,
//! counted as upstream's PLEG counts them), and the standard `process_*` metrics of the agent
//! from `/proc/self`; then what other parts of the agent render ([`MoreMetrics`]: the
//! service proxy's).
//!
//! Owns the metrics' names, help texts and rendering; it only reads.
use std::{collections::BTreeSet, fmt::Write as _, path::Path, sync::Arc};

use k8s_cri::v1::{Container, ContainerState, PodSandbox, PodSandboxState};

/// Metrics of another part of the agent, appended to the document by its own renderer.
#[derive(Clone)]
pub struct MoreMetrics(Arc<dyn Fn(&mut String) + Send + Sync>);

impl MoreMetrics {
    /// `render` appends complete metric families in the text format.
    pub fn new(render: impl Fn(&mut String) + Send + Sync + 'static) -> Self {
        Self(Arc::new(render))
    }

    /// Appends the metrics to `out`.
    pub fn render(&self, out: &mut String) {
        (self.0)(out);
    }
}

impl std::fmt::Debug for MoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MoreMetrics")
    }
}

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the runtime holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeCounts {
    /// Pods with a ready sandbox.
    pub running_pods: usize,
    /// Containers by state: created, running, exited, unknown.
    pub containers: [usize; 4],
}

/// Upstream's names of the container states, in [`RuntimeCounts::containers`] order.
const CONTAINER_STATES: [&str; 4] = ["created", "running", "exited", "unknown"];

/// Counts `sandboxes` (one per pod at most) and `containers`.
pub fn count(sandboxes: &[PodSandbox], containers: &[Container]) -> RuntimeCounts {
    let pods: BTreeSet<&str> = sandboxes
        .iter()
        .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
        .filter_map(|s| s.metadata.as_ref().map(|m| m.uid.as_str()))
        .collect();
    let mut counts = RuntimeCounts {
        running_pods: pods.len(),
        ..RuntimeCounts::default()
    };
    for container in containers {
        let index = match ContainerState::try_from(container.state) {
            Ok(ContainerState::ContainerCreated) => 0,
            Ok(ContainerState::ContainerRunning) => 1,
            Ok(ContainerState::ContainerExited) => 2,
            _ => 3,
        };
        counts.containers[index] += 1;
    }
    counts
}

/// The agent process's own metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessMetrics {
    /// user + system cpu seconds.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory in bytes.
    pub virtual_memory_bytes: u64,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The file descriptor limit.
    pub max_fds: Option<u64>,
}

impl ProcessMetrics {
    /// This process's, from `/proc`.
    pub fn of_self() -> Self {
        let sysconf = |var| {
            nix::unistd::sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .filter(|&v| v > 0)
        };
        let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100);
        let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096);
        Self::read(Path::new("/proc"), "self", ticks, page)
    }

    /// Process `pid`'s from the `/proc` at `proc`.
    pub fn read(proc: &Path, pid: &str, ticks_per_second: u64, page_size: u64) -> Self {
        let dir = proc.join(pid);
        let mut metrics = Self::default();
        let ticks = ticks_per_second.max(1) as f64;
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            // Fields after the command (which may hold spaces), numbered from 3 (state).
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let field = |n: usize| -> u64 {
                    fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0)
                };
                metrics.cpu_seconds = (field(14) + field(15)) as f64 / ticks;
                metrics.virtual_memory_bytes = field(23);
                metrics.resident_memory_bytes = field(24).saturating_mul(page_size);
                let boot = std::fs::read_to_string(proc.join("stat"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("btime "))
                            .and_then(|b| b.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                metrics.start_time_seconds = boot as f64 + field(22) as f64 / ticks;
            }
        }
        metrics.open_fds = std::fs::read_dir(dir.join("fd"))
            .ok()
            .map(|entries| entries.count() as u64);
        metrics.max_fds = std::fs::read_to_string(dir.join("limits"))
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find_map(|l| l.strip_prefix("Max open files"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
        metrics
    }
}

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics document.
pub fn render(node_name: &str, counts: &RuntimeCounts, process: &ProcessMetrics) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "kubelet_node_name",
        "gauge",
        "[ALPHA] The node's name. The count is always 1.",
    );
    let _ = writeln!(out, "kubelet_node_name{{node=\"{}\"}} 1", label(node_name));
    family(
        &mut out,
        "kubelet_running_containers",
        "gauge",
        "[ALPHA] Number of containers currently running",
    );
    for (state, n) in CONTAINER_STATES.iter().zip(counts.containers) {
        let _ = writeln!(
            out,
            "kubelet_running_containers{{container_state=\"{state}\"}} {n}"
        );
    }
    family(
        &mut out,
        "kubelet_running_pods",
        "gauge",
        "[ALPHA] Number of pods that have a running pod sandbox",
    );
    let _ = writeln!(out, "kubelet_running_pods {}", counts.running_pods);
    family(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    let _ = writeln!(out, "process_cpu_seconds_total {}", process.cpu_seconds);
    if let Some(max) = process.max_fds {
        family(
            &mut out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        let _ = writeln!(out, "process_max_fds {max}");
    }
    if let Some(open) = process.open_fds {
        family(
            &mut out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {open}");
    }
    family(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    let _ = writeln!(
        out,
        "process_resident_memory_bytes {}",
        process.resident_memory_bytes
    );
    family(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    let _ = writeln!(
        out,
        "process_start_time_seconds {}",
        process.start_time_seconds
    );
    family(
        &mut out,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
    );
    let _ = writeln!(
        out,
        "process_virtual_memory_bytes {}",
        process.virtual_memory_bytes
    );
    out
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::PodSandboxMetadata;

    use super::*;

    fn sandbox(uid: &str, state: PodSandboxState) -> PodSandbox {
        PodSandbox {
            metadata: Some(PodSandboxMetadata {
                uid: uid.to_owned(),
                ..Default::default()
            }),
            state: state as i32,
            ..Default::default()
        }
    }

    fn container(state: ContainerState) -> Container {
        Container {
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn pods_with_a_ready_sandbox_and_containers_by_state() {
        let sandboxes = [
            sandbox("a", PodSandboxState::SandboxReady),
            // An old sandbox of a pod with a ready one does not count twice.
            sandbox("a", PodSandboxState::SandboxNotready),
            sandbox("b", PodSandboxState::SandboxReady),
            sandbox("c", PodSandboxState::SandboxNotready),
        ];
        let containers = [
            container(ContainerState::ContainerRunning),
            container(ContainerState::ContainerRunning),
            container(ContainerState::ContainerExited),
            container(ContainerState::ContainerCreated),
            Container {
                state: 42,
                ..Default::default()
            },
        ];
        assert_eq!(
            count(&sandboxes, &containers),
            RuntimeCounts {
                running_pods: 2,
                containers: [1, 2, 1, 1],
            }
        );
    }

    #[test]
    fn the_text_format_names_every_sample() {
        let counts = RuntimeCounts {
            running_pods: 3,
            containers: [0, 4, 1, 0],
        };
        let process = ProcessMetrics {
            cpu_seconds: 1.5,
            resident_memory_bytes: 4096,
            virtual_memory_bytes: 8192,
            start_time_seconds: 1_700_000_000.25,
            open_fds: Some(9),
            max_fds: None,
        };
        let text = render("n\"0", &counts, &process);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "kubelet_node_name{node=\"n\\\"0\"} 1",
                "kubelet_running_containers{container_state=\"created\"} 0",
                "kubelet_running_containers{container_state=\"running\"} 4",
                "kubelet_running_containers{container_state=\"exited\"} 1",
                "kubelet_running_containers{container_state=\"unknown\"} 0",
                "kubelet_running_pods 3",
                "process_cpu_seconds_total 1.5",
                "process_open_fds 9",
                "process_resident_memory_bytes 4096",
                "process_start_time_seconds 1700000000.25",
                "process_virtual_memory_bytes 8192",
            ]
        );
        assert!(text.contains(
            "# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n\
             # TYPE kubelet_running_pods gauge\n"
        ));
        // Every sample's family has a TYPE line before it.
        for sample in &samples {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn process_metrics_from_proc() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let proc = dir.path();
        std::fs::create_dir_all(proc.join("7/fd")).unwrap_or_else(|e| panic!("{e}"));
        for fd in ["0", "1", "2"] {
            std::fs::write(proc.join("7/fd").join(fd), "").unwrap_or_else(|e| panic!("{e}"));
        }
        // Fields 3.. after the command: state ppid pgrp session tty tpgid flags minflt
        // cminflt majflt cmajflt utime(14) stime(15) cutime cstime priority nice threads
        // itrealvalue starttime(22) vsize(23) rss(24).
        std::fs::write(
            proc.join("7/stat"),
            "7 (corten agent) S 1 7 7 0 -1 0 0 0 0 0 150 50 0 0 20 0 4 0 500 1000000 25 rest",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            proc.join("7/limits"),
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max open files            1024                 4096                 files\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(proc.join("stat"), "cpu 1 2 3\nbtime 1700000000\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = ProcessMetrics::read(proc, "7", 100, 4096);
        assert_eq!(
            metrics,
            ProcessMetrics {
                cpu_seconds: 2.0,
                resident_memory_bytes: 25 * 4096,
                virtual_memory_bytes: 1_000_000,
                start_time_seconds: 1_700_000_005.0,
                open_fds: Some(3),
                max_fds: Some(1024),
            }
        );
    }
}
