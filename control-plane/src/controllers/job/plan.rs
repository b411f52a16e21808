//! The Job controller's decisions, as plain functions (upstream's `job_controller.go`,
//! `indexed_job_utils.go`, `backoff_utils.go`): completed-index intervals, which pods count
//! as failed, how many pods to run, which to remove, the pods to create (with their completion
//! index), the pod-failure backoff, and the exactly-once accounting of finished pods through
//! the `batch.kubernetes.io/job-tracking` finalizer and `status.uncountedTerminatedPods`.
//!
//! Owns these decisions; it must not do I/O.
use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods},
        core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};

use super::failure_policy;
use crate::client::CachedPod;
use crate::controllers::pods;

/// The finalizer that keeps a Job's pod around until the Job counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The annotation (and label) with an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable with the completion index.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// At most this many UIDs wait in `uncountedTerminatedPods` (upstream's `MaxUncountedPods`).
pub const MAX_UNCOUNTED: usize = 500;
/// Most pods created or deleted per sync.
pub const MAX_CREATE_DELETE: usize = 500;
/// First delay before replacing a failed pod; doubles per failure.
pub const POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// Longest delay before replacing a failed pod.
pub const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

/// Condition types and reasons (upstream's names).
pub const COMPLETE: &str = "Complete";
/// Terminal failure.
pub const FAILED: &str = "Failed";
/// Failure decided; pods are being terminated.
pub const FAILURE_TARGET: &str = "FailureTarget";
/// Success decided; pods are being terminated.
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
/// The Suspended condition.
pub const SUSPENDED: &str = "Suspended";
/// Too many failed pods.
pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
/// activeDeadlineSeconds passed.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
/// Enough pods succeeded.
pub const COMPLETIONS_REACHED: &str = "CompletionsReached";

/// Completed indexes as sorted, disjoint, inclusive intervals (`1,3-5,7`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(i32, i32)>);

impl Intervals {
    /// Parses `status.completedIndexes`; bad parts and indexes outside `0..completions` are
    /// dropped (it is user-editable input).
    pub fn parse(text: &str, completions: i32) -> Self {
        let mut set = BTreeSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse::<i32>(), b.trim().parse::<i32>()),
                None => (part.parse::<i32>(), part.parse::<i32>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                continue;
            };
            let first = first.max(0);
            let last = last.min(completions - 1);
            if first > last {
                continue;
            }
            set.extend(first..=last);
        }
        Self::from_indexes(set)
    }

    /// Intervals holding exactly these indexes.
    pub fn from_indexes(indexes: impl IntoIterator<Item = i32>) -> Self {
        let sorted: BTreeSet<i32> = indexes.into_iter().collect();
        let mut intervals: Vec<(i32, i32)> = Vec::new();
        for index in sorted {
            match intervals.last_mut() {
                Some(last) if last.1 + 1 == index => last.1 = index,
                _ => intervals.push((index, index)),
            }
        }
        Self(intervals)
    }

    /// These intervals plus more indexes.
    pub fn with(&self, more: impl IntoIterator<Item = i32>) -> Self {
        Self::from_indexes(self.indexes().chain(more))
    }

    /// Every index.
    pub fn indexes(&self) -> impl Iterator<Item = i32> + '_ {
        self.0.iter().flat_map(|&(a, b)| a..=b)
    }

    /// Whether an index is in.
    pub fn has(&self, index: i32) -> bool {
        self.0.iter().any(|&(a, b)| a <= index && index <= b)
    }

    /// How many indexes.
    pub fn total(&self) -> i32 {
        self.0.iter().map(|&(a, b)| b - a + 1).sum()
    }

    /// How many indexes are in both.
    pub fn overlap(&self, other: &Self) -> i32 {
        let (mut i, mut j, mut shared) = (0, 0, 0);
        while let (Some(&(a1, b1)), Some(&(a2, b2))) = (self.0.get(i), other.0.get(j)) {
            shared += (b1.min(b2) - a1.max(a2) + 1).max(0);
            if b1 <= b2 {
                i += 1;
            }
            if b2 <= b1 {
                j += 1;
            }
        }
        shared
    }
}

