//! The API server's side of the kubelet API: the `pods/log` subresource, answered by the
//! kubelet of the pod's node (`GET https://NODE:PORT/containerLogs/NS/POD/CONTAINER`) and
//! streamed back as it comes, as kube-apiserver's `LogREST` does; and the `nodes/proxy`
//! subresource (`/api/v1/nodes/NAME[:PORT]/proxy/PATH?QUERY`), whose requests go to the
//! node's kubelet (or, with `[SCHEME:]NAME:PORT`, another port of the node) and whose
//! answers come back as they are — status, headers and body — as kube-apiserver's node
//! `ProxyREST` does. [`kubelet_target`] finds a Node's kubelet for these and for
//! [`super::kubelet_streams`].
//!
//! The server authenticates to kubelets with its own client certificate
//! (`kube-apiserver-kubelet-client` in `system:masters`, issued from the cluster CA) and, like
//! kube-apiserver without `--kubelet-certificate-authority`, does not verify the kubelets'
//! self-signed serving certificates (it still checks the handshake's signatures). Other ports
//! of a node are reached without that certificate.
//!
//! Owns the request options, the choice of container and node address, and the translation
//! of kubelet answers into `Status` errors; it must not write to the store.
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, BodyStream, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST},
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use serde_json::Value;
use tracing::debug;

use super::{
    rest::{Query, Rest},
    status::{ApiError, Cause},
};
use crate::pki::CertPair;

/// The user of the API server's kubelet client certificate (upstream's convention).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// Its group: kubelets let `system:masters` in.
pub const KUBELET_CLIENT_GROUP: &str = "system:masters";
/// The kubelet port when a Node does not say (upstream's default).
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// How long connecting and getting the kubelet's response headers may take.
const KUBELET_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a kubelet's error body is read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Failures setting up the kubelet client.
#[derive(Debug, thiserror::Error)]
pub enum KubeletClientError {
    /// The client certificate or key does not parse.
    #[error("reading the kubelet client {what}: {source}")]
    Pem {
        /// Certificate or key.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration.
    #[error("configuring the kubelet client's TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Accepts the kubelet's certificate whatever signed it (kube-apiserver's default without
/// `--kubelet-certificate-authority`); still verifies the handshake's signatures, so the peer
/// holds the certificate's key.
#[derive(Debug)]
struct AnyKubeletCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyKubeletCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The API server's HTTPS client for kubelets.
#[derive(Clone)]
pub struct KubeletClient {
    /// TLS presenting the API server's kubelet client certificate: for kubelets only.
    connector: tokio_rustls::TlsConnector,
    /// TLS without a client certificate: for the other ports of a node (`nodes/proxy` with
    /// `https:NAME:PORT`), which must never see the kubelet credential.
    anonymous: tokio_rustls::TlsConnector,
}

/// How a request reaches a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeScheme {
    /// The kubelet API: TLS with the API server's kubelet client certificate.
    Kubelet,
    /// Another port of the node over plain HTTP.
    Http,
    /// Another port of the node over TLS, without a client certificate and without
    /// verifying the server's (upstream's proxy transport).
    Https,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").finish_non_exhaustive()
    }
}

/// Why a kubelet could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum KubeletRequestError {
    /// No TCP connection.
    #[error("dial tcp {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {address}: {source}")]
    Tls {
        /// `host:port`.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The kubelet did not answer in time.
    #[error("the kubelet at {address} did not answer within {seconds} s")]
    Timeout {
        /// `host:port`.
        address: String,
        /// The limit.
        seconds: u64,
    },
}

