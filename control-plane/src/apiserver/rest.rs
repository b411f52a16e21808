//! The REST verbs on stored objects: get, list, create, update, patch, delete,
//! deletecollection, and the start of a watch. Each reads and writes the store with
//! optimistic concurrency (compare mod_revision), so concurrent writers get 409 Conflict
//! rather than lost updates, and every object's resourceVersion is its store revision.
//!
//! Owns request semantics for generic resources; it must not format HTTP (the router
//! does) and must not hold resource-specific policy beyond what [`super::resources`] says.
use std::{collections::HashMap, sync::Arc};

use base64::Engine as _;
use serde_json::{json, Value};

use super::{
    objects::{self, FieldSelector, LabelSelector},
    resources::{Registry, ResourceDef},
    status::{self, ApiError},
};
use crate::store::{Compare, CompareOp, KeyValue, Range, RangeEnd, Store, Txn, TxnOp};

/// How many times a patch or a status change is retried on a conflicting concurrent write.
const CONFLICT_RETRIES: usize = 8;

/// The REST layer's view of the server: the store and the served resources.
#[derive(Debug, Clone)]
pub struct Rest {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The served resources.
    pub registry: Arc<Registry>,
    /// Where Service ClusterIPs come from.
    pub services: super::services::ServiceNetwork,
}

/// Query parameters of a request.
pub type Query = HashMap<String, String>;

/// The patch formats kube-apiserver accepts, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 6902 JSON patch.
    Json,
    /// RFC 7386 JSON merge patch.
    Merge,
    /// Kubernetes strategic merge patch ([`super::strategic`]).
    Strategic,
}

impl PatchKind {
    /// The patch kind of a Content-Type.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().map(str::trim) {
            Some("application/json-patch+json") => Some(Self::Json),
            Some("application/merge-patch+json") => Some(Self::Merge),
            Some("application/strategic-merge-patch+json") => Some(Self::Strategic),
            _ => None,
        }
    }
}

tokio::task_local! {
    /// Warnings for the client of the request being served (sent as `Warning` headers).
    pub static WARNINGS: std::cell::RefCell<Vec<String>>;
}

/// Adds a warning for the client of the current request (ignored outside a request).
fn warn_client(message: String) {
    let _ = WARNINGS.try_with(|w| w.borrow_mut().push(message));
}

/// Drops fields the type does not know; with `fieldValidation=Strict` they are an error
/// instead (400 with kube-apiserver's "strict decoding error" wording).
fn field_validation(def: &ResourceDef, obj: &mut Value, query: &Query) -> Result<(), ApiError> {
    let unknown = super::openapi::prune_unknown_fields(def, obj);
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    if strict && !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            fields.join(", ")
        )));
    }
    if query.get("fieldValidation").is_some_and(|v| v == "Warn") {
        for field in &unknown {
            warn_client(format!("unknown field \"{field}\""));
        }
    }
    Ok(())
}

/// Ownership of the fields an ordinary write changes ([`super::apply::record_update`]), for
/// the request's `fieldManager` ("unknown" when the client names none).
fn record_update(def: &ResourceDef, old: &Value, new: &mut Value, query: &Query) {
    let manager = query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map_or("unknown", String::as_str);
    super::apply::record_update(
        old,
        new,
        manager,
        &def.api_version(),
        def.status_is_subresource(),
    );
}

fn dry_run(query: &Query) -> bool {
    query.get("dryRun").is_some_and(|v| v == "All")
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "stored object {:?} is corrupt: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    objects::set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// Converts a stored object to the resource's form (see [`ResourceDef::conversion`]).
pub fn present(def: &ResourceDef, obj: &mut Value) {
    if let Some(conversion) = def.conversion {
        (conversion.from_storage)(obj);
    }
}

/// An object in the form it is stored in.
fn stored(def: &ResourceDef, obj: &Value) -> Value {
    let mut stored = obj.clone();
    if let Some(conversion) = def.conversion {
        (conversion.to_storage)(&mut stored);
    }
    stored
}

/// The stored form of an object: JSON with `metadata` first and without resourceVersion, so
/// that reads can stamp the revision in without parsing ([`stamped`]).
pub(crate) fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let internal = |e: serde_json::Error| ApiError::internal(e.to_string());
    let Some(map) = obj.as_object() else {
        return serde_json::to_vec(obj).map_err(internal);
    };
    let mut metadata = map.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(meta) = metadata.as_object_mut() {
        meta.remove("resourceVersion");
    }
    let mut out = b"{\"metadata\":".to_vec();
    serde_json::to_writer(&mut out, &metadata).map_err(internal)?;
    for (key, value) in map.iter().filter(|(k, _)| k.as_str() != "metadata") {
        out.push(b',');
        serde_json::to_writer(&mut out, key).map_err(internal)?;
        out.push(b':');
        serde_json::to_writer(&mut out, value).map_err(internal)?;
    }
    out.push(b'}');
    Ok(out)
}

