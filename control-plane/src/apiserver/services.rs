//! Service addresses and ports, and the Service rules that go with them. ClusterIPs come from
//! the service CIDR; node ports and healthCheckNodePorts (LoadBalancer Services with
//! `externalTrafficPolicy: Local`) from the NodePort range, without duplicates even under
//! concurrent writes. Each allocation is a reservation key
//! (`/registry/corten/serviceips/<ip>`, `/registry/corten/nodeports/<port>`) written in the
//! same transaction as the Service, and deleted in the same transaction that deletes it or
//! that stores a version no longer holding it (a type change), so a reservation exists
//! exactly as long as its Service holds the value (also across restarts).
//!
//! Also here: the update rules that keep allocated values the client left out and drop the
//! fields a new type does not take (so `kubectl patch` of `type` alone works, as upstream),
//! and the Service's validation beyond its typed form.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde_json::{json, Value};

use super::status::{ApiError, Cause};
use crate::store::{Compare, CompareOp, TxnOp};

/// The NodePort range (kube-apiserver's default).
pub const NODE_PORTS: (u16, u16) = (30000, 32767);

/// The service network and the NodePort range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// First and last port of the NodePort range (node ports and healthCheckNodePorts).
    pub node_ports: (u16, u16),
}

/// Parses a port range as kube-apiserver's `--service-node-port-range` takes it: `a-b`,
/// `a+n` (a to a+n) or one port; none if it is empty, reversed or includes port 0.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let text = text.trim();
    let (first, last) = if let Some((a, b)) = text.split_once('-') {
        (a.trim().parse().ok()?, b.trim().parse().ok()?)
    } else if let Some((a, n)) = text.split_once('+') {
        let first: u16 = a.trim().parse().ok()?;
        (first, first.checked_add(n.trim().parse().ok()?)?)
    } else {
        let port = text.parse().ok()?;
        (port, port)
    };
    (first > 0 && first <= last).then_some((first, last))
}

impl ServiceNetwork {
    /// Parses `a.b.c.d/n`; the NodePort range is the default one.
    pub fn parse(cidr: &str) -> Option<Self> {
        let (base, prefix) = cidr.split_once('/')?;
        let base: Ipv4Addr = base.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 30)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Some(Self {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
            node_ports: NODE_PORTS,
        })
    }

    /// The same network with another NodePort range.
    pub fn with_node_ports(self, node_ports: (u16, u16)) -> Self {
        Self { node_ports, ..self }
    }

    /// The address of the `kubernetes` Service (the first one).
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let size = 1u64 << (32 - u32::from(self.prefix));
        let offset = u64::from(u32::from(ip)).wrapping_sub(u64::from(u32::from(self.base)));
        offset > 0 && offset < size - 1
    }

    /// A candidate address for a new Service (random, never the network, broadcast or
    /// `kubernetes` address).
    pub fn candidate(&self) -> Ipv4Addr {
        let size = 1u32 << (32 - u32::from(self.prefix));
        let random = u32::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        let offset = 2 + random % (size - 3);
        Ipv4Addr::from(u32::from(self.base) + offset)
    }
}

fn ip_key(ip: &str) -> String {
    format!("/registry/corten/serviceips/{ip}")
}

fn port_key(port: u64) -> String {
    format!("/registry/corten/nodeports/{port}")
}

fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid("", "Service", name, vec![Cause::invalid(field, message)])
}

