//! Container logs through the API server and corten-agent's kubelet API in one one-node lab,
//! driven by real kubectl: `kubectl logs` shows what a container printed, `--tail`,
//! `--timestamps` and `--limit-bytes` cut and decorate it, `-f` streams new lines as they are
//! printed, `--previous` shows the instance before a restart (and fails with upstream's
//! message before there is one), the API server's errors for an unknown pod or container or
//! an ambiguous one, `kubectl exec` runs commands with standard input and their exit code,
//! `kubectl port-forward` reaches a pod's port,
//! the kubelet refuses clients without a cluster certificate, serves `/stats/summary` (the
//! running containers' memory) and `/metrics` (`kubelet_running_pods`) to a master's
//! certificate and refuses a node's, the API server's `nodes/NAME/proxy` passes requests
//! to the kubelet (`/stats/summary` and `/metrics` with `kubectl get --raw`, the kubelet's
//! status, content type and body as they are, the query, the `NAME:PORT` forms, a `Status`
//! 404 for an unknown node), and the Python `kubernetes`
//! client reads the same lines (`read_namespaced_pod_log`) and execs (WebSocket v4).
//!
//! Safety: everything runs inside the lab's namespaces; every wait and read is bounded.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::{apply, eventually, json, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE},
};
use serde_json::json;

