//! Fuzz target: one untrusted Kubernetes protobuf body (`application/vnd.kubernetes.protobuf`,
//! what kubectl 1.32+ sends for typed writes), through the transcoder to JSON and on into
//! what the server does with a created object. The input is decoded as a whole body, as the
//! router decodes it for several resources ([`decode_typed_body`]), and its object message
//! (the envelope's raw bytes, or the input itself when it has no envelope) is re-wrapped as
//! each of several kinds, so that mutations of one kind's encoding exercise the others.
//! Every value that decodes is prepared as a create ([`objects::prepare_create`]).
//!
//! The property is that nothing panics, hangs or allocates without bound: every input ends
//! in a JSON value or an `ApiError`. Touches no store and no network.
#![no_main]

use std::sync::OnceLock;

use corten_control_plane::apiserver::{
    objects,
    protobuf::{self, envelope},
    resources::{Registry, ResourceDef},
    server::{decode_typed_body, BodyType},
};
use libfuzzer_sys::fuzz_target;

/// The kinds an object message is tried as, with the resource (`group/version`, plural)
/// whose endpoint takes each.
const KINDS: &[(&str, &str, &str)] = &[
    ("v1", "Pod", "v1/pods"),
    ("v1", "Service", "v1/services"),
    ("v1", "Secret", "v1/secrets"),
    ("apps/v1", "Deployment", "apps/v1/deployments"),
    ("batch/v1", "CronJob", "batch/v1/cronjobs"),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "apiextensions.k8s.io/v1/customresourcedefinitions",
    ),
    ("policy/v1", "Eviction", "v1/pods"),
];

fn defs() -> &'static Vec<ResourceDef> {
    static DEFS: OnceLock<Vec<ResourceDef>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let registry = Registry::new();
        KINDS
            .iter()
            .map(|(_, _, resource)| {
                let mut parts = resource.rsplitn(3, '/');
                let plural = parts.next().unwrap_or_default();
                let version = parts.next().unwrap_or_default();
                let group = parts.next().unwrap_or_default();
                registry
                    .find(group, version, plural)
                    .unwrap_or_else(|| panic!("{resource} is served"))
            })
            .collect()
    })
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field.
fn record(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `k8s\0` + `runtime.Unknown{typeMeta{apiVersion, kind}, raw}`.
fn wrap(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::new();
    record(&mut type_meta, 1, api_version.as_bytes());
    record(&mut type_meta, 2, kind.as_bytes());
    let mut body = envelope::MAGIC.to_vec();
    record(&mut body, 1, &type_meta);
    record(&mut body, 2, raw);
    body
}

fn create(def: &ResourceDef, body: &[u8]) {
    let decoded = decode_typed_body(body, protobuf::MEDIA_TYPE, BodyType::Object(def));
    if let Ok(value) = decoded {
        let namespace = def.namespaced.then_some("default");
        let _ = objects::prepare_create(def, namespace, value);
    }
}

fuzz_target!(|data: &[u8]| {
    let defs = defs();
    // The body as it arrives, with no default type and as each resource's.
    let _ = protobuf::decode(data, None);
    for def in defs {
        create(def, data);
    }
    // Its object message as each kind.
    let raw = envelope::open(data).map_or(data, |opened| opened.raw);
    for ((api_version, kind, _), def) in KINDS.iter().zip(defs) {
        let body = wrap(api_version, kind, raw);
        if *kind == "Eviction" {
            let eviction = BodyType::Kind(api_version, kind);
            let _ = decode_typed_body(&body, protobuf::MEDIA_TYPE, eviction);
        } else {
            create(def, &body);
        }
    }
});
