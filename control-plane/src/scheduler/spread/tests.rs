use std::{collections::BTreeMap, sync::Arc};

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Node, ReplicationController, Service},
};
use serde_json::{json, Value};

use super::*;
use crate::scheduler::cache::{Cache, PodInfo};

fn node(name: &str, labels: Value, taints: Value) -> Result<Arc<Node>> {
    let mut labels = labels;
    if let Some(map) = labels.as_object_mut() {
        map.insert(HOSTNAME_KEY.to_owned(), json!(name));
    }
    Ok(Arc::new(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"}},
    }))?))
}

fn pod(namespace: &str, name: &str, labels: Value, spec: Value) -> Result<CachedPod> {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "main", "image": "busybox"}]);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }))?)
}

fn bound(mut pod: CachedPod, node: &str) -> Arc<CachedPod> {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_owned());
    }
    Arc::new(pod)
}

/// No workloads at all: pods without constraints get no defaults.
struct NoWorkloads;

impl Workloads for NoWorkloads {
    fn services(&self, _: &str) -> Vec<Arc<Service>> {
        Vec::new()
    }
    fn replication_controller(&self, _: &str, _: &str) -> Option<Arc<ReplicationController>> {
        None
    }
    fn replica_set(&self, _: &str, _: &str) -> Option<Arc<ReplicaSet>> {
        None
    }
    fn stateful_set(&self, _: &str, _: &str) -> Option<Arc<StatefulSet>> {
        None
    }
}

/// Fixed workloads, for the system defaults.
#[derive(Default)]
struct FakeWorkloads {
    services: Vec<Arc<Service>>,
    replica_sets: Vec<Arc<ReplicaSet>>,
}

impl Workloads for FakeWorkloads {
    fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.services
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }
    fn replication_controller(&self, _: &str, _: &str) -> Option<Arc<ReplicationController>> {
        None
    }
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets
            .iter()
            .find(|r| {
                r.metadata.namespace.as_deref() == Some(namespace)
                    && r.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }
    fn stateful_set(&self, _: &str, _: &str) -> Option<Arc<StatefulSet>> {
        None
    }
}

/// A deterministic pseudo-random sequence (xorshift), so failures reproduce.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Upstream's PreFilter counting written out plainly over the cache's current picture:
/// per constraint, topology value → matching pods on the nodes that count.
fn brute_force(
    cache: &Cache,
    incoming: &CachedPod,
    set: &ConstraintSet,
) -> Vec<BTreeMap<String, i64>> {
    let namespace = incoming.metadata.namespace.as_deref().unwrap_or_default();
    let selector = incoming
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    set.constraints
        .iter()
        .map(|c| {
            let mut counts = BTreeMap::new();
            for node in cache.nodes() {
                let labels = node
                    .node
                    .as_ref()
                    .and_then(|n| n.metadata.labels.clone())
                    .unwrap_or_default();
                if set.require_all_keys
                    && set
                        .constraints
                        .iter()
                        .any(|c| !labels.contains_key(&c.topology_key))
                {
                    continue;
                }
                let Some(value) = labels.get(&c.topology_key) else {
                    continue;
                };
                if c.honor_node_affinity && selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                    continue;
                }
                // The incoming pod tolerates nothing.
                let tainted = filters::taints(node)
                    .iter()
                    .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute");
                if c.honor_taints && tainted {
                    continue;
                }
                let matching = node
                    .pods
                    .values()
                    .filter(|p| {
                        let p = &p.pod;
                        p.metadata.namespace.as_deref() == Some(namespace)
                            && p.metadata.deletion_timestamp.is_none()
                            && !c.selector.is_empty()
                            && c.selector.matches(p.metadata.labels.as_ref())
                    })
                    .count() as i64;
                *counts.entry(value.clone()).or_insert(0) += matching;
            }
            counts
        })
        .collect()
}

fn as_maps(domains: &[Domains]) -> Vec<BTreeMap<String, i64>> {
    domains
        .iter()
        .map(|d| d.iter().map(|(v, n)| (v.to_owned(), n)).collect())
        .collect()
}

fn labels_for(dice: &mut Dice, i: usize) -> Value {
    let zone = ["z0", "z1", "z2"][dice.below(3)];
    let mut labels = json!({"tier": if dice.below(3) == 0 { "back" } else { "front" }});
    // Now and then a node without a zone: it counts for no constraint of the set.
    if i % 7 != 3 {
        labels[ZONE_KEY] = json!(zone);
    }
    labels
}

