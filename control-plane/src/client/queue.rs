//! A work queue of object keys (client-go's workqueue): a key is queued at most once, a key
//! being processed is never handed to a second worker (it is re-queued when done if it was
//! added meanwhile), and failures come back after an exponential, per-key delay.
//!
//! Owns ordering and deduplication only; what a key means is the controller's business.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

/// First retry delay after a failure.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// Longest retry delay.
const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Added while being processed: queued again by `done`.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
    shut_down: bool,
}

/// A deduplicating queue of keys with per-key retry backoff.
#[derive(Debug, Clone, Default)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

impl WorkQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a key (no-op when it is already queued).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut state = self.lock();
        if state.shut_down {
            return;
        }
        if state.processing.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues a key after a delay.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Queues a key after its failure backoff (5 ms doubling to 60 s) and counts a failure.
    pub fn add_rate_limited(&self, key: impl Into<String>) {
        let key = key.into();
        let failures = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            *failures
        };
        self.add_after(key, backoff(failures));
    }

    /// Forgets a key's failures (after a success).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// How many times a key failed in a row.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process; `None` once the queue is shut down. Call [`Self::done`]
    /// with it afterwards.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if state.shut_down {
                    return None;
                }
                if let Some(key) = state.queue.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    if !state.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Marks a key processed; it is queued again if it was added meanwhile.
    pub fn done(&self, key: &str) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.remove(key) && state.queued.insert(key.to_owned()) {
            state.queue.push_back(key.to_owned());
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Stops handing out keys; waiting workers get `None`.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.ready.notify_waiters();
    }

    /// Keys waiting (not counting those in progress).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no key is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The delay before retry number `failures`.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    BASE_DELAY.saturating_mul(1u32 << exponent).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_processed_twice_at_a_time() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.next().await;
        assert_eq!(first.as_deref(), Some("a"));
        // Added while processing: not handed out until done.
        queue.add("a");
        assert_eq!(queue.next().await.as_deref(), Some("b"));
        assert!(queue.is_empty());
        queue.done("a");
        assert_eq!(queue.next().await.as_deref(), Some("a"));
        queue.done("a");
        queue.done("b");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let queue = WorkQueue::new();
        let worker = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        queue.shut_down();
        assert_eq!(worker.await.ok().flatten(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_forget_resets() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(30), MAX_DELAY);
        let queue = WorkQueue::new();
        queue.add_rate_limited("k");
        queue.add_rate_limited("k");
        assert_eq!(queue.failures("k"), 2);
        let started = tokio::time::Instant::now();
        assert_eq!(queue.next().await.as_deref(), Some("k"));
        assert!(started.elapsed() >= Duration::from_millis(5));
        queue.forget("k");
        assert_eq!(queue.failures("k"), 0);
    }
}
