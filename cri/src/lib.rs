//! The container runtime library: how corten talks to containerd.
//!
//! Owns the gRPC connection to containerd's socket, the CRI v1 client the kubelet drives
//! ([`runtime`]), reading OCI image-layout tarballs ([`oci`]) and importing them into
//! containerd's `k8s.io` namespace without a registry ([`import`]). It must not hold kubelet
//! policy (what to run, when to restart): that lives in the agent, which calls this crate.

#[cfg(feature = "grpc")]
pub mod import;
pub mod oci;
#[cfg(feature = "grpc")]
pub mod runtime;

/// The containerd namespace that CRI uses; images must be there for pods to use them.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Opens a gRPC channel to a containerd (or other CRI) unix socket.
#[cfg(feature = "grpc")]
pub async fn connect(
    socket: &std::path::Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    containerd_client::connect(socket).await
}
