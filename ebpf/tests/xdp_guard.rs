//! `xdp_guard` in the kernel: attached to the receiving end of a veth pair
//! (native XDP: veth has it), guarding port 51820 there; a sender in the
//! other namespace sends valid messages and malformed ones. What the
//! socket behind the guard receives, and the guard's verdict counters,
//! must match what was sent, verdict by verdict.
//!
//! ```text
//!  +------------------+         veth         +---------------------------+
//!  | cwt-xsnd-*       |  10.79.0.1  10.79.0.2 | cwt-xrcv-*                |
//!  |  sender          |---------------------->| xdp_guard  -> UDP :51820  |
//!  +------------------+                       | live: {LIVE}              |
//!                                             +---------------------------+
//! ```

#![allow(clippy::unwrap_used)]

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use corewire_ebpf::xdp::{XdpAttachMode, XdpGuard};
use support::{in_netns, message, netns, receive_all, require_root, Veth};

const PORT: u16 = 51820;
const LIVE: u32 = 0x5eed_0001;
const UNKNOWN: u32 = 0x0bad_0002;

#[test]
fn drops_malformed_and_unknown_and_passes_the_rest() {
    require_root();
    let snd = netns("xsnd");
    let rcv = netns("xrcv");
    let veth = Veth::pair(&snd, &rcv, &["10.79.0.1/24"], &["10.79.0.2/24"]).unwrap();
    let iface = veth.name_b().to_owned();
    let (guard, sock) = in_netns(&rcv, || {
        let guard = XdpGuard::attach(&iface, PORT, 1024).unwrap();
        let sock = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
        sock.set_nonblocking(true).unwrap();
        (guard, sock)
    });
    assert_eq!(guard.mode(), XdpAttachMode::Native, "veth has native XDP");
    guard.live_indexes().unwrap().insert(LIVE).unwrap();

    let mut bad_reserved = message(4, 4, LIVE, 32);
    bad_reserved[2] = 1;
    let pass = [
        message(1, 4, 0, 148),    // initiation
        message(3, 4, 77, 64),    // cookie reply: passes whatever its index
        message(2, 8, LIVE, 92),  // response for a live index
        message(4, 4, LIVE, 32),  // keepalive
        message(4, 4, LIVE, 100), // data, padding not a multiple of 16 (MTU)
    ];
    let drop = [
        (message(2, 8, UNKNOWN, 92), "unknown"),
        (message(4, 4, UNKNOWN, 48), "unknown"),
        (message(9, 4, LIVE, 48), "type"),
        (bad_reserved, "type"),
        (message(1, 4, 0, 147), "length"),
        (message(3, 4, 0, 65), "length"),
        (message(2, 8, LIVE, 91), "length"),
        (message(4, 4, LIVE, 31), "length"), // truncated transport header
        (vec![4, 0], "length"),
        (Vec::new(), "length"),
    ];
    in_netns(&snd, || {
        let s = UdpSocket::bind("10.79.0.1:0").unwrap();
        for m in pass.iter().chain(drop.iter().map(|(m, _)| m)) {
            s.send_to(m, ("10.79.0.2", PORT)).unwrap();
        }
    });

    let got = receive_all(
        std::slice::from_ref(&sock),
        pass.len(),
        Duration::from_secs(5),
    );
    assert_eq!(
        got[0],
        pass.to_vec(),
        "exactly the valid messages arrive, in order"
    );

    let stats = guard.stats().unwrap();
    assert_eq!(stats.pass_initiation, 1);
    assert_eq!(stats.pass_cookie_reply, 1);
    assert_eq!(stats.pass_response, 1);
    assert_eq!(stats.pass_data, 2);
    let count = |what| drop.iter().filter(|(_, w)| *w == what).count() as u64;
    assert_eq!(stats.drop_unknown_index, count("unknown"));
    assert_eq!(stats.drop_bad_type, count("type"));
    assert_eq!(stats.drop_bad_length, count("length"));
    // ARP and the kernel's own IPv6 traffic pass without a look.
    assert!(stats.pass_other > 0, "{stats:?}");

    // An index withdrawn is dropped again.
    guard.live_indexes().unwrap().remove(LIVE);
    in_netns(&snd, || {
        let s = UdpSocket::bind("10.79.0.1:0").unwrap();
        s.send_to(&message(4, 4, LIVE, 32), ("10.79.0.2", PORT))
            .unwrap();
    });
    let got = receive_all(std::slice::from_ref(&sock), 1, Duration::from_millis(300));
    assert!(got[0].is_empty());
    assert_eq!(
        guard.stats().unwrap().drop_unknown_index,
        count("unknown") + 1
    );
}
