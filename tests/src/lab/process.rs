//! The lab's long-running programs inside nodes (corten-server, corten-agent): started with
//! their output in a log file and their PID in a pid file, checked for life, and the last
//! lines of their logs for error messages.
//!
//! It never ends a process: they run in their node's cgroup, where teardown finds and kills
//! them by PID (also after the process that started them crashed).
use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::Context;

use super::host;

/// Starts `command` (already set up to enter its node) with stdout and stderr appended to
/// `log`, and writes its PID to `pid_file`.
pub fn spawn(mut command: Command, log: &Path, pid_file: &Path) -> anyhow::Result<Child> {
    let program = command.get_program().to_string_lossy().into_owned();
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("duplicating the log file")?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    fs::write(pid_file, child.id().to_string())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    Ok(child)
}

/// The PID in `pid_file` if that process is alive and inside the cgroup `cgroup_path` (so a
/// reused PID is never taken for it); `None` otherwise.
pub fn running(pid_file: &Path, cgroup_path: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    (host::alive(pid) && in_cgroup(&cgroups, cgroup_path)).then_some(pid)
}

/// Whether a `/proc/PID/cgroup` text puts the process at or below `cgroup_path` in the
/// cgroup v2 hierarchy (its `0::` line).
fn in_cgroup(proc_cgroup: &str, cgroup_path: &str) -> bool {
    let base = cgroup_path.trim_end_matches('/');
    proc_cgroup
        .lines()
        .filter_map(|line| line.strip_prefix("0::"))
        .any(|path| {
            path == cgroup_path
                || path
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// The last `lines` lines of a log, for error messages (empty if it cannot be read).
pub fn tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_membership_is_by_path_prefix() {
        let proc_cgroup = "12:pids:/corten-lab/t/n1\n0::/corten-lab/t/n1/kubepods\n";
        assert!(in_cgroup(proc_cgroup, "/corten-lab/t/n1"));
        assert!(!in_cgroup(proc_cgroup, "/corten-lab/t/n"));
        assert!(!in_cgroup(proc_cgroup, "/corten-lab/t/n0"));
        assert!(!in_cgroup("12:pids:/corten-lab/t/n1\n", "/corten-lab/t/n1"));
        assert!(in_cgroup(proc_cgroup, "/"));
    }

    #[test]
    fn tail_keeps_the_last_lines() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("x.log");
        fs::write(&log, "a\nb\nc\n")?;
        assert_eq!(tail(&log, 2), "b\nc");
        assert_eq!(tail(&log, 10), "a\nb\nc");
        assert_eq!(tail(&dir.path().join("missing"), 3), "");
        Ok(())
    }

    #[test]
    fn a_process_outside_the_cgroup_is_not_running() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join("x.pid");
        // This test process is alive but not in any lab cgroup.
        fs::write(&pid_file, std::process::id().to_string())?;
        assert_eq!(running(&pid_file, "/corten-lab/none/n0"), None);
        assert_eq!(running(&dir.path().join("missing.pid"), "/"), None);
        Ok(())
    }
}
