//! The lab's promises: nodes reach each other over the fabric, nothing in the lab has a
//! default route, the root namespace has no way into the lab, and `down` / `gc` leave
//! nothing behind (namespaces, veths, mounts, cgroups, bpffs pins, processes).
use std::{collections::BTreeSet, process::Command};

use corten_agent::proxy::{socket_lb::MapSizes, SocketLb};
use corten_tests::lab::{self, Lab, LabSpec};

fn lab_name(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// Names of veth interfaces in the root namespace.
fn root_veths() -> anyhow::Result<BTreeSet<String>> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()?;
    anyhow::ensure!(out.status.success(), "ip -n {netns} {args:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn nodes_reach_each_other_and_the_lab_is_sealed() -> anyhow::Result<()> {
    let veths_before = root_veths()?;
    let mut spec = LabSpec::for_test(&lab_name("iso"), 3);
    spec.images.clear();
    let lab = Lab::up(spec)?;

    // Every node reaches every other node over the fabric.
    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            let target = lab.node_ip(to).to_string();
            let out = lab
                .command(from, "busybox")?
                .args(["ping", "-c", "1", "-W", "2", &target])
                .output()?;
            assert!(
                out.status.success(),
                "node {from} cannot ping node {to} ({target}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // No namespace of the lab has a default route, and nothing outside the fabric's /24 is
    // reachable from a node: the kernel refuses before any packet is sent.
    for netns in lab.namespaces() {
        let default = ip_in(&netns, &["-4", "route", "show", "default"])?;
        assert!(
            default.trim().is_empty(),
            "{netns} has a default route: {default}"
        );
        let default6 = ip_in(&netns, &["-6", "route", "show", "default"])?;
        assert!(
            default6.trim().is_empty(),
            "{netns} has an IPv6 default route: {default6}"
        );
    }
    let outside = lab
        .command(0, "ip")?
        .args(["route", "get", "192.0.2.1"])
        .output()?;
    assert!(
        !outside.status.success(),
        "node 0 has a route out of the lab"
    );
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("unreachable"),
        "unexpected: {outside:?}"
    );

    // The root namespace has no link into the lab and no route to it other than its own
    // default route: the lab's addresses are not reachable from here. (No packet is sent to
    // prove it: from the root namespace it would go out of the machine's uplink.)
    assert_eq!(
        root_veths()?,
        veths_before,
        "lab veths appeared in the root namespace"
    );
    let routes =
        String::from_utf8_lossy(&Command::new("ip").args(["-4", "route"]).output()?.stdout)
            .into_owned();
    for line in routes.lines() {
        assert!(
            !line.starts_with("172.30.")
                && !line.starts_with("10.42.")
                && !line.starts_with("10.43."),
            "root namespace has a route into the lab: {line}"
        );
    }
    let root_addrs =
        String::from_utf8_lossy(&Command::new("ip").args(["-4", "addr"]).output()?.stdout)
            .into_owned();
    assert!(
        !root_addrs.contains("172.30.0."),
        "a lab address is on a root interface"
    );
    for i in 0..3 {
        let get = Command::new("ip")
            .args(["-4", "-o", "route", "get", &lab.node_ip(i).to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&get.stdout);
        assert!(
            !text.contains(" dev n") && !text.contains("br0"),
            "root namespace routes node {i} through a lab link: {text}"
        );
    }

    // `down` leaves nothing of the lab behind.
    let paths = lab.paths().clone();
    lab.down()?;
    assert_eq!(lab::leftovers(&paths), Vec::<String>::new());
    assert_eq!(root_veths()?, veths_before);
    Ok(())
}

#[test]
fn gc_removes_what_a_killed_run_left() -> anyhow::Result<()> {
    let name = lab_name("gc");
    let mut spec = LabSpec::for_test(&name, 2);
    spec.images.clear();
    spec.detach = true;
    let lab = Lab::up(spec)?;
    let paths = lab.paths().clone();

    // Leave what a crashed test would: a process inside a node, pinned maps on the node's
    // bpffs, containerd running.
    let sleeper = lab.command(1, "busybox")?.args(["sleep", "600"]).spawn()?;
    let sleeper_proc = std::path::PathBuf::from(format!("/proc/{}", sleeper.id()));
    let pinned = lab.node_bpffs(0).join("CORTEN_SERVICES");
    drop(SocketLb::load(
        MapSizes::default(),
        Some(&lab.node_bpffs(0)),
    )?);
    assert!(pinned.exists(), "the map pin did not outlive its loader");
    let containerd_pid =
        std::fs::read_to_string(lab.paths().node_run_dir(0).join("containerd.pid"))?;
    let containerd_proc = std::path::PathBuf::from(format!("/proc/{}", containerd_pid.trim()));
    assert!(containerd_proc.exists());
    lab.keep_running();
    assert!(
        lab::leftovers(&paths)
            .iter()
            .any(|l| l.starts_with("process")),
        "the lab's processes should still be running"
    );

    let removed = lab::gc_matching(|lab| lab == name)?;
    assert_eq!(removed, vec![name.clone()]);
    assert_eq!(lab::leftovers(&paths), Vec::<String>::new());
    // gc kills it and, as it is our child, reaps it.
    assert!(
        !sleeper_proc.exists(),
        "the process inside the node was not ended"
    );
    drop(sleeper);
    assert!(!containerd_proc.exists(), "containerd survived gc");
    assert!(!pinned.exists(), "the map pin survived gc");
    Ok(())
}

#[test]
fn a_detached_lab_is_reattached_and_brought_down() -> anyhow::Result<()> {
    let name = lab_name("attach");
    let mut spec = LabSpec::for_test(&name, 1);
    spec.images.clear();
    spec.detach = true;
    Lab::up(spec)?.keep_running();

    let lab = Lab::attach(&name)?;
    assert_eq!(lab.nodes(), 1);
    let out = lab
        .command(0, "ip")?
        .args(["-4", "-o", "addr", "show", "eth0"])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("172.30.0.10/24"));
    let paths = lab.paths().clone();
    lab.down()?;
    assert_eq!(lab::leftovers(&paths), Vec::<String>::new());
    assert!(
        Lab::attach(&name).is_err(),
        "a removed lab can still be attached"
    );
    Ok(())
}
