//! The distributed backend: [`EtcdStore`] implements [`Store`] on a real etcd v3 cluster
//! through `etcd-client`.
//!
//! It owns three things: the translation between the store's types and etcd's wire types,
//! the mapping of etcd's errors onto [`StoreError`] (`map_error`), and fail-over when a
//! member dies. `etcd-client` load-balances every call over all endpoints (tonic's p2c
//! balancer, with a constant load, so a random pick) and never takes a dead endpoint out:
//! while a member is down, a share of calls land on it and fail with a connect error. So
//! - unary calls are retried on a fresh pick for a bounded time ([`RETRY_BUDGET`]) when the
//!   request surely never reached a server (connect refused, `no leader`, proposal dropped);
//!   reads are also retried after errors that leave it open whether the server saw them;
//! - a watch that breaks is re-subscribed from the revision after the last one it delivered,
//!   for at most [`WATCH_RECONNECT_BUDGET`], so it goes on with no gap and no duplicate.
//!
//! All calls to one member share one HTTP/2 connection; its receive window is widened
//! (`WideWindows`) so that watches whose readers fall behind cannot stall everything else.
//!
//! It must not interpret keys or values (that is the apiserver's business), must never retry
//! a write that may have been applied (it would apply twice; such failures surface as
//! [`StoreError::Unavailable`] and the caller decides, typically with a compare), and must
//! not reshape what etcd answers: the embedded backend copies etcd, not the other way round.

use std::{collections::VecDeque, fmt, future::Future, time::Duration};

use async_trait::async_trait;
use etcd_client as etcd;
use futures::stream;
use tokio::time::{sleep, timeout, Instant};
use tonic::{
    codegen::http::Uri,
    transport::{channel::Change, Endpoint},
    Code,
};

use super::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, Lease, LeaseId, Range, RangeEnd,
    RangeResponse, Revision, Store, StoreError, Txn, TxnOp, TxnOpResult, TxnResponse, WatchBatch,
    WatchRequest, WatchStream, MAX_REQUEST_BYTES,
};

/// How long one attempt of a unary call may take. etcd gives up on a proposal by itself after
/// about 7 s with default timing (5 s + two election timeouts), and HTTP/2 pings find a dead
/// connection within 15 s, so this is a last resort; it leaves time to download a large list.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a unary call keeps retrying on other members before it reports `Unavailable`.
pub const RETRY_BUDGET: Duration = Duration::from_secs(10);
/// How long a broken watch keeps trying to re-subscribe before it ends with `Unavailable`.
pub const WATCH_RECONNECT_BUDGET: Duration = Duration::from_secs(30);
/// How long opening one watch stream may take (until etcd confirms it is created).
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the second retry (the first goes out at once); it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long connecting to one member may take (a black-holed member otherwise hangs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on busy connections find a member that vanished without a FIN; etcd's
/// default `--grpc-keepalive-min-time` is 5 s, so pinging every 10 s is allowed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may stay unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (tonic's default of 4 MiB is too small for a full list of a
/// resource, or for a watch response carrying several 1.5 MiB objects).
const MAX_RESPONSE_BYTES: usize = 1 << 31;
/// HTTP/2 receive window of one stream: how much of a response (or of a watch nobody reads)
/// may wait in the client's buffers.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// HTTP/2 receive window of a whole connection: the largest HTTP/2 allows. With hyper's
/// default (5 MiB), three watches whose readers fall behind fill it, and then every call to
/// that member hangs; with this one it would take hundreds.
const CONNECTION_WINDOW_BYTES: u32 = (1 << 31) - 1;

/// A [`Store`] on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    endpoints: Vec<String>,
    kv: etcd::KvClient,
    watch: etcd::WatchClient,
    lease: etcd::LeaseClient,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Splits `--datastore-endpoint`'s value (`http://h:p[,h:p...]`) into endpoint URLs, adding
/// `http://` where the scheme is missing.
pub fn parse_endpoints(flag: &str) -> Result<Vec<String>, StoreError> {
    let mut endpoints = Vec::new();
    for part in flag
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let address = match part.split_once("://") {
            None => part,
            Some(("http", address)) => address,
            Some(("https", _)) => {
                return Err(StoreError::InvalidRequest(format!(
                    "datastore endpoint {part}: https is not supported yet; use http:// on a \
                     trusted network"
                )))
            }
            Some((scheme, _)) => {
                return Err(StoreError::InvalidRequest(format!(
                    "datastore endpoint {part}: unknown scheme {scheme:?}; use http://host:port"
                )))
            }
        };
        if address.is_empty() || address.contains(char::is_whitespace) || address.contains('/') {
            return Err(StoreError::InvalidRequest(format!(
                "datastore endpoint {part:?} is not of the form http://host:port"
            )));
        }
        endpoints.push(format!("http://{address}"));
    }
    if endpoints.is_empty() {
        return Err(StoreError::InvalidRequest(format!(
            "datastore endpoint {flag:?} names no endpoint; expected http://host:port[,host:port...]"
        )));
    }
    Ok(endpoints)
}

