//! Timed traffic through the hub: fleet -> LAN (the hub decrypts) and
//! LAN -> fleet (the hub encrypts), one step at a fixed offered rate (the
//! sweep of steps is in [`sweep`](super::sweep)). Latency probes ride in the
//! fleet -> LAN traffic: every `every`-th datagram's send time is stamped
//! just before its `sendmmsg`, and the LAN sink reads the sequence number
//! from the plaintext and records the one-way delay (same clock: both are
//! threads of this process).
//!
//! Payloads (UDP payload bytes, at least 16): sequence number (u64 LE),
//! peer index (u32 LE), the magic `cwcc`, zeros.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use boringtun::noise::TunnResult;
use corewire_testkit::packets::ipv4_udp;
use hdrhistogram::Histogram;

use super::fleet::{hub_addr, Fleet, BATCH, TYPE_DATA};
use super::mmsg::{Out, RecvBatch, SendBatch, UdpSock};
use super::sweep::Step;
use super::topology::{endpoint, tunnel_addr, LAN, LAN_PORT};
use crate::harness::cpu::thread_cpu_seconds;

const MAGIC: [u8; 4] = *b"cwcc";
/// The smallest payload (sequence, peer, magic).
pub const MIN_PAYLOAD: usize = 16;
/// IPv4 + UDP headers.
const HEADERS: usize = 28;
/// WireGuard's transport overhead: header and tag.
const OVERHEAD: usize = 32;
/// Sealed datagrams kept for one step at most (memory bound).
const MAX_SEALED_BYTES: usize = 1 << 30;
/// How long a step waits for stragglers after its sender stops.
const DRAIN: Duration = Duration::from_millis(150);
/// Latency probes per second aimed at.
const PROBES_PER_SECOND: f64 = 2_000.0;
/// Decrypted and checked datagrams per encrypt step.
const SAMPLE: u64 = 64;
/// The LAN source's port (the sink has LAN_PORT).
const LAN_SOURCE_PORT: u16 = LAN_PORT + 1;

/// Paces a sender: how many datagrams it may have sent by now.
struct Pacer {
    start: Instant,
    rate: f64,
}

impl Pacer {
    /// Waits until the rate allows more than `sent`; returns the allowance.
    fn allow(&self, sent: u64) -> u64 {
        loop {
            let due = (self.start.elapsed().as_secs_f64() * self.rate) as u64;
            if due > sent {
                return due - sent;
            }
            sleep(Duration::from_micros(100));
        }
    }
}

/// Send times of the probes of one step (nanoseconds since `epoch`).
struct Probes {
    epoch: Instant,
    every: u64,
    sent_ns: Vec<AtomicU64>,
}

impl Probes {
    fn new(total: u64, rate: f64) -> Probes {
        let every = ((rate / PROBES_PER_SECOND) as u64).max(1);
        Probes {
            epoch: Instant::now(),
            every,
            sent_ns: (0..total / every + 1).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn stamp(&self, from: u64, to: u64) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut seq = from.div_ceil(self.every) * self.every;
        while seq < to {
            if let Some(slot) = self.sent_ns.get((seq / self.every) as usize) {
                slot.store(now, Ordering::Relaxed);
            }
            seq += self.every;
        }
    }

    fn delay(&self, seq: u64) -> Option<u64> {
        if !seq.is_multiple_of(self.every) {
            return None;
        }
        let sent = self
            .sent_ns
            .get((seq / self.every) as usize)?
            .load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        (sent != 0).then(|| now.saturating_sub(sent))
    }
}

fn payload(buf: &mut [u8], seq: u64, peer: usize) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&(peer as u32).to_le_bytes());
    buf[12..16].copy_from_slice(&MAGIC);
}

/// Datagrams sealed before a step: burst j is `gso` consecutive datagrams
/// of peer `peers[j % peers.len()]`; all have the same length.
struct Sealed {
    buf: Vec<u8>,
    wire: usize,
    gso: usize,
    count: u64,
    peers: Vec<usize>,
}

