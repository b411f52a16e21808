//! The Job controller (kube-controller-manager's `job`, plus the `ttlafterfinished`
//! controller's one job): runs pods until `completions` succeed (NonIndexed, or Indexed with
//! one success per index), at most `parallelism` at a time, replacing failed pods after an
//! exponential backoff until `backoffLimit` is exceeded or `activeDeadlineSeconds` passes;
//! reports status (active, ready, terminating, succeeded, failed, completedIndexes, startTime,
//! completionTime) with the conditions 1.33 writes — SuccessCriteriaMet then Complete,
//! FailureTarget then Failed; deletes finished Jobs after `ttlSecondsAfterFinished`.
//! `podFailurePolicy` rules fail the Job, fail an index, or keep a failure from counting
//! ([`failure_policy`]); Indexed Jobs with `backoffLimitPerIndex` retry and fail each index on
//! its own (`status.failedIndexes`, `maxFailedIndexes`), and `successPolicy` ends them early
//! ([`success_policy`]). Condition reasons are upstream's: BackoffLimitExceeded,
//! DeadlineExceeded, PodFailurePolicy, FailedIndexes, MaxFailedIndexesExceeded,
//! CompletionsReached, SuccessPolicy.
//!
//! Every pod carries the `batch.kubernetes.io/job-tracking` finalizer until the Job counted
//! it: a finished pod's UID is written to `status.uncountedTerminatedPods` first, its
//! finalizer removed second, and the UID moved to the counters third, so no pod is lost or
//! counted twice, whatever restarts in between. Orphaned pods (their Job gone or finished)
//! lose the finalizer too.
//!
//! Owns Jobs' pods and status. Decisions come from [`plan`], [`failure_policy`] and
//! [`success_policy`].
pub mod failure_policy;
pub mod plan;
pub mod success_policy;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use serde_json::json;
use tracing::debug;

use self::plan::{
    completion_index, counts_as_failed, has_finalizer, Backoff, IndexProgress, Intervals,
    TRACKING_FINALIZER,
};
use super::{
    claim::claim,
    expectations::Expectations,
    pods::{self, controller_of, controller_reference},
    runner::{run_workers, Requeue},
};
use crate::{
    apiserver::rest::PatchKind,
    client::{
        events::{reference_to, EventType, Recorder},
        informer::{key_of, split_key},
        labels::selector_matches,
        leader::Leadership,
        Api, CachedPod, Client, ClientError, Informer, Informers, WorkQueue,
    },
};

/// Queue keys for orphaned pods start with this (Job keys are `namespace/name`).
const ORPHAN_PREFIX: &str = "pod:";

/// Pod UIDs whose finalizer removal was requested but not yet seen, per Job.
#[derive(Debug, Clone, Default)]
struct FinalizerExpectations(Arc<Mutex<HashMap<String, HashSet<String>>>>);

impl FinalizerExpectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expected(&self, key: &str) -> HashSet<String> {
        self.lock().get(key).cloned().unwrap_or_default()
    }

    fn expect(&self, key: &str, uid: &str) {
        self.lock()
            .entry(key.to_owned())
            .or_default()
            .insert(uid.to_owned());
    }

    fn observed(&self, key: &str, uid: &str) {
        let mut all = self.lock();
        if let Some(set) = all.get_mut(key) {
            set.remove(uid);
            if set.is_empty() {
                all.remove(key);
            }
        }
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
) -> Result<(), ClientError> {
    let jobs = informers.get::<Job>()?;
    let pods = informers.get::<CachedPod>()?;
    let queue = WorkQueue::new();
    let expectations = Expectations::new();
    let removals = FinalizerExpectations::default();
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        let removals = removals.clone();
        let pods = pods.clone();
        jobs.on_change(Box::new(move |old, new| {
            let Some(job) = new.or(old) else {
                return;
            };
            let key = key_of(job.as_ref());
            queue.add(key.clone());
            let gone = new.is_none();
            if gone {
                expectations.forget(&key);
                removals.forget(&key);
            }
            // Pods of a Job that is gone or finished keep no finalizer.
            if gone || plan::is_finished(job) {
                let uid = job.metadata.uid.clone().unwrap_or_default();
                let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
                for pod in pods.list_namespace(namespace) {
                    if has_finalizer(&pod)
                        && controller_of(&pod.metadata).is_some_and(|o| o.uid == uid)
                    {
                        queue.add(format!("{ORPHAN_PREFIX}{}", key_of(pod.as_ref())));
                    }
                }
            }
        }));
    }
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        let removals = removals.clone();
        let jobs = jobs.clone();
        pods.on_change(Box::new(move |old, new| {
            on_pod_change(&queue, &expectations, &removals, &jobs, old, new);
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        jobs,
        pods,
        expectations,
        removals,
        backoffs: Arc::new(Mutex::new(HashMap::new())),
        recorder,
    });
    run_workers("job", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move {
            match key.strip_prefix(ORPHAN_PREFIX) {
                Some(pod) => controller.sync_orphan_pod(pod).await,
                None => controller.sync_job(&key).await,
            }
        }
    });
    Ok(())
}

