//! corewire's control plane as a library: the command line, the daemon,
//! the authoritative configuration and the UAPI. The `corewire` binary
//! (`main.rs`) is a thin shell over it; the fuzz targets (`fuzz/`) reach
//! the UAPI parser and transaction through it.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod keys_cmd;
pub mod peer_log;
pub mod stats;
pub mod stats_cmd;
pub mod uapi;
