//! The Deployment controller's arithmetic, as plain functions over a Deployment and its
//! ReplicaSets (upstream's `deployment/util` and the decision halves of `rolling.go`,
//! `recreate.go`, `sync.go` and `progress.go`): maxSurge/maxUnavailable resolution, the new
//! ReplicaSet's size, proportional scaling, the rolling scale-down of old ReplicaSets, revision
//! annotations, history cleanup, status and conditions.
//!
//! Owns every number the controller writes; it must not do I/O (the controller applies).
use std::{cmp::Ordering, collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet},
        core::v1::PodTemplateSpec,
    },
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
};
use serde_json::Value;

/// The revision of a ReplicaSet (and of its Deployment).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a ReplicaSet that was rolled back to.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas plus maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells ReplicaSets (and their pods) of one Deployment apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Deployment annotations never copied to ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// Longest `revision-history` annotation.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// Condition types and reasons (upstream's names: kubectl and users match on them).
pub const PROGRESSING: &str = "Progressing";
/// The Available condition.
pub const AVAILABLE: &str = "Available";
/// The ReplicaFailure condition, copied from a ReplicaSet.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// A new ReplicaSet was created.
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
/// An existing ReplicaSet matches the template.
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
/// The rollout made progress.
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
/// The rollout finished.
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
/// No progress within progressDeadlineSeconds.
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
/// Creating the new ReplicaSet failed.
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
/// `spec.paused` was set.
pub const PAUSED: &str = "DeploymentPaused";
/// `spec.paused` was cleared.
pub const RESUMED: &str = "DeploymentResumed";

/// The Deployment's desired replicas.
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Whether the strategy is RollingUpdate (the default).
pub fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t != "Recreate")
}

/// Whether `spec.paused` is set.
pub fn is_paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

/// The Deployment's pod template.
pub fn template(d: &Deployment) -> PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

/// A ReplicaSet's `spec.replicas`.
pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// Pods a ReplicaSet can be counted on to keep available: its available pods, but never more
/// than it is scaled to (a status not yet updated after a scale-down overstates them).
fn rs_available_within_scale(rs: &ReplicaSet) -> i32 {
    rs_available(rs).min(rs_replicas(rs)).max(0)
}

fn annotation<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A ReplicaSet's revision (0 when it has none).
pub fn revision_of(rs: &ReplicaSet) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

/// Oldest first; equal times by name.
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    created(a)
        .cmp(&created(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// An int-or-percent resolved against `total`, percentages rounded up or down.
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(text) => {
            let percent: i64 = text.strip_suffix('%')?.parse().ok()?;
            let product = percent.checked_mul(i64::from(total))?;
            let value = if round_up {
                product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(value).ok()
        }
    }
}

/// maxSurge and maxUnavailable for `desired` replicas; both zero becomes one unavailable, so a
/// rollout always makes progress.
pub fn resolve_fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(surge.unwrap_or(&zero), desired, true).unwrap_or(0);
    let unavailable = scaled_value(unavailable.unwrap_or(&zero), desired, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
}

/// How many pods above `replicas` a rollout may run (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    if is_rolling(d) {
        fenceposts(d).0
    } else {
        0
    }
}

/// How many of `replicas` may be unavailable during a rollout (0 for Recreate).
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

/// JSON with nulls and empty objects and lists dropped: two templates equal in this form
/// are semantically equal (upstream's semantic equality treats nil and empty alike).
fn normalized(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| normalized(v).map(|v| (k.clone(), v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .iter()
                .map(|v| normalized(v).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other.clone()),
    }
}

/// Whether two templates are equal once the `pod-template-hash` label is ignored.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        serde_json::to_value(&t).ok().and_then(|v| normalized(&v))
    };
    strip(a) == strip(b)
}

/// The ReplicaSet running the Deployment's current template: the oldest whose template
/// matches.
pub fn find_new(d: &Deployment, sets: &[ReplicaSet]) -> Option<usize> {
    let wanted = template(d);
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|&a, &b| by_creation(&sets[a], &sets[b]));
    order.into_iter().find(|&i| {
        sets[i]
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, &wanted))
    })
}

