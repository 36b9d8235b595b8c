//! Coalescing tests: table rows for what merges and what must not,
//! ordering across flows, limits; every merged write is checked
//! independently and split back into the packets it merged.

use super::*;
use crate::engine::offload::split::{parse_read, TunRead};
use crate::engine::offload::testutil::*;
use crate::engine::offload::virtio::VIRTIO_NET_HDR_GSO_NONE;

/// Consecutive segments (TCP) or datagrams (UDP) of `sizes` payload bytes,
/// sequence numbers and IDs counting up.
fn tcp_run(build: fn(&Pkt) -> Vec<u8>, base: &Pkt, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let p = Pkt {
            seq: base.seq.wrapping_add(off as u32),
            id: base.id.wrapping_add(i as u16),
            payload: payload(n, off),
            ..base.clone()
        };
        out.push(build(&p));
        off += n;
    }
    out
}

/// The bytes each write puts on the TUN.
fn writes(c: &mut Coalescer, pkts: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u32>)> {
    let get = |i: usize| pkts[i].as_slice();
    c.plan(pkts)
        .map(|w| {
            let mut v = vec![0u8; w.total_len(get)];
            assert_eq!(w.copy_to(get, &mut v), Ok(v.len()));
            // The iovec view gives the same bytes.
            let mut iov = w.header().to_vec();
            w.parts(get).for_each(|p| iov.extend_from_slice(p));
            assert_eq!(iov, v);
            assert_eq!(w.is_single(), w.members().len() == 1);
            assert_eq!(w.header().len(), VNET_HDR_LEN + w.skip());
            // The in-place layout: header over the first member's headers.
            let first = &pkts[w.members()[0] as usize];
            let mut inplace = w.header().to_vec();
            inplace.extend_from_slice(&first[w.skip()..]);
            for &m in &w.members()[1..] {
                inplace.extend_from_slice(&pkts[m as usize][w.skip()..]);
            }
            assert_eq!(inplace, v);
            (v, w.members().to_vec())
        })
        .collect()
}

