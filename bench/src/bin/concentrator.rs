//! concentrator: a WireGuard hub under test (corewire with one and with all
//! workers, wireguard-go, boringtun, gotatun) against a load generator that
//! plays K peers, in network namespaces (root; see `docs/benchmarks.md`).
//!
//! ```sh
//! cargo build --release -p corewire -p corewire-bench
//! sudo target/release/concentrator            # the full run
//! sudo target/release/concentrator --quick    # K up to 1000, short phases
//! ```
//!
//! The benchmark itself lives in `bench/src/concentrator/` (topology drawing
//! in its module doc).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;

use corewire_bench::concentrator::cases::Case;
use corewire_bench::concentrator::hubs::{self, Hub};
use corewire_bench::concentrator::report::Report;
use corewire_bench::concentrator::runner::{Runner, Settings};
use corewire_bench::concentrator::sweep::Sweep;
use corewire_bench::concentrator::topology::{Topology, MAX_PEERS};
use corewire_bench::concentrator::traffic::MIN_PAYLOAD;
use corewire_bench::harness::cli::{self, dedup};
use corewire_bench::harness::machine::Machine;
use corewire_bench::harness::preflight;
use corewire_testkit::{signals, sweep_stale, Keypair, WgImpl};

/// Measures WireGuard hubs serving K peers: handshake storms (also under a
/// flood of invalid initiations), decrypt (fleet -> LAN) and encrypt
/// (LAN -> fleet) swept to saturation at 64 and 1392-byte payloads, latency
/// at equal load, and memory per peer. Needs root.
#[derive(Debug, Parser)]
#[command(name = "concentrator", version)]
struct Args {
    /// Short phases and K in {1, 100, 1000}, one round: a smoke test of the
    /// harness in under 3 minutes (explicit options still apply).
    #[arg(long)]
    quick: bool,

    /// Rounds; every hub runs every case once per round and K.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: Option<u32>,

    /// Peer counts, comma-separated [default: 1,100,1000,10000; quick:
    /// 1,100,1000]. Up to 131070 (the /15 of endpoint addresses).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<usize>>,

    /// Hubs, comma-separated: corewire-1w (one worker), corewire (one per
    /// core), wireguard-go, boringtun, gotatun.
    #[arg(long, value_delimiter = ',', value_parser = parse_hub,
          default_value = "corewire-1w,corewire,wireguard-go,boringtun,gotatun")]
    hubs: Vec<Hub>,

    /// Cases, comma-separated: handshake, handshake-flood, decrypt-64,
    /// decrypt-1392, encrypt-64, encrypt-1392, latency-50, latency-90,
    /// memory (the latency cases need decrypt-64).
    #[arg(long, value_delimiter = ',', value_parser = parse_case,
          default_value = "handshake,decrypt-64,decrypt-1392,encrypt-64,encrypt-1392,memory,handshake-flood,latency-50,latency-90")]
    cases: Vec<Case>,

    /// Seconds per sweep step and latency measurement [default: 0.5; quick: 0.2].
    #[arg(long)]
    step_seconds: Option<f64>,

    /// The first offered rate of a sweep, packets per second [default: 20000; quick: 50000].
    #[arg(long)]
    sweep_start: Option<f64>,

    /// Each sweep step offers this many times the previous [default: 2; quick: 4].
    #[arg(long)]
    sweep_factor: Option<f64>,

    /// Most steps per sweep [default: 8; quick: 3].
    #[arg(long)]
    sweep_steps: Option<usize>,

    /// Datagrams per GSO burst of one peer (1: no GSO).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    gso: u16,

    /// Seconds a handshake storm may take [default: 30; quick: 3].
    #[arg(long)]
    storm_limit: Option<u64>,

    /// Invalid initiations (valid mac1) per second in handshake-flood.
    #[arg(long, default_value_t = 50_000)]
    flood_rate: u64,

    /// A measurement is flagged noisy when other processes used more than
    /// this many cores on average during it.
    #[arg(long, default_value_t = 0.10)]
    noise_threshold: f64,

    /// Output directory [default: bench-results/<UTC timestamp>/].
    #[arg(long)]
    out: Option<PathBuf>,

    /// The corewire binary [default: target/release/corewire].
    #[arg(long)]
    corewire: Option<PathBuf>,
}

fn parse_hub(s: &str) -> Result<Hub, String> {
    Hub::parse(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Hub::ALL.iter().map(|h| h.name()).collect();
        format!("unknown hub {s:?} (one of {})", names.join(", "))
    })
}

fn parse_case(s: &str) -> Result<Case, String> {
    Case::parse(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
        format!("unknown case {s:?} (one of {})", names.join(", "))
    })
}

