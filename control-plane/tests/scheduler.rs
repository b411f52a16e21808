//! The scheduler inside a real `corten-server`, driven with kube-rs: Node objects that no
//! agent backs (the test writes their status), pods created through the API, placements read
//! back from `spec.nodeName`. Covers every filter (resources, pod count, host ports,
//! nodeName, nodeSelector and required node affinity, taints and tolerations, cordoned
//! nodes, pod affinity and anti-affinity, topology spread), the effect of every score
//! (least allocated, balanced allocation, preferred node affinity, PreferNoSchedule taints,
//! image locality, preferred pod affinity, soft topology spread), the `PodScheduled=False`
//! condition and `FailedScheduling` event of a pod that fits nowhere, re-queueing when a node
//! appears, priority classes and preemption, and `schedulerName`.
mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client,
};
use serde_json::{json, Value};
use support::server::{eventually, Server};

const WAIT: Duration = Duration::from_secs(20);

/// A node with allocatable cpu (cores), memory (GiB) and pod count, labels and taints.
fn node(name: &str, cpu: &str, memory_gi: u32, pods: u32, labels: Value, taints: Value) -> Value {
    let mut labels = labels;
    if let Some(map) = labels.as_object_mut() {
        map.insert("kubernetes.io/hostname".to_owned(), json!(name));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {
            "capacity": {"cpu": cpu, "memory": format!("{memory_gi}Gi"), "pods": pods.to_string()},
            "allocatable": {"cpu": cpu, "memory": format!("{memory_gi}Gi"), "pods": pods.to_string()},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node"}],
        },
    })
}

async fn add_node(client: &Client, node: Value) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let status = node["status"].clone();
    let object: Node = serde_json::from_value(node)?;
    nodes.create(&PostParams::default(), &object).await?;
    // Status is a subresource: write it the way a kubelet does.
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    Ok(())
}

/// A pod with cpu/memory requests and any extra spec fields merged in.
fn pod(name: &str, cpu: &str, memory: &str, extra_spec: Value, labels: Value) -> Result<Pod> {
    let mut spec = json!({
        "containers": [{
            "name": "main",
            "image": "corten/busybox:1",
            "resources": {"requests": {"cpu": cpu, "memory": memory}},
        }],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))?)
}

async fn create(pods: &Api<Pod>, pod: Pod) -> Result<()> {
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {:?}", pod.metadata.name))?;
    Ok(())
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Result<String> {
    eventually(WAIT, &format!("pod {name} to be scheduled"), || async {
        let pod = pods.get(name).await?;
        Ok(pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
    })
    .await
}

/// Waits until the pod is marked unschedulable; returns the condition's message.
async fn unschedulable(pods: &Api<Pod>, name: &str) -> Result<String> {
    eventually(WAIT, &format!("pod {name} to be unschedulable"), || async {
        let pod = pods.get(name).await?;
        ensure!(
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none(),
            "pod {name} was scheduled"
        );
        let condition = pod
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False");
        Ok(condition.map(|c| {
            assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
            c.message.unwrap_or_default()
        }))
    })
    .await
}

async fn setup(nodes: Vec<Value>) -> Result<(Server, Client, Api<Pod>)> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    for node in nodes {
        add_node(&client, node).await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    Ok((server, client, pods))
}

#[tokio::test]
async fn resources_decide_and_a_new_node_unblocks_a_pending_pod() -> Result<()> {
    let (_server, client, pods) = setup(vec![
        node("small", "1", 4, 110, json!({}), json!([])),
        node("big", "4", 4, 110, json!({}), json!([])),
    ])
    .await?;
    create(&pods, pod("two-cores", "2", "100Mi", json!({}), json!({}))?).await?;
    ensure!(node_of(&pods, "two-cores").await? == "big");
    create(&pods, pod("huge", "8", "100Mi", json!({}), json!({}))?).await?;
    let message = unschedulable(&pods, "huge").await?;
    ensure!(
        message.starts_with("0/2 nodes are available: 2 Insufficient cpu."),
        "{message}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(WAIT, "a FailedScheduling event", || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.name.as_deref() == Some("huge")
            })
            .map(|_| ()))
    })
    .await?;
    create(
        &pods,
        pod("too-big-memory", "100m", "64Gi", json!({}), json!({}))?,
    )
    .await?;
    let message = unschedulable(&pods, "too-big-memory").await?;
    ensure!(message.contains("2 Insufficient memory"), "{message}");
    add_node(
        &client,
        node("huge-node", "16", 128, 110, json!({}), json!([])),
    )
    .await?;
    ensure!(node_of(&pods, "huge").await? == "huge-node");
    ensure!(node_of(&pods, "too-big-memory").await? == "huge-node");
    // The bound pod carries PodScheduled=True.
    let bound = pods.get("huge").await?;
    let scheduled = bound
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True");
    ensure!(scheduled);
    Ok(())
}