/// A stored object's JSON with its resourceVersion written in, without parsing it (objects
/// stored by [`encode`] start with `{"metadata":{`); anything else is parsed and re-encoded.
pub fn stamped(kv: &KeyValue) -> Result<Vec<u8>, ApiError> {
    const PREFIX: &[u8] = b"{\"metadata\":{";
    if let Some(rest) = kv.value.strip_prefix(PREFIX) {
        let mut out = Vec::with_capacity(kv.value.len() + 32);
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(format!("\"resourceVersion\":\"{}\"", kv.mod_revision).as_bytes());
        if rest.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        return Ok(out);
    }
    serde_json::to_vec(&decode(kv)?).map_err(|e| ApiError::internal(e.to_string()))
}

/// The resourceVersion a client sent in an object, if any.
fn requested_version(obj: &Value) -> Result<Option<i64>, ApiError> {
    match obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// A list continuation token: the revision of the first page and the next key.
fn continue_token(revision: i64, next_key: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": next_key}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = value.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = value
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_owned();
    Ok((rv, start))
}

impl Rest {
    /// Whether a namespace exists and is not terminating; creates in it are refused
    /// otherwise (NamespaceLifecycle).
    async fn check_namespace(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let key = format!("/registry/namespaces/{namespace}");
        let Some(kv) = self.store.get(key.as_bytes()).await? else {
            return Err(ApiError::not_found("", "namespaces", namespace));
        };
        let ns = decode(&kv)?;
        if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            return Err(ApiError::forbidden(
                def.group,
                def.plural,
                name,
                &format!("unable to create new content in namespace {namespace} because it is being terminated"),
            ));
        }
        Ok(())
    }

    /// GET of one object.
    pub async fn get(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = def.key(namespace, name);
        match self.store.get(key.as_bytes()).await? {
            Some(kv) => {
                let mut obj = decode(&kv)?;
                present(def, &mut obj);
                Ok(obj)
            }
            None => Err(ApiError::not_found(def.group, def.plural, name)),
        }
    }

    /// LIST with selectors, limit/continue and resourceVersion semantics.
    pub async fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
        let fields =
            FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str), def)?;
        let limit = match query.get("limit") {
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let prefix = def.prefix(namespace);
        let (mut revision, start) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => parse_continue(token)?,
            None => {
                let rv = query.get("resourceVersion").map_or("", String::as_str);
                let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
                let revision = match rv {
                    "" | "0" => 0,
                    rv => {
                        let rv = rv.parse::<i64>().map_err(|_| {
                            ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                        })?;
                        // NotOlderThan (the default) is served from the latest state.
                        if exact {
                            rv
                        } else {
                            0
                        }
                    }
                };
                (revision, prefix.clone())
            }
        };
        if !start.starts_with(&prefix) {
            return Err(ApiError::bad_request(
                "continue key does not belong to this list",
            ));
        }
        let mut items = Vec::new();
        let mut next_key = start;
        let mut more;
        // Selectors filter after the read, so keep reading pages until the limit is filled.
        loop {
            let page = if limit > 0 {
                (limit - i64::try_from(items.len()).unwrap_or(0)).max(1)
            } else {
                0
            };
            let range = Range {
                key: next_key.clone().into_bytes(),
                end: RangeEnd::Until(crate::store::prefix_end(prefix.as_bytes())),
                revision,
                limit: page,
                count_only: false,
                keys_only: false,
            };
            let response = self.store.range(range).await?;
            if revision == 0 {
                revision = response.revision;
            }
            for kv in &response.kvs {
                let mut obj = decode(kv)?;
                present(def, &mut obj);
                if labels.matches(&obj) && fields.matches(&obj) {
                    items.push(obj);
                }
            }
            let last = response.kvs.last().map(|kv| kv.key.clone());
            more = response.more;
            match last {
                Some(mut key) if response.more => {
                    key.push(0);
                    next_key = String::from_utf8_lossy(&key).into_owned();
                    if limit > 0 && i64::try_from(items.len()).unwrap_or(i64::MAX) >= limit {
                        break;
                    }
                }
                _ => break,
            }
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if more && limit > 0 {
            metadata["continue"] = json!(continue_token(revision, &next_key));
        }
        // List items carry the object metadata and are typed by the list's kind.
        for item in &mut items {
            if let Some(obj) = item.as_object_mut() {
                obj.remove("apiVersion");
                obj.remove("kind");
            }
        }
        Ok(json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// LIST without selectors, answered from the stored bytes without parsing each object
    /// (what informers and controllers ask for, and where large lists matter). `None` when
    /// the request needs the general path (selectors).
    pub async fn list_raw(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        query: &Query,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let has = |k: &str| query.get(k).is_some_and(|v| !v.is_empty());
        if has("labelSelector") || has("fieldSelector") || def.conversion.is_some() {
            return Ok(None);
        }
        let limit = match query.get("limit") {
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let prefix = def.prefix(namespace);
        let (revision, start) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => parse_continue(token)?,
            None => {
                let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
                let revision = match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") | Some("0") => 0,
                    Some(rv) if exact => rv.parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                    })?,
                    Some(_) => 0,
                };
                (revision, prefix.clone())
            }
        };
        if !start.starts_with(&prefix) {
            return Err(ApiError::bad_request(
                "continue key does not belong to this list",
            ));
        }
        let range = Range {
            key: start.into_bytes(),
            end: RangeEnd::Until(crate::store::prefix_end(prefix.as_bytes())),
            revision,
            limit: limit.max(0),
            count_only: false,
            keys_only: false,
        };
        let response = self.store.range(range).await?;
        let revision = if revision == 0 {
            response.revision
        } else {
            revision
        };
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if response.more && limit > 0 {
            if let Some(last) = response.kvs.last() {
                let mut next = last.key.clone();
                next.push(0);
                metadata["continue"] =
                    json!(continue_token(revision, &String::from_utf8_lossy(&next)));
            }
        }
        let mut out = Vec::with_capacity(
            response
                .kvs
                .iter()
                .map(|kv| kv.value.len() + 32)
                .sum::<usize>()
                + 128,
        );
        out.extend_from_slice(
            format!(
                "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":",
                def.kind,
                def.api_version()
            )
            .as_bytes(),
        );
        serde_json::to_writer(&mut out, &metadata)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        out.extend_from_slice(b",\"items\":[");
        for (i, kv) in response.kvs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&stamped(kv)?);
        }
        out.extend_from_slice(b"]}");
        Ok(Some(out))
    }

    /// POST: creates an object; 409 if it exists.
    pub async fn create(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        body: Value,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let mut body = body;
        field_validation(def, &mut body, query)?;
        let mut obj = objects::prepare_create(def, namespace, body)?;
        if def.plural == "namespaces" {
            super::namespaces::default_new(&mut obj);
        }
        let name = objects::name(&obj).unwrap_or_default().to_owned();
        if def.namespaced {
            self.check_namespace(def, namespace.unwrap_or("default"), &name)
                .await?;
        }
        if def.kind == "Pod" && def.group.is_empty() {
            super::priority::admit(self, &mut obj).await?;
            super::tolerations::admit(&mut obj);
        }
        let ns = objects::namespace(&obj).map(str::to_owned);
        let key = def.key(ns.as_deref(), &name);
        if dry_run(query) {
            if self.store.get(key.as_bytes()).await?.is_some() {
                return Err(ApiError::already_exists(def.group, def.plural, &name));
            }
            return Ok(obj);
        }
        let is_service = def.kind == "Service" && def.group.is_empty();
        for _ in 0..CONFLICT_RETRIES {
            let mut candidate = obj.clone();
            let guard = Compare::create_revision(key.as_bytes(), CompareOp::Equal, 0);
            let service = is_service.then_some(None);
            if self
                .put_guarded(def, &key, guard, service, &mut candidate)
                .await?
            {
                return Ok(candidate);
            }
            if !is_service || self.store.get(key.as_bytes()).await?.is_some() {
                return Err(ApiError::already_exists(def.group, def.plural, &name));
            }
            // An address or a port was taken by another Service meanwhile: choose again (a
            // requested one is then reported taken by `check_requested`).
        }
        Err(ApiError::internal(
            "could not allocate an address for the Service; the range may be full",
        ))
    }

    /// Writes `candidate` at `key` if `guard` holds; false if a compare failed. With
    /// `service` (`Some(old)`: the version it replaces, none for a create), the Service first
    /// gets what it lacks allocated, and its reservations change in the same transaction.
    async fn put_guarded(
        &self,
        def: &ResourceDef,
        key: &str,
        guard: Compare,
        service: Option<Option<&Value>>,
        candidate: &mut Value,
    ) -> Result<bool, ApiError> {
        let mut compare = vec![guard];
        let mut reservations = Vec::new();
        if let Some(old) = service {
            let plan = super::services::plan(&self.services, old, candidate)?;
            let name = objects::name(candidate).unwrap_or_default().to_owned();
            self.check_requested(&plan, &name, key).await?;
            let (reserve, ops) = super::services::transaction_ops(&plan, key);
            compare.extend(reserve);
            reservations = ops;
        }
        let mut success = vec![TxnOp::put(key.as_bytes(), encode(&stored(def, candidate))?)];
        success.extend(reservations);
        let txn = Txn {
            compare,
            success,
            failure: Vec::new(),
        };
        let response = self.store.txn(txn).await?;
        if response.succeeded {
            objects::set_resource_version(candidate, response.revision);
        }
        Ok(response.succeeded)
    }

    /// 422 when a Service asks for an address or port that another Service holds.
    async fn check_requested(
        &self,
        plan: &super::services::Plan,
        name: &str,
        service_key: &str,
    ) -> Result<(), ApiError> {
        for claim in plan.claims.iter().filter(|c| c.requested) {
            if let Some(holder) = self.store.get(claim.key.as_bytes()).await? {
                if holder.value != service_key.as_bytes() {
                    return Err(super::services::taken(name, claim));
                }
            }
        }
        Ok(())
    }

    /// Writes `obj` over the version read at `mod_revision`; `None` on a conflict.
    /// With `old` (the version read) a Service's allocations follow the new version: what it
    /// newly holds is reserved and what it gave up released, in the same transaction.
    async fn swap(
        &self,
        def: &ResourceDef,
        key: &str,
        mod_revision: i64,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<bool, ApiError> {
        let service_old = old.filter(|_| def.kind == "Service" && def.group.is_empty());
        for _ in 0..CONFLICT_RETRIES {
            let mut candidate = obj.clone();
            let guard = Compare::mod_revision(key.as_bytes(), CompareOp::Equal, mod_revision);
            if self
                .put_guarded(def, key, guard, service_old.map(Some), &mut candidate)
                .await?
            {
                *obj = candidate;
                return Ok(true);
            }
            let current = self.store.get(key.as_bytes()).await?;
            if service_old.is_none() || current.is_none_or(|kv| kv.mod_revision != mod_revision) {
                return Ok(false);
            }
            // The object is unchanged, so a port chosen for it was taken meanwhile: choose again.
        }
        Err(ApiError::internal(
            "could not allocate a port for the Service; the range may be full",
        ))
    }

    /// PUT: replaces an object, honouring the resourceVersion precondition in the body.
    pub async fn update(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        query: &Query,
    ) -> Result<Value, ApiError> {
        if objects::name(&body).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                objects::name(&body).unwrap_or_default()
            )));
        }
        let precondition = requested_version(&body)?;
        let key = def.key(namespace, name);
        let Some(current) = self.store.get(key.as_bytes()).await? else {
            return Err(ApiError::not_found(def.group, def.plural, name));
        };
        if precondition.is_some_and(|rv| rv != current.mod_revision) {
            return Err(ApiError::conflict(
                def.group,
                def.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut old = decode(&current)?;
        present(def, &mut old);
        let mut body = body;
        field_validation(def, &mut body, query)?;
        let mut new = objects::prepare_update(def, &old, body)?;
        record_update(def, &old, &mut new, query);
        if dry_run(query) {
            return Ok(new);
        }
        if !self
            .swap(def, &key, current.mod_revision, &mut new, Some(&old))
            .await?
        {
            return Err(ApiError::conflict(
                def.group,
                def.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.after_write(def, &new).await?;
        Ok(new)
    }

    /// PATCH in any of the three formats, retried on concurrent writes.
    pub async fn patch(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: &[u8],
        query: &Query,
    ) -> Result<Value, ApiError> {
        self.modify(def, namespace, name, query, |old, revision| {
            let mut patched = old.clone();
            apply_patch(&mut patched, kind, patch)?;
            if requested_version(&patched)?.is_some_and(|rv| rv != revision) {
                return Err(ApiError::conflict(def.group, def.plural, name, "the object has been modified; please apply your changes to the latest version and try again"));
            }
            if objects::name(&patched) != Some(name) {
                return Err(ApiError::bad_request("a patch cannot change the object's name"));
            }
            field_validation(def, &mut patched, query)?;
            let mut new = objects::prepare_update(def, old, patched)?;
            record_update(def, old, &mut new, query);
            Ok(new)
        })
        .await
    }

    /// DELETE: immediate unless the object has finalizers, in which case it is marked with
    /// a deletionTimestamp and goes when the last finalizer is removed.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        body: Option<Value>,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let key = def.key(namespace, name);
        let precondition = body
            .as_ref()
            .and_then(|b| b.pointer("/preconditions/resourceVersion"))
            .and_then(Value::as_str)
            .map(|rv| {
                rv.parse::<i64>()
                    .map_err(|_| ApiError::bad_request("invalid precondition"))
            })
            .transpose()?;
        let uid_precondition = body
            .as_ref()
            .and_then(|b| b.pointer("/preconditions/uid"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let option = |field: &str| -> Option<Value> {
            body.as_ref()
                .and_then(|b| b.get(field).cloned())
                .filter(|v| !v.is_null())
                .or_else(|| query.get(field).map(|v| json!(v)))
        };
        let grace = option("gracePeriodSeconds")
            .map(|g| match g {
                Value::Number(n) => n.as_i64().ok_or(()),
                Value::String(s) => s.parse::<i64>().map_err(|_| ()),
                _ => Err(()),
            })
            .transpose()
            .map_err(|()| ApiError::bad_request("gracePeriodSeconds must be an integer"))?;
        let mut propagation =
            option("propagationPolicy").and_then(|p| p.as_str().map(str::to_owned));
        if propagation.is_none()
            && option("orphanDependents").is_some_and(|o| o == json!(true) || o == json!("true"))
        {
            propagation = Some("Orphan".to_owned());
        }
        if let Some(policy) = &propagation {
            if !matches!(policy.as_str(), "Foreground" | "Background" | "Orphan") {
                return Err(ApiError::bad_request(format!(
                    "unsupported propagationPolicy {policy:?}"
                )));
            }
        }
        for _ in 0..CONFLICT_RETRIES {
            let Some(current) = self.store.get(key.as_bytes()).await? else {
                return Err(ApiError::not_found(def.group, def.plural, name));
            };
            let mut obj = decode(&current)?;
            present(def, &mut obj);
            if precondition.is_some_and(|rv| rv != current.mod_revision) {
                return Err(ApiError::conflict(def.group, def.plural, name, "the ResourceVersion in the precondition does not match the ResourceVersion in record. The object might have been modified"));
            }
            if let Some(uid) = &uid_precondition {
                if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) {
                    return Err(ApiError::conflict(def.group, def.plural, name, "the UID in the precondition does not match the UID in record. The object might have been deleted and then recreated"));
                }
            }
            let is_namespace = def.plural == "namespaces";
            // Foreground and orphan deletion leave the object to the garbage collector,
            // marked by its finalizer (as kube-apiserver records them).
            let gc_finalizer = match propagation.as_deref() {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                _ => None,
            };
            if let Some(finalizer) = gc_finalizer {
                let meta = objects::metadata_mut(&mut obj);
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    if !list.iter().any(|f| f == finalizer) {
                        list.push(json!(finalizer));
                    }
                }
            }
            let finalizers = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            // A pod on a node is deleted gracefully: marked, and removed by its kubelet once
            // its containers are gone (the kubelet's own delete has grace 0).
            let bound = obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let pod_grace = (def.kind == "Pod" && def.group.is_empty() && bound).then(|| {
                grace.unwrap_or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                })
            });
            let graceful_pod = pod_grace.is_some_and(|g| g > 0);
            if finalizers || is_namespace || graceful_pod {
                let already = obj.pointer("/metadata/deletionTimestamp").is_some();
                let grace_now = pod_grace.unwrap_or(0);
                let shorter = obj
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .is_some_and(|g| grace_now < g);
                if !already || shorter || gc_finalizer.is_some() {
                    let meta = objects::metadata_mut(&mut obj);
                    if !already {
                        meta.insert("deletionTimestamp".into(), json!(objects::now()));
                    }
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace_now));
                    if is_namespace {
                        obj["status"] = json!({"phase": "Terminating"});
                    }
                    if dry_run(query) {
                        return Ok(obj);
                    }
                    if !self
                        .swap(def, &key, current.mod_revision, &mut obj, None)
                        .await?
                    {
                        continue;
                    }
                }
                return Ok(obj);
            }
            if dry_run(query) {
                return Ok(obj);
            }
            let mut deletes = vec![TxnOp::delete(key.as_bytes())];
            if def.kind == "Service" && def.group.is_empty() {
                deletes.extend(super::services::releases(&obj));
            }
            let txn = Txn {
                compare: vec![Compare::mod_revision(
                    key.as_bytes(),
                    CompareOp::Equal,
                    current.mod_revision,
                )],
                success: deletes,
                failure: Vec::new(),
            };
            let response = self.store.txn(txn).await?;
            if response.succeeded {
                let uid = obj
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                return Ok(status::success(def.group, def.plural, name, uid.as_deref()));
            }
        }
        Err(ApiError::conflict(
            def.group,
            def.plural,
            name,
            "too many concurrent writes; try again",
        ))
    }

    /// DELETE on a collection: every object the selectors match.
    pub async fn delete_collection(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let list = self.list(def, namespace, query).await?;
        let mut deleted = Vec::new();
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            let name = objects::name(&item).unwrap_or_default().to_owned();
            let ns = objects::namespace(&item).map(str::to_owned);
            match self.delete(def, ns.as_deref(), &name, None, query).await {
                Ok(_) => deleted.push(item),
                Err(err) if err.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        Ok(json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": {"resourceVersion": list["metadata"]["resourceVersion"]},
            "items": deleted,
        }))
    }

    /// PATCH with `application/apply-patch+yaml` (server-side apply): creates the object
    /// from the applied configuration, or merges the configuration into it (strategic merge
    /// semantics). Returns 201 on create, 200 on update.
    ///
    /// Field ownership follows [`super::apply`]: conflicts with other appliers are refused
    /// unless `force`, and fields this manager stopped applying are removed.
    pub async fn server_side_apply(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        config: Value,
        query: &Query,
    ) -> Result<(u16, Value), ApiError> {
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration is not an object",
            ));
        }
        if objects::name(&config).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the applied configuration does not match the URL",
            ));
        }
        if query.get("fieldManager").is_none_or(String::is_empty) {
            return Err(ApiError::bad_request(
                "PATCH with application/apply-patch+yaml requires a fieldManager parameter",
            ));
        }
        let manager = query.get("fieldManager").cloned().unwrap_or_default();
        let force = query
            .get("force")
            .is_some_and(|f| super::server::query_bool(f));
        let api_version = def.api_version();
        let mut config = config;
        field_validation(def, &mut config, query)?;
        for _ in 0..CONFLICT_RETRIES {
            if self
                .store
                .get(def.key(namespace, name).as_bytes())
                .await?
                .is_none()
            {
                let mut body = config.clone();
                objects::metadata_mut(&mut body).insert("name".into(), json!(name));
                super::apply::created(
                    &mut body,
                    &manager,
                    &api_version,
                    def.status_is_subresource(),
                );
                match self.create(def, namespace, body, query).await {
                    Ok(created) => return Ok((201, created)),
                    Err(err) if err.code == 409 && err.reason == "AlreadyExists" => continue,
                    Err(err) => return Err(err),
                }
            }
            let result = self
                .modify(def, namespace, name, query, |old, _| {
                    let merged = super::apply::apply(
                        old,
                        &config,
                        &manager,
                        &api_version,
                        force,
                        def.status_is_subresource(),
                    )?;
                    objects::prepare_update(def, old, merged)
                })
                .await;
            match result {
                Ok(updated) => return Ok((200, updated)),
                Err(err) if err.code == 404 => continue,
                Err(err) => return Err(err),
            }
        }
        Err(ApiError::conflict(
            def.group,
            def.plural,
            name,
            "too many concurrent writes; try again",
        ))
    }

    /// POST on `pods/NAME/binding`: assigns the pod to a node, once (the scheduler's write).
    pub async fn bind(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        binding: Value,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "",
                    "Binding",
                    name,
                    vec![super::status::Cause::required("target.name")],
                )
            })?
            .to_owned();
        self.modify(def, namespace, name, query, |old, _| {
            if let Some(bound) = old.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict(def.group, def.plural, name, &format!("pod {name} is already assigned to node \"{bound}\"")));
            }
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::conflict(def.group, def.plural, name, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()});
            let conditions = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conditions.push(scheduled);
            new["status"]["conditions"] = json!(conditions);
            Ok(new)
        })
        .await?;
        Ok(status::success(def.group, def.plural, name, None))
    }

    /// POST on `pods/NAME/eviction`: deletes the pod unless a PodDisruptionBudget covering it
    /// allows no disruption now (429), and counts the disruption against the budget.
    pub async fn evict(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let pod = self.get(def, namespace, name).await?;
        let ns = namespace.unwrap_or("default");
        let Some(pdb_def) = self.registry.find("policy", "v1", "poddisruptionbudgets") else {
            return Err(ApiError::internal("poddisruptionbudgets are not served"));
        };
        let budgets = self.list(&pdb_def, Some(ns), &Query::new()).await?;
        for budget in budgets["items"].as_array().cloned().unwrap_or_default() {
            let selector = selector_text(budget.pointer("/spec/selector"));
            let Some(selector) = selector else { continue };
            if !LabelSelector::parse(&selector)?.matches(&pod) {
                continue;
            }
            let budget_name = objects::name(&budget).unwrap_or_default().to_owned();
            self.modify(&pdb_def, Some(ns), &budget_name, query, |old, _| {
                let allowed = old
                    .pointer("/status/disruptionsAllowed")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if allowed < 1 {
                    return Err(ApiError::too_many_requests(
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    ));
                }
                let mut new = old.clone();
                new["status"]["disruptionsAllowed"] = json!(allowed - 1);
                // The disruption controller keeps the pod out of the healthy count until
                // it is gone (upstream's DisruptedPods).
                new["status"]["disruptedPods"][name] = json!(objects::now());
                Ok(new)
            })
            .await?;
        }
        self.delete(def, namespace, name, None, query).await?;
        Ok(status::success(def.group, def.plural, name, None))
    }

    /// Rewrites an object with `change` under optimistic concurrency, retrying when another
    /// write got in between.
    async fn modify(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        query: &Query,
        change: impl Fn(&Value, i64) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let key = def.key(namespace, name);
        for _ in 0..CONFLICT_RETRIES {
            let Some(current) = self.store.get(key.as_bytes()).await? else {
                return Err(ApiError::not_found(def.group, def.plural, name));
            };
            let mut old = decode(&current)?;
            present(def, &mut old);
            let mut new = change(&old, current.mod_revision)?;
            if dry_run(query) {
                return Ok(new);
            }
            if self
                .swap(def, &key, current.mod_revision, &mut new, Some(&old))
                .await?
            {
                self.after_write(def, &new).await?;
                return Ok(new);
            }
        }
        Err(ApiError::conflict(
            def.group,
            def.plural,
            name,
            "too many concurrent writes; try again",
        ))
    }

    /// PUT on `/status`: only `status` changes.
    pub async fn update_status(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let precondition = requested_version(&body)?;
        self.modify(def, namespace, name, query, |old, revision| {
            if precondition.is_some_and(|rv| rv != revision) {
                return Err(ApiError::conflict(def.group, def.plural, name, "the object has been modified; please apply your changes to the latest version and try again"));
            }
            objects::prepare_status_update(def, old, body.get("status").cloned())
        })
        .await
    }

    /// PATCH on `/status`: the patch applies to the whole object; only `status` is kept.
    pub async fn patch_status(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: &[u8],
        query: &Query,
    ) -> Result<Value, ApiError> {
        self.modify(def, namespace, name, query, |old, _| {
            let mut patched = old.clone();
            apply_patch(&mut patched, kind, patch)?;
            objects::prepare_status_update(def, old, patched.get("status").cloned())
        })
        .await
    }

    /// GET on `/scale`: the object's replicas as an `autoscaling/v1` Scale.
    pub async fn get_scale(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        Ok(scale_of(def, &self.get(def, namespace, name).await?))
    }

    /// PUT or PATCH on `/scale`: sets `spec.replicas` from the (patched) Scale.
    pub async fn write_scale(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        change: ScaleChange<'_>,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let updated = self
            .modify(def, namespace, name, query, |old, revision| {
                let scale = match &change {
                    ScaleChange::Replace(body) => {
                        if requested_version(body)?.is_some_and(|rv| rv != revision) {
                            return Err(ApiError::conflict(def.group, def.plural, name, "the object has been modified; please apply your changes to the latest version and try again"));
                        }
                        (*body).clone()
                    }
                    ScaleChange::Patch(kind, patch) => {
                        let mut scale = scale_of(def, old);
                        apply_patch(&mut scale, *kind, patch)?;
                        scale
                    }
                };
                let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).ok_or_else(|| {
                    ApiError::invalid("autoscaling", "Scale", name, vec![super::status::Cause::required("spec.replicas")])
                })?;
                if replicas < 0 {
                    return Err(ApiError::invalid("autoscaling", "Scale", name, vec![super::status::Cause::invalid("spec.replicas", "must be greater than or equal to 0")]));
                }
                let mut new = old.clone();
                set_pointer(&mut new, scale_paths(def).0, json!(replicas));
                objects::prepare_update(def, old, new)
            })
            .await?;
        Ok(scale_of(def, &updated))
    }

    /// After an update: an object marked for deletion whose last finalizer is gone is
    /// removed now.
    async fn after_write(&self, def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
        let marked = obj.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        // A pod still in its grace period waits for its kubelet's final delete.
        let grace = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if marked && !finalizers && grace == 0 && def.plural != "namespaces" {
            let name = objects::name(obj).unwrap_or_default();
            let key = def.key(objects::namespace(obj), name);
            let revision = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|rv| rv.parse::<i64>().ok())
                .unwrap_or(0);
            let txn = Txn {
                compare: vec![Compare::mod_revision(
                    key.as_bytes(),
                    CompareOp::Equal,
                    revision,
                )],
                success: std::iter::once(TxnOp::delete(key.as_bytes()))
                    .chain(if def.kind == "Service" && def.group.is_empty() {
                        super::services::releases(obj)
                    } else {
                        Vec::new()
                    })
                    .collect(),
                failure: Vec::new(),
            };
            // If another write got there first, that writer's own update comes here again.
            self.store.txn(txn).await?;
        }
        Ok(())
    }
}

