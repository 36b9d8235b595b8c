//! The packet-buffer ceiling: buffers alive in the process never exceed the
//! sum of the running engines' budgets; at the ceiling a receive is dropped
//! and counted (the ring keeps its buffer), and traffic resumes as soon as
//! buffers come back. One test in its own binary: the ceiling is
//! process-wide, so no other test may hold buffers meanwhile.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use corewire_dataplane::engine::limits::{DEPOT_LARGE, LARGE_BUFFERS_PER_WORKER};
use corewire_dataplane::engine::mem::MemNet;
use corewire_dataplane::engine::pool::buffers_alive;
use corewire_dataplane::engine::tun::Offload;
use corewire_testkit::packets::ipv4_packet;

#[test]
fn at_the_ceiling_receives_are_dropped_and_counted_then_resume() {
    let mut net = MemNet::pair(Offload {
        tso: false,
        uso: false,
    });
    let (alive, ceiling) = buffers_alive();
    // Two single-worker devices, each with its depot.
    assert_eq!(ceiling[0], 2 * (LARGE_BUFFERS_PER_WORKER + DEPOT_LARGE));
    assert!(alive[0] <= ceiling[0]);
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));

    // Something holds every large buffer the ceiling allows.
    let mut held = Vec::new();
    while let Some(buf) = net.devices[1].shard_mut(0).unwrap().pool().get() {
        held.push(buf);
        assert!(held.len() <= ceiling[0], "the pool stops at the ceiling");
    }
    assert_eq!(buffers_alive().0[0], ceiling[0]);

    // A datagram for the full device finds no buffer: dropped, counted.
    let now = net.now;
    net.devices[0].tun_send(&ipv4_packet(a, b, 100, 1), now);
    net.settle();
    assert_eq!(net.devices[1].delivered.len(), 0);
    assert_eq!(net.devices[1].counters().buffers_refused, 1);
    assert_eq!(buffers_alive().0[0], ceiling[0], "nothing grew past it");

    // Buffers come back; the next packet gets through.
    drop(held);
    net.devices[0].tun_send(&ipv4_packet(a, b, 100, 2), now);
    net.settle();
    assert_eq!(net.devices[1].delivered.len(), 1);

    // Dropping the engines gives their share of the ceiling back.
    drop(net);
    assert_eq!(buffers_alive(), ([0, 0], [0, 0]));
}
