//! The node's kernel, reached through rtnetlink: the underlay link, the VXLAN device, and the
//! routes, neighbours and bridge FDB entries corten manages.
//!
//! Owns the translation of [`plan`](super::plan) entries into netlink messages and of the
//! kernel's dumps back into them. Routes corten adds carry their own protocol number
//! ([`ROUTE_PROTOCOL`]), so a resync finds exactly its own routes; neighbours and FDB entries
//! are corten's when they are permanent entries on its VXLAN device. It must not touch any
//! other route, link or entry, and it decides nothing.
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::{
            RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
            RouteScope, RouteType,
        },
        AddressFamily,
    },
    Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder,
};

use super::{
    peers::{Cidr, Mac},
    plan::{FdbSpec, NeighbourSpec, NetState, Op, RouteSpec, Via},
};

/// The route protocol number on every route corten adds (`ip route show proto 78`); not one
/// of the numbers iproute2 assigns a name.
pub const ROUTE_PROTOCOL: u8 = 78;
/// The VXLAN device's name.
pub const VXLAN_DEVICE: &str = "corten.vxlan";
/// The VXLAN network identifier (as flannel).
pub const VXLAN_VNI: u32 = 1;
/// The VXLAN UDP port (Linux's legacy default, as flannel).
pub const VXLAN_PORT: u16 = 8472;
/// What VXLAN encapsulation costs: outer Ethernet, IPv4, UDP and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

/// A refused or failed netlink request.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{operation}: {source}")]
    Request {
        /// What was asked.
        operation: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// No link holds the node IP.
    #[error("no link in this namespace holds the node IP {0}")]
    NoUnderlay(Ipv4Addr),
    /// A link vanished between two requests.
    #[error("link {0} is gone")]
    LinkGone(String),
}

/// The link that holds the node IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// The node IP's subnet on it.
    pub subnet: Cidr,
}

/// The node's VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanDevice {
    /// Its index.
    pub index: u32,
    /// Its MAC (published on the Node as the VTEP MAC).
    pub mac: Mac,
}

