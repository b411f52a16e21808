//! The pod network across three lab nodes, in each mode corten-agent offers (`--network
//! vxlan` and `host-gw`): a Deployment spread over the nodes, and pods on every node reach
//! every server pod by IP over TCP and UDP, and through a ClusterIP Service over TCP and UDP. For VXLAN, each node's kernel holds exactly the expected
//! device, neighbours, FDB entries and routes; a 1400-byte ping with DF set crosses the
//! overlay; a node that goes away is removed from every other node within 2 s, and one that
//! comes (back) is added within 2 s. Pod traffic leaving the cluster CIDR is masqueraded: a
//! server in the lab's fabric namespace, which has no route to any pod, answers a pod and
//! sees a node's address as the client.
//!
//! Safety: everything runs inside the lab's namespaces; every wait is bounded.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::{apply, eventually, eventually_within, json, kubectl},
    lab::{Lab, LabSpec, NetworkMode, BUSYBOX_IMAGE},
    pod_network::{
        cluster_lab, deploy_servers, every_pod_reaches_every_pod,
        every_pod_reaches_every_pod_over_udp_and_a_service, node_facts, on_node, NodeFacts,
    },
};

const NODES: usize = 3;
/// The route protocol corten-agent marks its routes with (`ip` leaves it out of the lines
/// it prints when it filters by it).
const PROTO: &str = "78";
const VXLAN_DEVICE: &str = "corten.vxlan";

/// The network's kernel entries on node `i`, as sets of normalised lines.
#[derive(Debug, PartialEq, Eq)]
struct KernelEntries {
    routes: BTreeSet<String>,
    neighbours: BTreeSet<String>,
    fdb: BTreeSet<String>,
}

fn kernel_entries(lab: &Lab, i: usize, vxlan: bool) -> anyhow::Result<KernelEntries> {
    let lines = |text: String| -> BTreeSet<String> {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect()
    };
    let routes = lines(on_node(lab, i, "ip", &["route", "show", "proto", PROTO])?);
    if !vxlan {
        return Ok(KernelEntries {
            routes,
            neighbours: BTreeSet::new(),
            fdb: BTreeSet::new(),
        });
    }
    let neighbours = lines(on_node(
        lab,
        i,
        "ip",
        &["neigh", "show", "dev", VXLAN_DEVICE, "nud", "permanent"],
    )?);
    let fdb = lines(on_node(
        lab,
        i,
        "bridge",
        &["fdb", "show", "dev", VXLAN_DEVICE],
    )?);
    Ok(KernelEntries {
        routes,
        neighbours,
        fdb,
    })
}

/// What node `own` must hold for the other nodes in `facts`, as `ip`/`bridge` print it.
fn expected_entries(own: &str, facts: &BTreeMap<String, NodeFacts>, vxlan: bool) -> KernelEntries {
    let mut expected = KernelEntries {
        routes: BTreeSet::new(),
        neighbours: BTreeSet::new(),
        fdb: BTreeSet::new(),
    };
    for peer in facts
        .iter()
        .filter(|(name, _)| name.as_str() != own)
        .map(|(_, peer)| peer)
    {
        if vxlan {
            let Some(mac) = &peer.vtep else { continue };
            let gateway = peer.cidr.trim_end_matches("/24");
            expected.routes.insert(format!(
                "{} via {gateway} dev {VXLAN_DEVICE} onlink",
                peer.cidr
            ));
            expected
                .neighbours
                .insert(format!("{gateway} lladdr {mac} PERMANENT"));
            expected
                .fdb
                .insert(format!("{mac} dst {} self permanent", peer.ip));
        } else {
            expected
                .routes
                .insert(format!("{} via {} dev eth0", peer.cidr, peer.ip));
        }
    }
    expected
}

/// Waits until every node in `nodes` holds exactly what the current Node objects call for;
/// returns how long that took.
fn wait_for_exact_entries(
    lab: &Lab,
    nodes: &[usize],
    vxlan: bool,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eventually_within(lab, timeout, what, || {
        let facts = node_facts(lab)?;
        for &i in nodes {
            let own = lab.node_name(i);
            let want = expected_entries(&own, &facts, vxlan);
            let have = kernel_entries(lab, i, vxlan)?;
            if have != want {
                bail!("node {own} holds {have:#?}, expected {want:#?}");
            }
        }
        Ok(Some(()))
    })?;
    Ok(started.elapsed())
}

fn three_node_lab(name: &str, network: NetworkMode) -> anyhow::Result<Lab> {
    let mut spec = LabSpec::for_test(&format!("{name}-{}", std::process::id()), NODES);
    spec.network = network;
    cluster_lab(spec)
}

fn vtep_of(facts: &BTreeMap<String, NodeFacts>, node: &str) -> Option<String> {
    facts.get(node).and_then(|f| f.vtep.clone())
}

