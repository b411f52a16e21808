//! `cargo xtask bench podstart`: how fast one node starts pods, measured as upstream's pod
//! startup SLI measures it (a stateless pod's creation to the first watch event in which it
//! is Running with every container started, image pulls excluded), on a one-node lab whose
//! node 0 runs corten-server and corten-agent.
//!
//! The bench watches the pods with `kubectl get --watch -o json` inside the node, makes one
//! warm-up pod Running (which also proves the watch is live), then creates [`PODS`] bare
//! busybox pods at once (one `kubectl create` of a List; kubectl sends the creates one after
//! another) with `imagePullPolicy: Never`, the image being imported already. Every time is
//! taken by the bench when it reads a watch event, so a pod's startup runs from the event
//! that first shows it (its creation) to the first that shows it Running; the figure the
//! way upstream's tooling computes it, from `creationTimestamp` (1 s resolution, so up to
//! 1 s too high), is reported as well, and so are the stages in between (scheduled, pod IP
//! reported). Then it reads the agent's and the server's memory (VmRSS with the pods
//! running, VmHWM as the peak), and says where the node's CPU time went from the burst's
//! start until every pod was Running (agent, server, containerd and the CNI plugins it ran,
//! the shims and the runc runs they made, the rest of the node's cgroup).
//!
//! Prints a table and writes `target/bench/podstart.json` with the figures, the targets
//! (p99 < 1 s, agent RSS < 32 MB), upstream's SLO (p99 ≤ 5 s) and whether each is met; the
//! agent's and the server's logs are kept next to it. It runs the binaries that
//! `CORTEN_SERVER_BIN` / `CORTEN_AGENT_BIN` / `CORTEN_CNI_BIN` name (`cargo xtask bench
//! podstart` builds and names the release ones), else builds and runs the debug ones. Needs
//! root and the images (`cargo xtask images`). Every wait is bounded, the watch is killed by
//! PID, and the lab is taken down, also on failure.
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::{apply, eventually},
    lab::{
        build_project_binaries, project_agent, project_server, Lab, LabSpec, AGENT_BIN_ENV,
        BUSYBOX_IMAGE,
    },
    pod_network::{cgroup_pids, wait_bounded},
};
use serde_json::{json, Value};

/// How many pods are created at once.
const PODS: usize = 100;
/// The label every pod of the bench carries (the watch selects on it).
const LABEL: &str = "bench";
/// The names of the burst's pods start with this.
const PREFIX: &str = "podstart-";
/// The warm-up pod.
const WARMUP: &str = "warmup";
const TARGET_P99_S: f64 = 1.0;
const TARGET_AGENT_RSS_MB: f64 = 32.0;
/// Upstream's pod startup SLO (stateless pods, image pulls excluded): p99 ≤ 5 s.
const UPSTREAM_SLO_P99_S: f64 = 5.0;
/// How long the warm-up pod and the burst may take to be Running.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(120);
const COMMAND: &str = "cargo xtask bench podstart";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(AGENT_BIN_ENV).is_none() {
        build_project_binaries()?;
    }
    let mut spec = LabSpec::for_test(&format!("podstart-{}", std::process::id()), 1);
    spec.control_plane = true;
    ensure!(
        !spec.images.is_empty(),
        "no image archives: run `cargo xtask images`"
    );
    let out = corten_tests::bench_dir()?;
    let lab = Lab::up(spec)?;
    let run = measure(&lab);
    keep_logs(&lab, &out);
    // On every path the lab goes down before the figures are judged.
    let down = lab.down();
    let run = run?;
    down.context("taking the lab down")?;
    report(&run, &out)
}

/// Copies the agent's and the server's logs next to the report (the lab's go with it).
fn keep_logs(lab: &Lab, out: &Path) {
    let logs = [
        (lab.paths().agent_log(0), "podstart-agent.log"),
        (lab.paths().server_log(), "podstart-server.log"),
    ];
    for (from, name) in logs {
        if let Err(e) = std::fs::copy(&from, out.join(name)) {
            eprintln!("podstart bench: keeping {}: {e}", from.display());
        }
    }
}

