//! Protobuf messages to JSON, driven by the [`Schema`]: each known field becomes the JSON
//! member Go's `encoding/json` would write for it, unknown field numbers are skipped (as
//! gogo-protobuf skips them), and the messages with JSON forms of their own are handed to
//! [`super::well_known`].
//!
//! Zero values follow Go: gogo-protobuf writes every non-pointer scalar, even when zero, and
//! pointers only when set, so a zero on the wire is left out exactly where `omitempty`
//! would leave it out of JSON ([`Zero::Omit`]). Messages that appear more than once are
//! merged, as protobuf merges them: their records are read as one.
//!
//! Bounded: nesting depth ([`MAX_DEPTH`]) and the number of JSON values produced
//! ([`MAX_VALUES`]); nothing is allocated by a length read from the input.
use serde_json::{Map, Value};

use super::{
    schema::{FieldType, MessageId, Scalar, Schema, Shape, Zero},
    well_known,
    wire::{Reader, WireValue},
    ProtobufError,
};
use base64::Engine as _;

/// Deepest nesting of messages accepted (as deep as serde_json nests JSON bodies).
pub const MAX_DEPTH: usize = 128;

/// Most JSON values one body may decode to (each costs at least one byte of input; this
/// caps what a small body can make the server hold).
pub const MAX_VALUES: usize = 1_000_000;

/// Decodes messages of one body, counting what it produces.
#[derive(Debug)]
pub struct Transcoder<'s> {
    schema: &'s Schema,
    budget: usize,
}

/// A field's value while its message is read.
enum Pending<'a> {
    Scalar(Value),
    /// The records of a singular message field (merged when there are several).
    Records(Vec<&'a [u8]>),
    List(Vec<Value>),
    Map(Map<String, Value>),
}

impl<'s> Transcoder<'s> {
    /// A transcoder with the full [`MAX_VALUES`] budget.
    pub fn new(schema: &'s Schema) -> Self {
        Self {
            schema,
            budget: MAX_VALUES,
        }
    }

    /// Counts `n` produced values against the budget.
    pub fn spend(&mut self, n: usize) -> Result<(), ProtobufError> {
        self.budget = self
            .budget
            .checked_sub(n)
            .ok_or(ProtobufError::TooManyValues)?;
        Ok(())
    }

