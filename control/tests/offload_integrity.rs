//! Byte-exact transfers through the offload paths. corewire reads
//! super-packets from its TUN (TSO for TCP over IPv4 and IPv6, USO for UDP
//! sent with `UDP_SEGMENT`), cuts them into packets with their own headers
//! and checksums, and writes what it decrypts back as coalesced
//! super-packets. iperf3 checks none of the bytes it moves, so here a
//! Python sender streams seeded pseudo-random bytes and the receiver
//! compares a SHA-256 of everything it got (TCP), or checks every datagram's
//! sequence number and contents (UDP). A wrong checksum would show as a
//! stalled transfer (the receiving kernel drops the packet), a wrong split
//! or merge as a different digest.
//!
//! Topology: two namespaces joined by a veth, a tunnel between them
//! (`10.0.0.1`/`fd01::1` on A, `10.0.0.2`/`fd01::2` on B), A initiating.
//! Pairs: corewire with corewire (both directions of both paths), and
//! corewire with wireguard-go (which has no offload: what corewire splits
//! must be valid packets on their own, and what wireguard-go sends one by
//! one is coalesced by corewire).
//!
//! Needs root, python3 and the tools scripts/test.sh installs;
//! `COREWIRE_SKIP_NETNS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::time::Duration;

use netns::{
    assert_ping, unique_ifname, wg_set_private_key, Keypair, Launch, Netns, Proc, Timed, Veth,
    WgDevice, WgImpl, WgStart,
};

const PORT: u16 = 51820;
const DATA_PORT: u16 = 7000;
/// Bytes per TCP transfer: enough for thousands of super-packets.
const TCP_BYTES: usize = 24 << 20;
/// Datagrams in the UDP transfer, and their payload size.
const UDP_DATAGRAMS: usize = 3000;
const UDP_SIZE: usize = 1200;
/// A transfer that takes longer than this has stalled.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// The contents of datagram `seq` after its 4-byte sequence number; the
/// two UDP scripts below start with it (`size` is their datagram size).
const UDP_BODY: &str = r#"
import hashlib
def body(seq):
    out = b""
    block = hashlib.sha256(seq.to_bytes(4, "big")).digest()
    while len(out) < size - 4:
        out += block
    return out[:size - 4]
"#;

/// Receives datagrams until 3 s pass without one; each must be `size`
/// bytes: a 4-byte sequence number and bytes derived from it. Prints the
/// number of good datagrams, of bad ones, and of distinct sequence numbers.
const UDP_RECEIVER: &str = r#"
import socket, sys
size = int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(15)
good = bad = 0
seen = set()
while True:
    try:
        d = s.recv(65536)
    except socket.timeout:
        break
    s.settimeout(3)
    seq = int.from_bytes(d[:4], "big")
    if len(d) == size and d[4:] == body(seq):
        good += 1
        seen.add(seq)
    else:
        bad += 1
print(good, bad, len(seen), flush=True)
"#;

/// Sends `count` such datagrams as `UDP_SEGMENT` sends of 16 datagrams
/// each (super-packets on the TUN), 5 ms apart (about 30 Mbit/s) so that
/// the peer's socket buffers (wireguard-go keeps the 208 KiB default) do
/// not overflow while the test machine is busy.
const UDP_SENDER: &str = r#"
import socket, sys, time
size, count = int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, size)  # UDP_SEGMENT
s.connect((sys.argv[1], int(sys.argv[2])))
for start in range(0, count, 16):
    burst = b"".join(seq.to_bytes(4, "big") + body(seq) for seq in range(start, min(start + 16, count)))
    s.send(burst)
    time.sleep(0.005)
print("sent", count, flush=True)
"#;

struct End {
    ns: Netns,
    ifname: String,
    key: Keypair,
    outer: &'static str,
    inner_v4: &'static str,
    inner_v6: &'static str,
}

/// Two namespaces, a veth, a tunnel of `a_imp` (initiator) and `b_imp`
/// up and pinged both ways. Devices are returned first so that they are
/// dropped before the namespaces.
fn tunnel(a_imp: WgImpl, b_imp: WgImpl) -> ((WgDevice, WgDevice, Veth), End, End) {
    let a = End {
        ns: Netns::new("oi"),
        ifname: unique_ifname("cw"),
        key: Keypair::generate(),
        outer: "10.98.0.1",
        inner_v4: "10.0.0.1",
        inner_v6: "fd01::1",
    };
    let b = End {
        ns: Netns::new("oi"),
        ifname: unique_ifname("cw"),
        key: Keypair::generate(),
        outer: "10.98.0.2",
        inner_v4: "10.0.0.2",
        inner_v6: "fd01::2",
    };
    let veth = Veth::pair(&a.ns, &b.ns, &["10.98.0.1/24"], &["10.98.0.2/24"]);
    let launch = |imp: WgImpl| match imp {
        WgImpl::Corewire => Launch::Foreground,
        other => other.default_launch(),
    };
    let dev_a = a_imp.start_with(&a.ns, &a.ifname, launch(a_imp));
    let dev_b = b_imp.start_with(&b.ns, &b.ifname, launch(b_imp));
    for (end, peer, initiator) in [(&a, &b, true), (&b, &a, false)] {
        let allowed = format!("{}/32,{}/128", peer.inner_v4, peer.inner_v6);
        let endpoint = format!("{}:{PORT}", peer.outer);
        let port = PORT.to_string();
        let mut args = vec!["peer", &peer.key.public, "allowed-ips", &allowed];
        if initiator {
            args.extend(["endpoint", &endpoint]);
        } else {
            args.splice(0..0, ["listen-port", &port]);
        }
        wg_set_private_key(&end.ns, &end.ifname, &end.key.private, &args);
        for addr in [
            format!("{}/24", end.inner_v4),
            format!("{}/64", end.inner_v6),
        ] {
            end.ns
                .ip_ok(&["addr", "add", &addr, "dev", &end.ifname, "nodad"]);
        }
        end.ns
            .ip_ok(&["link", "set", "dev", &end.ifname, "mtu", "1420", "up"]);
    }
    let ping = Duration::from_secs(10);
    assert_ping(&a.ns, b.inner_v4, 2, ping);
    assert_ping(&b.ns, a.inner_v4, 2, ping);
    assert_ping(&a.ns, b.inner_v6, 2, ping);
    ((dev_a, dev_b, veth), a, b)
}

