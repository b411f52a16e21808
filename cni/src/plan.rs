//! Compute, then apply: the steps that wire a pod to the node (ADD) and unwire it (DEL), as
//! plain data, and the executor that applies them through a [`Dataplane`] and rolls back
//! what it did when a step fails.
//!
//! The wiring is Calico-style host routing. The pod gets a veth whose pod end carries its
//! address as a /32, a link-scope route to the link-local gateway `169.254.1.1`, a default
//! route through it, and a permanent neighbour entry that maps the gateway to the host
//! end's fixed MAC (`ee:ee:ee:ee:ee:ee`), so it never waits on ARP. The host end is up, has
//! proxy ARP on (so an ARP for the gateway is answered too) and a /32 route to the pod.
//!
//! Owns the order of operations and what undoes what. It must not reach the kernel except
//! through the trait, and it touches nothing on the host but the pod's own veth and route.
use std::net::Ipv4Addr;

use crate::netlink::{Dataplane, LinkSysctl, NetlinkError, Route, RouteScope, Side, VethSpec};

/// The pod's next hop: link-local, never on the wire, the same in every pod.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The host end's hardware address (the same on every host veth; they are point-to-point).
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// What one attachment's wiring is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWiring {
    /// The host end of the veth.
    pub host_link: String,
    /// The pod end (`CNI_IFNAME`).
    pub pod_link: String,
    /// The pod's address.
    pub address: Ipv4Addr,
    /// MTU of both ends.
    pub mtu: u32,
}

impl PodWiring {
    /// The pod's route to the gateway.
    pub fn gateway_route(&self) -> Route {
        Route {
            dst: GATEWAY,
            prefix_len: 32,
            gateway: None,
            link: self.pod_link.clone(),
            scope: RouteScope::Link,
        }
    }

    /// The pod's default route.
    pub fn default_route(&self) -> Route {
        Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(GATEWAY),
            link: self.pod_link.clone(),
            scope: RouteScope::Universe,
        }
    }

    /// The host's route to the pod.
    pub fn host_route(&self) -> Route {
        host_route(&self.host_link, self.address)
    }
}

/// The host's /32 route to a pod address through its veth.
pub fn host_route(host_link: &str, address: Ipv4Addr) -> Route {
    Route {
        dst: address,
        prefix_len: 32,
        gateway: None,
        link: host_link.to_owned(),
        scope: RouteScope::Link,
    }
}

/// One kernel operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the veth pair.
    CreateVeth(VethSpec),
    /// Set a link up.
    LinkUp {
        /// Where.
        side: Side,
        /// Which link.
        link: String,
    },
    /// Add an address.
    AddAddress {
        /// Where.
        side: Side,
        /// Which link.
        link: String,
        /// The address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// Add a route.
    AddRoute {
        /// Where.
        side: Side,
        /// The route.
        route: Route,
    },
    /// Add a permanent neighbour entry.
    AddNeighbour {
        /// Where.
        side: Side,
        /// Which link.
        link: String,
        /// The neighbour's address.
        address: Ipv4Addr,
        /// Its hardware address.
        mac: [u8; 6],
    },
    /// Set a host-side link sysctl.
    SetSysctl {
        /// Which link.
        link: String,
        /// Which setting.
        sysctl: LinkSysctl,
        /// Its value.
        value: &'static str,
    },
    /// Delete a route if it exists.
    DeleteRoute {
        /// Where.
        side: Side,
        /// The route.
        route: Route,
    },
    /// Delete a link if it exists.
    DeleteLink {
        /// Where.
        side: Side,
        /// Which link.
        link: String,
    },
}

impl Step {
    /// What undoes this step in a rollback. Everything configured on the veth (addresses,
    /// routes through it, neighbours, sysctls) goes when the veth goes, so only the veth
    /// itself and the host route need undoing.
    pub fn undo(&self) -> Option<Step> {
        match self {
            Self::CreateVeth(veth) => Some(Self::DeleteLink {
                side: Side::Host,
                link: veth.host.clone(),
            }),
            Self::AddRoute {
                side: Side::Host,
                route,
            } => Some(Self::DeleteRoute {
                side: Side::Host,
                route: route.clone(),
            }),
            _ => None,
        }
    }

    /// A one-line description for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Self::CreateVeth(veth) => format!("create veth {} (pod end {})", veth.host, veth.pod),
            Self::LinkUp { side, link } => format!("set {side:?}-side {link} up"),
            Self::AddAddress {
                side,
                link,
                address,
                prefix_len,
            } => format!("add {address}/{prefix_len} to {side:?}-side {link}"),
            Self::AddRoute { side, route } => {
                format!(
                    "add {side:?}-side route to {}/{} via {}",
                    route.dst, route.prefix_len, route.link
                )
            }
            Self::AddNeighbour {
                side,
                link,
                address,
                ..
            } => format!("add {side:?}-side neighbour {address} on {link}"),
            Self::SetSysctl {
                link,
                sysctl,
                value,
            } => format!("set {} to {value}", sysctl.path(link).display()),
            Self::DeleteRoute { side, route } => {
                format!(
                    "delete {side:?}-side route to {}/{} via {}",
                    route.dst, route.prefix_len, route.link
                )
            }
            Self::DeleteLink { side, link } => format!("delete {side:?}-side link {link}"),
        }
    }
}

