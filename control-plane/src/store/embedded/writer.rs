//! The embedded store's single writer: a thread that takes write jobs in batches, applies
//! them to one redb write transaction, makes it durable with one fsync (group commit), and
//! only then updates the in-memory index, wakes watchers and answers the callers.
//!
//! Owns every mutation of the database and of [`State`]. Readers never see an index entry
//! whose record is not committed, because the index is updated only after the commit.
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, error};

use super::{
    codec::Record,
    index::{bounds, IndexEntry},
    Committed, LeaseInfo, Shared, State, LEASES, META, REVISIONS,
};
use crate::store::{
    Compare, CompareOp, CompareTarget, KeyValue, Lease, LeaseId, RangeEnd, RangeResponse, Revision,
    StoreError, Txn, TxnOp, TxnOpResult, TxnResponse,
};

/// Most jobs committed together.
const MAX_BATCH: usize = 512;
/// Most compacted records deleted per commit, so a compaction never holds writers long.
const DELETE_CHUNK: usize = 4096;

/// A write, with where to send its answer.
#[derive(Debug)]
pub(crate) enum Job {
    Txn(Txn, oneshot::Sender<Result<TxnResponse, StoreError>>),
    LeaseGrant(i64, oneshot::Sender<Result<Lease, StoreError>>),
    LeaseRevoke(LeaseId, oneshot::Sender<Result<(), StoreError>>),
    Compact(Revision, oneshot::Sender<Result<(), StoreError>>),
}

/// An answer held back until the commit is durable.
enum Reply {
    Txn(
        oneshot::Sender<Result<TxnResponse, StoreError>>,
        Result<TxnResponse, StoreError>,
    ),
    Lease(
        oneshot::Sender<Result<Lease, StoreError>>,
        Result<Lease, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
}

impl Reply {
    fn send(self) {
        // A caller that stopped waiting is no error.
        match self {
            Reply::Txn(tx, r) => drop(tx.send(r)),
            Reply::Lease(tx, r) => drop(tx.send(r)),
            Reply::Unit(tx, r) => drop(tx.send(r)),
        }
    }

    fn fail(self, error: &str) {
        let err = || StoreError::Io(error.to_owned());
        match self {
            Reply::Txn(tx, _) => drop(tx.send(Err(err()))),
            Reply::Lease(tx, _) => drop(tx.send(Err(err()))),
            Reply::Unit(tx, _) => drop(tx.send(Err(err()))),
        }
    }
}

/// What a batch changes, applied to [`State`] after the commit.
#[derive(Default)]
struct Pending {
    entries: BTreeMap<Vec<u8>, Vec<IndexEntry>>,
    attached: Vec<(LeaseId, Vec<u8>)>,
    leases_new: HashMap<LeaseId, i64>,
    leases_gone: HashSet<LeaseId>,
    current: Revision,
    compacted: Revision,
    compact_to: Option<Revision>,
    next_lease: LeaseId,
    committed: Vec<Committed>,
}

/// Runs until every job sender is gone.
pub(crate) fn run(
    shared: Arc<Shared>,
    jobs: mpsc::Receiver<Job>,
    events: broadcast::Sender<Arc<Committed>>,
    mut deletes: VecDeque<(u64, u32)>,
) {
    loop {
        let first = if deletes.is_empty() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else {
            match jobs.recv_timeout(Duration::from_millis(5)) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&shared, batch, &events, &mut deletes);
    }
}

fn commit_batch(
    shared: &Shared,
    batch: Vec<Job>,
    events: &broadcast::Sender<Arc<Committed>>,
    deletes: &mut VecDeque<(u64, u32)>,
) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut pending = Pending::default();
    let written = (|| -> Result<(), String> {
        let wtxn = shared.db.begin_write().map_err(|e| e.to_string())?;
        {
            let state = shared.read_state();
            pending.current = state.current;
            pending.compacted = state.compacted;
            pending.next_lease = state.next_lease;
            let mut tables = Tables::open(&wtxn)?;
            for job in batch {
                replies.push(apply(&state, &mut pending, &mut tables, job)?);
            }
            let chunk = deletes.len().min(DELETE_CHUNK);
            for key in deletes.drain(..chunk) {
                tables.revisions.remove(key).map_err(|e| e.to_string())?;
            }
            tables.set_meta("revision", pending.current)?;
            tables.set_meta("next_lease", pending.next_lease)?;
        }
        wtxn.commit().map_err(|e| e.to_string())
    })();
    if let Err(err) = written {
        error!("store commit failed: {err}");
        for reply in replies {
            reply.fail(&err);
        }
        // Nothing of this batch reached the index; the on-disk state is unchanged.
        return;
    }
    let committed = std::mem::take(&mut pending.committed);
    {
        let mut state = shared.write_state();
        merge(&mut state, pending, deletes);
    }
    for batch in committed {
        // No receiver (no watcher) is fine.
        let _ = events.send(Arc::new(batch));
    }
    for reply in replies {
        reply.send();
    }
}

