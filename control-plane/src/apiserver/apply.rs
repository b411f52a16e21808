//! Server-side apply's field ownership: the set of fields each manager applied (recorded in
//! `metadata.managedFields` as FieldsV1), conflicts when a manager applies a different value
//! to a field another manager owns (409 unless `force`), and removal of fields a manager
//! applied before and no longer applies (when nobody else owns them).
//!
//! Lists with a merge key are owned item by item (`k:{"name":"web"}`); other lists are atomic.
//! Only `Apply` operations are tracked; plain updates do not take ownership yet.
use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::{
    objects,
    status::{ApiError, Cause},
    strategic,
};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    /// A map key.
    Field(String),
    /// A list item identified by its merge key, as canonical JSON (`{"name":"web"}`).
    Key(String),
}

/// A path to a field owned as a whole.
pub type FieldPath = Vec<Elem>;

/// Fields never owned: identity and bookkeeping kube-apiserver sets itself.
fn skipped(prefix: &[Elem], key: &str, status_is_subresource: bool) -> bool {
    match prefix {
        [] => matches!(key, "apiVersion" | "kind") || (status_is_subresource && key == "status"),
        [Elem::Field(meta)] if meta == "metadata" => matches!(
            key,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The fields an applied configuration sets.
pub fn fields_of(config: &Value, status_is_subresource: bool) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    walk(
        config,
        None,
        &mut Vec::new(),
        status_is_subresource,
        &mut out,
    );
    out
}

fn walk(
    value: &Value,
    field: Option<&str>,
    prefix: &mut FieldPath,
    status_sub: bool,
    out: &mut BTreeSet<FieldPath>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                if skipped(prefix, key, status_sub) {
                    continue;
                }
                prefix.push(Elem::Field(key.clone()));
                walk(child, Some(key), prefix, status_sub, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let key = field.and_then(|f| strategic::merge_key(f, items.first()));
            let keyed = key.is_some_and(|k| items.iter().all(|i| i.get(k).is_some()));
            match key.filter(|_| keyed) {
                Some(key) => {
                    for item in items {
                        let id =
                            json!({key: item.get(key).cloned().unwrap_or(Value::Null)}).to_string();
                        prefix.push(Elem::Key(id));
                        out.insert(prefix.clone());
                        walk(item, None, prefix, status_sub, out);
                        prefix.pop();
                    }
                }
                None => {
                    out.insert(prefix.clone());
                }
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// A field set as FieldsV1 (`{"f:spec": {"f:replicas": {}}}`).
pub fn to_fields_v1(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut at = &mut root;
        for (i, elem) in path.iter().enumerate() {
            let name = match elem {
                Elem::Field(f) => format!("f:{f}"),
                Elem::Key(k) => format!("k:{k}"),
            };
            let child = at.entry(name).or_insert_with(|| json!({}));
            let Some(map) = child.as_object_mut() else {
                break;
            };
            if i + 1 == path.len() && matches!(elem, Elem::Key(_)) {
                map.insert(".".into(), json!({}));
            }
            at = map;
        }
    }
    Value::Object(root)
}

/// A FieldsV1 document as a field set.
pub fn from_fields_v1(fields: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    read(fields, &mut Vec::new(), &mut out);
    out
}

fn read(fields: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(map) = fields.as_object() else {
        return;
    };
    if map.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (name, child) in map {
        if name == "." {
            out.insert(prefix.clone());
            continue;
        }
        let elem = if let Some(f) = name.strip_prefix("f:") {
            Elem::Field(f.to_owned())
        } else if let Some(k) = name.strip_prefix("k:") {
            Elem::Key(k.to_owned())
        } else {
            continue;
        };
        prefix.push(elem);
        read(child, prefix, out);
        prefix.pop();
    }
}

fn item_matches(item: &Value, key: &str) -> bool {
    match serde_json::from_str::<Map<String, Value>>(key) {
        Ok(id) => id.iter().all(|(k, v)| item.get(k) == Some(v)),
        Err(_) => false,
    }
}

/// The value at a path, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut at = obj;
    for elem in path {
        at = match elem {
            Elem::Field(f) => at.get(f)?,
            Elem::Key(k) => at.as_array()?.iter().find(|i| item_matches(i, k))?,
        };
    }
    Some(at)
}

/// Removes the field or list item at a path.
fn remove_at(obj: &mut Value, path: &[Elem]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut at = obj;
    for elem in parent_path {
        let next = match elem {
            Elem::Field(f) => at.get_mut(f),
            Elem::Key(k) => at
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|i| item_matches(i, k))),
        };
        let Some(next) = next else { return };
        at = next;
    }
    match last {
        Elem::Field(f) => {
            if let Some(map) = at.as_object_mut() {
                map.remove(f);
            }
        }
        Elem::Key(k) => {
            if let Some(items) = at.as_array_mut() {
                items.retain(|i| !item_matches(i, k));
            }
        }
    }
}

/// A path as kube-apiserver prints it in conflicts: `.spec.containers[name="web"].image`.
pub fn display(path: &[Elem]) -> String {
    let mut out = String::new();
    for elem in path {
        match elem {
            Elem::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Elem::Key(k) => {
                let id: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let inner: Vec<String> = id.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", inner.join(",")));
            }
        }
    }
    out
}

fn entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn entry(manager: &str, api_version: &str, fields: &BTreeSet<FieldPath>) -> Value {
    json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": objects::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(fields),
    })
}

