//! Every map of the object, shared by the socket and tc programs. The capacities here are
//! defaults: the agent sets each map's size when it loads the object.
//!
//! Owns the map definitions only; the key and value types come from `corten-ebpf-common`.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use corten_ebpf_common::{
    nat_stat, AffinityKey, AffinityValue, Backend, BackendKey, FrontendKey, FrontendValue,
    MaglevKey, NatFlowKey, NatFlowValue, RevNatKey, RevNatValue, ServiceValue, TerminatingKey,
    DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FRONTENDS, DEFAULT_MAX_MAGLEV_ENTRIES,
    DEFAULT_MAX_NAT_FLOWS, DEFAULT_MAX_SERVICES, DEFAULT_MAX_SOCK_REV_NAT, DEFAULT_MAX_TERMINATING,
    MAGLEV_MAP_FLAGS,
};

#[map(name = "CORTEN_FRONTENDS")]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue> =
    HashMap::with_max_entries(DEFAULT_MAX_FRONTENDS, 0);

#[map(name = "CORTEN_SERVICES")]
pub static SERVICES: HashMap<u32, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "CORTEN_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Written by the agent for services with a Maglev table; read by the tc programs (`select`).
/// Not preallocated: a table costs memory only while it exists.
#[map(name = "CORTEN_MAGLEV")]
pub static MAGLEV: HashMap<MaglevKey, u32> =
    HashMap::with_max_entries(DEFAULT_MAX_MAGLEV_ENTRIES, MAGLEV_MAP_FLAGS);

/// Written by the agent; no program reads it yet (removed backends leave the slots, and
/// flows already made keep their backend without looking it up).
#[map(name = "CORTEN_TERMINATING")]
pub static TERMINATING: HashMap<TerminatingKey, u8> =
    HashMap::with_max_entries(DEFAULT_MAX_TERMINATING, 0);

#[map(name = "CORTEN_SOCK_REV_NAT")]
pub static SOCK_REV_NAT: LruHashMap<RevNatKey, RevNatValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOCK_REV_NAT, 0);

#[map(name = "CORTEN_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_AFFINITY, 0);

#[map(name = "CORTEN_NAT_FLOWS")]
pub static NAT_FLOWS: LruHashMap<NatFlowKey, NatFlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_NAT_FLOWS, 0);

#[map(name = "CORTEN_NAT_STATS")]
pub static NAT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(nat_stat::COUNT, 0);
