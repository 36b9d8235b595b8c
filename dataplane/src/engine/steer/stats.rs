//! What steering did, readable from any thread: which steering runs and
//! the programs' counters.
//!
//! [`Steering`](super::Steering) lives on the control thread; at start it
//! opens a [`CounterReader`] per program (a descriptor of the program's
//! counter array of its own, so reading is one syscall per counter on the
//! reader's thread) and shares them, with which steering runs and the
//! routes the TUN trie refused (atomics the control thread stores), as a
//! [`SteeringReader`]. The stats socket and the metrics endpoint read it
//! when asked: no worker and not the control thread is ever asked or
//! waited for. The workers' handoffs are in their own published counters
//! (`worker_handoffs`).
//!
//! Every exported counter is declared once, in [`STEERING_COUNTERS`], with
//! its metric family, label and help; the exporters and the SIGUSR1 log
//! line walk it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use corewire_ebpf::tun::TunSteerStats;
use corewire_ebpf::udp::UdpSteerStats;
use corewire_ebpf::xdp::{XdpAttachMode, XdpStats};
use corewire_ebpf::CounterReader;

use super::UdpSteeringKind;
use crate::engine::counters::{CounterInfo, Scope};

/// What steering did, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteeringStats {
    /// How datagrams are steered now.
    pub udp_kind: UdpSteeringKind,
    /// Whether `steer_tun` runs.
    pub tun_steered: bool,
    /// How the XDP guard is attached, if it runs.
    pub xdp_mode: Option<XdpAttachMode>,
    /// `steer_udp`'s counters, when it steers (a counter that cannot be
    /// read leaves the whole program out).
    pub udp: Option<UdpSteerStats>,
    /// `steer_tun`'s counters, when it runs.
    pub tun: Option<TunSteerStats>,
    /// Prefixes the TUN trie refused (full): their packets are handed over.
    pub tun_routes_refused: u64,
    /// The XDP guard's verdicts, when it runs.
    pub xdp: Option<XdpStats>,
}

impl SteeringStats {
    /// `ebpf`, `classic` or `off`: how datagrams are steered.
    pub fn udp_label(&self) -> &'static str {
        match self.udp_kind {
            UdpSteeringKind::Ebpf => "ebpf",
            UdpSteeringKind::Classic => "classic",
            UdpSteeringKind::None => "off",
        }
    }

    /// `ebpf` or `off`: how TUN packets are steered.
    pub fn tun_label(&self) -> &'static str {
        if self.tun_steered {
            "ebpf"
        } else {
            "off"
        }
    }

    /// `native`, `generic` or `off`: the XDP guard.
    pub fn xdp_label(&self) -> &'static str {
        match self.xdp_mode {
            Some(XdpAttachMode::Native) => "native",
            Some(XdpAttachMode::Generic) => "generic",
            None => "off",
        }
    }
}

/// One exported steering counter: how it is exported (always one figure
/// for the device) and where its value is (None: its program does not run).
#[derive(Debug, Clone, Copy)]
pub struct SteeringCounter {
    /// Field (JSON and log key), family, label and help.
    pub info: CounterInfo,
    /// Its value in a reading.
    pub value: fn(&SteeringStats) -> Option<u64>,
}

const fn counter(
    field: &'static str,
    family: &'static str,
    label: Option<(&'static str, &'static str)>,
    help: &'static str,
    value: fn(&SteeringStats) -> Option<u64>,
) -> SteeringCounter {
    SteeringCounter {
        info: CounterInfo {
            field,
            family,
            label,
            scope: Scope::Device,
            scale: 1,
            help,
        },
        value,
    }
}

const UDP_STEERED: &str = "Datagrams steer_udp put on a chosen worker: by their receiver index, or initiations by a hash of their source.";
const UDP_FALLBACKS: &str = "Datagrams steer_udp left to the kernel's reuseport hash, by reason (the worker that gets them hands them over).";
const TUN_STEERING: &str = "Packets steer_tun put on a TUN queue: hit is the owner worker's queue, miss (no prefix holds the destination) the flow hash.";
const XDP_VERDICTS: &str = "Datagrams to corewire's port judged by the XDP guard on the uplink, by verdict (drop_* never reach the stack).";

/// Every exported steering counter, in export order.
pub const STEERING_COUNTERS: &[SteeringCounter] = &[
    counter("udp_by_index", "udp_steered", Some(("by", "index")), UDP_STEERED, |s| s.udp.map(|u| u.by_index)),
    counter("udp_by_source", "udp_steered", Some(("by", "source")), UDP_STEERED, |s| s.udp.map(|u| u.by_source)),
    counter("udp_no_worker", "udp_steering_fallbacks", Some(("reason", "no_worker")), UDP_FALLBACKS, |s| s.udp.map(|u| u.no_worker)),
    counter("udp_no_socket", "udp_steering_fallbacks", Some(("reason", "no_socket")), UDP_FALLBACKS, |s| s.udp.map(|u| u.no_socket)),
    counter("udp_unsteered", "udp_steering_fallbacks", Some(("reason", "unsteered")), UDP_FALLBACKS, |s| s.udp.map(|u| u.unsteered)),
    counter("tun_hits", "tun_steering", Some(("result", "hit")), TUN_STEERING, |s| s.tun.map(|t| t.hits)),
    counter("tun_misses", "tun_steering", Some(("result", "miss")), TUN_STEERING, |s| s.tun.map(|t| t.misses)),
    counter("tun_routes_refused", "tun_steering_routes_refused", None,
        "AllowedIPs prefixes the TUN steering trie refused (full); packets to them are handed over.",
        |s| s.tun_steered.then_some(s.tun_routes_refused)),
    counter("xdp_pass_initiation", "xdp_verdicts", Some(("verdict", "pass_initiation")), XDP_VERDICTS, |s| s.xdp.map(|x| x.pass_initiation)),
    counter("xdp_pass_response", "xdp_verdicts", Some(("verdict", "pass_response")), XDP_VERDICTS, |s| s.xdp.map(|x| x.pass_response)),
    counter("xdp_pass_cookie_reply", "xdp_verdicts", Some(("verdict", "pass_cookie_reply")), XDP_VERDICTS, |s| s.xdp.map(|x| x.pass_cookie_reply)),
    counter("xdp_pass_data", "xdp_verdicts", Some(("verdict", "pass_data")), XDP_VERDICTS, |s| s.xdp.map(|x| x.pass_data)),
    counter("xdp_drop_bad_type", "xdp_verdicts", Some(("verdict", "drop_bad_type")), XDP_VERDICTS, |s| s.xdp.map(|x| x.drop_bad_type)),
    counter("xdp_drop_bad_length", "xdp_verdicts", Some(("verdict", "drop_bad_length")), XDP_VERDICTS, |s| s.xdp.map(|x| x.drop_bad_length)),
    counter("xdp_drop_unknown_index", "xdp_verdicts", Some(("verdict", "drop_unknown_index")), XDP_VERDICTS, |s| s.xdp.map(|x| x.drop_unknown_index)),
    counter("xdp_pass_other", "xdp_verdicts", Some(("verdict", "pass_other")), XDP_VERDICTS, |s| s.xdp.map(|x| x.pass_other)),
];

