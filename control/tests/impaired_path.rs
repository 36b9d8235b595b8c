//! A bad underlay: 5% loss, 25% of datagrams held back 10 ms (reordered),
//! 2% duplicated, both ways; then the underlay down for 8 s in the middle
//! of a transfer. TCP through the tunnel must deliver 20 MB byte for byte
//! (SHA-256) each time, and the tunnel must recover without a restart.
//! `tc netem` is not available in this kernel, so a relay thread of this
//! test sits between the two ends and does the damage.
//!
//! ```text
//! +-- namespace ip<..> (a) --+      +---- namespace ip<..> (relay) ----+      +-- namespace ip<..> (b) --+
//! | corewire 10.0.0.1        |      | UDP 10.93.0.2:51820 <-> 10.92.0.1 |      | corewire 10.0.0.2        |
//! | 10.93.0.1/24             |------| drop, delay, duplicate           |------| 10.92.0.2/24, UDP 51820  |
//! +--------------------------+      +-----------------------------------+      +--------------------------+
//! ```
//!
//! a's endpoint for b is the relay; b learns the relay's address from a's
//! handshake. Needs root, python3 and the tools scripts/test.sh installs;
//! `COREWIRE_SKIP_NETNS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns::{
    unique_ifname, wait_until, wg_set_private_key, Keypair, Launch, Netns, Timed, Veth, WgImpl,
    WgStart,
};

const PORT: u16 = 51820;
const DATA_PORT: u16 = 7001;
/// Bytes per transfer.
const BYTES: usize = 20 << 20;
/// A transfer that takes longer than this has stalled.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// Datagrams held back at once, at most (beyond, they are dropped).
const HELD_MAX: usize = 10_000;

/// What the relay does to each datagram.
struct Damage {
    loss: f64,
    duplicate: f64,
    reorder: f64,
    delay: Duration,
}

/// xorshift64*, as a fraction in [0, 1).
struct Rng(u64);

