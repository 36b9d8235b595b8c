//! Sockets follow the listen port: changing it (A -> B -> A -> random -> A)
//! leaves only the current port's sockets bound, and traffic flows after
//! each change.
//!
//! ```text
//! +---- namespace lp<pid><n> (hub) ----+   veth    +--- namespace lp<pid><n> (spoke) ---+
//! | corewire cw<..>  10.0.0.1/24       |-----------| corewire cw<..>  10.0.0.2/24       |
//! | 10.97.0.1/24, listen port changes  |           | 10.97.0.2/24, endpoint follows     |
//! +------------------------------------+           +------------------------------------+
//! ```
//!
//! Needs root and the tools scripts/test.sh installs; `COREWIRE_SKIP_NETNS=1`
//! skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::time::Duration;

use netns::{
    assert_ping, unique_ifname, wg, wg_set, wg_set_private_key, Keypair, Launch, Netns, Timed,
    Veth, WgImpl, WgStart,
};

/// The UDP ports bound in `ns` (IPv4 and IPv6), one entry per socket.
fn bound_ports(ns: &Netns) -> Vec<u16> {
    ns.exec_ok("ss", &["-Huan"])
        .lines()
        .filter_map(|l| {
            let local = l.split_whitespace().nth(3)?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn listen_port_changes_leave_only_the_current_port_bound() {
    let test = "listen_port_changes_leave_only_the_current_port_bound";
    if !netns::enabled(test) {
        return;
    }
    let timed = Timed::new(test);
    let (hub_ns, spoke_ns) = (Netns::new("lp"), Netns::new("lp"));
    let _veth = Veth::pair(&hub_ns, &spoke_ns, &["10.97.0.1/24"], &["10.97.0.2/24"]);
    let (hub_if, spoke_if) = (unique_ifname("cw"), unique_ifname("cw"));
    let (hub_key, spoke_key) = (Keypair::generate(), Keypair::generate());
    let _hub = WgImpl::Corewire.start_with(&hub_ns, &hub_if, Launch::Foreground);
    let _spoke = WgImpl::Corewire.start_with(&spoke_ns, &spoke_if, Launch::Foreground);
    wg_set_private_key(
        &hub_ns,
        &hub_if,
        &hub_key.private,
        &[
            "listen-port",
            "51820",
            "peer",
            &spoke_key.public,
            "allowed-ips",
            "10.0.0.2/32",
        ],
    );
    wg_set_private_key(
        &spoke_ns,
        &spoke_if,
        &spoke_key.private,
        &[
            "peer",
            &hub_key.public,
            "allowed-ips",
            "10.0.0.1/32",
            "endpoint",
            "10.97.0.1:51820",
        ],
    );
    for (ns, ifname, addr) in [
        (&hub_ns, &hub_if, "10.0.0.1/24"),
        (&spoke_ns, &spoke_if, "10.0.0.2/24"),
    ] {
        ns.ip_ok(&["addr", "add", addr, "dev", ifname]);
        ns.ip_ok(&["link", "set", "dev", ifname, "up"]);
    }
    let ping = Duration::from_secs(10);
    assert_ping(&spoke_ns, "10.0.0.1", 2, ping);
    for port in ["51830", "51820", "0", "51820"] {
        wg_set(&hub_ns, &hub_if, &["listen-port", port]);
        let current: u16 = wg(&hub_ns, &["show", &hub_if, "listen-port"])
            .trim()
            .parse()
            .unwrap();
        if port != "0" {
            assert_eq!(current.to_string(), port);
        }
        let ports = bound_ports(&hub_ns);
        assert!(
            !ports.is_empty() && ports.iter().all(|&p| p == current),
            "after listen-port {port}: bound {ports:?}, current {current}"
        );
        let endpoint = format!("10.97.0.1:{current}");
        wg_set(
            &spoke_ns,
            &spoke_if,
            &["peer", &hub_key.public, "endpoint", &endpoint],
        );
        assert_ping(&spoke_ns, "10.0.0.1", 2, ping);
        assert_ping(&hub_ns, "10.0.0.2", 2, ping);
    }
    eprintln!(
        "[netns] {test}: 51820 -> 51830 -> 51820 -> random -> 51820, only the current port bound; {:.1} s",
        timed.elapsed().as_secs_f64()
    );
}
