//! Reading the running daemon's figures from outside: the stats socket
//! (`/var/run/wireguard/IFNAME.stats`, root only, read by `corewire stats`),
//! the opt-in Prometheus endpoint (`--metrics`), and a counters summary in
//! the log every few minutes.
//!
//! All of it runs on threads of its own and reads what the workers
//! publish and the steering programs' counter maps ([`Report`]): neither the control thread (UAPI, signals,
//! netlink) nor a worker ever waits for a reader. Connections are bounded
//! ([`MAX_CLIENTS`] served at once per listener, the rest closed at once),
//! and so are requests ([`MAX_REQUEST`] bytes, [`IO_TIMEOUT`] to send
//! them and read the answer): a hostile or stuck client costs a thread for
//! a few seconds at most. The threads run at nice 19, so a large report
//! takes CPU only when the workers leave some.
//!
//! The stats socket speaks one line each way: the client writes
//! `peers=N` (or `peers=all`) and a newline, the daemon answers with the
//! report as JSON and closes. It is not a `.sock`, so `wg` does not take it
//! for an interface.

pub mod names;
pub mod render;
pub mod report;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corewire_dataplane::engine::board::{Gauge, Published};

use crate::uapi::server::bind_private;
use corewire_dataplane::engine::steer::SteeringReader;

use names::NamesFile;
pub use report::PeerLimit;
use report::Report;

/// Connections served at once per listener; more are closed at once.
pub const MAX_CLIENTS: usize = 4;
/// Most bytes of a request read (an HTTP request head, or the stats line).
pub const MAX_REQUEST: usize = 8 << 10;
/// Time a client has to send its request, and to read each part of the
/// answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Prometheus endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A TCP address (a bare port means 127.0.0.1:PORT).
    Tcp(SocketAddr),
    /// A unix socket path (`unix:/path`), created mode 0600.
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: a unix socket path must be absolute"));
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(MetricsAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        s.parse()
            .map(MetricsAddr::Tcp)
            .map_err(|_| format!("{s:?} is not PORT, IP:PORT, [IPv6]:PORT or unix:/PATH"))
    }
}

/// What the daemon exports, from the command line or the environment.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// The Prometheus endpoint, if any.
    pub metrics: Option<MetricsAddr>,
    /// Per-peer series on the endpoint: the busiest N (0: none).
    pub metrics_peers: PeerLimit,
    /// A wg-quick configuration whose `# Name = ...` comments name peers.
    pub peer_names: Option<PathBuf>,
    /// A counters summary at info level this often (None: never).
    pub summary_every: Option<Duration>,
}

/// What every serving thread shares.
#[derive(Debug)]
struct Shared {
    published: Published,
    steering: SteeringReader,
    ifname: String,
    names: Option<Mutex<NamesFile>>,
    metrics_peers: PeerLimit,
}

impl Shared {
    fn report(&self, limit: PeerLimit) -> Report {
        match &self.names {
            Some(n) => {
                let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
                let names = Some(n.current());
                Report::gather(&self.published, &self.steering, &self.ifname, limit, names)
            }
            None => Report::gather(&self.published, &self.steering, &self.ifname, limit, None),
        }
    }
}

/// The stats socket's path for `ifname` in `dir`.
pub fn stats_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.stats"))
}

/// The running exporters. Dropping it removes the socket files (the
/// threads end with the process).
#[derive(Debug)]
pub struct StatsService {
    files: Vec<PathBuf>,
    metrics: Option<String>,
}

impl StatsService {
    /// Binds the stats socket (and the metrics endpoint, if asked for)
    /// and starts serving them, and the summary, on threads of their own.
    pub fn start(
        published: Published,
        steering: SteeringReader,
        dir: &Path,
        ifname: &str,
        opts: &StatsOptions,
    ) -> io::Result<StatsService> {
        let shared = Arc::new(Shared {
            published,
            steering,
            ifname: ifname.to_owned(),
            names: opts
                .peer_names
                .as_deref()
                .map(|p| Mutex::new(NamesFile::new(p))),
            metrics_peers: opts.metrics_peers,
        });
        let mut files = Vec::new();
        let path = stats_path(dir, ifname);
        let stats = bind_private(&path)?;
        files.push(path);
        let s = shared.clone();
        spawn("corewire-stats", move || {
            serve(Listener::Unix(stats), &s, stats_client)
        })?;
        let mut metrics = None;
        if let Some(addr) = &opts.metrics {
            let listener = match addr {
                MetricsAddr::Tcp(a) => Listener::Tcp(TcpListener::bind(a)?),
                MetricsAddr::Unix(p) => {
                    let l = bind_private(p)?;
                    files.push(p.clone());
                    Listener::Unix(l)
                }
            };
            metrics = Some(match &listener {
                Listener::Tcp(l) => format!("http://{}/metrics", l.local_addr()?),
                Listener::Unix(_) => format!(
                    "unix:{}",
                    files
                        .last()
                        .map_or(String::new(), |p| p.display().to_string())
                ),
            });
            let s = shared.clone();
            spawn("corewire-metrics", move || {
                serve(listener, &s, metrics_client)
            })?;
        }
        if let Some(every) = opts.summary_every {
            let s = shared.clone();
            spawn("corewire-summary", move || loop {
                std::thread::sleep(every);
                summary(&s.report(PeerLimit::Top(0)));
            })?;
        }
        Ok(StatsService { files, metrics })
    }

