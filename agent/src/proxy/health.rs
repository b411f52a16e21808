//! healthCheckNodePorts (kube-proxy's service health server). For every LoadBalancer Service
//! with `externalTrafficPolicy: Local`, this node answers HTTP on the Service's
//! healthCheckNodePort, on every address of the node and for any path: 200 while the node
//! has local endpoints that take new connections and the proxy's last sync succeeded, 503
//! otherwise. The body is kube-proxy's JSON (`service`, `localEndpoints`,
//! `serviceProxyHealthy`) and `X-Load-Balancing-Endpoint-Weight` carries the endpoint count,
//! so an external load balancer sends traffic only to nodes that can serve it without a hop
//! (the hop that `Local` forbids).
//!
//! Owns the listeners. `desired` decides the ports and the counts; this module must not
//! touch the datapath maps.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_TYPE},
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::{net::TcpSocket, sync::watch, task::JoinHandle};
use tracing::{debug, info};

use super::desired::HealthCheck;

/// Pending connections per listener.
const BACKLOG: u32 = 128;

/// What the listeners answer from: the health checks of the last sync and whether it
/// succeeded.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    checks: Arc<BTreeMap<u16, HealthCheck>>,
    proxy_healthy: bool,
}

/// The healthCheckNodePort listeners of this node.
#[derive(Debug)]
pub struct HealthServers {
    address: Ipv4Addr,
    state: watch::Sender<Snapshot>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

/// The answer for a port: status code and body (none for a port that serves no Service).
fn answer(snapshot: &Snapshot, port: u16) -> Option<(StatusCode, usize, String)> {
    let check = snapshot.checks.get(&port)?;
    let body = json!({
        "service": {"namespace": check.service.namespace, "name": check.service.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": snapshot.proxy_healthy,
    });
    let code = if check.local_endpoints > 0 && snapshot.proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    Some((code, check.local_endpoints, text))
}

fn respond(snapshot: &Snapshot, port: u16) -> Response<Full<Bytes>> {
    let Some((code, weight, body)) = answer(snapshot, port) else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"no service\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "X-Load-Balancing-Endpoint-Weight",
        HeaderValue::from(weight),
    );
    response
}

impl HealthServers {
    /// Listeners on `address` (the unspecified address: every address of the node).
    pub fn new(address: Ipv4Addr) -> Self {
        Self {
            address,
            state: watch::Sender::new(Snapshot::default()),
            listeners: BTreeMap::new(),
        }
    }

    /// Serves exactly `checks` from now on: new ports are bound, ports no longer wanted are
    /// closed, and every listener answers from the new counts. Returns the ports that could
    /// not be bound (another process holds them); calling again retries them.
    pub fn update(
        &mut self,
        checks: &BTreeMap<u16, HealthCheck>,
        proxy_healthy: bool,
    ) -> Vec<(u16, io::Error)> {
        self.state.send_replace(Snapshot {
            checks: Arc::new(checks.clone()),
            proxy_healthy,
        });
        self.listeners.retain(|port, task| {
            let keep = checks.contains_key(port) && !task.is_finished();
            if !keep {
                task.abort();
                info!(port, "stopped serving a healthCheckNodePort");
            }
            keep
        });
        let mut failed = Vec::new();
        for (&port, check) in checks {
            if self.listeners.contains_key(&port) {
                continue;
            }
            match self.listen(port) {
                Ok(task) => {
                    info!(port, service = %check.service, "serving a healthCheckNodePort");
                    self.listeners.insert(port, task);
                }
                Err(error) => failed.push((port, error)),
            }
        }
        failed
    }

    /// The ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    fn listen(&self, port: u16) -> io::Result<JoinHandle<()>> {
        let socket = TcpSocket::new_v4()?;
        // Answers close the connection from this side; their TIME_WAIT must not keep a
        // restarted agent from binding the port again.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(self.address, port)))?;
        let listener = socket.listen(BACKLOG)?;
        let state = self.state.subscribe();
        Ok(tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        debug!(port, %error, "healthCheckNodePort accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                        let response = respond(&state.borrow(), port);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Err(error) = builder.serve_connection(TokioIo::new(tcp), service).await {
                        debug!(port, %peer, %error, "healthCheckNodePort connection ended");
                    }
                });
            }
        }))
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::desired::ServiceRef;

    fn check(name: &str, local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            service: ServiceRef {
                namespace: "default".into(),
                name: name.into(),
            },
            local_endpoints,
        }
    }

    async fn get(port: u16) -> io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok(text)
    }

    fn free_port() -> io::Result<u16> {
        Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port())
    }

    #[tokio::test]
    async fn answers_follow_the_local_endpoints() -> io::Result<()> {
        let (web, empty) = (free_port()?, free_port()?);
        let mut servers = HealthServers::new(Ipv4Addr::LOCALHOST);
        let checks = BTreeMap::from([(web, check("web", 2)), (empty, check("empty", 0))]);
        assert!(servers.update(&checks, true).is_empty());
        assert_eq!(servers.ports().len(), 2);

        let answer = get(web).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("x-load-balancing-endpoint-weight: 2"),
            "{answer}"
        );
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(body)?;
        assert_eq!(
            body,
            json!({"service": {"namespace": "default", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        let answer = get(empty).await?;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"localEndpoints\": 0"), "{answer}");

        // A failed sync makes every port unhealthy; counts change in place.
        let checks = BTreeMap::from([(web, check("web", 2)), (empty, check("empty", 1))]);
        servers.update(&checks, false);
        let answer = get(web).await?;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("\"serviceProxyHealthy\": false"),
            "{answer}"
        );
        servers.update(&checks, true);
        assert!(get(empty).await?.starts_with("HTTP/1.1 200"));

        // A port no longer wanted is closed.
        servers.update(&BTreeMap::from([(web, check("web", 1))]), true);
        assert_eq!(servers.ports(), [web]);
        let mut refused = false;
        for _ in 0..50 {
            if get(empty).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(refused, "port {empty} still answers");
        Ok(())
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_and_retried() -> io::Result<()> {
        let holder = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = holder.local_addr()?.port();
        let mut servers = HealthServers::new(Ipv4Addr::LOCALHOST);
        let checks = BTreeMap::from([(port, check("web", 1))]);
        let failed = servers.update(&checks, true);
        assert_eq!(failed.len(), 1);
        assert!(servers.ports().is_empty());
        drop(holder);
        assert!(servers.update(&checks, true).is_empty());
        assert!(get(port).await?.starts_with("HTTP/1.1 200"));
        Ok(())
    }
}
