//! The concentrator benchmark: a WireGuard hub under test (corewire with one
//! and with all workers, wireguard-go, boringtun, gotatun) serving K peers
//! that an independent load generator plays, with a LAN behind the hub.
//!
//! ```text
//!  namespace cwt-cc-fleet-…         namespace cwt-cc-hub-…                 namespace cwt-cc-lan-…
//! +--------------------------+     +------------------------------+      +------------------------+
//! | generator (threads):     |     | hub under test, UDP :51820   |      | sink / source (threads)|
//! | K boringtun `Tunn`s, one |     |  wg IF 10.102.0.1/32, MTU1420|      |  UDP 10.103.0.2:9000   |
//! | socket 0.0.0.0:51821,    |     |  route 10.100.0.0/15 dev IF  |      |  route 10.100.0.0/15   |
//! | IP_TRANSPARENT: peer i   |     |  K peers, AllowedIPs         |      |     via 10.103.0.1     |
//! | sends from 10.90.0.0+1+i |     |   10.100.0.0+1+i/32          |      |                        |
//! | (local route 10.90/15)   |     |  ip_forward=1                |      |                        |
//! |  veth 10.88.0.1/24 ======|=====|== veth 10.88.0.2/24          |      |                        |
//! |                          |     |    route 10.90/15 via .1     |      |                        |
//! |                          |     |  veth 10.103.0.1/24 =========|======|== veth 10.103.0.2/24   |
//! +--------------------------+     +------------------------------+      +------------------------+
//! ```
//!
//! Peer i owns a key pair, an endpoint address 10.90.0.0+1+i (one address
//! per peer, from a /15) and a tunnel address 10.100.0.0+1+i. The hub learns
//! the endpoints from the handshakes. Every address lives inside the three
//! namespaces; no traffic leaves them.
//!
//! The generator shares no code with corewire: handshakes and sealing are
//! boringtun's (`noise::Tunn`, from crates.io). It seals its datagrams before
//! each timed phase (increasing counters) and sends them with `sendmmsg`,
//! GSO bursts per peer; what comes back is counted, not decrypted, except a
//! sample that is decrypted and checked. Its own CPU per packet is measured
//! and a step where it, not the hub, was the limit is flagged.
//!
//! Modules:
//! - [`topology`]: the three namespaces, links, addresses and routes;
//! - [`hubs`]: the hubs under test, started and configured with K peers;
//! - [`mmsg`]: `sendmmsg`/`recvmmsg` batches with source address and GSO;
//! - [`fleet`]: the generator's K peers and the handshake storm;
//! - [`traffic`]: timed steps fleet -> LAN (decrypt) and LAN -> fleet
//!   (encrypt), the latency probes; [`sweep`]: step results and the rate
//!   sweep;
//! - [`cases`]: the cases and their metrics;
//! - [`runner`]: the interleaved rounds;
//! - [`report`]: JSON and Markdown; [`chart`]: SVG line charts over K.
//!
//! It reuses the netbench harness's pieces (`crate::harness`): preflight,
//! machine description, CPU accounting, medians, number formatting.

pub mod cases;
pub mod chart;
pub mod fleet;
pub mod hubs;
pub mod mmsg;
pub mod report;
pub mod runner;
pub mod sweep;
pub mod topology;
pub mod traffic;
