//! `cargo xtask deps`: installs, idempotently, everything a fresh machine lacks to build and
//! test corten. Each item is checked first and skipped when present; every failure is named
//! at the end.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

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
    (
        "iperf3",
        "pod-to-pod throughput in `cargo xtask bench network`",
    ),
    ("iproute2", "namespaces, links and routes of the lab"),
    (
        "iputils-ping",
        "ping with the don't-fragment bit, for the pod network's MTU test",
    ),
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
    (
        "python3-venv",
        "ensurepip, without which Debian's `python3 -m venv` fails",
    ),
];

/// The interpreter the Python client tests' virtualenv is made from: Debian's, so CI and a
/// fresh machine get the same one whatever else (pyenv, say) comes first on `PATH`.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Major versions of what the virtualenv gets: the official client of Kubernetes 1.33, the
/// newest release corten serves, and pytest, which runs its tests.
const PYTHON_PACKAGES: &[(&str, u32)] = &[("kubernetes", 33), ("pytest", 8)];

/// The bpf-linker release known to build against LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-fuzz release that builds with this machine's stable toolchain (rustc 1.95) and
/// drives the nightly one's libFuzzer; `--locked` keeps its own dependencies as released.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

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
    // The fuzz targets run on nightly, so cargo-fuzz is checked through it.
    if let Err(err) = cargo_fuzz() {
        failed.push(format!("cargo-fuzz: {err:#}"));
    }
    // The virtualenv needs python3-venv from the Debian packages.
    if let Err(err) = python_client() {
        failed.push(format!("Python client virtualenv: {err:#}"));
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

fn cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        println!("deps: cargo-fuzz present");
        return Ok(());
    }
    println!("deps: installing cargo-fuzz {CARGO_FUZZ_VERSION} (the fuzz targets in fuzz/)");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
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

/// The virtualenv the Python client tests run in (`target/python` in the workspace).
fn python_venv() -> PathBuf {
    crate::workspace_root().join("target").join("python")
}

/// Makes `target/python`, a virtualenv with [`PYTHON_PACKAGES`] in it, unless they already
/// import there in the pinned major versions.
fn python_client() -> anyhow::Result<()> {
    let venv = python_venv();
    let python = venv.join("bin").join("python");
    // `import kubernetes; assert kubernetes.__version__.split('.')[0] == '33', ...` for each.
    let check = PYTHON_PACKAGES
        .iter()
        .map(|(name, major)| {
            format!(
                "import {name}; assert {name}.__version__.split('.')[0] == '{major}', \
                 '{name} ' + {name}.__version__ + ' is not {major}.x'"
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let importable = || {
        Command::new(&python)
            .args(["-c", &check])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if importable() {
        println!(
            "deps: Python client virtualenv present ({})",
            venv.display()
        );
        return Ok(());
    }
    // A virtualenv made without ensurepip (python3-venv missing) has an interpreter but no pip.
    let has_pip = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_pip {
        let base = if Path::new(DEBIAN_PYTHON).exists() {
            DEBIAN_PYTHON
        } else {
            "python3"
        };
        println!(
            "deps: making a virtualenv at {} from {base}",
            venv.display()
        );
        // `--clear`: a broken virtualenv is rebuilt, not patched.
        run(Command::new(base)
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    let requirements: Vec<String> = PYTHON_PACKAGES
        .iter()
        .map(|(name, major)| format!("{name}>={major},<{}", major + 1))
        .collect();
    println!(
        "deps: installing {} into {} (the Python client tests)",
        requirements.join(" "),
        venv.display()
    );
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(&requirements))?;
    output(Command::new(&python).args(["-c", &check]))
        .context("the virtualenv still lacks a pinned package")?;
    Ok(())
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