/// What the watch showed of one pod, and when (as the bench read each event).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// The first event that showed the pod: its creation.
    created: Option<Instant>,
    /// Its `creationTimestamp` (whole seconds).
    creation_timestamp: Option<SystemTime>,
    /// The first event with `spec.nodeName`.
    scheduled: Option<Instant>,
    /// The first event with `status.podIP` (the agent made the sandbox and reported it).
    addressed: Option<Instant>,
    /// The first event in which it is Running with every container started.
    running: Option<Instant>,
    /// The wall clock at `running`.
    running_wall: Option<SystemTime>,
}

/// Memory of a process, in MB (MiB).
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_mb: f64,
    peak_mb: f64,
}

/// Everything one run observed.
struct Run {
    pods: BTreeMap<String, Seen>,
    burst_started: Instant,
    create_command: Duration,
    agent: Memory,
    server: Memory,
    /// CPU time used from the burst's start until every pod was Running.
    cpu: Cpu,
}

/// CPU seconds used by the agent, the server, containerd itself and the children it reaped
/// (CNI plugins, shim launches), the containerd shims with the runc runs they reaped, and
/// everything in the node's cgroup (those, kubectl and the pods).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    agent: f64,
    server: f64,
    containerd: f64,
    containerd_children: f64,
    shims: f64,
    node: f64,
}

