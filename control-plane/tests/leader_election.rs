//! Two `corten-server`s on one etcd (Debian's etcd-server on loopback): exactly one of them
//! leads the scheduler and the controllers (the `kube-scheduler` and
//! `kube-controller-manager` Leases in kube-system); when the leader is SIGKILLed, the other
//! takes over within the lease duration and schedules a pod created after the kill.
//!
//! Needs Debian's etcd (`cargo xtask deps`); runs with `--features etcd-tests`.
#![cfg(feature = "etcd-tests")]

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{
    etcd::EtcdServer,
    server::{eventually, Server},
};

const LEASE_SECONDS: u64 = 4;

async fn start(etcd: &EtcdServer) -> Result<Server> {
    let lease = LEASE_SECONDS.to_string();
    Server::start(&[
        "--datastore-endpoint",
        &etcd.endpoint(),
        "--leader-elect-lease-duration",
        &lease,
        "--leader-elect-renew-deadline",
        "3",
        "--leader-elect-retry-period",
        "1",
    ])
    .await
}

fn leads(server: &Server, lease: &str) -> bool {
    server
        .log()
        .lines()
        .rfind(|l| l.contains("leadership changed") && l.contains(&format!("lease={lease}")))
        .is_some_and(|l| l.contains("leading=true"))
}

#[tokio::test]
async fn a_standby_server_takes_over_when_the_leader_dies() -> Result<()> {
    let etcd = EtcdServer::start().await;
    let mut servers = [start(&etcd).await?, start(&etcd).await?];
    let client = servers[0].client().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let leader = eventually(
        Duration::from_secs(20),
        "one leader for both Leases",
        || async {
            let leading: Vec<usize> = (0..2)
                .filter(|i| {
                    leads(&servers[*i], "kube-scheduler")
                        && leads(&servers[*i], "kube-controller-manager")
                })
                .collect();
            let standby_leads = (0..2).any(|i| {
                !leading.contains(&i)
                    && (leads(&servers[i], "kube-scheduler")
                        || leads(&servers[i], "kube-controller-manager"))
            });
            ensure!(!standby_leads, "both servers lead at once");
            Ok((leading.len() == 1).then(|| leading[0]))
        },
    )
    .await?;
    let holder = leases
        .get("kube-scheduler")
        .await?
        .spec
        .and_then(|s| s.holder_identity);
    ensure!(holder.is_some());
    let standby = 1 - leader;

    let killed_at = Instant::now();
    servers[leader].kill();
    let client = servers[standby].client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
            )?,
        )
        .await?;
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            }})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "after-failover"},
            "spec": {"containers": [{"name": "main", "image": "corten/busybox:1"}]}}),
        )?,
    )
    .await?;
    let limit = Duration::from_secs(LEASE_SECONDS + 6);
    let scheduled = eventually(limit, "the standby to schedule the pod", || async {
        let pod = pods.get("after-failover").await?;
        Ok(pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
    })
    .await;
    if let Err(e) = scheduled {
        bail!("{e}; standby log:\n{}", servers[standby].log());
    }
    let took = killed_at.elapsed();
    ensure!(
        leads(&servers[standby], "kube-scheduler")
            && leads(&servers[standby], "kube-controller-manager")
    );
    let holder_now = leases.get("kube-scheduler").await;
    // The client of the killed server cannot answer; read through the standby.
    drop(holder_now);
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease = leases.get("kube-scheduler").await?;
    let spec = lease.spec.unwrap_or_default();
    ensure!(spec.holder_identity != holder, "the Lease changed hands");
    ensure!(spec.lease_transitions.unwrap_or(0) >= 1);
    eprintln!("failover took {took:?} (lease {LEASE_SECONDS} s)");
    Ok(())
}
