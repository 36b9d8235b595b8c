//! What a worker counts: traffic each way, packets it dropped and why,
//! packets it handed to another worker, handshakes and cookies, and how
//! its loop turns. Plain integers with one writer (the worker's shard and
//! its shell); the worker publishes them once per loop turn
//! ([`board`](super::board)), where readers find them without asking it.
//!
//! Every counter is declared once, in [`counters!`] below, with the metric
//! family it is exported as, an optional label, whether it belongs to the
//! worker or adds up to a device total, and its help text: the exporters
//! (`corewire stats`, Prometheus) walk [`Counters::INFO`], so a counter
//! added here is published and exported with no other change.

/// Whether a counter is reported per worker or added up over the workers
/// as one device figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Per worker (a `worker` label).
    Worker,
    /// One figure for the device (the sum over its workers).
    Device,
}

/// How one counter is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterInfo {
    /// The field's name (JSON key).
    pub field: &'static str,
    /// The metric family, without the `corewire_` prefix and `_total`
    /// suffix; counters of one family differ by [`label`](Self::label).
    pub family: &'static str,
    /// The label that tells this counter from the others of its family.
    pub label: Option<(&'static str, &'static str)>,
    /// Per worker or per device.
    pub scope: Scope,
    /// Divide by this for the exported value (nanoseconds to seconds).
    pub scale: u64,
    /// One line for `# HELP` (the same for every counter of a family).
    pub help: &'static str,
}

macro_rules! counters {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $scope:ident $family:literal $([$lk:literal = $lv:literal])? $(/ $scale:literal)? , $help:literal;
    )*) => {
        /// The counters of one worker (see the module documentation).
        #[derive(Debug, Default, Clone)]
        pub struct Counters {
            /// Datagrams refused by the protocol core, by reason.
            pub dropped: Drops,
            /// Completions handled per loop turn, as a histogram (bucket i
            /// counts turns with at most [`BATCH_BUCKETS`]`[i]`, the last
            /// bucket the rest).
            pub batch_sizes: [u64; BATCH_BUCKETS.len() + 1],
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl Counters {
            /// How each plain counter is exported, in [`values`](Self::values) order.
            pub const INFO: &'static [CounterInfo] = &[$(CounterInfo {
                field: stringify!($field),
                family: $family,
                label: counters!(@label $($lk, $lv)?),
                scope: Scope::$scope,
                scale: counters!(@scale $($scale)?),
                help: $help,
            }),*];

            /// Number of plain counters.
            pub const LEN: usize = Self::INFO.len();

            /// The plain counters' values, in [`INFO`](Self::INFO) order.
            pub fn values(&self) -> [u64; Self::LEN] {
                [$(self.$field),*]
            }

            /// Adds `other`'s counts to these (a device's total over its workers).
            pub fn add(&mut self, other: &Counters) {
                for (a, b) in self.dropped.0.iter_mut().zip(other.dropped.0) {
                    *a += b;
                }
                for (a, b) in self.batch_sizes.iter_mut().zip(other.batch_sizes) {
                    *a += b;
                }
                $( self.$field += other.$field; )*
            }
        }
    };
    (@label) => { None };
    (@label $k:literal, $v:literal) => { Some(($k, $v)) };
    (@scale) => { 1 };
    (@scale $s:literal) => { $s };
}

/// Upper bounds of the loop-turn batch-size histogram's buckets
/// (completions per turn); a last bucket takes the rest.
pub const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

