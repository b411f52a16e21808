//! The envelope of every Kubernetes protobuf body: the magic `k8s\x00`, then a
//! `runtime.Unknown` {1: TypeMeta {1: apiVersion, 2: kind}, 2: raw (the object's own
//! message), 3: contentEncoding, 4: contentType}.
//!
//! Owns opening the envelope; what the raw bytes mean is [`super::transcode`]'s.
use super::{
    transcode::expect_bytes,
    wire::{Reader, WireValue},
    ProtobufError,
};

/// What every body starts with (`k8s` and encoding 0, a `runtime.Unknown`).
pub const MAGIC: &[u8; 4] = b"k8s\x00";

/// An opened envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `typeMeta.apiVersion` ("" when absent).
    pub api_version: String,
    /// `typeMeta.kind` ("" when absent).
    pub kind: String,
    /// The object's message.
    pub raw: &'a [u8],
}

fn text(wire: WireValue<'_>, field: &str) -> Result<String, ProtobufError> {
    Ok(String::from_utf8_lossy(expect_bytes(wire, field)?).into_owned())
}

/// Checks the magic and reads the `runtime.Unknown` (kube-apiserver ignores its
/// contentEncoding and contentType, and so does this).
pub fn open(body: &[u8]) -> Result<Envelope<'_>, ProtobufError> {
    let Some(unknown) = body.strip_prefix(MAGIC) else {
        return Err(ProtobufError::NotProtobuf(if body.is_empty() {
            "the body is empty"
        } else {
            "the body does not start with the Kubernetes protobuf prefix k8s\\x00"
        }));
    };
    if unknown.is_empty() {
        return Err(ProtobufError::NotProtobuf(
            "the body has the Kubernetes protobuf prefix and nothing after it",
        ));
    }
    let mut envelope = Envelope {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
    };
    let mut reader = Reader::new(unknown);
    while let Some((number, wire)) = reader.field()? {
        match number {
            1 => {
                let mut type_meta = Reader::new(expect_bytes(wire, "typeMeta")?);
                while let Some((number, wire)) = type_meta.field()? {
                    match number {
                        1 => envelope.api_version = text(wire, "apiVersion")?,
                        2 => envelope.kind = text(wire, "kind")?,
                        _ => {}
                    }
                }
            }
            2 => envelope.raw = expect_bytes(wire, "raw")?,
            3 => drop(text(wire, "contentEncoding")?),
            4 => drop(text(wire, "contentType")?),
            _ => {}
        }
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_names_the_type_and_holds_the_object() {
        // k8s\0, Unknown{typeMeta{"v1", "Namespace"}, raw: 0a 00}
        let body = b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x02\x0a\x00";
        assert_eq!(
            open(body),
            Ok(Envelope {
                api_version: "v1".into(),
                kind: "Namespace".into(),
                raw: b"\x0a\x00",
            })
        );
    }

    #[test]
    fn bodies_without_the_prefix_or_content_are_refused() {
        for body in [
            &b""[..],
            b"k8s",
            b"{\"kind\":\"Pod\"}",
            b"k8s\x01\x0a\x00",
            b"k8s\x00",
        ] {
            assert!(
                matches!(open(body), Err(ProtobufError::NotProtobuf(_))),
                "{body:?}"
            );
        }
        // Truncated: typeMeta claims more than there is.
        assert!(matches!(
            open(b"k8s\x00\x0a\x10\x0a\x02v1"),
            Err(ProtobufError::Malformed(_))
        ));
    }
}
