//! Floods a WireGuard port with what the internet throws at it: garbage,
//! transport messages with random receiver indexes, and handshake
//! initiations with a valid mac1 (anyone who knows the target's public key
//! can make those; each costs the target X25519 unless it demands cookies).
//! The sender is a thread that enters the attacker's namespace (`setns`
//! acts on the calling thread only) and sends from many sockets on the
//! given source addresses, paced to a rate and bounded in time. mac1 is
//! computed here from its definition (BLAKE2s), independently of
//! corewire's code.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};

use crate::{Error, Result};

/// What the flood sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// Random bytes, 1 to 200 of them.
    Garbage,
    /// Transport messages (type 4) with random receiver indexes and bodies.
    UnknownIndex,
    /// Initiations with random key material and a valid mac1.
    Initiations,
}

impl FloodKind {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            FloodKind::Garbage => "garbage",
            FloodKind::UnknownIndex => "unknown-index",
            FloodKind::Initiations => "initiations",
        }
    }
}

/// One flood: what, where to, from where, how fast, how long.
#[derive(Debug, Clone)]
pub struct Flood {
    pub kind: FloodKind,
    /// The target's WireGuard port.
    pub target: SocketAddrV4,
    /// The target's public key (for mac1).
    pub target_public: [u8; 32],
    /// Source addresses (present in the attacker's namespace).
    pub sources: Vec<Ipv4Addr>,
    /// Sockets per source address (each on its own ephemeral port).
    pub sockets_per_source: usize,
    /// Datagrams per second aimed at.
    pub rate: u64,
    pub duration: Duration,
}

/// xorshift64*: cheap pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// mac1's key for `public`: BLAKE2s-256("mac1----" || public).
fn mac1_key(public: &[u8; 32]) -> [u8; 32] {
    Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(public)
        .finalize()
        .into()
}

/// One flood datagram of `kind` into `out`; returns its length.
fn datagram(kind: FloodKind, rng: &mut Rng, mac1_key: &[u8; 32], out: &mut [u8; 1500]) -> usize {
    match kind {
        FloodKind::Garbage => {
            let len = 1 + (rng.next() % 200) as usize;
            rng.fill(&mut out[..len]);
            len
        }
        FloodKind::UnknownIndex => {
            let len = 32 + 16 * (rng.next() % 80) as usize;
            rng.fill(&mut out[..len]);
            out[..4].copy_from_slice(&4u32.to_le_bytes());
            len
        }
        FloodKind::Initiations => {
            rng.fill(&mut out[..148]);
            out[..4].copy_from_slice(&1u32.to_le_bytes());
            // mac1 = BLAKE2s-128 keyed with mac1_key over the first 116 bytes.
            let mut m =
                <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new(&(*mac1_key).into());
            m.update(&out[..116]);
            let mac: [u8; 16] = m.finalize_fixed().into();
            out[116..132].copy_from_slice(&mac);
            out[132..148].fill(0);
            148
        }
    }
}

impl Flood {
    /// Runs the flood from namespace `ns_name` on this thread's behalf (a
    /// scoped thread enters the namespace); returns how many datagrams were
    /// sent. A full socket buffer drops datagrams: that is part of a flood.
    pub fn run(&self, ns_name: &str) -> Result<u64> {
        self.run_until(ns_name, &AtomicBool::new(false))
    }

    /// [`run`](Self::run) that also ends as soon as `stop` is set.
    pub fn run_until(&self, ns_name: &str, stop: &AtomicBool) -> Result<u64> {
        std::thread::scope(|s| {
            s.spawn(|| self.run_here(ns_name, stop))
                .join()
                .unwrap_or_else(|_| Err(Error::Flood("the thread panicked".into())))
        })
    }

    fn run_here(&self, ns_name: &str, stop: &AtomicBool) -> Result<u64> {
        crate::netns::enter(ns_name)
            .map_err(|e| Error::Flood(format!("entering {ns_name}: {e}")))?;
        let key = mac1_key(&self.target_public);
        let mut socks = Vec::new();
        for src in &self.sources {
            for _ in 0..self.sockets_per_source.max(1) {
                let s = UdpSocket::bind(SocketAddrV4::new(*src, 0))
                    .map_err(|e| Error::Flood(format!("binding {src}: {e}")))?;
                s.set_nonblocking(true)
                    .map_err(|e| Error::Flood(format!("{src}: {e}")))?;
                socks.push(s);
            }
        }
        if socks.is_empty() {
            return Ok(0);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ self.kind as u64);
        let mut buf = [0u8; 1500];
        let (start, mut sent) = (Instant::now(), 0u64);
        while start.elapsed() < self.duration && !stop.load(Ordering::Relaxed) {
            // Pace: send what the rate allows so far, in bursts.
            let due = (start.elapsed().as_secs_f64() * self.rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for _ in 0..(due - sent).min(256) {
                let len = datagram(self.kind, &mut rng, &key, &mut buf);
                let sock = &socks[(rng.next() % socks.len() as u64) as usize];
                let _ = sock.send_to(&buf[..len], self.target);
                sent += 1;
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_have_their_kind_and_size() {
        let mut rng = Rng(1);
        let key = mac1_key(&[7; 32]);
        let mut out = [0u8; 1500];
        for _ in 0..100 {
            let n = datagram(FloodKind::UnknownIndex, &mut rng, &key, &mut out);
            assert!(n >= 32 && (n - 32).is_multiple_of(16) && out[0] == 4);
            let n = datagram(FloodKind::Garbage, &mut rng, &key, &mut out);
            assert!((1..=200).contains(&n));
        }
        let n = datagram(FloodKind::Initiations, &mut rng, &key, &mut out);
        assert_eq!((n, out[0]), (148, 1));
        assert_ne!(out[116..132], [0; 16], "a mac1 is there");
        assert_eq!(out[132..148], [0; 16], "no mac2");
    }
}
