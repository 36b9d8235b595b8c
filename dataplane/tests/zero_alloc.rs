//! The packet path allocates nothing: after a handshake, sealing a batch of
//! packets through `Interface::encrypt_batch` and opening each of them with
//! `Interface::receive` makes no heap allocation; neither do the offload
//! split and coalescer, nor the engine's shard on its whole way out (a TSO
//! super-packet in, GSO sends out) and in (GRO receives in, one coalesced
//! TUN write out). A counting global allocator (this test binary's own)
//! proves it.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Instant, SystemTime};

use corewire_dataplane::proto::interface::{Interface, Received};
use corewire_dataplane::proto::keys::PrivateKey;
use corewire_dataplane::proto::messages::{HEADROOM, TAILROOM};
use corewire_dataplane::proto::session::PacketBuf;
use corewire_testkit::alloc::{allocations, counting, CountingAllocator};
use corewire_testkit::packets::{ipv4_filled, tcp_tso_read, IPV4_HEADER_LEN};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// An IPv4 packet of `len` bytes in all.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    ipv4_filled(src, dst, len - IPV4_HEADER_LEN, 0)
}

#[test]
fn seal_and_open_allocate_nothing() {
    let now = Instant::now();
    let wall = SystemTime::now();
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (pa, pb) = (ka.public_key(), kb.public_key());
    let mut a = Interface::new(now, wall);
    let mut b = Interface::new(now, wall);
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    let ia = a.add_peer(pb).unwrap();
    let ib = b.add_peer(pa).unwrap();
    let (inner_a, inner_b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    a.allow(ia, IpAddr::V4(inner_b), 32).unwrap();
    b.allow(ib, IpAddr::V4(inner_a), 32).unwrap();
    let sa: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let sb: SocketAddr = "192.0.2.2:2".parse().unwrap();

    // Handshake (allocates: sessions are created here, not on the path).
    let init = a.initiate(ia, now).unwrap();
    let mut p = PacketBuf::new(init.as_bytes().to_vec(), 0, init.as_bytes().len()).unwrap();
    let Received::Reply { reply, .. } = b.receive(sa, &mut p, now) else {
        panic!("no response")
    };
    let mut p = PacketBuf::new(reply.as_bytes().to_vec(), 0, reply.as_bytes().len()).unwrap();
    let Received::HandshakeComplete { keepalive, .. } = a.receive(sb, &mut p, now) else {
        panic!("no completion")
    };
    let mut p = PacketBuf::new(keepalive.as_bytes().to_vec(), 0, 32).unwrap();
    assert!(matches!(
        b.receive(sa, &mut p, now),
        Received::Keepalive { .. }
    ));

    // Buffers from the pool the engine would use: allocated before.
    let template = ipv4(inner_a, inner_b, 1420);
    let mut batch: Vec<PacketBuf<Vec<u8>>> = (0..64)
        .map(|_| {
            let mut v = vec![0u8; HEADROOM + 1420 + TAILROOM];
            v[HEADROOM..HEADROOM + 1420].copy_from_slice(&template);
            PacketBuf::new(v, HEADROOM, 1420).unwrap()
        })
        .collect();

    for round in 0..3 {
        for pkt in batch.iter_mut() {
            assert!(pkt.set_bounds(HEADROOM, 1420));
            pkt.data_mut().copy_from_slice(&template);
        }
        counting(true);
        let out = a.encrypt_batch(ia, &mut batch, 1420, now);
        let mut delivered = 0;
        for pkt in batch.iter_mut() {
            if let Received::Data { .. } = b.receive(sa, pkt, now) {
                delivered += 1;
            }
        }
        counting(false);
        assert_eq!(out.sealed, 64, "round {round}");
        assert!(out.handshake.is_none());
        assert_eq!(delivered, 64, "round {round}");
        assert_eq!(&batch[0].data()[..1420], &template[..], "round {round}");
    }
    assert_eq!(allocations(), 0, "the seal/open path allocated");
}

/// A TUN read as the kernel hands it over with TSO: a TCP/IPv4
/// super-packet of `payload` bytes cut at `mss`.
fn tso_read(payload: usize, mss: u16) -> Vec<u8> {
    let bytes: Vec<u8> = (0..payload).map(|i| (i * 7) as u8).collect();
    let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    tcp_tso_read(src.into(), dst.into(), &bytes, mss)
}

#[test]
fn offload_split_and_coalesce_allocate_nothing() {
    use corewire_dataplane::engine::offload::{parse_read, Coalescer, TunRead};
    let read = tso_read(64_000, 1380);
    let mut work = read.clone();
    // One buffer per segment, as the worker's pool would give.
    let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 2048]).collect();
    let mut lens = vec![0usize; 64];
    let mut coalescer = Coalescer::new(true);
    // Warm-up round: the coalescer sizes its tables once.
    for round in 0..3 {
        work.copy_from_slice(&read);
        counting(round > 0);
        let Ok(TunRead::Segments(segments)) = parse_read(&mut work, 1420) else {
            panic!("not a super-packet")
        };
        let mut n = 0;
        for (seg, (buf, len)) in segments.zip(bufs.iter_mut().zip(lens.iter_mut())) {
            *len = seg.write(&mut buf[HEADROOM..]).unwrap();
            n += 1;
        }
        let packets = |i: usize| &bufs[i][HEADROOM..HEADROOM + lens[i]];
        let mut total = 0;
        let mut count = 0;
        for w in coalescer.plan_with(n, packets) {
            total += w.total_len(packets);
            count += 1;
        }
        counting(false);
        assert_eq!(n, 64_000usize.div_ceil(1380), "round {round}");
        assert_eq!(count, 1, "one super-packet back, round {round}");
        assert_eq!(total, read.len(), "the same bytes back, round {round}");
    }
    assert_eq!(allocations(), 0, "split or coalesce allocated");
}

