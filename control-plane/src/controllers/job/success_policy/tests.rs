//! Unit tests of the success policy.
use super::*;

use k8s_openapi::{
    api::batch::v1::{JobSpec, SuccessPolicy, SuccessPolicyRule},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

fn job(indexed: bool, rules: Vec<(Option<&str>, Option<i32>)>) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some("leader".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            completions: Some(10),
            completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.to_owned()),
            success_policy: Some(SuccessPolicy {
                rules: rules
                    .into_iter()
                    .map(|(indexes, count)| SuccessPolicyRule {
                        succeeded_indexes: indexes.map(str::to_owned),
                        succeeded_count: count,
                    })
                    .collect(),
            }),
            ..JobSpec::default()
        }),
        status: None,
    }
}

#[test]
fn rules_are_met_by_indexes_counts_or_counts_within_indexes() {
    let leader = job(true, vec![(Some("0"), None)]);
    assert_eq!(matched(&leader, &Intervals::default()), None);
    assert_eq!(matched(&leader, &Intervals::from_indexes([1, 2])), None);
    assert_eq!(
        matched(&leader, &Intervals::from_indexes([0])),
        Some("Matched rules at index 0".to_owned())
    );
    // All of 2-4 needed by rule 0; any 2 of 5-9 by rule 1; 3 indexes anywhere by rule 2.
    let j = job(
        true,
        vec![(Some("2-4"), None), (Some("5-9"), Some(2)), (None, Some(3))],
    );
    assert_eq!(matched(&j, &Intervals::from_indexes([2, 4])), None);
    assert_eq!(
        matched(&j, &Intervals::from_indexes([2, 3, 4])),
        Some("Matched rules at index 0".to_owned())
    );
    assert_eq!(
        matched(&j, &Intervals::from_indexes([6, 9])),
        Some("Matched rules at index 1".to_owned())
    );
    assert_eq!(
        matched(&j, &Intervals::from_indexes([0, 1, 5])),
        Some("Matched rules at index 2".to_owned())
    );
    // Out-of-range or garbage indexes never match; a NonIndexed Job has no policy.
    let broken = job(true, vec![(Some("x,40-50"), None)]);
    assert_eq!(matched(&broken, &Intervals::from_indexes(0..10)), None);
    let plain = job(false, vec![(None, Some(1))]);
    assert_eq!(matched(&plain, &Intervals::from_indexes([0])), None);
}

#[test]
fn overlap_counts_shared_indexes() {
    let a = Intervals::parse("0-4,8,10-12", 20);
    let b = Intervals::parse("3-9,11", 20);
    assert_eq!(a.overlap(&b), 4); // 3, 4, 8, 11
    assert_eq!(b.overlap(&a), 4);
    assert_eq!(a.overlap(&Intervals::default()), 0);
    // Upstream prints two adjacent indexes as a list, three or more as a range.
    assert_eq!(
        Intervals::from_indexes([1, 2, 5, 6, 7]).to_string(),
        "1,2,5-7"
    );
}
