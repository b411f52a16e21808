//! BGP-4 messages on the wire (RFC 4271 §4): the 19-octet header, OPEN with capabilities
//! (RFC 5492: multiprotocol RFC 4760, route refresh RFC 2918, 4-octet AS RFC 6793),
//! NOTIFICATION, KEEPALIVE and ROUTE-REFRESH; UPDATE lives in [`super::update`].
//!
//! Owns encoding and decoding only. Decoding never panics and never trusts a length: every
//! fault is a [`MessageError`] that says which NOTIFICATION to send. It must not hold session
//! state; what the peer negotiated comes in as a [`DecodeContext`].
use std::net::Ipv4Addr;

use super::{
    error::{EncodeError, MessageError},
    update::Update,
};

/// The well-known BGP port.
pub const BGP_PORT: u16 = 179;
/// The only version spoken.
pub const BGP_VERSION: u8 = 4;
/// Octets in the message header: marker, length, type.
pub const HEADER_LEN: usize = 19;
/// The largest message RFC 4271 allows.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The 2-octet stand-in for a 4-octet AS (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// Address family IPv4 (RFC 4760).
pub const AFI_IPV4: u16 = 1;
/// Subsequent address family unicast (RFC 4760).
pub const SAFI_UNICAST: u8 = 1;

const OPEN_MIN_LEN: usize = 29;
const UPDATE_MIN_LEN: usize = 23;
const NOTIFICATION_MIN_LEN: usize = 21;
const ROUTE_REFRESH_LEN: usize = 23;

/// Message type codes.
mod message_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// The OPEN optional parameter that carries capabilities (RFC 5492).
const PARAM_CAPABILITIES: u8 = 2;

/// Capability codes.
mod capability_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// What the session negotiated that changes how messages decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeContext {
    /// Both sides advertised the 4-octet AS capability: AS_PATH carries 4-octet ASNs.
    pub four_octet_as: bool,
}

/// One BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN (type 1).
    Open(Open),
    /// UPDATE (type 2).
    Update(Update),
    /// NOTIFICATION (type 3).
    Notification(Notification),
    /// KEEPALIVE (type 4).
    Keepalive,
    /// ROUTE-REFRESH (type 5, RFC 2918).
    RouteRefresh(RouteRefresh),
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The sender's AS: from the 4-octet AS capability when present, else the My AS field.
    /// Encoding puts [`AS_TRANS`] in My AS when it is over 65535, so such an AS must also be
    /// in a [`Capability::FourOctetAs`].
    pub asn: u32,
    /// Proposed hold time, seconds: 0 or at least 3.
    pub hold_time: u16,
    /// The sender's BGP Identifier.
    pub router_id: Ipv4Addr,
    /// Advertised capabilities, in order.
    pub capabilities: Vec<Capability>,
}

/// A capability advertised in an OPEN (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions for one AFI/SAFI (RFC 4760, code 1).
    Multiprotocol {
        /// Address family.
        afi: u16,
        /// Subsequent address family.
        safi: u8,
    },
    /// Route refresh (RFC 2918, code 2).
    RouteRefresh,
    /// 4-octet AS numbers, with the sender's AS (RFC 6793, code 65).
    FourOctetAs(u32),
    /// Any other capability, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

/// A NOTIFICATION message: the reason the sender is closing the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code ([`super::error::code`]).
    pub code: u8,
    /// Error subcode ([`super::error::subcode`]).
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Vec<u8>,
}

/// A ROUTE-REFRESH message: the peer asks for our routes of one AFI/SAFI again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// Address family.
    pub afi: u16,
    /// Subsequent address family.
    pub safi: u8,
}

impl Open {
    /// The AS from the 4-octet AS capability, when advertised.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// Whether the route refresh capability is advertised.
    pub fn supports_route_refresh(&self) -> bool {
        self.capabilities.contains(&Capability::RouteRefresh)
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {} subcode {}", self.code, self.subcode)?;
        if !self.data.is_empty() {
            write!(f, " data {:02x?}", self.data)?;
        }
        Ok(())
    }
}

