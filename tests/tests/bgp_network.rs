//! The `bgp` pod network across three lab nodes, against a real BIRD 2: BIRD runs in the
//! lab's fabric namespace as an iBGP route reflector (AS 64512, every node a `rr client`)
//! while the nodes also keep their own full mesh. BIRD learns every node's pod CIDR via the
//! node's IP; a prefix BIRD originates reaches every node's kernel (route protocol 78, via
//! BIRD's address); every node routes to the others' pod CIDRs via their node IPs and pods on
//! different nodes reach each other by IP (TCP and UDP) and through a ClusterIP Service (TCP and
//! UDP). A node whose agent dies is withdrawn from the other nodes and from BIRD at once (the
//! kernel closes its sessions) and comes back when its agent restarts; one whose agent hangs
//! is withdrawn when the peers' hold timers expire, and comes back when it resumes.
//!
//! Safety: BIRD runs in the lab's fabric namespace with its own config and control socket in
//! a temp dir, has no `kernel` protocol (it never touches the fabric's routes) and is killed
//! by PID; every wait is bounded.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::eventually_within,
    lab::{Lab, LabSpec, NetworkMode},
    pod_network::{
        cluster_lab, deploy_servers, every_pod_reaches_every_pod,
        every_pod_reaches_every_pod_over_udp_and_a_service, node_facts, on_node, NodeFacts,
    },
};

const NODES: usize = 3;
/// BIRD's address on the fabric bridge.
const BIRD_IP: &str = "172.30.0.1";
const LOCAL_AS: u32 = 64512;
/// The prefix BIRD originates toward the nodes.
const ORIGINATED: &str = "192.168.77.0/24";
/// The hold time the agents propose (and BIRD's own), seconds: short, but RFC 4271's
/// minimum is 3 and a loaded 2-core machine must not flap.
const HOLD_TIME: u64 = 6;
/// The route protocol corten-agent marks its routes with (`ip` leaves it out of the lines
/// it prints when it filters by it).
const PROTO: &str = "78";

