//! Per-worker packet buffers.
//!
//! Every packet lives in one buffer from its TUN read or UDP receive to its
//! UDP send or TUN write, with room before it for the transport header and
//! after it for padding and tag, so sealing and opening happen in place.
//!
//! Two sizes: [`BUF_SIZE`] buffers take what the kernel hands over (a TUN
//! read or a UDP GRO burst can be 64 KiB), [`SMALL_BUF_SIZE`] buffers hold
//! one MTU-sized packet (the segments of a super-packet, the datagrams of a
//! GRO burst after the first, handshake messages). Small buffers keep the
//! memory a packet touches on few pages.
//!
//! Buffers are recycled, and in steady state nothing is allocated: each
//! worker keeps a free list per size, and the workers of an engine share a
//! [`Depot`] per size. A buffer often ends on another worker than the one
//! that took it (a packet handed to its peer's owner is sent and recycled
//! there), so one worker's free list would fill up while another's runs
//! dry and allocates (a zeroed 64 KiB allocation costs more than sealing
//! the packet: it was a third of the CPU time before the depot). A free
//! list that is full passes buffers to the depot; an empty one takes from
//! it before allocating.

use crossbeam_channel::{Receiver, Sender};

use crate::proto::messages::{HEADROOM, TAILROOM};
use crate::proto::session::PacketBuf;

/// Room every buffer has beyond its packet: the transport header before
/// it, padding and tag after it, with slack.
const ROOM: usize = 64;
const _: () = assert!(ROOM >= HEADROOM + TAILROOM);

/// Size of a large packet buffer: the largest IP packet (64 KiB, a TUN
/// super-packet or a UDP GRO burst) plus header room.
pub const BUF_SIZE: usize = 65536 + ROOM;

/// Size of a small packet buffer: one packet of up to
/// [`SMALL_BUF_SIZE`]` - ROOM` bytes (an MTU of 1420 needs 1420 plus the
/// 16 bytes of headroom and at most 31 of padding and tag).
pub const SMALL_BUF_SIZE: usize = 2048;

/// One packet buffer.
pub type Buf = Box<[u8]>;

/// A packet in a pool buffer.
pub type Packet = PacketBuf<Buf>;

/// Free buffers shared by the workers of one engine, one channel per size
/// (a bounded lock-free queue; beyond its capacity buffers are freed).
#[derive(Debug, Clone)]
pub struct Depot {
    large: (Sender<Buf>, Receiver<Buf>),
    small: (Sender<Buf>, Receiver<Buf>),
}

impl Depot {
    /// A depot holding at most `large` large and `small` small buffers.
    pub fn new(large: usize, small: usize) -> Self {
        Self {
            large: crossbeam_channel::bounded(large),
            small: crossbeam_channel::bounded(small),
        }
    }
}

/// A worker's free lists.
#[derive(Debug)]
pub struct Pool {
    large: Vec<Buf>,
    small: Vec<Buf>,
    cap: usize,
    depot: Depot,
    allocated: u64,
}

impl Pool {
    /// A pool of its own (no depot) that keeps at most `cap` free buffers
    /// of each size, with `prefill` large ones ready.
    pub fn new(prefill: usize, cap: usize) -> Self {
        let mut pool = Self::shared(cap, Depot::new(0, 0));
        for _ in 0..prefill.min(cap) {
            let b = pool.take(BUF_SIZE);
            pool.large.push(b);
        }
        pool
    }

    /// A worker's pool: keeps at most `cap` free buffers of each size
    /// itself and shares the rest through `depot`.
    pub fn shared(cap: usize, depot: Depot) -> Self {
        Self {
            large: Vec::with_capacity(cap),
            small: Vec::with_capacity(cap),
            cap,
            depot,
            allocated: 0,
        }
    }

    /// A large buffer ([`BUF_SIZE`]).
    #[inline]
    pub fn get(&mut self) -> Buf {
        self.take(BUF_SIZE)
    }

    /// A buffer with room for `len` bytes at `HEADROOM` plus tailroom: a
    /// small one when `len + 64` fits [`SMALL_BUF_SIZE`], else a large one.
    #[inline]
    pub fn get_for(&mut self, len: usize) -> Buf {
        self.take(if len + ROOM > SMALL_BUF_SIZE {
            BUF_SIZE
        } else {
            SMALL_BUF_SIZE
        })
    }

    /// A buffer of `size` (one of the two): from this pool's free list,
    /// else from the depot, else newly allocated.
    #[inline]
    fn take(&mut self, size: usize) -> Buf {
        let (list, depot) = if size == SMALL_BUF_SIZE {
            (&mut self.small, &self.depot.small.1)
        } else {
            (&mut self.large, &self.depot.large.1)
        };
        if let Some(b) = list.pop().or_else(|| depot.try_recv().ok()) {
            return b;
        }
        self.allocated += 1;
        vec![0u8; size].into_boxed_slice()
    }

    /// Returns a buffer (of either size; anything else is freed).
    #[inline]
    pub fn put(&mut self, buf: Buf) {
        let (list, depot) = match buf.len() {
            BUF_SIZE => (&mut self.large, &self.depot.large.0),
            SMALL_BUF_SIZE => (&mut self.small, &self.depot.small.0),
            _ => return,
        };
        if list.len() < self.cap {
            list.push(buf);
        } else {
            // Full depot: the buffer is freed.
            let _ = depot.try_send(buf);
        }
    }

    /// How many buffers this pool has ever allocated (a steady-state
    /// counter that stops growing when the hot path allocates nothing).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_kept_apart_and_recycled() {
        let mut pool = Pool::new(0, 2);
        let big = pool.get();
        let small = pool.get_for(1420 + 16 + 31);
        assert_eq!((big.len(), small.len()), (BUF_SIZE, SMALL_BUF_SIZE));
        assert_eq!(pool.get_for(SMALL_BUF_SIZE).len(), BUF_SIZE);
        assert_eq!(pool.allocated(), 3);
        pool.put(big);
        pool.put(small);
        pool.put(vec![0u8; 100].into_boxed_slice()); // foreign: freed
        assert_eq!(pool.get().len(), BUF_SIZE);
        assert_eq!(pool.get_for(100).len(), SMALL_BUF_SIZE);
        assert_eq!(pool.allocated(), 3);
    }

    #[test]
    fn buffers_move_between_workers_through_the_depot() {
        let depot = Depot::new(8, 8);
        let mut a = Pool::shared(1, depot.clone());
        let mut b = Pool::shared(1, depot);
        // A takes buffers that end on B (a handed-over packet).
        let taken: Vec<Buf> = (0..4).map(|_| a.get()).collect();
        assert_eq!(a.allocated(), 4);
        for buf in taken {
            b.put(buf);
        }
        // B keeps one and passes three on; A gets them back without
        // allocating.
        for _ in 0..3 {
            assert_eq!(a.get().len(), BUF_SIZE);
        }
        assert_eq!(a.allocated(), 4);
        let _ = a.get();
        assert_eq!(a.allocated(), 5, "depot empty: allocates");
    }
}