impl Rng {
    fn fraction(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Relays datagrams between a (who sends to `front`) and b (at `back_to`,
/// from `back`) inside namespace `ns_name`, doing `damage`, dropping all
/// while `down` is set, until `stop` is set.
fn relay(
    ns_name: &str,
    front: SocketAddrV4,
    back: SocketAddrV4,
    back_to: SocketAddrV4,
    damage: &Damage,
    down: &AtomicBool,
    stop: &AtomicBool,
) -> [u64; 4] {
    corewire_testkit::enter(ns_name).unwrap();
    let front_sock = UdpSocket::bind(front).unwrap();
    let back_sock = UdpSocket::bind(back).unwrap();
    for s in [&front_sock, &back_sock] {
        s.set_nonblocking(true).unwrap();
    }
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let mut a_addr: Option<SocketAddr> = None;
    // Held datagrams: (when to send, towards b?, bytes).
    let mut held: VecDeque<(Instant, bool, Vec<u8>)> = VecDeque::new();
    let mut buf = [0u8; 2048];
    // Datagrams seen, dropped, duplicated, held back.
    let mut count = [0u64; 4];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for (sock, to_b) in [(&front_sock, true), (&back_sock, false)] {
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                idle = false;
                if to_b {
                    a_addr = Some(from);
                }
                count[0] += 1;
                if down.load(Ordering::Relaxed) || rng.fraction() < damage.loss {
                    count[1] += 1;
                    continue;
                }
                let copies = if rng.fraction() < damage.duplicate {
                    2
                } else {
                    1
                };
                count[2] += copies - 1;
                for _ in 0..copies {
                    if rng.fraction() < damage.reorder {
                        count[3] += 1;
                        if held.len() < HELD_MAX {
                            held.push_back((
                                Instant::now() + damage.delay,
                                to_b,
                                buf[..n].to_vec(),
                            ));
                        }
                    } else if to_b {
                        let _ = back_sock.send_to(&buf[..n], back_to);
                    } else if let Some(a) = a_addr {
                        let _ = front_sock.send_to(&buf[..n], a);
                    }
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, to_b, bytes)) = held.pop_front() else {
                break;
            };
            if to_b {
                let _ = back_sock.send_to(&bytes, back_to);
            } else if let Some(a) = a_addr {
                let _ = front_sock.send_to(&bytes, a);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    count
}

#[test]
fn loss_reordering_duplication_and_an_outage_keep_transfers_intact() {
    let test = "loss_reordering_duplication_and_an_outage_keep_transfers_intact";
    if !netns::enabled(test) {
        return;
    }
    let timed = Timed::new(test);
    let (a_ns, r_ns, b_ns) = (Netns::new("ip"), Netns::new("ip"), Netns::new("ip"));
    let _v1 = Veth::pair(&a_ns, &r_ns, &["10.93.0.1/24"], &["10.93.0.2/24"]);
    let _v2 = Veth::pair(&r_ns, &b_ns, &["10.92.0.1/24"], &["10.92.0.2/24"]);
    let (a_if, b_if) = (unique_ifname("cw"), unique_ifname("cw"));
    let (a_key, b_key) = (Keypair::generate(), Keypair::generate());
    let _a = WgImpl::Corewire.start_with(&a_ns, &a_if, Launch::Foreground);
    let _b = WgImpl::Corewire.start_with(&b_ns, &b_if, Launch::Foreground);
    let port = PORT.to_string();
    wg_set_private_key(
        &b_ns,
        &b_if,
        &b_key.private,
        &[
            "listen-port",
            &port,
            "peer",
            &a_key.public,
            "allowed-ips",
            "10.0.0.1/32",
        ],
    );
    let relay_front = format!("10.93.0.2:{PORT}");
    wg_set_private_key(
        &a_ns,
        &a_if,
        &a_key.private,
        &[
            "peer",
            &b_key.public,
            "allowed-ips",
            "10.0.0.2/32",
            "endpoint",
            &relay_front,
        ],
    );
    for (ns, ifname, addr) in [(&a_ns, &a_if, "10.0.0.1/24"), (&b_ns, &b_if, "10.0.0.2/24")] {
        ns.ip_ok(&["addr", "add", addr, "dev", ifname]);
        ns.ip_ok(&["link", "set", "dev", ifname, "up"]);
    }
    let damage = Damage {
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.25,
        delay: Duration::from_millis(10),
    };
    let (down, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let relay = s.spawn(|| {
            relay(
                r_ns.name(),
                "10.93.0.2:51820".parse().unwrap(),
                "10.92.0.1:0".parse().unwrap(),
                "10.92.0.2:51820".parse().unwrap(),
                &damage,
                &down,
                &stop,
            )
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let up = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
                a_ns.command("ping", &["-c", "1", "-W", "1", "10.0.0.2"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            assert!(up, "no ping through the damaged path");
            let t = Instant::now();
            netns::tcp_transfer(&a_ns, &b_ns, "10.0.0.2", DATA_PORT, BYTES, TRANSFER_TIMEOUT);
            let damaged = t.elapsed();
            // The underlay goes down for 8 s while the other direction's
            // transfer runs.
            let t = Instant::now();
            std::thread::scope(|s2| {
                s2.spawn(|| {
                    std::thread::sleep(Duration::from_secs(1));
                    down.store(true, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(8));
                    down.store(false, Ordering::Relaxed);
                });
                netns::tcp_transfer(&b_ns, &a_ns, "10.0.0.1", DATA_PORT, BYTES, TRANSFER_TIMEOUT);
            });
            let outage = t.elapsed();
            eprintln!(
                "[netns] {test}: {BYTES} bytes a -> b intact through 5% loss, 25% reordering, 2% duplication in {damaged:.1?}; b -> a intact across an 8 s outage in {outage:.1?}"
            );
        }));
        stop.store(true, Ordering::Relaxed);
        let [seen, dropped, duplicated, held] = relay.join().unwrap();
        eprintln!(
            "[netns] {test}: relay saw {seen} datagrams: dropped {dropped}, duplicated {duplicated}, held back {held}"
        );
        assert!(
            dropped > 0 && duplicated > 0 && held > 0,
            "the relay did no damage"
        );
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
    eprintln!("[netns] {test}: {:.1} s", timed.elapsed().as_secs_f64());
}
