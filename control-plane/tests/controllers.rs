//! Controllers inside a real `corten-server`, driven with kube-rs, with Node objects that no
//! agent backs (the test plays the kubelet where one is needed: it writes pod status and
//! finishes graceful deletions). Covers the ReplicaSet controller (create, adopt, scale
//! down), the garbage collector (background, foreground and orphan cascades), node IPAM,
//! the EndpointSlice / Endpoints controllers following pod readiness and termination, Job
//! podFailurePolicy / backoffLimitPerIndex / successPolicy, DaemonSet rolling updates with
//! maxSurge, and StatefulSet claim retention.
mod support;

use std::{collections::BTreeSet, time::Duration};

use anyhow::{ensure, Result};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Endpoints, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy},
    Client,
};
use serde_json::{json, Value};
use support::server::{eventually, Server};

const WAIT: Duration = Duration::from_secs(20);

async fn add_node(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
            )?,
        )
        .await?;
    let status = json!({"status": {
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

fn replicaset(name: &str, replicas: i32) -> Result<ReplicaSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "corten/busybox:1",
                    "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    }))?)
}

async fn pods_of(pods: &Api<Pod>, app: &str) -> Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

/// Waits until `count` pods labelled `app` exist and all are bound to a node.
async fn scheduled(pods: &Api<Pod>, app: &str, count: usize) -> Result<Vec<Pod>> {
    eventually(WAIT, &format!("{count} scheduled {app} pods"), || async {
        let list = pods_of(pods, app).await?;
        let bound = list
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some());
        Ok((list.len() == count && bound).then_some(list))
    })
    .await
}

/// Plays the kubelet for every pod bound to a node: Running with an IP, Ready as asked.
async fn run_pods(pods: &Api<Pod>, app: &str, ready: bool) -> Result<()> {
    for (i, pod) in pods_of(pods, app).await?.into_iter().enumerate() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none()
        {
            continue;
        }
        let status = json!({"status": {
            "phase": "Running",
            "podIP": format!("10.42.0.{}", 10 + i),
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
    }
    Ok(())
}

/// Finishes graceful deletions as a kubelet would.
async fn finish_deletions(pods: &Api<Pod>) -> Result<()> {
    for pod in pods.list(&ListParams::default()).await?.items {
        if pod.metadata.deletion_timestamp.is_some() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let _ = pods
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn replicasets_keep_their_pods_and_the_garbage_collector_cascades() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    add_node(&client, "n1").await?;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // An orphan that matches is adopted, the rest are created and scheduled.
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "orphan", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "corten/busybox:1"}]}}))?,
    )
    .await?;
    sets.create(&PostParams::default(), &replicaset("web", 3)?)
        .await?;
    let owned = eventually(WAIT, "3 scheduled pods owned by the ReplicaSet", || async {
        let list = pods_of(&pods, "web").await?;
        let owned = list
            .iter()
            .filter(|p| {
                p.metadata.owner_references.as_ref().is_some_and(|r| {
                    r.iter()
                        .any(|o| o.name == "web" && o.controller == Some(true))
                })
            })
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        Ok((list.len() == 3 && owned == 3).then_some(list))
    })
    .await?;
    ensure!(
        owned
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("orphan")),
        "the orphan was adopted"
    );
    run_pods(&pods, "web", true).await?;
    eventually(WAIT, "status.readyReplicas = 3", || async {
        let rs = sets.get("web").await?;
        let status = rs.status.unwrap_or_default();
        Ok((status.replicas == 3
            && status.ready_replicas == Some(3)
            && status.available_replicas == Some(3)
            && status.observed_generation == rs.metadata.generation)
            .then_some(()))
    })
    .await?;

    // Scale down: unready pods go before ready ones.
    let victim = owned
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .find(|n| n != "orphan")
        .unwrap_or_default();
    pods.patch_status(
        &victim,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await?;
    eventually(WAIT, "the unready pod to be deleted", || async {
        let pod = pods.get_opt(&victim).await?;
        Ok(pod
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(()))
    })
    .await?;
    finish_deletions(&pods).await?;

    // Background cascade: deleting the ReplicaSet removes its pods.
    sets.delete("web", &DeleteParams::background()).await?;
    eventually(
        WAIT,
        "the pods to be deleted by the garbage collector",
        || async {
            finish_deletions(&pods).await?;
            Ok(pods_of(&pods, "web").await?.is_empty().then_some(()))
        },
    )
    .await?;

    // Orphan: the pods stay, without the owner reference.
    sets.create(&PostParams::default(), &replicaset("keep", 2)?)
        .await?;
    eventually(WAIT, "2 pods", || async {
        Ok((pods_of(&pods, "keep").await?.len() == 2).then_some(()))
    })
    .await?;
    sets.delete("keep", &DeleteParams::orphan()).await?;
    eventually(
        WAIT,
        "the ReplicaSet to go and its pods to be orphaned",
        || async {
            let gone = sets.get_opt("keep").await?.is_none();
            let list = pods_of(&pods, "keep").await?;
            let orphaned = list.len() == 2
                && list.iter().all(|p| {
                    p.metadata
                        .owner_references
                        .as_ref()
                        .is_none_or(|r| r.is_empty())
                });
            Ok((gone && orphaned).then_some(()))
        },
    )
    .await?;

    // Foreground: the owner stays until its dependents are gone.
    sets.create(&PostParams::default(), &replicaset("fg", 2)?)
        .await?;
    eventually(WAIT, "2 pods", || async {
        Ok((pods_of(&pods, "fg").await?.len() == 2).then_some(()))
    })
    .await?;
    sets.delete(
        "fg",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteParams::default()
        },
    )
    .await?;
    let marked = sets.get("fg").await?;
    ensure!(
        marked
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_owned()),
        "foreground deletion leaves the owner with its finalizer first"
    );
    eventually(WAIT, "pods then the ReplicaSet to go", || async {
        finish_deletions(&pods).await?;
        let pods_gone = pods_of(&pods, "fg").await?.is_empty();
        let owner = sets.get_opt("fg").await?;
        ensure!(
            pods_gone || owner.is_some(),
            "the owner went before its dependents"
        );
        Ok((pods_gone && owner.is_none()).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn nodes_get_pod_cidrs() -> Result<()> {
    let server = Server::start(&[
        "--cluster-cidr",
        "10.99.0.0/22",
        "--node-cidr-mask-size",
        "24",
    ])
    .await?;
    let client = server.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["a", "b", "c", "d", "e"] {
        add_node(&client, name).await?;
    }
    let cidrs: Vec<Option<String>> = eventually(WAIT, "four nodes with pod CIDRs", || async {
        let list = nodes.list(&ListParams::default()).await?.items;
        let cidrs: Vec<Option<String>> = list
            .iter()
            .map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
            .collect();
        Ok((cidrs.iter().flatten().count() == 4).then_some(cidrs))
    })
    .await?;
    let distinct: BTreeSet<&String> = cidrs.iter().flatten().collect();
    ensure!(distinct.len() == 4, "{cidrs:?}");
    ensure!(
        distinct
            .iter()
            .all(|c| c.starts_with("10.99.") && c.ends_with(".0/24")),
        "{cidrs:?}"
    );
    // The range is exhausted; deleting a node frees its CIDR for the waiting one.
    let holder = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some())
        .and_then(|n| n.metadata.name)
        .unwrap_or_default();
    nodes.delete(&holder, &DeleteParams::default()).await?;
    eventually(WAIT, "the fifth node to get the freed CIDR", || async {
        let list = nodes.list(&ListParams::default()).await?.items;
        Ok((list.len() == 4
            && list
                .iter()
                .all(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()))
        .then_some(()))
    })
    .await?;
    Ok(())
}

fn endpoint_states(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool)> {
    let mut out: Vec<(String, bool, bool, bool)> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.addresses.first().cloned().unwrap_or_default(),
                c.ready == Some(true),
                c.serving == Some(true),
                c.terminating == Some(true),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn endpoint_slices_follow_pod_readiness() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    add_node(&client, "n1").await?;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "api"},
                "spec": {"selector": {"app": "api"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}))?,
        )
        .await?;
    // No pods yet: one empty slice.
    eventually(WAIT, "an empty slice", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await?
            .items;
        Ok((list.len() == 1 && list[0].endpoints.is_empty()).then_some(()))
    })
    .await?;
    sets.create(&PostParams::default(), &replicaset("api", 2)?)
        .await?;
    scheduled(&pods, "api", 2).await?;
    run_pods(&pods, "api", false).await?;
    let states = eventually(WAIT, "two not-ready endpoints", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await?
            .items;
        let states = endpoint_states(&list);
        Ok((states.len() == 2 && states.iter().all(|s| !s.1)).then_some(list))
    })
    .await?;
    let port = states[0].ports.clone().unwrap_or_default();
    ensure!(
        port.len() == 1 && port[0].port == Some(8080) && port[0].name.as_deref() == Some("web"),
        "{port:?}"
    );
    run_pods(&pods, "api", true).await?;
    eventually(
        WAIT,
        "two ready endpoints, in the Endpoints too",
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
                .await?
                .items;
            let ready = endpoint_states(&list)
                .iter()
                .filter(|s| s.1 && s.2 && !s.3)
                .count()
                == 2;
            let legacy = endpoints.get_opt("api").await?;
            let legacy_ready = legacy.and_then(|e| e.subsets).map(|s: Vec<_>| {
                s.iter()
                    .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()
            }) == Some(2);
            Ok((ready && legacy_ready).then_some(()))
        },
    )
    .await?;
    // A terminating pod stays in the slice as serving and terminating, but not ready.
    let leaving = pods_of(&pods, "api").await?[0]
        .metadata
        .name
        .clone()
        .unwrap_or_default();
    pods.delete(&leaving, &DeleteParams::default()).await?;
    eventually(WAIT, "a terminating endpoint", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await?
            .items;
        let states = endpoint_states(&list);
        Ok(states.iter().any(|s| !s.1 && s.2 && s.3).then_some(()))
    })
    .await?;
    let slice_value: Value =
        serde_json::to_value(&slices.list(&ListParams::default()).await?.items)?;
    ensure!(
        slice_value
            .to_string()
            .contains("endpointslice-controller.k8s.io"),
        "slices carry the managed-by label"
    );
    Ok(())
}

