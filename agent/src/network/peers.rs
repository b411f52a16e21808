//! The other nodes as the pod network sees them: name, node IP, pod CIDR and VTEP MAC, read
//! from Node objects.
//!
//! Owns the reading of what each agent publishes on its Node (the VTEP MAC annotation) and
//! of what the control plane assigns (`spec.podCIDR`, the InternalIP). Pure: it must not
//! touch the kernel or the API.
use std::{fmt, net::Ipv4Addr, str::FromStr};

use k8s_openapi::api::core::v1::Node;

use super::bgp::Ipv4Prefix;

/// The annotation in which a node's agent publishes its VXLAN device's MAC address.
pub const VTEP_MAC_ANNOTATION: &str = "network.corten.dev/vtep-mac";

/// An IPv4 network: its address with the host bits cleared, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length (0–32).
    pub prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 CIDR such as 10.42.1.0/24")]
pub struct CidrError(pub String);

impl Cidr {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        mask(self.prefix) & u32::from(ip) == u32::from(self.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let refused = || CidrError(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(refused)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| refused())?;
        let prefix: u8 = prefix.parse().map_err(|_| refused())?;
        if prefix > 32 {
            return Err(refused());
        }
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl From<Ipv4Prefix> for Cidr {
    fn from(prefix: Ipv4Prefix) -> Self {
        Self {
            addr: prefix.addr(),
            prefix: prefix.prefix_len(),
        }
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(|| MacError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(MacError(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(MacError(s.to_owned()));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why a MAC string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address such as 0a:1b:2c:3d:4e:5f")]
pub struct MacError(pub String);

/// Another node, as far as the pod network is concerned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The Node's name.
    pub name: String,
    /// Its InternalIP: the underlay address its traffic goes to.
    pub node_ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: Cidr,
    /// Its VTEP MAC, once its agent published one (VXLAN only).
    pub vtep_mac: Option<Mac>,
}

/// What is wrong with a Node for the pod network; such a node is left out until fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The control plane did not assign a pod CIDR yet.
    #[error("node {0} has no pod CIDR yet")]
    NoPodCidr(String),
    /// The pod CIDR does not parse.
    #[error("node {node}: {error}")]
    BadPodCidr {
        /// The node.
        node: String,
        /// The parse error.
        error: CidrError,
    },
    /// No InternalIP among its addresses.
    #[error("node {0} reports no IPv4 InternalIP")]
    NoInternalIp(String),
    /// The VTEP annotation does not parse.
    #[error("node {node}: annotation {VTEP_MAC_ANNOTATION}: {error}")]
    BadVtepMac {
        /// The node.
        node: String,
        /// The parse error.
        error: MacError,
    },
}

/// Reads one Node.
pub fn peer(node: &Node) -> Result<Peer, PeerError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let cidr = node
        .spec
        .as_ref()
        .and_then(|spec| spec.pod_cidr.as_deref())
        .filter(|cidr| !cidr.is_empty())
        .ok_or_else(|| PeerError::NoPodCidr(name.clone()))?;
    let pod_cidr = cidr.parse().map_err(|error| PeerError::BadPodCidr {
        node: name.clone(),
        error,
    })?;
    let node_ip = internal_ip(node).ok_or_else(|| PeerError::NoInternalIp(name.clone()))?;
    let vtep_mac = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(VTEP_MAC_ANNOTATION))
        .map(|mac| mac.parse())
        .transpose()
        .map_err(|error| PeerError::BadVtepMac {
            node: name.clone(),
            error,
        })?;
    Ok(Peer {
        name,
        node_ip,
        pod_cidr,
        vtep_mac,
    })
}

/// A Node's first IPv4 InternalIP.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()
        .and_then(|status| status.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|address| address.type_ == "InternalIP")
        .find_map(|address| address.address.parse::<Ipv4Addr>().ok())
}

/// Every usable node but `own`, sorted by name, with the reasons the others were left out.
pub fn peers<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    own: &str,
) -> (Vec<Peer>, Vec<PeerError>) {
    let mut usable = Vec::new();
    let mut refused = Vec::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(own) {
            continue;
        }
        match peer(node) {
            Ok(peer) => usable.push(peer),
            Err(error) => refused.push(error),
        }
    }
    usable.sort();
    (usable, refused)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>, mac: Option<&str>) -> Node {
        let mut annotations = serde_json::Map::new();
        if let Some(mac) = mac {
            annotations.insert(VTEP_MAC_ANNOTATION.into(), json!(mac));
        }
        let addresses: Vec<_> = ip
            .map(|ip| {
                vec![
                    json!({"type": "Hostname", "address": name}),
                    json!({"type": "InternalIP", "address": ip}),
                ]
            })
            .unwrap_or_default();
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": addresses},
        }))
        .expect("a valid node")
    }

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        let cidr: Cidr = "10.42.1.7/24".parse().expect("parses");
        assert_eq!(cidr.to_string(), "10.42.1.0/24");
        assert!(cidr.contains("10.42.1.200".parse().expect("ip")));
        assert!(!cidr.contains("10.42.2.1".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("parses");
        assert!(all.contains(Ipv4Addr::BROADCAST));
        for bad in ["10.42.1.0", "10.42.1.0/33", "x/24", "10.42.1.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac: Mac = "0a:1B:2c:3d:4e:5f".parse().expect("parses");
        assert_eq!(mac.to_string(), "0a:1b:2c:3d:4e:5f");
        for bad in [
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:60",
            "0a1b2c3d4e5f",
            "zz:1b:2c:3d:4e:5f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn peers_skip_this_node_and_explain_unusable_ones() {
        let nodes = [
            node(
                "n0",
                Some("10.42.0.0/24"),
                Some("172.30.0.10"),
                Some("02:00:00:00:00:10"),
            ),
            node("n2", Some("10.42.2.0/24"), Some("172.30.0.12"), None),
            node(
                "n1",
                Some("10.42.1.0/24"),
                Some("172.30.0.11"),
                Some("02:00:00:00:00:11"),
            ),
            node("n3", None, Some("172.30.0.13"), None),
            node("n4", Some("10.42.4.0/24"), None, None),
            node(
                "n5",
                Some("10.42.5.0/24"),
                Some("172.30.0.15"),
                Some("nonsense"),
            ),
        ];
        let (usable, refused) = peers(&nodes, "n0");
        let names: Vec<_> = usable.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
        assert_eq!(usable[0].node_ip, Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(usable[0].vtep_mac, Some(Mac([2, 0, 0, 0, 0, 0x11])));
        assert_eq!(usable[1].vtep_mac, None);
        assert_eq!(refused.len(), 3);
        assert!(matches!(refused[0], PeerError::NoPodCidr(ref n) if n == "n3"));
        assert!(matches!(refused[1], PeerError::NoInternalIp(ref n) if n == "n4"));
        assert!(matches!(refused[2], PeerError::BadVtepMac { ref node, .. } if node == "n5"));
    }
}
