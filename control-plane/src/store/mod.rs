//! The datastore: a key-value store with etcd v3 semantics (DESIGN.md §4), behind one trait
//! with two backends: [`embedded`] (MVCC over redb, the default) and [`etcd`] (a real etcd v3
//! cluster). The apiserver's resourceVersion is a store revision, so both backends must
//! behave identically; one conformance suite (`control-plane/tests/store_conformance.rs`)
//! holds them to that.
//!
//! Semantics, as etcd v3 defines them:
//! - every transaction that changes something gets the next revision; one that changes
//!   nothing (only reads, or deletes of absent keys) does not;
//! - a key's `create_revision` is the revision that created its current generation,
//!   `mod_revision` the revision of its last change, `version` the number of changes since
//!   it was created (a delete ends the generation);
//! - reads may ask for any revision from the compaction point up to the current one;
//! - a watch delivers every change after its start revision, in revision order, each
//!   revision's events together, with no gap and no duplicate;
//! - a key attached to a lease is deleted (with a DELETE event) when the lease expires or is
//!   revoked.
//!
//! This module owns the types and the contract. It must not know about Kubernetes objects:
//! keys and values are bytes; `/registry/...` key layout is the apiserver's business.

pub mod embedded;
pub mod etcd;

use std::{path::PathBuf, pin::Pin};

use async_trait::async_trait;
use futures::Stream;

/// A store revision (etcd's `main` revision). The first write is revision 2 in etcd (1 is
/// the empty store); both backends follow that.
pub type Revision = i64;
/// A lease identifier.
pub type LeaseId = i64;

/// Largest request either backend accepts (3 MiB, kube-apiserver's request body limit).
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// A key with its value and MVCC metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in `keys_only` reads and in DELETE events).
    pub value: Vec<u8>,
    /// Revision that created this generation of the key.
    pub create_revision: Revision,
    /// Revision of the key's last change.
    pub mod_revision: Revision,
    /// Number of changes since creation (1 after the first put).
    pub version: i64,
    /// Attached lease, 0 for none.
    pub lease: LeaseId,
}

/// Which keys a range or watch covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RangeEnd {
    /// Exactly the key.
    #[default]
    Single,
    /// Every key that starts with the key.
    Prefix,
    /// Keys from the key (inclusive) to this one (exclusive); `[0]` means no upper bound,
    /// as in etcd.
    Until(Vec<u8>),
}

impl RangeEnd {
    /// Whether `candidate` is in the range that starts at `key`.
    pub fn contains(&self, key: &[u8], candidate: &[u8]) -> bool {
        match self {
            RangeEnd::Single => candidate == key,
            RangeEnd::Prefix => candidate.starts_with(key),
            // etcd: a range end of "\0" means every key from `key` on, an empty one means
            // just `key`.
            RangeEnd::Until(end) if end.as_slice() == [0] => candidate >= key,
            RangeEnd::Until(end) if end.is_empty() => candidate == key,
            RangeEnd::Until(end) => candidate >= key && candidate < end.as_slice(),
        }
    }

    /// etcd's `range_end` for this range starting at `key` (empty for a single key).
    pub fn etcd_range_end(&self, key: &[u8]) -> Vec<u8> {
        match self {
            RangeEnd::Single => Vec::new(),
            RangeEnd::Until(end) => end.clone(),
            RangeEnd::Prefix => prefix_end(key),
        }
    }
}

/// The smallest key greater than every key starting with `prefix` (`\0` for "all keys").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    /// First key (or the key, or the prefix).
    pub key: Vec<u8>,
    /// How far the range goes.
    pub end: RangeEnd,
    /// Revision to read at; 0 means the current one.
    pub revision: Revision,
    /// Most keys to return; 0 means no limit. `more` says whether keys were left out.
    pub limit: i64,
    /// Return only the count, no keys.
    pub count_only: bool,
    /// Return keys and metadata without values.
    pub keys_only: bool,
}

impl Range {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }

    /// Every key with a prefix.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            key: prefix.into(),
            end: RangeEnd::Prefix,
            ..Self::default()
        }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            key: start.into(),
            end: RangeEnd::Until(end.into()),
            ..Self::default()
        }
    }

    /// The same read at an older revision.
    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    /// The same read returning at most `limit` keys.
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    /// The same read returning only the count.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// The same read without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
}

