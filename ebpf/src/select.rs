//! Backend choice, shared by the socket and tc programs: a uniformly random slot, or the
//! client's remembered backend under ClientIP session affinity.
//!
//! ClientIP session affinity: a client's entry is used while it is younger than the
//! service's timeout (counted from the client's last new connection, as kube-proxy's `recent`
//! match does) and its slot still holds its backend. A backend that moved to another slot
//! because another one left is found again by searching the first [`AFFINITY_SCAN_SLOTS`]
//! slots; beyond them (services with more backends) its clients lose their affinity once and
//! are pinned to a new pick. Who the client is depends on the program (see
//! [`AffinityKey`]).
//!
//! Reads the service and backend maps; writes only the affinity map. Decides nothing beyond
//! the slot.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use corten_ebpf_common::{AffinityKey, AffinityValue, Backend, BackendKey, ServiceValue};

use crate::maps::{AFFINITY, BACKENDS};

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// How many slots an affinity lookup searches for a backend that is no longer in the slot it
/// was chosen from (the last slot moves into the hole another backend leaves).
const AFFINITY_SCAN_SLOTS: u32 = 64;

/// A backend for a new connection of `client` (of `client_kind`) to a service with backends:
/// by affinity when the service has a timeout, else at random. None for a torn service (a
/// slot below its count without a backend).
#[inline(always)]
pub fn pick(
    service_id: u32,
    service: &ServiceValue,
    client: u64,
    client_kind: u32,
) -> Option<Backend> {
    if service.affinity_timeout_seconds == 0 {
        return pick_random(service_id, service).map(|(_, backend)| backend);
    }
    let key = AffinityKey {
        client,
        service_id,
        client_kind,
    };
    pick_with_affinity(&key, service)
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
fn pick_with_affinity(key: &AffinityKey, service: &ServiceValue) -> Option<Backend> {
    // SAFETY: a plain helper call without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(service.affinity_timeout_seconds) * NANOS_PER_SECOND;
    // SAFETY: the value is copied out before any other map operation.
    let remembered = (unsafe { AFFINITY.get(key) })
        .copied()
        // Another CPU may have stored a later time than this one read: saturate.
        .filter(|entry| now.saturating_sub(entry.last_used_ns) <= timeout_ns)
        .and_then(|entry| find_backend(key.service_id, service, &entry));
    let (slot, backend) = match remembered {
        Some(found) => found,
        None => pick_random(key.service_id, service)?,
    };
    let value = AffinityValue {
        last_used_ns: now,
        backend,
        slot,
        pad: 0,
    };
    // A full LRU map evicts its least recently used entry; if the insert fails anyway the
    // connection still works and the client only loses its affinity.
    let _ = AFFINITY.insert(key, &value, 0);
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
