//! Where a lab's pieces live on the host, derived from the lab's name alone, so that
//! teardown and `gc` find everything even when the lab's own state file is gone.
use std::{net::Ipv4Addr, path::PathBuf};

/// Everything created for labs carries this prefix or lives under these directories.
pub const PREFIX: &str = "corten-lab";
/// Runtime state (sockets, pid files, logs, bpffs mounts), one directory per lab.
pub const RUN_ROOT: &str = "/run/corten-lab";
/// Persistent data (containerd roots, CNI dirs), one directory per lab.
pub const DATA_ROOT: &str = "/var/lib/corten-lab";
/// cgroup v2 mount on this hybrid host.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// cgroup v1 mounts whose hierarchies a lab's containers may use.
pub const CGROUP1_ROOT: &str = "/sys/fs/cgroup";
/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The /24 that node addresses come from, inside every lab (never routed outside it).
pub const FABRIC_NET: [u8; 3] = [172, 30, 0];
/// Host number of node 0; node `i` is `FABRIC_NET.(NODE_HOST_BASE + i)`.
pub const NODE_HOST_BASE: u8 = 10;
/// Most nodes a lab may have (addresses `.10`–`.209`).
pub const MAX_NODES: usize = 200;
/// HTTPS port of a lab's API server, on node 0's address.
pub const API_PORT: u16 = 6443;

/// The paths of one lab.
#[derive(Debug, Clone)]
pub struct LabPaths {
    name: String,
}

impl LabPaths {
    /// Paths for the lab called `name` (not validated here).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runtime directory of the lab.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(RUN_ROOT).join(&self.name)
    }

    /// Data directory of the lab.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(DATA_ROOT).join(&self.name)
    }

    /// The lab's state file.
    pub fn state_file(&self) -> PathBuf {
        self.run_dir().join("lab.json")
    }

    /// Name of the fabric's network namespace.
    pub fn fabric_netns(&self) -> String {
        format!("{PREFIX}-{}-fabric", self.name)
    }

    /// Name of node `i`'s network namespace.
    pub fn node_netns(&self, i: usize) -> String {
        format!("{PREFIX}-{}-n{i}", self.name)
    }

    /// Prefix shared by all of this lab's namespace names.
    pub fn netns_prefix(&self) -> String {
        format!("{PREFIX}-{}-", self.name)
    }

    /// Runtime directory of node `i`.
    pub fn node_run_dir(&self, i: usize) -> PathBuf {
        self.run_dir().join(format!("n{i}"))
    }

    /// Data directory of node `i`.
    pub fn node_data_dir(&self, i: usize) -> PathBuf {
        self.data_dir().join(format!("n{i}"))
    }

    /// Node `i`'s CNI plugin directory (its containerd's `bin_dir`).
    pub fn node_cni_bin_dir(&self, i: usize) -> PathBuf {
        self.node_data_dir(i).join("cni/bin")
    }

    /// Node `i`'s CNI configuration directory (its containerd's `conf_dir`).
    pub fn node_cni_conf_dir(&self, i: usize) -> PathBuf {
        self.node_data_dir(i).join("cni/net.d")
    }

    /// The lab's cgroup, relative to a hierarchy's root (v2 and every v1 controller).
    pub fn cgroup_rel(&self) -> PathBuf {
        PathBuf::from(PREFIX).join(&self.name)
    }

    /// Node `i`'s cgroup, relative to a hierarchy's root.
    pub fn node_cgroup_rel(&self, i: usize) -> PathBuf {
        self.cgroup_rel().join(format!("n{i}"))
    }

    /// Node `i`'s cgroup v2 directory: programs attach here, node processes run here.
    pub fn node_cgroup2(&self, i: usize) -> PathBuf {
        PathBuf::from(CGROUP2_ROOT).join(self.node_cgroup_rel(i))
    }

    /// Node `i`'s own bpffs mount.
    pub fn node_bpffs(&self, i: usize) -> PathBuf {
        self.node_run_dir(i).join("bpf")
    }

    /// Node `i`'s containerd socket.
    pub fn containerd_socket(&self, i: usize) -> PathBuf {
        self.node_run_dir(i).join("containerd.sock")
    }

    /// Node `i`'s cgroup as a path inside any hierarchy (`/corten-lab/NAME/nI`): what the
    /// agent's `--cgroup-root` takes, and what `/proc/PID/cgroup` shows for its processes.
    pub fn node_cgroup_path(&self, i: usize) -> String {
        format!("/{}", self.node_cgroup_rel(i).display())
    }

    /// corten-server's data directory (store, PKI, the admin kubeconfig it writes).
    pub fn server_data_dir(&self) -> PathBuf {
        self.data_dir().join("server")
    }

    /// corten-server's log (it runs in node 0).
    pub fn server_log(&self) -> PathBuf {
        self.node_run_dir(0).join("corten-server.log")
    }

    /// corten-server's pid file.
    pub fn server_pid_file(&self) -> PathBuf {
        self.node_run_dir(0).join("corten-server.pid")
    }

    /// The admin kubeconfig, copied here once the server is ready; it works only from
    /// inside the lab's namespaces.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.run_dir().join("admin.kubeconfig")
    }

    /// Node `i`'s kubeconfig (`system:node:NAME`), issued by corten-server.
    pub fn agent_kubeconfig(&self, i: usize) -> PathBuf {
        self.node_run_dir(i).join("agent.kubeconfig")
    }

    /// Node `i`'s agent data directory.
    pub fn agent_data_dir(&self, i: usize) -> PathBuf {
        self.node_data_dir(i).join("agent")
    }

    /// Node `i`'s agent log.
    pub fn agent_log(&self, i: usize) -> PathBuf {
        self.node_run_dir(i).join("corten-agent.log")
    }

    /// Node `i`'s agent pid file.
    pub fn agent_pid_file(&self, i: usize) -> PathBuf {
        self.node_run_dir(i).join("corten-agent.pid")
    }
}

