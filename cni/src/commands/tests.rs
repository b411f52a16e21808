//! Every command end to end on the in-memory dataplane and a temporary IPAM directory: the
//! JSON the runtime would read, the exit codes, and the state left behind.
use serde_json::{json, Value};

use crate::{
    netlink::{
        fake::{FakeDataplane, SharedFake},
        Dataplane, NetlinkError, Side,
    },
    run_with, Response,
};

const NETNS: &str = "/run/netns/pod-a";
const GONE_NETNS: &str = "/run/netns/gone";

struct Harness {
    dir: tempfile::TempDir,
    fake: SharedFake,
}

impl Harness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            fake: SharedFake::new(),
        }
    }

    fn config(&self, version: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": version, "name": "corten", "type": "corten-cni", "mtu": 1450,
            "subnet": subnet, "dataDir": self.dir.path().to_string_lossy(),
        })
    }

    fn invoke(&self, vars: &[(&str, &str)], stdin: &Value) -> (Response, Value) {
        self.invoke_raw(vars, stdin.to_string().as_bytes())
    }

    fn invoke_raw(&self, vars: &[(&str, &str)], stdin: &[u8]) -> (Response, Value) {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let fake = self.fake.clone();
        let mut connect = move |netns: Option<&std::path::Path>| {
            if netns.is_some_and(|path| path == std::path::Path::new(GONE_NETNS)) {
                return Err(NetlinkError::NetnsMissing {
                    path: GONE_NETNS.into(),
                });
            }
            Ok(Box::new(fake.clone()) as Box<dyn Dataplane>)
        };
        let response = run_with(
            |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            stdin,
            &mut connect,
        );
        let json = if response.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&response.stdout).expect("stdout is JSON")
        };
        (response, json)
    }

    fn records(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("corten"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|name| name.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn kernel(&self) -> std::cell::Ref<'_, FakeDataplane> {
        self.fake.0.borrow()
    }
}

fn vars<'a>(command: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a",
        ),
    ]
}

fn with_prev(config: &Value, prev: &Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = prev.clone();
    config
}

#[test]
fn add_check_del_round_trip() {
    let h = Harness::new();
    let config = h.config("1.0.0", "10.42.0.0/24");
    let (response, result) = h.invoke(&vars("ADD", "c1", NETNS), &config);
    assert_eq!(response.exit_code, 0, "{}", response.stdout);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(
        result["ips"],
        json!([{"address": "10.42.0.2/32", "gateway": "169.254.1.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    let host_link = result["interfaces"][0]["name"]
        .as_str()
        .expect("host link")
        .to_owned();
    assert!(host_link.starts_with("ctn"), "{result}");
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert!(result["interfaces"][0].get("sandbox").is_none());
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], NETNS);
    let pod_mac = h.kernel().link_state(Side::Pod, "eth0").and_then(|l| l.mac);
    assert_eq!(
        result["interfaces"][1]["mac"].as_str(),
        pod_mac.as_ref().map(crate::result::format_mac).as_deref()
    );
    assert_eq!(h.records(), vec!["10.42.0.2"]);

    let (response, out) = h.invoke(&vars("CHECK", "c1", NETNS), &with_prev(&config, &result));
    assert_eq!(
        (response.exit_code, out),
        (0, Value::Null),
        "{}",
        response.stdout
    );

    let (response, out) = h.invoke(&vars("DEL", "c1", NETNS), &with_prev(&config, &result));
    assert_eq!(
        (response.exit_code, out),
        (0, Value::Null),
        "{}",
        response.stdout
    );
    assert!(h.kernel().is_empty(), "{:?}", h.kernel());
    assert!(h.records().is_empty());

    // CHECK after DEL finds nothing reserved.
    let (response, out) = h.invoke(&vars("CHECK", "c1", NETNS), &with_prev(&config, &result));
    assert_eq!(response.exit_code, 1);
    assert_eq!(out["code"], 102, "{out}");
}

#[test]
fn repeated_del_and_del_of_the_unknown_succeed() {
    let h = Harness::new();
    let config = h.config("1.1.0", "10.42.0.0/24");
    let (response, _) = h.invoke(&vars("ADD", "c1", NETNS), &config);
    assert_eq!(response.exit_code, 0);
    for _ in 0..3 {
        let (response, _) = h.invoke(&vars("DEL", "c1", NETNS), &config);
        assert_eq!(
            response,
            Response {
                exit_code: 0,
                stdout: String::new()
            }
        );
    }
    let (response, _) = h.invoke(&vars("DEL", "never-added", ""), &config);
    assert_eq!(response.exit_code, 0, "{}", response.stdout);
    // DEL after the namespace is gone: CNI_NETNS is not even needed.
    let (response, _) = h.invoke(&vars("DEL", "c1", GONE_NETNS), &config);
    assert_eq!(response.exit_code, 0, "{}", response.stdout);
}

#[test]
fn repeated_add_keeps_the_address_and_rewires() {
    let h = Harness::new();
    let config = h.config("1.1.0", "10.42.0.0/24");
    let (_, first) = h.invoke(&vars("ADD", "c1", NETNS), &config);
    let (response, second) = h.invoke(&vars("ADD", "c1", NETNS), &config);
    assert_eq!(response.exit_code, 0, "{}", response.stdout);
    assert_eq!(first["ips"], second["ips"]);
    assert_eq!(h.records(), vec!["10.42.0.2"]);
    assert_eq!(
        h.kernel().addresses_of(Side::Pod, "eth0"),
        vec![("10.42.0.2".parse().expect("ip"), 32)]
    );
    let (response, _) = h.invoke(&vars("CHECK", "c1", NETNS), &with_prev(&config, &second));
    assert_eq!(response.exit_code, 0, "{}", response.stdout);
}

#[test]
fn spec_1_1_results_carry_the_mtu() {
    let h = Harness::new();
    let (_, result) = h.invoke(
        &vars("ADD", "c1", NETNS),
        &h.config("1.1.0", "10.42.0.0/24"),
    );
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][1]["mtu"], 1450);
}