impl KubeletClient {
    /// A client presenting `identity` (PEM certificate and key).
    pub fn new(identity: &CertPair) -> Result<Self, KubeletClientError> {
        let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| KubeletClientError::Pem {
                what: "certificate",
                source,
            })?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|source| {
            KubeletClientError::Pem {
                what: "key",
                source,
            }
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyKubeletCertificate(provider.clone())))
            .with_client_auth_cert(chain, key)?;
        let anonymous = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyKubeletCertificate(provider)))
            .with_no_client_auth();
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            anonymous: tokio_rustls::TlsConnector::from(Arc::new(anonymous)),
        })
    }

    /// A TLS connection to the kubelet at `host:port`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, KubeletRequestError> {
        dial_tls(&self.connector, host, port).await
    }

    /// `GET https://host:port{path_and_query}`; the response's body streams as the kubelet
    /// writes it.
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
    ) -> Result<Response<Incoming>, KubeletRequestError> {
        let request = Request::get(path_and_query)
            .header(HOST, join_host_port(host, port))
            .body(Full::new(Bytes::new()))?;
        self.send(NodeScheme::Kubelet, host, port, request).await
    }

    /// Sends `request` (its URI the path and query, its `Host` set) to `host:port` over
    /// `scheme`; the response's body streams as the server writes it. Connecting and the
    /// response's headers are each bounded by the kubelet timeout.
    pub async fn send<B>(
        &self,
        scheme: NodeScheme,
        host: &str,
        port: u16,
        request: Request<B>,
    ) -> Result<Response<Incoming>, KubeletRequestError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let address = join_host_port(host, port);
        match scheme {
            NodeScheme::Kubelet => {
                exchange(self.connect(host, port).await?, request, address).await
            }
            NodeScheme::Https => {
                exchange(
                    dial_tls(&self.anonymous, host, port).await?,
                    request,
                    address,
                )
                .await
            }
            NodeScheme::Http => exchange(dial_tcp(&address).await?, request, address).await,
        }
    }
}

/// A TCP connection to `address`, bounded by the kubelet timeout.
async fn dial_tcp(address: &str) -> Result<tokio::net::TcpStream, KubeletRequestError> {
    tokio::time::timeout(KUBELET_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| KubeletRequestError::Timeout {
            address: address.to_owned(),
            seconds: KUBELET_TIMEOUT.as_secs(),
        })?
        .map_err(|source| KubeletRequestError::Connect {
            address: address.to_owned(),
            source,
        })
}

/// A TLS connection to `host:port` through `connector`, bounded by the kubelet timeout.
async fn dial_tls(
    connector: &tokio_rustls::TlsConnector,
    host: &str,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, KubeletRequestError> {
    let address = join_host_port(host, port);
    let dial = async {
        let tcp = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|source| KubeletRequestError::Connect {
                address: address.clone(),
                source,
            })?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| KubeletRequestError::Tls {
            address: address.clone(),
            source: std::io::Error::other(e),
        })?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|source| KubeletRequestError::Tls {
                address: address.clone(),
                source,
            })
    };
    tokio::time::timeout(KUBELET_TIMEOUT, dial)
        .await
        .map_err(|_| KubeletRequestError::Timeout {
            address: address.clone(),
            seconds: KUBELET_TIMEOUT.as_secs(),
        })?
}

/// One HTTP/1.1 request on `io` (to `address`); the connection lives while the response's
/// body is read.
async fn exchange<IO, B>(
    io: IO,
    request: Request<B>,
    address: String,
) -> Result<Response<Incoming>, KubeletRequestError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!("kubelet connection ended: {err}");
            }
        });
        Ok(sender.send_request(request).await?)
    };
    tokio::time::timeout(KUBELET_TIMEOUT, exchange)
        .await
        .map_err(|_| KubeletRequestError::Timeout {
            address,
            seconds: KUBELET_TIMEOUT.as_secs(),
        })?
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The options of a `pods/log` request (upstream's `PodLogOptions`), validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodLogOptions {
    /// The container; empty for the pod's only one.
    pub container: String,
    /// Stream until the container ends.
    pub follow: bool,
    /// The previous instance.
    pub previous: bool,
    /// Only records of the last N seconds.
    pub since_seconds: Option<i64>,
    /// Only records at or after this RFC 3339 time.
    pub since_time: Option<String>,
    /// Timestamps on every line.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// At most N bytes.
    pub limit_bytes: Option<i64>,
}

fn query_bool(value: &str) -> bool {
    super::server::query_bool(value)
}

