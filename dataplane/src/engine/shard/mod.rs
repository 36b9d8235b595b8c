//! One worker's logic, sans-IO: its shard of the peers and everything
//! that happens between a completed read and the next submission.
//!
//! The shell that owns a [`Shard`] (the io_uring [`worker`](super::worker),
//! or the in-memory [`mem`](super::mem) backend in tests and benchmarks)
//! hands it batches with the current time: TUN reads (plain packets or
//! super-packets), UDP receives (one datagram or a GRO burst of one size),
//! packets handed over by another worker, timer ticks, configuration
//! changes and stats requests. The shard turns them into actions that
//! the shell executes through [`Io`]: UDP sends (one datagram, or a run of
//! equal-size datagrams for one GSO send), TUN writes (a packet behind its
//! virtio-net header, or a coalesced super-packet), and handoffs to the
//! worker that owns a packet's peer. It makes no syscall and reads no
//! clock; buffers come from and return to its [`Pool`].
//!
//! ```text
//!   shell ── tun_read / udp_received / handed / tick / apply / flush ──> Shard
//!   Shard ── transmit.rs:  route, batch per peer, seal, group for GSO
//!         ── receive.rs:   split GRO bursts, open, stage rx, coalesce
//!         ── config.rs:    apply changes, stats, timers
//!   shell <── execute(io): UdpTx::send, TunTx::write, Handoffs::hand ──
//! ```
//!
//! A peer belongs to exactly one shard (chosen from its public key, see
//! [`owner`](super::owner)), so its sessions, counters and timers need no
//! lock. A packet that reaches the wrong shard becomes a handoff: a session
//! index names its owner in its low bits; an initiation names its peer once
//! its static key is decrypted; a TUN packet names its peer through the
//! routing table.

mod config;
mod handshake;
mod receive;
mod transmit;

pub use transmit::TUN_READ_AT;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::counters::Counters;
use super::limits::{DEFAULT_MTU, MAX_BATCH, MAX_EVENTS, MAX_RX_BATCH, MAX_SEGMENTS};
use super::offload::{Coalescer, VNET_HDR_LEN};
use super::owner::worker_bits;
pub use super::owner::Directory;
use super::pool::{Buf, Packet, Pool, SMALL_BUF_SIZE};
use super::routes::SharedRoutes;
pub use crate::proto::cookie::CookieSeed;
use crate::proto::cookie::MacVerdict;
use crate::proto::index::worker_mask;
use crate::proto::interface::{Drop, Interface};
use crate::proto::messages::{HEADROOM, TAILROOM};
use crate::proto::peer::{PeerError, PeerId, TickOutcome};
use crate::proto::session::PacketBuf;

/// A packet passed to the worker that owns its peer.
#[derive(Debug)]
pub enum Handoff {
    /// A packet read from the TUN, for a peer the receiving shard owns.
    Tun(Packet),
    /// A datagram from `SocketAddr`, for a session or peer it owns.
    Udp(SocketAddr, Packet),
}

/// Something a shard did or refused that a shell may log or count:
/// handshakes, cookies, and datagrams dropped with their reason and source.
/// At most [`MAX_EVENTS`] wait between two executions; beyond that they are
/// counted in [`Counters::events_dropped`] and lost, so a flood costs a
/// counter increment, not memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A handshake response went to `to` (this side responded).
    ResponseSent {
        /// The initiator.
        peer: PeerId,
        /// Where it went.
        to: SocketAddr,
    },
    /// A cookie reply went to `to`: under load, its initiation or response
    /// carried no valid mac2.
    CookieSent {
        /// Where it went.
        to: SocketAddr,
    },
    /// This side's handshake with `peer` completed (it responded).
    HandshakeComplete {
        /// The peer.
        peer: PeerId,
    },
    /// The peer's first packet under a new session confirmed it (this side
    /// responded to the handshake).
    SessionConfirmed {
        /// The peer.
        peer: PeerId,
    },
    /// A keepalive (empty transport message) arrived from `peer`.
    KeepaliveReceived {
        /// The peer.
        peer: PeerId,
    },
    /// A cookie reply from `peer` was taken in: the next handshake message
    /// carries mac2.
    CookieAccepted {
        /// The peer.
        peer: PeerId,
    },
    /// An authenticated message from `peer` came from a new address, which
    /// is now its endpoint (roaming).
    EndpointMoved {
        /// The peer.
        peer: PeerId,
        /// Its new endpoint.
        to: SocketAddr,
    },
    /// The worker went under load (`true`: cookies are demanded before any
    /// X25519) or left it.
    UnderLoad(bool),
    /// A datagram from `from` was dropped by the protocol core.
    Dropped {
        /// Its source.
        from: SocketAddr,
        /// Why.
        reason: Drop,
    },
}

