//! The routes of one session as plain data: what the peer advertised and we accepted
//! (Adj-RIB-In, RFC 4271 §3.2), what we advertised to it (Adj-RIB-Out), the attributes we
//! attach, and the UPDATEs that carry a change.
//!
//! Owns import and export policy: a route is taken unless it loops back to us (our AS on an
//! external path, our identifier as ORIGINATOR_ID, our address as next hop); only our own
//! prefixes are exported, so routes learned from one internal peer never reach another (no
//! route reflection here). It must not do I/O or touch the kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::{
    prefix::Ipv4Prefix,
    update::{AsSegment, Origin, PathAttributes, SegmentKind, Update},
};

/// LOCAL_PREF on internal sessions (the customary default).
pub const DEFAULT_LOCAL_PREF: u32 = 100;
/// Prefixes per UPDATE: at 5 octets each at most, 500 of them and our attributes stay well
/// under the 4096-octet limit.
const PREFIXES_PER_UPDATE: usize = 500;

/// A change to the routes learned from one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// `prefix` is reachable via `next_hop` (new, or replacing an earlier next hop).
    Learned {
        /// The destination.
        prefix: Ipv4Prefix,
        /// Where to send its traffic.
        next_hop: Ipv4Addr,
    },
    /// `prefix` is no longer reachable through this peer.
    Withdrawn {
        /// The destination.
        prefix: Ipv4Prefix,
    },
}

/// Who we are, for deciding which received routes to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportPolicy {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP Identifier, which is also our address and next hop.
    pub router_id: Ipv4Addr,
    /// The session is internal (same AS).
    pub internal: bool,
}

impl ImportPolicy {
    /// The next hop to install for a received route, or `None` when the route must be
    /// ignored.
    fn accept(&self, attributes: &PathAttributes) -> Option<Ipv4Addr> {
        let next_hop = attributes.next_hop?;
        let looped = (!self.internal && attributes.path_contains(self.local_as))
            || attributes.originator_id == Some(self.router_id)
            // A next hop that is our own address is semantically wrong (RFC 4271 §6.3).
            || next_hop == self.router_id;
        (!looped).then_some(next_hop)
    }
}

/// The routes accepted from one peer: prefix → next hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdjRibIn {
    routes: BTreeMap<Ipv4Prefix, Ipv4Addr>,
}

impl AdjRibIn {
    /// Applies an UPDATE; returns what changed (nothing for a repeat of what we have).
    pub fn apply(&mut self, update: &Update, policy: &ImportPolicy) -> Vec<RouteChange> {
        let mut changes = Vec::new();
        for prefix in &update.withdrawn {
            if self.routes.remove(prefix).is_some() {
                changes.push(RouteChange::Withdrawn { prefix: *prefix });
            }
        }
        let accepted = policy.accept(&update.attributes);
        for prefix in &update.nlri {
            let prefix = *prefix;
            match accepted {
                Some(next_hop) => {
                    if self.routes.insert(prefix, next_hop) != Some(next_hop) {
                        changes.push(RouteChange::Learned { prefix, next_hop });
                    }
                }
                // An announcement we ignore still replaces what the peer said before.
                None => {
                    if self.routes.remove(&prefix).is_some() {
                        changes.push(RouteChange::Withdrawn { prefix });
                    }
                }
            }
        }
        changes
    }

    /// Forgets every route (the session went down); returns their withdrawals.
    pub fn clear(&mut self) -> Vec<RouteChange> {
        std::mem::take(&mut self.routes)
            .into_keys()
            .map(|prefix| RouteChange::Withdrawn { prefix })
            .collect()
    }

    /// The routes held.
    pub fn routes(&self) -> &BTreeMap<Ipv4Prefix, Ipv4Addr> {
        &self.routes
    }
}

/// The prefixes advertised to one peer on the current session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdjRibOut {
    sent: BTreeSet<Ipv4Prefix>,
}

/// Prefixes to announce and to withdraw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertisement {
    /// New prefixes.
    pub announce: Vec<Ipv4Prefix>,
    /// Prefixes no longer ours.
    pub withdraw: Vec<Ipv4Prefix>,
}

impl AdjRibOut {
    /// What to send so the peer has exactly `wanted`; records it as sent.
    pub fn advertise(&mut self, wanted: &BTreeSet<Ipv4Prefix>) -> Advertisement {
        let advertisement = Advertisement {
            announce: wanted.difference(&self.sent).copied().collect(),
            withdraw: self.sent.difference(wanted).copied().collect(),
        };
        self.sent.clone_from(wanted);
        advertisement
    }

    /// Forgets what was sent (a new session, or the peer asked for everything again).
    pub fn reset(&mut self) {
        self.sent.clear();
    }
}

/// The attributes of our own prefixes: ORIGIN IGP, an AS_PATH that is empty on internal
/// sessions and our AS on external ones, our address as NEXT_HOP, LOCAL_PREF 100 on internal
/// sessions only.
pub fn export_attributes(local_as: u32, internal: bool, next_hop: Ipv4Addr) -> PathAttributes {
    let as_path = if internal {
        Vec::new()
    } else {
        vec![AsSegment {
            kind: SegmentKind::Sequence,
            asns: vec![local_as],
        }]
    };
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(as_path),
        next_hop: Some(next_hop),
        local_pref: internal.then_some(DEFAULT_LOCAL_PREF),
        ..PathAttributes::default()
    }
}

