//! Whole devices in memory, configured through UAPI text as `wg` would
//! configure the daemon: the engine's real shards (routing, sealing, GSO
//! grouping, GRO splitting, coalescing, staging, handoffs between
//! workers, timers) over the in-memory shell, in simulated time. No root:
//! CI runs these as an unprivileged user (scripts/test.sh).
//!
//! ```text
//!   spoke 198.51.100.7:40000 (2 workers)        hub 192.0.2.1:51820 (2 workers)
//!   10.0.0.2  fd00::2       ---- simulated UDP ----   10.0.0.1  fd00::1
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use corewire_dataplane::engine::config::Device;
use corewire_dataplane::engine::mem::MemNet;
use corewire_dataplane::engine::offload::checksum;
use corewire_dataplane::engine::tun::Offload;
use corewire_dataplane::proto::keys::{PrivateKey, PublicKey};
use corewire_testkit::packets::{ipv4_packet, ipv6_packet, tcp_tso_read};

use super::apply::set_from_text;
use super::get::render_get;
use crate::config::DeviceConfig;

const OFFLOAD: Offload = Offload {
    tso: true,
    uso: true,
};
const HUB4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SPOKE4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const HUB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const SPOKE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// One device of the network and the configuration the control plane
/// keeps for it.
struct Node {
    dev: usize,
    config: DeviceConfig,
}

impl Node {
    fn add(net: &mut MemNet, at: &str, workers: u32) -> Self {
        Node {
            dev: net.add(addr(at), workers, OFFLOAD),
            config: DeviceConfig::new(),
        }
    }

    fn set(&mut self, net: &mut MemNet, body: &str) {
        if let Err(e) = set_from_text(&mut self.config, &mut net.devices[self.dev], body) {
            panic!("set failed: {e} ({})\n{body}", e.errno());
        }
    }

    fn get(&self, net: &mut MemNet) -> String {
        render_get(&self.config, &net.devices[self.dev].stats().expect("stats"))
    }
}

/// The value of the first `key=` line of a UAPI `get` reply after the
/// line `after`.
fn field(get: &str, after: &str, key: &str) -> Option<String> {
    let rest = &get[get.find(after)?..];
    rest.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

/// The TCP payload of `pkt` if its transport checksum is right.
fn tcp_payload(pkt: &[u8]) -> &[u8] {
    let (l3, pseudo) = if pkt[0] >> 4 == 4 {
        let mut ph = pkt[12..20].to_vec();
        ph.extend_from_slice(&[0, 6]);
        ph.extend_from_slice(&u16::try_from(pkt.len() - 20).expect("fits").to_be_bytes());
        (20, ph)
    } else {
        let mut ph = pkt[8..40].to_vec();
        ph.extend_from_slice(&u32::try_from(pkt.len() - 40).expect("fits").to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, 6]);
        (40, ph)
    };
    let mut all = pseudo;
    all.extend_from_slice(&pkt[l3..]);
    assert_eq!(checksum(&all), 0, "TCP checksum of a delivered segment");
    let off = usize::from(pkt[l3 + 12] >> 4) * 4;
    &pkt[l3 + off..]
}

/// A hub and a spoke configured by UAPI text; the spoke's keepalive
/// starts the handshake.
fn hub_and_spoke(net: &mut MemNet) -> (Node, Node) {
    let (hub_key, spoke_key) = (PrivateKey::generate(), PrivateKey::generate());
    let mut hub = Node::add(net, "192.0.2.1:51820", 2);
    let mut spoke = Node::add(net, "198.51.100.7:40000", 2);
    hub.set(
        net,
        &format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n",
            hub_key.to_hex(),
            spoke_key.public_key().to_hex()
        ),
    );
    spoke.set(
        net,
        &format!(
            "private_key={}\nlisten_port=40000\npublic_key={}\nendpoint=192.0.2.1:51820\n\
             allowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\npersistent_keepalive_interval=25\n",
            spoke_key.to_hex(),
            hub_key.public_key().to_hex()
        ),
    );
    net.settle();
    (hub, spoke)
}