#[tokio::test]
async fn pod_count_host_ports_and_node_name() -> Result<()> {
    let (_server, _client, pods) = setup(vec![
        node("one-pod", "4", 4, 1, json!({}), json!([])),
        node("ports", "4", 4, 110, json!({}), json!([])),
    ])
    .await?;
    // A pod the user bound itself counts on its node.
    create(
        &pods,
        pod(
            "pinned",
            "100m",
            "10Mi",
            json!({"nodeName": "one-pod"}),
            json!({}),
        )?,
    )
    .await?;
    let port = json!({"containers": [{"name": "main", "image": "corten/busybox:1",
        "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "TCP"}]}]});
    create(
        &pods,
        pod("port-a", "100m", "10Mi", port.clone(), json!({}))?,
    )
    .await?;
    ensure!(
        node_of(&pods, "port-a").await? == "ports",
        "one-pod holds one pod only"
    );
    create(&pods, pod("port-b", "100m", "10Mi", port, json!({}))?).await?;
    let message = unschedulable(&pods, "port-b").await?;
    ensure!(
        message.contains("1 Too many pods")
            && message.contains("1 node(s) didn't have free ports for the requested pod ports"),
        "{message}"
    );
    // A UDP port of the same number does not conflict.
    let udp = json!({"containers": [{"name": "main", "image": "corten/busybox:1",
        "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]});
    create(&pods, pod("port-udp", "100m", "10Mi", udp, json!({}))?).await?;
    ensure!(node_of(&pods, "port-udp").await? == "ports");
    Ok(())
}

#[tokio::test]
async fn selectors_affinity_taints_and_cordons() -> Result<()> {
    let (_server, client, pods) = setup(vec![
        node(
            "ssd",
            "4",
            4,
            110,
            json!({"disk": "ssd", "gen": "5"}),
            json!([]),
        ),
        node(
            "hdd",
            "4",
            4,
            110,
            json!({"disk": "hdd", "gen": "3"}),
            json!([]),
        ),
        node(
            "gpu",
            "4",
            4,
            110,
            json!({"disk": "ssd", "gen": "9"}),
            json!([{"key": "gpu", "value": "true", "effect": "NoSchedule"}]),
        ),
    ])
    .await?;
    create(
        &pods,
        pod(
            "selector",
            "100m",
            "10Mi",
            json!({"nodeSelector": {"disk": "hdd"}}),
            json!({}),
        )?,
    )
    .await?;
    ensure!(node_of(&pods, "selector").await? == "hdd");
    let affinity = |op: &str, values: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": op, "values": values}]}]
        }}}})
    };
    create(
        &pods,
        pod(
            "gt",
            "100m",
            "10Mi",
            affinity("Gt", json!(["4"])),
            json!({}),
        )?,
    )
    .await?;
    ensure!(
        node_of(&pods, "gt").await? == "ssd",
        "gpu is tainted, hdd is gen 3"
    );
    create(
        &pods,
        pod(
            "notin",
            "100m",
            "10Mi",
            affinity("NotIn", json!(["5"])),
            json!({}),
        )?,
    )
    .await?;
    ensure!(node_of(&pods, "notin").await? == "hdd");
    // A toleration opens the tainted node.
    let tolerant = json!({
        "nodeSelector": {"gen": "9"},
        "tolerations": [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    });
    create(&pods, pod("tolerant", "100m", "10Mi", tolerant, json!({}))?).await?;
    ensure!(node_of(&pods, "tolerant").await? == "gpu");
    create(
        &pods,
        pod(
            "intolerant",
            "100m",
            "10Mi",
            json!({"nodeSelector": {"gen": "9"}}),
            json!({}),
        )?,
    )
    .await?;
    let message = unschedulable(&pods, "intolerant").await?;
    ensure!(
        message.contains("1 node(s) had untolerated taint {gpu: true}")
            && message.contains("2 node(s) didn't match Pod's node affinity/selector"),
        "{message}"
    );
    // Cordoning: the cordoned node is skipped.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "hdd",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    create(
        &pods,
        pod(
            "cordoned",
            "100m",
            "10Mi",
            json!({"nodeSelector": {"disk": "hdd"}}),
            json!({}),
        )?,
    )
    .await?;
    let message = unschedulable(&pods, "cordoned").await?;
    ensure!(
        message.contains("1 node(s) were unschedulable"),
        "{message}"
    );
    nodes
        .patch(
            "hdd",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await?;
    ensure!(node_of(&pods, "cordoned").await? == "hdd");
    Ok(())
}

fn zone_nodes() -> Vec<Value> {
    vec![
        node("a1", "8", 16, 110, json!({"zone": "a"}), json!([])),
        node("a2", "8", 16, 110, json!({"zone": "a"}), json!([])),
        node("b1", "8", 16, 110, json!({"zone": "b"}), json!([])),
    ]
}

#[tokio::test]
async fn pod_affinity_anti_affinity_and_topology_spread() -> Result<()> {
    let (_server, _client, pods) = setup(zone_nodes()).await?;
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "spread"}}, "topologyKey": "kubernetes.io/hostname"}
    ]}}});
    let mut placed = Vec::new();
    for i in 0..3 {
        let name = format!("anti-{i}");
        create(
            &pods,
            pod(
                &name,
                "100m",
                "10Mi",
                anti.clone(),
                json!({"app": "spread"}),
            )?,
        )
        .await?;
        placed.push(node_of(&pods, &name).await?);
    }
    placed.sort();
    ensure!(placed == ["a1", "a2", "b1"], "{placed:?}");
    create(
        &pods,
        pod("anti-3", "100m", "10Mi", anti, json!({"app": "spread"}))?,
    )
    .await?;
    let message = unschedulable(&pods, "anti-3").await?;
    // Upstream checks the existing pods' terms first, and they reject the newcomer too.
    ensure!(
        message.contains("3 node(s) didn't satisfy existing pods anti-affinity rules"),
        "{message}"
    );

    // Required affinity: next to the database, by zone.
    create(
        &pods,
        pod(
            "db",
            "100m",
            "10Mi",
            json!({"nodeSelector": {"zone": "b"}}),
            json!({"app": "db"}),
        )?,
    )
    .await?;
    ensure!(node_of(&pods, "db").await? == "b1");
    let near_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}
    ]}}});
    create(&pods, pod("web", "100m", "10Mi", near_db, json!({}))?).await?;
    ensure!(node_of(&pods, "web").await? == "b1");

    // Existing pods' anti-affinity keeps others away: "loner" refuses company in its zone.
    let loner = json!({"nodeSelector": {"zone": "a"}, "affinity": {"podAntiAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"team": "noisy"}}, "topologyKey": "zone"}
    ]}}});
    create(&pods, pod("loner", "100m", "10Mi", loner, json!({}))?).await?;
    ensure!(node_of(&pods, "loner").await?.starts_with('a'));
    create(
        &pods,
        pod("noisy", "100m", "10Mi", json!({}), json!({"team": "noisy"}))?,
    )
    .await?;
    ensure!(node_of(&pods, "noisy").await? == "b1");

    // Hard topology spread across zones: 4 pods go 2 and 2.
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "even"}}}]});
    let mut zones = BTreeMap::new();
    for i in 0..4 {
        let name = format!("even-{i}");
        create(
            &pods,
            pod(
                &name,
                "100m",
                "10Mi",
                spread.clone(),
                json!({"app": "even"}),
            )?,
        )
        .await?;
        let node = node_of(&pods, &name).await?;
        *zones.entry(node[..1].to_owned()).or_insert(0) += 1;
    }
    ensure!(
        zones.get("a") == Some(&2) && zones.get("b") == Some(&2),
        "{zones:?}"
    );
    Ok(())
}

