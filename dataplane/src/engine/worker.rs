//! One worker thread: an io_uring, a TUN queue, a pair of UDP sockets and
//! a shard of the peers.
//!
//! The loop waits on its ring; each wake-up drains every completion, turns
//! TUN packets into per-peer batches that are sealed in place and queued as
//! sends, opens datagrams in place and queues them as TUN writes, and
//! re-arms the reads. Submissions go to the kernel once per loop turn.
//!
//! A peer belongs to exactly one worker (chosen from its public key), so
//! its sessions, counters and timers need no lock. A packet that reaches
//! the wrong worker is handed to the owner over a channel, with at most one
//! eventfd wake-up per destination per loop turn: a session index names its
//! owner in its low bits; an initiation names its peer once its static key
//! is decrypted; a TUN packet names its peer through the routing table.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use io_uring::IoUring;

use super::bufring::BufRing;
use super::config::{Change, PeerConfig, PeerStats};
use super::counters::{Counters, DropReason};
use super::offload::{self, Coalescer, TunRead, VNET_HDR_LEN};
use super::ops::{
    gro_segment_size, multishot_msghdr, source_address, OpKind, Ops, MAX_GSO_BYTES, MAX_SEGMENTS,
};
use super::pool::{Buf, Depot, Packet, Pool, BUF_SIZE};
use super::tun::Offload;
use crate::proto::allowedips::AllowedIps;
use crate::proto::interface::{Interface, Received};
use crate::proto::keys::PublicKey;
use crate::proto::messages::{ControlMsg, HEADROOM, TAILROOM};
use crate::proto::peer::PeerId;
use crate::proto::session::PacketBuf;

/// Provided buffers for UDP receives (shared by the IPv4 and IPv6 socket):
/// how many datagrams (or GRO bursts) can wait between the kernel and the
/// worker. Beyond that they wait in the socket's own buffer.
const UDP_RING: u16 = 128;
/// Provided buffers for TUN reads. Each can hold a 64 KiB super-packet, so
/// this bounds what the worker takes in ahead of its work to 2 MiB; the
/// rest waits in the TUN device's queue, where the kernel drops when it
/// overflows and TCP backs off, instead of queueing in front of us.
const TUN_RING: u16 = 32;
/// Buffer group ids of the two rings.
const UDP_GROUP: u16 = 0;
const TUN_GROUP: u16 = 1;
/// Operation slots per worker: reads in flight plus room for a burst of
/// sends and writes. When all are busy, new packets are dropped
/// (back-pressure) instead of queueing without bound.
const SLOTS: usize = 1024;
/// Free buffers of each size a worker keeps for itself (more go to the
/// engine's depot).
const POOL_CAP: usize = 1024;
/// Most packets sealed in one batch.
const MAX_BATCH: usize = 64;
/// Most decrypted packets held for coalescing before they are written to
/// the TUN (they are written at the latest at the end of the loop turn).
const MAX_RX_BATCH: usize = 128;
/// Where TUN reads land in a buffer: the virtio-net header first, so the
/// IP packet starts at `HEADROOM`, ready to be sealed in place.
const TUN_READ_AT: usize = HEADROOM - VNET_HDR_LEN;
/// Packets held per peer while its handshake runs (as wireguard-go).
const MAX_STAGED: usize = 128;
/// Packets queued for sending or writing after which they are handed to
/// the kernel at once instead of at the end of the loop turn: a turn that
/// drains many completions would otherwise hold its first packets back
/// until its last are done (latency under load).
const SUBMIT_EVERY: usize = 64;
/// Configuration changes applied per loop turn (see `apply_some`).
const APPLY_CHUNK: usize = 4096;
/// Timer resolution: WireGuard's shortest timer is REKEY_TIMEOUT (5 s), so
/// a tenth of a second keeps every rule within its tolerance.
const TICK: Duration = Duration::from_millis(100);

/// The UDP sockets a worker receives and sends on.
#[derive(Debug, Clone, Copy)]
pub struct UdpFds {
    /// IPv4 socket.
    pub v4: RawFd,
    /// IPv6 socket, if the host has IPv6.
    pub v6: Option<RawFd>,
    /// The port they are bound to.
    pub port: u16,
    /// Generation: bumped when the listen port changes.
    pub gen: u32,
}

/// Messages to a worker.
#[derive(Debug)]
pub enum Msg {
    /// A packet from another worker's TUN queue, for a peer this one owns.
    Tun(Packet),
    /// A datagram another worker received, for a session or peer this one owns.
    Udp(SocketAddr, Packet),
    /// Configuration changes; reply when applied.
    Apply(Arc<Vec<Change>>, Sender<()>),
    /// Report this shard's peers.
    Stats(Sender<Vec<PeerStats>>),
    /// New sockets (listen port changed).
    Sockets(UdpFds),
    /// Leave the loop.
    Stop,
}

/// A way to reach one worker: its channel and its eventfd.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// The channel.
    pub tx: Sender<Msg>,
    /// The eventfd that wakes its ring.
    pub wake: RawFd,
}

impl Mailbox {
    /// Wakes the worker (one 8-byte write to its eventfd).
    pub fn wake(&self) {
        let one = 1u64;
        // SAFETY: writing 8 bytes from a valid u64 to an eventfd we keep open
        // for the engine's lifetime.
        let _ = unsafe { libc::write(self.wake, (&one as *const u64).cast(), 8) };
    }
}

