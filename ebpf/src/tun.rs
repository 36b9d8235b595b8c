//! TUN steering: the `steer_tun` socket filter, attached to the TUN device
//! with `TUNSETSTEERINGEBPF` (aya has no helper for it: one ioctl with the
//! program's descriptor), and its AllowedIPs tries. The control plane owns
//! the tries: it inserts a peer's prefixes with the worker that owns the
//! peer and removes them when the peer or prefix goes.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::LpmTrie;
use aya::programs::SocketFilter;
use aya::{Ebpf, EbpfLoader};

use crate::common::{tun_stat, RouteKey};
use crate::counters::{self, CounterReader, FromCounters};
use crate::Error;

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer_tun.o"));
const PROGRAM: &str = "steer_tun";

/// `TUNSETSTEERINGEBPF`: `_IOR('T', 224, int)`.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// What `steer_tun` did, summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunSteerStats {
    /// Packets sent to the queue of the worker owning their destination.
    pub hits: u64,
    /// Packets whose destination no prefix holds: flow hash.
    pub misses: u64,
}

impl FromCounters for TunSteerStats {
    const MAP: &'static str = "tun_stats";
    const COUNT: usize = tun_stat::COUNT as usize;
    fn from_counters(c: &[u64]) -> Self {
        Self {
            hits: c[tun_stat::HIT as usize],
            misses: c[tun_stat::MISS as usize],
        }
    }
}

/// The loaded program and its tries.
#[derive(Debug)]
pub struct TunSteering {
    ebpf: Ebpf,
}

impl TunSteering {
    /// Loads the program with empty tries of at most `max_routes`
    /// prefixes per family (allocated per entry, so a cap, not memory
    /// taken up front).
    pub fn load(max_routes: u32) -> Result<Self, Error> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("routes4", max_routes)
            .map_max_entries("routes6", max_routes)
            .load(OBJECT)
            .map_err(|e| Error::Load(PROGRAM, e))?;
        crate::program_mut::<SocketFilter>(&mut ebpf, PROGRAM)?
            .load()
            .map_err(|e| Error::Program(PROGRAM, e))?;
        Ok(Self { ebpf })
    }

    /// Makes the program choose the queue of every packet the kernel
    /// sends into the TUN device that `queue` (any of its queues) belongs
    /// to. The device keeps its own reference to the program.
    pub fn attach(&self, queue: BorrowedFd<'_>) -> Result<(), Error> {
        let prog: &SocketFilter = crate::program(&self.ebpf, PROGRAM)?;
        let fd: libc::c_int = prog
            .fd()
            .map_err(|e| Error::Program(PROGRAM, e))?
            .as_fd()
            .as_raw_fd();
        // SAFETY: the ioctl reads one int (the program's descriptor) from a
        // live local; the kernel takes its own reference to the program.
        let r = unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETSTEERINGEBPF, &fd) };
        if r < 0 {
            return Err(Error::Io(
                "TUNSETSTEERINGEBPF",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Steers `addr/len` to `worker`'s queue (replacing any owner it had).
    pub fn insert(&mut self, addr: IpAddr, len: u8, worker: u32) -> Result<(), Error> {
        match RouteKey::new(addr, len) {
            RouteKey::V4(k) => trie::<[u8; 4]>(&mut self.ebpf, "routes4")?.insert(&k, worker, 0),
            RouteKey::V6(k) => trie::<[u8; 16]>(&mut self.ebpf, "routes6")?.insert(&k, worker, 0),
        }
        .map_err(|e| Error::Map("routes", e))
    }

    /// Stops steering `addr/len` (absent already is fine).
    pub fn remove(&mut self, addr: IpAddr, len: u8) -> Result<(), Error> {
        let r = match RouteKey::new(addr, len) {
            RouteKey::V4(k) => trie::<[u8; 4]>(&mut self.ebpf, "routes4")?.remove(&k),
            RouteKey::V6(k) => trie::<[u8; 16]>(&mut self.ebpf, "routes6")?.remove(&k),
        };
        match r {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => r.map_err(|e| Error::Map("routes", e)),
        }
    }

    /// The worker `addr` is steered to, as the program would find it.
    pub fn lookup(&self, addr: IpAddr) -> Option<u32> {
        let map = |n| self.ebpf.map(n);
        match RouteKey::new(addr, 128) {
            RouteKey::V4(k) => LpmTrie::<_, [u8; 4], u32>::try_from(map("routes4")?)
                .ok()?
                .get(&k, 0)
                .ok(),
            RouteKey::V6(k) => LpmTrie::<_, [u8; 16], u32>::try_from(map("routes6")?)
                .ok()?
                .get(&k, 0)
                .ok(),
        }
    }

    /// What the program counted so far.
    pub fn stats(&self) -> Result<TunSteerStats, Error> {
        counters::read(&self.ebpf)
    }

    /// A reader of the program's counters for another thread.
    pub fn stats_reader(&self) -> Result<CounterReader<TunSteerStats>, Error> {
        CounterReader::open(&self.ebpf)
    }
}

fn trie<'a, K: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'a mut aya::maps::MapData, K, u32>, Error> {
    let map = ebpf.map_mut(name).ok_or(Error::Missing(name))?;
    LpmTrie::try_from(map).map_err(|e| Error::Map(name, e))
}
