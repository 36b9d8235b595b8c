//! The worker's packet path in memory, against `ring`'s raw
//! ChaCha20-Poly1305 on the same bytes in the same packets. No syscall is
//! made; what the worker hands to the kernel (iovec lists) is built and
//! dropped. The code mirrors the worker's (`engine/worker.rs`), whose
//! functions are private: `on_tun_read`, `on_tun_packet`, `flush_batch`,
//! `send_sealed` on the way out; `on_received`, `on_datagram`, `flush_rx`
//! on the way in. One worker, so no hand-over between workers.
//!
//! - `worker_encrypt_64k`: one TUN read of a 64 KiB TCP/IPv4 super-packet
//!   (virtio-net header, `GSO_TCPV4`, `NEEDS_CSUM`, MSS 1368 = MTU 1420
//!   minus 20 bytes of IPv4 and 32 of TCP with timestamps) is parsed
//!   (`parse_read`) and cut into 47 segments of 1420 bytes, each written
//!   with its checksums into its own pool buffer (`Pool::get_for`: a small
//!   one) at `HEADROOM`; each is checked against the routing-loop guard,
//!   routed
//!   (`Interface::route_with_len` on its destination, in a table of 64
//!   peers), batched per peer, sealed (`Interface::encrypt_batch`) and
//!   grouped into UDP GSO sends (runs of equal-size datagrams, at most 64
//!   and 65,000 bytes each: 44 + 3 here), whose iovec lists are built; the
//!   buffers then go back to the pool.
//! - `worker_encrypt_1420`: the same for one plain 1420-byte TCP packet read
//!   with a partial checksum (completed in place) and sealed where it lies.
//! - `worker_decrypt_64k`: the 47 datagrams arrive as two UDP GRO receives
//!   (the 44 and the 3 of the two GSO sends, back to back in a buffer after
//!   the kernel's receive header). Of each, the first datagram is opened
//!   where it lies and the others are first copied into (small) pool
//!   buffers of their own; each goes through `Interface::receive` (index lookup,
//!   replay window, AEAD, allowed source, trim); `Coalescer::plan_with`
//!   merges the batch into one TUN write, whose header is copied into the
//!   first packet's headroom and whose iovec list is built.
//!
//! Each group has `path` and `ring`, its reference: `seal_in_place_separate_tag`
//! or `open_in_place` over the same number of packets of the same sizes
//! in buffers of the same sizes (for decryption, in place in the same GRO
//! receive layout). `micro-report` divides them. The other functions time
//! parts of the path alone, for profiling: `split` (`parse_read` and the
//! segment writes), `memcpy` (the same bytes copied into the same buffers,
//! the floor for `split`), `parse` (a plain packet's header write-back and
//! `parse_read`, which completes its checksum), `receive` (the GRO receives
//! split and every datagram through `Interface::receive`, no TUN write),
//! `gro_copy` (the copies that split the GRO receives) and `plan`
//! (coalescing and iovecs over packets already opened).
//!
//! Decryption needs fresh counters every time (the replay window refuses a
//! repeat), so every iteration first seals the 47 segments anew with the
//! sending interface and lays the datagrams out in receive buffers,
//! untimed: `iter_custom` times only the worker's part, per iteration (a
//! TSC read costs ~20 ns against ~35 us of work). The `ring` reference gets
//! the same treatment: sealed into the same layout untimed, opened timed.
//! Both therefore open data that is warm in cache, as it is right after the
//! kernel copied it in. In the encrypt benchmarks the TUN read is in place
//! before the first iteration; a plain packet, sealed over its own read,
//! gets its 62 bytes of virtio-net, IP and TCP headers written back at the
//! start of each iteration (timed; a few nanoseconds).
//!
//! Before measuring, `main` runs every loop body with a counting allocator
//! and panics if one allocates; it also checks that the sealed datagrams
//! open at a receiver into exactly the segments the kernel would cut.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use corewire_bench::{nonce, raw_key, MTU};
use corewire_dataplane::engine::offload::virtio::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
};
use corewire_dataplane::engine::offload::{
    checksum, parse_read, Coalescer, TunRead, VirtioNetHdr, MAX_SEGMENTS, VNET_HDR_LEN,
};
use corewire_dataplane::engine::pool::{Buf, Packet, Pool};
use corewire_dataplane::proto::interface::{Interface, Received};
use corewire_dataplane::proto::keys::PrivateKey;
use corewire_dataplane::proto::messages::{HEADROOM, TAILROOM, TRANSPORT_MIN_LEN};
use corewire_dataplane::proto::peer::PeerId;
use corewire_dataplane::proto::session::PacketBuf;
use criterion::{criterion_group, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey};

/// Counts allocations while `COUNTING` is set (see `check_no_allocation`).
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
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
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

