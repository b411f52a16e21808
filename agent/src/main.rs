//! `corten-agent`: the node agent binary. Parses flags and wires the library's components;
//! no logic of its own.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use corten_agent::{
    kubelet::{self, KubeletConfig},
    kubelet_api::metrics::MoreMetrics,
    network::{
        bgp::speaker::{DEFAULT_HOLD_TIME, DEFAULT_LOCAL_AS},
        bgp_mode::{self, BgpModeConfig, PeerArg},
        sync::{self as network, NetworkConfig},
        NetworkMode,
    },
    proxy::{
        self, controller::ProxyConfig, desired::NodeContext, diff::BackendSelection,
        maglev::TableSize, metrics::ProxyMetrics, socket_lb::MapSizes,
    },
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
    /// BGP mode: this node's AS.
    #[arg(long, default_value_t = DEFAULT_LOCAL_AS, value_parser = clap::value_parser!(u32).range(1..))]
    bgp_as: u32,
    /// BGP mode: the hold time proposed to peers, seconds (0, or 3 to 65535).
    #[arg(long, default_value_t = DEFAULT_HOLD_TIME, value_parser = parse_hold_time)]
    bgp_hold_time: u16,
    /// BGP mode: peer with every other Node (an iBGP full mesh); `false` with route
    /// reflectors as `--bgp-peer`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    bgp_node_mesh: bool,
    /// BGP mode: an external peer or route reflector, `IP[:AS]` (the AS defaults to
    /// `--bgp-as`); repeat for several.
    #[arg(long = "bgp-peer", value_name = "IP[:AS]")]
    bgp_peers: Vec<PeerArg>,
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
    /// Capacity of the service proxy's session-affinity map (LRU: one entry per client and
    /// ClientIP-affinity Service; the oldest are forgotten first).
    #[arg(long, default_value_t = corten_ebpf_common::DEFAULT_MAX_AFFINITY)]
    proxy_max_affinity: u32,
    /// Capacity of the service proxy's terminating-backend map (one entry per terminating
    /// endpoint of each Service port, whose open connections are kept).
    #[arg(long, default_value_t = corten_ebpf_common::DEFAULT_MAX_TERMINATING)]
    proxy_max_terminating: u32,
    /// Capacity of the socket programs' reverse-NAT map (LRU: one entry per socket and
    /// backend a Service address was translated to, so that getpeername and received
    /// datagrams show the Service; the oldest are forgotten first).
    #[arg(long, default_value_t = corten_ebpf_common::DEFAULT_MAX_SOCK_REV_NAT)]
    proxy_max_sock_rev_nat: u32,
    /// An interface that clients from outside the cluster reach the node on: the service
    /// proxy's tc programs attach there and NAT NodePort, externalIP and LoadBalancer traffic
    /// to backends. Repeat for several.
    #[arg(long = "proxy-external-interface", value_name = "NAME")]
    proxy_external_interfaces: Vec<String>,
    /// Capacity of the tc programs' flow map (LRU, two entries per flow from outside; evicted
    /// flows are counted and logged).
    #[arg(long, default_value_t = corten_ebpf_common::DEFAULT_MAX_NAT_FLOWS)]
    proxy_max_nat_flows: u32,
    /// How the tc programs pick a backend for a new flow from outside the cluster (NodePorts,
    /// externalIPs, LoadBalancer IPs): `random`, or `maglev`, consistent hashing of the flow
    /// over a table per Service port, so that one flow gets the same backend on every node
    /// and after restarts. ClientIP session affinity still comes first; connections made on
    /// the node always pick at random. (Cilium: `loadBalancer.algorithm`.)
    #[arg(long, value_enum, default_value_t = LoadBalancing::Random)]
    proxy_load_balancing: LoadBalancing,
    /// Entries of each Maglev table: a prime from 251 to 131071, well above 100 times the
    /// largest number of backends; larger tables spread more evenly and cost more memory.
    /// (Cilium: `maglev.tableSize`.)
    #[arg(long, default_value_t = TableSize::default())]
    proxy_maglev_table_size: TableSize,
    /// Capacity of the Maglev map: table entries of all Services together (each Service port
    /// reachable from outside takes one table; entries are allocated as tables are written,
    /// the kernel's hash buckets take about 16 bytes per entry of capacity at once). Service
    /// ports beyond it pick at random, with a warning. Default with `maglev`: 16 tables of
    /// `--proxy-maglev-table-size`.
    #[arg(long)]
    proxy_max_maglev_entries: Option<u32>,
    /// Hard eviction thresholds, `signal<quantity|percent` separated by commas (signals
    /// memory.available, nodefs.available, nodefs.inodesFree, imagefs.available,
    /// imagefs.inodesFree); empty for none.
    #[arg(long, default_value = kubelet::eviction::DEFAULT_EVICTION_HARD)]
    eviction_hard: String,
    /// Soft eviction thresholds, as `--eviction-hard`; each needs a grace period.
    #[arg(long, default_value = "")]
    eviction_soft: String,
    /// How long each soft threshold must be met before pods are evicted,
    /// `signal=duration` separated by commas (e.g. `memory.available=1m30s`).
    #[arg(long, default_value = "")]
    eviction_soft_grace_period: String,
    /// The longest grace period (seconds) of a pod evicted for a soft threshold; a pod's own
    /// shorter one is kept.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    eviction_max_pod_grace_period: i64,
    /// How much more than its threshold a met threshold must free, `signal=quantity`
    /// separated by commas.
    #[arg(long, default_value = "")]
    eviction_minimum_reclaim: String,
    /// How long a pressure condition stays True after its last met threshold.
    #[arg(long, default_value = "5m0s")]
    eviction_pressure_transition_period: String,
    /// How often eviction signals are observed.
    #[arg(long, default_value = "10s")]
    eviction_monitoring_interval: String,
    /// Image filesystem usage percent at which unused images are collected.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: u8,
    /// Image filesystem usage percent image collection brings usage down to.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
    /// The least age of an unused image before it is collected.
    #[arg(long, default_value = "2m0s")]
    minimum_image_ttl_duration: String,
}