impl PodLogOptions {
    /// Reads and validates the query of `pods/NAME/log` (400 when a value does not decode,
    /// 422 `Invalid` as upstream's `ValidatePodLogOptions`).
    pub fn from_query(query: &Query, pod: &str) -> Result<Self, ApiError> {
        let int = |name: &str| -> Result<Option<i64>, ApiError> {
            query
                .get(name)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!(
                            "{name}: invalid value {v:?}: expected an integer"
                        ))
                    })
                })
                .transpose()
        };
        let flag = |name: &str| query.get(name).is_some_and(|v| query_bool(v));
        let options = Self {
            container: query.get("container").cloned().unwrap_or_default(),
            follow: flag("follow"),
            previous: flag("previous"),
            since_seconds: int("sinceSeconds")?,
            since_time: query.get("sinceTime").cloned(),
            timestamps: flag("timestamps"),
            tail_lines: int("tailLines")?,
            limit_bytes: int("limitBytes")?,
        };
        let mut causes = Vec::new();
        if options.tail_lines.is_some_and(|n| n < 0) {
            causes.push(Cause::invalid(
                "tailLines",
                "must be greater than or equal to 0",
            ));
        }
        if options.limit_bytes.is_some_and(|n| n < 1) {
            causes.push(Cause::invalid("limitBytes", "must be greater than 0"));
        }
        match (&options.since_seconds, &options.since_time) {
            (Some(_), Some(_)) => causes.push(Cause {
                reason: "FieldValueForbidden".to_owned(),
                message: "at most one of `sinceTime` or `sinceSeconds` may be specified".to_owned(),
                field: String::new(),
            }),
            (Some(n), None) if *n < 1 => {
                causes.push(Cause::invalid("sinceSeconds", "must be greater than 0"));
            }
            _ => {}
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("", "PodLogOptions", pod, causes));
        }
        Ok(options)
    }

    /// The kubelet's query string for these options.
    pub fn kubelet_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.follow {
            query.append_pair("follow", "true");
        }
        if self.previous {
            query.append_pair("previous", "true");
        }
        if let Some(n) = self.since_seconds {
            query.append_pair("sinceSeconds", &n.to_string());
        }
        if let Some(time) = &self.since_time {
            query.append_pair("sinceTime", time);
        }
        if self.timestamps {
            query.append_pair("timestamps", "true");
        }
        if let Some(n) = self.tail_lines {
            query.append_pair("tailLines", &n.to_string());
        }
        if let Some(n) = self.limit_bytes {
            query.append_pair("limitBytes", &n.to_string());
        }
        query.finish()
    }
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// The container a log request is for: the one named (which must be the pod's), or the
/// pod's only container (upstream's `validateContainer`).
pub fn choose_container(pod: &Value, asked: &str) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let spec = &pod["spec"];
    let containers = names(spec.get("containers"));
    if asked.is_empty() {
        return match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => {
                let all: Vec<String> = names(spec.get("initContainers"))
                    .into_iter()
                    .chain(containers)
                    .chain(names(spec.get("ephemeralContainers")))
                    .collect();
                Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    all.join(" ")
                )))
            }
        };
    }
    let known = containers
        .iter()
        .chain(&names(spec.get("initContainers")))
        .chain(&names(spec.get("ephemeralContainers")))
        .any(|c| c == asked);
    if known {
        Ok(asked.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "container {asked} is not valid for pod {name}"
        )))
    }
}

/// The host and port of a Node's kubelet: its InternalIP (then other addresses) and its
/// `daemonEndpoints.kubeletEndpoint.Port`.
pub fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addresses = node.pointer("/status/addresses")?.as_array()?;
    let host = [
        "InternalIP",
        "InternalDNS",
        "ExternalIP",
        "ExternalDNS",
        "Hostname",
    ]
    .iter()
    .find_map(|kind| {
        addresses
            .iter()
            .find(|a| a["type"] == *kind)
            .and_then(|a| a["address"].as_str())
            .filter(|a| !a.is_empty())
    })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host.to_owned(), port))
}

