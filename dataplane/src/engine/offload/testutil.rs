//! Test support: packet builders and a checksum written independently of
//! `checksum.rs` (16-bit words, one at a time, no tricks), so tests compare
//! the fast code against something obviously right.

pub(super) use super::ip::{TCP_ACK, TCP_CWR, TCP_FIN, TCP_PSH};
use super::virtio::*;

/// Ones' complement sum of big-endian words, folded, not complemented.
pub(super) fn naive_sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    let mut i = 0;
    while i < data.len() {
        let hi = u32::from(data[i]) << 8;
        let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
        s += hi | lo;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        i += 2;
    }
    s as u16
}

/// The pseudo-header bytes for `pkt` (IPv4 or IPv6, no extension headers)
/// with the given transport length, built field by field.
fn pseudo_bytes(pkt: &[u8], l4_len: usize) -> Vec<u8> {
    let mut ph = Vec::new();
    if pkt[0] >> 4 == 4 {
        ph.extend_from_slice(&pkt[12..20]);
        ph.push(0);
        ph.push(pkt[9]);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        ph.extend_from_slice(&pkt[8..40]);
        ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, pkt[6]]);
    }
    ph
}

/// The folded pseudo-header sum a `NEEDS_CSUM` packet carries in its
/// checksum field.
pub(super) fn partial_csum(pkt: &[u8]) -> u16 {
    naive_sum(&pseudo_bytes(pkt, pkt.len() - l3_len(pkt)))
}

/// IP header length of a test packet.
pub(super) fn l3_len(pkt: &[u8]) -> usize {
    if pkt[0] >> 4 == 4 {
        usize::from(pkt[0] & 0xf) * 4
    } else {
        40
    }
}

/// Whether the transport checksum of `pkt` is correct: pseudo-header,
/// header and payload, checksum field included, sum to 0xffff.
pub(super) fn l4_csum_ok(pkt: &[u8]) -> bool {
    let l3 = l3_len(pkt);
    let mut all = pseudo_bytes(pkt, pkt.len() - l3);
    all.extend_from_slice(&pkt[l3..]);
    naive_sum(&all) == 0xffff
}

/// The transport checksum `pkt` should carry, computed from scratch with
/// the field taken as zero.
pub(super) fn l4_csum_expected(pkt: &[u8]) -> u16 {
    let l3 = l3_len(pkt);
    let at = l3 + if pkt_proto(pkt) == 6 { 16 } else { 6 };
    let mut copy = pkt.to_vec();
    copy[at..at + 2].fill(0);
    let mut all = pseudo_bytes(pkt, pkt.len() - l3);
    all.extend_from_slice(&copy[l3..]);
    let c = !naive_sum(&all);
    if pkt_proto(pkt) == 17 && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Whether an IPv4 header checksum is correct (IPv6 has none: true).
pub(super) fn ip_csum_ok(pkt: &[u8]) -> bool {
    pkt[0] >> 4 != 4 || naive_sum(&pkt[..l3_len(pkt)]) == 0xffff
}

/// Transport protocol of a test packet.
pub(super) fn pkt_proto(pkt: &[u8]) -> u8 {
    if pkt[0] >> 4 == 4 {
        pkt[9]
    } else {
        pkt[6]
    }
}

/// Fields of a test packet; `Default` is a valid ACK segment with 100
/// bytes of payload.
#[derive(Debug, Clone)]
pub(super) struct Pkt {
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub id: u16,
    pub ttl: u8,
    pub tos: u8,
    /// IPv4 flags and fragment offset word (DF by default).
    pub frag: u16,
    /// IPv6 flow label (20 bits).
    pub flow: u32,
    pub ip_opts: Vec<u8>,
    pub tcp_opts: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Default for Pkt {
    fn default() -> Self {
        let mut src6 = [0u8; 16];
        src6[..2].copy_from_slice(&[0xfd, 0x00]);
        src6[15] = 1;
        let mut dst6 = src6;
        dst6[15] = 2;
        Self {
            src4: [10, 0, 0, 1],
            dst4: [10, 0, 0, 2],
            src6,
            dst6,
            sport: 40000,
            dport: 443,
            seq: 1_000_000,
            ack: 777,
            flags: 0x10,
            window: 512,
            id: 100,
            ttl: 64,
            tos: 0,
            frag: 0x4000,
            flow: 0x12345,
            ip_opts: Vec::new(),
            tcp_opts: Vec::new(),
            payload: payload(100, 0),
        }
    }
}

/// `len` bytes of a recognisable pattern starting at `start`.
pub(super) fn payload(len: usize, start: usize) -> Vec<u8> {
    (start..start + len)
        .map(|i| (i * 31 + i / 251) as u8)
        .collect()
}

fn tcp_header(p: &Pkt) -> Vec<u8> {
    assert!(p.tcp_opts.len().is_multiple_of(4));
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&p.sport.to_be_bytes());
    t[2..4].copy_from_slice(&p.dport.to_be_bytes());
    t[4..8].copy_from_slice(&p.seq.to_be_bytes());
    t[8..12].copy_from_slice(&p.ack.to_be_bytes());
    t[12] = (((20 + p.tcp_opts.len()) / 4) as u8) << 4;
    t[13] = p.flags;
    t[14..16].copy_from_slice(&p.window.to_be_bytes());
    t.extend_from_slice(&p.tcp_opts);
    t
}

fn udp_header(p: &Pkt) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&p.sport.to_be_bytes());
    u[2..4].copy_from_slice(&p.dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + p.payload.len()) as u16).to_be_bytes());
    u
}

