//! The service datapath's BPF maps as typed handles: lowering each planned
//! [`Operation`] to map writes, and reading the maps back into an [`AppliedState`] after a
//! restart (removing what a torn write left behind on the way).
//!
//! Owns the translation between the planner's plain data and the wire types of
//! `corten-ebpf-common`. It must not decide what the maps should contain (that is `desired`
//! and `diff`), and it never loads or attaches programs (that is `socket_lb`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::maps::{HashMap, MapData, MapError};
use corten_ebpf_common::{
    frontend_kind, maps, protocol, when_empty, Backend, BackendKey, FrontendValue, MaglevKey,
    ServiceValue, TerminatingKey,
};
use tracing::{debug, warn};

use super::{
    desired::{FrontendAddress, FrontendKey, FrontendKind, SessionAffinity, WhenEmpty},
    diff::{AppliedFrontend, AppliedService, AppliedState, Operation, ServiceEntry, ServiceId},
    maglev::TableSize,
    Protocol,
};

/// A map operation failed. Retryable: plan again from [`ServiceMaps::read_applied`]; a full
/// map stays full until a size flag is raised or entries go.
#[derive(Debug, thiserror::Error)]
#[error("map {map}: {source}{}", full_hint(.map, .source))]
pub struct MapsError {
    /// The map's name.
    pub map: &'static str,
    /// What the kernel said (a full map is `E2BIG`).
    #[source]
    pub source: MapError,
}

/// Handles to every map the service datapath's programs share with the agent.
pub struct ServiceMaps {
    pub(crate) frontends: HashMap<MapData, corten_ebpf_common::FrontendKey, FrontendValue>,
    pub(crate) services: HashMap<MapData, u32, ServiceValue>,
    pub(crate) backends: HashMap<MapData, BackendKey, Backend>,
    pub(crate) maglev: HashMap<MapData, MaglevKey, u32>,
    pub(crate) terminating: HashMap<MapData, TerminatingKey, u8>,
}

impl std::fmt::Debug for ServiceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMaps").finish_non_exhaustive()
    }
}

impl ServiceMaps {
    /// Applies one operation. `before` is the state the plan started from (it names the
    /// entries an operation replaces). Idempotent: applying it twice is harmless.
    pub fn apply(&mut self, operation: &Operation, before: &AppliedState) -> Result<(), MapsError> {
        match operation {
            Operation::SetBackend {
                service,
                slot,
                backend,
            } => insert(
                &mut self.backends,
                maps::BACKENDS,
                backend_key(*service, *slot),
                backend_value(*backend),
            ),
            Operation::SetMaglevEntries { service, entries } => {
                for (position, slot) in entries {
                    let key = MaglevKey {
                        service_id: service.0,
                        position: *position,
                    };
                    insert(&mut self.maglev, maps::MAGLEV, key, *slot)?;
                }
                Ok(())
            }
            Operation::SetTerminating { service, backends } => {
                for backend in backends {
                    insert(
                        &mut self.terminating,
                        maps::TERMINATING,
                        terminating_key(*service, *backend),
                        1,
                    )?;
                }
                let old = before
                    .services
                    .get(service)
                    .map(|s| &s.terminating)
                    .into_iter()
                    .flatten();
                for gone in old.filter(|b| !backends.contains(b)) {
                    remove(
                        &mut self.terminating,
                        maps::TERMINATING,
                        &terminating_key(*service, *gone),
                    )?;
                }
                Ok(())
            }
            Operation::SetService { service, entry } => insert(
                &mut self.services,
                maps::SERVICES,
                service.0,
                service_value(entry),
            ),
            Operation::SetFrontend { frontend, value } => insert(
                &mut self.frontends,
                maps::FRONTENDS,
                frontend_key(frontend),
                frontend_value(value),
            ),
            Operation::RemoveFrontend { frontend } => remove(
                &mut self.frontends,
                maps::FRONTENDS,
                &frontend_key(frontend),
            ),
            Operation::RemoveBackend { service, slot } => remove(
                &mut self.backends,
                maps::BACKENDS,
                &backend_key(*service, *slot),
            ),
            Operation::RemoveMaglevTable { service, positions } => {
                for position in positions.clone() {
                    let key = MaglevKey {
                        service_id: service.0,
                        position,
                    };
                    remove(&mut self.maglev, maps::MAGLEV, &key)?;
                }
                Ok(())
            }
            Operation::RemoveService { service } => {
                remove(&mut self.services, maps::SERVICES, &service.0)?;
                let old = before
                    .services
                    .get(service)
                    .map(|s| &s.terminating)
                    .into_iter()
                    .flatten();
                for backend in old {
                    remove(
                        &mut self.terminating,
                        maps::TERMINATING,
                        &terminating_key(*service, *backend),
                    )?;
                }
                Ok(())
            }
            Operation::ForgetBackendFlows { service, backend } => {
                // Nothing to flush: the socket programs' reverse-NAT entries are per socket
                // and age out of an LRU map, and an affinity entry counts only while its slot
                // still holds its backend, so one naming a gone backend is already ignored.
                debug!(service = service.0, %backend, "backend gone");
                Ok(())
            }
        }
    }

