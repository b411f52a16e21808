//! corten's BGP-4 speaker (RFC 4271) for the `bgp` pod network mode: an iBGP full mesh
//! between nodes plus configured external peers or route reflectors. Each node advertises
//! its pod CIDR; what the peers advertise comes out as [`speaker::RouteEvent`]s.
//!
//! Layout: [`prefix`], [`message`], [`update`] and [`error`] are the wire codec (no I/O);
//! [`fsm`] is the per-peer state machine as plain data (event in, actions out); [`session`]
//! is the thin async shell that runs one peer's FSM over a TCP connection; [`speaker`] owns
//! the listener, the peers and the local prefixes. This module must not touch the kernel:
//! installing learned routes is the caller's job.
pub mod error;
pub mod fsm;
pub mod message;
pub mod prefix;
pub mod rib;
mod session;
pub mod speaker;
#[cfg(test)]
mod tests;
pub mod update;

pub use prefix::Ipv4Prefix;
pub use speaker::{PeerConfig, RouteEvent, Speaker, SpeakerConfig, SpeakerError};
