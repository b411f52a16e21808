//! What a container needs from outside its spec right before it is created: its
//! environment ([`env`], reading ConfigMaps, Secrets and Services through the API) and its
//! mounts ([`volumes::mounts`], over the pod's prepared volumes).
//!
//! Owns putting the two together and sorting failures into "the container's config is
//! wrong" (upstream's `CreateContainerConfigError`, shown in the container status) and "the
//! API did not answer" (retried next pass). It must not call the runtime.
use k8s_cri::v1::{KeyValue, Mount};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Client;

use super::{
    env::{self, Allocatable, PodFields},
    volumes::{mounts, VolumeError, VolumeManager},
};

/// A container's resolved environment and mounts.
#[derive(Debug, Clone, Default)]
pub struct ContainerInputs {
    /// Its environment, in order.
    pub env: Vec<KeyValue>,
    /// Its mounts.
    pub mounts: Vec<Mount>,
    /// Warnings worth an event (skipped `envFrom` keys).
    pub warnings: Vec<String>,
}

/// Why a container cannot be created yet.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// Its config cannot be resolved (`CreateContainerConfigError`).
    #[error(transparent)]
    Env(#[from] env::EnvError),
    /// Its mounts cannot be made (`CreateContainerConfigError`).
    #[error(transparent)]
    Mounts(#[from] mounts::MountsError),
    /// The pod's volumes are not ready.
    #[error(transparent)]
    Volumes(#[from] VolumeError),
    /// An API read failed (retried).
    #[error("reading the container's env sources: {0}")]
    Api(#[from] kube::Error),
}

impl InputsError {
    /// The container's waiting reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Volumes(_) | Self::Api(_) => "ContainerCreating",
            Self::Env(_) | Self::Mounts(_) => "CreateContainerConfigError",
        }
    }
}

/// Resolves a container's environment and mounts.
pub async fn resolve(
    client: &Client,
    volumes: &VolumeManager,
    pod: &Pod,
    container: &Container,
    fields: &PodFields,
    allocatable: &Allocatable,
) -> Result<ContainerInputs, InputsError> {
    let sources = env::fetch(client, pod, container).await?;
    let environment = env::resolve(pod, container, fields, allocatable, &sources)?;
    let prepared = volumes.ensure(pod).await?;
    let mounts = mounts::container_mounts(container, &prepared, &environment.vars)?;
    Ok(ContainerInputs {
        env: environment.vars,
        mounts,
        warnings: environment.skipped,
    })
}
