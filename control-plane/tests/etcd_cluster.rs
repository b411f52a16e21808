//! The etcd backend's transport, which the conformance suite (one store, all healthy) cannot
//! show:
//! - the loss of a member: a three-member etcd cluster, one [`EtcdStore`] on all three
//!   endpoints, watches opened before the writes, a writer doing sequential creates; after a
//!   third of them member 0 is SIGKILLed. The writes and reads must go on, and every watch
//!   must deliver every acknowledged write exactly once, in revision order, with no gap; a
//!   final read at the last revision must see every key. Several watches are opened because
//!   the client balances each over the members at random: with [`WATCHES`] of them, some
//!   almost surely sit on member 0 and must resume elsewhere;
//! - watches nobody reads: they share the HTTP/2 connection with every other call to their
//!   member, and must not stall it.
//!
//! Needs Debian's etcd (`cargo xtask deps`); runs with `--features etcd-tests`. Everything is
//! bounded in time. It tests only through the [`Store`] trait and the fixtures.
#![cfg(feature = "etcd-tests")]

mod support;

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use corten_control_plane::store::{
    etcd::EtcdStore, Compare, CompareOp, EventKind, Range, Revision, Store, StoreError, Txn, TxnOp,
    TxnOpResult, WatchBatch, WatchRequest, WatchStream,
};
use futures::StreamExt as _;
use support::etcd::{EtcdCluster, EtcdServer};
use tokio::time::{sleep, timeout, timeout_at, Instant};

/// Every key of the test starts with it.
const PREFIX: &str = "/registry/cluster-test/";
/// How many keys the writer creates.
const PUTS: usize = 300;
/// After how many acknowledged creates member 0 is killed.
const KILL_AFTER: usize = 100;
/// How many watches follow the writes.
const WATCHES: usize = 12;
/// How long the writer may take for all its creates.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// How long the watches may take to deliver everything (a watch may spend up to 30 s
/// resuming after the writes are done).
const COLLECT_DEADLINE: Duration = Duration::from_secs(100);
/// How long a watch must stay quiet after the last write to show it repeats nothing.
const QUIET: Duration = Duration::from_millis(500);
/// How many times the writer may see `Unavailable` (a write whose fate the store could not
/// know) in the whole run; the store retries everything else itself.
const MAX_AMBIGUOUS_WRITES: usize = 10;
/// The whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// How many watches nobody reads (each may hold a stream window of data, 4 MiB).
const UNREAD_WATCHES: usize = 8;
/// How many large writes go past the unread watches.
const LARGE_WRITES: usize = 8;
/// The largest value the apiserver stores (1.5 MiB, like etcd's default request limit).
const LARGE_VALUE_BYTES: usize = 1536 * 1024;
/// Longest one call may take next to the unread watches.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

fn key(i: usize) -> String {
    format!("{PREFIX}{i:04}")
}

fn value(i: usize) -> String {
    format!("value of key {i}")
}

/// Creates `key` once, even when an attempt's answer is lost: each attempt creates only if
/// the key does not exist yet, and reads it otherwise. Returns the revision that created it
/// and how many attempts ended in `Unavailable`.
async fn create_once(store: &EtcdStore, key: &str, value: &str) -> Result<(Revision, usize)> {
    let txn = Txn {
        compare: vec![Compare::mod_revision(key, CompareOp::Equal, 0)],
        success: vec![TxnOp::put(key, value)],
        failure: vec![TxnOp::Get(Range::key(key))],
    };
    let mut ambiguous = 0;
    loop {
        match store.txn(txn.clone()).await {
            Ok(response) if response.succeeded => return Ok((response.revision, ambiguous)),
            Ok(response) => {
                // Only an earlier attempt of ours can have created it.
                ensure!(
                    ambiguous > 0,
                    "{key} existed before the writer created it: {response:?}"
                );
                let Some(TxnOpResult::Get(read)) = response.results.first() else {
                    bail!("the failure branch of the create of {key} did not read: {response:?}");
                };
                let Some(kv) = read.kvs.first() else {
                    bail!("{key} exists and cannot be read: {response:?}");
                };
                ensure!(kv.value == value.as_bytes(), "{key} holds another value");
                return Ok((kv.mod_revision, ambiguous));
            }
            Err(StoreError::Unavailable(message)) if ambiguous < MAX_AMBIGUOUS_WRITES => {
                eprintln!("create of {key} may or may not have applied: {message}; retrying");
                ambiguous += 1;
                sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("create {key}")),
        }
    }
}

