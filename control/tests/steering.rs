//! Steering in the running daemon: a hub (corewire, 2 or 3 workers) and
//! many WireGuard peers simulated in the test process (each the engine's
//! own shard with its own key and socket: `netns::sim`), echoing datagrams
//! through the tunnel both ways. The hub's counters (SIGUSR1 logs them on
//! one line) prove which programs ran and how many packets still had to be
//! handed between workers.
//!
//! ```text
//!  +----------------------------------+  veth   +------------------------------+
//!  | cwt-shub-*                       |         | cwt-speers-*                 |
//!  |  corewire IF --threads N  :51820 |---------|  SimPeers: peer k at         |
//!  |   10.200.0.1/32, 10.201/16 -> IF | .1   .2 |  10.201.k/32 (tunnel), own   |
//!  |  echo service 10.200.0.1:7000    |10.90.0/24  UDP socket each             |
//!  |  [--xdp on its veth end]         |         |  [garbage flood from .2]     |
//!  +----------------------------------+         +------------------------------+
//! ```
//!
//! Needs root; `COREWIRE_SKIP_NETNS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corewire_dataplane::proto::keys::PublicKey;
use corewire_testkit::{Flood, FloodKind};
use netns::sim::{echo_service, SimCounts, SimPeers, ECHO_PORT};
use netns::{
    enabled, unique_ifname, wait_until, wg_set_private_key, Keypair, Netns, Timed, Veth, WgImpl,
    WgStart,
};

const HUB_PORT: u16 = 51820;
const HUB_INNER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// How long one round waits for its echoes.
const ROUND_WAIT: Duration = Duration::from_secs(3);
/// Handshakes at a time while the peers connect.
const CONNECT_BATCH: usize = 32;

/// The hub's counters, from its `steering counters:` log line.
#[derive(Debug, Default)]
struct HubCounters(HashMap<String, Vec<u64>>);

impl HubCounters {
    fn parse(line: &str) -> Self {
        let body = line.split("steering counters: ").nth(1).unwrap_or_default();
        HubCounters(
            body.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        v.split(',').filter_map(|n| n.parse().ok()).collect(),
                    )
                })
                .collect(),
        )
    }

    /// One counter (summed over workers for the per-worker ones).
    fn get(&self, key: &str) -> u64 {
        self.0.get(key).map_or(0, |v| v.iter().sum())
    }

    fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// What one run of the hub saw.
#[derive(Debug)]
struct Outcome {
    sim: SimCounts,
    /// Every round's echoes came back.
    complete: bool,
    hub: HubCounters,
    log: String,
}

struct Setup<'a> {
    workers: usize,
    steering: &'a str,
    peers: usize,
    rounds: u32,
    /// Guard the hub's uplink with XDP, and flood it with this many
    /// datagrams per second for a second in the middle of the rounds.
    xdp_flood: Option<u64>,
    /// Start the hub without CAP_BPF, CAP_SYS_ADMIN and CAP_PERFMON (as
    /// root otherwise): the kernel refuses every program.
    without_bpf_caps: bool,
}

/// The hub's process: started as the tests start corewire, or through
/// `setpriv` with capabilities dropped.
enum Hub {
    Daemon(netns::WgDevice),
    Dropped(netns::Proc),
}

impl Hub {
    fn pid(&self) -> u32 {
        match self {
            Hub::Daemon(d) => d.pid().expect("the hub runs"),
            Hub::Dropped(p) => p.pid(),
        }
    }

    fn log(&self) -> String {
        match self {
            Hub::Daemon(d) => d.log(),
            Hub::Dropped(p) => p.log(),
        }
    }
}

