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
//!
//! Image garbage collection in another one-node lab, whose agent collects at any usage
//! (high and low thresholds 0, no minimum age): the unused busybox image is removed through
//! CRI, the runtime's sandbox image stays.
//!
//! Safety: everything runs inside the lab's namespaces and cgroup; the pod's allocation is
//! bounded (300 MiB); every wait is bounded; the two labs run one after the other.
use std::{sync::Mutex, time::Duration};

use anyhow::{ensure, Context};
use corten_cri::runtime::CriClient;
use corten_tests::{
    kubectl::{apply, eventually_within, json},
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
    let mut spec = LabSpec::for_test(&format!("kevict-{}", std::process::id()), 1);
    spec.control_plane = true;
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

    // The node comes under memory pressure.
    let pressured =
        eventually_within(&lab, Duration::from_secs(90), "MemoryPressure=True", || {
            let node = json(&lab, &["get", "node", &node])?;
            let memory = condition(&node, "MemoryPressure").cloned();
            Ok(memory.filter(|c| c["status"] == "True"))
        })?;
    ensure!(
        pressured["reason"] == "KubeletHasInsufficientMemory"
            && pressured["message"] == "kubelet has insufficient memory available",
        "MemoryPressure: {pressured}"
    );
    let pressure_began = rfc3339_seconds(&pressured["lastTransitionTime"])?;

    // The BestEffort pod is evicted, and the Guaranteed one is still running then (one
    // listing shows both).
    let (evicted, guaranteed) =
        eventually_within(&lab, Duration::from_secs(60), "hog evicted", || {
            let pods = json(&lab, &["get", "pods"])?;
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let by_name = |name: &str| {
                items
                    .iter()
                    .find(|p| p["metadata"]["name"] == name)
                    .cloned()
            };
            let (hog, guaranteed) = (by_name("hog"), by_name("guaranteed"));
            Ok(hog
                .filter(|h| phase(h) == "Failed")
                .map(|h| (h, guaranteed)))
        })?;
    let guaranteed = guaranteed.context("the Guaranteed pod is gone")?;
    ensure!(
        phase(&guaranteed) == "Running",
        "the Guaranteed pod was evicted first: {}",
        guaranteed["status"]
    );
    ensure!(
        evicted["status"]["reason"] == "Evicted",
        "hog status: {}",
        evicted["status"]
    );
    let message = evicted["status"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: ")
            && message.contains(", available: "),
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
    let cleared = eventually_within(
        &lab,
        Duration::from_secs(60),
        "MemoryPressure=False",
        || {
            let node = json(&lab, &["get", "node", &node])?;
            let memory = condition(&node, "MemoryPressure").cloned();
            Ok(memory.filter(|c| c["status"] == "False"))
        },
    )?;
    ensure!(
        cleared["reason"] == "KubeletHasSufficientMemory",
        "MemoryPressure after: {cleared}"
    );
    let pressure_ended = rfc3339_seconds(&cleared["lastTransitionTime"])?;
    ensure!(
        pressure_ended - pressure_began >= TRANSITION.as_secs() as i64,
        "MemoryPressure lasted {}s, less than the transition period",
        pressure_ended - pressure_began
    );
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
    let mut spec = LabSpec::for_test(&format!("kimggc-{}", std::process::id()), 1);
    spec.control_plane = true;
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
