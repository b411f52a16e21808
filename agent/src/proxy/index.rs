//! The desired datapath kept up to date change by change: the Services and EndpointSlices
//! the watches delivered, each Service's contribution ([`ServiceEntries`]) and who owns each
//! frontend that several Services claim, so that one changed object costs work proportional
//! to that object, not to the cluster.
//!
//! Owns the objects as the watches last reported them (a relist replaces a whole kind) and
//! the [`DesiredState`] they give, which is always exactly what [`desired::compute`] would
//! return for the same objects (the unit tests check that over long random sequences). A
//! changed EndpointSlice touches the Service its `kubernetes.io/service-name` label names
//! (before and after the change); a touched Service is recomputed alone, and frontend and
//! healthCheckNodePort ownership is resolved again only for the keys it claimed before or
//! claims now. It must not know service ids, slots or maps (that is `diff`) and does no I/O.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::watcher;
/// The watch events the index takes (kube-runtime's), for callers without kube.
pub use kube::runtime::watcher::Event;

use super::desired::{
    self, BackendSetKey, DesiredState, FrontendKey, NodeContext, ServiceEntries, ServiceRef,
    Skipped,
};

/// An EndpointSlice (namespace and name).
type SliceRef = (String, String);

/// Which keys of the [`DesiredState`] may have changed since the last [`DesiredIndex::update`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Everything may have changed (first sync or a relist): plan the whole state.
    pub full: bool,
    /// Frontends whose value changed (added, removed or different).
    pub frontends: BTreeSet<FrontendKey>,
    /// Backend sets whose value or users changed, and every set a changed frontend used
    /// before or uses now.
    pub backend_sets: BTreeSet<BackendSetKey>,
    /// Whether the healthCheckNodePorts changed.
    pub health_checks: bool,
    /// Services whose entries or skipped parts may differ (for logs); empty when `full`
    /// (every Service may).
    pub services: BTreeSet<ServiceRef>,
}

/// The objects, each Service's entries and the desired state they give.
#[derive(Debug)]
pub struct DesiredIndex {
    node: NodeContext,
    services: BTreeMap<ServiceRef, Service>,
    slices: HashMap<SliceRef, EndpointSlice>,
    /// Slices (by name, so in the order they are merged) of each Service.
    slices_of: HashMap<ServiceRef, BTreeSet<SliceRef>>,
    entries: HashMap<ServiceRef, ServiceEntries>,
    /// The Services that claim each frontend; the first one owns it.
    claims: HashMap<FrontendKey, BTreeSet<ServiceRef>>,
    /// The Services that claim each healthCheckNodePort; the last one serves it.
    health_claims: HashMap<u16, BTreeSet<ServiceRef>>,
    /// For each backend set, how many frontends send outside clients to it.
    reached_from_outside: HashMap<BackendSetKey, usize>,
    /// `skipped` stays empty here: see [`DesiredIndex::skipped`].
    state: DesiredState,
    touched: BTreeSet<ServiceRef>,
    full: bool,
    /// Objects listed since the last `Init` of each watch, applied at its `InitDone`.
    service_relist: Option<Vec<Service>>,
    slice_relist: Option<Vec<EndpointSlice>>,
    services_listed: bool,
    slices_listed: bool,
}

impl DesiredIndex {
    /// No objects yet; the first [`DesiredIndex::update`] computes everything.
    pub fn new(node: NodeContext) -> Self {
        Self {
            node,
            services: BTreeMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            entries: HashMap::new(),
            claims: HashMap::new(),
            health_claims: HashMap::new(),
            reached_from_outside: HashMap::new(),
            state: DesiredState::default(),
            touched: BTreeSet::new(),
            full: true,
            service_relist: None,
            slice_relist: None,
            services_listed: false,
            slices_listed: false,
        }
    }

    /// The desired state as of the last [`DesiredIndex::update`], without `skipped`.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// Whether both watches have listed everything once (syncing earlier would remove what
    /// was not listed yet, e.g. entries reused from pinned maps).
    pub fn listed(&self) -> bool {
        self.services_listed && self.slices_listed
    }

