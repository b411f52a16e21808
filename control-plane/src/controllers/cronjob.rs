//! The CronJob controller (kube-controller-manager's `cronjob`, v2): at each time its schedule
//! fires ([`super::cron`], in `spec.timeZone` or a `CRON_TZ=` prefix) it creates the Job
//! `<cronjob>-<scheduled time in minutes since the epoch>` from `jobTemplate`, annotated with
//! `batch.kubernetes.io/cronjob-scheduled-timestamp`; honours `suspend`,
//! `startingDeadlineSeconds` and `concurrencyPolicy` (Allow, Forbid, Replace); keeps
//! `status.active`, `lastScheduleTime` and `lastSuccessfulTime`; and deletes finished Jobs
//! beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`.
//!
//! Owns CronJobs' Jobs (creation and history cleanup) and status. What to do at a given moment
//! is [`decide`], a plain function of the CronJob and the clock; it must not run Jobs (the
//! Job controller does).
use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobStatus, Job},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use serde_json::json;
use tracing::debug;

use super::{
    cron::{self, Schedule},
    job::plan as job_plan,
    pods::{controller_of, controller_reference},
    runner::{run_workers, Requeue},
};
use crate::client::{
    events::{reference_to, EventType, Recorder},
    informer::{key_of, split_key},
    leader::Leadership,
    Client, ClientError, Informer, Informers, WorkQueue,
};

/// The Job annotation with the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Requeues land this long after the fire time, so the fire time has passed.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// What to do about the schedule now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Start the Job for this fire time (after deleting the active ones, with Replace).
    pub start: Option<Timestamp>,
    /// Delete the active Jobs first (Replace).
    pub replace: bool,
    /// An event to record: (warning?, reason, message).
    pub event: Option<(bool, &'static str, String)>,
    /// When to look again.
    pub requeue: Option<Duration>,
}

fn concurrency_policy(cj: &CronJob) -> &str {
    cj.spec
        .as_ref()
        .and_then(|s| s.concurrency_policy.as_deref())
        .unwrap_or("Allow")
}

/// The name of the Job for a fire time.
pub fn job_name(cj: &CronJob, scheduled: Timestamp) -> String {
    format!(
        "{}-{}",
        cj.metadata.name.as_deref().unwrap_or_default(),
        scheduled.as_second().div_euclid(60)
    )
}

fn seconds_of(time: &Time) -> i64 {
    time.0.as_second()
}

/// What the schedule calls for at `now` (upstream's `syncCronJob` after the active list is
/// settled): the latest missed fire time since the last one (or creation), unless it is past
/// `startingDeadlineSeconds`, already started, or forbidden by a running Job.
pub fn decide(cj: &CronJob, schedule: &Schedule, now: Timestamp) -> Decision {
    let status = cj.status.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let requeue = schedule.next_after(now).map(|next| {
        Duration::from_secs((next.as_second() - now.as_second()).max(0) as u64)
            + NEXT_SCHEDULE_DELTA
    });
    let mut decision = Decision {
        start: None,
        replace: false,
        event: None,
        requeue,
    };
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now.as_second(), seconds_of);
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .map_or(created, seconds_of);
    if let Some(deadline) = spec.starting_deadline_seconds {
        earliest = earliest.max(now.as_second().saturating_sub(deadline));
    }
    let Ok(earliest) = Timestamp::from_second(earliest) else {
        return decision;
    };
    let Some((scheduled, too_many)) = schedule.most_recent(earliest, now) else {
        return decision;
    };
    if too_many {
        decision.event = Some((
            true,
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".to_owned(),
        ));
    }
    if let Some(deadline) = spec.starting_deadline_seconds {
        if scheduled.as_second().saturating_add(deadline) < now.as_second() {
            decision.event = Some((
                true,
                "MissSchedule",
                format!("Missed scheduled time to start a job: {scheduled}"),
            ));
            return decision;
        }
    }
    let name = job_name(cj, scheduled);
    let active = status.active.clone().unwrap_or_default();
    let started = active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
        || status.last_schedule_time.as_ref().map(seconds_of) == Some(scheduled.as_second());
    if started {
        return decision;
    }
    match concurrency_policy(cj) {
        "Forbid" if !active.is_empty() => {
            decision.event = Some((
                false,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".to_owned(),
            ));
            return decision;
        }
        "Replace" => decision.replace = !active.is_empty(),
        _ => {}
    }
    decision.start = Some(scheduled);
    decision
}