impl Sealed {
    fn seal(
        fleet: &mut Fleet,
        peers: &[usize],
        len: usize,
        count: u64,
        gso: usize,
        seq0: u64,
    ) -> Result<Sealed> {
        let wire = HEADERS + len + OVERHEAD;
        let count = count.min((MAX_SEALED_BYTES / wire) as u64).max(1);
        let mut buf = vec![0u8; count as usize * wire];
        let mut body = vec![0u8; len];
        let mut seq = 0u64;
        let mut burst = 0usize;
        while seq < count {
            let peer = peers[burst % peers.len()];
            payload(&mut body, seq0 + seq, peer);
            let mut plain = ipv4_udp(tunnel_addr(peer), LAN_PORT, LAN, LAN_PORT, &body);
            for _ in 0..gso {
                if seq >= count {
                    break;
                }
                plain[HEADERS..HEADERS + 8].copy_from_slice(&(seq0 + seq).to_le_bytes());
                let at = seq as usize * wire;
                match fleet.tunns[peer].encapsulate(&plain, &mut buf[at..at + wire]) {
                    TunnResult::WriteToNetwork(p) if p.len() == wire && p[0] == TYPE_DATA => {}
                    other => bail!("peer {peer}: boringtun did not seal a datagram: {other:?}"),
                }
                seq += 1;
            }
            burst += 1;
        }
        Ok(Sealed {
            buf,
            wire,
            gso,
            count,
            peers: peers.to_vec(),
        })
    }

    fn bursts(&self) -> usize {
        (self.count as usize).div_ceil(self.gso)
    }

    /// Burst j: its first sequence number, bytes and source.
    fn burst(&self, j: usize) -> (u64, &[u8], Ipv4Addr) {
        let first = j * self.gso;
        let last = ((j + 1) * self.gso).min(self.count as usize);
        let peer = self.peers[j % self.peers.len()];
        (
            first as u64,
            &self.buf[first * self.wire..last * self.wire],
            endpoint(peer),
        )
    }
}

/// One LAN-side thread: enters the LAN namespace and binds its socket.
fn lan_socket(port: u16, lan_ns: &str) -> Result<UdpSock> {
    corewire_testkit::netns::enter(lan_ns).context("entering the LAN namespace")?;
    UdpSock::bind(SocketAddrV4::new(LAN, port), false).context("LAN socket")
}

/// One timed step: who sends what, how fast, for how long.
#[allow(missing_debug_implementations)] // holds a callback
pub struct StepSpec<'a> {
    pub fleet: &'a mut Fleet,
    /// The generator's socket (in the fleet namespace).
    pub sock: &'a UdpSock,
    pub lan_ns: &'a str,
    /// The peers that have a session.
    pub peers: &'a [usize],
    pub payload: usize,
    pub rate_pps: f64,
    pub seconds: f64,
    pub gso: usize,
    /// The hub's CPU seconds so far.
    pub hub_cpu: &'a (dyn Fn() -> f64 + Sync),
    /// The first sequence number (distinct per decrypt step, for the
    /// probes).
    pub seq0: u64,
}

/// Ends a receiving loop once the sender has stopped and nothing arrived
/// for [`DRAIN`].
#[derive(Debug, Default)]
struct Drain {
    idle_since: Option<Instant>,
}

impl Drain {
    /// After a receive of `got` datagrams: whether to stop now.
    fn done(&mut self, stopped: bool, got: usize) -> bool {
        if !stopped || got > 0 {
            self.idle_since = None;
            return false;
        }
        self.idle_since.get_or_insert_with(Instant::now).elapsed() >= DRAIN
    }
}

