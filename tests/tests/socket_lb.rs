//! The socket programs attached to a lab node's cgroup, programmed with a hand-made desired
//! state: a TCP connect to a virtual IP:port reaches a real listener inside the node, only
//! for processes in that cgroup; a service without backends refuses (`ECONNREFUSED`) at
//! once; removing the service undoes the translation; a second loader on the same pins reads
//! back what the first wrote; a pinned map of another layout is replaced. ClientIP session
//! affinity keeps a client on its backend also when that backend moves to another slot, and
//! drops it when the backend leaves. A sync that fails on a full map is retried by the next,
//! which replans everything and succeeds once a Service has made room.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use corten_agent::proxy::{
    controller,
    desired::{
        BackendScope, BackendSet, BackendSetKey, DesiredState, Frontend, FrontendAddress,
        FrontendKey, FrontendKind, NodeContext, ServicePortRef, ServiceRef, SessionAffinity,
        WhenEmpty, SERVICE_NAME_LABEL,
    },
    index::{DesiredIndex, Event},
    socket_lb::MapSizes,
    Protocol, SocketLb, SocketLbError,
};
use corten_tests::lab::{Lab, LabSpec};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 43, 0, 1), 80);
const TOKEN: &str = "corten-backend-ok";

/// Kills the listener even when an assertion fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wget(lab: &Lab, inside_cgroup: bool, url: &str) -> anyhow::Result<Output> {
    let mut command = if inside_cgroup {
        lab.command(0, "busybox")?
    } else {
        lab.command_outside_cgroup(0, "busybox")?
    };
    Ok(command.args(["wget", "-q", "-O", "-", url]).output()?)
}

/// One ClusterIP service on [`VIP`] with `backends`.
fn one_service(backends: &[SocketAddrV4]) -> DesiredState {
    service_with_affinity(backends, None)
}