    /// Where the Prometheus endpoint is, if it runs.
    pub fn metrics_url(&self) -> Option<&str> {
        self.metrics.as_deref()
    }
}

impl Drop for StatsService {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Starts a thread at the lowest CPU priority (nice 19): rendering a
/// large report must not take a core from a worker when the machine is
/// busy.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // On Linux a nice value belongs to the thread (0: this one).
            // SAFETY: plain syscall on the calling thread; a failure only
            // leaves the priority as it was.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            f()
        })
        .map(drop)
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connected client of either kind.
trait Stream: Read + Write + Send {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

impl Listener {
    fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Box::new(s)
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Box::new(s)
            }
        })
    }
}

/// Accepts for ever; each client on a thread of its own, at most
/// [`MAX_CLIENTS`] at once (beyond that, closed without an answer).
fn serve(
    listener: Listener,
    shared: &Arc<Shared>,
    handle: fn(&mut dyn Stream, &Shared) -> io::Result<()>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "stats: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (shared, active) = (shared.clone(), active.clone());
        let spawned = spawn("corewire-client", move || {
            if let Err(e) = handle(&mut *stream, &shared) {
                tracing::debug!(error = %e, "stats client");
            }
            active.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            tracing::warn!("stats: cannot start a thread for a client");
        }
    }
}

/// Reads until `end` appears or [`MAX_REQUEST`] bytes; returns what was read.
fn read_request(s: &mut dyn Stream, end: &[u8]) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(end.len()).any(|w| w == end) {
        if buf.len() >= MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too large",
            ));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n.min(MAX_REQUEST - buf.len())]);
    }
    Ok(buf)
}

/// The stats socket: `peers=N\n` in, JSON out.
fn stats_client(s: &mut dyn Stream, shared: &Shared) -> io::Result<()> {
    let req = read_request(s, b"\n")?;
    let line = String::from_utf8_lossy(&req);
    let limit = line
        .trim()
        .strip_prefix("peers=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(PeerLimit::Top(0));
    let body = render::json(&shared.report(limit));
    s.write_all(body.as_bytes())?;
    s.write_all(b"\n")
}

/// The Prometheus endpoint: `GET /metrics` (or `/`) over HTTP/1.x.
fn metrics_client(s: &mut dyn Stream, shared: &Shared) -> io::Result<()> {
    let req = read_request(s, b"\r\n\r\n")?;
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics" | "/") => {
            let r = shared.report(shared.metrics_peers);
            ("200 OK", render::CONTENT_TYPE, render::prometheus(&r))
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}

/// The periodic summary line.
fn summary(r: &Report) {
    let sum_family = |prefix: &str| -> u64 {
        use corewire_dataplane::engine::counters::Counters;
        Counters::INFO
            .iter()
            .filter(|i| i.family == prefix)
            .map(|i| r.total(i.field))
            .sum()
    };
    let dropped: u64 = r.workers.iter().flat_map(|w| w.drops.iter()).sum();
    tracing::info!(
        peers = r.peers_total,
        rx_datagrams = r.total("udp_rx_datagrams"),
        rx_bytes = r.total("udp_rx_bytes"),
        tx_datagrams = r.total("udp_tx_datagrams"),
        tx_bytes = r.total("udp_tx_bytes"),
        handshakes_completed = sum_family("handshakes_completed"),
        handshake_failures = sum_family("handshake_failures"),
        cookies_sent = r.total("cookies_sent"),
        dropped,
        staged = r
            .workers
            .iter()
            .map(|w| w.gauge(Gauge::Staged))
            .sum::<u64>(),
        under_load_entered = r.total("under_load_signals"),
        "counters"
    );
}
