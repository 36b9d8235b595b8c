//! `steer_udp` in the kernel: a reuseport group of one socket per worker on
//! loopback, in a namespace of its own; datagrams with receiver indexes
//! land on the socket of the worker the index names, for 2 and 3 workers
//! (3: the index bits can name a worker that does not exist, which falls
//! back and is counted), initiations from one source all on one socket.
//!
//! ```text
//!  +------------------------------------------------------------+
//!  | cwt-sudp-*            lo 127.0.0.1                         |
//!  |  sender :ephemeral --> :P  socket 0 | socket 1 | socket 2  |
//!  |                           (SO_REUSEPORT group + steer_udp) |
//!  +------------------------------------------------------------+
//! ```

#![allow(clippy::unwrap_used)]

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use corewire_ebpf::udp::{UdpSteerStats, UdpSteering};
use support::{in_netns, message, netns, receive_all, require_root, reuseport_socket, Rng};

const PER_WORKER: usize = 40;
const INITIATIONS: usize = 12;
const SHORT: usize = 5;

fn steer(workers: u32) {
    require_root();
    let ns = netns("sudp");
    in_netns(&ns, || {
        let first = reuseport_socket("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap();
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(reuseport_socket(addr));
        }
        let bits = u32::BITS - (workers - 1).leading_zeros();
        let mask = (1u32 << bits) - 1;
        let mut steering = UdpSteering::load(workers, mask).unwrap();
        steering.attach(&socks, &[] as &[UdpSocket]).unwrap();

        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rng = Rng(0x1234_5678_9abc_def1 ^ u64::from(workers));
        let mut expected_index = 0;
        // Data (type 4, index at 4), cookie replies (3, at 4) and
        // responses (2, at 8) for each worker.
        for w in 0..workers {
            for i in 0..PER_WORKER {
                let index = (rng.next() as u32 & !mask) | w;
                let m = match i % 3 {
                    0 => message(2, 8, index, 92),
                    1 => message(3, 4, index, 64),
                    _ => message(4, 4, index, 32 + 16 * (i % 4)),
                };
                sender.send_to(&m, addr).unwrap();
                expected_index += 1;
            }
        }
        // Indexes whose bits name no worker (only possible with 3).
        let forged = if workers == 3 { PER_WORKER } else { 0 };
        for _ in 0..forged {
            let index = (rng.next() as u32 & !mask) | 3;
            sender.send_to(&message(4, 4, index, 32), addr).unwrap();
        }
        for _ in 0..INITIATIONS {
            sender.send_to(&message(1, 4, 0, 148), addr).unwrap();
        }
        for _ in 0..SHORT {
            sender.send_to(&[4, 0, 0], addr).unwrap();
        }
        let total = expected_index + forged + INITIATIONS + SHORT;
        let got = receive_all(&socks, total, Duration::from_secs(5));
        assert_eq!(
            got.iter().map(Vec::len).sum::<usize>(),
            total,
            "every datagram arrives once"
        );

        let mut initiations_on = Vec::new();
        for (w, datagrams) in got.iter().enumerate() {
            for d in datagrams {
                let index_at = match d[0] {
                    2 => 8,
                    3 | 4 if d.len() >= 8 => 4,
                    1 => {
                        initiations_on.push(w);
                        continue;
                    }
                    _ => continue,
                };
                let index = u32::from_le_bytes(d[index_at..index_at + 4].try_into().unwrap());
                if index & mask < workers {
                    assert_eq!(
                        index & mask,
                        w as u32,
                        "index {index:#x} landed on socket {w}"
                    );
                }
            }
        }
        initiations_on.dedup();
        assert_eq!(
            initiations_on.len(),
            1,
            "one source's initiations on one socket"
        );

        let stats = steering.stats().unwrap();
        assert_eq!(
            stats,
            UdpSteerStats {
                by_index: expected_index as u64,
                by_source: INITIATIONS as u64,
                no_worker: forged as u64,
                no_socket: 0,
                unsteered: SHORT as u64,
            }
        );
    });
}

#[test]
fn steers_by_index_with_two_workers() {
    steer(2);
}

#[test]
fn steers_by_index_with_three_workers() {
    steer(3);
}
