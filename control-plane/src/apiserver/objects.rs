//! Object metadata as the API server maintains it: names (DNS-1123 rules, generateName),
//! uid, creationTimestamp, generation, resourceVersion (always the store revision, never
//! stored in the value), and the label and field selectors lists filter by.
//!
//! Works on JSON values so one code path serves every resource; typed checks are in
//! [`super::resources`].
use serde_json::{json, Map, Value};

use super::{
    resources::ResourceDef,
    status::{ApiError, Cause},
};

/// Characters kube-apiserver uses for generateName suffixes (no vowels, no confusables).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `metadata.name` of an object, if any.
pub fn name(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/name").and_then(Value::as_str)
}

/// `metadata.namespace` of an object, if any.
pub fn namespace(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// `metadata` as a mutable map (created if absent or not an object).
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(map)) => map,
        // Just made sure it is an object.
        _ => unreachable!("metadata is an object"),
    }
}

/// Errors with a DNS-1123 subdomain name (253 chars of `[a-z0-9.-]`, alphanumeric ends).
pub fn check_subdomain(value: &str) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    (!ok).then(|| {
        format!(
            "Invalid value: {value:?}: a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
             character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
    })
}

/// Errors with a DNS-1123 label name (63 chars of `[a-z0-9-]`, alphanumeric ends).
pub fn check_label(value: &str) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    (!ok).then(|| {
        format!(
            "Invalid value: {value:?}: a lowercase RFC 1123 label must consist of lower case \
             alphanumeric characters or '-', and must start and end with an alphanumeric \
             character (e.g. 'my-name',  or '123-abc', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        )
    })
}

/// The current time as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn random_suffix() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes
        .iter()
        .take(5)
        .map(|b| char::from(NAME_ALPHABET[usize::from(*b) % NAME_ALPHABET.len()]))
        .collect()
}

/// Checks that `apiVersion` and `kind`, when given, are the resource's.
pub fn check_type(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if let Some(kind) = kind {
        if kind != def.kind {
            return Err(ApiError::bad_request(format!(
                "the object provided is unrecognized (expected kind {}, got {kind:?})",
                def.kind
            )));
        }
    }
    if let Some(api_version) = api_version {
        if api_version != def.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
    }
    Ok(())
}

/// Validates metadata and the object's form (typed, or a CRD's schema, which may prune
/// unknown fields); 422 with causes when something is wrong.
pub fn validate(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let name = name(obj).unwrap_or_default().to_owned();
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else {
        let problem = if def.label_names {
            check_label(&name)
        } else {
            check_subdomain(&name)
        };
        if let Some(message) = problem {
            causes.push(Cause::invalid("metadata.name", message));
        }
    }
    if let Err(found) = def.check(obj) {
        causes.extend(found);
    }
    if def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition" {
        causes.extend(super::crds::check_definition(obj));
    }
    causes.extend(kind_checks(def, obj));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(def.group, def.kind, &name, causes))
    }
}

