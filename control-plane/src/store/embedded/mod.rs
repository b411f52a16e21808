//! The embedded backend: MVCC over redb (a copy-on-write B-tree, like etcd's boltdb), for
//! one machine with no external process.
//!
//! On disk, one redb file (`store.redb` in the data directory) holds every change as a
//! record under its revision `(main, sub)`, plus metadata (format version, current and
//! compacted revision) and leases. In memory, a key index ([`index`]) says which record
//! holds a key at a revision. One writer thread ([`writer`]) commits batches of writes with
//! one fsync each and acknowledges nothing before that fsync. Watchers ([`watch`]) get new
//! changes pushed (no polling) and catch up from disk when they start in the past or fall
//! behind, so a slow watcher is never dropped.
//!
//! Owns the data directory. It must not hold Kubernetes knowledge: keys and values are bytes.
mod codec;
mod index;
mod watch;
mod writer;

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};

use self::{
    codec::Record,
    index::{IndexEntry, KeyIndex},
    writer::Job,
};
use super::{
    Event, Lease, LeaseId, Range, RangeResponse, Revision, Store, StoreError, Txn, TxnOp,
    TxnResponse, WatchRequest, WatchStream, MAX_REQUEST_BYTES,
};

/// The database file inside the data directory.
pub const DB_FILE: &str = "store.redb";
/// The format this version reads and writes, recorded in the file at creation.
pub const FORMAT: &str = "corten-store/1";

const REVISIONS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("revisions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

/// redb's page cache. Its default (1 GiB) would make the store the largest part of the
/// server's memory; the key index lives in memory anyway, and records are read once per
/// request, so a small cache loses little (`cargo xtask bench api`: 4 MiB against 16 MiB
/// kept create, get and list latencies within their targets).
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// How many committed revisions the live event channel holds before a watcher that is
/// behind falls back to reading from disk.
const EVENT_CHANNEL: usize = 4096;

/// Periodic compaction.
#[derive(Debug, Clone, Copy)]
pub struct AutoCompact {
    /// How often to compact.
    pub interval: Duration,
    /// How many of the latest revisions to keep.
    pub retain_revisions: i64,
}

/// Options of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Periodic compaction; `None` leaves compaction to callers (the apiserver compacts).
    pub auto_compact: Option<AutoCompact>,
    /// How often expired leases are looked for.
    pub lease_check_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            auto_compact: Some(AutoCompact {
                interval: Duration::from_secs(300),
                retain_revisions: 10_000,
            }),
            lease_check_interval: Duration::from_millis(200),
        }
    }
}

/// A lease as the store tracks it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseInfo {
    ttl: i64,
    expires: Instant,
}

impl LeaseInfo {
    fn new(ttl: i64, now: Instant) -> Self {
        let secs = u64::try_from(ttl).unwrap_or(0);
        Self {
            ttl,
            expires: now + Duration::from_secs(secs),
        }
    }
}

/// Everything in memory that readers and the writer share.
#[derive(Debug)]
pub(crate) struct State {
    index: KeyIndex,
    current: Revision,
    compacted: Revision,
    leases: HashMap<LeaseId, LeaseInfo>,
    lease_keys: HashMap<LeaseId, BTreeSet<Vec<u8>>>,
    next_lease: LeaseId,
}

/// The events of one committed revision (with previous values, for any watcher).
#[derive(Debug)]
pub(crate) struct Committed {
    revision: Revision,
    events: Vec<Event>,
}

/// The database and the state, shared by the store handle, the writer and watchers.
#[derive(Debug)]
pub(crate) struct Shared {
    db: Database,
    state: RwLock<State>,
}

