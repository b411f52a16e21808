//! Transcoding checked against real encodings: objects built with `k8s-pb`'s prost types
//! (the upstream protos) must come out as the JSON kubectl would have sent, and the bodies
//! kubectl 1.33 itself sent (captured in `testdata/kubectl/*.pb`) must equal the JSON it
//! prints for the same command with `--dry-run=client -o json` (`*.json` beside them).
//! Then what must fail: malformed, hostile and unknown input, each with its error.
use std::collections::BTreeMap;

use k8s_pb::{
    api::{core::v1 as core, policy::v1 as policy},
    apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext,
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1 as meta,
        runtime::{TypeMeta, Unknown},
        util::intstr::IntOrString,
    },
};
use prost::Message as _;
use serde_json::{json, Value};

use super::{
    decode,
    schema::{Schema, Shape},
    transcode::Transcoder,
    well_known, DefaultType, ProtobufError,
};
use crate::apiserver::{
    resources::Registry,
    server::{decode_typed_body, BodyType},
};

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

fn quantity(text: &str) -> Quantity {
    Quantity { string: s(text) }
}

fn int_port(port: i32) -> Option<IntOrString> {
    Some(IntOrString {
        r#type: Some(0),
        int_val: Some(port),
        str_val: None,
    })
}

fn named_port(name: &str) -> Option<IntOrString> {
    Some(IntOrString {
        r#type: Some(1),
        int_val: None,
        str_val: s(name),
    })
}

/// A body as client-go sends it: the magic, then a `runtime.Unknown` around `raw`.
fn body(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s(api_version),
            kind: s(kind),
        }),
        raw: Some(raw),
        content_encoding: s(""),
        content_type: s(""),
    };
    let mut out = b"k8s\x00".to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn transcode(api_version: &str, kind: &str, message: &impl prost::Message) -> Value {
    decode(&body(api_version, kind, message.encode_to_vec()), None)
        .unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn meta(name: &str, namespace: Option<&str>) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        namespace: namespace.map(str::to_owned),
        ..Default::default()
    })
}

