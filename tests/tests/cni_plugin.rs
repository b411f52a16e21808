//! `corten-cni` on the real kernel: the built binary, run exactly as a runtime runs it
//! (`CNI_*` variables, configuration on stdin, JSON on stdout), always inside a "node"
//! network namespace this test created, with pods in namespaces of their own. Covers every
//! command, the result against what the kernel holds, pod-to-pod and pod-to-node traffic,
//! the error codes, idempotent DEL, rollback of a failed ADD, GC, 500 ADD/DEL cycles and 20
//! concurrent ADDs; and last, containerd itself running the plugin for pod sandboxes in a lab
//! node.
//!
//! Safety: every namespace here is named `corten-cni-t<pid>-…` and deleted on drop (also
//! when a test panics); nothing is added to the root namespace; `ip_forward` is turned on
//! only inside the test's own node namespaces. Every wait is bounded.
use std::{
    collections::BTreeSet,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

/// The `CNI_*` variables; cleared before every call so the test's environment cannot leak in.
const CNI_VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];
/// The pods' gateway, as the plugin sets it up.
const GATEWAY: &str = "169.254.1.1";
/// The address the node namespace gives itself: its subnet's `.1`, which the plugin never
/// hands out.
const NODE_ADDRESS: &str = "10.42.9.1";

/// Builds `corten-cni` once per test run and returns its path.
fn plugin_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_plugin().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_plugin() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has a parent directory")?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "corten-cni"])
        .current_dir(&root)
        .status()
        .context("running cargo build -p corten-cni")?;
    ensure!(
        status.success(),
        "cargo build -p corten-cni failed: {status}"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("debug/corten-cni");
    ensure!(binary.is_file(), "{} was not built", binary.display());
    Ok(binary)
}