    /// Whether some frontend sends clients from outside the node to `key`.
    pub fn reached_from_outside(&self, key: &BackendSetKey) -> bool {
        self.reached_from_outside.get(key).is_some_and(|n| *n > 0)
    }

    /// What was left out of `service`, as [`desired::compute`] lists it.
    pub fn skipped(&self, service: &ServiceRef) -> Vec<Skipped> {
        self.entries
            .get(service)
            .map(|entries| entries.skipped(|key| self.owner(key)))
            .unwrap_or_default()
    }

    /// The whole state with `skipped` filled in, in [`desired::compute`]'s order (work
    /// proportional to the cluster; for tests and diagnostics).
    pub fn full_state(&self) -> DesiredState {
        let mut state = self.state.clone();
        let ordered: BTreeSet<&ServiceRef> = self.entries.keys().collect();
        for service in ordered {
            state.skipped.extend(self.skipped(service));
        }
        state
    }

    /// Takes one event of the Service watch.
    pub fn service_event(&mut self, event: watcher::Event<Service>) {
        match event {
            watcher::Event::Apply(service) => self.apply_service(service),
            watcher::Event::Delete(service) => self.delete_service(&service),
            watcher::Event::Init => self.service_relist = Some(Vec::new()),
            watcher::Event::InitApply(service) => self
                .service_relist
                .get_or_insert_with(Vec::new)
                .push(service),
            watcher::Event::InitDone => {
                let listed = self.service_relist.take().unwrap_or_default();
                self.replace_services(listed);
                self.services_listed = true;
            }
        }
    }

