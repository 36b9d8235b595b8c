//! The cases of the concentrator benchmark and the metrics each reports
//! (the `Metric` and `Better` types are netbench's).

use crate::harness::cases::{charted, metric, Better, Metric};

/// A case, measured for every peer count and hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Case {
    /// All K peers initiate at once.
    Handshake,
    /// The same (a re-handshake of every peer) while invalid initiations
    /// with a valid mac1 hit the hub at a fixed rate.
    HandshakeFlood,
    /// Fleet -> LAN, 64-byte payloads, rate swept to saturation.
    Decrypt64,
    /// Fleet -> LAN, 1392-byte payloads.
    Decrypt1392,
    /// LAN -> fleet, 64-byte payloads.
    Encrypt64,
    /// LAN -> fleet, 1392-byte payloads.
    Encrypt1392,
    /// One-way delay fleet -> LAN at 50% of the slowest hub's capacity.
    Latency50,
    /// The same at 90%.
    Latency90,
    /// Resident memory per idle and per active peer.
    Memory,
}

/// The unit of 0/1 metrics (no ratios are taken of them).
pub const FLAG_UNIT: &str = "flag";

const SECONDS: Metric = metric("seconds", "time to K sessions", "s", Better::Lower);
const HS_PER_S: Metric = metric("hs_per_s", "handshakes per second", "hs/s", Better::Higher);
const HS_PER_CORE: Metric = metric(
    "hs_per_cpu_s",
    "handshakes per hub CPU second",
    "hs/CPU-s",
    Better::Higher,
);
const CONNECTED: Metric = metric("connected_pct", "peers connected", "%", Better::Higher);
const COOKIES: Metric = metric("cookies", "cookie replies seen", "replies", Better::Lower);
const HUB_CPU: Metric = metric("hub_cpu_s", "hub CPU", "s", Better::Lower);
const GEN_CPU: Metric = metric("gen_cpu_pct", "generator CPU (of wall)", "%", Better::Lower);

const PPS: Metric = metric("kpps", "delivered packets", "kpps", Better::Higher);
const GBPS: Metric = metric("gbps", "delivered payload", "Gbit/s", Better::Higher);
const LOSS: Metric = metric("loss_pct", "loss at the best step", "%", Better::Lower);
const CPU_GBIT: Metric = metric(
    "hub_s_per_gbit",
    "hub CPU per gigabit",
    "s/Gbit",
    Better::Lower,
);
const CPU_MPKT: Metric = metric(
    "hub_s_per_mpkt",
    "hub CPU per million packets",
    "s/Mpkt",
    Better::Lower,
);
const PER_CORE: Metric = metric(
    "kpps_per_core",
    "packets per hub core",
    "kpps/core",
    Better::Higher,
);
const GEN_US: Metric = metric(
    "gen_us_per_pkt",
    "sender CPU per packet",
    "µs",
    Better::Lower,
);
const GEN_BOUND: Metric = metric(
    "sender_bound",
    "sender was the limit (1 = yes)",
    FLAG_UNIT,
    Better::Lower,
);
const CLEAN: Metric = metric(
    "clean_kpps",
    "delivered at loss <= 1%",
    "kpps",
    Better::Higher,
);
const OFFERED: Metric = metric(
    "offered_kpps",
    "offered at the best step",
    "kpps",
    Better::Higher,
);

const P50: Metric = metric("p50_us", "one-way p50", "µs", Better::Lower);
const P99: Metric = metric("p99_us", "one-way p99", "µs", Better::Lower);
const P999: Metric = metric("p999_us", "one-way p99.9", "µs", Better::Lower);
const RATE: Metric = metric("rate_kpps", "offered load", "kpps", Better::Higher);
const LAT_LOSS: Metric = metric("loss_pct", "loss", "%", Better::Lower);

const IDLE: Metric = metric(
    "idle_kib_per_peer",
    "RSS per idle peer",
    "KiB",
    Better::Lower,
);
const ACTIVE: Metric = metric(
    "active_kib_per_peer",
    "RSS per active peer",
    "KiB",
    Better::Lower,
);
const EMPTY: Metric = metric("empty_mib", "RSS without peers", "MiB", Better::Lower);

