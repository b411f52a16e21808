"""The official Python `kubernetes` client against a corten API server.

Run by control-plane/tests/apiserver_python.rs, which starts `corten-server` on loopback and
points KUBECONFIG at its admin kubeconfig; it can also run against any cluster whose
kubeconfig allows creating namespaces and CRDs. Each test makes its own namespace.

Covers Pods through the typed CoreV1Api (create, list by label, strategic merge patch, watch
from a resourceVersion and live, delete), and a custom resource: a CRD created through
ApiextensionsV1Api, waited on until Established, then Widgets through CustomObjectsApi
(create, get, list, merge patch, the status subresource, schema validation, delete).

Every expectation is what upstream kube-apiserver does; nothing here is tuned to corten.
No node runs a kubelet, so Pods stay Pending: only the API is exercised.
"""

import threading
import time
import uuid

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

# Seconds any wait in these tests may take; the server is on loopback.
WAIT = 20

GROUP = "demo.corten.io"
VERSION = "v1"
PLURAL = "widgets"
CRD_NAME = f"{PLURAL}.{GROUP}"


@pytest.fixture(scope="session")
def api():
    """An ApiClient from $KUBECONFIG (or ~/.kube/config)."""
    config.load_kube_config()
    with client.ApiClient() as api_client:
        yield api_client


@pytest.fixture
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core):
    """A fresh namespace, deleted afterwards."""
    name = f"py-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise


