//! The worker's event log: the shard's events as log lines, rate-limited
//! per kind so that a flood (of bad handshakes, of roaming peers) costs a
//! counter, not a disk. Each kind has a token bucket ([`LOG_BURST`] lines,
//! refilled at [`LOG_PER_SEC`] a second); a line that finds it empty is
//! counted, and the count is said: on the next line of that kind that gets
//! through (`suppressed=N`), or by the timer once the bucket has refilled.
//! Public keys are logged (they name peers); private and preshared keys
//! never reach this module.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::Level;

use crate::engine::counters::HandshakeFailure;
use crate::engine::limits::{LOG_BURST, LOG_PER_SEC, MAX_EVENTS};
use crate::engine::shard::{Event, Shard};
use crate::proto::interface::Drop;
use crate::proto::peer::PeerId;

/// What is logged, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Kind {
    HandshakeCompleted,
    HandshakeFailed,
    CookieSent,
    EndpointMoved,
    UnderLoad,
    Dropped,
}

const KINDS: usize = 6;

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::HandshakeCompleted => "handshake completed",
            Kind::HandshakeFailed => "handshake failed",
            Kind::CookieSent => "cookie reply sent",
            Kind::EndpointMoved => "endpoint moved",
            Kind::UnderLoad => "under load",
            Kind::Dropped => "datagram dropped",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

/// One worker's event log.
#[derive(Debug)]
pub struct EventLog {
    worker: u32,
    buckets: [Bucket; KINDS],
    /// The events being logged (keeps its capacity: no allocation).
    scratch: Vec<Event>,
}

/// The cause label of a handshake failure, if `reason` refused a
/// handshake message.
fn handshake_cause(reason: &Drop) -> Option<&'static str> {
    HandshakeFailure::of(reason).map(HandshakeFailure::label)
}

impl EventLog {
    /// A log for worker `worker`, every bucket full.
    pub fn new(worker: u32, now: Instant) -> Self {
        Self {
            worker,
            buckets: [Bucket {
                tokens: LOG_BURST,
                refilled: now,
                suppressed: 0,
            }; KINDS],
            scratch: Vec::with_capacity(MAX_EVENTS),
        }
    }

