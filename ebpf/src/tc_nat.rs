//! NAT for traffic from outside the cluster: tc programs on the node's external interfaces
//! translate a packet to a NodePort, externalIP or LoadBalancer IP into a packet to a backend,
//! and the backend's replies back.
//!
//! - `corten_tc_ingress` (tc ingress): a packet of a tracked flow is rewritten as its
//!   [`NatFlowValue`] says. A new TCP/UDP packet to a non-ClusterIP frontend picks a backend
//!   of the frontend's `from_outside` service and is DNATed to it: the client's backend under
//!   ClientIP affinity (the client is its source address), else, when the agent wrote a
//!   Maglev table for the service, the table's entry at the flow's
//!   [`maglev_flow_hash`] (the same backend for the same flow on every node and after
//!   restarts; an unusable entry falls back to a random slot and counts
//!   [`nat_stat::MAGLEV_FALLBACK`]), else a random slot. Later packets of the flow follow its
//!   flow entry, so a table change never moves an existing flow. A backend reached on
//!   this node (a pod behind a host route to its veth, or the node itself) keeps the client's
//!   address and goes up the stack. A backend behind a gateway or on the external link is on
//!   another node: the source becomes this node's address toward the backend and a port of
//!   [`SNAT_PORT_FIRST`].. (so the reply comes back here), and the packet is sent out with
//!   `bpf_redirect_neigh` (the kernel would drop it as a martian: its source is local).
//!   Replies of SNATed flows arrive here too and are rewritten back to frontend → client and
//!   redirected toward the client.
//! - `corten_tc_egress` (tc egress): a reply of a local backend toward the client leaves
//!   with the frontend as its source.
//!
//! Every new flow stores two entries in the flow map (the forward and the reply direction),
//! so the flow keeps its backend and its SNAT port. The flow map is an LRU map: a full map
//! evicts old flows; such an evicted TCP flow shows up as [`nat_stat::FLOW_MISSING`] and a
//! failed insert drops the packet and counts [`nat_stat::FLOW_INSERT_FAILED`], so nothing is
//! lost silently. Entries are not removed when a flow closes; they age out of the LRU.
//!
//! Only IPv4 without options and unfragmented packets are translated; anything else passes
//! untouched. A service without any endpoint refuses at once, as kube-proxy's REJECT
//! (`icmp-port-unreachable`) does: a TCP SYN is turned into a RST+ACK, a UDP datagram into
//! an ICMP port unreachable that quotes it, each sent back out of the interface it came in
//! on (counted as [`nat_stat::REJECTED`]). Every other packet to a service without a usable
//! backend for outside clients (a SYN carrying data, a `Local` policy without local
//! endpoints, which kube-proxy drops too) is dropped and counts [`nat_stat::NO_BACKEND`].
//!
//! Reads the frontend, service and backend maps that the agent writes; writes only flow state
//! (the flow map, the affinity map) and the counters. It decides nothing beyond the backend
//! and the SNAT port.
use aya_ebpf::{
    helpers::{
        bpf_get_prandom_u32,
        generated::{
            bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
            bpf_skb_store_bytes,
        },
    },
    macros::classifier,
    programs::TcContext,
};
use corten_ebpf_common::{
    affinity_client, frontend_kind, maglev_flow_hash, nat_direction, nat_stat, protocol,
    when_empty, Backend, FrontendKey, NatFlowKey, NatFlowValue, SNAT_PORT_COUNT, SNAT_PORT_FIRST,
};

use crate::{
    maps::{FRONTENDS, NAT_FLOWS, NAT_STATS, SERVICES},
    select,
};

