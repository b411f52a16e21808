//! API errors and the `Status` objects that carry them (Kubernetes API conventions): every
//! failure a client sees is a `meta/v1 Status` with the HTTP code, a machine-readable
//! `reason` and, for validation errors, `details.causes`.
//!
//! Owns the mapping from failures to codes and reasons; handlers return [`ApiError`] and
//! never write error bodies themselves.
use serde_json::{json, Value};

use crate::store::StoreError;

/// One field-level cause of an `Invalid` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: String,
    /// What is wrong.
    pub message: String,
    /// The field path, e.g. `metadata.name`.
    pub field: String,
}

impl Cause {
    /// A cause for an invalid value.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid".to_owned(),
            message: message.into(),
            field: field.to_owned(),
        }
    }

    /// A cause for a missing value.
    pub fn required(field: &str) -> Self {
        Self {
            reason: "FieldValueRequired".to_owned(),
            message: "Required value".to_owned(),
            field: field.to_owned(),
        }
    }

    /// A cause for a value that is not allowed here at all.
    pub fn forbidden(field: &str, why: &str) -> Self {
        Self {
            reason: "FieldValueForbidden".to_owned(),
            message: format!("Forbidden: {why}"),
            field: field.to_owned(),
        }
    }

    /// A cause for a value outside a closed set.
    pub fn not_supported(field: &str, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported".to_owned(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
            field: field.to_owned(),
        }
    }

    /// A cause for a value that must be unique and is not.
    pub fn duplicate(field: &str, value: &str) -> Self {
        Self {
            reason: "FieldValueDuplicate".to_owned(),
            message: format!("Duplicate value: {value}"),
            field: field.to_owned(),
        }
    }
}

/// A failure to report to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `StatusReason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details`, boxed to keep the error small on the happy path.
    pub details: Box<Details>,
}

/// The `details` of a `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind` (the resource, as kube-apiserver reports it).
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    /// Attaches the object's identity to `details`.
    pub fn on(mut self, group: &str, resource: &str, name: &str) -> Self {
        self.details.group = Some(group.to_owned());
        self.details.kind = Some(resource.to_owned());
        self.details.name = Some(name.to_owned());
        self
    }

    /// 400: a request the server cannot understand.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401: no identity.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 404 for an object.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let what = qualified(group, resource);
        Self::new(404, "NotFound", format!("{what} \"{name}\" not found")).on(group, resource, name)
    }

    /// 404 for a path that names nothing.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 405.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 409 on create of an existing object.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let what = qualified(group, resource);
        Self::new(
            409,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .on(group, resource, name)
    }

    /// 409 on a stale resourceVersion.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let what = qualified(group, resource);
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"),
        )
        .on(group, resource, name)
    }

    /// 409 with a message of its own (server-side apply conflicts).
    pub fn conflict_plain(message: impl Into<String>) -> Self {
        Self::new(409, "Conflict", message)
    }

    /// 410: the resourceVersion asked for was compacted.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415, naming the media types the endpoint accepts.
    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}; got {content_type:?}",
                accepted.join(", ")
            ),
        )
    }

    /// 422 with field causes.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", summary.join(", ")),
        )
        .on(group, kind, name);
        err.details.causes = causes;
        err
    }

    /// 403 for a namespace that is being deleted or does not exist.
    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let what = qualified(group, resource);
        Self::new(
            403,
            "Forbidden",
            format!("{what} \"{name}\" is forbidden: {why}"),
        )
        .on(group, resource, name)
    }

    /// 429 (an eviction a disruption budget does not allow, for now).
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        let mut err = Self::new(429, "TooManyRequests", message);
        err.details.retry_after = Some(10);
        err
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// 503 with a retry hint.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut err = Self::new(503, "ServiceUnavailable", message);
        err.details.retry_after = Some(1);
        err
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut details = serde_json::Map::new();
        let d = &self.details;
        if let Some(name) = &d.name {
            details.insert("name".into(), json!(name));
        }
        if let Some(group) = &d.group {
            details.insert("group".into(), json!(group));
        }
        if let Some(kind) = &d.kind {
            details.insert("kind".into(), json!(kind));
        }
        if !d.causes.is_empty() {
            let causes: Vec<Value> = d
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), json!(causes));
        }
        if let Some(secs) = d.retry_after {
            details.insert("retryAfterSeconds".into(), json!(secs));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Compacted { .. } => ApiError::expired(format!(
                "The resourceVersion for the provided list is too old: {err}"
            )),
            StoreError::FutureRevision { .. } => {
                let mut e =
                    ApiError::new(504, "Timeout", format!("Too large resource version: {err}"));
                e.details.retry_after = Some(1);
                e
            }
            StoreError::TooLarge { limit, .. } => ApiError::too_large(limit),
            StoreError::Unavailable(_) => ApiError::unavailable(err.to_string()),
            StoreError::InvalidRequest(_) => ApiError::bad_request(err.to_string()),
            StoreError::LeaseNotFound(_) | StoreError::DataDir { .. } | StoreError::Io(_) => {
                ApiError::internal(err.to_string())
            }
        }
    }
}

/// A successful `Status` (e.g. for deletes).
pub fn success(group: &str, resource: &str, name: &str, uid: Option<&str>) -> Value {
    let mut details = json!({"name": name, "kind": resource});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_has_kube_wording_and_details() {
        let status = ApiError::not_found("apps", "deployments", "web").status();
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(status["details"]["name"], "web");
    }

    #[test]
    fn invalid_lists_causes() {
        let err = ApiError::invalid(
            "",
            "ConfigMap",
            "Bad_Name",
            vec![Cause::invalid(
                "metadata.name",
                "a lowercase RFC 1123 subdomain must consist of ...",
            )],
        );
        let status = err.status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
    }
}
