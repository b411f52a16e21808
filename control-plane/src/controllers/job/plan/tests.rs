//! Unit tests of the Job decisions.
use super::*;
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::JobSpec,
        core::v1::{Container, PodSpec, PodStatus, PodTemplateSpec},
    },
    jiff::Timestamp,
};

fn time(seconds: i64) -> Time {
    Time(Timestamp::new(seconds, 0).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some("pi".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("job-uid".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            completions,
            parallelism: Some(parallelism),
            backoff_limit: Some(2),
            completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.to_owned()),
            pod_replacement_policy: Some("TerminatingOrFailed".to_owned()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([(
                        "batch.kubernetes.io/job-name".to_owned(),
                        "pi".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "pi".to_owned(),
                        image: Some("perl".to_owned()),
                        ..Container::default()
                    }],
                    restart_policy: Some("Never".to_owned()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn pod(j: &Job, uid: &str, index: Option<i32>, phase: &str) -> Arc<CachedPod> {
    let mut p = pod_for(j, index);
    p.metadata.uid = Some(uid.to_owned());
    p.metadata.name = Some(format!("pi-{uid}"));
    p.status = Some(PodStatus {
        phase: Some(phase.to_owned()),
        ..PodStatus::default()
    });
    Arc::new(CachedPod::from(p))
}

#[test]
fn intervals_parse_and_print_like_upstream() {
    let i = Intervals::parse("0,2-4,7", 10);
    assert_eq!(i.to_string(), "0,2-4,7");
    assert_eq!(i.total(), 5);
    assert!(i.has(3) && !i.has(5));
    assert_eq!(i.with([1, 5, 6]).to_string(), "0-7");
    // Untrusted text: garbage and out-of-range parts are dropped, never a panic.
    assert_eq!(Intervals::parse("x,3-1,-,9-12,2", 10).to_string(), "2,9");
    assert_eq!(Intervals::parse("", 3).total(), 0);
    assert_eq!(Intervals::parse("0-2147483647", 3).to_string(), "0-2");
    assert_eq!(Intervals::parse("-5-1", 3).to_string(), "");
}

#[test]
fn parallelism_is_capped_by_remaining_completions() {
    let j = job(Some(5), 2, false);
    assert_eq!(want_active(&j, 0, 0), 2);
    assert_eq!(want_active(&j, 4, 2), 1);
    assert_eq!(want_active(&j, 6, 0), 0);
    let queue = job(None, 3, false);
    assert_eq!(want_active(&queue, 0, 0), 3);
    assert_eq!(
        want_active(&queue, 1, 2),
        2,
        "after a success nothing new starts"
    );
}

#[test]
fn indexed_pods_carry_their_index_everywhere() {
    let j = job(Some(3), 3, true);
    let p = pod_for(&j, Some(2));
    assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
    assert_eq!(completion_index(&CachedPod::of(&p)), Some(2));
    let labels = p.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(COMPLETION_INDEX).map(String::as_str), Some("2"));
    let spec = p.spec.clone().unwrap_or_default();
    assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
    let env = spec.containers[0].env.clone().unwrap_or_default();
    assert_eq!(env[0].name, COMPLETION_INDEX_ENV);
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
    );
    assert!(has_finalizer(&CachedPod::of(&p)));
    let plain = pod_for(&job(Some(1), 1, false), None);
    assert_eq!(plain.metadata.generate_name.as_deref(), Some("pi-"));
    assert!(completion_index(&CachedPod::of(&plain)).is_none());
    // The lowest free indexes go first.
    let active = [pod(&j, "a", Some(0), "Running")];
    assert_eq!(
        pending_indexes(&j, &Intervals::from_indexes([1]), &active, 5),
        [2]
    );
}

#[test]
fn duplicate_and_stray_indexes_are_removed_first() {
    let j = job(Some(2), 2, true);
    let active = [
        pod(&j, "a", Some(0), "Running"),
        pod(&j, "b", Some(0), "Pending"),
        pod(&j, "c", Some(7), "Running"),
        pod(&j, "d", Some(1), "Running"),
    ];
    let removed: Vec<String> = pods_for_removal(&j, &active, 0)
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    assert_eq!(removed.len(), 2);
    assert!(
        removed.contains(&"c".to_owned()) && removed.contains(&"b".to_owned()),
        "{removed:?}"
    );
}

#[test]
fn failures_back_off_exponentially_until_a_success() {
    let none = Backoff::default();
    assert_eq!(none.remaining(100), Duration::ZERO);
    let one = none.after(&[], &[100]);
    assert_eq!(one.remaining(100), Duration::from_secs(10));
    assert_eq!(one.remaining(104), Duration::from_secs(6));
    assert_eq!(one.remaining(111), Duration::ZERO);
    let three = one.after(&[], &[120, 130]);
    assert_eq!(three.failures, 3);
    assert_eq!(three.remaining(130), Duration::from_secs(40));
    let many = Backoff {
        failures: 30,
        last_failure: Some(0),
    };
    assert_eq!(many.remaining(0), MAX_POD_FAILURE_BACKOFF);
    // A success resets; failures after it count again.
    assert_eq!(three.after(&[140], &[]).failures, 0);
    assert_eq!(
        three.after(&[140], &[135, 150]),
        Backoff {
            failures: 1,
            last_failure: Some(150)
        }
    );
}

#[test]
fn deleted_unfinished_pods_count_as_failed_unless_only_failures_are_replaced() {
    let mut j = job(Some(1), 1, false);
    let mut p = (*pod(&j, "a", None, "Running")).clone();
    p.metadata.deletion_timestamp = Some(time(5));
    assert!(counts_as_failed(&p, &j));
    if let Some(spec) = j.spec.as_mut() {
        spec.pod_replacement_policy = Some("Failed".to_owned());
    }
    assert!(!counts_as_failed(&p, &j));
    assert!(counts_as_failed(&pod(&j, "b", None, "Failed"), &j));
}

#[test]
fn finished_pods_are_recorded_before_their_finalizers_go_and_counted_once() {
    let j = job(Some(3), 2, false);
    let pods = [
        pod(&j, "ok", None, "Succeeded"),
        pod(&j, "bad", None, "Failed"),
        pod(&j, "run", None, "Running"),
    ];
    let now = time(10);
    let mut status = JobStatus::default();
    let t = track(
        &j,
        &mut status,
        &pods,
        &HashSet::new(),
        None,
        &IndexProgress::default(),
        &now,
    );
    assert!(t.needs_flush);
    let mut removed: Vec<String> = t
        .remove_finalizer
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        ["bad", "ok"],
        "the running pod keeps its finalizer"
    );
    let lists = status.uncounted_terminated_pods.clone().unwrap_or_default();
    assert_eq!(lists.succeeded, Some(vec!["ok".to_owned()]));
    assert_eq!(lists.failed, Some(vec!["bad".to_owned()]));
    assert_eq!(
        status.succeeded, None,
        "not counted until the finalizers are gone"
    );
    // The same sync again (finalizer removal pending): nothing recorded twice.
    let expected: HashSet<String> = ["ok".to_owned(), "bad".to_owned()].into();
    let before = status.clone();
    let t = track(
        &j,
        &mut status,
        &pods,
        &expected,
        None,
        &IndexProgress::default(),
        &now,
    );
    assert!(t.remove_finalizer.is_empty());
    assert_eq!(
        status.succeeded,
        Some(1),
        "the finalizer is as good as gone: counted"
    );
    assert_eq!(status.failed, Some(1));
    assert_ne!(status, before);
    // And once more, with the pods seen without finalizers: still one each.
    let stripped: Vec<Arc<CachedPod>> = pods
        .iter()
        .map(|p| {
            let mut p = (**p).clone();
            if p.metadata.uid.as_deref() != Some("run") {
                p.metadata.finalizers = Some(Vec::new());
            }
            Arc::new(p)
        })
        .collect();
    let t = track(
        &j,
        &mut status,
        &stripped,
        &HashSet::new(),
        None,
        &IndexProgress::default(),
        &now,
    );
    assert!(!t.needs_flush);
    assert_eq!((status.succeeded, status.failed), (Some(1), Some(1)));
}

#[test]
fn indexed_jobs_count_indexes_not_pods() {
    let j = job(Some(3), 3, true);
    let pods = [
        pod(&j, "a", Some(0), "Succeeded"),
        pod(&j, "b", Some(0), "Succeeded"),
        pod(&j, "c", Some(2), "Succeeded"),
    ];
    let mut status = JobStatus::default();
    let t = track(
        &j,
        &mut status,
        &pods,
        &HashSet::new(),
        None,
        &IndexProgress::default(),
        &time(1),
    );
    assert!(t.needs_flush);
    assert_eq!(status.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(status.succeeded, Some(2));
    assert_eq!(t.remove_finalizer.len(), 3);
}

#[test]
fn ignored_failures_go_uncounted_and_held_pods_keep_their_finalizer() {
    let mut j = job(Some(3), 3, true);
    if let Some(spec) = j.spec.as_mut() {
        spec.backoff_limit_per_index = Some(1);
        spec.pod_failure_policy = Some(k8s_openapi::api::batch::v1::PodFailurePolicy {
            rules: vec![k8s_openapi::api::batch::v1::PodFailurePolicyRule {
                action: "Ignore".to_owned(),
                on_pod_conditions: Some(vec![
                    k8s_openapi::api::batch::v1::PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".to_owned(),
                        status: "True".to_owned(),
                    },
                ]),
                on_exit_codes: None,
            }],
        });
    }
    let mut evicted = (*pod(&j, "evicted", Some(0), "Failed")).clone();
    if let Some(status) = evicted.status.as_mut() {
        status.conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "DisruptionTarget".to_owned(),
            status: "True".to_owned(),
            ..Default::default()
        }]);
    }
    let pods = [
        Arc::new(evicted),
        pod(&j, "crashed", Some(1), "Failed"),
        pod(&j, "waiting", Some(2), "Failed"),
    ];
    let mut status = JobStatus::default();
    let progress = IndexProgress {
        previous_succeeded: Intervals::default(),
        failed: Some(Intervals::from_indexes([1])),
        held: ["waiting".to_owned()].into(),
    };
    let t = track(
        &j,
        &mut status,
        &pods,
        &HashSet::new(),
        None,
        &progress,
        &time(1),
    );
    let mut removed: Vec<String> = t
        .remove_finalizer
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        ["crashed", "evicted"],
        "the held pod keeps its finalizer"
    );
    let lists = status.uncounted_terminated_pods.clone().unwrap_or_default();
    assert_eq!(
        lists.failed,
        Some(vec!["crashed".to_owned()]),
        "the ignored failure is not counted"
    );
    assert_eq!(status.failed_indexes.as_deref(), Some("1"));
    assert!(t.needs_flush);
    // Once the Job is finishing, the held pod goes too.
    let t = track(
        &j,
        &mut status,
        &pods,
        &HashSet::new(),
        Some(condition(
            FAILURE_TARGET,
            "FailedIndexes",
            "Job has failed indexes",
            &time(2),
        )),
        &progress,
        &time(2),
    );
    assert!(t
        .remove_finalizer
        .iter()
        .any(|p| p.metadata.uid.as_deref() == Some("waiting")));
}

