//! Node-pressure eviction in a one-node lab driven by real kubectl. The agent's hard
//! threshold `memory.available` is set to the machine's memory less 150 MiB, so the node is
//! under memory pressure exactly when its pods' working set (the node cgroup's) passes
//! 150 MiB: a BestEffort pod that holds 300 MiB brings the pressure on. The Node then gets
//! MemoryPressure=True (KubeletHasInsufficientMemory); the BestEffort pod, which uses more
//! than it requests, is evicted (phase Failed, reason Evicted, upstream's message, a
//! DisruptionTarget condition, an Evicted event) while the Guaranteed pod, within its
//! requests, keeps running; with the memory back the condition returns to False
//! (KubeletHasSufficientMemory), not before the pressure transition period.
//!
//! Disk pressure in another one-node lab whose agent data directory (its node filesystem:
//! emptyDirs, pod logs) is a 256 MiB tmpfs of the lab's own, so `nodefs.available` depends
//! on nothing else that writes to the machine's disks; the hard threshold is
//! `nodefs.available<50%`. A BestEffort pod that writes 192 MiB into its emptyDir brings the
//! pressure on: the Node gets DiskPressure=True (KubeletHasDiskPressure); the writer is
//! evicted with upstream's ephemeral-storage message, its emptyDir is removed and the space
//! comes back; a pod that writes nothing keeps running; the condition returns to False
//! (KubeletHasNoDiskPressure), not before the transition period. While a pressure
//! condition is True the node carries its NoSchedule taint (`node.kubernetes.io/
//! memory-pressure`, `disk-pressure`), and the taint goes with the condition. Then the soft threshold
//! `nodefs.available<75%` (grace period 6 s): a second writer's smaller write sets
//! DiskPressure at once, and it is evicted only when the grace period is over. Last, the
//! admission: under disk pressure from a file the test writes itself, a pod sent to the node
//! is refused (Failed, reason Evicted, "Pod was rejected: The node had condition:
//! [DiskPressure]. ", a Warning event, no container started); with the file gone and the
//! pressure cleared, the next pod runs. Then, without pressure, a pod writing 16 MiB into
//! an emptyDir limited to 8 MiB is evicted (upstream's "Usage of EmptyDir volume ... exceeds
//! the limit" message) while one limited to 64 MiB runs on.
//!
//! Each eviction is preceded by upstream's `EvictionThresholdMet` Warning on the Node
//! ("Attempting to reclaim memory", "... ephemeral-storage").
//!
//! Image garbage collection in another one-node lab, whose agent collects at any usage
//! (high and low thresholds 0, no minimum age): the unused busybox image is removed through
//! CRI, the runtime's sandbox image stays.
//!
//! Safety: everything runs inside the lab's namespaces and cgroup; the pods' allocation and
//! writes are bounded (300 MiB, 192 MiB into a 256 MiB tmpfs); every wait is bounded; the
//! labs run one after the other, and each lab's teardown (also on failure) unmounts its
//! tmpfs.
use std::{sync::Mutex, time::Duration};

use anyhow::{ensure, Context};
use corten_cri::runtime::CriClient;
use corten_tests::{
    kubectl::{apply, eventually_within, json, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE, PAUSE_IMAGE},
};
use k8s_cri::v1::ListImagesRequest;
use serde_json::{json, Value};

/// One lab at a time.
static LABS: Mutex<()> = Mutex::new(());

/// The pressure transition period the agent runs with.
const TRANSITION: Duration = Duration::from_secs(8);
/// The node's pods may use this much before the node is under memory pressure.
const HEADROOM_MIB: u64 = 150;

/// The machine's memory in bytes.
fn mem_total() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no MemTotal in /proc/meminfo")?
        .parse()?;
    Ok(kib * 1024)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

fn rfc3339_seconds(text: &Value) -> anyhow::Result<i64> {
    let text = text.as_str().context("no timestamp")?;
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)?;
    Ok(t.unix_timestamp())
}

