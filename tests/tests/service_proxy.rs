//! corten-agent's service proxy in a one-node lab with its control plane: Services created
//! with real kubectl, backends are busybox httpd pods, and the agent programs its socket-LB
//! from Services and EndpointSlices. A ClusterIP over TCP reaches every ready backend from a
//! pod and from the node, and the node's client sees the ClusterIP as its peer; a Service
//! without endpoints refuses a connect within 100 ms; scaling down stops new connections to
//! the removed backends; the datapath keeps working while the agent is down and a restarted
//! agent reuses the pinned maps; a UDP ClusterIP (selector-less, hand-written EndpointSlices
//! naming listeners on the node) reaches both listeners from unconnected and connected
//! sockets, which see the ClusterIP as the answers' source and as their peer; deleting the
//! Service undoes the translation.
//!
//! Safety: everything runs inside the lab's namespaces and the socket programs attach to the
//! node's cgroup only; every wait is bounded.
use std::{collections::BTreeSet, process::Output, time::Duration};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::{apply, eventually, json, kubectl},
    lab::{self, Lab, LabSpec, BUSYBOX_IMAGE},
};
use serde_json::Value;

/// How many requests a client makes; with 3 backends chosen at random, missing one in 30
/// tries happens with probability 3·(2/3)^30 ≈ 1.6e-5.
const REQUESTS: usize = 30;
/// The host's Python, run inside the node (its network namespace and cgroup).
const PYTHON: &str = "/usr/bin/python3";

/// Connects to `argv[1]:argv[2]`, asks for `/hostname` and prints `PEER BODY`: the peer the
/// socket reports and the backend's answer.
const FETCH_WITH_PEER: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
peer = s.getpeername()
s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
body = data.split(b"\r\n\r\n", 1)[-1].decode().strip()
print(f"{peer[0]}:{peer[1]} {body}")
"#;

/// Connects to `argv[1]:argv[2]` once and prints `ERRNO SECONDS` (errno 0 if it connected).
const CONNECT_TIMED: &str = r#"
import socket, sys, time
s = socket.socket()
s.settimeout(3)
started = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    code = 0
except OSError as e:
    code = e.errno or -1
print(f"{code} {time.monotonic() - started:.6f}")
"#;

/// A UDP backend on `argv[1]:argv[2]`: answers every datagram with `udp-PORT`, for at most
/// 120 seconds.
const UDP_BACKEND: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        _, peer = s.recvfrom(512)
    except socket.timeout:
        continue
    s.sendto(f"udp-{sys.argv[2]}".encode(), peer)
"#;

/// A UDP client of `argv[1]:argv[2]`: `argv[3]` unconnected sockets send one datagram each
/// (`sendto`/`recvfrom`), then one connected socket does. Prints the answers, the sources the
/// unconnected sockets saw, and the connected socket's peer and answer, `|`-separated.
const UDP_CLIENT: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
answers, sources = set(), set()
for _ in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"who", (ip, port))
    data, source = s.recvfrom(512)
    answers.add(data.decode())
    sources.add(f"{source[0]}:{source[1]}")
    s.close()
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(2)
c.connect((ip, port))
c.send(b"who")
answer = c.recv(512).decode()
peer = c.getpeername()
print(" ".join(sorted(answers)), "|", " ".join(sorted(sources)), "|", f"{peer[0]}:{peer[1]}", answer)
"#;

/// Kills a helper process even when an assertion fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn python(lab: &Lab, script: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(lab
        .command(0, PYTHON)?
        .arg("-c")
        .arg(script)
        .args(args)
        .output()?)
}

/// One request from the node (busybox wget in the node's cgroup); the answer, if any.
fn fetch_from_node(lab: &Lab, url: &str) -> anyhow::Result<Option<String>> {
    let output = lab
        .command(0, "busybox")?
        .args(["timeout", "3", "busybox", "wget", "-q", "-O", "-", url])
        .output()?;
    Ok(output.status.success().then(|| text(&output)))
}

fn cluster_ip(lab: &Lab, service: &str) -> anyhow::Result<String> {
    let service = json(lab, &["get", "service", service])?;
    service["spec"]["clusterIP"]
        .as_str()
        .map(str::to_owned)
        .context("the Service has no clusterIP")
}

