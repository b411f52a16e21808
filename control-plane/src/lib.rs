//! corten's control plane as a library: store, API server, admission, scheduler,
//! controllers and PKI (DESIGN.md §4–§6). The binary `corten-server` wires them together.
//!
//! Owns the cluster state. It must never link the agent: the two meet only at the
//! Kubernetes API. Today it holds the datastore ([`store`]), the PKI ([`pki`]) and the
//! first part of the API server ([`apiserver`]).

pub mod apiserver;
pub mod client;
pub mod controllers;
pub mod pki;
pub mod scheduler;
pub mod store;