/// `key=value` for every counter whose program runs, space-separated,
/// after which steering runs (`udp=ebpf tun=ebpf xdp=off`).
impl std::fmt::Display for SteeringStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "udp={} tun={} xdp={}",
            self.udp_label(),
            self.tun_label(),
            self.xdp_label()
        )?;
        for c in STEERING_COUNTERS {
            if let Some(v) = (c.value)(self) {
                write!(f, " {}={v}", c.info.field)?;
            }
        }
        Ok(())
    }
}

/// What the control thread shares with readers.
#[derive(Debug)]
struct Shared {
    udp: Option<CounterReader<UdpSteerStats>>,
    tun: Option<CounterReader<TunSteerStats>>,
    xdp: Option<(CounterReader<XdpStats>, XdpAttachMode)>,
    /// [`UdpSteeringKind`] as stored by [`SteeringReader::set_udp_kind`].
    udp_kind: AtomicU8,
    tun_routes_refused: AtomicU64,
}

/// Reads what steering did, from any thread, without asking anyone (see
/// the module documentation). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SteeringReader(Arc<Shared>);

impl SteeringReader {
    /// A reader of the given programs' counters (None: the program does
    /// not run, or its counters cannot be opened).
    pub(super) fn new(
        udp: Option<CounterReader<UdpSteerStats>>,
        tun: Option<CounterReader<TunSteerStats>>,
        xdp: Option<(CounterReader<XdpStats>, XdpAttachMode)>,
    ) -> Self {
        Self(Arc::new(Shared {
            udp,
            tun,
            xdp,
            udp_kind: AtomicU8::new(UdpSteeringKind::None as u8),
            tun_routes_refused: AtomicU64::new(0),
        }))
    }

    /// Records how datagrams are steered now (the control thread).
    pub(super) fn set_udp_kind(&self, kind: UdpSteeringKind) {
        self.0.udp_kind.store(kind as u8, Ordering::Relaxed);
    }

    /// Records the routes the TUN trie refused so far (the control thread).
    pub(super) fn set_tun_routes_refused(&self, n: u64) {
        self.0.tun_routes_refused.store(n, Ordering::Relaxed);
    }

    /// What steering did so far. A program whose counters cannot be read
    /// is left out.
    pub fn read(&self) -> SteeringStats {
        let s = &self.0;
        let udp_kind = match s.udp_kind.load(Ordering::Relaxed) {
            k if k == UdpSteeringKind::Ebpf as u8 => UdpSteeringKind::Ebpf,
            k if k == UdpSteeringKind::Classic as u8 => UdpSteeringKind::Classic,
            _ => UdpSteeringKind::None,
        };
        SteeringStats {
            udp_kind,
            tun_steered: s.tun.is_some(),
            xdp_mode: s.xdp.as_ref().map(|(_, m)| *m),
            udp: s
                .udp
                .as_ref()
                .filter(|_| udp_kind == UdpSteeringKind::Ebpf)
                .and_then(|r| r.read().ok()),
            tun: s.tun.as_ref().and_then(|r| r.read().ok()),
            tun_routes_refused: s.tun_routes_refused.load(Ordering::Relaxed),
            xdp: s.xdp.as_ref().and_then(|(r, _)| r.read().ok()),
        }
    }
}

impl Default for SteeringReader {
    /// Nothing steered (for tests of the exporters).
    fn default() -> Self {
        Self::new(None, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_is_shareable_and_reports_what_runs() {
        fn shareable<T: Send + Sync>() {}
        shareable::<SteeringReader>();
        let r = SteeringReader::default();
        r.set_udp_kind(UdpSteeringKind::Classic);
        let s = r.read();
        assert_eq!(
            (s.udp_label(), s.tun_label(), s.xdp_label()),
            ("classic", "off", "off")
        );
        assert!(STEERING_COUNTERS.iter().all(|c| (c.value)(&s).is_none()));
        assert_eq!(s.to_string(), "udp=classic tun=off xdp=off");
    }

    #[test]
    fn counters_of_one_family_share_their_help() {
        for a in STEERING_COUNTERS {
            for b in STEERING_COUNTERS
                .iter()
                .filter(|b| b.info.family == a.info.family)
            {
                assert_eq!(a.info.help, b.info.help, "{}", a.info.family);
            }
        }
    }
}