/// Everything a worker starts with.
#[derive(Debug)]
pub struct Setup {
    /// This worker's number.
    pub id: u32,
    /// How many workers there are.
    pub workers: u32,
    /// This worker's TUN queue.
    pub tun: RawFd,
    /// This worker's UDP sockets.
    pub udp: UdpFds,
    /// This worker's eventfd.
    pub wake: RawFd,
    /// This worker's channel.
    pub inbox: Receiver<Msg>,
    /// Every worker's mailbox, by number.
    pub mailboxes: Vec<Mailbox>,
    /// The TUN MTU, kept current by the control plane.
    pub mtu: Arc<AtomicU32>,
    /// The offloads the TUN device accepted.
    pub offload: Offload,
    /// Free buffers shared by the engine's workers.
    pub depot: Depot,
    /// Monotonic and wall-clock readings taken together at start.
    pub clock: (Instant, SystemTime),
}

/// Which worker owns the peer with `key`: public keys are uniformly
/// random, so their first bytes spread peers evenly.
pub fn owner_of_key(key: &PublicKey, workers: u32) -> u32 {
    if workers <= 1 {
        return 0;
    }
    let b = key.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % workers
}

/// Bits of a session index that name its worker.
pub fn worker_bits(workers: u32) -> u8 {
    (u32::BITS - workers.saturating_sub(1).leading_zeros()) as u8
}

/// The receiver index of a response, cookie reply or transport message.
fn receiver_index(data: &[u8]) -> Option<u32> {
    let at = match data.first()? {
        2 => 8,
        3 | 4 => 4,
        _ => return None,
    };
    let b = data.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Whether `packet` is a UDP datagram sent from our listen `port`: our own
/// encrypted traffic, routed back into our TUN because a peer's endpoint
/// lies inside the tunnel. Sealing it again would loop (each turn 80 bytes
/// longer) and can drag the peer's endpoint into the tunnel too, so it is
/// dropped, as the kernel refuses such sends with ELOOP; the next packet
/// from the peer's real address moves its endpoint back.
fn is_own_datagram(packet: &[u8], port: u16) -> bool {
    let (proto, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let frag_offset = packet
                .get(6..8)
                .map_or(1, |b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff);
            if frag_offset != 0 {
                return false;
            }
            (packet.get(9).copied(), ihl)
        }
        Some(6) => (packet.get(6).copied(), 40),
        _ => return false,
    };
    proto == Some(17)
        && packet
            .get(l4..l4 + 2)
            .is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) == port)
}

/// The virtio-net header of a packet written alone.
const VNET_NONE: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Copies `header` over the [`VNET_HDR_LEN`] bytes before `pkt` and as many
/// of its own first bytes as `header` has beyond those (a super-packet's
/// rewritten headers); returns the write's start, length and buffer. Every
/// decrypted packet has its 16-byte transport header free before it.
fn with_header(pkt: Packet, header: &[u8]) -> (usize, usize, Buf) {
    let (start, len) = (pkt.start() - VNET_HDR_LEN, pkt.len() + VNET_HDR_LEN);
    let mut buf = pkt.into_inner();
    buf[start..start + header.len()].copy_from_slice(header);
    (start, len, buf)
}

