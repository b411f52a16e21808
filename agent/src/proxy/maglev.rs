//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016): a lookup table of prime size `M` in which every backend owns
//! about `M / N` entries, and in which adding or removing one backend moves few entries that
//! belonged to the others.
//!
//! Owns the table size rules, the per-backend permutation (offset and skip from two
//! independent, stable hashes of the backend's key) and the population loop. It must not know
//! about BPF maps, Kubernetes objects or slots: callers pass stable backend keys (such as
//! `"10.42.1.7:8080"`) and get back, per table entry, an index into the keys they passed.
//! The output depends only on the set of keys and the table size, never on their order, the
//! process, the Rust version or the platform.

use std::fmt;

/// Table size used when the operator does not choose one (a prime, as Maglev requires).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;
/// Smallest accepted table size: below this the shares of even a few backends are far apart.
pub const MIN_TABLE_SIZE: u32 = 251;
/// Largest accepted table size: bounds the memory of one table (4 bytes per entry) and the
/// cost of rebuilding it.
pub const MAX_TABLE_SIZE: u32 = 131_071;

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// Maglev needs a prime table size so that every skip visits every entry; choose a prime
    /// such as 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521 or 131071.
    #[error("Maglev table size {size} is not a prime; choose a prime such as 16381")]
    NotPrime { size: u32 },
    /// The size is outside the accepted range.
    #[error("Maglev table size {size} is outside {MIN_TABLE_SIZE}..={MAX_TABLE_SIZE}")]
    OutOfRange { size: u32 },
    /// More backends than table entries: some backends would never be chosen. Use a larger
    /// table (at least 100 times the number of backends keeps shares within about 1 %).
    #[error("{backends} backends do not fit in a Maglev table of {size} entries")]
    TooManyBackends { backends: usize, size: u32 },
    /// The same key was passed twice; keys must identify backends uniquely.
    #[error("backend key {key:?} appears more than once")]
    DuplicateBackend { key: String },
    /// A table size given as text is not a number.
    #[error("Maglev table size {input:?} is not a number; choose a prime such as 16381")]
    NotANumber { input: String },
}

/// A validated Maglev table size: a prime within [`MIN_TABLE_SIZE`]..=[`MAX_TABLE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableSize(u32);

impl TableSize {
    /// Checks that `size` is a usable table size.
    pub fn new(size: u32) -> Result<Self, MaglevError> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size) {
            return Err(MaglevError::OutOfRange { size });
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime { size });
        }
        Ok(Self(size))
    }

    /// The number of entries.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for TableSize {
    fn default() -> Self {
        Self(DEFAULT_TABLE_SIZE)
    }
}

