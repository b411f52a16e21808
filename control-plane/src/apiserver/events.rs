//! `events.k8s.io/v1` Events: stored as core/v1 Events (as kube-apiserver stores them, in
//! `/registry/events/`), so both APIs show the same events; this module converts between
//! the two forms, field by field.
use serde_json::{Map, Value};

use super::resources::Conversion;

/// `(events.k8s.io/v1 field, core/v1 field)`.
const FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &mut Value, from_index: usize, api_version: &str) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let moved: Map<String, Value> = FIELDS
        .iter()
        .filter_map(|pair| {
            let (from, to) = if from_index == 0 {
                (pair.0, pair.1)
            } else {
                (pair.1, pair.0)
            };
            map.remove(from).map(|value| (to.to_owned(), value))
        })
        .collect();
    map.extend(moved);
    map.insert("apiVersion".into(), Value::from(api_version));
}

fn to_core(obj: &mut Value) {
    rename(obj, 0, "v1");
}

fn from_core(obj: &mut Value) {
    rename(obj, 1, "events.k8s.io/v1");
}

/// The conversion of `events.k8s.io/v1` Events to and from their stored core form.
pub static CONVERSION: Conversion = Conversion {
    to_storage: to_core,
    from_storage: from_core,
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip_through_the_core_form() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled",
            "reportingController": "kubelet", "deprecatedCount": 2, "eventTime": "2026-01-01T00:00:00.000000Z"});
        let mut core = new.clone();
        to_core(&mut core);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert!(core.get("note").is_none());
        from_core(&mut core);
        assert_eq!(core, new);
    }
}
