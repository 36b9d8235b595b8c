//! The IP, TCP and UDP header fields segmentation and coalescing read and
//! rewrite: offsets, flag bits, and one header-length parser both use.
//!
//! Only what a TUN super-packet can be is accepted: IPv4 (with options) or
//! IPv6 without extension headers, carrying TCP (with options) or UDP.
//! IPv6 extension headers are refused rather than walked: the kernel never
//! builds a TSO/USO packet with them through a TUN, and a routing header
//! would change the pseudo-header's destination.

use super::checksum::Csum;
use super::OffloadError;

/// IP protocol number of TCP.
pub(super) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(super) const PROTO_UDP: u8 = 17;

/// Minimum (option-less) IPv4 header length.
pub(super) const IPV4_MIN_LEN: usize = 20;
/// IPv6 fixed header length.
pub(super) const IPV6_LEN: usize = 40;
/// UDP header length.
pub(super) const UDP_LEN: usize = 8;
/// Minimum (option-less) TCP header length.
pub(super) const TCP_MIN_LEN: usize = 20;

/// IPv4 flags byte: don't fragment.
pub(super) const IPV4_DF: u8 = 0x40;
/// IPv4 flags byte: more fragments.
const IPV4_MF: u8 = 0x20;

/// Offset of the TCP flags byte in the TCP header.
pub(super) const TCP_FLAGS: usize = 13;
/// TCP flag bits.
pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_RST: u8 = 0x04;
pub(super) const TCP_PSH: u8 = 0x08;
pub(super) const TCP_ACK: u8 = 0x10;
pub(super) const TCP_URG: u8 = 0x20;
pub(super) const TCP_CWR: u8 = 0x80;

/// Offset of the checksum in the TCP header.
pub(super) const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the checksum in the UDP header.
pub(super) const UDP_CSUM_OFFSET: usize = 6;

/// Where a packet's headers end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Headers {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// IP header length, options included.
    pub l3_len: usize,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Transport header length, options included.
    pub l4_len: usize,
}

impl Headers {
    /// Parses the IP and transport headers at the start of `pkt`.
    pub fn parse(pkt: &[u8]) -> Result<Self, OffloadError> {
        let first = *pkt.first().ok_or(OffloadError::TruncatedIp)?;
        let (v6, l3_len, proto) = match first >> 4 {
            4 => {
                if pkt.len() < IPV4_MIN_LEN {
                    return Err(OffloadError::TruncatedIp);
                }
                let ihl = first & 0x0f;
                if usize::from(ihl) * 4 < IPV4_MIN_LEN {
                    return Err(OffloadError::BadIpv4HeaderLen(ihl));
                }
                let l3_len = usize::from(ihl) * 4;
                if pkt.len() < l3_len {
                    return Err(OffloadError::TruncatedIp);
                }
                // Flags and fragment offset: anything but a whole datagram.
                if pkt[6] & IPV4_MF != 0 || pkt[6] & 0x1f != 0 || pkt[7] != 0 {
                    return Err(OffloadError::Fragment);
                }
                (false, l3_len, pkt[9])
            }
            6 => {
                if pkt.len() < IPV6_LEN {
                    return Err(OffloadError::TruncatedIp);
                }
                (true, IPV6_LEN, pkt[6])
            }
            v => return Err(OffloadError::BadIpVersion(v)),
        };
        let l4_len = match proto {
            PROTO_TCP => {
                let doff = *pkt
                    .get(l3_len + 12)
                    .ok_or(OffloadError::TruncatedTransport)?
                    >> 4;
                if usize::from(doff) * 4 < TCP_MIN_LEN {
                    return Err(OffloadError::BadTcpHeaderLen(doff));
                }
                usize::from(doff) * 4
            }
            PROTO_UDP => UDP_LEN,
            // Hop-by-hop, routing, fragment, ESP, AH, destination options,
            // mobility, HIP, shim6: extension headers, not transports.
            0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 if v6 => {
                return Err(OffloadError::Ipv6ExtensionHeader(proto))
            }
            p => return Err(OffloadError::UnsupportedProtocol(p)),
        };
        if pkt.len() < l3_len + l4_len {
            return Err(OffloadError::TruncatedTransport);
        }
        Ok(Self {
            v6,
            l3_len,
            proto,
            l4_len,
        })
    }

