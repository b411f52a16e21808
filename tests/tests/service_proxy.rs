//! corten-agent's service proxy in a one-node lab with its control plane: Services created
//! with real kubectl, backends are busybox httpd pods, and the agent programs its socket-LB
//! from Services and EndpointSlices. A ClusterIP over TCP reaches every ready backend from a
//! pod and from the node, and the node's client sees the ClusterIP as its peer; a Service
//! without endpoints refuses a connect within 100 ms; ClientIP session affinity sends every
//! connection of one client to one backend (the same client spreads over all backends of a
//! Service without affinity) until the affinity times out; a NodePort answers on the node's
//! address and an externalIP on its own, from the node and from a pod, and the node's own
//! processes may not bind its port (pods may); a terminating backend
//! and one relabelled out of the Service get no new connections (not even from a client whose
//! affinity named one) while connections made to them before keep exchanging data; the
//! affinity survives an agent restart; scaling down stops new connections to the removed
//! backends; the datapath keeps working while the agent is down, a restarted agent reuses
//! the pinned maps, and a client connecting in a loop through the restart loses no
//! connection; a UDP ClusterIP (selector-less, hand-written EndpointSlices
//! naming listeners on the node) reaches both listeners from unconnected and connected
//! sockets, which see the ClusterIP as the answers' source and as their peer; LoadBalancer
//! Services with `externalTrafficPolicy: Local` get healthCheckNodePorts that the node
//! serves with its local endpoint count (200, or 503 with none), released when the policy or
//! the type changes; the node's `/metrics` counts the proxy's syncs and the Service and
//! EndpointSlice changes under kube-proxy's names; deleting the Service undoes the
//! translation.
//!
//! Safety: everything runs inside the lab's namespaces and the socket programs attach to the
//! node's cgroup only; every wait is bounded.
use std::{collections::BTreeSet, process::Output, time::Duration};

use anyhow::{bail, ensure, Context};
use corten_tests::{
    kubectl::{apply, eventually, eventually_within, json, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE},
    scripts::{PYTHON, UDP_BACKEND},
};
use serde_json::Value;

/// How many requests a client makes; with 3 backends chosen at random, missing one in 30
/// tries happens with probability 3·(2/3)^30 ≈ 1.6e-5.
const REQUESTS: usize = 30;
/// The externalIP of Service `outer`.
const EXTERNAL_IP: &str = "203.0.113.10";

/// Connects to `argv[1]:argv[2]`, asks for `/hostname` and prints `PEER BODY`: the peer the
/// socket reports and the backend's answer.
const FETCH_WITH_PEER: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
peer = s.getpeername()
s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
body = data.split(b"\r\n\r\n", 1)[-1].decode().strip()
print(f"{peer[0]}:{peer[1]} {body}")
"#;

/// Connects to `argv[1]:argv[2]` once and prints `ERRNO SECONDS` (errno 0 if it connected).
const CONNECT_TIMED: &str = r#"
import socket, sys, time
s = socket.socket()
s.settimeout(3)
started = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    code = 0
except OSError as e:
    code = e.errno or -1
print(f"{code} {time.monotonic() - started:.6f}")
"#;

/// A UDP client of `argv[1]:argv[2]`: `argv[3]` unconnected sockets send one datagram each
/// (`sendto`/`recvfrom`), then one connected socket does. Prints the answers, the sources the
/// unconnected sockets saw, and the connected socket's peer and answer, `|`-separated.
const UDP_CLIENT: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
answers, sources = set(), set()
for _ in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"who", (ip, port))
    data, source = s.recvfrom(512)
    answers.add(data.decode())
    sources.add(f"{source[0]}:{source[1]}")
    s.close()
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(2)
c.connect((ip, port))
c.send(b"who")
answer = c.recv(512).decode()
peer = c.getpeername()
print(" ".join(sorted(answers)), "|", " ".join(sorted(sources)), "|", f"{peer[0]}:{peer[1]}", answer)
"#;

/// A Python function both connection scripts start with: `fetch(ip, port)` makes one
/// connection, asks for `/hostname`, reads the answer to its end (each read bounded by 3 s)
/// and returns the whole HTTP answer.
macro_rules! fetch_fn {
    () => {
        r#"
import socket
def fetch(ip, port):
    s = socket.create_connection((ip, port), timeout=3)
    s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return data
"#
    };
}

/// Makes `argv[3]` connections to `argv[1]:argv[2]`, one after the other, asks each for
/// `/hostname` and prints the answers, one a line.
const FETCH_MANY: &str = concat!(
    fetch_fn!(),
    r#"
import sys
ip, port = sys.argv[1], int(sys.argv[2])
for _ in range(int(sys.argv[3])):
    data = fetch(ip, port)
    print(data.split(b"\r\n\r\n", 1)[-1].decode().strip(), flush=True)
"#
);

