//! Recording core/v1 Events about objects (client-go's EventRecorder), as the scheduler and
//! controllers do: `Scheduled`, `FailedScheduling`, `SuccessfulCreate`, `ScalingReplicaSet`.
//! Events are written in the background and never block or fail the caller's work; a write
//! that fails is logged and dropped, as upstream drops events under pressure.
//!
//! Owns the Event's shape (involvedObject, source, reporting fields, timestamps); it must
//! not aggregate or rate-limit beyond that yet.
use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
    Metadata, Resource,
};
use tracing::debug;

use super::api::Client;

/// Writes Events as one component (e.g. `default-scheduler`).
#[derive(Debug, Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
    instance: String,
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// A reference to an object, for `involvedObject`.
pub fn reference_to<K>(object: &K) -> ObjectReference
where
    K: Resource + Metadata<Ty = ObjectMeta>,
{
    let meta = object.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.to_owned()),
        kind: Some(K::KIND.to_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    }
}

fn now() -> Time {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(Timestamp::new(since.as_secs() as i64, 0).unwrap_or(Timestamp::UNIX_EPOCH))
}

impl Recorder {
    /// A recorder for `component` running as `instance` (the process identity).
    pub fn new(client: Client, component: &'static str, instance: &str) -> Self {
        Self {
            client,
            component,
            instance: instance.to_owned(),
        }
    }

    /// Records an event about `object` in the background.
    pub fn record(&self, object: ObjectReference, kind: EventType, reason: &str, message: String) {
        let namespace = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let name = format!(
            "{}.{:016x}",
            object.name.as_deref().unwrap_or("object"),
            rand::random::<u64>()
        );
        let at = now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object,
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            source: Some(EventSource {
                component: Some(self.component.to_owned()),
                host: None,
            }),
            first_timestamp: Some(at.clone()),
            last_timestamp: Some(at),
            count: Some(1),
            reporting_component: Some(self.component.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let result = match client.namespaced::<Event>(&namespace) {
                Ok(api) => api.create(&event).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                debug!(error = %e, "dropping an event");
            }
        });
    }
}