impl Cpu {
    fn now(lab: &Lab) -> anyhow::Result<Self> {
        let paths = lab.paths();
        let stat = std::fs::read_to_string(lab.node_cgroup(0).join("cpu.stat"))
            .context("reading the node cgroup's cpu.stat")?;
        let usec: f64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .context("no usage_usec in cpu.stat")?
            .trim()
            .parse()?;
        let containerd = ProcessCpu::of(read_pid(&paths.node_run_dir(0).join("containerd.pid"))?)?;
        let mut pids = Vec::new();
        cgroup_pids(&lab.node_cgroup(0), &mut pids)?;
        // A shim that exited meanwhile is simply not counted.
        let shims = pids
            .into_iter()
            .filter_map(|pid| ProcessCpu::of(pid).ok())
            .filter(|p| p.command.starts_with("containerd-shim"))
            .map(|p| p.own + p.children)
            .sum();
        Ok(Self {
            agent: ProcessCpu::of(read_pid(&paths.agent_pid_file(0))?)?.own,
            server: ProcessCpu::of(read_pid(&paths.server_pid_file())?)?.own,
            containerd: containerd.own,
            containerd_children: containerd.children,
            shims,
            node: usec / 1e6,
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            agent: self.agent - before.agent,
            server: self.server - before.server,
            containerd: self.containerd - before.containerd,
            containerd_children: self.containerd_children - before.containerd_children,
            shims: self.shims - before.shims,
            node: self.node - before.node,
        }
    }

    /// What the figures above leave of the node's total.
    fn rest(&self) -> f64 {
        self.node
            - self.agent
            - self.server
            - self.containerd
            - self.containerd_children
            - self.shims
    }
}

/// The PID a PID file holds.
fn read_pid(pid_file: &Path) -> anyhow::Result<u32> {
    let pid = std::fs::read_to_string(pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?;
    pid.trim().parse().context("a PID file without a PID")
}

/// One process's CPU seconds, user plus system, from `/proc/PID/stat`.
struct ProcessCpu {
    command: String,
    /// Its own (all its threads).
    own: f64,
    /// Of the children it waited for.
    children: f64,
}

impl ProcessCpu {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let (head, rest) = stat
            .rsplit_once(") ")
            .with_context(|| format!("/proc/{pid}/stat has no command"))?;
        let command = head.split_once(" (").map_or("", |(_, c)| c).to_owned();
        // From field 3 (state) on: utime is field 14, stime 15, cutime 16, cstime 17.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let seconds = |from: usize| -> anyhow::Result<f64> {
            let mut sum = 0.0;
            for i in [from, from + 1] {
                let field = fields
                    .get(i - 3)
                    .with_context(|| format!("/proc/{pid}/stat is short"))?;
                sum += field.parse::<f64>()?;
            }
            Ok(sum / clock_ticks())
        };
        Ok(Self {
            command,
            own: seconds(14)?,
            children: seconds(16)?,
        })
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The watch: `kubectl get pods --watch` inside node 0, its events read (and timed) by a
/// thread. Killed by PID when dropped.
struct Watch {
    child: Child,
    events: mpsc::Receiver<(Instant, SystemTime, Value)>,
}

impl Watch {
    fn start(lab: &Lab) -> anyhow::Result<Self> {
        let mut child = lab
            .kubectl()?
            .args([
                "get",
                "pods",
                "-l",
                LABEL,
                "--watch",
                "--output-watch-events",
            ])
            .args(["-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting kubectl get --watch")?;
        let stdout = child.stdout.take().context("the watch's stdout")?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            // kubectl prints one JSON object per event; each is complete at its closing brace.
            let reader = std::io::BufReader::new(stdout);
            for event in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
                let Ok(event) = event else { break };
                if tx.send((Instant::now(), SystemTime::now(), event)).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, events })
    }

    /// Reads events into `pods` until `done` holds, at most `timeout`.
    fn until(
        &self,
        lab: &Lab,
        pods: &mut BTreeMap<String, Seen>,
        timeout: Duration,
        what: &str,
        done: impl Fn(&BTreeMap<String, Seen>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(pods) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((at, wall, event)) => observe(pods, at, wall, &event)?,
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "timed out after {timeout:?} waiting for {what} ({} pods Running); \
                     agents: {:?}",
                    pods.values().filter(|s| s.running.is_some()).count(),
                    lab.agent_failures()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the watch ended while waiting for {what}")
                }
            }
        }
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records what one watch event shows.
fn observe(
    pods: &mut BTreeMap<String, Seen>,
    at: Instant,
    wall: SystemTime,
    event: &Value,
) -> anyhow::Result<()> {
    if event["type"] == "ERROR" {
        bail!("the watch failed: {}", event["object"]);
    }
    let pod = &event["object"];
    let Some(name) = pod["metadata"]["name"].as_str() else {
        return Ok(());
    };
    let seen = pods.entry(name.to_owned()).or_default();
    seen.created.get_or_insert(at);
    if seen.creation_timestamp.is_none() {
        seen.creation_timestamp = pod["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(parse_time);
    }
    let set = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    if set(&pod["spec"]["nodeName"]) {
        seen.scheduled.get_or_insert(at);
    }
    if set(&pod["status"]["podIP"]) {
        seen.addressed.get_or_insert(at);
    }
    if seen.running.is_none() && is_running(pod) {
        seen.running = Some(at);
        seen.running_wall = Some(wall);
    }
    Ok(())
}

/// Phase Running and every container started (upstream's SLI: all containers reported
/// started).
fn is_running(pod: &Value) -> bool {
    let containers = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let started = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"]["running"].is_object())
        .count();
    pod["status"]["phase"] == "Running" && containers > 0 && started == containers
}

fn parse_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// A bare busybox pod that sleeps, its image already on the node.
fn pod(name: &str, label: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL: label}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "sleep", "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never", "command": ["sleep", "3600"]}],
        },
    })
}