/// A BIRD 2 in the fabric namespace, with its config, control socket and log in a temp dir;
/// killed (by PID) and reaped on drop.
struct Bird {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bird {
    fn start(lab: &Lab) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating BIRD's temp dir")?;
        let config = dir.path().join("bird.conf");
        let socket = dir.path().join("bird.ctl");
        let log = dir.path().join("bird.log");
        fs::write(&config, bird_config(lab)).context("writing bird.conf")?;
        let log_file = fs::File::create(&log).context("creating bird.log")?;
        let child = lab
            .fabric_command("bird")?
            .arg("-c")
            .arg(&config)
            .arg("-s")
            .arg(&socket)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting bird (is Debian's bird2 installed? `cargo xtask deps`)")?;
        let mut bird = Self {
            child,
            socket,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = bird.child.try_wait()? {
                bail!("BIRD exited ({status}): {}", bird.log_tail());
            }
            if bird.birdc(lab, &["show", "status"]).is_ok() {
                return Ok(bird);
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "BIRD does not answer on its control socket: {}",
                    bird.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `birdc -s SOCK ARGS`'s output.
    fn birdc(&self, lab: &Lab, args: &[&str]) -> anyhow::Result<String> {
        let output = lab
            .fabric_command("birdc")?
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running birdc")?;
        ensure!(
            output.status.success(),
            "birdc {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The prefixes in BIRD's table and the next hops of their routes.
    fn routes(&self, lab: &Lab) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
        Ok(parse_bird_routes(&self.birdc(lab, &["show", "route"])?))
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A route reflector for the lab's nodes that originates [`ORIGINATED`]. No `kernel`
/// protocol: BIRD's table stays BIRD's.
fn bird_config(lab: &Lab) -> String {
    let mut config = format!(
        r#"log stderr all;
router id {BIRD_IP};
protocol device {{ scan time 2; }}
protocol static originated {{
  ipv4;
  route {ORIGINATED} blackhole;
}}
template bgp lab_node {{
  local {BIRD_IP} as {LOCAL_AS};
  direct;
  rr client;
  hold time {HOLD_TIME};
  connect retry time 2;
  error wait time 1, 4;
  ipv4 {{ import all; export all; gateway direct; }};
}}
"#
    );
    for i in 0..lab.nodes() {
        config.push_str(&format!(
            "protocol bgp node{i} from lab_node {{ neighbor {} as {LOCAL_AS}; }}\n",
            lab.node_ip(i)
        ));
    }
    config
}

/// Reads `birdc show route`: a route's first line starts with its prefix (continuation
/// routes of the same prefix are indented), its next hop follows as `via ADDR on IFACE`.
fn parse_bird_routes(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let indented = line.starts_with(char::is_whitespace);
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !indented {
            current = (first.contains('/') && first.contains('.')).then(|| first.to_owned());
            if let Some(prefix) = &current {
                routes.entry(prefix.clone()).or_default();
            }
        } else if first == "via" {
            if let (Some(prefix), Some(via)) = (&current, words.next()) {
                routes
                    .entry(prefix.clone())
                    .or_default()
                    .insert(via.to_owned());
            }
        }
    }
    routes
}

/// What BIRD must hold: each node's pod CIDR via its IP, and its own prefix.
fn expected_bird_routes(facts: &BTreeMap<String, NodeFacts>) -> BTreeMap<String, BTreeSet<String>> {
    let mut want: BTreeMap<String, BTreeSet<String>> = facts
        .values()
        .map(|f| (f.cidr.clone(), BTreeSet::from([f.ip.clone()])))
        .collect();
    want.insert(ORIGINATED.to_owned(), BTreeSet::new());
    want
}

/// The routes node `i` holds with protocol 78, normalised.
fn node_routes(lab: &Lab, i: usize) -> anyhow::Result<BTreeSet<String>> {
    Ok(on_node(lab, i, "ip", &["route", "show", "proto", PROTO])?
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect())
}

/// What node `own` must hold: BIRD's prefix via BIRD, and the pod CIDR of every node in
/// `facts` but itself via that node's IP.
fn expected_node_routes(own: &str, facts: &BTreeMap<String, NodeFacts>) -> BTreeSet<String> {
    let mut want: BTreeSet<String> = facts
        .iter()
        .filter(|(name, _)| name.as_str() != own)
        .map(|(_, f)| format!("{} via {} dev eth0", f.cidr, f.ip))
        .collect();
    want.insert(format!("{ORIGINATED} via {BIRD_IP} dev eth0"));
    want
}

/// Waits until BIRD holds exactly the routes of the nodes in `facts` and every node in
/// `nodes` exactly its routes toward the others in `facts`; returns how long that took.
fn wait_for_routes(
    lab: &Lab,
    bird: &Bird,
    nodes: &[usize],
    facts: &BTreeMap<String, NodeFacts>,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let result = eventually_within(lab, timeout, what, || {
        let want = expected_bird_routes(facts);
        let have = bird.routes(lab)?;
        if have != want {
            bail!("BIRD holds {have:?}, expected {want:?}");
        }
        for &i in nodes {
            let own = lab.node_name(i);
            let want = expected_node_routes(&own, facts);
            let have = node_routes(lab, i)?;
            if have != want {
                bail!("node {own} holds {have:?}, expected {want:?}");
            }
        }
        Ok(Some(()))
    });
    if let Err(e) = result {
        let protocols = bird
            .birdc(lab, &["show", "protocols"])
            .unwrap_or_else(|e| format!("{e:#}"));
        bail!(
            "{e:#}\nBIRD's protocols:\n{protocols}\nBIRD's log:\n{}",
            bird.log_tail()
        );
    }
    Ok(started.elapsed())
}

#[test]
fn bgp_mode_with_a_bird_route_reflector_connects_pods_across_three_nodes() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut spec = LabSpec::for_test(&format!("net-bgp-{}", std::process::id()), NODES);
    spec.network = NetworkMode::Bgp;
    spec.extra_agent_args = vec![
        "--bgp-peer".into(),
        BIRD_IP.into(),
        "--bgp-hold-time".into(),
        HOLD_TIME.to_string(),
    ];
    let mut lab = cluster_lab(spec)?;
    let all: Vec<usize> = (0..NODES).collect();
    let facts = eventually_within(
        &lab,
        Duration::from_secs(60),
        "every node to have a pod CIDR",
        || {
            let facts = node_facts(&lab)?;
            Ok((facts.len() == NODES).then_some(facts))
        },
    )?;

    // BIRD on the fabric bridge; the fabric itself has no route to any pod.
    let status = lab
        .fabric_command("ip")?
        .args(["addr", "add", &format!("{BIRD_IP}/24"), "dev", "br0"])
        .status()?;
    ensure!(status.success(), "addressing the fabric bridge failed");
    let bird = Bird::start(&lab)?;

    let took = wait_for_routes(
        &lab,
        &bird,
        &all,
        &facts,
        Duration::from_secs(60),
        "BIRD to learn every pod CIDR and every node to learn BIRD's prefix and the others'",
    )?;
    eprintln!("routes exchanged with BIRD and between nodes within {took:?}");
    let fabric_routes = lab.fabric_command("ip")?.args(["route"]).output()?;
    let fabric_routes = String::from_utf8_lossy(&fabric_routes.stdout).into_owned();
    ensure!(
        !fabric_routes.contains("10.42.") && !fabric_routes.contains("192.168.77."),
        "BIRD must not touch the fabric's kernel routes: {fabric_routes}"
    );

    let servers = deploy_servers(&lab)?;
    every_pod_reaches_every_pod(&lab, &servers)?;
    every_pod_reaches_every_pod_over_udp_and_a_service(&lab, &servers)?;

    // Node 2's agent dies: its sessions end, and within the hold time the other nodes and
    // BIRD no longer route to its pod CIDR.
    let gone = lab.node_name(2);
    lab.kill_agent(2)?;
    let mut remaining = facts.clone();
    remaining.remove(&gone);
    let took = wait_for_routes(
        &lab,
        &bird,
        &[0, 1],
        &remaining,
        Duration::from_secs(HOLD_TIME + 10),
        "node 2's pod CIDR to be withdrawn",
    )?;
    eprintln!("a dead node's pod CIDR withdrawn within {took:?}");

    // It comes back: its routes return everywhere, and it learns the others' again.
    lab.start_agent(2)?;
    let took = wait_for_routes(
        &lab,
        &bird,
        &all,
        &facts,
        Duration::from_secs(60),
        "node 2's routes to return",
    )?;
    eprintln!("a restarted node's routes restored within {took:?}");

    // Node 1's agent hangs: its sessions stay open but silent, so only the hold timers of
    // its peers (BIRD's and the other agents') withdraw its pod CIDR.
    let hung = lab.node_name(1);
    lab.freeze_agent(1, true)?;
    let mut remaining = facts.clone();
    remaining.remove(&hung);
    let took = wait_for_routes(
        &lab,
        &bird,
        &[0, 2],
        &remaining,
        Duration::from_secs(HOLD_TIME + 10),
        "a hung node's pod CIDR to be withdrawn when the hold timers expire",
    );
    lab.freeze_agent(1, false)?;
    let took = took?;
    eprintln!("a hung node's pod CIDR withdrawn within {took:?}");
    // Keepalives go every HOLD_TIME / 3, so the peers heard from it at most that long ago.
    ensure!(
        took >= Duration::from_secs(HOLD_TIME * 2 / 3 - 1),
        "withdrawn after {took:?}, before any hold timer could expire"
    );
    let took = wait_for_routes(
        &lab,
        &bird,
        &all,
        &facts,
        Duration::from_secs(60),
        "the thawed node's routes to return",
    )?;
    eprintln!("a thawed node's routes restored within {took:?}");
    ensure!(
        node_facts(&lab)? == facts,
        "the Nodes' addresses or pod CIDRs changed during the test"
    );
    lab.check_agents()?;
    drop(bird);
    lab.down()?;
    eprintln!("bgp_network took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn bird_route_listings_parse() {
    let text = "BIRD 2.0.12 ready.
Table master4:
10.42.0.0/24         unicast [node0 05:30:00.123] * (100) [i]
\tvia 172.30.0.10 on br0
                     unicast [node1 05:30:01.000] (100) [i]
\tvia 172.30.0.11 on br0
192.168.77.0/24      blackhole [originated 05:29:58.000] * (200)
10.42.1.0/24         unicast [node1 05:30:00.456] * (100) [i]
\tvia 172.30.0.11 on br0
";
    let routes = parse_bird_routes(text);
    let shown: Vec<(&str, Vec<&str>)> = routes
        .iter()
        .map(|(p, via)| (p.as_str(), via.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        shown,
        [
            ("10.42.0.0/24", vec!["172.30.0.10", "172.30.0.11"]),
            ("10.42.1.0/24", vec!["172.30.0.11"]),
            ("192.168.77.0/24", vec![]),
        ]
    );
}
