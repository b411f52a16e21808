//! Recording core/v1 Events about objects (client-go's EventRecorder), as the scheduler and
//! controllers do: `Scheduled`, `FailedScheduling`, `SuccessfulCreate`, `ScalingReplicaSet`.
//! Events are written in the background and never block or fail the caller's work: each
//! recorder queues at most [`QUEUED_EVENTS`] and one writer task writes them in order, one at
//! a time (client-go's broadcaster); an event that finds the queue full, or whose write
//! fails, is logged and dropped, as upstream drops events under pressure. A burst of events
//! (a scheduler failing 10k pods) thus costs a bounded queue, not a task per event.
//!
//! Owns the Event's shape (involvedObject, source, reporting fields, timestamps) and the
//! queue; it must not aggregate events yet.
use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
    Metadata, Resource,
};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tracing::debug;

use super::api::Client;

/// Events a recorder holds for its writer; more are dropped (client-go's broadcaster queues
/// 1000).
pub const QUEUED_EVENTS: usize = 1000;

/// Writes Events as one component (e.g. `default-scheduler`).
#[derive(Debug, Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
    instance: String,
    /// The writer's queue, started by the first event (recorders are made before the
    /// runtime runs them).
    queue: Arc<OnceLock<mpsc::Sender<Event>>>,
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
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// The writer's queue; the first call starts the writer.
    fn queue(&self) -> &mpsc::Sender<Event> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUED_EVENTS);
            tokio::spawn(write_events(self.client.clone(), rx));
            tx
        })
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
                namespace: Some(namespace),
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
        if let Err(e) = self.queue().try_send(event) {
            debug!(component = self.component, error = %e, "dropping an event");
        }
    }
}

/// Writes a recorder's queued events one at a time, until every recorder handle is gone.
async fn write_events(client: Client, mut queue: mpsc::Receiver<Event>) {
    while let Some(event) = queue.recv().await {
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let result = match client.namespaced::<Event>(&namespace) {
            Ok(api) => api.create(&event).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            debug!(error = %e, "dropping an event");
        }
    }
}
