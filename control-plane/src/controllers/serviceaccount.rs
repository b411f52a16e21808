//! The ServiceAccount controller (kube-controller-manager's `serviceaccount`): every active
//! namespace has a `default` ServiceAccount; one deleted is created again.
//!
//! Owns the existence of `default` ServiceAccounts; tokens are issued elsewhere.
use std::sync::Arc;

use k8s_openapi::{
    api::core::v1::{Namespace, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::runner::{run_workers, Requeue};
use crate::client::{
    informer::key_of, leader::Leadership, Client, ClientError, Informer, Informers, WorkQueue,
};

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
) -> Result<(), ClientError> {
    let namespaces = informers.get::<Namespace>()?;
    let accounts = informers.get::<ServiceAccount>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        namespaces.on_change(Box::new(move |_, new| {
            if let Some(ns) = new {
                queue.add(key_of(ns.as_ref()));
            }
        }));
    }
    {
        let queue = queue.clone();
        accounts.on_change(Box::new(move |old, new| {
            if let (Some(sa), None) = (old, new) {
                if sa.metadata.name.as_deref() == Some(DEFAULT) {
                    queue.add(sa.metadata.namespace.clone().unwrap_or_default());
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        namespaces,
        accounts,
    });
    run_workers("serviceaccount", queue, leadership, 1, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

struct Controller {
    client: Client,
    namespaces: Informer<Namespace>,
    accounts: Informer<ServiceAccount>,
}

impl Controller {
    async fn reconcile(&self, namespace: &str) -> Result<Requeue, ClientError> {
        self.accounts.synced().await;
        let Some(ns) = self.namespaces.get(namespace) else {
            return Ok(None);
        };
        let active = ns.metadata.deletion_timestamp.is_none()
            && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating");
        if !active
            || self
                .accounts
                .get(&format!("{namespace}/{DEFAULT}"))
                .is_some()
        {
            return Ok(None);
        }
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match self
            .client
            .namespaced::<ServiceAccount>(namespace)?
            .create(&account)
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if e.is_already_exists() => Ok(None),
            // The namespace started terminating meanwhile.
            Err(ClientError::Api(e)) if e.code == 403 => Ok(None),
            Err(e) => Err(e),
        }
    }
}