fn start_hub(ns: &Netns, ifname: &str, args: &[&str], without_bpf_caps: bool) -> Hub {
    if !without_bpf_caps {
        return Hub::Daemon(WgImpl::Corewire.start_args(ns, ifname, args));
    }
    let bin = WgImpl::Corewire.binary();
    let caps = "-bpf,-sys_admin,-perfmon";
    let mut all = vec![
        format!("--bounding-set={caps}"),
        format!("--inh-caps={caps}"),
        bin.display().to_string(),
        "-f".to_owned(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.push(ifname.to_owned());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let p = ns.spawn("setpriv", &all, &[]);
    let up = wait_until(netns::START_TIMEOUT, Duration::from_millis(20), || {
        netns::socket_path(ifname).exists() && ns.link_exists(ifname)
    });
    assert!(up, "the hub did not start:\n{}", p.log());
    Hub::Dropped(p)
}

/// Sends SIGUSR1 to the hub and waits for its counters line.
fn read_counters(dev: &Hub) -> HubCounters {
    let pid = dev.pid();
    let before = dev.log().matches("steering counters:").count();
    // SAFETY: plain syscall to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let mut line = String::new();
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let log = dev.log();
        match log
            .lines()
            .filter(|l| l.contains("steering counters:"))
            .nth(before)
        {
            Some(l) => {
                line = l.to_owned();
                true
            }
            None => false,
        }
    });
    assert!(
        !line.is_empty(),
        "no counters line in the hub's log:\n{}",
        dev.log()
    );
    HubCounters::parse(&line)
}

fn run(s: &Setup<'_>) -> Outcome {
    let hub_ns = Netns::new("shub");
    let peers_ns = Netns::new("speers");
    let veth = Veth::pair(&hub_ns, &peers_ns, &["10.90.0.1/24"], &["10.90.0.2/24"]);
    let ifname = unique_ifname("cwst");
    let threads = s.workers.to_string();
    let mut args = vec!["--threads", &threads, "--steering", s.steering];
    if s.xdp_flood.is_some() {
        args.extend(["--xdp", veth.name_a()]);
    }
    let hub = start_hub(&hub_ns, &ifname, &args, s.without_bpf_caps);
    for a in [
        vec!["addr", "add", "10.200.0.1/32", "dev", &ifname],
        vec!["link", "set", &ifname, "up"],
        vec!["route", "add", "10.201.0.0/16", "dev", &ifname],
    ] {
        hub_ns.ip_ok(&a);
    }
    let hub_keys = Keypair::generate();
    let hub_public = PublicKey::from_base64(&hub_keys.public).unwrap();
    let hub_addr: SocketAddr = SocketAddr::from((Ipv4Addr::new(10, 90, 0, 1), HUB_PORT));
    let inner: Vec<Ipv4Addr> = (0..s.peers)
        .map(|k| Ipv4Addr::new(10, 201, (k >> 8) as u8, (k & 255) as u8))
        .collect();
    let mut sim = std::thread::scope(|t| {
        t.spawn(|| {
            peers_ns.enter().unwrap();
            SimPeers::new(hub_public, hub_addr, &inner, HUB_INNER)
        })
        .join()
        .unwrap()
    });
    let port = HUB_PORT.to_string();
    let ids = sim.identities();
    let allowed: Vec<(String, String)> = ids
        .iter()
        .map(|(k, a)| (k.to_string(), format!("{a}/32")))
        .collect();
    let mut set = vec!["listen-port", port.as_str()];
    for (k, a) in &allowed {
        set.extend(["peer", k.as_str(), "allowed-ips", a.as_str()]);
    }
    wg_set_private_key(&hub_ns, &ifname, &hub_keys.private, &set);

    let stop = AtomicBool::new(false);
    let mut complete = true;
    std::thread::scope(|t| {
        let echo = t.spawn(|| {
            hub_ns.enter().unwrap();
            echo_service(
                SocketAddr::from((HUB_INNER, ECHO_PORT)),
                &stop,
                Duration::from_secs(300),
            )
        });
        // The echo service binds at once; give it a moment.
        std::thread::sleep(Duration::from_millis(100));
        // Connect a batch at a time, then rounds of every peer.
        for start in (0..sim.len()).step_by(CONNECT_BATCH) {
            let end = (start + CONNECT_BATCH).min(sim.len());
            complete &= sim.round_of(start..end, 0, ROUND_WAIT);
        }
        for r in 1..=s.rounds {
            if r == s.rounds / 2 {
                if let Some(rate) = s.xdp_flood {
                    flood(&peers_ns, hub_public, rate);
                }
            }
            complete &= sim.round(r, ROUND_WAIT);
        }
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();
    });
    let hub_counters = read_counters(&hub);
    let log = hub.log();
    drop(hub);
    drop(veth);
    Outcome {
        sim: sim.counts(),
        complete,
        hub: hub_counters,
        log,
    }
}

