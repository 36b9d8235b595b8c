//! The measurement loop. Rounds are interleaved: round 1 runs every case
//! for every implementation (case by case, implementation after
//! implementation), then round 2 does it all again, so slow drift (thermal,
//! other tenants) hits every implementation alike. Each measurement starts
//! from a fresh tunnel, checks that an echo comes back through it, measures,
//! and tears it down; a failure is recorded and the loop goes on. One
//! progress line per measurement goes to stderr.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use corewire_testkit::{signals, Flood, Flow, Iperf3Client, Iperf3Result, Iperf3Server, Keypair};

use super::cases::Case;
use super::cpu::{self, Noise};
use super::impls::{Impl, Tunnel, LISTEN_PORT};
use super::preflight::Tools;
use super::rtt::{Pinger, RttStats};
use super::topology::{Topology, VETH_A, VETH_B};

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runs: u32,
    /// Length of each measurement.
    pub seconds: u32,
    /// Noise limit: CPU of other processes, in cores.
    pub noise_threshold: f64,
    /// Pause between the pings of the RTT cases.
    pub rtt_interval: Duration,
    /// corewire's ends run the XDP guard on their veth (`--xdp`).
    pub corewire_xdp: bool,
}

/// The result of one (round, case, implementation).
#[derive(Debug, Clone)]
pub struct Measurement {
    pub round: u32,
    pub case: Case,
    pub imp: Impl,
    /// Metric key -> value (see [`Case::metrics`]).
    pub metrics: BTreeMap<&'static str, f64>,
    pub noise: Option<Noise>,
    pub error: Option<String>,
}

/// Everything a measurement needs.
#[derive(Debug)]
pub struct Bench<'a> {
    pub topo: &'a Topology,
    pub tools: &'a Tools,
    pub keys: (Keypair, Keypair),
    pub settings: Settings,
    next_port: u16,
}

/// How long a fresh tunnel gets to pass its first echo (handshake included).
const PROBE_LIMIT: Duration = Duration::from_secs(10);
/// How long an RTT ping waits for its echo before it counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the load of `rtt-load` runs before the pings start.
const LOAD_WARMUP: Duration = Duration::from_secs(1);

