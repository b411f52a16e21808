//! `corten-server`: the control-plane binary. Parses flags, opens the store (embedded, or
//! etcd with `--datastore-endpoint`) and runs the API server; `issue-kubeconfig` writes a
//! node's kubeconfig from the data directory's CA instead. No logic of its own.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use corten_control_plane::{
    apiserver::{
        self, serviceaccount_token::TokenOptions, services, services::ServiceNetwork,
        ApiServerConfig,
    },
    controllers::{self, ControlPlaneOptions},
    pki,
    store::{
        embedded::{EmbeddedOptions, EmbeddedStore},
        etcd::{parse_endpoints, EtcdStore},
        Store,
    },
};

/// corten's control plane: API server, datastore, scheduler and controllers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where the server keeps its state (store, PKI, admin kubeconfig).
    #[arg(long, global = true, default_value = "/var/lib/corten/server")]
    data_dir: PathBuf,
    /// Without a command, the server runs; with one, only --data-dir counts.
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to serve the API on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port of the API.
    #[arg(long, default_value_t = 6443)]
    https_port: u16,
    /// etcd endpoints (`http://h:p[,h:p...]`); without it the embedded store is used.
    #[arg(long)]
    datastore_endpoint: Option<String>,
    /// Pod network of the cluster.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Service network of the cluster.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// Ports for NodePort Services and healthCheckNodePorts: `first-last`, `first+count` or
    /// one port.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Extra names or addresses for the serving certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Seconds a leader Lease (scheduler, controllers) lasts without renewal.
    #[arg(long, default_value_t = 15)]
    leader_elect_lease_duration: u64,
    /// Seconds a leader keeps trying to renew before it stops leading.
    #[arg(long, default_value_t = 10)]
    leader_elect_renew_deadline: u64,
    /// Seconds between election attempts.
    #[arg(long, default_value_t = 2)]
    leader_elect_retry_period: u64,
    /// The prefix length of each node's pod CIDR (carved from --cluster-cidr).
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Seconds a node may go without a heartbeat before it is marked Unknown.
    #[arg(long, default_value_t = 50)]
    node_monitor_grace_period: u64,
    /// Seconds between node health checks.
    #[arg(long, default_value_t = 5)]
    node_monitor_period: u64,
    /// Runs the API server alone: no scheduler, no controllers.
    #[arg(long)]
    disable_controllers: bool,
    /// The `iss` of service-account tokens (and the only issuer whose tokens are accepted).
    #[arg(long, default_value = apiserver::serviceaccount_token::DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// Audiences the API accepts in tokens (comma-separated); the issuer when not given.
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// Longest validity of an issued service-account token (`48h`, `90m`, `3600s` or
    /// seconds); longer requests get this. No limit when not given.
    #[arg(long, value_parser = duration_seconds)]
    service_account_max_token_expiration: Option<i64>,
}

/// A duration flag in seconds: a number of seconds, or a number with an `h`, `m` or `s`
/// suffix.
fn duration_seconds(text: &str) -> Result<i64, String> {
    let (number, unit) = match text.char_indices().last() {
        Some((at, 'h')) => (&text[..at], 3600),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 's')) => (&text[..at], 1),
        _ => (text, 1),
    };
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 48h, 90m or 3600s"))?;
    number
        .checked_mul(unit)
        .filter(|seconds| *seconds > 0)
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

/// What `corten-server` can do besides serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Write a kubeconfig for a node's agent (offline): a new client certificate for
    /// `system:node:NAME` in group `system:nodes`, signed by the CA in --data-dir.
    IssueKubeconfig(IssueKubeconfig),
}

/// The flags of `issue-kubeconfig`.
#[derive(Debug, clap::Args)]
struct IssueKubeconfig {
    /// The node's name (its Node object's name).
    #[arg(long)]
    node_name: String,
    /// The API server URL the node uses, e.g. `https://10.0.0.1:6443`.
    #[arg(long)]
    server: String,
    /// Where to write the kubeconfig (mode 0600; replaced if it exists).
    #[arg(long)]
    out: PathBuf,
}

