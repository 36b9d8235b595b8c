//! Segmentation tests: a table of super-packets checked field by field
//! against an independent checksum, the checksum-only case, and a table
//! of malformed reads that must be errors.

use super::*;
use crate::engine::offload::testutil::*;
use crate::engine::offload::virtio::*;

/// Headroom the worker leaves for the WireGuard header in tests.
const ROOM: usize = 16;

struct Case {
    name: &'static str,
    /// The super-packet as one complete IP packet.
    pkt: Vec<u8>,
    gso_type: u8,
    gso_size: u16,
    mtu: usize,
    /// Expected payload length of each segment.
    sizes: &'static [usize],
}

fn cases() -> Vec<Case> {
    let big = |n| Pkt {
        payload: payload(n, 0),
        ..Pkt::default()
    };
    vec![
        Case {
            name: "tcp4 even split",
            pkt: tcp4(&big(3000)),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1000,
            mtu: 1500,
            sizes: &[1000, 1000, 1000],
        },
        Case {
            name: "tcp4 ip+tcp options, PSH|FIN, short last",
            pkt: tcp4(&Pkt {
                ip_opts: vec![0x94, 0x04, 0, 0], // router alert
                tcp_opts: vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7],
                flags: TCP_ACK | TCP_PSH | TCP_FIN,
                ..big(2500)
            }),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1000,
            mtu: 1500,
            sizes: &[1000, 1000, 500],
        },
        Case {
            name: "tcp4 CWR|ECE with the ECN bit",
            pkt: tcp4(&Pkt {
                flags: TCP_ACK | TCP_CWR | 0x40,
                ..big(2000)
            }),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            gso_size: 700,
            mtu: 1500,
            sizes: &[700, 700, 600],
        },
        Case {
            name: "tcp4 sequence and ID wrap around",
            pkt: tcp4(&Pkt {
                seq: u32::MAX - 500,
                id: 0xffff,
                frag: 0,
                ..big(2000)
            }),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1000,
            mtu: 1500,
            sizes: &[1000, 1000],
        },
        Case {
            name: "tcp4 one segment",
            pkt: tcp4(&big(300)),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1000,
            mtu: 1500,
            sizes: &[300],
        },
        Case {
            name: "tcp4 cut to the MTU",
            pkt: tcp4(&big(3000)),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1400,
            mtu: 1000,
            sizes: &[960, 960, 960, 120],
        },
        Case {
            name: "tcp6 options, PSH",
            pkt: tcp6(&Pkt {
                tcp_opts: vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7],
                flags: TCP_ACK | TCP_PSH,
                ..big(4000)
            }),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
            gso_size: 1368,
            mtu: 1440,
            sizes: &[1368, 1368, 1264],
        },
        Case {
            name: "udp4",
            pkt: udp4(&big(3000)),
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            gso_size: 1200,
            mtu: 1420,
            sizes: &[1200, 1200, 600],
        },
        Case {
            name: "udp4 with ip options",
            pkt: udp4(&Pkt {
                ip_opts: vec![1, 1, 1, 1, 1, 1, 1, 0],
                ..big(1000)
            }),
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            gso_size: 333,
            mtu: 1420,
            sizes: &[333, 333, 333, 1],
        },
        Case {
            name: "udp6 exact multiple",
            pkt: udp6(&big(2400)),
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            gso_size: 1200,
            mtu: 1420,
            sizes: &[1200, 1200],
        },
    ]
}

/// The header bytes with every per-segment field zeroed, to compare a
/// segment's headers with the super-packet's.
fn normalised_headers(pkt: &[u8], hlen: usize) -> Vec<u8> {
    let mut h = pkt[..hlen].to_vec();
    let l3 = l3_len(pkt);
    if pkt[0] >> 4 == 4 {
        h[2..6].fill(0);
        h[10..12].fill(0);
    } else {
        h[4..6].fill(0);
    }
    if pkt_proto(pkt) == 6 {
        h[l3 + 4..l3 + 8].fill(0);
        h[l3 + 13] &= !(TCP_FIN | TCP_PSH | TCP_CWR);
        h[l3 + 16..l3 + 18].fill(0);
    } else {
        h[l3 + 4..l3 + 8].fill(0);
    }
    h
}