impl<'a> Bench<'a> {
    pub fn new(
        topo: &'a Topology,
        tools: &'a Tools,
        keys: (Keypair, Keypair),
        settings: Settings,
    ) -> Bench<'a> {
        Bench {
            topo,
            tools,
            keys,
            settings,
            next_port: 0,
        }
    }

    /// Runs every round; stops early (keeping what it has) on Ctrl-C.
    pub fn run_all(&mut self, impls: &[Impl], cases: &[Case]) -> Vec<Measurement> {
        let total = self.settings.runs as usize * cases.len() * impls.len();
        let mut out = Vec::with_capacity(total);
        'rounds: for round in 1..=self.settings.runs {
            for &case in cases {
                for &imp in impls {
                    if signals::interrupted() {
                        break 'rounds;
                    }
                    let started = Instant::now();
                    let result = self.measure(case, imp);
                    if result.is_err() && signals::interrupted() {
                        // Cut short by Ctrl-C: not a result, not a failure.
                        break 'rounds;
                    }
                    let (metrics, noise, error) = match result {
                        Ok((metrics, noise)) => (metrics, Some(noise), None),
                        Err(e) => (BTreeMap::new(), None, Some(format!("{e:#}"))),
                    };
                    let m = Measurement {
                        round,
                        case,
                        imp,
                        metrics,
                        noise,
                        error,
                    };
                    eprintln!(
                        "[{:>3}/{total}] run {round}/{} {:<9} {:<13} {} ({:.1} s)",
                        out.len() + 1,
                        self.settings.runs,
                        case.name(),
                        imp.name(),
                        progress_summary(&m),
                        started.elapsed().as_secs_f64()
                    );
                    out.push(m);
                }
            }
        }
        out
    }

    /// A fresh iperf3 port per measurement (no TIME_WAIT surprises).
    fn port(&mut self) -> u16 {
        self.next_port = (self.next_port + 1) % 500;
        5201 + self.next_port
    }

    fn measure(&mut self, case: Case, imp: Impl) -> Result<(BTreeMap<&'static str, f64>, Noise)> {
        let mut tunnel = Tunnel::up(
            self.topo,
            imp,
            self.tools,
            &self.keys,
            self.settings.corewire_xdp,
        )?;
        let mut pinger = Pinger::new(&self.topo.a, tunnel.target())?;
        pinger
            .probe(PROBE_LIMIT)
            .with_context(|| format!("{} tunnel", imp.name()))?;
        let result = match (case, case.flow()) {
            (Case::RttIdle, _) => self.rtt_idle(&mut tunnel, &mut pinger),
            (Case::RttLoad, _) => self.rtt_load(&mut tunnel, &mut pinger),
            (_, Some(flow)) => self.throughput(&mut tunnel, case, flow),
            (_, None) => anyhow::bail!("case {} has no flow", case.name()),
        }?;
        tunnel.check_alive()?;
        Ok(result)
    }

    /// CPU seconds used so far by the daemons of side a and side b.
    fn side_cpu(tunnel: &Tunnel) -> Option<(f64, f64)> {
        tunnel
            .pids()
            .and_then(|(a, b)| Some((cpu::process_seconds(a)?, cpu::process_seconds(b)?)))
    }

    fn daemon_pids(tunnel: &Tunnel) -> Vec<u32> {
        tunnel.pids().map(|(a, b)| vec![a, b]).unwrap_or_default()
    }

    fn throughput(
        &mut self,
        tunnel: &mut Tunnel,
        case: Case,
        flow: Flow,
    ) -> Result<(BTreeMap<&'static str, f64>, Noise)> {
        let port = self.port();
        let target = tunnel.target();
        let server = Iperf3Server::start(&self.topo.b, &target.to_string(), port)?;
        let daemons = Self::daemon_pids(tunnel);
        let mut live = daemons.clone();
        live.push(server.pid());
        let before = cpu::snapshot(&live)?;
        let cpu_before = Self::side_cpu(tunnel);
        let client = Iperf3Client::start(
            &self.topo.a,
            &target.to_string(),
            port,
            self.settings.seconds,
            &flow.args(),
        )?;
        // A flood case floods b's WireGuard port from side a meanwhile.
        let target_public = self.keys.1.public_bytes()?;
        let flood = case.flood().map(|kind| Flood {
            kind,
            target: SocketAddrV4::new(VETH_B, LISTEN_PORT),
            target_public,
            sources: vec![VETH_A],
            sockets_per_source: 128,
            rate: Case::FLOOD_RATE,
            duration: Duration::from_secs(u64::from(self.settings.seconds)),
        });
        let result = std::thread::scope(|s| {
            let attack = flood
                .as_ref()
                .map(|f| s.spawn(|| f.run(self.topo.a.name())));
            let result = client.finish();
            if let Some(a) = attack {
                let _ = a.join();
            }
            result
        })?
        .check()?;
        let cpu_after = Self::side_cpu(tunnel);
        server.finish(Duration::from_secs(10))?;
        let after = cpu::snapshot(&daemons)?;
        let noise = cpu::noise(&before, &after, self.settings.noise_threshold);

        let mut metrics = BTreeMap::new();
        let gbit = result.received_bytes as f64 * 8.0 / 1e9;
        match case {
            Case::Udp64 => {
                if let Some(packets) = result.received_packets {
                    metrics.insert("kpps", packets as f64 / result.received_seconds / 1e3);
                }
            }
            _ => {
                metrics.insert("gbps", result.received_bps / 1e9);
            }
        }
        if let Some(r) = result.retransmits {
            metrics.insert("retransmits", r as f64);
        }
        if let Some(loss) = result.lost_percent {
            metrics.insert("loss_pct", loss);
        }
        if let (Some((a0, b0)), Some((a1, b1))) = (cpu_before, cpu_after) {
            if gbit > 0.0 {
                metrics.insert("cpu_tx_s_per_gbit", (a1 - a0).max(0.0) / gbit);
                metrics.insert("cpu_rx_s_per_gbit", (b1 - b0).max(0.0) / gbit);
            }
        }
        Ok((metrics, noise))
    }

    fn rtt_metrics(stats: &RttStats) -> BTreeMap<&'static str, f64> {
        let mut metrics = BTreeMap::new();
        for (key, q) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
            if let Some(v) = stats.quantile_us(q) {
                metrics.insert(key, v);
            }
        }
        metrics.insert("lost_pings", stats.lost() as f64);
        metrics
    }

    fn rtt_idle(
        &mut self,
        tunnel: &mut Tunnel,
        pinger: &mut Pinger,
    ) -> Result<(BTreeMap<&'static str, f64>, Noise)> {
        let daemons = Self::daemon_pids(tunnel);
        let before = cpu::snapshot(&daemons)?;
        let cpu_before = Self::side_cpu(tunnel);
        let stats = pinger.measure(
            Duration::from_secs(u64::from(self.settings.seconds)),
            self.settings.rtt_interval,
            PING_TIMEOUT,
        )?;
        let cpu_after = Self::side_cpu(tunnel);
        let after = cpu::snapshot(&daemons)?;
        let noise = cpu::noise(&before, &after, self.settings.noise_threshold);
        anyhow::ensure!(stats.received > 0, "no ping came back");
        let mut metrics = Self::rtt_metrics(&stats);
        if let (Some((a0, b0)), Some((a1, b1))) = (cpu_before, cpu_after) {
            let cores = ((a1 - a0) + (b1 - b0)).max(0.0) / noise.wall_s;
            metrics.insert("daemon_cpu_cores", cores);
        }
        Ok((metrics, noise))
    }

    fn rtt_load(
        &mut self,
        tunnel: &mut Tunnel,
        pinger: &mut Pinger,
    ) -> Result<(BTreeMap<&'static str, f64>, Noise)> {
        let port = self.port();
        let target = tunnel.target();
        let seconds = self.settings.seconds;
        let server = Iperf3Server::start(&self.topo.b, &target.to_string(), port)?;
        let daemons = Self::daemon_pids(tunnel);
        let mut live = daemons.clone();
        live.push(server.pid());
        let before = cpu::snapshot(&live)?;
        // The load outlasts the pings by a second at each end.
        let client = Iperf3Client::start(
            &self.topo.a,
            &target.to_string(),
            port,
            seconds + 2,
            &Flow::Tcp { streams: 1 }.args(),
        )?;
        sleep(LOAD_WARMUP);
        signals::check()?;
        let stats = pinger.measure(
            Duration::from_secs(u64::from(seconds)),
            self.settings.rtt_interval,
            PING_TIMEOUT,
        )?;
        let load: Iperf3Result = client.finish()?.check()?;
        server.finish(Duration::from_secs(10))?;
        let after = cpu::snapshot(&daemons)?;
        let noise = cpu::noise(&before, &after, self.settings.noise_threshold);
        anyhow::ensure!(stats.received > 0, "no ping came back");
        let mut metrics = Self::rtt_metrics(&stats);
        metrics.insert("load_gbps", load.received_bps / 1e9);
        Ok((metrics, noise))
    }
}

/// The headline of a measurement for its progress line.
fn progress_summary(m: &Measurement) -> String {
    if let Some(e) = &m.error {
        let first = e.lines().next().unwrap_or("");
        return format!("FAILED: {first}");
    }
    let mut parts: Vec<String> = m
        .case
        .metrics()
        .iter()
        .filter_map(|metric| {
            let v = m.metrics.get(metric.key)?;
            Some(format!(
                "{} {} {}",
                metric.label,
                fmt_value(*v),
                metric.unit
            ))
        })
        .collect();
    if let Some(n) = &m.noise {
        let mut s = format!("other {:.2} cores", n.other_cores);
        if n.noisy {
            s.push_str(" NOISY");
            let top: Vec<String> = n.top.iter().map(|(c, t)| format!("{c} {t:.1}s")).collect();
            if !top.is_empty() {
                s.push_str(&format!(" ({})", top.join(", ")));
            }
        }
        parts.push(s);
    }
    parts.join(", ")
}

/// A value with a sensible number of digits (whole numbers without decimals).
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
