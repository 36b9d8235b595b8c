//! The running device: worker threads plus the TUN device and UDP sockets
//! they share, seen by the control plane through the [`Device`] trait.
//!
//! The control plane calls in from its own thread. Configuration changes
//! and stats requests travel to every worker as messages and are handled
//! between batches, so a `wg show` never stalls the packet path; the
//! control thread waits for the answers, not the workers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, unbounded};

use super::board::Published;
use super::config::{ApplyError, Change, Device, DeviceStats};
use super::counters::Counters;
use super::limits::{DEFAULT_MTU, DEPOT_LARGE, DEPOT_SMALL, MAILBOX};
use super::pool::Depot;
use super::routes::Routes;
use super::shard::{CookieSeed, Directory};
use super::steer::{Steering, SteeringMode, SteeringReader, SteeringStats, UdpSteeringKind};
use super::tun::Tun;
use super::udp::UdpGroup;
use super::worker::{Mailbox, Msg, Setup, UdpFds, Worker};

/// How long a listen port change waits for the workers to release the old
/// sockets before it closes its own descriptors anyway.
const SOCKETS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the control plane waits for every worker to report stats (a
/// stats request changes nothing, so giving up on it is harmless; the
/// request then fails with ETIMEDOUT rather than answer partial data).
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long starting waits for each worker to set up its ring and buffers
/// (milliseconds normally) before it gives up and reports the engine
/// unusable.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Worker threads (one per core by default).
    pub threads: usize,
    /// Pin each worker to its own core (worker i to core i). Off by
    /// default: see `docs/operations.md`.
    pub pin: bool,
    /// How packets are steered to their owner's worker in the kernel
    /// ([`steer`](super::steer)); what is not steered is handed over.
    pub steering: SteeringMode,
    /// The uplink interface to guard with XDP, if any.
    pub xdp: Option<String>,
}

