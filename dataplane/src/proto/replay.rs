//! Anti-replay window for transport counters (RFC 6479 style).
//!
//! The window is a ring of 128 blocks of 64 bits (8192 bits, 1 KiB, inline so
//! a peer's session needs no extra allocation). One block is always "in
//! flight" as the newest, partly filled block, so the usable window is
//! `8192 - 64 = 8128` counters behind the highest one accepted, the same as
//! the Linux driver and wireguard-go. A smaller window (boringtun uses 1024)
//! drops legitimate packets once receive is spread over several queues.
//!
//! # Accepted range
//!
//! Let `max` be the highest counter accepted so far (none initially). A
//! counter `c` is accepted exactly when all of these hold:
//!
//! * `c < REJECT_AFTER_MESSAGES` (`2^64 - 2^13 - 1`), and
//! * nothing has been accepted yet, or `c > max`, or
//!   `max - c <= WINDOW_SIZE` (so `max - 8128 ..= max`), and
//! * `c` has not been accepted before.
//!
//! The first counter may be anything below the limit, including 0, and
//! counters below it (within the window) are still accepted afterwards.
//!
//! # Usage
//!
//! [`ReplayWindow::check`] before decrypting (it does not modify the window,
//! so an unauthenticated packet can never move it), then
//! [`ReplayWindow::update`] after the tag verified, which re-checks because a
//! batch may hold the same counter twice.

use std::fmt;

/// Counters at or above this are never accepted (`2^64 - 2^13 - 1`): the
/// session must be replaced long before its nonce space runs out.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Bits per ring block.
const BLOCK_BITS: u64 = u64::BITS as u64;
/// Number of blocks in the ring; a power of two so the ring index is a mask.
const BLOCKS: usize = 128;
/// Total bits in the ring.
const RING_BITS: u64 = BLOCK_BITS * BLOCKS as u64;

/// How far behind the highest accepted counter a counter may be and still be
/// accepted: 8128 (ring size minus one block).
pub const WINDOW_SIZE: u64 = RING_BITS - BLOCK_BITS;

/// Sliding bitmap of recently accepted transport counters of one session.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted counter + 1, or 0 when nothing was accepted yet; the
    /// "+ 1" lets 0 mean "empty" without an extra flag.
    next: u64,
    /// Block `b` of the counter space lives at `ring[b % BLOCKS]`.
    ring: [u64; BLOCKS],
}

impl ReplayWindow {
    /// An empty window: any counter below [`REJECT_AFTER_MESSAGES`] is acceptable.
    pub const fn new() -> Self {
        Self {
            next: 0,
            ring: [0; BLOCKS],
        }
    }

