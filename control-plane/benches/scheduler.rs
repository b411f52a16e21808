//! `cargo xtask bench scheduler`: kube-scheduler's `scheduler_perf` workloads against a real
//! `corten-server` (the release binary xtask builds and passes as `CORTEN_BENCH_SERVER`), whose
//! in-process scheduler binds the pods through the API. For each scenario a fresh server (own
//! data directory, embedded store, loopback, free port) gets 5000 Ready nodes, the scenario's
//! unmeasured "init" pods, then its measured pods, created 100 at a time while a pod watch
//! records when each gets `spec.nodeName`.
//!
//! Reports per scenario the scheduling throughput as scheduler_perf defines it (bound pods
//! sampled every second; the first sample after the first binding is the baseline, empty
//! intervals stretch into the next non-empty one, the partial interval at the end is dropped;
//! the figure is the average of the per-second rates), the pod creation rate (to show whether
//! creation limited it), p50/p99 from a pod's creation response to its binding, the server's
//! CPU (by thread name) and memory (VmRSS, VmHWM). Writes `target/bench/scheduler.json`
//! (`CORTEN_BENCH_OUT` moves it) and prints a summary. `CORTEN_BENCH_SCENARIOS=A,B` runs only
//! those scenarios; `CORTEN_BENCH_PERF=1` records the server with `perf` while the measured
//! pods are scheduled (`scheduler-NAME.perf.data` next to the report).
//!
//! Deviations from upstream, all because this is a whole server, not a scheduler beside a
//! test apiserver: the server's controllers run too, so it is started with a node monitor
//! grace period of an hour (the benchmark's nodes have no kubelet to heartbeat, and would be
//! tainted unreachable after 50 s) and a cluster CIDR with room for a /24 per node.
//!
//! Every phase is bounded in count and time (a scenario gets [`SCENARIO_TIMEOUT`]; one that
//! does not finish is reported as failed with how many pods were bound); each server is this
//! program's child and is killed through its handle. Nothing leaves 127.0.0.1.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, ensure, Context};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{Instant, MissedTickBehavior};

/// Nodes in every scenario (upstream's 5000Nodes workloads).
const NODES: usize = 5_000;
/// Zone label values, as upstream's TopologySpreading labels its nodes.
const ZONES: [&str; 3] = ["moon-1", "moon-2", "moon-3"];
/// Nodes created (and their status written) concurrently.
const NODE_CONCURRENCY: usize = 50;
/// Pod creations in flight at once.
const POD_CONCURRENCY: usize = 100;
/// scheduler_perf's throughput sampling interval.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one scenario may take, from starting its server to its last binding.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the nodes may take to be Ready and untainted once created.
const NODE_SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per write before a transient failure counts.
const ATTEMPTS: u32 = 3;
/// Watches reopened (each ends after its timeout) before a phase gives up.
const MAX_REWATCHES: usize = 20;
/// Longest the whole benchmark may take.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(3 * 600 + 300);

/// corten's own target for SchedulingBasic on this 2-core machine, pods/s.
const TARGET_BASIC_PODS_PER_S: f64 = 2000.0;

/// Which upstream pod template a phase creates.
#[derive(Debug, Clone, Copy)]
enum Template {
    /// `pod-default.yaml`: 100m CPU, 500Mi memory, container port 80.
    Default,
    /// `pod-with-pod-anti-affinity.yaml`: label `color=green`, required anti-affinity on
    /// `kubernetes.io/hostname` against `color=green` in namespaces sched-0 and sched-1.
    AntiAffinity,
    /// `pod-with-topology-spreading.yaml`: label `color=blue`, maxSkew 5 over
    /// `topology.kubernetes.io/zone`, DoNotSchedule, against `color=blue`.
    Spreading,
}

/// One scheduler_perf workload.
#[derive(Debug)]
struct Scenario {
    name: &'static str,
    /// The upstream workload it reproduces.
    upstream: &'static str,
    init_namespace: &'static str,
    init_template: Template,
    init_pods: usize,
    measure_namespace: &'static str,
    measure_template: Template,
    measure_pods: usize,
    /// Upstream's minimum SchedulingThroughput average for the workload, pods/s.
    upstream_threshold: f64,
    /// corten's own target, pods/s.
    target: Option<f64>,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "SchedulingBasic",
        upstream: "misc/performance-config.yaml SchedulingBasic/5000Nodes_10000Pods",
        init_namespace: "namespace-1",
        init_template: Template::Default,
        init_pods: 1_000,
        measure_namespace: "namespace-2",
        measure_template: Template::Default,
        measure_pods: 10_000,
        upstream_threshold: 680.0,
        target: Some(TARGET_BASIC_PODS_PER_S),
    },
    Scenario {
        name: "SchedulingPodAntiAffinity",
        upstream: "affinity/performance-config.yaml SchedulingPodAntiAffinity/5000Nodes_2000Pods",
        init_namespace: "sched-0",
        init_template: Template::AntiAffinity,
        init_pods: 1_000,
        measure_namespace: "sched-1",
        measure_template: Template::AntiAffinity,
        measure_pods: 2_000,
        upstream_threshold: 60.0,
        target: None,
    },
    Scenario {
        name: "TopologySpreading",
        upstream: "topology_spreading/performance-config.yaml TopologySpreading/5000Nodes_5000Pods",
        init_namespace: "namespace-1",
        init_template: Template::Default,
        init_pods: 5_000,
        measure_namespace: "namespace-2",
        measure_template: Template::Spreading,
        measure_pods: 5_000,
        upstream_threshold: 460.0,
        target: None,
    },
];

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(TOTAL_TIMEOUT, run())
            .await
            .context("the scheduler benchmark took longer than its bound")?
    })
}