counters! {
    /// Datagrams received on the UDP sockets (each datagram of a GRO burst).
    udp_rx_datagrams: Worker "worker_udp_received_datagrams", "Datagrams received on the worker's UDP sockets.";
    /// Bytes of those datagrams (UDP payload).
    udp_rx_bytes: Worker "worker_udp_received_bytes", "UDP payload bytes received on the worker's sockets.";
    /// Datagrams handed to the kernel to send.
    udp_tx_datagrams: Worker "worker_udp_sent_datagrams", "Datagrams the worker handed to the kernel to send.";
    /// Bytes of those datagrams (UDP payload).
    udp_tx_bytes: Worker "worker_udp_sent_bytes", "UDP payload bytes the worker handed to the kernel to send.";
    /// TUN reads (a plain packet or a TSO/USO super-packet each).
    tun_reads: Worker "worker_tun_reads", "Reads from the worker's TUN queue (one packet or one super-packet each).";
    /// Bytes read from the TUN (without the virtio-net header).
    tun_read_bytes: Worker "worker_tun_read_bytes", "Bytes read from the worker's TUN queue, virtio-net headers excluded.";
    /// TUN writes handed to the kernel (one packet or a coalesced super-packet each).
    tun_writes: Worker "worker_tun_writes", "Writes to the worker's TUN queue (one packet or one coalesced super-packet each).";
    /// Bytes of those writes (without the virtio-net header).
    tun_write_bytes: Worker "worker_tun_write_bytes", "Bytes written to the worker's TUN queue, virtio-net headers excluded.";
    /// TUN packets with no peer to send them to.
    no_route: Worker "worker_no_route", "Packets with no peer (or endpoint) to send them to.";
    /// Packets dropped because every operation slot was busy.
    backpressure: Worker "worker_backpressure_drops", "Packets dropped because every io_uring operation slot was busy.";
    /// Staged packets dropped (queue full, or handshake given up).
    staged_dropped: Worker "worker_staged_drops", "Packets waiting for a handshake that were dropped (queue full or handshake given up).";
    /// Our own datagrams that came back through the TUN (an endpoint routed
    /// into the tunnel).
    routing_loop: Worker "worker_routing_loop_drops", "Our own datagrams read back from the TUN (an endpoint routed into the tunnel).";
    /// TUN reads that could not be turned into packets (bad virtio-net
    /// header or a super-packet that cannot be segmented).
    tun_malformed: Worker "worker_tun_malformed", "TUN reads that could not be turned into packets.";
    /// TUN writes the kernel refused.
    tun_write_errors: Worker "worker_tun_write_errors", "TUN writes the kernel refused.";
    /// TUN packets handed to the worker that owns their peer.
    handed_tun: Worker "worker_handoffs" ["kind" = "tun"], "Packets handed to the worker that owns their peer or session.";
    /// Datagrams handed to the worker that owns their session or peer
    /// (steering, when on, leaves mostly initiations here).
    handed_udp: Worker "worker_handoffs" ["kind" = "udp"], "Packets handed to the worker that owns their peer or session.";
    /// Packets that could not be handed over (no such worker, or it is gone).
    handoff_dropped: Worker "worker_handoff_drops", "Packets that could not be handed to their owner (mailbox full or no such worker).";
    /// Events lost because too many waited (a flood of drops).
    events_dropped: Worker "worker_events_lost", "Shard events lost because too many waited between two executions.";
    /// Handshake messages dropped because the handshake queue was full.
    handshake_queue_full: Worker "worker_handshake_queue_drops", "Handshake messages dropped because the handshake queue was full.";
    /// Handshake messages taken in from the queue.
    handshakes_taken: Worker "worker_handshakes_taken", "Handshake messages taken in from the handshake queue.";
    /// Of those, the ones that cost X25519 work (not answered with a
    /// cookie reply or refused before it).
    handshake_dh: Worker "worker_handshake_dh", "Handshake messages that cost X25519 work.";
    /// Times the worker's interface went under load (queue past an eighth,
    /// or a turn's budget spent with messages left); staying under load
    /// longer does not count again.
    under_load_signals: Device "under_load_entered", "Times a worker went under load (cookies demanded before any X25519).";
    /// Nanoseconds spent under load (counted at each timer tick).
    under_load_ns: Device "under_load_seconds" / 1000000000, "Seconds workers spent under load, added over the workers.";
    /// Datagrams sent again one by one because the kernel refused their
    /// GSO send for its size (a path MTU below the tunnel's datagrams: the
    /// kernel fragments single datagrams, not GSO segments).
    gso_resent: Worker "worker_gso_resent", "Datagrams sent again one by one after the kernel refused their GSO send for its size.";
    /// Loop turns (one wait for completions each).
    loop_turns: Worker "worker_loop_turns", "Turns of the worker's io_uring loop.";
    /// Completions handled, over all loop turns.
    completions: Worker "worker_completions", "io_uring completions the worker handled.";
    /// Handshake initiations received (before any check).
    initiations_received: Device "handshakes_received" ["type" = "initiation"], "Handshake messages received, before any check.";
    /// Handshake responses received (before any check).
    responses_received: Device "handshakes_received" ["type" = "response"], "Handshake messages received, before any check.";
    /// Handshake initiations sent (first attempts, retries and rekeys).
    initiations_sent: Device "handshakes_sent" ["type" = "initiation"], "Handshake messages sent.";
    /// Handshake responses sent.
    responses_sent: Device "handshakes_sent" ["type" = "response"], "Handshake messages sent.";
    /// Handshakes completed as the initiator (a valid response arrived).
    completed_initiator: Device "handshakes_completed" ["role" = "initiator"], "Handshakes completed: as initiator when a valid response arrives, as responder when the response is sent.";
    /// Handshakes completed as the responder (the response was sent).
    completed_responder: Device "handshakes_completed" ["role" = "responder"], "Handshakes completed: as initiator when a valid response arrives, as responder when the response is sent.";
    /// Handshake messages whose mac1 did not verify (wrong public key for us, or garbage).
    failed_bad_mac1: Device "handshake_failures" ["cause" = "bad_mac1"], "Handshake messages refused, by cause.";
    /// Initiations from a static key that is no configured peer.
    failed_unknown_key: Device "handshake_failures" ["cause" = "unknown_key"], "Handshake messages refused, by cause.";
    /// Initiations whose timestamp was not newer than the last accepted one (replays).
    failed_stale_timestamp: Device "handshake_failures" ["cause" = "stale_timestamp"], "Handshake messages refused, by cause.";
    /// Handshake messages that did not decrypt or authenticate.
    failed_decryption: Device "handshake_failures" ["cause" = "decryption"], "Handshake messages refused, by cause.";
    /// Initiations from one peer faster than one per 20 ms.
    failed_too_fast: Device "handshake_failures" ["cause" = "too_fast"], "Handshake messages refused, by cause.";
    /// Responses for a handshake we do not have (any more).
    failed_unknown_index: Device "handshake_failures" ["cause" = "unknown_index"], "Handshake messages refused, by cause.";
    /// Handshake messages that arrived before a private key was set.
    failed_no_private_key: Device "handshake_failures" ["cause" = "no_private_key"], "Handshake messages refused, by cause.";
    /// Handshake messages refused by the per-source rate limit while under load.
    rate_limited: Device "handshakes_rate_limited", "Handshake messages refused by the per-source rate limit while under load.";
    /// Cookie replies sent (under load, to handshake messages without a valid mac2).
    cookies_sent: Device "cookie_replies_sent", "Cookie replies sent (under load, to handshake messages without a valid mac2).";
    /// Cookie replies from peers taken in.
    cookies_received: Device "cookie_replies_received", "Cookie replies from peers taken in.";
    /// Packets dropped because the process was at its packet-buffer
    /// ceiling (see `LARGE_BUFFERS_PER_WORKER`).
    buffers_refused: Worker "worker_buffers_refused", "Packets dropped because the process was at its packet-buffer ceiling.";
    /// Live receiver indexes the XDP guard's map refused (full): datagrams
    /// for them are dropped on the uplink.
    live_index_refused: Worker "worker_live_index_refused", "Live receiver indexes the XDP guard's map refused (full); datagrams for them are dropped on the uplink.";
}

