//! Defaulting of built-in types, as kube-apiserver's `SetDefaults_*` functions do for the
//! fields clients rely on reading back (replicas, strategies, restart policy, protocols,
//! pull policy, ...). Runs on create and update before validation.
//!
//! Only fills what is absent; never overwrites a value the client set.
use serde_json::{json, Map, Value};

use super::resources::ResourceDef;

fn ensure<'a>(obj: &'a mut Map<String, Value>, key: &str, default: Value) -> &'a mut Value {
    let slot = obj.entry(key.to_owned()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = default;
    }
    slot
}

/// A workload's update strategy defaulted field by field as upstream does: `RollingUpdate`
/// when no type is given, and then each of `maxUnavailable` and `maxSurge` that is unset.
fn rolling_update(spec: &mut Map<String, Value>, key: &str, unavailable: Value, surge: Value) {
    let Some(strategy) = ensure(spec, key, json!({})).as_object_mut() else {
        return;
    };
    if ensure(strategy, "type", json!("RollingUpdate")) != "RollingUpdate" {
        return;
    }
    if let Some(rolling) = ensure(strategy, "rollingUpdate", json!({})).as_object_mut() {
        ensure(rolling, "maxUnavailable", unavailable);
        ensure(rolling, "maxSurge", surge);
    }
}

fn map<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let obj = value.as_object_mut()?;
    ensure(obj, key, json!({})).as_object_mut()
}