/// tc verdict: let the packet continue.
const TC_ACT_OK: i32 = 0;
/// tc verdict: drop the packet.
const TC_ACT_SHOT: i32 = 2;
/// Ethernet header length; the tc programs see packets from their Ethernet header on.
const ETH_HLEN: usize = 14;
/// `ETH_P_IP`, host order.
const ETH_P_IP: u16 = 0x0800;
/// Offsets of the IPv4 header's fields (a header without options).
const IP_VERSION_IHL: usize = ETH_HLEN;
const IP_FRAG: usize = ETH_HLEN + 6;
const IP_PROTOCOL: usize = ETH_HLEN + 9;
const IP_CHECKSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
/// Start of the TCP or UDP header.
const L4: usize = ETH_HLEN + 20;
const L4_SRC_PORT: usize = L4;
const L4_DST_PORT: usize = L4 + 2;
const TCP_FLAGS: usize = L4 + 13;
const TCP_CHECKSUM: usize = L4 + 16;
const UDP_CHECKSUM: usize = L4 + 6;
const TCP_SEQ: usize = L4 + 4;
const TCP_ACK_SEQ: usize = L4 + 8;
const TCP_OFFSET_FLAGS: usize = L4 + 12;
const TCP_WINDOW: usize = L4 + 14;
const TCP_URGENT: usize = L4 + 18;
const TCP_HEADER_LEN: u16 = 20;
/// Longest TCP header (with options).
const TCP_MAX_HEADER_LEN: u16 = 60;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const IP_TOTAL_LENGTH: usize = ETH_HLEN + 2;
const IP_HEADER_LEN: u16 = 20;
/// UDP header length, also what an ICMP error quotes of the datagram beyond its IP header.
const UDP_HEADER_LEN: u16 = 8;
/// ICMP header length (type, code, checksum, four unused bytes).
const ICMP_HEADER_LEN: u16 = 8;
/// Protocol number of ICMP.
const IPPROTO_ICMP: u8 = 1;
/// ICMP destination unreachable, code port unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// TTL of the resets and ICMP errors the programs send.
const REPLY_TTL: u8 = 64;

/// `bpf_l4_csum_replace` flags: the changed field is part of the pseudo header.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `bpf_l4_csum_replace` flags: leave a zero (absent) UDP checksum alone.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// `bpf_map_update_elem` flag: only insert a new key.
const BPF_NOEXIST: u64 = 1;
/// `bpf_fib_lookup` flags: no neighbour lookup; fill in the source address.
const BPF_FIB_LOOKUP_SKIP_NEIGH: u32 = 1 << 2;
const BPF_FIB_LOOKUP_SRC: u32 = 1 << 4;
/// `bpf_fib_lookup` results.
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NOT_FWDED: i64 = 4;
const AF_INET: u8 = 2;
/// How many SNAT ports a new flow tries before it gives up.
const SNAT_PORT_TRIES: u16 = 8;

/// The kernel's `struct bpf_fib_lookup` (64 bytes), IPv4 fields only; the IPv6 halves of the
/// address unions are padding here.
#[repr(C)]
struct FibLookup {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    ifindex: u32,
    tos: u32,
    ipv4_src: u32,
    ipv6_src_rest: [u32; 3],
    ipv4_dst: u32,
    ipv6_dst_rest: [u32; 3],
    vlan: u32,
    macs: [u8; 12],
}

/// The fields of a TCP or UDP packet the programs look at.
#[derive(Clone, Copy)]
struct Packet {
    key: NatFlowKey,
    /// Offset of the L4 checksum.
    checksum: usize,
    /// TCP flags (zero for UDP).
    tcp_flags: u8,
}

