//! The service proxy's control loop on one node: watch Services and EndpointSlices, hand
//! every event to the [`DesiredIndex`], and after each batch of changes (debounced, and at
//! least every `SYNC_PERIOD`, as kube-proxy's `syncPeriod`) recompute
//! only the touched Services and write only the map entries that changed; attach
//! the tc programs to the external interfaces and log their counters (and record them, with
//! each sync's time and the changes seen, in the [`ProxyMetrics`]); serve the
//! healthCheckNodePorts of `Local` LoadBalancer Services from the same computation.
//!
//! Owns the order of things at start (load and attach, then wait until both watches have
//! listed everything before the first sync, so that a restart never empties maps it reused
//! from pins) and the retry of failed syncs. It must not decide entries itself (that is
//! `desired` and `diff`) nor write maps (that is `socket_lb` and `maps`).
use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client, Resource,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    desired::NodeContext,
    diff::BackendSelection,
    health::HealthServers,
    index::{Changes, DesiredIndex},
    metrics::{Change, ProxyMetrics},
    socket_lb::{MapSizes, SocketLb, SocketLbError, SyncStats},
    tc_nat::{self, NatStats, StatLevel},
};

/// Changes that arrive within this time of each other are synced together.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Wait before retrying a sync that failed.
const RETRY: Duration = Duration::from_secs(1);
/// A sync runs at least this often, changes or not (upstream's default `syncPeriod`), so
/// the last-sync time in the metrics tells a live proxy from a stuck one.
const SYNC_PERIOD: Duration = Duration::from_secs(30);
/// How often the tc programs' counters are read and their changes logged.
const NAT_STATS_PERIOD: Duration = Duration::from_secs(10);

/// How the proxy runs (corten-agent's flags).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This node's name and addresses.
    pub node: NodeContext,
    /// The cgroup v2 directory the socket programs attach to.
    pub cgroup: PathBuf,
    /// Where the maps are pinned (a directory on a bpffs); unpinned without it.
    pub pin_dir: Option<PathBuf>,
    /// Map capacities.
    pub sizes: MapSizes,
    /// How the tc programs pick a backend for a new flow from outside (random or Maglev).
    pub selection: BackendSelection,
    /// Interfaces that traffic from outside the cluster arrives on: the tc programs attach
    /// to each (NodePorts, externalIPs and LoadBalancer IPs for outside clients).
    pub external_interfaces: Vec<String>,
    /// Where the loop records its syncs, the changes it saw and the tc counters.
    pub metrics: ProxyMetrics,
}