impl std::fmt::Display for Intervals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else if a + 1 == b {
                    format!("{a},{b}")
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Whether the Job is Indexed.
pub fn is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

/// `spec.completions` (None for a work queue).
pub fn completions(job: &Job) -> Option<i32> {
    job.spec.as_ref().and_then(|s| s.completions)
}

/// `spec.parallelism`.
pub fn parallelism(job: &Job) -> i32 {
    job.spec
        .as_ref()
        .and_then(|s| s.parallelism)
        .unwrap_or(1)
        .max(0)
}

/// `spec.backoffLimit`.
pub fn backoff_limit(job: &Job) -> i32 {
    job.spec.as_ref().and_then(|s| s.backoff_limit).unwrap_or(6)
}

/// Whether `spec.suspend` is set.
pub fn is_suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false)
}

/// Whether failed pods are replaced only once they are terminal (podReplacementPolicy
/// Failed, or a podFailurePolicy).
pub fn replaces_failed_only(job: &Job) -> bool {
    let spec = job.spec.as_ref();
    spec.and_then(|s| s.pod_replacement_policy.as_deref()) == Some("Failed")
        || spec.is_some_and(|s| s.pod_failure_policy.is_some())
}

/// A condition of the Job with status True.
pub fn true_condition<'a>(job: &'a Job, kind: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
}

/// Whether the Job finished (Complete or Failed).
pub fn is_finished(job: &Job) -> bool {
    true_condition(job, COMPLETE).is_some() || true_condition(job, FAILED).is_some()
}

/// The pod's completion index.
pub fn completion_index(pod: &CachedPod) -> Option<i32> {
    let text = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(COMPLETION_INDEX))
        })?;
    text.parse().ok().filter(|i: &i32| *i >= 0)
}

/// Whether the pod carries the tracking finalizer.
pub fn has_finalizer(pod: &CachedPod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

fn phase(pod: &CachedPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Whether the pod counts as failed: Failed, or (unless only failed pods are replaced)
/// deleted before it succeeded — so orphaned pods that never finish count too.
pub fn counts_as_failed(pod: &CachedPod, job: &Job) -> bool {
    if phase(pod) == Some("Failed") {
        return true;
    }
    !replaces_failed_only(job)
        && pod.metadata.deletion_timestamp.is_some()
        && phase(pod) != Some("Succeeded")
}

/// When a pod finished: its containers' latest finish, else when it stopped being Ready, else
/// its deletion, else `now`.
pub fn finish_time(pod: &CachedPod, now: i64) -> i64 {
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_second())
        .max();
    let not_ready = || {
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "False")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second())
    };
    containers
        .or_else(not_ready)
        .or_else(|| {
            pod.metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
        })
        .unwrap_or(now)
}

/// Failures since the last success, for the pod-creation backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failed pods since the last success.
    pub failures: i32,
    /// When the last of them finished.
    pub last_failure: Option<i64>,
}

impl Backoff {
    /// The record after newly counted succeeded and failed pods (their finish times).
    pub fn after(self, succeeded: &[i64], failed: &[i64]) -> Self {
        if succeeded.is_empty() {
            if failed.is_empty() {
                return self;
            }
            return Self {
                failures: self.failures + failed.len() as i32,
                last_failure: failed.iter().copied().max().max(self.last_failure),
            };
        }
        let last_success = succeeded.iter().copied().max().unwrap_or(0);
        let after_success: Vec<i64> = failed
            .iter()
            .copied()
            .filter(|t| *t > last_success)
            .collect();
        Self {
            failures: after_success.len() as i32,
            last_failure: after_success.iter().copied().max(),
        }
    }

    /// How long pod creation still waits at `now`: 10 s doubled per failure after the first,
    /// at most 10 min, counted from the last failure.
    pub fn remaining(&self, now: i64) -> Duration {
        let Some(last) = self.last_failure.filter(|_| self.failures > 0) else {
            return Duration::ZERO;
        };
        let mut delay = POD_FAILURE_BACKOFF;
        for _ in 1..self.failures {
            delay = delay.saturating_mul(2);
            if delay >= MAX_POD_FAILURE_BACKOFF {
                delay = MAX_POD_FAILURE_BACKOFF;
                break;
            }
        }
        let elapsed = Duration::from_secs(now.saturating_sub(last).max(0) as u64);
        delay.saturating_sub(elapsed)
    }
}

