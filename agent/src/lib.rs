//! corten's node agent as a library: the binary `corten-agent` only parses flags and wires
//! these components together.
//!
//! Owns everything that runs on a node. It must never link the control plane: the agent is
//! a Kubernetes API client and meets the server only at the API (ARCHITECTURE.md).
//!
//! Today this holds the service datapath's first piece, the socket-LB loader ([`proxy`]);
//! the kubelet, the pod network and cluster DNS are still to come (README status table).

pub mod proxy;
