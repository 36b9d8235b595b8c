//! The WireGuard protocol core, sans-IO.
//!
//! One module per concept, in the spirit of the kernel driver: wire formats
//! in [`messages`], primitives in [`crypto`], the Noise handshake in
//! [`handshake`], cookies in [`cookie`], transport sessions in [`session`],
//! timer rules in [`timers`], the per-peer state machine in [`peer`].
pub mod allowedips;
pub mod cookie;
pub mod crypto;
pub mod handshake;
pub mod index;
pub mod interface;
pub mod keys;
pub mod messages;
pub mod peer;
pub mod ratelimiter;
pub mod replay;
pub mod session;
pub mod tai64n;
pub mod timers;