/// kubectl with `args`, expected to fail: its stderr.
fn kubectl_fails(lab: &Lab, args: &[&str]) -> anyhow::Result<String> {
    let output = lab.kubectl()?.args(args).output()?;
    ensure!(
        !output.status.success(),
        "kubectl {args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The numbers of the `tick N` lines of `text`, in order.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

fn wait_running(lab: &Lab, pod: &str) -> anyhow::Result<()> {
    eventually(lab, &format!("pod {pod} Running"), || {
        let pod = json(lab, &["get", "pod", pod])?;
        Ok((pod["status"]["phase"] == "Running").then_some(()))
    })
}

#[test]
fn kubectl_logs_reads_the_kubelets_container_logs() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let lab = Lab::up_ready(LabSpec::cluster_for_test(
        &format!("klogs-{}", std::process::id()),
        1,
    ))?;

    // Five numbered lines at once, then one tick a second.
    let counter = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "counter"},
        "spec": {"containers": [{"name": "count", "image": BUSYBOX_IMAGE,
            "command": ["sh", "-c",
                "for i in 1 2 3 4 5; do echo line $i; done; \
                 i=1; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]}]}});
    apply(&lab, &counter.to_string())?;
    wait_running(&lab, "counter")?;

    let all = eventually(&lab, "the first ticks in the log", || {
        let out = kubectl(&lab, &["logs", "counter"])?;
        Ok((ticks(&out).len() >= 2).then_some(out))
    })?;
    let lines: Vec<&str> = all.lines().collect();
    ensure!(
        lines[..5] == ["line 1", "line 2", "line 3", "line 4", "line 5"],
        "kubectl logs gave {all:?}"
    );
    let numbers = ticks(&all);
    ensure!(
        numbers.iter().copied().eq(1..=numbers.len() as u64),
        "ticks out of order: {numbers:?}"
    );

    // --tail: the last lines only.
    let tail = kubectl(&lab, &["logs", "counter", "--tail=2"])?;
    let tail_ticks = ticks(&tail);
    ensure!(
        tail.lines().count() == 2 && tail_ticks.len() == 2,
        "--tail=2 gave {tail:?}"
    );
    ensure!(
        tail_ticks[1] == tail_ticks[0] + 1 && tail_ticks[0] + 1 >= *numbers.last().unwrap_or(&0),
        "--tail=2 gave {tail_ticks:?} after {numbers:?}"
    );

    // --timestamps: RFC 3339 with nanoseconds before every line.
    let stamped = kubectl(&lab, &["logs", "counter", "--timestamps", "--tail=3"])?;
    for line in stamped.lines() {
        let (time, message) = line.split_once(' ').context("no space in a stamped line")?;
        ensure!(
            time.len() == "2026-01-02T03:04:05.123456789Z".len()
                && time.as_bytes()[10] == b'T'
                && time.ends_with('Z'),
            "bad timestamp in {line:?}"
        );
        ensure!(
            message.starts_with("tick ") || message.starts_with("line "),
            "bad line {line:?}"
        );
    }
    ensure!(stamped.lines().count() == 3, "{stamped:?}");

    // --limit-bytes cuts inside a line.
    let limited = kubectl(&lab, &["logs", "counter", "--limit-bytes=9"])?;
    ensure!(limited == "line 1\nli", "--limit-bytes=9 gave {limited:?}");

    // -f: lines that did not exist when the request came arrive while it is open.
    follow_streams_new_lines(&lab)?;

    // Errors: an unknown pod, an unknown container, several containers and none named.
    let missing = kubectl_fails(&lab, &["logs", "nosuch"])?;
    ensure!(
        missing.contains("pods \"nosuch\" not found"),
        "unknown pod: {missing}"
    );
    let bad_container = kubectl_fails(&lab, &["logs", "counter", "-c", "other"])?;
    ensure!(
        bad_container.contains("container other is not valid for pod counter"),
        "unknown container: {bad_container}"
    );
    let two = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "two"},
        "spec": {"containers": [
            {"name": "a", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", "echo to stderr >&2; sleep 3600"]},
            {"name": "b", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", "echo from b; sleep 3600"]}]}});
    apply(&lab, &two.to_string())?;
    wait_running(&lab, "two")?;
    let ambiguous = kubectl_fails(
        &lab,
        &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"],
    )?;
    ensure!(
        ambiguous.contains("a container name must be specified for pod two, choose one of: [a b]"),
        "no container named: {ambiguous}"
    );
    let b = eventually(&lab, "container b's log", || {
        let out = kubectl(&lab, &["logs", "two", "-c", "b"])?;
        Ok((!out.is_empty()).then_some(out))
    })?;
    ensure!(b == "from b\n", "two/b gave {b:?}");
    // Standard error is in the log too.
    let a = eventually(&lab, "container a's log", || {
        let out = kubectl(&lab, &["logs", "two", "-c", "a"])?;
        Ok((!out.is_empty()).then_some(out))
    })?;
    ensure!(a == "to stderr\n", "two/a gave {a:?}");

    exec_runs_commands(&lab)?;
    port_forward_reaches_the_pod(&lab)?;
    previous_instance(&lab)?;
    kubelet_requires_a_cluster_certificate(&lab)?;
    kubelet_serves_stats_and_metrics(&lab)?;
    api_server_proxies_the_node(&lab)?;
    python_client_reads_logs(&lab)?;
    lab.down()
}

fn follow_streams_new_lines(lab: &Lab) -> anyhow::Result<()> {
    let mut child = lab
        .kubectl()?
        .args(["logs", "-f", "--tail=1", "counter"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl logs -f")?;
    let stdout = child.stdout.take().context("kubectl's stdout")?;
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(4) {
            let Ok(line) = line else { break };
            if lines.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => break,
        }
    }
    // Ending the child is ours to do: it is kubectl, started above.
    let _ = child.kill();
    let status = child.wait()?;
    let _ = reader.join();
    if got.len() < 4 {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut stderr)?;
        }
        bail!("kubectl logs -f gave only {got:?} (exit {status}): {stderr}");
    }
    let numbers: Vec<u64> = got.iter().flat_map(|(_, l)| ticks(l)).collect();
    ensure!(
        numbers.len() == 4 && numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "kubectl logs -f gave {got:?}"
    );
    // The container prints a tick a second: the last line came well after the first, so it
    // was streamed, not read from a finished response.
    let spread = got[3].0.duration_since(got[0].0);
    ensure!(
        spread >= Duration::from_millis(1500),
        "four lines in {spread:?}: not streamed"
    );
    Ok(())
}

fn exec_runs_commands(lab: &Lab) -> anyhow::Result<()> {
    // Output comes back and the exit code is kubectl's.
    let output = lab
        .kubectl()?
        .args([
            "exec",
            "counter",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])
        .output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    ensure!(
        output.status.code() == Some(3) && stdout == "out\n" && stderr.contains("err"),
        "kubectl exec gave {:?}: {stdout:?} {stderr:?}",
        output.status
    );
    // Standard input reaches the command.
    let mut child = lab
        .kubectl()?
        .args(["exec", "-i", "counter", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        stdin.write_all(b"hello stdin\n")?;
    }
    let (done, finished) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = finished
        .recv_timeout(Duration::from_secs(30))
        .context("kubectl exec -i did not finish in 30 s")??;
    let _ = waiter.join();
    ensure!(
        output.status.success() && output.stdout == b"HELLO STDIN\n",
        "kubectl exec -i gave {:?}: {:?} {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn port_forward_reaches_the_pod(lab: &Lab) -> anyhow::Result<()> {
    let web = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "httpd", "image": BUSYBOX_IMAGE,
            "command": ["sh", "-c",
                "mkdir -p /www && echo forwarded > /www/index.html && httpd -f -p 8080 -h /www"]}]}});
    apply(lab, &web.to_string())?;
    wait_running(lab, "web")?;
    let mut child = lab
        .kubectl()?
        .args(["port-forward", "pod/web", "18080:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl port-forward")?;
    let stdout = child.stdout.take().context("kubectl's stdout")?;
    let (ready, listening) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(10) {
            let Ok(line) = line else { break };
            if line.contains("Forwarding from 127.0.0.1:18080") {
                let _ = ready.send(());
            }
        }
    });
    let result = (|| -> anyhow::Result<()> {
        listening
            .recv_timeout(Duration::from_secs(30))
            .context("kubectl port-forward did not start listening in 30 s")?;
        let mut last = String::new();
        for _ in 0..20 {
            let got = lab
                .command(0, "curl")?
                .args(["-s", "--max-time", "5", "http://127.0.0.1:18080/"])
                .output()?;
            last = String::from_utf8_lossy(&got.stdout).into_owned();
            if last == "forwarded\n" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("through kubectl port-forward the pod answered {last:?}")
    })();
    // Ending the child is ours to do: it is kubectl, started above.
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    if result.is_err() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut stderr)?;
        }
        return result.with_context(|| format!("kubectl port-forward said: {stderr}"));
    }
    result
}

