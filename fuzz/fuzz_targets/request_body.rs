//! Fuzz target: one untrusted request body, taken through everything the API server does with
//! a body before it reaches the store. The body is decoded as JSON and as YAML
//! ([`decode_body`], what POST, PUT, apply and DELETE do), each decoded value is prepared as a
//! create and as an update of several resources ([`objects::prepare_create`],
//! [`objects::prepare_update`]), and the raw bytes are applied as a JSON patch, a merge patch
//! and a strategic merge patch to fixed objects and the result prepared as the update PATCH
//! writes ([`rest::apply_patch`]). Custom resources are covered both ways: bodies are checked
//! against a fixed CRD's schema, and a fixed object against the body taken as a schema
//! ([`crds::validate`]). Server-side apply too: the body as an applied configuration, and as
//! another manager's `managedFields` entry (clients can write those) ([`apply::apply`]).
//!
//! The property is that nothing panics or hangs: every input ends in `Ok` or an `ApiError`.
//! Touches no store and no network.
#![no_main]

use std::sync::OnceLock;

use corten_control_plane::apiserver::{
    apply, crds, objects,
    resources::{Registry, ResourceDef},
    rest::{self, PatchKind},
    server::decode_body,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// The resources bodies are prepared for: core and apps types with defaulting, a cluster-scoped
/// one with label names, and the Service with its allocation-keeping update.
const RESOURCES: &[(&str, &str)] = &[
    ("", "configmaps"),
    ("", "pods"),
    ("", "services"),
    ("", "namespaces"),
    ("", "events"),
    ("apps", "deployments"),
    ("batch", "jobs"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
];

/// What every input is checked against, built once.
struct Fixtures {
    /// Built-in resources, then the custom resource of [`CRD`].
    defs: Vec<ResourceDef>,
    /// [`CRD`]'s schema, and an object that fits it.
    schema: Value,
    custom: Value,
    /// Stored objects that patches apply to, with the resource they belong to.
    stored: Vec<(ResourceDef, Value)>,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let registry = Registry::new();
        let find = |group: &str, plural: &str| {
            registry
                .find(group, "v1", plural)
                .unwrap_or_else(|| panic!("{group}/v1 {plural} is served"))
        };
        let mut defs: Vec<ResourceDef> = RESOURCES.iter().map(|(g, p)| find(g, p)).collect();
        let crd: Value = serde_json::from_str(CRD).unwrap_or_else(|e| panic!("CRD: {e}"));
        defs.extend(crds::definitions(&crd).unwrap_or_else(|e| panic!("CRD: {e}")));
        let schema = crd
            .pointer("/spec/versions/0/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(|| panic!("CRD has a schema"));
        let custom = json!({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "namespace": "default"},
            "spec": {"size": 3, "color": "red", "port": "http", "tags": ["a", "b"],
                     "limits": {"cpu": "1"}, "extra": {"x": [1, 2]}}
        });
        let deployment = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "default", "uid": "0b9f7c4e-1111-4222-8333-944455556666",
                "creationTimestamp": "2024-01-01T00:00:00Z", "generation": 3,
                "resourceVersion": "42", "labels": {"app": "web"},
                "annotations": {"a": "b"}, "finalizers": ["example.com/keep"]
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "web", "image": "busybox:1", "args": ["httpd", "-f"],
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                             "ports": [{"containerPort": 80, "protocol": "TCP"}],
                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                            {"name": "side", "image": "busybox:1"}
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                        "restartPolicy": "Always"
                    }
                }
            },
            "status": {"replicas": 2, "conditions": [{"type": "Available", "status": "True"}]}
        });
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7"},
            "spec": {
                "type": "NodePort", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]
            }
        });
        let config_map = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default", "resourceVersion": "9"},
            "data": {"k": "v"}
        });
        let stored = vec![
            (find("apps", "deployments"), deployment),
            (find("", "services"), service),
            (find("", "configmaps"), config_map),
        ];
        Fixtures {
            defs,
            schema,
            custom,
            stored,
        }
    })
}

/// A CRD whose schema uses every keyword the validator reads.
const CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "widgets.example.com"},
  "spec": {
    "group": "example.com", "scope": "Namespaced",
    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
    "versions": [{
      "name": "v1", "served": true, "storage": true,
      "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
      "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
      "schema": {"openAPIV3Schema": {
        "type": "object", "required": ["spec"],
        "properties": {
          "spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 0, "maximum": 10, "exclusiveMaximum": true},
            "ratio": {"type": "number", "nullable": true},
            "color": {"type": "string", "enum": ["red", "blue"], "minLength": 1, "maxLength": 8},
            "port": {"x-kubernetes-int-or-string": true},
            "tags": {"type": "array", "maxItems": 4, "items": {"type": "string"}},
            "limits": {"type": "object", "additionalProperties": {"type": "string"}},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
          }},
          "status": {"type": "object", "properties": {"size": {"type": "integer"}}}
        }
      }}
    }]
  }
}"#;

fuzz_target!(|data: &[u8]| {
    let fixtures = fixtures();

    // A body as POST, PUT and server-side apply decode it.
    let json = decode_body(data, "application/json").ok();
    let yaml = decode_body(data, "application/yaml").ok();
    let yaml = yaml.filter(|y| json.as_ref() != Some(y));
    for body in json.iter().chain(yaml.iter()) {
        for def in &fixtures.defs {
            if let Ok(created) = objects::prepare_create(def, Some("default"), body.clone()) {
                let _ = objects::prepare_update(def, &created, body.clone());
            }
        }
        for (def, stored) in &fixtures.stored {
            let _ = objects::prepare_update(def, stored, body.clone());
            let _ = objects::prepare_status_update(def, stored, body.get("status").cloned());
        }
        // The body as a custom object, and as a schema.
        let _ = crds::validate(&fixtures.schema, &mut body.clone());
        let _ = crds::validate(body, &mut fixtures.custom.clone());
        // The body as an applied configuration (new and over a stored object), and as the
        // fields another manager owns (any JSON passes the typed check of `fieldsV1`).
        for (def, stored) in &fixtures.stored {
            let api_version = def.api_version();
            let subresource = def.status_is_subresource();
            // What `Rest::server_side_apply` admits: an object named as in the URL, if at all.
            let admitted = body.is_object()
                && objects::name(body).is_none_or(|n| Some(n) == objects::name(stored));
            if admitted {
                apply::created(&mut body.clone(), "fuzz", &api_version, subresource);
                for force in [false, true] {
                    let _ = apply::apply(stored, body, "fuzz", &api_version, force, subresource);
                }
            }
            let mut owned = stored.clone();
            objects::metadata_mut(&mut owned).insert(
                "managedFields".into(),
                json!([{"manager": "other", "operation": "Apply", "fieldsType": "FieldsV1",
                        "fieldsV1": body}]),
            );
            let config = json!({"apiVersion": api_version, "kind": def.kind,
                                "metadata": {"name": objects::name(stored)}});
            let _ = apply::apply(&owned, &config, "fuzz", &api_version, false, subresource);
            let _ = apply::apply(stored, &owned, "fuzz", &api_version, false, subresource);
        }
    }

    // A body as PATCH applies it, then the update the patched object becomes.
    for kind in [PatchKind::Json, PatchKind::Merge, PatchKind::Strategic] {
        for (def, stored) in &fixtures.stored {
            let mut patched = stored.clone();
            if rest::apply_patch(&mut patched, kind, data).is_err() {
                continue;
            }
            if objects::name(&patched) == objects::name(stored) {
                let _ = objects::prepare_update(def, stored, patched);
            }
        }
    }
});