#[test]
fn a_failed_add_leaves_no_allocation_and_no_link() {
    let h = Harness::new();
    h.fake
        .0
        .borrow_mut()
        .fail_on("add_route Pod 0.0.0.0/0 via 169.254.1.1 eth0");
    let (response, out) = h.invoke(
        &vars("ADD", "c1", NETNS),
        &h.config("1.0.0", "10.42.0.0/24"),
    );
    assert_eq!(response.exit_code, 1);
    assert_eq!(out["code"], 101, "{out}");
    assert!(
        out["msg"].as_str().is_some_and(|m| m.contains("0.0.0.0/0")),
        "{out}"
    );
    assert!(h.kernel().is_empty(), "{:?}", h.kernel());
    assert!(h.records().is_empty());
}

#[test]
fn add_into_a_vanished_namespace_is_an_unknown_container() {
    let h = Harness::new();
    let (response, out) = h.invoke(
        &vars("ADD", "c1", GONE_NETNS),
        &h.config("1.0.0", "10.42.0.0/24"),
    );
    assert_eq!(response.exit_code, 1);
    assert_eq!(out["code"], 3, "{out}");
    assert!(h.records().is_empty());
}

#[test]
fn check_reports_what_is_missing() {
    let h = Harness::new();
    let config = h.config("1.0.0", "10.42.0.0/24");
    let (_, result) = h.invoke(&vars("ADD", "c1", NETNS), &config);
    let wiring = crate::plan::PodWiring {
        host_link: result["interfaces"][0]["name"]
            .as_str()
            .expect("name")
            .to_owned(),
        pod_link: "eth0".to_owned(),
        address: "10.42.0.2".parse().expect("ip"),
        mtu: 1450,
    };
    h.fake
        .0
        .borrow_mut()
        .remove_route(Side::Pod, &wiring.default_route());
    let (response, out) = h.invoke(&vars("CHECK", "c1", NETNS), &with_prev(&config, &result));
    assert_eq!(response.exit_code, 1);
    assert_eq!(out["code"], 102);
    assert!(
        out["msg"].as_str().is_some_and(|m| m.contains("0.0.0.0/0")),
        "{out}"
    );

    // The pod end vanishing takes the host end with it.
    h.fake.0.borrow_mut().remove_link(Side::Pod, "eth0");
    let (_, out) = h.invoke(&vars("CHECK", "c1", NETNS), &with_prev(&config, &result));
    assert_eq!(out["code"], 102);
    assert!(
        out["msg"].as_str().is_some_and(|m| m.contains("host end")),
        "{out}"
    );

    // CHECK needs prevResult.
    let (_, out) = h.invoke(&vars("CHECK", "c1", NETNS), &config);
    assert_eq!(out["code"], 7);
    assert!(
        out["msg"]
            .as_str()
            .is_some_and(|m| m.contains("prevResult")),
        "{out}"
    );
}

#[test]
fn exhausted_subnet_is_reported_and_keeps_existing_pods() {
    let h = Harness::new();
    let config = h.config("1.1.0", "10.42.0.0/30");
    let (response, _) = h.invoke(&vars("ADD", "c1", NETNS), &config);
    assert_eq!(response.exit_code, 0);
    let (response, out) = h.invoke(&vars("ADD", "c2", "/run/netns/pod-b"), &config);
    assert_eq!(response.exit_code, 1);
    assert_eq!(out["code"], 100, "{out}");
    assert_eq!(h.records(), vec!["10.42.0.2"]);
    // STATUS says ADD cannot be served.
    let (_, out) = h.invoke(&[("CNI_COMMAND", "STATUS")], &config);
    assert_eq!(out["code"], 50, "{out}");
}