/// Parses a table size flag: a decimal number that [`TableSize::new`] accepts.
impl std::str::FromStr for TableSize {
    type Err = MaglevError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let size = s
            .trim()
            .parse::<u32>()
            .map_err(|_| MaglevError::NotANumber {
                input: s.to_owned(),
            })?;
        Self::new(size)
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A populated lookup table: entry `i` holds the index (into the keys given to
/// [`MaglevTable::build`]) of the backend that owns hash bucket `i`. Empty when there are no
/// backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    entries: Vec<u32>,
}

impl MaglevTable {
    /// Builds the table for `keys`, each a stable identifier of one backend. The result is the
    /// same for the same set of keys in any order (indices always refer to the order given).
    pub fn build<K: AsRef<str>>(size: TableSize, keys: &[K]) -> Result<Self, MaglevError> {
        let table_len = size.get() as usize;
        if keys.is_empty() {
            return Ok(Self {
                entries: Vec::new(),
            });
        }
        if keys.len() > table_len {
            return Err(MaglevError::TooManyBackends {
                backends: keys.len(),
                size: size.get(),
            });
        }
        // Fill in key order, not input order, so that the table depends only on the set.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by(|&a, &b| keys[a].as_ref().cmp(keys[b].as_ref()));
        if let Some(pair) = order
            .windows(2)
            .find(|pair| keys[pair[0]].as_ref() == keys[pair[1]].as_ref())
        {
            return Err(MaglevError::DuplicateBackend {
                key: keys[pair[0]].as_ref().to_owned(),
            });
        }
        let permutations: Vec<Permutation> = order
            .iter()
            .map(|&index| Permutation::for_key(keys[index].as_ref(), size.get()))
            .collect();

        const EMPTY: u32 = u32::MAX;
        let mut entries = vec![EMPTY; table_len];
        let mut next = vec![0u64; order.len()];
        let mut filled = 0usize;
        // Every round gives each backend one more entry, so the loop ends after at most
        // ceil(M / N) rounds; each backend's next free preference is found within M probes
        // because its permutation visits every entry exactly once (M prime, skip < M).
        'rounds: loop {
            for (rank, &index) in order.iter().enumerate() {
                let permutation = permutations[rank];
                let mut candidate = permutation.entry(next[rank]);
                while entries[candidate] != EMPTY {
                    next[rank] += 1;
                    candidate = permutation.entry(next[rank]);
                }
                entries[candidate] = u32::try_from(index).unwrap_or(EMPTY);
                next[rank] += 1;
                filled += 1;
                if filled == table_len {
                    break 'rounds;
                }
            }
        }
        Ok(Self { entries })
    }

    /// The entries, each an index into the keys the table was built from.
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// The number of entries: the table size, or zero without backends.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries (no backends).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index of the backend that owns `hash` (a hash of the flow), if there is any.
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        let len = u64::try_from(self.entries.len()).ok()?;
        if len == 0 {
            return None;
        }
        let position = usize::try_from(hash % len).ok()?;
        self.entries.get(position).copied()
    }
}

/// One backend's preference list over the table: `(offset + j * skip) mod M`.
#[derive(Debug, Clone, Copy)]
struct Permutation {
    offset: u64,
    skip: u64,
    size: u64,
}

impl Permutation {
    fn for_key(key: &str, size: u32) -> Self {
        let size = u64::from(size);
        Self {
            offset: stable_hash(key, OFFSET_SEED) % size,
            skip: stable_hash(key, SKIP_SEED) % (size - 1) + 1,
            size,
        }
    }

