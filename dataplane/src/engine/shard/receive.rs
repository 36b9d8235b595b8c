//! The way in: UDP receives (GRO bursts split), handed to the owner of
//! their session or opened in place, and decrypted packets coalesced into
//! TUN writes.

use std::net::SocketAddr;
use std::time::Instant;

use super::handshake::is_handshake;
use super::{Event, Handoff, Shard};
use crate::engine::counters::DropReason;
use crate::engine::limits::MAX_RX_BATCH;
use crate::engine::offload::{self, VNET_HDR_LEN};
use crate::engine::owner::{owner_of_key, receiver_index};
use crate::engine::pool::{Buf, Packet};
use crate::proto::cookie::MacVerdict;
use crate::proto::interface::{Drop, Received};
use crate::proto::messages::{transport_receiver, ControlMsg, HEADROOM, TYPE_INITIATION};
use crate::proto::peer::PeerId;
use crate::proto::session::PacketBuf;

/// The virtio-net header of a packet written alone.
const VNET_NONE: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Copies `header` over the [`VNET_HDR_LEN`] bytes before `pkt` and as many
/// of its own first bytes as `header` has beyond those (a super-packet's
/// rewritten headers); returns the write's buffer, start and length. Every
/// decrypted packet has its 16-byte transport header free before it.
fn with_header(pkt: Packet, header: &[u8]) -> (Buf, usize, usize) {
    let (start, len) = (pkt.start() - VNET_HDR_LEN, pkt.len() + VNET_HDR_LEN);
    let mut buf = pkt.into_inner();
    buf[start..start + header.len()].copy_from_slice(header);
    (buf, start, len)
}

impl Shard {
    /// A UDP receive from `from` of `len` bytes at `start` in `buf`: one
    /// datagram, handled in place where it lies, or with a GRO `segment`
    /// size a burst of datagrams of that size (the last may be shorter), of
    /// which the first is handled in place and the others are copied into
    /// buffers of their own.
    pub fn udp_received(
        &mut self,
        from: SocketAddr,
        buf: Buf,
        start: usize,
        len: usize,
        segment: Option<usize>,
        now: Instant,
    ) {
        self.now = now;
        self.counters.udp_rx_bytes += len as u64;
        if start + len > buf.len() {
            self.counters.udp_rx_datagrams += 1;
            self.counters.dropped.count(DropReason::Truncated);
            self.pool.put(buf);
            return;
        }
        let seg = match segment {
            Some(seg) if seg > 0 && seg < len => seg,
            _ => {
                self.count_arrival(&buf[start..start + len]);
                match PacketBuf::new(buf, start, len) {
                    Some(pkt) if !pkt.is_empty() => self.on_datagram(from, pkt),
                    Some(pkt) => self.pool.put(pkt.into_inner()),
                    None => {}
                }
                return;
            }
        };
        // A GRO burst: the datagrams after the first are copied out first
        // (the first is taken where it lies, so its buffer must stay whole).
        let mut burst = std::mem::take(&mut self.gro);
        for at in (start + seg..start + len).step_by(seg) {
            let part = &buf[at..(at + seg).min(start + len)];
            let Some(mut out) = self.pool.get_for(part.len()) else {
                self.counters.buffers_refused += 1;
                continue;
            };
            out[HEADROOM..HEADROOM + part.len()].copy_from_slice(part);
            if let Some(pkt) = PacketBuf::new(out, HEADROOM, part.len()) {
                burst.push(pkt);
            }
        }
        let first = PacketBuf::new(buf, start, seg);
        self.receive_burst(from, first, &mut burst);
        self.gro = burst;
    }

    /// The datagrams of one GRO burst (`first`, then `rest`, drained), in
    /// order: runs of transport messages
    /// for one of this shard's sessions are opened together
    /// ([`Interface::receive_transport_run`]: one index lookup, one session
    /// search, timers updated once); anything else one datagram at a time.
    ///
    /// [`Interface::receive_transport_run`]: crate::proto::interface::Interface::receive_transport_run
    fn receive_burst(&mut self, from: SocketAddr, first: Option<Packet>, rest: &mut Vec<Packet>) {
        let mut run = std::mem::take(&mut self.run);
        let mut run_index = None;
        for pkt in first.into_iter().chain(rest.drain(..)) {
            self.count_arrival(pkt.data());
            let index = transport_receiver(pkt.data()).filter(|&i| i & self.mask == self.id);
            if index != run_index {
                if let Some(i) = run_index {
                    self.open_run(from, i, &mut run);
                }
            }
            run_index = index;
            match index {
                Some(_) => run.push(pkt),
                None => self.on_datagram(from, pkt),
            }
        }
        if let Some(i) = run_index {
            self.open_run(from, i, &mut run);
        }
        self.run = run;
    }

