//! The store conformance suite: one set of cases, written from the [`Store`] contract and
//! etcd v3's behaviour, run against every backend so that they behave identically (the
//! apiserver's resourceVersion is a store revision, so any difference leaks to clients).
//!
//! Each case is an `async fn(Arc<dyn Store>) -> anyhow::Result<()>` on a fresh, empty store;
//! [`conformance_suite!`] turns every case into a `#[tokio::test]` per backend:
//! - `embedded`: the embedded MVCC store on a fresh temporary directory;
//! - `etcd` (feature `etcd-tests`): a real etcd started per test by `support::etcd`. etcd is
//!   the reference: a case that fails against it is wrong, not etcd.
//!
//! `embedded_only` holds what only a backend with a local data directory can show (reopen).
//!
//! Cases use revisions relative to what the store reports, never absolute ones (except the
//! documented "first write is revision 2"). Every stream read and every loop is bounded in
//! time and count, and every case runs under [`CASE_TIMEOUT`]: no case may hang.
//! This file must not reach into a backend's internals: only the trait is tested.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use corten_control_plane::store::{
    prefix_end, Compare, CompareOp, EventKind, KeyValue, LeaseId, Range, RangeEnd, RangeResponse,
    Revision, Store, StoreError, Txn, TxnOp, TxnOpResult, TxnResponse, WatchBatch, WatchRequest,
    WatchStream, MAX_REQUEST_BYTES,
};
use futures::StreamExt as _;
use rand::RngCore as _;
use tokio::{
    task::JoinSet,
    time::{sleep, timeout, Instant},
};

/// Longest any one case may run (the slow ones write a few thousand keys to a real etcd).
const CASE_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest wait for one watch batch before a case gives up.
const STREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a whole collection of watch batches.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a watch must stay quiet to show it delivers nothing more.
const QUIET: Duration = Duration::from_millis(500);
/// Longest wait for a lease of a second or two to expire.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);
/// A lease id no store has granted.
const UNKNOWN_LEASE: LeaseId = 0x0bad_cafe_f00d;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Bytes as text, for messages and comparisons.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The keys of some key-values, as text.
fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| text(&kv.key)).collect()
}

/// `(create_revision, mod_revision, version)` of a key-value.
fn meta(kv: &KeyValue) -> (Revision, Revision, i64) {
    (kv.create_revision, kv.mod_revision, kv.version)
}

async fn put(store: &Arc<dyn Store>, key: &str, value: &str) -> Result<Revision> {
    store
        .put(key.as_bytes(), value.as_bytes())
        .await
        .with_context(|| format!("put {key}"))
}

async fn get(store: &Arc<dyn Store>, key: &str) -> Result<Option<KeyValue>> {
    store
        .get(key.as_bytes())
        .await
        .with_context(|| format!("get {key}"))
}

async fn must_get(store: &Arc<dyn Store>, key: &str) -> Result<KeyValue> {
    get(store, key)
        .await?
        .with_context(|| format!("{key} should exist"))
}

async fn delete(store: &Arc<dyn Store>, key: &str) -> Result<bool> {
    store
        .delete(key.as_bytes())
        .await
        .with_context(|| format!("delete {key}"))
}

async fn range(store: &Arc<dyn Store>, range: Range) -> Result<RangeResponse> {
    let what = format!("{range:?}");
    store
        .range(range)
        .await
        .with_context(|| format!("range {what}"))
}

async fn current(store: &Arc<dyn Store>) -> Result<Revision> {
    store.current_revision().await.context("current revision")
}

async fn txn(
    store: &Arc<dyn Store>,
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
) -> Result<TxnResponse> {
    store
        .txn(Txn {
            compare,
            success,
            failure,
        })
        .await
        .context("txn")
}

fn put_with_lease(key: &str, value: &str, lease: LeaseId) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
        lease,
        prev_kv: false,
    }
}

fn put_with_prev_kv(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
        prev_kv: true,
    }
}

fn delete_prefix(prefix: &str, prev_kv: bool) -> TxnOp {
    TxnOp::Delete {
        key: prefix.into(),
        end: RangeEnd::Prefix,
        prev_kv,
    }
}

/// The `Get` result at `index`.
fn get_result(response: &TxnResponse, index: usize) -> Result<&RangeResponse> {
    match response.results.get(index) {
        Some(TxnOpResult::Get(range)) => Ok(range),
        other => bail!("result {index} should be a Get, is {other:?}"),
    }
}

/// The `Put` result's prev_kv at `index`.
fn put_result(response: &TxnResponse, index: usize) -> Result<Option<&KeyValue>> {
    match response.results.get(index) {
        Some(TxnOpResult::Put { prev_kv }) => Ok(prev_kv.as_ref()),
        other => bail!("result {index} should be a Put, is {other:?}"),
    }
}

/// The `Delete` result (count, prev_kvs) at `index`.
fn delete_result(response: &TxnResponse, index: usize) -> Result<(i64, &[KeyValue])> {
    match response.results.get(index) {
        Some(TxnOpResult::Delete { deleted, prev_kvs }) => Ok((*deleted, prev_kvs.as_slice())),
        other => bail!("result {index} should be a Delete, is {other:?}"),
    }
}

/// The error of something that must fail.
fn expect_err<T: Debug>(result: Result<T, StoreError>, what: &str) -> Result<StoreError> {
    match result {
        Ok(value) => bail!("{what} should fail, got {value:?}"),
        Err(err) => Ok(err),
    }
}

/// Whether `compare` holds, by a transaction with a `Get` on success and nothing on failure
/// (which must change nothing).
async fn holds(store: &Arc<dyn Store>, compare: Compare) -> Result<bool> {
    let key = compare.key.clone();
    let before = current(store).await?;
    let response = txn(
        store,
        vec![compare],
        vec![TxnOp::Get(Range::key(key))],
        vec![],
    )
    .await?;
    ensure!(
        response.revision == before,
        "a txn that only reads moved the revision from {before} to {}",
        response.revision
    );
    let expected_results = usize::from(response.succeeded);
    ensure!(
        response.results.len() == expected_results,
        "the branch that ran should give {expected_results} results: {response:?}"
    );
    Ok(response.succeeded)
}

/// Checks the invariant of every batch: all its events are of its revision.
fn check_batch(batch: &WatchBatch) -> Result<()> {
    for event in &batch.events {
        ensure!(
            event.kv.mod_revision == batch.revision,
            "event of {} at revision {} in the batch of revision {}",
            text(&event.kv.key),
            event.kv.mod_revision,
            batch.revision
        );
    }
    Ok(())
}

/// The next batch with events (batches without any are skipped), within [`STREAM_TIMEOUT`].
async fn next_batch(stream: &mut WatchStream) -> Result<WatchBatch> {
    for _ in 0..10_000 {
        let item = timeout(STREAM_TIMEOUT, stream.next())
            .await
            .map_err(|_| anyhow!("no watch batch within {STREAM_TIMEOUT:?}"))?;
        match item {
            None => bail!("the watch stream ended"),
            Some(Err(err)) => return Err(err).context("the watch stream failed"),
            Some(Ok(batch)) if batch.events.is_empty() => continue,
            Some(Ok(batch)) => {
                check_batch(&batch)?;
                return Ok(batch);
            }
        }
    }
    bail!("the watch stream gave only empty batches")
}

/// Batches until one of revision `last` or later, checking that revisions strictly increase.
async fn collect_until(stream: &mut WatchStream, last: Revision) -> Result<Vec<WatchBatch>> {
    let deadline = Instant::now() + COLLECT_TIMEOUT;
    let mut batches: Vec<WatchBatch> = Vec::new();
    while batches.last().is_none_or(|batch| batch.revision < last) {
        ensure!(
            Instant::now() < deadline,
            "watch did not reach revision {last} within {COLLECT_TIMEOUT:?} (got {} batches)",
            batches.len()
        );
        ensure!(batches.len() < 1_000_000, "too many batches");
        let batch = timeout(COLLECT_TIMEOUT, next_batch(stream))
            .await
            .map_err(|_| anyhow!("watch stalled before revision {last}"))??;
        if let Some(previous) = batches.last() {
            ensure!(
                batch.revision > previous.revision,
                "batch of revision {} after one of revision {} (duplicate or out of order)",
                batch.revision,
                previous.revision
            );
        }
        batches.push(batch);
    }
    Ok(batches)
}

/// Checks that the watch delivers nothing more for [`QUIET`].
async fn expect_quiet(stream: &mut WatchStream) -> Result<()> {
    let deadline = Instant::now() + QUIET;
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.next()).await {
            Err(_) => return Ok(()),
            Ok(None) => bail!("the watch stream ended"),
            Ok(Some(Err(err))) => return Err(err).context("the watch stream failed"),
            Ok(Some(Ok(batch))) if batch.events.is_empty() => continue,
            Ok(Some(Ok(batch))) => bail!("unexpected batch: {batch:?}"),
        }
    }
    Ok(())
}

fn revisions(batches: &[WatchBatch]) -> Vec<Revision> {
    batches.iter().map(|batch| batch.revision).collect()
}

/// The error a watch must fail with: from `watch()` itself or as the stream's first item.
async fn watch_error(store: &Arc<dyn Store>, request: WatchRequest) -> Result<StoreError> {
    let mut stream = match store.watch(request).await {
        Err(err) => return Ok(err),
        Ok(stream) => stream,
    };
    for _ in 0..10_000 {
        match timeout(STREAM_TIMEOUT, stream.next()).await {
            Err(_) => bail!("the watch neither failed nor reported an error"),
            Ok(None) => bail!("the watch stream ended without an error"),
            Ok(Some(Err(err))) => return Ok(err),
            Ok(Some(Ok(batch))) if batch.events.is_empty() => continue,
            Ok(Some(Ok(batch))) => bail!("the watch should fail, delivered {batch:?}"),
        }
    }
    bail!("the watch stream gave only empty batches")
}

