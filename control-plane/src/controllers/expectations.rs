//! Controller expectations (client-go's `ControllerExpectations`): after a controller asks
//! the API for N creations or deletions, it must not act on the same owner again until its
//! informer has seen them — otherwise a second reconcile, running on a cache that does not
//! show the new pods yet, would create them twice. Expectations expire after five minutes,
//! as upstream's do, so a lost event cannot wedge an owner forever.
//!
//! Owns the counters; controllers raise them before writing and lower them from informer
//! handlers.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How long expectations are trusted.
const TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Pending {
    adds: i64,
    /// UIDs whose deletion was requested and not yet seen (by deletionTimestamp or removal).
    deletes: HashSet<String>,
    set_at: Instant,
}

/// Outstanding creations and deletions per owner key.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    inner: Arc<Mutex<HashMap<String, Pending>>>,
}

impl Expectations {
    /// Empty expectations.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the owner's earlier writes have all been observed (or expired).
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(p) => (p.adds <= 0 && p.deletes.is_empty()) || p.set_at.elapsed() > TTL,
        }
    }

    /// Records that `adds` creations and the deletions of `deletes` (UIDs) are about to be
    /// requested.
    pub fn expect(&self, key: &str, adds: i64, deletes: impl IntoIterator<Item = String>) {
        self.lock().insert(
            key.to_owned(),
            Pending {
                adds,
                deletes: deletes.into_iter().collect(),
                set_at: Instant::now(),
            },
        );
    }

    /// One creation was observed (or will never happen because the request failed).
    pub fn creation_observed(&self, key: &str) {
        if let Some(p) = self.lock().get_mut(key) {
            p.adds -= 1;
        }
    }

    /// The deletion of `uid` was observed (or will never happen); repeated calls are fine.
    pub fn deletion_observed(&self, key: &str, uid: &str) {
        if let Some(p) = self.lock().get_mut(key) {
            p.deletes.remove(uid);
        }
    }

    /// Forgets an owner (deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The informer handler of an owner kind: every change queues the owner; a deleted owner's
/// expectations are forgotten.
pub fn owner_handler<K>(
    queue: crate::client::WorkQueue,
    expectations: Expectations,
) -> crate::client::informer::Handler<K>
where
    K: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
        + Send
        + Sync
        + 'static,
{
    Box::new(move |old, new| match (old, new) {
        (_, Some(owner)) => queue.add(crate::client::informer::key_of(owner.as_ref())),
        (Some(owner), None) => {
            let key = crate::client::informer::key_of(owner.as_ref());
            expectations.forget(&key);
            queue.add(key);
        }
        (None, None) => {}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_are_satisfied_once_every_write_is_observed() {
        let e = Expectations::new();
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, ["u1".to_owned()]);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "u1");
        e.deletion_observed("ns/rs", "u1");
        assert!(e.satisfied("ns/rs"));
    }
}