/// Renews a node's Lease every 300 ms until the returned sender is dropped or sent to.
fn heartbeat(client: &Client, node: &str) -> tokio::sync::oneshot::Sender<()> {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    let node = node.to_owned();
    tokio::spawn(async move {
        // Bounded: at most 10 minutes of heartbeats.
        for _ in 0..2000 {
            let now = k8s_openapi::jiff::Timestamp::from_second(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            )
            .map(|t| t.to_string())
            .unwrap_or_default();
            let renew = now.replace('Z', ".000000Z");
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": renew}});
            let applied = leases
                .patch(
                    &node,
                    &PatchParams::apply("test-kubelet").force(),
                    &Patch::Apply(lease),
                )
                .await;
            if let Err(e) = applied {
                eprintln!("heartbeat for {node}: {e}");
            }
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    });
    stop
}

#[tokio::test]
async fn silent_nodes_turn_unknown_and_lose_their_pods_after_the_toleration() -> Result<()> {
    let server = Server::start(&[
        "--node-monitor-grace-period",
        "2",
        "--node-monitor-period",
        "1",
    ])
    .await?;
    let client = server.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    add_node(&client, "n1").await?;
    let n1_beat = heartbeat(&client, "n1");
    let mut set = replicaset("app", 2)?;
    if let Some(spec) = set
        .spec
        .as_mut()
        .and_then(|s| s.template.as_mut())
        .and_then(|t| t.spec.as_mut())
    {
        spec.tolerations = Some(serde_json::from_value(json!([
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3}
        ]))?);
    }
    sets.create(&PostParams::default(), &set).await?;
    eventually(WAIT, "2 pods on n1", || async {
        let list = pods_of(&pods, "app").await?;
        Ok((list.len() == 2
            && list
                .iter()
                .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n1")))
        .then_some(()))
    })
    .await?;
    run_pods(&pods, "app", true).await?;
    // The default toleration of the other key was added by admission, ours kept.
    let pod = &pods_of(&pods, "app").await?[0];
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    ensure!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")
                && t.toleration_seconds == Some(300))
            && tolerations.iter().any(|t| t.key.as_deref()
                == Some("node.kubernetes.io/unreachable")
                && t.toleration_seconds == Some(3)),
        "{tolerations:?}"
    );
    add_node(&client, "n2").await?;
    let _n2_beat = heartbeat(&client, "n2");
    // n1's kubelet goes silent.
    drop(n1_beat);
    let n1 = eventually(WAIT, "n1 to turn Unknown and be tainted", || async {
        let node = nodes.get("n1").await?;
        let unknown = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Ready" && c.status == "Unknown")
            });
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let tainted = ["NoSchedule", "NoExecute"].iter().all(|effect| {
            taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == *effect)
        });
        Ok((unknown && tainted).then_some(node))
    })
    .await?;
    ensure!(n1.metadata.name.as_deref() == Some("n1"));
    // Pods are marked not Ready at once, evicted after 3 s, recreated on n2.
    eventually(WAIT, "the pods on n1 to be not Ready", || async {
        let list = pods_of(&pods, "app").await?;
        Ok(list
            .iter()
            .all(|p| {
                !p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .then_some(()))
    })
    .await?;
    eventually(WAIT, "replacements on n2", || async {
        finish_deletions(&pods).await?;
        let list = pods_of(&pods, "app").await?;
        Ok((list.len() == 2
            && list
                .iter()
                .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n2")))
        .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn namespaces_get_a_default_service_account_and_are_emptied_on_deletion() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    add_node(&client, "n1").await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
            )?,
        )
        .await?;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "team");
    eventually(WAIT, "the default ServiceAccount", || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()))
    })
    .await?;
    accounts.delete("default", &DeleteParams::default()).await?;
    eventually(WAIT, "the default ServiceAccount to come back", || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()))
    })
    .await?;

    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "team");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "team");
    sets.create(&PostParams::default(), &replicaset("app", 2)?)
        .await?;
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "held", "finalizers": ["example.com/hold"]}}))?,
        )
        .await?;
    scheduled(&pods, "app", 2).await?;
    namespaces.delete("team", &DeleteParams::default()).await?;
    // Pods terminate gracefully and a finalizer holds a ConfigMap: the namespace waits.
    let waiting = eventually(
        WAIT,
        "the namespace to report remaining content",
        || async {
            let ns = namespaces.get("team").await?;
            let conditions = ns.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(conditions
                .iter()
                .find(|c| c.type_ == "NamespaceFinalizersRemaining")
                .and_then(|c| c.message.clone()))
        },
    )
    .await?;
    ensure!(waiting.contains("example.com/hold"), "{waiting}");
    finish_deletions(&pods).await?;
    config_maps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    eventually(WAIT, "the namespace and its content to be gone", || async {
        finish_deletions(&pods).await?;
        Ok(namespaces.get_opt("team").await?.is_none().then_some(()))
    })
    .await?;
    ensure!(sets.list(&ListParams::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn disruption_budgets_track_healthy_pods_and_gate_evictions() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    add_node(&client, "n1").await?;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), "default");
    sets.create(&PostParams::default(), &replicaset("db", 3)?)
        .await?;
    budgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "db"},
                "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "db"}}}}),
            )?,
        )
        .await?;
    scheduled(&pods, "db", 3).await?;
    run_pods(&pods, "db", true).await?;
    // 50% of 3 rounds up to 2: one disruption allowed.
    eventually(WAIT, "the budget to allow one disruption", || async {
        let status = budgets.get("db").await?.status.unwrap_or_default();
        Ok((status.expected_pods == 3
            && status.current_healthy == 3
            && status.desired_healthy == 2
            && status.disruptions_allowed == 1)
            .then_some(()))
    })
    .await?;
    let names: Vec<String> = pods_of(&pods, "db")
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    pods.evict(&names[0], &Default::default()).await?;
    let refused = pods.evict(&names[1], &Default::default()).await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 429),
        "{refused:?}"
    );
    // The evicted pod is recorded; the budget stays at zero until a replacement is Ready.
    eventually(WAIT, "the eviction to be recorded", || async {
        let status = budgets.get("db").await?.status.unwrap_or_default();
        Ok((status.disruptions_allowed == 0).then_some(()))
    })
    .await?;
    finish_deletions(&pods).await?;
    scheduled(&pods, "db", 3).await?;
    run_pods(&pods, "db", true).await?;
    eventually(WAIT, "the budget to allow a disruption again", || async {
        let status = budgets.get("db").await?.status.unwrap_or_default();
        Ok((status.disruptions_allowed == 1).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn resource_quotas_report_usage() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
                "spec": {"hard": {"pods": "10", "requests.cpu": "4", "limits.memory": "8Gi",
                    "configmaps": "5", "count/deployments.apps": "2"}}}),
            )?,
        )
        .await?;
    for i in 0..2 {
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}")},
                "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "corten/busybox:1",
                    "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}}]}}))?,
        )
        .await?;
    }
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}}),
            )?,
        )
        .await?;
    eventually(WAIT, "quota usage", || async {
        let status = quotas.get("q").await?.status.unwrap_or_default();
        let used = status.used.unwrap_or_default();
        let get = |k: &str| used.get(k).map(|q| q.0.clone()).unwrap_or_default();
        // The pods and the ConfigMap, plus kube-root-ca.crt style objects if any exist.
        Ok((get("pods") == "2"
            && get("requests.cpu") == "500m"
            && get("limits.memory") == "2147483648"
            && get("count/deployments.apps") == "0"
            && !get("configmaps").is_empty()
            && status.hard.is_some_and(|h| h.len() == 5))
        .then_some(()))
    })
    .await?;
    Ok(())
}

