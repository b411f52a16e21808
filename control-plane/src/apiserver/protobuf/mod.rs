//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`,
//! what kubectl 1.32+ and client-go send for typed writes), transcoded to the same JSON
//! value a JSON body of that object would give, so the rest of the server sees no
//! difference.
//!
//! [`envelope`] opens the `k8s\x00` + `runtime.Unknown` wrapper, [`schema`] is the table of
//! every message's fields (generated from `k8s-pb` and the Go types by `generator/`),
//! [`transcode`] walks the wire format ([`wire`]) by that table, and [`well_known`] writes
//! the types with JSON forms of their own (times, quantities, int-or-strings, embedded
//! JSON, ...). Owns decoding only: responses stay JSON, and custom resources, which have no
//! protobuf form, are refused by the caller before a body gets here.
pub mod envelope;
pub mod schema;
pub mod transcode;
pub mod well_known;
pub mod wire;

#[cfg(test)]
mod generator;
#[cfg(test)]
mod tests;

use serde_json::Value;

use super::status::ApiError;
use schema::{MessageId, Schema, SchemaError};
use transcode::{Transcoder, MAX_DEPTH, MAX_VALUES};

/// The media type of Kubernetes' protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Why a protobuf body could not be transcoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// No `k8s\x00` prefix, or nothing after it.
    #[error("{0}")]
    NotProtobuf(&'static str),
    /// The wire format is broken (cut off, wrong wire types, invalid values).
    #[error("{0}")]
    Malformed(String),
    /// Neither the body nor the endpoint names the kind.
    #[error("Object 'Kind' is missing in the protobuf body")]
    MissingKind,
    /// Neither the body nor the endpoint names the API version.
    #[error("Object 'apiVersion' is missing in the protobuf body")]
    MissingVersion,
    /// The kind has no protobuf message in that API version.
    #[error("no kind {kind:?} is registered for version {api_version:?}")]
    UnknownKind {
        /// The body's `apiVersion`.
        api_version: String,
        /// The body's `kind`.
        kind: String,
    },
    /// Messages nest deeper than [`MAX_DEPTH`].
    #[error("messages are nested more than {MAX_DEPTH} deep")]
    TooDeep,
    /// The body decodes to more than [`MAX_VALUES`] values.
    #[error("the body holds more than {MAX_VALUES} values")]
    TooManyValues,
    /// The embedded schema table is broken (a build problem, not the client's).
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl ProtobufError {
    /// A malformed-input error.
    pub fn malformed(message: impl Into<String>) -> Self {
        ProtobufError::Malformed(message.into())
    }
}

impl From<ProtobufError> for ApiError {
    fn from(err: ProtobufError) -> Self {
        match err {
            ProtobufError::Schema(e) => ApiError::internal(format!("protobuf schema: {e}")),
            other => ApiError::bad_request(format!(
                "the request body could not be decoded as protobuf: {other}"
            )),
        }
    }
}

/// The type a body is taken to be when its envelope does not say (as kube-apiserver
/// defaults it from the endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultType<'a> {
    /// `group/version`, or `v1` for the core group.
    pub api_version: &'a str,
    /// The kind.
    pub kind: &'a str,
}

/// The kinds meta/v1 registers into every group version.
const META_KINDS: &[&str] = &[
    "DeleteOptions",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
    "GetOptions",
    "ListOptions",
    "Status",
    "WatchEvent",
];

const META_PACKAGE: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// The protobuf package prefix of an API group (the version is appended).
fn package_prefix(group: &str) -> Option<&'static str> {
    Some(match group {
        "" => "k8s.io.api.core",
        "admission.k8s.io" => "k8s.io.api.admission",
        "admissionregistration.k8s.io" => "k8s.io.api.admissionregistration",
        "apidiscovery.k8s.io" => "k8s.io.api.apidiscovery",
        "apiextensions.k8s.io" => "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions",
        "apps" => "k8s.io.api.apps",
        "authentication.k8s.io" => "k8s.io.api.authentication",
        "authorization.k8s.io" => "k8s.io.api.authorization",
        "autoscaling" => "k8s.io.api.autoscaling",
        "batch" => "k8s.io.api.batch",
        "certificates.k8s.io" => "k8s.io.api.certificates",
        "coordination.k8s.io" => "k8s.io.api.coordination",
        "discovery.k8s.io" => "k8s.io.api.discovery",
        "events.k8s.io" => "k8s.io.api.events",
        "extensions" => "k8s.io.api.extensions",
        "flowcontrol.apiserver.k8s.io" => "k8s.io.api.flowcontrol",
        "imagepolicy.k8s.io" => "k8s.io.api.imagepolicy",
        "internal.apiserver.k8s.io" => "k8s.io.api.apiserverinternal",
        "meta.k8s.io" => "k8s.io.apimachinery.pkg.apis.meta",
        "networking.k8s.io" => "k8s.io.api.networking",
        "node.k8s.io" => "k8s.io.api.node",
        "policy" => "k8s.io.api.policy",
        "rbac.authorization.k8s.io" => "k8s.io.api.rbac",
        "resource.k8s.io" => "k8s.io.api.resource",
        "scheduling.k8s.io" => "k8s.io.api.scheduling",
        "storage.k8s.io" => "k8s.io.api.storage",
        "storagemigration.k8s.io" => "k8s.io.api.storagemigration",
        _ => return None,
    })
}

/// The message of `kind` in `api_version`.
fn message_of(schema: &Schema, api_version: &str, kind: &str) -> Option<MessageId> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let own = package_prefix(group)
        .filter(|_| !version.is_empty() && !version.contains('.'))
        .and_then(|prefix| schema.find_kind(&format!("{prefix}.{version}"), kind));
    own.or_else(|| {
        META_KINDS
            .contains(&kind)
            .then(|| schema.find_kind(META_PACKAGE, kind))
            .flatten()
    })
}

/// Transcodes a protobuf body to the JSON value of the object it holds, with `apiVersion`
/// and `kind` set from its envelope (or `default` where the envelope is silent).
pub fn decode(body: &[u8], default: Option<DefaultType<'_>>) -> Result<Value, ProtobufError> {
    let envelope = envelope::open(body)?;
    let mut kind = envelope.kind;
    let mut api_version = envelope.api_version;
    if let Some(default) = default {
        if kind.is_empty() {
            kind = default.kind.to_owned();
        }
        let version_missing = api_version
            .rsplit_once('/')
            .map_or(api_version.as_str(), |(_, v)| v)
            .is_empty();
        if version_missing {
            api_version = default.api_version.to_owned();
        }
    }
    if kind.is_empty() {
        return Err(ProtobufError::MissingKind);
    }
    if api_version.is_empty() {
        return Err(ProtobufError::MissingVersion);
    }
    let schema = Schema::get()?;
    let id = message_of(schema, &api_version, &kind).ok_or_else(|| ProtobufError::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let mut value = Transcoder::new(schema).message(id, &[envelope.raw], 0)?;
    if let Value::Object(object) = &mut value {
        object.insert("apiVersion".into(), Value::String(api_version));
        object.insert("kind".into(), Value::String(kind));
    }
    Ok(value)
}
