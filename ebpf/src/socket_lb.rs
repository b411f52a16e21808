//! Socket-level load balancing: `cgroup/connect4` turns a connect to a service address into
//! a connect to one of its backends, once per socket, so no packet of the flow needs NAT.
//!
//! Reads the service and backend maps only; it never writes a map.
use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::{cgroup_sock_addr, map},
    maps::HashMap,
    programs::SockAddrContext,
};
use corten_ebpf_common::{
    Backend, BackendKey, ServiceKey, ServiceValue, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES,
};

/// Let the connect proceed (possibly with a rewritten destination).
const ALLOW: i32 = 1;
/// Fail the connect (the caller sees `EPERM`).
const REJECT: i32 = 0;

#[map(name = "CORTEN_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "CORTEN_BACKENDS")]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[cgroup_sock_addr(connect4)]
pub fn corten_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: `sock_addr` points at the kernel's `bpf_sock_addr` for this call; the verifier
    // checks every field access below against that context type.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = ServiceKey {
        addr: sa.user_ip4,
        // `user_port` holds the 16-bit network-order port in its low half.
        port: sa.user_port as u16,
        protocol: sa.protocol as u8,
        pad: 0,
    };
    // SAFETY: the value is copied out before any other map operation.
    let service = match unsafe { SERVICES.get(&key) } {
        Some(service) => *service,
        None => return ALLOW,
    };
    if service.backend_count == 0 {
        return REJECT;
    }
    // SAFETY: a plain helper call without pointer arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % service.backend_count;
    let backend_key = BackendKey {
        service_id: service.id,
        slot,
    };
    // SAFETY: as above.
    match unsafe { BACKENDS.get(&backend_key) } {
        Some(backend) => {
            sa.user_ip4 = backend.addr;
            sa.user_port = u32::from(backend.port);
            ALLOW
        }
        // A slot the agent has not written yet: refuse rather than connect to the VIP.
        None => REJECT,
    }
}
