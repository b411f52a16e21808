//! CHECK: is the pod still wired as ADD left it? The expected interfaces, addresses and
//! routes come from `prevResult` (as the spec requires) and from what the plugin always
//! sets up beyond it (the gateway route and neighbour, the host route, proxy ARP, the
//! address reservation).
//!
//! Owns the comparison. It changes nothing, and it tolerates what later plugins in a chain
//! may add: extra addresses and routes are fine, only missing ones are errors.
use std::{net::Ipv4Addr, path::Path};

use super::{open_ipam, Connect};
use crate::{
    attachment::Attachment,
    config::{ConfigError, NetworkConfig},
    env::Invocation,
    error::{CniError, ErrorCode},
    netlink::{Dataplane, LinkSysctl, Route, Side},
    plan::{PodWiring, GATEWAY, HOST_MAC},
    result::{format_mac, parse_ipv4_cidr, parse_mac, AddResult},
};

pub(super) fn run(
    invocation: &Invocation,
    config: &NetworkConfig,
    connect: &mut Connect<'_>,
) -> Result<(), CniError> {
    let attachment = invocation.attachment()?;
    let netns = invocation.required_netns()?;
    let prev = config.prev_result.as_ref().ok_or(ConfigError::Missing {
        field: "prevResult",
    })?;
    let prev: AddResult =
        serde_json::from_value(prev.clone()).map_err(|err| ConfigError::Invalid {
            field: "prevResult",
            reason: err.to_string(),
        })?;
    let ipam = open_ipam(config)?;
    let address = ipam.find(&attachment)?.ok_or_else(|| {
        check_failed(vec![format!(
            "no address is reserved for container {} interface {}",
            attachment.container_id, attachment.ifname
        )])
    })?;
    let expected = Expected::from_prev_result(&prev, &attachment, netns);
    let wiring = PodWiring {
        host_link: attachment.host_link_name(),
        pod_link: attachment.ifname.clone(),
        address,
        mtu: config.mtu,
    };
    let mut dataplane = connect(Some(netns))?;
    let problems = verify(dataplane.as_mut(), &wiring, &expected)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(check_failed(problems))
    }
}

fn check_failed(problems: Vec<String>) -> CniError {
    let msg = problems
        .first()
        .cloned()
        .unwrap_or_else(|| "the pod network differs from ADD's result".to_owned());
    let error = CniError::new(ErrorCode::CheckFailed, msg);
    if problems.len() > 1 {
        error.with_details(problems.join("\n"))
    } else {
        error
    }
}

/// What `prevResult` says about this attachment.
#[derive(Debug, Default)]
struct Expected {
    problems: Vec<String>,
    pod_mac: Option<[u8; 6]>,
    addresses: Vec<(Ipv4Addr, u8)>,
    routes: Vec<(Ipv4Addr, u8, Option<Ipv4Addr>)>,
}

impl Expected {
    fn from_prev_result(prev: &AddResult, attachment: &Attachment, netns: &Path) -> Self {
        let mut expected = Self::default();
        let sandbox = netns.to_string_lossy();
        let Some(index) = prev.interfaces.iter().position(|interface| {
            interface.name == attachment.ifname
                && interface.sandbox.as_deref() == Some(sandbox.as_ref())
        }) else {
            expected.problems.push(format!(
                "prevResult lists no interface {} in {sandbox}",
                attachment.ifname
            ));
            return expected;
        };
        expected.pod_mac = prev.interfaces[index].mac.as_deref().and_then(parse_mac);
        expected.addresses = prev
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(index))
            .filter_map(|ip| parse_ipv4_cidr(&ip.address))
            .collect();
        // Only the routes this plugin made (through its gateway); later plugins may change
        // the others.
        expected.routes = prev
            .routes
            .iter()
            .filter(|route| route.gw.as_deref() == Some(GATEWAY.to_string().as_str()))
            .filter_map(|route| {
                parse_ipv4_cidr(&route.dst).map(|(dst, prefix)| (dst, prefix, Some(GATEWAY)))
            })
            .collect();
        expected
    }
}

