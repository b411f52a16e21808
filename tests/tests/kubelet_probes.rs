//! Probes, lifecycle hooks and graceful termination of corten-agent's kubelet in one
//! one-node lab with its control plane, driven by real kubectl: a failing liveness probe
//! restarts its container with a growing backoff and CrashLoopBackOff in between; a readiness
//! probe flips the Ready condition both ways; a startup probe keeps the container unready and
//! its liveness probe from running until it passes; postStart runs before the container
//! counts as started and a failing one kills it; deleting a pod runs its preStop hook,
//! waits the grace period for a process that ignores SIGTERM, and the pod object goes away
//! only after its containers are gone from containerd.
//!
//! Safety: everything runs inside the lab's namespaces; every wait is bounded.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use corten_cri::runtime::CriClient;
use corten_tests::{
    kubectl::{self, json, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE},
};
use k8s_cri::v1::{ContainerFilter, ListContainersRequest};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

fn apply(lab: &Lab, manifest: &Value) -> anyhow::Result<()> {
    kubectl::apply(lab, &manifest.to_string())
}

/// [`kubectl::eventually_within`] [`WAIT`].
fn eventually<T>(
    lab: &Lab,
    what: &str,
    check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    kubectl::eventually_within(lab, WAIT, what, check)
}

/// A one-container busybox pod.
fn pod(name: &str, container: Value, extra_spec: Value) -> Value {
    let mut container = container;
    container["name"] = json!("c");
    container["image"] = json!(BUSYBOX_IMAGE);
    let mut spec = json!({"containers": [container]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn exec_probe(command: &str, extra: Value) -> Value {
    let mut probe = json!({"exec": {"command": ["sh", "-c", command]}, "periodSeconds": 1,
        "failureThreshold": 1});
    if let (Some(probe), Some(extra)) = (probe.as_object_mut(), extra.as_object()) {
        probe.extend(extra.clone());
    }
    probe
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn seconds(value: &Value) -> anyhow::Result<i64> {
    let text = value.as_str().context("a timestamp")?;
    let output = std::process::Command::new("date")
        .args(["-u", "-d", text, "+%s"])
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

fn reasons_of_events(lab: &Lab, pod: &str) -> anyhow::Result<Vec<String>> {
    let events = json(lab, &["get", "events"])?;
    Ok(events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect())
}

/// The agent's log lines that mention any of `needles` (for failure messages).
fn agent_log_about(lab: &Lab, needles: &[&str]) -> String {
    let log = std::fs::read_to_string(lab.paths().agent_log(0)).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect();
    format!(
        "agent log:\n{}",
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// (a) A failing liveness probe: restarts with 0 s, then ~10 s, then ~20 s between them,
/// CrashLoopBackOff while waiting, the killed attempt as lastState, and Killing events.
fn liveness_restarts_with_backoff(lab: &Lab) -> anyhow::Result<()> {
    apply(
        lab,
        &pod(
            "liveness",
            json!({"command": ["sh", "-c", "sleep 3600"],
                "livenessProbe": exec_probe("cat /tmp/healthy", json!({}))}),
            json!({"terminationGracePeriodSeconds": 1}),
        ),
    )?;
    // restartCount → (finishedAt of the previous attempt, startedAt of this one).
    let mut gaps: HashMap<i64, i64> = HashMap::new();
    let mut saw_backoff = false;
    eventually(lab, "three liveness restarts", || {
        let pod = json(lab, &["get", "pod", "liveness"])?;
        let status = &pod["status"]["containerStatuses"][0];
        let restarts = status["restartCount"].as_i64().unwrap_or(0);
        if status["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
            saw_backoff = true;
            ensure!(
                status["lastState"]["terminated"]["exitCode"] == 137,
                "the killed attempt should end with SIGKILL's 137: {status}"
            );
        }
        if let (Some(_), Some(_)) = (
            status["state"]["running"]["startedAt"].as_str(),
            status["lastState"]["terminated"]["finishedAt"].as_str(),
        ) {
            let gap = seconds(&status["state"]["running"]["startedAt"])?
                - seconds(&status["lastState"]["terminated"]["finishedAt"])?;
            gaps.entry(restarts).or_insert(gap);
        }
        Ok((restarts >= 3 && gaps.contains_key(&3)).then_some(()))
    })?;
    eprintln!(
        "liveness restarts: restartCount → seconds since the previous attempt ended: {gaps:?}"
    );
    ensure!(saw_backoff, "no CrashLoopBackOff between restarts");
    let (second, third) = (gaps.get(&2).copied(), gaps.get(&3).copied());
    ensure!(
        second.is_some_and(|g| g >= 8) && third.is_some_and(|g| g >= 18),
        "the backoff should grow from 10 s to 20 s: gaps {gaps:?}"
    );
    let reasons = reasons_of_events(lab, "liveness")?;
    ensure!(
        reasons.iter().any(|r| r == "Unhealthy") && reasons.iter().any(|r| r == "Killing"),
        "events {reasons:?}"
    );
    kubectl(lab, &["delete", "pod", "liveness", "--wait=false"])?;
    Ok(())
}

/// (b) A readiness probe that fails for a while and passes again flips the container's
/// ready flag and the ContainersReady and Ready conditions both ways, never restarting it.
fn readiness_flips_ready(lab: &Lab) -> anyhow::Result<()> {
    apply(
        lab,
        &pod(
            "readiness",
            json!({"command": ["sh", "-c",
                "while true; do touch /tmp/ready; sleep 6; rm -f /tmp/ready; sleep 6; done"],
                "readinessProbe": exec_probe("cat /tmp/ready", json!({}))}),
            json!({"terminationGracePeriodSeconds": 1}),
        ),
    )?;
    let ready = |want: &str| -> anyhow::Result<Option<()>> {
        let pod = json(lab, &["get", "pod", "readiness"])?;
        let status = &pod["status"]["containerStatuses"][0];
        ensure!(
            status["restartCount"] == 0,
            "a readiness failure restarted it: {status}"
        );
        let flag = if status["ready"] == true {
            "True"
        } else {
            "False"
        };
        let running = pod["status"]["phase"] == "Running" && status["state"]["running"].is_object();
        Ok((running
            && flag == want
            && condition(&pod, "Ready") == want
            && condition(&pod, "ContainersReady") == want)
            .then_some(()))
    };
    eventually(lab, "readiness: Ready", || ready("True"))?;
    eventually(lab, "readiness: not Ready", || ready("False"))?;
    eventually(lab, "readiness: Ready again", || ready("True"))?;
    kubectl(lab, &["delete", "pod", "readiness", "--wait=false"])?;
    Ok(())
}

/// (c) A startup probe that passes after ~8 s: until then the container runs but is neither
/// started nor ready, and its liveness probe (which would fail) is not run.
fn startup_holds_the_others_back(lab: &Lab) -> anyhow::Result<()> {
    apply(
        lab,
        &pod(
            "startup",
            json!({"command": ["sh", "-c", "sleep 8; touch /tmp/started; sleep 3600"],
                "startupProbe": exec_probe("cat /tmp/started", json!({"failureThreshold": 30})),
                "livenessProbe": exec_probe("cat /tmp/started", json!({})),
                "readinessProbe": exec_probe("true", json!({}))}),
            json!({"terminationGracePeriodSeconds": 1}),
        ),
    )?;
    let running_since = eventually(lab, "startup: running", || {
        let pod = json(lab, &["get", "pod", "startup"])?;
        let status = &pod["status"]["containerStatuses"][0];
        Ok(status["state"]["running"]["startedAt"]
            .as_str()
            .map(|_| (status.clone(), pod.clone())))
    })?;
    let started_at = seconds(&running_since.0["state"]["running"]["startedAt"])?;
    let mut held_back_seen = 0;
    let since_start = || -> anyhow::Result<i64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(now.as_secs() as i64 - started_at)
    };
    // A violation ends the wait at once (a later poll would no longer see it).
    let became_ready = eventually(lab, "startup: started and ready", || {
        let pod = json(lab, &["get", "pod", "startup"])?;
        let status = &pod["status"]["containerStatuses"][0];
        if status["restartCount"] != 0 {
            return Ok(Some(Err(anyhow::anyhow!(
                "the liveness probe ran before the startup probe passed: {status}"
            ))));
        }
        let started = status["started"] == true;
        let elapsed = since_start()?;
        if (started || condition(&pod, "Ready") == "True") && elapsed < 7 {
            return Ok(Some(Err(anyhow::anyhow!(
                "started or Ready {elapsed}s after the start, before the startup probe passed: {status}"
            ))));
        }
        if !started {
            held_back_seen += 1;
        }
        let ready = started && status["ready"] == true;
        Ok(ready.then(|| Ok(condition(&pod, "Ready"))))
    })??;
    ensure!(
        held_back_seen > 0 && since_start()? >= 7,
        "ready {}s after the start (seen held back {held_back_seen} times)",
        since_start()?
    );
    ensure!(became_ready == "True", "Ready condition {became_ready}");
    kubectl(lab, &["delete", "pod", "startup", "--wait=false"])?;
    Ok(())
}

/// postStart runs before the container counts as started (its readiness probe needs the
/// hook's file), and a failing postStart kills the container with FailedPostStartHook.
fn post_start_hooks(lab: &Lab) -> anyhow::Result<()> {
    apply(
        lab,
        &pod(
            "poststart",
            json!({"command": ["sh", "-c", "sleep 3600"],
                "lifecycle": {"postStart": {"exec": {"command": ["touch", "/tmp/hooked"]}}},
                "readinessProbe": exec_probe("cat /tmp/hooked", json!({}))}),
            json!({"terminationGracePeriodSeconds": 1}),
        ),
    )?;
    apply(
        lab,
        &pod(
            "badpoststart",
            json!({"command": ["sh", "-c", "sleep 3600"],
                "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "exit 7"]}}}}),
            json!({"terminationGracePeriodSeconds": 1}),
        ),
    )?;
    eventually(lab, "poststart: ready through its hook's file", || {
        let pod = json(lab, &["get", "pod", "poststart"])?;
        Ok((pod["status"]["containerStatuses"][0]["ready"] == true).then_some(()))
    })?;
    eventually(lab, "badpoststart: killed and restarted", || {
        let pod = json(lab, &["get", "pod", "badpoststart"])?;
        let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0);
        let reasons = reasons_of_events(lab, "badpoststart")?;
        Ok((restarts >= 1 && reasons.iter().any(|r| r == "FailedPostStartHook")).then_some(()))
    })?;
    kubectl(
        lab,
        &["delete", "pod", "poststart", "badpoststart", "--wait=false"],
    )?;
    Ok(())
}

/// The containers containerd holds for a pod (any state).
fn containers_of(runtime: &tokio::runtime::Runtime, lab: &Lab, uid: &str) -> anyhow::Result<usize> {
    runtime.block_on(async {
        let mut cri = CriClient::connect(&lab.containerd_socket(0)).await?;
        let listed = cri
            .runtime()
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    label_selector: [(POD_UID_LABEL.to_owned(), uid.to_owned())].into(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        Ok(listed.len())
    })
}

/// (d) Deleting a pod whose process ignores SIGTERM: its preStop hook reaches a witness
/// pod, the deletion takes about the grace period (SIGKILL at its end), and the pod object
/// disappears only after containerd no longer holds its containers.
fn termination_waits_for_the_containers(lab: &Lab) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    apply(
        lab,
        &pod(
            "witness",
            json!({"command": ["sh", "-c", "nc -l -p 9000 > /tmp/prestop & sleep 3600"],
                "readinessProbe": exec_probe("grep -q prestop-ran /tmp/prestop", json!({}))}),
            json!({"terminationGracePeriodSeconds": 1}),
        ),
    )?;
    let witness_ip = eventually(lab, "the witness to run", || {
        let pod = json(lab, &["get", "pod", "witness"])?;
        let running = pod["status"]["containerStatuses"][0]["state"]["running"].is_object();
        Ok(pod["status"]["podIP"]
            .as_str()
            .filter(|_| running)
            .map(str::to_owned))
    })?;
    const GRACE: u64 = 5;
    apply(
        lab,
        &pod(
            "doomed",
            json!({"command": ["sleep", "3600"],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c",
                    format!("echo prestop-ran | nc {witness_ip} 9000")]}}}}),
            json!({"terminationGracePeriodSeconds": GRACE}),
        ),
    )?;
    let uid = eventually(lab, "the doomed pod to run", || {
        let pod = json(lab, &["get", "pod", "doomed"])?;
        let running = pod["status"]["containerStatuses"][0]["state"]["running"].is_object();
        Ok(pod["metadata"]["uid"]
            .as_str()
            .filter(|_| running)
            .map(str::to_owned))
    })?;
    ensure!(
        containers_of(&runtime, lab, &uid)? == 1,
        "containerd should hold its container"
    );
    let began = Instant::now();
    kubectl(lab, &["delete", "pod", "doomed", "--wait=false"])?;
    let took = eventually(lab, "the doomed pod to go away", || {
        let listed = json(
            lab,
            &["get", "pods", "--field-selector", "metadata.name=doomed"],
        )?;
        let gone = listed["items"].as_array().is_some_and(Vec::is_empty);
        if !gone {
            return Ok(None);
        }
        // A violation ends the wait at once (a later poll would no longer see it).
        let left = containers_of(&runtime, lab, &uid)?;
        Ok(Some((left == 0).then(|| began.elapsed()).ok_or_else(
            || {
                anyhow::anyhow!(
                    "the pod object went away while containerd still held {left} of its containers"
                )
            },
        )))
    })??;
    eprintln!("deleting a pod that ignores SIGTERM with a {GRACE} s grace period took {took:?}");
    ensure!(
        took >= Duration::from_secs(GRACE - 1) && took < Duration::from_secs(GRACE + 10),
        "deletion took {took:?} with a grace period of {GRACE} s and SIGTERM ignored"
    );
    eventually(lab, "the witness to have heard the preStop hook", || {
        let pod = json(lab, &["get", "pod", "witness"])?;
        Ok((pod["status"]["containerStatuses"][0]["ready"] == true).then_some(()))
    })
    .with_context(|| agent_log_about(lab, &["doomed", "witness", "preStop", "WARN"]))?;
    kubectl(lab, &["delete", "pod", "witness", "--wait=false"])?;
    Ok(())
}

#[test]
fn probes_hooks_and_graceful_termination() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::for_test(&format!("probes-{}", std::process::id()), 1);
    spec.control_plane = true;
    let lab = Lab::up(spec)?;
    let node = lab.node_name(0);
    eventually(&lab, "the node to be Ready with a pod CIDR", || {
        let node = json(&lab, &["get", "node", &node])?;
        let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        Ok((ready && node["spec"]["podCIDR"].is_string()).then_some(()))
    })?;
    // Until the node's CNI config is written pods cannot get a sandbox; the first pod waits.
    termination_waits_for_the_containers(&lab)?;
    startup_holds_the_others_back(&lab)?;
    readiness_flips_ready(&lab)?;
    post_start_hooks(&lab)?;
    liveness_restarts_with_backoff(&lab)?;
    eventually(&lab, "every pod to be gone", || {
        let pods = json(&lab, &["get", "pods"])?;
        Ok(pods["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(()))
    })?;
    lab.down()?;
    Ok(())
}
