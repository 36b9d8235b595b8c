//! corewire's dev-support crate (not published): what the network-namespace
//! tests (`control/tests`), the benchmark harness (`netbench`) and the
//! dataplane tests share, so that each helper exists once.
//!
//! - [`netns`]: namespaces and veth pairs as guards, the stale sweep;
//! - [`command`]: running a command within a time limit, bounded polls;
//! - [`process`]: child guards, processes by PID, stopping them;
//! - [`tempdir`]: a private temporary directory;
//! - [`names`]: unique interface and file names, address formatting;
//! - [`signals`]: Ctrl-C as a flag that every wait checks (netbench);
//! - [`uapi`]: the UAPI socket and a bounded `get=1`;
//! - [`wg`]: the `wg` tool: keys, `wg set`, `wg show dump`;
//! - [`daemon`]: the launch recipes of corewire, wireguard-go, boringtun and
//!   gotatun, and the guard of a running daemon;
//! - [`iperf3`]: iperf3 server and client runs and their JSON reports;
//! - [`alloc`]: a counting global allocator;
//! - [`packets`]: IPv4/IPv6 packet builders.
//!
//! Errors: everything that can fail returns [`Result`] with this crate's
//! [`Error`]; tests turn it into a panic, netbench records it. Cleanup:
//! every resource is a guard whose `Drop` removes it, also while a failing
//! test unwinds (no `Drop` here panics). Processes are stopped by PID only,
//! never by name. Every wait is bounded. The network helpers need root and
//! only touch namespaces they created.

pub mod alloc;
pub mod command;
pub mod daemon;
mod error;
pub mod flood;
pub mod iperf3;
pub mod names;
pub mod netns;
pub mod packets;
pub mod process;
pub mod signals;
pub mod tempdir;
pub mod uapi;
pub mod wg;

pub use command::{command, run, run_ok, wait_until, COMMAND_TIMEOUT};
pub use daemon::{find_daemon, Launch, WgDevice, WgImpl, START_TIMEOUT};
pub use error::{Error, Result};
pub use flood::{Flood, FloodKind};
pub use iperf3::{iperf3_client, Flow, Iperf3Client, Iperf3Result, Iperf3Server};
pub use names::{next_id, socket_addr, unique_ifname, unix_now};
pub use netns::{enter, netns_exists, sweep_stale, Netns, Veth, STALE_AFTER};
pub use process::{
    cmdline, fd_target, find_binary, pid_alive, rss_kib, stop_pids, Proc, STOP_GRACE,
};
pub use serde_json;
pub use tempdir::TempDir;
pub use uapi::{socket_path, uapi_get, SOCKET_DIR};
pub use wg::{wg, wg_set, wg_set_private_key, wg_show_dump, Keypair, WgDump, WgPeerDump};
