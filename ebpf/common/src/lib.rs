//! The one definition of every BPF map key and value that crosses the kernel boundary.
//!
//! The eBPF programs (`ebpf/`, `no_std`, built for `bpfel-unknown-none`) and the agent's
//! loaders (`agent/src/proxy/`) both use these types, so their layouts cannot drift apart.
//! Everything here is `#[repr(C)]`, has explicit padding fields (no uninitialised bytes ever
//! reach a map), and stores addresses and ports in network byte order exactly as the kernel
//! hands them to the programs. This crate holds types and constants only, plus the one
//! function both sides are bound by: [`maglev_flow_hash`], which places a flow in a Maglev
//! table (it must never change between agent versions, so it is pinned by tests here). No
//! logic that belongs to one side, no I/O.
//!
//! The service datapath's maps, and who writes them:
//! - [`maps::FRONTENDS`]: [`FrontendKey`] → [`FrontendValue`] (agent): the addresses services
//!   answer on and the service ids behind them.
//! - [`maps::SERVICES`]: service id (`u32`) → [`ServiceValue`] (agent).
//! - [`maps::BACKENDS`]: [`BackendKey`] → [`Backend`] (agent): slots `0..backend_count`.
//! - [`maps::MAGLEV`]: [`MaglevKey`] → slot (`u32`) (agent): consistent-hashing tables, one
//!   per service whose [`ServiceValue::maglev_table_size`] is set (the tc programs' choice).
//! - [`maps::TERMINATING`]: [`TerminatingKey`] → `u8` (agent): backends whose flows are kept.
//! - [`maps::SOCK_REV_NAT`]: [`RevNatKey`] → [`RevNatValue`] (kernel, LRU): which service
//!   address a socket's backend stands for, so replies and `getpeername` show the service.
//! - [`maps::AFFINITY`]: [`AffinityKey`] → [`AffinityValue`] (kernel, LRU): ClientIP session
//!   affinity, the backend each client last got for a service and when.
//! - [`maps::NAT_FLOWS`]: [`NatFlowKey`] → [`NatFlowValue`] (kernel, LRU): the tc programs'
//!   connection tracking, how each packet of a NATed flow from outside is rewritten.
//! - [`maps::NAT_STATS`]: [`nat_stat`] index → `u64` per CPU (kernel): counters of the tc
//!   programs that the agent reads and logs (a full flow map shows up here).
#![no_std]

/// IANA protocol numbers as the kernel reports them in `bpf_sock_addr.protocol`.
pub mod protocol {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Values of [`FrontendValue::kind`](crate::FrontendValue::kind).
pub mod frontend_kind {
    /// A ClusterIP.
    pub const CLUSTER_IP: u8 = 1;
    /// A NodePort on one of the node's addresses (address `0.0.0.0`: any local address).
    pub const NODE_PORT: u8 = 2;
    /// An externalIP.
    pub const EXTERNAL_IP: u8 = 3;
    /// A LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u8 = 4;
}

/// Values of [`ServiceValue::when_empty`](crate::ServiceValue::when_empty).
pub mod when_empty {
    /// The service has backends; nothing to decide.
    pub const NONE: u8 = 0;
    /// No usable endpoint anywhere: refuse new connections at once (`ECONNREFUSED`).
    pub const REJECT: u8 = 1;
    /// A `Local` policy without local endpoints: drop (`EHOSTUNREACH` for a socket).
    pub const DROP: u8 = 2;
}

/// Values of [`AffinityKey::client_kind`](crate::AffinityKey::client_kind).
pub mod affinity_client {
    /// `AffinityKey::client` is a network namespace cookie (socket programs).
    pub const NETNS_COOKIE: u32 = 0;
    /// `AffinityKey::client` is an IPv4 source address, network byte order (tc programs).
    pub const IPV4_SOURCE: u32 = 1;
}

/// Values of [`NatFlowValue::direction`](crate::NatFlowValue::direction).
pub mod nat_direction {
    /// A packet from the client toward the service: destination becomes the backend (and,
    /// for a remote backend, the source becomes the node).
    pub const FORWARD: u8 = 1;
    /// A packet from the backend toward the client: the source becomes the service address
    /// again (and, for an SNATed flow, the destination becomes the client).
    pub const REPLY: u8 = 2;
}

/// Indexes of the [`maps::NAT_STATS`] counters.
pub mod nat_stat {
    /// New flows from outside translated to a backend.
    pub const FLOWS_CREATED: u32 = 0;
    /// A flow entry could not be stored; the packet was dropped.
    pub const FLOW_INSERT_FAILED: u32 = 1;
    /// A TCP packet that is not a SYN arrived for a service without a flow entry: its entry
    /// was evicted from a full flow map (or predates the programs); it got a new pick.
    pub const FLOW_MISSING: u32 = 2;
    /// Dropped: the service has no usable backend for clients from outside.
    pub const NO_BACKEND: u32 = 3;
    /// Dropped: no free SNAT port for a remote backend.
    pub const SNAT_PORTS_EXHAUSTED: u32 = 4;
    /// Dropped: the route to a backend or back to a client could not be resolved.
    pub const NO_ROUTE: u32 = 5;
    /// A service with a Maglev table had no usable entry at the flow's position (a torn or
    /// missing table): the flow got a random backend instead.
    pub const MAGLEV_FALLBACK: u32 = 6;
    /// A new flow to a service without any endpoint was refused: a TCP SYN answered with a
    /// reset, a UDP datagram with an ICMP port unreachable.
    pub const REJECTED: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
    /// Counter names, by index, for logs and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "flows_created",
        "flow_insert_failed",
        "flow_missing",
        "no_backend",
        "snat_ports_exhausted",
        "no_route",
        "maglev_fallback",
        "rejected",
    ];
}