/// One ClusterIP service on [`VIP`] with `backends` and optional ClientIP affinity.
fn service_with_affinity(
    backends: &[SocketAddrV4],
    affinity: Option<SessionAffinity>,
) -> DesiredState {
    let key = BackendSetKey {
        port: ServicePortRef {
            service: ServiceRef {
                namespace: "default".into(),
                name: "vip".into(),
            },
            port_name: String::new(),
            protocol: Protocol::Tcp,
        },
        scope: BackendScope::Cluster,
    };
    let mut state = DesiredState::default();
    state.frontends.insert(
        FrontendKey {
            address: FrontendAddress::Ip(*VIP.ip()),
            port: VIP.port(),
            protocol: Protocol::Tcp,
        },
        Frontend {
            kind: FrontendKind::ClusterIp,
            from_outside: key.clone(),
            from_node: key.clone(),
        },
    );
    state.backend_sets.insert(
        key,
        BackendSet {
            active: backends.iter().copied().collect(),
            when_empty: backends.is_empty().then_some(WhenEmpty::Reject),
            affinity,
            ..BackendSet::default()
        },
    );
    state
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

#[test]
fn connect4_redirects_a_virtual_ip_only_inside_the_node_cgroup() -> anyhow::Result<()> {
    let mut spec = LabSpec::for_test(&format!("slb-{}", std::process::id()), 1);
    spec.images.clear();
    let lab = Lab::up(spec)?;
    let node_ip = lab.node_ip(0);

    // A real listener inside the node.
    let www = lab.paths().node_run_dir(0).join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), TOKEN)?;
    let _listener = Reaped(
        lab.command(0, "busybox")?
            .args(["httpd", "-f", "-p", &format!("{node_ip}:8080"), "-h"])
            .arg(&www)
            .spawn()
            .context("starting busybox httpd in the node")?,
    );
    let direct = format!("http://{node_ip}:8080/");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = wget(&lab, true, &direct)?;
        if out.status.success() && text(&out.stdout) == TOKEN {
            break;
        }
        if Instant::now() > deadline {
            bail!("the listener never answered: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let vip_url = format!("http://{VIP}/");
    // Before the program exists the VIP leads nowhere: the node has no route for it.
    let before = wget(&lab, true, &vip_url)?;
    assert!(
        !before.status.success(),
        "VIP answered without the program: {before:?}"
    );

    // A pin of another layout (as an older agent would leave) is replaced, not reused.
    let stale = lab.node_bpffs(0).join("CORTEN_SERVICES");
    let created = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&stale)
        .args(["type", "hash", "key", "8", "value", "8", "entries", "16"])
        .args(["name", "stale"])
        .output()
        .context("running bpftool")?;
    assert!(created.status.success(), "bpftool: {created:?}");

    let mut lb = SocketLb::load(MapSizes::default(), Some(&lab.node_bpffs(0)))?;
    lb.attach(&lab.node_cgroup(0))?;
    let backend = SocketAddrV4::new(node_ip, 8080);
    lb.sync(&one_service(&[backend]))?;

    let inside = wget(&lab, true, &vip_url)?;
    assert!(
        inside.status.success(),
        "connect to the VIP in the node cgroup failed: {inside:?}"
    );
    assert_eq!(text(&inside.stdout), TOKEN);

    // Same network namespace, outside the node's cgroup: untouched, so unreachable.
    let outside = wget(&lab, false, &vip_url)?;
    assert!(
        !outside.status.success(),
        "a process outside the cgroup was redirected: {outside:?}"
    );
    assert!(text(&outside.stderr).contains("unreachable"), "{outside:?}");

    // No backends: the connect is refused at once instead of hanging.
    lb.sync(&one_service(&[]))?;
    let started = Instant::now();
    let refused = wget(&lab, true, &vip_url)?;
    assert!(
        !refused.status.success(),
        "a service without backends answered: {refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        started.elapsed()
    );
    assert!(text(&refused.stderr).contains("refused"), "{refused:?}");

    // Backends again, then the service removed: the translation is gone.
    lb.sync(&one_service(&[backend]))?;
    assert_eq!(text(&wget(&lab, true, &vip_url)?.stdout), TOKEN);

    // A second loader on the same pins sees what the first wrote and has nothing to do.
    let mut reloaded = SocketLb::load(MapSizes::default(), Some(&lab.node_bpffs(0)))?;
    assert_eq!(reloaded.applied().frontends.len(), 1);
    assert_eq!(reloaded.sync(&one_service(&[backend]))?.operations, 0);
    drop(reloaded);

    lb.sync(&DesiredState::default())?;
    let removed = wget(&lab, true, &vip_url)?;
    assert!(
        !removed.status.success(),
        "removed service still translated: {removed:?}"
    );

    // The pins live on the node's own bpffs and go with the lab.
    for map in [
        "CORTEN_FRONTENDS",
        "CORTEN_SERVICES",
        "CORTEN_BACKENDS",
        "CORTEN_MAGLEV",
        "CORTEN_TERMINATING",
        "CORTEN_SOCK_REV_NAT",
        "CORTEN_AFFINITY",
    ] {
        assert!(
            lab.node_bpffs(0).join(map).exists(),
            "map {map} is not pinned"
        );
    }
    drop(lb);
    lab.down_checked()
}