#[test]
fn a_pod_with_containers_probes_resources_and_volumes() {
    let container = core::Container {
        name: s("web"),
        image: s("busybox:1"),
        command: vec!["httpd".into()],
        args: vec!["-f".into(), "-p".into(), "8080".into()],
        ports: vec![core::ContainerPort {
            name: s("http"),
            container_port: Some(8080),
            protocol: s("TCP"),
            ..Default::default()
        }],
        env: vec![
            core::EnvVar {
                name: s("A"),
                value: s("1"),
                value_from: None,
            },
            core::EnvVar {
                name: s("POD"),
                value: None,
                value_from: Some(core::EnvVarSource {
                    field_ref: Some(core::ObjectFieldSelector {
                        api_version: s("v1"),
                        field_path: s("metadata.name"),
                    }),
                    ..Default::default()
                }),
            },
            core::EnvVar {
                name: s("TOKEN"),
                value: None,
                value_from: Some(core::EnvVarSource {
                    secret_key_ref: Some(core::SecretKeySelector {
                        local_object_reference: Some(core::LocalObjectReference {
                            name: s("creds"),
                        }),
                        key: s("token"),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
        ],
        resources: Some(core::ResourceRequirements {
            limits: BTreeMap::from([("cpu".into(), quantity("500m"))]),
            requests: BTreeMap::from([("memory".into(), quantity("64Mi"))]),
            claims: Vec::new(),
        }),
        liveness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                http_get: Some(core::HttpGetAction {
                    path: s("/healthz"),
                    port: int_port(8080),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            initial_delay_seconds: Some(5),
            ..Default::default()
        }),
        readiness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                tcp_socket: Some(core::TcpSocketAction {
                    port: named_port("http"),
                    host: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: vec![core::VolumeMount {
            name: s("data"),
            mount_path: s("/data"),
            read_only: Some(true),
            ..Default::default()
        }],
        ..Default::default()
    };
    let pod = core::Pod {
        metadata: Some(meta::ObjectMeta {
            name: s("web"),
            namespace: s("default"),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            containers: vec![container],
            volumes: vec![
                core::Volume {
                    name: s("data"),
                    volume_source: Some(core::VolumeSource {
                        empty_dir: Some(core::EmptyDirVolumeSource {
                            medium: None,
                            size_limit: Some(quantity("1Gi")),
                        }),
                        ..Default::default()
                    }),
                },
                core::Volume {
                    name: s("settings"),
                    volume_source: Some(core::VolumeSource {
                        config_map: Some(core::ConfigMapVolumeSource {
                            local_object_reference: Some(core::LocalObjectReference {
                                name: s("settings"),
                            }),
                            default_mode: Some(0o644),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
            ],
            restart_policy: s("Always"),
            // Pointers set to zero values: written, because they were set.
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            // Non-pointer `omitempty` fields at zero: left out, as Go's JSON leaves them out.
            host_network: Some(false),
            node_name: s(""),
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            start_time: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: None,
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        transcode("v1", "Pod", &pod),
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web", "namespace": "default", "labels": {"app": "web"},
                "creationTimestamp": null
            },
            "spec": {
                "containers": [{
                    "name": "web",
                    "image": "busybox:1",
                    "command": ["httpd"],
                    "args": ["-f", "-p", "8080"],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token", "optional": false}}}
                    ],
                    "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "initialDelaySeconds": 5},
                    "readinessProbe": {"tcpSocket": {"port": "http"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}]
                }],
                "volumes": [
                    {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "settings", "configMap": {"name": "settings", "defaultMode": 420}}
                ],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false
            },
            "status": {"startTime": "2023-11-14T22:13:20Z"}
        })
    );
}

#[test]
fn secret_and_config_map_bytes_are_base64() {
    let secret = core::Secret {
        metadata: meta("creds", Some("default")),
        data: BTreeMap::from([
            ("bin".into(), vec![0, 1, 2, 255]),
            ("text".into(), b"hello".to_vec()),
            ("empty".into(), Vec::new()),
        ]),
        r#type: s("Opaque"),
        immutable: Some(true),
        ..Default::default()
    };
    assert_eq!(
        transcode("v1", "Secret", &secret),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "default"},
            "data": {"bin": "AAEC/w==", "text": "aGVsbG8=", "empty": ""},
            "type": "Opaque",
            "immutable": true
        })
    );
    let config_map = core::ConfigMap {
        metadata: meta("settings", None),
        data: BTreeMap::from([("a".into(), "1".into())]),
        binary_data: BTreeMap::from([("b".into(), vec![0xde, 0xad])]),
        immutable: None,
    };
    assert_eq!(
        transcode("v1", "ConfigMap", &config_map),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
            "data": {"a": "1"}, "binaryData": {"b": "3q0="}
        })
    );
}

#[test]
fn a_deployment_keeps_set_pointers_and_drops_zero_defaults() {
    use k8s_pb::api::apps::v1 as apps;
    let deployment = apps::Deployment {
        metadata: meta("web", Some("default")),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            revision_history_limit: Some(0),
            min_ready_seconds: Some(0),
            paused: Some(false),
            selector: Some(meta::LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                match_expressions: vec![meta::LabelSelectorRequirement {
                    key: s("tier"),
                    operator: s("In"),
                    values: vec!["a".into(), "b".into()],
                }],
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: int_port(0),
                    max_surge: named_port("25%"),
                }),
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: BTreeMap::from([("app".into(), "web".into())]),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: s("web"),
                        image: s("nginx"),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            progress_deadline_seconds: None,
        }),
        status: Some(apps::DeploymentStatus::default()),
    };
    assert_eq!(
        transcode("apps/v1", "Deployment", &deployment),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 0,
                "revisionHistoryLimit": 0,
                "selector": {
                    "matchLabels": {"app": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]}
                }
            },
            "status": {}
        })
    );
}

