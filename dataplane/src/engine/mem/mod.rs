//! The in-memory shell: devices made of the same [`Shard`]s as the
//! io_uring workers, with a TUN and UDP sockets in memory, wired together
//! by a simulated network in simulated time. No root, no syscall, no
//! thread: tests and benchmarks drive the shipped packet logic.
//!
//! What the kernel would do is done here the same way: a UDP GSO send
//! arrives as one GRO receive of datagrams of its segment size; a TUN
//! super-packet write is cut into IP packets by its virtio-net header (the
//! kernel's segmentation, with checksums); a TUN read or a datagram lands
//! on a worker chosen by a hash, like the kernel's queue and socket
//! choice without steering, so packets for another worker's peer are
//! handed over exactly as on the real engine. Buffers the shell took go
//! back to the shard's pool after each execution, as completions would.

mod kernel;
mod sinks;

pub use sinks::{Recorder, Sink};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::config::{ApplyError, Change, Device, DeviceStats};
use super::counters::Counters;
use super::limits::{DEPOT_LARGE, DEPOT_SMALL, POOL_CAP};
use super::offload::{VirtioNetHdr, VNET_HDR_LEN};
use super::pool::{Buf, Depot, Pool, BUF_SIZE};
use super::routes::Routes;
use super::shard::{CookieSeed, Directory, Event, Handoff, Shard, ShardSetup, TUN_READ_AT};
use super::tun::Offload;
use kernel::MemIo;

/// Where a received datagram's payload starts in its buffer (after what
/// the kernel writes first in a multishot receive: its header, the source
/// address, the control messages).
const RECV_AT: usize = 64;

/// Events a device keeps (the oldest go first).
const KEEP_EVENTS: usize = 4096;

/// Most rounds of delivery in one [`MemNet::settle`]: a protocol bug that
/// makes two devices answer each other forever fails instead of hanging.
const SETTLE_ROUNDS: usize = 10_000;

/// A datagram (or a GSO run of datagrams of `segment` bytes) in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender's address.
    pub from: SocketAddr,
    /// Receiver's address.
    pub to: SocketAddr,
    /// The bytes: one datagram, or several back to back.
    pub payload: Vec<u8>,
    /// With several datagrams, the size of each but the last.
    pub segment: Option<usize>,
}

/// What a device's kernel side saw, for tests that check batching.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounts {
    /// UDP sends (one per datagram or per GSO run).
    pub udp_sends: u64,
    /// Of those, GSO sends of more than one datagram.
    pub udp_gso_sends: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// TUN writes.
    pub tun_writes: u64,
    /// Of those, coalesced super-packets.
    pub tun_super_writes: u64,
}

/// A device in memory: one shard per worker, a TUN and a UDP address.
#[derive(Debug)]
pub struct MemDevice {
    shards: Vec<Shard>,
    /// Packets handed over to each shard, not yet taken in.
    inboxes: Vec<VecDeque<Handoff>>,
    /// Every peer's prefixes, shared by the shards (as the engine does).
    routes: Routes,
    addr: SocketAddr,
    /// The latest time it was given (configuration changes happen then).
    now: Instant,
    /// Datagrams sent, waiting for the network to carry them.
    pub sent: VecDeque<Datagram>,
    /// IP packets the TUN passed to the host, in order.
    pub delivered: VecDeque<Vec<u8>>,
    /// What the kernel side saw.
    pub counts: IoCounts,
    /// The shards' latest events, oldest first.
    pub events: VecDeque<Event>,
    spent: Vec<Buf>,
    scratch: Vec<u8>,
}

/// FNV-1a over `bytes`: the "kernel's" choice of queue or socket.
fn hash(bytes: &[u8]) -> usize {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) as usize
}

impl MemDevice {
    /// A device at `addr` with `workers` shards and the given TUN offloads.
    pub fn new(
        addr: SocketAddr,
        workers: u32,
        offload: Offload,
        clock: (Instant, SystemTime),
    ) -> Self {
        let workers = workers.max(1);
        let depot = Depot::new(DEPOT_LARGE, DEPOT_SMALL, workers as usize);
        let cookies = CookieSeed::generate(clock.0);
        let directory = Directory::default();
        let routes = Routes::new();
        let shards = (0..workers)
            .map(|id| {
                let mut shard = Shard::new(ShardSetup {
                    id,
                    workers,
                    tso: offload.tso,
                    uso: offload.uso,
                    clock,
                    pool: Pool::shared(POOL_CAP, depot.clone()),
                    cookies: cookies.clone(),
                    directory: directory.clone(),
                });
                shard.set_sockets(addr.port(), true);
                shard.set_routes(Some(routes.shared()));
                shard
            })
            .collect();
        Self {
            shards,
            inboxes: (0..workers).map(|_| VecDeque::new()).collect(),
            routes,
            addr,
            now: clock.0,
            sent: VecDeque::new(),
            delivered: VecDeque::new(),
            counts: IoCounts::default(),
            events: VecDeque::new(),
            spent: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The device's UDP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Moves the device to another address (roaming): later datagrams come
    /// from there.
    pub fn set_addr(&mut self, addr: SocketAddr) {
        self.addr = addr;
        for s in &mut self.shards {
            s.set_sockets(addr.port(), true);
        }
    }

    /// The shards, by worker number.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// One shard, to drive directly (benchmarks time its calls alone).
    pub fn shard_mut(&mut self, worker: usize) -> Option<&mut Shard> {
        self.shards.get_mut(worker)
    }

    /// Every shard's counters, added up.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for s in &self.shards {
            total.add(s.counters());
        }
        total
    }

