//! Receiver-index table: session index -> handshake or keypair.
//!
//! Every handshake and keypair gets a 32-bit index that the peer echoes in
//! each message it sends us (the "receiver index"). Indexes are random and
//! unique among the live ones. corewire's eBPF `SK_REUSEPORT` program routes
//! a datagram to the worker that owns the session by reading the low
//! `worker_bits` bits of that index, so [`IndexTable::allocate`] draws
//! indexes whose low bits equal the owning worker and the rest at random.
//!
//! Indexes are not secrets (they travel in clear), but they should not be
//! predictable, so an off-path attacker cannot guess which indexes are live
//! nor learn how many sessions exist. They come from ChaCha12 seeded once
//! from the OS: a CSPRNG that costs a few nanoseconds per draw and never
//! blocks or fails after construction. A different [`RngCore`] can be
//! injected with [`IndexTable::with_rng`] (deterministic tests, fuzzing).

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};

use foldhash::fast::RandomState as FoldState;

/// Largest supported `worker_bits`: 256 workers, leaving 24 random bits.
pub const MAX_WORKER_BITS: u8 = 8;

/// Random draws before [`IndexTable::try_allocate`] falls back to a scan.
///
/// With a fraction `f` of the worker's index space in use, all draws collide
/// with probability `f^32`: 2^-66 at a realistic f = 1/4 (the space has at
/// least 2^24 indexes), 3% at f = 0.9.
const RANDOM_ATTEMPTS: usize = 32;

/// The worker that owns `index` under `worker_bits` bits of steering
/// (values above [`MAX_WORKER_BITS`] are clamped).
#[inline]
pub fn worker_of(index: u32, worker_bits: u8) -> u32 {
    index & worker_mask(worker_bits)
}

/// Mask of the low `worker_bits` bits (clamped).
#[inline]
pub fn worker_mask(worker_bits: u8) -> u32 {
    (1u32 << worker_bits.min(MAX_WORKER_BITS)) - 1
}

/// An index that became live or was freed, for a mirror of the table
/// outside it (the XDP guard's map of live indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexChange {
    /// Allocated.
    Added(u32),
    /// Freed.
    Removed(u32),
}

/// Table of live receiver indexes, each naming a `T` (a session or handshake).
pub struct IndexTable<T, R = ChaCha12Rng> {
    /// Live indexes; random keys, so a fast non-DoS-resistant hash is fine.
    map: HashMap<u32, T, FoldState>,
    /// Changes since the owner last took them, when it asked for them
    /// ([`record_changes`](Self::record_changes)). Bounded by what happens
    /// between two takes: allocations come from handshakes, which a worker
    /// takes in with a budget per turn, and frees from those and from
    /// configuration changes, applied a chunk per turn.
    changes: Option<Vec<IndexChange>>,
    /// Number of low index bits that name the owning worker.
    worker_bits: u8,
    /// Source of the random index bits.
    rng: R,
}

impl<T> IndexTable<T> {
    /// An empty table with `worker_bits` (0..=8) steering bits and a ChaCha12
    /// generator seeded from the OS.
    ///
    /// # Panics
    ///
    /// If the OS random source fails (`getrandom(2)` on Linux does not once
    /// the system booted), as `rand_core::OsRng` does.
    pub fn new(worker_bits: u8) -> Self {
        Self::with_rng(worker_bits, ChaCha12Rng::from_entropy())
    }
}

impl<T, R: RngCore> IndexTable<T, R> {
    /// An empty table drawing from `rng`; `worker_bits` above
    /// [`MAX_WORKER_BITS`] are clamped (debug builds assert).
    pub fn with_rng(worker_bits: u8, rng: R) -> Self {
        debug_assert!(worker_bits <= MAX_WORKER_BITS, "worker_bits {worker_bits}");
        Self {
            map: HashMap::with_hasher(FoldState::default()),
            changes: None,
            worker_bits: worker_bits.min(MAX_WORKER_BITS),
            rng,
        }
    }

    /// Number of low index bits naming the worker.
    pub fn worker_bits(&self) -> u8 {
        self.worker_bits
    }

    /// Stores `value` under a fresh random index whose low bits are `worker`
    /// (masked to `worker_bits`; debug builds assert it fits) and returns it.
    ///
    /// Never returns an index that is live in the table.
    ///
    /// # Panics
    ///
    /// If every one of the worker's indexes is live (tests only: the
    /// packet path uses [`try_allocate`](Self::try_allocate)).
    #[cfg(test)]
    pub fn allocate(&mut self, worker: u32, value: T) -> u32 {
        match self.try_allocate(worker, value) {
            Ok(index) => index,
            Err(_) => panic!("receiver index space of worker {worker} exhausted"),
        }
    }

