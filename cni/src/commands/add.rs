//! ADD: allocate the pod's address, wire the veth, addresses and routes, and report them.
//!
//! Owns the order allocate → wire → report and the rollback of both when any part fails,
//! so a failed ADD leaves neither an allocation nor a link behind.
use serde_json::Value;

use super::{open_ipam, Connect};
use crate::{
    attachment::Attachment,
    config::NetworkConfig,
    env::Invocation,
    error::{CniError, ErrorCode},
    ipam::IpamStore,
    netlink::{Dataplane, Side},
    plan::{self, PodWiring, GATEWAY, HOST_MAC},
    result::{AddResult, PodNetwork},
};

pub(super) fn run(
    invocation: &Invocation,
    config: &NetworkConfig,
    connect: &mut Connect<'_>,
) -> Result<Value, CniError> {
    let attachment = invocation.attachment()?;
    let netns = invocation.required_netns()?;
    // Connect first: a namespace that is gone fails here, before anything is allocated.
    let mut dataplane = connect(Some(netns))?;
    let ipam = open_ipam(config)?;
    let allocation = ipam.allocate(&attachment)?;
    let wiring = PodWiring {
        host_link: attachment.host_link_name(),
        pod_link: attachment.ifname.clone(),
        address: allocation.ip,
        mtu: config.mtu,
    };
    let sandbox = netns.to_string_lossy();
    let wired = plan::apply(dataplane.as_mut(), &plan::add_plan(&wiring))
        .map_err(CniError::from)
        .and_then(|()| pod_mac(dataplane.as_mut(), &wiring));
    let pod_mac = match wired {
        Ok(mac) => mac,
        Err(err) => {
            undo(dataplane.as_mut(), &ipam, &attachment, &wiring);
            return Err(err);
        }
    };
    tracing::debug!(
        container = %attachment.container_id,
        ifname = %attachment.ifname,
        address = %allocation.ip,
        reused = !allocation.fresh,
        "pod attached"
    );
    let result = AddResult::for_pod(
        config.cni_version,
        &PodNetwork {
            host_link: &wiring.host_link,
            host_mac: HOST_MAC,
            pod_link: &wiring.pod_link,
            pod_mac,
            sandbox: &sandbox,
            address: wiring.address,
            gateway: GATEWAY,
            mtu: wiring.mtu,
        },
    );
    serde_json::to_value(result)
        .map_err(|err| CniError::new(ErrorCode::IoFailure, format!("encoding the result: {err}")))
}

/// The hardware address of the pod's new interface.
fn pod_mac(dataplane: &mut dyn Dataplane, wiring: &PodWiring) -> Result<[u8; 6], CniError> {
    dataplane
        .link(Side::Pod, &wiring.pod_link)?
        .and_then(|link| link.mac)
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::DataplaneFailure,
                format!(
                    "the pod's {} has no hardware address after creation",
                    wiring.pod_link
                ),
            )
        })
}

/// Takes back a failed ADD: whatever is left of the wiring (the plan's own rollback has
/// usually removed it already; deleting is idempotent) and the allocation.
fn undo(
    dataplane: &mut dyn Dataplane,
    ipam: &IpamStore,
    attachment: &Attachment,
    wiring: &PodWiring,
) {
    if let Err(err) = plan::apply(
        dataplane,
        &plan::del_plan(&wiring.host_link, Some(wiring.address)),
    ) {
        tracing::warn!(%err, "removing the wiring of a failed ADD");
    }
    if let Err(err) = ipam.release(attachment) {
        tracing::warn!(%err, "releasing the address of a failed ADD");
    }
}
