//! What the kernel accounts, as the kubelet's stats read it: a cgroup's cpu time and memory
//! (cgroup v1 `cpuacct.usage` and `memory.usage_in_bytes`/`memory.stat` on v1 and hybrid
//! hosts, `cpu.stat` and `memory.current`/`memory.stat` on a pure v2 host; the working set is
//! the usage less the inactive file pages, as cAdvisor computes it), its processes, and the
//! node's totals from `/proc` (`stat`, `meminfo`, `vmstat`, `net/dev`, `loadavg`).
//!
//! Owns parsing those files; it only reads. Both roots are parameters, so tests run on
//! files they wrote.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::kubelet::pod_cgroups;

/// A cgroup v1 memory limit above this is no limit (cAdvisor's bound).
const UNLIMITED_MEMORY: u64 = 1 << 62;

/// One cgroup's (or the node's) memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Everything charged, page cache included.
    pub usage: u64,
    /// The usage less the inactive file pages.
    pub working_set: u64,
    /// Anonymous and swap cache memory.
    pub rss: u64,
    /// Minor page faults so far.
    pub page_faults: u64,
    /// Major page faults so far.
    pub major_page_faults: u64,
    /// The limit, when there is one.
    pub limit: Option<u64>,
}

impl MemoryUsage {
    /// The limit less the working set, when there is a limit.
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }
}

/// One network interface's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceCounters {
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

/// `key value` lines (`memory.stat`, `cpu.stat`, `/proc/vmstat`).
fn key_values(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?, parts.next()?.parse().ok()?))
        })
        .collect()
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The cgroup filesystems of a host.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    v2: bool,
}

impl Cgroups {
    /// This host's (`/sys/fs/cgroup`).
    pub fn host() -> Self {
        Self::at(Path::new(pod_cgroups::CGROUP_FS))
    }

    /// The cgroup filesystems mounted under `root`.
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            v2: pod_cgroups::pure_v2(root),
        }
    }

    /// The directory of `cgroup` in the hierarchy of `controller` (the unified one on v2).
    fn dir(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        let base = if self.v2 {
            self.root.clone()
        } else {
            pod_cgroups::v1_dir(&self.root, controller)?
        };
        Some(base.join(cgroup.trim_start_matches('/')))
    }

    /// Whether `cgroup` exists (in the memory hierarchy on v1).
    pub fn exists(&self, cgroup: &str) -> bool {
        self.dir("memory", cgroup).is_some_and(|d| d.is_dir())
    }

    /// The cpu time `cgroup` used, in nanoseconds.
    pub fn cpu_usage_ns(&self, cgroup: &str) -> Option<u64> {
        if self.v2 {
            let stat = read(&self.dir("cpu", cgroup)?.join("cpu.stat"))?;
            return key_values(&stat)
                .get("usage_usec")
                .map(|us| us.saturating_mul(1000));
        }
        read_u64(&self.dir("cpuacct", cgroup)?.join("cpuacct.usage"))
    }

    /// `cgroup`'s memory.
    pub fn memory(&self, cgroup: &str) -> Option<MemoryUsage> {
        let dir = self.dir("memory", cgroup)?;
        let stat = read(&dir.join("memory.stat"))?;
        if self.v2 {
            let usage = read_u64(&dir.join("memory.current"))?;
            let limit = read(&dir.join("memory.max")).and_then(|m| m.trim().parse().ok());
            Some(memory_usage(usage, &stat, limit, ""))
        } else {
            let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
            let limit = read_u64(&dir.join("memory.limit_in_bytes"));
            Some(memory_usage(usage, &stat, limit, "total_"))
        }
    }

    /// The processes in `cgroup` itself (not its children).
    pub fn processes(&self, cgroup: &str) -> Vec<u32> {
        self.dir("memory", cgroup)
            .and_then(|d| read(&d.join("cgroup.procs")))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// How many tasks `cgroup` and its children hold (the pids controller's count).
    pub fn tasks(&self, cgroup: &str) -> Option<u64> {
        read_u64(&self.dir("pids", cgroup)?.join("pids.current"))
    }
}

/// Memory from a cgroup's usage, its `memory.stat` (whose hierarchical counters start with
/// `prefix` on v1) and its limit.
fn memory_usage(usage: u64, stat: &str, limit: Option<u64>, prefix: &str) -> MemoryUsage {
    let stat = key_values(stat);
    let get = |key: &str| stat.get(format!("{prefix}{key}").as_str()).copied();
    let rss_key = if prefix.is_empty() { "anon" } else { "rss" };
    MemoryUsage {
        usage,
        working_set: usage.saturating_sub(get("inactive_file").unwrap_or(0)),
        rss: get(rss_key).unwrap_or(0),
        page_faults: get("pgfault").unwrap_or(0),
        major_page_faults: get("pgmajfault").unwrap_or(0),
        limit: limit.filter(|&l| l > 0 && l <= UNLIMITED_MEMORY),
    }
}