/// The pods of a Job, by the label the API server puts on its template.
async fn job_pods(pods: &Api<Pod>, job: &str) -> Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?
        .items)
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

fn completion_index(pod: &Pod) -> Option<i32> {
    annotation(pod, "batch.kubernetes.io/job-completion-index").and_then(|i| i.parse().ok())
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The live pod of an index (not finished, not being deleted).
async fn pod_of_index(pods: &Api<Pod>, job: &str, index: i32) -> Result<Pod> {
    eventually(
        WAIT,
        &format!("a pod for index {index} of {job}"),
        || async {
            Ok(job_pods(pods, job).await?.into_iter().find(|p| {
                completion_index(p) == Some(index)
                    && !is_finished(p)
                    && p.metadata.deletion_timestamp.is_none()
            }))
        },
    )
    .await
}

/// Plays the kubelet finishing a pod: its container `main` exited with `exit_code` (long
/// ago, so no backoff is left), with extra pod conditions.
async fn finish_pod(pods: &Api<Pod>, pod: &Pod, exit_code: i32, extra: Value) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let long_ago = "2020-01-01T00:00:00Z";
    let mut conditions = vec![json!({"type": "Ready", "status": "False",
        "reason": "PodCompleted", "lastTransitionTime": long_ago})];
    conditions.extend(extra.as_array().cloned().unwrap_or_default());
    let status = json!({"status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "conditions": conditions,
        "containerStatuses": [{"name": "main", "image": "corten/busybox:1", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code,
                "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": long_ago, "finishedAt": long_ago}}}],
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

fn job_condition(
    job: &k8s_openapi::api::batch::v1::Job,
    kind: &str,
) -> Option<k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .cloned()
}

