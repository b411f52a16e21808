//! What can be wrong with a received BGP message, and the NOTIFICATION each fault calls for
//! (RFC 4271 §4.5 and §6, RFC 6608 for FSM errors).
//!
//! Owns the mapping from a decoding fault to error code, subcode and data. It must not decide
//! what happens to the session; the FSM sends the NOTIFICATION and resets.
use std::net::Ipv4Addr;

use super::message::Notification;

/// NOTIFICATION error codes (RFC 4271 §4.5).
pub mod code {
    /// Message Header Error.
    pub const MESSAGE_HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN_MESSAGE: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE_MESSAGE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
}

/// Error subcodes, per error code.
pub mod subcode {
    /// Message Header Error: the marker is not all ones.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    /// Message Header Error: a length out of range for the message type.
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    /// Message Header Error: an unknown message type.
    pub const BAD_MESSAGE_TYPE: u8 = 3;

    /// OPEN Message Error: no more specific subcode applies.
    pub const OPEN_UNSPECIFIC: u8 = 0;
    /// OPEN Message Error: a version other than 4.
    pub const UNSUPPORTED_VERSION_NUMBER: u8 = 1;
    /// OPEN Message Error: the peer's AS is not the configured one.
    pub const BAD_PEER_AS: u8 = 2;
    /// OPEN Message Error: the BGP Identifier is not a usable unicast address.
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    /// OPEN Message Error: an optional parameter other than capabilities.
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    /// OPEN Message Error: a hold time of 1 or 2 seconds.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;

    /// UPDATE Message Error: lengths that do not add up, or a repeated attribute.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    /// UPDATE Message Error: a well-known attribute this speaker does not know.
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    /// UPDATE Message Error: ORIGIN, AS_PATH or NEXT_HOP missing next to NLRI.
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    /// UPDATE Message Error: flags that conflict with the attribute type.
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    /// UPDATE Message Error: a length that conflicts with the attribute type.
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    /// UPDATE Message Error: an undefined ORIGIN value.
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    /// UPDATE Message Error: a NEXT_HOP that is no unicast address.
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    /// UPDATE Message Error: a recognised optional attribute with a malformed value.
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    /// UPDATE Message Error: a prefix longer than 32 bits or cut short.
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    /// UPDATE Message Error: an AS_PATH that does not parse.
    pub const MALFORMED_AS_PATH: u8 = 11;

    /// FSM Error: a message other than OPEN or NOTIFICATION in OpenSent (RFC 6608).
    pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    /// FSM Error: a message other than KEEPALIVE or NOTIFICATION in OpenConfirm.
    pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    /// FSM Error: an OPEN in Established.
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;

    /// Cease: the session was shut down by configuration (RFC 4486).
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    /// Cease: the peer was removed from the configuration (RFC 4486).
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Cease: a connection closed by collision resolution (RFC 4271 §6.8).
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
}

/// A received message that must be answered with a NOTIFICATION and a reset. Each variant
/// maps to exactly one error code and subcode ([`MessageError::notification`]); `attribute`
/// fields hold the whole offending attribute (flags, type, length and value), which RFC 4271
/// puts in the NOTIFICATION's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The 16-octet marker is not all ones.
    #[error("message header marker is not all ones")]
    ConnectionNotSynchronized,
    /// The header's length is under 19, over 4096, or wrong for the message type.
    #[error("bad message length {length}")]
    BadMessageLength {
        /// The length field as received.
        length: u16,
    },
    /// The message type is none of OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE-REFRESH.
    #[error("bad message type {message_type}")]
    BadMessageType {
        /// The type octet as received.
        message_type: u8,
    },
    /// The OPEN's version is not 4.
    #[error("unsupported BGP version {version}")]
    UnsupportedVersion {
        /// The version the peer asked for.
        version: u8,
    },
    /// The OPEN's AS is not the one configured for this peer.
    #[error("peer AS {received} is not the configured {expected}")]
    BadPeerAs {
        /// The AS the peer announced (from the 4-octet AS capability when present).
        received: u32,
        /// The AS configured for the peer.
        expected: u32,
    },
    /// The BGP Identifier is not a unicast address, or is our own on an internal session.
    #[error("bad BGP identifier {identifier}")]
    BadBgpIdentifier {
        /// The identifier as received.
        identifier: Ipv4Addr,
    },
    /// An optional parameter other than Capabilities (type 2).
    #[error("unsupported optional parameter type {parameter_type}")]
    UnsupportedOptionalParameter {
        /// The parameter type.
        parameter_type: u8,
    },
    /// A hold time of 1 or 2 seconds.
    #[error("unacceptable hold time {hold_time} s")]
    UnacceptableHoldTime {
        /// The hold time as received.
        hold_time: u16,
    },
    /// The OPEN's optional parameters or capabilities do not parse.
    #[error("malformed OPEN optional parameters")]
    MalformedOpen,
    /// The UPDATE's lengths do not add up, or an attribute is cut short or repeated.
    #[error("malformed attribute list")]
    MalformedAttributeList,
    /// A well-known (non-optional) attribute type this speaker does not know.
    #[error("unrecognized well-known attribute")]
    UnrecognizedWellKnownAttribute {
        /// The attribute as received.
        attribute: Vec<u8>,
    },
    /// ORIGIN, AS_PATH or NEXT_HOP is missing from an UPDATE that carries NLRI.
    #[error("missing well-known attribute {type_code}")]
    MissingWellKnownAttribute {
        /// The type code of the missing attribute.
        type_code: u8,
    },
    /// The flags of a known attribute conflict with its type.
    #[error("attribute flags conflict with the attribute type")]
    AttributeFlags {
        /// The attribute as received.
        attribute: Vec<u8>,
    },
    /// A known attribute has the wrong length.
    #[error("attribute length conflicts with the attribute type")]
    AttributeLength {
        /// The attribute as received.
        attribute: Vec<u8>,
    },
    /// ORIGIN is not IGP, EGP or INCOMPLETE.
    #[error("invalid ORIGIN value")]
    InvalidOrigin {
        /// The attribute as received.
        attribute: Vec<u8>,
    },
    /// NEXT_HOP is not a unicast address.
    #[error("invalid NEXT_HOP")]
    InvalidNextHop {
        /// The attribute as received.
        attribute: Vec<u8>,
    },
    /// A recognised optional attribute with a malformed value.
    #[error("malformed optional attribute")]
    OptionalAttribute {
        /// The attribute as received.
        attribute: Vec<u8>,
    },
    /// A prefix in the NLRI or withdrawn-routes field is over 32 bits long or cut short.
    #[error("invalid network field")]
    InvalidNetworkField,
    /// The AS_PATH does not parse, or (on an external session) does not start with the
    /// peer's AS.
    #[error("malformed AS_PATH")]
    MalformedAsPath,
}