    /// Reads what the maps hold (after a restart, from the pins) as the planner's applied
    /// state, so the next plan rewrites only what differs. Entries that no complete service
    /// can reach (slots past a service's count, tables and terminating backends of missing
    /// services, frontends with values this agent does not know) are removed on the way. A
    /// Maglev table counts only when it is complete (every position below the size its
    /// service value names); an incomplete one reads as no table, so the next plan writes it
    /// whole.
    pub fn read_applied(&mut self, max_service_id: u32) -> Result<AppliedState, MapsError> {
        let mut frontends = BTreeMap::new();
        let mut junk_frontends = Vec::new();
        for item in self.frontends.iter() {
            let (key, value) = item.map_err(map_error(maps::FRONTENDS))?;
            match (frontend_from_wire(&key), applied_frontend_from_wire(&value)) {
                (Some(key), Some(value)) => {
                    frontends.insert(key, value);
                }
                _ => junk_frontends.push(key),
            }
        }
        for key in junk_frontends {
            warn!(?key, "removing a frontend entry this agent cannot read");
            remove(&mut self.frontends, maps::FRONTENDS, &key)?;
        }

        let mut services = BTreeMap::new();
        for item in self.services.iter() {
            let (id, value) = item.map_err(map_error(maps::SERVICES))?;
            services.insert(ServiceId(id), entry_from_wire(&value));
        }
        let mut slots: BTreeMap<ServiceId, BTreeMap<u32, SocketAddrV4>> = BTreeMap::new();
        for item in self.backends.iter() {
            let (key, value) = item.map_err(map_error(maps::BACKENDS))?;
            slots
                .entry(ServiceId(key.service_id))
                .or_default()
                .insert(key.slot, backend_from_wire(&value));
        }
        let mut terminating: BTreeMap<ServiceId, BTreeSet<SocketAddrV4>> = BTreeMap::new();
        let mut stale_terminating = Vec::new();
        for item in self.terminating.iter() {
            let (key, _) = item.map_err(map_error(maps::TERMINATING))?;
            let id = ServiceId(key.service_id);
            if services.contains_key(&id) {
                terminating.entry(id).or_default().insert(SocketAddrV4::new(
                    Ipv4Addr::from(key.addr.to_ne_bytes()),
                    u16::from_be(key.port),
                ));
            } else {
                stale_terminating.push(key);
            }
        }
        for key in stale_terminating {
            remove(&mut self.terminating, maps::TERMINATING, &key)?;
        }
        let mut stale_tables = Vec::new();
        let mut table_entries: BTreeMap<ServiceId, u32> = BTreeMap::new();
        for key in self.maglev.keys() {
            let key = key.map_err(map_error(maps::MAGLEV))?;
            let id = ServiceId(key.service_id);
            let size = services.get(&id).and_then(|entry| entry.maglev);
            if size.is_some_and(|size| key.position < size.get()) {
                *table_entries.entry(id).or_default() += 1;
            } else {
                stale_tables.push(key);
            }
        }
        for key in stale_tables {
            remove(&mut self.maglev, maps::MAGLEV, &key)?;
        }
        for (id, entry) in services.iter_mut() {
            let complete = entry
                .maglev
                .is_some_and(|size| table_entries.get(id) == Some(&size.get()));
            if entry.maglev.is_some() && !complete {
                warn!(
                    service = id.0,
                    "an incomplete Maglev table will be rewritten"
                );
                entry.maglev = None;
            }
        }

        let mut applied = BTreeMap::new();
        for (id, entry) in services {
            let mut held = slots.remove(&id).unwrap_or_default();
            // The slots a service can use are the contiguous ones from 0; a torn write may
            // have left fewer than its count (the next plan rewrites the count) or more.
            let mut contiguous = Vec::new();
            while let Some(backend) = held.remove(&slot_of(contiguous.len())) {
                contiguous.push(backend);
            }
            for slot in held.into_keys() {
                remove(&mut self.backends, maps::BACKENDS, &backend_key(id, slot))?;
            }
            applied.insert(
                id,
                AppliedService {
                    key: None,
                    slots: contiguous,
                    terminating: terminating.remove(&id).unwrap_or_default(),
                    entry,
                },
            );
        }
        for (id, orphaned) in slots {
            for slot in orphaned.into_keys() {
                remove(&mut self.backends, maps::BACKENDS, &backend_key(id, slot))?;
            }
        }
        Ok(AppliedState::from_pinned(
            max_service_id,
            frontends,
            applied,
        ))
    }
}