    /// Counts a datagram as it arrives from the network (not again when it
    /// is handed to its owner): one datagram, and a handshake message by type.
    fn count_arrival(&mut self, data: &[u8]) {
        self.counters.udp_rx_datagrams += 1;
        if is_handshake(data) {
            if data[0] == TYPE_INITIATION as u8 {
                self.counters.initiations_received += 1;
            } else {
                self.counters.responses_received += 1;
            }
        }
    }

    /// Opens a run of transport messages for receiver `index` (drained).
    fn open_run(&mut self, from: SocketAddr, index: u32, run: &mut Vec<Packet>) {
        if run.is_empty() {
            return;
        }
        let (mut opened, mut results) = std::mem::take(&mut self.run_results);
        results.clear();
        let (peer, confirmed, handshake) =
            self.iface
                .receive_transport_run(index, from, run, self.now, &mut opened, &mut results);
        for (pkt, r) in run.drain(..).zip(results.drain(..)) {
            match (r, peer) {
                (Ok(0), Some(peer)) => {
                    self.pool.put(pkt.into_inner());
                    self.event(Event::KeepaliveReceived { peer });
                }
                // Without a peer every result is an error.
                (Ok(0), None) => self.pool.put(pkt.into_inner()),
                (Ok(_), _) => {
                    self.rx.push(Some(pkt));
                    if self.rx.len() >= MAX_RX_BATCH {
                        self.flush_rx();
                    }
                }
                (Err(reason), _) => self.refuse(from, reason, pkt),
            }
        }
        self.run_results = (opened, results);
        if let Some(peer) = peer {
            self.after_receive(peer, confirmed, handshake);
        }
    }

    /// One datagram: handed to the owner of its session, queued if it is a
    /// handshake message (see `handshake.rs`), or taken in.
    pub(super) fn on_datagram(&mut self, from: SocketAddr, pkt: Packet) {
        if self.workers > 1 {
            if let Some(index) = receiver_index(pkt.data()) {
                let owner = index & self.mask;
                if owner != self.id {
                    self.push_handoff(owner, Handoff::Udp(from, pkt));
                    return;
                }
            }
        }
        if is_handshake(pkt.data()) {
            self.queue_handshake(from, pkt);
        } else {
            self.take_in(from, pkt, None);
        }
    }

    /// Hands one datagram to the protocol core and acts on the result.
    /// Returns whether that cost X25519 work (a handshake message that got
    /// past mac1, load and rate checks).
    pub(super) fn take_in(
        &mut self,
        from: SocketAddr,
        mut pkt: Packet,
        verdict: Option<MacVerdict>,
    ) -> bool {
        let res = match verdict {
            Some(v) => self.iface.receive_handshake(from, &mut pkt, self.now, v),
            None => self.iface.receive(from, &mut pkt, self.now),
        };
        let costly = match &res {
            Received::Reply { peer, .. } => peer.is_some(),
            Received::HandshakeComplete { .. } | Received::Foreign { .. } => true,
            Received::Dropped(d) => !matches!(
                d,
                Drop::Malformed(_)
                    | Drop::BadMac
                    | Drop::RateLimited
                    | Drop::NoIdentity
                    | Drop::UnknownIndex
            ),
            _ => false,
        };
        match res {
            Received::Data {
                peer,
                confirmed,
                handshake,
            } => {
                self.rx.push(Some(pkt));
                if self.rx.len() >= MAX_RX_BATCH {
                    self.flush_rx();
                }
                self.after_receive(peer, confirmed, handshake);
            }
            Received::Keepalive {
                peer,
                confirmed,
                handshake,
            } => {
                self.pool.put(pkt.into_inner());
                self.event(Event::KeepaliveReceived { peer });
                self.after_receive(peer, confirmed, handshake);
            }
            Received::Reply { peer, reply } => {
                self.pool.put(pkt.into_inner());
                self.send_control(Some(from), &reply);
                if let Some(peer) = peer {
                    self.counters.completed_responder += 1;
                    self.note_moved(peer);
                }
                self.event(match peer {
                    Some(peer) => Event::ResponseSent { peer, to: from },
                    None => Event::CookieSent { to: from },
                });
            }
            Received::HandshakeComplete { peer, keepalive } => {
                self.pool.put(pkt.into_inner());
                self.counters.completed_initiator += 1;
                self.event(Event::HandshakeComplete { peer });
                self.note_moved(peer);
                if !self.flush_staged(peer) {
                    let endpoint = self.iface.peer(peer).and_then(|p| p.endpoint());
                    self.send_control(endpoint, &keepalive);
                }
            }
            Received::Foreign { key } => {
                // Handed over only if another worker holds the peer: an
                // unknown key is dropped here, by the worker that spent the
                // work on it, never on a worker the sender picked.
                let owner = owner_of_key(&key, self.workers);
                if owner != self.id && self.directory.knows(&key) {
                    self.push_handoff(owner, Handoff::Udp(from, pkt));
                } else {
                    self.refuse(from, Drop::UnknownPeer, pkt);
                }
            }
            Received::CookieAccepted { peer } => {
                self.pool.put(pkt.into_inner());
                self.counters.cookies_received += 1;
                self.event(Event::CookieAccepted { peer });
            }
            Received::Dropped(reason) => self.refuse(from, reason, pkt),
        }
        costly
    }

