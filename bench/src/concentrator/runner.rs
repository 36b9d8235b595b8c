//! The measurement loop. For each peer count K (smallest first): a fleet of
//! K peers, then rounds; in each round every hub in turn gets a fresh start
//! (a "session"): `wg addconf` of the K peers, the handshake storm, the
//! decrypt and encrypt sweeps, memory, and the storm under a flood. After
//! the rounds of a K, the latency rounds run at 50% and 90% of the slowest
//! hub's decrypt-64 capacity (the median of its rounds), so that every hub
//! carries the same traffic. Rounds interleave the hubs, so slow drift hits
//! them alike. A failure is recorded and the loop goes on; one progress
//! line per measurement goes to stderr.
//!
//! The loop runs on a thread inside the fleet namespace (the generator's
//! socket lives there); the LAN threads enter the LAN namespace.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use corewire_testkit::{signals, Flood, FloodKind, Keypair};

use crate::harness::cpu::{self, Noise};
use crate::harness::preflight::Tools;
use crate::harness::stats;

use super::cases::Case;
use super::fleet::{hub_addr, Fleet, Storm};
use super::hubs::{Hub, RunningHub};
use super::mmsg::UdpSock;
use super::sweep::{self, Step, Sweep};
use super::topology::{Topology, FLEET_PORT, FLEET_VETH};
use super::traffic::StepSpec;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runs: u32,
    pub peer_counts: Vec<usize>,
    pub cases: Vec<Case>,
    /// Length of one step of a sweep, and of a latency measurement.
    pub step_seconds: f64,
    pub sweep: Sweep,
    /// Datagrams per GSO burst of one peer.
    pub gso: usize,
    /// How long a storm may take.
    pub storm_limit: Duration,
    /// After how long an unanswered peer initiates again.
    pub retry: Duration,
    /// Invalid initiations per second during `handshake-flood`.
    pub flood_rate: u64,
    pub noise_threshold: f64,
    /// The open-file limit the hubs inherit (see `hubs::raise_fd_limit`).
    pub fd_limit: u64,
}

/// The result of one (round, K, hub, case).
#[derive(Debug, Clone)]
pub struct Measurement {
    pub round: u32,
    pub peers: usize,
    pub hub: Hub,
    pub case: Case,
    pub metrics: BTreeMap<&'static str, f64>,
    /// Flags for the reader: sender-bound, noisy, wrong samples.
    pub notes: Vec<String>,
    pub noise: Option<Noise>,
    pub error: Option<String>,
}

/// Everything the loop needs.
#[derive(Debug)]
pub struct Runner<'a> {
    pub topo: &'a Topology,
    pub tools: &'a Tools,
    pub hub_key: Keypair,
    pub settings: Settings,
    seq: u64,
}

type Metrics = BTreeMap<&'static str, f64>;

/// How long a hub gets to finish its work after a storm before traffic.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

impl<'a> Runner<'a> {
    pub fn new(topo: &'a Topology, tools: &'a Tools, hub_key: Keypair, settings: Settings) -> Self {
        Runner {
            topo,
            tools,
            hub_key,
            settings,
            seq: 0,
        }
    }

