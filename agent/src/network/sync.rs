//! The pod network's control loop on one node: publish this node's VTEP MAC, watch the Nodes,
//! and keep the kernel's routes, neighbours and FDB entries equal to what
//! [`plan`](super::plan) says — on every Node change and on a periodic resync, which also
//! removes what a previous run left behind.
//!
//! Owns the order of things at start (underlay, device, annotation) and the loop. It must not
//! decide entries itself (that is `plan`) nor speak netlink (that is `kernel`).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{Patch, PatchParams},
    runtime::{reflector, watcher, WatchStreamExt},
    Api, Client,
};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::{
    kernel::{Kernel, Underlay, VxlanDevice},
    masquerade,
    peers::{self, Cidr, VTEP_MAC_ANNOTATION},
    plan::{self, NetState},
    NetworkMode,
};

/// A full resync at least this often, even without Node changes.
const RESYNC: Duration = Duration::from_secs(30);

/// What the loop needs to know about this node.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// How pods on different nodes reach each other.
    pub mode: NetworkMode,
    /// This node's name.
    pub node_name: String,
    /// This node's IP (on the underlay).
    pub node_ip: Ipv4Addr,
    /// The cluster's pod CIDR: pod traffic to anywhere else is masqueraded.
    pub cluster_cidr: Cidr,
}

/// Prefixes learned by BGP and their next hops (BGP mode's input).
pub type Learned = watch::Receiver<BTreeMap<Cidr, Ipv4Addr>>;

/// Runs the loop until the process ends. `learned` is read in BGP mode only.
pub async fn run(
    client: Client,
    config: NetworkConfig,
    learned: Option<Learned>,
) -> anyhow::Result<()> {
    masquerade::install(config.cluster_cidr).context("installing the masquerade rules")?;
    let kernel = Kernel::connect().context("opening netlink")?;
    let underlay = wait_for_underlay(&kernel, config.node_ip).await?;
    info!(mode = %config.mode, underlay = %underlay.name, subnet = %underlay.subnet, "pod network starting");
    let vxlan = match config.mode {
        NetworkMode::Vxlan => {
            let device = kernel
                .ensure_vxlan(&underlay, config.node_ip)
                .await
                .context("creating the VXLAN device")?;
            info!(mac = %device.mac, "VXLAN device ready");
            Some(device)
        }
        NetworkMode::HostGw | NetworkMode::Bgp => {
            if kernel.remove_vxlan().await? {
                info!("removed the VXLAN device of an earlier run in another mode");
            }
            None
        }
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let (reader, writer) = reflector::store::<Node>();
    let changed = Arc::new(Notify::new());
    let stream = reflector(writer, watcher(nodes.clone(), watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(crate::watches::notify_on_change(
        "Node",
        stream,
        changed.clone(),
    ));
    if let Some(learned) = learned.clone() {
        let changed = changed.clone();
        tokio::spawn(async move {
            let mut learned = learned;
            while learned.changed().await.is_ok() {
                changed.notify_one();
            }
        });
    }
    let mut state = LoopState::default();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
        let all = reader.state();
        let own = all
            .iter()
            .find(|node| node.metadata.name.as_deref() == Some(config.node_name.as_str()));
        if let (Some(own), Some(device)) = (own, vxlan) {
            state
                .publish_and_address(&kernel, &nodes, own, device)
                .await;
        }
        let desired = match config.mode {
            NetworkMode::Vxlan => {
                let (peers, refused) =
                    peers::peers(all.iter().map(|n| n.as_ref()), &config.node_name);
                state.report(&refused);
                let (desired, skipped) = plan::vxlan(&peers);
                state.report_skipped(&skipped);
                desired
            }
            NetworkMode::HostGw => {
                let (peers, refused) =
                    peers::peers(all.iter().map(|n| n.as_ref()), &config.node_name);
                state.report(&refused);
                let (desired, skipped) = plan::host_gw(&peers, underlay.subnet);
                state.report_skipped(&skipped);
                desired
            }
            NetworkMode::Bgp => {
                let own_cidr = own
                    .and_then(|own| peers::peer(own).ok())
                    .map(|p| p.pod_cidr);
                let learned = learned
                    .as_ref()
                    .map(|l| l.borrow().clone())
                    .unwrap_or_default();
                plan::bgp(&learned, own_cidr, config.node_ip)
            }
        };
        if let Err(e) = reconcile(&kernel, &underlay, vxlan, &desired).await {
            warn!(error = %e, "reconciling the pod network failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            changed.notify_one();
        }
    }
}

/// Makes the kernel hold exactly `desired`; returns the number of changes.
pub async fn reconcile(
    kernel: &Kernel,
    underlay: &Underlay,
    vxlan: Option<VxlanDevice>,
    desired: &NetState,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let current = kernel
        .observe(underlay, vxlan)
        .await
        .context("reading the kernel's entries")?;
    let ops = plan::diff(&current, desired);
    for op in &ops {
        kernel
            .apply(*op, underlay, vxlan)
            .await
            .with_context(|| format!("applying {op:?}"))?;
    }
    if ops.is_empty() {
        debug!("pod network in sync");
    } else {
        info!(changes = ops.len(), took = ?started.elapsed(), "pod network reconciled");
    }
    Ok(ops.len())
}

async fn wait_for_underlay(kernel: &Kernel, node_ip: Ipv4Addr) -> anyhow::Result<Underlay> {
    let mut last = None;
    for _ in 0..60 {
        match kernel.underlay(node_ip).await {
            Ok(underlay) => return Ok(underlay),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no underlay")))
    .context("finding the link that holds the node IP")
}

/// What the loop remembers between passes, so that it logs a problem once, not every pass.
#[derive(Debug, Default)]
struct LoopState {
    reported: Vec<String>,
    published: Option<String>,
    addressed: Option<Cidr>,
}

impl LoopState {
    fn report(&mut self, refused: &[peers::PeerError]) {
        let now: Vec<String> = refused.iter().map(|e| e.to_string()).collect();
        for message in now.iter().filter(|m| !self.reported.contains(m)) {
            info!("leaving a node out of the pod network: {message}");
        }
        self.reported = now;
    }

    fn report_skipped(&mut self, skipped: &[plan::Skipped]) {
        for skip in skipped {
            debug!(node = %skip.node, reason = skip.reason, "node skipped");
        }
    }

    /// Publishes the VTEP MAC on this node's object when it is missing or stale, and gives
    /// the device this node's `.0` once the node has a pod CIDR.
    async fn publish_and_address(
        &mut self,
        kernel: &Kernel,
        nodes: &Api<Node>,
        own: &Node,
        device: VxlanDevice,
    ) {
        let mac = device.mac.to_string();
        let current = own
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(VTEP_MAC_ANNOTATION));
        if current != Some(&mac) {
            let name = own.metadata.name.clone().unwrap_or_default();
            let patch = json!({"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}});
            match nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    if self.published.as_ref() != Some(&mac) {
                        info!(%mac, "published the VTEP MAC");
                    }
                    self.published = Some(mac);
                }
                Err(e) => warn!(error = %e, "publishing the VTEP MAC failed"),
            }
        }
        let own_cidr = own
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Cidr>().ok());
        if let Some(cidr) = own_cidr {
            if self.addressed != Some(cidr) {
                match kernel.ensure_vxlan_address(device, cidr).await {
                    Ok(()) => self.addressed = Some(cidr),
                    Err(e) => warn!(error = %e, "addressing the VXLAN device failed"),
                }
            }
        }
    }
}