/// Sends `packet` into `from`'s TUN and checks that `to`'s TUN passes it
/// on unchanged.
fn carry(net: &mut MemNet, from: &Node, to: &Node, packet: &[u8]) {
    net.devices[to.dev].delivered.clear();
    let now = net.now;
    net.devices[from.dev].tun_send(packet, now);
    net.settle();
    let got: Vec<Vec<u8>> = net.devices[to.dev].delivered.drain(..).collect();
    assert_eq!(got, vec![packet.to_vec()], "delivered packets");
}

/// Sends a TSO super-packet into `from`'s TUN and checks that `to`'s TUN
/// passes on valid segments carrying exactly its payload, sent as GSO
/// runs and written as coalesced super-packets.
fn carry_super(net: &mut MemNet, from: &Node, to: &Node, src: IpAddr, dst: IpAddr, seed: u8) {
    let payload = body(60_000, seed);
    let read = tcp_tso_read(src, dst, &payload, 1360);
    let (gso_before, super_before) = (
        net.devices[from.dev].counts.udp_gso_sends,
        net.devices[to.dev].counts.tun_super_writes,
    );
    net.devices[to.dev].delivered.clear();
    let now = net.now;
    net.devices[from.dev].tun_read(&read, now);
    net.settle();
    let got: Vec<u8> = net.devices[to.dev]
        .delivered
        .drain(..)
        .flat_map(|p| tcp_payload(&p).to_vec())
        .collect();
    assert!(got == payload, "payload of the delivered segments differs");
    assert!(net.devices[from.dev].counts.udp_gso_sends > gso_before);
    assert!(net.devices[to.dev].counts.tun_super_writes > super_before);
}

#[test]
fn two_devices_handshake_carry_roam_and_rekey() {
    let mut net = MemNet::new();
    let (hub, spoke) = hub_and_spoke(&mut net);
    let get = hub.get(&mut net);
    let spoke_hex = net.devices[spoke.dev].shards()[0]
        .interface()
        .public_key()
        .map(PublicKey::to_hex)
        .unwrap_or_default();
    assert_eq!(
        field(&get, &spoke_hex, "endpoint").as_deref(),
        Some("198.51.100.7:40000"),
        "the hub learned the spoke's endpoint from its handshake\n{get}"
    );
    let first = field(&get, &spoke_hex, "last_handshake_time_sec").expect("a handshake time");
    assert_ne!(first, "0", "{get}");

    // Plain packets, IPv4 and IPv6, both ways.
    carry(&mut net, &spoke, &hub, &ipv4_packet(SPOKE4, HUB4, 100, 1));
    carry(&mut net, &hub, &spoke, &ipv4_packet(HUB4, SPOKE4, 1400, 2));
    carry(&mut net, &spoke, &hub, &ipv6_packet(SPOKE6, HUB6, 1380, 3));
    carry(&mut net, &hub, &spoke, &ipv6_packet(HUB6, SPOKE6, 7, 4));

    // TSO super-packets split, sealed as GSO runs, coalesced on arrival.
    carry_super(&mut net, &spoke, &hub, SPOKE4.into(), HUB4.into(), 5);
    carry_super(&mut net, &hub, &spoke, HUB6.into(), SPOKE6.into(), 6);

    // Roaming: the spoke moves; the hub follows its authenticated packets.
    net.devices[spoke.dev].set_addr(addr("198.51.100.8:40001"));
    carry(&mut net, &spoke, &hub, &ipv4_packet(SPOKE4, HUB4, 64, 7));
    let get = hub.get(&mut net);
    assert_eq!(
        field(&get, &spoke_hex, "endpoint").as_deref(),
        Some("198.51.100.8:40001"),
        "{get}"
    );
    carry(&mut net, &hub, &spoke, &ipv4_packet(HUB4, SPOKE4, 64, 8));

    // Rekey: after REKEY_AFTER_TIME (120 s) of traffic a new handshake
    // runs, and traffic keeps flowing through it.
    for round in 0..15u8 {
        net.advance(Duration::from_secs(10), Duration::from_millis(500));
        carry(
            &mut net,
            &spoke,
            &hub,
            &ipv4_packet(SPOKE4, HUB4, 200, round),
        );
        carry(
            &mut net,
            &hub,
            &spoke,
            &ipv6_packet(HUB6, SPOKE6, 200, round),
        );
    }
    let get = hub.get(&mut net);
    let later = field(&get, &spoke_hex, "last_handshake_time_sec").expect("a handshake time");
    let (first, later): (u64, u64) = (
        first.parse().expect("seconds"),
        later.parse().expect("seconds"),
    );
    assert!(later >= first + 120, "rekeyed: {first} -> {later}");
    let c = net.devices[hub.dev].counters();
    assert_eq!(c.backpressure + c.tun_malformed + c.no_route, 0, "{c:?}");
}