/// Whether `buf` starts with a complete message, and how long it is: `Ok(None)` while fewer
/// octets than the header's length have arrived. Checks the marker and the length bounds so
/// a stream reader never waits for, or buffers, more than [`MAX_MESSAGE_LEN`] octets.
pub fn frame_length(buf: &[u8]) -> Result<Option<usize>, MessageError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    if header[..16].iter().any(|&b| b != 0xff) {
        return Err(MessageError::ConnectionNotSynchronized);
    }
    let length = u16::from_be_bytes([header[16], header[17]]);
    let len = usize::from(length);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(MessageError::BadMessageLength { length });
    }
    Ok((buf.len() >= len).then_some(len))
}

impl Message {
    /// Decodes one whole message (header included). `frame` must be exactly as long as the
    /// header's length field says.
    pub fn decode(frame: &[u8], context: DecodeContext) -> Result<Self, MessageError> {
        let Some(len) = frame_length(frame)? else {
            let length = u16::try_from(frame.len()).unwrap_or(u16::MAX);
            return Err(MessageError::BadMessageLength { length });
        };
        let length = u16::try_from(len).unwrap_or(u16::MAX);
        if frame.len() != len {
            return Err(MessageError::BadMessageLength { length });
        }
        let kind = frame[18];
        let body = &frame[HEADER_LEN..];
        let bad_length = Err(MessageError::BadMessageLength { length });
        match kind {
            message_type::OPEN if len < OPEN_MIN_LEN => bad_length,
            message_type::OPEN => decode_open(body).map(Self::Open),
            message_type::UPDATE if len < UPDATE_MIN_LEN => bad_length,
            message_type::UPDATE => Update::decode(body, context).map(Self::Update),
            message_type::NOTIFICATION if len < NOTIFICATION_MIN_LEN => bad_length,
            message_type::NOTIFICATION => Ok(Self::Notification(Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            })),
            message_type::KEEPALIVE if len != HEADER_LEN => bad_length,
            message_type::KEEPALIVE => Ok(Self::Keepalive),
            message_type::ROUTE_REFRESH if len != ROUTE_REFRESH_LEN => bad_length,
            message_type::ROUTE_REFRESH => Ok(Self::RouteRefresh(RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            })),
            message_type => Err(MessageError::BadMessageType { message_type }),
        }
    }

    /// Encodes the whole message, header included; 4-octet ASNs in AS_PATH when
    /// `context.four_octet_as`.
    pub fn encode(&self, context: DecodeContext) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![0xff; 16];
        out.extend_from_slice(&[0, 0]);
        match self {
            Self::Open(open) => {
                out.push(message_type::OPEN);
                encode_open(open, &mut out)?;
            }
            Self::Update(update) => {
                out.push(message_type::UPDATE);
                update.encode(context, &mut out)?;
            }
            Self::Notification(n) => {
                out.push(message_type::NOTIFICATION);
                out.extend_from_slice(&[n.code, n.subcode]);
                out.extend_from_slice(&n.data);
            }
            Self::Keepalive => out.push(message_type::KEEPALIVE),
            Self::RouteRefresh(r) => {
                out.push(message_type::ROUTE_REFRESH);
                out.extend_from_slice(&r.afi.to_be_bytes());
                out.extend_from_slice(&[0, r.safi]);
            }
        }
        let length = u16::try_from(out.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_MESSAGE_LEN)
            .ok_or(EncodeError::TooLong { length: out.len() })?;
        out[16..18].copy_from_slice(&length.to_be_bytes());
        Ok(out)
    }
}

fn decode_open(body: &[u8]) -> Result<Open, MessageError> {
    // The caller checked the minimum length: 10 fixed octets follow the header.
    let version = body[0];
    if version != BGP_VERSION {
        return Err(MessageError::UnsupportedVersion { version });
    }
    let my_as = u16::from_be_bytes([body[1], body[2]]);
    let hold_time = u16::from_be_bytes([body[3], body[4]]);
    let router_id = Ipv4Addr::new(body[5], body[6], body[7], body[8]);
    let params_len = usize::from(body[9]);
    let params = &body[10..];
    if params.len() != params_len {
        return Err(MessageError::MalformedOpen);
    }
    let capabilities = decode_optional_parameters(params)?;
    if hold_time == 1 || hold_time == 2 {
        return Err(MessageError::UnacceptableHoldTime { hold_time });
    }
    // RFC 6286: any non-zero 4-octet value is a valid identifier.
    if router_id.is_unspecified() {
        return Err(MessageError::BadBgpIdentifier {
            identifier: router_id,
        });
    }
    let mut open = Open {
        asn: u32::from(my_as),
        hold_time,
        router_id,
        capabilities,
    };
    if let Some(asn) = open.four_octet_as() {
        open.asn = asn;
    }
    Ok(open)
}

