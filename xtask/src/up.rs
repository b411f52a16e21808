//! `cargo xtask up`: the README's first command. Builds corten-server, corten-agent and
//! corten-cni (debug builds, by running cargo: xtask must not link crates that need
//! `protoc`), replaces lab `corten` with a fresh one-node lab whose node 0 runs the control
//! plane and whose node runs the agent, checks that the API answers kubectl from inside the
//! node, and says how to use it. `cargo xtask kubectl` runs kubectl there.
use anyhow::{bail, Context};

/// The lab `cargo xtask up` uses.
const LAB: &str = "corten";

/// Builds what is needed and leaves a one-node cluster running in lab `corten`.
pub fn run() -> anyhow::Result<()> {
    crate::deps::ensure()?;
    crate::images::build(&crate::images::default_dir())?;
    build_cluster_binaries()?;
    // A fresh cluster, running the binaries just built.
    lab(&["down", "--name", LAB])?;
    lab(&["up", "--name", LAB, "--nodes", "1", "--control-plane"])?;
    // The lab waited for the API already; this is the check a user would make.
    lab(&["kubectl", "--name", LAB, "--", "get", "--raw", "/readyz"])
        .context("the API server does not answer kubectl inside the lab")?;
    println!(
        "\ncorten is up in lab {LAB}. Run kubectl against it with \
         `cargo xtask kubectl -- get nodes` (or the `ip netns exec` line above); \
         remove it with `cargo xtask lab down --name {LAB}`."
    );
    Ok(())
}

/// `cargo xtask kubectl -- ARGS`: kubectl inside node 0 of lab `corten` with its admin
/// kubeconfig; exits with kubectl's exit code.
pub fn kubectl(args: Vec<String>) -> anyhow::Result<()> {
    let mut all: Vec<String> = ["kubectl", "--name", LAB, "--"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    all.extend(args);
    let code = crate::lab::corten_lab(&all)?;
    std::process::exit(code);
}

/// `cargo build` of the binaries a lab cluster runs (the lab takes them from target/debug).
pub fn build_cluster_binaries() -> anyhow::Result<()> {
    cargo_build_cluster_binaries(false)
}

/// The same binaries in `target/release`, for benchmarks (they point the lab at them).
pub fn build_release_cluster_binaries() -> anyhow::Result<()> {
    cargo_build_cluster_binaries(true)
}

fn cargo_build_cluster_binaries(release: bool) -> anyhow::Result<()> {
    let mut args = vec![
        "build",
        "--package",
        "corten-control-plane",
        "--package",
        "corten-agent",
        "--package",
        "corten-cni",
        "--bins",
    ];
    if release {
        args.push("--release");
    }
    let status = std::process::Command::new(crate::lab::cargo())
        .current_dir(crate::workspace_root())
        .args(&args)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Runs `corten-lab ARGS`, failing unless it exits with 0.
fn lab(args: &[&str]) -> anyhow::Result<()> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let code = crate::lab::corten_lab(&args)?;
    if code != 0 {
        bail!("`corten-lab {}` failed (exit {code})", args.join(" "));
    }
    Ok(())
}
