//! `cargo xtask test`: the README's test command and what `.ci/run` runs. Installs what is
//! missing, builds the images, then runs formatting and lint checks, the unit tests, and
//! the lab tests (root: real namespaces, containerd and eBPF). Stops at the first failure.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Runs every step; fails naming the step that failed.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        println!("\n==> {name}");
        let begun = Instant::now();
        let result = f().with_context(|| format!("step `{name}` failed"));
        timings.push((name, begun.elapsed()));
        result
    };
    step("deps", &mut crate::deps::ensure)?;
    step("images", &mut || {
        crate::images::build(&crate::images::default_dir()).map(|_| ())
    })?;
    step("fmt", &mut || cargo(&["fmt", "--all", "--check"]))?;
    step("clippy", &mut || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    step("unit tests", &mut || cargo(&["test", "--workspace"]))?;
    step("lab tests", &mut || {
        require_root()?;
        cargo(&[
            "test",
            "--package",
            "corten-tests",
            "--features",
            "lab-tests",
            "--",
            "--test-threads",
            "2",
        ])
    })?;
    println!("\n==> summary");
    for (name, took) in &timings {
        println!("  {name:<12} {:>7.1}s", took.as_secs_f64());
    }
    println!(
        "  {:<12} {:>7.1}s",
        "total",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(crate::lab::cargo())
        .current_dir(crate::workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!(
            "the lab tests need root (network namespaces, cgroups, mounts, eBPF); \
             run `cargo xtask test` as root"
        );
    }
    Ok(())
}