#[test]
fn a_service_with_ports_and_affinity() {
    let service = core::Service {
        metadata: meta("web", None),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: s("http"),
                protocol: s("TCP"),
                port: Some(80),
                target_port: int_port(8080),
                node_port: Some(0),
                app_protocol: None,
            }],
            selector: BTreeMap::from([("app".into(), "web".into())]),
            cluster_ip: s(""),
            r#type: s("ClusterIP"),
            session_affinity: s("ClientIP"),
            session_affinity_config: Some(core::SessionAffinityConfig {
                client_ip: Some(core::ClientIpConfig {
                    timeout_seconds: Some(10800),
                }),
            }),
            ip_families: vec!["IPv4".into()],
            ip_family_policy: s("SingleStack"),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        transcode("v1", "Service", &service),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                "selector": {"app": "web"},
                "type": "ClusterIP",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack"
            }
        })
    );
}

#[test]
fn a_namespace_with_a_zero_creation_time() {
    let namespace = core::Namespace {
        metadata: Some(meta::ObjectMeta {
            name: s("team"),
            namespace: s(""),
            resource_version: s(""),
            generation: Some(0),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }),
        spec: Some(core::NamespaceSpec {
            finalizers: vec!["kubernetes".into()],
        }),
        status: Some(core::NamespaceStatus::default()),
    };
    assert_eq!(
        transcode("v1", "Namespace", &namespace),
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team", "creationTimestamp": null},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {}
        })
    );
}

#[test]
fn an_eviction_with_delete_options() {
    let options = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        preconditions: Some(meta::Preconditions {
            uid: s("0b9f7c4e"),
            resource_version: None,
        }),
        orphan_dependents: None,
        propagation_policy: s("Foreground"),
        dry_run: vec!["All".into()],
        ignore_store_read_error_with_cluster_breaking_potential: None,
    };
    let eviction = policy::Eviction {
        metadata: meta("p1", Some("default")),
        delete_options: Some(options.clone()),
    };
    assert_eq!(
        transcode("policy/v1", "Eviction", &eviction),
        json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "p1", "namespace": "default"},
            "deleteOptions": {
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": "0b9f7c4e"},
                "propagationPolicy": "Foreground",
                "dryRun": ["All"]
            }
        })
    );
    // DeleteOptions is meta/v1's, whatever group version the body names.
    for api_version in ["v1", "apps/v1", "example.com/v1", "meta.k8s.io/v1"] {
        let decoded = transcode(api_version, "DeleteOptions", &options);
        assert_eq!(decoded["gracePeriodSeconds"], 0, "{api_version}");
        assert_eq!(decoded["apiVersion"], api_version);
    }
}

fn props(kind: &str) -> ext::JsonSchemaProps {
    ext::JsonSchemaProps {
        r#type: s(kind),
        ..Default::default()
    }
}

fn raw_json(text: &str) -> ext::Json {
    ext::Json {
        raw: Some(text.as_bytes().to_vec()),
    }
}

