//! Static pods in a one-node lab, driven by files in the agent's manifest directory, real
//! kubectl and the node's own containerd (CRI): a JSON and a YAML manifest run as
//! `<name>-<node>` (broken and hidden files beside them skipped) with a mirror pod in the
//! API (annotated `kubernetes.io/config.mirror`, owned by the Node, showing the static pod's
//! status); a mirror pod deleted by hand comes back and the container is untouched; with
//! the API server killed the containers keep running, the agent restarted meanwhile adopts
//! them (same container IDs), stops the one whose manifest went while it was down, and a
//! manifest added meanwhile runs; once the server is back every static pod has its mirror
//! pod, Running with the runtime's container, and the gone one's mirror pod is deleted; a
//! changed manifest replaces the container; a removed manifest stops it and deletes the
//! mirror pod.
//!
//! Safety: everything runs inside the lab's namespaces and cgroup; every wait is bounded.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use corten_cri::runtime::CriClient;
use corten_tests::{
    kubectl::{condition_true, eventually, eventually_within, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE},
};
use k8s_cri::v1::{ContainerFilter, ContainerState, ListContainersRequest};
use serde_json::{json, Value};

/// How long a static pod may take to start without the API.
const START: Duration = Duration::from_secs(60);

/// The pod `namespace/name` if the API has it (`None` on NotFound).
fn get_pod(lab: &Lab, namespace: &str, name: &str) -> anyhow::Result<Option<Value>> {
    let out = lab
        .kubectl()?
        .args(["get", "pod", "-n", namespace, name, "-o", "json"])
        .output()?;
    if out.status.success() {
        return Ok(Some(serde_json::from_slice(&out.stdout)?));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("NotFound"), "kubectl get pod: {stderr}");
    Ok(None)
}

/// A container of a pod as node 0's containerd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuntimeContainer {
    id: String,
    running: bool,
    pod_uid: String,
}

/// Reads node 0's runtime directly: it answers whether the API server runs or not.
struct Runtime {
    tokio: tokio::runtime::Runtime,
    cri: CriClient,
}

impl Runtime {
    fn connect(lab: &Lab) -> anyhow::Result<Self> {
        let tokio = tokio::runtime::Runtime::new()?;
        let cri = tokio.block_on(CriClient::connect(&lab.containerd_socket(0)))?;
        Ok(Self { tokio, cri })
    }

    /// The containers of pod `namespace/name`, newest first.
    fn containers(&self, namespace: &str, name: &str) -> anyhow::Result<Vec<RuntimeContainer>> {
        let mut cri = self.cri.clone();
        let labels = [
            (
                "io.kubernetes.pod.namespace".to_owned(),
                namespace.to_owned(),
            ),
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
        ]
        .into();
        let mut list = self
            .tokio
            .block_on(cri.runtime().list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    label_selector: labels,
                    ..Default::default()
                }),
            }))
            .context("CRI ListContainers")?
            .into_inner()
            .containers;
        list.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(list
            .into_iter()
            .map(|c| RuntimeContainer {
                running: c.state == ContainerState::ContainerRunning as i32,
                pod_uid: c
                    .labels
                    .get("io.kubernetes.pod.uid")
                    .cloned()
                    .unwrap_or_default(),
                id: c.id,
            })
            .collect())
    }

    /// The one running container of pod `namespace/name`, if it has exactly one.
    fn running(&self, namespace: &str, name: &str) -> anyhow::Result<Option<RuntimeContainer>> {
        let running: Vec<RuntimeContainer> = self
            .containers(namespace, name)?
            .into_iter()
            .filter(|c| c.running)
            .collect();
        Ok((running.len() == 1).then(|| running[0].clone()))
    }

    /// Waits until pod `namespace/name` runs exactly one container.
    fn wait_running(
        &self,
        lab: &Lab,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<RuntimeContainer> {
        eventually_within(
            lab,
            START,
            &format!("a running container of {name}"),
            || self.running(namespace, name),
        )
    }
}

/// The mirror pod's container ID without the `containerd://` prefix.
fn status_container_id(pod: &Value) -> String {
    pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("containerd://")
        .to_owned()
}

/// Waits until the mirror pod `namespace/name` is Running and Ready with the container
/// `container`, and mirrors the static pod that container runs in (its hash is that pod's
/// UID).
fn wait_mirror(
    lab: &Lab,
    namespace: &str,
    name: &str,
    container: &RuntimeContainer,
) -> anyhow::Result<Value> {
    eventually(
        lab,
        &format!("mirror pod {name} Running with its container"),
        || {
            let Some(pod) = get_pod(lab, namespace, name)? else {
                return Ok(None);
            };
            Ok((pod["status"]["phase"] == "Running"
                && condition_true(&pod, "Ready")
                && status_container_id(&pod) == container.id
                && pod["metadata"]["annotations"]["kubernetes.io/config.mirror"]
                    == container.pod_uid.as_str())
            .then_some(pod))
        },
    )
}

