//! `cargo xtask bench network`: the pod network across lab nodes, per mode corten-agent offers
//! (`vxlan`, `host-gw`, `bgp` as an iBGP full mesh between the nodes). For each mode it brings
//! up a 3-node lab with its control plane and a Deployment of one busybox pod per node, then
//! measures between the pods on nodes 0 and 1:
//!
//! - TCP throughput: iperf3 (Debian's) entered into the two pods' network namespaces, one
//!   stream for [`IPERF_SECONDS`];
//! - latency: ICMP round trips (`ping`, [`PINGS`] of them) and TCP request/response round
//!   trips of one byte on one connection ([`ROUND_TRIPS`] of them, python3 on both sides, so
//!   the figure includes the interpreter's overhead on each side);
//!
//! and the time a node takes to join: node 2's agent is killed and its Node deleted until
//! node 0 no longer reaches its pod; then the agent starts again, and the bench records when
//! its Node is Ready, when the pod the Deployment keeps on it is Running, and when node 0's
//! pod first opens a TCP connection to that pod.
//!
//! Prints a table and writes `target/bench/network.json`. Needs root and the lab's tools
//! (`cargo xtask deps`, `cargo xtask images`). Safety: everything runs inside the labs'
//! namespaces (nothing leaves the machine), every wait is bounded, every process it starts is
//! killed by PID, and each lab is taken down, also on failure.
use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::{eventually_within, json, kubectl},
    lab::{Lab, LabSpec, NetworkMode},
    pod_network::{cluster_lab, deploy_servers, in_pod_network, pod_netns_pid, wait_bounded},
};
use serde_json::{json, Value};

const NODES: usize = 3;
const IPERF_SECONDS: u32 = 5;
const IPERF_PORT: u16 = 5201;
const PINGS: u32 = 50;
const ROUND_TRIPS: u32 = 2000;
const RR_PORT: u16 = 9100;
/// The busybox httpd port of the Deployment's pods.
const WEB_PORT: u16 = 8080;
const PYTHON: &str = "/usr/bin/python3";
const COMMAND: &str = "cargo xtask bench network";

/// A one-connection echo server of single bytes; exits after the connection or 60 s.
const RR_SERVER: &str = r#"
import os, socket, sys, threading
threading.Timer(60, os._exit, [0]).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    b = c.recv(1)
    if not b:
        break
    c.sendall(b)
"#;

/// Sends single bytes on one connection and waits for each echo; prints the round trips'
/// percentiles in microseconds as JSON.
const RR_CLIENT: &str = r#"
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection((host, port), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.settimeout(5)
for _ in range(50):
    c.sendall(b"x"); c.recv(1)
rtts = []
for _ in range(n):
    t = time.perf_counter_ns()
    c.sendall(b"x")
    if not c.recv(1):
        sys.exit("closed")
    rtts.append((time.perf_counter_ns() - t) / 1000)
c.close()
rtts.sort()
pct = lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))]
print(json.dumps({"p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99),
                  "mean_us": sum(rtts) / len(rtts)}))
"#;

/// Whether a TCP connection to `host:port` opens within 0.5 s (exit status).
const CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
except OSError:
    sys.exit(1)
"#;

