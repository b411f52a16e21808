//! Watches on the embedded store: each watch is a task that first replays history from
//! disk, then follows the live event channel the writer publishes to; when it falls behind
//! the channel (a slow consumer), it goes back to disk instead of being dropped.
//!
//! The task tracks the next revision it owes its consumer; revisions are contiguous, so an
//! event older than that is a duplicate (skipped) and a newer one means a gap (filled from
//! disk). Owns no state of the store; it only reads.
use std::sync::Arc;

use redb::ReadableDatabase;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{codec::Record, Committed, Shared, REVISIONS};
use crate::store::{Event, Revision, StoreError, WatchBatch, WatchRequest, WatchStream};

/// Batches a watch buffers for its consumer before it waits.
const BUFFER: usize = 64;
/// Revisions read from disk per step of a catch-up.
const CATCH_UP_CHUNK: i64 = 1024;

/// Starts a watch; `live` was subscribed before this call read the current revision.
pub(crate) fn start(
    shared: Arc<Shared>,
    live: broadcast::Receiver<Arc<Committed>>,
    request: WatchRequest,
) -> Result<WatchStream, StoreError> {
    let (current, compacted) = {
        let state = shared.read_state();
        (state.current, state.compacted)
    };
    let next = if request.start_revision <= 0 {
        current + 1
    } else {
        request.start_revision
    };
    if next < compacted {
        return Err(StoreError::Compacted {
            requested: next,
            compacted,
        });
    }
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(follow(shared, live, request, next, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

type Sink = mpsc::Sender<Result<WatchBatch, StoreError>>;

/// Why a watch task stops.
enum Stop {
    /// The consumer dropped the stream.
    Gone,
    /// An error was sent; the stream ends.
    Failed,
}

async fn follow(
    shared: Arc<Shared>,
    mut live: broadcast::Receiver<Arc<Committed>>,
    request: WatchRequest,
    mut next: Revision,
    tx: Sink,
) {
    loop {
        let upto = shared.read_state().current;
        if next <= upto {
            match catch_up(&shared, &request, next, upto, &tx).await {
                Ok(()) => next = upto + 1,
                Err(Stop::Gone | Stop::Failed) => return,
            }
        }
        loop {
            match live.recv().await {
                Ok(committed) => {
                    if committed.revision < next {
                        continue;
                    }
                    if committed.revision > next {
                        // Something was missed: fill the gap from disk.
                        break;
                    }
                    if deliver(&request, committed.revision, &committed.events, &tx)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    next += 1;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    live = live.resubscribe();
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx
                        .send(Err(StoreError::Unavailable(
                            "the store is closed".to_owned(),
                        )))
                        .await;
                    return;
                }
            }
        }
    }
}

/// Sends the revisions `from..=upto` from disk.
async fn catch_up(
    shared: &Arc<Shared>,
    request: &WatchRequest,
    from: Revision,
    upto: Revision,
    tx: &Sink,
) -> Result<(), Stop> {
    let mut next = from;
    while next <= upto {
        let last = (next + CATCH_UP_CHUNK - 1).min(upto);
        let reader = Arc::clone(shared);
        let read = tokio::task::spawn_blocking(move || read_history(&reader, next, last)).await;
        let batches = match read {
            Ok(Ok(batches)) => batches,
            Ok(Err(err)) => {
                let _ = tx.send(Err(err)).await;
                return Err(Stop::Failed);
            }
            Err(_) => {
                let _ = tx
                    .send(Err(StoreError::Unavailable(
                        "the store is closed".to_owned(),
                    )))
                    .await;
                return Err(Stop::Failed);
            }
        };
        for (revision, events) in batches {
            deliver(request, revision, &events, tx).await?;
        }
        next = last + 1;
    }
    Ok(())
}

/// The events of revisions `from..=upto`, grouped by revision, with previous values.
fn read_history(
    shared: &Shared,
    from: Revision,
    upto: Revision,
) -> Result<Vec<(Revision, Vec<Event>)>, StoreError> {
    let io = |e: &dyn std::fmt::Display| StoreError::Io(e.to_string());
    let state = shared.read_state();
    if from < state.compacted {
        return Err(StoreError::Compacted {
            requested: from,
            compacted: state.compacted,
        });
    }
    let rtxn = shared.db.begin_read().map_err(|e| io(&e))?;
    let table = rtxn.open_table(REVISIONS).map_err(|e| io(&e))?;
    let lower = (u64::try_from(from).unwrap_or(0), 0u32);
    let upper = (u64::try_from(upto).unwrap_or(0), u32::MAX);
    let mut out: Vec<(Revision, Vec<Event>)> = Vec::new();
    for item in table.range(lower..=upper).map_err(|e| io(&e))? {
        let (key, value) = item.map_err(|e| io(&e))?;
        let (main, sub) = key.value();
        let main = i64::try_from(main).unwrap_or(i64::MAX);
        let record = Record::decode(value.value())
            .ok_or_else(|| StoreError::Io(format!("record ({main}, {sub}) is corrupt")))?;
        let prev_kv = match state.index.previous(&record.key, main, sub) {
            Some(prev) => super::writer::read_kv(&table, prev)?,
            None => None,
        };
        let event = record.event(main, prev_kv);
        match out.last_mut() {
            Some((revision, events)) if *revision == main => events.push(event),
            _ => out.push((main, vec![event])),
        }
    }
    Ok(out)
}

/// Sends the events of one revision that the watch covers (nothing if none).
async fn deliver(
    request: &WatchRequest,
    revision: Revision,
    events: &[Event],
    tx: &Sink,
) -> Result<(), Stop> {
    let matching: Vec<Event> = events
        .iter()
        .filter(|e| request.end.contains(&request.key, &e.kv.key))
        .map(|e| {
            let mut e = e.clone();
            if !request.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect();
    if matching.is_empty() {
        return Ok(());
    }
    tx.send(Ok(WatchBatch {
        revision,
        events: matching,
    }))
    .await
    .map_err(|_| Stop::Gone)
}
