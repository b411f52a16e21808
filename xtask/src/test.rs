//! `cargo xtask test`: the README's test command and what `.ci/run` runs. Installs what is
//! missing, builds the images, then runs formatting and lint checks, the unit tests, the
//! fuzz targets for a bounded time, the store suite against a real etcd, the API server with
//! real kubectl and with the Python client, and the lab tests (root: real namespaces,
//! containerd and eBPF). Stops at the first failure.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Runs every step; fails naming the step that failed.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        // A fresh CI clone builds once: incremental caches would only take disk (a run
        // stopped with ENOSPC), so every cargo this command starts does without them.
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut counts = Counts::default();
    let mut fuzzed: Vec<String> = Vec::new();
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
    step("unit tests", &mut || {
        counts.add(cargo_test(&["test", "--workspace"])?);
        Ok(())
    })?;
    step("fuzz", &mut || {
        // Each cargo-fuzz target in fuzz/ for a bounded time: request bodies and selectors
        // must never panic or hang.
        for summary in crate::fuzz::run_all()? {
            fuzzed.push(summary.to_string());
        }
        Ok(())
    })?;
    step("etcd tests", &mut || {
        // The store conformance suite against a real etcd, the 3-member cluster test and
        // two servers' leader election on one etcd;
        // the embedded half of the suite ran with the unit tests.
        counts.add(cargo_test(&[
            "test",
            "--package",
            "corten-control-plane",
            "--features",
            "etcd-tests",
            "--test",
            "store_conformance",
            "--test",
            "etcd_cluster",
            "--test",
            "leader_election",
            "--",
            "--skip",
            "embedded",
        ])?);
        Ok(())
    })?;
    step("api tests", &mut || {
        // A real corten-server driven by real kubectl 1.33 and 1.27 on loopback: the API,
        // and the workload controllers (rollouts, DaemonSets, StatefulSets, Jobs, CronJobs,
        // cascading deletes).
        counts.add(cargo_test(&[
            "test",
            "--package",
            "corten-control-plane",
            "--features",
            "kubectl-tests",
            "--test",
            "apiserver_kubectl",
            "--test",
            "controllers_kubectl",
        ])?);
        Ok(())
    })?;
    step("python tests", &mut || {
        // The same server driven by the official Python client under pytest, from the
        // virtualenv that the deps step made.
        counts.add(cargo_test(&[
            "test",
            "--package",
            "corten-control-plane",
            "--features",
            "python-tests",
            "--test",
            "apiserver_python",
        ])?);
        Ok(())
    })?;
    step("lab tests", &mut || {
        require_root()?;
        counts.add(cargo_test(&[
            "test",
            "--package",
            "corten-tests",
            "--features",
            "lab-tests",
            "--",
            "--test-threads",
            "2",
        ])?);
        Ok(())
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
    for line in &fuzzed {
        println!("  {line}");
    }
    if counts.passed == 0 {
        bail!("no test ran");
    }
    println!("{} passed, {} failed", counts.passed, counts.failed);
    Ok(())
}

/// Tests counted over every `cargo test` run.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// Runs `cargo test ...`, echoing its output, and counts what its result lines report.
fn cargo_test(args: &[&str]) -> anyhow::Result<Counts> {
    let mut child = Command::new(crate::lab::cargo())
        .current_dir(crate::workspace_root())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let mut counts = Counts::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            counts.add(parse_result_line(&line));
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(counts)
}

/// Counts from a libtest line such as `test result: ok. 3 passed; 0 failed; ...`.
fn parse_result_line(line: &str) -> Counts {
    let Some(rest) = line.strip_prefix("test result: ") else {
        return Counts::default();
    };
    let mut counts = Counts::default();
    for part in rest.split(['.', ';']) {
        let mut words = part.split_whitespace();
        if let (Some(number), Some(word)) = (words.next(), words.next()) {
            match (number.parse::<u64>(), word) {
                (Ok(n), "passed") => counts.passed = n,
                (Ok(n), "failed") => counts.failed = n,
                _ => {}
            }
        }
    }
    counts
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

#[cfg(test)]
mod tests {
    use super::parse_result_line;

    #[test]
    fn result_lines_are_counted() {
        let line = "test result: ok. 3 passed; 1 failed; 0 ignored; 0 measured; \
                    0 filtered out; finished in 0.60s";
        let c = parse_result_line(line);
        assert_eq!((c.passed, c.failed), (3, 1));
        let none = parse_result_line("running 3 tests");
        assert_eq!((none.passed, none.failed), (0, 0));
    }
}
