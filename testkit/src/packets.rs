//! IP packets for tests: what a TUN device would hand the data plane.
//!
//! [`ipv4_packet`] and [`ipv6_packet`] carry an experimental protocol
//! (253, RFC 3692) with a payload counting up from a seed, odd bytes only,
//! so no payload looks like padding; the IPv4 header checksum is correct.
//! [`ipv4_filled`] is the plainer variant some tests compare against:
//! UDP's protocol number, no checksum, every other byte the fill value.
//! [`tcp_tso_read`] is a TSO super-packet as a TUN read returns it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = 40;
/// IP protocol number for experimentation (RFC 3692): the payload is ours.
pub const PROTO_EXPERIMENT: u8 = 253;
/// UDP's protocol number.
pub const PROTO_UDP: u8 = 17;
/// TCP's protocol number.
pub const PROTO_TCP: u8 = 6;
const TTL: u8 = 64;

/// An IPv4 packet (header with a correct checksum, identification `seed`)
/// carrying `payload_len` bytes that count up from `seed`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize, seed: u8) -> Vec<u8> {
    let total = IPV4_HEADER_LEN + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("fits").to_be_bytes());
    p[4..6].copy_from_slice(&u16::from(seed).to_be_bytes());
    p[8] = TTL;
    p[9] = PROTO_EXPERIMENT;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = ipv4_header_checksum(&p[..IPV4_HEADER_LEN]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    fill_counting(&mut p[IPV4_HEADER_LEN..], seed);
    p
}

/// An IPv6 packet carrying `payload_len` bytes that count up from `seed`.
pub fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, payload_len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; IPV6_HEADER_LEN + payload_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&u16::try_from(payload_len).expect("fits").to_be_bytes());
    p[6] = PROTO_EXPERIMENT;
    p[7] = TTL;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    fill_counting(&mut p[IPV6_HEADER_LEN..], seed);
    p
}

/// A minimal IPv4 packet from `src` to `dst` with `payload_len` bytes:
/// protocol UDP, TTL 64, checksum 0, and `fill` in every byte the header
/// fields above leave alone (the payload included).
pub fn ipv4_filled(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize, fill: u8) -> Vec<u8> {
    let total = IPV4_HEADER_LEN + payload_len;
    let mut p = vec![fill; total];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("fits").to_be_bytes());
    p[8] = TTL;
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

/// An IPv4 UDP datagram `src:sport` -> `dst:dport` carrying `payload`
/// (header checksum correct, UDP checksum 0: none, as IPv4 allows), as a
/// host's stack would accept it.
pub fn ipv4_udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = IPV4_HEADER_LEN + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("fits").to_be_bytes());
    p[8] = TTL;
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = ipv4_header_checksum(&p[..IPV4_HEADER_LEN]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let u = &mut p[IPV4_HEADER_LEN..];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&u16::try_from(udp_len).expect("fits").to_be_bytes());
    u[8..].copy_from_slice(payload);
    p
}

/// A TUN read as the kernel hands it over with TSO: a 10-byte virtio-net
/// header (`NEEDS_CSUM`, `GSO_TCPV4` or `GSO_TCPV6`, segments of `mss`
/// payload bytes, little-endian fields) and a TCP super-packet from `src`
/// to `dst` (ports 40000 -> 5201, ACK, 20-byte header, checksum field 0:
/// segmentation computes each segment's from the headers) carrying
/// `payload`.
pub fn tcp_tso_read(src: IpAddr, dst: IpAddr, payload: &[u8], mss: u16) -> Vec<u8> {
    const TCP_LEN: usize = 20;
    let mut tcp = vec![0u8; TCP_LEN];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = ((TCP_LEN / 4) as u8) << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp.extend_from_slice(payload);
    let (mut ip, gso_type, l3) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (ipv4_packet(s, d, 0, 0), 1u8, IPV4_HEADER_LEN),
        (IpAddr::V6(s), IpAddr::V6(d)) => (ipv6_packet(s, d, 0, 0), 4u8, IPV6_HEADER_LEN),
        _ => panic!("mixed address families"),
    };
    // The headers above, now for a TCP payload of this length.
    if l3 == IPV4_HEADER_LEN {
        let total = u16::try_from(l3 + tcp.len()).expect("fits");
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[9] = PROTO_TCP;
        ip[10..12].fill(0);
        let sum = ipv4_header_checksum(&ip[..IPV4_HEADER_LEN]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        ip[4..6].copy_from_slice(&u16::try_from(tcp.len()).expect("fits").to_be_bytes());
        ip[6] = PROTO_TCP;
    }
    let hdr_len = u16::try_from(l3 + TCP_LEN).expect("fits");
    let mut read = vec![1u8, gso_type]; // NEEDS_CSUM
    for v in [hdr_len, mss, l3 as u16, 16] {
        read.extend_from_slice(&v.to_le_bytes());
    }
    read.extend_from_slice(&ip);
    read.extend_from_slice(&tcp);
    read
}

/// The Internet checksum of an IPv4 header whose checksum field is 0.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let sum = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    !(folded as u16)
}

fn fill_counting(payload: &mut [u8], seed: u8) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8) | 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn ipv4_header_sums_to_zero() {
        let p = ipv4_packet(A, B, 100, 7);
        assert_eq!(p.len(), 120);
        assert_eq!(
            ipv4_header_checksum(&p[..20]),
            0,
            "a valid header sums to 0"
        );
        assert_eq!(&p[2..4], &120u16.to_be_bytes());
        assert_eq!((p[9], p[20], p[21]), (PROTO_EXPERIMENT, 7 | 1, 8 | 1));
    }

    #[test]
    fn ipv6_layout() {
        let (s, d) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        let p = ipv6_packet(s, d, 3, 0);
        assert_eq!(p.len(), 43);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(&p[4..6], &3u16.to_be_bytes());
        assert_eq!(&p[40..], &[1, 1, 3]);
    }

    #[test]
    fn filled_packet() {
        let p = ipv4_filled(A, B, 4, 0xaa);
        assert_eq!(p.len(), 24);
        assert_eq!((p[9], p[8], p[10], p[23]), (PROTO_UDP, 64, 0xaa, 0xaa));
        assert_eq!(&p[12..16], &A.octets());
    }
}
