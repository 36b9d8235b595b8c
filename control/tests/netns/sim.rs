//! Many WireGuard peers in the test process: each is the engine's own
//! `Shard` (one worker, so a complete userspace WireGuard) with its own
//! key, its own UDP socket (so its own source port) and its own tunnel
//! address, talking to a real daemon over the namespaces' network. A
//! hundred daemons would cost a hundred processes; these cost a key and a
//! socket each.
//!
//! Everything runs on the calling thread, which must already be inside the
//! peers' namespace (sockets are created there). Every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use corewire_dataplane::engine::config::{Change, PeerConfig};
use corewire_dataplane::engine::mem::Recorder;
use corewire_dataplane::engine::offload::VNET_HDR_LEN;
use corewire_dataplane::engine::pool::Pool;
use corewire_dataplane::engine::shard::{CookieSeed, Directory, Shard, ShardSetup, TUN_READ_AT};
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey, PublicKey};
use corewire_testkit::packets::ipv4_udp;

/// The port the echo service listens on behind the hub.
pub const ECHO_PORT: u16 = 7000;

struct Peer {
    shard: Shard,
    sock: UdpSocket,
    inner: Ipv4Addr,
    rec: Recorder,
    /// Echoes that came back through the tunnel.
    echoes: u64,
}

/// What the peers did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimCounts {
    /// Packets sent into the tunnel.
    pub sent: u64,
    /// Echoes that came back through it.
    pub echoed: u64,
    /// Handshake initiations the peers sent.
    pub initiations: u64,
    /// Transport messages the peers sent (data and keepalives).
    pub transport: u64,
}

/// The peers.
pub struct SimPeers {
    peers: Vec<Peer>,
    counts: SimCounts,
    echo: (Ipv4Addr, u16),
    buf: Vec<u8>,
}

impl SimPeers {
    /// `inner.len()` peers of the hub `hub_key` at `hub`, peer k with tunnel
    /// address `inner[k]`, sending to the echo service at `echo`. Call on a
    /// thread inside the peers' namespace.
    pub fn new(hub_key: PublicKey, hub: SocketAddr, inner: &[Ipv4Addr], echo: Ipv4Addr) -> Self {
        let now = Instant::now();
        let wall = SystemTime::now();
        let peers = inner
            .iter()
            .map(|&inner| {
                let mut shard = Shard::new(ShardSetup {
                    id: 0,
                    workers: 1,
                    tso: false,
                    uso: false,
                    clock: (now, wall),
                    pool: Pool::new(0, 64),
                    cookies: CookieSeed::generate(now),
                    directory: Directory::default(),
                });
                let sock = UdpSocket::bind("0.0.0.0:0").expect("bind a peer's socket");
                sock.set_nonblocking(true).expect("nonblocking");
                shard.set_sockets(sock.local_addr().expect("bound").port(), false);
                let hub_peer = PeerConfig {
                    public_key: hub_key,
                    preshared_key: PresharedKey::default(),
                    endpoint: Some(hub),
                    persistent_keepalive: 0,
                    allowed_ips: vec![("0.0.0.0".parse().expect("addr"), 0)],
                };
                shard.apply(
                    &[
                        Change::PrivateKey(Some(PrivateKey::generate())),
                        Change::Peer(hub_peer),
                    ],
                    now,
                );
                Peer {
                    shard,
                    sock,
                    inner,
                    rec: Recorder::default(),
                    echoes: 0,
                }
            })
            .collect();
        SimPeers {
            peers,
            counts: SimCounts::default(),
            echo: (echo, ECHO_PORT),
            buf: vec![0; 65536],
        }
    }

    /// Each peer's public key and tunnel address, for the hub's
    /// configuration.
    pub fn identities(&self) -> Vec<(PublicKey, Ipv4Addr)> {
        self.peers
            .iter()
            .map(|p| {
                let key = p
                    .shard
                    .interface()
                    .public_key()
                    .copied()
                    .expect("has a key");
                (key, p.inner)
            })
            .collect()
    }

    /// What they did so far.
    pub fn counts(&self) -> SimCounts {
        self.counts
    }