/// The size a new (or existing new) ReplicaSet may have now: for RollingUpdate as many as
/// maxSurge allows over all ReplicaSets, never above the Deployment's replicas; for Recreate
/// all of them.
pub fn new_rs_replicas(d: &Deployment, total_replicas: i32, new_replicas: i32) -> i32 {
    if !is_rolling(d) {
        return replicas(d);
    }
    let max_total = replicas(d) + max_surge(d);
    if total_replicas >= max_total {
        return new_replicas;
    }
    let scale_up = (max_total - total_replicas).min(replicas(d) - new_replicas);
    new_replicas + scale_up
}

fn annotated_int(rs: &ReplicaSet, key: &str) -> Option<i32> {
    annotation(rs, key).and_then(|v| v.parse().ok())
}

/// Whether a ReplicaSet runs all of the Deployment's replicas, all available.
pub fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    annotated_int(rs, DESIRED_REPLICAS) == Some(replicas(d))
        && rs_replicas(rs) == replicas(d)
        && rs_available(rs) == replicas(d)
}

/// Whether the Deployment's replicas changed since its active ReplicaSets were last sized.
pub fn is_scaling_event(d: &Deployment, sets: &[ReplicaSet]) -> bool {
    sets.iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .any(|rs| annotated_int(rs, DESIRED_REPLICAS).is_some_and(|n| n != replicas(d)))
}

/// Sets the desired/max replicas annotations; true when they changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_owned(), value);
            changed = true;
        }
    }
    changed
}

/// One ReplicaSet size change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleStep {
    /// The ReplicaSet.
    pub name: String,
    /// Its new size.
    pub to: i32,
    /// `Some("up"|"down"|"")`: write even when only the annotations change (proportional
    /// scaling); `None`: write only when the size changes.
    pub operation: Option<&'static str>,
}

/// What a change of the Deployment's replicas does to its ReplicaSets (upstream's `scale`):
/// a single active ReplicaSet (or, with none, the newest) takes them all; a saturated new one
/// leaves the old ones at zero; during a rolling update every active ReplicaSet grows or
/// shrinks in proportion, leftovers going to the largest.
pub fn scale_plan(d: &Deployment, new: Option<&ReplicaSet>, olds: &[ReplicaSet]) -> Vec<ScaleStep> {
    if new.is_none() && olds.is_empty() {
        return Vec::new();
    }
    let mut olds_newest_first: Vec<&ReplicaSet> = olds.iter().collect();
    olds_newest_first.sort_by(|a, b| by_creation(b, a));
    let active: Vec<&ReplicaSet> = olds_newest_first
        .iter()
        .copied()
        .chain(new)
        .filter(|rs| rs_replicas(rs) > 0)
        .collect();
    let single = match active.len() {
        0 => new.or(olds_newest_first.first().copied()),
        1 => Some(active[0]),
        _ => None,
    };
    let name = |rs: &ReplicaSet| rs.metadata.name.clone().unwrap_or_default();
    if let Some(rs) = single {
        if rs_replicas(rs) == replicas(d) {
            return Vec::new();
        }
        return vec![ScaleStep {
            name: name(rs),
            to: replicas(d),
            operation: None,
        }];
    }
    if new.is_some_and(|rs| is_saturated(d, rs)) {
        return olds
            .iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .map(|rs| ScaleStep {
                name: name(rs),
                to: 0,
                operation: None,
            })
            .collect();
    }
    if !is_rolling(d) {
        return Vec::new();
    }
    let mut all: Vec<&ReplicaSet> = active;
    let current: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let allowed = if replicas(d) > 0 {
        replicas(d) + max_surge(d)
    } else {
        0
    };
    let to_add = allowed - current;
    let operation = match to_add.cmp(&0) {
        Ordering::Greater => {
            // Largest first, newer first among equals.
            all.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| by_creation(b, a))
            });
            "up"
        }
        Ordering::Less => {
            // Largest first, older first among equals.
            all.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| by_creation(a, b))
            });
            "down"
        }
        Ordering::Equal => "",
    };
    let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::with_capacity(all.len());
    for rs in &all {
        let proportion = if to_add != 0 {
            proportion(d, rs, to_add, added, status_replicas)
        } else {
            0
        };
        sizes.push(rs_replicas(rs) + proportion);
        added += proportion;
    }
    if to_add != 0 {
        if let Some(first) = sizes.first_mut() {
            *first = (*first + to_add - added).max(0);
        }
    }
    all.iter()
        .zip(sizes)
        .map(|(rs, to)| ScaleStep {
            name: name(rs),
            to,
            operation: Some(operation),
        })
        .collect()
}

