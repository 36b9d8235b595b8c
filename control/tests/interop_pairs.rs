//! Corewire against every other implementation (wireguard-go, boringtun-cli,
//! gotatun) and against itself, in both roles: once with corewire
//! initiating, once with the other side initiating. Only the initiator knows
//! its peer's endpoint; the responder has none and learns it from the
//! handshake. Each case checks the handshake, IPv4 and IPv6 pings both ways
//! through the tunnel, 3 s of iperf3 TCP from initiator to responder, and
//! what the real `wg show IF dump` reports on each side (a recent handshake
//! in Unix seconds, the learned endpoint, byte counters that grew by at
//! least what iperf3 moved).
//!
//! Topology (every test; names are unique per test, see `netns::unique_ifname`):
//!
//! ```text
//!  netns cwt-cw-*: corewire (A)                         netns cwt-peer-*: the other (B)
//! +------------------------------------+                +------------------------------------+
//! |  cw<pid><n>   TUN, mtu 1420        |                |  cw<pid><n>   TUN, mtu 1420        |
//! |    10.0.0.1/24   fd01::1/64        |   WireGuard    |    10.0.0.2/24   fd01::2/64        |
//! |    UDP :51820 as responder,        | <============> |    UDP :51820 as responder,        |
//! |    a random port as initiator      |                |    a random port as initiator      |
//! |                                    |                |                                    |
//! |  va<pid><n>   veth                 |                |  vb<pid><n>   veth                 |
//! |    10.99.0.1/24  fd00::1/64        |<---- veth ---->|    10.99.0.2/24  fd00::2/64        |
//! +------------------------------------+                +------------------------------------+
//!
//!  initiator's peer: endpoint <responder's veth address>:51820 (IPv4, or
//!                    [fd00::x]:51820 in the *_v6 cases), allowed-ips its /32 and /128
//!  responder's peer: no endpoint (learned: <initiator's veth address>:<its port>)
//! ```
//!
//! Corewire runs in the foreground (`corewire -f IF`), so that a failing test
//! prints the end of its log (`LOG_LEVEL=debug cargo test` for more), except
//! the responder of `corewire_with_corewire`, which daemonizes as under
//! wg-quick (`corewire IF`).
//!
//! Needs root and the tools scripts/test.sh installs; `COREWIRE_SKIP_NETNS=1`
//! skips. Each test prints its duration and throughput (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::time::Duration;

use netns::{
    assert_ping, iperf3_client, iperf3_server, socket_addr, unique_ifname, unix_now,
    wg_set_private_key, wg_show_dump, Keypair, Launch, Netns, Timed, Veth, WgDevice, WgImpl,
    WgPeerDump, WgStart,
};

const RESPONDER_PORT: u16 = 51820;
const IPERF_PORT: u16 = 5201;
const IPERF_SECONDS: u32 = 3;
const PING_COUNT: u32 = 3;
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// `wg show` must report the handshake as at most this old.
const HANDSHAKE_FRESH: Duration = Duration::from_secs(60);

/// Which address family carries the encrypted UDP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outer {
    V4,
    V6,
}

/// One end of the pair.
struct End {
    imp: WgImpl,
    ns: Netns,
    ifname: String,
    key: Keypair,
    /// Veth addresses, without prefix length.
    outer_v4: &'static str,
    outer_v6: &'static str,
    /// Tunnel addresses, without prefix length.
    inner_v4: &'static str,
    inner_v6: &'static str,
}

impl End {
    fn outer(&self, outer: Outer) -> &'static str {
        match outer {
            Outer::V4 => self.outer_v4,
            Outer::V6 => self.outer_v6,
        }
    }

    fn peer_dump(&self, peer: &End) -> WgPeerDump {
        let dump = wg_show_dump(&self.ns, &self.ifname);
        dump.peer(&peer.key.public).cloned().unwrap_or_else(|| {
            panic!(
                "{}: peer {} not in {}'s dump: {dump:?}",
                self.imp.name(),
                peer.key.public,
                self.ifname
            )
        })
    }

    fn start(&self, launch: Launch) -> WgDevice {
        self.imp.start_with(&self.ns, &self.ifname, launch)
    }
}

/// Configures `end` with one `wg set` (private key, port, peer), then its
/// tunnel addresses, MTU 1420 and up. The initiator gets no listen port
/// (a random one) and the responder's endpoint; the responder gets port
/// 51820 and no endpoint.
fn configure(end: &End, peer: &End, initiator: bool, outer: Outer) {
    let allowed = format!("{}/32,{}/128", peer.inner_v4, peer.inner_v6);
    let endpoint = socket_addr(peer.outer(outer), RESPONDER_PORT);
    let port = RESPONDER_PORT.to_string();
    let mut args: Vec<&str> = Vec::new();
    if !initiator {
        args.extend(["listen-port", &port]);
    }
    args.extend(["peer", &peer.key.public, "allowed-ips", &allowed]);
    if initiator {
        args.extend(["endpoint", &endpoint]);
    }
    wg_set_private_key(&end.ns, &end.ifname, &end.key.private, &args);
    for addr in [
        format!("{}/24", end.inner_v4),
        format!("{}/64", end.inner_v6),
    ] {
        end.ns.ip_ok(&["addr", "add", &addr, "dev", &end.ifname]);
    }
    end.ns
        .ip_ok(&["link", "set", "dev", &end.ifname, "mtu", "1420", "up"]);
}