    /// IP plus transport header length: where the payload starts.
    pub fn len(&self) -> usize {
        self.l3_len + self.l4_len
    }

    /// Whether the transport is TCP.
    pub fn is_tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }

    /// Offset of the transport checksum from the transport header.
    pub fn csum_offset(&self) -> usize {
        if self.is_tcp() {
            TCP_CSUM_OFFSET
        } else {
            UDP_CSUM_OFFSET
        }
    }

    /// Source and destination addresses, back to back.
    pub fn addrs<'p>(&self, pkt: &'p [u8]) -> &'p [u8] {
        if self.v6 {
            &pkt[8..40]
        } else {
            &pkt[12..20]
        }
    }

    /// The pseudo-header sum (addresses and protocol) without the length,
    /// which differs per segment. The length is added with
    /// [`Csum::add_u32`] (IPv6 uses a 32-bit length; below 64 KiB both
    /// versions sum the same).
    pub fn pseudo(&self, pkt: &[u8]) -> Csum {
        Csum::default()
            .add_bytes(self.addrs(pkt))
            .add_u16(u16::from(self.proto))
    }
}

/// Reads a big-endian u16 at `at`; callers have checked the bounds.
#[inline]
pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at`; callers have checked the bounds.
#[inline]
pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes a big-endian u16 at `at`; callers have checked the bounds.
#[inline]
pub(super) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian u32 at `at`; callers have checked the bounds.
#[inline]
pub(super) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The destination address of an IP packet (the route lookup's key).
pub fn destination(packet: &[u8]) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Whether `packet` is a UDP datagram sent from our listen `port`: our own
/// encrypted traffic, routed back into our TUN because a peer's endpoint
/// lies inside the tunnel. Sealing it again would loop (each turn 80 bytes
/// longer) and can drag the peer's endpoint into the tunnel too, so it is
/// dropped, as the kernel refuses such sends with ELOOP; the next packet
/// from the peer's real address moves its endpoint back.
pub fn is_own_datagram(packet: &[u8], port: u16) -> bool {
    let (proto, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let frag_offset = packet
                .get(6..8)
                .map_or(1, |b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff);
            if frag_offset != 0 {
                return false;
            }
            (packet.get(9).copied(), ihl)
        }
        Some(6) => (packet.get(6).copied(), 40),
        _ => return false,
    };
    proto == Some(PROTO_UDP)
        && packet
            .get(l4..l4 + 2)
            .is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) == port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::offload::testutil::{tcp4, tcp6, udp4, Pkt};

    #[test]
    fn parses_lengths() {
        let p = tcp4(&Pkt {
            ip_opts: vec![1, 1, 1, 0],
            tcp_opts: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            ..Pkt::default()
        });
        let h = Headers::parse(&p).unwrap();
        assert_eq!((h.v6, h.l3_len, h.proto, h.l4_len), (false, 24, 6, 32));
        let h = Headers::parse(&tcp6(&Pkt::default())).unwrap();
        assert_eq!((h.v6, h.l3_len, h.l4_len), (true, 40, 20));
        let h = Headers::parse(&udp4(&Pkt::default())).unwrap();
        assert_eq!((h.proto, h.len()), (17, 28));
    }
    #[test]
    fn own_datagrams_are_recognised() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[9] = 17;
        v4[20..22].copy_from_slice(&51820u16.to_be_bytes());
        assert!(is_own_datagram(&v4, 51820));
        assert!(!is_own_datagram(&v4, 51821));
        v4[9] = 6; // TCP from that port is not ours
        assert!(!is_own_datagram(&v4, 51820));
        v4[9] = 17;
        v4[7] = 1; // a later fragment has no UDP header
        assert!(!is_own_datagram(&v4, 51820));
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[40..42].copy_from_slice(&51820u16.to_be_bytes());
        assert!(is_own_datagram(&v6, 51820));
        assert!(!is_own_datagram(&v6[..41], 51820));
        assert!(!is_own_datagram(&[], 51820));
    }

    #[test]
    fn destinations() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(destination(&v4), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(destination(&v4[..19]), None);
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xfd;
        assert_eq!(destination(&v6), Some("fd00::".parse().unwrap()));
        assert_eq!(destination(&[0x50; 40]), None);
    }
}