def pod(name, labels):
    """A Pod with one busybox container. It stays Pending and untouched: it asks for a
    scheduler nobody runs (so the watch tests see exactly the test's own changes), and there
    is no kubelet."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            scheduler_name="nobody",
            containers=[
                client.V1Container(
                    name="main", image="busybox", command=["sleep", "3600"]
                )
            ]
        ),
    )


def assert_not_found(read):
    """`read()` answers 404 Not Found."""
    with pytest.raises(ApiException) as err:
        read()
    assert err.value.status == 404, err.value.body


def watch_events(stream, name, until):
    """(type, resourceVersion, labels) of the events about `name` up to the first `until`,
    and a description of the whole stream for failure messages."""
    seen, total, began = [], 0, time.monotonic()
    for event in stream:
        total += 1
        obj = event["object"]
        if obj.metadata.name != name:
            continue
        seen.append((event["type"], obj.metadata.resource_version, obj.metadata.labels))
        if event["type"] == until:
            break
    took = time.monotonic() - began
    return seen, f"events about {name}: {seen}; the stream gave {total} events in {took:.1f}s"


def test_pod_create_list_patch_delete(core, namespace):
    created = core.create_namespaced_pod(namespace, pod("web-1", {"app": "web"}))
    assert created.metadata.name == "web-1"
    assert created.metadata.namespace == namespace
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    assert created.status.phase == "Pending"
    # Defaults a client can rely on.
    assert created.spec.restart_policy == "Always"
    assert created.spec.containers[0].image_pull_policy == "Always"
    core.create_namespaced_pod(namespace, pod("db-1", {"app": "db"}))

    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(namespace, pod("web-1", {"app": "web"}))
    assert err.value.status == 409

    every = core.list_namespaced_pod(namespace)
    assert sorted(p.metadata.name for p in every.items) == ["db-1", "web-1"]
    assert every.metadata.resource_version
    web = core.list_namespaced_pod(namespace, label_selector="app=web")
    assert [p.metadata.name for p in web.items] == ["web-1"]
    both = core.list_namespaced_pod(namespace, label_selector="app in (web,db)")
    assert len(both.items) == 2
    assert core.list_namespaced_pod(namespace, label_selector="app=none").items == []

    # A dict body is sent as a strategic merge patch: the new label joins the old one.
    patched = core.patch_namespaced_pod(
        "web-1", namespace, {"metadata": {"labels": {"tier": "frontend"}}}
    )
    assert patched.metadata.labels == {"app": "web", "tier": "frontend"}
    assert patched.metadata.resource_version != created.metadata.resource_version
    assert patched.metadata.uid == created.metadata.uid
    front = core.list_namespaced_pod(namespace, label_selector="tier=frontend")
    assert [p.metadata.name for p in front.items] == ["web-1"]
    assert core.read_namespaced_pod("web-1", namespace).metadata.labels["tier"] == "frontend"

    core.delete_namespaced_pod("web-1", namespace)
    # An unscheduled Pod is deleted at once (no kubelet has to confirm it).
    assert_not_found(lambda: core.read_namespaced_pod("web-1", namespace))
    left = core.list_namespaced_pod(namespace)
    assert [p.metadata.name for p in left.items] == ["db-1"]
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_pod("web-1", namespace)
    assert err.value.status == 404


def test_pod_watch_replays_from_resource_version(core, namespace):
    start = core.list_namespaced_pod(namespace).metadata.resource_version
    core.create_namespaced_pod(namespace, pod("old-1", {"app": "old"}))
    core.patch_namespaced_pod("old-1", namespace, {"metadata": {"labels": {"v": "2"}}})
    core.delete_namespaced_pod("old-1", namespace)

    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_pod,
        namespace=namespace,
        resource_version=start,
        timeout_seconds=WAIT,
        _request_timeout=WAIT + 5,
    )
    try:
        seen, story = watch_events(stream, "old-1", until="DELETED")
    finally:
        w.stop()
    assert [kind for kind, _, _ in seen] == ["ADDED", "MODIFIED", "DELETED"], story
    assert seen[1][2] == {"app": "old", "v": "2"}
    # resourceVersions are opaque to clients: each change has its own, none is the start's.
    versions = [rv for _, rv, _ in seen]
    assert len(set(versions)) == 3 and start not in versions, versions


def test_pod_watch_sees_live_changes(core, namespace):
    start = core.list_namespaced_pod(namespace).metadata.resource_version
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_pod,
        namespace=namespace,
        resource_version=start,
        timeout_seconds=WAIT,
        _request_timeout=WAIT + 5,
    )
    failures = []

    def change():
        try:
            # Most likely after the watch is established, so the events arrive live; had
            # they come first, the watch would replay them from `start` all the same.
            time.sleep(1)
            core.create_namespaced_pod(namespace, pod("live-1", {"app": "live"}))
            core.patch_namespaced_pod(
                "live-1", namespace, {"metadata": {"labels": {"v": "2"}}}
            )
            core.delete_namespaced_pod("live-1", namespace)
        except Exception as err:  # reported by the test below
            failures.append(err)

    changer = threading.Thread(target=change)
    changer.start()
    try:
        seen, story = watch_events(stream, "live-1", until="DELETED")
    finally:
        w.stop()
        changer.join(WAIT)
    assert not failures, failures
    assert [kind for kind, _, _ in seen] == ["ADDED", "MODIFIED", "DELETED"], story
    assert seen[1][2] == {"app": "live", "v": "2"}


def widget_crd():
    """Widgets: namespaced, v1 served and stored, spec.size an integer, with status."""
    schema = client.V1JSONSchemaProps(
        type="object",
        properties={
            "spec": client.V1JSONSchemaProps(
                type="object",
                properties={
                    "size": client.V1JSONSchemaProps(type="integer"),
                    "color": client.V1JSONSchemaProps(type="string"),
                },
            ),
            "status": client.V1JSONSchemaProps(
                type="object",
                properties={"ready": client.V1JSONSchemaProps(type="boolean")},
            ),
        },
    )
    return client.V1CustomResourceDefinition(
        metadata=client.V1ObjectMeta(name=CRD_NAME),
        spec=client.V1CustomResourceDefinitionSpec(
            group=GROUP,
            scope="Namespaced",
            names=client.V1CustomResourceDefinitionNames(
                plural=PLURAL, singular="widget", kind="Widget", list_kind="WidgetList"
            ),
            versions=[
                client.V1CustomResourceDefinitionVersion(
                    name=VERSION,
                    served=True,
                    storage=True,
                    schema=client.V1CustomResourceValidation(open_apiv3_schema=schema),
                    subresources=client.V1CustomResourceSubresources(status={}),
                )
            ],
        ),
    )


def established(crd):
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="module")
def widgets(api):
    """The Widget CRD, created and Established; deleted afterwards."""
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.delete_custom_resource_definition(CRD_NAME)
    except ApiException as err:
        if err.status != 404:
            raise
    else:  # left over from an earlier run against the same cluster
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                ext.read_custom_resource_definition(CRD_NAME)
            except ApiException as err:
                if err.status == 404:
                    break
                raise
            time.sleep(0.2)
    created = ext.create_custom_resource_definition(widget_crd())
    assert created.metadata.name == CRD_NAME
    deadline = time.monotonic() + WAIT
    crd = created
    while not established(crd):
        assert time.monotonic() < deadline, f"not Established in {WAIT}s: {crd.status}"
        time.sleep(0.2)
        crd = ext.read_custom_resource_definition(CRD_NAME)
    yield client.CustomObjectsApi(api)
    ext.delete_custom_resource_definition(CRD_NAME)


def widget(name, size, labels=None):
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"size": size, "color": "red"},
    }


def test_custom_objects(widgets, namespace):
    args = (GROUP, VERSION, namespace, PLURAL)
    created = widgets.create_namespaced_custom_object(
        *args, widget("w1", 3, {"app": "demo"})
    )
    assert created["kind"] == "Widget"
    assert created["apiVersion"] == f"{GROUP}/{VERSION}"
    assert created["metadata"]["namespace"] == namespace
    assert created["metadata"]["uid"]
    assert created["metadata"]["resourceVersion"]
    assert created["metadata"]["generation"] == 1
    assert created["spec"] == {"size": 3, "color": "red"}
    widgets.create_namespaced_custom_object(*args, widget("w2", 1, {"app": "other"}))

    got = widgets.get_namespaced_custom_object(*args, "w1")
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    assert got["spec"]["size"] == 3

    listed = widgets.list_namespaced_custom_object(*args)
    assert listed["kind"] == "WidgetList"
    assert listed["metadata"]["resourceVersion"]
    assert sorted(w["metadata"]["name"] for w in listed["items"]) == ["w1", "w2"]
    demo = widgets.list_namespaced_custom_object(*args, label_selector="app=demo")
    assert [w["metadata"]["name"] for w in demo["items"]] == ["w1"]

    # CustomObjectsApi patches with a JSON merge patch: only `size` changes.
    patched = widgets.patch_namespaced_custom_object(*args, "w1", {"spec": {"size": 5}})
    assert patched["spec"] == {"size": 5, "color": "red"}
    assert patched["metadata"]["generation"] == 2
    assert patched["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]

    # With the status subresource, the main resource ignores status and /status ignores
    # everything else.
    ignored = widgets.patch_namespaced_custom_object(*args, "w1", {"status": {"ready": True}})
    assert "status" not in ignored or ignored["status"].get("ready") is None
    status = widgets.patch_namespaced_custom_object_status(
        *args, "w1", {"status": {"ready": True}, "spec": {"size": 9}}
    )
    assert status["status"] == {"ready": True}
    assert status["spec"]["size"] == 5
    assert status["metadata"]["generation"] == 2

    widgets.delete_namespaced_custom_object(*args, "w1")
    assert_not_found(lambda: widgets.get_namespaced_custom_object(*args, "w1"))
    left = widgets.list_namespaced_custom_object(*args)
    assert [w["metadata"]["name"] for w in left["items"]] == ["w2"]


def test_custom_object_schema_is_enforced(widgets, namespace):
    args = (GROUP, VERSION, namespace, PLURAL)
    with pytest.raises(ApiException) as err:
        widgets.create_namespaced_custom_object(*args, widget("bad", "big"))
    assert err.value.status == 422, err.value.body
    assert "spec.size" in err.value.body, err.value.body
    assert_not_found(lambda: widgets.get_namespaced_custom_object(*args, "bad"))

    widgets.create_namespaced_custom_object(*args, widget("good", 1))
    with pytest.raises(ApiException) as err:
        widgets.patch_namespaced_custom_object(*args, "good", {"spec": {"size": "big"}})
    assert err.value.status == 422, err.value.body
    assert widgets.get_namespaced_custom_object(*args, "good")["spec"]["size"] == 1
