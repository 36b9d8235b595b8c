//! The internet checksum (RFC 1071): the ones' complement of the ones'
//! complement sum of the data as big-endian 16-bit words.
//!
//! Speed matters: segmentation checksums every byte the TUN hands over and
//! coalescing verifies every byte it merges. The sum is taken 8 bytes at a
//! time in native byte order, which RFC 1071 shows is equivalent up to one
//! byte swap at the end; each 64-bit word is added as two 32-bit halves into
//! two 64-bit accumulators, so there is no carry to propagate inside the
//! loop (2^32 additions of 32-bit values cannot overflow 64 bits) and the
//! two chains run in parallel. Folding mod 2^16 - 1 is exact because
//! 2^16 = 1 mod (2^16 - 1).

/// A running ones' complement sum in big-endian 16-bit word terms, not yet
/// folded. Adding byte slices assumes each starts at an even offset from
/// the start of the checksummed region (true for every header and payload
/// boundary here: IP and TCP header lengths are multiples of 4, UDP's is 8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Csum(u64);

impl Csum {
    /// Adds the bytes of `data`; an odd last byte is padded with zero.
    #[inline]
    pub(super) fn add_bytes(self, data: &[u8]) -> Self {
        Self(self.0 + u64::from(sum_be(data)))
    }

    /// Adds one 16-bit word.
    #[inline]
    pub(super) fn add_u16(self, v: u16) -> Self {
        Self(self.0 + u64::from(v))
    }

    /// Adds a 32-bit value as its two 16-bit words.
    #[inline]
    pub(super) fn add_u32(self, v: u32) -> Self {
        Self(self.0 + u64::from(v >> 16) + u64::from(v & 0xffff))
    }

    /// The sum folded to 16 bits, not complemented: what a partial
    /// (`NEEDS_CSUM`) checksum field holds for the pseudo-header.
    #[inline]
    pub(super) fn fold(self) -> u16 {
        fold64(self.0)
    }

    /// The checksum to store: the complement of the folded sum.
    #[inline]
    pub(super) fn finish(self) -> u16 {
        !self.fold()
    }
}

/// The internet checksum of `data`, ready to store in a header field
/// (e.g. the IPv4 header checksum over a header whose field is zero). Data
/// that already contains a correct checksum yields 0.
pub fn checksum(data: &[u8]) -> u16 {
    Csum::default().add_bytes(data).finish()
}

/// Folds a 64-bit sum of 16-bit words to 16 bits with end-around carry.
#[inline]
fn fold64(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The folded sum of `data` as big-endian words.
#[inline]
fn sum_be(data: &[u8]) -> u16 {
    let (words, tail) = data.as_chunks::<8>();
    let (mut a, mut b) = (0u64, 0u64);
    for w in words {
        let v = u64::from_ne_bytes(*w);
        a += v & 0xffff_ffff;
        b += v >> 32;
    }
    // The tail (0..=7 bytes) zero-padded on the right is exactly the RFC's
    // "pad an odd byte with zero".
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    let v = u64::from_ne_bytes(last);
    a += v & 0xffff_ffff;
    b += v >> 32;
    // The native-order sum is the big-endian sum with its bytes swapped on
    // a little-endian host (and identical on a big-endian one).
    let ne = fold64(a + b);
    u16::from_be_bytes(ne.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::offload::testutil::naive_sum;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Csum::default().add_bytes(&d).fold(), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_known_value() {
        // A textbook IPv4 header with checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn odd_lengths_and_all_ones() {
        assert_eq!(Csum::default().add_bytes(&[]).fold(), 0);
        assert_eq!(Csum::default().add_bytes(&[0xab]).fold(), 0xab00);
        assert_eq!(Csum::default().add_bytes(&[0xff; 64]).fold(), 0xffff);
        // 64 KiB of 0xff: the accumulators must not overflow. The odd
        // last byte counts as 0xff00.
        assert_eq!(Csum::default().add_bytes(&vec![0xff; 65534]).fold(), 0xffff);
        assert_eq!(Csum::default().add_bytes(&vec![0xff; 65535]).fold(), 0xff00);
    }

    #[test]
    fn split_sums_combine() {
        let d: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = Csum::default().add_bytes(&d).fold();
        let parts = Csum::default()
            .add_bytes(&d[..40])
            .add_bytes(&d[40..])
            .fold();
        assert_eq!(whole, parts);
        assert_eq!(Csum::default().add_u32(0x1234_5678).fold(), 0x68ac);
        assert_eq!(Csum::default().add_u16(0xffff).add_u16(1).fold(), 1);
    }

    proptest! {
        #[test]
        fn matches_naive_sum(d in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let ours = Csum::default().add_bytes(&d).fold();
            let naive = naive_sum(&d);
            // Both represent zero the same way except for all-zero data,
            // where neither wraps.
            prop_assert_eq!(ours, naive);
        }
    }
}