/// Names of the maps in the object file; the agent looks the maps up (and pins them) by
/// these.
pub mod maps {
    /// [`crate::FrontendKey`] → [`crate::FrontendValue`].
    pub const FRONTENDS: &str = "CORTEN_FRONTENDS";
    /// Service id (`u32`) → [`crate::ServiceValue`].
    pub const SERVICES: &str = "CORTEN_SERVICES";
    /// [`crate::BackendKey`] → [`crate::Backend`].
    pub const BACKENDS: &str = "CORTEN_BACKENDS";
    /// [`crate::MaglevKey`] → slot (`u32`).
    pub const MAGLEV: &str = "CORTEN_MAGLEV";
    /// [`crate::TerminatingKey`] → `u8` (always 1).
    pub const TERMINATING: &str = "CORTEN_TERMINATING";
    /// [`crate::RevNatKey`] → [`crate::RevNatValue`], an LRU map the programs write.
    pub const SOCK_REV_NAT: &str = "CORTEN_SOCK_REV_NAT";
    /// [`crate::AffinityKey`] → [`crate::AffinityValue`], an LRU map the programs write.
    pub const AFFINITY: &str = "CORTEN_AFFINITY";
    /// [`crate::NatFlowKey`] → [`crate::NatFlowValue`], an LRU map the tc programs write.
    pub const NAT_FLOWS: &str = "CORTEN_NAT_FLOWS";
    /// [`crate::nat_stat`] index (`u32`) → `u64` per CPU, counters the tc programs write.
    pub const NAT_STATS: &str = "CORTEN_NAT_STATS";
    /// Every map, in the order the agent opens them.
    pub const ALL: [&str; 9] = [
        FRONTENDS,
        SERVICES,
        BACKENDS,
        MAGLEV,
        TERMINATING,
        SOCK_REV_NAT,
        AFFINITY,
        NAT_FLOWS,
        NAT_STATS,
    ];
}

/// Names of the programs in the object file.
pub mod programs {
    /// `cgroup/connect4`: rewrites the destination of `connect()` from a service to a backend.
    pub const CONNECT4: &str = "corten_connect4";
    /// `cgroup/sendmsg4`: the same for each datagram an unconnected UDP socket sends.
    pub const SENDMSG4: &str = "corten_sendmsg4";
    /// `cgroup/recvmsg4`: a datagram from a backend shows the service as its source.
    pub const RECVMSG4: &str = "corten_recvmsg4";
    /// `cgroup/getpeername4`: a connected socket shows the service as its peer.
    pub const GETPEERNAME4: &str = "corten_getpeername4";
    /// `cgroup/bind4`: a process of the node's own network namespace may not bind a port
    /// that a NodePort Service answers on (kube-proxy's port holding).
    pub const BIND4: &str = "corten_bind4";
    /// Every socket program, in the order the agent attaches them.
    pub const ALL: [&str; 5] = [CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4, BIND4];
    /// The global of [`BIND4`] that the agent sets at load: the network namespace cookie of
    /// the node's own namespace (0: no bind protection).
    pub const NODE_NETNS_COOKIE: &str = "CORTEN_NODE_NETNS_COOKIE";
    /// tc ingress on an external interface: DNAT (and SNAT) of new flows from outside to a
    /// service, the flows' later packets, and un-SNAT of replies from remote backends.
    pub const TC_INGRESS: &str = "corten_tc_ingress";
    /// tc egress on an external interface: replies of local backends leave with the service
    /// address as their source.
    pub const TC_EGRESS: &str = "corten_tc_egress";
}

