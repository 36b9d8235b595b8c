//! Handshake messages under load. Initiations and responses each cost the
//! responder X25519 work (about 190 us on one core), so they do not run in
//! the packet loop as they arrive: they wait in a bounded per-worker queue
//! (in small buffers) and are taken in with a budget per loop turn, so
//! transport data keeps flowing however fast they come. When the queue
//! fills past an eighth of its capacity, or a turn's budget runs out with
//! messages left, the shard puts its interface under load for a second
//! (as the kernel does): then an initiation or response without a valid
//! mac2 gets a cookie reply and no X25519, and one with a cookie passes a
//! per-source rate limit. A legitimate peer answers the cookie on its next
//! attempt; a flood of spoofed sources never can. When the queue is full,
//! new handshake messages are dropped and counted; established sessions
//! never go through the queue.

use std::net::SocketAddr;

use super::Shard;
use crate::engine::limits::{HANDSHAKE_BUDGET, HANDSHAKE_QUEUE, HANDSHAKE_TURN, UNDER_LOAD_AT};
use crate::engine::pool::{Packet, SMALL_BUF_SIZE};
use crate::proto::messages::{
    HEADROOM, INITIATION_LEN, RESPONSE_LEN, TYPE_INITIATION, TYPE_RESPONSE,
};
use crate::proto::session::PacketBuf;

/// Whether `data` is an initiation or a response of the right length: the
/// messages whose processing costs X25519.
pub(super) fn is_handshake(data: &[u8]) -> bool {
    let Some(t) = data.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
        return false;
    };
    (t == TYPE_INITIATION && data.len() == INITIATION_LEN)
        || (t == TYPE_RESPONSE && data.len() == RESPONSE_LEN)
}

impl Shard {
    /// Queues a handshake message from `from` (copied into a small buffer
    /// if it sits in a large one), or drops it when the queue is full.
    pub(super) fn queue_handshake(&mut self, from: SocketAddr, pkt: Packet) {
        if self.handshakes.len() >= HANDSHAKE_QUEUE {
            self.counters.handshake_queue_full += 1;
            self.pool.put(pkt.into_inner());
            return;
        }
        let pkt = if pkt.buffer().len() > SMALL_BUF_SIZE {
            let len = pkt.len();
            let mut small = self.pool.get_for(len);
            small[HEADROOM..HEADROOM + len].copy_from_slice(pkt.data());
            self.pool.put(pkt.into_inner());
            match PacketBuf::new(small, HEADROOM, len) {
                Some(p) => p,
                None => return,
            }
        } else {
            pkt
        };
        self.handshakes.push_back((from, pkt));
        if self.handshakes.len() >= UNDER_LOAD_AT {
            self.signal_load();
        }
    }

    /// Takes in queued handshake messages, oldest first, until
    /// [`HANDSHAKE_BUDGET`] of them have cost X25519 work or
    /// [`HANDSHAKE_TURN`] were taken; signals load if some are left.
    pub(super) fn take_handshakes(&mut self) {
        let (mut costly, mut taken) = (0, 0);
        while costly < HANDSHAKE_BUDGET && taken < HANDSHAKE_TURN {
            let Some((from, pkt)) = self.handshakes.pop_front() else {
                return;
            };
            taken += 1;
            self.counters.handshakes_taken += 1;
            if self.take_in(from, pkt) {
                costly += 1;
                self.counters.handshake_dh += 1;
            }
        }
        if !self.handshakes.is_empty() {
            self.signal_load();
        }
    }

    /// Handshake messages waiting.
    pub fn handshakes_waiting(&self) -> usize {
        self.handshakes.len()
    }

    /// Puts the interface under load for the next second.
    fn signal_load(&mut self) {
        self.iface.signal_load(self.now);
        self.counters.under_load_signals += 1;
    }
}