/// The destination address of an IP packet.
fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// A worker's state; lives on its own thread.
pub struct Worker {
    // The ring is declared first so it is dropped first: the kernel stops
    // touching slot memory before the slots are freed.
    ring: IoUring,
    ops: Ops,
    udp_bufs: BufRing,
    tun_bufs: BufRing,
    pool: Pool,
    id: u32,
    workers: u32,
    mask: u32,
    tun: RawFd,
    udp: UdpFds,
    wake: RawFd,
    inbox: Receiver<Msg>,
    mailboxes: Vec<Mailbox>,
    to_wake: Vec<bool>,
    mtu: Arc<AtomicU32>,
    iface: Interface,
    /// Destination prefix -> peer for the peers of the other workers (only
    /// with more than one worker): finds the owner of a TUN packet this
    /// worker read for a peer it does not hold. Its own peers' prefixes are
    /// in its shard, not here, so no prefix is stored twice per worker.
    routes: AllowedIps<PublicKey>,
    staged: HashMap<PeerId, VecDeque<Packet>>,
    batch: Vec<Packet>,
    batch_peer: Option<PeerId>,
    /// Packets gathered for one GSO send (kept for its capacity).
    gso_run: Vec<Packet>,
    /// Whether UDP GSO is in use (switched off if the kernel refuses it).
    gso: bool,
    /// The datagrams after the first of a GRO receive, copied out into
    /// their own buffers (kept for its capacity).
    gro: Vec<Packet>,
    /// Packets queued since the last submission (see [`SUBMIT_EVERY`]).
    queued: usize,
    /// Decrypted packets waiting to be written to the TUN, in arrival order
    /// (an entry is taken when its write is queued).
    rx: Vec<Option<Packet>>,
    /// Plans those writes; `None` once the kernel refused a super-packet,
    /// then every packet is written alone.
    coalescer: Option<Coalescer>,
    completions: Vec<(u64, i32, u32)>,
    tick_out: Vec<(PeerId, Option<SocketAddr>, crate::proto::peer::TickOutcome)>,
    counters: Counters,
    now: Instant,
    stopping: bool,
    /// Configuration change lists being applied: list, next index, ack.
    applying: VecDeque<(Arc<Vec<Change>>, usize, Sender<()>)>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Builds the worker (on its own thread: the ring and slots are not Send).
    pub fn new(s: Setup) -> std::io::Result<Self> {
        let bits = worker_bits(s.workers);
        let (now, wall) = s.clock;
        let ring = IoUring::new(2048)?;
        let mut pool = Pool::shared(POOL_CAP, s.depot);
        let udp_bufs = BufRing::new(&ring, UDP_GROUP, UDP_RING, 0, BUF_SIZE as u32, &mut pool)?;
        // A read is at most the virtio-net header and a 64 KiB packet; the
        // tailroom after it is left for sealing a plain packet in place.
        let tun_len = (BUF_SIZE - TUN_READ_AT - TAILROOM) as u32;
        let tun_bufs = BufRing::new(&ring, TUN_GROUP, TUN_RING, TUN_READ_AT, tun_len, &mut pool)?;
        Ok(Self {
            ring,
            ops: Ops::new(SLOTS),
            udp_bufs,
            tun_bufs,
            pool,
            id: s.id,
            workers: s.workers,
            mask: (1u32 << bits) - 1,
            tun: s.tun,
            udp: s.udp,
            wake: s.wake,
            inbox: s.inbox,
            to_wake: vec![false; s.mailboxes.len()],
            mailboxes: s.mailboxes,
            mtu: s.mtu,
            iface: Interface::new_shard(now, wall, s.id, bits),
            routes: AllowedIps::new(),
            staged: HashMap::new(),
            batch: Vec::with_capacity(MAX_BATCH),
            batch_peer: None,
            gso_run: Vec::with_capacity(MAX_SEGMENTS),
            gso: true,
            gro: Vec::with_capacity(MAX_SEGMENTS),
            queued: 0,
            rx: Vec::with_capacity(MAX_RX_BATCH),
            coalescer: s.offload.tso.then(|| Coalescer::new(s.offload.uso)),
            completions: Vec::with_capacity(4096),
            tick_out: Vec::new(),
            counters: Counters::default(),
            now: Instant::now(),
            stopping: false,
            applying: VecDeque::new(),
        })
    }

    /// Runs until told to stop.
    pub fn run(mut self) -> std::io::Result<Counters> {
        self.arm_tun_read();
        self.arm_udp(self.udp);
        if self.ops.wake_read(&mut self.ring, self.wake).is_err() {
            return Err(std::io::Error::other("no slot for the wake-up read"));
        }
        if self.ops.timer(&mut self.ring, TICK).is_err() {
            return Err(std::io::Error::other("no slot for the timer"));
        }
        while !self.stopping {
            // Buffers lent back to the kernel during the last turn.
            self.udp_bufs.publish();
            self.tun_bufs.publish();
            // With configuration left to apply, only look for completions
            // (do not sleep), then apply the next chunk.
            let wait = usize::from(self.applying.is_empty());
            self.queued = 0;
            match self.ring.submit_and_wait(wait) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            self.completions.clear();
            self.completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let mut i = 0;
            while i < self.completions.len() {
                let (ud, res, flags) = self.completions[i];
                i += 1;
                self.on_completion(ud, res, flags);
            }
            self.drain_inbox();
            self.flush_batch();
            self.flush_rx();
            self.apply_some();
            self.send_wakes();
        }
        tracing::debug!(
            allocated = self.pool.allocated(),
            "buffers allocated over the run"
        );
        Ok(self.counters)
    }

    fn arm_tun_read(&mut self) {
        if self
            .ops
            .tun_read_multi(&mut self.ring, self.tun, TUN_GROUP)
            .is_err()
        {
            tracing::error!("no operation slot to read the TUN queue");
        }
    }

    fn arm_udp(&mut self, udp: UdpFds) {
        for fd in std::iter::once(udp.v4).chain(udp.v6) {
            self.arm_udp_recv(fd, udp.gen);
        }
    }

    fn arm_udp_recv(&mut self, fd: RawFd, gen: u32) {
        if self
            .ops
            .udp_recv_multi(&mut self.ring, fd, gen, UDP_GROUP)
            .is_err()
        {
            tracing::error!("no operation slot to receive on a UDP socket");
        }
    }

