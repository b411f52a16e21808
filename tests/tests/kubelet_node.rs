//! The kubelet as a node agent, in one one-node lab driven by real kubectl: a restarted agent
//! adopts the containers that kept running (same IDs, no restart, the pod stays Ready);
//! `kubectl cp` copies files into and out of a pod (tar through exec); requests and limits
//! land in the containers' and the pods' cgroups (memory limit, CFS quota, cpu shares) under
//! the QoS class's cgroup (kubepods, burstable, besteffort), the QoS cgroups hold the
//! node's allocatable and the burstable pods' cpu requests, and the pod cgroups go with the
//! pods; and a container that outgrows its memory limit ends `OOMKilled`. (Static pods have
//! their own lab test, `kubelet_static_pods.rs`.)
//!
//! Safety: everything runs inside the lab's namespaces and cgroup; every wait is bounded.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::{apply, condition_true, eventually, eventually_within, json, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE},
};
use serde_json::{json, Value};

fn wait_ready(lab: &Lab, name: &str) -> anyhow::Result<Value> {
    eventually(lab, &format!("pod {name} Ready"), || {
        let pod = json(lab, &["get", "pod", name])?;
        Ok(condition_true(&pod, "Ready").then_some(pod))
    })
}

/// `(name, containerID, restartCount)` of every container status of `pod`.
fn containers(pod: &Value) -> Vec<(String, String, u64)> {
    let mut all: Vec<(String, String, u64)> = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["containerID"].as_str().unwrap_or_default().to_owned(),
                c["restartCount"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    all.sort();
    all
}

fn ready_transition(pod: &Value) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn the_kubelet_adopts_copies_limits_and_reports_oom() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut lab = Lab::up_ready(LabSpec::cluster_for_test(
        &format!("knode-{}", std::process::id()),
        1,
    ))?;

    agent_restart_adopts_running_containers(&mut lab)?;
    kubectl_cp_copies_both_ways(&lab)?;
    limits_land_in_the_cgroups(&lab)?;
    over_the_memory_limit_is_oom_killed(&lab)?;
    lab.check_agents()?;
    lab.down()
}