    /// Echoes received by peer `k`.
    pub fn echoes_of(&self, k: usize) -> u64 {
        self.peers[k].echoes
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// One round: every peer sends one datagram (`seq` in it) through the
    /// tunnel to the echo service, then the peers take in what arrives
    /// until every echo of the round is back or `wait` passed. Returns
    /// whether all came back.
    pub fn round(&mut self, seq: u32, wait: Duration) -> bool {
        self.round_of(0..self.peers.len(), seq, wait)
    }

    /// [`round`](Self::round) for the peers in `range` only (a few
    /// handshakes at a time: hundreds at once put the hub under load, and
    /// it then answers with cookies, as it should).
    pub fn round_of(&mut self, range: std::ops::Range<usize>, seq: u32, wait: Duration) -> bool {
        let want = self.counts.echoed + range.len() as u64;
        for k in range {
            let p = &mut self.peers[k];
            let payload = [
                &seq.to_be_bytes()[..],
                &(k as u32).to_be_bytes()[..],
                &[0u8; 24],
            ]
            .concat();
            let pkt = ipv4_udp(p.inner, 40000, self.echo.0, self.echo.1, &payload);
            let now = Instant::now();
            let mut buf = p.shard.pool().get().expect("a buffer under the ceiling");
            buf[TUN_READ_AT..TUN_READ_AT + VNET_HDR_LEN].fill(0);
            let at = TUN_READ_AT + VNET_HDR_LEN;
            buf[at..at + pkt.len()].copy_from_slice(&pkt);
            p.shard.tun_read(buf, VNET_HDR_LEN + pkt.len(), now);
            p.shard.flush(now);
            self.counts.sent += 1;
            Self::execute(p, &mut self.counts);
        }
        self.pump_until(wait, |c| c.echoed >= want)
    }

    /// Takes in datagrams and runs timers until `done` or `wait` passed.
    pub fn pump_until(&mut self, wait: Duration, done: impl Fn(&SimCounts) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        let mut last_tick = Instant::now();
        loop {
            let mut any = false;
            for p in &mut self.peers {
                while let Ok((n, from)) = p.sock.recv_from(&mut self.buf) {
                    any = true;
                    let now = Instant::now();
                    let mut b = p.shard.pool().get().expect("a buffer under the ceiling");
                    let n = n.min(b.len());
                    b[..n].copy_from_slice(&self.buf[..n]);
                    p.shard.udp_received(from, b, 0, n, None, now);
                    p.shard.flush(now);
                    Self::execute(p, &mut self.counts);
                }
            }
            if done(&self.counts) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if now.duration_since(last_tick) >= Duration::from_millis(100) {
                last_tick = now;
                for p in &mut self.peers {
                    p.shard.tick(now);
                    Self::execute(p, &mut self.counts);
                }
            }
            if !any {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }

    /// Sends what peer `p`'s shard asked for and counts the echoes it
    /// decrypted.
    fn execute(p: &mut Peer, counts: &mut SimCounts) {
        p.rec.execute(&mut p.shard);
        for (dst, bytes) in p.rec.sends.drain(..) {
            match bytes.first() {
                Some(1) => counts.initiations += 1,
                Some(4) => counts.transport += 1,
                _ => {}
            }
            // A full socket buffer loses the datagram, as a network would.
            let _ = p.sock.send_to(&bytes, dst);
        }
        for pkt in p.rec.delivered.drain(..) {
            if pkt.len() >= 28 && pkt[9] == 17 && pkt[16..20] == p.inner.octets() {
                p.echoes += 1;
                counts.echoed += 1;
            }
        }
    }
}

/// Echoes every datagram to `addr` back to its sender until `stop` is set
/// (bounded by `limit` as well). Call on a thread inside the hub's
/// namespace; returns how many it echoed.
pub fn echo_service(
    addr: SocketAddr,
    stop: &std::sync::atomic::AtomicBool,
    limit: Duration,
) -> u64 {
    use std::sync::atomic::Ordering;
    let sock = UdpSocket::bind(addr).expect("bind the echo service");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let end = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if sock.send_to(&buf[..n], from).is_ok() {
                echoed += 1;
            }
        }
    }
    echoed
}
