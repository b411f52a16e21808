//! DEL: unwire the pod and release its address. Idempotent: a DEL of something never
//! added, or already deleted, succeeds; the pod's namespace is not needed (it may be gone).
//!
//! Owns the order unwire → release, so an address is only freed once nothing routes to it.
use super::{open_ipam, Connect};
use crate::{config::NetworkConfig, env::Invocation, error::CniError, plan};

pub(super) fn run(
    invocation: &Invocation,
    config: &NetworkConfig,
    connect: &mut Connect<'_>,
) -> Result<(), CniError> {
    let attachment = invocation.attachment()?;
    let ipam = open_ipam(config)?;
    let address = ipam.find(&attachment)?;
    // The host side is all DEL touches; the veth's pod end goes with the host end.
    let mut dataplane = connect(None)?;
    plan::apply(
        dataplane.as_mut(),
        &plan::del_plan(&attachment.host_link_name(), address),
    )?;
    let released = ipam.release(&attachment)?;
    tracing::debug!(
        container = %attachment.container_id,
        ifname = %attachment.ifname,
        ?released,
        "pod detached"
    );
    Ok(())
}