/// Checks of built-in kinds that their typed form cannot express (required fields that are
/// optional in the Go types, selector and template agreement).
fn kind_checks(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let pod_spec = match (def.group, def.kind) {
        ("", "Pod") => obj.get("spec").map(|s| ("spec", s)),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            obj.pointer("/spec/template/spec")
                .map(|s| ("spec.template.spec", s))
        }
        _ => None,
    };
    if def.kind == "Pod" && pod_spec.is_none() {
        causes.push(Cause::required("spec"));
    }
    if let Some((path, spec)) = pod_spec {
        let containers = spec
            .get("containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if containers.is_empty() {
            causes.push(Cause::required(&format!("{path}.containers")));
        }
        for (i, container) in containers.iter().enumerate() {
            for field in ["name", "image"] {
                if container
                    .get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(Cause::required(&format!("{path}.containers[{i}].{field}")));
                }
            }
        }
    }
    match (def.group, def.kind) {
        ("", "Service") => causes.extend(super::services::checks(obj)),
        ("batch", "Job") => {
            if let Some(spec) = obj.get("spec") {
                causes.extend(job_spec_checks("spec", spec));
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj.pointer("/spec/jobTemplate/spec") {
                causes.extend(job_spec_checks("spec.jobTemplate.spec", spec));
            }
        }
        ("apps", "Deployment") => {
            if let Some(strategy) = obj.pointer("/spec/strategy") {
                causes.extend(strategy_checks(
                    "spec.strategy",
                    strategy,
                    "Recreate",
                    rolling_update_deployment_checks,
                ));
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(strategy) = obj.pointer("/spec/updateStrategy") {
                causes.extend(strategy_checks(
                    "spec.updateStrategy",
                    strategy,
                    "OnDelete",
                    rolling_update_daemonset_checks,
                ));
            }
        }
        _ => {}
    }
    // Workloads only: ControllerRevisions (also apps/v1) have no selector.
    if def.group == "apps" && def.kind != "ControllerRevision" {
        let selector = obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object);
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object);
        match selector {
            None if obj.pointer("/spec/selector/matchExpressions").is_none() => {
                causes.push(Cause::required("spec.selector"))
            }
            Some(selector) => {
                let matches = selector
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
                if !matches {
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            None => {}
        }
    }
    causes
}

/// A Job spec's rules (as kube-apiserver's Job validation has them): its pods restart
/// `OnFailure` or `Never`, only `Never` with a `podFailurePolicy` (the policy judges failed
/// pods, which `OnFailure` never leaves), and `backoffLimitPerIndex` only on Indexed Jobs.
fn job_spec_checks(path: &str, spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let restart = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("");
    let field = format!("{path}.template.spec.restartPolicy");
    if !matches!(restart, "OnFailure" | "Never") {
        causes.push(Cause::not_supported(
            &field,
            restart,
            &["OnFailure", "Never"],
        ));
    } else if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) && restart != "Never" {
        causes.push(Cause::invalid(
            &field,
            format!(
                "Invalid value: \"{restart}\": only \"Never\" is supported when podFailurePolicy is specified"
            ),
        ));
    }
    if let Some(limit) = spec.get("backoffLimitPerIndex").filter(|l| !l.is_null()) {
        if spec.get("completionMode").and_then(Value::as_str) != Some("Indexed") {
            causes.push(Cause::invalid(
                &format!("{path}.backoffLimitPerIndex"),
                format!("Invalid value: {limit}: requires indexed completion mode"),
            ));
        }
    }
    causes
}

/// A Deployment's or DaemonSet's update strategy (kube-apiserver's rules): its type is
/// `RollingUpdate` or the kind's `other` type; `rollingUpdate` is required with the first
/// (defaulting fills it) and forbidden with the second, and its numbers are checked by
/// `rolling`.
fn strategy_checks(
    path: &str,
    strategy: &Value,
    other: &str,
    rolling: fn(&str, &Value) -> Vec<Cause>,
) -> Vec<Cause> {
    let kind = strategy.get("type").and_then(Value::as_str).unwrap_or("");
    let update = strategy.get("rollingUpdate").filter(|r| !r.is_null());
    match (kind, update) {
        ("RollingUpdate", Some(update)) => rolling(&format!("{path}.rollingUpdate"), update),
        ("RollingUpdate", None) => vec![Cause::required(&format!("{path}.rollingUpdate"))],
        (kind, Some(_)) if kind == other => vec![Cause::forbidden(
            &format!("{path}.rollingUpdate"),
            &format!("may not be specified when strategy `type` is '{other}'"),
        )],
        (kind, None) if kind == other => Vec::new(),
        (kind, _) => vec![Cause::not_supported(
            &format!("{path}.type"),
            kind,
            &[other, "RollingUpdate"],
        )],
    }
}

