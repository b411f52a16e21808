//! What the service datapath of this node should contain, computed from Services and
//! EndpointSlices as plain data.
//!
//! Owns the Kubernetes semantics of Services as kube-proxy implements them: which addresses a
//! Service answers on (ClusterIPs, NodePorts, externalIPs, LoadBalancer ingress IPs), which
//! endpoints get new connections (ready ones; serving-terminating ones only when no ready one
//! exists), the traffic policies (`Local` keeps only this node's endpoints), session affinity,
//! the merging of several EndpointSlices of one Service, and the healthCheckNodePort. It must
//! not know BPF map layouts, service ids or slots (that is `diff` and the loaders), and it
//! does no I/O: the same objects always give the same [`DesiredState`].
//!
//! Each Service's contribution ([`service_entries`]) depends only on that Service and its own
//! slices; frontends and healthCheckNodePorts that several Services claim are resolved when
//! the contributions are put together in namespace/name order ([`compute`]), which is what
//! lets `index` recompute one Service at a time.
//!
//! The datapath is IPv4-only for now: IPv6 addresses and slices are skipped with a reason.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointSlice},
};

use super::Protocol;

/// Label that ties an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Session affinity timeout when a Service asks for ClientIP affinity without one (3 hours, as
/// the API server defaults it).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Longest session affinity timeout the API accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// The node this agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// `metadata.name` of the Node; endpoints whose `nodeName` equals it are local.
    pub node_name: String,
    /// The node's own IPv4 addresses on which NodePorts answer.
    pub node_ips: Vec<Ipv4Addr>,
}

/// One Service (namespace and name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of one Service (kube-proxy's "service port name").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortRef {
    /// The Service.
    pub service: ServiceRef,
    /// `spec.ports[].name`; empty for the single unnamed port.
    pub port_name: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

/// Which endpoints of a Service port a backend set draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendScope {
    /// Every endpoint in the cluster (traffic policy `Cluster`).
    Cluster,
    /// Only endpoints on this node (traffic policy `Local`).
    NodeLocal,
}

/// Identifies a backend set: a Service port seen through one traffic policy. Frontends of one
/// Service port that use the same policy share the set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSetKey {
    /// The Service port.
    pub port: ServicePortRef,
    /// The endpoints it may use.
    pub scope: BackendScope,
}

/// The address part of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendAddress {
    /// Exactly this address.
    Ip(Ipv4Addr),
    /// Any address that is local to this node (a NodePort). Lowered to the key address
    /// `0.0.0.0`: the datapath looks up the exact destination first and, when the destination
    /// is one of the node's own addresses (including loopback), this wildcard next. The node's
    /// known IPs also get exact [`FrontendAddress::Ip`] entries, so programs that cannot tell
    /// whether an address is local (tc on an interface) still find them.
    AnyNodeAddress,
}

/// An address, port and protocol on which a Service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// Destination address.
    pub address: FrontendAddress,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// Why a frontend exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// `spec.clusterIPs`.
    ClusterIp,
    /// `spec.ports[].nodePort` on the node's addresses.
    NodePort,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl FrontendKind {
    /// Whether the traffic policy for this frontend is `externalTrafficPolicy`.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// One frontend and the backend sets behind it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frontend {
    /// Why it exists.
    pub kind: FrontendKind,
    /// Backends for connections that arrive from outside the node (tc programs). For a
    /// ClusterIP this is the internal traffic policy's set, otherwise the external one's.
    pub from_outside: BackendSetKey,
    /// Backends for connections made on this node, by pods or the host (socket-LB). As in
    /// kube-proxy, in-cluster clients of an external address of an `externalTrafficPolicy:
    /// Local` Service are not limited to local endpoints; for a ClusterIP this is the
    /// internal traffic policy's set.
    pub from_node: BackendSetKey,
}

/// What the datapath does with a new connection when a backend set has no active backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WhenEmpty {
    /// The Service has no usable endpoint anywhere: refuse at once (ICMP unreachable / a
    /// failed `connect()`), never let the client wait.
    Reject,
    /// A `Local` policy set without local endpoints while other nodes have some: drop, as
    /// kube-proxy does, so that a load balancer's health check moves traffic elsewhere.
    Drop,
}

/// ClientIP session affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionAffinity {
    /// How long a client keeps its backend after its last connection.
    pub timeout_seconds: u32,
}

/// The backends of one [`BackendSetKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct BackendSet {
    /// Backends that receive new connections.
    pub active: BTreeSet<SocketAddrV4>,
    /// Terminating backends that receive no new connections but whose existing flows must
    /// keep working until they close (never in `active`).
    pub terminating: BTreeSet<SocketAddrV4>,
    /// What to do with new connections while `active` is empty.
    pub when_empty: Option<WhenEmpty>,
    /// ClientIP affinity, if the Service asks for it.
    pub affinity: Option<SessionAffinity>,
}

/// The healthCheckNodePort of an `externalTrafficPolicy: Local` LoadBalancer Service: the agent
/// answers HTTP 200 on it while this node has local endpoints, 503 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// The Service.
    pub service: ServiceRef,
    /// Distinct local endpoint addresses that receive new connections.
    pub local_endpoints: usize,
}

/// Why part of a Service produced no datapath entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The object has no namespace, name or spec.
    Incomplete,
    /// `clusterIP: None`: DNS answers with the endpoints, the proxy does nothing.
    Headless,
    /// `type: ExternalName`: a DNS alias, the proxy does nothing.
    ExternalName,
    /// No ClusterIP allocated yet.
    NoClusterIp,
    /// The port's protocol (SCTP or unknown) is not handled by the datapath.
    UnsupportedProtocol { port: i32, protocol: String },
    /// A port number outside 1..=65535.
    InvalidPort { port: i32 },
    /// An address the datapath cannot use (IPv6 or not an IP).
    UnsupportedAddress { address: String },
    /// The LoadBalancer ingress has `ipMode: Proxy`: the load balancer does not deliver
    /// packets to this address, so the node must not capture it.
    LoadBalancerProxyMode { address: String },
    /// Another Service (earlier in namespace/name order) already answers on this frontend.
    FrontendTaken {
        frontend: FrontendKey,
        owner: ServiceRef,
    },
}