/// Writes `count` keys `{prefix}{i:05}` from `tasks` concurrent tasks; returns the
/// revisions of the writes, sorted.
async fn write_many(
    store: Arc<dyn Store>,
    prefix: String,
    count: usize,
    tasks: usize,
    value_len: usize,
) -> Result<Vec<Revision>> {
    let mut set = JoinSet::new();
    for task in 0..tasks {
        let store = store.clone();
        let prefix = prefix.clone();
        set.spawn(async move {
            let mut revisions = Vec::new();
            for i in (task..count).step_by(tasks) {
                let key = format!("{prefix}{i:05}");
                let fill = b'a' + (i % 26) as u8;
                let value = vec![fill; value_len];
                let revision = store
                    .put(key.as_bytes(), &value)
                    .await
                    .with_context(|| format!("put {key}"))?;
                revisions.push(revision);
            }
            anyhow::Ok(revisions)
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        all.extend(joined.context("writer task")??);
    }
    all.sort_unstable();
    Ok(all)
}

/// Polls until `key` is gone, within [`EXPIRY_DEADLINE`].
async fn wait_until_gone(store: &Arc<dyn Store>, key: &str) -> Result<Duration> {
    let start = Instant::now();
    while get(store, key).await?.is_some() {
        ensure!(
            start.elapsed() < EXPIRY_DEADLINE,
            "{key} still exists {EXPIRY_DEADLINE:?} after its lease should have expired"
        );
        sleep(Duration::from_millis(100)).await;
    }
    Ok(start.elapsed())
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

// ---------------------------------------------------------------------------------------
// Revisions
// ---------------------------------------------------------------------------------------

/// An empty store is at revision 1; the first write is revision 2 (etcd's numbering).
async fn fresh_store_starts_at_revision_one(store: Arc<dyn Store>) -> Result<()> {
    assert_eq!(current(&store).await?, 1, "an empty store is at revision 1");
    let first = put(&store, "/first", "1").await?;
    assert_eq!(first, 2, "the first write is revision 2");
    assert_eq!(current(&store).await?, 2);
    let kv = must_get(&store, "/first").await?;
    assert_eq!(meta(&kv), (2, 2, 1));
    Ok(())
}

/// Each write transaction takes exactly the next revision, however many keys it changes.
async fn each_write_txn_takes_the_next_revision(store: Arc<dyn Store>) -> Result<()> {
    let r0 = current(&store).await?;
    let r1 = put(&store, "/rev/a", "1").await?;
    assert_eq!(r1, r0 + 1);
    let r2 = put(&store, "/rev/a", "2").await?;
    assert_eq!(r2, r1 + 1);
    let r3 = put(&store, "/rev/b", "1").await?;
    assert_eq!(r3, r2 + 1);
    assert!(delete(&store, "/rev/a").await?);
    assert_eq!(current(&store).await?, r3 + 1);

    let response = txn(
        &store,
        vec![],
        vec![
            TxnOp::put("/rev/c", "1"),
            TxnOp::put("/rev/d", "1"),
            TxnOp::put("/rev/e", "1"),
            TxnOp::delete("/rev/b"),
        ],
        vec![],
    )
    .await?;
    assert!(response.succeeded);
    assert_eq!(
        response.revision,
        r3 + 2,
        "a txn of several writes is one revision"
    );
    assert_eq!(response.results.len(), 4);
    for key in ["/rev/c", "/rev/d", "/rev/e"] {
        let kv = must_get(&store, key).await?;
        assert_eq!(meta(&kv), (r3 + 2, r3 + 2, 1), "{key}");
    }
    assert_eq!(get(&store, "/rev/b").await?, None);
    assert_eq!(current(&store).await?, r3 + 2);
    Ok(())
}

/// Reads, deletes of absent keys, failed compares and empty transactions change nothing and
/// take no revision.
async fn txns_that_change_nothing_take_no_revision(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/nb/a", "1").await?;
    let r = current(&store).await?;

    let read = txn(
        &store,
        vec![],
        vec![TxnOp::Get(Range::key("/nb/a"))],
        vec![],
    )
    .await?;
    assert!(read.succeeded);
    assert_eq!(read.revision, r, "a read-only txn");

    let absent = txn(&store, vec![], vec![TxnOp::delete("/nb/absent")], vec![]).await?;
    assert_eq!(absent.revision, r, "a delete of an absent key");
    assert_eq!(delete_result(&absent, 0)?.0, 0);

    let absent_range = txn(
        &store,
        vec![],
        vec![delete_prefix("/nb/none/", true)],
        vec![],
    )
    .await?;
    assert_eq!(absent_range.revision, r, "a delete of an empty range");
    assert_eq!(delete_result(&absent_range, 0)?, (0, &[][..]));

    assert!(!delete(&store, "/nb/absent").await?);

    let failed = txn(
        &store,
        vec![Compare::value("/nb/a", CompareOp::Equal, "other")],
        vec![TxnOp::put("/nb/b", "1")],
        vec![],
    )
    .await?;
    assert!(!failed.succeeded);
    assert!(failed.results.is_empty());
    assert_eq!(
        failed.revision, r,
        "a failed compare with an empty failure branch"
    );

    let empty = txn(&store, vec![], vec![], vec![]).await?;
    assert!(empty.succeeded, "an empty txn succeeds");
    assert_eq!(empty.revision, r, "an empty txn");

    assert_eq!(range(&store, Range::prefix("/nb/")).await?.revision, r);
    assert_eq!(current(&store).await?, r);
    assert_eq!(get(&store, "/nb/b").await?, None);
    Ok(())
}

/// create_revision, mod_revision and version across put, update, delete and re-create.
async fn key_metadata_follows_generations(store: Arc<dyn Store>) -> Result<()> {
    let r1 = put(&store, "/gen/k", "v1").await?;
    assert_eq!(meta(&must_get(&store, "/gen/k").await?), (r1, r1, 1));

    let r2 = put(&store, "/gen/k", "v2").await?;
    let kv = must_get(&store, "/gen/k").await?;
    assert_eq!(meta(&kv), (r1, r2, 2));
    assert_eq!(kv.value, b"v2");

    // Putting the same value again is still a change: new revision, new version.
    let r3 = put(&store, "/gen/k", "v2").await?;
    assert_eq!(r3, r2 + 1);
    assert_eq!(meta(&must_get(&store, "/gen/k").await?), (r1, r3, 3));

    assert!(delete(&store, "/gen/k").await?);
    let r4 = current(&store).await?;
    assert_eq!(r4, r3 + 1);
    assert_eq!(get(&store, "/gen/k").await?, None);

    // A new generation starts from scratch.
    let r5 = put(&store, "/gen/k", "v3").await?;
    let kv = must_get(&store, "/gen/k").await?;
    assert_eq!(meta(&kv), (r5, r5, 1));
    assert_eq!(kv.value, b"v3");
    assert_eq!(kv.lease, 0);

    // The old generation is still in history.
    let old = range(&store, Range::key("/gen/k").at(r3)).await?;
    assert_eq!(old.kvs.len(), 1);
    assert_eq!(meta(&old.kvs[0]), (r1, r3, 3));
    let gone = range(&store, Range::key("/gen/k").at(r4)).await?;
    assert!(gone.kvs.is_empty());
    assert_eq!(gone.count, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

/// A missing key reads as nothing, with count 0 and the current revision.
async fn get_of_a_missing_key_is_none(store: Arc<dyn Store>) -> Result<()> {
    assert_eq!(get(&store, "/missing").await?, None);
    let r = put(&store, "/present", "1").await?;
    assert_eq!(get(&store, "/missing").await?, None);
    let response = range(&store, Range::key("/missing")).await?;
    assert!(response.kvs.is_empty());
    assert_eq!(response.count, 0);
    assert!(!response.more);
    assert_eq!(response.revision, r);
    // A key is not a prefix: "/present" does not match "/pres".
    assert_eq!(get(&store, "/pres").await?, None);
    Ok(())
}

/// Reads at old revisions see the key as it was, absent before its creation and after its
/// deletion, present at the revision just before the deletion.
async fn range_at_old_revisions_sees_history(store: Arc<dyn Store>) -> Result<()> {
    let before = put(&store, "/hist/other", "x").await?;
    let r1 = put(&store, "/hist/k", "one").await?;
    let r2 = put(&store, "/hist/k", "two").await?;
    assert!(delete(&store, "/hist/k").await?);
    let r3 = current(&store).await?;
    let r4 = put(&store, "/hist/later", "x").await?;

    let at_before = range(&store, Range::key("/hist/k").at(before)).await?;
    assert!(at_before.kvs.is_empty(), "absent before its creation");
    assert_eq!(at_before.count, 0);
    assert_eq!(
        at_before.revision, r4,
        "the header carries the current revision"
    );

    let at_r1 = range(&store, Range::key("/hist/k").at(r1)).await?;
    assert_eq!(at_r1.kvs.len(), 1);
    assert_eq!(at_r1.kvs[0].value, b"one");
    assert_eq!(meta(&at_r1.kvs[0]), (r1, r1, 1));
    assert_eq!(at_r1.revision, r4);

    let at_r2 = range(&store, Range::key("/hist/k").at(r3 - 1)).await?;
    assert_eq!(
        at_r2.kvs.len(),
        1,
        "present at the revision before its deletion"
    );
    assert_eq!(at_r2.kvs[0].value, b"two");
    assert_eq!(meta(&at_r2.kvs[0]), (r1, r2, 2));

    assert!(range(&store, Range::key("/hist/k").at(r3))
        .await?
        .kvs
        .is_empty());
    assert!(range(&store, Range::key("/hist/k").at(r4))
        .await?
        .kvs
        .is_empty());
    assert_eq!(get(&store, "/hist/k").await?, None);

    // A prefix read at an old revision sees the set of keys of then.
    let at_r1 = range(&store, Range::prefix("/hist/").at(r1)).await?;
    assert_eq!(keys_of(&at_r1.kvs), ["/hist/k", "/hist/other"]);
    let at_r4 = range(&store, Range::prefix("/hist/").at(r4)).await?;
    assert_eq!(keys_of(&at_r4.kvs), ["/hist/later", "/hist/other"]);
    Ok(())
}

/// Reading at a revision that does not exist yet fails with FutureRevision.
async fn range_at_a_future_revision_fails(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/future/k", "1").await?;
    for ahead in [r + 1, r + 1000] {
        let err = expect_err(
            store.range(Range::key("/future/k").at(ahead)).await,
            "a read at a future revision",
        )?;
        assert!(
            matches!(err, StoreError::FutureRevision { .. }),
            "a read at {ahead} (current {r}): {err:?}"
        );
    }
    assert_eq!(
        range(&store, Range::key("/future/k").at(r))
            .await?
            .kvs
            .len(),
        1
    );
    Ok(())
}

/// A prefix covers exactly the keys that start with it, in key order.
async fn prefix_range_has_no_neighbour_leakage(store: Arc<dyn Store>) -> Result<()> {
    for key in [
        "/a/b/c", "/ab", "/a", "/a/2", "/a0", "/b", "/a/", "/a/1", "/", "/a.",
    ] {
        put(&store, key, key).await?;
    }
    let response = range(&store, Range::prefix("/a/")).await?;
    assert_eq!(keys_of(&response.kvs), ["/a/", "/a/1", "/a/2", "/a/b/c"]);
    assert_eq!(response.count, 4);
    assert!(!response.more);
    for kv in &response.kvs {
        assert_eq!(kv.value, kv.key, "values come with the keys");
    }
    let response = range(&store, Range::prefix("/a")).await?;
    assert_eq!(
        keys_of(&response.kvs),
        ["/a", "/a.", "/a/", "/a/1", "/a/2", "/a/b/c", "/a0", "/ab"]
    );
    let response = range(&store, Range::prefix("/c/")).await?;
    assert!(response.kvs.is_empty());
    assert_eq!(response.count, 0);
    Ok(())
}

/// `Until` ranges are half-open; an empty or reversed range holds nothing.
async fn until_range_is_half_open(store: Arc<dyn Store>) -> Result<()> {
    for key in ["/u/a", "/u/b", "/u/ba", "/u/c", "/u/d"] {
        put(&store, key, "x").await?;
    }
    let response = range(&store, Range::between("/u/b", "/u/d")).await?;
    assert_eq!(keys_of(&response.kvs), ["/u/b", "/u/ba", "/u/c"]);
    assert_eq!(response.count, 3);

    let response = range(&store, Range::between("/u/b", "/u/c")).await?;
    assert_eq!(keys_of(&response.kvs), ["/u/b", "/u/ba"]);

    let response = range(&store, Range::between("/u/bb", "/u/z")).await?;
    assert_eq!(
        keys_of(&response.kvs),
        ["/u/c", "/u/d"],
        "start need not be a key"
    );

    let response = range(&store, Range::between("/u/b", "/u/b")).await?;
    assert!(response.kvs.is_empty(), "an empty range");
    assert_eq!(response.count, 0);

    let response = range(&store, Range::between("/u/d", "/u/a")).await?;
    assert!(response.kvs.is_empty(), "a reversed range");
    assert_eq!(response.count, 0);
    Ok(())
}

/// `limit` returns the first keys, `more` says keys were left out, `count` is the full count.
async fn range_limit_reports_more_and_the_full_count(store: Arc<dyn Store>) -> Result<()> {
    let mut fifth = 0;
    for i in 0..10 {
        let r = put(&store, &format!("/lim/{i:02}"), &i.to_string()).await?;
        if i == 4 {
            fifth = r;
        }
    }
    let response = range(&store, Range::prefix("/lim/").limit(3)).await?;
    assert_eq!(keys_of(&response.kvs), ["/lim/00", "/lim/01", "/lim/02"]);
    assert!(response.more);
    assert_eq!(response.count, 10, "count ignores the limit");

    let response = range(&store, Range::prefix("/lim/").limit(9)).await?;
    assert_eq!(response.kvs.len(), 9);
    assert!(response.more);

    for limit in [10, 11, 1000, 0] {
        let response = range(&store, Range::prefix("/lim/").limit(limit)).await?;
        assert_eq!(response.kvs.len(), 10, "limit {limit}");
        assert!(!response.more, "limit {limit}");
        assert_eq!(response.count, 10, "limit {limit}");
    }

    let response = range(&store, Range::prefix("/lim/").limit(2).at(fifth)).await?;
    assert_eq!(keys_of(&response.kvs), ["/lim/00", "/lim/01"]);
    assert!(response.more);
    assert_eq!(response.count, 5, "count at the read's revision");
    Ok(())
}

/// A list paged with `limit`, continuing from the last key + "\0" at the first page's
/// revision, sees one consistent snapshot while writes happen.
async fn paginated_list_at_a_fixed_revision_is_a_snapshot(store: Arc<dyn Store>) -> Result<()> {
    const KEYS: usize = 60;
    const PAGE: i64 = 7;
    let mut expected = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("/page/{i:03}");
        let value = format!("v0-{i}");
        put(&store, &key, &value).await?;
        expected.insert(key, value);
    }

    let first = range(&store, Range::prefix("/page/").limit(PAGE)).await?;
    let snapshot = first.revision;
    assert_eq!(first.count, KEYS as i64);

    // Writes from now on, in the background and between pages.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut writes = 0;
            for i in 0..300_usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("/page/{:03}", (i * 7) % KEYS);
                match i % 3 {
                    0 => store.put(key.as_bytes(), b"changed").await.map(drop)?,
                    1 => store.delete(key.as_bytes()).await.map(drop)?,
                    _ => store
                        .put(format!("{key}-new").as_bytes(), b"new")
                        .await
                        .map(drop)?,
                }
                writes += 1;
            }
            Ok::<_, StoreError>(writes)
        })
    };

    let mut seen: Vec<KeyValue> = first.kvs.clone();
    let mut more = first.more;
    let end = prefix_end(b"/page/");
    for page in 0..100 {
        if !more {
            break;
        }
        ensure!(page < 99, "too many pages");
        let last = seen.last().context("a page with more keys was empty")?;
        let mut next_key = last.key.clone();
        next_key.push(0);
        // Change the next key to be read, so the snapshot surely matters.
        let next_expected = format!("/page/{:03}", seen.len());
        if seen.len().is_multiple_of(2) {
            delete(&store, &next_expected).await?;
        } else {
            put(&store, &next_expected, "overwritten").await?;
        }
        put(&store, &format!("{next_expected}a"), "inserted").await?;

        let response = range(
            &store,
            Range {
                key: next_key,
                end: RangeEnd::Until(end.clone()),
                revision: snapshot,
                limit: PAGE,
                ..Range::default()
            },
        )
        .await?;
        assert_eq!(
            response.count,
            (KEYS - seen.len()) as i64,
            "count of the rest at the snapshot"
        );
        assert!(response.revision > snapshot, "writes happened meanwhile");
        seen.extend(response.kvs);
        more = response.more;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.context("writer task")??;
    assert!(writes > 0);

    let got: BTreeMap<String, String> = seen
        .iter()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect();
    assert_eq!(got.len(), seen.len(), "no key twice");
    assert_eq!(got, expected, "the pages add up to the snapshot");
    for kv in &seen {
        assert!(kv.mod_revision <= snapshot);
    }
    // The store did move on.
    let now = range(&store, Range::prefix("/page/")).await?;
    assert!(now.revision > snapshot);
    assert_ne!(
        now.kvs
            .iter()
            .map(|kv| (text(&kv.key), text(&kv.value)))
            .collect::<BTreeMap<_, _>>(),
        expected
    );
    Ok(())
}

/// `count_only` returns the count and no keys, at any revision.
async fn count_only_returns_just_the_count(store: Arc<dyn Store>) -> Result<()> {
    let mut third = 0;
    for i in 0..5 {
        let r = put(&store, &format!("/cnt/{i}"), "x").await?;
        if i == 2 {
            third = r;
        }
    }
    put(&store, "/cnt0", "neighbour").await?;
    let response = range(&store, Range::prefix("/cnt/").count_only()).await?;
    assert!(response.kvs.is_empty());
    assert_eq!(response.count, 5);
    assert!(!response.more);

    let response = range(&store, Range::prefix("/cnt/").count_only().at(third)).await?;
    assert!(response.kvs.is_empty());
    assert_eq!(response.count, 3);

    let response = range(&store, Range::key("/cnt/1").count_only()).await?;
    assert_eq!(response.count, 1);
    let response = range(&store, Range::key("/cnt/9").count_only()).await?;
    assert_eq!(response.count, 0);
    Ok(())
}

/// `keys_only` returns keys and metadata with empty values.
async fn keys_only_returns_keys_without_values(store: Arc<dyn Store>) -> Result<()> {
    let r1 = put(&store, "/ko/a", "value-a").await?;
    let r2 = put(&store, "/ko/b", "value-b").await?;
    let r3 = put(&store, "/ko/a", "value-a2").await?;
    let response = range(&store, Range::prefix("/ko/").keys_only()).await?;
    assert_eq!(keys_of(&response.kvs), ["/ko/a", "/ko/b"]);
    assert_eq!(response.count, 2);
    for kv in &response.kvs {
        assert!(kv.value.is_empty(), "{} has a value", text(&kv.key));
    }
    assert_eq!(meta(&response.kvs[0]), (r1, r3, 2));
    assert_eq!(meta(&response.kvs[1]), (r2, r2, 1));

    let old = range(&store, Range::key("/ko/a").keys_only().at(r1)).await?;
    assert_eq!(old.kvs.len(), 1);
    assert!(old.kvs[0].value.is_empty());
    assert_eq!(meta(&old.kvs[0]), (r1, r1, 1));
    Ok(())
}

/// The empty prefix covers every key (etcd's clients send it as `\0`..`\0`).
async fn empty_prefix_covers_every_key(store: Arc<dyn Store>) -> Result<()> {
    for key in ["/x", "a", "\u{1}", "zz"] {
        put(&store, key, "v").await?;
    }
    store.put(b"\xff\xff", b"v").await?;
    let response = range(&store, Range::prefix("")).await?;
    assert_eq!(response.count, 5);
    assert_eq!(
        response
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        [
            b"\x01".to_vec(),
            b"/x".to_vec(),
            b"a".to_vec(),
            b"zz".to_vec(),
            b"\xff\xff".to_vec()
        ]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------

/// Every operator on mod_revision.
async fn compare_mod_revision(store: Arc<dyn Store>) -> Result<()> {
    let old = put(&store, "/cmp/k", "1").await?;
    let m = put(&store, "/cmp/k", "2").await?;
    let c = |op, revision| Compare::mod_revision("/cmp/k", op, revision);
    assert!(holds(&store, c(CompareOp::Equal, m)).await?);
    assert!(!holds(&store, c(CompareOp::Equal, old)).await?);
    assert!(!holds(&store, c(CompareOp::Equal, 0)).await?);
    assert!(!holds(&store, c(CompareOp::NotEqual, m)).await?);
    assert!(holds(&store, c(CompareOp::NotEqual, old)).await?);
    assert!(holds(&store, c(CompareOp::Greater, old)).await?);
    assert!(!holds(&store, c(CompareOp::Greater, m)).await?);
    assert!(!holds(&store, c(CompareOp::Greater, m + 1)).await?);
    assert!(holds(&store, c(CompareOp::Less, m + 1)).await?);
    assert!(!holds(&store, c(CompareOp::Less, m)).await?);
    assert!(!holds(&store, c(CompareOp::Less, old)).await?);
    Ok(())
}

/// Every operator on create_revision, which updates do not change.
async fn compare_create_revision(store: Arc<dyn Store>) -> Result<()> {
    let created = put(&store, "/cmp/k", "1").await?;
    let updated = put(&store, "/cmp/k", "2").await?;
    let c = |op, revision| Compare::create_revision("/cmp/k", op, revision);
    assert!(holds(&store, c(CompareOp::Equal, created)).await?);
    assert!(!holds(&store, c(CompareOp::Equal, updated)).await?);
    assert!(!holds(&store, c(CompareOp::Equal, 0)).await?);
    assert!(holds(&store, c(CompareOp::NotEqual, updated)).await?);
    assert!(!holds(&store, c(CompareOp::NotEqual, created)).await?);
    assert!(holds(&store, c(CompareOp::Greater, created - 1)).await?);
    assert!(!holds(&store, c(CompareOp::Greater, created)).await?);
    assert!(holds(&store, c(CompareOp::Less, updated)).await?);
    assert!(!holds(&store, c(CompareOp::Less, created)).await?);
    Ok(())
}

/// Every operator on version.
async fn compare_version(store: Arc<dyn Store>) -> Result<()> {
    for value in ["1", "2", "3"] {
        put(&store, "/cmp/k", value).await?;
    }
    let c = |op, version| Compare::version("/cmp/k", op, version);
    assert!(holds(&store, c(CompareOp::Equal, 3)).await?);
    assert!(!holds(&store, c(CompareOp::Equal, 2)).await?);
    assert!(holds(&store, c(CompareOp::NotEqual, 2)).await?);
    assert!(!holds(&store, c(CompareOp::NotEqual, 3)).await?);
    assert!(holds(&store, c(CompareOp::Greater, 2)).await?);
    assert!(!holds(&store, c(CompareOp::Greater, 3)).await?);
    assert!(holds(&store, c(CompareOp::Less, 4)).await?);
    assert!(!holds(&store, c(CompareOp::Less, 3)).await?);
    Ok(())
}

/// Every operator on the value, which compares as bytes.
async fn compare_value(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/cmp/k", "b").await?;
    let c = |op, value: &str| Compare::value("/cmp/k", op, value);
    assert!(holds(&store, c(CompareOp::Equal, "b")).await?);
    assert!(!holds(&store, c(CompareOp::Equal, "a")).await?);
    assert!(!holds(&store, c(CompareOp::Equal, "")).await?);
    assert!(holds(&store, c(CompareOp::NotEqual, "a")).await?);
    assert!(!holds(&store, c(CompareOp::NotEqual, "b")).await?);
    assert!(holds(&store, c(CompareOp::Greater, "a")).await?);
    assert!(holds(&store, c(CompareOp::Greater, "")).await?);
    assert!(!holds(&store, c(CompareOp::Greater, "b")).await?);
    assert!(!holds(&store, c(CompareOp::Greater, "ba")).await?);
    assert!(holds(&store, c(CompareOp::Less, "ba")).await?);
    assert!(holds(&store, c(CompareOp::Less, "c")).await?);
    assert!(!holds(&store, c(CompareOp::Less, "b")).await?);
    assert!(!holds(&store, c(CompareOp::Less, "a")).await?);

    // Bytes, not text: 0xff sorts after every ASCII byte.
    store.put(b"/cmp/bin", b"\xff").await?;
    let bin = |op, value: &[u8]| Compare::value("/cmp/bin", op, value);
    assert!(holds(&store, bin(CompareOp::Greater, b"z")).await?);
    assert!(holds(&store, bin(CompareOp::Less, b"\xff\x00")).await?);
    assert!(holds(&store, bin(CompareOp::Equal, b"\xff")).await?);
    Ok(())
}

/// On a missing key, revisions and version are 0 and any value compare is false.
async fn compare_on_a_missing_key(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/cmp/other", "x").await?;
    let key = "/cmp/missing";
    assert!(holds(&store, Compare::mod_revision(key, CompareOp::Equal, 0)).await?);
    assert!(holds(&store, Compare::create_revision(key, CompareOp::Equal, 0)).await?);
    assert!(holds(&store, Compare::version(key, CompareOp::Equal, 0)).await?);
    assert!(!holds(&store, Compare::mod_revision(key, CompareOp::Greater, 0)).await?);
    assert!(holds(&store, Compare::mod_revision(key, CompareOp::Less, 1)).await?);
    assert!(holds(&store, Compare::version(key, CompareOp::NotEqual, 1)).await?);
    assert!(
        !holds(
            &store,
            Compare::create_revision(key, CompareOp::NotEqual, 0)
        )
        .await?
    );
    for op in [
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ] {
        for value in ["", "x"] {
            assert!(
                !holds(&store, Compare::value(key, op, value)).await?,
                "value {op:?} {value:?} on a missing key must be false"
            );
        }
    }
    Ok(())
}

/// After a delete the key compares as missing again (create-if-absent works on it).
async fn compare_after_delete_sees_the_key_missing(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/cmp/k", "1").await?;
    put(&store, "/cmp/k", "2").await?;
    assert!(delete(&store, "/cmp/k").await?);
    assert!(holds(&store, Compare::mod_revision("/cmp/k", CompareOp::Equal, 0)).await?);
    assert!(
        holds(
            &store,
            Compare::create_revision("/cmp/k", CompareOp::Equal, 0)
        )
        .await?
    );
    assert!(holds(&store, Compare::version("/cmp/k", CompareOp::Equal, 0)).await?);
    assert!(!holds(&store, Compare::value("/cmp/k", CompareOp::Equal, "2")).await?);
    Ok(())
}

/// A transaction succeeds only if every compare holds.
async fn every_compare_must_hold(store: Arc<dyn Store>) -> Result<()> {
    let a = put(&store, "/all/a", "1").await?;
    let b = put(&store, "/all/b", "1").await?;
    let both = vec![
        Compare::mod_revision("/all/a", CompareOp::Equal, a),
        Compare::mod_revision("/all/b", CompareOp::Equal, b),
        Compare::value("/all/a", CompareOp::Equal, "1"),
    ];
    let response = txn(
        &store,
        both.clone(),
        vec![TxnOp::put("/all/ok", "1")],
        vec![TxnOp::put("/all/failed", "1")],
    )
    .await?;
    assert!(response.succeeded);
    assert_eq!(response.revision, b + 1);

    for wrong in 0..3 {
        let mut compares = both.clone();
        compares[wrong] = match wrong {
            0 => Compare::mod_revision("/all/a", CompareOp::Equal, a + 100),
            1 => Compare::mod_revision("/all/b", CompareOp::Equal, 0),
            _ => Compare::value("/all/a", CompareOp::NotEqual, "1"),
        };
        let response = txn(
            &store,
            compares,
            vec![TxnOp::put("/all/ok", "again")],
            vec![TxnOp::Get(Range::key("/all/a"))],
        )
        .await?;
        assert!(!response.succeeded, "compare {wrong} is false");
        assert_eq!(response.revision, b + 1, "the failure branch only read");
        assert_eq!(get_result(&response, 0)?.kvs.len(), 1);
    }
    assert_eq!(must_get(&store, "/all/ok").await?.value, b"1");
    assert_eq!(get(&store, "/all/failed").await?, None);
    Ok(())
}

/// When a compare fails, the failure branch runs (and may write).
async fn failure_branch_runs_when_a_compare_fails(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/fb/k", "current").await?;
    let response = txn(
        &store,
        vec![Compare::value("/fb/k", CompareOp::Equal, "stale")],
        vec![TxnOp::put("/fb/success", "1")],
        vec![
            TxnOp::put("/fb/failure", "1"),
            TxnOp::Get(Range::key("/fb/k")),
            TxnOp::delete("/fb/k"),
        ],
    )
    .await?;
    assert!(!response.succeeded);
    assert_eq!(response.revision, r + 1, "the failure branch wrote");
    assert_eq!(response.results.len(), 3);
    assert_eq!(put_result(&response, 0)?, None);
    assert_eq!(get_result(&response, 1)?.kvs[0].value, b"current");
    assert_eq!(delete_result(&response, 2)?.0, 1);
    assert_eq!(get(&store, "/fb/success").await?, None);
    assert_eq!(
        meta(&must_get(&store, "/fb/failure").await?),
        (r + 1, r + 1, 1)
    );
    assert_eq!(get(&store, "/fb/k").await?, None);
    Ok(())
}

/// The apiserver's idioms: create if absent, update and delete if unchanged, with a `Get` on
/// failure to learn the current state.
async fn optimistic_create_update_and_delete(store: Arc<dyn Store>) -> Result<()> {
    let create = |value: &str| {
        (
            vec![Compare::mod_revision("/opt/k", CompareOp::Equal, 0)],
            vec![TxnOp::put("/opt/k", value)],
            vec![TxnOp::Get(Range::key("/opt/k"))],
        )
    };
    let (compare, success, failure) = create("first");
    let created = txn(&store, compare, success, failure).await?;
    assert!(created.succeeded);
    let (compare, success, failure) = create("second");
    let again = txn(&store, compare, success, failure).await?;
    assert!(!again.succeeded, "the key exists");
    let existing = &get_result(&again, 0)?.kvs[0];
    assert_eq!(existing.value, b"first");
    assert_eq!(existing.mod_revision, created.revision);

    let update = |expected: Revision, value: &str| {
        (
            vec![Compare::mod_revision("/opt/k", CompareOp::Equal, expected)],
            vec![TxnOp::put("/opt/k", value)],
            vec![TxnOp::Get(Range::key("/opt/k"))],
        )
    };
    let (compare, success, failure) = update(created.revision, "updated");
    let updated = txn(&store, compare, success, failure).await?;
    assert!(updated.succeeded);
    assert_eq!(updated.revision, created.revision + 1);
    let (compare, success, failure) = update(created.revision, "stale");
    let stale = txn(&store, compare, success, failure).await?;
    assert!(!stale.succeeded);
    assert_eq!(get_result(&stale, 0)?.kvs[0].value, b"updated");
    assert_eq!(stale.revision, updated.revision);

    let stale_delete = txn(
        &store,
        vec![Compare::mod_revision(
            "/opt/k",
            CompareOp::Equal,
            created.revision,
        )],
        vec![TxnOp::delete("/opt/k")],
        vec![TxnOp::Get(Range::key("/opt/k"))],
    )
    .await?;
    assert!(!stale_delete.succeeded);
    let deleted = txn(
        &store,
        vec![Compare::mod_revision(
            "/opt/k",
            CompareOp::Equal,
            updated.revision,
        )],
        vec![TxnOp::delete("/opt/k")],
        vec![TxnOp::Get(Range::key("/opt/k"))],
    )
    .await?;
    assert!(deleted.succeeded);
    assert_eq!(delete_result(&deleted, 0)?.0, 1);
    assert_eq!(get(&store, "/opt/k").await?, None);
    Ok(())
}

/// A `Get` inside a transaction reads at the transaction's revision: it sees the writes of
/// the operations before it, not those after it.
async fn txn_get_reads_at_the_txn_revision(store: Arc<dyn Store>) -> Result<()> {
    let r1 = put(&store, "/tg/k", "old").await?;
    put(&store, "/tg/z", "z").await?;
    let response = txn(
        &store,
        vec![],
        vec![
            TxnOp::Get(Range::key("/tg/k")),
            TxnOp::put("/tg/k", "new"),
            TxnOp::put("/tg/n", "n"),
            TxnOp::Get(Range::key("/tg/k")),
            TxnOp::delete("/tg/z"),
            TxnOp::Get(Range::prefix("/tg/")),
        ],
        vec![],
    )
    .await?;
    assert!(response.succeeded);
    let r = response.revision;
    assert_eq!(r, r1 + 2);

    let before = get_result(&response, 0)?;
    assert_eq!(before.kvs.len(), 1);
    assert_eq!(before.kvs[0].value, b"old");
    assert_eq!(meta(&before.kvs[0]), (r1, r1, 1));

    let after = get_result(&response, 3)?;
    assert_eq!(after.kvs.len(), 1);
    assert_eq!(after.kvs[0].value, b"new");
    assert_eq!(meta(&after.kvs[0]), (r1, r, 2));

    let all = get_result(&response, 5)?;
    assert_eq!(keys_of(&all.kvs), ["/tg/k", "/tg/n"]);
    assert_eq!(all.count, 2);
    assert_eq!(meta(&all.kvs[1]), (r, r, 1));
    Ok(())
}

/// `prev_kv` on a put returns the key as it was, when asked and when it existed.
async fn put_returns_prev_kv_when_asked(store: Arc<dyn Store>) -> Result<()> {
    let created = txn(&store, vec![], vec![put_with_prev_kv("/pp/k", "1")], vec![]).await?;
    assert_eq!(put_result(&created, 0)?, None, "no previous key");

    let updated = txn(&store, vec![], vec![put_with_prev_kv("/pp/k", "2")], vec![]).await?;
    let prev = put_result(&updated, 0)?.context("prev_kv of an existing key")?;
    assert_eq!(prev.key, b"/pp/k");
    assert_eq!(prev.value, b"1");
    let c = created.revision;
    assert_eq!(meta(prev), (c, c, 1));

    let plain = txn(&store, vec![], vec![TxnOp::put("/pp/k", "3")], vec![]).await?;
    assert_eq!(put_result(&plain, 0)?, None, "not asked for");

    assert!(delete(&store, "/pp/k").await?);
    let recreated = txn(&store, vec![], vec![put_with_prev_kv("/pp/k", "4")], vec![]).await?;
    assert_eq!(
        put_result(&recreated, 0)?,
        None,
        "deleted keys have no previous value"
    );
    Ok(())
}

/// A range delete reports how many keys it deleted and, when asked, what they were.
async fn delete_range_counts_and_returns_prev_kvs(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/dr/b", "vb").await?;
    put(&store, "/dr/a", "va").await?;
    put(&store, "/dr/c", "vc").await?;
    put(&store, "/drx", "neighbour").await?;
    let r = current(&store).await?;
    let response = txn(&store, vec![], vec![delete_prefix("/dr/", true)], vec![]).await?;
    assert_eq!(response.revision, r + 1, "a range delete is one revision");
    let (deleted, prev_kvs) = delete_result(&response, 0)?;
    assert_eq!(deleted, 3);
    assert_eq!(keys_of(prev_kvs), ["/dr/a", "/dr/b", "/dr/c"]);
    assert_eq!(
        prev_kvs
            .iter()
            .map(|kv| text(&kv.value))
            .collect::<Vec<_>>(),
        ["va", "vb", "vc"]
    );
    assert!(range(&store, Range::prefix("/dr/")).await?.kvs.is_empty());
    assert!(get(&store, "/drx").await?.is_some());

    put(&store, "/dr2/a", "1").await?;
    put(&store, "/dr2/b", "1").await?;
    let response = txn(
        &store,
        vec![],
        vec![TxnOp::Delete {
            key: "/dr2/a".into(),
            end: RangeEnd::Until("/dr2/z".into()),
            prev_kv: false,
        }],
        vec![],
    )
    .await?;
    assert_eq!(
        delete_result(&response, 0)?,
        (2, &[][..]),
        "not asked for prev_kvs"
    );
    Ok(())
}

/// etcd refuses a transaction that writes one key twice in a branch (two puts, or a put
/// inside a deleted range), whichever branch runs; overlapping deletes are fine.
async fn txn_writing_a_key_twice_is_invalid(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/dup/k", "0").await?;
    let invalid: [(&str, Vec<TxnOp>); 3] = [
        (
            "two puts of one key",
            vec![TxnOp::put("/dup/k", "1"), TxnOp::put("/dup/k", "2")],
        ),
        (
            "a put and a delete of one key",
            vec![TxnOp::delete("/dup/k"), TxnOp::put("/dup/k", "2")],
        ),
        (
            "a put inside a deleted range",
            vec![TxnOp::put("/dup/new", "1"), delete_prefix("/dup/", false)],
        ),
    ];
    for (what, ops) in invalid {
        let err = expect_err(
            store
                .txn(Txn {
                    success: ops.clone(),
                    ..Txn::default()
                })
                .await,
            what,
        )?;
        assert!(
            matches!(err, StoreError::InvalidRequest(_)),
            "{what}: {err:?}"
        );
        // Checked in the branch that does not run too.
        let err = expect_err(
            store
                .txn(Txn {
                    success: vec![TxnOp::put("/dup/other", "1")],
                    failure: ops,
                    ..Txn::default()
                })
                .await,
            what,
        )?;
        assert!(
            matches!(err, StoreError::InvalidRequest(_)),
            "{what} in the failure branch: {err:?}"
        );
    }
    assert_eq!(current(&store).await?, r, "nothing written");
    assert_eq!(
        keys_of(&range(&store, Range::prefix("/dup/")).await?.kvs),
        ["/dup/k"]
    );

    // Allowed: two deletes of one key, a read and a write of one key, and one key in each
    // branch.
    let response = txn(
        &store,
        vec![],
        vec![TxnOp::delete("/dup/k"), delete_prefix("/dup/", false)],
        vec![],
    )
    .await?;
    assert_eq!(response.revision, r + 1);
    assert_eq!(delete_result(&response, 0)?.0, 1);
    assert_eq!(
        delete_result(&response, 1)?.0,
        0,
        "already deleted by the first"
    );
    let response = txn(
        &store,
        vec![],
        vec![TxnOp::Get(Range::key("/dup/k")), TxnOp::put("/dup/k", "1")],
        vec![TxnOp::put("/dup/k", "2")],
    )
    .await?;
    assert!(response.succeeded);
    assert_eq!(must_get(&store, "/dup/k").await?.value, b"1");
    Ok(())
}

/// A `Get` inside a transaction reads at the transaction's revision; asking for another is
/// an invalid request (the trait's rule; etcd itself would allow it).
async fn txn_get_with_a_revision_is_invalid(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/tgr/k", "1").await?;
    put(&store, "/tgr/k", "2").await?;
    let err = expect_err(
        store
            .txn(Txn {
                success: vec![
                    TxnOp::Get(Range::key("/tgr/k").at(r)),
                    TxnOp::put("/tgr/x", "1"),
                ],
                ..Txn::default()
            })
            .await,
        "a Get with a revision in a txn",
    )?;
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err:?}");
    assert_eq!(current(&store).await?, r + 1, "nothing written");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------------------

/// A watch from now sees later puts and deletes, in order, and nothing from before.
async fn watch_from_now_sees_changes_in_order(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/w/before", "x").await?;
    let mut stream = store.watch(WatchRequest::prefix("/w/", 0)).await?;
    let r1 = put(&store, "/w/a", "1").await?;
    let r2 = put(&store, "/w/b", "1").await?;
    let r3 = put(&store, "/w/a", "2").await?;
    assert!(delete(&store, "/w/b").await?);
    let r4 = r3 + 1;
    put(&store, "/x/outside", "1").await?;
    let r6 = put(&store, "/w/c", "1").await?;

    let batches = collect_until(&mut stream, r6).await?;
    assert_eq!(revisions(&batches), [r1, r2, r3, r4, r6]);
    let events: Vec<_> = batches
        .iter()
        .map(|batch| {
            assert_eq!(batch.events.len(), 1);
            &batch.events[0]
        })
        .collect();
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[0].kv.key, b"/w/a");
    assert_eq!(events[0].kv.value, b"1");
    assert_eq!(meta(&events[0].kv), (r1, r1, 1));
    assert_eq!(events[0].prev_kv, None, "not asked for");
    assert_eq!(events[1].kv.key, b"/w/b");
    assert_eq!(events[2].kind, EventKind::Put);
    assert_eq!(events[2].kv.value, b"2");
    assert_eq!(meta(&events[2].kv), (r1, r3, 2));
    assert_eq!(events[3].kind, EventKind::Delete);
    assert_eq!(events[3].kv.key, b"/w/b");
    assert_eq!(events[4].kv.key, b"/w/c");
    expect_quiet(&mut stream).await
}

/// A watch from a past revision replays history, then continues live, with no gap and no
/// duplicate at the boundary, while writes happen during the catch-up.
async fn watch_from_the_past_replays_then_continues_live(store: Arc<dyn Store>) -> Result<()> {
    const HISTORY: usize = 2000;
    const LIVE: usize = 500;
    let start = current(&store).await? + 1;
    let history = write_many(store.clone(), "/replay/old/".into(), HISTORY, 8, 16).await?;
    assert_eq!(history.first(), Some(&start));

    let mut stream = store.watch(WatchRequest::prefix("/replay/", start)).await?;
    let writer = tokio::spawn(write_many(
        store.clone(),
        "/replay/new/".into(),
        LIVE,
        2,
        16,
    ));
    let last = start + (HISTORY + LIVE) as Revision - 1;
    let batches = collect_until(&mut stream, last).await?;
    let live = writer.await.context("writer task")??;
    assert_eq!(live.last(), Some(&last));

    let expected: Vec<Revision> = (start..=last).collect();
    assert_eq!(
        revisions(&batches),
        expected,
        "every revision exactly once, in order"
    );
    for batch in &batches {
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].kind, EventKind::Put);
    }
    expect_quiet(&mut stream).await
}