    /// Sets the TUN MTU of every shard.
    pub fn set_mtu(&mut self, mtu: usize) {
        for s in &mut self.shards {
            s.set_mtu(mtu);
        }
    }

    /// A TUN read as the kernel returns it: virtio-net header, then a
    /// packet or a super-packet.
    pub fn tun_read(&mut self, read: &[u8], now: Instant) {
        self.now = now;
        let packet = read.get(VNET_HDR_LEN..).unwrap_or_default();
        let w = hash(packet.get(12..40).unwrap_or(packet)) % self.shards.len();
        let shard = &mut self.shards[w];
        // As a receive ring at the buffer ceiling: dropped and counted.
        let Some(mut buf) = shard.pool().get() else {
            shard.counters_mut().buffers_refused += 1;
            return;
        };
        let n = read.len().min(BUF_SIZE - TUN_READ_AT);
        buf[TUN_READ_AT..TUN_READ_AT + n].copy_from_slice(&read[..n]);
        shard.tun_read(buf, n, now);
        self.execute(w);
    }

    /// An IP packet from the host into the TUN (no offload).
    pub fn tun_send(&mut self, packet: &[u8], now: Instant) {
        let mut read = VirtioNetHdr::default().to_bytes().to_vec();
        read.extend_from_slice(packet);
        self.tun_read(&read, now);
    }

    /// A datagram (or GRO burst) from the network.
    pub fn udp_receive(&mut self, d: &Datagram, now: Instant) {
        self.now = now;
        let mut key = [0u8; 18];
        match d.from.ip() {
            std::net::IpAddr::V4(a) => key[..4].copy_from_slice(&a.octets()),
            std::net::IpAddr::V6(a) => key[..16].copy_from_slice(&a.octets()),
        }
        key[16..].copy_from_slice(&d.from.port().to_be_bytes());
        let w = hash(&key) % self.shards.len();
        let shard = &mut self.shards[w];
        let len = d.payload.len().min(BUF_SIZE - RECV_AT);
        let Some(mut buf) = shard.pool().get() else {
            shard.counters_mut().buffers_refused += 1;
            return;
        };
        buf[RECV_AT..RECV_AT + len].copy_from_slice(&d.payload[..len]);
        shard.udp_received(d.from, buf, RECV_AT, len, d.segment, now);
        self.execute(w);
    }

    /// Runs every shard's timers.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        for w in 0..self.shards.len() {
            self.shards[w].tick(now);
            self.execute(w);
        }
    }

    /// End of a loop turn on every worker: handed-over packets taken in,
    /// pending batches sealed and written, until nothing is left to do.
    pub fn flush(&mut self, now: Instant) {
        self.now = now;
        loop {
            for w in 0..self.shards.len() {
                while let Some(p) = self.inboxes[w].pop_front() {
                    self.shards[w].handed(p, now);
                    self.execute(w);
                }
                self.shards[w].flush(now);
                self.execute(w);
            }
            if self.inboxes.iter().all(VecDeque::is_empty) {
                return;
            }
        }
    }

    /// Whether a shard has work left for its next turn (handshake messages
    /// beyond a turn's budget).
    pub fn busy(&self) -> bool {
        self.shards.iter().any(Shard::has_pending)
    }

    /// Executes shard `w`'s actions, then returns the buffers the
    /// "kernel" is done with to its pool.
    fn execute(&mut self, w: usize) {
        let mut io = MemIo {
            from: self.addr,
            wire: &mut self.sent,
            delivered: &mut self.delivered,
            inboxes: &mut self.inboxes,
            spent: &mut self.spent,
            counts: &mut self.counts,
            scratch: &mut self.scratch,
        };
        let shard = &mut self.shards[w];
        shard.execute(&mut io);
        for b in self.spent.drain(..) {
            shard.pool().put(b);
        }
        for e in shard.events() {
            if self.events.len() == KEEP_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
    }
}

