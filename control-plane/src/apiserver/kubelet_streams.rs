//! The API server's streaming pod subresources, `pods/exec`, `pods/attach` and
//! `pods/portforward`: the client's upgrade request (WebSocket `v4.channel.k8s.io` and older,
//! or SPDY) is forwarded to the kubelet of the pod's node (`/exec/NS/POD/CONTAINER?...`,
//! `/portForward/NS/POD?...`, which forward it to the runtime)
//! and, once it switches protocols, bytes are copied both ways — kube-apiserver's
//! upgrade-aware proxy.
//!
//! Owns the choice of container and node and the byte proxy; it must not speak the stream
//! protocols (the runtime does).
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Limited};
use hyper::{body::Incoming, header::HOST, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{
    kubelet_proxy::{
        choose_container, get_pod, kubelet_failure, kubelet_target, no_kubelet_address,
        pod_node_name, KubeletClient, KubeletTarget,
    },
    rest::Rest,
    status::ApiError,
};

type Body = BoxBody<Bytes, Infallible>;

/// The request headers that carry an upgrade and its protocol negotiation (credentials are
/// never forwarded).
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

/// `pods/NAME/exec`, `pods/NAME/attach` or `pods/NAME/portforward` (`kind`), proxied to the
/// kubelet.
pub async fn pod_stream(
    rest: &Rest,
    kubelet: &KubeletClient,
    namespace: &str,
    name: &str,
    kind: &str,
    mut inbound: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let pod = get_pod(rest, namespace, name).await?;
    let raw_query = inbound.uri().query().unwrap_or_default().to_owned();
    let asked = form_urlencoded::parse(raw_query.as_bytes())
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let forward = kind == "portforward";
    let container = if forward {
        String::new()
    } else {
        choose_container(&pod, &asked)?
    };
    let node_name = pod_node_name(&pod);
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let KubeletTarget { host, port, .. } = kubelet_target(rest, node_name)
        .await?
        .ok_or_else(|| ApiError::internal(no_kubelet_address(node_name)))?;
    let path = if forward {
        format!("/portForward/{namespace}/{name}?{raw_query}")
    } else {
        format!("/{kind}/{namespace}/{name}/{container}?{raw_query}")
    };
    let tls = kubelet
        .connect(&host, port)
        .await
        .map_err(|err| ApiError::internal(format!("error dialing backend: {err}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|err| ApiError::internal(format!("error dialing backend: {err}")))?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            debug!("kubelet stream connection ended: {err}");
        }
    });
    let mut request = Request::builder().method(inbound.method()).uri(&path);
    for header in FORWARDED_REQUEST_HEADERS {
        for value in inbound.headers().get_all(*header) {
            request = request.header(*header, value);
        }
    }
    let request = request
        .header(HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|err| ApiError::internal(format!("building the kubelet request: {err}")))?;
    let client_upgrade = hyper::upgrade::on(&mut inbound);
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|err| ApiError::internal(format!("error dialing backend: {err}")))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(kubelet_failure(status, &body, name));
    }
    let kubelet_upgrade = hyper::upgrade::on(&mut response);
    let mut answer = Response::new(Empty::<Bytes>::new().boxed());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (header, value) in response.headers() {
        if header != hyper::header::CONTENT_LENGTH && header != hyper::header::TRANSFER_ENCODING {
            answer.headers_mut().append(header.clone(), value.clone());
        }
    }
    tokio::spawn(async move {
        let (client, kubelet) = match (client_upgrade.await, kubelet_upgrade.await) {
            (Ok(client), Ok(kubelet)) => (client, kubelet),
            (client, kubelet) => {
                debug!(
                    client = client.is_ok(),
                    kubelet = kubelet.is_ok(),
                    "a stream upgrade did not complete"
                );
                return;
            }
        };
        let (mut client, mut kubelet) = (TokioIo::new(client), TokioIo::new(kubelet));
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await {
            debug!("pod stream ended: {err}");
        }
    });
    Ok(answer)
}