/// The node's `/proc`.
#[derive(Debug, Clone)]
pub struct Proc {
    root: PathBuf,
    ticks_per_second: u64,
}

impl Proc {
    /// This host's `/proc`.
    pub fn host() -> Self {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or(100);
        Self::at(Path::new("/proc"), ticks)
    }

    /// A `/proc` at `root` whose clock ticks `ticks_per_second` times a second.
    pub fn at(root: &Path, ticks_per_second: u64) -> Self {
        Self {
            root: root.to_path_buf(),
            ticks_per_second: ticks_per_second.max(1),
        }
    }

    /// The cpu time all cpus spent busy, in nanoseconds (`/proc/stat`: user, nice, system,
    /// irq, softirq and steal).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        let stat = read(&self.root.join("stat"))?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().unwrap_or(0))
            .collect();
        let busy: u64 = [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| ticks.get(i))
            .sum();
        Some(busy.saturating_mul(1_000_000_000) / self.ticks_per_second)
    }

    /// When the node booted, in seconds since the epoch.
    pub fn boot_time(&self) -> Option<i64> {
        read(&self.root.join("stat"))?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }

    /// The node's memory: used is total less free, the working set that less the inactive
    /// file pages, its limit the total.
    pub fn memory(&self) -> Option<MemoryUsage> {
        let meminfo = read(&self.root.join("meminfo"))?;
        let kib: HashMap<&str, u64> = meminfo
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                Some((
                    key,
                    value.split_whitespace().next()?.parse::<u64>().ok()? * 1024,
                ))
            })
            .collect();
        let total = *kib.get("MemTotal")?;
        let usage = total.saturating_sub(kib.get("MemFree").copied().unwrap_or(0));
        let vmstat = read(&self.root.join("vmstat")).unwrap_or_default();
        let vm = key_values(&vmstat);
        Some(MemoryUsage {
            usage,
            working_set: usage.saturating_sub(kib.get("Inactive(file)").copied().unwrap_or(0)),
            rss: kib.get("AnonPages").copied().unwrap_or(0),
            page_faults: vm.get("pgfault").copied().unwrap_or(0),
            major_page_faults: vm.get("pgmajfault").copied().unwrap_or(0),
            limit: Some(total),
        })
    }

    /// The interfaces (loopback left out) of the network namespace of process `pid`
    /// (`self` for this one).
    pub fn interfaces(&self, pid: &str) -> Vec<InterfaceCounters> {
        read(&self.root.join(pid).join("net/dev"))
            .map(|text| parse_net_dev(&text))
            .unwrap_or_default()
    }

    /// The most process IDs and how many tasks exist now (`pid_max`, `loadavg`).
    pub fn pid_counts(&self) -> (Option<i64>, Option<i64>) {
        let max = read(&self.root.join("sys/kernel/pid_max")).and_then(|t| t.trim().parse().ok());
        let current = read(&self.root.join("loadavg"))
            .and_then(|t| t.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok());
        (max, current)
    }
}

