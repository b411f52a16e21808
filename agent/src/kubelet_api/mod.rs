//! The kubelet API (DESIGN.md §7, upstream kubelet's server): HTTPS on `:10250` with client
//! certificates from the cluster CA ([`tls`]), serving `/healthz`, `/pods` (this node's pods),
//! `/containerLogs/NAMESPACE/POD/CONTAINER` (CRI log files, [`logs`], of the instance
//! [`containers`] picks), `/exec/...`, `/attach/...` and `/portForward/...` (forwarded to
//! the runtime's streaming server, [`streaming`]), `/stats/summary` (the Summary API,
//! [`stats`], from the cgroups and `/proc` through [`resource_usage`]) and `/metrics`
//! ([`metrics`]); and plain `/healthz` on `127.0.0.1:10248`.
//! The API server proxies `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` here.
//!
//! Owns the node's HTTP endpoints and who may use them (the API server's kubelet client and
//! `system:masters`). It reads pods from the API and container state from CRI; it must not
//! change either.
pub mod containers;
pub mod logs;
pub mod metrics;
pub mod resource_usage;
pub mod stats;
pub mod streaming;
pub mod tls;

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use bytes::Bytes;
use corten_cri::runtime::CriClient;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{HeaderValue, CONTENT_TYPE},
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1::{
    Container, ContainerState, ContainerStatusRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandbox,
};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{api::ListParams, Api, Client};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use self::{logs::LogOptions, tls::Identity};

/// The kubelet API's port (upstream's default).
pub const KUBELET_PORT: u16 = 10250;
/// The plain-HTTP healthz port on loopback (upstream's default).
pub const HEALTHZ_PORT: u16 = 10248;
/// The user the API server's kubelet client certificate names (upstream's convention).
pub const APISERVER_USER: &str = "kube-apiserver-kubelet-client";
/// The group allowed everything.
pub const MASTERS_GROUP: &str = "system:masters";

/// Failures starting the kubelet API.
#[derive(Debug, thiserror::Error)]
pub enum KubeletApiError {
    /// The certificates could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A port could not be bound.
    #[error("listening on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the kubelet API runs.
#[derive(Debug, Clone)]
pub struct KubeletApiConfig {
    /// This node's name (only its pods are served).
    pub node_name: String,
    /// This node's address (named in the serving certificate).
    pub node_ip: IpAddr,
    /// Where the serving certificate is kept (`<data dir>/pki`).
    pub pki_dir: PathBuf,
    /// The CAs (DER) whose client certificates are accepted: the cluster CA.
    pub client_cas: Vec<Vec<u8>>,
    /// The HTTPS address (`0.0.0.0:10250`).
    pub address: SocketAddr,
    /// The plain healthz address (`127.0.0.1:10248`); none to serve no plain healthz.
    pub healthz_address: Option<SocketAddr>,
    /// The cgroup the pods' QoS cgroups are under (the kubelet's cgroup root).
    pub cgroup_root: String,
    /// The agent's data directory (its filesystem is the node's in `/stats/summary`).
    pub data_dir: PathBuf,
    /// Other parts' metrics, appended to `/metrics`.
    pub more_metrics: Vec<metrics::MoreMetrics>,
}

impl KubeletApiConfig {
    /// Upstream's ports on every address; pods under the root cgroup, the data directory
    /// the one holding `pki_dir`.
    pub fn new(
        node_name: String,
        node_ip: IpAddr,
        pki_dir: PathBuf,
        client_cas: Vec<Vec<u8>>,
    ) -> Self {
        Self {
            node_name,
            node_ip,
            client_cas,
            address: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), KUBELET_PORT),
            healthz_address: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                HEALTHZ_PORT,
            )),
            cgroup_root: "/".to_owned(),
            data_dir: pki_dir.parent().map(PathBuf::from).unwrap_or_default(),
            pki_dir,
            more_metrics: Vec::new(),
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// What every request shares.
#[derive(Clone)]
struct Handler {
    client: Client,
    cri: CriClient,
    node_name: String,
    stats: Arc<stats::StatsProvider>,
    more_metrics: Vec<metrics::MoreMetrics>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default())).boxed(),
    );
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Binds the ports, then serves until the process ends.
pub async fn run(
    client: Client,
    cri: CriClient,
    config: KubeletApiConfig,
) -> Result<(), KubeletApiError> {
    let (cert, key) = tls::serving_pair(&config.pki_dir, &config.node_name, config.node_ip)?;
    let tls = tls::server_config(&cert, &key, &config.client_cas)?;
    let listener =
        TcpListener::bind(config.address)
            .await
            .map_err(|source| KubeletApiError::Listen {
                address: config.address,
                source,
            })?;
    if let Some(address) = config.healthz_address {
        let healthz = TcpListener::bind(address)
            .await
            .map_err(|source| KubeletApiError::Listen { address, source })?;
        tokio::spawn(serve_healthz(healthz));
    }
    info!(address = %config.address, "serving the kubelet API");
    let handler = Handler {
        client,
        cri,
        stats: Arc::new(stats::StatsProvider::new(
            &config.node_name,
            &config.cgroup_root,
            &config.data_dir,
        )),
        node_name: config.node_name,
        more_metrics: config.more_metrics,
    };
    serve_https(listener, tls, handler).await;
    Ok(())
}

