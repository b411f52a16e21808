//! corten's node agent as a library: the binary `corten-agent` only parses flags and wires
//! these components together.
//!
//! Owns everything that runs on a node. It must never link the control plane: the agent is
//! a Kubernetes API client and meets the server only at the API (ARCHITECTURE.md).
//!
//! Today this holds the kubelet ([`kubelet`]: node registration, Lease, images, pods through
//! CRI with volumes, probes, hooks and graceful termination), its HTTPS API on :10250
//! ([`kubelet_api`]: logs, exec, attach, port-forward, healthz on :10248), the pod network
//! ([`network`]: CNI config, vxlan / host-gw routes, masquerade, the BGP speaker) and the
//! service proxy ([`proxy`]: Services and EndpointSlices programmed into the socket-LB and
//! tc programs' maps); [`watches`] wakes their control loops. Cluster DNS is still to come.

pub mod kubelet;
pub mod kubelet_api;
pub mod network;
pub mod proxy;
pub mod watches;