async fn run() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("CORTEN_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(&manifest).join("target/bench")
        });
    std::fs::create_dir_all(&out_dir)?;
    let binary = std::env::var_os("CORTEN_BENCH_SERVER")
        .map(PathBuf::from)
        .context(
            "CORTEN_BENCH_SERVER is not set: run this through `cargo xtask bench scheduler`",
        )?;
    let only: Option<Vec<String>> = std::env::var("CORTEN_BENCH_SCENARIOS")
        .ok()
        .map(|list| list.split(',').map(|s| s.trim().to_owned()).collect());
    let perf = std::env::var("CORTEN_BENCH_PERF").is_ok_and(|v| v == "1");
    let chosen: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|n| n == s.name)))
        .collect();
    ensure!(
        !chosen.is_empty(),
        "CORTEN_BENCH_SCENARIOS names no known scenario"
    );
    let mut results = Vec::new();
    for scenario in chosen {
        println!("\n== {} ({}) ==", scenario.name, scenario.upstream);
        let result = run_scenario(scenario, &binary, &out_dir, perf).await;
        print_scenario(&result);
        results.push(result);
    }
    report(&out_dir, &results)?;
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.scenario.name)
        .collect();
    if !failed.is_empty() {
        bail!("scenario(s) did not finish: {}", failed.join(", "));
    }
    Ok(())
}

/// What one scenario found.
#[derive(Debug)]
struct ScenarioResult {
    scenario: &'static Scenario,
    node_setup_s: Option<f64>,
    nodes_with_pod_cidr: Option<usize>,
    init: Option<PhaseOutcome>,
    measure: Option<PhaseOutcome>,
    /// (VmRSS, VmHWM) in MB at the end.
    memory_mb: Option<(f64, f64)>,
    error: Option<String>,
}

