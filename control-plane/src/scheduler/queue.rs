//! kube-scheduler's scheduling queue: pending pods wait in an active heap (higher priority
//! first, then first come), a backoff area (1 s doubling to 10 s per failed attempt), or the
//! unschedulable set, from which a cluster change (a node added or changed, a pod deleted)
//! or five minutes' wait moves them back.
//!
//! Owns which pending pod is tried next and when; it knows nothing of nodes.
use std::{
    cmp::Ordering,
    collections::{BTreeMap, BinaryHeap, HashMap},
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;

use crate::client::CachedPod;

/// First backoff after a failed attempt.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest stay in the unschedulable set without a cluster change.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    priority: i32,
    seq: u64,
    key: String,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    /// Popped; being scheduled.
    InFlight,
}

#[derive(Debug)]
struct Pending {
    pod: Arc<CachedPod>,
    place: Place,
    attempts: u32,
    /// Updated while in flight: try again at once when the attempt fails.
    changed: bool,
}

/// The pending pods.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    pods: HashMap<String, Pending>,
    active: BinaryHeap<Entry>,
    backoff: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

fn priority(pod: &CachedPod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The backoff after `attempts` failed attempts.
pub fn backoff_for(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(10);
    INITIAL_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF)
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn push_active(&mut self, key: String, pod: &CachedPod) {
        self.seq += 1;
        self.active.push(Entry {
            priority: priority(pod),
            seq: self.seq,
            key,
        });
    }

    /// A pending pod was added or changed; `relevant` says whether the change may change
    /// where it fits (a status-only change does not move it out of the unschedulable set).
    pub fn add_or_update(&mut self, key: &str, pod: Arc<CachedPod>, relevant: bool) {
        match self.pods.get_mut(key) {
            Some(pending) => {
                pending.pod = pod.clone();
                if !relevant {
                    return;
                }
                match pending.place {
                    Place::InFlight => pending.changed = true,
                    Place::Unschedulable(_) => {
                        pending.place = Place::Active;
                        self.push_active(key.to_owned(), &pod);
                    }
                    Place::Active | Place::Backoff(_) => {}
                }
            }
            None => {
                self.pods.insert(
                    key.to_owned(),
                    Pending {
                        pod: pod.clone(),
                        place: Place::Active,
                        attempts: 0,
                        changed: false,
                    },
                );
                self.push_active(key.to_owned(), &pod);
            }
        }
    }

    /// A pod stopped pending (bound, deleted, or no longer ours).
    pub fn remove(&mut self, key: &str) {
        self.pods.remove(key);
    }

    /// The next pod to try: highest priority, then oldest. Stale heap entries are skipped.
    pub fn pop(&mut self) -> Option<(String, Arc<CachedPod>)> {
        while let Some(entry) = self.active.pop() {
            if let Some(pending) = self.pods.get_mut(&entry.key) {
                if pending.place == Place::Active {
                    pending.place = Place::InFlight;
                    pending.attempts += 1;
                    pending.changed = false;
                    return Some((entry.key, pending.pod.clone()));
                }
            }
        }
        None
    }

    /// The attempt found no node: wait for a cluster change (or try again at once if the
    /// pod changed meanwhile).
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        let Some(pending) = self.pods.get_mut(key) else {
            return;
        };
        if pending.changed {
            pending.place = Place::Active;
            let pod = pending.pod.clone();
            self.push_active(key.to_owned(), &pod);
        } else {
            pending.place = Place::Unschedulable(now);
        }
    }

    /// The attempt failed for another reason (e.g. binding): retry after the backoff.
    pub fn retry_later(&mut self, key: &str, now: Instant) {
        let Some(pending) = self.pods.get_mut(key) else {
            return;
        };
        let at = now + backoff_for(pending.attempts);
        pending.place = Place::Backoff(at);
        self.seq += 1;
        self.backoff.insert((at, self.seq), key.to_owned());
    }

    /// A cluster change that may make unschedulable pods fit: they go back to the active
    /// heap, or to backoff when their backoff has not expired.
    pub fn move_all_unschedulable(&mut self, now: Instant) {
        self.move_unschedulable(now, |_| true);
    }

    /// Moves pods that have waited [`MAX_UNSCHEDULABLE`] without a change.
    pub fn flush_stale_unschedulable(&mut self, now: Instant) {
        self.move_unschedulable(now, |since| now.duration_since(since) >= MAX_UNSCHEDULABLE);
    }

    fn move_unschedulable(&mut self, now: Instant, select: impl Fn(Instant) -> bool) {
        let mut to_active = Vec::new();
        let mut to_backoff = Vec::new();
        for (key, pending) in &mut self.pods {
            if let Place::Unschedulable(since) = pending.place {
                if !select(since) {
                    continue;
                }
                let until = since + backoff_for(pending.attempts);
                if until > now {
                    pending.place = Place::Backoff(until);
                    to_backoff.push((until, key.clone()));
                } else {
                    pending.place = Place::Active;
                    to_active.push((key.clone(), pending.pod.clone()));
                }
            }
        }
        for (key, pod) in to_active {
            self.push_active(key, &pod);
        }
        for (at, key) in to_backoff {
            self.seq += 1;
            self.backoff.insert((at, self.seq), key);
        }
    }

    /// Moves pods whose backoff ended to the active heap; returns when the next one ends.
    pub fn flush_backoff(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(at, seq), _)) = self.backoff.first_key_value() {
            if at > now {
                return Some(at);
            }
            let Some(key) = self.backoff.remove(&(at, seq)) else {
                break;
            };
            let pod = match self.pods.get_mut(&key) {
                Some(pending) if pending.place == Place::Backoff(at) => {
                    pending.place = Place::Active;
                    pending.pod.clone()
                }
                _ => continue,
            };
            self.push_active(key, &pod);
        }
        None
    }

    /// Whether a pod is waiting in the active heap.
    pub fn has_active(&self) -> bool {
        self.pods.values().any(|p| p.place == Place::Active)
    }

    /// How many pods are pending in any state.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodSpec};

    fn pod(priority: i32) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            spec: Some(PodSpec {
                priority: Some(priority),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }))
    }

    #[test]
    fn higher_priority_first_then_first_come() {
        let mut queue = SchedulingQueue::new();
        queue.add_or_update("a", pod(0), true);
        queue.add_or_update("b", pod(10), true);
        queue.add_or_update("c", pod(0), true);
        let order: Vec<String> = std::iter::from_fn(|| queue.pop().map(|(k, _)| k)).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(4), Duration::from_secs(8));
        assert_eq!(backoff_for(9), Duration::from_secs(10));
    }

    #[test]
    fn unschedulable_pods_return_on_a_cluster_change_after_their_backoff() {
        let mut queue = SchedulingQueue::new();
        let start = Instant::now();
        queue.add_or_update("a", pod(0), true);
        assert!(queue.pop().is_some());
        queue.unschedulable("a", start);
        assert!(queue.pop().is_none());
        // A change within the backoff parks it in backoff, not active.
        queue.move_all_unschedulable(start + Duration::from_millis(100));
        assert!(queue.pop().is_none());
        assert_eq!(
            queue.flush_backoff(start + Duration::from_millis(200)),
            Some(start + Duration::from_secs(1))
        );
        queue.flush_backoff(start + Duration::from_secs(1));
        assert_eq!(queue.pop().map(|(k, _)| k).as_deref(), Some("a"));
    }

    #[test]
    fn an_update_while_in_flight_retries_at_once() {
        let mut queue = SchedulingQueue::new();
        let now = Instant::now();
        queue.add_or_update("a", pod(0), true);
        assert!(queue.pop().is_some());
        queue.add_or_update("a", pod(1), true);
        queue.unschedulable("a", now);
        assert!(queue.pop().is_some());
    }

    #[test]
    fn stale_unschedulable_pods_are_flushed_after_five_minutes() {
        let mut queue = SchedulingQueue::new();
        let start = Instant::now();
        queue.add_or_update("a", pod(0), true);
        queue.pop();
        queue.unschedulable("a", start);
        queue.flush_stale_unschedulable(start + Duration::from_secs(10));
        assert!(queue.pop().is_none());
        queue.flush_stale_unschedulable(start + MAX_UNSCHEDULABLE);
        assert!(queue.pop().is_some());
    }
}
