//! Round-trip time through the tunnel, measured by netbench itself: an
//! echo server in namespace b and a ping-pong client in namespace a, both
//! threads of this process. A socket belongs to the network namespace of
//! the thread that created it, so a short-lived helper thread enters the
//! namespace (`setns` on /var/run/netns/NAME) and creates the socket; the
//! socket can then be used from any thread.
//!
//! The client sends one 16-byte datagram at a time (magic, sequence number,
//! send time in ns since the client started), waits for its echo, records
//! the round trip into an `hdrhistogram` (ns, 3 significant digits), and
//! sends the next one at the next multiple of the interval (at once if it is
//! already late). A ping without an echo within the timeout counts as lost.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use corewire_testkit::{signals, Netns};
use hdrhistogram::Histogram;

/// The echo server's UDP port (in namespace b, all addresses).
pub const ECHO_PORT: u16 = 7;
const MAGIC: u32 = 0x6377_7274;
const PACKET_LEN: usize = 16;
/// How often the echo server checks whether it should stop.
const ECHO_POLL: Duration = Duration::from_millis(50);

/// Creates a UDP socket bound to `addr` inside namespace `ns`.
fn udp_socket_in(ns: &Netns, addr: SocketAddrV4) -> Result<UdpSocket> {
    let path = format!("/var/run/netns/{}", ns.name());
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    let helper = thread::spawn(move || -> std::io::Result<UdpSocket> {
        // SAFETY: setns(2) on a namespace file we hold open; it changes only
        // this short-lived thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        UdpSocket::bind(addr)
    });
    match helper.join() {
        Ok(socket) => socket.with_context(|| format!("UDP socket on {addr} in {}", ns.name())),
        Err(_) => bail!("the setns helper thread panicked"),
    }
}

/// The echo server thread. Dropping it stops and joins the thread (within
/// [`ECHO_POLL`]).
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Serves `0.0.0.0:ECHO_PORT` in `ns`: every datagram goes back to its sender.
    pub fn start(ns: &Netns) -> Result<EchoServer> {
        let sock = udp_socket_in(ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ECHO_PORT))?;
        sock.set_read_timeout(Some(ECHO_POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop_flag.load(Ordering::Relaxed) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let _ = sock.send_to(&buf[..n], from);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .context("spawn the echo server thread")?;
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Round trips of one measurement.
#[derive(Debug, Clone)]
pub struct RttStats {
    /// Round-trip times in ns.
    pub hist: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
}

impl RttStats {
    /// The `q` quantile (0..=1) in microseconds; None without samples.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q) as f64 / 1_000.0)
    }

    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

/// The ping-pong client, in namespace a, aimed at the echo server.
#[derive(Debug)]
pub struct Pinger {
    sock: UdpSocket,
    base: Instant,
    seq: u32,
}

impl Pinger {
    pub fn new(ns: &Netns, target: Ipv4Addr) -> Result<Pinger> {
        let sock = udp_socket_in(ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        sock.connect(SocketAddr::V4(SocketAddrV4::new(target, ECHO_PORT)))
            .with_context(|| format!("connect to {target}:{ECHO_PORT}"))?;
        Ok(Pinger {
            sock,
            base: Instant::now(),
            seq: 0,
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sends one ping and waits up to `timeout` for its echo: the round
    /// trip, or None if it did not come back in time.
    fn ping(&mut self, timeout: Duration) -> Option<Duration> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = [0u8; PACKET_LEN];
        packet[..4].copy_from_slice(&MAGIC.to_le_bytes());
        packet[4..8].copy_from_slice(&self.seq.to_le_bytes());
        packet[8..].copy_from_slice(&self.now_ns().to_le_bytes());
        let deadline = Instant::now() + timeout;
        if self.sock.send(&packet).is_err() {
            // No route yet, or an ICMP error from an earlier ping: a loss.
            // Pause so that a persistent error cannot spin.
            thread::sleep(timeout.min(Duration::from_millis(10)));
            return None;
        }
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.sock.set_read_timeout(Some(left)).is_err() {
                return None;
            }
            match self.sock.recv(&mut buf) {
                Ok(PACKET_LEN) => {
                    let magic = buf[..4].try_into().map(u32::from_le_bytes);
                    let seq = buf[4..8].try_into().map(u32::from_le_bytes);
                    let sent = buf[8..16].try_into().map(u64::from_le_bytes);
                    // Late echoes of earlier pings are skipped.
                    if let (Ok(MAGIC), Ok(seq), Ok(sent)) = (magic, seq, sent) {
                        if seq == self.seq {
                            return Some(Duration::from_nanos(self.now_ns().saturating_sub(sent)));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                // ECONNREFUSED from an ICMP error, say: wait out the rest.
                Err(_) => thread::sleep(left.min(Duration::from_millis(10))),
            }
        }
    }

    /// Pings every 100 ms until an echo comes back (the tunnel has done its
    /// handshake) or `limit` passes.
    pub fn probe(&mut self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            signals::check()?;
            if self.ping(Duration::from_millis(100)).is_some() {
                return Ok(start.elapsed());
            }
        }
        bail!("no echo through the tunnel within {limit:?}")
    }

    /// Ping-pong for `duration`, one ping per `interval` at most, each
    /// waiting up to `timeout` for its echo.
    pub fn measure(
        &mut self,
        duration: Duration,
        interval: Duration,
        timeout: Duration,
    ) -> Result<RttStats> {
        let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)
            .context("histogram bounds")?;
        let (mut sent, mut received) = (0u64, 0u64);
        let start = Instant::now();
        let mut next = start;
        while start.elapsed() < duration {
            signals::check()?;
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            }
            sent += 1;
            if let Some(rtt) = self.ping(timeout) {
                received += 1;
                let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
                hist.saturating_record(ns.max(1_000));
            }
            next += interval;
            let now = Instant::now();
            if next < now {
                next = now;
            }
        }
        Ok(RttStats {
            hist,
            sent,
            received,
        })
    }
}
