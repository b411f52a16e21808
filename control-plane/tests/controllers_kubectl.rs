//! The workload controllers inside a real `corten-server`, driven with real kubectl 1.33:
//! Deployments (`rollout status|history|undo|pause|resume`, `set image`, maxSurge and
//! maxUnavailable held during a rollout, Recreate, `delete --cascade=foreground|background|
//! orphan`), DaemonSets (one pod per matching node, following node labels, rolling updates),
//! StatefulSets (ordered creation, claims from volumeClaimTemplates, ordered scale-down), Jobs
//! (completions and parallelism, Indexed, backoffLimit) and CronJobs (a `* * * * *` schedule
//! fires).
//!
//! There is no kubelet: nodes are Node objects the test writes, and a fake kubelet task plays
//! the node agent for pods bound to them — it renews the nodes' Leases, marks pods Running and
//! Ready (or Succeeded / Failed, by image name: `...succeed...` after a second, `...fail...`
//! after half a second), and finishes graceful deletions. The test can hold readiness or
//! deletions back to observe the controllers waiting for them.
#![cfg(feature = "kubectl-tests")]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::{
    apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    coordination::v1::Lease,
    core::v1::{Event, Node, PersistentVolumeClaim, Pod},
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Client,
};
use serde_json::{json, Value};
use support::server::{eventually, Server};

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
const WAIT: Duration = Duration::from_secs(30);

fn now_rfc3339() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// What the test holds back from the fake kubelet.
#[derive(Clone, Default)]
struct Holds {
    /// Pods stay Running but not Ready.
    readiness: Arc<AtomicBool>,
    /// Graceful deletions are not finished.
    deletions: Arc<AtomicBool>,
}

/// A server, a client, and the fake kubelet for its nodes.
struct Cluster {
    server: Server,
    client: Client,
    holds: Holds,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kubelet.abort();
    }
}

impl Cluster {
    /// A server with Ready nodes `(name, labels)`.
    async fn start(nodes: &[(&str, Value)]) -> Result<Self> {
        let server = Server::start(&[]).await?;
        let client = server.client().await?;
        for (name, labels) in nodes {
            add_node(&client, name, labels.clone()).await?;
        }
        let holds = Holds::default();
        let names = nodes.iter().map(|(n, _)| (*n).to_owned()).collect();
        let kubelet = tokio::spawn(fake_kubelet(client.clone(), names, holds.clone()));
        Ok(Self {
            server,
            client,
            holds,
            kubelet,
        })
    }