fn ipv4(p: &Pkt, proto: u8, l4: &[u8]) -> Vec<u8> {
    assert!(p.ip_opts.len().is_multiple_of(4));
    let l3 = 20 + p.ip_opts.len();
    let total = l3 + l4.len() + p.payload.len();
    let mut v = vec![0u8; 20];
    v[0] = 0x40 | (l3 / 4) as u8;
    v[1] = p.tos;
    v[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    v[4..6].copy_from_slice(&p.id.to_be_bytes());
    v[6..8].copy_from_slice(&p.frag.to_be_bytes());
    v[8] = p.ttl;
    v[9] = proto;
    v[12..16].copy_from_slice(&p.src4);
    v[16..20].copy_from_slice(&p.dst4);
    v.extend_from_slice(&p.ip_opts);
    let c = !naive_sum(&v);
    v[10..12].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(l4);
    v.extend_from_slice(&p.payload);
    v
}

fn ipv6(p: &Pkt, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 40];
    let word = (6u32 << 28) | (u32::from(p.tos) << 20) | (p.flow & 0xfffff);
    v[0..4].copy_from_slice(&word.to_be_bytes());
    v[4..6].copy_from_slice(&((l4.len() + p.payload.len()) as u16).to_be_bytes());
    v[6] = proto;
    v[7] = p.ttl;
    v[8..24].copy_from_slice(&p.src6);
    v[24..40].copy_from_slice(&p.dst6);
    v.extend_from_slice(l4);
    v.extend_from_slice(&p.payload);
    v
}

fn with_l4_csum(mut v: Vec<u8>) -> Vec<u8> {
    let c = l4_csum_expected(&v);
    let at = l3_len(&v) + if pkt_proto(&v) == 6 { 16 } else { 6 };
    v[at..at + 2].copy_from_slice(&c.to_be_bytes());
    v
}

/// A TCP over IPv4 packet with correct checksums.
pub(super) fn tcp4(p: &Pkt) -> Vec<u8> {
    with_l4_csum(ipv4(p, 6, &tcp_header(p)))
}

/// A TCP over IPv6 packet with correct checksums.
pub(super) fn tcp6(p: &Pkt) -> Vec<u8> {
    with_l4_csum(ipv6(p, 6, &tcp_header(p)))
}

/// A UDP over IPv4 packet with correct checksums.
pub(super) fn udp4(p: &Pkt) -> Vec<u8> {
    with_l4_csum(ipv4(p, 17, &udp_header(p)))
}

/// A UDP over IPv6 packet with correct checksums.
pub(super) fn udp6(p: &Pkt) -> Vec<u8> {
    with_l4_csum(ipv6(p, 17, &udp_header(p)))
}

/// Turns a complete packet into what the kernel hands a TUN reader for a
/// GSO packet: the transport checksum field holds only the folded
/// pseudo-header sum (`CHECKSUM_PARTIAL`), preceded by a virtio-net header
/// with `gso_type`, `gso_size`, exact `hdr_len` and `NEEDS_CSUM`.
pub(super) fn kernel_gso(pkt: &[u8], gso_type: u8, gso_size: u16) -> Vec<u8> {
    let l3 = l3_len(pkt);
    let tcp = pkt_proto(pkt) == 6;
    let l4 = if tcp {
        usize::from(pkt[l3 + 12] >> 4) * 4
    } else {
        8
    };
    let csum_off = if tcp { 16 } else { 6 };
    let mut body = pkt.to_vec();
    let partial = partial_csum(pkt);
    body[l3 + csum_off..l3 + csum_off + 2].copy_from_slice(&partial.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (l3 + l4) as u16,
        gso_size,
        csum_start: l3 as u16,
        csum_offset: csum_off as u16,
    };
    let mut out = hdr.to_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}
