//! Putting each packet on its owner's worker in the kernel, so the workers
//! hand over as little as possible (a handoff costs a channel send, a
//! wake-up and cross-core cache misses).
//!
//! | what | with eBPF | fallback |
//! |---|---|---|
//! | datagrams | `steer_udp` (`SK_REUSEPORT` + socket map): the index's worker, initiations by source hash | [`classic`] reuseport filter (index bits only) |
//! | TUN packets | `steer_tun` (`TUNSETSTEERINGEBPF` + AllowedIPs trie): the owner's queue | the kernel's flow table (last writer's queue) |
//! | uplink | `xdp_guard` (opt-in): drops malformed and unknown-index datagrams | none: the workers drop them |
//!
//! Steering is an optimisation: whatever still reaches the wrong worker is
//! handed over, so the traffic is the same without it. [`Steering`] loads
//! what the mode asks for, falls back where the kernel refuses (no
//! CAP_BPF, an old kernel) and says so in one log line, keeps the TUN
//! trie in step with the configuration, and reads the programs' counters.

pub mod classic;
mod stats;

pub use stats::{SteeringCounter, SteeringReader, SteeringStats, STEERING_COUNTERS};

use std::net::IpAddr;
use std::os::fd::AsFd;

use corewire_ebpf::tun::TunSteering;
use corewire_ebpf::udp::UdpSteering;
use corewire_ebpf::xdp::{LiveIndexes, XdpAttachMode, XdpGuard};

use super::limits::{STEER_ROUTES, XDP_LIVE_INDEXES};
use super::owner::{owner_of_key, worker_bits};
use super::tun::Tun;
use super::udp::UdpGroup;
use crate::proto::index::worker_mask;
use crate::proto::keys::PublicKey;

/// How datagrams and TUN packets are steered to their worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SteeringMode {
    /// eBPF programs for datagrams and TUN packets; where one cannot load,
    /// the classic filter for datagrams and handoffs for TUN packets.
    #[default]
    Ebpf,
    /// Only the classic-BPF reuseport filter for datagrams (no eBPF).
    Classic,
    /// No steering at all: the kernel's hashes decide, the workers hand
    /// over (for comparisons, and for kernels that refuse even the filter).
    Off,
}

/// How datagrams are being steered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UdpSteeringKind {
    /// `steer_udp`.
    Ebpf,
    /// The classic filter.
    Classic,
    /// Not steered (one worker, mode off, or the kernel refused both).
    None,
}

/// The steering programs of one engine.
#[derive(Debug)]
pub struct Steering {
    mode: SteeringMode,
    workers: u32,
    udp: Option<UdpSteering>,
    udp_kind: UdpSteeringKind,
    tun: Option<TunSteering>,
    tun_routes_refused: u64,
    xdp: Option<XdpGuard>,
    /// What readers on other threads see.
    reader: SteeringReader,
}

impl Steering {
    /// Loads the programs `mode` asks for (none with one worker) and
    /// attaches TUN steering to `tun`; `xdp` names the uplink to guard.
    /// Logs one line saying which steering is off and why, if any is.
    pub fn start(mode: SteeringMode, workers: u32, tun: &Tun, xdp: Option<&str>) -> Self {
        let mut s = Self {
            mode,
            workers,
            udp: None,
            udp_kind: UdpSteeringKind::None,
            tun: None,
            tun_routes_refused: 0,
            xdp: None,
            reader: SteeringReader::default(),
        };
        if let Some(iface) = xdp {
            // The port is set once the sockets are bound.
            match XdpGuard::attach(iface, 0, XDP_LIVE_INDEXES) {
                Ok(g) => {
                    let how = match g.mode() {
                        XdpAttachMode::Native => "native",
                        XdpAttachMode::Generic => "generic (the driver has no native XDP)",
                    };
                    tracing::info!(iface, mode = how, "XDP guard attached");
                    s.xdp = Some(g);
                }
                Err(e) => tracing::warn!(iface, "XDP guard off: {}", chain(&e)),
            }
        }
        if workers >= 2 {
            s.load_steering(tun);
        }
        s.reader = s.open_reader();
        s
    }

    /// Loads the steering programs the mode asks for (two workers or more).
    fn load_steering(&mut self, tun: &Tun) {
        match self.mode {
            SteeringMode::Off => tracing::info!(
                "steering off (--steering off): datagrams and TUN packets that reach the wrong worker are handed over"
            ),
            SteeringMode::Classic => tracing::info!(
                "eBPF steering off (--steering classic): datagrams by the classic reuseport filter, TUN packets for another worker's peers handed over"
            ),
            SteeringMode::Ebpf => {
                let mask = worker_mask(worker_bits(self.workers));
                let udp = UdpSteering::load(self.workers, mask);
                let tun = TunSteering::load(STEER_ROUTES).and_then(|t| {
                    t.attach(tun.queue_fds()[0].as_fd())?;
                    Ok(t)
                });
                match (&udp, &tun) {
                    (Ok(_), Ok(_)) => tracing::debug!("eBPF steering on for datagrams and TUN packets"),
                    (Err(e), Err(_)) => tracing::warn!(
                        "eBPF steering off ({}): datagrams by the classic reuseport filter, TUN packets for another worker's peers handed over",
                        chain(e)
                    ),
                    (Err(e), Ok(_)) => tracing::warn!(
                        "eBPF UDP steering off ({}): datagrams by the classic reuseport filter",
                        chain(e)
                    ),
                    (Ok(_), Err(e)) => tracing::warn!(
                        "eBPF TUN steering off ({}): TUN packets for another worker's peers handed over",
                        chain(e)
                    ),
                }
                self.udp = udp.ok();
                self.tun = tun.ok();
            }
        }
    }

