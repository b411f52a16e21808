//! [`Dataplane`] on the real kernel: rtnetlink requests on a current-thread tokio runtime,
//! one socket in the plugin's namespace and one opened inside the pod's (see
//! [`super::netns`]), and `/proc/sys` for the per-link sysctls.
//!
//! Owns the translation of the trait's calls into netlink messages and of the kernel's
//! answers back. It must not decide anything: absent links and routes are reported, not
//! worked around.
use std::{
    fs::{self, File},
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::Path,
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
            RouteScope as NlRouteScope, RouteType,
        },
        AddressFamily,
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use tokio::runtime::Runtime;

use super::{
    netns, Dataplane, LinkState, LinkSysctl, NetlinkError, Route, RouteScope, Side, VethSpec,
};

/// No such device.
const ENODEV: i32 = 19;
/// No such process: what the kernel says when a route to delete is not there.
const ESRCH: i32 = 3;
/// No such file or directory.
const ENOENT: i32 = 2;

/// The kernel, reached through netlink.
#[derive(Debug)]
pub struct KernelDataplane {
    runtime: Runtime,
    host: Handle,
    pod: Option<PodNamespace>,
}

#[derive(Debug)]
struct PodNamespace {
    handle: Handle,
    /// Kept open: the veth's pod end is created into it by descriptor.
    file: File,
}

impl KernelDataplane {
    /// Connects to the plugin's own namespace and, when given, to the pod's.
    pub fn connect(pod_netns: Option<&Path>) -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Socket)?;
        let host = {
            let _entered = runtime.enter();
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
            runtime.spawn(connection);
            handle
        };
        let pod = match pod_netns {
            Some(path) => {
                let file = netns::open(path)?;
                let handle = netns::connect_inside(runtime.handle(), &file, path)?;
                Some(PodNamespace { handle, file })
            }
            None => None,
        };
        Ok(Self { runtime, host, pod })
    }

    fn handle(&self, side: Side) -> Result<Handle, NetlinkError> {
        match side {
            Side::Host => Ok(self.host.clone()),
            Side::Pod => self
                .pod
                .as_ref()
                .map(|pod| pod.handle.clone())
                .ok_or(NetlinkError::NoPodNamespace),
        }
    }

    fn find_link(&self, side: Side, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let handle = self.handle(side)?;
        let found = self.runtime.block_on(async {
            handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next()
                .await
        });
        match found {
            Ok(message) => Ok(message),
            Err(err) if errno(&err) == Some(ENODEV) => Ok(None),
            Err(err) => Err(request_error(
                format!("looking up {side:?}-side link {name}"),
                err,
            )),
        }
    }

    fn index(&self, side: Side, name: &str) -> Result<u32, NetlinkError> {
        self.find_link(side, name)?
            .map(|link| link.header.index)
            .ok_or_else(|| NetlinkError::LinkMissing {
                side,
                name: name.to_owned(),
            })
    }
}