fn slot_of(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

fn insert<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: K,
    value: V,
) -> Result<(), MapsError> {
    map.insert(key, value, 0).map_err(map_error(name))
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<(), MapsError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(MapsError { map: name, source }),
    }
}

impl MapsError {
    /// Whether the map was full: the kernel refuses a new key with `E2BIG`.
    pub fn is_full(&self) -> bool {
        is_full(&self.source)
    }
}

fn is_full(source: &MapError) -> bool {
    matches!(source, MapError::SyscallError(error)
        if error.io_error.kind() == std::io::ErrorKind::ArgumentListTooLong)
}

/// For a full map, what to do about it (the agent flag that sizes it).
fn full_hint(map: &str, source: &MapError) -> String {
    if !is_full(source) {
        return String::new();
    }
    let flag = match map {
        maps::FRONTENDS => "--proxy-max-frontends",
        maps::SERVICES => "--proxy-max-services",
        maps::BACKENDS => "--proxy-max-backends",
        maps::MAGLEV => "--proxy-max-maglev-entries",
        maps::TERMINATING => "--proxy-max-terminating",
        _ => return " (the map is full)".into(),
    };
    format!(" (the map is full: raise {flag})")
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError { map, source }
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => protocol::TCP,
        Protocol::Udp => protocol::UDP,
    }
}

/// The wire key of a frontend; a NodePort on any node address is address zero.
pub(crate) fn frontend_key(frontend: &FrontendKey) -> corten_ebpf_common::FrontendKey {
    let octets = match frontend.address {
        FrontendAddress::Ip(ip) => ip.octets(),
        FrontendAddress::AnyNodeAddress => [0; 4],
    };
    corten_ebpf_common::FrontendKey::new(octets, frontend.port, protocol_number(frontend.protocol))
}

fn frontend_from_wire(key: &corten_ebpf_common::FrontendKey) -> Option<FrontendKey> {
    let protocol = match key.protocol {
        protocol::TCP => Protocol::Tcp,
        protocol::UDP => Protocol::Udp,
        _ => return None,
    };
    let address = match key.addr {
        0 => FrontendAddress::AnyNodeAddress,
        addr => FrontendAddress::Ip(Ipv4Addr::from(addr.to_ne_bytes())),
    };
    Some(FrontendKey {
        address,
        port: u16::from_be(key.port),
        protocol,
    })
}

fn frontend_value(value: &AppliedFrontend) -> FrontendValue {
    let kind = match value.kind {
        FrontendKind::ClusterIp => frontend_kind::CLUSTER_IP,
        FrontendKind::NodePort => frontend_kind::NODE_PORT,
        FrontendKind::ExternalIp => frontend_kind::EXTERNAL_IP,
        FrontendKind::LoadBalancer => frontend_kind::LOAD_BALANCER,
    };
    FrontendValue {
        from_node: value.from_node.0,
        from_outside: value.from_outside.0,
        kind,
        pad: [0; 3],
    }
}

fn applied_frontend_from_wire(value: &FrontendValue) -> Option<AppliedFrontend> {
    let kind = match value.kind {
        frontend_kind::CLUSTER_IP => FrontendKind::ClusterIp,
        frontend_kind::NODE_PORT => FrontendKind::NodePort,
        frontend_kind::EXTERNAL_IP => FrontendKind::ExternalIp,
        frontend_kind::LOAD_BALANCER => FrontendKind::LoadBalancer,
        _ => return None,
    };
    Some(AppliedFrontend {
        kind,
        from_outside: ServiceId(value.from_outside),
        from_node: ServiceId(value.from_node),
    })
}

fn service_value(entry: &ServiceEntry) -> ServiceValue {
    ServiceValue {
        backend_count: entry.backend_count,
        affinity_timeout_seconds: entry.affinity.map_or(0, |a| a.timeout_seconds),
        maglev_table_size: entry.maglev.map_or(0, TableSize::get),
        when_empty: match entry.when_empty {
            None => when_empty::NONE,
            Some(WhenEmpty::Reject) => when_empty::REJECT,
            Some(WhenEmpty::Drop) => when_empty::DROP,
        },
        pad: [0; 3],
    }
}

