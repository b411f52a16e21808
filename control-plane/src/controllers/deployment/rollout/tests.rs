//! Unit tests of the Deployment arithmetic: every number is checked against what upstream's
//! controller computes for the same inputs.
use super::*;
use k8s_openapi::{
    api::{
        apps::v1::{
            DeploymentSpec, DeploymentStrategy, ReplicaSetCondition, ReplicaSetSpec,
            ReplicaSetStatus, RollingUpdateDeployment,
        },
        core::v1::{Container, PodSpec},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};

fn time(seconds: i64) -> Time {
    Time(Timestamp::new(seconds, 0).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn pod_template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".to_owned(),
                image: Some(image.to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            template: pod_template("nginx:2"),
            progress_deadline_seconds: Some(600),
            revision_history_limit: Some(10),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn int(n: i32) -> IntOrString {
    IntOrString::Int(n)
}

fn percent(text: &str) -> IntOrString {
    IntOrString::String(text.to_owned())
}

fn rs(name: &str, replicas: i32, available: i32, created: i64) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            creation_timestamp: Some(time(created)),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            template: Some(pod_template(name)),
            ..ReplicaSetSpec::default()
        }),
        status: Some(ReplicaSetStatus {
            replicas,
            available_replicas: Some(available),
            ready_replicas: Some(available),
            ..ReplicaSetStatus::default()
        }),
    }
}

fn annotated(mut set: ReplicaSet, desired: i32, max: i32) -> ReplicaSet {
    set_replicas_annotations(&mut set, desired, max);
    set
}

#[test]
fn percentages_round_surge_up_and_unavailable_down() {
    assert_eq!(scaled_value(&percent("25%"), 10, true), Some(3));
    assert_eq!(scaled_value(&percent("25%"), 10, false), Some(2));
    assert_eq!(scaled_value(&percent("25%"), 4, true), Some(1));
    assert_eq!(scaled_value(&percent("0%"), 4, true), Some(0));
    assert_eq!(scaled_value(&percent("150%"), 3, false), Some(4));
    assert_eq!(scaled_value(&int(7), 3, false), Some(7));
    assert_eq!(scaled_value(&percent("25"), 10, true), None);
    assert_eq!(scaled_value(&percent("x%"), 10, true), None);
    assert_eq!(
        resolve_fenceposts(Some(&percent("25%")), Some(&percent("25%")), 3),
        (1, 0)
    );
    // Both zero: one may be unavailable, or nothing could ever move.
    assert_eq!(
        resolve_fenceposts(Some(&int(0)), Some(&percent("10%")), 3),
        (0, 1)
    );
    assert_eq!(resolve_fenceposts(None, None, 3), (0, 1));
    let d = deployment(3, int(1), int(5));
    assert_eq!(max_surge(&d), 1);
    assert_eq!(max_unavailable(&d), 3, "never more than the replicas");
}

#[test]
fn recreate_has_no_surge_and_no_unavailability_budget() {
    let mut d = deployment(3, int(1), int(1));
    if let Some(strategy) = d.spec.as_mut().and_then(|s| s.strategy.as_mut()) {
        strategy.type_ = Some("Recreate".to_owned());
    }
    assert!(!is_rolling(&d));
    assert_eq!(max_surge(&d), 0);
    assert_eq!(max_unavailable(&d), 0);
    assert_eq!(new_rs_replicas(&d, 3, 0), 3);
}

#[test]
fn a_new_replica_set_starts_within_max_surge() {
    let d = deployment(3, int(1), int(0));
    assert_eq!(new_rs_replicas(&d, 3, 0), 1, "3 old + 1 surge");
    assert_eq!(new_rs_replicas(&d, 4, 1), 1, "at the surge limit");
    assert_eq!(new_rs_replicas(&d, 2, 2), 3, "never above replicas");
    let first = deployment(3, percent("25%"), percent("25%"));
    assert_eq!(
        new_rs_replicas(&first, 0, 0),
        3,
        "a first rollout starts everything"
    );
}

