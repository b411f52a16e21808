//! The Node object and its heartbeats: registration (labels, capacity and allocatable,
//! addresses, node info, daemon endpoint), the Lease in `kube-node-lease` renewed every 10 s,
//! and the status (conditions with heartbeat times, images) reported on change and at least
//! every minute; MemoryPressure and DiskPressure are what the eviction manager publishes
//! ([`NodePressure`](super::eviction::NodePressure)).
//!
//! Owns what this node says about itself; it must not touch other nodes.
use std::time::Duration;

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use super::eviction::NodePressure;

/// How often the Lease is renewed (upstream: 10 s).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease duration the node announces (upstream: 40 s).
pub const LEASE_SECONDS: i32 = 40;
/// The most pods a node takes (upstream default).
pub const MAX_PODS: u32 = 110;

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// Its InternalIP.
    pub ip: String,
    /// The runtime's name and version, e.g. `containerd://1.6.20`.
    pub runtime_version: String,
}

/// The current time, RFC 3339 with seconds.
pub fn now_rfc3339() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn micro_now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let micros = i32::try_from(since.subsec_micros()).unwrap_or(0);
    Timestamp::new(since.as_secs() as i64, micros * 1000)
        .map(|t| format!("{t:.6}"))
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".to_owned())
}

/// The node's capacity: CPUs, memory, pods.
pub fn capacity() -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = super::runtime_config::total_memory();
    json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory / 1024), "pods": MAX_PODS.to_string()})
}

/// The status document (conditions, capacity, addresses, node info).
pub fn status(identity: &NodeIdentity, images: Value, pressure: &NodePressure) -> Value {
    let now = now_rfc3339();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let [memory, disk] = pressure.conditions().map(|(kind, state, reason, message)| {
        let mut value = condition(
            kind,
            if state.under { "True" } else { "False" },
            reason,
            message,
        );
        if !state.since.is_empty() {
            value["lastTransitionTime"] = json!(state.since);
        }
        value
    });
    json!({
        "capacity": capacity(),
        "allocatable": capacity(),
        "addresses": [
            {"type": "InternalIP", "address": identity.ip},
            {"type": "Hostname", "address": identity.name},
        ],
        "conditions": [
            memory,
            disk,
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": std::fs::read_to_string("/etc/machine-id").map(|s| s.trim().to_owned()).unwrap_or_default(),
            "systemUUID": "",
            "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default(),
            "kernelVersion": kernel_release(),
            "osImage": os_image(),
            "containerRuntimeVersion": identity.runtime_version,
            "kubeletVersion": format!("v1.33.0-corten.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
        "images": images,
    })
}

/// Registers the node (or takes over an existing object of the same name) and writes its
/// status.
pub async fn register(
    client: &Client,
    identity: &NodeIdentity,
    images: Value,
) -> kube::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": identity.name, "labels": {
            "kubernetes.io/hostname": identity.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch,
        }},
    });
    let object: Node = serde_json::from_value(node).map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => info!(node = %identity.name, "registered"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            info!(node = %identity.name, "node exists; taking it over")
        }
        Err(e) => return Err(e),
    }
    nodes
        .patch_status(
            &identity.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status(identity, images, &NodePressure::default())})),
        )
        .await
}

/// Renews the node's Lease forever (every [`LEASE_RENEW`]).
pub async fn renew_lease_forever(client: Client, node: Node) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let name = node.metadata.name.clone().unwrap_or_default();
    let uid = node.metadata.uid.clone().unwrap_or_default();
    let mut tick = tokio::time::interval(LEASE_RENEW);
    loop {
        tick.tick().await;
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()},
        });
        let applied = leases
            .patch(
                &name,
                &PatchParams::apply("corten-agent").force(),
                &Patch::Apply(lease),
            )
            .await;
        if let Err(e) = applied {
            warn!(error = %e, "renewing the node lease failed");
        }
    }
}

/// Reports the node status every minute and whenever the pressure conditions change, with
/// the images the runtime holds.
pub async fn report_status_forever(
    client: Client,
    identity: NodeIdentity,
    mut cri: corten_cri::runtime::CriClient,
    mut pressure: watch::Receiver<NodePressure>,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    let mut pressure_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = pressure.changed(), if pressure_open => pressure_open = changed.is_ok(),
        }
        let images = super::images::node_images(&mut cri).await;
        let current = pressure.borrow_and_update().clone();
        let patch = json!({"status": status(&identity, images, &current)});
        if let Err(e) = nodes
            .patch_status(
                &identity.name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            warn!(error = %e, "reporting the node status failed");
        }
    }
}
