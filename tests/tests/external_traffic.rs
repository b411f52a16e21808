//! Traffic from outside the cluster through corten's tc programs, in a two-node lab (host-gw
//! routes) with its control plane: Services created with real kubectl, backends are busybox
//! httpd pods pinned to nodes, and an "external client" is the lab's fabric namespace with an
//! address of its own on the fabric bridge. From there:
//! - a NodePort on node 0's address and an externalIP routed to node 0 reach every ready
//!   backend, the two on node 0 (DNAT, replies un-NATed on the way out) and the one on node 1
//!   (DNAT and SNAT to node 0, replies un-NATed when they come back);
//! - a NodePort whose only backend is on node 1 answers through node 0 (SNAT);
//! - ClientIP session affinity sends every connection of the client to one backend;
//! - with `externalTrafficPolicy: Local` only the local backends answer, on node 0 and on
//!   node 1, and they see the client's own address;
//! - the pinned tc links keep the NodePort answering while node 0's agent is down, and the
//!   restarted agent replaces them with its own;
//! - a UDP NodePort (a selector-less Service whose EndpointSlice names listeners on node 0's
//!   and node 1's own addresses) answers through node 0 from both, each datagram's reply from
//!   the NodePort.
//!
//! With `CORTEN_TEST_WITHOUT_TC=1` the agents run without `--proxy-external-interface`, and
//! the test must fail (that is how to check it tests the tc programs).
//!
//! A second lab runs the agents with `--proxy-load-balancing maglev`; its client connects from
//! fixed source ports, one connection at a time, each closed with a reset:
//! - through node 0, each port lands on the same backend every time, and the ports spread
//!   over all three backends;
//! - the externalIP routed to node 1 instead (a node that has never seen these flows), each
//!   port lands on the backend it had through node 0, also after node 1's agent restarted;
//! - a NodePort without any endpoint refuses at once instead of letting the client wait: a
//!   TCP connection with a reset, a UDP datagram with an ICMP port unreachable;
//! - node 0's `/metrics` counts the tc programs' new flows and refusals, and no fallback.
//!
//! With `CORTEN_TEST_WITHOUT_MAGLEV=1` that lab's agents pick at random, and the test must fail.
//!
//! Safety: the client's address and its route to the externalIP live in the lab's fabric
//! namespace only; the root namespace gets nothing. The tc programs attach to each node's
//! `eth0` inside the node's namespace and their links are pinned on the node's bpffs, so they
//! go with the lab. Every request is bounded by `timeout`, every wait by `eventually`.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::{ensure, Context};
use corten_tests::{
    kubectl::{apply, eventually, json, kubectl},
    lab::{Lab, LabSpec, NetworkMode, BUSYBOX_IMAGE},
    scripts::{FIXED_PORT_HTTP_CLIENT, PYTHON, UDP_BACKEND},
};
use serde_json::json;

/// Requests per check; with 3 backends at random, missing one in 30 tries happens with
/// probability 3·(2/3)^30 ≈ 1.6e-5.
const REQUESTS: usize = 30;
/// The external client's address on the fabric (nodes are .10 and up).
const CLIENT_IP: &str = "172.30.0.250";
/// The externalIP of Service `outer` (TEST-NET-3), routed to node 0 inside the fabric
/// namespace only.
const EXTERNAL_IP: &str = "203.0.113.20";

/// The backends: busybox httpd on 8080 serving `/hostname` (the pod's name) and `/cgi-bin/ip`
/// (the client address it sees).
const WEB_COMMAND: &str = r#"mkdir -p /w/cgi-bin && cp /etc/hostname /w/hostname && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /w/cgi-bin/ip && chmod +x /w/cgi-bin/ip && exec httpd -f -p 8080 -h /w"#;
/// Port of the UDP listeners on the nodes' own addresses.
const UDP_BACKEND_PORT: u16 = 9999;
/// Sends `argv[3]` datagrams to `argv[1]:argv[2]`, each from a new connected socket (so only
/// an answer from that address and port is received), and prints the answers, one a line
/// (`TIMEOUT` for none within a second; `REFUSED` when an ICMP port unreachable came back
/// within 100 ms, `REFUSED-LATE` when later).
const UDP_CLIENT: &str = r#"
import socket, sys, time
for _ in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.connect((sys.argv[1], int(sys.argv[2])))
    sent = time.monotonic()
    s.send(b"who")
    try:
        print(s.recv(512).decode(), flush=True)
    except socket.timeout:
        print("TIMEOUT", flush=True)
    except ConnectionRefusedError:
        print("REFUSED" if time.monotonic() - sent < 0.1 else "REFUSED-LATE", flush=True)
    s.close()
