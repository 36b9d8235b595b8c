//! The UAPI as the real `wg` tool and raw clients see it, against the real
//! corewire daemon (the debug build), with wireguard-go (Debian's) as the
//! reference where the two are compared.
//!
//! ```text
//!  most tests: one namespace, one daemon, no traffic
//!  +-------------------------------+      +-------------------------------+
//!  | cwt-cw-*                      |      | cwt-wgo-* (comparisons only)  |
//!  |  lo                           |      |  lo                           |
//!  |  corewire IF (TUN, down)      |      |  wireguard-go -f IF           |
//!  |  /var/run/wireguard/IF.sock <-+- wg, raw UnixStream clients        |
//!  +-------------------------------+      +-------------------------------+
//!
//!  identical_syncconf_keeps_the_session: a tunnel between two corewires
//!  +---------------------------+  veth  +---------------------------+
//!  | cwt-a-*                   |--------| cwt-b-*                   |
//!  | 10.99.0.1/24              |        | 10.99.0.2/24              |
//!  | corewire IF :51820        |        | corewire IF :51821        |
//!  | 10.200.0.1/24  ping ----> tunnel ---> 10.200.0.2/24           |
//!  +---------------------------+        +---------------------------+
//! ```
//!
//! Peer endpoints in the single-namespace tests are documentation addresses
//! (192.0.2.0/24, 198.51.100.0/24, 2001:db8::/32) with no route inside the
//! namespace: nothing is ever sent anywhere.
//!
//! Needs root and the tools scripts/test.sh installs; `COREWIRE_SKIP_NETNS=1`
//! skips. Prints its findings (`cargo test -- --nocapture`).

// Helpers outside `#[test]` functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::fs::File;
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use base64::Engine;
use netns::{
    assert_ping, socket_path, uapi_get, unique_ifname, wg, wg_show_dump, Keypair, Netns, TempDir,
    Timed, Veth, WgDevice, WgImpl, WgStart,
};

// --- Keys --------------------------------------------------------------------

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random public key (base64): any 32 bytes will do for a peer that never
/// answers.
fn random_public() -> String {
    B64.encode(random_bytes::<32>())
}

/// `wg genpsk`.
fn genpsk() -> String {
    let mut cmd = std::process::Command::new("wg");
    cmd.arg("genpsk");
    netns::run_ok(cmd, None).trim().to_owned()
}

// --- Raw UAPI ----------------------------------------------------------------

