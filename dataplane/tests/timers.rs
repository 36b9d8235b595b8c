//! One test per timer rule of the whitepaper (section 6), in simulated
//! time, plus ten minutes of lossy traffic that must never stall longer
//! than the rules allow. The message-count rules (2^60 and 2^64 - 2^13 - 1)
//! are tested inside the crate, where a session's counter can be set.

mod support;

use std::time::Duration;

use corewire_dataplane::proto::messages::TYPE_INITIATION;
use corewire_dataplane::proto::timers::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX, ZERO_KEYS_AFTER,
};
use support::Net;

const MS: Duration = Duration::from_millis(1);

fn established() -> Net {
    let mut net = Net::new();
    net.send_data(0, 1, 64);
    net.deliver();
    assert!(net.can_send(0) && net.can_send(1));
    net
}

/// Counts the initiations waiting on the wire.
fn initiations_on_wire(net: &Net) -> usize {
    net.wire
        .iter()
        .filter(|(_, _, b)| b.first() == Some(&(TYPE_INITIATION as u8)))
        .count()
}

#[test]
fn rekey_after_time_on_send_by_initiator() {
    let mut net = established();
    let first_session = net.session_age(0).unwrap();
    assert!(first_session < Duration::from_secs(1));
    // Just before REKEY_AFTER_TIME nothing happens on send.
    net.now += REKEY_AFTER_TIME - Duration::from_secs(1);
    net.send_data(0, 1, 64);
    assert_eq!(initiations_on_wire(&net), 0);
    net.deliver();
    // After it, the next send starts a handshake; traffic keeps flowing.
    net.now += Duration::from_secs(2);
    net.send_data(0, 1, 64);
    assert_eq!(initiations_on_wire(&net), 1);
    net.deliver();
    assert!(
        net.session_age(0).unwrap() < Duration::from_secs(1),
        "new session"
    );
    assert_eq!(net.nodes[1].delivered.len(), 3);
}

#[test]
fn responder_does_not_rekey_on_age() {
    let mut net = established();
    net.now += REKEY_AFTER_TIME + Duration::from_secs(1);
    net.send_data(1, 1, 64);
    assert_eq!(
        initiations_on_wire(&net),
        0,
        "only the initiator rekeys on age"
    );
}

#[test]
fn reject_after_time_stops_use_of_a_session() {
    let mut net = established();
    // Partition the nodes so no new handshake can complete.
    net.nodes[1].addr = "198.51.100.99:1".parse().unwrap();
    net.now += REJECT_AFTER_TIME;
    assert!(!net.can_send(0), "a 180 s old session is not used to send");
    net.send_data(0, 1, 64);
    assert_eq!(net.nodes[0].staged(), 1, "staged, not sent on a dead key");
    // And nothing sealed under the old session is accepted any more.
    let mut old = established();
    old.send_data(0, 1, 64);
    let (to, from, bytes) = old.wire.pop_front().unwrap();
    old.now += REJECT_AFTER_TIME;
    old.receive(to, from, bytes);
    assert_eq!(old.nodes[1].delivered.len(), 1);
    assert_eq!(old.nodes[1].drops.last().unwrap(), "session expired");
}

#[test]
fn rekey_on_receive_in_the_last_minute() {
    let mut net = established();
    // Only node 1 talks; node 0 (initiator) receives after 165 s.
    net.now += Duration::from_secs(166);
    net.send_data(1, 1, 64);
    net.deliver();
    assert!(
        net.session_age(0).unwrap() < Duration::from_secs(1),
        "initiator rekeyed on receive"
    );
}

#[test]
fn retransmits_every_rekey_timeout_then_gives_up_after_rekey_attempt_time() {
    let mut net = Net::new();
    // Node 1 is unreachable.
    net.nodes[1].addr = "198.51.100.99:1".parse().unwrap();
    net.send_data(0, 4, 64);
    let mut sent = net.sent_datagrams;
    assert_eq!(sent, 1);
    let mut times = vec![net.now];
    let start = net.now;
    for _ in 0..200_000 {
        net.now += 10 * MS;
        net.tick();
        if net.sent_datagrams != sent {
            sent = net.sent_datagrams;
            times.push(net.now);
        }
        if net.nodes[0].staged() == 0 {
            break;
        }
    }
    // The first initiation and 19 retries, as the kernel: attempts 1..=19.
    assert_eq!(times.len(), 20, "{times:?}");
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 10 * MS);
    }
    let gave_up = net.now - start;
    assert!(gave_up >= REKEY_ATTEMPT_TIME, "{gave_up:?}");
    assert!(gave_up <= REKEY_ATTEMPT_TIME + 4 * (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX));
    assert!(net.nodes[0].staged() == 0, "staged packets dropped");
    // Quiet afterwards.
    net.run_for(Duration::from_secs(60), Duration::from_millis(100));
    assert_eq!(net.sent_datagrams, sent);
}

#[test]
fn at_most_one_initiation_per_rekey_timeout() {
    let mut net = Net::new();
    net.nodes[1].addr = "198.51.100.99:1".parse().unwrap();
    let peer = net.nodes[0].peer;
    assert!(net.nodes[0].iface_mut().initiate(peer, net.now).is_some());
    for ms in [1u64, 100, 4999] {
        let t = net.now + Duration::from_millis(ms);
        assert!(
            net.nodes[0].iface_mut().initiate(peer, t).is_none(),
            "{ms} ms"
        );
    }
    assert!(net.nodes[0]
        .iface_mut()
        .initiate(peer, net.now + REKEY_TIMEOUT)
        .is_some());
}