impl Device for MemDevice {
    fn apply(&mut self, changes: Vec<Change>) -> Result<(), ApplyError> {
        let now = self.now;
        for c in &changes {
            if let Change::ListenPort(p) = c {
                if *p != 0 {
                    let mut addr = self.addr;
                    addr.set_port(*p);
                    self.set_addr(addr);
                }
            }
        }
        if self.shards.len() > 1 {
            self.routes.apply(&changes, |_, _, _| {});
        }
        for w in 0..self.shards.len() {
            self.shards[w].apply(&changes, now);
            self.execute(w);
        }
        Ok(())
    }

    fn stats(&mut self) -> Result<DeviceStats, ApplyError> {
        Ok(DeviceStats {
            listen_port: self.addr.port(),
            peers: self.shards.iter().flat_map(Shard::stats).collect(),
        })
    }
}

/// Devices on one simulated network, in simulated time.
#[derive(Debug)]
pub struct MemNet {
    /// The devices, in the order they were added.
    pub devices: Vec<MemDevice>,
    /// Simulated time.
    pub now: Instant,
    start: (Instant, SystemTime),
    /// Datagrams to an address no device has.
    pub undeliverable: u64,
}

impl MemNet {
    /// An empty network; time starts now.
    pub fn new() -> Self {
        let start = (Instant::now(), SystemTime::now());
        Self {
            devices: Vec::new(),
            now: start.0,
            start,
            undeliverable: 0,
        }
    }

    /// Adds a device at `addr`; returns its number.
    pub fn add(&mut self, addr: SocketAddr, workers: u32, offload: Offload) -> usize {
        let clock = (self.now, self.start.1 + (self.now - self.start.0));
        self.devices
            .push(MemDevice::new(addr, workers, offload, clock));
        self.devices.len() - 1
    }

    /// Carries every datagram in flight to its device, and what that
    /// provokes, until the network is quiet.
    pub fn settle(&mut self) {
        let now = self.now;
        for _ in 0..SETTLE_ROUNDS {
            for d in &mut self.devices {
                d.flush(now);
            }
            let mut moved = false;
            for i in 0..self.devices.len() {
                while let Some(d) = self.devices[i].sent.pop_front() {
                    moved = true;
                    match self.devices.iter().position(|x| x.addr == d.to) {
                        Some(to) => self.devices[to].udp_receive(&d, now),
                        None => self.undeliverable += 1,
                    }
                }
            }
            if !moved && !self.devices.iter().any(MemDevice::busy) {
                return;
            }
        }
        panic!("the network did not settle in {SETTLE_ROUNDS} rounds");
    }

    /// Two single-worker devices after a completed handshake: device 0 at
    /// 192.0.2.1:51820 with tunnel address 10.0.0.1, device 1 at
    /// 192.0.2.2:51820 with 10.0.0.2, each the other's only peer (device
    /// 0 knows device 1's endpoint), configured as the control plane does.
    pub fn pair(offload: Offload) -> Self {
        use crate::engine::config::PeerConfig;
        use crate::proto::keys::{PresharedKey, PrivateKey};
        use std::net::{IpAddr, Ipv4Addr};
        let addrs: [SocketAddr; 2] = [
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820),
        ];
        let inner = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let keys = [PrivateKey::generate(), PrivateKey::generate()];
        let mut net = MemNet::new();
        for i in 0..2 {
            let d = net.add(addrs[i], 1, offload);
            let peer = PeerConfig {
                public_key: keys[1 - i].public_key(),
                preshared_key: PresharedKey::default(),
                endpoint: (i == 0).then_some(addrs[1]),
                persistent_keepalive: 0,
                allowed_ips: vec![(IpAddr::V4(inner[1 - i]), 32)],
            };
            let changes = vec![
                Change::PrivateKey(Some(keys[i].clone())),
                Change::Peer(peer),
            ];
            // In memory, applying cannot fail.
            let _ = net.devices[d].apply(changes);
        }
        // A first packet starts the handshake and follows it.
        let mut first = [0u8; 28];
        first[0] = 0x45;
        first[3] = 28;
        first[9] = 17;
        first[12..16].copy_from_slice(&inner[0].octets());
        first[16..20].copy_from_slice(&inner[1].octets());
        let now = net.now;
        net.devices[0].tun_send(&first, now);
        net.settle();
        net.devices[1].delivered.clear();
        net
    }

    /// Lets `dt` pass in steps of `step`: every device's timers run at
    /// each step and the network settles after each.
    pub fn advance(&mut self, dt: Duration, step: Duration) {
        let end = self.now + dt;
        while self.now < end {
            self.now += step;
            let now = self.now;
            for d in &mut self.devices {
                d.tick(now);
            }
            self.settle();
        }
    }
}

impl Default for MemNet {
    fn default() -> Self {
        Self::new()
    }
}