    /// Takes one event of the EndpointSlice watch.
    pub fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) {
        match event {
            watcher::Event::Apply(slice) => self.apply_slice(slice),
            watcher::Event::Delete(slice) => self.delete_slice(&slice),
            watcher::Event::Init => self.slice_relist = Some(Vec::new()),
            watcher::Event::InitApply(slice) => {
                self.slice_relist.get_or_insert_with(Vec::new).push(slice)
            }
            watcher::Event::InitDone => {
                let listed = self.slice_relist.take().unwrap_or_default();
                self.replace_slices(listed);
                self.slices_listed = true;
            }
        }
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, service: Service) {
        let key = service_key(&service);
        self.touched.insert(key.clone());
        self.services.insert(key, service);
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, service: &Service) {
        let key = service_key(service);
        self.services.remove(&key);
        self.touched.insert(key);
    }

    /// An EndpointSlice was added or changed.
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        let Some(key) = slice_key(&slice) else {
            return; // no namespace: no Service can own it
        };
        self.unlink_slice(&key);
        if let Some(service) = desired::slice_service(&slice) {
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(key.clone());
            self.touched.insert(service);
        }
        self.slices.insert(key, slice);
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if let Some(key) = slice_key(slice) {
            self.unlink_slice(&key);
        }
    }

    /// Forgets the stored slice `key` and touches the Service it belonged to.
    fn unlink_slice(&mut self, key: &SliceRef) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        if let Some(service) = desired::slice_service(&old) {
            if let Some(names) = self.slices_of.get_mut(&service) {
                names.remove(key);
                if names.is_empty() {
                    self.slices_of.remove(&service);
                }
            }
            self.touched.insert(service);
        }
    }

    /// Every Service, after a relist.
    pub fn replace_services(&mut self, services: Vec<Service>) {
        self.services = services
            .into_iter()
            .map(|service| (service_key(&service), service))
            .collect();
        self.full = true;
    }

    /// Every EndpointSlice, after a relist.
    pub fn replace_slices(&mut self, slices: Vec<EndpointSlice>) {
        self.slices.clear();
        self.slices_of.clear();
        for slice in slices {
            let Some(key) = slice_key(&slice) else {
                continue;
            };
            if let Some(service) = desired::slice_service(&slice) {
                self.slices_of
                    .entry(service)
                    .or_default()
                    .insert(key.clone());
            }
            self.slices.insert(key, slice);
        }
        self.full = true;
    }

    /// Brings the desired state up to the objects taken since the last call and says which
    /// keys changed: everything after a relist, otherwise only what the touched Services
    /// (and the frontends they share with others) give.
    pub fn update(&mut self) -> Changes {
        if self.full {
            self.rebuild();
            return Changes {
                full: true,
                health_checks: true,
                ..Changes::default()
            };
        }
        let touched = std::mem::take(&mut self.touched);
        let mut changes = Changes::default();
        let mut frontends = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut set_keys: BTreeSet<BackendSetKey> = BTreeSet::new();
        for service in &touched {
            if let Some(old) = self.entries.remove(service) {
                self.unclaim(&old, &mut frontends, &mut ports, &mut set_keys);
            }
            let Some(object) = self.services.get(service) else {
                continue;
            };
            let entries = self.compute_entries(service, object);
            for (key, _) in entries.claims() {
                self.claims.entry(*key).or_default().insert(service.clone());
                frontends.insert(*key);
            }
            if let Some((port, _)) = entries.health_check() {
                self.health_claims
                    .entry(port)
                    .or_default()
                    .insert(service.clone());
                ports.insert(port);
            }
            set_keys.extend(entries.backend_set_keys().cloned());
            self.entries.insert(service.clone(), entries);
        }

        // Frontends: the first claimant owns each; its old and new owners may win or lose
        // backend sets.
        let mut affected: BTreeSet<ServiceRef> = touched;
        let mut reach_changed = BTreeSet::new();
        for key in &frontends {
            let old = self.state.frontends.get(key).cloned();
            let owner = self.owner(key).cloned();
            let new = owner
                .as_ref()
                .and_then(|owner| self.entries.get(owner))
                .and_then(|entries| entries.claim(key))
                .cloned();
            if let Some(old) = &old {
                affected.insert(old.from_node.port.service.clone());
            }
            if let Some(owner) = owner {
                affected.insert(owner);
            }
            if old == new {
                continue;
            }
            for frontend in old.iter().chain(&new) {
                for key in [&frontend.from_outside, &frontend.from_node] {
                    set_keys.insert(key.clone());
                    reach_changed.insert(key.clone());
                }
            }
            if let Some(old) = &old {
                if old.kind.is_external() {
                    if let Some(count) = self.reached_from_outside.get_mut(&old.from_outside) {
                        *count -= 1;
                        if *count == 0 {
                            self.reached_from_outside.remove(&old.from_outside);
                        }
                    }
                }
            }
            match new {
                Some(new) => {
                    if new.kind.is_external() {
                        *self
                            .reached_from_outside
                            .entry(new.from_outside.clone())
                            .or_default() += 1;
                    }
                    self.state.frontends.insert(*key, new);
                }
                None => {
                    self.state.frontends.remove(key);
                }
            }
            changes.frontends.insert(*key);
        }

        // Backend sets: a Service's set exists while a frontend it owns uses it.
        for service in &affected {
            if let Some(entries) = self.entries.get(service) {
                set_keys.extend(entries.backend_set_keys().cloned());
            }
        }
        let mut used: HashMap<ServiceRef, BTreeSet<BackendSetKey>> = HashMap::new();
        for key in set_keys {
            let service = &key.port.service;
            if !used.contains_key(service) {
                used.insert(service.clone(), self.used_sets(service));
            }
            let new = used
                .get(service)
                .is_some_and(|used| used.contains(&key))
                .then(|| self.entries.get(service))
                .flatten()
                .and_then(|entries| entries.backend_set(&key))
                .cloned();
            if self.state.backend_sets.get(&key) != new.as_ref() {
                match new {
                    Some(set) => {
                        self.state.backend_sets.insert(key.clone(), set);
                    }
                    None => {
                        self.state.backend_sets.remove(&key);
                    }
                }
                changes.backend_sets.insert(key);
            }
        }
        // Whether a frontend sends outside clients to a set is part of what is planned for
        // it, so the sets of every changed frontend count as changed too.
        changes.backend_sets.extend(reach_changed);

        // healthCheckNodePorts: the last claimant serves each.
        for port in ports {
            let new = self
                .health_claims
                .get(&port)
                .and_then(|claimants| claimants.last())
                .and_then(|owner| self.entries.get(owner))
                .and_then(|entries| entries.health_check())
                .map(|(_, check)| check.clone());
            if self.state.health_checks.get(&port) != new.as_ref() {
                changes.health_checks = true;
                match new {
                    Some(check) => {
                        self.state.health_checks.insert(port, check);
                    }
                    None => {
                        self.state.health_checks.remove(&port);
                    }
                }
            }
        }
        changes.services = affected;
        changes
    }

    /// The backend sets that frontends `service` owns use (through its first claim of
    /// each: a later port claiming the same frontend gets nothing).
    fn used_sets(&self, service: &ServiceRef) -> BTreeSet<BackendSetKey> {
        let mut seen = BTreeSet::new();
        self.entries
            .get(service)
            .into_iter()
            .flat_map(|entries| entries.claims())
            .filter(|(frontend, _)| seen.insert(**frontend))
            .filter(|(frontend, _)| self.owner(frontend) == Some(service))
            .flat_map(|(_, f)| [f.from_outside.clone(), f.from_node.clone()])
            .collect()
    }

    /// The Service that owns frontend `key`.
    fn owner(&self, key: &FrontendKey) -> Option<&ServiceRef> {
        self.claims.get(key).and_then(|claimants| claimants.first())
    }

    fn unclaim(
        &mut self,
        old: &ServiceEntries,
        frontends: &mut BTreeSet<FrontendKey>,
        ports: &mut BTreeSet<u16>,
        set_keys: &mut BTreeSet<BackendSetKey>,
    ) {
        let service = old.service();
        for (key, _) in old.claims() {
            if let Some(claimants) = self.claims.get_mut(key) {
                claimants.remove(service);
                if claimants.is_empty() {
                    self.claims.remove(key);
                }
            }
            frontends.insert(*key);
        }
        if let Some((port, _)) = old.health_check() {
            if let Some(claimants) = self.health_claims.get_mut(&port) {
                claimants.remove(service);
                if claimants.is_empty() {
                    self.health_claims.remove(&port);
                }
            }
            ports.insert(port);
        }
        set_keys.extend(old.backend_set_keys().cloned());
    }

    fn compute_entries(&self, key: &ServiceRef, service: &Service) -> ServiceEntries {
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice))
            .collect();
        desired::service_entries(&self.node, service, &slices)
    }

    /// Recomputes everything from the objects (first sync, relist).
    fn rebuild(&mut self) {
        self.touched.clear();
        self.full = false;
        self.entries.clear();
        self.claims.clear();
        self.health_claims.clear();
        self.reached_from_outside.clear();
        let mut state = DesiredState::default();
        for (service, object) in &self.services {
            let entries = self.compute_entries(service, object);
            entries.add_to(&mut state);
            for (key, _) in entries.claims() {
                self.claims.entry(*key).or_default().insert(service.clone());
            }
            if let Some((port, _)) = entries.health_check() {
                self.health_claims
                    .entry(port)
                    .or_default()
                    .insert(service.clone());
            }
            self.entries.insert(service.clone(), entries);
        }
        state.skipped.clear();
        for frontend in state.frontends.values() {
            if frontend.kind.is_external() {
                *self
                    .reached_from_outside
                    .entry(frontend.from_outside.clone())
                    .or_default() += 1;
            }
        }
        self.state = state;
    }
}

