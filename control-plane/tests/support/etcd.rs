//! Real etcd servers for tests: [`EtcdServer`] (one member) and [`EtcdCluster`] (three),
//! started from Debian's `etcd` binary (3.4) on loopback with free ports, a temporary data
//! directory and a log file beside it.
//!
//! Owns the etcd processes it starts: it kills and reaps them on drop through their `Child`
//! handles, and must never signal a process by name or touch an etcd it did not start. It
//! panics (with the log's tail) when etcd cannot start: a test cannot go on without it.

use std::{
    collections::HashSet,
    fs::File,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use corten_control_plane::store::{etcd::EtcdStore, Range, Store as _, MAX_REQUEST_BYTES};
use tempfile::TempDir;
use tokio::time::{sleep, timeout, Instant};

/// Debian's etcd-server (3.4), which `cargo xtask deps` installs.
const ETCD: &str = "/usr/bin/etcd";
/// How long etcd may take to serve after it is started.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How many times a start is retried when a port chosen was taken in the meantime.
const START_ATTEMPTS: usize = 3;
/// etcd's request limit: the store's (which counts keys and values, and so lets 1.5 MiB
/// values through as the embedded store does) plus room for the protobuf framing etcd counts
/// too, so that both backends accept exactly the same requests.
const ETCD_MAX_REQUEST_BYTES: usize = MAX_REQUEST_BYTES + 64 * 1024;
/// How many lines of etcd's log a failure shows.
const LOG_TAIL_LINES: usize = 40;

/// Ports handed out by this process, so that two fixtures started at once never share one.
static PORTS_HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
/// Makes every cluster token unique within this process.
static CLUSTERS_STARTED: AtomicU64 = AtomicU64::new(0);

/// `n` loopback ports that were free a moment ago and that this process has not used yet.
fn free_ports(n: usize) -> Vec<u16> {
    let mut handed_out = PORTS_HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    // Hold every listener until all ports are chosen, so the kernel cannot repeat one.
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("a bound port").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    ports
}

/// A cluster token no other etcd started by any test shares.
fn unique_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let count = CLUSTERS_STARTED.fetch_add(1, Ordering::Relaxed);
    format!("corten-test-{}-{count}-{nanos}", std::process::id())
}

