//! What a worker publishes for others to read: at the end of each loop
//! turn its counters (with the turn and its batch of completions counted)
//! and its gauges, into its board (see `engine/board.rs`: relaxed stores,
//! no allocation, no lock); after executing actions, the receiver indexes
//! it allocated and freed, into the XDP guard's map when the guard runs.

use corewire_ebpf::xdp::LiveIndexes;

use super::Worker;
use crate::engine::board::Gauge;
use crate::engine::counters::BATCH_BUCKETS;
use crate::proto::index::{IndexChange, IndexTable};
use crate::proto::peer::PeerId;

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

    /// Mirrors the shard's index changes into the XDP guard's map (when it
    /// runs), counting and now and then logging what the map refused.
    pub(super) fn publish_live_indexes(&mut self) {
        if let Some(live) = &mut self.live {
            let refused = publish_indexes(live, self.shard.interface_mut().indexes_mut());
            let counters = self.shard.counters_mut();
            for _ in 0..refused {
                counters.live_index_refused += 1;
                if counters.live_index_refused.is_power_of_two() {
                    tracing::warn!(
                        count = counters.live_index_refused,
                        "XDP guard: live indexes not published (map full); their datagrams are dropped"
                    );
                }
            }
        }
    }
}

/// Mirrors the index changes since the last call into the XDP guard's map
/// (a syscall each: they happen per handshake, not per packet). Returns
/// how many the map refused (full): the guard drops their datagrams.
fn publish_indexes(live: &mut LiveIndexes, indexes: &mut IndexTable<PeerId>) -> u64 {
    let mut refused = 0;
    for change in indexes.take_changes() {
        match change {
            IndexChange::Added(i) => refused += u64::from(live.insert(i).is_err()),
            IndexChange::Removed(i) => live.remove(i),
        }
    }
    refused
}
