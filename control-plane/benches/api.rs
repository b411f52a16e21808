//! `cargo xtask bench api`: a real `corten-server` (the release binary xtask builds and passes
//! as `CORTEN_BENCH_SERVER`) on the embedded store, on loopback, driven over HTTPS with the
//! admin client certificate from the kubeconfig it writes. Measures what the API server issue
//! sets targets for: create and get latency, listing 10k pods, watch delivery latency with
//! 100 watchers, and the server's memory afterwards. Writes `target/bench/api.json` and prints
//! a table.
//!
//! Every phase is bounded in count and time; the server is this program's child and is killed
//! through its handle at the end. Nothing leaves 127.0.0.1.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    client::conn::http1::{self, SendRequest},
    header::{CONTENT_TYPE, HOST},
    Method, Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio_rustls::TlsConnector;

/// ConfigMaps POSTed one after another (create latency), then read back (get latency).
const SEQUENTIAL_CREATES: usize = 2_000;
/// Pods created before the list is timed.
const PODS: usize = 10_000;
/// Clients creating the pods concurrently, each on its own connection.
const POD_CLIENTS: usize = 16;
/// Times the 10k-pod list is taken.
const LIST_REPEATS: usize = 5;
/// Watchers on one namespace, each on its own connection.
const WATCHERS: usize = 100;
/// Writes every watcher must see.
const WATCHED_WRITES: usize = 200;
/// Longest any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the whole benchmark may take.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(900);

/// The targets of the API server issue.
const TARGET_CREATE_P99_MS: f64 = 10.0;
const TARGET_LIST_10K_PODS_MS: f64 = 100.0;
const TARGET_RSS_MB: f64 = 100.0;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(TOTAL_TIMEOUT, run())
            .await
            .context("the API benchmark took longer than its bound")?
    })
}

