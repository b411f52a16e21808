//! Pod network checks shared by the network tests (`pod_network`, `bgp_network`): what the
//! Nodes say about each node's address and pod CIDR, a command's output inside a node, a
//! Deployment of busybox httpd with one pod per node, and whether a pod on every node reaches
//! every one of those servers by IP; and from every server pod's network, UDP to every other
//! pod by IP and TCP and UDP through a ClusterIP Service in front of them (responders and
//! clients are the host's python3 entered into the pods' network namespaces, inside the
//! node's cgroup, so they take the pods' real network path and the node's socket-LB).
//!
//! Owns nothing but these conveniences; every wait is bounded ([`eventually`]), and every
//! process it starts is killed by PID.
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
        if phase != "Succeeded" {
            // Which server it missed, and after which it gave up.
            let log = kubectl(lab, &["logs", name]).unwrap_or_else(|e| format!("(no log: {e:#})"));
            anyhow::bail!(
                "{name} on {node} could not reach every server pod {servers:?}; its log:\n{log}"
            );
        }
    }
    let mut args = vec!["delete", "pod", "--wait=false"];
    args.extend(names.iter().map(String::as_str));
    kubectl(lab, &args)?;
    Ok(())
}

/// The port the responders of [`every_pod_reaches_every_pod_over_udp_and_a_service`] answer
/// on in every server pod, over UDP and TCP.
pub const ECHO_PORT: u16 = 9000;
/// The ClusterIP Service's ports in front of [`ECHO_PORT`]: different numbers, so the proxy
/// has to translate the port as well as the address.
const SERVICE_UDP_PORT: u16 = 5353;
const SERVICE_TCP_PORT: u16 = 80;
/// The Service the checks create (and delete).
const ECHO_SERVICE: &str = "echo";
/// How long a responder lives at most, even if the test process dies without killing it.
const RESPONDER_LIFETIME_SECS: u64 = 300;
/// How long one client may take for all its checks.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
const PYTHON: &str = "/usr/bin/python3";

/// Answers every UDP datagram with `NAME DATAGRAM` and every TCP connection with `NAME`, on
/// one port; exits after a bounded lifetime.
const RESPONDER: &str = r#"
import os, socket, sys, threading
name, port, life = sys.argv[1].encode(), int(sys.argv[2]), float(sys.argv[3])
threading.Timer(life, os._exit, [0]).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port))
tcp.listen(128)
def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        try:
            conn.sendall(name)
        except OSError:
            pass
        finally:
            conn.close()
threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(name + b" " + data, peer)
"#;

/// From one pod: a UDP datagram to every pod IP (5 tries each), then datagrams (alternately
/// on connected and unconnected sockets) and TCP connections to the Service until every
/// backend answered or 20 s passed; prints what answered, and from where, as JSON.
const CLIENT: &str = r#"
import json, socket, sys, time
port, svc, svc_udp, svc_tcp = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
want, ips = set(sys.argv[5].split(",")), sys.argv[6:]
def udp(dst, connected):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        if connected:
            s.connect(dst)
            s.send(b"ping")
            data, src = s.recv(2048), dst
        else:
            s.sendto(b"ping", dst)
            data, src = s.recvfrom(2048)
        return data.decode().split()[0], "%s:%d" % src
    except (OSError, IndexError, UnicodeDecodeError):
        return None, None
    finally:
        s.close()
def tcp(dst):
    try:
        with socket.create_connection(dst, timeout=1) as s:
            s.settimeout(1)
            return s.recv(256).decode() or None
    except (OSError, UnicodeDecodeError):
        return None
out = {"udp_by_ip": {}, "udp_service": [], "udp_service_sources": [], "tcp_service": []}
for ip in ips:
    name = None
    for _ in range(5):
        name, _ = udp((ip, port), False)
        if name:
            break
        time.sleep(0.2)
    out["udp_by_ip"][ip] = name
