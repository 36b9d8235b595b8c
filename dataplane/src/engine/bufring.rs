//! A provided-buffer ring: pool buffers lent to the kernel for multishot
//! receives.
//!
//! With one multishot receive per socket (and one multishot read per TUN
//! queue) the kernel picks a buffer from this ring for each datagram, in
//! arrival order, and posts one completion per datagram. That replaces
//! dozens of single-shot receives in flight on one socket, which the kernel
//! wakes together for every datagram and which cost more the more of them
//! wait. Each ring slot lends one pool buffer; the completion names it by
//! buffer id, the worker takes it back and lends a fresh one in its place,
//! so buffers keep moving freely (to other workers, to TUN writes) and the
//! ring never runs dry while the pool can supply buffers.

use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::pool::{Buf, Pool};

/// The ring's memory: `entries` kernel `io_uring_buf` slots, page aligned.
struct RingMem {
    base: *mut BufRingEntry,
    bytes: usize,
}

impl RingMem {
    fn new(entries: u16) -> std::io::Result<Self> {
        let bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            base: p.cast(),
            bytes,
        })
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`, once. The worker
        // drops its io_uring (which unregisters the ring) before this.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

/// Why a completed receive yields no buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The completion names a buffer id that is not lent (cannot happen
    /// with a kernel that keeps the protocol).
    UnknownBuffer,
    /// The process is at its buffer ceiling: the data was dropped.
    Ceiling,
}

/// One buffer group of provided buffers.
pub struct BufRing {
    mem: RingMem,
    mask: u16,
    tail: u16,
    group: u16,
    /// Where in each buffer the kernel starts writing, and how much it may.
    offset: usize,
    len: u32,
    /// The buffer lent under each buffer id.
    lent: Vec<Option<Buf>>,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("group", &self.group)
            .field("entries", &self.lent.len())
            .finish_non_exhaustive()
    }
}

impl BufRing {
    /// Registers buffer group `group` with `entries` (a power of two) slots
    /// on `ring`, each lending a pool buffer in which the kernel may write
    /// `len` bytes from `offset` on.
    pub fn new(
        ring: &IoUring,
        group: u16,
        entries: u16,
        offset: usize,
        len: u32,
        pool: &mut Pool,
    ) -> std::io::Result<Self> {
        debug_assert!(entries.is_power_of_two());
        let mem = RingMem::new(entries)?;
        // SAFETY: the mapping is page aligned, `entries` slots long, and
        // lives as long as this BufRing, which outlives the registration
        // (the worker drops its ring first).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(mem.base as u64, entries, group, 0)?;
        }
        let mut r = Self {
            mem,
            mask: entries - 1,
            tail: 0,
            group,
            offset,
            len,
            lent: (0..entries).map(|_| None).collect(),
        };
        for bid in 0..entries {
            let buf = pool.get().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    "the packet buffer ceiling leaves nothing for a receive ring",
                )
            })?;
            r.provide(bid, buf);
        }
        r.publish();
        Ok(r)
    }

    /// Lends `buf` under buffer id `bid` (visible to the kernel after
    /// [`Self::publish`]).
    fn provide(&mut self, bid: u16, mut buf: Buf) {
        let slot = usize::from(self.tail & self.mask);
        let addr = buf[self.offset..].as_mut_ptr() as u64;
        // SAFETY: `slot` is within the mapping's `entries` slots; the kernel
        // only reads slots between its head and our published tail, and
        // this one is past the published tail.
        let entry = unsafe { &mut *self.mem.base.add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.len);
        entry.set_bid(bid);
        self.lent[usize::from(bid)] = Some(buf);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Takes back the buffer the kernel filled under `bid`, and lends a
    /// fresh one from `pool` in its place. At the buffer ceiling the pool
    /// has none: the filled buffer is lent again (what it holds is
    /// dropped) and `Refused::Ceiling` says so, so the ring never runs dry.
    pub fn take(&mut self, bid: u16, pool: &mut Pool) -> Result<Buf, Refused> {
        let filled = self
            .lent
            .get_mut(usize::from(bid))
            .and_then(Option::take)
            .ok_or(Refused::UnknownBuffer)?;
        match pool.get() {
            Some(fresh) => {
                self.provide(bid, fresh);
                Ok(filled)
            }
            None => {
                self.provide(bid, filled);
                Err(Refused::Ceiling)
            }
        }
    }

    /// Makes every buffer provided so far visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail field overlays the first slot's reserved field,
        // inside the mapping; the kernel reads it with acquire semantics,
        // so a release store orders the slot writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.mem.base).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}