/// A pod whose container writes a marker unique to its start keeps its container (ID,
/// restart count, marker) and its Ready condition across a crash and restart of the agent.
fn agent_restart_adopts_running_containers(lab: &mut Lab) -> anyhow::Result<()> {
    let steady = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "steady"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c",
                "cat /proc/sys/kernel/random/uuid > /tmp/marker; exec sleep 100000"]},
            {"name": "side", "image": BUSYBOX_IMAGE, "command": ["sleep", "100000"],
             "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}});
    apply(lab, &steady.to_string())?;
    let before = wait_ready(lab, "steady")?;
    let marker = kubectl(
        lab,
        &["exec", "steady", "-c", "main", "--", "cat", "/tmp/marker"],
    )?;
    ensure!(marker.trim().len() == 36, "marker {marker:?}");
    let ids = containers(&before);
    ensure!(
        ids.len() == 2
            && ids
                .iter()
                .all(|(_, id, n)| id.starts_with("containerd://") && *n == 0),
        "container statuses before: {ids:?}"
    );
    let start_time = before["status"]["startTime"].clone();
    let transition = ready_transition(&before);

    lab.kill_agent(0)?;
    // While no agent runs, nothing changes the pod.
    std::thread::sleep(Duration::from_secs(2));
    lab.start_agent(0)?;

    // Watch the pod for a while after the restart: it must stay Ready with the same
    // containers throughout, and the new agent must have reported it (its Ready condition
    // keeps its transition time: it never went False).
    let started = Instant::now();
    let mut seen = 0;
    while started.elapsed() < Duration::from_secs(20) {
        let pod = json(lab, &["get", "pod", "steady"])?;
        ensure!(
            condition_true(&pod, "Ready"),
            "pod not Ready after the agent restart: {pod}"
        );
        ensure!(
            containers(&pod) == ids,
            "containers changed: {:?} -> {:?}",
            ids,
            containers(&pod)
        );
        seen += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    ensure!(seen >= 10, "looked at the pod only {seen} times");
    lab.check_agents()?;
    let after = json(lab, &["get", "pod", "steady"])?;
    ensure!(
        ready_transition(&after) == transition,
        "Ready went {transition} -> {}",
        ready_transition(&after)
    );
    ensure!(
        after["status"]["startTime"] == start_time,
        "startTime went {start_time} -> {}",
        after["status"]["startTime"]
    );
    let again = kubectl(
        lab,
        &["exec", "steady", "-c", "main", "--", "cat", "/tmp/marker"],
    )?;
    ensure!(
        again == marker,
        "the container restarted: {marker:?} -> {again:?}"
    );
    // The new agent still runs the pod: a readiness change reaches the API.
    kubectl(lab, &["exec", "steady", "-c", "main", "--", "true"])?;
    Ok(())
}

/// `kubectl cp` a local file into the pod and a pod file out of it.
fn kubectl_cp_copies_both_ways(lab: &Lab) -> anyhow::Result<()> {
    let dir = tempdir(lab, "cp")?;
    let local = dir.join("in.txt");
    let content: String = (0..2000)
        .map(|i| format!("line {i} of the copy\n"))
        .collect();
    std::fs::write(&local, &content)?;
    let local_text = local.to_str().context("temp path")?;
    kubectl(lab, &["cp", local_text, "steady:/tmp/in.txt", "-c", "main"])?;
    let inside = kubectl(
        lab,
        &["exec", "steady", "-c", "main", "--", "cat", "/tmp/in.txt"],
    )?;
    ensure!(
        inside == content,
        "the copied file differs ({} bytes in the pod)",
        inside.len()
    );

    kubectl(
        lab,
        &[
            "exec",
            "steady",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "mkdir -p /tmp/out && seq 1 5000 > /tmp/out/numbers && echo hi > /tmp/out/small",
        ],
    )?;
    let out = dir.join("out.txt");
    let out_text = out.to_str().context("temp path")?;
    kubectl(
        lab,
        &["cp", "steady:/tmp/out/numbers", out_text, "-c", "main"],
    )?;
    let expected: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    let copied = std::fs::read_to_string(&out).context("reading the file copied out")?;
    ensure!(copied == expected, "copied out {} bytes", copied.len());
    // Binary bytes, more than one stream frame, both ways.
    let bytes: Vec<u8> = (0u32..3 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let blob = dir.join("blob");
    std::fs::write(&blob, &bytes)?;
    kubectl(
        lab,
        &[
            "cp",
            blob.to_str().context("temp path")?,
            "steady:/tmp/blob",
            "-c",
            "main",
        ],
    )?;
    let back = dir.join("blob-back");
    kubectl(
        lab,
        &[
            "cp",
            "steady:/tmp/blob",
            back.to_str().context("temp path")?,
            "-c",
            "main",
        ],
    )?;
    ensure!(
        std::fs::read(&back).context("reading the blob copied back")? == bytes,
        "the blob changed on its way into the pod and back"
    );
    // A directory comes out whole.
    let tree = dir.join("tree");
    let tree_text = tree.to_str().context("temp path")?;
    kubectl(lab, &["cp", "steady:/tmp/out", tree_text, "-c", "main"])?;
    ensure!(
        std::fs::read_to_string(tree.join("small")).ok().as_deref() == Some("hi\n"),
        "the directory copied out lacks small"
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempdir(lab: &Lab, what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{}-{what}", lab.name()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The host path of a v1 controller's cgroup of `container` of `pod`, read from inside the
/// container (v1 cgroups are not namespaced).
fn cgroup_of(lab: &Lab, pod: &str, container: &str, controller: &str) -> anyhow::Result<String> {
    let text = kubectl(
        lab,
        &["exec", pod, "-c", container, "--", "cat", "/proc/1/cgroup"],
    )?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        if controllers.is_some_and(|c| c.split(',').any(|c| c == controller)) {
            return Ok(path.unwrap_or_default().to_owned());
        }
    }
    bail!("no {controller} cgroup in {text:?}")
}

fn read_cgroup(controller_dir: &str, cgroup: &str, file: &str) -> anyhow::Result<String> {
    let path = Path::new("/sys/fs/cgroup")
        .join(controller_dir)
        .join(cgroup.trim_start_matches('/'))
        .join(file);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

fn controller_dir(controller: &str) -> anyhow::Result<&'static str> {
    let candidates: &[&'static str] = match controller {
        "memory" => &["memory"],
        _ => &["cpu,cpuacct", "cpu"],
    };
    candidates
        .iter()
        .copied()
        .find(|d| Path::new("/sys/fs/cgroup").join(d).is_dir())
        .with_context(|| format!("no v1 {controller} hierarchy under /sys/fs/cgroup"))
}

/// (pod, QoS class, its cgroup under the root, memory limit, cfs quota, cpu shares)
type Expected = (
    &'static str,
    &'static str,
    &'static str,
    Option<u64>,
    i64,
    u64,
);

/// Limits and requests in the containers' cgroup files, under the QoS class's cgroup.
fn limits_land_in_the_cgroups(lab: &Lab) -> anyhow::Result<()> {
    let sleeper = |name: &str, resources: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main",
                "image": BUSYBOX_IMAGE, "command": ["sleep", "100000"],
                "resources": resources}]}})
    };
    apply(
        lab,
        &sleeper(
            "guaranteed",
            json!({"limits": {"cpu": "500m", "memory": "64Mi"}}),
        )
        .to_string(),
    )?;
    apply(
        lab,
        &sleeper(
            "burstable",
            json!({"requests": {"cpu": "250m", "memory": "32Mi"},
                   "limits": {"cpu": "1500m", "memory": "128Mi"}}),
        )
        .to_string(),
    )?;
    apply(lab, &sleeper("besteffort", json!({})).to_string())?;
    let root = lab.paths().node_cgroup_path(0);
    // (pod, QoS class, its cgroup under the root, memory limit, cfs quota, cpu shares)
    let cases: [Expected; 3] = [
        (
            "guaranteed",
            "Guaranteed",
            "kubepods",
            Some(64 << 20),
            50_000,
            512,
        ),
        (
            "burstable",
            "Burstable",
            "kubepods/burstable",
            Some(128 << 20),
            150_000,
            256,
        ),
        (
            "besteffort",
            "BestEffort",
            "kubepods/besteffort",
            None,
            -1,
            2,
        ),
    ];
    let memory_dir = controller_dir("memory")?;
    let cpu_dir = controller_dir("cpu")?;
    let mut pod_cgroups = Vec::new();
    for (name, class, parent, memory, quota, shares) in cases {
        let pod = wait_ready(lab, name)?;
        ensure!(
            pod["status"]["qosClass"] == class,
            "{name}: qosClass {}",
            pod["status"]["qosClass"]
        );
        let uid = pod["metadata"]["uid"].as_str().context("uid")?;
        let id = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|id| id.strip_prefix("containerd://"))
            .context("containerID")?;
        let expected = format!("{root}/{parent}/pod{uid}/{id}");
        for controller in ["memory", "cpu"] {
            let cgroup = cgroup_of(lab, name, "main", controller)?;
            ensure!(
                cgroup == expected,
                "{name}: {controller} cgroup {cgroup}, expected {expected}"
            );
        }
        // The container's cgroup, and the pod's (one container: the same limits, as
        // upstream sums them).
        let pod_cgroup = format!("{root}/{parent}/pod{uid}");
        pod_cgroups.push(pod_cgroup.clone());
        for cgroup in [expected.clone(), pod_cgroup] {
            let limit: u64 = read_cgroup(memory_dir, &cgroup, "memory.limit_in_bytes")?.parse()?;
            match memory {
                Some(bytes) => ensure!(
                    limit == bytes,
                    "{name} {cgroup}: memory limit {limit}, expected {bytes}"
                ),
                None => ensure!(
                    limit > 1 << 50,
                    "{name} {cgroup}: memory limit {limit}, expected none"
                ),
            }
            let got_quota: i64 = read_cgroup(cpu_dir, &cgroup, "cpu.cfs_quota_us")?.parse()?;
            ensure!(
                got_quota == quota,
                "{name} {cgroup}: cfs quota {got_quota}, expected {quota}"
            );
            if quota > 0 {
                let period: i64 = read_cgroup(cpu_dir, &cgroup, "cpu.cfs_period_us")?.parse()?;
                ensure!(period == 100_000, "{name} {cgroup}: cfs period {period}");
            }
            let got_shares: u64 = read_cgroup(cpu_dir, &cgroup, "cpu.shares")?.parse()?;
            ensure!(
                got_shares == shares,
                "{name} {cgroup}: cpu shares {got_shares}, expected {shares}"
            );
        }
    }
    qos_tiers_hold_the_node_and_its_pods(lab, &root, cpu_dir, memory_dir, 256)?;
    for name in ["guaranteed", "burstable", "besteffort"] {
        kubectl(lab, &["delete", "pod", name, "--wait=false"])?;
    }
    // The burstable pod gone, its tier is back to the minimum shares (no other burstable
    // pod runs on the node).
    eventually(lab, "the burstable tier back to 2 shares", || {
        let shares = read_cgroup(cpu_dir, &format!("{root}/kubepods/burstable"), "cpu.shares")?;
        Ok((shares == "2").then_some(()))
    })?;
    // Once the pods are gone, so are their cgroups.
    eventually(lab, "the pods' cgroups removed", || {
        let left: Vec<&String> = pod_cgroups
            .iter()
            .filter(|c| {
                [memory_dir, cpu_dir].iter().any(|d| {
                    Path::new("/sys/fs/cgroup")
                        .join(d)
                        .join(c.trim_start_matches('/'))
                        .exists()
                })
            })
            .collect();
        Ok(left.is_empty().then_some(()))
    })?;
    Ok(())
}

