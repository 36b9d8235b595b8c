//! The worker's packet path as shipped, in memory, against `ring`'s raw
//! ChaCha20-Poly1305 on the same bytes in the same packets. Each path
//! drives the engine's own [`Shard`] (the code the io_uring worker runs
//! between a completion and a submission) through its public calls:
//! `tun_read`, `udp_received`, `flush` and `execute`. The I/O side is a
//! sink that takes what the worker would submit (the packets of each send
//! and write, whose pointers and lengths it reads as the kernel's iovecs
//! would) and returns the buffers to the shard's pool as completions do.
//! No syscall is made.
//!
//! The tunnel: two single-worker devices of the in-memory engine, set up
//! through configuration changes as the control plane sends them, with a
//! handshake completed over the simulated network. The sender also holds
//! 63 other peers with their own prefixes, so routing is a real
//! longest-prefix match.
//!
//! - `worker_encrypt_64k`: one TUN read of a 64 KiB TCP/IPv4 super-packet
//!   (virtio-net header, `GSO_TCPV4`, `NEEDS_CSUM`, MSS 1368 = MTU 1420
//!   minus 20 bytes of IPv4 and 32 of TCP with timestamps) goes through
//!   `Shard::tun_read` (cut into 47 segments of 1420 bytes, each routed,
//!   batched), `flush` (sealed in place) and `execute` (grouped into UDP
//!   GSO sends: 44 + 3 here).
//! - `worker_encrypt_1420`: the same for one plain 1420-byte TCP packet read
//!   with a partial checksum (completed in place) and sealed where it lies.
//! - `worker_decrypt_64k`: the 47 datagrams arrive as two UDP GRO receives
//!   (the 44 and the 3 of the two GSO sends, back to back in a buffer after
//!   the kernel's receive header) and go through `Shard::udp_received`
//!   (first datagram opened where it lies, the others copied out first;
//!   index lookup, replay window, AEAD, allowed source), `flush` (coalesced
//!   into one TUN write) and `execute`.
//!
//! Each group has `path` and `ring`, its reference: `seal_in_place_separate_tag`
//! or `open_in_place` over the same number of packets of the same sizes
//! in buffers of the same sizes (for decryption, in place in the same GRO
//! receive layout). `micro-report` divides them. Parts, for profiling:
//! `split` (`parse_read` and the segment writes) and `memcpy` (the same
//! bytes copied, the floor for `split`); `parse` (a plain packet's
//! `parse_read`); `receive` (the shard's `udp_received` for the two GRO
//! receives, AEAD included) and `plan` (its `flush` and `execute` over the
//! opened packets: coalescing, which verifies every merged checksum, and
//! the write's parts).
//!
//! A TUN read is copied into its buffer untimed before each iteration (the
//! kernel's copy is not the worker's cost). Decryption needs fresh counters
//! every time (the replay window refuses a repeat), so every iteration
//! first has the sending shard seal the 47 segments anew and lays its GSO
//! sends out in receive buffers, untimed: `iter_custom` times only the
//! receiving shard. The `ring` reference gets the same treatment.
//!
//! Before measuring, `main` checks on the in-memory network that the
//! paths deliver exactly the segments the kernel would cut (one coalesced
//! write), and runs every timed body with a counting allocator, panicking
//! if one allocates.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use corewire_bench::{nonce, raw_key, MTU};
use corewire_dataplane::engine::config::{Change, Device, PeerConfig};
use corewire_dataplane::engine::mem::{MemNet, Sink};
use corewire_dataplane::engine::offload::virtio::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
};
use corewire_dataplane::engine::offload::{checksum, parse_read, TunRead, VirtioNetHdr};
use corewire_dataplane::engine::pool::{Buf, Pool};
use corewire_dataplane::engine::shard::{Shard, TUN_READ_AT};
use corewire_dataplane::engine::tun::Offload;
use corewire_dataplane::proto::keys::{PresharedKey, PublicKey};
use corewire_dataplane::proto::messages::{HEADROOM, TAILROOM, TRANSPORT_MIN_LEN};
use corewire_testkit::alloc::{check_no_allocation, CountingAllocator};
use criterion::{criterion_group, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// IPv4 header without options.
const IP_LEN: usize = 20;
/// TCP header with the timestamp option, as Linux sends by default.
const TCP_LEN: usize = 32;
/// Payload per segment: what the kernel's TSO uses as `gso_size` at MTU 1420.
const MSS: usize = MTU - IP_LEN - TCP_LEN;
/// Segments of the super-packet: as many full ones as an IP packet holds.
const SEGMENTS: usize = (65535 - IP_LEN - TCP_LEN) / MSS;
/// Transport header and tag around every sealed packet.
const OVERHEAD: usize = TRANSPORT_MIN_LEN;

/// The tunnel addresses of `MemNet::pair`'s two devices.
const INNER_SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const INNER_DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Where a UDP receive's payload starts in its buffer: after the kernel's
/// `io_uring_recvmsg_out` (16 bytes), the source address (room for a
/// `sockaddr_in6`, 28) and the control messages (32), as the worker's
/// multishot receives lay them out.
const RECV_AT: usize = 16 + 28 + 32;

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
                let mut b = if large {
                    pool.get().expect("a buffer under the ceiling")
                } else {
                    pool.get_for(len).expect("a buffer under the ceiling")
                };
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
        let mut read = vec![0u8; TUN_READ_AT];
        read.extend_from_slice(&tun_read(true));
        let mut pool = Pool::new(0, SEGMENTS);
        Self {
            read,
            bufs: (0..SEGMENTS)
                .map(|_| pool.get_for(MTU).expect("a buffer under the ceiling"))
                .collect(),
        }
    }

    fn split(&mut self) {
        let Ok(TunRead::Segments(segments)) = parse_read(&mut self.read[TUN_READ_AT..], MTU) else {
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

/// Two single-worker devices of the in-memory engine after a completed
/// handshake: device 0 (`a`) sends to device 1 (`b`).
struct Tunnel {
    net: MemNet,
    from_a: SocketAddr,
}

impl Tunnel {
    fn a(&mut self) -> &mut Shard {
        self.net.devices[0].shard_mut(0).expect("one worker")
    }

    fn b(&mut self) -> &mut Shard {
        self.net.devices[1].shard_mut(0).expect("one worker")
    }
}

fn tunnel() -> Tunnel {
    let mut net = MemNet::pair(Offload {
        tso: true,
        uso: true,
    });
    let mut others = Vec::new();
    for i in 0..63u8 {
        others.push(Change::Peer(PeerConfig {
            public_key: PublicKey::from_bytes([i + 1; 32]),
            preshared_key: PresharedKey::default(),
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: vec![(Ipv4Addr::new(10, 1, i, 0).into(), 24)],
        }));
    }
    net.devices[0].apply(others).expect("configured");
    for d in &mut net.devices {
        d.set_mtu(MTU);
    }
    let from_a = net.devices[0].addr();
    Tunnel { net, from_a }
}

/// The shipped send side for one TUN read.
struct EncryptPath {
    t: Tunnel,
    read: Vec<u8>,
    pending: Option<Buf>,
    sink: Sink,
}

impl EncryptPath {
    fn new(gso: bool) -> Self {
        Self {
            t: tunnel(),
            read: tun_read(gso),
            pending: None,
            sink: Sink::default(),
        }
    }

    /// Untimed: the kernel's copy of the read into a pool buffer.
    fn prepare(&mut self) {
        let n = self.read.len();
        let mut buf = self.t.a().pool().get().expect("a buffer under the ceiling");
        buf[TUN_READ_AT..TUN_READ_AT + n].copy_from_slice(&self.read);
        self.pending = Some(buf);
    }

    /// Timed: the shard's `tun_read`, `flush` and `execute`.
    fn run(&mut self) {
        let Some(buf) = self.pending.take() else {
            return;
        };
        let (n, now) = (self.read.len(), self.t.net.now);
        let shard = self.t.net.devices[0].shard_mut(0).expect("one worker");
        shard.tun_read(buf, n, now);
        shard.flush(now);
        self.sink.execute(shard);
    }

    /// Part: `parse_read` of a plain packet (completes its checksum).
    fn parse_only(&mut self) {
        let n = self.read.len();
        if self.pending.is_none() {
            self.prepare();
        }
        let Some(buf) = self.pending.as_mut() else {
            return;
        };
        buf[TUN_READ_AT..TUN_READ_AT + n].copy_from_slice(&self.read);
        black_box(parse_read(&mut buf[TUN_READ_AT..TUN_READ_AT + n], MTU).is_ok());
    }
}

/// One GRO receive as the kernel leaves it: a buffer, the payload's
/// length at `RECV_AT`, and the datagram size.
struct GroRecv {
    buf: Buf,
    len: usize,
    segment: Option<usize>,
}

/// The shipped receive side for the datagrams of one super-packet.
struct DecryptPath {
    t: Tunnel,
    read: Vec<u8>,
    /// The sender's sends, captured.
    sender: Sink,
    sink: Sink,
    /// The receives the kernel has completed, waiting for the worker.
    incoming: Vec<GroRecv>,
    /// The plaintext segments, for the `ring` reference.
    plain: Vec<Vec<u8>>,
    /// Datagrams per GRO receive: the GSO sends they came in.
    runs: Vec<usize>,
    pool: Pool,
    ring: LessSafeKey,
    counter: u64,
}

impl DecryptPath {
    fn new() -> Self {
        let mut d = Self {
            t: tunnel(),
            read: tun_read(true),
            sender: Sink::capturing(),
            sink: Sink::default(),
            incoming: Vec::new(),
            plain: segments(),
            runs: Vec::new(),
            pool: Pool::new(4, 8),
            ring: raw_key(),
            counter: 0,
        };
        d.prepare();
        d.runs = d
            .incoming
            .iter()
            .map(|r| r.segment.map_or(1, |s| r.len.div_ceil(s)))
            .collect();
        d.recycle_incoming();
        d
    }

    /// Untimed: the sending shard seals the segments with fresh counters
    /// and the "kernel" lays its GSO sends out in the receiver's buffers,
    /// one GRO receive per send.
    fn prepare(&mut self) {
        let n = self.read.len();
        let now = self.t.net.now;
        let a = self.t.net.devices[0].shard_mut(0).expect("one worker");
        let mut buf = a.pool().get().expect("a buffer under the ceiling");
        buf[TUN_READ_AT..TUN_READ_AT + n].copy_from_slice(&self.read);
        a.tun_read(buf, n, now);
        a.flush(now);
        self.sender.execute(a);
        let sends = self.sender.capture.as_mut().map(std::mem::take);
        let b = self.t.b();
        for (bytes, segment) in sends.into_iter().flatten() {
            let mut buf = b.pool().get().expect("a buffer under the ceiling");
            buf[RECV_AT..RECV_AT + bytes.len()].copy_from_slice(&bytes);
            self.incoming.push(GroRecv {
                buf,
                len: bytes.len(),
                segment,
            });
        }
    }

    fn recycle_incoming(&mut self) {
        for r in self.incoming.drain(..) {
            self.t.b().pool().put(r.buf);
        }
    }

    /// Timed: the receiving shard's `udp_received`, `flush` and `execute`.
    fn run(&mut self) {
        self.receive_all();
        self.plan();
    }

    /// Part: the shard's `udp_received` for each GRO receive.
    fn receive_all(&mut self) {
        let (from, now) = (self.t.from_a, self.t.net.now);
        let b = self.t.net.devices[1].shard_mut(0).expect("one worker");
        for r in self.incoming.drain(..) {
            b.udp_received(from, r.buf, RECV_AT, r.len, r.segment, now);
        }
    }

    /// Part: the shard's `flush` and `execute` over the opened packets.
    fn plan(&mut self) {
        let now = self.t.net.now;
        let b = self.t.net.devices[1].shard_mut(0).expect("one worker");
        b.flush(now);
        self.sink.execute(b);
    }

    /// Untimed: `ring` seals the same plaintexts into the same layout.
    fn prepare_ring(&mut self) {
        let mut plain = self.plain.iter();
        for &count in &self.runs {
            let mut buf = self.pool.get().expect("a buffer under the ceiling");
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
            self.incoming.push(GroRecv {
                buf,
                len,
                segment: Some(segment),
            });
        }
    }

    /// Timed: `ring` opens each datagram in place where it arrived.
    fn run_ring(&mut self) {
        let mut counter = self.counter - self.plain.len() as u64;
        for r in self.incoming.drain(..) {
            let mut buf = r.buf;
            let segment = r.segment.unwrap_or(r.len);
            for d in buf[RECV_AT..RECV_AT + r.len].chunks_mut(segment) {
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
        let mut path = EncryptPath::new(gso);
        g.bench_function("path", |b| {
            b.iter_custom(|iters| {
                timed_after(iters, &mut path, EncryptPath::prepare, EncryptPath::run)
            })
        });
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
    let mut d = DecryptPath::new();
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
    g.bench_function("receive", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                d.prepare();
                let t = Instant::now();
                d.receive_all();
                total += t.elapsed();
                d.plan();
            }
            total
        })
    });
    g.bench_function("plan", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                d.prepare();
                d.receive_all();
                let t = Instant::now();
                d.plan();
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// Checks, before measuring, that the paths do the work they claim and
/// allocate nothing while doing it.
fn preflight() {
    // On the in-memory network, the same shards deliver exactly the
    // segments the kernel would cut, sent as two GSO sends and written as
    // one coalesced super-packet (the coalescer checks every checksum).
    let mut t = tunnel();
    let now = t.net.now;
    t.net.devices[0].tun_read(&tun_read(true), now);
    t.net.settle();
    let delivered: Vec<Vec<u8>> = t.net.devices[1].delivered.drain(..).collect();
    assert!(delivered == segments(), "delivered segments differ");
    assert_eq!(t.net.devices[0].counts.udp_gso_sends, 2);
    assert_eq!(t.net.devices[1].counts.tun_super_writes, 1);
    // A plain packet arrives with its TCP checksum completed.
    t.net.devices[0].tun_read(&tun_read(false), now);
    t.net.settle();
    let pkt = t.net.devices[1].delivered.pop_front().expect("delivered");
    assert_eq!(pkt.len(), MTU);
    let mut sum = pkt[12..20].to_vec();
    sum.extend_from_slice(&[0, 6]);
    sum.extend_from_slice(&((MTU - IP_LEN) as u16).to_be_bytes());
    sum.extend_from_slice(&pkt[IP_LEN..]);
    assert_eq!(checksum(&sum), 0, "TCP checksum not completed");

    // The benchmarked paths do the same work.
    let mut path = EncryptPath::new(true);
    path.prepare();
    path.run();
    assert_eq!((path.sink.datagrams, path.sink.sends), (SEGMENTS, 2));
    let mut single = EncryptPath::new(false);
    single.prepare();
    single.run();
    assert_eq!((single.sink.datagrams, single.sink.sends), (1, 1));
    let mut d = DecryptPath::new();
    d.prepare();
    d.run();
    assert_eq!((d.sink.writes, d.sink.parts), (1, SEGMENTS));
    assert_eq!(d.runs.iter().sum::<usize>(), SEGMENTS);

    let d = std::cell::RefCell::new(d);
    let path = std::cell::RefCell::new(path);
    check_no_allocation(
        "worker_encrypt_64k/path",
        || path.borrow_mut().prepare(),
        || path.borrow_mut().run(),
    );
    let single = std::cell::RefCell::new(single);
    check_no_allocation(
        "worker_encrypt_1420/path",
        || single.borrow_mut().prepare(),
        || single.borrow_mut().run(),
    );
    check_no_allocation(
        "worker_encrypt_1420/parse",
        || {},
        || single.borrow_mut().parse_only(),
    );
    check_no_allocation(
        "worker_decrypt_64k/path",
        || d.borrow_mut().prepare(),
        || d.borrow_mut().run(),
    );
    let mut raw = RawSeal::new(SEGMENTS, MTU, false);
    check_no_allocation("worker_encrypt_64k/ring", || {}, || raw.run());
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
