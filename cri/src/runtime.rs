//! The CRI v1 client: the runtime and image services on one channel.
//!
//! A thin typed handle over the generated `k8s-cri` clients; it adds the connection and
//! errors that name the socket, and nothing the kubelet should decide.
use std::path::{Path, PathBuf};

use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    VersionRequest, VersionResponse,
};
use tonic::transport::Channel;

/// Failures talking CRI.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be reached (retryable: the runtime may still be starting).
    #[error("connecting to the CRI socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered a call with an error.
    #[error("CRI {call}: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

/// A CRI v1 client for one runtime socket.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the runtime's unix socket.
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        let channel = crate::connect(socket)
            .await
            .map_err(|source| CriError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The runtime service (sandboxes, containers, exec, status).
    pub fn runtime(&mut self) -> &mut RuntimeServiceClient<Channel> {
        &mut self.runtime
    }

    /// The image service (list, status, pull, remove, filesystem info).
    pub fn images(&mut self) -> &mut ImageServiceClient<Channel> {
        &mut self.images
    }

    /// The runtime's name and versions; the cheapest call that proves CRI is serving.
    pub async fn version(&mut self) -> Result<VersionResponse, CriError> {
        let request = VersionRequest {
            version: "v1".to_owned(),
        };
        self.runtime
            .version(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CriError::Call {
                call: "Version",
                status,
            })
    }
}
