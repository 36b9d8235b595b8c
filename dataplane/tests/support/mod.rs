//! Two corewire nodes wired together in memory, in simulated time.
//!
//! Each node is the engine's own [`Shard`] (one worker): packets from the
//! tunnel go in through `tun_read`, datagrams through `udp_received`, the
//! timers through `tick`, and what the shard asks for comes out of
//! `execute`. `Net` only plays the kernel and the wire: it carries each
//! send to the node at its destination address (with optional loss),
//! takes the TUN writes as delivered packets, and keeps the shard's drop
//! and keepalive events for the tests to inspect. The tests can still
//! reach each node's protocol core (`interface_mut`) to play an engine's
//! edge cases by hand.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use corewire_dataplane::engine::config::{Change, PeerConfig};
use corewire_dataplane::engine::mem::Recorder;
use corewire_dataplane::engine::offload::VNET_HDR_LEN;
use corewire_dataplane::engine::pool::Pool;
use corewire_dataplane::engine::shard::{
    CookieSeed, Directory, Event, Shard, ShardSetup, TUN_READ_AT,
};
use corewire_dataplane::proto::interface::Interface;
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey};
use corewire_dataplane::proto::peer::PeerId;

pub const MTU: usize = corewire_dataplane::engine::limits::DEFAULT_MTU as usize;

/// One side: a shard, its address, and what came out of its TUN.
pub struct Node {
    pub shard: Shard,
    pub addr: SocketAddr,
    pub inner: Ipv4Addr,
    pub peer: PeerId,
    pub delivered: Vec<Vec<u8>>,
    pub keepalives: usize,
    pub drops: Vec<String>,
}

impl Node {
    /// The node's protocol core.
    pub fn iface(&self) -> &Interface {
        self.shard.interface()
    }

    /// The node's protocol core, to change by hand.
    pub fn iface_mut(&mut self) -> &mut Interface {
        self.shard.interface_mut()
    }

    /// Packets waiting for the handshake.
    pub fn staged(&self) -> usize {
        self.shard.staged(self.peer).count()
    }
}

pub struct Net {
    pub nodes: [Node; 2],
    pub now: Instant,
    /// Datagrams on the wire: (destination node, source address, bytes).
    pub wire: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    /// Drop each datagram with this probability (0.0 = lossless).
    pub loss: f64,
    rng: u64,
    pub sent_datagrams: usize,
}

/// A minimal IPv4 packet from `src` to `dst`: `payload_len` bytes of `fill`.
pub use corewire_testkit::packets::ipv4_filled as ipv4_packet;

