//! The kernel side of a worker as the shard's actions see it: UDP sends
//! and TUN writes become io_uring operations, handoffs go to the other
//! workers' mailboxes.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use io_uring::IoUring;

use super::{Mailbox, UdpFds};
use crate::engine::limits::MAX_SEGMENTS;
use crate::engine::ops::Ops;
use crate::engine::pool::{Buf, Packet};
use crate::engine::shard::{Handoff, Handoffs, TunTx, UdpTx};

/// The kernel side of a worker, as the shard's actions see it: the ring,
/// the operation slots, the sockets and the other workers' mailboxes.
pub(super) struct Kernel<'a> {
    pub(super) ring: &'a mut IoUring,
    pub(super) ops: &'a mut Ops,
    pub(super) tun: RawFd,
    pub(super) udp: UdpFds,
    pub(super) mailboxes: &'a [Mailbox],
    pub(super) to_wake: &'a mut [bool],
}

impl UdpTx for Kernel<'_> {
    fn send(&mut self, dst: SocketAddr, segment: usize, pkts: &mut Vec<Packet>) -> bool {
        let fd = match dst {
            SocketAddr::V4(_) => self.udp.v4,
            SocketAddr::V6(_) => match self.udp.v6 {
                Some(fd) => fd,
                None => return false,
            },
        };
        if pkts.len() == 1 {
            let Some(pkt) = pkts.pop() else {
                return true;
            };
            let (start, len) = (pkt.start(), pkt.len());
            return match self
                .ops
                .udp_send(self.ring, fd, pkt.into_inner(), start, len, dst)
            {
                Ok(()) => true,
                Err((_, buf)) => {
                    // Back to the caller, which counts and recycles it.
                    pkts.extend(buf.and_then(|b| Packet::new(b, start, len)));
                    false
                }
            };
        }
        let segment = u16::try_from(segment).unwrap_or(u16::MAX);
        pkts.len() <= MAX_SEGMENTS
            && self
                .ops
                .udp_send_gso(self.ring, fd, pkts, segment, dst)
                .is_ok()
    }
}

impl TunTx for Kernel<'_> {
    fn write(&mut self, parts: &mut Vec<(Buf, usize, usize)>) -> bool {
        if parts.len() == 1 {
            let Some((buf, start, len)) = parts.pop() else {
                return true;
            };
            return match self.ops.tun_write(self.ring, self.tun, buf, start, len) {
                Ok(()) => true,
                Err((_, buf)) => {
                    parts.extend(buf.map(|b| (b, start, len)));
                    false
                }
            };
        }
        self.ops.tun_writev(self.ring, self.tun, parts).is_ok()
    }
}

impl Handoffs for Kernel<'_> {
    fn hand(&mut self, to: u32, packet: Handoff) -> Result<(), Handoff> {
        let Some(mb) = self.mailboxes.get(to as usize) else {
            return Err(packet);
        };
        match mb.packets.try_send(packet) {
            Ok(()) => {
                self.to_wake[to as usize] = true;
                Ok(())
            }
            Err(e) => Err(e.into_inner()),
        }
    }
}
