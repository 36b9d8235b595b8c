//! The per-core engine: worker threads that move packets between the TUN
//! device and UDP sockets through io_uring, each owning a shard of the
//! peers. [`config`] is the contract with the control plane.

pub mod config;
