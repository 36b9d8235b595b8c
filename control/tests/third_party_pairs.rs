//! Proves the netns harness (tests/netns) with independent WireGuard
//! implementations only: wireguard-go against boringtun-cli and gotatun-cli,
//! and wireguard-go brought up and down by the real `wg-quick`. Corewire
//! joins these pairs once its daemon exists (`WgImpl::Corewire`).
//!
//! Topology (every test; names are unique per test, see `netns::unique_ifname`):
//!
//! ```text
//!  netns cwt-a-*, implementation A                       netns cwt-b-*, implementation B
//! +------------------------------------+                +------------------------------------+
//! |  cw<pid><n>   TUN, mtu 1420        |                |  cw<pid><n>   TUN, mtu 1420        |
//! |    10.0.0.1/24   fd01::1/64        |   WireGuard    |    10.0.0.2/24   fd01::2/64        |
//! |    UDP :51820                      | <============> |    UDP :51820                      |
//! |                                    |                |    (+ 10.0.1.1/32, wg-quick test)  |
//! |  va<pid><n>   veth                 |                |  vb<pid><n>   veth                 |
//! |    10.99.0.1/24  fd00::1/64        |<---- veth ---->|    10.99.0.2/24  fd00::2/64        |
//! +------------------------------------+                +------------------------------------+
//!
//!  A's peer B: endpoint 10.99.0.2:51820  allowed-ips 10.0.0.2/32, fd01::2/128
//!                                        (wg-quick test: + 10.0.1.0/24)
//!  B's peer A: endpoint [fd00::1]:51820  allowed-ips 10.0.0.1/32, fd01::1/128
//! ```
//!
//! Needs root and the tools scripts/test.sh installs; `COREWIRE_SKIP_NETNS=1`
//! skips. Each test prints its duration (`cargo test -- --nocapture`).

mod netns;

use std::path::PathBuf;
use std::time::Duration;

use netns::{
    assert_ping, iperf3_client, iperf3_server, run, unique_ifname, wg_set_private_key,
    wg_show_dump, Keypair, Launch, Netns, TempDir, Timed, Veth, WgDevice, WgImpl, WgPeerDump,
    WgStart,
};

const PORT: &str = "51820";
const IPERF_PORT: u16 = 5201;
const IPERF_SECONDS: u32 = 3;
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Two namespaces joined by a veth (outer addresses as drawn above).
fn two_namespaces() -> (Netns, Netns, Veth) {
    let a = Netns::new("a");
    let b = Netns::new("b");
    let veth = Veth::pair(
        &a,
        &b,
        &["10.99.0.1/24", "fd00::1/64"],
        &["10.99.0.2/24", "fd00::2/64"],
    );
    (a, b, veth)
}

/// Configures one side with one `wg set`, then addresses, MTU 1420 and up.
fn configure(
    ns: &Netns,
    ifname: &str,
    key: &Keypair,
    peer: &Keypair,
    endpoint: &str,
    allowed: &str,
    addrs: &[&str],
) {
    let args = [
        "listen-port",
        PORT,
        "peer",
        &peer.public,
        "endpoint",
        endpoint,
        "allowed-ips",
        allowed,
    ];
    wg_set_private_key(ns, ifname, &key.private, &args);
    for addr in addrs {
        ns.ip_ok(&["addr", "add", addr, "dev", ifname]);
    }
    ns.ip_ok(&["link", "set", "dev", ifname, "mtu", "1420", "up"]);
}

/// The `wg show dump` entry of `peer` on `ifname`.
fn peer_in(ns: &Netns, ifname: &str, peer: &Keypair) -> WgPeerDump {
    let dump = wg_show_dump(ns, ifname);
    dump.peer(&peer.public)
        .cloned()
        .unwrap_or_else(|| panic!("peer {} not in {ifname}'s dump: {dump:?}", peer.public))
}