/// The result of a read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The keys, in key order (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` left keys out.
    pub more: bool,
    /// How many keys the range holds at that revision (regardless of `limit`).
    pub count: i64,
    /// The store's current revision when the read was served.
    pub revision: Revision,
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's `mod_revision` (0 when the key is absent).
    ModRevision(Revision),
    /// The key's `create_revision` (0 when the key is absent).
    CreateRevision(Revision),
    /// The key's `version` (0 when the key is absent).
    Version(i64),
    /// The key's value; a compare on the value of an absent key is false.
    Value(Vec<u8>),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>` (the key's field is greater than the given one)
    Greater,
    /// `<`
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The operator.
    pub op: CompareOp,
    /// The field and the value to compare it with.
    pub target: CompareTarget,
}

impl Compare {
    /// `mod_revision(key) == revision`; revision 0 means "the key does not exist".
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: Revision) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// `create_revision(key) op revision`.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: Revision) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(revision),
        }
    }

    /// `version(key) op version`.
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    /// `value(key) op value`.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Set a key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Lease to attach, 0 for none.
        lease: LeaseId,
        /// Return the previous key-value.
        prev_kv: bool,
    },
    /// Delete a key or a range.
    Delete {
        /// The key or the range's start.
        key: Vec<u8>,
        /// How far the range goes.
        end: RangeEnd,
        /// Return the deleted key-values.
        prev_kv: bool,
    },
    /// Read (at the transaction's revision; `Range::revision` must be 0).
    Get(Range),
}

impl TxnOp {
    /// A put without lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        }
    }

    /// A delete of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Delete {
            key: key.into(),
            end: RangeEnd::Single,
            prev_kv: false,
        }
    }
}

/// The result of one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResult {
    /// A put; `prev_kv` when asked for and the key existed.
    Put {
        /// The key-value before the put.
        prev_kv: Option<KeyValue>,
    },
    /// A delete.
    Delete {
        /// How many keys were deleted.
        deleted: i64,
        /// The deleted key-values, when asked for.
        prev_kvs: Vec<KeyValue>,
    },
    /// A read.
    Get(RangeResponse),
}

/// A transaction: if every compare holds, run `success`, else `failure`; atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Operations when they hold.
    pub success: Vec<TxnOp>,
    /// Operations when one does not.
    pub failure: Vec<TxnOp>,
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held.
    pub succeeded: bool,
    /// The store's revision after the transaction (its own revision if it changed anything).
    pub revision: Revision,
    /// One result per operation run.
    pub results: Vec<TxnOpResult>,
}

/// What a watch covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchRequest {
    /// The key or the range's start.
    pub key: Vec<u8>,
    /// How far the range goes.
    pub end: RangeEnd,
    /// First revision to deliver; 0 means "changes after now".
    pub start_revision: Revision,
    /// Attach the previous key-value to every event.
    pub prev_kv: bool,
}

impl WatchRequest {
    /// Every key with a prefix, from `start_revision` (0: from now).
    pub fn prefix(prefix: impl Into<Vec<u8>>, start_revision: Revision) -> Self {
        Self {
            key: prefix.into(),
            end: RangeEnd::Prefix,
            start_revision,
            prev_kv: false,
        }
    }
}

/// A change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted (also by lease expiry).
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The key after the change; for a delete, the key with `mod_revision` = the deleting
    /// revision and everything else zero.
    pub kv: KeyValue,
    /// The key before the change, when the watch asked for it.
    pub prev_kv: Option<KeyValue>,
}

/// The events of one revision that match a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision all `events` happened at.
    pub revision: Revision,
    /// The events, in the order the transaction made them.
    pub events: Vec<Event>,
}

/// A stream of watch batches; it ends only with an error (or when dropped).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its identifier.
    pub id: LeaseId,
    /// Its time to live in seconds.
    pub ttl: i64,
}

/// Store failures. `Unavailable` is retryable; the others are not (without a change).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The revision asked for was compacted away.
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted {
        /// What was asked for.
        requested: Revision,
        /// The compaction point (0 when the backend does not say).
        compacted: Revision,
    },
    /// The revision asked for does not exist yet.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision {
        /// What was asked for.
        requested: Revision,
        /// The current revision (0 when the backend does not say).
        current: Revision,
    },
    /// No such lease (never granted, expired or revoked).
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    /// The request is larger than [`MAX_REQUEST_BYTES`].
    #[error("request of {size} bytes is larger than the limit of {limit}")]
    TooLarge {
        /// The request's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An argument the store cannot take (e.g. a `Get` with a revision inside a txn).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The backend cannot serve right now (retryable: etcd without quorum, a closing store).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The data directory holds something this version cannot read.
    #[error("data directory {path}: {detail}")]
    DataDir {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The disk failed under the embedded store.
    #[error("store I/O: {0}")]
    Io(String),
}

/// A store with etcd v3 semantics. Both backends implement it identically.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads keys.
    async fn range(&self, range: Range) -> Result<RangeResponse, StoreError>;

    /// Runs a transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Watches a key or range.
    async fn watch(&self, request: WatchRequest) -> Result<WatchStream, StoreError>;

    /// Discards history before `revision`; reads and watches below it fail with
    /// [`StoreError::Compacted`] afterwards.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Grants a lease of `ttl` seconds.
    async fn lease_grant(&self, ttl: i64) -> Result<Lease, StoreError>;

    /// Renews a lease; returns its TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError>;

    /// Revokes a lease, deleting its keys.
    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError>;

    /// The current revision.
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        // Any key will do: the response header carries the revision.
        Ok(self.range(Range::key(vec![0]).count_only()).await?.revision)
    }

    /// Puts one key; returns the new revision.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<Revision, StoreError> {
        let txn = Txn {
            success: vec![TxnOp::put(key, value)],
            ..Txn::default()
        };
        Ok(self.txn(txn).await?.revision)
    }

    /// Reads one key at the current revision.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.range(Range::key(key)).await?.kvs.into_iter().next())
    }

    /// Deletes one key; returns whether it existed.
    async fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        let txn = Txn {
            success: vec![TxnOp::delete(key)],
            ..Txn::default()
        };
        let response = self.txn(txn).await?;
        Ok(matches!(
            response.results.first(),
            Some(TxnOpResult::Delete { deleted, .. }) if *deleted > 0
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn range_end_contains() {
        assert!(RangeEnd::Prefix.contains(b"/a/", b"/a/b"));
        assert!(!RangeEnd::Prefix.contains(b"/a/", b"/ab"));
        assert!(RangeEnd::Single.contains(b"k", b"k"));
        assert!(RangeEnd::Until(b"c".to_vec()).contains(b"a", b"b"));
        assert!(!RangeEnd::Until(b"c".to_vec()).contains(b"a", b"c"));
    }
}