/// The share of `to_add` one ReplicaSet takes, by its size relative to the Deployment's size
/// when it was last scaled (its max-replicas annotation).
fn proportion(
    d: &Deployment,
    rs: &ReplicaSet,
    to_add: i32,
    added: i32,
    status_replicas: i32,
) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if replicas(d) == 0 {
        -rs_replicas(rs)
    } else {
        let target = f64::from(replicas(d) + max_surge(d));
        let annotated = annotated_int(rs, MAX_REPLICAS).unwrap_or(status_replicas);
        if annotated == 0 {
            0
        } else {
            let size = f64::from(rs_replicas(rs)) * target / f64::from(annotated);
            size.round() as i32 - rs_replicas(rs)
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// The new ReplicaSet's size for this step of a rolling update, when it changes (upstream's
/// `reconcileNewReplicaSet`).
pub fn rolling_new_size(d: &Deployment, new: &ReplicaSet, all: &[&ReplicaSet]) -> Option<i32> {
    let current = rs_replicas(new);
    if current == replicas(d) {
        return None;
    }
    if current > replicas(d) {
        return Some(replicas(d));
    }
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let size = new_rs_replicas(d, total, current);
    (size != current).then_some(size)
}

/// How far the old ReplicaSets shrink in this step of a rolling update (upstream's
/// `reconcileOldReplicaSets`): first the unhealthy pods of old ReplicaSets, then healthy old
/// pods as long as maxUnavailable holds. `olds` are all old ReplicaSets.
pub fn rolling_old_steps(d: &Deployment, new: &ReplicaSet, olds: &[ReplicaSet]) -> Vec<ScaleStep> {
    let mut active: Vec<ReplicaSet> = olds
        .iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .cloned()
        .collect();
    let old_pods: i32 = active.iter().map(rs_replicas).sum();
    if old_pods == 0 {
        return Vec::new();
    }
    let all_pods: i32 = olds.iter().map(rs_replicas).sum::<i32>() + rs_replicas(new);
    let min_available = replicas(d) - max_unavailable(d);
    let new_unavailable = rs_replicas(new) - rs_available_within_scale(new);
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    active.sort_by(by_creation);
    let mut steps = Vec::new();
    // Unhealthy replicas first: removing them costs no availability.
    let mut cleaned = 0;
    for rs in active.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = rs_replicas(rs) - rs_available_within_scale(rs);
        if rs_replicas(rs) == 0 || unhealthy <= 0 {
            continue;
        }
        let count = (max_scaled_down - cleaned).min(unhealthy);
        let to = rs_replicas(rs) - count;
        set_size(rs, to);
        steps.push(ScaleStep {
            name: rs.metadata.name.clone().unwrap_or_default(),
            to,
            operation: None,
        });
        cleaned += count;
    }
    // Then healthy ones, keeping at least minAvailable available.
    let available: i32 =
        active.iter().map(rs_available_within_scale).sum::<i32>() + rs_available_within_scale(new);
    if available <= min_available {
        return steps;
    }
    let to_scale_down = available - min_available;
    let mut scaled = 0;
    for rs in active.iter_mut() {
        if scaled >= to_scale_down {
            break;
        }
        if rs_replicas(rs) == 0 {
            continue;
        }
        let count = rs_replicas(rs).min(to_scale_down - scaled);
        let to = rs_replicas(rs) - count;
        set_size(rs, to);
        steps.push(ScaleStep {
            name: rs.metadata.name.clone().unwrap_or_default(),
            to,
            operation: None,
        });
        scaled += count;
    }
    steps
}

fn set_size(rs: &mut ReplicaSet, to: i32) {
    rs.spec.get_or_insert_with(Default::default).replicas = Some(to);
}

/// The annotations the new ReplicaSet should carry (upstream's
/// `SetNewReplicaSetAnnotations`): the Deployment's own (but for the bookkeeping ones), the
/// new revision unless it already has a higher one (keeping the numbers it had before in
/// `revision-history`, which is how a rollback shows), and — for a ReplicaSet about to be
/// created — the replicas annotations. Returns them and whether they changed.
pub fn new_rs_annotations(
    d: &Deployment,
    current: Option<&BTreeMap<String, String>>,
    new_revision: i64,
    exists: bool,
) -> (BTreeMap<String, String>, bool) {
    let mut annotations = current.cloned().unwrap_or_default();
    let mut changed = false;
    for (key, value) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&key.as_str()) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned();
    let old_number = match old.as_deref() {
        None | Some("") => 0,
        Some(text) => match text.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return (annotations, changed),
        },
    };
    if old_number < new_revision {
        annotations.insert(REVISION.to_owned(), new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            let history = annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            let mut entries: Vec<String> = history
                .split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            entries.push(old);
            while entries.join(",").len() > MAX_REVISION_HISTORY_CHARS && entries.len() > 1 {
                entries.remove(0);
            }
            annotations.insert(REVISION_HISTORY.to_owned(), entries.join(","));
        }
    }
    if !exists {
        let desired = replicas(d).to_string();
        let max = (replicas(d) + max_surge(d)).to_string();
        annotations.insert(DESIRED_REPLICAS.to_owned(), desired);
        annotations.insert(MAX_REPLICAS.to_owned(), max);
        changed = true;
    }
    (annotations, changed)
}