/// A watch from a revision not reached yet waits for it.
async fn watch_from_a_future_revision_waits_for_it(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/fw/a", "0").await?;
    let mut stream = store.watch(WatchRequest::prefix("/fw/", r + 3)).await?;
    for i in 1..=5 {
        put(&store, "/fw/a", &i.to_string()).await?;
    }
    let batches = collect_until(&mut stream, r + 5).await?;
    assert_eq!(revisions(&batches), [r + 3, r + 4, r + 5]);
    assert_eq!(batches[0].events[0].kv.value, b"3");
    expect_quiet(&mut stream).await
}

/// `prev_kv` on a watch attaches the key as it was to every event that had one.
async fn watch_with_prev_kv(store: Arc<dyn Store>) -> Result<()> {
    let r0 = put(&store, "/wp/a", "1").await?;
    let mut stream = store
        .watch(WatchRequest {
            prev_kv: true,
            ..WatchRequest::prefix("/wp/", 0)
        })
        .await?;
    let r1 = put(&store, "/wp/a", "2").await?;
    assert!(delete(&store, "/wp/a").await?);
    let r3 = put(&store, "/wp/b", "1").await?;
    let batches = collect_until(&mut stream, r3).await?;
    assert_eq!(revisions(&batches), [r1, r1 + 1, r3]);

    let update = &batches[0].events[0];
    let prev = update.prev_kv.as_ref().context("prev_kv of an update")?;
    assert_eq!(prev.value, b"1");
    assert_eq!(meta(prev), (r0, r0, 1));
    assert_eq!(update.kv.value, b"2");

    let removal = &batches[1].events[0];
    assert_eq!(removal.kind, EventKind::Delete);
    let prev = removal.prev_kv.as_ref().context("prev_kv of a delete")?;
    assert_eq!(prev.value, b"2");
    assert_eq!(meta(prev), (r0, r1, 2));

    assert_eq!(
        batches[2].events[0].prev_kv, None,
        "a new key has no previous value"
    );
    Ok(())
}

