//! corten-agent's volumes and environment in a one-node lab with its control plane, driven
//! by real kubectl: one pod mounts emptyDir (disk and memory), hostPath (DirectoryOrCreate,
//! File, a subPath), configMap (items, mode), secret (defaultMode, tmpfs), downwardAPI and
//! projected (configMap + secret + downwardAPI) volumes and gets env from values with
//! `$(VAR)` expansion, fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef, envFrom and
//! service links; it writes what it sees into a hostPath directory the test reads on the
//! node. Then a ConfigMap update reaches the mounted file, a missing key gives
//! CreateContainerConfigError, a bad hostPath type keeps a pod from starting with a
//! FailedMount event, a service-account token volume holds a TokenRequest token (or, where
//! the API does not serve TokenRequest, keeps its pod from starting with the reason), one for
//! a missing service account keeps its pod from starting with the reason, and deleting the pod removes its volume directories (and
//! their tmpfs mounts) but leaves the hostPath contents alone.
//!
//! Safety: everything runs inside the lab's namespaces and directories; every wait is
//! bounded.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use corten_tests::{
    kubectl::{self, json, kubectl},
    lab::{Lab, LabSpec, BUSYBOX_IMAGE},
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

fn apply(lab: &Lab, manifest: &Value) -> anyhow::Result<()> {
    kubectl::apply(lab, &manifest.to_string())
}

/// [`kubectl::eventually_within`] `limit`, printing how long `what` took.
fn eventually<T>(
    lab: &Lab,
    what: &str,
    limit: Duration,
    check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let value = kubectl::eventually_within(lab, limit, what, check)?;
    eprintln!("{what}: after {:?}", started.elapsed());
    Ok(value)
}

