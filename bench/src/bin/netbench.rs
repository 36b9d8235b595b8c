//! netbench: corewire against wireguard-go, boringtun, gotatun and the bare
//! veth, in network namespaces, in one run (root; see `docs/benchmarks.md`).
//!
//! ```sh
//! cargo build --release -p corewire
//! cargo run --release -p corewire-bench --bin netbench -- --runs 3 --seconds 5
//! ```
//!
//! The harness itself lives in `bench/src/harness/` (topology drawing in its
//! module doc).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;

use corewire_bench::harness;
use corewire_bench::harness::cases::Case;
use corewire_bench::harness::cli::{self, dedup};
use corewire_bench::harness::impls::Impl;
use corewire_bench::harness::machine::Machine;
use corewire_bench::harness::preflight;
use corewire_bench::harness::report::Report;
use corewire_bench::harness::rtt::EchoServer;
use corewire_bench::harness::runner::{Bench, Settings};
use corewire_bench::harness::topology::Topology;
use corewire_testkit::{signals, sweep_stale, Keypair};

/// Measures corewire against its peers over a veth pair between two network
/// namespaces: TCP and UDP throughput, packets per second, round-trip time
/// idle and under load, and CPU seconds per gigabit. Needs root.
#[derive(Debug, Parser)]
#[command(name = "netbench", version)]
struct Args {
    /// Rounds; each case runs once per implementation per round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,

    /// Implementations, comma-separated: corewire, wireguard-go, boringtun,
    /// gotatun, veth (the bare link).
    #[arg(long, value_delimiter = ',', value_parser = parse_impl,
          default_value = "corewire,wireguard-go,boringtun,gotatun,veth")]
    impls: Vec<Impl>,

    /// Cases, comma-separated: tcp-1, tcp-4, udp-1392, udp-64, rtt-idle, rtt-load.
    #[arg(long, value_delimiter = ',', value_parser = parse_case,
          default_value = "tcp-1,tcp-4,udp-1392,udp-64,rtt-idle,rtt-load")]
    cases: Vec<Case>,

    /// Length of each measurement in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=600))]
    seconds: u32,

    /// Output directory [default: bench-results/<UTC timestamp>/].
    #[arg(long)]
    out: Option<PathBuf>,

    /// A measurement is flagged noisy when other processes used more than
    /// this many cores on average during it.
    #[arg(long, default_value_t = 0.10)]
    noise_threshold: f64,

    /// Microseconds between RTT pings.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=1_000_000))]
    rtt_interval_us: u64,

    /// corewire's ends run the XDP guard on their veth (`--xdp`), which drops
    /// malformed and unknown-index datagrams before the stack: run the
    /// flood cases with and without it to see what it saves.
    #[arg(long)]
    corewire_xdp: bool,

    /// The corewire binary [default: target/release/corewire].
    #[arg(long)]
    corewire: Option<PathBuf>,

    /// Measure nothing: render the report in DIR again from its
    /// results.json (after a change to the report code).
    #[arg(long, value_name = "DIR")]
    render: Option<PathBuf>,
}

fn parse_impl(s: &str) -> Result<Impl, String> {
    Impl::parse(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Impl::ALL.iter().map(|i| i.name()).collect();
        format!("unknown implementation {s:?} (one of {})", names.join(", "))
    })
}

fn parse_case(s: &str) -> Result<Case, String> {
    Case::parse(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
        format!("unknown case {s:?} (one of {})", names.join(", "))
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netbench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--render DIR`: the report files again from `DIR/results.json`.
fn render_again(dir: &std::path::Path) -> Result<ExitCode> {
    let path = dir.join("results.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let loaded = harness::report::load(&text).with_context(|| format!("{}", path.display()))?;
    let report = Report {
        machine: &loaded.machine,
        command: loaded.command.clone(),
        started_utc: loaded.started_utc.clone(),
        wall_s: loaded.wall_s,
        interrupted: loaded.interrupted,
        settings: &loaded.settings,
        impls: &loaded.impls,
        cases: &loaded.cases,
        measurements: &loaded.measurements,
    };
    let written = report.write_views(dir)?;
    eprintln!(
        "netbench: rendered {} and {} again",
        written.markdown.display(),
        written.svg.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run(args: Args) -> Result<ExitCode> {
    if let Some(dir) = &args.render {
        return render_again(dir);
    }
    let impls = dedup(&args.impls);
    let cases = dedup(&args.cases);
    anyhow::ensure!(
        args.noise_threshold.is_finite() && args.noise_threshold >= 0.0,
        "--noise-threshold must be a number >= 0"
    );
    let tools = preflight::check(&impls, args.corewire.clone())?;
    if cfg!(debug_assertions) {
        eprintln!(
            "netbench: warning: this is a debug build; the RTT client and echo server run in \
             it, so use --release for real numbers"
        );
    }
    signals::install().context("installing the Ctrl-C handler")?;
    // Namespaces of killed runs (netbench's or the tests'), whatever their
    // age: their daemons would compete with the measurements.
    sweep_stale(Duration::ZERO);

    let (started_utc, default_out) = cli::started_now();
    let out_dir = args.out.clone().unwrap_or(default_out);
    let settings = Settings {
        runs: args.runs,
        seconds: args.seconds,
        noise_threshold: args.noise_threshold,
        rtt_interval: Duration::from_micros(args.rtt_interval_us),
        corewire_xdp: args.corewire_xdp,
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let machine = Machine::describe(&tools, &impls);
    let total = settings.runs as usize * cases.len() * impls.len();
    eprintln!(
        "netbench: {} vCPUs ({}), kernel {}; {} measurements of {} s ({} runs × {} cases × {} \
         implementations), about {:.0} min",
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        total,
        settings.seconds,
        settings.runs,
        cases.len(),
        impls.len(),
        total as f64 * (f64::from(settings.seconds) + 3.0) / 60.0
    );

    let started = Instant::now();
    let measurements = {
        // Guards: dropped (processes stopped, namespaces deleted, files
        // removed) at the end of this block, also on an error.
        let keys = (
            Keypair::generate().context("generating keys")?,
            Keypair::generate().context("generating keys")?,
        );
        let topo = Topology::create().context("creating the namespaces")?;
        let _echo = EchoServer::start(&topo.b).context("starting the echo server")?;
        let mut bench = Bench::new(&topo, &tools, keys, settings.clone());
        bench.run_all(&impls, &cases)
    };
    let interrupted = signals::interrupted();

    let report = Report {
        machine: &machine,
        command,
        started_utc,
        wall_s: started.elapsed().as_secs_f64(),
        interrupted,
        settings: &settings,
        impls: &impls,
        cases: &cases,
        measurements: &measurements,
    };
    let written = report.write(&out_dir)?;
    let detail = format!(
        "{} of {} measurements noisy, {} failed",
        report.noisy_count(),
        measurements.len(),
        report.failed_count()
    );
    Ok(cli::conclude(
        "netbench",
        &written,
        &detail,
        report.failed_count() > 0,
        interrupted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from([
            "netbench",
            "--impls",
            "veth,corewire",
            "--cases",
            "rtt-idle",
        ])
        .expect("valid arguments");
        assert_eq!(a.impls, [Impl::Veth, Impl::Corewire]);
        assert_eq!(a.cases, [Case::RttIdle]);
        assert!(Args::try_parse_from(["netbench", "--impls", "kernel"]).is_err());
        assert!(Args::try_parse_from(["netbench", "--runs", "0"]).is_err());
    }
}
