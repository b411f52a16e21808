//! Reaching into the pod's network namespace: a netlink socket belongs to the namespace of
//! the thread that creates it, so a short-lived thread enters the pod's namespace with
//! `setns`, opens the socket there and ends. The plugin's own threads never change
//! namespace, so nothing else it does can land in the wrong one.
//!
//! Owns opening `CNI_NETNS` and the namespace switch; it must not do any netlink request
//! itself.
use std::{
    fs::File,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};

use super::NetlinkError;

/// Opens a network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`, ...).
pub fn open(path: &Path) -> Result<File, NetlinkError> {
    File::open(path).map_err(|source| {
        if source.kind() == ErrorKind::NotFound {
            NetlinkError::NetnsMissing {
                path: path.to_path_buf(),
            }
        } else {
            NetlinkError::Netns {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// An rtnetlink handle whose socket lives in `netns`; its connection task runs on
/// `runtime`.
pub fn connect_inside(
    runtime: &tokio::runtime::Handle,
    netns: &File,
    path: &Path,
) -> Result<rtnetlink::Handle, NetlinkError> {
    let namespace_error = |source: std::io::Error| NetlinkError::Netns {
        path: PathBuf::from(path),
        source,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| namespace_error(std::io::Error::from(errno)))?;
                // The socket is created (and registered with the runtime's reactor) here,
                // inside the pod's namespace; the thread ends right after.
                let _entered = runtime.enter();
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
                runtime.spawn(connection);
                Ok(handle)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(namespace_error(std::io::Error::other(
                    "the thread entering the namespace panicked",
                )))
            })
    })
}