impl Net {
    /// Two nodes that know each other; node 0 has node 1's endpoint, node
    /// 1 learns node 0's from the handshake (hub and spoke).
    pub fn new() -> Self {
        let now = Instant::now();
        let wall = SystemTime::now();
        let keys = [PrivateKey::generate(), PrivateKey::generate()];
        let pubs = [keys[0].public_key(), keys[1].public_key()];
        let addrs: [SocketAddr; 2] = [
            "192.0.2.1:51820".parse().unwrap(),
            "192.0.2.2:51820".parse().unwrap(),
        ];
        let inner = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let mk = |i: usize, key: PrivateKey| {
            let mut shard = Shard::new(ShardSetup {
                id: 0,
                workers: 1,
                tso: false,
                uso: false,
                clock: (now, wall),
                pool: Pool::new(0, 256),
                cookies: CookieSeed::generate(now),
                directory: Directory::default(),
            });
            shard.set_sockets(addrs[i].port(), true);
            shard.set_mtu(MTU);
            let peer = PeerConfig {
                public_key: pubs[1 - i],
                preshared_key: PresharedKey::default(),
                endpoint: (i == 0).then_some(addrs[1]),
                persistent_keepalive: 0,
                allowed_ips: vec![(IpAddr::V4(inner[1 - i]), 32)],
            };
            shard.apply(&[Change::PrivateKey(Some(key)), Change::Peer(peer)], now);
            let peer = shard.interface().peer_by_key(&pubs[1 - i]).unwrap();
            Node {
                shard,
                addr: addrs[i],
                inner: inner[i],
                peer,
                delivered: Vec::new(),
                keepalives: 0,
                drops: Vec::new(),
            }
        };
        let [k0, k1] = keys;
        Net {
            nodes: [mk(0, k0), mk(1, k1)],
            now,
            wire: VecDeque::new(),
            loss: 0.0,
            rng: 0x9E37_79B9_7F4A_7C15,
            sent_datagrams: 0,
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: deterministic loss pattern per run.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Executes node `from`'s actions: sends go on the wire (unless lost),
    /// TUN writes are delivered, events are noted.
    fn execute(&mut self, from: usize) {
        let mut k = Recorder::default();
        let node = &mut self.nodes[from];
        k.execute(&mut node.shard);
        node.delivered.append(&mut k.delivered);
        let events: Vec<Event> = node.shard.events().collect();
        for e in events {
            match e {
                Event::KeepaliveReceived { .. } => node.keepalives += 1,
                Event::Dropped { reason, .. } => node.drops.push(reason.to_string()),
                _ => {}
            }
        }
        let src = self.nodes[from].addr;
        for (dst, bytes) in k.sends {
            self.sent_datagrams += 1;
            let Some(to) = self.nodes.iter().position(|n| n.addr == dst) else {
                continue;
            };
            if self.loss > 0.0 && self.random() < self.loss {
                continue;
            }
            self.wire.push_back((to, src, bytes));
        }
    }

    /// Packets from node `from`'s tunnel: read from its TUN, sealed (or
    /// staged while the handshake they start runs) and sent.
    pub fn send(&mut self, from: usize, packets: Vec<Vec<u8>>) {
        let now = self.now;
        let shard = &mut self.nodes[from].shard;
        for p in &packets {
            let mut buf = shard.pool().get().expect("a buffer under the ceiling");
            buf[TUN_READ_AT..TUN_READ_AT + VNET_HDR_LEN].fill(0);
            buf[TUN_READ_AT + VNET_HDR_LEN..TUN_READ_AT + VNET_HDR_LEN + p.len()]
                .copy_from_slice(p);
            shard.tun_read(buf, VNET_HDR_LEN + p.len(), now);
        }
        shard.flush(now);
        self.execute(from);
    }

    /// Sends `n` data packets from node `from` to the other node.
    pub fn send_data(&mut self, from: usize, n: usize, len: usize) {
        let (src, dst) = (self.nodes[from].inner, self.nodes[1 - from].inner);
        let pkts = (0..n)
            .map(|i| ipv4_packet(src, dst, len, i as u8))
            .collect();
        self.send(from, pkts);
    }

    /// Delivers everything on the wire (and what that provokes).
    pub fn deliver(&mut self) {
        let mut guard = 0;
        while let Some((to, src, bytes)) = self.wire.pop_front() {
            guard += 1;
            assert!(guard < 100_000, "datagram storm");
            self.receive(to, src, bytes);
        }
    }

    /// One datagram from `src` into node `to`'s UDP socket.
    pub fn receive(&mut self, to: usize, src: SocketAddr, bytes: Vec<u8>) {
        let now = self.now;
        let shard = &mut self.nodes[to].shard;
        let mut buf = shard.pool().get().expect("a buffer under the ceiling");
        buf[..bytes.len()].copy_from_slice(&bytes);
        shard.udp_received(src, buf, 0, bytes.len(), None, now);
        shard.flush(now);
        self.execute(to);
    }

    /// Runs both nodes' timers at the current time.
    pub fn tick(&mut self) {
        let now = self.now;
        for i in 0..2 {
            self.nodes[i].shard.tick(now);
            self.execute(i);
        }
    }

    /// Advances time by `dt` in steps of `step`, ticking and delivering.
    pub fn run_for(&mut self, dt: Duration, step: Duration) {
        let end = self.now + dt;
        while self.now < end {
            self.now += step;
            self.tick();
            self.deliver();
        }
    }

    pub fn can_send(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        n.iface().peer(n.peer).unwrap().can_send(self.now)
    }

    pub fn session_age(&self, node: usize) -> Option<Duration> {
        let n = &self.nodes[node];
        n.iface()
            .peer(n.peer)
            .unwrap()
            .current_session_age(self.now)
    }
}
