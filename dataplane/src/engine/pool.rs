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

//!
//! Allocation has a ceiling: buffers of each size alive in the process are
//! counted (a buffer counts from its allocation to its free), and every
//! engine reserves its share of the ceiling for as long as it runs
//! ([`BufferBudget`]). At the ceiling a pool hands out nothing; the caller
//! drops the packet and counts it, and a receive ring takes back the buffer
//! it just filled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::limits::{LARGE_BUFFERS_PER_WORKER, SMALL_BUFFERS_PER_WORKER};
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

/// The two buffer sizes, as indexes into [`LIVE`] and [`CEILING`].
const LARGE: usize = 0;
const SMALL: usize = 1;

/// Buffers of each size alive in the process.
static LIVE: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// How many may be: the sum of the running engines' budgets.
static CEILING: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

fn class_of(size: usize) -> usize {
    if size == SMALL_BUF_SIZE {
        SMALL
    } else {
        LARGE
    }
}

/// One packet buffer ([`BUF_SIZE`] or [`SMALL_BUF_SIZE`] bytes), only made
/// by a [`Pool`]; counted alive until it is freed.
pub struct Buf(Box<[u8]>);

impl Buf {
    fn alloc(size: usize) -> Self {
        Self(vec![0u8; size].into_boxed_slice())
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        LIVE[class_of(self.0.len())].fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for Buf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl AsRef<[u8]> for Buf {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Buf {
    #[inline]
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// A packet in a pool buffer.
pub type Packet = PacketBuf<Buf>;

/// An engine's share of the process's buffer ceiling, given back when the
/// last clone of its depot is dropped.
#[derive(Debug)]
struct BufferBudget([usize; 2]);

impl BufferBudget {
    fn reserve(large: usize, small: usize) -> Arc<Self> {
        CEILING[LARGE].fetch_add(large, Ordering::Relaxed);
        CEILING[SMALL].fetch_add(small, Ordering::Relaxed);
        Arc::new(Self([large, small]))
    }
}

impl Drop for BufferBudget {
    fn drop(&mut self) {
        CEILING[LARGE].fetch_sub(self.0[LARGE], Ordering::Relaxed);
        CEILING[SMALL].fetch_sub(self.0[SMALL], Ordering::Relaxed);
    }
}

/// Buffers of each size (large, small) alive in the process now, and the
/// ceiling on them.
pub fn buffers_alive() -> ([usize; 2], [usize; 2]) {
    let get = |a: &[AtomicUsize; 2]| [a[0].load(Ordering::Relaxed), a[1].load(Ordering::Relaxed)];
    (get(&LIVE), get(&CEILING))
}

/// Free buffers shared by the workers of one engine, one channel per size
/// (a bounded lock-free queue; beyond its capacity buffers are freed), and
/// the engine's share of the buffer ceiling.
#[derive(Debug, Clone)]
pub struct Depot {
    large: (Sender<Buf>, Receiver<Buf>),
    small: (Sender<Buf>, Receiver<Buf>),
    _budget: Arc<BufferBudget>,
}

impl Depot {
    /// A depot holding at most `large` large and `small` small buffers, for
    /// an engine of `workers` workers: reserves their buffers (see
    /// [`LARGE_BUFFERS_PER_WORKER`]) and the depot's own.
    pub fn new(large: usize, small: usize, workers: usize) -> Self {
        Self {
            large: crossbeam_channel::bounded(large),
            small: crossbeam_channel::bounded(small),
            _budget: BufferBudget::reserve(
                workers * LARGE_BUFFERS_PER_WORKER + large,
                workers * SMALL_BUFFERS_PER_WORKER + small,
            ),
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
    /// A pool of its own (no depot; one worker's share of the ceiling) that
    /// keeps at most `cap` free buffers of each size, with `prefill` large
    /// ones ready.
    pub fn new(prefill: usize, cap: usize) -> Self {
        let mut pool = Self::shared(cap, Depot::new(0, 0, 1));
        for _ in 0..prefill.min(cap) {
            if let Some(b) = pool.take(BUF_SIZE) {
                pool.large.push(b);
            }
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

    /// A large buffer ([`BUF_SIZE`]); `None` at the ceiling.
    #[inline]
    pub fn get(&mut self) -> Option<Buf> {
        self.take(BUF_SIZE)
    }

    /// A buffer with room for `len` bytes at `HEADROOM` plus tailroom: a
    /// small one when `len + 64` fits [`SMALL_BUF_SIZE`], else a large one;
    /// `None` at the ceiling.
    #[inline]
    pub fn get_for(&mut self, len: usize) -> Option<Buf> {
        self.take(if len + ROOM > SMALL_BUF_SIZE {
            BUF_SIZE
        } else {
            SMALL_BUF_SIZE
        })
    }

    /// A buffer of `size` (one of the two): from this pool's free list,
    /// else from the depot, else newly allocated if the ceiling allows.
    #[inline]
    fn take(&mut self, size: usize) -> Option<Buf> {
        let class = class_of(size);
        let (list, depot) = if class == SMALL {
            (&mut self.small, &self.depot.small.1)
        } else {
            (&mut self.large, &self.depot.large.1)
        };
        if let Some(b) = list.pop().or_else(|| depot.try_recv().ok()) {
            return Some(b);
        }
        if LIVE[class].fetch_add(1, Ordering::Relaxed) >= CEILING[class].load(Ordering::Relaxed) {
            LIVE[class].fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.allocated += 1;
        Some(Buf::alloc(size))
    }

    /// Returns a buffer to the free lists (beyond them, it is freed).
    #[inline]
    pub fn put(&mut self, buf: Buf) {
        let (list, depot) = if class_of(buf.len()) == SMALL {
            (&mut self.small, &self.depot.small.0)
        } else {
            (&mut self.large, &self.depot.large.0)
        };
        if list.len() < self.cap {
            list.push(buf);
        } else {
            // Full depot: the buffer is freed.
            let _ = depot.try_send(buf);
        }
    }

    /// Free buffers in this pool's own lists (not the depot's).
    pub fn free(&self) -> usize {
        self.large.len() + self.small.len()
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
        let big = pool.get().unwrap();
        let small = pool.get_for(1420 + 16 + 31).unwrap();
        assert_eq!((big.len(), small.len()), (BUF_SIZE, SMALL_BUF_SIZE));
        assert_eq!(pool.get_for(SMALL_BUF_SIZE).unwrap().len(), BUF_SIZE);
        assert_eq!(pool.allocated(), 3);
        pool.put(big);
        pool.put(small);
        assert_eq!(pool.get().unwrap().len(), BUF_SIZE);
        assert_eq!(pool.get_for(100).unwrap().len(), SMALL_BUF_SIZE);
        assert_eq!(pool.allocated(), 3);
    }

    #[test]
    fn buffers_move_between_workers_through_the_depot() {
        let depot = Depot::new(8, 8, 2);
        let mut a = Pool::shared(1, depot.clone());
        let mut b = Pool::shared(1, depot);
        // A takes buffers that end on B (a handed-over packet).
        let taken: Vec<Buf> = (0..4).map(|_| a.get().unwrap()).collect();
        assert_eq!(a.allocated(), 4);
        for buf in taken {
            b.put(buf);
        }
        // B keeps one and passes three on; A gets them back without
        // allocating.
        for _ in 0..3 {
            assert_eq!(a.get().unwrap().len(), BUF_SIZE);
        }
        assert_eq!(a.allocated(), 4);
        let _ = a.get().unwrap();
        assert_eq!(a.allocated(), 5, "depot empty: allocates");
    }
}