/// IPv4 header without options.
const IP_LEN: usize = 20;
/// TCP header with the timestamp option, as Linux sends by default.
const TCP_LEN: usize = 32;
/// Payload per segment: what the kernel's TSO uses as `gso_size` at MTU 1420.
const MSS: usize = MTU - IP_LEN - TCP_LEN;
/// Segments of the super-packet: as many full ones as an IP packet holds.
const SEGMENTS: usize = (65535 - IP_LEN - TCP_LEN) / MSS;
/// Most bytes per UDP GSO send (`MAX_GSO_BYTES` in the engine's `ops.rs`).
const MAX_GSO_BYTES: usize = 65000;
/// Most packets the worker seals in one batch (`MAX_BATCH` in `worker.rs`).
const MAX_BATCH: usize = 64;
/// Transport header and tag around every sealed packet.
const OVERHEAD: usize = TRANSPORT_MIN_LEN;

const INNER_SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const INNER_DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Offset of a TUN read in its buffer: the packet lands at `HEADROOM`.
const READ_AT: usize = HEADROOM - VNET_HDR_LEN;

/// A TCP/IPv4 packet from `INNER_SRC` to `INNER_DST` with the timestamp
/// option and `payload` bytes; its TCP checksum field holds the folded
/// pseudo-header sum, as the kernel hands it over with `NEEDS_CSUM`.
fn tcp4_partial(payload: usize, seq: u32, flags: u8) -> Vec<u8> {
    let total = IP_LEN + TCP_LEN + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&INNER_SRC.octets());
    p[16..20].copy_from_slice(&INNER_DST.octets());
    let c = checksum(&p[..IP_LEN]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut p[IP_LEN..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&7777u32.to_be_bytes());
    t[12] = ((TCP_LEN / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    // NOP, NOP, timestamp (kind 8, length 10).
    t[20..24].copy_from_slice(&[1, 1, 8, 10]);
    t[24..28].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[28..32].copy_from_slice(&0x0506_0708u32.to_be_bytes());
    for (i, b) in t[TCP_LEN..].iter_mut().enumerate() {
        *b = (i * 31 + i / 251) as u8;
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((TCP_LEN + payload) as u16).to_be_bytes());
    // checksum() is the complement of the folded sum; the field holds the sum.
    let partial = !checksum(&pseudo);
    p[IP_LEN + 16..IP_LEN + 18].copy_from_slice(&partial.to_be_bytes());
    p
}

/// What one TUN read returns: the virtio-net header, then the packet.
fn tun_read(gso: bool) -> Vec<u8> {
    let (payload, gso_type, gso_size) = if gso {
        (SEGMENTS * MSS, VIRTIO_NET_HDR_GSO_TCPV4, MSS as u16)
    } else {
        (MSS, VIRTIO_NET_HDR_GSO_NONE, 0)
    };
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (IP_LEN + TCP_LEN) as u16,
        gso_size,
        csum_start: IP_LEN as u16,
        csum_offset: 16,
    };
    let mut read = hdr.to_bytes().to_vec();
    read.extend_from_slice(&tcp4_partial(payload, 1_000_000, TCP_ACK | TCP_PSH));
    read
}

/// The segments the kernel would cut the super-packet read into, each a
/// complete IP packet.
fn segments() -> Vec<Vec<u8>> {
    let mut read = tun_read(true);
    let Ok(TunRead::Segments(segments)) = parse_read(&mut read, MTU) else {
        panic!("not a super-packet")
    };
    segments
        .map(|s| {
            let mut v = vec![0u8; s.len()];
            s.write(&mut v).expect("fits");
            v
        })
        .collect()
}

/// The destination of an IP packet (the worker's `destination`).
fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(b.into()))
        }
        _ => None,
    }
}

/// The UDP port the tunnel listens on.
const LISTEN_PORT: u16 = 51820;

/// Whether `packet` is a UDP datagram from our own listen port (the
/// worker's routing-loop guard, `is_own_datagram`, checked on every packet
/// read from the TUN).
fn is_own_datagram(packet: &[u8], port: u16) -> bool {
    let (proto, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let fragment = packet
                .get(6..8)
                .map_or(1, |b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff);
            if fragment != 0 {
                return false;
            }
            (packet.get(9).copied(), usize::from(packet[0] & 0x0f) * 4)
        }
        Some(6) => (packet.get(6).copied(), 40),
        _ => return false,
    };
    proto == Some(17)
        && packet
            .get(l4..l4 + 2)
            .is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) == port)
}

/// How the worker groups sealed datagrams of these lengths into UDP GSO
/// sends: runs of equal size (a smaller one may end a run), at most
/// `MAX_SEGMENTS` datagrams and `MAX_GSO_BYTES` bytes. Fills `runs` with
/// the number of datagrams of each send.
fn gso_runs(lens: impl IntoIterator<Item = usize>, runs: &mut Vec<usize>) {
    runs.clear();
    let (mut segment, mut last, mut count, mut bytes) = (0, 0, 0, 0);
    for len in lens {
        let fits = count > 0
            && len <= segment
            && last == segment
            && count < MAX_SEGMENTS
            && bytes + len <= MAX_GSO_BYTES;
        if !fits && count > 0 {
            runs.push(count);
            (count, bytes) = (0, 0);
        }
        if count == 0 {
            segment = len;
        }
        count += 1;
        bytes += len;
        last = len;
    }
    if count > 0 {
        runs.push(count);
    }
}

