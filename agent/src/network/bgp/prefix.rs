//! An IPv4 prefix as BGP carries it in NLRI and withdrawn-routes fields (RFC 4271 §4.3): a
//! length octet followed by just enough octets to hold that many bits.
//!
//! Owns the prefix type and its wire form. It must not know about messages or sessions.
use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 network: its address with the host bits cleared, and the prefix length (0–32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The length is over 32.
    #[error("prefix length {0} is over 32")]
    TooLong(u8),
    /// The text is not `a.b.c.d/len`.
    #[error("{0:?} is not an IPv4 prefix such as 10.42.1.0/24")]
    Syntax(String),
}

impl Ipv4Prefix {
    /// The prefix of length `len` containing `addr` (host bits are cleared).
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 32 {
            return Err(PrefixError::TooLong(len));
        }
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is the default route (length 0).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// Appends the wire form: the length octet and the significant octets.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        out.extend_from_slice(&self.addr.octets()[..usize::from(self.len).div_ceil(8)]);
    }

    /// Reads every prefix of a withdrawn-routes or NLRI field; `None` when the field is
    /// malformed (a length over 32 or a prefix cut short), which the caller reports as an
    /// Invalid Network Field. Host bits on the wire are cleared, not refused.
    pub(crate) fn decode_all(mut field: &[u8]) -> Option<Vec<Self>> {
        let mut prefixes = Vec::new();
        while let Some((&len, rest)) = field.split_first() {
            if len > 32 {
                return None;
            }
            let octets = usize::from(len).div_ceil(8);
            let significant = rest.get(..octets)?;
            let mut addr = [0u8; 4];
            addr[..octets].copy_from_slice(significant);
            prefixes.push(Self::new(Ipv4Addr::from(addr), len).ok()?);
            field = &rest[octets..];
        }
        Some(prefixes)
    }
}

fn mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

impl FromStr for Ipv4Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let refused = || PrefixError::Syntax(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(refused)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| refused())?;
        let len: u8 = len.parse().map_err(|_| refused())?;
        Self::new(addr, len)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> Ipv4Prefix {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn wire_form_uses_only_significant_octets() {
        let mut out = Vec::new();
        for p in [
            "10.42.1.0/24",
            "0.0.0.0/0",
            "192.168.1.128/25",
            "10.0.0.1/32",
            "10.0.0.0/9",
        ] {
            prefix(p).encode(&mut out);
        }
        assert_eq!(
            out,
            [24, 10, 42, 1, 0, 25, 192, 168, 1, 128, 32, 10, 0, 0, 1, 9, 10, 0]
        );
        let back = Ipv4Prefix::decode_all(&out).unwrap_or_default();
        let shown: Vec<String> = back.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.42.1.0/24",
                "0.0.0.0/0",
                "192.168.1.128/25",
                "10.0.0.1/32",
                "10.0.0.0/9"
            ]
        );
    }

    #[test]
    fn malformed_fields_are_refused_and_host_bits_cleared() {
        assert_eq!(Ipv4Prefix::decode_all(&[33, 1, 2, 3, 4, 5]), None);
        assert_eq!(Ipv4Prefix::decode_all(&[24, 10, 42]), None);
        assert_eq!(
            Ipv4Prefix::decode_all(&[8, 10]),
            Some(vec![prefix("10.0.0.0/8")])
        );
        assert_eq!(
            Ipv4Prefix::decode_all(&[23, 10, 42, 1]),
            Some(vec![prefix("10.42.0.0/23")])
        );
        assert!("10.0.0.0/33".parse::<Ipv4Prefix>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Prefix>().is_err());
    }
}
