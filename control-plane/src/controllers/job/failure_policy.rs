//! How a Job treats its failed pods beyond plain counting (upstream's `pod_failure_policy.go`
//! and the per-index parts of `indexed_job_utils.go` and `backoff_utils.go`):
//! `spec.podFailurePolicy` rules (FailJob, FailIndex, Ignore, Count on container exit codes or
//! pod conditions), and `spec.backoffLimitPerIndex` for Indexed Jobs — the failure count each
//! index carries from pod to pod in an annotation, which indexes failed, which failed pod is
//! kept (its finalizer held) until its replacement exists, and the per-index backoff.
//!
//! Owns these decisions; it must not do I/O.
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement},
        core::v1::{ContainerStatus, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

use super::plan::{
    completion_index, completions, condition, counts_as_failed, finish_time, has_finalizer,
    Intervals, FAILURE_TARGET, MAX_POD_FAILURE_BACKOFF, POD_FAILURE_BACKOFF,
};
use crate::client::CachedPod;

/// The annotation with the counted failures of the index before this pod.
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// The annotation with the ignored failures of the index before this pod.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

/// Condition reason: a FailJob rule matched.
pub const POD_FAILURE_POLICY: &str = "PodFailurePolicy";
/// Condition reason: more failed indexes than `maxFailedIndexes`.
pub const MAX_FAILED_INDEXES_EXCEEDED: &str = "MaxFailedIndexesExceeded";
/// Condition reason: every index finished and some failed.
pub const FAILED_INDEXES: &str = "FailedIndexes";

/// What a matching rule says about a failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The Job fails, with this message.
    FailJob(String),
    /// The pod's index fails and is not retried.
    FailIndex,
    /// The failure is not counted toward any backoff limit.
    Ignore,
    /// The failure is counted, as without a policy.
    Count,
}

/// Whether a failure with this matched action (or none) counts toward `backoffLimit` and
/// `backoffLimitPerIndex`.
pub fn counts(action: Option<&Action>) -> bool {
    !matches!(action, Some(Action::Ignore))
}

/// The job's policy, if it has one.
pub fn policy(job: &Job) -> Option<&PodFailurePolicy> {
    job.spec.as_ref()?.pod_failure_policy.as_ref()
}

/// The first rule of the policy a failed pod matches, as its action. Rules with an unknown
/// action are skipped, as clients must.
pub fn match_pod(policy: Option<&PodFailurePolicy>, pod: &CachedPod) -> Option<Action> {
    let policy = policy?;
    let status = pod.status.as_ref();
    for (index, rule) in policy.rules.iter().enumerate() {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let fail_job_message = if let Some(requirement) = &rule.on_exit_codes {
            let containers = status.and_then(|s| s.container_statuses.as_deref());
            let init = status.and_then(|s| s.init_container_statuses.as_deref());
            let Some((container, code)) = matching_container(containers, requirement)
                .or_else(|| matching_container(init, requirement))
            else {
                continue;
            };
            format!(
                "Container {container} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {index}",
                rule.action
            )
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
            let matched = conditions.iter().find(|c| {
                patterns.iter().any(|p| {
                    // `status` defaults to True.
                    let wanted = if p.status.is_empty() {
                        "True"
                    } else {
                        &p.status
                    };
                    c.type_ == p.type_ && c.status == wanted
                })
            });
            let Some(condition) = matched else {
                continue;
            };
            format!(
                "Pod {namespace}/{name} has condition {} matching {} rule at index {index}",
                condition.type_, rule.action
            )
        } else {
            continue;
        };
        match rule.action.as_str() {
            "FailJob" => return Some(Action::FailJob(fail_job_message)),
            "FailIndex" => return Some(Action::FailIndex),
            "Ignore" => return Some(Action::Ignore),
            "Count" => return Some(Action::Count),
            _ => continue,
        }
    }
    None
}