#[tokio::test]
async fn scores_steer_placement() -> Result<()> {
    let (_server, client, pods) = setup(vec![
        node("busy", "4", 8, 110, json!({"tier": "x"}), json!([])),
        node("idle", "4", 8, 110, json!({"tier": "y"}), json!([])),
    ])
    .await?;
    // Least allocated: after a big pod lands somewhere, the next goes to the other node.
    create(
        &pods,
        pod("big", "3", "6Gi", json!({"nodeName": "busy"}), json!({}))?,
    )
    .await?;
    create(&pods, pod("next", "100m", "100Mi", json!({}), json!({}))?).await?;
    ensure!(node_of(&pods, "next").await? == "idle");
    // Preferred node affinity outweighs the resource scores.
    let prefer_busy = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]}}
    ]}}});
    create(
        &pods,
        pod("prefers-busy", "100m", "100Mi", prefer_busy, json!({}))?,
    )
    .await?;
    ensure!(node_of(&pods, "prefers-busy").await? == "busy");
    // Preferred pod affinity: next to "next".
    let near = json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"role": "anchor"}},
            "topologyKey": "kubernetes.io/hostname"}}
    ]}}});
    create(
        &pods,
        pod(
            "anchor",
            "100m",
            "100Mi",
            json!({"nodeName": "busy"}),
            json!({"role": "anchor"}),
        )?,
    )
    .await?;
    create(&pods, pod("follower", "100m", "100Mi", near, json!({}))?).await?;
    ensure!(node_of(&pods, "follower").await? == "busy");

    // PreferNoSchedule and image locality on two equal fresh nodes.
    let nodes: Api<Node> = Api::all(client.clone());
    add_node(
        &client,
        node(
            "soft-tainted",
            "64",
            64,
            110,
            json!({"pool": "p"}),
            json!([{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]),
        ),
    )
    .await?;
    add_node(
        &client,
        node("clean", "64", 64, 110, json!({"pool": "p"}), json!([])),
    )
    .await?;
    create(
        &pods,
        pod(
            "avoids-taint",
            "100m",
            "100Mi",
            json!({"nodeSelector": {"pool": "p"}}),
            json!({}),
        )?,
    )
    .await?;
    ensure!(node_of(&pods, "avoids-taint").await? == "clean");
    add_node(
        &client,
        node("cached-1", "64", 64, 110, json!({"pool": "q"}), json!([])),
    )
    .await?;
    add_node(
        &client,
        node("cached-2", "64", 64, 110, json!({"pool": "q"}), json!([])),
    )
    .await?;
    nodes
        .patch_status(
            "cached-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"images": [
                {"names": ["docker.io/corten/big:1"], "sizeBytes": 900_000_000i64}
            ]}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let big_image = json!({"nodeSelector": {"pool": "q"},
        "containers": [{"name": "main", "image": "corten/big:1"}]});
    create(
        &pods,
        pod("wants-image", "100m", "100Mi", big_image, json!({}))?,
    )
    .await?;
    ensure!(node_of(&pods, "wants-image").await? == "cached-2");
    Ok(())
}