#[test]
fn a_crd_with_a_schema() {
    let size = ext::JsonSchemaProps {
        minimum: Some(0.0),
        maximum: Some(10.5),
        ..props("integer")
    };
    let tags = ext::JsonSchemaProps {
        items: Some(Box::new(ext::JsonSchemaPropsOrArray {
            schema: Some(Box::new(props("string"))),
            j_son_schemas: Vec::new(),
        })),
        max_items: Some(4),
        ..props("array")
    };
    let tuple = ext::JsonSchemaProps {
        items: Some(Box::new(ext::JsonSchemaPropsOrArray {
            schema: None,
            j_son_schemas: vec![props("string"), props("integer")],
        })),
        ..props("array")
    };
    let color = ext::JsonSchemaProps {
        r#enum: vec![raw_json("\"red\""), raw_json("\"blue\"")],
        default: Some(raw_json("\"red\"")),
        ..props("string")
    };
    let extra = ext::JsonSchemaProps {
        x_kubernetes_preserve_unknown_fields: Some(true),
        additional_properties: Some(Box::new(ext::JsonSchemaPropsOrBool {
            allows: Some(true),
            schema: None,
        })),
        ..props("object")
    };
    let limits = ext::JsonSchemaProps {
        additional_properties: Some(Box::new(ext::JsonSchemaPropsOrBool {
            allows: Some(true),
            schema: Some(Box::new(props("string"))),
        })),
        ..props("object")
    };
    let port = ext::JsonSchemaProps {
        x_kubernetes_int_or_string: Some(true),
        // A non-pointer `omitempty` string at zero: left out.
        description: s(""),
        ..Default::default()
    };
    let spec = ext::JsonSchemaProps {
        properties: BTreeMap::from([
            ("size".into(), size),
            ("tags".into(), tags),
            ("tuple".into(), tuple),
            ("color".into(), color),
            ("extra".into(), extra),
            ("limits".into(), limits),
            ("port".into(), port),
        ]),
        required: vec!["size".into()],
        x_kubernetes_validations: vec![ext::ValidationRule {
            rule: s("self.size <= 10"),
            message: s(""),
            ..Default::default()
        }],
        ..props("object")
    };
    let crd = ext::CustomResourceDefinition {
        metadata: meta("widgets.example.com", None),
        spec: Some(ext::CustomResourceDefinitionSpec {
            group: s("example.com"),
            names: Some(ext::CustomResourceDefinitionNames {
                plural: s("widgets"),
                singular: s("widget"),
                kind: s("Widget"),
                short_names: vec!["wd".into()],
                list_kind: s(""),
                categories: Vec::new(),
            }),
            scope: s("Namespaced"),
            versions: vec![ext::CustomResourceDefinitionVersion {
                name: s("v1"),
                served: Some(true),
                storage: Some(false),
                schema: Some(ext::CustomResourceValidation {
                    open_apiv3_schema: Some(ext::JsonSchemaProps {
                        properties: BTreeMap::from([("spec".into(), spec)]),
                        ..props("object")
                    }),
                }),
                subresources: Some(ext::CustomResourceSubresources {
                    status: Some(ext::CustomResourceSubresourceStatus {}),
                    scale: Some(ext::CustomResourceSubresourceScale {
                        spec_replicas_path: s(".spec.size"),
                        status_replicas_path: s(".status.size"),
                        label_selector_path: None,
                    }),
                }),
                additional_printer_columns: vec![ext::CustomResourceColumnDefinition {
                    name: s("Size"),
                    r#type: s("integer"),
                    json_path: s(".spec.size"),
                    priority: Some(0),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            conversion: None,
            preserve_unknown_fields: Some(false),
        }),
        status: None,
    };
    assert_eq!(
        transcode("apiextensions.k8s.io/v1", "CustomResourceDefinition", &crd),
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "scope": "Namespaced",
                "preserveUnknownFields": false,
                "versions": [{
                    "name": "v1", "served": true, "storage": false,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                        "type": "object",
                        "required": ["size"],
                        "x-kubernetes-validations": [{"rule": "self.size <= 10"}],
                        "properties": {
                            "size": {"type": "integer", "minimum": 0, "maximum": 10.5},
                            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                            "tuple": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
                            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "additionalProperties": true},
                            "limits": {"type": "object", "additionalProperties": {"type": "string"}},
                            "port": {"x-kubernetes-int-or-string": true}
                        }
                    }}}},
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}
                    },
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]
                }]
            }
        })
    );
}

#[test]
fn user_info_extra_values_are_lists() {
    use k8s_pb::api::authentication::v1 as authn;
    let review = authn::TokenReview {
        metadata: None,
        spec: Some(authn::TokenReviewSpec {
            token: s("t"),
            audiences: Vec::new(),
        }),
        status: Some(authn::TokenReviewStatus {
            authenticated: Some(true),
            user: Some(authn::UserInfo {
                username: s("alice"),
                uid: s(""),
                groups: vec!["dev".into()],
                extra: BTreeMap::from([(
                    "scopes".into(),
                    authn::ExtraValue {
                        items: vec!["a".into(), "b".into()],
                    },
                )]),
            }),
            audiences: Vec::new(),
            error: None,
        }),
    };
    assert_eq!(
        transcode("authentication.k8s.io/v1", "TokenReview", &review),
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "t"},
            "status": {
                "authenticated": true,
                "user": {"username": "alice", "groups": ["dev"], "extra": {"scopes": ["a", "b"]}}
            }
        })
    );
}