fn spec_str<'a>(service: &'a Value, field: &str) -> &'a str {
    service
        .pointer(&format!("/spec/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn kind(service: &Value) -> &str {
    match spec_str(service, "type") {
        "" => "ClusterIP",
        kind => kind,
    }
}

/// NodePort and LoadBalancer Services have node ports (upstream's `needsNodePort`).
fn has_node_ports(service: &Value) -> bool {
    matches!(kind(service), "NodePort" | "LoadBalancer")
}

/// Whether missing node ports are allocated: always for NodePort, for LoadBalancer unless
/// `allocateLoadBalancerNodePorts` is false.
fn allocates_node_ports(service: &Value) -> bool {
    match kind(service) {
        "NodePort" => true,
        "LoadBalancer" => {
            service
                .pointer("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local` gets a healthCheckNodePort
/// (upstream's `needsHCNodePort`).
pub fn needs_health_check(service: &Value) -> bool {
    kind(service) == "LoadBalancer" && spec_str(service, "externalTrafficPolicy") == "Local"
}

/// Services reachable from outside the cluster: NodePort, LoadBalancer, or ClusterIP with
/// externalIPs (upstream's `ExternallyAccessible`); only these take an externalTrafficPolicy.
pub fn externally_accessible(service: &Value) -> bool {
    has_node_ports(service)
        || (kind(service) == "ClusterIP"
            && service
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .is_some_and(|ips| !ips.is_empty()))
}

fn node_ports(service: &Value) -> Vec<u64> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .filter(|p| *p != 0)
                .collect()
        })
        .unwrap_or_default()
}

fn health_check_port(service: &Value) -> Option<u64> {
    service
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .filter(|p| *p != 0)
}

/// The reservations a stored Service holds (its ClusterIP, node ports and
/// healthCheckNodePort): each key with the field that holds it and the value as an error
/// prints it.
fn held(service: &Value) -> BTreeMap<String, (&'static str, String)> {
    let mut keys = BTreeMap::new();
    match spec_str(service, "clusterIP") {
        "" | "None" => {}
        ip => {
            keys.insert(ip_key(ip), ("spec.clusterIP", format!("{ip:?}")));
        }
    }
    for port in node_ports(service) {
        keys.insert(port_key(port), ("spec.ports[].nodePort", port.to_string()));
    }
    if let Some(port) = health_check_port(service) {
        keys.insert(
            port_key(port),
            ("spec.healthCheckNodePort", port.to_string()),
        );
    }
    keys
}

/// One reservation a write of a Service needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The reservation key.
    pub key: String,
    /// The field that holds the value, for the error when it is taken.
    pub field: &'static str,
    /// The value, for that error.
    pub value: String,
    /// Whether the client asked for this value: then a taken key is the client's error (422);
    /// a value the server chose is chosen again.
    pub requested: bool,
}

/// What a write of a Service reserves and releases, in the same transaction as the write.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys to reserve (they must be free).
    pub claims: Vec<Claim>,
    /// Keys the old version held and the new one does not.
    pub releases: Vec<String>,
}

fn random_node_port((first, last): (u16, u16), taken: &BTreeSet<u64>) -> u64 {
    let span = u64::from(last - first) + 1;
    let start = u64::from(u32::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    ));
    // Walk from a random place to the first port this Service does not use yet.
    (0..span)
        .map(|i| u64::from(first) + (start + i) % span)
        .find(|p| !taken.contains(p))
        .unwrap_or(u64::from(first))
}

fn check_node_port(
    (first, last): (u16, u16),
    name: &str,
    field: &str,
    port: u64,
) -> Result<u64, ApiError> {
    if u16::try_from(port).is_ok_and(|p| (first..=last).contains(&p)) {
        Ok(port)
    } else {
        Err(invalid(
            name,
            field,
            format!(
                "Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {first}-{last}"
            ),
        ))
    }
}

