//! The cases netbench runs and the metrics each one reports.

use corewire_testkit::{FloodKind, Flow};

/// Which direction of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    /// An arrow for table headers: which way is better.
    pub fn arrow(self) -> &'static str {
        match self {
            Better::Higher => "↑",
            Better::Lower => "↓",
        }
    }
}

/// One figure a case reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Key in the JSON output.
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    /// Drawn in the SVG chart.
    pub chart: bool,
    /// Not measurable on the bare veth (kernel softirq time belongs to no
    /// process).
    pub tunnel_only: bool,
}

pub const fn metric(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        better,
        chart: false,
        tunnel_only: false,
    }
}

pub const fn charted(m: Metric) -> Metric {
    Metric { chart: true, ..m }
}

const fn tunnel_only(m: Metric) -> Metric {
    Metric {
        tunnel_only: true,
        ..m
    }
}

const GBPS: Metric = metric("gbps", "goodput", "Gbit/s", Better::Higher);
const CPU_TX: Metric = tunnel_only(metric(
    "cpu_tx_s_per_gbit",
    "CPU tx (side a)",
    "s/Gbit",
    Better::Lower,
));
const CPU_RX: Metric = tunnel_only(metric(
    "cpu_rx_s_per_gbit",
    "CPU rx (side b)",
    "s/Gbit",
    Better::Lower,
));
const RETRANSMITS: Metric = metric("retransmits", "TCP retransmits", "segments", Better::Lower);
const LOSS: Metric = metric("loss_pct", "loss", "%", Better::Lower);
const KPPS: Metric = metric("kpps", "received packets", "kpps", Better::Higher);
const P50: Metric = metric("p50_us", "RTT p50", "µs", Better::Lower);
const P99: Metric = metric("p99_us", "RTT p99", "µs", Better::Lower);
const P999: Metric = metric("p999_us", "RTT p99.9", "µs", Better::Lower);
const LOST: Metric = metric("lost_pings", "pings lost", "pings", Better::Lower);
const DAEMON_CPU: Metric = tunnel_only(metric(
    "daemon_cpu_cores",
    "daemon CPU (both sides)",
    "cores",
    Better::Lower,
));
const LOAD_GBPS: Metric = metric("load_gbps", "load goodput", "Gbit/s", Better::Higher);

/// A benchmark case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Case {
    /// iperf3 TCP, one stream.
    Tcp1,
    /// iperf3 TCP, four streams (`-P 4`).
    Tcp4,
    /// iperf3 UDP at saturation, 1392-byte datagrams (fill MTU 1420).
    Udp1392,
    /// iperf3 UDP at saturation, 64-byte datagrams: packets per second.
    Udp64,
    /// Ping-pong RTT on an idle tunnel.
    RttIdle,
    /// Ping-pong RTT while one TCP stream saturates the tunnel.
    RttLoad,
    /// iperf3 TCP, one stream, while side b's port is flooded with garbage.
    FloodGarbage,
    /// The same under transport messages with random receiver indexes.
    FloodIndex,
    /// The same under handshake initiations with a valid mac1.
    FloodInit,
}

impl Case {
    pub const ALL: [Case; 9] = [
        Case::Tcp1,
        Case::Tcp4,
        Case::Udp1392,
        Case::Udp64,
        Case::RttIdle,
        Case::RttLoad,
        Case::FloodGarbage,
        Case::FloodIndex,
        Case::FloodInit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Tcp1 => "tcp-1",
            Case::Tcp4 => "tcp-4",
            Case::Udp1392 => "udp-1392",
            Case::Udp64 => "udp-64",
            Case::RttIdle => "rtt-idle",
            Case::RttLoad => "rtt-load",
            Case::FloodGarbage => "flood-garbage",
            Case::FloodIndex => "flood-index",
            Case::FloodInit => "flood-init",
        }
    }

    /// Datagrams per second of the flood cases (the rate the hardening
    /// issue measured at).
    pub const FLOOD_RATE: u64 = 50_000;

    /// The flood a flood case sends at side b's WireGuard port.
    pub fn flood(self) -> Option<FloodKind> {
        match self {
            Case::FloodGarbage => Some(FloodKind::Garbage),
            Case::FloodIndex => Some(FloodKind::UnknownIndex),
            Case::FloodInit => Some(FloodKind::Initiations),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What the case runs, for the report.
    pub fn describe(self) -> String {
        let flood = |what: &str| {
            format!(
                "iperf3 TCP, 1 stream, while {} {what}/s hit b's port (compare tcp-1)",
                Case::FLOOD_RATE
            )
        };
        match self {
            Case::Tcp1 => "iperf3 TCP, 1 stream, a -> b".into(),
            Case::Tcp4 => "iperf3 TCP, 4 streams (-P 4), a -> b".into(),
            Case::Udp1392 => "iperf3 UDP -b 0 -l 1392, receiver goodput and loss".into(),
            Case::Udp64 => "iperf3 UDP -b 0 -l 64, receiver packets per second".into(),
            Case::RttIdle => {
                "UDP ping-pong (16 B), otherwise idle tunnel; also the daemons' CPU during it"
                    .into()
            }
            Case::RttLoad => {
                "UDP ping-pong (16 B) while iperf3 TCP (1 stream) saturates the tunnel".into()
            }
            Case::FloodGarbage => flood("garbage datagrams"),
            Case::FloodIndex => flood("transport messages with random receiver indexes"),
            Case::FloodInit => flood("valid-mac1 initiations"),
        }
    }

    /// The iperf3 flow of a throughput case (the load of `rtt-load`).
    pub fn flow(self) -> Option<Flow> {
        match self {
            Case::Tcp1
            | Case::RttLoad
            | Case::FloodGarbage
            | Case::FloodIndex
            | Case::FloodInit => Some(Flow::Tcp { streams: 1 }),
            Case::Tcp4 => Some(Flow::Tcp { streams: 4 }),
            Case::Udp1392 => Some(Flow::Udp { len: 1392 }),
            Case::Udp64 => Some(Flow::Udp { len: 64 }),
            Case::RttIdle => None,
        }
    }

    pub fn metrics(self) -> &'static [Metric] {
        const TCP1: [Metric; 4] = [charted(GBPS), charted(CPU_TX), charted(CPU_RX), RETRANSMITS];
        const TCP4: [Metric; 4] = [charted(GBPS), CPU_TX, CPU_RX, RETRANSMITS];
        const UDP1392: [Metric; 4] = [charted(GBPS), LOSS, CPU_TX, CPU_RX];
        const UDP64: [Metric; 4] = [charted(KPPS), LOSS, CPU_TX, CPU_RX];
        const RTT_IDLE: [Metric; 5] = [charted(P50), charted(P99), P999, LOST, DAEMON_CPU];
        const RTT_LOAD: [Metric; 5] = [P50, charted(P99), P999, LOST, LOAD_GBPS];
        match self {
            Case::Tcp1 => &TCP1,
            Case::Tcp4 => &TCP4,
            Case::Udp1392 => &UDP1392,
            Case::Udp64 => &UDP64,
            Case::RttIdle => &RTT_IDLE,
            Case::RttLoad => &RTT_LOAD,
            Case::FloodGarbage | Case::FloodIndex | Case::FloodInit => &TCP1,
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
        assert_eq!(Case::parse("tcp"), None);
    }
}