/// The UDP side of a shell: sends datagrams.
pub trait UdpTx {
    /// Queues `pkts` to `dst` as one send, taking them all (leaving the Vec
    /// empty), or refuses and leaves them all (back-pressure). With more
    /// than one packet, every packet but the last has `segment` bytes and
    /// the last is not longer: one UDP GSO send.
    fn send(&mut self, dst: SocketAddr, segment: usize, pkts: &mut Vec<Packet>) -> bool;
}

/// The TUN side of a shell: writes packets.
pub trait TunTx {
    /// Queues one TUN write of the concatenation of `parts` (buffer, start,
    /// length; the first starts with the virtio-net header), taking them
    /// all, or refuses and leaves them all (back-pressure).
    fn write(&mut self, parts: &mut Vec<(Buf, usize, usize)>) -> bool;
}

/// The other workers, as a shell reaches them.
pub trait Handoffs {
    /// Passes `packet` to worker `to` (a packet for a worker that does not
    /// exist, or whose queue is full, is dropped and returned as `Err`).
    fn hand(&mut self, to: u32, packet: Handoff) -> Result<(), Handoff>;
}

/// Everything a shell gives a shard's actions to.
pub trait Io: UdpTx + TunTx + Handoffs {}
impl<T: UdpTx + TunTx + Handoffs> Io for T {}

/// What a shard starts with.
#[derive(Debug)]
pub struct ShardSetup {
    /// This worker's number.
    pub id: u32,
    /// How many workers there are.
    pub workers: u32,
    /// Whether the TUN device takes coalesced super-packets (TSO).
    pub tso: bool,
    /// Whether it takes UDP super-packets too (USO).
    pub uso: bool,
    /// Monotonic and wall-clock readings taken together at start.
    pub clock: (Instant, SystemTime),
    /// Where the shard's buffers come from.
    pub pool: Pool,
    /// The device's cookie seed, the same for all its shards.
    pub cookies: CookieSeed,
    /// The device's configured keys, the same for all its shards.
    pub directory: Directory,
}

/// One UDP send the shard asked for: the next `count` packets of
/// `Out::packets`, to `dst`, all but the last of `segment` bytes.
#[derive(Debug, Clone, Copy)]
struct Transmit {
    dst: SocketAddr,
    segment: usize,
    count: usize,
}

/// The actions a shard produced since the shell last executed them; every
/// Vec keeps its capacity, so steady state allocates nothing.
#[derive(Debug, Default)]
struct Out {
    transmits: Vec<Transmit>,
    packets: Vec<Packet>,
    /// Parts per TUN write, in order; the parts themselves in `tun_parts`.
    tun_writes: Vec<usize>,
    tun_parts: Vec<(Buf, usize, usize)>,
    handoffs: Vec<(u32, Handoff)>,
    events: Vec<Event>,
    /// Scratch for one send or write while executing.
    run: Vec<Packet>,
    parts: Vec<(Buf, usize, usize)>,
}

/// A queued handshake message: its source, the message, and how its MACs
/// checked out when it arrived (so they are not computed again).
type Queued = (SocketAddr, Packet, Option<MacVerdict>);

/// Per-packet results of opening a run: the session's, then the
/// interface's (inner source checked).
type RunResults = (Vec<Result<usize, PeerError>>, Vec<Result<usize, Drop>>);