"#;

/// Kills a helper process even when an assertion fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client in the lab's fabric namespace; its address is removed with the namespace.
struct ExternalClient;

impl ExternalClient {
    /// Gives the fabric bridge the client's address and routes the externalIP to node 0.
    fn new(lab: &Lab) -> anyhow::Result<Self> {
        let node0 = lab.node_ip(0).to_string();
        for args in [
            vec!["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "br0"],
            vec!["route", "add", &format!("{EXTERNAL_IP}/32"), "via", &node0],
        ] {
            let output = lab.fabric_command("ip")?.args(&args).output()?;
            ensure!(
                output.status.success(),
                "ip {args:?} in the fabric namespace: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self)
    }

    /// One HTTP request; the answer, or None if it failed.
    fn get(&self, lab: &Lab, url: &str) -> anyhow::Result<Option<String>> {
        let output = lab
            .fabric_command("busybox")?
            .args(["timeout", "3", "busybox", "wget", "-q", "-O", "-", url])
            .output()?;
        Ok(output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned()))
    }

    /// The answers to [`REQUESTS`] datagrams to `ip:port` (see [`UDP_CLIENT`]).
    fn udp(&self, lab: &Lab, ip: &str, port: u16) -> anyhow::Result<BTreeSet<String>> {
        let output = lab
            .fabric_command(PYTHON)?
            .args([
                "-c",
                UDP_CLIENT,
                ip,
                &port.to_string(),
                &REQUESTS.to_string(),
            ])
            .output()?;
        ensure!(
            output.status.success(),
            "UDP client: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .collect())
    }

    /// [`REQUESTS`] answers of `url`, polled until they come from exactly `expected`.
    fn converge(&self, lab: &Lab, url: &str, expected: &BTreeSet<String>) -> anyhow::Result<()> {
        eventually(
            lab,
            &format!("{url} from outside to answer from exactly {expected:?}"),
            || {
                let mut seen = BTreeSet::new();
                for _ in 0..REQUESTS {
                    match self.get(lab, url)? {
                        Some(answer) => seen.insert(answer),
                        None => anyhow::bail!("a request to {url} failed (seen {seen:?})"),
                    };
                }
                ensure!(&seen == expected, "answers came from {seen:?}");
                Ok(Some(()))
            },
        )?;
        println!("{url} answered from {expected:?}");
        Ok(())
    }
}

fn web_pod(name: &str, node: &str, role: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web", "role": role}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "httpd", "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", WEB_COMMAND],
                "ports": [{"containerPort": 8080}],
            }],
        },
    })
}