impl Shared {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed: the writer
        // mutates it only in `merge`, which does not panic.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The embedded store. Dropping it stops its writer (after the batch in flight) and ends
/// its watches.
#[derive(Debug)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    events: broadcast::Sender<Arc<Committed>>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Must be called inside a tokio runtime (lease
    /// expiry and compaction run as tasks on it).
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Arc<Self>, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::InvalidRequest(
                "the embedded store must be opened inside a tokio runtime".to_owned(),
            )
        })?;
        let db = open_database(dir)?;
        let (state, deletes) = load(&db, dir)?;
        info!(
            dir = %dir.display(),
            revision = state.current,
            compacted = state.compacted,
            keys = state.index.len(),
            "opened the embedded store"
        );
        let shared = Arc::new(Shared {
            db,
            state: RwLock::new(state),
        });
        let (jobs, job_rx) = mpsc::channel();
        let (events, _) = broadcast::channel(EVENT_CHANNEL);
        let writer = {
            let shared = Arc::clone(&shared);
            let events = events.clone();
            std::thread::Builder::new()
                .name("store-writer".to_owned())
                .spawn(move || writer::run(shared, job_rx, events, deletes))
                .map_err(|e| StoreError::Io(format!("starting the writer thread: {e}")))?
        };
        let store = Arc::new(Self {
            shared,
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(writer)),
            events,
            path: dir.to_path_buf(),
        });
        runtime.spawn(expire_leases(
            Arc::downgrade(&store),
            options.lease_check_interval,
        ));
        if let Some(auto) = options.auto_compact {
            runtime.spawn(auto_compact(Arc::downgrade(&store), auto));
        }
        Ok(store)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let sent = {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.as_ref().map(|jobs| jobs.send(job(tx)))
        };
        match sent {
            Some(Ok(())) => {}
            _ => return Err(closed()),
        }
        rx.await.map_err(|_| closed())?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if writer.join().is_err() {
                warn!("the store writer thread panicked");
            }
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".to_owned())
}

/// Opens the database file, refusing directories and files that are not a corten store.
fn open_database(dir: &Path) -> Result<Database, StoreError> {
    let data_dir_error = |path: &Path, detail: String| StoreError::DataDir {
        path: path.to_path_buf(),
        detail,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| data_dir_error(dir, format!("cannot create it: {e}")))?;
    let file = dir.join(DB_FILE);
    if !file.exists() {
        let others: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| data_dir_error(dir, format!("cannot read it: {e}")))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !others.is_empty() {
            let hint = if others.iter().any(|n| n == "member") {
                " (it looks like an etcd data directory: use --datastore-endpoint for etcd)"
            } else {
                ""
            };
            return Err(data_dir_error(
                dir,
                format!(
                    "holds {} but no {DB_FILE}: not a corten store{hint}; use an empty directory",
                    others.join(", ")
                ),
            ));
        }
    }
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(&file)
        .map_err(|e| data_dir_error(&file, format!("not a readable corten store database: {e}")))?;
    let wtxn = db
        .begin_write()
        .map_err(|e| StoreError::Io(e.to_string()))?;
    {
        let mut meta = wtxn
            .open_table(META)
            .map_err(|e| data_dir_error(&file, e.to_string()))?;
        let revisions = wtxn
            .open_table(REVISIONS)
            .map_err(|e| data_dir_error(&file, e.to_string()))?;
        let format = meta
            .get("format")
            .map_err(|e| data_dir_error(&file, e.to_string()))?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        match format {
            Some(found) if found == FORMAT => {}
            Some(found) => {
                return Err(data_dir_error(
                    &file,
                    format!("has format {found:?}; this corten reads {FORMAT:?}"),
                ))
            }
            None => {
                let empty = revisions
                    .is_empty()
                    .map_err(|e| data_dir_error(&file, e.to_string()))?;
                if !empty {
                    return Err(data_dir_error(
                        &file,
                        "has data but no format marker".to_owned(),
                    ));
                }
                meta.insert("format", FORMAT.as_bytes())
                    .map_err(|e| StoreError::Io(e.to_string()))?;
            }
        }
        wtxn.open_table(LEASES)
            .map_err(|e| data_dir_error(&file, e.to_string()))?;
    }
    wtxn.commit().map_err(|e| StoreError::Io(e.to_string()))?;
    Ok(db)
}

