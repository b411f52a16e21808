//! The protobuf schema of the Kubernetes API as data: for every message of `k8s.io/api`,
//! meta/v1 and apiextensions/v1, its fields by number with their JSON names, shapes, types
//! and how Go writes their zero values. Parsed once from `schema.tsv` (written by the
//! generator in `generator/`, checked against `k8s-pb` by a test).
//!
//! Owns the table and its lookups; it decodes nothing.
use std::{collections::HashMap, sync::OnceLock};

/// The checked-in table.
const TABLE: &str = include_str!("schema.tsv");

/// A scalar protobuf type (the ones the Kubernetes protos use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// `string`.
    String,
    /// `int32` (varint).
    Int32,
    /// `int64` (varint).
    Int64,
    /// `bool` (varint).
    Bool,
    /// `bytes` (base64 in JSON).
    Bytes,
    /// `double` (64-bit).
    Double,
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A scalar.
    Scalar(Scalar),
    /// A message, by its index in the schema.
    Message(MessageId),
}

/// Singular, repeated, or a `map<string, T>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    One,
    /// A JSON array.
    List,
    /// A JSON object with string keys.
    Map,
    /// A message whose members JSON writes into its parent's object (an embedded Go struct
    /// with `json:",inline"`, e.g. `LocalObjectReference` in `ConfigMapKeySelector`).
    Inline,
}

/// How Go writes a singular scalar field to JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    /// A Go pointer: present on the wire only when set, and then written even when zero.
    Pointer,
    /// A non-pointer `omitempty` field: always on the wire, left out of JSON when zero.
    Omit,
    /// A field without `omitempty`: always written.
    Keep,
    /// Not a singular scalar.
    NotScalar,
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field number.
    pub number: u32,
    /// The JSON name.
    pub json: &'static str,
    /// Singular, list or map.
    pub shape: Shape,
    /// What it holds (a map's values).
    pub ty: FieldType,
    /// How a zero value is written.
    pub zero: Zero,
}

/// Index of a message in the [`Schema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(usize);

/// One message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Full name (`k8s.io.api.core.v1.Pod`), spelled as `k8s-pb` spells it.
    pub name: &'static str,
    /// Whether the JSON form is the bare list of its one field (Go slice types such as
    /// authentication's `ExtraValue`).
    pub list_wrapper: bool,
    /// Fields, sorted by number.
    pub fields: Vec<Field>,
}

impl Message {
    /// The field with this number.
    pub fn field(&self, number: u32) -> Option<&Field> {
        self.fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()
            .map(|i| &self.fields[i])
    }

    /// The package (`k8s.io.api.core.v1`).
    pub fn package(&self) -> &'static str {
        self.name.rsplit_once('.').map_or("", |(p, _)| p)
    }

    /// The short name (`Pod`).
    pub fn short_name(&self) -> &'static str {
        self.name.rsplit_once('.').map_or(self.name, |(_, n)| n)
    }
}

