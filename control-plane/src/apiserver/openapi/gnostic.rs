//! The gnostic `openapi.v2.Document` protobuf of a Swagger 2.0 JSON document — what kubectl
//! downloads as `application/com.github.proto-openapi.spec.v2@v1.0+protobuf` and parses with
//! kube-openapi. Field numbers are those of gnostic's `openapiv2/OpenAPIv2.proto`; each
//! message is a table from JSON key to field below, so it reads against the `.proto`. Vendor
//! extensions (`x-…` keys) become `repeated NamedAny vendor_extension` whose `Any.yaml` holds
//! the value as JSON text (which is YAML, and what kube-openapi unmarshals).
//!
//! Owns the wire format only: it encodes whatever the JSON says and must not decide content.
//! Keys with no field in the `.proto` are left out; [`document_with_dropped`] names them, and
//! the tests check that the served document has none.
use std::collections::BTreeSet;

use serde_json::Value;

/// Encodes a Swagger 2.0 document.
pub fn document(doc: &Value) -> Vec<u8> {
    document_with_dropped(doc).0
}

/// Encodes a Swagger 2.0 document, and names the JSON keys that had no field to go to.
pub fn document_with_dropped(doc: &Value) -> (Vec<u8>, BTreeSet<String>) {
    let mut encoder = Encoder::default();
    let message = encoder.fields(doc, DOCUMENT, Some(16));
    (message.0, encoder.dropped)
}

/// A message being written.
#[derive(Debug, Default)]
struct Message(Vec<u8>);

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Message {
    fn key(&mut self, field: u32, wire_type: u8) {
        varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire_type));
    }

    /// Wire type 2: strings, bytes and messages.
    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        varint(&mut self.0, bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, text: &str) {
        self.bytes(field, text.as_bytes());
    }

    fn message(&mut self, field: u32, message: Message) {
        self.bytes(field, &message.0);
    }

    /// Wire type 0: bool and int64 (negative numbers as their two's complement).
    fn varint(&mut self, field: u32, value: u64) {
        self.key(field, 0);
        varint(&mut self.0, value);
    }

    /// Wire type 1: double.
    fn double(&mut self, field: u32, value: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&value.to_le_bytes());
    }
}

/// How a JSON value becomes a field.
#[derive(Clone, Copy)]
enum Kind {
    /// `string`.
    Text,
    /// `repeated string`.
    Texts,
    /// `bool`.
    Flag,
    /// `int64`.
    Integer,
    /// `double`.
    Number,
    /// `Any`, as `Any{yaml}`.
    Yaml,
    /// `repeated Any`.
    Yamls,
    /// A message made from the value.
    Nested(fn(&mut Encoder, &Value) -> Message),
    /// A repeated message, one per element of a JSON array.
    NestedList(fn(&mut Encoder, &Value) -> Message),
}

use Kind::*;

type Table = &'static [(&'static str, u32, Kind)];

const DOCUMENT: Table = &[
    ("swagger", 1, Text),
    ("info", 2, Nested(info)),
    ("host", 3, Text),
    ("basePath", 4, Text),
    ("schemes", 5, Texts),
    ("consumes", 6, Texts),
    ("produces", 7, Texts),
    ("paths", 8, Nested(paths)),
    ("definitions", 9, Nested(definitions)),
    ("security", 12, NestedList(security_requirement)),
    ("securityDefinitions", 13, Nested(security_definitions)),
    ("tags", 14, NestedList(tag)),
    ("externalDocs", 15, Nested(external_docs)),
];

const INFO: Table = &[
    ("title", 1, Text),
    ("version", 2, Text),
    ("description", 3, Text),
    ("termsOfService", 4, Text),
];