fn merge(state: &mut State, pending: Pending, deletes: &mut VecDeque<(u64, u32)>) {
    for (key, entries) in pending.entries {
        for entry in entries {
            state.index.push(key.clone(), entry);
        }
    }
    for (lease, key) in pending.attached {
        state.lease_keys.entry(lease).or_default().insert(key);
    }
    let now = Instant::now();
    for (id, ttl) in pending.leases_new {
        state.leases.insert(id, LeaseInfo::new(ttl, now));
    }
    for id in pending.leases_gone {
        state.leases.remove(&id);
        state.lease_keys.remove(&id);
    }
    state.current = pending.current;
    state.next_lease = pending.next_lease;
    if let Some(revision) = pending.compact_to {
        state.compacted = revision;
        deletes.extend(state.index.compact(revision));
        debug!(revision, queued = deletes.len(), "compacted");
    }
}

/// The open tables of one write transaction.
struct Tables<'txn> {
    revisions: Table<'txn, (u64, u32), &'static [u8]>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    leases: Table<'txn, i64, i64>,
}

impl<'txn> Tables<'txn> {
    fn open(wtxn: &'txn WriteTransaction) -> Result<Self, String> {
        Ok(Self {
            revisions: wtxn.open_table(REVISIONS).map_err(|e| e.to_string())?,
            meta: wtxn.open_table(META).map_err(|e| e.to_string())?,
            leases: wtxn.open_table(LEASES).map_err(|e| e.to_string())?,
        })
    }

    fn set_meta(&mut self, key: &str, value: i64) -> Result<(), String> {
        self.meta
            .insert(key, value.to_le_bytes().as_slice())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn record(&self, entry: &IndexEntry) -> Result<Record, String> {
        let raw = self
            .revisions
            .get(entry.record_key())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("record {:?} is missing", entry.record_key()))?;
        Record::decode(raw.value())
            .ok_or_else(|| format!("record {:?} is corrupt", entry.record_key()))
    }
}

/// The state as this batch has changed it so far.
struct View<'a> {
    state: &'a State,
    pending: &'a Pending,
}

impl View<'_> {
    fn latest(&self, key: &[u8]) -> Option<IndexEntry> {
        match self.pending.entries.get(key).and_then(|e| e.last()) {
            Some(entry) => Some(*entry),
            None => self.state.index.latest(key).copied(),
        }
    }

    fn live(&self, key: &[u8]) -> Option<IndexEntry> {
        self.latest(key).filter(|e| !e.tombstone)
    }

    fn lease_exists(&self, id: LeaseId) -> bool {
        !self.pending.leases_gone.contains(&id)
            && (self.pending.leases_new.contains_key(&id) || self.state.leases.contains_key(&id))
    }

    /// Live keys in a range, in key order.
    fn range(&self, key: &[u8], end: &RangeEnd) -> Vec<(Vec<u8>, IndexEntry)> {
        if *end == RangeEnd::Single {
            return self
                .live(key)
                .map(|e| (key.to_vec(), e))
                .into_iter()
                .collect();
        }
        let mut found: BTreeMap<Vec<u8>, IndexEntry> = self
            .state
            .index
            .range_at(key, end, Revision::MAX)
            .map(|(k, e)| (k.clone(), *e))
            .collect();
        for (k, entries) in self.pending.entries.range(bounds(key, end)) {
            match entries.last() {
                Some(e) if !e.tombstone => {
                    found.insert(k.clone(), *e);
                }
                _ => {
                    found.remove(k);
                }
            }
        }
        found.into_iter().collect()
    }
}