fn decode_optional_parameters(mut params: &[u8]) -> Result<Vec<Capability>, MessageError> {
    let mut capabilities = Vec::new();
    while let Some((&parameter_type, rest)) = params.split_first() {
        let (&len, rest) = rest.split_first().ok_or(MessageError::MalformedOpen)?;
        let value = rest
            .get(..usize::from(len))
            .ok_or(MessageError::MalformedOpen)?;
        if parameter_type != PARAM_CAPABILITIES {
            return Err(MessageError::UnsupportedOptionalParameter { parameter_type });
        }
        decode_capabilities(value, &mut capabilities)?;
        params = &rest[usize::from(len)..];
    }
    Ok(capabilities)
}

fn decode_capabilities(mut value: &[u8], into: &mut Vec<Capability>) -> Result<(), MessageError> {
    while let Some((&code, rest)) = value.split_first() {
        let (&len, rest) = rest.split_first().ok_or(MessageError::MalformedOpen)?;
        let body = rest
            .get(..usize::from(len))
            .ok_or(MessageError::MalformedOpen)?;
        let capability = match (code, body) {
            (capability_code::MULTIPROTOCOL, &[a, b, _reserved, safi]) => {
                Capability::Multiprotocol {
                    afi: u16::from_be_bytes([a, b]),
                    safi,
                }
            }
            (capability_code::ROUTE_REFRESH, &[]) => Capability::RouteRefresh,
            (capability_code::FOUR_OCTET_AS, &[a, b, c, d]) => {
                Capability::FourOctetAs(u32::from_be_bytes([a, b, c, d]))
            }
            (
                capability_code::MULTIPROTOCOL
                | capability_code::ROUTE_REFRESH
                | capability_code::FOUR_OCTET_AS,
                _,
            ) => return Err(MessageError::MalformedOpen),
            (code, value) => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        };
        into.push(capability);
        value = &rest[usize::from(len)..];
    }
    Ok(())
}

