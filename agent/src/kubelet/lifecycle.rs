//! Container lifecycle hooks and killing a container, as upstream's kubelet does them:
//! `postStart` runs right after the container starts (a failure is a `FailedPostStartHook`
//! event and the container is killed); `preStop` runs before the container is stopped,
//! bounded by the grace period (a failure is a `FailedPreStopHook` event and the stop goes
//! on); then `StopContainer` with what remains of the grace period (at least 2 s, upstream's
//! minimum), which the runtime turns into SIGTERM and, when it runs out, SIGKILL.
//!
//! Owns hook handlers and the kill sequence of one container. It must not decide when a
//! container is killed or restarted (probes, termination and the plan decide).
use std::time::{Duration, Instant};

use corten_cri::runtime::CriClient;
use k8s_cri::v1::StopContainerRequest;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use tracing::{debug, info, warn};

use super::{
    checks,
    events::{EventRecorder, EventType},
};

/// Upstream's default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The least time a container gets between SIGTERM and SIGKILL after its preStop hook.
pub const MINIMUM_GRACE_SECONDS: i64 = 2;

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The exec handler's command failed or could not run.
    #[error("Exec lifecycle hook ({command:?}) for Container {container:?} in Pod {pod:?} failed - error: {message}")]
    Exec {
        /// The command.
        command: Vec<String>,
        /// Container name.
        container: String,
        /// Pod name.
        pod: String,
        /// What went wrong.
        message: String,
    },
    /// The httpGet handler's request got no answer.
    #[error("HTTP lifecycle hook ({path}) for Container {container:?} in Pod {pod:?} failed - error: {message}")]
    Http {
        /// The path asked for.
        path: String,
        /// Container name.
        container: String,
        /// Pod name.
        pod: String,
        /// What went wrong.
        message: String,
    },
    /// The handler could not be resolved (unknown port, HTTPS, no action, tcpSocket).
    #[error("invalid lifecycle handler for Container {container:?}: {message}")]
    Invalid {
        /// Container name.
        container: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The grace period of a pod now: the deletion's when it is being deleted, else its spec's,
/// else 30 s.
pub fn grace_seconds(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0)
}

/// Runs one hook handler against a running container. `budget` bounds exec, HTTP and sleep
/// handlers (`None`: no bound, as for postStart).
pub async fn run_handler(
    cri: &CriClient,
    pod: &Pod,
    container: &Container,
    container_id: &str,
    pod_ip: &str,
    handler: &LifecycleHandler,
    budget: Option<Duration>,
) -> Result<(), HookError> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        let outcome = checks::exec(cri, container_id, &command, budget).await;
        if outcome.success {
            return Ok(());
        }
        return Err(HookError::Exec {
            command,
            container: container.name.clone(),
            pod: pod_name,
            message: outcome.message,
        });
    }
    if let Some(action) = &handler.http_get {
        let get = checks::http_get(action, container, pod_ip).map_err(|e| HookError::Invalid {
            container: container.name.clone(),
            message: e.to_string(),
        })?;
        // Any answer will do: upstream's hook only fails when the request does.
        let timeout = budget.unwrap_or(Duration::from_secs(DEFAULT_GRACE_SECONDS as u64));
        return match checks::http_status(&get, timeout).await {
            Ok(_) => Ok(()),
            Err(message) => Err(HookError::Http {
                path: get.path,
                container: container.name.clone(),
                pod: pod_name,
                message,
            }),
        };
    }
    if let Some(sleep) = &handler.sleep {
        let asked = Duration::from_secs(sleep.seconds.max(0) as u64);
        tokio::time::sleep(budget.map_or(asked, |b| asked.min(b))).await;
        return Ok(());
    }
    Err(HookError::Invalid {
        container: container.name.clone(),
        message: if handler.tcp_socket.is_some() {
            "tcpSocket is not supported as a lifecycle handler".to_owned()
        } else {
            "the handler has no exec, httpGet or sleep action".to_owned()
        },
    })
}