/// Why a datagram was dropped: the protocol core's reasons plus the
/// worker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Not a well-formed WireGuard message.
    Malformed,
    /// mac1 did not verify.
    BadMac,
    /// Over the handshake rate limit while under load.
    RateLimited,
    /// A handshake arrived before a private key was set.
    NoIdentity,
    /// An initiation from a key that is no configured peer.
    UnknownPeer,
    /// A message for a session index that does not exist (any more).
    UnknownIndex,
    /// The peer's state machine refused it (replay, stale, bad tag...).
    RefusedByPeer,
    /// The plaintext is not an IP packet.
    NotIp,
    /// The inner source address is not in the peer's allowed IPs.
    SourceNotAllowed,
    /// The receive buffer was too small for the datagram or its address.
    Truncated,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 10] = [
        DropReason::Malformed,
        DropReason::BadMac,
        DropReason::RateLimited,
        DropReason::NoIdentity,
        DropReason::UnknownPeer,
        DropReason::UnknownIndex,
        DropReason::RefusedByPeer,
        DropReason::NotIp,
        DropReason::SourceNotAllowed,
        DropReason::Truncated,
    ];

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadMac => "bad mac1",
            DropReason::RateLimited => "rate limited",
            DropReason::NoIdentity => "no private key",
            DropReason::UnknownPeer => "unknown peer",
            DropReason::UnknownIndex => "unknown index",
            DropReason::RefusedByPeer => "refused by peer",
            DropReason::NotIp => "not ip",
            DropReason::SourceNotAllowed => "source not allowed",
            DropReason::Truncated => "truncated",
        }
    }

    /// The name as a metric label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadMac => "bad_mac1",
            DropReason::RateLimited => "rate_limited",
            DropReason::NoIdentity => "no_private_key",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::RefusedByPeer => "refused_by_peer",
            DropReason::NotIp => "not_ip",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::Truncated => "truncated",
        }
    }
}