/// Thousandths of a cpu or memory quantity as the API server returns them (`2`, `250m`,
/// `16318496Ki`).
fn milli(quantity: &str) -> anyhow::Result<u64> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("quantity {quantity:?}"))?;
    Ok(match suffix {
        "" => number * 1000,
        "m" => number,
        "Ki" => number * 1024 * 1000,
        "Mi" => number * (1 << 20) * 1000,
        "Gi" => number * (1 << 30) * 1000,
        _ => bail!("unexpected quantity {quantity:?}"),
    })
}

/// The QoS cgroups above the pods: `kubepods` sized to the node's allocatable (cpu shares,
/// memory limit), `kubepods/burstable` with the shares of the burstable pods' cpu requests
/// (`burstable_shares`), `kubepods/besteffort` with 2 shares.
fn qos_tiers_hold_the_node_and_its_pods(
    lab: &Lab,
    root: &str,
    cpu_dir: &str,
    memory_dir: &str,
    burstable_shares: u64,
) -> anyhow::Result<()> {
    let node = json(lab, &["get", "node", &lab.node_name(0)])?;
    let allocatable = &node["status"]["allocatable"];
    let cpu = milli(allocatable["cpu"].as_str().context("allocatable cpu")?)?;
    let memory = milli(
        allocatable["memory"]
            .as_str()
            .context("allocatable memory")?,
    )? / 1000;
    let kubepods = format!("{root}/kubepods");
    let shares: u64 = read_cgroup(cpu_dir, &kubepods, "cpu.shares")?.parse()?;
    ensure!(
        shares == cpu * 1024 / 1000,
        "kubepods: cpu shares {shares} for an allocatable of {cpu}m"
    );
    // The kernel keeps whole pages of a memory limit.
    let limit: u64 = read_cgroup(memory_dir, &kubepods, "memory.limit_in_bytes")?.parse()?;
    ensure!(
        limit == memory / 4096 * 4096,
        "kubepods: memory limit {limit} for an allocatable of {memory} bytes"
    );
    eventually(lab, "the QoS tiers' cpu shares", || {
        let burstable: u64 =
            read_cgroup(cpu_dir, &format!("{kubepods}/burstable"), "cpu.shares")?.parse()?;
        let besteffort: u64 =
            read_cgroup(cpu_dir, &format!("{kubepods}/besteffort"), "cpu.shares")?.parse()?;
        Ok((burstable == burstable_shares && besteffort == 2).then_some(()))
    })
    .with_context(|| {
        format!(
            "burstable {:?}, besteffort {:?}",
            read_cgroup(cpu_dir, &format!("{kubepods}/burstable"), "cpu.shares").ok(),
            read_cgroup(cpu_dir, &format!("{kubepods}/besteffort"), "cpu.shares").ok()
        )
    })?;
    Ok(())
}

/// A container that grows its memory past its limit is killed by the kernel and reported
/// `OOMKilled` with exit code 137.
fn over_the_memory_limit_is_oom_killed(lab: &Lab) -> anyhow::Result<()> {
    let hog = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main",
            "image": BUSYBOX_IMAGE, "command": ["sh", "-c",
                // Doubling a shell variable takes anonymous memory fast.
                "x=0123456789abcdef; while true; do x=$x$x; done"],
            "resources": {"limits": {"memory": "32Mi"}}}]}});
    apply(lab, &hog.to_string())?;
    let terminated = eventually_within(lab, Duration::from_secs(90), "hog terminated", || {
        let pod = json(lab, &["get", "pod", "hog"])?;
        let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        Ok((!state.is_null()).then(|| (state.clone(), pod["status"]["phase"].clone())))
    })?;
    let (state, phase) = terminated;
    ensure!(
        state["reason"] == "OOMKilled" && state["exitCode"] == 137,
        "hog ended {state}"
    );
    ensure!(phase == "Failed", "hog's phase {phase}");
    Ok(())
}