/// A label selector object (`matchLabels`, `matchExpressions`) in the text form
/// [`LabelSelector::parse`] reads; `None` for no selector (which selects nothing in a PDB).
pub fn selector_text(selector: Option<&Value>) -> Option<String> {
    let selector = selector?.as_object()?;
    let mut terms = Vec::new();
    for (key, value) in selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        terms.push(format!("{key}={}", value.as_str().unwrap_or_default()));
    }
    for expression in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expression
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let values: Vec<&str> = expression
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match expression.get("operator").and_then(Value::as_str) {
            Some("In") => terms.push(format!("{key} in ({})", values.join(","))),
            Some("NotIn") => terms.push(format!("{key} notin ({})", values.join(","))),
            Some("Exists") => terms.push(key.to_owned()),
            Some("DoesNotExist") => terms.push(format!("!{key}")),
            _ => {}
        }
    }
    Some(terms.join(","))
}

/// How a `/scale` write changes the Scale.
#[derive(Debug)]
pub enum ScaleChange<'a> {
    /// PUT of a whole Scale.
    Replace(&'a Value),
    /// PATCH of the current Scale.
    Patch(PatchKind, &'a [u8]),
}

/// The paths the scale subresource reads and writes (built-in defaults when unset).
fn scale_paths(def: &ResourceDef) -> (&'static str, &'static str, Option<&'static str>) {
    def.scale_paths
        .unwrap_or(("/spec/replicas", "/status/replicas", Some("/spec/selector")))
}

/// The `autoscaling/v1` Scale of an object.
pub fn scale_of(def: &ResourceDef, obj: &Value) -> Value {
    let (spec_path, status_path, selector_path) = scale_paths(def);
    let selector = match selector_path.and_then(|p| obj.pointer(p)) {
        Some(Value::String(text)) => text.clone(),
        Some(selector) => selector
            .get("matchLabels")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        None => String::new(),
    };
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(spec_path).cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer(status_path).cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// Sets the value at a JSON pointer, creating the objects on the way.
fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut at = obj;
    for part in pointer.trim_start_matches('/').split('/') {
        if !at.is_object() {
            *at = json!({});
        }
        let Some(map) = at.as_object_mut() else {
            return;
        };
        at = map.entry(part.to_owned()).or_insert(Value::Null);
    }
    *at = value;
}

/// Applies a patch document to an object.
pub fn apply_patch(obj: &mut Value, kind: PatchKind, patch: &[u8]) -> Result<(), ApiError> {
    let document: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    match kind {
        PatchKind::Json => {
            let patch: json_patch::Patch = serde_json::from_value(document)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(obj, &patch).map_err(|e| {
                ApiError::invalid(
                    "",
                    "Object",
                    objects::name(obj).unwrap_or_default(),
                    vec![super::status::Cause::invalid("<patch>", e.to_string())],
                )
            })?;
        }
        PatchKind::Merge => {
            if !document.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(obj, &document);
        }
        PatchKind::Strategic => {
            if !document.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            super::strategic::apply(obj, &document);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_objects_are_stamped_without_parsing() -> Result<(), ApiError> {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "\"metadata\":{"},
                         "metadata": {"name": "a", "resourceVersion": "9", "labels": {"k": "v"}}});
        let stored = encode(&obj)?;
        assert!(stored.starts_with(br#"{"metadata":{"#));
        let kv = KeyValue {
            key: b"/registry/configmaps/default/a".to_vec(),
            value: stored,
            create_revision: 5,
            mod_revision: 7,
            version: 1,
            lease: 0,
        };
        let read_back: Value = serde_json::from_slice(&stamped(&kv)?)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut expected = obj.clone();
        expected["metadata"]["resourceVersion"] = json!("7");
        assert_eq!(read_back, expected);
        assert_eq!(decode(&kv)?, expected);
        let empty_meta = KeyValue {
            value: encode(&json!({"kind": "X"}))?,
            ..kv
        };
        let value: Value = serde_json::from_slice(&stamped(&empty_meta)?)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        assert_eq!(value["metadata"]["resourceVersion"], "7");
        Ok(())
    }

    #[test]
    fn continue_tokens_round_trip() -> Result<(), ApiError> {
        let token = continue_token(42, "/registry/configmaps/default/b\u{0}");
        assert_eq!(
            parse_continue(&token)?,
            (42, "/registry/configmaps/default/b\u{0}".to_owned())
        );
        assert!(parse_continue("not-a-token!").is_err());
        Ok(())
    }

    #[test]
    fn patches_apply() -> Result<(), ApiError> {
        let mut obj = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        apply_patch(
            &mut obj,
            PatchKind::Merge,
            br#"{"metadata":{"labels":{"y":"2","x":null}}}"#,
        )?;
        assert_eq!(obj["metadata"]["labels"], json!({"y": "2"}));
        apply_patch(
            &mut obj,
            PatchKind::Json,
            br#"[{"op":"replace","path":"/data/k","value":"w"}]"#,
        )?;
        assert_eq!(obj["data"]["k"], "w");
        assert!(apply_patch(
            &mut obj,
            PatchKind::Json,
            br#"[{"op":"remove","path":"/nope"}]"#
        )
        .is_err());
        assert!(apply_patch(&mut obj, PatchKind::Merge, b"{not json").is_err());
        Ok(())
    }
}