#[test]
fn a_rolling_update_with_surge_one_and_no_unavailability_steps_one_pod_at_a_time() {
    let d = deployment(3, int(1), int(0));
    let old = rs("old", 3, 3, 1);
    let new = rs("new", 0, 0, 2);
    // Step 1: the new ReplicaSet surges to 1; nothing old may go yet.
    assert_eq!(rolling_new_size(&d, &new, &[&old, &new]), Some(1));
    let new = rs("new", 1, 0, 2);
    assert!(rolling_old_steps(&d, &new, std::slice::from_ref(&old)).is_empty());
    // Step 2: the new pod is available: one old pod goes.
    let new = rs("new", 1, 1, 2);
    assert_eq!(
        rolling_old_steps(&d, &new, std::slice::from_ref(&old)),
        [ScaleStep {
            name: "old".to_owned(),
            to: 2,
            operation: None
        }]
    );
    // An old ReplicaSet whose status still shows the pods it was scaled down from does not
    // count them as available.
    let stale = rs("old", 2, 3, 1);
    assert!(rolling_old_steps(&d, &new, std::slice::from_ref(&stale)).is_empty());
}

#[test]
fn unhealthy_old_pods_are_removed_first() {
    let d = deployment(4, int(0), int(1));
    let new = rs("new", 0, 0, 3);
    let old_broken = rs("broken", 2, 0, 1);
    let old_good = rs("good", 2, 2, 2);
    let steps = rolling_old_steps(&d, &new, &[old_broken, old_good]);
    // 4 pods of which 3 must remain: one may go, and it is an unavailable one; then 2
    // available pods remain, fewer than 3: no healthy pod goes.
    assert_eq!(
        steps,
        [ScaleStep {
            name: "broken".to_owned(),
            to: 1,
            operation: None
        }]
    );
}

#[test]
fn scaling_a_single_active_replica_set_takes_everything() {
    let d = deployment(5, int(1), int(0));
    let only = annotated(rs("only", 3, 3, 1), 3, 4);
    assert!(is_scaling_event(&d, std::slice::from_ref(&only)));
    assert_eq!(
        scale_plan(&d, Some(&only), &[rs("empty", 0, 0, 0)]),
        [ScaleStep {
            name: "only".to_owned(),
            to: 5,
            operation: None
        }]
    );
    assert!(!is_scaling_event(&deployment(3, int(1), int(0)), &[only]));
}

#[test]
fn scaling_during_a_rollout_is_proportional() {
    // 10 replicas mid-rollout (8 old, 5 new = 13 = 10 + surge 3), scaled to 20 (surge 5):
    // 12 more pods are allowed, split by size.
    let d = deployment(20, percent("25%"), percent("25%"));
    let old = annotated(rs("old", 8, 8, 1), 10, 13);
    let new = annotated(rs("new", 5, 0, 2), 10, 13);
    let plan = scale_plan(&d, Some(&new), std::slice::from_ref(&old));
    let size = |name: &str| plan.iter().find(|s| s.name == name).map(|s| s.to);
    assert_eq!(size("old"), Some(15));
    assert_eq!(size("new"), Some(10));
    assert_eq!(plan.iter().map(|s| s.to).sum::<i32>(), 25);
    assert!(plan.iter().all(|s| s.operation == Some("up")));
    // And back down to 5 (surge 2): 7 in all, the larger one absorbing the leftover.
    let d = deployment(5, percent("25%"), percent("25%"));
    let old = annotated(rs("old", 15, 15, 1), 20, 25);
    let new = annotated(rs("new", 10, 0, 2), 20, 25);
    let plan = scale_plan(&d, Some(&new), std::slice::from_ref(&old));
    assert_eq!(plan.iter().map(|s| s.to).sum::<i32>(), 7);
    assert!(plan.iter().all(|s| s.operation == Some("down")));
}

#[test]
fn a_saturated_new_replica_set_empties_the_old_ones() {
    let d = deployment(3, int(1), int(0));
    let new = annotated(rs("new", 3, 3, 2), 3, 4);
    let old = rs("old", 1, 1, 1);
    assert_eq!(
        scale_plan(&d, Some(&new), &[old]),
        [ScaleStep {
            name: "old".to_owned(),
            to: 0,
            operation: None
        }]
    );
}

