//! The `bgp` network mode's wiring between the cluster and the [`bgp`](super::bgp) speaker:
//! the speaker runs on the node IP, peers with every other Node's InternalIP (an iBGP full
//! mesh, kept current as Nodes come and go) and with the configured external peers or route
//! reflectors, and advertises this node's pod CIDR once the Node has one. What the peers
//! advertise is folded by [`RouteTable`] into the map of prefixes and next hops that
//! [`sync`](super::sync) installs.
//!
//! Owns the choice of peers, the advertised prefix and the per-peer bookkeeping of learned
//! paths. It must not speak BGP (that is `bgp`) nor touch the kernel (that is `sync`).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
};

use anyhow::Context;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    runtime::{reflector, watcher, WatchStreamExt},
    Api, Client,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{
    bgp::{message::BGP_PORT, Ipv4Prefix, PeerConfig, RouteEvent, Speaker, SpeakerConfig},
    peers::{self, Cidr},
    sync::Learned,
};

/// How the node speaks BGP (`corten-agent --bgp-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpModeConfig {
    /// This node's name (its own Node is not a peer).
    pub node_name: String,
    /// This node's IP: the listen address, router id and NEXT_HOP.
    pub node_ip: Ipv4Addr,
    /// Our AS (`--bgp-as`).
    pub local_as: u32,
    /// The hold time we propose, seconds: 0 or at least 3 (`--bgp-hold-time`).
    pub hold_time: u16,
    /// Whether every other Node is an iBGP peer (`--bgp-node-mesh`).
    pub node_mesh: bool,
    /// External peers and route reflectors (`--bgp-peer`).
    pub external_peers: Vec<PeerArg>,
}

/// One `--bgp-peer IP[:AS]`; without an AS the peer is internal (our AS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerArg {
    /// The peer's address.
    pub address: Ipv4Addr,
    /// Its AS, when given.
    pub remote_as: Option<u32>,
}

/// Why a `--bgp-peer` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a BGP peer such as 172.30.0.1 or 172.30.0.1:64513 (IPv4 address, optional AS 1-4294967295)")]
pub struct PeerArgError(pub String);

impl FromStr for PeerArg {
    type Err = PeerArgError;

    fn from_str(s: &str) -> Result<Self, PeerArgError> {
        let refused = || PeerArgError(s.to_owned());
        let (address, remote_as) = match s.split_once(':') {
            Some((address, asn)) => {
                let asn: u32 = asn.parse().map_err(|_| refused())?;
                if asn == 0 {
                    return Err(refused());
                }
                (address, Some(asn))
            }
            None => (s, None),
        };
        let address: Ipv4Addr = address.parse().map_err(|_| refused())?;
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return Err(refused());
        }
        Ok(Self { address, remote_as })
    }
}

/// The speaker's peers: the other Nodes' InternalIPs (when `mesh`) and the external peers,
/// sorted by address. An external peer at a Node's address replaces the mesh's entry; our
/// own address is never a peer.
pub fn desired_peers<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    config: &BgpModeConfig,
) -> Vec<PeerConfig> {
    let mut peers: BTreeMap<Ipv4Addr, PeerConfig> = BTreeMap::new();
    if config.node_mesh {
        for node in nodes {
            if node.metadata.name.as_deref() == Some(config.node_name.as_str()) {
                continue;
            }
            if let Some(address) = peers::internal_ip(node) {
                peers.insert(
                    address,
                    PeerConfig {
                        address,
                        remote_as: config.local_as,
                        port: None,
                    },
                );
            }
        }
    }
    for external in &config.external_peers {
        peers.insert(
            external.address,
            PeerConfig {
                address: external.address,
                remote_as: external.remote_as.unwrap_or(config.local_as),
                port: None,
            },
        );
    }
    peers.remove(&config.node_ip);
    peers.into_values().collect()
}

/// This node's pod CIDR as a prefix to advertise, once the control plane assigned one.
pub fn own_prefix<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    node_name: &str,
) -> Option<Ipv4Prefix> {
    nodes
        .into_iter()
        .find(|node| node.metadata.name.as_deref() == Some(node_name))
        .and_then(|node| node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok())
}

/// Every path the peers advertise, per prefix and peer: a prefix stays while any peer still
/// advertises it, and a withdrawal removes only that peer's path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    paths: BTreeMap<Ipv4Prefix, BTreeMap<Ipv4Addr, Ipv4Addr>>,
}

impl RouteTable {
    /// Records one event.
    pub fn apply(&mut self, event: RouteEvent) {
        match event {
            RouteEvent::Learned {
                prefix,
                next_hop,
                peer,
            } => {
                self.paths.entry(prefix).or_default().insert(peer, next_hop);
            }
            RouteEvent::Withdrawn { prefix, peer } => {
                if let Some(paths) = self.paths.get_mut(&prefix) {
                    paths.remove(&peer);
                    if paths.is_empty() {
                        self.paths.remove(&prefix);
                    }
                }
            }
        }
    }

