//! Unit tests of the CronJob decisions, with an injected clock.
use super::*;
use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobSpec, JobStatus, JobTemplateSpec};

fn ts(text: &str) -> Timestamp {
    match text.parse() {
        Ok(t) => t,
        Err(e) => panic!("bad test timestamp {text}: {e}"),
    }
}

fn cronjob(policy: &str, created: &str) -> CronJob {
    CronJob {
        metadata: ObjectMeta {
            name: Some("backup".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("cj-uid".to_owned()),
            creation_timestamp: Some(Time(ts(created))),
            ..ObjectMeta::default()
        },
        spec: Some(CronJobSpec {
            schedule: "* * * * *".to_owned(),
            concurrency_policy: Some(policy.to_owned()),
            successful_jobs_history_limit: Some(1),
            failed_jobs_history_limit: Some(1),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([("team".to_owned(), "ops".to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec::default()),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    }
}

fn every_minute() -> Schedule {
    match cron::parse("* * * * *", None) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn with_active(mut cj: CronJob, name: &str, last: &str) -> CronJob {
    cj.status = Some(CronJobStatus {
        active: Some(vec![ObjectReference {
            name: Some(name.to_owned()),
            uid: Some(format!("{name}-uid")),
            ..ObjectReference::default()
        }]),
        last_schedule_time: Some(Time(ts(last))),
        last_successful_time: None,
    });
    cj
}

#[test]
fn nothing_starts_before_the_first_fire_time() {
    let cj = cronjob("Allow", "2025-01-01T10:00:10Z");
    let d = decide(&cj, &every_minute(), ts("2025-01-01T10:00:50Z"));
    assert_eq!(d.start, None);
    assert_eq!(
        d.requeue,
        Some(Duration::from_secs(10) + NEXT_SCHEDULE_DELTA)
    );
}

#[test]
fn a_due_fire_time_starts_a_job_named_by_its_minute() {
    let cj = cronjob("Allow", "2025-01-01T10:00:10Z");
    let d = decide(&cj, &every_minute(), ts("2025-01-01T10:01:05Z"));
    assert_eq!(d.start, Some(ts("2025-01-01T10:01:00Z")));
    assert!(!d.replace);
    assert_eq!(
        job_name(&cj, ts("2025-01-01T10:01:00Z")),
        format!("backup-{}", ts("2025-01-01T10:01:00Z").as_second() / 60)
    );
    assert_eq!(
        d.requeue,
        Some(Duration::from_secs(55) + NEXT_SCHEDULE_DELTA)
    );
    // Once started (lastScheduleTime), not again.
    let started = with_active(cj, "backup-1", "2025-01-01T10:01:00Z");
    assert_eq!(
        decide(&started, &every_minute(), ts("2025-01-01T10:01:30Z")).start,
        None
    );
    // Only the latest of several missed times starts.
    let d = decide(&started, &every_minute(), ts("2025-01-01T10:05:30Z"));
    assert_eq!(d.start, Some(ts("2025-01-01T10:05:00Z")));
}

#[test]
fn concurrency_policies() {
    let now = ts("2025-01-01T10:02:05Z");
    let forbid = with_active(
        cronjob("Forbid", "2025-01-01T10:00:00Z"),
        "backup-x",
        "2025-01-01T10:01:00Z",
    );
    let d = decide(&forbid, &every_minute(), now);
    assert_eq!(d.start, None);
    assert_eq!(d.event.as_ref().map(|e| e.1), Some("JobAlreadyActive"));
    let replace = with_active(
        cronjob("Replace", "2025-01-01T10:00:00Z"),
        "backup-x",
        "2025-01-01T10:01:00Z",
    );
    let d = decide(&replace, &every_minute(), now);
    assert_eq!(d.start, Some(ts("2025-01-01T10:02:00Z")));
    assert!(d.replace);
    let allow = with_active(
        cronjob("Allow", "2025-01-01T10:00:00Z"),
        "backup-x",
        "2025-01-01T10:01:00Z",
    );
    let d = decide(&allow, &every_minute(), now);
    assert_eq!(d.start, Some(ts("2025-01-01T10:02:00Z")));
    assert!(!d.replace);
}

#[test]
fn a_starting_deadline_skips_times_too_far_back() {
    let mut cj = cronjob("Allow", "2025-01-01T10:00:00Z");
    if let Some(spec) = cj.spec.as_mut() {
        spec.starting_deadline_seconds = Some(10);
    }
    // 10:03:00 is 30 s ago: missed for good.
    assert_eq!(
        decide(&cj, &every_minute(), ts("2025-01-01T10:03:30Z")).start,
        None
    );
    // 10:03:00 is 5 s ago: still on time.
    assert_eq!(
        decide(&cj, &every_minute(), ts("2025-01-01T10:03:05Z")).start,
        Some(ts("2025-01-01T10:03:00Z"))
    );
}

#[test]
fn jobs_carry_the_template_and_the_scheduled_time() {
    let cj = cronjob("Allow", "2025-01-01T10:00:00Z");
    let job = job_for(
        &cj,
        ts("2025-01-01T10:01:00Z"),
        &k8s_openapi::jiff::tz::TimeZone::UTC,
    );
    let annotations = job.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(SCHEDULED_TIMESTAMP).map(String::as_str),
        Some("2025-01-01T10:01:00Z")
    );
    assert_eq!(
        job.metadata
            .labels
            .and_then(|l| l.get("team").cloned())
            .as_deref(),
        Some("ops")
    );
    let owner = job.metadata.owner_references.unwrap_or_default();
    assert_eq!(owner[0].kind, "CronJob");
    assert_eq!(owner[0].controller, Some(true));
    let Ok(paris) = k8s_openapi::jiff::tz::TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3") else {
        panic!("a POSIX zone");
    };
    let local = job_for(&cj, ts("2025-01-01T10:01:00Z"), &paris);
    assert_eq!(
        local
            .metadata
            .annotations
            .and_then(|a| a.get(SCHEDULED_TIMESTAMP).cloned())
            .as_deref(),
        Some("2025-01-01T11:01:00+01:00")
    );
}

fn job(name: &str, condition: Option<&str>, started: i64, completed: Option<i64>) -> Arc<Job> {
    Arc::new(Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(format!("{name}-uid")),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(JobStatus {
            start_time: Time::try_from_second(started),
            completion_time: completed.and_then(Time::try_from_second),
            conditions: condition.map(|c| {
                vec![JobCondition {
                    type_: c.to_owned(),
                    status: "True".to_owned(),
                    ..JobCondition::default()
                }]
            }),
            ..JobStatus::default()
        }),
    })
}

trait FromSecond: Sized {
    fn try_from_second(seconds: i64) -> Option<Self>;
}

impl FromSecond for Time {
    fn try_from_second(seconds: i64) -> Option<Self> {
        Timestamp::from_second(seconds).ok().map(Time)
    }
}

#[test]
fn finished_jobs_leave_the_active_list_and_old_ones_are_pruned() {
    let cj = with_active(
        cronjob("Allow", "2025-01-01T10:00:00Z"),
        "done",
        "2025-01-01T10:01:00Z",
    );
    let jobs = vec![
        job("done", Some("Complete"), 100, Some(160)),
        job("running", None, 200, None),
        job("older", Some("Complete"), 50, Some(70)),
        job("broken", Some("Failed"), 10, None),
        job("broken-too", Some("Failed"), 20, None),
    ];
    let (status, finished) = settle_active(&cj.status.clone().unwrap_or_default(), &jobs);
    assert_eq!(finished, ["done"]);
    let active: Vec<String> = status
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.name.clone())
        .collect();
    assert_eq!(
        active,
        ["running"],
        "an unlisted running job is listed again"
    );
    assert_eq!(
        status.last_successful_time.map(|t| t.0.as_second()),
        Some(160)
    );
    let doomed: Vec<String> = history_to_delete(&cj, &jobs)
        .iter()
        .filter_map(|j| j.metadata.name.clone())
        .collect();
    assert_eq!(doomed, ["older", "broken"]);
}