/// One worker's peers and packet logic.
pub struct Shard {
    id: u32,
    workers: u32,
    /// Mask of the session-index bits that name a worker.
    mask: u32,
    /// The listen port (our own datagrams routed back into the TUN carry it).
    port: u16,
    /// Whether an IPv6 socket exists to send from.
    v6: bool,
    mtu: usize,
    now: Instant,
    pool: Pool,
    iface: Interface,
    /// Every peer's prefixes, shared by all workers and kept by the engine
    /// ([`routes`](super::routes)); only with more than one worker: finds
    /// the owner of a TUN packet this worker read for a peer it does not
    /// hold.
    routes: Option<SharedRoutes>,
    /// Every configured peer's key (see `Directory`).
    directory: Directory,
    /// Handshake messages waiting to be taken in (see `handshake.rs`).
    handshakes: VecDeque<Queued>,
    /// Those with a valid mac2, served first.
    proven: VecDeque<Queued>,
    /// Packets waiting for their peer's handshake.
    staged: HashMap<PeerId, VecDeque<Packet>>,
    /// How many, for all peers.
    staged_total: usize,
    /// Packets read for one peer, sealed together when the peer changes,
    /// the batch is full, or the shell flushes.
    batch: Vec<Packet>,
    batch_peer: Option<PeerId>,
    /// Whether UDP GSO is in use (switched off if the kernel refuses it).
    gso: bool,
    /// The datagrams of a GRO receive (kept for its capacity).
    gro: Vec<Packet>,
    /// A run of transport messages for one session within it.
    run: Vec<Packet>,
    /// Per-packet results of opening a run (kept for their capacity).
    run_results: RunResults,
    /// Decrypted packets waiting to be written to the TUN, in arrival order
    /// (an entry is taken when its write is planned).
    rx: Vec<Option<Packet>>,
    /// Plans those writes; `None` once the kernel refused a super-packet,
    /// then every packet is written alone.
    coalescer: Option<Coalescer>,
    tick_out: Vec<(PeerId, Option<SocketAddr>, TickOutcome)>,
    /// When the timers last ran, and whether the interface was under load
    /// since then (for the time-under-load counter and its events).
    last_tick: Instant,
    loaded: bool,
    counters: Counters,
    out: Out,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .field("workers", &self.workers)
            .field("peers", &self.iface.peer_count())
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// A shard with no peers and no private key.
    pub fn new(s: ShardSetup) -> Self {
        let bits = worker_bits(s.workers);
        let (now, wall) = s.clock;
        Self {
            id: s.id,
            workers: s.workers,
            mask: worker_mask(bits),
            port: 0,
            v6: true,
            mtu: DEFAULT_MTU as usize,
            now,
            pool: s.pool,
            iface: Interface::new_shard(now, wall, s.id, bits, s.cookies),
            routes: None,
            directory: s.directory,
            handshakes: VecDeque::new(),
            proven: VecDeque::new(),
            staged: HashMap::new(),
            staged_total: 0,
            batch: Vec::with_capacity(MAX_BATCH),
            batch_peer: None,
            gso: true,
            gro: Vec::with_capacity(MAX_SEGMENTS),
            run: Vec::with_capacity(MAX_SEGMENTS),
            run_results: (
                Vec::with_capacity(MAX_SEGMENTS),
                Vec::with_capacity(MAX_SEGMENTS),
            ),
            rx: Vec::with_capacity(MAX_RX_BATCH),
            coalescer: s.tso.then(|| Coalescer::new(s.uso)),
            tick_out: Vec::new(),
            last_tick: now,
            loaded: false,
            counters: Counters::default(),
            out: Out {
                transmits: Vec::with_capacity(MAX_BATCH),
                packets: Vec::with_capacity(MAX_BATCH * 2),
                tun_writes: Vec::with_capacity(MAX_RX_BATCH),
                tun_parts: Vec::with_capacity(MAX_RX_BATCH),
                handoffs: Vec::new(),
                events: Vec::with_capacity(MAX_EVENTS),
                run: Vec::with_capacity(MAX_SEGMENTS),
                parts: Vec::with_capacity(MAX_SEGMENTS),
            },
        }
    }

