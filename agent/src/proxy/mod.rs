//! The service proxy: Services and EndpointSlices become entries in the eBPF maps.
//!
//! Owns loading and attaching the programs embedded from `ebpf/` and writing their maps. It
//! must not decide policy in the kernel: the programs only read what this module writes.

mod object;
pub mod socket_lb;

pub use socket_lb::{Protocol, SocketLb, SocketLbError};