/// A prefix watch sees only its keys, not neighbours that share a string prefix.
async fn watch_prefix_filters_other_keys(store: Arc<dyn Store>) -> Result<()> {
    let mut stream = store.watch(WatchRequest::prefix("/wf/a/", 0)).await?;
    put(&store, "/wf/ab", "x").await?;
    put(&store, "/wf/a", "x").await?;
    let r1 = put(&store, "/wf/a/1", "x").await?;
    put(&store, "/wf/b/1", "x").await?;
    put(&store, "/wf/a0", "x").await?;
    let r2 = put(&store, "/wf/a/", "x").await?;
    let batches = collect_until(&mut stream, r2).await?;
    assert_eq!(revisions(&batches), [r1, r2]);
    assert_eq!(batches[0].events[0].kv.key, b"/wf/a/1");
    assert_eq!(batches[1].events[0].kv.key, b"/wf/a/");
    expect_quiet(&mut stream).await
}

/// A single-key watch sees that key only; an `Until` watch sees its half-open range.
async fn watch_single_key_and_until_range(store: Arc<dyn Store>) -> Result<()> {
    let mut single = store
        .watch(WatchRequest {
            key: "/ws/k".into(),
            ..WatchRequest::default()
        })
        .await?;
    let mut until = store
        .watch(WatchRequest {
            key: "/ws/b".into(),
            end: RangeEnd::Until("/ws/d".into()),
            ..WatchRequest::default()
        })
        .await?;
    let mut revision_of: BTreeMap<&str, Vec<Revision>> = BTreeMap::new();
    for key in [
        "/ws/k2", "/ws/a", "/ws/b", "/ws/k", "/ws/", "/ws/c", "/ws/d", "/ws/k",
    ] {
        let r = put(&store, key, "x").await?;
        revision_of.entry(key).or_default().push(r);
    }
    let k = revision_of.get("/ws/k").cloned().unwrap_or_default();
    let b = revision_of.get("/ws/b").cloned().unwrap_or_default();
    let c = revision_of.get("/ws/c").cloned().unwrap_or_default();
    ensure!(k.len() == 2 && b.len() == 1 && c.len() == 1);

    let single_batches = collect_until(&mut single, k[1]).await?;
    assert_eq!(revisions(&single_batches), k, "only /ws/k");

    let until_batches = collect_until(&mut until, c[0]).await?;
    assert_eq!(
        revisions(&until_batches),
        [b[0], c[0]],
        "only /ws/b and /ws/c"
    );
    assert_eq!(until_batches[0].events[0].kv.key, b"/ws/b");
    assert_eq!(until_batches[1].events[0].kv.key, b"/ws/c");
    expect_quiet(&mut single).await?;
    expect_quiet(&mut until).await
}