/// Two interfaces after a completed handshake: `a` sends to `b`. `a` also
/// holds 63 other peers with their own prefixes, so that routing is a
/// real longest-prefix match rather than a one-entry table.
struct Tunnel {
    a: Interface,
    b: Interface,
    /// `b` as a peer of `a`.
    peer_b: PeerId,
    /// `a`'s address as `b` sees it.
    from_a: SocketAddr,
    now: Instant,
}

fn tunnel() -> Tunnel {
    let now = Instant::now();
    let wall = SystemTime::now();
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (pka, pkb) = (ka.public_key(), kb.public_key());
    let mut a = Interface::new(now, wall);
    let mut b = Interface::new(now, wall);
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    for i in 1..64u8 {
        let other = a
            .add_peer(PrivateKey::generate().public_key())
            .expect("peer");
        a.allow(other, IpAddr::V4(Ipv4Addr::new(10, i, 0, 0)), 16)
            .expect("prefix");
    }
    let peer_b = a.add_peer(pkb).expect("peer");
    let peer_a = b.add_peer(pka).expect("peer");
    a.allow(peer_b, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 16)
        .expect("prefix");
    b.allow(peer_a, IpAddr::V4(INNER_SRC), 32).expect("prefix");
    let from_a: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
    let from_b: SocketAddr = "192.0.2.2:51820".parse().expect("addr");

    let init = a.initiate(peer_b, now).expect("initiation");
    let mut p = PacketBuf::new(init.as_bytes().to_vec(), 0, init.as_bytes().len()).expect("fits");
    let Received::Reply { reply, .. } = b.receive(from_a, &mut p, now) else {
        panic!("no handshake response")
    };
    let mut p = PacketBuf::new(reply.as_bytes().to_vec(), 0, reply.as_bytes().len()).expect("fits");
    let Received::HandshakeComplete { keepalive, .. } = a.receive(from_b, &mut p, now) else {
        panic!("handshake did not complete")
    };
    let len = keepalive.as_bytes().len();
    let mut p = PacketBuf::new(keepalive.as_bytes().to_vec(), 0, len).expect("fits");
    assert!(matches!(
        b.receive(from_a, &mut p, now),
        Received::Keepalive { .. }
    ));
    Tunnel {
        a,
        b,
        peer_b,
        from_a,
        now,
    }
}

/// The worker's send side for one TUN read, with no syscalls: the read
/// buffer is filled once (the kernel's copy is not the worker's cost);
/// everything from `parse_read` to the GSO iovec lists runs per iteration.
struct EncryptPath {
    iface: Interface,
    now: Instant,
    pool: Pool,
    /// The TUN read buffer (taken while a plain packet is sealed in it).
    read: Option<Buf>,
    read_ptr: *const u8,
    /// The read's bytes: the first `restore` are written again before each
    /// iteration (a plain packet is sealed in place, over them).
    template: Vec<u8>,
    restore: usize,
    batch: Vec<Packet>,
    batch_peer: Option<PeerId>,
    run: Vec<Packet>,
    iovs: [libc::iovec; MAX_SEGMENTS],
    /// Datagrams and sends of the last iteration (checked, then ignored).
    datagrams: usize,
    sends: usize,
    /// Copies of the sealed datagrams, kept only by the preflight check.
    capture: Option<Vec<Vec<u8>>>,
}

