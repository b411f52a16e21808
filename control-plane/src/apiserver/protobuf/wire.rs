//! The protobuf wire format, read from untrusted bytes: tags, varints, 64- and 32-bit
//! values and length-delimited records, each checked against what is left of the input.
//!
//! Owns only the encoding; it knows no message. Nothing here allocates by a length read
//! from the input: records are borrowed slices of it.
use super::ProtobufError;

/// One field as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1 (little-endian).
    Fixed64(u64),
    /// Wire type 2: a string, bytes, an embedded message or a packed list.
    Bytes(&'a [u8]),
    /// Wire type 5 (little-endian).
    Fixed32(u32),
}

impl WireValue<'_> {
    /// The wire type's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            WireValue::Varint(_) => "varint",
            WireValue::Fixed64(_) => "64-bit",
            WireValue::Bytes(_) => "length-delimited",
            WireValue::Fixed32(_) => "32-bit",
        }
    }
}

/// Largest field number protobuf allows.
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// Reads fields one after another from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over one message's bytes.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Reads a varint (at most 10 bytes, as protobuf encodes 64-bit values).
    pub fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value: u64 = 0;
        for (i, byte) in self.bytes.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(ProtobufError::malformed(if self.bytes.len() < 10 {
            "a varint is cut off"
        } else {
            "a varint is longer than 10 bytes"
        }))
    }

    /// Reads a little-endian 64-bit value (an element of a packed list of doubles).
    pub fn fixed64(&mut self) -> Result<u64, ProtobufError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ProtobufError> {
        if len > self.bytes.len() {
            return Err(ProtobufError::malformed(format!(
                "a field claims {len} bytes but only {} remain",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    /// The next field, or `None` at the end.
    pub fn field(&mut self) -> Result<Option<(u32, WireValue<'a>)>, ProtobufError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > MAX_FIELD_NUMBER {
            return Err(ProtobufError::malformed(format!(
                "field number {number} is out of range"
            )));
        }
        let number = number as u32;
        let value = match key & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => WireValue::Fixed64(self.fixed64()?),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                WireValue::Bytes(self.take(len)?)
            }
            5 => {
                let mut word = [0u8; 4];
                word.copy_from_slice(self.take(4)?);
                WireValue::Fixed32(u32::from_le_bytes(word))
            }
            other => {
                return Err(ProtobufError::malformed(format!(
                    "field {number} has wire type {other}, which Kubernetes objects never use"
                )))
            }
        };
        Ok(Some((number, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(bytes: &[u8]) -> Result<Vec<(u32, WireValue<'_>)>, ProtobufError> {
        let mut reader = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some(field) = reader.field()? {
            out.push(field);
        }
        Ok(out)
    }

    #[test]
    fn every_wire_type_reads() {
        let bytes = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 0x02, b'h', b'i', // 3: "hi"
            0x25, 2, 0, 0, 0, // 4: fixed32 2
        ];
        assert_eq!(
            fields(&bytes),
            Ok(vec![
                (1, WireValue::Varint(150)),
                (2, WireValue::Fixed64(1)),
                (3, WireValue::Bytes(b"hi")),
                (4, WireValue::Fixed32(2)),
            ])
        );
        // A negative int32 is a 10-byte varint.
        let negative = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(
            fields(&negative),
            Ok(vec![(1, WireValue::Varint(u64::MAX))])
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &[0x08][..],   // value missing
            &[0x08, 0x80], // varint cut off
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ], // 11 bytes
            &[0x0a, 0x05, b'a'], // length past the end
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // huge length
            &[0x11, 1, 2, 3], // fixed64 cut off
            &[0x0b],       // group start
            &[0x00, 0x00], // field 0
            &[0x80, 0x80, 0x80, 0x80, 0x20, 0x00], // field number past 2^29
        ] {
            assert!(fields(bad).is_err(), "{bad:?}");
        }
    }
}
