//! The messages whose JSON form is not an object of their fields, written as Go writes
//! them: meta/v1 `Time` (RFC 3339, seconds) and `MicroTime` (microseconds), `Duration` (Go's
//! duration text), `resource.Quantity` (its string), `intstr.IntOrString` (a number or a
//! string by its type), `runtime.RawExtension`, apiextensions `JSON` and meta/v1 `FieldsV1`
//! (the JSON they carry), and apiextensions' `JSONSchemaPropsOrArray`, `...OrBool` and
//! `...OrStringArray` (whichever alternative is set).
//!
//! Owns these forms only; fields of ordinary messages are [`super::transcode`]'s.
use serde_json::Value;

use super::{
    schema::{FieldType, Message, Scalar},
    transcode::{expect_bytes, Transcoder},
    wire::{Reader, WireValue},
    ProtobufError,
};

/// A message with a JSON form of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// meta/v1 `Time`.
    Time,
    /// meta/v1 `MicroTime`.
    MicroTime,
    /// meta/v1 `Duration`.
    Duration,
    /// meta/v1 `FieldsV1`.
    FieldsV1,
    /// `resource.Quantity`.
    Quantity,
    /// `intstr.IntOrString`.
    IntOrString,
    /// `runtime.RawExtension`.
    RawExtension,
    /// apiextensions `JSON`.
    Json,
    /// apiextensions `JSONSchemaPropsOrArray`.
    PropsOrArray,
    /// apiextensions `JSONSchemaPropsOrBool`.
    PropsOrBool,
    /// apiextensions `JSONSchemaPropsOrStringArray`.
    PropsOrStringArray,
}

/// Each special message by its full name (as `k8s-pb` spells it).
pub const ALL: &[(&str, Special)] = &[
    ("k8s.io.apimachinery.pkg.apis.meta.v1.Time", Special::Time),
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime",
        Special::MicroTime,
    ),
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration",
        Special::Duration,
    ),
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1",
        Special::FieldsV1,
    ),
    (
        "k8s.io.apimachinery.pkg.api.resource.Quantity",
        Special::Quantity,
    ),
    (
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
        Special::IntOrString,
    ),
    (
        "k8s.io.apimachinery.pkg.runtime.RawExtension",
        Special::RawExtension,
    ),
    (
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.Json",
        Special::Json,
    ),
    (
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrArray",
        Special::PropsOrArray,
    ),
    (
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrBool",
        Special::PropsOrBool,
    ),
    (
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrStringArray",
        Special::PropsOrStringArray,
    ),
];

impl Special {
    /// The special form of a message, if it has one.
    pub fn of(name: &str) -> Option<Special> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }
}

/// Go's zero `time.Time` (January 1, year 1, UTC) in Unix seconds: JSON `null`.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// The fields of `records`, merged in order.
fn fields<'a, 'r>(
    records: &'r [&'a [u8]],
) -> impl Iterator<Item = Result<(u32, WireValue<'a>), ProtobufError>> + use<'a, 'r> {
    records.iter().flat_map(|record| {
        let mut reader = Reader::new(record);
        std::iter::from_fn(move || reader.field().transpose())
    })
}

fn varint(wire: WireValue<'_>, field: &str) -> Result<u64, ProtobufError> {
    match wire {
        WireValue::Varint(v) => Ok(v),
        other => Err(ProtobufError::malformed(format!(
            "field {field:?} holds a number but came as a {} value",
            other.kind()
        ))),
    }
}

/// The message type of field `number` of `message`.
fn message_field(
    message: &Message,
    number: u32,
) -> Result<super::schema::MessageId, ProtobufError> {
    match message.field(number).map(|f| f.ty) {
        Some(FieldType::Message(id)) => Ok(id),
        _ => Err(ProtobufError::Schema(
            super::schema::SchemaError::inconsistent(format!(
                "{} has no message field {number}",
                message.name
            )),
        )),
    }
}

