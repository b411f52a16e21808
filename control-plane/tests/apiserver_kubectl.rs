//! The API server driven by real kubectl (1.33 and 1.27, the newest and oldest clients
//! corten supports), against a `corten-server` process on loopback: discovery, namespaces,
//! create / get (table, yaml, json, jsonpath, name) / label / annotate / patch (merge, json,
//! strategic) / replace with a stale resourceVersion / delete, label-selected lists, watch,
//! bad input answered with the right Status, and a restart that keeps every object and lets a
//! watch continue from the last resourceVersion seen.
//!
//! Also: workloads with apply (client- and server-side, with field ownership), scale,
//! describe, explain, edit, wait, delete --wait, CRDs, Service addresses, pods' binding and
//! eviction, and `/openapi/v2` as kubectl reads it (`explain --output=plaintext-openapiv2`,
//! client-side validation of custom resources against their schema, the patch metadata of
//! client-side `apply`), `kubectl create token` and its token as kubectl's credential, and
//! the protobuf request bodies of kubectl's typed writes
//! (`create namespace|configmap|secret|deployment|service|job|cronjob|...`), each read back
//! field by field.
#![cfg(feature = "kubectl-tests")]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

const KUBECTL_DIR: &str = "/usr/lib/google-cloud-sdk/bin";

/// A `corten-server` on loopback, killed (by its own handle) when dropped.
struct Server {
    child: Child,
    data: PathBuf,
}

