//! Roaming and rekeying with corewire, on the real network stack.
//!
//! Roaming: a spoke's outer address changes in the middle of a transfer
//! (`ip addr del` the old veth address, `ip addr add` a new one in the same
//! subnet, as after a DHCP change). iperf3 TCP and a fast ping keep running
//! across the change; the hub learns the new endpoint from the spoke's next
//! authenticated packet (`wg show` follows it) and reaches the spoke there.
//! Hub corewire with spoke wireguard-go (which also changes its port, see
//! [`Move`]) and with spoke corewire (over IPv6; and over IPv4 with a new
//! port), and spoke corewire with a wireguard-go hub. One more test holds
//! the spoke on a source address inside the tunnel for a second (as Linux
//! briefly does while a new IPv6 address is tentative): the hub must not
//! loop its own datagrams through its TUN, and must recover.
//!
//! Rekeying: a ping every 0.2 s for 140 s spans REKEY_AFTER_TIME (120 s),
//! with the protocol's own timers (no knob shortens them). The initiator of
//! the first handshake must start a new one ~120 s later, without losing more
//! than a couple of pings, and `wg show dump` must show latest-handshake
//! advance on both sides. Three pairs run at once in one test (so the file
//! takes ~2.5 min however many test threads cargo uses): corewire with
//! corewire, corewire initiating to wireguard-go, and wireguard-go
//! initiating to corewire (corewire answers the rekey).
//!
//! Topology (each test, and each rekey pair; names unique per test):
//!
//! ```text
//!  netns cwt-hub-*: hub (rekey: initiator)              netns cwt-spoke-*: spoke (rekey: responder)
//! +------------------------------------+                +------------------------------------+
//! |  cw<pid><n>   TUN, mtu 1420        |                |  cw<pid><n>   TUN, mtu 1420        |
//! |    10.0.0.1/24   fd01::1/64        |   WireGuard    |    10.0.0.2/24   fd01::2/64        |
//! |    UDP :51820                      | <============> |    UDP :51821                      |
//! |                                    |                |                                    |
//! |  va<pid><n>   veth                 |                |  vb<pid><n>   veth                 |
//! |    10.99.0.1/24  fd00::1/64        |<---- veth ---->|    10.99.0.2/24  fd00::2/64        |
//! |                                    |                |    roaming: -> 10.99.0.3 / fd00::3 |
//! +------------------------------------+                +------------------------------------+
//!
//!  roaming: spoke's peer hub: endpoint 10.99.0.1:51820 or [fd00::1]:51820
//!           hub's peer spoke: no endpoint (learned, then re-learned after the move)
//!  rekey:   hub (initiator) has the spoke's endpoint, the spoke none
//! ```
//!
//! Corewire runs in the foreground (`corewire -f IF`), so that a failing test
//! prints the end of its log (`LOG_LEVEL=debug cargo test` for more).
//! Needs root and the tools scripts/test.sh installs; `COREWIRE_SKIP_NETNS=1`
//! skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use netns::{
    assert_ping, iperf3_client, iperf3_server, socket_addr, unique_ifname, unix_now, wg_set,
    wg_set_private_key, wg_show_dump, Json, Keypair, Launch, Netns, Timed, Veth, WgDevice, WgImpl,
    WgPeerDump, WgStart,
};

const HUB_PORT: u16 = 51820;
const SPOKE_PORT: u16 = 51821;
const IPERF_PORT: u16 = 5201;
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Which address family carries the encrypted UDP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outer {
    V4,
    V6,
}

/// Hub and spoke, each in its own namespace, joined by a veth, with their
/// implementations started (not configured).
struct Pair {
    hub_key: Keypair,
    spoke_key: Keypair,
    hub_if: String,
    spoke_if: String,
    // Drop order: devices, then the veth, then the namespaces.
    hub_dev: Option<WgDevice>,
    spoke_dev: Option<WgDevice>,
    veth: Veth,
    hub: Netns,
    spoke: Netns,
}

fn launch(imp: WgImpl) -> Launch {
    match imp {
        // Foreground: our child, with its log kept if the test fails.
        WgImpl::Corewire => Launch::Foreground,
        other => other.default_launch(),
    }
}

