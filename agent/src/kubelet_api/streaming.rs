//! The kubelet API's streaming endpoints: `/exec/NS/POD/CONTAINER`,
//! `/attach/NS/POD/CONTAINER` and `/portForward/NS/POD`. The runtime serves the streams itself
//! (CRI `Exec`, `Attach` and `PortForward` return a URL of containerd's streaming server); the
//! kubelet asks for that URL and
//! forwards the client's upgrade request (WebSocket `v4.channel.k8s.io` and older, or SPDY)
//! to it, then copies bytes both ways, as upstream kubelet does when it does not redirect
//! container streaming.
//!
//! Owns the translation of the request into a CRI call and the byte proxy; it must not speak
//! the stream protocols itself (the runtime does).
use std::convert::Infallible;

use bytes::Bytes;
use corten_cri::runtime::CriClient;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, Limited};
use hyper::{
    body::Incoming,
    header::{HeaderName, HOST},
    Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    AttachRequest, ExecRequest, ListPodSandboxRequest, PodSandboxFilter, PodSandboxState,
    PodSandboxStateValue, PortForwardRequest,
};
use tracing::debug;

type Body = BoxBody<Bytes, Infallible>;

/// The request headers that carry an upgrade and its protocol negotiation.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
    "origin",
];

/// What a streaming request asks for (upstream's `remotecommand` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The command (exec only), from repeated `command` parameters.
    pub command: Vec<String>,
    /// Whether standard input is streamed.
    pub stdin: bool,
    /// Whether standard output is streamed.
    pub stdout: bool,
    /// Whether standard error is streamed.
    pub stderr: bool,
    /// Whether a terminal is allocated.
    pub tty: bool,
}

fn flag(value: &str) -> bool {
    value == "1" || value.eq_ignore_ascii_case("true")
}

impl StreamOptions {
    /// Reads the query (`command`, `stdin`, `stdout`, `stderr`, `tty`; `input`/`output`
    /// as old clients send them).
    pub fn from_query(query: &str) -> Self {
        let mut options = Self::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "command" => options.command.push(value.into_owned()),
                "stdin" | "input" => options.stdin = flag(&value),
                "stdout" | "output" => options.stdout = flag(&value),
                "stderr" => options.stderr = flag(&value),
                "tty" => options.tty = flag(&value),
                _ => {}
            }
        }
        options
    }
}

/// Which stream endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `/exec`.
    Exec,
    /// `/attach`.
    Attach,
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = code;
    response
}

/// Asks the runtime for the stream's URL.
pub async fn runtime_url(
    cri: &mut CriClient,
    kind: StreamKind,
    container_id: &str,
    options: &StreamOptions,
) -> Result<String, tonic::Status> {
    match kind {
        StreamKind::Exec => Ok(cri
            .runtime()
            .exec(ExecRequest {
                container_id: container_id.to_owned(),
                cmd: options.command.clone(),
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr && !options.tty,
            })
            .await?
            .into_inner()
            .url),
        StreamKind::Attach => Ok(cri
            .runtime()
            .attach(AttachRequest {
                container_id: container_id.to_owned(),
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr && !options.tty,
            })
            .await?
            .into_inner()
            .url),
    }
}

/// The ports of a `/portForward` query (`ports=80,443` or repeated `port`).
pub fn forwarded_ports(query: &str) -> Vec<i32> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "ports" || name == "port")
        .flat_map(|(_, value)| {
            value
                .split(',')
                .filter_map(|p| p.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The runtime's URL for forwarding `ports` of the ready sandbox of pod `uid`.
pub async fn port_forward_url(
    cri: &mut CriClient,
    uid: &str,
    ports: Vec<i32>,
) -> Result<Option<String>, tonic::Status> {
    let sandboxes = cri
        .runtime()
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                label_selector: [("io.kubernetes.pod.uid".to_owned(), uid.to_owned())].into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    let Some(sandbox) = sandboxes.into_iter().max_by_key(|s| s.created_at) else {
        return Ok(None);
    };
    let url = cri
        .runtime()
        .port_forward(PortForwardRequest {
            pod_sandbox_id: sandbox.id,
            port: ports,
        })
        .await?
        .into_inner()
        .url;
    Ok(Some(url))
}

/// Splits `http://HOST:PORT/PATH` into the address and the path.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (address, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    (!address.is_empty()).then(|| (address.to_owned(), path.to_owned()))
}

/// Forwards the upgrade request `inbound` to `url` and, once the runtime switches
/// protocols, copies bytes between the client and the runtime until either side closes.
pub async fn proxy_upgrade(mut inbound: Request<Incoming>, url: &str) -> Response<Body> {
    let Some((address, path)) = split_url(url) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime returned a stream URL that is not http: {url}"),
        );
    };
    let tcp = match tokio::net::TcpStream::connect(&address).await {
        Ok(tcp) => tcp,
        Err(err) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dial tcp {address}: {err}"),
            )
        }
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
            Ok(pair) => pair,
            Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        };
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            debug!("runtime stream connection ended: {err}");
        }
    });
    let mut request = Request::builder().method(inbound.method()).uri(&path);
    for name in FORWARDED_REQUEST_HEADERS {
        for value in inbound.headers().get_all(*name) {
            request = request.header(*name, value);
        }
    }
    let request = match request.header(HOST, &address).body(Empty::<Bytes>::new()) {
        Ok(request) => request,
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    let client_upgrade = hyper::upgrade::on(&mut inbound);
    let mut response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut answer = text(status, body);
        if let Some(content_type) = headers.get(hyper::header::CONTENT_TYPE) {
            answer
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, content_type.clone());
        }
        return answer;
    }
    let runtime_upgrade = hyper::upgrade::on(&mut response);
    let mut answer = Response::new(Empty::<Bytes>::new().boxed());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in response.headers() {
        if !is_length(name) {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    tokio::spawn(async move {
        let (client, runtime) = match (client_upgrade.await, runtime_upgrade.await) {
            (Ok(client), Ok(runtime)) => (client, runtime),
            (client, runtime) => {
                debug!(
                    client = client.is_ok(),
                    runtime = runtime.is_ok(),
                    "a stream upgrade did not complete"
                );
                return;
            }
        };
        let (mut client, mut runtime) = (TokioIo::new(client), TokioIo::new(runtime));
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
            debug!("stream ended: {err}");
        }
    });
    answer
}

fn is_length(name: &HeaderName) -> bool {
    name == hyper::header::CONTENT_LENGTH || name == hyper::header::TRANSFER_ENCODING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_repeated_commands_and_flags() {
        let options = StreamOptions::from_query(
            "command=sh&command=-c&command=echo%20hi&stdin=1&stdout=true&stderr=0&tty=false",
        );
        assert_eq!(
            options,
            StreamOptions {
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
            }
        );
    }

    #[test]
    fn forwarded_ports_come_from_either_parameter() {
        assert_eq!(forwarded_ports("ports=80,443"), vec![80, 443]);
        assert_eq!(forwarded_ports("port=8080&port=9090"), vec![8080, 9090]);
        assert!(forwarded_ports("").is_empty());
    }

    #[test]
    fn runtime_urls_split_into_address_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:4321/exec/AbC"),
            Some(("127.0.0.1:4321".to_owned(), "/exec/AbC".to_owned()))
        );
        assert_eq!(split_url("https://x/y"), None);
        assert_eq!(split_url("http:///y"), None);
    }
}