    /// Refills `kind`'s bucket; returns whether a line may go out and how
    /// many were suppressed before it (reset when it may).
    fn admit(&mut self, kind: Kind, now: Instant) -> Option<u64> {
        let b = &mut self.buckets[kind as usize];
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * LOG_PER_SEC).min(LOG_BURST);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }

    /// Logs the shard's events since the last call (draining them).
    pub fn events(&mut self, shard: &mut Shard, now: Instant) {
        // The events are drained whatever the level, so they never pile up.
        let debug = tracing::enabled!(Level::DEBUG);
        let trace = tracing::enabled!(Level::TRACE);
        let mut events = std::mem::take(&mut self.scratch);
        events.extend(shard.events());
        if tracing::enabled!(Level::WARN) {
            for e in events.drain(..) {
                self.one(shard, e, now, debug, trace);
            }
        }
        events.clear();
        self.scratch = events;
    }

    fn one(&mut self, shard: &Shard, e: Event, now: Instant, debug: bool, trace: bool) {
        let worker = self.worker;
        let key = |peer: PeerId| {
            shard
                .interface()
                .peer(peer)
                .map(|p| p.public_key().to_base64())
                .unwrap_or_default()
        };
        match e {
            Event::HandshakeComplete { peer } if debug => {
                if let Some(s) = self.admit(Kind::HandshakeCompleted, now) {
                    let endpoint = endpoint_of(shard, peer);
                    tracing::debug!(worker, peer = %key(peer), endpoint = %endpoint, role = "initiator", suppressed = s, "handshake completed");
                }
            }
            Event::ResponseSent { peer, to } if debug => {
                if let Some(s) = self.admit(Kind::HandshakeCompleted, now) {
                    tracing::debug!(worker, peer = %key(peer), endpoint = %to, role = "responder", suppressed = s, "handshake completed");
                }
            }
            Event::CookieSent { to } if debug => {
                if let Some(s) = self.admit(Kind::CookieSent, now) {
                    tracing::debug!(worker, to = %to, suppressed = s, "cookie reply sent (under load)");
                }
            }
            Event::EndpointMoved { peer, to } if debug => {
                if let Some(s) = self.admit(Kind::EndpointMoved, now) {
                    tracing::debug!(worker, peer = %key(peer), endpoint = %to, suppressed = s, "endpoint moved");
                }
            }
            Event::UnderLoad(entered) => {
                if let Some(s) = self.admit(Kind::UnderLoad, now) {
                    if entered {
                        tracing::warn!(
                            worker,
                            suppressed = s,
                            "under load: handshakes need a cookie (mac2) before any X25519"
                        );
                    } else {
                        tracing::info!(worker, suppressed = s, "no longer under load");
                    }
                }
            }
            Event::Dropped { from, reason } => match handshake_cause(&reason) {
                Some(cause) if debug => {
                    if let Some(s) = self.admit(Kind::HandshakeFailed, now) {
                        tracing::debug!(worker, cause, from = %from, error = %reason, suppressed = s, "handshake failed");
                    }
                }
                None if trace => {
                    if let Some(s) = self.admit(Kind::Dropped, now) {
                        tracing::trace!(worker, from = %from, reason = %reason, suppressed = s, "dropped a datagram");
                    }
                }
                _ => {}
            },
            other if trace => tracing::trace!(worker, event = ?other, "handshake"),
            _ => {}
        }
    }

    /// Says how many lines each kind suppressed, once its bucket has
    /// refilled (the timer calls this), so a flood that stops is still
    /// reported.
    pub fn flush(&mut self, now: Instant) {
        for (i, kind) in [
            Kind::HandshakeCompleted,
            Kind::HandshakeFailed,
            Kind::CookieSent,
            Kind::EndpointMoved,
            Kind::UnderLoad,
            Kind::Dropped,
        ]
        .into_iter()
        .enumerate()
        {
            let b = &mut self.buckets[i];
            let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
            if b.suppressed > 0 && b.tokens + elapsed * LOG_PER_SEC >= LOG_BURST {
                tracing::info!(
                    worker = self.worker,
                    kind = kind.name(),
                    suppressed = b.suppressed,
                    "log lines suppressed by the rate limit"
                );
                b.suppressed = 0;
            }
        }
    }
}

fn endpoint_of(shard: &Shard, peer: PeerId) -> String {
    shard
        .interface()
        .peer(peer)
        .and_then(|p| p.endpoint())
        .map_or_else(|| "none".to_owned(), |a: SocketAddr| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::peer::PeerError;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let t0 = Instant::now();
        let mut log = EventLog::new(0, t0);
        let admitted = (0..1000)
            .filter(|_| log.admit(Kind::HandshakeFailed, t0).is_some())
            .count();
        assert_eq!(admitted, LOG_BURST as usize);
        // Another kind has its own budget.
        assert!(log.admit(Kind::CookieSent, t0).is_some());
        // A second later a few more get through, the first says how many
        // were held back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            log.admit(Kind::HandshakeFailed, t1),
            Some(1000 - LOG_BURST as u64)
        );
    }

    #[test]
    fn causes_of_handshake_failures() {
        assert_eq!(handshake_cause(&Drop::BadMac), Some("bad_mac1"));
        assert_eq!(handshake_cause(&Drop::UnknownPeer), Some("unknown_key"));
        assert_eq!(
            handshake_cause(&Drop::Peer(PeerError::ReplayedInitiation)),
            Some("stale_timestamp")
        );
        assert_eq!(handshake_cause(&Drop::UnknownIndex), None);
    }
}
