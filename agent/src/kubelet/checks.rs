//! One-shot container checks shared by probes and lifecycle hooks, as upstream's prober runs
//! them: a command through CRI `ExecSync`, a TCP connect, an HTTP GET and a
//! `grpc.health.v1.Health/Check` call. The agent runs in the node's network namespace and pod
//! IPs are routed from the node, so network checks connect to `podIP:port` (or the handler's
//! `host`).
//!
//! Owns running one check and saying whether it passed. It must not keep state between
//! checks (thresholds and periods are `probes`' job) nor decide what a failure means.
use std::time::Duration;

use corten_cri::runtime::CriClient;
use k8s_cri::v1::ExecSyncRequest;
use k8s_openapi::{
    api::core::v1::{Container, HTTPGetAction, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The User-Agent upstream's prober sends (`kube-probe/<major>.<minor>`).
const USER_AGENT: &str = "kube-probe/1.33";
/// The most of an HTTP response read to find its status line.
const MAX_RESPONSE_HEAD: usize = 10 * 1024;
/// The gRPC health service's Check method.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Why a check could not be carried out as written.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A named port is not among the container's ports.
    #[error("port {0:?} is not a port of the container")]
    UnknownPort(String),
    /// A port number outside 1–65535.
    #[error("port {0} is out of range")]
    BadPort(i32),
    /// The handler names no action this kubelet knows.
    #[error("the handler has no exec, httpGet, tcpSocket or grpc action")]
    NoAction,
    /// A scheme other than HTTP and HTTPS.
    #[error("scheme {0} is not supported (only HTTP and HTTPS)")]
    UnsupportedScheme(String),
}

/// A check, resolved against its container and pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Run a command in the container; exit code 0 passes.
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
    },
    /// Open a TCP connection.
    Tcp {
        /// Host (the pod IP unless the handler names one).
        host: String,
        /// Port.
        port: u16,
    },
    /// GET a URL; 200–399 passes.
    Http(HttpGet),
    /// Call `grpc.health.v1.Health/Check`; SERVING passes.
    Grpc {
        /// Host (the pod IP).
        host: String,
        /// Port.
        port: u16,
        /// The service name asked about ("" for the server as a whole).
        service: String,
    },
}

/// An HTTP GET, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// Host to connect to.
    pub host: String,
    /// Port to connect to.
    pub port: u16,
    /// Path (with query), starting with `/`.
    pub path: String,
    /// Headers to send (a `Host` header here replaces the default one).
    pub headers: Vec<(String, String)>,
    /// HTTPS (the server's certificate is not verified, as upstream's prober does not).
    pub tls: bool,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it passed.
    pub success: bool,
    /// Why it failed (or the command's output), for events and logs.
    pub message: String,
}

impl Outcome {
    fn pass(message: impl Into<String>) -> Self {
        Self {
            success: true,
            message: message.into(),
        }
    }

    fn fail(message: impl Into<String>) -> Self {
        Self {
            success: false,
            message: message.into(),
        }
    }
}

/// A port by number or by the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, CheckError> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| CheckError::UnknownPort(name.clone()))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(CheckError::BadPort(number))
}

/// Resolves an `httpGet` action (probe or hook) against its container and pod IP.
pub fn http_get(
    action: &HTTPGetAction,
    container: &Container,
    pod_ip: &str,
) -> Result<HttpGet, CheckError> {
    let scheme = action.scheme.as_deref().unwrap_or("HTTP");
    let tls = match scheme.to_ascii_uppercase().as_str() {
        "HTTP" => false,
        "HTTPS" => true,
        _ => return Err(CheckError::UnsupportedScheme(scheme.to_owned())),
    };
    let path = action.path.clone().unwrap_or_default();
    Ok(HttpGet {
        host: action
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_owned()),
        port: resolve_port(&action.port, container)?,
        path: if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        },
        headers: action
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        tls,
    })
}