/// A transaction's events arrive together in one batch of its revision, in its order.
async fn txn_events_arrive_in_one_batch(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/wt/c", "old").await?;
    let mut stream = store.watch(WatchRequest::prefix("/wt/", 0)).await?;
    let response = txn(
        &store,
        vec![],
        vec![
            TxnOp::put("/wt/b", "1"),
            TxnOp::put("/wt/a", "1"),
            TxnOp::delete("/wt/c"),
            TxnOp::put("/outside", "1"),
        ],
        vec![],
    )
    .await?;
    let batch = next_batch(&mut stream).await?;
    assert_eq!(batch.revision, response.revision);
    let kinds: Vec<(EventKind, String)> = batch
        .events
        .iter()
        .map(|event| (event.kind.clone(), text(&event.kv.key)))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Put, "/wt/b".to_string()),
            (EventKind::Put, "/wt/a".to_string()),
            (EventKind::Delete, "/wt/c".to_string()),
        ]
    );
    expect_quiet(&mut stream).await
}

/// A delete event carries the key with mod_revision = the deleting revision, the rest zero.
async fn delete_event_carries_the_delete_revision(store: Arc<dyn Store>) -> Result<()> {
    let lease = store.lease_grant(60).await?;
    txn(
        &store,
        vec![],
        vec![put_with_lease("/wd/k", "value", lease.id)],
        vec![],
    )
    .await?;
    put(&store, "/wd/k", "value2").await?;
    let mut stream = store.watch(WatchRequest::prefix("/wd/", 0)).await?;
    assert!(delete(&store, "/wd/k").await?);
    let deleted_at = current(&store).await?;
    let batch = next_batch(&mut stream).await?;
    assert_eq!(batch.revision, deleted_at);
    assert_eq!(batch.events.len(), 1);
    let event = &batch.events[0];
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(
        event.kv,
        KeyValue {
            key: b"/wd/k".to_vec(),
            mod_revision: deleted_at,
            ..KeyValue::default()
        }
    );
    Ok(())
}