#[test]
fn shard_paths_allocate_nothing() {
    use corewire_dataplane::engine::mem::{MemNet, Sink};
    use corewire_dataplane::engine::shard::TUN_READ_AT;
    use corewire_dataplane::engine::tun::Offload;
    let mut net = MemNet::pair(Offload {
        tso: true,
        uso: true,
    });
    let (from, now) = (net.devices[0].addr(), net.now);
    let read = tso_read(64_000, 1380);
    let (mut out, mut capture, mut sink) = (Sink::default(), Sink::capturing(), Sink::default());
    for round in 0..4 {
        // The TUN read is in its buffer before the worker runs.
        let a = net.devices[0].shard_mut(0).unwrap();
        let mut buf = a.pool().get().expect("a buffer under the ceiling");
        buf[TUN_READ_AT..TUN_READ_AT + read.len()].copy_from_slice(&read);
        counting(round > 0);
        a.tun_read(buf, read.len(), now);
        a.flush(now);
        out.execute(a);
        counting(false);
        // The same again, captured, for the receiver (fresh counters).
        let mut buf = a.pool().get().expect("a buffer under the ceiling");
        buf[TUN_READ_AT..TUN_READ_AT + read.len()].copy_from_slice(&read);
        a.tun_read(buf, read.len(), now);
        a.flush(now);
        capture.execute(a);
        let sends = capture.capture.as_mut().map(std::mem::take).unwrap();
        let b = net.devices[1].shard_mut(0).unwrap();
        let bufs: Vec<_> = sends
            .iter()
            .map(|(bytes, _)| {
                let mut buf = b.pool().get().expect("a buffer under the ceiling");
                buf[64..64 + bytes.len()].copy_from_slice(bytes);
                buf
            })
            .collect();
        counting(round > 0);
        for (buf, (bytes, segment)) in bufs.into_iter().zip(&sends) {
            b.udp_received(from, buf, 64, bytes.len(), *segment, now);
        }
        b.flush(now);
        sink.execute(b);
        counting(false);
    }
    assert_eq!(out.datagrams, 4 * 64_000usize.div_ceil(1380));
    assert_eq!(
        (sink.writes, sink.parts),
        (4, 4 * 64_000usize.div_ceil(1380))
    );
    assert_eq!(allocations(), 0, "the shard's paths allocated");
}

/// Hostile datagrams cost no allocation: garbage, transport messages with
/// receiver indexes nobody has, truncated handshake messages, and valid-mac1
/// initiations that put the hub under load and get cookie replies. Each
/// is dropped or answered from the pools and the shard's kept capacity.
#[test]
fn hostile_datagrams_allocate_nothing() {
    use corewire_dataplane::engine::limits::UNDER_LOAD_AT;
    use corewire_dataplane::engine::mem::{MemNet, Sink};
    use corewire_dataplane::engine::tun::Offload;
    let mut net = MemNet::pair(Offload {
        tso: false,
        uso: false,
    });
    let now = net.now;
    let hub_public = *net.devices[1].shards()[0].interface().public_key().unwrap();
    let mut attacker = Interface::new(now, SystemTime::now());
    attacker.set_private_key(Some(PrivateKey::generate()));
    let target = attacker.add_peer(hub_public).unwrap();
    let init = attacker.initiate(target, now).unwrap().as_bytes().to_vec();
    let mut garbage = vec![0xa5u8; 200];
    garbage[0] = 9;
    let mut unknown_index = vec![0u8; 96];
    unknown_index[0] = 4;
    unknown_index[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    let truncated = init[..100].to_vec();
    let mut sink = Sink::default();
    let hub = net.devices[1].shard_mut(0).unwrap();
    for round in 0..4 {
        for i in 0..(2 * UNDER_LOAD_AT) {
            let from = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8)),
                40_000,
            );
            for msg in [&garbage, &unknown_index, &truncated, &init] {
                let mut buf = hub.pool().get().expect("a buffer under the ceiling");
                buf[64..64 + msg.len()].copy_from_slice(msg);
                counting(round > 0);
                hub.udp_received(from, buf, 64, msg.len(), None, now);
                counting(false);
            }
        }
        // The queued initiations, past an eighth of the queue, are taken
        // in when the turn ends.
        counting(round > 0);
        hub.flush(now);
        sink.execute(hub);
        counting(false);
    }
    let c = hub.counters();
    assert!(c.under_load_signals > 0, "the hub went under load: {c:?}");
    assert!(sink.datagrams > 0, "cookie replies went out");
    assert_eq!(allocations(), 0, "hostile datagrams allocated");
}