impl Args {
    fn settings(&self) -> Result<Settings> {
        let q = self.quick;
        let mut peers = dedup(&self.peers.clone().unwrap_or_else(|| {
            if q {
                vec![1, 100, 1000]
            } else {
                vec![1, 100, 1000, 10_000]
            }
        }));
        peers.sort_unstable();
        anyhow::ensure!(
            peers.iter().all(|&k| (1..=MAX_PEERS).contains(&k)),
            "--peers: each count must be 1..={MAX_PEERS}"
        );
        let step_seconds = self.step_seconds.unwrap_or(if q { 0.2 } else { 0.5 });
        anyhow::ensure!(
            (0.05..=60.0).contains(&step_seconds),
            "--step-seconds must be 0.05..=60"
        );
        let sweep = Sweep {
            start_pps: self
                .sweep_start
                .unwrap_or(if q { 50_000.0 } else { 20_000.0 }),
            factor: self.sweep_factor.unwrap_or(if q { 4.0 } else { 2.0 }),
            steps: self.sweep_steps.unwrap_or(if q { 3 } else { 8 }),
            max_loss: 0.05,
        };
        anyhow::ensure!(
            sweep.start_pps >= 100.0 && sweep.factor > 1.0 && sweep.steps >= 1,
            "invalid sweep"
        );
        anyhow::ensure!(
            self.noise_threshold.is_finite() && self.noise_threshold >= 0.0,
            "--noise-threshold must be >= 0"
        );
        let mut cases = dedup(&self.cases);
        if cases.iter().any(|c| c.load_fraction().is_some()) && !cases.contains(&Case::Decrypt64) {
            cases.push(Case::Decrypt64);
        }
        const _: () = assert!(MIN_PAYLOAD <= 64);
        Ok(Settings {
            runs: self.runs.unwrap_or(if q { 1 } else { 3 }),
            peer_counts: peers,
            cases,
            step_seconds,
            sweep,
            gso: usize::from(self.gso),
            storm_limit: Duration::from_secs(self.storm_limit.unwrap_or(if q { 3 } else { 30 })),
            retry: Duration::from_secs(1),
            flood_rate: self.flood_rate,
            noise_threshold: self.noise_threshold,
            fd_limit: 0,
        })
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("concentrator: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let mut settings = args.settings()?;
    let hubs = dedup(&args.hubs);
    let mut daemons: Vec<WgImpl> = hubs.iter().map(|h| h.wg()).collect();
    daemons.dedup();
    let tools = preflight::check_for("concentrator", &daemons, false, args.corewire.clone())?;
    if cfg!(debug_assertions) {
        eprintln!(
            "concentrator: warning: this is a debug build; the generator runs in it, so use \
             --release for real numbers"
        );
    }
    signals::install().context("installing the Ctrl-C handler")?;
    settings.fd_limit = hubs::raise_fd_limit();
    sweep_stale(Duration::ZERO);
    let (started_utc, default_out) = cli::started_now();
    let out_dir = args.out.clone().unwrap_or(default_out);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let machine = Machine::describe_daemons(&tools, &daemons);
    eprintln!(
        "concentrator: {} vCPUs ({}), kernel {}; hubs {}; K {:?}; {} round(s); open-file limit {}{}",
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        hubs.iter().map(|h| h.name()).collect::<Vec<_>>().join(", "),
        settings.peer_counts,
        settings.runs,
        settings.fd_limit,
        if args.quick { " (quick)" } else { "" }
    );
    let started = Instant::now();
    let measurements = {
        let topo = Topology::create().context("creating the namespaces")?;
        let hub_key = Keypair::generate().context("generating the hub's key")?;
        let mut runner = Runner::new(&topo, &tools, hub_key, settings.clone());
        runner.run_all(&hubs)?
    };
    let interrupted = signals::interrupted();
    let report = Report {
        machine: &machine,
        command,
        started_utc,
        wall_s: started.elapsed().as_secs_f64(),
        interrupted,
        settings: &settings,
        hubs: &hubs,
        measurements: &measurements,
    };
    let written = report.write(&out_dir)?;
    let detail = format!(
        "{} of {} measurements failed",
        report.failed_count(),
        measurements.len()
    );
    let failed = report.failed_count() > 0 || measurements.is_empty();
    Ok(cli::conclude(
        "concentrator",
        &written,
        &detail,
        failed,
        interrupted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_defaults_and_overrides() {
        let a = Args::try_parse_from(["concentrator", "--quick", "--peers", "100,1,100"])
            .expect("valid");
        let s = a.settings().expect("valid settings");
        assert_eq!(s.peer_counts, [1, 100]);
        assert_eq!(s.runs, 1);
        assert!(s.step_seconds < 1.0);
        let a = Args::try_parse_from(["concentrator", "--cases", "latency-90"]).expect("valid");
        let s = a.settings().expect("valid settings");
        assert_eq!(s.cases, [Case::Latency90, Case::Decrypt64]);
        assert!(Args::try_parse_from(["concentrator", "--hubs", "kernel"]).is_err());
        let a = Args::try_parse_from(["concentrator", "--peers", "0"]).expect("parses");
        assert!(a.settings().is_err());
    }
}
