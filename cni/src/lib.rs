//! corten-cni: the CNI plugin containerd's CRI plugin runs for every pod sandbox (CNI spec
//! 1.0.0 and 1.1.0: ADD, DEL, CHECK, VERSION, STATUS, GC).
//!
//! It gives each pod a veth whose pod end carries one address of the node's pod subnet as a
//! /32, with a default route through the link-local gateway `169.254.1.1`; the host end
//! answers for that gateway and the node routes the /32 to it (Calico-style host routing,
//! DESIGN.md §7). Addresses come from a local IPAM under `dataDir` (see [`ipam`]).
//!
//! Layout: [`env`] and [`config`] read the invocation; [`commands`] does the work through
//! [`ipam`] and a [`netlink::Dataplane`]; [`plan`] lists the kernel steps as data;
//! [`result`] and [`error`] are the documents printed on stdout. The binary only gathers
//! the environment and stdin and prints the [`Response`].
//!
//! Owns the pod side of the network (interface, address, routes) and the pod's host veth
//! and /32 route. It must not touch node state beyond them: no `ip_forward`, no other
//! links or routes (the agent owns those).
pub mod attachment;
pub mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod netlink;
pub mod plan;
pub mod result;
pub mod subnet;

use config::{supported_version_of, CniVersion, LATEST_VERSION};
use env::Invocation;
use error::CniError;
use netlink::{Dataplane, KernelDataplane};

/// Largest network configuration accepted on stdin.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// 0 on success.
    pub exit_code: i32,
    /// The JSON document for stdout; empty for commands that print nothing on success.
    pub stdout: String,
}

impl Response {
    /// The response for a failure, stamped with `cni_version`.
    pub fn from_error(err: &CniError, cni_version: &str) -> Self {
        Self {
            exit_code: 1,
            stdout: err.to_json(cni_version).to_string(),
        }
    }
}

/// Runs one invocation on the real kernel. `var` reads the `CNI_*` environment variables,
/// `stdin` is the network configuration.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Response {
    run_with(var, stdin, &mut |netns| {
        Ok(Box::new(KernelDataplane::connect(netns)?) as Box<dyn Dataplane>)
    })
}

/// [`run`] with the dataplane supplied by `connect`.
pub fn run_with(
    var: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    connect: &mut commands::Connect<'_>,
) -> Response {
    let outcome = Invocation::from_vars(var)
        .map_err(CniError::from)
        .and_then(|invocation| commands::execute(&invocation, stdin, connect));
    match outcome {
        Ok(Some(document)) => Response {
            exit_code: 0,
            stdout: document.to_string(),
        },
        Ok(None) => Response {
            exit_code: 0,
            stdout: String::new(),
        },
        Err(err) => {
            tracing::debug!(%err, "invocation failed");
            // Errors are written in the configuration's version when it names one we speak.
            let version = supported_version_of(stdin).map_or(LATEST_VERSION, CniVersion::as_str);
            Response::from_error(&err, version)
        }
    }
}