/// Why the proxy stopped. Both need a change on the host; the loop itself retries
/// everything else.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The programs could not be loaded or attached, or the pinned maps not read.
    #[error("starting the socket load balancer: {0}")]
    Start(#[source] SocketLbError),
    /// A watch ended (the API client was dropped).
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// Loads and attaches the datapath, then keeps it equal to the cluster's Services and
/// EndpointSlices until the process ends.
pub async fn run(client: Client, config: ProxyConfig) -> Result<(), ProxyError> {
    let mut lb =
        SocketLb::load(config.sizes, config.pin_dir.as_deref()).map_err(ProxyError::Start)?;
    lb.set_selection(config.selection);
    lb.attach(&config.cgroup).map_err(ProxyError::Start)?;
    for interface in &config.external_interfaces {
        lb.attach_external(interface).map_err(ProxyError::Start)?;
    }
    info!(
        cgroup = %config.cgroup.display(),
        external_interfaces = ?config.external_interfaces,
        selection = ?config.selection,
        "service proxy attached"
    );

    let (events, mut received) = mpsc::unbounded_channel();
    let mut services_task = tokio::spawn(forward_events(
        "Service",
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
        events.clone(),
        |event| WatchEvent::Service(Box::new(event)),
    ));
    let mut slices_task = tokio::spawn(forward_events(
        "EndpointSlice",
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
        events,
        |event| WatchEvent::Slice(Box::new(event)),
    ));
    let mut index = DesiredIndex::new(config.node.clone());
    // The objects are only complete after both first lists; syncing earlier would remove
    // every service not yet seen (also entries reused from pinned maps).
    while !index.listed() {
        tokio::select! {
            event = received.recv() => match event {
                Some(event) => take_event(&mut index, event, &config.metrics),
                None => return Err(ProxyError::WatchEnded("Service")),
            },
            _ = &mut services_task => return Err(ProxyError::WatchEnded("Service")),
            _ = &mut slices_task => return Err(ProxyError::WatchEnded("EndpointSlice")),
        }
    }
    info!("service proxy synced its watches");
    let mut nat_stats = tokio::time::interval(NAT_STATS_PERIOD);
    let mut last_nat_stats: Option<NatStats> = None;
    let mut health = HealthServers::new(std::net::Ipv4Addr::UNSPECIFIED);
    loop {
        let started = std::time::Instant::now();
        let synced = sync_once(&mut index, &mut lb);
        config.metrics.synced(
            started.elapsed(),
            synced.is_ok().then(SystemTime::now),
            synced.as_ref().map_or(0, |stats| stats.untabled),
        );
        let mut retry = match synced {
            Ok(stats) => {
                if stats.operations > 0 {
                    debug!(
                        operations = stats.operations,
                        frontends = index.state().frontends.len(),
                        "service maps updated"
                    );
                }
                false
            }
            Err(error) => {
                warn!(%error, "service map sync failed; retrying");
                true
            }
        };
        for (port, error) in health.update(&index.state().health_checks, !retry) {
            warn!(port, %error, "cannot serve a healthCheckNodePort; retrying");
            retry = true;
        }
        // Wait for a change (or the retry, or the sync period); the counters are reported
        // meanwhile.
        let retry_at = tokio::time::Instant::now() + RETRY;
        let period_at = tokio::time::Instant::now() + SYNC_PERIOD;
        loop {
            tokio::select! {
                event = received.recv() => {
                    let Some(event) = event else {
                        return Err(ProxyError::WatchEnded("Service"));
                    };
                    take_event(&mut index, event, &config.metrics);
                    // Changes that arrive meanwhile are synced together.
                    tokio::time::sleep(DEBOUNCE).await;
                    while let Ok(event) = received.try_recv() {
                        take_event(&mut index, event, &config.metrics);
                    }
                    break;
                }
                _ = tokio::time::sleep_until(retry_at), if retry => break,
                _ = tokio::time::sleep_until(period_at) => break,
                _ = nat_stats.tick() => {
                    report_nat_stats(&lb, &mut last_nat_stats, &config.metrics);
                }
                _ = &mut services_task => return Err(ProxyError::WatchEnded("Service")),
                _ = &mut slices_task => return Err(ProxyError::WatchEnded("EndpointSlice")),
            }
        }
    }
}

/// What the loop does with a batch of watch events already taken into `index`: bring the
/// desired state up to them (recomputing only the Services they touch, everything after a
/// relist) and plan and write only the keys that changed. A failed sync leaves the socket-LB
/// to plan everything next time, so no change is lost.
pub fn sync_once(index: &mut DesiredIndex, lb: &mut SocketLb) -> Result<SyncStats, SocketLbError> {
    let changes = take_changes(index);
    lb.sync_changes(index, &changes)
}

/// The first half of [`sync_once`]: brings `index` up to the events it took and logs what
/// the touched Services leave out.
pub fn take_changes(index: &mut DesiredIndex) -> Changes {
    let changes = index.update();
    if tracing::enabled!(tracing::Level::DEBUG) {
        let skipped = if changes.full {
            index.full_state().skipped
        } else {
            changes
                .services
                .iter()
                .flat_map(|service| index.skipped(service))
                .collect()
        };
        for skipped in skipped {
            debug!(service = %skipped.service, reason = ?skipped.reason, "no datapath entries");
        }
    }
    changes
}

/// One event of either watch.
enum WatchEvent {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// Hands `event` to the index; an added, changed or deleted object (a listed one too) is
/// one change in the metrics, as upstream's change trackers count them.
fn take_event(index: &mut DesiredIndex, event: WatchEvent, metrics: &ProxyMetrics) {
    match event {
        WatchEvent::Service(event) => {
            if is_change(&event) {
                metrics.change(Change::Service);
            }
            index.service_event(*event);
        }
        WatchEvent::Slice(event) => {
            if is_change(&event) && counts_as_endpoints(&event) {
                metrics.change(Change::EndpointSlice);
            }
            index.slice_event(*event);
        }
    }
}

/// Whether a slice event counts as an endpoints change for upstream's tracker: an IPv4
/// slice (the family this proxy serves) of a Service that is not headless.
fn counts_as_endpoints(event: &watcher::Event<EndpointSlice>) -> bool {
    let (watcher::Event::Apply(slice)
    | watcher::Event::InitApply(slice)
    | watcher::Event::Delete(slice)) = event
    else {
        return false;
    };
    let headless = slice
        .metadata
        .labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key("service.kubernetes.io/headless"));
    slice.address_type == "IPv4" && !headless
}

/// Whether `event` adds, changes or deletes an object (not a list's start or end).
fn is_change<K>(event: &watcher::Event<K>) -> bool {
    matches!(
        event,
        watcher::Event::Apply(_) | watcher::Event::InitApply(_) | watcher::Event::Delete(_)
    )
}

/// Logs what the tc programs counted since the last reading: new flows at debug level,
/// anything dropped or lost (a full flow map among them) as a warning.
fn report_nat_stats(lb: &SocketLb, last: &mut Option<NatStats>, metrics: &ProxyMetrics) {
    let now = match lb.nat_stats() {
        Ok(Some(now)) => now,
        Ok(None) => return,
        Err(error) => {
            warn!(%error, "reading the tc NAT counters failed");
            return;
        }
    };
    metrics.nat_stats(now);
    let before = last.unwrap_or_default();
    for (counter, increase, level) in tc_nat::stat_changes(&before, &now) {
        match level {
            StatLevel::Info => debug!(counter, increase, "tc NAT"),
            StatLevel::Warn => warn!(
                counter,
                increase,
                "tc NAT dropped or lost flows (raise --proxy-max-nat-flows if flows are missing)"
            ),
        }
    }
    *last = Some(now);
}

/// Drives a watch with the watcher's backoff and hands every event to the loop; errors are
/// logged (the watcher relists by itself). Ends when the stream or the loop does, so the loop
/// holding the task's handle notices a dead watch.
async fn forward_events<K, S>(
    kind: &'static str,
    stream: S,
    events: mpsc::UnboundedSender<WatchEvent>,
    wrap: fn(watcher::Event<K>) -> WatchEvent,
) where
    K: Resource + Clone + std::fmt::Debug + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.default_backoff());
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => {
                if events.send(wrap(event)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => warn!(kind, %error, "watch error"),
        }
    }
}
