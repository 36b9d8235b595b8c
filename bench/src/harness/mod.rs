//! The netns throughput and latency harness behind `netbench`: corewire and
//! its peers (wireguard-go, boringtun, gotatun) measured side by side in one
//! run, against the bare veth link as the baseline.
//!
//! ```text
//!  namespace cwt-nb-a-<pid>-<n>-<time>          namespace cwt-nb-b-<pid>-<n>-<time>
//! +-------------------------------+            +-------------------------------+
//! | iperf3 -c, rtt client (thread)|            | iperf3 -s -1, echo server     |
//! |                               |            |   (thread, UDP 0.0.0.0:7)     |
//! |  wg IF (impl X) 10.78.0.1/24  |            |  wg IF (impl X) 10.78.0.2/24  |
//! |  MTU 1420, UDP :51820         |            |  MTU 1420, UDP :51820         |
//! |         |  WireGuard UDP      |            |         ^                     |
//! |         v                     |            |         |                     |
//! |  veth va...    10.77.0.1/24 ==|============|== veth vb...    10.77.0.2/24  |
//! +-------------------------------+            +-------------------------------+
//! ```
//!
//! The two namespaces and the veth pair live for the whole run; the `veth`
//! baseline sends straight over the pair (10.77.0.0/24). For a tunnel
//! implementation, each measurement starts a fresh tunnel, both ends running
//! the same implementation in the foreground as our child, configured with
//! `wg set` (one transaction per end), MTU 1420; the traffic goes to the
//! tunnel addresses (10.78.0.0/24). Only one tunnel exists at a time, so
//! idle daemons never compete with the one being measured. The iperf3 client
//! and the RTT client sit in namespace `a`, so side `a` encrypts (tx) and
//! side `b` decrypts (rx).
//!
//! Every address lives inside the two namespaces; no traffic leaves them.
//!
//! One module per job (the namespaces, processes, daemon launch recipes
//! and iperf3 runs themselves come from `corewire-testkit`, shared with
//! the namespace tests):
//! - [`cli`]: what the binaries share on their command line;
//! - [`preflight`]: root and tools, with install hints;
//! - [`topology`]: the two namespaces and the veth (the drawing above);
//! - [`impls`]: the implementations, and a tunnel with both ends running one;
//! - [`rtt`]: the UDP ping-pong (echo server and client, into `hdrhistogram`);
//! - [`cpu`]: CPU seconds per process, and the noise check;
//! - [`cases`]: what each case measures, and its metrics;
//! - [`runner`]: the interleaved measurement loop;
//! - [`stats`]: medians, ranges, ratios;
//! - [`machine`]: the machine and tool versions for the report;
//! - [`report`]: JSON, Markdown and SVG output.
//!
//! Errors: this harness serves only the `netbench` and `concentrator`
//! binaries of this unpublished crate, so it uses `anyhow` with context
//! throughout (the binaries' edge).
//!
//! Cleanup: namespaces, links, processes and temporary files are testkit
//! guards whose `Drop` removes them (processes are stopped by PID: SIGTERM,
//! then SIGKILL after a bounded wait), so an error or Ctrl-C (handled as a
//! flag by `corewire_testkit::signals`; children are then in their own
//! process group and do not see it) unwinds cleanly. A run killed with
//! SIGKILL leaves namespaces behind; the next run deletes those whose
//! creating process is gone.

pub mod cases;
pub mod cli;
pub mod cpu;
pub mod impls;
pub mod machine;
pub mod preflight;
pub mod report;
pub mod rtt;
pub mod runner;
pub mod stats;
pub mod topology;
