//! The generator's K peers, each a boringtun `Tunn` (crates.io, not
//! corewire's code) with its own key pair, endpoint address and tunnel
//! address; and the handshake storm: every peer initiates at once.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ring::rand::{SecureRandom as _, SystemRandom};

use super::mmsg::{Out, RecvBatch, SendBatch, UdpSock};
use super::topology::{endpoint, peer_of, tunnel_addr, ENDPOINT_BASE, HUB_PORT, HUB_VETH};
use crate::harness::cpu::thread_cpu_seconds;

/// Messages per `sendmmsg`/`recvmmsg`.
pub const BATCH: usize = 64;
/// Size of a handshake initiation, a response and a keepalive.
const INITIATION_LEN: usize = 148;
const KEEPALIVE_LEN: usize = 32;
/// Message types (first byte, little-endian u32).
const TYPE_RESPONSE: u8 = 2;
const TYPE_COOKIE: u8 = 3;
pub const TYPE_DATA: u8 = 4;

/// The hub's WireGuard address as the fleet sees it.
pub fn hub_addr() -> SocketAddrV4 {
    SocketAddrV4::new(HUB_VETH, HUB_PORT)
}

/// K simulated peers.
pub struct Fleet {
    pub tunns: Vec<Tunn>,
    publics: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("peers", &self.tunns.len())
            .finish_non_exhaustive()
    }
}

/// What a handshake storm saw.
#[derive(Debug, Clone, Default)]
pub struct Storm {
    /// Peers whose handshake completed.
    pub established: usize,
    /// From the first initiation to the last completed handshake (or the
    /// time limit).
    pub seconds: f64,
    pub cookies: u64,
    pub initiations: u64,
    /// The generator thread's CPU seconds during the storm.
    pub generator_cpu_s: f64,
    /// The peers whose handshake completed in this storm (ascending).
    pub connected: Vec<usize>,
}

