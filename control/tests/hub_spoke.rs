//! The hub-and-spoke network of a typical deployment, configured from
//! `.conf` files by the real `wg-quick` (no kernel module here, so it runs
//! `$WG_QUICK_USERSPACE_IMPLEMENTATION IFNAME`: corewire everywhere except
//! on the laptop, which runs wireguard-go).
//!
//! ```text
//!                      "internet": bridge br0 in netns cwt-inet-*
//!        +---------------+-----------------+-----------------+
//!        | 203.0.113.1   | 203.0.113.2     | 203.0.113.3     | 203.0.113.4
//!  +-----+------+  +-----+------+    +-----+------+    +-----+------+
//!  | hub        |  | router     |    | phone      |    | laptop     |
//!  | corewire   |  | corewire   |    | corewire   |    | wireguard- |
//!  | :51820     |  |            |    |            |    | go         |
//!  | 10.100.0.1 |  | 10.100.0.2 |    | 10.100.0.3 |    | 10.100.0.4 |
//!  | fd42::1    |  | fd42::2    |    | fd42::3    |    | fd42::4    |
//!  | ip_forward |  | ip_forward |    +------------+    +------------+
//!  +------------+  | 192.168.50.1
//!                  +-----+------+
//!                        | veth "LAN" 192.168.50.0/24
//!                  +-----+------+
//!                  | lanhost    |  no WireGuard;
//!                  | .50.10     |  default via 192.168.50.1
//!                  +------------+
//!
//!  hub peers (no endpoints, learned from handshakes):
//!    router  10.100.0.2/32, fd42::2/128, 192.168.50.0/24
//!    phone   10.100.0.3/32, fd42::3/128
//!    laptop  10.100.0.4/32, fd42::4/128
//!  spokes' peer hub: Endpoint 203.0.113.1:51820, PersistentKeepalive 25,
//!    AllowedIPs 10.100.0.0/24, fd42::/64 (+ 192.168.50.0/24 on phone, laptop)
//! ```
//!
//! Spoke-to-spoke traffic enters the hub's TUN and the hub's kernel routes
//! it back into the same TUN, to the peer whose AllowedIPs hold the
//! destination. Every address is inside the test's namespaces.
//!
//! Needs root and the tools scripts/test.sh installs; `COREWIRE_SKIP_NETNS=1`
//! skips. Prints its duration (`cargo test -- --nocapture`).

mod netns;

use std::path::{Path, PathBuf};
use std::time::Duration;

use netns::{
    assert_ping, run, unique_ifname, wait_until, wg, wg_show_dump, Keypair, Netns, TempDir, Timed,
    Veth, WgDevice, WgDump, WgImpl, WgStart,
};

const HUB_PORT: u16 = 51820;
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the spokes get to reach the hub on their own (the persistent
/// keepalive is sent as soon as the interface comes up).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One WireGuard node: its namespace, interface and key.
struct Node<'a> {
    name: &'static str,
    ns: &'a Netns,
    ifname: String,
    key: Keypair,
    imp: WgImpl,
    public_addr: &'static str,
}

impl<'a> Node<'a> {
    fn new(name: &'static str, ns: &'a Netns, imp: WgImpl, public_addr: &'static str) -> Self {
        Node {
            name,
            ns,
            ifname: unique_ifname("cw"),
            key: Keypair::generate(),
            imp,
            public_addr,
        }
    }
}

/// `wg-quick VERB CONF` in `ns` with the userspace implementation `imp`
/// (corewire by full path, wireguard-go by name); panics unless it
/// succeeds; returns its stderr (the `[#]` trace).
fn wg_quick(ns: &Netns, verb: &str, conf: &Path, imp: WgImpl) -> String {
    let mut cmd = ns.command("wg-quick", &[verb]);
    cmd.arg(conf);
    let implementation: PathBuf = match imp {
        WgImpl::Corewire => imp.binary(),
        _ => PathBuf::from(imp.name()),
    };
    cmd.env("WG_QUICK_USERSPACE_IMPLEMENTATION", &implementation);
    // Output goes through files (netns::run): a daemon that kept our
    // stdout/stderr open could not make this wait.
    let out = run(cmd, None, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "wg-quick {verb} {} in {} failed ({}):\n{stderr}",
        conf.display(),
        ns.name(),
        out.status
    );
    stderr
}

fn sysctl(ns: &Netns, setting: &str) {
    ns.exec_ok("sysctl", &["-q", "-w", setting]);
}

/// Whether every peer of the hub has an endpoint and a handshake.
fn all_peers_seen(dump: &WgDump) -> bool {
    dump.peers.len() == 3
        && dump
            .peers
            .iter()
            .all(|p| p.endpoint.is_some() && p.latest_handshake != 0)
}

