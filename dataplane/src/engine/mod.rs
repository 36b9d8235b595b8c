//! The per-core engine: worker threads that move packets between the TUN
//! device and UDP sockets through io_uring, each owning a shard of the
//! peers. [`config`] is the contract with the control plane.
//!
//! [`shard`] is one worker's logic, sans-IO; [`worker`] is its io_uring
//! shell and [`mem`] an in-memory one (tests, benchmarks); [`device`]
//! starts the workers and speaks to the control plane.

pub mod board;
mod bufring;
pub mod config;
pub mod counters;
pub mod device;
pub mod limits;
pub mod mem;
pub mod netlink;
pub mod offload;
mod ops;
pub mod owner;
pub mod pool;
pub mod routes;
pub mod shard;
pub mod steer;
mod sys;
pub mod tun;
pub mod udp;
pub mod worker;