/// The running data plane.
#[derive(Debug)]
pub struct Engine {
    mailboxes: Vec<Mailbox>,
    wakes: Vec<OwnedFd>,
    threads: Vec<JoinHandle<std::io::Result<Counters>>>,
    udp: UdpGroup,
    gen: u32,
    mtu: Arc<AtomicU32>,
    tun: Tun,
    steering: Steering,
    /// Every peer's prefixes, published to the workers.
    routes: Routes,
    published: Published,
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is checked and then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Engine {
    /// Starts one worker per TUN queue, with UDP sockets on a free port.
    pub fn start(tun: Tun, opts: &EngineOptions) -> std::io::Result<Self> {
        let n = tun.queue_fds().len().min(opts.threads.max(1));
        let udp = UdpGroup::bind(0, n, 0).map_err(std::io::Error::other)?;
        let mut steering = Steering::start(opts.steering, n as u32, &tun, opts.xdp.as_deref());
        steering.attach_udp(&udp);
        let mtu = Arc::new(AtomicU32::new(tun.mtu().unwrap_or(DEFAULT_MTU)));
        let wakes = (0..n)
            .map(|_| eventfd())
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut inboxes = Vec::with_capacity(n);
        let mut mailboxes = Vec::with_capacity(n);
        for w in &wakes {
            let (tx, rx) = unbounded();
            let (packets, packets_rx) = bounded(MAILBOX);
            inboxes.push((rx, packets_rx));
            mailboxes.push(Mailbox {
                tx,
                packets,
                wake: w.as_raw_fd(),
            });
        }
        let cores = if opts.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let clock = (Instant::now(), SystemTime::now());
        let depot = Depot::new(DEPOT_LARGE, DEPOT_SMALL, n);
        let cookies = CookieSeed::generate(clock.0);
        let directory = Directory::default();
        let routes = Routes::new();
        let published = Published::new(n);
        let mut threads = Vec::with_capacity(n);
        // Each worker says whether it could set up (its ring, the io_uring
        // operations it needs, its buffers) before the engine is ready.
        let (set_up, setups) = bounded::<Result<(), String>>(n);
        for (i, (inbox, packets)) in inboxes.into_iter().enumerate() {
            let setup = Setup {
                id: i as u32,
                workers: n as u32,
                tun: tun.queue_fds()[i].as_raw_fd(),
                udp: fds(&udp, i, 0),
                wake: wakes[i].as_raw_fd(),
                inbox,
                packets,
                mailboxes: mailboxes.clone(),
                mtu: mtu.clone(),
                offload: tun.offload(),
                depot: depot.clone(),
                clock,
                cookies: cookies.clone(),
                directory: directory.clone(),
                live: steering.live_indexes(),
                routes: routes.shared(),
                board: published.board(i).unwrap_or_default(),
            };
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let set_up = set_up.clone();
            let t = std::thread::Builder::new()
                .name(format!("corewire-w{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    let worker = Worker::new(setup);
                    let _ = set_up.send(worker.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    worker?.run()
                })?;
            threads.push(t);
        }
        let engine = Self {
            mailboxes,
            wakes,
            threads,
            udp,
            gen: 0,
            mtu,
            tun,
            steering,
            routes,
            published,
        };
        for _ in 0..n {
            let failed = match setups.recv_timeout(SETUP_TIMEOUT) {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => "a worker did not finish setting up".to_string(),
            };
            // The workers that did start stop; the failure is reported
            // once, by the caller, not again per worker.
            let mut engine = engine;
            engine.stop_workers();
            return Err(std::io::Error::other(failed));
        }
        Ok(engine)
    }

    /// The workers' published counters and peers, for readers on any
    /// thread (they never wait on a worker; see [`board`](super::board)).
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    /// The TUN device.
    pub fn tun(&self) -> &Tun {
        &self.tun
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.mailboxes.len()
    }

    /// What steering did so far (the programs' counters, read from their
    /// maps on this thread; the workers' handoffs are in
    /// [`published`](Self::published)).
    pub fn steering_stats(&self) -> SteeringStats {
        self.steering.stats()
    }

    /// A reader of what steering did, for readers on any thread (they
    /// never wait on a worker or on the control thread).
    pub fn steering(&self) -> SteeringReader {
        self.steering.reader()
    }

    /// How datagrams are steered now.
    pub fn udp_steering(&self) -> UdpSteeringKind {
        self.steering.udp_kind()
    }

    /// Whether TUN packets are steered by `steer_tun`.
    pub fn tun_steered(&self) -> bool {
        self.steering.tun_steered()
    }

    /// Tells the workers the TUN MTU changed (they pad to it).
    pub fn set_mtu(&self, mtu: u32) {
        self.mtu.store(mtu, Ordering::Relaxed);
    }

    /// Why a worker stopped, if one did (a worker stops only when told to
    /// or when its ring fails): its error, or that it panicked. The worker
    /// is joined; the others keep running until [`shutdown`](Self::shutdown).
    pub fn failure(&mut self) -> Option<String> {
        let i = self.threads.iter().position(|t| t.is_finished())?;
        let t = self.threads.remove(i);
        Some(match t.join() {
            Ok(Ok(_)) => format!("worker {i} stopped"),
            Ok(Err(e)) => format!("worker {i} failed: {e}"),
            Err(_) => format!("worker {i} panicked"),
        })
    }

    fn broadcast(&self, msg: impl Fn() -> Msg) {
        for mb in &self.mailboxes {
            if mb.tx.send(msg()).is_ok() {
                mb.wake();
            }
        }
    }

    fn rebind(&mut self, port: u16) -> Result<(), ApplyError> {
        if port != 0 && port == self.udp.port() {
            return Ok(());
        }
        let n = self.workers();
        let new = UdpGroup::bind(port, n, self.udp.fwmark())?;
        self.steering.attach_udp(&new);
        self.gen += 1;
        let (ack_tx, ack_rx) = bounded(n);
        for (i, mb) in self.mailboxes.iter().enumerate() {
            if mb
                .tx
                .send(Msg::Sockets(fds(&new, i, self.gen), ack_tx.clone()))
                .is_ok()
            {
                mb.wake();
            }
        }
        drop(ack_tx);
        let old = std::mem::replace(&mut self.udp, new);
        // Each worker arms receives on the new sockets and cancels those on
        // the old ones: a socket stays bound while an io_uring operation
        // holds it, even once its descriptor is closed. Wait for all of
        // them (bounded), then close the old sockets.
        let deadline = Instant::now() + SOCKETS_TIMEOUT;
        for _ in 0..n {
            if ack_rx.recv_deadline(deadline).is_err() {
                tracing::warn!("a worker did not release the old sockets in time");
                break;
            }
        }
        drop(old);
        Ok(())
    }

    /// Stops the workers and waits for them.
    pub fn shutdown(&mut self) {
        for ended in self.stop_workers() {
            match ended {
                Ok(Ok(c)) => tracing::debug!(?c, "worker stopped"),
                Ok(Err(e)) => tracing::warn!("worker failed: {e}"),
                Err(_) => tracing::error!("worker panicked"),
            }
        }
    }

    /// Tells the workers to stop, waits for each, and returns how each
    /// ended.
    fn stop_workers(&mut self) -> Vec<std::thread::Result<std::io::Result<Counters>>> {
        self.broadcast(|| Msg::Stop);
        self.threads.drain(..).map(JoinHandle::join).collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
        // The eventfds outlive the workers that write to each other's.
        self.wakes.clear();
    }
}

fn fds(udp: &UdpGroup, worker: usize, gen: u32) -> UdpFds {
    UdpFds {
        v4: udp.v4_fds()[worker].as_raw_fd(),
        v6: udp.v6_fds().get(worker).map(|f| f.as_raw_fd()),
        port: udp.port(),
        gen,
    }
}

impl Device for Engine {
    fn apply(&mut self, changes: Vec<Change>) -> Result<(), ApplyError> {
        // Socket changes can fail; they go first so a failure applies nothing.
        for c in &changes {
            match c {
                Change::ListenPort(p) => self.rebind(*p)?,
                Change::Fwmark(m) => {
                    self.udp
                        .set_fwmark(*m)
                        .map_err(|e| ApplyError::Io(e.raw_os_error().unwrap_or(libc::EIO)))?;
                }
                _ => {}
            }
        }
        let steering = &mut self.steering;
        // The shared table first: a worker that applies the change finds
        // its peers' routes there already. One worker owns every peer and
        // needs no table.
        if self.mailboxes.len() > 1 {
            self.routes.apply(&changes, |addr, len, owner| {
                steering.route_moved(addr, len, owner)
            });
        }
        let changes = Arc::new(changes);
        let (ack_tx, ack_rx) = bounded(self.workers());
        self.broadcast(|| Msg::Apply(changes.clone(), ack_tx.clone()));
        // Wait for every worker, however long a large change takes: once
        // sent, the change will be applied, and answering an error then
        // would leave the configuration and the workers disagreeing. Only a
        // worker that is gone (its copy of the sender dropped) fails it.
        drop(ack_tx);
        for _ in 0..self.workers() {
            if ack_rx.recv().is_err() {
                return Err(ApplyError::Io(libc::EIO));
            }
        }
        Ok(())
    }

    fn stats(&mut self) -> Result<DeviceStats, ApplyError> {
        let (tx, rx) = bounded(self.workers());
        self.broadcast(|| Msg::Stats(tx.clone()));
        let deadline = Instant::now() + STATS_TIMEOUT;
        let mut peers = Vec::new();
        for _ in 0..self.workers() {
            // A worker that does not answer in time (or is gone) fails the
            // request: partial stats would show peers as missing.
            match rx.recv_deadline(deadline) {
                Ok(p) => peers.extend(p),
                Err(_) => return Err(ApplyError::Io(libc::ETIMEDOUT)),
            }
        }
        Ok(DeviceStats {
            listen_port: self.udp.port(),
            peers,
        })
    }
}
