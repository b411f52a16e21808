//! What the node's kernel should hold to reach the other nodes' pods, per network mode, and
//! the ordered operations that turn what it holds into that.
//!
//! Owns the decisions: which neighbour, bridge FDB entry and route each peer needs (VXLAN, as
//! flannel does it), the route via each peer's node IP (host-gw) or via a BGP next hop, and
//! the order of changes (for a peer that appears: neighbour, FDB entry, route; for one that
//! goes: the reverse). Pure data: it must not touch the kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::peers::{Cidr, Mac, Peer};

/// Which link a route leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// The node's VXLAN device, with the gateway on-link (the remote subnet's `.0`).
    Vxlan,
    /// The node's underlay link (the one holding the node IP).
    Underlay,
}

/// A route to a peer's pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteSpec {
    /// The destination.
    pub dst: Cidr,
    /// The next hop.
    pub gateway: Ipv4Addr,
    /// The outgoing link.
    pub via: Via,
}

/// A permanent neighbour entry on the VXLAN device: a peer subnet's `.0` is at its VTEP MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighbourSpec {
    /// The address (the peer subnet's `.0`).
    pub ip: Ipv4Addr,
    /// The peer's VTEP MAC.
    pub mac: Mac,
}

/// A permanent bridge FDB entry on the VXLAN device: frames for a VTEP MAC go to that
/// peer's node IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbSpec {
    /// The peer's VTEP MAC.
    pub mac: Mac,
    /// The peer's node IP (the outer destination).
    pub dst: Ipv4Addr,
}

/// The entries corten manages in a node's kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetState {
    /// Routes (corten's route protocol, main table).
    pub routes: BTreeSet<RouteSpec>,
    /// Neighbours on the VXLAN device.
    pub neighbours: BTreeSet<NeighbourSpec>,
    /// FDB entries on the VXLAN device.
    pub fdb: BTreeSet<FdbSpec>,
}

/// A peer a mode cannot serve, and why; it is skipped until that changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The peer's node name.
    pub node: String,
    /// Why.
    pub reason: &'static str,
}

/// VXLAN: for each peer with a published VTEP MAC, a neighbour entry, an FDB entry and an
/// on-link route to its pod CIDR via the subnet's `.0`.
pub fn vxlan(peers: &[Peer]) -> (NetState, Vec<Skipped>) {
    let mut state = NetState::default();
    let mut skipped = Vec::new();
    for peer in peers {
        let Some(mac) = peer.vtep_mac else {
            skipped.push(Skipped {
                node: peer.name.clone(),
                reason: "it has not published its VTEP MAC yet",
            });
            continue;
        };
        let gateway = peer.pod_cidr.addr;
        state.neighbours.insert(NeighbourSpec { ip: gateway, mac });
        state.fdb.insert(FdbSpec {
            mac,
            dst: peer.node_ip,
        });
        state.routes.insert(RouteSpec {
            dst: peer.pod_cidr,
            gateway,
            via: Via::Vxlan,
        });
    }
    (state, skipped)
}

/// host-gw: a route to each peer's pod CIDR via its node IP, for peers on the underlay's own
/// subnet (a gateway must be directly reachable).
pub fn host_gw(peers: &[Peer], underlay: Cidr) -> (NetState, Vec<Skipped>) {
    let mut state = NetState::default();
    let mut skipped = Vec::new();
    for peer in peers {
        if !underlay.contains(peer.node_ip) {
            skipped.push(Skipped {
                node: peer.name.clone(),
                reason: "its node IP is not on this node's subnet (host-gw needs shared L2)",
            });
            continue;
        }
        state.routes.insert(RouteSpec {
            dst: peer.pod_cidr,
            gateway: peer.node_ip,
            via: Via::Underlay,
        });
    }
    (state, skipped)
}

/// BGP: a route per learned prefix via its next hop, leaving out this node's own pod CIDR
/// and next hops that are this node.
pub fn bgp(
    learned: &BTreeMap<Cidr, Ipv4Addr>,
    own_cidr: Option<Cidr>,
    own_ip: Ipv4Addr,
) -> NetState {
    let mut state = NetState::default();
    for (&dst, &gateway) in learned {
        if Some(dst) == own_cidr || gateway == own_ip {
            continue;
        }
        state.routes.insert(RouteSpec {
            dst,
            gateway,
            via: Via::Underlay,
        });
    }
    state
}

/// One change to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Remove a route.
    DelRoute(RouteSpec),
    /// Remove an FDB entry.
    DelFdb(FdbSpec),
    /// Remove a neighbour entry.
    DelNeighbour(NeighbourSpec),
    /// Add a neighbour entry.
    AddNeighbour(NeighbourSpec),
    /// Add an FDB entry.
    AddFdb(FdbSpec),
    /// Add a route.
    AddRoute(RouteSpec),
}