const PATH_ITEM: Table = &[
    ("$ref", 1, Text),
    ("get", 2, Nested(operation)),
    ("put", 3, Nested(operation)),
    ("post", 4, Nested(operation)),
    ("delete", 5, Nested(operation)),
    ("options", 6, Nested(operation)),
    ("head", 7, Nested(operation)),
    ("patch", 8, Nested(operation)),
    ("parameters", 9, NestedList(parameters_item)),
];

const OPERATION: Table = &[
    ("tags", 1, Texts),
    ("summary", 2, Text),
    ("description", 3, Text),
    ("externalDocs", 4, Nested(external_docs)),
    ("operationId", 5, Text),
    ("produces", 6, Texts),
    ("consumes", 7, Texts),
    ("parameters", 8, NestedList(parameters_item)),
    ("responses", 9, Nested(responses)),
    ("schemes", 10, Texts),
    ("deprecated", 11, Flag),
];

const BODY_PARAMETER: Table = &[
    ("description", 1, Text),
    ("name", 2, Text),
    ("in", 3, Text),
    ("required", 4, Flag),
    ("schema", 5, Nested(schema)),
];

/// `QueryParameterSubSchema` and `FormDataParameterSubSchema` (vendor extensions: 23).
const QUERY_PARAMETER: Table = &[
    ("required", 1, Flag),
    ("in", 2, Text),
    ("description", 3, Text),
    ("name", 4, Text),
    ("allowEmptyValue", 5, Flag),
    ("type", 6, Text),
    ("format", 7, Text),
    ("items", 8, Nested(primitives_items)),
    ("collectionFormat", 9, Text),
    ("default", 10, Yaml),
    ("maximum", 11, Number),
    ("exclusiveMaximum", 12, Flag),
    ("minimum", 13, Number),
    ("exclusiveMinimum", 14, Flag),
    ("maxLength", 15, Integer),
    ("minLength", 16, Integer),
    ("pattern", 17, Text),
    ("maxItems", 18, Integer),
    ("minItems", 19, Integer),
    ("uniqueItems", 20, Flag),
    ("enum", 21, Yamls),
    ("multipleOf", 22, Number),
];

/// `PathParameterSubSchema` and `HeaderParameterSubSchema` (vendor extensions: 22).
const PATH_PARAMETER: Table = &[
    ("required", 1, Flag),
    ("in", 2, Text),
    ("description", 3, Text),
    ("name", 4, Text),
    ("type", 5, Text),
    ("format", 6, Text),
    ("items", 7, Nested(primitives_items)),
    ("collectionFormat", 8, Text),
    ("default", 9, Yaml),
    ("maximum", 10, Number),
    ("exclusiveMaximum", 11, Flag),
    ("minimum", 12, Number),
    ("exclusiveMinimum", 13, Flag),
    ("maxLength", 14, Integer),
    ("minLength", 15, Integer),
    ("pattern", 16, Text),
    ("maxItems", 17, Integer),
    ("minItems", 18, Integer),
    ("uniqueItems", 19, Flag),
    ("enum", 20, Yamls),
    ("multipleOf", 21, Number),
];

const PRIMITIVES_ITEMS: Table = &[
    ("type", 1, Text),
    ("format", 2, Text),
    ("items", 3, Nested(primitives_items)),
    ("collectionFormat", 4, Text),
    ("default", 5, Yaml),
    ("maximum", 6, Number),
    ("exclusiveMaximum", 7, Flag),
    ("minimum", 8, Number),
    ("exclusiveMinimum", 9, Flag),
    ("maxLength", 10, Integer),
    ("minLength", 11, Integer),
    ("pattern", 12, Text),
    ("maxItems", 13, Integer),
    ("minItems", 14, Integer),
    ("uniqueItems", 15, Flag),
    ("enum", 16, Yamls),
    ("multipleOf", 17, Number),
];

const RESPONSE: Table = &[("description", 1, Text), ("schema", 2, Nested(schema_item))];