def through_service(kind):
    seen, sources, tries, deadline = set(), set(), 0, time.time() + 20
    while seen != want and tries < 300 and time.time() < deadline:
        tries += 1
        if kind == "udp":
            name, src = udp((svc, svc_udp), tries % 2 == 0)
            if src and tries % 2 == 1:
                sources.add(src)
        else:
            name = tcp((svc, svc_tcp))
        if name:
            seen.add(name)
        else:
            time.sleep(0.1)
    return sorted(seen), sorted(sources)
out["udp_service"], out["udp_service_sources"] = through_service("udp")
out["tcp_service"], _ = through_service("tcp")
print(json.dumps(out), flush=True)
"#;

/// The PIDs of every process in `dir` and the cgroups below it.
pub fn cgroup_pids(dir: &std::path::Path, pids: &mut Vec<u32>) -> anyhow::Result<()> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", dir.display()))?;
    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            cgroup_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

/// Whether the network namespace of process `pid` holds `ip` as a local address (its
/// `/proc/PID/net/fib_trie` lists `|-- IP` followed by `/32 host LOCAL`).
fn netns_has_local(pid: u32, ip: &str) -> bool {
    let Ok(trie) = std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")) else {
        return false;
    };
    let lines: Vec<&str> = trie.lines().map(str::trim).collect();
    let leaf = format!("|-- {ip}");
    lines
        .windows(2)
        .any(|w| w[0] == leaf && w[1].starts_with("/32 host LOCAL"))
}

/// A process of node `i` (its cgroup subtree) that lives in the network namespace of the
/// pod with address `pod_ip`: `nsenter --net=/proc/PID/ns/net` then runs in that pod's
/// network.
pub fn pod_netns_pid(lab: &Lab, i: usize, pod_ip: &str) -> anyhow::Result<u32> {
    let mut pids = Vec::new();
    cgroup_pids(&lab.node_cgroup(i), &mut pids)?;
    pids.into_iter()
        .find(|&pid| netns_has_local(pid, pod_ip))
        .with_context(|| format!("no process of node {i} is in the network of pod {pod_ip}"))
}

/// A command inside node `i`'s cgroup (so the node's socket-LB programs see its sockets) and
/// inside the network namespace of process `pid`, a pod's.
pub fn in_pod_network(
    lab: &Lab,
    i: usize,
    pid: u32,
    program: &str,
) -> anyhow::Result<std::process::Command> {
    let mut command = lab.command(i, "nsenter")?;
    command
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(program);
    Ok(command)
}