impl Pair {
    fn new(hub_imp: WgImpl, spoke_imp: WgImpl) -> Pair {
        let hub = Netns::new("hub");
        let spoke = Netns::new("spoke");
        let veth = Veth::pair(
            &hub,
            &spoke,
            &["10.99.0.1/24", "fd00::1/64"],
            &["10.99.0.2/24", "fd00::2/64"],
        );
        let (hub_if, spoke_if) = (unique_ifname("cw"), unique_ifname("cw"));
        let hub_dev = hub_imp.start_with(&hub, &hub_if, launch(hub_imp));
        let spoke_dev = spoke_imp.start_with(&spoke, &spoke_if, launch(spoke_imp));
        Pair {
            hub_key: Keypair::generate(),
            spoke_key: Keypair::generate(),
            hub_if,
            spoke_if,
            hub_dev: Some(hub_dev),
            spoke_dev: Some(spoke_dev),
            veth,
            hub,
            spoke,
        }
    }

    /// One `wg set` per side, then tunnel addresses, MTU and up. The side
    /// whose `*_endpoint` is given initiates.
    fn configure(&self, hub_endpoint_on_spoke: Option<&str>, spoke_endpoint_on_hub: Option<&str>) {
        let sides = [
            (
                &self.hub,
                &self.hub_if,
                &self.hub_key,
                &self.spoke_key,
                HUB_PORT,
                spoke_endpoint_on_hub,
                "10.0.0.2/32,fd01::2/128",
                ["10.0.0.1/24", "fd01::1/64"],
            ),
            (
                &self.spoke,
                &self.spoke_if,
                &self.spoke_key,
                &self.hub_key,
                SPOKE_PORT,
                hub_endpoint_on_spoke,
                "10.0.0.1/32,fd01::1/128",
                ["10.0.0.2/24", "fd01::2/64"],
            ),
        ];
        for (ns, ifname, key, peer, port, endpoint, allowed, addrs) in sides {
            let port = port.to_string();
            let mut args = vec![
                "listen-port",
                &port,
                "peer",
                &peer.public,
                "allowed-ips",
                allowed,
            ];
            if let Some(endpoint) = endpoint {
                args.extend(["endpoint", endpoint]);
            }
            wg_set_private_key(ns, ifname, &key.private, &args);
            for addr in addrs {
                ns.ip_ok(&["addr", "add", addr, "dev", ifname]);
            }
            ns.ip_ok(&["link", "set", "dev", ifname, "mtu", "1420", "up"]);
        }
    }

    /// The hub's view of the spoke.
    fn hub_peer(&self) -> WgPeerDump {
        let dump = wg_show_dump(&self.hub, &self.hub_if);
        dump.peer(&self.spoke_key.public)
            .cloned()
            .unwrap_or_else(|| panic!("spoke not in the hub's dump: {dump:?}"))
    }

    /// The spoke's view of the hub.
    fn spoke_peer(&self) -> WgPeerDump {
        let dump = wg_show_dump(&self.spoke, &self.spoke_if);
        dump.peer(&self.hub_key.public)
            .cloned()
            .unwrap_or_else(|| panic!("hub not in the spoke's dump: {dump:?}"))
    }

    /// Both sides' `wg show dump`, UDP sockets and neighbours, for failure
    /// messages.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (side, ns, ifname) in [
            ("hub", &self.hub, &self.hub_if),
            ("spoke", &self.spoke, &self.spoke_if),
        ] {
            for args in [
                &["wg", "show", ifname, "dump"][..],
                &["ss", "-uanm"],
                &["ip", "neigh"],
                &["ip", "-brief", "addr"],
            ] {
                let o = ns.exec(args[0], &args[1..]);
                out.push_str(&format!(
                    "{side}$ {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
        out
    }

    /// Stops both implementations (devices before namespaces).
    fn stop(&mut self) {
        drop(self.hub_dev.take());
        drop(self.spoke_dev.take());
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Explicitly first: fields drop in declaration order afterwards.
        self.stop();
    }
}

// --- Reading ping output -----------------------------------------------------

/// What a `ping -n` (not quiet) printed: which sequence numbers came back.
#[derive(Debug)]
struct PingLog {
    transmitted: u32,
    replies: BTreeSet<u32>,
    /// Sequence numbers with no reply.
    lost: Vec<u32>,
    /// The longest run of consecutive lost sequence numbers.
    longest_gap: u32,
}

impl PingLog {
    fn parse(text: &str) -> PingLog {
        let mut replies = BTreeSet::new();
        for line in text.lines() {
            if !line.contains("bytes from") {
                continue;
            }
            let seq = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|n| n.parse().ok());
            if let Some(seq) = seq {
                replies.insert(seq);
            }
        }
        let transmitted = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let lost: Vec<u32> = (1..=transmitted).filter(|s| !replies.contains(s)).collect();
        let (mut longest_gap, mut run, mut prev) = (0, 0, None);
        for &seq in &lost {
            run = if prev == Some(seq.wrapping_sub(1)) {
                run + 1
            } else {
                1
            };
            longest_gap = longest_gap.max(run);
            prev = Some(seq);
        }
        PingLog {
            transmitted,
            replies,
            lost,
            longest_gap,
        }
    }
}

/// Bytes the receiver counted in each iperf3 interval of about a second
/// (`intervals[].sum`; a last sliver of an interval is left out).
fn interval_bytes(json: &Json) -> Vec<u64> {
    let field = |i: &Json, key: &str| i.get("sum")?.get(key)?.as_f64();
    json.get("intervals")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|i| field(i, "seconds").unwrap_or(0.0) >= 0.5)
        .map(|i| field(i, "bytes").unwrap_or(0.0) as u64)
        .collect()
}