/// A Service, or part of one, that got no entries, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Skipped {
    /// The Service (empty names when the object had none).
    pub service: ServiceRef,
    /// Why.
    pub reason: SkipReason,
}

/// Everything the datapath of this node should contain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    /// Every frontend.
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Every backend set that some frontend uses.
    pub backend_sets: BTreeMap<BackendSetKey, BackendSet>,
    /// healthCheckNodePorts to serve, by port.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// What was left out, for logs and events.
    pub skipped: Vec<Skipped>,
}

/// An endpoint after merging slices: one address and port with its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MergedEndpoint {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// Computes the desired datapath from every Service and EndpointSlice the agent knows.
pub fn compute(node: &NodeContext, services: &[Service], slices: &[EndpointSlice]) -> DesiredState {
    let slices_by_service = index_slices(slices);
    let mut ordered: Vec<&Service> = services.iter().collect();
    ordered.sort_by_key(|s| (s.metadata.namespace.as_deref(), s.metadata.name.as_deref()));
    let mut state = DesiredState::default();
    for service in ordered {
        let slices = service_ref_of(service)
            .and_then(|key| slices_by_service.get(&key))
            .map(Vec::as_slice)
            .unwrap_or_default();
        service_entries(node, service, slices).add_to(&mut state);
    }
    state
}

/// The Service an EndpointSlice belongs to (its namespace and `kubernetes.io/service-name`
/// label), if the datapath uses the slice at all (IPv4 only).
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceRef> {
    let namespace = slice.metadata.namespace.as_ref()?;
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    (slice.address_type == "IPv4").then(|| ServiceRef {
        namespace: namespace.clone(),
        name: name.clone(),
    })
}

fn service_ref_of(service: &Service) -> Option<ServiceRef> {
    Some(ServiceRef {
        namespace: service.metadata.namespace.clone()?,
        name: service.metadata.name.clone()?,
    })
}

fn index_slices(slices: &[EndpointSlice]) -> BTreeMap<ServiceRef, Vec<&EndpointSlice>> {
    let mut index: BTreeMap<ServiceRef, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(service) = slice_service(slice) {
            index.entry(service).or_default().push(slice);
        }
    }
    // Merge in slice-name order so that the result does not depend on watch order.
    for list in index.values_mut() {
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    index
}

/// One step of a Service's contribution, in the order [`compute`] takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Something of the Service gets no entries (not a conflict with another Service).
    Skip(SkipReason),
    /// The Service answers on this frontend unless a Service earlier in namespace/name order
    /// (or an earlier port of its own) already does.
    Claim(FrontendKey, Frontend),
}

/// What one Service contributes, computed from it and its own slices only; frontends that
/// several Services claim are resolved when the contributions are put together (the first
/// Service in namespace/name order wins, as in [`compute`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntries {
    service: ServiceRef,
    steps: Vec<Step>,
    /// Every backend set that one of the claimed frontends uses.
    sets: BTreeMap<BackendSetKey, BackendSet>,
    /// The healthCheckNodePort, if any (a later Service claiming the same port wins).
    health_check: Option<(u16, HealthCheck)>,
}

impl ServiceEntries {
    /// The Service (empty names when the object had none).
    pub fn service(&self) -> &ServiceRef {
        &self.service
    }

    /// The frontends the Service claims, in order; a key may repeat (the first counts).
    pub fn claims(&self) -> impl Iterator<Item = (&FrontendKey, &Frontend)> {
        self.steps.iter().filter_map(|step| match step {
            Step::Claim(key, frontend) => Some((key, frontend)),
            Step::Skip(_) => None,
        })
    }

    /// The frontend the Service wants at `key` (its first claim of it).
    pub fn claim(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.claims()
            .find(|(claimed, _)| *claimed == key)
            .map(|(_, frontend)| frontend)
    }

    /// The backend set `key` as this Service computes it (whether it is used depends on
    /// which of its frontends it wins).
    pub fn backend_set(&self, key: &BackendSetKey) -> Option<&BackendSet> {
        self.sets.get(key)
    }

    /// Every backend set key one of its frontends would use.
    pub fn backend_set_keys(&self) -> impl Iterator<Item = &BackendSetKey> {
        self.sets.keys()
    }

    /// The healthCheckNodePort and its check.
    pub fn health_check(&self) -> Option<(u16, &HealthCheck)> {
        self.health_check
            .as_ref()
            .map(|(port, check)| (*port, check))
    }

    /// What was left out of this Service, given `owner_of` (who won each frontend), in the
    /// order [`compute`] lists it.
    pub fn skipped<'a>(
        &'a self,
        owner_of: impl Fn(&FrontendKey) -> Option<&'a ServiceRef>,
    ) -> Vec<Skipped> {
        let mut seen = BTreeSet::new();
        let mut skipped = Vec::new();
        for step in &self.steps {
            let reason = match step {
                Step::Skip(reason) => reason.clone(),
                Step::Claim(key, _) => {
                    let owner = owner_of(key).unwrap_or(&self.service);
                    if seen.insert(*key) && *owner == self.service {
                        continue;
                    }
                    SkipReason::FrontendTaken {
                        frontend: *key,
                        owner: owner.clone(),
                    }
                }
            };
            skipped.push(Skipped {
                service: self.service.clone(),
                reason,
            });
        }
        skipped
    }

    /// Adds this Service to `state` after every Service before it in namespace/name order.
    pub fn add_to(&self, state: &mut DesiredState) {
        for step in &self.steps {
            match step {
                Step::Skip(reason) => state.skipped.push(Skipped {
                    service: self.service.clone(),
                    reason: reason.clone(),
                }),
                Step::Claim(key, frontend) => {
                    if let Some(existing) = state.frontends.get(key) {
                        state.skipped.push(Skipped {
                            service: self.service.clone(),
                            reason: SkipReason::FrontendTaken {
                                frontend: *key,
                                owner: existing.from_node.port.service.clone(),
                            },
                        });
                        continue;
                    }
                    for set_key in [&frontend.from_outside, &frontend.from_node] {
                        if let (false, Some(set)) = (
                            state.backend_sets.contains_key(set_key),
                            self.sets.get(set_key),
                        ) {
                            state.backend_sets.insert(set_key.clone(), set.clone());
                        }
                    }
                    state.frontends.insert(*key, frontend.clone());
                }
            }
        }
        if let Some((port, check)) = &self.health_check {
            state.health_checks.insert(*port, check.clone());
        }
    }
}