    /// A reader of what runs, on descriptors of its own (a counter array
    /// that cannot be opened leaves its program out of the reports).
    fn open_reader(&self) -> SteeringReader {
        fn open<T>(what: &str, r: Result<T, corewire_ebpf::Error>) -> Option<T> {
            r.map_err(|e| tracing::warn!("{what}: its counters cannot be read: {}", chain(&e)))
                .ok()
        }
        SteeringReader::new(
            self.udp
                .as_ref()
                .and_then(|u| open("steer_udp", u.stats_reader())),
            self.tun
                .as_ref()
                .and_then(|t| open("steer_tun", t.stats_reader())),
            self.xdp
                .as_ref()
                .and_then(|g| open("xdp_guard", g.stats_reader()).map(|r| (r, g.mode()))),
        )
    }

    /// Steers the datagrams of a (new) socket group: `steer_udp` when
    /// loaded, else the classic filter unless steering is off. A kernel that
    /// refuses costs handoffs, so that is logged, not fatal.
    pub fn attach_udp(&mut self, group: &UdpGroup) {
        self.steer_udp(group);
        self.reader.set_udp_kind(self.udp_kind);
    }

    fn steer_udp(&mut self, group: &UdpGroup) {
        if let Some(g) = &mut self.xdp {
            if let Err(e) = g.set_port(group.port()) {
                tracing::warn!("XDP guard: cannot set the port: {}", chain(&e));
            }
        }
        self.udp_kind = UdpSteeringKind::None;
        if self.workers < 2 || self.mode == SteeringMode::Off {
            return;
        }
        if let Some(u) = &mut self.udp {
            match u.attach(group.v4_fds(), group.v6_fds()) {
                Ok(()) => {
                    self.udp_kind = UdpSteeringKind::Ebpf;
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        "eBPF UDP steering off ({}): datagrams by the classic reuseport filter",
                        chain(&e)
                    );
                    self.udp = None;
                }
            }
        }
        match group.steer_to_owners(worker_bits(self.workers)) {
            Ok(()) => self.udp_kind = UdpSteeringKind::Classic,
            Err(e) => tracing::warn!(
                error = %e,
                "cannot steer datagrams to their workers; they are handed over instead"
            ),
        }
    }

    /// How datagrams are steered now.
    pub fn udp_kind(&self) -> UdpSteeringKind {
        self.udp_kind
    }

    /// Whether `steer_tun` runs.
    pub fn tun_steered(&self) -> bool {
        self.tun.is_some()
    }

    /// Mirrors a route change into the TUN trie: `addr/len` now belongs to
    /// the peer `owner` (None: to nobody).
    pub fn route_moved(&mut self, addr: IpAddr, len: u8, owner: Option<PublicKey>) {
        let Some(t) = &mut self.tun else {
            return;
        };
        let result = match owner {
            Some(key) => t.insert(addr, len, owner_of_key(&key, self.workers)),
            None => t.remove(addr, len),
        };
        if let Err(e) = result {
            self.tun_routes_refused += 1;
            self.reader.set_tun_routes_refused(self.tun_routes_refused);
            if self.tun_routes_refused.is_power_of_two() {
                tracing::warn!(
                    count = self.tun_routes_refused,
                    "TUN steering: a route was not updated ({}); its packets are handed over",
                    chain(&e)
                );
            }
        }
    }

    /// A writer of live receiver indexes for one worker, when the XDP
    /// guard runs.
    pub fn live_indexes(&self) -> Option<LiveIndexes> {
        let g = self.xdp.as_ref()?;
        match g.live_indexes() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("XDP guard: no live-index map for a worker: {}", chain(&e));
                None
            }
        }
    }

    /// What steering did so far (see [`SteeringReader`]).
    pub fn stats(&self) -> SteeringStats {
        self.reader.read()
    }

    /// A reader of what steering did, for other threads.
    pub fn reader(&self) -> SteeringReader {
        self.reader.clone()
    }
}

/// An error with its causes, on one line: the first line of each (a
/// verifier log follows the first line; it is logged at debug level).
fn chain(e: &dyn std::error::Error) -> String {
    tracing::debug!("{e:?}");
    let first = |e: &dyn std::error::Error| {
        let s = e.to_string();
        let s = s.split(". Verifier output").next().unwrap_or_default();
        s.lines().next().unwrap_or_default().to_owned()
    };
    let mut s = first(e);
    let mut source = e.source();
    while let Some(c) = source {
        let next = first(c);
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        source = c.source();
    }
    if s.contains("Operation not permitted") {
        s.push_str("; eBPF needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)");
    }
    s
}
