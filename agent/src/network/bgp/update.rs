//! The UPDATE message (RFC 4271 §4.3, §5, §6.3): withdrawn IPv4 routes, path attributes
//! (ORIGIN, AS_PATH, NEXT_HOP, MULTI_EXIT_DISC, LOCAL_PREF, ATOMIC_AGGREGATE, ORIGINATOR_ID
//! from RFC 4456, and any optional transitive attribute kept as received) and IPv4 NLRI.
//!
//! Owns the UPDATE wire form and its syntactic checks, each mapped to its UPDATE Message
//! Error subcode. It must not judge routes (loops, our own next hop, the peer's first AS):
//! that is the session's business, which knows who the peer is.
use std::net::Ipv4Addr;

use super::{
    error::{EncodeError, MessageError},
    message::{DecodeContext, AS_TRANS},
    prefix::Ipv4Prefix,
};

/// Attribute flag: optional (else well-known).
pub const FLAG_OPTIONAL: u8 = 0x80;
/// Attribute flag: transitive.
pub const FLAG_TRANSITIVE: u8 = 0x40;
/// Attribute flag: partial (some speaker on the way did not recognise it).
pub const FLAG_PARTIAL: u8 = 0x20;
/// Attribute flag: the length field is two octets.
pub const FLAG_EXTENDED_LENGTH: u8 = 0x10;

/// Path attribute type codes.
pub mod attribute_type {
    /// ORIGIN (well-known mandatory).
    pub const ORIGIN: u8 = 1;
    /// AS_PATH (well-known mandatory).
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP (well-known mandatory).
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC (optional non-transitive).
    pub const MULTI_EXIT_DISC: u8 = 4;
    /// LOCAL_PREF (well-known, on internal sessions).
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE (well-known discretionary).
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// ORIGINATOR_ID (optional non-transitive, RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
}

/// Where the route came from (ORIGIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Interior to the originating AS.
    Igp,
    /// Learned through EGP.
    Egp,
    /// Learned some other way.
    Incomplete,
}

/// The kind of an AS_PATH segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// AS_SET (1): unordered.
    Set,
    /// AS_SEQUENCE (2): ordered, nearest AS first.
    Sequence,
    /// AS_CONFED_SEQUENCE (3, RFC 5065).
    ConfedSequence,
    /// AS_CONFED_SET (4, RFC 5065).
    ConfedSet,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSegment {
    /// Segment type.
    pub kind: SegmentKind,
    /// Its ASNs (1–255 on the wire; longer lists are split when encoding).
    pub asns: Vec<u32>,
}

/// A path attribute kept as received: an optional transitive one this speaker does not
/// interpret, passed on unchanged but for the Partial flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAttribute {
    /// Optional, transitive and partial flags (the extended-length flag is recomputed).
    pub flags: u8,
    /// Type code.
    pub type_code: u8,
    /// Value.
    pub value: Vec<u8>,
}

impl RawAttribute {
    /// The attribute as passed on to another peer: RFC 4271 §5 sets Partial on an optional
    /// transitive attribute the speaker did not recognise.
    pub fn passed_on(&self) -> Self {
        Self {
            flags: self.flags | FLAG_PARTIAL,
            ..self.clone()
        }
    }
}

/// The path attributes of an UPDATE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH segments (`Some(vec![])` is an empty path, as internal peers send).
    pub as_path: Option<Vec<AsSegment>>,
    /// NEXT_HOP.
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE present.
    pub atomic_aggregate: bool,
    /// ORIGINATOR_ID (set by route reflectors).
    pub originator_id: Option<Ipv4Addr>,
    /// Unrecognised optional transitive attributes, in the order received.
    pub transitive: Vec<RawAttribute>,
}

impl PathAttributes {
    /// The leftmost AS of the path: the neighbour that sent it, on an external session.
    pub fn first_as(&self) -> Option<u32> {
        let first = self.as_path.as_ref()?.first()?;
        match first.kind {
            SegmentKind::Sequence => first.asns.first().copied(),
            _ => None,
        }
    }

    /// Whether `asn` appears anywhere in the path (a loop, when it is ours).
    pub fn path_contains(&self, asn: u32) -> bool {
        self.as_path
            .iter()
            .flatten()
            .any(|segment| segment.asns.contains(&asn))
    }
}

