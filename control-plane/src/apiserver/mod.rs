//! The Kubernetes API server (DESIGN.md §5): HTTPS with client-certificate authentication,
//! discovery, and the REST verbs with watch over the store, so that unmodified clients
//! (kubectl, the Python client, kube-rs) drive corten as any cluster.
//!
//! [`server`] owns the wire (TLS, HTTP, routing; [`protobuf`] turns Kubernetes protobuf
//! request bodies into the JSON the rest reads), [`serviceaccount_token`] service-account
//! tokens (issued by the `token` subresource, accepted as bearer tokens; [`jwt`] signs and
//! verifies them), [`kubelet_proxy`] and [`kubelet_streams`] the subresources kubelets answer
//! (`pods/log`, `pods/exec`, `pods/attach`, `pods/portforward`, `nodes/proxy`), [`rest`]
//! the verbs, [`watch`] watch
//! streams, [`resources`] the table of served resources, [`discovery`] and [`table`] the
//! documents kubectl reads, [`objects`] metadata rules, [`namespaces`] namespace lifecycle,
//! [`status`] errors. It must not reach into the scheduler or controllers: they are API
//! clients like any other.
pub mod apply;
pub mod crds;
pub mod defaults;
pub mod discovery;
pub mod events;
pub mod jwt;
pub mod kubelet_proxy;
pub mod kubelet_streams;
pub mod namespaces;
pub mod objects;
pub mod openapi;
pub mod priority;
pub mod protobuf;
pub mod resources;
pub mod rest;
pub mod server;
pub mod serviceaccount_token;
pub mod services;
pub mod status;
pub mod strategic;
pub mod table;
pub mod tolerations;
pub mod watch;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore,
};
use serde_json::json;
use tracing::info;

use crate::{pki, store::Store};

/// How the API server is set up (from `corten-server`'s flags).
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Data directory (PKI, kubeconfig).
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub bind_address: IpAddr,
    /// HTTPS port.
    pub https_port: u16,
    /// Extra names and addresses for the serving certificate.
    pub tls_sans: Vec<String>,
    /// The service network.
    pub service_network: services::ServiceNetwork,
    /// How service-account tokens are issued and accepted.
    pub tokens: serviceaccount_token::TokenOptions,
}

/// The address clients should use for a bind address (loopback for "any").
fn client_address(bind: IpAddr) -> IpAddr {
    if bind.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bind
    }
}

/// Sets up PKI and kubeconfig, creates the system namespaces, hands the REST layer to
/// `clients` (the in-process scheduler and controllers start there), and serves until the
/// process ends. Returns only through the error path.
pub async fn run(
    config: ApiServerConfig,
    store: Arc<dyn Store>,
    clients: impl FnOnce(&rest::Rest) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (tls, listener, address) = prepare(&config).await?;
    let signing_key = pki::service_account_key(&pki::tls_dir(&config.data_dir))?;
    let tokens =
        serviceaccount_token::ServiceAccountTokens::new(config.tokens.clone(), &signing_key)
            .context("loading the service-account signing key (tls/sa.key)")?;
    let rest = rest::Rest {
        store,
        registry: Arc::new(resources::Registry::new()),
        services: config.service_network,
    };
    namespaces::bootstrap(&rest)
        .await
        .map_err(|e| anyhow::anyhow!("creating the system namespaces: {}", e.message))?;
    priority::bootstrap(&rest)
        .await
        .map_err(|e| anyhow::anyhow!("creating the system PriorityClasses: {}", e.message))?;
    services::bootstrap_kubernetes_service(
        &rest,
        client_address(config.bind_address),
        config.https_port,
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the kubernetes Service: {}", e.message))?;
    // CRDs are served before the first request, then followed as they change.
    let revision = crds::sync_all(&rest)
        .await
        .map_err(|e| anyhow::anyhow!("loading the CRDs: {}", e.message))?;
    crds::run(rest.clone(), revision);
    clients(&rest)?;
    let ca = pki::ClusterCa::load(&pki::tls_dir(&config.data_dir))?;
    let kubelet_identity = ca.client_pair(
        "kubelet-client",
        kubelet_proxy::KUBELET_CLIENT_USER,
        &[kubelet_proxy::KUBELET_CLIENT_GROUP],
    )?;
    let kubelet = kubelet_proxy::KubeletClient::new(&kubelet_identity)
        .context("building the kubelet client")?;
    let state = Arc::new(server::ServerState {
        rest,
        address,
        version: version(),
        tokens,
        kubelet,
    });
    info!("serving the Kubernetes API");
    server::serve(state, listener, tls).await;
    Ok(())
}

/// The `/version` document: the Kubernetes version corten serves.
pub fn version() -> serde_json::Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0-corten.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

async fn prepare(
    config: &ApiServerConfig,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, tokio::net::TcpListener, String)> {
    let tls_dir = config.data_dir.join("tls");
    let ca = pki::ClusterCa::load_or_create(&tls_dir)?;
    let client_ip = client_address(config.bind_address);
    let mut dns = vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ];
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(config.service_network.first()),
    ];
    if !config.bind_address.is_unspecified() {
        ips.push(config.bind_address);
    }
    for san in &config.tls_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.clone()),
        }
    }
    let serving = ca.issue_serving(&dns, &ips)?;
    let admin = ca.client_pair("admin", "admin", &["system:masters"])?;
    let address = SocketAddr::new(client_ip, config.https_port).to_string();
    let server_url = format!("https://{address}");
    let kubeconfig_path = config.data_dir.join("admin.kubeconfig");
    pki::write_kubeconfig(
        &kubeconfig_path,
        &pki::kubeconfig(&server_url, ca.cert_pem(), "admin", &admin),
    )?;
    info!(kubeconfig = %kubeconfig_path.display(), "wrote the admin kubeconfig");

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.context("reading the CA certificate")?)?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("reading the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .context("reading the serving key")?;
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("configuring TLS")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let bind = SocketAddr::new(config.bind_address, config.https_port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("listening on {bind}"))?;
    info!(%bind, "listening");
    Ok((Arc::new(tls), listener, address))
}