#[test]
fn hundred_thousand_peers_of_which_a_thousand_are_active() {
    const PEERS: usize = 100_000;
    const ACTIVE: usize = 1_000;
    let mut net = MemNet::new();
    let hub_key = PrivateKey::generate();
    let hub_pub = hub_key.public_key().to_hex();
    let mut hub = Node::add(&mut net, "192.0.2.1:51820", 2);
    let spokes: Vec<PrivateKey> = (0..ACTIVE).map(|_| PrivateKey::generate()).collect();
    // The idle peers' keys only need to be distinct 32-byte strings.
    let mut text = format!("private_key={}\nlisten_port=51820\n", hub_key.to_hex());
    for i in 0..PEERS {
        let key = match spokes.get(i) {
            Some(k) => k.public_key(),
            None => {
                let mut b = [0x5au8; 32];
                b[..8].copy_from_slice(&(i as u64).to_le_bytes());
                PublicKey::from_bytes(b)
            }
        };
        let (hi, lo) = (i >> 8, i & 0xff);
        text.push_str(&format!(
            "public_key={}\nallowed_ip=10.{}.{}.{}/32\n",
            key.to_hex(),
            100 + (hi >> 8),
            hi & 0xff,
            lo
        ));
    }
    hub.set(&mut net, &text);
    assert_eq!(hub.config.peer_count(), PEERS);
    let inner = |i: usize| Ipv4Addr::new(10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8);

    let mut nodes = Vec::new();
    for (i, key) in spokes.iter().enumerate() {
        let mut n = Node::add(
            &mut net,
            &format!("198.51.{}.{}:{}", 100 + i / 250, 1 + i % 250, 40000 + i),
            1,
        );
        n.set(
            &mut net,
            &format!(
                "private_key={}\npublic_key={hub_pub}\nendpoint=192.0.2.1:51820\nallowed_ip=10.0.0.0/8\n",
                key.to_hex()
            ),
        );
        nodes.push(n);
    }
    // Every active spoke sends one packet: each handshake completes and the
    // staged packet follows it. A thousand initiations at once put the hub
    // under load, as a fleet reconnecting after a restart does: most
    // spokes get a cookie reply and come back with mac2 at their next
    // attempt (REKEY_TIMEOUT, 5 s, later).
    let now = net.now;
    for (i, n) in nodes.iter().enumerate() {
        let p = ipv4_packet(inner(i), HUB4, 64, i as u8);
        net.devices[n.dev].tun_send(&p, now);
    }
    net.advance(Duration::from_secs(12), Duration::from_millis(100));
    assert_eq!(net.devices[hub.dev].delivered.len(), ACTIVE);
    assert!(net.devices[hub.dev].counters().under_load_signals > 0);
    // The hub answers each of them.
    net.devices[hub.dev].delivered.clear();
    for i in 0..ACTIVE {
        let p = ipv4_packet(HUB4, inner(i), 64, i as u8);
        net.devices[hub.dev].tun_send(&p, now);
    }
    net.settle();
    for (i, n) in nodes.iter().enumerate() {
        let got = &net.devices[n.dev].delivered;
        assert_eq!(got.len(), 1, "spoke {i}");
        assert_eq!(got[0][16..20], inner(i).octets());
    }
    let stats = net.devices[hub.dev].stats().expect("stats");
    assert_eq!(stats.peers.len(), PEERS);
    let handshaken = stats
        .peers
        .iter()
        .filter(|p| p.last_handshake.is_some())
        .count();
    assert_eq!(handshaken, ACTIVE);
    let c = net.devices[hub.dev].counters();
    assert_eq!(c.no_route + c.backpressure, 0, "{c:?}");
    // With two workers, about half the packets reached the other worker
    // first and were handed over.
    assert!(c.handed_tun + c.handed_udp > 0, "{c:?}");
}