impl Dataplane for KernelDataplane {
    fn create_veth(&mut self, veth: &VethSpec) -> Result<(), NetlinkError> {
        let pod = self.pod.as_ref().ok_or(NetlinkError::NoPodNamespace)?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(veth.pod.clone())
            .mtu(veth.mtu)
            .setns_by_fd(pod.file.as_raw_fd())
            .build();
        let message = LinkVeth::new(&veth.host, &veth.pod)
            .mtu(veth.mtu)
            .address(veth.host_mac.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.runtime
            .block_on(self.host.link().add(message).execute())
            .map_err(|err| {
                request_error(
                    format!("creating veth {} with pod end {}", veth.host, veth.pod),
                    err,
                )
            })
    }

    fn link(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        Ok(self.find_link(side, name)?.map(|message| {
            let mut state = LinkState {
                index: message.header.index,
                mac: None,
                up: message.header.flags.contains(LinkFlags::Up),
                mtu: None,
            };
            for attribute in &message.attributes {
                match attribute {
                    LinkAttribute::Address(bytes) => {
                        state.mac = <[u8; 6]>::try_from(&bytes[..]).ok()
                    }
                    LinkAttribute::Mtu(mtu) => state.mtu = Some(*mtu),
                    _ => {}
                }
            }
            state
        }))
    }

    fn set_link_up(&mut self, side: Side, name: &str) -> Result<(), NetlinkError> {
        let index = self.index(side, name)?;
        let handle = self.handle(side)?;
        let message = LinkUnspec::new_with_index(index).up().build();
        self.runtime
            .block_on(handle.link().set(message).execute())
            .map_err(|err| request_error(format!("setting {side:?}-side link {name} up"), err))
    }

    fn delete_link(&mut self, side: Side, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.find_link(side, name)? else {
            return Ok(false);
        };
        let handle = self.handle(side)?;
        match self
            .runtime
            .block_on(handle.link().del(link.header.index).execute())
        {
            Ok(()) => Ok(true),
            Err(err) if errno(&err) == Some(ENODEV) => Ok(false),
            Err(err) => Err(request_error(
                format!("deleting {side:?}-side link {name}"),
                err,
            )),
        }
    }

    fn add_address(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let index = self.index(side, link)?;
        let handle = self.handle(side)?;
        self.runtime
            .block_on(
                handle
                    .address()
                    .add(index, IpAddr::V4(address), prefix_len)
                    .execute(),
            )
            .map_err(|err| request_error(format!("adding {address}/{prefix_len} to {link}"), err))
    }

    fn addresses(&mut self, side: Side, link: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let index = self.index(side, link)?;
        let handle = self.handle(side)?;
        let messages: Vec<_> = self
            .runtime
            .block_on(
                handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect(),
            )
            .map_err(|err| request_error(format!("listing addresses of {link}"), err))?;
        Ok(messages
            .iter()
            .filter(|message| message.header.index == index)
            .flat_map(|message| {
                message
                    .attributes
                    .iter()
                    .filter_map(move |attribute| match attribute {
                        rtnetlink::packet_route::address::AddressAttribute::Address(
                            IpAddr::V4(ip),
                        ) => Some((*ip, message.header.prefix_len)),
                        _ => None,
                    })
            })
            .collect())
    }

    fn add_route(&mut self, side: Side, route: &Route) -> Result<(), NetlinkError> {
        let index = self.index(side, &route.link)?;
        let handle = self.handle(side)?;
        let message = route_message(index, route, false);
        self.runtime
            .block_on(handle.route().add(message).execute())
            .map_err(|err| request_error(format!("adding route {}", describe(route)), err))
    }

    fn delete_route(&mut self, side: Side, route: &Route) -> Result<bool, NetlinkError> {
        let Some(link) = self.find_link(side, &route.link)? else {
            // Routes through a link go with it.
            return Ok(false);
        };
        let handle = self.handle(side)?;
        let message = route_message(link.header.index, route, true);
        match self.runtime.block_on(handle.route().del(message).execute()) {
            Ok(()) => Ok(true),
            Err(err) if matches!(errno(&err), Some(ESRCH | ENOENT | ENODEV)) => Ok(false),
            Err(err) => Err(request_error(
                format!("deleting route {}", describe(route)),
                err,
            )),
        }
    }

    fn routes(&mut self, side: Side, link: &str) -> Result<Vec<Route>, NetlinkError> {
        let index = self.index(side, link)?;
        let handle = self.handle(side)?;
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages: Vec<RouteMessage> = self
            .runtime
            .block_on(handle.route().get(query).execute().try_collect())
            .map_err(|err| request_error(format!("listing routes of {link}"), err))?;
        Ok(messages
            .iter()
            .filter(|message| {
                message.header.table == RouteHeader::RT_TABLE_MAIN
                    && message.header.kind == RouteType::Unicast
                    && message.header.address_family == AddressFamily::Inet
                    && message.attributes.contains(&RouteAttribute::Oif(index))
            })
            .map(|message| parse_route(message, link))
            .collect())
    }

    fn add_neighbour(
        &mut self,
        side: Side,
        link: &str,
        address: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let index = self.index(side, link)?;
        let handle = self.handle(side)?;
        self.runtime
            .block_on(
                handle
                    .neighbours()
                    .add(index, IpAddr::V4(address))
                    .link_layer_address(&mac)
                    .execute(),
            )
            .map_err(|err| request_error(format!("adding neighbour {address} on {link}"), err))
    }

    fn neighbours(
        &mut self,
        side: Side,
        link: &str,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetlinkError> {
        let index = self.index(side, link)?;
        let handle = self.handle(side)?;
        let messages: Vec<_> = self
            .runtime
            .block_on(
                handle
                    .neighbours()
                    .get()
                    .set_address_family(AddressFamily::Inet)
                    .execute()
                    .try_collect(),
            )
            .map_err(|err| request_error(format!("listing neighbours of {link}"), err))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for attribute in &m.attributes {
                    match attribute {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => {
                            ip = Some(*addr)
                        }
                        NeighbourAttribute::LinkLayerAddress(bytes) => {
                            mac = <[u8; 6]>::try_from(&bytes[..]).ok()
                        }
                        _ => {}
                    }
                }
                Some((ip?, mac?))
            })
            .collect())
    }

    fn set_sysctl(
        &mut self,
        link: &str,
        sysctl: LinkSysctl,
        value: &str,
    ) -> Result<(), NetlinkError> {
        let path = sysctl.path(link);
        fs::write(&path, value).map_err(|source| NetlinkError::Sysctl { path, source })
    }

    fn sysctl(&mut self, link: &str, sysctl: LinkSysctl) -> Result<String, NetlinkError> {
        let path = sysctl.path(link);
        fs::read_to_string(&path)
            .map(|value| value.trim().to_owned())
            .map_err(|source| NetlinkError::Sysctl { path, source })
    }
}

/// The message to add (or, with `for_delete`, to match for deletion) a route. Deletion
/// leaves protocol and scope open, as `ip route del` does, so it matches what was added.
fn route_message(index: u32, route: &Route, for_delete: bool) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst, route.prefix_len)
        .output_interface(index);
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway);
    }
    if for_delete {
        builder = builder
            .protocol(RouteProtocol::Unspec)
            .scope(NlRouteScope::NoWhere);
    } else {
        builder = builder.scope(match route.scope {
            RouteScope::Link => NlRouteScope::Link,
            RouteScope::Universe => NlRouteScope::Universe,
        });
    }
    builder.build()
}

fn parse_route(message: &RouteMessage, link: &str) -> Route {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            _ => {}
        }
    }
    Route {
        dst,
        prefix_len: message.header.destination_prefix_length,
        gateway,
        link: link.to_owned(),
        scope: if message.header.scope == NlRouteScope::Link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        },
    }
}

fn describe(route: &Route) -> String {
    match route.gateway {
        Some(gateway) => format!(
            "{}/{} via {gateway} dev {}",
            route.dst, route.prefix_len, route.link
        ),
        None => format!("{}/{} dev {}", route.dst, route.prefix_len, route.link),
    }
}

/// The errno of a kernel refusal.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| code.get().abs()),
        _ => None,
    }
}

fn request_error(operation: String, err: rtnetlink::Error) -> NetlinkError {
    let source = match &err {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    NetlinkError::Request { operation, source }
}
