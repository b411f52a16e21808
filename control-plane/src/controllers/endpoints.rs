//! The EndpointSlice and Endpoints controllers: for every Service with a selector, the pods
//! it selects become endpoints — in `discovery.k8s.io/v1` EndpointSlices (ready, serving and
//! terminating conditions, node name, zone, target reference, at most 100 endpoints per
//! slice, one slice family per resolved port set, since named target ports may resolve
//! differently per pod) and in the legacy `v1` Endpoints (ready and not-ready addresses).
//!
//! Owns the slices labelled `endpointslice.kubernetes.io/managed-by:
//! endpointslice-controller.k8s.io` and the Endpoints of selector Services. It must not
//! touch Services without a selector (their endpoints belong to the user) or the default
//! `kubernetes` Service (the API server keeps it).
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{
            EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, Node,
            ObjectReference, Service, ServicePort,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use tracing::debug;

use super::{
    pods::{self, controller_reference},
    runner::{run_workers, Requeue},
};
use crate::client::{
    informer::{key_of, split_key},
    leader::Leadership,
    CachedPod, Client, ClientError, Informer, Informers, WorkQueue,
};

/// The label that names a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that names a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Most endpoints in one slice (upstream's default `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Starts both controllers (they share the triggers).
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
) -> Result<(), ClientError> {
    let services = informers.get::<Service>()?;
    let pods = informers.get::<CachedPod>()?;
    let slices = informers.get::<EndpointSlice>()?;
    let nodes = informers.get::<Node>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        services.on_change(Box::new(move |old, new| {
            if let Some(service) = new.or(old) {
                queue.add(key_of(service.as_ref()));
            }
        }));
    }
    {
        let queue = queue.clone();
        let services = services.clone();
        pods.on_change(Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                for service in services.list_namespace(namespace) {
                    if selects(&service, pod) {
                        queue.add(key_of(service.as_ref()));
                    }
                }
            }
        }));
    }
    {
        // A slice changed by someone else is put back.
        let queue = queue.clone();
        slices.on_change(Box::new(move |old, new| {
            if let Some(slice) = new.or(old) {
                let labels = slice.metadata.labels.as_ref();
                let ours = labels
                    .and_then(|l| l.get(MANAGED_BY_LABEL))
                    .map(String::as_str)
                    == Some(MANAGED_BY);
                if let (true, Some(service)) =
                    (ours, labels.and_then(|l| l.get(SERVICE_NAME_LABEL)))
                {
                    let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
                    queue.add(format!("{namespace}/{service}"));
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        services,
        pods,
        slices,
        nodes,
    });
    run_workers("endpointslice", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

fn selects(service: &Service, pod: &CachedPod) -> bool {
    let Some(selector) = selector(service) else {
        return false;
    };
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// A port of the Service resolved for one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolvedPort {
    /// The Service port's name.
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The pod's port number.
    pub port: i32,
    /// appProtocol.
    pub app_protocol: Option<String>,
}

/// Resolves the Service's ports against a pod: numeric target ports as they are, named ones
/// through the pod's container ports (a port that does not resolve is left out).
pub fn resolve_ports(ports: &[ServicePort], pod: &CachedPod) -> Vec<ResolvedPort> {
    let container_ports: Vec<_> = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    let mut out = Vec::new();
    for port in ports {
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
        let number = match &port.target_port {
            None => Some(port.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => container_ports
                    .iter()
                    .find(|p| {
                        p.name.as_deref() == Some(name.as_str())
                            && p.protocol.as_deref().unwrap_or("TCP") == protocol
                    })
                    .map(|p| p.container_port),
            },
        };
        if let Some(number) = number {
            out.push(ResolvedPort {
                name: port.name.clone().unwrap_or_default(),
                protocol,
                port: number,
                app_protocol: port.app_protocol.clone(),
            });
        }
    }
    out.sort();
    out
}

/// The desired endpoints of a Service, grouped by resolved port set.
pub fn desired_endpoints(
    service: &Service,
    pods: &[Arc<CachedPod>],
    zone_of: impl Fn(&str) -> Option<String>,
) -> BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.clone().unwrap_or_default();
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if !selects(service, pod) || pods::is_terminal(pod) {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = pods::is_ready(pod);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (ready && !terminating)),
                serving: Some(publish_not_ready || ready),
                terminating: Some(terminating),
            }),
            hostname: pod
                .spec
                .as_ref()
                .and_then(|s| s.subdomain.as_ref().and(s.hostname.clone())),
            zone: node.as_deref().and_then(&zone_of),
            node_name: node,
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_owned()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
        groups
            .entry(resolve_ports(&ports, pod))
            .or_default()
            .push(endpoint);
    }
    for endpoints in groups.values_mut() {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }
    groups
}

struct Controller {
    client: Client,
    services: Informer<Service>,
    pods: Informer<CachedPod>,
    slices: Informer<EndpointSlice>,
    nodes: Informer<Node>,
}

impl Controller {
    fn zone_of(&self, node: &str) -> Option<String> {
        self.nodes
            .get(node)
            .and_then(|n| n.metadata.labels.clone())
            .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
    }

    fn owned_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .list_namespace(namespace)
            .into_iter()
            .filter(|s| {
                let labels = s.metadata.labels.as_ref();
                labels
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(service)
                    && labels
                        .and_then(|l| l.get(MANAGED_BY_LABEL))
                        .map(String::as_str)
                        == Some(MANAGED_BY)
            })
            .collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        self.pods.synced().await;
        self.slices.synced().await;
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let slices_api = self.client.namespaced::<EndpointSlice>(namespace)?;
        let existing = self.owned_slices(namespace, name);
        let service = self.services.get(key);
        let Some(service) =
            service.filter(|s| selector(s).is_some() && s.metadata.deletion_timestamp.is_none())
        else {
            // No Service (or no selector): our slices go; the GC would remove them with the
            // Service, but a selector removed from a live Service must clear them too.
            for slice in existing {
                let slice_name = slice.metadata.name.clone().unwrap_or_default();
                slices_api
                    .delete(&slice_name, serde_json::json!({}))
                    .await?;
            }
            return Ok(None);
        };
        let pods = self.pods.list_namespace(namespace);
        let groups = desired_endpoints(&service, &pods, |node| self.zone_of(node));
        self.reconcile_endpoints(namespace, name, &service, &groups)
            .await?;

        // Desired slices: each port group chunked by MAX_ENDPOINTS_PER_SLICE.
        let mut desired: Vec<(Vec<ResolvedPort>, Vec<Endpoint>)> = Vec::new();
        for (ports, endpoints) in &groups {
            for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
                desired.push((ports.clone(), chunk.to_vec()));
            }
        }
        if desired.is_empty() {
            // A Service with no endpoints still gets one (empty) slice for its ports.
            let ports = service
                .spec
                .as_ref()
                .and_then(|s| s.ports.clone())
                .unwrap_or_default()
                .iter()
                .filter(|p| matches!(p.target_port, None | Some(IntOrString::Int(_))))
                .map(|p| ResolvedPort {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    port: match p.target_port {
                        Some(IntOrString::Int(n)) => n,
                        _ => p.port,
                    },
                    app_protocol: p.app_protocol.clone(),
                })
                .collect();
            desired.push((ports, Vec::new()));
        }
        let mut existing: Vec<Arc<EndpointSlice>> = existing;
        existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut existing = existing.into_iter();
        for (ports, endpoints) in desired {
            let slice = build_slice(&service, namespace, name, &ports, endpoints);
            match existing.next() {
                Some(current) => {
                    if current.endpoints == slice.endpoints
                        && current.ports == slice.ports
                        && current.metadata.labels == slice.metadata.labels
                    {
                        continue;
                    }
                    let mut updated = slice;
                    updated.metadata.name = current.metadata.name.clone();
                    updated.metadata.generate_name = None;
                    updated.metadata.resource_version = current.metadata.resource_version.clone();
                    let slice_name = current.metadata.name.clone().unwrap_or_default();
                    slices_api.replace(&slice_name, &updated).await?;
                }
                None => {
                    slices_api.create(&slice).await?;
                }
            }
        }
        for extra in existing {
            let slice_name = extra.metadata.name.clone().unwrap_or_default();
            debug!(service = key, slice = %slice_name, "removing a surplus EndpointSlice");
            slices_api
                .delete(&slice_name, serde_json::json!({}))
                .await?;
        }
        Ok(None)
    }

    /// The legacy Endpoints object: ready and not-ready addresses per port set
    /// (terminating pods are left out unless the Service publishes not-ready addresses).
    async fn reconcile_endpoints(
        &self,
        namespace: &str,
        name: &str,
        service: &Service,
        groups: &BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>>,
    ) -> Result<(), ClientError> {
        let publish_not_ready = service
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let mut subsets = Vec::new();
        for (ports, endpoints) in groups {
            let mut ready = Vec::new();
            let mut not_ready = Vec::new();
            for endpoint in endpoints {
                let conditions = endpoint.conditions.clone().unwrap_or_default();
                if conditions.terminating == Some(true) && !publish_not_ready {
                    continue;
                }
                let address = EndpointAddress {
                    ip: endpoint.addresses.first().cloned().unwrap_or_default(),
                    hostname: endpoint.hostname.clone(),
                    node_name: endpoint.node_name.clone(),
                    target_ref: endpoint.target_ref.clone(),
                };
                if conditions.ready == Some(true) {
                    ready.push(address);
                } else {
                    not_ready.push(address);
                }
            }
            if ready.is_empty() && not_ready.is_empty() {
                continue;
            }
            subsets.push(EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| CorePort {
                            name: (!p.name.is_empty()).then(|| p.name.clone()),
                            port: p.port,
                            protocol: Some(p.protocol.clone()),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect(),
                ),
            });
        }
        let api = self.client.namespaced::<Endpoints>(namespace)?;
        let labels = service.metadata.labels.clone();
        let desired = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels,
                ..ObjectMeta::default()
            },
            subsets: (!subsets.is_empty()).then_some(subsets),
        };
        match api.get(name).await? {
            None => {
                api.create(&desired).await?;
            }
            Some(current) => {
                if current.subsets == desired.subsets
                    && current.metadata.labels == desired.metadata.labels
                {
                    return Ok(());
                }
                let mut updated = desired;
                updated.metadata.resource_version = current.metadata.resource_version.clone();
                api.replace(name, &updated).await?;
            }
        }
        Ok(())
    }
}