    /// The TUN MTU: packets are padded to it and super-packets cut at it.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// The engine's routing table of every peer (see
    /// [`routes`](super::routes)); a shard of a single worker needs none.
    pub fn set_routes(&mut self, routes: Option<SharedRoutes>) {
        if self.workers > 1 {
            self.routes = routes;
        }
    }

    /// The sockets the shell sends from: their port, and whether an IPv6
    /// one exists (without it, IPv6 endpoints are unreachable).
    pub fn set_sockets(&mut self, port: u16, v6: bool) {
        self.port = port;
        self.v6 = v6;
    }

    /// The kernel refused a UDP GSO send (EIO): later sends go one datagram
    /// each. True the first time.
    pub fn udp_gso_refused(&mut self) -> bool {
        std::mem::replace(&mut self.gso, false)
    }

    /// The kernel refused a coalesced TUN write (EINVAL): later packets are
    /// written one by one. True the first time.
    pub fn tun_coalescing_refused(&mut self) -> bool {
        self.coalescer.take().is_some()
    }

    /// A packet handed over by another worker.
    pub fn handed(&mut self, packet: Handoff, now: Instant) {
        self.now = now;
        match packet {
            Handoff::Tun(pkt) => self.on_tun_packet(pkt, true),
            Handoff::Udp(from, pkt) => self.on_datagram(from, pkt),
        }
    }

    /// End of a batch of inputs: seals the pending batch and plans the TUN
    /// writes of what was decrypted.
    pub fn flush(&mut self, now: Instant) {
        self.now = now;
        self.take_handshakes();
        self.flush_batch();
        self.flush_rx();
    }

    /// Executes the actions produced so far through `io`; returns how many
    /// packets were queued. What `io` refuses is dropped and counted as
    /// back-pressure; a handoff that cannot be delivered is dropped.
    pub fn execute(&mut self, io: &mut impl Io) -> usize {
        let out = &mut self.out;
        let mut queued = 0;
        let mut packets = out.packets.drain(..);
        for t in out.transmits.drain(..) {
            out.run.extend(packets.by_ref().take(t.count));
            queued += out.run.len();
            let (n, bytes) = (
                out.run.len() as u64,
                out.run.iter().map(|p| p.len() as u64).sum::<u64>(),
            );
            if io.send(t.dst, t.segment, &mut out.run) {
                self.counters.udp_tx_datagrams += n;
                self.counters.udp_tx_bytes += bytes;
            } else {
                self.counters.backpressure += out.run.len() as u64;
                for p in out.run.drain(..) {
                    self.pool.put(p.into_inner());
                }
            }
        }
        drop(packets);
        let mut parts = out.tun_parts.drain(..);
        for n in out.tun_writes.drain(..) {
            out.parts.extend(parts.by_ref().take(n));
            queued += n;
            let bytes = out.parts.iter().map(|p| p.2 as u64).sum::<u64>();
            if io.write(&mut out.parts) {
                self.counters.tun_writes += 1;
                self.counters.tun_write_bytes += bytes.saturating_sub(VNET_HDR_LEN as u64);
            } else {
                self.counters.backpressure += n as u64;
                for (b, _, _) in out.parts.drain(..) {
                    self.pool.put(b);
                }
            }
        }
        drop(parts);
        for (to, h) in out.handoffs.drain(..) {
            match &h {
                Handoff::Tun(_) => self.counters.handed_tun += 1,
                Handoff::Udp(..) => self.counters.handed_udp += 1,
            }
            if let Err(h) = io.hand(to, h) {
                let (Handoff::Tun(p) | Handoff::Udp(_, p)) = h;
                self.counters.handoff_dropped += 1;
                self.pool.put(p.into_inner());
            }
        }
        queued
    }