/// The value after `KEY=` on its own line of the report.
fn line_value<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn waiting_of(lab: &Lab, pod: &str) -> anyhow::Result<(String, String)> {
    let pod = json(lab, &["get", "pod", pod])?;
    let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
    Ok((
        waiting["reason"].as_str().unwrap_or_default().to_owned(),
        waiting["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn events_for(lab: &Lab, pod: &str) -> anyhow::Result<Vec<(String, String)>> {
    let events = json(lab, &["get", "events"])?;
    Ok(events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

const SCRIPT: &str = r#"
set -u
r=/out/report.tmp
: > $r
env | sort | sed 's/^/ENV:/' >> $r
for f in /scratch /mem /sec /cfg /info /proj; do grep " $f " /proc/mounts | sed "s|^|MOUNT:$f:|" >> $r; done
echo "CFG_COLOR=$(cat /cfg/colors/current)" >> $r
echo "CFG_MODE=$(stat -L -c %a /cfg/colors/current)" >> $r
echo "SEC_PASSWORD=$(cat /sec/password)" >> $r
echo "SEC_MODE=$(stat -L -c %a /sec/password)" >> $r
echo "INFO_NAME=$(cat /info/name)" >> $r
echo "INFO_LABELS=$(cat /info/labels | tr '\n' ';')" >> $r
echo "INFO_CPU_M=$(cat /info/cpu_limit_m)" >> $r
echo "PROJ_COLOR=$(cat /proj/cm-color)" >> $r
echo "PROJ_PW=$(cat /proj/pw)" >> $r
echo "PROJ_NS=$(cat /proj/namespace)" >> $r
echo "HOST_FILE=$(cat /hostfile)" >> $r
echo "DATA_LINK=$(readlink /cfg/..data | cut -c1-4)" >> $r
if touch /cfg/new 2>/dev/null; then echo CFG_WRITABLE=yes >> $r; else echo CFG_WRITABLE=no >> $r; fi
if echo x > /scratch/f && echo y > /mem/f; then echo SCRATCH_WRITABLE=yes >> $r; else echo SCRATCH_WRITABLE=no >> $r; fi
echo marker > /sub/marker
mv $r /out/report
while true; do cat /cfg/colors/current > /out/color.tmp; mv /out/color.tmp /out/color; sleep 1; done
"#;

#[test]
fn volumes_and_env_reach_containers() -> anyhow::Result<()> {
    corten_tests::lab::build_project_binaries()?;
    let mut spec = LabSpec::for_test(&format!("kubelet-volumes-{}", std::process::id()), 1);
    spec.control_plane = true;
    let lab = Lab::up(spec)?;
    let node = lab.node_name(0);
    eventually(&lab, "the node to be Ready", WAIT, || {
        let node = json(&lab, &["get", "node", &node])?;
        let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        Ok(ready.then_some(()))
    })?;

    // Host paths live in the lab's own directory.
    let host_root = lab.paths().data_dir().join("volumes-test");
    let out_dir = host_root.join("out");
    let host_file = host_root.join("host-file");
    std::fs::create_dir_all(&host_root)?;
    std::fs::write(&host_file, "from-the-host")?;

    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"color": "blue", "size": "3"}}),
    )?;
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
            "data": {"password": "aHVudGVyMg=="}}),
    )?;
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "my-web"},
            "spec": {"selector": {"app": "none"}, "ports": [{"name": "http", "port": 8080}]}}),
    )?;
    let service_ip = eventually(&lab, "the Service's cluster IP", WAIT, || {
        let svc = json(&lab, &["get", "service", "my-web"])?;
        Ok(svc["spec"]["clusterIP"].as_str().map(str::to_owned))
    })?;

    let container = json!({
        "name": "c", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", SCRIPT],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
        "env": [
            {"name": "PLAIN", "value": "hello"},
            {"name": "EXPANDED", "value": "$(PLAIN)-world"},
            {"name": "ESCAPED", "value": "$$(PLAIN)"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
        ],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "sec"}, "prefix": "SEC_"}],
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "mem", "mountPath": "/mem"},
            {"name": "out", "mountPath": "/out"},
            {"name": "out", "mountPath": "/sub", "subPath": "sub"},
            {"name": "hostfile", "mountPath": "/hostfile"},
            {"name": "cfg", "mountPath": "/cfg"},
            {"name": "sec", "mountPath": "/sec"},
            {"name": "info", "mountPath": "/info"},
            {"name": "proj", "mountPath": "/proj"},
        ],
    });
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "vols", "labels": {"app": "vol-test", "tier": "a"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
            "containers": [container], "volumes": [
          {"name": "scratch", "emptyDir": {}},
          {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
          {"name": "out", "hostPath": {"path": out_dir.to_string_lossy(), "type": "DirectoryOrCreate"}},
          {"name": "hostfile", "hostPath": {"path": host_file.to_string_lossy(), "type": "File"}},
          {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "color", "path": "colors/current", "mode": 0o600}]}},
          {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
          {"name": "info", "downwardAPI": {"items": [
              {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
              {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
              {"path": "cpu_limit_m", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}}]}},
          {"name": "proj", "projected": {"sources": [
              {"configMap": {"name": "cfg", "items": [{"key": "color", "path": "cm-color"}]}},
              {"secret": {"name": "sec", "items": [{"key": "password", "path": "pw"}]}},
              {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
        ]}}),
    )?;

    let report_path = out_dir.join("report");
    let report = eventually(&lab, "the pod's report", WAIT, || {
        if let Ok(text) = std::fs::read_to_string(&report_path) {
            return Ok(Some(text));
        }
        let (reason, message) = waiting_of(&lab, "vols").unwrap_or_default();
        bail!("no report yet; waiting {reason}: {message}")
    })?;
    eprintln!("the pod's report:\n{report}");
    let pod = json(&lab, &["get", "pod", "vols"])?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pod_ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let env = |key: &str| line_value(&report, &format!("ENV:{key}")).map(str::to_owned);
    let expected_env = [
        ("PLAIN", "hello"),
        ("EXPANDED", "hello-world"),
        ("ESCAPED", "$(PLAIN)"),
        ("POD_NAME", "vols"),
        ("POD_NS", "default"),
        ("NODE", node.as_str()),
        ("APP", "vol-test"),
        ("MEM_MI", "64"),
        ("CPU_M", "500"),
        ("COLOR", "blue"),
        ("PW", "hunter2"),
        ("CFG_color", "blue"),
        ("CFG_size", "3"),
        ("SEC_password", "hunter2"),
        ("MY_WEB_SERVICE_HOST", service_ip.as_str()),
        ("MY_WEB_SERVICE_PORT", "8080"),
        ("MY_WEB_SERVICE_PORT_HTTP", "8080"),
    ];
    for (key, want) in expected_env {
        ensure!(
            env(key).as_deref() == Some(want),
            "env {key} is {:?}, want {want:?}; report:\n{report}",
            env(key)
        );
    }
    ensure!(
        env("MY_WEB_PORT_8080_TCP").as_deref() == Some(&format!("tcp://{service_ip}:8080")),
        "docker-style link vars missing; report:\n{report}"
    );
    ensure!(env("OPT").is_none(), "an optional missing key made a var");
    ensure!(
        !pod_ip.is_empty() && env("POD_IP").as_deref() == Some(pod_ip.as_str()),
        "POD_IP {:?} is not the pod's IP {pod_ip}",
        env("POD_IP")
    );
    let files = [
        ("CFG_COLOR", "blue"),
        ("CFG_MODE", "600"),
        ("SEC_PASSWORD", "hunter2"),
        ("SEC_MODE", "400"),
        ("INFO_NAME", "vols"),
        ("INFO_LABELS", "app=\"vol-test\";tier=\"a\""),
        ("INFO_CPU_M", "500"),
        ("PROJ_COLOR", "blue"),
        ("PROJ_PW", "hunter2"),
        ("PROJ_NS", "default"),
        ("HOST_FILE", "from-the-host"),
        ("DATA_LINK", "..20"),
        ("CFG_WRITABLE", "no"),
        ("SCRATCH_WRITABLE", "yes"),
    ];
    for (key, want) in files {
        ensure!(
            line_value(&report, key) == Some(want),
            "{key} is {:?}, want {want:?}; report:\n{report}",
            line_value(&report, key)
        );
    }
    let mount = |target: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("MOUNT:{target}:")))
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(
        mount("/mem").contains(" tmpfs ") && mount("/mem").contains("size=16384k"),
        "/mem is not a 16Mi tmpfs: {:?}",
        mount("/mem")
    );
    for target in ["/sec", "/info", "/proj"] {
        ensure!(
            mount(target).contains(" tmpfs ") && mount(target).contains(" ro"),
            "{target} is not a read-only tmpfs: {:?}",
            mount(target)
        );
    }
    ensure!(
        !mount("/scratch").contains(" tmpfs "),
        "a disk emptyDir is a tmpfs: {:?}",
        mount("/scratch")
    );
    ensure!(
        std::fs::read_to_string(out_dir.join("sub/marker"))?.trim() == "marker",
        "the subPath mount did not land in the hostPath's sub directory"
    );
    let pod_dir = lab.paths().agent_data_dir(0).join("pods").join(&uid);
    ensure!(
        pod_dir
            .join("volumes/kubernetes.io~configmap/cfg/colors/current")
            .exists(),
        "no configMap volume under {}",
        pod_dir.display()
    );

    // A ConfigMap update reaches the mounted file.
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"color": "red", "size": "3"}}),
    )?;
    eventually(
        &lab,
        "the updated ConfigMap in the mounted file",
        Duration::from_secs(60),
        || {
            let color = std::fs::read_to_string(out_dir.join("color")).unwrap_or_default();
            Ok((color.trim() == "red").then_some(()))
        },
    )?;

    // A missing required key: CreateContainerConfigError with upstream's message.
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "missing-key"},
          "spec": {"containers": [{"name": "c", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}]}]}}),
    )?;
    eventually(&lab, "CreateContainerConfigError", WAIT, || {
        let (reason, message) = waiting_of(&lab, "missing-key")?;
        Ok((reason == "CreateContainerConfigError"
            && message == "couldn't find key nope in ConfigMap default/cfg")
            .then_some(()))
    })?;

    // A hostPath of the wrong type keeps the pod from starting, with a FailedMount event.
    let not_a_dir = host_file.to_string_lossy().into_owned();
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-host"},
          "spec": {"containers": [{"name": "c", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"],
            "volumeMounts": [{"name": "h", "mountPath": "/h"}]}],
            "volumes": [{"name": "h", "hostPath": {"path": not_a_dir, "type": "Directory"}}]}}),
    )?;
    eventually(&lab, "a FailedMount event for bad-host", WAIT, || {
        let (reason, message) = waiting_of(&lab, "bad-host")?;
        let events = events_for(&lab, "bad-host")?;
        let event = events.iter().any(|(r, m)| {
            r == "FailedMount" && m.contains("hostPath type check failed") && m.contains(&not_a_dir)
        });
        Ok(
            (reason == "ContainerCreating" && message.contains("is not a directory") && event)
                .then_some(()),
        )
    })?;
    let bad = json(&lab, &["get", "pod", "bad-host"])?;
    ensure!(
        bad["status"]["containerStatuses"][0]["containerID"].is_null(),
        "bad-host got a container: {}",
        bad["status"]
    );

    // A projected service-account token: a real token from TokenRequest, or no start.
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "token"},
          "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": BUSYBOX_IMAGE,
            "command": ["sh", "-c", "cat /var/run/secrets/tokens/token > /out/token; sleep 3600"],
            "volumeMounts": [{"name": "t", "mountPath": "/var/run/secrets/tokens"},
                             {"name": "out", "mountPath": "/out"}]}],
            "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken":
                {"path": "token", "audience": "corten-test", "expirationSeconds": 3600}}]}},
              {"name": "out", "hostPath": {"path": out_dir.to_string_lossy(), "type": "Directory"}}]}}),
    )?;
    let serves_tokens = lab
        .kubectl()?
        .args(["create", "token", "default"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    eprintln!("the API serves TokenRequest: {serves_tokens}");
    if serves_tokens {
        let token = eventually(&lab, "the projected token", WAIT, || {
            let text = std::fs::read_to_string(out_dir.join("token")).unwrap_or_default();
            Ok((!text.trim().is_empty()).then_some(text))
        })?;
        ensure!(
            token.split('.').count() == 3,
            "the projected token is not a JWT: {token:?}"
        );
    } else {
        eventually(
            &lab,
            "the token pod held back with the reason",
            WAIT,
            || {
                let (reason, message) = waiting_of(&lab, "token")?;
                let events = events_for(&lab, "token")?;
                let event = events
                    .iter()
                    .any(|(r, m)| r == "FailedMount" && m.contains("\"t\""));
                Ok(
                    (reason == "ContainerCreating" && message.contains("volume \"t\"") && event)
                        .then_some(()),
                )
            },
        )?;
        ensure!(
            !out_dir.join("token").exists(),
            "a token pod ran without a token"
        );
    }

    // A token for a service account that does not exist cannot be had: no start, and why.
    apply(
        &lab,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-account"},
          "spec": {"serviceAccountName": "nobody", "containers": [{"name": "c", "image": BUSYBOX_IMAGE,
            "command": ["sleep", "3600"],
            "volumeMounts": [{"name": "t", "mountPath": "/var/run/secrets/tokens"}]}],
            "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken":
                {"path": "token", "expirationSeconds": 3600}}]}}]}}),
    )?;
    eventually(&lab, "no-account held back with the reason", WAIT, || {
        let (reason, message) = waiting_of(&lab, "no-account")?;
        let events = events_for(&lab, "no-account")?;
        let event = events
            .iter()
            .any(|(r, m)| r == "FailedMount" && m.contains("volume \"t\""));
        Ok(
            (reason == "ContainerCreating" && message.contains("volume \"t\"") && event)
                .then_some(()),
        )
    })?;
    let held = json(&lab, &["get", "pod", "no-account"])?;
    ensure!(
        held["status"]["containerStatuses"][0]["containerID"].is_null(),
        "no-account got a container without its token: {}",
        held["status"]
    );

    // Deleting the pod removes its volume directories and tmpfs mounts, not hostPath data.
    kubectl(&lab, &["delete", "pod", "vols", "--wait=false"])?;
    eventually(
        &lab,
        "vols and its volume directory to be gone",
        WAIT,
        || {
            let pods = json(&lab, &["get", "pods"])?;
            let gone = !pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["metadata"]["name"] == "vols");
            Ok((gone && !pod_dir.exists()).then_some(()))
        },
    )?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(&uid),
        "a mount of the deleted pod is left: {}",
        mounts
            .lines()
            .filter(|l| l.contains(&uid))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        report_path.exists() && Path::new(&host_file).exists(),
        "the pod's teardown touched hostPath contents"
    );
    kubectl(
        &lab,
        &[
            "delete",
            "pod",
            "missing-key",
            "bad-host",
            "token",
            "no-account",
            "--wait=false",
        ],
    )?;
    lab.down()?;
    Ok(())
}