/// `Schema`; its vendor extensions are field 31.
const SCHEMA: Table = &[
    ("$ref", 1, Text),
    ("format", 2, Text),
    ("title", 3, Text),
    ("description", 4, Text),
    ("default", 5, Yaml),
    ("multipleOf", 6, Number),
    ("maximum", 7, Number),
    ("exclusiveMaximum", 8, Flag),
    ("minimum", 9, Number),
    ("exclusiveMinimum", 10, Flag),
    ("maxLength", 11, Integer),
    ("minLength", 12, Integer),
    ("pattern", 13, Text),
    ("maxItems", 14, Integer),
    ("minItems", 15, Integer),
    ("uniqueItems", 16, Flag),
    ("maxProperties", 17, Integer),
    ("minProperties", 18, Integer),
    ("required", 19, Texts),
    ("enum", 20, Yamls),
    (
        "additionalProperties",
        21,
        Nested(additional_properties_item),
    ),
    ("type", 22, Nested(type_item)),
    ("items", 23, Nested(items_item)),
    ("allOf", 24, NestedList(schema)),
    ("properties", 25, Nested(properties)),
    ("discriminator", 26, Text),
    ("readOnly", 27, Flag),
    ("externalDocs", 29, Nested(external_docs)),
    ("example", 30, Yaml),
];

const EXTERNAL_DOCS: Table = &[("description", 1, Text), ("url", 2, Text)];

const TAG: Table = &[
    ("name", 1, Text),
    ("description", 2, Text),
    ("externalDocs", 3, Nested(external_docs)),
];

const BASIC_AUTHENTICATION: Table = &[("type", 1, Text), ("description", 2, Text)];

const API_KEY: Table = &[
    ("type", 1, Text),
    ("name", 2, Text),
    ("in", 3, Text),
    ("description", 4, Text),
];

/// Collects what had nowhere to go while encoding.
#[derive(Debug, Default)]
struct Encoder {
    dropped: BTreeSet<String>,
}

impl Encoder {
    /// A message from a JSON object by its table; `x-…` keys go to `vendor_extension` when
    /// the message has that field.
    fn fields(&mut self, value: &Value, table: Table, vendor_extension: Option<u32>) -> Message {
        let mut message = Message::default();
        let Some(object) = value.as_object() else {
            self.dropped.insert(format!("a non-object {value}"));
            return message;
        };
        for (key, value) in object {
            if let Some((_, field, kind)) = table.iter().find(|(k, _, _)| k == key) {
                self.field(&mut message, *field, *kind, key, value);
            } else if let (Some(field), true) = (vendor_extension, key.starts_with("x-")) {
                message.message(field, named_any(key, value));
            } else {
                self.dropped.insert(key.clone());
            }
        }
        message
    }

    fn field(&mut self, message: &mut Message, field: u32, kind: Kind, key: &str, value: &Value) {
        let mut wrong = || {
            self.dropped
                .insert(format!("{key} (not the type its field has)"));
        };
        match kind {
            Text => match value.as_str() {
                Some(text) => message.string(field, text),
                None => wrong(),
            },
            Texts => match value.as_array() {
                Some(items) => {
                    for item in items {
                        match item.as_str() {
                            Some(text) => message.string(field, text),
                            None => wrong(),
                        }
                    }
                }
                None => wrong(),
            },
            Flag => match value.as_bool() {
                Some(flag) => message.varint(field, u64::from(flag)),
                None => wrong(),
            },
            Integer => match value.as_i64() {
                Some(number) => message.varint(field, number as u64),
                None => wrong(),
            },
            Number => match value.as_f64() {
                Some(number) => message.double(field, number),
                None => wrong(),
            },
            Yaml => message.message(field, any(value)),
            Yamls => match value.as_array() {
                Some(items) => {
                    for item in items {
                        message.message(field, any(item));
                    }
                }
                None => wrong(),
            },
            Nested(make) => {
                let nested = make(self, value);
                message.message(field, nested);
            }
            NestedList(make) => match value.as_array() {
                Some(items) => {
                    for item in items {
                        let nested = make(self, item);
                        message.message(field, nested);
                    }
                }
                None => wrong(),
            },
        }
    }