/// What `service` contributes, given its slices (those [`slice_service`] ties to it, in
/// slice-name order). Depends on nothing else, so it can be kept until one of them changes.
pub fn service_entries(
    node: &NodeContext,
    service: &Service,
    slices: &[&EndpointSlice],
) -> ServiceEntries {
    let mut entries = ServiceEntries {
        service: ServiceRef {
            namespace: service.metadata.namespace.clone().unwrap_or_default(),
            name: service.metadata.name.clone().unwrap_or_default(),
        },
        steps: Vec::new(),
        sets: BTreeMap::new(),
        health_check: None,
    };
    let (Some(_), Some(_), Some(spec)) = (
        &service.metadata.namespace,
        &service.metadata.name,
        &service.spec,
    ) else {
        entries.steps.push(Step::Skip(SkipReason::Incomplete));
        return entries;
    };
    let service_ref = entries.service.clone();
    let steps = &mut entries.steps;
    let sets = &mut entries.sets;
    macro_rules! skip {
        () => {
            &mut |reason| steps.push(Step::Skip(reason))
        };
    }
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if service_type == "ExternalName" {
        steps.push(Step::Skip(SkipReason::ExternalName));
        return entries;
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        steps.push(Step::Skip(SkipReason::Headless));
        return entries;
    }
    let cluster_ips = parse_addresses(cluster_ip_strings(spec), skip!());
    if cluster_ips.is_empty() {
        steps.push(Step::Skip(SkipReason::NoClusterIp));
        return entries;
    }
    let has_node_ports = matches!(service_type, "NodePort" | "LoadBalancer");
    let external_ips = parse_addresses(
        spec.external_ips.iter().flatten().map(String::as_str),
        skip!(),
    );
    let load_balancer_ips = if service_type == "LoadBalancer" {
        load_balancer_addresses(service, skip!())
    } else {
        Vec::new()
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity = session_affinity(spec);

    let mut local_active_addresses = BTreeSet::new();
    for port in spec.ports.iter().flatten() {
        let Some((protocol, port_number)) = check_port(port, skip!()) else {
            continue;
        };
        let port_ref = ServicePortRef {
            service: service_ref.clone(),
            port_name: port.name.clone().unwrap_or_default(),
            protocol,
        };
        let endpoints = merge_endpoints(&node.node_name, &port_ref, slices);
        let cluster_key = BackendSetKey {
            port: port_ref.clone(),
            scope: BackendScope::Cluster,
        };
        let local_key = BackendSetKey {
            port: port_ref,
            scope: BackendScope::NodeLocal,
        };
        let internal_key = if internal_local {
            &local_key
        } else {
            &cluster_key
        };
        let external_key = if external_local {
            &local_key
        } else {
            &cluster_key
        };

        let mut frontends: Vec<(FrontendKey, Frontend)> = Vec::new();
        let mut push = |kind: FrontendKind, address: FrontendAddress, port: u16| {
            let (from_outside, from_node) = if kind.is_external() {
                (external_key.clone(), cluster_key.clone())
            } else {
                (internal_key.clone(), internal_key.clone())
            };
            let key = FrontendKey {
                address,
                port,
                protocol,
            };
            let frontend = Frontend {
                kind,
                from_outside,
                from_node,
            };
            frontends.push((key, frontend));
        };
        for ip in &cluster_ips {
            push(
                FrontendKind::ClusterIp,
                FrontendAddress::Ip(*ip),
                port_number,
            );
        }
        if has_node_ports {
            let node_port = port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            if let Some(node_port) = node_port {
                for ip in &node.node_ips {
                    push(FrontendKind::NodePort, FrontendAddress::Ip(*ip), node_port);
                }
                push(
                    FrontendKind::NodePort,
                    FrontendAddress::AnyNodeAddress,
                    node_port,
                );
            }
        }
        for ip in &external_ips {
            push(
                FrontendKind::ExternalIp,
                FrontendAddress::Ip(*ip),
                port_number,
            );
        }
        for ip in &load_balancer_ips {
            push(
                FrontendKind::LoadBalancer,
                FrontendAddress::Ip(*ip),
                port_number,
            );
        }

        for (key, frontend) in frontends {
            for set_key in [&frontend.from_outside, &frontend.from_node] {
                if !sets.contains_key(set_key) {
                    let set = backend_set(&endpoints, set_key.scope, affinity);
                    sets.insert(set_key.clone(), set);
                }
            }
            steps.push(Step::Claim(key, frontend));
        }
        if external_local {
            let local = backend_set(&endpoints, BackendScope::NodeLocal, affinity);
            local_active_addresses.extend(local.active.iter().map(|a| *a.ip()));
        }
    }

    let health_check_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    if let (true, "LoadBalancer", Some(port)) = (external_local, service_type, health_check_port) {
        entries.health_check = Some((
            port,
            HealthCheck {
                service: service_ref,
                local_endpoints: local_active_addresses.len(),
            },
        ));
    }
    entries
}

fn cluster_ip_strings(spec: &ServiceSpec) -> Vec<&str> {
    match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    }
}