impl EtcdStore {
    /// A store on the etcd cluster at `endpoints` (URLs as [`parse_endpoints`] returns them).
    ///
    /// Connections are made lazily: this does not contact etcd, so it succeeds while the
    /// cluster is still starting; the first calls retry for up to [`RETRY_BUDGET`].
    ///
    /// etcd counts a request's protobuf framing against its `--max-request-bytes` (default
    /// 1.5 MiB); run it with at least [`MAX_REQUEST_BYTES`] + 64 KiB so that it accepts what
    /// the embedded store accepts. What it refuses anyway comes back as `TooLarge`.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidRequest(
                "no etcd endpoint given".to_string(),
            ));
        }
        let options = etcd::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            // A member cut off from its peers answers "no leader" (and cancels its watches)
            // instead of serving stale data; the retries then move on to another member.
            .with_require_leader(true);
        let client =
            etcd::Client::connect_with_balanced_channel(endpoints, Some(options), WideWindows)
                .await
                .map_err(|error| map_error(error, ErrorContext::default()))?;
        Ok(EtcdStore {
            endpoints: endpoints.to_vec(),
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: client.lease_client(),
        })
    }

    /// The endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs `attempt` until it succeeds, fails in a way that must not be retried, or
    /// [`RETRY_BUDGET`] is spent. `retry` says which failures are safe to retry.
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        retry: Retry,
        context: ErrorContext,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, etcd::Error>> + Send,
        T: Send,
    {
        let deadline = Instant::now() + RETRY_BUDGET;
        // The first retry goes out at once: it most likely lands on another member.
        let mut backoff = Duration::ZERO;
        loop {
            let failure = match timeout(CALL_TIMEOUT, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => {
                    let class = classify(&error);
                    let again = class == Failure::NotSent
                        || (class == Failure::Transient && retry == Retry::Always);
                    if !again || Instant::now() + backoff > deadline {
                        return Err(map_error(error, context));
                    }
                    error.to_string()
                }
                Err(_elapsed) => {
                    let message = format!("etcd {what} got no answer within {CALL_TIMEOUT:?}");
                    if retry != Retry::Always || Instant::now() + backoff > deadline {
                        return Err(StoreError::Unavailable(message));
                    }
                    message
                }
            };
            tracing::debug!(what, %failure, ?backoff, "etcd call failed; retrying");
            sleep(backoff).await;
            backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        }
    }
}

/// etcd-client's balanced channel (tonic's), with HTTP/2 windows set on every endpoint that
/// etcd-client adds: [`CONNECTION_WINDOW_BYTES`], [`STREAM_WINDOW_BYTES`]. h2 gives a
/// connection's window back only as the application reads, so streams nobody reads (a slow
/// watch consumer) hold on to it; `ConnectOptions` cannot set the windows.
struct WideWindows;

impl etcd::BalancedChannelBuilder for WideWindows {
    type Error = etcd::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(etcd::Channel, EndpointChanges), etcd::Error> {
        let (channel, to_tonic) = tonic::transport::Channel::balance_channel(buffer_size);
        let (from_client_tx, mut from_client) =
            tokio::sync::mpsc::channel::<Change<Uri, Endpoint>>(buffer_size);
        // Lives as long as the client (which holds `from_client_tx`).
        tokio::spawn(async move {
            while let Some(change) = from_client.recv().await {
                let change = match change {
                    Change::Insert(uri, endpoint) => Change::Insert(
                        uri,
                        endpoint
                            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                            .initial_stream_window_size(STREAM_WINDOW_BYTES),
                    ),
                    Change::Remove(uri) => Change::Remove(uri),
                };
                if to_tonic.send(change).await.is_err() {
                    break;
                }
            }
        });
        Ok((etcd::Channel::Tonic(channel), from_client_tx))
    }
}

/// How etcd-client adds endpoints to its balanced channel.
type EndpointChanges = tokio::sync::mpsc::Sender<Change<Uri, Endpoint>>;