/// Garbage and unknown-index datagrams at the hub's port, half a second each.
fn flood(ns: &Netns, target: PublicKey, rate: u64) {
    for kind in [FloodKind::Garbage, FloodKind::UnknownIndex] {
        let f = Flood {
            kind,
            target: SocketAddrV4::new(Ipv4Addr::new(10, 90, 0, 1), HUB_PORT),
            target_public: *target.as_bytes(),
            sources: vec![Ipv4Addr::new(10, 90, 0, 2)],
            sockets_per_source: 4,
            rate,
            duration: Duration::from_millis(500),
        };
        f.run(ns.name()).unwrap();
    }
}

/// Every transport datagram of a multi-peer transfer reaches its owner's
/// worker directly (only initiations, whose owner is inside their
/// encrypted payload, may be handed over), and every TUN packet is read by
/// its peer's owner.
fn lands_on_owner(workers: usize) {
    let test = format!("lands_on_owner_{workers}");
    if !enabled(&test) {
        return;
    }
    let _t = Timed::new(&test);
    let o = run(&Setup {
        workers,
        steering: "ebpf",
        peers: 12,
        rounds: 30,
        xdp_flood: None,
        without_bpf_caps: false,
    });
    eprintln!("{workers} workers: {:?}\n  hub: {:?}", o.sim, o.hub);
    assert!(o.complete, "every echo came back: {:?}\n{}", o.sim, o.log);
    assert!(
        o.hub.has("udp_by_index") && o.hub.has("tun_hits"),
        "both programs ran: {:?}",
        o.hub
    );
    // Every data packet the peers sent was steered by its index.
    assert!(
        o.hub.get("udp_by_index") >= o.sim.sent,
        "{:?} {:?}",
        o.hub,
        o.sim
    );
    assert!(
        o.hub.get("udp_by_index") <= o.sim.transport,
        "{:?} {:?}",
        o.hub,
        o.sim
    );
    assert_eq!(o.hub.get("udp_no_worker"), 0, "{:?}", o.hub);
    assert!(
        o.hub.get("handed_udp") <= o.sim.initiations,
        "only initiations are handed over: {:?} {:?}",
        o.hub,
        o.sim
    );
    assert!(
        o.hub.get("tun_hits") >= o.sim.echoed,
        "{:?} {:?}",
        o.hub,
        o.sim
    );
    assert_eq!(
        o.hub.get("handed_tun"),
        0,
        "TUN packets read by their owner: {:?}",
        o.hub
    );
}

#[test]
fn transport_lands_on_its_owner_with_two_workers() {
    lands_on_owner(2);
}

#[test]
fn transport_lands_on_its_owner_with_three_workers() {
    lands_on_owner(3);
}

/// 256 peers, flows both ways: with eBPF, handoffs stay below 1% of the
/// packets the hub handled; without steering the same traffic is
/// delivered (handed over instead).
fn many_peers(workers: usize) {
    let test = format!("many_peers_{workers}");
    if !enabled(&test) {
        return;
    }
    let _t = Timed::new(&test);
    let setup = |steering| Setup {
        workers,
        steering,
        peers: 256,
        rounds: 100,
        xdp_flood: None,
        without_bpf_caps: false,
    };
    let on = run(&setup("ebpf"));
    assert!(on.complete, "eBPF: every echo came back: {:?}", on.sim);
    let packets = on.sim.transport + on.sim.initiations + on.sim.echoed;
    let handoffs = on.hub.get("handed_udp") + on.hub.get("handed_tun");
    eprintln!(
        "{workers} workers, eBPF: {handoffs} handoffs of {packets} packets ({:.3}%); {:?}",
        100.0 * handoffs as f64 / packets as f64,
        on.hub
    );
    assert!(
        handoffs * 100 < packets,
        "handoffs below 1%: {handoffs} of {packets}"
    );

    let off = run(&setup("off"));
    assert!(
        off.complete,
        "no steering: every echo came back: {:?}",
        off.sim
    );
    assert_eq!(off.sim.sent, on.sim.sent);
    assert_eq!(off.sim.echoed, on.sim.echoed, "the same traffic delivered");
    let off_handoffs = off.hub.get("handed_udp") + off.hub.get("handed_tun");
    eprintln!("{workers} workers, no steering: {off_handoffs} handoffs of {packets} packets");
    assert!(
        off_handoffs > handoffs,
        "without steering, packets are handed over"
    );
}

