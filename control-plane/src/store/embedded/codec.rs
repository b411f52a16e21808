//! The on-disk form of one change (a "record"): what the embedded store writes under its
//! revision key `(main, sub)` in the `revisions` table.
//!
//! Layout (little-endian): kind `u8` (0 put, 1 delete), create_revision `i64`, version
//! `i64`, lease `i64`, key length `u32`, key, value. Decoding never panics: anything
//! malformed is reported as corruption.
use crate::store::{Event, EventKind, KeyValue, Revision};

const PUT: u8 = 0;
const DELETE: u8 = 1;
const HEADER: usize = 1 + 8 + 8 + 8 + 4;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Whether this change deleted the key.
    pub tombstone: bool,
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
    /// `create_revision` after the change.
    pub create: Revision,
    /// `version` after the change.
    pub version: i64,
    /// Lease after the change.
    pub lease: i64,
}

impl Record {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.key.len() + self.value.len());
        out.push(if self.tombstone { DELETE } else { PUT });
        out.extend_from_slice(&self.create.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        let key_len = u32::try_from(self.key.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a record; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let kind = *bytes.first()?;
        let int = |at: usize| -> Option<i64> {
            Some(i64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let create = int(1)?;
        let version = int(9)?;
        let lease = int(17)?;
        let key_len = u32::from_le_bytes(bytes.get(25..29)?.try_into().ok()?);
        let key_end = HEADER.checked_add(usize::try_from(key_len).ok()?)?;
        let key = bytes.get(HEADER..key_end)?.to_vec();
        let value = bytes.get(key_end..)?.to_vec();
        let tombstone = match kind {
            PUT => false,
            DELETE => true,
            _ => return None,
        };
        Some(Self {
            tombstone,
            key,
            value,
            create,
            version,
            lease,
        })
    }

    /// The key-value this record describes at revision `main` (for a delete: the key with
    /// `mod_revision` = `main`, everything else zero, as etcd reports deletes).
    pub fn key_value(&self, main: Revision) -> KeyValue {
        if self.tombstone {
            return KeyValue {
                key: self.key.clone(),
                mod_revision: main,
                ..KeyValue::default()
            };
        }
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            create_revision: self.create,
            mod_revision: main,
            version: self.version,
            lease: self.lease,
        }
    }

    /// The watch event of this record, with an optional previous key-value.
    pub fn event(&self, main: Revision, prev_kv: Option<KeyValue>) -> Event {
        Event {
            kind: if self.tombstone {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv: self.key_value(main),
            prev_kv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = Record {
            tombstone: false,
            key: b"/registry/pods/default/a\x00\xff".to_vec(),
            value: vec![0, 1, 255],
            create: 7,
            version: 3,
            lease: 42,
        };
        assert_eq!(Record::decode(&record.encode()), Some(record));
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert_eq!(Record::decode(&[]), None);
        assert_eq!(Record::decode(&[9; 40]), None);
        let mut truncated = Record {
            tombstone: true,
            key: b"k".repeat(10),
            value: Vec::new(),
            create: 0,
            version: 0,
            lease: 0,
        }
        .encode();
        truncated.truncate(30);
        assert_eq!(Record::decode(&truncated), None);
    }
}