#[test]
fn environment_errors_are_code_4() {
    let h = Harness::new();
    let config = h.config("1.0.0", "10.42.0.0/24");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("CNI_COMMAND", "FROB")],
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
        ],
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ],
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", NETNS),
        ],
        vec![
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "eth0"),
        ],
        vec![
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ],
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "much-too-long-name"),
        ],
    ];
    for vars in cases {
        let (response, out) = h.invoke(&vars, &config);
        assert_eq!(response.exit_code, 1, "{vars:?}");
        assert_eq!(out["code"], 4, "{vars:?}: {out}");
        assert_eq!(out["cniVersion"], "1.0.0", "{vars:?}: {out}");
    }
    assert!(h.records().is_empty());
}

#[test]
fn configuration_errors_have_their_codes() {
    let h = Harness::new();
    let add = vars("ADD", "c1", NETNS);
    let (_, out) = h.invoke_raw(&add, b"{\"cniVersion\": ");
    assert_eq!(out["code"], 6, "{out}");
    assert_eq!(out["cniVersion"], "1.1.0");
    let (_, out) = h.invoke_raw(&add, b"[]");
    assert_eq!(out["code"], 6, "{out}");

    let mut bad_subnet = h.config("1.0.0", "10.42.0.0/24");
    bad_subnet["subnet"] = json!("10.42.0.0/33");
    let (_, out) = h.invoke(&add, &bad_subnet);
    assert_eq!(out["code"], 7, "{out}");
    assert!(
        out["msg"].as_str().is_some_and(|m| m.contains("subnet")),
        "{out}"
    );
    assert_eq!(out["cniVersion"], "1.0.0");

    let mut no_name = h.config("1.0.0", "10.42.0.0/24");
    no_name.as_object_mut().map(|o| o.remove("name"));
    let (_, out) = h.invoke(&add, &no_name);
    assert_eq!(out["code"], 7);
    assert!(
        out["msg"].as_str().is_some_and(|m| m.contains("name")),
        "{out}"
    );

    let (_, out) = h.invoke(&add, &h.config("0.4.0", "10.42.0.0/24"));
    assert_eq!(out["code"], 1, "{out}");
    assert_eq!(out["cniVersion"], "1.1.0");
    assert!(h.records().is_empty());
    assert!(h.kernel().is_empty());
}

#[test]
fn version_lists_what_the_plugin_speaks() {
    let h = Harness::new();
    let (response, out) = h.invoke_raw(&[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!(response.exit_code, 0);
    assert_eq!(
        out,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    );
    let (_, out) = h.invoke(
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.0.0"}),
    );
    assert_eq!(out["cniVersion"], "1.0.0");
    let (_, out) = h.invoke(
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "0.3.1"}),
    );
    assert_eq!(out["cniVersion"], "1.1.0");
}

#[test]
fn status_and_gc_need_spec_1_1() {
    let h = Harness::new();
    let old = h.config("1.0.0", "10.42.0.0/24");
    for command in ["STATUS", "GC"] {
        let (response, out) = h.invoke(&[("CNI_COMMAND", command), ("CNI_PATH", "/x")], &old);
        assert_eq!(response.exit_code, 1);
        assert_eq!(out["code"], 1, "{command}: {out}");
    }
    let (response, out) = h.invoke(
        &[("CNI_COMMAND", "STATUS")],
        &h.config("1.1.0", "10.42.0.0/24"),
    );
    assert_eq!((response.exit_code, out), (0, Value::Null));
}

#[test]
fn gc_removes_what_the_runtime_no_longer_knows() {
    let h = Harness::new();
    let config = h.config("1.1.0", "10.42.0.0/24");
    let mut results = Vec::new();
    for (id, netns) in [
        ("keep", NETNS),
        ("gone1", "/run/netns/b"),
        ("gone2", "/run/netns/c"),
    ] {
        // The fake has one pod namespace, so each pod gets its own interface name there.
        let ifname = format!("eth-{id}");
        let mut v = vars("ADD", id, netns);
        v.retain(|(k, _)| *k != "CNI_IFNAME");
        v.push(("CNI_IFNAME", &ifname));
        let (response, result) = h.invoke(&v, &config);
        assert_eq!(response.exit_code, 0, "{}", response.stdout);
        results.push(result);
    }
    assert_eq!(h.records().len(), 3);
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth-keep"}]);
    let (response, out) = h.invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc);
    assert_eq!(
        (response.exit_code, out),
        (0, Value::Null),
        "{}",
        response.stdout
    );
    assert_eq!(h.records(), vec!["10.42.0.2"]);
    let kernel = h.kernel();
    assert!(kernel.link_state(Side::Pod, "eth-keep").is_some());
    assert!(kernel.link_state(Side::Pod, "eth-gone1").is_none());
    assert!(kernel.link_state(Side::Pod, "eth-gone2").is_none());
    for result in &results[1..] {
        let host = result["interfaces"][0]["name"].as_str().expect("name");
        assert!(kernel.link_state(Side::Host, host).is_none(), "{host}");
    }
    drop(kernel);

    // GC without the list is refused rather than taken as "nothing is valid".
    let (_, out) = h.invoke(&[("CNI_COMMAND", "GC")], &config);
    assert_eq!(out["code"], 7, "{out}");
    assert_eq!(h.records().len(), 1);
}
