//! Published counters: where each worker leaves its figures for readers
//! (`corewire stats`, the Prometheus endpoint, the periodic summary), so
//! reading them never asks a worker anything and never waits on one.
//!
//! - Counters and gauges: one [`WorkerBoard`] per worker, an array of
//!   atomics on cache lines of its own. The worker copies its plain
//!   [`Counters`] into it once per loop turn (relaxed stores, no read-
//!   modify-write: it is the only writer); a reader loads them whenever it
//!   likes. Each value only grows (counters) or is the last one published
//!   (gauges); values of one worker may be up to one loop turn apart.
//! - Peers: at 100,000 peers, copying every peer each turn would cost the
//!   packet path, so peers are published on demand. A reader asks
//!   ([`Published::peers`]); at its next loop turns the worker copies its
//!   peers into a back buffer [`PEER_PUBLISH_CHUNK`] at a time, and when
//!   it has them all, swaps that buffer with the published one under a
//!   mutex it only ever *tries* to take (if a reader holds it, the swap
//!   waits for the next turn). Readers hold that mutex while they walk the
//!   snapshot; the worker never blocks on it.
//!
//! More per-worker figures: a counter goes into [`Counters`] (its
//! `counters!` list), a gauge into [`Gauge`]; both are published and
//! exported with no other change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::counters::{Counters, DropReason, BATCH_BUCKETS};
use super::limits::PEER_PUBLISH_CHUNK;
use crate::proto::interface::Interface;
use crate::proto::keys::PublicKey;

/// A worker's instantaneous figures (published with its counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Gauge {
    /// Peers this worker owns.
    Peers,
    /// Packets waiting for a handshake.
    Staged,
    /// Handshake messages waiting to be taken in.
    HandshakeQueue,
    /// 1 while under load, else 0.
    UnderLoad,
    /// Free buffers in the worker's own pool.
    BuffersFree,
    /// Buffers the worker has allocated since it started (the pool grows
    /// to its working set, then stops).
    BuffersAllocated,
    /// io_uring operations in flight (slots in use; the rest are free).
    OpsInFlight,
}

impl Gauge {
    /// Every gauge, in array order.
    pub const ALL: [Gauge; 7] = [
        Gauge::Peers,
        Gauge::Staged,
        Gauge::HandshakeQueue,
        Gauge::UnderLoad,
        Gauge::BuffersFree,
        Gauge::BuffersAllocated,
        Gauge::OpsInFlight,
    ];

    /// Metric family (without the `corewire_` prefix) and JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Gauge::Peers => "worker_peers",
            Gauge::Staged => "worker_staged_packets",
            Gauge::HandshakeQueue => "worker_handshake_queue",
            Gauge::UnderLoad => "worker_under_load",
            Gauge::BuffersFree => "worker_buffers_free",
            Gauge::BuffersAllocated => "worker_buffers_allocated",
            Gauge::OpsInFlight => "worker_operations_in_flight",
        }
    }

    /// One line for `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Gauge::Peers => "Peers the worker owns.",
            Gauge::Staged => "Packets the worker holds while their peer's handshake runs.",
            Gauge::HandshakeQueue => "Handshake messages waiting in the worker's queue.",
            Gauge::UnderLoad => "1 while the worker is under load (cookies demanded), else 0.",
            Gauge::BuffersFree => "Free packet buffers in the worker's own pool.",
            Gauge::BuffersAllocated => "Packet buffers the worker has allocated since it started.",
            Gauge::OpsInFlight => "io_uring operations in flight (slots in use).",
        }
    }
}

/// The published state of one worker's peer, as `wg show` has it plus
/// what the protocol core refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer.
    pub public_key: PublicKey,
    /// Where it is now.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from it (handshakes and transport, on the wire).
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Datagrams of this peer that were refused.
    pub dropped: u64,
    /// Handshake messages of this peer that were refused.
    pub handshake_failures: u64,
}

const N_DROPS: usize = DropReason::ALL.len();
const N_BATCH: usize = BATCH_BUCKETS.len() + 1;
const N_GAUGES: usize = Gauge::ALL.len();

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One worker's published figures. Aligned so that no two workers' boards
/// share a cache line (each worker writes only its own).
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerBoard {
    counters: [AtomicU64; Counters::LEN],
    drops: [AtomicU64; N_DROPS],
    batch: [AtomicU64; N_BATCH],
    gauges: [AtomicU64; N_GAUGES],
    /// Peer snapshots asked for: a counter readers bump, each taking the
    /// new value as its ticket.
    wanted: AtomicU64,
    /// The ticket the published peer snapshot answers (a pass started
    /// after that request).
    served: AtomicU64,
    peers: Mutex<Vec<PeerEntry>>,
}

