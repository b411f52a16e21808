//! corten's node agent as a library: the binary `corten-agent` only parses flags and wires
//! these components together.
//!
//! Owns everything that runs on a node. It must never link the control plane: the agent is
//! a Kubernetes API client and meets the server only at the API (ARCHITECTURE.md).
//!
//! Today this holds the kubelet ([`kubelet`]: node registration, Lease, images, pods through
//! CRI; [`kubelet_api`]: its HTTPS API on :10250 with logs, exec, attach and port-forward), the
//! CNI config writer ([`network`]) and the service datapath's first piece, the
//! socket-LB loader ([`proxy`]); cluster DNS and routes between nodes are still to come.

pub mod kubelet;
pub mod kubelet_api;
pub mod network;
pub mod proxy;