async fn run() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("CORTEN_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(&manifest).join("target/bench")
        });
    std::fs::create_dir_all(&out_dir)?;
    let binary = std::env::var_os("CORTEN_BENCH_SERVER")
        .map(PathBuf::from)
        .context("CORTEN_BENCH_SERVER is not set: run this through `cargo xtask bench api`")?;
    let data = tempfile::Builder::new()
        .prefix("api-bench-")
        .tempdir_in(&out_dir)?;
    let mut server = Server::start(&binary, data.path())?;
    let client = server.wait_ready().await?;
    let result = measure(&client, &mut server).await;
    let rss = server.memory();
    server.stop();
    let figures = match result {
        Ok(figures) => figures,
        Err(err) => {
            let log = std::fs::read_to_string(data.path().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{err:#}\nthe server's log ends:\n{}", tail.join("\n"));
        }
    };
    let (rss_mb, peak_mb) = rss?;
    report(&out_dir, figures, rss_mb, peak_mb)
}

/// What [`measure`] found (milliseconds unless named otherwise).
#[derive(Debug)]
struct Figures {
    create_p50: f64,
    create_p99: f64,
    get_p50: f64,
    get_p99: f64,
    pod_creates_per_s: f64,
    list_10k_pods_p50: f64,
    list_10k_pods_max: f64,
    list_bytes: usize,
    watch_p50: f64,
    watch_p99: f64,
    watch_max: f64,
    watch_from_send_p50: f64,
    watch_from_send_p99: f64,
    watch_events: usize,
}

async fn measure(client: &Client, server: &mut Server) -> anyhow::Result<Figures> {
    let mut conn = client.connect().await?;
    for ns in ["bench-cm", "bench-pods", "bench-watch"] {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        conn.expect(
            Method::POST,
            "/api/v1/namespaces",
            Some(&body),
            StatusCode::CREATED,
        )
        .await?;
    }

    // Create, one after another; then get each.
    println!("creating {SEQUENTIAL_CREATES} ConfigMaps sequentially...");
    let mut creates = Vec::with_capacity(SEQUENTIAL_CREATES);
    for i in 0..SEQUENTIAL_CREATES {
        let body = config_map(&format!("cm-{i:05}"));
        let t = Instant::now();
        conn.expect(
            Method::POST,
            "/api/v1/namespaces/bench-cm/configmaps",
            Some(&body),
            StatusCode::CREATED,
        )
        .await?;
        creates.push(t.elapsed());
    }
    println!("getting them...");
    let mut gets = Vec::with_capacity(SEQUENTIAL_CREATES);
    for i in 0..SEQUENTIAL_CREATES {
        let path = format!("/api/v1/namespaces/bench-cm/configmaps/cm-{i:05}");
        let t = Instant::now();
        conn.expect(Method::GET, &path, None, StatusCode::OK)
            .await?;
        gets.push(t.elapsed());
    }
    creates.sort();
    gets.sort();

    // 10k pods by a bounded number of concurrent clients, then the list.
    println!("creating {PODS} pods with {POD_CLIENTS} clients...");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..POD_CLIENTS {
        let mut conn = client.connect().await?;
        tasks.push(tokio::spawn(async move {
            for i in (c..PODS).step_by(POD_CLIENTS) {
                conn.expect(
                    Method::POST,
                    "/api/v1/namespaces/bench-pods/pods",
                    Some(&pod(i)),
                    StatusCode::CREATED,
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let pod_creates_per_s = PODS as f64 / started.elapsed().as_secs_f64();
    println!("listing {PODS} pods {LIST_REPEATS} times...");
    let mut lists = Vec::with_capacity(LIST_REPEATS);
    let mut list_bytes = 0;
    for _ in 0..LIST_REPEATS {
        let t = Instant::now();
        let body = conn
            .expect(
                Method::GET,
                "/api/v1/namespaces/bench-pods/pods",
                None,
                StatusCode::OK,
            )
            .await?;
        lists.push(t.elapsed());
        list_bytes = body.len();
        let list: Value = serde_json::from_slice(&body)?;
        let items = list["items"].as_array().map_or(0, Vec::len);
        ensure!(items == PODS, "the list returned {items} pods, not {PODS}");
    }
    lists.sort();

    // Watch delivery: from the write's acknowledgement to the event at each watcher.
    println!("watching with {WATCHERS} watchers while writing {WATCHED_WRITES} ConfigMaps...");
    let watch = watch_latency(client, &mut conn).await?;
    ensure!(server.running(), "the server exited during the benchmark");
    Ok(Figures {
        create_p50: percentile(&creates, 0.50),
        create_p99: percentile(&creates, 0.99),
        get_p50: percentile(&gets, 0.50),
        get_p99: percentile(&gets, 0.99),
        pod_creates_per_s,
        list_10k_pods_p50: percentile(&lists, 0.50),
        list_10k_pods_max: percentile(&lists, 1.0),
        list_bytes,
        watch_p50: percentile_ms(&watch.from_ack, 0.50),
        watch_p99: percentile_ms(&watch.from_ack, 0.99),
        watch_max: percentile_ms(&watch.from_ack, 1.0),
        watch_from_send_p50: percentile_ms(&watch.from_send, 0.50),
        watch_from_send_p99: percentile_ms(&watch.from_send, 0.99),
        watch_events: watch.from_ack.len(),
    })
}

/// Delivery latencies of every watch event, sorted, in milliseconds.
#[derive(Debug)]
struct WatchLatencies {
    /// From the write's acknowledgement (its 201 response at the writer) to the event at a
    /// watcher; negative when the event beat the response.
    from_ack: Vec<f64>,
    /// From the moment the write was sent to the event at a watcher.
    from_send: Vec<f64>,
}

/// Starts [`WATCHERS`] watches from the current resourceVersion, writes [`WATCHED_WRITES`]
/// ConfigMaps one after another, and measures when each watcher sees each write.
async fn watch_latency(client: &Client, conn: &mut Conn) -> anyhow::Result<WatchLatencies> {
    let list = conn
        .expect(
            Method::GET,
            "/api/v1/namespaces/bench-watch/configmaps",
            None,
            StatusCode::OK,
        )
        .await?;
    let list: Value = serde_json::from_slice(&list)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("the list has no resourceVersion")?
        .to_owned();
    let origin = Instant::now();
    let path = format!(
        "/api/v1/namespaces/bench-watch/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=300"
    );
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut conn = client.connect().await?;
        let body = conn.open_stream(&path).await?;
        watchers.push(tokio::spawn(async move {
            let arrivals = watch_arrivals(body, origin).await;
            drop(conn);
            arrivals
        }));
    }
    // Every watch has its response headers; give the server a moment to go live on all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent = Vec::with_capacity(WATCHED_WRITES);
    let mut acked = Vec::with_capacity(WATCHED_WRITES);
    for i in 0..WATCHED_WRITES {
        sent.push(origin.elapsed());
        conn.expect(
            Method::POST,
            "/api/v1/namespaces/bench-watch/configmaps",
            Some(&config_map(&format!("w-{i:05}"))),
            StatusCode::CREATED,
        )
        .await?;
        acked.push(origin.elapsed());
    }
    let ms =
        |later: Duration, earlier: Duration| (later.as_secs_f64() - earlier.as_secs_f64()) * 1e3;
    let mut from_ack = Vec::with_capacity(WATCHERS * WATCHED_WRITES);
    let mut from_send = Vec::with_capacity(WATCHERS * WATCHED_WRITES);
    for watcher in watchers {
        for (i, arrived) in watcher.await??.into_iter().enumerate() {
            let arrived = arrived.with_context(|| format!("a watcher never saw w-{i:05}"))?;
            from_ack.push(ms(arrived, acked[i]));
            from_send.push(ms(arrived, sent[i]));
        }
    }
    from_ack.sort_by(f64::total_cmp);
    from_send.sort_by(f64::total_cmp);
    Ok(WatchLatencies {
        from_ack,
        from_send,
    })
}

/// Reads a watch until every write has arrived; the arrival time of each, since `origin`.
async fn watch_arrivals(
    mut body: hyper::body::Incoming,
    origin: Instant,
) -> anyhow::Result<Vec<Option<Duration>>> {
    let mut arrivals = vec![None; WATCHED_WRITES];
    let mut seen = 0;
    let mut pending: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen < WATCHED_WRITES {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .context("a watcher stalled")?
            .context("a watch ended early")??;
        let now = origin.elapsed();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line)?;
            if event["type"] != "ADDED" {
                continue;
            }
            let index = event["object"]["metadata"]["name"]
                .as_str()
                .and_then(|n| n.strip_prefix("w-"))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(slot) = index.and_then(|i| arrivals.get_mut(i)) {
                if slot.is_none() {
                    *slot = Some(now);
                    seen += 1;
                }
            }
        }
    }
    Ok(arrivals)
}

fn config_map(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "data": {"key": "value", "mode": "benchmark"},
    })
}

fn pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.35"}]},
    })
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted milliseconds.
fn percentile_ms(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(out_dir: &Path, f: Figures, rss_mb: f64, peak_mb: f64) -> anyhow::Result<()> {
    let targets = [
        ("create_p99_ms", f.create_p99, TARGET_CREATE_P99_MS),
        (
            "list_10k_pods_ms",
            f.list_10k_pods_p50,
            TARGET_LIST_10K_PODS_MS,
        ),
        ("server_rss_mb", rss_mb, TARGET_RSS_MB),
    ];
    let report = json!({
        "workload": {
            "store": "embedded",
            "transport": "HTTPS, HTTP/1.1, one connection per client, admin client certificate",
            "sequential_creates": SEQUENTIAL_CREATES,
            "pods": PODS,
            "pod_clients": POD_CLIENTS,
            "list_repeats": LIST_REPEATS,
            "watchers": WATCHERS,
            "watched_writes": WATCHED_WRITES,
        },
        "figures": {
            "create_p50_ms": f.create_p50,
            "create_p99_ms": f.create_p99,
            "get_p50_ms": f.get_p50,
            "get_p99_ms": f.get_p99,
            "pod_creates_per_s": f.pod_creates_per_s,
            "list_10k_pods_ms": f.list_10k_pods_p50,
            "list_10k_pods_max_ms": f.list_10k_pods_max,
            "list_10k_pods_bytes": f.list_bytes,
            "watch_latency_p50_ms": f.watch_p50,
            "watch_latency_p99_ms": f.watch_p99,
            "watch_latency_max_ms": f.watch_max,
            "watch_latency_from_send_p50_ms": f.watch_from_send_p50,
            "watch_latency_from_send_p99_ms": f.watch_from_send_p99,
            "watch_events": f.watch_events,
            "server_rss_mb": rss_mb,
            "server_peak_rss_mb": peak_mb,
        },
        "targets": targets.iter().map(|(name, value, target)| {
            (name.to_string(), json!({"value": value, "below": target, "met": value < target}))
        }).collect::<serde_json::Map<_, _>>(),
    });
    println!("\n{:<30} {:>12}", "figure", "value");
    let rows = [
        ("create p50 (ms)", f.create_p50),
        ("create p99 (ms)", f.create_p99),
        ("get p50 (ms)", f.get_p50),
        ("get p99 (ms)", f.get_p99),
        ("pod creates/s (16 clients)", f.pod_creates_per_s),
        ("list 10k pods p50 (ms)", f.list_10k_pods_p50),
        ("list 10k pods max (ms)", f.list_10k_pods_max),
        ("list 10k pods (MB)", f.list_bytes as f64 / 1e6),
        ("watch p50 from ack (ms)", f.watch_p50),
        ("watch p99 from ack (ms)", f.watch_p99),
        ("watch max from ack (ms)", f.watch_max),
        ("watch p50 from send (ms)", f.watch_from_send_p50),
        ("watch p99 from send (ms)", f.watch_from_send_p99),
        ("server RSS (MB)", rss_mb),
        ("server peak RSS (MB)", peak_mb),
    ];
    for (name, value) in rows {
        println!("{name:<30} {value:>12.2}");
    }
    println!(
        "\n{:<20} {:>10} {:>10} {:>6}",
        "target", "value", "below", "met"
    );
    for (name, value, target) in targets {
        let met = if value < target { "yes" } else { "no" };
        println!("{name:<20} {value:>10.2} {target:>10.2} {met:>6}");
    }
    let path = out_dir.join("api.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The `corten-server` under test: its child handle, data directory and port.
struct Server {
    child: Child,
    data: PathBuf,
    port: u16,
}

impl Server {
    fn start(binary: &Path, data: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(data.join("server.log"))?;
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(data)
            .args(["--bind-address", "127.0.0.1"])
            .args(["--https-port", &port.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            data: data.to_path_buf(),
            port,
        })
    }

    /// Waits for the kubeconfig and `/readyz`; the client it made from the kubeconfig.
    async fn wait_ready(&mut self) -> anyhow::Result<Client> {
        let kubeconfig = self.data.join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("corten-server exited at start: {status}");
            }
            if kubeconfig.exists() {
                if let Ok(client) = Client::from_kubeconfig(&kubeconfig, self.port) {
                    let ready = async {
                        let mut conn = client.connect().await?;
                        conn.expect(Method::GET, "/readyz", None, StatusCode::OK)
                            .await
                    };
                    if ready.await.is_ok() {
                        return Ok(client);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("corten-server was not ready in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `(VmRSS, VmHWM)` of the server, in MB.
    fn memory(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the server's /proc status")?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc status"))?;
            let kb: f64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kb / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Kills the server through its handle and reaps it.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HTTPS to the server with the admin client certificate.
#[derive(Clone)]
struct Client {
    tls: TlsConnector,
    port: u16,
}

impl Client {
    fn from_kubeconfig(path: &Path, port: u16) -> anyhow::Result<Self> {
        let config: Value = serde_yaml::from_slice(&std::fs::read(path)?)?;
        let field = |pointer: &str| -> anyhow::Result<Vec<u8>> {
            let text = config
                .pointer(pointer)
                .and_then(Value::as_str)
                .with_context(|| format!("the kubeconfig has no {pointer}"))?;
            Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
        };
        let ca = field("/clusters/0/cluster/certificate-authority-data")?;
        let cert = field("/users/0/user/client-certificate-data")?;
        let key = field("/users/0/user/client-key-data")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert?)?;
        }
        let chain = CertificateDer::pem_slice_iter(&cert).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            port,
        })
    }

    /// A new HTTP/1.1 connection (kept alive for many requests).
    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let tls = self.tls.connect(name, tcp).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            host: format!("127.0.0.1:{}", self.port),
        })
    }
}

/// One kept-alive connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let bytes = match body {
            Some(value) => Bytes::from(serde_json::to_vec(value)?),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(request).await?)
    }

    /// Sends a request and reads the whole response, which must have status `expected`.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: StatusCode,
    ) -> anyhow::Result<Bytes> {
        let exchange = async {
            let response = self.send(method.clone(), path, body).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {path} took over {REQUEST_TIMEOUT:?}"))??;
        if status != expected {
            bail!(
                "{method} {path}: {status} (wanted {expected}): {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(bytes)
    }

    /// Opens a streaming GET (a watch) and returns its body once the headers are in.
    async fn open_stream(&mut self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.send(Method::GET, path, None))
            .await
            .with_context(|| format!("GET {path} took over {REQUEST_TIMEOUT:?}"))??;
        ensure!(
            response.status() == StatusCode::OK,
            "GET {path}: {}",
            response.status()
        );
        Ok(response.into_body())
    }
}