/// A malformed table (a bug caught by the tests, never user input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema table line {line}: {problem}")]
pub struct SchemaError {
    /// 1-based line number (0: found while decoding, not at a line).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

impl SchemaError {
    /// A table that parsed but does not hold what the decoder relies on.
    pub fn inconsistent(problem: String) -> Self {
        Self { line: 0, problem }
    }
}

/// Every message, with lookups by name.
#[derive(Debug)]
pub struct Schema {
    messages: Vec<Message>,
    by_name: HashMap<&'static str, MessageId>,
    /// `(package, lowercase short name)` → message, for kinds (`k8s-pb` spells some
    /// names differently from the kinds, e.g. `IPAddress`/`IpBlock`).
    by_kind: HashMap<(String, String), MessageId>,
}

impl Schema {
    /// The embedded table, parsed on first use.
    pub fn get() -> Result<&'static Schema, SchemaError> {
        static SCHEMA: OnceLock<Result<Schema, SchemaError>> = OnceLock::new();
        SCHEMA
            .get_or_init(|| Schema::parse(TABLE))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Parses a table.
    pub fn parse(text: &'static str) -> Result<Schema, SchemaError> {
        // Names first, so fields can refer to messages further down.
        let mut names = Vec::new();
        for line in text.lines() {
            if !line.starts_with('#') && !line.starts_with('\t') && !line.is_empty() {
                names.push(line.split('\t').next().unwrap_or_default());
            }
        }
        let by_name: HashMap<&'static str, MessageId> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, MessageId(i)))
            .collect();
        let mut messages: Vec<Message> = Vec::with_capacity(names.len());
        for (index, line) in text.lines().enumerate() {
            let error = |problem: String| SchemaError {
                line: index + 1,
                problem,
            };
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some(field) = line.strip_prefix('\t') else {
                let mut columns = line.split('\t');
                let name = columns.next().unwrap_or_default();
                let list_wrapper = match columns.next() {
                    None => false,
                    Some("list") => true,
                    Some(other) => return Err(error(format!("unknown message flag {other:?}"))),
                };
                messages.push(Message {
                    name,
                    list_wrapper,
                    fields: Vec::new(),
                });
                continue;
            };
            let Some(message) = messages.last_mut() else {
                return Err(error("a field before any message".into()));
            };
            let columns: Vec<&'static str> = field.split('\t').collect();
            let [number, json, shape, ty, zero] = columns.as_slice() else {
                return Err(error(format!("expected 5 columns, got {}", columns.len())));
            };
            let number: u32 = number
                .parse()
                .map_err(|e| error(format!("field number {number:?}: {e}")))?;
            let shape = match *shape {
                "one" => Shape::One,
                "list" => Shape::List,
                "map" => Shape::Map,
                "inline" => Shape::Inline,
                other => return Err(error(format!("unknown shape {other:?}"))),
            };
            let ty = match *ty {
                "string" => FieldType::Scalar(Scalar::String),
                "int32" => FieldType::Scalar(Scalar::Int32),
                "int64" => FieldType::Scalar(Scalar::Int64),
                "bool" => FieldType::Scalar(Scalar::Bool),
                "bytes" => FieldType::Scalar(Scalar::Bytes),
                "double" => FieldType::Scalar(Scalar::Double),
                name => {
                    let package = message.package();
                    let full = if name.contains('.') {
                        by_name.get(name)
                    } else {
                        by_name.get(format!("{package}.{name}").as_str())
                    };
                    FieldType::Message(
                        *full.ok_or_else(|| error(format!("unknown message {name:?}")))?,
                    )
                }
            };
            let zero = match *zero {
                "ptr" => Zero::Pointer,
                "omit" => Zero::Omit,
                "keep" => Zero::Keep,
                "-" => Zero::NotScalar,
                other => return Err(error(format!("unknown zero rule {other:?}"))),
            };
            if shape == Shape::Inline && !matches!(ty, FieldType::Message(_)) {
                return Err(error(format!("field {number} is inline but not a message")));
            }
            if message.fields.last().is_some_and(|f| f.number >= number) {
                return Err(error(format!("field {number} out of order")));
            }
            message.fields.push(Field {
                number,
                json,
                shape,
                ty,
                zero,
            });
        }
        let by_kind = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let key = (m.package().to_owned(), m.short_name().to_lowercase());
                (key, MessageId(i))
            })
            .collect();
        Ok(Schema {
            messages,
            by_name,
            by_kind,
        })
    }

    /// A message by index.
    pub fn message(&self, id: MessageId) -> &Message {
        &self.messages[id.0]
    }

    /// A message by full name.
    pub fn find(&self, full_name: &str) -> Option<MessageId> {
        self.by_name.get(full_name).copied()
    }

    /// The message of a kind in a package, compared case-insensitively.
    pub fn find_kind(&self, package: &str, kind: &str) -> Option<MessageId> {
        self.by_kind
            .get(&(package.to_owned(), kind.to_lowercase()))
            .copied()
    }

    /// How many messages there are.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_parses_and_knows_the_common_kinds() {
        let schema = Schema::get().unwrap_or_else(|e| panic!("{e}"));
        assert!(schema.len() > 500, "{} messages", schema.len());
        for (package, kind) in [
            ("k8s.io.api.core.v1", "Pod"),
            ("k8s.io.api.apps.v1", "Deployment"),
            ("k8s.io.api.networking.v1", "IPAddress"),
            ("k8s.io.apimachinery.pkg.apis.meta.v1", "DeleteOptions"),
            (
                "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1",
                "CustomResourceDefinition",
            ),
        ] {
            assert!(
                schema.find_kind(package, kind).is_some(),
                "{package} {kind}"
            );
        }
        let Some(spec) = schema.find("k8s.io.api.apps.v1.DeploymentSpec") else {
            panic!("DeploymentSpec");
        };
        let replicas = schema.message(spec).field(1).cloned();
        assert_eq!(
            replicas,
            Some(Field {
                number: 1,
                json: "replicas",
                shape: Shape::One,
                ty: FieldType::Scalar(Scalar::Int32),
                zero: Zero::Pointer,
            })
        );
    }

    #[test]
    fn malformed_tables_are_refused_with_the_line() {
        let bad = Schema::parse("a.B\n\t1\tx\tone\tstring\n").map(|s| s.len());
        assert_eq!(bad.map_err(|e| e.line), Err(2));
        let unknown = Schema::parse("a.B\n\t1\tx\tone\tC\tkeep\n").map(|s| s.len());
        assert!(unknown.is_err());
        let ok = Schema::parse("a.B\n\t1\tx\tone\tC\t-\na.C\tlist\n\t1\titems\tlist\tstring\t-\n");
        assert_eq!(ok.map(|s| s.len()), Ok(2));
    }
}