/// `issue-kubeconfig`: the PKI's node kubeconfig, written to `--out`.
fn issue_kubeconfig(data_dir: &Path, issue: &IssueKubeconfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        issue.server.starts_with("https://"),
        "--server must be an https:// URL, not {:?}",
        issue.server
    );
    let ca = pki::ClusterCa::load(&pki::tls_dir(data_dir))?;
    let kubeconfig = pki::node_kubeconfig(&ca, &issue.node_name, &issue.server)?;
    pki::write_kubeconfig(&issue.out, &kubeconfig)?;
    tracing::info!(
        user = %pki::node_user(&issue.node_name),
        kubeconfig = %issue.out.display(),
        "issued a node kubeconfig"
    );
    Ok(())
}

/// The first usable address of an IPv4 CIDR (the `kubernetes` Service's ClusterIP).
fn first_address(cidr: &str) -> anyhow::Result<IpAddr> {
    let (base, bits) = cidr
        .split_once('/')
        .context("a CIDR looks like 10.43.0.0/16")?;
    let base: std::net::Ipv4Addr = base.parse().context("the CIDR's address")?;
    let bits: u32 = bits.parse().context("the CIDR's prefix length")?;
    anyhow::ensure!(bits <= 30, "the CIDR {cidr} is too small");
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Ok(IpAddr::V4((u32::from(base) & mask).wrapping_add(1).into()))
}

/// Most threads the runtime runs blocking work on (store reads, watch catch-up), per core.
/// Each thread that allocates gets a malloc arena of its own (glibc makes up to 8 per core),
/// and every arena keeps free memory its largest read left behind: with tokio's default
/// (512) the API benchmark's 16 clients grew the server to ~34 threads; with this cap it has
/// 8, and the API server alone ends the benchmark at 97 MB resident instead of 106 MB. The
/// reads are CPU-bound on redb's cache, so many more threads than cores buy nothing.
const BLOCKING_THREADS_PER_CORE: usize = 2;

/// Most glibc malloc arenas. glibc makes up to 8 per core, one per thread that allocates
/// while another holds an arena, and each keeps the free memory its peak left behind: in
/// `cargo xtask bench api` the server ended at 145 MB resident with glibc's default and at
/// 124–126 MB with one or two arenas; create p99 stayed near 1 ms and the 10k-pod list
/// between 52 and 86 ms (the machine was busy with builds, so latencies are noisy).
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas ([`MALLOC_ARENAS`]) unless `MALLOC_ARENA_MAX` is set; called
/// first thing in `main`, before any thread exists.
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc tunable; no other thread runs yet.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } != 1 {
            eprintln!("corten-server: could not cap malloc arenas; using glibc's default");
        }
    }
}