/// Resolves a probe's action against its container and pod IP.
pub fn from_probe(probe: &Probe, container: &Container, pod_ip: &str) -> Result<Check, CheckError> {
    if let Some(exec) = &probe.exec {
        return Ok(Check::Exec {
            command: exec.command.clone().unwrap_or_default(),
        });
    }
    if let Some(action) = &probe.http_get {
        return Ok(Check::Http(http_get(action, container, pod_ip)?));
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Ok(Check::Tcp {
            host: tcp
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_owned()),
            port: resolve_port(&tcp.port, container)?,
        });
    }
    if let Some(grpc) = &probe.grpc {
        return Ok(Check::Grpc {
            host: pod_ip.to_owned(),
            port: u16::try_from(grpc.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(CheckError::BadPort(grpc.port))?,
            service: grpc.service.clone().unwrap_or_default(),
        });
    }
    Err(CheckError::NoAction)
}

/// Runs a check against a container, within `timeout`.
pub async fn run(cri: &CriClient, container_id: &str, check: &Check, timeout: Duration) -> Outcome {
    match check {
        Check::Exec { command } => exec(cri, container_id, command, Some(timeout)).await,
        _ => network(check, timeout).await,
    }
}

/// Runs a check that needs no runtime (TCP, HTTP, gRPC), within `timeout`.
async fn network(check: &Check, timeout: Duration) -> Outcome {
    match check {
        Check::Exec { .. } => Outcome::fail("an exec check needs the runtime"),
        Check::Tcp { host, port } => tcp(host, *port, timeout).await,
        Check::Http(get) => match http_status(get, timeout).await {
            Ok(status) if (200..400).contains(&status) => Outcome::pass(format!("HTTP {status}")),
            Ok(status) => Outcome::fail(format!("HTTP probe failed with statuscode: {status}")),
            Err(message) => Outcome::fail(message),
        },
        Check::Grpc {
            host,
            port,
            service,
        } => grpc(host, *port, service, timeout).await,
    }
}

/// Runs a command in the container; passes on exit code 0. `timeout` bounds it (`None`:
/// no bound, as for postStart hooks).
pub async fn exec(
    cri: &CriClient,
    container_id: &str,
    command: &[String],
    timeout: Option<Duration>,
) -> Outcome {
    let mut cri = cri.clone();
    let seconds = timeout.map_or(0, |t| t.as_secs().max(1) as i64);
    let call = cri.runtime().exec_sync(ExecSyncRequest {
        container_id: container_id.to_owned(),
        cmd: command.to_vec(),
        timeout: seconds,
    });
    // The runtime enforces the timeout; ours is a backstop should it not answer.
    let answered = match timeout {
        Some(t) => match tokio::time::timeout(t + Duration::from_secs(2), call).await {
            Ok(answer) => answer,
            Err(_) => return Outcome::fail(format!("command timed out after {}s", seconds)),
        },
        None => call.await,
    };
    match answered {
        Ok(response) => {
            let response = response.into_inner();
            let mut output = String::from_utf8_lossy(&response.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&response.stderr));
            if response.exit_code == 0 {
                Outcome::pass(output)
            } else {
                Outcome::fail(format!(
                    "command {command:?} exited with {}: {}",
                    response.exit_code,
                    output.trim_end()
                ))
            }
        }
        Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
            Outcome::fail(format!("command timed out after {seconds}s"))
        }
        Err(status) => Outcome::fail(format!("exec failed: {}", status.message())),
    }
}