/// The interfaces of a `/proc/net/dev`, loopback left out.
fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let values: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            if name == "lo" || values.len() < 11 {
                return None;
            }
            Some(InterfaceCounters {
                name: name.to_owned(),
                rx_bytes: values[0],
                rx_errors: values[2],
                tx_bytes: values[8],
                tx_errors: values[10],
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a file under a fake cgroup or proc root, making its directories.
    pub(crate) fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn v1_cgroups_give_cpu_and_a_working_set() {
        let fs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = fs.path();
        write(root, "cpu,cpuacct/k/pod1/cpuacct.usage", "123456789\n");
        write(root, "memory/k/pod1/memory.usage_in_bytes", "10000000\n");
        write(
            root,
            "memory/k/pod1/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            root,
            "memory/k/pod1/memory.stat",
            "cache 1\nrss 2\ninactive_file 3\ntotal_cache 4000\ntotal_rss 6000000\n\
             total_inactive_file 3000000\ntotal_pgfault 77\ntotal_pgmajfault 5\n",
        );
        write(root, "memory/k/pod1/cgroup.procs", "12\n34\n");
        write(root, "pids/k/pod1/pids.current", "3\n");
        let cgroups = Cgroups::at(root);
        assert!(cgroups.exists("/k/pod1"));
        assert!(!cgroups.exists("/k/pod2"));
        assert_eq!(cgroups.cpu_usage_ns("/k/pod1"), Some(123_456_789));
        let memory = cgroups
            .memory("/k/pod1")
            .unwrap_or_else(|| panic!("no memory"));
        assert_eq!(
            memory,
            MemoryUsage {
                usage: 10_000_000,
                working_set: 7_000_000,
                rss: 6_000_000,
                page_faults: 77,
                major_page_faults: 5,
                limit: None,
            }
        );
        assert_eq!(memory.available(), None);
        assert_eq!(cgroups.processes("/k/pod1"), [12, 34]);
        assert_eq!(cgroups.tasks("/k/pod1"), Some(3));
        // A limit gives what is available; more inactive file pages than usage: none used.
        write(root, "memory/k/pod1/memory.limit_in_bytes", "16000000\n");
        write(
            root,
            "memory/k/pod1/memory.stat",
            "total_inactive_file 20000000\n",
        );
        let limited = cgroups
            .memory("/k/pod1")
            .unwrap_or_else(|| panic!("no memory"));
        assert_eq!(limited.working_set, 0);
        assert_eq!(limited.available(), Some(16_000_000));
    }

    #[test]
    fn v2_cgroups_use_the_unified_files() {
        let fs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = fs.path();
        write(root, "cgroup.controllers", "cpu memory pids\n");
        write(root, "k/pod1/cpu.stat", "usage_usec 2500\nuser_usec 2000\n");
        write(root, "k/pod1/memory.current", "5000\n");
        write(root, "k/pod1/memory.max", "max\n");
        write(
            root,
            "k/pod1/memory.stat",
            "anon 3000\ninactive_file 1000\npgfault 9\n",
        );
        let cgroups = Cgroups::at(root);
        assert_eq!(cgroups.cpu_usage_ns("k/pod1"), Some(2_500_000));
        let memory = cgroups
            .memory("k/pod1")
            .unwrap_or_else(|| panic!("no memory"));
        assert_eq!(
            (memory.usage, memory.working_set, memory.rss),
            (5000, 4000, 3000)
        );
        assert_eq!((memory.page_faults, memory.limit), (9, None));
        write(root, "k/pod1/memory.max", "8000\n");
        let limited = cgroups
            .memory("k/pod1")
            .unwrap_or_else(|| panic!("no memory"));
        assert_eq!(limited.available(), Some(4000));
    }

    #[test]
    fn the_node_from_proc() {
        let fs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = fs.path();
        write(
            root,
            "stat",
            "cpu  100 20 30 5000 40 1 2 3 0 0\ncpu0 50 10 15 2500 20 1 1 2 0 0\nbtime 1700000000\n",
        );
        write(
            root,
            "meminfo",
            "MemTotal:       1000 kB\nMemFree:         200 kB\nInactive(file):  300 kB\n\
             AnonPages:       250 kB\n",
        );
        write(root, "vmstat", "pgfault 11\npgmajfault 2\n");
        write(
            root,
            "self/net/dev",
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  \
             eth0:    1000      10    1    0    0     0          0         0     2000      20    2    0    0     0       0          0\n",
        );
        write(root, "sys/kernel/pid_max", "4194304\n");
        write(root, "loadavg", "0.10 0.20 0.30 2/345 6789\n");
        let proc = Proc::at(root, 100);
        // user + nice + system + irq + softirq + steal = 156 ticks of 10 ms.
        assert_eq!(proc.cpu_usage_ns(), Some(1_560_000_000));
        assert_eq!(proc.boot_time(), Some(1_700_000_000));
        let memory = proc.memory().unwrap_or_else(|| panic!("no memory"));
        assert_eq!(memory.usage, 800 * 1024);
        assert_eq!(memory.working_set, 500 * 1024);
        assert_eq!(memory.rss, 250 * 1024);
        assert_eq!(memory.available(), Some(500 * 1024));
        assert_eq!((memory.page_faults, memory.major_page_faults), (11, 2));
        assert_eq!(
            proc.interfaces("self"),
            [InterfaceCounters {
                name: "eth0".to_owned(),
                rx_bytes: 1000,
                rx_errors: 1,
                tx_bytes: 2000,
                tx_errors: 2,
            }]
        );
        assert_eq!(proc.pid_counts(), (Some(4_194_304), Some(345)));
    }
}