/// Names of the Running, ready pods labelled `app=web`, once there are exactly `count` pods.
fn ready_web_pods(lab: &Lab, count: usize) -> anyhow::Result<Option<BTreeSet<String>>> {
    let pods = json(lab, &["get", "pods", "-l", "app=web"])?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let ready: BTreeSet<String> = items
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["phase"] == "Running")
        .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    Ok((items.len() == count && ready.len() == count).then_some(ready))
}

/// The ready endpoint addresses of Service `web`'s slices.
fn ready_endpoints(lab: &Lab) -> anyhow::Result<BTreeSet<String>> {
    let slices = json(
        lab,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    )?;
    let mut ready = BTreeSet::new();
    for slice in slices["items"].as_array().into_iter().flatten() {
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            if endpoint["conditions"]["ready"] != Value::Bool(false) {
                if let Some(address) = endpoint["addresses"][0].as_str() {
                    ready.insert(address.to_owned());
                }
            }
        }
    }
    Ok(ready)
}

/// `REQUESTS` answers from the node, polled until every one of them is in `expected` and all
/// of `expected` answered (the datapath follows the API within a moment).
fn node_answers_converge(
    lab: &Lab,
    url: &str,
    expected: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    eventually(
        lab,
        &format!("{url} to answer from exactly {expected:?}"),
        || {
            let mut seen = BTreeSet::new();
            for _ in 0..REQUESTS {
                match fetch_from_node(lab, url)? {
                    Some(answer) => {
                        seen.insert(answer);
                    }
                    None => bail!("a request to {url} failed"),
                }
            }
            if &seen != expected {
                bail!("answers came from {seen:?}");
            }
            Ok(Some(seen))
        },
    )
}