/// Default capacity of the frontend map.
pub const DEFAULT_MAX_FRONTENDS: u32 = 65_536;
/// Default capacity of the service map (also the highest service id).
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
/// Default capacity of the backend map.
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
/// Default capacity of the Maglev map: one table of the default size (16381), enough while
/// no table is written (random selection). The map is not preallocated: entries cost memory
/// (about 70 bytes each in the kernel) once written, one table per Service port reachable from
/// outside while Maglev is on; the agent sizes it for [`DEFAULT_MAGLEV_TABLES`] tables then.
pub const DEFAULT_MAX_MAGLEV_ENTRIES: u32 = 16_381;
/// How many Maglev tables the Maglev map holds by default when Maglev is on.
pub const DEFAULT_MAGLEV_TABLES: u32 = 16;
/// `BPF_F_NO_PREALLOC`: the Maglev map allocates entries as they are written.
pub const MAGLEV_MAP_FLAGS: u32 = 1;
/// Default capacity of the terminating-backend map.
pub const DEFAULT_MAX_TERMINATING: u32 = 65_536;
/// Default capacity of the socket reverse-NAT map (LRU: old entries make room).
pub const DEFAULT_MAX_SOCK_REV_NAT: u32 = 65_536;
/// Default capacity of the session affinity map (LRU: the least recently used client of a
/// full map loses its affinity first).
pub const DEFAULT_MAX_AFFINITY: u32 = 65_536;

/// Default capacity of the tc programs' flow map (LRU; each flow takes two entries).
pub const DEFAULT_MAX_NAT_FLOWS: u32 = 65_536;
/// First port of the range the tc programs SNAT to (above the kernel's default ephemeral
/// range `32768..=60999`, so the node's own sockets never collide with it).
pub const SNAT_PORT_FIRST: u16 = 61_000;
/// Number of ports in the SNAT range (`61000..=65535`).
pub const SNAT_PORT_COUNT: u16 = 4_536;

/// A service frontend: IPv4 address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// IPv4 address, network byte order (the four octets as they sit in memory); zero for a
    /// NodePort on any of the node's addresses.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// [`protocol::TCP`] or [`protocol::UDP`].
    pub protocol: u8,
    /// Always zero.
    pub pad: u8,
}

impl FrontendKey {
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

/// Which services a frontend leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrontendValue {
    /// Service id for connections made on this node (socket programs).
    pub from_node: u32,
    /// Service id for connections arriving from outside the node (tc programs).
    pub from_outside: u32,
    /// One of [`frontend_kind`].
    pub kind: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// What the datapath needs to know about one service (a backend set), keyed by its id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Number of backend slots `0..backend_count`; zero means: act on `when_empty`.
    pub backend_count: u32,
    /// ClientIP session affinity timeout in seconds; zero means no affinity.
    pub affinity_timeout_seconds: u32,
    /// Entries of the service's Maglev table (a prime): a new flow from outside takes the
    /// slot at position `maglev_flow_hash(flow) % maglev_table_size`. Zero: no table, a
    /// random slot. Only the tc programs read it; the socket programs always pick at random.
    pub maglev_table_size: u32,
    /// One of [`when_empty`].
    pub when_empty: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// One backend slot of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// The owning service's id.
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

/// One position of one service's Maglev table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    /// The service's id.
    pub service_id: u32,
    /// Table position.
    pub position: u32,
}

/// A terminating backend of one service: no new connections, existing flows kept.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TerminatingKey {
    /// The service's id.
    pub service_id: u32,
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

/// A socket (by its cookie) and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

/// The service address a backend stands for on one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// Frontend IPv4 address, network byte order.
    pub addr: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

/// One client of one service with ClientIP session affinity.
///
/// The socket programs run before the kernel has picked a source address, so their client is
/// its network namespace (`bpf_get_netns_cookie`), as in Cilium's socket-LB: a pod (one
/// namespace, one address) is one client, and every process of the node's own namespace is
/// one client, as the node's address would be to kube-proxy. The tc programs see packets from
/// outside, and their client is the source address, as for kube-proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_netns_cookie` of the connecting socket, or an IPv4 source address in network
    /// byte order; [`AffinityKey::client_kind`] says which.
    pub client: u64,
    /// The service's id.
    pub service_id: u32,
    /// One of [`affinity_client`].
    pub client_kind: u32,
}

/// The backend a client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` of the client's last new connection to the service.
    pub last_used_ns: u64,
    /// The backend. The entry counts only while one of the service's slots holds exactly
    /// this backend; otherwise it is ignored (the backend is gone or terminating).
    pub backend: Backend,
    /// The slot the backend had when it was last used (looked at first).
    pub slot: u32,
    /// Always zero.
    pub pad: u32,
}