impl Default for WorkerBoard {
    fn default() -> Self {
        Self {
            counters: zeros(),
            drops: zeros(),
            batch: zeros(),
            gauges: zeros(),
            wanted: AtomicU64::new(0),
            served: AtomicU64::new(0),
            peers: Mutex::new(Vec::new()),
        }
    }
}

fn store<const N: usize>(to: &[AtomicU64; N], from: &[u64; N]) {
    for (a, v) in to.iter().zip(from) {
        a.store(*v, Ordering::Relaxed);
    }
}

fn load<const N: usize>(from: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| from[i].load(Ordering::Relaxed))
}

impl WorkerBoard {
    /// Publishes the worker's counters and gauges (the worker, once per
    /// loop turn): relaxed stores only.
    pub fn publish(&self, c: &Counters, gauges: &[u64; N_GAUGES]) {
        store(&self.counters, &c.values());
        store(&self.drops, c.dropped.all());
        store(&self.batch, &c.batch_sizes);
        store(&self.gauges, gauges);
    }

    /// What was last published.
    pub fn read(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            counters: load(&self.counters),
            drops: load(&self.drops),
            batch: load(&self.batch),
            gauges: load(&self.gauges),
        }
    }
}

/// A worker's published figures, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Plain counters, in [`Counters::INFO`] order.
    pub counters: [u64; Counters::LEN],
    /// Datagrams dropped, in [`DropReason::ALL`] order.
    pub drops: [u64; N_DROPS],
    /// Loop turns by completions handled (see [`Counters::batch_sizes`]).
    pub batch: [u64; N_BATCH],
    /// Gauges, in [`Gauge::ALL`] order.
    pub gauges: [u64; N_GAUGES],
}

impl WorkerSnapshot {
    /// A gauge's value.
    pub fn gauge(&self, g: Gauge) -> u64 {
        self.gauges[g as usize]
    }

    /// A counter's value by field name (0 for an unknown name).
    pub fn counter(&self, field: &str) -> u64 {
        Counters::INFO
            .iter()
            .position(|i| i.field == field)
            .map_or(0, |i| self.counters[i])
    }
}

/// The worker's side of peer publishing: a pass over its peers in chunks,
/// into a back buffer that keeps its capacity.
#[derive(Debug, Default)]
pub struct PeerPublisher {
    back: Vec<PeerEntry>,
    /// The next peer slot to copy while a pass runs.
    next: Option<usize>,
    /// The last request served.
    served: u64,
}

impl PeerPublisher {
    /// One step (the worker, once per loop turn): starts a pass if a
    /// reader asked since the last one, copies the next
    /// [`PEER_PUBLISH_CHUNK`] peers, and publishes when all are copied.
    /// Returns whether the pass has more peers to copy (the worker should
    /// come back without sleeping).
    pub fn step(&mut self, iface: &Interface, board: &WorkerBoard) -> bool {
        let start = match self.next {
            Some(s) => s,
            None => {
                let wanted = board.wanted.load(Ordering::Acquire);
                if wanted == self.served {
                    return false;
                }
                self.served = wanted;
                self.back.clear();
                0
            }
        };
        let slots = iface.peer_slots();
        let end = (start + PEER_PUBLISH_CHUNK).min(slots);
        for id in start..end {
            if let Some(p) = iface.peer(id as u32) {
                self.back.push(PeerEntry {
                    public_key: *p.public_key(),
                    endpoint: p.endpoint(),
                    last_handshake: p.last_handshake(),
                    rx_bytes: p.rx_bytes(),
                    tx_bytes: p.tx_bytes(),
                    dropped: p.refused(),
                    handshake_failures: p.handshake_failures(),
                });
            }
        }
        if end < slots {
            self.next = Some(end);
            return true;
        }
        // Every peer copied: swap it in, unless a reader holds the
        // published one (then try again next turn; never wait).
        match board.peers.try_lock() {
            Ok(mut front) => {
                std::mem::swap(&mut *front, &mut self.back);
                drop(front);
                board.served.store(self.served, Ordering::Release);
                self.next = None;
                false
            }
            // Not `true`: the reader holding it may be a low-priority
            // thread, and a worker spinning on it would take the CPU it
            // needs. The swap is tried again at the next turn (at the
            // latest the next timer tick).
            Err(_) => {
                self.next = Some(slots);
                false
            }
        }
    }
}