/// Which failures of a call may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Every transient failure: the call has no effect, or the same effect twice (reads,
    /// lease renewals).
    Always,
    /// Only failures of requests that surely never reached a server (writes).
    IfNotSent,
}

/// How a failed call failed, for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The request never reached etcd, or etcd refused it before acting on it: retrying is
    /// safe for any call.
    NotSent,
    /// The connection or the member failed; the request may or may not have been applied.
    Transient,
    /// etcd answered, and would answer the same again.
    Permanent,
}

/// etcd's messages for requests it rejected before proposing them to raft: nothing was
/// applied, so they may be sent again (to another member, or once the cluster has a leader).
const REJECTED_BEFORE_APPLY: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "raft proposal dropped",
];

fn classify(error: &etcd::Error) -> Failure {
    match error {
        etcd::Error::GRpcStatus(status) => classify_status(status),
        etcd::Error::TransportError(_) | etcd::Error::IoError(_) | etcd::Error::WatchError(_) => {
            Failure::Transient
        }
        _ => Failure::Permanent,
    }
}

fn classify_status(status: &tonic::Status) -> Failure {
    if never_connected(status)
        || REJECTED_BEFORE_APPLY
            .iter()
            .any(|message| status.message().contains(message))
    {
        return Failure::NotSent;
    }
    match status.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal => Failure::Transient,
        _ => Failure::Permanent,
    }
}

