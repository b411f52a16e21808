//! An IPv4 subnet in CIDR form (the node's pod CIDR) and the pod addresses it holds.
//!
//! Owns parsing and address arithmetic; which of the usable addresses are free is IPAM's
//! business. Pure: no I/O.
use std::{fmt, net::Ipv4Addr, str::FromStr};

/// Shortest prefix accepted: a node's pod CIDR is never larger than a /8.
pub const MIN_PREFIX: u8 = 8;
/// Longest prefix accepted: a /30 still has one pod address after the reserved ones.
pub const MAX_PREFIX: u8 = 30;

/// An IPv4 network: its (host-bits-zero) address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// Why a string is not a usable subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// Not `ADDRESS/PREFIX`.
    #[error("must be an IPv4 CIDR like 10.42.0.0/24")]
    NotCidr,
    /// The prefix length is outside what a pod subnet can be.
    #[error("prefix length /{0} is outside /{MIN_PREFIX}../{MAX_PREFIX}")]
    PrefixOutOfRange(u8),
    /// The address has bits set beyond the prefix.
    #[error("{0} has host bits set; the network address is {1}")]
    HostBitsSet(Ipv4Addr, Ipv4Addr),
}

impl Ipv4Subnet {
    /// A subnet from its parts, with the same checks as parsing.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, SubnetError> {
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix_len) {
            return Err(SubnetError::PrefixOutOfRange(prefix_len));
        }
        let mask = mask(prefix_len);
        let masked = Ipv4Addr::from(u32::from(network) & mask);
        if masked != network {
            return Err(SubnetError::HostBitsSet(network, masked));
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }

    /// The network address (`.0` of a /24).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The broadcast address (`.255` of a /24).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// The first host address (`.1` of a /24), which the node may use for itself.
    pub fn node_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// Whether `ip` may be given to a pod: inside, and not the network, the node's `.1` or
    /// the broadcast address.
    pub fn is_pod_address(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
            && ip != self.network
            && ip != self.node_address()
            && ip != self.broadcast()
    }

    /// The first and last address a pod may get, in numeric form.
    pub fn pod_range(&self) -> (u32, u32) {
        (u32::from(self.network) + 2, u32::from(self.broadcast()) - 1)
    }

    /// How many addresses pods may get.
    pub fn pod_capacity(&self) -> u32 {
        let (first, last) = self.pod_range();
        last - first + 1
    }
}

impl FromStr for Ipv4Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, SubnetError> {
        let (address, prefix) = s.split_once('/').ok_or(SubnetError::NotCidr)?;
        let address: Ipv4Addr = address.parse().map_err(|_| SubnetError::NotCidr)?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SubnetError::NotCidr);
        }
        let prefix: u8 = prefix.parse().map_err(|_| SubnetError::NotCidr)?;
        Self::new(address, prefix)
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The netmask of a prefix length (0..=32) as a number.
fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Ipv4Subnet {
        s.parse().expect("valid subnet")
    }

    #[test]
    fn a_slash_24_has_253_pod_addresses() {
        let s = subnet("10.42.3.0/24");
        assert_eq!(s.network(), Ipv4Addr::new(10, 42, 3, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 42, 3, 255));
        assert_eq!(s.node_address(), Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(s.pod_capacity(), 253);
        assert!(s.is_pod_address(Ipv4Addr::new(10, 42, 3, 2)));
        assert!(s.is_pod_address(Ipv4Addr::new(10, 42, 3, 254)));
        for reserved in [0, 1, 255] {
            assert!(!s.is_pod_address(Ipv4Addr::new(10, 42, 3, reserved)));
        }
        assert!(!s.is_pod_address(Ipv4Addr::new(10, 42, 4, 2)));
        assert_eq!(s.to_string(), "10.42.3.0/24");
    }

    #[test]
    fn a_slash_30_has_one() {
        let s = subnet("192.0.2.4/30");
        assert_eq!(s.pod_capacity(), 1);
        assert!(s.is_pod_address(Ipv4Addr::new(192, 0, 2, 6)));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for bad in [
            "",
            "10.42.0.0",
            "10.42.0.0/",
            "/24",
            "10.42.0/24",
            "10.42.0.0/+4",
            "x/24",
            "10.42.0.0/024",
            "10.42.0.0/24/1",
            " 10.42.0.0/24",
        ] {
            assert!(bad.parse::<Ipv4Subnet>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "10.42.0.0/31".parse::<Ipv4Subnet>(),
            Err(SubnetError::PrefixOutOfRange(31))
        );
        assert_eq!(
            "10.0.0.0/7".parse::<Ipv4Subnet>(),
            Err(SubnetError::PrefixOutOfRange(7))
        );
        assert_eq!(
            "10.42.0.1/24".parse::<Ipv4Subnet>(),
            Err(SubnetError::HostBitsSet(
                Ipv4Addr::new(10, 42, 0, 1),
                Ipv4Addr::new(10, 42, 0, 0)
            ))
        );
    }
}
