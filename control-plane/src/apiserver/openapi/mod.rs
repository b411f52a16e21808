//! OpenAPI documents, the schemas kubectl reads.
//!
//! `/openapi/v2` is one Swagger 2.0 document for every served type, as kube-apiserver's:
//! `definitions` named as upstream names them (`io.k8s.api.core.v1.Pod`, custom resources as
//! `<reversed group>.<version>.<Kind>`), tagged with `x-kubernetes-group-version-kind` and
//! carrying upstream's `x-kubernetes-*` patch and list extensions, and `paths` with each
//! resource's operations. kubectl downloads it before every `apply` and `create` — as the
//! gnostic `openapi.v2.Document` protobuf — for client-side validation of custom resources,
//! for the strategic merge patches that `apply` computes, and for
//! `explain --output=plaintext-openapiv2`. It is built once per change of the served
//! resources ([`v2_document`]) and served with an ETag.
//!
//! `/openapi/v3` ([`v3`]) lists one document per group version, each with the schemas of its
//! types; `kubectl explain` reads it. [`unknown_fields`] walks built-in objects along their
//! schemas for `fieldValidation`.
//!
//! [`v2`] builds the Swagger document, [`swagger`] converts schemas to Swagger 2.0,
//! [`extensions`] holds upstream's vendor extensions, [`gnostic`] encodes the protobuf form.
//! This module must not decide which resources exist ([`super::resources`] does).
pub mod extensions;
pub mod gnostic;
pub mod swagger;
pub mod unknown_fields;
pub mod v2;
pub mod v3;

use std::{
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tracing::info;

use super::resources::Registry;
pub use unknown_fields::prune_unknown_fields;
pub use v3::{v3_group_version, v3_index};

/// The media type kubectl requests for the protobuf form.
pub const PROTOBUF_V2: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The Content-Type of the protobuf form: kube-apiserver answers with a dot where the
/// request had `@`, because Go's media type parser refuses `@` in a subtype.
pub const PROTOBUF_V2_RESPONSE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an Accept header asks for the protobuf form.
pub fn wants_protobuf(accept: &str) -> bool {
    accept
        .split(',')
        .any(|m| m.split(';').next().map(str::trim) == Some(PROTOBUF_V2))
}

/// The path of a group version's documents (`api/v1`, `apis/G/V`).
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// One representation of the `/openapi/v2` document, ready to send.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The body.
    pub body: Bytes,
    /// Its strong ETag, quoted, as the `ETag` header carries it.
    pub etag: String,
}

impl Encoded {
    fn new(body: Vec<u8>, suffix: &str) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut hasher);
        Self {
            etag: format!("\"{:016x}{suffix}\"", hasher.finish()),
            body: Bytes::from(body),
        }
    }

    /// Whether an `If-None-Match` header names this representation (so a 304 answers it).
    pub fn matches(&self, if_none_match: &str) -> bool {
        if_none_match.trim() == "*"
            || if_none_match
                .split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == self.etag)
    }
}

/// The `/openapi/v2` document in both representations.
#[derive(Debug)]
pub struct V2Document {
    /// The Swagger 2.0 JSON.
    pub json: Encoded,
    /// The gnostic `openapi.v2.Document` protobuf.
    pub protobuf: Encoded,
    /// How long building both took.
    pub build_time: Duration,
}

impl V2Document {
    /// Builds both representations from the registry as it is now.
    pub fn build(registry: &Registry, version: &str) -> Self {
        let started = Instant::now();
        let doc = v2::document(registry, version);
        let protobuf = gnostic::document(&doc);
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        Self {
            json: Encoded::new(json, ""),
            protobuf: Encoded::new(protobuf, "-pb"),
            build_time: started.elapsed(),
        }
    }
}

/// The `/openapi/v2` document of a registry's current generation (kept in the
/// [`Registry`]).
#[derive(Debug, Default)]
pub struct V2Cache {
    current: Mutex<Option<CachedV2>>,
}

#[derive(Debug)]
struct CachedV2 {
    generation: u64,
    version: String,
    document: Arc<V2Document>,
}

/// The `/openapi/v2` document for the resources served now: the cached one, or a new one
/// when CRDs changed since it was built. Builds at most once per change (concurrent callers
/// wait for the build), so call it off the async executor.
pub fn v2_document(registry: &Registry, version: &str) -> Arc<V2Document> {
    // Read before the table: a document is never newer than the generation it is kept under.
    let generation = registry.generation();
    let mut current = registry
        .openapi_v2_cache()
        .current
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(cached) = current.as_ref() {
        if cached.generation == generation && cached.version == version {
            return cached.document.clone();
        }
    }
    let document = Arc::new(V2Document::build(registry, version));
    info!(
        generation,
        json_bytes = document.json.body.len(),
        protobuf_bytes = document.protobuf.body.len(),
        build_ms = document.build_time.as_millis() as u64,
        "built the /openapi/v2 document"
    );
    *current = Some(CachedV2 {
        generation,
        version: version.to_owned(),
        document: document.clone(),
    });
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_is_recognised_in_accept_headers() {
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(wants_protobuf(
            "application/json;q=0.5, application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(!wants_protobuf("application/json"));
    }

    #[test]
    fn the_document_is_built_once_per_registry_change() {
        let registry = Registry::new();
        let first = v2_document(&registry, "v1.33.0");
        let again = v2_document(&registry, "v1.33.0");
        assert!(Arc::ptr_eq(&first, &again), "rebuilt without a change");
        assert!(first.json.matches(&first.json.etag));
        assert!(!first.json.matches(&first.protobuf.etag));
        assert!(first
            .json
            .matches(&format!("W/{}, \"other\"", first.json.etag)));

        let crd = serde_json::json!({
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]}
        });
        let Ok(defs) = crate::apiserver::crds::definitions(&crd) else {
            panic!("the CRD is valid");
        };
        registry.set_custom("crontabs.stable.example.com", defs);
        let with_crd = v2_document(&registry, "v1.33.0");
        assert!(!Arc::ptr_eq(&first, &with_crd), "a new CRD must rebuild it");
        assert_ne!(first.json.etag, with_crd.json.etag);
        let text = String::from_utf8_lossy(&with_crd.json.body);
        assert!(text.contains("com.example.stable.v1.CronTab"));

        registry.remove_custom("crontabs.stable.example.com");
        let without = v2_document(&registry, "v1.33.0");
        assert_eq!(
            without.json.etag, first.json.etag,
            "same content, same ETag"
        );
        assert_eq!(without.protobuf.body, first.protobuf.body);
    }
}
