//! corewire's packet path.
//!
//! [`proto`] is the sans-IO WireGuard protocol core: bytes and `now` go in,
//! actions come out. It owns no socket, thread or clock, so every rule in it
//! runs in unit tests and fuzzers in simulated time.

pub mod engine;
pub mod proto;
