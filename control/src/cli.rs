//! Command-line interface of the `corewire` binary.
//!
//! Two forms share one parser:
//! - key tools, byte-compatible with `wg genkey`, `wg pubkey` and `wg genpsk`;
//! - the daemon, `corewire [-f|--foreground] [--threads N] [--pin]
//!   [--steering ebpf|classic|off] [--xdp IFACE] IFNAME`, in the manner of
//!   `wireguard-go`. The steering and XDP choices also come from the
//!   environment (`COREWIRE_STEERING`, `COREWIRE_XDP`), which is how
//!   wg-quick users set them.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::stats::{MetricsAddr, PeerLimit};

/// corewire: userspace WireGuard for Linux gateways.
#[derive(Debug, Parser)]
#[command(
    name = "corewire",
    version,
    about = "corewire: userspace WireGuard for Linux gateways",
    long_about = "corewire: userspace WireGuard for Linux gateways.\n\n\
                  `corewire IFNAME` creates interface IFNAME and serves it, \
                  configured with `wg` or `wg-quick` (set \
                  WG_QUICK_USERSPACE_IMPLEMENTATION=corewire). Without -f it \
                  returns once the interface and its UAPI socket exist. The key \
                  commands are byte-compatible with `wg genkey`, `wg pubkey` and \
                  `wg genpsk`.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// A key command; without one, corewire runs as the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Daemon arguments (used when no subcommand is given).
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// The key commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new random private key in base64 (like `wg genkey`).
    Genkey,
    /// Read a base64 private key on stdin and print its public key (like `wg pubkey`).
    Pubkey,
    /// Print a new random preshared key in base64 (like `wg genpsk`).
    Genpsk,
    /// Show the live counters of a running corewire interface (root).
    Stats(StatsArgs),
}

/// Arguments of `corewire stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON (every counter, per worker and in total) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Peers to show: the N with the most traffic, or `all`.
    #[arg(long, value_name = "N|all", default_value = "10")]
    pub peers: PeerLimit,

    /// Show counters that are zero too.
    #[arg(long)]
    pub all: bool,

    /// The interface.
    #[arg(value_name = "IFNAME")]
    pub ifname: String,
}

impl Command {
    /// The name used on the command line, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Genkey => "genkey",
            Command::Pubkey => "pubkey",
            Command::Genpsk => "genpsk",
            Command::Stats(_) => "stats",
        }
    }
}

/// Arguments of the daemon form.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Stay in the foreground instead of detaching.
    #[arg(short, long)]
    pub foreground: bool,

    /// Number of worker threads, default one per core.
    #[arg(long, value_name = "N", env = "COREWIRE_THREADS")]
    pub threads: Option<NonZeroUsize>,

    /// Pin worker i to core i. For a machine that runs this one interface and little else: two pinned instances on one machine cannot move their busy workers apart.
    #[arg(long, env = "COREWIRE_PIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub pin: bool,

    /// How packets are put on the worker that owns their peer: `ebpf` (datagrams and TUN packets, falling back to `classic` for datagrams where the kernel refuses eBPF), `classic` (a classic-BPF reuseport filter for datagrams only), `off` (none). What is not steered is handed between workers.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        env = "COREWIRE_STEERING",
        default_value = "ebpf"
    )]
    pub steering: Steering,

    /// The old spelling of `--steering off`.
    #[arg(long, hide = true, conflicts_with = "steering")]
    pub no_ebpf: bool,

    /// Guard uplink IFACE with an XDP program that drops malformed and unknown-session datagrams to corewire's port before the stack sees them (native XDP where the driver has it, generic otherwise).
    #[arg(long, value_name = "IFACE", env = "COREWIRE_XDP")]
    pub xdp: Option<String>,

    /// Serve Prometheus metrics at ADDR: PORT (on 127.0.0.1), IP:PORT, or
    /// unix:/PATH. Off unless given.
    #[arg(long, value_name = "ADDR", env = "COREWIRE_METRICS")]
    pub metrics: Option<MetricsAddr>,

    /// Per-peer series on the metrics endpoint: the N busiest peers, or `all`.
    #[arg(
        long,
        value_name = "N|all",
        env = "COREWIRE_METRICS_PEERS",
        default_value = "0"
    )]
    pub metrics_peers: PeerLimit,

    /// Name peers after the `# Name = ...` comments of this wg-quick
    /// configuration file.
    #[arg(long, value_name = "FILE", env = "COREWIRE_PEER_NAMES")]
    pub peer_names: Option<PathBuf>,

    /// Log a counters summary (info level) every MINUTES; 0 turns it off.
    #[arg(
        long,
        value_name = "MINUTES",
        env = "COREWIRE_LOG_SUMMARY",
        default_value = "5"
    )]
    pub log_summary: u64,

    /// More log output (-v debug, -vv trace); overrides LOG_LEVEL.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Interface to create and serve.
    #[arg(value_name = "IFNAME", required = true)]
    pub ifname: Option<String>,

    /// Anything after the interface name: refused with a message (one
    /// process serves one interface).
    #[arg(hide = true, num_args = 0..)]
    pub extra: Vec<String>,
}