/// Waits for a helper script and returns its last line of output.
fn finish(p: Proc, what: &str) -> String {
    netns::finish(p, what, TRANSFER_TIMEOUT)
}

/// Streams [`TCP_BYTES`] from `from` to `to`'s address `dst` and checks
/// that the receiver got exactly the bytes sent.
fn tcp_transfer(from: &End, to: &End, dst: &str) {
    netns::tcp_transfer(
        &from.ns,
        &to.ns,
        dst,
        DATA_PORT,
        TCP_BYTES,
        TRANSFER_TIMEOUT,
    );
}

/// Sends [`UDP_DATAGRAMS`] in `UDP_SEGMENT` bursts from `from` to `to` and
/// checks every datagram that arrived (none may be corrupt; nearly all
/// must arrive).
fn udp_transfer(from: &End, to: &End) {
    let rx = to.ns.spawn(
        "python3",
        &[
            "-c",
            &format!("{UDP_BODY}{UDP_RECEIVER}"),
            to.inner_v4,
            &DATA_PORT.to_string(),
            &UDP_SIZE.to_string(),
        ],
        &[],
    );
    let ready = netns::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        rx.log().contains("ready")
    });
    assert!(ready, "the UDP receiver did not start: {}", rx.log());
    let tx = from.ns.spawn(
        "python3",
        &[
            "-c",
            &format!("{UDP_BODY}{UDP_SENDER}"),
            to.inner_v4,
            &DATA_PORT.to_string(),
            &UDP_SIZE.to_string(),
            &UDP_DATAGRAMS.to_string(),
        ],
        &[],
    );
    finish(tx, "the UDP sender");
    let line = finish(rx, "the UDP receiver");
    let n: Vec<usize> = line
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let [good, bad, distinct] = n[..] else {
        panic!("UDP receiver said {line:?}");
    };
    assert_eq!(bad, 0, "corrupt datagrams at {}: {line}", to.inner_v4);
    assert_eq!(good, distinct, "duplicated datagrams: {line}");
    assert!(
        good * 100 >= UDP_DATAGRAMS * 95,
        "only {good} of {UDP_DATAGRAMS} datagrams arrived at {}",
        to.inner_v4
    );
}

fn case(test: &str, a_imp: WgImpl, b_imp: WgImpl) {
    if !netns::enabled(test) {
        return;
    }
    let timed = Timed::new(test);
    let (devices, a, b) = tunnel(a_imp, b_imp);
    tcp_transfer(&a, &b, b.inner_v4);
    tcp_transfer(&b, &a, a.inner_v4);
    tcp_transfer(&a, &b, b.inner_v6);
    udp_transfer(&a, &b);
    udp_transfer(&b, &a);
    eprintln!(
        "[netns] {test}: {} -> {}: 3 TCP transfers of {TCP_BYTES} bytes and 2 UDP of {UDP_DATAGRAMS} datagrams intact; {:.1} s",
        a_imp.name(),
        b_imp.name(),
        timed.elapsed().as_secs_f64()
    );
    drop(devices);
}

#[test]
fn offload_paths_keep_bytes_intact_corewire_with_corewire() {
    case(
        "offload_paths_keep_bytes_intact_corewire_with_corewire",
        WgImpl::Corewire,
        WgImpl::Corewire,
    );
}

#[test]
fn offload_paths_keep_bytes_intact_corewire_with_wireguard_go() {
    case(
        "offload_paths_keep_bytes_intact_corewire_with_wireguard_go",
        WgImpl::Corewire,
        WgImpl::WireguardGo,
    );
}

/// A path MTU below what the tunnel's datagrams need, as on PPPoE or
/// mobile paths: a full 1420-byte packet becomes a 1480-byte datagram over
/// IPv4, and the underlay here carries 1400. The kernel refuses a GSO send
/// whose segments exceed the route's MTU (EINVAL); corewire sends those
/// datagrams again one by one, which the kernel fragments. Transfers in
/// both directions must complete intact.
#[test]
fn small_path_mtu_keeps_transfers_intact() {
    let test = "small_path_mtu_keeps_transfers_intact";
    if !netns::enabled(test) {
        return;
    }
    let timed = Timed::new(test);
    let (devices, a, b) = tunnel(WgImpl::Corewire, WgImpl::Corewire);
    let veth = &devices.2;
    a.ns.ip_ok(&["link", "set", "dev", veth.name_a(), "mtu", "1400"]);
    b.ns.ip_ok(&["link", "set", "dev", veth.name_b(), "mtu", "1400"]);
    tcp_transfer(&a, &b, b.inner_v4);
    tcp_transfer(&b, &a, a.inner_v4);
    eprintln!(
        "[netns] {test}: 2 TCP transfers of {TCP_BYTES} bytes over a 1400-byte path intact; {:.1} s",
        timed.elapsed().as_secs_f64()
    );
    drop(devices);
}
