//! The namespace controller (kube-controller-manager's `namespace`): a terminating namespace
//! is emptied — every namespaced resource in it deleted, custom resources included — and,
//! once nothing is left (graceful pod deletions and finalizers included), its `kubernetes`
//! finalizer is removed through the API server's finalize operation, which removes the
//! namespace. While content remains, the namespace's status carries upstream's conditions
//! (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`).
//!
//! Owns the deletion of a terminating namespace's contents; nothing else deletes them.
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};
use tracing::info;

use super::runner::{run_workers, Requeue};
use crate::{
    apiserver::{
        namespaces,
        rest::{Query, Rest},
    },
    client::{
        informer::key_of, leader::Leadership, Client, ClientError, Informer, Informers, WorkQueue,
    },
};

/// The finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
) -> Result<(), ClientError> {
    let namespaces = informers.get::<Namespace>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        namespaces.on_change(Box::new(move |_, new| {
            if let Some(ns) = new {
                if ns.metadata.deletion_timestamp.is_some() {
                    queue.add(key_of(ns.as_ref()));
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        rest: client.rest().clone(),
        namespaces,
    });
    run_workers("namespace", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

struct Controller {
    rest: Rest,
    namespaces: Informer<Namespace>,
}

impl Controller {
    fn query() -> Query {
        Query::from([("fieldManager".to_owned(), "namespace-controller".to_owned())])
    }

    async fn reconcile(&self, name: &str) -> Result<Requeue, ClientError> {
        let Some(namespace) = self.namespaces.get(name) else {
            return Ok(None);
        };
        if namespace.metadata.deletion_timestamp.is_none() {
            return Ok(None);
        }
        let finalizers: Vec<String> = namespace
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(None);
        }
        // Delete what is there; count what remains (including what is going).
        let mut remaining: Vec<(String, usize)> = Vec::new();
        let mut with_finalizers: Vec<String> = Vec::new();
        for def in self
            .rest
            .registry
            .all()
            .into_iter()
            .filter(|d| d.namespaced)
        {
            let list = self.rest.list(&def, Some(name), &Query::new()).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                continue;
            }
            remaining.push((
                format!(
                    "{}{}",
                    def.plural,
                    if def.group.is_empty() {
                        String::new()
                    } else {
                        format!(".{}", def.group)
                    }
                ),
                items.len(),
            ));
            for item in items {
                let item_name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if item
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty())
                {
                    with_finalizers.extend(
                        item.pointer("/metadata/finalizers")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(|f| f.as_str().map(str::to_owned)),
                    );
                }
                if item.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                let options = json!({"propagationPolicy": "Background"});
                match self
                    .rest
                    .delete(&def, Some(name), &item_name, Some(options), &Self::query())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if remaining.is_empty() {
            let rest: Vec<String> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
            namespaces::finalize(&self.rest, name, &rest).await?;
            info!(namespace = name, "namespace emptied and finalized");
            return Ok(None);
        }
        self.report(&namespace, &remaining, &with_finalizers)
            .await?;
        Ok(Some(Duration::from_secs(1)))
    }

    /// Writes upstream's content conditions on the namespace's status.
    async fn report(
        &self,
        namespace: &Namespace,
        remaining: &[(String, usize)],
        finalizers: &[String],
    ) -> Result<(), ClientError> {
        let Some(def) = self.rest.registry.find("", "v1", "namespaces") else {
            return Ok(());
        };
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let now = crate::apiserver::objects::now();
        let content = remaining
            .iter()
            .map(|(resource, count)| format!("{resource} has {count} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut unique: Vec<&String> = finalizers.iter().collect();
        unique.sort();
        unique.dedup();
        let mut conditions = vec![json!({
            "type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
            "message": format!("Some resources are remaining: {content}"), "lastTransitionTime": now,
        })];
        if !unique.is_empty() {
            conditions.push(json!({
                "type": "NamespaceFinalizersRemaining", "status": "True", "reason": "SomeFinalizersRemain",
                "message": format!("Some content in the namespace has finalizers remaining: {}", unique.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")),
                "lastTransitionTime": now,
            }));
        }
        let same = namespace
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.message.as_deref() == conditions[0]["message"].as_str())
            });
        if same {
            return Ok(());
        }
        let patch = json!({"status": {"phase": "Terminating", "conditions": conditions}});
        match self
            .rest
            .patch_status(
                &def,
                None,
                &name,
                crate::apiserver::rest::PatchKind::Merge,
                patch.to_string().as_bytes(),
                &Self::query(),
            )
            .await
        {
            Ok(_) | Err(_) => Ok(()),
        }
    }
}
