//! A [`Dataplane`] that models links, addresses, routes, neighbours and sysctls in memory,
//! records every mutating call, and fails a chosen call once: the unit tests' kernel.
//!
//! Owns nothing real; test-only.
use std::{collections::BTreeMap, net::Ipv4Addr};

use super::{Dataplane, LinkState, LinkSysctl, NetlinkError, Route, Side, VethSpec};

#[derive(Debug, Clone)]
struct FakeLink {
    state: LinkState,
    addresses: Vec<(Ipv4Addr, u8)>,
    neighbours: Vec<(Ipv4Addr, [u8; 6])>,
    peer: Option<(Side, String)>,
}

/// The in-memory kernel.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    links: BTreeMap<(Side, String), FakeLink>,
    routes: Vec<(Side, Route)>,
    sysctls: BTreeMap<String, String>,
    calls: Vec<String>,
    fail_on: Option<String>,
    next_index: u32,
    pod_namespace: bool,
}

impl FakeDataplane {
    /// An empty kernel with a pod namespace.
    pub fn new() -> Self {
        Self {
            next_index: 2,
            pod_namespace: true,
            ..Self::default()
        }
    }

    /// An empty kernel without a pod namespace (DEL, GC).
    pub fn host_only() -> Self {
        Self {
            pod_namespace: false,
            ..Self::new()
        }
    }

    /// Makes the next call described exactly as `call` fail (see [`Self::calls`]).
    pub fn fail_on(&mut self, call: &str) {
        self.fail_on = Some(call.to_owned());
    }

    /// Every mutating call so far, e.g. `add_route Pod 0.0.0.0/0 via 169.254.1.1 eth0`.
    pub fn calls(&self) -> &[String] {
        &self.calls
    }