/// Checks a merged write independently and splits it back: the
/// segments must be the merged packets, byte for byte.
fn check_merged(bytes: &[u8], members: &[u32], pkts: &[Vec<u8>]) {
    let hdr = VirtioNetHdr::parse(bytes).unwrap();
    let sp = &bytes[VNET_HDR_LEN..];
    let first = &pkts[members[0] as usize];
    let l3 = l3_len(first);
    let tcp = pkt_proto(first) == 6;
    let l4 = if tcp {
        usize::from(first[l3 + 12] >> 4) * 4
    } else {
        8
    };
    assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert_eq!(usize::from(hdr.hdr_len), l3 + l4);
    assert_eq!(usize::from(hdr.csum_start), l3);
    assert_eq!(hdr.csum_offset, if tcp { 16 } else { 6 });
    assert_eq!(usize::from(hdr.gso_size), first.len() - l3 - l4);
    let want_type = match (tcp, first[0] >> 4) {
        (false, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
        (true, 4) => VIRTIO_NET_HDR_GSO_TCPV4,
        _ => VIRTIO_NET_HDR_GSO_TCPV6,
    };
    assert_eq!(hdr.gso_kind(), want_type);
    assert!(ip_csum_ok(sp));
    if first[0] >> 4 == 4 {
        assert_eq!(usize::from(u16::from_be_bytes([sp[2], sp[3]])), sp.len());
    } else {
        assert_eq!(
            usize::from(u16::from_be_bytes([sp[4], sp[5]])),
            sp.len() - 40
        );
    }
    let at = l3 + usize::from(hdr.csum_offset);
    assert_eq!(u16::from_be_bytes([sp[at], sp[at + 1]]), partial_csum(sp));
    // Split it as a TUN read would be.
    let mut read = bytes.to_vec();
    let TunRead::Segments(segs) = parse_read(&mut read, 65535).unwrap() else {
        panic!("not a super-packet");
    };
    assert_eq!(segs.len(), members.len());
    for (seg, &m) in segs.zip(members) {
        let mut out = vec![0u8; seg.len()];
        seg.write(&mut out).unwrap();
        assert_eq!(out, pkts[m as usize], "segment {m} after re-splitting");
    }
}

#[test]
fn merges() {
    let base = Pkt::default();
    let opts = Pkt {
        ip_opts: vec![1, 1, 1, 0],
        tcp_opts: vec![1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0],
        ..Pkt::default()
    };
    let no_df = Pkt {
        frag: 0,
        ..Pkt::default()
    };
    let psh = |p: Vec<u8>| {
        let mut p = p;
        let l3 = l3_len(&p);
        p[l3 + 13] |= TCP_PSH;
        let c = l4_csum_expected(&p);
        p[l3 + 16..l3 + 18].copy_from_slice(&c.to_be_bytes());
        p
    };
    let wrap = Pkt {
        seq: u32::MAX - 10,
        ..Pkt::default()
    };
    let cwr_first = {
        let mut v = tcp_run(tcp4, &base, &[500, 500]);
        v[0] = tcp4(&Pkt {
            flags: TCP_ACK | TCP_CWR,
            payload: payload(500, 0),
            ..base.clone()
        });
        v
    };
    let with_psh_last = {
        let mut v = tcp_run(tcp6, &base, &[700, 700, 300]);
        let last = v.pop().unwrap();
        v.push(psh(last));
        v
    };
    // (name, packets, UDP merging on, packets merged into the first write)
    #[rustfmt::skip]
    let rows: Vec<(&str, Vec<Vec<u8>>, bool, usize)> = vec![
        ("tcp4 equal", tcp_run(tcp4, &base, &[1000, 1000, 1000]), false, 3),
        ("tcp6 equal", tcp_run(tcp6, &base, &[1200, 1200]), false, 2),
        ("tcp4 smaller last", tcp_run(tcp4, &base, &[1000, 1000, 10]), false, 3),
        ("tcp6 psh on last", with_psh_last, false, 3),
        ("tcp4 cwr on first", cwr_first, false, 2),
        ("tcp4 options equal", tcp_run(tcp4, &opts, &[600, 600, 600]), false, 3),
        ("tcp4 no DF, consecutive IDs", tcp_run(tcp4, &no_df, &[400, 400]), false, 2),
        ("tcp4 seq wraps", tcp_run(tcp4, &wrap, &[100, 100]), false, 2),
        ("tcp4 then a bigger one", tcp_run(tcp4, &base, &[500, 500, 600]), false, 2),
        ("udp4 equal", tcp_run(udp4, &base, &[1200, 1200, 1200]), true, 3),
        ("udp6 smaller last", tcp_run(udp6, &base, &[1200, 1200, 7]), true, 3),
        ("udp4 options", tcp_run(udp4, &opts, &[100, 100]), true, 2),
    ];
    let mut c = Coalescer::new(true);
    for (name, pkts, udp, merged) in rows {
        let mut c2 = Coalescer::new(udp);
        let w = writes(&mut c2, &pkts);
        assert_eq!(w.len(), 1 + pkts.len() - merged, "{name}: writes");
        assert_eq!(w[0].1.len(), merged, "{name}: members");
        check_merged(&w[0].0, &w[0].1, &pkts);
        if name.contains("cwr") {
            let h = VirtioNetHdr::parse(&w[0].0).unwrap();
            assert_eq!(h.gso_type & VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_ECN);
        }
        // A reused coalescer gives the same plan.
        assert_eq!(writes(&mut c, &pkts), w, "{name}: reuse");
    }
}

/// Rebuilds a packet with its checksums recomputed after an edit.
fn fix(mut p: Vec<u8>) -> Vec<u8> {
    let l3 = l3_len(&p);
    if p[0] >> 4 == 4 {
        p[10..12].fill(0);
        let c = !naive_sum(&p[..l3]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let c = l4_csum_expected(&p);
    let at = l3 + if pkt_proto(&p) == 6 { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    p
}

/// A timestamp option (with two NOPs before it) holding `v`.
fn ts(v: u8) -> Vec<u8> {
    vec![1, 1, 8, 10, 0, 0, 0, v, 0, 0, 0, 2]
}

#[test]
fn must_not_merge() {
    let base = Pkt::default();
    let second = |f: &dyn Fn(&mut Pkt)| {
        let mut p = Pkt {
            seq: base.seq + 100,
            id: base.id + 1,
            payload: payload(100, 100),
            ..base.clone()
        };
        f(&mut p);
        p
    };
    let first4 = tcp4(&base);
    let first6 = tcp6(&base);
    let firstu = udp4(&base);
    let edit = |p: Vec<u8>, f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = p;
        f(&mut p);
        p
    };
    type Row = (&'static str, Vec<u8>, Vec<u8>);
    // (name, first packet, second packet): each pair must be written as
    // two packets, untouched and in order.
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("source port", first4.clone(), tcp4(&second(&|p| p.sport += 1))),
        ("destination port", first4.clone(), tcp4(&second(&|p| p.dport += 1))),
        ("source address", first4.clone(), tcp4(&second(&|p| p.src4[3] = 9))),
        ("destination address", first6.clone(), tcp6(&second(&|p| p.dst6[0] = 0xfe))),
        ("ip version", first4.clone(), tcp6(&second(&|_| {}))),
        ("sequence gap", first4.clone(), tcp4(&second(&|p| p.seq += 1))),
        ("sequence behind", first4.clone(), tcp4(&second(&|p| p.seq -= 100))),
        ("different ack", first4.clone(), tcp4(&second(&|p| p.ack += 1))),
        ("different window", first4.clone(), tcp4(&second(&|p| p.window += 1))),
        ("syn", first4.clone(), tcp4(&second(&|p| p.flags |= TCP_SYN))),
        ("fin", first4.clone(), tcp4(&second(&|p| p.flags |= TCP_FIN))),
        ("rst", first4.clone(), tcp4(&second(&|p| p.flags |= TCP_RST))),
        ("urg", first4.clone(), tcp4(&second(&|p| p.flags |= TCP_URG))),
        ("no ack", first4.clone(), tcp4(&second(&|p| p.flags = TCP_PSH))),
        ("cwr on second", first4.clone(), tcp4(&second(&|p| p.flags |= TCP_CWR))),
        ("ece differs", first4.clone(), tcp4(&second(&|p| p.flags |= 0x40))),
        ("psh on first", tcp4(&Pkt { flags: TCP_ACK | TCP_PSH, ..base.clone() }), tcp4(&second(&|_| {}))),
        ("tcp options differ", tcp4(&Pkt { tcp_opts: ts(1), ..base.clone() }), tcp4(&second(&|p| p.tcp_opts = ts(2)))),
        ("tcp options size", first4.clone(), tcp4(&second(&|p| p.tcp_opts = vec![1, 1, 1, 1]))),
        ("urgent pointer", first4.clone(), fix(edit(tcp4(&second(&|_| {})), &|p| p[39] = 1))),
        ("ip options differ", tcp4(&Pkt { ip_opts: vec![1, 1, 1, 0], ..base.clone() }), tcp4(&second(&|p| p.ip_opts = vec![1, 1, 0, 0]))),
        ("ip options size", first4.clone(), tcp4(&second(&|p| p.ip_opts = vec![1, 1, 1, 0]))),
        ("ttl", first4.clone(), tcp4(&second(&|p| p.ttl = 63))),
        ("tos", first4.clone(), tcp4(&second(&|p| p.tos = 0x10))),
        ("ecn ce", tcp4(&Pkt { tos: 0x02, ..base.clone() }), tcp4(&second(&|p| p.tos = 0x03))),
        ("ipv6 traffic class", first6.clone(), tcp6(&second(&|p| p.tos = 0x03))),
        ("ipv6 flow label", first6.clone(), tcp6(&second(&|p| p.flow = 7))),
        ("ipv6 hop limit", first6.clone(), tcp6(&second(&|p| p.ttl = 1))),
        ("df differs", first4.clone(), tcp4(&second(&|p| p.frag = 0))),
        ("no df, id not consecutive", tcp4(&Pkt { frag: 0, ..base.clone() }), tcp4(&second(&|p| { p.frag = 0; p.id += 1; }))),
        ("ipv4 more fragments", first4.clone(), tcp4(&second(&|p| p.frag = 0x2000))),
        ("ipv4 fragment offset", first4.clone(), tcp4(&second(&|p| p.frag = 0x4001))),
        ("bigger than first", first4.clone(), tcp4(&second(&|p| p.payload = payload(101, 100)))),
        ("pure ack", first4.clone(), tcp4(&second(&|p| p.payload.clear()))),
        ("first is a pure ack", tcp4(&Pkt { payload: vec![], ..base.clone() }), tcp4(&base)),
        ("bad l4 checksum on second", first4.clone(), edit(tcp4(&second(&|_| {})), &|p| p[50] ^= 1)),
        ("bad l4 checksum on first", edit(first4.clone(), &|p| p[50] ^= 1), tcp4(&second(&|_| {}))),
        ("bad ipv4 header checksum", first4.clone(), edit(tcp4(&second(&|_| {})), &|p| p[10] ^= 1)),
        ("ipv4 total length short", first4.clone(), edit(tcp4(&second(&|_| {})), &|p| p.push(0))),
        ("ipv6 payload length short", first6.clone(), edit(tcp6(&second(&|_| {})), &|p| p.push(0))),
        ("ipv6 extension header", first6.clone(), edit(tcp6(&second(&|_| {})), &|p| p[6] = 0)),
        ("tcp then udp", first4.clone(), udp4(&second(&|_| {}))),
        ("udp zero checksum", firstu.clone(), edit(udp4(&second(&|_| {})), &|p| p[26..28].fill(0))),
        ("udp length field", firstu.clone(), fix(edit(udp4(&second(&|_| {})), &|p| p[25] -= 1))),
        ("udp bigger than first", firstu.clone(), udp4(&second(&|p| p.payload = payload(101, 0)))),
        ("udp port", firstu.clone(), udp4(&second(&|p| p.sport = 1))),
        ("udp ttl", firstu.clone(), udp4(&second(&|p| p.ttl = 1))),
        ("not ip", first4.clone(), vec![0x00; 60]),
        ("icmp", first4.clone(), fix(edit(tcp4(&second(&|_| {})), &|p| p[9] = 1))),
    ];
    let mut c = Coalescer::new(true);
    for (name, a, b) in rows {
        let pkts = vec![a, b];
        let w = writes(&mut c, &pkts);
        assert_eq!(w.len(), 2, "{name}: merged");
        for (i, (bytes, members)) in w.iter().enumerate() {
            assert_eq!(members, &[i as u32], "{name}: order");
            assert_eq!(bytes[..VNET_HDR_LEN], [0; VNET_HDR_LEN], "{name}");
            assert_eq!(bytes[VNET_HDR_LEN..], pkts[i][..], "{name}: untouched");
        }
    }
}

#[test]
fn after_a_short_segment_a_new_run_starts() {
    let pkts = tcp_run(tcp4, &Pkt::default(), &[100, 50, 50, 50]);
    let w = writes(&mut Coalescer::new(false), &pkts);
    let members: Vec<_> = w.iter().map(|w| w.1.clone()).collect();
    // 100+50 (short closes it), then 50+50 (equal to the new first).
    assert_eq!(members, [vec![0, 1], vec![2, 3]]);
    check_merged(&w[0].0, &w[0].1, &pkts);
    check_merged(&w[1].0, &w[1].1, &pkts);
}

#[test]
fn interleaved_flows_merge_separately_in_order() {
    let a = tcp_run(tcp4, &Pkt::default(), &[300, 300, 300]);
    let b = tcp_run(
        tcp6,
        &Pkt {
            sport: 5,
            ..Pkt::default()
        },
        &[200, 200],
    );
    let u = tcp_run(udp4, &Pkt::default(), &[80, 80]);
    let icmp = fix({
        let mut p = tcp4(&Pkt::default());
        p[9] = 1;
        p
    });
    // a0 b0 u0 a1 icmp b1 u1 a2
    let pkts = vec![
        a[0].clone(),
        b[0].clone(),
        u[0].clone(),
        a[1].clone(),
        icmp,
        b[1].clone(),
        u[1].clone(),
        a[2].clone(),
    ];
    let w = writes(&mut Coalescer::new(true), &pkts);
    let members: Vec<_> = w.iter().map(|w| w.1.clone()).collect();
    assert_eq!(members, [vec![0, 3, 7], vec![1, 5], vec![2, 6], vec![4]]);
    check_merged(&w[0].0, &w[0].1, &pkts);
    check_merged(&w[1].0, &w[1].1, &pkts);
    check_merged(&w[2].0, &w[2].1, &pkts);
    // Without UDP support the datagrams go alone, in place.
    let w = writes(&mut Coalescer::new(false), &pkts);
    let members: Vec<_> = w.iter().map(|w| w.1.clone()).collect();
    assert_eq!(
        members,
        [vec![0, 3, 7], vec![1, 5], vec![2], vec![4], vec![6]]
    );
}

#[test]
fn a_lone_packet_of_the_flow_closes_its_run() {
    // a0, a pure ACK of the same flow, a1: a1 must not overtake the ACK.
    let a = tcp_run(tcp4, &Pkt::default(), &[300, 300]);
    let ack = tcp4(&Pkt {
        payload: vec![],
        seq: Pkt::default().seq + 300,
        ..Pkt::default()
    });
    let pkts = vec![a[0].clone(), ack, a[1].clone()];
    let w = writes(&mut Coalescer::new(true), &pkts);
    let members: Vec<_> = w.iter().map(|w| w.1.clone()).collect();
    assert_eq!(members, [vec![0], vec![1], vec![2]]);
}

#[test]
fn limits_segments_and_size() {
    let small = tcp_run(tcp4, &Pkt::default(), &[10; MAX_SEGMENTS + 3]);
    let w = writes(&mut Coalescer::new(false), &small);
    assert_eq!(w.len(), 2);
    assert_eq!((w[0].1.len(), w[1].1.len()), (MAX_SEGMENTS, 3));
    check_merged(&w[0].0, &w[0].1, &small);
    // 40 + 50 * 1300 = 65040; one more segment would pass 65535.
    let big = tcp_run(tcp4, &Pkt::default(), &[1300; 51]);
    let w = writes(&mut Coalescer::new(false), &big);
    assert_eq!(w.len(), 2);
    assert_eq!(w[0].1.len(), 50);
    assert!(w[0].0.len() - VNET_HDR_LEN <= MAX_PACKET_LEN);
    check_merged(&w[0].0, &w[0].1, &big);
}

#[test]
fn empty_batch_and_singles() {
    let mut c = Coalescer::new(true);
    assert_eq!(c.plan::<Vec<u8>>(&[]).len(), 0);
    let pkts = vec![tcp4(&Pkt::default())];
    let w: Vec<_> = c.plan(&pkts).collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].header(), &VirtioNetHdr::NONE.to_bytes());
    assert_eq!(w[0].skip(), 0);
    assert!(w[0].is_single());
    let h = VirtioNetHdr::parse(w[0].header()).unwrap();
    assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_NONE);
}

#[test]
fn copy_to_short_buffer_is_an_error() {
    let pkts = tcp_run(tcp4, &Pkt::default(), &[100, 100]);
    let mut c = Coalescer::new(false);
    let w = c.plan(&pkts).next().unwrap();
    let get = |i: usize| pkts[i].as_slice();
    assert_eq!(w.total_len(get), VNET_HDR_LEN + 40 + 200);
    let mut out = [0u8; 100];
    assert_eq!(
        w.copy_to(get, &mut out),
        Err(OffloadError::BufferTooSmall {
            needed: 250,
            available: 100
        })
    );
}
