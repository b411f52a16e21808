//! The kubelet's decisions for one pod (kubelet's `computePodActions`), as plain data: make
//! a sandbox, start the next init container or the app containers, restart exited ones as
//! the restart policy says — after the crash-loop backoff (10 s doubling to 5 min, reset
//! after 10 min of running) — or stop a pod that finished.
//!
//! Owns those decisions; the pod worker carries them out against the runtime.
use k8s_openapi::api::core::v1::{Container, Pod};

use super::observed::{ContainerObservation, Observed, RunState};

/// First crash-loop delay.
pub const BACKOFF_INITIAL: i64 = 10;
/// Longest crash-loop delay.
pub const BACKOFF_MAX: i64 = 300;
/// Running this long resets the backoff.
pub const BACKOFF_RESET: i64 = 600;

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a new sandbox (the pod's network comes with it); containers follow next pass.
    CreateSandbox {
        /// Its attempt number.
        attempt: u32,
    },
    /// Create and start a container.
    Start {
        /// Container name.
        name: String,
        /// Whether it is an init container.
        init: bool,
        /// Its attempt number (= restart count).
        attempt: u32,
    },
    /// A container must wait for its backoff: reason CrashLoopBackOff until `until`.
    Backoff {
        /// Container name.
        name: String,
        /// Seconds since the epoch.
        until: i64,
    },
    /// The pod finished: stop its sandbox (keeping containers for logs).
    StopSandbox,
}

