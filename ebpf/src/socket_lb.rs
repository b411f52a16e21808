//! Socket-level load balancing: a connection to a service address becomes a connection to
//! one of its backends when the socket connects (`cgroup/connect4`) or, for unconnected UDP,
//! when each datagram is sent (`cgroup/sendmsg4`), so no packet of the flow needs NAT. The
//! reverse direction only fixes what the application sees: the source of a received datagram
//! (`cgroup/recvmsg4`) and the peer of a connected socket (`cgroup/getpeername4`) read as the
//! service address again.
//!
//! Reads the frontend, service and backend maps that the agent writes; the only maps it
//! writes are flow state in LRU maps: the socket reverse-NAT map and the session affinity map.
//! It decides nothing beyond picking a slot: which services exist, their backends, their
//! affinity timeout and what an empty service does all come from the maps.
//!
//! Removed and terminating backends: a connection is translated once, when it is made, so a
//! backend that leaves the service's slots gets no new connections while the connections
//! already made to it keep going straight to it until they close.
//!
//! ClientIP session affinity: the client is the connecting socket's network namespace (see
//! [`AffinityKey`]); its entry is used while it is younger than the service's timeout (counted
//! from the client's last new connection, as kube-proxy's `recent` match does) and its slot
//! still holds its backend. A backend that moved to another slot because another one left is
//! found again by searching the first [`AFFINITY_SCAN_SLOTS`] slots; beyond them (services
//! with more backends) its clients lose their affinity once and are pinned to a new pick.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
    EbpfContext,
};
use corten_ebpf_common::{
    protocol, when_empty, AffinityKey, AffinityValue, Backend, BackendKey, FrontendKey,
    FrontendValue, MaglevKey, RevNatKey, RevNatValue, ServiceValue, TerminatingKey,
    DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FRONTENDS, DEFAULT_MAX_MAGLEV_ENTRIES,
    DEFAULT_MAX_SERVICES, DEFAULT_MAX_SOCK_REV_NAT, DEFAULT_MAX_TERMINATING,
};

/// Let the call proceed (possibly with a rewritten address).
const ALLOW: i32 = 1;
/// Fail the call with the error set by `bpf_set_retval` (`EPERM` if none was set).
const REJECT: i32 = 0;
/// `ECONNREFUSED`: a service without endpoints refuses at once.
const ECONNREFUSED: i32 = 111;
/// `EHOSTUNREACH`: a `Local` service without local endpoints drops.
const EHOSTUNREACH: i32 = 113;

#[map(name = "CORTEN_FRONTENDS")]
static FRONTENDS: HashMap<FrontendKey, FrontendValue> =
    HashMap::with_max_entries(DEFAULT_MAX_FRONTENDS, 0);

#[map(name = "CORTEN_SERVICES")]
static SERVICES: HashMap<u32, ServiceValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "CORTEN_BACKENDS")]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Written by the agent for the tc programs to come; the socket programs do not read it.
#[map(name = "CORTEN_MAGLEV")]
static MAGLEV: HashMap<MaglevKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_MAGLEV_ENTRIES, 0);

/// Written by the agent for the tc programs to come; the socket programs do not read it.
#[map(name = "CORTEN_TERMINATING")]
static TERMINATING: HashMap<TerminatingKey, u8> =
    HashMap::with_max_entries(DEFAULT_MAX_TERMINATING, 0);

#[map(name = "CORTEN_SOCK_REV_NAT")]
static SOCK_REV_NAT: LruHashMap<RevNatKey, RevNatValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOCK_REV_NAT, 0);

#[map(name = "CORTEN_AFFINITY")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_AFFINITY, 0);

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// How many slots an affinity lookup searches for a backend that is no longer in the slot it
/// was chosen from (the last slot moves into the hole another backend leaves).
const AFFINITY_SCAN_SLOTS: u32 = 64;

/// What became of a socket address.
enum Translation {
    /// Not a service address: leave it alone.
    Untouched,
    /// Rewritten to a backend.
    Translated,
    /// A service that takes no new connections: fail with this errno.
    Refused(i32),
}

#[cgroup_sock_addr(connect4)]
pub fn corten_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn corten_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn corten_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    // recvmsg programs must return 1.
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn corten_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    // getpeername programs must return 1.
    ALLOW
}

/// connect4 and sendmsg4: translate, or refuse with the errno the service's `when_empty`
/// names.
#[inline(always)]
fn forward(ctx: &SockAddrContext) -> i32 {
    // SAFETY: `sock_addr` points at the kernel's `bpf_sock_addr` for this call; the verifier
    // checks every field access against that context type.
    let sa = unsafe { &mut *ctx.sock_addr };
    match translate(ctx, sa) {
        Translation::Untouched | Translation::Translated => ALLOW,
        Translation::Refused(errno) => {
            // SAFETY: a plain helper call without pointer arguments; allowed for connect4
            // and sendmsg4 (cgroup programs whose return value reaches the caller).
            unsafe { bpf_set_retval(-errno) };
            REJECT
        }
    }
}

