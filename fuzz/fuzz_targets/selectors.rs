//! Fuzz target: the untrusted strings of a request other than its body. The text is parsed
//! as a query string ([`parse_query`]), as a label selector and as a field selector (both
//! directly and as the percent-decoded `labelSelector` / `fieldSelector` of that query), and
//! used as a Content-Type to pick a decoder and a patch kind; parsed selectors are matched
//! against a fixed object.
//!
//! The property is that nothing panics or hangs. Touches no store and no network.
#![no_main]

use std::sync::OnceLock;

use corten_control_plane::apiserver::{
    objects::{FieldSelector, LabelSelector},
    resources::{Registry, ResourceDef},
    rest::PatchKind,
    server::{decode_body, parse_query},
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn fixtures() -> &'static (ResourceDef, Value) {
    static FIXTURES: OnceLock<(ResourceDef, Value)> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let pods = Registry::new()
            .find("", "v1", "pods")
            .unwrap_or_else(|| panic!("v1 pods are served"));
        let pod = json!({
            "metadata": {"name": "web-0", "namespace": "default",
                         "labels": {"app": "web", "tier": "front", "k8s.io/role": ""}}
        });
        (pods, pod)
    })
}

fn selectors(text: &str, def: &ResourceDef, obj: &Value) {
    if let Ok(labels) = LabelSelector::parse(text) {
        let _ = labels.matches(obj);
    }
    if let Ok(fields) = FieldSelector::parse(text, def) {
        let _ = fields.matches(obj);
    }
}

fuzz_target!(|data: &[u8]| {
    let (def, obj) = fixtures();
    let text = String::from_utf8_lossy(data);
    selectors(&text, def, obj);
    let query = parse_query(&text);
    for key in ["labelSelector", "fieldSelector"] {
        if let Some(value) = query.get(key) {
            selectors(value, def, obj);
        }
    }
    let _ = PatchKind::from_content_type(&text);
    let _ = decode_body(b"{\"metadata\":{\"name\":\"a\"}}", &text);
});