fn parse_addresses<'a>(
    addresses: impl IntoIterator<Item = &'a str>,
    skip: &mut impl FnMut(SkipReason),
) -> Vec<Ipv4Addr> {
    let mut parsed = Vec::new();
    for address in addresses {
        if address.is_empty() {
            continue;
        }
        match address.parse::<Ipv4Addr>() {
            Ok(ip) if !parsed.contains(&ip) => parsed.push(ip),
            Ok(_) => {}
            Err(_) => skip(SkipReason::UnsupportedAddress {
                address: address.to_owned(),
            }),
        }
    }
    parsed
}

fn load_balancer_addresses(service: &Service, skip: &mut impl FnMut(SkipReason)) -> Vec<Ipv4Addr> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut usable = Vec::new();
    for entry in ingress.into_iter().flatten() {
        let Some(ip) = entry.ip.as_deref() else {
            continue; // hostname-only ingress: nothing to capture on the node
        };
        if entry.ip_mode.as_deref() == Some("Proxy") {
            skip(SkipReason::LoadBalancerProxyMode {
                address: ip.to_owned(),
            });
            continue;
        }
        usable.push(ip);
    }
    parse_addresses(usable, skip)
}

fn session_affinity(spec: &ServiceSpec) -> Option<SessionAffinity> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|config| config.client_ip.as_ref())
        .and_then(|client_ip| client_ip.timeout_seconds)
        .and_then(|seconds| u32::try_from(seconds).ok())
        .filter(|seconds| (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(seconds));
    Some(SessionAffinity {
        timeout_seconds: configured.unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS),
    })
}

fn check_port(port: &ServicePort, skip: &mut impl FnMut(SkipReason)) -> Option<(Protocol, u16)> {
    let protocol = match parse_protocol(port.protocol.as_deref()) {
        Some(protocol) => protocol,
        None => {
            skip(SkipReason::UnsupportedProtocol {
                port: port.port,
                protocol: port.protocol.clone().unwrap_or_default(),
            });
            return None;
        }
    };
    match u16::try_from(port.port) {
        Ok(number) if number != 0 => Some((protocol, number)),
        _ => {
            skip(SkipReason::InvalidPort { port: port.port });
            None
        }
    }
}

/// `TCP` when unset, as the API server defaults it.
fn parse_protocol(protocol: Option<&str>) -> Option<Protocol> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// The endpoints of one Service port over all its slices, one per address and port. The port
/// number comes from the slice port with the Service port's name and protocol (the
/// EndpointSlice controller has already resolved `targetPort`, also named ones, per pod).
/// Like kube-proxy: only an endpoint's first address counts, and when two slices list the same
/// address and port the first (in slice-name order) wins unless a later one is on this node.
fn merge_endpoints(
    node_name: &str,
    port: &ServicePortRef,
    slices: &[&EndpointSlice],
) -> BTreeMap<SocketAddrV4, MergedEndpoint> {
    let mut merged = BTreeMap::new();
    for slice in slices {
        let slice_port = slice.ports.iter().flatten().find(|candidate| {
            candidate.name.as_deref().unwrap_or_default() == port.port_name
                && parse_protocol(candidate.protocol.as_deref()) == Some(port.protocol)
        });
        let Some(number) = slice_port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let conditions = endpoint_conditions(node_name, endpoint);
            let address = SocketAddrV4::new(ip, number);
            match merged.get(&address) {
                Some(MergedEndpoint { .. }) if !conditions.local => {}
                _ => {
                    merged.insert(address, conditions);
                }
            }
        }
    }
    merged
}

/// Unset conditions mean: ready, serving as ready says, not terminating (the API's rules).
fn endpoint_conditions(node_name: &str, endpoint: &Endpoint) -> MergedEndpoint {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    MergedEndpoint {
        ready,
        serving,
        terminating,
        local: endpoint.node_name.as_deref() == Some(node_name),
    }
}