fn job_manifest(name: &str, spec: Value) -> Result<k8s_openapi::api::batch::v1::Job> {
    let mut spec = spec;
    if let Some(spec) = spec.as_object_mut() {
        spec.insert(
            "template".to_owned(),
            json!({"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "corten/busybox:1"}]}}),
        );
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

/// Waits for a Job's terminal condition, finishing graceful deletions meanwhile.
async fn finished_with(
    jobs: &Api<k8s_openapi::api::batch::v1::Job>,
    pods: &Api<Pod>,
    name: &str,
    kind: &str,
) -> Result<k8s_openapi::api::batch::v1::Job> {
    eventually(WAIT, &format!("{name} to be {kind}"), || async {
        finish_deletions(pods).await?;
        let job = jobs.get(name).await?;
        Ok(job_condition(&job, kind).is_some().then_some(job))
    })
    .await
}

#[tokio::test]
async fn jobs_follow_their_pod_failure_policy() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_manifest(
            "pfp",
            json!({"completions": 1, "parallelism": 1, "backoffLimit": 0,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes":
                    {"containerName": "main", "operator": "In", "values": [42]}},
                {"action": "Ignore", "onPodConditions":
                    [{"type": "DisruptionTarget", "status": "True"}]},
            ]}}),
        )?,
    )
    .await?;
    let first = eventually(WAIT, "the first pod", || async {
        Ok(job_pods(&pods, "pfp").await?.into_iter().next())
    })
    .await?;
    // A disruption: ignored, so backoffLimit 0 is not exceeded and the pod is replaced.
    finish_pod(
        &pods,
        &first,
        137,
        json!([{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
            "lastTransitionTime": "2020-01-01T00:00:00Z"}]),
    )
    .await?;
    let second = eventually(WAIT, "a replacement pod", || async {
        Ok(job_pods(&pods, "pfp")
            .await?
            .into_iter()
            .find(|p| p.metadata.uid != first.metadata.uid && !is_finished(p)))
    })
    .await?;
    let job = jobs.get("pfp").await?;
    ensure!(
        job_condition(&job, "Failed").is_none()
            && job_condition(&job, "FailureTarget").is_none()
            && job.status.as_ref().and_then(|s| s.failed).unwrap_or(0) == 0,
        "an ignored failure counts for nothing: {:?}",
        job.status
    );
    // Exit code 42 in `main`: the FailJob rule fails the Job at once.
    finish_pod(&pods, &second, 42, json!([])).await?;
    let job = finished_with(&jobs, &pods, "pfp", "Failed").await?;
    let failed = job_condition(&job, "Failed").unwrap_or_default();
    let target = job_condition(&job, "FailureTarget").unwrap_or_default();
    ensure!(
        failed.reason.as_deref() == Some("PodFailurePolicy")
            && target.reason.as_deref() == Some("PodFailurePolicy"),
        "{:?}",
        job.status
    );
    let message = failed.message.unwrap_or_default();
    ensure!(
        message.contains("Container main for pod default/")
            && message.contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{message}"
    );
    ensure!(
        job.status.as_ref().and_then(|s| s.failed) == Some(1),
        "only the counted failure: {:?}",
        job.status
    );
    Ok(())
}