/// Chooses what a Service still lacks (ClusterIP, node ports, healthCheckNodePort), writes
/// it into `service`, and returns the reservations to change: for a create (`old` none)
/// everything it holds, for an update what it holds beyond `old` and what `old` held that
/// it no longer does. Random choices differ between calls, so a plan whose claims turned
/// out taken is simply made again.
pub fn plan(
    network: &ServiceNetwork,
    old: Option<&Value>,
    service: &mut Value,
) -> Result<Plan, ApiError> {
    let name = service
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let before = old.map(held).unwrap_or_default();
    let kind = kind(service).to_owned();
    let allocate_ports = allocates_node_ports(service);
    let health_check = needs_health_check(service);
    let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(Plan {
            claims: Vec::new(),
            releases: before.into_keys().collect(),
        });
    };
    let mut requested = BTreeSet::new();
    if kind != "ExternalName" {
        let given = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let ip = match given.as_str() {
            "None" => None,
            "" => Some(network.candidate()),
            given => {
                let ip: Ipv4Addr = given.parse().map_err(|_| {
                    invalid(
                        &name,
                        "spec.clusterIP",
                        format!("Invalid value: {given:?}: must be a valid IP address"),
                    )
                })?;
                if !network.contains(ip) && ip != network.first() {
                    return Err(invalid(
                        &name,
                        "spec.clusterIP",
                        format!("Invalid value: {given:?}: provided IP is not in the valid range"),
                    ));
                }
                requested.insert(ip_key(given));
                Some(ip)
            }
        };
        match ip {
            Some(ip) => {
                let text = ip.to_string();
                spec.insert("clusterIP".into(), json!(text));
                spec.insert("clusterIPs".into(), json!([text]));
            }
            None => {
                spec.insert("clusterIPs".into(), json!(["None"]));
            }
        }
    }
    let mut used: BTreeSet<u64> = BTreeSet::new();
    if let Some(Value::Array(ports)) = spec.get("ports") {
        for port in ports {
            if let Some(p) = port
                .get("nodePort")
                .and_then(Value::as_u64)
                .filter(|p| *p != 0)
            {
                used.insert(check_node_port(
                    network.node_ports,
                    &name,
                    "spec.ports[].nodePort",
                    p,
                )?);
                requested.insert(port_key(p));
            }
        }
    }
    if allocate_ports {
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            // Ports of one number (say 53 over TCP and UDP) share their node port, as
            // upstream gives them: a requested one, else the first one chosen.
            let mut by_number: BTreeMap<u64, u64> = BTreeMap::new();
            for port in ports.iter() {
                if let (Some(number), Some(node_port)) = (
                    port.get("port").and_then(Value::as_u64),
                    port.get("nodePort")
                        .and_then(Value::as_u64)
                        .filter(|p| *p != 0),
                ) {
                    by_number.entry(number).or_insert(node_port);
                }
            }
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                if port.get("nodePort").and_then(Value::as_u64).unwrap_or(0) == 0 {
                    let number = port.get("port").and_then(Value::as_u64).unwrap_or(0);
                    let chosen = *by_number.entry(number).or_insert_with(|| {
                        let chosen = random_node_port(network.node_ports, &used);
                        used.insert(chosen);
                        chosen
                    });
                    port.insert("nodePort".into(), json!(chosen));
                }
            }
        }
    }
    if health_check {
        match spec.get("healthCheckNodePort").and_then(Value::as_u64) {
            Some(p) if p != 0 => {
                check_node_port(network.node_ports, &name, "spec.healthCheckNodePort", p)?;
                requested.insert(port_key(p));
            }
            _ => {
                let chosen = random_node_port(network.node_ports, &used);
                spec.insert("healthCheckNodePort".into(), json!(chosen));
            }
        }
    }
    let after = held(service);
    let claims = after
        .iter()
        .filter(|(key, _)| !before.contains_key(*key))
        .map(|(key, (field, value))| Claim {
            key: key.clone(),
            field,
            value: value.clone(),
            requested: requested.contains(key),
        })
        .collect();
    Ok(Plan {
        claims,
        releases: before
            .into_keys()
            .filter(|key| !after.contains_key(key))
            .collect(),
    })
}

/// Deletes of the reservations a stored Service holds.
pub fn releases(service: &Value) -> Vec<TxnOp> {
    held(service)
        .into_keys()
        .map(|key| TxnOp::delete(key.into_bytes()))
        .collect()
}

/// The error for a requested address or port another Service holds.
pub fn taken(name: &str, claim: &Claim) -> ApiError {
    let what = if claim.field == "spec.clusterIP" {
        "provided IP is already allocated"
    } else {
        "provided port is already allocated"
    };
    invalid(
        name,
        claim.field,
        format!("Invalid value: {}: {what}", claim.value),
    )
}

/// Reservation compares and puts for `plan`'s claims, plus its releases, for a write of the
/// Service stored at `service_key`.
pub fn transaction_ops(plan: &Plan, service_key: &str) -> (Vec<Compare>, Vec<TxnOp>) {
    let compares = plan
        .claims
        .iter()
        .map(|c| Compare::create_revision(c.key.as_bytes(), CompareOp::Equal, 0))
        .collect();
    let ops = plan
        .claims
        .iter()
        .map(|c| TxnOp::put(c.key.as_bytes(), service_key.as_bytes().to_vec()))
        .chain(
            plan.releases
                .iter()
                .map(|key| TxnOp::delete(key.as_bytes())),
        )
        .collect();
    (compares, ops)
}