async fn run_scenario(
    scenario: &'static Scenario,
    binary: &Path,
    out_dir: &Path,
    perf: bool,
) -> ScenarioResult {
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let mut result = ScenarioResult {
        scenario,
        node_setup_s: None,
        nodes_with_pod_cidr: None,
        init: None,
        measure: None,
        memory_mb: None,
        error: None,
    };
    let data = match tempfile::Builder::new()
        .prefix("scheduler-bench-")
        .tempdir_in(out_dir)
    {
        Ok(dir) => dir,
        Err(e) => {
            result.error = Some(format!("creating the data directory: {e}"));
            return result;
        }
    };
    let mut server = match Server::start(binary, data.path()) {
        Ok(server) => server,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    let outcome = scenario_steps(scenario, &mut server, &mut result, deadline, out_dir, perf).await;
    result.memory_mb = server.memory().ok();
    if !server.running() {
        result
            .error
            .get_or_insert_with(|| "the server exited during the scenario".to_owned());
    }
    server.stop();
    if let Err(e) = outcome {
        let log = std::fs::read_to_string(data.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        result.error = Some(format!(
            "{e:#}\nthe server's log ends:\n{}",
            tail.join("\n")
        ));
    }
    result
}

async fn scenario_steps(
    scenario: &'static Scenario,
    server: &mut Server,
    result: &mut ScenarioResult,
    deadline: Instant,
    out_dir: &Path,
    perf: bool,
) -> anyhow::Result<()> {
    let client = server.wait_ready().await?;
    for namespace in [scenario.init_namespace, scenario.measure_namespace] {
        let body =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        write(&client, "creating a namespace", || {
            kube::core::Request::new("/api/v1/namespaces").create(
                &PostParams::default(),
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        })
        .await?;
    }

    println!("creating {NODES} nodes ({NODE_CONCURRENCY} at a time)...");
    let started = Instant::now();
    tokio::time::timeout_at(deadline, create_nodes(&client))
        .await
        .context("the scenario's time ran out creating nodes")??;
    let settle_deadline = deadline.min(Instant::now() + NODE_SETTLE_TIMEOUT);
    result.nodes_with_pod_cidr = Some(wait_nodes_settled(&client, settle_deadline).await?);
    let node_setup = started.elapsed().as_secs_f64();
    result.node_setup_s = Some(node_setup);
    println!("nodes Ready and untainted after {node_setup:.1} s");

    println!(
        "init: {} pods in {} (not measured)...",
        scenario.init_pods, scenario.init_namespace
    );
    let init = run_phase(
        &client,
        scenario.init_namespace,
        scenario.init_template,
        scenario.init_pods,
        deadline,
        None,
    )
    .await;
    let init_error = init.error.clone();
    println!(
        "init: {}/{} bound in {:.1} s",
        init.bound, init.pods, init.seconds
    );
    result.init = Some(init);
    if let Some(error) = init_error {
        bail!("init pods: {error}");
    }

    println!(
        "measure: {} pods in {}...",
        scenario.measure_pods, scenario.measure_namespace
    );
    let profile = perf.then(|| out_dir.join(format!("scheduler-{}.perf.data", scenario.name)));
    let recorder = match &profile {
        Some(path) => Some(Perf::start(server.pid(), path)?),
        None => None,
    };
    let cpu_before = CpuSnapshot::take(server.pid());
    let mut measure = run_phase(
        &client,
        scenario.measure_namespace,
        scenario.measure_template,
        scenario.measure_pods,
        deadline,
        cpu_before.as_ref().ok(),
    )
    .await;
    if let Some(recorder) = recorder {
        recorder.stop();
    }
    if let Some(path) = &profile {
        measure.profile = Some(path.display().to_string());
    }
    let measure_error = measure.error.clone();
    result.measure = Some(measure);
    if let Some(error) = measure_error {
        bail!("measured pods: {error}");
    }
    Ok(())
}

/// Creates the nodes and marks them Ready through the status subresource.
async fn create_nodes(client: &kube::Client) -> anyhow::Result<()> {
    futures::stream::iter(0..NODES)
        .map(|i| create_node(client, i))
        .buffer_unordered(NODE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn create_node(client: &kube::Client, i: usize) -> anyhow::Result<()> {
    let name = format!("scheduler-perf-{i:05}");
    let zone = ZONES[i % ZONES.len()];
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": zone,
            },
        },
        "spec": {},
    });
    write(client, "creating a node", || {
        kube::core::Request::new("/api/v1/nodes").create(
            &PostParams::default(),
            serde_json::to_vec(&node).unwrap_or_default(),
        )
    })
    .await?;
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now()))?;
    let resources = json!({"cpu": "4", "memory": "32Gi", "pods": "110"});
    let status = json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "scheduler benchmark node",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "phase": "Running",
        },
    });
    write(client, "writing a node's status", || {
        kube::core::Request::new("/api/v1/nodes").patch_subresource(
            "status",
            &name,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
    })
    .await
}

#[derive(Debug, Deserialize)]
struct NodeList {
    items: Vec<NodeLite>,
}

