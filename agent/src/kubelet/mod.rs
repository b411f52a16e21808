//! The kubelet (DESIGN.md §7): registers the node and keeps its Lease and status
//! ([`node`]), imports images from the image directory ([`images`]), writes the CNI config
//! once the node has a pod CIDR, and runs the pods of this node through CRI ([`pods`],
//! deciding with [`plan`], reporting with [`status`], configuring with [`runtime_config`],
//! the pod cgroups with [`pod_cgroups`] and the QoS tiers above them with
//! [`qos_cgroups`]), probing containers with [`probes`] (checks in [`checks`]), running
//! their hooks and killing them gracefully with [`lifecycle`], and recording [`events`];
//! containers get their environment from [`env`] and their volumes from [`volumes`]
//! (both put together by [`container_inputs`]). The pods come from [`pod_sources`]: the
//! API's pods bound to this node and the static pods of `<data dir>/manifests`
//! ([`static_pods`]), which run from their manifests (not from their mirror pods) and
//! are shown in the API by mirror pods. Under memory or disk pressure the [`eviction`]
//! manager sets the node's pressure conditions, reclaims unused images ([`image_gc`],
//! which also collects them above its high threshold) and dead containers, and has the pod
//! worker evict pods.
//!
//! Start order: the container runtime must answer (the kubelet waits a minute for it, then
//! fails); nothing waits for the API server. Registration, the Lease and the node status
//! run in the background and retry until the server answers, while the pod worker already
//! runs the static pods (and stops those whose manifest went while the agent was down); the
//! API's pods, the mirror pods and the removal of other sandboxes of pods in no source wait
//! for the first list of the API's pods. A static pod whose pod network needs the CNI
//! config still waits for it: that config is written once the Node has a pod CIDR (a config
//! written by an earlier run stays in place); `hostNetwork` static pods need nothing from
//! the API.
//!
//! Owns everything between the API's pods and the runtime's containers on this node. It
//! talks to the cluster only through the Kubernetes API (kube-rs) and to containers only
//! through CRI, except the pod-level cgroups it makes itself as upstream's kubelet does.
pub mod checks;
pub mod container_inputs;
pub mod env;
pub mod events;
pub mod eviction;
pub mod image_gc;
pub mod images;
pub mod lifecycle;
pub mod node;
pub mod observed;
pub mod plan;
pub mod pod_cgroups;
pub mod pod_sources;
pub mod pods;
pub mod probes;
pub mod qos_cgroups;
pub mod runtime_config;
pub mod static_pods;
pub mod status;
pub mod volumes;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::Context;
use corten_cri::runtime::CriClient;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::network::cni_config;

/// How the kubelet runs (corten-agent's flags).
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's IP.
    pub node_ip: String,
    /// The CRI socket.
    pub runtime_socket: PathBuf,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// Image tarballs to import.
    pub image_dir: Option<PathBuf>,
    /// The cgroup pods go under.
    pub cgroup_root: String,
    /// Where the CNI config is written.
    pub cni_conf_dir: PathBuf,
    /// The pod interface MTU.
    pub mtu: u32,
    /// The CAs (DER) whose client certificates the kubelet API accepts: the cluster CA from
    /// the node kubeconfig.
    pub client_cas: Vec<Vec<u8>>,
    /// Eviction thresholds and timing.
    pub eviction: eviction::EvictionPolicy,
    /// Image garbage collection.
    pub image_gc: image_gc::ImageGcPolicy,
    /// Other parts' metrics the kubelet API's `/metrics` appends (the service proxy's).
    pub more_metrics: Vec<crate::kubelet_api::metrics::MoreMetrics>,
}