impl Fleet {
    /// K peers with fresh random keys, all talking to `hub_public`.
    pub fn new(k: usize, hub_public: [u8; 32]) -> Result<Fleet> {
        let rng = SystemRandom::new();
        let hub = PublicKey::from(hub_public);
        let mut tunns = Vec::with_capacity(k);
        let mut publics = Vec::with_capacity(k);
        for i in 0..k {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes)
                .map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
            let secret = StaticSecret::from(bytes);
            let public = PublicKey::from(&secret);
            publics.push(public.to_bytes());
            let index = u32::try_from(i).context("too many peers")?;
            // boringtun's own limiter counts every handshake message a peer
            // receives and resets only from `update_timers`, which the
            // generator never calls: after ten responses it would demand a
            // cookie from the hub. Ours never considers itself under load.
            let limiter = Arc::new(RateLimiter::new(&public, u64::MAX));
            tunns.push(Tunn::new(secret, hub, None, None, index, Some(limiter)));
        }
        Ok(Fleet { tunns, publics })
    }

    pub fn len(&self) -> usize {
        self.tunns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunns.is_empty()
    }

    /// The `[Peer]` sections of `wg addconf` for the hub: every peer's key
    /// and tunnel address (the hub learns the endpoints from handshakes).
    pub fn hub_peers_conf(&self) -> String {
        let mut out = String::with_capacity(self.publics.len() * 100);
        for (i, public) in self.publics.iter().enumerate() {
            let key = base64::engine::general_purpose::STANDARD.encode(public);
            out.push_str(&format!(
                "[Peer]\nPublicKey = {key}\nAllowedIPs = {}/32\n",
                tunnel_addr(i)
            ));
        }
        out
    }

    /// The peer a datagram addressed to `dst` (an endpoint) belongs to.
    pub fn peer_at(&self, dst: std::net::Ipv4Addr) -> Option<usize> {
        peer_of(ENDPOINT_BASE, dst).filter(|&i| i < self.tunns.len())
    }

    /// Every peer initiates a handshake at once; a peer whose handshake has
    /// not completed after `retry` (or that got a cookie reply) initiates
    /// again. Ends when all are connected or after `limit`.
    pub fn storm(&mut self, sock: &UdpSock, limit: Duration, retry: Duration) -> Result<Storm> {
        let k = self.tunns.len();
        let hub = hub_addr();
        // Prepared before the clock starts: K initiations (X25519 each).
        let mut inits = vec![0u8; k * INITIATION_LEN];
        for (i, tunn) in self.tunns.iter_mut().enumerate() {
            let slot = &mut inits[i * INITIATION_LEN..(i + 1) * INITIATION_LEN];
            match tunn.format_handshake_initiation(slot, true) {
                TunnResult::WriteToNetwork(p) if p.len() == INITIATION_LEN => {}
                other => bail!("peer {i}: no initiation from boringtun: {other:?}"),
            }
        }
        let mut out = vec![0u8; 2048];
        let mut send = SendBatch::new(BATCH);
        let mut recv = RecvBatch::new(BATCH);
        let mut established = vec![false; k];
        let mut sent_at: Vec<Option<Instant>> = vec![None; k];
        // Peers whose (new) initiation waits to be sent, in order.
        let mut queue: std::collections::VecDeque<usize> = (0..k).collect();
        let mut keepalives: Vec<(usize, [u8; KEEPALIVE_LEN])> = Vec::with_capacity(BATCH);
        let mut storm = Storm::default();
        let cpu0 = thread_cpu_seconds();
        let start = Instant::now();
        let mut last_retry_scan = start;
        while storm.established < k && start.elapsed() < limit {
            // Send the next initiations.
            let n = queue.len().min(BATCH);
            if n > 0 {
                let now = Instant::now();
                let mut items = Vec::with_capacity(n);
                for &i in queue.iter().take(n) {
                    sent_at[i] = Some(now);
                    items.push(Out {
                        data: &inits[i * INITIATION_LEN..(i + 1) * INITIATION_LEN],
                        dst: hub,
                        src: Some(endpoint(i)),
                        segment: 0,
                    });
                }
                storm.initiations += send.send(sock, &items).context("sending initiations")?;
                drop(items);
                queue.drain(..n);
            }
            // Take what came back.
            let wait = if queue.is_empty() {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            };
            let got = recv.recv(sock, wait).context("receiving")?;
            for j in 0..got {
                let Some((data, dst)) = recv.get(j) else {
                    continue;
                };
                let Some(i) = self.peer_at(dst) else {
                    continue;
                };
                match data.first() {
                    Some(&TYPE_RESPONSE) => {
                        // A completed handshake answers with a keepalive.
                        if let TunnResult::WriteToNetwork(ka) =
                            self.tunns[i].decapsulate(None, data, &mut out)
                        {
                            if ka.len() == KEEPALIVE_LEN && ka[0] == TYPE_DATA {
                                if !established[i] {
                                    established[i] = true;
                                    storm.established += 1;
                                    storm.seconds = start.elapsed().as_secs_f64();
                                }
                                let mut copy = [0u8; KEEPALIVE_LEN];
                                copy.copy_from_slice(ka);
                                keepalives.push((i, copy));
                            }
                        }
                    }
                    Some(&TYPE_COOKIE) => {
                        storm.cookies += 1;
                        // boringtun keeps the cookie; the next initiation
                        // carries mac2.
                        let _ = self.tunns[i].decapsulate(None, data, &mut out);
                        if !established[i] && self.reinit(i, &mut inits) {
                            queue.push_back(i);
                        }
                    }
                    _ => {}
                }
            }
            if !keepalives.is_empty() {
                let items: Vec<Out<'_>> = keepalives
                    .iter()
                    .map(|(i, ka)| Out {
                        data: ka,
                        dst: hub,
                        src: Some(endpoint(*i)),
                        segment: 0,
                    })
                    .collect();
                send.send(sock, &items).context("sending keepalives")?;
                drop(items);
                keepalives.clear();
            }
            // Retransmit what went unanswered.
            if last_retry_scan.elapsed() >= Duration::from_millis(100) {
                last_retry_scan = Instant::now();
                for i in 0..k {
                    let stale = sent_at[i].is_some_and(|t| t.elapsed() >= retry);
                    if !established[i] && stale && self.reinit(i, &mut inits) {
                        sent_at[i] = None;
                        queue.push_back(i);
                    }
                }
            }
        }
        if storm.established < k {
            storm.seconds = start.elapsed().as_secs_f64();
        }
        storm.generator_cpu_s = thread_cpu_seconds() - cpu0;
        storm.connected = (0..k).filter(|&i| established[i]).collect();
        Ok(storm)
    }

    /// A fresh initiation for peer `i` into its slot of `inits`.
    fn reinit(&mut self, i: usize, inits: &mut [u8]) -> bool {
        let slot = &mut inits[i * INITIATION_LEN..(i + 1) * INITIATION_LEN];
        matches!(
            self.tunns[i].format_handshake_initiation(slot, true),
            TunnResult::WriteToNetwork(p) if p.len() == INITIATION_LEN
        )
    }
}