/// Rebuilds the in-memory state from disk; also returns the records a compaction that was
/// interrupted still has to delete.
fn load(db: &Database, dir: &Path) -> Result<(State, VecDeque<(u64, u32)>), StoreError> {
    let corrupt = |detail: String| StoreError::DataDir {
        path: dir.join(DB_FILE),
        detail,
    };
    let rtxn = db.begin_read().map_err(|e| StoreError::Io(e.to_string()))?;
    let meta = rtxn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
    let meta_int = |key: &str| -> Result<Option<i64>, StoreError> {
        match meta.get(key).map_err(|e| corrupt(e.to_string()))? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v
                    .value()
                    .try_into()
                    .map_err(|_| corrupt(format!("metadata {key} is malformed")))?;
                Ok(Some(i64::from_le_bytes(bytes)))
            }
        }
    };
    let mut current = meta_int("revision")?.unwrap_or(1);
    let compacted = meta_int("compacted")?.unwrap_or(0);
    let mut next_lease = meta_int("next_lease")?.unwrap_or(1);
    let mut index = KeyIndex::default();
    let revisions = rtxn
        .open_table(REVISIONS)
        .map_err(|e| corrupt(e.to_string()))?;
    for item in revisions.iter().map_err(|e| corrupt(e.to_string()))? {
        let (key, value) = item.map_err(|e| corrupt(e.to_string()))?;
        let (main, sub) = key.value();
        let record = Record::decode(value.value())
            .ok_or_else(|| corrupt(format!("record ({main}, {sub}) is not a valid record")))?;
        let main =
            i64::try_from(main).map_err(|_| corrupt(format!("revision {main} out of range")))?;
        current = current.max(main);
        index.push(
            record.key,
            IndexEntry {
                main,
                sub,
                tombstone: record.tombstone,
                create: record.create,
                version: record.version,
                lease: record.lease,
            },
        );
    }
    let now = Instant::now();
    let mut leases = HashMap::new();
    let lease_table = rtxn
        .open_table(LEASES)
        .map_err(|e| corrupt(e.to_string()))?;
    for item in lease_table.iter().map_err(|e| corrupt(e.to_string()))? {
        let (id, ttl) = item.map_err(|e| corrupt(e.to_string()))?;
        // As etcd does after a restart, a lease gets its whole TTL again.
        leases.insert(id.value(), LeaseInfo::new(ttl.value(), now));
        next_lease = next_lease.max(id.value() + 1);
    }
    let mut lease_keys: HashMap<LeaseId, BTreeSet<Vec<u8>>> = HashMap::new();
    let all = index
        .range_at(b"", &super::RangeEnd::Prefix, Revision::MAX)
        .filter(|(_, e)| e.lease != 0)
        .map(|(k, e)| (e.lease, k.clone()))
        .collect::<Vec<_>>();
    for (lease, key) in all {
        lease_keys.entry(lease).or_default().insert(key);
    }
    let deletes: VecDeque<(u64, u32)> = if compacted > 0 {
        index.compact(compacted).into()
    } else {
        VecDeque::new()
    };
    Ok((
        State {
            index,
            current,
            compacted,
            leases,
            lease_keys,
            next_lease,
        },
        deletes,
    ))
}

/// Most compares, and most operations per branch, in one transaction (etcd's default
/// `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// Shortest lease TTL in seconds; shorter grants are raised to it, as etcd raises them to
/// 1.5 election timeouts (1 s by default), rounded up.
const MIN_LEASE_TTL: i64 = 2;

/// etcd refuses a transaction that writes a key twice in one branch: two puts of a key, or
/// a put of a key that a delete of the same branch covers. Both branches are checked.
fn check_duplicate_keys(txn: &Txn) -> Result<(), StoreError> {
    if txn.compare.len() > MAX_TXN_OPS
        || txn.success.len() > MAX_TXN_OPS
        || txn.failure.len() > MAX_TXN_OPS
    {
        return Err(StoreError::InvalidRequest(
            "too many operations in txn request".to_owned(),
        ));
    }
    for ops in [&txn.success, &txn.failure] {
        for op in ops.iter() {
            let key = match op {
                TxnOp::Put { key, .. } => key,
                TxnOp::Delete {
                    key,
                    end: super::RangeEnd::Single,
                    ..
                } => key,
                TxnOp::Get(range) if range.end == super::RangeEnd::Single => &range.key,
                _ => continue,
            };
            if key.is_empty() {
                return Err(StoreError::InvalidRequest("key is not provided".to_owned()));
            }
        }
    }
    for ops in [&txn.success, &txn.failure] {
        let mut puts: Vec<&[u8]> = Vec::new();
        for op in ops.iter() {
            if let TxnOp::Put { key, .. } = op {
                if puts.contains(&key.as_slice()) {
                    return Err(duplicate());
                }
                puts.push(key);
            }
        }
        for op in ops.iter() {
            if let TxnOp::Delete { key, end, .. } = op {
                if puts.iter().any(|put| end.contains(key, put)) {
                    return Err(duplicate());
                }
            }
        }
    }
    Ok(())
}

fn duplicate() -> StoreError {
    StoreError::InvalidRequest("duplicate key given in txn request".to_owned())
}