impl EncryptPath {
    fn new(iface: Interface, now: Instant, gso: bool) -> Self {
        let template = tun_read(gso);
        let mut pool = Pool::new(MAX_BATCH + 2, MAX_BATCH + 2);
        let mut read = pool.get();
        read[READ_AT..READ_AT + template.len()].copy_from_slice(&template);
        Self {
            iface,
            now,
            pool,
            read_ptr: read.as_ptr(),
            read: Some(read),
            restore: VNET_HDR_LEN + IP_LEN + TCP_LEN,
            template,
            batch: Vec::with_capacity(MAX_BATCH),
            batch_peer: None,
            run: Vec::with_capacity(MAX_SEGMENTS),
            iovs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_SEGMENTS],
            datagrams: 0,
            sends: 0,
            capture: None,
        }
    }

    /// One TUN read through to its UDP sends.
    fn run(&mut self) {
        self.datagrams = 0;
        self.sends = 0;
        let mut buf = self
            .read
            .take()
            .expect("read buffer back from the last send");
        // Headers only: a plain packet's were sealed over last time; the
        // payload bytes' values do not change the work.
        buf[READ_AT..READ_AT + self.restore].copy_from_slice(&self.template[..self.restore]);
        let n = self.template.len();
        match parse_read(&mut buf[READ_AT..READ_AT + n], MTU) {
            Ok(TunRead::Packet(p)) => {
                let len = p.len();
                let pkt = PacketBuf::new(buf, HEADROOM, len).expect("packet inside the buffer");
                self.on_tun_packet(pkt);
            }
            Ok(TunRead::Segments(segments)) => {
                for s in segments {
                    let mut b = self.pool.get_for(s.len());
                    let end = b.len() - TAILROOM;
                    let len = s.write(&mut b[HEADROOM..end]).expect("segment fits");
                    let pkt = PacketBuf::new(b, HEADROOM, len).expect("segment inside the buffer");
                    self.on_tun_packet(pkt);
                }
                self.read = Some(buf);
            }
            Err(e) => panic!("TUN read refused: {e}"),
        }
        self.flush_batch();
    }

    /// Part of `run` alone: the header write-back and `parse_read` (for a
    /// plain packet, the checksum completion), nothing after.
    fn parse_only(&mut self) {
        let buf = self.read.as_mut().expect("read buffer");
        buf[READ_AT..READ_AT + self.restore].copy_from_slice(&self.template[..self.restore]);
        let n = self.template.len();
        let read = parse_read(&mut buf[READ_AT..READ_AT + n], MTU);
        black_box(read.is_ok());
    }

    fn on_tun_packet(&mut self, pkt: Packet) {
        assert!(!is_own_datagram(pkt.data(), LISTEN_PORT));
        let route = destination(pkt.data()).and_then(|d| self.iface.route_with_len(d));
        let Some((peer, _)) = route else {
            panic!("no route for the inner destination")
        };
        if self.batch_peer != Some(peer) || self.batch.len() >= MAX_BATCH {
            self.flush_batch();
            self.batch_peer = Some(peer);
        }
        self.batch.push(pkt);
    }

    fn flush_batch(&mut self) {
        let Some(peer) = self.batch_peer.take() else {
            return;
        };
        let out = self
            .iface
            .encrypt_batch(peer, &mut self.batch, MTU, self.now);
        assert!(out.sealed == self.batch.len() && out.handshake.is_none());
        let mut batch = std::mem::take(&mut self.batch);
        self.send_sealed(&mut batch);
        self.batch = batch;
    }

    /// The worker's `send_sealed`: one GSO send per run of equal sizes.
    fn send_sealed(&mut self, pkts: &mut Vec<Packet>) {
        let mut run = std::mem::take(&mut self.run);
        let mut bytes = 0;
        for pkt in pkts.drain(..) {
            let segment = run.first().map_or(0, Packet::len);
            let fits = !run.is_empty()
                && pkt.len() <= segment
                && run.last().is_some_and(|l| l.len() == segment)
                && run.len() < MAX_SEGMENTS
                && bytes + pkt.len() <= MAX_GSO_BYTES;
            if !fits && !run.is_empty() {
                self.send_run(&mut run);
                bytes = 0;
            }
            bytes += pkt.len();
            run.push(pkt);
        }
        if !run.is_empty() {
            self.send_run(&mut run);
        }
        self.run = run;
    }

    /// Builds the iovec list of one send (one iovec per datagram, and the
    /// segment size for `UDP_SEGMENT`), then recycles the buffers as the
    /// send's completion would.
    fn send_run(&mut self, run: &mut Vec<Packet>) {
        let segment = run.first().map_or(0, Packet::len) as u16;
        for (iov, pkt) in self.iovs.iter_mut().zip(run.iter()) {
            iov.iov_base = pkt.buffer()[pkt.start()..].as_ptr().cast_mut().cast();
            iov.iov_len = pkt.len();
        }
        let n = run.len().min(MAX_SEGMENTS);
        black_box((&self.iovs[..n], segment));
        self.datagrams += n;
        self.sends += 1;
        if let Some(c) = self.capture.as_mut() {
            c.extend(run.iter().map(|p| p.data().to_vec()));
        }
        for pkt in run.drain(..) {
            let buf = pkt.into_inner();
            if buf.as_ptr() == self.read_ptr {
                self.read = Some(buf);
            } else {
                self.pool.put(buf);
            }
        }
    }
}

/// `ring` sealing `count` packets of `len` bytes in pool buffers at
/// `HEADROOM`, tag into the tailroom: the encrypt path's reference. The
/// buffers are of the size the path uses: large for a plain packet
/// (sealed in its TUN read buffer), small for segments.
struct RawSeal {
    key: LessSafeKey,
    bufs: Vec<Buf>,
    len: usize,
    counter: u64,
}

impl RawSeal {
    fn new(count: usize, len: usize, large: bool) -> Self {
        let mut pool = Pool::new(0, count);
        let bufs = (0..count)
            .map(|_| {
                let mut b = if large { pool.get() } else { pool.get_for(len) };
                b[HEADROOM..HEADROOM + len].fill(0x5a);
                b
            })
            .collect();
        Self {
            key: raw_key(),
            bufs,
            len,
            counter: 0,
        }
    }

