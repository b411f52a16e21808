//! Unit tests of the DaemonSet decisions.
use super::*;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{Container, NodeSpec, PodCondition, PodStatus, PodTemplateSpec, Taint},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
    jiff::Timestamp,
};

use crate::controllers::history::POD_REVISION_LABEL;

fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Arc<Node> {
    let mut all: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
    Arc::new(Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(all),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints),
            ..NodeSpec::default()
        }),
        status: None,
    })
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        effect: effect.to_owned(),
        ..Taint::default()
    }
}

fn daemonset(node_selector: &[(&str, &str)]) -> DaemonSet {
    DaemonSet {
        metadata: ObjectMeta {
            name: Some("agent".to_owned()),
            namespace: Some("kube-system".to_owned()),
            uid: Some("ds-uid".to_owned()),
            generation: Some(2),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), "agent".to_owned())])),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([("app".to_owned(), "agent".to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "agent".to_owned(),
                        image: Some("agent:1".to_owned()),
                        ..Container::default()
                    }],
                    node_selector: (!node_selector.is_empty()).then(|| {
                        node_selector
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect()
                    }),
                    ..PodSpec::default()
                }),
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

fn daemon_pod(
    ds: &DaemonSet,
    name: &str,
    node: &str,
    hash: &str,
    ready: bool,
    created: i64,
) -> Arc<CachedPod> {
    let mut pod = pod_for_node(ds, hash, node);
    pod.metadata.name = Some(name.to_owned());
    if hash == "old" {
        // Made from an earlier generation of the DaemonSet.
        if let Some(labels) = pod.metadata.labels.as_mut() {
            labels.insert(TEMPLATE_GENERATION_LABEL.to_owned(), "1".to_owned());
        }
    }
    pod.metadata.creation_timestamp = Some(Time(
        Timestamp::new(created, 0).unwrap_or(Timestamp::UNIX_EPOCH),
    ));
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_owned());
    }
    pod.status = Some(PodStatus {
        phase: Some("Running".to_owned()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".to_owned(),
            status: if ready { "True" } else { "False" }.to_owned(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    Arc::new(CachedPod::from(pod))
}

#[test]
fn node_selectors_and_taints_decide_where_daemons_run() {
    let ds = daemonset(&[("role", "edge")]);
    assert_eq!(
        node_should_run(&node("a", &[("role", "edge")], vec![]), &ds),
        (true, true)
    );
    assert_eq!(
        node_should_run(&node("b", &[], vec![]), &ds),
        (false, false)
    );
    let ds = daemonset(&[]);
    // Node problems are tolerated by default...
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        assert_eq!(
            node_should_run(&node("c", &[], vec![taint(key, "NoExecute")]), &ds),
            (true, true),
            "{key}"
        );
    }
    for key in [
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/unschedulable",
    ] {
        assert_eq!(
            node_should_run(&node("c", &[], vec![taint(key, "NoSchedule")]), &ds),
            (true, true),
            "{key}"
        );
    }
    // ... other taints are not: NoSchedule keeps new pods off, NoExecute evicts.
    assert_eq!(
        node_should_run(&node("d", &[], vec![taint("dedicated", "NoSchedule")]), &ds),
        (false, true)
    );
    assert_eq!(
        node_should_run(&node("e", &[], vec![taint("dedicated", "NoExecute")]), &ds),
        (false, false)
    );
    // network-unavailable is tolerated by host-network daemons only.
    let network = node(
        "f",
        &[],
        vec![taint(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        )],
    );
    assert_eq!(node_should_run(&network, &ds), (false, true));
    let mut host = daemonset(&[]);
    if let Some(spec) = host.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.host_network = Some(true);
    }
    assert_eq!(node_should_run(&network, &host), (true, true));
}

#[test]
fn required_node_affinity_and_node_name_are_honoured() {
    let mut ds = daemonset(&[]);
    if let Some(spec) = ds.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.affinity = Some(pin_to_node(None, "only"));
    }
    assert_eq!(
        node_should_run(&node("only", &[], vec![]), &ds),
        (true, true)
    );
    assert_eq!(
        node_should_run(&node("other", &[], vec![]), &ds),
        (false, false)
    );
    let mut named = daemonset(&[]);
    if let Some(spec) = named.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.node_name = Some("only".to_owned());
    }
    assert_eq!(
        node_should_run(&node("other", &[], vec![]), &named),
        (false, false)
    );
}