/// Waits until busybox httpd answers `url` from inside the node with `token`.
fn wait_for_listener(lab: &Lab, url: &str, token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = wget(lab, true, url)?;
        if out.status.success() && text(&out.stdout) == token {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the listener {url} never answered: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_ip_affinity_follows_a_moved_backend_and_leaves_a_gone_one() -> anyhow::Result<()> {
    let mut spec = LabSpec::for_test(&format!("slbaff-{}", std::process::id()), 1);
    spec.images.clear();
    let lab = Lab::up(spec)?;
    let node_ip = lab.node_ip(0);
    let ports = [8081u16, 8082, 8083, 8084, 8085, 8086];
    let mut listeners = Vec::new();
    for port in ports {
        let www = lab.paths().node_run_dir(0).join(format!("www-{port}"));
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), format!("backend-{port}"))?;
        listeners.push(Reaped(
            lab.command(0, "busybox")?
                .args(["httpd", "-f", "-p", &format!("{node_ip}:{port}"), "-h"])
                .arg(&www)
                .spawn()
                .context("starting busybox httpd in the node")?,
        ));
        wait_for_listener(
            &lab,
            &format!("http://{node_ip}:{port}/"),
            &format!("backend-{port}"),
        )?;
    }
    let all: Vec<SocketAddrV4> = ports
        .iter()
        .map(|p| SocketAddrV4::new(node_ip, *p))
        .collect();
    let by_answer = |answer: &str| -> anyhow::Result<SocketAddrV4> {
        all.iter()
            .copied()
            .find(|b| answer == format!("backend-{}", b.port()))
            .with_context(|| format!("answer {answer:?} from no backend"))
    };
    let vip_url = format!("http://{VIP}/");
    // `count` connections from the node; every one must land on the same backend.
    let pinned = |count: usize| -> anyhow::Result<SocketAddrV4> {
        let mut seen = Vec::new();
        for _ in 0..count {
            let out = wget(&lab, true, &vip_url)?;
            anyhow::ensure!(out.status.success(), "VIP failed: {out:?}");
            seen.push(by_answer(&text(&out.stdout))?);
        }
        seen.dedup();
        anyhow::ensure!(seen.len() == 1, "one client reached {seen:?}");
        Ok(seen[0])
    };
    let affinity = Some(SessionAffinity { timeout_seconds: 2 });
    let mut lb = SocketLb::load(MapSizes::default(), None)?;
    lb.attach(&lab.node_cgroup(0))?;
    lb.sync(&service_with_affinity(&all, affinity))?;
    let slots = |lb: &SocketLb| -> Vec<SocketAddrV4> {
        lb.applied()
            .services
            .values()
            .next()
            .map(|s| s.slots.clone())
            .unwrap_or_default()
    };

    // A client pinned to a backend in slot 3 or later: let the 2-second affinity expire and
    // pick again until it lands there ((1/2)^14 ≈ 6e-5 to never get there).
    let mut found = None;
    for _ in 0..14 {
        let backend = pinned(5)?;
        let slot = slots(&lb).iter().position(|b| *b == backend);
        if slot.is_some_and(|s| s >= 3) {
            found = Some((backend, slot.unwrap_or_default()));
            break;
        }
        std::thread::sleep(Duration::from_millis(2_300));
    }
    let (backend, slot) = found.context("never pinned to slot 3 or later")?;
    // Remove slot 0's backend and every one after the pinned one: the pinned backend moves
    // into slot 0 and at least two others stay (a client that lost its affinity would land
    // on the pinned one with probability at most 1/3).
    let before = slots(&lb);
    let keep: Vec<SocketAddrV4> = before[1..=slot].to_vec();
    lb.sync(&service_with_affinity(&keep, affinity))?;
    let after = slots(&lb);
    assert_eq!(after.first(), Some(&backend), "{before:?} -> {after:?}");
    assert_eq!(
        pinned(5)?,
        backend,
        "the affinity did not follow the moved backend"
    );
    println!("affinity followed {backend} from slot {slot} to slot 0 ({before:?} -> {after:?})");

    // The pinned backend leaves: the client gets one of the others, and stays there.
    let others: Vec<SocketAddrV4> = all.iter().copied().filter(|b| *b != backend).collect();
    lb.sync(&service_with_affinity(&others, affinity))?;
    let moved = pinned(5)?;
    assert_ne!(
        moved, backend,
        "new connections still reach the removed {backend}"
    );
    println!("after {backend} left the client stays on {moved}");

    drop(lb);
    drop(listeners);
    lab.down_checked()
}

/// A ClusterIP Service `name` on 10.43.1.`n`:80 and its slice with one ready endpoint
/// 10.42.0.`n`:8080, as the watches hand them over.
fn watched(name: &str, n: u8) -> anyhow::Result<(Service, EndpointSlice)> {
    let cluster_ip = format!("10.43.1.{n}");
    let service = serde_json::from_value(json!({
        "metadata": { "namespace": "default", "name": name },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{ "port": 80, "protocol": "TCP", "targetPort": 8080 }],
        },
    }))?;
    let slice = serde_json::from_value(json!({
        "metadata": {
            "namespace": "default",
            "name": format!("{name}-x7k2p"),
            "labels": { (SERVICE_NAME_LABEL): name },
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": [format!("10.42.0.{n}")], "conditions": { "ready": true } }],
        "ports": [{ "port": 8080, "protocol": "TCP" }],
    }))?;
    Ok((service, slice))
}