#[test]
fn times_durations_and_raw_json() {
    use k8s_pb::api::{apps::v1 as apps, coordination::v1 as coordination};
    let lease = coordination::Lease {
        metadata: Some(meta::ObjectMeta {
            name: s("node-a"),
            managed_fields: vec![meta::ManagedFieldsEntry {
                manager: s("kubelet"),
                operation: s("Update"),
                api_version: s("coordination.k8s.io/v1"),
                time: Some(meta::Time {
                    seconds: Some(0),
                    nanos: Some(0),
                }),
                fields_type: s("FieldsV1"),
                fields_v1: Some(meta::FieldsV1 {
                    raw: Some(br#"{"f:spec":{"f:holderIdentity":{}}}"#.to_vec()),
                }),
                subresource: s(""),
            }],
            ..Default::default()
        }),
        spec: Some(coordination::LeaseSpec {
            holder_identity: s("node-a"),
            lease_duration_seconds: Some(40),
            renew_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_000),
                nanos: Some(123_456_789),
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        transcode("coordination.k8s.io/v1", "Lease", &lease),
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "node-a", "managedFields": [{
                "manager": "kubelet", "operation": "Update", "apiVersion": "coordination.k8s.io/v1",
                "time": "1970-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:holderIdentity": {}}}
            }]},
            "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 40, "renewTime": "2023-11-14T22:13:20.123456Z"}
        })
    );
    let revision = apps::ControllerRevision {
        metadata: meta("web-1", None),
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(br#"{"spec":{"template":{"x":[1,2]}}}"#.to_vec()),
        }),
        revision: Some(1),
    };
    assert_eq!(
        transcode("apps/v1", "ControllerRevision", &revision),
        json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "web-1"},
            "data": {"spec": {"template": {"x": [1, 2]}}}, "revision": 1
        })
    );
    let webhook = k8s_pb::api::admissionregistration::v1::ValidatingWebhookConfiguration {
        metadata: meta("hooks", None),
        webhooks: vec![k8s_pb::api::admissionregistration::v1::ValidatingWebhook {
            name: s("a.example.com"),
            client_config: Some(
                k8s_pb::api::admissionregistration::v1::WebhookClientConfig {
                    ca_bundle: Some(b"PEM".to_vec()),
                    ..Default::default()
                },
            ),
            timeout_seconds: Some(0),
            ..Default::default()
        }],
    };
    let decoded = transcode(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        &webhook,
    );
    assert_eq!(
        decoded["webhooks"][0]["clientConfig"],
        json!({"caBundle": "UEVN"})
    );
    assert_eq!(decoded["webhooks"][0]["timeoutSeconds"], 0);
    // A Duration (meta/v1), as Go prints it.
    let duration = meta::Duration {
        duration: Some(90_500_000_000),
    };
    let schema = Schema::get().unwrap_or_else(|e| panic!("{e}"));
    let Some(id) = schema.find("k8s.io.apimachinery.pkg.apis.meta.v1.Duration") else {
        panic!("Duration is in the table");
    };
    let record = duration.encode_to_vec();
    assert_eq!(
        Transcoder::new(schema).message(id, &[&record], 0),
        Ok(json!("1m30.5s"))
    );
}

