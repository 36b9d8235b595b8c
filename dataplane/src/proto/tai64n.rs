//! TAI64N timestamps, as carried (sealed) in handshake initiations.
//!
//! A responder accepts an initiation only if its timestamp is strictly
//! greater than the last one it accepted from that peer, which stops replays
//! of old initiations. The nanoseconds are rounded down to 2^24 ns (~16.8 ms)
//! so the timestamp does not leak fine-grained timing of the initiator.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::messages::TIMESTAMP_LEN;

/// TAI64 label offset: 2^62 plus the 10 leap seconds TAI was ahead in 1970.
const TAI64_BASE: u64 = 0x4000_0000_0000_000a;
/// Nanosecond bits cleared before sending (the kernel and wireguard-go agree).
const WHITENER_MASK: u32 = (1 << 24) - 1;

/// A TAI64N label: 8 bytes of big-endian seconds then 4 of nanoseconds, so
/// comparing the bytes compares the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Tai64N(pub [u8; TIMESTAMP_LEN]);

impl Tai64N {
    /// The all-zero label, older than any real time.
    pub const ZERO: Tai64N = Tai64N([0; TIMESTAMP_LEN]);

    /// The label for a wall-clock time (times before 1970 map to 1970).
    pub fn from_system_time(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let mut out = [0u8; TIMESTAMP_LEN];
        out[..8].copy_from_slice(&(TAI64_BASE + since.as_secs()).to_be_bytes());
        let nanos = since.subsec_nanos() & !WHITENER_MASK;
        out[8..].copy_from_slice(&nanos.to_be_bytes());
        Tai64N(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_order() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let l = Tai64N::from_system_time(t);
        assert_eq!(
            u64::from_be_bytes(l.0[..8].try_into().unwrap()),
            TAI64_BASE + 1_700_000_000
        );
        let nanos = u32::from_be_bytes(l.0[8..].try_into().unwrap());
        assert_eq!(nanos & WHITENER_MASK, 0);
        assert!(nanos <= 123_456_789 && 123_456_789 - nanos < 1 << 24);
        // Within one whitening unit two times are equal; across, ordered.
        let same = Tai64N::from_system_time(t + Duration::from_nanos(1));
        assert_eq!(l, same);
        let later = Tai64N::from_system_time(t + Duration::from_millis(17));
        assert!(later > l);
        let next_second = Tai64N::from_system_time(t + Duration::from_secs(1));
        assert!(next_second > later);
        assert!(Tai64N::ZERO < l);
    }
}
