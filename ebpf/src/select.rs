//! Backend choice, shared by the socket and tc programs: the client's remembered backend
//! under ClientIP session affinity, else the flow's entry of the service's Maglev table (tc
//! programs, services with a table), else a uniformly random slot.
//!
//! Which path uses what: the socket programs (connections made on the node) always pick at
//! random, as Cilium's socket-LB does; the tc programs (flows from outside) use the service's
//! Maglev table when the agent wrote one (`--proxy-load-balancing maglev`): the flow's
//! position is [`maglev_flow_hash`](corten_ebpf_common::maglev_flow_hash) modulo the table
//! size, so a flow gets the same backend on every node and after restarts. A table entry that
//! is missing or names a slot the service no longer has (a torn update) falls back to a
//! random slot and says so, so the caller can count it.
//!
//! ClientIP session affinity keeps priority over both: a client's entry is used while it is
//! younger than the service's timeout (counted from the client's last new connection, as
//! kube-proxy's `recent` match does) and its slot still holds its backend. A backend that
//! moved to another slot because another one left is found again by searching the first
//! [`AFFINITY_SCAN_SLOTS`] slots; beyond them (services with more backends) its clients lose
//! their affinity once and are pinned to a new pick. Who the client is depends on the program
//! (see [`AffinityKey`]).
//!
//! Reads the service, backend and Maglev maps; writes only the affinity map. Decides nothing
//! beyond the slot.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use corten_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, MaglevKey, ServiceValue,
};

use crate::maps::{AFFINITY, BACKENDS, MAGLEV};

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// How many slots an affinity lookup searches for a backend that is no longer in the slot it
/// was chosen from (the last slot moves into the hole another backend leaves).
const AFFINITY_SCAN_SLOTS: u32 = 64;

/// How a new connection picks its backend when no affinity entry decides.
#[derive(Clone, Copy)]
pub enum Strategy {
    /// A uniformly random slot.
    Random,
    /// The service's Maglev table at `flow_hash % maglev_table_size`, when the service has a
    /// table; a random slot otherwise.
    Maglev {
        /// The flow's [`maglev_flow_hash`](corten_ebpf_common::maglev_flow_hash).
        flow_hash: u32,
    },
}

/// The backend picked for a new connection.
#[derive(Clone, Copy)]
pub struct Pick {
    /// The backend.
    pub backend: Backend,
    /// The service has a Maglev table but its entry for the flow was unusable: the backend is
    /// a random one.
    pub maglev_fallback: bool,
}

/// A backend for a new connection of `client` (of `client_kind`) to a service with backends:
/// by affinity when the service has a timeout, else by `strategy`. None for a torn service (a
/// slot below its count without a backend).
#[inline(always)]
pub fn pick(
    service_id: u32,
    service: &ServiceValue,
    client: u64,
    client_kind: u32,
    strategy: Strategy,
) -> Option<Pick> {
    if service.affinity_timeout_seconds == 0 {
        return pick_new(service_id, service, strategy).map(|(_, pick)| pick);
    }
    let key = AffinityKey {
        client,
        service_id,
        client_kind,
    };
    pick_with_affinity(&key, service, strategy)
}

/// A slot for a connection that no affinity entry decides, and its backend.
#[inline(always)]
fn pick_new(service_id: u32, service: &ServiceValue, strategy: Strategy) -> Option<(u32, Pick)> {
    let mut maglev_fallback = false;
    if let Strategy::Maglev { flow_hash } = strategy {
        if service.maglev_table_size != 0 {
            if let Some((slot, backend)) = pick_maglev(service_id, service, flow_hash) {
                let pick = Pick {
                    backend,
                    maglev_fallback: false,
                };
                return Some((slot, pick));
            }
            maglev_fallback = true;
        }
    }
    let (slot, backend) = pick_random(service_id, service)?;
    Some((
        slot,
        Pick {
            backend,
            maglev_fallback,
        },
    ))
}

/// The slot in the flow's entry of the service's Maglev table, and its backend; None if the
/// entry is missing or names a slot without a backend below the service's count.
#[inline(always)]
fn pick_maglev(service_id: u32, service: &ServiceValue, flow_hash: u32) -> Option<(u32, Backend)> {
    let size = service.maglev_table_size;
    if size == 0 {
        return None;
    }
    let position = flow_hash % size;
    // SAFETY: the value is copied out before any other map operation.
    let slot = (unsafe {
        MAGLEV.get(&MaglevKey {
            service_id,
            position,
        })
    })
    .copied()?;
    if slot >= service.backend_count {
        return None;
    }
    // SAFETY: as above.
    let backend = (unsafe { BACKENDS.get(&BackendKey { service_id, slot }) }).copied()?;
    Some((slot, backend))
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
/// holds its slot, else a new pick by `strategy`; either way the entry is refreshed.
#[inline(always)]
fn pick_with_affinity(
    key: &AffinityKey,
    service: &ServiceValue,
    strategy: Strategy,
) -> Option<Pick> {
    // SAFETY: a plain helper call without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(service.affinity_timeout_seconds) * NANOS_PER_SECOND;
    // SAFETY: the value is copied out before any other map operation.
    let remembered = (unsafe { AFFINITY.get(key) })
        .copied()
        // Another CPU may have stored a later time than this one read: saturate.
        .filter(|entry| now.saturating_sub(entry.last_used_ns) <= timeout_ns)
        .and_then(|entry| find_backend(key.service_id, service, &entry));
    let (slot, pick) = match remembered {
        Some((slot, backend)) => (
            slot,
            Pick {
                backend,
                maglev_fallback: false,
            },
        ),
        None => pick_new(key.service_id, service, strategy)?,
    };
    let backend = pick.backend;
    let value = AffinityValue {
        last_used_ns: now,
        backend,
        slot,
        pad: 0,
    };
    // A full LRU map evicts its least recently used entry; if the insert fails anyway the
    // connection still works and the client only loses its affinity.
    let _ = AFFINITY.insert(key, &value, 0);
    Some(pick)
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