/// The JSON form of a special message.
pub fn decode(
    transcoder: &mut Transcoder<'_>,
    special: Special,
    message: &Message,
    records: &[&[u8]],
    depth: usize,
) -> Result<Value, ProtobufError> {
    match special {
        // Their Go types unmarshal each record afresh: the last one counts.
        Special::Time | Special::MicroTime => {
            let last = records.last().map(std::slice::from_ref).unwrap_or(&[]);
            let (mut seconds, mut nanos) = (None, 0i64);
            for field in fields(last) {
                match field? {
                    (1, wire) => seconds = Some(varint(wire, "seconds")? as i64),
                    (2, wire) => nanos = i64::from(varint(wire, "nanos")? as i32),
                    _ => {}
                }
            }
            let Some(seconds) = seconds.or((!last.iter().all(|r| r.is_empty())).then_some(0))
            else {
                return Ok(Value::Null); // an empty record is Go's zero time
            };
            if special == Special::Time {
                // kube-apiserver keeps only the seconds of a `Time` read from protobuf.
                time_text(seconds, 0, false)
            } else {
                time_text(seconds, nanos, true)
            }
        }
        Special::Quantity => {
            let last = records.last().map(std::slice::from_ref).unwrap_or(&[]);
            let mut text = None;
            for field in fields(last) {
                if let (1, wire) = field? {
                    text =
                        Some(String::from_utf8_lossy(expect_bytes(wire, "string")?).into_owned());
                }
            }
            Ok(Value::String(text.unwrap_or_else(|| "0".to_owned())))
        }
        Special::Duration => {
            let mut nanos = 0i64;
            for field in fields(records) {
                if let (1, wire) = field? {
                    nanos = varint(wire, "duration")? as i64;
                }
            }
            Ok(Value::String(go_duration(nanos)))
        }
        Special::IntOrString => {
            let (mut kind, mut int, mut text) = (0i64, 0i32, String::new());
            for field in fields(records) {
                match field? {
                    (1, wire) => kind = varint(wire, "type")? as i64,
                    (2, wire) => int = varint(wire, "intVal")? as i32,
                    (3, wire) => {
                        text = String::from_utf8_lossy(expect_bytes(wire, "strVal")?).into_owned()
                    }
                    _ => {}
                }
            }
            match kind {
                0 => Ok(Value::from(int)),
                1 => Ok(Value::String(text)),
                other => Err(ProtobufError::malformed(format!(
                    "an IntOrString has type {other}; only 0 (int) and 1 (string) exist"
                ))),
            }
        }
        Special::RawExtension | Special::Json | Special::FieldsV1 => {
            let mut raw: &[u8] = &[];
            for field in fields(records) {
                if let (1, wire) = field? {
                    raw = expect_bytes(wire, "raw")?;
                }
            }
            embedded_json(transcoder, raw, message.short_name())
        }
        Special::PropsOrArray | Special::PropsOrStringArray => {
            let schema_id = message_field(message, 1)?;
            let mut schema_records = Vec::new();
            let mut items = Vec::new();
            for field in fields(records) {
                match field? {
                    (1, wire) => schema_records.push(expect_bytes(wire, "schema")?),
                    (2, wire) if special == Special::PropsOrArray => {
                        let bytes = expect_bytes(wire, "jSONSchemas")?;
                        items.push(transcoder.message(schema_id, &[bytes], depth + 1)?);
                    }
                    (2, wire) => items.push(transcoder.scalar(Scalar::String, wire, "property")?),
                    _ => {}
                }
            }
            if !items.is_empty() {
                Ok(Value::Array(items))
            } else if !schema_records.is_empty() {
                transcoder.message(schema_id, &schema_records, depth + 1)
            } else {
                Ok(Value::Null)
            }
        }
        Special::PropsOrBool => {
            let schema_id = message_field(message, 2)?;
            let mut allows = false;
            let mut schema_records = Vec::new();
            for field in fields(records) {
                match field? {
                    (1, wire) => allows = varint(wire, "allows")? != 0,
                    (2, wire) => schema_records.push(expect_bytes(wire, "schema")?),
                    _ => {}
                }
            }
            if schema_records.is_empty() {
                Ok(Value::Bool(allows))
            } else {
                transcoder.message(schema_id, &schema_records, depth + 1)
            }
        }
    }
}