/// A range delete gives one batch with a DELETE per key, in key order.
async fn range_delete_events_share_one_batch(store: Arc<dyn Store>) -> Result<()> {
    for key in ["/wr/c", "/wr/a", "/wr/b"] {
        put(&store, key, "x").await?;
    }
    let mut stream = store.watch(WatchRequest::prefix("/wr/", 0)).await?;
    let response = txn(&store, vec![], vec![delete_prefix("/wr/", false)], vec![]).await?;
    let batch = next_batch(&mut stream).await?;
    assert_eq!(batch.revision, response.revision);
    assert!(batch
        .events
        .iter()
        .all(|event| event.kind == EventKind::Delete));
    let keys: Vec<String> = batch
        .events
        .iter()
        .map(|event| text(&event.kv.key))
        .collect();
    assert_eq!(keys, ["/wr/a", "/wr/b", "/wr/c"]);
    expect_quiet(&mut stream).await
}

/// Many watchers at once each see every event.
async fn many_concurrent_watchers_see_every_event(store: Arc<dyn Store>) -> Result<()> {
    const WATCHERS: usize = 50;
    const WRITES: usize = 100;
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        streams.push(store.watch(WatchRequest::prefix("/many/", 0)).await?);
    }
    let first = current(&store).await? + 1;
    let written = write_many(store.clone(), "/many/".into(), WRITES, 4, 8).await?;
    let last = first + WRITES as Revision - 1;
    assert_eq!(written.last(), Some(&last));
    let expected: Vec<Revision> = (first..=last).collect();

    let mut readers = JoinSet::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        readers.spawn(async move {
            let batches = collect_until(&mut stream, last)
                .await
                .with_context(|| format!("watcher {index}"))?;
            anyhow::Ok((index, revisions(&batches)))
        });
    }
    let mut done = 0;
    while let Some(joined) = readers.join_next().await {
        let (index, got) = joined.context("reader task")??;
        assert_eq!(got, expected, "watcher {index}");
        done += 1;
    }
    assert_eq!(done, WATCHERS);
    Ok(())
}

/// A watcher that is not read for a while still gets every event afterwards: a backend may
/// hold it back, never drop events.
async fn slow_watcher_gets_every_event(store: Arc<dyn Store>) -> Result<()> {
    const WRITES: usize = 3000;
    let mut stream = store.watch(WatchRequest::prefix("/slow/", 0)).await?;
    let first = current(&store).await? + 1;
    // 512-byte values: 1.5 MB of events, more than any transport buffer holds.
    let written = write_many(store.clone(), "/slow/".into(), WRITES, 8, 512).await?;
    let last = first + WRITES as Revision - 1;
    assert_eq!(written.last(), Some(&last));
    sleep(Duration::from_millis(500)).await;

    let batches = collect_until(&mut stream, last).await?;
    let expected: Vec<Revision> = (first..=last).collect();
    assert_eq!(revisions(&batches), expected, "every event, in order");
    for batch in &batches {
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].kv.value.len(), 512);
    }
    expect_quiet(&mut stream).await
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

/// Concurrent writers get unique, gap-free revisions, and every write is readable.
async fn concurrent_writers_get_unique_gap_free_revisions(store: Arc<dyn Store>) -> Result<()> {
    const TASKS: usize = 8;
    const PUTS: usize = 50;
    let first = current(&store).await? + 1;
    let written = write_many(store.clone(), "/conc/".into(), TASKS * PUTS, TASKS, 8).await?;
    let expected: Vec<Revision> = (first..first + (TASKS * PUTS) as Revision).collect();
    assert_eq!(written, expected, "unique and without gaps");
    let all = range(&store, Range::prefix("/conc/")).await?;
    assert_eq!(all.kvs.len(), TASKS * PUTS);
    assert_eq!(all.revision, first + (TASKS * PUTS) as Revision - 1);
    let mut mod_revisions: Vec<Revision> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
    mod_revisions.sort_unstable();
    assert_eq!(mod_revisions, expected);
    Ok(())
}

/// Compare-and-swap increments from many tasks, retried on conflict, end at the exact total.
async fn concurrent_compare_and_swap_increments_are_exact(store: Arc<dyn Store>) -> Result<()> {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 25;
    const COUNTER: &str = "/cas/counter";
    put(&store, COUNTER, "0").await?;
    let mut set = JoinSet::new();
    for _ in 0..TASKS {
        let store = store.clone();
        set.spawn(async move {
            let mut conflicts = 0_usize;
            let mut seen = must_get(&store, COUNTER).await?;
            for _ in 0..INCREMENTS {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    ensure!(attempts <= 1000, "no increment after 1000 attempts");
                    let n: u64 = text(&seen.value).parse().context("counter value")?;
                    let response = txn(
                        &store,
                        vec![Compare::mod_revision(
                            COUNTER,
                            CompareOp::Equal,
                            seen.mod_revision,
                        )],
                        vec![put_with_prev_kv(COUNTER, &(n + 1).to_string())],
                        vec![TxnOp::Get(Range::key(COUNTER))],
                    )
                    .await?;
                    if response.succeeded {
                        let prev = put_result(&response, 0)?.context("prev_kv")?;
                        ensure!(prev.mod_revision == seen.mod_revision, "lost update");
                        seen = KeyValue {
                            value: (n + 1).to_string().into_bytes(),
                            mod_revision: response.revision,
                            ..seen
                        };
                        break;
                    }
                    conflicts += 1;
                    seen = get_result(&response, 0)?
                        .kvs
                        .first()
                        .cloned()
                        .context("the counter vanished")?;
                }
            }
            anyhow::Ok(conflicts)
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.context("increment task")??;
    }
    let counter = must_get(&store, COUNTER).await?;
    assert_eq!(text(&counter.value), (TASKS * INCREMENTS).to_string());
    assert_eq!(counter.version, 1 + (TASKS * INCREMENTS) as i64);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------------------

/// Reads below the compaction point fail with Compacted; at and above it they work.
async fn range_below_the_compaction_point_fails(store: Arc<dyn Store>) -> Result<()> {
    let r1 = put(&store, "/cp/a", "1").await?;
    let r2 = put(&store, "/cp/a", "2").await?;
    let r3 = put(&store, "/cp/b", "1").await?;
    let r4 = put(&store, "/cp/a", "3").await?;
    store.compact(r3).await?;
    for below in [r1, r2, 1] {
        let err = expect_err(
            store.range(Range::prefix("/cp/").at(below)).await,
            "a read below the compaction point",
        )?;
        assert!(
            matches!(err, StoreError::Compacted { .. }),
            "a read at {below} after compacting at {r3}: {err:?}"
        );
    }
    let at = range(&store, Range::prefix("/cp/").at(r3)).await?;
    assert_eq!(
        at.kvs
            .iter()
            .map(|kv| (text(&kv.key), text(&kv.value)))
            .collect::<Vec<_>>(),
        [
            ("/cp/a".to_string(), "2".to_string()),
            ("/cp/b".to_string(), "1".to_string())
        ]
    );
    assert_eq!(meta(&at.kvs[0]), (r1, r2, 2));
    let latest = range(&store, Range::prefix("/cp/").at(r4)).await?;
    assert_eq!(latest.kvs[0].value, b"3");
    assert_eq!(meta(&latest.kvs[0]), (r1, r4, 3));
    assert_eq!(range(&store, Range::prefix("/cp/")).await?.kvs, latest.kvs);
    Ok(())
}

/// A watch from below the compaction point fails with Compacted; from the point it replays.
async fn watch_below_the_compaction_point_fails(store: Arc<dyn Store>) -> Result<()> {
    let r1 = put(&store, "/cw/a", "1").await?;
    let r2 = put(&store, "/cw/a", "2").await?;
    let r3 = put(&store, "/cw/b", "1").await?;
    store.compact(r2).await?;
    let err = watch_error(&store, WatchRequest::prefix("/cw/", r1)).await?;
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    let err = watch_error(&store, WatchRequest::prefix("/unrelated/", r1)).await?;
    assert!(
        matches!(err, StoreError::Compacted { .. }),
        "even with no key in range: {err:?}"
    );

    let mut stream = store.watch(WatchRequest::prefix("/cw/", r2)).await?;
    let r4 = put(&store, "/cw/a", "3").await?;
    let batches = collect_until(&mut stream, r4).await?;
    assert_eq!(
        revisions(&batches),
        [r2, r3, r4],
        "the compaction point itself is kept"
    );
    assert_eq!(batches[0].events[0].kv.value, b"2");
    expect_quiet(&mut stream).await
}

/// Compacting again at (or below) the compaction point fails with Compacted, beyond the
/// current revision with FutureRevision; the current revision itself can be compacted.
async fn compact_twice_or_in_the_future_fails(store: Arc<dyn Store>) -> Result<()> {
    put(&store, "/cc/a", "1").await?;
    let r2 = put(&store, "/cc/a", "2").await?;
    let r3 = put(&store, "/cc/a", "3").await?;
    store.compact(r2).await?;
    for again in [r2, r2 - 1] {
        let err = expect_err(store.compact(again).await, "a second compaction")?;
        assert!(
            matches!(err, StoreError::Compacted { .. }),
            "compact {again} after {r2}: {err:?}"
        );
    }
    let err = expect_err(store.compact(r3 + 1).await, "a compaction in the future")?;
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err:?}");
    let err = expect_err(store.compact(r3 + 100).await, "a compaction in the future")?;
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err:?}");
    assert_eq!(current(&store).await?, r3, "compaction takes no revision");

    store.compact(r3).await?;
    let kv = must_get(&store, "/cc/a").await?;
    assert_eq!(kv.value, b"3");
    assert_eq!(current(&store).await?, r3);
    let r4 = put(&store, "/cc/a", "4").await?;
    assert_eq!(r4, r3 + 1);
    Ok(())
}