/// The Job for a fire time: the template's labels, annotations (plus the scheduled time in the
/// CronJob's zone, RFC 3339) and spec, owned by the CronJob.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, zone: &k8s_openapi::jiff::tz::TimeZone) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let local = scheduled.to_zoned(zone.clone());
    annotations.insert(
        SCHEDULED_TIMESTAMP.to_owned(),
        local
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
            .replace("+00:00", "Z"),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cj, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_reference(cj)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".to_owned()),
        kind: Some("Job".to_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The status after looking at the CronJob's Jobs: finished ones leave the active list (and
/// move lastSuccessfulTime), unfinished ones missing from it are added back (a status write
/// that was lost). Returns the status and the names of finished Jobs that left the list.
pub fn settle_active(status: &CronJobStatus, jobs: &[Arc<Job>]) -> (CronJobStatus, Vec<String>) {
    let mut status = status.clone();
    let mut active = status.active.take().unwrap_or_default();
    let mut finished_names = Vec::new();
    for job in jobs {
        let uid = job.metadata.uid.as_deref();
        let listed = active.iter().any(|r| r.uid.as_deref() == uid);
        let finished = job_plan::is_finished(job);
        if finished {
            if listed {
                active.retain(|r| r.uid.as_deref() != uid);
                finished_names.push(job.metadata.name.clone().unwrap_or_default());
            }
            if let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.as_ref()) {
                let later = status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|t| seconds_of(t) < seconds_of(done));
                if later {
                    status.last_successful_time = Some(done.clone());
                }
            }
        } else if !listed {
            active.push(reference(job));
        }
    }
    status.active = (!active.is_empty()).then_some(active);
    (status, finished_names)
}

