//! A real `corten-server` process on loopback (embedded store, its own data directory) and a
//! kube-rs client for it, read from the admin kubeconfig the server writes. Killed — by its
//! own handle — when dropped.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A running corten-server.
pub struct Server {
    child: Child,
    /// Its data directory.
    pub data: PathBuf,
    /// Its HTTPS port.
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts a server in a fresh temporary directory with extra flags.
    pub async fn start(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("server");
        std::fs::create_dir_all(&data)?;
        let mut server = Self::start_in(&data, free_port()?, extra).await?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts a server on a data directory and port.
    pub async fn start_in(data: &Path, port: u16, extra: &[&str]) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("server.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_corten-server"))
            .arg("--data-dir")
            .arg(data)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--https-port",
                &port.to_string(),
            ])
            .args(extra)
            .env("RUST_LOG", "info,corten_control_plane=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting corten-server")?;
        let server = Self {
            child,
            data: data.to_path_buf(),
            port,
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if server.kubeconfig().exists() {
                if let Ok(client) = server.client().await {
                    if client.apiserver_version().await.is_ok() {
                        return Ok(server);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "corten-server did not become ready on port {port}; its log:\n{}",
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The admin kubeconfig's path.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }

    /// A kube-rs client with the admin identity.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        // Tests look at every answer as it is: no silent retries of 429 / 503.
        config.default_retry = false;
        Ok(kube::Client::try_from(config)?)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(e) => bail!("timed out waiting for {what}; last error: {e:#}"),
                None => bail!("timed out waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