impl Server {
    fn start(data: &Path, port: u16) -> Result<Self> {
        let log = std::fs::File::create(data.join("server.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_corten-server"))
            .arg("--data-dir")
            .arg(data)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--https-port",
                &port.to_string(),
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting corten-server")?;
        let server = Self {
            child,
            data: data.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if server.kubeconfig().exists() {
                let ready = server.kubectl("1.33", &["get", "--raw", "/readyz"]);
                if ready.as_ref().is_ok_and(|o| o.status.success()) {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
                bail!("corten-server did not become ready on port {port}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }

    fn kubectl(&self, version: &str, args: &[&str]) -> Result<Output> {
        let binary = Path::new(KUBECTL_DIR).join(format!("kubectl.{version}"));
        ensure!(
            binary.exists(),
            "kubectl {version} is not on this machine at {}",
            binary.display()
        );
        Ok(Command::new(binary)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Runs kubectl and returns stdout, failing with its stderr.
    fn ok(&self, version: &str, args: &[&str]) -> Result<String> {
        let out = self.kubectl(version, args)?;
        ensure!(
            out.status.success(),
            "kubectl {version} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl expecting failure; returns stderr.
    fn fails(&self, version: &str, args: &[&str]) -> Result<String> {
        let out = self.kubectl(version, args)?;
        ensure!(
            !out.status.success(),
            "kubectl {version} {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

fn write(dir: &Path, name: &str, content: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path.to_string_lossy().into_owned())
}

fn exercise(server: &Server, v: &str, dir: &Path) -> Result<()> {
    let ns = format!("team-{}", v.replace('.', "-"));
    // Discovery and the system namespaces.
    let namespaces = server.ok(v, &["get", "namespaces", "-o", "name"])?;
    for system in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure!(
            namespaces.contains(&format!("namespace/{system}")),
            "{system} missing: {namespaces}"
        );
    }
    let resources = server.ok(v, &["api-resources"])?;
    ensure!(
        resources.contains("configmaps") && resources.contains("leases"),
        "{resources}"
    );

    // A namespace and a ConfigMap from files (JSON bodies).
    let ns_file = write(
        dir,
        &format!("{ns}.yaml"),
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
    )?;
    server.ok(v, &["create", "-f", &ns_file])?;
    // apply (default validation, client-side three-way merge): a key dropped from the file
    // is dropped from the object.
    let cm_yaml = |extra: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {ns}\n  labels:\n    app: web\ndata:\n  mode: fast\n{extra}")
    };
    let cm_file = write(dir, &format!("cm-{ns}.yaml"), &cm_yaml("  extra: x\n"))?;
    let created = server.ok(v, &["apply", "-f", &cm_file])?;
    ensure!(created.contains("created"), "{created}");
    let cm_file = write(dir, &format!("cm-{ns}.yaml"), &cm_yaml(""))?;
    let configured = server.ok(v, &["apply", "-f", &cm_file])?;
    ensure!(configured.contains("configured"), "{configured}");
    let applied = json(&server.ok(
        v,
        &["get", "cm", "settings", "-n", &ns, "-o", "jsonpath={.data}"],
    )?)?;
    ensure!(
        applied == serde_json::json!({"mode": "fast"}),
        "three-way merge kept {applied}"
    );
    let again = server.fails(v, &["create", "-f", &cm_file])?;
    ensure!(again.contains("AlreadyExists"), "{again}");

    // Reads in every output format.
    let table = server.ok(v, &["get", "configmaps", "-n", &ns])?;
    ensure!(
        table.contains("NAME") && table.contains("DATA") && table.contains("settings"),
        "{table}"
    );
    let obj = json(&server.ok(
        v,
        &["get", "configmap", "settings", "-n", &ns, "-o", "json"],
    )?)?;
    ensure!(
        obj["data"]["mode"] == "fast" && obj["metadata"]["uid"].is_string(),
        "{obj}"
    );
    let yaml = server.ok(v, &["get", "cm", "settings", "-n", &ns, "-o", "yaml"])?;
    ensure!(
        yaml.contains("mode: fast") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    let path = server.ok(
        v,
        &[
            "get",
            "cm",
            "settings",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.labels.app}",
        ],
    )?;
    ensure!(path == "web", "{path}");

    // Label, annotate and the three patch types.
    server.ok(v, &["label", "cm", "settings", "-n", &ns, "tier=front"])?;
    server.ok(v, &["annotate", "cm", "settings", "-n", &ns, "owner=ops"])?;
    let selected = server.ok(
        v,
        &[
            "get",
            "cm",
            "-n",
            &ns,
            "-l",
            "app=web,tier in (front)",
            "-o",
            "name",
        ],
    )?;
    ensure!(selected.trim() == "configmap/settings", "{selected}");
    let none = server.ok(
        v,
        &["get", "cm", "-n", &ns, "-l", "tier!=front", "-o", "name"],
    )?;
    ensure!(none.trim().is_empty(), "{none}");
    server.ok(
        v,
        &[
            "patch",
            "cm",
            "settings",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"size":"large"}}"#,
        ],
    )?;
    server.ok(
        v,
        &[
            "patch",
            "cm",
            "settings",
            "-n",
            &ns,
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/data/mode","value":"slow"}]"#,
        ],
    )?;
    server.ok(
        v,
        &[
            "patch",
            "cm",
            "settings",
            "-n",
            &ns,
            "--type",
            "strategic",
            "-p",
            r#"{"data":{"zone":"a"}}"#,
        ],
    )?;
    let data = json(&server.ok(
        v,
        &["get", "cm", "settings", "-n", &ns, "-o", "jsonpath={.data}"],
    )?)?;
    ensure!(
        data == serde_json::json!({"mode": "slow", "size": "large", "zone": "a"}),
        "{data}"
    );

    // Optimistic concurrency: replacing with a stale resourceVersion is a conflict.
    let mut stale = obj.clone();
    stale["data"]["mode"] = Value::from("stale");
    let stale_file = write(dir, &format!("stale-{ns}.json"), &stale.to_string())?;
    let conflict = server.fails(v, &["replace", "-f", &stale_file])?;
    ensure!(
        conflict.contains("Conflict") || conflict.contains("modified"),
        "{conflict}"
    );

    // Watch sees a change and a delete.
    let mut watch = Command::new(Path::new(KUBECTL_DIR).join(format!("kubectl.{v}")))
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args([
            "get",
            "cm",
            "-n",
            &ns,
            "--watch",
            "-o",
            "name",
            "--request-timeout=8s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(800));
    server.ok(v, &["label", "cm", "settings", "-n", &ns, "watched=yes"])?;
    server.ok(v, &["delete", "cm", "settings", "-n", &ns])?;
    std::thread::sleep(Duration::from_millis(800));
    let _ = watch.kill();
    let seen = watch.wait_with_output()?;
    let lines = String::from_utf8_lossy(&seen.stdout)
        .lines()
        .filter(|l| l.contains("configmap/settings"))
        .count();
    ensure!(
        lines >= 3,
        "watch saw {lines} events: {}",
        String::from_utf8_lossy(&seen.stdout)
    );
    let gone = server.fails(v, &["get", "cm", "settings", "-n", &ns])?;
    ensure!(gone.contains("NotFound"), "{gone}");
    Ok(())
}

/// Workloads: Deployment + Service + Secret with apply (client-side and server-side),
/// strategic merge of containers, scale, describe, wide tables, Service address allocation.
fn workloads(server: &Server, v: &str, dir: &Path) -> Result<()> {
    let ns = format!("apps-{}", v.replace('.', "-"));
    let ns_file = write(
        dir,
        &format!("{ns}.yaml"),
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
    )?;
    server.ok(v, &["apply", "-f", &ns_file])?;
    let app = |replicas: u32, value: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: corten.local/busybox:1\n        command: [httpd, -f, -p, \"8080\"]\n        ports:\n        - containerPort: 8080\n        env:\n        - {{name: MODE, value: \"{value}\"}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: 8080\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: {ns}\nstringData:\n  password: hunter2\n"
        )
    };
    let file = write(dir, &format!("app-{ns}.yaml"), &app(2, "a"))?;
    server.ok(v, &["apply", "-f", &file])?;
    let file = write(dir, &format!("app-{ns}.yaml"), &app(3, "b"))?;
    server.ok(v, &["apply", "-f", &file])?;
    let deploy = json(&server.ok(v, &["get", "deploy", "web", "-n", &ns, "-o", "json"])?)?;
    ensure!(
        deploy["spec"]["replicas"] == 3 && deploy["metadata"]["generation"] == 2,
        "{deploy}"
    );
    let containers = &deploy["spec"]["template"]["spec"]["containers"];
    ensure!(
        containers.as_array().map(Vec::len) == Some(1),
        "{containers}"
    );
    ensure!(
        containers[0]["env"] == serde_json::json!([{"name": "MODE", "value": "b"}]),
        "{containers}"
    );
    ensure!(
        deploy["spec"]["strategy"]["type"] == "RollingUpdate",
        "defaults missing: {deploy}"
    );
    let wide = server.ok(v, &["get", "deploy,svc", "-n", &ns, "-o", "wide"])?;
    ensure!(
        wide.contains("UP-TO-DATE")
            && wide.contains("corten.local/busybox:1")
            && wide.contains("NodePort"),
        "{wide}"
    );
    let svc = json(&server.ok(v, &["get", "svc", "web", "-n", &ns, "-o", "json"])?)?;
    ensure!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43.")),
        "{svc}"
    );
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0);
    ensure!((30000..=32767).contains(&node_port), "{svc}");
    let secret = server.ok(
        v,
        &[
            "get",
            "secret",
            "creds",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.password}",
        ],
    )?;
    ensure!(secret == "aHVudGVyMg==", "{secret}");
    let ssa = server.ok(v, &["apply", "--server-side", "-f", &file])?;
    ensure!(ssa.contains("serverside-applied"), "{ssa}");
    server.ok(v, &["scale", "deploy", "web", "-n", &ns, "--replicas=5"])?;
    let scaled = server.ok(
        v,
        &[
            "get",
            "deploy",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )?;
    ensure!(scaled == "5", "{scaled}");
    let described = server.ok(v, &["describe", "deploy", "web", "-n", &ns])?;
    ensure!(
        described.contains("Replicas:") && described.contains("5 desired"),
        "{described}"
    );
    server.ok(v, &["delete", "-f", &file])?;
    Ok(())
}

/// A CRD and its custom resources: served once Established, schema-checked (wrong types
/// refused, unknown fields pruned), printer columns, status and scale subresources, and
/// gone with their CRD.
fn custom_resources(server: &Server, v: &str, dir: &Path) -> Result<()> {
    let group = format!("v{}.corten.io", v.replace('.', ""));
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    subresources:\n      status: {{}}\n      scale: {{specReplicasPath: .spec.size, statusReplicasPath: .status.size}}\n    additionalPrinterColumns:\n    - {{name: Size, type: integer, jsonPath: .spec.size}}\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            required: [size]\n            properties:\n              size: {{type: integer, minimum: 0}}\n          status: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n"
    );
    let crd_file = write(dir, &format!("crd-{group}.yaml"), &crd)?;
    server.ok(v, &["apply", "-f", &crd_file])?;
    server.ok(
        v,
        &[
            "wait",
            "--for=condition=Established",
            &format!("crd/widgets.{group}"),
            "--timeout=20s",
        ],
    )?;
    let resources = server.ok(v, &["api-resources", "--api-group", &group])?;
    ensure!(
        resources.contains("widgets") && resources.contains("wd"),
        "{resources}"
    );
    let widget = |size: &str, extra: &str| {
        format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: {size}\n{extra}")
    };
    // A valid object passes kubectl's own check against the schema in /openapi/v2.
    let good = write(dir, &format!("w-{group}.yaml"), &widget("1", ""))?;
    server.ok(v, &["apply", "-f", &good])?;
    // kubectl refuses unknown fields and wrong types of custom resources itself (see
    // `openapi_v2`); --validate=false sends them, to show what the server does.
    let good = write(
        dir,
        &format!("w-{group}.yaml"),
        &widget("2", "  unknown: dropped\n"),
    )?;
    server.ok(v, &["apply", "-f", &good, "--validate=false"])?;
    let table = server.ok(v, &["get", &format!("widgets.{group}")])?;
    ensure!(table.contains("SIZE") && table.contains("w1"), "{table}");
    let obj = json(&server.ok(v, &["get", &format!("widgets.{group}"), "w1", "-o", "json"])?)?;
    ensure!(
        obj["spec"]["size"] == 2 && obj["spec"].get("unknown").is_none(),
        "unknown fields must be pruned: {obj}"
    );
    let bad = write(dir, &format!("wbad-{group}.yaml"), &widget("big", ""))?;
    let refused = server.fails(v, &["apply", "-f", &bad, "--validate=false"])?;
    ensure!(refused.contains("must be of type integer"), "{refused}");
    server.ok(
        v,
        &["scale", &format!("widgets.{group}"), "w1", "--replicas=4"],
    )?;
    let size = server.ok(
        v,
        &[
            "get",
            &format!("widgets.{group}"),
            "w1",
            "-o",
            "jsonpath={.spec.size}",
        ],
    )?;
    ensure!(size == "4", "{size}");
    server.ok(v, &["delete", "-f", &crd_file])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = server.kubectl(v, &["get", &format!("widgets.{group}")])?;
        if !gone.status.success() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "widgets still served after their CRD was deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// explain, edit, wait, and delete --wait on an object held by a finalizer.
fn lifecycle(server: &Server, v: &str, dir: &Path) -> Result<()> {
    let explained = server.ok(v, &["explain", "deployment.spec.strategy"])?;
    ensure!(
        explained.contains("rollingUpdate") && explained.contains("RollingUpdate"),
        "{explained}"
    );
    let held = write(
        dir,
        &format!("held-{}.yaml", v.replace('.', "-")),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [corten.io/hold]\ndata:\n  a: \"1\"\n",
    )?;
    server.ok(v, &["apply", "-f", &held])?;
    // edit: kubectl runs $EDITOR on the object and sends the difference.
    let edited = Command::new(Path::new(KUBECTL_DIR).join(format!("kubectl.{v}")))
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["edit", "cm", "held"])
        // kubectl runs the editor through `sh -c`, which turns \" into ".
        .env("EDITOR", r#"sed -i -e s/\"1\"/\"edited\"/"#)
        .output()?;
    ensure!(
        edited.status.success(),
        "edit: {}",
        String::from_utf8_lossy(&edited.stderr)
    );
    server.ok(
        v,
        &[
            "wait",
            "--for=jsonpath={.data.a}=edited",
            "cm/held",
            "--timeout=10s",
        ],
    )?;
    // delete --wait returns only once the finalizer is removed and the object is gone.
    let mut deleting = Command::new(Path::new(KUBECTL_DIR).join(format!("kubectl.{v}")))
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["delete", "cm", "held", "--wait=true", "--timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let marked = server.ok(
            v,
            &[
                "get",
                "cm",
                "held",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ],
        )?;
        if !marked.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the object was never marked for deletion"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        deleting.try_wait()?.is_none(),
        "delete --wait returned while the finalizer was still there"
    );
    server.ok(
        v,
        &[
            "patch",
            "cm",
            "held",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    )?;
    let done = deleting.wait_with_output()?;
    ensure!(
        done.status.success(),
        "delete --wait: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    server.ok(v, &["wait", "--for=delete", "cm/held", "--timeout=10s"])?;
    Ok(())
}

/// The binding and eviction subresources of pods (the scheduler's and `kubectl drain`'s
/// writes): a pod is bound once; an eviction a disruption budget forbids gets 429; a bound
/// pod is deleted gracefully.
fn pod_subresources(server: &Server, dir: &Path) -> Result<()> {
    let v = "1.33";
    let pod = write(
        dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\n  labels: {app: guarded}\nspec:\n  containers:\n  - {name: c, image: corten.local/busybox:1}\n",
    )?;
    server.ok(v, &["apply", "-f", &pod])?;
    let qos = server.ok(
        v,
        &[
            "get",
            "pod",
            "p1",
            "-o",
            "jsonpath={.status.phase}/{.status.qosClass}",
        ],
    )?;
    ensure!(qos == "Pending/BestEffort", "{qos}");
    let binding = write(
        dir,
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p1"},"target":{"kind":"Node","name":"node-a"}}"#,
    )?;
    server.ok(
        v,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/p1/binding",
            "-f",
            &binding,
        ],
    )?;
    let node = server.ok(v, &["get", "pod", "p1", "-o", "jsonpath={.spec.nodeName}"])?;
    ensure!(node == "node-a", "{node}");
    let again = server.fails(
        v,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/p1/binding",
            "-f",
            &binding,
        ],
    )?;
    ensure!(again.contains("already assigned"), "{again}");
    let pdb = write(
        dir,
        "pdb.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: guard\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels: {app: guarded}\n",
    )?;
    server.ok(v, &["apply", "-f", &pdb])?;
    let eviction = write(
        dir,
        "eviction.json",
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p1","namespace":"default"}}"#,
    )?;
    let refused = server.fails(
        v,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/p1/eviction",
            "-f",
            &eviction,
        ],
    )?;
    ensure!(refused.contains("disruption budget"), "{refused}");
    server.ok(v, &["delete", "-f", &pdb])?;
    server.ok(
        v,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/p1/eviction",
            "-f",
            &eviction,
        ],
    )?;
    // A pod on a node goes gracefully: marked now, removed by its kubelet's final delete.
    let marked = server.ok(
        v,
        &[
            "get",
            "pod",
            "p1",
            "-o",
            "jsonpath={.metadata.deletionGracePeriodSeconds}",
        ],
    )?;
    ensure!(
        marked == "30",
        "evicted pod not marked for graceful deletion: {marked:?}"
    );
    server.ok(v, &["delete", "pod", "p1", "--grace-period=0", "--force"])?;
    let gone = server.fails(v, &["get", "pod", "p1"])?;
    ensure!(gone.contains("NotFound"), "{gone}");
    let invalid = write(
        dir,
        "nopod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: empty\nspec:\n  containers: []\n",
    )?;
    let refused = server.fails(v, &["apply", "-f", &invalid])?;
    ensure!(refused.contains("spec.containers"), "{refused}");
    Ok(())
}

/// Server-side apply's field ownership: a conflicting apply by another manager is refused
/// unless forced, and a field its manager stops applying goes away.
fn apply_ownership(server: &Server, dir: &Path) -> Result<()> {
    let v = "1.33";
    let cm = |size: &str, extra: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  labels: {{team: a{extra}}}\ndata:\n  size: \"{size}\"\n")
    };
    let alice = write(dir, "alice.yaml", &cm("3", ", extra: x"))?;
    server.ok(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager=alice",
            "-f",
            &alice,
        ],
    )?;
    let bob = write(dir, "bob.yaml", &cm("5", ""))?;
    let conflict = server.fails(
        v,
        &["apply", "--server-side", "--field-manager=bob", "-f", &bob],
    )?;
    ensure!(
        conflict.contains("conflict with \"alice\": .data.size"),
        "{conflict}"
    );
    server.ok(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "--force-conflicts",
            "-f",
            &bob,
        ],
    )?;
    let size = server.ok(v, &["get", "cm", "owned", "-o", "jsonpath={.data.size}"])?;
    ensure!(size == "5", "{size}");
    let alice = write(dir, "alice.yaml", &cm("5", ""))?;
    server.ok(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager=alice",
            "-f",
            &alice,
        ],
    )?;
    let labels = json(&server.ok(
        v,
        &["get", "cm", "owned", "-o", "jsonpath={.metadata.labels}"],
    )?)?;
    ensure!(
        labels == serde_json::json!({"team": "a"}),
        "the label alice stopped applying stayed: {labels}"
    );
    server.ok(v, &["delete", "cm", "owned"])?;
    Ok(())
}