#[test]
fn split_table() {
    for c in cases() {
        let name = c.name;
        let mut read = kernel_gso(&c.pkt, c.gso_type, c.gso_size);
        let TunRead::Segments(segs) = parse_read(&mut read, c.mtu).unwrap() else {
            panic!("{name}: not segmented");
        };
        assert_eq!(segs.len(), c.sizes.len(), "{name}: count");
        let hlen = segs.header_len();
        let l3 = l3_len(&c.pkt);
        let v4 = c.pkt[0] >> 4 == 4;
        let tcp = pkt_proto(&c.pkt) == 6;
        let orig_flags = c.pkt[l3 + 13];
        let mut data = Vec::new();
        for (i, seg) in segs.enumerate() {
            assert_eq!(seg.index(), i);
            let mut buf = vec![0xa5u8; 2048];
            let n = seg.write(&mut buf[ROOM..]).unwrap();
            assert_eq!(n, seg.len(), "{name}");
            assert!(buf[..ROOM].iter().all(|&b| b == 0xa5), "{name}: headroom");
            assert!(buf[ROOM + n..].iter().all(|&b| b == 0xa5), "{name}: tail");
            let s = &buf[ROOM..ROOM + n];
            assert_eq!(n - hlen, c.sizes[i], "{name}: segment {i} size");
            assert!(n <= c.mtu, "{name}: over MTU");
            assert_eq!(
                normalised_headers(s, hlen),
                normalised_headers(&c.pkt, hlen),
                "{name}: segment {i} headers"
            );
            // Independent checks: a correct checksum sums to 0xffff
            // and equals one computed from scratch.
            assert!(ip_csum_ok(s), "{name}: ip checksum {i}");
            assert!(l4_csum_ok(s), "{name}: l4 checksum {i}");
            let at = l3 + if tcp { 16 } else { 6 };
            assert_eq!(
                u16::from_be_bytes([s[at], s[at + 1]]),
                l4_csum_expected(s),
                "{name}: l4 checksum value {i}"
            );
            if v4 {
                assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, n);
                let id0 = u16::from_be_bytes([c.pkt[4], c.pkt[5]]);
                assert_eq!(
                    u16::from_be_bytes([s[4], s[5]]),
                    id0.wrapping_add(i as u16),
                    "{name}: id"
                );
            } else {
                assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, n - 40);
            }
            let last = i + 1 == c.sizes.len();
            if tcp {
                let seq0 = u32::from_be_bytes(c.pkt[l3 + 4..l3 + 8].try_into().unwrap());
                let seq = u32::from_be_bytes(s[l3 + 4..l3 + 8].try_into().unwrap());
                assert_eq!(seq, seq0.wrapping_add(data.len() as u32), "{name}: seq");
                let f = s[l3 + 13];
                let fin_psh = orig_flags & (TCP_FIN | TCP_PSH);
                assert_eq!(f & (TCP_FIN | TCP_PSH), if last { fin_psh } else { 0 });
                let cwr = orig_flags & TCP_CWR;
                assert_eq!(f & TCP_CWR, if i == 0 { cwr } else { 0 }, "{name}: cwr");
                let others = !(TCP_FIN | TCP_PSH | TCP_CWR);
                assert_eq!(f & others, orig_flags & others, "{name}: flags");
            } else {
                assert_eq!(u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]) as usize, n - l3);
            }
            data.extend_from_slice(&s[hlen..]);
        }
        assert_eq!(data, c.pkt[hlen..], "{name}: payload");
    }
}

#[test]
fn segments_borrow_payload_and_report_sizes() {
    let pkt = tcp4(&Pkt {
        payload: payload(2500, 0),
        ..Pkt::default()
    });
    let read = kernel_gso(&pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1000);
    let hdr = VirtioNetHdr::parse(&read).unwrap();
    let segs = Segments::new(&hdr, &read[VNET_HDR_LEN..], 1500).unwrap();
    assert_eq!((segs.segment_size(), segs.header_len()), (1000, 40));
    let lens: Vec<_> = segs.clone().map(|s| s.len()).collect();
    assert_eq!(lens, [1040, 1040, 540]);
    let pays: Vec<&[u8]> = segs.map(|s| s.payload()).collect();
    assert_eq!(pays[2], &pkt[2040..]);
}

#[test]
fn write_into_short_buffer_is_an_error() {
    let pkt = udp4(&Pkt {
        payload: payload(2000, 0),
        ..Pkt::default()
    });
    let mut read = kernel_gso(&pkt, VIRTIO_NET_HDR_GSO_UDP_L4, 1000);
    let TunRead::Segments(mut segs) = parse_read(&mut read, 1500).unwrap() else {
        panic!("not segmented");
    };
    let seg = segs.next().unwrap();
    let mut small = [0u8; 100];
    assert_eq!(
        seg.write(&mut small),
        Err(OffloadError::BufferTooSmall {
            needed: 1028,
            available: 100
        })
    );
}