#[derive(Debug, Deserialize)]
struct NodeLite {
    #[serde(default)]
    spec: NodeSpecLite,
    #[serde(default)]
    status: NodeStatusLite,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeSpecLite {
    #[serde(default)]
    taints: Vec<TaintLite>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TaintLite {
    effect: String,
}

#[derive(Debug, Default, Deserialize)]
struct NodeStatusLite {
    #[serde(default)]
    conditions: Vec<ConditionLite>,
}

#[derive(Debug, Deserialize)]
struct ConditionLite {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

/// Waits until every node is Ready without NoSchedule/NoExecute taints (the node lifecycle
/// controller taints a node until its Ready condition arrives), then gives the node IPAM
/// controller a bounded moment to finish; how many nodes have a pod CIDR.
async fn wait_nodes_settled(client: &kube::Client, deadline: Instant) -> anyhow::Result<usize> {
    loop {
        let list: NodeList = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.request(kube::core::Request::new("/api/v1/nodes").list(&ListParams::default())?),
        )
        .await
        .context("listing nodes took too long")??;
        let usable = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    && !n
                        .spec
                        .taints
                        .iter()
                        .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            })
            .count();
        let with_cidr = list
            .items
            .iter()
            .filter(|n| n.spec.pod_cidr.is_some())
            .count();
        if usable == NODES && with_cidr == NODES {
            return Ok(with_cidr);
        }
        if Instant::now() > deadline {
            if usable == NODES {
                println!("note: only {with_cidr}/{NODES} nodes got a pod CIDR; going on");
                return Ok(with_cidr);
            }
            bail!(
                "nodes did not settle: {} exist, {usable} Ready and untainted, {with_cidr} with a pod CIDR",
                list.items.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What one phase (creating pods and following them until bound) found.
#[derive(Debug, Default)]
struct PhaseOutcome {
    pods: usize,
    created: usize,
    bound: usize,
    /// Why the phase did not finish.
    error: Option<String>,
    /// scheduler_perf's per-second throughput samples, sorted.
    samples: Vec<f64>,
    /// Creation response to binding seen on the watch, ms, sorted.
    create_to_bind_ms: Vec<f64>,
    /// Pods created per second, first request to last response.
    creates_per_s: f64,
    /// From the first creation request to the last binding (or the end), s.
    seconds: f64,
    /// CPU seconds of the server during the phase, in total and by thread name.
    server_cpu_s: Option<f64>,
    server_cpu_by_thread_s: BTreeMap<String, f64>,
    /// CPU seconds of this benchmark process during the phase.
    client_cpu_s: Option<f64>,
    profile: Option<String>,
    /// Pods created and bound in each whole second since the phase started.
    created_per_second: Vec<usize>,
    bound_per_second: Vec<usize>,
}

impl PhaseOutcome {
    fn average(&self) -> Option<f64> {
        (!self.samples.is_empty())
            .then(|| self.samples.iter().sum::<f64>() / self.samples.len() as f64)
    }

    /// scheduler_perf's percentile of the sorted samples.
    fn sample_percentile(&self, p: usize) -> Option<f64> {
        let n = self.samples.len();
        if n == 0 {
            return None;
        }
        let rank = (n * p).div_ceil(100).max(1);
        self.samples.get(rank - 1).copied()
    }

    /// Bound pods over the whole phase, per second.
    fn overall_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bound as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Bindings seen so far in one namespace.
#[derive(Debug)]
struct Progress {
    bound_at: Mutex<Vec<Option<Instant>>>,
    bound: AtomicUsize,
    total: usize,
    /// Set when the phase ends without every pod bound, so the sampler stops.
    abandoned: AtomicBool,
}

impl Progress {
    fn record(&self, index: usize, at: Instant) {
        let mut bound_at = self.bound_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = bound_at.get_mut(index) {
            if slot.is_none() {
                *slot = Some(at);
                self.bound.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn bound(&self) -> usize {
        self.bound.load(Ordering::SeqCst)
    }
}

/// Creates `count` pods of `template` in `namespace`, [`POD_CONCURRENCY`] at a time, and
/// follows a watch until every one is bound or `deadline` passes.
async fn run_phase(
    client: &kube::Client,
    namespace: &str,
    template: Template,
    count: usize,
    deadline: Instant,
    cpu_before: Option<&CpuSnapshot>,
) -> PhaseOutcome {
    let mut outcome = PhaseOutcome {
        pods: count,
        ..PhaseOutcome::default()
    };
    let progress = Arc::new(Progress {
        bound_at: Mutex::new(vec![None; count]),
        bound: AtomicUsize::new(0),
        total: count,
        abandoned: AtomicBool::new(false),
    });
    let client_cpu_before = own_cpu_seconds();
    let start = Instant::now();
    let follower = match open_follower(client, namespace, progress.clone(), deadline).await {
        Ok(task) => task,
        Err(e) => {
            outcome.error = Some(format!("{e:#}"));
            return outcome;
        }
    };
    let sampler = tokio::spawn(sample_throughput(progress.clone(), deadline));

    let created_at: Vec<Option<Instant>> = vec![None; count];
    let created_at = Mutex::new(created_at);
    let creations = futures::stream::iter(0..count)
        .map(|i| {
            let created_at = &created_at;
            async move {
                let body = pod_body(template, namespace, i);
                let path = format!("/api/v1/namespaces/{namespace}/pods");
                write(client, "creating a pod", || {
                    kube::core::Request::new(path.as_str()).create(
                        &PostParams::default(),
                        serde_json::to_vec(&body).unwrap_or_default(),
                    )
                })
                .await?;
                let now = Instant::now();
                if let Some(slot) = created_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(i)
                {
                    *slot = Some(now);
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(POD_CONCURRENCY)
        .try_collect::<Vec<()>>();
    let creation = tokio::time::timeout_at(deadline, creations).await;
    let created_at = created_at.into_inner().unwrap_or_else(|e| e.into_inner());
    outcome.created = created_at.iter().flatten().count();
    let last_created = created_at.iter().flatten().max().copied();
    if let Some(last) = last_created {
        outcome.creates_per_s = outcome.created as f64 / (last - start).as_secs_f64().max(1e-9);
    }
    match creation {
        Err(_) => outcome.error = Some("the scenario's time ran out creating pods".to_owned()),
        Ok(Err(e)) => outcome.error = Some(format!("{e:#}")),
        Ok(Ok(_)) => {}
    }

    if outcome.error.is_none() {
        // Every pod exists; wait for the last binding.
        loop {
            if progress.bound() >= count || follower.is_finished() {
                break;
            }
            if Instant::now() > deadline {
                outcome.error = Some(format!(
                    "timed out after {:?}: {} of {count} pods bound",
                    SCENARIO_TIMEOUT,
                    progress.bound()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let end = Instant::now();
    follower.abort();
    if let Ok(Err(e)) = follower.await {
        if progress.bound() < count && outcome.error.is_none() {
            outcome.error = Some(format!("the pod watch failed: {e:#}"));
        }
    }
    // The sampler ends at its next tick: all pods are bound, or the phase was abandoned.
    if outcome.error.is_some() {
        progress.abandoned.store(true, Ordering::SeqCst);
    }
    outcome.samples = sampler.await.unwrap_or_default();
    outcome.samples.sort_by(f64::total_cmp);

    outcome.bound = progress.bound();
    let bound_at = progress.bound_at.lock().unwrap_or_else(|e| e.into_inner());
    let last_bound = bound_at.iter().flatten().max().copied();
    outcome.seconds = (last_bound
        .filter(|_| outcome.error.is_none())
        .unwrap_or(end)
        - start)
        .as_secs_f64();
    let mut latencies: Vec<f64> = created_at
        .iter()
        .zip(bound_at.iter())
        .filter_map(|(created, bound)| Some((created.as_ref()?, bound.as_ref()?)))
        .map(|(created, bound)| signed_ms(*bound, *created))
        .collect();
    latencies.sort_by(f64::total_cmp);
    outcome.create_to_bind_ms = latencies;
    outcome.created_per_second = per_second(&created_at, start);
    outcome.bound_per_second = per_second(&bound_at, start);
    if let (Some(before), Ok(after)) = (client_cpu_before.ok(), own_cpu_seconds()) {
        outcome.client_cpu_s = Some(after - before);
    }
    if let Some(before) = cpu_before {
        if let Ok(after) = CpuSnapshot::take(before.pid) {
            outcome.server_cpu_s = Some(after.total - before.total);
            outcome.server_cpu_by_thread_s = after.by_thread_since(before);
        }
    }
    outcome
}

/// How many of `times` fall in each whole second after `start`.
fn per_second(times: &[Option<Instant>], start: Instant) -> Vec<usize> {
    let mut counts: Vec<usize> = Vec::new();
    for time in times.iter().flatten() {
        let second = time.saturating_duration_since(start).as_secs() as usize;
        if counts.len() <= second {
            counts.resize(second + 1, 0);
        }
        counts[second] += 1;
    }
    counts
}

/// `later - earlier` in milliseconds, negative when the binding beat the creation response.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1e3
    } else {
        -((earlier - later).as_secs_f64() * 1e3)
    }
}

#[derive(Debug, Deserialize)]
struct ListHead {
    metadata: ListMetaLite,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMetaLite {
    resource_version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WatchLine {
    #[serde(rename = "type")]
    type_: String,
    object: PodLite,
}

#[derive(Debug, Deserialize)]
struct PodLite {
    #[serde(default)]
    metadata: PodMetaLite,
    spec: Option<PodSpecLite>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodMetaLite {
    name: Option<String>,
    resource_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecLite {
    node_name: Option<String>,
}

/// Lists the (empty) namespace for a resourceVersion and opens a pod watch from it before
/// any pod is created; the task follows it until every pod is bound.
async fn open_follower(
    client: &kube::Client,
    namespace: &str,
    progress: Arc<Progress>,
    deadline: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let path = format!("/api/v1/namespaces/{namespace}/pods");
    let head: ListHead = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.request(
            kube::core::Request::new(path.as_str()).list(&ListParams::default().limit(1))?,
        ),
    )
    .await
    .context("listing pods took too long")??;
    let version = head
        .metadata
        .resource_version
        .context("the pod list has no resourceVersion")?;
    let first = open_watch(client, &path, &version).await?;
    let client = client.clone();
    Ok(tokio::spawn(async move {
        follow(client, path, version, first, progress, deadline).await
    }))
}

type WatchBody = std::pin::Pin<Box<dyn futures::AsyncBufRead + Send>>;

async fn open_watch(client: &kube::Client, path: &str, version: &str) -> anyhow::Result<WatchBody> {
    let request =
        kube::core::Request::new(path).watch(&WatchParams::default().timeout(290), version)?;
    let body = tokio::time::timeout(REQUEST_TIMEOUT, client.request_stream(request))
        .await
        .context("opening the pod watch took too long")??;
    Ok(Box::pin(body))
}

async fn follow(
    client: kube::Client,
    path: String,
    mut version: String,
    first: WatchBody,
    progress: Arc<Progress>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut body = Some(first);
    for _ in 0..MAX_REWATCHES {
        let stream = match body.take() {
            Some(stream) => stream,
            None => open_watch(&client, &path, &version).await?,
        };
        let mut lines = stream.lines();
        loop {
            let line = match tokio::time::timeout_at(deadline, lines.next()).await {
                Err(_) => bail!("the scenario's time ran out"),
                Ok(None) => break,
                Ok(Some(line)) => line?,
            };
            let now = Instant::now();
            if line.is_empty() {
                continue;
            }
            let event: WatchLine = match serde_json::from_str(&line) {
                Ok(event) => event,
                Err(e) => bail!("an unreadable watch event ({e}): {}", truncate(&line)),
            };
            if event.type_ == "ERROR" {
                bail!("the pod watch failed: {}", truncate(&line));
            }
            if let Some(v) = event.object.metadata.resource_version {
                version = v;
            }
            let bound = event
                .object
                .spec
                .and_then(|s| s.node_name)
                .is_some_and(|n| !n.is_empty());
            if !bound || event.type_ == "DELETED" {
                continue;
            }
            let index = event
                .object
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix("pod-"))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(index) = index {
                progress.record(index, now);
            }
            if progress.bound() >= progress.total {
                return Ok(());
            }
        }
    }
    bail!("the pod watch ended {MAX_REWATCHES} times")
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

/// scheduler_perf's throughput collector: every [`SAMPLE_INTERVAL`], the pods bound since
/// the last sample over the time since it. Sampling starts at the first tick that sees a
/// bound pod (that tick is only the baseline); ticks that see no new pod stretch the interval
/// and repeat its rate, so percentiles stay per second; the partial interval in which the
/// last pod is bound is dropped (upstream stops collecting when all are scheduled).
async fn sample_throughput(progress: Arc<Progress>, deadline: Instant) -> Vec<f64> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker.tick().await;
    let mut started = false;
    let mut last_count = 0;
    let mut last_time = Instant::now();
    let mut skipped = 0usize;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::time::sleep_until(deadline) => return samples,
        }
        let now = Instant::now();
        let bound = progress.bound();
        if bound >= progress.total || progress.abandoned.load(Ordering::SeqCst) {
            return samples;
        }
        if bound == 0 {
            continue;
        }
        if !started {
            started = true;
            last_count = bound;
            last_time = now;
            continue;
        }
        let new = bound - last_count;
        if new == 0 {
            skipped += 1;
            continue;
        }
        let rate = new as f64 / (now - last_time).as_secs_f64();
        samples.extend(std::iter::repeat_n(rate, skipped + 1));
        skipped = 0;
        last_count = bound;
        last_time = now;
    }
}

/// The pod `pod-NNNNN` of an upstream template.
fn pod_body(template: Template, namespace: &str, index: usize) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("pod-{index:05}"), "namespace": namespace},
        "spec": {
            "containers": [{
                "name": "pause",
                "image": "registry.k8s.io/pause:3.10",
                "ports": [{"containerPort": 80}],
                "resources": {
                    "limits": {"cpu": "100m", "memory": "500Mi"},
                    "requests": {"cpu": "100m", "memory": "500Mi"},
                },
            }],
        },
    });
    match template {
        Template::Default => {}
        Template::AntiAffinity => {
            pod["metadata"]["labels"] = json!({"color": "green"});
            pod["spec"]["affinity"] = json!({
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"color": "green"}},
                        "topologyKey": "kubernetes.io/hostname",
                        "namespaces": ["sched-1", "sched-0"],
                    }],
                },
            });
        }
        Template::Spreading => {
            pod["metadata"]["labels"] = json!({"color": "blue"});
            pod["spec"]["topologySpreadConstraints"] = json!([{
                "maxSkew": 5,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"color": "blue"}},
            }]);
        }
    }
    pod
}

/// Sends a write, retrying transient failures (5xx, 429, transport errors, timeouts); a 409
/// on a retry means an earlier attempt landed.
async fn write<F>(client: &kube::Client, what: &str, request: F) -> anyhow::Result<()>
where
    F: Fn() -> Result<hyper::Request<Vec<u8>>, kube::core::request::Error>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.request::<serde::de::IgnoredAny>(request()?),
        )
        .await;
        let failure = match answer {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(kube::Error::Api(status))) => {
                if status.code == 409 && attempt > 1 {
                    return Ok(());
                }
                let message = format!("{what}: {} {}", status.code, status.message);
                if status.code < 500 && status.code != 429 {
                    bail!(message);
                }
                message
            }
            Ok(Err(e)) => format!("{what}: {e}"),
            Err(_) => format!("{what}: no answer in {REQUEST_TIMEOUT:?}"),
        };
        if attempt >= ATTEMPTS {
            bail!("{failure} (after {attempt} attempts)");
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
}

/// CPU time of a process, in total and per live thread.
#[derive(Debug)]
struct CpuSnapshot {
    pid: u32,
    total: f64,
    /// (thread id, name) → seconds.
    threads: BTreeMap<(u32, String), f64>,
}

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("a /proc stat line without a name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("a short /proc stat line")?
            .parse::<f64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) / USER_HZ)
}