/// events.k8s.io/v1 and core/v1 Events are one set of objects in two shapes.
fn events_in_both_apis(server: &Server, dir: &Path) -> Result<()> {
    let v = "1.33";
    let event = write(
        dir,
        "event.yaml",
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: e1}\neventTime: \"2026-11-22T00:00:00.000000Z\"\nreportingController: corten.io/test\nreportingInstance: test-1\naction: Testing\nreason: Tested\nnote: it works\ntype: Normal\nregarding: {kind: Pod, name: p1, namespace: default}\n",
    )?;
    server.ok(v, &["apply", "-f", &event])?;
    let new = json(&server.ok(
        v,
        &[
            "get",
            "--raw",
            "/apis/events.k8s.io/v1/namespaces/default/events/e1",
        ],
    )?)?;
    ensure!(
        new["note"] == "it works" && new["regarding"]["name"] == "p1",
        "{new}"
    );
    let core = json(&server.ok(v, &["get", "--raw", "/api/v1/namespaces/default/events/e1"])?)?;
    ensure!(
        core["apiVersion"] == "v1"
            && core["message"] == "it works"
            && core["involvedObject"]["name"] == "p1",
        "{core}"
    );
    server.ok(v, &["delete", "events.v1.events.k8s.io", "e1"])?;
    server.fails(v, &["get", "--raw", "/api/v1/namespaces/default/events/e1"])?;
    Ok(())
}