/// Every difference between the kernel and what ADD set up.
fn verify(
    dataplane: &mut dyn Dataplane,
    wiring: &PodWiring,
    expected: &Expected,
) -> Result<Vec<String>, CniError> {
    let mut problems = expected.problems.clone();
    verify_host(dataplane, wiring, &mut problems)?;
    verify_pod(dataplane, wiring, expected, &mut problems)?;
    Ok(problems)
}

fn verify_host(
    dataplane: &mut dyn Dataplane,
    wiring: &PodWiring,
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    let host = &wiring.host_link;
    match dataplane.link(Side::Host, host)? {
        None => {
            problems.push(format!("the host end {host} of the pod's veth is missing"));
            return Ok(());
        }
        Some(link) if !link.up => problems.push(format!("the host end {host} is down")),
        Some(_) => {}
    }
    if dataplane.sysctl(host, LinkSysctl::ProxyArp)? != "1" {
        problems.push(format!("proxy ARP is off on {host}"));
    }
    let routes = dataplane.routes(Side::Host, host)?;
    if !has_route(&routes, &wiring.host_route()) {
        problems.push(format!(
            "the host has no route to {}/32 through {host}",
            wiring.address
        ));
    }
    Ok(())
}

fn verify_pod(
    dataplane: &mut dyn Dataplane,
    wiring: &PodWiring,
    expected: &Expected,
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    let pod = &wiring.pod_link;
    let Some(link) = dataplane.link(Side::Pod, pod)? else {
        problems.push(format!("the pod's interface {pod} is missing"));
        return Ok(());
    };
    if !link.up {
        problems.push(format!("the pod's interface {pod} is down"));
    }
    if let (Some(want), Some(have)) = (expected.pod_mac, link.mac) {
        if want != have {
            problems.push(format!(
                "{pod} has hardware address {}, prevResult says {}",
                format_mac(&have),
                format_mac(&want)
            ));
        }
    }
    let addresses = dataplane.addresses(Side::Pod, pod)?;
    let mut wanted_addresses = expected.addresses.clone();
    wanted_addresses.push((wiring.address, 32));
    for (address, prefix) in wanted_addresses {
        if !addresses.contains(&(address, prefix)) {
            problems.push(format!("{pod} lacks the address {address}/{prefix}"));
        }
    }
    if !expected.addresses.is_empty() && !expected.addresses.contains(&(wiring.address, 32)) {
        problems.push(format!(
            "prevResult's addresses differ from the reserved {}",
            wiring.address
        ));
    }
    let routes = dataplane.routes(Side::Pod, pod)?;
    for route in [wiring.gateway_route(), wiring.default_route()] {
        if !has_route(&routes, &route) {
            problems.push(format!(
                "the pod has no route to {}/{} through {pod}",
                route.dst, route.prefix_len
            ));
        }
    }
    for (dst, prefix, gateway) in &expected.routes {
        let found = routes
            .iter()
            .any(|r| r.dst == *dst && r.prefix_len == *prefix && r.gateway == *gateway);
        if !found {
            problems.push(format!(
                "the pod lacks prevResult's route to {dst}/{prefix}"
            ));
        }
    }
    let neighbours = dataplane.neighbours(Side::Pod, pod)?;
    if !neighbours.contains(&(GATEWAY, HOST_MAC)) {
        problems.push(format!(
            "the pod has no neighbour entry for the gateway {GATEWAY} on {pod}"
        ));
    }
    Ok(())
}

fn has_route(routes: &[Route], wanted: &Route) -> bool {
    routes.iter().any(|route| {
        route.dst == wanted.dst
            && route.prefix_len == wanted.prefix_len
            && route.gateway == wanted.gateway
    })
}