fn own_cpu_seconds() -> anyhow::Result<f64> {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat")?)
}

impl CpuSnapshot {
    fn take(pid: u32) -> anyhow::Result<Self> {
        let total = stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
        let mut threads = BTreeMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let entry = entry?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            // Threads come and go; one that ended between the listing and the read is skipped.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if let Ok(seconds) = stat_cpu_seconds(&stat) {
                threads.insert((tid, name.trim().to_owned()), seconds);
            }
        }
        Ok(Self {
            pid,
            total,
            threads,
        })
    }

    /// CPU seconds per thread name since `before` (threads that ended are not counted).
    fn by_thread_since(&self, before: &CpuSnapshot) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for ((tid, name), seconds) in &self.threads {
            let earlier = before
                .threads
                .get(&(*tid, name.clone()))
                .copied()
                .unwrap_or(0.0);
            *out.entry(name.clone()).or_insert(0.0) += seconds - earlier;
        }
        out
    }
}

/// `perf record` on the server while the measured pods are scheduled (CORTEN_BENCH_PERF=1).
#[derive(Debug)]
struct Perf {
    child: Child,
}

impl Perf {
    fn start(pid: u32, output: &Path) -> anyhow::Result<Self> {
        let child = Command::new("perf")
            .args(["record", "-F", "249", "--call-graph", "dwarf,16384", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf (CORTEN_BENCH_PERF=1)")?;
        Ok(Self { child })
    }

    /// Asks perf (our child, by its pid) to finish its file, and reaps it.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nearest-rank percentile of sorted milliseconds.
fn percentile_ms(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

fn print_scenario(result: &ScenarioResult) {
    if let Some(m) = &result.measure {
        println!(
            "{}: {}/{} measured pods bound; throughput avg {} pods/s (p50 {}, {} samples); \
             creates {:.0}/s; create→bind p50 {} ms p99 {} ms",
            result.scenario.name,
            m.bound,
            m.pods,
            fmt(m.average()),
            fmt(m.sample_percentile(50)),
            m.samples.len(),
            m.creates_per_s,
            fmt(percentile_ms(&m.create_to_bind_ms, 0.50)),
            fmt(percentile_ms(&m.create_to_bind_ms, 0.99)),
        );
    }
    if let Some(error) = &result.error {
        println!("{}: FAILED: {error}", result.scenario.name);
    }
}

fn fmt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn phase_json(phase: &PhaseOutcome) -> Value {
    json!({
        "pods": phase.pods,
        "created": phase.created,
        "bound": phase.bound,
        "error": phase.error,
        "scheduling_throughput_pods_per_s": {
            "average": phase.average(),
            "perc50": phase.sample_percentile(50),
            "perc90": phase.sample_percentile(90),
            "perc95": phase.sample_percentile(95),
            "perc99": phase.sample_percentile(99),
            "samples": phase.samples.len(),
        },
        "bound_per_s_over_phase": phase.overall_per_s(),
        "pod_creates_per_s": phase.creates_per_s,
        "seconds": phase.seconds,
        "create_to_bind_ms": {
            "p50": percentile_ms(&phase.create_to_bind_ms, 0.50),
            "p99": percentile_ms(&phase.create_to_bind_ms, 0.99),
            "max": percentile_ms(&phase.create_to_bind_ms, 1.0),
        },
        "server_cpu_s": phase.server_cpu_s,
        "server_cpu_by_thread_s": phase.server_cpu_by_thread_s,
        "client_cpu_s": phase.client_cpu_s,
        "perf_data": phase.profile,
        "created_per_second": phase.created_per_second,
        "bound_per_second": phase.bound_per_second,
    })
}

fn report(out_dir: &Path, results: &[ScenarioResult]) -> anyhow::Result<()> {
    let mut scenarios = Vec::new();
    let mut targets = Vec::new();
    for r in results {
        let s = r.scenario;
        let average = r
            .measure
            .as_ref()
            .filter(|_| r.error.is_none())
            .and_then(PhaseOutcome::average);
        let mut check = |source: &str, at_least: f64| {
            targets.push(json!({
                "scenario": s.name,
                "figure": "scheduling_throughput_average_pods_per_s",
                "source": source,
                "value": average,
                "at_least": at_least,
                "met": average.is_some_and(|a| a >= at_least),
            }));
        };
        if let Some(target) = s.target {
            check("corten target (2-core machine)", target);
        }
        check("upstream scheduler_perf threshold", s.upstream_threshold);
        scenarios.push(json!({
            "name": s.name,
            "upstream_workload": s.upstream,
            "nodes": NODES,
            "zones": ZONES.len(),
            "init_pods": s.init_pods,
            "measured_pods": s.measure_pods,
            "completed": r.error.is_none(),
            "error": r.error,
            "bound": r.measure.as_ref().map_or(0, |m| m.bound),
            "node_setup_s": r.node_setup_s,
            "nodes_with_pod_cidr": r.nodes_with_pod_cidr,
            "init": r.init.as_ref().map(phase_json),
            "measure": r.measure.as_ref().map(phase_json),
            "server_rss_mb": r.memory_mb.map(|m| m.0),
            "server_peak_rss_mb": r.memory_mb.map(|m| m.1),
        }));
    }
    let report = json!({
        "workload": {
            "store": "embedded",
            "transport": "HTTPS through kube-rs with the admin client certificate",
            "node": {"cpu": "4", "memory": "32Gi", "pods": "110", "zones": ZONES},
            "pod_requests": {"cpu": "100m", "memory": "500Mi"},
            "pod_creations_in_flight": POD_CONCURRENCY,
            "throughput": "scheduler_perf SchedulingThroughput: bound pods sampled every 1 s, average of the per-interval rates",
            "server_flags": "--node-monitor-grace-period 3600 --cluster-cidr 10.128.0.0/9",
            "scenario_timeout_s": SCENARIO_TIMEOUT.as_secs(),
        },
        "scenarios": scenarios,
        "targets": targets,
    });

    println!(
        "\n{:<27} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}",
        "scenario",
        "bound",
        "avg/s",
        "p50/s",
        "creates/s",
        "bind p50",
        "bind p99",
        "RSS MB",
        "HWM MB"
    );
    for r in results {
        let m = r.measure.as_ref();
        let bound = m.map_or("-".to_owned(), |m| format!("{}/{}", m.bound, m.pods));
        println!(
            "{:<27} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}",
            r.scenario.name,
            bound,
            fmt(m.and_then(PhaseOutcome::average)),
            fmt(m.and_then(|m| m.sample_percentile(50))),
            fmt(m.map(|m| m.creates_per_s)),
            fmt(m.and_then(|m| percentile_ms(&m.create_to_bind_ms, 0.50))),
            fmt(m.and_then(|m| percentile_ms(&m.create_to_bind_ms, 0.99))),
            fmt(r.memory_mb.map(|m| m.0)),
            fmt(r.memory_mb.map(|m| m.1)),
        );
        if let Some(m) = m {
            let threads: Vec<String> = m
                .server_cpu_by_thread_s
                .iter()
                .filter(|(_, s)| **s >= 0.05)
                .map(|(name, s)| format!("{name} {s:.1}"))
                .collect();
            println!(
                "{:<27} server CPU {} s over {:.1} s ({}); bench client CPU {} s",
                "",
                fmt(m.server_cpu_s),
                m.seconds,
                threads.join(", "),
                fmt(m.client_cpu_s),
            );
        }
    }
    println!(
        "\n{:<27} {:<36} {:>9} {:>9} {:>5}",
        "target", "source", "value", "at least", "met"
    );
    for t in &targets {
        println!(
            "{:<27} {:<36} {:>9} {:>9} {:>5}",
            t["scenario"].as_str().unwrap_or_default(),
            t["source"].as_str().unwrap_or_default(),
            fmt(t["value"].as_f64()),
            fmt(t["at_least"].as_f64()),
            if t["met"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
        );
    }
    let path = out_dir.join("scheduler.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The `corten-server` under test: its child handle, data directory and port.
#[derive(Debug)]
struct Server {
    child: Child,
    data: PathBuf,
}

impl Server {
    fn start(binary: &Path, data: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(data.join("server.log"))?;
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(data)
            .args(["--bind-address", "127.0.0.1"])
            .args(["--https-port", &port.to_string()])
            // The nodes have no kubelet: without this they turn Unknown (tainted) after 50 s.
            .args(["--node-monitor-grace-period", "3600"])
            // Room for a /24 per node (the default /16 has 256).
            .args(["--cluster-cidr", "10.128.0.0/9"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            data: data.to_path_buf(),
        })
    }

    /// Waits for the kubeconfig and a working client.
    async fn wait_ready(&mut self) -> anyhow::Result<kube::Client> {
        let kubeconfig = self.data.join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("corten-server exited at start: {status}");
            }
            if kubeconfig.exists() {
                if let Ok(client) = client_from(&kubeconfig).await {
                    if client.apiserver_version().await.is_ok() {
                        return Ok(client);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("corten-server was not ready in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `(VmRSS, VmHWM)` of the server, in MB.
    fn memory(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the server's /proc status")?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc status"))?;
            let kb: f64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kb / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Kills the server through its handle and reaps it.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
