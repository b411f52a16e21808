//! VERSION: the spec versions this plugin speaks. Any input is accepted; the answer is
//! written in the version the caller asked about when the plugin speaks it, else in the
//! newest one.
use serde_json::Value;

use crate::{
    config::{requested_version, CniVersion, LATEST_VERSION},
    result::VersionResult,
};

pub(super) fn run(stdin: &[u8]) -> Value {
    let version = requested_version(stdin)
        .and_then(|v| CniVersion::parse(&v))
        .map_or(LATEST_VERSION, CniVersion::as_str);
    serde_json::to_value(VersionResult::new(version)).unwrap_or_else(|_| {
        serde_json::json!({ "cniVersion": version, "supportedVersions": crate::config::SUPPORTED_VERSIONS })
    })
}
