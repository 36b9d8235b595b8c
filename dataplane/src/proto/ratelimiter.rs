//! Per-source token bucket for handshake initiations under load.
//!
//! Same policy as the Linux driver: each source may send
//! [`PACKETS_PER_SECOND`] handshake messages per second with a burst of
//! [`PACKETS_BURSTABLE`]. Sources are IPv4 addresses (/32) and IPv6 /64
//! networks, because one IPv6 host usually controls a whole /64. An
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket reports
//! IPv4 peers) counts as its IPv4 address; otherwise every IPv4 source would
//! share the single bucket of `::ffff:0:0/64`.
//!
//! Tokens are nanoseconds of credit: a bucket gains one token per nanosecond
//! elapsed, a packet costs `1e9 / 20` tokens and a bucket holds at most five
//! packets' worth. Integer arithmetic, no drift, exact in simulated time.
//!
//! # Memory bound
//!
//! At most [`MAX_SOURCES`] sources are tracked (about 4 MiB). When the table
//! is full, a new source is refused, never tracked and never let through,
//! like the kernel: a flood of spoofed sources then costs them the ability to
//! get new sources in, not our memory, and the cookie mechanism (which runs
//! before this limiter) already made spoofed initiations useless. A full
//! table first evicts idle entries itself (at most once per second), so
//! callers that forget to call [`RateLimiter::gc`] are still bounded by
//! entries active within the last second.
//!
//! Source keys come from the network, so the map keeps std's SipHash with a
//! random key (HashDoS-resistant); its cost is small next to the
//! Diffie-Hellman an accepted initiation costs.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sustained handshake messages per second allowed from one source.
pub const PACKETS_PER_SECOND: u64 = 20;
/// Messages one source may send back-to-back after being quiet.
pub const PACKETS_BURSTABLE: u64 = 5;
/// Most sources tracked at once; new sources are refused beyond it.
pub const MAX_SOURCES: usize = 65_536;
/// Entries idle for longer than this are dropped by [`RateLimiter::gc`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Nanoseconds per second.
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Tokens (nanoseconds) one packet costs.
const PACKET_COST: u64 = NANOS_PER_SEC / PACKETS_PER_SECOND;
/// Bucket capacity in tokens.
const TOKEN_MAX: u64 = PACKET_COST * PACKETS_BURSTABLE;
/// [`IDLE_TIMEOUT`] in nanoseconds.
const IDLE_NANOS: u64 = NANOS_PER_SEC;