    /// `repeated Named<X> additional_properties = 1` from a JSON object of X.
    fn named(
        &mut self,
        value: &Value,
        field: u32,
        make: fn(&mut Encoder, &Value) -> Message,
    ) -> Message {
        let mut message = Message::default();
        for (name, item) in value.as_object().into_iter().flatten() {
            let mut entry = Message::default();
            entry.string(1, name);
            let item = make(self, item);
            entry.message(2, item);
            message.message(field, entry);
        }
        message
    }
}

/// `Any{yaml = 2}`: JSON text is YAML.
fn any(value: &Value) -> Message {
    let mut message = Message::default();
    message.string(2, &value.to_string());
    message
}

/// `NamedAny{name = 1, value = 2}`.
fn named_any(name: &str, value: &Value) -> Message {
    let mut message = Message::default();
    message.string(1, name);
    message.message(2, any(value));
    message
}

fn info(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.fields(value, INFO, Some(7))
}

/// `Paths{vendor_extension = 1, repeated NamedPathItem path = 2}`.
fn paths(encoder: &mut Encoder, value: &Value) -> Message {
    let mut message = Message::default();
    for (name, item) in value.as_object().into_iter().flatten() {
        if name.starts_with("x-") {
            message.message(1, named_any(name, item));
            continue;
        }
        let mut entry = Message::default();
        entry.string(1, name);
        let item = encoder.fields(item, PATH_ITEM, Some(10));
        entry.message(2, item);
        message.message(2, entry);
    }
    message
}

fn operation(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.fields(value, OPERATION, Some(13))
}

/// `ParametersItem{oneof: Parameter parameter = 1, JsonReference json_reference = 2}`;
/// `Parameter{oneof: BodyParameter = 1, NonBodyParameter = 2}`;
/// `NonBodyParameter{oneof: header = 1, formData = 2, query = 3, path = 4}`.
fn parameters_item(encoder: &mut Encoder, value: &Value) -> Message {
    let mut item = Message::default();
    if let Some(reference) = value.get("$ref") {
        item.message(2, json_reference(encoder, value, reference));
        return item;
    }
    let mut parameter = Message::default();
    match value.get("in").and_then(Value::as_str) {
        Some("body") => {
            let body = encoder.fields(value, BODY_PARAMETER, Some(6));
            parameter.message(1, body);
        }
        location => {
            let (choice, table, extensions) = match location {
                Some("header") => (1, PATH_PARAMETER, 22),
                Some("formData") => (2, QUERY_PARAMETER, 23),
                Some("path") => (4, PATH_PARAMETER, 22),
                _ => (3, QUERY_PARAMETER, 23),
            };
            let mut non_body = Message::default();
            let sub = encoder.fields(value, table, Some(extensions));
            non_body.message(choice, sub);
            parameter.message(2, non_body);
        }
    }
    item.message(1, parameter);
    item
}

/// `JsonReference{_ref = 1, description = 2}`.
fn json_reference(encoder: &mut Encoder, value: &Value, reference: &Value) -> Message {
    let mut message = Message::default();
    match reference.as_str() {
        Some(target) => message.string(1, target),
        None => {
            encoder.dropped.insert("$ref (not a string)".into());
        }
    }
    if let Some(description) = value.get("description").and_then(Value::as_str) {
        message.string(2, description);
    }
    message
}

fn primitives_items(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.fields(value, PRIMITIVES_ITEMS, Some(18))
}

