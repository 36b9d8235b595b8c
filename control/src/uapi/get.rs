//! Rendering the reply to `get=1`.
//!
//! Order and format match wireguard-go's `IpcGetOperation` (`device/uapi.go`
//! f333402b), which is what `wg` (`ipc-uapi.h`) parses:
//!
//! ```text
//! private_key=<hex>        omitted when none
//! listen_port=<n>          the bound port (engine stats), else the configured one; omitted when 0
//! fwmark=<n>               omitted when 0
//! public_key=<hex>         then per peer, in the configuration's stable order:
//! preshared_key=<hex>      always, all zeros when none (as wireguard-go)
//! protocol_version=1
//! endpoint=<ip:port>       current (engine stats), else configured; omitted when none;
//!                          IPv6 as [addr]:port or [addr%scope]:port
//! last_handshake_time_sec=<unix seconds>   0 and 0 when never
//! last_handshake_time_nsec=<ns>
//! tx_bytes=<n>
//! rx_bytes=<n>
//! persistent_keepalive_interval=<s>
//! allowed_ip=<ip/len>      repeated
//! errno=0
//! <empty line>
//! ```
//!
//! [`GetReply`] renders the reply in parts of about 64 KiB, each appended
//! to the connection's output buffer once the previous part was sent, so a
//! million peers (~400 MB of text) never sit in memory at once, a slow
//! reader holds at most one part, and nothing is allocated per peer
//! (numbers and keys are formatted by hand). The configuration must not
//! change while a reply is in progress (the server holds `set`s back).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use corewire_dataplane::engine::config::{DeviceStats, PeerStats};
use corewire_dataplane::proto::keys::PublicKey;
use zeroize::Zeroizing;

use crate::config::{DeviceConfig, PeerCursor};

/// A part is complete once the output holds this many bytes.
pub const PART_BYTES: usize = 60 * 1024;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A `get` reply being written: the engine's stats taken when the request
/// arrived, and how far the reply got.
#[derive(Debug)]
pub struct GetReply {
    stats: Arc<DeviceStats>,
    /// Public key -> index in `stats.peers`, built only if the engine does
    /// not list the peers in the configuration's order.
    map: Option<HashMap<PublicKey, usize>>,
    at: Progress,
}

#[derive(Debug, Clone, Copy)]
enum Progress {
    Header,
    Peers {
        cursor: PeerCursor,
        /// The peer's position in the walk (to find its stats cheaply).
        index: usize,
        /// `None`: the peer's lines before `allowed_ip` are not written yet;
        /// `Some(k)`: its allowed IPs from the k-th on are still to come.
        ip: Option<usize>,
    },
    Done,
}

impl GetReply {
    /// A reply over these stats (shared by the `get`s answered together).
    pub fn new(stats: Arc<DeviceStats>) -> Self {
        Self {
            stats,
            map: None,
            at: Progress::Header,
        }
    }

    /// Appends the next part of the reply to `out` (until `out` holds
    /// [`PART_BYTES`] or the reply ends); true once the reply is complete,
    /// ending with `errno=0` and an empty line.
    pub fn render(&mut self, config: &DeviceConfig, out: &mut Vec<u8>) -> bool {
        loop {
            match self.at {
                Progress::Done => return true,
                Progress::Header => {
                    self.header(config, out);
                    self.at = Progress::Peers {
                        cursor: config.first_peer(),
                        index: 0,
                        ip: None,
                    };
                }
                Progress::Peers { cursor, index, ip } => {
                    if out.len() >= PART_BYTES {
                        return false;
                    }
                    let Some((peer, next)) = config.peer_at(cursor) else {
                        out.extend_from_slice(b"errno=0\n\n");
                        self.at = Progress::Done;
                        return true;
                    };
                    let mut k = match ip {
                        Some(k) => k,
                        None => {
                            let st = stats_of(&self.stats, &mut self.map, index, &peer.public_key);
                            peer_lines(out, peer, st);
                            0
                        }
                    };
                    while k < peer.allowed_ips.len() && out.len() < PART_BYTES {
                        let (addr, len) = peer.allowed_ips[k];
                        out.extend_from_slice(b"allowed_ip=");
                        write_ip(out, &addr);
                        out.push(b'/');
                        push_num(out, u64::from(len));
                        out.push(b'\n');
                        k += 1;
                    }
                    self.at = if k < peer.allowed_ips.len() {
                        Progress::Peers {
                            cursor,
                            index,
                            ip: Some(k),
                        }
                    } else {
                        Progress::Peers {
                            cursor: next,
                            index: index + 1,
                            ip: None,
                        }
                    };
                }
            }
        }
    }