    fn run(&mut self) {
        let len = self.len;
        for b in self.bufs.iter_mut() {
            let (body, tag) = b[HEADROOM..HEADROOM + len + 16].split_at_mut(len);
            let t = self
                .key
                .seal_in_place_separate_tag(nonce(self.counter), Aad::empty(), body)
                .expect("seal");
            tag.copy_from_slice(t.as_ref());
            self.counter += 1;
        }
    }
}

/// Cost breakdown of the encrypt path: `parse_read` and the segment
/// writes alone, and a plain copy of the same bytes into the same buffers.
struct SplitOnly {
    read: Vec<u8>,
    bufs: Vec<Buf>,
}

impl SplitOnly {
    fn new() -> Self {
        let mut read = vec![0u8; READ_AT];
        read.extend_from_slice(&tun_read(true));
        let mut pool = Pool::new(0, SEGMENTS);
        Self {
            read,
            bufs: (0..SEGMENTS).map(|_| pool.get_for(MTU)).collect(),
        }
    }

    fn split(&mut self) {
        let Ok(TunRead::Segments(segments)) = parse_read(&mut self.read[READ_AT..], MTU) else {
            panic!("not a super-packet")
        };
        for (s, b) in segments.zip(self.bufs.iter_mut()) {
            let end = b.len() - TAILROOM;
            black_box(s.write(&mut b[HEADROOM..end]).expect("segment fits"));
        }
    }

    /// The copies `split` makes (headers and payload), without the rest.
    fn memcpy(&mut self) {
        let pkt = &self.read[HEADROOM..];
        let hlen = IP_LEN + TCP_LEN;
        for (payload, b) in pkt[hlen..].chunks(MSS).zip(self.bufs.iter_mut()) {
            b[HEADROOM..HEADROOM + hlen].copy_from_slice(&pkt[..hlen]);
            b[HEADROOM + hlen..HEADROOM + hlen + payload.len()].copy_from_slice(payload);
        }
        black_box(&self.bufs);
    }
}

/// Where a UDP receive's payload starts in its buffer: after the kernel's
/// `io_uring_recvmsg_out` (16 bytes), the source address (room for a
/// `sockaddr_in6`, 28) and the control messages (32), as the worker's
/// multishot receives lay them out.
const RECV_AT: usize = 16 + 28 + 32;

/// One GRO receive as the kernel leaves it: a buffer, the payload's
/// length at `RECV_AT`, and the datagram size.
struct GroRecv {
    buf: Buf,
    len: usize,
    segment: usize,
}

/// The worker's receive side for the datagrams of one super-packet: per
/// UDP GRO receive, the first datagram is opened where it lies and the
/// others are copied into pool buffers of their own first (the worker's
/// `on_received`); every datagram goes through `Interface::receive`; then
/// the opened batch is planned into TUN writes (`flush_rx`).
struct DecryptPath {
    tx: Interface,
    peer: PeerId,
    rx: Interface,
    from: SocketAddr,
    now: Instant,
    pool: Pool,
    /// The plaintext segments, as the encrypt path produces them.
    plain: Vec<Vec<u8>>,
    /// The sender's buffers, sealed during setup.
    stage: Vec<PacketBuf<Vec<u8>>>,
    /// Datagrams per GRO receive: the GSO runs they were sent in.
    runs: Vec<usize>,
    /// The receives the kernel has completed, waiting for the worker.
    incoming: Vec<GroRecv>,
    /// A GRO receive's datagrams after the first, in their own buffers.
    gro: Vec<Packet>,
    /// The opened packets, in arrival order (the worker's `rx`).
    opened: Vec<Option<Packet>>,
    coalescer: Coalescer,
    iovs: Vec<libc::iovec>,
    ring: LessSafeKey,
    counter: u64,
    /// Writes and iovecs of the last iteration (checked, then ignored).
    writes: usize,
    parts: usize,
}

impl DecryptPath {
    fn new(t: Tunnel) -> Self {
        let plain = segments();
        let stage = plain
            .iter()
            .map(|p| {
                let v = vec![0u8; HEADROOM + p.len() + TAILROOM];
                PacketBuf::new(v, HEADROOM, p.len()).expect("fits")
            })
            .collect();
        // The GRO receives mirror the GSO sends: one per run.
        let mut runs = Vec::new();
        gso_runs(plain.iter().map(|p| p.len() + OVERHEAD), &mut runs);
        Self {
            tx: t.a,
            peer: t.peer_b,
            rx: t.b,
            from: t.from_a,
            now: t.now,
            pool: Pool::new(2 * MAX_BATCH, 2 * MAX_BATCH),
            incoming: Vec::with_capacity(runs.len()),
            runs,
            plain,
            stage,
            gro: Vec::with_capacity(MAX_SEGMENTS),
            opened: Vec::with_capacity(2 * MAX_BATCH),
            coalescer: Coalescer::new(true),
            iovs: Vec::with_capacity(MAX_SEGMENTS + 1),
            ring: raw_key(),
            counter: 0,
            writes: 0,
            parts: 0,
        }
    }