#[test]
fn memory_pressure_evicts_the_best_effort_pod_and_clears() -> anyhow::Result<()> {
    let _one_lab = LABS.lock().unwrap_or_else(|e| e.into_inner());
    corten_tests::lab::build_project_binaries()?;
    let threshold = mem_total()? - HEADROOM_MIB * 1024 * 1024;
    let mut spec = LabSpec::cluster_for_test(&format!("kevict-{}", std::process::id()), 1);
    spec.extra_agent_args = vec![
        "--eviction-hard".to_owned(),
        format!("memory.available<{threshold}"),
        "--eviction-pressure-transition-period".to_owned(),
        format!("{}s", TRANSITION.as_secs()),
        "--eviction-monitoring-interval".to_owned(),
        "1s".to_owned(),
    ];
    let lab = Lab::up(spec)?;
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;
    let node = lab.node_name(0);

    // No pressure while the pods are small.
    let before = json(&lab, &["get", "node", &node])?;
    let memory = condition(&before, "MemoryPressure").context("no MemoryPressure")?;
    ensure!(
        memory["status"] == "False" && memory["reason"] == "KubeletHasSufficientMemory",
        "MemoryPressure before: {memory}"
    );
    let guaranteed = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "guaranteed"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main",
            "image": BUSYBOX_IMAGE, "command": ["sleep", "100000"],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                          "limits": {"cpu": "100m", "memory": "64Mi"}}}]}});
    apply(&lab, &guaranteed.to_string())?;
    eventually_within(&lab, Duration::from_secs(90), "guaranteed Running", || {
        let pod = json(&lab, &["get", "pod", "guaranteed"])?;
        Ok((phase(&pod) == "Running").then_some(()))
    })?;
    // dd holds its 300 MiB buffer while it blocks writing to a pipe nobody reads.
    let hog = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main",
            "image": BUSYBOX_IMAGE, "command": ["sh", "-c",
                "dd if=/dev/zero bs=300M count=1 | sleep 100000"]}]}});
    apply(&lab, &hog.to_string())?;

    // The node comes under memory pressure, and the BestEffort pod is evicted while the
    // Guaranteed one keeps running.
    let pressure_began = pressure_comes(&lab, &node, &MEMORY, Duration::from_secs(90))?;
    let evicted = evicted_beside(&lab, "hog", "guaranteed")?;
    threshold_met_event(&lab, &node, "memory")?;
    let message = evicted["status"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: ")
            && message.contains(", available: ")
            && message.contains(". Container main was using ")
            && message.ends_with(", request is 0, has larger consumption of memory. "),
        "eviction message {message:?}"
    );
    let target = condition(&evicted, "DisruptionTarget").context("no DisruptionTarget")?;
    ensure!(
        target["status"] == "True" && target["reason"] == "TerminationByKubelet",
        "DisruptionTarget: {target}"
    );
    // Its container was killed and stays dead (no restart of an evicted pod).
    let terminated = &evicted["status"]["containerStatuses"][0]["state"]["terminated"];
    ensure!(
        terminated.is_object(),
        "hog container: {}",
        evicted["status"]["containerStatuses"]
    );
    let events = json(
        &lab,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hog,reason=Evicted",
        ],
    )?;
    ensure!(
        events["items"].as_array().is_some_and(|e| !e.is_empty()),
        "no Evicted event: {events}"
    );

    // With the memory back the condition clears, after the transition period.
    pressure_clears(&lab, &node, &MEMORY, pressure_began)?;
    let hog = json(&lab, &["get", "pod", "hog"])?;
    ensure!(
        phase(&hog) == "Failed" && hog["status"]["containerStatuses"][0]["restartCount"] == 0,
        "the evicted pod changed: {}",
        hog["status"]
    );
    let guaranteed = json(&lab, &["get", "pod", "guaranteed"])?;
    ensure!(
        phase(&guaranteed) == "Running",
        "guaranteed: {}",
        guaranteed["status"]
    );
    lab.check_agents()?;
    lab.down()
}

/// The size of the disk-pressure lab's node filesystem (its agent data directory).
const NODEFS_MIB: u64 = 256;
/// What the writer pod puts into its emptyDir: enough to leave less than half free.
const WRITE_MIB: u64 = 192;
/// What the second writer puts into its emptyDir: enough to leave less than three quarters
/// free (the soft threshold), not less than half (the hard one).
const SOFT_WRITE_MIB: u64 = 96;
/// The soft threshold's grace period.
const SOFT_GRACE: Duration = Duration::from_secs(6);

