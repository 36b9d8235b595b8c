//! The packet path allocates nothing: after a handshake, sealing a batch of
//! packets through `Interface::encrypt_batch` and opening each of them with
//! `Interface::receive` makes no heap allocation. A counting global
//! allocator (this test binary's own) proves it.

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Instant, SystemTime};

use corewire_dataplane::proto::interface::{Interface, Received};
use corewire_dataplane::proto::keys::PrivateKey;
use corewire_dataplane::proto::messages::{HEADROOM, TAILROOM};
use corewire_dataplane::proto::session::PacketBuf;

/// Counts the allocations a thread makes while its `COUNTING` is set, so
/// tests running side by side do not count each other's.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

fn counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
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

/// A TUN read as the kernel hands it over with TSO: a virtio-net header
/// and a TCP/IPv4 super-packet of `payload` bytes cut at `mss`.
fn tso_read(payload: usize, mss: u16) -> Vec<u8> {
    use corewire_dataplane::engine::offload::virtio::{
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
    };
    use corewire_dataplane::engine::offload::VirtioNetHdr;
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut read = hdr.to_bytes().to_vec();
    let mut ip = ipv4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        40 + payload,
    );
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6; // TCP
    ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&5201u16.to_be_bytes());
    ip[24..28].copy_from_slice(&1u32.to_be_bytes()); // sequence
    ip[32] = 5 << 4; // data offset
    ip[33] = 0x10; // ACK
    ip[34..36].copy_from_slice(&512u16.to_be_bytes()); // window
    for (i, b) in ip[40..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    read.extend_from_slice(&ip);
    read
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
