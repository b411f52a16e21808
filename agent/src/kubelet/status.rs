//! The pod status the kubelet reports (kubelet's `generateAPIPodStatus`): phase, the
//! PodReadyToStartContainers / Initialized / ContainersReady / Ready conditions (PodScheduled
//! is kept as the scheduler wrote it), pod and host IPs, and a status per container with
//! state, last state, restart count and reasons (Completed, Error, OOMKilled,
//! CrashLoopBackOff, ErrImageNeverPull, CreateContainerError).
//!
//! Owns that computation as a pure function of the pod and the observations.
use serde_json::{json, Value};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::{
    observed::{ContainerObservation, Observed, RunState},
    plan, runtime_config,
};

fn rfc3339(seconds: i64) -> Value {
    match k8s_openapi::jiff::Timestamp::from_second(seconds) {
        Ok(t) if seconds > 0 => json!(t.to_string()),
        _ => Value::Null,
    }
}

fn state_of(c: &ContainerObservation) -> Value {
    match c.state {
        RunState::Running => json!({"running": {"startedAt": rfc3339(c.started_at)}}),
        RunState::Exited => json!({"terminated": {
            "exitCode": c.exit_code,
            "reason": if c.reason.is_empty() {
                if c.exit_code == 0 { "Completed" } else { "Error" }
            } else {
                c.reason.as_str()
            },
            "message": if c.message.is_empty() { Value::Null } else { json!(c.message) },
            "startedAt": rfc3339(c.started_at),
            "finishedAt": rfc3339(c.finished_at),
            "containerID": format!("containerd://{}", c.id),
        }}),
        RunState::Created | RunState::Unknown => {
            json!({"waiting": {"reason": "ContainerCreating"}})
        }
    }
}

fn container_status(container: &Container, observed: &Observed, now: i64) -> (Value, bool) {
    let image = container.image.clone().unwrap_or_default();
    let latest = observed.container(&container.name);
    let mut state = latest.map_or_else(
        || json!({"waiting": {"reason": "ContainerCreating"}}),
        state_of,
    );
    if let Some((reason, message)) = observed.waiting.get(&container.name) {
        state = json!({"waiting": {"reason": reason, "message": message}});
    }
    let running = latest.is_some_and(|c| c.state == RunState::Running);
    // Probes decide `started` and `ready` of a running container that has them.
    let health = observed.health.get(&container.name);
    let started = running && health.is_none_or(|h| h.started);
    let ready = running && health.is_none_or(|h| h.ready);
    // A container waiting to restart shows its latest attempt as lastState; a restarted one
    // the attempt before.
    let last_state = match (latest, observed.previous.get(&container.name)) {
        (Some(c), _)
            if c.state == RunState::Exited && observed.waiting.contains_key(&container.name) =>
        {
            state_of(c)
        }
        (Some(_), Some(previous)) if previous.state == RunState::Exited => state_of(previous),
        _ => json!({}),
    };
    let _ = now;
    let status = json!({
        "name": container.name,
        "image": image,
        "imageID": latest.map(|c| c.image_ref.clone()).unwrap_or_default(),
        "containerID": latest.map(|c| format!("containerd://{}", c.id)),
        "ready": ready,
        "started": started,
        "restartCount": latest.map_or(0, |c| c.attempt),
        "state": state,
        "lastState": last_state,
    });
    (status, ready)
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, previous: &Pod, now: &Value) -> Value {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time when the status did not change.
    let transition = previous
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| json!(t.0.to_string()))
        .unwrap_or_else(|| now.clone());
    let mut value = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
    if let Some(reason) = reason.filter(|_| !ok) {
        value["reason"] = json!(reason);
    }
    value
}

