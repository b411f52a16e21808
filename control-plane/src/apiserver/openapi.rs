//! `/openapi/v2`: the OpenAPI document kubectl downloads before it validates or applies
//! anything, as JSON or as the gnostic `openapi.v2.Document` protobuf
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) that kubectl asks for.
//!
//! Today the document carries no definitions, so kubectl skips client-side schema checks for
//! every kind and the server's own validation decides; the schemas of the served types are
//! still to come (the API server issue tracks it).
use serde_json::{json, Value};

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

/// The JSON form.
pub fn v2_json(version: &str) -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": {},
        "definitions": {},
    })
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field (wire type 2).
fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, (number << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The protobuf form: `Document{swagger=1, info=2{title=1, version=2}, paths=8, definitions=9}`.
pub fn v2_protobuf(version: &str) -> Vec<u8> {
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    field(&mut doc, 8, &[]);
    field(&mut doc, 9, &[]);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_document_encodes_its_fields() {
        let doc = v2_protobuf("v1.33.0");
        // swagger = "2.0"
        assert_eq!(&doc[..5], &[0x0a, 3, b'2', b'.', b'0']);
        // info: tag 2, then title "Kubernetes"
        assert_eq!(doc[5], 0x12);
        assert_eq!(&doc[7..9], &[0x0a, 10]);
        // paths and definitions present and empty
        assert!(doc.ends_with(&[0x42, 0, 0x4a, 0]));
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(!wants_protobuf("application/json"));
    }
}
