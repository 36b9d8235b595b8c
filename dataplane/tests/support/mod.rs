//! Two corewire interfaces wired together in memory, in simulated time.
//!
//! `Net` plays the engine: it routes plaintext to peers, stages packets
//! while a handshake runs, carries datagrams between the two nodes (with
//! optional loss), and runs the timers as time advances. Everything the
//! protocol core asks for is done the way the real engine must do it, so
//! these tests exercise the core's contract, not a shortcut around it.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use corewire_dataplane::proto::interface::{Interface, Received};
use corewire_dataplane::proto::keys::PrivateKey;
use corewire_dataplane::proto::messages::{ControlMsg, HEADROOM, TAILROOM};
use corewire_dataplane::proto::peer::PeerId;
use corewire_dataplane::proto::session::PacketBuf;

pub const MTU: usize = 1420;

/// One side: an interface, its address and what the engine keeps for it.
pub struct Node {
    pub iface: Interface,
    pub addr: SocketAddr,
    pub inner: Ipv4Addr,
    pub peer: PeerId,
    pub staged: Vec<Vec<u8>>,
    pub delivered: Vec<Vec<u8>>,
    pub keepalives: usize,
    pub drops: Vec<String>,
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

/// A minimal IPv4 packet from `src` to `dst` with `payload_len` bytes.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize, fill: u8) -> Vec<u8> {
    let total = 20 + payload_len;
    let mut p = vec![fill; total];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

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
            let mut iface = Interface::new(now, wall);
            iface.set_private_key(Some(key));
            let peer = iface.add_peer(pubs[1 - i]).unwrap();
            iface.allow(peer, IpAddr::V4(inner[1 - i]), 32).unwrap();
            if i == 0 {
                iface.peer_mut(peer).unwrap().set_endpoint(Some(addrs[1]));
            }
            Node {
                iface,
                addr: addrs[i],
                inner: inner[i],
                peer,
                staged: Vec::new(),
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

    fn transmit(&mut self, from: usize, bytes: &[u8]) {
        let Some(dst) = self.nodes[from]
            .iface
            .peer(self.nodes[from].peer)
            .and_then(|p| p.endpoint())
        else {
            return;
        };
        let to = self.nodes.iter().position(|n| n.addr == dst);
        self.sent_datagrams += 1;
        if let Some(to) = to {
            if self.loss > 0.0 && self.random() < self.loss {
                return;
            }
            let src = self.nodes[from].addr;
            self.wire.push_back((to, src, bytes.to_vec()));
        }
    }

    fn transmit_to(&mut self, from: usize, dst: SocketAddr, msg: &ControlMsg) {
        if let Some(to) = self.nodes.iter().position(|n| n.addr == dst) {
            self.sent_datagrams += 1;
            if self.loss > 0.0 && self.random() < self.loss {
                return;
            }
            let src = self.nodes[from].addr;
            self.wire.push_back((to, src, msg.as_bytes().to_vec()));
        }
    }

    /// The engine's send path: seal for the peer or stage and handshake.
    pub fn send(&mut self, from: usize, packets: Vec<Vec<u8>>) {
        let mut bufs: Vec<PacketBuf<Vec<u8>>> = packets
            .iter()
            .map(|p| {
                let mut b = vec![0u8; HEADROOM + p.len() + TAILROOM];
                b[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
                PacketBuf::new(b, HEADROOM, p.len()).unwrap()
            })
            .collect();
        let now = self.now;
        let node = &mut self.nodes[from];
        let peer = node.peer;
        let out = node.iface.encrypt_batch(peer, &mut bufs, MTU, now);
        // Anything not sealed waits for the handshake.
        node.staged.extend(packets[out.sealed..].iter().cloned());
        if let Some(h) = out.handshake {
            self.transmit(from, h.as_bytes());
        }
        for b in &bufs[..out.sealed] {
            let bytes = b.data().to_vec();
            self.transmit(from, &bytes);
        }
    }

    fn flush_staged(&mut self, node: usize) -> bool {
        let staged = std::mem::take(&mut self.nodes[node].staged);
        if staged.is_empty() {
            return false;
        }
        self.send(node, staged);
        true
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

    /// The engine's receive path for one datagram.
    pub fn receive(&mut self, to: usize, src: SocketAddr, bytes: Vec<u8>) {
        let mut pkt = PacketBuf::new(bytes.clone(), 0, bytes.len()).unwrap();
        let now = self.now;
        let res = self.nodes[to].iface.receive(src, &mut pkt, now);
        match res {
            Received::Data {
                confirmed,
                handshake,
                ..
            } => {
                self.nodes[to].delivered.push(pkt.data().to_vec());
                if let Some(h) = handshake {
                    self.transmit(to, h.as_bytes());
                }
                if confirmed {
                    self.flush_staged(to);
                }
            }
            Received::Keepalive {
                confirmed,
                handshake,
                ..
            } => {
                self.nodes[to].keepalives += 1;
                if let Some(h) = handshake {
                    self.transmit(to, h.as_bytes());
                }
                if confirmed {
                    self.flush_staged(to);
                }
            }
            Received::Reply { reply, .. } => self.transmit_to(to, src, &reply),
            Received::HandshakeComplete { keepalive, .. } => {
                if !self.flush_staged(to) {
                    self.transmit(to, keepalive.as_bytes());
                }
            }
            Received::CookieAccepted { .. } => {}
            Received::Foreign { .. } => self.nodes[to].drops.push("unknown peer".into()),
            Received::Dropped(d) => self.nodes[to].drops.push(d.to_string()),
        }
    }

    /// Runs both nodes' timers at the current time.
    pub fn tick(&mut self) {
        let now = self.now;
        for i in 0..2 {
            let mut outs = Vec::new();
            self.nodes[i].iface.tick(now, |_, _, res| outs.push(res));
            for res in outs {
                if res.drop_staged {
                    self.nodes[i].staged.clear();
                }
                for m in res.send.into_iter().flatten() {
                    self.transmit(i, m.as_bytes());
                }
            }
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
        n.iface.peer(n.peer).unwrap().can_send(self.now)
    }

    pub fn session_age(&self, node: usize) -> Option<Duration> {
        let n = &self.nodes[node];
        n.iface.peer(n.peer).unwrap().current_session_age(self.now)
    }
}