    fn header(&self, config: &DeviceConfig, b: &mut Vec<u8>) {
        if let Some(k) = config.private_key() {
            hex_line(b, b"private_key=", k.as_bytes());
        }
        let port = if self.stats.listen_port != 0 {
            self.stats.listen_port
        } else {
            config.listen_port()
        };
        if port != 0 {
            num_line(b, b"listen_port=", u64::from(port));
        }
        if config.fwmark() != 0 {
            num_line(b, b"fwmark=", u64::from(config.fwmark()));
        }
    }
}

/// A peer's lines up to (not including) its `allowed_ip`s.
fn peer_lines(b: &mut Vec<u8>, peer: &crate::config::PeerEntry, st: Option<&PeerStats>) {
    hex_line(b, b"public_key=", peer.public_key.as_bytes());
    hex_line(b, b"preshared_key=", peer.preshared_key.as_bytes());
    b.extend_from_slice(b"protocol_version=1\n");
    if let Some(ep) = st.and_then(|s| s.endpoint).or(peer.endpoint) {
        b.extend_from_slice(b"endpoint=");
        write_endpoint(b, &ep);
        b.push(b'\n');
    }
    let (sec, nsec) = st
        .and_then(|s| s.last_handshake)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
    num_line(b, b"last_handshake_time_sec=", sec);
    num_line(b, b"last_handshake_time_nsec=", u64::from(nsec));
    num_line(b, b"tx_bytes=", st.map_or(0, |s| s.tx_bytes));
    num_line(b, b"rx_bytes=", st.map_or(0, |s| s.rx_bytes));
    num_line(
        b,
        b"persistent_keepalive_interval=",
        u64::from(peer.persistent_keepalive),
    );
}

/// Writes the complete `get` reply to `out`.
pub fn write_get<W: Write + ?Sized>(
    config: &DeviceConfig,
    stats: &DeviceStats,
    out: &mut W,
) -> io::Result<()> {
    // Holds the private and preshared keys in hex: wiped when dropped.
    let mut b = Zeroizing::new(Vec::with_capacity(PART_BYTES + 4096));
    let mut reply = GetReply::new(Arc::new(stats.clone()));
    loop {
        let done = reply.render(config, &mut b);
        out.write_all(&b)?;
        b.clear();
        if done {
            return out.flush();
        }
    }
}

/// The `get` reply as a string (tests, small devices).
#[cfg(test)]
pub fn render_get(config: &DeviceConfig, stats: &DeviceStats) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write_get(config, stats, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds a peer's stats. The engine may list peers in any order; when it
/// lists them in the configuration's order (the cheap case) no map is built.
fn stats_of<'s>(
    stats: &'s DeviceStats,
    map: &mut Option<HashMap<PublicKey, usize>>,
    position: usize,
    key: &PublicKey,
) -> Option<&'s PeerStats> {
    if let Some(s) = stats.peers.get(position) {
        if s.public_key == *key {
            return Some(s);
        }
    }
    let i = *map
        .get_or_insert_with(|| {
            stats
                .peers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.public_key, i))
                .collect()
        })
        .get(key)?;
    stats.peers.get(i)
}

