//! The success documents of the spec: the ADD result (also read back as CHECK's
//! `prevResult`) and the VERSION answer.
//!
//! Owns their JSON shape for spec 1.0.0 and 1.1.0 (1.1.0 adds the interface `mtu`). It must
//! not decide what goes in them: the commands fill them in.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::{CniVersion, SUPPORTED_VERSIONS};

/// The ADD result: interfaces, their addresses and the routes the pod got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    /// The spec version of the configuration.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Host end first, then the pod's interface (with `sandbox`).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The pod's addresses; `interface` indexes `interfaces`.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes inside the pod.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// An interface the plugin created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its MTU (spec 1.1.0 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The network namespace it lives in; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `ADDRESS/PREFIX`.
    pub address: String,
    /// The next hop the pod's default route uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into [`AddResult::interfaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `NETWORK/PREFIX`.
    pub dst: String,
    /// Next hop; absent for a directly connected destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// What ADD set up, as the result describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork<'a> {
    /// The host end of the veth.
    pub host_link: &'a str,
    /// Its hardware address.
    pub host_mac: [u8; 6],
    /// The pod's interface name (`CNI_IFNAME`).
    pub pod_link: &'a str,
    /// Its hardware address.
    pub pod_mac: [u8; 6],
    /// `CNI_NETNS`.
    pub sandbox: &'a str,
    /// The pod's address (a /32 on its interface).
    pub address: Ipv4Addr,
    /// The link-local next hop of the pod's default route.
    pub gateway: Ipv4Addr,
    /// MTU of both ends.
    pub mtu: u32,
}

impl AddResult {
    /// The result for a pod network set up by ADD, in the configuration's spec version.
    pub fn for_pod(version: CniVersion, pod: &PodNetwork<'_>) -> Self {
        let mtu = (version >= CniVersion::V1_1_0).then_some(pod.mtu);
        Self {
            cni_version: version.as_str().to_owned(),
            interfaces: vec![
                Interface {
                    name: pod.host_link.to_owned(),
                    mac: Some(format_mac(&pod.host_mac)),
                    mtu,
                    sandbox: None,
                },
                Interface {
                    name: pod.pod_link.to_owned(),
                    mac: Some(format_mac(&pod.pod_mac)),
                    mtu,
                    sandbox: Some(pod.sandbox.to_owned()),
                },
            ],
            ips: vec![IpConfig {
                address: format!("{}/32", pod.address),
                gateway: Some(pod.gateway.to_string()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".to_owned(),
                gw: Some(pod.gateway.to_string()),
            }],
        }
    }
}

/// The VERSION answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionResult {
    /// The version of this document.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version the plugin speaks.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// The answer, written in `version`.
    pub fn new(version: &str) -> Self {
        Self {
            cni_version: version.to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses an IPv4 `ADDRESS/PREFIX` (host bits allowed, as in result addresses).
pub fn parse_ipv4_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((address.parse().ok()?, prefix))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> PodNetwork<'static> {
        PodNetwork {
            host_link: "ctn0123456789a",
            host_mac: [0xee; 6],
            pod_link: "eth0",
            pod_mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x02],
            sandbox: "/run/netns/pod",
            address: Ipv4Addr::new(10, 42, 0, 5),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            mtu: 1450,
        }
    }

    #[test]
    fn add_result_has_the_spec_1_0_shape() {
        let result = AddResult::for_pod(CniVersion::V1_0_0, &pod());
        let json = serde_json::to_value(&result).expect("serializes");
        assert_eq!(
            json,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "ctn0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                    {"name": "eth0", "mac": "02:42:ac:11:00:02", "sandbox": "/run/netns/pod"}
                ],
                "ips": [{"address": "10.42.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
            })
        );
    }

    #[test]
    fn spec_1_1_adds_interface_mtu() {
        let json = serde_json::to_value(AddResult::for_pod(CniVersion::V1_1_0, &pod()))
            .expect("serializes");
        assert_eq!(json["cniVersion"], "1.1.0");
        assert_eq!(json["interfaces"][0]["mtu"], 1450);
        assert_eq!(json["interfaces"][1]["mtu"], 1450);
    }

    #[test]
    fn result_reads_back_as_prev_result() {
        let result = AddResult::for_pod(CniVersion::V1_1_0, &pod());
        let text = serde_json::to_string(&result).expect("serializes");
        let back: AddResult = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, result);
        // Other plugins' results carry fields we do not know, and may omit lists.
        let foreign: AddResult =
            serde_json::from_value(json!({"cniVersion": "1.0.0", "dns": {}, "extra": 1}))
                .expect("lenient");
        assert!(foreign.interfaces.is_empty() && foreign.ips.is_empty());
    }

    #[test]
    fn version_result_lists_both_versions() {
        let json = serde_json::to_value(VersionResult::new("1.0.0")).expect("serializes");
        assert_eq!(
            json,
            json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn macs_and_cidrs_round_trip() {
        let mac = [0x02, 0xab, 0, 1, 0xff, 9];
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("EE:EE:EE:EE:EE:EE"), Some([0xee; 6]));
        for bad in [
            "",
            "ee:ee",
            "ee:ee:ee:ee:ee:ee:ee",
            "e:ee:ee:ee:ee:eee",
            "gg:ee:ee:ee:ee:ee",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            parse_ipv4_cidr("10.42.0.5/32"),
            Some((Ipv4Addr::new(10, 42, 0, 5), 32))
        );
        assert_eq!(parse_ipv4_cidr("10.42.0.5/33"), None);
        assert_eq!(parse_ipv4_cidr("fd00::1/64"), None);
    }
}