/// What `wg show dump` must say about a peer after traffic: a handshake that
/// is recent, in Unix seconds (corewire: checked against the clock exactly;
/// the others through [`WgImpl::handshake_age`], which knows boringtun's
/// quirk).
fn check_handshake(end: &End, peer: &WgPeerDump) {
    let who = end.imp.name();
    if end.imp == WgImpl::Corewire {
        let now = unix_now();
        assert!(
            peer.latest_handshake != 0
                && peer.latest_handshake <= now + 1
                && peer.latest_handshake + HANDSHAKE_FRESH.as_secs() >= now,
            "{who}: latest-handshake {} is not Unix time within the last {HANDSHAKE_FRESH:?} \
             (now {now}): {peer:?}",
            peer.latest_handshake
        );
    } else {
        let age = end
            .imp
            .handshake_age(peer)
            .unwrap_or_else(|| panic!("{who}: no handshake in wg show: {peer:?}"));
        assert!(age <= HANDSHAKE_FRESH, "{who}: handshake {age:?} ago");
    }
}

/// One case: `initiator` and `responder` are corewire and `other` in either
/// order; the initiator's endpoint uses the `outer` family.
fn case(test: &str, other: WgImpl, corewire_initiates: bool, outer: Outer, daemon_b: bool) {
    if !netns::enabled(test) {
        return;
    }
    let timed = Timed::new(test);
    let a = End {
        imp: WgImpl::Corewire,
        ns: Netns::new("cw"),
        ifname: unique_ifname("cw"),
        key: Keypair::generate(),
        outer_v4: "10.99.0.1",
        outer_v6: "fd00::1",
        inner_v4: "10.0.0.1",
        inner_v6: "fd01::1",
    };
    let b = End {
        imp: other,
        ns: Netns::new("peer"),
        ifname: unique_ifname("cw"),
        key: Keypair::generate(),
        outer_v4: "10.99.0.2",
        outer_v6: "fd00::2",
        inner_v4: "10.0.0.2",
        inner_v6: "fd01::2",
    };
    let _veth = Veth::pair(
        &a.ns,
        &b.ns,
        &["10.99.0.1/24", "fd00::1/64"],
        &["10.99.0.2/24", "fd00::2/64"],
    );
    // Corewire A in the foreground: our child, with its log kept if the test
    // fails. B as its tests usually start it; a corewire B daemonizes as
    // under wg-quick (`corewire IF`), in one case.
    let dev_a = a.start(Launch::Foreground);
    let dev_b = b.start(match other {
        WgImpl::Corewire if daemon_b => Launch::Daemon,
        WgImpl::Corewire => Launch::Foreground,
        _ => other.default_launch(),
    });
    let (ini, res) = if corewire_initiates {
        (&a, &b)
    } else {
        (&b, &a)
    };
    configure(ini, res, true, outer);
    configure(res, ini, false, outer);

    // Before any traffic: no handshake; the responder knows no endpoint.
    let ini_dump = wg_show_dump(&ini.ns, &ini.ifname);
    let ini_port = ini_dump.listen_port;
    assert_ne!(ini_port, 0, "{}: no random port chosen", ini.imp.name());
    if ini.imp != WgImpl::Boringtun {
        // boringtun 0.7.1 answers `get` without `private_key` (it sends a
        // non-standard `own_public_key`), so `wg` shows "(none)" for both.
        assert_eq!(ini_dump.public_key, ini.key.public, "wg derives the key");
    }
    let res_before = res.peer_dump(ini);
    assert_eq!(res_before.latest_handshake, 0, "handshake before traffic");
    assert_eq!(res_before.endpoint, None, "responder has an endpoint");
    assert_eq!(
        wg_show_dump(&res.ns, &res.ifname).listen_port,
        RESPONDER_PORT
    );

    // The initiator's first packet makes the handshake; then both ways.
    assert_ping(&ini.ns, res.inner_v4, PING_COUNT, PING_TIMEOUT);
    assert_ping(&ini.ns, res.inner_v6, PING_COUNT, PING_TIMEOUT);
    assert_ping(&res.ns, ini.inner_v4, PING_COUNT, PING_TIMEOUT);
    assert_ping(&res.ns, ini.inner_v6, PING_COUNT, PING_TIMEOUT);

    let ini_mid = ini.peer_dump(res);
    let res_mid = res.peer_dump(ini);
    let learned = socket_addr(ini.outer(outer), ini_port);
    assert_eq!(
        res_mid.endpoint.as_deref(),
        Some(learned.as_str()),
        "{} (responder) did not learn the initiator's endpoint",
        res.imp.name()
    );
    assert_eq!(
        ini_mid.endpoint.as_deref(),
        Some(socket_addr(res.outer(outer), RESPONDER_PORT).as_str()),
        "{} (initiator) endpoint",
        ini.imp.name()
    );
    for (end, peer) in [(ini, &ini_mid), (res, &res_mid)] {
        check_handshake(end, peer);
        // 12 pings each way, 84+ bytes of plaintext each, encrypted.
        assert!(
            peer.rx_bytes > 1000 && peer.tx_bytes > 1000,
            "{}: counters after pings: {peer:?}",
            end.imp.name()
        );
    }

    // Bulk from initiator to responder.
    let server = iperf3_server(&res.ns, res.inner_v4, IPERF_PORT);
    let client = iperf3_client(&ini.ns, res.inner_v4, IPERF_PORT, IPERF_SECONDS, &[]);
    assert_eq!(client.error, None, "iperf3 client: {:?}", client.json);
    let served = server.result(Duration::from_secs(10));
    assert_eq!(served.error, None, "iperf3 server: {:?}", served.json);
    assert!(
        client.received_bytes > 0,
        "iperf3 moved nothing: {client:?}"
    );

    let ini_after = ini.peer_dump(res);
    let res_after = res.peer_dump(ini);
    // Every byte iperf3 counts at the receiver crossed the tunnel, encrypted
    // and with headers: the counters must grow by at least that much.
    let moved = client.received_bytes;
    assert!(
        ini_after.tx_bytes >= ini_mid.tx_bytes + moved,
        "{} (sender) tx grew by {} < {moved}: {ini_mid:?} -> {ini_after:?}",
        ini.imp.name(),
        ini_after.tx_bytes.saturating_sub(ini_mid.tx_bytes)
    );
    assert!(
        res_after.rx_bytes >= res_mid.rx_bytes + moved,
        "{} (receiver) rx grew by {} < {moved}: {res_mid:?} -> {res_after:?}",
        res.imp.name(),
        res_after.rx_bytes.saturating_sub(res_mid.rx_bytes)
    );
    assert!(
        ini_after.rx_bytes > ini_mid.rx_bytes && res_after.tx_bytes > res_mid.tx_bytes,
        "no ACKs came back: {ini_after:?} {res_after:?}"
    );
    for (end, peer) in [(ini, &ini_after), (res, &res_after)] {
        check_handshake(end, peer);
    }

    eprintln!(
        "[netns] {test}: {} (initiator) -> {} over IPv{}: TCP {:.0} Mbit/s, {} bytes, \
         {} retransmits; {:.1} s",
        ini.imp.name(),
        res.imp.name(),
        if outer == Outer::V4 { 4 } else { 6 },
        client.received_bps / 1e6,
        moved,
        client.retransmits.unwrap_or(0),
        timed.elapsed().as_secs_f64()
    );
    // Devices before namespaces.
    drop((dev_a, dev_b));
}