/// On update, before defaults and validation (upstream's `patchAllocatedValues` and
/// `dropTypeDependentFields`): what the client left out keeps its allocated value (the
/// ClusterIP always, node ports by port name while the Service has node ports, the
/// healthCheckNodePort while it needs one), and fields the new type no longer uses are
/// dropped when the client left them as they were (so changing `type` alone works). Returns
/// the causes for a healthCheckNodePort changed while in use (immutable).
pub fn prepare_update(old: &Value, new: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let same = |new: &Value, field: &str| {
        let pointer = format!("/spec/{field}");
        old.pointer(&pointer) == new.pointer(&pointer)
    };
    let old_kind = kind(old).to_owned();
    let new_kind = kind(new).to_owned();
    if old_kind != "ExternalName" && new_kind != "ExternalName" {
        for field in ["clusterIP", "clusterIPs"] {
            if let (Some(value), Some(spec)) = (
                old.pointer(&format!("/spec/{field}")).cloned(),
                new.get_mut("spec").and_then(Value::as_object_mut),
            ) {
                spec.insert(field.into(), value);
            }
        }
    }
    if has_node_ports(old) && has_node_ports(new) {
        let by_name: BTreeMap<String, Value> = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port = p
                    .get("nodePort")
                    .filter(|v| v.as_u64().is_some_and(|n| n != 0))?;
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                Some((name.to_owned(), port.clone()))
            })
            .collect();
        let used: BTreeSet<u64> = node_ports(new).into_iter().collect();
        if let Some(Value::Array(ports)) = new.pointer_mut("/spec/ports") {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                if port.get("nodePort").and_then(Value::as_u64).unwrap_or(0) != 0 {
                    continue;
                }
                let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
                if let Some(value) = by_name.get(name) {
                    if !value.as_u64().is_some_and(|n| used.contains(&n)) {
                        port.insert("nodePort".into(), value.clone());
                    }
                }
            }
        }
    }
    if needs_health_check(old) && needs_health_check(new) {
        match (health_check_port(old), health_check_port(new)) {
            (Some(before), None) => {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("healthCheckNodePort".into(), json!(before));
                }
            }
            (Some(before), Some(after)) if before != after => {
                causes.push(Cause::forbidden(
                    "spec.healthCheckNodePort",
                    "field is immutable",
                ));
            }
            _ => {}
        }
    }
    // Fields of the old type that the new one does not take, when left unchanged.
    let mut drop = Vec::new();
    if old_kind != "ExternalName" && new_kind == "ExternalName" {
        drop.extend(
            [
                "clusterIP",
                "clusterIPs",
                "ipFamilies",
                "ipFamilyPolicy",
                "internalTrafficPolicy",
            ]
            .into_iter()
            .filter(|f| same(new, f)),
        );
    }
    if has_node_ports(old) && !has_node_ports(new) {
        let old_ports: BTreeSet<u64> = node_ports(old).into_iter().collect();
        if node_ports(new).iter().all(|p| old_ports.contains(p)) {
            if let Some(Value::Array(ports)) = new.pointer_mut("/spec/ports") {
                for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                    port.remove("nodePort");
                }
            }
        }
        if same(new, "externalTrafficPolicy") {
            drop.push("externalTrafficPolicy");
        }
    }
    if needs_health_check(old) && !needs_health_check(new) && same(new, "healthCheckNodePort") {
        drop.push("healthCheckNodePort");
    }
    if old_kind == "LoadBalancer"
        && new_kind != "LoadBalancer"
        && same(new, "allocateLoadBalancerNodePorts")
    {
        drop.push("allocateLoadBalancerNodePorts");
    }
    if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
        for field in drop {
            spec.remove(field);
        }
    }
    causes
}

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
const TRAFFIC_POLICIES: [&str; 2] = ["Cluster", "Local"];
/// The longest ClientIP affinity upstream allows (a day).
const MAX_AFFINITY_SECONDS: i64 = 86400;

/// A port number: 1..=65535.
fn port_number(value: Option<&Value>) -> Option<i64> {
    value
        .and_then(Value::as_i64)
        .filter(|p| (1..=65535).contains(p))
}