    /// Like [`allocate`](Self::allocate), but hands `value` back if the
    /// worker's index space is full.
    ///
    /// Tries 32 random indexes, then walks the worker's
    /// index space from the last random one: O(1) expected while the space
    /// is not nearly full, and it terminates even when it is.
    pub fn try_allocate(&mut self, worker: u32, value: T) -> Result<u32, T> {
        let mask = worker_mask(self.worker_bits);
        debug_assert!(
            worker <= mask,
            "worker {worker} needs more than {} bits",
            self.worker_bits
        );
        let low = worker & mask;
        let mut candidate = 0;
        for _ in 0..RANDOM_ATTEMPTS {
            candidate = (self.rng.next_u32() & !mask) | low;
            if let Entry::Vacant(e) = self.map.entry(candidate) {
                e.insert(value);
                self.record(IndexChange::Added(candidate));
                return Ok(candidate);
            }
        }
        // Nearly full: step through the worker's indexes (stride 2^bits),
        // wrapping around, until a free one appears.
        let stride = mask + 1;
        let slots = 1u64 << (32 - self.worker_bits);
        for _ in 1..slots {
            candidate = candidate.wrapping_add(stride);
            if let Entry::Vacant(e) = self.map.entry(candidate) {
                e.insert(value);
                self.record(IndexChange::Added(candidate));
                return Ok(candidate);
            }
        }
        Err(value)
    }

    /// The value stored under `index`.
    #[inline]
    pub fn get(&self, index: u32) -> Option<&T> {
        self.map.get(&index)
    }