fn taints_for(dice: &mut Dice) -> Value {
    match dice.below(4) {
        0 => json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        1 => json!([{"key": "soft", "value": "x", "effect": "PreferNoSchedule"}]),
        _ => json!([]),
    }
}

#[test]
fn kept_counts_match_a_recount_after_every_change() -> Result<()> {
    let incoming = pod(
        "a",
        "incoming",
        json!({"app": "web", "track": "blue"}),
        json!({
            "nodeSelector": {"tier": "front"},
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"app": "web"}}, "nodeTaintsPolicy": "Honor"},
                {"maxSkew": 2, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchExpressions": [
                     {"key": "app", "operator": "In", "values": ["web", "db"]}]},
                 "matchLabelKeys": ["track"], "nodeAffinityPolicy": "Ignore"},
            ],
        }),
    )?;
    let set = PodSpread::new(&incoming, &NoWorkloads)
        .hard
        .context("hard constraints")?;
    let mut dice = Dice(0x5eed_1234_abcd_0001);
    let mut cache = Cache::default();
    for i in 0..12 {
        let labels = labels_for(&mut dice, i);
        cache.set_node(node(&format!("n{i}"), labels, taints_for(&mut dice))?);
    }
    // Some pods exist before the counts are kept, the rest come after.
    let namespaces = ["a", "a", "a", "b"];
    let apps = ["web", "web", "db", "other"];
    let tracks = ["blue", "green"];
    let mut placed: Vec<String> = Vec::new();
    let mut next = 0;
    let mut add_pod = |cache: &mut Cache, dice: &mut Dice, assume: bool| -> Result<String> {
        next += 1;
        let namespace = namespaces[dice.below(namespaces.len())];
        let labels = json!({"app": apps[dice.below(apps.len())], "track": tracks[dice.below(2)]});
        let name = format!("p{next}");
        let node = format!("n{}", dice.below(13));
        let p = pod(namespace, &name, labels, json!({}))?;
        if assume {
            cache.assume(PodInfo::new(Arc::new(p)), &node);
        } else {
            cache.set_pod(bound(p, &node));
        }
        Ok(format!("{namespace}/{name}"))
    };
    for _ in 0..30 {
        placed.push(add_pod(&mut cache, &mut dice, false)?);
    }
    cache.prepare_spread(&set);
    let check = |cache: &Cache, step: &str| -> Result<()> {
        let kept = cache.spread_domains(&set).context("the set is kept")?;
        let expected = brute_force(cache, &incoming, &set);
        ensure!(
            as_maps(kept) == expected,
            "after {step}: kept {:?}, recount {expected:?}",
            as_maps(kept)
        );
        for (domains, expected) in kept.iter().zip(&expected) {
            ensure!(
                domains.min() == expected.values().copied().min(),
                "after {step}: minimum {:?} vs {expected:?}",
                domains.min()
            );
        }
        Ok(())
    };
    check(&cache, "building")?;
    ensure!(
        brute_force(&cache, &incoming, &set)
            .iter()
            .any(|m| m.values().any(|n| *n > 0)),
        "the scenario counts some pods"
    );
    for step in 0..400 {
        let what = dice.below(9);
        match what {
            0..=2 => placed.push(add_pod(&mut cache, &mut dice, false)?),
            3 => placed.push(add_pod(&mut cache, &mut dice, true)?),
            4 if !placed.is_empty() => {
                let key = placed.swap_remove(dice.below(placed.len()));
                cache.remove_pod(&key);
            }
            5 if !placed.is_empty() => {
                // A placed pod starts terminating (or is relabelled) as the informer says.
                let key = &placed[dice.below(placed.len())];
                let (namespace, name) = key.split_once('/').context("key")?;
                let Some(node) = cache
                    .nodes()
                    .find(|n| n.pods.contains_key(key))
                    .map(|n| n.name().to_owned())
                else {
                    continue;
                };
                let mut p = pod(
                    namespace,
                    name,
                    json!({"app": apps[dice.below(apps.len())], "track": "blue"}),
                    json!({}),
                )?;
                if dice.below(2) == 0 {
                    p.metadata.deletion_timestamp =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                        ));
                }
                cache.set_pod(bound(p, &node));
            }
            6 => {
                let i = dice.below(13);
                let labels = labels_for(&mut dice, i);
                cache.set_node(node(&format!("n{i}"), labels, taints_for(&mut dice))?);
            }
            7 => cache.remove_node(&format!("n{}", dice.below(13))),
            _ => {
                // A status-only update: counts must not move.
                let existing = cache
                    .nodes()
                    .nth(dice.below(12))
                    .and_then(|n| n.node.clone());
                if let Some(existing) = existing {
                    let mut updated = (*existing).clone();
                    updated.metadata.resource_version = Some(step.to_string());
                    cache.set_node(Arc::new(updated));
                }
            }
        }
        check(&cache, &format!("step {step} ({what})"))?;
    }
    Ok(())
}

