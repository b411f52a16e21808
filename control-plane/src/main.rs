//! `corten-server`: the control-plane binary. Parses flags, opens the store (embedded, or
//! etcd with `--datastore-endpoint`) and runs the API server; no logic of its own.
use std::{net::IpAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use corten_control_plane::{
    apiserver::{self, services::ServiceNetwork, ApiServerConfig},
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
    #[arg(long, default_value = "/var/lib/corten/server")]
    data_dir: PathBuf,
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
    /// Extra names or addresses for the serving certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    first_address(&args.cluster_cidr).context("--cluster-cidr")?;
    let service_network = ServiceNetwork::parse(&args.service_cidr).with_context(|| {
        format!(
            "--service-cidr {:?} is not an IPv4 CIDR of /30 or larger",
            args.service_cidr
        )
    })?;
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
    };
    apiserver::run(config, store).await
}
