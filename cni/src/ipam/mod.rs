//! Local IPAM: which address of the node's pod subnet each attachment holds.
//!
//! The decisions are pure functions here ([`next_free`], [`stale`]) so they are tested
//! without files; [`store`] keeps the allocations on disk, one file per address, under an
//! exclusive `flock` so that concurrent ADDs never hand out one address twice.
//!
//! Owns address allocation for pods on this node. It must not touch links or routes, and
//! never gives out the subnet's network, `.1` (the node's) or broadcast address.
pub mod store;

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use crate::{attachment::Attachment, subnet::Ipv4Subnet};

pub use store::IpamStore;

/// Why an allocation or release failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every pod address of the subnet is held; retrying will not help until pods go.
    #[error("no free address left in {subnet} ({capacity} pod addresses, all allocated)")]
    Exhausted {
        /// The subnet.
        subnet: Ipv4Subnet,
        /// How many pod addresses it has.
        capacity: u32,
    },
    /// The state directory could not be read or written.
    #[error("IPAM state at {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// One allocation as stored: the address and, when its record is readable, its owner.
pub type Record = (Ipv4Addr, Option<Attachment>);

/// The first free pod address after `after` (wrapping around), so a released address is
/// not handed out again before the others have been used; `None` when all are taken.
pub fn next_free(
    subnet: &Ipv4Subnet,
    taken: &BTreeSet<Ipv4Addr>,
    after: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (first, last) = subnet.pod_range();
    let capacity = last - first + 1;
    let start = after
        .map(u32::from)
        .filter(|a| (first..=last).contains(a))
        .map_or(0, |a| (a - first + 1) % capacity);
    (0..capacity)
        .map(|step| Ipv4Addr::from(first + (start + step) % capacity))
        .find(|candidate| !taken.contains(candidate))
}

/// The records whose owner is not among `valid` (GC): unreadable records included, since
/// no live attachment can own them.
pub fn stale(records: &[Record], valid: &[Attachment]) -> Vec<Record> {
    let valid: BTreeSet<&Attachment> = valid.iter().collect();
    records
        .iter()
        .filter(|(_, owner)| owner.as_ref().is_none_or(|owner| !valid.contains(owner)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Ipv4Subnet {
        s.parse().expect("valid subnet")
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 42, 0, last)
    }

    #[test]
    fn first_allocation_skips_network_and_node_address() {
        let s = subnet("10.42.0.0/24");
        assert_eq!(next_free(&s, &BTreeSet::new(), None), Some(ip(2)));
    }

    #[test]
    fn allocation_continues_after_the_last_one_and_wraps() {
        let s = subnet("10.42.0.0/24");
        let taken: BTreeSet<_> = [ip(2), ip(3)].into();
        assert_eq!(next_free(&s, &taken, Some(ip(3))), Some(ip(4)));
        // A released .2 is not reused while later addresses are free.
        let taken: BTreeSet<_> = [ip(3)].into();
        assert_eq!(next_free(&s, &taken, Some(ip(3))), Some(ip(4)));
        // After .254 comes .2 again, never .255, .0 or .1.
        assert_eq!(next_free(&s, &BTreeSet::new(), Some(ip(254))), Some(ip(2)));
        // A last address outside the subnet (the subnet changed) restarts at the beginning.
        let elsewhere = Ipv4Addr::new(10, 42, 9, 9);
        assert_eq!(
            next_free(&s, &BTreeSet::new(), Some(elsewhere)),
            Some(ip(2))
        );
    }

    #[test]
    fn a_full_subnet_has_nothing_free() {
        let s = subnet("10.42.0.0/28");
        let taken: BTreeSet<_> = (2..=14).map(ip).collect();
        assert_eq!(next_free(&s, &taken, None), None);
        let mut one_free = taken.clone();
        one_free.remove(&ip(9));
        assert_eq!(next_free(&s, &one_free, Some(ip(12))), Some(ip(9)));
    }

    #[test]
    fn every_allocation_is_a_pod_address() {
        let s = subnet("10.42.0.0/27");
        let mut taken = BTreeSet::new();
        let mut last = None;
        while let Some(next) = next_free(&s, &taken, last) {
            assert!(s.is_pod_address(next), "{next}");
            assert!(taken.insert(next), "{next} handed out twice");
            last = Some(next);
        }
        assert_eq!(taken.len(), usize::try_from(s.pod_capacity()).unwrap_or(0));
    }

    #[test]
    fn stale_records_are_those_no_valid_attachment_owns() {
        let keep = Attachment::new("keep", "eth0");
        let other_if = Attachment::new("keep", "net1");
        let gone = Attachment::new("gone", "eth0");
        let records = vec![
            (ip(2), Some(keep.clone())),
            (ip(3), Some(other_if.clone())),
            (ip(4), Some(gone.clone())),
            (ip(5), None),
        ];
        let stale = stale(&records, std::slice::from_ref(&keep));
        assert_eq!(
            stale,
            vec![(ip(3), Some(other_if)), (ip(4), Some(gone)), (ip(5), None)]
        );
    }
}
