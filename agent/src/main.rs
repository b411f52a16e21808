//! `corten-agent`: the node agent binary. Parses flags and wires the library's components;
//! no logic of its own.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use corten_agent::{
    kubelet::{self, KubeletConfig},
    network::{
        sync::{self as network, NetworkConfig},
        NetworkMode,
    },
    proxy::{self, controller::ProxyConfig, desired::NodeContext, socket_lb::MapSizes},
};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// corten's node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The API server URL (overrides the kubeconfig's).
    #[arg(long)]
    server: Option<String>,
    /// The node's kubeconfig (a `system:node:NAME` client certificate).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// This node's name.
    #[arg(long)]
    node_name: String,
    /// The CRI socket, `unix:///run/containerd/containerd.sock`.
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    container_runtime_endpoint: String,
    /// The agent's state directory.
    #[arg(long, default_value = "/var/lib/corten/agent")]
    data_dir: PathBuf,
    /// OCI image-layout tarballs to import into the runtime.
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// The cgroup pods are placed under.
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    /// This node's IP (reported as InternalIP and as the pods' hostIP).
    #[arg(long)]
    node_ip: String,
    /// Where CNI plugins are (the runtime reads this from its own config; kept for
    /// compatibility with the lab's command line).
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    /// Where the CNI config is written.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The pod interface MTU.
    #[arg(long, default_value_t = 1450)]
    mtu: u32,
    /// How pods on different nodes reach each other: vxlan, host-gw or bgp.
    #[arg(long, default_value = "vxlan")]
    network: NetworkMode,
    /// The cluster's pod CIDR (the server's `--cluster-cidr`): pod traffic leaving it is
    /// masqueraded to the node's address.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: corten_agent::network::peers::Cidr,
    /// The cgroup v2 directory the service proxy's socket programs attach to (its whole
    /// subtree is load-balanced). The service proxy runs only when this is given.
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
    /// A directory on a bpffs where the service proxy pins its maps, so that they outlive a
    /// restart and are reconciled instead of recreated.
    #[arg(long)]
    bpffs_pin_dir: Option<PathBuf>,
    /// Capacity of the service proxy's frontend map (Service addresses and ports).
    #[arg(long, default_value_t = corten_ebpf_common::DEFAULT_MAX_FRONTENDS)]
    proxy_max_frontends: u32,
    /// Capacity of the service proxy's service map (backend sets).
    #[arg(long, default_value_t = corten_ebpf_common::DEFAULT_MAX_SERVICES)]
    proxy_max_services: u32,
    /// Capacity of the service proxy's backend map (all backends of all services).
    #[arg(long, default_value_t = corten_ebpf_common::DEFAULT_MAX_BACKENDS)]
    proxy_max_backends: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let socket = args
        .container_runtime_endpoint
        .strip_prefix("unix://")
        .context("--container-runtime-endpoint must be a unix:// URL")?;
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig")?;
    if let Some(server) = &args.server {
        config.cluster_url = server.parse().context("--server is not a URL")?;
    }
    // The cluster CA verifies the API server's client certificate on the kubelet API.
    let client_cas = config.root_cert.clone().unwrap_or_default();
    let client = kube::Client::try_from(config).context("building the API client")?;
    let node_ip: std::net::Ipv4Addr = args
        .node_ip
        .parse()
        .context("--node-ip must be an IPv4 address")?;
    let network = tokio::spawn(network::run(
        client.clone(),
        NetworkConfig {
            mode: args.network,
            node_name: args.node_name.clone(),
            node_ip,
            cluster_cidr: args.cluster_cidr,
        },
        None,
    ));
    let proxy = args.socket_lb_cgroup.map(|cgroup| {
        tokio::spawn(proxy::controller::run(
            client.clone(),
            ProxyConfig {
                node: NodeContext {
                    node_name: args.node_name.clone(),
                    node_ips: vec![node_ip],
                },
                cgroup,
                pin_dir: args.bpffs_pin_dir,
                sizes: MapSizes {
                    frontends: args.proxy_max_frontends,
                    services: args.proxy_max_services,
                    backends: args.proxy_max_backends,
                    ..MapSizes::default()
                },
            },
        ))
    });
    let proxy = async move {
        match proxy {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let kubelet = kubelet::run(
        client,
        KubeletConfig {
            node_name: args.node_name,
            node_ip: args.node_ip,
            runtime_socket: PathBuf::from(socket),
            data_dir: args.data_dir,
            image_dir: args.image_dir,
            cgroup_root: args.cgroup_root,
            cni_conf_dir: args.cni_conf_dir,
            mtu: args.mtu,
            client_cas,
        },
    );
    tokio::select! {
        result = kubelet => result,
        joined = network => match joined {
            Ok(result) => result.context("the pod network failed"),
            Err(e) => Err(anyhow::anyhow!("the pod network task ended: {e}")),
        },
        joined = proxy => match joined {
            Ok(result) => result.context("the service proxy failed"),
            Err(e) => Err(anyhow::anyhow!("the service proxy task ended: {e}")),
        },
    }
}