/// The delay before restart number `restarts` (1-based) of a container.
pub fn backoff_delay(restarts: u32) -> i64 {
    if restarts <= 1 {
        return 0;
    }
    let exponent = (restarts - 2).min(16);
    (BACKOFF_INITIAL << exponent).min(BACKOFF_MAX)
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// When the next attempt after `last` may start (its finish plus the backoff; the backoff
/// resets when the attempt ran for ten minutes).
fn next_start(last: &ContainerObservation) -> i64 {
    let ran = last.finished_at - last.started_at;
    if ran >= BACKOFF_RESET {
        return last.finished_at;
    }
    last.finished_at + backoff_delay(last.attempt + 1)
}

/// What to do for a container that should be running: start it, wait, or nothing.
fn container_step(
    container: &Container,
    init: bool,
    observed: &Observed,
    policy: &str,
    now: i64,
) -> Option<Action> {
    match observed.container(&container.name) {
        None => Some(Action::Start {
            name: container.name.clone(),
            init,
            attempt: 0,
        }),
        Some(last) if last.state == RunState::Exited => {
            if !should_restart(policy, last.exit_code) {
                return None;
            }
            let at = next_start(last);
            if now < at {
                Some(Action::Backoff {
                    name: container.name.clone(),
                    until: at,
                })
            } else {
                Some(Action::Start {
                    name: container.name.clone(),
                    init,
                    attempt: last.attempt + 1,
                })
            }
        }
        Some(_) => None,
    }
}

/// Whether the pod has finished: every app container exited and none will restart, or an
/// init container failed for good.
pub fn finished(pod: &Pod, observed: &Observed) -> Option<bool> {
    let spec = pod.spec.as_ref()?;
    let policy = restart_policy(pod);
    for init in spec.init_containers.iter().flatten() {
        match observed.container(&init.name) {
            Some(c) if c.state == RunState::Exited && c.exit_code != 0 && policy == "Never" => {
                return Some(false)
            }
            Some(c) if c.state == RunState::Exited && c.exit_code == 0 => {}
            _ if init.restart_policy.as_deref() == Some("Always") => {}
            _ => return None,
        }
    }
    let mut succeeded = true;
    for container in &spec.containers {
        let c = observed.container(&container.name)?;
        if c.state != RunState::Exited || should_restart(policy, c.exit_code) {
            return None;
        }
        succeeded &= c.exit_code == 0;
    }
    Some(succeeded)
}

/// The actions for a pod that is not being deleted.
pub fn plan(pod: &Pod, observed: &Observed, now: i64) -> Vec<Action> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    if finished(pod, observed).is_some() {
        return match &observed.sandbox {
            Some(sandbox) if sandbox.ready => vec![Action::StopSandbox],
            _ => Vec::new(),
        };
    }
    match &observed.sandbox {
        Some(sandbox) if sandbox.ready => {}
        Some(sandbox) => {
            return vec![Action::CreateSandbox {
                attempt: sandbox.attempt + 1,
            }]
        }
        None => return vec![Action::CreateSandbox { attempt: 0 }],
    }
    let policy = restart_policy(pod);
    // Init containers, one at a time, in order (restartable ones keep running alongside).
    for init in spec.init_containers.iter().flatten() {
        let sidecar = init.restart_policy.as_deref() == Some("Always");
        let done = observed
            .container(&init.name)
            .is_some_and(|c| c.state == RunState::Exited && c.exit_code == 0);
        if done && !sidecar {
            continue;
        }
        let step = container_step(
            init,
            true,
            observed,
            if sidecar { "Always" } else { policy },
            now,
        );
        let running = observed
            .container(&init.name)
            .is_some_and(|c| c.state == RunState::Running);
        if sidecar && running {
            continue;
        }
        return step.into_iter().collect();
    }
    spec.containers
        .iter()
        .filter_map(|c| container_step(c, false, observed, policy, now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::observed::SandboxObservation;

    fn pod(policy: &str, init: bool) -> Pod {
        let mut value = serde_json::json!({"spec": {"restartPolicy": policy,
            "containers": [{"name": "app"}]}});
        if init {
            value["spec"]["initContainers"] = serde_json::json!([{"name": "setup"}]);
        }
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ready_sandbox() -> Option<SandboxObservation> {
        Some(SandboxObservation {
            id: "s".into(),
            ready: true,
            ip: Some("10.42.0.2".into()),
            attempt: 0,
        })
    }

    fn exited(code: i32, attempt: u32, started: i64, finished: i64) -> ContainerObservation {
        ContainerObservation {
            id: "c".into(),
            state: RunState::Exited,
            exit_code: code,
            reason: String::new(),
            message: String::new(),
            started_at: started,
            finished_at: finished,
            attempt,
            image: String::new(),
            image_ref: String::new(),
        }
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_then_its_init_then_its_app_containers() {
        let p = pod("Always", true);
        let mut observed = Observed::default();
        assert_eq!(
            plan(&p, &observed, 0),
            [Action::CreateSandbox { attempt: 0 }]
        );
        observed.sandbox = ready_sandbox();
        assert_eq!(
            plan(&p, &observed, 0),
            [Action::Start {
                name: "setup".into(),
                init: true,
                attempt: 0
            }]
        );
        observed
            .containers
            .insert("setup".into(), exited(0, 0, 1, 2));
        assert_eq!(
            plan(&p, &observed, 3),
            [Action::Start {
                name: "app".into(),
                init: false,
                attempt: 0
            }]
        );
    }

    #[test]
    fn crashes_back_off_ten_seconds_doubling_to_five_minutes() {
        assert_eq!(backoff_delay(1), 0);
        assert_eq!(backoff_delay(2), 10);
        assert_eq!(backoff_delay(3), 20);
        assert_eq!(backoff_delay(10), 300);
        let p = pod("Always", false);
        let mut observed = Observed {
            sandbox: ready_sandbox(),
            ..Default::default()
        };
        // First crash: restart at once.
        observed
            .containers
            .insert("app".into(), exited(1, 0, 100, 101));
        assert_eq!(
            plan(&p, &observed, 101),
            [Action::Start {
                name: "app".into(),
                init: false,
                attempt: 1
            }]
        );
        // Second crash: wait 10 s.
        observed
            .containers
            .insert("app".into(), exited(1, 1, 102, 103));
        assert_eq!(
            plan(&p, &observed, 105),
            [Action::Backoff {
                name: "app".into(),
                until: 113
            }]
        );
        assert_eq!(
            plan(&p, &observed, 113),
            [Action::Start {
                name: "app".into(),
                init: false,
                attempt: 2
            }]
        );
        // Ten minutes of running resets the backoff.
        observed
            .containers
            .insert("app".into(), exited(1, 7, 0, 700));
        assert_eq!(
            plan(&p, &observed, 700),
            [Action::Start {
                name: "app".into(),
                init: false,
                attempt: 8
            }]
        );
    }

    #[test]
    fn restart_policies_decide_and_finished_pods_stop_their_sandbox() {
        let mut observed = Observed {
            sandbox: ready_sandbox(),
            ..Default::default()
        };
        observed.containers.insert("app".into(), exited(0, 0, 1, 2));
        assert_eq!(finished(&pod("OnFailure", false), &observed), Some(true));
        assert_eq!(
            plan(&pod("OnFailure", false), &observed, 3),
            [Action::StopSandbox]
        );
        assert_eq!(finished(&pod("Always", false), &observed), None);
        observed.containers.insert("app".into(), exited(2, 0, 1, 2));
        assert_eq!(finished(&pod("Never", false), &observed), Some(false));
        assert_eq!(finished(&pod("OnFailure", false), &observed), None);
        // A failed init container with restartPolicy Never fails the pod.
        let mut observed = Observed {
            sandbox: ready_sandbox(),
            ..Default::default()
        };
        observed
            .containers
            .insert("setup".into(), exited(1, 0, 1, 2));
        assert_eq!(finished(&pod("Never", true), &observed), Some(false));
    }
}
