//! A lab node's corten-agent: started inside the node (its network namespace and cgroup)
//! against the lab's API server with the node's own kubeconfig, containerd, CNI dirs and
//! cgroup; its data directory on a tmpfs of its own when a test asks for one; and whether it
//! is still running, with its log's end when it is not.
//!
//! It must not decide whether a dead agent is a failure: the lab reports, a test decides.
use std::{
    fs,
    path::Path,
    process::{Child, Command},
};

use anyhow::Context;

use super::{
    host,
    paths::{node_ip, node_name, server_url, LabPaths},
    process,
};

/// Starts node `i`'s agent, with `extra_args` after the lab's own. With `detach`, it
/// outlives the calling process.
pub fn start(
    paths: &LabPaths,
    i: usize,
    agent: &Path,
    network: super::NetworkMode,
    extra_args: &[String],
    detach: bool,
) -> anyhow::Result<Child> {
    let data = paths.agent_data_dir(i);
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let mut command = Command::new(agent);
    command
        .args(["--server", &server_url()])
        .arg("--kubeconfig")
        .arg(paths.agent_kubeconfig(i))
        .args(["--node-name", &node_name(i)])
        .arg("--container-runtime-endpoint")
        .arg(format!("unix://{}", paths.containerd_socket(i).display()))
        .arg("--data-dir")
        .arg(&data)
        .arg("--cni-bin-dir")
        .arg(paths.node_cni_bin_dir(i))
        .arg("--cni-conf-dir")
        .arg(paths.node_cni_conf_dir(i))
        .args(["--node-ip", &node_ip(i).to_string()])
        .args(["--network", &network.to_string()])
        .args(["--cgroup-root", &paths.node_cgroup_path(i)])
        // The service proxy's socket programs attach to the node's own cgroup (never the
        // root one) and pin their maps on the node's own bpffs.
        .arg("--socket-lb-cgroup")
        .arg(paths.node_cgroup2(i))
        .arg("--bpffs-pin-dir")
        .arg(paths.node_bpffs(i))
        .args(extra_args);
    // As kind does for its nodes: no eviction or image collection because the host's disk is
    // full (a lab's images cannot be pulled back); tests of those pass their own thresholds.
    let given = |flag: &str| {
        extra_args.iter().any(|a| {
            a == flag
                || a.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    };
    if !given("--eviction-hard") {
        command.args(["--eviction-hard", "memory.available<100Mi"]);
    }
    if !given("--image-gc-high-threshold") {
        command.args(["--image-gc-high-threshold", "100"]);
    }
    host::enter(
        &mut command,
        &paths.node_netns(i),
        Some(&paths.node_cgroup2(i)),
        detach,
    )?;
    process::spawn(command, &paths.agent_log(i), &paths.agent_pid_file(i))
}

/// Mounts a tmpfs of `mib` MiB at node `i`'s agent data directory, so that the agent's node
/// filesystem is the lab's own and of a known size. It lives under the lab's data dir, so
/// teardown (and `gc`) unmount it with the lab's other mounts.
pub fn mount_data_dir(paths: &LabPaths, i: usize, mib: u64) -> anyhow::Result<()> {
    let data = paths.agent_data_dir(i);
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let options = format!("size={mib}m,mode=0755");
    host::run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &options,
            "tmpfs",
            &data.to_string_lossy(),
        ],
    )
    .with_context(|| format!("mounting a {mib} MiB tmpfs at {}", data.display()))?;
    Ok(())
}

/// Whether node `i`'s agent is running (alive, in the node's cgroup).
pub fn is_running(paths: &LabPaths, i: usize) -> bool {
    process::running(&paths.agent_pid_file(i), &paths.node_cgroup_path(i)).is_some()
}

/// Why node `i`'s agent is not running, with the end of its log; `None` while it runs.
pub fn not_running(paths: &LabPaths, i: usize) -> Option<String> {
    if is_running(paths, i) {
        return None;
    }
    let log = paths.agent_log(i);
    Some(format!(
        "corten-agent of node {i} ({}) is not running; the end of {}:\n{}",
        node_name(i),
        log.display(),
        process::tail(&log, 20)
    ))
}