fn node_port_service(
    name: &str,
    selector: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({
        "type": "NodePort",
        "selector": selector,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

/// Two web pods on node 0 (`role: local`) and one on node 1 (`role: remote`).
fn web_pods(lab: &Lab, node0: &str, node1: &str) -> anyhow::Result<()> {
    for (name, node, role) in [
        ("local-a", node0, "local"),
        ("local-b", node0, "local"),
        ("remote-a", node1, "remote"),
    ] {
        apply(lab, &web_pod(name, node, role).to_string())?;
    }
    Ok(())
}

/// The nodePort of a Service's port `port_name`.
fn node_port(lab: &Lab, service: &str, port_name: &str) -> anyhow::Result<u16> {
    let service = json(lab, &["get", "service", service])?;
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == port_name)
        .and_then(|p| p["nodePort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("{service} has no nodePort {port_name}"))
}

/// Names of the Running, ready pods labelled `app=web`, once all `count` are.
fn ready_pods(lab: &Lab, count: usize) -> anyhow::Result<Option<()>> {
    let pods = json(lab, &["get", "pods", "-l", "app=web"])?;
    let ready = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
        .count();
    Ok((ready == count).then_some(()))
}

/// The pinned tc links of a node's agent on its bpffs.
const TC_LINK_PINS: [&str; 2] = ["link_corten_tc_ingress_eth0", "link_corten_tc_egress_eth0"];

/// The id of the BPF link pinned at `pin` (read with bpftool; nothing is changed).
fn pinned_link_id(pin: &std::path::Path) -> anyhow::Result<u64> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()?;
    ensure!(
        output.status.success(),
        "bpftool link show pinned {}: {}",
        pin.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let link: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    link["id"]
        .as_u64()
        .with_context(|| format!("no link id in {link}"))
}

/// Whether a BPF link with this id exists.
fn link_exists(id: u64) -> anyhow::Result<bool> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "id", &id.to_string()])
        .output()?;
    Ok(output.status.success())
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn nodeports_and_external_ips_answer_clients_outside_the_cluster() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::for_test(&format!("exttraffic-{}", std::process::id()), 2);
    spec.control_plane = true;
    spec.network = NetworkMode::HostGw;
    if std::env::var_os("CORTEN_TEST_WITHOUT_TC").is_none() {
        spec.extra_agent_args = vec!["--proxy-external-interface".into(), "eth0".into()];
    }
    let mut lab = Lab::up(spec)?;
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;
    let node0 = lab.node_name(0);
    let node1 = lab.node_name(1);
    let node0_ip = lab.node_ip(0).to_string();
    let node1_ip = lab.node_ip(1).to_string();

    web_pods(&lab, &node0, &node1)?;
    let outer = node_port_service(
        "outer",
        json!({"app": "web"}),
        json!({"externalIPs": [EXTERNAL_IP]}),
    );
    let only_remote = node_port_service("only-remote", json!({"role": "remote"}), json!({}));
    let local = node_port_service(
        "local",
        json!({"app": "web"}),
        json!({"externalTrafficPolicy": "Local"}),
    );
    let udp = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "udp"},
        "spec": {"type": "NodePort", "ports": [
            {"name": "echo", "port": 81, "targetPort": UDP_BACKEND_PORT, "protocol": "UDP"}]},
    });
    let udp_slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "udp-nodes", "labels": {"kubernetes.io/service-name": "udp"}},
        "addressType": "IPv4",
        "ports": [{"name": "echo", "port": UDP_BACKEND_PORT, "protocol": "UDP"}],
        "endpoints": [
            {"addresses": [node0_ip], "nodeName": node0, "conditions": {"ready": true}},
            {"addresses": [node1_ip], "nodeName": node1, "conditions": {"ready": true}},
        ],
    });
    let sticky = node_port_service(
        "sticky",
        json!({"app": "web"}),
        json!({"sessionAffinity": "ClientIP"}),
    );
    for object in [outer, only_remote, local, sticky, udp, udp_slice] {
        apply(&lab, &object.to_string())?;
    }
    let mut udp_backends = Vec::new();
    for (i, ip) in [(0, &node0_ip), (1, &node1_ip)] {
        let child = lab
            .command(i, PYTHON)?
            .args(["-c", UDP_BACKEND, ip, &UDP_BACKEND_PORT.to_string()])
            .arg(format!("udp-n{i}"))
            .spawn()?;
        udp_backends.push(Reaped(child));
    }
    eventually(&lab, "three ready web pods", || ready_pods(&lab, 3))?;
    let outer_port = node_port(&lab, "outer", "http")?;
    let udp_port = node_port(&lab, "udp", "echo")?;
    let remote_port = node_port(&lab, "only-remote", "http")?;
    let local_port = node_port(&lab, "local", "http")?;
    let sticky_port = node_port(&lab, "sticky", "http")?;

    let client = ExternalClient::new(&lab)?;
    let every = names(&["local-a", "local-b", "remote-a"]);
    // ExternalTrafficPolicy Cluster: every backend, local ones by DNAT, the remote one by
    // DNAT and SNAT.
    client.converge(
        &lab,
        &format!("http://{node0_ip}:{outer_port}/hostname"),
        &every,
    )?;
    client.converge(&lab, &format!("http://{EXTERNAL_IP}:80/hostname"), &every)?;
    // The only backend is on node 1: through node 0 every reply comes back by SNAT.
    client.converge(
        &lab,
        &format!("http://{node0_ip}:{remote_port}/hostname"),
        &names(&["remote-a"]),
    )?;
    // ExternalTrafficPolicy Local: each node's own backends, which see the client.
    client.converge(
        &lab,
        &format!("http://{node0_ip}:{local_port}/hostname"),
        &names(&["local-a", "local-b"]),
    )?;
    client.converge(
        &lab,
        &format!("http://{node1_ip}:{local_port}/hostname"),
        &names(&["remote-a"]),
    )?;
    // busybox httpd listens on a dual-stack socket: it sees the client as a mapped address.
    client.converge(
        &lab,
        &format!("http://{node0_ip}:{local_port}/cgi-bin/ip"),
        &names(&[&format!("[::ffff:{CLIENT_IP}]")]),
    )?;
    // ClientIP affinity: the client (its address) gets one backend for every connection.
    let sticky_url = format!("http://{node0_ip}:{sticky_port}/hostname");
    let pinned = eventually(&lab, "one sticky backend from outside", || {
        let mut seen = BTreeSet::new();
        for _ in 0..REQUESTS {
            seen.extend(client.get(&lab, &sticky_url)?);
        }
        ensure!(
            seen.len() == 1 && seen.is_subset(&every),
            "answers came from {seen:?}"
        );
        Ok(seen.pop_first())
    })?;
    println!("{sticky_url} stuck to {pinned}");

    // The tc links are pinned on the node's bpffs: the NodePort keeps answering while node
    // 0's agent is down, and a restarted agent replaces the pinned links with its own.
    let outer_url = format!("http://{node0_ip}:{outer_port}/hostname");
    let pins = TC_LINK_PINS.map(|pin| lab.node_bpffs(0).join(pin));
    let before = pins
        .iter()
        .map(|pin| pinned_link_id(pin))
        .collect::<anyhow::Result<Vec<_>>>()?;
    lab.kill_agent(0)?;
    client.converge(&lab, &outer_url, &every)?;
    lab.start_agent(0)?;
    eventually(&lab, "the restarted agent to replace its tc links", || {
        for (pin, old) in pins.iter().zip(&before) {
            if pinned_link_id(pin)? == *old {
                return Ok(None);
            }
            // The replaced link is gone, so the old program no longer runs.
            ensure!(!link_exists(*old)?, "link {old} still exists");
        }
        Ok(Some(()))
    })?;
    client.converge(&lab, &outer_url, &every)?;
    ensure!(
        lab.agent_failures().is_empty(),
        "{:?}",
        lab.agent_failures()
    );

    // UDP through node 0: the listener on node 0 (DNAT to the node itself) and the one on
    // node 1 (SNAT) both answer, every answer from the NodePort (the connected client
    // receives nothing else).
    let expected = names(&["udp-n0", "udp-n1"]);
    eventually(&lab, "UDP answers from outside from both listeners", || {
        let seen = client.udp(&lab, &node0_ip, udp_port)?;
        ensure!(seen == expected, "UDP answers {seen:?}");
        Ok(Some(()))
    })?;
    println!("UDP NodePort {node0_ip}:{udp_port} answered from {expected:?}");
    drop(udp_backends);
    // The agents read the tc counters every 10 seconds; the reads work.
    for i in 0..2 {
        let log = std::fs::read_to_string(lab.paths().agent_log(i))?;
        ensure!(
            !log.contains("reading the tc NAT counters failed"),
            "node {i}'s agent could not read the tc counters"
        );
    }
    // The tc links, their pins and the client's address go with the lab.
    lab.down_checked()
}