/// Node `i`'s name in the cluster (its Node object).
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// The URL of a lab's API server: node 0's address, reachable only inside the lab.
pub fn server_url() -> String {
    format!("https://{}:{API_PORT}", node_ip(0))
}

/// Node `i`'s address on the fabric.
pub fn node_ip(i: usize) -> Ipv4Addr {
    let host = u8::try_from(i)
        .ok()
        .and_then(|i| i.checked_add(NODE_HOST_BASE))
        .unwrap_or(u8::MAX);
    Ipv4Addr::new(FABRIC_NET[0], FABRIC_NET[1], FABRIC_NET[2], host)
}

/// A lab name is short (it ends up in namespace names) and plain.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    anyhow::ensure!(
        ok,
        "lab name {name:?} must be 1-24 characters of a-z, 0-9 and '-', not starting with '-'"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_start_at_base() {
        assert_eq!(node_ip(0), Ipv4Addr::new(172, 30, 0, 10));
        assert_eq!(node_ip(2), Ipv4Addr::new(172, 30, 0, 12));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("dev-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("Bad").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(25)).is_err());
    }

    #[test]
    fn every_path_is_under_the_lab() {
        let p = LabPaths::new("t");
        assert!(p.node_run_dir(1).starts_with("/run/corten-lab/t"));
        assert!(p.node_data_dir(1).starts_with("/var/lib/corten-lab/t"));
        assert!(p
            .node_cgroup2(1)
            .starts_with("/sys/fs/cgroup/unified/corten-lab/t"));
        assert!(p.node_netns(3).starts_with(&p.netns_prefix()));
        assert!(p.fabric_netns().starts_with(&p.netns_prefix()));
        for dir in [p.server_data_dir(), p.agent_data_dir(2)] {
            assert!(
                dir.starts_with("/var/lib/corten-lab/t"),
                "{}",
                dir.display()
            );
        }
        for file in [
            p.server_log(),
            p.server_pid_file(),
            p.admin_kubeconfig(),
            p.agent_kubeconfig(2),
            p.agent_log(2),
            p.agent_pid_file(2),
        ] {
            assert!(file.starts_with("/run/corten-lab/t"), "{}", file.display());
        }
    }

    #[test]
    fn the_control_plane_lives_on_node_0() {
        let p = LabPaths::new("t");
        assert_eq!(server_url(), "https://172.30.0.10:6443");
        assert_eq!(p.node_cgroup_path(1), "/corten-lab/t/n1");
        assert_eq!(
            PathBuf::from(CGROUP2_ROOT).join(p.node_cgroup_path(1).trim_start_matches('/')),
            p.node_cgroup2(1)
        );
        assert!(p.server_log().starts_with(p.node_run_dir(0)));
        assert_eq!(node_name(3), "n3");
    }
}
