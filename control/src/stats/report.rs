//! One reading of the running device's figures, as both exporters see
//! it: every worker's published counters and gauges, what steering did
//! (read from the programs' maps), and (when asked for) the busiest peers,
//! with their friendly names. Gathering it reads the workers' boards and
//! the maps; it never asks a worker anything (see the dataplane's
//! `engine/board.rs` and `engine/steer/stats.rs`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use corewire_dataplane::engine::board::{Gauge, PeerEntry, Published, WorkerSnapshot};
use corewire_dataplane::engine::steer::{SteeringReader, SteeringStats};

use super::names::PeerNames;

/// How long a reader waits for the workers' fresh peer snapshots before
/// it takes the last ones published.
pub const PEER_WAIT: Duration = Duration::from_secs(2);

/// Which peers a reading includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLimit {
    /// The `n` with the most traffic (received + sent bytes); 0 is none.
    Top(usize),
    /// Every peer.
    All,
}

impl std::str::FromStr for PeerLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(PeerLimit::All);
        }
        s.parse()
            .map(PeerLimit::Top)
            .map_err(|_| format!("{s:?} is neither a number nor \"all\""))
    }
}

impl std::fmt::Display for PeerLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerLimit::Top(n) => write!(f, "{n}"),
            PeerLimit::All => f.write_str("all"),
        }
    }
}

/// A peer as reported: its published state and its name, if known.
#[derive(Debug, Clone)]
pub struct PeerRow {
    /// What its worker published.
    pub entry: PeerEntry,
    /// Its friendly name (`# Name = ...` in the names file).
    pub name: Option<String>,
}

impl PeerRow {
    fn traffic(&self) -> u64 {
        self.entry.rx_bytes.saturating_add(self.entry.tx_bytes)
    }
}

/// Ordering by traffic, for the top-N heap.
#[derive(Debug)]
struct ByTraffic(u64, PeerEntry);

impl PartialEq for ByTraffic {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0 && self.1.public_key == o.1.public_key
    }
}
impl Eq for ByTraffic {}
impl PartialOrd for ByTraffic {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ByTraffic {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1.public_key).cmp(&(o.0, o.1.public_key))
    }
}

/// One reading.
#[derive(Debug, Clone)]
pub struct Report {
    /// The interface.
    pub ifname: String,
    /// Every worker's figures, by worker number.
    pub workers: Vec<WorkerSnapshot>,
    /// Which steering runs and what its programs counted.
    pub steering: SteeringStats,
    /// The peers asked for, most traffic first.
    pub peers: Vec<PeerRow>,
    /// How many peers the device has.
    pub peers_total: u64,
    /// Whether the peer figures are fresh (every worker published after
    /// the request); false means some are from an earlier reading.
    pub peers_fresh: bool,
}

impl Report {
    /// Reads the boards; with a peer limit other than `Top(0)`, asks the
    /// workers for fresh peer snapshots (waiting at most [`PEER_WAIT`]).
    pub fn gather(
        published: &Published,
        steering: &SteeringReader,
        ifname: &str,
        limit: PeerLimit,
        names: Option<&PeerNames>,
    ) -> Report {
        let workers = published.workers();
        let steering = steering.read();
        let peers_total = workers.iter().map(|w| w.gauge(Gauge::Peers)).sum();
        let (mut peers, mut peers_fresh) = (Vec::new(), true);
        let keep = match limit {
            PeerLimit::Top(n) => n,
            PeerLimit::All => usize::MAX,
        };
        if keep > 0 {
            let mut heap = BinaryHeap::new();
            peers_fresh = published.peers(PEER_WAIT, |e| {
                let t = e.rx_bytes.saturating_add(e.tx_bytes);
                if heap.len() < keep {
                    heap.push(Reverse(ByTraffic(t, e.clone())));
                } else if heap.peek().is_some_and(|Reverse(min)| min.0 < t) {
                    heap.pop();
                    heap.push(Reverse(ByTraffic(t, e.clone())));
                }
            });
            peers = heap
                .into_iter()
                .map(|Reverse(ByTraffic(_, entry))| PeerRow {
                    name: names
                        .and_then(|n| n.get(&entry.public_key))
                        .map(str::to_owned),
                    entry,
                })
                .collect();
            peers.sort_by(|a, b| {
                b.traffic()
                    .cmp(&a.traffic())
                    .then(a.entry.public_key.cmp(&b.entry.public_key))
            });
        }
        Report {
            ifname: ifname.to_owned(),
            workers,
            steering,
            peers,
            peers_total,
            peers_fresh,
        }
    }

    /// A counter's sum over the workers, by field name.
    pub fn total(&self, field: &str) -> u64 {
        self.workers.iter().map(|w| w.counter(field)).sum()
    }
}
