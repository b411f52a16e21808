//! The in-process Kubernetes client that the scheduler and the controllers use: typed verbs
//! ([`api`]), list-and-watch caches ([`informer`]) of trimmed objects ([`compact`]; pods in the slim
//! [`cached_pod`] form), work
//! queues ([`queue`]) and Lease-based leader election ([`leader`]).
//!
//! It reaches the cluster through the API server's REST layer ([`crate::apiserver::rest`]),
//! so every write takes the same validation, defaulting, admission and optimistic-concurrency
//! path as a kubectl request; only TLS and JSON on the wire are skipped. It must not reach
//! into the store past what the REST layer offers for reads (informers read the store's
//! ranges and watches, decoded exactly as the REST layer decodes them).
pub mod api;
pub mod cached_pod;
pub mod compact;
pub mod events;
pub mod informer;
pub mod labels;
pub mod leader;
pub mod queue;

pub use api::{Api, Client, ClientError};
pub use cached_pod::CachedPod;
pub use informer::{Informer, Informers, ObjectKey};
pub use queue::WorkQueue;