fn previous_instance(lab: &Lab) -> anyhow::Result<()> {
    // The first instance prints its id and fails; the second prints its id and stays (the
    // emptyDir outlives the first).
    let flaky = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "flaky"},
        "spec": {"restartPolicy": "Always",
            "volumes": [{"name": "state", "emptyDir": {}}],
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE,
                "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                "command": ["sh", "-c",
                    "echo instance $(cat /proc/sys/kernel/random/uuid); \
                     if [ -e /state/ran ]; then sleep 3600; fi; touch /state/ran; sleep 2; exit 3"]}]}});
    apply(lab, &flaky.to_string())?;
    wait_running(lab, "flaky")?;
    let before = kubectl_fails(lab, &["logs", "flaky", "--previous"])?;
    ensure!(
        before.contains("previous terminated container \"app\" in pod \"flaky\" not found"),
        "--previous before a restart: {before}"
    );
    eventually(lab, "flaky's second instance running", || {
        let pod = json(lab, &["get", "pod", "flaky"])?;
        let status = &pod["status"]["containerStatuses"][0];
        Ok(
            (status["restartCount"].as_u64() >= Some(1) && status["state"]["running"].is_object())
                .then_some(()),
        )
    })?;
    let instance = |text: &str| -> anyhow::Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix("instance "))
            .map(str::to_owned)
            .with_context(|| format!("no instance line in {text:?}"))
    };
    let previous = instance(&kubectl(lab, &["logs", "flaky", "--previous"])?)?;
    let current = eventually(lab, "the second instance's log", || {
        let out = kubectl(lab, &["logs", "flaky"])?;
        Ok((!out.is_empty()).then_some(out))
    })?;
    let current = instance(&current)?;
    ensure!(
        previous != current && previous.len() == 36 && current.len() == 36,
        "previous {previous:?}, current {current:?}"
    );
    Ok(())
}