/// `--proxy-load-balancing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LoadBalancing {
    /// A uniformly random backend.
    Random,
    /// Maglev consistent hashing of the flow.
    Maglev,
}

impl Args {
    /// The backend selection the proxy flags ask for, and the Maglev map's capacity.
    fn backend_selection(&self) -> anyhow::Result<(BackendSelection, u32)> {
        Ok(match self.proxy_load_balancing {
            LoadBalancing::Random => (
                BackendSelection::Random,
                self.proxy_max_maglev_entries
                    .unwrap_or(corten_ebpf_common::DEFAULT_MAX_MAGLEV_ENTRIES),
            ),
            LoadBalancing::Maglev => {
                let size = self.proxy_maglev_table_size;
                let capacity = self.proxy_max_maglev_entries.unwrap_or_else(|| {
                    size.get()
                        .saturating_mul(corten_ebpf_common::DEFAULT_MAGLEV_TABLES)
                });
                anyhow::ensure!(
                    capacity >= size.get(),
                    "--proxy-max-maglev-entries ({capacity}) cannot hold one Maglev table of \
                     --proxy-maglev-table-size ({size})"
                );
                (BackendSelection::Maglev(size), capacity)
            }
        })
    }
}

/// A hold time RFC 4271 allows: 0 or at least 3 seconds.
fn parse_hold_time(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(t) if t == 0 || t >= 3 => Ok(t),
        _ => Err(format!(
            "{s:?} is not a BGP hold time: use 0 (no keepalives) or 3 to 65535 seconds"
        )),
    }
}

/// Most glibc malloc arenas. glibc makes up to 8 per core, one for each thread that allocates
/// while another holds an arena, and each keeps the free memory of its peak. In `cargo xtask
/// bench podstart` (100 pods at once) the agent ended at 27.8 MB resident, peak 33.8 MB, with
/// this cap, and at 28.8 MB, peak 36.3 MB, without it (`MALLOC_ARENA_MAX=16`; one run each).
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas ([`MALLOC_ARENAS`]) unless `MALLOC_ARENA_MAX` is set; called
/// first thing in `main`, before any thread exists.
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc tunable; no other thread runs yet.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } != 1 {
            eprintln!("corten-agent: could not cap malloc arenas; using glibc's default");
        }
    }
}

