//! The way out: TUN reads cut into packets, routed to their peer (or its
//! owner), batched per peer, sealed in place, grouped into GSO sends;
//! packets staged while their peer's handshake runs.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Handoff, Shard};
use crate::engine::limits::{MAX_BATCH, MAX_GSO_BYTES, MAX_SEGMENTS, MAX_STAGED, STAGED_TOTAL};
use crate::engine::offload::{self, TunRead, VNET_HDR_LEN};
use crate::engine::owner::owner_of_key;
use crate::engine::pool::{Buf, Packet};
use crate::engine::routes;
use crate::proto::messages::{
    ControlMsg, HEADROOM, TAILROOM, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE,
};
use crate::proto::peer::PeerId;
use crate::proto::session::PacketBuf;

/// Where TUN reads land in a buffer: the virtio-net header first, so the
/// IP packet starts at `HEADROOM`, ready to be sealed in place.
pub const TUN_READ_AT: usize = HEADROOM - VNET_HDR_LEN;

impl Shard {
    /// A TUN read of `n` bytes at [`TUN_READ_AT`] in `buf`: one packet,
    /// sealed where it lies, or a super-packet cut into MTU-sized packets,
    /// each copied into its own buffer.
    pub fn tun_read(&mut self, mut buf: Buf, n: usize, now: Instant) {
        self.now = now;
        let end = (TUN_READ_AT + n).min(buf.len());
        self.counters.tun_reads += 1;
        self.counters.tun_read_bytes += (end - TUN_READ_AT).saturating_sub(VNET_HDR_LEN) as u64;
        match offload::parse_read(&mut buf[TUN_READ_AT..end], self.mtu) {
            Ok(TunRead::Packet(p)) => {
                let len = p.len();
                if let Some(pkt) = PacketBuf::new(buf, HEADROOM, len) {
                    self.on_tun_packet(pkt, false);
                }
            }
            Ok(TunRead::Segments(segments)) => {
                for seg in segments {
                    let Some(mut out) = self.pool.get_for(seg.len()) else {
                        self.counters.buffers_refused += 1;
                        continue;
                    };
                    let end = out.len() - TAILROOM;
                    match seg.write(&mut out[HEADROOM..end]) {
                        Ok(len) => {
                            if let Some(pkt) = PacketBuf::new(out, HEADROOM, len) {
                                self.on_tun_packet(pkt, false);
                            }
                        }
                        Err(_) => {
                            self.counters.tun_malformed += 1;
                            self.pool.put(out);
                        }
                    }
                }
                self.pool.put(buf);
            }
            Err(e) => {
                self.counters.tun_malformed += 1;
                if self.counters.tun_malformed.is_power_of_two() {
                    tracing::debug!(error = %e, count = self.counters.tun_malformed, "dropped a TUN read");
                }
                self.pool.put(buf);
            }
        }
    }

    /// A packet read from this worker's TUN queue (`handed` false) or
    /// handed over by another worker (`handed` true: routed here only, never
    /// passed on again, so workers that briefly disagree while a change is
    /// being applied cannot bounce a packet between them).
    pub(super) fn on_tun_packet(&mut self, pkt: Packet, handed: bool) {
        if offload::is_own_datagram(pkt.data(), self.port) {
            self.counters.routing_loop += 1;
            if self.counters.routing_loop.is_power_of_two() {
                tracing::debug!(
                    count = self.counters.routing_loop,
                    "dropped our own datagram from the TUN: a peer's endpoint routes into the tunnel"
                );
            }
            self.pool.put(pkt.into_inner());
            return;
        }
        let Some(dst) = offload::destination(pkt.data()) else {
            self.counters.no_route += 1;
            self.pool.put(pkt.into_inner());
            return;
        };
        // With several workers, the shared table of every peer's prefixes
        // names the owner: another worker's peer goes to that worker.
        if !handed {
            if let Some(key) = self
                .routes
                .as_ref()
                .and_then(|r| routes::read(r).lookup(dst))
            {
                let owner = owner_of_key(&key, self.workers);
                if owner != self.id {
                    self.push_handoff(owner, Handoff::Tun(pkt));
                    return;
                }
            }
        }
        let Some(peer) = self.iface.route(dst) else {
            self.counters.no_route += 1;
            self.pool.put(pkt.into_inner());
            return;
        };
        if self.batch_peer != Some(peer) || self.batch.len() >= MAX_BATCH {
            self.flush_batch();
            self.batch_peer = Some(peer);
        }
        self.batch.push(pkt);
    }

    /// Seals the pending batch for its peer and queues the sends; what
    /// cannot be sealed (no session yet) is staged for the handshake.
    pub(super) fn flush_batch(&mut self) {
        let Some(peer) = self.batch_peer.take() else {
            return;
        };
        if self.batch.is_empty() {
            return;
        }
        let out = self
            .iface
            .encrypt_batch(peer, &mut self.batch, self.mtu, self.now);
        let endpoint = self.iface.peer(peer).and_then(|p| p.endpoint());
        if let Some(h) = out.handshake {
            self.send_control(endpoint, &h);
        }
        let mut batch = std::mem::take(&mut self.batch);
        for pkt in batch.drain(out.sealed..) {
            self.stage(peer, pkt);
        }
        self.send_sealed(endpoint, &mut batch);
        self.batch = batch;
    }

