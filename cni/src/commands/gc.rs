//! GC (spec 1.1): remove what belongs to attachments the runtime no longer knows. Every
//! allocation whose owner is not in `cni.dev/valid-attachments` loses its host veth and
//! route (found by the owner's name, so nothing else is touched) and then its address.
//!
//! Owns the sweep; one failing attachment does not stop the others, and its allocation
//! stays so a later GC or DEL can try again.
use super::{open_ipam, Connect};
use crate::{
    config::{ConfigError, NetworkConfig},
    error::{CniError, ErrorCode},
    plan,
};

pub(super) fn run(config: &NetworkConfig, connect: &mut Connect<'_>) -> Result<(), CniError> {
    let valid = config
        .valid_attachments
        .as_deref()
        .ok_or(ConfigError::Missing {
            field: "cni.dev/valid-attachments",
        })?;
    let ipam = open_ipam(config)?;
    let stale = ipam.stale(valid)?;
    if stale.is_empty() {
        return Ok(());
    }
    let mut dataplane = connect(None)?;
    let mut failures = Vec::new();
    for (address, owner) in &stale {
        if let Some(owner) = owner {
            let steps = plan::del_plan(&owner.host_link_name(), Some(*address));
            if let Err(err) = plan::apply(dataplane.as_mut(), &steps) {
                failures.push(format!("{} ({address}): {err}", owner.container_id));
                continue;
            }
        }
        if let Err(err) = ipam.release_record(*address, owner.as_ref()) {
            failures.push(format!("{address}: {err}"));
        }
        tracing::debug!(%address, ?owner, "garbage-collected");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::DataplaneFailure,
            format!("GC could not clean up {} attachment(s)", failures.len()),
        )
        .with_details(failures.join("\n")))
    }
}