#[tokio::test]
async fn indexed_jobs_back_off_and_fail_per_index() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let fail_index_on_42 = json!({"rules": [{"action": "FailIndex",
        "onExitCodes": {"operator": "In", "values": [42]}}]});
    jobs.create(
        &PostParams::default(),
        &job_manifest(
            "per-index",
            json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
                "backoffLimit": 100, "backoffLimitPerIndex": 1,
                "podFailurePolicy": fail_index_on_42}),
        )?,
    )
    .await?;
    jobs.create(
        &PostParams::default(),
        &job_manifest(
            "max-failed",
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2,
                "backoffLimit": 100, "backoffLimitPerIndex": 1, "maxFailedIndexes": 0,
                "podFailurePolicy": fail_index_on_42}),
        )?,
    )
    .await?;

    let zero = pod_of_index(&pods, "per-index", 0).await?;
    let one = pod_of_index(&pods, "per-index", 1).await?;
    let two = pod_of_index(&pods, "per-index", 2).await?;
    ensure!(
        annotation(&two, "batch.kubernetes.io/job-index-failure-count").as_deref() == Some("0"),
        "first pods of an index start at 0 failures: {:?}",
        two.metadata.annotations
    );
    finish_pod(&pods, &zero, 42, json!([])).await?; // FailIndex: not retried
    finish_pod(&pods, &one, 0, json!([])).await?;
    finish_pod(&pods, &two, 1, json!([])).await?; // counted: 0 < 1, retried
    let retry = pod_of_index(&pods, "per-index", 2).await?;
    ensure!(retry.metadata.uid != two.metadata.uid);
    ensure!(
        annotation(&retry, "batch.kubernetes.io/job-index-failure-count").as_deref() == Some("1"),
        "the replacement carries the index's failure: {:?}",
        retry.metadata.annotations
    );
    let job = eventually(WAIT, "failedIndexes 0 and completedIndexes 1", || async {
        let job = jobs.get("per-index").await?;
        let status = job.status.clone().unwrap_or_default();
        Ok((status.failed_indexes.as_deref() == Some("0")
            && status.completed_indexes.as_deref() == Some("1"))
        .then_some(job))
    })
    .await?;
    ensure!(
        job_condition(&job, "FailureTarget").is_none(),
        "{:?}",
        job.status
    );
    let index_zero: Vec<Pod> = job_pods(&pods, "per-index")
        .await?
        .into_iter()
        .filter(|p| completion_index(p) == Some(0))
        .collect();
    ensure!(
        index_zero.len() == 1,
        "a failed index gets no new pod: {}",
        index_zero.len()
    );
    // The retry fails too: its index is out of retries, and every index is done.
    finish_pod(&pods, &retry, 1, json!([])).await?;
    let job = finished_with(&jobs, &pods, "per-index", "Failed").await?;
    let status = job.status.clone().unwrap_or_default();
    ensure!(
        job_condition(&job, "Failed")
            .and_then(|c| c.reason)
            .as_deref()
            == Some("FailedIndexes")
            && status.failed_indexes.as_deref() == Some("0,2")
            && status.completed_indexes.as_deref() == Some("1")
            && status.succeeded == Some(1)
            && status.failed == Some(3),
        "{status:?}"
    );

    // maxFailedIndexes 0: the first failed index fails the Job and stops the other pods.
    let first = pod_of_index(&pods, "max-failed", 0).await?;
    let other = pod_of_index(&pods, "max-failed", 1).await?;
    finish_pod(&pods, &first, 42, json!([])).await?;
    let job = finished_with(&jobs, &pods, "max-failed", "Failed").await?;
    ensure!(
        job_condition(&job, "Failed")
            .and_then(|c| c.reason)
            .as_deref()
            == Some("MaxFailedIndexesExceeded"),
        "{:?}",
        job.status
    );
    ensure!(
        pods.get_opt(other.metadata.name.as_deref().unwrap_or_default())
            .await?
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the running pod was stopped"
    );
    Ok(())
}

