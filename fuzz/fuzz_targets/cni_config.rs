//! Fuzz target: the network configuration a runtime streams to `corten-cni` on stdin. The
//! bytes are parsed as a configuration (`NetworkConfig::parse`), probed for the VERSION
//! command's `cniVersion`, and, as text, parsed as a subnet; an accepted configuration's
//! `prevResult` is read as a CNI result as CHECK does.
//!
//! Properties: nothing panics or hangs, and whatever is accepted is usable: a supported
//! version, an MTU in range, a subnet with room for a pod, an absolute data dir and a
//! network directory right under it (the name cannot climb out), valid attachments for GC;
//! a parsed subnet prints back to itself. Touches no file, link or network.
#![no_main]

use corten_cni::{
    attachment::{check_container_id, check_ifname},
    config::{requested_version, NetworkConfig, MAX_MTU, MIN_MTU},
    result::AddResult,
    subnet::Ipv4Subnet,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = requested_version(data);
    if let Ok(config) = NetworkConfig::parse(data) {
        assert!((MIN_MTU..=MAX_MTU).contains(&config.mtu), "{config:?}");
        assert!(config.subnet.pod_capacity() >= 1, "{config:?}");
        assert!(config.data_dir.is_absolute(), "{config:?}");
        assert_eq!(
            config.network_dir().parent(),
            Some(config.data_dir.as_path()),
            "{config:?}"
        );
        assert!(check_container_id(&config.name).is_ok(), "{config:?}");
        for attachment in config.valid_attachments.iter().flatten() {
            assert!(check_container_id(&attachment.container_id).is_ok());
            assert!(check_ifname(&attachment.ifname).is_ok());
        }
        if let Some(prev) = config.prev_result {
            let _ = serde_json::from_value::<AddResult>(prev);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(subnet) = text.parse::<Ipv4Subnet>() {
            assert_eq!(subnet.to_string().parse::<Ipv4Subnet>(), Ok(subnet));
            assert!(subnet.is_pod_address(std::net::Ipv4Addr::from(subnet.pod_range().0)));
        }
    }
});