/// Reads the watch until it delivered `PUTS` batches, then checks that it stays quiet.
async fn collect(mut watch: WatchStream, deadline: Instant) -> Result<Vec<WatchBatch>> {
    let mut batches = Vec::with_capacity(PUTS);
    while batches.len() < PUTS {
        match timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(batch))) => batches.push(batch),
            Ok(Some(Err(error))) => {
                return Err(error)
                    .with_context(|| format!("the watch failed after {} batches", batches.len()))
            }
            Ok(None) => bail!("the watch ended after {} batches", batches.len()),
            Err(_) => bail!(
                "the watch delivered only {} batches within {COLLECT_DEADLINE:?}",
                batches.len()
            ),
        }
    }
    match timeout(QUIET, watch.next()).await {
        Err(_) => Ok(batches),
        Ok(extra) => bail!("the watch delivered more than the {PUTS} writes: {extra:?}"),
    }
}

/// Checks one watch's batches against the acknowledged creates, in order.
fn check_watch(index: usize, batches: &[WatchBatch], acknowledged: &[Revision]) -> Result<()> {
    let delivered: Vec<Revision> = batches.iter().map(|batch| batch.revision).collect();
    for pair in delivered.windows(2) {
        ensure!(
            pair[1] == pair[0] + 1,
            "watch {index}: revision {} follows {} (a gap or a repeat)",
            pair[1],
            pair[0]
        );
    }
    ensure!(
        delivered == acknowledged,
        "watch {index} delivered revisions {:?}..{:?}, the writer was acknowledged {:?}..{:?}",
        delivered.first(),
        delivered.last(),
        acknowledged.first(),
        acknowledged.last()
    );
    for (i, batch) in batches.iter().enumerate() {
        let [event] = batch.events.as_slice() else {
            bail!(
                "watch {index}: revision {} has {} events",
                batch.revision,
                batch.events.len()
            );
        };
        ensure!(
            event.kind == EventKind::Put
                && event.kv.key == key(i).as_bytes()
                && event.kv.value == value(i).as_bytes()
                && event.kv.mod_revision == batch.revision
                && event.kv.create_revision == batch.revision
                && event.kv.version == 1,
            "watch {index}: revision {} is not the create of {}: {event:?}",
            batch.revision,
            key(i)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_reads_and_watches_survive_a_killed_member() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("corten_control_plane=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    timeout(TEST_TIMEOUT, run())
        .await
        .context("the test ran out of time")?
}

async fn run() -> Result<()> {
    let mut cluster = EtcdCluster::start().await;
    let store = Arc::new(EtcdStore::connect(&cluster.endpoints()).await?);

    let collect_deadline = Instant::now() + COLLECT_DEADLINE;
    let mut collectors = Vec::new();
    for _ in 0..WATCHES {
        let watch = store.watch(WatchRequest::prefix(PREFIX, 0)).await?;
        collectors.push(tokio::spawn(collect(watch, collect_deadline)));
    }

    let write_deadline = Instant::now() + WRITE_DEADLINE;
    let mut acknowledged = Vec::with_capacity(PUTS);
    let mut ambiguous = 0;
    for i in 0..PUTS {
        ensure!(
            Instant::now() < write_deadline,
            "only {i} creates within {WRITE_DEADLINE:?}"
        );
        let (revision, unsure) = create_once(&store, &key(i), &value(i)).await?;
        acknowledged.push(revision);
        ambiguous += unsure;
        ensure!(
            ambiguous <= MAX_AMBIGUOUS_WRITES,
            "the store left {ambiguous} writes to the caller; it should retry what never arrived"
        );
        if i + 1 == KILL_AFTER {
            eprintln!("killing member 0 after {KILL_AFTER} creates (revision {revision})");
            cluster.kill_member(0);
        }
        if (i + 1) % 10 == 0 {
            let read = store
                .range(Range::prefix(PREFIX).count_only())
                .await
                .with_context(|| format!("count after {} creates", i + 1))?;
            ensure!(
                usize::try_from(read.count) == Ok(i + 1),
                "after {} creates a read counts {}",
                i + 1,
                read.count
            );
        }
    }
    eprintln!("{PUTS} creates done; {ambiguous} answers were lost and recovered by the writer");

    for pair in acknowledged.windows(2) {
        ensure!(
            pair[1] == pair[0] + 1,
            "acknowledged revision {} follows {}: someone else wrote",
            pair[1],
            pair[0]
        );
    }

    for (index, collector) in collectors.into_iter().enumerate() {
        let batches = collector
            .await
            .context("a watch collector panicked")?
            .with_context(|| format!("watch {index}"))?;
        check_watch(index, &batches, &acknowledged)?;
    }

    let Some(&last) = acknowledged.last() else {
        bail!("no create was acknowledged");
    };
    let read = store.range(Range::prefix(PREFIX).at(last)).await?;
    ensure!(
        read.kvs.len() == PUTS && usize::try_from(read.count) == Ok(PUTS) && !read.more,
        "a read at revision {last} sees {} keys (count {})",
        read.kvs.len(),
        read.count
    );
    for (i, kv) in read.kvs.iter().enumerate() {
        ensure!(
            kv.key == key(i).as_bytes()
                && kv.value == value(i).as_bytes()
                && kv.mod_revision == acknowledged[i],
            "a read at revision {last} sees {:?} at position {i}",
            String::from_utf8_lossy(&kv.key)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_watches_do_not_stall_other_calls() -> Result<()> {
    timeout(TEST_TIMEOUT, unread_watches())
        .await
        .context("the test ran out of time")?
}

async fn unread_watches() -> Result<()> {
    let server = EtcdServer::start().await;
    let store = server.store().await;
    let mut unread = Vec::new();
    for _ in 0..UNREAD_WATCHES {
        unread.push(store.watch(WatchRequest::prefix(PREFIX, 0)).await?);
    }
    let large = vec![b'x'; LARGE_VALUE_BYTES];
    for i in 0..LARGE_WRITES {
        timeout(CALL_DEADLINE, store.put(key(i).as_bytes(), &large))
            .await
            .with_context(|| {
                format!("large write {i} hung: the unread watches stalled the connection")
            })?
            .with_context(|| format!("large write {i}"))?;
    }
    let read = timeout(
        CALL_DEADLINE,
        store.range(Range::prefix(PREFIX).count_only()),
    )
    .await
    .context("a read hung next to the unread watches")??;
    ensure!(usize::try_from(read.count) == Ok(LARGE_WRITES));
    // Read late, the watches still deliver everything.
    for (index, mut watch) in unread.into_iter().enumerate() {
        for i in 0..LARGE_WRITES {
            let batch = timeout(CALL_DEADLINE, watch.next())
                .await
                .with_context(|| format!("watch {index} delivered only {i} writes"))?
                .with_context(|| format!("watch {index} ended"))??;
            ensure!(
                batch.events.len() == 1
                    && batch.events[0].kv.key == key(i).as_bytes()
                    && batch.events[0].kv.value.len() == LARGE_VALUE_BYTES,
                "watch {index}: revision {} is not large write {i}",
                batch.revision
            );
        }
    }
    Ok(())
}