#[tokio::test]
async fn indexed_jobs_succeed_by_their_success_policy() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_manifest(
            "leader",
            json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
                "successPolicy": {"rules": [{"succeededIndexes": "0"}]}}),
        )?,
    )
    .await?;
    let leader = pod_of_index(&pods, "leader", 0).await?;
    let worker = pod_of_index(&pods, "leader", 1).await?;
    pod_of_index(&pods, "leader", 2).await?;
    finish_pod(&pods, &worker, 0, json!([])).await?;
    // One worker alone is not the rule.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(job_condition(&jobs.get("leader").await?, "SuccessCriteriaMet").is_none());
    finish_pod(&pods, &leader, 0, json!([])).await?;
    let met = eventually(WAIT, "SuccessCriteriaMet", || async {
        Ok(job_condition(
            &jobs.get("leader").await?,
            "SuccessCriteriaMet",
        ))
    })
    .await?;
    ensure!(
        met.reason.as_deref() == Some("SuccessPolicy")
            && met.message.as_deref() == Some("Matched rules at index 0"),
        "{met:?}"
    );
    let job = finished_with(&jobs, &pods, "leader", "Complete").await?;
    let status = job.status.clone().unwrap_or_default();
    ensure!(
        job_condition(&job, "Complete")
            .and_then(|c| c.reason)
            .as_deref()
            == Some("SuccessPolicy")
            && status.completed_indexes.as_deref() == Some("0,1")
            && status.succeeded == Some(2)
            && status.completion_time.is_some(),
        "{status:?}"
    );
    eventually(WAIT, "the remaining pod to be gone", || async {
        finish_deletions(&pods).await?;
        Ok(job_pods(&pods, "leader")
            .await?
            .iter()
            .all(is_finished)
            .then_some(()))
    })
    .await?;
    Ok(())
}