#[test]
fn daemon_pods_are_pinned_by_affinity_and_carry_the_revision() {
    let ds = daemonset(&[]);
    let pod = pod_for_node(&ds, "h1", "n1");
    assert_eq!(target_node(&CachedPod::of(&pod)).as_deref(), Some("n1"));
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none(),
        "the scheduler binds it"
    );
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(POD_REVISION_LABEL).map(String::as_str),
        Some("h1")
    );
    assert_eq!(
        labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str),
        Some("2")
    );
    assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    assert_eq!(tolerations.len(), 6);
    // The scheduler's own filter agrees with the pin.
    let info = |n: &str| NodeInfo::new(node(n, &[], vec![]));
    assert!(filters::node_affinity(&CachedPod::of(&pod), &info("n1")).is_ok());
    assert!(filters::node_affinity(&CachedPod::of(&pod), &info("n2")).is_err());
    // Adding the tolerations twice changes nothing.
    let mut spec = pod.spec.clone().unwrap_or_default();
    add_default_tolerations(&mut spec);
    assert_eq!(spec.tolerations.map(|t| t.len()), Some(6));
}

#[test]
fn the_manage_loop_creates_missing_pods_and_deletes_misplaced_ones() {
    let ds = daemonset(&[("role", "edge")]);
    let nodes = vec![
        node("a", &[("role", "edge")], vec![]),
        node("b", &[("role", "edge")], vec![]),
        node("c", &[], vec![]),
        node("d", &[("role", "edge")], vec![]),
    ];
    let mut failed = (*daemon_pod(&ds, "d-failed", "d", "h", false, 1)).clone();
    if let Some(status) = failed.status.as_mut() {
        status.phase = Some("Failed".to_owned());
    }
    let pods = vec![
        daemon_pod(&ds, "a-1", "a", "h", true, 1),
        daemon_pod(&ds, "a-2", "a", "h", true, 2),
        daemon_pod(&ds, "c-1", "c", "h", true, 1),
        Arc::new(failed),
        // An unscheduled pod for a node that is gone.
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some("gone-1".to_owned()),
                ..pod_for_node(&ds, "h", "gone").metadata
            },
            ..pod_for_node(&ds, "h", "gone")
        })),
    ];
    let by_node = pods_by_node(&pods);
    let plan = plan_nodes(&ds, &nodes, &by_node, "h", 100);
    assert_eq!(plan.create_on, ["b"]);
    let mut deleted = plan.delete.clone();
    deleted.sort();
    assert_eq!(deleted, ["a-2", "c-1", "d-failed", "gone-1"]);
}

#[test]
fn a_terminating_pod_is_waited_for_before_its_replacement() {
    let ds = daemonset(&[]);
    let mut terminating = (*daemon_pod(&ds, "a-1", "a", "h", true, 1)).clone();
    terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let by_node = pods_by_node(&[Arc::new(terminating)]);
    let plan = plan_nodes(&ds, &[node("a", &[], vec![])], &by_node, "h", 100);
    assert_eq!(plan, NodePlan::default());
}

#[test]
fn rolling_updates_replace_within_max_unavailable() {
    let ds = daemonset(&[]);
    let pods = vec![
        daemon_pod(&ds, "a-old", "a", "old", true, 1),
        daemon_pod(&ds, "b-old", "b", "old", true, 1),
        daemon_pod(&ds, "c-old", "c", "old", false, 1),
    ];
    let by_node = pods_by_node(&pods);
    // The unavailable old pod goes regardless; one available one too (maxUnavailable 1).
    let mut doomed = rolling_deletions(&ds, &by_node, "new", 1, 100);
    doomed.sort();
    assert_eq!(doomed.len(), 2);
    assert!(doomed.contains(&"c-old".to_owned()));
    // A new pod that is not available yet uses up the budget.
    let pods = vec![
        daemon_pod(&ds, "a-new", "a", "new", false, 2),
        daemon_pod(&ds, "b-old", "b", "old", true, 1),
    ];
    assert!(rolling_deletions(&ds, &pods_by_node(&pods), "new", 1, 100).is_empty());
    assert_eq!(max_unavailable(&ds, 10), 1);
    let mut percent = daemonset(&[]);
    if let Some(rolling) = percent
        .spec
        .as_mut()
        .and_then(|s| s.update_strategy.as_mut())
        .and_then(|u| u.rolling_update.as_mut())
    {
        rolling.max_unavailable = Some(IntOrString::String("25%".to_owned()));
    }
    assert_eq!(max_unavailable(&percent, 10), 3, "rounded up");
    assert_eq!(max_unavailable(&percent, 0), 0);
}