// --- Roaming -----------------------------------------------------------------

/// How long the transfer runs, and when (after it starts) the spoke moves.
const ROAM_IPERF_SECONDS: u32 = 6;
const ROAM_AFTER: Duration = Duration::from_secs(2);
/// When (after the move) the test records both sides' state for its messages.
const ROAM_SETTLE: Duration = Duration::from_secs(2);
/// Pings every 0.1 s from the spoke to the hub during the transfer.
const ROAM_PINGS: u32 = 60;
/// At most this many of them (one second's worth) may be lost by the move.
const ROAM_MAX_LOST: usize = 10;

/// The spoke's listen port after a [`Move::AddressAndPort`].
const SPOKE_NEW_PORT: u16 = 51822;

/// How the spoke moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// `ip addr del` the old address, `ip addr add` the new one.
    Address,
    /// The same, then `wg set IF listen-port 51822`: the spoke rebinds its
    /// UDP socket, so both address and port change (as behind a NAT that
    /// changed its mapping). Needed for a wireguard-go spoke: v0.0.20220316
    /// caches the source address of its endpoint ("sticky sockets") and
    /// clears that cache only when a send fails with EINVAL, but Linux
    /// refuses a vanished source address with ENETUNREACH, so it keeps
    /// failing ("Failed to send data packet: network is unreachable")
    /// until a rebind (which clears the cache) or a packet from the hub
    /// (which never comes: the hub answers the old address).
    AddressAndPort,
}