#[test]
fn a_sync_that_failed_on_a_full_map_is_repaired_once_there_is_room() -> anyhow::Result<()> {
    let mut spec = LabSpec::for_test(&format!("slbf-{}", std::process::id()), 1);
    spec.images.clear();
    let lab = Lab::up(spec)?;
    // Room for two frontends; pinned, so that a second loader can read the maps back.
    let sizes = MapSizes {
        frontends: 2,
        ..MapSizes::default()
    };
    let pins = lab.node_bpffs(0);
    let mut lb = SocketLb::load(sizes, Some(&pins))?;
    let mut index = DesiredIndex::new(NodeContext {
        node_name: lab.node_name(0),
        node_ips: vec![lab.node_ip(0)],
    });
    let (a, a_slice) = watched("a", 1)?;
    let (b, b_slice) = watched("b", 2)?;
    let (c, c_slice) = watched("c", 3)?;
    index.service_event(Event::Init);
    index.service_event(Event::InitApply(a.clone()));
    index.service_event(Event::InitApply(b));
    index.service_event(Event::InitDone);
    index.slice_event(Event::Init);
    index.slice_event(Event::InitApply(a_slice.clone()));
    index.slice_event(Event::InitApply(b_slice));
    index.slice_event(Event::InitDone);
    ensure!(index.listed(), "the index does not count as listed");
    let frontends = |lb: &SocketLb| -> BTreeSet<FrontendKey> {
        lb.applied().frontends.keys().copied().collect()
    };
    controller::sync_once(&mut index, &mut lb)?;
    let listed = frontends(&lb);
    assert_eq!(listed.len(), 2, "{listed:?}");

    // A third Service: its frontend does not fit. The error is the map's, and what the maps
    // hold was read back.
    index.service_event(Event::Apply(c));
    index.slice_event(Event::Apply(c_slice));
    let full = controller::sync_once(&mut index, &mut lb)
        .err()
        .context("a third frontend fit a map of two")?;
    println!("the full map: {full}");
    assert!(
        matches!(&full, SocketLbError::Maps(error) if error.is_full()),
        "{full:?}"
    );
    assert!(
        full.to_string()
            .contains("the map is full: raise --proxy-max-frontends"),
        "{full}"
    );
    assert_eq!(frontends(&lb), listed);
    // a and b, and c's service entry written before its frontend failed.
    assert_eq!(lb.applied().services.len(), 3);
    // The controller's retry, with no new event: the same failure, nothing lost.
    let again = controller::sync_once(&mut index, &mut lb)
        .err()
        .context("the retry succeeded on a map that is still full")?;
    assert!(
        matches!(&again, SocketLbError::Maps(error) if error.is_full()),
        "{again:?}"
    );
    assert_eq!(frontends(&lb), listed);
    // The entry the failure left is removed by the retry before it writes c again: failed
    // retries do not pile up entries.
    assert_eq!(lb.applied().services.len(), 3);

    // Service a goes. Its change alone is incremental, but after a failure the next sync
    // plans everything, and a's frontend goes before c's is written.
    index.service_event(Event::Delete(a));
    index.slice_event(Event::Delete(a_slice));
    controller::sync_once(&mut index, &mut lb)?;
    let wanted: BTreeSet<FrontendKey> = index.state().frontends.keys().copied().collect();
    assert_eq!(wanted.len(), 2, "{wanted:?}");
    assert!(
        wanted
            .iter()
            .any(|key| key.address == FrontendAddress::Ip(Ipv4Addr::new(10, 43, 1, 3))),
        "{wanted:?}"
    );
    assert_eq!(frontends(&lb), wanted);

    // A second loader reads exactly that back from the maps, and has nothing to do.
    let mut reloaded = SocketLb::load(sizes, Some(&pins))?;
    assert_eq!(reloaded.applied().frontends, lb.applied().frontends);
    assert_eq!(reloaded.applied().services.len(), 2);
    assert_eq!(reloaded.sync(index.state())?.operations, 0);
    drop(reloaded);
    drop(lb);
    lab.down_checked()
}