#[tokio::test]
async fn balanced_allocation_and_soft_spread() -> Result<()> {
    // Two nodes equally free by least-allocated, but one would be lopsided.
    let (_server, _client, pods) = setup(vec![
        node("cpu-heavy", "4", 8, 110, json!({"zone": "a"}), json!([])),
        node("mem-heavy", "4", 8, 110, json!({"zone": "b"}), json!([])),
    ])
    .await?;
    create(
        &pods,
        pod("c", "2", "1Gi", json!({"nodeName": "cpu-heavy"}), json!({}))?,
    )
    .await?;
    create(
        &pods,
        pod(
            "m",
            "500m",
            "4Gi",
            json!({"nodeName": "mem-heavy"}),
            json!({}),
        )?,
    )
    .await?;
    // A memory-heavy pod balances the cpu-heavy node.
    create(&pods, pod("balance", "10m", "3Gi", json!({}), json!({}))?).await?;
    ensure!(node_of(&pods, "balance").await? == "cpu-heavy");
    // Soft spread: a second "web" pod goes to the zone without one.
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]});
    create(
        &pods,
        pod(
            "web-0",
            "10m",
            "10Mi",
            json!({"nodeName": "mem-heavy"}),
            json!({"app": "web"}),
        )?,
    )
    .await?;
    create(
        &pods,
        pod("web-1", "10m", "10Mi", spread, json!({"app": "web"}))?,
    )
    .await?;
    ensure!(node_of(&pods, "web-1").await? == "cpu-heavy");
    Ok(())
}