#[test]
fn status_counts_nodes_not_pods() {
    let ds = daemonset(&[("role", "edge")]);
    let nodes = vec![
        node("a", &[("role", "edge")], vec![]),
        node("b", &[("role", "edge")], vec![]),
        node("c", &[], vec![]),
    ];
    let pods = vec![
        daemon_pod(&ds, "a-1", "a", "new", true, 1),
        daemon_pod(&ds, "b-1", "b", "old", false, 1),
        daemon_pod(&ds, "c-1", "c", "new", true, 1),
    ];
    let s = status(&ds, &nodes, &pods_by_node(&pods), "new", 100);
    assert_eq!(s.desired_number_scheduled, 2);
    assert_eq!(s.current_number_scheduled, 2);
    assert_eq!(s.number_misscheduled, 1);
    assert_eq!(s.number_ready, 1);
    assert_eq!(s.number_available, Some(1));
    assert_eq!(s.number_unavailable, Some(1));
    assert_eq!(s.updated_number_scheduled, Some(1));
    assert_eq!(s.observed_generation, Some(2));
}

/// A DaemonSet that surges (maxUnavailable 0) with minReadySeconds.
fn surging(max_surge: IntOrString, min_ready: i32) -> DaemonSet {
    let mut ds = daemonset(&[("role", "edge")]);
    if let Some(spec) = ds.spec.as_mut() {
        spec.min_ready_seconds = Some(min_ready);
        spec.update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(max_surge),
            }),
        });
    }
    ds
}

/// A daemon pod Ready since `ready_since` (None: not Ready).
fn timed_pod(
    ds: &DaemonSet,
    name: &str,
    node: &str,
    hash: &str,
    ready_since: Option<i64>,
) -> Arc<CachedPod> {
    let mut pod = (*daemon_pod(ds, name, node, hash, ready_since.is_some(), 1)).clone();
    if let Some(condition) = pod
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .and_then(|c| c.first_mut())
    {
        condition.last_transition_time =
            ready_since.map(|t| Time(Timestamp::new(t, 0).unwrap_or(Timestamp::UNIX_EPOCH)));
    }
    Arc::new(pod)
}

#[test]
fn surge_is_a_count_or_a_percentage_rounded_up() {
    assert_eq!(max_surge(&surging(IntOrString::Int(2), 0), 10), 2);
    let percent = surging(IntOrString::String("34%".to_owned()), 0);
    assert_eq!(max_surge(&percent, 3), 2, "1.02 rounds up to 2");
    assert_eq!(max_surge(&percent, 0), 0);
    assert!(
        allows_surge(&percent),
        "any percentage of one node is a node"
    );
    assert!(!allows_surge(&daemonset(&[])));
    let mut on_delete = surging(IntOrString::Int(1), 0);
    if let Some(strategy) = on_delete
        .spec
        .as_mut()
        .and_then(|s| s.update_strategy.as_mut())
    {
        strategy.type_ = Some("OnDelete".to_owned());
    }
    assert_eq!(max_surge(&on_delete, 5), 0, "only RollingUpdate surges");
    // maxUnavailable 0 is kept when surging (it is 1 only if both are 0).
    assert_eq!(max_unavailable(&surging(IntOrString::Int(1), 0), 3), 0);
}

