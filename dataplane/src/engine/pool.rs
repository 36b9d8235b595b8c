//! Per-worker packet buffers.
//!
//! Every packet lives in one fixed-size buffer from its TUN read or UDP
//! receive to its UDP send or TUN write, with room before it for the
//! transport header and after it for padding and tag, so sealing and
//! opening happen in place. Buffers are recycled through a free list; in
//! steady state nothing is allocated. A buffer handed to another worker is
//! returned to that worker's pool, so the free list is capped: beyond the
//! cap a returned buffer is freed, and an empty pool allocates.

use crate::proto::session::PacketBuf;

/// Size of every packet buffer: the largest IP packet (64 KiB, what a TUN
/// with a large MTU can hand us) plus header room. Offload (GSO/GRO) reuses
/// the same size for super-packets.
pub const BUF_SIZE: usize = 65536 + 64;

/// One packet buffer.
pub type Buf = Box<[u8]>;

/// A packet in a pool buffer.
pub type Packet = PacketBuf<Buf>;

/// A worker's free list of buffers.
#[derive(Debug)]
pub struct Pool {
    free: Vec<Buf>,
    cap: usize,
    allocated: u64,
}

impl Pool {
    /// A pool that keeps at most `cap` free buffers, with `prefill` ready.
    pub fn new(prefill: usize, cap: usize) -> Self {
        let mut pool = Self {
            free: Vec::with_capacity(cap),
            cap,
            allocated: 0,
        };
        for _ in 0..prefill.min(cap) {
            let b = pool.alloc();
            pool.free.push(b);
        }
        pool
    }

    fn alloc(&mut self) -> Buf {
        self.allocated += 1;
        vec![0u8; BUF_SIZE].into_boxed_slice()
    }

    /// A buffer (from the free list when there is one).
    #[inline]
    pub fn get(&mut self) -> Buf {
        match self.free.pop() {
            Some(b) => b,
            None => self.alloc(),
        }
    }

    /// Returns a buffer.
    #[inline]
    pub fn put(&mut self, buf: Buf) {
        if self.free.len() < self.cap && buf.len() == BUF_SIZE {
            self.free.push(buf);
        }
    }

    /// How many buffers this pool has ever allocated (a steady-state
    /// counter that stops growing when the hot path allocates nothing).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}
