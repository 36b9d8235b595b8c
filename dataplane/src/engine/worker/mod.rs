//! One worker thread: the io_uring shell around a [`Shard`].
//!
//! The loop waits on its ring; each wake-up drains every completion and
//! hands what it carries to the shard (TUN reads, UDP receives, packets
//! from other workers, timer ticks, configuration), then executes the
//! shard's actions as submissions: sends, TUN writes, handoffs. Buffers
//! go back to the shard's pool when their operation completes.
//! Submissions go to the kernel once per loop turn, or as soon as
//! [`SUBMIT_EVERY`] packets are queued.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use corewire_ebpf::xdp::LiveIndexes;
use crossbeam_channel::{Receiver, Sender};
use io_uring::IoUring;

mod kernel;
mod log;
mod publish;

use kernel::Kernel;
use log::EventLog;

use super::board::{PeerPublisher, WorkerBoard};
use super::bufring::{BufRing, Refused};
use super::config::{Change, PeerStats};
use super::counters::{Counters, DropReason};
use super::limits::{
    APPLY_CHUNK, MAILBOX_TURN, MAX_SEGMENTS, POOL_CAP, SLOTS, SUBMIT_EVERY, TICK, TUN_RING,
    UDP_RING,
};
use super::ops::{self, gro_segment_size, multishot_msghdr, source_address, OpKind, Ops};
use super::pool::{Buf, Depot, Packet, Pool, BUF_SIZE};
use super::routes::SharedRoutes;
use super::shard::{CookieSeed, Directory, Handoff, Shard, ShardSetup, UdpTx, TUN_READ_AT};
use super::tun::Offload;
use crate::proto::messages::{HEADROOM, TAILROOM};

/// Buffer group ids of the two provided-buffer rings.
const UDP_GROUP: u16 = 0;
const TUN_GROUP: u16 = 1;

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

/// Messages from the control plane to a worker (packets from other workers
/// travel separately, through the bounded [`Mailbox::packets`]).
#[derive(Debug)]
pub enum Msg {
    /// Configuration changes; reply when applied.
    Apply(Arc<Vec<Change>>, Sender<()>),
    /// Report this shard's peers.
    Stats(Sender<Vec<PeerStats>>),
    /// New sockets (listen port changed); reply once nothing of this
    /// worker holds the old ones any more.
    Sockets(UdpFds, Sender<()>),
    /// Leave the loop.
    Stop,
}

/// A configuration change being applied a chunk at a time: the changes,
/// how far it got, whom to tell.
type Applying = (Arc<Vec<Change>>, usize, Sender<()>);

/// A way to reach one worker: its channels and its eventfd.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// Control messages (only the control plane sends them).
    pub tx: Sender<Msg>,
    /// Packets handed over by other workers: bounded ([`MAILBOX`]); a
    /// full mailbox drops what is handed over, and the sender counts it.
    pub packets: Sender<Handoff>,
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
    /// This worker's control channel.
    pub inbox: Receiver<Msg>,
    /// Packets other workers handed to this one.
    pub packets: Receiver<Handoff>,
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
    /// The device's cookie seed.
    pub cookies: CookieSeed,
    /// The device's configured keys.
    pub directory: Directory,
    /// Where this worker publishes its live receiver indexes (the XDP
    /// guard's map), when the guard runs.
    pub live: Option<LiveIndexes>,
    /// Every peer's prefixes, shared by the workers.
    pub routes: SharedRoutes,
    /// Where this worker publishes its counters and peers.
    pub board: Arc<WorkerBoard>,
}

/// The [`Kernel`] view of a worker's fields (a macro, not a method, so the
/// borrow leaves the worker's other fields, its shard first, free).
macro_rules! kernel {
    ($w:ident) => {
        Kernel {
            ring: &mut $w.ring,
            ops: &mut $w.ops,
            tun: $w.tun,
            udp: $w.udp,
            mailboxes: &$w.mailboxes,
            to_wake: &mut $w.to_wake,
        }
    };
}

