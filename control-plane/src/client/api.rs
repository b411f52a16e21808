//! Typed verbs on one resource: `Api<Pod>`, `Api<Deployment>`, ... over [`Rest`], named the
//! way kube-rs names them so a reader of either finds the same thing.
//!
//! Owns the conversion between k8s-openapi types and the REST layer's JSON, and the field
//! manager every write is recorded under. It holds no cache and no retry policy: callers
//! decide what a conflict means for them ([`ClientError::is_conflict`]).
use std::{collections::HashMap, fmt, marker::PhantomData, sync::Arc};

use k8s_openapi::{api::core::v1::Binding, NamespaceResourceScope, Resource};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};

use crate::apiserver::{
    resources::ResourceDef,
    rest::{PatchKind, Query, Rest},
    status::ApiError,
};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API server refused the request (its `Status`).
    #[error("{} {}: {}", .0.code, .0.reason, .0.message)]
    Api(ApiError),
    /// The object the server returned does not fit the Rust type (a bug on one side).
    #[error("decoding a {kind}: {source}")]
    Decode {
        /// The kind being decoded.
        kind: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The resource is not served by this server (a bug in the caller's wiring).
    #[error("{0} is not served")]
    NotServed(&'static str),
}

impl ClientError {
    /// 404: the object is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api(e) if e.code == 404)
    }

    /// 409: stale resourceVersion or the object already exists; re-read and try again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Api(e) if e.code == 409)
    }

    /// 409 AlreadyExists on create.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::Api(e) if e.reason == "AlreadyExists")
    }
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

/// A handle on the REST layer with the name its writes are recorded under (the
/// `fieldManager` of managedFields, e.g. `kube-scheduler`).
#[derive(Clone)]
pub struct Client {
    rest: Rest,
    manager: &'static str,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("manager", &self.manager)
            .finish()
    }
}

impl Client {
    /// A client whose writes are recorded as `manager`'s.
    pub fn new(rest: Rest, manager: &'static str) -> Self {
        Self { rest, manager }
    }

    /// The REST layer (for informers).
    pub fn rest(&self) -> &Rest {
        &self.rest
    }

    /// The field manager.
    pub fn manager(&self) -> &'static str {
        self.manager
    }

    /// The served definition of `K`.
    pub fn def<K: Resource>(&self) -> Result<ResourceDef, ClientError> {
        self.rest
            .registry
            .find(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
            .ok_or(ClientError::NotServed(K::KIND))
    }

    /// Verbs on a namespaced resource in one namespace.
    pub fn namespaced<K: Resource<Scope = NamespaceResourceScope>>(
        &self,
        namespace: &str,
    ) -> Result<Api<K>, ClientError> {
        Ok(Api {
            client: self.clone(),
            def: Arc::new(self.def::<K>()?),
            namespace: Some(namespace.to_owned()),
            _kind: PhantomData,
        })
    }

    /// Verbs on a cluster-scoped resource (or on a namespaced one across namespaces, for
    /// reads).
    pub fn all<K: Resource>(&self) -> Result<Api<K>, ClientError> {
        Ok(Api {
            client: self.clone(),
            def: Arc::new(self.def::<K>()?),
            namespace: None,
            _kind: PhantomData,
        })
    }

    fn query(&self) -> Query {
        HashMap::from([("fieldManager".to_owned(), self.manager.to_owned())])
    }
}

/// Verbs on one resource, in one namespace or cluster-wide.
pub struct Api<K> {
    client: Client,
    def: Arc<ResourceDef>,
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            def: self.def.clone(),
            namespace: self.namespace.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Api<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("resource", &self.def.plural)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// Decodes an object the REST layer returned into `K`.
pub fn from_value<K: Resource + DeserializeOwned>(mut value: Value) -> Result<K, ClientError> {
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), json!(K::API_VERSION));
        map.insert("kind".to_owned(), json!(K::KIND));
    }
    serde_json::from_value(value).map_err(|source| ClientError::Decode {
        kind: K::KIND,
        source,
    })
}