/// Bytes available and in total on the filesystem holding `path` (`stat -f`).
fn fs_space(path: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%a %b %S"])
        .arg(path)
        .output()?;
    ensure!(out.status.success(), "stat -f {}: {out:?}", path.display());
    let text = String::from_utf8(out.stdout)?;
    let numbers: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [available, blocks, size] = numbers[..] else {
        anyhow::bail!("stat -f printed {text:?}");
    };
    Ok((available * size, blocks * size))
}

/// A pressure condition of the Node, as the agent reports it, and its taint.
struct Pressure {
    condition: &'static str,
    /// Reason and message while True.
    under: (&'static str, &'static str),
    /// Reason and message while False.
    clear: (&'static str, &'static str),
    taint: &'static str,
}

const MEMORY: Pressure = Pressure {
    condition: "MemoryPressure",
    under: (
        "KubeletHasInsufficientMemory",
        "kubelet has insufficient memory available",
    ),
    clear: (
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    taint: "node.kubernetes.io/memory-pressure",
};

const DISK: Pressure = Pressure {
    condition: "DiskPressure",
    under: ("KubeletHasDiskPressure", "kubelet has disk pressure"),
    clear: ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    taint: "node.kubernetes.io/disk-pressure",
};

/// Waits (at most `limit`) for `pressure`'s condition to turn True with its reason and
/// message, then for the node lifecycle controller's NoSchedule taint (upstream's
/// TaintNodesByCondition), so nothing new is scheduled there meanwhile. Returns when the
/// condition turned True (Unix seconds).
fn pressure_comes(
    lab: &Lab,
    node: &str,
    pressure: &Pressure,
    limit: Duration,
) -> anyhow::Result<i64> {
    let name = pressure.condition;
    let pressured = eventually_within(lab, limit, &format!("{name}=True"), || {
        let node = json(lab, &["get", "node", node])?;
        Ok(condition(&node, name)
            .filter(|c| c["status"] == "True")
            .cloned())
    })?;
    ensure!(
        pressured["reason"] == pressure.under.0 && pressured["message"] == pressure.under.1,
        "{name}: {pressured}"
    );
    eventually_within(lab, Duration::from_secs(30), pressure.taint, || {
        let node = json(lab, &["get", "node", node])?;
        Ok(has_no_schedule_taint(&node, pressure.taint).then_some(()))
    })?;
    rfc3339_seconds(&pressured["lastTransitionTime"])
}

/// Waits for `victim` to end Failed with reason Evicted while `survivor` is still Running
/// (one listing shows both); returns the evicted pod.
fn evicted_beside(lab: &Lab, victim: &str, survivor: &str) -> anyhow::Result<Value> {
    let (evicted, survivor_pod) = eventually_within(
        lab,
        Duration::from_secs(60),
        &format!("{victim} evicted"),
        || {
            let pods = json(lab, &["get", "pods"])?;
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let by_name = |name: &str| {
                items
                    .iter()
                    .find(|p| p["metadata"]["name"] == name)
                    .cloned()
            };
            Ok(by_name(victim)
                .filter(|v| phase(v) == "Failed")
                .map(|v| (v, by_name(survivor))))
        },
    )?;
    let survivor_pod = survivor_pod.with_context(|| format!("{survivor} is gone"))?;
    ensure!(
        phase(&survivor_pod) == "Running",
        "{survivor} was evicted too, or first: {}",
        survivor_pod["status"]
    );
    ensure!(
        evicted["status"]["reason"] == "Evicted",
        "{victim} status: {}",
        evicted["status"]
    );
    Ok(evicted)
}

/// Checks the Node got upstream's `EvictionThresholdMet` event for `resource`.
fn threshold_met_event(lab: &Lab, node: &str, resource: &str) -> anyhow::Result<()> {
    let selector =
        format!("involvedObject.kind=Node,involvedObject.name={node},reason=EvictionThresholdMet");
    let message = format!("Attempting to reclaim {resource}");
    // The agent posts its events from a task of their own: wait a little for it.
    eventually_within(lab, Duration::from_secs(20), &message, || {
        let events = json(
            lab,
            &[
                "get",
                "events",
                "-n",
                "default",
                "--field-selector",
                &selector,
            ],
        )?;
        Ok(events["items"]
            .as_array()
            .is_some_and(|e| {
                e.iter()
                    .any(|e| e["type"] == "Warning" && e["message"] == message)
            })
            .then_some(()))
    })
}

/// Waits for `pressure`'s condition to turn False with its reason and message, no sooner
/// than the transition period after it began, and for its taint to go.
fn pressure_clears(lab: &Lab, node: &str, pressure: &Pressure, began: i64) -> anyhow::Result<()> {
    let name = pressure.condition;
    let cleared = eventually_within(
        lab,
        Duration::from_secs(60),
        &format!("{name}=False"),
        || {
            let node = json(lab, &["get", "node", node])?;
            Ok(condition(&node, name)
                .filter(|c| c["status"] == "False")
                .cloned())
        },
    )?;
    ensure!(
        cleared["reason"] == pressure.clear.0 && cleared["message"] == pressure.clear.1,
        "{name} after: {cleared}"
    );
    let ended = rfc3339_seconds(&cleared["lastTransitionTime"])?;
    ensure!(
        ended - began >= TRANSITION.as_secs() as i64,
        "{name} lasted {}s, less than the transition period",
        ended - began
    );
    eventually_within(
        lab,
        Duration::from_secs(30),
        &format!("no {} taint", pressure.taint),
        || {
            let node = json(lab, &["get", "node", node])?;
            Ok((!has_no_schedule_taint(&node, pressure.taint)).then_some(()))
        },
    )
}

/// Whether `node` carries the taint `key` with effect NoSchedule.
fn has_no_schedule_taint(node: &Value, key: &str) -> bool {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == key && t["effect"] == "NoSchedule")
}

