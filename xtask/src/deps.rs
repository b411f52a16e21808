//! `cargo xtask deps`: installs, idempotently, everything a fresh machine lacks to build and
//! test corten. Each item is checked first and skipped when present; every failure is named
//! at the end.
use std::process::Command;

use anyhow::{bail, Context};

/// Debian packages and why corten needs each.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("containerd", "the container runtime every lab node runs"),
    ("runc", "the OCI runtime containerd calls"),
    (
        "containernetworking-plugins",
        "the `loopback` CNI plugin go-cni always runs",
    ),
    (
        "etcd-server",
        "the distributed datastore backend and its tests",
    ),
    ("etcd-client", "etcdctl, to inspect a corten store"),
    (
        "busybox-static",
        "the test image's userland and in-node tools",
    ),
    ("bird2", "a real BGP peer for the BGP tests"),
    ("iproute2", "namespaces, links and routes of the lab"),
    (
        "iptables",
        "the kube-proxy comparison in the datapath benchmark",
    ),
    ("nftables", "masquerade for pod traffic"),
    ("bpftool", "inspecting loaded programs and maps"),
    ("dnsutils", "dig, for cluster DNS tests"),
    (
        "protobuf-compiler",
        "protoc, for the CRI, containerd and etcd gRPC bindings",
    ),
    (
        "libprotobuf-dev",
        "protobuf's well-known .proto files, which etcd's protos import",
    ),
    ("llvm-22-dev", "LLVM 22, which bpf-linker links against"),
    ("libpolly-22-dev", "Polly, which LLVM 22's link line needs"),
];

/// The bpf-linker release known to build against LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs what is missing; fails naming everything that could not be installed.
pub fn ensure() -> anyhow::Result<()> {
    let mut failed = Vec::new();
    if let Err(err) = debian_packages() {
        failed.push(format!("Debian packages: {err:#}"));
    }
    if let Err(err) = nightly() {
        failed.push(format!("nightly toolchain: {err:#}"));
    }
    // bpf-linker builds against LLVM 22 from the Debian packages, so it comes after them.
    if let Err(err) = bpf_linker() {
        failed.push(format!("bpf-linker: {err:#}"));
    }
    if !failed.is_empty() {
        bail!(
            "cargo xtask deps could not install:\n  {}",
            failed.join("\n  ")
        );
    }
    println!("deps: everything is installed");
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !dpkg_installed(name))
        .collect();
    if missing.is_empty() {
        println!("deps: Debian packages present");
        return Ok(());
    }
    for (name, why) in DEBIAN_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        println!("deps: installing {name} ({why})");
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))?;
    let still: Vec<&str> = missing
        .into_iter()
        .filter(|name| !dpkg_installed(name))
        .collect();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(", "));
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn nightly() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("deps: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("deps: nightly with rust-src present");
        return Ok(());
    }
    println!("deps: adding rust-src to nightly (for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let present = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        println!("deps: bpf-linker present");
        return Ok(());
    }
    println!("deps: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    run(Command::new("cargo")
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"]))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
