//! A hub under a handshake flood, in memory and simulated time: 100,000
//! initiations with a valid mac1 (anyone who knows the hub's public key can
//! make them) from 10,000 sources, while an established spoke sends data
//! and a new legitimate spoke connects.
//!
//! ```text
//!   spoke   192.0.2.1:51820 (device 0) --- data ----------> hub 192.0.2.2:51820 (device 1)
//!   newcomer 192.0.2.3:51820 (device 2) --- handshake ----> hub
//!   attacker 198.18.x.y:p (10,000 sources) --- initiations --> hub
//! ```
//!
//! Threat: every initiation that passes mac1 costs the hub X25519 work; a
//! flood of them must not starve the data of established sessions nor keep
//! a new peer out. The hub's shard queues handshake messages (bounded),
//! takes them in with a budget, and puts itself under load, after which
//! initiations without a cookie (mac2) get cookie replies and no X25519.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use corewire_dataplane::engine::config::{Change, Device, PeerConfig};
use corewire_dataplane::engine::limits::{HANDSHAKE_QUEUE, UNDER_LOAD_AT};
use corewire_dataplane::engine::mem::{Datagram, MemNet};
use corewire_dataplane::engine::shard::Event;
use corewire_dataplane::engine::tun::Offload;
use corewire_dataplane::proto::interface::Interface;
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey, PublicKey};
use corewire_testkit::packets::ipv4_packet;

const SPOKE: usize = 0;
const HUB: usize = 1;
const INITIATIONS: usize = 100_000;
const SOURCES: usize = 10_000;

fn peer(key: PublicKey, endpoint: Option<SocketAddr>, inner: Ipv4Addr) -> Change {
    Change::Peer(PeerConfig {
        public_key: key,
        preshared_key: PresharedKey::default(),
        endpoint,
        persistent_keepalive: 0,
        allowed_ips: vec![(IpAddr::V4(inner), 32)],
    })
}

/// The `i`th attacking source.
fn source(i: usize) -> SocketAddr {
    let i = i % SOURCES;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8)),
        40_000 + (i % 7) as u16,
    )
}

#[test]
fn initiation_flood_keeps_data_flowing_and_lets_a_new_peer_in() {
    let mut net = MemNet::pair(Offload {
        tso: false,
        uso: false,
    });
    let hub_addr = net.devices[HUB].addr();
    let hub_public = *net.devices[HUB].shards()[0]
        .interface()
        .public_key()
        .unwrap();
    // A newcomer the hub knows, not yet connected.
    let newcomer_key = PrivateKey::generate();
    let newcomer_addr: SocketAddr = "192.0.2.3:51820".parse().unwrap();
    let newcomer = net.add(
        newcomer_addr,
        1,
        Offload {
            tso: false,
            uso: false,
        },
    );
    let (newcomer_inner, hub_inner) = (Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 2));
    net.devices[HUB]
        .apply(vec![peer(newcomer_key.public_key(), None, newcomer_inner)])
        .unwrap();
    net.devices[newcomer]
        .apply(vec![
            Change::PrivateKey(Some(newcomer_key)),
            peer(hub_public, Some(hub_addr), hub_inner),
        ])
        .unwrap();

    // One initiation with a valid mac1 from a key the hub does not know,
    // replayed from many sources: each would cost the hub X25519 to find
    // out.
    let now = net.now;
    let mut attacker = Interface::new(now, std::time::SystemTime::now());
    attacker.set_private_key(Some(PrivateKey::generate()));
    let target = attacker.add_peer(hub_public).unwrap();
    let init = attacker.initiate(target, now).unwrap().as_bytes().to_vec();

    let spoke_inner = Ipv4Addr::new(10, 0, 0, 1);
    let mut sent = 0;
    let mut data_sent = 0;
    let mut newcomer_sent = false;
    let step = Duration::from_millis(100);
    // 200 steps of 100 ms (20 s): 500 initiations per step, a data packet
    // from the spoke every step, the newcomer's first packet at 1 s.
    for round in 0..200 {
        let now = net.now;
        for _ in 0..INITIATIONS / 200 {
            let d = Datagram {
                from: source(sent),
                to: hub_addr,
                payload: init.clone(),
                segment: None,
            };
            net.devices[HUB].udp_receive(&d, now);
            sent += 1;
        }
        let queued = net.devices[HUB].shards()[0].handshakes_waiting();
        assert!(queued <= HANDSHAKE_QUEUE, "queue bounded: {queued}");
        net.devices[SPOKE].tun_send(&ipv4_packet(spoke_inner, hub_inner, 100, round as u8), now);
        data_sent += 1;
        if round == 10 {
            net.devices[newcomer].tun_send(&ipv4_packet(newcomer_inner, hub_inner, 60, 7), now);
            newcomer_sent = true;
        }
        net.advance(step, step);
    }
    assert!(newcomer_sent);
    net.advance(Duration::from_secs(1), step);

    let c = net.devices[HUB].counters();
    eprintln!("hub after the flood: {c:?}");
    let delivered = &net.devices[HUB].delivered;
    let from_spoke = delivered
        .iter()
        .filter(|p| p[12..16] == spoke_inner.octets())
        .count();
    let from_newcomer = delivered
        .iter()
        .filter(|p| p[12..16] == newcomer_inner.octets())
        .count();
    assert_eq!(
        from_spoke, data_sent,
        "every data packet of the spoke arrived"
    );
    assert_eq!(from_newcomer, 1, "the newcomer got in during the flood");
    assert!(c.under_load_signals > 0, "under load engaged");
    let cookies = net.devices[HUB]
        .events
        .iter()
        .filter(|e| matches!(e, Event::CookieSent { .. }))
        .count();
    assert!(cookies > 0, "cookie replies went out");
    // X25519 work stays far below one per initiation: the first ones before
    // the queue reached an eighth, then only what passes mac2 (nothing of
    // the flood) and the legitimate handshakes.
    assert!(
        c.handshake_dh <= (UNDER_LOAD_AT + 16) as u64,
        "X25519 work under the flood: {} of {sent} initiations",
        c.handshake_dh
    );
    assert_eq!(sent, INITIATIONS);
}