/// The steps of ADD. The first removes a host veth left by an earlier ADD of the same
/// attachment (the runtime should not repeat ADD, but if it does the pod is wired afresh
/// with the address it already holds).
pub fn add_plan(wiring: &PodWiring) -> Vec<Step> {
    let pod_link = wiring.pod_link.clone();
    let host_link = wiring.host_link.clone();
    vec![
        Step::DeleteLink {
            side: Side::Host,
            link: host_link.clone(),
        },
        Step::CreateVeth(VethSpec {
            host: host_link.clone(),
            pod: pod_link.clone(),
            mtu: wiring.mtu,
            host_mac: HOST_MAC,
        }),
        Step::LinkUp {
            side: Side::Host,
            link: host_link.clone(),
        },
        Step::LinkUp {
            side: Side::Pod,
            link: pod_link.clone(),
        },
        Step::AddAddress {
            side: Side::Pod,
            link: pod_link.clone(),
            address: wiring.address,
            prefix_len: 32,
        },
        Step::AddRoute {
            side: Side::Pod,
            route: wiring.gateway_route(),
        },
        Step::AddRoute {
            side: Side::Pod,
            route: wiring.default_route(),
        },
        Step::AddNeighbour {
            side: Side::Pod,
            link: pod_link,
            address: GATEWAY,
            mac: HOST_MAC,
        },
        Step::SetSysctl {
            link: host_link.clone(),
            sysctl: LinkSysctl::ProxyArp,
            value: "1",
        },
        Step::SetSysctl {
            link: host_link,
            sysctl: LinkSysctl::ProxyDelay,
            value: "0",
        },
        Step::AddRoute {
            side: Side::Host,
            route: wiring.host_route(),
        },
    ]
}

/// The steps of DEL: the host route to the pod (when its address is known) and the host
/// veth, whose pod end goes with it. Both may already be gone.
pub fn del_plan(host_link: &str, address: Option<Ipv4Addr>) -> Vec<Step> {
    let mut steps = Vec::with_capacity(2);
    if let Some(address) = address {
        steps.push(Step::DeleteRoute {
            side: Side::Host,
            route: host_route(host_link, address),
        });
    }
    steps.push(Step::DeleteLink {
        side: Side::Host,
        link: host_link.to_owned(),
    });
    steps
}

/// A step failed; what was applied before it has been rolled back.
#[derive(Debug, thiserror::Error)]
#[error("could not {step}: {source}{}", rollback_note(rollback_failures))]
pub struct PlanError {
    /// The failed step.
    pub step: String,
    /// Why it failed.
    pub source: NetlinkError,
    /// Undo steps that failed too (leftovers DEL or GC will remove).
    pub rollback_failures: Vec<String>,
}

fn rollback_note(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!("; rolling back also failed: {}", failures.join("; "))
    }
}

/// Applies `steps` in order. When one fails, the undo steps of those already applied run
/// in reverse order and the failure is returned.
pub fn apply(dataplane: &mut dyn Dataplane, steps: &[Step]) -> Result<(), PlanError> {
    for (done, step) in steps.iter().enumerate() {
        if let Err(source) = run(dataplane, step) {
            let rollback_failures = roll_back(dataplane, &steps[..done]);
            return Err(PlanError {
                step: step.describe(),
                source,
                rollback_failures,
            });
        }
    }
    Ok(())
}

/// Undoes applied steps, newest first; returns the undo steps that failed.
pub fn roll_back(dataplane: &mut dyn Dataplane, applied: &[Step]) -> Vec<String> {
    applied
        .iter()
        .rev()
        .filter_map(Step::undo)
        .filter_map(|undo| {
            run(dataplane, &undo)
                .err()
                .map(|err| format!("{}: {err}", undo.describe()))
        })
        .collect()
}