/// A against B: handshake, ping both ways over IPv4 and IPv6, 3 s of TCP
/// from A to B, and `wg show dump` counters that follow the traffic.
fn pair(test: &str, imp_a: WgImpl, imp_b: WgImpl) {
    if !netns::enabled(test) {
        return;
    }
    let _timed = Timed::new(test);
    let (a, b, _veth) = two_namespaces();
    let (if_a, if_b) = (unique_ifname("cw"), unique_ifname("cw"));
    let dev_a = imp_a.start(&a, &if_a);
    let dev_b = imp_b.start(&b, &if_b);
    let (key_a, key_b) = (Keypair::generate(), Keypair::generate());
    configure(
        &a,
        &if_a,
        &key_a,
        &key_b,
        "10.99.0.2:51820",
        "10.0.0.2/32,fd01::2/128",
        &["10.0.0.1/24", "fd01::1/64"],
    );
    configure(
        &b,
        &if_b,
        &key_b,
        &key_a,
        "[fd00::1]:51820",
        "10.0.0.1/32,fd01::1/128",
        &["10.0.0.2/24", "fd01::2/64"],
    );

    let before = wg_show_dump(&a, &if_a);
    assert_eq!(before.public_key, key_a.public, "wg derives A's public key");
    assert_eq!(before.listen_port, 51820);
    assert_eq!(
        before
            .peer(&key_b.public)
            .expect("peer B in A's dump")
            .latest_handshake,
        0,
        "no handshake before traffic"
    );

    assert_ping(&a, "10.0.0.2", 3, PING_TIMEOUT);
    assert_ping(&b, "10.0.0.1", 3, PING_TIMEOUT);
    assert_ping(&a, "fd01::2", 3, PING_TIMEOUT);
    assert_ping(&b, "fd01::1", 3, PING_TIMEOUT);

    let mid_a = peer_in(&a, &if_a, &key_b);
    let mid_b = peer_in(&b, &if_b, &key_a);
    for (side, imp, peer) in [("A", imp_a, &mid_a), ("B", imp_b, &mid_b)] {
        let age = imp
            .handshake_age(peer)
            .unwrap_or_else(|| panic!("{side}: no handshake after pings"));
        assert!(
            age <= Duration::from_secs(30),
            "{side}: handshake {age:?} ago"
        );
        // Each side sent 12 packets of 84+ bytes (6 requests, 6 replies), encrypted.
        assert!(
            peer.rx_bytes > 1000 && peer.tx_bytes > 1000,
            "{side}: counters {peer:?}"
        );
        assert!(peer.endpoint.is_some(), "{side}: no endpoint");
    }

    let server = iperf3_server(&b, "10.0.0.2", IPERF_PORT);
    let client = iperf3_client(&a, "10.0.0.2", IPERF_PORT, IPERF_SECONDS, &[]);
    assert_eq!(client.error, None, "iperf3 client: {:?}", client.json);
    assert!(
        client.sent_bytes > 0 && client.received_bytes > 0,
        "iperf3 moved nothing: {client:?}"
    );
    let served = server.result(Duration::from_secs(10));
    assert_eq!(served.error, None, "iperf3 server: {:?}", served.json);

    let after_a = peer_in(&a, &if_a, &key_b);
    let after_b = peer_in(&b, &if_b, &key_a);
    // Encrypted packets carry more than the TCP payload iperf3 counts.
    assert!(
        after_a.tx_bytes >= mid_a.tx_bytes + client.received_bytes,
        "A tx: {mid_a:?} -> {after_a:?}"
    );
    assert!(
        after_b.rx_bytes >= mid_b.rx_bytes + client.received_bytes,
        "B rx: {mid_b:?} -> {after_b:?}"
    );
    assert!(
        after_a.rx_bytes > mid_a.rx_bytes && after_b.tx_bytes > mid_b.tx_bytes,
        "ACKs flow back"
    );

    eprintln!(
        "[netns] {test}: {} -> {} TCP {:.0} Mbit/s ({} retransmits), handshake {}s ago",
        imp_a.name(),
        imp_b.name(),
        client.received_bps / 1e6,
        client.retransmits.unwrap_or(0),
        imp_a.handshake_age(&after_a).unwrap_or_default().as_secs()
    );
    drop((dev_a, dev_b));
}

#[test]
fn wireguard_go_with_boringtun() {
    pair(
        "wireguard_go_with_boringtun",
        WgImpl::WireguardGo,
        WgImpl::Boringtun,
    );
}

#[test]
fn wireguard_go_with_gotatun() {
    pair(
        "wireguard_go_with_gotatun",
        WgImpl::WireguardGo,
        WgImpl::Gotatun,
    );
}