/// A netlink connection in the agent's namespace (the node's).
#[derive(Debug, Clone)]
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// Opens the connection; its task runs on the current tokio runtime.
    pub fn connect() -> Result<Self, KernelError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The link holding `node_ip`, with that address's subnet.
    pub async fn underlay(&self, node_ip: Ipv4Addr) -> Result<Underlay, KernelError> {
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("listing addresses".into(), e))?;
        let (index, prefix) = addresses
            .iter()
            .find_map(|message| {
                message
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if ip == &node_ip))
                    .then_some((message.header.index, message.header.prefix_len))
            })
            .ok_or(KernelError::NoUnderlay(node_ip))?;
        let link = self
            .link_by_index(index)
            .await?
            .ok_or_else(|| KernelError::LinkGone(format!("#{index}")))?;
        let subnet = Cidr {
            addr: Ipv4Addr::from(u32::from(node_ip) & prefix_mask(prefix)),
            prefix,
        };
        Ok(Underlay {
            index,
            name: link_name(&link).unwrap_or_default(),
            mtu: link_mtu(&link).unwrap_or(1500),
            subnet,
        })
    }

    /// Makes sure the VXLAN device exists as corten wants it (VNI, port, local address,
    /// underlay, learning off, MTU = underlay − 50, up). An existing device that matches is
    /// kept, so its MAC (what the peers know) survives an agent restart; one that differs
    /// is recreated.
    pub async fn ensure_vxlan(
        &self,
        underlay: &Underlay,
        node_ip: Ipv4Addr,
    ) -> Result<VxlanDevice, KernelError> {
        let mtu = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
        if let Some(link) = self.link_by_name(VXLAN_DEVICE).await? {
            if vxlan_matches(&link, underlay.index, node_ip) {
                self.handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(link.header.index)
                            .mtu(mtu)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| request_error(format!("setting {VXLAN_DEVICE} up"), e))?;
                return self.vxlan_device().await;
            }
            tracing::info!(
                device = VXLAN_DEVICE,
                "recreating a VXLAN device that differs"
            );
            self.handle
                .link()
                .del(link.header.index)
                .execute()
                .await
                .map_err(|e| request_error(format!("deleting {VXLAN_DEVICE}"), e))?;
        }
        let message = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
            .dev(underlay.index)
            .local(node_ip)
            .port(VXLAN_PORT)
            .learning(false)
            .mtu(mtu)
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| request_error(format!("creating {VXLAN_DEVICE}"), e))?;
        self.vxlan_device().await
    }

    async fn vxlan_device(&self) -> Result<VxlanDevice, KernelError> {
        let link = self
            .link_by_name(VXLAN_DEVICE)
            .await?
            .ok_or_else(|| KernelError::LinkGone(VXLAN_DEVICE.into()))?;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(&bytes[..]).ok(),
                _ => None,
            })
            .ok_or_else(|| KernelError::LinkGone(format!("{VXLAN_DEVICE} (no MAC)")))?;
        Ok(VxlanDevice {
            index: link.header.index,
            mac: Mac(mac),
        })
    }

    /// Removes the VXLAN device if it exists (with it go its neighbours, FDB entries and
    /// routes), for modes that do not use it.
    pub async fn remove_vxlan(&self) -> Result<bool, KernelError> {
        let Some(link) = self.link_by_name(VXLAN_DEVICE).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(request_error(format!("deleting {VXLAN_DEVICE}"), e)),
        }
    }

    /// Gives the VXLAN device the node's own pod subnet address `.0/32` (as flannel does), so
    /// traffic the node itself sends to remote pods has a pod-network source address.
    pub async fn ensure_vxlan_address(
        &self,
        device: VxlanDevice,
        own_cidr: Cidr,
    ) -> Result<(), KernelError> {
        let result = self
            .handle
            .address()
            .add(device.index, IpAddr::V4(own_cidr.addr), 32)
            .execute()
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(request_error(
                format!("adding {}/32 to {VXLAN_DEVICE}", own_cidr.addr),
                e,
            )),
        }
    }

    /// What corten's entries in the kernel are now: routes with [`ROUTE_PROTOCOL`] through
    /// the underlay or the VXLAN device, and permanent neighbours and FDB entries on the
    /// VXLAN device.
    pub async fn observe(
        &self,
        underlay: &Underlay,
        vxlan: Option<VxlanDevice>,
    ) -> Result<NetState, KernelError> {
        let mut state = NetState::default();
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("listing routes".into(), e))?;
        for message in &routes {
            if message.header.table != RouteHeader::RT_TABLE_MAIN
                || message.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                || message.header.address_family != AddressFamily::Inet
            {
                continue;
            }
            if let Some(route) = parse_route(message, underlay.index, vxlan.map(|v| v.index)) {
                state.routes.insert(route);
            }
        }
        let Some(vxlan) = vxlan else {
            return Ok(state);
        };
        for message in self.neighbour_dump(AddressFamily::Inet).await? {
            if message.header.ifindex != vxlan.index || !permanent(message.header.state) {
                continue;
            }
            if let (Some(ip), Some(mac)) = (neighbour_ip(&message), neighbour_mac(&message)) {
                state.neighbours.insert(NeighbourSpec { ip, mac });
            }
        }
        for message in self.neighbour_dump(AddressFamily::Bridge).await? {
            if message.header.ifindex != vxlan.index || !permanent(message.header.state) {
                continue;
            }
            if let (Some(dst), Some(mac)) = (neighbour_ip(&message), neighbour_mac(&message)) {
                state.fdb.insert(FdbSpec { mac, dst });
            }
        }
        Ok(state)
    }

    /// Carries out one operation. Removing what is already gone, or adding what is already
    /// there, succeeds.
    pub async fn apply(
        &self,
        op: Op,
        underlay: &Underlay,
        vxlan: Option<VxlanDevice>,
    ) -> Result<(), KernelError> {
        let vxlan_index = || {
            vxlan
                .map(|v| v.index)
                .ok_or_else(|| KernelError::LinkGone(VXLAN_DEVICE.into()))
        };
        let (what, result) =
            match op {
                Op::AddRoute(route) => {
                    let index = match route.via {
                        Via::Vxlan => vxlan_index()?,
                        Via::Underlay => underlay.index,
                    };
                    let message = route_message(&route, index, false);
                    (
                        format!("adding route {route:?}"),
                        self.handle.route().add(message).execute().await,
                    )
                }
                Op::DelRoute(route) => {
                    let index = match route.via {
                        Via::Vxlan => vxlan_index()?,
                        Via::Underlay => underlay.index,
                    };
                    let message = route_message(&route, index, true);
                    (
                        format!("deleting route {route:?}"),
                        self.handle.route().del(message).execute().await,
                    )
                }
                Op::AddNeighbour(neighbour) => (
                    format!("adding neighbour {neighbour:?}"),
                    self.handle
                        .neighbours()
                        .add(vxlan_index()?, IpAddr::V4(neighbour.ip))
                        .link_layer_address(&neighbour.mac.0)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await,
                ),
                Op::DelNeighbour(neighbour) => {
                    let mut message = NeighbourMessage::default();
                    message.header.family = AddressFamily::Inet;
                    message.header.ifindex = vxlan_index()?;
                    message.attributes.push(NeighbourAttribute::Destination(
                        NeighbourAddress::Inet(neighbour.ip),
                    ));
                    (
                        format!("deleting neighbour {neighbour:?}"),
                        self.handle.neighbours().del(message).execute().await,
                    )
                }
                Op::AddFdb(fdb) => (
                    format!("adding FDB entry {fdb:?}"),
                    self.handle
                        .neighbours()
                        .add_bridge(vxlan_index()?, &fdb.mac.0)
                        .destination(IpAddr::V4(fdb.dst))
                        .flags(NeighbourFlags::Own)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await,
                ),
                Op::DelFdb(fdb) => {
                    let mut message = NeighbourMessage::default();
                    message.header.family = AddressFamily::Bridge;
                    message.header.ifindex = vxlan_index()?;
                    message.header.flags = NeighbourFlags::Own;
                    message
                        .attributes
                        .push(NeighbourAttribute::LinkLayerAddress(fdb.mac.0.to_vec()));
                    message.attributes.push(NeighbourAttribute::Destination(
                        NeighbourAddress::Inet(fdb.dst),
                    ));
                    (
                        format!("deleting FDB entry {fdb:?}"),
                        self.handle.neighbours().del(message).execute().await,
                    )
                }
            };
        match result {
            Ok(()) => Ok(()),
            Err(e) => match (errno(&e), op) {
                (Some(EEXIST), Op::AddRoute(_) | Op::AddNeighbour(_) | Op::AddFdb(_)) => Ok(()),
                (
                    Some(ENOENT | ESRCH | ENODEV),
                    Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_),
                ) => Ok(()),
                _ => Err(request_error(what, e)),
            },
        }
    }

    async fn neighbour_dump(
        &self,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error(format!("listing {family:?} neighbours"), e))
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, KernelError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match found {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(request_error(format!("looking up link {name}"), e)),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, KernelError> {
        let found = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        match found {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(request_error(format!("looking up link #{index}"), e)),
        }
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// Whether an existing device is the VXLAN device corten would create.
fn vxlan_matches(link: &LinkMessage, underlay: u32, node_ip: Ipv4Addr) -> bool {
    let Some(infos) = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    }) else {
        return false;
    };
    let Some(data) = infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    }) else {
        return false;
    };
    let has = |wanted: &InfoVxlan| data.iter().any(|d| d == wanted);
    has(&InfoVxlan::Id(VXLAN_VNI))
        && has(&InfoVxlan::Port(VXLAN_PORT))
        && has(&InfoVxlan::Local(node_ip))
        && has(&InfoVxlan::Link(underlay))
        && has(&InfoVxlan::Learning(false))
}

