//! The internet checksum (RFC 1071): the ones' complement of the ones'
//! complement sum of the data as big-endian 16-bit words.
//!
//! Speed matters: segmentation checksums every byte the TUN hands over and
//! coalescing verifies every byte it merges. The sum is taken 8 bytes at a
//! time in native byte order, which RFC 1071 shows is equivalent up to one
//! byte swap at the end. Each 64-bit word is summed as two 32-bit halves in
//! 64-bit accumulators, so no carry propagates inside the loop (2^32
//! additions of 32-bit values cannot overflow 64 bits): one accumulator
//! takes the words themselves modulo 2^64, the other their high halves,
//! and the low halves' sum follows from the two (see `halves`). Folding mod
//! 2^16 - 1 is exact because 2^16 = 1 mod (2^16 - 1).
//!
//! [`Csum::add_copy`] sums while it copies, so segmentation reads each
//! payload byte once. On x86-64 hosts with AVX2 (chosen at run time; the
//! baseline target has only SSE2) both loops run on 256-bit vectors. The 0
//! to 7 bytes after the last whole word are read as a 4-, a 2- and a 1-byte
//! value, not copied into a zeroed word first: a narrow store reloaded at
//! once as a wider word stalls store forwarding.

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

    /// Copies `src` into `dst` and adds the bytes, in one pass; the same
    /// sum as [`Csum::add_bytes`] on `src`. Panics if the lengths differ.
    #[inline]
    pub(super) fn add_copy(self, dst: &mut [u8], src: &[u8]) -> Self {
        Self(self.0 + u64::from(swap_ne(fold64(copy_sum_ne(dst, src)))))
    }

    /// Adds another running sum (of a region that starts at an even offset).
    #[inline]
    pub(super) fn add_sum(self, other: Csum) -> Self {
        Self(self.0 + u64::from(other.fold()))
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
    swap_ne(fold64(sum_ne(data)))
}

/// The native-order sum of a folded native-order sum turned into the
/// big-endian one: its bytes swapped on a little-endian host (and
/// identical on a big-endian one).
#[inline]
fn swap_ne(ne: u16) -> u16 {
    u16::from_be_bytes(ne.to_ne_bytes())
}

/// Shortest input worth the AVX2 loop (headers are summed inline).
#[cfg(target_arch = "x86_64")]
const AVX2_MIN: usize = 128;

/// The sum of `data` as native-order words, not folded.
#[inline]
fn sum_ne(data: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= AVX2_MIN && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::sum_ne(data) };
    }
    sum_ne_words(data)
}

/// [`sum_ne`] of `src` while copying it into `dst`.
#[inline]
fn copy_sum_ne(dst: &mut [u8], src: &[u8]) -> u64 {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy between slices of unequal length"
    );
    #[cfg(target_arch = "x86_64")]
    if src.len() >= AVX2_MIN && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::copy_sum_ne(dst, src) };
    }
    copy_sum_ne_words(dst, src)
}

/// The loop of [`sum_ne`], compiled for the baseline target and, inlined
/// into [`avx2`], with 256-bit vectors.
#[inline(always)]
fn sum_ne_words(data: &[u8]) -> u64 {
    let (words, tail) = data.as_chunks::<8>();
    let (mut all, mut high) = (0u64, 0u64);
    for w in words {
        let v = u64::from_ne_bytes(*w);
        all = all.wrapping_add(v);
        high += v >> 32;
    }
    halves(all, high) + tail_ne(tail)
}

/// The loop of [`copy_sum_ne`] (lengths already checked equal).
///
/// Each word is stored XORed with a zero the optimiser cannot see through:
/// a loop that plainly stores what it loads is turned into a `memcpy` call
/// followed by a separate summing pass, which reads the data twice.
#[inline(always)]
fn copy_sum_ne_words(dst: &mut [u8], src: &[u8]) -> u64 {
    let (dst_words, dst_tail) = dst.as_chunks_mut::<8>();
    let (words, tail) = src.as_chunks::<8>();
    let (mut all, mut high) = (0u64, 0u64);
    let zero = std::hint::black_box(0u64);
    for (d, w) in dst_words.iter_mut().zip(words) {
        let v = u64::from_ne_bytes(*w);
        *d = (v ^ zero).to_ne_bytes();
        all = all.wrapping_add(v);
        high += v >> 32;
    }
    dst_tail.copy_from_slice(tail);
    halves(all, high) + tail_ne(tail)
}

/// The sum of the 32-bit halves of `n` words, from the words' sum modulo
/// 2^64 (`all`) and the exact sum of their high halves (`high`): `all` is
/// low + 2^32 * high modulo 2^64, and the sum of the low halves is below
/// 2^64 for fewer than 2^32 words, so it is `all - 2^32 * high` modulo
/// 2^64. One add per word instead of a mask and an add. Both sums stay
/// far below 2^63 for any slice shorter than 2^31 bytes.
#[inline(always)]
fn halves(all: u64, high: u64) -> u64 {
    all.wrapping_sub(high << 32) + high
}

/// The same loops compiled for AVX2, which most x86-64 hosts have but the
/// baseline target does not assume: 256-bit vectors instead of SSE2's
/// 128. Chosen at run time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2")]
    pub(super) fn sum_ne(data: &[u8]) -> u64 {
        super::sum_ne_words(data)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn copy_sum_ne(dst: &mut [u8], src: &[u8]) -> u64 {
        super::copy_sum_ne_words(dst, src)
    }
}

/// The native-order sum of the 0 to 7 bytes after the last whole word,
/// zero-padded on the right (exactly the RFC's "pad an odd byte with
/// zero"). They start at a multiple of 8 from the start, so a 4-byte and
/// a 2-byte value read from them are whole native-order words.
#[inline]
fn tail_ne(tail: &[u8]) -> u64 {
    let mut sum = 0;
    let mut rest = tail;
    if let Some((w, r)) = rest.split_first_chunk::<4>() {
        sum += u64::from(u32::from_ne_bytes(*w));
        rest = r;
    }
    if let Some((w, r)) = rest.split_first_chunk::<2>() {
        sum += u64::from(u16::from_ne_bytes(*w));
        rest = r;
    }
    if let [last] = rest {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    sum
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
        let head = Csum::default().add_bytes(&d[..40]);
        let tail = Csum::default().add_bytes(&d[40..]);
        assert_eq!(head.add_sum(tail).fold(), whole);
    }

    proptest! {
        #[test]
        fn copy_sums_what_it_copies(
            d in proptest::collection::vec(any::<u8>(), 0..3000),
            start in 0usize..8,
        ) {
            // Destinations at every alignment: the copy is word by word.
            let mut dst = vec![0xa5u8; start + d.len() + 3];
            let sum = Csum::default().add_copy(&mut dst[start..start + d.len()], &d);
            prop_assert_eq!(sum.fold(), naive_sum(&d));
            prop_assert_eq!(&dst[start..start + d.len()], &d[..]);
            prop_assert!(dst[..start].iter().chain(&dst[start + d.len()..]).all(|&b| b == 0xa5));
        }

        #[test]
        fn portable_loops_match_naive_sum(d in proptest::collection::vec(any::<u8>(), 0..3000)) {
            // The loops without run-time dispatch, as a host without AVX2
            // runs them at every length.
            prop_assert_eq!(swap_ne(fold64(sum_ne_words(&d))), naive_sum(&d));
            let mut dst = vec![0u8; d.len()];
            prop_assert_eq!(swap_ne(fold64(copy_sum_ne_words(&mut dst, &d))), naive_sum(&d));
            prop_assert_eq!(dst, d);
        }

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