#[test]
fn keepalive_after_receiving_data_and_sending_nothing() {
    let mut net = established();
    let k0 = net.nodes[0].keepalives;
    net.send_data(1, 1, 64);
    net.deliver();
    net.run_for(KEEPALIVE_TIMEOUT - 100 * MS, 50 * MS);
    assert_eq!(net.nodes[1].keepalives, 0);
    assert_eq!(net.nodes[0].keepalives, k0);
    net.run_for(200 * MS, 50 * MS);
    // Node 0 got data and did not answer: it sent exactly one keepalive.
    assert_eq!(net.nodes[1].keepalives, 1);
    net.run_for(Duration::from_secs(60), Duration::from_millis(500));
    assert_eq!(net.nodes[1].keepalives, 1, "no keepalive without new data");
}

#[test]
fn no_keepalive_when_we_answered_with_data() {
    let mut net = established();
    net.send_data(1, 1, 64);
    net.deliver();
    net.now += Duration::from_secs(1);
    net.send_data(0, 1, 64);
    net.deliver();
    let before = net.nodes[1].keepalives;
    net.run_for(KEEPALIVE_TIMEOUT + Duration::from_secs(1), 100 * MS);
    assert_eq!(net.nodes[1].keepalives, before);
}

#[test]
fn new_handshake_when_sent_data_gets_no_answer() {
    let mut net = established();
    // Node 1 answers, which clears node 0's pending new-handshake timer.
    net.send_data(1, 1, 64);
    net.deliver();
    // Node 0 sends data; from now on node 1's packets to node 0 are lost.
    net.now += Duration::from_secs(1);
    net.send_data(0, 1, 64);
    net.deliver();
    net.nodes[0].addr = "198.51.100.1:1".parse().unwrap();
    let t0 = net.now;
    let mut first_init = None;
    for _ in 0..3000 {
        net.now += 10 * MS;
        net.tick();
        if initiations_on_wire(&net) > 0 {
            first_init = Some(net.now - t0);
            break;
        }
        net.wire.clear();
    }
    let after = first_init.expect("a new handshake");
    assert!(after >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, "{after:?}");
    assert!(after <= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 10 * MS);
}

#[test]
fn persistent_keepalive_while_idle() {
    let mut net = established();
    let peer = net.nodes[0].peer;
    let now = net.now;
    net.nodes[0]
        .iface_mut()
        .peer_mut(peer)
        .unwrap()
        .set_persistent_keepalive(25, now);
    let before = net.nodes[1].keepalives;
    net.run_for(Duration::from_secs(100), Duration::from_millis(250));
    // Every 25 s: four in 100 s (the sessions are rekeyed on the way, which
    // resets the interval, so allow one fewer).
    let got = net.nodes[1].keepalives - before;
    assert!((3..=4).contains(&got), "{got}");
}

#[test]
fn key_material_is_erased_after_three_reject_after_times() {
    let mut net = established();
    let peer = net.nodes[0].peer;
    assert!(net.nodes[0].iface_mut().peer(peer).unwrap().is_active());
    net.run_for(
        ZERO_KEYS_AFTER - Duration::from_secs(1),
        Duration::from_secs(1),
    );
    assert!(net.nodes[0].iface_mut().peer(peer).unwrap().is_active());
    net.run_for(Duration::from_secs(2), Duration::from_millis(500));
    let p = net.nodes[0].iface_mut().peer(peer).unwrap();
    assert!(!p.is_active(), "sessions and handshake erased");
    assert!(p.last_handshake().is_some(), "history kept");
    // The peer still works: the next packet starts a fresh handshake.
    net.send_data(0, 1, 64);
    net.deliver();
    assert_eq!(net.nodes[1].delivered.len(), 2);
}

/// Ten minutes, both directions sending every 100 ms, 10% of datagrams
/// lost (handshakes included). The tunnel must rekey on schedule and never
/// go without a delivered packet for more than a few seconds.
#[test]
fn ten_minutes_with_packet_loss() {
    let mut net = Net::new();
    net.loss = 0.10;
    let step = Duration::from_millis(100);
    let end = net.now + Duration::from_secs(600);
    // Gaps are measured from each side's first delivery on.
    let mut last_delivery = [None; 2];
    let mut worst_gap = [Duration::ZERO; 2];
    let mut delivered = [0usize; 2];
    let mut max_age = Duration::ZERO;
    let mut sessions = 0;
    let mut last_age = Duration::MAX;
    while net.now < end {
        net.now += step;
        net.send_data(0, 1, 200);
        net.send_data(1, 1, 200);
        net.tick();
        net.deliver();
        for n in 0..2 {
            let d = net.nodes[n].delivered.len();
            if d > delivered[n] {
                if let Some(last) = last_delivery[n] {
                    worst_gap[n] = worst_gap[n].max(net.now - last);
                }
                last_delivery[n] = Some(net.now);
                delivered[n] = d;
            }
        }
        if let Some(age) = net.session_age(0) {
            max_age = max_age.max(age);
            if age < last_age {
                sessions += 1;
            }
            last_age = age;
        }
    }
    eprintln!("delivered {delivered:?} worst gaps {worst_gap:?} max session age {max_age:?} sessions {sessions} drops {:?}", (net.nodes[0].drops.len(), net.nodes[1].drops.len()));
    // Each side sent ~6000 packets; with 10% loss ~5400 arrive.
    assert!(delivered[0] > 5000 && delivered[1] > 5000, "{delivered:?}");
    assert!(
        max_age < REJECT_AFTER_TIME,
        "a session outlived its limit: {max_age:?}"
    );
    assert!(sessions >= 5, "rekeyed about every two minutes: {sessions}");
    for gap in worst_gap {
        assert!(gap <= Duration::from_secs(3), "tunnel stalled {gap:?}");
    }
}