/// The UPDATEs that carry `advertisement` with `attributes`, each within the size limit:
/// withdrawals first, then announcements.
pub fn updates_for(advertisement: &Advertisement, attributes: &PathAttributes) -> Vec<Update> {
    let withdrawals = advertisement
        .withdraw
        .chunks(PREFIXES_PER_UPDATE)
        .map(|chunk| Update {
            withdrawn: chunk.to_vec(),
            ..Update::default()
        });
    let announcements = advertisement
        .announce
        .chunks(PREFIXES_PER_UPDATE)
        .map(|chunk| Update {
            attributes: attributes.clone(),
            nlri: chunk.to_vec(),
            ..Update::default()
        });
    withdrawals.chain(announcements).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::bgp::message::{DecodeContext, Message};

    const US: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);

    fn prefix(s: &str) -> Ipv4Prefix {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn policy(internal: bool) -> ImportPolicy {
        ImportPolicy {
            local_as: 64512,
            router_id: US,
            internal,
        }
    }

    fn announce(prefixes: &[&str], attributes: PathAttributes) -> Update {
        Update {
            attributes,
            nlri: prefixes.iter().map(|p| prefix(p)).collect(),
            ..Update::default()
        }
    }

    #[test]
    fn learned_routes_are_reported_once_and_withdrawn_on_clear() {
        let mut rib = AdjRibIn::default();
        let attributes = export_attributes(64512, true, PEER);
        let update = announce(&["10.42.2.0/24", "10.42.9.0/24"], attributes.clone());
        let learned = rib.apply(&update, &policy(true));
        assert_eq!(
            learned,
            [
                RouteChange::Learned {
                    prefix: prefix("10.42.2.0/24"),
                    next_hop: PEER
                },
                RouteChange::Learned {
                    prefix: prefix("10.42.9.0/24"),
                    next_hop: PEER
                },
            ]
        );
        assert_eq!(rib.apply(&update, &policy(true)), []);
        let withdraw = Update {
            withdrawn: vec![prefix("10.42.9.0/24"), prefix("10.42.7.0/24")],
            ..Update::default()
        };
        assert_eq!(
            rib.apply(&withdraw, &policy(true)),
            [RouteChange::Withdrawn {
                prefix: prefix("10.42.9.0/24")
            }]
        );
        assert_eq!(
            rib.clear(),
            [RouteChange::Withdrawn {
                prefix: prefix("10.42.2.0/24")
            }]
        );
        assert!(rib.routes().is_empty());
    }

    #[test]
    fn routes_that_loop_back_to_us_are_ignored() {
        let mut rib = AdjRibIn::default();
        rib.apply(
            &announce(&["10.42.5.0/24"], export_attributes(65001, false, PEER)),
            &policy(false),
        );
        // Our AS in an external path: ignored, and it replaces the earlier announcement.
        let looped = export_attributes(64512, false, PEER);
        assert_eq!(
            rib.apply(&announce(&["10.42.5.0/24"], looped), &policy(false)),
            [RouteChange::Withdrawn {
                prefix: prefix("10.42.5.0/24")
            }]
        );
        // Reflected back to us by a route reflector, or with our own address as next hop.
        let reflected = PathAttributes {
            originator_id: Some(US),
            ..export_attributes(64512, true, PEER)
        };
        assert_eq!(
            rib.apply(&announce(&["10.42.1.0/24"], reflected), &policy(true)),
            []
        );
        let own_hop = export_attributes(64512, true, US);
        assert_eq!(
            rib.apply(&announce(&["10.42.1.0/24"], own_hop), &policy(true)),
            []
        );
        assert!(rib.routes().is_empty());
    }

    #[test]
    fn advertisements_follow_the_wanted_set() {
        let mut out = AdjRibOut::default();
        let wanted: BTreeSet<_> = [prefix("10.42.1.0/24")].into();
        assert_eq!(
            out.advertise(&wanted),
            Advertisement {
                announce: vec![prefix("10.42.1.0/24")],
                withdraw: vec![]
            }
        );
        assert_eq!(out.advertise(&wanted), Advertisement::default());
        let moved: BTreeSet<_> = [prefix("10.42.8.0/24")].into();
        assert_eq!(
            out.advertise(&moved),
            Advertisement {
                announce: vec![prefix("10.42.8.0/24")],
                withdraw: vec![prefix("10.42.1.0/24")]
            }
        );
        out.reset();
        assert_eq!(out.advertise(&moved).announce, [prefix("10.42.8.0/24")]);
    }

    #[test]
    fn exported_attributes_follow_the_session_kind() {
        let internal = export_attributes(64512, true, US);
        assert_eq!(internal.local_pref, Some(100));
        assert_eq!(internal.as_path, Some(vec![]));
        let external = export_attributes(64512, false, US);
        assert_eq!(external.local_pref, None);
        assert_eq!(external.first_as(), Some(64512));
        assert_eq!(external.next_hop, Some(US));
    }

    #[test]
    fn large_advertisements_split_into_messages_that_fit() {
        let many: Vec<Ipv4Prefix> = (0..1200u32)
            .map(|i| {
                Ipv4Prefix::new(Ipv4Addr::from(0x0a00_0000 | i << 8), 32)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let advertisement = Advertisement {
            announce: many.clone(),
            withdraw: many.clone(),
        };
        let updates = updates_for(&advertisement, &export_attributes(64512, true, US));
        assert_eq!(updates.len(), 6);
        let context = DecodeContext {
            four_octet_as: true,
        };
        let mut announced = 0;
        for update in updates {
            let wire = Message::Update(update.clone()).encode(context);
            assert!(wire.is_ok(), "{wire:?}");
            announced += update.nlri.len();
        }
        assert_eq!(announced, 1200);
    }
}