/// Whether the call failed while connecting to the member it was sent to (tonic wraps such
/// failures, and only those, in a `ConnectError`).
fn never_connected(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// What a request asked for, to fill in the fields of the error it gets.
#[derive(Debug, Clone, Copy, Default)]
struct ErrorContext {
    /// The revision read, watched or compacted.
    revision: Revision,
    /// The lease renewed, revoked or attached.
    lease: LeaseId,
    /// The request's size ([`txn_size`], [`range_size`]).
    size: usize,
}

/// Maps an etcd client error onto a [`StoreError`], by gRPC code and etcd's message (etcd's
/// messages are its API: `rpctypes` in etcd's source).
fn map_error(error: etcd::Error, context: ErrorContext) -> StoreError {
    match error {
        etcd::Error::GRpcStatus(status) => map_status(&status, context),
        etcd::Error::LeaseKeepAliveError(message) if message.contains("not found") => {
            StoreError::LeaseNotFound(context.lease)
        }
        etcd::Error::InvalidArgs(message) => StoreError::InvalidRequest(message),
        etcd::Error::InvalidUri(error) => StoreError::InvalidRequest(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn map_status(status: &tonic::Status, context: ErrorContext) -> StoreError {
    let message = status.message();
    if message.contains("required revision has been compacted") {
        return StoreError::Compacted {
            requested: context.revision,
            compacted: 0,
        };
    }
    if message.contains("required revision is a future revision") {
        return StoreError::FutureRevision {
            requested: context.revision,
            current: 0,
        };
    }
    if message.contains("requested lease not found") {
        return StoreError::LeaseNotFound(context.lease);
    }
    if message.contains("request is too large")
        || (status.code() == Code::ResourceExhausted && message.contains("larger than max"))
    {
        return StoreError::TooLarge {
            size: context.size,
            limit: MAX_REQUEST_BYTES,
        };
    }
    match status.code() {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => StoreError::InvalidRequest(format!("etcd: {message}")),
        // Unavailable, timeouts, "too many requests", "database space exceeded" (an alarm an
        // operator clears), data loss on a member, and anything unknown: not the caller's fault.
        _ => StoreError::Unavailable(format!("etcd: {} ({:?})", message, status.code())),
    }
}

/// etcd's `(key, range_end)` for a key and how far its range goes. A range that starts at
/// the empty key starts at `\0` instead: etcd rejects an empty key, and no key it can hold
/// sorts below `\0`. So a prefix of `""` is etcd's "all keys", `("\0", "\0")`.
fn etcd_key_range(key: &[u8], end: &RangeEnd) -> (Vec<u8>, Vec<u8>) {
    let range_end = end.etcd_range_end(key);
    if key.is_empty() && *end != RangeEnd::Single {
        (vec![0], range_end)
    } else {
        (key.to_vec(), range_end)
    }
}

/// The size [`MAX_REQUEST_BYTES`] limits: every byte string the caller supplied (keys,
/// explicit range ends, values). Both backends count the same way.
fn range_size(key: &[u8], end: &RangeEnd) -> usize {
    key.len()
        + match end {
            RangeEnd::Until(end) => end.len(),
            RangeEnd::Single | RangeEnd::Prefix => 0,
        }
}

/// [`range_size`] for a transaction: its compares and the operations of both branches.
fn txn_size(txn: &Txn) -> usize {
    let compares = txn.compare.iter().map(|compare| {
        compare.key.len()
            + match &compare.target {
                CompareTarget::Value(value) => value.len(),
                CompareTarget::ModRevision(_)
                | CompareTarget::CreateRevision(_)
                | CompareTarget::Version(_) => 0,
            }
    });
    let ops = txn.success.iter().chain(&txn.failure).map(|op| match op {
        TxnOp::Put { key, value, .. } => key.len() + value.len(),
        TxnOp::Delete { key, end, .. } => range_size(key, end),
        TxnOp::Get(range) => range_size(&range.key, &range.end),
    });
    compares.chain(ops).sum()
}

fn check_size(size: usize) -> Result<(), StoreError> {
    if size > MAX_REQUEST_BYTES {
        return Err(StoreError::TooLarge {
            size,
            limit: MAX_REQUEST_BYTES,
        });
    }
    Ok(())
}

fn get_options(range: &Range) -> (Vec<u8>, etcd::GetOptions) {
    let (key, range_end) = etcd_key_range(&range.key, &range.end);
    let mut options = etcd::GetOptions::new()
        .with_revision(range.revision)
        .with_limit(range.limit);
    if !range_end.is_empty() {
        options = options.with_range(range_end);
    }
    if range.count_only {
        options = options.with_count_only();
    }
    if range.keys_only {
        options = options.with_keys_only();
    }
    (key, options)
}

fn compare(compare: &Compare) -> etcd::Compare {
    let op = match compare.op {
        CompareOp::Equal => etcd::CompareOp::Equal,
        CompareOp::NotEqual => etcd::CompareOp::NotEqual,
        CompareOp::Greater => etcd::CompareOp::Greater,
        CompareOp::Less => etcd::CompareOp::Less,
    };
    let key = compare.key.clone();
    match &compare.target {
        CompareTarget::ModRevision(revision) => etcd::Compare::mod_revision(key, op, *revision),
        CompareTarget::CreateRevision(revision) => {
            etcd::Compare::create_revision(key, op, *revision)
        }
        CompareTarget::Version(version) => etcd::Compare::version(key, op, *version),
        CompareTarget::Value(value) => etcd::Compare::value(key, op, value.clone()),
    }
}

fn txn_op(op: &TxnOp) -> Result<etcd::TxnOp, StoreError> {
    Ok(match op {
        TxnOp::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            let mut options = etcd::PutOptions::new().with_lease(*lease);
            if *prev_kv {
                options = options.with_prev_key();
            }
            etcd::TxnOp::put(key.clone(), value.clone(), Some(options))
        }
        TxnOp::Delete { key, end, prev_kv } => {
            let (key, range_end) = etcd_key_range(key, end);
            let mut options = etcd::DeleteOptions::new();
            if !range_end.is_empty() {
                options = options.with_range(range_end);
            }
            if *prev_kv {
                options = options.with_prev_key();
            }
            etcd::TxnOp::delete(key, Some(options))
        }
        TxnOp::Get(range) => {
            if range.revision != 0 {
                return Err(StoreError::InvalidRequest(format!(
                    "a Get inside a transaction reads at the transaction's revision; it asked \
                     for revision {}",
                    range.revision
                )));
            }
            let (key, options) = get_options(range);
            etcd::TxnOp::get(key, Some(options))
        }
    })
}

/// The first lease a transaction attaches, to name it if etcd says it does not exist.
fn txn_lease(txn: &Txn) -> LeaseId {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            TxnOp::Put { lease, .. } if *lease != 0 => Some(*lease),
            _ => None,
        })
        .unwrap_or(0)
}

fn key_value(kv: &etcd::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn owned_key_value(kv: etcd::KeyValue) -> KeyValue {
    let (create_revision, mod_revision, version, lease) = (
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    );
    let (key, value) = kv.into_key_value();
    KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        version,
        lease,
    }
}

fn header_revision(header: Option<&etcd::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(etcd::ResponseHeader::revision)
        .ok_or_else(|| StoreError::Unavailable("etcd sent a response without a header".into()))
}

fn range_response(
    mut response: etcd::GetResponse,
    fallback_revision: Option<Revision>,
) -> Result<RangeResponse, StoreError> {
    let revision = match (response.header(), fallback_revision) {
        (Some(header), _) => header.revision(),
        (None, Some(revision)) => revision,
        (None, None) => header_revision(None)?,
    };
    Ok(RangeResponse {
        more: response.more(),
        count: response.count(),
        revision,
        kvs: response
            .take_kvs()
            .into_iter()
            .map(owned_key_value)
            .collect(),
    })
}

#[async_trait]
impl Store for EtcdStore {
    async fn range(&self, range: Range) -> Result<RangeResponse, StoreError> {
        let size = range_size(&range.key, &range.end);
        check_size(size)?;
        let context = ErrorContext {
            revision: range.revision,
            size,
            ..ErrorContext::default()
        };
        let (key, options) = get_options(&range);
        let response = self
            .call("range", Retry::Always, context, || {
                let (mut kv, key, options) = (self.kv.clone(), key.clone(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })
            .await?;
        range_response(response, None)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let size = txn_size(&txn);
        check_size(size)?;
        let context = ErrorContext {
            lease: txn_lease(&txn),
            size,
            ..ErrorContext::default()
        };
        let success = txn
            .success
            .iter()
            .map(txn_op)
            .collect::<Result<Vec<_>, _>>()?;
        let failure = txn
            .failure
            .iter()
            .map(txn_op)
            .collect::<Result<Vec<_>, _>>()?;
        let request = etcd::Txn::new()
            .when(txn.compare.iter().map(compare).collect::<Vec<_>>())
            .and_then(success)
            .or_else(failure);
        let response = self
            .call("txn", Retry::IfNotSent, context, || {
                let (mut kv, request) = (self.kv.clone(), request.clone());
                async move { kv.txn(request).await }
            })
            .await?;
        let revision = header_revision(response.header())?;
        let results = response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                etcd::TxnOpResponse::Put(put) => Ok(TxnOpResult::Put {
                    prev_kv: put.prev_key().map(key_value),
                }),
                etcd::TxnOpResponse::Delete(mut delete) => Ok(TxnOpResult::Delete {
                    deleted: delete.deleted(),
                    prev_kvs: delete
                        .take_prev_kvs()
                        .into_iter()
                        .map(owned_key_value)
                        .collect(),
                }),
                etcd::TxnOpResponse::Get(get) => {
                    Ok(TxnOpResult::Get(range_response(get, Some(revision))?))
                }
                etcd::TxnOpResponse::Txn(_) => Err(StoreError::Unavailable(
                    "etcd answered a nested transaction that was never sent".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TxnResponse {
            succeeded: response.succeeded(),
            revision,
            results,
        })
    }

    async fn watch(&self, request: WatchRequest) -> Result<WatchStream, StoreError> {
        let size = range_size(&request.key, &request.end);
        check_size(size)?;
        let (key, range_end) = etcd_key_range(&request.key, &request.end);
        let target = WatchTarget {
            key,
            range_end,
            prev_kv: request.prev_kv,
        };
        let (stream, created_at) =
            open_watch_with_retry(&self.watch, &target, request.start_revision, RETRY_BUDGET)
                .await?;
        // From "now": etcd starts the watch right after the revision its created response
        // reports; resuming there after a break neither repeats nor skips anything.
        let next_revision = if request.start_revision == 0 {
            created_at + 1
        } else {
            request.start_revision
        };
        let cursor = WatchCursor {
            watch: self.watch.clone(),
            target,
            stream: Some(stream),
            next_revision,
            pending: VecDeque::new(),
            ended: false,
        };
        Ok(Box::pin(stream::unfold(cursor, WatchCursor::advance)))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let context = ErrorContext {
            revision,
            ..ErrorContext::default()
        };
        self.call("compact", Retry::IfNotSent, context, || {
            let mut kv = self.kv.clone();
            async move {
                kv.compact(
                    revision,
                    Some(etcd::CompactionOptions::new().with_physical()),
                )
                .await
            }
        })
        .await?;
        Ok(())
    }

    async fn lease_grant(&self, ttl: i64) -> Result<Lease, StoreError> {
        let response = self
            .call(
                "lease grant",
                Retry::IfNotSent,
                ErrorContext::default(),
                || {
                    let mut lease = self.lease.clone();
                    async move { lease.grant(ttl, None).await }
                },
            )
            .await?;
        if !response.error().is_empty() {
            return Err(StoreError::InvalidRequest(format!(
                "etcd refused a lease of {ttl} s: {}",
                response.error()
            )));
        }
        Ok(Lease {
            id: response.id(),
            ttl: response.ttl(),
        })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let context = ErrorContext {
            lease: id,
            ..ErrorContext::default()
        };
        // etcd-client's `keep_alive` makes one round trip on the keep-alive stream (failing
        // when the lease is gone) but keeps the TTL to itself; a second round trip on the same
        // stream reports it. Renewing twice is harmless.
        self.call("lease keep-alive", Retry::Always, context, || {
            let mut lease = self.lease.clone();
            async move {
                let (mut keeper, mut responses) = lease.keep_alive(id).await?;
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(response) if response.ttl() > 0 => Ok(response.ttl()),
                    Some(_) => Err(etcd::Error::LeaseKeepAliveError("lease not found".into())),
                    None => Err(etcd::Error::WatchError(
                        "the keep-alive stream ended without an answer".into(),
                    )),
                }
            }
        })
        .await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        let context = ErrorContext {
            lease: id,
            ..ErrorContext::default()
        };
        self.call("lease revoke", Retry::IfNotSent, context, || {
            let mut lease = self.lease.clone();
            async move { lease.revoke(id).await }
        })
        .await?;
        Ok(())
    }
}

/// What a watch covers, in etcd's terms.
#[derive(Debug, Clone)]
struct WatchTarget {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
}

/// Why opening a watch stream failed.
enum OpenFailure {
    /// The call failed; [`classify`] says whether to try again.
    Etcd(etcd::Error),
    /// etcd created the watch and canceled it at once: trying again will not help.
    Refused(StoreError),
    /// etcd did not confirm the watch in time.
    TimedOut,
}

/// Opens a watch stream on `target` from `start` (0: from now) and waits until etcd confirms
/// it; returns the stream and the revision etcd was at when it created the watch.
async fn open_watch(
    watch: &etcd::WatchClient,
    target: &WatchTarget,
    start: Revision,
) -> Result<(etcd::WatchStream, Revision), OpenFailure> {
    let mut options = etcd::WatchOptions::new();
    if !target.range_end.is_empty() {
        options = options.with_range(target.range_end.clone());
    }
    if start != 0 {
        options = options.with_start_revision(start);
    }
    if target.prev_kv {
        options = options.with_prev_key();
    }
    let mut watch = watch.clone();
    let opening = async move {
        let mut stream = watch
            .watch(target.key.clone(), Some(options))
            .await
            .map_err(OpenFailure::Etcd)?;
        let Some(created) = stream.message().await.map_err(OpenFailure::Etcd)? else {
            return Err(OpenFailure::Etcd(etcd::Error::WatchError(
                "the watch stream ended before etcd created the watch".into(),
            )));
        };
        if created.canceled() {
            return Err(OpenFailure::Refused(cancellation(&created, start)));
        }
        let revision = header_revision(created.header()).map_err(OpenFailure::Refused)?;
        Ok((stream, revision))
    };
    timeout(WATCH_OPEN_TIMEOUT, opening)
        .await
        .unwrap_or(Err(OpenFailure::TimedOut))
}

/// [`open_watch`], retried on another member while `budget` lasts.
async fn open_watch_with_retry(
    watch: &etcd::WatchClient,
    target: &WatchTarget,
    start: Revision,
    budget: Duration,
) -> Result<(etcd::WatchStream, Revision), StoreError> {
    let deadline = Instant::now() + budget;
    let mut backoff = Duration::ZERO;
    loop {
        let failure = match open_watch(watch, target, start).await {
            Ok(opened) => return Ok(opened),
            Err(OpenFailure::Refused(error)) => return Err(error),
            Err(OpenFailure::Etcd(error)) if classify(&error) == Failure::Permanent => {
                let context = ErrorContext {
                    revision: start,
                    ..ErrorContext::default()
                };
                return Err(map_error(error, context));
            }
            Err(OpenFailure::Etcd(error)) => error.to_string(),
            Err(OpenFailure::TimedOut) => {
                format!("etcd did not create the watch within {WATCH_OPEN_TIMEOUT:?}")
            }
        };
        if Instant::now() + backoff > deadline {
            return Err(StoreError::Unavailable(format!(
                "could not watch from revision {start} within {budget:?}: {failure}"
            )));
        }
        tracing::debug!(start, %failure, ?backoff, "opening an etcd watch failed; retrying");
        sleep(backoff).await;
        backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
    }
}

/// The error a watch canceled by etcd ends with.
fn cancellation(response: &etcd::WatchResponse, requested: Revision) -> StoreError {
    if response.compact_revision() != 0 {
        StoreError::Compacted {
            requested,
            compacted: response.compact_revision(),
        }
    } else {
        StoreError::InvalidRequest(format!(
            "etcd canceled the watch: {}",
            response.cancel_reason()
        ))
    }
}

/// The state of a [`WatchStream`] on etcd: the etcd stream it reads (which keeps etcd's
/// watcher alive), the batches read but not yet delivered, and the revision to resume from.
struct WatchCursor {
    watch: etcd::WatchClient,
    target: WatchTarget,
    /// `None` after the stream broke, until it is re-opened.
    stream: Option<etcd::WatchStream>,
    /// The first revision not delivered yet.
    next_revision: Revision,
    pending: VecDeque<WatchBatch>,
    /// Set after the final error: the stream ends.
    ended: bool,
}

impl WatchCursor {
    /// The next item of the stream (for [`stream::unfold`]).
    async fn advance(mut self) -> Option<(Result<WatchBatch, StoreError>, Self)> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(batch) = self.pending.pop_front() {
                self.next_revision = batch.revision + 1;
                return Some((Ok(batch), self));
            }
            let Some(stream) = self.stream.as_mut() else {
                match open_watch_with_retry(
                    &self.watch,
                    &self.target,
                    self.next_revision,
                    WATCH_RECONNECT_BUDGET,
                )
                .await
                {
                    Ok((stream, _)) => {
                        tracing::info!(
                            revision = self.next_revision,
                            "etcd watch resumed after a break"
                        );
                        self.stream = Some(stream);
                        continue;
                    }
                    Err(error) => return Some((Err(error), self.end())),
                }
            };
            match stream.message().await {
                Ok(Some(response)) if response.canceled() => {
                    if response.compact_revision() != 0 {
                        let error = cancellation(&response, self.next_revision);
                        return Some((Err(error), self.end()));
                    }
                    tracing::warn!(
                        reason = response.cancel_reason(),
                        revision = self.next_revision,
                        "etcd canceled a watch; resuming it"
                    );
                    self.stream = None;
                }
                Ok(Some(response)) => {
                    let events = response.events().iter().filter_map(|event| {
                        let kind = match event.event_type() {
                            etcd::EventType::Put => EventKind::Put,
                            etcd::EventType::Delete => EventKind::Delete,
                        };
                        Some(Event {
                            kind,
                            kv: key_value(event.kv()?),
                            prev_kv: event.prev_kv().map(key_value),
                        })
                    });
                    batch_events(&mut self.pending, self.next_revision, events);
                }
                Ok(None) => {
                    tracing::warn!(
                        revision = self.next_revision,
                        "etcd closed a watch stream; resuming it"
                    );
                    self.stream = None;
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        revision = self.next_revision,
                        "an etcd watch stream failed; resuming it"
                    );
                    self.stream = None;
                }
            }
        }
    }

    fn end(mut self) -> Self {
        self.ended = true;
        self.stream = None;
        self.pending.clear();
        self
    }
}