fn apply(
    state: &State,
    pending: &mut Pending,
    tables: &mut Tables<'_>,
    job: Job,
) -> Result<Reply, String> {
    Ok(match job {
        Job::Txn(txn, tx) => {
            let result = apply_txn(state, pending, tables, txn);
            Reply::Txn(tx, result?)
        }
        Job::LeaseGrant(ttl, tx) => {
            let id = pending.next_lease;
            pending.next_lease += 1;
            tables.leases.insert(id, ttl).map_err(|e| e.to_string())?;
            pending.leases_new.insert(id, ttl);
            Reply::Lease(tx, Ok(Lease { id, ttl }))
        }
        Job::LeaseRevoke(id, tx) => {
            let view = View { state, pending };
            if !view.lease_exists(id) {
                return Ok(Reply::Unit(tx, Err(StoreError::LeaseNotFound(id))));
            }
            let mut keys: Vec<Vec<u8>> = state
                .lease_keys
                .get(&id)
                .map(|keys| keys.iter().cloned().collect())
                .unwrap_or_default();
            keys.extend(
                pending
                    .attached
                    .iter()
                    .filter(|(l, _)| *l == id)
                    .map(|(_, k)| k.clone()),
            );
            keys.sort();
            keys.dedup();
            keys.retain(|k| view.live(k).is_some_and(|e| e.lease == id));
            let ops = keys.into_iter().map(TxnOp::delete).collect();
            // Deleting existing keys of an existing lease cannot be refused.
            let _deleted = apply_txn(
                state,
                pending,
                tables,
                Txn {
                    compare: Vec::new(),
                    success: ops,
                    failure: Vec::new(),
                },
            )?;
            tables.leases.remove(id).map_err(|e| e.to_string())?;
            pending.leases_gone.insert(id);
            Reply::Unit(tx, Ok(()))
        }
        Job::Compact(revision, tx) => {
            let result = if revision <= pending.compacted {
                Err(StoreError::Compacted {
                    requested: revision,
                    compacted: pending.compacted,
                })
            } else if revision > pending.current {
                Err(StoreError::FutureRevision {
                    requested: revision,
                    current: pending.current,
                })
            } else {
                pending.compacted = revision;
                pending.compact_to = Some(revision);
                tables.set_meta("compacted", revision)?;
                Ok(())
            };
            Reply::Unit(tx, result)
        }
    })
}

/// Applies one transaction; `Err` only for storage failures (which fail the whole batch),
/// `Ok(Err)` for a transaction the store refuses.
fn apply_txn(
    state: &State,
    pending: &mut Pending,
    tables: &mut Tables<'_>,
    txn: Txn,
) -> Result<Result<TxnResponse, StoreError>, String> {
    let succeeded = {
        let view = View { state, pending };
        let mut all = true;
        for compare in &txn.compare {
            if !holds(&view, tables, compare)? {
                all = false;
                break;
            }
        }
        all
    };
    let ops = if succeeded { txn.success } else { txn.failure };
    {
        let view = View { state, pending };
        for op in &ops {
            match op {
                TxnOp::Put { lease, .. } if *lease != 0 && !view.lease_exists(*lease) => {
                    return Ok(Err(StoreError::LeaseNotFound(*lease)));
                }
                TxnOp::Get(range) if range.revision != 0 => {
                    return Ok(Err(StoreError::InvalidRequest(
                        "a read inside a transaction cannot ask for a revision".to_owned(),
                    )));
                }
                _ => {}
            }
        }
    }
    let revision = pending.current + 1;
    let mut sub: u32 = 0;
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            TxnOp::Put {
                key,
                value,
                lease,
                prev_kv,
            } => {
                let prev = View { state, pending }.live(&key);
                let prev_value = match &prev {
                    Some(entry) => Some(tables.record(entry)?.key_value(entry.main)),
                    None => None,
                };
                let (create, version) = prev.map_or((revision, 1), |p| (p.create, p.version + 1));
                let record = Record {
                    tombstone: false,
                    key: key.clone(),
                    value,
                    create,
                    version,
                    lease,
                };
                record_change(tables, pending, revision, sub, &record)?;
                if lease != 0 {
                    pending.attached.push((lease, key));
                }
                events.push(record.event(revision, prev_value.clone()));
                results.push(TxnOpResult::Put {
                    prev_kv: if prev_kv { prev_value } else { None },
                });
                sub += 1;
            }
            TxnOp::Delete { key, end, prev_kv } => {
                let targets = View { state, pending }.range(&key, &end);
                let mut prev_kvs = Vec::new();
                for (target, entry) in &targets {
                    let before = tables.record(entry)?.key_value(entry.main);
                    let record = Record {
                        tombstone: true,
                        key: target.clone(),
                        value: Vec::new(),
                        create: 0,
                        version: 0,
                        lease: 0,
                    };
                    record_change(tables, pending, revision, sub, &record)?;
                    events.push(record.event(revision, Some(before.clone())));
                    if prev_kv {
                        prev_kvs.push(before);
                    }
                    sub += 1;
                }
                results.push(TxnOpResult::Delete {
                    deleted: i64::try_from(targets.len()).unwrap_or(i64::MAX),
                    prev_kvs,
                });
            }
            TxnOp::Get(range) => {
                let found = View { state, pending }.range(&range.key, &range.end);
                let count = i64::try_from(found.len()).unwrap_or(i64::MAX);
                let limit = usize::try_from(range.limit).ok().filter(|l| *l > 0);
                let mut kvs = Vec::new();
                if !range.count_only {
                    for (_, entry) in found.iter().take(limit.unwrap_or(usize::MAX)) {
                        let mut kv = tables.record(entry)?.key_value(entry.main);
                        if range.keys_only {
                            kv.value.clear();
                        }
                        kvs.push(kv);
                    }
                }
                let more = limit.is_some_and(|l| found.len() > l);
                let current = if events.is_empty() {
                    pending.current
                } else {
                    revision
                };
                results.push(TxnOpResult::Get(RangeResponse {
                    kvs,
                    more,
                    count,
                    revision: current,
                }));
            }
        }
    }
    if !events.is_empty() {
        pending.current = revision;
        pending.committed.push(Committed { revision, events });
    }
    Ok(Ok(TxnResponse {
        succeeded,
        revision: pending.current,
        results,
    }))
}