#[test]
fn vxlan_overlay_connects_pods_across_three_nodes() -> anyhow::Result<()> {
    let mut lab = three_node_lab("net-vxlan", NetworkMode::Vxlan)?;
    let all: Vec<usize> = (0..NODES).collect();
    eventually(&lab, "every node to publish its VTEP MAC", || {
        let facts = node_facts(&lab)?;
        Ok((facts.len() == NODES && facts.values().all(|f| f.vtep.is_some())).then_some(()))
    })?;
    wait_for_exact_entries(
        &lab,
        &all,
        true,
        Duration::from_secs(10),
        "the VXLAN entries",
    )?;

    // The device itself: VNI 1, port 8472, no learning, MTU = 1500 - 50.
    for i in 0..NODES {
        let link = on_node(&lab, i, "ip", &["-d", "link", "show", VXLAN_DEVICE])?;
        for wanted in ["mtu 1450", "vxlan id 1 ", "dstport 8472", "nolearning"] {
            ensure!(
                link.contains(wanted),
                "node {i}'s {VXLAN_DEVICE} lacks {wanted:?}: {link}"
            );
        }
    }

    let servers = deploy_servers(&lab)?;
    every_pod_reaches_every_pod(&lab, &servers)?;
    every_pod_reaches_every_pod_over_udp_and_a_service(&lab, &servers)?;

    // 1400 bytes with DF set cross the overlay (1372 bytes of ICMP payload + 28 of headers),
    // and the pods' interfaces have the overlay's MTU.
    let remote = servers
        .get(&lab.node_name(1))
        .context("no server pod on node 1")?;
    on_node(
        &lab,
        0,
        "ping",
        &["-M", "do", "-s", "1372", "-c", "3", "-W", "2", remote],
    )
    .context("a 1400-byte DF ping from node 0 to a pod on node 1")?;
    let veths = on_node(&lab, 1, "ip", &["-o", "link", "show"])?;
    let pod_links: Vec<&str> = veths.lines().filter(|l| l.contains(": ctn")).collect();
    ensure!(!pod_links.is_empty(), "no pod veth on node 1: {veths}");
    for link in pod_links {
        ensure!(
            link.contains("mtu 1450"),
            "a pod veth without MTU 1450: {link}"
        );
    }

    // A node goes: its agent dies and its Node object is deleted; within 2 s the other
    // nodes hold no entry for it.
    let gone = lab.node_name(2);
    lab.kill_agent(2)?;
    kubectl(&lab, &["delete", "node", &gone])?;
    let took = wait_for_exact_entries(&lab, &[0, 1], true, Duration::from_secs(2), "node removal")?;
    let facts = node_facts(&lab)?;
    ensure!(!facts.contains_key(&gone), "{gone} is still listed");
    eprintln!("entries for a deleted node removed within {took:?}");

    // It comes back: the agent registers again; once its Node has a pod CIDR and a VTEP
    // MAC, the others hold its entries within 2 s.
    lab.start_agent(2)?;
    eventually(&lab, "the returning node's VTEP MAC", || {
        Ok(vtep_of(&node_facts(&lab)?, &gone).map(|_| ()))
    })?;
    let took = wait_for_exact_entries(&lab, &all, true, Duration::from_secs(2), "node addition")?;
    eprintln!("entries for a new node added within {took:?}");
    lab.down()?;
    Ok(())
}

#[test]
fn host_gw_routes_connect_pods_across_three_nodes() -> anyhow::Result<()> {
    let lab = three_node_lab("net-hostgw", NetworkMode::HostGw)?;
    let all: Vec<usize> = (0..NODES).collect();
    eventually(&lab, "every node to have a pod CIDR", || {
        Ok((node_facts(&lab)?.len() == NODES).then_some(()))
    })?;
    wait_for_exact_entries(
        &lab,
        &all,
        false,
        Duration::from_secs(10),
        "the host-gw routes",
    )?;
    for i in 0..NODES {
        let link = on_node(&lab, i, "ip", &["link", "show"])?;
        ensure!(
            !link.contains(VXLAN_DEVICE),
            "node {i} has a VXLAN device in host-gw mode"
        );
    }
    let servers = deploy_servers(&lab)?;
    every_pod_reaches_every_pod(&lab, &servers)?;
    every_pod_reaches_every_pod_over_udp_and_a_service(&lab, &servers)?;
    pods_reach_outside_the_cluster_masqueraded(&lab)?;
    lab.down()?;
    Ok(())
}

/// Ends the outside server even when an assertion fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A busybox httpd in the fabric namespace (on the fabric's own address, with no route to
/// any pod CIDR) answers a pod on node 1, and logs a node address as the client.
fn pods_reach_outside_the_cluster_masqueraded(lab: &Lab) -> anyhow::Result<()> {
    const OUTSIDE: &str = "172.30.0.1";
    let root = tempfile::tempdir()?;
    std::fs::write(root.path().join("marker"), "outside\n")?;
    let log = root.path().join("httpd.log");
    let status = lab
        .fabric_command("ip")?
        .args(["addr", "add", &format!("{OUTSIDE}/24"), "dev", "br0"])
        .status()?;
    ensure!(status.success(), "addressing the fabric bridge failed");
    let routes = lab.fabric_command("ip")?.args(["route"]).output()?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    ensure!(
        !routes.contains("10.42."),
        "the fabric must not route to pods: {routes}"
    );
    let _server = Reaped(
        lab.fabric_command("busybox")?
            .args(["httpd", "-f", "-v", "-p", &format!("{OUTSIDE}:8081"), "-h"])
            .arg(root.path())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the outside httpd")?,
    );
    let script = format!(
        "for try in 1 2 3 4 5; do timeout 3 wget -q -O - http://{OUTSIDE}:8081/marker && exit 0; sleep 1; done; exit 1"
    );
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "egress"},
        "spec": {"nodeName": lab.node_name(1), "restartPolicy": "Never",
            "containers": [{"name": "wget", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}]},
    });
    apply(lab, &pod.to_string())?;
    let phase = eventually(lab, "the egress pod to finish", || {
        let pod = json(lab, &["get", "pod", "egress"])?;
        let phase = pod["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
    })?;
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(
        phase == "Succeeded",
        "a pod could not reach {OUTSIDE} outside the cluster; the server saw: {seen}"
    );
    let node_ip = corten_tests::lab::node_ip(1).to_string();
    ensure!(
        seen.contains(&node_ip) && !seen.contains("10.42."),
        "the outside server must see node 1's address {node_ip}, not a pod's: {seen}"
    );
    Ok(())
}