fn entry_from_wire(value: &ServiceValue) -> ServiceEntry {
    ServiceEntry {
        backend_count: value.backend_count,
        when_empty: match value.when_empty {
            when_empty::NONE => None,
            when_empty::DROP => Some(WhenEmpty::Drop),
            // Unknown values read as the safe choice; the next plan rewrites them.
            _ => Some(WhenEmpty::Reject),
        },
        affinity: (value.affinity_timeout_seconds > 0).then_some(SessionAffinity {
            timeout_seconds: value.affinity_timeout_seconds,
        }),
        // A size this agent would not write reads as no table; its entries are removed and
        // the next plan writes a table of the configured size.
        maglev: match value.maglev_table_size {
            0 => None,
            size => TableSize::new(size).ok(),
        },
    }
}

fn backend_key(service: ServiceId, slot: u32) -> BackendKey {
    BackendKey {
        service_id: service.0,
        slot,
    }
}

fn backend_value(backend: SocketAddrV4) -> Backend {
    Backend::new(backend.ip().octets(), backend.port())
}

fn backend_from_wire(backend: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(backend.addr.to_ne_bytes()),
        u16::from_be(backend.port),
    )
}

fn terminating_key(service: ServiceId, backend: SocketAddrV4) -> TerminatingKey {
    let wire = backend_value(backend);
    TerminatingKey {
        service_id: service.0,
        addr: wire.addr,
        port: wire.port,
        pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip() {
        let frontend = FrontendKey {
            address: FrontendAddress::Ip(Ipv4Addr::new(10, 43, 0, 7)),
            port: 8080,
            protocol: Protocol::Udp,
        };
        assert_eq!(frontend_from_wire(&frontend_key(&frontend)), Some(frontend));
        let any = FrontendKey {
            address: FrontendAddress::AnyNodeAddress,
            port: 30080,
            protocol: Protocol::Tcp,
        };
        assert_eq!(frontend_key(&any).addr, 0);
        assert_eq!(frontend_from_wire(&frontend_key(&any)), Some(any));

        let value = AppliedFrontend {
            kind: FrontendKind::NodePort,
            from_outside: ServiceId(3),
            from_node: ServiceId(4),
        };
        assert_eq!(
            applied_frontend_from_wire(&frontend_value(&value)),
            Some(value)
        );
        for entry in [
            ServiceEntry {
                backend_count: 3,
                when_empty: None,
                affinity: Some(SessionAffinity {
                    timeout_seconds: 10,
                }),
                maglev: None,
            },
            ServiceEntry {
                backend_count: 2,
                when_empty: None,
                affinity: None,
                maglev: Some(TableSize::default()),
            },
            ServiceEntry {
                backend_count: 0,
                when_empty: Some(WhenEmpty::Drop),
                affinity: None,
                maglev: None,
            },
            ServiceEntry {
                backend_count: 0,
                when_empty: Some(WhenEmpty::Reject),
                affinity: None,
                maglev: None,
            },
        ] {
            assert_eq!(entry_from_wire(&service_value(&entry)), entry);
        }
        assert_eq!(
            service_value(&ServiceEntry {
                backend_count: 1,
                when_empty: None,
                affinity: None,
                maglev: TableSize::new(251).ok(),
            })
            .maglev_table_size,
            251
        );
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, 9), 80);
        assert_eq!(backend_from_wire(&backend_value(backend)), backend);
        let key = terminating_key(ServiceId(2), backend);
        assert_eq!(key.addr.to_ne_bytes(), [10, 42, 0, 9]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
    }

    #[test]
    fn unknown_wire_values_are_not_read_as_entries() {
        let mut key = corten_ebpf_common::FrontendKey::new([10, 43, 0, 1], 53, 132);
        assert_eq!(frontend_from_wire(&key), None);
        key.protocol = protocol::UDP;
        assert!(frontend_from_wire(&key).is_some());
        let value = FrontendValue {
            from_node: 1,
            from_outside: 1,
            kind: 0,
            pad: [0; 3],
        };
        assert_eq!(applied_frontend_from_wire(&value), None);
        // A table size this agent would never write (not a prime) reads as no table.
        let service = ServiceValue {
            backend_count: 2,
            affinity_timeout_seconds: 0,
            maglev_table_size: 1000,
            when_empty: when_empty::NONE,
            pad: [0; 3],
        };
        assert_eq!(entry_from_wire(&service).maglev, None);
    }
}