/// One connection to a UAPI socket, for requests written by hand.
struct Uapi {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Uapi {
    fn connect(ifname: &str) -> Uapi {
        let stream = UnixStream::connect(socket_path(ifname))
            .unwrap_or_else(|e| panic!("connect to {ifname}'s UAPI socket: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Uapi {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// The next reply, up to and including its empty line; an error when
    /// the connection ends or stalls first (bounded: 10 s, 64 MiB).
    fn reply(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let rest = self.buf.split_off(pos + 2);
                let reply = std::mem::replace(&mut self.buf, rest);
                return String::from_utf8(reply).map_err(|e| e.to_string());
            }
            let so_far = || String::from_utf8_lossy(&self.buf).into_owned();
            if Instant::now() >= deadline || self.buf.len() > 64 << 20 {
                return Err(format!("no complete reply; so far {:?}", so_far()));
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(format!("connection closed; so far {:?}", so_far())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}; so far {:?}", so_far())),
            }
        }
    }

    fn request(&mut self, text: &str) -> Result<String, String> {
        self.send(text);
        self.reply()
    }
}

/// `errno=N\n\n` -> N.
fn errno_of(reply: &str) -> Option<i32> {
    reply.trim_end().strip_prefix("errno=")?.parse().ok()
}

/// One `set=1` request with `body` (lines, no trailing newline) on a new
/// connection; the errno, or why there was none.
fn raw_set(ifname: &str, body: &str) -> Result<i32, String> {
    let reply = Uapi::connect(ifname).request(&format!("set=1\n{body}\n\n"))?;
    errno_of(&reply).ok_or(format!("not an errno reply: {reply:?}"))
}

/// The full `get=1` reply (with its `errno=0`), byte for byte.
fn raw_get(ifname: &str) -> String {
    let reply = Uapi::connect(ifname).request("get=1\n\n").unwrap();
    assert!(reply.ends_with("errno=0\n\n"), "get=1 on {ifname}: {reply}");
    reply
}

/// `raw_get` without the lines that move with traffic (counters, handshake
/// time): the configuration as the daemon reports it.
fn config_of(ifname: &str) -> String {
    raw_get(ifname)
        .lines()
        .filter(|l| {
            !["tx_bytes=", "rx_bytes=", "last_handshake_time_"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `key=value` line of a `get=1` reply (the first one).
fn get_value(get: &str, key: &str) -> Option<String> {
    get.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

// --- wg ------------------------------------------------------------------------

/// `wg set IF args...` that must fail: its stderr.
fn wg_set_fails(ns: &Netns, ifname: &str, args: &[&str]) -> String {
    let mut all = vec!["set", ifname];
    all.extend_from_slice(args);
    let out = ns.exec("wg", &all);
    assert!(
        !out.status.success(),
        "wg {} succeeded but should have failed",
        all.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wg_set(ns: &Netns, ifname: &str, args: &[&str]) {
    netns::wg_set(ns, ifname, args);
}

/// `wg showconf IF` with the peers sorted by public key (wireguard-go lists
/// them in Go map order, which changes from run to run); the interface
/// section and each peer's lines stay as printed.
fn showconf_sorted(ns: &Netns, ifname: &str) -> String {
    let text = wg(ns, &["showconf", ifname]);
    let mut sections: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('[') || sections.is_empty() {
            sections.push(String::new());
        }
        let current = sections.last_mut().unwrap();
        current.push_str(line);
        current.push('\n');
    }
    let (interface, peers) = sections.split_first_mut().unwrap();
    peers.sort();
    let mut out = interface.clone();
    for p in peers.iter() {
        out.push('\n');
        out.push_str(p);
    }
    out
}

/// Binds a plain UDP socket (no SO_REUSEPORT) on `port` inside `ns`, from a
/// short-lived thread that enters the namespace: the socket stays there.
fn bind_udp_in(ns: &Netns, port: u16) -> UdpSocket {
    let path = format!("/var/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let f = File::open(&path).unwrap();
        // SAFETY: setns on a namespace file we hold open; it only changes
        // this thread's network namespace, and the thread ends right after.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        UdpSocket::bind(("0.0.0.0", port)).unwrap()
    })
    .join()
    .unwrap()
}

// --- 1. Every key through wg set / wg show / wg showconf ---------------------

#[test]
fn every_key_round_trips_through_wg() {
    const TEST: &str = "every_key_round_trips_through_wg";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("cw");
    let ifname = unique_ifname("cw");
    let _dev = WgImpl::Corewire.start(&ns, &ifname);
    let dir = TempDir::new("keys");

    let device = Keypair::generate();
    let (a, b, c) = (random_public(), random_public(), random_public());
    let psk = genpsk();
    let key_file = dir.write("private", &format!("{}\n", device.private));
    let psk_file = dir.write("psk", &format!("{psk}\n"));
    let empty_file = dir.write("empty", "");
    let (key_file, psk_file, empty_file) = (
        key_file.to_str().unwrap(),
        psk_file.to_str().unwrap(),
        empty_file.to_str().unwrap(),
    );

    // A fresh daemon listens on a random port.
    let fresh = wg_show_dump(&ns, &ifname);
    assert_ne!(fresh.listen_port, 0, "a fresh device listens somewhere");
    assert!(fresh.peers.is_empty());

    // Everything in one `wg set` (one transaction).
    wg_set(
        &ns,
        &ifname,
        &[
            "private-key",
            key_file,
            "listen-port",
            "51820",
            "fwmark",
            "0x2a",
            "peer",
            &a,
            "preshared-key",
            psk_file,
            "endpoint",
            "192.0.2.1:51820",
            "persistent-keepalive",
            "25",
            "allowed-ips",
            "10.10.1.0/24,fd10:1::/64,10.10.100.7/32,2001:db8:77::1/128",
            "peer",
            &b,
            "endpoint",
            "[2001:db8::2]:51822",
            "allowed-ips",
            "10.10.2.0/24",
            "peer",
            &c,
        ],
    );
    let dump = wg_show_dump(&ns, &ifname);
    assert_eq!(dump.private_key, device.private);
    assert_eq!(dump.public_key, device.public, "wg derives it from ours");
    assert_eq!(dump.listen_port, 51820);
    assert_eq!(dump.fwmark, Some(0x2a));
    let order: Vec<&str> = dump.peers.iter().map(|p| p.public_key.as_str()).collect();
    assert_eq!(order, [&a, &b, &c], "peers in insertion order");
    let pa = dump.peer(&a).unwrap();
    assert_eq!(pa.preshared_key.as_deref(), Some(psk.as_str()));
    assert_eq!(pa.endpoint.as_deref(), Some("192.0.2.1:51820"));
    assert_eq!(pa.persistent_keepalive, Some(25));
    assert_eq!(
        pa.allowed_ips,
        [
            "10.10.1.0/24",
            "fd10:1::/64",
            "10.10.100.7/32",
            "2001:db8:77::1/128"
        ]
    );
    let pb = dump.peer(&b).unwrap();
    assert_eq!(pb.preshared_key, None);
    assert_eq!(pb.endpoint.as_deref(), Some("[2001:db8::2]:51822"));
    assert_eq!(pb.persistent_keepalive, None);
    assert_eq!(pb.allowed_ips, ["10.10.2.0/24"]);
    let pc = dump.peer(&c).unwrap();
    assert_eq!(
        (
            pc.endpoint.as_deref(),
            pc.allowed_ips.len(),
            pc.latest_handshake
        ),
        (None, 0, 0)
    );

    // The same through the other `wg show` views and `wg showconf`.
    let show = |what: &str| wg(&ns, &["show", &ifname, what]);
    assert_eq!(show("private-key").trim(), device.private);
    assert_eq!(show("public-key").trim(), device.public);
    assert_eq!(show("listen-port").trim(), "51820");
    assert_eq!(show("fwmark").trim(), "0x2a");
    assert_eq!(show("peers"), format!("{a}\n{b}\n{c}\n"));
    assert_eq!(
        show("endpoints"),
        format!("{a}\t192.0.2.1:51820\n{b}\t[2001:db8::2]:51822\n{c}\t(none)\n")
    );
    assert_eq!(
        show("preshared-keys"),
        format!("{a}\t{psk}\n{b}\t(none)\n{c}\t(none)\n")
    );
    assert_eq!(
        show("persistent-keepalive"),
        format!("{a}\t25\n{b}\toff\n{c}\toff\n")
    );
    assert_eq!(
        show("allowed-ips"),
        format!(
            "{a}\t10.10.1.0/24 fd10:1::/64 10.10.100.7/32 2001:db8:77::1/128\n\
             {b}\t10.10.2.0/24\n{c}\t(none)\n"
        )
    );
    let expected_conf = format!(
        "[Interface]\n\
         ListenPort = 51820\n\
         FwMark = 0x2a\n\
         PrivateKey = {}\n\
         \n\
         [Peer]\n\
         PublicKey = {a}\n\
         PresharedKey = {psk}\n\
         AllowedIPs = 10.10.1.0/24, fd10:1::/64, 10.10.100.7/32, 2001:db8:77::1/128\n\
         Endpoint = 192.0.2.1:51820\n\
         PersistentKeepalive = 25\n\
         \n\
         [Peer]\n\
         PublicKey = {b}\n\
         AllowedIPs = 10.10.2.0/24\n\
         Endpoint = [2001:db8::2]:51822\n\
         \n\
         [Peer]\n\
         PublicKey = {c}\n",
        device.private
    );
    assert_eq!(wg(&ns, &["showconf", &ifname]), expected_conf);

    // `allowed-ips ''`: wg sends replace_allowed_ips=true and nothing else,
    // so the list is cleared; other keys stay.
    wg_set(&ns, &ifname, &["peer", &a, "allowed-ips", ""]);
    let pa = wg_show_dump(&ns, &ifname).peer(&a).cloned().unwrap();
    assert!(pa.allowed_ips.is_empty(), "{pa:?}");
    assert_eq!(pa.endpoint.as_deref(), Some("192.0.2.1:51820"));
    assert_eq!(pa.persistent_keepalive, Some(25));
    // `allowed-ips X` replaces the list; a prefix given to another peer
    // leaves its previous owner (host bits are cleared on the way).
    wg_set(&ns, &ifname, &["peer", &a, "allowed-ips", "10.10.9.9/16"]);
    wg_set(
        &ns,
        &ifname,
        &["peer", &c, "allowed-ips", "10.10.2.0/24,10.10.3.0/24"],
    );
    let dump = wg_show_dump(&ns, &ifname);
    assert_eq!(dump.peer(&a).unwrap().allowed_ips, ["10.10.0.0/16"]);
    assert!(dump.peer(&b).unwrap().allowed_ips.is_empty(), "taken by c");
    assert_eq!(
        dump.peer(&c).unwrap().allowed_ips,
        ["10.10.2.0/24", "10.10.3.0/24"]
    );

    // Turning things off: keepalive, preshared key (an empty key file),
    // fwmark; moving endpoints between families.
    wg_set(
        &ns,
        &ifname,
        &[
            "fwmark",
            "off",
            "peer",
            &a,
            "persistent-keepalive",
            "off",
            "preshared-key",
            empty_file,
            "endpoint",
            "[2001:db8::1]:1",
            "peer",
            &b,
            "endpoint",
            "198.51.100.2:65535",
            "persistent-keepalive",
            "65535",
        ],
    );
    let dump = wg_show_dump(&ns, &ifname);
    assert_eq!(dump.fwmark, None);
    let pa = dump.peer(&a).unwrap();
    assert_eq!(
        (pa.persistent_keepalive, pa.preshared_key.as_deref()),
        (None, None)
    );
    assert_eq!(pa.endpoint.as_deref(), Some("[2001:db8::1]:1"));
    let pb = dump.peer(&b).unwrap();
    assert_eq!(pb.endpoint.as_deref(), Some("198.51.100.2:65535"));
    assert_eq!(pb.persistent_keepalive, Some(65535));

    // remove.
    wg_set(&ns, &ifname, &["peer", &b, "remove"]);
    let dump = wg_show_dump(&ns, &ifname);
    let order: Vec<&str> = dump.peers.iter().map(|p| p.public_key.as_str()).collect();
    assert_eq!(order, [&a, &c]);
    // Removing a peer that is not there is not an error.
    wg_set(&ns, &ifname, &["peer", &b, "remove"]);
    assert_eq!(wg_show_dump(&ns, &ifname).peers.len(), 2);
    // A removed peer comes back at the end, fresh.
    wg_set(&ns, &ifname, &["peer", &b]);
    let dump = wg_show_dump(&ns, &ifname);
    let pb = dump.peers.last().unwrap();
    assert_eq!(pb.public_key, b);
    assert_eq!(
        (pb.endpoint.as_deref(), pb.persistent_keepalive),
        (None, None)
    );

    // listen-port 0: a random port, reported as such.
    wg_set(&ns, &ifname, &["listen-port", "0"]);
    let port = wg_show_dump(&ns, &ifname).listen_port;
    assert_ne!(port, 0, "listen-port 0 must show the port picked");
    assert_eq!(show("listen-port").trim(), port.to_string());

    // An empty private-key file removes the key (the public key goes too).
    wg_set(&ns, &ifname, &["private-key", empty_file]);
    let dump = wg_show_dump(&ns, &ifname);
    assert_eq!(
        (dump.private_key.as_str(), dump.public_key.as_str()),
        ("(none)", "(none)")
    );
    assert_eq!(dump.peers.len(), 3, "peers stay without a key");
    assert!(!wg(&ns, &["showconf", &ifname]).contains("PrivateKey"));
}

// --- 2. setconf / addconf / syncconf against wireguard-go ---------------------

#[test]
fn conf_commands_match_wireguard_go() {
    const TEST: &str = "conf_commands_match_wireguard_go";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let cw_ns = Netns::new("cw");
    let go_ns = Netns::new("wgo");
    let cw_if = unique_ifname("cw");
    let go_if = unique_ifname("wg");
    let _cw = WgImpl::Corewire.start(&cw_ns, &cw_if);
    let _go = WgImpl::WireguardGo.start(&go_ns, &go_if);
    let dir = TempDir::new("confs");

    let device = Keypair::generate();
    let p: Vec<String> = (0..5).map(|_| random_public()).collect();
    let psk = genpsk();
    // Fixed ports: the two implementations run in different namespaces, so
    // both can use the same one and showconf must match byte for byte
    // (after sorting the peers).
    let conf1 = format!(
        "[Interface]\n\
         PrivateKey = {key}\n\
         ListenPort = 51820\n\
         FwMark = 0x2a\n\
         \n\
         [Peer]\n\
         PublicKey = {p0}\n\
         PresharedKey = {psk}\n\
         AllowedIPs = 10.10.1.0/24, fd10:1::/64, 10.10.100.7/32\n\
         Endpoint = 192.0.2.1:51820\n\
         PersistentKeepalive = 25\n\
         \n\
         [Peer]\n\
         PublicKey = {p1}\n\
         AllowedIPs = 10.10.2.0/24, fd10:2::/64\n\
         Endpoint = [2001:db8::2]:51822\n\
         \n\
         [Peer]\n\
         PublicKey = {p2}\n\
         AllowedIPs = 10.10.3.0/24\n",
        key = device.private,
        p0 = p[0],
        p1 = p[1],
        p2 = p[2],
    );
    // addconf: a new peer that takes one of p1's prefixes, more prefixes
    // for an existing peer, a new peer without anything.
    let conf2 = format!(
        "[Peer]\n\
         PublicKey = {p3}\n\
         AllowedIPs = 10.10.4.0/24, 10.10.2.0/24\n\
         Endpoint = 198.51.100.4:4444\n\
         \n\
         [Peer]\n\
         PublicKey = {p0}\n\
         AllowedIPs = 10.10.11.0/24\n\
         \n\
         [Peer]\n\
         PublicKey = {p4}\n",
        p0 = p[0],
        p3 = p[3],
        p4 = p[4],
    );
    // syncconf: p2 and p4 dropped, p1 changed, p0 and p3 restated.
    let conf3 = format!(
        "[Interface]\n\
         PrivateKey = {key}\n\
         ListenPort = 51820\n\
         FwMark = 0x2a\n\
         \n\
         [Peer]\n\
         PublicKey = {p0}\n\
         PresharedKey = {psk}\n\
         AllowedIPs = 10.10.1.0/24, fd10:1::/64, 10.10.100.7/32\n\
         Endpoint = 192.0.2.1:51820\n\
         PersistentKeepalive = 25\n\
         \n\
         [Peer]\n\
         PublicKey = {p1}\n\
         AllowedIPs = 10.10.22.0/24\n\
         Endpoint = 192.0.2.22:2222\n\
         PersistentKeepalive = 5\n\
         \n\
         [Peer]\n\
         PublicKey = {p3}\n\
         AllowedIPs = 10.10.4.0/24\n\
         Endpoint = 198.51.100.4:4444\n",
        key = device.private,
        p0 = p[0],
        p1 = p[1],
        p3 = p[3],
    );
    let files: Vec<String> = [("1.conf", &conf1), ("2.conf", &conf2), ("3.conf", &conf3)]
        .iter()
        .map(|(name, text)| dir.write(name, text).to_str().unwrap().to_owned())
        .collect();

    let steps: [(&str, &str); 5] = [
        ("setconf", &files[0]),
        ("addconf", &files[1]),
        ("syncconf", &files[2]),
        ("syncconf", &files[2]),
        ("setconf", &files[0]),
    ];
    for (i, (verb, file)) in steps.iter().enumerate() {
        wg(&cw_ns, &[verb, &cw_if, file]);
        wg(&go_ns, &[verb, &go_if, file]);
        let cw = showconf_sorted(&cw_ns, &cw_if);
        let go = showconf_sorted(&go_ns, &go_if);
        assert_eq!(
            cw, go,
            "step {i} (wg {verb} {file}): corewire (left) and wireguard-go (right) differ"
        );
        eprintln!("[netns] {TEST}: step {i} wg {verb}: identical showconf");
        match i {
            1 => {
                let dump = wg_show_dump(&cw_ns, &cw_if);
                assert_eq!(dump.peers.len(), 5);
                assert_eq!(dump.peer(&p[1]).unwrap().allowed_ips, ["fd10:2::/64"]);
                // Existing peers keep their place, new ones come last.
                let order: Vec<&str> = dump.peers.iter().map(|p| p.public_key.as_str()).collect();
                assert_eq!(order, [&p[0], &p[1], &p[2], &p[3], &p[4]]);
            }
            2 => {
                let dump = wg_show_dump(&cw_ns, &cw_if);
                let order: Vec<&str> = dump.peers.iter().map(|p| p.public_key.as_str()).collect();
                assert_eq!(order, [&p[0], &p[1], &p[3]], "syncconf removed p2 and p4");
            }
            _ => {}
        }
    }
    // The final setconf replaced the peers: p3 is gone, p2 is back.
    let order: Vec<String> = wg_show_dump(&cw_ns, &cw_if)
        .peers
        .into_iter()
        .map(|p| p.public_key)
        .collect();
    assert_eq!(order.len(), 3);
    assert!(order.contains(&p[2]) && !order.contains(&p[3]), "{order:?}");

    // An identical syncconf changes nothing, byte for byte (a running
    // session is checked in identical_syncconf_keeps_the_session).
    let before = raw_get(&cw_if);
    for _ in 0..3 {
        wg(&cw_ns, &["syncconf", &cw_if, &files[0]]);
    }
    assert_eq!(
        raw_get(&cw_if),
        before,
        "an identical syncconf changed the device"
    );
}

// --- 3. An identical syncconf does not disturb a running session -------------

#[test]
fn identical_syncconf_keeps_the_session() {
    const TEST: &str = "identical_syncconf_keeps_the_session";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns_a = Netns::new("a");
    let ns_b = Netns::new("b");
    let _veth = Veth::pair(&ns_a, &ns_b, &["10.99.0.1/24"], &["10.99.0.2/24"]);
    let if_a = unique_ifname("cw");
    let if_b = unique_ifname("cw");
    let _dev_a = WgImpl::Corewire.start(&ns_a, &if_a);
    let _dev_b = WgImpl::Corewire.start(&ns_b, &if_b);
    let dir = TempDir::new("sync");
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let psk = genpsk();

    // As wg-quick strip would leave them; a initiates (it has the endpoint).
    let conf_a = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n\
         [Peer]\nPublicKey = {}\nPresharedKey = {psk}\n\
         AllowedIPs = 10.200.0.2/32\nEndpoint = 10.99.0.2:51821\n",
        ka.private, kb.public
    );
    let conf_b = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51821\n\n\
         [Peer]\nPublicKey = {}\nPresharedKey = {psk}\nAllowedIPs = 10.200.0.1/32\n",
        kb.private, ka.public
    );
    let file_a = dir.write("a.conf", &conf_a);
    let file_b = dir.write("b.conf", &conf_b);
    let file_a = file_a.to_str().unwrap();
    let file_b = file_b.to_str().unwrap();
    for (ns, ifname, file, addr) in [
        (&ns_a, &if_a, file_a, "10.200.0.1/24"),
        (&ns_b, &if_b, file_b, "10.200.0.2/24"),
    ] {
        wg(ns, &["setconf", ifname, file]);
        ns.ip_ok(&["addr", "add", addr, "dev", ifname]);
        ns.ip_ok(&["link", "set", "dev", ifname, "mtu", "1420", "up"]);
    }
    assert_ping(&ns_a, "10.200.0.2", 3, Duration::from_secs(10));

    // The handshake to the nanosecond, and the configuration, before.
    let handshake = |ifname: &str| {
        let get = raw_get(ifname);
        (
            get_value(&get, "last_handshake_time_sec"),
            get_value(&get, "last_handshake_time_nsec"),
        )
    };
    let (hs_a, hs_b) = (handshake(&if_a), handshake(&if_b));
    assert_ne!(hs_a.0.as_deref(), Some("0"), "a handshake happened");
    let (conf_before_a, conf_before_b) = (config_of(&if_a), config_of(&if_b));
    let rx_before = wg_show_dump(&ns_b, &if_b).peers[0].rx_bytes;

    // 30 pings, 0.1 s apart, while both sides get their own file again and
    // again (what `wg syncconf IF <(wg-quick strip IF)` does on a reload).
    let mut ping = ns_a.spawn(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            "30",
            "-i",
            "0.1",
            "-W",
            "1",
            "-w",
            "10",
            "10.200.0.2",
        ],
        &[],
    );
    let mut syncs = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) && syncs < 20 {
        wg(&ns_a, &["syncconf", &if_a, file_a]);
        wg(&ns_b, &["syncconf", &if_b, file_b]);
        syncs += 1;
        sleep(Duration::from_millis(200));
    }
    let status = ping.wait_exit(Duration::from_secs(15));
    let log = ping.log();
    assert!(status.is_some(), "ping still running:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{log}"));
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    eprintln!("[netns] {TEST}: {syncs} syncconf rounds on both sides during: {line}");
    assert!(syncs >= 3, "only {syncs} syncconf rounds");
    assert_eq!(
        (numbers.first(), numbers.get(1)),
        (Some(&30), Some(&30)),
        "loss while syncconf ran:\n{log}"
    );
    assert_eq!(handshake(&if_a), hs_a, "a: new handshake after syncconf");
    assert_eq!(handshake(&if_b), hs_b, "b: new handshake after syncconf");
    assert_eq!(config_of(&if_a), conf_before_a);
    assert_eq!(config_of(&if_b), conf_before_b);
    assert!(wg_show_dump(&ns_b, &if_b).peers[0].rx_bytes > rx_before);
}

// --- 4. Malformed and contradictory raw requests ------------------------------

/// The configuration both implementations start from, as raw UAPI.
fn baseline(private_hex: &str, p1: &str, p2: &str, psk: &str) -> String {
    format!(
        "private_key={private_hex}\nlisten_port=51820\nfwmark=42\nreplace_peers=true\n\
         public_key={p1}\npreshared_key={psk}\nendpoint=192.0.2.1:51820\n\
         replace_allowed_ips=true\nallowed_ip=10.20.0.0/16\nallowed_ip=fd20::/64\n\
         public_key={p2}\nreplace_allowed_ips=true\nallowed_ip=10.21.0.0/16"
    )
}

#[test]
fn malformed_requests_change_nothing() {
    const TEST: &str = "malformed_requests_change_nothing";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let cw_ns = Netns::new("cw");
    let go_ns = Netns::new("wgo");
    let cw_if = unique_ifname("cw");
    let go_if = unique_ifname("wg");
    let _cw = WgImpl::Corewire.start(&cw_ns, &cw_if);
    let _go = WgImpl::WireguardGo.start(&go_ns, &go_if);

    let private = hex(&random_bytes::<32>());
    let other_private = hex(&random_bytes::<32>());
    let [p1, p2, p3] = [0; 3].map(|_| hex(&random_bytes::<32>()));
    let psk = hex(&random_bytes::<32>());
    let base = baseline(&private, &p1, &p2, &psk);
    assert_eq!(raw_set(&cw_if, &base), Ok(0));
    let before = raw_get(&cw_if);
    assert!(before.contains(&p1) && before.contains(&p2), "{before}");

    let long = "a".repeat(5000);
    // (what, request body, errno corewire must answer)
    let einval = -libc::EINVAL;
    let cases: Vec<(&str, String, i32)> = vec![
        ("bad hex", format!("private_key={}", "g".repeat(64)), einval),
        ("short key", format!("public_key={}", &p3[..62]), einval),
        ("long key", format!("public_key={p3}00"), einval),
        ("unknown key", "frobnicate=1".into(), einval),
        ("empty key", "=1".into(), einval),
        (
            "device key after a peer",
            format!("public_key={p3}\nlisten_port=1234"),
            einval,
        ),
        (
            "peer key before any peer",
            "endpoint=192.0.2.9:1".into(),
            einval,
        ),
        (
            "endpoint without port",
            format!("public_key={p3}\nendpoint=192.0.2.9"),
            einval,
        ),
        (
            "hostname endpoint",
            format!("public_key={p3}\nendpoint=example.com:51820"),
            einval,
        ),
        (
            "IPv6 endpoint without brackets",
            format!("public_key={p3}\nendpoint=2001:db8::1:51820"),
            einval,
        ),
        (
            "endpoint zone of no interface",
            format!("public_key={p3}\nendpoint=[fe80::1%nosuchif0]:1"),
            einval,
        ),
        (
            "bad prefix",
            format!("public_key={p3}\nallowed_ip=10.0.0/8"),
            einval,
        ),
        (
            "/33",
            format!("public_key={p3}\nallowed_ip=10.0.0.0/33"),
            einval,
        ),
        (
            "/129",
            format!("public_key={p3}\nallowed_ip=fd00::/129"),
            einval,
        ),
        ("port 65536", "listen_port=65536".into(), einval),
        ("negative port", "listen_port=-1".into(), einval),
        (
            "keepalive 65536",
            format!("public_key={p3}\npersistent_keepalive_interval=65536"),
            einval,
        ),
        ("fwmark 2^32", "fwmark=4294967296".into(), einval),
        ("fwmark in hex", "fwmark=0x2a".into(), einval),
        ("replace_peers=false", "replace_peers=false".into(), einval),
        (
            "update_only=1",
            format!("public_key={p3}\nupdate_only=1"),
            einval,
        ),
        (
            "protocol_version=2",
            format!("public_key={p3}\nprotocol_version=2"),
            einval,
        ),
        (
            "short preshared key",
            format!("public_key={p1}\npreshared_key=1234"),
            einval,
        ),
        ("line without =", "listen_port".into(), -libc::EPROTO),
        (
            "valid changes, then one bad line",
            format!(
                "listen_port=12345\nfwmark=7\npublic_key={p3}\nallowed_ip=10.99.0.0/16\n\
                 public_key={p1}\nendpoint=bogus"
            ),
            einval,
        ),
        (
            "replace_peers, then one bad line",
            format!("replace_peers=true\npublic_key={p3}\nallowed_ip=10.99.0.0/16/8"),
            einval,
        ),
        (
            "new private key, then one bad line",
            format!("private_key={other_private}\nfwmark=x"),
            einval,
        ),
        (
            "remove, then one bad line",
            format!(
                "public_key={p1}\nremove=true\npublic_key={p2}\npersistent_keepalive_interval=x"
            ),
            einval,
        ),
        (
            "prefix taken from a peer, then one bad line",
            format!("public_key={p3}\nallowed_ip=10.20.0.0/16\nallowed_ip=10.1.2.3"),
            einval,
        ),
        (
            "line longer than 4 KiB",
            format!("public_key={p3}\nendpoint={long}"),
            einval,
        ),
    ];
    assert!(cases.len() >= 15);

    // wireguard-go gets the same baseline, and each request once on a new
    // connection (it stops reading a request at the first bad line).
    assert_eq!(raw_set(&go_if, &base), Ok(0));
    let mut differences = Vec::new();
    let mut go_not_atomic = Vec::new();
    for (what, body, expected) in &cases {
        let got = raw_set(&cw_if, body);
        assert_eq!(got, Ok(*expected), "{what}: {body:?}");
        assert_eq!(
            raw_get(&cw_if),
            before,
            "{what}: a refused request changed the configuration"
        );
        // wireguard-go applies the lines before the bad one; restore its
        // baseline after each case so every case starts from the same state.
        let go_before = raw_get(&go_if);
        let go = raw_set(&go_if, body);
        if raw_get(&go_if) != go_before {
            go_not_atomic.push(*what);
        }
        assert_eq!(raw_set(&go_if, &base), Ok(0));
        eprintln!("[netns] {TEST}: {what:45} corewire {got:?}  wireguard-go {go:?}");
        if go != Ok(*expected) {
            differences.push(format!("{what}: corewire {got:?}, wireguard-go {go:?}"));
        }
    }
    eprintln!(
        "[netns] {TEST}: wireguard-go applied part of {} refused requests: {go_not_atomic:?}",
        go_not_atomic.len()
    );
    eprintln!("[netns] {TEST}: errno differences from wireguard-go: {differences:#?}");
    // Every errno value matches wireguard-go's.
    assert!(differences.is_empty(), "{differences:#?}");
}

#[test]
fn several_requests_on_one_connection() {
    const TEST: &str = "several_requests_on_one_connection";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("cw");
    let ifname = unique_ifname("cw");
    let _dev = WgImpl::Corewire.start(&ns, &ifname);
    let private = hex(&random_bytes::<32>());
    let [p1, p2, p3] = [0; 3].map(|_| hex(&random_bytes::<32>()));
    let psk = hex(&random_bytes::<32>());
    let base = baseline(&private, &p1, &p2, &psk);

    let mut conn = Uapi::connect(&ifname);
    assert_eq!(
        conn.request(&format!("set=1\n{base}\n\n")).unwrap(),
        "errno=0\n\n"
    );
    // Everything below goes through this one connection (requests on one
    // connection are answered in order).
    let before = conn.request("get=1\n\n").unwrap();
    assert!(
        before.contains(&p1) && before.ends_with("errno=0\n\n"),
        "{before}"
    );

    // update_only for a peer that does not exist: nothing happens, no error.
    let update_only = format!(
        "set=1\npublic_key={p3}\nupdate_only=true\nendpoint=192.0.2.3:3\n\
         allowed_ip=10.21.0.0/16\n\n"
    );
    assert_eq!(conn.request(&update_only).unwrap(), "errno=0\n\n");
    assert_eq!(
        conn.request("get=1\n\n").unwrap(),
        before,
        "update_only added"
    );

    // Several requests in one write, answered in order; a refused one
    // leaves the connection usable.
    conn.send(&format!(
        "get=1\n\n\
         set=1\nlisten_port=51999\npublic_key={p3}\nallowed_ip=10.0.0.0/99\n\n\
         get=1\n\n\
         set=1\npublic_key={p1}\nupdate_only=true\npersistent_keepalive_interval=7\n\n\
         set=1\npublic_key={p2}\nremove=true\n\n\
         get=1\n\n"
    ));
    let replies: Vec<String> = (0..6).map(|_| conn.reply().unwrap()).collect();
    assert_eq!(replies[0], before);
    assert_eq!(replies[1], "errno=-22\n\n");
    assert_eq!(replies[2], before, "the refused set changed something");
    assert_eq!(replies[3], "errno=0\n\n");
    assert_eq!(replies[4], "errno=0\n\n");
    let after = &replies[5];
    assert!(
        after.contains("persistent_keepalive_interval=7\n"),
        "{after}"
    );
    assert!(!after.contains(&p2), "p2 removed: {after}");
    assert_eq!(get_value(after, "listen_port").as_deref(), Some("51820"));
    // The connection is still good after all that.
    assert_eq!(&conn.request("get=1\n\n").unwrap(), after);
    drop(conn);
    // The same view through wg.
    let dump = wg_show_dump(&ns, &ifname);
    assert_eq!(dump.peers.len(), 1);
    assert_eq!(dump.peers[0].persistent_keepalive, Some(7));
}

// --- 5. A listen port already taken --------------------------------------------

#[test]
fn listen_port_in_use_is_refused() {
    const TEST: &str = "listen_port_in_use_is_refused";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("cw");
    let if_a = unique_ifname("cw");
    let if_b = unique_ifname("cw");
    let _dev_a: WgDevice = WgImpl::Corewire.start(&ns, &if_a);
    let _dev_b: WgDevice = WgImpl::Corewire.start(&ns, &if_b);
    let peer = random_public();
    wg_set(
        &ns,
        &if_a,
        &[
            "listen-port",
            "51820",
            "peer",
            &peer,
            "allowed-ips",
            "10.1.0.0/16",
        ],
    );
    wg_set(&ns, &if_b, &["listen-port", "51821"]);

    // A plain UDP socket of another program holds 51830.
    let _holder = bind_udp_in(&ns, 51830);
    let before = raw_get(&if_a);
    let err = wg_set_fails(&ns, &if_a, &["listen-port", "51830"]);
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(raw_get(&if_a), before, "a refused port changed something");
    // The whole transaction is refused, not only the port.
    let other = random_public();
    let err = wg_set_fails(
        &ns,
        &if_a,
        &[
            "listen-port",
            "51830",
            "fwmark",
            "9",
            "peer",
            &other,
            "allowed-ips",
            "10.2.0.0/16",
            "peer",
            &peer,
            "remove",
        ],
    );
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(raw_get(&if_a), before, "part of a refused set was applied");
    assert_eq!(raw_set(&if_a, "listen_port=51830"), Ok(-libc::EADDRINUSE));

    // Another corewire's port (its sockets use SO_REUSEPORT; a second
    // daemon must still not be able to share them).
    let before_b = raw_get(&if_b);
    let err = wg_set_fails(&ns, &if_b, &["listen-port", "51820"]);
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(raw_get(&if_b), before_b);
    assert_eq!(wg(&ns, &["show", &if_a, "listen-port"]).trim(), "51820");

    // Both daemons still work: a free port is taken at once.
    wg_set(&ns, &if_a, &["listen-port", "51831"]);
    assert_eq!(wg(&ns, &["show", &if_a, "listen-port"]).trim(), "51831");
    assert!(uapi_get(&if_b).is_some());
}
