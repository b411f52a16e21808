//! Namespace lifecycle: the namespaces that exist from the first start, the defaults of a
//! new namespace, and deletion (a namespace being deleted is `Terminating`, refuses new
//! content, and goes once everything in it is gone).
//!
//! The namespace controller (`controllers/namespace.rs`) empties a terminating namespace
//! and then calls [`finalize`]; this file must not delete a namespace's contents itself.
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{objects, rest::Rest, status::ApiError};
use crate::store::{Compare, CompareOp, Txn, TxnOp};

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Defaults of a new namespace: the `kubernetes` finalizer and phase Active.
pub fn default_new(obj: &mut Value) {
    if obj.pointer("/spec/finalizers").is_none() {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
    }
    obj["status"] = json!({"phase": "Active"});
}

/// Creates the system namespaces that do not exist yet.
pub async fn bootstrap(rest: &Rest) -> Result<(), ApiError> {
    let Some(def) = rest.registry.find("", "v1", "namespaces") else {
        return Err(ApiError::internal("namespaces are not served"));
    };
    for name in SYSTEM_NAMESPACES {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match rest.create(&def, None, body, &Default::default()).await {
            Ok(_) => info!(namespace = name, "created"),
            Err(err) if err.code == 409 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The `finalize` subresource: sets a namespace's `spec.finalizers`; a terminating
/// namespace whose finalizers (spec and metadata) are all gone is removed. The namespace
/// controller calls this once the namespace is empty.
pub async fn finalize(
    rest: &Rest,
    namespace: &str,
    finalizers: &[String],
) -> Result<Value, ApiError> {
    let key = format!("/registry/namespaces/{namespace}");
    for _ in 0..8 {
        let Some(current) = rest.store.get(key.as_bytes()).await? else {
            return Err(ApiError::not_found("", "namespaces", namespace));
        };
        let mut obj = super::rest::decode(&current)?;
        obj["spec"]["finalizers"] = json!(finalizers);
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let meta_finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let op = if deleting && finalizers.is_empty() && !meta_finalizers {
            TxnOp::delete(key.as_bytes())
        } else {
            TxnOp::put(key.as_bytes(), super::rest::encode(&obj)?)
        };
        let removed = matches!(op, TxnOp::Delete { .. });
        let txn = Txn {
            compare: vec![Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                current.mod_revision,
            )],
            success: vec![op],
            failure: Vec::new(),
        };
        let response = rest.store.txn(txn).await?;
        if response.succeeded {
            if removed {
                info!(namespace, "deleted");
            }
            objects::set_resource_version(&mut obj, response.revision);
            return Ok(obj);
        }
    }
    warn!(namespace, "finalizing kept conflicting with other writes");
    Err(ApiError::conflict(
        "",
        "namespaces",
        namespace,
        "too many concurrent writes; try again",
    ))
}