/// Embedded JSON as a value; nothing (or nothing but whitespace) is `null`.
fn embedded_json(
    transcoder: &mut Transcoder<'_>,
    raw: &[u8],
    what: &str,
) -> Result<Value, ProtobufError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| ProtobufError::malformed(format!("a {what} does not hold JSON: {e}")))?;
    transcoder.spend(count_values(&value))?;
    Ok(value)
}

/// How many values a JSON value holds (without recursion: serde_json bounds the depth, but
/// counting need not rely on it).
fn count_values(value: &Value) -> usize {
    let mut count = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        count += 1;
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(members) => stack.extend(members.values()),
            _ => {}
        }
    }
    count
}

/// RFC 3339 in UTC, with microseconds for `MicroTime`, as Go's meta/v1 types write it.
fn time_text(seconds: i64, nanos: i64, micro: bool) -> Result<Value, ProtobufError> {
    // `time.Unix` carries nanoseconds outside [0, 1e9) into the seconds.
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let (seconds, nanos) = (
        total.div_euclid(1_000_000_000),
        total.rem_euclid(1_000_000_000),
    );
    if seconds == i128::from(GO_ZERO_TIME) && nanos == 0 {
        return Ok(Value::Null);
    }
    let out_of_range = || {
        ProtobufError::malformed(format!(
            "a time of {seconds} seconds since 1970 is outside years 0 to 9999"
        ))
    };
    let seconds = i64::try_from(seconds).map_err(|_| out_of_range())?;
    let at = time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| out_of_range())?;
    if !(0..=9999).contains(&at.year()) {
        return Err(out_of_range());
    }
    let date = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    Ok(Value::String(if micro {
        format!("{date}.{:06}Z", nanos / 1000)
    } else {
        format!("{date}Z")
    }))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
pub fn go_duration(nanos: i64) -> String {
    fn fraction(value: u64, digits: usize) -> String {
        if value == 0 {
            return String::new();
        }
        let text = format!("{value:0digits$}");
        format!(".{}", text.trim_end_matches('0'))
    }
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let body = if u < 1_000_000_000 {
        let (digits, unit) = match u {
            0..=999 => (0, "ns"),
            1_000..=999_999 => (3, "µs"),
            _ => (6, "ms"),
        };
        let scale = 10u64.pow(digits as u32);
        format!("{}{}{unit}", u / scale, fraction(u % scale, digits))
    } else {
        let seconds = u / 1_000_000_000;
        let frac = fraction(u % 1_000_000_000, 9);
        let (hours, minutes, secs) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
        if hours > 0 {
            format!("{hours}h{minutes}m{secs}{frac}s")
        } else if minutes > 0 {
            format!("{minutes}m{secs}{frac}s")
        } else {
            format!("{secs}{frac}s")
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        for (nanos, text) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (1_500_000, "1.5ms"),
            (999_999_999, "999.999999ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (61_000_000_000, "1m1s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_004_000_000, "1h2m3.004s"),
            (-90_000_000_000, "-1m30s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ] {
            assert_eq!(go_duration(nanos), text, "{nanos}");
        }
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(
            time_text(1_700_000_000, 0, false),
            Ok(Value::from("2023-11-14T22:13:20Z"))
        );
        assert_eq!(
            time_text(1_700_000_000, 123_456_789, true),
            Ok(Value::from("2023-11-14T22:13:20.123456Z"))
        );
        assert_eq!(
            time_text(0, 0, false),
            Ok(Value::from("1970-01-01T00:00:00Z"))
        );
        assert_eq!(
            time_text(-1, 1_500_000_000, true),
            Ok(Value::from("1970-01-01T00:00:00.500000Z"))
        );
        assert_eq!(time_text(GO_ZERO_TIME, 0, false), Ok(Value::Null));
        assert!(time_text(i64::MAX, 0, false).is_err());
        assert!(time_text(-62_167_219_201, 0, false).is_err()); // year -1
    }
}