#[tokio::test]
async fn priority_classes_and_preemption() -> Result<()> {
    let (_server, client, pods) =
        setup(vec![node("only", "2", 4, 110, json!({}), json!([]))]).await?;
    let _server = _server;
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    for (name, value) in [("low", 10), ("high", 1000)] {
        classes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": name}, "value": value,
                }))?,
            )
            .await?;
    }
    // Admission resolves the class; a missing class is refused.
    let err = pods
        .create(
            &PostParams::default(),
            &pod(
                "nope",
                "1",
                "1Mi",
                json!({"priorityClassName": "missing"}),
                json!({}),
            )?,
        )
        .await;
    ensure!(
        matches!(&err, Err(kube::Error::Api(s)) if s.code == 403),
        "{err:?}"
    );
    create(
        &pods,
        pod(
            "victim",
            "1500m",
            "1Gi",
            json!({"priorityClassName": "low"}),
            json!({}),
        )?,
    )
    .await?;
    ensure!(node_of(&pods, "victim").await? == "only");
    let victim = pods.get("victim").await?;
    ensure!(victim.spec.as_ref().and_then(|s| s.priority) == Some(10));
    // An equal-priority pod does not preempt.
    create(
        &pods,
        pod(
            "peer",
            "1500m",
            "1Gi",
            json!({"priorityClassName": "low"}),
            json!({}),
        )?,
    )
    .await?;
    let message = unschedulable(&pods, "peer").await?;
    ensure!(message.contains("Insufficient cpu"), "{message}");
    // A higher-priority pod evicts the victim and takes its place once it is gone.
    create(
        &pods,
        pod(
            "vip",
            "1500m",
            "1Gi",
            json!({"priorityClassName": "high"}),
            json!({}),
        )?,
    )
    .await?;
    eventually(WAIT, "the victim to be deleted", || async {
        let victim = pods.get_opt("victim").await?;
        Ok(match victim {
            None => Some(()),
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                // No kubelet: finish the graceful deletion as the kubelet would.
                pods.delete(
                    "victim",
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await?;
                None
            }
            Some(_) => None,
        })
    })
    .await?;
    let placed = node_of(&pods, "vip").await;
    ensure!(
        placed.as_ref().is_ok_and(|n| n == "only"),
        "{placed:?}; server log:\n{}",
        _server.log()
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let preempted = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("Preempted")
                && e.involved_object.name.as_deref() == Some("victim")
        });
    ensure!(preempted, "no Preempted event on the victim");
    // The lower-priority peer stays pending.
    ensure!(pods
        .get("peer")
        .await?
        .spec
        .and_then(|s| s.node_name)
        .is_none());
    Ok(())
}

#[tokio::test]
async fn pods_for_another_scheduler_are_left_alone() -> Result<()> {
    let (_server, _client, pods) =
        setup(vec![node("n", "4", 4, 110, json!({}), json!([]))]).await?;
    create(
        &pods,
        pod(
            "elsewhere",
            "100m",
            "10Mi",
            json!({"schedulerName": "other-scheduler"}),
            json!({}),
        )?,
    )
    .await?;
    create(&pods, pod("mine", "100m", "10Mi", json!({}), json!({}))?).await?;
    ensure!(node_of(&pods, "mine").await? == "n");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let other = pods.get("elsewhere").await?;
    ensure!(other.spec.and_then(|s| s.node_name).is_none());
    ensure!(
        other
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .is_empty(),
        "the default scheduler wrote a condition on another scheduler's pod"
    );
    Ok(())
}

#[tokio::test]
async fn replicas_spread_by_hostname_under_the_system_defaults() -> Result<()> {
    // Nodes so large that the replicas' requests leave every resource score equal, and no
    // zone labels: only the default hostname constraint tells the nodes apart.
    let (_server, client, pods) = setup(vec![
        node("h1", "64", 256, 110, json!({}), json!([])),
        node("h2", "64", 256, 110, json!({}), json!([])),
        node("h3", "64", 256, 110, json!({}), json!([])),
    ])
    .await?;
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(client.clone(), "default");
    let set = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "corten/busybox:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]},
            },
        },
    }))?;
    sets.create(&PostParams::default(), &set).await?;
    let per_node = eventually(WAIT, "6 replicas to be scheduled", || async {
        let list = pods.list(&Default::default()).await?;
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for pod in &list.items {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            if labels.get("app").map(String::as_str) != Some("web") {
                continue;
            }
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                *per_node.entry(node).or_insert(0) += 1;
            }
        }
        Ok((per_node.values().sum::<usize>() == 6).then_some(per_node))
    })
    .await?;
    // Random tie-breaking alone would give 2/2/2 one time in eight.
    ensure!(
        per_node.values().all(|n| *n == 2) && per_node.len() == 3,
        "{per_node:?}"
    );
    Ok(())
}