    fn on_completion(&mut self, user_data: u64, result: i32, flags: u32) {
        let pool = &mut self.pool;
        let Some(done) = self.ops.complete(user_data, flags, |b| pool.put(b)) else {
            return;
        };
        // A multishot receive that ended is re-armed when it ran out of
        // buffers or just finished; any other error would recur at once,
        // so it is reported and that receive stays off.
        let rearm = !done.more && !self.stopping && (result >= 0 || result == -libc::ENOBUFS);
        if result < 0 && result != -libc::ENOBUFS && !done.more {
            match done.kind {
                // The device is gone; the control plane sees it on netlink.
                OpKind::TunReadMulti if result == -libc::EBADFD => {}
                OpKind::TunReadMulti | OpKind::UdpRecvMulti { .. } => {
                    tracing::error!(kind = ?done.kind, errno = -result, "receive failed; not re-armed")
                }
                _ => {}
            }
        }
        match done.kind {
            OpKind::TunReadMulti => {
                let buf = done.bid.and_then(|b| self.tun_bufs.take(b, &mut self.pool));
                if let Some(buf) = buf {
                    match usize::try_from(result) {
                        Ok(n) if n > 0 => self.on_tun_read(buf, n),
                        _ => self.pool.put(buf),
                    }
                }
                if rearm {
                    self.arm_tun_read();
                }
            }
            OpKind::UdpRecvMulti { fd, gen } => {
                let current = gen == self.udp.gen;
                let buf = done.bid.and_then(|b| self.udp_bufs.take(b, &mut self.pool));
                if let Some(buf) = buf {
                    match usize::try_from(result) {
                        Ok(n) if current && n > 0 => self.on_received(buf, n),
                        _ => self.pool.put(buf),
                    }
                }
                if rearm && current {
                    self.arm_udp_recv(fd, gen);
                }
            }
            OpKind::TunWrite | OpKind::UdpSend => {
                if let Some(buf) = done.buf {
                    self.pool.put(buf);
                }
                if result < 0 && done.kind == OpKind::TunWrite {
                    self.counters.tun_write_errors += 1;
                }
            }
            OpKind::TunWriteGso => {
                if result < 0 {
                    self.counters.tun_write_errors += 1;
                }
                // EINVAL: the kernel does not take our super-packets; the
                // packets of that write are lost (TCP resends them) and
                // later ones are written one by one.
                if result == -libc::EINVAL && self.coalescer.take().is_some() {
                    tracing::warn!("TUN refused a coalesced write; writing packets one by one");
                }
            }
            OpKind::UdpSendGso => {
                // EIO: the kernel or the egress device cannot segment. Those
                // packets are lost (TCP resends them); later batches go out
                // one datagram per send.
                if result == -libc::EIO && self.gso {
                    tracing::warn!("UDP GSO refused by the kernel; sending without it");
                    self.gso = false;
                }
            }
            OpKind::Wake => {
                if !self.stopping {
                    let _ = self.ops.wake_read(&mut self.ring, self.wake);
                }
                self.drain_inbox();
            }
            OpKind::Timer => {
                self.on_tick();
                if !self.stopping {
                    let _ = self.ops.timer(&mut self.ring, TICK);
                }
            }
            OpKind::Free => {}
        }
    }

    /// A multishot receive filled `buf` with `n` bytes: the kernel's
    /// header, the source address, the control messages, then the payload:
    /// one datagram, handled in place where it lies, or with UDP GRO a
    /// burst of datagrams of one size, of which the first is handled in
    /// place and the others are copied into buffers of their own.
    fn on_received(&mut self, buf: Buf, n: usize) {
        let hdr = multishot_msghdr();
        let parsed = match io_uring::types::RecvMsgOut::parse(&buf[..n.min(buf.len())], &hdr) {
            Ok(out) if !out.is_payload_truncated() && !out.is_name_data_truncated() => {
                let from = source_address(out.name_data(), out.incoming_name_len());
                let start = out.payload_data().as_ptr() as usize - buf.as_ptr() as usize;
                let segment = gro_segment_size(out.control_data());
                from.map(|f| (f, start, out.payload_data().len(), segment))
            }
            _ => None,
        };
        let Some((from, start, len, segment)) = parsed else {
            self.counters.dropped.count(DropReason::Truncated);
            self.pool.put(buf);
            return;
        };
        let first = match segment {
            Some(seg) if seg < len => {
                for at in (start + seg..start + len).step_by(seg) {
                    let part = &buf[at..(at + seg).min(start + len)];
                    let mut out = self.pool.get_for(part.len());
                    out[HEADROOM..HEADROOM + part.len()].copy_from_slice(part);
                    if let Some(pkt) = PacketBuf::new(out, HEADROOM, part.len()) {
                        self.gro.push(pkt);
                    }
                }
                seg
            }
            _ => len,
        };
        match PacketBuf::new(buf, start, first) {
            Some(pkt) if !pkt.is_empty() => self.on_datagram(from, pkt),
            Some(pkt) => self.pool.put(pkt.into_inner()),
            None => {}
        }
        let mut rest = std::mem::take(&mut self.gro);
        for pkt in rest.drain(..) {
            self.on_datagram(from, pkt);
        }
        self.gro = rest;
    }