    /// Untimed: the sender seals the segments with fresh counters and the
    /// "kernel" lays the datagrams out in receive buffers, one per GSO run.
    fn prepare(&mut self) {
        for (pkt, p) in self.stage.iter_mut().zip(&self.plain) {
            assert!(pkt.set_bounds(HEADROOM, p.len()));
            pkt.data_mut().copy_from_slice(p);
        }
        let out = self
            .tx
            .encrypt_batch(self.peer, &mut self.stage, MTU, self.now);
        assert_eq!(out.sealed, self.stage.len());
        let mut sealed = self.stage.iter();
        for &count in &self.runs {
            let mut buf = self.pool.get();
            let (mut len, mut segment) = (0, 0);
            for pkt in sealed.by_ref().take(count) {
                let d = pkt.data();
                segment = segment.max(d.len());
                buf[RECV_AT + len..RECV_AT + len + d.len()].copy_from_slice(d);
                len += d.len();
            }
            self.incoming.push(GroRecv { buf, len, segment });
        }
    }

    /// Timed: split the GRO receives, open every datagram, plan the TUN
    /// writes and build their iovecs; then the buffers go back to the pool
    /// as the writes' completions would return them.
    fn run(&mut self) {
        self.receive_all();
        self.flush_rx();
        self.recycle();
    }

    /// Untimed set-up of the `receive` part: the last batch's buffers
    /// returned, fresh datagrams laid out.
    fn recycle_and_prepare(&mut self) {
        self.recycle();
        self.prepare();
    }

    fn receive_all(&mut self) {
        let mut incoming = std::mem::take(&mut self.incoming);
        for r in incoming.drain(..) {
            self.on_received(r);
        }
        self.incoming = incoming;
    }

    fn recycle(&mut self) {
        for pkt in self.opened.drain(..).flatten() {
            self.pool.put(pkt.into_inner());
        }
    }

    /// The worker's `on_received` for a GRO receive.
    fn on_received(&mut self, r: GroRecv) {
        let GroRecv { buf, len, segment } = r;
        let (start, end) = (RECV_AT, RECV_AT + len);
        if segment < len {
            for at in (start + segment..end).step_by(segment) {
                let part = &buf[at..(at + segment).min(end)];
                let mut out = self.pool.get_for(part.len());
                out[HEADROOM..HEADROOM + part.len()].copy_from_slice(part);
                let pkt = PacketBuf::new(out, HEADROOM, part.len()).expect("inside the buffer");
                self.gro.push(pkt);
            }
        }
        let first = PacketBuf::new(buf, start, segment.min(len)).expect("inside the buffer");
        self.on_datagram(first);
        let mut rest = std::mem::take(&mut self.gro);
        for pkt in rest.drain(..) {
            self.on_datagram(pkt);
        }
        self.gro = rest;
    }

    fn on_datagram(&mut self, mut pkt: Packet) {
        match self.rx.receive(self.from, &mut pkt, self.now) {
            Received::Data { .. } => self.opened.push(Some(pkt)),
            other => panic!("datagram not delivered: {other:?}"),
        }
    }

    /// The worker's `flush_rx`: `Coalescer::plan_with` over the opened
    /// packets and one write each, its header copied to end where the
    /// first packet's payload starts (10 bytes into its headroom), one
    /// iovec from there to its end and one per other member from `skip`.
    fn flush_rx(&mut self) {
        let Self {
            opened,
            coalescer,
            iovs,
            ..
        } = self;
        let writes = coalescer.plan_with(opened.len(), |i| {
            opened[i].as_ref().map_or(&[][..], |p| p.data())
        });
        // The plan names packets by index; the iovecs point into their
        // buffers, which stay where they are (the worker moves them into
        // the write's slot, which does not move the bytes).
        let (mut count, mut parts) = (0, 0);
        for w in writes {
            let Some((&first, rest)) = w.members().split_first() else {
                continue;
            };
            let Some(head) = opened[first as usize].as_mut() else {
                continue;
            };
            let header = w.header();
            let (start, len) = (head.start() - VNET_HDR_LEN, head.len() + VNET_HDR_LEN);
            // PacketBuf gives no mutable access before the packet: widen
            // its bounds over the header, write, and put them back.
            assert!(head.set_bounds(start, len));
            head.data_mut()[..header.len()].copy_from_slice(header);
            iovs.clear();
            iovs.push(libc::iovec {
                iov_base: head.data_mut().as_mut_ptr().cast(),
                iov_len: len,
            });
            assert!(head.set_bounds(start + VNET_HDR_LEN, len - VNET_HDR_LEN));
            let skip = w.skip();
            for &m in rest {
                if let Some(p) = opened[m as usize].as_mut() {
                    iovs.push(libc::iovec {
                        iov_base: p.data_mut()[skip..].as_mut_ptr().cast(),
                        iov_len: p.len() - skip,
                    });
                }
            }
            black_box(&iovs[..]);
            count += 1;
            parts += iovs.len();
        }
        self.writes = count;
        self.parts = parts;
    }