/// The filesystem type mounted exactly at `path`, if anything is.
fn mounted_type(path: &std::path::Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let path = path.to_string_lossy();
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (left.split(' ').nth(4)? == path).then(|| right.split(' ').next().map(str::to_owned))?
    })
}

#[test]
fn disk_pressure_evicts_the_writer_frees_its_empty_dir_and_clears() -> anyhow::Result<()> {
    let _one_lab = LABS.lock().unwrap_or_else(|e| e.into_inner());
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::cluster_for_test(&format!("kdisk-{}", std::process::id()), 1);
    spec.agent_data_dir_mib = Some(NODEFS_MIB);
    spec.extra_agent_args = vec![
        "--eviction-hard".to_owned(),
        "nodefs.available<50%".to_owned(),
        "--eviction-soft".to_owned(),
        "nodefs.available<75%".to_owned(),
        "--eviction-soft-grace-period".to_owned(),
        format!("nodefs.available={}s", SOFT_GRACE.as_secs()),
        "--eviction-max-pod-grace-period".to_owned(),
        "5".to_owned(),
        "--eviction-pressure-transition-period".to_owned(),
        format!("{}s", TRANSITION.as_secs()),
        "--eviction-monitoring-interval".to_owned(),
        "1s".to_owned(),
    ];
    let lab = Lab::up(spec)?;
    let data_dir = lab.paths().agent_data_dir(0);
    ensure!(
        mounted_type(&data_dir).as_deref() == Some("tmpfs"),
        "the agent's data dir {} is not the lab's tmpfs",
        data_dir.display()
    );
    let (_, capacity) = fs_space(&data_dir)?;
    ensure!(
        capacity == NODEFS_MIB << 20,
        "node filesystem of {capacity} bytes"
    );
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;
    let node = lab.node_name(0);

    // No pressure while nothing is written.
    let before = json(&lab, &["get", "node", &node])?;
    let disk = condition(&before, "DiskPressure").context("no DiskPressure")?;
    ensure!(
        disk["status"] == "False"
            && disk["reason"] == "KubeletHasNoDiskPressure"
            && disk["message"] == "kubelet has no disk pressure",
        "DiskPressure before: {disk}"
    );
    let quiet = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quiet"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main",
            "image": BUSYBOX_IMAGE, "command": ["sleep", "100000"]}]}});
    apply(&lab, &quiet.to_string())?;
    eventually_within(&lab, Duration::from_secs(60), "quiet Running", || {
        let pod = json(&lab, &["get", "pod", "quiet"])?;
        Ok((phase(&pod) == "Running").then_some(()))
    })?;
    // A bounded write into the emptyDir, then the pod stays.
    let script = format!(
        "echo filling; dd if=/dev/zero of=/scratch/fill bs=1048576 count={WRITE_MIB} && sync; \
         sleep 100000"
    );
    let writer = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "writer"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}});
    apply(&lab, &writer.to_string())?;
    let writer_uid = eventually_within(&lab, Duration::from_secs(30), "writer's uid", || {
        let pod = json(&lab, &["get", "pod", "writer"])?;
        Ok(pod["metadata"]["uid"].as_str().map(str::to_owned))
    })?;
    // Its emptyDir lives on the node filesystem.
    let writer_dir = data_dir.join("pods").join(&writer_uid);
    let empty_dir = writer_dir.join("volumes/kubernetes.io~empty-dir/scratch");

    // The node comes under disk pressure, and the writer is evicted while the quiet pod
    // keeps running.
    let pressure_began = pressure_comes(&lab, &node, &DISK, Duration::from_secs(60))?;
    let evicted = evicted_beside(&lab, "writer", "quiet")?;
    threshold_met_event(&lab, &node, "ephemeral-storage")?;
    // Upstream names the resource and the threshold as a quantity (50% of 256 MiB).
    let message = evicted["status"]["message"].as_str().unwrap_or_default();
    eprintln!("hard eviction: {message}");
    let expected = format!(
        "The node was low on resource: ephemeral-storage. Threshold quantity: {}Mi, available: ",
        NODEFS_MIB / 2
    );
    ensure!(
        message.starts_with(&expected),
        "eviction message {message:?}, expected it to start with {expected:?}"
    );
    // ... and the container over its request (none): its writable layer and logs.
    let container = message
        .split_once(". Container main was using ")
        .map(|(_, rest)| rest)
        .with_context(|| format!("the message names no container: {message:?}"))?;
    ensure!(
        container.ends_with(", request is 0, has larger consumption of ephemeral-storage. "),
        "eviction message {message:?}"
    );
    let target = condition(&evicted, "DisruptionTarget").context("no DisruptionTarget")?;
    ensure!(
        target["status"] == "True"
            && target["reason"] == "TerminationByKubelet"
            && target["message"] == message,
        "DisruptionTarget: {target}"
    );
    let terminated = &evicted["status"]["containerStatuses"][0]["state"]["terminated"];
    ensure!(
        terminated.is_object(),
        "writer container: {}",
        evicted["status"]["containerStatuses"]
    );
    let events = json(
        &lab,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=writer,reason=Evicted",
        ],
    )?;
    let event = events["items"]
        .as_array()
        .and_then(|e| e.first())
        .with_context(|| format!("no Evicted event: {events}"))?;
    ensure!(
        event["type"] == "Warning" && event["message"] == message,
        "Evicted event: {event}"
    );
    let annotations = &event["metadata"]["annotations"];
    ensure!(
        annotations["starved_resource"] == "ephemeral-storage"
            && annotations["offending_containers"] == "main",
        "Evicted event's annotations: {annotations}"
    );

    // Its emptyDir is removed and the space comes back, while the pod object stays Failed.
    eventually_within(
        &lab,
        Duration::from_secs(30),
        "the writer's emptyDir removed",
        || {
            let (available, _) = fs_space(&data_dir)?;
            Ok(
                (!empty_dir.exists() && !writer_dir.exists() && available > (NODEFS_MIB << 20) / 2)
                    .then_some(()),
            )
        },
    )?;

    // The condition clears, after the transition period.
    pressure_clears(&lab, &node, &DISK, pressure_began)?;
    let writer = json(&lab, &["get", "pod", "writer"])?;
    ensure!(
        phase(&writer) == "Failed" && writer["status"]["containerStatuses"][0]["restartCount"] == 0,
        "the evicted pod changed: {}",
        writer["status"]
    );

    // The soft threshold: a smaller write sets DiskPressure at once, but the writer is
    // evicted only once the threshold has been met for its grace period.
    let script = format!(
        "echo filling; dd if=/dev/zero of=/scratch/fill bs=1048576 count={SOFT_WRITE_MIB} \
         && sync; sleep 100000"
    );
    let soft_writer = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "soft-writer"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}});
    apply(&lab, &soft_writer.to_string())?;
    let pressured = eventually_within(&lab, Duration::from_secs(60), "soft DiskPressure", || {
        let node = json(&lab, &["get", "node", &node])?;
        let disk = condition(&node, "DiskPressure").cloned();
        Ok(disk.filter(|c| c["status"] == "True"))
    })?;
    let soft_began = rfc3339_seconds(&pressured["lastTransitionTime"])?;
    let evicted = eventually_within(&lab, Duration::from_secs(60), "soft-writer evicted", || {
        let pod = json(&lab, &["get", "pod", "soft-writer"])?;
        Ok((phase(&pod) == "Failed").then_some(pod))
    })?;
    let message = evicted["status"]["message"].as_str().unwrap_or_default();
    let expected = format!(
        "The node was low on resource: ephemeral-storage. Threshold quantity: {}Mi, available: ",
        NODEFS_MIB * 3 / 4
    );
    ensure!(
        evicted["status"]["reason"] == "Evicted" && message.starts_with(&expected),
        "soft eviction: {}",
        evicted["status"]
    );
    let target = condition(&evicted, "DisruptionTarget").context("no DisruptionTarget")?;
    let evicted_at = rfc3339_seconds(&target["lastTransitionTime"])?;
    // Timestamps have whole seconds: allow one for rounding.
    ensure!(
        evicted_at - soft_began >= SOFT_GRACE.as_secs() as i64 - 1,
        "evicted {}s after the soft threshold was met, before its grace period",
        evicted_at - soft_began
    );
    eprintln!(
        "soft eviction {}s after the threshold was met: {message}",
        evicted_at - soft_began
    );

    let quiet = json(&lab, &["get", "pod", "quiet"])?;
    ensure!(
        phase(&quiet) == "Running" && quiet["status"]["containerStatuses"][0]["restartCount"] == 0,
        "quiet: {}",
        quiet["status"]
    );

    // Admission: while the node is under disk pressure that no pod causes (a file of the
    // test's own on the node filesystem, which the kubelet cannot remove), a pod sent to the
    // node (nodeName set, so the scheduler's taint does not keep it away) is refused as
    // upstream refuses it, and never starts. The pressure also evicts the quiet pod, the
    // only running one, and stays. Once the file is gone and the pressure has cleared, the
    // next pod runs.
    let filler = data_dir.join("test-filler");
    write_zeros(&filler, FILLER_MIB)?;
    let pressured = eventually_within(&lab, Duration::from_secs(60), "DiskPressure", || {
        let node = json(&lab, &["get", "node", &node])?;
        let disk = condition(&node, "DiskPressure").cloned();
        Ok(disk.filter(|c| c["status"] == "True"))
    })?;
    let sent = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                    "command": ["sleep", "100000"]}]}})
        .to_string()
    };
    apply(&lab, &sent("refused"))?;
    let refused = eventually_within(&lab, Duration::from_secs(60), "refused Failed", || {
        let pod = json(&lab, &["get", "pod", "refused"])?;
        Ok((phase(&pod) == "Failed").then_some(pod))
    })?;
    let refusal = "The node had condition: [DiskPressure]. ";
    ensure!(
        refused["status"]["reason"] == "Evicted"
            && refused["status"]["message"] == format!("Pod was rejected: {refusal}")
            && refused["status"]["containerStatuses"].is_null(),
        "the refused pod: {}",
        refused["status"]
    );
    let events = json(
        &lab,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=refused,reason=Evicted",
        ],
    )?;
    ensure!(
        events["items"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["type"] == "Warning" && e["message"] == refusal)),
        "no Evicted event for the refused pod: {events}"
    );
    // A pod the node had not started was no eviction candidate: the running one went.
    let quiet = eventually_within(&lab, Duration::from_secs(60), "quiet evicted", || {
        let pod = json(&lab, &["get", "pod", "quiet"])?;
        Ok((phase(&pod) == "Failed").then_some(pod))
    })?;
    ensure!(
        quiet["status"]["reason"] == "Evicted",
        "the quiet pod under the file's pressure: {}",
        quiet["status"]
    );
    std::fs::remove_file(&filler)?;
    let began = rfc3339_seconds(&pressured["lastTransitionTime"])?;
    pressure_clears(&lab, &node, &DISK, began)?;
    apply(&lab, &sent("admitted"))?;
    eventually_within(&lab, Duration::from_secs(60), "admitted Running", || {
        let pod = json(&lab, &["get", "pod", "admitted"])?;
        Ok((phase(&pod) == "Running").then_some(()))
    })?;
    let refused = json(&lab, &["get", "pod", "refused"])?;
    ensure!(
        phase(&refused) == "Failed" && refused["status"]["containerStatuses"].is_null(),
        "the refused pod started later: {}",
        refused["status"]
    );

    // Local storage limits, without any pressure: a pod that writes more into its emptyDir
    // than its sizeLimit is evicted with upstream's message; one within its limit runs on.
    let writing = |name: &str, limit: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": limit}}],
                "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                    "command": ["sh", "-c", format!(
                        "dd if=/dev/zero of=/scratch/fill bs=1048576 count={LIMITED_WRITE_MIB} \
                         && sync && echo written; sleep 100000")],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}})
        .to_string()
    };
    apply(&lab, &writing("limited", "8Mi"))?;
    apply(&lab, &writing("roomy", "64Mi"))?;
    let limited = eventually_within(&lab, Duration::from_secs(60), "limited evicted", || {
        let pod = json(&lab, &["get", "pod", "limited"])?;
        Ok((phase(&pod) == "Failed").then_some(pod))
    })?;
    let message = "Usage of EmptyDir volume \"scratch\" exceeds the limit \"8Mi\". ";
    let target = condition(&limited, "DisruptionTarget").context("no DisruptionTarget")?;
    ensure!(
        limited["status"]["reason"] == "Evicted"
            && limited["status"]["message"] == message
            && target["status"] == "True",
        "the pod over its emptyDir limit: {}",
        limited["status"]
    );
    // The roomy pod wrote as much, and was looked at for a few passes (1 s each) since.
    eventually_within(&lab, Duration::from_secs(60), "roomy's write done", || {
        let logs = kubectl(&lab, &["logs", "roomy"]).unwrap_or_default();
        Ok(logs.contains("written").then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let roomy = json(&lab, &["get", "pod", "roomy"])?;
    let node_now = json(&lab, &["get", "node", &node])?;
    let disk = condition(&node_now, "DiskPressure").context("no DiskPressure")?;
    ensure!(
        phase(&roomy) == "Running" && disk["status"] == "False",
        "the pod within its emptyDir limit: {}; DiskPressure: {disk}",
        roomy["status"]
    );
    lab.check_agents()?;
    lab.down()
}

/// What each emptyDir-limit pod writes: over 8 MiB, within 64 MiB.
const LIMITED_WRITE_MIB: u64 = 16;

/// What the admission check writes next to the pods: enough to leave less than half of
/// the node filesystem free.
const FILLER_MIB: usize = 160;

/// Writes `mib` MiB of zeros to `path` (bounded: 1 MiB at a time), flushed to the
/// filesystem.
fn write_zeros(path: &std::path::Path, mib: usize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(())
}

/// The tags of the images node 0's runtime holds.
fn image_tags(lab: &Lab) -> anyhow::Result<Vec<String>> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut cri = CriClient::connect(&lab.containerd_socket(0)).await?;
        let images = cri
            .images()
            .list_images(ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images;
        Ok(images.into_iter().flat_map(|i| i.repo_tags).collect())
    })
}