fn route_message(route: &RouteSpec, index: u32, for_delete: bool) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.addr, route.dst.prefix)
        .gateway(route.gateway)
        .output_interface(index)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    if !for_delete {
        builder = builder.scope(RouteScope::Universe).kind(RouteType::Unicast);
    } else {
        builder = builder.scope(RouteScope::NoWhere);
    }
    if route.via == Via::Vxlan {
        builder = builder.onlink();
    }
    builder.build()
}

fn parse_route(message: &RouteMessage, underlay: u32, vxlan: Option<u32>) -> Option<RouteSpec> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    let via = match oif? {
        index if Some(index) == vxlan => Via::Vxlan,
        index if index == underlay => Via::Underlay,
        _ => return None,
    };
    // An on-link flag is part of what corten adds through the VXLAN device.
    if via == Via::Vxlan && !message.header.flags.contains(RouteFlags::Onlink) {
        return None;
    }
    Some(RouteSpec {
        dst: Cidr {
            addr: dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
            prefix: message.header.destination_prefix_length,
        },
        gateway: gateway?,
        via,
    })
}

/// Whether a neighbour or FDB entry is permanent (the kernel may report it with other state
/// bits, such as NOARP, alongside).
fn permanent(state: NeighbourState) -> bool {
    const NUD_PERMANENT: u16 = 0x80;
    u16::from(state) & NUD_PERMANENT != 0
}

/// The IPv4 destination of a neighbour entry, or of an FDB entry (whose bridge-family message
/// carries it as four raw bytes).
fn neighbour_ip(message: &NeighbourMessage) -> Option<Ipv4Addr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(&bytes[..]).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn neighbour_mac(message: &NeighbourMessage) -> Option<Mac> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => {
            <[u8; 6]>::try_from(&bytes[..]).ok().map(Mac)
        }
        _ => None,
    })
}

/// The errno of a kernel refusal.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| code.get().abs()),
        _ => None,
    }
}

fn request_error(operation: String, err: rtnetlink::Error) -> KernelError {
    let source = match &err {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    KernelError::Request { operation, source }
}