#[test]
fn many_peers_handoffs_with_two_workers() {
    many_peers(2);
}

#[test]
fn many_peers_handoffs_with_three_workers() {
    many_peers(3);
}

/// The XDP guard on the hub's uplink: the peers' traffic passes (their
/// indexes are live), a garbage and unknown-index flood is dropped before
/// the stack, and the tunnel keeps delivering every echo.
#[test]
fn xdp_guard_passes_the_tunnel_and_drops_a_flood() {
    if !enabled("xdp_guard") {
        return;
    }
    let _t = Timed::new("xdp_guard");
    let o = run(&Setup {
        workers: 2,
        steering: "ebpf",
        peers: 8,
        rounds: 20,
        xdp_flood: Some(5_000),
        without_bpf_caps: false,
    });
    eprintln!("xdp guard: {:?}\n  hub: {:?}", o.sim, o.hub);
    assert!(
        o.complete,
        "every echo came back through the guard: {:?}\n{}",
        o.sim, o.log
    );
    assert!(o.log.contains("XDP guard attached"), "{}", o.log);
    let passed_data = o.hub.get("xdp_pass_data");
    assert!(
        passed_data >= o.sim.sent,
        "the peers' data passed: {:?} {:?}",
        o.hub,
        o.sim
    );
    assert!(o.hub.get("xdp_pass_initiation") >= 8, "{:?}", o.hub);
    let dropped = o.hub.get("xdp_drop_bad_type")
        + o.hub.get("xdp_drop_bad_length")
        + o.hub.get("xdp_drop_unknown_index");
    assert!(
        dropped > 0 && o.hub.get("xdp_drop_unknown_index") > 0,
        "the flood was dropped: {:?}",
        o.hub
    );
}

/// Without CAP_BPF the kernel refuses the programs: one log line says
/// which steering is off and why, datagrams are steered by the classic
/// filter, TUN packets by the kernel's flow table (or handed over), and
/// every echo still comes back.
#[test]
fn without_bpf_capabilities_the_classic_filter_and_handoffs_carry_the_traffic() {
    if !enabled("without_bpf_caps") {
        return;
    }
    let _t = Timed::new("without_bpf_caps");
    let o = run(&Setup {
        workers: 3,
        steering: "ebpf",
        peers: 12,
        rounds: 20,
        xdp_flood: None,
        without_bpf_caps: true,
    });
    eprintln!("without CAP_BPF: {:?}\n  hub: {:?}", o.sim, o.hub);
    assert!(o.complete, "every echo came back: {:?}\n{}", o.sim, o.log);
    let off: Vec<&str> = o
        .log
        .lines()
        .filter(|l| l.contains("eBPF steering off"))
        .collect();
    assert_eq!(off.len(), 1, "one line says why:\n{}", o.log);
    assert!(off[0].contains("CAP_BPF"), "{}", off[0]);
    assert!(
        !o.hub.has("udp_by_index") && !o.hub.has("tun_hits"),
        "no program ran: {:?}",
        o.hub
    );
    // The classic filter still steers data by index, so only initiations
    // (and no data) need handing over.
    assert!(
        o.hub.get("handed_udp") <= o.sim.initiations,
        "{:?} {:?}",
        o.hub,
        o.sim
    );
}
