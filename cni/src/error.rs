//! The CNI error object: the code, message and details a failed invocation prints on
//! stdout (CNI spec 1.x, "Error"), and the well-known codes.
//!
//! Owns the mapping from each module's typed error to a CNI code. It must not decide what
//! failed: the modules say that with their own error types, this file only translates.
use serde::Serialize;

use crate::{
    config::ConfigError, env::EnvError, ipam::IpamError, netlink::NetlinkError, plan::PlanError,
};

/// CNI error codes: 1–99 are the spec's well-known codes, 100 and up are corten's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration asks for a CNI version this plugin does not speak.
    IncompatibleVersion,
    /// 2: the configuration carries a field this plugin cannot honour.
    UnsupportedField,
    /// 3: the container (its network namespace) is unknown or gone; nothing to clean up.
    UnknownContainer,
    /// 4: a required `CNI_*` environment variable is missing or malformed.
    InvalidEnvironment,
    /// 5: reading input or the plugin's own state failed.
    IoFailure,
    /// 6: stdin is not a JSON object.
    DecodingFailure,
    /// 7: the network configuration is invalid.
    InvalidConfig,
    /// 11: a transient condition; the runtime should retry later.
    TryAgainLater,
    /// 50: the plugin cannot serve `ADD` now (STATUS).
    PluginNotAvailable,
    /// 51: the plugin cannot serve `ADD`, and existing pods may have limited connectivity.
    LimitedConnectivity,
    /// 100: every address of the node's pod subnet is allocated.
    AddressesExhausted,
    /// 101: configuring links, addresses or routes through netlink failed.
    DataplaneFailure,
    /// 102: CHECK found the pod's network different from what ADD set up.
    CheckFailed,
}

impl ErrorCode {
    /// The number printed in the error object.
    pub fn number(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::IoFailure => 5,
            Self::DecodingFailure => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::PluginNotAvailable => 50,
            Self::LimitedConnectivity => 51,
            Self::AddressesExhausted => 100,
            Self::DataplaneFailure => 101,
            Self::CheckFailed => 102,
        }
    }
}

/// A failed invocation, as the runtime will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}", code.number())]
pub struct CniError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A short message.
    pub msg: String,
    /// The longer explanation, when there is one.
    pub details: Option<String>,
}

impl CniError {
    /// An error with a message and no details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// The same error with details added.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The error object printed on stdout, stamped with `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a str>,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code.number(),
            msg: &self.msg,
            details: self.details.as_deref(),
        })
        .unwrap_or_else(
            |_| serde_json::json!({ "cniVersion": cni_version, "code": self.code.number() }),
        )
    }
}

impl From<EnvError> for CniError {
    fn from(err: EnvError) -> Self {
        Self::new(ErrorCode::InvalidEnvironment, err.to_string())
    }
}

impl From<ConfigError> for CniError {
    fn from(err: ConfigError) -> Self {
        let code = match &err {
            ConfigError::Decode(_) | ConfigError::NotAnObject => ErrorCode::DecodingFailure,
            ConfigError::IncompatibleVersion { .. } => ErrorCode::IncompatibleVersion,
            ConfigError::Missing { .. } | ConfigError::Invalid { .. } => ErrorCode::InvalidConfig,
        };
        Self::new(code, err.to_string())
    }
}

impl From<IpamError> for CniError {
    fn from(err: IpamError) -> Self {
        let code = match &err {
            IpamError::Exhausted { .. } => ErrorCode::AddressesExhausted,
            IpamError::Io { .. } => ErrorCode::IoFailure,
        };
        Self::new(code, err.to_string())
    }
}

impl From<NetlinkError> for CniError {
    fn from(err: NetlinkError) -> Self {
        let code = match &err {
            NetlinkError::NetnsMissing { .. } => ErrorCode::UnknownContainer,
            _ => ErrorCode::DataplaneFailure,
        };
        Self::new(code, err.to_string())
    }
}

impl From<PlanError> for CniError {
    fn from(err: PlanError) -> Self {
        let code = match &err.source {
            NetlinkError::NetnsMissing { .. } => ErrorCode::UnknownContainer,
            _ => ErrorCode::DataplaneFailure,
        };
        Self::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_spec_fields() {
        let err = CniError::new(ErrorCode::InvalidConfig, "subnet is missing").with_details("x");
        let json = err.to_json("1.0.0");
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "1.0.0", "code": 7, "msg": "subnet is missing", "details": "x"
            })
        );
    }

    #[test]
    fn details_are_omitted_when_absent() {
        let json = CniError::new(ErrorCode::TryAgainLater, "busy").to_json("1.1.0");
        assert!(json.get("details").is_none(), "{json}");
        assert_eq!(json["code"], 11);
    }

    #[test]
    fn well_known_codes_match_the_spec() {
        let codes = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironment, 4),
            (ErrorCode::IoFailure, 5),
            (ErrorCode::DecodingFailure, 6),
            (ErrorCode::InvalidConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::PluginNotAvailable, 50),
            (ErrorCode::LimitedConnectivity, 51),
        ];
        for (code, number) in codes {
            assert_eq!(code.number(), number, "{code:?}");
        }
        assert!(ErrorCode::AddressesExhausted.number() >= 100);
    }
}