    /// The JSON form of message `id` encoded in `records` (one record, or several to merge;
    /// none is the empty message).
    pub fn message(
        &mut self,
        id: MessageId,
        records: &[&[u8]],
        depth: usize,
    ) -> Result<Value, ProtobufError> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::TooDeep);
        }
        self.spend(1)?;
        let schema = self.schema;
        let message = schema.message(id);
        if let Some(special) = well_known::Special::of(message.name) {
            return well_known::decode(self, special, message, records, depth);
        }
        let mut pending: Vec<Option<Pending<'_>>> = Vec::new();
        pending.resize_with(message.fields.len(), || None);
        for record in records {
            let mut reader = Reader::new(record);
            while let Some((number, wire)) = reader.field()? {
                let Ok(index) = message.fields.binary_search_by_key(&number, |f| f.number) else {
                    continue; // unknown to this version of the API: skipped, as Go does
                };
                let field = &message.fields[index];
                let slot = &mut pending[index];
                match (field.shape, field.ty) {
                    // (The table never has an inline scalar: it is refused when parsed.)
                    (Shape::One | Shape::Inline, FieldType::Scalar(scalar)) => {
                        *slot = Some(Pending::Scalar(self.scalar(scalar, wire, field.json)?));
                    }
                    (Shape::One | Shape::Inline, FieldType::Message(_)) => {
                        let bytes = expect_bytes(wire, field.json)?;
                        match slot {
                            Some(Pending::Records(records)) => records.push(bytes),
                            _ => *slot = Some(Pending::Records(vec![bytes])),
                        }
                    }
                    (Shape::List, ty) => {
                        let mut items = match slot.take() {
                            Some(Pending::List(items)) => items,
                            _ => Vec::new(),
                        };
                        match ty {
                            FieldType::Scalar(scalar) => {
                                self.list_scalars(scalar, wire, field.json, &mut items)?;
                            }
                            FieldType::Message(item) => {
                                let bytes = expect_bytes(wire, field.json)?;
                                items.push(self.message(item, &[bytes], depth + 1)?);
                            }
                        }
                        *slot = Some(Pending::List(items));
                    }
                    (Shape::Map, ty) => {
                        let mut entries = match slot.take() {
                            Some(Pending::Map(entries)) => entries,
                            _ => Map::new(),
                        };
                        let bytes = expect_bytes(wire, field.json)?;
                        let (key, value) = self.map_entry(ty, bytes, field.json, depth)?;
                        entries.insert(key, value);
                        *slot = Some(Pending::Map(entries));
                    }
                }
            }
        }
        if message.list_wrapper {
            let items = match pending.pop().flatten() {
                Some(Pending::List(items)) => items,
                _ => Vec::new(),
            };
            return Ok(Value::Array(items));
        }
        let mut object = Map::new();
        let mut inlined = Vec::new();
        for (field, value) in message.fields.iter().zip(pending) {
            let value = match value {
                None => continue,
                Some(Pending::Records(records)) if field.shape == Shape::Inline => {
                    if let FieldType::Message(id) = field.ty {
                        inlined.push(self.message(id, &records, depth + 1)?);
                    }
                    continue;
                }
                Some(Pending::Scalar(value)) => {
                    if field.zero == Zero::Omit && is_zero(&value) {
                        continue;
                    }
                    value
                }
                Some(Pending::Records(records)) => {
                    let FieldType::Message(id) = field.ty else {
                        continue;
                    };
                    self.message(id, &records, depth + 1)?
                }
                Some(Pending::List(items)) => Value::Array(items),
                Some(Pending::Map(entries)) => Value::Object(entries),
            };
            object.insert(field.json.to_owned(), value);
        }
        // Go promotes an embedded struct's fields; the outer struct's own fields win.
        for members in inlined {
            if let Value::Object(members) = members {
                for (key, value) in members {
                    object.entry(key).or_insert(value);
                }
            }
        }
        Ok(Value::Object(object))
    }

    /// One scalar.
    pub fn scalar(
        &mut self,
        scalar: Scalar,
        wire: WireValue<'_>,
        field: &str,
    ) -> Result<Value, ProtobufError> {
        self.spend(1)?;
        Ok(match (scalar, wire) {
            (Scalar::String, WireValue::Bytes(bytes)) => {
                // Go keeps invalid UTF-8 and its JSON encoder writes U+FFFD for it.
                Value::String(String::from_utf8_lossy(bytes).into_owned())
            }
            (Scalar::Bytes, WireValue::Bytes(bytes)) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            // Protobuf truncates an int32 read from a (sign-extended) varint.
            (Scalar::Int32, WireValue::Varint(v)) => Value::from(v as i64 as i32),
            (Scalar::Int64, WireValue::Varint(v)) => Value::from(v as i64),
            (Scalar::Bool, WireValue::Varint(v)) => Value::Bool(v != 0),
            (Scalar::Double, WireValue::Fixed64(bits)) => number(f64::from_bits(bits), field)?,
            (scalar, wire) => {
                return Err(ProtobufError::malformed(format!(
                    "field {field:?} holds {scalar:?} but came as a {} value",
                    wire.kind()
                )))
            }
        })
    }

    /// Appends one element of a repeated scalar, or all of a packed list.
    fn list_scalars(
        &mut self,
        scalar: Scalar,
        wire: WireValue<'_>,
        field: &str,
        items: &mut Vec<Value>,
    ) -> Result<(), ProtobufError> {
        let packed = matches!(
            scalar,
            Scalar::Int32 | Scalar::Int64 | Scalar::Bool | Scalar::Double
        );
        match wire {
            WireValue::Bytes(bytes) if packed => {
                let mut reader = Reader::new(bytes);
                while !reader.is_empty() {
                    let element = if scalar == Scalar::Double {
                        WireValue::Fixed64(reader.fixed64()?)
                    } else {
                        WireValue::Varint(reader.varint()?)
                    };
                    items.push(self.scalar(scalar, element, field)?);
                }
            }
            wire => items.push(self.scalar(scalar, wire, field)?),
        }
        Ok(())
    }

    /// One `map<string, T>` entry: key (field 1) and value (field 2), each defaulting to
    /// its zero value when absent.
    fn map_entry(
        &mut self,
        ty: FieldType,
        bytes: &[u8],
        field: &str,
        depth: usize,
    ) -> Result<(String, Value), ProtobufError> {
        self.spend(1)?;
        let mut key = String::new();
        let mut scalar_value = None;
        let mut records = Vec::new();
        let mut reader = Reader::new(bytes);
        while let Some((number, wire)) = reader.field()? {
            match number {
                1 => {
                    key = String::from_utf8_lossy(expect_bytes(wire, field)?).into_owned();
                }
                2 => match ty {
                    FieldType::Scalar(scalar) => {
                        scalar_value = Some(self.scalar(scalar, wire, field)?);
                    }
                    FieldType::Message(_) => records.push(expect_bytes(wire, field)?),
                },
                _ => {}
            }
        }
        let value = match ty {
            FieldType::Scalar(scalar) => scalar_value.unwrap_or_else(|| zero_of(scalar)),
            FieldType::Message(id) => self.message(id, &records, depth + 1)?,
        };
        Ok((key, value))
    }
}

/// The bytes of a length-delimited field, or an error naming the field.
pub fn expect_bytes<'a>(wire: WireValue<'a>, field: &str) -> Result<&'a [u8], ProtobufError> {
    match wire {
        WireValue::Bytes(bytes) => Ok(bytes),
        other => Err(ProtobufError::malformed(format!(
            "field {field:?} holds a message or text but came as a {} value",
            other.kind()
        ))),
    }
}

/// A finite double as JSON, integral values as integers (as Go writes them).
pub fn number(value: f64, field: &str) -> Result<Value, ProtobufError> {
    if !value.is_finite() {
        return Err(ProtobufError::malformed(format!(
            "field {field:?} is {value}, which JSON cannot hold"
        )));
    }
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() == 0.0 && value.abs() <= EXACT {
        return Ok(Value::from(value as i64));
    }
    Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
}

/// Whether a scalar is its type's zero value.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn zero_of(scalar: Scalar) -> Value {
    match scalar {
        Scalar::String | Scalar::Bytes => Value::String(String::new()),
        Scalar::Int32 | Scalar::Int64 | Scalar::Double => Value::from(0),
        Scalar::Bool => Value::Bool(false),
    }
}