    fn entry(self, j: u64) -> usize {
        // `j < 2 * M` and `skip < M`, so the product stays far below `u64::MAX`; the result is
        // below `M`, which fits in `usize` on every supported target.
        ((self.offset + (j % self.size) * self.skip) % self.size) as usize
    }
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// A 64-bit hash that never changes between runs, builds or platforms: FNV-1a over the seed
/// and the key, then the splitmix64 finaliser so that nearby seeds give unrelated outputs.
fn stable_hash(key: &str, seed: u64) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in seed.to_le_bytes().iter().chain(key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut divisor = 3u64;
    while divisor * divisor <= n {
        if n % divisor == 0 {
            return false;
        }
        divisor += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("10.42.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn shares(table: &MaglevTable, backends: usize) -> Vec<usize> {
        let mut counts = vec![0usize; backends];
        for &entry in table.entries() {
            counts[entry as usize] += 1;
        }
        counts
    }

    /// Entries whose owner changed, not counting entries that the removed or added backend
    /// owned before or after.
    fn moved_between_survivors(
        before: &MaglevTable,
        before_keys: &[String],
        after: &MaglevTable,
        after_keys: &[String],
        changed_key: &str,
    ) -> usize {
        before
            .entries()
            .iter()
            .zip(after.entries())
            .filter(|(old, new)| {
                let old = before_keys[**old as usize].as_str();
                let new = after_keys[**new as usize].as_str();
                old != new && old != changed_key && new != changed_key
            })
            .count()
    }

    #[test]
    fn sizes_must_be_prime_and_in_range() {
        assert_eq!(TableSize::default().get(), 16_381);
        assert_eq!(TableSize::new(16_381).map(TableSize::get), Ok(16_381));
        assert_eq!(TableSize::new(251).map(TableSize::get), Ok(251));
        assert_eq!(
            TableSize::new(16_383),
            Err(MaglevError::NotPrime { size: 16_383 })
        );
        assert_eq!(
            TableSize::new(65_536),
            Err(MaglevError::NotPrime { size: 65_536 })
        );
        assert_eq!(TableSize::new(7), Err(MaglevError::OutOfRange { size: 7 }));
        assert_eq!(TableSize::new(0), Err(MaglevError::OutOfRange { size: 0 }));
        assert_eq!(
            TableSize::new(262_139),
            Err(MaglevError::OutOfRange { size: 262_139 })
        );
    }

    #[test]
    fn sizes_parse_from_flags_with_clear_errors() {
        assert_eq!("16381".parse::<TableSize>(), Ok(TableSize::default()));
        assert_eq!(" 1021 ".parse::<TableSize>().map(TableSize::get), Ok(1021));
        let error = |s: &str| match s.parse::<TableSize>() {
            Ok(size) => panic!("{s:?} parsed as {size}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            error("16383"),
            "Maglev table size 16383 is not a prime; choose a prime such as 16381"
        );
        assert_eq!(error("13"), "Maglev table size 13 is outside 251..=131071");
        assert_eq!(
            error("lots"),
            "Maglev table size \"lots\" is not a number; choose a prime such as 16381"
        );
        assert!(error("-7").contains("not a number"));
    }

    #[test]
    fn primality_check_agrees_with_known_values() {
        let primes = [2, 3, 5, 251, 509, 1021, 8191, 16_381, 65_521, 131_071];
        let composites = [0, 1, 4, 9, 255, 1023, 16_383, 65_535, 131_073];
        assert!(primes.iter().all(|&p| is_prime(p)));
        assert!(composites.iter().all(|&c| !is_prime(c)));
    }

    #[test]
    fn empty_backend_set_gives_empty_table() {
        let table = MaglevTable::build(TableSize::default(), &[] as &[String]);
        let table = table.unwrap_or_else(|e| panic!("{e}"));
        assert!(table.is_empty());
        assert_eq!(table.lookup(12345), None);
    }

    #[test]
    fn every_backend_gets_floor_or_ceil_of_its_share() {
        let size = TableSize::default();
        let m = size.get() as usize;
        for n in [1usize, 3, 10, 100, 1000] {
            let keys = keys(n);
            let table = MaglevTable::build(size, &keys).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(table.len(), m);
            let counts = shares(&table, n);
            let floor = m / n;
            let ceil = m.div_ceil(n);
            for (backend, count) in counts.iter().enumerate() {
                assert!(
                    (floor..=ceil).contains(count),
                    "n={n}: backend {backend} owns {count}, expected {floor}..={ceil}"
                );
            }
            // Within a few percent of M / N: the only deviation is rounding to whole entries,
            // which is 1 / 16.4 = 3.8 % at N = 1000 with the default size.
            let ideal = m as f64 / n as f64;
            let worst = counts
                .iter()
                .map(|&c| (c as f64 - ideal).abs() / ideal)
                .fold(0.0, f64::max);
            assert!(worst < 0.04, "n={n}: worst deviation {worst}");
        }
    }

    #[test]
    fn same_set_in_any_order_gives_the_same_owners() {
        let size = TableSize::default();
        let forward = keys(50);
        let mut reversed = forward.clone();
        reversed.reverse();
        let a = MaglevTable::build(size, &forward).unwrap_or_else(|e| panic!("{e}"));
        let b = MaglevTable::build(size, &reversed).unwrap_or_else(|e| panic!("{e}"));
        let again = MaglevTable::build(size, &forward).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, again);
        for (x, y) in a.entries().iter().zip(b.entries()) {
            assert_eq!(forward[*x as usize], reversed[*y as usize]);
        }
    }

    #[test]
    fn output_is_pinned_across_builds() {
        // Agents rebuild old tables to diff them against pinned maps written by an earlier
        // agent, so the hash and the population order must never change. These values were
        // recorded from this implementation; a change here is a datapath compatibility break.
        assert_eq!(
            stable_hash("10.42.0.1:8080", OFFSET_SEED),
            0x00cf_6457_f606_e8f1
        );
        assert_eq!(
            stable_hash("10.42.0.1:8080", SKIP_SEED),
            0xdb31_b6bc_9fbf_bd63
        );
        let size = TableSize::new(251).unwrap_or_else(|e| panic!("{e}"));
        let table = MaglevTable::build(size, &keys(3)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &table.entries()[..16],
            &[1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 2, 0, 1, 2, 0, 1]
        );
    }

    #[test]
    fn removing_one_of_100_backends_moves_few_other_entries() {
        let size = TableSize::default();
        let m = size.get() as usize;
        let before_keys = keys(100);
        let before = MaglevTable::build(size, &before_keys).unwrap_or_else(|e| panic!("{e}"));
        for removed in [0usize, 37, 99] {
            let mut after_keys = before_keys.clone();
            let removed_key = after_keys.remove(removed);
            let after = MaglevTable::build(size, &after_keys).unwrap_or_else(|e| panic!("{e}"));
            // Every entry of the removed backend must now belong to someone else.
            assert!(after
                .entries()
                .iter()
                .all(|&i| after_keys[i as usize] != removed_key));
            let moved =
                moved_between_survivors(&before, &before_keys, &after, &after_keys, &removed_key);
            assert!(
                moved * 100 <= m * 3,
                "removing {removed_key} moved {moved} of {m} entries between survivors"
            );
        }
    }

    #[test]
    fn adding_one_to_100_backends_moves_few_other_entries() {
        let size = TableSize::default();
        let m = size.get() as usize;
        let before_keys = keys(100);
        let before = MaglevTable::build(size, &before_keys).unwrap_or_else(|e| panic!("{e}"));
        let added_key = "10.42.9.9:8080".to_owned();
        let mut after_keys = before_keys.clone();
        after_keys.push(added_key.clone());
        let after = MaglevTable::build(size, &after_keys).unwrap_or_else(|e| panic!("{e}"));
        let moved = moved_between_survivors(&before, &before_keys, &after, &after_keys, &added_key);
        assert!(
            moved * 100 <= m * 3,
            "adding moved {moved} of {m} entries between existing backends"
        );
        let gained = after
            .entries()
            .iter()
            .filter(|&&i| after_keys[i as usize] == added_key)
            .count();
        assert!((m / 101..=m.div_ceil(101)).contains(&gained));
    }

    #[test]
    fn rejects_duplicates_and_overfull_tables() {
        let size = TableSize::new(251).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            MaglevTable::build(size, &["a:1", "b:1", "a:1"]),
            Err(MaglevError::DuplicateBackend { key: "a:1".into() })
        );
        assert_eq!(
            MaglevTable::build(size, &keys(252)),
            Err(MaglevError::TooManyBackends {
                backends: 252,
                size: 251
            })
        );
        // Exactly one entry per backend still works.
        let full = MaglevTable::build(size, &keys(251)).unwrap_or_else(|e| panic!("{e}"));
        assert!(shares(&full, 251).iter().all(|&c| c == 1));
    }

    #[test]
    fn lookup_maps_a_hash_to_its_entry() {
        let size = TableSize::new(251).unwrap_or_else(|e| panic!("{e}"));
        let table = MaglevTable::build(size, &keys(3)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.lookup(5), Some(table.entries()[5]));
        assert_eq!(table.lookup(251 + 5), Some(table.entries()[5]));
    }
}