/// The first terminated container (name and exit code) with a non-zero exit code the
/// requirement matches.
fn matching_container(
    statuses: Option<&[ContainerStatus]>,
    requirement: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(String, i32)> {
    statuses.into_iter().flatten().find_map(|status| {
        let code = status.state.as_ref()?.terminated.as_ref()?.exit_code;
        let named = requirement
            .container_name
            .as_ref()
            .is_none_or(|n| *n == status.name);
        let listed = requirement.values.contains(&code);
        let operator_matches = match requirement.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            _ => false,
        };
        (named && code != 0 && operator_matches).then(|| (status.name.clone(), code))
    })
}

/// Whether a failed pod's failure counts toward the backoff limits (it matched no Ignore
/// rule).
pub fn counts_toward_backoff(job: &Job, pod: &CachedPod) -> bool {
    counts(match_pod(policy(job), pod).as_ref())
}

/// The message of the first failed pod that matches a FailJob rule.
pub fn fail_job_message(job: &Job, pods: &[Arc<CachedPod>]) -> Option<String> {
    let policy = policy(job)?;
    pods.iter()
        .filter(|p| counts_as_failed(p, job))
        .find_map(|p| match match_pod(Some(policy), p) {
            Some(Action::FailJob(message)) => Some(message),
            _ => None,
        })
}

/// `spec.backoffLimitPerIndex`, for an Indexed Job that sets it.
pub fn backoff_limit_per_index(job: &Job) -> Option<i32> {
    let spec = job.spec.as_ref()?;
    if spec.completion_mode.as_deref() != Some("Indexed") {
        return None;
    }
    spec.backoff_limit_per_index
}

/// `spec.maxFailedIndexes`.
pub fn max_failed_indexes(job: &Job) -> Option<i32> {
    job.spec.as_ref()?.max_failed_indexes
}

/// A counter annotation of the pod: 0 when missing, unparsable or out of range (it is
/// user-editable).
fn annotation_count(pod: &CachedPod, key: &str) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(0)
}

/// The counted failures of the pod's index before it.
pub fn index_failure_count(pod: &CachedPod) -> i32 {
    annotation_count(pod, INDEX_FAILURE_COUNT)
}

/// Every failure of the pod's index before it, counted or ignored.
pub fn index_absolute_failure_count(pod: &CachedPod) -> i32 {
    index_failure_count(pod).saturating_add(annotation_count(pod, INDEX_IGNORED_FAILURE_COUNT))
}

/// Whether the pod's failure fails its index: a FailIndex rule matched, or it was a counted
/// failure and the index had used up its backoff limit.
pub fn is_index_failed(job: &Job, pod: &CachedPod) -> bool {
    let Some(limit) = backoff_limit_per_index(job) else {
        return false;
    };
    if !counts_as_failed(pod, job) {
        return false;
    }
    let action = match_pod(policy(job), pod);
    if action == Some(Action::FailIndex) {
        return true;
    }
    counts(action.as_ref()) && index_failure_count(pod) >= limit
}

/// The failed indexes: those already in `status.failedIndexes` plus the indexes of not yet
/// counted pods that failed them. None unless the Job has `backoffLimitPerIndex`.
pub fn failed_indexes(job: &Job, pods: &[Arc<CachedPod>]) -> Option<Intervals> {
    backoff_limit_per_index(job)?;
    let limit = completions(job).unwrap_or(0);
    let previous = job
        .status
        .as_ref()
        .and_then(|s| s.failed_indexes.as_deref())
        .map(|text| Intervals::parse(text, limit))
        .unwrap_or_default();
    Some(
        previous.with(
            pods.iter()
                .filter(|p| has_finalizer(p) && is_index_failed(job, p))
                .filter_map(|p| completion_index(p))
                .filter(|i| *i < limit),
        ),
    )
}