    /// Untimed: `ring` seals the same plaintexts into the same layout.
    fn prepare_ring(&mut self) {
        let mut plain = self.plain.iter();
        for &count in &self.runs {
            let mut buf = self.pool.get();
            let (mut len, mut segment) = (0, 0);
            for p in plain.by_ref().take(count) {
                let d = &mut buf[RECV_AT + len..RECV_AT + len + p.len() + OVERHEAD];
                let (body, tag) = d[16..].split_at_mut(p.len());
                body.copy_from_slice(p);
                let t = self
                    .ring
                    .seal_in_place_separate_tag(nonce(self.counter), Aad::empty(), body)
                    .expect("seal");
                tag.copy_from_slice(t.as_ref());
                self.counter += 1;
                segment = segment.max(d.len());
                len += d.len();
            }
            self.incoming.push(GroRecv { buf, len, segment });
        }
    }

    /// Timed: `ring` opens each datagram in place where it arrived.
    fn run_ring(&mut self) {
        let mut counter = self.counter - self.plain.len() as u64;
        for r in self.incoming.drain(..) {
            let mut buf = r.buf;
            let datagrams = buf[RECV_AT..RECV_AT + r.len].chunks_mut(r.segment);
            for d in datagrams {
                let out = self
                    .ring
                    .open_in_place(nonce(counter), Aad::empty(), &mut d[16..])
                    .expect("open");
                black_box(out.len());
                counter += 1;
            }
            self.pool.put(buf);
        }
    }

    /// Part of `run` alone: the copies that split the GRO receives.
    fn gro_copy(&mut self) {
        for r in &self.incoming {
            let end = RECV_AT + r.len;
            for at in (RECV_AT + r.segment..end).step_by(r.segment) {
                let part = &r.buf[at..(at + r.segment).min(end)];
                let mut out = self.pool.get_for(part.len());
                out[HEADROOM..HEADROOM + part.len()].copy_from_slice(part);
                self.pool.put(black_box(out));
            }
        }
    }
}

/// Bytes of inner IP packets per iteration, the throughput unit.
fn inner_bytes(gso: bool) -> u64 {
    if gso {
        (SEGMENTS * MTU) as u64
    } else {
        MTU as u64
    }
}

/// Times `run` only, calling the untimed `prepare` before each run.
fn timed_after<T>(iters: u64, x: &mut T, prepare: fn(&mut T), run: fn(&mut T)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        prepare(x);
        let t = Instant::now();
        run(x);
        total += t.elapsed();
    }
    total
}

fn encrypt(c: &mut Criterion) {
    for (gso, name) in [(true, "worker_encrypt_64k"), (false, "worker_encrypt_1420")] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(inner_bytes(gso)));
        let t = tunnel();
        let mut path = EncryptPath::new(t.a, t.now, gso);
        g.bench_function("path", |b| b.iter(|| path.run()));
        let (count, len) = if gso { (SEGMENTS, MTU) } else { (1, MTU) };
        let mut raw = RawSeal::new(count, len, !gso);
        g.bench_function("ring", |b| b.iter(|| raw.run()));
        if !gso {
            g.bench_function("parse", |b| b.iter(|| path.parse_only()));
        }
        if gso {
            let mut split = SplitOnly::new();
            g.bench_function("split", |b| b.iter(|| split.split()));
            g.bench_function("memcpy", |b| b.iter(|| split.memcpy()));
        }
        g.finish();
    }
}

fn decrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("worker_decrypt_64k");
    g.throughput(Throughput::Bytes(inner_bytes(true)));
    let mut d = DecryptPath::new(tunnel());
    g.bench_function("path", |b| {
        b.iter_custom(|iters| timed_after(iters, &mut d, DecryptPath::prepare, DecryptPath::run))
    });
    g.bench_function("ring", |b| {
        b.iter_custom(|iters| {
            timed_after(
                iters,
                &mut d,
                DecryptPath::prepare_ring,
                DecryptPath::run_ring,
            )
        })
    });
    // The parts alone: splitting the GRO receives into buffers (copies),
    // and over packets opened once, the coalescer (which verifies every
    // merged packet's checksum) with the iovecs.
    g.bench_function("receive", |b| {
        b.iter_custom(|iters| {
            timed_after(
                iters,
                &mut d,
                DecryptPath::recycle_and_prepare,
                DecryptPath::receive_all,
            )
        })
    });
    d.recycle();
    d.prepare();
    g.bench_function("gro_copy", |b| b.iter(|| d.gro_copy()));
    d.receive_all();
    g.bench_function("plan", |b| b.iter(|| d.flush_rx()));
    d.recycle();
    g.finish();
}