fn main() -> anyhow::Result<()> {
    let modes = [
        ("vxlan", NetworkMode::Vxlan),
        ("host-gw", NetworkMode::HostGw),
        ("bgp", NetworkMode::Bgp),
    ];
    let mut results = serde_json::Map::new();
    for (name, mode) in modes {
        eprintln!("network bench: {name}");
        let started = Instant::now();
        let figures = bench_mode(name, mode).with_context(|| format!("the {name} bench"))?;
        eprintln!("network bench: {name} took {:?}", started.elapsed());
        results.insert(name.to_owned(), figures);
    }

    println!(
        "\n{:<8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "mode",
        "tcp Gbit/s",
        "retrans",
        "ping ms",
        "rr p50 us",
        "rr p99 us",
        "ready s",
        "running s",
        "reach s"
    );
    for (name, f) in &results {
        let g = |path: &[&str]| {
            path.iter()
                .fold(f, |v, k| &v[*k])
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{name:<8} {:>12.2} {:>10} {:>10.3} {:>10.0} {:>10.0} {:>10.2} {:>10.2} {:>10.2}",
            g(&["tcp_throughput", "gbit_per_s"]),
            g(&["tcp_throughput", "retransmits"]),
            g(&["ping", "avg_ms"]),
            g(&["tcp_request_response", "p50_us"]),
            g(&["tcp_request_response", "p99_us"]),
            g(&["join", "node_ready_s"]),
            g(&["join", "pod_running_s"]),
            g(&["join", "pod_reachable_s"]),
        );
    }
    let report = json!({
        "command": COMMAND,
        "workload": {
            "nodes": NODES,
            "between": "pods on lab nodes 0 and 1 (different network namespaces, one veth each)",
            "iperf3_seconds": IPERF_SECONDS,
            "iperf3_streams": 1,
            "pings": PINGS,
            "tcp_round_trips": ROUND_TRIPS,
            "join": "node 2's agent killed and its Node deleted; times from the agent's start",
            "bgp": "iBGP full mesh between the nodes, no route reflector",
        },
        "modes": results,
    });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate's parent directory")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("network.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// One mode's figures, on a lab of its own that is taken down afterwards.
fn bench_mode(name: &str, mode: NetworkMode) -> anyhow::Result<Value> {
    let mut spec = LabSpec::for_test(&format!("bench-{name}-{}", std::process::id()), NODES);
    spec.network = mode;
    let mut lab = cluster_lab(spec)?;
    let servers = deploy_servers(&lab)?;
    let ip_on = |i: usize| -> anyhow::Result<String> {
        servers
            .get(&lab.node_name(i))
            .cloned()
            .with_context(|| format!("no web pod on node {i}"))
    };
    let (ip0, ip1) = (ip_on(0)?, ip_on(1)?);
    let (pid0, pid1) = (pod_netns_pid(&lab, 0, &ip0)?, pod_netns_pid(&lab, 1, &ip1)?);
    // Wait until the pods reach each other before measuring (routes, BGP sessions).
    wait_reachable(&lab, 0, pid0, &ip1, Duration::from_secs(60))?;

    let throughput = iperf(&lab, pid0, pid1, &ip1)?;
    let ping = ping(&lab, pid0, &ip1)?;
    let rr = request_response(&lab, pid0, pid1, &ip1)?;
    let join = join(&mut lab, pid0)?;
    lab.down()?;
    Ok(json!({
        "tcp_throughput": throughput,
        "ping": ping,
        "tcp_request_response": rr,
        "join": join,
    }))
}

/// Polls until a TCP connection from the pod network of `pid` (node `i`) to `ip`'s web port
/// opens, at most `timeout`; returns when it first did.
fn wait_reachable(
    lab: &Lab,
    i: usize,
    pid: u32,
    ip: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if connects(lab, i, pid, ip)? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{ip}:{WEB_PORT} unreachable from node {i}'s pod for {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connects(lab: &Lab, i: usize, pid: u32, ip: &str) -> anyhow::Result<bool> {
    let child = in_pod_network(lab, i, pid, PYTHON)?
        .args(["-c", CONNECT, ip, &WEB_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(
        wait_bounded(child, Duration::from_secs(5), "a connection attempt")?
            .status
            .success(),
    )
}

/// One iperf3 TCP stream from the pod on node 0 to the one on node 1.
fn iperf(lab: &Lab, pid0: u32, pid1: u32, ip1: &str) -> anyhow::Result<Value> {
    let port = IPERF_PORT.to_string();
    let mut server = in_pod_network(lab, 1, pid1, "iperf3")?
        .args(["-s", "-1", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (`cargo xtask deps` installs it)")?;
    // The server listens within moments; the client retries its connection meanwhile.
    let mut result = None;
    for _ in 0..20 {
        let child = in_pod_network(lab, 0, pid0, "iperf3")?
            .args([
                "-c",
                ip1,
                "-p",
                &port,
                "-t",
                &IPERF_SECONDS.to_string(),
                "-J",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = wait_bounded(
            child,
            Duration::from_secs(u64::from(IPERF_SECONDS) + 20),
            "the iperf3 client",
        )?;
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if output.status.success() && report["end"]["sum_received"].is_object() {
            result = Some(report);
            break;
        }
        eprintln!(
            "iperf3 attempt failed ({}): {}",
            output.status,
            report["error"].as_str().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = server.kill();
    let _ = server.wait();
    let report = result.context("iperf3 never completed a test")?;
    let received = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's report lacks end.sum_received")?;
    let sent = &report["end"]["sum_sent"];
    Ok(json!({
        "gbit_per_s": received / 1e9,
        "retransmits": sent["retransmits"],
        "seconds": IPERF_SECONDS,
    }))
}

/// `ping` from the pod on node 0 to `ip1`: the round trips' min/avg/max/mdev in ms.
fn ping(lab: &Lab, pid0: u32, ip1: &str) -> anyhow::Result<Value> {
    let child = in_pod_network(lab, 0, pid0, "ping")?
        .args(["-q", "-c", &PINGS.to_string(), "-i", "0.02", "-W", "1", ip1])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let output = wait_bounded(child, Duration::from_secs(30), "ping")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "ping failed: {text}");
    // "rtt min/avg/max/mdev = 0.051/0.073/0.210/0.021 ms"
    let figures: Vec<f64> = text
        .lines()
        .find_map(|l| l.split_once(" = "))
        .filter(|(what, _)| what.contains("min/avg/max"))
        .map(|(_, v)| {
            v.trim_end_matches(" ms")
                .split('/')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ensure!(figures.len() == 4, "unexpected ping summary: {text}");
    Ok(json!({
        "count": PINGS,
        "min_ms": figures[0], "avg_ms": figures[1], "max_ms": figures[2], "mdev_ms": figures[3],
    }))
}

/// One-byte request/response round trips on one TCP connection between the two pods.
fn request_response(lab: &Lab, pid0: u32, pid1: u32, ip1: &str) -> anyhow::Result<Value> {
    use std::io::BufRead;
    let mut server = in_pod_network(lab, 1, pid1, PYTHON)?
        .args(["-c", RR_SERVER, &RR_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    let stdout = server.stdout.take().context("the echo server's stdout")?;
    // The server prints its line at once or exits (EOF), and lives at most 60 s.
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let result = (|| {
        ensure!(line.trim() == "ready", "the echo server did not start");
        let child = in_pod_network(lab, 0, pid0, PYTHON)?
            .args(["-c", RR_CLIENT, ip1, &RR_PORT.to_string()])
            .arg(ROUND_TRIPS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = wait_bounded(child, Duration::from_secs(60), "the round-trip client")?;
        ensure!(
            output.status.success(),
            "the round-trip client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut figures: Value = serde_json::from_slice(&output.stdout)?;
        figures["count"] = json!(ROUND_TRIPS);
        Ok(figures)
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The web pod Running on node `name`: its UID and IP, if there is one.
fn running_pod_on(lab: &Lab, name: &str) -> anyhow::Result<Option<(String, String)>> {
    let pods = json(
        lab,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "--field-selector",
            &format!("spec.nodeName={name}"),
        ],
    )?;
    Ok(pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .find_map(|p| {
            Some((
                p["metadata"]["uid"].as_str()?.to_owned(),
                p["status"]["podIP"].as_str()?.to_owned(),
            ))
        }))
}

/// Node 2 leaves (agent killed, Node deleted) until node 0's pod no longer reaches its pod,
/// then joins again: seconds from its agent's start until its Node is Ready, its web pod is
/// Running, and node 0's pod opens a connection to that pod.
fn join(lab: &mut Lab, pid0: u32) -> anyhow::Result<Value> {
    let name = lab.node_name(2);
    let (old_uid, old_ip) = running_pod_on(lab, &name)?.context("no web pod on node 2")?;
    lab.kill_agent(2)?;
    kubectl(lab, &["delete", "node", &name])?;
    eventually_within(
        lab,
        Duration::from_secs(30),
        "node 0 to stop reaching node 2's pod",
        || Ok((!connects(lab, 0, pid0, &old_ip)?).then_some(())),
    )?;

    let started = Instant::now();
    lab.start_agent(2)?;
    let deadline = started + Duration::from_secs(120);
    let (mut ready, mut running, mut pod_ip, mut same_pod) = (None, None, None, false);
    let reachable = loop {
        if Instant::now() > deadline {
            bail!(
                "node 2 did not rejoin within 120 s (Ready after {ready:?}, pod Running after \
                 {running:?})"
            );
        }
        if ready.is_none() {
            let node = json(lab, &["get", "nodes"])?;
            let is_ready = node["items"].as_array().into_iter().flatten().any(|n| {
                n["metadata"]["name"] == name.as_str()
                    && n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if is_ready {
                ready = Some(started.elapsed());
            }
        }
        if pod_ip.is_none() {
            // The old pod's object may outlive its Node; only a pod the rejoined node runs
            // counts (a new one, or the old one once its node reported on it again).
            if let Some((uid, ip)) = running_pod_on(lab, &name)? {
                if uid != old_uid || ready.is_some() {
                    running = Some(started.elapsed());
                    same_pod = uid == old_uid;
                    pod_ip = Some(ip);
                }
            }
        }
        if let Some(ip) = &pod_ip {
            if connects(lab, 0, pid0, ip)? {
                break started.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let mut figures = BTreeMap::new();
    figures.insert("node_ready_s", json!(secs(ready)));
    figures.insert("pod_running_s", json!(secs(running)));
    figures.insert("pod_reachable_s", json!(reachable.as_secs_f64()));
    figures.insert("pod_ip", json!(pod_ip));
    figures.insert("previous_pod_ip", json!(old_ip));
    figures.insert("same_pod_as_before", json!(same_pod));
    Ok(json!(figures))
}
