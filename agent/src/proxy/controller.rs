//! The service proxy's control loop on one node: watch Services and EndpointSlices, and after
//! every change recompute the desired datapath and bring the socket-LB's maps to it; attach
//! the tc programs to the external interfaces and log their counters; serve the
//! healthCheckNodePorts of `Local` LoadBalancer Services from the same computation.
//!
//! Owns the order of things at start (load and attach, then wait until both watches have
//! listed everything before the first sync, so that a restart never empties maps it reused
//! from pins) and the retry of failed syncs. It must not decide entries itself (that is
//! `desired` and `diff`) nor write maps (that is `socket_lb` and `maps`).
use std::{path::PathBuf, sync::Arc, time::Duration};

use futures::Stream;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    runtime::{reflector, watcher, WatchStreamExt},
    Api, Client, Resource,
};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{
    desired::{self, NodeContext},
    diff::BackendSelection,
    health::HealthServers,
    socket_lb::{MapSizes, SocketLb, SocketLbError},
    tc_nat::{self, NatStats, StatLevel},
};

/// Changes that arrive within this time of each other are synced together.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Wait before retrying a sync that failed.
const RETRY: Duration = Duration::from_secs(1);
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

    let changed = Arc::new(Notify::new());
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let mut services_task = tokio::spawn(forward_changes(
        "Service",
        reflector(
            services_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            ),
        ),
        changed.clone(),
    ));
    let mut slices_task = tokio::spawn(forward_changes(
        "EndpointSlice",
        reflector(
            slices_writer,
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default(),
            ),
        ),
        changed.clone(),
    ));
    // The stores are only complete after their first list; syncing earlier would remove
    // every service not yet seen.
    let ready = async {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
    };
    tokio::select! {
        _ = ready => {}
        _ = &mut services_task => return Err(ProxyError::WatchEnded("Service")),
        _ = &mut slices_task => return Err(ProxyError::WatchEnded("EndpointSlice")),
    }
    info!("service proxy synced its watches");
    let mut nat_stats = tokio::time::interval(NAT_STATS_PERIOD);
    let mut last_nat_stats: Option<NatStats> = None;
    let mut health = HealthServers::new(std::net::Ipv4Addr::UNSPECIFIED);
    loop {
        let services: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
        let slices: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
        let desired = desired::compute(&config.node, &services, &slices);
        for skipped in &desired.skipped {
            debug!(service = %skipped.service, reason = ?skipped.reason, "no datapath entries");
        }
        let mut retry = match lb.sync(&desired) {
            Ok(stats) => {
                if stats.operations > 0 {
                    debug!(
                        operations = stats.operations,
                        frontends = desired.frontends.len(),
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
        for (port, error) in health.update(&desired.health_checks, !retry) {
            warn!(port, %error, "cannot serve a healthCheckNodePort; retrying");
            retry = true;
        }
        // Wait for a change (or the retry); the counters are reported meanwhile.
        let retry_at = tokio::time::Instant::now() + RETRY;
        loop {
            tokio::select! {
                _ = changed.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    break;
                }
                _ = tokio::time::sleep_until(retry_at), if retry => break,
                _ = nat_stats.tick() => report_nat_stats(&lb, &mut last_nat_stats),
                _ = &mut services_task => return Err(ProxyError::WatchEnded("Service")),
                _ = &mut slices_task => return Err(ProxyError::WatchEnded("EndpointSlice")),
            }
        }
    }
}

/// Logs what the tc programs counted since the last reading: new flows at debug level,
/// anything dropped or lost (a full flow map among them) as a warning.
fn report_nat_stats(lb: &SocketLb, last: &mut Option<NatStats>) {
    let now = match lb.nat_stats() {
        Ok(Some(now)) => now,
        Ok(None) => return,
        Err(error) => {
            warn!(%error, "reading the tc NAT counters failed");
            return;
        }
    };
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

/// Drives a reflector's stream with the watcher's backoff and wakes the loop on every
/// change (see [`crate::watches`]).
async fn forward_changes<K, S>(kind: &'static str, stream: S, changed: Arc<Notify>)
where
    K: Resource + Clone + std::fmt::Debug + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    crate::watches::notify_on_change(kind, stream.default_backoff(), changed).await;
}