impl From<&crate::proto::interface::Drop> for DropReason {
    fn from(d: &crate::proto::interface::Drop) -> Self {
        use crate::proto::interface::Drop as D;
        match d {
            D::Malformed(_) => DropReason::Malformed,
            D::BadMac => DropReason::BadMac,
            D::RateLimited => DropReason::RateLimited,
            D::NoIdentity => DropReason::NoIdentity,
            D::UnknownPeer => DropReason::UnknownPeer,
            D::UnknownIndex => DropReason::UnknownIndex,
            D::Peer(_) => DropReason::RefusedByPeer,
            D::NotIp => DropReason::NotIp,
            D::SourceNotAllowed => DropReason::SourceNotAllowed,
        }
    }
}

/// Dropped datagrams by reason: one array slot per [`DropReason`], so
/// counting a drop (a flood of garbage is many) costs an increment.
#[derive(Default, Clone)]
pub struct Drops([u64; DropReason::ALL.len()]);

impl Drops {
    /// Counts one drop.
    #[inline]
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    /// Drops counted for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// Every reason's count, in [`DropReason::ALL`] order.
    pub fn all(&self) -> &[u64; DropReason::ALL.len()] {
        &self.0
    }
}

impl Counters {
    /// Counts a datagram the protocol core refused: by drop reason, and
    /// when it was a handshake message, by handshake failure cause.
    pub fn count_refused(&mut self, reason: &crate::proto::interface::Drop) {
        self.dropped.count(DropReason::from(reason));
        let Some(cause) = HandshakeFailure::of(reason) else {
            return;
        };
        *match cause {
            HandshakeFailure::BadMac1 => &mut self.failed_bad_mac1,
            HandshakeFailure::UnknownKey => &mut self.failed_unknown_key,
            HandshakeFailure::StaleTimestamp => &mut self.failed_stale_timestamp,
            HandshakeFailure::Decryption => &mut self.failed_decryption,
            HandshakeFailure::TooFast => &mut self.failed_too_fast,
            HandshakeFailure::UnknownIndex => &mut self.failed_unknown_index,
            HandshakeFailure::NoPrivateKey => &mut self.failed_no_private_key,
            HandshakeFailure::RateLimited => &mut self.rate_limited,
        } += 1;
    }
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// mac1 did not verify: sent for another public key, or garbage.
    BadMac1,
    /// An initiation from a static key that is no configured peer.
    UnknownKey,
    /// An initiation whose timestamp is not newer than the last accepted.
    StaleTimestamp,
    /// A sealed field did not decrypt or authenticate.
    Decryption,
    /// Initiations from one peer faster than one per 20 ms.
    TooFast,
    /// A response for a handshake we do not have.
    UnknownIndex,
    /// No private key is set.
    NoPrivateKey,
    /// Over the per-source rate while under load.
    RateLimited,
}

impl HandshakeFailure {
    /// The failure `reason` stands for, if it refused a handshake message.
    pub fn of(reason: &crate::proto::interface::Drop) -> Option<Self> {
        use crate::proto::handshake::HandshakeError as H;
        use crate::proto::interface::Drop as D;
        use crate::proto::peer::PeerError as P;
        Some(match reason {
            D::BadMac => Self::BadMac1,
            D::UnknownPeer => Self::UnknownKey,
            D::RateLimited => Self::RateLimited,
            D::NoIdentity | D::Peer(P::NoIdentity) => Self::NoPrivateKey,
            D::Peer(P::ReplayedInitiation) => Self::StaleTimestamp,
            D::Peer(P::InitiationFlood) => Self::TooFast,
            D::Peer(P::Handshake(H::UnknownIndex)) => Self::UnknownIndex,
            D::Peer(P::Handshake(_)) => Self::Decryption,
            _ => return None,
        })
    }

    /// The cause as logged and as the `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadMac1 => "bad_mac1",
            Self::UnknownKey => "unknown_key",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Decryption => "decryption",
            Self::TooFast => "too_fast",
            Self::UnknownIndex => "unknown_index",
            Self::NoPrivateKey => "no_private_key",
            Self::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Debug for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                DropReason::ALL
                    .iter()
                    .filter(|r| self.get(**r) > 0)
                    .map(|r| (r.name(), self.get(*r))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_have_their_own_counters() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in discriminant order");
        }
        let mut d = Drops::default();
        d.count(DropReason::BadMac);
        d.count(DropReason::BadMac);
        d.count(DropReason::Truncated);
        assert_eq!(d.get(DropReason::BadMac), 2);
        assert_eq!(d.get(DropReason::Malformed), 0);
        assert_eq!(format!("{d:?}"), r#"{"bad mac1": 2, "truncated": 1}"#);
    }
}