/// An UPDATE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Routes no longer reachable.
    pub withdrawn: Vec<Ipv4Prefix>,
    /// Attributes of the routes in `nlri`.
    pub attributes: PathAttributes,
    /// Routes announced with `attributes`.
    pub nlri: Vec<Ipv4Prefix>,
}

/// What RFC 4271 expects of a known attribute.
struct Expected {
    optional: bool,
    transitive: bool,
    /// Exact value length, when fixed.
    len: Option<usize>,
}

fn expected(type_code: u8) -> Option<Expected> {
    use attribute_type::*;
    let (optional, transitive, len) = match type_code {
        ORIGIN => (false, true, Some(1)),
        AS_PATH => (false, true, None),
        NEXT_HOP | LOCAL_PREF => (false, true, Some(4)),
        ATOMIC_AGGREGATE => (false, true, Some(0)),
        MULTI_EXIT_DISC | ORIGINATOR_ID => (true, false, Some(4)),
        _ => return None,
    };
    Some(Expected {
        optional,
        transitive,
        len,
    })
}

impl Update {
    /// Decodes an UPDATE body (what follows the header).
    pub(crate) fn decode(body: &[u8], context: DecodeContext) -> Result<Self, MessageError> {
        let (withdrawn, rest) = split_counted(body).ok_or(MessageError::MalformedAttributeList)?;
        let (attributes, nlri) = split_counted(rest).ok_or(MessageError::MalformedAttributeList)?;
        let withdrawn =
            Ipv4Prefix::decode_all(withdrawn).ok_or(MessageError::InvalidNetworkField)?;
        let attributes = decode_attributes(attributes, context)?;
        let nlri = Ipv4Prefix::decode_all(nlri).ok_or(MessageError::InvalidNetworkField)?;
        if !nlri.is_empty() {
            let missing = [
                (attributes.origin.is_none(), attribute_type::ORIGIN),
                (attributes.as_path.is_none(), attribute_type::AS_PATH),
                (attributes.next_hop.is_none(), attribute_type::NEXT_HOP),
            ];
            if let Some((_, type_code)) = missing.into_iter().find(|(absent, _)| *absent) {
                return Err(MessageError::MissingWellKnownAttribute { type_code });
            }
        }
        Ok(Self {
            withdrawn,
            attributes,
            nlri,
        })
    }