impl DaemonArgs {
    /// What is wrong with the arguments that the parser lets through.
    pub fn problem(&self) -> Option<String> {
        let ifname = self.ifname.as_deref()?;
        let more = self.extra.first()?;
        Some(format!(
            "one corewire process serves one interface: got {ifname:?} and {more:?}; \
             start one corewire per interface (wg-quick does, one per config)"
        ))
    }
}

/// `--steering`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Steering {
    /// eBPF for datagrams and TUN packets (classic filter as the fallback).
    Ebpf,
    /// The classic-BPF reuseport filter for datagrams only.
    Classic,
    /// No kernel steering.
    Off,
}

impl DaemonArgs {
    /// The steering asked for, `--no-ebpf` included.
    pub fn steering(&self) -> Steering {
        if self.no_ebpf {
            Steering::Off
        } else {
            self.steering
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_and_daemon_form_parse() {
        let cli = Cli::try_parse_from(["corewire", "genkey"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Genkey)));

        let cli = Cli::try_parse_from([
            "corewire",
            "-f",
            "--threads",
            "4",
            "--no-ebpf",
            "--pin",
            "wg0",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert!(cli.daemon.foreground);
        assert_eq!(cli.daemon.threads.map(NonZeroUsize::get), Some(4));
        assert_eq!(cli.daemon.steering(), Steering::Off);
        assert!(cli.daemon.pin);
        assert_eq!(cli.daemon.ifname.as_deref(), Some("wg0"));
        // Unpinned unless asked.
        assert!(!Cli::try_parse_from(["corewire", "wg0"]).unwrap().daemon.pin);
        let cli =
            Cli::try_parse_from(["corewire", "--steering", "classic", "--xdp", "eth0", "wg0"])
                .unwrap();
        assert_eq!(cli.daemon.steering(), Steering::Classic);
        assert_eq!(cli.daemon.xdp.as_deref(), Some("eth0"));
        assert!(Cli::try_parse_from(["corewire", "--steering", "sideways", "wg0"]).is_err());
        assert!(
            Cli::try_parse_from(["corewire", "--steering", "ebpf", "--no-ebpf", "wg0"]).is_err()
        );
    }

    #[test]
    fn a_second_interface_name_is_explained() {
        let cli = Cli::try_parse_from(["corewire", "wg0", "wg1"]).unwrap();
        let why = cli.daemon.problem().unwrap();
        assert!(
            why.contains("one corewire process serves one interface"),
            "{why}"
        );
        let cli = Cli::try_parse_from(["corewire", "wg0", "-f"]).unwrap();
        assert!(cli.daemon.foreground && cli.daemon.problem().is_none());
    }

    #[test]
    fn stats_and_metrics_options_parse() {
        let cli =
            Cli::try_parse_from(["corewire", "stats", "--json", "--peers", "all", "wg0"]).unwrap();
        let Some(Command::Stats(a)) = cli.command else {
            panic!("not stats");
        };
        assert!(a.json);
        assert_eq!(a.peers, PeerLimit::All);
        assert_eq!(a.ifname, "wg0");
        let cli = Cli::try_parse_from([
            "corewire",
            "--metrics",
            "9586",
            "--metrics-peers",
            "50",
            "wg0",
        ])
        .unwrap();
        assert_eq!(
            cli.daemon.metrics,
            Some(MetricsAddr::Tcp("127.0.0.1:9586".parse().unwrap()))
        );
        assert_eq!(cli.daemon.metrics_peers, PeerLimit::Top(50));
        let cli =
            Cli::try_parse_from(["corewire", "--metrics", "unix:/run/m.sock", "wg0"]).unwrap();
        assert_eq!(
            cli.daemon.metrics,
            Some(MetricsAddr::Unix("/run/m.sock".into()))
        );
        assert!(Cli::try_parse_from(["corewire", "--metrics", "nonsense", "wg0"]).is_err());
    }

    #[test]
    fn daemon_flags_need_an_interface() {
        assert!(Cli::try_parse_from(["corewire", "-f"]).is_err());
        assert!(Cli::try_parse_from(["corewire", "--threads", "0", "wg0"]).is_err());
    }

    #[test]
    fn subcommands_take_no_daemon_flags() {
        // After a daemon flag, a word is the interface name, not a subcommand.
        let cli = Cli::try_parse_from(["corewire", "-f", "genkey"]).unwrap();
        assert!(cli.command.is_none());
        assert!(Cli::try_parse_from(["corewire", "genkey", "-f"]).is_err());
        assert!(Cli::try_parse_from(["corewire", "pubkey", "extra"]).is_err());
    }
}
