//! The Pod as the informers keep it: only the fields that the scheduler and the controllers
//! read from a cache, under the names and types k8s-openapi gives them (so `pod.spec`,
//! `spec.node_name`, `status.conditions` read the same), decoded straight from the stored
//! JSON. A k8s-openapi `Pod` is 2 KB before any field is set and each `Container` another
//! 2 KB (probes, lifecycle, security context inline); pods are the bulk of every cache, so
//! the cached form drops what no reader uses (volumes, probes, env, security contexts...)
//! and keeps the rarely set large parts (affinity, pod-level resources) behind a `Box`.
//!
//! Owns that shape only. Everything a controller sends back in a write (metadata with uid,
//! resourceVersion, ownerReferences, finalizers; status conditions; container statuses) is
//! kept whole with its k8s-openapi type, so a patch or a precondition built from a cached
//! pod is the one it would be from a full `Pod`. A reader that needs a field not here reads
//! the pod through the API, or adds the field here.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, ContainerPort, ContainerStatus, Pod, PodCondition, ResourceRequirements,
        Toleration, TopologySpreadConstraint,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, Time},
    },
    Metadata, NamespaceResourceScope, Resource,
};
use serde::{Deserialize, Serialize};

/// A cached Pod: see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPod {
    /// The whole metadata (less managedFields, which [`super::compact`] drops).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What readers use of the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CachedPodSpec>,
    /// What readers use of the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CachedPodStatus>,
}

/// The part of `PodSpec` a cache reader uses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Affinity>>,
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<CachedContainer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// The part of `Container` a cache reader uses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ContainerPort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
}

/// The part of `PodStatus` a cache reader uses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PodCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nominated_node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
}

impl Resource for CachedPod {
    const API_VERSION: &'static str = <Pod as Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as Resource>::GROUP;
    const KIND: &'static str = <Pod as Resource>::KIND;
    const VERSION: &'static str = <Pod as Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as Resource>::URL_PATH_SEGMENT;
    type Scope = NamespaceResourceScope;
}

impl Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedPod {
    /// The cached form of a full pod: what the informer would keep of it once stored.
    pub fn of(pod: &Pod) -> Self {
        // Through JSON, as the informer decodes it; a Pod always serializes, and every
        // field kept here has the same type as in `Pod`, so decoding it back cannot fail.
        serde_json::to_value(pod)
            .and_then(serde_json::from_value)
            .unwrap_or_default()
    }

    /// Shrinks every list to its length (decoding leaves spare room).
    pub(super) fn shrink(&mut self) {
        fn shrink<T>(list: &mut Option<Vec<T>>) {
            if let Some(list) = list {
                list.shrink_to_fit();
            }
        }
        if let Some(spec) = self.spec.as_mut() {
            spec.containers.shrink_to_fit();
            for container in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                shrink(&mut container.ports);
            }
            shrink(&mut spec.init_containers);
            shrink(&mut spec.tolerations);
            shrink(&mut spec.topology_spread_constraints);
        }
        if let Some(status) = self.status.as_mut() {
            shrink(&mut status.conditions);
            shrink(&mut status.container_statuses);
            shrink(&mut status.init_container_statuses);
        }
    }
}

impl From<Pod> for CachedPod {
    fn from(pod: Pod) -> Self {
        Self::of(&pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"p","namespace":"ns","uid":"u1","resourceVersion":"7",
                    "labels":{"app":"a"},"finalizers":["f"],
                    "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"rs",
                                        "uid":"u0","controller":true}]},
        "spec":{"nodeName":"n1","priority":5,
                "containers":[{"name":"main","image":"busybox",
                               "ports":[{"containerPort":80,"hostPort":8080}],
                               "resources":{"requests":{"cpu":"100m"}},
                               "env":[{"name":"A","value":"b"}],
                               "livenessProbe":{"exec":{"command":["true"]}}}],
                "volumes":[{"name":"v","emptyDir":{}}],
                "tolerations":[{"key":"k","operator":"Exists"}]},
        "status":{"phase":"Running","podIP":"10.0.0.1","hostIP":"192.0.2.1",
                  "conditions":[{"type":"Ready","status":"True"}],
                  "containerStatuses":[{"name":"main","image":"busybox","imageID":"",
                                        "ready":true,"restartCount":2}]}}"#;

    #[test]
    fn keeps_what_readers_use_exactly() -> Result<(), serde_json::Error> {
        let full: Pod = serde_json::from_str(POD)?;
        let cached: CachedPod = serde_json::from_str(POD)?;
        assert_eq!(cached, CachedPod::of(&full));
        assert_eq!(cached.metadata, full.metadata);
        let (spec, full_spec) = (cached.spec.as_ref(), full.spec.as_ref());
        assert_eq!(
            spec.and_then(|s| s.node_name.as_deref()),
            full_spec.and_then(|s| s.node_name.as_deref())
        );
        assert_eq!(
            spec.and_then(|s| s.tolerations.clone()),
            full_spec.and_then(|s| s.tolerations.clone())
        );
        let container = spec.map(|s| &s.containers[0]);
        let full_container = full_spec.map(|s| &s.containers[0]);
        assert_eq!(
            container.and_then(|c| c.ports.clone()),
            full_container.and_then(|c| c.ports.clone())
        );
        assert_eq!(
            container.and_then(|c| c.resources.as_deref().cloned()),
            full_container.and_then(|c| c.resources.clone())
        );
        let (status, full_status) = (cached.status.as_ref(), full.status.as_ref());
        assert_eq!(
            status.and_then(|s| s.conditions.clone()),
            full_status.and_then(|s| s.conditions.clone())
        );
        assert_eq!(
            status.and_then(|s| s.container_statuses.clone()),
            full_status.and_then(|s| s.container_statuses.clone())
        );
        assert_eq!(status.and_then(|s| s.pod_ip.as_deref()), Some("10.0.0.1"));
        Ok(())
    }

    /// The fixed size of a cached pod, against the k8s-openapi types it replaces. On x86_64
    /// with k8s-openapi 0.29: `Pod` 2176 B + 2120 B per container; `CachedPod` and
    /// `CachedContainer` are asserted far below (see the printed figures with --nocapture).
    #[test]
    fn is_much_smaller_than_a_pod() {
        use k8s_openapi::api::core::v1::Container;
        let (pod, container) = (std::mem::size_of::<Pod>(), std::mem::size_of::<Container>());
        let (cached, cached_container) = (
            std::mem::size_of::<CachedPod>(),
            std::mem::size_of::<CachedContainer>(),
        );
        println!(
            "Pod {pod} B + Container {container} B; CachedPod {cached} B + CachedContainer \
             {cached_container} B"
        );
        assert!(cached * 2 < pod, "{cached} vs {pod}");
        assert!(
            cached_container * 8 < container,
            "{cached_container} vs {container}"
        );
    }
}
