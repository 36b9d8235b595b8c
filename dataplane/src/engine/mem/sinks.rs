//! Kernel sides for one shard alone, without a network: [`Sink`] for
//! benchmarks and allocation checks, [`Recorder`] for tests that look at
//! each datagram and delivered packet.

use std::net::SocketAddr;

use super::kernel::deliver;
use crate::engine::pool::{Buf, Packet};
use crate::engine::shard::{Handoff, Handoffs, Shard, TunTx, UdpTx};

/// A kernel side that takes every action of one shard and gives the
/// buffers straight back to its pool, counting what it took (and, when
/// asked, keeping a copy of each send): for benchmarks and allocation
/// checks of a shard alone. Handoffs are refused (one worker).
#[derive(Debug, Default)]
pub struct Sink {
    /// UDP sends taken (one per datagram or GSO run).
    pub sends: usize,
    /// Datagrams in them.
    pub datagrams: usize,
    /// TUN writes taken.
    pub writes: usize,
    /// Parts (iovecs) of those writes.
    pub parts: usize,
    /// With `Some`, each send's bytes and GSO segment size (this allocates).
    pub capture: Option<Vec<(Vec<u8>, Option<usize>)>>,
    spent: Vec<Buf>,
}

impl Sink {
    /// A sink that keeps a copy of every send.
    pub fn capturing() -> Self {
        Sink {
            capture: Some(Vec::new()),
            ..Sink::default()
        }
    }

    /// Executes `shard`'s actions and returns their buffers to its pool,
    /// as the completions of the sends and writes would.
    pub fn execute(&mut self, shard: &mut Shard) {
        shard.execute(self);
        for b in self.spent.drain(..) {
            shard.pool().put(b);
        }
    }
}

impl UdpTx for Sink {
    fn send(&mut self, _dst: SocketAddr, segment: usize, pkts: &mut Vec<Packet>) -> bool {
        self.sends += 1;
        self.datagrams += pkts.len();
        if let Some(c) = self.capture.as_mut() {
            let bytes = pkts.iter().flat_map(|p| p.data().iter().copied()).collect();
            c.push((bytes, (pkts.len() > 1).then_some(segment)));
        }
        for p in pkts.drain(..) {
            // What the kernel reads of each part: its iovec.
            std::hint::black_box((p.data().as_ptr(), p.len()));
            self.spent.push(p.into_inner());
        }
        true
    }
}

impl TunTx for Sink {
    fn write(&mut self, parts: &mut Vec<(Buf, usize, usize)>) -> bool {
        self.writes += 1;
        self.parts += parts.len();
        for (b, start, len) in parts.drain(..) {
            std::hint::black_box((b[start..].as_ptr(), len));
            self.spent.push(b);
        }
        true
    }
}

impl Handoffs for Sink {
    fn hand(&mut self, _to: u32, packet: Handoff) -> Result<(), Handoff> {
        Err(packet)
    }
}

/// A kernel side that keeps a copy of every datagram one shard sends and
/// every IP packet its TUN writes deliver (super-packets segmented), for
/// tests that look at each of them; buffers go back to the shard's pool.
/// Handoffs are refused (one worker).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Datagrams sent, with their destination, one per datagram.
    pub sends: Vec<(SocketAddr, Vec<u8>)>,
    /// IP packets delivered by the TUN writes.
    pub delivered: Vec<Vec<u8>>,
    spent: Vec<Buf>,
}

impl Recorder {
    /// Executes `shard`'s actions and returns their buffers to its pool.
    pub fn execute(&mut self, shard: &mut Shard) {
        shard.execute(self);
        for b in self.spent.drain(..) {
            shard.pool().put(b);
        }
    }
}

impl UdpTx for Recorder {
    fn send(&mut self, dst: SocketAddr, _segment: usize, pkts: &mut Vec<Packet>) -> bool {
        for p in pkts.drain(..) {
            self.sends.push((dst, p.data().to_vec()));
            self.spent.push(p.into_inner());
        }
        true
    }
}

impl TunTx for Recorder {
    fn write(&mut self, parts: &mut Vec<(Buf, usize, usize)>) -> bool {
        let mut bytes = Vec::new();
        for (b, s, l) in parts.drain(..) {
            bytes.extend_from_slice(&b[s..s + l]);
            self.spent.push(b);
        }
        deliver(&mut bytes, &mut self.delivered);
        true
    }
}

impl Handoffs for Recorder {
    fn hand(&mut self, _to: u32, packet: Handoff) -> Result<(), Handoff> {
        Err(packet)
    }
}