/// The warm-up pod, then the burst; the figures once every pod of the burst is Running.
fn measure(lab: &Lab) -> anyhow::Result<Run> {
    lab.wait_for_nodes_ready(Duration::from_secs(90))?;
    let watch = Watch::start(lab)?;
    let mut pods = BTreeMap::new();
    // Retried: right after start the namespace's ServiceAccount may not exist yet.
    let warmup = pod(WARMUP, WARMUP).to_string();
    eventually(lab, "the warm-up pod to be created", || {
        apply(lab, &warmup)?;
        Ok(Some(()))
    })?;
    watch.until(lab, &mut pods, RUNNING_TIMEOUT, "the warm-up pod", |p| {
        p.get(WARMUP).is_some_and(|s| s.running.is_some())
    })?;

    let names: Vec<String> = (0..PODS).map(|i| format!("{PREFIX}{i:03}")).collect();
    let items: Vec<Value> = names.iter().map(|n| pod(n, "podstart")).collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let cpu_before = Cpu::now(lab)?;
    let burst_started = Instant::now();
    let mut create = lab
        .kubectl()?
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl create")?;
    create
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(list.as_bytes())?;
    let output = wait_bounded(create, Duration::from_secs(60), "kubectl create")?;
    let create_command = burst_started.elapsed();
    ensure!(
        output.status.success(),
        "kubectl create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    watch.until(
        lab,
        &mut pods,
        RUNNING_TIMEOUT,
        &format!("{PODS} pods to be Running"),
        |p| {
            names
                .iter()
                .all(|n| p.get(n).is_some_and(|s| s.running.is_some()))
        },
    )?;
    let cpu = Cpu::now(lab)?.since(cpu_before);
    lab.check_agents()?;
    let agent = memory(&lab.paths().agent_pid_file(0))?;
    let server = memory(&lab.paths().server_pid_file())?;
    Ok(Run {
        pods,
        burst_started,
        create_command,
        agent,
        server,
        cpu,
    })
}

/// VmRSS and VmHWM of the process whose PID `pid_file` holds.
fn memory(pid_file: &Path) -> anyhow::Result<Memory> {
    let pid = read_pid(pid_file)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb / 1024.0)
    };
    Ok(Memory {
        rss_mb: field("VmRSS:")?,
        peak_mb: field("VmHWM:")?,
    })
}

/// Percentiles (nearest rank) of some seconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = ((values.len() as f64 - 1.0) * p).round() as usize;
            values
                .get(rank.min(values.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn json(&self) -> Value {
        json!({"p50_s": self.p50, "p90_s": self.p90, "p99_s": self.p99, "max_s": self.max})
    }
}

/// Seconds from `from` to `to` when both happened.
fn span(from: Option<Instant>, to: Option<Instant>) -> Option<f64> {
    Some(to?.checked_duration_since(from?)?.as_secs_f64())
}

/// Seconds between two wall-clock times (negative if `to` is earlier).
fn wall_span(from: Option<SystemTime>, to: Option<SystemTime>) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some(match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    })
}