    /// The highest counter accepted so far, if any.
    pub const fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Whether `counter` would be accepted now; does not modify the window.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter >= self.next {
            // Newer than everything seen (this also covers the empty window).
            return true;
        }
        if self.next - 1 - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] & bit == 0
    }

    /// Marks `counter` as received after its packet authenticated; returns
    /// false (and changes nothing) if it is a replay, too old or too large.
    pub fn update(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter >= self.next {
            self.advance(counter);
        } else if self.next - 1 - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        let slot = &mut self.ring[block];
        if *slot & bit != 0 {
            return false;
        }
        *slot |= bit;
        true
    }

    /// Moves the top of the window to `counter` (> current max), zeroing the
    /// blocks that are entered for the first time. At most the whole ring is
    /// cleared, so a jump of any size costs O(1).
    fn advance(&mut self, counter: u64) {
        if let Some(max) = self.highest() {
            let old_block = max / BLOCK_BITS;
            let new_block = counter / BLOCK_BITS;
            let fresh = (new_block - old_block).min(BLOCKS as u64);
            for i in 1..=fresh {
                self.ring[Self::ring_index(old_block + i)] = 0;
            }
        }
        // An empty window has an all-zero ring already (see `new`).
        self.next = counter + 1;
    }

    /// Ring slot and bit mask of `counter`.
    fn position(counter: u64) -> (usize, u64) {
        (
            Self::ring_index(counter / BLOCK_BITS),
            1u64 << (counter % BLOCK_BITS),
        )
    }

    /// Ring slot of counter block `block`.
    fn ring_index(block: u64) -> usize {
        // The mask keeps the value below BLOCKS, so the cast never truncates.
        (block & (BLOCKS as u64 - 1)) as usize
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    // The 1 KiB bitmap is noise in logs; the top of the window is what matters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn constants() {
        assert_eq!(WINDOW_SIZE, 8128);
        assert_eq!(
            u128::from(REJECT_AFTER_MESSAGES),
            (1u128 << 64) - (1u128 << 13) - 1
        );
        // Heap-free and small enough to embed in every session.
        assert_eq!(std::mem::size_of::<ReplayWindow>(), 8 + 1024);
    }

    #[test]
    fn first_counter_zero_then_in_order() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        for c in 0..20_000 {
            assert!(w.check(c), "{c}");
            assert!(w.update(c), "{c}");
            assert!(!w.check(c), "{c}");
            assert!(!w.update(c), "{c}");
        }
        assert_eq!(w.highest(), Some(19_999));
    }

    #[test]
    fn first_counter_may_be_large_and_earlier_ones_follow() {
        let mut w = ReplayWindow::new();
        assert!(w.update(100_000));
        assert!(w.update(100_000 - WINDOW_SIZE));
        assert!(!w.check(100_000 - WINDOW_SIZE - 1));
        assert!(!w.update(100_000 - WINDOW_SIZE - 1));
        assert!(w.update(99_999));
        assert!(!w.update(99_999));
    }

    #[test]
    fn window_edge_exact() {
        let mut w = ReplayWindow::new();
        let max = 50_000;
        assert!(w.update(max));
        assert!(w.check(max - WINDOW_SIZE));
        assert!(!w.check(max - WINDOW_SIZE - 1));
        // Every counter in the window is acceptable exactly once.
        for c in (max - WINDOW_SIZE)..max {
            assert!(w.update(c), "{c}");
        }
        for c in (max - WINDOW_SIZE)..=max {
            assert!(!w.check(c), "{c}");
        }
    }

    #[test]
    fn check_does_not_modify() {
        let mut w = ReplayWindow::new();
        assert!(w.update(10));
        assert!(w.check(1_000_000));
        // The window did not move: 10 is still known and 5 still acceptable.
        assert!(!w.check(10));
        assert!(w.check(5));
        assert_eq!(w.highest(), Some(10));
    }

    #[test]
    fn rejects_at_limit() {
        let mut w = ReplayWindow::new();
        assert!(!w.check(REJECT_AFTER_MESSAGES));
        assert!(!w.update(REJECT_AFTER_MESSAGES));
        assert!(!w.update(u64::MAX));
        assert_eq!(w.highest(), None);
        assert!(w.update(REJECT_AFTER_MESSAGES - 1));
        assert!(!w.update(REJECT_AFTER_MESSAGES - 1));
        assert!(!w.update(REJECT_AFTER_MESSAGES));
        assert!(w.update(REJECT_AFTER_MESSAGES - 1 - WINDOW_SIZE));
        assert!(!w.update(REJECT_AFTER_MESSAGES - 2 - WINDOW_SIZE));
    }

    #[test]
    fn far_jump_clears_old_bits() {
        let mut w = ReplayWindow::new();
        for c in 0..200 {
            assert!(w.update(c));
        }
        // Jump exactly one ring ahead: the same ring slots are reused and
        // must read as empty for the new blocks.
        let top = RING_BITS + 199;
        assert!(w.update(top));
        for c in (top - WINDOW_SIZE)..top {
            assert!(w.check(c), "{c}");
        }
        // A jump of almost the whole counter space is O(1) and still correct.
        assert!(w.update(REJECT_AFTER_MESSAGES - 1));
        assert!(w.check(REJECT_AFTER_MESSAGES - 2));
        assert!(!w.check(top));
    }

    #[test]
    fn jumps_of_every_block_distance() {
        for blocks in 0..=130u64 {
            let mut w = ReplayWindow::new();
            for c in 0..64 * 130 {
                w.update(c);
            }
            let old_max = 64 * 130 - 1;
            let new_max = old_max + blocks * 64 + 7;
            assert!(w.update(new_max));
            for c in new_max.saturating_sub(WINDOW_SIZE + 3)..new_max {
                let in_window = new_max - c <= WINDOW_SIZE;
                let expect = in_window && c > old_max;
                assert_eq!(w.check(c), expect, "blocks {blocks} c {c}");
            }
        }
    }

    /// Reference model: the set of accepted counters and their maximum.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
    }

    impl Model {
        fn accepts(&self, c: u64) -> bool {
            if c >= REJECT_AFTER_MESSAGES || self.seen.contains(&c) {
                return false;
            }
            match self.seen.last() {
                None => true,
                Some(&max) => c > max || max - c <= WINDOW_SIZE,
            }
        }
    }

    /// How the next counter is derived from the current highest one.
    #[derive(Clone, Debug)]
    enum Step {
        Forward(u64),
        Jump(u64),
        Back(u64),
        Repeat(usize),
        Absolute(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u64..70).prop_map(Step::Forward),
            1 => (0u64..40_000).prop_map(Step::Jump),
            1 => any::<u64>().prop_map(Step::Jump),
            4 => (0u64..8300).prop_map(Step::Back),
            2 => any::<usize>().prop_map(Step::Repeat),
            1 => (0u64..20_000).prop_map(|d| Step::Absolute(REJECT_AFTER_MESSAGES + 2 - d)),
            1 => any::<u64>().prop_map(Step::Absolute),
        ]
    }

    fn run(start: u64, steps: &[Step]) -> Result<(), TestCaseError> {
        let mut w = ReplayWindow::new();
        let mut model = Model::default();
        let mut history: Vec<u64> = Vec::new();
        let mut cursor = start;
        for s in steps {
            let top = model.seen.last().copied().unwrap_or(cursor);
            let c = match *s {
                Step::Forward(d) => top.saturating_add(d),
                Step::Jump(d) => top.saturating_add(d),
                Step::Back(d) => top.saturating_sub(d),
                Step::Repeat(i) if !history.is_empty() => history[i % history.len()],
                Step::Repeat(_) => cursor,
                Step::Absolute(c) => c,
            };
            cursor = c;
            history.push(c);
            let expect = model.accepts(c);
            prop_assert_eq!(w.check(c), expect, "check {}", c);
            prop_assert_eq!(w.update(c), expect, "update {}", c);
            if expect {
                model.seen.insert(c);
            }
            prop_assert_eq!(w.highest(), model.seen.last().copied());
        }
        // Sweep the whole window plus its edges against the model.
        if let Some(&max) = model.seen.last() {
            for c in max.saturating_sub(WINDOW_SIZE + 70)..=max.saturating_add(70) {
                prop_assert_eq!(w.check(c), model.accepts(c), "sweep {}", c);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_model_from_zero(steps in prop::collection::vec(step(), 1..400)) {
            run(0, &steps)?;
        }

        #[test]
        fn matches_model_anywhere(start in any::<u64>(), steps in prop::collection::vec(step(), 1..400)) {
            run(start, &steps)?;
        }
    }
}