/// A packet's addresses as the tc programs see them at the point they look it up: source and
/// destination IPv4 address and port, and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatFlowKey {
    /// Source IPv4 address, network byte order.
    pub src_addr: u32,
    /// Destination IPv4 address, network byte order.
    pub dst_addr: u32,
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// [`protocol::TCP`] or [`protocol::UDP`].
    pub protocol: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// How a packet of a tracked flow is rewritten: the addresses it leaves with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatFlowValue {
    /// New source IPv4 address, network byte order.
    pub src_addr: u32,
    /// New destination IPv4 address, network byte order.
    pub dst_addr: u32,
    /// New source port, network byte order.
    pub src_port: u16,
    /// New destination port, network byte order.
    pub dst_port: u16,
    /// One of [`nat_direction`].
    pub direction: u8,
    /// Non-zero when the flow's source was rewritten to the node (a remote backend).
    pub snat: u8,
    /// Always zero.
    pub pad: [u8; 2],
}

/// The position-independent hash of a flow that picks its entry in a Maglev table: the
/// backend of a new flow from outside is the slot at `maglev_flow_hash(flow) % size`.
///
/// It hashes the flow's addresses, ports and protocol as numbers (host order), so the same
/// flow gets the same value on every node, after every restart and on every architecture:
/// a flow that moves to another node (ECMP in front of several nodes, a node that fails) is
/// sent to the same backend there. MurmurHash3's 32-bit mixing over four words (source
/// address, destination address, both ports, protocol) with a fixed seed.
#[inline(always)]
pub fn maglev_flow_hash(flow: &NatFlowKey) -> u32 {
    const SEED: u32 = 0x636f_7274; // "cort"
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let ports =
        (u32::from(u16::from_be(flow.src_port)) << 16) | u32::from(u16::from_be(flow.dst_port));
    let words = [
        u32::from_be(flow.src_addr),
        u32::from_be(flow.dst_addr),
        ports,
        u32::from(flow.protocol),
    ];
    let mut hash = SEED;
    let mut i = 0;
    while i < words.len() {
        let k = words[i].wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        hash ^= k;
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
        i += 1;
    }
    hash ^= 16; // the input's length in bytes
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers, and has explicit
    // padding fields, so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::FrontendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FrontendValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MaglevKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TerminatingKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RevNatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RevNatValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatFlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatFlowValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FrontendKey>(), 8);
        assert_eq!(size_of::<FrontendValue>(), 12);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<MaglevKey>(), 8);
        assert_eq!(size_of::<TerminatingKey>(), 12);
        assert_eq!(size_of::<RevNatKey>(), 16);
        assert_eq!(size_of::<RevNatValue>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 24);
        assert_eq!(size_of::<NatFlowKey>(), 16);
        assert_eq!(size_of::<NatFlowValue>(), 16);
        assert_eq!(nat_stat::NAMES.len(), nat_stat::COUNT as usize);
        assert_eq!(
            u32::from(SNAT_PORT_FIRST) + u32::from(SNAT_PORT_COUNT) - 1,
            u32::from(u16::MAX)
        );
    }

    fn flow(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> NatFlowKey {
        NatFlowKey {
            src_addr: u32::from_ne_bytes(src),
            dst_addr: u32::from_ne_bytes(dst),
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
            protocol: protocol::TCP,
            pad: [0; 3],
        }
    }

    #[test]
    fn flow_hash_is_pinned() {
        // Every node and every agent version must place a flow at the same position: a change
        // of these values breaks Maglev's promise for flows that move between nodes.
        // The value agrees with a reference MurmurHash3 (x86_32) of the four words as
        // little-endian bytes with the same seed.
        let a = flow([172, 30, 0, 250], 40000, [203, 0, 113, 20], 80);
        assert_eq!(maglev_flow_hash(&a), 0xbfa7_47e8);
        let mut udp = a;
        udp.protocol = protocol::UDP;
        assert_ne!(maglev_flow_hash(&a), maglev_flow_hash(&udp));
    }

    #[test]
    fn flow_hash_spreads_source_ports_over_a_table() {
        // 3000 source ports of one client over a 251-entry table: every position is hit, and
        // no position gets more than three times its share.
        let size = 251u32;
        let mut hits = [0u32; 251];
        for port in 30000..33000u16 {
            let key = flow([172, 30, 0, 250], port, [172, 30, 0, 10], 30080);
            hits[(maglev_flow_hash(&key) % size) as usize] += 1;
        }
        let share = 3000 / size;
        assert!(hits.iter().all(|&h| h > 0 && h <= 3 * share), "{hits:?}");
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        let key = FrontendKey::new([10, 43, 0, 1], 80, protocol::TCP);
        assert_eq!(key.addr.to_ne_bytes(), [10, 43, 0, 1]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        let backend = Backend::new([172, 30, 0, 10], 8080);
        assert_eq!(backend.port.to_ne_bytes(), 8080u16.to_be_bytes());
    }
}