/// Per index, the failed pod whose finalizer is held until its replacement is created, so the
/// replacement can carry the index's failure counts: the latest failure of each index that
/// neither succeeded, failed, nor has an active pod.
pub fn delayed_deletions(
    job: &Job,
    pods: &[Arc<CachedPod>],
    active: &[Arc<CachedPod>],
    expected_removals: &HashSet<String>,
    succeeded: &Intervals,
    failed: &Intervals,
    now: i64,
) -> BTreeMap<i32, Arc<CachedPod>> {
    let mut delayed: BTreeMap<i32, Arc<CachedPod>> = BTreeMap::new();
    if backoff_limit_per_index(job).is_none() {
        return delayed;
    }
    let limit = completions(job).unwrap_or(0);
    let active_indexes: HashSet<i32> = active.iter().filter_map(|p| completion_index(p)).collect();
    for pod in pods {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if !has_finalizer(pod) || expected_removals.contains(uid) || !counts_as_failed(pod, job) {
            continue;
        }
        let Some(index) = completion_index(pod).filter(|i| *i < limit) else {
            continue;
        };
        if succeeded.has(index) || failed.has(index) || active_indexes.contains(&index) {
            continue;
        }
        let later = delayed.get(&index).is_none_or(|last| {
            index_absolute_failure_count(last) <= index_absolute_failure_count(pod)
                && finish_time(pod, now) >= finish_time(last, now)
        });
        if later {
            delayed.insert(index, pod.clone());
        }
    }
    delayed
}

/// The failure counts (counted, ignored) a pod replacing `replaced` in its index starts with.
pub fn new_index_failure_counts(job: &Job, replaced: Option<&CachedPod>) -> (i32, i32) {
    let Some(replaced) = replaced else {
        return (0, 0);
    };
    let counted = index_failure_count(replaced);
    let ignored = annotation_count(replaced, INDEX_IGNORED_FAILURE_COUNT);
    if counts_toward_backoff(job, replaced) {
        (counted.saturating_add(1), ignored)
    } else {
        (counted, ignored.saturating_add(1))
    }
}

/// Stamps a new pod of an index with the failure counts it inherits from the pod it replaces.
pub fn annotate_index_failures(pod: &mut Pod, job: &Job, replaced: Option<&CachedPod>) {
    let (counted, ignored) = new_index_failure_counts(job, replaced);
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(INDEX_FAILURE_COUNT.to_owned(), counted.to_string());
    if ignored > 0 {
        annotations.insert(INDEX_IGNORED_FAILURE_COUNT.to_owned(), ignored.to_string());
    }
}

/// The FailureTarget condition failed indexes call for: more than `maxFailedIndexes`, or
/// every index finished with some failed.
pub fn index_failure_condition(
    job: &Job,
    failed: Option<&Intervals>,
    succeeded: &Intervals,
    now: &Time,
) -> Option<JobCondition> {
    let failed = failed?.total();
    if max_failed_indexes(job).is_some_and(|max| failed > max) {
        return Some(condition(
            FAILURE_TARGET,
            MAX_FAILED_INDEXES_EXCEEDED,
            "Job has exceeded the specified maximal number of failed indexes",
            now,
        ));
    }
    let completions = completions(job).unwrap_or(0);
    if failed > 0 && failed + succeeded.total() >= completions {
        return Some(condition(
            FAILURE_TARGET,
            FAILED_INDEXES,
            "Job has failed indexes",
            now,
        ));
    }
    None
}

/// How long the index of `last_failed` still waits before a replacement: 10 s doubled per
/// failure of the index (counted or not) after the first, at most 10 min, from its finish.
pub fn index_backoff_remaining(last_failed: Option<&CachedPod>, now: i64) -> Duration {
    let Some(pod) = last_failed else {
        return Duration::ZERO;
    };
    let failures = index_absolute_failure_count(pod).saturating_add(1);
    let mut delay = POD_FAILURE_BACKOFF;
    for _ in 1..failures {
        delay = delay.saturating_mul(2);
        if delay >= MAX_POD_FAILURE_BACKOFF {
            delay = MAX_POD_FAILURE_BACKOFF;
            break;
        }
    }
    let elapsed = now.saturating_sub(finish_time(pod, now)).max(0) as u64;
    delay.saturating_sub(Duration::from_secs(elapsed))
}

#[cfg(test)]
mod tests;