/// A worker's state; lives on its own thread.
pub struct Worker {
    // The ring is declared first so it is dropped first: the kernel stops
    // touching slot memory before the slots are freed.
    ring: IoUring,
    ops: Ops,
    udp_bufs: BufRing,
    tun_bufs: BufRing,
    shard: Shard,
    tun: RawFd,
    udp: UdpFds,
    wake: RawFd,
    inbox: Receiver<Msg>,
    packets: Receiver<Handoff>,
    mailboxes: Vec<Mailbox>,
    to_wake: Vec<bool>,
    mtu: Arc<AtomicU32>,
    completions: Vec<(u64, i32, u32)>,
    /// The datagrams of a refused GSO send, to send again one by one.
    resend: Vec<Packet>,
    /// Packets queued since the last submission (see [`SUBMIT_EVERY`]).
    queued: usize,
    now: Instant,
    stopping: bool,
    /// Receives still armed on replaced sockets, and whom to tell when none
    /// are left.
    old_sockets: Option<(usize, Sender<()>)>,
    /// Configuration change lists being applied: list, next index, ack.
    applying: VecDeque<Applying>,
    /// The XDP guard's map of live indexes, when it runs.
    live: Option<LiveIndexes>,
    board: Arc<WorkerBoard>,
    peers: PeerPublisher,
    log: EventLog,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Builds the worker (on its own thread: the ring and slots are not Send).
    pub fn new(s: Setup) -> std::io::Result<Self> {
        let ring = ops::ring(2048)?;
        let mut pool = Pool::shared(POOL_CAP, s.depot);
        let udp_bufs = BufRing::new(&ring, UDP_GROUP, UDP_RING, 0, BUF_SIZE as u32, &mut pool)?;
        // A read is at most the virtio-net header and a 64 KiB packet; the
        // tailroom after it is left for sealing a plain packet in place.
        let tun_len = (BUF_SIZE - TUN_READ_AT - TAILROOM) as u32;
        let tun_bufs = BufRing::new(&ring, TUN_GROUP, TUN_RING, TUN_READ_AT, tun_len, &mut pool)?;
        let mut shard = Shard::new(ShardSetup {
            id: s.id,
            workers: s.workers,
            tso: s.offload.tso,
            uso: s.offload.uso,
            clock: s.clock,
            pool,
            cookies: s.cookies,
            directory: s.directory,
        });
        shard.set_sockets(s.udp.port, s.udp.v6.is_some());
        shard.set_routes(Some(s.routes));
        if s.live.is_some() {
            shard.interface_mut().indexes_mut().record_changes(true);
        }
        let now = Instant::now();
        Ok(Self {
            ring,
            ops: Ops::new(SLOTS),
            udp_bufs,
            tun_bufs,
            shard,
            tun: s.tun,
            udp: s.udp,
            wake: s.wake,
            inbox: s.inbox,
            packets: s.packets,
            to_wake: vec![false; s.mailboxes.len()],
            mailboxes: s.mailboxes,
            mtu: s.mtu,
            completions: Vec::with_capacity(4096),
            resend: Vec::with_capacity(MAX_SEGMENTS),
            queued: 0,
            now: Instant::now(),
            stopping: false,
            old_sockets: None,
            applying: VecDeque::new(),
            live: s.live,
            board: s.board,
            peers: PeerPublisher::default(),
            log: EventLog::new(s.id, now),
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
        let mut publishing = false;
        while !self.stopping {
            // Buffers lent back to the kernel during the last turn.
            self.udp_bufs.publish();
            self.tun_bufs.publish();
            // With configuration left to apply or handshake messages left
            // beyond the last turn's budget, only look for completions (do
            // not sleep), then go on with them.
            // The same while a peer snapshot is being published.
            let wait = usize::from(
                self.applying.is_empty()
                    && !self.shard.has_pending()
                    && self.packets.is_empty()
                    && !publishing,
            );
            self.queued = 0;
            match self.ring.submit_and_wait(wait) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            self.shard
                .set_mtu(self.mtu.load(Ordering::Relaxed) as usize);
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
            self.shard.flush(self.now);
            self.execute();
            self.apply_some();
            self.send_wakes();
            self.count_turn();
            publishing = self.peers.step(self.shard.interface(), &self.board);
        }
        tracing::debug!(
            allocated = self.shard.pool().allocated(),
            "buffers allocated over the run"
        );
        Ok(self.shard.counters().clone())
    }

    /// Executes the shard's actions; hands queued operations to the kernel
    /// once [`SUBMIT_EVERY`] packets are waiting (the loop's own submission
    /// picks up the rest; a failed submit, EBUSY with a full completion
    /// queue, is left to it).
    fn execute(&mut self) {
        let mut io = kernel!(self);
        self.queued += self.shard.execute(&mut io);
        self.publish_live_indexes();
        self.log.events(&mut self.shard, self.now);
        if self.queued >= SUBMIT_EVERY {
            self.queued = 0;
            let _ = self.ring.submit();
        }
    }

    /// The buffer a receive filled under `bid` in `group`, or `None` if
    /// there is none to replace it with (the data is dropped and counted).
    fn take_buffer(&mut self, bid: u16, group: u16) -> Option<Buf> {
        let ring = if group == TUN_GROUP {
            &mut self.tun_bufs
        } else {
            &mut self.udp_bufs
        };
        match ring.take(bid, self.shard.pool()) {
            Ok(buf) => Some(buf),
            Err(Refused::Ceiling) => {
                self.shard.counters_mut().buffers_refused += 1;
                None
            }
            Err(Refused::UnknownBuffer) => None,
        }
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
        // A GSO send refused for its size (EINVAL: segments longer than
        // the route's MTU; EMSGSIZE): its datagrams go again one by one,
        // which the kernel fragments. GSO stays on for other sends.
        let resend = (result == -libc::EINVAL || result == -libc::EMSGSIZE)
            && self.ops.kind(user_data) == Some(OpKind::UdpSendGso);
        let resend_to = if resend {
            self.ops.take_gso_packets(user_data, &mut self.resend)
        } else {
            None
        };
        let pool = self.shard.pool();
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
                // Cancelled on purpose: the listen port changed.
                OpKind::UdpRecvMulti { .. } if result == -libc::ECANCELED => {}
                OpKind::TunReadMulti | OpKind::UdpRecvMulti { .. } => {
                    tracing::error!(kind = ?done.kind, errno = -result, "receive failed; not re-armed")
                }
                _ => {}
            }
        }
        match done.kind {
            OpKind::TunReadMulti => {
                let buf = done.bid.and_then(|b| self.take_buffer(b, TUN_GROUP));
                if let Some(buf) = buf {
                    match usize::try_from(result) {
                        Ok(n) if n > 0 => {
                            self.shard.tun_read(buf, n, self.now);
                            self.execute();
                        }
                        _ => self.shard.pool().put(buf),
                    }
                }
                if rearm {
                    self.arm_tun_read();
                }
            }
            OpKind::UdpRecvMulti { fd, gen } => {
                let current = gen == self.udp.gen;
                if !current && !done.more {
                    self.old_receive_ended();
                }
                let buf = done.bid.and_then(|b| self.take_buffer(b, UDP_GROUP));
                if let Some(buf) = buf {
                    match usize::try_from(result) {
                        Ok(n) if current && n > 0 => {
                            self.on_received(buf, n);
                            self.execute();
                        }
                        _ => self.shard.pool().put(buf),
                    }
                }
                if rearm && current {
                    self.arm_udp_recv(fd, gen);
                }
            }
            OpKind::TunWrite | OpKind::UdpSend => {
                if let Some(buf) = done.buf {
                    self.shard.pool().put(buf);
                }
                if result < 0 && done.kind == OpKind::TunWrite {
                    self.shard.counters_mut().tun_write_errors += 1;
                }
            }
            OpKind::TunWriteGso => {
                if result < 0 {
                    self.shard.counters_mut().tun_write_errors += 1;
                }
                // EINVAL: the kernel does not take our super-packets; the
                // packets of that write are lost (TCP resends them) and
                // later ones are written one by one.
                if result == -libc::EINVAL && self.shard.tun_coalescing_refused() {
                    tracing::warn!("TUN refused a coalesced write; writing packets one by one");
                }
            }
            OpKind::UdpSendGso if resend_to.is_some() => {
                if let Some(dst) = resend_to {
                    self.resend_one_by_one(dst);
                }
            }
            OpKind::UdpSendGso => {
                // EIO: the kernel or the egress device cannot segment. Those
                // packets are lost (TCP resends them); later batches go out
                // one datagram per send.
                if result == -libc::EIO && self.shard.udp_gso_refused() {
                    tracing::warn!("UDP GSO refused by the kernel; sending without it");
                }
            }
            OpKind::Wake => {
                if !self.stopping {
                    let _ = self.ops.wake_read(&mut self.ring, self.wake);
                }
                self.drain_inbox();
            }
            OpKind::Timer => {
                self.shard.tick(self.now);
                self.execute();
                self.log.flush(self.now);
                if !self.stopping {
                    let _ = self.ops.timer(&mut self.ring, TICK);
                }
            }
            OpKind::Free => {}
        }
    }

