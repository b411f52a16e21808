//! Pod network checks shared by the network tests (`pod_network`, `bgp_network`): what the
//! Nodes say about each node's address and pod CIDR, a command's output inside a node, a
//! Deployment of busybox httpd with one pod per node, and whether a pod on every node reaches
//! every one of those servers by IP.
//!
//! Owns nothing but these conveniences; every wait is bounded ([`eventually`]).
use std::{collections::BTreeMap, time::Duration};

use anyhow::{ensure, Context};

use crate::{
    kubectl::{apply, eventually, json, kubectl},
    lab::{build_project_binaries, Lab, LabSpec, BUSYBOX_IMAGE},
};

/// The annotation in which an agent publishes its VTEP MAC.
pub const VTEP_ANNOTATION: &str = "network.corten.dev/vtep-mac";

/// Builds the project's binaries and brings up `spec` with its control plane; returns once
/// every Node is Ready (at most 90 s).
pub fn cluster_lab(mut spec: LabSpec) -> anyhow::Result<Lab> {
    build_project_binaries()?;
    spec.control_plane = true;
    let lab = Lab::up(spec)?;
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;
    Ok(lab)
}

/// What the control plane and the agents published about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Its InternalIP.
    pub ip: String,
    /// Its `spec.podCIDR`.
    pub cidr: String,
    /// Its VTEP MAC annotation, once its agent published one.
    pub vtep: Option<String>,
}

/// Every Node that has an InternalIP and a pod CIDR, by name.
pub fn node_facts(lab: &Lab) -> anyhow::Result<BTreeMap<String, NodeFacts>> {
    let nodes = json(lab, &["get", "nodes"])?;
    let mut facts = BTreeMap::new();
    for node in nodes["items"].as_array().into_iter().flatten() {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let ip = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str());
        let cidr = node["spec"]["podCIDR"].as_str();
        if let (Some(ip), Some(cidr)) = (ip, cidr) {
            facts.insert(
                name.to_owned(),
                NodeFacts {
                    ip: ip.to_owned(),
                    cidr: cidr.to_owned(),
                    vtep: node["metadata"]["annotations"][VTEP_ANNOTATION]
                        .as_str()
                        .map(str::to_owned),
                },
            );
        }
    }
    Ok(facts)
}

/// A command's stdout inside node `i`.
pub fn on_node(lab: &Lab, i: usize, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = lab
        .command(i, program)?
        .args(args)
        .output()
        .with_context(|| format!("running {program} on node {i}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?} on node {i}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A Deployment of busybox httpd, one pod per node; the pod IPs by node name.
pub fn deploy_servers(lab: &Lab) -> anyhow::Result<BTreeMap<String, String>> {
    let nodes = lab.nodes();
    apply(
        lab,
        &format!(
            r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "web"}},
            "spec": {{"replicas": {nodes}, "selector": {{"matchLabels": {{"app": "web"}}}},
              "template": {{"metadata": {{"labels": {{"app": "web"}}}},
                "spec": {{
                  "affinity": {{"podAntiAffinity": {{"requiredDuringSchedulingIgnoredDuringExecution": [
                    {{"labelSelector": {{"matchLabels": {{"app": "web"}}}}, "topologyKey": "kubernetes.io/hostname"}}]}}}},
                  "containers": [{{"name": "httpd", "image": "{BUSYBOX_IMAGE}",
                  "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"],
                  "ports": [{{"containerPort": 8080}}]}}]}}}}}}}}"#
        ),
    )?;
    eventually(lab, "a Running web pod on every node", || {
        let pods = json(lab, &["get", "pods", "-l", "app=web"])?;
        let running: BTreeMap<String, String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| {
                Some((
                    p["spec"]["nodeName"].as_str()?.to_owned(),
                    p["status"]["podIP"].as_str()?.to_owned(),
                ))
            })
            .collect();
        Ok((running.len() == nodes).then_some(running))
    })
}

/// From a pod on each node, fetches a page from every server pod; every client must succeed.
pub fn every_pod_reaches_every_pod(
    lab: &Lab,
    servers: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let targets: Vec<&str> = servers.values().map(String::as_str).collect();
    // Debian's static busybox wget crashes on `-T`, hence `timeout`.
    let script = format!(
        "for ip in {}; do ok=; for try in 1 2 3 4 5; do \
           if timeout 3 wget -q -O /dev/null http://$ip:8080/hostname; then ok=1; break; fi; sleep 1; \
         done; [ -n \"$ok\" ] || {{ echo unreachable $ip; exit 1; }}; echo reached $ip; done",
        targets.join(" ")
    );
    let names: Vec<String> = (0..lab.nodes()).map(|i| format!("client-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": lab.node_name(i), "restartPolicy": "Never",
                "containers": [{"name": "wget", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}]},
        });
        apply(lab, &pod.to_string())?;
    }
    for name in &names {
        let phase = eventually(lab, &format!("{name} to finish"), || {
            let pod = json(lab, &["get", "pod", name])?;
            let phase = pod["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
        })?;
        let node = json(lab, &["get", "pod", name])?["spec"]["nodeName"].clone();
        ensure!(
            phase == "Succeeded",
            "{name} on {node} could not reach every server pod {servers:?}"
        );
    }
    let mut args = vec!["delete", "pod", "--wait=false"];
    args.extend(names.iter().map(String::as_str));
    kubectl(lab, &args)?;
    Ok(())
}
