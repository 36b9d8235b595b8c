//! The classic-BPF reuseport filter: steering datagrams to the worker
//! that owns them without eBPF (the fallback when `steer_udp` cannot load).
//!
//! The kernel spreads the datagrams of an `SO_REUSEPORT` group over its
//! sockets by a hash of the addresses, so without help most datagrams land
//! on a worker that does not own their session and are handed over through
//! a channel (a cache miss, a wake-up and a buffer that ends on the other
//! worker). A session index names its owner in its low bits
//! ([`worker_bits`](crate::engine::owner::worker_bits)), and every message that
//! carries one (response, cookie reply, transport data) has it at a fixed
//! offset. A socket filter attached with `SO_ATTACH_REUSEPORT_CBPF` reads
//! it and returns the owner's position in the group, which is the worker's
//! number because the group binds worker 0's socket first, then worker 1's,
//! and so on.
//!
//! Classic BPF is enough for that (two byte loads and a mask) and needs no
//! compiler, map or capability beyond owning the socket. For a reuseport
//! filter the kernel has already pulled the UDP header, so offset 0 is the
//! first byte of the WireGuard message. The filter returns:
//! - data (4) and cookie reply (3): byte 4, the lowest byte of the
//!   little-endian receiver index, masked to the worker bits;
//! - response (2): byte 8, likewise (the receiver follows the sender);
//! - anything else, initiations (1) included: `u32::MAX`, which is not a
//!   socket, so the kernel falls back to its hash. An initiation's owner is
//!   the peer whose static key is inside the encrypted payload.
//!
//! A result that is not a socket (a forged index whose bits name no worker)
//! also falls back to the hash, and a message too short to hold the byte
//! makes the filter return 0 (worker 0); the worker that gets such a
//! datagram drops or hands it over as before, so steering is only ever an
//! optimisation.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::engine::sys;

/// `SO_ATTACH_REUSEPORT_CBPF` (not in the `libc` crate for every target).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Result for "no preference": not a socket index, so the kernel hashes.
const NO_SOCKET: u32 = u32::MAX;

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The filter for a group whose session indexes carry the worker in their
/// low `bits` bits (at most 8: 256 workers). Jump offsets count from the
/// next instruction.
pub fn program(bits: u8) -> [libc::sock_filter; 11] {
    let load_byte = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    let and = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    let ret_a = (libc::BPF_RET | libc::BPF_A) as u16;
    let ret_k = (libc::BPF_RET | libc::BPF_K) as u16;
    let mask = (1u32 << bits.min(8)) - 1;
    [
        /* 0 */ stmt(load_byte, 0),
        /* 1 */ jump_eq(4, 3, 0), // data: to 5
        /* 2 */ jump_eq(3, 2, 0), // cookie reply: to 5
        /* 3 */ jump_eq(2, 4, 0), // response: to 8
        /* 4 */ stmt(ret_k, NO_SOCKET),
        /* 5 */ stmt(load_byte, 4),
        /* 6 */ stmt(and, mask),
        /* 7 */ stmt(ret_a, 0),
        /* 8 */ stmt(load_byte, 8),
        /* 9 */ stmt(and, mask),
        /* 10 */ stmt(ret_a, 0),
    ]
}

/// Attaches the steering filter to the reuseport group of `socket` (any
/// member: the program belongs to the group).
pub fn attach(socket: BorrowedFd<'_>, bits: u8) -> io::Result<()> {
    let filter = program(bits);
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points to `filter`, which outlives the call; the kernel
    // copies the program.
    sys::cvt(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}