/// `Responses{repeated NamedResponseValue response_code = 1, vendor_extension = 2}`,
/// `ResponseValue{oneof: Response response = 1, JsonReference json_reference = 2}`.
fn responses(encoder: &mut Encoder, value: &Value) -> Message {
    let mut message = Message::default();
    for (code, response) in value.as_object().into_iter().flatten() {
        if code.starts_with("x-") {
            message.message(2, named_any(code, response));
            continue;
        }
        let mut response_value = Message::default();
        if let Some(reference) = response.get("$ref") {
            response_value.message(2, json_reference(encoder, response, reference));
        } else {
            let fields = encoder.fields(response, RESPONSE, Some(5));
            response_value.message(1, fields);
        }
        let mut entry = Message::default();
        entry.string(1, code);
        entry.message(2, response_value);
        message.message(1, entry);
    }
    message
}

/// `SchemaItem{oneof: Schema schema = 1, FileSchema file_schema = 2}`.
fn schema_item(encoder: &mut Encoder, value: &Value) -> Message {
    let mut message = Message::default();
    let schema = schema(encoder, value);
    message.message(1, schema);
    message
}

/// `Definitions{repeated NamedSchema additional_properties = 1}`.
fn definitions(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.named(value, 1, schema)
}

fn schema(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.fields(value, SCHEMA, Some(31))
}

/// `Properties{repeated NamedSchema additional_properties = 1}`.
fn properties(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.named(value, 1, schema)
}

/// `AdditionalPropertiesItem{oneof: Schema schema = 1, bool boolean = 2}`.
fn additional_properties_item(encoder: &mut Encoder, value: &Value) -> Message {
    let mut message = Message::default();
    match value {
        Value::Bool(flag) => message.varint(2, u64::from(*flag)),
        _ => {
            let schema = schema(encoder, value);
            message.message(1, schema);
        }
    }
    message
}

/// `TypeItem{repeated string value = 1}`.
fn type_item(encoder: &mut Encoder, value: &Value) -> Message {
    let mut message = Message::default();
    match value {
        Value::String(name) => message.string(1, name),
        Value::Array(names) => {
            for name in names.iter().filter_map(Value::as_str) {
                message.string(1, name);
            }
        }
        _ => {
            encoder.dropped.insert("type (not a string)".into());
        }
    }
    message
}

/// `ItemsItem{repeated Schema schema = 1}`.
fn items_item(encoder: &mut Encoder, value: &Value) -> Message {
    let mut message = Message::default();
    let schemas: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for item in schemas {
        let schema = schema(encoder, item);
        message.message(1, schema);
    }
    message
}

fn external_docs(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.fields(value, EXTERNAL_DOCS, Some(3))
}

fn tag(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.fields(value, TAG, Some(4))
}

/// `SecurityRequirement{repeated NamedStringArray additional_properties = 1}`,
/// `StringArray{repeated string value = 1}`.
fn security_requirement(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.named(value, 1, |encoder, scopes| {
        let mut array = Message::default();
        encoder.field(&mut array, 1, Texts, "security scopes", scopes);
        array
    })
}

