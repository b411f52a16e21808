//! The network configuration the runtime streams on stdin: parsing and validation.
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "corten", "type": "corten-cni", "mtu": 1450,
//!  "subnet": "10.42.0.0/24", "dataDir": "/var/lib/corten/cni"}
//! ```
//!
//! `cniVersion`, `name`, `type` and `subnet` are required; `mtu` defaults to 1500 and
//! `dataDir` to `/var/lib/corten/cni`. The runtime may add `prevResult` (CHECK, DEL) and
//! `cni.dev/valid-attachments` (GC); every other field is ignored. A missing or invalid field
//! is a [`ConfigError`] that names it.
//!
//! Owns the reading of untrusted input (it has a fuzz target, `fuzz/fuzz_targets/
//! cni_config.rs`); it must not act on the configuration.
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{
    attachment::{check_container_id, check_ifname, Attachment},
    subnet::Ipv4Subnet,
};

/// Spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The newest spec version this plugin speaks.
pub const LATEST_VERSION: &str = "1.1.0";
/// MTU when the configuration names none.
pub const DEFAULT_MTU: u32 = 1500;
/// Smallest MTU IPv4 allows.
pub const MIN_MTU: u32 = 68;
/// Largest MTU a veth accepts.
pub const MAX_MTU: u32 = 65535;
/// Where allocations live when the configuration names no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/corten/cni";
/// Longest network name accepted (it becomes a directory name).
pub const MAX_NAME_LEN: usize = 128;
/// The GC field of spec 1.1, and the name libcni also sends because of an early typo.
const VALID_ATTACHMENTS_KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];

/// A spec version this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 1.0.0: ADD, DEL, CHECK, VERSION.
    V1_0_0,
    /// 1.1.0: adds STATUS, GC and interface/route fields such as `mtu`.
    V1_1_0,
}