fn report(run: &Run, out: &Path) -> anyhow::Result<()> {
    let burst: Vec<&Seen> = run
        .pods
        .iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .map(|(_, seen)| seen)
        .collect();
    let series = |f: &dyn Fn(&Seen) -> Option<f64>| -> anyhow::Result<Stats> {
        let values: Vec<f64> = burst.iter().filter_map(|s| f(s)).collect();
        ensure!(values.len() == PODS, "a figure is missing for some pods");
        Ok(Stats::of(values))
    };
    let startup = series(&|s| span(s.created, s.running))?;
    let by_timestamp = series(&|s| wall_span(s.creation_timestamp, s.running_wall))?;
    let from_burst = series(&|s| span(Some(run.burst_started), s.running))?;
    let created_at = series(&|s| span(Some(run.burst_started), s.created))?;
    let stages = [
        (
            "created → scheduled",
            series(&|s| span(s.created, s.scheduled))?,
        ),
        (
            "scheduled → pod IP",
            series(&|s| span(s.scheduled, s.addressed))?,
        ),
        (
            "pod IP → Running",
            series(&|s| span(s.addressed, s.running))?,
        ),
    ];
    let burst_s = from_burst.max;
    let cpu = run.cpu;
    let warmup = run
        .pods
        .get(WARMUP)
        .and_then(|s| span(s.created, s.running));
    let rows = [
        ("creation → Running (watch)", startup),
        ("creationTimestamp → Running", by_timestamp),
        ("burst start → Running", from_burst),
        ("burst start → created", created_at),
    ];
    println!(
        "\n{:<30} {:>8} {:>8} {:>8} {:>8}",
        "seconds, 100 pods", "p50", "p90", "p99", "max"
    );
    for (name, s) in rows.iter().chain(stages.iter()) {
        println!(
            "{name:<30} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            s.p50, s.p90, s.p99, s.max
        );
    }
    println!(
        "\nkubectl create of {PODS} pods: {:.3} s",
        run.create_command.as_secs_f64()
    );
    if let Some(w) = warmup {
        println!("warm-up pod creation → Running: {w:.3} s");
    }
    println!(
        "agent RSS {:.1} MB (peak {:.1}), server RSS {:.1} MB (peak {:.1})",
        run.agent.rss_mb, run.agent.peak_mb, run.server.rss_mb, run.server.peak_mb
    );
    println!(
        "CPU s in the {burst_s:.1} s until all were Running: node {:.1} = agent {:.1}, server \
         {:.1}, containerd {:.1} + its children (CNI, shim starts) {:.1}, shims + runc {:.1}, \
         the rest {:.1}",
        cpu.node,
        cpu.agent,
        cpu.server,
        cpu.containerd,
        cpu.containerd_children,
        cpu.shims,
        cpu.rest()
    );
    let targets = [
        ("startup_p99_s", startup.p99, TARGET_P99_S),
        ("agent_rss_mb", run.agent.rss_mb, TARGET_AGENT_RSS_MB),
    ];
    println!(
        "\n{:<20} {:>10} {:>10} {:>6}",
        "target", "value", "below", "met"
    );
    for (name, value, below) in targets {
        let met = if value < below { "yes" } else { "no" };
        println!("{name:<20} {value:>10.3} {below:>10.2} {met:>6}");
    }
    let slo_met = startup.p99 <= UPSTREAM_SLO_P99_S;
    println!(
        "upstream SLO: p99 {:.3} s ≤ {UPSTREAM_SLO_P99_S} s: {}",
        startup.p99,
        if slo_met { "met" } else { "missed" }
    );

    let binary = |found: anyhow::Result<PathBuf>| {
        found.map_or(Value::Null, |p| json!(p.display().to_string()))
    };
    let report = json!({
        "command": COMMAND,
        "workload": {
            "nodes": 1,
            "pods": PODS,
            "created_by": "one `kubectl create -f -` of a List of bare Pods (kubectl sends \
                the creates one after another), scheduled by corten-server",
            "pod": "busybox `sleep 3600`, imagePullPolicy Never (image imported already), \
                BestEffort",
            "warmup": "one pod made Running before the burst",
            "observed_by": "`kubectl get pods --watch -o json` inside the node; every time is \
                when the bench read the event",
            "startup": "from the first event showing the pod to the first in which it is \
                Running with every container started",
            "agent": binary(project_agent()),
            "server": binary(project_server()),
        },
        "figures": {
            "startup_s": startup.json(),
            "startup_from_creation_timestamp_s": by_timestamp.json(),
            "from_burst_start_s": from_burst.json(),
            "created_after_burst_start_s": created_at.json(),
            "stages_s": {
                "created_to_scheduled": stages[0].1.json(),
                "scheduled_to_pod_ip": stages[1].1.json(),
                "pod_ip_to_running": stages[2].1.json(),
            },
            "create_command_s": run.create_command.as_secs_f64(),
            "warmup_startup_s": warmup,
            "agent_rss_mb": run.agent.rss_mb,
            "agent_peak_rss_mb": run.agent.peak_mb,
            "server_rss_mb": run.server.rss_mb,
            "server_peak_rss_mb": run.server.peak_mb,
            "cpu_s_until_all_running": {
                "node": cpu.node,
                "agent": cpu.agent,
                "server": cpu.server,
                "containerd": cpu.containerd,
                "containerd_children": cpu.containerd_children,
                "shims_and_runc": cpu.shims,
                "rest": cpu.rest(),
                "cores": std::thread::available_parallelism().map_or(1, usize::from),
            },
        },
        "upstream_slo": {
            "what": "pod startup latency, stateless pods, image pulls excluded",
            "p99_at_most_s": UPSTREAM_SLO_P99_S,
            "value_s": startup.p99,
            "met": slo_met,
        },
        "targets": targets.iter().map(|(name, value, below)| {
            (name.to_string(), json!({"value": value, "below": below, "met": value < below}))
        }).collect::<serde_json::Map<_, _>>(),
    });
    let path = out.join("podstart.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