fn main() -> anyhow::Result<()> {
    cap_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.network != NetworkMode::Bgp && !args.bgp_peers.is_empty() {
        anyhow::bail!(
            "--bgp-peer needs --network bgp (the network mode is {})",
            args.network
        );
    }
    if args.image_gc_low_threshold > args.image_gc_high_threshold {
        anyhow::bail!(
            "--image-gc-low-threshold ({}) must not exceed --image-gc-high-threshold ({})",
            args.image_gc_low_threshold,
            args.image_gc_high_threshold
        );
    }
    let (selection, maglev_capacity) = args.backend_selection()?;
    let eviction =
        kubelet::eviction::EvictionPolicy::from_flags(&kubelet::eviction::EvictionFlags {
            hard: &args.eviction_hard,
            soft: &args.eviction_soft,
            soft_grace_period: &args.eviction_soft_grace_period,
            max_pod_grace_period: args.eviction_max_pod_grace_period,
            minimum_reclaim: &args.eviction_minimum_reclaim,
            transition: &args.eviction_pressure_transition_period,
            interval: &args.eviction_monitoring_interval,
        })
        .context("the eviction flags")?;
    let image_gc = kubelet::image_gc::ImageGcPolicy {
        high_percent: args.image_gc_high_threshold,
        low_percent: args.image_gc_low_threshold,
        min_age: kubelet::eviction::parse_duration(&args.minimum_image_ttl_duration)
            .context("--minimum-image-ttl-duration")?,
        ..Default::default()
    };
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
    let bgp = if args.network == NetworkMode::Bgp {
        let config = BgpModeConfig {
            node_name: args.node_name.clone(),
            node_ip,
            local_as: args.bgp_as,
            hold_time: args.bgp_hold_time,
            node_mesh: args.bgp_node_mesh,
            external_peers: args.bgp_peers,
        };
        Some(bgp_mode::start(client.clone(), config).await?)
    } else {
        None
    };
    let (learned, bgp_task) = match bgp {
        Some(bgp) => (Some(bgp.learned), Some(bgp.task)),
        None => (None, None),
    };
    let network_config = NetworkConfig {
        mode: args.network,
        node_name: args.node_name.clone(),
        node_ip,
        cluster_cidr: args.cluster_cidr,
    };
    let network = tokio::spawn({
        let client = client.clone();
        async move {
            let bgp = async move {
                match bgp_task {
                    Some(task) => match task.await {
                        Ok(result) => result.context("the BGP speaker failed"),
                        Err(e) => Err(anyhow::anyhow!("the BGP task ended: {e}")),
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = network::run(client, network_config, learned) => result,
                result = bgp => result,
            }
        }
    });
    let proxy_metrics = args
        .socket_lb_cgroup
        .as_ref()
        .map(|_| ProxyMetrics::default());
    let more_metrics = proxy_metrics
        .iter()
        .map(|metrics| {
            let metrics = metrics.clone();
            MoreMetrics::new(move |out| metrics.render(out))
        })
        .collect();
    let proxy = args
        .socket_lb_cgroup
        .zip(proxy_metrics)
        .map(|(cgroup, metrics)| {
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
                        affinity: args.proxy_max_affinity,
                        terminating: args.proxy_max_terminating,
                        sock_rev_nat: args.proxy_max_sock_rev_nat,
                        nat_flows: args.proxy_max_nat_flows,
                        maglev: maglev_capacity,
                    },
                    selection,
                    external_interfaces: args.proxy_external_interfaces,
                    metrics,
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
            eviction,
            image_gc,
            more_metrics,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let required = [
            "corten-agent",
            "--kubeconfig",
            "k",
            "--node-name",
            "n",
            "--node-ip",
        ];
        Args::try_parse_from(required.iter().chain(&["10.0.0.1"]).chain(extra))
    }

    #[test]
    fn proxy_load_balancing_defaults_to_random() -> anyhow::Result<()> {
        let args = parse(&[])?;
        assert_eq!(
            args.backend_selection()?,
            (
                BackendSelection::Random,
                corten_ebpf_common::DEFAULT_MAX_MAGLEV_ENTRIES
            )
        );
        assert_eq!(args.proxy_maglev_table_size, TableSize::default());
        Ok(())
    }

    #[test]
    fn proxy_maglev_flags_choose_the_table_size() -> anyhow::Result<()> {
        let args = parse(&["--proxy-load-balancing", "maglev"])?;
        assert_eq!(
            args.backend_selection()?,
            (BackendSelection::Maglev(TableSize::default()), 16_381 * 16)
        );
        let args = parse(&[
            "--proxy-load-balancing=maglev",
            "--proxy-maglev-table-size",
            "1021",
        ])?;
        assert_eq!(
            args.backend_selection()?,
            (BackendSelection::Maglev(TableSize::new(1021)?), 1021 * 16)
        );
        let args = parse(&[
            "--proxy-load-balancing=maglev",
            "--proxy-max-maglev-entries=50000",
        ])?;
        assert_eq!(args.backend_selection()?.1, 50_000);
        Ok(())
    }

    #[test]
    fn proxy_maglev_flags_refuse_bad_values() -> anyhow::Result<()> {
        let refused = |extra: &[&str]| match parse(extra) {
            Ok(args) => panic!("{extra:?} accepted: {args:?}"),
            Err(e) => e.to_string(),
        };
        let message = refused(&["--proxy-maglev-table-size", "16383"]);
        assert!(message.contains("16383 is not a prime"), "{message}");
        let message = refused(&["--proxy-maglev-table-size", "101"]);
        assert!(message.contains("outside 251..=131071"), "{message}");
        let message = refused(&["--proxy-load-balancing", "roundrobin"]);
        assert!(
            message.contains("random") && message.contains("maglev"),
            "{message}"
        );
        // A map that cannot hold one table is refused at start.
        let args = parse(&[
            "--proxy-load-balancing=maglev",
            "--proxy-max-maglev-entries=1000",
        ])?;
        let message = args
            .backend_selection()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("cannot hold one Maglev table"),
            "{message}"
        );
        Ok(())
    }
}