    /// Sends sealed packets for one endpoint, drained from `pkts`. Runs of
    /// equal-size packets (a smaller one may end a run) leave as one UDP
    /// GSO send each; everything else one datagram per send.
    fn send_sealed(&mut self, endpoint: Option<SocketAddr>, pkts: &mut Vec<Packet>) {
        let dst = match endpoint {
            Some(d) if self.reachable(&d) => d,
            _ => {
                self.counters.no_route += pkts.len() as u64;
                for p in pkts.drain(..) {
                    self.pool.put(p.into_inner());
                }
                return;
            }
        };
        if !self.gso {
            for p in pkts.drain(..) {
                let len = p.len();
                self.push_transmit(dst, len, std::iter::once(p));
            }
            return;
        }
        // Cut `pkts` into runs, each sent as one GSO send.
        let mut start = 0;
        while start < pkts.len() {
            let segment = pkts[start].len();
            let mut end = start + 1;
            let mut bytes = segment;
            while end < pkts.len()
                && end - start < MAX_SEGMENTS
                && pkts[end - 1].len() == segment
                && pkts[end].len() <= segment
                && bytes + pkts[end].len() <= MAX_GSO_BYTES
            {
                bytes += pkts[end].len();
                end += 1;
            }
            let count = end - start;
            start = end;
            self.out.transmits.push(super::Transmit {
                dst,
                segment,
                count,
            });
        }
        self.out.packets.append(pkts);
    }

    /// Queues one control message (handshake, keepalive, cookie reply) to
    /// `endpoint`, copied into a buffer of its own.
    pub(super) fn send_control(&mut self, endpoint: Option<SocketAddr>, msg: &ControlMsg) {
        let dst = match endpoint {
            Some(d) if self.reachable(&d) => d,
            _ => {
                self.counters.no_route += 1;
                return;
            }
        };
        let bytes = msg.as_bytes();
        let Some(mut buf) = self.pool.get_for(bytes.len()) else {
            self.counters.buffers_refused += 1;
            return;
        };
        match bytes.first().map(|&t| u32::from(t)) {
            Some(TYPE_INITIATION) => self.counters.initiations_sent += 1,
            Some(TYPE_RESPONSE) => self.counters.responses_sent += 1,
            Some(TYPE_COOKIE_REPLY) => self.counters.cookies_sent += 1,
            _ => {}
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        if let Some(pkt) = PacketBuf::new(buf, 0, bytes.len()) {
            self.push_transmit(dst, bytes.len(), std::iter::once(pkt));
        }
    }

    /// Holds `pkt` (in a small buffer where it fits) until `peer`'s
    /// handshake completes; the peer's oldest packet goes when
    /// [`MAX_STAGED`] wait, and a new one is dropped when [`STAGED_TOTAL`]
    /// wait for all peers.
    fn stage(&mut self, peer: PeerId, pkt: Packet) {
        let full = self
            .staged
            .get(&peer)
            .is_some_and(|q| q.len() >= MAX_STAGED);
        if !full && self.staged_total >= STAGED_TOTAL {
            self.counters.staged_dropped += 1;
            self.pool.put(pkt.into_inner());
            return;
        }
        let pkt = self.compact(pkt);
        let q = self.staged.entry(peer).or_default();
        if full {
            if let Some(old) = q.pop_front() {
                self.counters.staged_dropped += 1;
                self.pool.put(old.into_inner());
            }
        } else {
            self.staged_total += 1;
        }
        q.push_back(pkt);
    }

    /// Sends what waited for `peer`'s handshake; false if nothing waited.
    pub(super) fn flush_staged(&mut self, peer: PeerId) -> bool {
        let Some(mut q) = self.staged.remove(&peer) else {
            return false;
        };
        self.staged_total -= q.len();
        if q.is_empty() {
            return false;
        }
        self.flush_batch();
        while !q.is_empty() {
            self.batch_peer = Some(peer);
            let n = q.len().min(MAX_BATCH);
            self.batch.extend(q.drain(..n));
            self.flush_batch();
            if self.staged.get(&peer).is_some_and(|s| !s.is_empty()) {
                // Still no session: the rest goes back to the queue.
                self.staged_total += q.len();
                let back = self.staged.entry(peer).or_default();
                back.extend(q.drain(..));
            }
        }
        true
    }

    /// Drops what waited for `peer` (handshake given up, peer removed).
    pub(super) fn drop_staged(&mut self, peer: PeerId, count: bool) {
        if let Some(q) = self.staged.remove(&peer) {
            self.staged_total -= q.len();
            if count {
                self.counters.staged_dropped += q.len() as u64;
            }
            for p in q {
                self.pool.put(p.into_inner());
            }
        }
    }
}