/// A rate-limited source.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl SourceKey {
    /// The bucket `src` belongs to.
    fn of(src: IpAddr) -> Self {
        match src {
            IpAddr::V4(a) => Self::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// One source's bucket.
#[derive(Clone, Copy)]
struct Bucket {
    /// Credit in nanoseconds, at most [`TOKEN_MAX`].
    tokens: u64,
    /// Time of the last packet, nanoseconds since the limiter's epoch.
    last: u64,
}

/// Per-source token-bucket rate limiter (sans-IO: time is passed in).
#[derive(Clone)]
pub struct RateLimiter {
    /// Tracked sources.
    buckets: HashMap<SourceKey, Bucket>,
    /// The first `now` seen; times are stored as u64 nanoseconds since it,
    /// halving the entry size compared with `Instant`.
    epoch: Option<Instant>,
    /// Capacity bound.
    max_sources: usize,
    /// Time of the last garbage collection (nanoseconds since epoch).
    last_gc: u64,
}

impl RateLimiter {
    /// An empty limiter tracking at most [`MAX_SOURCES`] sources.
    pub fn new() -> Self {
        Self::with_max_sources(MAX_SOURCES)
    }

    /// An empty limiter tracking at most `max_sources` sources.
    pub fn with_max_sources(max_sources: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            epoch: None,
            max_sources,
            last_gc: 0,
        }
    }

    /// Whether a handshake message from `src` at `now` is within its budget;
    /// an allowed message is charged.
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        let now = self.ticks(now);
        let key = SourceKey::of(src);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            // Saturating: a `now` older than the last packet adds nothing.
            let elapsed = now.saturating_sub(bucket.last);
            bucket.last = bucket.last.max(now);
            bucket.tokens = bucket.tokens.saturating_add(elapsed).min(TOKEN_MAX);
            return if bucket.tokens >= PACKET_COST {
                bucket.tokens -= PACKET_COST;
                true
            } else {
                false
            };
        }
        if self.buckets.len() >= self.max_sources {
            if now.saturating_sub(self.last_gc) < IDLE_NANOS {
                return false;
            }
            self.collect(now);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        // A new source starts with a full bucket, minus this packet.
        self.buckets.insert(
            key,
            Bucket {
                tokens: TOKEN_MAX - PACKET_COST,
                last: now,
            },
        );
        true
    }

    /// Forgets sources idle for more than [`IDLE_TIMEOUT`]. Lossless: such a
    /// bucket is full again (it refills in 250 ms), exactly what a new
    /// source gets. Call it about once per second.
    pub fn gc(&mut self, now: Instant) {
        let now = self.ticks(now);
        self.collect(now);
    }

    /// Number of sources tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// [`gc`](Self::gc) with `now` already in ticks.
    fn collect(&mut self, now: u64) {
        self.buckets
            .retain(|_, b| now.saturating_sub(b.last) <= IDLE_NANOS);
        self.last_gc = now;
    }

    /// `now` as nanoseconds since the epoch (the first `now` ever passed).
    fn ticks(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        // u64 nanoseconds last 584 years; saturate rather than wrap.
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RateLimiter {
    // Sizes only: the table may hold 65536 source addresses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("sources", &self.buckets.len())
            .field("max_sources", &self.max_sources)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_refuse() {
        let base = Instant::now();
        let mut rl = RateLimiter::new();
        let a = ip("192.0.2.1");
        for i in 0..5 {
            assert!(rl.allow(a, base), "packet {i}");
        }
        assert!(!rl.allow(a, base));
        assert!(!rl.allow(a, base + ms(49)));
        // Another source is independent.
        assert!(rl.allow(ip("192.0.2.2"), base));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn refills_at_twenty_per_second() {
        let base = Instant::now();
        let mut rl = RateLimiter::new();
        let a = ip("198.51.100.7");
        for _ in 0..5 {
            assert!(rl.allow(a, base));
        }
        // One token per 50 ms, exactly.
        let mut t = base;
        for _ in 0..100 {
            assert!(!rl.allow(a, t + ms(49)));
            t += ms(50);
            assert!(rl.allow(a, t));
            assert!(!rl.allow(a, t));
        }
        // Over 10 s of hammering every millisecond: 20/s plus the burst.
        let mut rl = RateLimiter::new();
        let allowed = (0..10_000).filter(|&i| rl.allow(a, base + ms(i))).count();
        assert_eq!(allowed, 5 + 9_999 / 50);
    }

    #[test]
    fn bucket_caps_at_burst() {
        let base = Instant::now();
        let mut rl = RateLimiter::new();
        let a = ip("203.0.113.1");
        assert!(rl.allow(a, base));
        // A long quiet period gives back the burst, not more.
        let later = base + Duration::from_secs(3600);
        let allowed = (0..20).filter(|_| rl.allow(a, later)).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn ipv6_keyed_by_slash_64() {
        let base = Instant::now();
        let mut rl = RateLimiter::new();
        for i in 0..5 {
            assert!(rl.allow(ip(&format!("2001:db8:1:2::{i}")), base));
        }
        assert!(!rl.allow(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), base));
        assert!(rl.allow(ip("2001:db8:1:3::1"), base));
        assert!(rl.allow(ip("2001:db8:1:1::1"), base));
        assert_eq!(rl.len(), 3);
    }

    #[test]
    fn ipv4_keyed_by_address_and_mapped_folded() {
        let base = Instant::now();
        let mut rl = RateLimiter::new();
        for _ in 0..5 {
            assert!(rl.allow(ip("192.0.2.1"), base));
        }
        assert!(!rl.allow(ip("::ffff:192.0.2.1"), base));
        // A neighbour in the same /24 (and the same mapped /64) is separate.
        assert!(rl.allow(ip("::ffff:192.0.2.2"), base));
        assert!(rl.allow(ip("192.0.2.3"), base));
    }

    #[test]
    fn gc_drops_idle_sources_only() {
        let base = Instant::now();
        let mut rl = RateLimiter::new();
        rl.allow(ip("192.0.2.1"), base);
        rl.allow(ip("192.0.2.2"), base + ms(500));
        rl.gc(base + ms(1000));
        assert_eq!(rl.len(), 2);
        rl.gc(base + ms(1001));
        assert_eq!(rl.len(), 1);
        rl.gc(base + ms(1501));
        assert!(rl.is_empty());
        rl.gc(base);
        assert!(rl.is_empty());
    }

    #[test]
    fn full_table_refuses_new_sources() {
        let base = Instant::now();
        let mut rl = RateLimiter::with_max_sources(3);
        for i in 1..=3 {
            assert!(rl.allow(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), base));
        }
        assert!(!rl.allow(ip("10.0.0.4"), base));
        assert!(!rl.allow(ip("10.0.0.4"), base + ms(900)));
        // Known sources keep their buckets.
        assert!(rl.allow(ip("10.0.0.1"), base + ms(900)));
        assert_eq!(rl.len(), 3);
        // After a second, the full table evicts idle sources by itself.
        assert!(rl.allow(ip("10.0.0.4"), base + ms(1500)));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn default_cap_is_enforced() {
        let base = Instant::now();
        let mut rl = RateLimiter::new();
        for i in 0..MAX_SOURCES as u128 {
            assert!(rl.allow(IpAddr::V6(Ipv6Addr::from(i << 64)), base));
        }
        assert!(!rl.allow(ip("192.0.2.1"), base));
        assert_eq!(rl.len(), MAX_SOURCES);
        rl.gc(base + ms(1001));
        assert!(rl.is_empty());
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let base = Instant::now() + Duration::from_secs(10);
        let mut rl = RateLimiter::new();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(rl.allow(a, base));
        }
        assert!(!rl.allow(a, base - Duration::from_secs(5)));
        assert!(!rl.allow(a, base + ms(10)));
        assert!(rl.allow(a, base + ms(50)));
    }

    /// Independent reference: GCRA (virtual scheduling), which admits the
    /// same packets as a token bucket of the same rate and burst.
    #[derive(Default)]
    struct Gcra {
        /// Theoretical arrival time per source, in ns.
        tat: std::collections::HashMap<SourceKey, u64>,
    }

    impl Gcra {
        fn allow(&mut self, key: SourceKey, now: u64) -> bool {
            let period = 1_000_000_000 / PACKETS_PER_SECOND;
            let tolerance = period * (PACKETS_BURSTABLE - 1);
            let tat = self.tat.get(&key).copied().unwrap_or(now).max(now);
            if tat - now > tolerance {
                return false;
            }
            self.tat.insert(key, tat + period);
            true
        }
    }

    proptest! {
        #[test]
        fn matches_gcra(
            steps in prop::collection::vec((0usize..6, 0u64..120_000_000, any::<bool>(), 0u8..10), 1..400),
        ) {
            let sources = [
                ip("192.0.2.1"),
                ip("::ffff:192.0.2.1"),
                ip("192.0.2.2"),
                ip("2001:db8::1"),
                ip("2001:db8::2"),
                ip("2001:db8:0:1::1"),
            ];
            let base = Instant::now();
            let mut rl = RateLimiter::new();
            let mut model = Gcra::default();
            let mut now = 0u64;
            for (src, delta, same_instant, gc) in steps {
                if !same_instant {
                    now += delta;
                }
                if gc == 0 {
                    // gc must never change a decision.
                    rl.gc(base + Duration::from_nanos(now));
                }
                let src = sources[src];
                let got = rl.allow(src, base + Duration::from_nanos(now));
                prop_assert_eq!(got, model.allow(SourceKey::of(src), now), "{} at {}", src, now);
            }
        }
    }
}
