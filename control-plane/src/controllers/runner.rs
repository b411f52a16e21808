//! Running a controller's reconcile function over its work queue: a few workers take keys
//! while this process leads, a success forgets the key's failures (or re-queues it after
//! the delay the reconcile asked for), a failure re-queues it with backoff.
//!
//! Owns the worker loop only; reconcile functions own their logic.
use std::{future::Future, sync::Arc, time::Duration};

use tracing::{debug, warn};

use crate::client::{leader::Leadership, ClientError, WorkQueue};

/// What a reconcile asks for after it ran.
pub type Requeue = Option<Duration>;

/// Starts `workers` tasks that reconcile keys from `queue` while `leadership` is true.
pub fn run_workers<F, Fut>(
    name: &'static str,
    queue: WorkQueue,
    leadership: Leadership,
    workers: usize,
    reconcile: F,
) where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Requeue, ClientError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let mut leadership = leadership.clone();
        let reconcile = reconcile.clone();
        tokio::spawn(async move {
            loop {
                if leadership.wait_for(|leading| *leading).await.is_err() {
                    return;
                }
                let Some(key) = queue.next().await else {
                    return;
                };
                match reconcile(key.clone()).await {
                    Ok(requeue) => {
                        queue.forget(&key);
                        if let Some(after) = requeue {
                            queue.add_after(key.clone(), after);
                        }
                    }
                    Err(e) if e.is_conflict() || e.is_not_found() => {
                        debug!(controller = name, %key, error = %e, "retrying after a stale read");
                        queue.add_rate_limited(key.clone());
                    }
                    Err(e) => {
                        warn!(controller = name, %key, error = %e, "reconcile failed; retrying");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
}
