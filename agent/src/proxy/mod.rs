//! The service proxy: Services and EndpointSlices become entries in the eBPF maps.
//!
//! Owns loading and attaching the programs embedded from `ebpf/` and writing their maps. It
//! must not decide policy in the kernel: the programs only read what this module writes.
//!
//! Compute, then apply: `desired` turns Services and EndpointSlices into plain data (what the
//! datapath should contain), `index` keeps that data between changes and recomputes only the
//! Services a change touches, `diff` compares that with what is applied and yields the minimal
//! ordered operations (with stable service ids and backend slots), `maglev` builds the
//! consistent-hashing tables; none of them touches the kernel. `maps` lowers operations to
//! map writes and reads the maps back after a restart, `socket_lb` loads and attaches the
//! programs and runs plan-then-apply, `tc_nat` loads and attaches the tc programs that NAT
//! traffic from outside the cluster (they read the same maps) and reads their counters,
//! `health` serves the healthCheckNodePorts, `metrics` keeps kube-proxy's sync metrics and the
//! tc counters for `/metrics`, and `controller` watches the API and drives it all.

pub mod controller;
pub mod desired;
pub mod diff;
pub mod health;
pub mod index;
pub mod maglev;
pub mod maps;
pub mod metrics;
mod object;
pub mod socket_lb;
pub mod tc_nat;

pub use socket_lb::{Protocol, SocketLb, SocketLbError};