#[test]
fn needs_csum_without_gso_completes_in_place() {
    for (name, pkt, off) in [
        ("tcp4", tcp4(&Pkt::default()), 16u16),
        (
            "tcp6 odd length",
            tcp6(&Pkt {
                payload: payload(101, 3),
                ..Pkt::default()
            }),
            16,
        ),
        ("udp4", udp4(&Pkt::default()), 6),
        ("udp6", udp6(&Pkt::default()), 6),
    ] {
        let mut read = kernel_gso(&pkt, VIRTIO_NET_HDR_GSO_NONE, 0);
        assert_eq!(read[VNET_HDR_LEN..].len(), pkt.len());
        assert_ne!(read[VNET_HDR_LEN..], pkt[..], "{name}: partial differs");
        let hdr = VirtioNetHdr::parse(&read).unwrap();
        assert_eq!(hdr.csum_offset, off);
        let TunRead::Packet(p) = parse_read(&mut read, 1500).unwrap() else {
            panic!("{name}: segmented");
        };
        assert_eq!(p, &pkt[..], "{name}");
        assert!(l4_csum_ok(p), "{name}");
    }
}

#[test]
fn plain_packet_is_untouched() {
    let pkt = tcp4(&Pkt::default());
    let mut read = VirtioNetHdr::NONE.to_bytes().to_vec();
    read.extend_from_slice(&pkt);
    // Even a broken packet: without NEEDS_CSUM the kernel vouches for it.
    read[VNET_HDR_LEN + 30] ^= 0xff;
    let want = read[VNET_HDR_LEN..].to_vec();
    let TunRead::Packet(p) = parse_read(&mut read, 1500).unwrap() else {
        panic!("segmented");
    };
    assert_eq!(p, &want[..]);
}

#[test]
fn udp_checksum_zero_is_sent_as_ffff() {
    // Search for a payload whose UDP checksum computes to 0: the last
    // two payload bytes adjust the sum freely.
    let mut p = Pkt {
        payload: payload(20, 0),
        ..Pkt::default()
    };
    let pkt = udp4(&p);
    let c = l4_csum_expected(&pkt);
    // Adding (c) to the data sum makes the complement... solve directly:
    // set the last word so that the folded sum is 0xffff.
    let n = p.payload.len();
    let old = u16::from_be_bytes([p.payload[n - 2], p.payload[n - 1]]);
    let sum_wo = !c; // folded sum of everything, field zero
    let want_word = {
        // sum_wo - old + new == 0xffff (ones' complement)
        let base = u32::from(sum_wo) + u32::from(!old);
        let base = (base & 0xffff) + (base >> 16);
        !(base as u16)
    };
    p.payload[n - 2..].copy_from_slice(&want_word.to_be_bytes());
    let pkt = udp4(&p);
    assert_eq!(l4_csum_expected(&pkt), 0xffff, "test setup");
    // As a one-segment UDP super-packet.
    let mut read = kernel_gso(&pkt, VIRTIO_NET_HDR_GSO_UDP_L4, 100);
    let TunRead::Segments(mut segs) = parse_read(&mut read, 1500).unwrap() else {
        panic!("not segmented");
    };
    let mut out = [0u8; 100];
    let n = segs.next().unwrap().write(&mut out).unwrap();
    assert_eq!(&out[26..28], &[0xff, 0xff]);
    assert!(l4_csum_ok(&out[..n]));
    // And completed without GSO.
    let mut read = kernel_gso(&pkt, VIRTIO_NET_HDR_GSO_NONE, 0);
    let TunRead::Packet(p) = parse_read(&mut read, 1500).unwrap() else {
        panic!("segmented");
    };
    assert_eq!(&p[26..28], &[0xff, 0xff]);
}

/// Cuts a read to `n` packet bytes and zeroes `hdr_len`, so the cut is
/// what the parser meets rather than the `hdr_len` check.
fn cut(b: &mut Vec<u8>, n: usize) {
    b.truncate(VNET_HDR_LEN + n);
    b[2..4].fill(0);
}