fn cache_with(nodes: &[(&str, Value)], pods: &[(&str, &str, Value)]) -> Result<Cache> {
    let mut cache = Cache::default();
    for (name, labels) in nodes {
        cache.set_node(node(name, labels.clone(), json!([]))?);
    }
    for (i, (node, namespace, labels)) in pods.iter().enumerate() {
        cache.set_pod(bound(
            pod(namespace, &format!("p{i}"), labels.clone(), json!({}))?,
            node,
        ));
    }
    Ok(cache)
}

fn verdicts(cache: &Cache, incoming: &CachedPod) -> Result<Vec<(String, Result<(), Reason>)>> {
    let spread = PodSpread::new(incoming, &NoWorkloads);
    let set = spread.hard.as_ref().context("hard constraints")?;
    let state = FilterState::new(incoming, set, None, cache.nodes());
    Ok(cache
        .nodes()
        .map(|n| (n.name().to_owned(), state.check(n)))
        .collect())
}

fn passing(verdicts: &[(String, Result<(), Reason>)]) -> Vec<&str> {
    verdicts
        .iter()
        .filter(|(_, v)| v.is_ok())
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn skew_is_measured_against_the_global_minimum() -> Result<()> {
    let zone = |z: &str| json!({ZONE_KEY: z});
    let cache = cache_with(
        &[
            ("a1", zone("a")),
            ("a2", zone("a")),
            ("b1", zone("b")),
            ("bare", json!({})),
        ],
        &[
            ("a1", "ns", json!({"app": "x"})),
            ("a2", "ns", json!({"app": "x"})),
            // Pods of another namespace or with other labels do not count.
            ("b1", "other", json!({"app": "x"})),
            ("b1", "ns", json!({"app": "y"})),
        ],
    )?;
    let spec = |max_skew: i32, min_domains: Option<i32>| {
        json!({"topologySpreadConstraints": [{"maxSkew": max_skew, "topologyKey": ZONE_KEY,
            "whenUnsatisfiable": "DoNotSchedule", "minDomains": min_domains,
            "labelSelector": {"matchLabels": {"app": "x"}}}]})
    };
    // Zone a holds 2, zone b 0: only b keeps the skew within 1.
    let first = verdicts(
        &cache,
        &pod("ns", "new", json!({"app": "x"}), spec(1, None))?,
    )?;
    ensure!(passing(&first) == ["b1"], "{first:?}");
    let bare = first.iter().find(|(n, _)| n == "bare").context("bare")?;
    ensure!(
        bare.1 == Err(Reason(REASON_MISSING_LABEL.to_owned())),
        "{bare:?}"
    );
    ensure!(
        first.iter().find(|(n, _)| n == "a1").map(|v| &v.1)
            == Some(&Err(Reason(REASON_SKEW.to_owned()))),
        "{first:?}"
    );
    // A pod its own selector does not match adds nothing: 2 - 0 <= 2 fits zone a too.
    let second = verdicts(
        &cache,
        &pod("ns", "new", json!({"app": "z"}), spec(2, None))?,
    )?;
    ensure!(passing(&second) == ["a1", "a2", "b1"], "{second:?}");

    // Balanced zones: with minDomains above the 2 domains there are, the minimum is 0.
    let balanced = cache_with(
        &[("a1", zone("a")), ("b1", zone("b"))],
        &[
            ("a1", "ns", json!({"app": "x"})),
            ("b1", "ns", json!({"app": "x"})),
        ],
    )?;
    let incoming = pod("ns", "new", json!({"app": "x"}), spec(1, None))?;
    ensure!(passing(&verdicts(&balanced, &incoming)?) == ["a1", "b1"]);
    let incoming = pod("ns", "new", json!({"app": "x"}), spec(1, Some(3)))?;
    ensure!(passing(&verdicts(&balanced, &incoming)?).is_empty());
    Ok(())
}

#[test]
fn node_affinity_and_taint_policies_choose_the_domains() -> Result<()> {
    let mut cache = Cache::default();
    cache.set_node(node(
        "a1",
        json!({ZONE_KEY: "a", "disk": "ssd"}),
        json!([]),
    )?);
    cache.set_node(node(
        "b1",
        json!({ZONE_KEY: "b", "disk": "hdd"}),
        json!([]),
    )?);
    cache.set_node(node(
        "c1",
        json!({ZONE_KEY: "c", "disk": "ssd"}),
        json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
    )?);
    cache.set_pod(bound(pod("ns", "p", json!({"app": "x"}), json!({}))?, "a1"));
    let incoming = |affinity: &str, taints: &str| {
        pod(
            "ns",
            "new",
            json!({"app": "x"}),
            json!({"nodeSelector": {"disk": "ssd"}, "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "x"}},
                "nodeAffinityPolicy": affinity, "nodeTaintsPolicy": taints}]}),
        )
    };
    let domains = |incoming: &CachedPod| -> Result<Vec<String>> {
        let set = PodSpread::new(incoming, &NoWorkloads)
            .hard
            .context("hard")?;
        let counts = SpreadCounts::build(&set, cache.nodes());
        let mut values: Vec<String> = counts.domains()[0]
            .iter()
            .map(|(v, _)| v.to_owned())
            .collect();
        values.sort();
        Ok(values)
    };
    // Defaults: node affinity honored (zone b is out), taints ignored (zone c is in).
    ensure!(domains(&incoming("Honor", "Ignore")?)? == ["a", "c"]);
    ensure!(domains(&incoming("Ignore", "Ignore")?)? == ["a", "b", "c"]);
    ensure!(domains(&incoming("Honor", "Honor")?)? == ["a"]);
    Ok(())
}