#[test]
fn terminal_conditions_wait_for_uncounted_and_terminating_pods() {
    let j = job(Some(1), 1, false);
    let now = time(50);
    let target = condition(
        FAILURE_TARGET,
        BACKOFF_LIMIT_EXCEEDED,
        "Job has reached the specified backoff limit",
        &now,
    );
    let mut status = JobStatus::default();
    let pods = [pod(&j, "x", None, "Running")];
    let t = track(
        &j,
        &mut status,
        &pods,
        &HashSet::new(),
        Some(target),
        &IndexProgress::default(),
        &now,
    );
    let conditions = status.conditions.clone().unwrap_or_default();
    assert_eq!(conditions[0].type_, FAILURE_TARGET);
    let terminal = t.terminal.clone();
    assert_eq!(terminal.as_ref().map(|c| c.type_.as_str()), Some(FAILED));
    assert_eq!(
        terminal.as_ref().and_then(|c| c.reason.as_deref()),
        Some(BACKOFF_LIMIT_EXCEEDED)
    );
    // The running pod is failed with the Job and waits uncounted.
    assert_eq!(
        status
            .uncounted_terminated_pods
            .as_ref()
            .and_then(|u| u.failed.clone()),
        Some(vec!["x".to_owned()])
    );
    let Some(terminal) = terminal else {
        panic!("a terminal condition");
    };
    assert!(
        !enact_terminal(&mut status, &terminal, 0, &now),
        "one pod is uncounted"
    );
    count_uncounted(&mut status, &HashSet::new());
    assert!(
        !enact_terminal(&mut status, &terminal, 1, &now),
        "one pod is terminating"
    );
    assert!(enact_terminal(&mut status, &terminal, 0, &now));
    assert!(status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == FAILED && c.status == "True"));
    assert!(
        status.completion_time.is_none(),
        "only Complete sets completionTime"
    );
    // Success: SuccessCriteriaMet first, then Complete with completionTime.
    let mut ok = JobStatus::default();
    let met = condition(
        SUCCESS_CRITERIA_MET,
        COMPLETIONS_REACHED,
        "Reached expected number of succeeded pods",
        &now,
    );
    let t = track(
        &j,
        &mut ok,
        &[],
        &HashSet::new(),
        Some(met),
        &IndexProgress::default(),
        &now,
    );
    let Some(complete) = t.terminal else {
        panic!("a terminal condition");
    };
    assert_eq!(complete.type_, COMPLETE);
    assert!(enact_terminal(&mut ok, &complete, 0, &now));
    assert_eq!(ok.completion_time, Some(now));
    let types: Vec<&str> = ok
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, [SUCCESS_CRITERIA_MET, COMPLETE]);
}

#[test]
fn finished_jobs_expire_after_their_ttl() {
    let mut j = job(Some(1), 1, false);
    assert_eq!(ttl_remaining(&j, 0), None);
    if let Some(spec) = j.spec.as_mut() {
        spec.ttl_seconds_after_finished = Some(30);
    }
    assert_eq!(ttl_remaining(&j, 0), None, "not finished");
    j.status = Some(JobStatus {
        conditions: Some(vec![condition(
            COMPLETE,
            COMPLETIONS_REACHED,
            "",
            &time(100),
        )]),
        ..JobStatus::default()
    });
    assert_eq!(ttl_remaining(&j, 110), Some(20));
    assert_eq!(ttl_remaining(&j, 140), Some(-10));
}