#[inline(always)]
fn translate(ctx: &SockAddrContext, sa: &mut bpf_sock_addr) -> Translation {
    let protocol = sa.protocol as u8;
    if protocol != protocol::TCP && protocol != protocol::UDP {
        return Translation::Untouched;
    }
    let frontend = FrontendKey {
        addr: sa.user_ip4,
        // `user_port` holds the 16-bit network-order port in its low half.
        port: sa.user_port as u16,
        protocol,
        pad: 0,
    };
    // SAFETY: each value is copied out before any other map operation.
    let Some(target) = (unsafe { FRONTENDS.get(&frontend) }).copied() else {
        return Translation::Untouched;
    };
    // SAFETY: as above.
    let Some(service) = (unsafe { SERVICES.get(&target.from_node) }).copied() else {
        // A frontend whose service is not written: the agent writes services first, so this
        // is a torn state; refuse rather than connect to the service address.
        return Translation::Refused(ECONNREFUSED);
    };
    if service.backend_count == 0 {
        let errno = if service.when_empty == when_empty::DROP {
            EHOSTUNREACH
        } else {
            ECONNREFUSED
        };
        return Translation::Refused(errno);
    }
    let backend = if service.affinity_timeout_seconds == 0 {
        match pick_random(target.from_node, &service) {
            Some((_, backend)) => backend,
            None => return Translation::Refused(ECONNREFUSED),
        }
    } else {
        match pick_with_affinity(ctx, target.from_node, &service) {
            Some(backend) => backend,
            None => return Translation::Refused(ECONNREFUSED),
        }
    };
    // SAFETY: the context pointer is the one the kernel passed to this program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = RevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        pad: 0,
    };
    let rev_value = RevNatValue {
        addr: frontend.addr,
        port: frontend.port,
        pad: 0,
    };
    // A full LRU map evicts its oldest entry; the insert itself cannot fail for lack of room.
    // If it fails anyway, the connection still works and only shows the backend as its peer.
    let _ = SOCK_REV_NAT.insert(&rev_key, &rev_value, 0);
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    Translation::Translated
}

/// A uniformly random slot of a service with backends, and its backend.
#[inline(always)]
fn pick_random(service_id: u32, service: &ServiceValue) -> Option<(u32, Backend)> {
    // SAFETY: a plain helper call without pointer arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % service.backend_count;
    let key = BackendKey { service_id, slot };
    // SAFETY: the value is copied out before any other map operation.
    let backend = (unsafe { BACKENDS.get(&key) }).copied()?;
    Some((slot, backend))
}

/// ClientIP affinity: the client's backend while its entry is fresh and the backend still
/// holds its slot, else a random one; either way the entry is refreshed.
#[inline(always)]
fn pick_with_affinity(
    ctx: &SockAddrContext,
    service_id: u32,
    service: &ServiceValue,
) -> Option<Backend> {
    // SAFETY: the context pointer is the one the kernel passed to this program.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: a plain helper call without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = AffinityKey {
        netns_cookie,
        service_id,
        pad: 0,
    };
    let timeout_ns = u64::from(service.affinity_timeout_seconds) * NANOS_PER_SECOND;
    // SAFETY: the value is copied out before any other map operation.
    let remembered = (unsafe { AFFINITY.get(&key) })
        .copied()
        // Another CPU may have stored a later time than this one read: saturate.
        .filter(|entry| now.saturating_sub(entry.last_used_ns) <= timeout_ns)
        .and_then(|entry| find_backend(service_id, service, &entry));
    let (slot, backend) = match remembered {
        Some(found) => found,
        None => pick_random(service_id, service)?,
    };
    let value = AffinityValue {
        last_used_ns: now,
        backend,
        slot,
        pad: 0,
    };
    // A full LRU map evicts its least recently used entry; if the insert fails anyway the
    // connection still works and the client only loses its affinity.
    let _ = AFFINITY.insert(&key, &value, 0);
    Some(backend)
}

/// The slot that holds an affinity entry's backend now: its old slot, else (the backend moved
/// when another one left) the first [`AFFINITY_SCAN_SLOTS`] slots. None if the backend is no
/// longer among them (gone or terminating, or beyond the scan).
#[inline(always)]
fn find_backend(
    service_id: u32,
    service: &ServiceValue,
    entry: &AffinityValue,
) -> Option<(u32, Backend)> {
    let holds = |slot: u32| -> Option<Backend> {
        if slot >= service.backend_count {
            return None;
        }
        // SAFETY: the value is copied out before any other map operation.
        let current = (unsafe { BACKENDS.get(&BackendKey { service_id, slot }) }).copied()?;
        (current.addr == entry.backend.addr && current.port == entry.backend.port)
            .then_some(current)
    };
    if let Some(backend) = holds(entry.slot) {
        return Some((entry.slot, backend));
    }
    let mut slot = 0;
    while slot < AFFINITY_SCAN_SLOTS && slot < service.backend_count {
        if let Some(backend) = holds(slot) {
            return Some((slot, backend));
        }
        slot += 1;
    }
    None
}

/// recvmsg4 and getpeername4: a backend this socket was sent to reads as its service.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    // SAFETY: as in `forward`.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the context pointer is the one the kernel passed to this program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    // SAFETY: the value is copied out before any other map operation.
    if let Some(original) = (unsafe { SOCK_REV_NAT.get(&key) }).copied() {
        sa.user_ip4 = original.addr;
        sa.user_port = u32::from(original.port);
    }
}