#[test]
fn surging_creates_new_pods_beside_old_ones_on_at_most_max_surge_nodes() {
    let ds = surging(IntOrString::Int(1), 10);
    let edge = |name: &str| node(name, &[("role", "edge")], vec![]);
    let nodes = vec![edge("a"), edge("b"), edge("c")];
    let now = 1000;
    // All old and available: one node (the budget) gets a new pod, nothing is deleted.
    let pods = vec![
        timed_pod(&ds, "a-old", "a", "old", Some(0)),
        timed_pod(&ds, "b-old", "b", "old", Some(0)),
        timed_pod(&ds, "c-old", "c", "old", Some(0)),
    ];
    let by_node = pods_by_node(&pods);
    let plan = surge_update(&ds, &nodes, &by_node, "new", 1, 3, now);
    assert_eq!(plan.create_on, ["a"]);
    assert!(plan.delete.is_empty());
    // The manage loop keeps both pods on a surging node.
    let mut pods = pods;
    pods.push(timed_pod(&ds, "a-new", "a", "new", None));
    let by_node = pods_by_node(&pods);
    assert_eq!(
        plan_nodes(&ds, &nodes, &by_node, "new", now),
        NodePlan::default()
    );
    // a-new not available yet: the budget is used up, nothing else happens.
    assert_eq!(
        surge_update(&ds, &nodes, &by_node, "new", 1, 3, now),
        NodePlan::default()
    );
    // Ready for 5 s of minReadySeconds 10: still waiting, and the controller looks again then.
    pods[3] = timed_pod(&ds, "a-new", "a", "new", Some(now - 5));
    let by_node = pods_by_node(&pods);
    assert_eq!(
        surge_update(&ds, &nodes, &by_node, "new", 1, 3, now),
        NodePlan::default()
    );
    assert_eq!(
        plan_nodes(&ds, &nodes, &by_node, "new", now),
        NodePlan::default()
    );
    assert_eq!(next_available(&ds, &pods, now), Some(5));
    // Available: the old pod goes (from both loops) and the next node surges.
    pods[3] = timed_pod(&ds, "a-new", "a", "new", Some(now - 10));
    let by_node = pods_by_node(&pods);
    let plan = surge_update(&ds, &nodes, &by_node, "new", 1, 3, now);
    assert_eq!(plan.delete, ["a-old"]);
    assert_eq!(plan.create_on, ["b"]);
    assert_eq!(
        plan_nodes(&ds, &nodes, &by_node, "new", now).delete,
        ["a-old"]
    );
    assert_eq!(next_available(&ds, &pods, now), None);
}

#[test]
fn surging_replaces_unavailable_old_pods_at_once_and_keeps_availability() {
    let ds = surging(IntOrString::Int(1), 0);
    let edge = |name: &str| node(name, &[("role", "edge")], vec![]);
    let nodes = vec![edge("a"), edge("b"), edge("c"), node("d", &[], vec![])];
    let now = 1000;
    let pods = vec![
        // Surging already (new pod not Ready): the budget of 1 is used.
        timed_pod(&ds, "a-old", "a", "old", Some(0)),
        timed_pod(&ds, "a-new", "a", "new", None),
        // Unavailable old pods get their new pod regardless of the budget.
        timed_pod(&ds, "b-old", "b", "old", None),
        timed_pod(&ds, "c-old", "c", "old", Some(0)),
        // d no longer fits: its available old pod waits until pods elsewhere are available
        // beyond the desired 3.
        timed_pod(&ds, "d-old", "d", "old", Some(0)),
    ];
    let by_node = pods_by_node(&pods);
    let plan = surge_update(&ds, &nodes, &by_node, "new", 1, 3, now);
    assert_eq!(plan.create_on, ["b"]);
    assert!(plan.delete.is_empty(), "{plan:?}");
    // a, c and d available = 3, desired 3: nothing spare. With b and a fifth node e available
    // too (5 of 4 desired), d's pod can go.
    let mut more = pods.clone();
    more[1] = timed_pod(&ds, "a-new", "a", "new", Some(0));
    more[2] = timed_pod(&ds, "b-old", "b", "old", Some(0));
    more.push(timed_pod(&ds, "e-new", "e", "new", Some(0)));
    let mut nodes_e = nodes.clone();
    nodes_e.push(edge("e"));
    let plan = surge_update(&ds, &nodes_e, &pods_by_node(&more), "new", 1, 4, now);
    let mut deleted = plan.delete.clone();
    deleted.sort();
    assert_eq!(deleted, ["a-old", "d-old"]);
    assert_eq!(plan.create_on, ["b"]);
    // The manage loop with surge: a node left with only terminating pods gets a new one now,
    // a not-Ready old pod beside a new one goes, and extra pods of each kind go.
    let mut terminating = (*timed_pod(&ds, "c-old", "c", "old", Some(0))).clone();
    terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let pods = vec![
        timed_pod(&ds, "a-old", "a", "old", None),
        timed_pod(&ds, "a-new", "a", "new", None),
        timed_pod(&ds, "b-old", "b", "old", Some(0)),
        timed_pod(&ds, "b-new", "b", "new", None),
        timed_pod(&ds, "b-new2", "b", "new", None),
        Arc::new(terminating),
    ];
    let plan = plan_nodes(&ds, &nodes, &pods_by_node(&pods), "new", now);
    assert_eq!(plan.create_on, ["c"]);
    let mut deleted = plan.delete;
    deleted.sort();
    assert_eq!(deleted, ["a-old", "b-new2"]);
}