    /// A TUN read of `n` bytes at [`TUN_READ_AT`]: one packet, sealed where
    /// it lies, or a super-packet cut into MTU-sized packets, each copied
    /// into its own buffer.
    fn on_tun_read(&mut self, mut buf: Buf, n: usize) {
        let mtu = self.mtu.load(Ordering::Relaxed) as usize;
        let end = (TUN_READ_AT + n).min(buf.len());
        match offload::parse_read(&mut buf[TUN_READ_AT..end], mtu) {
            Ok(TunRead::Packet(p)) => {
                let len = p.len();
                if let Some(pkt) = PacketBuf::new(buf, HEADROOM, len) {
                    self.on_tun_packet(pkt, false);
                }
            }
            Ok(TunRead::Segments(segments)) => {
                for seg in segments {
                    let mut out = self.pool.get_for(seg.len());
                    let end = out.len() - TAILROOM;
                    match seg.write(&mut out[HEADROOM..end]) {
                        Ok(len) => {
                            if let Some(pkt) = PacketBuf::new(out, HEADROOM, len) {
                                self.on_tun_packet(pkt, false);
                            }
                        }
                        Err(_) => {
                            self.counters.tun_malformed += 1;
                            self.pool.put(out);
                        }
                    }
                }
                self.pool.put(buf);
            }
            Err(e) => {
                self.counters.tun_malformed += 1;
                if self.counters.tun_malformed.is_power_of_two() {
                    tracing::debug!(error = %e, count = self.counters.tun_malformed, "dropped a TUN read");
                }
                self.pool.put(buf);
            }
        }
    }

    /// Writes the decrypted packets gathered so far to the TUN: runs of one
    /// flow as one super-packet each (one `writev`, headers rewritten in
    /// the first packet's buffer), the rest one write per packet, all with
    /// the virtio-net header in the 10 bytes before the packet (every
    /// decrypted packet has its 16-byte transport header there).
    fn flush_rx(&mut self) {
        if self.rx.is_empty() {
            return;
        }
        let mut rx = std::mem::take(&mut self.rx);
        self.queued += rx.len();
        // Taken out for the loop, which needs `self` for the writes.
        match self.coalescer.take() {
            Some(mut coalescer) => {
                let writes =
                    coalescer.plan_with(rx.len(), |i| rx[i].as_ref().map_or(&[][..], |p| p.data()));
                for w in writes {
                    self.write_planned(&w, &mut rx);
                }
                self.coalescer = Some(coalescer);
            }
            None => {
                for pkt in rx.iter_mut().filter_map(Option::take) {
                    self.tun_write(pkt, &VNET_NONE);
                }
            }
        }
        // Every packet is in exactly one write; anything left is returned.
        for pkt in rx.drain(..).flatten() {
            self.pool.put(pkt.into_inner());
        }
        self.rx = rx;
        self.submit_early();
    }

    /// Queues one planned write: a packet alone, or the members of a
    /// super-packet as one `writev` (taken out of `rx`).
    fn write_planned(&mut self, w: &offload::TunWrite<'_>, rx: &mut [Option<Packet>]) {
        let Some((&first, rest)) = w.members().split_first() else {
            return;
        };
        let Some(head) = rx.get_mut(first as usize).and_then(Option::take) else {
            return;
        };
        if rest.is_empty() {
            self.tun_write(head, w.header());
            return;
        }
        let skip = w.skip();
        let (start, len, buf) = with_header(head, w.header());
        let others = rest.iter().filter_map(|&m| {
            let p = rx.get_mut(m as usize)?.take()?;
            let (s, l) = (p.start() + skip, p.len() - skip);
            Some((p.into_inner(), s, l))
        });
        let pool = &mut self.pool;
        let parts = std::iter::once((buf, start, len)).chain(others);
        if self
            .ops
            .tun_writev(&mut self.ring, self.tun, parts, |b| pool.put(b))
            .is_err()
        {
            self.counters.backpressure += 1 + rest.len() as u64;
        }
    }

