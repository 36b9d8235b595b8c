//! Two corewire interfaces in memory: handshake, data both ways, roaming,
//! cookies under load, and what must be dropped.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use corewire_dataplane::proto::interface::{Drop, Received};
use corewire_dataplane::proto::peer::PeerError;
use corewire_dataplane::proto::session::PacketBuf;
use support::{ipv4_packet, Net};

#[test]
fn handshake_then_data_both_ways() {
    let mut net = Net::new();
    net.send_data(0, 3, 100);
    assert_eq!(net.nodes[0].staged(), 3, "staged while handshaking");
    net.deliver();
    assert!(net.nodes[0].staged() == 0);
    assert_eq!(net.nodes[1].delivered.len(), 3);
    for (i, p) in net.nodes[1].delivered.iter().enumerate() {
        let expect = ipv4_packet(net.nodes[0].inner, net.nodes[1].inner, 100, i as u8);
        assert_eq!(p, &expect, "padding trimmed, bytes intact");
    }
    // The responder learned the initiator's endpoint and can answer.
    assert!(net.can_send(1));
    net.send_data(1, 2, 1380);
    net.deliver();
    assert_eq!(net.nodes[0].delivered.len(), 2);
    assert!(net.nodes[0].drops.is_empty() && net.nodes[1].drops.is_empty());

    let p0 = net.nodes[0].iface().peer(net.nodes[0].peer).unwrap();
    assert!(p0.last_handshake().is_some());
    assert!(p0.tx_bytes() > 3 * 100 && p0.rx_bytes() > 2 * 1380);
}

#[test]
fn responder_waits_for_confirmation_before_sending() {
    let mut net = Net::new();
    let init = {
        let (peer, now) = (net.nodes[0].peer, net.now);
        net.nodes[0].iface_mut().initiate(peer, now)
    }
    .unwrap();
    let src = net.nodes[0].addr;
    net.receive(1, src, init.as_bytes().to_vec());
    // Response is on the wire; the responder holds the session in `next`.
    assert!(!net.can_send(1));
    net.send_data(1, 1, 64);
    assert_eq!(net.nodes[1].staged(), 1);
    net.deliver();
    // Initiator's keepalive confirmed the session; the staged packet left.
    assert!(net.can_send(1));
    assert!(net.nodes[1].staged() == 0);
    assert_eq!(net.nodes[0].delivered.len(), 1);
}

#[test]
fn replayed_handshake_and_transport_messages_are_dropped() {
    let mut net = Net::new();
    let init = {
        let (peer, now) = (net.nodes[0].peer, net.now);
        net.nodes[0].iface_mut().initiate(peer, now)
    }
    .unwrap();
    let src = net.nodes[0].addr;
    net.receive(1, src, init.as_bytes().to_vec());
    net.deliver();
    // The same initiation again: its timestamp is not newer.
    net.now += Duration::from_secs(1);
    net.receive(1, src, init.as_bytes().to_vec());
    assert!(net.nodes[1].drops.last().unwrap().contains("replayed"));

    net.send_data(0, 1, 64);
    let (to, from, bytes) = net.wire.pop_front().unwrap();
    net.receive(to, from, bytes.clone());
    net.receive(to, from, bytes);
    assert_eq!(net.nodes[1].delivered.len(), 1);
    assert!(net.nodes[1]
        .drops
        .last()
        .unwrap()
        .contains("replayed or too old"));
}

#[test]
fn roaming_moves_the_endpoint_on_authenticated_data_only() {
    let mut net = Net::new();
    net.send_data(0, 1, 64);
    net.deliver();
    let peer1 = net.nodes[1].peer;
    assert_eq!(
        net.nodes[1].iface_mut().peer(peer1).unwrap().endpoint(),
        Some(net.nodes[0].addr)
    );
    // Node 0 moves to a new address (NAT rebinding, new uplink).
    let old_addr = net.nodes[0].addr;
    let new_addr: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    net.nodes[0].addr = new_addr;
    // A forged datagram from elsewhere does not move it.
    let forged: SocketAddr = "203.0.113.9:1".parse().unwrap();
    let mut junk = vec![4u8, 0, 0, 0];
    junk.extend_from_slice(&[0u8; 60]);
    net.receive(1, forged, junk);
    assert_eq!(
        net.nodes[1].iface_mut().peer(peer1).unwrap().endpoint(),
        Some(old_addr)
    );
    net.send_data(0, 1, 64);
    net.deliver();
    assert_eq!(
        net.nodes[1].iface_mut().peer(peer1).unwrap().endpoint(),
        Some(new_addr)
    );
    // Replies now reach the new address.
    net.send_data(1, 1, 64);
    net.deliver();
    assert_eq!(net.nodes[0].delivered.len(), 1);
}

#[test]
fn under_load_initiations_get_a_cookie_then_pass_with_mac2() {
    let mut net = Net::new();
    let now = net.now;
    net.nodes[1].iface_mut().signal_load(now);
    net.send_data(0, 1, 64);
    // Initiation -> cookie reply -> accepted by node 0.
    net.deliver();
    assert_eq!(net.nodes[1].delivered.len(), 0);
    assert!(!net.can_send(0));
    // The retransmission carries mac2 and is answered, still under load.
    net.now += Duration::from_millis(5400);
    let now = net.now;
    net.nodes[1].iface_mut().signal_load(now);
    net.tick();
    net.deliver();
    assert!(net.can_send(0));
    assert_eq!(net.nodes[1].delivered.len(), 1);
}