    /// A receive on a replaced socket ended; when the last has, the
    /// control plane may close those sockets.
    fn old_receive_ended(&mut self) {
        if let Some((n, ack)) = self.old_sockets.take() {
            if n <= 1 {
                let _ = ack.send(());
            } else {
                self.old_sockets = Some((n - 1, ack));
            }
        }
    }

    /// Sends the datagrams of a refused GSO send again, one per send.
    fn resend_one_by_one(&mut self, dst: SocketAddr) {
        let n = self.resend.len() as u64;
        let first = self.shard.counters().gso_resent == 0;
        self.shard.counters_mut().gso_resent += n;
        if first {
            tracing::info!(%dst, "a GSO send was too large for the path; sending its datagrams one by one");
        }
        let mut io = kernel!(self);
        let mut one = Vec::with_capacity(1);
        for pkt in self.resend.drain(..) {
            let len = pkt.len();
            one.push(pkt);
            if !io.send(dst, len, &mut one) {
                for p in one.drain(..) {
                    self.shard.counters_mut().backpressure += 1;
                    self.shard.pool().put(p.into_inner());
                }
            }
        }
        self.queued += n as usize;
    }

    /// A multishot receive filled `buf` with `n` bytes: the kernel's
    /// header, the source address, the control messages (the GRO size),
    /// then the payload, which goes to the shard where it lies.
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
        match parsed {
            Some((from, start, len, segment)) => {
                self.shard
                    .udp_received(from, buf, start, len, segment, self.now);
            }
            None => {
                self.shard
                    .counters_mut()
                    .dropped
                    .count(DropReason::Truncated);
                self.shard.pool().put(buf);
            }
        }
    }

    /// Takes in control messages, and at most [`MAILBOX_TURN`] packets
    /// from other workers (the rest wait for the next turn).
    fn drain_inbox(&mut self) {
        for _ in 0..MAILBOX_TURN {
            let Ok(p) = self.packets.try_recv() else {
                break;
            };
            self.shard.handed(p, self.now);
            self.execute();
        }
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Msg::Apply(changes, ack) => {
                    self.applying.push_back((changes, 0, ack));
                    self.apply_some();
                }
                Msg::Stats(reply) => {
                    let _ = reply.send(self.shard.stats());
                }
                Msg::Sockets(udp, ack) => {
                    self.udp = udp;
                    self.shard.set_sockets(udp.port, udp.v6.is_some());
                    self.arm_udp(udp);
                    let n = self.ops.cancel_udp_recvs(&mut self.ring, udp.gen);
                    if n == 0 {
                        let _ = ack.send(());
                    } else {
                        self.old_sockets = Some((n, ack));
                    }
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
                break;
            };
            let end = (*next + budget).min(changes.len());
            let list = changes.clone();
            let start = *next;
            *next = end;
            budget -= end - start;
            self.shard.apply(&list[start..end], self.now);
            if end == list.len() {
                if let Some((_, _, ack)) = self.applying.pop_front() {
                    let _ = ack.send(());
                }
            }
        }
        self.execute();
    }

    fn send_wakes(&mut self) {
        for (i, w) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                self.mailboxes[i].wake();
            }
        }
    }
}

const _: () = assert!(BUF_SIZE > 65535 + HEADROOM + TAILROOM);