impl MessageError {
    /// The NOTIFICATION RFC 4271 §6 prescribes for this fault.
    pub fn notification(&self) -> Notification {
        use subcode::*;
        let (code, subcode, data) = match self {
            Self::ConnectionNotSynchronized => (
                code::MESSAGE_HEADER,
                CONNECTION_NOT_SYNCHRONIZED,
                Vec::new(),
            ),
            Self::BadMessageLength { length } => (
                code::MESSAGE_HEADER,
                BAD_MESSAGE_LENGTH,
                length.to_be_bytes().to_vec(),
            ),
            Self::BadMessageType { message_type } => {
                (code::MESSAGE_HEADER, BAD_MESSAGE_TYPE, vec![*message_type])
            }
            // The data is the largest version we support, as two octets.
            Self::UnsupportedVersion { .. } => (
                code::OPEN_MESSAGE,
                UNSUPPORTED_VERSION_NUMBER,
                vec![0, super::message::BGP_VERSION],
            ),
            Self::BadPeerAs { .. } => (code::OPEN_MESSAGE, BAD_PEER_AS, Vec::new()),
            Self::BadBgpIdentifier { .. } => (code::OPEN_MESSAGE, BAD_BGP_IDENTIFIER, Vec::new()),
            Self::UnsupportedOptionalParameter { .. } => (
                code::OPEN_MESSAGE,
                UNSUPPORTED_OPTIONAL_PARAMETER,
                Vec::new(),
            ),
            Self::UnacceptableHoldTime { .. } => {
                (code::OPEN_MESSAGE, UNACCEPTABLE_HOLD_TIME, Vec::new())
            }
            Self::MalformedOpen => (code::OPEN_MESSAGE, OPEN_UNSPECIFIC, Vec::new()),
            Self::MalformedAttributeList => {
                (code::UPDATE_MESSAGE, MALFORMED_ATTRIBUTE_LIST, Vec::new())
            }
            Self::UnrecognizedWellKnownAttribute { attribute } => (
                code::UPDATE_MESSAGE,
                UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                attribute.clone(),
            ),
            Self::MissingWellKnownAttribute { type_code } => (
                code::UPDATE_MESSAGE,
                MISSING_WELL_KNOWN_ATTRIBUTE,
                vec![*type_code],
            ),
            Self::AttributeFlags { attribute } => (
                code::UPDATE_MESSAGE,
                ATTRIBUTE_FLAGS_ERROR,
                attribute.clone(),
            ),
            Self::AttributeLength { attribute } => (
                code::UPDATE_MESSAGE,
                ATTRIBUTE_LENGTH_ERROR,
                attribute.clone(),
            ),
            Self::InvalidOrigin { attribute } => (
                code::UPDATE_MESSAGE,
                INVALID_ORIGIN_ATTRIBUTE,
                attribute.clone(),
            ),
            Self::InvalidNextHop { attribute } => (
                code::UPDATE_MESSAGE,
                INVALID_NEXT_HOP_ATTRIBUTE,
                attribute.clone(),
            ),
            Self::OptionalAttribute { attribute } => (
                code::UPDATE_MESSAGE,
                OPTIONAL_ATTRIBUTE_ERROR,
                attribute.clone(),
            ),
            Self::InvalidNetworkField => (code::UPDATE_MESSAGE, INVALID_NETWORK_FIELD, Vec::new()),
            Self::MalformedAsPath => (code::UPDATE_MESSAGE, MALFORMED_AS_PATH, Vec::new()),
        };
        Notification {
            code,
            subcode,
            data,
        }
    }
}

/// A message this speaker cannot put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message would exceed the 4096-octet maximum; send fewer prefixes per UPDATE.
    #[error("message of {length} octets exceeds the 4096-octet maximum")]
    TooLong {
        /// The length it would have had.
        length: usize,
    },
    /// Optional parameters or an attribute value longer than their length field allows.
    #[error("{what} of {length} octets does not fit its length field")]
    FieldTooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        length: usize,
    },
}