/// ClusterIPs are never handed out twice and come back when their Service goes.
fn service_addresses(server: &Server, dir: &Path) -> Result<()> {
    let v = "1.33";
    let svc = |name: &str| {
        write(dir, &format!("{name}.yaml"), &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: 10.43.200.200\n  ports:\n  - port: 53\n    protocol: UDP\n"))
    };
    server.ok(v, &["apply", "-f", &svc("first")?])?;
    let taken = server.fails(v, &["apply", "-f", &svc("second")?])?;
    ensure!(taken.contains("already allocated"), "{taken}");
    server.ok(v, &["delete", "service", "first"])?;
    server.ok(v, &["apply", "-f", &svc("second")?])?;
    let ip = server.ok(
        v,
        &["get", "svc", "second", "-o", "jsonpath={.spec.clusterIP}"],
    )?;
    ensure!(ip == "10.43.200.200", "{ip}");
    server.ok(v, &["delete", "service", "second"])?;
    Ok(())
}

fn bad_input(server: &Server, dir: &Path) -> Result<()> {
    let v = "1.33";
    let cases: [(&str, &str, &str); 5] = [
        (
            "malformed.json",
            "{\"apiVersion\": \"v1\", \"kind\": ",
            "BadRequest",
        ),
        (
            "badname.json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
            "Invalid",
        ),
        (
            "noname.json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#,
            "Invalid",
        ),
        (
            "wrongkind.json",
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
            "BadRequest",
        ),
        (
            "wrongtype.json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"k":5}}"#,
            "Invalid",
        ),
    ];
    for (file, body, reason) in cases {
        let path = write(dir, file, body)?;
        let err = server.fails(
            v,
            &[
                "create",
                "--raw",
                "/api/v1/namespaces/default/configmaps",
                "-f",
                &path,
            ],
        )?;
        ensure!(
            err.contains(reason) || err.contains(&reason.to_lowercase()),
            "{file}: {err}"
        );
    }
    let missing = server.fails(
        v,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/nowhere/configmaps",
            "-f",
            &write(
                dir,
                "ok.json",
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            )?,
        ],
    )?;
    ensure!(
        missing.contains("NotFound") || missing.contains("not found"),
        "{missing}"
    );
    let huge = "x".repeat(4 * 1024 * 1024);
    let big = write(
        dir,
        "big.json",
        &format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"k":"{huge}"}}}}"#
        ),
    )?;
    let too_large = server.fails(
        v,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            &big,
        ],
    )?;
    ensure!(
        too_large.contains("too large") || too_large.contains("RequestEntityTooLarge"),
        "{too_large}"
    );
    // kubectl asks for strict field validation, and an unknown field is refused.
    let typo = write(
        dir,
        "typo.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndatta:\n  a: b\n",
    )?;
    let strict = server.fails(v, &["apply", "-f", &typo])?;
    ensure!(
        strict.contains("strict decoding error: unknown field \"datta\""),
        "{strict}"
    );
    // With --validate=warn the object is accepted and the client warned.
    let warned = server.kubectl(v, &["apply", "--validate=warn", "-f", &typo])?;
    let stderr = String::from_utf8_lossy(&warned.stderr);
    ensure!(
        warned.status.success() && stderr.contains("Warning: unknown field \"datta\""),
        "{stderr}"
    );
    server.ok(v, &["delete", "cm", "typo"])?;
    // Still serving after all of it.
    server.ok(v, &["get", "--raw", "/readyz"])?;
    Ok(())
}