/// The managedFields of a newly created object applied by `manager`.
pub fn created(config: &mut Value, manager: &str, api_version: &str, status_is_subresource: bool) {
    let fields = fields_of(config, status_is_subresource);
    objects::metadata_mut(config).insert(
        "managedFields".into(),
        json!([entry(manager, api_version, &fields)]),
    );
}

/// Applies `config` by `manager` onto `current`: conflicts, removals, merge and ownership.
pub fn apply(
    current: &Value,
    config: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    status_is_subresource: bool,
) -> Result<Value, ApiError> {
    let mine = fields_of(config, status_is_subresource);
    let mut previous_mine = BTreeSet::new();
    let mut others: Vec<(Value, BTreeSet<FieldPath>)> = Vec::new();
    for e in entries(current) {
        let set = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
        let same = e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply");
        if same {
            previous_mine = set;
        } else {
            others.push((e, set));
        }
    }
    let mut causes = Vec::new();
    for (e, set) in &others {
        let who = e
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        for path in mine.intersection(set) {
            // A list item's own entry marks that it exists; its fields conflict one by one.
            if matches!(path.last(), Some(Elem::Key(_))) {
                continue;
            }
            if value_at(config, path) != value_at(current, path) {
                causes.push((who.to_owned(), path.clone()));
            }
        }
    }
    if !causes.is_empty() && !force {
        let list: Vec<String> = causes
            .iter()
            .map(|(who, p)| format!("conflict with \"{who}\": {}", display(p)))
            .collect();
        let mut err = ApiError::conflict_plain(format!(
            "Apply failed with {} conflict{}: {}",
            causes.len(),
            if causes.len() == 1 { "" } else { "s" },
            list.join("\n")
        ));
        err.details.causes = causes
            .iter()
            .map(|(who, p)| Cause {
                reason: "FieldManagerConflict".to_owned(),
                message: format!("conflict with \"{who}\""),
                field: display(p),
            })
            .collect();
        return Err(err);
    }
    let mut merged = current.clone();
    for path in previous_mine.difference(&mine) {
        let owned_elsewhere = others.iter().any(|(_, set)| {
            set.iter()
                .any(|p| p.starts_with(path) || path.starts_with(p))
        });
        if !owned_elsewhere {
            remove_at(&mut merged, path);
        }
    }
    strategic::apply(&mut merged, config);
    let mut managed: Vec<Value> = Vec::new();
    for (mut e, set) in others {
        let remaining: BTreeSet<FieldPath> = if force {
            set.difference(&mine).cloned().collect()
        } else {
            set
        };
        if remaining.is_empty() {
            continue;
        }
        e["fieldsV1"] = to_fields_v1(&remaining);
        managed.push(e);
    }
    managed.push(entry(manager, api_version, &mine));
    objects::metadata_mut(&mut merged).insert("managedFields".into(), json!(managed));
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, image: &str, extra: Option<(&str, &str)>) -> Value {
        let mut labels = json!({"app": "web"});
        if let Some((k, v)) = extra {
            labels[k] = json!(v);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": labels},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let set = fields_of(&deployment(1, "a", None), true);
        assert!(set.contains(&vec![
            Elem::Field("spec".into()),
            Elem::Field("replicas".into())
        ]));
        let container = vec![
            Elem::Field("spec".into()),
            Elem::Field("template".into()),
            Elem::Field("spec".into()),
            Elem::Field("containers".into()),
            Elem::Key(r#"{"name":"web"}"#.into()),
        ];
        assert!(set.contains(&container));
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        assert!(!set
            .iter()
            .any(|p| p == &vec![Elem::Field("metadata".into()), Elem::Field("name".into())]));
    }

    #[test]
    fn conflicts_force_and_removal() -> Result<(), ApiError> {
        let mut live = deployment(1, "a", Some(("tier", "front")));
        created(&mut live, "alice", "apps/v1", true);
        // Bob applies a different replica count: conflict, unless forced.
        let bob = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3}});
        let err = apply(&live, &bob, "bob", "apps/v1", false, true)
            .err()
            .ok_or_else(|| ApiError::internal("no conflict"))?;
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("conflict with \"alice\": .spec.replicas"),
            "{}",
            err.message
        );
        let forced = apply(&live, &bob, "bob", "apps/v1", true, true)?;
        assert_eq!(forced["spec"]["replicas"], 3);
        // The same value is no conflict.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}});
        assert!(apply(&live, &same, "carol", "apps/v1", false, true).is_ok());
        // Alice stops applying the tier label: it goes, since nobody else owns it.
        let alice_again = deployment(1, "a", None);
        let after = apply(&live, &alice_again, "alice", "apps/v1", false, true)?;
        assert!(after["metadata"]["labels"].get("tier").is_none(), "{after}");
        assert_eq!(after["metadata"]["labels"]["app"], "web");
        Ok(())
    }
}