/// What kubectl 1.33 sent for `kubectl create ...` (and printed with `--dry-run=client -o
/// json`): each transcoded body must equal that JSON exactly.
#[test]
fn kubectl_bodies_transcode_to_the_json_kubectl_prints() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/apiserver/protobuf/testdata/kubectl");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_none_or(|e| e != "pb") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let decoded = decode(&bytes, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let printed = path.with_extension("json");
        if printed.exists() {
            let text = std::fs::read_to_string(&printed).unwrap_or_default();
            let expected: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", printed.display()));
            assert_eq!(decoded, expected, "{}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} kubectl bodies checked");
    // `kubectl create token` has no --dry-run to print its TokenRequest.
    let token = std::fs::read(dir.join("token.pb")).unwrap_or_default();
    assert_eq!(
        decode(&token, None),
        Ok(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"creationTimestamp": null},
            "spec": {"audiences": ["x"], "expirationSeconds": 600},
            "status": {"token": "", "expirationTimestamp": null}
        }))
    );
}

#[test]
fn the_special_messages_are_in_the_table() {
    let schema = Schema::get().unwrap_or_else(|e| panic!("{e}"));
    for (name, _) in well_known::ALL {
        assert!(schema.find(name).is_some(), "{name}");
    }
    // The fields the special forms read as nested schemas are messages.
    for (name, number) in [
        ("JsonSchemaPropsOrArray", 1),
        ("JsonSchemaPropsOrArray", 2),
        ("JsonSchemaPropsOrBool", 2),
        ("JsonSchemaPropsOrStringArray", 1),
    ] {
        let full = format!("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.{name}");
        let field = schema
            .find(&full)
            .and_then(|id| schema.message(id).field(number).cloned());
        assert!(
            matches!(
                field.map(|f| f.ty),
                Some(super::schema::FieldType::Message(_))
            ),
            "{full} field {number}"
        );
    }
}

/// The JSON names the table gives every field of the served built-in types are the
/// property names of k8s-openapi's schemas for them (an independent source).
#[test]
fn json_names_match_the_openapi_schemas() {
    let schema = Schema::get().unwrap_or_else(|e| panic!("{e}"));
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    for def in Registry::new().all() {
        if let Some(register) = def.openapi {
            register(&mut generator);
        }
    }
    let definitions = generator.take_definitions(true);
    let mut compared = 0;
    let mut problems = Vec::new();
    for (name, definition) in &definitions {
        // io.k8s.api.core.v1.Pod → k8s.io.api.core.v1 / Pod
        let Some((package, kind)) = name.rsplit_once('.') else {
            continue;
        };
        let package = package
            .replacen("io.k8s.", "k8s.io.", 1)
            .replace("apiextensions-apiserver", "apiextensions_apiserver");
        let Some(id) = schema.find_kind(&package, kind) else {
            continue;
        };
        let message = schema.message(id);
        if well_known::Special::of(message.name).is_some() {
            continue;
        }
        let Some(properties) = definition.get("properties").and_then(Value::as_object) else {
            continue;
        };
        let mut names: Vec<&str> = Vec::new();
        let mut stack = vec![message];
        while let Some(m) = stack.pop() {
            for field in &m.fields {
                match (field.shape, field.ty) {
                    (Shape::Inline, super::schema::FieldType::Message(inner)) => {
                        stack.push(schema.message(inner));
                    }
                    _ => names.push(field.json),
                }
            }
        }
        for property in properties.keys() {
            compared += 1;
            if !matches!(property.as_str(), "apiVersion" | "kind")
                && !names.contains(&property.as_str())
            {
                problems.push(format!("{name}.{property} (table: {names:?})"));
            }
        }
    }
    assert!(compared > 1000, "only {compared} properties compared");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn envelope_defaults_come_from_the_endpoint() {
    let namespace = core::Namespace {
        metadata: meta("x", None),
        ..Default::default()
    };
    let untyped = {
        let unknown = Unknown {
            raw: Some(namespace.encode_to_vec()),
            ..Default::default()
        };
        let mut out = b"k8s\x00".to_vec();
        out.extend(unknown.encode_to_vec());
        out
    };
    assert_eq!(decode(&untyped, None), Err(ProtobufError::MissingKind));
    let default = DefaultType {
        api_version: "v1",
        kind: "Namespace",
    };
    assert_eq!(
        decode(&untyped, Some(default)),
        Ok(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}))
    );
    // A body that names its type keeps it, whatever the endpoint (the server then refuses
    // a kind that is not the resource's).
    let named = body("v1", "ConfigMap", Vec::new());
    assert_eq!(
        decode(&named, Some(default)),
        Ok(json!({"apiVersion": "v1", "kind": "ConfigMap"}))
    );
}