/// The claims of a JWT printed by kubectl.
fn jwt_claims(token: &str) -> Result<Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// `kubectl create token` (a TokenRequest in kubectl's protobuf body) for the `default`
/// ServiceAccount the controller makes, its validation errors, and the token as kubectl's
/// only credential.
fn service_account_tokens(server: &Server, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .kubectl("1.33", &["get", "serviceaccount", "default"])?
        .status
        .success()
    {
        ensure!(
            Instant::now() < deadline,
            "the ServiceAccount controller made no default ServiceAccount"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let token = server.ok("1.33", &["create", "token", "default"])?;
    let token = token.trim();
    let claims = jwt_claims(token)?;
    ensure!(
        claims["sub"] == "system:serviceaccount:default:default"
            && claims["aud"] == serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
            && claims["exp"]
                .as_i64()
                .zip(claims["iat"].as_i64())
                .map(|(e, i)| e - i)
                == Some(3600),
        "{claims}"
    );
    let short = server.ok(
        "1.33",
        &[
            "create",
            "token",
            "default",
            "--duration=10m",
            "--audience=api",
            "--audience=vault",
        ],
    )?;
    let claims = jwt_claims(short.trim())?;
    ensure!(
        claims["aud"] == serde_json::json!(["api", "vault"])
            && claims["exp"]
                .as_i64()
                .zip(claims["iat"].as_i64())
                .map(|(e, i)| e - i)
                == Some(600),
        "{claims}"
    );
    let too_short = server.fails("1.33", &["create", "token", "default", "--duration=5m"])?;
    ensure!(too_short.contains("less than 10 minutes"), "{too_short}");
    let missing = server.fails("1.33", &["create", "token", "nobody"])?;
    ensure!(missing.contains("not found"), "{missing}");

    // The token alone authenticates kubectl; a tampered one does not.
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(server.kubeconfig())?)?;
    let cluster = &admin["clusters"][0]["cluster"];
    let url = cluster["server"].as_str().context("no server")?;
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .context("no CA")?;
    let kubectl_with = |token: &str| -> Result<Output> {
        let config = write(
            dir,
            "token.kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: sa\ncurrent-context: c\n"
            ),
        )?;
        Ok(Command::new(Path::new(KUBECTL_DIR).join("kubectl.1.33"))
            .args([
                "--kubeconfig",
                &config,
                "get",
                "configmaps",
                "-n",
                "default",
            ])
            .stdin(Stdio::null())
            .output()?)
    };
    let out = kubectl_with(token)?;
    ensure!(
        out.status.success(),
        "the token did not authenticate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tampered = format!("{token}x");
    let out = kubectl_with(&tampered)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && (stderr.contains("Unauthorized") || stderr.contains("logged in")),
        "a tampered token was accepted: {stderr}"
    );
    Ok(())
}

#[test]
fn kubectl_drives_the_api_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data)?;
    let port = free_port()?;
    let server = Server::start(&data, port)?;
    for version in ["1.33", "1.27"] {
        exercise(&server, version, dir.path()).with_context(|| format!("kubectl {version}"))?;
        workloads(&server, version, dir.path())
            .with_context(|| format!("workloads, kubectl {version}"))?;
        custom_resources(&server, version, dir.path())
            .with_context(|| format!("CRDs, kubectl {version}"))?;
        lifecycle(&server, version, dir.path())
            .with_context(|| format!("explain/edit/wait/delete, kubectl {version}"))?;
    }
    service_addresses(&server, dir.path())?;
    pod_subresources(&server, dir.path())?;
    apply_ownership(&server, dir.path())?;
    events_in_both_apis(&server, dir.path())?;
    bad_input(&server, dir.path())?;
    service_account_tokens(&server, dir.path())?;
    protobuf_bodies(&server, dir.path())?;
    openapi_v2(&server, dir.path())?;

    // Objects survive a restart, and a watch continues from the last resourceVersion seen.
    let kept = write(
        dir.path(),
        "kept.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kept","namespace":"default"},"data":{"a":"1"}}"#,
    )?;
    server.ok("1.33", &["create", "-f", &kept])?;
    let rv = server.ok(
        "1.33",
        &[
            "get",
            "cm",
            "kept",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    )?;
    drop(server);
    let server = Server::start(&data, port)?;
    let after = json(&server.ok("1.33", &["get", "cm", "kept", "-o", "json"])?)?;
    ensure!(
        after["data"]["a"] == "1" && after["metadata"]["resourceVersion"] == rv.as_str(),
        "{after}"
    );
    server.ok(
        "1.33",
        &[
            "patch",
            "cm",
            "kept",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"a":"2"}}"#,
        ],
    )?;
    let events = server.ok(
        "1.33",
        &["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2")],
    )?;
    let first: Value = json(events.lines().next().context("the watch sent nothing")?)?;
    ensure!(
        first["type"] == "MODIFIED" && first["object"]["data"]["a"] == "2",
        "{events}"
    );
    Ok(())
}