#[test]
fn malformed_reads_are_errors() {
    use OffloadError as E;
    let tcp = || kernel_gso(&tcp4(&Pkt::default()), VIRTIO_NET_HDR_GSO_TCPV4, 50);
    let udp = || kernel_gso(&udp4(&Pkt::default()), VIRTIO_NET_HDR_GSO_UDP_L4, 50);
    // A const, not a local: closures that capture nothing can be borrowed
    // for the whole table.
    const V: usize = VNET_HDR_LEN;
    type Edit<'a> = &'a dyn Fn(&mut Vec<u8>);
    // (name, read, edit, mtu, error); the reads carry 140 packet bytes.
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, Edit<'_>, usize, OffloadError)> = vec![
        ("short vnet header", tcp(), &|b| b.truncate(5), 1500, E::ShortVnetHeader(5)),
        ("empty packet", tcp(), &|b| b.truncate(V), 1500, E::HdrLenOutOfRange { hdr_len: 40, len: 0 }),
        ("truncated ip header", tcp(), &|b| cut(b, 12), 1500, E::TruncatedIp),
        ("hdr_len past the end", tcp(), &|b| b[2] = 200, 1500, E::HdrLenOutOfRange { hdr_len: 200, len: 140 }),
        ("gso_size 0", tcp(), &|b| b[4..6].fill(0), 1500, E::ZeroGsoSize),
        ("ipv4 ihl 4", tcp(), &|b| b[V] = 0x44, 1500, E::BadIpv4HeaderLen(4)),
        ("ipv4 ihl past the end", tcp(), &|b| { cut(b, 40); b[V] = 0x4f }, 1500, E::TruncatedIp),
        ("ip version 5", tcp(), &|b| b[V] = 0x55, 1500, E::BadIpVersion(5)),
        ("unknown protocol", tcp(), &|b| b[V + 9] = 47, 1500, E::UnsupportedProtocol(47)),
        ("ipv4 more fragments", tcp(), &|b| b[V + 6] = 0x20, 1500, E::Fragment),
        ("ipv4 fragment offset", tcp(), &|b| b[V + 7] = 1, 1500, E::Fragment),
        ("tcp data offset 4", tcp(), &|b| b[V + 32] = 0x40, 1500, E::BadTcpHeaderLen(4)),
        ("tcp header truncated", tcp(), &|b| cut(b, 30), 1500, E::TruncatedTransport),
        ("tcp options past the end", tcp(), &|b| { cut(b, 50); b[V + 32] = 0xf0 }, 1500, E::TruncatedTransport),
        ("udp header truncated", udp(), &|b| cut(b, 25), 1500, E::TruncatedTransport),
        ("tcpv6 type on ipv4", tcp(), &|b| b[1] = VIRTIO_NET_HDR_GSO_TCPV6, 1500,
            E::GsoTypeMismatch { gso_type: 4, version: 4, protocol: 6 }),
        ("udp type on tcp", tcp(), &|b| b[1] = VIRTIO_NET_HDR_GSO_UDP_L4, 1500,
            E::GsoTypeMismatch { gso_type: 5, version: 4, protocol: 6 }),
        ("tcp type on udp", udp(), &|b| b[1] = VIRTIO_NET_HDR_GSO_TCPV4, 1500,
            E::GsoTypeMismatch { gso_type: 1, version: 4, protocol: 17 }),
        ("legacy ufo", udp(), &|b| b[1] = VIRTIO_NET_HDR_GSO_UDP, 1500, E::UnsupportedGsoType(3)),
        ("unknown gso type", tcp(), &|b| b[1] = 9, 1500, E::UnsupportedGsoType(9)),
        ("csum_start not the transport", tcp(), &|b| b[6] = 24, 1500,
            E::ChecksumOffsetMismatch { start: 24, offset: 16 }),
        ("csum_offset not the checksum", tcp(), &|b| b[8] = 6, 1500,
            E::ChecksumOffsetMismatch { start: 20, offset: 6 }),
        ("no payload", tcp(), &|b| cut(b, 40), 1500, E::EmptyPayload),
        ("mtu below headers", tcp(), &|_| {}, 40, E::MtuTooSmall { mtu: 40, headers: 40 }),
        ("udp datagram over mtu", udp(), &|_| {}, 77, E::DatagramTooBig { len: 78, mtu: 77 }),
        ("needs_csum out of range", tcp(), &|b| { b[1] = 0; b[8] = 200 }, 1500,
            E::ChecksumOutOfRange { start: 20, offset: 200, len: 140 }),
        ("needs_csum at the last byte", tcp(), &|b| { b[1] = 0; b[6] = 139; b[8] = 0 }, 1500,
            E::ChecksumOutOfRange { start: 139, offset: 0, len: 140 }),
    ];
    for (name, mut read, edit, mtu, want) in cases {
        edit(&mut read);
        assert_eq!(parse_read(&mut read, mtu).map(|_| ()), Err(want), "{name}");
    }
}

#[test]
fn ipv6_extension_headers_are_refused() {
    for nh in [0u8, 43, 44, 50, 51, 60] {
        let mut read = kernel_gso(&tcp6(&Pkt::default()), VIRTIO_NET_HDR_GSO_TCPV6, 50);
        read[VNET_HDR_LEN + 6] = nh;
        assert_eq!(
            parse_read(&mut read, 1500).map(|_| ()),
            Err(OffloadError::Ipv6ExtensionHeader(nh)),
            "next header {nh}"
        );
    }
}