/// Opens and closes a TCP connection.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Outcome::pass(""),
        Ok(Err(e)) => Outcome::fail(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Outcome::fail(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

/// Sends the GET and returns the response's status code (the body is not read). Redirects
/// are not followed: a 3xx answer counts as it stands, as upstream counts a redirect to
/// another host.
pub async fn http_status(get: &HttpGet, timeout: Duration) -> Result<u16, String> {
    let scheme = if get.tls { "https" } else { "http" };
    let url = format!("{scheme}://{}:{}{}", get.host, get.port, get.path);
    match tokio::time::timeout(timeout, http_exchange(get)).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// The request bytes of a GET: default Host, User-Agent and Accept headers unless the
/// handler sets its own.
fn http_request(get: &HttpGet) -> String {
    let has = |name: &str| {
        get.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut request = format!("GET {} HTTP/1.1\r\n", get.path);
    if !has("Host") {
        request.push_str(&format!("Host: {}:{}\r\n", get.host, get.port));
    }
    if !has("User-Agent") {
        request.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !has("Accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in &get.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    request
}

/// The status code in an HTTP/1.x status line.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

async fn http_exchange(get: &HttpGet) -> std::io::Result<u16> {
    let stream = TcpStream::connect((get.host.as_str(), get.port)).await?;
    if !get.tls {
        return read_status(stream, get).await;
    }
    let name = rustls::pki_types::ServerName::try_from(get.host.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let stream = tls::connector()?.connect(name, stream).await?;
    read_status(stream, get).await
}

async fn read_status<S>(mut stream: S, get: &HttpGet) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(http_request(get).as_bytes()).await?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    while head.len() < MAX_RESPONSE_HEAD {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
        if head.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    parse_status_line(&head).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })
}

/// TLS for HTTPS checks without verifying the server, as upstream's prober does
/// (`InsecureSkipVerify`): a probe asks whether the server answers, not who it is.
mod tls {
    use std::sync::Arc;

    use rustls::{
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    };

    /// Accepts any certificate; still checks the handshake's signatures.
    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
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

    /// A TLS connector that trusts any server.
    pub fn connector() -> std::io::Result<tokio_rustls::TlsConnector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING,
/// 3 SERVICE_UNKNOWN).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

fn serving_status_name(status: i32) -> &'static str {
    match status {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// Calls `grpc.health.v1.Health/Check` over plaintext HTTP/2.
pub async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let address = format!("{host}:{port}");
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::fail(format!("bad address {address}: {e}")),
    };
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        _ => {
            return Outcome::fail(format!(
                "timeout: failed to connect service {address:?} within {}s",
                timeout.as_secs()
            ))
        }
    };
    let mut client = tonic::client::Grpc::new(channel);
    let call = async {
        client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let response: tonic::Response<HealthCheckResponse> = client
            .unary(
                tonic::Request::new(HealthCheckRequest {
                    service: service.to_owned(),
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_HEALTH_CHECK),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        Ok::<_, tonic::Status>(response.into_inner().status)
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(1)) => Outcome::pass("SERVING"),
        Ok(Ok(status)) => Outcome::fail(format!(
            "service unhealthy (responded with \"{}\")",
            serving_status_name(status)
        )),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Outcome::fail(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health)",
        ),
        Ok(Err(status)) => Outcome::fail(format!(
            "health rpc probe failed: {}: {}",
            status.code(),
            status.message()
        )),
        Err(_) => Outcome::fail(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn container() -> Container {
        serde_json::from_value(serde_json::json!({"name": "app",
            "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ports_resolve_by_number_and_by_name() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c).ok(), Some(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c).ok(),
            Some(8080)
        );
        assert!(resolve_port(&IntOrString::String("grpc".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }

    #[test]
    fn a_probe_resolves_against_the_pod_ip_and_container_ports() {
        let probe: Probe = serde_json::from_value(serde_json::json!({"httpGet":
            {"path": "healthz", "port": "http", "httpHeaders": [{"name": "Host", "value": "example"}]}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let check = from_probe(&probe, &container(), "10.42.0.5").unwrap_or_else(|e| panic!("{e}"));
        let Check::Http(get) = check else {
            panic!("not an HTTP check: {check:?}")
        };
        assert_eq!(
            (get.host.as_str(), get.port, get.path.as_str()),
            ("10.42.0.5", 8080, "/healthz")
        );
        let request = http_request(&get);
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Host: example\r\n") && !request.contains("Host: 10.42"),
            "{request}"
        );
        assert!(request.contains("User-Agent: kube-probe/"), "{request}");
        let https: Probe =
            serde_json::from_value(serde_json::json!({"httpGet": {"port": 1, "scheme": "HTTPS"}}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            from_probe(&https, &container(), "ip"),
            Ok(Check::Http(HttpGet { tls: true, .. }))
        ));
        let ftp: Probe =
            serde_json::from_value(serde_json::json!({"httpGet": {"port": 1, "scheme": "FTP"}}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(from_probe(&ftp, &container(), "ip").is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 404 Not Found\r\nX: y\r\n"),
            Some(404)
        );
        assert_eq!(parse_status_line(b"SSH-2.0\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200"), None);
    }

    async fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_and_3xx_and_fail_otherwise() {
        let timeout = Duration::from_secs(2);
        for (response, passes) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (
                "HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\n\r\n",
                true,
            ),
            ("HTTP/1.1 500 Internal Server Error\r\n\r\n", false),
        ] {
            let port = serve_once(response).await;
            let check = Check::Http(HttpGet {
                host: "127.0.0.1".into(),
                port,
                path: "/".into(),
                headers: Vec::new(),
                tls: false,
            });
            let cri_less = network(&check, timeout).await;
            assert_eq!(cri_less.success, passes, "{response}: {}", cri_less.message);
        }
    }

    #[tokio::test]
    async fn https_checks_accept_a_self_signed_certificate() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        tokio::spawn(async move {
            if let Ok((socket, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(socket).await {
                    let mut buffer = [0u8; 1024];
                    let _ = tls.read(&mut buffer).await;
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        let get = HttpGet {
            host: "127.0.0.1".into(),
            port,
            path: "/healthz".into(),
            headers: Vec::new(),
            tls: true,
        };
        assert_eq!(http_status(&get, Duration::from_secs(5)).await, Ok(204));
    }

    #[tokio::test]
    async fn tcp_checks_see_listeners_and_refusals() {
        let timeout = Duration::from_secs(2);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        assert!(tcp("127.0.0.1", port, timeout).await.success);
        drop(listener);
        assert!(!tcp("127.0.0.1", port, timeout).await.success);
    }

    /// A `grpc.health.v1.Health` server that answers every Check with one status.
    #[derive(Clone)]
    struct FakeHealth(i32);

    impl tonic::server::NamedService for FakeHealth {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
    type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

    impl tower::Service<HttpRequest> for FakeHealth {
        type Response = HttpResponse;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<HttpResponse, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: HttpRequest) -> Self::Future {
            let status = self.0;
            Box::pin(async move {
                let codec =
                    tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
                let answer =
                    tower::service_fn(move |_: tonic::Request<HealthCheckRequest>| async move {
                        Ok::<_, tonic::Status>(tonic::Response::new(HealthCheckResponse { status }))
                    });
                Ok(tonic::server::Grpc::new(codec).unary(answer, request).await)
            })
        }
    }

    async fn serve_health(status: i32) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let server = tonic::transport::Server::builder()
            .add_service(FakeHealth(status))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        port
    }

    #[tokio::test]
    async fn grpc_checks_pass_only_when_serving() {
        let timeout = Duration::from_secs(2);
        let serving = grpc("127.0.0.1", serve_health(1).await, "", timeout).await;
        assert!(serving.success, "{}", serving.message);
        let not_serving = grpc("127.0.0.1", serve_health(2).await, "db", timeout).await;
        assert!(!not_serving.success);
        assert!(
            not_serving.message.contains("NOT_SERVING"),
            "{}",
            not_serving.message
        );
    }

    #[tokio::test]
    async fn grpc_checks_fail_against_a_server_that_is_not_grpc() {
        let port = serve_once("HTTP/1.1 200 OK\r\n\r\n").await;
        let outcome = grpc("127.0.0.1", port, "", Duration::from_secs(2)).await;
        assert!(!outcome.success, "{}", outcome.message);
    }
}