/// Records an ordinary write (update or patch) by `manager`: it takes ownership of the
/// fields it changed, away from every other manager (no conflicts, as upstream), and fields
/// it removed are owned by nobody. The object's managedFields come from `old`.
pub fn record_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    status_is_subresource: bool,
) {
    let before = fields_of(old, status_is_subresource);
    let after = fields_of(new, status_is_subresource);
    let changed: BTreeSet<FieldPath> = after
        .iter()
        .filter(|p| match p.last() {
            // A list item's entry changes only when the item appears.
            Some(Elem::Key(_)) => value_at(old, p).is_none(),
            _ => value_at(new, p) != value_at(old, p),
        })
        .cloned()
        .collect();
    let removed: BTreeSet<FieldPath> = before.difference(&after).cloned().collect();
    let touches = |set: &BTreeSet<FieldPath>, path: &FieldPath| {
        set.iter()
            .any(|p| p.starts_with(path) || path.starts_with(p))
    };
    let mut managed: Vec<Value> = Vec::new();
    let mut mine: BTreeSet<FieldPath> = BTreeSet::new();
    for mut e in entries(old) {
        let set = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
        let same = e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Update");
        if same {
            mine = set;
            continue;
        }
        let remaining: BTreeSet<FieldPath> = set
            .into_iter()
            .filter(|p| !touches(&changed, p) && !touches(&removed, p))
            .collect();
        if remaining.is_empty() {
            continue;
        }
        e["fieldsV1"] = to_fields_v1(&remaining);
        managed.push(e);
    }
    mine.retain(|p| !touches(&removed, p));
    mine.extend(changed);
    if !mine.is_empty() {
        managed.push(json!({
            "manager": manager,
            "operation": "Update",
            "apiVersion": api_version,
            "time": objects::now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&mine),
        }));
    }
    if managed.is_empty() {
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    } else {
        objects::metadata_mut(new).insert("managedFields".into(), json!(managed));
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    #[test]
    fn an_update_takes_the_fields_it_changes() -> Result<(), ApiError> {
        let mut live = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        created(&mut live, "alice", "v1", false);
        let mut edited = live.clone();
        edited["data"]["a"] = json!("9");
        record_update(&live, &mut edited, "kubectl-edit", "v1", false);
        let managed = edited["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(managed.len(), 2);
        let alice = from_fields_v1(&managed[0]["fieldsV1"]);
        assert!(!alice.contains(&vec![Elem::Field("data".into()), Elem::Field("a".into())]));
        assert!(alice.contains(&vec![Elem::Field("data".into()), Elem::Field("b".into())]));
        assert_eq!(managed[1]["manager"], "kubectl-edit");
        // Alice applying her old value now conflicts with the editor.
        let again = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        assert_eq!(
            apply(&edited, &again, "alice", "v1", false, false)
                .err()
                .map(|e| e.code),
            Some(409)
        );
        Ok(())
    }
}
