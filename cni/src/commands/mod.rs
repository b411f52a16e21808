//! The CNI commands, one file each, and the dispatch from an invocation to them.
//!
//! Owns what each command does with the configuration, the IPAM store and the dataplane.
//! It must not print or exit (the binary does), and reaches the kernel only through the
//! `connect` function it is given, so every command runs in unit tests on a fake.
mod add;
mod check;
mod del;
mod gc;
mod status;
mod version;

use std::path::Path;

use serde_json::Value;

use crate::{
    config::{CniVersion, NetworkConfig},
    env::{Command, Invocation},
    error::{CniError, ErrorCode},
    ipam::IpamStore,
    netlink::{Dataplane, NetlinkError},
};

/// Opens the dataplane: the plugin's namespace, plus the pod's when a path is given.
pub type Connect<'a> = dyn FnMut(Option<&Path>) -> Result<Box<dyn Dataplane>, NetlinkError> + 'a;

/// Runs the invocation's command; the JSON to print on success, if the command has any.
pub fn execute(
    invocation: &Invocation,
    stdin: &[u8],
    connect: &mut Connect<'_>,
) -> Result<Option<Value>, CniError> {
    if invocation.command == Command::Version {
        return Ok(Some(version::run(stdin)));
    }
    let config = NetworkConfig::parse(stdin)?;
    match invocation.command {
        Command::Add => add::run(invocation, &config, connect).map(Some),
        Command::Del => del::run(invocation, &config, connect).map(|()| None),
        Command::Check => check::run(invocation, &config, connect).map(|()| None),
        Command::Status => {
            require_spec_1_1(&config, Command::Status)?;
            status::run(&config).map(|()| None)
        }
        Command::Gc => {
            require_spec_1_1(&config, Command::Gc)?;
            gc::run(&config, connect).map(|()| None)
        }
        Command::Version => Ok(Some(version::run(stdin))),
    }
}

/// STATUS and GC exist from spec 1.1.0 on.
fn require_spec_1_1(config: &NetworkConfig, command: Command) -> Result<(), CniError> {
    if config.cni_version >= CniVersion::V1_1_0 {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!(
            "{} needs cniVersion 1.1.0; the configuration says {}",
            command.name(),
            config.cni_version.as_str()
        ),
    ))
}

fn open_ipam(config: &NetworkConfig) -> Result<IpamStore, CniError> {
    Ok(IpamStore::open(&config.network_dir(), config.subnet)?)
}

#[cfg(test)]
mod tests;