#[test]
fn image_gc_removes_unused_images_but_not_the_sandbox_image() -> anyhow::Result<()> {
    let _one_lab = LABS.lock().unwrap_or_else(|e| e.into_inner());
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::cluster_for_test(&format!("kimggc-{}", std::process::id()), 1);
    spec.extra_agent_args = [
        "--image-gc-high-threshold",
        "0",
        "--image-gc-low-threshold",
        "0",
        "--minimum-image-ttl-duration",
        "0s",
    ]
    .map(str::to_owned)
    .to_vec();
    let lab = Lab::up(spec)?;
    let before = image_tags(&lab)?;
    ensure!(
        before.iter().any(|t| t == PAUSE_IMAGE),
        "the lab imported no sandbox image: {before:?}"
    );
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;
    let after = eventually_within(&lab, Duration::from_secs(60), "busybox collected", || {
        let tags = image_tags(&lab)?;
        Ok((!tags.iter().any(|t| t == BUSYBOX_IMAGE)).then_some(tags))
    })?;
    ensure!(
        after.iter().any(|t| t == PAUSE_IMAGE),
        "the sandbox image was collected: {after:?}"
    );
    // The agent removed it (it was there when the lab came up).
    let log = std::fs::read_to_string(lab.paths().agent_log(0)).unwrap_or_default();
    ensure!(
        log.lines()
            .any(|l| l.contains("removed an unused image") && l.contains("sha256:")),
        "the agent's log tells of no removed image"
    );
    lab.check_agents()?;
    lab.down()
}