    /// One next hop per prefix: the path learned from the next hop itself (the originator)
    /// when there is one, else the path of the lowest peer address — so a prefix's route
    /// changes only when the path it uses goes away.
    pub fn best(&self) -> BTreeMap<Cidr, Ipv4Addr> {
        self.paths
            .iter()
            .filter_map(|(prefix, paths)| {
                let direct = paths
                    .iter()
                    .find(|(peer, next_hop)| peer == next_hop)
                    .map(|(_, next_hop)| *next_hop);
                let next_hop = direct.or_else(|| paths.values().next().copied())?;
                Some((Cidr::from(*prefix), next_hop))
            })
            .collect()
    }
}

/// A running `bgp` mode: the learned routes for [`sync::run`](super::sync::run), and the
/// task that keeps the speaker in step with the Nodes (it ends only on failure).
#[derive(Debug)]
pub struct BgpMode {
    /// The best next hop of each learned prefix.
    pub learned: Learned,
    /// Follows the Nodes and the speaker's events.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the speaker on `config.node_ip`, port 179, with the external peers; the Nodes add
/// the mesh peers and this node's prefix as they are read.
pub async fn start(client: Client, config: BgpModeConfig) -> anyhow::Result<BgpMode> {
    let mut speaker_config = SpeakerConfig::new(config.node_ip);
    speaker_config.local_as = config.local_as;
    speaker_config.hold_time = config.hold_time;
    speaker_config.listen = SocketAddr::from((config.node_ip, BGP_PORT));
    speaker_config.peers = desired_peers(std::iter::empty::<&Node>(), &config);
    let (speaker, events) = Speaker::start(speaker_config)
        .await
        .context("starting the BGP speaker")?;
    info!(
        local_as = config.local_as,
        hold_time = config.hold_time,
        mesh = config.node_mesh,
        external = config.external_peers.len(),
        "BGP speaker listening on {}",
        speaker.local_addr()
    );
    let (learned_tx, learned) = watch::channel(BTreeMap::new());
    tokio::spawn(follow_events(events, learned_tx));
    let task = tokio::spawn(follow_nodes(client, config, speaker));
    Ok(BgpMode { learned, task })
}

/// Folds the speaker's events into the learned map until the speaker stops.
async fn follow_events(
    mut events: mpsc::Receiver<RouteEvent>,
    learned: watch::Sender<BTreeMap<Cidr, Ipv4Addr>>,
) {
    let mut table = RouteTable::default();
    while let Some(event) = events.recv().await {
        table.apply(event);
        // Drain what is queued so a burst (a session's full table) is one update.
        while let Ok(event) = events.try_recv() {
            table.apply(event);
        }
        let best = table.best();
        learned.send_if_modified(|current| {
            let changed = *current != best;
            *current = best;
            changed
        });
    }
}

/// Keeps the speaker's peers and prefix equal to what the Nodes say.
async fn follow_nodes(
    client: Client,
    config: BgpModeConfig,
    speaker: Speaker,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store::<Node>();
    let stream = reflector(writer, watcher(nodes, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let mut stream = std::pin::pin!(stream);
    let mut current_peers: Option<Vec<PeerConfig>> = None;
    let mut current_prefix: Option<Ipv4Prefix> = None;
    loop {
        match stream.try_next().await {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the Node watch ended"),
            Err(e) => {
                warn!(error = %e, "node watch error");
                continue;
            }
        }
        let all = reader.state();
        let peers = desired_peers(all.iter().map(|n| n.as_ref()), &config);
        if current_peers.as_ref() != Some(&peers) {
            let addresses: Vec<String> = peers.iter().map(|p| p.address.to_string()).collect();
            info!(peers = ?addresses, "BGP peers");
            speaker
                .set_peers(peers.clone())
                .await
                .context("updating the BGP peers")?;
            current_peers = Some(peers);
        }
        let prefix = own_prefix(all.iter().map(|n| n.as_ref()), &config.node_name);
        if prefix != current_prefix {
            if let Some(prefix) = prefix {
                info!(%prefix, "advertising this node's pod CIDR");
            }
            speaker.set_prefixes(prefix);
            current_prefix = prefix;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn prefix(s: &str) -> Ipv4Prefix {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn learned(p: &str, next_hop: &str, peer: &str) -> RouteEvent {
        RouteEvent::Learned {
            prefix: prefix(p),
            next_hop: ip(next_hop),
            peer: ip(peer),
        }
    }

    fn withdrawn(p: &str, peer: &str) -> RouteEvent {
        RouteEvent::Withdrawn {
            prefix: prefix(p),
            peer: ip(peer),
        }
    }

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let addresses: Vec<_> = ip
            .map(|ip| vec![json!({"type": "InternalIP", "address": ip})])
            .unwrap_or_default();
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": addresses},
        }))
        .expect("a valid node")
    }

    fn config(mesh: bool, external: &[&str]) -> BgpModeConfig {
        BgpModeConfig {
            node_name: "n0".into(),
            node_ip: ip("172.30.0.10"),
            local_as: 64512,
            hold_time: 90,
            node_mesh: mesh,
            external_peers: external
                .iter()
                .map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}")))
                .collect(),
        }
    }

    #[test]
    fn a_prefix_stays_while_any_peer_advertises_it() {
        let mut table = RouteTable::default();
        // Node 1's CIDR, from node 1 and reflected by the route reflector.
        table.apply(learned("10.42.1.0/24", "172.30.0.11", "172.30.0.1"));
        table.apply(learned("10.42.1.0/24", "172.30.0.11", "172.30.0.11"));
        table.apply(learned("192.168.77.0/24", "172.30.0.1", "172.30.0.1"));
        let want = BTreeMap::from([
            (cidr("10.42.1.0/24"), ip("172.30.0.11")),
            (cidr("192.168.77.0/24"), ip("172.30.0.1")),
        ]);
        assert_eq!(table.best(), want);
        table.apply(withdrawn("10.42.1.0/24", "172.30.0.11"));
        assert_eq!(table.best(), want, "the reflector still advertises it");
        table.apply(withdrawn("10.42.1.0/24", "172.30.0.1"));
        assert_eq!(
            table.best(),
            BTreeMap::from([(cidr("192.168.77.0/24"), ip("172.30.0.1"))])
        );
        // Withdrawing what was never learned changes nothing.
        table.apply(withdrawn("10.42.9.0/24", "172.30.0.1"));
        table.apply(withdrawn("192.168.77.0/24", "172.30.0.12"));
        assert_eq!(table.best().len(), 1);
    }

    #[test]
    fn the_originators_path_wins_and_a_new_advertisement_replaces_the_peers_old_one() {
        let mut table = RouteTable::default();
        table.apply(learned("10.42.2.0/24", "172.30.0.99", "172.30.0.1"));
        table.apply(learned("10.42.2.0/24", "172.30.0.12", "172.30.0.12"));
        assert_eq!(table.best()[&cidr("10.42.2.0/24")], ip("172.30.0.12"));
        table.apply(withdrawn("10.42.2.0/24", "172.30.0.12"));
        assert_eq!(table.best()[&cidr("10.42.2.0/24")], ip("172.30.0.99"));
        table.apply(learned("10.42.2.0/24", "172.30.0.12", "172.30.0.1"));
        assert_eq!(table.best()[&cidr("10.42.2.0/24")], ip("172.30.0.12"));
        // Without a direct path, the lowest peer's path.
        table.apply(learned("10.42.3.0/24", "172.30.0.50", "172.30.0.20"));
        table.apply(learned("10.42.3.0/24", "172.30.0.40", "172.30.0.5"));
        assert_eq!(table.best()[&cidr("10.42.3.0/24")], ip("172.30.0.40"));
    }

    #[test]
    fn peers_are_the_other_nodes_and_the_external_peers() {
        let nodes = [
            node("n0", Some("10.42.0.0/24"), Some("172.30.0.10")),
            node("n2", None, Some("172.30.0.12")),
            node("n1", Some("10.42.1.0/24"), Some("172.30.0.11")),
            node("n3", Some("10.42.3.0/24"), None),
        ];
        let peers = desired_peers(&nodes, &config(true, &["172.30.0.1", "172.30.0.12:65000"]));
        let shown: Vec<(String, u32)> = peers
            .iter()
            .map(|p| (p.address.to_string(), p.remote_as))
            .collect();
        assert_eq!(
            shown,
            [
                ("172.30.0.1".to_owned(), 64512),
                ("172.30.0.11".to_owned(), 64512),
                ("172.30.0.12".to_owned(), 65000),
            ]
        );
        let peers = desired_peers(&nodes, &config(false, &["172.30.0.1:64513"]));
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].remote_as, 64513);
        assert!(desired_peers(&nodes, &config(false, &[])).is_empty());
        assert_eq!(own_prefix(&nodes, "n0"), Some(prefix("10.42.0.0/24")));
        assert_eq!(own_prefix(&nodes, "n2"), None);
        assert_eq!(own_prefix(&nodes, "n9"), None);
    }

    #[test]
    fn peer_flags_parse_and_bad_ones_are_refused() {
        let plain: PeerArg = "172.30.0.1".parse().expect("parses");
        assert_eq!(plain.remote_as, None);
        let with_as: PeerArg = "172.30.0.1:4200000000".parse().expect("parses");
        assert_eq!(with_as.remote_as, Some(4_200_000_000));
        for bad in [
            "",
            "172.30.0.1:",
            "172.30.0.1:0",
            "172.30.0.1:x",
            "172.30.0.1:4294967296",
            "0.0.0.0",
            "::1",
            "node1",
            "172.30.0.1/24",
        ] {
            assert!(bad.parse::<PeerArg>().is_err(), "{bad:?} must be refused");
        }
    }
}