/// The spoke (`spoke_imp`) moves from .2 to .3 (or fd00::2 to fd00::3)
/// during a transfer to the hub (`hub_imp`).
fn roaming(test: &str, hub_imp: WgImpl, spoke_imp: WgImpl, outer: Outer, how: Move) {
    if !netns::enabled(test) {
        return;
    }
    let timed = Timed::new(test);
    let mut pair = Pair::new(hub_imp, spoke_imp);
    let (hub_outer, old, new, plen) = match outer {
        Outer::V4 => ("10.99.0.1", "10.99.0.2", "10.99.0.3", 24),
        Outer::V6 => ("fd00::1", "fd00::2", "fd00::3", 64),
    };
    let hub_endpoint = socket_addr(hub_outer, HUB_PORT);
    pair.configure(Some(&hub_endpoint), None);

    // Handshake from the spoke; the hub learns where it is.
    assert_ping(&pair.spoke, "10.0.0.1", 3, PING_TIMEOUT);
    let before = pair.hub_peer();
    assert_eq!(
        before.endpoint.as_deref(),
        Some(socket_addr(old, SPOKE_PORT).as_str()),
        "hub ({}) endpoint before the move: {before:?}",
        hub_imp.name()
    );

    let server = iperf3_server(&pair.hub, "10.0.0.1", IPERF_PORT);
    let count = ROAM_PINGS.to_string();
    let ping_args = [
        "-n", "-i", "0.1", "-c", &count, "-W", "1", "-w", "15", "fd01::1",
    ];
    let (client, moved_at) = std::thread::scope(|s| {
        let spoke = &pair.spoke;
        // A steady transfer, rate-limited so the pings measure the move and
        // not congestion: a saturated tunnel overflows the receiving
        // socket (wireguard-go keeps the default 212 KB buffer) and loses
        // pings whatever the roaming does.
        let client = s.spawn(move || {
            iperf3_client(
                spoke,
                "10.0.0.1",
                IPERF_PORT,
                ROAM_IPERF_SECONDS,
                &["-b", "100M"],
            )
        });
        let mut ping = spoke.spawn("ping", &ping_args, &[]);
        let start = Instant::now();
        sleep(ROAM_AFTER);
        let dev = pair.veth.name_b();
        let (old_cidr, new_cidr) = (format!("{old}/{plen}"), format!("{new}/{plen}"));
        spoke.ip_ok(&["addr", "del", &old_cidr, "dev", dev]);
        let mut add = vec!["addr", "add", new_cidr.as_str(), "dev", dev];
        if outer == Outer::V6 {
            add.push("nodad");
        }
        spoke.ip_ok(&add);
        if how == Move::AddressAndPort {
            let port = SPOKE_NEW_PORT.to_string();
            wg_set(spoke, &pair.spoke_if, &["listen-port", &port]);
        }
        let moved_at = start.elapsed();
        // Kept for the failure messages: how both sides see it shortly after.
        sleep(ROAM_SETTLE);
        let diag = pair.diagnostics();
        let client = client.join().unwrap_or_else(|e| {
            eprintln!("[netns] {test}: {ROAM_SETTLE:?} after the move:\n{diag}");
            std::panic::resume_unwind(e)
        });
        let ended = ping.wait_exit(Duration::from_secs(20));
        assert!(ended.is_some(), "ping still running:\n{}", ping.log());
        let log = PingLog::parse(&ping.log());
        (client, (moved_at, log, diag))
    });
    let (moved_at, ping_log, diag) = moved_at;
    let diag = format!("\n--- {ROAM_SETTLE:?} after the move ---\n{diag}");
    let served = server.result(Duration::from_secs(10));

    assert_eq!(client.error, None, "iperf3 client: {:?}{diag}", client.json);
    assert_eq!(served.error, None, "iperf3 server: {:?}{diag}", served.json);
    // The receiver's per-second counts: every second after the move moved data.
    let intervals = interval_bytes(&served.json);
    let after_move: Vec<u64> = intervals
        .iter()
        .copied()
        .skip(ROAM_AFTER.as_secs() as usize + 1)
        .collect();
    assert!(
        !after_move.is_empty() && after_move.iter().all(|&b| b > 0),
        "transfer stalled after the move at {moved_at:?}: bytes per second {intervals:?}{diag}"
    );
    // With -w, ping sends until -c replies came back (or the deadline).
    assert!(
        ping_log.replies.len() >= ROAM_PINGS as usize,
        "ping output: {ping_log:?}"
    );
    assert!(
        ping_log.lost.len() <= ROAM_MAX_LOST,
        "{} of {} pings lost across the move (seq {:?}){diag}",
        ping_log.lost.len(),
        ping_log.transmitted,
        ping_log.lost
    );

    // The hub follows the spoke, and reaches it there.
    let after = pair.hub_peer();
    let new_port = match how {
        Move::Address => SPOKE_PORT,
        Move::AddressAndPort => SPOKE_NEW_PORT,
    };
    let new_endpoint = socket_addr(new, new_port);
    assert_eq!(
        after.endpoint.as_deref(),
        Some(new_endpoint.as_str()),
        "hub ({}) endpoint after the move: {after:?}{diag}",
        hub_imp.name()
    );
    assert!(
        after.rx_bytes >= before.rx_bytes + served.received_bytes,
        "hub rx grew by {} < {}: {before:?} -> {after:?}",
        after.rx_bytes - before.rx_bytes,
        served.received_bytes
    );
    assert_ping(&pair.hub, "10.0.0.2", 3, PING_TIMEOUT);
    assert_ping(&pair.hub, "fd01::2", 3, PING_TIMEOUT);
    assert_ping(&pair.spoke, "10.0.0.1", 3, PING_TIMEOUT);
    let spoke_view = pair.spoke_peer();
    assert_eq!(
        spoke_view.endpoint.as_deref(),
        Some(hub_endpoint.as_str()),
        "the spoke's endpoint for the hub changed"
    );

    eprintln!(
        "[netns] {test}: spoke {} moved ({how:?}) {old} -> {new} at {:.1} s into a {} s transfer to hub {}: \
         {:.0} Mbit/s, bytes/s {intervals:?}; {} of {} pings lost (seq {:?}); \
         hub endpoint now {new_endpoint}; {:.1} s",
        spoke_imp.name(),
        moved_at.as_secs_f64(),
        ROAM_IPERF_SECONDS,
        hub_imp.name(),
        served.received_bps / 1e6,
        ping_log.lost.len(),
        ping_log.transmitted,
        ping_log.lost,
        timed.elapsed().as_secs_f64()
    );
    pair.stop();
}