fn kubelet_requires_a_cluster_certificate(lab: &Lab) -> anyhow::Result<()> {
    let url = format!(
        "https://{}:10250/containerLogs/default/counter/count",
        lab.node_ip(0)
    );
    // No client certificate: the handshake is refused (curl exits non-zero).
    let anonymous = lab
        .command(0, "curl")?
        .args(["-sk", "--max-time", "5", &url])
        .output()?;
    ensure!(
        !anonymous.status.success() && anonymous.stdout.is_empty(),
        "an anonymous client read logs: {}",
        String::from_utf8_lossy(&anonymous.stdout)
    );
    // The healthz on loopback answers without one.
    let healthz = lab
        .command(0, "curl")?
        .args(["-s", "--max-time", "5", "http://127.0.0.1:10248/healthz"])
        .output()?;
    ensure!(
        healthz.stdout == b"ok",
        "healthz said {:?}",
        String::from_utf8_lossy(&healthz.stdout)
    );
    Ok(())
}

/// The client certificate and key of `kubeconfig`, written as PEM files into `dir`.
fn client_pair(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<(String, String)> {
    use base64::Engine as _;
    let config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    let mut paths = Vec::new();
    for (field, file) in [
        ("client-certificate-data", "client.crt"),
        ("client-key-data", "client.key"),
    ] {
        let encoded = config["users"][0]["user"][field]
            .as_str()
            .with_context(|| format!("{} has no {field}", kubeconfig.display()))?;
        let path = dir.join(file);
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.decode(encoded)?,
        )?;
        paths.push(path.to_str().context("temp path")?.to_owned());
    }
    Ok((paths[0].clone(), paths[1].clone()))
}