impl CniVersion {
    /// A supported version from its string.
    pub fn parse(version: &str) -> Option<Self> {
        match version {
            "1.0.0" => Some(Self::V1_0_0),
            "1.1.0" => Some(Self::V1_1_0),
            _ => None,
        }
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// stdin is not JSON.
    #[error("the network configuration is not valid JSON: {0}")]
    Decode(String),
    /// stdin is JSON but not an object.
    #[error("the network configuration must be a JSON object")]
    NotAnObject,
    /// `cniVersion` names a version this plugin does not speak.
    #[error("cniVersion {version:?} is not supported; corten-cni speaks {}", SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion {
        /// The requested version.
        version: String,
    },
    /// A required field is absent.
    #[error("the network configuration has no {field:?}")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A field has a value the plugin cannot use.
    #[error("the network configuration's {field:?} is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The spec version in use; results and errors carry it.
    pub cni_version: CniVersion,
    /// The network's name; allocations live under `data_dir/name`.
    pub name: String,
    /// The plugin type (normally `corten-cni`).
    pub plugin_type: String,
    /// MTU of both ends of the pod's veth.
    pub mtu: u32,
    /// The node's pod subnet.
    pub subnet: Ipv4Subnet,
    /// Root of the plugin's persistent state.
    pub data_dir: PathBuf,
    /// The result of the previous ADD (CHECK, DEL), unparsed.
    pub prev_result: Option<Value>,
    /// The attachments the runtime still knows (GC only).
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetworkConfig {
    /// Parses and validates a configuration.
    pub fn parse(input: &[u8]) -> Result<Self, ConfigError> {
        let object = parse_object(input)?;
        let cni_version = version_field(&object)?;
        let name = required_str(&object, "name")?;
        check_network_name(name)?;
        let plugin_type = required_str(&object, "type")?;
        let subnet = required_str(&object, "subnet")?
            .parse::<Ipv4Subnet>()
            .map_err(|err| invalid("subnet", err.to_string()))?;
        Ok(Self {
            cni_version,
            name: name.to_owned(),
            plugin_type: plugin_type.to_owned(),
            mtu: mtu_field(&object)?,
            subnet,
            data_dir: data_dir_field(&object)?,
            prev_result: prev_result_field(&object)?,
            valid_attachments: valid_attachments_field(&object)?,
        })
    }

    /// The directory that holds this network's allocations.
    pub fn network_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

/// The `cniVersion` a VERSION request asked about, when stdin names one; VERSION accepts
/// any input, so nothing here is an error.
pub fn requested_version(input: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(input).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_owned)
}

/// The supported `cniVersion` of a configuration that may be invalid otherwise, so an
/// error can be reported in the version the runtime expects.
pub fn supported_version_of(input: &[u8]) -> Option<CniVersion> {
    requested_version(input).and_then(|v| CniVersion::parse(&v))
}

fn parse_object(input: &[u8]) -> Result<Map<String, Value>, ConfigError> {
    match serde_json::from_slice::<Value>(input) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ConfigError::NotAnObject),
        Err(err) => Err(ConfigError::Decode(err.to_string())),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A field that is absent or `null` is missing.
fn field<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|v| !v.is_null())
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, ConfigError> {
    match field(object, name) {
        None => Err(ConfigError::Missing { field: name }),
        Some(Value::String(s)) if s.is_empty() => Err(invalid(name, "must not be empty")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

fn version_field(object: &Map<String, Value>) -> Result<CniVersion, ConfigError> {
    let version = required_str(object, "cniVersion")?;
    CniVersion::parse(version).ok_or_else(|| ConfigError::IncompatibleVersion {
        version: version.to_owned(),
    })
}

/// The spec's rule for network names: a letter or digit, then letters, digits, `_`, `.`
/// or `-`. It also keeps the name a single, harmless directory name.
fn check_network_name(name: &str) -> Result<(), ConfigError> {
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    check_container_id(name).map_err(|reason| invalid("name", reason))
}

fn mtu_field(object: &Map<String, Value>) -> Result<u32, ConfigError> {
    let Some(value) = field(object, "mtu") else {
        return Ok(DEFAULT_MTU);
    };
    let mtu = value
        .as_u64()
        .ok_or_else(|| invalid("mtu", "must be a whole number"))?;
    u32::try_from(mtu)
        .ok()
        .filter(|mtu| (MIN_MTU..=MAX_MTU).contains(mtu))
        .ok_or_else(|| invalid("mtu", format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}")))
}

fn data_dir_field(object: &Map<String, Value>) -> Result<PathBuf, ConfigError> {
    let Some(value) = field(object, "dataDir") else {
        return Ok(PathBuf::from(DEFAULT_DATA_DIR));
    };
    let dir = value
        .as_str()
        .ok_or_else(|| invalid("dataDir", "must be a string"))?;
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(invalid(
            "dataDir",
            format!("{dir:?} is not an absolute path"),
        ));
    }
    if dir.contains('\0') {
        return Err(invalid("dataDir", "contains a NUL byte"));
    }
    Ok(path.to_path_buf())
}

fn prev_result_field(object: &Map<String, Value>) -> Result<Option<Value>, ConfigError> {
    match field(object, "prevResult") {
        None => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value.clone())),
        Some(_) => Err(invalid("prevResult", "must be an object")),
    }
}

fn valid_attachments_field(
    object: &Map<String, Value>,
) -> Result<Option<Vec<Attachment>>, ConfigError> {
    let Some((key, value)) = VALID_ATTACHMENTS_KEYS
        .iter()
        .find_map(|key| field(object, key).map(|value| (*key, value)))
    else {
        return Ok(None);
    };
    let field_name = VALID_ATTACHMENTS_KEYS[0];
    let items = value
        .as_array()
        .ok_or_else(|| invalid(field_name, format!("{key} must be an array")))?;
    let mut attachments = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = |name: &str| item.get(name).and_then(Value::as_str);
        let (Some(id), Some(ifname)) = (text("containerID"), text("ifname")) else {
            return Err(invalid(
                field_name,
                format!("item {i} needs string fields containerID and ifname"),
            ));
        };
        check_container_id(id)
            .map_err(|reason| invalid(field_name, format!("item {i}: containerID {reason}")))?;
        check_ifname(ifname)
            .map_err(|reason| invalid(field_name, format!("item {i}: ifname {reason}")))?;
        attachments.push(Attachment::new(id, ifname));
    }
    Ok(Some(attachments))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(value.to_string().as_bytes())
    }

    fn minimal() -> Value {
        json!({"cniVersion": "1.0.0", "name": "corten", "type": "corten-cni",
               "subnet": "10.42.0.0/24"})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut config = minimal();
        config[field] = value;
        config
    }

    fn without(field: &str) -> Value {
        let mut config = minimal();
        config.as_object_mut().map(|o| o.remove(field));
        config
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(minimal()).expect("valid");
        assert_eq!(config.cni_version, CniVersion::V1_0_0);
        assert_eq!(config.name, "corten");
        assert_eq!(config.plugin_type, "corten-cni");
        assert_eq!(config.mtu, DEFAULT_MTU);
        assert_eq!(config.subnet.network(), Ipv4Addr::new(10, 42, 0, 0));
        assert_eq!(config.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert_eq!(
            config.network_dir(),
            Path::new("/var/lib/corten/cni/corten")
        );
        assert!(config.prev_result.is_none());
        assert!(config.valid_attachments.is_none());
    }

    #[test]
    fn full_config_and_unknown_fields() {
        let config = parse(json!({
            "cniVersion": "1.1.0", "name": "pods", "type": "corten-cni", "mtu": 1450,
            "subnet": "10.42.7.0/24", "dataDir": "/tmp/x", "someOtherField": {"a": 1},
            "prevResult": {"interfaces": []},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        }))
        .expect("valid");
        assert_eq!(config.cni_version, CniVersion::V1_1_0);
        assert_eq!(config.mtu, 1450);
        assert_eq!(config.data_dir, Path::new("/tmp/x"));
        assert_eq!(config.prev_result, Some(json!({"interfaces": []})));
        assert_eq!(
            config.valid_attachments,
            Some(vec![Attachment::new("c1", "eth0")])
        );
    }

    #[test]
    fn the_old_attachments_key_is_accepted() {
        let config = parse(with("cni.dev/attachments", json!([]))).expect("valid");
        assert_eq!(config.valid_attachments, Some(vec![]));
    }

    #[test]
    fn missing_fields_are_named() {
        for field in ["cniVersion", "name", "type", "subnet"] {
            assert_eq!(
                parse(without(field)),
                Err(ConfigError::Missing { field }),
                "{field}"
            );
            assert_eq!(
                parse(with(field, Value::Null)),
                Err(ConfigError::Missing { field }),
                "{field}"
            );
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            ("name", json!("")),
            ("name", json!("../etc")),
            ("name", json!("a/b")),
            ("name", json!(7)),
            ("type", json!(["corten-cni"])),
            ("subnet", json!("10.42.0.0")),
            ("subnet", json!("10.42.0.1/24")),
            ("subnet", json!("10.42.0.0/31")),
            ("mtu", json!(67)),
            ("mtu", json!(65536)),
            ("mtu", json!(-1)),
            ("mtu", json!(1500.5)),
            ("mtu", json!("1500")),
            ("dataDir", json!("relative/dir")),
            ("dataDir", json!(1)),
            ("prevResult", json!("x")),
            ("cni.dev/valid-attachments", json!({})),
            ("cni.dev/valid-attachments", json!([{"containerID": "c"}])),
            (
                "cni.dev/valid-attachments",
                json!([{"containerID": "-c", "ifname": "eth0"}]),
            ),
            (
                "cni.dev/valid-attachments",
                json!([{"containerID": "c", "ifname": "a b"}]),
            ),
        ];
        for (field, value) in cases {
            let err = parse(with(field, value.clone())).expect_err("invalid");
            let named = match &err {
                ConfigError::Invalid { field, .. } => *field,
                other => panic!("{field}={value}: {other:?}"),
            };
            assert_eq!(named, field, "{value}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn unsupported_versions_are_incompatible() {
        for version in ["0.4.0", "1.2.0", "2.0.0", "1.0"] {
            assert_eq!(
                parse(with("cniVersion", json!(version))),
                Err(ConfigError::IncompatibleVersion {
                    version: version.to_owned()
                })
            );
        }
    }

    #[test]
    fn not_json_or_not_an_object_is_a_decoding_error() {
        assert!(matches!(
            NetworkConfig::parse(b"{not json"),
            Err(ConfigError::Decode(_))
        ));
        assert!(matches!(
            NetworkConfig::parse(b""),
            Err(ConfigError::Decode(_))
        ));
        assert_eq!(
            NetworkConfig::parse(b"[1, 2]"),
            Err(ConfigError::NotAnObject)
        );
    }

    #[test]
    fn version_probe_reads_what_it_can() {
        assert_eq!(
            requested_version(br#"{"cniVersion":"0.3.1"}"#).as_deref(),
            Some("0.3.1")
        );
        assert_eq!(requested_version(b""), None);
        assert_eq!(
            supported_version_of(br#"{"cniVersion":"1.1.0","name":5}"#),
            Some(CniVersion::V1_1_0)
        );
        assert_eq!(supported_version_of(br#"{"cniVersion":"9.9.9"}"#), None);
    }
}
