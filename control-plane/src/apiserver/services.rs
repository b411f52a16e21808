//! Service address allocation: ClusterIPs from the service CIDR and NodePorts from their
//! range, without duplicates even under concurrent creates. Each allocation is a
//! reservation key (`/registry/corten/serviceips/<ip>`, `/registry/corten/nodeports/<port>`)
//! written in the same transaction as the Service, and deleted in the same transaction that
//! deletes it, so a reservation exists exactly as long as its Service does (also across
//! restarts).
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::status::{ApiError, Cause};
use crate::store::{Compare, CompareOp, TxnOp};

/// The NodePort range (kube-apiserver's default).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The service network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl ServiceNetwork {
    /// Parses `a.b.c.d/n`.
    pub fn parse(cidr: &str) -> Option<Self> {
        let (base, prefix) = cidr.split_once('/')?;
        let base: Ipv4Addr = base.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 30)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Some(Self {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
        })
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

/// What a new Service needs reserved, after choosing addresses for it.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Compares that the reservations are free.
    pub compares: Vec<Compare>,
    /// Puts of the reservation keys.
    pub puts: Vec<TxnOp>,
}

fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid("", "Service", name, vec![Cause::invalid(field, message)])
}

/// Fills in `spec.clusterIP(s)` and NodePorts of a new Service and returns the reservations
/// to write with it. `attempt` varies the random choice between retries.
pub fn allocate(
    network: &ServiceNetwork,
    service: &mut Value,
    service_key: &str,
) -> Result<Reservations, ApiError> {
    let name = service
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut reservations = Reservations::default();
    let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(reservations);
    };
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if kind == "ExternalName" {
        return Ok(reservations);
    }
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ip = match requested.as_str() {
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
            Some(ip)
        }
    };
    match ip {
        Some(ip) => {
            let text = ip.to_string();
            spec.insert("clusterIP".into(), json!(text));
            spec.insert("clusterIPs".into(), json!([text]));
            reservations.compares.push(Compare::create_revision(
                ip_key(&text).into_bytes(),
                CompareOp::Equal,
                0,
            ));
            reservations.puts.push(TxnOp::put(
                ip_key(&text).into_bytes(),
                service_key.as_bytes().to_vec(),
            ));
        }
        None => {
            spec.insert("clusterIPs".into(), json!(["None"]));
        }
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                let node_port = match port.get("nodePort").and_then(Value::as_u64) {
                    Some(p) if NODE_PORTS.contains(&u16::try_from(p).unwrap_or(0)) => p,
                    Some(p) => return Err(invalid(&name, "spec.ports[].nodePort", format!("Invalid value: {p}: provided port is not in the valid range. The range of valid ports is 30000-32767"))),
                    None => {
                        let random = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) << 8 | u64::from(uuid::Uuid::new_v4().as_bytes()[1]);
                        u64::from(*NODE_PORTS.start()) + random % (u64::from(*NODE_PORTS.end() - *NODE_PORTS.start()) + 1)
                    }
                };
                port.insert("nodePort".into(), json!(node_port));
                reservations.compares.push(Compare::create_revision(
                    port_key(node_port).into_bytes(),
                    CompareOp::Equal,
                    0,
                ));
                reservations.puts.push(TxnOp::put(
                    port_key(node_port).into_bytes(),
                    service_key.as_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(reservations)
}

/// Deletes of the reservations a stored Service holds.
pub fn releases(service: &Value) -> Vec<TxnOp> {
    let mut ops = Vec::new();
    if let Some(ip) = service.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if ip != "None" && !ip.is_empty() {
            ops.push(TxnOp::delete(ip_key(ip).into_bytes()));
        }
    }
    if let Some(ports) = service.pointer("/spec/ports").and_then(Value::as_array) {
        for port in ports {
            if let Some(node_port) = port.get("nodePort").and_then(Value::as_u64) {
                ops.push(TxnOp::delete(port_key(node_port).into_bytes()));
            }
        }
    }
    ops
}

/// On update, the addresses already allocated stay (they are immutable).
pub fn keep_allocations(old: &Value, new: &mut Value) {
    for field in ["clusterIP", "clusterIPs"] {
        if let (Some(value), Some(spec)) = (
            old.pointer(&format!("/spec/{field}")).cloned(),
            new.get_mut("spec").and_then(Value::as_object_mut),
        ) {
            spec.insert(field.into(), value);
        }
    }
    let old_ports = old
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Array(ports)) = new.pointer_mut("/spec/ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            if port.get("nodePort").is_some() {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == port.get("port") && o.get("protocol") == port.get("protocol")
            });
            if let Some(node_port) = same.and_then(|o| o.get("nodePort")) {
                port.insert("nodePort".into(), node_port.clone());
            }
        }
    }
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

    #[test]
    fn allocation_reserves_ip_and_node_ports() -> Result<(), ApiError> {
        let Some(net) = ServiceNetwork::parse("10.43.0.0/16") else {
            panic!("a valid CIDR");
        };
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let r = allocate(&net, &mut svc, "/registry/services/specs/default/web")?;
        assert_eq!(r.puts.len(), 2);
        assert!(svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43.")));
        assert!(svc["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .is_some_and(|p| (30000..=32767).contains(&p)));
        assert_eq!(releases(&svc).len(), 2);
        let mut headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        assert!(allocate(&net, &mut headless, "k")?.puts.is_empty());
        let mut outside = json!({"metadata": {"name": "o"}, "spec": {"clusterIP": "192.168.0.1"}});
        assert!(allocate(&net, &mut outside, "k").is_err());
        Ok(())
    }
}
