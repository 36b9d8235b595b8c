//! The per-core engine: worker threads that move packets between the TUN
//! device and UDP sockets through io_uring, each owning a shard of the
//! peers. [`config`] is the contract with the control plane.

mod bufring;
pub mod config;
pub mod counters;
pub mod device;
pub mod netlink;
pub mod offload;
mod ops;
pub mod pool;
pub mod steer;
mod sys;
pub mod tun;
pub mod udp;
pub mod worker;