/// Every worker's board, for readers on any thread. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Published {
    boards: Vec<Arc<WorkerBoard>>,
}

impl Published {
    /// Boards for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            boards: (0..workers).map(|_| Arc::default()).collect(),
        }
    }

    /// Worker `i`'s board (for the worker itself).
    pub fn board(&self, i: usize) -> Option<Arc<WorkerBoard>> {
        self.boards.get(i).cloned()
    }

    /// Every worker's figures as last published, by worker number.
    pub fn workers(&self) -> Vec<WorkerSnapshot> {
        self.boards.iter().map(|b| b.read()).collect()
    }

    /// Asks every worker for a fresh peer snapshot and waits (polling, at
    /// most `wait`) until each has published one; then calls `f` for
    /// every peer of every worker. Returns whether every snapshot was
    /// fresh (a worker that did not publish in time is read as it last
    /// published). Only the caller waits: the workers never do.
    pub fn peers(&self, wait: Duration, mut f: impl FnMut(&PeerEntry)) -> bool {
        let tickets: Vec<u64> = self
            .boards
            .iter()
            .map(|b| b.wanted.fetch_add(1, Ordering::AcqRel) + 1)
            .collect();
        let deadline = Instant::now() + wait;
        let fresh = loop {
            let done = self
                .boards
                .iter()
                .zip(&tickets)
                .all(|(b, t)| b.served.load(Ordering::Acquire) >= *t);
            if done {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        for b in &self.boards {
            let peers = b.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers.iter().for_each(&mut f);
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keys::PrivateKey;

    #[test]
    fn counters_are_published_and_read_back() {
        let p = Published::new(2);
        let mut c = Counters {
            udp_rx_datagrams: 7,
            ..Default::default()
        };
        c.dropped.count(DropReason::BadMac);
        c.batch_sizes[3] = 2;
        let mut g = [0; N_GAUGES];
        g[Gauge::Peers as usize] = 5;
        p.board(1).expect("worker 1").publish(&c, &g);
        let w = p.workers();
        assert_eq!(w[0].counter("udp_rx_datagrams"), 0);
        assert_eq!(w[1].counter("udp_rx_datagrams"), 7);
        assert_eq!(w[1].drops[DropReason::BadMac as usize], 1);
        assert_eq!(w[1].batch[3], 2);
        assert_eq!(w[1].gauge(Gauge::Peers), 5);
    }

    #[test]
    fn peers_are_published_in_chunks_on_demand() {
        let now = Instant::now();
        let mut iface = Interface::new(now, SystemTime::now());
        let n = PEER_PUBLISH_CHUNK * 2 + 3;
        for _ in 0..n {
            let key = PrivateKey::generate().public_key();
            iface.add_peer(key).expect("peer added");
        }
        let published = Published::new(1);
        let board = published.board(0).expect("board");
        let mut publisher = PeerPublisher::default();
        // Nobody asked: nothing to do.
        assert!(!publisher.step(&iface, &board));
        // A reader asks (on another thread) while the worker steps.
        let reader = {
            let published = published.clone();
            std::thread::spawn(move || {
                let mut count = 0;
                let fresh = published.peers(Duration::from_secs(10), |_| count += 1);
                (fresh, count)
            })
        };
        let mut steps = 0;
        while !reader.is_finished() {
            if publisher.step(&iface, &board) {
                steps += 1;
            }
            std::thread::yield_now();
        }
        let (fresh, count) = reader.join().expect("reader");
        assert!(fresh);
        assert_eq!(count, n);
        assert!(steps >= 2, "{n} peers take several chunks, took {steps}");
        // Served: no new pass until asked again.
        assert!(!publisher.step(&iface, &board));
    }

    #[test]
    fn boards_do_not_share_cache_lines() {
        let published = Published::new(3);
        let at: Vec<usize> = (0..3)
            .map(|i| Arc::as_ptr(&published.board(i).unwrap()) as usize)
            .collect();
        for (i, a) in at.iter().enumerate() {
            assert_eq!(a % 128, 0, "board {i} starts a 128-byte line");
            for b in &at[i + 1..] {
                assert!(
                    a.abs_diff(*b) >= 128,
                    "boards {a:#x} and {b:#x} share a line"
                );
            }
        }
    }
}