    /// Queues the write of one packet behind `header` (its virtio-net
    /// header, all zero for a packet alone).
    fn tun_write(&mut self, pkt: Packet, header: &[u8]) {
        let (start, len, buf) = with_header(pkt, header);
        if let Err((_, buf)) = self
            .ops
            .tun_write(&mut self.ring, self.tun, buf, start, len)
        {
            self.counters.backpressure += 1;
            self.pool.put(buf);
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Msg::Tun(pkt) => self.on_tun_packet(pkt, true),
                Msg::Udp(from, pkt) => self.on_datagram(from, pkt),
                Msg::Apply(changes, ack) => {
                    self.flush_batch();
                    self.applying.push_back((changes, 0, ack));
                    self.apply_some();
                }
                Msg::Stats(reply) => {
                    let _ = reply.send(self.stats());
                }
                Msg::Sockets(udp) => {
                    self.udp = udp;
                    self.arm_udp(udp);
                }
                Msg::Stop => self.stopping = true,
            }
        }
    }

    /// Applies at most [`APPLY_CHUNK`] pending configuration changes, so a
    /// bulk load (a million peers) is spread over loop turns and packets
    /// keep flowing meanwhile; acknowledges each change list when done.
    fn apply_some(&mut self) {
        let mut budget = APPLY_CHUNK;
        while budget > 0 {
            let Some((changes, next, _)) = self.applying.front_mut() else {
                return;
            };
            let end = (*next + budget).min(changes.len());
            let list = changes.clone();
            let start = *next;
            *next = end;
            budget -= end - start;
            for c in &list[start..end] {
                self.apply(c);
            }
            if end == list.len() {
                if let Some((_, _, ack)) = self.applying.pop_front() {
                    let _ = ack.send(());
                }
            }
        }
    }

    fn handoff(&mut self, to: u32, msg: Msg) {
        match msg {
            Msg::Tun(_) => self.counters.handed_tun += 1,
            Msg::Udp(..) => self.counters.handed_udp += 1,
            _ => {}
        }
        if let Some(mb) = self.mailboxes.get(to as usize) {
            if mb.tx.send(msg).is_ok() {
                self.to_wake[to as usize] = true;
            }
        }
    }

    fn send_wakes(&mut self) {
        for (i, w) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                self.mailboxes[i].wake();
            }
        }
    }

    /// A packet read from this worker's TUN queue (`handed` false) or
    /// handed over by another worker (`handed` true: routed here only, never
    /// passed on again, so workers that briefly disagree while a change is
    /// being applied cannot bounce a packet between them).
    fn on_tun_packet(&mut self, pkt: Packet, handed: bool) {
        if is_own_datagram(pkt.data(), self.udp.port) {
            self.counters.routing_loop += 1;
            if self.counters.routing_loop.is_power_of_two() {
                tracing::debug!(
                    count = self.counters.routing_loop,
                    "dropped our own datagram from the TUN: a peer's endpoint routes into the tunnel"
                );
            }
            self.pool.put(pkt.into_inner());
            return;
        }
        let Some(dst) = destination(pkt.data()) else {
            self.counters.no_route += 1;
            self.pool.put(pkt.into_inner());
            return;
        };
        // Longest match over this shard's peers and, with several workers,
        // over the other workers' peers (a tie goes to this shard: the
        // control plane never gives one prefix to two peers, so a tie is
        // only a change still being applied).
        let local = self.iface.route_with_len(dst);
        if self.workers > 1 && !handed {
            if let Some((key, len)) = self.routes.lookup_with_len(dst) {
                if local.is_none_or(|(_, l)| len > l) {
                    let owner = owner_of_key(&key, self.workers);
                    self.handoff(owner, Msg::Tun(pkt));
                    return;
                }
            }
        }
        let Some((peer, _)) = local else {
            self.counters.no_route += 1;
            self.pool.put(pkt.into_inner());
            return;
        };
        if self.batch_peer != Some(peer) || self.batch.len() >= MAX_BATCH {
            self.flush_batch();
            self.batch_peer = Some(peer);
        }
        self.batch.push(pkt);
    }

    /// Seals the pending batch for its peer and queues the sends; what
    /// cannot be sealed (no session yet) is staged for the handshake.
    fn flush_batch(&mut self) {
        let Some(peer) = self.batch_peer.take() else {
            return;
        };
        if self.batch.is_empty() {
            return;
        }
        let mtu = self.mtu.load(Ordering::Relaxed) as usize;
        let out = self
            .iface
            .encrypt_batch(peer, &mut self.batch, mtu, self.now);
        let endpoint = self.iface.peer(peer).and_then(|p| p.endpoint());
        if let Some(h) = out.handshake {
            self.send_control(endpoint, &h);
        }
        let mut batch = std::mem::take(&mut self.batch);
        for pkt in batch.drain(out.sealed..) {
            self.stage(peer, pkt);
        }
        self.queued += batch.len();
        self.send_sealed(endpoint, &mut batch);
        self.batch = batch;
        self.submit_early();
    }

    /// Hands queued operations to the kernel once [`SUBMIT_EVERY`] packets
    /// are waiting; the loop's own submission picks up the rest. A failed
    /// submit (EBUSY with a full completion queue) is left to that one.
    fn submit_early(&mut self) {
        if self.queued >= SUBMIT_EVERY {
            self.queued = 0;
            let _ = self.ring.submit();
        }
    }

    /// Sends sealed packets for one endpoint, drained from `pkts`. Runs of
    /// equal-size packets (a smaller one may end a run) leave as one UDP
    /// GSO send each; everything else one datagram per send.
    fn send_sealed(&mut self, endpoint: Option<SocketAddr>, pkts: &mut Vec<Packet>) {
        let target = endpoint.and_then(|d| self.udp_fd(&d).map(|fd| (d, fd)));
        let (Some((dst, fd)), true) = (target, self.gso && pkts.len() > 1) else {
            for pkt in pkts.drain(..) {
                self.send_packet(endpoint, pkt);
            }
            return;
        };
        let mut run = std::mem::take(&mut self.gso_run);
        let mut bytes = 0;
        for pkt in pkts.drain(..) {
            let segment = run.first().map_or(0, Packet::len);
            let fits = !run.is_empty()
                && pkt.len() <= segment
                && run.last().is_some_and(|l| l.len() == segment)
                && run.len() < MAX_SEGMENTS
                && bytes + pkt.len() <= MAX_GSO_BYTES;
            if !fits && !run.is_empty() {
                self.send_run(fd, dst, &mut run);
                bytes = 0;
            }
            bytes += pkt.len();
            run.push(pkt);
        }
        if !run.is_empty() {
            self.send_run(fd, dst, &mut run);
        }
        self.gso_run = run;
    }

    fn send_run(&mut self, fd: RawFd, dst: SocketAddr, run: &mut Vec<Packet>) {
        if run.len() == 1 {
            if let Some(pkt) = run.pop() {
                self.send_packet(Some(dst), pkt);
            }
            return;
        }
        let segment = run.first().map_or(0, Packet::len) as u16;
        if self
            .ops
            .udp_send_gso(&mut self.ring, fd, run, segment, dst)
            .is_err()
        {
            self.counters.backpressure += run.len() as u64;
            for pkt in run.drain(..) {
                self.pool.put(pkt.into_inner());
            }
        }
    }

    fn stage(&mut self, peer: PeerId, pkt: Packet) {
        let q = self.staged.entry(peer).or_default();
        if q.len() >= MAX_STAGED {
            if let Some(old) = q.pop_front() {
                self.counters.staged_dropped += 1;
                self.pool.put(old.into_inner());
            }
        }
        q.push_back(pkt);
    }

    /// Sends what waited for `peer`'s handshake; false if nothing waited.
    fn flush_staged(&mut self, peer: PeerId) -> bool {
        let Some(mut q) = self.staged.remove(&peer) else {
            return false;
        };
        if q.is_empty() {
            return false;
        }
        self.flush_batch();
        while !q.is_empty() {
            self.batch_peer = Some(peer);
            let n = q.len().min(MAX_BATCH);
            self.batch.extend(q.drain(..n));
            self.flush_batch();
            if self.staged.get(&peer).is_some_and(|s| !s.is_empty()) {
                // Still no session: the rest goes back to the queue.
                let back = self.staged.entry(peer).or_default();
                back.extend(q.drain(..));
            }
        }
        true
    }

    fn udp_fd(&self, dst: &SocketAddr) -> Option<RawFd> {
        match dst {
            SocketAddr::V4(_) => Some(self.udp.v4),
            SocketAddr::V6(_) => self.udp.v6,
        }
    }

    fn send_packet(&mut self, endpoint: Option<SocketAddr>, pkt: Packet) {
        let Some((dst, fd)) = endpoint.and_then(|d| self.udp_fd(&d).map(|fd| (d, fd))) else {
            self.counters.no_route += 1;
            self.pool.put(pkt.into_inner());
            return;
        };
        let (start, len) = (pkt.start(), pkt.len());
        if let Err((_, buf)) =
            self.ops
                .udp_send(&mut self.ring, fd, pkt.into_inner(), start, len, dst)
        {
            self.counters.backpressure += 1;
            self.pool.put(buf);
        }
    }

    fn send_control(&mut self, endpoint: Option<SocketAddr>, msg: &ControlMsg) {
        let bytes = msg.as_bytes();
        let mut buf = self.pool.get_for(bytes.len());
        buf[..bytes.len()].copy_from_slice(bytes);
        if let Some(pkt) = PacketBuf::new(buf, 0, bytes.len()) {
            self.send_packet(endpoint, pkt);
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, mut pkt: Packet) {
        if self.workers > 1 {
            if let Some(index) = receiver_index(pkt.data()) {
                let owner = index & self.mask;
                if owner != self.id {
                    self.handoff(owner, Msg::Udp(from, pkt));
                    return;
                }
            }
        }
        let res = self.iface.receive(from, &mut pkt, self.now);
        match res {
            Received::Data {
                peer,
                confirmed,
                handshake,
            } => {
                self.rx.push(Some(pkt));
                if self.rx.len() >= MAX_RX_BATCH {
                    self.flush_rx();
                }
                self.after_receive(peer, confirmed, handshake);
            }
            Received::Keepalive {
                peer,
                confirmed,
                handshake,
            } => {
                self.pool.put(pkt.into_inner());
                self.after_receive(peer, confirmed, handshake);
            }
            Received::Reply { reply, .. } => {
                self.pool.put(pkt.into_inner());
                self.send_control(Some(from), &reply);
            }
            Received::HandshakeComplete { peer, keepalive } => {
                self.pool.put(pkt.into_inner());
                if !self.flush_staged(peer) {
                    let endpoint = self.iface.peer(peer).and_then(|p| p.endpoint());
                    self.send_control(endpoint, &keepalive);
                }
            }
            Received::Foreign { key } => {
                let owner = owner_of_key(&key, self.workers);
                if owner != self.id {
                    self.handoff(owner, Msg::Udp(from, pkt));
                } else {
                    self.counters.dropped.count(DropReason::UnknownPeer);
                    self.pool.put(pkt.into_inner());
                }
            }
            Received::CookieAccepted { .. } => self.pool.put(pkt.into_inner()),
            Received::Dropped(reason) => {
                self.counters.dropped.count(DropReason::from(&reason));
                self.pool.put(pkt.into_inner());
            }
        }
    }

    fn after_receive(&mut self, peer: PeerId, confirmed: bool, handshake: Option<ControlMsg>) {
        if let Some(h) = handshake {
            let endpoint = self.iface.peer(peer).and_then(|p| p.endpoint());
            self.send_control(endpoint, &h);
        }
        if confirmed {
            self.flush_staged(peer);
        }
    }

    fn on_tick(&mut self) {
        self.flush_batch();
        let now = self.now;
        let mut out = std::mem::take(&mut self.tick_out);
        self.iface
            .tick(now, |peer, endpoint, res| out.push((peer, endpoint, res)));
        for (peer, endpoint, res) in out.drain(..) {
            if res.drop_staged {
                if let Some(q) = self.staged.remove(&peer) {
                    self.counters.staged_dropped += q.len() as u64;
                    for p in q {
                        self.pool.put(p.into_inner());
                    }
                }
            }
            for msg in res.send.iter().flatten() {
                self.send_control(endpoint, msg);
            }
        }
        self.tick_out = out;
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::PrivateKey(key) => self.iface.set_private_key(key.clone()),
            // Sockets belong to the control plane; it sends new ones.
            Change::ListenPort(_) | Change::Fwmark(_) => {}
            Change::Peer(cfg) => self.apply_peer(cfg),
            Change::RemovePeer(key) => {
                if self.workers > 1 {
                    self.routes.remove_value(*key);
                }
                if let Some(id) = self.iface.peer_by_key(key) {
                    let _ = self.iface.remove_peer(id);
                    if let Some(q) = self.staged.remove(&id) {
                        for p in q {
                            self.pool.put(p.into_inner());
                        }
                    }
                }
            }
        }
    }

    fn apply_peer(&mut self, cfg: &PeerConfig) {
        let key = cfg.public_key;
        if owner_of_key(&key, self.workers) != self.id {
            self.routes.remove_value(key);
            for &(addr, cidr) in &cfg.allowed_ips {
                let _ = self.routes.insert(addr, cidr, key);
            }
            return;
        }
        let Ok(id) = self.iface.add_peer(key) else {
            return;
        };
        let now = self.now;
        let Some(peer) = self.iface.peer_mut(id) else {
            return;
        };
        if peer.preshared_key() != &cfg.preshared_key {
            peer.set_preshared_key(cfg.preshared_key.clone());
        }
        if let Some(ep) = cfg.endpoint {
            peer.set_endpoint(Some(ep));
        }
        let keepalive_turned_on =
            cfg.persistent_keepalive > 0 && peer.persistent_keepalive() != cfg.persistent_keepalive;
        if peer.persistent_keepalive() != cfg.persistent_keepalive {
            peer.set_persistent_keepalive(cfg.persistent_keepalive, now);
        }
        let has_endpoint = peer.endpoint().is_some();
        let current: Vec<(IpAddr, u8)> = self.iface.allowed_ips(id).collect();
        if current != cfg.allowed_ips {
            self.iface.clear_allowed(id);
            for &(addr, cidr) in &cfg.allowed_ips {
                let _ = self.iface.allow(id, addr, cidr);
            }
        }
        // As wireguard-go: turning on persistent keepalive on a peer with an
        // endpoint sends a keepalive now, which starts the handshake a
        // spoke behind NAT needs to be reachable.
        if keepalive_turned_on && has_endpoint {
            let endpoint = self.iface.peer(id).and_then(|p| p.endpoint());
            for msg in self.iface.keepalive(id, now).into_iter().flatten() {
                self.send_control(endpoint, &msg);
            }
        }
    }

    fn stats(&self) -> Vec<PeerStats> {
        self.iface
            .peers()
            .map(|p| PeerStats {
                public_key: *p.public_key(),
                endpoint: p.endpoint(),
                last_handshake: p.last_handshake(),
                rx_bytes: p.rx_bytes(),
                tx_bytes: p.tx_bytes(),
            })
            .collect()
    }
}

