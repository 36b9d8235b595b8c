//! Many UAPI clients at once, against the real corewire daemon (the debug
//! build): clients that hold a connection idle, stop in the middle of a
//! request or trickle a byte per second delay nobody and are dropped at
//! their deadline; SIGTERM and `ip link del` still end the daemon while
//! they are connected; concurrent `wg show` and `wg set` all succeed.
//!
//! ```text
//!  +---------------------------------------------+
//!  | cwt-cw-*                                    |
//!  |  lo                                         |
//!  |  corewire IF (TUN, down)                    |
//!  |  /var/run/wireguard/IF.sock <---------------+-- wg show / wg set (in the namespace)
//!  +---------------------------------------------+-- raw UnixStream clients (this process):
//!                                                    idle, half-sent, trickling
//! ```
//!
//! Only functional deadlines are asserted (a `wg show` within 2 s), never a
//! speed. Peers are random keys with no endpoint: nothing is ever sent.
//!
//! Needs root and the tools scripts/test.sh installs; `COREWIRE_SKIP_NETNS=1`
//! skips. Prints its findings (`cargo test -- --nocapture`).

// Helpers outside `#[test]` functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine;
use netns::{socket_path, unique_ifname, wait_until, wg_show_dump, Netns, Timed, WgImpl, WgStart};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How long a `wg show` may take while the bad clients are connected.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn random_key() -> [u8; 32] {
    let mut b = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn connect(ifname: &str) -> UnixStream {
    let s = UnixStream::connect(socket_path(ifname)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The clients that used to block everyone: one connected and silent, 20
/// with half a request sent (10 `get`, 10 `set`), and one sending half a
/// `set` a byte per second until it is dropped.
struct BadClients {
    _idle: UnixStream,
    _half: Vec<UnixStream>,
    trickler: Trickler,
}

impl BadClients {
    fn connect(ifname: &str) -> BadClients {
        let idle = connect(ifname);
        let half = (0..20)
            .map(|i| {
                let mut s = connect(ifname);
                let text = if i % 2 == 0 {
                    "get=1\n".to_owned()
                } else {
                    format!("set=1\npublic_key={}\n", hex(&random_key()))
                };
                s.write_all(text.as_bytes()).unwrap();
                s
            })
            .collect();
        BadClients {
            _idle: idle,
            _half: half,
            trickler: Trickler::start(ifname),
        }
    }
}

/// Sends a `get` request one byte per second, from a thread; notes
/// when the daemon dropped it (a write failed). Stopped and joined on drop.
struct Trickler {
    stop: Arc<AtomicBool>,
    dropped_after: Arc<Mutex<Option<Duration>>>,
    handle: Option<JoinHandle<()>>,
}

impl Trickler {
    fn start(ifname: &str) -> Trickler {
        let mut s = connect(ifname);
        let stop = Arc::new(AtomicBool::new(false));
        let dropped_after = Arc::new(Mutex::new(None));
        let handle = {
            let (stop, dropped_after) = (stop.clone(), dropped_after.clone());
            // A get: sets wait for their turn one at a time (the half-sent
            // sets above hold it until each is dropped at its deadline),
            // and time spent waiting for the turn does not count, so a
            // trickled set would only be dropped after all of them.
            let text = "get=1\n\n".to_owned();
            std::thread::spawn(move || {
                let t = Instant::now();
                // Bounded: at most 120 bytes, one a second.
                for b in text.bytes().cycle().take(120) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if s.write_all(&[b]).is_err() {
                        *dropped_after.lock().unwrap() = Some(t.elapsed());
                        return;
                    }
                    sleep(Duration::from_secs(1));
                }
            })
        };
        Trickler {
            stop,
            dropped_after,
            handle: Some(handle),
        }
    }

    fn dropped_after(&self) -> Option<Duration> {
        *self.dropped_after.lock().unwrap()
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `wg show IF dump` in the namespace: how long it took, and its output.
fn timed_show(ns: &Netns, ifname: &str) -> (Duration, String) {
    let t = Instant::now();
    let out = ns.exec("wg", &["show", ifname, "dump"]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "wg show {ifname} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn slow_and_idle_clients_delay_nobody() {
    const TEST: &str = "slow_and_idle_clients_delay_nobody";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("cw");
    let ifname = unique_ifname("cw");
    let _dev = WgImpl::Corewire.start(&ns, &ifname);
    let peer = B64.encode(random_key());
    netns::wg_set(&ns, &ifname, &["peer", &peer, "allowed-ips", "10.7.0.0/16"]);

    let bad = BadClients::connect(&ifname);
    // Every half second for 8 s: across the 5 s deadline and idle time, so
    // also while the daemon drops them.
    let mut slowest = Duration::ZERO;
    for _ in 0..16 {
        let (took, dump) = timed_show(&ns, &ifname);
        assert!(took < ANSWER_WITHIN, "wg show took {took:?}");
        assert!(dump.contains(&peer), "{dump}");
        slowest = slowest.max(took);
        sleep(Duration::from_millis(500));
    }
    // The trickler was dropped at its deadline (5 s after its first byte).
    let dropped = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        bad.trickler.dropped_after().is_some()
    });
    eprintln!(
        "[netns] {TEST}: slowest wg show {slowest:?}; trickler dropped after {:?}",
        bad.trickler.dropped_after()
    );
    assert!(dropped, "the trickling client was never dropped");
    // None of the half-sent sets was applied.
    let dump = wg_show_dump(&ns, &ifname);
    assert_eq!(dump.peers.len(), 1, "{dump:?}");
}

#[test]
fn sigterm_and_link_del_end_the_daemon_with_clients_connected() {
    const TEST: &str = "sigterm_and_link_del_end_the_daemon_with_clients_connected";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("cw");
    for how in ["SIGTERM", "ip link del"] {
        let ifname = unique_ifname("cw");
        let mut dev = WgImpl::Corewire.start(&ns, &ifname);
        let _bad = BadClients::connect(&ifname);
        sleep(Duration::from_millis(300));
        let t = Instant::now();
        if how == "SIGTERM" {
            let pid = dev.pid().expect("the daemon's PID");
            // SAFETY: kill(2) on the PID of the daemon this test started.
            assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
        } else {
            ns.ip_ok(&["link", "del", &ifname]);
        }
        assert!(
            dev.wait_exit(Duration::from_secs(5)),
            "corewire did not exit within 5 s of {how} with clients connected"
        );
        eprintln!("[netns] {TEST}: {how}: exited after {:?}", t.elapsed());
        assert!(
            !socket_path(&ifname).exists(),
            "the UAPI socket was left behind after {how}"
        );
    }
}

#[test]
fn fifty_concurrent_wg_show_all_succeed() {
    const TEST: &str = "fifty_concurrent_wg_show_all_succeed";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("cw");
    let ifname = unique_ifname("cw");
    let _dev = WgImpl::Corewire.start(&ns, &ifname);
    let peers: Vec<String> = (0..20).map(|_| B64.encode(random_key())).collect();
    for (i, p) in peers.iter().enumerate() {
        let ips = format!("10.8.{i}.0/24");
        netns::wg_set(&ns, &ifname, &["peer", p, "allowed-ips", &ips]);
    }
    let dumps: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| s.spawn(|| timed_show(&ns, &ifname).1))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for dump in &dumps {
        assert_eq!(dump.lines().count(), 1 + peers.len(), "{dump}");
        assert!(peers.iter().all(|p| dump.contains(p.as_str())), "{dump}");
    }
}

#[test]
fn concurrent_wg_set_loses_no_peer() {
    const TEST: &str = "concurrent_wg_set_loses_no_peer";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("cw");
    let ifname = unique_ifname("cw");
    let _dev = WgImpl::Corewire.start(&ns, &ifname);
    // 10 processes at a time, each adding its own peer; 3 rounds.
    let peers: Vec<String> = (0..30).map(|_| B64.encode(random_key())).collect();
    let numbered: Vec<(usize, &String)> = peers.iter().enumerate().collect();
    for round in numbered.chunks(10) {
        std::thread::scope(|s| {
            for &(n, p) in round {
                let (ns, ifname) = (&ns, &ifname);
                s.spawn(move || {
                    let ips = format!("10.9.{n}.0/24");
                    netns::wg_set(ns, ifname, &["peer", p, "allowed-ips", &ips]);
                });
            }
        });
    }
    let dump = wg_show_dump(&ns, &ifname);
    assert_eq!(dump.peers.len(), peers.len(), "{dump:?}");
    for p in &peers {
        let found = dump.peers.iter().find(|d| &d.public_key == p);
        assert!(
            found.is_some_and(|d| d.allowed_ips.len() == 1),
            "{p}: {dump:?}"
        );
    }
}
