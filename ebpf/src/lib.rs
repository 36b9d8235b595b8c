//! corewire's eBPF programs and their loaders.
//!
//! The programs are C in `src/bpf/`, compiled by `build.rs` with clang and
//! embedded here; each loads on its own, so one the kernel refuses costs
//! only its own optimisation:
//!
//! | program | kind | does | module |
//! |---|---|---|---|
//! | `steer_udp` | `SK_REUSEPORT` | picks the owner worker's socket for each datagram | [`udp`] |
//! | `steer_tun` | `SOCKET_FILTER` via `TUNSETSTEERINGEBPF` | picks the owner worker's TUN queue for each packet | [`tun`] |
//! | `xdp_guard` | `XDP` | drops malformed and unknown-index datagrams on the uplink | [`xdp`] |
//!
//! [`common`] holds the map layouts and counter indexes both sides share.
//! Every program counts what it did in a per-CPU array, read back as a
//! plain struct, which is how tests prove a program ran; a
//! [`CounterReader`] reads them from any thread on a descriptor of its own.

pub mod common;
mod counters;
pub mod tun;
pub mod udp;
pub mod xdp;

pub use counters::{CounterReader, FromCounters};

/// The program `name` of `ebpf` as its kind `P` (`Xdp`, `SocketFilter`, ...).
fn program_mut<'e, P>(ebpf: &'e mut aya::Ebpf, name: &'static str) -> Result<&'e mut P, Error>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing(name))?
        .try_into()
        .map_err(|e| Error::Program(name, e))
}

/// The program `name` of `ebpf` as its kind `P`, to read.
fn program<'e, P>(ebpf: &'e aya::Ebpf, name: &'static str) -> Result<&'e P, Error>
where
    for<'a> &'a P: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program(name)
        .ok_or(Error::Missing(name))?
        .try_into()
        .map_err(|e| Error::Program(name, e))
}

/// Why a program could not be loaded, attached or updated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the object (no CAP_BPF, verifier, map creation).
    #[error("loading {0}: {1}")]
    Load(&'static str, #[source] aya::EbpfError),
    /// The kernel refused the program (verifier, attach).
    #[error("{0}: {1}")]
    Program(&'static str, #[source] aya::programs::ProgramError),
    /// A map operation failed.
    #[error("{0}: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
    /// The object lacks a program or map this crate expects (a build bug).
    #[error("the object has no {0}")]
    Missing(&'static str),
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
}
