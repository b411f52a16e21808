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
//! Backend choice (see `select`): a random slot, also for services with a Maglev table (those
//! tables serve the tc programs' flows from outside). ClientIP session affinity: the client is
//! the connecting socket's network namespace (see
//! [`AffinityKey`](corten_ebpf_common::AffinityKey)).
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use corten_ebpf_common::{
    affinity_client, protocol, when_empty, FrontendKey, RevNatKey, RevNatValue,
};

use crate::{
    maps::{FRONTENDS, SERVICES, SOCK_REV_NAT},
    select,
};

/// Let the call proceed (possibly with a rewritten address).
const ALLOW: i32 = 1;
/// Fail the call with the error set by `bpf_set_retval` (`EPERM` if none was set).
const REJECT: i32 = 0;
/// `ECONNREFUSED`: a service without endpoints refuses at once.
const ECONNREFUSED: i32 = 111;
/// `EHOSTUNREACH`: a `Local` service without local endpoints drops.
const EHOSTUNREACH: i32 = 113;

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

/// The node's own network namespace (its cookie), set by the agent when it loads the object
/// ([`programs::NODE_NETNS_COOKIE`](corten_ebpf_common::programs::NODE_NETNS_COOKIE)); zero
/// turns bind protection off.
#[no_mangle]
static CORTEN_NODE_NETNS_COOKIE: u64 = 0;
/// `EADDRINUSE`: what a bind to a port a NodePort holds fails with.
const EADDRINUSE: i32 = 98;

/// NodePort bind protection: in the node's own network namespace a TCP or UDP socket may not
/// bind a port that a NodePort Service answers on with that protocol (on any address: the
/// NodePort answers on all of them), as kube-proxy's held ports refuse it; the bind fails
/// with `EADDRINUSE`. Pods bind in their own namespaces and are never refused.
#[cgroup_sock_addr(bind4)]
pub fn corten_bind4(ctx: SockAddrContext) -> i32 {
    // SAFETY: `sock_addr` points at the kernel's `bpf_sock_addr` for this call.
    let sa = unsafe { &*ctx.sock_addr };
    let protocol = sa.protocol as u8;
    let port = sa.user_port as u16;
    if port == 0 || (protocol != protocol::TCP && protocol != protocol::UDP) {
        return ALLOW;
    }
    // SAFETY: reading a global the loader may have rewritten; volatile so the compiler does
    // not fold the zero default.
    let node = unsafe { core::ptr::read_volatile(&CORTEN_NODE_NETNS_COOKIE) };
    if node == 0 {
        return ALLOW;
    }
    let any_address = FrontendKey {
        addr: 0,
        port,
        protocol,
        pad: 0,
    };
    // SAFETY: only checks whether the key exists.
    if unsafe { FRONTENDS.get(&any_address) }.is_none() {
        return ALLOW;
    }
    // SAFETY: the context pointer is the one the kernel passed to this program.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != node {
        return ALLOW;
    }
    // SAFETY: a plain helper call without pointer arguments; bind4 returns it to the caller.
    unsafe { bpf_set_retval(-EADDRINUSE) };
    REJECT
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
    // SAFETY: the context pointer is the one the kernel passed to this program.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // Connections made on the node pick at random (or by affinity); Maglev tables serve the
    // tc programs only.
    let Some(select::Pick { backend, .. }) = select::pick(
        target.from_node,
        &service,
        netns_cookie,
        affinity_client::NETNS_COOKIE,
        select::Strategy::Random,
    ) else {
        return Translation::Refused(ECONNREFUSED);
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