    /// Runs everything on a thread inside the fleet namespace; stops early
    /// (keeping what it has) on Ctrl-C.
    pub fn run_all(&mut self, hubs: &[Hub]) -> Result<Vec<Measurement>> {
        let fleet_ns = self.topo.fleet.name().to_owned();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<Vec<Measurement>> {
                corewire_testkit::netns::enter(&fleet_ns)
                    .context("entering the fleet namespace")?;
                let sock = UdpSock::bind(
                    SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, FLEET_PORT),
                    true,
                )
                .context("the generator's socket")?;
                self.run_in_fleet(&sock, hubs)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
        })
    }

    fn total(&self, hubs: &[Hub]) -> usize {
        let per_session = self.settings.cases.len();
        self.settings.runs as usize * self.settings.peer_counts.len() * hubs.len() * per_session
    }

    fn run_in_fleet(&mut self, sock: &UdpSock, hubs: &[Hub]) -> Result<Vec<Measurement>> {
        let total = self.total(hubs);
        let mut out: Vec<Measurement> = Vec::with_capacity(total);
        let started = Instant::now();
        'all: for k in self.settings.peer_counts.clone() {
            eprintln!("concentrator: K = {k}: generating {k} key pairs");
            let mut fleet = Fleet::new(k, self.hub_key.public_bytes()?)?;
            let conf = fleet.hub_peers_conf();
            for round in 1..=self.settings.runs {
                for &hub in hubs {
                    if signals::interrupted() {
                        break 'all;
                    }
                    let ms = self.session(sock, &mut fleet, &conf, round, hub);
                    for m in ms {
                        progress(&m, out.len() + 1, total, started);
                        out.push(m);
                    }
                }
            }
            let latency: Vec<Case> = self
                .settings
                .cases
                .iter()
                .copied()
                .filter(|c| c.load_fraction().is_some())
                .collect();
            if latency.is_empty() {
                continue;
            }
            let capacity = hubs
                .iter()
                .filter_map(|&h| {
                    let v: Vec<f64> = out
                        .iter()
                        .filter(|m| m.peers == k && m.hub == h && m.case == Case::Decrypt64)
                        .filter(|m| m.error.is_none())
                        .filter_map(|m| m.metrics.get("kpps").copied())
                        .filter(|&kpps| kpps > 0.0)
                        .collect();
                    stats::median(&v)
                })
                .fold(f64::INFINITY, f64::min);
            for round in 1..=self.settings.runs {
                for &hub in hubs {
                    if signals::interrupted() {
                        break 'all;
                    }
                    let ms = self.latency_session(
                        sock,
                        &mut fleet,
                        &conf,
                        round,
                        hub,
                        &latency,
                        capacity * 1e3,
                    );
                    for m in ms {
                        progress(&m, out.len() + 1, total, started);
                        out.push(m);
                    }
                }
            }
        }
        Ok(out)
    }

    fn blank(&self, round: u32, peers: usize, hub: Hub, case: Case) -> Measurement {
        Measurement {
            round,
            peers,
            hub,
            case,
            metrics: Metrics::new(),
            notes: Vec::new(),
            noise: None,
            error: None,
        }
    }

    /// One hub start: storm, sweeps, memory, storm under flood.
    fn session(
        &mut self,
        sock: &UdpSock,
        fleet: &mut Fleet,
        conf: &str,
        round: u32,
        hub: Hub,
    ) -> Vec<Measurement> {
        let k = fleet.len();
        let cases = self.settings.cases.clone();
        let fail_all = |this: &Self, e: anyhow::Error| -> Vec<Measurement> {
            cases
                .iter()
                .filter(|c| c.load_fraction().is_none())
                .map(|&c| Measurement {
                    error: Some(format!("{e:#}")),
                    ..this.blank(round, k, hub, c)
                })
                .collect()
        };
        let threshold = self.settings.noise_threshold;
        let mut running =
            match RunningHub::start(hub, self.tools, &self.topo.hub, &self.hub_key, conf) {
                Ok(r) => r,
                Err(e) => return fail_all(self, e),
            };
        std::thread::sleep(Duration::from_millis(200));
        let rss_idle = running.rss();
        let mut out = Vec::new();
        // The storm always runs: the traffic needs the sessions.
        let mut m = self.blank(round, k, hub, Case::Handshake);
        let mut connected = Vec::new();
        let _ = Self::measured(threshold, &mut m, &running, |_| {
            let cpu0 = running.cpu_seconds();
            let s = fleet.storm(sock, self.settings.storm_limit, self.settings.retry)?;
            connected = s.connected.clone();
            Ok(storm_metrics(&s, k, running.cpu_seconds() - cpu0, None))
        });
        if !running.wait_idle(SETTLE_LIMIT) {
            m.notes.push(format!(
                "the hub was still busy {} s after the storm",
                SETTLE_LIMIT.as_secs()
            ));
        }
        if cases.contains(&Case::Handshake) {
            out.push(m);
        }
        for case in [
            Case::Decrypt64,
            Case::Decrypt1392,
            Case::Encrypt64,
            Case::Encrypt1392,
        ] {
            if !cases.contains(&case) {
                continue;
            }
            let mut m = self.blank(round, k, hub, case);
            if connected.is_empty() {
                m.error = Some("no peer connected in the handshake storm".to_owned());
            } else {
                let _ = Self::measured(threshold, &mut m, &running, |notes| {
                    self.sweep(sock, fleet, &running, &connected, case, notes)
                });
            }
            if let Err(e) = running.check_alive() {
                m.error.get_or_insert(format!("{e:#}"));
            }
            out.push(m);
        }
        if cases.contains(&Case::Memory) {
            let mut m = self.blank(round, k, hub, Case::Memory);
            let rss_active = running.rss();
            let per_peer =
                |rss: u64| (rss.saturating_sub(running.rss_empty)) as f64 / 1024.0 / k as f64;
            m.metrics
                .insert("empty_mib", running.rss_empty as f64 / (1024.0 * 1024.0));
            m.metrics.insert("idle_kib_per_peer", per_peer(rss_idle));
            // As read: a hub that returned memory after the traffic shows
            // less than idle, and the note says so.
            if rss_active < rss_idle {
                m.notes.push(format!(
                    "RSS after the traffic ({} KiB) is below the idle figure ({} KiB): the hub returned memory",
                    rss_active / 1024,
                    rss_idle / 1024
                ));
            }
            m.metrics
                .insert("active_kib_per_peer", per_peer(rss_active));
            out.push(m);
        }
        if cases.contains(&Case::HandshakeFlood) {
            let mut m = self.blank(round, k, hub, Case::HandshakeFlood);
            let _ = Self::measured(threshold, &mut m, &running, |_| {
                self.flood_storm(sock, fleet, &running)
            });
            if let Err(e) = running.check_alive() {
                m.error.get_or_insert(format!("{e:#}"));
            }
            out.push(m);
        }
        out
    }

    /// A storm while the hub is flooded with invalid initiations.
    fn flood_storm(&self, sock: &UdpSock, fleet: &mut Fleet, hub: &RunningHub) -> Result<Metrics> {
        let flood = Flood {
            kind: FloodKind::Initiations,
            target: hub_addr(),
            target_public: self.hub_key.public_bytes()?,
            sources: vec![FLEET_VETH],
            sockets_per_source: 64,
            rate: self.settings.flood_rate,
            duration: self.settings.storm_limit + Duration::from_secs(2),
        };
        let stop = AtomicBool::new(false);
        let fleet_ns = self.topo.fleet.name();
        std::thread::scope(|s| {
            let attack = s.spawn(|| flood.run_until(fleet_ns, &stop));
            // The hub is under the flood before the fleet reconnects.
            std::thread::sleep(Duration::from_millis(500));
            let cpu0 = hub.cpu_seconds();
            let storm = fleet.storm(sock, self.settings.storm_limit, self.settings.retry);
            let hub_cpu = hub.cpu_seconds() - cpu0;
            stop.store(true, Ordering::Relaxed);
            let sent = attack
                .join()
                .map_err(|_| anyhow::anyhow!("the flood panicked"))??;
            let storm = storm?;
            Ok(storm_metrics(&storm, fleet.len(), hub_cpu, Some(sent)))
        })
    }

    /// Sweeps one traffic case; the metrics of its best step.
    fn sweep(
        &mut self,
        sock: &UdpSock,
        fleet: &mut Fleet,
        hub: &RunningHub,
        peers: &[usize],
        case: Case,
        notes: &mut Vec<String>,
    ) -> Result<Metrics> {
        let payload = case.payload().unwrap_or(64);
        let hub_cpu = || hub.cpu_seconds();
        let seconds = self.settings.step_seconds;
        let gso = self.settings.gso;
        let lan_ns = self.topo.lan.name();
        let decrypt = matches!(case, Case::Decrypt64 | Case::Decrypt1392);
        let seq = &mut self.seq;
        let steps = self.settings.sweep.run(|rate| {
            let spec = StepSpec {
                fleet: &mut *fleet,
                sock,
                lan_ns,
                peers,
                payload,
                rate_pps: rate,
                seconds,
                gso,
                hub_cpu: &hub_cpu,
                seq0: *seq,
            };
            if decrypt {
                *seq += (rate * seconds) as u64 + 1;
                spec.decrypt()
            } else {
                spec.encrypt()
            }
        })?;
        let best = sweep::best(&steps).context("no step")?;
        let last = steps.last().unwrap_or(best);
        let mut metrics = throughput_metrics(best, payload);
        // The most delivered without loss above 1% (the rate a hub sustains).
        let clean = steps
            .iter()
            .filter(|s| s.loss() <= 0.01)
            .map(Step::delivered_pps)
            .fold(0.0, f64::max);
        metrics.insert("clean_kpps", clean / 1e3);
        let bound = last.sender_bound() && last.loss() <= self.settings.sweep.max_loss;
        metrics.insert("sender_bound", if bound { 1.0 } else { 0.0 });
        if bound {
            notes.push(format!(
                "sender-bound: the sender reached {:.0} of {:.0} kpps offered and the hub lost {:.1}%",
                last.sent_pps / 1e3,
                last.offered_pps / 1e3,
                last.loss() * 100.0
            ));
        }
        let bad: u64 = steps.iter().map(|s| s.sample_bad).sum();
        if bad > 0 {
            notes.push(format!("{bad} received datagrams failed the check"));
        }
        Ok(metrics)
    }

    /// A hub start for the latency cases: storm, then one fixed-rate
    /// decrypt step per case.
    #[allow(clippy::too_many_arguments)]
    fn latency_session(
        &mut self,
        sock: &UdpSock,
        fleet: &mut Fleet,
        conf: &str,
        round: u32,
        hub: Hub,
        cases: &[Case],
        capacity_pps: f64,
    ) -> Vec<Measurement> {
        let k = fleet.len();
        let fail = |this: &Self, e: String| -> Vec<Measurement> {
            cases
                .iter()
                .map(|&c| Measurement {
                    error: Some(e.clone()),
                    ..this.blank(round, k, hub, c)
                })
                .collect()
        };
        if !capacity_pps.is_finite() || capacity_pps <= 0.0 {
            return fail(
                self,
                "no decrypt-64 capacity to set the load from".to_owned(),
            );
        }
        let threshold = self.settings.noise_threshold;
        let running = match RunningHub::start(hub, self.tools, &self.topo.hub, &self.hub_key, conf)
        {
            Ok(r) => r,
            Err(e) => return fail(self, format!("{e:#}")),
        };
        let storm = fleet.storm(sock, self.settings.storm_limit, self.settings.retry);
        let connected = match storm {
            Ok(s) if s.established > 0 => {
                running.wait_idle(SETTLE_LIMIT);
                s.connected
            }
            Ok(_) => return fail(self, "no peer connected".to_owned()),
            Err(e) => return fail(self, format!("{e:#}")),
        };
        let mut out = Vec::new();
        for &case in cases {
            let mut m = self.blank(round, k, hub, case);
            let rate = capacity_pps * case.load_fraction().unwrap_or(0.5);
            let hub_cpu = || running.cpu_seconds();
            let seq0 = self.seq;
            self.seq += (rate * self.settings.step_seconds) as u64 + 1;
            let (lan_ns, seconds, gso) = (
                self.topo.lan.name(),
                self.settings.step_seconds,
                self.settings.gso,
            );
            let _ = Self::measured(threshold, &mut m, &running, |_| {
                let step = StepSpec {
                    fleet: &mut *fleet,
                    sock,
                    lan_ns,
                    peers: &connected,
                    payload: case.payload().unwrap_or(64),
                    rate_pps: rate,
                    seconds,
                    gso,
                    hub_cpu: &hub_cpu,
                    seq0,
                }
                .decrypt()?;
                latency_metrics(&step)
            });
            out.push(m);
        }
        out
    }

    /// Runs `f` with the noise check around it; fills `m`.
    fn measured(
        threshold: f64,
        m: &mut Measurement,
        hub: &RunningHub,
        f: impl FnOnce(&mut Vec<String>) -> Result<Metrics>,
    ) -> Option<()> {
        let before = cpu::snapshot(&[hub.pid()]).ok();
        let result = f(&mut m.notes);
        let after = cpu::snapshot(&[hub.pid()]).ok();
        if let (Some(b), Some(a)) = (before, after) {
            let noise = cpu::noise(&b, &a, threshold);
            if noise.noisy {
                m.notes.push(format!(
                    "noisy: other processes used {:.2} cores",
                    noise.other_cores
                ));
            }
            m.noise = Some(noise);
        }
        match result {
            Ok(metrics) => {
                m.metrics = metrics;
                Some(())
            }
            Err(e) => {
                m.error = Some(format!("{e:#}"));
                None
            }
        }
    }
}

