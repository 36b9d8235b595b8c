//! The daemon: `corewire [-f] [--threads N] [--pin] [--steering MODE] [--xdp IFACE] IFNAME`.
//!
//! Startup order matters. We fork first (while single-threaded), block the
//! termination signals (so worker threads inherit the mask), create the TUN
//! device, start the engine, bind the UAPI socket, and only then report
//! readiness to the waiting parent. The control thread then polls a
//! signalfd, a netlink socket watching our link, the UAPI listener and
//! every UAPI connection together (none of them can hold it up). It leaves, removing its socket, when a signal arrives, when
//! the link is deleted (`wg-quick down` does `ip link del`), or when its
//! socket file is deleted or replaced.

mod detach;
mod notify;
mod signals;

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corewire_dataplane::engine::device::{Engine, EngineOptions};
use corewire_dataplane::engine::netlink::{LinkEvent, LinkMonitor};
use corewire_dataplane::engine::steer::SteeringMode;
use corewire_dataplane::engine::tun::Tun;

use crate::cli::{DaemonArgs, Steering};
use crate::config::DeviceConfig;
use crate::stats::{StatsOptions, StatsService};
use crate::uapi::server::{poll, UapiServer, SOCKET_DIR};
use detach::Readiness;
use signals::Signals;

/// How often the control loop checks that its socket file is still there.
const SOCKET_CHECK: Duration = Duration::from_millis(500);