#[test]
fn unknown_kinds_and_custom_resources_are_refused() {
    let widget = body("example.com/v1", "Widget", Vec::new());
    assert_eq!(
        decode(&widget, None),
        Err(ProtobufError::UnknownKind {
            api_version: "example.com/v1".into(),
            kind: "Widget".into()
        })
    );
    let nothing = body("apps/v1", "Nothing", Vec::new());
    let err = decode(&nothing, None).map_err(crate::apiserver::status::ApiError::from);
    assert_eq!(
        err.map_err(|e| (e.code, e.reason)),
        Err((400, "BadRequest"))
    );
    // The server answers 415 for protobuf on a custom resource, as kube-apiserver does,
    // and names the media types it does accept.
    let registry = Registry::new();
    let crd: Value = json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object"}}}]}
    });
    let defs = crate::apiserver::crds::definitions(&crd).unwrap_or_else(|e| panic!("{e:?}"));
    let protobuf = "application/vnd.kubernetes.protobuf";
    let refused = decode_typed_body(&widget, protobuf, BodyType::Object(&defs[0]));
    let refused = refused.map_err(|e| (e.code, e.message));
    assert!(
        matches!(&refused, Err((415, m)) if m.contains("application/json, application/yaml;")),
        "{refused:?}"
    );
    let Some(pods) = registry.find("", "v1", "pods") else {
        panic!("pods are served");
    };
    let pod = body("v1", "Pod", Vec::new());
    assert_eq!(
        decode_typed_body(&pod, protobuf, BodyType::Object(&pods)),
        Ok(json!({"apiVersion": "v1", "kind": "Pod"}))
    );
    let other = decode_typed_body(&pod, "application/cbor", BodyType::Object(&pods));
    assert!(
        matches!(&other, Err(e) if e.code == 415 && e.message.contains(protobuf)),
        "{other:?}"
    );
}