/// Writes one change's record under `(revision, sub)` and queues its index entry.
fn record_change(
    tables: &mut Tables<'_>,
    pending: &mut Pending,
    revision: Revision,
    sub: u32,
    record: &Record,
) -> Result<(), String> {
    tables
        .revisions
        .insert(
            (u64::try_from(revision).unwrap_or(0), sub),
            record.encode().as_slice(),
        )
        .map_err(|e| e.to_string())?;
    let entry = IndexEntry {
        main: revision,
        sub,
        tombstone: record.tombstone,
        create: record.create,
        version: record.version,
        lease: record.lease,
    };
    pending
        .entries
        .entry(record.key.clone())
        .or_default()
        .push(entry);
    Ok(())
}

/// Whether a compare holds against the view (etcd: an absent key has revisions and version
/// 0, and any compare of its value is false).
fn holds(view: &View<'_>, tables: &Tables<'_>, compare: &Compare) -> Result<bool, String> {
    let entry = view.live(&compare.key);
    let ordering = match &compare.target {
        CompareTarget::ModRevision(r) => entry.map_or(0, |e| e.main).cmp(r),
        CompareTarget::CreateRevision(r) => entry.map_or(0, |e| e.create).cmp(r),
        CompareTarget::Version(v) => entry.map_or(0, |e| e.version).cmp(v),
        CompareTarget::Value(v) => match entry {
            None => return Ok(false),
            Some(e) => tables.record(&e)?.value.as_slice().cmp(v.as_slice()),
        },
    };
    Ok(match compare.op {
        CompareOp::Equal => ordering.is_eq(),
        CompareOp::NotEqual => ordering.is_ne(),
        CompareOp::Greater => ordering.is_gt(),
        CompareOp::Less => ordering.is_lt(),
    })
}

/// The key-value of an index entry, read inside a read transaction.
pub(crate) fn read_kv(
    table: &impl ReadableTable<(u64, u32), &'static [u8]>,
    entry: &IndexEntry,
) -> Result<Option<KeyValue>, StoreError> {
    let raw = table
        .get(entry.record_key())
        .map_err(|e| StoreError::Io(e.to_string()))?;
    match raw {
        None => Ok(None),
        Some(raw) => Record::decode(raw.value())
            .map(|r| Some(r.key_value(entry.main)))
            .ok_or_else(|| StoreError::Io(format!("record {:?} is corrupt", entry.record_key()))),
    }
}