    /// The value stored under `index`, mutably.
    #[inline]
    pub fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.map.get_mut(&index)
    }

    /// Frees `index`, returning its value; the index may be drawn again later.
    pub fn remove(&mut self, index: u32) -> Option<T> {
        let value = self.map.remove(&index)?;
        self.record(IndexChange::Removed(index));
        Some(value)
    }

    /// Starts (or stops) recording allocations and frees for
    /// [`take_changes`](Self::take_changes). Starting records every index
    /// already live as added, so a mirror starts complete.
    pub fn record_changes(&mut self, on: bool) {
        self.changes = on.then(|| self.map.keys().map(|&i| IndexChange::Added(i)).collect());
    }

    /// The changes recorded since the last call, oldest first.
    pub fn take_changes(&mut self) -> impl Iterator<Item = IndexChange> + '_ {
        self.changes.iter_mut().flat_map(|c| c.drain(..))
    }

    fn record(&mut self, change: IndexChange) {
        if let Some(c) = &mut self.changes {
            c.push(change);
        }
    }

    /// Number of live indexes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no index is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<T, R> fmt::Debug for IndexTable<T, R> {
    // No RNG state (it predicts future indexes) and no values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexTable")
            .field("worker_bits", &self.worker_bits)
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    // Explicit, because proptest's prelude exports a newer `RngCore` too.
    use rand_core::RngCore;
    use std::collections::{HashMap as StdMap, HashSet};

    #[test]
    fn recorded_changes_mirror_the_table() {
        let mut t: IndexTable<u8> = IndexTable::new(2);
        let before = t.allocate(1, 0);
        assert_eq!(t.take_changes().count(), 0, "not recording yet");
        t.record_changes(true);
        let a = t.allocate(1, 1);
        t.remove(before);
        t.remove(12345 << 2 | 3); // not live: no change
        let got: Vec<_> = t.take_changes().collect();
        assert_eq!(
            got,
            vec![
                IndexChange::Added(before),
                IndexChange::Added(a),
                IndexChange::Removed(before)
            ]
        );
        assert_eq!(t.take_changes().count(), 0);
        t.record_changes(false);
        t.remove(a);
        assert_eq!(t.take_changes().count(), 0);
    }

    /// A deliberately bad generator: cycles through a handful of values, so
    /// collisions and the fallback scan are exercised.
    #[derive(Debug)]
    struct Cycle {
        values: Vec<u32>,
        pos: usize,
    }

    impl RngCore for Cycle {
        fn next_u32(&mut self) -> u32 {
            let v = self.values[self.pos % self.values.len()];
            self.pos += 1;
            v
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u32() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[test]
    fn unique_and_steerable() {
        let mut t = IndexTable::new(3);
        let mut seen = HashSet::new();
        for i in 0..200_000u32 {
            let worker = i % 8;
            let idx = t.allocate(worker, i);
            assert_eq!(worker_of(idx, 3), worker);
            assert!(seen.insert(idx), "duplicate {idx:#x}");
            assert_eq!(t.get(idx), Some(&i));
        }
        assert_eq!(t.len(), 200_000);
        // The random part is spread over the high bits.
        let high: HashSet<u32> = seen.iter().map(|i| i >> 24).collect();
        assert_eq!(high.len(), 256);
    }

    #[test]
    fn zero_and_max_worker_bits() {
        let mut t = IndexTable::new(0);
        let a = t.allocate(0, ());
        let b = t.allocate(0, ());
        assert_ne!(a, b);
        assert_eq!(worker_of(a, 0), 0);

        let mut t = IndexTable::new(MAX_WORKER_BITS);
        for w in 0..256 {
            let idx = t.allocate(w, w);
            assert_eq!(worker_of(idx, 8), w);
            assert_eq!(idx & 0xff, w);
        }
    }

    #[test]
    fn worker_of_masks() {
        assert_eq!(worker_of(0xdead_beef, 0), 0);
        assert_eq!(worker_of(0xdead_beef, 1), 1);
        assert_eq!(worker_of(0xdead_beef, 4), 0xf);
        assert_eq!(worker_of(0xdead_beef, 8), 0xef);
        // Clamped, not a shift overflow.
        assert_eq!(worker_of(0xdead_beef, 40), 0xef);
    }

    #[test]
    fn remove_frees_and_get_mut() {
        let mut t = IndexTable::new(2);
        let idx = t.allocate(1, String::from("a"));
        t.get_mut(idx).unwrap().push('b');
        assert_eq!(t.get(idx).map(String::as_str), Some("ab"));
        assert_eq!(t.remove(idx).as_deref(), Some("ab"));
        assert_eq!(t.remove(idx), None);
        assert_eq!(t.get(idx), None);
        assert!(t.is_empty());
    }

    #[test]
    fn collisions_retry_then_scan() {
        // The generator returns the same value forever: the first allocation
        // takes it, later ones must scan and still be unique and steerable.
        let rng = Cycle {
            values: vec![0x1234_5678],
            pos: 0,
        };
        let mut t = IndexTable::with_rng(4, rng);
        let first = t.allocate(3, 0);
        assert_eq!(first, 0x1234_5673);
        let mut seen = HashSet::from([first]);
        for i in 1..100 {
            let idx = t.allocate(3, i);
            assert_eq!(worker_of(idx, 4), 3);
            assert!(seen.insert(idx));
        }
        // After a removal the freed index is found again.
        t.remove(first);
        assert_eq!(t.allocate(3, 999), first);
    }

    /// Fills one worker's whole space (2^24 entries, ~200 MB):
    /// `cargo test --release -- --ignored full_space`.
    #[test]
    #[ignore = "allocates ~200 MB"]
    fn try_allocate_reports_full_space() {
        // Filled through `map` directly: 2^24 random draws would be slower.
        let rng = Cycle {
            values: vec![0],
            pos: 0,
        };
        let mut t = IndexTable::with_rng(8, rng);
        t.map.reserve(1 << 24);
        for hi in 0..(1u32 << 24) {
            t.map.insert(hi << 8 | 5, ());
        }
        assert_eq!(t.try_allocate(5, ()), Err(()));
        // Another worker still has room.
        assert_eq!(worker_of(t.try_allocate(6, ()).unwrap(), 8), 6);
        t.remove(0x00ab_cd05);
        assert_eq!(t.try_allocate(5, ()), Ok(0x00ab_cd05));
    }

    #[test]
    fn debug_hides_rng() {
        let t = IndexTable::<u8>::new(2);
        assert_eq!(
            format!("{t:?}"),
            "IndexTable { worker_bits: 2, len: 0, .. }"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(u32),
        RemoveLive(usize),
        RemoveAny(u32),
        Get(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..16).prop_map(Op::Allocate),
            2 => any::<usize>().prop_map(Op::RemoveLive),
            1 => any::<u32>().prop_map(Op::RemoveAny),
            1 => any::<u32>().prop_map(Op::Get),
        ]
    }

    proptest! {
        #[test]
        fn matches_model(
            bits in 0u8..=8,
            pool in prop::collection::vec(any::<u32>(), 1..6),
            ops in prop::collection::vec(op(), 1..300),
        ) {
            // A tiny value pool makes the generator collide constantly.
            let mut t = IndexTable::with_rng(bits, Cycle { values: pool, pos: 0 });
            let mut model: StdMap<u32, usize> = StdMap::new();
            let mut live: Vec<u32> = Vec::new();
            for (n, op) in ops.iter().enumerate() {
                match *op {
                    Op::Allocate(w) => {
                        let w = w & worker_mask(bits);
                        let idx = t.allocate(w, n);
                        prop_assert_eq!(worker_of(idx, bits), w);
                        prop_assert!(model.insert(idx, n).is_none(), "reused live {:#x}", idx);
                        live.push(idx);
                    }
                    Op::RemoveLive(i) if !live.is_empty() => {
                        let idx = live.swap_remove(i % live.len());
                        prop_assert_eq!(t.remove(idx), model.remove(&idx));
                    }
                    Op::RemoveLive(_) => {}
                    Op::RemoveAny(idx) => {
                        prop_assert_eq!(t.remove(idx), model.remove(&idx));
                        live.retain(|&l| l != idx);
                    }
                    Op::Get(idx) => prop_assert_eq!(t.get(idx), model.get(&idx)),
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for (idx, v) in &model {
                prop_assert_eq!(t.get(*idx), Some(v));
            }
        }
    }
}