    /// Runs kubectl; returns its output whatever the exit code.
    async fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        let output = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(KUBECTL)
                .arg("--kubeconfig")
                .arg(self.server.kubeconfig())
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("kubectl {args:?} did not finish"))??;
        Ok(output)
    }

    /// Runs kubectl expecting success; returns stdout.
    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        ensure!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f` of a YAML document.
    async fn apply(&self, name: &str, yaml: &str) -> Result<String> {
        let path: PathBuf = self.server.data.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        let path = path.to_string_lossy().into_owned();
        self.kubectl(&["apply", "-f", &path]).await
    }

    fn log_tail(&self) -> String {
        let log = self.server.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("retrying"))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), "default")
    }
}

async fn add_node(client: &Client, name: &str, labels: Value) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = labels;
    if let Some(map) = labels.as_object_mut() {
        map.insert("kubernetes.io/hostname".to_owned(), json!(name));
    }
    let node =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    nodes
        .create(&PostParams::default(), &serde_json::from_value(node)?)
        .await?;
    let status = json!({"status": {
        "allocatable": {"cpu": "16", "memory": "32Gi", "pods": "110"},
        "capacity": {"cpu": "16", "memory": "32Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": now_rfc3339()}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

fn container_statuses(pod: &Pod, state: Value, ready: bool) -> Value {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    Value::Array(
        containers
            .iter()
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready,
                    "restartCount": 0, "started": ready, "state": state})
            })
            .collect(),
    )
}

/// Plays the kubelet for pods bound to `nodes` (bounded: about half an hour).
async fn fake_kubelet(client: Client, nodes: Vec<String>, holds: Holds) {
    let pods: Api<Pod> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut running_since: HashMap<String, Instant> = HashMap::new();
    let mut last_beat: Option<Instant> = None;
    for _ in 0..20_000 {
        if last_beat.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            for node in &nodes {
                let renew = now_rfc3339().replace('Z', ".000000Z");
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": renew}});
                let _ = leases
                    .patch(
                        node,
                        &PatchParams::apply("fake-kubelet").force(),
                        &Patch::Apply(lease),
                    )
                    .await;
            }
            last_beat = Some(Instant::now());
        }
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for pod in list.items {
                if let Err(e) =
                    kubelet_step(&client, &pod, &nodes, &holds, &mut running_since).await
                {
                    eprintln!("fake kubelet: {e}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kubelet_step(
    client: &Client,
    pod: &Pod,
    nodes: &[String],
    holds: &Holds,
    running_since: &mut HashMap<String, Instant>,
) -> Result<()> {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(());
    };
    if !nodes.contains(&node) {
        return Ok(());
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        if !holds.deletions.load(Ordering::SeqCst) {
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
        }
        return Ok(());
    }
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let want_ready = !holds.readiness.load(Ordering::SeqCst) && !image.contains("unready");
    let now = now_rfc3339();
    let patch = match phase.as_str() {
        "" | "Pending" => {
            running_since.insert(uid, Instant::now());
            Some(json!({"status": {
                "phase": "Running",
                "startTime": now,
                "conditions": [
                    {"type": "Ready", "status": if want_ready { "True" } else { "False" }, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": if want_ready { "True" } else { "False" }, "lastTransitionTime": now},
                ],
                "containerStatuses": container_statuses(pod, json!({"running": {"startedAt": now}}), want_ready),
            }}))
        }
        "Running" => {
            let since = *running_since.entry(uid).or_insert_with(Instant::now);
            let finish =
                if image.contains("succeed") && since.elapsed() > Duration::from_millis(1000) {
                    Some(("Succeeded", 0, "Completed"))
                } else if image.contains("fail") && since.elapsed() > Duration::from_millis(500) {
                    Some(("Failed", 1, "Error"))
                } else {
                    None
                };
            match finish {
                Some((phase, code, reason)) => Some(json!({"status": {
                    "phase": phase,
                    "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
                    "containerStatuses": container_statuses(pod, json!({"terminated": {
                        "exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}}), false),
                }})),
                None if want_ready && !ready => Some(json!({"status": {
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    ],
                    "containerStatuses": container_statuses(pod, json!({"running": {"startedAt": now}}), true),
                }})),
                None => None,
            }
        }
        _ => None,
    };
    if let Some(patch) = patch {
        api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
    }
    Ok(())
}

fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

async fn pods_with(cluster: &Cluster, selector: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = cluster.api();
    Ok(pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// The ReplicaSets a Deployment controls.
async fn replica_sets_of(cluster: &Cluster, deployment: &str) -> Result<Vec<ReplicaSet>> {
    let sets: Api<ReplicaSet> = cluster.api();
    Ok(sets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata.owner_references.iter().flatten().any(|o| {
                o.controller == Some(true) && o.name == deployment && o.kind == "Deployment"
            })
        })
        .collect())
}

fn deployment_yaml(name: &str, image: &str, replicas: i32, strategy: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  strategy:\n{strategy}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: main\n        image: {image}\n"
    )
}

const ROLLING_ONE_BY_ONE: &str =
    "    type: RollingUpdate\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0";

/// What a watcher saw during a rollout.
#[derive(Debug, Default)]
struct Observed {
    max_total_replicas: i32,
    min_ready: usize,
    max_sets_with_replicas: usize,
    both_templates_at_once: bool,
    samples: usize,
}

/// Polls a Deployment's ReplicaSets and pods until `stop` is set (bounded to two minutes).
fn watch_rollout(
    cluster: &Cluster,
    name: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Observed> {
    let client = cluster.client.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut seen = Observed {
            min_ready: usize::MAX,
            ..Observed::default()
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let (Ok(set_list), Ok(pod_list)) = (
                sets.list(&ListParams::default()).await,
                pods.list(&ListParams::default().labels(&format!("app={name}")))
                    .await,
            ) else {
                continue;
            };
            let ours: Vec<&ReplicaSet> = set_list
                .items
                .iter()
                .filter(|rs| {
                    rs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.name == name)
                })
                .collect();
            let total: i32 = ours
                .iter()
                .filter_map(|rs| rs.spec.as_ref()?.replicas)
                .sum();
            seen.max_total_replicas = seen.max_total_replicas.max(total);
            seen.max_sets_with_replicas = seen.max_sets_with_replicas.max(
                ours.iter()
                    .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
                    .count(),
            );
            let ready = pod_list
                .items
                .iter()
                .filter(|p| live(p) && is_ready(p))
                .count();
            seen.min_ready = seen.min_ready.min(ready);
            let hashes: BTreeSet<String> = pod_list
                .items
                .iter()
                .filter_map(|p| labels_of(p).get("pod-template-hash").cloned())
                .collect();
            seen.both_templates_at_once |= hashes.len() > 1;
            seen.samples += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        seen
    })
}

async fn deployment_of(cluster: &Cluster, name: &str) -> Result<Deployment> {
    let deployments: Api<Deployment> = cluster.api();
    Ok(deployments.get(name).await?)
}

fn progressing_reason(d: &Deployment) -> Option<String> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing")?
        .reason
        .clone()
}

fn image_of(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_roll_out_roll_back_pause_and_resume_with_kubectl() -> Result<()> {
    let cluster = Cluster::start(&[("n1", json!({})), ("n2", json!({}))]).await?;
    cluster
        .apply(
            "web",
            &deployment_yaml("web", "corten/test:v1", 3, ROLLING_ONE_BY_ONE),
        )
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    let d = deployment_of(&cluster, "web").await?;
    let s = d.status.clone().unwrap_or_default();
    ensure!(
        s.replicas == Some(3)
            && s.updated_replicas == Some(3)
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.observed_generation == d.metadata.generation,
        "status after the first rollout: {s:?}"
    );
    ensure!(
        progressing_reason(&d).as_deref() == Some("NewReplicaSetAvailable"),
        "{s:?}"
    );
    let sets = replica_sets_of(&cluster, "web").await?;
    ensure!(sets.len() == 1, "one ReplicaSet: {sets:?}");
    let first = sets[0].metadata.name.clone().unwrap_or_default();
    let hash = sets[0]
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .cloned()
        .unwrap_or_default();
    ensure!(
        first == format!("web-{hash}") && !hash.is_empty(),
        "{first} / {hash}"
    );
    let pods = pods_with(&cluster, "app=web").await?;
    ensure!(
        pods.len() == 3
            && pods
                .iter()
                .all(|p| labels_of(p).get("pod-template-hash") == Some(&hash)),
        "pods carry the hash: {:?}",
        pods.iter().map(labels_of).collect::<Vec<_>>()
    );

    // An image change rolls one pod at a time: never more than 3 + 1 pods, never fewer
    // than 3 ready.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_rollout(&cluster, "web", stop.clone());
    cluster
        .kubectl(&["set", "image", "deployment/web", "main=corten/test:v2"])
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.await?;
    ensure!(seen.samples > 5, "the watcher sampled: {seen:?}");
    ensure!(
        seen.max_total_replicas <= 4,
        "maxSurge 1 was exceeded: {seen:?}"
    );
    ensure!(seen.min_ready >= 3, "maxUnavailable 0 was broken: {seen:?}");
    ensure!(
        seen.max_sets_with_replicas == 2,
        "old and new ran side by side: {seen:?}"
    );
    let events: Api<Event> = cluster.api();
    let scaling: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ScalingReplicaSet"))
        .filter_map(|e| e.message)
        .collect();
    ensure!(
        scaling
            .iter()
            .any(|m| m.starts_with("Scaled up replica set web-"))
            && scaling
                .iter()
                .any(|m| m.starts_with("Scaled down replica set ") && m.ends_with("from 3 to 2")),
        "{scaling:?}"
    );

    let history = cluster
        .kubectl(&["rollout", "history", "deployment/web"])
        .await?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        revisions.contains(&"1") && revisions.contains(&"2"),
        "{history}"
    );
    let revision_two = cluster
        .kubectl(&["rollout", "history", "deployment/web", "--revision=2"])
        .await?;
    ensure!(revision_two.contains("corten/test:v2"), "{revision_two}");

    // Undo: back to v1 on the first ReplicaSet, which becomes revision 3.
    let undo = cluster
        .kubectl(&["rollout", "undo", "deployment/web"])
        .await?;
    ensure!(undo.contains("rolled back"), "{undo}");
    let status = cluster
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    let d = deployment_of(&cluster, "web").await?;
    ensure!(
        image_of(&d).as_deref() == Some("corten/test:v1"),
        "{:?}",
        image_of(&d)
    );
    let sets = replica_sets_of(&cluster, "web").await?;
    ensure!(
        sets.len() == 2,
        "undo reuses the first ReplicaSet: {sets:?}"
    );
    let reused = sets
        .iter()
        .find(|rs| rs.metadata.name.as_deref() == Some(first.as_str()))
        .context("the first ReplicaSet")?;
    let annotations = reused.metadata.annotations.clone().unwrap_or_default();
    ensure!(
        annotations
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str)
            == Some("3")
            && annotations
                .get("deployment.kubernetes.io/revision-history")
                .map(String::as_str)
                == Some("1"),
        "{annotations:?}"
    );
    ensure!(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str)
            == Some("3"),
        "the Deployment shows its revision: {:?}",
        d.metadata.annotations
    );
    let history = cluster
        .kubectl(&["rollout", "history", "deployment/web"])
        .await?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        revisions.contains(&"2") && revisions.contains(&"3") && !revisions.contains(&"1"),
        "{history}"
    );

    // Pause: a template change waits; resume rolls it out, with its change-cause.
    cluster
        .kubectl(&["rollout", "pause", "deployment/web"])
        .await?;
    eventually(WAIT, "the paused condition", || async {
        Ok(
            (progressing_reason(&deployment_of(&cluster, "web").await?).as_deref()
                == Some("DeploymentPaused"))
            .then_some(()),
        )
    })
    .await?;
    cluster
        .kubectl(&[
            "annotate",
            "deployment/web",
            "kubernetes.io/change-cause=move to v3",
        ])
        .await?;
    cluster
        .kubectl(&["set", "image", "deployment/web", "main=corten/test:v3"])
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        replica_sets_of(&cluster, "web").await?.len() == 2,
        "no rollout while paused"
    );
    let refused = cluster.run(&["rollout", "undo", "deployment/web"]).await?;
    ensure!(
        !refused.status.success(),
        "kubectl refuses to undo a paused Deployment"
    );
    cluster
        .kubectl(&["rollout", "resume", "deployment/web"])
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    let history = cluster
        .kubectl(&["rollout", "history", "deployment/web"])
        .await?;
    ensure!(
        history
            .lines()
            .any(|l| l.starts_with('4') && l.contains("move to v3")),
        "{history}"
    );
    let pods = pods_with(&cluster, "app=web").await?;
    let live_images: BTreeSet<String> = pods
        .iter()
        .filter(|p| live(p))
        .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
        .collect();
    ensure!(
        live_images == BTreeSet::from(["corten/test:v3".to_owned()]),
        "{live_images:?}"
    );

    // Scaling mid-flight is a scaling event, not a rollout.
    cluster
        .kubectl(&["scale", "deployment/web", "--replicas=5"])
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    ensure!(replica_sets_of(&cluster, "web").await?.len() == 3);
    ensure!(
        pods_with(&cluster, "app=web")
            .await?
            .iter()
            .filter(|p| live(p))
            .count()
            == 5
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreate_never_runs_two_templates_at_once() -> Result<()> {
    let cluster = Cluster::start(&[("n1", json!({}))]).await?;
    cluster
        .apply(
            "db",
            &deployment_yaml("db", "corten/test:v1", 2, "    type: Recreate"),
        )
        .await?;
    cluster
        .kubectl(&["rollout", "status", "deployment/db", "--timeout=60s"])
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_rollout(&cluster, "db", stop.clone());
    cluster
        .kubectl(&["set", "image", "deployment/db", "main=corten/test:v2"])
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "deployment/db", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.await?;
    ensure!(seen.samples > 5, "{seen:?}");
    ensure!(
        !seen.both_templates_at_once,
        "old and new pods overlapped: {seen:?}"
    );
    ensure!(seen.max_total_replicas <= 2, "{seen:?}");
    let pods = pods_with(&cluster, "app=db").await?;
    ensure!(pods.len() == 2 && pods.iter().all(|p| image_of_pod(p) == "corten/test:v2"));
    Ok(())
}

fn image_of_pod(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_deployments_cascades_as_asked() -> Result<()> {
    let cluster = Cluster::start(&[("n1", json!({}))]).await?;
    for name in ["kept", "fore", "back"] {
        cluster
            .apply(
                name,
                &deployment_yaml(name, "corten/test:v1", 2, ROLLING_ONE_BY_ONE),
            )
            .await?;
    }
    for name in ["kept", "fore", "back"] {
        cluster
            .kubectl(&[
                "rollout",
                "status",
                &format!("deployment/{name}"),
                "--timeout=60s",
            ])
            .await?;
    }
    let deployments: Api<Deployment> = cluster.api();
    let sets: Api<ReplicaSet> = cluster.api();

    // Orphan: the ReplicaSet and its pods stay, without a reference to the Deployment.
    let kept_set = replica_sets_of(&cluster, "kept").await?;
    ensure!(kept_set.len() == 1);
    let kept_name = kept_set[0].metadata.name.clone().unwrap_or_default();
    cluster
        .kubectl(&["delete", "deployment", "kept", "--cascade=orphan"])
        .await?;
    eventually(WAIT, "the orphaned ReplicaSet", || async {
        let rs = sets.get(&kept_name).await?;
        Ok(rs
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())
            .then_some(()))
    })
    .await?;
    ensure!(deployments.get_opt("kept").await?.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept_pods = pods_with(&cluster, "app=kept").await?;
    ensure!(
        kept_pods.len() == 2 && kept_pods.iter().all(live),
        "orphaned pods keep running: {kept_pods:?}"
    );

    // Foreground: the Deployment waits, marked, until its ReplicaSet and pods are gone.
    cluster.holds.deletions.store(true, Ordering::SeqCst);
    cluster
        .kubectl(&[
            "delete",
            "deployment",
            "fore",
            "--cascade=foreground",
            "--wait=false",
        ])
        .await?;
    eventually(WAIT, "pods of fore terminating", || async {
        let pods = pods_with(&cluster, "app=fore").await?;
        Ok(
            (pods.len() == 2 && pods.iter().all(|p| p.metadata.deletion_timestamp.is_some()))
                .then_some(()),
        )
    })
    .await?;
    let fore = deployments.get("fore").await?;
    ensure!(
        fore.metadata.deletion_timestamp.is_some()
            && fore
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == "foregroundDeletion"),
        "the Deployment waits for its dependents: {:?}",
        fore.metadata
    );
    ensure!(
        !replica_sets_of(&cluster, "fore").await?.is_empty(),
        "its ReplicaSet waits for its pods"
    );
    cluster.holds.deletions.store(false, Ordering::SeqCst);
    eventually(WAIT, "fore to be gone", || async {
        let gone = deployments.get_opt("fore").await?.is_none()
            && replica_sets_of(&cluster, "fore").await?.is_empty()
            && pods_with(&cluster, "app=fore").await?.is_empty();
        Ok(gone.then_some(()))
    })
    .await?;

    // Background: the Deployment goes at once, its dependents after.
    cluster
        .kubectl(&["delete", "deployment", "back", "--cascade=background"])
        .await?;
    ensure!(deployments.get_opt("back").await?.is_none());
    eventually(WAIT, "back's dependents to be gone", || async {
        let gone = replica_sets_of(&cluster, "back").await?.is_empty()
            && sets
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .all(|rs| {
                    !rs.metadata
                        .name
                        .as_deref()
                        .unwrap_or_default()
                        .starts_with("back-")
                })
            && pods_with(&cluster, "app=back").await?.is_empty();
        Ok(gone.then_some(()))
    })
    .await?;
    // The orphans are still there.
    ensure!(sets.get_opt(&kept_name).await?.is_some());
    ensure!(pods_with(&cluster, "app=kept").await?.len() == 2);
    Ok(())
}

fn daemonset_yaml(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector:\n    matchLabels:\n      app: agent\n  template:\n    metadata:\n      labels:\n        app: agent\n    spec:\n      nodeSelector:\n        role: edge\n      containers:\n      - name: main\n        image: {image}\n"
    )
}

/// The nodes the DaemonSet's live pods are bound to.
async fn agent_nodes(cluster: &Cluster) -> Result<BTreeSet<String>> {
    Ok(pods_with(cluster, "app=agent")
        .await?
        .iter()
        .filter(|p| live(p))
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect())
}

fn set_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonsets_follow_node_labels_and_roll_out() -> Result<()> {
    let cluster = Cluster::start(&[
        ("n1", json!({"role": "edge"})),
        ("n2", json!({"role": "edge"})),
        ("n3", json!({})),
    ])
    .await?;
    cluster
        .apply("agent", &daemonset_yaml("corten/test:v1"))
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    ensure!(agent_nodes(&cluster).await? == set_of(&["n1", "n2"]));
    let pods = pods_with(&cluster, "app=agent").await?;
    for pod in &pods {
        let affinity = serde_json::to_value(pod.spec.as_ref().and_then(|s| s.affinity.clone()))?;
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        ensure!(
            affinity.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0")
                == Some(&json!({"key": "metadata.name", "operator": "In", "values": [node]})),
            "pinned by affinity, bound by the scheduler: {affinity}"
        );
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        ensure!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")),
            "{tolerations:?}"
        );
    }
    let ds: Api<DaemonSet> = cluster.api();
    let status = ds.get("agent").await?.status.unwrap_or_default();
    ensure!(
        status.desired_number_scheduled == 2
            && status.current_number_scheduled == 2
            && status.number_ready == 2
            && status.number_misscheduled == 0,
        "{status:?}"
    );

    // A node gains the label: it gets a pod; another loses it: its pod goes.
    cluster
        .kubectl(&["label", "node", "n3", "role=edge"])
        .await?;
    eventually(WAIT, "a pod on n3", || async {
        Ok((agent_nodes(&cluster).await? == set_of(&["n1", "n2", "n3"])).then_some(()))
    })
    .await?;
    cluster.kubectl(&["label", "node", "n1", "role-"]).await?;
    eventually(WAIT, "the pod on n1 to go", || async {
        let all_gone = pods_with(&cluster, "app=agent")
            .await?
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some("n1"));
        Ok((all_gone && agent_nodes(&cluster).await? == set_of(&["n2", "n3"])).then_some(()))
    })
    .await?;

    // A template change rolls node by node, recorded as ControllerRevisions.
    cluster
        .kubectl(&["set", "image", "daemonset/agent", "main=corten/test:v2"])
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    let pods = pods_with(&cluster, "app=agent").await?;
    ensure!(
        pods.iter().filter(|p| live(p)).count() == 2
            && pods
                .iter()
                .filter(|p| live(p))
                .all(|p| image_of_pod(p) == "corten/test:v2"),
        "{pods:?}"
    );
    let revisions: Api<ControllerRevision> = cluster.api();
    let revisions = revisions.list(&ListParams::default()).await?.items;
    let numbers: BTreeSet<i64> = revisions
        .iter()
        .filter(|r| {
            r.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("agent-"))
        })
        .map(|r| r.revision)
        .collect();
    ensure!(numbers == BTreeSet::from([1, 2]), "{numbers:?}");
    let hash_of_v2 = pods[0]
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .cloned();
    ensure!(
        revisions.iter().any(|r| r.metadata.name
            == hash_of_v2.as_ref().map(|h| format!("agent-{h}"))
            && r.revision == 2),
        "pods name their revision"
    );
    let history = cluster
        .kubectl(&["rollout", "history", "daemonset/agent"])
        .await?;
    ensure!(history.contains('1') && history.contains('2'), "{history}");
    let undo = cluster
        .kubectl(&["rollout", "undo", "daemonset/agent"])
        .await?;
    ensure!(undo.contains("rolled back"), "{undo}");
    let status = cluster
        .kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    eventually(WAIT, "v1 pods again", || async {
        let pods = pods_with(&cluster, "app=agent").await?;
        let live: Vec<&Pod> = pods.iter().filter(|p| live(p)).collect();
        Ok(
            (live.len() == 2 && live.iter().all(|p| image_of_pod(p) == "corten/test:v1"))
                .then_some(()),
        )
    })
    .await?;
    Ok(())
}

fn statefulset_yaml(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  serviceName: web\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: main\n        image: {image}\n        volumeMounts:\n        - name: data\n          mountPath: /data\n  volumeClaimTemplates:\n  - metadata:\n      name: data\n    spec:\n      accessModes: [ReadWriteOnce]\n      resources:\n        requests:\n          storage: 1Gi\n"
    )
}

/// What [`watch_order`] checks.
#[derive(Clone, Copy)]
enum Order {
    /// Each pod appears only once its predecessor is Ready.
    Creation,
    /// No pod is deleted while a higher ordinal is still there, not being deleted.
    ScaleDown,
}

/// Watches the order of a StatefulSet's pods until `stop` (bounded to two minutes); returns
/// the violations seen.
fn watch_order(
    cluster: &Cluster,
    order: Order,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let pods: Api<Pod> = cluster.api();
    tokio::spawn(async move {
        let mut violations = Vec::new();
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            if let Ok(list) = pods.list(&ListParams::default().labels("app=web")).await {
                let by_ordinal: BTreeMap<i32, &Pod> = list
                    .items
                    .iter()
                    .filter_map(|p| {
                        let ordinal = p
                            .metadata
                            .name
                            .as_deref()?
                            .strip_prefix("web-")?
                            .parse()
                            .ok()?;
                        Some((ordinal, p))
                    })
                    .collect();
                for (ordinal, pod) in &by_ordinal {
                    match order {
                        Order::Creation => {
                            if *ordinal > 0 && seen.insert(*ordinal) {
                                let ready_before =
                                    by_ordinal.get(&(ordinal - 1)).is_some_and(|p| is_ready(p));
                                if !ready_before {
                                    violations.push(format!(
                                        "web-{ordinal} appeared before web-{} was Ready",
                                        ordinal - 1
                                    ));
                                }
                            }
                        }
                        Order::ScaleDown => {
                            let higher_alive = by_ordinal
                                .range(ordinal + 1..)
                                .any(|(_, p)| p.metadata.deletion_timestamp.is_none());
                            if pod.metadata.deletion_timestamp.is_some() && higher_alive {
                                violations.push(format!(
                                    "web-{ordinal} was deleted before a higher ordinal"
                                ));
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        violations
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulsets_create_in_order_with_claims_and_update_in_reverse() -> Result<()> {
    let cluster = Cluster::start(&[("n1", json!({}))]).await?;
    let pods: Api<Pod> = cluster.api();
    cluster.holds.readiness.store(true, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_order(&cluster, Order::Creation, stop.clone());
    cluster
        .apply("web", &statefulset_yaml("corten/test:v1"))
        .await?;
    eventually(WAIT, "web-0 running", || async {
        let pod = pods.get_opt("web-0").await?;
        Ok(pod
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(
        pods.get_opt("web-1").await?.is_none(),
        "web-1 waits for web-0 to be Ready"
    );
    let claims: Api<PersistentVolumeClaim> = cluster.api();
    ensure!(
        claims.get_opt("data-web-0").await?.is_some(),
        "the claim comes before the pod"
    );
    cluster.holds.readiness.store(false, Ordering::SeqCst);
    let status = cluster
        .kubectl(&["rollout", "status", "statefulset/web", "--timeout=60s"])
        .await?;
    ensure!(
        status.contains("roll out complete") || status.contains("rolling update complete"),
        "{status}"
    );
    stop.store(true, Ordering::SeqCst);
    let violations = watcher.await?;
    ensure!(violations.is_empty(), "{violations:?}");
    for ordinal in 0..3 {
        let pod = pods.get(&format!("web-{ordinal}")).await?;
        let labels = labels_of(&pod);
        ensure!(
            labels.get("statefulset.kubernetes.io/pod-name") == Some(&format!("web-{ordinal}"))
                && labels.get("apps.kubernetes.io/pod-index") == Some(&ordinal.to_string())
                && labels
                    .get("controller-revision-hash")
                    .is_some_and(|h| h.starts_with("web-")),
            "{labels:?}"
        );
        let spec = pod.spec.clone().unwrap_or_default();
        ensure!(
            spec.hostname.as_deref() == Some(format!("web-{ordinal}").as_str())
                && spec.subdomain.as_deref() == Some("web")
        );
        let claim = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "data")
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone());
        ensure!(claim == Some(format!("data-web-{ordinal}")), "{claim:?}");
        let pvc = claims.get(&format!("data-web-{ordinal}")).await?;
        ensure!(labels_of_claim(&pvc).get("app").map(String::as_str) == Some("web"));
    }
    let sts: Api<StatefulSet> = cluster.api();
    let s = sts.get("web").await?.status.unwrap_or_default();
    ensure!(
        s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.current_replicas == Some(3)
            && s.updated_replicas == Some(3)
            && s.current_revision == s.update_revision,
        "{s:?}"
    );

    // An update replaces pods from the highest ordinal down, one at a time.
    let before = s.update_revision.clone();
    cluster
        .kubectl(&["set", "image", "statefulset/web", "main=corten/test:v2"])
        .await?;
    let status = cluster
        .kubectl(&["rollout", "status", "statefulset/web", "--timeout=90s"])
        .await?;
    // The defaulted partition (0) makes kubectl speak of a partitioned roll out.
    ensure!(
        status.contains("partitioned roll out complete: 3 new pods"),
        "{status}"
    );
    let s = sts.get("web").await?.status.unwrap_or_default();
    ensure!(
        s.update_revision != before && s.current_revision == s.update_revision,
        "{s:?}"
    );
    for ordinal in 0..3 {
        ensure!(image_of_pod(&pods.get(&format!("web-{ordinal}")).await?) == "corten/test:v2");
    }
    let revisions: Api<ControllerRevision> = cluster.api();
    let numbers: BTreeSet<i64> = revisions
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|r| {
            r.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("web-"))
        })
        .map(|r| r.revision)
        .collect();
    ensure!(numbers == BTreeSet::from([1, 2]), "{numbers:?}");

    // Scale down: from the highest ordinal, each waiting for the one above to be gone.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_order(&cluster, Order::ScaleDown, stop.clone());
    cluster
        .kubectl(&["scale", "statefulset/web", "--replicas=1"])
        .await?;
    eventually(WAIT, "one pod left", || async {
        let left: Vec<String> = pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        Ok((left == ["web-0"]).then_some(()))
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    let violations = watcher.await?;
    ensure!(violations.is_empty(), "{violations:?}");
    // Claims are retained.
    for ordinal in 0..3 {
        ensure!(claims
            .get_opt(&format!("data-web-{ordinal}"))
            .await?
            .is_some());
    }
    Ok(())
}

fn labels_of_claim(pvc: &PersistentVolumeClaim) -> BTreeMap<String, String> {
    pvc.metadata.labels.clone().unwrap_or_default()
}

fn job_yaml(name: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{extra}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {image}\n"
    )
}

fn condition_of(job: &Job, kind: &str) -> Option<k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_complete_within_parallelism_and_stop_at_the_backoff_limit() -> Result<()> {
    let cluster = Cluster::start(&[("n1", json!({}))]).await?;
    let jobs: Api<Job> = cluster.api();
    let pods: Api<Pod> = cluster.api();
    // At most two at a time, five in all.
    let max_active = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pods, max_active, stop) = (pods.clone(), max_active.clone(), stop.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(list) = pods
                    .list(&ListParams::default().labels("job-name=work"))
                    .await
                {
                    let active = list.items.iter().filter(|p| live(p)).count();
                    let mut max = max_active.lock().unwrap_or_else(|e| e.into_inner());
                    *max = (*max).max(active);
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    cluster
        .apply(
            "work",
            &job_yaml(
                "work",
                "corten/test:succeed",
                "  completions: 5\n  parallelism: 2\n",
            ),
        )
        .await?;
    cluster
        .apply(
            "flaky",
            &job_yaml("flaky", "corten/test:fail", "  backoffLimit: 1\n"),
        )
        .await?;
    cluster
        .apply(
            "indexed",
            &job_yaml(
                "indexed",
                "corten/test:succeed",
                "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
            ),
        )
        .await?;
    cluster
        .apply(
            "slow",
            &job_yaml("slow", "corten/test:v1", "  activeDeadlineSeconds: 2\n"),
        )
        .await?;
    cluster
        .apply(
            "ephemeral",
            &job_yaml(
                "ephemeral",
                "corten/test:succeed",
                "  ttlSecondsAfterFinished: 0\n",
            ),
        )
        .await?;
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=complete",
            "job/work",
            "--timeout=90s",
        ])
        .await?;
    stop.store(true, Ordering::SeqCst);
    watcher.await?;
    let most = *max_active.lock().unwrap_or_else(|e| e.into_inner());
    ensure!(most == 2, "parallelism 2: at most {most} ran at once");
    let work = jobs.get("work").await?;
    let s = work.status.clone().unwrap_or_default();
    ensure!(
        s.succeeded == Some(5)
            && s.active == Some(0)
            && s.failed.unwrap_or(0) == 0
            && s.start_time.is_some()
            && s.completion_time.is_some(),
        "{s:?}"
    );
    ensure!(condition_of(&work, "SuccessCriteriaMet").is_some(), "{s:?}");
    ensure!(
        condition_of(&work, "Complete")
            .and_then(|c| c.reason)
            .as_deref()
            == Some("CompletionsReached"),
        "{s:?}"
    );
    let uncounted = s.uncounted_terminated_pods.clone().unwrap_or_default();
    ensure!(
        uncounted.succeeded.unwrap_or_default().is_empty()
            && uncounted.failed.unwrap_or_default().is_empty()
    );
    let selector = work
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    ensure!(
        selector
            .match_labels
            .as_ref()
            .and_then(|m| m.get("batch.kubernetes.io/controller-uid"))
            == work.metadata.uid.as_ref(),
        "the API server generated the selector: {selector:?}"
    );
    eventually(
        WAIT,
        "work's pods to lose the tracking finalizer",
        || async {
            let list = pods
                .list(&ListParams::default().labels("job-name=work"))
                .await?;
            let done = list.items.len() == 5
                && list.items.iter().all(|p| {
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                        && p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty())
                });
            Ok(done.then_some(()))
        },
    )
    .await?;
    let any = pods
        .list(&ListParams::default().labels("job-name=work"))
        .await?
        .items;
    let labels = labels_of(&any[0]);
    for key in [
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/controller-uid",
        "job-name",
        "controller-uid",
    ] {
        ensure!(labels.contains_key(key), "{key} missing: {labels:?}");
    }

    // backoffLimit 1: the second failure fails the Job (after a 10 s pod backoff).
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=failed",
            "job/flaky",
            "--timeout=90s",
        ])
        .await?;
    let flaky = jobs.get("flaky").await?;
    let s = flaky.status.clone().unwrap_or_default();
    ensure!(
        s.failed == Some(2) && s.active == Some(0) && s.succeeded.unwrap_or(0) == 0,
        "{s:?}"
    );
    ensure!(
        condition_of(&flaky, "FailureTarget")
            .and_then(|c| c.reason)
            .as_deref()
            == Some("BackoffLimitExceeded")
            && condition_of(&flaky, "Failed")
                .and_then(|c| c.reason)
                .as_deref()
                == Some("BackoffLimitExceeded"),
        "{s:?}"
    );
    ensure!(
        pods.list(&ListParams::default().labels("job-name=flaky"))
            .await?
            .items
            .len()
            == 2
    );

    // Indexed: one success per index, each pod told its index.
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=complete",
            "job/indexed",
            "--timeout=90s",
        ])
        .await?;
    let indexed = jobs.get("indexed").await?;
    let s = indexed.status.clone().unwrap_or_default();
    ensure!(
        s.completed_indexes.as_deref() == Some("0-2") && s.succeeded == Some(3),
        "{s:?}"
    );
    let list = pods
        .list(&ListParams::default().labels("job-name=indexed"))
        .await?
        .items;
    let indexes: BTreeSet<String> = list
        .iter()
        .filter_map(|p| {
            p.metadata
                .annotations
                .as_ref()?
                .get("batch.kubernetes.io/job-completion-index")
                .cloned()
        })
        .collect();
    ensure!(indexes == set_of(&["0", "1", "2"]), "{indexes:?}");
    let env = list[0]
        .spec
        .as_ref()
        .map(|s| s.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    ensure!(
        env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"),
        "{env:?}"
    );

    // activeDeadlineSeconds: the running pod is stopped and the Job fails.
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=failed",
            "job/slow",
            "--timeout=60s",
        ])
        .await?;
    let slow = jobs.get("slow").await?;
    ensure!(
        condition_of(&slow, "Failed")
            .and_then(|c| c.reason)
            .as_deref()
            == Some("DeadlineExceeded"),
        "{:?}",
        slow.status
    );
    let s = slow.status.clone().unwrap_or_default();
    ensure!(
        s.active == Some(0) && s.failed == Some(1) && s.terminating == Some(0),
        "{s:?}"
    );
    eventually(WAIT, "slow's pod to be gone", || async {
        let left = pods
            .list(&ListParams::default().labels("job-name=slow"))
            .await?
            .items;
        Ok(left
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some() || !live(p))
            .then_some(()))
    })
    .await?;

    // ttlSecondsAfterFinished: 0 — the finished Job and its pods are deleted.
    eventually(
        WAIT,
        "ephemeral to be deleted after it finished",
        || async {
            let gone = jobs.get_opt("ephemeral").await?.is_none()
                && pods
                    .list(&ListParams::default().labels("job-name=ephemeral"))
                    .await?
                    .items
                    .is_empty();
            Ok(gone.then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cronjob_fires_every_minute() -> Result<()> {
    let cluster = Cluster::start(&[("n1", json!({}))]).await?;
    cluster
        .apply(
            "tick",
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: tick\nspec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    metadata:\n      labels:\n        from: tick\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: main\n            image: corten/test:succeed\n",
        )
        .await?;
    let jobs: Api<Job> = cluster.api();
    let job = eventually(
        Duration::from_secs(75),
        "the first scheduled Job",
        || async {
            Ok(jobs
                .list(&ListParams::default().labels("from=tick"))
                .await?
                .items
                .into_iter()
                .next())
        },
    )
    .await?;
    let name = job.metadata.name.clone().unwrap_or_default();
    let scheduled = job
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("batch.kubernetes.io/cronjob-scheduled-timestamp"))
        .cloned()
        .context("the scheduled-timestamp annotation")?;
    let at: k8s_openapi::jiff::Timestamp = scheduled.parse()?;
    ensure!(
        at.as_second() % 60 == 0,
        "scheduled on a minute: {scheduled}"
    );
    ensure!(
        name == format!("tick-{}", at.as_second() / 60),
        "{name} for {scheduled}"
    );
    ensure!(
        job.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "CronJob" && o.name == "tick"),
        "owned by the CronJob"
    );
    // The controller creates the Job first and records it in the CronJob's status after.
    let cronjobs: Api<CronJob> = cluster.api();
    eventually(WAIT, "the CronJob's status to name the Job", || async {
        let s = cronjobs.get("tick").await?.status.unwrap_or_default();
        let recorded = s.last_schedule_time.as_ref().map(|t| t.0.as_second())
            == Some(at.as_second())
            || s.active
                .iter()
                .flatten()
                .any(|r| r.name.as_deref() == Some(name.as_str()));
        Ok(recorded.then_some(()))
    })
    .await?;
    eventually(
        WAIT,
        "the Job to succeed and leave the active list",
        || async {
            let s = cronjobs.get("tick").await?.status.unwrap_or_default();
            let done = s
                .active
                .as_ref()
                .is_none_or(|a| a.iter().all(|r| r.name.as_deref() != Some(name.as_str())))
                && s.last_successful_time.is_some()
                && s.last_schedule_time.is_some();
            Ok(done.then_some(()))
        },
    )
    .await?;
    let listed = cluster
        .kubectl(&["get", "jobs", "-l", "from=tick", "-o", "name"])
        .await?;
    ensure!(listed.contains(&format!("job.batch/{name}")), "{listed}");
    Ok(())
}
