//! What a worker counts: packets it dropped and why, and packets it handed
//! to another worker. Plain integers, one writer (the worker's shard),
//! reported when the worker stops.

/// Drop counters of one worker.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Datagrams refused by the protocol core, by reason.
    pub dropped: Drops,
    /// TUN packets with no peer to send them to.
    pub no_route: u64,
    /// Packets dropped because every operation slot was busy.
    pub backpressure: u64,
    /// Staged packets dropped (queue full, or handshake given up).
    pub staged_dropped: u64,
    /// Our own datagrams that came back through the TUN (an endpoint routed
    /// into the tunnel).
    pub routing_loop: u64,
    /// TUN reads that could not be turned into packets (bad virtio-net
    /// header or a super-packet that cannot be segmented).
    pub tun_malformed: u64,
    /// TUN writes the kernel refused.
    pub tun_write_errors: u64,
    /// TUN packets handed to the worker that owns their peer.
    pub handed_tun: u64,
    /// Datagrams handed to the worker that owns their session or peer
    /// (steering, when on, leaves mostly initiations here).
    pub handed_udp: u64,
    /// Packets that could not be handed over (no such worker, or it is gone).
    pub handoff_dropped: u64,
    /// Events lost because too many waited (a flood of drops).
    pub events_dropped: u64,
    /// Handshake messages dropped because the handshake queue was full.
    pub handshake_queue_full: u64,
    /// Handshake messages taken in from the queue.
    pub handshakes_taken: u64,
    /// Of those, the ones that cost X25519 work (not answered with a
    /// cookie reply or refused before it).
    pub handshake_dh: u64,
    /// Times the worker's interface went under load (queue past an eighth,
    /// or a turn's budget spent with messages left); staying under load
    /// longer does not count again.
    pub under_load_signals: u64,
    /// Datagrams sent again one by one because the kernel refused their
    /// GSO send for its size (a path MTU below the tunnel's datagrams: the
    /// kernel fragments single datagrams, not GSO segments).
    pub gso_resent: u64,
    /// Packets dropped because the process was at its packet-buffer
    /// ceiling (see `LARGE_BUFFERS_PER_WORKER`).
    pub buffers_refused: u64,
    /// Live receiver indexes the XDP guard's map refused (full): datagrams
    /// for them are dropped on the uplink.
    pub live_index_refused: u64,
}

impl Counters {
    /// Adds `other`'s counts to these (a device's total over its workers).
    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.dropped.0.iter_mut().zip(other.dropped.0) {
            *a += b;
        }
        self.no_route += other.no_route;
        self.backpressure += other.backpressure;
        self.staged_dropped += other.staged_dropped;
        self.routing_loop += other.routing_loop;
        self.tun_malformed += other.tun_malformed;
        self.tun_write_errors += other.tun_write_errors;
        self.handed_tun += other.handed_tun;
        self.handed_udp += other.handed_udp;
        self.handoff_dropped += other.handoff_dropped;
        self.events_dropped += other.events_dropped;
        self.gso_resent += other.gso_resent;
        self.handshake_queue_full += other.handshake_queue_full;
        self.handshakes_taken += other.handshakes_taken;
        self.handshake_dh += other.handshake_dh;
        self.under_load_signals += other.under_load_signals;
        self.buffers_refused += other.buffers_refused;
        self.live_index_refused += other.live_index_refused;
    }
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
