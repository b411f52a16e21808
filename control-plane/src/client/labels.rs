//! Label selectors over typed objects (`metav1.LabelSelector`), shared by the scheduler and
//! the controllers. The API server has its own parser for selector strings; this is the
//! structured form objects carry.
//!
//! Owns matching only.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether a label set matches a selector (an empty selector matches everything).
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let get = |key: &str| labels.and_then(|l| l.get(key));
    for (key, value) in selector.match_labels.iter().flatten() {
        if get(key) != Some(value) {
            return false;
        }
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let value = get(&requirement.key);
        let ok = match requirement.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let by_label = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            ..LabelSelector::default()
        };
        assert!(selector_matches(&by_label, Some(&labels)));
        assert!(!selector_matches(&by_label, None));
        let not_in = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".to_owned(),
                operator: "NotIn".to_owned(),
                values: Some(vec!["web".to_owned()]),
            }]),
            ..LabelSelector::default()
        };
        assert!(!selector_matches(&not_in, Some(&labels)));
        assert!(selector_matches(&not_in, None));
        assert!(selector_matches(&LabelSelector::default(), None));
    }
}