/// The key of the Job controlling a pod.
fn job_key(pod: &CachedPod) -> Option<String> {
    super::claim::controller_key(&pod.metadata, "batch/v1", "Job")
}

fn on_pod_change(
    queue: &WorkQueue,
    expectations: &Expectations,
    removals: &FinalizerExpectations,
    jobs: &Informer<Job>,
    old: Option<&Arc<CachedPod>>,
    new: Option<&Arc<CachedPod>>,
) {
    let uid = |p: &CachedPod| p.metadata.uid.clone().unwrap_or_default();
    let orphan_key = |p: &CachedPod| format!("{ORPHAN_PREFIX}{}", key_of(p));
    if let (Some(before), Some(pod)) = (old, new) {
        if let Some(previous) = job_key(before).filter(|k| Some(k) != job_key(pod).as_ref()) {
            removals.observed(&previous, &uid(pod));
            queue.add(previous);
        }
    }
    match (old, new) {
        (_, Some(pod)) => match job_key(pod) {
            Some(key) => {
                if old.is_none() {
                    expectations.creation_observed(&key);
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(&key, &uid(pod));
                }
                if !has_finalizer(pod) {
                    removals.observed(&key, &uid(pod));
                }
                let owner_uid = controller_of(&pod.metadata).map(|o| o.uid.clone());
                let job = jobs.get(&key).filter(|j| j.metadata.uid == owner_uid);
                if has_finalizer(pod) && job.as_ref().is_none_or(|j| plan::is_finished(j)) {
                    queue.add(orphan_key(pod));
                }
                queue.add(key);
            }
            None => {
                if has_finalizer(pod) {
                    queue.add(orphan_key(pod));
                }
                let relabelled = old.is_none_or(|o| o.metadata.labels != pod.metadata.labels);
                if relabelled {
                    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                    for job in jobs.list_namespace(namespace) {
                        let selected = job
                            .spec
                            .as_ref()
                            .and_then(|s| s.selector.as_ref())
                            .is_some_and(|s| selector_matches(s, pod.metadata.labels.as_ref()));
                        if selected {
                            queue.add(key_of(job.as_ref()));
                        }
                    }
                }
            }
        },
        (Some(pod), None) => {
            if let Some(key) = job_key(pod) {
                expectations.deletion_observed(&key, &uid(pod));
                removals.observed(&key, &uid(pod));
                queue.add(key);
            }
        }
        (None, None) => {}
    }
}

struct Controller {
    client: Client,
    jobs: Informer<Job>,
    pods: Informer<CachedPod>,
    expectations: Expectations,
    removals: FinalizerExpectations,
    backoffs: Arc<Mutex<HashMap<String, Backoff>>>,
    recorder: Recorder,
}

/// An Indexed Job's indexes in one sync.
#[derive(Debug, Default)]
struct IndexState {
    /// Succeeded indexes, counted or not.
    succeeded: Intervals,
    /// Failed indexes (with `backoffLimitPerIndex` only).
    failed: Option<Intervals>,
    /// Per index, the failed pod held for its replacement.
    delayed: BTreeMap<i32, Arc<CachedPod>>,
}

/// The earlier of two requeues.
fn sooner(a: Requeue, b: Requeue) -> Requeue {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The patch that takes the tracking finalizer off a pod.
fn remove_finalizer_patch() -> serde_json::Value {
    json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}})
}

fn phase_is(pod: &CachedPod, phase: &str) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase)
}