    /// True when no link, route or sysctl exists.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.routes.is_empty() && self.sysctls.is_empty()
    }

    /// A link's state.
    pub fn link_state(&self, side: Side, name: &str) -> Option<LinkState> {
        self.links
            .get(&(side, name.to_owned()))
            .map(|l| l.state.clone())
    }

    /// A link's addresses.
    pub fn addresses_of(&self, side: Side, name: &str) -> Vec<(Ipv4Addr, u8)> {
        self.links
            .get(&(side, name.to_owned()))
            .map(|l| l.addresses.clone())
            .unwrap_or_default()
    }

    /// A link's neighbours.
    pub fn neighbours_of(&self, side: Side, name: &str) -> Vec<(Ipv4Addr, [u8; 6])> {
        self.links
            .get(&(side, name.to_owned()))
            .map(|l| l.neighbours.clone())
            .unwrap_or_default()
    }

    /// Routes through a link, in the order they were added.
    pub fn routes_of(&self, side: Side, name: &str) -> Vec<Route> {
        self.routes
            .iter()
            .filter(|(s, r)| *s == side && r.link == name)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// A sysctl's value.
    pub fn sysctl_value(&self, link: &str, sysctl: LinkSysctl) -> Option<&str> {
        self.sysctls
            .get(&sysctl.path(link).display().to_string())
            .map(String::as_str)
    }

    /// Removes a route behind the plugin's back (to test CHECK).
    pub fn remove_route(&mut self, side: Side, route: &Route) {
        self.routes.retain(|(s, r)| !(*s == side && r == route));
    }

    /// Removes a link and its peer behind the plugin's back (a pod namespace that vanished).
    pub fn remove_link(&mut self, side: Side, name: &str) {
        self.drop_link(side, name);
    }

    fn record(&mut self, call: String) -> Result<(), NetlinkError> {
        let fail = self.fail_on.as_deref() == Some(call.as_str());
        self.calls.push(call.clone());
        if fail {
            self.fail_on = None;
            return Err(NetlinkError::Request {
                operation: call,
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }

    fn existing(&mut self, side: Side, name: &str) -> Result<&mut FakeLink, NetlinkError> {
        if side == Side::Pod && !self.pod_namespace {
            return Err(NetlinkError::NoPodNamespace);
        }
        self.links
            .get_mut(&(side, name.to_owned()))
            .ok_or_else(|| NetlinkError::LinkMissing {
                side,
                name: name.to_owned(),
            })
    }

    fn drop_link(&mut self, side: Side, name: &str) -> bool {
        let Some(link) = self.links.remove(&(side, name.to_owned())) else {
            return false;
        };
        self.routes.retain(|(s, r)| !(*s == side && r.link == name));
        self.sysctls
            .retain(|path, _| !path.contains(&format!("/{name}/")));
        if let Some((peer_side, peer)) = link.peer {
            self.drop_link(peer_side, &peer);
        }
        true
    }
}

fn describe_route(route: &Route) -> String {
    match route.gateway {
        Some(gw) => format!("{}/{} via {gw} {}", route.dst, route.prefix_len, route.link),
        None => format!("{}/{} {}", route.dst, route.prefix_len, route.link),
    }
}

impl Dataplane for FakeDataplane {
    fn create_veth(&mut self, veth: &VethSpec) -> Result<(), NetlinkError> {
        self.record(format!("create_veth {} {}", veth.host, veth.pod))?;
        if !self.pod_namespace {
            return Err(NetlinkError::NoPodNamespace);
        }
        let host_key = (Side::Host, veth.host.clone());
        let pod_key = (Side::Pod, veth.pod.clone());
        if self.links.contains_key(&host_key) || self.links.contains_key(&pod_key) {
            return Err(NetlinkError::Request {
                operation: format!("creating veth {}", veth.host),
                source: std::io::Error::from_raw_os_error(17),
            });
        }
        let mtu = veth.mtu;
        let link = |index: u32, mac: [u8; 6], peer: (Side, String)| FakeLink {
            state: LinkState {
                index,
                mac: Some(mac),
                up: false,
                mtu: Some(mtu),
            },
            addresses: Vec::new(),
            neighbours: Vec::new(),
            peer: Some(peer),
        };
        self.next_index += 2;
        let index = self.next_index;
        let pod_mac = [0x02, 0, 0, 0, 0, u8::try_from(index % 256).unwrap_or(0)];
        let host = link(index - 1, veth.host_mac, pod_key.clone());
        let pod = link(index, pod_mac, host_key.clone());
        self.links.insert(host_key, host);
        self.links.insert(pod_key, pod);
        Ok(())
    }

    fn link(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        if side == Side::Pod && !self.pod_namespace {
            return Err(NetlinkError::NoPodNamespace);
        }
        Ok(self.link_state(side, name))
    }

    fn set_link_up(&mut self, side: Side, name: &str) -> Result<(), NetlinkError> {
        self.record(format!("link_up {side:?} {name}"))?;
        self.existing(side, name)?.state.up = true;
        Ok(())
    }

    fn delete_link(&mut self, side: Side, name: &str) -> Result<bool, NetlinkError> {
        self.record(format!("delete_link {side:?} {name}"))?;
        Ok(self.drop_link(side, name))
    }

    fn add_address(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        self.record(format!(
            "add_address {side:?} {link} {address}/{prefix_len}"
        ))?;
        self.existing(side, link)?
            .addresses
            .push((address, prefix_len));
        Ok(())
    }

    fn addresses(&mut self, side: Side, link: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        Ok(self.existing(side, link)?.addresses.clone())
    }

    fn add_route(&mut self, side: Side, route: &Route) -> Result<(), NetlinkError> {
        self.record(format!("add_route {side:?} {}", describe_route(route)))?;
        self.existing(side, &route.link)?;
        // One model stands for every pod namespace, so routes clash per link, not per namespace.
        let clash = |(s, r): &(Side, Route)| {
            *s == side
                && r.dst == route.dst
                && r.prefix_len == route.prefix_len
                && r.link == route.link
        };
        if self.routes.iter().any(clash) {
            return Err(NetlinkError::Request {
                operation: "adding route".to_owned(),
                source: std::io::Error::from_raw_os_error(17),
            });
        }
        self.routes.push((side, route.clone()));
        Ok(())
    }

    fn delete_route(&mut self, side: Side, route: &Route) -> Result<bool, NetlinkError> {
        self.record(format!("delete_route {side:?} {}", describe_route(route)))?;
        let before = self.routes.len();
        self.remove_route(side, route);
        Ok(self.routes.len() != before)
    }

    fn routes(&mut self, side: Side, link: &str) -> Result<Vec<Route>, NetlinkError> {
        self.existing(side, link)?;
        Ok(self.routes_of(side, link))
    }

    fn add_neighbour(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.record(format!("add_neighbour {side:?} {link} {address}"))?;
        self.existing(side, link)?.neighbours.push((address, mac));
        Ok(())
    }

    fn neighbours(
        &mut self,
        side: Side,
        link: &str,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetlinkError> {
        Ok(self.existing(side, link)?.neighbours.clone())
    }

    fn set_sysctl(
        &mut self,
        link: &str,
        sysctl: LinkSysctl,
        value: &str,
    ) -> Result<(), NetlinkError> {
        let path = sysctl.path(link);
        self.record(format!("set_sysctl {} {value}", path.display()))?;
        if !self.links.contains_key(&(Side::Host, link.to_owned())) {
            return Err(NetlinkError::Sysctl {
                path,
                source: std::io::Error::from_raw_os_error(2),
            });
        }
        self.sysctls
            .insert(path.display().to_string(), value.to_owned());
        Ok(())
    }

    fn sysctl(&mut self, link: &str, sysctl: LinkSysctl) -> Result<String, NetlinkError> {
        let path = sysctl.path(link);
        self.sysctls
            .get(&path.display().to_string())
            .cloned()
            .ok_or(NetlinkError::Sysctl {
                path,
                source: std::io::Error::from_raw_os_error(2),
            })
    }
}

/// A [`FakeDataplane`] shared between several invocations (ADD, then CHECK, then DEL).
#[derive(Debug, Clone, Default)]
pub struct SharedFake(pub std::rc::Rc<std::cell::RefCell<FakeDataplane>>);

impl SharedFake {
    /// A shared empty kernel.
    pub fn new() -> Self {
        Self(std::rc::Rc::new(std::cell::RefCell::new(
            FakeDataplane::new(),
        )))
    }
}

impl Dataplane for SharedFake {
    fn create_veth(&mut self, veth: &VethSpec) -> Result<(), NetlinkError> {
        self.0.borrow_mut().create_veth(veth)
    }
    fn link(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        self.0.borrow_mut().link(side, name)
    }
    fn set_link_up(&mut self, side: Side, name: &str) -> Result<(), NetlinkError> {
        self.0.borrow_mut().set_link_up(side, name)
    }
    fn delete_link(&mut self, side: Side, name: &str) -> Result<bool, NetlinkError> {
        self.0.borrow_mut().delete_link(side, name)
    }
    fn add_address(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        self.0
            .borrow_mut()
            .add_address(side, link, address, prefix_len)
    }
    fn addresses(&mut self, side: Side, link: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        self.0.borrow_mut().addresses(side, link)
    }
    fn add_route(&mut self, side: Side, route: &Route) -> Result<(), NetlinkError> {
        self.0.borrow_mut().add_route(side, route)
    }
    fn delete_route(&mut self, side: Side, route: &Route) -> Result<bool, NetlinkError> {
        self.0.borrow_mut().delete_route(side, route)
    }
    fn routes(&mut self, side: Side, link: &str) -> Result<Vec<Route>, NetlinkError> {
        self.0.borrow_mut().routes(side, link)
    }
    fn add_neighbour(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.0.borrow_mut().add_neighbour(side, link, address, mac)
    }
    fn neighbours(
        &mut self,
        side: Side,
        link: &str,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetlinkError> {
        self.0.borrow_mut().neighbours(side, link)
    }
    fn set_sysctl(
        &mut self,
        link: &str,
        sysctl: LinkSysctl,
        value: &str,
    ) -> Result<(), NetlinkError> {
        self.0.borrow_mut().set_sysctl(link, sysctl, value)
    }
    fn sysctl(&mut self, link: &str, sysctl: LinkSysctl) -> Result<String, NetlinkError> {
        self.0.borrow_mut().sysctl(link, sysctl)
    }
}