/// Pods to run now: parallelism, but never more than the completions still missing; a work
/// queue (no completions) stops starting pods after its first success.
pub fn want_active(job: &Job, succeeded: i32, active: i32) -> i32 {
    match completions(job) {
        None if succeeded > 0 => active,
        None => parallelism(job),
        Some(completions) => (completions - succeeded).clamp(0, parallelism(job)),
    }
}

/// Active pods to remove to get down to `at_least` fewer: for Indexed Jobs first the pods with
/// a missing, out-of-range or repeated index, then in upstream's deletion order.
pub fn pods_for_removal(
    job: &Job,
    active: &[Arc<CachedPod>],
    at_least: usize,
) -> Vec<Arc<CachedPod>> {
    let mut remove = Vec::new();
    let mut left: Vec<Arc<CachedPod>> = Vec::new();
    if is_indexed(job) {
        let limit = completions(job).unwrap_or(0);
        let mut by_index: std::collections::BTreeMap<i32, Vec<Arc<CachedPod>>> =
            std::collections::BTreeMap::new();
        for pod in active {
            match completion_index(pod).filter(|i| *i < limit) {
                Some(index) => by_index.entry(index).or_default().push(pod.clone()),
                None => remove.push(pod.clone()),
            }
        }
        for (_, mut pods) in by_index {
            // Keep the one most worth keeping (last in deletion order).
            pods.sort_by(|a, b| pods::deletion_order(a, b));
            let keep = pods.pop();
            remove.extend(pods);
            left.extend(keep);
        }
    } else {
        left = active.to_vec();
    }
    if remove.len() < at_least {
        left.sort_by(|a, b| pods::deletion_order(a, b));
        let more = at_least - remove.len();
        remove.extend(left.into_iter().take(more));
    }
    remove
}

/// The lowest indexes that are not `done` (succeeded or failed) and have no active pod (nor,
/// when only failed pods are replaced, a terminating one).
pub fn pending_indexes(
    job: &Job,
    done: &Intervals,
    pods: &[Arc<CachedPod>],
    count: usize,
) -> Vec<i32> {
    let only_failed = replaces_failed_only(job);
    let taken: HashSet<i32> = pods
        .iter()
        .filter(|p| {
            pods::is_active(p)
                || (only_failed && p.metadata.deletion_timestamp.is_some() && !pods::is_terminal(p))
        })
        .filter_map(|p| completion_index(p))
        .collect();
    (0..completions(job).unwrap_or(0))
        .filter(|i| !done.has(*i) && !taken.contains(i))
        .take(count)
        .collect()
}

/// The pod to create (with `index` for Indexed Jobs): the template, the tracking finalizer,
/// the index annotation, label, hostname and environment variable.
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.to_owned());
    }
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{name}-");
    if let Some(index) = index {
        annotations.insert(COMPLETION_INDEX.to_owned(), index.to_string());
        labels.insert(COMPLETION_INDEX.to_owned(), index.to_string());
        spec.hostname = Some(format!("{name}-{index}"));
        generate_name = format!("{name}-{index}-");
        let env = EnvVar {
            name: COMPLETION_INDEX_ENV.to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..EnvVarSource::default()
            }),
        };
        let containers = spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut());
        for container in containers {
            let list = container.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                list.push(env.clone());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![pods::controller_reference(job)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Whether the restart counts of an OnFailure Job's running pods reached the backoff limit.
pub fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<CachedPod>]) -> bool {
    let on_failure = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    if !on_failure {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), Some("Running" | "Pending")))
        .flat_map(|p| {
            let status = p.status.as_ref();
            status
                .and_then(|s| s.init_container_statuses.as_ref())
                .into_iter()
                .flatten()
                .chain(
                    status
                        .and_then(|s| s.container_statuses.as_ref())
                        .into_iter()
                        .flatten(),
                )
                .map(|c| c.restart_count)
        })
        .sum();
    let limit = backoff_limit(job);
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// A new condition at `now`.
pub fn condition(kind: &str, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: kind.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Sets a condition to `status` (adding it only when that is True); true when something
/// changed (upstream's `ensureJobConditionStatus`).
pub fn ensure_condition(
    conditions: &mut Vec<JobCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) -> bool {
    if let Some(current) = conditions.iter_mut().find(|c| c.type_ == kind) {
        if current.status == status
            && current.reason.as_deref() == Some(reason)
            && current.message.as_deref() == Some(message)
        {
            return false;
        }
        if current.status != status {
            current.last_transition_time = Some(now.clone());
        }
        current.status = status.to_owned();
        current.reason = Some(reason.to_owned());
        current.message = Some(message.to_owned());
        current.last_probe_time = Some(now.clone());
        return true;
    }
    if status == "True" {
        conditions.push(JobCondition {
            status: status.to_owned(),
            ..condition(kind, reason, message, now)
        });
        return true;
    }
    false
}

fn uncounted(status: &mut JobStatus) -> &mut UncountedTerminatedPods {
    status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default)
}

