//! Tests across both directions: split then coalesce gives back the
//! kernel's super-packet byte for byte, and no input makes either panic.

use proptest::prelude::*;

use super::testutil::*;
use super::virtio::*;
use super::{parse_read, Coalescer, OffloadError, TunRead, MAX_PACKET_LEN, MAX_SEGMENTS};

/// Splits a TUN read into owned segments.
fn split(read: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut read = read.to_vec();
    match parse_read(&mut read, mtu)? {
        TunRead::Packet(p) => Ok(vec![p.to_vec()]),
        TunRead::Segments(segs) => Ok(segs
            .map(|s| {
                let mut out = vec![0u8; s.len()];
                s.write(&mut out).map(|_| out)
            })
            .collect::<Result<_, _>>()?),
    }
}

/// Coalesces packets into the byte streams of their TUN writes.
fn coalesce(c: &mut Coalescer, pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let get = |i: usize| pkts[i].as_slice();
    c.plan(pkts)
        .map(|w| {
            let mut v = w.header().to_vec();
            w.parts(get).for_each(|p| v.extend_from_slice(p));
            v
        })
        .collect()
}

#[test]
fn split_then_coalesce_restores_the_super_packet() {
    let big = |n| Pkt {
        payload: payload(n, 0),
        ..Pkt::default()
    };
    let rows: Vec<(&str, Vec<u8>)> = vec![
        (
            "tcp4",
            kernel_gso(&tcp4(&big(5000)), VIRTIO_NET_HDR_GSO_TCPV4, 1380),
        ),
        (
            "tcp4 options, no DF, PSH",
            kernel_gso(
                &tcp4(&Pkt {
                    ip_opts: vec![1, 1, 1, 0],
                    tcp_opts: vec![1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8],
                    frag: 0,
                    flags: TCP_ACK | TCP_PSH,
                    ..big(4000)
                }),
                VIRTIO_NET_HDR_GSO_TCPV4,
                1000,
            ),
        ),
        (
            "tcp4 ECN, CWR",
            kernel_gso(
                &tcp4(&Pkt {
                    flags: TCP_ACK | TCP_CWR,
                    ..big(3000)
                }),
                VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
                1000,
            ),
        ),
        (
            "tcp6",
            kernel_gso(&tcp6(&big(60000)), VIRTIO_NET_HDR_GSO_TCPV6, 1360),
        ),
        (
            "udp4",
            kernel_gso(&udp4(&big(6000)), VIRTIO_NET_HDR_GSO_UDP_L4, 1400),
        ),
        (
            "udp6",
            kernel_gso(&udp6(&big(3001)), VIRTIO_NET_HDR_GSO_UDP_L4, 1000),
        ),
    ];
    let mut c = Coalescer::new(true);
    for (name, read) in rows {
        let segs = split(&read, 1500).unwrap();
        assert!(segs.len() > 1, "{name}");
        let writes = coalesce(&mut c, &segs);
        assert_eq!(writes.len(), 1, "{name}: one write");
        assert_eq!(writes[0], read, "{name}: same bytes");
    }
}

#[test]
fn fin_stays_out_of_a_super_packet() {
    // FIN ends up on the last segment, which is written alone after the
    // rest: the receiver sees the same packets in the same order.
    let pkt = tcp4(&Pkt {
        flags: TCP_ACK | TCP_FIN,
        payload: payload(3000, 0),
        ..Pkt::default()
    });
    let read = kernel_gso(&pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1000);
    let segs = split(&read, 1500).unwrap();
    let writes = coalesce(&mut Coalescer::new(false), &segs);
    assert_eq!(writes.len(), 2);
    assert_eq!(split(&writes[0], 65535).unwrap(), segs[..2]);
    assert_eq!(writes[1][VNET_HDR_LEN..], segs[2][..]);
}

/// With DF set an IPv4 ID means nothing (RFC 6864) and merging may renumber
/// it: zero it and the header checksum before comparing.
fn df_id_free(mut p: Vec<u8>) -> Vec<u8> {
    if p[0] >> 4 == 4 && p[6] & 0x40 != 0 {
        p[4..6].fill(0);
        p[10..12].fill(0);
    }
    p
}