fn service_key(service: &Service) -> ServiceRef {
    ServiceRef {
        namespace: service.metadata.namespace.clone().unwrap_or_default(),
        name: service.metadata.name.clone().unwrap_or_default(),
    }
}

fn slice_key(slice: &EndpointSlice) -> Option<SliceRef> {
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use k8s_openapi::{
        api::{
            core::v1::{
                LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
            },
            discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::proxy::{
        diff::{self, AppliedState, BackendSelection, PlanConfig, PlanIndex},
        maglev::TableSize,
    };

    const NODE: &str = "node-a";

    fn node() -> NodeContext {
        NodeContext {
            node_name: NODE.into(),
            node_ips: vec![Ipv4Addr::new(172, 30, 0, 11)],
        }
    }

    /// A deterministic pseudo-random source (an LCG; the tests need no better).
    struct Random(u64);

    impl Random {
        fn below(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from((self.0 >> 33) % bound as u64).unwrap_or(0)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        fn chance(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }
    }

    const NAMESPACES: [&str; 2] = ["apps", "web"];
    const SERVICES: [&str; 5] = ["s0", "s1", "s2", "s3", "s4"];
    const SLICES: [&str; 6] = ["e0", "e1", "e2", "e3", "e4", "e5"];

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    /// A Service from small pools of addresses and ports, so that Services often claim the
    /// same ClusterIP, NodePort, externalIP, LoadBalancer IP or healthCheckNodePort.
    fn random_service(random: &mut Random, namespace: &str, name: &str) -> Service {
        let service_type = *random.pick(&["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"]);
        let cluster_ip = *random.pick(&["10.43.0.1", "10.43.0.2", "10.43.0.3", "None"]);
        let mut ports = Vec::new();
        for _ in 0..=random.below(2) {
            let (port_name, number, protocol) =
                *random.pick(&[("http", 80, "TCP"), ("dns", 53, "UDP"), ("", 80, "TCP")]);
            ports.push(ServicePort {
                name: (!port_name.is_empty()).then(|| port_name.to_owned()),
                port: number,
                protocol: Some(protocol.into()),
                node_port: Some(*random.pick(&[30080, 30081, 0])),
                ..ServicePort::default()
            });
        }
        let external_ips = (0..random.below(2))
            .map(|_| random.pick(&["192.0.2.1", "192.0.2.2"]).to_string())
            .collect();
        let ingress = (0..random.below(2))
            .map(|_| LoadBalancerIngress {
                ip: Some(random.pick(&["198.51.100.1", "198.51.100.2"]).to_string()),
                ..LoadBalancerIngress::default()
            })
            .collect();
        let policy = |random: &mut Random| Some(random.pick(&["Cluster", "Local"]).to_string());
        Service {
            metadata: meta(namespace, name),
            spec: Some(ServiceSpec {
                type_: Some(service_type.into()),
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                ports: Some(ports),
                external_ips: Some(external_ips),
                external_traffic_policy: policy(random),
                internal_traffic_policy: policy(random),
                health_check_node_port: Some(*random.pick(&[32000, 32001])),
                session_affinity: Some(random.pick(&["None", "ClientIP"]).to_string()),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                conditions: None,
            }),
        }
    }

    /// A slice of a random Service (existing or not), sometimes IPv6 or without a label.
    fn random_slice(random: &mut Random, namespace: &str, name: &str) -> EndpointSlice {
        let labels = (!random.chance(8)).then(|| {
            BTreeMap::from([(
                desired::SERVICE_NAME_LABEL.to_owned(),
                random.pick(&SERVICES).to_string(),
            )])
        });
        let endpoints = (0..random.below(4))
            .map(|_| Endpoint {
                addresses: vec![random
                    .pick(&["10.42.0.1", "10.42.0.2", "10.42.1.3"])
                    .to_string()],
                node_name: Some(random.pick(&[NODE, "node-b"]).to_string()),
                conditions: Some(EndpointConditions {
                    ready: Some(!random.chance(3)),
                    serving: Some(!random.chance(3)),
                    terminating: Some(random.chance(3)),
                }),
                ..Endpoint::default()
            })
            .collect();
        let (port_name, protocol) = *random.pick(&[("http", "TCP"), ("dns", "UDP"), ("", "TCP")]);
        EndpointSlice {
            metadata: ObjectMeta {
                labels,
                ..meta(namespace, name)
            },
            address_type: if random.chance(10) { "IPv6" } else { "IPv4" }.into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: (!port_name.is_empty()).then(|| port_name.to_owned()),
                protocol: Some(protocol.into()),
                port: Some(*random.pick(&[8080, 8081])),
                ..EndpointPort::default()
            }]),
        }
    }

    /// The objects as the API holds them, next to the index fed with the same events.
    struct World {
        services: BTreeMap<(String, String), Service>,
        slices: BTreeMap<(String, String), EndpointSlice>,
    }

    /// Puts `made` under `key` (or deletes what is there, when `None`) and hands the watch
    /// event on.
    fn change<T: Clone>(
        objects: &mut BTreeMap<(String, String), T>,
        key: (String, String),
        made: Option<T>,
        send: impl FnOnce(Event<T>),
    ) {
        match made {
            Some(object) => {
                objects.insert(key, object.clone());
                send(Event::Apply(object));
            }
            None => {
                if let Some(object) = objects.remove(&key) {
                    send(Event::Delete(object));
                }
            }
        }
    }

    impl World {
        /// One random watch event, applied to the world and handed to the index.
        fn step(&mut self, random: &mut Random, index: &mut DesiredIndex) {
            let namespace = random.pick(&NAMESPACES).to_string();
            match random.below(20) {
                roll @ 0..=8 => {
                    let name = random.pick(&SERVICES).to_string();
                    let made = (roll <= 6).then(|| random_service(random, &namespace, &name));
                    let key = (namespace, name);
                    change(&mut self.services, key, made, |e| index.service_event(e));
                }
                roll @ 9..=18 => {
                    let name = random.pick(&SLICES).to_string();
                    let made = (roll <= 16).then(|| random_slice(random, &namespace, &name));
                    let key = (namespace, name);
                    change(&mut self.slices, key, made, |e| index.slice_event(e));
                }
                _ => self.relist(index),
            }
        }

        /// Both watches list everything again.
        fn relist(&self, index: &mut DesiredIndex) {
            index.service_event(Event::Init);
            for service in self.services.values() {
                index.service_event(Event::InitApply(service.clone()));
            }
            index.service_event(Event::InitDone);
            index.slice_event(Event::Init);
            for slice in self.slices.values() {
                index.slice_event(Event::InitApply(slice.clone()));
            }
            index.slice_event(Event::InitDone);
        }

        fn compute(&self) -> DesiredState {
            let services: Vec<Service> = self.services.values().cloned().collect();
            let slices: Vec<EndpointSlice> = self.slices.values().cloned().collect();
            desired::compute(&node(), &services, &slices)
        }
    }

    fn maglev_config(tables: u32) -> PlanConfig {
        let size = TableSize::new(251).unwrap_or_else(|e| panic!("{e}"));
        PlanConfig {
            selection: BackendSelection::Maglev(size),
            max_service_id: 1000,
            maglev_capacity: 251 * tables,
        }
    }

    #[test]
    fn random_changes_give_the_same_state_as_a_full_computation() {
        let mut random = Random(0x00c0_47e9);
        let mut world = World {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
        };
        let mut index = DesiredIndex::new(node());
        world.relist(&mut index);
        assert!(index.listed());
        let mut conflicts = 0;
        let mut incremental = 0;
        for round in 0..400 {
            for _ in 0..=random.below(3) {
                world.step(&mut random, &mut index);
            }
            let changes = index.update();
            incremental += usize::from(!changes.full);
            let expected = world.compute();
            assert_eq!(index.full_state(), expected, "round {round}");
            conflicts += expected
                .skipped
                .iter()
                .filter(|s| matches!(s.reason, desired::SkipReason::FrontendTaken { .. }))
                .count();
        }
        // The walk did exercise what it is meant to.
        assert!(conflicts > 100, "only {conflicts} conflicts");
        assert!(incremental > 300, "only {incremental} incremental updates");
    }

    #[test]
    fn changed_keys_planned_alone_give_the_same_maps_as_a_full_plan() {
        // Room for three tables only, so sets also wait for room and get it later.
        let config = maglev_config(3);
        let mut random = Random(0x5eed_1234);
        let mut world = World {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
        };
        let mut index = DesiredIndex::new(node());
        world.relist(&mut index);
        index.update();
        let first = diff::plan(&AppliedState::empty(1000), index.state(), &config)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut full = first.next.clone();
        let mut applied = first.next;
        let mut plan_index =
            PlanIndex::new(&applied, &first.untabled).unwrap_or_else(|| panic!("no index"));
        let mut operations = 0;
        for round in 0..400 {
            for _ in 0..=random.below(3) {
                world.step(&mut random, &mut index);
            }
            let changes = index.update();
            let expected =
                diff::plan(&full, index.state(), &config).unwrap_or_else(|e| panic!("{e}"));
            if changes.full {
                plan_index = PlanIndex::new(&expected.next, &expected.untabled)
                    .unwrap_or_else(|| panic!("no index"));
                applied = expected.next.clone();
                full = expected.next;
                continue;
            }
            let plan = diff::plan_changes(
                &applied,
                &plan_index,
                index.state(),
                &changes.frontends,
                &changes.backend_sets,
                &|key| index.reached_from_outside(key),
                &config,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(plan.operations, expected.operations, "round {round}");
            let untabled: BTreeSet<_> = expected.untabled.iter().cloned().collect();
            assert_eq!(plan.untabled(), &untabled, "round {round}");
            operations += plan.operations.len();
            plan.commit(&mut applied, &mut plan_index);
            assert_eq!(applied, expected.next, "round {round}");
            full = expected.next;
        }
        assert!(operations > 400, "only {operations} operations");
    }

    fn service(namespace: &str, name: &str, cluster_ip: &str, external_ip: &str) -> Service {
        Service {
            metadata: meta(namespace, name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                external_ips: Some(vec![external_ip.into()]),
                ports: Some(vec![ServicePort {
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn slice(name: &str, service: &str, address: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    desired::SERVICE_NAME_LABEL.to_owned(),
                    service.to_owned(),
                )])),
                ..meta("default", name)
            },
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec![address.into()],
                ..Endpoint::default()
            }],
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
        }
    }

    fn listed() -> DesiredIndex {
        let mut index = DesiredIndex::new(node());
        index.replace_services(Vec::new());
        index.replace_slices(Vec::new());
        assert!(index.update().full);
        index
    }

    #[test]
    fn one_slice_change_touches_only_its_service() {
        let mut index = listed();
        index.apply_service(service("default", "a", "10.43.0.1", "192.0.2.1"));
        index.apply_service(service("default", "b", "10.43.0.2", "192.0.2.2"));
        index.apply_slice(slice("b-1", "b", "10.42.0.2"));
        index.update();
        index.apply_slice(slice("b-1", "b", "10.42.0.3"));
        let changes = index.update();
        assert!(!changes.full);
        assert!(changes.frontends.is_empty());
        assert_eq!(changes.backend_sets.len(), 1);
        assert!(changes
            .backend_sets
            .iter()
            .all(|key| key.port.service.name == "b"));
        assert_eq!(
            changes
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn a_slice_before_its_service_and_a_moved_label_follow_the_service() {
        let mut index = listed();
        // The slice arrives first: nothing to program yet.
        index.apply_slice(slice("x-1", "a", "10.42.0.7"));
        index.update();
        assert!(index.state().frontends.is_empty());
        index.apply_service(service("default", "a", "10.43.0.1", "192.0.2.1"));
        index.apply_service(service("default", "b", "10.43.0.2", "192.0.2.2"));
        index.update();
        let active = |index: &DesiredIndex, name: &str| {
            index
                .state()
                .backend_sets
                .iter()
                .filter(|(key, _)| key.port.service.name == name)
                .map(|(_, set)| set.active.len())
                .sum::<usize>()
        };
        assert_eq!(active(&index, "a"), 1);
        assert_eq!(active(&index, "b"), 0);
        // The same slice now names b: a loses the endpoint, b gets it.
        index.apply_slice(slice("x-1", "b", "10.42.0.7"));
        let changes = index.update();
        assert_eq!(
            changes
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(active(&index, "a"), 0);
        assert_eq!(active(&index, "b"), 1);
    }

    #[test]
    fn a_shared_external_ip_moves_to_the_next_service_when_its_owner_goes() {
        let mut index = listed();
        let a = service("default", "a", "10.43.0.1", "192.0.2.9");
        index.apply_service(a.clone());
        index.apply_service(service("default", "b", "10.43.0.2", "192.0.2.9"));
        index.update();
        let shared = FrontendKey {
            address: desired::FrontendAddress::Ip(Ipv4Addr::new(192, 0, 2, 9)),
            port: 80,
            protocol: crate::proxy::Protocol::Tcp,
        };
        let owner = |index: &DesiredIndex| {
            index.state().frontends[&shared]
                .from_node
                .port
                .service
                .name
                .clone()
        };
        assert_eq!(owner(&index), "a");
        assert_eq!(index.skipped(&service_key(&a)), Vec::new());
        index.delete_service(&a);
        let changes = index.update();
        assert!(changes.frontends.contains(&shared));
        assert_eq!(owner(&index), "b");
        assert!(changes.services.iter().any(|s| s.name == "b"));
    }
}
