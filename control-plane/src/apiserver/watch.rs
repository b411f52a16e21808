//! Watch over HTTP: newline-delimited `{"type": ..., "object": ...}` events from a store
//! watch, as kube-apiserver streams them. A watch from resourceVersion "" or "0" starts with
//! ADDED events for the current objects; a watch from a compacted resourceVersion gets one
//! ERROR event carrying a 410 Expired Status; BOOKMARK events (only resourceVersion) come
//! periodically when the client allows them.
//!
//! Owns the translation from store events to watch events, including selector transitions
//! (an object that stops matching is DELETED for this watch, one that starts is ADDED).
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    objects::{self, FieldSelector, LabelSelector},
    resources::ResourceDef,
    rest::{decode, Query, Rest},
    status::ApiError,
};
use crate::store::{EventKind, KeyValue, RangeEnd, StoreError, WatchRequest};

/// Longest a watch stays open when the client does not say (kube picks 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a BOOKMARK is sent to clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// The lines of one watch, as a channel the HTTP body drains.
pub type Lines = mpsc::Receiver<Bytes>;

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch; the returned channel ends when the watch does.
pub async fn start(
    rest: &Rest,
    def: &ResourceDef,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Lines, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str), def)?;
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| super::server::query_bool(v));
    let (tx, rx) = mpsc::channel(256);
    let mut initial = Vec::new();
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let mut list_query = query.clone();
            list_query.remove("limit");
            list_query.remove("continue");
            list_query.remove("resourceVersion");
            let list = rest.list(def, namespace, &list_query).await?;
            let revision = list["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|rv| rv.parse::<i64>().ok())
                .unwrap_or(0);
            for mut item in list["items"].as_array().cloned().unwrap_or_default() {
                item["apiVersion"] = json!(def.api_version());
                item["kind"] = json!(def.kind);
                initial.push(line("ADDED", &item));
            }
            revision + 1
        }
        Some(rv) => {
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?
                + 1
        }
    };
    let request = WatchRequest {
        key: def.prefix(namespace).into_bytes(),
        end: RangeEnd::Prefix,
        start_revision: start,
        prev_kv: true,
    };
    let stream = match rest.store.watch(request).await {
        Ok(stream) => Some(stream),
        Err(StoreError::Compacted { .. }) => None,
        Err(err) => return Err(err.into()),
    };
    let def = def.clone();
    let api_version = def.api_version();
    tokio::spawn(async move {
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let Some(mut stream) = stream else {
            let status =
                ApiError::expired(format!("too old resource version: {}", start - 1)).status();
            let _ = tx.send(line("ERROR", &status)).await;
            return;
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        let mut last = start - 1;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({
                        "kind": def.kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": last.to_string()},
                    });
                    if tx.send(line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                batch = stream.next() => {
                    let batch = match batch {
                        Some(Ok(batch)) => batch,
                        Some(Err(StoreError::Compacted { .. })) => {
                            let status = ApiError::expired("too old resource version").status();
                            let _ = tx.send(line("ERROR", &status)).await;
                            return;
                        }
                        Some(Err(err)) => {
                            let status = ApiError::from(err).status();
                            let _ = tx.send(line("ERROR", &status)).await;
                            return;
                        }
                        None => return,
                    };
                    last = batch.revision;
                    for event in batch.events {
                        let Some((kind, mut object)) = translate(&event.kind, &event.kv, event.prev_kv.as_ref(), batch.revision, &labels, &fields) else {
                            continue;
                        };
                        super::rest::present(&def, &mut object);
                        if tx.send(line(kind, &object)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// The watch event for one store event as this watch's selectors see it.
fn translate(
    kind: &EventKind,
    kv: &KeyValue,
    prev: Option<&KeyValue>,
    revision: i64,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    let selected = |obj: &Value| labels.matches(obj) && fields.matches(obj);
    let old = prev.and_then(|p| decode(p).ok());
    let was = old.as_ref().is_some_and(selected);
    match kind {
        EventKind::Delete => {
            let mut obj = old?;
            objects::set_resource_version(&mut obj, revision);
            was.then_some(("DELETED", obj))
        }
        EventKind::Put => {
            let obj = decode(kv).ok()?;
            let is = selected(&obj);
            match (was, is) {
                (true, true) => Some(("MODIFIED", obj)),
                (false, true) => Some(("ADDED", obj)),
                (true, false) => Some(("DELETED", obj)),
                (false, false) => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: Value, revision: i64) -> KeyValue {
        KeyValue {
            key: b"/registry/configmaps/default/a".to_vec(),
            value: serde_json::to_vec(&value).unwrap_or_default(),
            create_revision: 2,
            mod_revision: revision,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn selector_transitions() -> Result<(), ApiError> {
        let labels = LabelSelector::parse("app=web")?;
        let fields = FieldSelector::default();
        let web = json!({"metadata": {"name": "a", "labels": {"app": "web"}}});
        let other = json!({"metadata": {"name": "a", "labels": {"app": "db"}}});
        let added = translate(
            &EventKind::Put,
            &kv(web.clone(), 3),
            None,
            3,
            &labels,
            &fields,
        );
        assert_eq!(added.map(|(k, _)| k), Some("ADDED"));
        let left = translate(
            &EventKind::Put,
            &kv(other.clone(), 4),
            Some(&kv(web.clone(), 3)),
            4,
            &labels,
            &fields,
        );
        assert_eq!(left.map(|(k, _)| k), Some("DELETED"));
        let unseen = translate(
            &EventKind::Put,
            &kv(other.clone(), 5),
            Some(&kv(other, 4)),
            5,
            &labels,
            &fields,
        );
        assert!(unseen.is_none());
        let deleted = translate(
            &EventKind::Delete,
            &kv(json!({}), 6),
            Some(&kv(web, 3)),
            6,
            &labels,
            &fields,
        );
        let (kind, obj) = deleted.ok_or_else(|| ApiError::internal("no event"))?;
        assert_eq!(kind, "DELETED");
        assert_eq!(obj["metadata"]["resourceVersion"], "6");
        Ok(())
    }
}