    /// Whether work is left for the next turn (handshake messages beyond
    /// this turn's budget): the shell should not sleep.
    pub fn has_pending(&self) -> bool {
        self.handshakes_waiting() > 0
    }

    /// The events since the last call (see [`Event`]).
    pub fn events(&mut self) -> std::vec::Drain<'_, Event> {
        self.out.events.drain(..)
    }

    /// Packets waiting for `peer`'s handshake, oldest first.
    pub fn staged(&self, peer: PeerId) -> impl Iterator<Item = &[u8]> {
        self.staged
            .get(&peer)
            .into_iter()
            .flatten()
            .map(|p| p.data())
    }

    /// This shard's worker number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// What this shard counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counters the shell adds to (its own drops).
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The shard's buffers (the shell takes its read buffers from here and
    /// returns completed ones).
    pub fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }

    /// The protocol state of this shard's peers.
    pub fn interface(&self) -> &Interface {
        &self.iface
    }

    /// The protocol state, to change outside the shard's own rules (tests
    /// that play an engine's edge cases).
    pub fn interface_mut(&mut self) -> &mut Interface {
        &mut self.iface
    }

    /// Queues one UDP send of `pkts` (drained) to `dst`.
    fn push_transmit(
        &mut self,
        dst: SocketAddr,
        segment: usize,
        pkts: impl Iterator<Item = Packet>,
    ) {
        let before = self.out.packets.len();
        self.out.packets.extend(pkts);
        let count = self.out.packets.len() - before;
        if count > 0 {
            self.out.transmits.push(Transmit {
                dst,
                segment,
                count,
            });
        }
    }

    /// Records an event, or counts it lost when [`MAX_EVENTS`] wait.
    fn event(&mut self, e: Event) {
        if self.out.events.len() < MAX_EVENTS {
            self.out.events.push(e);
        } else {
            self.counters.events_dropped += 1;
        }
    }

    /// Queues a handoff of a packet to worker `to`, in a small buffer if
    /// it sits in a large one (a mailbox holds many: see
    /// [`MAILBOX`](super::limits::MAILBOX)). A worker that does not exist
    /// (a forged index) gets nothing: dropped and counted.
    fn push_handoff(&mut self, to: u32, packet: Handoff) {
        let (from, pkt) = match packet {
            Handoff::Tun(p) => (None, p),
            Handoff::Udp(a, p) => (Some(a), p),
        };
        if to >= self.workers {
            self.counters.handoff_dropped += 1;
            self.pool.put(pkt.into_inner());
            return;
        }
        let pkt = self.compact(pkt);
        let packet = match from {
            Some(a) => Handoff::Udp(a, pkt),
            None => Handoff::Tun(pkt),
        };
        self.out.handoffs.push((to, packet));
    }

    /// Packets waiting for a handshake, for all peers.
    pub fn staged_total(&self) -> usize {
        self.staged_total
    }

    /// Whether the interface is under load now.
    pub fn under_load(&self) -> bool {
        self.iface.under_load(self.now)
    }

    /// `pkt` moved into a small buffer (at `HEADROOM`, with room to seal or
    /// open it in place) if it sits in a large one and fits a small one.
    fn compact(&mut self, pkt: Packet) -> Packet {
        let len = pkt.len();
        if pkt.buffer().len() <= SMALL_BUF_SIZE || len + HEADROOM + TAILROOM > SMALL_BUF_SIZE {
            return pkt;
        }
        // At the buffer ceiling the packet stays where it is.
        let Some(mut small) = self.pool.get_for(len) else {
            return pkt;
        };
        small[HEADROOM..HEADROOM + len].copy_from_slice(pkt.data());
        match PacketBuf::new(small, HEADROOM, len) {
            Some(p) => {
                self.pool.put(pkt.into_inner());
                p
            }
            None => pkt,
        }
    }

    /// Whether the shell can send to `dst` (an IPv6 endpoint needs an IPv6
    /// socket).
    fn reachable(&self, dst: &SocketAddr) -> bool {
        dst.is_ipv4() || self.v6
    }
}
