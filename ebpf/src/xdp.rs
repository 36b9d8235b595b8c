//! The XDP guard: `xdp_guard` on the uplink interface, its port and its
//! map of live receiver indexes. The workers publish an index when they
//! allocate it (a handshake they start or answer) and withdraw it when it
//! is freed, each through its own [`LiveIndexes`] handle.

use std::os::fd::AsFd;

use aya::maps::{Array, HashMap, Map, MapData};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

use crate::common::{xdp_stat, GuardConfig};
use crate::counters::{self, CounterReader, FromCounters};
use crate::Error;

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_guard.o"));
const PROGRAM: &str = "xdp_guard";

/// The guard's verdicts, summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Initiations passed.
    pub pass_initiation: u64,
    /// Responses for a live index passed.
    pub pass_response: u64,
    /// Cookie replies passed.
    pub pass_cookie_reply: u64,
    /// Transport data for a live index passed.
    pub pass_data: u64,
    /// Dropped: unknown type, or reserved bytes set.
    pub drop_bad_type: u64,
    /// Dropped: wrong length for the type, or truncated.
    pub drop_bad_length: u64,
    /// Dropped: response or data for an index no session has.
    pub drop_unknown_index: u64,
    /// Not UDP to corewire's port: passed without a look.
    pub pass_other: u64,
}

impl XdpStats {
    /// Datagrams to corewire's port that were dropped.
    pub fn dropped(&self) -> u64 {
        self.drop_bad_type + self.drop_bad_length + self.drop_unknown_index
    }

    /// Datagrams to corewire's port that were passed.
    pub fn passed(&self) -> u64 {
        self.pass_initiation + self.pass_response + self.pass_cookie_reply + self.pass_data
    }
}

impl FromCounters for XdpStats {
    const MAP: &'static str = "xdp_stats";
    const COUNT: usize = xdp_stat::COUNT as usize;
    fn from_counters(c: &[u64]) -> Self {
        Self {
            pass_initiation: c[xdp_stat::PASS_INITIATION as usize],
            pass_response: c[xdp_stat::PASS_RESPONSE as usize],
            pass_cookie_reply: c[xdp_stat::PASS_COOKIE_REPLY as usize],
            pass_data: c[xdp_stat::PASS_DATA as usize],
            drop_bad_type: c[xdp_stat::DROP_BAD_TYPE as usize],
            drop_bad_length: c[xdp_stat::DROP_BAD_LENGTH as usize],
            drop_unknown_index: c[xdp_stat::DROP_UNKNOWN_INDEX as usize],
            pass_other: c[xdp_stat::PASS_OTHER as usize],
        }
    }
}

/// How the guard is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver (native XDP).
    Native,
    /// In the stack (generic XDP): the driver has no XDP support.
    Generic,
}

/// The loaded, attached guard. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpGuard {
    ebpf: Ebpf,
    mode: XdpAttachMode,
}

impl XdpGuard {
    /// Loads the guard for UDP port `port`, with room for `max_live` live
    /// receiver indexes (allocated per entry), and attaches it to `iface`,
    /// natively where the driver can, generically otherwise.
    pub fn attach(iface: &str, port: u16, max_live: u32) -> Result<Self, Error> {
        let ebpf = EbpfLoader::new()
            .map_max_entries("live", max_live)
            .load(OBJECT)
            .map_err(|e| Error::Load(PROGRAM, e))?;
        let mut guard = Self {
            ebpf,
            mode: XdpAttachMode::Native,
        };
        guard.set_port(port)?;
        crate::program_mut::<Xdp>(&mut guard.ebpf, PROGRAM)?
            .load()
            .map_err(|e| Error::Program(PROGRAM, e))?;
        let prog: &mut Xdp = crate::program_mut(&mut guard.ebpf, PROGRAM)?;
        if prog.attach(iface, XdpMode::Driver).is_err() {
            prog.attach(iface, XdpMode::Skb)
                .map_err(|e| Error::Program(PROGRAM, e))?;
            guard.mode = XdpAttachMode::Generic;
        }
        Ok(guard)
    }

    /// How it is attached.
    pub fn mode(&self) -> XdpAttachMode {
        self.mode
    }

    /// Guards `port` from now on (a listen port change).
    pub fn set_port(&mut self, port: u16) -> Result<(), Error> {
        let map = self
            .ebpf
            .map_mut("guard_config")
            .ok_or(Error::Missing("guard_config"))?;
        let mut config: Array<_, GuardConfig> =
            Array::try_from(map).map_err(|e| Error::Map("guard_config", e))?;
        config
            .set(
                0,
                GuardConfig {
                    port_be: port.to_be(),
                    pad: 0,
                },
                0,
            )
            .map_err(|e| Error::Map("guard_config", e))
    }

    /// A handle on the live-index map for one worker.
    pub fn live_indexes(&self) -> Result<LiveIndexes, Error> {
        let map = self.ebpf.map("live").ok_or(Error::Missing("live"))?;
        let Map::HashMap(data) = map else {
            return Err(Error::Missing("live (a hash map)"));
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Io("dup(live)", e))?;
        let data = MapData::from_fd(fd).map_err(|e| Error::Map("live", e))?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(|e| Error::Map("live", e))?;
        Ok(LiveIndexes { map })
    }

    /// What the guard counted so far.
    pub fn stats(&self) -> Result<XdpStats, Error> {
        counters::read(&self.ebpf)
    }

    /// A reader of the guard's counters for another thread.
    pub fn stats_reader(&self) -> Result<CounterReader<XdpStats>, Error> {
        CounterReader::open(&self.ebpf)
    }
}

/// One worker's writer of live receiver indexes.
#[derive(Debug)]
pub struct LiveIndexes {
    map: HashMap<MapData, u32, u8>,
}

impl LiveIndexes {
    /// Publishes `index`: datagrams for it pass. Fails when the map is full.
    pub fn insert(&mut self, index: u32) -> Result<(), Error> {
        self.map
            .insert(index, 1, 0)
            .map_err(|e| Error::Map("live", e))
    }

    /// Withdraws `index` (absent already is fine).
    pub fn remove(&mut self, index: u32) {
        let _ = self.map.remove(&index);
    }
}