#[test]
fn roaming_wireguard_go_spoke_to_corewire_hub() {
    roaming(
        "roaming_wireguard_go_spoke_to_corewire_hub",
        WgImpl::Corewire,
        WgImpl::WireguardGo,
        Outer::V4,
        Move::AddressAndPort,
    );
}

#[test]
fn roaming_corewire_spoke_to_corewire_hub_over_ipv6() {
    roaming(
        "roaming_corewire_spoke_to_corewire_hub_over_ipv6",
        WgImpl::Corewire,
        WgImpl::Corewire,
        Outer::V6,
        Move::Address,
    );
}

/// Corewire rebinds its UDP socket to a new port in mid-transfer.
#[test]
fn roaming_corewire_spoke_to_corewire_hub_new_port() {
    roaming(
        "roaming_corewire_spoke_to_corewire_hub_new_port",
        WgImpl::Corewire,
        WgImpl::Corewire,
        Outer::V4,
        Move::AddressAndPort,
    );
}

#[test]
fn roaming_corewire_spoke_to_wireguard_go_hub() {
    roaming(
        "roaming_corewire_spoke_to_wireguard_go_hub",
        WgImpl::WireguardGo,
        WgImpl::Corewire,
        Outer::V4,
        Move::Address,
    );
}

/// While a new IPv6 address is still tentative, Linux may already route
/// through its prefix and pick the source from another interface: here the
/// spoke's own tunnel address, fd01::2 (seen on this machine with a plain
/// UDP sender: ~1 datagram per address change). The hub then receives an
/// authenticated packet from [fd01::2]:51821 and roams there, so its replies
/// are routed into its own TUN. The kernel drops such a send (-ELOOP,
/// "Avoiding routing loop" in drivers/net/wireguard/socket.c), and the next
/// packet from the spoke's real address moves the endpoint back. This test
/// makes that transient last ~1 s (old address gone, a host route to the hub
/// on the veth, no global address there), then gives the spoke its new
/// address: both sides must end up on the veth addresses again and the
/// tunnel must carry traffic.
#[test]
fn roaming_through_a_tunnel_source_address_does_not_loop() {
    /// Bytes the hub may send in the transient second (legitimate: ~3 KB).
    const LOOP_BUDGET: u64 = 32 * 1024;
    const TEST: &str = "roaming_through_a_tunnel_source_address_does_not_loop";
    if !netns::enabled(TEST) {
        return;
    }
    let timed = Timed::new(TEST);
    let mut pair = Pair::new(WgImpl::Corewire, WgImpl::Corewire);
    let hub_endpoint = socket_addr("fd00::1", HUB_PORT);
    pair.configure(Some(&hub_endpoint), None);
    assert_ping(&pair.spoke, "fd01::1", 3, PING_TIMEOUT);
    let dev = pair.veth.name_b().to_owned();

    // Background traffic from the spoke (the hub answers every request).
    let mut ping = pair.spoke.spawn(
        "ping",
        &["-n", "-q", "-i", "0.05", "-c", "100", "-w", "8", "fd01::1"],
        &[],
    );
    sleep(Duration::from_millis(500));
    let hub_before = pair.hub_peer();
    pair.spoke
        .ip_ok(&["addr", "del", "fd00::2/64", "dev", &dev]);
    pair.spoke
        .ip_ok(&["-6", "route", "add", "fd00::1/128", "dev", &dev]);
    let source = pair
        .spoke
        .ip_ok(&["-6", "route", "get", "fd00::1"])
        .trim()
        .to_owned();
    sleep(Duration::from_secs(1));
    let hub_during = pair.hub_peer();
    let during = hub_during.endpoint.clone();
    let looped = hub_during.tx_bytes - hub_before.tx_bytes;
    pair.spoke
        .ip_ok(&["-6", "route", "del", "fd00::1/128", "dev", &dev]);
    pair.spoke
        .ip_ok(&["addr", "add", "fd00::3/64", "dev", &dev, "nodad"]);

    let want_hub = socket_addr("fd00::3", SPOKE_PORT);
    let (mut hub_view, mut spoke_view) = (None, None);
    let healed = netns::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        hub_view = pair.hub_peer().endpoint;
        spoke_view = pair.spoke_peer().endpoint;
        hub_view.as_deref() == Some(want_hub.as_str())
            && spoke_view.as_deref() == Some(hub_endpoint.as_str())
    });
    let diag = pair.diagnostics();
    let _ = ping.wait_exit(Duration::from_secs(10));
    assert!(
        healed,
        "after the spoke's transient source (`ip route get fd00::1`: {source}; hub's endpoint \
         for the spoke meanwhile: {during:?}) the endpoints did not return to the veth: hub \
         has {hub_view:?} (want {want_hub}), spoke has {spoke_view:?} (want {hub_endpoint}); \
         an endpoint inside the tunnel routes corewire's own datagrams into its TUN\n{diag}"
    );
    // Legitimate traffic in that second: ~20 encrypted replies of ~130
    // bytes. A hub that loops re-encrypts each of its own datagrams,
    // growing by 80 bytes per turn, until it passes the MTU: ~12 KB each.
    assert!(
        looped <= LOOP_BUDGET,
        "the hub sent {looped} bytes to the spoke in the ~1 s its endpoint was \
         {during:?} (inside the tunnel; legitimate traffic is ~3 KB): its own datagrams \
         came back through its TUN and were encrypted again (a routing loop; the kernel \
         refuses such a send with -ELOOP)\n{diag}"
    );
    assert_ping(&pair.spoke, "fd01::1", 3, PING_TIMEOUT);
    assert_ping(&pair.hub, "10.0.0.2", 3, PING_TIMEOUT);
    eprintln!(
        "[netns] {TEST}: spoke sent from {source}; hub's endpoint meanwhile {during:?}, then \
         {want_hub}; hub sent {looped} bytes to the spoke in that second; {:.1} s",
        timed.elapsed().as_secs_f64()
    );
    pair.stop();
}