/// A kubelet's non-success answer as the API server reports it (upstream's
/// `GenericHttpResponseChecker`: 400 and 500 carry the kubelet's text).
pub fn kubelet_failure(code: u16, body: &str, pod: &str) -> ApiError {
    let body = body.trim_end();
    match code {
        400 => ApiError::bad_request(body),
        404 => ApiError::not_found("", "pods", pod),
        500 => ApiError::internal(body),
        _ => ApiError {
            code,
            reason: match code {
                401 => "Unauthorized",
                403 => "Forbidden",
                405 => "MethodNotAllowed",
                409 => "Conflict",
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "",
            },
            message: if body.is_empty() {
                format!(
                    "the server responded with the status code {code} but did not return more information"
                )
            } else {
                body.to_owned()
            },
            details: Box::default(),
        },
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn plain(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Where a Node's kubelet listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletTarget {
    /// The Node's name.
    pub node: String,
    /// Its preferred address ([`kubelet_address`]).
    pub host: String,
    /// The kubelet's port.
    pub port: u16,
}

/// The kubelet of Node `node_name`: an error (404 `NotFound`) when there is no such Node,
/// `None` when the Node has no address to reach its kubelet by (each subresource answers
/// that its own way).
pub async fn kubelet_target(
    rest: &Rest,
    node_name: &str,
) -> Result<Option<KubeletTarget>, ApiError> {
    let nodes = rest
        .registry
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let node = rest.get(&nodes, None, node_name).await?;
    Ok(kubelet_address(&node).map(|(host, port)| KubeletTarget {
        node: node_name.to_owned(),
        host,
        port,
    }))
}

/// The message for a Node without an address.
pub fn no_kubelet_address(node_name: &str) -> String {
    format!("node {node_name:?} has no address to reach its kubelet")
}

/// The pod `namespace/name` (404 `NotFound` when there is none).
pub async fn get_pod(rest: &Rest, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let pods = rest
        .registry
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    rest.get(&pods, Some(namespace), name).await
}

/// The Node a pod is bound to; empty while it is not scheduled.
pub fn pod_node_name(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// GET `pods/NAME/log`: the kubelet's answer, streamed.
pub async fn pod_log(
    rest: &Rest,
    kubelet: &KubeletClient,
    namespace: &str,
    name: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let pod = get_pod(rest, namespace, name).await?;
    let options = PodLogOptions::from_query(query, name)?;
    let container = choose_container(&pod, &options.container)?;
    let node_name = pod_node_name(&pod);
    if node_name.is_empty() {
        // Not scheduled yet: an empty log, as kube-apiserver answers.
        return Ok(plain(Full::new(Bytes::new()).boxed()));
    }
    let KubeletTarget { host, port, .. } = kubelet_target(rest, node_name)
        .await?
        .ok_or_else(|| ApiError::internal(no_kubelet_address(node_name)))?;
    let mut path = format!("/containerLogs/{namespace}/{name}/{container}");
    let kubelet_query = options.kubelet_query();
    if !kubelet_query.is_empty() {
        path = format!("{path}?{kubelet_query}");
    }
    let response = kubelet.get(&host, port, &path).await.map_err(|err| {
        ApiError::internal(format!(
            "Get \"https://{}{path}\": {err}",
            join_host_port(&host, port)
        ))
    })?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(kubelet_failure(status.as_u16(), &body, name));
    }
    let frames = BodyStream::new(response.into_body()).filter_map(|frame| async move {
        let data = frame.ok()?.into_data().ok()?;
        Some(Ok::<_, Infallible>(Frame::data(data)))
    });
    Ok(plain(BodyExt::boxed(StreamBody::new(frames))))
}

/// The methods `nodes/proxy` forwards (upstream's node `ProxyREST`).
pub const NODE_PROXY_METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];

/// The name in a `nodes/NAME/proxy` request: `NAME`, `NAME:PORT` or `SCHEME:NAME:PORT`
/// (upstream's `SplitSchemeNamePort`: the name is not empty, the scheme is `http` or
/// `https`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeProxyName<'a> {
    /// `http`, `https` or empty.
    pub scheme: &'a str,
    /// The Node.
    pub node: &'a str,
    /// The port asked for; empty for the kubelet's.
    pub port: &'a str,
}