/// After compaction the latest values, metadata and deletions are unchanged, and later
/// writes continue each key's version.
async fn compaction_keeps_latest_values_and_deletions(store: Arc<dyn Store>) -> Result<()> {
    let a_created = put(&store, "/ck/a", "1").await?;
    for i in 2..=5 {
        put(&store, "/ck/a", &i.to_string()).await?;
    }
    put(&store, "/ck/b", "1").await?;
    assert!(delete(&store, "/ck/b").await?);
    put(&store, "/ck/c", "1").await?;
    assert!(delete(&store, "/ck/c").await?);
    let c_created = put(&store, "/ck/c", "2").await?;
    let before = range(&store, Range::prefix("/ck/")).await?;
    let at = current(&store).await?;

    store.compact(at).await?;
    let after = range(&store, Range::prefix("/ck/")).await?;
    assert_eq!(after.kvs, before.kvs);
    assert_eq!(after.count, 2);
    assert_eq!(
        range(&store, Range::prefix("/ck/").at(at)).await?.kvs,
        before.kvs
    );
    assert_eq!(
        get(&store, "/ck/b").await?,
        None,
        "deleted keys stay deleted"
    );
    let a = must_get(&store, "/ck/a").await?;
    assert_eq!(meta(&a), (a_created, a.mod_revision, 5));
    assert_eq!(must_get(&store, "/ck/c").await?.create_revision, c_created);

    let r = put(&store, "/ck/a", "6").await?;
    assert_eq!(meta(&must_get(&store, "/ck/a").await?), (a_created, r, 6));
    let rb = put(&store, "/ck/b", "again").await?;
    assert_eq!(meta(&must_get(&store, "/ck/b").await?), (rb, rb, 1));
    assert!(delete(&store, "/ck/c").await?);
    assert_eq!(get(&store, "/ck/c").await?, None);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------

/// A grant returns a fresh id and the TTL; keep-alive returns the TTL.
async fn lease_grant_returns_an_id_and_the_ttl(store: Arc<dyn Store>) -> Result<()> {
    let before = current(&store).await?;
    let first = store.lease_grant(60).await?;
    let second = store.lease_grant(120).await?;
    assert_ne!(first.id, 0);
    assert_ne!(second.id, 0);
    assert_ne!(first.id, second.id);
    assert_eq!(first.ttl, 60);
    assert_eq!(second.ttl, 120);
    assert_eq!(store.lease_keep_alive(first.id).await?, 60);
    assert_eq!(current(&store).await?, before, "leases take no revision");
    // etcd raises very short TTLs to its minimum (about 2 s with default timing): ask for
    // less, get at least what was asked.
    let short = store.lease_grant(1).await?;
    assert!(short.ttl >= 1, "{short:?}");
    Ok(())
}

/// A put with a lease attaches it; a later put without one detaches it.
async fn put_with_a_lease_attaches_it(store: Arc<dyn Store>) -> Result<()> {
    let lease = store.lease_grant(60).await?;
    let r = current(&store).await?;
    let response = txn(
        &store,
        vec![],
        vec![
            put_with_lease("/pl/a", "1", lease.id),
            put_with_lease("/pl/b", "1", lease.id),
        ],
        vec![],
    )
    .await?;
    assert_eq!(response.revision, r + 1);
    assert_eq!(must_get(&store, "/pl/a").await?.lease, lease.id);
    let listed = range(&store, Range::prefix("/pl/")).await?;
    assert!(listed.kvs.iter().all(|kv| kv.lease == lease.id));

    // A plain put replaces the key, lease included.
    put(&store, "/pl/b", "2").await?;
    assert_eq!(must_get(&store, "/pl/b").await?.lease, 0);
    store.lease_revoke(lease.id).await?;
    assert_eq!(get(&store, "/pl/a").await?, None);
    assert_eq!(
        must_get(&store, "/pl/b").await?.value,
        b"2",
        "no longer attached"
    );
    Ok(())
}

/// Revoking a lease deletes its keys in one revision, with a DELETE event each (key order).
async fn lease_revoke_deletes_attached_keys(store: Arc<dyn Store>) -> Result<()> {
    let lease = store.lease_grant(60).await?;
    for key in ["/lr/c", "/lr/a", "/lr/b"] {
        txn(
            &store,
            vec![],
            vec![put_with_lease(key, "x", lease.id)],
            vec![],
        )
        .await?;
    }
    put(&store, "/lr/plain", "x").await?;
    let mut stream = store.watch(WatchRequest::prefix("/lr/", 0)).await?;
    let r = current(&store).await?;
    store.lease_revoke(lease.id).await?;

    let batch = next_batch(&mut stream).await?;
    assert_eq!(
        batch.revision,
        r + 1,
        "one revision for all of the lease's keys"
    );
    let deleted: Vec<String> = batch
        .events
        .iter()
        .map(|event| text(&event.kv.key))
        .collect();
    assert_eq!(deleted, ["/lr/a", "/lr/b", "/lr/c"]);
    assert!(batch
        .events
        .iter()
        .all(|event| event.kind == EventKind::Delete));
    assert_eq!(
        keys_of(&range(&store, Range::prefix("/lr/")).await?.kvs),
        ["/lr/plain"]
    );
    assert_eq!(current(&store).await?, r + 1);
    expect_quiet(&mut stream).await?;

    // The lease is gone.
    let err = expect_err(
        store.lease_keep_alive(lease.id).await,
        "keep-alive of a revoked lease",
    )?;
    assert!(
        matches!(err, StoreError::LeaseNotFound(id) if id == lease.id),
        "{err:?}"
    );
    let err = expect_err(store.lease_revoke(lease.id).await, "revoking twice")?;
    assert!(
        matches!(err, StoreError::LeaseNotFound(id) if id == lease.id),
        "{err:?}"
    );
    let err = expect_err(
        store
            .txn(Txn {
                success: vec![put_with_lease("/lr/d", "x", lease.id)],
                ..Txn::default()
            })
            .await,
        "a put with a revoked lease",
    )?;
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
    Ok(())
}

/// A lease that is not kept alive expires and its keys are deleted, with DELETE events.
async fn lease_expiry_deletes_attached_keys(store: Arc<dyn Store>) -> Result<()> {
    let lease = store.lease_grant(1).await?;
    txn(
        &store,
        vec![],
        vec![put_with_lease("/le/k", "x", lease.id)],
        vec![],
    )
    .await?;
    put(&store, "/le/plain", "x").await?;
    let mut stream = store.watch(WatchRequest::prefix("/le/", 0)).await?;
    assert!(get(&store, "/le/k").await?.is_some(), "not expired at once");

    wait_until_gone(&store, "/le/k").await?;
    let batch = next_batch(&mut stream).await?;
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].kind, EventKind::Delete);
    assert_eq!(batch.events[0].kv.key, b"/le/k");
    assert!(get(&store, "/le/plain").await?.is_some());

    let err = expect_err(
        store.lease_keep_alive(lease.id).await,
        "keep-alive of an expired lease",
    )?;
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
    Ok(())
}

/// Keep-alives keep a short lease (and its keys) alive; without them it expires.
async fn lease_keep_alive_keeps_keys(store: Arc<dyn Store>) -> Result<()> {
    let lease = store.lease_grant(1).await?;
    txn(
        &store,
        vec![],
        vec![put_with_lease("/lk/k", "x", lease.id)],
        vec![],
    )
    .await?;
    let start = Instant::now();
    let mut renewals = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        sleep(Duration::from_millis(300)).await;
        let ttl = store.lease_keep_alive(lease.id).await?;
        assert_eq!(ttl, lease.ttl, "keep-alive renews to the granted TTL");
        renewals += 1;
        ensure!(renewals < 100, "too many renewals");
    }
    let kv = must_get(&store, "/lk/k")
        .await
        .context("a kept-alive lease expired")?;
    assert_eq!(kv.lease, lease.id);
    wait_until_gone(&store, "/lk/k").await?;
    Ok(())
}

/// Keep-alive of a lease never granted fails with LeaseNotFound.
async fn lease_keep_alive_of_an_unknown_lease_fails(store: Arc<dyn Store>) -> Result<()> {
    let err = expect_err(store.lease_keep_alive(UNKNOWN_LEASE).await, "keep-alive")?;
    assert!(
        matches!(err, StoreError::LeaseNotFound(id) if id == UNKNOWN_LEASE),
        "{err:?}"
    );
    Ok(())
}

/// Revoking a lease never granted fails with LeaseNotFound.
async fn lease_revoke_of_an_unknown_lease_fails(store: Arc<dyn Store>) -> Result<()> {
    let err = expect_err(store.lease_revoke(UNKNOWN_LEASE).await, "revoke")?;
    assert!(
        matches!(err, StoreError::LeaseNotFound(id) if id == UNKNOWN_LEASE),
        "{err:?}"
    );
    Ok(())
}