async fn serve_healthz(listener: TcpListener) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!("healthz accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(match req.uri().path() {
                    "/healthz" => text(StatusCode::OK, "ok"),
                    _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
                })
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder.serve_connection(TokioIo::new(tcp), service).await {
                debug!("healthz connection ended: {err}");
            }
        });
    }
}

async fn serve_https(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handler: Handler) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!("kubelet API accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    debug!(%peer, "kubelet API TLS handshake failed: {err}");
                    return;
                }
            };
            let identity = tls::identity_of(stream.get_ref().1.peer_certificates());
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                let identity = identity.clone();
                async move { Ok::<_, Infallible>(handler.route(identity.as_ref(), req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                debug!(%peer, "kubelet API connection ended: {err}");
            }
        });
    }
}

/// Whether `identity` may use the kubelet API: the API server's kubelet client, or any
/// `system:masters` member (upstream asks the API server's authorizer; these are the
/// identities its RBAC lets through for `nodes/proxy`).
pub fn allowed(identity: &Identity) -> bool {
    identity.user == APISERVER_USER || identity.groups.iter().any(|g| g == MASTERS_GROUP)
}

impl Handler {
    async fn route(&self, identity: Option<&Identity>, req: Request<Incoming>) -> Response<Body> {
        let Some(identity) = identity else {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        };
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segments.as_slice() == ["healthz"] {
            return text(StatusCode::OK, "ok");
        }
        if !allowed(identity) {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb=get, resource=nodes, subresource=proxy)",
                    identity.user
                ),
            );
        }
        debug!(user = %identity.user, %path, "kubelet API request");
        let streaming = match segments.as_slice() {
            ["exec", ..] => Some(streaming::StreamKind::Exec),
            ["attach", ..] => Some(streaming::StreamKind::Attach),
            _ => None,
        };
        if let (Some(kind), [_, namespace, pod, container]) = (streaming, segments.as_slice()) {
            if req.method() != Method::GET && req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
            }
            let (namespace, pod, container) = (
                (*namespace).to_owned(),
                (*pod).to_owned(),
                (*container).to_owned(),
            );
            return self.stream(kind, &namespace, &pod, &container, req).await;
        }
        if let ["portForward", namespace, pod] = segments.as_slice() {
            if req.method() != Method::GET && req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
            }
            let (namespace, pod) = ((*namespace).to_owned(), (*pod).to_owned());
            return self.port_forward(&namespace, &pod, req).await;
        }
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
        }
        let query = req.uri().query().unwrap_or_default().to_owned();
        match segments.as_slice() {
            ["pods"] => self.pods().await,
            ["stats", "summary"] => self.summary(&query).await,
            ["metrics"] => self.metrics().await,
            ["containerLogs", namespace, pod, container] => {
                self.container_logs(namespace, pod, container, &query).await
            }
            _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }

    /// `/pods`: the pods bound to this node, as a PodList.
    async fn pods(&self) -> Response<Body> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node_name));
        match pods.list(&params).await {
            Ok(list) => json(&serde_json::json!({
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {},
                "items": list.items,
            })),
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("listing this node's pods: {err}"),
            ),
        }
    }

    /// The runtime's sandboxes and containers.
    async fn runtime_state(&self) -> Result<(Vec<PodSandbox>, Vec<Container>), Response<Body>> {
        let mut cri = self.cri.clone();
        let failed = |call: &str, status: tonic::Status| {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("asking the runtime ({call}): {}", status.message()),
            )
        };
        let sandboxes = cri
            .runtime()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|s| failed("ListPodSandbox", s))?
            .into_inner()
            .items;
        let containers = cri
            .runtime()
            .list_containers(ListContainersRequest { filter: None })
            .await
            .map_err(|s| failed("ListContainers", s))?
            .into_inner()
            .containers;
        Ok((sandboxes, containers))
    }

    /// `/stats/summary` (`?only_cpu_and_memory=true` as upstream).
    async fn summary(&self, query: &str) -> Response<Body> {
        let (sandboxes, containers) = match self.runtime_state().await {
            Ok(state) => state,
            Err(response) => return response,
        };
        let only_cpu_and_memory = form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "only_cpu_and_memory" && v == "true");
        let provider = self.stats.clone();
        let built = tokio::task::spawn_blocking(move || {
            let summary = provider.summary(
                &sandboxes,
                &containers,
                &crate::kubelet::node::now_rfc3339(),
                std::time::Instant::now(),
            );
            if only_cpu_and_memory {
                stats::only_cpu_and_memory(summary)
            } else {
                summary
            }
        })
        .await;
        match built.map(serde_json::to_value) {
            Ok(Ok(document)) => json(&document),
            Ok(Err(err)) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }

    /// `/metrics`.
    async fn metrics(&self) -> Response<Body> {
        let (sandboxes, containers) = match self.runtime_state().await {
            Ok(state) => state,
            Err(response) => return response,
        };
        let counts = metrics::count(&sandboxes, &containers);
        let process = metrics::ProcessMetrics::of_self();
        let mut document = metrics::render(&self.node_name, &counts, &process);
        for more in &self.more_metrics {
            more.render(&mut document);
        }
        let mut response = text(StatusCode::OK, document);
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        response
    }

    /// The pod `namespace/name` if it is bound to this node; else the response to give.
    async fn pod_on_node(&self, namespace: &str, pod_name: &str) -> Result<Pod, Response<Body>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match pods.get_opt(pod_name).await {
            Ok(Some(pod))
                if pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(self.node_name.as_str()) =>
            {
                Ok(pod)
            }
            Ok(_) => Err(text(
                StatusCode::NOT_FOUND,
                format!("pod {pod_name:?} does not exist"),
            )),
            Err(err) => Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading pod {namespace}/{pod_name}: {err}"),
            )),
        }
    }

    /// `/exec/...` and `/attach/...`: the runtime's stream URL, then the byte proxy.
    async fn stream(
        &self,
        kind: streaming::StreamKind,
        namespace: &str,
        pod_name: &str,
        container: &str,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let pod = match self.pod_on_node(namespace, pod_name).await {
            Ok(pod) => pod,
            Err(response) => return response,
        };
        let Some(id) = containers::running_instance(&pod, container) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container not found ({container:?})"),
            );
        };
        let options = streaming::StreamOptions::from_query(req.uri().query().unwrap_or_default());
        let mut cri = self.cri.clone();
        let url = match streaming::runtime_url(&mut cri, kind, &id, &options).await {
            Ok(url) => url,
            Err(status) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("asking the runtime for a stream: {}", status.message()),
                )
            }
        };
        streaming::proxy_upgrade(req, &url).await
    }

    /// `/portForward/NAMESPACE/POD`: the runtime's stream URL for the pod's sandbox, then the
    /// byte proxy.
    async fn port_forward(
        &self,
        namespace: &str,
        pod_name: &str,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let pod = match self.pod_on_node(namespace, pod_name).await {
            Ok(pod) => pod,
            Err(response) => return response,
        };
        // A mirror pod's containers run in its static pod, whose UID is the mirror's hash.
        let uid = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::kubelet::static_pods::MIRROR_ANNOTATION))
            .or(pod.metadata.uid.as_ref())
            .cloned()
            .unwrap_or_default();
        let ports = streaming::forwarded_ports(req.uri().query().unwrap_or_default());
        let mut cri = self.cri.clone();
        match streaming::port_forward_url(&mut cri, &uid, ports).await {
            Ok(Some(url)) => streaming::proxy_upgrade(req, &url).await,
            Ok(None) => text(
                StatusCode::NOT_FOUND,
                format!("pod {pod_name:?} has no running sandbox"),
            ),
            Err(status) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("asking the runtime for a stream: {}", status.message()),
            ),
        }
    }

    /// `/containerLogs/NAMESPACE/POD/CONTAINER`.
    async fn container_logs(
        &self,
        namespace: &str,
        pod_name: &str,
        container: &str,
        query: &str,
    ) -> Response<Body> {
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let options = match LogOptions::from_query(
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            Timestamp::now(),
        ) {
            Ok(options) => options,
            Err(err) => return text(StatusCode::BAD_REQUEST, err.to_string()),
        };
        let pod = match self.pod_on_node(namespace, pod_name).await {
            Ok(pod) => pod,
            Err(response) => return response,
        };
        if !containers::has_container(&pod, container) {
            return text(
                StatusCode::NOT_FOUND,
                format!("container {container:?} not found in pod {pod_name:?}"),
            );
        }
        let id = match containers::instance_for_logs(&pod, container, options.previous) {
            Ok(id) => id,
            Err(err) => return text(StatusCode::BAD_REQUEST, err.to_string()),
        };
        let log_path = match self.log_path(&id).await {
            Ok(path) => path,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        if let Err(err) = tokio::fs::metadata(&log_path).await {
            return text(
                StatusCode::BAD_REQUEST,
                format!("failed to open log file {log_path:?}: {err}"),
            );
        }
        let (sink, chunks) = mpsc::channel::<Bytes>(16);
        let cri = self.cri.clone();
        tokio::spawn(async move {
            let path = PathBuf::from(&log_path);
            let running = || {
                let mut cri = cri.clone();
                let id = id.clone();
                async move { container_running(&mut cri, &id).await }
            };
            if let Err(err) = logs::stream_file(&path, &options, sink, running).await {
                warn!(error = %err, "streaming container logs failed");
            }
        });
        let frames = futures::stream::unfold(chunks, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
        });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    /// The log file of a container instance, from the runtime.
    async fn log_path(&self, id: &str) -> Result<String, String> {
        let mut cri = self.cri.clone();
        let status = cri
            .runtime()
            .container_status(ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .map_err(|s| format!("failed to get container status {id:?}: {}", s.message()))?
            .into_inner()
            .status;
        status
            .map(|s| s.log_path)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("container {id:?} has no log file"))
    }
}

/// Whether the runtime says the container runs (an error counts as ended, so a follow
/// never outlives a container the runtime forgot).
async fn container_running(cri: &mut CriClient, id: &str) -> bool {
    cri.runtime()
        .container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().status)
        .is_some_and(|s| s.state == ContainerState::ContainerRunning as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_api_server_and_masters_may_use_the_api() {
        let who = |user: &str, groups: &[&str]| Identity {
            user: user.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        };
        assert!(allowed(&who(APISERVER_USER, &[])));
        assert!(allowed(&who("admin", &[MASTERS_GROUP])));
        assert!(!allowed(&who("system:node:other", &["system:nodes"])));
        assert!(!allowed(&who("someone", &[])));
    }
}