fn main() -> anyhow::Result<()> {
    cap_malloc_arenas();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS_PER_CORE * cores)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Some(Command::IssueKubeconfig(issue)) = &args.command {
        return issue_kubeconfig(&args.data_dir, issue);
    }
    first_address(&args.cluster_cidr).context("--cluster-cidr")?;
    let service_network = ServiceNetwork::parse(&args.service_cidr)
        .with_context(|| {
            format!(
                "--service-cidr {:?} is not an IPv4 CIDR of /30 or larger",
                args.service_cidr
            )
        })?
        .with_node_ports(
            services::parse_port_range(&args.service_node_port_range).with_context(|| {
                format!(
                    "--service-node-port-range {:?} is not a port range such as 30000-32767",
                    args.service_node_port_range
                )
            })?,
        );
    let store: Arc<dyn Store> = match &args.datastore_endpoint {
        Some(flag) => Arc::new(EtcdStore::connect(&parse_endpoints(flag)?).await?),
        None => EmbeddedStore::open(&args.data_dir.join("db"), EmbeddedOptions::default())?,
    };
    let config = ApiServerConfig {
        data_dir: args.data_dir,
        bind_address: args.bind_address,
        https_port: args.https_port,
        tls_sans: args.tls_san,
        service_network,
        tokens: TokenOptions {
            api_audiences: if args.api_audiences.is_empty() {
                vec![args.service_account_issuer.clone()]
            } else {
                args.api_audiences.clone()
            },
            issuer: args.service_account_issuer.clone(),
            max_expiration_seconds: args.service_account_max_token_expiration,
        },
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "corten-server".to_owned());
    let mut options = ControlPlaneOptions::new(format!("{host}_{}", uuid::Uuid::new_v4()));
    options.lease_duration = Duration::from_secs(args.leader_elect_lease_duration.max(1));
    options.renew_deadline = Duration::from_secs(args.leader_elect_renew_deadline.max(1));
    options.retry_period = Duration::from_secs(args.leader_elect_retry_period.max(1));
    anyhow::ensure!(
        options.renew_deadline < options.lease_duration,
        "--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration"
    );
    options.cluster_cidr = args.cluster_cidr.clone();
    options.node_cidr_mask_size = args.node_cidr_mask_size;
    options.node_monitor_grace_period = Duration::from_secs(args.node_monitor_grace_period.max(1));
    options.node_monitor_period = Duration::from_secs(args.node_monitor_period.max(1));
    corten_control_plane::controllers::nodeipam::CidrSet::new(
        &options.cluster_cidr,
        options.node_cidr_mask_size,
    )
    .context("--cluster-cidr / --node-cidr-mask-size")?;
    options.scheduler = !args.disable_controllers;
    options.controllers = !args.disable_controllers;
    apiserver::run(config, store, |rest| {
        controllers::start(rest, &options).context("starting the scheduler and controllers")
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_command_the_server_flags_parse_as_before() -> anyhow::Result<()> {
        let args = Args::try_parse_from([
            "corten-server",
            "--data-dir",
            "/d",
            "--bind-address",
            "127.0.0.1",
            "--https-port",
            "7443",
            "--tls-san",
            "a.example",
        ])?;
        assert!(args.command.is_none());
        assert_eq!(args.data_dir, Path::new("/d"));
        assert_eq!(args.https_port, 7443);
        assert_eq!(args.tls_san, ["a.example"]);
        Ok(())
    }

    #[test]
    fn token_flags_default_to_upstreams_issuer_and_parse_durations() -> anyhow::Result<()> {
        let args = Args::try_parse_from(["corten-server"])?;
        assert_eq!(
            args.service_account_issuer,
            "https://kubernetes.default.svc.cluster.local"
        );
        assert!(args.api_audiences.is_empty());
        assert_eq!(args.service_account_max_token_expiration, None);
        let args = Args::try_parse_from([
            "corten-server",
            "--api-audiences",
            "a,b",
            "--service-account-max-token-expiration",
            "48h",
        ])?;
        assert_eq!(args.api_audiences, ["a", "b"]);
        assert_eq!(args.service_account_max_token_expiration, Some(48 * 3600));
        assert_eq!(duration_seconds("90m"), Ok(5400));
        assert_eq!(duration_seconds("600"), Ok(600));
        assert!(duration_seconds("-5s").is_err());
        assert!(duration_seconds("h").is_err());
        Ok(())
    }

    #[test]
    fn issue_kubeconfig_takes_the_data_dir_before_or_after_it() -> anyhow::Result<()> {
        for argv in [
            &["corten-server", "--data-dir", "/d", "issue-kubeconfig"][..],
            &["corten-server", "issue-kubeconfig", "--data-dir", "/d"][..],
        ] {
            let mut argv = argv.to_vec();
            argv.extend([
                "--node-name",
                "n0",
                "--server",
                "https://172.30.0.10:6443",
                "--out",
                "/k",
            ]);
            let args = Args::try_parse_from(&argv)?;
            assert_eq!(args.data_dir, Path::new("/d"));
            let Some(Command::IssueKubeconfig(issue)) = args.command else {
                anyhow::bail!("{argv:?} parsed without its command");
            };
            assert_eq!(issue.node_name, "n0");
            assert_eq!(issue.out, Path::new("/k"));
        }
        Ok(())
    }
}