#[test]
fn corewire_initiates_to_wireguard_go_over_ipv6() {
    case(
        "corewire_initiates_to_wireguard_go_over_ipv6",
        WgImpl::WireguardGo,
        true,
        Outer::V6,
        false,
    );
}

#[test]
fn wireguard_go_initiates_to_corewire_over_ipv6() {
    case(
        "wireguard_go_initiates_to_corewire_over_ipv6",
        WgImpl::WireguardGo,
        false,
        Outer::V6,
        false,
    );
}

#[test]
fn corewire_initiates_to_boringtun() {
    case(
        "corewire_initiates_to_boringtun",
        WgImpl::Boringtun,
        true,
        Outer::V4,
        false,
    );
}

#[test]
fn boringtun_initiates_to_corewire() {
    case(
        "boringtun_initiates_to_corewire",
        WgImpl::Boringtun,
        false,
        Outer::V4,
        false,
    );
}

#[test]
fn corewire_initiates_to_gotatun() {
    case(
        "corewire_initiates_to_gotatun",
        WgImpl::Gotatun,
        true,
        Outer::V4,
        false,
    );
}

#[test]
fn gotatun_initiates_to_corewire() {
    case(
        "gotatun_initiates_to_corewire",
        WgImpl::Gotatun,
        false,
        Outer::V4,
        false,
    );
}

/// Corewire with itself: the two roles are the same program, so the second
/// case changes the outer family instead. Here the responder daemonizes
/// (`corewire IF`, as wg-quick starts it).
#[test]
fn corewire_with_corewire() {
    case(
        "corewire_with_corewire",
        WgImpl::Corewire,
        true,
        Outer::V4,
        true,
    );
}

#[test]
fn corewire_with_corewire_over_ipv6() {
    case(
        "corewire_with_corewire_over_ipv6",
        WgImpl::Corewire,
        false,
        Outer::V6,
        false,
    );
}