/// Appends `events` (of one etcd watch response, in etcd's order) to `pending` as one batch
/// per revision. Events before `from` were delivered already and are dropped. etcd never
/// splits one revision's events over two responses (unless asked to fragment, which corten
/// does not), so a revision's batch is complete when its response is.
fn batch_events(
    pending: &mut VecDeque<WatchBatch>,
    from: Revision,
    events: impl IntoIterator<Item = Event>,
) {
    for event in events {
        let revision = event.kv.mod_revision;
        if revision < from {
            continue;
        }
        match pending.back_mut() {
            Some(batch) if batch.revision == revision => batch.events.push(event),
            _ => pending.push_back(WatchBatch {
                revision,
                events: vec![event],
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme_and_split_on_commas() {
        assert_eq!(
            parse_endpoints("http://10.0.0.1:2379, 10.0.0.2:2379,,10.0.0.3:2379").ok(),
            Some(vec![
                "http://10.0.0.1:2379".to_string(),
                "http://10.0.0.2:2379".to_string(),
                "http://10.0.0.3:2379".to_string(),
            ])
        );
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints(" , ").is_err());
        assert!(parse_endpoints("https://h:2379").is_err());
        assert!(parse_endpoints("unix://h:2379").is_err());
        assert!(parse_endpoints("http://h:2379/path").is_err());
    }

    #[test]
    fn a_prefix_of_nothing_is_all_keys() {
        assert_eq!(etcd_key_range(b"", &RangeEnd::Prefix), (vec![0], vec![0]));
        assert_eq!(
            etcd_key_range(b"/a/", &RangeEnd::Prefix),
            (b"/a/".to_vec(), b"/a0".to_vec())
        );
        assert_eq!(
            etcd_key_range(b"", &RangeEnd::Until(b"m".to_vec())),
            (vec![0], b"m".to_vec())
        );
        assert_eq!(
            etcd_key_range(b"k", &RangeEnd::Single),
            (b"k".to_vec(), vec![])
        );
    }

    #[test]
    fn sizes_count_keys_values_and_explicit_ends() {
        let txn = Txn {
            compare: vec![Compare::value("ab", CompareOp::Equal, "cde")],
            success: vec![TxnOp::put("k", "vvvv")],
            failure: vec![
                TxnOp::Get(Range::between("a", "zz")),
                TxnOp::Delete {
                    key: b"p/".to_vec(),
                    end: RangeEnd::Prefix,
                    prev_kv: false,
                },
            ],
        };
        assert_eq!(txn_size(&txn), 2 + 3 + 1 + 4 + 1 + 2 + 2);
        assert!(check_size(MAX_REQUEST_BYTES).is_ok());
        assert!(matches!(
            check_size(MAX_REQUEST_BYTES + 1),
            Err(StoreError::TooLarge { .. })
        ));
    }

    fn event(key: &str, revision: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.into(),
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    #[test]
    fn one_response_splits_into_one_batch_per_revision() {
        let mut pending = VecDeque::new();
        let events = [event("a", 4), event("b", 5), event("c", 5), event("d", 7)];
        batch_events(&mut pending, 5, events);
        let batches: Vec<_> = pending
            .iter()
            .map(|batch| {
                let keys: Vec<_> = batch.events.iter().map(|e| e.kv.key.clone()).collect();
                (batch.revision, keys)
            })
            .collect();
        assert_eq!(
            batches,
            vec![
                (5, vec![b"b".to_vec(), b"c".to_vec()]),
                (7, vec![b"d".to_vec()])
            ]
        );
    }

    fn status_error(code: Code, message: &str) -> etcd::Error {
        etcd::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn errors_map_by_etcd_message_and_code() {
        let context = ErrorContext {
            revision: 7,
            lease: 0x42,
            size: 10,
        };
        let map = |code, message| map_error(status_error(code, message), context);
        assert!(matches!(
            map(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            StoreError::Compacted { requested: 7, .. }
        ));
        assert!(matches!(
            map(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            ),
            StoreError::FutureRevision { requested: 7, .. }
        ));
        assert!(matches!(
            map(Code::NotFound, "etcdserver: requested lease not found"),
            StoreError::LeaseNotFound(0x42)
        ));
        assert!(matches!(
            map(Code::InvalidArgument, "etcdserver: request is too large"),
            StoreError::TooLarge { size: 10, .. }
        ));
        assert!(matches!(
            map(
                Code::ResourceExhausted,
                "grpc: received message larger than max (4000000 vs. 3000000)"
            ),
            StoreError::TooLarge { .. }
        ));
        assert!(matches!(
            map(
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded"
            ),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            map(Code::Unavailable, "etcdserver: no leader"),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            map(
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request"
            ),
            StoreError::InvalidRequest(_)
        ));
        assert!(matches!(
            map_error(
                etcd::Error::LeaseKeepAliveError("lease not found".into()),
                context
            ),
            StoreError::LeaseNotFound(0x42)
        ));
    }

    #[test]
    fn only_requests_that_never_arrived_are_safe_to_resend() {
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        )));
        assert_eq!(
            classify(&etcd::Error::GRpcStatus(refused)),
            Failure::NotSent
        );
        assert_eq!(
            classify(&status_error(Code::Unavailable, "etcdserver: no leader")),
            Failure::NotSent
        );
        assert_eq!(
            classify(&status_error(Code::Unknown, "raft proposal dropped")),
            Failure::NotSent
        );
        assert_eq!(
            classify(&status_error(
                Code::Unavailable,
                "etcdserver: request timed out"
            )),
            Failure::Transient
        );
        assert_eq!(
            classify(&status_error(
                Code::Unknown,
                "h2 protocol error: connection reset"
            )),
            Failure::Transient
        );
        assert_eq!(
            classify(&status_error(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )),
            Failure::Permanent
        );
    }
}
