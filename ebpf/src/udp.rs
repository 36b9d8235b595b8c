//! UDP steering: the `steer_udp` `SK_REUSEPORT` program and its socket
//! map. Worker `w`'s IPv4 socket sits at index `w` of `sockets`, its IPv6
//! socket at `MAX_WORKERS + w`; the program is attached to both reuseport
//! groups. A listen port change binds new groups: [`UdpSteering::attach`]
//! again puts their sockets in the same slots.

use std::os::fd::AsFd;

use aya::maps::{Array, ReusePortSockArray};
use aya::programs::SkReuseport;
use aya::Ebpf;

use crate::common::{udp_stat, UdpConfig, MAX_WORKERS};
use crate::counters::{self, CounterReader, FromCounters};
use crate::Error;

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer_udp.o"));
const PROGRAM: &str = "steer_udp";

/// What `steer_udp` did, summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpSteerStats {
    /// Responses, cookie replies and data sent to their index's worker.
    pub by_index: u64,
    /// Initiations sent to a worker by the hash of their source.
    pub by_source: u64,
    /// Indexes that name no worker (forged, or from before a restart):
    /// left to the kernel's hash.
    pub no_worker: u64,
    /// The worker's socket missing from the map: left to the kernel's hash.
    pub no_socket: u64,
    /// Too short or of unknown type: left to the kernel's hash.
    pub unsteered: u64,
}

impl UdpSteerStats {
    /// Datagrams the program placed on a chosen worker.
    pub fn hits(&self) -> u64 {
        self.by_index + self.by_source
    }

    /// Datagrams left to the kernel's hash.
    pub fn fallbacks(&self) -> u64 {
        self.no_worker + self.no_socket + self.unsteered
    }
}

impl FromCounters for UdpSteerStats {
    const MAP: &'static str = "udp_stats";
    const COUNT: usize = udp_stat::COUNT as usize;
    fn from_counters(c: &[u64]) -> Self {
        Self {
            by_index: c[udp_stat::BY_INDEX as usize],
            by_source: c[udp_stat::BY_SOURCE as usize],
            no_worker: c[udp_stat::NO_WORKER as usize],
            no_socket: c[udp_stat::NO_SOCKET as usize],
            unsteered: c[udp_stat::UNSTEERED as usize],
        }
    }
}

/// The loaded program and its maps.
#[derive(Debug)]
pub struct UdpSteering {
    ebpf: Ebpf,
    workers: u32,
}

impl UdpSteering {
    /// Loads the program for `workers` workers whose receiver indexes name
    /// them in the bits of `mask`.
    pub fn load(workers: u32, mask: u32) -> Result<Self, Error> {
        if workers == 0 || workers > MAX_WORKERS {
            return Err(Error::Io(
                "steer_udp",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| Error::Load(PROGRAM, e))?;
        crate::program_mut::<SkReuseport>(&mut ebpf, PROGRAM)?
            .load()
            .map_err(|e| Error::Program(PROGRAM, e))?;
        let map = ebpf
            .map_mut("udp_config")
            .ok_or(Error::Missing("udp_config"))?;
        let mut config: Array<_, UdpConfig> =
            Array::try_from(map).map_err(|e| Error::Map("udp_config", e))?;
        config
            .set(0, UdpConfig { workers, mask }, 0)
            .map_err(|e| Error::Map("udp_config", e))?;
        Ok(Self { ebpf, workers })
    }

    /// Puts each worker's (bound) sockets in the map and attaches the
    /// program to their groups: `v4[w]` and `v6[w]` are worker `w`'s; `v6`
    /// may be empty (no IPv6).
    pub fn attach<F: AsFd>(&mut self, v4: &[F], v6: &[F]) -> Result<(), Error> {
        let map = self
            .ebpf
            .map_mut("sockets")
            .ok_or(Error::Missing("sockets"))?;
        let mut sockets: ReusePortSockArray<_> =
            ReusePortSockArray::try_from(map).map_err(|e| Error::Map("sockets", e))?;
        for (family, fds) in [(0, v4), (MAX_WORKERS, v6)] {
            for (w, fd) in fds.iter().enumerate().take(self.workers as usize) {
                sockets
                    .set(family + w as u32, &fd.as_fd(), 0)
                    .map_err(|e| Error::Map("sockets", e))?;
            }
        }
        let prog: &SkReuseport = crate::program(&self.ebpf, PROGRAM)?;
        for first in [v4.first(), v6.first()].into_iter().flatten() {
            prog.attach(first.as_fd())
                .map_err(|e| Error::Program(PROGRAM, e))?;
        }
        Ok(())
    }

    /// What the program counted so far.
    pub fn stats(&self) -> Result<UdpSteerStats, Error> {
        counters::read(&self.ebpf)
    }

    /// A reader of the program's counters for another thread.
    pub fn stats_reader(&self) -> Result<CounterReader<UdpSteerStats>, Error> {
        CounterReader::open(&self.ebpf)
    }
}
