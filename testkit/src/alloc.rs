//! A counting global allocator: proves that a code path allocates nothing.
//!
//! A test or benchmark binary installs it as its own allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: corewire_testkit::alloc::CountingAllocator =
//!     corewire_testkit::alloc::CountingAllocator;
//! ```
//!
//! It forwards everything to the system allocator and counts `alloc`,
//! `alloc_zeroed` and `realloc` calls per thread, only while that thread
//! has counting switched on, so tests running side by side do not count
//! each other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting the allocations of the threads that
/// switched [`counting`] on.
#[derive(Debug)]
pub struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Switches counting on or off for the calling thread.
pub fn counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

/// The calling thread's allocations counted so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Sets the calling thread's count back to 0.
pub fn reset_allocations() {
    ALLOCATIONS.with(|n| n.set(0));
}

/// Runs `f` with counting on; its result and the allocations it made.
pub fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = allocations();
    counting(true);
    let result = f();
    counting(false);
    (result, allocations() - before)
}

/// Whether this binary's global allocator is a [`CountingAllocator`]
/// (otherwise nothing is ever counted and every check passes vacuously).
pub fn installed() -> bool {
    let (boxed, n) = count_allocations(|| std::hint::black_box(Box::new(1u64)));
    drop(boxed);
    n > 0
}

/// Runs `prepare` then `body` three times to warm up, then three more
/// times counting the allocations `body` makes (not `prepare`'s); panics if
/// there were any, or if the counting allocator is not installed.
pub fn check_no_allocation(name: &str, mut prepare: impl FnMut(), mut body: impl FnMut()) {
    assert!(
        installed(),
        "{name}: the binary's #[global_allocator] is not a CountingAllocator"
    );
    for _ in 0..3 {
        prepare();
        body();
    }
    let mut n = 0;
    for _ in 0..3 {
        prepare();
        n += count_allocations(&mut body).1;
    }
    assert_eq!(n, 0, "{name}: the measured loop body allocated {n} times");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static GLOBAL: CountingAllocator = CountingAllocator;

    #[test]
    fn counts_this_thread_only_while_on() {
        assert!(installed());
        let (v, n) = count_allocations(|| vec![0u8; 1024]);
        assert_eq!((v.len(), n), (1024, 1));
        let (_, n) = count_allocations(|| std::hint::black_box(3 + 4));
        assert_eq!(n, 0);
        let before = allocations();
        let _ = std::hint::black_box(vec![1u8; 8]);
        assert_eq!(allocations(), before, "off: not counted");
    }

    #[test]
    fn checks_a_path() {
        let buf = std::cell::RefCell::new(Vec::with_capacity(64));
        check_no_allocation(
            "push",
            || buf.borrow_mut().clear(),
            || buf.borrow_mut().push(1u8),
        );
    }

    #[test]
    #[should_panic(expected = "allocated")]
    fn catches_an_allocation() {
        check_no_allocation("boxes", || {}, || drop(std::hint::black_box(Box::new(1))));
    }
}