/// Moves the uncounted pods whose finalizer is gone (not in `with_finalizer`) into the
/// counters; true when the status changed.
pub fn count_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let mut changed = false;
    let lists = uncounted(status);
    let mut moved_succeeded = 0;
    let mut moved_failed = 0;
    if let Some(list) = lists.succeeded.as_mut() {
        let before = list.len();
        list.retain(|uid| with_finalizer.contains(uid));
        moved_succeeded = (before - list.len()) as i32;
    }
    if let Some(list) = lists.failed.as_mut() {
        let before = list.len();
        list.retain(|uid| with_finalizer.contains(uid));
        moved_failed = (before - list.len()) as i32;
    }
    if moved_succeeded > 0 {
        status.succeeded = Some(status.succeeded.unwrap_or(0) + moved_succeeded);
        changed = true;
    }
    if moved_failed > 0 {
        status.failed = Some(status.failed.unwrap_or(0) + moved_failed);
        changed = true;
    }
    changed
}

/// What a sync knows of an Indexed Job's indexes before tracking its finished pods.
#[derive(Debug, Clone, Default)]
pub struct IndexProgress {
    /// Indexes counted as succeeded before this sync (`status.completedIndexes`).
    pub previous_succeeded: Intervals,
    /// Failed indexes, with `backoffLimitPerIndex` only (`status.failedIndexes`).
    pub failed: Option<Intervals>,
    /// UIDs of failed pods whose finalizer is held until their index has a replacement.
    pub held: HashSet<String>,
}

/// What tracking a sync's finished pods calls for.
#[derive(Debug, Default)]
pub struct Tracking {
    /// Pods whose finalizer comes off (after the status holding their UIDs is written).
    pub remove_finalizer: Vec<Arc<CachedPod>>,
    /// Whether the status must be written before finalizers are removed.
    pub needs_flush: bool,
    /// The terminal condition to set once nothing is uncounted or terminating.
    pub terminal: Option<JobCondition>,
}

