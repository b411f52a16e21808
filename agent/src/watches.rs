//! Watch streams that wake a control loop: every change a stream yields notifies the loop,
//! errors are logged (the watcher backs off and relists by itself), and the task ends when
//! the stream does, so a caller holding its handle notices a dead watch.
//!
//! Owns nothing but that wiring; the loops decide what a change means.
use std::{fmt::Display, sync::Arc};

use futures::{Stream, TryStreamExt};
use tokio::sync::Notify;
use tracing::warn;

/// Drives `stream` until it ends and wakes `changed` on each item; `kind` names the watch in
/// logs.
pub async fn notify_on_change<T, E, S>(kind: &'static str, stream: S, changed: Arc<Notify>)
where
    E: Display,
    S: Stream<Item = Result<T, E>>,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(_)) => changed.notify_one(),
            Ok(None) => return,
            Err(error) => warn!(kind, %error, "watch error"),
        }
    }
}