/// One int-or-percent field of a rolling update, read as upstream reads it: its value (a
/// percent string counts its number; anything else not an integer counts 0) and the causes
/// when it is negative, malformed or, with `bounded`, a percent over 100%.
fn int_or_percent(path: &str, value: Option<&Value>, bounded: bool) -> (i64, Vec<Cause>) {
    let shown = value
        .map(Value::to_string)
        .unwrap_or_else(|| "0".to_owned());
    let invalid = |detail: &str| Cause::invalid(path, format!("Invalid value: {shown}: {detail}"));
    match value {
        None | Some(Value::Null) => (0, Vec::new()),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) if n >= 0 => (n, Vec::new()),
            Some(n) => (n, vec![invalid("must be greater than or equal to 0")]),
            None => (
                0,
                vec![invalid("must be an integer or percentage (e.g '5%')")],
            ),
        },
        Some(Value::String(text)) => {
            let number = text
                .strip_suffix('%')
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<i64>().ok());
            match number {
                Some(percent) if bounded && percent > 100 => {
                    (percent, vec![invalid("must not be greater than 100%")])
                }
                Some(percent) => (percent, Vec::new()),
                None => (
                    0,
                    vec![invalid(
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    )],
                ),
            }
        }
        Some(_) => (
            0,
            vec![invalid("must be an integer or percentage (e.g '5%')")],
        ),
    }
}

/// A Deployment's rolling update: both numbers valid, `maxUnavailable` at most 100%, and not
/// both zero (the rollout could never move).
fn rolling_update_deployment_checks(path: &str, update: &Value) -> Vec<Cause> {
    let unavailable_path = format!("{path}.maxUnavailable");
    let (unavailable, mut causes) =
        int_or_percent(&unavailable_path, update.get("maxUnavailable"), true);
    // A Deployment may surge by more than 100%.
    let (surge, surge_causes) =
        int_or_percent(&format!("{path}.maxSurge"), update.get("maxSurge"), false);
    causes.extend(surge_causes);
    if unavailable == 0 && surge == 0 {
        let shown = update
            .get("maxUnavailable")
            .map_or_else(|| "0".to_owned(), Value::to_string);
        causes.push(Cause::invalid(
            &unavailable_path,
            format!("Invalid value: {shown}: may not be 0 when `maxSurge` is 0"),
        ));
    }
    causes
}

/// A DaemonSet's rolling update: both numbers valid and at most 100%, and exactly one of them
/// non-zero (a node cannot both surge and lose its pod).
fn rolling_update_daemonset_checks(path: &str, update: &Value) -> Vec<Cause> {
    let unavailable_path = format!("{path}.maxUnavailable");
    let surge_path = format!("{path}.maxSurge");
    let (unavailable, mut causes) =
        int_or_percent(&unavailable_path, update.get("maxUnavailable"), true);
    let (surge, surge_causes) = int_or_percent(&surge_path, update.get("maxSurge"), true);
    causes.extend(surge_causes);
    match (unavailable != 0, surge != 0) {
        (true, true) => causes.push(Cause::invalid(
            &surge_path,
            format!(
                "Invalid value: {}: may not be set when maxUnavailable is non-zero",
                update
                    .get("maxSurge")
                    .map_or_else(String::new, Value::to_string)
            ),
        )),
        (false, false) => causes.push(Cause {
            reason: "FieldValueRequired".to_owned(),
            message: "Required value: cannot be 0 when maxSurge is 0".to_owned(),
            field: unavailable_path,
        }),
        _ => {}
    }
    causes
}