/// Runs `prepare` then `body` a few times to warm up, then a few more
/// counting the heap allocations `body` makes; panics if there were any.
fn check_no_allocation(name: &str, mut prepare: impl FnMut(), mut body: impl FnMut()) {
    for _ in 0..3 {
        prepare();
        body();
    }
    ALLOCATIONS.store(0, Ordering::SeqCst);
    for _ in 0..3 {
        prepare();
        COUNTING.store(true, Ordering::SeqCst);
        body();
        COUNTING.store(false, Ordering::SeqCst);
    }
    let n = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(n, 0, "{name}: the measured loop body allocated {n} times");
}

/// Checks, before measuring, that the paths do the work they claim and
/// allocate nothing while doing it.
fn preflight() {
    // The encrypt path's datagrams open into the segments the kernel
    // would cut (valid IPv4/TCP packets: the coalescer, which checks every
    // checksum, merges them back into one write).
    let t = tunnel();
    let (mut rx, from) = (t.b, t.from_a);
    let mut path = EncryptPath::new(t.a, t.now, true);
    path.capture = Some(Vec::new());
    path.run();
    assert_eq!((path.datagrams, path.sends), (SEGMENTS, 2));
    let mut opened = Vec::new();
    for d in path.capture.take().expect("captured") {
        let len = d.len();
        let mut d = PacketBuf::new(d, 0, len).expect("fits");
        assert!(matches!(
            rx.receive(from, &mut d, t.now),
            Received::Data { .. }
        ));
        opened.push(d.data().to_vec());
    }
    assert_eq!(opened, segments());
    let mut coalescer = Coalescer::new(true);
    let writes: Vec<usize> = coalescer.plan(&opened).map(|w| w.members().len()).collect();
    assert_eq!(
        writes,
        [SEGMENTS],
        "segments not merged back into one write"
    );

    let t = tunnel();
    let (mut rx, from) = (t.b, t.from_a);
    let mut single = EncryptPath::new(t.a, t.now, false);
    single.capture = Some(Vec::new());
    single.run();
    assert_eq!((single.datagrams, single.sends), (1, 1));
    let mut d = single.capture.take().expect("captured");
    let len = d[0].len();
    let mut d = PacketBuf::new(d.remove(0), 0, len).expect("fits");
    assert!(matches!(
        rx.receive(from, &mut d, t.now),
        Received::Data { .. }
    ));
    // parse_read completed the TCP checksum: pseudo-header and segment sum
    // to zero.
    let pkt = d.data();
    assert_eq!(pkt.len(), MTU);
    let mut sum = pkt[12..20].to_vec();
    sum.extend_from_slice(&[0, 6]);
    sum.extend_from_slice(&((MTU - IP_LEN) as u16).to_be_bytes());
    sum.extend_from_slice(&pkt[IP_LEN..]);
    assert_eq!(checksum(&sum), 0, "TCP checksum not completed");

    // The decrypt path delivers the segments, merged into one write.
    let mut d = DecryptPath::new(tunnel());
    d.prepare();
    d.receive_all();
    let delivered: Vec<&[u8]> = d.opened.iter().flatten().map(|p| p.data()).collect();
    assert_eq!(delivered, d.plain);
    d.flush_rx();
    assert_eq!((d.writes, d.parts), (1, SEGMENTS));
    d.recycle();

    let nothing = || {};
    check_no_allocation("worker_encrypt_64k/path", nothing, || path.run());
    check_no_allocation("worker_encrypt_1420/path", nothing, || single.run());
    check_no_allocation("worker_encrypt_1420/parse", nothing, || single.parse_only());
    let d = std::cell::RefCell::new(d);
    check_no_allocation(
        "worker_decrypt_64k/path",
        || d.borrow_mut().prepare(),
        || d.borrow_mut().run(),
    );
    check_no_allocation(
        "worker_decrypt_64k/receive",
        || d.borrow_mut().recycle_and_prepare(),
        || d.borrow_mut().receive_all(),
    );
    let mut d = d.into_inner();
    d.recycle();
    d.prepare();
    check_no_allocation("worker_decrypt_64k/gro_copy", nothing, || d.gro_copy());
    d.receive_all();
    check_no_allocation("worker_decrypt_64k/plan", nothing, || d.flush_rx());
    d.recycle();
    let mut raw = RawSeal::new(SEGMENTS, MTU, false);
    check_no_allocation("worker_encrypt_64k/ring", nothing, || raw.run());
    let d = std::cell::RefCell::new(d);
    check_no_allocation(
        "worker_decrypt_64k/ring",
        || d.borrow_mut().prepare_ring(),
        || d.borrow_mut().run_ring(),
    );
}

criterion_group!(benches, encrypt, decrypt);

fn main() {
    preflight();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
