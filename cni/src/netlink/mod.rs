//! The privileged edge: links, addresses, routes, neighbours and per-link sysctls, on the
//! host side (the namespace the plugin runs in) and inside the pod's network namespace.
//!
//! [`Dataplane`] is the small trait the commands and the plan use; [`KernelDataplane`]
//! implements it with rtnetlink (no `ip` processes), and a recording fake implements it for
//! the unit tests. Owns nothing but the translation into kernel calls: what to create,
//! and in which order, is decided by [`crate::plan`]. It must not touch any link other than
//! those it is asked about, and it never changes node-wide settings (no `ip_forward`).
mod kernel;
mod netns;

#[cfg(test)]
pub mod fake;

use std::{net::Ipv4Addr, path::PathBuf};

pub use kernel::KernelDataplane;

/// Which network namespace an operation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The namespace the plugin runs in (the node's).
    Host,
    /// The pod's namespace (`CNI_NETNS`).
    Pod,
}

/// What the kernel says about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Hardware address, when it has one of six bytes.
    pub mac: Option<[u8; 6]>,
    /// Whether it is administratively up.
    pub up: bool,
    /// Its MTU.
    pub mtu: Option<u32>,
}

/// The veth pair of one attachment: `host` stays here, `pod` is created directly inside
/// the pod's namespace (so its name never clashes with a host link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// Name of the host end.
    pub host: String,
    /// Name of the pod end (`CNI_IFNAME`).
    pub pod: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// Hardware address of the host end.
    pub host_mac: [u8; 6],
}

/// How far a route reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteScope {
    /// Directly on the link (no gateway).
    Link,
    /// Everywhere (through a gateway).
    Universe,
}

/// An IPv4 route in the main table through a named link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network address.
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// The outgoing link.
    pub link: String,
    /// Its scope.
    pub scope: RouteScope,
}

/// A per-link IPv4 sysctl the plugin sets on the host end of a veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSysctl {
    /// `net/ipv4/conf/LINK/proxy_arp`: answer ARP for addresses routed elsewhere.
    ProxyArp,
    /// `net/ipv4/neigh/LINK/proxy_delay`: how long to wait before a proxy ARP answer.
    ProxyDelay,
}

impl LinkSysctl {
    /// The file under `/proc/sys` for `link`.
    pub fn path(self, link: &str) -> PathBuf {
        match self {
            Self::ProxyArp => PathBuf::from(format!("/proc/sys/net/ipv4/conf/{link}/proxy_arp")),
            Self::ProxyDelay => {
                PathBuf::from(format!("/proc/sys/net/ipv4/neigh/{link}/proxy_delay"))
            }
        }
    }
}

/// A failed kernel operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// `CNI_NETNS` does not exist (the container is gone).
    #[error("network namespace {} does not exist", path.display())]
    NetnsMissing {
        /// The path.
        path: PathBuf,
    },
    /// The namespace exists but could not be opened or entered.
    #[error("entering network namespace {}: {source}", path.display())]
    Netns {
        /// The path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A pod-side operation was asked for without a pod namespace.
    #[error("no pod network namespace was given for a pod-side operation")]
    NoPodNamespace,
    /// The netlink socket or its runtime could not be set up.
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    /// A link the operation needs does not exist.
    #[error("{side:?}-side link {name} does not exist")]
    LinkMissing {
        /// Where it was looked for.
        side: Side,
        /// Its name.
        name: String,
    },
    /// The kernel refused a request.
    #[error("{operation}: {source}")]
    Request {
        /// What was being done.
        operation: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {}: {source}", path.display())]
    Sysctl {
        /// Its file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// The kernel operations ADD, DEL, CHECK and GC need.
///
/// "Delete" operations report whether there was something to delete and treat absence as
/// success, so DEL stays idempotent.
pub trait Dataplane {
    /// Creates the veth pair, the pod end inside the pod namespace.
    fn create_veth(&mut self, veth: &VethSpec) -> Result<(), NetlinkError>;
    /// The link called `name`, if it exists.
    fn link(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, NetlinkError>;
    /// Sets a link administratively up.
    fn set_link_up(&mut self, side: Side, name: &str) -> Result<(), NetlinkError>;
    /// Deletes a link (a veth takes its peer with it); false if it did not exist.
    fn delete_link(&mut self, side: Side, name: &str) -> Result<bool, NetlinkError>;
    /// Adds an IPv4 address to a link.
    fn add_address(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError>;
    /// The IPv4 addresses of a link.
    fn addresses(&mut self, side: Side, link: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError>;
    /// Adds a route.
    fn add_route(&mut self, side: Side, route: &Route) -> Result<(), NetlinkError>;
    /// Deletes a route; false if it did not exist.
    fn delete_route(&mut self, side: Side, route: &Route) -> Result<bool, NetlinkError>;
    /// The IPv4 main-table routes through a link.
    fn routes(&mut self, side: Side, link: &str) -> Result<Vec<Route>, NetlinkError>;
    /// Adds a permanent neighbour (ARP) entry.
    fn add_neighbour(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError>;
    /// The permanent IPv4 neighbour entries of a link.
    fn neighbours(
        &mut self,
        side: Side,
        link: &str,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetlinkError>;
    /// Writes a host-side link sysctl.
    fn set_sysctl(
        &mut self,
        link: &str,
        sysctl: LinkSysctl,
        value: &str,
    ) -> Result<(), NetlinkError>;
    /// Reads a host-side link sysctl (trimmed).
    fn sysctl(&mut self, link: &str, sysctl: LinkSysctl) -> Result<String, NetlinkError>;
}
