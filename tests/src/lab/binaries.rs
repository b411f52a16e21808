//! Which programs a lab runs: corten's own binaries from the cargo target dir
//! (`target/debug/` once `cargo build` has made them) unless `CORTEN_SERVER_BIN`,
//! `CORTEN_AGENT_BIN` or `CORTEN_CNI_BIN` name others, and the kubectl that runs inside the
//! nodes (`CORTEN_KUBECTL`, else kubectl 1.33 from the Cloud SDK, else `kubectl` on `PATH`).
//!
//! Finds files; [`build_project_binaries`] is the one place tests build them (`cargo xtask
//! up` builds them through cargo itself).
use std::path::{Path, PathBuf};

use anyhow::bail;

/// Overrides the `corten-server` the lab runs.
pub const SERVER_BIN_ENV: &str = "CORTEN_SERVER_BIN";
/// Overrides the `corten-agent` the lab runs.
pub const AGENT_BIN_ENV: &str = "CORTEN_AGENT_BIN";
/// Overrides the `corten-cni` the nodes' containerd runs.
pub const CNI_BIN_ENV: &str = "CORTEN_CNI_BIN";
/// Overrides the kubectl the lab runs inside nodes.
pub const KUBECTL_ENV: &str = "CORTEN_KUBECTL";
/// The newest kubectl corten serves, where this machine keeps it.
const CLOUD_SDK_KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

/// `$env` if set, else `target/debug/NAME`; `None` when that file does not exist.
fn project_binary(env: &str, name: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name)
    });
    path.is_file().then(|| path.canonicalize().unwrap_or(path))
}

/// The binary `env`/`name` must exist; the error says how to make it.
fn required(env: &str, name: &str, package: &str) -> anyhow::Result<PathBuf> {
    match project_binary(env, name) {
        Some(path) => Ok(path),
        None => bail!(
            "{name} is not built: run `cargo build -p {package} --bin {name}` \
             (or point {env} at one)"
        ),
    }
}

/// The `corten-cni` binary the nodes' containerd can run: `$CORTEN_CNI_BIN`, else
/// `target/debug/corten-cni` once `cargo build -p corten-cni` has made it; `None` when
/// neither exists (the nodes then have only `loopback`).
pub fn project_cni_plugin() -> Option<PathBuf> {
    project_binary(CNI_BIN_ENV, "corten-cni")
}

/// The `corten-server` a lab's control plane runs.
pub fn project_server() -> anyhow::Result<PathBuf> {
    required(SERVER_BIN_ENV, "corten-server", "corten-control-plane")
}

/// The `corten-agent` every node of a lab with a control plane runs.
pub fn project_agent() -> anyhow::Result<PathBuf> {
    required(AGENT_BIN_ENV, "corten-agent", "corten-agent")
}

/// Builds corten-server, corten-agent and corten-cni into `target/debug` (what a lab with a
/// control plane runs), with the cargo that runs the tests.
pub fn build_project_binaries() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the tests crate has a parent directory"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--package",
            "corten-control-plane",
            "--bin",
            "corten-server",
            "--package",
            "corten-agent",
            "--bin",
            "corten-agent",
            "--package",
            "corten-cni",
            "--bin",
            "corten-cni",
        ])
        .current_dir(root)
        .status()
        .map_err(|e| anyhow::anyhow!("running cargo build: {e}"))?;
    if !status.success() {
        bail!("building corten-server, corten-agent and corten-cni failed: {status}");
    }
    Ok(())
}

/// The kubectl that runs inside nodes.
pub fn kubectl() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(KUBECTL_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{KUBECTL_ENV} names {}, which does not exist",
                path.display()
            );
        }
        return Ok(path);
    }
    let sdk = Path::new(CLOUD_SDK_KUBECTL);
    if sdk.is_file() {
        return Ok(sdk.to_path_buf());
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("kubectl"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    match on_path {
        Some(path) => Ok(path),
        None => bail!("no kubectl: install one, or point {KUBECTL_ENV} at it"),
    }
}