impl StepSpec<'_> {
    /// Fleet -> LAN: the hub decrypts.
    pub fn decrypt(self) -> Result<Step> {
        let total = (self.rate_pps * self.seconds).ceil() as u64;
        let sealed = Sealed::seal(
            self.fleet,
            self.peers,
            self.payload,
            total,
            self.gso,
            self.seq0,
        )?;
        let probes = Probes::new(sealed.count, self.rate_pps);
        let stop = AtomicBool::new(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let seq0 = self.seq0;
        let payload_len = self.payload;
        let (sink, sent, sender_cpu, wall, hub_cpu_s) = std::thread::scope(|s| -> Result<_> {
            let sink = s.spawn(|| -> Result<(u64, u64, Histogram<u64>)> {
                let sock = match lan_socket(LAN_PORT, self.lan_ns) {
                    Ok(sock) => {
                        let _ = ready_tx.send(Ok(()));
                        sock
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram")?;
                let mut recv = RecvBatch::new(BATCH);
                let (mut count, mut bad) = (0u64, 0u64);
                let mut drain = Drain::default();
                loop {
                    let n = recv.recv(&sock, Duration::from_millis(10))?;
                    for j in 0..n {
                        let Some((data, _)) = recv.get(j) else {
                            continue;
                        };
                        count += 1;
                        if data.len() != payload_len || data[12..16] != MAGIC {
                            bad += 1;
                            continue;
                        }
                        let seq = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
                        if let Some(d) = seq.checked_sub(seq0).and_then(|rel| probes.delay(rel)) {
                            let _ = hist.record(d.max(1));
                        }
                    }
                    if drain.done(stop.load(Ordering::Relaxed), n) {
                        break;
                    }
                }
                Ok((count, bad, hist))
            });
            ready_rx.recv().context("the LAN sink thread")??;
            let hub0 = (self.hub_cpu)();
            let cpu0 = thread_cpu_seconds();
            let pacer = Pacer {
                start: Instant::now(),
                rate: self.rate_pps,
            };
            let mut send = SendBatch::new(BATCH);
            let hub = hub_addr();
            let (mut sent, mut j) = (0u64, 0usize);
            let segment = u16::try_from(sealed.wire).unwrap_or(0);
            let mut result = Ok(());
            while j < sealed.bursts() {
                let mut allowed = pacer.allow(sent);
                let mut items: [Option<Out<'_>>; BATCH] = [None; BATCH];
                let (mut n, first) = (0, sealed.burst(j).0);
                let mut last = first;
                while n < BATCH && j < sealed.bursts() && allowed > 0 {
                    let (seq, data, src) = sealed.burst(j);
                    let segs = (data.len() / sealed.wire) as u64;
                    items[n] = Some(Out {
                        data,
                        dst: hub,
                        src: Some(src),
                        segment: if segs > 1 { segment } else { 0 },
                    });
                    allowed = allowed.saturating_sub(segs);
                    last = seq + segs;
                    n += 1;
                    j += 1;
                }
                let batch: Vec<Out<'_>> = items[..n].iter().flatten().copied().collect();
                probes.stamp(first, last);
                match send.send(self.sock, &batch) {
                    Ok(d) => sent += d,
                    Err(e) => {
                        result = Err(anyhow::anyhow!("sendmmsg: {e}"));
                        break;
                    }
                }
            }
            let wall = pacer.start.elapsed().as_secs_f64();
            let sender_cpu = thread_cpu_seconds() - cpu0;
            sleep(DRAIN);
            let hub_cpu_s = (self.hub_cpu)() - hub0;
            stop.store(true, Ordering::Relaxed);
            let sink = sink
                .join()
                .map_err(|_| anyhow::anyhow!("the LAN sink panicked"))?;
            result?;
            Ok((sink?, sent, sender_cpu, wall, hub_cpu_s))
        })?;
        let (delivered, bad, hist) = sink;
        Ok(Step {
            sample_ok: delivered - bad,
            sample_bad: bad,
            latency_ns: Some(hist),
            ..Step::timed(self.rate_pps, sent, delivered, wall, sender_cpu, hub_cpu_s)
        })
    }

    /// LAN -> fleet: the hub encrypts.
    pub fn encrypt(self) -> Result<Step> {
        let total = (self.rate_pps * self.seconds).ceil() as u64;
        let stop = AtomicBool::new(false);
        let fleet = self.fleet;
        let sock = self.sock;
        let (source, received) = std::thread::scope(|s| -> Result<_> {
            let receiver = s.spawn(|| -> Result<(u64, u64, u64)> {
                let mut recv = RecvBatch::new(BATCH);
                let mut out = vec![0u8; 2048];
                let (mut count, mut ok, mut bad) = (0u64, 0u64, 0u64);
                let mut drain = Drain::default();
                loop {
                    let n = recv.recv(sock, Duration::from_millis(10))?;
                    for j in 0..n {
                        let Some((data, dst)) = recv.get(j) else {
                            continue;
                        };
                        if data.first() != Some(&TYPE_DATA) || data.len() <= OVERHEAD {
                            continue;
                        }
                        count += 1;
                        if ok + bad < SAMPLE {
                            let index =
                                u32::from_le_bytes(data[4..8].try_into().unwrap_or_default());
                            let peer = (index >> 8) as usize;
                            let good = fleet.peer_at(dst) == Some(peer)
                                && match fleet.tunns[peer].decapsulate(None, data, &mut out) {
                                    TunnResult::WriteToTunnelV4(p, src) => {
                                        src == LAN
                                            && p.len() == HEADERS + self.payload
                                            && p[16..20] == tunnel_addr(peer).octets()
                                            && p[HEADERS + 12..HEADERS + 16] == MAGIC
                                    }
                                    _ => false,
                                };
                            if good {
                                ok += 1
                            } else {
                                bad += 1
                            }
                        }
                    }
                    if drain.done(stop.load(Ordering::Relaxed), n) {
                        break;
                    }
                }
                Ok((count, ok, bad))
            });
            let source = s.spawn(|| -> Result<(u64, f64, f64, f64)> {
                let sock = lan_socket(LAN_SOURCE_PORT, self.lan_ns)?;
                let gso = self.gso.max(1);
                let mut bufs = vec![0u8; BATCH * gso * self.payload];
                let mut send = SendBatch::new(BATCH);
                let hub0 = (self.hub_cpu)();
                let cpu0 = thread_cpu_seconds();
                let pacer = Pacer {
                    start: Instant::now(),
                    rate: self.rate_pps,
                };
                let (mut sent, mut burst) = (0u64, 0usize);
                let segment = u16::try_from(self.payload).unwrap_or(0);
                while sent < total {
                    let mut allowed = pacer.allow(sent).min(total - sent);
                    let mut dsts = [(0usize, 0usize); BATCH];
                    let mut n = 0;
                    let mut seq = sent;
                    while n < BATCH && allowed > 0 {
                        let segs = (gso as u64).min(allowed) as usize;
                        let peer = self.peers[burst % self.peers.len()];
                        for k in 0..segs {
                            let at = (n * gso + k) * self.payload;
                            payload(&mut bufs[at..at + self.payload], seq, peer);
                            seq += 1;
                        }
                        dsts[n] = (peer, segs);
                        allowed -= segs as u64;
                        n += 1;
                        burst += 1;
                    }
                    let items: Vec<Out<'_>> = dsts[..n]
                        .iter()
                        .enumerate()
                        .map(|(m, &(peer, segs))| Out {
                            data: &bufs[m * gso * self.payload..(m * gso + segs) * self.payload],
                            dst: SocketAddrV4::new(tunnel_addr(peer), LAN_PORT),
                            src: None,
                            segment: if segs > 1 { segment } else { 0 },
                        })
                        .collect();
                    sent += send.send(&sock, &items).context("LAN sendmmsg")?;
                }
                let wall = pacer.start.elapsed().as_secs_f64();
                let cpu = thread_cpu_seconds() - cpu0;
                sleep(DRAIN);
                let hub_cpu_s = (self.hub_cpu)() - hub0;
                Ok((sent, wall, cpu, hub_cpu_s))
            });
            let source = source
                .join()
                .map_err(|_| anyhow::anyhow!("the LAN source panicked"));
            stop.store(true, Ordering::Relaxed);
            let received = receiver
                .join()
                .map_err(|_| anyhow::anyhow!("the fleet receiver panicked"))?;
            Ok((source??, received?))
        })?;
        let (sent, wall, sender_cpu, hub_cpu_s) = source;
        let (delivered, ok, bad) = received;
        Ok(Step {
            sample_ok: ok,
            sample_bad: bad,
            ..Step::timed(self.rate_pps, sent, delivered, wall, sender_cpu, hub_cpu_s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_stamp_only_their_sequence_numbers() {
        let p = Probes::new(1000, 20_000.0);
        assert_eq!(p.every, 10);
        p.stamp(5, 25);
        assert!(p.delay(10).is_some() && p.delay(20).is_some());
        assert!(p.delay(0).is_none() && p.delay(30).is_none() && p.delay(11).is_none());
    }
}
