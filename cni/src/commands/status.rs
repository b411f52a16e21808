//! STATUS (spec 1.1): whether an ADD could be served now, i.e. whether the IPAM state is
//! usable and the subnet still has a free address. Code 50 when not.
//!
//! Owns the readiness verdict; it changes nothing (beyond creating the state directory).
use crate::{
    config::NetworkConfig,
    error::{CniError, ErrorCode},
    ipam::IpamStore,
};

pub(super) fn run(config: &NetworkConfig) -> Result<(), CniError> {
    let not_available = |msg: String| CniError::new(ErrorCode::PluginNotAvailable, msg);
    let free = IpamStore::open(&config.network_dir(), config.subnet)
        .and_then(|ipam| ipam.free_count())
        .map_err(|err| not_available(format!("the IPAM state is not usable: {err}")))?;
    if free == 0 {
        return Err(not_available(format!(
            "no free pod address left in {}",
            config.subnet
        )));
    }
    Ok(())
}