fn to_value<K: Resource + Serialize>(object: &K) -> Result<Value, ClientError> {
    serde_json::to_value(object).map_err(|source| ClientError::Decode {
        kind: K::KIND,
        source,
    })
}

impl<K: Resource + Serialize + DeserializeOwned> Api<K> {
    fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The client this handle writes through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The resource's definition.
    pub fn def(&self) -> &ResourceDef {
        &self.def
    }

    /// GET; `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<K>, ClientError> {
        match self.client.rest.get(&self.def, self.ns(), name).await {
            Ok(value) => Ok(Some(from_value(value)?)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// LIST with a label selector ("" for all).
    pub async fn list(&self, label_selector: &str) -> Result<Vec<K>, ClientError> {
        let mut query = Query::new();
        if !label_selector.is_empty() {
            query.insert("labelSelector".to_owned(), label_selector.to_owned());
        }
        let list = self.client.rest.list(&self.def, self.ns(), &query).await?;
        let items = match list.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        items.into_iter().map(from_value).collect()
    }

    /// POST.
    pub async fn create(&self, object: &K) -> Result<K, ClientError> {
        let body = to_value(object)?;
        let created = self
            .client
            .rest
            .create(&self.def, self.ns(), body, &self.client.query())
            .await?;
        from_value(created)
    }

    /// PUT with the object's resourceVersion as precondition (409 when stale).
    pub async fn replace(&self, name: &str, object: &K) -> Result<K, ClientError> {
        let body = to_value(object)?;
        let updated = self
            .client
            .rest
            .update(&self.def, self.ns(), name, body, &self.client.query())
            .await?;
        from_value(updated)
    }

    /// PUT on `/status`, with the object's resourceVersion as precondition.
    pub async fn replace_status(&self, name: &str, object: &K) -> Result<K, ClientError> {
        let body = to_value(object)?;
        let updated = self
            .client
            .rest
            .update_status(&self.def, self.ns(), name, body, &self.client.query())
            .await?;
        from_value(updated)
    }

    /// PATCH (merge or strategic) of the object.
    pub async fn patch(
        &self,
        name: &str,
        kind: PatchKind,
        patch: &Value,
    ) -> Result<K, ClientError> {
        let bytes = patch.to_string();
        let patched = self
            .client
            .rest
            .patch(
                &self.def,
                self.ns(),
                name,
                kind,
                bytes.as_bytes(),
                &self.client.query(),
            )
            .await?;
        from_value(patched)
    }

    /// Merge PATCH of `/status`.
    pub async fn patch_status(&self, name: &str, patch: &Value) -> Result<K, ClientError> {
        let bytes = patch.to_string();
        let patched = self
            .client
            .rest
            .patch_status(
                &self.def,
                self.ns(),
                name,
                PatchKind::Merge,
                bytes.as_bytes(),
                &self.client.query(),
            )
            .await?;
        from_value(patched)
    }

    /// DELETE with delete options (`propagationPolicy`, `preconditions`,
    /// `gracePeriodSeconds`); a missing object is not an error.
    pub async fn delete(&self, name: &str, options: Value) -> Result<(), ClientError> {
        match self
            .client
            .rest
            .delete(
                &self.def,
                self.ns(),
                name,
                Some(options),
                &self.client.query(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Api<k8s_openapi::api::core::v1::Pod> {
    /// POST on `pods/NAME/binding`: the scheduler's write.
    pub async fn bind(&self, binding: &Binding) -> Result<(), ClientError> {
        let name = binding.metadata.name.clone().unwrap_or_default();
        let body = serde_json::to_value(binding).map_err(|source| ClientError::Decode {
            kind: "Binding",
            source,
        })?;
        self.client
            .rest
            .bind(&self.def, self.ns(), &name, body, &self.client.query())
            .await?;
        Ok(())
    }
}
