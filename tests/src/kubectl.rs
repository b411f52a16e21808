//! Driving a lab's cluster with real kubectl from a test: run a command, apply a manifest
//! from a string, read JSON, and wait (bounded) for a condition, with the agents' state in
//! the error when it never holds.
//!
//! Owns nothing but these conveniences; every call goes through [`Lab::kubectl`], inside
//! the lab's node 0.
use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::lab::Lab;

/// How long [`eventually`] waits by default.
pub const WAIT: Duration = Duration::from_secs(90);

/// Runs kubectl with `args`; its stdout, or an error with its stderr.
pub fn kubectl(lab: &Lab, args: &[&str]) -> anyhow::Result<String> {
    let output = lab
        .kubectl()?
        .args(args)
        .output()
        .context("running kubectl")?;
    if !output.status.success() {
        bail!(
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `kubectl apply -f -` with `manifest` (JSON or YAML) on stdin.
pub fn apply(lab: &Lab, manifest: &str) -> anyhow::Result<()> {
    let mut child = lab
        .kubectl()?
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        stdin.write_all(manifest.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// kubectl with `args` plus `-o json`, parsed.
pub fn json(lab: &Lab, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&kubectl(lab, &all)?)?)
}

/// Whether `object`'s status has the condition `kind` with status `True`.
pub fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// Polls `check` every 250 ms until it returns `Some`, at most `timeout`; the error names
/// `what`, the last error `check` returned, and the agents that are not running.
pub fn eventually_within<T>(
    lab: &Lab,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what} ({last}); agents: {:?}",
                lab.agent_failures()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// [`eventually_within`] [`WAIT`].
pub fn eventually<T>(
    lab: &Lab,
    what: &str,
    check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    eventually_within(lab, WAIT, what, check)
}