/// Bytes a transaction carries (keys and values), for the request size limit.
fn txn_size(txn: &Txn) -> usize {
    let op_size = |op: &TxnOp| match op {
        TxnOp::Put { key, value, .. } => key.len() + value.len(),
        TxnOp::Delete { key, .. } => key.len(),
        TxnOp::Get(range) => range.key.len(),
    };
    txn.success
        .iter()
        .chain(&txn.failure)
        .map(op_size)
        .sum::<usize>()
        + txn
            .compare
            .iter()
            .map(|c| {
                c.key.len()
                    + match &c.target {
                        super::CompareTarget::Value(v) => v.len(),
                        _ => 8,
                    }
            })
            .sum::<usize>()
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn range(&self, range: Range) -> Result<RangeResponse, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || read_range(&shared, &range))
            .await
            .map_err(|_| closed())?
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let size = txn_size(&txn);
        if size > MAX_REQUEST_BYTES {
            return Err(StoreError::TooLarge {
                size,
                limit: MAX_REQUEST_BYTES,
            });
        }
        check_duplicate_keys(&txn)?;
        self.submit(|tx| Job::Txn(txn, tx)).await
    }

    async fn watch(&self, request: WatchRequest) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the current revision: nothing committed after that read
        // can be missed.
        let live = self.events.subscribe();
        watch::start(Arc::clone(&self.shared), live, request)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.submit(|tx| Job::Compact(revision, tx)).await
    }

    async fn lease_grant(&self, ttl: i64) -> Result<Lease, StoreError> {
        if ttl <= 0 {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL must be positive, not {ttl}"
            )));
        }
        let ttl = ttl.max(MIN_LEASE_TTL);
        self.submit(|tx| Job::LeaseGrant(ttl, tx)).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let mut state = self.shared.write_state();
        let now = Instant::now();
        match state.leases.get_mut(&id) {
            Some(lease) if lease.expires > now => {
                *lease = LeaseInfo::new(lease.ttl, now);
                Ok(lease.ttl)
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        self.submit(|tx| Job::LeaseRevoke(id, tx)).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.read_state().current)
    }
}

/// Serves a read from the index and a read transaction.
fn read_range(shared: &Shared, range: &Range) -> Result<RangeResponse, StoreError> {
    if range.key.is_empty() && range.end == super::RangeEnd::Single {
        return Err(StoreError::InvalidRequest("key is not provided".to_owned()));
    }
    let (current, entries, count) = {
        let state = shared.read_state();
        let current = state.current;
        let revision = if range.revision <= 0 {
            current
        } else {
            range.revision
        };
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision < state.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: state.compacted,
            });
        }
        let limit = usize::try_from(range.limit)
            .ok()
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut count = 0usize;
        let mut entries = Vec::new();
        for (_, entry) in state.index.range_at(&range.key, &range.end, revision) {
            count += 1;
            if !range.count_only && entries.len() < limit {
                entries.push(*entry);
            }
        }
        (current, entries, count)
    };
    let count_i64 = i64::try_from(count).unwrap_or(i64::MAX);
    let more = !range.count_only && entries.len() < count;
    if range.count_only || entries.is_empty() {
        return Ok(RangeResponse {
            kvs: Vec::new(),
            more,
            count: count_i64,
            revision: current,
        });
    }
    let rtxn = shared
        .db
        .begin_read()
        .map_err(|e| StoreError::Io(e.to_string()))?;
    let table = rtxn
        .open_table(REVISIONS)
        .map_err(|e| StoreError::Io(e.to_string()))?;
    let mut kvs = Vec::with_capacity(entries.len());
    for entry in &entries {
        match writer::read_kv(&table, entry)? {
            Some(mut kv) => {
                if range.keys_only {
                    kv.value.clear();
                }
                kvs.push(kv);
            }
            // A compaction removed it after the check above.
            None => {
                return Err(StoreError::Compacted {
                    requested: range.revision,
                    compacted: shared.read_state().compacted,
                })
            }
        }
    }
    Ok(RangeResponse {
        kvs,
        more,
        count: count_i64,
        revision: current,
    })
}

async fn expire_leases(store: Weak<EmbeddedStore>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let Some(store) = store.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<LeaseId> = store
            .shared
            .read_state()
            .leases
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            match store.lease_revoke(id).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(err) => warn!("revoking expired lease {id:x}: {err}"),
            }
        }
    }
}

async fn auto_compact(store: Weak<EmbeddedStore>, auto: AutoCompact) {
    let mut ticker = tokio::time::interval(auto.interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(store) = store.upgrade() else { return };
        let (current, compacted) = {
            let state = store.shared.read_state();
            (state.current, state.compacted)
        };
        let target = current - auto.retain_revisions;
        if target > compacted {
            if let Err(err) = store.compact(target).await {
                warn!("periodic compaction to {target}: {err}");
            }
        }
    }
}