/// The QoS class of a pod, as the kubelet and scheduler compute it: Guaranteed when every
/// container has cpu and memory limits equal to their requests, BestEffort when no
/// container asks for or limits anything, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| {
            pod.pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for container in containers {
        let requests = container
            .pointer("/resources/requests")
            .and_then(Value::as_object);
        let limits = container
            .pointer("/resources/limits")
            .and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            // A missing request defaults to the limit.
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Prepares a new object: type fields, namespace from the URL, name (or generateName),
/// uid, creationTimestamp, generation; resourceVersion dropped (the store assigns it).
pub fn prepare_create(
    def: &ResourceDef,
    namespace: Option<&str>,
    mut obj: Value,
) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    check_type(def, &obj)?;
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    let meta = metadata_mut(&mut obj);
    if def.namespaced {
        let url_ns = namespace.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                meta.insert("namespace".into(), json!(url_ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        if let Some(base) = meta.get("generateName").and_then(Value::as_str) {
            let name = format!("{base}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("selfLink");
    if def.has_spec {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    if def.status_is_subresource() {
        // Status is the controllers' and kubelets' to write, through the subresource.
        if let Some(map) = obj.as_object_mut() {
            map.remove("status");
        }
        if def.kind == "Pod" {
            let qos = qos_class(&obj);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
    }
    super::defaults::apply(def, &mut obj);
    validate(def, &mut obj)?;
    Ok(obj)
}

/// Prepares an update of `old` to `new`: identity fields kept from `old`, generation bumped
/// when `spec` changed, resourceVersion dropped.
pub fn prepare_update(def: &ResourceDef, old: &Value, mut new: Value) -> Result<Value, ApiError> {
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    check_type(def, &new)?;
    new["apiVersion"] = json!(def.api_version());
    new["kind"] = json!(def.kind);
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let spec_changed = old.get("spec") != new.get("spec");
    let meta = metadata_mut(&mut new);
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(field) {
            Some(value) => {
                meta.insert(field.into(), value.clone());
            }
            None => {
                meta.remove(field);
            }
        }
    }
    meta.remove("resourceVersion");
    meta.remove("selfLink");
    if def.has_spec {
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if spec_changed {
            generation + 1
        } else {
            generation
        };
        meta.insert("generation".into(), json!(generation));
    }
    if def.status_is_subresource() {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    let service_causes = if def.kind == "Service" && def.group.is_empty() {
        super::services::prepare_update(old, &mut new)
    } else {
        Vec::new()
    };
    super::defaults::apply(def, &mut new);
    if !service_causes.is_empty() {
        let name = name(&new).unwrap_or_default().to_owned();
        return Err(ApiError::invalid(
            def.group,
            def.kind,
            &name,
            service_causes,
        ));
    }
    validate(def, &mut new)?;
    Ok(new)
}

/// Prepares a write through the status subresource: everything but `status` stays as in
/// `old`.
pub fn prepare_status_update(
    def: &ResourceDef,
    old: &Value,
    status: Option<Value>,
) -> Result<Value, ApiError> {
    let mut new = old.clone();
    match status {
        Some(status) => new["status"] = status,
        None => {
            if let Some(map) = new.as_object_mut() {
                map.remove("status");
            }
        }
    }
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    validate(def, &mut new)?;
    Ok(new)
}

/// Sets `metadata.resourceVersion` (as a string, like kube-apiserver).
pub fn set_resource_version(obj: &mut Value, revision: i64) {
    metadata_mut(obj).insert("resourceVersion".into(), json!(revision.to_string()));
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (equality- and set-based).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let bad = || ApiError::bad_request(format!("unable to parse requirement: {part:?}"));
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(key.trim().to_owned(), set_values(rest).ok_or_else(bad)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(key.trim().to_owned(), set_values(rest).ok_or_else(bad)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn set_values(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A parsed field selector: `field=value` / `field!=value` on supported fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a field selector; only `metadata.name` and `metadata.namespace` are supported
    /// on every resource, as in kube-apiserver.
    pub fn parse(text: &str, def: &ResourceDef) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {part:?}"
                )));
            };
            if !supported_field(def, field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field} (for {})",
                    def.plural
                )));
            }
            terms.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(Self(terms))
    }

    /// Whether an object satisfies every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = field_value(obj, field);
            (actual == *value) == *equal
        })
    }
}

/// The fields kube-apiserver lets each resource be selected by (beyond `metadata.name` and
/// `metadata.namespace`, which every resource has).
fn supported_field(def: &ResourceDef, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    let extra: &[&str] = match (def.group, def.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("", "Secret") => &["type"],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "ReplicationController") => &["status.replicas"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    };
    extra.contains(&field)
}