/// Source ports of the Maglev checks: below the kernel's ephemeral range, so no other
/// connection of the client (wget's) shares a tuple with them.
const FIXED_PORTS: std::ops::RangeInclusive<u16> = 20_001..=20_024;
/// Source ports first used after node 1's agent restarted.
const RESTART_PORTS: std::ops::RangeInclusive<u16> = 20_101..=20_124;

/// The backend each source port reached (see [`FIXED_PORT_HTTP_CLIENT`]); an error fails.
fn fixed_port_answers(
    lab: &Lab,
    dst: &str,
    port: u16,
    ports: impl IntoIterator<Item = u16>,
) -> anyhow::Result<BTreeMap<u16, String>> {
    let lines = fixed_port_lines(lab, dst, port, ports)?;
    let mut answers = BTreeMap::new();
    for (source, answer) in lines {
        ensure!(!answer.starts_with("ERROR"), "from port {source}: {answer}");
        answers.insert(source, answer);
    }
    Ok(answers)
}

/// Every line of [`FIXED_PORT_HTTP_CLIENT`] as (source port, rest).
fn fixed_port_lines(
    lab: &Lab,
    dst: &str,
    port: u16,
    ports: impl IntoIterator<Item = u16>,
) -> anyhow::Result<Vec<(u16, String)>> {
    let ports: Vec<String> = ports.into_iter().map(|p| p.to_string()).collect();
    let output = lab
        .fabric_command(PYTHON)?
        .args([
            "-c",
            FIXED_PORT_HTTP_CLIENT,
            dst,
            &port.to_string(),
            "/hostname",
            CLIENT_IP,
            &ports.join(","),
        ])
        .output()?;
    ensure!(
        output.status.success(),
        "fixed-port client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let (source, rest) = line
                .trim()
                .split_once(' ')
                .with_context(|| format!("client line {line:?}"))?;
            Ok((source.parse()?, rest.to_owned()))
        })
        .collect()
}