/// Applies the defaults of `def`'s kind to `obj`.
pub fn apply(def: &ResourceDef, obj: &mut Value) {
    match (def.group, def.kind) {
        ("", "Pod") => {
            if let Some(spec) = map(obj, "spec") {
                pod_spec(spec);
            }
        }
        ("", "Service") => {
            if let Some(spec) = map(obj, "spec") {
                service_spec(spec);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = map(obj, "spec") {
                ensure(spec, "replicas", json!(1));
                ensure(spec, "revisionHistoryLimit", json!(10));
                ensure(spec, "progressDeadlineSeconds", json!(600));
                rolling_update(spec, "strategy", json!("25%"), json!("25%"));
                template(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = map(obj, "spec") {
                ensure(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = map(obj, "spec") {
                ensure(spec, "replicas", json!(1));
                ensure(spec, "podManagementPolicy", json!("OrderedReady"));
                ensure(spec, "revisionHistoryLimit", json!(10));
                ensure(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                ensure(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = map(obj, "spec") {
                ensure(spec, "revisionHistoryLimit", json!(10));
                rolling_update(spec, "updateStrategy", json!(1), json!(0));
                template(spec);
            }
        }
        ("batch", "Job") => {
            let name = obj
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or(Value::Null);
            let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            if let Some(spec) = map(obj, "spec") {
                // Per-index limits replace the Job-wide one unless it is given.
                let per_index = spec
                    .get("backoffLimitPerIndex")
                    .is_some_and(|l| !l.is_null());
                ensure(
                    spec,
                    "backoffLimit",
                    json!(if per_index { i32::MAX } else { 6 }),
                );
                // A rule on a pod condition without a status means the condition is True.
                if let Some(Value::Array(rules)) = spec
                    .get_mut("podFailurePolicy")
                    .and_then(|p| p.get_mut("rules"))
                {
                    for rule in rules {
                        if let Some(Value::Array(conditions)) = rule.get_mut("onPodConditions") {
                            for condition in conditions.iter_mut().filter_map(Value::as_object_mut)
                            {
                                ensure(condition, "status", json!("True"));
                            }
                        }
                    }
                }
                ensure(spec, "completionMode", json!("NonIndexed"));
                ensure(spec, "suspend", json!(false));
                // Both unset: one pod, once. Parallelism alone: a work queue (no completions).
                let unset =
                    |spec: &Map<String, Value>, key: &str| spec.get(key).is_none_or(Value::is_null);
                if unset(spec, "completions") && unset(spec, "parallelism") {
                    spec.insert("completions".into(), json!(1));
                }
                ensure(spec, "parallelism", json!(1));
                let replacement = if unset(spec, "podFailurePolicy") {
                    "TerminatingOrFailed"
                } else {
                    "Failed"
                };
                ensure(spec, "podReplacementPolicy", json!(replacement));
                if spec.get("manualSelector") != Some(&json!(true)) && uid.is_string() {
                    job_selector(spec, &name, &uid);
                }
                if let Some(template) = spec.get_mut("template").and_then(|t| map(t, "spec")) {
                    pod_spec(template);
                }
            }
        }
        ("", "Secret") => {
            if let Some(secret) = obj.as_object_mut() {
                ensure(secret, "type", json!("Opaque"));
                // `stringData` is write-only: it is merged into `data`, base64-encoded.
                if let Some(Value::Object(strings)) = secret.remove("stringData") {
                    let data = ensure(secret, "data", json!({}));
                    if let Some(data) = data.as_object_mut() {
                        for (key, value) in strings {
                            let text = value.as_str().unwrap_or_default();
                            let encoded = base64::Engine::encode(
                                &base64::engine::general_purpose::STANDARD,
                                text,
                            );
                            data.insert(key, json!(encoded));
                        }
                    }
                }
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = map(obj, "spec") {
                ensure(spec, "concurrencyPolicy", json!("Allow"));
                ensure(spec, "suspend", json!(false));
                ensure(spec, "successfulJobsHistoryLimit", json!(3));
                ensure(spec, "failedJobsHistoryLimit", json!(1));
            }
        }
        _ => {}
    }
}

/// The selector kube-apiserver generates for a Job without `manualSelector`: the Job's uid,
/// with the uid and name labels on the pod template (current and legacy keys).
fn job_selector(spec: &mut Map<String, Value>, name: &Value, uid: &Value) {
    if let Some(labels) = spec
        .get_mut("template")
        .and_then(|t| map(t, "metadata"))
        .map(|m| ensure(m, "labels", json!({})))
        .and_then(Value::as_object_mut)
    {
        for (key, value) in [
            ("job-name", name),
            ("batch.kubernetes.io/job-name", name),
            ("controller-uid", uid),
            ("batch.kubernetes.io/controller-uid", uid),
        ] {
            ensure(labels, key, value.clone());
        }
    }
    let selector = ensure(spec, "selector", json!({}));
    if let Some(selector) = selector.as_object_mut() {
        if let Some(match_labels) = ensure(selector, "matchLabels", json!({})).as_object_mut() {
            ensure(
                match_labels,
                "batch.kubernetes.io/controller-uid",
                uid.clone(),
            );
        }
    }
}

fn template(spec: &mut Map<String, Value>) {
    if let Some(template) = spec.get_mut("template") {
        if let Some(pod) = map(template, "spec") {
            pod_spec(pod);
        }
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    ensure(spec, "restartPolicy", json!("Always"));
    ensure(spec, "terminationGracePeriodSeconds", json!(30));
    ensure(spec, "dnsPolicy", json!("ClusterFirst"));
    ensure(spec, "securityContext", json!({}));
    ensure(spec, "schedulerName", json!("default-scheduler"));
    ensure(spec, "enableServiceLinks", json!(true));
    // priority and preemptionPolicy come from the Priority admission (`priority.rs`), on
    // pods only, never in templates.
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for container in containers.iter_mut().filter_map(Value::as_object_mut) {
                let image = container
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let latest = !image.contains('@')
                    && image
                        .rsplit('/')
                        .next()
                        .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
                ensure(
                    container,
                    "imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                );
                ensure(
                    container,
                    "terminationMessagePath",
                    json!("/dev/termination-log"),
                );
                ensure(container, "terminationMessagePolicy", json!("File"));
                ensure(container, "resources", json!({}));
                if let Some(Value::Array(ports)) = container.get_mut("ports") {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        ensure(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    let kind = ensure(spec, "type", json!("ClusterIP")).clone();
    let affinity = ensure(spec, "sessionAffinity", json!("None")).clone();
    if affinity == "ClientIP" {
        let config = ensure(spec, "sessionAffinityConfig", json!({}));
        if let Some(config) = config.as_object_mut() {
            let client_ip = ensure(config, "clientIP", json!({}));
            if let Some(client_ip) = client_ip.as_object_mut() {
                // Three hours, as upstream.
                ensure(client_ip, "timeoutSeconds", json!(10800));
            }
        }
    }
    if kind != "ExternalName" {
        ensure(spec, "ipFamilies", json!(["IPv4"]));
        ensure(spec, "ipFamilyPolicy", json!("SingleStack"));
        ensure(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        ensure(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    let external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    if kind == "NodePort" || kind == "LoadBalancer" || (kind == "ClusterIP" && external_ips) {
        ensure(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            ensure(port, "protocol", json!("TCP"));
            // An unset, zero or empty targetPort is the port itself, as upstream defaults it.
            let unset = port
                .get("targetPort")
                .is_none_or(|t| t.is_null() || *t == json!(0) || *t == json!(""));
            if let (true, Some(number)) = (unset, port.get("port").cloned()) {
                port.insert("targetPort".into(), number);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::Registry;

    #[test]
    fn deployment_defaults() {
        let registry = Registry::new();
        let Some(def) = registry.find("apps", "v1", "deployments") else {
            panic!("deployments are served");
        };
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "busybox:1", "ports": [{"containerPort": 80}]}]}}}});
        apply(&def, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn per_index_jobs_lift_the_job_wide_backoff_limit() {
        let registry = Registry::new();
        let Some(def) = registry.find("batch", "v1", "jobs") else {
            panic!("jobs are served");
        };
        let template = json!({"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}});
        let mut per_index = json!({"metadata": {"name": "a"}, "spec": {
            "completionMode": "Indexed", "completions": 3, "backoffLimitPerIndex": 1,
            "template": template.clone(),
            "podFailurePolicy": {"rules": [{"action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget"}]}]}}});
        apply(&def, &mut per_index);
        assert_eq!(per_index["spec"]["backoffLimit"], i32::MAX);
        assert_eq!(
            per_index["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"],
            "True"
        );
        assert_eq!(per_index["spec"]["podReplacementPolicy"], "Failed");
        let mut plain = json!({"metadata": {"name": "b"}, "spec": {"template": template}});
        apply(&def, &mut plain);
        assert_eq!(plain["spec"]["backoffLimit"], 6);
    }

    #[test]
    fn jobs_get_a_selector_on_their_uid() {
        let registry = Registry::new();
        let Some(def) = registry.find("batch", "v1", "jobs") else {
            panic!("jobs are served");
        };
        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}}});
        apply(&def, &mut job);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        assert_eq!(job["spec"]["completions"], 1);
        assert_eq!(job["spec"]["podReplacementPolicy"], "TerminatingOrFailed");
        // Idempotent on update; a work queue keeps no completions.
        let again = job.clone();
        apply(&def, &mut job);
        assert_eq!(job, again);
        let mut queue = json!({"metadata": {"name": "q", "uid": "u-2"}, "spec": {"parallelism": 2,
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        apply(&def, &mut queue);
        assert!(queue["spec"].get("completions").is_none());
        // A manual selector is left alone.
        let mut manual = json!({"metadata": {"name": "m", "uid": "u-3"}, "spec": {"manualSelector": true,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        apply(&def, &mut manual);
        assert_eq!(
            manual["spec"]["selector"],
            json!({"matchLabels": {"a": "b"}})
        );
    }

    #[test]
    fn service_ports_default_target_port_and_protocol() {
        let registry = Registry::new();
        let Some(def) = registry.find("", "v1", "services") else {
            panic!("services are served");
        };
        let mut s = json!({"spec": {"ports": [{"port": 80}, {"port": 81, "targetPort": 0},
            {"port": 82, "targetPort": ""}, {"port": 83, "targetPort": "http"}]}});
        apply(&def, &mut s);
        let targets: Vec<&Value> = (0..4)
            .map(|i| &s["spec"]["ports"][i]["targetPort"])
            .collect();
        assert_eq!(
            targets,
            [&json!(80), &json!(81), &json!(82), &json!("http")]
        );
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert!(s["spec"].get("externalTrafficPolicy").is_none());
        assert!(s["spec"].get("allocateLoadBalancerNodePorts").is_none());

        // Externally accessible Services get a traffic policy; LoadBalancers allocate node
        // ports; ClientIP affinity gets upstream's three hours.
        let mut lb = json!({"spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}});
        apply(&def, &mut lb);
        assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
        assert_eq!(
            lb["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        let mut external = json!({"spec": {"externalIPs": ["192.0.2.1"], "ports": [{"port": 80}]}});
        apply(&def, &mut external);
        assert_eq!(external["spec"]["externalTrafficPolicy"], "Cluster");
    }
}
