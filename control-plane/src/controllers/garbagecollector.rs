//! The garbage collector (kube-controller-manager's `garbagecollector`): follows every object
//! in the store, keeps the graph of `ownerReferences` by UID, and
//! - deletes dependents whose owners are all gone (background cascading deletion), with
//!   Foreground propagation when an owner is itself being deleted in the foreground;
//! - for an owner deleted in the foreground (`foregroundDeletion` finalizer), deletes its
//!   dependents and removes the finalizer once no dependent with `blockOwnerDeletion`
//!   remains;
//! - for an owner deleted with `orphan` propagation, removes its reference from every
//!   dependent, then the `orphan` finalizer;
//! - removes references to owners that no longer exist from objects that still have others.
//!
//! Owns ownerReference-driven deletion only. It reads the store's `/registry/` range and its
//! watch (decoded as the REST layer decodes objects) and writes through the REST layer.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::runner::{run_workers, Requeue};
use crate::{
    apiserver::{
        resources::ResourceDef,
        rest::{PatchKind, Query, Rest},
    },
    client::{leader::Leadership, ClientError, WorkQueue},
    store::{EventKind, KeyValue, Range, StoreError, WatchRequest},
};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// An owner reference as the graph keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerRef {
    uid: String,
    kind: String,
    name: String,
    block: bool,
}

/// One object in the graph. The graph holds every object of the cluster, so its key and UID
/// are shared (`Arc<str>`) between the two indexes rather than copied into each.
#[derive(Debug, Clone)]
struct Vertex {
    /// Store key.
    key: Arc<str>,
    owners: Vec<OwnerRef>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Debug, Default)]
struct Graph {
    vertices: HashMap<Arc<str>, Vertex>,
    /// Owner UID → dependent UIDs (owners may be absent from `vertices`).
    dependents: HashMap<String, HashSet<String>>,
    /// Store key → UID.
    by_key: HashMap<Arc<str>, Arc<str>>,
}

impl Graph {
    /// Records an object; returns the UIDs of owners it dropped (to re-check those).
    fn upsert(&mut self, uid: String, vertex: Vertex) {
        self.remove(&uid);
        for owner in &vertex.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        let uid: Arc<str> = uid.into();
        self.by_key.insert(vertex.key.clone(), uid.clone());
        self.vertices.insert(uid, vertex);
    }

