//! A lab's control plane: corten-server inside node 0 (its network namespace and cgroup),
//! bound to node 0's address with its data under the lab's data dir; its admin kubeconfig
//! copied into the lab's run dir once the API answers; a kubeconfig per node issued by
//! `corten-server issue-kubeconfig`; and kubectl run inside a node.
//!
//! The API is reachable only from inside the lab's namespaces, so every request here is made
//! by a kubectl inside a node; nothing is added to the root namespace to reach it.
use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    host,
    paths::{node_ip, node_name, server_url, LabPaths, API_PORT},
    process,
};

/// How long corten-server may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Starts corten-server in node 0. With `detach`, it outlives the calling process.
pub fn start_server(paths: &LabPaths, server: &Path, detach: bool) -> anyhow::Result<Child> {
    let data = paths.server_data_dir();
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let address = node_ip(0).to_string();
    let mut command = Command::new(server);
    command
        .arg("--data-dir")
        .arg(&data)
        .args(["--bind-address", &address])
        .args(["--https-port", &API_PORT.to_string()])
        .args(["--tls-san", &address]);
    host::enter(
        &mut command,
        &paths.node_netns(0),
        Some(&paths.node_cgroup2(0)),
        detach,
    )?;
    process::spawn(command, &paths.server_log(), &paths.server_pid_file())
}

/// kubectl inside node `i` (its network namespace and cgroup) with `kubeconfig`.
pub fn kubectl(
    paths: &LabPaths,
    i: usize,
    kubectl: &Path,
    kubeconfig: &Path,
) -> anyhow::Result<Command> {
    let mut command = Command::new(kubectl);
    command.arg("--kubeconfig").arg(kubeconfig);
    host::enter(
        &mut command,
        &paths.node_netns(i),
        Some(&paths.node_cgroup2(i)),
        false,
    )?;
    Ok(command)
}

/// Waits until the server answers `/readyz` to kubectl in node 0, then copies its admin
/// kubeconfig to [`LabPaths::admin_kubeconfig`]. Fails early, with the server's log, if the
/// server exits.
pub fn wait_ready(paths: &LabPaths, server: &mut Child, kubectl_bin: &Path) -> anyhow::Result<()> {
    let written = paths.server_data_dir().join("admin.kubeconfig");
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_answer = String::from("no kubeconfig yet");
    loop {
        if let Some(status) = server.try_wait().context("polling corten-server")? {
            bail!(
                "corten-server exited ({status}) before serving; the end of {}:\n{}",
                paths.server_log().display(),
                process::tail(&paths.server_log(), 30)
            );
        }
        if written.is_file() {
            let probe = kubectl(paths, 0, kubectl_bin, &written)?
                .args(["get", "--raw", "/readyz", "--request-timeout", "2s"])
                .output()
                .context("running kubectl in node 0")?;
            if probe.status.success() && String::from_utf8_lossy(&probe.stdout).trim() == "ok" {
                fs::copy(&written, paths.admin_kubeconfig())
                    .context("copying the admin kubeconfig into the lab's run dir")?;
                return Ok(());
            }
            last_answer = describe(&probe);
        }
        if Instant::now() > deadline {
            bail!(
                "corten-server did not answer /readyz on {} within {READY_TIMEOUT:?} \
                 (last answer: {last_answer}); the end of {}:\n{}",
                server_url(),
                paths.server_log().display(),
                process::tail(&paths.server_log(), 30)
            );
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Issues node `i`'s kubeconfig (`system:node:NAME`) from the server's CA, offline.
pub fn issue_node_kubeconfig(paths: &LabPaths, server: &Path, i: usize) -> anyhow::Result<()> {
    let out = Command::new(server)
        .arg("--data-dir")
        .arg(paths.server_data_dir())
        .arg("issue-kubeconfig")
        .args(["--node-name", &node_name(i)])
        .args(["--server", &server_url()])
        .arg("--out")
        .arg(paths.agent_kubeconfig(i))
        .env("RUST_LOG", "warn")
        .output()
        .context("running corten-server issue-kubeconfig")?;
    if !out.status.success() {
        bail!(
            "corten-server issue-kubeconfig for node {i} failed: {}",
            describe(&out)
        );
    }
    Ok(())
}

/// The names in `expected` whose Node in `list` (a NodeList as JSON) is missing or lacks a
/// `Ready` condition with status `True`.
pub fn not_ready(list: &serde_json::Value, expected: &BTreeSet<String>) -> BTreeSet<String> {
    let ready: BTreeSet<&str> = list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|node| {
            node["status"]["conditions"]
                .as_array()
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .filter_map(|node| node["metadata"]["name"].as_str())
        .collect();
    expected
        .iter()
        .filter(|name| !ready.contains(name.as_str()))
        .cloned()
        .collect()
}

/// A command's exit status and output, for error messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim(),
        String::from_utf8_lossy(&output.stdout).trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_nodes_with_ready_true_are_ready() {
        let list = json!({"items": [
            {"metadata": {"name": "n0"}, "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "n1"}, "status": {"conditions": [
                {"type": "Ready", "status": "Unknown"}]}},
            {"metadata": {"name": "other"}, "status": {"conditions": [
                {"type": "Ready", "status": "True"}]}},
        ]});
        let expected: BTreeSet<String> = ["n0", "n1", "n2"].map(str::to_owned).into();
        let waiting: Vec<String> = not_ready(&list, &expected).into_iter().collect();
        assert_eq!(waiting, ["n1", "n2"]);
        assert_eq!(not_ready(&json!({}), &expected), expected);
    }
}
