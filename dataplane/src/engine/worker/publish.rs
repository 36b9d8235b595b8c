//! What a worker publishes at the end of each loop turn: its counters
//! (with the turn and its batch of completions counted) and its gauges,
//! into its board (see `engine/board.rs`): relaxed stores, no allocation,
//! no lock.

use super::Worker;
use crate::engine::board::Gauge;
use crate::engine::counters::BATCH_BUCKETS;

impl Worker {
    /// Counts the loop turn and its batch of completions, and publishes
    /// the counters and gauges (relaxed stores, see `board.rs`).
    pub(super) fn count_turn(&mut self) {
        let n = self.completions.len() as u64;
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&b| n <= b)
            .unwrap_or(BATCH_BUCKETS.len());
        let c = self.shard.counters_mut();
        c.loop_turns += 1;
        c.completions += n;
        c.batch_sizes[bucket] += 1;
        let mut gauges = [0; Gauge::ALL.len()];
        for g in Gauge::ALL {
            gauges[g as usize] = match g {
                Gauge::Peers => self.shard.interface().peer_count() as u64,
                Gauge::Staged => self.shard.staged_total() as u64,
                Gauge::HandshakeQueue => self.shard.handshakes_waiting() as u64,
                Gauge::UnderLoad => u64::from(self.shard.under_load()),
                Gauge::BuffersFree => self.shard.pool().free() as u64,
                Gauge::BuffersAllocated => self.shard.pool().allocated(),
                Gauge::OpsInFlight => self.ops.in_flight() as u64,
            };
        }
        self.board.publish(self.shard.counters(), &gauges);
    }
}
