//! Namespace lifecycle: the namespaces that exist from the first start, the defaults of a
//! new namespace, and deletion (a namespace being deleted is `Terminating`, refuses new
//! content, and goes once everything in it is gone).
//!
//! The emptying of a terminating namespace runs here, in the API server, until the
//! controllers exist; it must stay the only code that deletes a namespace's contents.
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

/// Empties a terminating namespace and then removes it.
pub fn finalize_in_background(rest: Rest, namespace: String) {
    tokio::spawn(async move {
        if let Err(err) = finalize(&rest, &namespace).await {
            warn!(namespace, "emptying the namespace failed: {}", err.message);
        }
    });
}

async fn finalize(rest: &Rest, namespace: &str) -> Result<(), ApiError> {
    let defs: Vec<_> = rest
        .registry
        .all()
        .iter()
        .filter(|d| d.namespaced)
        .cloned()
        .collect();
    for def in &defs {
        let list = rest.list(def, Some(namespace), &Default::default()).await?;
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            let name = objects::name(&item).unwrap_or_default().to_owned();
            match rest
                .delete(def, Some(namespace), &name, None, &Default::default())
                .await
            {
                Ok(_) => {}
                Err(err) if err.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
    }
    let key = format!("/registry/namespaces/{namespace}");
    let Some(current) = rest.store.get(key.as_bytes()).await? else {
        return Ok(());
    };
    let txn = Txn {
        compare: vec![Compare::mod_revision(
            key.as_bytes(),
            CompareOp::Equal,
            current.mod_revision,
        )],
        success: vec![TxnOp::delete(key.as_bytes())],
        failure: Vec::new(),
    };
    rest.store.txn(txn).await?;
    info!(namespace, "deleted");
    Ok(())
}