/// Holds one connection to the echo port `argv[1]:argv[2]`: connects up to `argv[4]` times
/// until the backend greets with `argv[3]` (its hostname), prints the greeting, then sends
/// every line of stdin and prints what comes back. Prints `MISSED` if no connection landed
/// there. Every read is bounded by the socket timeout.
const HOLD_ECHO: &str = r#"
import socket, sys
ip, port, wanted = sys.argv[1], int(sys.argv[2]), sys.argv[3]
held = None
for _ in range(int(sys.argv[4])):
    s = socket.create_connection((ip, port), timeout=30)
    f = s.makefile("rwb")
    hello = f.readline().decode().strip()
    if hello == wanted:
        held = (s, f)
        break
    s.close()
if held is None:
    print("MISSED", flush=True)
    sys.exit(1)
s, f = held
print(hello, flush=True)
for line in sys.stdin:
    f.write(line.encode())
    f.flush()
    print(f.readline().decode().strip(), flush=True)
"#;

/// The backend pods: busybox httpd on 8080 (answers `/hostname` with the pod name) and a TCP
/// echo on 9000 that greets with the pod name; SIGTERM is ignored, so a deleted pod keeps
/// serving until its grace period ends.
const WEB_COMMAND: &str = "trap '' TERM; nc -ll -p 9000 -e sh -c 'cat /etc/hostname; exec cat' & httpd -f -p 8080 -h /etc";

/// One GET of `http://argv[1]:argv[2]/healthz`: prints `CODE BODY` (the body on one line),
/// or `REFUSED` when nothing listens.
const HEALTH_GET: &str = r#"
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/healthz", timeout=3) as r:
        code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
except (ConnectionRefusedError, urllib.error.URLError):
    print("REFUSED")
    sys.exit(0)
print(code, body.decode().replace("\n", " "))
"#;

/// Connects to `argv[1]:argv[2]` again and again (each asks for `/hostname` and reads the
/// whole answer) until stdin closes, for at most `argv[3]` seconds and `argv[4]`
/// connections; prints `OK FAILED FIRST-ERROR`.
const CONNECT_LOOP: &str = concat!(
    fetch_fn!(),
    r#"
import select, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
deadline, limit = time.monotonic() + float(sys.argv[3]), int(sys.argv[4])
ok, failed, first = 0, 0, "-"
while ok + failed < limit and time.monotonic() < deadline:
    if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
        break
    try:
        data = fetch(ip, port)
        if not data.startswith(b"HTTP/1.") or b" 200 " not in data.split(b"\r\n", 1)[0]:
            raise OSError(f"answer {data[:40]!r}")
        ok += 1
    except OSError as e:
        failed += 1
        if first == "-":
            first = repr(e).replace(" ", "_")
    time.sleep(0.02)
print(ok, failed, first, flush=True)
"#
);

/// Binds a socket of protocol `argv[2]` (`tcp` or `udp`) to port `argv[1]` on every address
/// and prints the errno (0 if the bind worked).
const BIND_TRY: &str = r#"
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[2] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print(0)
except OSError as e:
    print(e.errno)
"#;

/// Kills a helper process even when an assertion fails.
struct Reaped(std::process::Child);