/// A storm's figures; `hub_cpu` is the hub's CPU seconds during it (under
/// a flood that includes the flood's cost).
fn storm_metrics(s: &Storm, k: usize, hub_cpu: f64, flood_sent: Option<u64>) -> Metrics {
    let mut m = Metrics::new();
    m.insert("hub_cpu_s", hub_cpu);
    if hub_cpu > 0.0 && s.established > 0 {
        m.insert("hs_per_cpu_s", s.established as f64 / hub_cpu);
    }
    m.insert("seconds", s.seconds);
    m.insert("hs_per_s", s.established as f64 / s.seconds.max(1e-6));
    m.insert(
        "connected_pct",
        100.0 * s.established as f64 / k.max(1) as f64,
    );
    m.insert("cookies", s.cookies as f64);
    m.insert(
        "gen_cpu_pct",
        100.0 * s.generator_cpu_s / s.seconds.max(1e-6),
    );
    if let Some(sent) = flood_sent {
        m.insert("flood_sent", sent as f64);
    }
    m
}

fn throughput_metrics(s: &Step, payload: usize) -> Metrics {
    let mut m = Metrics::new();
    let pps = s.delivered_pps();
    let gbit = s.delivered as f64 * payload as f64 * 8.0 / 1e9;
    m.insert("kpps", pps / 1e3);
    m.insert("gbps", gbit / s.wall_s.max(1e-6));
    m.insert("loss_pct", s.loss() * 100.0);
    m.insert("offered_kpps", s.offered_pps / 1e3);
    if gbit > 0.0 {
        m.insert("hub_s_per_gbit", s.hub_cpu_s / gbit);
    }
    if s.delivered > 0 {
        m.insert("hub_s_per_mpkt", s.hub_cpu_s / (s.delivered as f64 / 1e6));
    }
    let cores = s.hub_cpu_s / s.wall_s.max(1e-6);
    if cores > 0.0 {
        m.insert("kpps_per_core", pps / cores / 1e3);
    }
    if s.sent > 0 {
        m.insert("gen_us_per_pkt", s.sender_cpu_s / s.sent as f64 * 1e6);
    }
    m
}