/// Node `i`'s tc counters in its `/metrics` (`corten_proxy_nat_events_total` by event).
fn nat_events(lab: &Lab, i: usize) -> anyhow::Result<BTreeMap<String, u64>> {
    let path = format!("/api/v1/nodes/{}/proxy/metrics", lab.node_name(i));
    let text = kubectl(lab, &["get", "--raw", &path])?;
    let mut events = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("corten_proxy_nat_events_total{event=\"") else {
            continue;
        };
        let (event, value) = rest
            .split_once("\"} ")
            .with_context(|| format!("metrics line {line:?}"))?;
        events.insert(event.to_owned(), value.parse()?);
    }
    Ok(events)
}

/// Routes the externalIP (inside the fabric namespace) to node `i`.
fn route_external_ip_to(lab: &Lab, i: usize) -> anyhow::Result<()> {
    let via = lab.node_ip(i).to_string();
    let args = [
        "route",
        "replace",
        &format!("{EXTERNAL_IP}/32"),
        "via",
        &via,
    ];
    let output = lab.fabric_command("ip")?.args(args).output()?;
    ensure!(
        output.status.success(),
        "ip {args:?} in the fabric namespace: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn maglev_keeps_each_flow_on_one_backend_across_nodes_and_restarts() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::for_test(&format!("maglev-{}", std::process::id()), 2);
    spec.control_plane = true;
    spec.network = NetworkMode::HostGw;
    spec.extra_agent_args = vec!["--proxy-external-interface".into(), "eth0".into()];
    if std::env::var_os("CORTEN_TEST_WITHOUT_MAGLEV").is_none() {
        spec.extra_agent_args.extend([
            "--proxy-load-balancing".into(),
            "maglev".into(),
            "--proxy-maglev-table-size".into(),
            "1021".into(),
        ]);
    }
    let mut lab = Lab::up(spec)?;
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;
    let node0 = lab.node_name(0);
    let node1 = lab.node_name(1);
    web_pods(&lab, &node0, &node1)?;
    let hashed = node_port_service(
        "hashed",
        json!({"app": "web"}),
        json!({"externalIPs": [EXTERNAL_IP]}),
    );
    let empty = node_port_service(
        "empty",
        json!({"app": "nothing"}),
        json!({"ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}]}),
    );
    for object in [hashed, empty] {
        apply(&lab, &object.to_string())?;
    }
    eventually(&lab, "three ready web pods", || ready_pods(&lab, 3))?;
    let empty_port = node_port(&lab, "empty", "http")?;
    let empty_udp_port = node_port(&lab, "empty", "dns")?;
    let client = ExternalClient::new(&lab)?;
    let every = names(&["local-a", "local-b", "remote-a"]);
    let external_url = format!("http://{EXTERNAL_IP}:80/hostname");
    // Both nodes' datapaths are ready (wget's ephemeral ports never meet the fixed ones).
    route_external_ip_to(&lab, 1)?;
    client.converge(&lab, &external_url, &every)?;
    route_external_ip_to(&lab, 0)?;
    client.converge(&lab, &external_url, &every)?;

    // Through node 0: every port keeps its backend, and the ports spread over all of them.
    let through_node0 = fixed_port_answers(&lab, EXTERNAL_IP, 80, FIXED_PORTS)?;
    let again = fixed_port_answers(&lab, EXTERNAL_IP, 80, FIXED_PORTS)?;
    ensure!(
        again == through_node0,
        "a port changed backends through node 0: {through_node0:?} then {again:?}"
    );
    let spread: BTreeSet<String> = through_node0.values().cloned().collect();
    ensure!(spread == every, "fixed ports reached only {spread:?}");
    println!("through node 0: {through_node0:?}");

    // Through node 1, which has never seen these flows: its own Maglev table sends each to
    // the same backend (at random, 24 ports would all agree with probability 3^-24).
    route_external_ip_to(&lab, 1)?;
    let through_node1 = fixed_port_answers(&lab, EXTERNAL_IP, 80, FIXED_PORTS)?;
    ensure!(
        through_node1 == through_node0,
        "node 1 sent flows elsewhere: node 0 {through_node0:?}, node 1 {through_node1:?}"
    );

    // New flows through node 0, then node 1's agent restarts (keeping its pinned maps) and
    // the same flows reach node 1 for the first time: still the same backends.
    route_external_ip_to(&lab, 0)?;
    let before_restart = fixed_port_answers(&lab, EXTERNAL_IP, 80, RESTART_PORTS)?;
    let pins = TC_LINK_PINS.map(|pin| lab.node_bpffs(1).join(pin));
    let old_links = pins
        .iter()
        .map(|pin| pinned_link_id(pin))
        .collect::<anyhow::Result<Vec<_>>>()?;
    lab.kill_agent(1)?;
    lab.start_agent(1)?;
    eventually(
        &lab,
        "node 1's restarted agent to replace its tc links",
        || {
            for (pin, old) in pins.iter().zip(&old_links) {
                if pinned_link_id(pin)? == *old {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    eventually(&lab, "node 1's restarted agent to sync its watches", || {
        let log = std::fs::read_to_string(lab.paths().agent_log(1))?;
        Ok((log.matches("service proxy synced its watches").count() >= 2).then_some(()))
    })?;
    route_external_ip_to(&lab, 1)?;
    let after_restart = fixed_port_answers(&lab, EXTERNAL_IP, 80, RESTART_PORTS)?;
    ensure!(
        after_restart == before_restart,
        "after node 1's restart flows moved: node 0 {before_restart:?}, node 1 \
         {after_restart:?}"
    );
    println!(
        "node 1 agreed with node 0 on {} flows",
        FIXED_PORTS.len() + RESTART_PORTS.len()
    );

    // A NodePort without endpoints refuses at once (kube-proxy's REJECT), on both nodes.
    for i in 0..2 {
        let ip = lab.node_ip(i).to_string();
        let lines = fixed_port_lines(&lab, &ip, empty_port, [20_201])?;
        let refused = lines.iter().all(|(_, rest)| {
            let mut words = rest.split(' ');
            words.next() == Some("ERROR")
                && words.next() == Some("ConnectionRefusedError")
                && words.next().and_then(|ms| ms.parse::<u64>().ok()) < Some(1000)
        });
        ensure!(
            refused && lines.len() == 1,
            "NodePort {ip}:{empty_port} without endpoints: {lines:?}"
        );
    }
    // Its UDP port answers a datagram with an ICMP port unreachable (kube-proxy's REJECT
    // with icmp-port-unreachable), so the client's connected socket fails at once.
    for i in 0..2 {
        let ip = lab.node_ip(i).to_string();
        let answers = client.udp(&lab, &ip, empty_udp_port)?;
        ensure!(
            answers == names(&["REFUSED"]),
            "UDP NodePort {ip}:{empty_udp_port} without endpoints: {answers:?}"
        );
    }
    println!("a NodePort without endpoints refused the client at once (TCP and UDP)");

    // The counters show no flow that missed its table entry, in the log and in the node's
    // /metrics (read through the API server's node proxy once the agent has read them):
    // the flows and the refusals above are counted there.
    for i in 0..2 {
        let log = std::fs::read_to_string(lab.paths().agent_log(i))?;
        ensure!(
            !log.contains("maglev_fallback"),
            "node {i}'s tc programs fell back to random picks"
        );
    }
    let events = eventually(&lab, "node 0's tc counters in its metrics", || {
        let events = nat_events(&lab, 0)?;
        let count = |event: &str| events.get(event).copied().unwrap_or_default();
        Ok((count("flows_created") > 0 && count("rejected") > 0).then_some(events))
    })?;
    ensure!(
        events.get("maglev_fallback") == Some(&0) && events.len() == 8,
        "node 0's tc counters: {events:?}"
    );
    println!("node 0's tc counters in its metrics: {events:?}");
    lab.down_checked()
}