impl Reaped {
    /// Waits for the process to end by itself (it must be bounded) and returns its output.
    fn finish(mut self) -> anyhow::Result<String> {
        use std::io::Read;
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        self.0.wait()?;
        Ok(out.trim().to_owned())
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A connection held open to one backend's echo port by [`HOLD_ECHO`] on the node.
struct Holder {
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
    _process: Reaped,
}

impl Holder {
    /// Connects to `ip:9000` until the connection lands on pod `wanted` (up to 40 tries: with
    /// 3 backends at random, missing one has probability (2/3)^40 ≈ 9e-8) and checks that it
    /// echoes.
    fn connect(lab: &Lab, ip: &str, wanted: &str) -> anyhow::Result<Self> {
        let mut child = lab
            .command(0, PYTHON)?
            .arg("-c")
            .arg(HOLD_ECHO)
            .args([ip, "9000", wanted, "40"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let to = child.stdin.take().context("no stdin")?;
        let from = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
        let mut holder = Self {
            to,
            from,
            _process: Reaped(child),
        };
        let greeting = holder.read()?;
        ensure!(
            greeting == wanted,
            "the held connection landed on {greeting:?}, not {wanted}"
        );
        ensure!(
            holder.exchange("before")? == "before",
            "the connection held to {wanted} did not echo"
        );
        Ok(holder)
    }

    /// Sends one line and returns the echo (bounded by the client's socket timeout).
    fn exchange(&mut self, line: &str) -> anyhow::Result<String> {
        use std::io::Write;
        writeln!(self.to, "{line}")?;
        self.to.flush()?;
        self.read()
    }

    fn read(&mut self) -> anyhow::Result<String> {
        use std::io::BufRead;
        let mut answer = String::new();
        self.from.read_line(&mut answer)?;
        Ok(answer.trim().to_owned())
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn python(lab: &Lab, script: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(lab
        .command(0, PYTHON)?
        .arg("-c")
        .arg(script)
        .args(args)
        .output()?)
}

/// One request from the node (busybox wget in the node's cgroup); the answer, if any.
fn fetch_from_node(lab: &Lab, url: &str) -> anyhow::Result<Option<String>> {
    let output = lab
        .command(0, "busybox")?
        .args(["timeout", "3", "busybox", "wget", "-q", "-O", "-", url])
        .output()?;
    Ok(output.status.success().then(|| text(&output)))
}

/// `count` answers of [`FETCH_MANY`] from the node to `ip:port`.
fn fetch_many(lab: &Lab, ip: &str, port: u16, count: usize) -> anyhow::Result<Vec<String>> {
    let output = python(
        lab,
        FETCH_MANY,
        &[ip, &port.to_string(), &count.to_string()],
    )?;
    ensure!(
        output.status.success(),
        "fetching {ip}:{port} {count} times failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<String> = text(&output).lines().map(str::to_owned).collect();
    ensure!(answers.len() == count, "got {answers:?} from {ip}:{port}");
    Ok(answers)
}

/// The endpoints of Service `web`'s slices, all slices together.
fn web_endpoints(lab: &Lab) -> anyhow::Result<Vec<Value>> {
    let slices = json(
        lab,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    )?;
    let items = slices["items"].as_array().into_iter().flatten();
    Ok(items
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .collect())
}

/// The conditions of the endpoint with address `ip` in Service `web`'s slices.
fn endpoint_conditions(lab: &Lab, ip: &str) -> anyhow::Result<Option<Value>> {
    Ok(web_endpoints(lab)?
        .into_iter()
        .find(|endpoint| endpoint["addresses"][0].as_str() == Some(ip))
        .map(|endpoint| endpoint["conditions"].clone()))
}

/// Runs a busybox pod that fetches each of `urls` `count` times and returns its answers
/// (`FAILED` for a failed request) once it has finished.
fn pod_fetches(lab: &Lab, name: &str, urls: &[&str], count: usize) -> anyhow::Result<Vec<String>> {
    let loops: Vec<String> = urls
        .iter()
        .map(|url| {
            format!(
                "for i in $(seq 1 {count}); do timeout 3 wget -q -O - {url} || echo FAILED; echo; done"
            )
        })
        .collect();
    apply(
        lab,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
            "spec": {{"restartPolicy": "Never", "containers": [{{"name": "client",
              "image": "{BUSYBOX_IMAGE}", "command": ["sh", "-c", "{}"]}}]}}}}"#,
            loops.join("; ")
        ),
    )?;
    eventually(lab, &format!("pod {name} to finish"), || {
        let pod = json(lab, &["get", "pod", name])?;
        Ok(matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
        .then_some(()))
    })?;
    let logs = kubectl(lab, &["logs", name])?;
    Ok(logs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn cluster_ip(lab: &Lab, service: &str) -> anyhow::Result<String> {
    let service = json(lab, &["get", "service", service])?;
    service["spec"]["clusterIP"]
        .as_str()
        .map(str::to_owned)
        .context("the Service has no clusterIP")
}

/// Names of the Running, ready pods labelled `app=web`, once there are exactly `count` pods.
fn ready_web_pods(lab: &Lab, count: usize) -> anyhow::Result<Option<BTreeSet<String>>> {
    let pods = json(lab, &["get", "pods", "-l", "app=web"])?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let ready: BTreeSet<String> = items
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["phase"] == "Running")
        .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    Ok((items.len() == count && ready.len() == count).then_some(ready))
}

/// The ready endpoint addresses of Service `web`'s slices.
fn ready_endpoints(lab: &Lab) -> anyhow::Result<BTreeSet<String>> {
    Ok(web_endpoints(lab)?
        .iter()
        .filter(|endpoint| endpoint["conditions"]["ready"] != Value::Bool(false))
        .filter_map(|endpoint| endpoint["addresses"][0].as_str().map(str::to_owned))
        .collect())
}

/// `REQUESTS` answers from the node, polled until every one of them is in `expected` and all
/// of `expected` answered (the datapath follows the API within a moment).
fn node_answers_converge(
    lab: &Lab,
    url: &str,
    expected: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    eventually(
        lab,
        &format!("{url} to answer from exactly {expected:?}"),
        || {
            let mut seen = BTreeSet::new();
            for _ in 0..REQUESTS {
                match fetch_from_node(lab, url)? {
                    Some(answer) => {
                        seen.insert(answer);
                    }
                    None => bail!("a request to {url} failed"),
                }
            }
            if &seen != expected {
                bail!("answers came from {seen:?}");
            }
            Ok(Some(seen))
        },
    )
}

#[test]
fn cluster_ips_are_load_balanced_by_the_socket_programs() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut lab = Lab::up_ready(LabSpec::cluster_for_test(
        &format!("svcproxy-{}", std::process::id()),
        1,
    ))?;

    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {{"name": "web"}},
            "spec": {{"replicas": 3, "selector": {{"matchLabels": {{"app": "web"}}}},
              "template": {{"metadata": {{"labels": {{"app": "web"}}}},
                "spec": {{"terminationGracePeriodSeconds": 1,
                  "containers": [{{"name": "httpd", "image": "{BUSYBOX_IMAGE}",
                  "command": ["sh", "-c", "{WEB_COMMAND}"],
                  "ports": [{{"containerPort": 8080}}, {{"containerPort": 9000}}]}}]}}}}}}}}"#
        ),
    )?;
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
          "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
              {"name": "echo", "port": 9000, "targetPort": 9000, "protocol": "TCP"}]}}"#,
    )?;
    // ClientIP affinity with the default timeout (3 hours), and with a 1-second one.
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sticky"},
          "spec": {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}"#,
    )?;
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "brief"},
          "spec": {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}"#,
    )?;
    // A NodePort that also answers on an externalIP (TEST-NET-3: translated at connect, so
    // no packet to it is ever sent).
    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "outer"}},
            "spec": {{"type": "NodePort", "selector": {{"app": "web"}},
              "externalIPs": ["{EXTERNAL_IP}"],
              "ports": [{{"port": 80, "targetPort": 8080, "protocol": "TCP"}}]}}}}"#
        ),
    )?;
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
          "spec": {"selector": {"app": "nothing-has-this-label"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}"#,
    )?;
    let web_ip = cluster_ip(&lab, "web")?;
    let empty_ip = cluster_ip(&lab, "empty")?;
    let url = format!("http://{web_ip}:80/hostname");

    let backends = eventually(&lab, "three ready web pods", || ready_web_pods(&lab, 3))?;
    eventually(&lab, "three ready endpoints", || {
        Ok((ready_endpoints(&lab)?.len() == 3).then_some(()))
    })?;

    // From the node: every ready backend answers, nothing else does.
    let seen = node_answers_converge(&lab, &url, &backends)?;
    println!("node reached {seen:?} through {web_ip}");

    // The node's client sees the ClusterIP as its peer, not the backend.
    let output = python(&lab, FETCH_WITH_PEER, &[&web_ip, "80"])?;
    ensure!(output.status.success(), "python client failed: {output:?}");
    let answer = text(&output);
    let (peer, body) = answer
        .split_once(' ')
        .with_context(|| format!("unexpected client output {answer:?}"))?;
    ensure!(
        peer == format!("{web_ip}:80"),
        "getpeername said {peer}, not the ClusterIP {web_ip}:80"
    );
    ensure!(backends.contains(body), "answer {body:?} from no backend");

    // From a pod: the same Service, every backend.
    apply(
        &lab,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "client"}},
            "spec": {{"restartPolicy": "Never", "containers": [{{"name": "client",
              "image": "{BUSYBOX_IMAGE}", "command": ["sh", "-c",
              "for i in $(seq 1 {REQUESTS}); do timeout 3 wget -q -O - {url} || echo FAILED; echo; done"]}}]}}}}"#
        ),
    )?;
    eventually(&lab, "the client pod to finish", || {
        let pod = json(&lab, &["get", "pod", "client"])?;
        Ok(matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
        .then_some(()))
    })?;
    let logs = kubectl(&lab, &["logs", "client"])?;
    let answers: Vec<&str> = logs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    println!("pod answers: {answers:?}");
    ensure!(
        answers.len() == REQUESTS,
        "the client pod got {} answers: {logs:?}",
        answers.len()
    );
    let from_pod: BTreeSet<String> = answers.iter().map(|a| (*a).to_owned()).collect();
    ensure!(
        from_pod == backends,
        "the pod reached {from_pod:?}, not every backend of {backends:?}"
    );

    // No endpoints: the connect fails with ECONNREFUSED at once.
    let mut fastest = f64::MAX;
    for _ in 0..3 {
        let output = python(&lab, CONNECT_TIMED, &[&empty_ip, "80"])?;
        let result = text(&output);
        let (errno, seconds) = result
            .split_once(' ')
            .with_context(|| format!("unexpected output {output:?}"))?;
        ensure!(
            errno == "111",
            "connect to a Service without endpoints gave errno {errno}, not ECONNREFUSED"
        );
        let seconds: f64 = seconds.parse()?;
        ensure!(seconds < 0.1, "the refusal took {seconds} s");
        fastest = fastest.min(seconds);
    }
    println!("a Service without endpoints refused in {fastest:.6} s");

    // Session affinity: one client (the node's namespace) spreads over every backend of a
    // Service without affinity, but sends every connection of a ClientIP Service to one.
    let spread: BTreeSet<String> = fetch_many(&lab, &web_ip, 80, REQUESTS)?
        .into_iter()
        .collect();
    ensure!(
        spread == backends,
        "without affinity one client reached {spread:?}, not every backend of {backends:?}"
    );
    let sticky_ip = cluster_ip(&lab, "sticky")?;
    eventually(&lab, "the sticky Service to answer", || {
        Ok(fetch_many(&lab, &sticky_ip, 80, 1)?.pop())
    })?;
    let stuck: BTreeSet<String> = fetch_many(&lab, &sticky_ip, 80, REQUESTS)?
        .into_iter()
        .collect();
    ensure!(
        stuck.len() == 1 && stuck.is_subset(&backends),
        "with ClientIP affinity one client reached {stuck:?}"
    );
    let pinned = stuck.into_iter().next().context("no answer")?;
    println!("ClientIP affinity: every connection went to {pinned}");
    // A 1-second affinity holds while the client keeps connecting, and ends after a second
    // without connections: then a new pick is made (with 3 backends, 8 picks all landing on
    // the same one has probability (1/3)^8 ≈ 1.5e-4).
    let brief_ip = cluster_ip(&lab, "brief")?;
    eventually(&lab, "the brief Service to answer", || {
        Ok(fetch_many(&lab, &brief_ip, 80, 1)?.pop())
    })?;
    // Back to back from one process, so that no gap reaches the timeout.
    let burst: BTreeSet<String> = fetch_many(&lab, &brief_ip, 80, 11)?.into_iter().collect();
    ensure!(
        burst.len() == 1,
        "within the timeout the client moved between {burst:?}"
    );
    let first = burst.into_iter().next().context("no answer")?;
    let mut after_timeout = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1_300));
        after_timeout.extend(fetch_many(&lab, &brief_ip, 80, 1)?);
        if after_timeout.iter().any(|b| *b != first) {
            break;
        }
    }
    ensure!(
        after_timeout.iter().any(|b| *b != first),
        "after the affinity timeout every pick was still {first}: {after_timeout:?}"
    );
    println!("a 1-second affinity expired: {first} then {after_timeout:?}");

    // NodePort on the node's address and the externalIP, from the node and from a pod.
    let outer = json(&lab, &["get", "service", "outer"])?;
    let node_port = outer["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("Service outer has no nodePort")?;
    let node_ip = lab.node_ip(0).to_string();
    let node_port_url = format!("http://{node_ip}:{node_port}/hostname");
    let external_url = format!("http://{EXTERNAL_IP}:80/hostname");
    let via_node_port = node_answers_converge(&lab, &node_port_url, &backends)?;
    let via_external = node_answers_converge(&lab, &external_url, &backends)?;
    println!("from the node: {node_port_url} reached {via_node_port:?}, {external_url} reached {via_external:?}");
    let answers = pod_fetches(&lab, "outer-client", &[&node_port_url, &external_url], 10)?;
    ensure!(
        answers.len() == 20 && answers.iter().all(|a| backends.contains(a)),
        "from a pod the NodePort and externalIP gave {answers:?}"
    );
    let from_pod: BTreeSet<&String> = answers.iter().collect();
    println!("from a pod: NodePort and externalIP reached {from_pod:?}");
    node_ports_are_protected_from_binds(&lab, u64::from(node_port))?;

    // The datapath is pinned: it keeps working while the agent is down, and the restarted
    // agent reuses the pinned maps (the Service keeps its backends). A client connecting in
    // a loop through the whole restart loses no connection.
    let mut looping = lab
        .command(0, PYTHON)?
        .arg("-c")
        .arg(CONNECT_LOOP)
        .args([web_ip.as_str(), "80", "90", "3000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stop_loop = looping.stdin.take().context("no stdin")?;
    let looping = Reaped(looping);
    std::thread::sleep(Duration::from_secs(1));
    lab.kill_agent(0)?;
    let while_down = fetch_from_node(&lab, &url)?;
    ensure!(
        while_down.as_ref().is_some_and(|a| backends.contains(a)),
        "with the agent down the ClusterIP answered {while_down:?}"
    );
    lab.start_agent(0)?;
    node_answers_converge(&lab, &url, &backends)?;
    // The pinned datapath answers before the new agent gets to its maps, so wait for it.
    eventually_within(
        &lab,
        Duration::from_secs(60),
        "the restarted agent to read the pinned maps back",
        || {
            let log = std::fs::read_to_string(lab.paths().agent_log(0))?;
            Ok(log
                .contains("reusing the pinned service maps")
                .then_some(()))
        },
    )?;
    // Past the restarted agent's first sync too.
    eventually_within(
        &lab,
        Duration::from_secs(60),
        "the restarted agent to sync its watches",
        || {
            let log = std::fs::read_to_string(lab.paths().agent_log(0))?;
            Ok((log.matches("service proxy synced its watches").count() >= 2).then_some(()))
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    drop(stop_loop);
    let looped = looping.finish()?;
    let counts: Vec<&str> = looped.split_whitespace().collect();
    ensure!(
        counts.get(1) == Some(&"0")
            && counts.first().and_then(|n| n.parse::<u32>().ok()) > Some(20),
        "connections through the agent restart (ok failed first-error): {looped}"
    );
    println!("through the agent restart: {looped}");
    lab.check_agents()?;

    // Ending backends: one is deleted (terminating, still serving for its grace period), one
    // is relabelled out of the Service (its endpoint is removed, the pod keeps running). A
    // connection held open to each keeps exchanging data, while no new connection lands on
    // either, not even one from a client whose affinity names the terminating one (the one
    // the node's sticky affinity points to).
    let victim = fetch_many(&lab, &sticky_ip, 80, 1)?
        .pop()
        .context("no sticky answer")?;
    ensure!(
        victim == pinned,
        "the sticky client moved from {pinned} to {victim}"
    );
    let orphan = backends
        .iter()
        .find(|b| **b != victim)
        .cloned()
        .context("only one backend")?;
    let pod_ip = |pod: &str| -> anyhow::Result<String> {
        json(&lab, &["get", "pod", pod])?["status"]["podIP"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("pod {pod} has no IP"))
    };
    let (victim_ip, orphan_ip) = (pod_ip(&victim)?, pod_ip(&orphan)?);
    let mut to_victim = Holder::connect(&lab, &web_ip, &victim)?;
    let mut to_orphan = Holder::connect(&lab, &web_ip, &orphan)?;
    kubectl(
        &lab,
        &[
            "delete",
            "pod",
            &victim,
            "--grace-period=30",
            "--wait=false",
        ],
    )?;
    kubectl(
        &lab,
        &["label", "pod", &orphan, "app=orphaned", "--overwrite"],
    )?;
    let conditions =
        eventually(&lab, "the victim's endpoint to be terminating", || {
            Ok(endpoint_conditions(&lab, &victim_ip)?
                .filter(|c| c["terminating"] == Value::Bool(true)))
        })?;
    println!("{victim} is terminating: {conditions}");
    eventually(&lab, "the orphan's endpoint to be removed", || {
        Ok(endpoint_conditions(&lab, &orphan_ip)?
            .is_none()
            .then_some(()))
    })?;
    let ended = [&victim, &orphan];
    eventually(&lab, "new connections to avoid the ending backends", || {
        let answers = fetch_many(&lab, &web_ip, 80, REQUESTS)?;
        Ok((!answers.iter().any(|a| ended.contains(&a))).then_some(()))
    })?;
    for (ip, count) in [(&web_ip, REQUESTS), (&sticky_ip, 10)] {
        let answers = fetch_many(&lab, ip, 80, count)?;
        ensure!(
            !answers.iter().any(|a| ended.contains(&a)),
            "a new connection to {ip} reached {victim} or {orphan}: {answers:?}"
        );
    }
    let moved: BTreeSet<String> = fetch_many(&lab, &sticky_ip, 80, 10)?.into_iter().collect();
    ensure!(
        moved.len() == 1,
        "the sticky client did not settle on one new backend: {moved:?}"
    );
    for (holder, pod) in [(&mut to_victim, &victim), (&mut to_orphan, &orphan)] {
        ensure!(
            holder.exchange("after")? == "after",
            "the connection held to {pod} stopped echoing"
        );
    }
    println!(
        "held connections to terminating {victim} and removed {orphan} still echo; \
         the sticky client moved to {moved:?}"
    );
    drop((to_victim, to_orphan));
    kubectl(&lab, &["delete", "pod", &orphan, "--wait=false"])?;

    // Scale down: the removed backends get no new connections.
    let before = ProxyMetrics::scrape(&lab)?;
    kubectl(&lab, &["scale", "replicaset", "web", "--replicas=1"])?;
    let remaining = eventually(&lab, "one web pod left", || ready_web_pods(&lab, 1))?;
    node_answers_converge(&lab, &url, &remaining)?;
    println!("after scaling down only {remaining:?} answers");
    // The agent's /metrics (through the API server's node proxy) counts the syncs and the
    // changes as kube-proxy's do: the restarted agent listed the six Services, and the
    // scaling changed the web Service's slice.
    let after = ProxyMetrics::scrape(&lab)?;
    ensure!(
        after.endpoint_changes > before.endpoint_changes
            && after.syncs > before.syncs
            && after.last_sync > before.last_sync
            && before.service_changes >= 6.0
            && after.failures == 0.0,
        "the proxy metrics before and after scaling: {before:?} {after:?}"
    );

    // UDP: a selector-less Service whose EndpointSlices name two listeners on the node;
    // unconnected sockets reach both and see the ClusterIP as the source of the answers, a
    // connected socket sees it as its peer.
    let _udp_backends = [9053, 9054]
        .map(|port| -> anyhow::Result<Reaped> {
            Ok(Reaped(
                lab.command_outside_cgroup(0, PYTHON)?
                    .arg("-c")
                    .arg(UDP_BACKEND)
                    .args([node_ip.as_str(), &port.to_string()])
                    .spawn()?,
            ))
        })
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    apply(
        &lab,
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "udp"},
          "spec": {"ports": [{"name": "echo", "port": 53, "protocol": "UDP"}]}}"#,
    )?;
    for port in [9053, 9054] {
        apply(
            &lab,
            &format!(
                r#"{{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {{"name": "udp-{port}", "labels": {{"kubernetes.io/service-name": "udp"}}}},
                "addressType": "IPv4",
                "ports": [{{"name": "echo", "port": {port}, "protocol": "UDP"}}],
                "endpoints": [{{"addresses": ["{node_ip}"], "conditions": {{"ready": true}}}}]}}"#
            ),
        )?;
    }
    let udp_ip = cluster_ip(&lab, "udp")?;
    let expected = format!("udp-9053 udp-9054 | {udp_ip}:53 | {udp_ip}:53 udp-");
    let udp = eventually(&lab, "UDP answers from both backends", || {
        let output = python(&lab, UDP_CLIENT, &[&udp_ip, "53", &REQUESTS.to_string()])?;
        let result = text(&output);
        if !output.status.success() || !result.starts_with(&expected) {
            bail!(
                "UDP client: {result:?} {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Some(result))
    })?;
    println!("UDP through {udp_ip}: {udp}");

    health_check_node_ports(&lab, &node_ip)?;

    // Deleting the Service removes the translation: the ClusterIP leads nowhere.
    kubectl(&lab, &["delete", "service", "web"])?;
    eventually(&lab, "the deleted Service to stop answering", || {
        Ok(fetch_from_node(&lab, &url)?.is_none().then_some(()))
    })?;

    // The pinned maps and attachments lived on the node's own bpffs and go with it.
    lab.down_checked()
}

/// The service proxy's figures in the node's `/metrics`.
#[derive(Debug)]
struct ProxyMetrics {
    syncs: f64,
    last_sync: f64,
    service_changes: f64,
    endpoint_changes: f64,
    failures: f64,
}

impl ProxyMetrics {
    fn scrape(lab: &Lab) -> anyhow::Result<Self> {
        let path = format!("/api/v1/nodes/{}/proxy/metrics", lab.node_name(0));
        let text = kubectl(lab, &["get", "--raw", &path])?;
        let value = |series: &str| -> anyhow::Result<f64> {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .with_context(|| format!("no {series} in the node's metrics: {text}"))?
                .parse()
                .with_context(|| format!("{series} in the node's metrics"))
        };
        let metrics = Self {
            syncs: value("kubeproxy_sync_proxy_rules_duration_seconds_count")?,
            last_sync: value("kubeproxy_sync_proxy_rules_last_timestamp_seconds")?,
            service_changes: value("kubeproxy_sync_proxy_rules_service_changes_total")?,
            endpoint_changes: value("kubeproxy_sync_proxy_rules_endpoint_changes_total")?,
            failures: value("corten_proxy_sync_failures_total")?,
        };
        // The last sync happened during this test, by this machine's clock.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        ensure!(
            metrics.last_sync > now - 3600.0 && metrics.last_sync <= now + 1.0,
            "the last sync time {} is not recent (now {now})",
            metrics.last_sync
        );
        Ok(metrics)
    }
}

/// The node's answer on a healthCheckNodePort: status code and JSON body, or none when
/// nothing listens there.
fn health_answer(lab: &Lab, node_ip: &str, port: u64) -> anyhow::Result<Option<(u16, Value)>> {
    let output = python(lab, HEALTH_GET, &[node_ip, &port.to_string()])?;
    let answer = text(&output);
    ensure!(
        output.status.success(),
        "health check client failed: {answer} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if answer == "REFUSED" {
        return Ok(None);
    }
    let (code, body) = answer
        .split_once(' ')
        .with_context(|| format!("unexpected health answer {answer:?}"))?;
    Ok(Some((code.parse()?, serde_json::from_str(body)?)))
}

fn health_check_port(lab: &Lab, service: &str) -> anyhow::Result<Option<u64>> {
    Ok(json(lab, &["get", "service", service])?["spec"]["healthCheckNodePort"].as_u64())
}

fn local_load_balancer(name: &str, selector: &str, health_check_port: Option<u64>) -> String {
    let requested = health_check_port
        .map(|p| format!(r#""healthCheckNodePort": {p},"#))
        .unwrap_or_default();
    format!(
        r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "{name}"}},
        "spec": {{"type": "LoadBalancer", "externalTrafficPolicy": "Local", {requested}
          "selector": {{"app": "{selector}"}},
          "ports": [{{"port": 80, "targetPort": 8080, "protocol": "TCP"}}]}}}}"#
    )
}

