//! The API server driven by the official Python `kubernetes` client: starts a
//! `corten-server` on loopback and runs `tests/python/test_client.py` under pytest with
//! KUBECONFIG set to its admin kubeconfig. The Python file holds the checks (Pods through
//! CoreV1Api, a CRD and its custom objects through CustomObjectsApi); this file only starts
//! the server, runs pytest, and fails with pytest's output when pytest fails.
//!
//! The client and pytest live in the virtualenv `target/python` that `cargo xtask deps`
//! makes; the test fails, saying so, when it is missing.
#![cfg(feature = "python-tests")]

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

/// How long the server may take to answer /readyz.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the whole pytest run may take; each wait inside it is bounded far below this.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Asks /readyz through the Python client, so readiness is judged by the client under test.
const READYZ: &str = "\
from kubernetes import client, config
config.load_kube_config()
client.ApiClient().call_api('/readyz', 'GET', _preload_content=False, _request_timeout=2)
";

/// The workspace root: this crate's parent.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The virtualenv's interpreter, made by `cargo xtask deps`.
fn python() -> Result<PathBuf> {
    let python = workspace_root().join("target/python/bin/python");
    ensure!(
        python.exists(),
        "{} is missing: run `cargo xtask deps` to make the virtualenv with the kubernetes \
         client and pytest",
        python.display()
    );
    Ok(python)
}

/// A `corten-server` on loopback, killed (by its own handle) when dropped.
struct Server {
    child: Child,
    data: PathBuf,
}

impl Server {
    fn start(data: &Path, port: u16, python: &Path) -> Result<Self> {
        let log = File::create(data.join("server.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_corten-server"))
            .arg("--data-dir")
            .arg(data)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--https-port",
                &port.to_string(),
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting corten-server")?;
        let mut server = Self {
            child,
            data: data.to_path_buf(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if server.kubeconfig().exists() {
                let ready = Command::new(python)
                    .args(["-c", READYZ])
                    .env("KUBECONFIG", server.kubeconfig())
                    .stdin(Stdio::null())
                    .output();
                if ready.as_ref().is_ok_and(|o| o.status.success()) {
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "corten-server exited ({status}); its log:\n{}",
                    server.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "corten-server did not become ready on port {port}; its log:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs pytest on `tests/python/test_client.py` against `server`: whether it passed, and
/// its output.
fn pytest(python: &Path, server: &Server, dir: &Path) -> Result<(bool, String)> {
    let output_path = dir.join("pytest.out");
    let output = File::create(&output_path)?;
    let mut child = Command::new(python)
        .current_dir(workspace_root())
        .args(["-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider"])
        .arg("control-plane/tests/python/test_client.py")
        .env("KUBECONFIG", server.kubeconfig())
        // Leaves no __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .context("starting pytest")?;
    let deadline = Instant::now() + PYTEST_TIMEOUT;
    let passed = loop {
        if let Some(status) = child.try_wait()? {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(&output_path).unwrap_or_default();
            bail!("pytest did not finish in {PYTEST_TIMEOUT:?}:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok((passed, std::fs::read_to_string(&output_path)?))
}

#[test]
fn python_client_drives_the_api_server() -> Result<()> {
    let python = python()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data)?;
    let server = Server::start(&data, free_port()?, &python)?;
    let (passed, output) = pytest(&python, &server, dir.path())?;
    ensure!(
        passed,
        "the Python client tests failed:\n{output}\ncorten-server's log:\n{}",
        server.log()
    );
    println!("{output}");
    Ok(())
}