/// Threat: a ping sweep (or any traffic) towards many peers that never
/// answer makes the hub stage packets for each while its handshakes run;
/// staged packets must stay within a per-worker bound, in small buffers.
#[test]
fn staging_for_unreachable_peers_is_bounded() {
    use corewire_dataplane::engine::limits::{MAX_STAGED, STAGED_TOTAL};
    const PEERS: usize = 200;
    const PACKETS: usize = 30;
    let mut net = MemNet::pair(Offload {
        tso: false,
        uso: false,
    });
    let changes = (0..PEERS)
        .map(|i| {
            let key = PrivateKey::generate();
            let endpoint = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, i as u8)), 51820);
            peer(
                key.public_key(),
                Some(endpoint),
                Ipv4Addr::new(10, 9, 0, i as u8),
            )
        })
        .collect();
    net.devices[HUB].apply(changes).unwrap();
    let now = net.now;
    let hub_inner = Ipv4Addr::new(10, 0, 0, 2);
    for i in 0..PEERS {
        for n in 0..PACKETS {
            let p = ipv4_packet(hub_inner, Ipv4Addr::new(10, 9, 0, i as u8), 64, n as u8);
            net.devices[HUB].tun_send(&p, now);
        }
    }
    net.settle();
    let shard = &net.devices[HUB].shards()[0];
    let c = shard.counters();
    assert!(
        shard.staged_total() <= STAGED_TOTAL,
        "{}",
        shard.staged_total()
    );
    assert_eq!(
        shard.staged_total(),
        STAGED_TOTAL.min(PEERS * MAX_STAGED.min(PACKETS))
    );
    assert_eq!(
        c.staged_dropped as usize,
        PEERS * PACKETS - shard.staged_total(),
        "every packet beyond the bound is counted"
    );
}

/// Threat: an initiation for a key the hub does not know costs X25519 to
/// find that out; if the worker that decrypted it handed it to the worker
/// that key would belong to, the sender could aim every worker's work at
/// one worker and make it pay twice. Unknown keys are dropped where they
/// were decrypted; configured peers of another worker are still handed
/// over and get in.
#[test]
fn unknown_keys_are_dropped_where_decrypted_and_known_ones_handed_over() {
    use corewire_dataplane::engine::counters::DropReason;
    const UNKNOWN: usize = 64;
    let offload = Offload {
        tso: false,
        uso: false,
    };
    let mut net = MemNet::new();
    let hub_addr: SocketAddr = "192.0.2.2:51820".parse().unwrap();
    let hub = net.add(hub_addr, 2, offload);
    let hub_key = PrivateKey::generate();
    let hub_public = hub_key.public_key();
    let hub_inner = Ipv4Addr::new(10, 0, 0, 2);
    net.devices[hub]
        .apply(vec![Change::PrivateKey(Some(hub_key))])
        .unwrap();

    // Initiations from keys nobody configured, from as many sources (so
    // both workers decrypt some), few enough that the hub stays out of
    // load and takes each in.
    let now = net.now;
    for i in 0..UNKNOWN {
        let mut attacker = Interface::new(now, std::time::SystemTime::now());
        attacker.set_private_key(Some(PrivateKey::generate()));
        let target = attacker.add_peer(hub_public).unwrap();
        let init = attacker.initiate(target, now).unwrap().as_bytes().to_vec();
        let d = Datagram {
            from: source(i),
            to: hub_addr,
            payload: init,
            segment: None,
        };
        net.devices[hub].udp_receive(&d, now);
        net.advance(Duration::from_millis(10), Duration::from_millis(10));
    }
    let c = net.devices[hub].counters();
    assert_eq!(c.under_load_signals, 0, "the hub stayed out of load: {c:?}");
    assert_eq!(c.dropped.get(DropReason::UnknownPeer), UNKNOWN as u64);
    assert_eq!(c.handed_udp, 0, "no unknown key was handed over: {c:?}");
    assert_eq!(c.handshake_dh, UNKNOWN as u64, "each decrypted once");

    // Spokes the hub knows connect until one's initiation reached the
    // worker that does not own it (each has an even chance): it is handed
    // over and the spoke's data arrives.
    let mut handed = false;
    for i in 0..20u8 {
        let key = PrivateKey::generate();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + i)), 51820);
        let inner = Ipv4Addr::new(10, 0, 1, i);
        let spoke = net.add(addr, 1, offload);
        net.devices[hub]
            .apply(vec![peer(key.public_key(), None, inner)])
            .unwrap();
        net.devices[spoke]
            .apply(vec![
                Change::PrivateKey(Some(key)),
                peer(hub_public, Some(hub_addr), hub_inner),
            ])
            .unwrap();
        let now = net.now;
        net.devices[spoke].tun_send(&ipv4_packet(inner, hub_inner, 60, i), now);
        net.settle();
        let got = net.devices[hub]
            .delivered
            .iter()
            .filter(|p| p[12..16] == inner.octets())
            .count();
        assert_eq!(got, 1, "spoke {i} got in");
        if net.devices[hub].counters().handed_udp > 0 {
            handed = true;
            break;
        }
    }
    assert!(handed, "a known peer's initiation was handed to its owner");
}