// --- Rekeying ----------------------------------------------------------------

/// REKEY_AFTER_TIME.
const REKEY_AFTER: u64 = 120;
/// Pings at 0.2 s: 700 of them span 140 s, REKEY_AFTER_TIME plus a margin.
const REKEY_PINGS: u32 = 700;
/// Lost pings allowed over the whole window.
const REKEY_MAX_LOST: usize = 2;
/// How often the test reads `wg show dump` while the pings run.
const REKEY_SAMPLE: Duration = Duration::from_secs(2);

/// The handshake times each side reported, in order, without repeats.
fn push_new(times: &mut Vec<u64>, t: u64) {
    if t != 0 && times.last() != Some(&t) {
        times.push(t);
    }
}

/// `initiator` (in the hub namespace, with the endpoint) against
/// `responder`: a ping every 0.2 s for 140 s from the initiator. Returns a
/// summary line.
fn rekey(initiator: WgImpl, responder: WgImpl) -> String {
    let what = format!("{} -> {}", initiator.name(), responder.name());
    let start = Instant::now();
    let mut pair = Pair::new(initiator, responder);
    let spoke_endpoint = socket_addr("10.99.0.2", SPOKE_PORT);
    pair.configure(None, Some(&spoke_endpoint));

    assert_ping(&pair.hub, "10.0.0.2", 2, PING_TIMEOUT);
    let first = pair.hub_peer().latest_handshake;
    assert_ne!(first, 0, "{what}: no handshake after the first pings");

    let count = REKEY_PINGS.to_string();
    // -w bounds it even if replies stop.
    let deadline = (u64::from(REKEY_PINGS) / 5 + 10).to_string();
    let mut ping = pair.hub.spawn(
        "ping",
        &[
            "-n", "-i", "0.2", "-c", &count, "-W", "1", "-w", &deadline, "10.0.0.2",
        ],
        &[],
    );
    let (mut hub_times, mut spoke_times) = (vec![first], Vec::new());
    let bound = Duration::from_secs(u64::from(REKEY_PINGS) / 5 + 20);
    let pinging = Instant::now();
    while ping.is_running() && pinging.elapsed() < bound {
        sleep(REKEY_SAMPLE);
        push_new(&mut hub_times, pair.hub_peer().latest_handshake);
        push_new(&mut spoke_times, pair.spoke_peer().latest_handshake);
    }
    let ended = ping.wait_exit(Duration::from_secs(5));
    let text = ping.log();
    assert!(ended.is_some(), "{what}: ping still running:\n{text}");
    let log = PingLog::parse(&text);
    let hub_end = pair.hub_peer();
    let spoke_end = pair.spoke_peer();
    push_new(&mut hub_times, hub_end.latest_handshake);
    push_new(&mut spoke_times, spoke_end.latest_handshake);

    // With -w, ping sends until -c replies came back (or the deadline).
    assert!(
        log.replies.len() >= REKEY_PINGS as usize,
        "{what}: ping ended early:\n{}",
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    assert!(
        log.lost.len() <= REKEY_MAX_LOST,
        "{what}: {} of {REKEY_PINGS} pings lost (seq {:?}, longest gap {}); handshakes: \
         initiator {hub_times:?}, responder {spoke_times:?}",
        log.lost.len(),
        log.lost,
        log.longest_gap
    );
    // A new handshake ~REKEY_AFTER_TIME after the first, seen by both sides.
    let rekeyed = hub_end.latest_handshake;
    assert!(
        rekeyed > first,
        "{what}: no new handshake in {} s (initiator reports {hub_times:?}, responder \
         {spoke_times:?})",
        pinging.elapsed().as_secs()
    );
    let second = hub_times.get(1).copied().unwrap_or(rekeyed);
    assert!(
        (REKEY_AFTER - 10..=REKEY_AFTER + 15).contains(&(second.saturating_sub(first))),
        "{what}: second handshake {} s after the first, not ~{REKEY_AFTER} s (initiator \
         {hub_times:?}, responder {spoke_times:?})",
        second.saturating_sub(first)
    );
    assert!(
        hub_times.len() <= 3 && spoke_times.len() <= 3,
        "{what}: too many handshakes: initiator {hub_times:?}, responder {spoke_times:?}"
    );
    assert!(
        spoke_end.latest_handshake + 5 >= rekeyed,
        "{what}: the responder did not see the new handshake: {spoke_times:?} vs {hub_times:?}"
    );
    let now = unix_now();
    for (side, imp, peer) in [
        ("initiator", initiator, &hub_end),
        ("responder", responder, &spoke_end),
    ] {
        let age = imp.handshake_age(peer);
        assert!(
            age.is_some_and(|a| a <= Duration::from_secs(60)) && peer.latest_handshake <= now + 1,
            "{what}: {side} ({}) handshake {age:?} ago: {peer:?}",
            imp.name()
        );
    }
    // And the tunnel still carries traffic both ways on the new keys.
    assert_ping(&pair.spoke, "10.0.0.1", 3, PING_TIMEOUT);
    assert_ping(&pair.hub, "fd01::2", 3, PING_TIMEOUT);
    pair.stop();
    format!(
        "{what}: {} of {REKEY_PINGS} pings lost (seq {:?}, longest gap {}), {} replies; \
         handshakes at +0 s and +{} s (initiator {hub_times:?}, responder {spoke_times:?}); \
         {:.1} s",
        log.lost.len(),
        log.lost,
        log.longest_gap,
        log.replies.len(),
        second.saturating_sub(first),
        start.elapsed().as_secs_f64()
    )
}

/// Three pairs across one rekey each, in parallel threads of one test: the
/// waiting dominates, and running them together keeps the file at ~2.5 min
/// even when cargo runs tests one at a time.
#[test]
fn rekey_keeps_traffic_flowing() {
    const TEST: &str = "rekey_keeps_traffic_flowing";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let pairs = [
        (WgImpl::Corewire, WgImpl::Corewire),
        (WgImpl::Corewire, WgImpl::WireguardGo),
        (WgImpl::WireguardGo, WgImpl::Corewire),
    ];
    let outcomes: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|&(i, r)| s.spawn(move || rekey(i, r)))
            .collect();
        handles
            .into_iter()
            .zip(pairs)
            .map(|(h, (i, r))| {
                h.join().map_err(|e| {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    format!("{} -> {}: {msg}", i.name(), r.name())
                })
            })
            .collect()
    });
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(summary) => eprintln!("[netns] {TEST}: {summary}"),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