fn run(dataplane: &mut dyn Dataplane, step: &Step) -> Result<(), NetlinkError> {
    match step {
        Step::CreateVeth(veth) => dataplane.create_veth(veth),
        Step::LinkUp { side, link } => dataplane.set_link_up(*side, link),
        Step::AddAddress {
            side,
            link,
            address,
            prefix_len,
        } => dataplane.add_address(*side, link, *address, *prefix_len),
        Step::AddRoute { side, route } => dataplane.add_route(*side, route),
        Step::AddNeighbour {
            side,
            link,
            address,
            mac,
        } => dataplane.add_neighbour(*side, link, *address, *mac),
        Step::SetSysctl {
            link,
            sysctl,
            value,
        } => dataplane.set_sysctl(link, *sysctl, value),
        Step::DeleteRoute { side, route } => dataplane.delete_route(*side, route).map(drop),
        Step::DeleteLink { side, link } => dataplane.delete_link(*side, link).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::fake::FakeDataplane;

    fn wiring() -> PodWiring {
        PodWiring {
            host_link: "ctn0123456789a".to_owned(),
            pod_link: "eth0".to_owned(),
            address: Ipv4Addr::new(10, 42, 0, 7),
            mtu: 1450,
        }
    }

    #[test]
    fn add_plan_wires_pod_then_host() {
        let descriptions: Vec<String> = add_plan(&wiring()).iter().map(Step::describe).collect();
        assert_eq!(
            descriptions,
            vec![
                "delete Host-side link ctn0123456789a",
                "create veth ctn0123456789a (pod end eth0)",
                "set Host-side ctn0123456789a up",
                "set Pod-side eth0 up",
                "add 10.42.0.7/32 to Pod-side eth0",
                "add Pod-side route to 169.254.1.1/32 via eth0",
                "add Pod-side route to 0.0.0.0/0 via eth0",
                "add Pod-side neighbour 169.254.1.1 on eth0",
                "set /proc/sys/net/ipv4/conf/ctn0123456789a/proxy_arp to 1",
                "set /proc/sys/net/ipv4/neigh/ctn0123456789a/proxy_delay to 0",
                "add Host-side route to 10.42.0.7/32 via ctn0123456789a",
            ]
        );
    }

    #[test]
    fn applied_add_plan_builds_the_pod_network() {
        let mut fake = FakeDataplane::new();
        let w = wiring();
        apply(&mut fake, &add_plan(&w)).expect("applies");
        let pod = fake.link_state(Side::Pod, "eth0").expect("pod link");
        assert!(pod.up);
        assert_eq!(pod.mtu, Some(1450));
        let host = fake
            .link_state(Side::Host, &w.host_link)
            .expect("host link");
        assert!(host.up);
        assert_eq!(host.mac, Some(HOST_MAC));
        assert_eq!(fake.addresses_of(Side::Pod, "eth0"), vec![(w.address, 32)]);
        assert_eq!(
            fake.routes_of(Side::Pod, "eth0"),
            vec![w.gateway_route(), w.default_route()]
        );
        assert_eq!(
            fake.routes_of(Side::Host, &w.host_link),
            vec![w.host_route()]
        );
        assert_eq!(
            fake.neighbours_of(Side::Pod, "eth0"),
            vec![(GATEWAY, HOST_MAC)]
        );
        assert_eq!(
            fake.sysctl_value(&w.host_link, LinkSysctl::ProxyArp),
            Some("1")
        );
        assert_eq!(
            fake.sysctl_value(&w.host_link, LinkSysctl::ProxyDelay),
            Some("0")
        );
    }

    #[test]
    fn a_failure_at_any_step_leaves_nothing_behind() {
        let w = wiring();
        let steps = add_plan(&w);
        // Every mutating call of a successful run, in order.
        let mut probe = FakeDataplane::new();
        apply(&mut probe, &steps).expect("applies");
        let calls = probe.calls().to_vec();
        assert!(calls.len() >= 10, "{calls:?}");
        for failing in &calls {
            let mut fake = FakeDataplane::new();
            fake.fail_on(failing);
            let err = apply(&mut fake, &steps).expect_err("the injected failure surfaces");
            assert!(err.rollback_failures.is_empty(), "{err}");
            assert!(fake.is_empty(), "after failing {failing:?}: {fake:?}");
        }
    }

    #[test]
    fn repeated_add_replaces_the_earlier_wiring() {
        let mut fake = FakeDataplane::new();
        let w = wiring();
        apply(&mut fake, &add_plan(&w)).expect("first ADD");
        apply(&mut fake, &add_plan(&w)).expect("second ADD");
        assert_eq!(fake.addresses_of(Side::Pod, "eth0"), vec![(w.address, 32)]);
        assert_eq!(
            fake.routes_of(Side::Host, &w.host_link),
            vec![w.host_route()]
        );
    }

    #[test]
    fn del_plan_removes_everything_and_repeats_harmlessly() {
        let mut fake = FakeDataplane::new();
        let w = wiring();
        apply(&mut fake, &add_plan(&w)).expect("ADD");
        let del = del_plan(&w.host_link, Some(w.address));
        apply(&mut fake, &del).expect("DEL");
        assert!(fake.is_empty(), "{fake:?}");
        apply(&mut fake, &del).expect("second DEL");
        apply(&mut fake, &del_plan(&w.host_link, None)).expect("DEL without an address");
    }
}