/// The text of a selectable field (absent fields read as "", booleans and numbers as text).
fn field_value(obj: &Value, field: &str) -> String {
    let pointer = if field == "source" {
        "/source/component".to_owned()
    } else {
        format!("/{}", field.replace('.', "/"))
    };
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // An absent boolean selects as false, as in kube-apiserver's field sets.
        None if field == "spec.unschedulable" || field == "spec.hostNetwork" => "false".to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_select_by_node_and_phase() -> Result<(), ApiError> {
        let registry = super::super::resources::Registry::new();
        let Some(pods) = registry.find("", "v1", "pods") else {
            panic!("pods are served");
        };
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", &pods)?.matches(&pod)
        );
        assert!(!FieldSelector::parse("spec.nodeName=n2", &pods)?.matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", &pods)?
            .matches(&json!({"metadata": {"name": "q"}})));
        let Some(cms) = registry.find("", "v1", "configmaps") else {
            panic!("configmaps are served");
        };
        assert!(FieldSelector::parse("spec.nodeName=n1", &cms).is_err());
        Ok(())
    }

    #[test]
    fn jobs_restart_on_failure_or_never_and_policies_need_never() {
        let registry = super::super::resources::Registry::new();
        let Some(jobs) = registry.find("batch", "v1", "jobs") else {
            panic!("jobs are served");
        };
        let fields = |spec: Value| -> Vec<String> {
            kind_checks(&jobs, &json!({"spec": spec}))
                .into_iter()
                .map(|c| format!("{} {}", c.reason, c.field))
                .collect()
        };
        let template = |restart: &str| json!({"spec": {"restartPolicy": restart, "containers": [{"name": "c", "image": "i"}]}});
        assert!(fields(json!({"template": template("Never")})).is_empty());
        assert!(fields(json!({"template": template("OnFailure")})).is_empty());
        assert_eq!(
            fields(json!({"template": template("Always")})),
            ["FieldValueNotSupported spec.template.spec.restartPolicy"]
        );
        let policy = json!({"rules": [{"action": "FailJob",
            "onExitCodes": {"operator": "In", "values": [42]}}]});
        assert_eq!(
            fields(json!({"template": template("OnFailure"), "podFailurePolicy": policy})),
            ["FieldValueInvalid spec.template.spec.restartPolicy"]
        );
        assert!(
            fields(json!({"template": template("Never"), "podFailurePolicy": policy})).is_empty()
        );
        assert_eq!(
            fields(
                json!({"template": template("Never"), "backoffLimitPerIndex": 1,
                          "completionMode": "NonIndexed"})
            ),
            ["FieldValueInvalid spec.backoffLimitPerIndex"]
        );
        assert!(fields(
            json!({"template": template("Never"), "backoffLimitPerIndex": 1,
                              "completionMode": "Indexed"})
        )
        .is_empty());
        let Some(cronjobs) = registry.find("batch", "v1", "cronjobs") else {
            panic!("cronjobs are served");
        };
        let causes = kind_checks(
            &cronjobs,
            &json!({"spec": {"jobTemplate": {"spec": {"template": template("Always")}}}}),
        );
        assert_eq!(causes.len(), 1);
        assert_eq!(
            causes[0].field,
            "spec.jobTemplate.spec.template.spec.restartPolicy"
        );
    }

    #[test]
    fn rolling_updates_keep_upstream_bounds_after_defaulting() {
        let registry = super::super::resources::Registry::new();
        let causes = |resource: &str, strategy: Value| -> Vec<String> {
            let Some(def) = registry.find("apps", "v1", resource) else {
                panic!("{resource} are served");
            };
            let key = if resource == "deployments" {
                "strategy"
            } else {
                "updateStrategy"
            };
            let mut obj = json!({"spec": {key: strategy}});
            super::super::defaults::apply(&def, &mut obj);
            kind_checks(&def, &obj)
                .into_iter()
                .filter(|c| c.field.contains("trategy"))
                .map(|c| format!("{} {}", c.reason, c.field))
                .collect()
        };
        // Defaults alone are valid for both kinds.
        assert!(causes("deployments", Value::Null).is_empty());
        assert!(causes("daemonsets", Value::Null).is_empty());
        let rolling = |update: Value| json!({"type": "RollingUpdate", "rollingUpdate": update});
        // Deployments: not both zero, maxUnavailable at most 100%, surge unbounded.
        assert_eq!(
            causes(
                "deployments",
                rolling(json!({"maxSurge": 0, "maxUnavailable": "0%"}))
            ),
            ["FieldValueInvalid spec.strategy.rollingUpdate.maxUnavailable"]
        );
        assert!(causes("deployments", rolling(json!({"maxSurge": "200%"}))).is_empty());
        assert_eq!(
            causes(
                "deployments",
                rolling(json!({"maxSurge": -1, "maxUnavailable": "101%"}))
            ),
            [
                "FieldValueInvalid spec.strategy.rollingUpdate.maxUnavailable",
                "FieldValueInvalid spec.strategy.rollingUpdate.maxSurge"
            ]
        );
        assert_eq!(
            causes("deployments", rolling(json!({"maxSurge": "5 %"}))),
            ["FieldValueInvalid spec.strategy.rollingUpdate.maxSurge"]
        );
        assert_eq!(
            causes(
                "deployments",
                json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}})
            ),
            ["FieldValueForbidden spec.strategy.rollingUpdate"]
        );
        assert!(causes("deployments", json!({"type": "Recreate"})).is_empty());
        assert_eq!(
            causes("deployments", json!({"type": "Sometimes"})),
            ["FieldValueNotSupported spec.strategy.type"]
        );
        // DaemonSets: exactly one of the two non-zero; a surge alone keeps the defaulted
        // maxUnavailable of 1 and is refused, as upstream does.
        assert_eq!(
            causes("daemonsets", rolling(json!({"maxSurge": 1}))),
            ["FieldValueInvalid spec.updateStrategy.rollingUpdate.maxSurge"]
        );
        assert!(causes(
            "daemonsets",
            rolling(json!({"maxSurge": "10%", "maxUnavailable": 0}))
        )
        .is_empty());
        assert_eq!(
            causes(
                "daemonsets",
                rolling(json!({"maxSurge": 0, "maxUnavailable": 0}))
            ),
            ["FieldValueRequired spec.updateStrategy.rollingUpdate.maxUnavailable"]
        );
        assert_eq!(
            causes(
                "daemonsets",
                rolling(json!({"maxSurge": "150%", "maxUnavailable": 0}))
            ),
            ["FieldValueInvalid spec.updateStrategy.rollingUpdate.maxSurge"]
        );
        assert!(causes("daemonsets", json!({"type": "OnDelete"})).is_empty());
    }

    #[test]
    fn qos_classes() {
        let best = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(qos_class(&best), "BestEffort");
        let guaranteed = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&burstable), "Burstable");
    }

    #[test]
    fn dns_names() {
        assert!(check_subdomain("my-app.example").is_none());
        assert!(check_subdomain("Bad_Name").is_some());
        assert!(check_subdomain("-x").is_some());
        assert!(check_subdomain(&"a".repeat(254)).is_some());
        assert!(check_label("kube-system").is_none());
        assert!(check_label("a.b").is_some());
        assert!(check_label(&"a".repeat(64)).is_some());
    }

    #[test]
    fn label_selectors() -> Result<(), ApiError> {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        assert!(LabelSelector::parse("app=web")?.matches(&obj));
        assert!(LabelSelector::parse("app==web,tier")?.matches(&obj));
        assert!(!LabelSelector::parse("app!=web")?.matches(&obj));
        assert!(LabelSelector::parse("tier in (front, back)")?.matches(&obj));
        assert!(!LabelSelector::parse("tier notin (front)")?.matches(&obj));
        assert!(LabelSelector::parse("!missing")?.matches(&obj));
        assert!(LabelSelector::parse("")?.matches(&obj));
        assert!(LabelSelector::parse("tier in front").is_err());
        Ok(())
    }
}