fn encode_open(open: &Open, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(BGP_VERSION);
    let my_as = u16::try_from(open.asn).unwrap_or(AS_TRANS);
    out.extend_from_slice(&my_as.to_be_bytes());
    out.extend_from_slice(&open.hold_time.to_be_bytes());
    out.extend_from_slice(&open.router_id.octets());
    let mut capabilities = Vec::new();
    for capability in &open.capabilities {
        let (code, value) = match capability {
            Capability::Multiprotocol { afi, safi } => {
                let [a, b] = afi.to_be_bytes();
                (capability_code::MULTIPROTOCOL, vec![a, b, 0, *safi])
            }
            Capability::RouteRefresh => (capability_code::ROUTE_REFRESH, Vec::new()),
            Capability::FourOctetAs(asn) => {
                (capability_code::FOUR_OCTET_AS, asn.to_be_bytes().to_vec())
            }
            Capability::Unknown { code, value } => (*code, value.clone()),
        };
        let len = u8::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong {
            what: "capability",
            length: value.len(),
        })?;
        capabilities.extend_from_slice(&[code, len]);
        capabilities.extend_from_slice(&value);
    }
    if capabilities.is_empty() {
        out.push(0);
        return Ok(());
    }
    let too_long = |length| EncodeError::FieldTooLong {
        what: "optional parameters",
        length,
    };
    let cap_len = u8::try_from(capabilities.len()).map_err(|_| too_long(capabilities.len()))?;
    let params_len =
        u8::try_from(capabilities.len() + 2).map_err(|_| too_long(capabilities.len() + 2))?;
    out.extend_from_slice(&[params_len, PARAM_CAPABILITIES, cap_len]);
    out.extend_from_slice(&capabilities);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::bgp::error::{code, subcode};

    const CTX: DecodeContext = DecodeContext {
        four_octet_as: true,
    };

    fn roundtrip(message: &Message) -> Message {
        let wire = message
            .encode(CTX)
            .unwrap_or_else(|e| panic!("{message:?}: {e}"));
        assert_eq!(frame_length(&wire), Ok(Some(wire.len())));
        Message::decode(&wire, CTX).unwrap_or_else(|e| panic!("{message:?}: {e}"))
    }

    fn open(asn: u32, capabilities: Vec<Capability>) -> Open {
        Open {
            asn,
            hold_time: 90,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            capabilities,
        }
    }

    fn notification_of(wire: &[u8]) -> (u8, u8, Vec<u8>) {
        match Message::decode(wire, CTX) {
            Ok(m) => panic!("decoded {m:?}"),
            Err(e) => {
                let n = e.notification();
                (n.code, n.subcode, n.data)
            }
        }
    }

    fn with_header(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut wire = vec![0xff; 16];
        let len = u16::try_from(HEADER_LEN + body.len()).unwrap_or(u16::MAX);
        wire.extend_from_slice(&len.to_be_bytes());
        wire.push(kind);
        wire.extend_from_slice(body);
        wire
    }

    #[test]
    fn simple_messages_round_trip() {
        for message in [
            Message::Keepalive,
            Message::Notification(Notification {
                code: 6,
                subcode: 2,
                data: b"bye".to_vec(),
            }),
            Message::RouteRefresh(RouteRefresh { afi: 1, safi: 1 }),
            Message::Open(open(
                64512,
                vec![
                    Capability::Multiprotocol { afi: 1, safi: 1 },
                    Capability::RouteRefresh,
                    Capability::FourOctetAs(64512),
                    Capability::Unknown {
                        code: 64,
                        value: vec![0x40, 0x78],
                    },
                ],
            )),
            Message::Open(open(65001, Vec::new())),
        ] {
            assert_eq!(roundtrip(&message), message);
        }
        assert_eq!(
            Message::Keepalive.encode(CTX).unwrap_or_default(),
            with_header(4, &[])
        );
    }

    #[test]
    fn large_as_travels_as_as_trans_with_the_capability() {
        let message = Message::Open(open(
            4_200_000_000,
            vec![Capability::FourOctetAs(4_200_000_000)],
        ));
        let wire = message.encode(CTX).unwrap_or_default();
        assert_eq!(&wire[20..22], &AS_TRANS.to_be_bytes());
        assert_eq!(roundtrip(&message), message);
        // Without the capability only AS_TRANS is left.
        let bare = Message::Open(open(4_200_000_000, Vec::new()));
        let Message::Open(decoded) = roundtrip(&bare) else {
            panic!("not an OPEN")
        };
        assert_eq!(decoded.asn, u32::from(AS_TRANS));
    }

    #[test]
    fn open_wire_form_matches_rfc_layout() {
        let message = Message::Open(open(
            64512,
            vec![
                Capability::Multiprotocol { afi: 1, safi: 1 },
                Capability::FourOctetAs(64512),
            ],
        ));
        let wire = message.encode(CTX).unwrap_or_default();
        let expected_body = [
            4, 0xfc, 0x00, 0, 90, 10, 0, 0, 1, // version, AS, hold, id
            14, 2, 12, // params length, capabilities parameter, its length
            1, 4, 0, 1, 0, 1, // multiprotocol IPv4 unicast
            65, 4, 0, 0, 0xfc, 0x00, // 4-octet AS
        ];
        assert_eq!(wire, with_header(1, &expected_body));
    }

    #[test]
    fn header_errors_map_to_code_1() {
        let mut bad_marker = Message::Keepalive.encode(CTX).unwrap_or_default();
        bad_marker[3] = 0;
        assert_eq!(
            notification_of(&bad_marker),
            (
                code::MESSAGE_HEADER,
                subcode::CONNECTION_NOT_SYNCHRONIZED,
                vec![]
            )
        );
        let mut long = with_header(4, &[]);
        long[16..18].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(
            notification_of(&long),
            (
                code::MESSAGE_HEADER,
                subcode::BAD_MESSAGE_LENGTH,
                vec![0x13, 0x88]
            )
        );
        assert_eq!(
            frame_length(&long),
            Err(MessageError::BadMessageLength { length: 5000 })
        );
        // A KEEPALIVE with a body, a short OPEN, a short NOTIFICATION, a short UPDATE.
        for (kind, body) in [
            (4u8, &[0u8][..]),
            (1, &[4, 0, 1][..]),
            (3, &[6][..]),
            (2, &[0, 0][..]),
        ] {
            let wire = with_header(kind, body);
            let length = u16::try_from(wire.len()).unwrap_or_default();
            assert_eq!(
                notification_of(&wire),
                (
                    code::MESSAGE_HEADER,
                    subcode::BAD_MESSAGE_LENGTH,
                    length.to_be_bytes().to_vec()
                ),
                "type {kind}"
            );
        }
        assert_eq!(
            notification_of(&with_header(9, &[])),
            (code::MESSAGE_HEADER, subcode::BAD_MESSAGE_TYPE, vec![9])
        );
        assert_eq!(
            notification_of(&with_header(5, &[0, 1, 0])),
            (
                code::MESSAGE_HEADER,
                subcode::BAD_MESSAGE_LENGTH,
                vec![0, 22]
            )
        );
        // Incomplete input is never read past its end.
        assert_eq!(frame_length(&[0xff; 10]), Ok(None));
        assert!(Message::decode(&[0xff; 10], CTX).is_err());
        assert!(Message::decode(&[], CTX).is_err());
    }

    #[test]
    fn open_errors_map_to_code_2() {
        let valid = Message::Open(open(64512, vec![Capability::FourOctetAs(64512)]))
            .encode(CTX)
            .unwrap_or_default();
        let mutate = |at: usize, bytes: &[u8]| {
            let mut wire = valid.clone();
            wire[at..at + bytes.len()].copy_from_slice(bytes);
            wire
        };
        assert_eq!(
            notification_of(&mutate(19, &[3])),
            (
                code::OPEN_MESSAGE,
                subcode::UNSUPPORTED_VERSION_NUMBER,
                vec![0, 4]
            )
        );
        assert_eq!(
            notification_of(&mutate(22, &[0, 2])),
            (code::OPEN_MESSAGE, subcode::UNACCEPTABLE_HOLD_TIME, vec![])
        );
        assert_eq!(
            notification_of(&mutate(24, &[0, 0, 0, 0])),
            (code::OPEN_MESSAGE, subcode::BAD_BGP_IDENTIFIER, vec![])
        );
        // Optional parameter type 1 (authentication, long deprecated).
        assert_eq!(
            notification_of(&mutate(29, &[1])),
            (
                code::OPEN_MESSAGE,
                subcode::UNSUPPORTED_OPTIONAL_PARAMETER,
                vec![]
            )
        );
        // Parameters length longer than what follows; a capability cut short.
        assert_eq!(
            notification_of(&mutate(28, &[9])).1,
            subcode::OPEN_UNSPECIFIC
        );
        assert_eq!(
            notification_of(&mutate(30, &[7])).1,
            subcode::OPEN_UNSPECIFIC
        );
        // The 4-octet AS capability with a wrong length.
        assert_eq!(notification_of(&mutate(32, &[3])).0, code::OPEN_MESSAGE);
    }

    /// A deterministic stand-in for the fuzz target, run with every `cargo test`: valid
    /// messages with bytes flipped, dropped and appended never panic, and whatever decodes
    /// re-encodes to itself.
    #[test]
    fn mutated_messages_never_panic_and_round_trip() {
        use crate::network::bgp::update::{Origin, PathAttributes, Update};
        let seeds: Vec<Vec<u8>> = [
            Message::Open(open(
                70000,
                vec![Capability::FourOctetAs(70000), Capability::RouteRefresh],
            )),
            Message::Keepalive,
            Message::Update(Update {
                attributes: PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(vec![]),
                    next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
                    local_pref: Some(100),
                    ..PathAttributes::default()
                },
                nlri: vec!["10.42.1.0/24".parse().unwrap_or_else(|e| panic!("{e}"))],
                ..Update::default()
            }),
        ]
        .iter()
        .map(|m| m.encode(CTX).unwrap_or_default())
        .collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded = 0;
        for round in 0..30_000 {
            let mut wire = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 4 + 1) {
                let at = usize::try_from(next() % 64).unwrap_or(0);
                match next() % 3 {
                    0 if at < wire.len() => wire[at] = (next() & 0xff) as u8,
                    1 if at < wire.len() => {
                        wire.remove(at);
                    }
                    _ => wire.push((next() & 0xff) as u8),
                }
            }
            for context in [CTX, DecodeContext::default()] {
                if let Ok(message) = Message::decode(&wire, context) {
                    decoded += 1;
                    let again = message.encode(context).unwrap_or_default();
                    assert_eq!(Message::decode(&again, context), Ok(message), "{wire:02x?}");
                }
            }
        }
        assert!(decoded > 100, "only {decoded} mutants decoded");
    }
}