fn hex_line(b: &mut Vec<u8>, prefix: &[u8], key: &[u8; 32]) {
    b.extend_from_slice(prefix);
    for &byte in key {
        b.push(HEX[usize::from(byte >> 4)]);
        b.push(HEX[usize::from(byte & 0xf)]);
    }
    b.push(b'\n');
}

fn num_line(b: &mut Vec<u8>, prefix: &[u8], n: u64) {
    b.extend_from_slice(prefix);
    push_num(b, n);
    b.push(b'\n');
}

/// Decimal digits of `n`, without allocating.
fn push_num(b: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.extend_from_slice(&digits[i..]);
}

fn write_ip(b: &mut Vec<u8>, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            let [o0, o1, o2, o3] = a.octets();
            push_num(b, u64::from(o0));
            b.push(b'.');
            push_num(b, u64::from(o1));
            b.push(b'.');
            push_num(b, u64::from(o2));
            b.push(b'.');
            push_num(b, u64::from(o3));
        }
        // RFC 5952 text, as Go's netip prints it (including ::ffff:a.b.c.d).
        IpAddr::V6(a) => {
            let _ = write!(b, "{a}");
        }
    }
}

fn write_endpoint(b: &mut Vec<u8>, ep: &SocketAddr) {
    match ep {
        SocketAddr::V4(a) => {
            write_ip(b, &IpAddr::V4(*a.ip()));
            b.push(b':');
            push_num(b, u64::from(a.port()));
        }
        // `[addr]:port`, or `[addr%scope]:port` with a numeric scope, which
        // `wg` hands to getaddrinfo as is.
        SocketAddr::V6(a) => {
            let _ = write!(b, "{a}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn numbers() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            65535,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            push_num(&mut b, n);
            assert_eq!(String::from_utf8(b).unwrap(), n.to_string());
        }
    }

    #[test]
    fn addresses() {
        let mut b = Vec::new();
        write_endpoint(&mut b, &"1.2.3.4:51820".parse().unwrap());
        b.push(b' ');
        write_endpoint(&mut b, &"[2001:db8::1]:51820".parse().unwrap());
        b.push(b' ');
        write_endpoint(
            &mut b,
            &SocketAddr::V6(std::net::SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                1,
                0,
                3,
            )),
        );
        b.push(b' ');
        write_ip(&mut b, &"::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "1.2.3.4:51820 [2001:db8::1]:51820 [fe80::1%3]:1 ::ffff:10.0.0.1"
        );
    }

    #[test]
    fn empty_device() {
        assert_eq!(
            render_get(&DeviceConfig::new(), &DeviceStats::default()),
            "errno=0\n\n"
        );
    }

    #[test]
    fn stats_in_any_order_and_missing() {
        use crate::config::PeerEntry;
        let k = |n: u8| PublicKey::from_bytes([n; 32]);
        let mut c = DeviceConfig::new();
        for n in 1..=3 {
            let mut e = PeerEntry::new(k(n));
            e.endpoint = Some("10.0.0.1:1".parse().unwrap());
            assert!(c.upsert_peer(e));
        }
        let stat = |n: u8, rx: u64| PeerStats {
            public_key: k(n),
            endpoint: Some("192.0.2.1:9".parse().unwrap()),
            last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
            rx_bytes: rx,
            tx_bytes: rx * 2,
        };
        let stats = DeviceStats {
            listen_port: 4242,
            peers: vec![stat(3, 30), stat(1, 10)],
        };
        let text = render_get(&c, &stats);
        let peers: Vec<&str> = text.split("public_key=").skip(1).collect();
        assert_eq!(peers.len(), 3);
        assert!(text.starts_with("listen_port=4242\npublic_key="));
        assert!(peers[0].contains("endpoint=192.0.2.1:9\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=20\nrx_bytes=10\n"));
        assert!(peers[1].contains("endpoint=10.0.0.1:1\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"));
        assert!(peers[2].contains("rx_bytes=30\n"));
    }
}
