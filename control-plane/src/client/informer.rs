//! A list-and-watch cache of one resource (client-go's informer): it lists the resource's
//! key prefix at a revision, then follows the store's watch from the next one, keeping every
//! object decoded in memory (trimmed by [`super::compact`]) and telling its handlers about
//! each change. A compacted revision or a broken watch leads to a relist, and the relist is
//! diffed against the cache so handlers see exactly the changes they missed.
//!
//! Owns the cache and the order of notifications (one task, store order). It must not make
//! decisions: handlers only enqueue keys; controllers read the cache from their workers.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::api::{from_value, Client, ClientError};
use crate::{
    apiserver::{
        resources::ResourceDef,
        rest::{decode, present},
    },
    store::{EventKind, KeyValue, Range, StoreError, WatchRequest},
};

/// `namespace/name`, or `name` for cluster-scoped objects (client-go's key format).
pub type ObjectKey = String;

/// The key of an object.
pub fn key_of<K: Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    object: &K,
) -> ObjectKey {
    let meta = object.metadata();
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// Splits a key into namespace (if any) and name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// What a handler is told: the object before and after (`None` for a create / a delete).
pub type Handler<K> = Box<dyn Fn(Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync>;

struct Shared<K> {
    cache: RwLock<BTreeMap<ObjectKey, Arc<K>>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: watch::Sender<bool>,
}

/// A cache of one resource, shared by the controllers that read it.
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Informer").finish_non_exhaustive()
    }
}

type Meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

impl<K> Informer<K>
where
    K: Resource + Metadata<Ty = Meta> + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts following `K` across all namespaces.
    pub fn start(client: &Client) -> Result<Self, ClientError> {
        let def = client.def::<K>()?;
        let (synced, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            cache: RwLock::new(BTreeMap::new()),
            handlers: RwLock::new(Vec::new()),
            synced,
        });
        let informer = Self {
            shared: shared.clone(),
        };
        let client = client.clone();
        tokio::spawn(async move { follow(client, def, shared).await });
        Ok(informer)
    }

    /// Registers a handler; it first hears about every object already cached, as a create.
    pub fn on_change(&self, handler: Handler<K>) {
        let mut handlers = self
            .shared
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let cache = self.shared.cache.read().unwrap_or_else(|e| e.into_inner());
        for object in cache.values() {
            handler(None, Some(object));
        }
        handlers.push(handler);
    }

    /// Waits until the first list is in the cache.
    pub async fn synced(&self) {
        let mut rx = self.shared.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// The cached object with this key.
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.shared
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.shared
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The cached objects of one namespace.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let start = format!("{namespace}/");
        self.shared
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(start.clone()..)
            .take_while(|(key, _)| key.starts_with(&start))
            .map(|(_, object)| object.clone())
            .collect()
    }
}

impl<K> Shared<K> {
    fn notify(&self, old: Option<&Arc<K>>, new: Option<&Arc<K>>) {
        let handlers = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        for handler in handlers.iter() {
            handler(old, new);
        }
    }
}

/// Decodes one stored object into `K` as the cache keeps it
/// ([`compact`](super::compact::compact)); `None` (logged) when it cannot be.
fn object_of<K>(def: &ResourceDef, kv: &KeyValue) -> Option<K>
where
    K: Resource + Metadata<Ty = Meta> + DeserializeOwned + 'static,
{
    // The common case, stored in the served form: straight from the bytes into `K` (one
    // parse instead of bytes → JSON value → `K`).
    if def.conversion.is_none() {
        if let Ok(mut object) = serde_json::from_slice::<K>(&kv.value) {
            object.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
            super::compact::compact(&mut object);
            return Some(object);
        }
    }
    let decoded = decode(kv).map(|mut value| {
        present(def, &mut value);
        value
    });
    match decoded.map_err(ClientError::from).and_then(from_value::<K>) {
        Ok(mut object) => {
            super::compact::compact(&mut object);
            Some(object)
        }
        Err(e) => {
            warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "skipping an object the informer cannot decode");
            None
        }
    }
}

/// The cache key of a store key: the part after the resource prefix.
fn cache_key(prefix: &str, key: &[u8]) -> ObjectKey {
    String::from_utf8_lossy(key.strip_prefix(prefix.as_bytes()).unwrap_or(key)).into_owned()
}