/// Step one of upstream's `trackJobStatusAndRemoveFinalizers`: counts pods whose finalizer is
/// gone, records finished pods' UIDs (or completed indexes) in `status` before their
/// finalizers come off, and adds the interim FailureTarget / SuccessCriteriaMet condition.
/// `finished` is the condition this sync decided, if any.
#[allow(clippy::too_many_arguments)]
pub fn track(
    job: &Job,
    status: &mut JobStatus,
    pods: &[Arc<CachedPod>],
    expected_removals: &HashSet<String>,
    finished: Option<JobCondition>,
    indexes: &IndexProgress,
    now: &Time,
) -> Tracking {
    let succeeded_indexes = &indexes.previous_succeeded;
    let mut tracking = Tracking::default();
    let with_finalizer: HashSet<String> = pods
        .iter()
        .filter(|p| has_finalizer(p))
        .filter_map(|p| p.metadata.uid.clone())
        .filter(|uid| !expected_removals.contains(uid))
        .collect();
    tracking.needs_flush |= count_uncounted(status, &with_finalizer);
    let indexed = is_indexed(job);
    let limit = completions(job).unwrap_or(0);
    let deleting = job.metadata.deletion_timestamp.is_some();
    let fails_everything = finished
        .as_ref()
        .is_some_and(|c| c.type_ != SUCCESS_CRITERIA_MET);
    let mut new_indexes = Vec::new();
    let mut sorted: Vec<&Arc<CachedPod>> = pods.iter().collect();
    sorted.sort_by_key(|p| completion_index(p).unwrap_or(i32::MAX));
    for pod in sorted {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !has_finalizer(pod) || expected_removals.contains(&uid) {
            continue;
        }
        let failed = counts_as_failed(pod, job);
        let succeeded = phase(pod) == Some("Succeeded");
        if !(deleting || finished.is_some() || succeeded || failed) {
            continue;
        }
        // A failed pod waits for its replacement, which takes over its index's counts.
        if !(deleting || finished.is_some() || succeeded) && indexes.held.contains(&uid) {
            continue;
        }
        tracking.remove_finalizer.push(pod.clone());
        let lists = uncounted(status);
        let in_failed = lists.failed.iter().flatten().any(|u| *u == uid);
        let in_succeeded = lists.succeeded.iter().flatten().any(|u| *u == uid);
        if succeeded && !in_failed {
            if indexed {
                if let Some(index) = completion_index(pod).filter(|i| *i < limit) {
                    if !succeeded_indexes.has(index) {
                        new_indexes.push(index);
                        tracking.needs_flush = true;
                    }
                }
            } else if !in_succeeded {
                lists.succeeded.get_or_insert_with(Vec::new).push(uid);
                tracking.needs_flush = true;
            }
        } else if (failed || fails_everything) && !in_failed {
            let index_ok = !indexed || completion_index(pod).is_some_and(|i| i < limit);
            // Failures an Ignore rule matched are not counted.
            if index_ok && failure_policy::counts_toward_backoff(job, pod) {
                lists.failed.get_or_insert_with(Vec::new).push(uid);
                tracking.needs_flush = true;
            }
        }
        let lists = uncounted(status);
        let pending = lists.succeeded.as_ref().map_or(0, Vec::len)
            + lists.failed.as_ref().map_or(0, Vec::len);
        if pending + new_indexes.len() >= MAX_UNCOUNTED {
            tracking.needs_flush = true;
            break;
        }
    }
    if indexed {
        let all = succeeded_indexes.with(new_indexes);
        let text = all.to_string();
        if status.completed_indexes.as_deref().unwrap_or_default() != text {
            tracking.needs_flush = true;
        }
        status.succeeded = Some(all.total());
        status.completed_indexes = Some(text);
        let failed = indexes.failed.as_ref().map(Intervals::to_string);
        if status.failed_indexes != failed {
            status.failed_indexes = failed;
            tracking.needs_flush = true;
        }
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    tracking.terminal = match finished {
        Some(target) if target.type_ == FAILURE_TARGET => {
            let terminal = condition(
                FAILED,
                target.reason.as_deref().unwrap_or_default(),
                target.message.as_deref().unwrap_or_default(),
                now,
            );
            conditions.push(target);
            tracking.needs_flush = true;
            Some(terminal)
        }
        Some(target) if target.type_ == SUCCESS_CRITERIA_MET => {
            let terminal = condition(
                COMPLETE,
                target.reason.as_deref().unwrap_or_default(),
                target.message.as_deref().unwrap_or_default(),
                now,
            );
            if !conditions
                .iter()
                .any(|c| c.type_ == SUCCESS_CRITERIA_MET && c.status == "True")
            {
                conditions.push(target);
                tracking.needs_flush = true;
            }
            Some(terminal)
        }
        other => other,
    };
    tracking
}

/// Adds the terminal condition (and completionTime) once no pod is uncounted or terminating
/// (upstream's `enactJobFinished`); true when it did.
pub fn enact_terminal(
    status: &mut JobStatus,
    terminal: &JobCondition,
    terminating: i32,
    now: &Time,
) -> bool {
    let lists = status.uncounted_terminated_pods.clone().unwrap_or_default();
    if lists.succeeded.map_or(0, |l| l.len()) + lists.failed.map_or(0, |l| l.len()) > 0
        || terminating > 0
    {
        return false;
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    ensure_condition(
        conditions,
        &terminal.type_,
        "True",
        terminal.reason.as_deref().unwrap_or_default(),
        terminal.message.as_deref().unwrap_or_default(),
        now,
    );
    if terminal.type_ == COMPLETE {
        status.completion_time = Some(now.clone());
    }
    true
}

/// When a finished Job with `ttlSecondsAfterFinished` is due for deletion: seconds from now
/// (0 or less: now).
pub fn ttl_remaining(job: &Job, now: i64) -> Option<i64> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished_at = [COMPLETE, FAILED]
        .iter()
        .filter_map(|kind| true_condition(job, kind))
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
        .max()?;
    Some(finished_at + i64::from(ttl) - now)
}

#[cfg(test)]
mod tests;
