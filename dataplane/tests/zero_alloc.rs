//! The packet path allocates nothing: after a handshake, sealing a batch of
//! packets through `Interface::encrypt_batch` and opening each of them with
//! `Interface::receive` makes no heap allocation. A counting global
//! allocator (this test binary's own) proves it.

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use corewire_dataplane::proto::interface::{Interface, Received};
use corewire_dataplane::proto::keys::PrivateKey;
use corewire_dataplane::proto::messages::{HEADROOM, TAILROOM};
use corewire_dataplane::proto::session::PacketBuf;

/// Counts allocations made while `COUNTING` is set (by any thread: the
/// test runs its measured section on one thread and nothing else runs).
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
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
        COUNTING.store(true, Ordering::SeqCst);
        let out = a.encrypt_batch(ia, &mut batch, 1420, now);
        let mut delivered = 0;
        for pkt in batch.iter_mut() {
            if let Received::Data { .. } = b.receive(sa, pkt, now) {
                delivered += 1;
            }
        }
        COUNTING.store(false, Ordering::SeqCst);
        assert_eq!(out.sealed, 64, "round {round}");
        assert!(out.handshake.is_none());
        assert_eq!(delivered, 64, "round {round}");
        assert_eq!(&batch[0].data()[..1420], &template[..], "round {round}");
    }
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "the seal/open path allocated"
    );
}
