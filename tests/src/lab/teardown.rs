//! Removing a lab, found by its name alone: processes in its cgroups, mounts under its
//! directories, its namespaces (and with them every veth and bridge), its cgroups, its
//! directories. Also `gc`, which does this for every lab left by a killed run, and
//! [`leftovers`], which lists what of a lab still exists.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    host,
    paths::{LabPaths, CGROUP1_ROOT, CGROUP2_ROOT, DATA_ROOT, NETNS_DIR, PREFIX, RUN_ROOT},
};

/// How long processes may take to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(15);

/// Removes everything of lab `paths`; tolerant of pieces that are already gone. Every step
/// runs even if an earlier one failed; the first error is returned.
pub fn teardown(paths: &LabPaths) -> anyhow::Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |result: anyhow::Result<()>| {
        if let Err(err) = result {
            tracing::warn!("lab {} teardown: {err:#}", paths.name());
            first_error.get_or_insert(err);
        }
    };
    note(kill_processes(paths));
    note(unmount_all(paths));
    note(delete_namespaces(paths));
    note(remove_cgroups(paths));
    for dir in [paths.run_dir(), paths.data_dir()] {
        note(remove_dir(&dir));
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Kills every process in the lab's cgroups (v2 subtree and every v1 controller's subtree):
/// containerd, its shims and containers, and anything run inside a node. All of them were
/// started by the lab, which is what puts them there.
fn kill_processes(paths: &LabPaths) -> anyhow::Result<()> {
    // Remembered before the kill, so that those that are our children get reaped below.
    let mut seen = lab_pids(paths);
    let v2 = PathBuf::from(CGROUP2_ROOT).join(paths.cgroup_rel());
    if v2.exists() {
        fs::write(v2.join("cgroup.kill"), "1")
            .with_context(|| format!("killing the processes of {}", v2.display()))?;
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = lab_pids(paths);
        seen.extend(pids.iter().copied());
        for pid in &pids {
            host::signal(*pid, libc::SIGKILL)?;
        }
        // A killed process that is our own child stays a zombie, and keeps its cgroup busy,
        // until we reap it; other parents (init, for detached labs) reap their own.
        seen.retain(|pid| !host::reap_if_child(*pid));
        seen.retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if pids.is_empty() && seen.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "processes {:?} of the lab did not go away within {KILL_TIMEOUT:?}",
                pids.union(&seen).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes in any of the lab's cgroups.
pub fn lab_pids(paths: &LabPaths) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for root in cgroup_dirs(paths) {
        collect_procs(&root, &mut pids);
    }
    pids.retain(|pid| host::alive(*pid));
    pids
}

fn collect_procs(dir: &Path, pids: &mut BTreeSet<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(
            text.lines()
                .filter_map(|line| line.trim().parse::<u32>().ok()),
        );
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&entry.path(), pids);
            }
        }
    }
}

/// The lab's cgroup directories that exist, in v2 and in every v1 hierarchy.
fn cgroup_dirs(paths: &LabPaths) -> Vec<PathBuf> {
    let rel = paths.cgroup_rel();
    let mut dirs = vec![PathBuf::from(CGROUP2_ROOT).join(&rel)];
    if let Ok(entries) = fs::read_dir(CGROUP1_ROOT) {
        for entry in entries.flatten() {
            let hierarchy = entry.path();
            if hierarchy != Path::new(CGROUP2_ROOT) {
                dirs.push(hierarchy.join(&rel));
            }
        }
    }
    dirs.retain(|dir| dir.is_dir());
    dirs
}

fn unmount_all(paths: &LabPaths) -> anyhow::Result<()> {
    for dir in [paths.run_dir(), paths.data_dir()] {
        for point in host::mounts_under(&dir) {
            host::run("umount", &["--lazy", &point])?;
        }
    }
    Ok(())
}

fn delete_namespaces(paths: &LabPaths) -> anyhow::Result<()> {
    for netns in lab_namespaces(paths) {
        host::ip(&["netns", "delete", &netns])?;
    }
    Ok(())
}

/// Names of the lab's network namespaces that exist.
pub fn lab_namespaces(paths: &LabPaths) -> Vec<String> {
    let prefix = paths.netns_prefix();
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix(&prefix)
                .is_some_and(|rest| rest == "fabric" || is_node_suffix(rest))
        })
        .collect();
    names.sort();
    names
}

fn is_node_suffix(rest: &str) -> bool {
    rest.strip_prefix('n')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn remove_cgroups(paths: &LabPaths) -> anyhow::Result<()> {
    for dir in cgroup_dirs(paths) {
        remove_cgroup_tree(&dir)?;
        // The shared parent goes too once the last lab has left it.
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    Ok(())
}

fn remove_cgroup_tree(dir: &Path) -> anyhow::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    // cgroup directories are removed with rmdir; their control files go with them. A cgroup
    // whose last task has just died can stay busy for a moment.
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("removing cgroup {}", dir.display()))
            }
        }
    }
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", dir.display())),
    }
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// What of lab `name` still exists on the host, one line per thing; empty when it is gone.
pub fn leftovers(paths: &LabPaths) -> Vec<String> {
    let mut found = Vec::new();
    found.extend(
        lab_namespaces(paths)
            .into_iter()
            .map(|ns| format!("network namespace {ns}")),
    );
    found.extend(
        cgroup_dirs(paths)
            .into_iter()
            .map(|dir| format!("cgroup {}", dir.display())),
    );
    found.extend(
        lab_pids(paths)
            .into_iter()
            .map(|pid| format!("process {pid}")),
    );
    for dir in [paths.run_dir(), paths.data_dir()] {
        found.extend(
            host::mounts_under(&dir)
                .into_iter()
                .map(|point| format!("mount {point}")),
        );
        if dir.exists() {
            found.push(format!("directory {}", dir.display()));
        }
    }
    found
}

/// Names of every lab that has anything left on this host.
pub fn existing_labs() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for root in [RUN_ROOT, DATA_ROOT] {
        names.extend(dir_names(Path::new(root)));
    }
    names.extend(dir_names(&Path::new(CGROUP2_ROOT).join(PREFIX)));
    if let Ok(entries) = fs::read_dir(CGROUP1_ROOT) {
        for entry in entries.flatten() {
            names.extend(dir_names(&entry.path().join(PREFIX)));
        }
    }
    let prefix = format!("{PREFIX}-");
    for netns in dir_names(Path::new(NETNS_DIR)) {
        if let Some(rest) = netns.strip_prefix(&prefix) {
            if let Some((lab, node)) = rest.rsplit_once('-') {
                if node == "fabric" || is_node_suffix(node) {
                    names.insert(lab.to_owned());
                }
            }
        }
    }
    names
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) || dir == Path::new(NETNS_DIR))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Tears down every lab found on the host (`cargo xtask lab gc`); returns their names.
pub fn gc() -> anyhow::Result<Vec<String>> {
    gc_matching(|_| true)
}

/// Tears down the labs found on the host whose names `select` accepts.
pub fn gc_matching(select: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for name in existing_labs().into_iter().filter(|name| select(name)) {
        match teardown(&LabPaths::new(&name)) {
            Ok(()) => removed.push(name),
            Err(err) => failures.push(format!("{name}: {err:#}")),
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "could not remove: {}",
        failures.join("; ")
    );
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::is_node_suffix;

    #[test]
    fn node_suffixes() {
        assert!(is_node_suffix("n0"));
        assert!(is_node_suffix("n12"));
        assert!(!is_node_suffix("n"));
        assert!(!is_node_suffix("nx"));
        assert!(!is_node_suffix("fabric"));
    }
}