const _: () = assert!(BUF_SIZE > 65535 + HEADROOM + TAILROOM);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_bits_cover_the_workers() {
        assert_eq!(worker_bits(1), 0);
        assert_eq!(worker_bits(2), 1);
        assert_eq!(worker_bits(3), 2);
        assert_eq!(worker_bits(4), 2);
        assert_eq!(worker_bits(5), 3);
        assert_eq!(worker_bits(256), 8);
    }

    #[test]
    fn receiver_index_of_each_type() {
        let mut m = [0u8; 32];
        m[0] = 4;
        m[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(receiver_index(&m), Some(7));
        m[0] = 3;
        assert_eq!(receiver_index(&m), Some(7));
        m[0] = 2;
        m[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(receiver_index(&m), Some(9));
        m[0] = 1;
        assert_eq!(receiver_index(&m), None);
        assert_eq!(receiver_index(&[4, 0]), None);
    }

    #[test]
    fn own_datagrams_are_recognised() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[9] = 17;
        v4[20..22].copy_from_slice(&51820u16.to_be_bytes());
        assert!(is_own_datagram(&v4, 51820));
        assert!(!is_own_datagram(&v4, 51821));
        v4[9] = 6; // TCP from that port is not ours
        assert!(!is_own_datagram(&v4, 51820));
        v4[9] = 17;
        v4[7] = 1; // a later fragment has no UDP header
        assert!(!is_own_datagram(&v4, 51820));
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[40..42].copy_from_slice(&51820u16.to_be_bytes());
        assert!(is_own_datagram(&v6, 51820));
        assert!(!is_own_datagram(&v6[..41], 51820));
        assert!(!is_own_datagram(&[], 51820));
    }

    #[test]
    fn destinations() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(destination(&v4), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(destination(&v4[..19]), None);
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xfd;
        assert_eq!(destination(&v6), Some("fd00::".parse().unwrap()));
        assert_eq!(destination(&[0x50; 40]), None);
    }

    #[test]
    fn owners_spread() {
        let mut counts = [0u32; 4];
        for i in 0..4000u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_le_bytes());
            counts[owner_of_key(&PublicKey::from_bytes(b), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