#[test]
fn cookie_reply_does_not_move_the_endpoint() {
    let mut net = Net::new();
    net.send_data(0, 1, 64);
    net.deliver();
    let peer0 = net.nodes[0].peer;
    let before = net.nodes[0].iface_mut().peer(peer0).unwrap().endpoint();
    // Node 1 comes under load; node 0's next initiation draws a cookie
    // reply, which we deliver from a different address.
    net.nodes[1].iface_mut().signal_load(net.now);
    net.now += Duration::from_secs(121);
    let init = net.nodes[0].iface_mut().initiate(peer0, net.now).unwrap();
    let mut pkt = PacketBuf::new(init.as_bytes().to_vec(), 0, init.as_bytes().len()).unwrap();
    let now = net.now;
    net.nodes[1].iface_mut().signal_load(now);
    let src = net.nodes[0].addr;
    let reply = match net.nodes[1].iface_mut().receive(src, &mut pkt, now) {
        Received::Reply { peer: None, reply } => reply,
        other => panic!("expected a cookie reply, got {other:?}"),
    };
    let elsewhere: SocketAddr = "203.0.113.50:999".parse().unwrap();
    net.receive(0, elsewhere, reply.as_bytes().to_vec());
    assert_eq!(
        net.nodes[0].iface_mut().peer(peer0).unwrap().endpoint(),
        before
    );
}

#[test]
fn packets_from_disallowed_sources_are_dropped() {
    let mut net = Net::new();
    net.send_data(0, 1, 64);
    net.deliver();
    // Node 0 sends a packet whose inner source it does not own.
    let spoofed = ipv4_packet(Ipv4Addr::new(10, 9, 9, 9), net.nodes[1].inner, 40, 0);
    net.send(0, vec![spoofed]);
    net.deliver();
    assert_eq!(net.nodes[1].delivered.len(), 1);
    assert_eq!(
        net.nodes[1].drops.last().map(String::as_str),
        Some("inner source not allowed for the peer")
    );
}

#[test]
fn unknown_peers_and_garbage_are_dropped() {
    let mut net = Net::new();
    // A third party with a key node 1 does not know.
    let mut stranger =
        corewire_dataplane::proto::interface::Interface::new(net.now, std::time::SystemTime::now());
    stranger.set_private_key(Some(corewire_dataplane::proto::keys::PrivateKey::generate()));
    let pk1 = *net.nodes[1].iface_mut().public_key().unwrap();
    let sp = stranger.add_peer(pk1).unwrap();
    stranger
        .allow(sp, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 32)
        .unwrap();
    stranger
        .peer_mut(sp)
        .unwrap()
        .set_endpoint(Some(net.nodes[1].addr));
    let init = stranger.initiate(sp, net.now).unwrap();
    let mut pkt = PacketBuf::new(init.as_bytes().to_vec(), 0, 148).unwrap();
    let res = net.nodes[1]
        .iface_mut()
        .receive("203.0.113.1:5".parse().unwrap(), &mut pkt, net.now);
    assert!(
        matches!(res, Received::Foreign { key } if key == *stranger.public_key().unwrap()),
        "{res:?}"
    );

    for bytes in [
        vec![],
        vec![1, 0, 0],
        vec![9, 0, 0, 0, 1, 2, 3],
        vec![1u8; 148],
        vec![2u8; 92],
        vec![3u8; 64],
        vec![
            4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
            22, 23, 24, 25, 26, 27, 28,
        ],
    ] {
        let len = bytes.len();
        let mut pkt = PacketBuf::new(bytes, 0, len).unwrap();
        let res =
            net.nodes[1]
                .iface_mut()
                .receive("203.0.113.1:5".parse().unwrap(), &mut pkt, net.now);
        assert!(matches!(res, Received::Dropped(_)), "{res:?}");
    }
}

#[test]
fn initiation_flood_from_one_peer_is_limited() {
    let mut net = Net::new();
    // Two interfaces holding node 0's key produce two distinct initiations
    // within 20 ms; the second must be refused.
    let key0 = net.nodes[0].iface_mut().private_key().unwrap().clone();
    let pk1 = *net.nodes[1].iface_mut().public_key().unwrap();
    let mut twin = corewire_dataplane::proto::interface::Interface::new(
        net.now,
        std::time::SystemTime::now() + Duration::from_secs(1),
    );
    twin.set_private_key(Some(key0));
    let tp = twin.add_peer(pk1).unwrap();
    let a = {
        let (peer, now) = (net.nodes[0].peer, net.now);
        net.nodes[0].iface_mut().initiate(peer, now)
    }
    .unwrap();
    let b = twin.initiate(tp, net.now).unwrap();
    let src = net.nodes[0].addr;
    let now = net.now;
    let mut pa = PacketBuf::new(a.as_bytes().to_vec(), 0, 148).unwrap();
    assert!(matches!(
        net.nodes[1].iface_mut().receive(src, &mut pa, now),
        Received::Reply { .. }
    ));
    let mut pb = PacketBuf::new(b.as_bytes().to_vec(), 0, 148).unwrap();
    let res = net.nodes[1]
        .iface_mut()
        .receive(src, &mut pb, now + Duration::from_millis(5));
    assert!(
        matches!(
            res,
            Received::Dropped(Drop::Peer(PeerError::InitiationFlood))
        ),
        "{res:?}"
    );
}