/// Runs the daemon; returns the process exit status.
pub fn run(args: &DaemonArgs) -> std::process::ExitCode {
    let Some(ifname) = args.ifname.clone() else {
        eprintln!("corewire: no interface name given (usage: corewire [-f] IFNAME)");
        return std::process::ExitCode::FAILURE;
    };
    if let Some(problem) = args.problem() {
        eprintln!("corewire: {problem}");
        return std::process::ExitCode::FAILURE;
    }
    let mut ready = if args.foreground {
        Readiness::foreground()
    } else {
        match detach::daemonize() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("corewire: cannot start the daemon: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    };
    // With LOG_LEVEL set (as wireguard-go), the daemon keeps logging to
    // the launcher's stderr once it is ready (under wg-quick@.service that
    // is the journal); otherwise stdio is detached entirely.
    ready.keep_stderr(log_level_set());
    init_logging(args.verbose, args.foreground);
    let opts = stats_options(args);
    match serve(args, &ifname, &opts, &mut ready) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            // Setup failed before readiness: one line, from the launcher
            // (or from us in the foreground).
            ready.fail(&format!("{e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `LOG_LEVEL` asks for log output (anything but `silent`).
fn log_level_set() -> bool {
    std::env::var("LOG_LEVEL").is_ok_and(|v| !v.is_empty() && v != "silent")
}

/// The stats and metrics options (flags, or their environment variables).
fn stats_options(args: &DaemonArgs) -> StatsOptions {
    StatsOptions {
        metrics: args.metrics.clone(),
        metrics_peers: args.metrics_peers,
        peer_names: args.peer_names.clone(),
        summary_every: (args.log_summary > 0)
            .then(|| Duration::from_secs(args.log_summary.saturating_mul(60))),
    }
}

fn init_logging(verbose: u8, foreground: bool) {
    // LOG_LEVEL as wireguard-go: verbose|debug, error, silent. Unset: info
    // in the foreground (a terminal, the journal); warnings only when
    // launched by wg-quick, whose output users read.
    let from_env = match std::env::var("LOG_LEVEL").as_deref() {
        Ok("verbose") | Ok("debug") => Some(tracing::Level::DEBUG),
        Ok("error") => Some(tracing::Level::ERROR),
        Ok("silent") => None,
        _ if foreground => Some(tracing::Level::INFO),
        _ => Some(tracing::Level::WARN),
    };
    let level = match verbose {
        0 => from_env,
        1 => Some(tracing::Level::DEBUG),
        _ => Some(tracing::Level::TRACE),
    };
    if let Some(level) = level {
        use tracing_subscriber::filter::{LevelFilter, Targets};
        use tracing_subscriber::prelude::*;
        // Our own crates at the level asked for; libraries (aya's loader
        // narrates every map relocation at debug) at warnings, unless -vv.
        let ours = LevelFilter::from_level(level);
        let theirs = if verbose >= 2 {
            ours
        } else {
            ours.min(LevelFilter::WARN)
        };
        let filter = Targets::new()
            .with_default(theirs)
            .with_target("corewire", ours)
            .with_target("corewire_dataplane", ours)
            .with_target("corewire_ebpf", ours);
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false);
        let _ = tracing_subscriber::registry()
            .with(fmt)
            .with(filter)
            .try_init();
    }
}

/// Sets up and serves; `Ok(false)` when it stopped because something
/// failed after it was ready (already reported).
fn serve(
    args: &DaemonArgs,
    ifname: &str,
    stats_opts: &StatsOptions,
    ready: &mut Readiness,
) -> Result<bool> {
    let signals = Signals::block().context("blocking signals")?;
    let threads = args
        .threads
        .map(|n| n.get())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let tun = Tun::create(ifname, threads)?;
    let ifindex = tun.ifindex();
    let mut monitor = LinkMonitor::new(ifindex).context("watching the link over netlink")?;
    let opts = EngineOptions {
        threads,
        pin: args.pin,
        steering: match args.steering() {
            Steering::Ebpf => SteeringMode::Ebpf,
            Steering::Classic => SteeringMode::Classic,
            Steering::Off => SteeringMode::Off,
        },
        xdp: args.xdp.clone(),
    };
    let mut engine = Engine::start(tun, &opts).context("starting the workers")?;
    let mut uapi = UapiServer::bind(Path::new(SOCKET_DIR), ifname)
        .with_context(|| format!("creating the UAPI socket in {SOCKET_DIR}"))?;
    let stats = StatsService::start(
        engine.published(),
        engine.steering(),
        Path::new(SOCKET_DIR),
        ifname,
        stats_opts,
    )
    .context("starting the stats socket and metrics endpoint")?;
    let mut config = DeviceConfig::new();
    tracing::info!(
        ifname,
        workers = engine.workers(),
        "interface up; UAPI at {}",
        uapi.path().display()
    );
    if let Some(url) = stats.metrics_url() {
        tracing::info!("Prometheus metrics at {url}");
    }
    ready.ready();
    notify::ready();

    let stop = control_loop(&mut engine, &mut uapi, &mut config, &mut monitor, &signals);
    notify::stopping();
    drop(uapi);
    drop(stats);
    match stop {
        Stop::Asked(reason) => {
            tracing::info!("stopping: {reason}");
            engine.shutdown();
            Ok(true)
        }
        Stop::Failed(reason) => {
            tracing::error!("stopping: {reason}");
            eprintln!("corewire: stopping: {reason}");
            engine.shutdown();
            Ok(false)
        }
    }
}

/// Gives the memory a UAPI request freed back to the system. A bulk `wg
/// addconf` builds the request, the new configuration and the change list
/// (several times the peers' final size) on this thread; mimalloc would
/// otherwise keep that peak resident, since this thread then sleeps in
/// poll and never reaches its lazy purge.
fn release_freed_memory() {
    // SAFETY: mi_collect only walks this thread's heap and the abandoned
    // segments; it is safe to call at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Why the daemon stops.
#[derive(Debug)]
enum Stop {
    /// As asked: a signal, the interface or its socket removed.
    Asked(String),
    /// Because something failed (a worker, polling, the UAPI socket): the
    /// process exits non-zero, so a supervisor (systemd's
    /// `Restart=on-failure`) sees it.
    Failed(String),
}

/// Serves until there is a reason to stop, and returns it.
fn control_loop(
    engine: &mut Engine,
    uapi: &mut UapiServer,
    config: &mut DeviceConfig,
    monitor: &mut LinkMonitor,
    signals: &Signals,
) -> Stop {
    let mut fds = Vec::new();
    loop {
        fds.clear();
        fds.push(pollfd(monitor.as_raw_fd()));
        fds.push(pollfd(signals.fd()));
        uapi.pollfds(&mut fds);
        let timeout = uapi
            .next_timeout(Instant::now())
            .map_or(SOCKET_CHECK, |t| t.min(SOCKET_CHECK));
        if let Err(e) = poll(&mut fds, timeout) {
            return Stop::Failed(format!("poll failed: {e}"));
        }
        if fds[1].revents != 0 {
            match signals.take() {
                // What `corewire stats` exports, on one line (key=value).
                Some(libc::SIGUSR1) => log_steering(engine),
                Some(sig) => return Stop::Asked(format!("signal {sig}")),
                None => {}
            }
        }
        if fds[0].revents != 0 {
            match monitor.poll_events() {
                Ok(events) => {
                    for ev in events {
                        match ev {
                            LinkEvent::Mtu(mtu) => {
                                tracing::info!(mtu, "MTU changed");
                                engine.set_mtu(mtu);
                            }
                            LinkEvent::Deleted => {
                                return Stop::Asked("the interface was deleted".into())
                            }
                            LinkEvent::Up | LinkEvent::Down => {}
                        }
                    }
                }
                Err(e) => tracing::warn!("netlink: {e}"),
            }
        }
        // Every UAPI connection is served as far as it goes without
        // waiting, so signals and link events are seen within one turn.
        match uapi.service(fds[2].revents != 0, engine, config) {
            Ok(true) => release_freed_memory(),
            Ok(false) => {}
            Err(e) => return Stop::Failed(format!("the UAPI socket failed: {e}")),
        }
        if !uapi.socket_file_intact() {
            return Stop::Asked("the UAPI socket file was removed".into());
        }
        if let Some(why) = engine.failure() {
            return Stop::Failed(why);
        }
    }
}

/// Logs each worker's handoffs (from their published counters) and the
/// steering programs' counters (read from their maps), on one line of
/// `key=value` pairs; per-worker values are comma-separated by worker.
fn log_steering(engine: &Engine) {
    let workers = engine.published().workers();
    let per_worker = |field: &str| {
        workers
            .iter()
            .map(|w| w.counter(field).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    tracing::info!(
        "steering counters: handed_udp={} handed_tun={} {}",
        per_worker("handed_udp"),
        per_worker("handed_tun"),
        engine.steering_stats()
    );
}
