//! The node's pod network: the CNI configuration the container runtime reads
//! ([`cni_config`]) and the node's forwarding switch; routes between nodes (VXLAN, BGP,
//! host-gw) come next.
pub mod cni_config;

/// Turns on IPv4 forwarding in the node's network namespace: pod traffic is routed through
/// the node (host-routed veths), so without it pods reach nobody but the node.
pub fn enable_forwarding() -> std::io::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(PATH, "1")
}