/// Checks for `period` that each `(namespace, name, container)` keeps running that same
/// container.
fn keeps_running(
    lab: &Lab,
    runtime: &Runtime,
    pods: &[(&str, &str, &RuntimeContainer)],
    period: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut looks = 0;
    while started.elapsed() < period {
        for (namespace, name, container) in pods {
            let now = runtime.running(namespace, name)?;
            ensure!(
                now.as_ref() == Some(*container),
                "{name}: {container:?} became {now:?}; agents: {:?}",
                lab.agent_failures()
            );
        }
        looks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    ensure!(looks >= 4, "looked only {looks} times");
    Ok(())
}

fn manifest(name: &str, namespace: Option<&str>, command: &str) -> String {
    let mut metadata = json!({"name": name, "labels": {"tier": "static"}});
    if let Some(namespace) = namespace {
        metadata["namespace"] = json!(namespace);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main",
            "image": BUSYBOX_IMAGE, "command": ["sh", "-c", command]}]}})
    .to_string()
}

#[test]
fn static_pods_run_from_their_manifests_with_or_without_the_api() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut lab = Lab::up_ready(LabSpec::cluster_for_test(
        &format!("kstatic-{}", std::process::id()),
        1,
    ))?;
    if let Err(e) = static_pods(&mut lab) {
        // The agent's own account, before teardown removes it.
        let log = std::fs::read_to_string(lab.paths().agent_log(0)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        return Err(e.context(format!("the end of the agent's log:\n{tail}")));
    }
    lab.check_agents()?;
    lab.down()
}