/// An IANA service name, as a named targetPort must be: at most 15 characters of lower case
/// letters, digits and non-consecutive '-' not at either end, with at least one letter.
fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A Service's rules beyond its typed form (kube-apiserver's Service validation, after
/// defaulting): type, ports, session affinity, and the fields each type allows.
pub fn checks(service: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let kind = spec_str(service, "type");
    if !SERVICE_TYPES.contains(&kind) {
        causes.push(Cause::not_supported("spec.type", kind, &SERVICE_TYPES));
    }
    let headless = spec_str(service, "clusterIP") == "None";
    let ports: Vec<Value> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && !headless && kind != "ExternalName" {
        causes.push(Cause::required("spec.ports"));
    }
    if headless && matches!(kind, "NodePort" | "LoadBalancer") {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            format!("Invalid value: \"None\": may not be set to 'None' for {kind} services"),
        ));
    }
    if kind == "ExternalName" {
        let external = spec_str(service, "externalName");
        let external = external.strip_suffix('.').unwrap_or(external);
        if external.is_empty() {
            causes.push(Cause::required("spec.externalName"));
        } else if let Some(message) = super::objects::check_subdomain(external) {
            causes.push(Cause::invalid("spec.externalName", message));
        }
    }
    let mut names = BTreeSet::new();
    let mut seen_ports = BTreeSet::new();
    let mut seen_node_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            if ports.len() > 1 {
                causes.push(Cause::required(&format!("{path}.name")));
            }
        } else if let Some(message) = super::objects::check_label(name) {
            causes.push(Cause::invalid(&format!("{path}.name"), message));
        } else if !names.insert(name.to_owned()) {
            causes.push(Cause::duplicate(
                &format!("{path}.name"),
                &format!("{name:?}"),
            ));
        }
        let number = port_number(port.get("port"));
        if number.is_none() {
            let value = port.get("port").map(Value::to_string).unwrap_or_default();
            causes.push(Cause::invalid(
                &format!("{path}.port"),
                format!("Invalid value: {value}: must be between 1 and 65535, inclusive"),
            ));
        }
        let protocol = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP");
        if !PROTOCOLS.contains(&protocol) {
            causes.push(Cause::not_supported(
                &format!("{path}.protocol"),
                protocol,
                &PROTOCOLS,
            ));
        }
        match port.get("targetPort") {
            None | Some(Value::Null) => {}
            Some(Value::String(target)) if is_port_name(target) => {}
            Some(target @ Value::Number(_)) if port_number(Some(target)).is_some() => {}
            Some(target) => causes.push(Cause::invalid(
                &format!("{path}.targetPort"),
                format!("Invalid value: {target}: must be a port number between 1 and 65535, inclusive, or an IANA service name"),
            )),
        }
        if let Some(number) = number {
            if !seen_ports.insert((protocol.to_owned(), number)) {
                causes.push(Cause::duplicate(&path, &format!("{protocol}/{number}")));
            }
        }
        if let Some(node_port) = port
            .get("nodePort")
            .and_then(Value::as_u64)
            .filter(|p| *p != 0)
        {
            if kind == "ClusterIP" {
                causes.push(Cause::forbidden(
                    &format!("{path}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
            if !seen_node_ports.insert((protocol.to_owned(), node_port)) {
                causes.push(Cause::duplicate(
                    &format!("{path}.nodePort"),
                    &node_port.to_string(),
                ));
            }
        }
    }
    let affinity = spec_str(service, "sessionAffinity");
    match affinity {
        "None" => {
            if service
                .pointer("/spec/sessionAffinityConfig")
                .is_some_and(|c| !c.is_null())
            {
                causes.push(Cause::forbidden(
                    "spec.sessionAffinityConfig",
                    "must not be set when session affinity is None",
                ));
            }
        }
        "ClientIP" => {
            if let Some(timeout) =
                service.pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
            {
                if !timeout
                    .as_i64()
                    .is_some_and(|t| t > 0 && t <= MAX_AFFINITY_SECONDS)
                {
                    causes.push(Cause::invalid(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("Invalid value: {timeout}: must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
                    ));
                }
            }
        }
        other => causes.push(Cause::not_supported(
            "spec.sessionAffinity",
            other,
            &["ClientIP", "None"],
        )),
    }
    let external_policy = spec_str(service, "externalTrafficPolicy");
    if !externally_accessible(service) {
        if !external_policy.is_empty() {
            causes.push(Cause::invalid(
                "spec.externalTrafficPolicy",
                format!("Invalid value: {external_policy:?}: may only be set for externally-accessible services"),
            ));
        }
    } else if !TRAFFIC_POLICIES.contains(&external_policy) {
        causes.push(Cause::not_supported(
            "spec.externalTrafficPolicy",
            external_policy,
            &TRAFFIC_POLICIES,
        ));
    }
    if let Some(port) = health_check_port(service) {
        if !needs_health_check(service) {
            causes.push(Cause::invalid(
                "spec.healthCheckNodePort",
                format!("Invalid value: {port}: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"),
            ));
        }
    }
    let internal_policy = spec_str(service, "internalTrafficPolicy");
    if !internal_policy.is_empty() && !TRAFFIC_POLICIES.contains(&internal_policy) {
        causes.push(Cause::not_supported(
            "spec.internalTrafficPolicy",
            internal_policy,
            &TRAFFIC_POLICIES,
        ));
    }
    if kind != "LoadBalancer"
        && service
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .is_some_and(|v| !v.is_null())
    {
        causes.push(Cause::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    causes
}

/// Creates (once) the `default/kubernetes` Service on the first service address, port 443 to
/// the API server's port, and its Endpoints at the address clients reach the server on, as
/// kube-apiserver's own reconciler does.
pub async fn bootstrap_kubernetes_service(
    rest: &super::rest::Rest,
    endpoint: std::net::IpAddr,
    port: u16,
) -> Result<(), ApiError> {
    let (Some(services), Some(endpoints)) = (
        rest.registry.find("", "v1", "services"),
        rest.registry.find("", "v1", "endpoints"),
    ) else {
        return Err(ApiError::internal("services are not served"));
    };
    let labels = json!({"component": "apiserver", "provider": "kubernetes"});
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": rest.services.first().to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            "sessionAffinity": "None",
        },
    });
    let endpoints_object = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": endpoint.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    let query = super::rest::Query::new();
    for (def, body) in [(&services, service), (&endpoints, endpoints_object)] {
        match rest.create(def, Some("default"), body, &query).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_inside_the_network() {
        let Some(net) = ServiceNetwork::parse("10.43.0.0/16") else {
            panic!("a valid CIDR");
        };
        assert_eq!(net.first(), Ipv4Addr::new(10, 43, 0, 1));
        for _ in 0..1000 {
            let ip = net.candidate();
            assert!(net.contains(ip) && ip != net.first(), "{ip}");
        }
        assert!(ServiceNetwork::parse("10.43.0.0/31").is_none());
    }

    fn network() -> ServiceNetwork {
        let Some(net) = ServiceNetwork::parse("10.43.0.0/16") else {
            panic!("a valid CIDR");
        };
        net
    }

    fn claimed(plan: &Plan) -> Vec<(&'static str, bool)> {
        plan.claims.iter().map(|c| (c.field, c.requested)).collect()
    }

    #[test]
    fn allocation_reserves_ip_and_node_ports() -> Result<(), ApiError> {
        let net = network();
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let plan = plan(&net, None, &mut svc)?;
        assert_eq!(
            claimed(&plan),
            [("spec.ports[].nodePort", false), ("spec.clusterIP", false)]
        );
        assert!(plan.releases.is_empty());
        assert!(svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43.")));
        assert!(svc["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .is_some_and(|p| (30000..=32767).contains(&p)));
        assert_eq!(releases(&svc).len(), 2);
        let mut headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        assert!(super::plan(&net, None, &mut headless)?.claims.is_empty());
        let mut outside = json!({"metadata": {"name": "o"}, "spec": {"clusterIP": "192.168.0.1"}});
        assert!(super::plan(&net, None, &mut outside).is_err());
        let mut out_of_range = json!({"metadata": {"name": "o"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}});
        assert!(super::plan(&net, None, &mut out_of_range).is_err());
        Ok(())
    }

    #[test]
    fn ports_of_one_number_share_their_node_port() -> Result<(), ApiError> {
        let net = network();
        let mut svc = json!({"metadata": {"name": "dns"}, "spec": {"type": "NodePort", "ports": [
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            {"name": "web", "port": 80, "protocol": "TCP"}]}});
        let made = plan(&net, None, &mut svc)?;
        let ports = &svc["spec"]["ports"];
        assert_eq!(ports[0]["nodePort"], ports[1]["nodePort"], "{svc}");
        assert_ne!(ports[0]["nodePort"], ports[2]["nodePort"], "{svc}");
        // One reservation per node port number.
        assert_eq!(made.claims.len(), 3, "{made:?}");
        // A requested one is shared too, whichever entry asked for it.
        let mut asked = json!({"metadata": {"name": "dns"}, "spec": {"type": "NodePort", "ports": [
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "dns-udp", "port": 53, "protocol": "UDP", "nodePort": 30053}]}});
        plan(&net, None, &mut asked)?;
        assert_eq!(asked["spec"]["ports"][0]["nodePort"], 30053, "{asked}");
        Ok(())
    }

    #[test]
    fn node_port_ranges_parse_as_upstream_and_bound_allocation() -> Result<(), ApiError> {
        assert_eq!(parse_port_range("30000-32767"), Some((30000, 32767)));
        assert_eq!(parse_port_range("20000+9"), Some((20000, 20009)));
        assert_eq!(parse_port_range("31000"), Some((31000, 31000)));
        for bad in ["", "0-10", "10-9", "a-b", "65535+1", "1-70000"] {
            assert_eq!(parse_port_range(bad), None, "{bad:?}");
        }
        let net = network().with_node_ports((20000, 20001));
        let mut svc = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer",
            "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}});
        plan(&net, None, &mut svc)?;
        let mut ports = node_ports(&svc);
        ports.extend(health_check_port(&svc));
        ports.sort_unstable();
        assert_eq!(ports, [20000, 20001]);
        let mut outside = json!({"metadata": {"name": "o"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}});
        let Err(error) = plan(&net, None, &mut outside) else {
            panic!("30000 is outside 20000-20001");
        };
        assert!(
            error.details.causes[0].message.contains("20000-20001"),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn local_load_balancers_get_a_health_check_port() -> Result<(), ApiError> {
        let net = network();
        let mut svc = json!({"metadata": {"name": "lb"}, "spec": {
            "type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]}});
        let made = plan(&net, None, &mut svc)?;
        let health = svc["spec"]["healthCheckNodePort"].as_u64().unwrap_or(0);
        assert!((30000..=32767).contains(&health));
        let ports = node_ports(&svc);
        assert_eq!(ports.len(), 2);
        assert!(!ports.contains(&health), "{health} is also a node port");
        let mut fields: Vec<_> = claimed(&made);
        fields.sort();
        assert_eq!(
            fields,
            [
                ("spec.clusterIP", false),
                ("spec.healthCheckNodePort", false),
                ("spec.ports[].nodePort", false),
                ("spec.ports[].nodePort", true),
            ]
        );
        // A Cluster policy, or another type, holds no health check port.
        for spec in [
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "ports": [{"port": 80}]}),
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        ] {
            let mut other = json!({"metadata": {"name": "x"}, "spec": spec});
            plan(&net, None, &mut other)?;
            assert!(
                other["spec"].get("healthCheckNodePort").is_none(),
                "{other}"
            );
        }
        // allocateLoadBalancerNodePorts: false leaves node ports out but not the health check.
        let mut bare = json!({"metadata": {"name": "x"}, "spec": {"type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": false, "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}});
        plan(&net, None, &mut bare)?;
        assert!(node_ports(&bare).is_empty());
        assert!(health_check_port(&bare).is_some());
        Ok(())
    }

    #[test]
    fn updates_keep_allocations_and_follow_type_changes() -> Result<(), ApiError> {
        let net = network();
        let mut stored = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer",
            "sessionAffinity": "None", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80}]}});
        plan(&net, None, &mut stored)?;
        let health = health_check_port(&stored);
        let node_port = node_ports(&stored);

        // A client that sends the spec without allocated values (kubectl apply) keeps them,
        // even with the port number changed (node ports follow the port's name).
        let mut new = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer",
            "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 8080}]}});
        assert!(prepare_update(&stored, &mut new).is_empty());
        let same = plan(&net, Some(&stored), &mut new)?;
        assert_eq!(same, Plan::default());
        assert_eq!(health_check_port(&new), health);
        assert_eq!(node_ports(&new), node_port);
        assert_eq!(new["spec"]["clusterIP"], stored["spec"]["clusterIP"]);

        // A changed health check port while in use is refused.
        let mut moved = stored.clone();
        moved["spec"]["healthCheckNodePort"] = json!(31999);
        let causes = prepare_update(&stored, &mut moved);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.healthCheckNodePort");

        // Cluster policy: the health check port is dropped and released.
        let mut cluster = stored.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        assert!(prepare_update(&stored, &mut cluster).is_empty());
        assert!(cluster["spec"].get("healthCheckNodePort").is_none());
        let released = plan(&net, Some(&stored), &mut cluster)?;
        assert!(released.claims.is_empty());
        assert_eq!(released.releases, [port_key(health.unwrap_or(0))]);

        // ClusterIP: node ports, the health check port, the policy and
        // allocateLoadBalancerNodePorts all go; the ClusterIP stays.
        let mut plain = stored.clone();
        plain["spec"]["allocateLoadBalancerNodePorts"] = json!(true);
        let mut with_flag = stored.clone();
        with_flag["spec"]["allocateLoadBalancerNodePorts"] = json!(true);
        plain["spec"]["type"] = json!("ClusterIP");
        assert!(prepare_update(&with_flag, &mut plain).is_empty());
        for field in [
            "healthCheckNodePort",
            "externalTrafficPolicy",
            "allocateLoadBalancerNodePorts",
        ] {
            assert!(plain["spec"].get(field).is_none(), "{field} kept: {plain}");
        }
        assert!(node_ports(&plain).is_empty());
        assert!(checks(&plain).is_empty(), "{:?}", checks(&plain));
        let down = plan(&net, Some(&stored), &mut plain)?;
        assert!(down.claims.is_empty());
        assert_eq!(down.releases.len(), 2);

        // And back to NodePort: a new node port is claimed.
        let mut up = plain.clone();
        up["spec"]["type"] = json!("NodePort");
        assert!(prepare_update(&plain, &mut up).is_empty());
        let grown = plan(&net, Some(&plain), &mut up)?;
        assert_eq!(claimed(&grown), [("spec.ports[].nodePort", false)]);
        Ok(())
    }

    #[test]
    fn checks_follow_upstream_rules() {
        let causes = |spec: Value| -> Vec<String> {
            checks(&json!({"metadata": {"name": "s"}, "spec": spec}))
                .into_iter()
                .map(|c| format!("{} {}", c.reason, c.field))
                .collect()
        };
        let ok = json!({"type": "ClusterIP", "sessionAffinity": "None", "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}]});
        assert!(causes(ok).is_empty());
        assert_eq!(
            causes(json!({"type": "Weird", "sessionAffinity": "None", "ports": [{"port": 80}]})),
            ["FieldValueNotSupported spec.type"]
        );
        assert_eq!(
            causes(json!({"type": "ClusterIP", "sessionAffinity": "None"})),
            ["FieldValueRequired spec.ports"]
        );
        assert_eq!(
            causes(
                json!({"type": "ClusterIP", "sessionAffinity": "None", "ports": [
                {"port": 80, "nodePort": 30000}, {"name": "b", "port": 0, "protocol": "ICMP", "targetPort": "-x"}]})
            ),
            [
                "FieldValueRequired spec.ports[0].name",
                "FieldValueForbidden spec.ports[0].nodePort",
                "FieldValueInvalid spec.ports[1].port",
                "FieldValueNotSupported spec.ports[1].protocol",
                "FieldValueInvalid spec.ports[1].targetPort",
            ]
        );
        assert_eq!(
            causes(
                json!({"type": "NodePort", "sessionAffinity": "None", "externalTrafficPolicy": "Cluster", "ports": [
                {"name": "a", "port": 80, "nodePort": 30000}, {"name": "a", "port": 80, "nodePort": 30000}]})
            ),
            [
                "FieldValueDuplicate spec.ports[1].name",
                "FieldValueDuplicate spec.ports[1]",
                "FieldValueDuplicate spec.ports[1].nodePort",
            ]
        );
        assert_eq!(
            causes(
                json!({"type": "ClusterIP", "sessionAffinity": "None", "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 30001, "allocateLoadBalancerNodePorts": true, "ports": [{"port": 80}]})
            ),
            [
                "FieldValueInvalid spec.externalTrafficPolicy",
                "FieldValueInvalid spec.healthCheckNodePort",
                "FieldValueForbidden spec.allocateLoadBalancerNodePorts",
            ]
        );
        // externalIPs make a ClusterIP Service externally accessible.
        assert!(causes(
            json!({"type": "ClusterIP", "sessionAffinity": "None", "externalTrafficPolicy": "Local",
            "externalIPs": ["192.0.2.1"], "ports": [{"port": 80}]})
        )
        .is_empty());
        assert_eq!(
            causes(json!({"type": "ClusterIP", "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}, "ports": [{"port": 80}]})),
            ["FieldValueInvalid spec.sessionAffinityConfig.clientIP.timeoutSeconds"]
        );
        assert_eq!(
            causes(json!({"type": "ExternalName", "sessionAffinity": "None"})),
            ["FieldValueRequired spec.externalName"]
        );
        assert!(causes(json!({"type": "ExternalName", "sessionAffinity": "None", "externalName": "example.com."})).is_empty());
    }
}