#[classifier]
pub fn corten_tc_ingress(ctx: TcContext) -> i32 {
    let Some(packet) = parse(&ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: the value is copied out before any other map operation.
    if let Some(flow) = (unsafe { NAT_FLOWS.get(&packet.key) }).copied() {
        return forward_tracked(&ctx, &packet, &flow);
    }
    new_flow(&ctx, &packet)
}

#[classifier]
pub fn corten_tc_egress(ctx: TcContext) -> i32 {
    let Some(packet) = parse(&ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: the value is copied out before any other map operation.
    let Some(flow) = (unsafe { NAT_FLOWS.get(&packet.key) }).copied() else {
        return TC_ACT_OK;
    };
    // Only a local backend's reply is rewritten here; SNATed flows are handled at ingress.
    if flow.direction != nat_direction::REPLY || flow.snat != 0 {
        return TC_ACT_OK;
    }
    if rewrite(&ctx, &packet, &flow).is_err() {
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// A packet of a flow already tracked: rewrite it; a SNATed flow's packets (either way) are
/// sent out toward their new destination.
#[inline(always)]
fn forward_tracked(ctx: &TcContext, packet: &Packet, flow: &NatFlowValue) -> i32 {
    if flow.direction == nat_direction::REPLY && flow.snat == 0 {
        // A local backend's reply entry: used on egress only.
        return TC_ACT_OK;
    }
    if rewrite(ctx, packet, flow).is_err() {
        return TC_ACT_SHOT;
    }
    if flow.snat == 0 {
        return TC_ACT_OK;
    }
    redirect_to(ctx, flow.dst_addr)
}

/// A packet without a flow entry: translate it if it is addressed to a service from outside.
#[inline(always)]
fn new_flow(ctx: &TcContext, packet: &Packet) -> i32 {
    let key = &packet.key;
    let frontend = FrontendKey {
        addr: key.dst_addr,
        port: key.dst_port,
        protocol: key.protocol,
        pad: 0,
    };
    // SAFETY: the value is copied out before any other map operation.
    let Some(target) = (unsafe { FRONTENDS.get(&frontend) }).copied() else {
        return TC_ACT_OK;
    };
    if target.kind == frontend_kind::CLUSTER_IP {
        return TC_ACT_OK;
    }
    // A reply packet (TCP without SYN or with SYN+ACK) of a flow whose entry is gone.
    if key.protocol == protocol::TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        count(nat_stat::FLOW_MISSING);
    }
    // SAFETY: the value is copied out before any other map operation.
    let Some(service) = (unsafe { SERVICES.get(&target.from_outside) }).copied() else {
        count(nat_stat::NO_BACKEND);
        return TC_ACT_SHOT;
    };
    if service.backend_count == 0 {
        let opening = packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if service.when_empty == when_empty::REJECT {
            if key.protocol == protocol::TCP && opening {
                return reject(ctx, write_reset(ctx, packet));
            }
            if key.protocol == protocol::UDP {
                return reject(ctx, write_port_unreachable(ctx, packet));
            }
        }
        count(nat_stat::NO_BACKEND);
        return TC_ACT_SHOT;
    }
    let Some(pick) = select::pick(
        target.from_outside,
        &service,
        u64::from(key.src_addr),
        affinity_client::IPV4_SOURCE,
        select::Strategy::Maglev {
            flow_hash: maglev_flow_hash(key),
        },
    ) else {
        count(nat_stat::NO_BACKEND);
        return TC_ACT_SHOT;
    };
    if pick.maglev_fallback {
        count(nat_stat::MAGLEV_FALLBACK);
    }
    let backend = pick.backend;
    let Some(route) = route_to(ctx, backend.addr) else {
        count(nat_stat::NO_ROUTE);
        return TC_ACT_SHOT;
    };
    let forward = match route {
        Route::Local => store_local_flow(key, &backend),
        Route::Remote { source, .. } => store_snat_flow(key, &backend, source),
    };
    let Ok(forward) = forward else {
        return TC_ACT_SHOT;
    };
    count(nat_stat::FLOWS_CREATED);
    if rewrite(ctx, packet, &forward).is_err() {
        return TC_ACT_SHOT;
    }
    match route {
        Route::Local => TC_ACT_OK,
        // SAFETY: a helper call with a null parameter block, as the helper allows.
        Route::Remote { ifindex, .. } => unsafe {
            bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
    }
}

/// Refuses a connection: the packet, already rewritten into its answer (`written`: a
/// RST+ACK for a SYN, an ICMP port unreachable for a datagram), goes back out of the
/// interface it came in on, so the client's `connect()` or next receive fails at once with
/// `ECONNREFUSED`. A packet that could not be rewritten (a SYN that carries data, a
/// truncated one) is dropped instead (counted as [`nat_stat::NO_BACKEND`]).
#[inline(always)]
fn reject(ctx: &TcContext, written: Result<(), ()>) -> i32 {
    if written.is_err() {
        count(nat_stat::NO_BACKEND);
        return TC_ACT_SHOT;
    }
    count(nat_stat::REJECTED);
    // SAFETY: `skb` is the context the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call without pointer arguments.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Rewrites a SYN (IPv4 without options, see [`parse`]) into the RST+ACK that answers it:
/// addresses, ports and MAC addresses swapped, sequence 0, acknowledging the SYN, no options,
/// the packet cut after the TCP header. The TCP checksum is updated field by field, as for
/// NAT, so it stays right whether the kernel or the device completes it; the IPv4 header is
/// written whole with its checksum.
#[inline(always)]
fn write_reset(ctx: &TcContext, packet: &Packet) -> Result<(), ()> {
    let key = &packet.key;
    let total_length = u16::from_be(ctx.load::<u16>(IP_TOTAL_LENGTH).map_err(|_| ())?);
    let offset_flags: u16 = ctx.load(TCP_OFFSET_FLAGS).map_err(|_| ())?;
    let header_len = (u16::from_be(offset_flags) >> 12) * 4;
    let tcp_len = total_length.checked_sub(IP_HEADER_LEN).ok_or(())?;
    // Only a SYN without data (or a sane header) is answered.
    if !(TCP_HEADER_LEN..=TCP_MAX_HEADER_LEN).contains(&header_len) || tcp_len != header_len {
        return Err(());
    }
    if ctx.len() < (ETH_HLEN as u32) + u32::from(total_length) {
        return Err(());
    }
    // The options leave the packet: take them out of the checksum (at most 10 words).
    let mut offset = L4 + usize::from(TCP_HEADER_LEN);
    while offset < L4 + usize::from(TCP_MAX_HEADER_LEN) {
        if offset >= L4 + usize::from(header_len) {
            break;
        }
        let word: u32 = ctx.load(offset).map_err(|_| ())?;
        ctx.l4_csum_replace(packet.checksum, u64::from(word), 0, 4)
            .map_err(|_| ())?;
        offset += 4;
    }
    // The pseudo header's TCP length.
    ctx.l4_csum_replace(
        packet.checksum,
        u64::from(tcp_len.to_be()),
        u64::from(TCP_HEADER_LEN.to_be()),
        BPF_F_PSEUDO_HDR | 2,
    )
    .map_err(|_| ())?;
    let seq: u32 = ctx.load(TCP_SEQ).map_err(|_| ())?;
    let ack_seq: u32 = ctx.load(TCP_ACK_SEQ).map_err(|_| ())?;
    let window: u16 = ctx.load(TCP_WINDOW).map_err(|_| ())?;
    let urgent: u16 = ctx.load(TCP_URGENT).map_err(|_| ())?;
    let acknowledged = u32::from_be(seq).wrapping_add(1).to_be();
    let reset_flags = ((5u16 << 12) | u16::from(TCP_RST | TCP_ACK)).to_be();
    set_field(ctx, packet, TCP_SEQ, seq, 0u32, 4)?;
    set_field(ctx, packet, TCP_ACK_SEQ, ack_seq, acknowledged, 4)?;
    set_field(ctx, packet, TCP_OFFSET_FLAGS, offset_flags, reset_flags, 2)?;
    set_field(ctx, packet, TCP_WINDOW, window, 0u16, 2)?;
    set_field(ctx, packet, TCP_URGENT, urgent, 0u16, 2)?;
    // Swapped ports and addresses leave the checksum as it is.
    store(ctx, L4_SRC_PORT, &key.dst_port)?;
    store(ctx, L4_DST_PORT, &key.src_port)?;
    store(
        ctx,
        IP_VERSION_IHL,
        &reply_ip_header(
            key.dst_addr,
            key.src_addr,
            protocol::TCP,
            IP_HEADER_LEN + TCP_HEADER_LEN,
        ),
    )?;
    swap_macs(ctx)?;
    set_length(ctx, IP_HEADER_LEN + TCP_HEADER_LEN)
}

/// Rewrites a UDP datagram (IPv4 without options, see [`parse`]) into the ICMP port
/// unreachable that answers it, from the frontend's address: a new IPv4 header, the ICMP
/// header, and the datagram's IPv4 header and first 8 bytes quoted (RFC 792), MAC addresses
/// swapped, the packet cut or grown to that. The ICMP checksum is complete, so a checksum
/// still to be filled in for the datagram's UDP header (whose range the ICMP message now
/// covers exactly) comes out as the zero already in the unused field: the answer stays right
/// whoever completes it.
#[inline(always)]
fn write_port_unreachable(ctx: &TcContext, packet: &Packet) -> Result<(), ()> {
    let key = &packet.key;
    let quoted: [u8; (IP_HEADER_LEN + UDP_HEADER_LEN) as usize] =
        ctx.load(IP_VERSION_IHL).map_err(|_| ())?;
    let length = IP_HEADER_LEN + ICMP_HEADER_LEN + IP_HEADER_LEN + UDP_HEADER_LEN;
    set_length(ctx, length)?;
    let mut icmp = [0u8; (ICMP_HEADER_LEN + IP_HEADER_LEN + UDP_HEADER_LEN) as usize];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    let mut i = 0;
    while i < quoted.len() {
        icmp[usize::from(ICMP_HEADER_LEN) + i] = quoted[i];
        i += 1;
    }
    let checksum = internet_checksum(&icmp).to_be_bytes();
    icmp[2] = checksum[0];
    icmp[3] = checksum[1];
    store(
        ctx,
        IP_VERSION_IHL,
        &reply_ip_header(key.dst_addr, key.src_addr, IPPROTO_ICMP, length),
    )?;
    store(ctx, L4, &icmp)?;
    swap_macs(ctx)
}

/// Swaps the Ethernet destination and source addresses, for a packet sent back.
#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let destination: [u8; 6] = ctx.load(0).map_err(|_| ())?;
    let source: [u8; 6] = ctx.load(6).map_err(|_| ())?;
    store(ctx, 0, &source)?;
    store(ctx, 6, &destination)
}

/// Cuts or grows the packet to `ip_length` bytes after the Ethernet header.
#[inline(always)]
fn set_length(ctx: &TcContext, ip_length: u16) -> Result<(), ()> {
    let length = (ETH_HLEN as u32) + u32::from(ip_length);
    // SAFETY: `skb` is the context the kernel passed to this program.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb.cast(), length, 0) } != 0 {
        return Err(());
    }
    Ok(())
}

/// The Internet checksum (RFC 1071) of `bytes` (an even number of them), in host order.
#[inline(always)]
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The IPv4 header (no options) of a packet the programs send from `src` to `dst`:
/// `total` bytes of IP `protocol`, with its checksum.
#[inline(always)]
fn reply_ip_header(src: u32, dst: u32, protocol: u8, total: u16) -> [u8; 20] {
    let mut header = [0u8; 20];
    header[0] = 0x45;
    let total = total.to_be_bytes();
    header[2] = total[0];
    header[3] = total[1];
    header[6] = 0x40; // don't fragment
    header[8] = REPLY_TTL;
    header[9] = protocol;
    let src = src.to_ne_bytes();
    let dst = dst.to_ne_bytes();
    let mut i = 0;
    while i < 4 {
        header[12 + i] = src[i];
        header[16 + i] = dst[i];
        i += 1;
    }
    let checksum = internet_checksum(&header).to_be_bytes();
    header[10] = checksum[0];
    header[11] = checksum[1];
    header
}

/// A flow to a backend on this node: the client's address is kept; the reply (seen on
/// egress) gets the frontend back as its source.
#[inline(always)]
fn store_local_flow(key: &NatFlowKey, backend: &Backend) -> Result<NatFlowValue, ()> {
    let reply_key = backend_key(key, backend, key.src_addr, key.src_port);
    insert_flow(&reply_key, &reply_value(key, 0), 0)?;
    let forward = forward_value(key.src_addr, key.src_port, backend, 0);
    insert_flow(key, &forward, 0)?;
    Ok(forward)
}

/// A flow to a backend on another node: the source becomes `source` and a free SNAT port;
/// the reply to that address and port gets frontend → client back.
#[inline(always)]
fn store_snat_flow(key: &NatFlowKey, backend: &Backend, source: u32) -> Result<NatFlowValue, ()> {
    let reply = reply_value(key, 1);
    // SAFETY: a plain helper call without pointer arguments.
    let start = (unsafe { bpf_get_prandom_u32() } % u32::from(SNAT_PORT_COUNT)) as u16;
    let mut attempt: u16 = 0;
    while attempt < SNAT_PORT_TRIES {
        let offset = (start + attempt) % SNAT_PORT_COUNT;
        let port = (SNAT_PORT_FIRST + offset).to_be();
        let reply_key = backend_key(key, backend, source, port);
        // The reply entry claims the port: only a key nobody holds is taken.
        if NAT_FLOWS.insert(&reply_key, &reply, BPF_NOEXIST).is_ok() {
            let forward = forward_value(source, port, backend, 1);
            insert_flow(key, &forward, 0)?;
            return Ok(forward);
        }
        attempt += 1;
    }
    count(nat_stat::SNAT_PORTS_EXHAUSTED);
    Err(())
}

/// The key of a reply: from the backend to `addr:port` (the client, or the node's SNAT
/// address), in the flow's protocol.
#[inline(always)]
fn backend_key(key: &NatFlowKey, backend: &Backend, addr: u32, port: u16) -> NatFlowKey {
    NatFlowKey {
        src_addr: backend.addr,
        dst_addr: addr,
        src_port: backend.port,
        dst_port: port,
        protocol: key.protocol,
        pad: [0; 3],
    }
}

/// How a reply is rewritten: from the frontend the client addressed, to the client.
#[inline(always)]
fn reply_value(key: &NatFlowKey, snat: u8) -> NatFlowValue {
    NatFlowValue {
        src_addr: key.dst_addr,
        dst_addr: key.src_addr,
        src_port: key.dst_port,
        dst_port: key.src_port,
        direction: nat_direction::REPLY,
        snat,
        pad: [0; 2],
    }
}

/// How the client's packets are rewritten: from `addr:port`, to the backend.
#[inline(always)]
fn forward_value(addr: u32, port: u16, backend: &Backend, snat: u8) -> NatFlowValue {
    NatFlowValue {
        src_addr: addr,
        dst_addr: backend.addr,
        src_port: port,
        dst_port: backend.port,
        direction: nat_direction::FORWARD,
        snat,
        pad: [0; 2],
    }
}

#[inline(always)]
fn insert_flow(key: &NatFlowKey, value: &NatFlowValue, flags: u64) -> Result<(), ()> {
    NAT_FLOWS.insert(key, value, flags).map_err(|_| {
        count(nat_stat::FLOW_INSERT_FAILED);
    })
}

/// Where a backend is, as the node's routes say.
#[derive(Clone, Copy)]
enum Route {
    /// On this node: the node itself, or a pod behind a directly connected route on another
    /// interface than the one the packet came in on (its veth).
    Local,
    /// Behind a gateway (another node's pod CIDR) or on the external link itself (another
    /// node's address): replies would not come back here without SNAT.
    Remote {
        /// This node's source address toward the backend.
        source: u32,
        /// The interface toward the backend.
        ifindex: u32,
    },
}

/// The node's route to `addr`, looked up as for a packet that came in on this interface.
#[inline(always)]
fn route_to(ctx: &TcContext, addr: u32) -> Option<Route> {
    // SAFETY: `skb` is the context the kernel passed to this program.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut params = fib_params(in_ifindex, addr);
    let result = fib_lookup(
        ctx,
        &mut params,
        BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_SRC,
    );
    if result == BPF_FIB_LKUP_RET_NOT_FWDED {
        return Some(Route::Local);
    }
    if result != BPF_FIB_LKUP_RET_SUCCESS {
        return None;
    }
    let via_gateway = params.ipv4_dst != addr;
    if !via_gateway && params.ifindex != in_ifindex {
        return Some(Route::Local);
    }
    Some(Route::Remote {
        source: params.ipv4_src,
        ifindex: params.ifindex,
    })
}

/// Sends a rewritten packet out toward `addr` (the node's route and neighbour), or drops it
/// when there is no route.
#[inline(always)]
fn redirect_to(ctx: &TcContext, addr: u32) -> i32 {
    // SAFETY: `skb` is the context the kernel passed to this program.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut params = fib_params(in_ifindex, addr);
    if fib_lookup(ctx, &mut params, BPF_FIB_LOOKUP_SKIP_NEIGH) != BPF_FIB_LKUP_RET_SUCCESS {
        count(nat_stat::NO_ROUTE);
        return TC_ACT_SHOT;
    }
    // SAFETY: a helper call with a null parameter block, as the helper allows.
    unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

#[inline(always)]
fn fib_params(ifindex: u32, dst: u32) -> FibLookup {
    FibLookup {
        family: AF_INET,
        l4_protocol: 0,
        sport: 0,
        dport: 0,
        tot_len: 0,
        ifindex,
        tos: 0,
        ipv4_src: 0,
        ipv6_src_rest: [0; 3],
        ipv4_dst: dst,
        ipv6_dst_rest: [0; 3],
        vlan: 0,
        macs: [0; 12],
    }
}

#[inline(always)]
fn fib_lookup(ctx: &TcContext, params: &mut FibLookup, flags: u32) -> i64 {
    // SAFETY: `params` is a live, writable block of the size passed, laid out as the kernel's
    // `struct bpf_fib_lookup`; the context is the one the kernel passed.
    unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            (params as *mut FibLookup).cast(),
            core::mem::size_of::<FibLookup>() as i32,
            flags,
        )
    }
}

/// The addresses of an IPv4 TCP or UDP packet without options and not fragmented.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let ether_type: u16 = ctx.load(12).ok()?;
    if u16::from_be(ether_type) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(IP_VERSION_IHL).ok()?;
    if version_ihl != 0x45 {
        return None;
    }
    let frag: u16 = ctx.load(IP_FRAG).ok()?;
    // More-fragments flag or a fragment offset.
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let ip_protocol: u8 = ctx.load(IP_PROTOCOL).ok()?;
    let (checksum, tcp_flags) = match ip_protocol {
        protocol::TCP => (TCP_CHECKSUM, ctx.load::<u8>(TCP_FLAGS).ok()?),
        protocol::UDP => (UDP_CHECKSUM, 0),
        _ => return None,
    };
    Some(Packet {
        key: NatFlowKey {
            src_addr: ctx.load(IP_SRC).ok()?,
            dst_addr: ctx.load(IP_DST).ok()?,
            src_port: ctx.load(L4_SRC_PORT).ok()?,
            dst_port: ctx.load(L4_DST_PORT).ok()?,
            protocol: ip_protocol,
            pad: [0; 3],
        },
        checksum,
        tcp_flags,
    })
}

/// Writes the flow's addresses and ports into the packet, fixing the IPv4 and L4 checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, packet: &Packet, flow: &NatFlowValue) -> Result<(), ()> {
    let key = &packet.key;
    // A zero UDP checksum means "none" and stays zero.
    let mangled_0 = if key.protocol == protocol::UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    // Addresses are in the IPv4 header's checksum and in the L4 pseudo header; ports only in
    // the L4 checksum. The low bits of the flags are the field's size.
    let address = BPF_F_PSEUDO_HDR | mangled_0 | 4;
    let port = mangled_0 | 2;
    for (offset, from, to) in [
        (IP_SRC, key.src_addr, flow.src_addr),
        (IP_DST, key.dst_addr, flow.dst_addr),
    ] {
        if from != to {
            ctx.l3_csum_replace(IP_CHECKSUM, u64::from(from), u64::from(to), 4)
                .map_err(|_| ())?;
            set_field(ctx, packet, offset, from, to, address)?;
        }
    }
    for (offset, from, to) in [
        (L4_SRC_PORT, key.src_port, flow.src_port),
        (L4_DST_PORT, key.dst_port, flow.dst_port),
    ] {
        if from != to {
            set_field(ctx, packet, offset, from, to, port)?;
        }
    }
    Ok(())
}

/// Stores `to` at `offset` (where `from` was) and fixes the L4 checksum for it.
#[inline(always)]
fn set_field<T: Into<u64> + Copy>(
    ctx: &TcContext,
    packet: &Packet,
    offset: usize,
    from: T,
    to: T,
    flags: u64,
) -> Result<(), ()> {
    ctx.l4_csum_replace(packet.checksum, from.into(), to.into(), flags)
        .map_err(|_| ())?;
    store(ctx, offset, &to)
}

#[inline(always)]
fn store<T>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), ()> {
    // SAFETY: `skb_store_bytes` only reads `size_of::<T>()` bytes from `value`.
    let ret = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            (value as *const T).cast(),
            core::mem::size_of::<T>() as u32,
            0,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// Adds one to a counter of this CPU.
#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = NAT_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot of the map, used by this CPU alone while the program runs.
        unsafe { *counter += 1 };
    }
}