/// Old ReplicaSets to delete beyond `revisionHistoryLimit`, lowest revisions first; only
/// empty, settled ones are deleted.
pub fn history_to_delete(d: &Deployment, olds: &[ReplicaSet]) -> Vec<String> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
        return Vec::new();
    };
    let mut alive: Vec<&ReplicaSet> = olds
        .iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let surplus = alive.len() as i64 - i64::from(limit);
    if surplus <= 0 {
        return Vec::new();
    }
    alive.sort_by(|a, b| {
        revision_of(a)
            .cmp(&revision_of(b))
            .then_with(|| by_creation(a, b))
    });
    alive
        .into_iter()
        .take(surplus as usize)
        .filter(|rs| {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            rs_status_replicas(rs) == 0
                && rs_replicas(rs) == 0
                && rs.metadata.generation.unwrap_or(0) <= observed
        })
        .filter_map(|rs| rs.metadata.name.clone())
        .collect()
}

/// Whether `progressDeadlineSeconds` is set (and not "forever").
pub fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

fn deadline_seconds(d: &Deployment) -> i64 {
    i64::from(
        d.spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600),
    )
}

/// A condition of a status.
pub fn condition<'a>(
    status: Option<&'a DeploymentStatus>,
    kind: &str,
) -> Option<&'a DeploymentCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// A new condition at `now`.
pub fn new_condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Sets a condition unless one with the same status and reason is there; keeps the
/// transition time when only the reason changes.
pub fn set_condition(status: &mut DeploymentStatus, mut new: DeploymentCondition) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(current) = conditions.iter().find(|c| c.type_ == new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

/// Removes a condition.
pub fn remove_condition(status: &mut DeploymentStatus, kind: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != kind);
    }
}

/// The Progressing condition pause or resume calls for, if it is not there yet (upstream's
/// `checkPausedConditions`); a timed-out rollout keeps its condition.
pub fn paused_condition(d: &Deployment, now: &Time) -> Option<DeploymentCondition> {
    let current = condition(d.status.as_ref(), PROGRESSING);
    if current.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT)) {
        return None;
    }
    let paused_shown = current.is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
    if is_paused(d) && !paused_shown {
        Some(new_condition(
            PROGRESSING,
            "Unknown",
            PAUSED,
            "Deployment is paused".to_owned(),
            now,
        ))
    } else if !is_paused(d) && paused_shown {
        Some(new_condition(
            PROGRESSING,
            "Unknown",
            RESUMED,
            "Deployment is resumed".to_owned(),
            now,
        ))
    } else {
        None
    }
}