/// A valid super-packet read described by a few numbers.
fn gso_read(v6: bool, tcp: bool, len: usize, gso: u16, opts: bool) -> Vec<u8> {
    let p = Pkt {
        payload: payload(len, 7),
        tcp_opts: if opts && tcp {
            vec![1, 1, 1, 1]
        } else {
            vec![]
        },
        ip_opts: if opts && !v6 {
            vec![1, 1, 1, 0]
        } else {
            vec![]
        },
        ..Pkt::default()
    };
    match (v6, tcp) {
        (false, true) => kernel_gso(&tcp4(&p), VIRTIO_NET_HDR_GSO_TCPV4, gso),
        (true, true) => kernel_gso(&tcp6(&p), VIRTIO_NET_HDR_GSO_TCPV6, gso),
        (false, false) => kernel_gso(&udp4(&p), VIRTIO_NET_HDR_GSO_UDP_L4, gso),
        (true, false) => kernel_gso(&udp6(&p), VIRTIO_NET_HDR_GSO_UDP_L4, gso),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip_any_sizes(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        opts in any::<bool>(),
        gso in 1u16..1400,
        nseg in 1usize..100,
        tail in 0usize..1400,
    ) {
        let len = (nseg - 1) * usize::from(gso) + 1 + tail % usize::from(gso);
        let read = gso_read(v6, tcp, len, gso, opts);
        let segs = split(&read, 1500).unwrap();
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(gso)));
        for s in &segs {
            prop_assert!(ip_csum_ok(s) && l4_csum_ok(s));
        }
        let writes = coalesce(&mut Coalescer::new(true), &segs);
        if segs.len() == 1 {
            let mut alone = VirtioNetHdr::NONE.to_bytes().to_vec();
            alone.extend_from_slice(&segs[0]);
            prop_assert_eq!(&writes, &vec![alone]);
        } else if segs.len() <= MAX_SEGMENTS && read.len() - VNET_HDR_LEN <= MAX_PACKET_LEN {
            prop_assert_eq!(writes.len(), 1);
            prop_assert_eq!(&writes[0], &read);
        }
        // However it was cut, the writes split back into the segments.
        let mut again = Vec::new();
        for w in &writes {
            again.extend(split(w, 65535).unwrap());
        }
        prop_assert_eq!(again, segs);
    }

    #[test]
    fn arbitrary_reads_never_panic(read in proptest::collection::vec(any::<u8>(), 0..300), mtu in 0usize..2000) {
        let _ = split(&read, mtu);
    }

    #[test]
    fn mutated_reads_never_panic(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..6),
        cut in 0usize..400,
        mtu in 0usize..2000,
    ) {
        let mut read = gso_read(v6, tcp, 300, 100, true);
        for (at, b) in edits {
            if let Some(x) = read.get_mut(at) {
                *x = b;
            }
        }
        read.truncate(cut.max(1));
        if let Ok(segs) = split(&read, mtu) {
            for s in &segs {
                prop_assert!(s.len() <= mtu.max(read.len()));
            }
        }
    }

    #[test]
    fn arbitrary_batches_never_panic(
        pkts in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..120),
                (any::<bool>(), any::<bool>(), 1usize..300, 0usize..80, any::<u8>())
                    .prop_map(|(v6, tcp, len, at, b)| {
                        let read = gso_read(v6, tcp, len, 1000, false);
                        let mut p = read[VNET_HDR_LEN..].to_vec();
                        if let Some(x) = p.get_mut(at) { *x = b; }
                        p
                    }),
            ],
            0..40,
        ),
    ) {
        let mut c = Coalescer::new(true);
        let mut seen = vec![false; pkts.len()];
        let get = |i: usize| pkts[i].as_slice();
        for w in c.plan(&pkts) {
            for &m in w.members() {
                prop_assert!(!std::mem::replace(&mut seen[m as usize], true));
            }
            let mut out = vec![0u8; w.total_len(get)];
            prop_assert!(w.copy_to(get, &mut out).is_ok());
            if !w.is_single() {
                // Every super-packet is one the kernel would accept and
                // splits back into the members.
                let segs: Vec<Vec<u8>> = split(&out, 65535).unwrap().into_iter().map(df_id_free).collect();
                let want: Vec<Vec<u8>> = w.members().iter().map(|&m| df_id_free(pkts[m as usize].clone())).collect();
                prop_assert_eq!(segs, want);
            }
        }
        prop_assert!(seen.iter().all(|&s| s));
    }
}