/// GET `path` of node 0's kubelet API with a client certificate: (HTTP status, body).
fn kubelet_get(lab: &Lab, pair: &(String, String), path: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("https://{}:10250{path}", lab.node_ip(0));
    let out = lab
        .command(0, "curl")?
        .args([
            "-sk",
            "--max-time",
            "10",
            "--cert",
            &pair.0,
            "--key",
            &pair.1,
        ])
        .args(["-w", "\n%{http_code}", &url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// `/stats/summary` reports the running pods' containers with their memory, and `/metrics`
/// counts the running pods, for the cluster's masters; a node's own certificate is refused.
fn kubelet_serves_stats_and_metrics(lab: &Lab) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("{}-kubelet-client", lab.name()));
    std::fs::create_dir_all(&dir)?;
    let admin = client_pair(&lab.admin_kubeconfig()?, &dir)?;
    let summary = eventually(lab, "the counter container in /stats/summary", || {
        let (code, body) = kubelet_get(lab, &admin, "/stats/summary")?;
        ensure!(code == 200, "/stats/summary answered {code}: {body}");
        let summary: serde_json::Value = serde_json::from_str(&body)?;
        let counter = summary["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["podRef"]["name"] == "counter" && p["podRef"]["namespace"] == "default")
            .cloned();
        Ok(counter.map(|pod| (summary, pod)))
    })?;
    let (summary, counter) = summary;
    let node = &summary["node"];
    ensure!(
        node["nodeName"] == lab.node_name(0).as_str()
            && node["startTime"].is_string()
            && node["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0)
            && node["memory"]["workingSetBytes"].as_u64() > Some(0)
            && node["fs"]["capacityBytes"].as_u64() > Some(0)
            && node["network"]["interfaces"].is_array(),
        "node stats: {node}"
    );
    let count = counter["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "count")
        .with_context(|| format!("no container count in {counter}"))?;
    ensure!(
        count["memory"]["usageBytes"].as_u64() > Some(0)
            && count["memory"]["workingSetBytes"].as_u64() > Some(0)
            && count["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "the counter container's stats: {count}"
    );
    ensure!(
        counter["podRef"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
            && counter["memory"]["usageBytes"].as_u64() >= count["memory"]["usageBytes"].as_u64()
            && counter["network"]["name"].is_string(),
        "the counter pod's stats: {counter}"
    );

    // kubelet_running_pods is the number of the node's Running pods.
    let selector = format!("spec.nodeName={},status.phase=Running", lab.node_name(0));
    eventually(
        lab,
        "kubelet_running_pods equal to the running pods",
        || {
            let (code, body) = kubelet_get(lab, &admin, "/metrics")?;
            ensure!(code == 200, "/metrics answered {code}: {body}");
            let running: u64 = body
                .lines()
                .find_map(|l| l.strip_prefix("kubelet_running_pods "))
                .context("no kubelet_running_pods sample")?
                .trim()
                .parse()?;
            ensure!(
                body.contains(&format!(
                    "kubelet_node_name{{node=\"{}\"}} 1",
                    lab.node_name(0)
                )) && body.contains("# TYPE kubelet_running_containers gauge")
                    && body.contains("process_resident_memory_bytes "),
                "/metrics: {body}"
            );
            let pods = kubectl(
                lab,
                &[
                    "get",
                    "pods",
                    "-A",
                    "--field-selector",
                    &selector,
                    "-o",
                    "name",
                ],
            )?;
            Ok((running == pods.lines().count() as u64 && running >= 4).then_some(()))
        },
    )?;

    // A node's certificate is the cluster's, but not allowed.
    let node = client_pair(&lab.node_kubeconfig(0)?, &dir)?;
    let (code, _) = kubelet_get(lab, &node, "/stats/summary")?;
    ensure!(
        code == 403,
        "a node's certificate got {code} from /stats/summary"
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// GET `path` of the API server with a client certificate: (HTTP status, content type,
/// body).
fn api_get(
    lab: &Lab,
    pair: &(String, String),
    path: &str,
) -> anyhow::Result<(u16, String, String)> {
    let url = format!("{}{path}", lab.server_url()?);
    let out = lab
        .command(0, "curl")?
        .args([
            "-sk",
            "--max-time",
            "15",
            "--cert",
            &pair.0,
            "--key",
            &pair.1,
        ])
        .args(["-w", "\n%{http_code} %{content_type}", &url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = text.rsplit_once('\n').context("curl printed no status")?;
    let (code, content_type) = trailer.split_once(' ').unwrap_or((trailer, ""));
    Ok((
        code.trim().parse()?,
        content_type.to_owned(),
        body.to_owned(),
    ))
}

/// `nodes/NAME/proxy/...` through the API server reaches the node's kubelet: what the
/// kubelet answers comes back as it is.
fn api_server_proxies_the_node(lab: &Lab) -> anyhow::Result<()> {
    let node = lab.node_name(0);
    let base = format!("/api/v1/nodes/{node}/proxy");

    // kubectl get --raw: the summary has the counter pod, the metrics count running pods.
    let summary: serde_json::Value = serde_json::from_str(&kubectl(
        lab,
        &["get", "--raw", &format!("{base}/stats/summary")],
    )?)?;
    let counter = summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["podRef"]["name"] == "counter" && p["podRef"]["namespace"] == "default")
        .with_context(|| format!("no counter pod in the proxied summary: {summary}"))?;
    ensure!(
        summary["node"]["nodeName"] == node.as_str()
            && summary["node"]["fs"]["capacityBytes"].as_u64() > Some(0)
            && counter["containers"][0]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "the proxied summary: {summary}"
    );
    let metrics = kubectl(lab, &["get", "--raw", &format!("{base}/metrics")])?;
    let running: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_running_pods "))
        .with_context(|| format!("no kubelet_running_pods in the proxied metrics: {metrics}"))?
        .trim()
        .parse()?;
    ensure!(
        running >= 4 && metrics.contains(&format!("kubelet_node_name{{node=\"{node}\"}} 1")),
        "the proxied metrics: {metrics}"
    );

    // The query goes along: only CPU and memory, no file systems.
    let small: serde_json::Value = serde_json::from_str(&kubectl(
        lab,
        &[
            "get",
            "--raw",
            &format!("{base}/stats/summary?only_cpu_and_memory=true"),
        ],
    )?)?;
    ensure!(
        small["node"]["fs"].is_null()
            && small["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "the summary with only_cpu_and_memory: {}",
        small["node"]
    );

    // The NAME:PORT forms naming the kubelet's port reach the kubelet too.
    for id in [format!("{node}:10250"), format!("https:{node}:10250")] {
        let healthz = kubectl(
            lab,
            &["get", "--raw", &format!("/api/v1/nodes/{id}/proxy/healthz")],
        )?;
        ensure!(healthz == "ok", "{id}: /healthz said {healthz:?}");
    }

    // Status, content type and body are the kubelet's, also when it answers 404.
    let dir = std::env::temp_dir().join(format!("{}-node-proxy", lab.name()));
    std::fs::create_dir_all(&dir)?;
    let admin = client_pair(&lab.admin_kubeconfig()?, &dir)?;
    let (code, content_type, body) = api_get(lab, &admin, &format!("{base}/metrics"))?;
    ensure!(
        code == 200
            && content_type == "text/plain; version=0.0.4; charset=utf-8"
            && body.contains("# TYPE kubelet_running_pods gauge"),
        "GET {base}/metrics: {code} {content_type}: {body}"
    );
    let (code, _, body) = api_get(lab, &admin, &format!("{base}/nosuch"))?;
    ensure!(
        code == 404 && body == "404 page not found\n",
        "the kubelet's 404 came back as {code}: {body:?}"
    );

    // An unknown node: a NotFound Status from the API server.
    let (code, content_type, body) = api_get(lab, &admin, "/api/v1/nodes/nosuch/proxy/metrics")?;
    let status: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("not a Status ({code} {content_type}): {body}"))?;
    ensure!(
        code == 404
            && status["kind"] == "Status"
            && status["reason"] == "NotFound"
            && status["message"] == "nodes \"nosuch\" not found",
        "an unknown node: {code} {body}"
    );
    let missing = kubectl_fails(lab, &["get", "--raw", "/api/v1/nodes/nosuch/proxy/metrics"])?;
    ensure!(
        missing.contains("nodes \"nosuch\" not found"),
        "kubectl on an unknown node: {missing}"
    );
    std::fs::remove_dir_all(&dir).ok();

    // Discovery lists the subresource with upstream's kind and verbs.
    let v1: serde_json::Value = serde_json::from_str(&kubectl(lab, &["get", "--raw", "/api/v1"])?)?;
    let proxy = v1["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "nodes/proxy")
        .context("no nodes/proxy in /api/v1")?;
    ensure!(
        proxy["kind"] == "NodeProxyOptions"
            && proxy["verbs"] == json!(["create", "delete", "get", "patch", "update"]),
        "nodes/proxy in discovery: {proxy}"
    );
    Ok(())
}

fn python_client_reads_logs(lab: &Lab) -> anyhow::Result<()> {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python/bin/python");
    ensure!(
        python.exists(),
        "{} is missing: `cargo xtask deps` makes the Python client's virtualenv",
        python.display()
    );
    let script = "import sys\n\
        from kubernetes import client, config\n\
        config.load_kube_config(sys.argv[1])\n\
        api = client.CoreV1Api()\n\
        print(api.read_namespaced_pod_log('counter', 'default', container='count', limit_bytes=21), end='')\n\
        from kubernetes.stream import stream\n\
        ws = stream(api.connect_get_namespaced_pod_exec, 'counter', 'default',\n\
            command=['sh', '-c', 'echo py; exit 4'], stdin=False, stdout=True, stderr=True,\n\
            tty=False, _preload_content=False)\n\
        ws.run_forever(timeout=20)\n\
        print('exec', repr(ws.read_stdout()), ws.returncode)\n";
    let output = lab
        .command(0, &python)?
        .args(["-c", script])
        .arg(lab.admin_kubeconfig()?)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout == "line 1\nline 2\nline 3\nexec 'py\\n' 4\n",
        "the Python client gave {stdout:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
