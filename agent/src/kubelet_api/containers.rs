//! Which container instance a log request means: the pod's reported status names the
//! current instance (running, or the last that ended) and the previous one
//! (`lastState.terminated`), as upstream kubelet's `validateContainerLogStatus` reads them.
//!
//! Owns that choice and its error messages (the kubelet answers 400 with them); it must
//! not read files or call the runtime.
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Why no container instance has logs to show.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NoLogs {
    /// `previous` was asked but no earlier instance ended.
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
    /// The container ended and its instance is gone.
    #[error("container {container:?} in pod {pod:?} is terminated")]
    Terminated {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
    /// The container has not started yet.
    #[error("container {container:?} in pod {pod:?} is waiting to start: {reason}")]
    Waiting {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
        /// What it waits for.
        reason: String,
    },
    /// Nothing is known of the container yet.
    #[error("container {container:?} in pod {pod:?} is waiting to start - no logs yet")]
    NotStarted {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
}

/// Whether `container` is one of the pod's containers (init, regular or ephemeral).
pub fn has_container(pod: &Pod, container: &str) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == container)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
}

fn status_of<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    [
        &status.container_statuses,
        &status.init_container_statuses,
        &status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|s| s.name == container)
}

/// The runtime's id in a status's `containerID` (`containerd://ID` → `ID`).
fn runtime_id(container_id: &str) -> Option<String> {
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id);
    (!id.is_empty()).then(|| id.to_owned())
}

/// The runtime id of the running instance of `container`, if it runs.
pub fn running_instance(pod: &Pod, container: &str) -> Option<String> {
    let status = status_of(pod, container)?;
    status.state.as_ref()?.running.as_ref()?;
    runtime_id(status.container_id.as_deref()?)
}

/// The runtime id of the instance of `container` whose logs are asked for.
pub fn instance_for_logs(pod: &Pod, container: &str, previous: bool) -> Result<String, NoLogs> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let names = || (container.to_owned(), pod_name.clone());
    let status = status_of(pod, container);
    let state = status.and_then(|s| s.state.as_ref());
    let last_terminated = status
        .and_then(|s| s.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.container_id.as_deref())
        .and_then(runtime_id);
    if previous {
        let (container, pod) = names();
        return last_terminated.ok_or(NoLogs::NoPrevious { container, pod });
    }
    if state.and_then(|s| s.running.as_ref()).is_some() {
        if let Some(id) = status
            .and_then(|s| s.container_id.as_deref())
            .and_then(runtime_id)
        {
            return Ok(id);
        }
    }
    if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
        let (container, pod) = names();
        return terminated
            .container_id
            .as_deref()
            .and_then(runtime_id)
            .or(last_terminated)
            .ok_or(NoLogs::Terminated { container, pod });
    }
    if let Some(id) = last_terminated {
        return Ok(id);
    }
    let (container, pod) = names();
    match state.and_then(|s| s.waiting.as_ref()) {
        Some(waiting) => {
            let reason = match waiting.reason.as_deref().unwrap_or_default() {
                "ErrImagePull" => "image can't be pulled".to_owned(),
                "ImagePullBackOff" => "trying and failing to pull image".to_owned(),
                other => other.to_owned(),
            };
            Err(NoLogs::Waiting {
                container,
                pod,
                reason,
            })
        }
        None => Err(NoLogs::NotStarted { container, pod }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]},
            "status": {"containerStatuses": statuses},
        }))
        .unwrap_or_default()
    }

    #[test]
    fn the_running_instance_is_the_current_one() {
        let p = pod(
            json!([{"name": "app", "image": "i", "imageID": "", "ready": true,
            "restartCount": 1, "containerID": "containerd://new",
            "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://old"}}}]),
        );
        assert_eq!(instance_for_logs(&p, "app", false), Ok("new".to_owned()));
        assert_eq!(instance_for_logs(&p, "app", true), Ok("old".to_owned()));
        assert!(has_container(&p, "app") && has_container(&p, "init"));
        assert!(!has_container(&p, "other"));
    }

    #[test]
    fn a_crash_looping_container_shows_its_last_instance() {
        let p = pod(
            json!([{"name": "app", "image": "i", "imageID": "", "ready": false,
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://c3"}}}]),
        );
        assert_eq!(instance_for_logs(&p, "app", false), Ok("c3".to_owned()));
    }

    #[test]
    fn no_previous_instance_is_an_error_with_upstreams_message() {
        let p = pod(
            json!([{"name": "app", "image": "i", "imageID": "", "ready": true,
            "restartCount": 0, "containerID": "containerd://c1", "state": {"running": {}}}]),
        );
        let err = instance_for_logs(&p, "app", true);
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("previous terminated container \"app\" in pod \"web\" not found".to_owned())
        );
        let waiting = pod(
            json!([{"name": "app", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]),
        );
        assert_eq!(
            instance_for_logs(&waiting, "app", false).map_err(|e| e.to_string()),
            Err(
                "container \"app\" in pod \"web\" is waiting to start: ContainerCreating"
                    .to_owned()
            )
        );
        assert!(matches!(
            instance_for_logs(&pod(json!([])), "app", false),
            Err(NoLogs::NotStarted { .. })
        ));
    }
}
