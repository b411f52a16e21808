//! corten-agent's kubelet in a one-node lab with its control plane, driven by real kubectl
//! inside the node: the node registers and turns Ready, a ReplicaSet of the busybox image
//! serving HTTP gets Running pods with IPs from the node's pod CIDR, a pod reaches another
//! pod by IP, a crashing container is restarted with CrashLoopBackOff in between, a missing
//! image with pull policy Never reports ErrImageNeverPull, and deleted pods leave no sandbox
//! (no pod veth) behind.
//!
//! Safety: everything runs inside the lab's namespaces; every wait is bounded.

use anyhow::ensure;
use corten_tests::{
    kubectl::{apply, eventually, json, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE},
};

fn pod_veths(lab: &Lab) -> anyhow::Result<usize> {
    let output = lab.command(0, "ip")?.args(["-br", "link"]).output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("ctn"))
        .count())
}

#[test]
fn the_kubelet_runs_pods_through_containerd() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::for_test(&format!("kubelet-{}", std::process::id()), 1);
    spec.control_plane = true;
    let lab = Lab::up(spec)?;
    let node = lab.node_name(0);

    let cidr = eventually(&lab, "the node to be Ready with a pod CIDR", || {
        let node = json(&lab, &["get", "node", &node])?;
        let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        let cidr = node["spec"]["podCIDR"].as_str().map(str::to_owned);
        Ok(cidr.filter(|_| ready))
    })?;
    let prefix = cidr.trim_end_matches("0/24").to_owned();

    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {{"name": "web"}},
            "spec": {{"replicas": 2, "selector": {{"matchLabels": {{"app": "web"}}}},
              "template": {{"metadata": {{"labels": {{"app": "web"}}}},
                "spec": {{"containers": [{{"name": "httpd", "image": "{BUSYBOX_IMAGE}",
                  "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"],
                  "ports": [{{"containerPort": 8080}}]}}]}}}}}}}}"#
        ),
    )?;
    let ips = eventually(&lab, "two Running pods with IPs", || {
        let pods = json(&lab, &["get", "pods", "-l", "app=web"])?;
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let running: Vec<String> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
            .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
            .collect();
        Ok((items.len() == 2 && running.len() == 2).then_some(running))
    })?;
    ensure!(
        ips.iter().all(|ip| ip.starts_with(&prefix)),
        "{ips:?} not in {cidr}"
    );

    // A pod reaches another by IP.
    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "probe"}},
            "spec": {{"restartPolicy": "Never", "containers": [{{"name": "wget", "image": "{BUSYBOX_IMAGE}",
              "command": ["wget", "-q", "-O", "/dev/null", "http://{}:8080/hostname"]}}]}}}}"#,
            ips[0]
        ),
    )?;
    let phase = eventually(&lab, "the probe to finish", || {
        let pod = json(&lab, &["get", "pod", "probe"])?;
        let phase = pod["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
    })?;
    ensure!(
        phase == "Succeeded",
        "the probe pod could not reach {}",
        ips[0]
    );

    // A crashing container restarts, with CrashLoopBackOff between attempts.
    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "crasher"}},
            "spec": {{"containers": [{{"name": "c", "image": "{BUSYBOX_IMAGE}", "command": ["sh", "-c", "exit 3"]}}]}}}}"#
        ),
    )?;
    eventually(&lab, "CrashLoopBackOff after a restart", || {
        let pod = json(&lab, &["get", "pod", "crasher"])?;
        let status = &pod["status"]["containerStatuses"][0];
        let restarts = status["restartCount"].as_i64().unwrap_or(0);
        let waiting = status["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        let last_exit = status["lastState"]["terminated"]["exitCode"] == 3;
        Ok((restarts >= 1 && waiting && last_exit).then_some(()))
    })?;

    // A missing image that may not be pulled.
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "never"},
          "spec": {"containers": [{"name": "c", "image": "corten.local/missing:1", "imagePullPolicy": "Never"}]}}"#,
    )?;
    eventually(&lab, "ErrImageNeverPull", || {
        let pod = json(&lab, &["get", "pod", "never"])?;
        Ok(
            (pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "ErrImageNeverPull")
                .then_some(()),
        )
    })?;

    // Deleting everything leaves no pod sandbox behind.
    kubectl(&lab, &["delete", "replicaset", "web", "--wait=false"])?;
    kubectl(
        &lab,
        &["delete", "pod", "probe", "crasher", "never", "--wait=false"],
    )?;
    eventually(&lab, "every pod and its veth to be gone", || {
        let pods = json(&lab, &["get", "pods"])?;
        let none = pods["items"].as_array().is_some_and(Vec::is_empty);
        Ok((none && pod_veths(&lab)? == 0).then_some(()))
    })?;
    lab.down()?;
    Ok(())
}