impl Controller {
    fn backoff(&self, key: &str) -> Backoff {
        self.backoffs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    fn set_backoff(&self, key: &str, backoff: Option<Backoff>) {
        let mut all = self.backoffs.lock().unwrap_or_else(|e| e.into_inner());
        match backoff {
            Some(b) => all.insert(key.to_owned(), b),
            None => all.remove(key),
        };
    }

    /// Takes the tracking finalizer off a pod whose Job is gone or finished.
    async fn sync_orphan_pod(&self, pod_key: &str) -> Result<Requeue, ClientError> {
        let Some(pod) = self.pods.get(pod_key) else {
            return Ok(None);
        };
        if !has_finalizer(&pod) {
            return Ok(None);
        }
        if let Some(owner) = controller_of(&pod.metadata) {
            if owner.kind != "Job" || owner.api_version != "batch/v1" {
                return Ok(None);
            }
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let live = self
                .jobs
                .get(&format!("{namespace}/{}", owner.name))
                .filter(|j| j.metadata.uid.as_deref() == Some(owner.uid.as_str()));
            if live.is_some_and(|j| !plan::is_finished(&j)) {
                return Ok(None);
            }
        }
        let (namespace, name) = split_key(pod_key);
        let api = self
            .client
            .namespaced::<Pod>(namespace.unwrap_or_default())?;
        match api
            .patch(name, PatchKind::Strategic, &remove_finalizer_patch())
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn sync_job(&self, key: &str) -> Result<Requeue, ClientError> {
        let Some(cached) = self.jobs.get(key) else {
            self.expectations.forget(key);
            self.removals.forget(key);
            self.set_backoff(key, None);
            return Ok(None);
        };
        let job = (*cached).clone();
        // A Job managed by another controller (`spec.managedBy`) is left to it.
        let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
        if managed_by.is_some_and(|m| m != "kubernetes.io/job-controller") {
            return Ok(None);
        }
        let (namespace, _) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let jobs_api = self.client.namespaced::<Job>(namespace)?;
        if plan::is_finished(&job) {
            self.set_backoff(key, None);
            return self.expire(&job, &jobs_api).await;
        }
        let pods_api = self.client.namespaced::<Pod>(namespace)?;
        let satisfied = self.expectations.satisfied(key);
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let deleting = job.metadata.deletion_timestamp.is_some();
        let candidates = self.pods.list_namespace(namespace);
        let pods = match job.spec.as_ref().and_then(|s| s.selector.as_ref()) {
            Some(selector) => {
                claim(
                    &pods_api,
                    &controller_reference(&job),
                    selector,
                    deleting,
                    candidates,
                    Some(TRACKING_FINALIZER),
                )
                .await?
            }
            // No selector (not defaulted yet): only the pods it already owns.
            None => candidates
                .into_iter()
                .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
                .collect(),
        };
        let now = pods::now_time();
        let now_s = now.0.as_second();
        let expected = self.removals.expected(key);
        let mut status = job.status.clone().unwrap_or_default();
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let in_list =
            |list: &Option<Vec<String>>, uid: &str| list.iter().flatten().any(|u| u == uid);
        let limit = plan::completions(&job).unwrap_or(0);
        let indexed = plan::is_indexed(&job);
        let countable = |p: &Arc<CachedPod>| {
            let uid = p.metadata.uid.as_deref().unwrap_or_default();
            has_finalizer(p)
                && !expected.contains(uid)
                && (!indexed || completion_index(p).is_some_and(|i| i < limit))
        };
        let new_succeeded: Vec<&Arc<CachedPod>> = pods
            .iter()
            .filter(|p| countable(p) && phase_is(p, "Succeeded"))
            .filter(|p| {
                !in_list(
                    &uncounted.succeeded,
                    p.metadata.uid.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        let new_failed: Vec<&Arc<CachedPod>> = pods
            .iter()
            .filter(|p| countable(p) && counts_as_failed(p, &job))
            .filter(|p| {
                !in_list(
                    &uncounted.failed,
                    p.metadata.uid.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        let uncounted_len = |l: &Option<Vec<String>>| l.as_ref().map_or(0, Vec::len) as i32;
        let mut succeeded = status.succeeded.unwrap_or(0)
            + new_succeeded.len() as i32
            + uncounted_len(&uncounted.succeeded);
        // Failures an Ignore rule of the podFailurePolicy matched are not counted.
        let new_counted_failures = new_failed
            .iter()
            .filter(|p| failure_policy::counts_toward_backoff(&job, p))
            .count() as i32;
        let failed =
            status.failed.unwrap_or(0) + new_counted_failures + uncounted_len(&uncounted.failed);
        if status.start_time.is_none() && !plan::is_suspended(&job) {
            status.start_time = Some(now.clone());
        }
        let backoff = self.backoff(key).after(
            &new_succeeded
                .iter()
                .map(|p| plan::finish_time(p, now_s))
                .collect::<Vec<_>>(),
            &new_failed
                .iter()
                .map(|p| plan::finish_time(p, now_s))
                .collect::<Vec<_>>(),
        );
        let mut requeue: Requeue = None;
        let mut finished =
            self.finished_condition(&job, &status, &pods, failed, now_s, &now, &mut requeue);
        let previous_indexes = Intervals::parse(
            status.completed_indexes.as_deref().unwrap_or_default(),
            limit,
        );
        let all_indexes = previous_indexes.with(
            pods.iter()
                .filter(|p| phase_is(p, "Succeeded") && has_finalizer(p))
                .filter_map(|p| completion_index(p))
                .filter(|i| *i < limit),
        );
        if indexed {
            succeeded = all_indexes.total();
        }
        let active_pods: Vec<Arc<CachedPod>> = pods
            .iter()
            .filter(|p| pods::is_active(p))
            .cloned()
            .collect();
        let failed_indexes = failure_policy::failed_indexes(&job, &pods);
        if indexed && finished.is_none() {
            finished = failure_policy::index_failure_condition(
                &job,
                failed_indexes.as_ref(),
                &all_indexes,
                &now,
            )
            .or_else(|| {
                success_policy::matched(&job, &all_indexes).map(|message| {
                    plan::condition(
                        plan::SUCCESS_CRITERIA_MET,
                        success_policy::SUCCESS_POLICY,
                        &message,
                        &now,
                    )
                })
            });
        }
        let delayed = failure_policy::delayed_deletions(
            &job,
            &pods,
            &active_pods,
            &expected,
            &all_indexes,
            failed_indexes.as_ref().unwrap_or(&Intervals::default()),
            now_s,
        );
        let indexes = IndexState {
            succeeded: all_indexes,
            failed: failed_indexes,
            delayed,
        };
        let mut terminating = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && !pods::is_terminal(p))
            .count() as i32;
        let mut ready = active_pods.iter().filter(|p| pods::is_ready(p)).count() as i32;
        let mut active = active_pods.len() as i32;
        let mut failure = None;
        if finished.is_some() {
            let (deleted_ready, deleted, error) =
                self.delete_pods(&job, &pods_api, &active_pods, false).await;
            if deleted != active || !satisfied {
                finished = None;
            }
            active -= deleted;
            terminating += deleted;
            ready -= deleted_ready;
            failure = error;
        } else {
            let mut managed = false;
            if satisfied && !deleting {
                managed = true;
                match self
                    .manage(
                        key,
                        &job,
                        &pods_api,
                        &pods,
                        &active_pods,
                        succeeded,
                        &indexes,
                        terminating,
                        backoff,
                        now_s,
                    )
                    .await
                {
                    Ok((after, deleted_ready, deleted, wait)) => {
                        active = after;
                        terminating += deleted;
                        ready -= deleted_ready;
                        requeue = sooner(requeue, wait);
                    }
                    Err(e) => failure = Some(e),
                }
            }
            let complete = match plan::completions(&job) {
                None => succeeded > 0 && active == 0,
                Some(completions) => succeeded >= completions && active == 0,
            };
            if complete {
                finished = Some(plan::condition(
                    plan::SUCCESS_CRITERIA_MET,
                    plan::COMPLETIONS_REACHED,
                    "Reached expected number of succeeded pods",
                    &now,
                ));
            } else if managed {
                self.suspend_condition(&job, &mut status, &now);
            }
        }
        status.active = Some(active);
        status.ready = Some(ready.max(0));
        status.terminating = Some(terminating);
        let progress = IndexProgress {
            previous_succeeded: previous_indexes,
            failed: indexes.failed,
            held: indexes
                .delayed
                .values()
                .filter_map(|p| p.metadata.uid.clone())
                .collect(),
        };
        self.track(
            key,
            &job,
            &jobs_api,
            status,
            &pods,
            &expected,
            finished,
            &progress,
            terminating,
            backoff,
            &now,
        )
        .await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(requeue),
        }
    }

    /// The condition this sync decides the Job finished with (interim FailureTarget or
    /// SuccessCriteriaMet, or the terminal Failed of an earlier FailureTarget), if any.
    #[allow(clippy::too_many_arguments)]
    fn finished_condition(
        &self,
        job: &Job,
        status: &k8s_openapi::api::batch::v1::JobStatus,
        pods: &[Arc<CachedPod>],
        failed: i32,
        now_s: i64,
        now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
        requeue: &mut Requeue,
    ) -> Option<k8s_openapi::api::batch::v1::JobCondition> {
        if let Some(met) = plan::true_condition(job, plan::SUCCESS_CRITERIA_MET) {
            return Some(met.clone());
        }
        if let Some(target) = plan::true_condition(job, plan::FAILURE_TARGET) {
            return Some(plan::condition(
                plan::FAILED,
                target.reason.as_deref().unwrap_or_default(),
                target.message.as_deref().unwrap_or_default(),
                now,
            ));
        }
        if let Some(message) = failure_policy::fail_job_message(job, pods) {
            return Some(plan::condition(
                plan::FAILURE_TARGET,
                failure_policy::POD_FAILURE_POLICY,
                &message,
                now,
            ));
        }
        if failed > plan::backoff_limit(job) || plan::past_backoff_limit_on_failure(job, pods) {
            return Some(plan::condition(
                plan::FAILURE_TARGET,
                plan::BACKOFF_LIMIT_EXCEEDED,
                "Job has reached the specified backoff limit",
                now,
            ));
        }
        let deadline = job.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        let started = status.start_time.as_ref().map(|t| t.0.as_second());
        if let (Some(deadline), Some(started), false) = (deadline, started, plan::is_suspended(job))
        {
            let left = started + deadline - now_s;
            if left <= 0 {
                return Some(plan::condition(
                    plan::FAILURE_TARGET,
                    plan::DEADLINE_EXCEEDED,
                    "Job was active longer than specified deadline",
                    now,
                ));
            }
            *requeue = Some(Duration::from_secs(left as u64));
        }
        None
    }

    /// Keeps the Suspended condition in step with `spec.suspend`; resuming restarts the
    /// active-deadline clock.
    fn suspend_condition(
        &self,
        job: &Job,
        status: &mut k8s_openapi::api::batch::v1::JobStatus,
        now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) {
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if plan::is_suspended(job) {
            if plan::ensure_condition(
                conditions,
                plan::SUSPENDED,
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            ) {
                self.recorder.record(
                    reference_to(job),
                    EventType::Normal,
                    "Suspended",
                    "Job suspended".to_owned(),
                );
            }
        } else if plan::ensure_condition(
            conditions,
            plan::SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            now,
        ) {
            self.recorder.record(
                reference_to(job),
                EventType::Normal,
                "Resumed",
                "Job resumed".to_owned(),
            );
            status.start_time = Some(now.clone());
        }
        if status.conditions.as_ref().is_some_and(Vec::is_empty) {
            status.conditions = None;
        }
    }

    /// Creates or deletes pods to run the wanted number (upstream's `manageJob`). Returns the
    /// active count after, the ready and total pods deleted, and when to look again (a
    /// pod-failure backoff).
    #[allow(clippy::too_many_arguments)]
    async fn manage(
        &self,
        key: &str,
        job: &Job,
        pods_api: &Api<Pod>,
        all_pods: &[Arc<CachedPod>],
        active_pods: &[Arc<CachedPod>],
        succeeded: i32,
        indexes: &IndexState,
        terminating: i32,
        backoff: Backoff,
        now: i64,
    ) -> Result<(i32, i32, i32, Requeue), ClientError> {
        let active = active_pods.len() as i32;
        if plan::is_suspended(job) {
            self.expectations.expect(
                key,
                0,
                active_pods
                    .iter()
                    .map(|p| p.metadata.uid.clone().unwrap_or_default()),
            );
            let (ready, deleted, error) = self.delete_pods(job, pods_api, active_pods, true).await;
            return match error {
                Some(e) => Err(e),
                None => Ok((active - deleted, ready, deleted, None)),
            };
        }
        let want = plan::want_active(job, succeeded, active);
        let surplus = (active - want).max(0) as usize;
        let mut doomed = plan::pods_for_removal(job, active_pods, surplus);
        doomed.truncate(plan::MAX_CREATE_DELETE);
        if !doomed.is_empty() {
            self.expectations.expect(
                key,
                0,
                doomed
                    .iter()
                    .map(|p| p.metadata.uid.clone().unwrap_or_default()),
            );
            let (ready, deleted, error) = self.delete_pods(job, pods_api, &doomed, true).await;
            return match error {
                Some(e) => Err(e),
                None => Ok((active - deleted, ready, deleted, None)),
            };
        }
        let blocking = if plan::replaces_failed_only(job) {
            terminating
        } else {
            0
        };
        let missing = want - blocking - active;
        if missing <= 0 {
            return Ok((active, 0, 0, None));
        }
        let per_index = failure_policy::backoff_limit_per_index(job).is_some();
        // With backoffLimitPerIndex each index backs off on its own.
        let wait = if per_index {
            Duration::ZERO
        } else {
            backoff.remaining(now)
        };
        if !wait.is_zero() {
            debug!(job = key, ?wait, "waiting out the pod failure backoff");
            return Ok((active, 0, 0, Some(wait)));
        }
        let count = (missing as usize).min(plan::MAX_CREATE_DELETE);
        let mut requeue = None;
        let to_create: Vec<Option<i32>> = if plan::is_indexed(job) {
            let done = match &indexes.failed {
                Some(failed) => indexes.succeeded.with(failed.indexes()),
                None => indexes.succeeded.clone(),
            };
            let mut pending = plan::pending_indexes(job, &done, all_pods, count);
            if per_index {
                let mut soonest: Option<Duration> = None;
                pending.retain(|index| {
                    let held = indexes.delayed.get(index).map(|p| p.as_ref());
                    let wait = failure_policy::index_backoff_remaining(held, now);
                    if !wait.is_zero() {
                        soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                    }
                    wait.is_zero()
                });
                requeue = soonest;
                if pending.is_empty() {
                    debug!(job = key, ?requeue, "waiting out the per-index backoff");
                    return Ok((active, 0, 0, requeue));
                }
            }
            pending.into_iter().map(Some).collect()
        } else {
            vec![None; count]
        };
        self.expectations
            .expect(key, to_create.len() as i64, Vec::new());
        let wanted: Vec<Pod> = to_create
            .iter()
            .map(|index| {
                let mut pod = plan::pod_for(job, *index);
                if let (true, Some(index)) = (per_index, index) {
                    let replaced = indexes.delayed.get(index).map(|p| p.as_ref());
                    failure_policy::annotate_index_failures(&mut pod, job, replaced);
                }
                pod
            })
            .collect();
        let (created, first_error) = super::pods::create_slow_start(
            pods_api,
            wanted,
            &reference_to(job),
            &self.recorder,
            &self.expectations,
            key,
        )
        .await;
        let created = created as i32;
        match first_error {
            Some(e) => Err(e),
            None => Ok((active + created, 0, 0, requeue)),
        }
    }

    /// Deletes pods; with `drop_finalizer` their tracking finalizer goes first (surplus pods
    /// are not counted as failures). Returns the ready and total pods deleted, and the first
    /// error.
    async fn delete_pods(
        &self,
        job: &Job,
        pods_api: &Api<Pod>,
        doomed: &[Arc<CachedPod>],
        drop_finalizer: bool,
    ) -> (i32, i32, Option<ClientError>) {
        let key = key_of(job);
        let mut ready = 0;
        let mut deleted = 0;
        let mut first_error = None;
        for pod in doomed {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let result = async {
                if drop_finalizer && has_finalizer(pod) {
                    pods_api
                        .patch(&name, PatchKind::Strategic, &remove_finalizer_patch())
                        .await?;
                }
                pods_api
                    .delete(&name, json!({"preconditions": {"uid": uid}}))
                    .await
            }
            .await;
            match result {
                Ok(()) => {
                    deleted += 1;
                    if pods::is_ready(pod) {
                        ready += 1;
                    }
                    self.recorder.record(
                        reference_to(job),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    );
                }
                Err(e) if e.is_not_found() => {
                    self.expectations.deletion_observed(&key, &uid);
                    deleted += 1;
                }
                Err(e) => {
                    self.expectations.deletion_observed(&key, &uid);
                    first_error.get_or_insert(e);
                }
            }
        }
        (ready, deleted, first_error)
    }

    /// Records finished pods, removes their finalizers, counts them, and writes the terminal
    /// condition once nothing is left uncounted or terminating.
    #[allow(clippy::too_many_arguments)]
    async fn track(
        &self,
        key: &str,
        job: &Job,
        jobs_api: &Api<Job>,
        mut status: k8s_openapi::api::batch::v1::JobStatus,
        pods: &[Arc<CachedPod>],
        expected: &HashSet<String>,
        finished: Option<k8s_openapi::api::batch::v1::JobCondition>,
        indexes: &IndexProgress,
        terminating: i32,
        backoff: Backoff,
        now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) -> Result<(), ClientError> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let tracking = plan::track(job, &mut status, pods, expected, finished, indexes, now);
        let mut current = job.clone();
        if tracking.needs_flush {
            current = self.write_status(jobs_api, &current, &status).await?;
            self.set_backoff(key, Some(backoff));
        }
        let mut with_finalizer: HashSet<String> = pods
            .iter()
            .filter(|p| has_finalizer(p))
            .filter_map(|p| p.metadata.uid.clone())
            .filter(|uid| !expected.contains(uid))
            .collect();
        let mut removal_error = None;
        for pod in &tracking.remove_finalizer {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            self.removals.expect(key, &uid);
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let api = self.client.namespaced::<Pod>(namespace)?;
            match api
                .patch(&pod_name, PatchKind::Strategic, &remove_finalizer_patch())
                .await
            {
                Ok(_) => {
                    with_finalizer.remove(&uid);
                }
                Err(e) if e.is_not_found() => {
                    with_finalizer.remove(&uid);
                    self.removals.observed(key, &uid);
                }
                Err(e) => {
                    self.removals.observed(key, &uid);
                    removal_error.get_or_insert(e);
                }
            }
        }
        plan::count_uncounted(&mut status, &with_finalizer);
        let finished_now = removal_error.is_none()
            && tracking.terminal.as_ref().is_some_and(|terminal| {
                plan::enact_terminal(&mut status, terminal, terminating, now)
            });
        if current.status.as_ref() != Some(&status) {
            self.write_status(jobs_api, &current, &status).await?;
        }
        if finished_now {
            if let Some(terminal) = &tracking.terminal {
                if terminal.type_ == plan::COMPLETE {
                    self.recorder.record(
                        reference_to(job),
                        EventType::Normal,
                        "Completed",
                        "Job completed".to_owned(),
                    );
                } else {
                    self.recorder.record(
                        reference_to(job),
                        EventType::Warning,
                        terminal.reason.as_deref().unwrap_or(plan::FAILED),
                        terminal.message.clone().unwrap_or_default(),
                    );
                }
                debug!(job = %name, condition = %terminal.type_, "job finished");
            }
        }
        match removal_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn write_status(
        &self,
        jobs_api: &Api<Job>,
        job: &Job,
        status: &k8s_openapi::api::batch::v1::JobStatus,
    ) -> Result<Job, ClientError> {
        let mut updated = job.clone();
        updated.status = Some(status.clone());
        let name = job.metadata.name.clone().unwrap_or_default();
        jobs_api.replace_status(&name, &updated).await
    }

    /// Deletes a finished Job whose `ttlSecondsAfterFinished` passed (in the foreground, as
    /// the TTL-after-finished controller does), or says when to look again.
    async fn expire(&self, job: &Job, jobs_api: &Api<Job>) -> Result<Requeue, ClientError> {
        let Some(left) = plan::ttl_remaining(job, pods::now_seconds()) else {
            return Ok(None);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        if left > 0 {
            return Ok(Some(Duration::from_secs(left as u64)));
        }
        let name = job.metadata.name.clone().unwrap_or_default();
        debug!(job = %name, "deleting a finished job after its TTL");
        jobs_api
            .delete(&name, json!({"propagationPolicy": "Foreground", "preconditions": {"uid": job.metadata.uid}}))
            .await?;
        Ok(None)
    }
}