#[test]
fn hub_and_spoke_with_wg_quick() {
    const TEST: &str = "hub_and_spoke_with_wg_quick";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);

    // Namespaces first: dropped last, after every device guard.
    let inet = Netns::new("inet");
    let hub_ns = Netns::new("hub");
    let router_ns = Netns::new("router");
    let lan_ns = Netns::new("lanhost");
    let phone_ns = Netns::new("phone");
    let laptop_ns = Netns::new("laptop");

    // The "internet": a bridge with one veth per WireGuard node.
    inet.ip_ok(&["link", "add", "br0", "type", "bridge"]);
    inet.ip_ok(&["link", "set", "br0", "up"]);
    let mut wan = Vec::new();
    for (ns, addr) in [
        (&hub_ns, "203.0.113.1/24"),
        (&router_ns, "203.0.113.2/24"),
        (&phone_ns, "203.0.113.3/24"),
        (&laptop_ns, "203.0.113.4/24"),
    ] {
        let veth = Veth::pair(&inet, ns, &[], &[addr]);
        inet.ip_ok(&["link", "set", veth.name_a(), "master", "br0"]);
        wan.push(veth);
    }
    // The router's LAN.
    let _lan = Veth::pair(
        &router_ns,
        &lan_ns,
        &["192.168.50.1/24"],
        &["192.168.50.10/24"],
    );
    lan_ns.ip_ok(&["route", "add", "default", "via", "192.168.50.1"]);
    sysctl(&hub_ns, "net.ipv4.ip_forward=1");
    sysctl(&hub_ns, "net.ipv6.conf.all.forwarding=1");
    sysctl(&router_ns, "net.ipv4.ip_forward=1");

    let node = Node::new;
    let hub = node("hub", &hub_ns, WgImpl::Corewire, "203.0.113.1");
    let router = node("router", &router_ns, WgImpl::Corewire, "203.0.113.2");
    let phone = node("phone", &phone_ns, WgImpl::Corewire, "203.0.113.3");
    let laptop = node("laptop", &laptop_ns, WgImpl::WireguardGo, "203.0.113.4");

    // The .conf files, as an operator would write them.
    let hub_conf = format!(
        "[Interface]\n\
         PrivateKey = {}\n\
         ListenPort = {HUB_PORT}\n\
         Address = 10.100.0.1/24, fd42::1/64\n\
         \n\
         # router, with the LAN behind it\n\
         [Peer]\n\
         PublicKey = {}\n\
         AllowedIPs = 10.100.0.2/32, fd42::2/128, 192.168.50.0/24\n\
         \n\
         # phone\n\
         [Peer]\n\
         PublicKey = {}\n\
         AllowedIPs = 10.100.0.3/32, fd42::3/128\n\
         \n\
         # laptop\n\
         [Peer]\n\
         PublicKey = {}\n\
         AllowedIPs = 10.100.0.4/32, fd42::4/128\n",
        hub.key.private, router.key.public, phone.key.public, laptop.key.public
    );
    let spoke_conf = |spoke: &Node<'_>, host: u8, allowed: &str| {
        format!(
            "[Interface]\n\
             PrivateKey = {}\n\
             Address = 10.100.0.{host}/24, fd42::{host}/64\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             Endpoint = {}:{HUB_PORT}\n\
             AllowedIPs = {allowed}\n\
             PersistentKeepalive = 25\n",
            spoke.key.private, hub.key.public, hub.public_addr
        )
    };
    let dir = TempDir::new("hubspoke");
    // wg-quick wants a path ending in <ifname>.conf.
    let mut confs = Vec::new();
    for (n, text) in [
        (&hub, hub_conf.clone()),
        (&router, spoke_conf(&router, 2, "10.100.0.0/24, fd42::/64")),
        (
            &phone,
            spoke_conf(&phone, 3, "10.100.0.0/24, fd42::/64, 192.168.50.0/24"),
        ),
        (
            &laptop,
            spoke_conf(&laptop, 4, "10.100.0.0/24, fd42::/64, 192.168.50.0/24"),
        ),
    ] {
        confs.push(dir.write(&format!("{}.conf", n.ifname), &text));
    }
    let nodes = [&hub, &router, &phone, &laptop];

    // Hub first, so that the spokes' first keepalives find it listening.
    let mut devices: Vec<WgDevice> = Vec::new();
    for (n, conf) in nodes.iter().zip(&confs) {
        let trace = wg_quick(n.ns, "up", conf, n.imp);
        // From here on the guard stops the daemon if the test fails.
        devices.push(WgDevice::adopt(n.imp, n.ns, &n.ifname));
        let mtu = n.ns.ip_ok(&["link", "show", "dev", &n.ifname]);
        assert!(mtu.contains("mtu 1420"), "{}: {mtu}\n{trace}", n.name);
        if n.name == "hub" || n.name == "phone" || n.name == "laptop" {
            // Outside the interface's subnets, so wg-quick routes it.
            assert!(
                trace.contains(&format!("ip -4 route add 192.168.50.0/24 dev {}", n.ifname)),
                "{}: no LAN route:\n{trace}",
                n.name
            );
        }
    }
    let pids: Vec<u32> = devices.iter().filter_map(WgDevice::pid).collect();
    assert_eq!(pids.len(), 4, "one daemon per node: {pids:?}");

    // The spokes reach the hub on their own: PersistentKeepalive sends a
    // keepalive (so a handshake) as soon as the interface is up.
    let mut dump = wg_show_dump(&hub_ns, &hub.ifname);
    let seen = wait_until(HANDSHAKE_TIMEOUT, Duration::from_millis(100), || {
        dump = wg_show_dump(&hub_ns, &hub.ifname);
        all_peers_seen(&dump)
    });
    assert!(
        seen,
        "the hub did not hear from every spoke within {HANDSHAKE_TIMEOUT:?} \
         without traffic (persistent keepalive at start-up):\n{}",
        wg(&hub_ns, &["show", &hub.ifname])
    );

    // spoke -> hub -> spoke, over IPv4 and IPv6.
    assert_ping(&phone_ns, "10.100.0.2", 3, PING_TIMEOUT);
    assert_ping(&phone_ns, "fd42::2", 3, PING_TIMEOUT);
    // phone -> hub -> router -> LAN host.
    assert_ping(&phone_ns, "192.168.50.10", 3, PING_TIMEOUT);
    // LAN host -> router -> hub -> laptop (wireguard-go).
    assert_ping(&lan_ns, "10.100.0.4", 3, PING_TIMEOUT);
    // corewire spoke -> wireguard-go spoke, IPv6.
    assert_ping(&phone_ns, "fd42::4", 3, PING_TIMEOUT);

    // The hub's view: every peer, with the endpoint it learned (the spoke's
    // public address and its random listen port) and a recent handshake.
    let shown = wg(&hub_ns, &["show", &hub.ifname]);
    eprintln!("[netns] {TEST}: wg show on the hub:\n{shown}");
    let dump = wg_show_dump(&hub_ns, &hub.ifname);
    assert_eq!(dump.listen_port, HUB_PORT);
    assert_eq!(dump.peers.len(), 3, "{shown}");
    for spoke in [&router, &phone, &laptop] {
        let peer = dump
            .peer(&spoke.key.public)
            .unwrap_or_else(|| panic!("{} not among the hub's peers:\n{shown}", spoke.name));
        let port = wg_show_dump(spoke.ns, &spoke.ifname).listen_port;
        assert_eq!(
            peer.endpoint.as_deref(),
            Some(format!("{}:{port}", spoke.public_addr).as_str()),
            "{}: endpoint learned by the hub:\n{shown}",
            spoke.name
        );
        let age = peer.handshake_age();
        assert!(
            age.is_some_and(|a| a <= Duration::from_secs(30)),
            "{}: handshake {age:?} ago:\n{shown}",
            spoke.name
        );
        assert!(
            peer.rx_bytes > 0 && peer.tx_bytes > 0,
            "{}: {peer:?}",
            spoke.name
        );
        assert!(spoke.ns.link_exists(&spoke.ifname));
    }

    // wg-quick down everywhere: no daemon, socket or link left behind.
    for ((n, conf), dev) in nodes.iter().zip(&confs).zip(devices.iter_mut()).rev() {
        wg_quick(n.ns, "down", conf, n.imp);
        assert!(
            dev.wait_exit(Duration::from_secs(5)),
            "{} ({}, pid {:?}) outlived wg-quick down",
            n.name,
            n.imp.name(),
            dev.pid()
        );
        assert!(
            !dev.socket_path().exists(),
            "{}: socket left behind",
            n.name
        );
        assert!(!n.ns.link_exists(&n.ifname), "{}: link left behind", n.name);
    }
    for ns in [&inet, &hub_ns, &router_ns, &lan_ns, &phone_ns, &laptop_ns] {
        assert_eq!(
            ns.pids(),
            Vec::<u32>::new(),
            "processes left in {}",
            ns.name()
        );
    }
    drop(devices);
    drop(wan);
}
