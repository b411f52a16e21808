//! The in-memory key index of the embedded store: for every key, the revisions at which it
//! changed (etcd's `treeIndex`). Values live on disk; the index says which record to read
//! for a key at a revision.
//!
//! Owns only revision bookkeeping; it never touches the disk.
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::store::{RangeEnd, Revision};

/// One change of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The revision of the change.
    pub main: Revision,
    /// Its position within that revision's transaction.
    pub sub: u32,
    /// Whether the change was a delete.
    pub tombstone: bool,
    /// `create_revision` of the key after the change (0 for a tombstone).
    pub create: Revision,
    /// `version` of the key after the change (0 for a tombstone).
    pub version: i64,
    /// Lease of the key after the change (0 for none or a tombstone).
    pub lease: i64,
}

impl IndexEntry {
    /// The record key on disk.
    pub fn record_key(&self) -> (u64, u32) {
        (u64::try_from(self.main).unwrap_or(0), self.sub)
    }
}

/// Every key's history, in key order.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, Vec<IndexEntry>>,
}

/// The (inclusive, exclusive) key bounds of a range.
pub fn bounds(key: &[u8], end: &RangeEnd) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    match end {
        RangeEnd::Single => (Bound::Included(key.to_vec()), Bound::Included(key.to_vec())),
        RangeEnd::Until(end) if end.is_empty() => {
            (Bound::Included(key.to_vec()), Bound::Included(key.to_vec()))
        }
        RangeEnd::Prefix => {
            let upper = if key.is_empty() {
                Bound::Unbounded
            } else {
                match crate::store::prefix_end(key) {
                    end if end == [0] => Bound::Unbounded,
                    end => Bound::Excluded(end),
                }
            };
            (Bound::Included(key.to_vec()), upper)
        }
        RangeEnd::Until(end) if end.as_slice() == [0] => {
            (Bound::Included(key.to_vec()), Bound::Unbounded)
        }
        RangeEnd::Until(end) => {
            if end.as_slice() <= key {
                // An empty range; BTreeMap::range panics on inverted bounds.
                (Bound::Included(key.to_vec()), Bound::Excluded(key.to_vec()))
            } else {
                (Bound::Included(key.to_vec()), Bound::Excluded(end.clone()))
            }
        }
    }
}

impl KeyIndex {
    /// The key's entry in effect at `revision`, if the key existed then.
    #[cfg(test)]
    pub fn at(&self, key: &[u8], revision: Revision) -> Option<&IndexEntry> {
        self.keys.get(key).and_then(|h| live_at(h, revision))
    }

    /// The key's latest entry (which may be a tombstone).
    pub fn latest(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.keys.get(key).and_then(|h| h.last())
    }

    /// The entry before `main`/`sub` in the key's history, if it is not a tombstone.
    pub fn previous(&self, key: &[u8], main: Revision, sub: u32) -> Option<&IndexEntry> {
        let history = self.keys.get(key)?;
        let pos = history.partition_point(|e| (e.main, e.sub) < (main, sub));
        let prev = history.get(pos.checked_sub(1)?)?;
        (!prev.tombstone).then_some(prev)
    }

    /// Keys in a range that existed at `revision`, in key order, with their entries.
    pub fn range_at<'a>(
        &'a self,
        key: &[u8],
        end: &RangeEnd,
        revision: Revision,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a IndexEntry)> + 'a {
        self.keys
            .range(bounds(key, end))
            .filter_map(move |(k, h)| live_at(h, revision).map(|e| (k, e)))
    }

    /// Appends a change to a key's history.
    pub fn push(&mut self, key: Vec<u8>, entry: IndexEntry) {
        self.keys.entry(key).or_default().push(entry);
    }

    /// Number of keys with any history.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Drops history that a compaction at `revision` makes unreachable: for each key, every
    /// entry before the last one at or below `revision`, and that one too if it is a
    /// tombstone. Returns the records to delete from disk.
    pub fn compact(&mut self, revision: Revision) -> Vec<(u64, u32)> {
        let mut removed = Vec::new();
        self.keys.retain(|_, history| {
            let upto = history.partition_point(|e| e.main <= revision);
            if upto == 0 {
                return true;
            }
            let keep_from = match history.get(upto - 1) {
                Some(last) if last.tombstone => upto,
                _ => upto - 1,
            };
            removed.extend(history.drain(..keep_from).map(|e| e.record_key()));
            !history.is_empty()
        });
        removed
    }
}

/// The entry in effect at `revision` in one key's history, unless it is a tombstone.
fn live_at(history: &[IndexEntry], revision: Revision) -> Option<&IndexEntry> {
    let pos = history.partition_point(|e| e.main <= revision);
    let entry = history.get(pos.checked_sub(1)?)?;
    (!entry.tombstone).then_some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: Revision, create: Revision, version: i64) -> IndexEntry {
        IndexEntry {
            main,
            sub: 0,
            tombstone: false,
            create,
            version,
            lease: 0,
        }
    }

    fn tomb(main: Revision) -> IndexEntry {
        IndexEntry {
            main,
            sub: 0,
            tombstone: true,
            create: 0,
            version: 0,
            lease: 0,
        }
    }

    #[test]
    fn reads_follow_history() {
        let mut index = KeyIndex::default();
        index.push(b"a".to_vec(), put(2, 2, 1));
        index.push(b"a".to_vec(), put(4, 2, 2));
        index.push(b"a".to_vec(), tomb(5));
        index.push(b"a".to_vec(), put(7, 7, 1));
        assert!(index.at(b"a", 1).is_none());
        assert_eq!(index.at(b"a", 3).map(|e| e.main), Some(2));
        assert_eq!(index.at(b"a", 4).map(|e| e.version), Some(2));
        assert!(index.at(b"a", 6).is_none());
        assert_eq!(index.at(b"a", 9).map(|e| e.create), Some(7));
        assert_eq!(index.previous(b"a", 4, 0).map(|e| e.main), Some(2));
        assert!(
            index.previous(b"a", 7, 0).is_none(),
            "a tombstone is no previous value"
        );
    }

    #[test]
    fn compaction_keeps_the_latest_value_at_or_below() {
        let mut index = KeyIndex::default();
        index.push(b"a".to_vec(), put(2, 2, 1));
        index.push(b"a".to_vec(), put(4, 2, 2));
        index.push(b"a".to_vec(), put(6, 2, 3));
        index.push(b"b".to_vec(), put(3, 3, 1));
        index.push(b"b".to_vec(), tomb(5));
        let removed = index.compact(5);
        assert_eq!(removed, vec![(2, 0), (3, 0), (5, 0)]);
        assert_eq!(index.at(b"a", 5).map(|e| e.main), Some(4));
        assert!(
            index.latest(b"b").is_none(),
            "a deleted key leaves the index"
        );
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn prefix_and_until_bounds() {
        let mut index = KeyIndex::default();
        for key in [&b"/a"[..], b"/a/1", b"/a/2", b"/ab", b"/b"] {
            index.push(key.to_vec(), put(2, 2, 1));
        }
        let prefix: Vec<_> = index
            .range_at(b"/a/", &RangeEnd::Prefix, 9)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(prefix, vec![b"/a/1".to_vec(), b"/a/2".to_vec()]);
        let until: Vec<_> = index
            .range_at(b"/a", &RangeEnd::Until(b"/ab".to_vec()), 9)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(until.len(), 3);
        assert_eq!(
            index
                .range_at(b"/b", &RangeEnd::Until(b"/a".to_vec()), 9)
                .count(),
            0
        );
        assert_eq!(index.range_at(b"", &RangeEnd::Prefix, 9).count(), 5);
    }
}