/// `SecurityDefinitions{repeated NamedSecurityDefinitionsItem additional_properties = 1}`,
/// `SecurityDefinitionsItem{oneof: basic = 1, apiKey = 2, (OAuth2 flows = 3…6)}`.
fn security_definitions(encoder: &mut Encoder, value: &Value) -> Message {
    encoder.named(value, 1, |encoder, definition| {
        let mut item = Message::default();
        match definition.get("type").and_then(Value::as_str) {
            Some("basic") => {
                let basic = encoder.fields(definition, BASIC_AUTHENTICATION, Some(3));
                item.message(1, basic);
            }
            Some("apiKey") => {
                let key = encoder.fields(definition, API_KEY, Some(5));
                item.message(2, key);
            }
            _ => {
                encoder
                    .dropped
                    .insert("securityDefinitions (only basic and apiKey)".into());
            }
        }
        item
    })
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    /// One decoded field.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Wire<'a> {
        Varint(u64),
        Fixed64([u8; 8]),
        Bytes(&'a [u8]),
    }

    /// Splits a message into its fields, refusing anything malformed.
    pub fn decode(mut bytes: &[u8]) -> Vec<(u32, Wire<'_>)> {
        fn read_varint(bytes: &mut &[u8]) -> u64 {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let Some((&byte, rest)) = bytes.split_first() else {
                    panic!("truncated varint");
                };
                *bytes = rest;
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return value;
                }
            }
            panic!("varint longer than 10 bytes");
        }
        let mut fields = Vec::new();
        while !bytes.is_empty() {
            let key = read_varint(&mut bytes);
            let field = u32::try_from(key >> 3).unwrap_or(u32::MAX);
            assert!(field > 0, "field number 0");
            let wire = match key & 7 {
                0 => Wire::Varint(read_varint(&mut bytes)),
                1 => {
                    assert!(bytes.len() >= 8, "truncated fixed64");
                    let (value, rest) = bytes.split_at(8);
                    bytes = rest;
                    let mut fixed = [0u8; 8];
                    fixed.copy_from_slice(value);
                    Wire::Fixed64(fixed)
                }
                2 => {
                    let length = usize::try_from(read_varint(&mut bytes)).unwrap_or(usize::MAX);
                    assert!(bytes.len() >= length, "truncated length-delimited field");
                    let (value, rest) = bytes.split_at(length);
                    bytes = rest;
                    Wire::Bytes(value)
                }
                other => panic!("wire type {other}"),
            };
            fields.push((field, wire));
        }
        fields
    }

    /// The length-delimited values of one field.
    pub fn all(bytes: &[u8], field: u32) -> Vec<&[u8]> {
        decode(bytes)
            .into_iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, wire)| match wire {
                Wire::Bytes(b) => b,
                other => panic!("field {field} is {other:?}, not length-delimited"),
            })
            .collect()
    }

    /// The only length-delimited value of one field.
    pub fn one(bytes: &[u8], field: u32) -> &[u8] {
        let values = all(bytes, field);
        assert_eq!(
            values.len(),
            1,
            "field {field} appears {} times",
            values.len()
        );
        values[0]
    }

    pub fn text(bytes: &[u8], field: u32) -> String {
        String::from_utf8_lossy(one(bytes, field)).into_owned()
    }

    /// `repeated Named<X>` entries as (name, value bytes).
    pub fn named(bytes: &[u8], field: u32) -> Vec<(String, &[u8])> {
        all(bytes, field)
            .into_iter()
            .map(|entry| (text(entry, 1), one(entry, 2)))
            .collect()
    }

    /// Vendor extensions as JSON values (from `Any.yaml`, field 2).
    pub fn extensions(bytes: &[u8], field: u32) -> Vec<(String, Value)> {
        named(bytes, field)
            .into_iter()
            .map(|(name, any)| {
                let yaml = text(any, 2);
                let value: Value = serde_json::from_str(&yaml)
                    .unwrap_or_else(|e| panic!("{name}: {yaml:?} is not JSON: {e}"));
                (name, value)
            })
            .collect()
    }

    /// A `Schema` back to JSON, with the field numbers of OpenAPIv2.proto written out
    /// independently of the encoder's table.
    pub fn schema_json(bytes: &[u8]) -> Value {
        let mut out = serde_json::Map::new();
        for (field, wire) in decode(bytes) {
            let (key, value) = match (field, wire) {
                (1, Wire::Bytes(b)) => ("$ref", Value::from(String::from_utf8_lossy(b))),
                (2, Wire::Bytes(b)) => ("format", Value::from(String::from_utf8_lossy(b))),
                (4, Wire::Bytes(b)) => ("description", Value::from(String::from_utf8_lossy(b))),
                (5, Wire::Bytes(b)) => ("default", yaml(b)),
                (7, Wire::Fixed64(b)) => ("maximum", json!(f64::from_le_bytes(b))),
                (9, Wire::Fixed64(b)) => ("minimum", json!(f64::from_le_bytes(b))),
                (11, Wire::Varint(v)) => ("maxLength", json!(v)),
                (13, Wire::Bytes(b)) => ("pattern", Value::from(String::from_utf8_lossy(b))),
                (16, Wire::Varint(v)) => ("uniqueItems", json!(v == 1)),
                (19, Wire::Bytes(b)) => {
                    let list = out.entry("required").or_insert_with(|| json!([]));
                    if let Value::Array(list) = list {
                        list.push(Value::from(String::from_utf8_lossy(b)));
                    }
                    continue;
                }
                (20, Wire::Bytes(b)) => {
                    let list = out.entry("enum").or_insert_with(|| json!([]));
                    if let Value::Array(list) = list {
                        list.push(yaml(b));
                    }
                    continue;
                }
                (21, Wire::Bytes(b)) => match decode(b).as_slice() {
                    [(1, Wire::Bytes(s))] => ("additionalProperties", schema_json(s)),
                    [(2, Wire::Varint(v))] => ("additionalProperties", json!(*v == 1)),
                    other => panic!("AdditionalPropertiesItem {other:?}"),
                },
                (22, Wire::Bytes(b)) => {
                    let types: Vec<String> = all(b, 1)
                        .into_iter()
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                        .collect();
                    assert_eq!(types.len(), 1, "one type");
                    ("type", Value::from(types[0].clone()))
                }
                (23, Wire::Bytes(b)) => ("items", schema_json(one(b, 1))),
                (25, Wire::Bytes(b)) => (
                    "properties",
                    Value::Object(
                        named(b, 1)
                            .into_iter()
                            .map(|(name, s)| (name, schema_json(s)))
                            .collect(),
                    ),
                ),
                (31, Wire::Bytes(b)) => {
                    let name = text(b, 1);
                    out.insert(name, yaml(one(b, 2)));
                    continue;
                }
                (field, wire) => panic!("unexpected Schema field {field}: {wire:?}"),
            };
            out.insert(key.to_owned(), value);
        }
        Value::Object(out)
    }

    fn yaml(any: &[u8]) -> Value {
        let text = text(any, 2);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn a_schema_decodes_back_to_its_json() {
        let input = json!({
            "description": "a widget",
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "format": "int32", "minimum": 0.0, "maximum": 10.5,
                    "default": 3},
                "name": {"type": "string", "maxLength": 20, "pattern": "^[a-z]+$",
                    "enum": ["a", "b"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "anything": {"type": "object", "additionalProperties": true},
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true,
                    "x-kubernetes-list-type": "set"},
                "spec": {"$ref": "#/definitions/io.k8s.api.core.v1.PodSpec",
                    "x-kubernetes-patch-strategy": "retainKeys"},
            },
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Pod", "version": "v1"}],
        });
        let mut encoder = Encoder::default();
        let bytes = schema(&mut encoder, &input).0;
        assert!(encoder.dropped.is_empty(), "{:?}", encoder.dropped);
        assert_eq!(schema_json(&bytes), input);
    }

    #[test]
    fn the_document_layout_follows_openapiv2_proto() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": {"/api/v1/namespaces/{namespace}/pods/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "type": "string"}],
                "patch": {
                    "operationId": "patchCoreV1NamespacedPod",
                    "parameters": [
                        {"name": "body", "in": "body", "required": true,
                            "schema": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
                        {"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true},
                    ],
                    "responses": {"200": {"description": "OK",
                        "schema": {"$ref": "#/definitions/io.k8s.api.core.v1.Pod"}}},
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": "", "kind": "Pod", "version": "v1"},
                },
            }},
            "definitions": {"io.k8s.api.core.v1.Pod": {"type": "object",
                "properties": {"kind": {"type": "string"}}}},
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
            "security": [{"BearerToken": []}],
        });
        let (bytes, dropped) = document_with_dropped(&doc);
        assert!(dropped.is_empty(), "{dropped:?}");
        // Document: swagger = 1, info = 2 {title = 1, version = 2}.
        assert_eq!(text(&bytes, 1), "2.0");
        assert_eq!(text(one(&bytes, 2), 1), "Kubernetes");
        assert_eq!(text(one(&bytes, 2), 2), "v1.33.0");
        // definitions = 9: Definitions{additional_properties = 1: NamedSchema}.
        let definitions = named(one(&bytes, 9), 1);
        assert_eq!(definitions[0].0, "io.k8s.api.core.v1.Pod");
        assert_eq!(
            schema_json(definitions[0].1)["properties"]["kind"]["type"],
            "string"
        );
        // paths = 8: Paths{path = 2: NamedPathItem{name = 1, value = 2: PathItem}}.
        let paths = named(one(&bytes, 8), 2);
        assert_eq!(paths[0].0, "/api/v1/namespaces/{namespace}/pods/{name}");
        let path_item = paths[0].1;
        // PathItem.parameters = 9: ParametersItem{parameter = 1: Parameter{non_body = 2:
        // NonBodyParameter{path = 4: PathParameterSubSchema{required = 1, in = 2, name = 4}}}}.
        let path_parameter = one(one(one(one(path_item, 9), 1), 2), 4);
        assert_eq!(text(path_parameter, 4), "name");
        assert_eq!(text(path_parameter, 2), "path");
        assert!(
            decode(path_parameter).contains(&(1, Wire::Varint(1))),
            "required"
        );
        // PathItem.patch = 8: Operation{operation_id = 5, parameters = 8, responses = 9,
        // vendor_extension = 13}.
        let patch = one(path_item, 8);
        assert_eq!(text(patch, 5), "patchCoreV1NamespacedPod");
        let parameters = all(patch, 8);
        let body = one(one(parameters[0], 1), 1);
        assert_eq!(text(body, 2), "body");
        assert_eq!(
            schema_json(one(body, 5))["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
        );
        // Query parameters: NonBodyParameter.query = 3, QueryParameterSubSchema.name = 4.
        let query = one(one(one(parameters[1], 1), 2), 3);
        assert_eq!(text(query, 4), "fieldValidation");
        assert_eq!(text(query, 6), "string");
        // Responses{response_code = 1: NamedResponseValue{value = 2: ResponseValue{response
        // = 1: Response{description = 1, schema = 2: SchemaItem{schema = 1}}}}}.
        let responses = named(one(patch, 9), 1);
        assert_eq!(responses[0].0, "200");
        let response = one(responses[0].1, 1);
        assert_eq!(text(response, 1), "OK");
        assert_eq!(
            schema_json(one(one(response, 2), 1))["$ref"],
            "#/definitions/io.k8s.api.core.v1.Pod"
        );
        let extensions = extensions(patch, 13);
        assert!(extensions.contains(&("x-kubernetes-action".into(), json!("patch"))));
        assert!(extensions.contains(&(
            "x-kubernetes-group-version-kind".into(),
            json!({"group": "", "kind": "Pod", "version": "v1"})
        )));
        // security = 12: SecurityRequirement{NamedStringArray = 1};
        // securityDefinitions = 13: {NamedSecurityDefinitionsItem = 1: {api_key = 2}}.
        assert_eq!(named(one(&bytes, 12), 1)[0].0, "BearerToken");
        let api_key = one(named(one(&bytes, 13), 1)[0].1, 2);
        assert_eq!(text(api_key, 3), "header");
    }

    #[test]
    fn keys_without_a_field_are_reported() {
        let (_, dropped) = document_with_dropped(&json!({
            "swagger": "2.0",
            "definitions": {"A": {"type": "object", "oneOf": [], "properties": {"b": {"nullable": true}}}},
        }));
        assert_eq!(
            dropped,
            BTreeSet::from(["nullable".to_owned(), "oneOf".to_owned()])
        );
    }
}