#[test]
fn constraints_resolve_as_upstream_parses_them() -> Result<()> {
    let incoming = pod(
        "ns",
        "new",
        json!({"app": "x", "rev": "7"}),
        json!({"topologySpreadConstraints": [
            // No selector: selects nothing, and matchLabelKeys do not change that.
            {"maxSkew": 1, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "DoNotSchedule",
             "matchLabelKeys": ["rev"]},
            // An empty selector with matchLabelKeys selects by the pod's own values.
            {"maxSkew": 2, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {}, "matchLabelKeys": ["rev", "absent"]},
            {"maxSkew": 4, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": {"app": "x"}}, "minDomains": 2,
             "nodeAffinityPolicy": "Ignore", "nodeTaintsPolicy": "Honor"},
        ]}),
    )?;
    let spread = PodSpread::new(&incoming, &NoWorkloads);
    let hard = spread.hard.context("hard")?;
    let soft = spread.soft.context("soft")?;
    ensure!(hard.constraints.len() == 2 && soft.constraints.len() == 1);
    ensure!(hard.require_all_keys && soft.require_all_keys);
    let nothing = &hard.constraints[0];
    ensure!(nothing.selector == Selector::Nothing && !nothing.selector.is_empty());
    ensure!(nothing.min_domains == 1 && nothing.honor_node_affinity && !nothing.honor_taints);
    let by_rev = &hard.constraints[1].selector;
    let with = |rev: &str| BTreeMap::from([("rev".to_owned(), rev.to_owned())]);
    ensure!(by_rev.matches(Some(&with("7"))) && !by_rev.matches(Some(&with("8"))));
    ensure!(!by_rev.is_empty());
    let c = &soft.constraints[0];
    ensure!(c.max_skew == 4 && c.min_domains == 2 && !c.honor_node_affinity && c.honor_taints);
    // An empty selector matches everything yet counts nothing.
    let everything = Constraint {
        selector: Selector::Labels(LabelSelector::default()),
        ..c.clone()
    };
    ensure!(everything.selector.matches(None) && !everything.counts(&incoming, "ns"));
    Ok(())
}