fn now_rfc3339() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn revision_of(pod: &Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .cloned()
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Plays the kubelet for one bound pod: Running and Ready from now.
async fn make_ready(pods: &Api<Pod>, pod: &Pod) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = now_rfc3339();
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// Live (not terminating) pods of the DaemonSet by node.
async fn daemon_pods_by_node(
    pods: &Api<Pod>,
    app: &str,
) -> Result<std::collections::BTreeMap<String, Vec<Pod>>> {
    let mut by_node: std::collections::BTreeMap<String, Vec<Pod>> = Default::default();
    for pod in pods_of(pods, app).await? {
        if pod.metadata.deletion_timestamp.is_none() {
            by_node.entry(node_of(&pod)).or_default().push(pod);
        }
    }
    Ok(by_node)
}

#[tokio::test]
async fn daemonsets_surge_a_new_pod_before_the_old_one_goes() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    let mut beats = Vec::new();
    for name in ["n1", "n2", "n3"] {
        add_node(&client, name).await?;
        beats.push(heartbeat(&client, name));
    }
    let sets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
    "metadata": {"name": "agent"},
    "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "minReadySeconds": 2,
        "updateStrategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "main", "image": "corten/busybox:1"}]}},
    }});
    sets.create(&PostParams::default(), &serde_json::from_value(ds)?)
        .await?;
    for pod in scheduled(&pods, "agent", 3).await? {
        make_ready(&pods, &pod).await?;
    }
    let old_revision = revision_of(&pods_of(&pods, "agent").await?[0]);
    eventually(WAIT, "3 available daemon pods", || async {
        let status = sets.get("agent").await?.status.unwrap_or_default();
        Ok((status.number_available == Some(3)).then_some(()))
    })
    .await?;

    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "corten/busybox:2"}]}}}})),
    )
    .await?;
    // One node (maxSurge 1) gets a new pod beside its old one; no old pod goes yet.
    let (surge_node, new_pod) = eventually(WAIT, "a surge pod", || async {
        let by_node = daemon_pods_by_node(&pods, "agent").await?;
        let surged: Vec<(&String, &Vec<Pod>)> =
            by_node.iter().filter(|(_, list)| list.len() == 2).collect();
        ensure!(
            surged.len() <= 1,
            "more than maxSurge nodes surge: {by_node:?}"
        );
        let Some((node, list)) = surged.first() else {
            return Ok(None);
        };
        let new = list
            .iter()
            .find(|p| revision_of(p) != old_revision)
            .cloned();
        Ok(new
            .filter(|p| !node_of(p).is_empty())
            .map(|p| ((*node).clone(), p)))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let by_node = daemon_pods_by_node(&pods, "agent").await?;
    ensure!(
        by_node.len() == 3
            && by_node.values().map(Vec::len).sum::<usize>() == 4
            && by_node.get(&surge_node).is_some_and(|l| l.len() == 2),
        "only one surge pod while it is not ready: {by_node:?}"
    );
    // Ready, but not for minReadySeconds yet: the old pod stays.
    make_ready(&pods, &new_pod).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old_on_node = daemon_pods_by_node(&pods, "agent")
        .await?
        .remove(&surge_node)
        .unwrap_or_default();
    ensure!(
        old_on_node.len() == 2,
        "the old pod waits for the new one to be available: {old_on_node:?}"
    );
    // Then it goes, and the rollout moves on node by node, never leaving a node without a pod
    // and never surging on two nodes at once.
    eventually(
        Duration::from_secs(60),
        "every node on the new revision",
        || async {
            let by_node = daemon_pods_by_node(&pods, "agent").await?;
            ensure!(
                by_node.len() == 3,
                "a node lost its daemon pod: {by_node:?}"
            );
            ensure!(
                by_node.values().filter(|l| l.len() > 1).count() <= 1,
                "more than maxSurge nodes surge: {by_node:?}"
            );
            for pod in by_node.values().flatten() {
                if !node_of(pod).is_empty() && !is_ready(pod) {
                    make_ready(&pods, pod).await?;
                }
            }
            finish_deletions(&pods).await?;
            let done = by_node
                .values()
                .all(|l| l.len() == 1 && revision_of(&l[0]) != old_revision);
            Ok(done.then_some(()))
        },
    )
    .await?;
    eventually(WAIT, "status: 3 updated and available", || async {
        let status = sets.get("agent").await?.status.unwrap_or_default();
        Ok(
            (status.updated_number_scheduled == Some(3) && status.number_available == Some(3))
                .then_some(()),
        )
    })
    .await?;
    drop(beats);
    Ok(())
}

fn statefulset(
    name: &str,
    replicas: i32,
    retention: Value,
) -> Result<k8s_openapi::api::apps::v1::StatefulSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "persistentVolumeClaimRetentionPolicy": retention,
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "corten/busybox:1",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }))?)
}

