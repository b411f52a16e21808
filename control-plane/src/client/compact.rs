//! What an informer keeps of a decoded object: the object without what no cache reader
//! needs, in as little memory as its fields allow. Decoding JSON straight into a type grows
//! every list the way `Vec::push` does (room for four items where a pod has one condition or
//! two tolerations), and the pods of a cluster are the bulk of what the scheduler and the
//! controllers cache, so the waste is shrunk away once, when the object enters the cache.
//! Pods are cached in the slim [`CachedPod`](super::CachedPod) form, whose lists are shrunk
//! the same way; the `Pod` trimming below serves whoever caches full pods.
//!
//! Owns that trimming only; it must not change any value a reader can see, except
//! `managedFields`, which caches drop (as upstream's scheduler and controller manager do in
//! their informers): nothing reads them from a cache, and writes take ownership from the
//! stored object, not from the one sent back.
use std::any::Any;

use k8s_openapi::{
    api::core::v1::{Container, Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    Metadata,
};

/// Trims an object for a cache: no managedFields, lists shrunk to their length.
pub fn compact<K: Metadata<Ty = ObjectMeta> + Any>(object: &mut K) {
    compact_meta(object.metadata_mut());
    let object = object as &mut dyn Any;
    if let Some(pod) = object.downcast_mut::<Pod>() {
        compact_pod(pod);
    } else if let Some(pod) = object.downcast_mut::<super::CachedPod>() {
        pod.shrink();
    }
}

fn shrink<T>(list: &mut Option<Vec<T>>) {
    if let Some(list) = list {
        list.shrink_to_fit();
    }
}

fn compact_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    shrink(&mut meta.owner_references);
    shrink(&mut meta.finalizers);
}

fn compact_container(container: &mut Container) {
    shrink(&mut container.args);
    shrink(&mut container.command);
    shrink(&mut container.env);
    shrink(&mut container.env_from);
    shrink(&mut container.ports);
    shrink(&mut container.volume_mounts);
    shrink(&mut container.volume_devices);
    shrink(&mut container.resize_policy);
}

fn compact_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.shrink_to_fit();
        spec.containers.iter_mut().for_each(compact_container);
        if let Some(init) = spec.init_containers.as_mut() {
            init.shrink_to_fit();
            init.iter_mut().for_each(compact_container);
        }
        shrink(&mut spec.ephemeral_containers);
        shrink(&mut spec.volumes);
        shrink(&mut spec.tolerations);
        shrink(&mut spec.image_pull_secrets);
        shrink(&mut spec.host_aliases);
        shrink(&mut spec.topology_spread_constraints);
        shrink(&mut spec.readiness_gates);
    }
    if let Some(status) = pod.status.as_mut() {
        shrink(&mut status.conditions);
        shrink(&mut status.container_statuses);
        shrink(&mut status.init_container_statuses);
        shrink(&mut status.ephemeral_container_statuses);
        shrink(&mut status.pod_ips);
        shrink(&mut status.host_ips);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded_pod() -> Result<Pod, serde_json::Error> {
        serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"ns","labels":{"app":"a"},
                "managedFields":[{"manager":"kubectl","operation":"Update","fieldsType":"FieldsV1",
                                  "fieldsV1":{"f:metadata":{"f:labels":{"f:app":{}}}}}]},
               "spec":{"containers":[{"name":"main","image":"busybox",
                                      "ports":[{"containerPort":80}]}],
                       "tolerations":[{"key":"k","operator":"Exists"}]},
               "status":{"conditions":[{"type":"PodScheduled","status":"False"}]}}"#,
        )
    }

    fn capacities(pod: &Pod) -> (Option<usize>, Option<usize>, Option<usize>) {
        let spec = pod.spec.as_ref();
        (
            spec.and_then(|s| s.tolerations.as_ref()).map(Vec::capacity),
            spec.and_then(|s| s.containers.first())
                .and_then(|c| c.ports.as_ref())
                .map(Vec::capacity),
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(Vec::capacity),
        )
    }

    #[test]
    fn pods_lose_managed_fields_and_spare_room_but_nothing_else() -> Result<(), serde_json::Error> {
        let decoded = decoded_pod()?;
        // Decoding leaves room for more items than there are.
        let (tolerations, ports, conditions) = capacities(&decoded);
        assert!(tolerations > Some(1) && ports > Some(1) && conditions > Some(1));
        let mut pod = decoded.clone();
        compact(&mut pod);
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(capacities(&pod), (Some(1), Some(1), Some(1)));
        let mut expected = decoded;
        expected.metadata.managed_fields = None;
        assert_eq!(pod, expected);
        Ok(())
    }

    #[test]
    fn other_kinds_only_lose_managed_fields() {
        let mut node = k8s_openapi::api::core::v1::Node {
            metadata: ObjectMeta {
                name: Some("n".to_owned()),
                managed_fields: Some(vec![Default::default()]),
                finalizers: Some(vec!["f".to_owned()]),
                ..ObjectMeta::default()
            },
            ..Default::default()
        };
        compact(&mut node);
        assert!(node.metadata.managed_fields.is_none());
        assert_eq!(node.metadata.finalizers, Some(vec!["f".to_owned()]));
    }
}