/// Every `$ref` in a document that names no definition of it.
fn dangling_references(doc: &Value) -> Vec<String> {
    fn walk(value: &Value, definitions: &serde_json::Map<String, Value>, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child.as_str()) {
                        ("$ref", Some(target)) => {
                            let name = target.strip_prefix("#/definitions/").unwrap_or(target);
                            if !definitions.contains_key(name) {
                                out.push(target.to_owned());
                            }
                        }
                        _ => walk(child, definitions, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, definitions, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(definitions) = doc["definitions"].as_object() {
        walk(doc, definitions, &mut out);
    }
    out
}

/// `/openapi/v2` as kubectl reads it (the protobuf form): `explain
/// --output=plaintext-openapiv2` for built-in and custom kinds; client-side validation of
/// custom resources against their schema (kubectl checks a kind itself when its PATCH
/// operation does not declare `fieldValidation`, as custom kinds' do not here, while
/// built-in kinds are checked by the server with `fieldValidation=Strict`); and the patch
/// metadata (merge keys, retainKeys) that client-side `apply` computes its patches from.
fn openapi_v2(server: &Server, dir: &Path) -> Result<()> {
    let crd = write(
        dir,
        "crontab-crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: crontabs.openapi.corten.io\nspec:\n  group: openapi.corten.io\n  scope: Namespaced\n  names: {plural: crontabs, singular: crontab, kind: CronTab}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            required: [cronSpec]\n            properties:\n              cronSpec: {type: string, description: \"When to run, in cron format.\"}\n              replicas: {type: integer, minimum: 0}\n              port: {x-kubernetes-int-or-string: true, anyOf: [{type: integer}, {type: string}]}\n              tags: {type: array, items: {type: string}, x-kubernetes-list-type: set}\n              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}\n              note: {type: string, nullable: true}\n",
    )?;
    server.ok("1.33", &["apply", "-f", &crd])?;
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Established",
            "crd/crontabs.openapi.corten.io",
            "--timeout=20s",
        ],
    )?;
    let doc = json(&server.ok("1.33", &["get", "--raw", "/openapi/v2"])?)?;
    ensure!(
        doc["definitions"]["io.corten.openapi.v1.CronTab"]["x-kubernetes-group-version-kind"]
            == serde_json::json!([{"group": "openapi.corten.io", "version": "v1", "kind": "CronTab"}]),
        "the CRD's definition is missing or untagged"
    );
    let dangling = dangling_references(&doc);
    ensure!(dangling.is_empty(), "references to nothing: {dangling:?}");

    let crontab = |name: &str, spec: &str| {
        write(
            dir,
            &format!("{name}.yaml"),
            &format!("apiVersion: openapi.corten.io/v1\nkind: CronTab\nmetadata:\n  name: {name}\nspec: {spec}\n"),
        )
    };
    for v in ["1.33", "1.27"] {
        let tag = v.replace('.', "");
        let containers = server.ok(
            v,
            &[
                "explain",
                "pods.spec.containers",
                "--output=plaintext-openapiv2",
            ],
        )?;
        ensure!(
            containers.contains("RESOURCE: containers <[]Object>")
                && containers.contains("   image\t<string>")
                && containers.contains("   name\t<string> -required-"),
            "kubectl {v}: {containers}"
        );
        let spec = server.ok(
            v,
            &[
                "explain",
                "crontabs.openapi.corten.io.spec",
                "--output=plaintext-openapiv2",
            ],
        )?;
        ensure!(
            spec.contains("KIND:     CronTab")
                && spec.contains("   cronSpec\t<string> -required-")
                && spec.contains("When to run, in cron format.")
                && spec.contains("   replicas\t<integer>")
                && spec.contains("   tags\t<[]string>"),
            "kubectl {v}: {spec}"
        );

        // kubectl itself refuses what the schema does not allow: nothing reaches the server.
        let unknown = crontab(
            &format!("unknown-{tag}"),
            "{cronSpec: \"* * * * *\", bogus: 1}",
        )?;
        let refused = server.fails(v, &["apply", "--validate=true", "-f", &unknown])?;
        ensure!(
            refused.contains(
                "ValidationError(CronTab.spec): unknown field \"bogus\" in io.corten.openapi.v1.CronTab.spec"
            ),
            "kubectl {v}: {refused}"
        );
        let mistyped = crontab(
            &format!("mistyped-{tag}"),
            "{cronSpec: \"* * * * *\", replicas: two}",
        )?;
        let refused = server.fails(v, &["create", "-f", &mistyped])?;
        ensure!(
            refused.contains("invalid type for io.corten.openapi.v1.CronTab.spec.replicas: got \"string\", expected \"integer\""),
            "kubectl {v}: {refused}"
        );
        for name in [format!("unknown-{tag}"), format!("mistyped-{tag}")] {
            let absent = server.fails(v, &["get", "crontabs.openapi.corten.io", &name])?;
            ensure!(absent.contains("NotFound"), "kubectl {v}: {absent}");
        }
        // What the schema leaves open (int-or-string, null, preserved fields) passes.
        let fine = crontab(
            &format!("fine-{tag}"),
            "{cronSpec: \"* * * * *\", replicas: 2, port: http, note: null, tags: [a], extra: {any: [1, {b: c}]}}",
        )?;
        server.ok(v, &["apply", "-f", &fine])?;
        // Without client-side validation the server takes it and prunes the unknown field.
        server.ok(v, &["apply", "--validate=false", "-f", &unknown])?;
        let pruned = json(&server.ok(
            v,
            &[
                "get",
                "crontabs.openapi.corten.io",
                &format!("unknown-{tag}"),
                "-o",
                "jsonpath={.spec}",
            ],
        )?)?;
        ensure!(pruned.get("bogus").is_none(), "kubectl {v}: {pruned}");
        // Built-in kinds are checked by the server (their PATCH declares fieldValidation),
        // so the error is the server's strict decoding error, not kubectl's.
        let typo = write(
            dir,
            "openapi-typo.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: openapi-typo\ndatta:\n  a: b\n",
        )?;
        let strict = server.fails(v, &["apply", "--validate=strict", "-f", &typo])?;
        ensure!(
            strict.contains("strict decoding error: unknown field \"datta\"")
                && !strict.contains("ValidationError"),
            "kubectl {v}: {strict}"
        );

        // Client-side apply computes its strategic merge patch from the v2 patch metadata:
        // a container dropped from the file is deleted by its merge key, and a strategy
        // switched to Recreate drops rollingUpdate (retainKeys).
        let deployment = |containers: &str, strategy: &str| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: patched-{tag}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: patched}}\n  strategy: {strategy}\n  template:\n    metadata:\n      labels: {{app: patched}}\n    spec:\n      containers:\n{containers}")
        };
        let both = "      - {name: a, image: corten.local/busybox:1}\n      - {name: b, image: corten.local/busybox:1}\n";
        let one = "      - {name: a, image: corten.local/busybox:1}\n";
        let file = write(
            dir,
            &format!("patched-{tag}.yaml"),
            &deployment(both, "{type: RollingUpdate, rollingUpdate: {maxSurge: 2}}"),
        )?;
        server.ok(v, &["apply", "-f", &file])?;
        let file = write(
            dir,
            &format!("patched-{tag}.yaml"),
            &deployment(one, "{type: Recreate}"),
        )?;
        server.ok(v, &["apply", "-f", &file])?;
        let applied = json(&server.ok(
            v,
            &["get", "deploy", &format!("patched-{tag}"), "-o", "json"],
        )?)?;
        let names: Vec<&str> = applied["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        ensure!(names == ["a"], "kubectl {v}: containers {names:?}");
        ensure!(
            applied["spec"]["strategy"] == serde_json::json!({"type": "Recreate"}),
            "kubectl {v}: strategy {}",
            applied["spec"]["strategy"]
        );
        server.ok(v, &["delete", "-f", &file])?;
    }

    // The document follows the CRDs: gone with its CRD.
    server.ok("1.33", &["delete", "-f", &crd])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = json(&server.ok("1.33", &["get", "--raw", "/openapi/v2"])?)?;
        if doc["definitions"]
            .get("io.corten.openapi.v1.CronTab")
            .is_none()
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the CRD's definition outlived the CRD"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// kubectl 1.32+ sends its typed writes (`kubectl create namespace|configmap|secret|...`)
/// as Kubernetes protobuf; each object must be stored as the JSON kubectl would have sent,
/// checked here field by field after reading it back.
fn protobuf_bodies(server: &Server, dir: &Path) -> Result<()> {
    let v = "1.33";
    let ns = "pb-bodies";
    let get = |args: &[&str]| -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-n", ns, "-o", "json"]);
        json(&server.ok(v, &all)?)
    };
    // The body really is protobuf (kubectl logs its request headers at -v=8).
    let created = server.kubectl(v, &["create", "namespace", ns, "-v=8"])?;
    let log = String::from_utf8_lossy(&created.stderr);
    ensure!(
        created.status.success()
            && log.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{log}"
    );
    let namespace = json(&server.ok(v, &["get", "namespace", ns, "-o", "json"])?)?;
    ensure!(
        namespace["metadata"]["name"] == ns
            && namespace["metadata"].get("namespace").is_none()
            && namespace["metadata"]["creationTimestamp"].is_string()
            && namespace["spec"]["finalizers"] == serde_json::json!(["kubernetes"])
            && namespace["status"]["phase"] == "Active",
        "{namespace}"
    );

    server.ok(
        v,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            ns,
            "--from-literal=a=1",
            "--from-literal=b=two",
        ],
    )?;
    let cm = get(&["configmap", "settings"])?;
    ensure!(
        cm["data"] == serde_json::json!({"a": "1", "b": "two"})
            && cm["metadata"]["namespace"] == ns
            && cm.get("binaryData").is_none()
            && cm["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|rv| !rv.is_empty()),
        "{cm}"
    );

    let blob = dir.join("blob.bin");
    std::fs::write(&blob, [0u8, 1, 2, 255])?;
    let blob = format!("--from-file=blob={}", blob.display());
    server.ok(
        v,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "-n",
            ns,
            "--from-literal=user=admin",
            &blob,
        ],
    )?;
    let secret = get(&["secret", "creds"])?;
    ensure!(
        secret["data"] == serde_json::json!({"user": "YWRtaW4=", "blob": "AAEC/w=="})
            && secret["type"] == "Opaque",
        "{secret}"
    );

    server.ok(
        v,
        &[
            "create",
            "deployment",
            "web",
            "-n",
            ns,
            "--image=corten.local/busybox:1",
            "--replicas=3",
            "--port=8080",
        ],
    )?;
    let deployment = get(&["deployment", "web"])?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        deployment["spec"]["replicas"] == 3
            && deployment["spec"]["selector"]["matchLabels"] == serde_json::json!({"app": "web"})
            && deployment["spec"]["template"]["metadata"]["labels"]["app"] == "web"
            && container["name"] == "busybox"
            && container["image"] == "corten.local/busybox:1"
            && container["ports"][0]["containerPort"] == 8080
            && container["ports"][0].get("hostPort").is_none()
            && container["ports"][0].get("name").is_none(),
        "{deployment}"
    );
    // A pointer set to zero is kept, not defaulted (replicas would become 1).
    server.ok(
        v,
        &[
            "create",
            "deployment",
            "idle",
            "-n",
            ns,
            "--image=corten.local/busybox:1",
            "--replicas=0",
        ],
    )?;
    let idle = get(&["deployment", "idle"])?;
    ensure!(idle["spec"]["replicas"] == 0, "{idle}");

    server.ok(
        v,
        &[
            "create",
            "service",
            "clusterip",
            "front",
            "-n",
            ns,
            "--tcp=80:8080",
            "--tcp=443:8443",
        ],
    )?;
    let service = get(&["service", "front"])?;
    let ports = &service["spec"]["ports"];
    ensure!(
        service["spec"]["type"] == "ClusterIP"
            && service["spec"]["selector"] == serde_json::json!({"app": "front"})
            && service["spec"]["clusterIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.43."))
            && ports[0]["name"] == "80-8080"
            && ports[0]["port"] == 80
            && ports[0]["targetPort"] == 8080
            && ports[0]["protocol"] == "TCP"
            && ports[1]["port"] == 443
            && ports[1]["targetPort"] == 8443,
        "{service}"
    );

    server.ok(
        v,
        &[
            "create",
            "job",
            "once",
            "-n",
            ns,
            "--image=corten.local/busybox:1",
            "--",
            "echo",
            "hi",
        ],
    )?;
    let job = get(&["job", "once"])?;
    let pod_spec = &job["spec"]["template"]["spec"];
    ensure!(
        pod_spec["containers"][0]["command"] == serde_json::json!(["echo", "hi"])
            && pod_spec["containers"][0]["name"] == "once"
            && pod_spec["restartPolicy"] == "Never",
        "{job}"
    );

    server.ok(
        v,
        &[
            "create",
            "cronjob",
            "tick",
            "-n",
            ns,
            "--image=corten.local/busybox:1",
            "--schedule=*/5 * * * *",
            "--",
            "date",
        ],
    )?;
    let cronjob = get(&["cronjob", "tick"])?;
    let pod_spec = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    ensure!(
        cronjob["spec"]["schedule"] == "*/5 * * * *"
            && pod_spec["containers"][0]["command"] == serde_json::json!(["date"])
            && pod_spec["restartPolicy"] == "OnFailure",
        "{cronjob}"
    );

    server.ok(v, &["create", "serviceaccount", "robot", "-n", ns])?;
    let account = get(&["serviceaccount", "robot"])?;
    ensure!(
        account["metadata"]["name"] == "robot" && account["metadata"]["namespace"] == ns,
        "{account}"
    );

    server.ok(
        v,
        &[
            "create",
            "quota",
            "small",
            "-n",
            ns,
            "--hard=cpu=1,memory=1G,pods=2",
            "--scopes=BestEffort",
        ],
    )?;
    let quota = get(&["resourcequota", "small"])?;
    ensure!(
        quota["spec"]["hard"] == serde_json::json!({"cpu": "1", "memory": "1G", "pods": "2"})
            && quota["spec"]["scopes"] == serde_json::json!(["BestEffort"]),
        "{quota}"
    );

    server.ok(
        v,
        &[
            "create",
            "priorityclass",
            "pb-high",
            "--value=1000",
            "--description=high prio",
            "--preemption-policy=Never",
        ],
    )?;
    let class = json(&server.ok(v, &["get", "priorityclass", "pb-high", "-o", "json"])?)?;
    ensure!(
        class["value"] == 1000
            && class["description"] == "high prio"
            && class["preemptionPolicy"] == "Never"
            && class.get("globalDefault").is_none_or(|g| g == false),
        "{class}"
    );

    server.ok(
        v,
        &[
            "create",
            "poddisruptionbudget",
            "guard",
            "-n",
            ns,
            "--selector=app=web",
            "--min-available=50%",
        ],
    )?;
    let budget = get(&["poddisruptionbudget", "guard"])?;
    ensure!(
        budget["spec"]["minAvailable"] == "50%"
            && budget["spec"]["selector"]["matchLabels"] == serde_json::json!({"app": "web"})
            && budget["spec"].get("maxUnavailable").is_none(),
        "{budget}"
    );

    server.ok(
        v,
        &[
            "create",
            "role",
            "reader",
            "-n",
            ns,
            "--verb=get,list",
            "--resource=pods",
        ],
    )?;
    let role = get(&["role", "reader"])?;
    ensure!(
        role["rules"]
            == serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
        "{role}"
    );

    server.ok(
        v,
        &[
            "run",
            "solo",
            "-n",
            ns,
            "--image=corten.local/busybox:1",
            "--port=80",
            "--env=A=1",
            "--env=B=two",
            "--labels=app=solo,tier=x",
            "--",
            "sleep",
            "3600",
        ],
    )?;
    let pod = get(&["pod", "solo"])?;
    let container = &pod["spec"]["containers"][0];
    ensure!(
        pod["metadata"]["labels"] == serde_json::json!({"app": "solo", "tier": "x"})
            && container["image"] == "corten.local/busybox:1"
            && container["ports"][0]["containerPort"] == 80
            && container["env"]
                == serde_json::json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}])
            && container["args"] == serde_json::json!(["sleep", "3600"]),
        "{pod}"
    );

    server.ok(
        v,
        &[
            "expose",
            "deployment",
            "web",
            "-n",
            ns,
            "--port=80",
            "--target-port=8080",
            "--name=web-front",
        ],
    )?;
    let exposed = get(&["service", "web-front"])?;
    ensure!(
        exposed["spec"]["selector"] == serde_json::json!({"app": "web"})
            && exposed["spec"]["ports"][0]["port"] == 80
            && exposed["spec"]["ports"][0]["targetPort"] == 8080,
        "{exposed}"
    );
    server.ok(v, &["delete", "priorityclass", "pb-high"])?;
    server.ok(v, &["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}