/// Runs the container's postStart hook, if it has one; on failure records
/// `FailedPostStartHook` and returns the error (the caller kills the container).
pub async fn post_start(
    cri: &CriClient,
    events: &EventRecorder,
    pod: &Pod,
    container: &Container,
    container_id: &str,
    pod_ip: &str,
) -> Result<(), HookError> {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
    else {
        return Ok(());
    };
    let ran = run_handler(cri, pod, container, container_id, pod_ip, handler, None).await;
    if let Err(e) = &ran {
        warn!(pod = ?pod.metadata.name, container = %container.name, error = %e, "postStart hook failed");
        events.record(
            pod,
            Some(&container.name),
            EventType::Warning,
            "FailedPostStartHook",
            &e.to_string(),
        );
    }
    ran
}

/// What to kill and why.
#[derive(Debug)]
pub struct Kill<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container's spec, when the pod still has it (its preStop hook runs).
    pub container: Option<&'a Container>,
    /// Container name (for events).
    pub name: &'a str,
    /// Runtime ID of the attempt.
    pub container_id: &'a str,
    /// The pod IP (for httpGet hooks).
    pub pod_ip: &'a str,
    /// Seconds from now until SIGKILL.
    pub grace_seconds: i64,
    /// The `Killing` event's message, when the kill deserves one.
    pub reason: Option<String>,
}

/// Kills a container: its preStop hook within the grace period, then `StopContainer` with
/// the rest (SIGTERM, SIGKILL when it runs out). Returns once the container has stopped.
pub async fn kill_container(
    cri: &CriClient,
    events: &EventRecorder,
    kill: Kill<'_>,
) -> Result<(), tonic::Status> {
    let began = Instant::now();
    if let Some(message) = &kill.reason {
        events.record(
            kill.pod,
            Some(kill.name),
            EventType::Normal,
            "Killing",
            message,
        );
    }
    let grace = kill.grace_seconds.max(0);
    let pre_stop = kill
        .container
        .and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)));
    if let Some((container, handler)) = pre_stop.filter(|_| grace > 0) {
        let budget = Duration::from_secs(grace as u64);
        let hook = run_handler(
            cri,
            kill.pod,
            container,
            kill.container_id,
            kill.pod_ip,
            handler,
            Some(budget),
        );
        match tokio::time::timeout(budget, hook).await {
            Ok(Ok(())) => debug!(container = %kill.name, "preStop hook done"),
            Ok(Err(e)) => {
                warn!(pod = ?kill.pod.metadata.name, container = %kill.name, error = %e, "preStop hook failed");
                events.record(
                    kill.pod,
                    Some(kill.name),
                    EventType::Warning,
                    "FailedPreStopHook",
                    &e.to_string(),
                );
            }
            Err(_) => {
                let message = format!(
                    "PreStop hook for Container {:?} did not complete within the grace period of {grace}s",
                    kill.name
                );
                events.record(
                    kill.pod,
                    Some(kill.name),
                    EventType::Warning,
                    "FailedPreStopHook",
                    &message,
                );
            }
        }
    }
    let remaining = if grace == 0 {
        0
    } else {
        (grace - began.elapsed().as_secs() as i64).max(MINIMUM_GRACE_SECONDS)
    };
    info!(pod = ?kill.pod.metadata.name, container = %kill.name, grace = remaining, "stopping container");
    let mut cri = cri.clone();
    cri.runtime()
        .stop_container(StopContainerRequest {
            container_id: kill.container_id.to_owned(),
            timeout: remaining,
        })
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_grace_period_comes_from_the_deletion_then_the_spec_then_thirty_seconds() {
        assert_eq!(grace_seconds(&pod(serde_json::json!({}))), 30);
        assert_eq!(
            grace_seconds(&pod(serde_json::json!({"spec": {"containers": [],
                "terminationGracePeriodSeconds": 3}}))),
            3
        );
        assert_eq!(
            grace_seconds(&pod(
                serde_json::json!({"metadata": {"deletionGracePeriodSeconds": 0},
                "spec": {"containers": [], "terminationGracePeriodSeconds": 3}})
            )),
            0
        );
    }
}