async fn follow<K>(client: Client, def: ResourceDef, shared: Arc<Shared<K>>)
where
    K: Resource + Metadata<Ty = Meta> + DeserializeOwned + Send + Sync + 'static,
{
    let prefix = def.prefix(None);
    let store = client.rest().store.clone();
    loop {
        let revision = match relist(&store, &def, &prefix, &shared).await {
            Ok(revision) => revision,
            Err(e) => {
                warn!(resource = def.plural, error = %e, "informer list failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        shared.synced.send_replace(true);
        let request = WatchRequest {
            prev_kv: true,
            ..WatchRequest::prefix(prefix.clone().into_bytes(), revision + 1)
        };
        let mut stream = match store.watch(request).await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(resource = def.plural, error = %e, "informer watch failed; relisting");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(batch) = stream.next().await {
            let batch = match batch {
                Ok(batch) => batch,
                Err(StoreError::Compacted { .. }) => {
                    debug!(resource = def.plural, "informer watch compacted; relisting");
                    break;
                }
                Err(e) => {
                    warn!(resource = def.plural, error = %e, "informer watch ended; relisting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            for event in batch.events {
                let key = cache_key(&prefix, &event.kv.key);
                match event.kind {
                    EventKind::Put => {
                        let Some(object) = object_of::<K>(&def, &event.kv) else {
                            continue;
                        };
                        let new = Arc::new(object);
                        let old = shared
                            .cache
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, new.clone());
                        shared.notify(old.as_ref(), Some(&new));
                    }
                    EventKind::Delete => {
                        let old = shared
                            .cache
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        if let Some(old) = old {
                            shared.notify(Some(&old), None);
                        }
                    }
                }
            }
        }
    }
}

/// Lists the prefix, replaces the cache with it and notifies the differences; returns the
/// list's revision.
async fn relist<K>(
    store: &Arc<dyn crate::store::Store>,
    def: &ResourceDef,
    prefix: &str,
    shared: &Shared<K>,
) -> Result<i64, StoreError>
where
    K: Resource + Metadata<Ty = Meta> + DeserializeOwned + 'static,
{
    let response = store
        .range(Range::prefix(prefix.as_bytes().to_vec()))
        .await?;
    let mut fresh: HashMap<ObjectKey, K> = HashMap::with_capacity(response.kvs.len());
    let mut versions: HashMap<ObjectKey, i64> = HashMap::with_capacity(response.kvs.len());
    for kv in &response.kvs {
        if let Some(object) = object_of::<K>(def, kv) {
            let key = cache_key(prefix, &kv.key);
            versions.insert(key.clone(), kv.mod_revision);
            fresh.insert(key, object);
        }
    }
    let mut changes = Vec::new();
    {
        let mut cache = shared.cache.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<ObjectKey> = cache
            .keys()
            .filter(|key| !fresh.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = cache.remove(&key) {
                changes.push((Some(old), None));
            }
        }
        for (key, object) in fresh {
            let unchanged = cache.get(&key).is_some_and(|cached| {
                cached.metadata().resource_version.as_deref()
                    == Some(versions[&key].to_string().as_str())
            });
            if unchanged {
                continue;
            }
            let new = Arc::new(object);
            let old = cache.insert(key, new.clone());
            changes.push((old, Some(new)));
        }
    }
    for (old, new) in &changes {
        shared.notify(old.as_ref(), new.as_ref());
    }
    Ok(response.revision)
}

/// One informer per resource type for the whole process, shared by every controller that
/// reads that type (client-go's SharedInformerFactory).
pub struct Informers {
    client: Client,
    started: std::sync::Mutex<HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>>,
}

impl fmt::Debug for Informers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Informers").finish_non_exhaustive()
    }
}

impl Informers {
    /// A factory reading through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            started: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The informer of `K`, started on first use.
    pub fn get<K>(&self) -> Result<Informer<K>, ClientError>
    where
        K: Resource + Metadata<Ty = Meta> + DeserializeOwned + Send + Sync + 'static,
    {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let id = std::any::TypeId::of::<K>();
        if let Some(informer) = started
            .get(&id)
            .and_then(|b| b.downcast_ref::<Informer<K>>())
        {
            return Ok(informer.clone());
        }
        let informer = Informer::<K>::start(&self.client)?;
        started.insert(id, Box::new(informer.clone()));
        Ok(informer)
    }
}
