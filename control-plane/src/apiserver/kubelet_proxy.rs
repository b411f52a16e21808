//! The API server's side of the kubelet API: the `pods/log` subresource, answered by the
//! kubelet of the pod's node (`GET https://NODE:PORT/containerLogs/NS/POD/CONTAINER`) and
//! streamed back as it comes, as kube-apiserver's `LogREST` does.
//!
//! The server authenticates to kubelets with its own client certificate
//! (`kube-apiserver-kubelet-client` in `system:masters`, issued from the cluster CA) and, like
//! kube-apiserver without `--kubelet-certificate-authority`, does not verify the kubelets'
//! self-signed serving certificates (it still checks the handshake's signatures).
//!
//! Owns the request options, the choice of container and node address, and the translation
//! of kubelet answers into `Status` errors; it must not write anything.
use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, BodyStream, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{HeaderValue, CONTENT_TYPE},
    Request, Response, StatusCode,
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
    connector: tokio_rustls::TlsConnector,
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
            .with_custom_certificate_verifier(Arc::new(AnyKubeletCertificate(provider)))
            .with_client_auth_cert(chain, key)?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// A TLS connection to the kubelet at `host:port`.
    pub async fn connect(
        &self,
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
            let name =
                ServerName::try_from(host.to_owned()).map_err(|e| KubeletRequestError::Tls {
                    address: address.clone(),
                    source: std::io::Error::other(e),
                })?;
            self.connector
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

    /// `GET https://host:port{path_and_query}`; the response's body streams as the kubelet
    /// writes it.
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
    ) -> Result<Response<Incoming>, KubeletRequestError> {
        let address = join_host_port(host, port);
        let tls = self.connect(host, port).await?;
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!("kubelet connection ended: {err}");
                }
            });
            let request = Request::get(path_and_query)
                .header(hyper::header::HOST, &address)
                .body(Full::new(Bytes::new()))?;
            Ok(sender.send_request(request).await?)
        };
        tokio::time::timeout(KUBELET_TIMEOUT, exchange)
            .await
            .map_err(|_| KubeletRequestError::Timeout {
                address: address.clone(),
                seconds: KUBELET_TIMEOUT.as_secs(),
            })?
    }
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

/// GET `pods/NAME/log`: the kubelet's answer, streamed.
pub async fn pod_log(
    rest: &Rest,
    kubelet: &KubeletClient,
    namespace: &str,
    name: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let pods = rest
        .registry
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    let nodes = rest
        .registry
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let pod = rest.get(&pods, Some(namespace), name).await?;
    let options = PodLogOptions::from_query(query, name)?;
    let container = choose_container(&pod, &options.container)?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if node_name.is_empty() {
        // Not scheduled yet: an empty log, as kube-apiserver answers.
        return Ok(plain(Full::new(Bytes::new()).boxed()));
    }
    let node = rest.get(&nodes, None, node_name).await?;
    let (host, port) = kubelet_address(&node).ok_or_else(|| {
        ApiError::internal(format!(
            "node {node_name:?} has no address to reach its kubelet"
        ))
    })?;
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