#[test]
fn soft_scores_follow_upstream_weights_and_normalization() -> Result<()> {
    let zone = |z: &str| json!({ZONE_KEY: z});
    let cache = cache_with(
        &[
            ("a1", zone("a")),
            ("a2", zone("a")),
            ("b1", zone("b")),
            ("bare", json!({})),
        ],
        &[("a1", "ns", json!({"app": "web"}))],
    )?;
    let incoming = pod(
        "ns",
        "new",
        json!({"app": "web"}),
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE_KEY,
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
    )?;
    let spread = PodSpread::new(&incoming, &NoWorkloads);
    ensure!(spread.hard.is_none());
    let set = spread.soft.context("soft")?;
    let state = ScoreState::new(&set, None, cache.nodes());
    let nodes: Vec<&NodeInfo> = cache.nodes().collect();
    // Two zones: weight ln(4); a-nodes score round(1 * 1.386) = 1, b1 0; normalized
    // 100 * (max + min - s) / max. The node without a zone is ignored: 0.
    ensure!(
        state.scores(&nodes) == [0, 0, 100, 0],
        "{:?}",
        state.scores(&nodes)
    );
    Ok(())
}

fn replica_set(namespace: &str, name: &str, selector: Value) -> Result<Arc<ReplicaSet>> {
    Ok(Arc::new(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "template": {}},
    }))?))
}

fn owned_by_replica_set(name: &str, labels: Value) -> Result<CachedPod> {
    let mut p = pod("ns", name, labels, json!({}))?;
    p.metadata.owner_references = Some(serde_json::from_value(json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u1",
        "controller": true}]))?);
    Ok(p)
}

