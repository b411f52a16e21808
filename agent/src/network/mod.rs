//! The node's pod network: the CNI configuration the container runtime reads
//! ([`cni_config`]), the node's forwarding switch, and the routes to the other nodes' pods in
//! one of three modes ([`NetworkMode`]): a flannel-style VXLAN overlay, host-gw routes via the
//! peers' node IPs, or routes learned over BGP from corten's own speaker ([`bgp`], wired to
//! the Nodes by [`bgp_mode`]); and
//! [`masquerade`] for pod traffic leaving the cluster. [`peers`] reads the Nodes, [`plan`]
//! decides the kernel entries, [`kernel`] speaks rtnetlink, [`sync`] runs the loop.
//!
//! Owns the node's routes, neighbours and FDB entries toward other nodes. It must not touch
//! pods' own links (that is `corten-cni`).
pub mod bgp;
pub mod bgp_mode;
pub mod cni_config;
pub mod kernel;
pub mod masquerade;
pub mod peers;
pub mod plan;
pub mod sync;

/// How pods on different nodes reach each other (`corten-agent --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A VXLAN overlay (VNI 1, UDP 8472), as flannel's vxlan backend.
    #[default]
    Vxlan,
    /// Routes to each peer's pod CIDR via its node IP (nodes share L2).
    HostGw,
    /// Routes learned from BGP peers (iBGP full mesh between nodes, plus external peers).
    Bgp,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vxlan => "vxlan",
            Self::HostGw => "host-gw",
            Self::Bgp => "bgp",
        })
    }
}

/// An unknown `--network` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network mode {0:?} (vxlan, bgp or host-gw)")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for NetworkMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "vxlan" => Ok(Self::Vxlan),
            "host-gw" => Ok(Self::HostGw),
            "bgp" => Ok(Self::Bgp),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

/// Turns on IPv4 forwarding in the node's network namespace: pod traffic is routed through
/// the node (host-routed veths), so without it pods reach nobody but the node.
pub fn enable_forwarding() -> std::io::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(PATH, "1")
}