/// Runs a command to completion; fails with its output when it fails.
fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// A network namespace this test created; deleted when dropped.
#[derive(Debug)]
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS`, its stdout.
    fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = run(Command::new("ip").arg("-n").arg(&self.name).args(args))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `ip -j -n NAME ARGS`, parsed.
    fn ip_json(&self, args: &[&str]) -> anyhow::Result<Vec<Value>> {
        let output = run(Command::new("ip").args(["-j", "-n", &self.name]).args(args))?;
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&output.stdout).context("parsing ip -j")
    }

    /// A command inside the namespace.
    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Whether `busybox ping -c1` from here reaches `address` (bounded: one probe, 1 s).
    fn pings(&self, address: &str) -> anyhow::Result<bool> {
        let output = Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.name])
            .args(["busybox", "ping", "-c1", "-W1", address])
            .output()
            .context("running busybox ping")?;
        Ok(output.status.success())
    }

    fn link_names(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .ip_json(&["link", "show"])?
            .iter()
            .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One plugin invocation's outcome.
#[derive(Debug)]
struct Call {
    success: bool,
    json: Value,
    stderr: String,
}

impl Call {
    fn from_output(output: &Output) -> anyhow::Result<Self> {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .with_context(|| format!("stdout is not JSON: {stdout}"))?
        };
        Ok(Self {
            success: output.status.success(),
            json,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// The result of a call that had to succeed.
    fn ok(self) -> anyhow::Result<Value> {
        ensure!(
            self.success,
            "the plugin failed: {} {}",
            self.json,
            self.stderr
        );
        Ok(self.json)
    }

    /// The CNI error code of a call that had to fail.
    fn error_code(&self) -> anyhow::Result<u64> {
        ensure!(!self.success, "the plugin succeeded: {}", self.json);
        self.json["code"]
            .as_u64()
            .with_context(|| format!("no code in {}", self.json))
    }
}

/// The node: its namespace, the plugin's data dir and the network configuration.
struct Node {
    netns: Netns,
    data: tempfile::TempDir,
    binary: PathBuf,
    prefix: String,
    subnet: &'static str,
}

impl Node {
    /// A node namespace `corten-cni-t<pid>-<tag>-node` with `ip_forward` on (in it only).
    fn new(tag: &str, subnet: &'static str) -> anyhow::Result<Self> {
        let binary = plugin_binary()?;
        let prefix = format!("corten-cni-t{}-{tag}", std::process::id());
        let netns = Netns::create(format!("{prefix}-node"))?;
        run(netns
            .exec("sysctl")
            .args(["-q", "-w", "net.ipv4.ip_forward=1"]))?;
        Ok(Self {
            netns,
            data: tempfile::tempdir()?,
            binary,
            prefix,
            subnet,
        })
    }

    fn pod(&self, i: usize) -> anyhow::Result<Netns> {
        Netns::create(format!("{}-p{i}", self.prefix))
    }

    fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version, "name": "corten", "type": "corten-cni", "mtu": 1400,
            "subnet": self.subnet, "dataDir": self.data.path().to_string_lossy(),
        })
    }

    /// The plugin, inside the node namespace, with exactly `vars` set.
    fn command(&self, vars: &[(&str, &str)]) -> Command {
        let mut command = self.netns.exec(&self.binary.to_string_lossy());
        for var in CNI_VARS {
            command.env_remove(var);
        }
        command.envs(vars.iter().copied());
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn spawn(&self, vars: &[(&str, &str)], stdin: &[u8]) -> anyhow::Result<Child> {
        let mut child = self.command(vars).spawn().context("starting corten-cni")?;
        child
            .stdin
            .take()
            .context("no stdin pipe")?
            .write_all(stdin)
            .context("writing the configuration")?;
        Ok(child)
    }

    fn call_raw(&self, vars: &[(&str, &str)], stdin: &[u8]) -> anyhow::Result<Call> {
        let output = self.spawn(vars, stdin)?.wait_with_output()?;
        Call::from_output(&output)
    }

    fn call(&self, vars: &[(&str, &str)], stdin: &Value) -> anyhow::Result<Call> {
        self.call_raw(vars, stdin.to_string().as_bytes())
    }

    /// ADD/DEL/CHECK with the spec's variables for `container` in `pod`.
    fn attach_vars<'a>(
        command: &'a str,
        container: &'a str,
        netns: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
            ),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    fn add(&self, container: &str, pod: &Netns) -> anyhow::Result<Value> {
        let path = pod.path();
        self.call(
            &Self::attach_vars("ADD", container, &path),
            &self.config("1.1.0"),
        )?
        .ok()
    }

    fn del(&self, container: &str, pod: &Netns) -> anyhow::Result<()> {
        let path = pod.path();
        self.call(
            &Self::attach_vars("DEL", container, &path),
            &self.config("1.1.0"),
        )?
        .ok()
        .map(drop)
    }

    /// The addresses the IPAM store holds (its record files).
    fn allocations(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.data.path().join("corten"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|name| name.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's host-side pod veths.
    fn host_veths(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .netns
            .link_names()?
            .into_iter()
            .filter(|name| name.starts_with("ctn"))
            .collect())
    }

    /// The node's main-table routes.
    fn routes(&self) -> anyhow::Result<Vec<Value>> {
        self.netns.ip_json(&["route", "show"])
    }

    /// Asserts the node holds nothing of the plugin's any more.
    fn assert_clean(&self) -> anyhow::Result<()> {
        ensure!(
            self.allocations().is_empty(),
            "allocations left: {:?}",
            self.allocations()
        );
        ensure!(
            self.host_veths()?.is_empty(),
            "veths left: {:?}",
            self.host_veths()?
        );
        let routes = self.routes()?;
        ensure!(routes.is_empty(), "routes left: {routes:?}");
        Ok(())
    }
}

fn with_prev(config: &Value, prev: &Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = prev.clone();
    config
}

/// The pod's IPv4 address (from the ADD result, `ADDRESS/32`).
fn result_ip(result: &Value) -> anyhow::Result<String> {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no address in {result}"))?;
    let (ip, prefix) = cidr.split_once('/').context("address is a CIDR")?;
    ensure!(prefix == "32", "{cidr}");
    Ok(ip.to_owned())
}

#[test]
fn every_command_and_what_the_kernel_holds() -> anyhow::Result<()> {
    let node = Node::new("cmd", "10.42.5.0/24")?;
    let pod = node.pod(0)?;
    let pod_path = pod.path();

    // VERSION needs only CNI_COMMAND.
    let version = node
        .call(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": "1.0.0"}),
        )?
        .ok()?;
    assert_eq!(
        version,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    );

    // STATUS (1.1) with a usable store and free addresses: success, no output.
    let status = node.call(
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")],
        &node.config("1.1.0"),
    )?;
    assert!(status.success && status.json.is_null(), "{status:?}");

    let result = node.add("c1", &pod)?;
    assert_eq!(result["cniVersion"], "1.1.0");
    let ip = result_ip(&result)?;
    assert_eq!(ip, "10.42.5.2");
    assert_eq!(result["ips"][0]["gateway"], GATEWAY);
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}])
    );
    let host_link = result["interfaces"][0]["name"]
        .as_str()
        .context("host link")?
        .to_owned();
    assert!(
        host_link.starts_with("ctn") && host_link.len() <= 15,
        "{host_link}"
    );
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], pod_path.as_str());
    assert_eq!(result["interfaces"][1]["mtu"], 1400);

    // The pod: eth0 up with the /32, the MAC the result names, both routes, the neighbour.
    let eth0 = pod.ip_json(&["addr", "show", "dev", "eth0"])?;
    let eth0 = eth0.first().context("eth0 exists in the pod")?;
    assert_eq!(eth0["address"], result["interfaces"][1]["mac"]);
    assert_eq!(eth0["mtu"], 1400);
    assert!(
        eth0["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("UP"))),
        "{eth0}"
    );
    let inet: Vec<&Value> = eth0["addr_info"]
        .as_array()
        .context("addr_info")?
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(inet.len(), 1, "{eth0}");
    assert_eq!(
        (inet[0]["local"].as_str(), inet[0]["prefixlen"].as_u64()),
        (Some(ip.as_str()), Some(32))
    );
    let routes = pod.ip_json(&["route", "show"])?;
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == GATEWAY && r["dev"] == "eth0"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == GATEWAY && r["scope"] == "link" && r["dev"] == "eth0"),
        "{routes:?}"
    );
    let neighbours = pod.ip_json(&["neigh", "show", "dev", "eth0"])?;
    assert!(
        neighbours
            .iter()
            .any(|n| n["dst"] == GATEWAY && n["lladdr"] == "ee:ee:ee:ee:ee:ee"),
        "{neighbours:?}"
    );

    // The node: the host end up with the fixed MAC, proxy ARP on, the /32 route to the pod.
    let host = node.netns.ip_json(&["link", "show", "dev", &host_link])?;
    let host = host.first().context("host veth exists")?;
    assert_eq!(host["address"], "ee:ee:ee:ee:ee:ee");
    assert!(
        host["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("UP"))),
        "{host}"
    );
    let proxy_arp = run(node
        .netns
        .exec("cat")
        .arg(format!("/proc/sys/net/ipv4/conf/{host_link}/proxy_arp")))?;
    assert_eq!(String::from_utf8_lossy(&proxy_arp.stdout).trim(), "1");
    let node_routes = node.routes()?;
    assert_eq!(node_routes.len(), 1, "{node_routes:?}");
    assert_eq!(
        (
            node_routes[0]["dst"].as_str(),
            node_routes[0]["dev"].as_str()
        ),
        (Some(ip.as_str()), Some(host_link.as_str()))
    );
    assert_eq!(node.allocations(), BTreeSet::from([ip.clone()]));

    // CHECK with prevResult: fine; after removing the pod's default route: code 102.
    let check_config = with_prev(&node.config("1.1.0"), &result);
    let check = node.call(&Node::attach_vars("CHECK", "c1", &pod_path), &check_config)?;
    assert!(check.success && check.json.is_null(), "{check:?}");
    pod.ip(&["route", "del", "default"])?;
    let check = node.call(&Node::attach_vars("CHECK", "c1", &pod_path), &check_config)?;
    assert_eq!(check.error_code()?, 102);
    assert!(
        check.json["msg"]
            .as_str()
            .is_some_and(|m| m.contains("0.0.0.0/0")),
        "{check:?}"
    );

    // DEL with prevResult, then again, then without CNI_NETNS: all succeed, nothing left.
    for vars in [
        Node::attach_vars("DEL", "c1", &pod_path),
        Node::attach_vars("DEL", "c1", &pod_path),
        vec![
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ],
    ] {
        let del = node.call(&vars, &check_config)?;
        assert!(del.success && del.json.is_null(), "{del:?}");
    }
    node.assert_clean()?;
    assert!(!pod.link_names()?.contains("eth0"));

    // DEL of something never added succeeds too.
    node.call(
        &Node::attach_vars("DEL", "never-added", &pod_path),
        &node.config("1.0.0"),
    )?
    .ok()?;

    // GC (1.1) with nothing stale: success, no output.
    let mut gc = node.config("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let gc_call = node.call(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc)?;
    assert!(gc_call.success && gc_call.json.is_null(), "{gc_call:?}");
    Ok(())
}

#[test]
fn error_codes_follow_the_spec() -> anyhow::Result<()> {
    let node = Node::new("err", "10.42.6.0/24")?;
    let pod = node.pod(0)?;
    let path = pod.path();
    let add = Node::attach_vars("ADD", "c1", &path);

    // 6: not JSON.
    assert_eq!(
        node.call_raw(&add, b"{\"cniVersion\": \"1.0.0\",")?
            .error_code()?,
        6
    );
    // 7: invalid configuration, and the message names the field.
    let mut bad = node.config("1.0.0");
    bad["subnet"] = json!("10.42.6.0/33");
    let call = node.call(&add, &bad)?;
    assert_eq!(call.error_code()?, 7);
    assert!(
        call.json["msg"]
            .as_str()
            .is_some_and(|m| m.contains("subnet")),
        "{call:?}"
    );
    assert_eq!(call.json["cniVersion"], "1.0.0");
    let mut bad = node.config("1.0.0");
    bad.as_object_mut().map(|o| o.remove("name"));
    assert_eq!(node.call(&add, &bad)?.error_code()?, 7);
    // 1: a version the plugin does not speak; STATUS and GC need 1.1.0.
    assert_eq!(node.call(&add, &node.config("0.4.0"))?.error_code()?, 1);
    assert_eq!(
        node.call(&[("CNI_COMMAND", "STATUS")], &node.config("1.0.0"))?
            .error_code()?,
        1
    );
    // 4: missing or invalid environment.
    let no_id: Vec<_> = add
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_CONTAINERID")
        .collect();
    assert_eq!(node.call(&no_id, &node.config("1.0.0"))?.error_code()?, 4);
    let no_netns: Vec<_> = add
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    assert_eq!(
        node.call(&no_netns, &node.config("1.0.0"))?.error_code()?,
        4
    );
    assert_eq!(node.call(&[], &node.config("1.0.0"))?.error_code()?, 4);
    assert_eq!(
        node.call(&[("CNI_COMMAND", "FROB")], &node.config("1.0.0"))?
            .error_code()?,
        4
    );
    // 3: the namespace does not exist.
    let gone = format!("/run/netns/{}-gone", node.prefix);
    assert_eq!(
        node.call(
            &Node::attach_vars("ADD", "c1", &gone),
            &node.config("1.0.0")
        )?
        .error_code()?,
        3
    );
    // 7: GC without the list of valid attachments.
    assert_eq!(
        node.call(&[("CNI_COMMAND", "GC")], &node.config("1.1.0"))?
            .error_code()?,
        7
    );
    node.assert_clean()
}

#[test]
fn a_failed_add_is_rolled_back() -> anyhow::Result<()> {
    let node = Node::new("rb", "10.42.7.0/24")?;
    let pod = node.pod(0)?;
    // Something else already called eth0 in the pod: creating the veth must fail.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ])?;
    let path = pod.path();
    let call = node.call(
        &Node::attach_vars("ADD", "c1", &path),
        &node.config("1.0.0"),
    )?;
    assert_eq!(call.error_code()?, 101, "{call:?}");
    node.assert_clean()?;
    // The pod's own link is untouched.
    assert!(pod
        .link_names()?
        .is_superset(&BTreeSet::from(["eth0".to_owned(), "other0".to_owned()])));
    // A retry into a clean namespace works and holds one address only.
    let pod2 = node.pod(1)?;
    let ip = result_ip(&node.add("c1", &pod2)?)?;
    assert_eq!(node.allocations(), BTreeSet::from([ip]));
    node.del("c1", &pod2)?;
    node.assert_clean()
}

#[test]
fn repeated_add_keeps_the_address() -> anyhow::Result<()> {
    let node = Node::new("re", "10.42.8.0/24")?;
    let pod = node.pod(0)?;
    let first = node.add("c1", &pod)?;
    let second = node.add("c1", &pod)?;
    assert_eq!(first["ips"], second["ips"]);
    assert_eq!(node.allocations().len(), 1);
    assert_eq!(node.host_veths()?.len(), 1);
    let path = pod.path();
    let check = node.call(
        &Node::attach_vars("CHECK", "c1", &path),
        &with_prev(&node.config("1.1.0"), &second),
    )?;
    assert!(check.success, "{check:?}");
    node.del("c1", &pod)?;
    node.assert_clean()
}

#[test]
fn pods_reach_each_other_and_the_node() -> anyhow::Result<()> {
    let node = Node::new("ping", "10.42.9.0/24")?;
    node.netns
        .ip(&["addr", "add", &format!("{NODE_ADDRESS}/32"), "dev", "lo"])?;
    let a = node.pod(0)?;
    let b = node.pod(1)?;
    let ip_a = result_ip(&node.add("a", &a)?)?;
    let ip_b = result_ip(&node.add("b", &b)?)?;
    assert_ne!(ip_a, ip_b);
    assert!(a.pings(&ip_b)?, "pod a cannot reach pod b at {ip_b}");
    assert!(b.pings(&ip_a)?, "pod b cannot reach pod a at {ip_a}");
    assert!(
        a.pings(NODE_ADDRESS)?,
        "pod a cannot reach the node at {NODE_ADDRESS}"
    );

    // TCP: busybox httpd in pod b, wget from pod a.
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("index.html"), "hello from pod b\n")?;
    let mut httpd = b
        .exec("busybox")
        .args(["httpd", "-f", "-p", &format!("{ip_b}:8080"), "-h"])
        .arg(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let fetched = (|| -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let output = Command::new("timeout")
                .args([
                    "5", "ip", "netns", "exec", &a.name, "busybox", "wget", "-q", "-O", "-",
                ])
                .arg(format!("http://{ip_b}:8080/index.html"))
                .output()?;
            if output.status.success() {
                return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
            }
            if Instant::now() > deadline {
                bail!("wget from pod a kept failing: {output:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    let _ = httpd.kill();
    let _ = httpd.wait();
    assert_eq!(fetched?, "hello from pod b\n");

    node.del("a", &a)?;
    assert!(!b.pings(&ip_a)?, "pod a is still reachable after DEL");
    node.del("b", &b)?;
    node.assert_clean()
}

#[test]
fn gc_removes_what_the_runtime_no_longer_knows() -> anyhow::Result<()> {
    let node = Node::new("gc", "10.42.10.0/24")?;
    let keep = node.pod(0)?;
    let stale = node.pod(1)?;
    let kept = node.add("keep", &keep)?;
    node.add("stale", &stale)?;
    assert_eq!(node.allocations().len(), 2);
    let mut gc = node.config("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let call = node.call(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc)?;
    assert!(call.success && call.json.is_null(), "{call:?}");
    assert_eq!(node.allocations(), BTreeSet::from([result_ip(&kept)?]));
    assert_eq!(node.host_veths()?.len(), 1);
    assert!(!stale.link_names()?.contains("eth0"));
    let path = keep.path();
    let check = node.call(
        &Node::attach_vars("CHECK", "keep", &path),
        &with_prev(&node.config("1.1.0"), &kept),
    )?;
    assert!(check.success, "{check:?}");
    node.del("keep", &keep)?;
    node.assert_clean()
}

#[test]
fn five_hundred_add_del_cycles_leave_nothing_behind() -> anyhow::Result<()> {
    const CYCLES: usize = 500;
    let node = Node::new("cyc", "10.42.11.0/24")?;
    let pod = node.pod(0)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = BTreeSet::new();
    for i in 0..CYCLES {
        ensure!(
            Instant::now() < deadline,
            "only {i} of {CYCLES} cycles within 300 s"
        );
        let container = format!("cycle-{i}");
        seen.insert(result_ip(&node.add(&container, &pod)?)?);
        node.del(&container, &pod)?;
        if i % 100 == 99 {
            node.assert_clean()
                .with_context(|| format!("after cycle {i}"))?;
        }
    }
    // Released addresses are not reused at once: the cycles went round the whole subnet.
    assert_eq!(seen.len(), 253);
    node.assert_clean()?;
    assert!(!pod.link_names()?.contains("eth0"));
    Ok(())
}

#[test]
fn twenty_concurrent_adds_get_distinct_addresses() -> anyhow::Result<()> {
    const PODS: usize = 20;
    let node = Node::new("par", "10.42.12.0/24")?;
    let pods = (0..PODS)
        .map(|i| node.pod(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = node.config("1.1.0").to_string();
    let run_all = |command: &str| -> anyhow::Result<Vec<Call>> {
        let children = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let id = format!("par-{i}");
                let path = pod.path();
                node.spawn(&Node::attach_vars(command, &id, &path), config.as_bytes())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        children
            .into_iter()
            .map(|child| Call::from_output(&child.wait_with_output()?))
            .collect()
    };
    let mut addresses = BTreeSet::new();
    for (pod, call) in pods.iter().zip(run_all("ADD")?) {
        let ip = result_ip(&call.ok()?)?;
        assert!(addresses.insert(ip.clone()), "{ip} handed out twice");
        let eth0 = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
        assert!(eth0.contains(&format!("{ip}/32")), "{eth0}");
    }
    assert_eq!(addresses.len(), PODS);
    assert_eq!(node.allocations(), addresses);
    assert_eq!(node.host_veths()?.len(), PODS);
    assert_eq!(node.routes()?.len(), PODS);
    for call in run_all("DEL")? {
        call.ok()?;
    }
    node.assert_clean()
}

/// containerd itself runs corten-cni: a lab node with a corten conflist, two pod sandboxes
/// through CRI, a container in one pinging the other, and the addresses released after.
mod containerd {
    use corten_cri::runtime::CriClient;
    use corten_tests::lab::{self, Lab, LabSpec, BUSYBOX_IMAGE, CORTEN_CNI};
    use k8s_cri::v1::{
        ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
        CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
        NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
        PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
        RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopPodSandboxRequest,
    };

    use super::*;

    const SUBNET: &str = "10.42.0.0/24";

    #[test]
    fn containerd_runs_corten_cni_for_pod_sandboxes() -> anyhow::Result<()> {
        let plugin = plugin_binary()?;
        let lab = Lab::up(LabSpec::for_test(&format!("cni-{}", std::process::id()), 1))?;
        let link = lab.paths().node_cni_bin_dir(0).join(CORTEN_CNI);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&plugin, &link)?;
        }
        // Forwarding between the pods' veths, inside the lab node only.
        run(lab
            .command(0, "sysctl")?
            .args(["-q", "-w", "net.ipv4.ip_forward=1"]))?;
        let state = lab.paths().node_data_dir(0).join("cni-state");
        // containerd 1.6's libcni knows results up to spec 1.0.0.
        let conflist = json!({
            "cniVersion": "1.0.0", "name": "corten",
            "plugins": [{"type": "corten-cni", "subnet": SUBNET, "mtu": 1450,
                         "dataDir": state.to_string_lossy()}],
        });
        std::fs::write(
            lab.paths().node_cni_conf_dir(0).join("10-corten.conflist"),
            conflist.to_string(),
        )?;
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(run_pods(&lab, &state.join("corten")))?;
        let paths = lab.paths().clone();
        lab.down()?;
        assert_eq!(lab::leftovers(&paths), Vec::<String>::new());
        Ok(())
    }

    async fn run_pods(lab: &Lab, ipam_dir: &Path) -> anyhow::Result<()> {
        let mut cri = CriClient::connect(&lab.containerd_socket(0)).await?;
        wait_network_ready(&mut cri).await?;

        let subnet: Vec<u8> = vec![10, 42, 0];
        let mut sandboxes = Vec::new();
        for name in ["pod-a", "pod-b"] {
            let config = sandbox_config(lab, name)?;
            let id = cri
                .runtime()
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .with_context(|| format!("RunPodSandbox {name}"))?
                .into_inner()
                .pod_sandbox_id;
            let ip = sandbox_ip(&mut cri, &id).await?;
            let octets = ip.octets();
            ensure!(
                octets[..3] == subnet[..] && octets[3] >= 2 && octets[3] <= 254,
                "{ip} is not a pod address of {SUBNET}"
            );
            sandboxes.push((id, config, ip));
        }
        ensure!(
            sandboxes[0].2 != sandboxes[1].2,
            "both sandboxes got {}",
            sandboxes[0].2
        );
        let held: BTreeSet<String> = records(ipam_dir);
        let expected: BTreeSet<String> =
            sandboxes.iter().map(|(_, _, ip)| ip.to_string()).collect();
        assert_eq!(held, expected);

        // A container in pod a reaches pod b's address.
        let (sandbox_a, config_a, ip_a) = &sandboxes[0];
        let ip_b = sandboxes[1].2;
        let log_dir = config_a.log_directory.clone();
        let container = cri
            .runtime()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_a.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "pinger".to_owned(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: BUSYBOX_IMAGE.to_owned(),
                        ..Default::default()
                    }),
                    command: vec!["sh".to_owned(), "-c".to_owned()],
                    args: vec![format!("ip -4 -o addr show eth0; ping -c1 -W2 {ip_b}")],
                    log_path: "pinger.log".to_owned(),
                    ..Default::default()
                }),
                sandbox_config: Some(config_a.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        cri.runtime()
            .start_container(StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .context("StartContainer")?;
        let exit_code = wait_exit(&mut cri, &container).await?;
        let log =
            std::fs::read_to_string(Path::new(&log_dir).join("pinger.log")).unwrap_or_default();
        assert_eq!(exit_code, 0, "the container could not ping {ip_b}: {log}");
        assert!(log.contains(&format!("{ip_a}/32")), "{log}");
        cri.runtime()
            .remove_container(RemoveContainerRequest {
                container_id: container,
            })
            .await?;

        for (id, _, _) in &sandboxes {
            cri.runtime()
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .context("StopPodSandbox")?;
            cri.runtime()
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .context("RemovePodSandbox")?;
        }
        // containerd ran DEL: the addresses are free and the node has no pod veth left.
        assert_eq!(records(ipam_dir), BTreeSet::new());
        let links = run(lab.command(0, "ip")?.args(["-o", "link", "show"]))?;
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        assert!(!links.contains("ctn"), "{links}");
        Ok(())
    }

    fn records(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|name| name.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn sandbox_config(lab: &Lab, name: &str) -> anyhow::Result<PodSandboxConfig> {
        let uid = format!("{name}-{}", std::process::id());
        let log_dir = lab.paths().node_run_dir(0).join("pods").join(&uid);
        std::fs::create_dir_all(&log_dir)?;
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.clone(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/pod-{uid}", lab.paths().node_cgroup_rel(0).display()),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Waits (bounded) until containerd has loaded the CNI configuration.
    async fn wait_network_ready(cri: &mut CriClient) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = cri
                .runtime()
                .status(StatusRequest { verbose: false })
                .await?
                .into_inner()
                .status;
            let ready = status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.r#type == "NetworkReady" && c.status)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd never reported NetworkReady: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sandbox_ip(cri: &mut CriClient, id: &str) -> anyhow::Result<Ipv4Addr> {
        let status = cri
            .runtime()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no sandbox status")?;
        let ip = status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        ip.parse()
            .with_context(|| format!("sandbox {id} has no IPv4 address: {status:?}"))
    }

    async fn wait_exit(cri: &mut CriClient, container: &str) -> anyhow::Result<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = cri
                .runtime()
                .container_status(ContainerStatusRequest {
                    container_id: container.to_owned(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("no container status")?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status.exit_code);
            }
            if Instant::now() > deadline {
                bail!("the container did not finish: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
