//! NAT for traffic from outside the cluster: loads the tc programs (`ebpf/src/tc_nat.rs`),
//! attaches them to the node's external interfaces (TCX links, pinned next to the maps), reads
//! their counters, and says which counter changes deserve a warning.
//!
//! The tc programs share every service map with the socket programs, so the same desired
//! state drives both: a frontend's `from_outside` backend set is what the tc programs use.
//! Owns the tc programs' loading, attachments and counters. It must not write the service maps
//! (that is `maps`, driven by `socket_lb`).
use std::path::Path;

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{links::PinnedLink, SchedClassifier, TcAttachType},
    Ebpf,
};
use corten_ebpf_common::{maps, nat_stat, programs};

use super::socket_lb::{pin_link, program, SocketLbError};

/// The tc programs' counters, summed over CPUs, by [`nat_stat`] index.
pub type NatStats = [u64; nat_stat::COUNT as usize];

/// The loaded tc programs and their counter map.
pub struct TcNat {
    stats: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for TcNat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcNat").finish_non_exhaustive()
    }
}

/// The programs and where each attaches.
const ATTACHMENTS: [(&str, TcAttachType); 2] = [
    (programs::TC_INGRESS, TcAttachType::Ingress),
    (programs::TC_EGRESS, TcAttachType::Egress),
];

impl TcNat {
    /// Loads both tc programs into the kernel (the verifier checks them here) and takes the
    /// counter map.
    pub(crate) fn load(ebpf: &mut Ebpf) -> Result<Self, SocketLbError> {
        for (name, _) in ATTACHMENTS {
            program::<SchedClassifier>(ebpf, name)?
                .load()
                .map_err(|source| SocketLbError::Program { name, source })?;
        }
        let name = maps::NAT_STATS;
        let map = ebpf
            .take_map(name)
            .ok_or(SocketLbError::Missing { kind: "map", name })?;
        let stats = PerCpuArray::try_from(map)
            .map_err(|source| SocketLbError::Map { map: name, source })?;
        Ok(Self { stats })
    }

    /// Attaches ingress and egress to `interface`; with `pin_dir` the links are pinned there
    /// and returned, else they stay with the programs (detached when the object is dropped).
    pub(crate) fn attach(
        &self,
        ebpf: &mut Ebpf,
        interface: &str,
        pin_dir: Option<&Path>,
    ) -> Result<Vec<PinnedLink>, SocketLbError> {
        let mut pinned = Vec::new();
        for (name, attach_type) in ATTACHMENTS {
            let program = program::<SchedClassifier>(ebpf, name)?;
            // Kernels from 6.6 get a TCX link, which coexists with other tc programs and
            // can be pinned.
            let link_id = program
                .attach(interface, attach_type)
                .map_err(|source| SocketLbError::Program { name, source })?;
            let Some(pin_dir) = pin_dir else {
                continue;
            };
            let link = program
                .take_link(link_id)
                .map_err(|source| SocketLbError::Program { name, source })?;
            let path = pin_dir.join(format!("link_{name}_{interface}"));
            pinned.push(pin_link(link, &path)?);
        }
        Ok(pinned)
    }

    /// The counters, summed over CPUs.
    pub(crate) fn stats(&self) -> Result<NatStats, SocketLbError> {
        let mut totals = [0u64; nat_stat::COUNT as usize];
        for (index, total) in (0u32..).zip(totals.iter_mut()) {
            let values = self
                .stats
                .get(&index, 0)
                .map_err(|source| SocketLbError::Map {
                    map: maps::NAT_STATS,
                    source,
                })?;
            *total = values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v));
        }
        Ok(totals)
    }
}

/// How a counter's change should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatLevel {
    /// Normal operation (new flows, connections to services without endpoints refused).
    Info,
    /// Something was dropped or lost that a user should know about (a full flow map, no SNAT
    /// port, no route, a service without backends for outside clients, a flow that missed its
    /// Maglev table entry and got a random backend).
    Warn,
}

/// The counters that changed between two readings: name, increase and how to report it.
pub fn stat_changes(before: &NatStats, now: &NatStats) -> Vec<(&'static str, u64, StatLevel)> {
    (0u32..)
        .zip(before.iter().zip(now.iter()))
        .filter_map(|(index, (before, now))| {
            let delta = now.wrapping_sub(*before);
            if delta == 0 {
                return None;
            }
            let level = if index == nat_stat::FLOWS_CREATED || index == nat_stat::REJECTED {
                StatLevel::Info
            } else {
                StatLevel::Warn
            };
            Some((nat_stat::NAMES[index as usize], delta, level))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_counters_are_reported_and_losses_warn() {
        let before: NatStats = [5, 0, 0, 1, 0, 0, 0, 0];
        let now: NatStats = [9, 2, 0, 1, 0, 0, 0, 3];
        assert_eq!(
            stat_changes(&before, &now),
            vec![
                ("flows_created", 4, StatLevel::Info),
                ("flow_insert_failed", 2, StatLevel::Warn),
                ("rejected", 3, StatLevel::Info),
            ]
        );
        assert!(stat_changes(&now, &now).is_empty());
    }

    #[test]
    fn a_full_flow_map_is_a_warning() {
        let mut now: NatStats = [0; nat_stat::COUNT as usize];
        now[nat_stat::FLOW_MISSING as usize] = 3;
        now[nat_stat::MAGLEV_FALLBACK as usize] = 1;
        let changes = stat_changes(&[0; nat_stat::COUNT as usize], &now);
        assert_eq!(
            changes,
            vec![
                ("flow_missing", 3, StatLevel::Warn),
                ("maglev_fallback", 1, StatLevel::Warn)
            ]
        );
    }
}