/// wireguard-go started by the real `wg-quick up` in namespace A (no kernel
/// module here, so wg-quick falls back to WG_QUICK_USERSPACE_IMPLEMENTATION),
/// and `wg-quick down` leaving no process, socket or link.
///
/// No DNS (it would run resolvconf) and no /0 AllowedIPs (fwmark, policy
/// routing and nft/iptables). The extra AllowedIPs 10.0.1.0/24 checks the
/// route wg-quick adds (`ip -4 route add 10.0.1.0/24 dev IF`): 10.0.0.2/32
/// and fd01::2/128 are inside the interface's own subnets, so wg-quick skips
/// them.
#[test]
fn wg_quick_up_down_with_wireguard_go() {
    const TEST: &str = "wg_quick_up_down_with_wireguard_go";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let (a, b, _veth) = two_namespaces();
    let (if_a, if_b) = (unique_ifname("cw"), unique_ifname("cw"));
    let (key_a, key_b) = (Keypair::generate(), Keypair::generate());

    let dev_b = WgImpl::WireguardGo.start(&b, &if_b);
    configure(
        &b,
        &if_b,
        &key_b,
        &key_a,
        "[fd00::1]:51820",
        "10.0.0.1/32,fd01::1/128",
        &["10.0.0.2/24", "fd01::2/64", "10.0.1.1/32"],
    );

    // wg-quick wants a path ending in <ifname>.conf (or /etc/wireguard/<ifname>.conf).
    let dir = TempDir::new("wgquick");
    let conf = dir.write(
        &format!("{if_a}.conf"),
        &format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\nAddress = 10.0.0.1/24, fd01::1/64\nMTU = 1420\n\n\
             [Peer]\nPublicKey = {}\nEndpoint = 10.99.0.2:{PORT}\nAllowedIPs = 10.0.0.2/32, fd01::2/128, 10.0.1.0/24\n",
            key_a.private, key_b.public
        ),
    );
    let conf = conf.to_str().unwrap();
    let wg_quick = |verb: &str| {
        let mut cmd = a.command("wg-quick", &[verb, conf]);
        cmd.env("WG_QUICK_USERSPACE_IMPLEMENTATION", "wireguard-go");
        // Output goes through files (netns::run): a daemon that kept our
        // stdout/stderr open could not make this wait.
        let out = run(cmd, None, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "wg-quick {verb} failed ({}):\n{stderr}",
            out.status
        );
        eprintln!("[netns] wg-quick {verb}:\n{stderr}");
        stderr
    };

    let up = wg_quick("up");
    // From here on the guard stops the daemon if the test fails.
    let mut dev_a = WgDevice::adopt(WgImpl::WireguardGo, &a, &if_a);
    assert!(up.contains("Missing WireGuard kernel module"), "{up}");
    assert!(up.contains(&format!("[#] wireguard-go {if_a}")), "{up}");
    assert!(
        up.contains(&format!("[#] ip -4 route add 10.0.1.0/24 dev {if_a}")),
        "{up}"
    );
    assert!(!up.contains("Warning"), "{up}");
    let routes = a.ip_ok(&["-4", "route", "show", "dev", &if_a]);
    assert!(routes.contains("10.0.1.0/24"), "{routes}");
    assert!(a
        .ip_ok(&["link", "show", "dev", &if_a])
        .contains("mtu 1420"));

    assert_ping(&a, "10.0.0.2", 3, PING_TIMEOUT);
    assert_ping(&a, "fd01::2", 3, PING_TIMEOUT);
    assert_ping(&a, "10.0.1.1", 3, PING_TIMEOUT);
    assert_ping(&b, "10.0.0.1", 3, PING_TIMEOUT);
    let peer = peer_in(&a, &if_a, &key_b);
    assert!(
        peer.handshake_age()
            .is_some_and(|age| age <= Duration::from_secs(30)),
        "{peer:?}"
    );

    wg_quick("down");
    assert!(
        dev_a.wait_exit(Duration::from_secs(5)),
        "wireguard-go outlived wg-quick down"
    );
    assert!(!dev_a.socket_path().exists(), "socket left behind");
    assert!(!a.link_exists(&if_a), "link left behind");
    assert_eq!(
        a.pids(),
        Vec::<u32>::new(),
        "processes left in the namespace"
    );
    drop(dev_b);
}

/// The harness itself: a test that panics with two namespaces, a veth, a
/// foreground implementation and two daemonized ones (the launch mode
/// corewire uses) leaves no namespace, process or socket behind: the guards'
/// `Drop` runs while the panic unwinds. gotatun leaves its socket on SIGTERM;
/// the guard removes it.
#[test]
fn harness_cleans_up_after_a_panic() {
    const TEST: &str = "harness_cleans_up_after_a_panic";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    // What the panicking part leaves for the checks: namespaces, and per
    // device its PID, socket and log.
    type Left = (String, String, Vec<(u32, PathBuf, PathBuf)>);
    let mut left: Option<Left> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (a, b, _veth) = two_namespaces();
        let foreground = WgImpl::WireguardGo.start(&a, &unique_ifname("cw"));
        let daemon_b = WgImpl::Boringtun.start_with(&b, &unique_ifname("cw"), Launch::Daemon);
        let daemon_a = WgImpl::Gotatun.start_with(&a, &unique_ifname("cw"), Launch::Daemon);
        assert_eq!(a.pids().len(), 2, "two processes in A");
        let devices = [&foreground, &daemon_b, &daemon_a];
        left = Some((
            a.name().to_owned(),
            b.name().to_owned(),
            devices
                .iter()
                .map(|d| (d.pid().unwrap(), d.socket_path(), d.log_path()))
                .collect(),
        ));
        panic!("{TEST}: deliberate panic; the cleanup that follows is under test");
    }));
    assert!(outcome.is_err());
    let (ns_a, ns_b, devices) = left.expect("set-up failed before the deliberate panic");
    for ns in [ns_a, ns_b] {
        assert!(!netns::netns_exists(&ns), "namespace {ns} left behind");
    }
    for (pid, socket, log) in devices {
        assert!(!netns::pid_alive(pid), "process {pid} left running");
        assert!(!socket.exists(), "socket {} left behind", socket.display());
        // Kept for debugging because of the panic; this one was on purpose.
        let _ = std::fs::remove_file(log);
    }
}