#[test]
fn cluster_ips_are_load_balanced_by_the_socket_programs() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::for_test(&format!("svcproxy-{}", std::process::id()), 1);
    spec.control_plane = true;
    let mut lab = Lab::up(spec)?;
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;

    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {{"name": "web"}},
            "spec": {{"replicas": 3, "selector": {{"matchLabels": {{"app": "web"}}}},
              "template": {{"metadata": {{"labels": {{"app": "web"}}}},
                "spec": {{"terminationGracePeriodSeconds": 1,
                  "containers": [{{"name": "httpd", "image": "{BUSYBOX_IMAGE}",
                  "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"],
                  "ports": [{{"containerPort": 8080}}]}}]}}}}}}}}"#
        ),
    )?;
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
          "spec": {"selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}"#,
    )?;
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
          "spec": {"selector": {"app": "nothing-has-this-label"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}"#,
    )?;
    let web_ip = cluster_ip(&lab, "web")?;
    let empty_ip = cluster_ip(&lab, "empty")?;
    let url = format!("http://{web_ip}:80/hostname");

    let backends = eventually(&lab, "three ready web pods", || ready_web_pods(&lab, 3))?;
    eventually(&lab, "three ready endpoints", || {
        Ok((ready_endpoints(&lab)?.len() == 3).then_some(()))
    })?;

    // From the node: every ready backend answers, nothing else does.
    let seen = node_answers_converge(&lab, &url, &backends)?;
    println!("node reached {seen:?} through {web_ip}");

    // The node's client sees the ClusterIP as its peer, not the backend.
    let output = python(&lab, FETCH_WITH_PEER, &[&web_ip, "80"])?;
    ensure!(output.status.success(), "python client failed: {output:?}");
    let answer = text(&output);
    let (peer, body) = answer
        .split_once(' ')
        .with_context(|| format!("unexpected client output {answer:?}"))?;
    ensure!(
        peer == format!("{web_ip}:80"),
        "getpeername said {peer}, not the ClusterIP {web_ip}:80"
    );
    ensure!(backends.contains(body), "answer {body:?} from no backend");

    // From a pod: the same Service, every backend.
    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "client"}},
            "spec": {{"restartPolicy": "Never", "containers": [{{"name": "client",
              "image": "{BUSYBOX_IMAGE}", "command": ["sh", "-c",
              "for i in $(seq 1 {REQUESTS}); do timeout 3 wget -q -O - {url} || echo FAILED; echo; done"]}}]}}}}"#
        ),
    )?;
    eventually(&lab, "the client pod to finish", || {
        let pod = json(&lab, &["get", "pod", "client"])?;
        Ok(matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
        .then_some(()))
    })?;
    let logs = kubectl(&lab, &["logs", "client"])?;
    let answers: Vec<&str> = logs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    println!("pod answers: {answers:?}");
    ensure!(
        answers.len() == REQUESTS,
        "the client pod got {} answers: {logs:?}",
        answers.len()
    );
    let from_pod: BTreeSet<String> = answers.iter().map(|a| (*a).to_owned()).collect();
    ensure!(
        from_pod == backends,
        "the pod reached {from_pod:?}, not every backend of {backends:?}"
    );

    // No endpoints: the connect fails with ECONNREFUSED at once.
    let mut fastest = f64::MAX;
    for _ in 0..3 {
        let output = python(&lab, CONNECT_TIMED, &[&empty_ip, "80"])?;
        let result = text(&output);
        let (errno, seconds) = result
            .split_once(' ')
            .with_context(|| format!("unexpected output {output:?}"))?;
        ensure!(
            errno == "111",
            "connect to a Service without endpoints gave errno {errno}, not ECONNREFUSED"
        );
        let seconds: f64 = seconds.parse()?;
        ensure!(seconds < 0.1, "the refusal took {seconds} s");
        fastest = fastest.min(seconds);
    }
    println!("a Service without endpoints refused in {fastest:.6} s");

    // The datapath is pinned: it keeps working while the agent is down, and the restarted
    // agent reuses the pinned maps (the Service keeps its backends).
    lab.kill_agent(0)?;
    let while_down = fetch_from_node(&lab, &url)?;
    ensure!(
        while_down.as_ref().is_some_and(|a| backends.contains(a)),
        "with the agent down the ClusterIP answered {while_down:?}"
    );
    lab.start_agent(0)?;
    node_answers_converge(&lab, &url, &backends)?;
    let log = std::fs::read_to_string(lab.paths().agent_log(0))?;
    ensure!(
        log.contains("reusing the pinned service maps"),
        "the restarted agent did not read the pinned maps back"
    );
    lab.check_agents()?;

    // Scale down: the removed backends get no new connections.
    kubectl(&lab, &["scale", "replicaset", "web", "--replicas=1"])?;
    let remaining = eventually(&lab, "one web pod left", || ready_web_pods(&lab, 1))?;
    ensure!(remaining.is_subset(&backends));
    node_answers_converge(&lab, &url, &remaining)?;
    println!("after scaling down only {remaining:?} answers");

    // UDP: a selector-less Service whose EndpointSlices name two listeners on the node;
    // unconnected sockets reach both and see the ClusterIP as the source of the answers, a
    // connected socket sees it as its peer.
    let node_ip = lab.node_ip(0).to_string();
    let _udp_backends = [9053, 9054]
        .map(|port| -> anyhow::Result<Reaped> {
            Ok(Reaped(
                lab.command_outside_cgroup(0, PYTHON)?
                    .arg("-c")
                    .arg(UDP_BACKEND)
                    .args([node_ip.as_str(), &port.to_string()])
                    .spawn()?,
            ))
        })
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "udp"},
          "spec": {"ports": [{"name": "echo", "port": 53, "protocol": "UDP"}]}}"#,
    )?;
    for port in [9053, 9054] {
        apply(
            &lab,
            &format!(
                r#"{{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {{"name": "udp-{port}", "labels": {{"kubernetes.io/service-name": "udp"}}}},
                "addressType": "IPv4",
                "ports": [{{"name": "echo", "port": {port}, "protocol": "UDP"}}],
                "endpoints": [{{"addresses": ["{node_ip}"], "conditions": {{"ready": true}}}}]}}"#
            ),
        )?;
    }
    let udp_ip = cluster_ip(&lab, "udp")?;
    let expected = format!("udp-9053 udp-9054 | {udp_ip}:53 | {udp_ip}:53 udp-");
    let udp = eventually(&lab, "UDP answers from both backends", || {
        let output = python(&lab, UDP_CLIENT, &[&udp_ip, "53", &REQUESTS.to_string()])?;
        let result = text(&output);
        if !output.status.success() || !result.starts_with(&expected) {
            bail!(
                "UDP client: {result:?} {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Some(result))
    })?;
    println!("UDP through {udp_ip}: {udp}");

    // Deleting the Service removes the translation: the ClusterIP leads nowhere.
    kubectl(&lab, &["delete", "service", "web"])?;
    eventually(&lab, "the deleted Service to stop answering", || {
        Ok(fetch_from_node(&lab, &url)?.is_none().then_some(()))
    })?;

    lab.check_agents()?;
    let paths = lab.paths().clone();
    lab.down()?;
    // The pinned maps and attachments lived on the node's own bpffs and went with it.
    assert_eq!(lab::leftovers(&paths), Vec::<String>::new());
    Ok(())
}