#[test]
fn templates_match_ignoring_the_hash_label_and_empty_fields() {
    let mut with_hash = pod_template("nginx:2");
    if let Some(labels) = with_hash.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.insert(HASH_LABEL.to_owned(), "abc".to_owned());
    }
    assert!(equal_ignore_hash(&with_hash, &pod_template("nginx:2")));
    assert!(!equal_ignore_hash(&with_hash, &pod_template("nginx:3")));
    let mut with_empty = pod_template("nginx:2");
    if let Some(spec) = with_empty.spec.as_mut() {
        spec.volumes = Some(Vec::new());
    }
    assert!(equal_ignore_hash(&with_empty, &pod_template("nginx:2")));
    let d = deployment(3, int(1), int(0));
    let mut sets = vec![
        rs("nginx:1", 1, 1, 1),
        rs("nginx:2", 0, 0, 5),
        rs("nginx:2", 0, 0, 3),
    ];
    sets[1].metadata.name = Some("newer".to_owned());
    sets[2].metadata.name = Some("older".to_owned());
    assert_eq!(find_new(&d, &sets), Some(2), "the oldest matching one");
}

#[test]
fn revisions_move_forward_and_a_rollback_keeps_the_old_numbers() {
    let mut d = deployment(3, int(1), int(0));
    d.metadata.annotations = Some(BTreeMap::from([
        (
            "kubernetes.io/change-cause".to_owned(),
            "set image".to_owned(),
        ),
        (REVISION.to_owned(), "9".to_owned()),
        (
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{}".to_owned(),
        ),
    ]));
    let (fresh, changed) = new_rs_annotations(&d, None, 1, false);
    assert!(changed);
    assert_eq!(fresh.get(REVISION).map(String::as_str), Some("1"));
    assert_eq!(
        fresh.get("kubernetes.io/change-cause").map(String::as_str),
        Some("set image")
    );
    assert_eq!(fresh.get(DESIRED_REPLICAS).map(String::as_str), Some("3"));
    assert_eq!(fresh.get(MAX_REPLICAS).map(String::as_str), Some("4"));
    assert!(!fresh.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    // Nothing to do the second time.
    let (same, changed) = new_rs_annotations(&d, Some(&fresh), 1, true);
    assert!(!changed);
    assert_eq!(same, fresh);
    // Rolled back to: revision 1 becomes 3, history "1"; then 5 with history "1,3".
    let (rolled, changed) = new_rs_annotations(&d, Some(&fresh), 3, true);
    assert!(changed);
    assert_eq!(rolled.get(REVISION).map(String::as_str), Some("3"));
    assert_eq!(rolled.get(REVISION_HISTORY).map(String::as_str), Some("1"));
    let (again, _) = new_rs_annotations(&d, Some(&rolled), 5, true);
    assert_eq!(again.get(REVISION_HISTORY).map(String::as_str), Some("1,3"));
    // A higher revision is never lowered.
    let (kept, _) = new_rs_annotations(&d, Some(&again), 2, true);
    assert_eq!(kept.get(REVISION).map(String::as_str), Some("5"));
}

#[test]
fn history_beyond_the_limit_goes_lowest_revision_first_when_empty() {
    let mut d = deployment(3, int(1), int(0));
    if let Some(spec) = d.spec.as_mut() {
        spec.revision_history_limit = Some(1);
    }
    let with_revision = |name: &str, replicas: i32, revision: i64| {
        let mut set = rs(name, replicas, replicas, revision);
        set.metadata.annotations = Some(BTreeMap::from([(
            REVISION.to_owned(),
            revision.to_string(),
        )]));
        set
    };
    let olds = [
        with_revision("r2", 0, 2),
        with_revision("r1", 0, 1),
        with_revision("r3", 0, 3),
    ];
    assert_eq!(history_to_delete(&d, &olds), ["r1", "r2"]);
    // A ReplicaSet that still has pods is kept.
    let olds = [
        with_revision("r2", 0, 2),
        with_revision("r1", 1, 1),
        with_revision("r3", 0, 3),
    ];
    assert_eq!(history_to_delete(&d, &olds), ["r2"]);
}

#[test]
fn conditions_follow_the_rollout() {
    let now = time(1_000);
    let mut d = deployment(2, int(1), int(0));
    let new = rs("web-new", 2, 1, 2);
    let old = rs("web-old", 1, 1, 1);
    let status = rollout_status(&d, &[&old, &new], Some(&new), &now);
    assert_eq!(status.replicas, Some(3));
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(status.unavailable_replicas, Some(1));
    let available = condition(Some(&status), AVAILABLE).cloned();
    assert_eq!(available.as_ref().map(|c| c.status.as_str()), Some("True"));
    let progressing = condition(Some(&status), PROGRESSING).cloned();
    assert_eq!(
        progressing.and_then(|c| c.reason).as_deref(),
        Some(RS_UPDATED)
    );
    // Done: NewReplicaSetAvailable.
    d.status = Some(status);
    let done = rs("web-new", 2, 2, 2);
    let status = rollout_status(&d, &[&done], Some(&done), &time(1_010));
    assert!(deployment_complete(&d, &status));
    let progressing = condition(Some(&status), PROGRESSING).cloned();
    assert_eq!(
        progressing.and_then(|c| c.reason).as_deref(),
        Some(NEW_RS_AVAILABLE)
    );
    assert_eq!(progress_check_after(&d, &status, 1_010), None);
}

#[test]
fn no_progress_past_the_deadline_times_out() {
    let mut d = deployment(2, int(1), int(0));
    if let Some(spec) = d.spec.as_mut() {
        spec.progress_deadline_seconds = Some(30);
    }
    let stuck = rs("web-new", 2, 0, 2);
    let first = rollout_status(&d, &[&stuck], Some(&stuck), &time(100));
    d.status = Some(first);
    // Nothing changed: no progress, and the deadline is ahead.
    let status = rollout_status(&d, &[&stuck], Some(&stuck), &time(120));
    let reason =
        |s: &DeploymentStatus| condition(Some(s), PROGRESSING).and_then(|c| c.reason.clone());
    assert_eq!(reason(&status).as_deref(), Some(RS_UPDATED));
    assert_eq!(
        progress_check_after(&d, &status, 120),
        Some(Duration::from_secs(10))
    );
    let status = rollout_status(&d, &[&stuck], Some(&stuck), &time(131));
    assert_eq!(reason(&status).as_deref(), Some(TIMED_OUT));
    let timed_out = condition(Some(&status), PROGRESSING).cloned();
    assert_eq!(timed_out.map(|c| c.status), Some("False".to_owned()));
}

#[test]
fn pausing_and_resuming_show_in_progressing() {
    let now = time(5);
    let mut d = deployment(2, int(1), int(0));
    assert!(paused_condition(&d, &now).is_none());
    if let Some(spec) = d.spec.as_mut() {
        spec.paused = Some(true);
    }
    let paused = paused_condition(&d, &now);
    assert_eq!(
        paused.as_ref().and_then(|c| c.reason.as_deref()),
        Some(PAUSED)
    );
    assert_eq!(paused.as_ref().map(|c| c.status.as_str()), Some("Unknown"));
    let mut status = DeploymentStatus::default();
    if let Some(paused) = paused {
        set_condition(&mut status, paused);
    }
    d.status = Some(status);
    assert!(paused_condition(&d, &now).is_none(), "already shown");
    if let Some(spec) = d.spec.as_mut() {
        spec.paused = Some(false);
    }
    let resumed = paused_condition(&d, &now);
    assert_eq!(resumed.and_then(|c| c.reason).as_deref(), Some(RESUMED));
}

#[test]
fn replica_set_failures_surface_on_the_deployment() {
    let d = deployment(1, int(1), int(0));
    let mut failing = rs("web-new", 1, 0, 2);
    if let Some(status) = failing.status.as_mut() {
        status.conditions = Some(vec![ReplicaSetCondition {
            type_: REPLICA_FAILURE.to_owned(),
            status: "True".to_owned(),
            reason: Some("FailedCreate".to_owned()),
            message: Some("quota".to_owned()),
            last_transition_time: Some(time(1)),
        }]);
    }
    let status = rollout_status(&d, &[&failing], Some(&failing), &time(2));
    let failure = condition(Some(&status), REPLICA_FAILURE).cloned();
    assert_eq!(
        failure.and_then(|c| c.reason).as_deref(),
        Some("FailedCreate")
    );
}