/// One etcd process.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn new(dir: &Path, name: &str, client_port: u16, peer_port: u16) -> Member {
        Member {
            name: name.to_string(),
            client_url: format!("http://127.0.0.1:{client_port}"),
            peer_url: format!("http://127.0.0.1:{peer_port}"),
            data_dir: dir.join(format!("{name}.etcd")),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts the process, a member of `initial_cluster` (`name=peer-url,...`).
    fn spawn(&mut self, initial_cluster: &str, token: &str) {
        if !Path::new(ETCD).exists() {
            panic!("etcd not found: run `cargo xtask deps`");
        }
        let log = File::create(&self.log)
            .unwrap_or_else(|error| panic!("create {}: {error}", self.log.display()));
        let stderr = log
            .try_clone()
            .unwrap_or_else(|error| panic!("duplicate {}: {error}", self.log.display()));
        let mut command = Command::new(ETCD);
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            .args(["--max-request-bytes", &ETCD_MAX_REQUEST_BYTES.to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        // Settings from the environment would override nothing (flags win) but make etcd
        // refuse to start when both are given.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("start {ETCD}: {error}"));
        self.child = Some(child);
    }

    /// Whether the process exited already.
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | Some(Err(_)) | None => true,
            Some(Ok(None)) => false,
        }
    }

    /// Waits until the member serves a linearizable read (so the cluster has a leader), or
    /// returns why not: etcd exited, or the deadline passed.
    async fn wait_until_serving(&mut self, deadline: Instant) -> Result<(), String> {
        let endpoints = [self.client_url.clone()];
        let mut last_error = String::from("never tried");
        while Instant::now() < deadline {
            if self.exited() {
                return Err(format!("etcd {} exited", self.name));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = async {
                let store = EtcdStore::connect(&endpoints).await?;
                store.range(Range::key(vec![0]).count_only()).await
            };
            match timeout(left, attempt).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(error)) => last_error = error.to_string(),
                Err(_) => last_error = "timed out".to_string(),
            }
            sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "etcd {} did not serve within {START_DEADLINE:?}: {last_error}",
            self.name
        ))
    }

    /// The last lines of the member's log.
    fn log_tail(&self) -> String {
        let Ok(file) = File::open(&self.log) else {
            return format!("(no log at {})", self.log.display());
        };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// SIGKILLs the process and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited by itself already; then there is nothing to kill.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `names.len()` members as one new cluster and waits until each serves; retries with
/// new ports when one was taken in the meantime. Panics with the logs when etcd cannot start.
async fn start_members(dir: &Path, names: &[&str]) -> Vec<Member> {
    let mut failure = String::new();
    for _attempt in 0..START_ATTEMPTS {
        let ports = free_ports(2 * names.len());
        let mut members: Vec<Member> = names
            .iter()
            .zip(ports.chunks(2))
            .map(|(name, ports)| Member::new(dir, name, ports[0], ports[1]))
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let token = unique_token();
        for member in &mut members {
            // A data directory from a failed attempt would hold the other cluster's identity.
            let _ = std::fs::remove_dir_all(&member.data_dir);
            member.spawn(&initial_cluster, &token);
        }
        let deadline = Instant::now() + START_DEADLINE;
        let mut outcome = Ok(());
        for member in &mut members {
            outcome = member.wait_until_serving(deadline).await;
            if outcome.is_err() {
                break;
            }
        }
        match outcome {
            Ok(()) => return members,
            Err(error) => {
                let logs: Vec<String> = members.iter().map(Member::log_tail).collect();
                for member in &mut members {
                    member.kill();
                }
                failure = format!("{error}\n{}", logs.join("\n"));
                if !failure.contains("address already in use") {
                    break;
                }
            }
        }
    }
    panic!("could not start etcd: {failure}");
}

/// One etcd member on loopback, killed on drop.
pub struct EtcdServer {
    member: Member,
    // Declared last: dropped after the process is dead.
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves (at most 20 s).
    pub async fn start() -> EtcdServer {
        let dir = tempfile::tempdir().expect("a temporary directory for etcd");
        let mut members = start_members(dir.path(), &["default"]).await;
        let member = members
            .pop()
            .expect("start_members starts every member asked for");
        EtcdServer { member, _dir: dir }
    }

    /// Its client URL (`http://127.0.0.1:port`).
    pub fn endpoint(&self) -> String {
        self.member.client_url.clone()
    }

    /// A store connected to it.
    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&[self.endpoint()])
            .await
            .expect("connect to the test etcd")
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.member.log_tail()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.member.kill();
    }
}

/// Three etcd members forming one cluster on loopback, all killed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    // Declared last: dropped after the processes are dead.
    _dir: TempDir,
}

impl EtcdCluster {
    /// How many members it has.
    pub const SIZE: usize = 3;

    /// Starts the three members and waits until each serves (at most 20 s).
    pub async fn start() -> EtcdCluster {
        let dir = tempfile::tempdir().expect("a temporary directory for etcd");
        let members = start_members(dir.path(), &["m0", "m1", "m2"]).await;
        EtcdCluster { members, _dir: dir }
    }

    /// The members' client URLs, member 0 first.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| member.client_url.clone())
            .collect()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill_member(&mut self, i: usize) {
        let count = self.members.len();
        let member = self
            .members
            .get_mut(i)
            .unwrap_or_else(|| panic!("the cluster has {count} members, not a member {i}"));
        member.kill();
    }

    /// The last lines of every member's log, for failure messages.
    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(Member::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}