/// `field` (number, wire type 2) holding `bytes`.
fn record(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

#[test]
fn hostile_bodies_fail_cleanly() {
    // Cut off, wrong wire types, impossible values.
    let pod = core::Pod {
        metadata: meta("web", None),
        ..Default::default()
    }
    .encode_to_vec();
    for cut in 1..pod.len() {
        let result = decode(&body("v1", "Pod", pod[..cut].to_vec()), None);
        assert!(
            matches!(result, Err(ProtobufError::Malformed(_))),
            "{cut}: {result:?}"
        );
    }
    // metadata (field 1) as a varint.
    let wrong = decode(&body("v1", "Pod", vec![0x08, 0x01]), None);
    assert!(
        matches!(wrong, Err(ProtobufError::Malformed(_))),
        "{wrong:?}"
    );
    // An IntOrString of type 2.
    let service = core::ServiceSpec {
        ports: vec![core::ServicePort {
            target_port: Some(IntOrString {
                r#type: Some(2),
                int_val: None,
                str_val: None,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let raw = record(2, &service.encode_to_vec());
    assert!(matches!(
        decode(&body("v1", "Service", raw), None),
        Err(ProtobufError::Malformed(_))
    ));
    // A NaN maximum in a CRD schema.
    let nan = ext::JsonSchemaProps {
        maximum: Some(f64::NAN),
        ..Default::default()
    };
    let raw = ext::CustomResourceValidation {
        open_apiv3_schema: Some(nan),
    }
    .encode_to_vec();
    let schema = Schema::get().unwrap_or_else(|e| panic!("{e}"));
    let Some(id) = schema
        .find("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.CustomResourceValidation")
    else {
        panic!("CustomResourceValidation");
    };
    assert!(matches!(
        Transcoder::new(schema).message(id, &[&raw], 0),
        Err(ProtobufError::Malformed(_))
    ));
    // Raw JSON that is not JSON.
    let revision = k8s_pb::api::apps::v1::ControllerRevision {
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(b"{not json".to_vec()),
        }),
        ..Default::default()
    };
    assert!(matches!(
        decode(
            &body("apps/v1", "ControllerRevision", revision.encode_to_vec()),
            None
        ),
        Err(ProtobufError::Malformed(_))
    ));
}

#[test]
fn nesting_is_bounded_without_exhausting_the_stack() {
    // JSONSchemaProps.not (field 28), 100 000 deep: a few hundred kilobytes of body.
    let mut inner = Vec::new();
    for _ in 0..100_000 {
        inner = record(28, &inner);
    }
    let raw = record(1, &inner); // CustomResourceValidation.openAPIV3Schema
    let schema = Schema::get().unwrap_or_else(|e| panic!("{e}"));
    let Some(id) = schema
        .find("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.CustomResourceValidation")
    else {
        panic!("CustomResourceValidation");
    };
    assert_eq!(
        Transcoder::new(schema).message(id, &[&raw], 0),
        Err(ProtobufError::TooDeep)
    );
}

#[test]
fn output_is_bounded_by_a_value_budget() {
    // 1.1 million empty containers (2 bytes each) are more values than a body may make.
    let containers: Vec<u8> = std::iter::repeat_n([0x12u8, 0x00], 1_100_000)
        .flatten()
        .collect();
    let raw = record(2, &containers); // Pod.spec
    let result = decode(&body("v1", "Pod", raw), None);
    assert!(
        matches!(result, Err(ProtobufError::TooManyValues)),
        "{:?}",
        result.map(|_| "decoded")
    );
    // Half as many are fine.
    let containers: Vec<u8> = std::iter::repeat_n([0x12u8, 0x00], 500_000)
        .flatten()
        .collect();
    let result = decode(&body("v1", "Pod", record(2, &containers)), None);
    assert_eq!(
        result.map(|pod| pod["spec"]["containers"].as_array().map(Vec::len)),
        Ok(Some(500_000))
    );
}

#[test]
fn wire_details_follow_protobuf() {
    // Unknown field numbers are skipped; repeated singular messages merge; the last
    // scalar wins; packed and unpacked repeated numbers read alike; a map entry without a
    // value has the zero value; invalid UTF-8 becomes U+FFFD (as Go's JSON writes it).
    let first = [record(1, b"first"), record(3, b"ns")].concat();
    let mut second = record(1, b"second");
    second.extend([0xf8, 0x07, 0x01]); // field 127, varint 1: unknown
    second.extend(record(11, &record(1, b"no-value"))); // a labels entry without a value
    second.extend(record(
        12,
        &[record(1, b"k"), record(2, b"\xff\xfe")].concat(),
    ));
    let metadata = [record(1, &first), record(1, &second)].concat();
    assert_eq!(
        decode(&body("v1", "ConfigMap", metadata), None),
        Ok(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "second", "namespace": "ns",
                "labels": {"no-value": ""},
                "annotations": {"k": "\u{fffd}\u{fffd}"}
            }
        }))
    );
    // PodSecurityContext.supplementalGroups (field 4, int64): unpacked, then packed.
    let mut context = Vec::new();
    prost::encoding::int64::encode(4, &5, &mut context);
    let mut packed = Vec::new();
    prost::encoding::encode_varint(6, &mut packed);
    prost::encoding::encode_varint(7, &mut packed);
    context.extend(record(4, &packed));
    let spec = record(14, &context); // PodSpec.securityContext
    let decoded = decode(&body("v1", "Pod", record(2, &spec)), None);
    assert_eq!(
        decoded.map(|pod| pod["spec"]["securityContext"]["supplementalGroups"].clone()),
        Ok(json!([5, 6, 7]))
    );
}