/// The operations that turn `current` into `desired`: removals first (routes, then FDB
/// entries, then neighbours), then additions (neighbours, FDB entries, routes), so a route
/// never points at a next hop the kernel cannot resolve yet. Entries in both are untouched.
pub fn diff(current: &NetState, desired: &NetState) -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(
        current
            .routes
            .difference(&desired.routes)
            .map(|r| Op::DelRoute(*r)),
    );
    ops.extend(current.fdb.difference(&desired.fdb).map(|f| Op::DelFdb(*f)));
    ops.extend(
        current
            .neighbours
            .difference(&desired.neighbours)
            .map(|n| Op::DelNeighbour(*n)),
    );
    ops.extend(
        desired
            .neighbours
            .difference(&current.neighbours)
            .map(|n| Op::AddNeighbour(*n)),
    );
    ops.extend(desired.fdb.difference(&current.fdb).map(|f| Op::AddFdb(*f)));
    ops.extend(
        desired
            .routes
            .difference(&current.routes)
            .map(|r| Op::AddRoute(*r)),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8, mac: bool) -> Peer {
        Peer {
            name: format!("n{i}"),
            node_ip: Ipv4Addr::new(172, 30, 0, 10 + i),
            pod_cidr: format!("10.42.{i}.0/24").parse().expect("cidr"),
            vtep_mac: mac.then_some(Mac([2, 0, 0, 0, 0, i])),
        }
    }

    #[test]
    fn vxlan_gives_each_peer_a_neighbour_an_fdb_entry_and_an_onlink_route() {
        let (state, skipped) = vxlan(&[peer(1, true), peer(2, true), peer(3, false)]);
        assert_eq!(
            state.neighbours.iter().copied().collect::<Vec<_>>(),
            [
                NeighbourSpec {
                    ip: Ipv4Addr::new(10, 42, 1, 0),
                    mac: Mac([2, 0, 0, 0, 0, 1])
                },
                NeighbourSpec {
                    ip: Ipv4Addr::new(10, 42, 2, 0),
                    mac: Mac([2, 0, 0, 0, 0, 2])
                },
            ]
        );
        assert!(state.fdb.contains(&FdbSpec {
            mac: Mac([2, 0, 0, 0, 0, 2]),
            dst: Ipv4Addr::new(172, 30, 0, 12)
        }));
        assert!(state.routes.contains(&RouteSpec {
            dst: "10.42.1.0/24".parse().expect("cidr"),
            gateway: Ipv4Addr::new(10, 42, 1, 0),
            via: Via::Vxlan
        }));
        assert_eq!(state.routes.len(), 2);
        assert_eq!(state.fdb.len(), 2);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].node, "n3");
    }

    #[test]
    fn host_gw_routes_via_node_ips_on_the_shared_subnet_only() {
        let mut far = peer(4, false);
        far.node_ip = Ipv4Addr::new(192, 168, 7, 4);
        let underlay = "172.30.0.0/24".parse().expect("cidr");
        let (state, skipped) = host_gw(&[peer(1, false), far], underlay);
        assert_eq!(
            state.routes.iter().copied().collect::<Vec<_>>(),
            [RouteSpec {
                dst: "10.42.1.0/24".parse().expect("cidr"),
                gateway: Ipv4Addr::new(172, 30, 0, 11),
                via: Via::Underlay
            }]
        );
        assert!(state.neighbours.is_empty() && state.fdb.is_empty());
        assert_eq!(skipped[0].node, "n4");
    }

    #[test]
    fn bgp_routes_leave_out_this_nodes_own_prefix_and_next_hop() {
        let own_ip = Ipv4Addr::new(172, 30, 0, 10);
        let own_cidr: Cidr = "10.42.0.0/24".parse().expect("cidr");
        let learned = BTreeMap::from([
            (own_cidr, Ipv4Addr::new(172, 30, 0, 11)),
            (
                "10.42.1.0/24".parse().expect("cidr"),
                Ipv4Addr::new(172, 30, 0, 11),
            ),
            ("192.168.50.0/24".parse().expect("cidr"), own_ip),
            (
                "192.168.60.0/24".parse().expect("cidr"),
                Ipv4Addr::new(172, 30, 0, 2),
            ),
        ]);
        let state = bgp(&learned, Some(own_cidr), own_ip);
        let dsts: Vec<_> = state.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, ["10.42.1.0/24", "192.168.60.0/24"]);
    }

    #[test]
    fn diff_orders_removals_before_additions_and_keeps_what_matches() {
        let (before, _) = vxlan(&[peer(1, true), peer(2, true)]);
        let mut moved = peer(2, true);
        moved.vtep_mac = Some(Mac([2, 0, 0, 0, 0, 0x22]));
        let (after, _) = vxlan(&[moved, peer(3, true)]);
        let ops = diff(&before, &after);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::DelRoute(_) => "del-route",
                Op::DelFdb(_) => "del-fdb",
                Op::DelNeighbour(_) => "del-neigh",
                Op::AddNeighbour(_) => "add-neigh",
                Op::AddFdb(_) => "add-fdb",
                Op::AddRoute(_) => "add-route",
            })
            .collect();
        // n1 goes (route, fdb, neighbour); n2's MAC changes (fdb and neighbour replaced, its
        // route is the same); n3 comes (neighbour, fdb, route).
        assert_eq!(
            kinds,
            [
                "del-route",
                "del-fdb",
                "del-fdb",
                "del-neigh",
                "del-neigh",
                "add-neigh",
                "add-neigh",
                "add-fdb",
                "add-fdb",
                "add-route"
            ]
        );
        assert!(diff(&after, &after).is_empty());
        let mut applied = before.clone();
        for op in ops {
            match op {
                Op::DelRoute(r) => assert!(applied.routes.remove(&r)),
                Op::DelFdb(f) => assert!(applied.fdb.remove(&f)),
                Op::DelNeighbour(n) => assert!(applied.neighbours.remove(&n)),
                Op::AddNeighbour(n) => assert!(applied.neighbours.insert(n)),
                Op::AddFdb(f) => assert!(applied.fdb.insert(f)),
                Op::AddRoute(r) => assert!(applied.routes.insert(r)),
            }
        }
        assert_eq!(applied, after);
    }
}