impl Case {
    pub const ALL: [Case; 9] = [
        Case::Handshake,
        Case::HandshakeFlood,
        Case::Decrypt64,
        Case::Decrypt1392,
        Case::Encrypt64,
        Case::Encrypt1392,
        Case::Latency50,
        Case::Latency90,
        Case::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Handshake => "handshake",
            Case::HandshakeFlood => "handshake-flood",
            Case::Decrypt64 => "decrypt-64",
            Case::Decrypt1392 => "decrypt-1392",
            Case::Encrypt64 => "encrypt-64",
            Case::Encrypt1392 => "encrypt-1392",
            Case::Latency50 => "latency-50",
            Case::Latency90 => "latency-90",
            Case::Memory => "memory",
        }
    }

    pub fn parse(name: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The UDP payload of a traffic case.
    pub fn payload(self) -> Option<usize> {
        match self {
            Case::Decrypt64 | Case::Encrypt64 | Case::Latency50 | Case::Latency90 => Some(64),
            Case::Decrypt1392 | Case::Encrypt1392 => Some(1392),
            _ => None,
        }
    }

    /// A latency case's load as a fraction of the slowest hub's capacity.
    pub fn load_fraction(self) -> Option<f64> {
        match self {
            Case::Latency50 => Some(0.5),
            Case::Latency90 => Some(0.9),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Case::Handshake => "all K peers initiate at once; time until every handshake completed",
            Case::HandshakeFlood => {
                "every peer re-handshakes while invalid initiations (valid mac1) hit the hub"
            }
            Case::Decrypt64 | Case::Decrypt1392 => {
                "the K peers send to the LAN round-robin; offered rate swept until loss > 5% or the sender is the limit; best step"
            }
            Case::Encrypt64 | Case::Encrypt1392 => {
                "the LAN sends to the K peers' tunnel addresses round-robin; swept like decrypt"
            }
            Case::Latency50 | Case::Latency90 => {
                "fleet -> LAN at a fraction of the slowest hub's decrypt-64 capacity; one-way delay of probes"
            }
            Case::Memory => "hub RSS: before peers, after `wg addconf` of K peers (idle), after traffic (active)",
        }
    }

    pub fn metrics(self) -> &'static [Metric] {
        const HS: [Metric; 7] = [
            SECONDS,
            charted(HS_PER_S),
            HS_PER_CORE,
            CONNECTED,
            COOKIES,
            HUB_CPU,
            GEN_CPU,
        ];
        const T64: [Metric; 10] = [
            charted(PPS),
            CLEAN,
            GBPS,
            LOSS,
            CPU_GBIT,
            charted(CPU_MPKT),
            PER_CORE,
            GEN_US,
            GEN_BOUND,
            OFFERED,
        ];
        const T1392: [Metric; 10] = [
            PPS,
            CLEAN,
            charted(GBPS),
            LOSS,
            charted(CPU_GBIT),
            CPU_MPKT,
            PER_CORE,
            GEN_US,
            GEN_BOUND,
            OFFERED,
        ];
        const L50: [Metric; 5] = [P50, P99, P999, RATE, LAT_LOSS];
        const L90: [Metric; 5] = [charted(P50), charted(P99), charted(P999), RATE, LAT_LOSS];
        const MEM: [Metric; 3] = [charted(IDLE), charted(ACTIVE), EMPTY];
        match self {
            Case::Handshake | Case::HandshakeFlood => &HS,
            Case::Decrypt64 | Case::Encrypt64 => &T64,
            Case::Decrypt1392 | Case::Encrypt1392 => &T1392,
            Case::Latency50 => &L50,
            Case::Latency90 => &L90,
            Case::Memory => &MEM,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_keys_are_unique_per_case() {
        for case in Case::ALL {
            assert_eq!(Case::parse(case.name()), Some(case));
            let mut keys: Vec<&str> = case.metrics().iter().map(|m| m.key).collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), case.metrics().len());
        }
    }
}
