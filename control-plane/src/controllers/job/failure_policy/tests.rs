//! Unit tests of the pod failure policy and the per-index backoff.
use super::*;
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{
            JobSpec, JobStatus, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
        },
        core::v1::{
            ContainerState, ContainerStateTerminated, PodCondition, PodSpec, PodStatus,
            PodTemplateSpec,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};

use crate::controllers::job::plan::{pod_for, COMPLETION_INDEX};

fn time(seconds: i64) -> Time {
    Time(Timestamp::new(seconds, 0).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn exit_rule(
    action: &str,
    container: Option<&str>,
    operator: &str,
    values: &[i32],
) -> PodFailurePolicyRule {
    PodFailurePolicyRule {
        action: action.to_owned(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: container.map(str::to_owned),
            operator: operator.to_owned(),
            values: values.to_vec(),
        }),
        on_pod_conditions: None,
    }
}

fn condition_rule(action: &str, kind: &str, status: &str) -> PodFailurePolicyRule {
    PodFailurePolicyRule {
        action: action.to_owned(),
        on_exit_codes: None,
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
            type_: kind.to_owned(),
            status: status.to_owned(),
        }]),
    }
}

fn job(rules: Vec<PodFailurePolicyRule>, per_index: Option<i32>) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some("batch".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("job-uid".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            completions: Some(4),
            parallelism: Some(2),
            completion_mode: Some("Indexed".to_owned()),
            backoff_limit_per_index: per_index,
            max_failed_indexes: Some(1),
            pod_failure_policy: (!rules.is_empty()).then_some(PodFailurePolicy { rules }),
            pod_replacement_policy: Some("Failed".to_owned()),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// A failed pod of `index` whose containers exited with these codes.
fn failed(j: &Job, uid: &str, index: i32, exits: &[(&str, i32)], finished: i64) -> CachedPod {
    let mut p = pod_for(j, Some(index));
    p.metadata.uid = Some(uid.to_owned());
    p.metadata.name = Some(format!("batch-{uid}"));
    p.status = Some(PodStatus {
        phase: Some("Failed".to_owned()),
        container_statuses: Some(
            exits
                .iter()
                .map(|(name, code)| ContainerStatus {
                    name: (*name).to_owned(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: *code,
                            finished_at: Some(time(finished)),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                })
                .collect(),
        ),
        ..PodStatus::default()
    });
    CachedPod::from(p)
}

fn with_condition(mut p: CachedPod, kind: &str) -> CachedPod {
    if let Some(status) = p.status.as_mut() {
        status.conditions = Some(vec![PodCondition {
            type_: kind.to_owned(),
            status: "True".to_owned(),
            ..PodCondition::default()
        }]);
    }
    p
}

fn with_counts(mut p: CachedPod, counted: i32, ignored: i32) -> CachedPod {
    let annotations = p.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(INDEX_FAILURE_COUNT.to_owned(), counted.to_string());
    annotations.insert(INDEX_IGNORED_FAILURE_COUNT.to_owned(), ignored.to_string());
    p
}

#[test]
fn exit_code_rules_match_by_operator_and_container_in_order() {
    let j = job(
        vec![
            exit_rule("FailJob", Some("main"), "In", &[42]),
            exit_rule("Ignore", None, "In", &[3, 4]),
            exit_rule("Count", Some("side"), "NotIn", &[0, 1]),
        ],
        None,
    );
    let policy = policy(&j);
    let fatal = failed(&j, "a", 0, &[("main", 42)], 10);
    assert_eq!(
        match_pod(policy, &fatal),
        Some(Action::FailJob(
            "Container main for pod default/batch-a failed with exit code 42 matching FailJob rule at index 0"
                .to_owned()
        ))
    );
    // 42 in another container: not the FailJob rule (it names `main`); NotIn on `side`.
    assert_eq!(
        match_pod(policy, &failed(&j, "b", 0, &[("side", 42)], 10)),
        Some(Action::Count)
    );
    assert_eq!(
        match_pod(policy, &failed(&j, "c", 0, &[("main", 4)], 10)),
        Some(Action::Ignore)
    );
    // Exit code 0 never matches, even NotIn; no rule matched at all.
    assert_eq!(
        match_pod(policy, &failed(&j, "d", 0, &[("side", 0), ("main", 1)], 10)),
        None
    );
    assert!(counts_toward_backoff(
        &j,
        &failed(&j, "d", 0, &[("main", 1)], 10)
    ));
    assert!(!counts_toward_backoff(
        &j,
        &failed(&j, "e", 0, &[("main", 3)], 10)
    ));
    // An unknown action is skipped; the next rule applies.
    let unknown = job(
        vec![
            exit_rule("Retry", None, "In", &[5]),
            exit_rule("Ignore", None, "In", &[5]),
        ],
        None,
    );
    assert_eq!(
        match_pod(policy_of(&unknown), &failed(&j, "f", 0, &[("main", 5)], 10)),
        Some(Action::Ignore)
    );
    // No policy: nothing matches and every failure counts.
    let plain = job(Vec::new(), None);
    assert_eq!(match_pod(policy_of(&plain), &fatal), None);
    assert!(counts_toward_backoff(&plain, &fatal));
}

fn policy_of(j: &Job) -> Option<&PodFailurePolicy> {
    policy(j)
}

#[test]
fn condition_rules_match_type_and_status_defaulting_to_true() {
    let j = job(
        vec![
            condition_rule("Ignore", "DisruptionTarget", ""),
            condition_rule("FailJob", "ConfigIssue", "True"),
        ],
        None,
    );
    let evicted = with_condition(failed(&j, "a", 1, &[("main", 137)], 10), "DisruptionTarget");
    assert_eq!(match_pod(policy(&j), &evicted), Some(Action::Ignore));
    let broken = with_condition(failed(&j, "b", 1, &[], 10), "ConfigIssue");
    assert_eq!(
        match_pod(policy(&j), &broken),
        Some(Action::FailJob(
            "Pod default/batch-b has condition ConfigIssue matching FailJob rule at index 1"
                .to_owned()
        ))
    );
    let pods = [Arc::new(evicted.clone()), Arc::new(broken)];
    assert!(fail_job_message(&j, &pods).is_some_and(|m| m.contains("ConfigIssue")));
    assert_eq!(fail_job_message(&j, &pods[..1]), None);
    // A running pod is not failed, whatever its conditions.
    let mut running = evicted;
    if let Some(s) = running.status.as_mut() {
        s.phase = Some("Running".to_owned());
        s.conditions = Some(vec![PodCondition {
            type_: "ConfigIssue".to_owned(),
            status: "True".to_owned(),
            ..PodCondition::default()
        }]);
    }
    assert_eq!(fail_job_message(&j, &[Arc::new(running)]), None);
}

#[test]
fn indexes_fail_on_fail_index_or_when_their_backoff_limit_is_used_up() {
    let j = job(
        vec![
            exit_rule("FailIndex", None, "In", &[42]),
            exit_rule("Ignore", None, "In", &[3]),
        ],
        Some(1),
    );
    assert!(is_index_failed(
        &j,
        &failed(&j, "a", 0, &[("main", 42)], 10)
    ));
    // First counted failure of the index (count 0 < 1): retried.
    assert!(!is_index_failed(
        &j,
        &failed(&j, "b", 1, &[("main", 1)], 10)
    ));
    // The replacement (count 1) fails too: the index failed.
    assert!(is_index_failed(
        &j,
        &with_counts(failed(&j, "c", 1, &[("main", 1)], 10), 1, 0)
    ));
    // Ignored failures never fail the index.
    assert!(!is_index_failed(
        &j,
        &with_counts(failed(&j, "d", 2, &[("main", 3)], 10), 5, 0)
    ));
    // Without backoffLimitPerIndex there are no failed indexes.
    let global = job(vec![exit_rule("FailIndex", None, "In", &[42])], None);
    assert!(!is_index_failed(
        &global,
        &failed(&global, "e", 0, &[("main", 42)], 10)
    ));
    assert_eq!(failed_indexes(&global, &[]), None);

    // status.failedIndexes plus newly failed indexes; garbage annotations count as 0.
    let mut j2 = j.clone();
    j2.status = Some(JobStatus {
        failed_indexes: Some("3".to_owned()),
        ..JobStatus::default()
    });
    let mut garbage = failed(&j2, "f", 2, &[("main", 1)], 10);
    garbage
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INDEX_FAILURE_COUNT.to_owned(), "-7".to_owned());
    let pods = [
        Arc::new(failed(&j2, "a", 0, &[("main", 42)], 10)),
        Arc::new(garbage),
    ];
    assert_eq!(
        failed_indexes(&j2, &pods).map(|i| i.to_string()),
        Some("0,3".to_owned())
    );
    let failed_set = Intervals::from_indexes([0, 3]);
    let now = time(100);
    let condition = index_failure_condition(&j2, Some(&failed_set), &Intervals::default(), &now);
    assert_eq!(
        condition.and_then(|c| c.reason),
        Some(MAX_FAILED_INDEXES_EXCEEDED.to_owned())
    );
    let one = Intervals::from_indexes([3]);
    let mut lenient = j2.clone();
    if let Some(spec) = lenient.spec.as_mut() {
        spec.max_failed_indexes = None;
    }
    assert!(
        index_failure_condition(&lenient, Some(&one), &Intervals::from_indexes([0, 1]), &now)
            .is_none()
    );
    assert_eq!(
        index_failure_condition(
            &lenient,
            Some(&one),
            &Intervals::from_indexes([0, 1, 2]),
            &now
        )
        .and_then(|c| c.reason),
        Some(FAILED_INDEXES.to_owned())
    );
}

#[test]
fn the_last_failure_of_a_waiting_index_is_held_for_its_replacement() {
    let j = job(vec![exit_rule("Ignore", None, "In", &[3])], Some(2));
    let first = Arc::new(failed(&j, "a", 0, &[("main", 1)], 10));
    let second = Arc::new(with_counts(failed(&j, "b", 0, &[("main", 3)], 20), 1, 0));
    let done_index = Arc::new(failed(&j, "c", 1, &[("main", 1)], 10));
    let mut running = pod_for(&j, Some(2));
    running.metadata.uid = Some("r".to_owned());
    let running = Arc::new(CachedPod::from(running));
    let replaced_index = Arc::new(failed(&j, "d", 2, &[("main", 1)], 10));
    let pods = [
        first.clone(),
        second.clone(),
        done_index,
        running.clone(),
        replaced_index,
    ];
    let held = delayed_deletions(
        &j,
        &pods,
        &[running],
        &HashSet::new(),
        &Intervals::from_indexes([1]),
        &Intervals::default(),
        30,
    );
    // Index 0: the later failure; 1 succeeded; 2 has an active replacement.
    assert_eq!(held.len(), 1);
    assert_eq!(
        held.get(&0).and_then(|p| p.metadata.uid.as_deref()),
        Some("b")
    );
    // The replacement of an ignored failure keeps the counted count, adds an ignored one.
    assert_eq!(new_index_failure_counts(&j, Some(&second)), (1, 1));
    assert_eq!(new_index_failure_counts(&j, Some(&first)), (1, 0));
    assert_eq!(new_index_failure_counts(&j, None), (0, 0));
    let mut replacement = pod_for(&j, Some(0));
    annotate_index_failures(&mut replacement, &j, Some(&second));
    let annotations = replacement.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get(INDEX_FAILURE_COUNT).map(String::as_str),
        Some("1")
    );
    assert_eq!(
        annotations
            .get(INDEX_IGNORED_FAILURE_COUNT)
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        annotations.get(COMPLETION_INDEX).map(String::as_str),
        Some("0")
    );
    // Backoff: 10 s after the first failure, doubled per failure of the index.
    assert_eq!(index_backoff_remaining(None, 30), Duration::ZERO);
    assert_eq!(
        index_backoff_remaining(Some(&first), 14),
        Duration::from_secs(6)
    );
    assert_eq!(index_backoff_remaining(Some(&first), 25), Duration::ZERO);
    // `second` is the index's second failure (one before it): 20 s from its finish at 20.
    assert_eq!(
        index_backoff_remaining(Some(&second), 30),
        Duration::from_secs(10)
    );
    let many = with_counts(failed(&j, "z", 0, &[("main", 1)], 0), 40, 40);
    assert_eq!(
        index_backoff_remaining(Some(&many), 0),
        MAX_POD_FAILURE_BACKOFF
    );
}
