//! The one definition of every BPF map key and value that crosses the kernel boundary.
//!
//! The eBPF programs (`ebpf/`, `no_std`, built for `bpfel-unknown-none`) and the agent's
//! loaders (`agent/src/proxy/`) both use these types, so their layouts cannot drift apart.
//! Everything here is `#[repr(C)]`, has explicit padding fields (no uninitialised bytes ever
//! reach a map), and stores addresses and ports in network byte order exactly as the kernel
//! hands them to the programs. This crate holds types and constants only: no logic that
//! belongs to one side, no I/O.
#![no_std]

/// IANA protocol numbers as the kernel reports them in `bpf_sock_addr.protocol`.
pub mod protocol {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Names of the maps in the object file; the agent looks the maps up by these.
pub mod maps {
    /// [`crate::ServiceKey`] → [`crate::ServiceValue`].
    pub const SERVICES: &str = "CORTEN_SERVICES";
    /// [`crate::BackendKey`] → [`crate::Backend`].
    pub const BACKENDS: &str = "CORTEN_BACKENDS";
}

/// Names of the programs in the object file.
pub mod programs {
    /// `cgroup/connect4`: rewrites the destination of `connect()` from a service to a backend.
    pub const CONNECT4: &str = "corten_connect4";
}

/// Default capacity of the service map.
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
/// Default capacity of the backend map.
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;

/// A service frontend: virtual IPv4 address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 address, network byte order (the four octets as they sit in memory).
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// [`protocol::TCP`] or [`protocol::UDP`].
    pub protocol: u8,
    /// Always zero.
    pub pad: u8,
}

impl ServiceKey {
    /// Builds a key from host-order values.
    pub const fn new(octets: [u8; 4], port: u16, protocol: u8) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
            port: port.to_be(),
            protocol,
            pad: 0,
        }
    }
}

/// What the datapath needs to know about one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Identifier that keys this service's backends in the backend map.
    pub id: u32,
    /// Number of backend slots `0..backend_count`; zero means "no endpoints": refuse.
    pub backend_count: u32,
}

/// One backend slot of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// [`ServiceValue::id`] of the owning service.
    pub service_id: u32,
    /// Slot index, `0..backend_count`.
    pub slot: u32,
}

/// A backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

impl Backend {
    /// Builds a backend from host-order values.
    pub const fn new(octets: [u8; 4], port: u16) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
            port: port.to_be(),
            pad: 0,
        }
    }
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers, and has explicit
    // padding fields, so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 8);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<Backend>(), 8);
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        let key = ServiceKey::new([10, 43, 0, 1], 80, protocol::TCP);
        assert_eq!(key.addr.to_ne_bytes(), [10, 43, 0, 1]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        let backend = Backend::new([172, 30, 0, 10], 8080);
        assert_eq!(backend.port.to_ne_bytes(), 8080u16.to_be_bytes());
    }
}