/// The status the ReplicaSets add up to, with the Available condition (upstream's
/// `calculateStatus`).
pub fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: &Time,
) -> DeploymentStatus {
    let available: i32 = all.iter().map(|rs| rs_available(rs)).sum();
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(|rs| rs_status_replicas(rs)).sum()),
        updated_replicas: Some(new.map_or(0, rs_status_replicas)),
        ready_replicas: Some(all.iter().map(|rs| rs_ready(rs)).sum()),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: d.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    let condition = if available >= replicas(d) - max_unavailable(d) {
        new_condition(
            AVAILABLE,
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_owned(),
            now,
        )
    } else {
        new_condition(
            AVAILABLE,
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_owned(),
            now,
        )
    };
    set_condition(&mut status, condition);
    status
}

/// Whether every replica is updated and available and the spec was observed.
pub fn deployment_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = replicas(d);
    status.updated_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn deployment_progressing(d: &Deployment, status: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = status.replicas.unwrap_or(0) - status.updated_replicas.unwrap_or(0);
    status.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || status.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || status.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn timed_out(d: &Deployment, status: &DeploymentStatus, now: i64) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(progressing) = condition(Some(status), PROGRESSING) else {
        return false;
    };
    match progressing.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => {
            let from = progressing
                .last_update_time
                .as_ref()
                .map_or(now, |t| t.0.as_second());
            from + deadline_seconds(d) < now
        }
    }
}

/// The status of a rolling or recreating Deployment, with the Progressing condition moved on
/// as upstream's `syncRolloutStatus` does, and ReplicaSets' failures copied.
pub fn rollout_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: &Time,
) -> DeploymentStatus {
    let mut status = calculate_status(d, all, new, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, PROGRESSING);
    }
    let current = condition(d.status.as_ref(), PROGRESSING).cloned();
    let already_complete = status.replicas == status.updated_replicas
        && current
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    let subject = match new.and_then(|rs| rs.metadata.name.as_deref()) {
        Some(name) => format!("ReplicaSet {name:?}"),
        None => format!(
            "Deployment {:?}",
            d.metadata.name.as_deref().unwrap_or_default()
        ),
    };
    if has_progress_deadline(d) && !already_complete {
        if deployment_complete(d, &status) {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    format!("{subject} has successfully progressed."),
                    now,
                ),
            );
        } else if deployment_progressing(d, &status) {
            let mut progress = new_condition(
                PROGRESSING,
                "True",
                RS_UPDATED,
                format!("{subject} is progressing."),
                now,
            );
            if let Some(current) = &current {
                if current.status == "True" {
                    progress.last_transition_time = current.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, progress);
        } else if timed_out(d, &status, now.0.as_second()) {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT,
                    format!("{subject} has timed out progressing."),
                    now,
                ),
            );
        }
    }
    let failure = new
        .into_iter()
        .chain(all.iter().copied())
        .flat_map(|rs| rs.status.iter().flat_map(|s| s.conditions.iter().flatten()))
        .find(|c| c.type_ == REPLICA_FAILURE)
        .map(|c| DeploymentCondition {
            type_: REPLICA_FAILURE.to_owned(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: c.last_transition_time.clone(),
            last_update_time: c.last_transition_time.clone(),
        });
    match failure {
        Some(failure) => set_condition(&mut status, failure),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// When to look at the Deployment again to notice a progress deadline passing.
pub fn progress_check_after(
    d: &Deployment,
    status: &DeploymentStatus,
    now: i64,
) -> Option<Duration> {
    if !has_progress_deadline(d) || is_paused(d) {
        return None;
    }
    let progressing = condition(Some(status), PROGRESSING)?;
    if deployment_complete(d, status) || progressing.reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let from = progressing
        .last_update_time
        .as_ref()
        .map_or(now, |t| t.0.as_second());
    let after = from + deadline_seconds(d) - now;
    Some(Duration::from_secs(after.max(1) as u64))
}

#[cfg(test)]
mod tests;