/// Waits at most `timeout` for `child`; kills it (by its PID) if it runs longer.
pub fn wait_bounded(
    mut child: std::process::Child,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<std::process::Output> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            anyhow::bail!(
                "{what} did not finish within {timeout:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// UDP/TCP responders in the server pods' networks; killed (by PID) and reaped on drop.
struct Responders(Vec<std::process::Child>);

impl Drop for Responders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Responders {
    /// Starts one responder per `(node index, pid, name)`; returns once each is listening
    /// (at most 10 s).
    fn start(lab: &Lab, pods: &[(usize, u32, String)]) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut responders = Self(Vec::new());
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, pid, name) in pods {
            let mut child = in_pod_network(lab, *i, *pid, PYTHON)?
                .args(["-c", RESPONDER, name])
                .arg(ECHO_PORT.to_string())
                .arg(RESPONDER_LIFETIME_SECS.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .context("starting a responder (python3) in a pod's network")?;
            let stdout = child.stdout.take().context("a responder's stdout")?;
            responders.0.push(child);
            let tx = tx.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send((name, line));
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for _ in pods {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (name, line) = rx
                .recv_timeout(left)
                .context("a responder did not start within 10 s")?;
            ensure!(
                line.trim() == "ready",
                "the responder on {name} failed to start"
            );
        }
        Ok(responders)
    }
}

/// What one client saw, as [`CLIENT`] prints it.
#[derive(Debug, serde::Deserialize)]
struct ClientReport {
    udp_by_ip: BTreeMap<String, Option<String>>,
    udp_service: Vec<String>,
    udp_service_sources: Vec<String>,
    tcp_service: Vec<String>,
}

/// From the network of every server pod (one per node, as [`deploy_servers`] returned them,
/// by node name): (a) a UDP datagram to every server pod by IP is answered by that pod; a
/// ClusterIP Service created with kubectl in front of the pods, with a UDP and a TCP port,
/// is answered by every backend, so also by those on the other nodes, (b) over TCP and
/// (c) over UDP, and UDP replies come from the Service's address and port. The clients run
/// at once, each bounded by [`CLIENT_TIMEOUT`]; the Service is deleted afterwards.
pub fn every_pod_reaches_every_pod_over_udp_and_a_service(
    lab: &Lab,
    servers: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let index: BTreeMap<String, usize> = (0..lab.nodes()).map(|i| (lab.node_name(i), i)).collect();
    let mut pods = Vec::new();
    for (node, ip) in servers {
        let i = *index
            .get(node)
            .with_context(|| format!("no lab node {node}"))?;
        pods.push((i, pod_netns_pid(lab, i, ip)?, node.clone()));
    }
    let _responders = Responders::start(lab, &pods)?;
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": ECHO_SERVICE},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "udp", "protocol": "UDP", "port": SERVICE_UDP_PORT, "targetPort": ECHO_PORT},
            {"name": "tcp", "protocol": "TCP", "port": SERVICE_TCP_PORT, "targetPort": ECHO_PORT},
        ]},
    });
    apply(lab, &service.to_string())?;
    let cluster_ip = eventually(lab, "the echo Service's ClusterIP", || {
        let svc = json(lab, &["get", "service", ECHO_SERVICE])?;
        Ok(svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(str::to_owned))
    })?;
    let want: Vec<&str> = servers.keys().map(String::as_str).collect();
    let want = want.join(",");
    let mut clients = Vec::new();
    for (i, pid, node) in &pods {
        let child = in_pod_network(lab, *i, *pid, PYTHON)?
            .args(["-c", CLIENT])
            .arg(ECHO_PORT.to_string())
            .arg(&cluster_ip)
            .arg(SERVICE_UDP_PORT.to_string())
            .arg(SERVICE_TCP_PORT.to_string())
            .arg(&want)
            .args(servers.values())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting a client (python3) in a pod's network")?;
        clients.push((node.clone(), child));
    }
    let mut failures = Vec::new();
    let service_udp = format!("{cluster_ip}:{SERVICE_UDP_PORT}");
    for (node, child) in clients {
        let output = wait_bounded(child, CLIENT_TIMEOUT, &format!("the client on {node}"))?;
        ensure!(
            output.status.success(),
            "the client on {node} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: ClientReport = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("reading the report of the client on {node}"))?;
        for (server, ip) in servers {
            let answered = report.udp_by_ip.get(ip).cloned().flatten();
            if answered.as_deref() != Some(server.as_str()) {
                failures.push(format!(
                    "(a) UDP from the pod on {node} to the pod {ip} on {server}: answered by {answered:?}"
                ));
            }
        }
        if report.tcp_service != want.split(',').collect::<Vec<_>>() {
            failures.push(format!(
                "(b) TCP from the pod on {node} to {cluster_ip}:{SERVICE_TCP_PORT}: answered only by {:?}",
                report.tcp_service
            ));
        }
        if report.udp_service != want.split(',').collect::<Vec<_>>() {
            failures.push(format!(
                "(c) UDP from the pod on {node} to {service_udp}: answered only by {:?}",
                report.udp_service
            ));
        }
        if report.udp_service_sources.iter().any(|s| *s != service_udp) {
            failures.push(format!(
                "(c) UDP replies to the pod on {node} came from {:?}, not the Service {service_udp}",
                report.udp_service_sources
            ));
        }
    }
    kubectl(lab, &["delete", "service", ECHO_SERVICE, "--wait=false"])?;
    ensure!(
        failures.is_empty(),
        "pod-to-pod UDP or the ClusterIP Service failed:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "UDP by IP and TCP/UDP through the Service {cluster_ip} checked from {} pods in {:?}",
        pods.len(),
        started.elapsed()
    );
    Ok(())
}