#[test]
fn system_defaults_spread_by_the_owners_selectors() -> Result<()> {
    let service = |name: &str, selector: Value| -> Result<Arc<Service>> {
        Ok(Arc::new(serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"selector": selector},
        }))?))
    };
    let workloads = FakeWorkloads {
        services: vec![
            service("web", json!({"app": "web"}))?,
            service("other", json!({"app": "db"}))?,
            service("headless", Value::Null)?,
        ],
        replica_sets: vec![replica_set(
            "ns",
            "web-1",
            json!({"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "hash", "operator": "In", "values": ["1"]}]}),
        )?],
    };
    let replica = owned_by_replica_set("web-1-x", json!({"app": "web", "hash": "1"}))?;
    let selector = default_selector(&replica, &workloads);
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    ensure!(selector.matches(Some(&labels(&[("app", "web"), ("hash", "1")]))));
    // The ReplicaSet's expression is part of it; the other Service's selector is not.
    ensure!(!selector.matches(Some(&labels(&[("app", "web"), ("hash", "2")]))));
    let spread = PodSpread::new(&replica, &workloads);
    ensure!(spread.hard.is_none());
    let soft = spread.soft.context("defaults")?;
    ensure!(!soft.require_all_keys);
    let keys: Vec<(&str, i32)> = soft
        .constraints
        .iter()
        .map(|c| (c.topology_key.as_str(), c.max_skew))
        .collect();
    ensure!(keys == [(HOSTNAME_KEY, 3), (ZONE_KEY, 5)], "{keys:?}");

    // Selected by a Service only: its selector.
    let loose = pod("ns", "loose", json!({"app": "web"}), json!({}))?;
    ensure!(PodSpread::new(&loose, &workloads).soft.is_some());
    // Nothing selects it: no defaults.
    let alone = pod("ns", "alone", json!({"app": "cache"}), json!({}))?;
    let spread = PodSpread::new(&alone, &workloads);
    ensure!(spread.soft.is_none() && spread.hard.is_none());
    // Constraints of its own replace the defaults.
    let own = pod(
        "ns",
        "own",
        json!({"app": "web"}),
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "rack",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
    )?;
    let spread = PodSpread::new(&own, &workloads);
    ensure!(spread.soft.is_none() && spread.hard.is_some());
    Ok(())
}

#[test]
fn system_defaults_spread_replicas_by_hostname_without_zones() -> Result<()> {
    let workloads = FakeWorkloads {
        replica_sets: vec![replica_set(
            "ns",
            "web-1",
            json!({"matchLabels": {"app": "web"}}),
        )?],
        ..FakeWorkloads::default()
    };
    let cache = cache_with(
        &[("h1", json!({})), ("h2", json!({})), ("h3", json!({}))],
        &[("h1", "ns", json!({"app": "web"}))],
    )?;
    let incoming = owned_by_replica_set("web-1-y", json!({"app": "web"}))?;
    let set = PodSpread::new(&incoming, &workloads)
        .soft
        .context("defaults")?;
    let state = ScoreState::new(&set, None, cache.nodes());
    let nodes: Vec<&NodeInfo> = cache.nodes().collect();
    // Hostname weight ln(3 + 2): h1 scores round(1.609 + 2) = 4, the others 2; nodes
    // without a zone are not ignored under the defaults.
    ensure!(
        state.scores(&nodes) == [50, 100, 100],
        "{:?}",
        state.scores(&nodes)
    );
    Ok(())
}

#[test]
fn the_index_keeps_the_recently_used_sets() -> Result<()> {
    let mut cache = Cache::default();
    cache.set_node(node("n1", json!({ZONE_KEY: "a"}), json!([]))?);
    let set_for = |i: usize| -> Result<ConstraintSet> {
        let p = pod(
            "ns",
            "new",
            json!({}),
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE_KEY,
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": format!("a{i}")}}}]}),
        )?;
        PodSpread::new(&p, &NoWorkloads).hard.context("hard")
    };
    let first = set_for(0)?;
    cache.prepare_spread(&first);
    for i in 1..INDEX_CAPACITY {
        cache.prepare_spread(&set_for(i)?);
    }
    // Using the first again makes the second the least recently used.
    cache.prepare_spread(&first);
    cache.prepare_spread(&set_for(INDEX_CAPACITY)?);
    ensure!(cache.spread_domains(&first).is_some());
    ensure!(cache.spread_domains(&set_for(1)?).is_none());
    ensure!(cache.spread_domains(&set_for(INDEX_CAPACITY)?).is_some());
    Ok(())
}

#[test]
fn pods_nominated_to_a_node_count_in_its_domain_and_move_a_lone_minimum() -> Result<()> {
    let zone = |z: &str| json!({ZONE_KEY: z});
    let spec = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE_KEY,
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "x"}}}]});
    let incoming = pod("ns", "new", json!({"app": "x"}), spec)?;
    let spread = PodSpread::new(&incoming, &NoWorkloads);
    let set = spread.hard.as_ref().context("hard constraints")?;
    let nominee = |name: &str, namespace: &str, app: &str| -> Result<Arc<CachedPod>> {
        Ok(Arc::new(pod(
            namespace,
            name,
            json!({"app": app}),
            json!({}),
        )?))
    };
    // b1 as the scheduler sees it with `nominated` pods nominated to it.
    let check = |cache: &Cache, nominated: Vec<Arc<CachedPod>>| -> Result<Result<(), Reason>> {
        let state = FilterState::new(&incoming, set, None, cache.nodes());
        let mut view = cache.node("b1").context("b1")?.clone();
        view.nominated = nominated;
        Ok(state.check(&view))
    };
    let skew = Err(Reason(REASON_SKEW.to_owned()));

    // Zones a and c hold one matching pod each; b, alone at the minimum, holds none.
    let cache = cache_with(
        &[("a1", zone("a")), ("b1", zone("b")), ("c1", zone("c"))],
        &[
            ("a1", "ns", json!({"app": "x"})),
            ("c1", "ns", json!({"app": "x"})),
        ],
    )?;
    ensure!(check(&cache, vec![])?.is_ok());
    // One nominee makes 1/1/1: the minimum moves to 1 and b still fits (1 + 1 - 1).
    ensure!(check(&cache, vec![nominee("n1", "ns", "x")?])?.is_ok());
    // Two make b 2 against a minimum of 1: 2 + 1 - 1 > 1.
    let two = vec![nominee("n1", "ns", "x")?, nominee("n2", "ns", "x")?];
    ensure!(check(&cache, two)? == skew);
    // Nominees of another namespace or that the selector does not match count nothing.
    let others = vec![nominee("n1", "other", "x")?, nominee("n2", "ns", "y")?];
    ensure!(check(&cache, others)?.is_ok());

    // Zones a and b both at 0: a nominee on b leaves the minimum at 0 (a still has it).
    let cache = cache_with(&[("a1", zone("a")), ("b1", zone("b"))], &[])?;
    ensure!(check(&cache, vec![])?.is_ok());
    ensure!(check(&cache, vec![nominee("n1", "ns", "x")?])? == skew);
    Ok(())
}