    fn after_receive(&mut self, peer: PeerId, confirmed: bool, handshake: Option<ControlMsg>) {
        self.note_moved(peer);
        if let Some(h) = handshake {
            let endpoint = self.iface.peer(peer).and_then(|p| p.endpoint());
            self.send_control(endpoint, &h);
        }
        if confirmed {
            self.event(Event::SessionConfirmed { peer });
            self.flush_staged(peer);
        }
    }

    /// Reports `peer`'s endpoint if an authenticated message moved it.
    fn note_moved(&mut self, peer: PeerId) {
        let Some(p) = self.iface.peer_mut(peer) else {
            return;
        };
        if p.take_moved() {
            if let Some(to) = p.endpoint() {
                self.event(Event::EndpointMoved { peer, to });
            }
        }
    }

    /// Drops a datagram the protocol core refused: counted by reason,
    /// reported with its source.
    pub(super) fn refuse(&mut self, from: SocketAddr, reason: Drop, pkt: Packet) {
        self.counters.count_refused(&reason);
        self.pool.put(pkt.into_inner());
        self.event(Event::Dropped { from, reason });
    }

    /// Plans the TUN writes of the decrypted packets gathered so far: runs
    /// of one flow as one super-packet each (headers rewritten in the first
    /// packet's buffer, the payloads of the others written where they lie),
    /// the rest one write per packet, all with the virtio-net header in the
    /// 10 bytes before the packet (every decrypted packet has its 16-byte
    /// transport header there).
    pub(super) fn flush_rx(&mut self) {
        if self.rx.is_empty() {
            return;
        }
        let mut rx = std::mem::take(&mut self.rx);
        match self.coalescer.as_mut() {
            Some(coalescer) => {
                let writes =
                    coalescer.plan_with(rx.len(), |i| rx[i].as_ref().map_or(&[][..], |p| p.data()));
                for w in writes {
                    plan_write(&mut self.out, &w, &mut rx);
                }
            }
            None => {
                for pkt in rx.iter_mut().filter_map(Option::take) {
                    self.out.tun_parts.push(with_header(pkt, &VNET_NONE));
                    self.out.tun_writes.push(1);
                }
            }
        }
        // Every packet is in exactly one write; anything left is returned.
        for pkt in rx.drain(..).flatten() {
            self.pool.put(pkt.into_inner());
        }
        self.rx = rx;
    }
}

/// Queues one planned write: a packet alone, or the members of a
/// super-packet as one write of several parts (taken out of `rx`).
fn plan_write(out: &mut super::Out, w: &offload::TunWrite<'_>, rx: &mut [Option<Packet>]) {
    let Some((&first, rest)) = w.members().split_first() else {
        return;
    };
    let Some(head) = rx.get_mut(first as usize).and_then(Option::take) else {
        return;
    };
    let before = out.tun_parts.len();
    out.tun_parts.push(with_header(head, w.header()));
    let skip = w.skip();
    for &m in rest {
        if let Some(p) = rx.get_mut(m as usize).and_then(Option::take) {
            let (s, l) = (p.start() + skip, p.len() - skip);
            out.tun_parts.push((p.into_inner(), s, l));
        }
    }
    out.tun_writes.push(out.tun_parts.len() - before);
}