/// Connects to the runtime, retrying while it starts (at most a minute).
async fn connect_runtime(socket: &std::path::Path) -> anyhow::Result<CriClient> {
    let mut last = None;
    for _ in 0..120 {
        match CriClient::connect(socket).await {
            Ok(mut client) => match client.version().await {
                Ok(_) => return Ok(client),
                Err(e) => last = Some(e.to_string()),
            },
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!(
        "the container runtime at {} did not answer: {}",
        socket.display(),
        last.unwrap_or_default()
    )
}

/// Waits for the node's pod CIDR and writes the CNI config for it.
async fn write_cni_config_when_ready(client: Client, config: KubeletConfig) {
    let nodes: Api<Node> = Api::all(client);
    for _ in 0..3600 {
        match nodes.get(&config.node_name).await {
            Ok(node) => {
                if let Some(cidr) = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                    let state = config.data_dir.join("cni");
                    match cni_config::write(&config.cni_conf_dir, &cidr, config.mtu, &state) {
                        Ok(path) => info!(%cidr, path = %path.display(), "wrote the CNI config"),
                        Err(e) => warn!(error = %e, "writing the CNI config failed"),
                    }
                    return;
                }
            }
            Err(e) => warn!(error = %e, "reading this node failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Starts the kubelet API (:10250, healthz on :10248); a failure to start is logged, the
/// pods still run.
fn spawn_kubelet_api(client: &Client, cri: &CriClient, config: &KubeletConfig) {
    let Ok(node_ip) = config.node_ip.parse() else {
        warn!(ip = %config.node_ip, "the node IP does not parse: no kubelet API");
        return;
    };
    let mut api = crate::kubelet_api::KubeletApiConfig::new(
        config.node_name.clone(),
        node_ip,
        config.data_dir.join("pki"),
        config.client_cas.clone(),
    );
    api.cgroup_root = config.cgroup_root.clone();
    api.data_dir = config.data_dir.clone();
    api.more_metrics = config.more_metrics.clone();
    let (client, cri) = (client.clone(), cri.clone());
    tokio::spawn(async move {
        if let Err(err) = crate::kubelet_api::run(client, cri, api).await {
            warn!(error = %err, "the kubelet API did not start");
        }
    });
}

/// How long registration waits between tries at most.
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(10);

/// Registers the node, retrying until the API server takes it, then keeps its Lease and
/// status (as upstream's kubelet, which runs its static pods meanwhile).
async fn register_and_heartbeat(
    client: Client,
    identity: node::NodeIdentity,
    mut cri: CriClient,
    pressure: tokio::sync::watch::Receiver<eviction::NodePressure>,
) {
    let mut delay = Duration::from_millis(500);
    let registered = loop {
        let images = images::node_images(&mut cri).await;
        match node::register(&client, &identity, images).await {
            Ok(node) => break node,
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "registering the node failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(REGISTER_RETRY_MAX);
            }
        }
    };
    tokio::spawn(node::renew_lease_forever(client.clone(), registered));
    node::report_status_forever(client, identity, cri, pressure).await;
}

/// Runs the kubelet until the process ends.
pub async fn run(client: Client, config: KubeletConfig) -> anyhow::Result<()> {
    crate::network::enable_forwarding().context("enabling IPv4 forwarding on the node")?;
    let cri = connect_runtime(&config.runtime_socket).await?;
    let version = cri
        .clone()
        .version()
        .await
        .context("asking the runtime its version")?;
    let identity = node::NodeIdentity {
        name: config.node_name.clone(),
        ip: config.node_ip.clone(),
        runtime_version: format!("{}://{}", version.runtime_name, version.runtime_version),
    };
    // The static pods first: they run whether or not the API server answers.
    let sources = pod_sources::PodSources::start(
        client.clone(),
        &config.node_name,
        config.data_dir.join("manifests"),
    );
    let mut seen = HashMap::new();
    if let Some(dir) = &config.image_dir {
        let imported = images::import_new(&config.runtime_socket, dir, &mut seen).await;
        info!(archives = imported, dir = %dir.display(), "imported image archives");
    }
    let (pressure, pressure_changes) = tokio::sync::watch::channel(Default::default());
    let admission_pressure = pressure_changes.clone();
    tokio::spawn(register_and_heartbeat(
        client.clone(),
        identity,
        cri.clone(),
        pressure_changes,
    ));
    if let Some(dir) = config.image_dir.clone() {
        tokio::spawn(images::watch_dir_forever(
            config.runtime_socket.clone(),
            dir,
            seen,
        ));
    }
    tokio::spawn(write_cni_config_when_ready(client.clone(), config.clone()));
    tokio::spawn(static_pods::keep_mirrors(
        client.clone(),
        config.node_name.clone(),
        sources.clone(),
    ));
    spawn_kubelet_api(&client, &cri, &config);
    let log_root = config.data_dir.join("pods");
    std::fs::create_dir_all(&log_root)
        .with_context(|| format!("creating {}", log_root.display()))?;
    let evictions = eviction::Evictions::default();
    tokio::spawn(eviction::run(
        client.clone(),
        cri.clone(),
        eviction::EvictionConfig {
            policy: config.eviction.clone(),
            node_name: config.node_name.clone(),
            cgroup_root: config.cgroup_root.clone(),
            data_dir: config.data_dir.clone(),
            pods_dir: log_root.clone(),
            pods: sources.clone(),
        },
        image_gc::ImageGc::new(config.image_gc),
        evictions.clone(),
        pressure,
    ));
    pods::run(
        client,
        cri,
        pods::PodWorkerConfig {
            node_name: config.node_name,
            host_ip: config.node_ip,
            cgroup_root: config.cgroup_root,
            log_root: log_root.to_string_lossy().into_owned(),
            evictions,
            pressure: admission_pressure,
        },
        sources,
    )
    .await;
    Ok(())
}