fn static_pods(lab: &mut Lab) -> anyhow::Result<()> {
    let runtime = Runtime::connect(lab)?;

    let dir = lab.paths().agent_data_dir(0).join("manifests");
    std::fs::create_dir_all(&dir)?;
    let node = lab.node_name(0);
    let web = format!("web-{node}");
    let cache = format!("cache-{node}");
    let late = format!("late-{node}");

    // A JSON and a YAML manifest, a hidden file and broken manifests beside them.
    let web_file = dir.join("web.json");
    std::fs::write(
        &web_file,
        manifest("web", Some("kube-system"), "exec sleep 100000"),
    )?;
    std::fs::write(
        dir.join(".web.json.swp"),
        manifest("hidden", None, "exec sleep 100000"),
    )?;
    std::fs::write(dir.join("broken.json"), "{not json")?;
    std::fs::write(dir.join("broken.yaml"), "spec: [")?;
    let cache_file = dir.join("cache.yaml");
    std::fs::write(
        &cache_file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cache\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    \
             image: {BUSYBOX_IMAGE}\n    command: [sleep, \"100000\"]\n"
        ),
    )?;

    let web_container = runtime.wait_running(lab, "kube-system", &web)?;
    let mirror = wait_mirror(lab, "kube-system", &web, &web_container)?;
    let annotations = &mirror["metadata"]["annotations"];
    ensure!(
        annotations["kubernetes.io/config.mirror"] == annotations["kubernetes.io/config.hash"]
            && annotations["kubernetes.io/config.source"] == "file",
        "mirror pod annotations {annotations}"
    );
    // The containers run in the static pod (its UID is the hash), not in the mirror pod.
    ensure!(
        mirror["metadata"]["uid"] != web_container.pod_uid.as_str(),
        "the container runs in the mirror pod {}",
        mirror["metadata"]["uid"]
    );
    ensure!(
        mirror["metadata"]["ownerReferences"][0]["kind"] == "Node"
            && mirror["metadata"]["ownerReferences"][0]["name"] == node.as_str(),
        "mirror pod owners {}",
        mirror["metadata"]["ownerReferences"]
    );
    ensure!(
        mirror["spec"]["nodeName"] == node.as_str()
            && mirror["metadata"]["labels"]["tier"] == "static",
        "mirror pod {mirror}"
    );
    let pods = kubectl(lab, &["get", "pods", "-A", "-o", "name"])?;
    ensure!(
        pods.lines().filter(|l| l.starts_with("pod/web")).count() == 1 && !pods.contains("hidden"),
        "pods: {pods}"
    );
    let cache_container = runtime.wait_running(lab, "default", &cache)?;
    let from_yaml = wait_mirror(lab, "default", &cache, &cache_container)?;
    ensure!(
        from_yaml["spec"]["containers"][0]["command"] == json!(["sleep", "100000"]),
        "the YAML static pod: {from_yaml}"
    );
    let hello = kubectl(
        lab,
        &["exec", "-n", "kube-system", &web, "--", "echo", "static"],
    )?;
    ensure!(hello.trim() == "static", "exec gave {hello:?}");

    // Deleted by hand, the mirror pod comes back; the container is the same.
    let first_uid = mirror["metadata"]["uid"].clone();
    kubectl(
        lab,
        &["delete", "pod", "-n", "kube-system", &web, "--wait=false"],
    )?;
    let back = eventually(lab, "the mirror pod back", || {
        let pod = get_pod(lab, "kube-system", &web)?;
        Ok(pod.filter(|p| {
            p["metadata"]["uid"] != first_uid
                && p["metadata"]["deletionTimestamp"].is_null()
                && condition_true(p, "Ready")
                && status_container_id(p) == web_container.id
        }))
    })?;
    ensure!(
        back["status"]["containerStatuses"][0]["restartCount"] == 0,
        "restarted: {back}"
    );
    keeps_running(
        lab,
        &runtime,
        &[("kube-system", &web, &web_container)],
        Duration::from_secs(3),
    )?;

    // The API server goes away: the containers keep running.
    lab.kill_server()?;
    keeps_running(
        lab,
        &runtime,
        &[
            ("kube-system", &web, &web_container),
            ("default", &cache, &cache_container),
        ],
        Duration::from_secs(5),
    )?;
    // The agent restarted without the API server adopts them, stops the pod whose manifest
    // went while it was down and runs a new manifest.
    lab.kill_agent(0)?;
    std::fs::remove_file(&cache_file)?;
    lab.start_agent(0)?;
    let late_file = dir.join("late.json");
    std::fs::write(&late_file, manifest("late", None, "exec sleep 100000"))?;
    let late_container = runtime.wait_running(lab, "default", &late)?;
    eventually(lab, "cache stopped without the API", || {
        let running = runtime
            .containers("default", &cache)?
            .iter()
            .any(|c| c.running);
        Ok((!running).then_some(()))
    })?;
    keeps_running(
        lab,
        &runtime,
        &[
            ("kube-system", &web, &web_container),
            ("default", &late, &late_container),
        ],
        Duration::from_secs(5),
    )?;
    lab.check_agents()?;

    // The server back, every static pod has its mirror pod with the static pod's status,
    // and the mirror pod of the one that went is deleted.
    lab.start_server()?;
    wait_mirror(lab, "kube-system", &web, &web_container)?;
    let late_mirror = wait_mirror(lab, "default", &late, &late_container)?;
    eventually(lab, "cache's mirror pod deleted", || {
        Ok(get_pod(lab, "default", &cache)?.is_none().then_some(()))
    })?;
    ensure!(
        late_mirror["metadata"]["ownerReferences"][0]["kind"] == "Node",
        "late mirror owners {}",
        late_mirror["metadata"]["ownerReferences"]
    );
    ensure!(
        runtime.running("kube-system", &web)?.as_ref() == Some(&web_container),
        "web's container changed"
    );

    // A changed manifest replaces the container (and the mirror pod).
    std::fs::write(
        &late_file,
        manifest("late", None, "echo v2; exec sleep 100000"),
    )?;
    let replaced = eventually_within(lab, START, "late's new container", || {
        Ok(runtime
            .running("default", &late)?
            .filter(|c| c.id != late_container.id && c.pod_uid != late_container.pod_uid))
    })?;
    let old = runtime
        .containers("default", &late)?
        .into_iter()
        .find(|c| c.id == late_container.id);
    ensure!(
        old.as_ref().is_none_or(|c| !c.running),
        "the old container still runs: {old:?}"
    );
    let late_mirror = wait_mirror(lab, "default", &late, &replaced)?;
    ensure!(
        late_mirror["spec"]["containers"][0]["command"][2] == "echo v2; exec sleep 100000",
        "late's mirror pod: {late_mirror}"
    );

    // A removed manifest stops the containers and deletes the mirror pod.
    for file in [&web_file, &late_file] {
        std::fs::remove_file(file)?;
    }
    for (namespace, name) in [("kube-system", &web), ("default", &late)] {
        eventually(lab, &format!("{name} stopped and gone"), || {
            let running = runtime
                .containers(namespace, name)?
                .iter()
                .any(|c| c.running);
            Ok((!running && get_pod(lab, namespace, name)?.is_none()).then_some(()))
        })?;
    }
    for file in [".web.json.swp", "broken.json", "broken.yaml"] {
        std::fs::remove_file(dir.join(file)).ok();
    }
    Ok(())
}
