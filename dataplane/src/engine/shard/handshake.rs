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
//! attempt; a flood of spoofed sources never can.
//!
//! Before a message queues, its MACs are checked (two keyed BLAKE2s at
//! most): a bad mac1 is dropped at once, one without a valid mac2 while
//! under load gets its cookie reply at once (no X25519, so no queue), and
//! one with a valid mac2 (its
//! sender proved it owns its address by answering a cookie) waits in a
//! small lane of its own that is served first, so a flood that fills the
//! main queue cannot keep a legitimate peer's answer to a cookie out. When
//! a lane is full, new messages for it are dropped and counted;
//! established sessions never go through either.

use std::net::SocketAddr;

use super::Shard;
use crate::engine::limits::{
    HANDSHAKE_BUDGET, HANDSHAKE_PROVEN, HANDSHAKE_QUEUE, HANDSHAKE_TURN, UNDER_LOAD_AT,
};
use crate::engine::pool::Packet;
use crate::proto::cookie::MacVerdict;
use crate::proto::interface::Drop;
use crate::proto::messages::{INITIATION_LEN, RESPONSE_LEN, TYPE_INITIATION, TYPE_RESPONSE};

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
        let verdict = self.iface.mac_verdict(pkt.data(), from, self.now);
        if verdict == Some(MacVerdict::BadMac1) {
            self.refuse(from, Drop::BadMac, pkt);
            return;
        }
        if verdict == Some(MacVerdict::Mac1Only) && self.iface.under_load(self.now) {
            // Under load this gets a cookie reply and no X25519: answered
            // at once, so the queue holds only what costs X25519 and a new
            // peer gets its cookie however full the queue is.
            self.take_in(from, pkt, verdict);
            return;
        }
        let proven = verdict == Some(MacVerdict::Mac1AndMac2);
        let full = if proven {
            self.proven.len() >= HANDSHAKE_PROVEN
        } else {
            self.handshakes.len() >= HANDSHAKE_QUEUE
        };
        if full {
            self.counters.handshake_queue_full += 1;
            self.pool.put(pkt.into_inner());
            return;
        }
        let entry = (from, self.compact(pkt), verdict);
        if proven {
            self.proven.push_back(entry);
        } else {
            self.handshakes.push_back(entry);
        }
        if self.handshakes.len() + self.proven.len() >= UNDER_LOAD_AT {
            self.signal_load();
        }
    }

    /// Takes in queued handshake messages, oldest first, until
    /// [`HANDSHAKE_BUDGET`] of them have cost X25519 work or
    /// [`HANDSHAKE_TURN`] were taken; signals load if some are left.
    pub(super) fn take_handshakes(&mut self) {
        let (mut costly, mut taken) = (0, 0);
        while costly < HANDSHAKE_BUDGET && taken < HANDSHAKE_TURN {
            let Some((from, pkt, verdict)) = self
                .proven
                .pop_front()
                .or_else(|| self.handshakes.pop_front())
            else {
                return;
            };
            taken += 1;
            self.counters.handshakes_taken += 1;
            if self.take_in(from, pkt, verdict) {
                costly += 1;
                self.counters.handshake_dh += 1;
            }
        }
        if !self.handshakes.is_empty() || !self.proven.is_empty() {
            self.signal_load();
        }
    }

    /// Handshake messages waiting.
    pub fn handshakes_waiting(&self) -> usize {
        self.handshakes.len() + self.proven.len()
    }

    /// Puts the interface under load for the next second (counted when it
    /// was not under load already).
    fn signal_load(&mut self) {
        if !self.iface.under_load(self.now) {
            self.counters.under_load_signals += 1;
            if !self.loaded {
                self.event(super::Event::UnderLoad(true));
            }
        }
        self.loaded = true;
        self.iface.signal_load(self.now);
    }
}