/// Finished Jobs beyond the history limits, oldest start first.
pub fn history_to_delete(cj: &CronJob, jobs: &[Arc<Job>]) -> Vec<Arc<Job>> {
    let spec = cj.spec.clone().unwrap_or_default();
    let started = |j: &Arc<Job>| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(seconds_of)
    };
    let mut doomed = Vec::new();
    for (kind, limit) in [
        (job_plan::COMPLETE, spec.successful_jobs_history_limit),
        (job_plan::FAILED, spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else {
            continue;
        };
        let mut finished: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| job_plan::true_condition(j, kind).is_some())
            .collect();
        // Oldest first; never-started ones last, by name among equals.
        finished.sort_by(|a, b| {
            let key = |j: &Arc<Job>| (started(j).is_none(), started(j), j.metadata.name.clone());
            key(a).cmp(&key(b))
        });
        let surplus = finished.len().saturating_sub(limit.max(0) as usize);
        doomed.extend(finished.into_iter().take(surplus).cloned());
    }
    doomed
}

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
) -> Result<(), ClientError> {
    let cronjobs = informers.get::<CronJob>()?;
    let jobs = informers.get::<Job>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        cronjobs.on_change(Box::new(move |old, new| {
            if let Some(cj) = new.or(old) {
                queue.add(key_of(cj.as_ref()));
            }
        }));
    }
    {
        let queue = queue.clone();
        jobs.on_change(Box::new(move |old, new| {
            for job in [old, new].into_iter().flatten() {
                if let Some(owner) = controller_of(&job.metadata).filter(|o| o.kind == "CronJob") {
                    let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
                    queue.add(format!("{namespace}/{}", owner.name));
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        cronjobs,
        jobs,
        recorder,
    });
    run_workers("cronjob", queue, leadership, 2, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

struct Controller {
    client: Client,
    cronjobs: Informer<CronJob>,
    jobs: Informer<Job>,
    recorder: Recorder,
}

impl Controller {
    fn record(&self, cj: &CronJob, warning: bool, reason: &str, message: String) {
        let kind = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.recorder
            .record(reference_to(cj), kind, reason, message);
    }

    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        let Some(cached) = self.cronjobs.get(key) else {
            return Ok(None);
        };
        let cj = (*cached).clone();
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let job_api = self.client.namespaced::<Job>(namespace)?;
        let cronjob_api = self.client.namespaced::<CronJob>(namespace)?;
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .list_namespace(namespace)
            .into_iter()
            .filter(|j| controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
            .collect();
        let current = cj.status.clone().unwrap_or_default();
        let (mut status, finished) = settle_active(&current, &jobs);
        for job in &finished {
            self.record(
                &cj,
                false,
                "SawCompletedJob",
                format!("Saw completed job: {job}"),
            );
        }
        // Listed Jobs the cache does not have: gone, unless the API still has them.
        let mut active = status.active.take().unwrap_or_default();
        let mut kept = Vec::with_capacity(active.len());
        for reference in active.drain(..) {
            let known = jobs.iter().any(|j| j.metadata.uid == reference.uid);
            let name = reference.name.clone().unwrap_or_default();
            if known
                || job_api
                    .get(&name)
                    .await?
                    .is_some_and(|j| j.metadata.uid == reference.uid)
            {
                kept.push(reference);
            } else {
                self.record(
                    &cj,
                    false,
                    "MissingJob",
                    format!("Active job went missing: {name}"),
                );
            }
        }
        status.active = (!kept.is_empty()).then_some(kept);
        let mut requeue = None;
        let mut with_status = cj.clone();
        with_status.status = Some(status.clone());
        let suspended = cj.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        if cj.metadata.deletion_timestamp.is_none() && !suspended {
            requeue = self.schedule(&with_status, &job_api, &mut status).await?;
        }
        for job in history_to_delete(&cj, &jobs) {
            let job_name = job.metadata.name.clone().unwrap_or_default();
            job_api
                .delete(&job_name, json!({"propagationPolicy": "Background", "preconditions": {"uid": job.metadata.uid}}))
                .await?;
            if let Some(active) = status.active.as_mut() {
                active.retain(|r| r.uid != job.metadata.uid);
            }
            self.record(
                &cj,
                false,
                "SuccessfulDelete",
                format!("Deleted job {job_name}"),
            );
        }
        if status.active.as_ref().is_some_and(Vec::is_empty) {
            status.active = None;
        }
        if cj.status.clone().unwrap_or_default() != status {
            let mut updated = cj.clone();
            updated.status = Some(status);
            cronjob_api.replace_status(name, &updated).await?;
        }
        Ok(requeue)
    }

    /// Starts the Job the schedule calls for, if any; returns when to look again.
    async fn schedule(
        &self,
        cj: &CronJob,
        job_api: &crate::client::Api<Job>,
        status: &mut CronJobStatus,
    ) -> Result<Requeue, ClientError> {
        let spec = cj.spec.clone().unwrap_or_default();
        let zone = match spec.time_zone.as_deref().map(cron::load_zone).transpose() {
            Ok(zone) => zone.unwrap_or(k8s_openapi::jiff::tz::TimeZone::UTC),
            Err(e) => {
                self.record(
                    cj,
                    true,
                    "UnknownTimeZone",
                    format!("invalid timeZone: {:?}: {e}", spec.time_zone),
                );
                return Ok(None);
            }
        };
        let schedule = match cron::parse_with(&spec.schedule, zone.clone(), cron::load_zone) {
            Ok(schedule) => schedule,
            Err(e) => {
                self.record(
                    cj,
                    true,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                return Ok(None);
            }
        };
        let now =
            Timestamp::from_second(super::pods::now_seconds()).unwrap_or(Timestamp::UNIX_EPOCH);
        let decision = decide(cj, &schedule, now);
        if let Some((warning, reason, message)) = &decision.event {
            self.record(cj, *warning, reason, message.clone());
        }
        let Some(scheduled) = decision.start else {
            return Ok(decision.requeue);
        };
        if decision.replace {
            for reference in status.active.take().unwrap_or_default() {
                let name = reference.name.clone().unwrap_or_default();
                job_api
                    .delete(&name, json!({"propagationPolicy": "Background", "preconditions": {"uid": reference.uid}}))
                    .await?;
                self.record(cj, false, "SuccessfulDelete", format!("Deleted job {name}"));
            }
        }
        let wanted = job_for(cj, scheduled, &zone);
        let name = wanted.metadata.name.clone().unwrap_or_default();
        let created = match job_api.create(&wanted).await {
            Ok(created) => {
                self.record(cj, false, "SuccessfulCreate", format!("Created job {name}"));
                created
            }
            Err(e) if e.is_already_exists() => {
                let Some(existing) = job_api.get(&name).await? else {
                    return Err(e);
                };
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == cj.metadata.uid.as_ref());
                if !ours {
                    debug!(cronjob = ?cj.metadata.name, job = %name, "a Job of that name belongs to someone else");
                    return Ok(decision.requeue);
                }
                existing
            }
            Err(e) => {
                self.record(cj, true, "FailedCreate", format!("Error creating job: {e}"));
                return Err(e);
            }
        };
        let active = status.active.get_or_insert_with(Vec::new);
        if !active.iter().any(|r| r.uid == created.metadata.uid) {
            active.push(reference(&created));
        }
        status.last_schedule_time = Some(Time(scheduled));
        Ok(decision.requeue)
    }
}

#[cfg(test)]
mod tests;
