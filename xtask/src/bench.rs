//! `cargo xtask bench NAME`: benchmarks are programs that print figures and write
//! `target/bench/NAME.json`, comparing corten with an anchor measured in the same run or with
//! the targets it must meet. They are never timed tests. This module starts or builds what a
//! benchmark needs (a real etcd for the store, the release `corten-server` for the API and the
//! scheduler, the images and the release cluster binaries for pod startup; the datapath
//! benchmark needs nothing but the lab) and runs the benchmark program.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Runs one benchmark by name.
pub fn run(name: &str) -> anyhow::Result<()> {
    crate::deps::ensure()?;
    match name {
        "store" => store(),
        "api" => server_bench("api", "the API benchmark"),
        "scheduler" => server_bench("scheduler", "the scheduler benchmark"),
        "network" => lab_bench("network", "the network benchmark", &[]),
        "podstart" => podstart(),
        "datapath" => lab_bench("datapath", "the datapath benchmark", &[]),
        other => {
            bail!(
                "unknown benchmark {other:?}; known: store, api, scheduler, network, podstart, \
                 datapath"
            )
        }
    }
}

/// The store benchmark: embedded vs a real etcd on loopback.
fn store() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let status = Command::new(crate::lab::cargo())
        .current_dir(crate::workspace_root())
        .args([
            "bench",
            "--package",
            "corten-control-plane",
            "--bench",
            "store",
        ])
        .env("CORTEN_BENCH_ETCD", etcd.endpoint())
        .status()
        .context("running the store benchmark")?;
    drop(etcd);
    if !status.success() {
        bail!("the store benchmark failed: {status}");
    }
    Ok(())
}

/// A benchmark of a release `corten-server` on the embedded store, driven over HTTPS on
/// loopback by `control-plane/benches/NAME.rs`, which starts and kills its servers itself:
/// `api` (the API server's latencies and memory) and `scheduler` (scheduler_perf's
/// workloads on 5000 nodes).
fn server_bench(bench: &str, what: &str) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let status = Command::new(crate::lab::cargo())
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--package",
            "corten-control-plane",
            "--bin",
            "corten-server",
        ])
        .status()
        .context("building corten-server")?;
    if !status.success() {
        bail!("building corten-server failed: {status}");
    }
    let server = target_dir().join("release").join("corten-server");
    let status = Command::new(crate::lab::cargo())
        .current_dir(&root)
        .args([
            "bench",
            "--package",
            "corten-control-plane",
            "--bench",
            bench,
        ])
        .env("CORTEN_BENCH_SERVER", &server)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// The pod startup benchmark, `tests/benches/podstart.rs`: 100 pods at once on a one-node
/// lab (root), running the release builds of the cluster's binaries, built here with the
/// images the lab imports.
fn podstart() -> anyhow::Result<()> {
    crate::images::build(&crate::images::default_dir())?;
    crate::up::build_release_cluster_binaries()?;
    let release = target_dir().join("release");
    lab_bench(
        "podstart",
        "the pod startup benchmark",
        &[
            ("CORTEN_SERVER_BIN", release.join("corten-server")),
            ("CORTEN_AGENT_BIN", release.join("corten-agent")),
            ("CORTEN_CNI_BIN", release.join("corten-cni")),
        ],
    )
}

/// A benchmark on labs (root), `tests/benches/NAME.rs`, with `env` set: `network` (3-node
/// labs, one per network mode; the lab builds the project's binaries itself), `podstart` and
/// `datapath` (a 2-node lab without control plane: the bench drives the agent's proxy library
/// itself and loads kube-proxy's iptables rules for comparison).
fn lab_bench(bench: &str, what: &str, env: &[(&str, PathBuf)]) -> anyhow::Result<()> {
    let status = Command::new(crate::lab::cargo())
        .current_dir(crate::workspace_root())
        .args([
            "bench",
            "--package",
            "corten-tests",
            "--features",
            "lab-tests",
            "--bench",
            bench,
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// The cargo target directory (`$CARGO_TARGET_DIR`, else the workspace's `target`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}

/// A single-member etcd (Debian's etcd-server) on loopback for a benchmark, with default
/// durability (fsync on every commit). Killed and removed when dropped.
struct Etcd {
    child: Child,
    client_port: u16,
    dir: PathBuf,
}

impl Etcd {
    fn start() -> anyhow::Result<Self> {
        let dir = crate::workspace_root()
            .join("target/bench")
            .join(format!("etcd-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .arg("--max-request-bytes=3211264")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (`cargo xtask deps` installs etcd-server)")?;
        let etcd = Self {
            child,
            client_port,
            dir,
        };
        etcd.wait_healthy()?;
        Ok(etcd)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn wait_healthy(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.endpoint(), "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                bail!("etcd did not become healthy; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