/// A put with a lease never granted fails with LeaseNotFound and writes nothing (not even the
/// other operations of its transaction).
async fn put_with_an_unknown_lease_fails(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/ul/before", "x").await?;
    let err = expect_err(
        store
            .txn(Txn {
                success: vec![
                    TxnOp::put("/ul/plain", "x"),
                    put_with_lease("/ul/k", "x", UNKNOWN_LEASE),
                ],
                ..Txn::default()
            })
            .await,
        "a put with an unknown lease",
    )?;
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
    assert_eq!(current(&store).await?, r);
    assert_eq!(get(&store, "/ul/k").await?, None);
    assert_eq!(get(&store, "/ul/plain").await?, None);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sizes and bytes
// ---------------------------------------------------------------------------------------

/// Values of 1 MiB and 1.5 MiB round-trip exactly, in reads and in watch events.
async fn large_values_round_trip(store: Arc<dyn Store>) -> Result<()> {
    let mut stream = store.watch(WatchRequest::prefix("/big/", 0)).await?;
    let one = random_bytes(1024 * 1024);
    let one_and_a_half = random_bytes(1024 * 1024 * 3 / 2);
    let r1 = store.put(b"/big/1", &one).await?;
    let r2 = store.put(b"/big/1.5", &one_and_a_half).await?;
    assert_eq!(must_get(&store, "/big/1").await?.value, one);
    assert_eq!(must_get(&store, "/big/1.5").await?.value, one_and_a_half);
    let both = range(&store, Range::prefix("/big/")).await?;
    assert_eq!(both.kvs.len(), 2);
    let batches = collect_until(&mut stream, r2).await?;
    assert_eq!(revisions(&batches), [r1, r2]);
    assert!(
        batches[0].events[0].kv.value == one,
        "the 1 MiB event's value differs"
    );
    assert!(
        batches[1].events[0].kv.value == one_and_a_half,
        "the 1.5 MiB event's value differs"
    );
    Ok(())
}

/// A request over MAX_REQUEST_BYTES fails with TooLarge and writes nothing.
async fn request_over_the_limit_is_too_large(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/tl/before", "x").await?;
    let err = expect_err(
        store
            .put(b"/tl/huge", &vec![b'x'; MAX_REQUEST_BYTES + 1])
            .await,
        "a put over the limit",
    )?;
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");

    let half = vec![b'y'; MAX_REQUEST_BYTES / 2 + 1024];
    let err = expect_err(
        store
            .txn(Txn {
                success: vec![TxnOp::put("/tl/a", half.clone()), TxnOp::put("/tl/b", half)],
                ..Txn::default()
            })
            .await,
        "a txn over the limit",
    )?;
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
    assert_eq!(current(&store).await?, r, "nothing written");
    assert!(range(&store, Range::prefix("/tl/")).await?.kvs.len() == 1);
    Ok(())
}

/// Keys and values with 0x00 and 0xff bytes round-trip and sort as bytes.
async fn binary_keys_and_values_round_trip(store: Arc<dyn Store>) -> Result<()> {
    let every_byte: Vec<u8> = (0..=255).collect();
    let keys: [&[u8]; 6] = [
        b"\x00",
        b"k\x00",
        b"k\x00\x00",
        b"k\xff",
        b"k\xff\x00",
        b"k\xff\xff",
    ];
    for key in keys {
        let mut value = key.to_vec();
        value.extend_from_slice(&every_byte);
        store.put(key, &value).await?;
    }
    store.put(b"l", b"neighbour").await?;
    store.put(b"\xff", b"last").await?;
    for key in keys {
        let kv = store.get(key).await?.with_context(|| format!("{key:?}"))?;
        assert_eq!(kv.key, key);
        assert_eq!(&kv.value[..key.len()], key);
        assert_eq!(&kv.value[key.len()..], &every_byte[..]);
    }
    let listed = range(&store, Range::prefix(b"k".to_vec())).await?;
    let listed: Vec<Vec<u8>> = listed.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(
        listed,
        keys[1..].iter().map(|key| key.to_vec()).collect::<Vec<_>>()
    );
    // The prefix "k\xff" ends at "l": it covers "k\xff..." and not "l".
    let listed = range(&store, Range::prefix(b"k\xff".to_vec())).await?;
    let listed: Vec<Vec<u8>> = listed.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(
        listed,
        [
            b"k\xff".to_vec(),
            b"k\xff\x00".to_vec(),
            b"k\xff\xff".to_vec()
        ]
    );
    // The prefix "\xff" has no end: it covers everything from "\xff" on.
    let listed = range(&store, Range::prefix(b"\xff".to_vec())).await?;
    assert_eq!(keys_of(&listed.kvs).len(), 1);
    assert_eq!(listed.kvs[0].key, b"\xff");
    assert!(store.delete(b"\x00").await?);
    assert_eq!(store.get(b"\x00").await?, None);
    Ok(())
}

/// An empty value is a value: the key exists, with all its metadata.
async fn empty_value_is_allowed(store: Arc<dyn Store>) -> Result<()> {
    let r = put(&store, "/ev/k", "").await?;
    let kv = must_get(&store, "/ev/k").await?;
    assert!(kv.value.is_empty());
    assert_eq!(meta(&kv), (r, r, 1));
    assert!(holds(&store, Compare::value("/ev/k", CompareOp::Equal, "")).await?);
    assert!(holds(&store, Compare::version("/ev/k", CompareOp::Equal, 1)).await?);
    assert_eq!(range(&store, Range::prefix("/ev/")).await?.count, 1);
    let r2 = put(&store, "/ev/k", "").await?;
    assert_eq!(meta(&must_get(&store, "/ev/k").await?), (r, r2, 2));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// One test per case and backend
// ---------------------------------------------------------------------------------------

/// Instantiates every case as a test; `$open` is an async fn returning a fixture with a
/// `store` field (the fixture lives as long as the test: it owns the data directory or the
/// etcd process).
macro_rules! conformance_suite {
    ($open:ident) => {
        conformance_suite!(@cases $open;
            fresh_store_starts_at_revision_one,
            each_write_txn_takes_the_next_revision,
            txns_that_change_nothing_take_no_revision,
            key_metadata_follows_generations,
            get_of_a_missing_key_is_none,
            range_at_old_revisions_sees_history,
            range_at_a_future_revision_fails,
            prefix_range_has_no_neighbour_leakage,
            until_range_is_half_open,
            range_limit_reports_more_and_the_full_count,
            paginated_list_at_a_fixed_revision_is_a_snapshot,
            count_only_returns_just_the_count,
            keys_only_returns_keys_without_values,
            empty_prefix_covers_every_key,
            compare_mod_revision,
            compare_create_revision,
            compare_version,
            compare_value,
            compare_on_a_missing_key,
            compare_after_delete_sees_the_key_missing,
            every_compare_must_hold,
            failure_branch_runs_when_a_compare_fails,
            optimistic_create_update_and_delete,
            txn_get_reads_at_the_txn_revision,
            put_returns_prev_kv_when_asked,
            delete_range_counts_and_returns_prev_kvs,
            txn_writing_a_key_twice_is_invalid,
            txn_get_with_a_revision_is_invalid,
            watch_from_now_sees_changes_in_order,
            watch_from_the_past_replays_then_continues_live,
            watch_from_a_future_revision_waits_for_it,
            watch_with_prev_kv,
            watch_prefix_filters_other_keys,
            watch_single_key_and_until_range,
            txn_events_arrive_in_one_batch,
            delete_event_carries_the_delete_revision,
            range_delete_events_share_one_batch,
            many_concurrent_watchers_see_every_event,
            slow_watcher_gets_every_event,
            concurrent_writers_get_unique_gap_free_revisions,
            concurrent_compare_and_swap_increments_are_exact,
            range_below_the_compaction_point_fails,
            watch_below_the_compaction_point_fails,
            compact_twice_or_in_the_future_fails,
            compaction_keeps_latest_values_and_deletions,
            lease_grant_returns_an_id_and_the_ttl,
            put_with_a_lease_attaches_it,
            lease_revoke_deletes_attached_keys,
            lease_expiry_deletes_attached_keys,
            lease_keep_alive_keeps_keys,
            lease_keep_alive_of_an_unknown_lease_fails,
            lease_revoke_of_an_unknown_lease_fails,
            put_with_an_unknown_lease_fails,
            large_values_round_trip,
            request_over_the_limit_is_too_large,
            binary_keys_and_values_round_trip,
            empty_value_is_allowed,
        );
    };
    (@cases $open:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                let fixture = $open().await?;
                let case = super::$case(fixture.store.clone());
                tokio::time::timeout(super::CASE_TIMEOUT, case)
                    .await
                    .map_err(|_| anyhow::anyhow!(
                        "{} did not finish within {:?}",
                        stringify!($case),
                        super::CASE_TIMEOUT
                    ))??;
                drop(fixture);
                Ok(())
            }
        )*
    };
}

/// The embedded store, on a fresh temporary directory per test.
mod embedded {
    use std::sync::Arc;

    use corten_control_plane::store::{
        embedded::{EmbeddedOptions, EmbeddedStore},
        Store,
    };

    struct Fixture {
        /// Declared first: dropped before the directory it lives in.
        store: Arc<dyn Store>,
        _dir: tempfile::TempDir,
    }

    async fn open() -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?;
        Ok(Fixture { store, _dir: dir })
    }

    conformance_suite!(open);
}

#[cfg(feature = "etcd-tests")]
mod support;

/// The reference: a real etcd per test.
#[cfg(feature = "etcd-tests")]
mod etcd {
    use std::sync::Arc;

    use corten_control_plane::store::{etcd::EtcdStore, Store};

    use super::support::etcd::EtcdServer;

    struct Fixture {
        /// Declared first: the client goes before the server.
        store: Arc<dyn Store>,
        _server: EtcdServer,
    }

    async fn open() -> anyhow::Result<Fixture> {
        let server = EtcdServer::start().await;
        let store = EtcdStore::connect(&[server.endpoint()]).await?;
        let store: Arc<dyn Store> = Arc::new(store);
        Ok(Fixture {
            store,
            _server: server,
        })
    }

    conformance_suite!(open);
}

/// What only the embedded store can show: it keeps everything in its directory.
mod embedded_only {
    use std::{path::Path, sync::Arc, time::Duration};

    use anyhow::{Context as _, Result};
    use corten_control_plane::store::{
        embedded::{EmbeddedOptions, EmbeddedStore},
        Range, Store, Txn, TxnOp, WatchRequest,
    };
    use tokio::time::{sleep, Instant};

    use super::{collect_until, current, expect_quiet, put, range, revisions};

    /// Opens `path`, retrying for a few seconds while the previous store winds down.
    async fn reopen(path: &Path) -> Result<Arc<dyn Store>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match EmbeddedStore::open(path, EmbeddedOptions::default()) {
                Ok(store) => return Ok(store),
                Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)).await,
                Err(err) => {
                    return Err(err).context(
                        "reopening the directory of a dropped store (it must let go of it)",
                    )
                }
            }
        }
    }

    /// Keys, revisions and history survive a reopen; the next write continues the numbering
    /// and a watch resumes across the restart without a gap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_keys_revisions_and_history() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let case = async {
            let store: Arc<dyn Store> =
                EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?;
            let mut stream = store.watch(WatchRequest::prefix("/re/", 0)).await?;
            let r_a1 = put(&store, "/re/a", "1").await?;
            put(&store, "/re/b", "1").await?;
            put(&store, "/re/a", "2").await?;
            store.delete(b"/re/b").await?;
            let last = store
                .txn(Txn {
                    success: vec![TxnOp::put("/re/c", "1"), TxnOp::put("/re/d", "1")],
                    ..Txn::default()
                })
                .await?
                .revision;
            let seen = collect_until(&mut stream, last).await?;
            let last_seen = seen
                .last()
                .map(|batch| batch.revision)
                .context("no events")?;
            assert_eq!(last_seen, last);
            let listed = range(&store, Range::prefix("/re/")).await?;
            let old = range(&store, Range::prefix("/re/").at(r_a1)).await?;
            drop(stream);
            drop(store);

            let store = reopen(dir.path()).await?;
            assert_eq!(current(&store).await?, last, "the revision survives");
            assert_eq!(range(&store, Range::prefix("/re/")).await?.kvs, listed.kvs);
            assert_eq!(
                range(&store, Range::prefix("/re/").at(r_a1)).await?.kvs,
                old.kvs
            );

            let next = put(&store, "/re/e", "1").await?;
            assert_eq!(next, last + 1, "numbering continues");
            let mut resumed = store.watch(WatchRequest::prefix("/re/", last_seen)).await?;
            let live = put(&store, "/re/a", "3").await?;
            let batches = collect_until(&mut resumed, live).await?;
            assert_eq!(revisions(&batches), [last, next, live]);
            assert_eq!(
                batches[0].events.len(),
                2,
                "the last txn before the restart"
            );
            expect_quiet(&mut resumed).await?;
            let a = store.get(b"/re/a").await?.context("/re/a")?;
            assert_eq!(
                (a.create_revision, a.mod_revision, a.version),
                (r_a1, live, 3)
            );
            anyhow::Ok(())
        };
        tokio::time::timeout(super::CASE_TIMEOUT, case)
            .await
            .context("the reopen case timed out")??;
        Ok(())
    }
}