impl<'a> NodeProxyName<'a> {
    /// Splits `id`; `None` when it is none of the three forms.
    pub fn parse(id: &'a str) -> Option<Self> {
        let parts: Vec<&str> = id.split(':').collect();
        let (scheme, node, port) = match parts.as_slice() {
            [node] => ("", *node, ""),
            [node, port] => ("", *node, *port),
            [scheme, node, port] => (*scheme, *node, *port),
            _ => return None,
        };
        (!node.is_empty() && matches!(scheme, "" | "http" | "https")).then_some(Self {
            scheme,
            node,
            port,
        })
    }

    /// How and at which port the node is reached when its kubelet listens on
    /// `kubelet_port`: the kubelet when no port is asked for or the kubelet's is (whatever
    /// the scheme), else the port asked for over the scheme asked for (plain HTTP when
    /// none). 400 for a port that is not a port number.
    pub fn destination(&self, kubelet_port: u16) -> Result<(NodeScheme, u16), ApiError> {
        if self.port.is_empty() {
            return Ok((NodeScheme::Kubelet, kubelet_port));
        }
        let port = self
            .port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid node request {:?}: {:?} is not a port",
                    self.to_string(),
                    self.port
                ))
            })?;
        Ok(match self.scheme {
            _ if port == kubelet_port => (NodeScheme::Kubelet, port),
            "https" => (NodeScheme::Https, port),
            _ => (NodeScheme::Http, port),
        })
    }
}

impl std::fmt::Display for NodeProxyName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.scheme, self.port) {
            ("", "") => write!(f, "{}", self.node),
            ("", port) => write!(f, "{}:{port}", self.node),
            (scheme, port) => write!(f, "{scheme}:{}:{port}", self.node),
        }
    }
}

/// The path sent to the node for the part of a `nodes/NAME/proxy` path after `/proxy`:
/// lexically cleaned (empty and `.` segments dropped, `..` climbs but not above the root),
/// absolute, and ending in `/` when the request's did (upstream's
/// `JoinPreservingTrailingSlash`).
pub fn node_proxy_path(subpath: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in subpath.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut path = format!("/{}", segments.join("/"));
    if subpath.ends_with('/') && !path.ends_with('/') {
        path.push('/');
    }
    path
}

/// Whether the API server proxies to `ip` (upstream's `isProxyableHostname`: only global
/// unicast addresses; never loopback, link-local, multicast, unspecified or broadcast).
pub fn proxyable(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_link_local()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unicast_link_local())
        }
    }
}

/// 400 unless every address `host` names is [`proxyable`] (a name is resolved, bounded
/// by the kubelet timeout).
async fn check_proxyable(host: &str, port: u16) -> Result<(), ApiError> {
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(KUBELET_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| ApiError::bad_request(format!("resolving {host:?} timed out")))?
            .map_err(|err| ApiError::bad_request(format!("resolving {host:?}: {err}")))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(ApiError::bad_request("no addresses for hostname"));
    }
    if addresses.iter().any(|a| !proxyable(a.ip())) {
        return Err(ApiError::bad_request("address not allowed"));
    }
    Ok(())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether header `name` of a message with `headers` crosses the proxy: not hop-by-hop
/// (nor named by `Connection`), and, for requests, not the client's credentials, its
/// `Host` or what the proxy sets itself.
fn crosses(name: &HeaderName, headers: &HeaderMap, request: bool) -> bool {
    let name = name.as_str();
    let connection_named = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name));
    if HOP_BY_HOP.contains(&name) || connection_named {
        return false;
    }
    !request
        || !(matches!(
            name,
            "host" | "authorization" | "cookie" | "content-length" | "expect"
        ) || name.starts_with("impersonate-"))
}

