//! When an Indexed Job succeeds early (upstream's `success_policy.go`): `spec.successPolicy`
//! rules, each of a set of indexes that must all succeed (`succeededIndexes`), a number of
//! succeeded indexes (`succeededCount`), or a number of succeeded indexes out of a set. The
//! first rule met gives the Job SuccessCriteriaMet (reason SuccessPolicy), then Complete.
//!
//! Owns this decision; it must not do I/O.
use k8s_openapi::api::batch::v1::Job;

use super::plan::{completions, is_indexed, Intervals};

/// Condition reason: a success policy rule was met.
pub const SUCCESS_POLICY: &str = "SuccessPolicy";

/// The message of the first rule the succeeded indexes meet, if any.
pub fn matched(job: &Job, succeeded: &Intervals) -> Option<String> {
    let policy = job.spec.as_ref()?.success_policy.as_ref()?;
    if !is_indexed(job) || succeeded.total() == 0 {
        return None;
    }
    let limit = completions(job).unwrap_or(0);
    for (index, rule) in policy.rules.iter().enumerate() {
        let met = match (&rule.succeeded_indexes, rule.succeeded_count) {
            (Some(text), count) => {
                let required = Intervals::parse(text, limit);
                // Unparsable or out of range: the rule cannot be met.
                if required.total() == 0 {
                    continue;
                }
                let done = required.overlap(succeeded);
                done == required.total() || count.is_some_and(|c| done >= c)
            }
            (None, Some(count)) => succeeded.total() >= count,
            (None, None) => false,
        };
        if met {
            return Some(format!("Matched rules at index {index}"));
        }
    }
    None
}

#[cfg(test)]
mod tests;
