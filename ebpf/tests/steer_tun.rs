//! `steer_tun` in the kernel: a TUN device with three queues in a
//! namespace of its own, the program attached with TUNSETSTEERINGEBPF and
//! its tries holding prefix -> worker; packets the kernel routes into the
//! device are read on the queue of the worker owning their destination.
//!
//! ```text
//!  +------------------------------------------------------------------+
//!  | cwt-stun-*                                                       |
//!  |  UDP sender --> routes 10.78.0.0/16, fd78::/32 --> TUN (3 queues)  |
//!  |  trie: 10.78.k.0/24 -> k (k = 0,1,2), fd78:0:2::/64 -> 2,         |
//!  |        10.78.1.128/25 -> 0 (longer prefix inside worker 1's)     |
//!  +------------------------------------------------------------------+
//! ```

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use corewire_ebpf::tun::TunSteering;
use support::{in_netns, netns, require_root, tun_queues, unique_ifname};

const QUEUES: usize = 3;
const EACH: usize = 10;
const PORT: u16 = 9;

/// Where the packets go, and the queue each must be read on (None: not in
/// the trie, so any queue).
fn destinations() -> Vec<(IpAddr, Option<usize>)> {
    let mut d = Vec::new();
    for k in 0..QUEUES {
        d.push((format!("10.78.{k}.5").parse().unwrap(), Some(k)));
    }
    d.push(("10.78.1.200".parse().unwrap(), Some(0)));
    d.push(("fd78:0:2::9".parse().unwrap(), Some(2)));
    d.push(("10.78.99.1".parse().unwrap(), None));
    d
}

/// The destination address and UDP port of an IP packet.
fn destination(p: &[u8]) -> Option<(IpAddr, u16)> {
    match p.first()? >> 4 {
        4 if p.len() >= 24 && p[9] == 17 => {
            let ihl = usize::from(p[0] & 15) * 4;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            let port = u16::from_be_bytes(p.get(ihl + 2..ihl + 4)?.try_into().ok()?);
            Some((IpAddr::from(dst), port))
        }
        6 if p.len() >= 48 && p[6] == 17 => {
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            let port = u16::from_be_bytes(p[42..44].try_into().ok()?);
            Some((IpAddr::from(dst), port))
        }
        _ => None,
    }
}

#[test]
fn packets_are_read_on_their_owners_queue() {
    require_root();
    let ns = netns("stun");
    let name = unique_ifname("cwst").unwrap();
    let (mut queues, steering) = in_netns(&ns, || {
        let queues = tun_queues(&name, QUEUES);
        let mut steering = TunSteering::load(1024).unwrap();
        steering
            .attach(std::os::fd::AsFd::as_fd(&queues[0]))
            .unwrap();
        for k in 0..QUEUES {
            steering
                .insert(format!("10.78.{k}.0").parse().unwrap(), 24, k as u32)
                .unwrap();
        }
        steering
            .insert("10.78.1.128".parse().unwrap(), 25, 0)
            .unwrap();
        steering
            .insert("fd78:0:2::".parse().unwrap(), 64, 2)
            .unwrap();
        (queues, steering)
    });
    for args in [
        vec!["addr", "add", "10.77.0.1/24", "dev", &name],
        vec!["addr", "add", "fd77::1/64", "dev", &name, "nodad"],
        vec!["link", "set", &name, "up"],
        vec!["route", "add", "10.78.0.0/16", "dev", &name],
        vec!["route", "add", "fd78::/32", "dev", &name],
    ] {
        ns.ip_ok(&args).unwrap();
    }
    assert_eq!(steering.lookup("10.78.1.130".parse().unwrap()), Some(0));
    assert_eq!(steering.lookup("10.78.1.2".parse().unwrap()), Some(1));
    assert_eq!(steering.lookup("10.78.99.1".parse().unwrap()), None);

    let before = steering.stats().unwrap();
    let dests = destinations();
    in_netns(&ns, || {
        let v4 = UdpSocket::bind("0.0.0.0:0").unwrap();
        let v6 = UdpSocket::bind("[::]:0").unwrap();
        for &(addr, _) in &dests {
            let sock = if addr.is_ipv4() { &v4 } else { &v6 };
            for i in 0..EACH {
                sock.send_to(&[i as u8; 24], SocketAddr::new(addr, PORT))
                    .unwrap_or_else(|e| panic!("{addr}: {e}"));
            }
        }
    });

    // Read every queue until all our packets arrived (bounded).
    let want = dests.len() * EACH;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while seen.len() < want && Instant::now() < deadline {
        for (q, f) in queues.iter_mut().enumerate() {
            while let Ok(n) = f.read(&mut buf) {
                if let Some((dst, PORT)) = destination(&buf[..n]) {
                    seen.push((dst, q));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(seen.len(), want, "every packet read once: {seen:?}");
    for (dst, q) in &seen {
        let owner = dests.iter().find(|(a, _)| a == dst).unwrap().1;
        if let Some(k) = owner {
            assert_eq!(*q, k, "{dst} read on queue {q}");
        }
    }

    let after = steering.stats().unwrap();
    let steered = dests.iter().filter(|(_, o)| o.is_some()).count() * EACH;
    assert_eq!(
        after.hits - before.hits,
        steered as u64,
        "one hit per steered packet"
    );
    // The kernel's own packets into the device (IPv6 router and listener
    // discovery) are misses too.
    assert!(after.misses - before.misses >= EACH as u64, "{after:?}");
}