/// kube-proxy's endpoint selection: ready endpoints (in scope) take new connections; only when
/// there is none do serving-terminating ones (in scope) take them. A `Local` set without any
/// usable local endpoint drops while other nodes have usable ones, and rejects otherwise.
fn backend_set(
    endpoints: &BTreeMap<SocketAddrV4, MergedEndpoint>,
    scope: BackendScope,
    affinity: Option<SessionAffinity>,
) -> BackendSet {
    let in_scope = |e: &MergedEndpoint| scope == BackendScope::Cluster || e.local;
    let select = |accept: &dyn Fn(&MergedEndpoint) -> bool| -> BTreeSet<SocketAddrV4> {
        endpoints
            .iter()
            .filter(|(_, e)| in_scope(e) && accept(e))
            .map(|(address, _)| *address)
            .collect()
    };
    let mut active = select(&|e| e.ready);
    if active.is_empty() {
        active = select(&|e| e.serving && e.terminating);
    }
    let terminating = select(&|e| e.terminating)
        .difference(&active)
        .copied()
        .collect();
    let usable_anywhere = endpoints
        .values()
        .any(|e| e.ready || (e.serving && e.terminating));
    let when_empty = match (active.is_empty(), usable_anywhere) {
        (false, _) => None,
        (true, true) => Some(WhenEmpty::Drop),
        (true, false) => Some(WhenEmpty::Reject),
    };
    BackendSet {
        active,
        terminating,
        when_empty,
        affinity,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::{
            core::v1::{
                ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ServiceStatus,
                SessionAffinityConfig,
            },
            discovery::v1::{EndpointConditions, EndpointPort},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    const NODE: &str = "node-a";

    fn node() -> NodeContext {
        NodeContext {
            node_name: NODE.into(),
            node_ips: vec![Ipv4Addr::new(172, 30, 0, 11)],
        }
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn addr(text: &str) -> SocketAddrV4 {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn port(name: &str, number: i32, protocol: &str) -> ServicePort {
        ServicePort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port: number,
            protocol: Some(protocol.to_owned()),
            ..ServicePort::default()
        }
    }

    fn service(name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn spec(service: &mut Service) -> &mut ServiceSpec {
        service.spec.get_or_insert_with(ServiceSpec::default)
    }

    /// `(address, node, ready, serving, terminating)`.
    type EndpointRow<'a> = (&'a str, &'a str, bool, bool, bool);

    fn ready(address: &str, node: &str) -> EndpointRow<'static> {
        let (address, node) = leak(address, node);
        (address, node, true, true, false)
    }

    fn terminating(address: &str, node: &str, serving: bool) -> EndpointRow<'static> {
        let (address, node) = leak(address, node);
        (address, node, false, serving, true)
    }

    fn leak(address: &str, node: &str) -> (&'static str, &'static str) {
        (
            Box::leak(address.to_owned().into_boxed_str()),
            Box::leak(node.to_owned().into_boxed_str()),
        )
    }

    fn slice(
        service: &str,
        name: &str,
        ports: &[(&str, i32, &str)],
        endpoints: &[EndpointRow<'_>],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_owned(),
                    service.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name: Some((*name).to_owned()),
                        port: Some(*port),
                        protocol: Some((*protocol).to_owned()),
                        app_protocol: None,
                    })
                    .collect(),
            ),
            endpoints: endpoints
                .iter()
                .map(|(address, node, ready, serving, terminating)| Endpoint {
                    addresses: vec![(*address).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*serving),
                        terminating: Some(*terminating),
                    }),
                    node_name: (!node.is_empty()).then(|| (*node).to_owned()),
                    ..Endpoint::default()
                })
                .collect(),
        }
    }

    fn port_ref(service: &str, port_name: &str, protocol: Protocol) -> ServicePortRef {
        ServicePortRef {
            service: ServiceRef {
                namespace: "default".into(),
                name: service.into(),
            },
            port_name: port_name.into(),
            protocol,
        }
    }

    fn set_key(service: &str, port_name: &str, scope: BackendScope) -> BackendSetKey {
        BackendSetKey {
            port: port_ref(service, port_name, Protocol::Tcp),
            scope,
        }
    }

    fn frontend_key(address: &str, port: u16, protocol: Protocol) -> FrontendKey {
        FrontendKey {
            address: FrontendAddress::Ip(ip(address)),
            port,
            protocol,
        }
    }

    fn set<'a>(state: &'a DesiredState, key: &BackendSetKey) -> &'a BackendSet {
        state
            .backend_sets
            .get(key)
            .unwrap_or_else(|| panic!("no backend set {key:?} in {state:#?}"))
    }

    fn addrs(list: &[&str]) -> BTreeSet<SocketAddrV4> {
        list.iter().map(|a| addr(a)).collect()
    }

    #[test]
    fn cluster_ip_service_resolves_target_port_by_name() {
        let svc = service(
            "web",
            "10.43.0.10",
            vec![port("http", 80, "TCP"), port("metrics", 9090, "TCP")],
        );
        let slices = [slice(
            "web",
            "web-1",
            &[("metrics", 9100, "TCP"), ("http", 8080, "TCP")],
            &[ready("10.42.1.5", "node-b"), ready("10.42.0.7", NODE)],
        )];
        let state = compute(&node(), &[svc], &slices);
        let http = set(&state, &set_key("web", "http", BackendScope::Cluster));
        assert_eq!(http.active, addrs(&["10.42.1.5:8080", "10.42.0.7:8080"]));
        assert_eq!(http.when_empty, None);
        let metrics = set(&state, &set_key("web", "metrics", BackendScope::Cluster));
        assert_eq!(metrics.active, addrs(&["10.42.1.5:9100", "10.42.0.7:9100"]));
        let frontend = &state.frontends[&frontend_key("10.43.0.10", 80, Protocol::Tcp)];
        assert_eq!(frontend.kind, FrontendKind::ClusterIp);
        assert_eq!(frontend.from_node.port.port_name, "http");
        assert_eq!(frontend.from_outside, frontend.from_node);
        assert_eq!(state.frontends.len(), 2);
        assert!(state.skipped.is_empty(), "{:?}", state.skipped);
    }

    #[test]
    fn unnamed_port_matches_unnamed_slice_port_and_protocol() {
        let svc = service("dns", "10.43.0.53", vec![port("", 53, "UDP")]);
        let mut udp = slice(
            "dns",
            "dns-1",
            &[("", 5353, "UDP")],
            &[ready("10.42.0.9", NODE)],
        );
        // A slice port with the same (empty) name but TCP must not be used for the UDP port.
        let tcp = slice(
            "dns",
            "dns-2",
            &[("", 9999, "TCP")],
            &[ready("10.42.0.8", NODE)],
        );
        // Unset name means the empty name.
        if let Some(ports) = udp.ports.as_mut() {
            ports[0].name = None;
        }
        let state = compute(&node(), &[svc], &[udp, tcp]);
        let key = BackendSetKey {
            port: port_ref("dns", "", Protocol::Udp),
            scope: BackendScope::Cluster,
        };
        assert_eq!(set(&state, &key).active, addrs(&["10.42.0.9:5353"]));
        assert!(state
            .frontends
            .contains_key(&frontend_key("10.43.0.53", 53, Protocol::Udp)));
    }

    #[test]
    fn slices_are_merged_and_duplicates_removed() {
        let svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
        let a = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[ready("10.42.1.1", "node-b"), ready("10.42.1.2", "node-b")],
        );
        let b = slice(
            "web",
            "web-b",
            &[("http", 8080, "TCP")],
            &[ready("10.42.1.2", "node-b"), ready("10.42.2.1", "node-c")],
        );
        // A slice of another Service and one in another namespace do not contribute.
        let other = slice(
            "db",
            "db-a",
            &[("http", 8080, "TCP")],
            &[ready("10.42.9.9", NODE)],
        );
        let mut elsewhere = slice(
            "web",
            "web-z",
            &[("http", 8080, "TCP")],
            &[ready("10.42.8.8", NODE)],
        );
        elsewhere.metadata.namespace = Some("kube-system".into());
        let state = compute(&node(), &[svc], &[b, other, a, elsewhere]);
        let http = set(&state, &set_key("web", "http", BackendScope::Cluster));
        assert_eq!(
            http.active,
            addrs(&["10.42.1.1:8080", "10.42.1.2:8080", "10.42.2.1:8080"])
        );
    }

    #[test]
    fn duplicate_across_slices_prefers_first_slice_unless_later_is_local() {
        let svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
        let mut svc_local = svc.clone();
        spec(&mut svc_local).internal_traffic_policy = Some("Local".into());
        // web-a (first by name) says not ready; web-b says ready: the first wins.
        let a = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[terminating("10.42.1.1", "node-b", false)],
        );
        let b = slice(
            "web",
            "web-b",
            &[("http", 8080, "TCP")],
            &[ready("10.42.1.1", "node-b")],
        );
        let state = compute(&node(), &[svc], &[b.clone(), a.clone()]);
        let http = set(&state, &set_key("web", "http", BackendScope::Cluster));
        assert!(http.active.is_empty());
        assert_eq!(http.terminating, addrs(&["10.42.1.1:8080"]));
        // A later duplicate on this node replaces the earlier one.
        let c = slice(
            "web",
            "web-c",
            &[("http", 8080, "TCP")],
            &[ready("10.42.1.1", NODE)],
        );
        let state = compute(&node(), &[svc_local], &[a, b, c]);
        let local = set(&state, &set_key("web", "http", BackendScope::NodeLocal));
        assert_eq!(local.active, addrs(&["10.42.1.1:8080"]));
    }

    #[test]
    fn terminating_endpoints_only_take_new_connections_without_ready_ones() {
        let svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
        let key = set_key("web", "http", BackendScope::Cluster);
        let with_ready = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[
                ready("10.42.1.1", "node-b"),
                terminating("10.42.1.2", "node-b", true),
                terminating("10.42.1.3", "node-b", false),
                ("10.42.1.4", "node-b", false, false, false), // not ready, not terminating
            ],
        );
        let state = compute(&node(), std::slice::from_ref(&svc), &[with_ready]);
        let http = set(&state, &key);
        assert_eq!(http.active, addrs(&["10.42.1.1:8080"]));
        assert_eq!(
            http.terminating,
            addrs(&["10.42.1.2:8080", "10.42.1.3:8080"])
        );

        let only_terminating = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[
                terminating("10.42.1.2", "node-b", true),
                terminating("10.42.1.3", "node-b", false),
                ("10.42.1.4", "node-b", false, false, false),
            ],
        );
        let state = compute(&node(), &[svc], &[only_terminating]);
        let http = set(&state, &key);
        // Serving-terminating endpoints are the fallback; non-serving ones never are.
        assert_eq!(http.active, addrs(&["10.42.1.2:8080"]));
        assert_eq!(http.terminating, addrs(&["10.42.1.3:8080"]));
        assert_eq!(http.when_empty, None);
    }

    #[test]
    fn unset_conditions_follow_the_api_defaults() {
        let svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
        let mut s = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[ready("10.42.1.1", "")],
        );
        s.endpoints[0].conditions = None; // ready, serving, not terminating
        let mut not_ready = Endpoint {
            addresses: vec!["10.42.1.2".into()],
            conditions: Some(EndpointConditions {
                ready: Some(false),
                serving: None, // defers to ready: not serving
                terminating: Some(true),
            }),
            ..Endpoint::default()
        };
        s.endpoints.push(not_ready.clone());
        let state = compute(&node(), std::slice::from_ref(&svc), &[s]);
        let http = set(&state, &set_key("web", "http", BackendScope::Cluster));
        assert_eq!(http.active, addrs(&["10.42.1.1:8080"]));
        // Alone, the terminating endpoint with unset serving is not a fallback.
        not_ready.addresses = vec!["10.42.1.3".into()];
        let mut alone = slice("web", "web-a", &[("http", 8080, "TCP")], &[]);
        alone.endpoints.push(not_ready);
        let state = compute(&node(), &[svc], &[alone]);
        let http = set(&state, &set_key("web", "http", BackendScope::Cluster));
        assert!(http.active.is_empty());
        assert_eq!(http.when_empty, Some(WhenEmpty::Reject));
        assert_eq!(http.terminating, addrs(&["10.42.1.3:8080"]));
    }

    #[test]
    fn service_without_endpoints_is_present_and_rejects() {
        let svc = service("empty", "10.43.0.20", vec![port("", 80, "TCP")]);
        let state = compute(&node(), &[svc], &[]);
        let frontend = &state.frontends[&frontend_key("10.43.0.20", 80, Protocol::Tcp)];
        let backends = set(&state, &frontend.from_node);
        assert!(backends.active.is_empty());
        assert_eq!(backends.when_empty, Some(WhenEmpty::Reject));
    }

    #[test]
    fn headless_and_external_name_services_get_nothing() {
        let headless = service("headless", "None", vec![port("", 80, "TCP")]);
        let mut alias = service("alias", "", vec![port("", 80, "TCP")]);
        spec(&mut alias).type_ = Some("ExternalName".into());
        spec(&mut alias).external_name = Some("example.org".into());
        let slices = [slice(
            "headless",
            "h-1",
            &[("", 80, "TCP")],
            &[ready("10.42.0.3", NODE)],
        )];
        let state = compute(&node(), &[headless, alias], &slices);
        assert!(state.frontends.is_empty());
        assert!(state.backend_sets.is_empty());
        let reasons: Vec<_> = state.skipped.iter().map(|s| s.reason.clone()).collect();
        assert_eq!(
            reasons,
            vec![SkipReason::ExternalName, SkipReason::Headless]
        );
    }

    #[test]
    fn sctp_ports_and_ipv6_addresses_are_skipped_with_reasons() {
        let mut svc = service(
            "mixed",
            "10.43.0.30",
            vec![port("sig", 3868, "SCTP"), port("web", 80, "TCP")],
        );
        spec(&mut svc).cluster_ips = Some(vec!["10.43.0.30".into(), "fd00::30".into()]);
        let state = compute(&node(), &[svc], &[]);
        assert_eq!(state.frontends.len(), 1);
        assert!(state
            .frontends
            .contains_key(&frontend_key("10.43.0.30", 80, Protocol::Tcp)));
        assert!(state.skipped.iter().any(|s| s.reason
            == SkipReason::UnsupportedProtocol {
                port: 3868,
                protocol: "SCTP".into()
            }));
        assert!(state.skipped.iter().any(|s| s.reason
            == SkipReason::UnsupportedAddress {
                address: "fd00::30".into()
            }));
    }

    #[test]
    fn node_port_answers_on_node_ips_and_any_node_address() {
        let mut http = port("http", 80, "TCP");
        http.node_port = Some(30080);
        let mut svc = service("web", "10.43.0.10", vec![http]);
        spec(&mut svc).type_ = Some("NodePort".into());
        let state = compute(&node(), std::slice::from_ref(&svc), &[]);
        let on_ip = &state.frontends[&frontend_key("172.30.0.11", 30080, Protocol::Tcp)];
        assert_eq!(on_ip.kind, FrontendKind::NodePort);
        let any = FrontendKey {
            address: FrontendAddress::AnyNodeAddress,
            port: 30080,
            protocol: Protocol::Tcp,
        };
        assert_eq!(state.frontends[&any].kind, FrontendKind::NodePort);
        assert_eq!(state.frontends.len(), 3);
        // A ClusterIP Service with a stray nodePort value gets no NodePort frontends.
        spec(&mut svc).type_ = Some("ClusterIP".into());
        let state = compute(&node(), &[svc], &[]);
        assert_eq!(state.frontends.len(), 1);
    }

    #[test]
    fn external_and_load_balancer_ips_become_frontends() {
        let mut http = port("http", 80, "TCP");
        http.node_port = Some(30080);
        let mut svc = service("web", "10.43.0.10", vec![http]);
        spec(&mut svc).type_ = Some("LoadBalancer".into());
        spec(&mut svc).external_ips = Some(vec!["192.0.2.10".into()]);
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        ip: Some("198.51.100.7".into()),
                        ..LoadBalancerIngress::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("198.51.100.8".into()),
                        ip_mode: Some("Proxy".into()),
                        ..LoadBalancerIngress::default()
                    },
                    LoadBalancerIngress {
                        hostname: Some("lb.example.org".into()),
                        ..LoadBalancerIngress::default()
                    },
                ]),
            }),
            conditions: None,
        });
        let state = compute(&node(), &[svc], &[]);
        let kind = |a: &str, p: u16| state.frontends[&frontend_key(a, p, Protocol::Tcp)].kind;
        assert_eq!(kind("192.0.2.10", 80), FrontendKind::ExternalIp);
        assert_eq!(kind("198.51.100.7", 80), FrontendKind::LoadBalancer);
        assert!(!state
            .frontends
            .contains_key(&frontend_key("198.51.100.8", 80, Protocol::Tcp)));
        assert!(state.skipped.iter().any(|s| s.reason
            == SkipReason::LoadBalancerProxyMode {
                address: "198.51.100.8".into()
            }));
        // ClusterIP, node IP, any-node, external IP, one LB IP.
        assert_eq!(state.frontends.len(), 5);
    }

    #[test]
    fn external_traffic_policy_local_keeps_local_endpoints_for_outside_clients() {
        let mut http = port("http", 80, "TCP");
        http.node_port = Some(30080);
        let mut svc = service("web", "10.43.0.10", vec![http]);
        spec(&mut svc).type_ = Some("LoadBalancer".into());
        spec(&mut svc).external_traffic_policy = Some("Local".into());
        spec(&mut svc).health_check_node_port = Some(32000);
        let endpoints = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[ready("10.42.0.5", NODE), ready("10.42.1.5", "node-b")],
        );
        let state = compute(&node(), std::slice::from_ref(&svc), &[endpoints]);
        let node_port = &state.frontends[&frontend_key("172.30.0.11", 30080, Protocol::Tcp)];
        assert_eq!(node_port.from_outside.scope, BackendScope::NodeLocal);
        assert_eq!(node_port.from_node.scope, BackendScope::Cluster);
        assert_eq!(
            set(&state, &node_port.from_outside).active,
            addrs(&["10.42.0.5:8080"])
        );
        assert_eq!(set(&state, &node_port.from_node).active.len(), 2);
        // The ClusterIP follows the internal policy (Cluster).
        let cluster_ip = &state.frontends[&frontend_key("10.43.0.10", 80, Protocol::Tcp)];
        assert_eq!(cluster_ip.from_outside.scope, BackendScope::Cluster);
        assert_eq!(
            state.health_checks.get(&32000),
            Some(&HealthCheck {
                service: port_ref("web", "", Protocol::Tcp).service,
                local_endpoints: 1
            })
        );

        // No local endpoint while node-b has one: drop, and the health check reports zero.
        let remote_only = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[ready("10.42.1.5", "node-b")],
        );
        let state = compute(&node(), &[svc], &[remote_only]);
        let local = set(&state, &set_key("web", "http", BackendScope::NodeLocal));
        assert!(local.active.is_empty());
        assert_eq!(local.when_empty, Some(WhenEmpty::Drop));
        assert_eq!(state.health_checks[&32000].local_endpoints, 0);
    }

    #[test]
    fn local_policy_falls_back_to_local_serving_terminating_endpoints() {
        let mut svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
        spec(&mut svc).internal_traffic_policy = Some("Local".into());
        let endpoints = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[
                ready("10.42.1.5", "node-b"),
                terminating("10.42.0.5", NODE, true),
                terminating("10.42.0.6", NODE, false),
            ],
        );
        let state = compute(&node(), &[svc], &[endpoints]);
        let cluster_ip = &state.frontends[&frontend_key("10.43.0.10", 80, Protocol::Tcp)];
        assert_eq!(cluster_ip.from_node.scope, BackendScope::NodeLocal);
        let local = set(&state, &cluster_ip.from_node);
        assert_eq!(local.active, addrs(&["10.42.0.5:8080"]));
        assert_eq!(local.terminating, addrs(&["10.42.0.6:8080"]));
        // Only the sets that a frontend uses exist.
        assert!(!state
            .backend_sets
            .contains_key(&set_key("web", "http", BackendScope::Cluster)));
        // No health check port for a ClusterIP Service.
        assert!(state.health_checks.is_empty());
    }

    #[test]
    fn session_affinity_uses_configured_or_default_timeout() {
        let mut svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
        spec(&mut svc).session_affinity = Some("ClientIP".into());
        let key = set_key("web", "http", BackendScope::Cluster);
        let state = compute(&node(), std::slice::from_ref(&svc), &[]);
        assert_eq!(
            set(&state, &key).affinity,
            Some(SessionAffinity {
                timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS
            })
        );
        spec(&mut svc).session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
        let state = compute(&node(), std::slice::from_ref(&svc), &[]);
        assert_eq!(
            set(&state, &key).affinity.map(|a| a.timeout_seconds),
            Some(60)
        );
        spec(&mut svc).session_affinity = Some("None".into());
        let state = compute(&node(), &[svc], &[]);
        assert_eq!(set(&state, &key).affinity, None);
    }

    #[test]
    fn frontend_claimed_twice_goes_to_the_first_service() {
        let mut a = service("a", "10.43.0.1", vec![port("", 80, "TCP")]);
        let mut b = service("b", "10.43.0.2", vec![port("", 80, "TCP")]);
        spec(&mut a).external_ips = Some(vec!["192.0.2.1".into()]);
        spec(&mut b).external_ips = Some(vec!["192.0.2.1".into()]);
        let state = compute(&node(), &[b, a], &[]);
        let shared = &state.frontends[&frontend_key("192.0.2.1", 80, Protocol::Tcp)];
        assert_eq!(shared.from_node.port.service.name, "a");
        assert_eq!(state.skipped.len(), 1);
        assert_eq!(state.skipped[0].service.name, "b");
    }

    #[test]
    fn same_objects_in_any_order_give_the_same_state() {
        let services = [
            service("a", "10.43.0.1", vec![port("", 80, "TCP")]),
            service("b", "10.43.0.2", vec![port("", 80, "TCP")]),
        ];
        let slices = [
            slice(
                "a",
                "a-1",
                &[("", 8080, "TCP")],
                &[ready("10.42.0.1", NODE)],
            ),
            slice(
                "a",
                "a-2",
                &[("", 8080, "TCP")],
                &[ready("10.42.0.2", "node-b")],
            ),
            slice(
                "b",
                "b-1",
                &[("", 8080, "TCP")],
                &[ready("10.42.0.3", NODE)],
            ),
        ];
        let forward = compute(&node(), &services, &slices);
        let mut services_rev = services.to_vec();
        services_rev.reverse();
        let mut slices_rev = slices.to_vec();
        slices_rev.reverse();
        assert_eq!(forward, compute(&node(), &services_rev, &slices_rev));
    }

    #[test]
    fn node_clients_of_node_ports_and_external_ips_use_every_endpoint_on_every_node_ip() {
        let two_ips = NodeContext {
            node_name: NODE.into(),
            node_ips: vec![ip("172.30.0.11"), ip("192.168.7.11")],
        };
        let mut http = port("http", 80, "TCP");
        http.node_port = Some(30080);
        let mut svc = service("web", "10.43.0.10", vec![http]);
        spec(&mut svc).type_ = Some("NodePort".into());
        spec(&mut svc).external_ips = Some(vec!["203.0.113.10".into()]);
        spec(&mut svc).external_traffic_policy = Some("Local".into());
        let endpoints = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[ready("10.42.0.5", NODE), ready("10.42.1.5", "node-b")],
        );
        let state = compute(&two_ips, &[svc], &[endpoints]);
        let cluster = set_key("web", "http", BackendScope::Cluster);
        let local = set_key("web", "http", BackendScope::NodeLocal);
        for (address, port, kind) in [
            ("172.30.0.11", 30080, FrontendKind::NodePort),
            ("192.168.7.11", 30080, FrontendKind::NodePort),
            ("203.0.113.10", 80, FrontendKind::ExternalIp),
        ] {
            let frontend = &state.frontends[&frontend_key(address, port, Protocol::Tcp)];
            assert_eq!(frontend.kind, kind, "{address}");
            // Pods and the node reach every endpoint; outside clients only local ones.
            assert_eq!(frontend.from_node, cluster, "{address}");
            assert_eq!(frontend.from_outside, local, "{address}");
        }
        assert_eq!(
            set(&state, &cluster).active,
            addrs(&["10.42.0.5:8080", "10.42.1.5:8080"])
        );
        assert_eq!(set(&state, &local).active, addrs(&["10.42.0.5:8080"]));
        // No NodePort on loopback: 127.0.0.1 is not one of the node's addresses here.
        assert!(!state
            .frontends
            .contains_key(&frontend_key("127.0.0.1", 30080, Protocol::Tcp)));
    }

    #[test]
    fn ending_endpoints_of_an_affinity_service_take_no_new_connections() {
        let mut svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
        spec(&mut svc).session_affinity = Some("ClientIP".into());
        let key = set_key("web", "http", BackendScope::Cluster);
        let all_ready = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[
                ready("10.42.0.1", NODE),
                ready("10.42.0.2", NODE),
                ready("10.42.0.3", NODE),
            ],
        );
        let state = compute(&node(), std::slice::from_ref(&svc), &[all_ready]);
        assert_eq!(set(&state, &key).active.len(), 3);

        // .2 is terminating but still serving, .3 is gone from the slice.
        let ending = slice(
            "web",
            "web-a",
            &[("http", 8080, "TCP")],
            &[
                ready("10.42.0.1", NODE),
                terminating("10.42.0.2", NODE, true),
            ],
        );
        let state = compute(&node(), &[svc], &[ending]);
        let http = set(&state, &key);
        assert_eq!(http.active, addrs(&["10.42.0.1:8080"]));
        assert_eq!(http.terminating, addrs(&["10.42.0.2:8080"]));
        assert_eq!(
            http.affinity,
            Some(SessionAffinity {
                timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS
            })
        );
    }
}
