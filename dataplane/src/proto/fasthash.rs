//! A fast keyed hash for tables whose keys the network does not choose:
//! configured prefixes (AllowedIPs) and our own random session indexes.
//! One 64x64->128-bit multiply per word, folded; the key is random per table
//! so layouts differ between runs. Tables keyed by attacker-chosen data
//! (source addresses in the rate limiter) use std's SipHash instead.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Builds [`FoldHasher`]s with a per-table random key.
///
/// A fast hash for keys that an attacker does not choose (configured prefixes,
/// random session indexes): one 64x64->128-bit multiply per word, folded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoldState {
    /// Initial accumulator, secret.
    seed: u64,
    /// Odd multiplier, secret.
    mul: u64,
}

impl FoldState {
    /// A new random key, taken from std's per-thread SipHash keys (no syscall
    /// after the first use on a thread, and no failure path).
    pub(crate) fn new() -> Self {
        let keys = RandomState::new();
        Self {
            seed: keys.hash_one(0x5eed_u64),
            mul: keys.hash_one(0x0dd_u64) | 1,
        }
    }
}

impl Default for FoldState {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildHasher for FoldState {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher {
            acc: self.seed,
            mul: self.mul,
        }
    }
}

/// Hasher state of [`FoldState`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoldHasher {
    /// Running hash.
    acc: u64,
    /// Multiplier from the builder.
    mul: u64,
}

/// Full 128-bit product with its halves XORed: every input bit reaches both
/// the low bits (bucket index) and the high bits (hashbrown's control tag),
/// which matters because masked prefixes have many trailing zeros.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.acc
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.acc = fold_mul(self.acc ^ i, self.mul);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn hasher_spreads_masked_keys() {
        // /24 keys have 8 trailing zero bits; buckets must still spread.
        let s = FoldState::new();
        let buckets: HashSet<u64> = (0..4096u32).map(|i| s.hash_one(i << 8) & 4095).collect();
        assert!(buckets.len() > 2000, "{}", buckets.len());
        let tags: HashSet<u64> = (0..4096u32).map(|i| s.hash_one(i << 8) >> 57).collect();
        assert_eq!(tags.len(), 128);
        let mut h = s.build_hasher();
        h.write(b"0123456789");
        let mut h2 = s.build_hasher();
        h2.write(b"0123456788");
        assert_ne!(h.finish(), h2.finish());
    }
}