    fn remove(&mut self, uid: &str) -> Option<Vertex> {
        let vertex = self.vertices.remove(uid)?;
        for owner in &vertex.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
        if self.by_key.get(&*vertex.key).map(|u| &**u) == Some(uid) {
            self.by_key.remove(&*vertex.key);
        }
        Some(vertex)
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Work items: an object UID, with a marker for what to look at.
fn item(kind: &str, uid: &str) -> String {
    format!("{kind}:{uid}")
}

/// Starts the garbage collector.
pub fn start(rest: &Rest, leadership: Leadership) {
    let graph = Arc::new(Mutex::new(Graph::default()));
    let queue = WorkQueue::new();
    let collector = Arc::new(Collector {
        rest: rest.clone(),
        graph: graph.clone(),
    });
    tokio::spawn(follow(rest.clone(), graph, queue.clone()));
    run_workers("garbagecollector", queue, leadership, 2, move |key| {
        let collector = collector.clone();
        async move { collector.process(&key).await }
    });
}

/// The part of a stored object the graph needs; the rest of the JSON is skipped unparsed
/// (the collector reads every write of the cluster, so this is its hot path).
#[derive(Debug, serde::Deserialize)]
struct StoredObject {
    #[serde(default)]
    metadata: StoredMeta,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct StoredMeta {
    uid: Option<String>,
    owner_references: Vec<StoredOwner>,
    finalizers: Vec<String>,
    deletion_timestamp: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredOwner {
    uid: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    block_owner_deletion: Option<bool>,
}

/// The graph vertex of a stored object (`None` for objects without a UID or not JSON).
fn vertex_of(kv: &KeyValue) -> Option<(String, Vertex)> {
    let object: StoredObject = serde_json::from_slice(&kv.value).ok()?;
    let meta = object.metadata;
    let uid = meta.uid?;
    let owners = meta
        .owner_references
        .into_iter()
        .map(|r| OwnerRef {
            uid: r.uid,
            kind: r.kind,
            name: r.name,
            block: r.block_owner_deletion == Some(true),
        })
        .collect();
    Some((
        uid,
        Vertex {
            key: String::from_utf8_lossy(&kv.key).into(),
            owners,
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers,
        },
    ))
}

/// Queues what an object's appearance or change calls for.
fn on_object(graph: &mut Graph, queue: &WorkQueue, uid: String, vertex: Vertex) {
    if vertex.deleting && vertex.finalizers.iter().any(|f| f == FOREGROUND) {
        for dependent in graph.dependents_of(&uid) {
            queue.add(item("delete", &dependent));
        }
        queue.add(item("foreground", &uid));
    }
    if vertex.deleting && vertex.finalizers.iter().any(|f| f == ORPHAN) {
        queue.add(item("orphan", &uid));
    }
    if !vertex.owners.is_empty() {
        queue.add(item("delete", &uid));
    }
    graph.upsert(uid, vertex);
}

fn on_removed(graph: &mut Graph, queue: &WorkQueue, uid: &str) {
    let Some(vertex) = graph.remove(uid) else {
        return;
    };
    for dependent in graph.dependents_of(uid) {
        queue.add(item("delete", &dependent));
    }
    // Owners waiting in the foreground for this dependent may now finish.
    for owner in vertex.owners {
        queue.add(item("foreground", &owner.uid));
    }
}

async fn follow(rest: Rest, graph: Arc<Mutex<Graph>>, queue: WorkQueue) {
    let prefix = b"/registry/".to_vec();
    loop {
        let listed = match rest.store.range(Range::prefix(prefix.clone())).await {
            Ok(listed) => listed,
            Err(e) => {
                warn!(error = %e, "garbage collector list failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        {
            let mut graph = graph.lock().unwrap_or_else(|e| e.into_inner());
            let mut seen = HashSet::new();
            for kv in &listed.kvs {
                if let Some((uid, vertex)) = vertex_of(kv) {
                    seen.insert(uid.clone());
                    on_object(&mut graph, &queue, uid, vertex);
                }
            }
            let gone: Vec<Arc<str>> = graph
                .vertices
                .keys()
                .filter(|uid| !seen.contains(&uid[..]))
                .cloned()
                .collect();
            for uid in gone {
                on_removed(&mut graph, &queue, &uid);
            }
        }
        info!(objects = listed.kvs.len(), "garbage collector graph synced");
        let request = WatchRequest {
            prev_kv: true,
            ..WatchRequest::prefix(prefix.clone(), listed.revision + 1)
        };
        let mut stream = match rest.store.watch(request).await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "garbage collector watch failed; relisting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(batch) = stream.next().await {
            let batch = match batch {
                Ok(batch) => batch,
                Err(StoreError::Compacted { .. }) => break,
                Err(e) => {
                    warn!(error = %e, "garbage collector watch ended; relisting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            let mut graph = graph.lock().unwrap_or_else(|e| e.into_inner());
            for event in batch.events {
                let key = String::from_utf8_lossy(&event.kv.key).into_owned();
                match event.kind {
                    EventKind::Put => {
                        if let Some((uid, vertex)) = vertex_of(&event.kv) {
                            // A new object under an old key: the old one is gone.
                            if let Some(old) = graph.by_key.get(key.as_str()).cloned() {
                                if *old != *uid {
                                    on_removed(&mut graph, &queue, &old);
                                }
                            }
                            on_object(&mut graph, &queue, uid, vertex);
                        }
                    }
                    EventKind::Delete => {
                        if let Some(uid) = graph.by_key.get(key.as_str()).cloned() {
                            on_removed(&mut graph, &queue, &uid);
                        }
                    }
                }
            }
        }
    }
}

struct Collector {
    rest: Rest,
    graph: Arc<Mutex<Graph>>,
}

/// How an owner stands for one of its dependents.
#[derive(Debug, PartialEq, Eq)]
enum OwnerState {
    /// Exists and is not being deleted in the foreground.
    Solid,
    /// Gone (or replaced by another object with the same name).
    Dangling,
    /// Being deleted in the foreground: dependents go first.
    WaitingForDependents,
}

impl Collector {
    fn query() -> Query {
        Query::from([("fieldManager".to_owned(), "garbage-collector".to_owned())])
    }

    /// The resource and namespace/name of a store key.
    fn locate(&self, key: &str) -> Option<(ResourceDef, Option<String>, String)> {
        let rest_of = key.strip_prefix("/registry/")?;
        let def = self
            .rest
            .registry
            .all()
            .into_iter()
            .filter(|d| rest_of.starts_with(&format!("{}/", d.storage)))
            .max_by_key(|d| d.storage.len())?;
        let tail = &rest_of[def.storage.len() + 1..];
        let (namespace, name) = if def.namespaced {
            let (ns, name) = tail.split_once('/')?;
            (Some(ns.to_owned()), name.to_owned())
        } else {
            (None, tail.to_owned())
        };
        Some((def, namespace, name))
    }

    fn vertex(&self, uid: &str) -> Option<Vertex> {
        self.graph
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .vertices
            .get(uid)
            .cloned()
    }

    async fn process(&self, item: &str) -> Result<Requeue, ClientError> {
        let Some((kind, uid)) = item.split_once(':') else {
            return Ok(None);
        };
        match kind {
            "delete" => self.attempt_to_delete(uid).await,
            "foreground" => self.finish_foreground(uid).await,
            "orphan" => self.orphan_dependents(uid).await,
            _ => Ok(None),
        }
    }

    /// The latest object for a vertex, straight from the store.
    async fn fetch(
        &self,
        vertex: &Vertex,
    ) -> Result<Option<(ResourceDef, Option<String>, String, Value)>, ClientError> {
        let Some((def, namespace, name)) = self.locate(&vertex.key) else {
            return Ok(None);
        };
        match self.rest.get(&def, namespace.as_deref(), &name).await {
            Ok(object) => Ok(Some((def, namespace, name, object))),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Rewrites one metadata list of a fetched object (`ownerReferences`, `finalizers`)
    /// with the object's resourceVersion as precondition; false when it is gone.
    async fn rewrite_metadata(
        &self,
        (def, namespace, name, object): &(ResourceDef, Option<String>, String, Value),
        field: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<bool, ClientError> {
        let kept: Vec<Value> = object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| keep(v))
            .cloned()
            .collect();
        let patch = json!({"metadata": {
            field: kept,
            "resourceVersion": object.pointer("/metadata/resourceVersion"),
        }});
        let patched = self
            .rest
            .patch(
                def,
                namespace.as_deref(),
                name,
                PatchKind::Merge,
                patch.to_string().as_bytes(),
                &Self::query(),
            )
            .await;
        match patched {
            Ok(_) => Ok(true),
            Err(e) if e.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn owner_state(&self, owner: &OwnerRef) -> OwnerState {
        match self.vertex(&owner.uid) {
            None => OwnerState::Dangling,
            Some(v) if v.deleting && v.finalizers.iter().any(|f| f == FOREGROUND) => {
                OwnerState::WaitingForDependents
            }
            Some(_) => OwnerState::Solid,
        }
    }

    async fn attempt_to_delete(&self, uid: &str) -> Result<Requeue, ClientError> {
        let Some(vertex) = self.vertex(uid) else {
            return Ok(None);
        };
        if vertex.owners.is_empty() {
            return Ok(None);
        }
        let states: Vec<(OwnerRef, OwnerState)> = vertex
            .owners
            .iter()
            .map(|o| (o.clone(), self.owner_state(o)))
            .collect();
        let solid = states.iter().any(|(_, s)| *s == OwnerState::Solid);
        let dangling = states.iter().any(|(_, s)| *s == OwnerState::Dangling);
        let waiting = states
            .iter()
            .any(|(_, s)| *s == OwnerState::WaitingForDependents);
        if !dangling && !waiting {
            return Ok(None);
        }
        let Some(fetched) = self.fetch(&vertex).await? else {
            return Ok(None);
        };
        let (def, namespace, name, object) = &fetched;
        if object.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
            return Ok(None);
        }
        if solid {
            // Keep the object; drop references to owners that are gone.
            if !dangling {
                return Ok(None);
            }
            self.rewrite_metadata(&fetched, "ownerReferences", |r| {
                let owner_uid = r.get("uid").and_then(Value::as_str).unwrap_or_default();
                states
                    .iter()
                    .any(|(o, s)| o.uid == owner_uid && *s != OwnerState::Dangling)
            })
            .await?;
            debug!(object = %vertex.key, "removed dangling owner references");
            return Ok(None);
        }
        if vertex.deleting {
            return Ok(None);
        }
        // Every owner is gone or going: delete, in the foreground when an owner waits on us.
        let has_own_dependents = !self
            .graph
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dependents_of(uid)
            .is_empty();
        let policy = if waiting && has_own_dependents {
            "Foreground"
        } else {
            "Background"
        };
        let options = json!({"propagationPolicy": policy, "preconditions": {"uid": uid}});
        match self
            .rest
            .delete(
                def,
                namespace.as_deref(),
                name,
                Some(options),
                &Self::query(),
            )
            .await
        {
            Ok(_) => {
                info!(object = %vertex.key, policy, "deleted a dependent whose owners are gone");
                Ok(None)
            }
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `foregroundDeletion` once no blocking dependent remains.
    async fn finish_foreground(&self, uid: &str) -> Result<Requeue, ClientError> {
        let Some(vertex) = self.vertex(uid) else {
            return Ok(None);
        };
        if !vertex.deleting || !vertex.finalizers.iter().any(|f| f == FOREGROUND) {
            return Ok(None);
        }
        let blocking = {
            let graph = self.graph.lock().unwrap_or_else(|e| e.into_inner());
            graph.dependents_of(uid).iter().any(|d| {
                graph
                    .vertices
                    .get(d.as_str())
                    .is_some_and(|v| v.owners.iter().any(|o| o.uid == uid && o.block))
            })
        };
        if blocking {
            return Ok(None);
        }
        self.remove_finalizer(&vertex, uid, FOREGROUND).await
    }

    /// Removes the owner's reference from every dependent, then `orphan`.
    async fn orphan_dependents(&self, uid: &str) -> Result<Requeue, ClientError> {
        let Some(vertex) = self.vertex(uid) else {
            return Ok(None);
        };
        if !vertex.deleting || !vertex.finalizers.iter().any(|f| f == ORPHAN) {
            return Ok(None);
        }
        let dependents = self
            .graph
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dependents_of(uid);
        for dependent in dependents {
            let Some(dep) = self.vertex(&dependent) else {
                continue;
            };
            let Some(fetched) = self.fetch(&dep).await? else {
                continue;
            };
            self.rewrite_metadata(&fetched, "ownerReferences", |r| {
                r.get("uid").and_then(Value::as_str) != Some(uid)
            })
            .await?;
        }
        self.remove_finalizer(&vertex, uid, ORPHAN).await
    }

    async fn remove_finalizer(
        &self,
        vertex: &Vertex,
        uid: &str,
        finalizer: &str,
    ) -> Result<Requeue, ClientError> {
        let Some(fetched) = self.fetch(vertex).await? else {
            return Ok(None);
        };
        if fetched.3.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
            return Ok(None);
        }
        let found = self
            .rewrite_metadata(&fetched, "finalizers", |f| f.as_str() != Some(finalizer))
            .await?;
        if found {
            info!(object = %vertex.key, finalizer, "garbage collector finished its part");
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex(key: &str, owners: &[&str]) -> Vertex {
        Vertex {
            key: key.into(),
            owners: owners
                .iter()
                .map(|uid| OwnerRef {
                    uid: (*uid).to_owned(),
                    kind: "ReplicaSet".to_owned(),
                    name: "rs".to_owned(),
                    block: true,
                })
                .collect(),
            deleting: false,
            finalizers: Vec::new(),
        }
    }

    #[test]
    fn the_graph_tracks_dependents_by_owner_uid() {
        let mut graph = Graph::default();
        let queue = WorkQueue::new();
        on_object(
            &mut graph,
            &queue,
            "rs".into(),
            vertex("/registry/replicasets/ns/rs", &[]),
        );
        on_object(
            &mut graph,
            &queue,
            "p1".into(),
            vertex("/registry/pods/ns/p1", &["rs"]),
        );
        on_object(
            &mut graph,
            &queue,
            "p2".into(),
            vertex("/registry/pods/ns/p2", &["rs"]),
        );
        let mut dependents = graph.dependents_of("rs");
        dependents.sort();
        assert_eq!(dependents, ["p1", "p2"]);
        // The owner goes: its dependents are queued for deletion.
        let queue = WorkQueue::new();
        on_removed(&mut graph, &queue, "rs");
        assert_eq!(queue.len(), 2);
        // A dependent re-parented drops out of the old owner's set.
        on_object(
            &mut graph,
            &queue,
            "p1".into(),
            vertex("/registry/pods/ns/p1", &["other"]),
        );
        assert_eq!(graph.dependents_of("rs"), ["p2"]);
    }
}
