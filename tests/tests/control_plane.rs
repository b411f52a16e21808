//! A lab with its control plane: corten-server in node 0 answers real kubectl run inside the
//! node (readiness, namespaces), the in-process controllers turn a Deployment into a
//! ReplicaSet and Pods (whether an agent runs them is not asserted here), the node
//! kubeconfig the server issued carries `system:node:NAME` signed by the cluster CA and is
//! accepted by the server, the state file lets `Lab::attach` find all of it, and after the
//! test process "crashes" (the lab handle is dropped without teardown) `gc` still stops the
//! server and the agents.
//!
//! Safety: the API listens on node 0's fabric address; every request comes from inside node 0
//! (kubectl in its namespace), nothing is routed from the root namespace. Every wait is
//! bounded.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use corten_tests::lab::{self, Lab, LabSpec};
use serde_json::Value;

/// The kubectl the lab uses unless `CORTEN_KUBECTL` says otherwise.
const KUBECTL_1_33: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
/// How long the controllers may take to create what a Deployment implies.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs kubectl (admin, inside node 0) and returns its stdout; fails with its stderr.
fn kubectl(lab: &Lab, args: &[&str]) -> anyhow::Result<String> {
    let out = lab.kubectl()?.args(args).output()?;
    ensure!(
        out.status.success(),
        "kubectl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs kubectl with `input` on stdin.
fn kubectl_stdin(lab: &Lab, args: &[&str], input: &str) -> anyhow::Result<String> {
    let mut child = lab
        .kubectl()?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl get ... -o json` items.
fn items(lab: &Lab, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let list: Value = serde_json::from_str(&kubectl(lab, &all)?)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check()? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The controller ownerReference of an object, as (kind, name).
fn controller_of(object: &Value) -> Option<(String, String)> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default().to_owned(),
                r["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// A field of a kubeconfig's first cluster or user, base64-decoded.
fn kubeconfig_data(path: &Path, section: &str, field: &str) -> anyhow::Result<Vec<u8>> {
    let config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    let inner = if section == "clusters" {
        "cluster"
    } else {
        "user"
    };
    let encoded = config[section][0][inner][field]
        .as_str()
        .with_context(|| format!("{} has no {section}[0].{inner}.{field}", path.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.decode(encoded)?)
}

/// Deployment web: two busybox replicas labelled `app=web`.
const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: corten.local/busybox:1
        command: ["sleep", "3600"]
"#;

/// A one-node lab with the control plane, from freshly built binaries.
fn lab_with_control_plane(tag: &str) -> anyhow::Result<Lab> {
    lab::build_project_binaries()?;
    if std::env::var_os(lab::KUBECTL_ENV).is_none() {
        assert_eq!(lab::project_kubectl()?, PathBuf::from(KUBECTL_1_33));
    }
    let mut spec = LabSpec::for_test(&format!("{tag}-{}", std::process::id()), 1);
    spec.control_plane = true;
    Lab::up(spec)
}

/// Waits for the two Pods of ReplicaSet `rs_name` (labelled `app=web`) and checks they
/// are its own.
fn wait_for_pods_of(lab: &Lab, rs_name: &str) -> anyhow::Result<()> {
    let pods = wait_for("the ReplicaSet's two Pods", CONTROLLER_TIMEOUT, || {
        let pods = items(lab, &["pods", "-n", "default", "-l", "app=web"])?;
        Ok((pods.len() == 2).then_some(pods))
    })?;
    for pod in &pods {
        assert_eq!(
            controller_of(pod),
            Some(("ReplicaSet".to_owned(), rs_name.to_owned()))
        );
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            "corten.local/busybox:1"
        );
    }
    Ok(())
}

#[test]
fn the_lab_runs_a_control_plane_that_kubectl_drives() -> anyhow::Result<()> {
    let lab = lab_with_control_plane("cp")?;
    let paths = lab.paths().clone();

    // The state file tells another process where everything is.
    let attached = Lab::attach(lab.name())?;
    assert!(attached.has_control_plane());
    assert_eq!(attached.server_url()?, "https://172.30.0.10:6443");
    assert_eq!(attached.admin_kubeconfig()?, paths.admin_kubeconfig());
    assert_eq!(attached.node_kubeconfig(0)?, paths.agent_kubeconfig(0));
    assert_eq!(attached.node_name(0), "n0");
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(lab.admin_kubeconfig()?)?)?;
    assert_eq!(
        admin["clusters"][0]["cluster"]["server"].as_str(),
        Some("https://172.30.0.10:6443")
    );

    // kubectl inside node 0 reaches the API.
    assert_eq!(kubectl(&lab, &["get", "--raw", "/readyz"])?.trim(), "ok");
    let namespaces: Vec<String> = items(&lab, &["namespaces"])?
        .iter()
        .filter_map(|ns| ns["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    for expected in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.iter().any(|ns| ns == expected),
            "{expected} missing from {namespaces:?}"
        );
    }
    let table = kubectl(&lab, &["get", "ns"])?;
    assert!(table.contains("kube-system"), "{table}");

    // The controllers turn a Deployment into a ReplicaSet and the ReplicaSet into Pods.
    kubectl_stdin(&lab, &["create", "-f", "-"], DEPLOYMENT)?;
    let replica_set = wait_for("the Deployment's ReplicaSet", CONTROLLER_TIMEOUT, || {
        let sets = items(&lab, &["replicasets", "-n", "default", "-l", "app=web"])?;
        Ok(match sets.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        })
    })?;
    assert_eq!(
        controller_of(&replica_set),
        Some(("Deployment".to_owned(), "web".to_owned()))
    );
    assert_eq!(replica_set["spec"]["replicas"], 2);
    let rs_name = replica_set["metadata"]["name"]
        .as_str()
        .context("the ReplicaSet has no name")?;
    wait_for_pods_of(&lab, rs_name)?;

    // The node kubeconfig: a client certificate for system:node:n0 in system:nodes, signed
    // by the cluster CA, for node 0's address.
    let node_config = lab.node_kubeconfig(0)?;
    let cert_pem = kubeconfig_data(&node_config, "users", "client-certificate-data")?;
    let (_, cert_block) = x509_parser::pem::parse_x509_pem(&cert_pem)?;
    let cert = cert_block.parse_x509()?;
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|c| c.as_str().ok())
        .collect();
    assert_eq!(cn, ["system:node:n0"]);
    let orgs: Vec<&str> = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    assert_eq!(orgs, ["system:nodes"]);
    let ca_pem = kubeconfig_data(
        &lab.admin_kubeconfig()?,
        "clusters",
        "certificate-authority-data",
    )?;
    let (_, ca_block) = x509_parser::pem::parse_x509_pem(&ca_pem)?;
    let ca = ca_block.parse_x509()?;
    cert.verify_signature(Some(ca.public_key()))
        .context("the node certificate is not signed by the cluster CA")?;
    assert_eq!(
        kubeconfig_data(&node_config, "clusters", "certificate-authority-data")?,
        ca_pem
    );
    // The server accepts it: without a certificate it verifies, a request is refused (401).
    let as_node = lab
        .kubectl_with(0, &node_config)?
        .args(["get", "nodes"])
        .output()?;
    assert!(
        as_node.status.success(),
        "the node kubeconfig was refused: {}",
        String::from_utf8_lossy(&as_node.stderr)
    );

    // Whether the agent runs is reported, not decided, by the lab.
    for failure in lab.agent_failures() {
        eprintln!("note: {failure}");
    }

    // A crash of the test process: the handle goes without teardown; gc finds the server and
    // the agent by the lab's name alone and stops them.
    let server_pid: u32 = std::fs::read_to_string(paths.server_pid_file())?
        .trim()
        .parse()?;
    let agent_pid: u32 = std::fs::read_to_string(paths.agent_pid_file(0))?
        .trim()
        .parse()?;
    assert!(
        Path::new(&format!("/proc/{server_pid}")).exists(),
        "corten-server died"
    );
    let name = lab.name().to_owned();
    lab.keep_running();
    let removed = lab::gc_matching(|lab| lab == name)?;
    assert_eq!(removed, [name]);
    assert_eq!(lab::leftovers(&paths), Vec::<String>::new());
    for pid in [server_pid, agent_pid] {
        // Gone, or at most a zombie that is not ours to reap.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X');
        assert!(!alive, "process {pid} survived gc: {state}");
    }
    Ok(())
}
