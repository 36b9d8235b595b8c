//! What the in-memory kernel does with one device's actions: datagrams go
//! on the wire (a GSO run as one GRO burst), TUN writes are delivered to
//! the host as IP packets (super-packets segmented), handoffs go to the
//! other worker's queue.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::{Datagram, IoCounts};
use crate::engine::limits::MAILBOX;
use crate::engine::offload::{self, TunRead};
use crate::engine::pool::{Buf, Packet};
use crate::engine::shard::{Handoff, Handoffs, TunTx, UdpTx};

/// The kernel's side of a TUN write of `bytes` (virtio-net header first):
/// the IP packets the host sees, a super-packet segmented (with
/// checksums). A malformed write is refused (EINVAL) and delivers nothing.
/// True if it was a super-packet.
pub(super) fn deliver(bytes: &mut [u8], to: &mut impl Extend<Vec<u8>>) -> bool {
    match offload::parse_read(bytes, offload::MAX_PACKET_LEN) {
        Ok(TunRead::Packet(p)) => to.extend([p.to_vec()]),
        Ok(TunRead::Segments(segments)) => {
            for seg in segments {
                let mut out = vec![0u8; seg.len()];
                if seg.write(&mut out).is_ok() {
                    to.extend([out]);
                }
            }
            return true;
        }
        Err(_) => {}
    }
    false
}

/// A shard's actions as the in-memory kernel takes them.
pub(super) struct MemIo<'a> {
    pub(super) from: SocketAddr,
    pub(super) wire: &'a mut VecDeque<Datagram>,
    pub(super) delivered: &'a mut VecDeque<Vec<u8>>,
    pub(super) inboxes: &'a mut [VecDeque<Handoff>],
    /// Buffers the "kernel" is done with, for the pool.
    pub(super) spent: &'a mut Vec<Buf>,
    pub(super) counts: &'a mut IoCounts,
    pub(super) scratch: &'a mut Vec<u8>,
}

impl UdpTx for MemIo<'_> {
    fn send(&mut self, dst: SocketAddr, segment: usize, pkts: &mut Vec<Packet>) -> bool {
        let mut payload = Vec::with_capacity(pkts.iter().map(|p| p.len()).sum());
        for p in pkts.iter() {
            payload.extend_from_slice(p.data());
        }
        self.counts.udp_sends += 1;
        self.counts.datagrams += pkts.len() as u64;
        let several = pkts.len() > 1;
        if several {
            self.counts.udp_gso_sends += 1;
        }
        self.spent.extend(pkts.drain(..).map(Packet::into_inner));
        self.wire.push_back(Datagram {
            from: self.from,
            to: dst,
            payload,
            segment: several.then_some(segment),
        });
        true
    }
}

impl TunTx for MemIo<'_> {
    fn write(&mut self, parts: &mut Vec<(Buf, usize, usize)>) -> bool {
        let bytes = &mut *self.scratch;
        bytes.clear();
        for (b, s, l) in parts.iter() {
            bytes.extend_from_slice(&b[*s..*s + *l]);
        }
        self.spent.extend(parts.drain(..).map(|(b, _, _)| b));
        self.counts.tun_writes += 1;
        if deliver(bytes, self.delivered) {
            self.counts.tun_super_writes += 1;
        }
        true
    }
}

impl Handoffs for MemIo<'_> {
    fn hand(&mut self, to: u32, packet: Handoff) -> Result<(), Handoff> {
        match self.inboxes.get_mut(to as usize) {
            // A mailbox holds at most MAILBOX packets, as the engine's.
            Some(q) if q.len() < MAILBOX => {
                q.push_back(packet);
                Ok(())
            }
            _ => Err(packet),
        }
    }
}