/// `nodes/ID/proxy` with `subpath` (what followed `/proxy` in the request's path, as
/// sent): the request, with its method, query, body and headers (less credentials and
/// hop-by-hop ones), goes to the node's kubelet — or another port, see [`NodeProxyName`] —
/// and the answer comes back as it is, its body streamed. 404 for an unknown Node, 503 when
/// it has no address or cannot be reached, 400 for a malformed ID or an address the server
/// must not proxy to.
pub async fn node_proxy<B>(
    rest: &Rest,
    kubelet: &KubeletClient,
    id: &str,
    subpath: &str,
    inbound: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = inbound.method().clone();
    if !NODE_PROXY_METHODS.contains(&method) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        )));
    }
    let name = NodeProxyName::parse(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid node request {id:?}")))?;
    let target = kubelet_target(rest, name.node)
        .await?
        .ok_or_else(|| ApiError::unavailable(no_kubelet_address(name.node)))?;
    let (scheme, port) = name.destination(target.port)?;
    check_proxyable(&target.host, port).await?;
    let mut path = node_proxy_path(subpath);
    if let Some(query) = inbound.uri().query() {
        path = format!("{path}?{query}");
    }
    let address = join_host_port(&target.host, port);
    let (parts, body) = inbound.into_parts();
    let mut request = Request::builder().method(method).uri(&path);
    for (header, value) in &parts.headers {
        if crosses(header, &parts.headers, true) {
            request = request.header(header, value);
        }
    }
    let request = request
        .header(HOST, &address)
        .body(body)
        .map_err(|err| ApiError::bad_request(format!("invalid proxy request: {err}")))?;
    let response = kubelet
        .send(scheme, &target.host, port, request)
        .await
        .map_err(|err| ApiError::unavailable(format!("error trying to reach service: {err}")))?;
    let (parts, body) = response.into_parts();
    let frames = BodyStream::new(body)
        .take_while(|frame| {
            if let Err(err) = frame {
                debug!("reading a proxied node response: {err}");
            }
            futures::future::ready(frame.is_ok())
        })
        .filter_map(|frame| async move {
            let data = frame.ok()?.into_data().ok()?;
            Some(Ok::<_, Infallible>(Frame::data(data)))
        });
    let mut answer = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    *answer.status_mut() = parts.status;
    for (header, value) in &parts.headers {
        if crosses(header, &parts.headers, false) {
            answer.headers_mut().append(header.clone(), value.clone());
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn options_are_validated_as_upstream() {
        let ok = PodLogOptions::from_query(
            &query(&[("follow", "true"), ("tailLines", "2"), ("timestamps", "1")]),
            "p",
        );
        assert_eq!(
            ok.as_ref().map(PodLogOptions::kubelet_query),
            Ok("follow=true&timestamps=true&tailLines=2".to_owned())
        );
        let bad = PodLogOptions::from_query(&query(&[("tailLines", "-1")]), "p");
        assert_eq!(bad.map_err(|e| e.code), Err(422));
        let bad = PodLogOptions::from_query(&query(&[("limitBytes", "0")]), "p");
        assert_eq!(bad.map_err(|e| e.code), Err(422));
        let both = PodLogOptions::from_query(
            &query(&[("sinceSeconds", "1"), ("sinceTime", "2026-01-01T00:00:00Z")]),
            "p",
        );
        assert_eq!(both.map_err(|e| e.code), Err(422));
        let nan = PodLogOptions::from_query(&query(&[("tailLines", "x")]), "p");
        assert_eq!(nan.map_err(|e| e.code), Err(400));
    }

    #[test]
    fn the_container_is_the_named_or_the_only_one() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(choose_container(&one, ""), Ok("a".to_owned()));
        assert_eq!(choose_container(&one, "a"), Ok("a".to_owned()));
        assert_eq!(
            choose_container(&one, "b").map_err(|e| e.message),
            Err("container b is not valid for pod p".to_owned())
        );
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i"}], "containers": [{"name": "a"}, {"name": "b"}]}});
        let err = choose_container(&two, "");
        assert_eq!(
            err.map_err(|e| (e.code, e.message)),
            Err((
                400,
                "a container name must be specified for pod p, choose one of: [i a b]".to_owned()
            ))
        );
        assert_eq!(choose_container(&two, "i"), Ok("i".to_owned()));
    }

    #[test]
    fn the_kubelet_is_found_at_the_internal_ip_and_daemon_port() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"},
                          {"type": "InternalIP", "address": "172.30.0.11"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(
            kubelet_address(&node),
            Some(("172.30.0.11".to_owned(), 10250))
        );
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(kubelet_address(&bare), Some(("n1".to_owned(), 10250)));
        assert_eq!(kubelet_address(&json!({})), None);
        assert_eq!(join_host_port("fd00::1", 10250), "[fd00::1]:10250");
    }

    #[test]
    fn the_kubelet_subresources_are_discoverable() {
        let registry = super::super::resources::Registry::new();
        let legacy =
            super::super::discovery::resource_list(&registry, "", "v1").unwrap_or_default();
        let find = |name: &str| {
            legacy["resources"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["name"] == name))
                .cloned()
                .unwrap_or_default()
        };
        let log = find("pods/log");
        assert_eq!(
            (&log["kind"], &log["verbs"]),
            (&json!("Pod"), &json!(["get"]))
        );
        let exec = find("pods/exec");
        assert_eq!(
            (&exec["kind"], &exec["verbs"]),
            (&json!("PodExecOptions"), &json!(["create", "get"]))
        );
        assert_eq!(find("pods/attach")["kind"], "PodAttachOptions");
    }

    #[test]
    fn node_proxy_names_split_as_upstream() {
        let parsed = |id| NodeProxyName::parse(id).map(|n| (n.scheme, n.node, n.port));
        assert_eq!(parsed("n1"), Some(("", "n1", "")));
        assert_eq!(parsed("n1:10255"), Some(("", "n1", "10255")));
        assert_eq!(parsed("https:n1:443"), Some(("https", "n1", "443")));
        assert_eq!(parsed("http:n1:"), Some(("http", "n1", "")));
        assert_eq!(parsed("ftp:n1:21"), None);
        assert_eq!(parsed(":10250"), None);
        assert_eq!(parsed("a:b:c:d"), None);
        assert_eq!(
            NodeProxyName::parse("https:n1:443").map(|n| n.to_string()),
            Some("https:n1:443".to_owned())
        );
    }

    #[test]
    fn node_proxy_goes_to_the_kubelet_unless_another_port_is_named() {
        let destination = |id: &str| {
            NodeProxyName::parse(id)
                .ok_or_else(|| ApiError::bad_request(id))
                .and_then(|n| n.destination(10250))
                .map_err(|e| e.code)
        };
        assert_eq!(destination("n1"), Ok((NodeScheme::Kubelet, 10250)));
        // The kubelet's own port is the kubelet, whatever the scheme.
        assert_eq!(destination("n1:10250"), Ok((NodeScheme::Kubelet, 10250)));
        assert_eq!(
            destination("http:n1:10250"),
            Ok((NodeScheme::Kubelet, 10250))
        );
        assert_eq!(destination("n1:8080"), Ok((NodeScheme::Http, 8080)));
        assert_eq!(destination("http:n1:8080"), Ok((NodeScheme::Http, 8080)));
        assert_eq!(destination("https:n1:8443"), Ok((NodeScheme::Https, 8443)));
        assert_eq!(destination("n1:web"), Err(400));
        assert_eq!(destination("n1:0"), Err(400));
        assert_eq!(destination("n1:70000"), Err(400));
    }

    #[test]
    fn node_proxy_paths_are_cleaned_and_keep_a_trailing_slash() {
        assert_eq!(node_proxy_path(""), "/");
        assert_eq!(node_proxy_path("/"), "/");
        assert_eq!(node_proxy_path("/stats/summary"), "/stats/summary");
        assert_eq!(node_proxy_path("/logs/"), "/logs/");
        assert_eq!(node_proxy_path("//stats/./summary"), "/stats/summary");
        assert_eq!(node_proxy_path("/a/../../metrics"), "/metrics");
        assert_eq!(node_proxy_path("/a/b/.."), "/a");
        assert_eq!(node_proxy_path("/a/%2e%2e/b"), "/a/%2e%2e/b");
    }

    #[test]
    fn only_global_unicast_addresses_are_proxied() {
        let ok = |s: &str| s.parse::<IpAddr>().map(proxyable).unwrap_or(false);
        assert!(ok("172.30.0.11"));
        assert!(ok("10.0.0.1"));
        assert!(ok("fd00::11"));
        assert!(ok("2001:db8::1"));
        for refused in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!ok(refused), "{refused} is proxied");
        }
    }

    #[test]
    fn proxies_drop_hop_by_hop_headers_and_the_clients_credentials() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("accept", "application/json"),
            ("authorization", "Bearer secret"),
            ("impersonate-user", "someone"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
            ("content-length", "3"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let kept = |request| -> Vec<&str> {
            headers
                .keys()
                .filter(|name| crosses(name, &headers, request))
                .map(HeaderName::as_str)
                .collect()
        };
        assert_eq!(kept(true), ["accept", "content-type"]);
        assert_eq!(
            kept(false),
            [
                "accept",
                "authorization",
                "impersonate-user",
                "content-type",
                "content-length"
            ]
        );
    }

    #[test]
    fn nodes_proxy_is_discoverable_with_upstreams_verbs() {
        let registry = super::super::resources::Registry::new();
        let legacy =
            super::super::discovery::resource_list(&registry, "", "v1").unwrap_or_default();
        let proxy = legacy["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "nodes/proxy"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (&proxy["kind"], &proxy["namespaced"], &proxy["verbs"]),
            (
                &json!("NodeProxyOptions"),
                &json!(false),
                &json!(["create", "delete", "get", "patch", "update"])
            )
        );
    }

    /// `nodes/ID/proxy/metrics` against a REST layer holding Nodes `bare` (no address) and
    /// `local` (a loopback address): the error codes, or 200.
    async fn node_proxy_codes(requests: &[(Method, &str)]) -> anyhow::Result<Vec<u16>> {
        use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(&dir.path().join("db"), EmbeddedOptions::default())?;
        let rest = Rest {
            store,
            registry: Arc::new(super::super::resources::Registry::new()),
            services: super::super::services::ServiceNetwork::parse("10.43.0.0/16")
                .ok_or_else(|| anyhow::anyhow!("a service network"))?,
        };
        let nodes = rest
            .registry
            .find("", "v1", "nodes")
            .ok_or_else(|| anyhow::anyhow!("nodes are served"))?;
        let none = Query::default();
        for name in ["bare", "local"] {
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
            rest.create(&nodes, None, node, &none)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        }
        let status = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "local"},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}});
        rest.update_status(&nodes, None, "local", status, &none)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let ca = crate::pki::ClusterCa::load_or_create(&dir.path().join("tls"))?;
        let identity = ca.client_pair("kubelet-client", KUBELET_CLIENT_USER, &[])?;
        let kubelet = KubeletClient::new(&identity)?;
        let mut codes = Vec::new();
        for (method, id) in requests {
            let request = Request::builder()
                .method(method.clone())
                .uri(format!("/api/v1/nodes/{id}/proxy/metrics?x=1"))
                .body(http_body_util::Empty::<Bytes>::new())?;
            let answer = node_proxy(&rest, &kubelet, id, "/metrics", request).await;
            codes.push(answer.map_or_else(|e| e.code, |r| r.status().as_u16()));
        }
        Ok(codes)
    }

    #[tokio::test]
    async fn node_proxy_answers_unknown_unreachable_and_refused_nodes() -> anyhow::Result<()> {
        let codes = node_proxy_codes(&[
            (Method::GET, "nosuch"),
            (Method::GET, "bare"),
            (Method::GET, "local"),
            (Method::GET, "ftp:bare:21"),
            (Method::GET, "local:web"),
            (Method::CONNECT, "bare"),
        ])
        .await?;
        // Unknown node; no address; loopback is never proxied to; a scheme and a port that
        // are none; a method the proxy does not forward.
        assert_eq!(codes, [404, 503, 400, 400, 400, 405]);
        Ok(())
    }

    #[test]
    fn kubelet_errors_keep_their_code_and_text() {
        let err = kubelet_failure(
            400,
            "previous terminated container \"a\" in pod \"p\" not found\n",
            "p",
        );
        assert_eq!(
            (err.code, err.reason, err.message.as_str()),
            (
                400,
                "BadRequest",
                "previous terminated container \"a\" in pod \"p\" not found"
            )
        );
        assert_eq!(kubelet_failure(404, "", "p").code, 404);
        let forbidden = kubelet_failure(403, "Forbidden (user=x)", "p");
        assert_eq!((forbidden.code, forbidden.reason), (403, "Forbidden"));
    }
}