/// The status to report for a pod (the `status` object, as JSON).
pub fn pod_status(
    pod: &Pod,
    observed: &Observed,
    host_ip: &str,
    started_at: i64,
    now: i64,
) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let now_text = rfc3339(now);
    let init_statuses: Vec<(Value, bool)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, observed, now))
        .collect();
    let statuses: Vec<(Value, bool)> = spec
        .containers
        .iter()
        .map(|c| container_status(c, observed, now))
        .collect();
    let initialized = spec.init_containers.iter().flatten().all(|c| {
        observed.container(&c.name).is_some_and(|o| {
            (o.state == RunState::Exited && o.exit_code == 0)
                || (c.restart_policy.as_deref() == Some("Always") && o.state == RunState::Running)
        })
    });
    let all_ready = !statuses.is_empty() && statuses.iter().all(|(_, ready)| *ready);
    let sandbox_ready = observed.sandbox.as_ref().is_some_and(|s| s.ready);
    let finished = plan::finished(pod, observed);
    let any_running = spec.containers.iter().any(|c| {
        observed
            .container(&c.name)
            .is_some_and(|o| o.state == RunState::Running)
    });
    let phase = match finished {
        Some(true) => "Succeeded",
        Some(false) => "Failed",
        None if initialized
            && (any_running
                || observed
                    .containers
                    .values()
                    .any(|c| c.state == RunState::Exited)
                    && spec
                        .containers
                        .iter()
                        .all(|c| observed.container(&c.name).is_some())) =>
        {
            "Running"
        }
        None => "Pending",
    };
    let ready = all_ready && initialized && finished.is_none();
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            pod,
            &now_text,
        ),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            pod,
            &now_text,
        ),
        condition(
            "Ready",
            ready,
            Some(if finished.is_some() {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            pod,
            &now_text,
        ),
        condition(
            "ContainersReady",
            ready,
            Some(if finished.is_some() {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            pod,
            &now_text,
        ),
    ];
    // Conditions the kubelet does not own (PodScheduled, DisruptionTarget) are kept.
    for other in pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| {
            !matches!(
                c.type_.as_str(),
                "PodReadyToStartContainers" | "Initialized" | "Ready" | "ContainersReady"
            )
        })
    {
        if let Ok(value) = serde_json::to_value(other) {
            conditions.push(value);
        }
    }
    let ip = observed
        .sandbox
        .as_ref()
        .and_then(|s| s.ip.clone())
        .or_else(|| {
            spec.host_network
                .unwrap_or(false)
                .then(|| host_ip.to_owned())
        });
    json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": ip,
        "podIPs": ip.as_ref().map(|ip| json!([{"ip": ip}])),
        "startTime": rfc3339(started_at),
        "qosClass": runtime_config::qos_class(pod),
        "initContainerStatuses": if init_statuses.is_empty() { Value::Null } else { json!(init_statuses.into_iter().map(|(s, _)| s).collect::<Vec<_>>()) },
        "containerStatuses": statuses.into_iter().map(|(s, _)| s).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::observed::{ContainerHealth, SandboxObservation};

    fn running(attempt: u32) -> ContainerObservation {
        ContainerObservation {
            id: "abc".into(),
            state: RunState::Running,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            started_at: 1_700_000_000,
            finished_at: 0,
            attempt,
            image: "img".into(),
            image_ref: "sha256:1".into(),
        }
    }

    #[test]
    fn a_running_pod_is_ready_with_its_ip() {
        let pod: Pod = serde_json::from_value(
            json!({"spec": {"containers": [{"name": "app", "image": "img"}]}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut observed = Observed {
            sandbox: Some(SandboxObservation {
                id: "s".into(),
                ready: true,
                ip: Some("10.42.0.7".into()),
                attempt: 0,
            }),
            ..Default::default()
        };
        observed.containers.insert("app".into(), running(2));
        let status = pod_status(&pod, &observed, "172.30.0.10", 1_700_000_000, 1_700_000_100);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.42.0.7");
        assert_eq!(status["containerStatuses"][0]["restartCount"], 2);
        assert_eq!(status["containerStatuses"][0]["ready"], true);
        let ready = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned();
        assert_eq!(ready.map(|c| c["status"].clone()), Some(json!("True")));
    }

    #[test]
    fn probes_decide_started_and_ready_of_a_running_container() {
        let pod: Pod = serde_json::from_value(
            json!({"spec": {"containers": [{"name": "app", "image": "img"}]}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut observed = Observed {
            sandbox: Some(SandboxObservation {
                id: "s".into(),
                ready: true,
                ip: Some("10.42.0.7".into()),
                attempt: 0,
            }),
            ..Default::default()
        };
        observed.containers.insert("app".into(), running(0));
        let condition = |status: &Value, kind: &str| {
            status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == kind))
                .map(|c| c["status"].clone())
        };
        for (health, started, ready) in [
            (
                ContainerHealth {
                    started: false,
                    ready: false,
                },
                false,
                false,
            ),
            (
                ContainerHealth {
                    started: true,
                    ready: false,
                },
                true,
                false,
            ),
            (
                ContainerHealth {
                    started: true,
                    ready: true,
                },
                true,
                true,
            ),
        ] {
            observed.health.insert("app".into(), health);
            let status = pod_status(&pod, &observed, "h", 1, 2);
            assert_eq!(status["phase"], "Running");
            assert_eq!(status["containerStatuses"][0]["started"], started);
            assert_eq!(status["containerStatuses"][0]["ready"], ready);
            let expected = json!(if ready { "True" } else { "False" });
            assert_eq!(condition(&status, "Ready"), Some(expected.clone()));
            assert_eq!(condition(&status, "ContainersReady"), Some(expected));
        }
    }

    #[test]
    fn a_restarted_container_shows_its_previous_attempt_as_last_state() {
        let pod: Pod = serde_json::from_value(
            json!({"spec": {"containers": [{"name": "app", "image": "img"}]}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut observed = Observed::default();
        observed.containers.insert("app".into(), running(1));
        let status = pod_status(&pod, &observed, "h", 1, 2);
        assert_eq!(status["containerStatuses"][0]["lastState"], json!({}));
        let mut killed = running(0);
        killed.state = RunState::Exited;
        killed.exit_code = 137;
        killed.finished_at = 1_700_000_005;
        observed.previous.insert("app".into(), killed);
        let status = pod_status(&pod, &observed, "h", 1, 2);
        let container = &status["containerStatuses"][0];
        assert_eq!(container["restartCount"], 1);
        assert!(container["state"]["running"].is_object());
        assert_eq!(container["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(container["lastState"]["terminated"]["reason"], "Error");
    }

    #[test]
    fn waiting_reasons_and_failures_are_reported() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "img"}]}}))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut observed = Observed::default();
        observed.waiting.insert(
            "app".into(),
            ("ErrImageNeverPull".into(), "not present".into()),
        );
        let status = pod_status(&pod, &observed, "h", 0, 1);
        assert_eq!(status["phase"], "Pending");
        assert_eq!(
            status["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ErrImageNeverPull"
        );
        let mut failed = running(0);
        failed.state = RunState::Exited;
        failed.exit_code = 137;
        failed.reason = "OOMKilled".into();
        observed.waiting.clear();
        observed.containers.insert("app".into(), failed);
        let status = pod_status(&pod, &observed, "h", 0, 1);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(
            status["containerStatuses"][0]["state"]["terminated"]["reason"],
            "OOMKilled"
        );
    }
}