fn build_slice(
    service: &Service,
    namespace: &str,
    service_name: &str,
    ports: &[ResolvedPort],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.to_owned(), service_name.to_owned());
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{service_name}-")),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: Some(vec![controller_reference(service)]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|p| EndpointPort {
                    name: Some(p.name.clone()),
                    port: Some(p.port),
                    protocol: Some(p.protocol.clone()),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn service(target: IntOrString) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".to_owned()),
                namespace: Some("ns".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ports: Some(vec![ServicePort {
                    name: Some("http".to_owned()),
                    port: 80,
                    target_port: Some(target),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, port: i32, terminating: bool) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                deletion_timestamp: terminating
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".to_owned()),
                containers: vec![Container {
                    name: "c".to_owned(),
                    ports: Some(vec![ContainerPort {
                        name: Some("web".to_owned()),
                        container_port: port,
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                pod_ip: Some(ip.to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: if ready { "True" } else { "False" }.to_owned(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }))
    }

    #[test]
    fn named_target_ports_split_slices_by_resolved_port() {
        let svc = service(IntOrString::String("web".to_owned()));
        let pods = vec![
            pod("a", "10.0.0.1", true, 8080, false),
            pod("b", "10.0.0.2", true, 9090, false),
        ];
        let groups = desired_endpoints(&svc, &pods, |_| Some("z1".to_owned()));
        assert_eq!(groups.len(), 2);
        let ports: Vec<i32> = groups.keys().map(|k| k[0].port).collect();
        assert_eq!(ports, [8080, 9090]);
        assert!(groups.values().all(|e| e[0].zone.as_deref() == Some("z1")));
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let svc = service(IntOrString::Int(8080));
        let pods = vec![
            pod("ready", "10.0.0.1", true, 8080, false),
            pod("unready", "10.0.0.2", false, 8080, false),
            pod("leaving", "10.0.0.3", true, 8080, true),
        ];
        let groups = desired_endpoints(&svc, &pods, |_| None);
        let endpoints = &groups
            .values()
            .next()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let conditions: Vec<(bool, bool, bool)> = endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                (
                    c.ready == Some(true),
                    c.serving == Some(true),
                    c.terminating == Some(true),
                )
            })
            .collect();
        assert_eq!(
            conditions,
            [
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
    }

    #[test]
    fn pods_without_an_ip_or_not_selected_are_left_out() {
        let svc = service(IntOrString::Int(80));
        let mut other = (*pod("other", "10.0.0.9", true, 80, false)).clone();
        other.metadata.labels = None;
        let mut no_ip = (*pod("no-ip", "", true, 80, false)).clone();
        if let Some(status) = no_ip.status.as_mut() {
            status.pod_ip = None;
        }
        let groups = desired_endpoints(&svc, &[Arc::new(other), Arc::new(no_ip)], |_| None);
        assert!(groups.is_empty());
    }
}
