//! What the programs (`src/bpf/common.h`) and the loaders agree on: map
//! layouts, counter indexes, map sizes. The C header and this module
//! describe the same bytes; change both together.

use std::net::IpAddr;

use aya::maps::lpm_trie::Key;

/// Most workers the steering programs know (the receiver index names its
/// worker in at most 8 bits): `MAX_WORKERS` in `common.h`.
pub const MAX_WORKERS: u32 = 256;

/// `struct udp_config`: how `steer_udp` reads a receiver index.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// Sockets per address family: the number of workers.
    pub workers: u32,
    /// Receiver-index bits that name the worker.
    pub mask: u32,
}

// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for UdpConfig {}

/// `struct guard_config`: the port `xdp_guard` watches.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// corewire's UDP port in network byte order; 0 guards nothing.
    pub port_be: u16,
    /// Zero.
    pub pad: u16,
}

// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for GuardConfig {}

/// The IPv4 key of the TUN steering trie (`struct route4_key`).
pub type Route4Key = Key<[u8; 4]>;
/// The IPv6 key of the TUN steering trie (`struct route6_key`).
pub type Route6Key = Key<[u8; 16]>;

/// A prefix as the trie of its family keys it (host bits cleared, as
/// AllowedIPs stores them).
#[derive(Clone, Copy)]
pub enum RouteKey {
    /// IPv4.
    V4(Route4Key),
    /// IPv6.
    V6(Route6Key),
}

impl std::fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteKey::V4(k) => write!(f, "{:?}/{}", k.data(), k.prefix_len()),
            RouteKey::V6(k) => write!(f, "{:?}/{}", k.data(), k.prefix_len()),
        }
    }
}

impl RouteKey {
    /// The key of `addr/len` (a length beyond the family's is clamped).
    pub fn new(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let len = u32::from(len.min(32));
                let bits = u32::from(a) & u32::MAX.checked_shl(32 - len).unwrap_or(0);
                RouteKey::V4(Key::new(len, bits.to_be_bytes()))
            }
            IpAddr::V6(a) => {
                let len = u32::from(len.min(128));
                let bits = u128::from(a) & u128::MAX.checked_shl(128 - len).unwrap_or(0);
                RouteKey::V6(Key::new(len, bits.to_be_bytes()))
            }
        }
    }
}

/// `enum udp_stat`: what `steer_udp` counts.
pub mod udp_stat {
    /// Response, cookie reply or data sent to its index's worker.
    pub const BY_INDEX: u32 = 0;
    /// Initiation sent to a worker by the hash of its source.
    pub const BY_SOURCE: u32 = 1;
    /// The index names no worker: the kernel's hash chose.
    pub const NO_WORKER: u32 = 2;
    /// The worker's socket was not in the map: the kernel's hash chose.
    pub const NO_SOCKET: u32 = 3;
    /// Too short or of unknown type: the kernel's hash chose.
    pub const UNSTEERED: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// `enum tun_stat`: what `steer_tun` counts.
pub mod tun_stat {
    /// Destination found: its owner's queue.
    pub const HIT: u32 = 0;
    /// No prefix holds the destination (or not IP): flow hash.
    pub const MISS: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// `enum xdp_stat`: the verdicts `xdp_guard` counts.
pub mod xdp_stat {
    /// Initiation of the right length: passed.
    pub const PASS_INITIATION: u32 = 0;
    /// Response for a live index: passed.
    pub const PASS_RESPONSE: u32 = 1;
    /// Cookie reply of the right length: passed.
    pub const PASS_COOKIE_REPLY: u32 = 2;
    /// Transport data for a live index: passed.
    pub const PASS_DATA: u32 = 3;
    /// Unknown type or reserved bytes set: dropped.
    pub const DROP_BAD_TYPE: u32 = 4;
    /// Wrong length for its type, or truncated: dropped.
    pub const DROP_BAD_LENGTH: u32 = 5;
    /// Response or data for no live index: dropped.
    pub const DROP_UNKNOWN_INDEX: u32 = 6;
    /// Not UDP to corewire's port: passed, not judged.
    pub const PASS_OTHER: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_clear_host_bits() {
        let RouteKey::V4(k) = RouteKey::new("10.1.2.3".parse().unwrap(), 16) else {
            panic!("v4");
        };
        assert_eq!(k.data(), [10, 1, 0, 0]);
        assert_eq!(k.prefix_len(), 16);
        let RouteKey::V4(k) = RouteKey::new("10.1.2.3".parse().unwrap(), 0) else {
            panic!("v4");
        };
        assert_eq!(k.data(), [0; 4]);
        let RouteKey::V6(k) = RouteKey::new("fd00::1:2".parse().unwrap(), 64) else {
            panic!("v6");
        };
        assert_eq!(k.data()[..8], [0xfd, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(k.data()[8..], [0; 8]);
        assert_eq!(k.prefix_len(), 64);
    }
}