    /// Appends the UPDATE body.
    pub(crate) fn encode(
        &self,
        context: DecodeContext,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let mut withdrawn = Vec::new();
        for prefix in &self.withdrawn {
            prefix.encode(&mut withdrawn);
        }
        let attributes = encode_attributes(&self.attributes, context)?;
        for (what, field) in [
            ("withdrawn routes", &withdrawn),
            ("path attributes", &attributes),
        ] {
            let len = u16::try_from(field.len()).map_err(|_| EncodeError::FieldTooLong {
                what,
                length: field.len(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        for prefix in &self.nlri {
            prefix.encode(out);
        }
        Ok(())
    }
}

/// Splits a field led by a 2-octet length off `data`; `None` when the length overruns.
fn split_counted(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn decode_attributes(
    mut data: &[u8],
    context: DecodeContext,
) -> Result<PathAttributes, MessageError> {
    let mut attributes = PathAttributes::default();
    let mut seen = [false; 256];
    while !data.is_empty() {
        let &[flags, type_code, ..] = data else {
            return Err(MessageError::MalformedAttributeList);
        };
        let header_len = if flags & FLAG_EXTENDED_LENGTH != 0 {
            4
        } else {
            3
        };
        let len = match data.get(2..header_len) {
            Some(&[len]) => usize::from(len),
            Some(&[high, low]) => usize::from(u16::from_be_bytes([high, low])),
            _ => return Err(MessageError::MalformedAttributeList),
        };
        let whole = data
            .get(..header_len + len)
            .ok_or(MessageError::MalformedAttributeList)?;
        let value = &whole[header_len..];
        data = &data[header_len + len..];
        if std::mem::replace(&mut seen[usize::from(type_code)], true) {
            return Err(MessageError::MalformedAttributeList);
        }
        let Some(expected) = expected(type_code) else {
            if flags & FLAG_OPTIONAL == 0 {
                return Err(MessageError::UnrecognizedWellKnownAttribute {
                    attribute: whole.to_vec(),
                });
            }
            // Unknown optional non-transitive attributes are quietly ignored (RFC 4271 §5).
            if flags & FLAG_TRANSITIVE != 0 {
                attributes.transitive.push(RawAttribute {
                    flags: flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE | FLAG_PARTIAL),
                    type_code,
                    value: value.to_vec(),
                });
            }
            continue;
        };
        let flags_conflict = (flags & FLAG_OPTIONAL != 0) != expected.optional
            || (flags & FLAG_TRANSITIVE != 0) != expected.transitive
            || (!expected.optional && flags & FLAG_PARTIAL != 0);
        if flags_conflict {
            return Err(MessageError::AttributeFlags {
                attribute: whole.to_vec(),
            });
        }
        if expected.len.is_some_and(|l| l != len) {
            return Err(MessageError::AttributeLength {
                attribute: whole.to_vec(),
            });
        }
        decode_known(type_code, value, whole, context, &mut attributes)?;
    }
    Ok(attributes)
}

/// Reads a known attribute whose flags and length were checked.
fn decode_known(
    type_code: u8,
    value: &[u8],
    whole: &[u8],
    context: DecodeContext,
    into: &mut PathAttributes,
) -> Result<(), MessageError> {
    let word = || value.first_chunk::<4>().map(|b| u32::from_be_bytes(*b));
    match type_code {
        attribute_type::ORIGIN => {
            into.origin = Some(match value.first() {
                Some(0) => Origin::Igp,
                Some(1) => Origin::Egp,
                Some(2) => Origin::Incomplete,
                _ => {
                    return Err(MessageError::InvalidOrigin {
                        attribute: whole.to_vec(),
                    })
                }
            });
        }
        attribute_type::AS_PATH => {
            into.as_path =
                Some(decode_as_path(value, context).ok_or(MessageError::MalformedAsPath)?);
        }
        attribute_type::NEXT_HOP => {
            let next_hop = word()
                .map(Ipv4Addr::from)
                .filter(|ip| !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()));
            into.next_hop = Some(next_hop.ok_or_else(|| MessageError::InvalidNextHop {
                attribute: whole.to_vec(),
            })?);
        }
        attribute_type::MULTI_EXIT_DISC => into.med = word(),
        attribute_type::LOCAL_PREF => into.local_pref = word(),
        attribute_type::ATOMIC_AGGREGATE => into.atomic_aggregate = true,
        attribute_type::ORIGINATOR_ID => {
            into.originator_id = Some(word().map(Ipv4Addr::from).ok_or_else(|| {
                MessageError::OptionalAttribute {
                    attribute: whole.to_vec(),
                }
            })?);
        }
        _ => {}
    }
    Ok(())
}

fn decode_as_path(mut value: &[u8], context: DecodeContext) -> Option<Vec<AsSegment>> {
    let width = if context.four_octet_as { 4 } else { 2 };
    let mut segments = Vec::new();
    while let Some((&[kind, count], rest)) = value.split_first_chunk::<2>() {
        let kind = match kind {
            1 => SegmentKind::Set,
            2 => SegmentKind::Sequence,
            3 => SegmentKind::ConfedSequence,
            4 => SegmentKind::ConfedSet,
            _ => return None,
        };
        // An empty segment is malformed too (RFC 7606 §7.2).
        if count == 0 {
            return None;
        }
        let octets = rest.get(..usize::from(count) * width)?;
        let asns = octets
            .chunks_exact(width)
            .map(|asn| asn.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
            .collect();
        segments.push(AsSegment { kind, asns });
        value = &rest[octets.len()..];
    }
    // A lone trailing octet is a segment header cut short.
    value.is_empty().then_some(segments)
}

fn encode_attributes(
    attributes: &PathAttributes,
    context: DecodeContext,
) -> Result<Vec<u8>, EncodeError> {
    use attribute_type::*;
    const WELL_KNOWN: u8 = FLAG_TRANSITIVE;
    const OPTIONAL: u8 = FLAG_OPTIONAL;
    let mut out = Vec::new();
    if let Some(origin) = attributes.origin {
        let value = match origin {
            Origin::Igp => 0,
            Origin::Egp => 1,
            Origin::Incomplete => 2,
        };
        push_attribute(&mut out, WELL_KNOWN, ORIGIN, &[value])?;
    }
    if let Some(path) = &attributes.as_path {
        push_attribute(
            &mut out,
            WELL_KNOWN,
            AS_PATH,
            &encode_as_path(path, context),
        )?;
    }
    if let Some(next_hop) = attributes.next_hop {
        push_attribute(&mut out, WELL_KNOWN, NEXT_HOP, &next_hop.octets())?;
    }
    if let Some(med) = attributes.med {
        push_attribute(&mut out, OPTIONAL, MULTI_EXIT_DISC, &med.to_be_bytes())?;
    }
    if let Some(local_pref) = attributes.local_pref {
        push_attribute(&mut out, WELL_KNOWN, LOCAL_PREF, &local_pref.to_be_bytes())?;
    }
    if attributes.atomic_aggregate {
        push_attribute(&mut out, WELL_KNOWN, ATOMIC_AGGREGATE, &[])?;
    }
    if let Some(originator) = attributes.originator_id {
        push_attribute(&mut out, OPTIONAL, ORIGINATOR_ID, &originator.octets())?;
    }
    for raw in &attributes.transitive {
        push_attribute(
            &mut out,
            raw.flags & !FLAG_EXTENDED_LENGTH,
            raw.type_code,
            &raw.value,
        )?;
    }
    Ok(out)
}

fn push_attribute(
    out: &mut Vec<u8>,
    flags: u8,
    type_code: u8,
    value: &[u8],
) -> Result<(), EncodeError> {
    match u8::try_from(value.len()) {
        Ok(len) => out.extend_from_slice(&[flags, type_code, len]),
        Err(_) => {
            let len = u16::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong {
                what: "path attribute",
                length: value.len(),
            })?;
            out.extend_from_slice(&[flags | FLAG_EXTENDED_LENGTH, type_code]);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    Ok(())
}

fn encode_as_path(path: &[AsSegment], context: DecodeContext) -> Vec<u8> {
    let mut out = Vec::new();
    for segment in path {
        let kind = match segment.kind {
            SegmentKind::Set => 1,
            SegmentKind::Sequence => 2,
            SegmentKind::ConfedSequence => 3,
            SegmentKind::ConfedSet => 4,
        };
        for chunk in segment.asns.chunks(usize::from(u8::MAX)) {
            out.push(kind);
            out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            for &asn in chunk {
                if context.four_octet_as {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let asn = u16::try_from(asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&asn.to_be_bytes());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::bgp::{
        error::{code, subcode},
        message::Message,
    };

    const FOUR: DecodeContext = DecodeContext {
        four_octet_as: true,
    };
    const TWO: DecodeContext = DecodeContext {
        four_octet_as: false,
    };

    fn prefix(s: &str) -> Ipv4Prefix {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn full_update() -> Update {
        Update {
            withdrawn: vec![prefix("10.42.9.0/24")],
            attributes: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(vec![
                    AsSegment {
                        kind: SegmentKind::Sequence,
                        asns: vec![65001, 4_200_000_001],
                    },
                    AsSegment {
                        kind: SegmentKind::Set,
                        asns: vec![65010, 65011],
                    },
                ]),
                next_hop: Some(Ipv4Addr::new(172, 30, 0, 2)),
                med: Some(50),
                local_pref: Some(100),
                atomic_aggregate: true,
                originator_id: Some(Ipv4Addr::new(172, 30, 0, 9)),
                transitive: vec![RawAttribute {
                    flags: FLAG_OPTIONAL | FLAG_TRANSITIVE,
                    type_code: 32,
                    value: vec![7; 300],
                }],
            },
            nlri: vec![prefix("10.42.1.0/24"), prefix("10.42.2.0/23")],
        }
    }

    /// An UPDATE with the given attribute bytes and one announced prefix.
    fn update_wire(attributes: &[u8], nlri: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 0];
        body.extend_from_slice(
            &u16::try_from(attributes.len())
                .unwrap_or_default()
                .to_be_bytes(),
        );
        body.extend_from_slice(attributes);
        body.extend_from_slice(nlri);
        let mut wire = vec![0xff; 16];
        wire.extend_from_slice(
            &u16::try_from(19 + body.len())
                .unwrap_or_default()
                .to_be_bytes(),
        );
        wire.push(2);
        wire.extend_from_slice(&body);
        wire
    }

    const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
    const EMPTY_PATH: [u8; 3] = [0x40, 2, 0];
    const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 10, 0, 0, 2];
    const NLRI: [u8; 4] = [24, 10, 42, 1];

    fn valid_attributes() -> Vec<u8> {
        [&ORIGIN_IGP[..], &EMPTY_PATH, &NEXT_HOP].concat()
    }

    fn error_of(wire: &[u8]) -> (u8, u8, Vec<u8>) {
        match Message::decode(wire, FOUR) {
            Ok(m) => panic!("decoded {m:?}"),
            Err(e) => {
                let n = e.notification();
                (n.code, n.subcode, n.data)
            }
        }
    }

    #[test]
    fn updates_round_trip_with_both_as_widths() {
        for context in [FOUR, TWO] {
            let mut update = full_update();
            if !context.four_octet_as {
                // 2-octet sessions carry AS_TRANS for a 4-octet AS.
                if let Some(path) = &mut update.attributes.as_path {
                    path[0].asns[1] = u32::from(AS_TRANS);
                }
            }
            let message = Message::Update(update);
            let wire = message.encode(context).unwrap_or_default();
            assert_eq!(Message::decode(&wire, context), Ok(message));
        }
        let empty = Message::Update(Update::default());
        let wire = empty.encode(FOUR).unwrap_or_default();
        assert_eq!(wire.len(), 23);
        assert_eq!(Message::decode(&wire, FOUR), Ok(empty));
    }

    #[test]
    fn unknown_attributes_pass_or_drop_by_their_flags() {
        let attributes = [
            &valid_attributes()[..],
            &[0xc0, 7, 6, 0, 0, 0xfd, 0xe9, 10, 0], // AGGREGATOR: optional transitive, kept
            &[0x80, 14, 2, 0, 1],                   // optional non-transitive: ignored
            &[0xe0, 99, 1, 5],                      // optional transitive partial: kept
        ]
        .concat();
        let Ok(Message::Update(update)) = Message::decode(&update_wire(&attributes, &NLRI), FOUR)
        else {
            panic!("not decoded");
        };
        let kept: Vec<(u8, u8)> = update
            .attributes
            .transitive
            .iter()
            .map(|a| (a.flags, a.type_code))
            .collect();
        assert_eq!(kept, [(0xc0, 7), (0xe0, 99)]);
        assert_eq!(update.attributes.transitive[0].passed_on().flags, 0xe0);
        assert_eq!(update.nlri, [prefix("10.42.1.0/24")]);
        assert_eq!(update.attributes.as_path, Some(vec![]));
    }

    #[test]
    fn update_errors_map_to_their_subcodes() {
        let u = code::UPDATE_MESSAGE;
        // Withdrawn length overruns the message; attribute length overruns.
        let mut overrun = update_wire(&valid_attributes(), &NLRI);
        overrun[19..21].copy_from_slice(&[0x10, 0]);
        assert_eq!(
            error_of(&overrun),
            (u, subcode::MALFORMED_ATTRIBUTE_LIST, vec![])
        );
        let mut overrun = update_wire(&valid_attributes(), &NLRI);
        overrun[21..23].copy_from_slice(&[0, 200]);
        assert_eq!(
            error_of(&overrun),
            (u, subcode::MALFORMED_ATTRIBUTE_LIST, vec![])
        );
        // An attribute cut short; a repeated attribute.
        let cut = [&valid_attributes()[..], &[0x40, 5, 4, 0]].concat();
        assert_eq!(
            error_of(&update_wire(&cut, &NLRI)).1,
            subcode::MALFORMED_ATTRIBUTE_LIST
        );
        let twice = [&valid_attributes()[..], &ORIGIN_IGP].concat();
        assert_eq!(
            error_of(&update_wire(&twice, &NLRI)).1,
            subcode::MALFORMED_ATTRIBUTE_LIST
        );
        // Unknown well-known attribute: the data is the attribute.
        let unknown = [&valid_attributes()[..], &[0x40, 99, 1, 5]].concat();
        assert_eq!(
            error_of(&update_wire(&unknown, &NLRI)),
            (
                u,
                subcode::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                vec![0x40, 99, 1, 5]
            )
        );
        // Missing ORIGIN, AS_PATH, NEXT_HOP in turn: the data is the type code.
        for (missing, attributes) in [
            (1u8, [&EMPTY_PATH[..], &NEXT_HOP].concat()),
            (2, [&ORIGIN_IGP[..], &NEXT_HOP].concat()),
            (3, [&ORIGIN_IGP[..], &EMPTY_PATH].concat()),
        ] {
            assert_eq!(
                error_of(&update_wire(&attributes, &NLRI)),
                (u, subcode::MISSING_WELL_KNOWN_ATTRIBUTE, vec![missing])
            );
            // Without NLRI nothing is missing.
            assert!(Message::decode(&update_wire(&attributes, &[]), FOUR).is_ok());
        }
        // ORIGIN marked optional; MED marked well-known.
        let flags = [&[0xc0, 1, 1, 0][..], &EMPTY_PATH, &NEXT_HOP].concat();
        assert_eq!(
            error_of(&update_wire(&flags, &NLRI)),
            (u, subcode::ATTRIBUTE_FLAGS_ERROR, vec![0xc0, 1, 1, 0])
        );
        let flags = [&valid_attributes()[..], &[0x40, 4, 4, 0, 0, 0, 1]].concat();
        assert_eq!(
            error_of(&update_wire(&flags, &NLRI)).1,
            subcode::ATTRIBUTE_FLAGS_ERROR
        );
        // NEXT_HOP of 3 octets; LOCAL_PREF of 2.
        let short = [&ORIGIN_IGP[..], &EMPTY_PATH, &[0x40, 3, 3, 10, 0, 0]].concat();
        assert_eq!(
            error_of(&update_wire(&short, &NLRI)),
            (
                u,
                subcode::ATTRIBUTE_LENGTH_ERROR,
                vec![0x40, 3, 3, 10, 0, 0]
            )
        );
        let short = [&valid_attributes()[..], &[0x40, 5, 2, 0, 100]].concat();
        assert_eq!(
            error_of(&update_wire(&short, &NLRI)).1,
            subcode::ATTRIBUTE_LENGTH_ERROR
        );
        // ORIGIN 3.
        let origin = [&[0x40, 1, 1, 3][..], &EMPTY_PATH, &NEXT_HOP].concat();
        assert_eq!(
            error_of(&update_wire(&origin, &NLRI)),
            (u, subcode::INVALID_ORIGIN_ATTRIBUTE, vec![0x40, 1, 1, 3])
        );
        // NEXT_HOP 0.0.0.0 and 224.0.0.1.
        for hop in [[0, 0, 0, 0], [224, 0, 0, 1]] {
            let attribute = [&[0x40, 3, 4][..], &hop].concat();
            let next_hop = [&ORIGIN_IGP[..], &EMPTY_PATH, &attribute].concat();
            assert_eq!(
                error_of(&update_wire(&next_hop, &NLRI)),
                (u, subcode::INVALID_NEXT_HOP_ATTRIBUTE, attribute)
            );
        }
        // NLRI and withdrawn routes with a /33 or cut short.
        for nlri in [&[33u8, 10, 0, 0, 0, 0][..], &[24, 10, 42]] {
            assert_eq!(
                error_of(&update_wire(&valid_attributes(), nlri)),
                (u, subcode::INVALID_NETWORK_FIELD, vec![])
            );
        }
        let mut withdrawn = update_wire(&[], &[]);
        withdrawn.splice(19..21, [0, 2, 40, 1]);
        withdrawn[17] += 2;
        assert_eq!(error_of(&withdrawn).1, subcode::INVALID_NETWORK_FIELD);
        // AS_PATH: bad segment type, count overrunning the value, empty segment, stray octet.
        for path in [
            &[0x40, 2, 6, 7, 1, 0, 0, 0xfd, 0xe9][..],
            &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe9],
            &[0x40, 2, 2, 2, 0],
            &[0x40, 2, 7, 2, 1, 0, 0, 0xfd, 0xe9, 2],
        ] {
            let attributes = [&ORIGIN_IGP[..], path, &NEXT_HOP].concat();
            assert_eq!(
                error_of(&update_wire(&attributes, &NLRI)),
                (u, subcode::MALFORMED_AS_PATH, vec![]),
                "{path:?}"
            );
        }
    }

    #[test]
    fn path_helpers_read_the_first_as_and_loops() {
        let attributes = full_update().attributes;
        assert_eq!(attributes.first_as(), Some(65001));
        assert!(attributes.path_contains(65011));
        assert!(!attributes.path_contains(64512));
        assert_eq!(PathAttributes::default().first_as(), None);
    }
}