fn latency_metrics(s: &Step) -> Result<Metrics> {
    let h = s.latency_ns.as_ref().context("no latency histogram")?;
    anyhow::ensure!(!h.is_empty(), "no probe came through");
    let mut m = Metrics::new();
    m.insert("p50_us", h.value_at_quantile(0.5) as f64 / 1e3);
    m.insert("p99_us", h.value_at_quantile(0.99) as f64 / 1e3);
    m.insert("p999_us", h.value_at_quantile(0.999) as f64 / 1e3);
    m.insert("rate_kpps", s.offered_pps / 1e3);
    m.insert("loss_pct", s.loss() * 100.0);
    Ok(m)
}

fn progress(m: &Measurement, n: usize, total: usize, started: Instant) {
    let summary = if let Some(e) = &m.error {
        format!("FAILED: {}", e.lines().next().unwrap_or(""))
    } else {
        m.case
            .metrics()
            .iter()
            .take(2)
            .filter_map(|metric| {
                let v = m.metrics.get(metric.key)?;
                Some(format!(
                    "{} {} {}",
                    metric.label,
                    crate::harness::runner::fmt_value(*v),
                    metric.unit
                ))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let notes = if m.notes.is_empty() {
        String::new()
    } else {
        format!(" [{}]", m.notes.join("; "))
    };
    eprintln!(
        "[{n:>3}/{total}] {:>5.0} s  K={:<6} run {} {:<15} {:<12} {summary}{notes}",
        started.elapsed().as_secs_f64(),
        m.peers,
        m.round,
        m.case.name(),
        m.hub.name(),
    );
}