/// The claims labelled `app`, by name, with the kinds of their owners.
async fn claims_of(
    claims: &Api<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    app: &str,
) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    Ok(claims
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| {
            let owners = c
                .metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o.controller == Some(true))
                .map(|o| format!("{}/{}", o.kind, o.name))
                .collect();
            (c.metadata.name.unwrap_or_default(), owners)
        })
        .collect())
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn statefulset_claims_follow_the_retention_policy() -> Result<()> {
    let server = Server::start(&[]).await?;
    let client = server.client().await?;
    add_node(&client, "n1").await?;
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), "default");
    sets.create(
        &PostParams::default(),
        &statefulset(
            "db",
            3,
            json!({"whenDeleted": "Delete", "whenScaled": "Delete"}),
        )?,
    )
    .await?;
    sets.create(
        &PostParams::default(),
        &statefulset(
            "keep",
            2,
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        )?,
    )
    .await?;
    let set_owned = |ordinals: &[i32]| -> std::collections::BTreeMap<String, Vec<String>> {
        ordinals
            .iter()
            .map(|i| (format!("data-db-{i}"), vec!["StatefulSet/db".to_owned()]))
            .collect()
    };
    eventually(WAIT, "3 claims controlled by the set", || async {
        let found = claims_of(&claims, "db").await?;
        Ok((found == set_owned(&[0, 1, 2])).then_some(()))
    })
    .await?;
    eventually(WAIT, "2 pods and 2 unowned claims of `keep`", || async {
        let found = claims_of(&claims, "keep").await?;
        let live = pods_of(&pods, "keep").await?.len();
        Ok((live == 2 && found.len() == 2 && found.values().all(Vec::is_empty)).then_some(()))
    })
    .await?;
    scheduled(&pods, "db", 3).await?;
    run_pods(&pods, "db", true).await?;

    // Scale down: the condemned pods' claims move to the pods, and go with them.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    sets.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    eventually(WAIT, "only data-db-0 left, still the set's", || async {
        finish_deletions(&pods).await?;
        let found = claims_of(&claims, "db").await?;
        let pods_left: Vec<String> = pods_of(&pods, "db")
            .await?
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        ensure!(
            found.contains_key("data-db-0"),
            "the claim of a kept pod went: {found:?}"
        );
        Ok((found == set_owned(&[0]) && pods_left == names(&["db-0"])).then_some(()))
    })
    .await?;
    eventually(WAIT, "keep-1 gone, its claim kept", || async {
        finish_deletions(&pods).await?;
        let left = pods_of(&pods, "keep").await?.len();
        let found = claims_of(&claims, "keep").await?;
        Ok((left == 1
            && found.keys().cloned().collect::<Vec<_>>() == names(&["data-keep-0", "data-keep-1"]))
        .then_some(()))
    })
    .await?;

    // Scale up again: a fresh claim, controlled by the set.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await?;
    eventually(WAIT, "db-1 back with a fresh claim", || async {
        let found = claims_of(&claims, "db").await?;
        let back = pods_of(&pods, "db")
            .await?
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("db-1"));
        Ok((back && found == set_owned(&[0, 1])).then_some(()))
    })
    .await?;

    // Deleting the set deletes its claims (whenDeleted Delete) with its pods.
    sets.delete("db", &DeleteParams::background()).await?;
    eventually(WAIT, "the set's pods and claims to be gone", || async {
        finish_deletions(&pods).await?;
        let found = claims_of(&claims, "db").await?;
        let left = pods_of(&pods, "db").await?.len();
        Ok((found.is_empty() && left == 0).then_some(()))
    })
    .await?;
    ensure!(
        claims_of(&claims, "keep").await?.len() == 2,
        "the other set's retained claims are untouched"
    );
    Ok(())
}