/// healthCheckNodePorts: a LoadBalancer Service with `externalTrafficPolicy: Local` gets one
/// from the NodePort range, and the node answers on it as kube-proxy does: 200 with its count
/// of local endpoints, 503 with none. Another Service may not take the port; changing the
/// policy to Cluster drops and releases it (the node stops answering, another Service can ask
/// for it); changing the type to ClusterIP drops the node ports too.
fn health_check_node_ports(lab: &Lab, node_ip: &str) -> anyhow::Result<()> {
    let local = ready_endpoints(lab)?.len();
    ensure!(local > 0, "no ready web endpoint left for the health check");
    apply(lab, &local_load_balancer("lb-local", "web", None))?;
    apply(
        lab,
        &local_load_balancer("lb-none", "nothing-has-this-label", None),
    )?;
    let local_port =
        health_check_port(lab, "lb-local")?.context("lb-local has no healthCheckNodePort")?;
    let none_port =
        health_check_port(lab, "lb-none")?.context("lb-none has no healthCheckNodePort")?;
    let node_port = json(lab, &["get", "service", "lb-local"])?["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .context("lb-local has no nodePort")?;
    ensure!(
        [local_port, none_port]
            .iter()
            .all(|p| (30000..=32767).contains(p))
            && local_port != none_port
            && local_port != node_port,
        "healthCheckNodePorts {local_port} and {none_port} (nodePort {node_port})"
    );
    let expected = |name: &str, count: usize| {
        serde_json::json!({"service": {"namespace": "default", "name": name},
            "localEndpoints": count, "serviceProxyHealthy": true})
    };
    let answered = |port: u64, code: u16, body: Value| -> anyhow::Result<Option<()>> {
        let answer = health_answer(lab, node_ip, port)?;
        if answer.as_ref() != Some(&(code, body.clone())) {
            bail!("port {port} answered {answer:?}, not {code} {body}");
        }
        Ok(Some(()))
    };
    eventually(lab, "lb-local's health check to answer 200", || {
        answered(local_port, 200, expected("lb-local", local))
    })?;
    eventually(lab, "lb-none's health check to answer 503", || {
        answered(none_port, 503, expected("lb-none", 0))
    })?;
    println!("health checks: {local_port} -> 200 with {local} local endpoints, {none_port} -> 503");

    let refused = apply(
        lab,
        &local_load_balancer("lb-thief", "web", Some(local_port)),
    );
    let message = format!("{refused:?}");
    ensure!(
        refused.is_err() && message.contains("provided port is already allocated"),
        "a second Service asking for port {local_port}: {message}"
    );

    kubectl(
        lab,
        &[
            "patch",
            "service",
            "lb-local",
            "--type",
            "merge",
            "-p",
            r#"{"spec": {"externalTrafficPolicy": "Cluster"}}"#,
        ],
    )?;
    ensure!(
        health_check_port(lab, "lb-local")?.is_none(),
        "lb-local kept its healthCheckNodePort with the Cluster policy"
    );
    eventually(lab, "the dropped health check port to close", || {
        Ok(health_answer(lab, node_ip, local_port)?
            .is_none()
            .then_some(()))
    })?;
    apply(
        lab,
        &local_load_balancer("lb-reuse", "nothing-has-this-label", Some(local_port)),
    )?;
    eventually(lab, "the released port to serve lb-reuse", || {
        answered(local_port, 503, expected("lb-reuse", 0))
    })?;

    kubectl(
        lab,
        &[
            "patch",
            "service",
            "lb-none",
            "--type",
            "merge",
            "-p",
            r#"{"spec": {"type": "ClusterIP"}}"#,
        ],
    )?;
    let spec = json(lab, &["get", "service", "lb-none"])?["spec"].clone();
    ensure!(
        spec["ports"][0].get("nodePort").is_none()
            && spec.get("healthCheckNodePort").is_none()
            && spec.get("externalTrafficPolicy").is_none(),
        "lb-none as a ClusterIP Service kept {spec}"
    );
    eventually(lab, "lb-none's health check port to close", || {
        Ok(health_answer(lab, node_ip, none_port)?
            .is_none()
            .then_some(()))
    })?;
    kubectl(
        lab,
        &["delete", "service", "lb-local", "lb-none", "lb-reuse"],
    )?;
    Ok(())
}

/// NodePort bind protection: on the node a TCP bind to the NodePort fails with EADDRINUSE,
/// while a UDP bind to it and a TCP bind to a port no NodePort uses work; a pod (its own
/// network namespace) may bind the port.
fn node_ports_are_protected_from_binds(lab: &Lab, node_port: u64) -> anyhow::Result<()> {
    let bind = |port: u64, protocol: &str| -> anyhow::Result<String> {
        let output = python(lab, BIND_TRY, &[&port.to_string(), protocol])?;
        ensure!(output.status.success(), "bind client failed: {output:?}");
        Ok(text(&output))
    };
    let free = if node_port == 30000 {
        30001
    } else {
        node_port - 1
    };
    let answers = [
        bind(node_port, "tcp")?,
        bind(node_port, "udp")?,
        bind(free, "tcp")?,
    ];
    ensure!(
        answers == ["98", "0", "0"],
        "binds on the node to tcp/{node_port}, udp/{node_port}, tcp/{free} gave errnos {answers:?} (want 98, 0, 0)"
    );
    let pods = json(lab, &["get", "pods", "-l", "app=web"])?;
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .context("no web pod")?
        .to_owned();
    let script = format!("timeout 1 nc -l -p {node_port} 2>&1; echo exit=$?");
    let answer = kubectl(lab, &["exec", &pod, "--", "sh", "-c", &script])?;
    ensure!(
        !answer.contains("in use") && answer.contains("exit=143"),
        "pod {pod} could not listen on {node_port}: {answer}"
    );
    println!("NodePort {node_port}: the node may not bind it (EADDRINUSE), pod {pod} may");
    Ok(())
}
