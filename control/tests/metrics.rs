//! Live counters of a running daemon, read from outside: the Prometheus
//! endpoint scraped during traffic and parsed by a real Prometheus text
//! parser (the `prometheus_client` Python package, Debian's
//! python3-prometheus-client, installed by scripts/test.sh), `corewire
//! stats` and its `--json`, the event log of failed handshakes (read from
//! the daemon's stderr after it detached, with LOG_LEVEL set). What
//! reading stats at 100,000 peers does to a tunnel's ping is measured in
//! `stats_at_scale.rs`; the set-up both share is in `netns/stats.rs`.
//!
//! ```text
//!  +------------- namespace mt<..> (hub) ---------+      +------ namespace mt<..> (spoke) ------+
//!  | corewire HUB, 2 workers, UDP 51820            |      | corewire SPOKE 10.0.0.2              |
//!  | tunnel 10.0.0.1/24                            |      |   (plus, in the log test, two        |
//!  | --metrics 127.0.0.1:9586 (the hub's own lo)   | veth |   spokes the hub refuses)            |
//!  | /var/run/wireguard/HUB.stats <- corewire stats|------| 10.97.0.2/24; crafted datagrams      |
//!  | 10.97.0.1/24 [--xdp on this veth end]         |      |   from python3 to 10.97.0.1:51820    |
//!  +-----------------------------------------------+      +--------------------------------------+
//! ```
//!
//! Needs root and the tools scripts/test.sh installs;
//! `COREWIRE_SKIP_NETNS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::process::Stdio;
use std::time::Duration;

use netns::stats::{
    corewire_stats, hub_up, namespaces, scrape, spoke_up, start, Scrape, METRICS_PORT, PORT, PYTHON,
};
use netns::{
    ping, unique_ifname, wait_until, wg, wg_set_private_key, wg_show_dump, Json, Keypair, TempDir,
    Timed, WgDevice, WgImpl, WgStart,
};

/// Sends crafted bad datagrams to argv[1]:argv[2]: argv[3] initiations of
/// random bytes (bad mac1), argv[4] 10-byte junk datagrams (malformed),
/// argv[5] transport messages for random receiver indexes (unknown index).
const CRAFT: &str = r#"
import os, socket, struct, sys, time
dst = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(struct.pack("<I", 1) + os.urandom(144), dst); time.sleep(0.002)
for _ in range(int(sys.argv[4])):
    s.sendto(b"\x09" + os.urandom(9), dst); time.sleep(0.002)
for _ in range(int(sys.argv[5])):
    s.sendto(struct.pack("<I", 4) + os.urandom(28), dst); time.sleep(0.002)
print("sent", flush=True)
"#;

/// Every counter sample of `before` is still there in `after`, not smaller.
fn counters_only_grow(before: &Scrape, after: &Scrape) {
    for (k, v) in &before.samples {
        if before.types.get(k).map(String::as_str) != Some("counter") {
            continue;
        }
        let now = after
            .samples
            .get(k)
            .unwrap_or_else(|| panic!("{k} vanished"));
        assert!(now >= v, "{k} went from {v} to {now}");
    }
}

#[test]
fn metrics_follow_traffic_drops_and_handshakes() {
    let test = "metrics_follow_traffic_drops_and_handshakes";
    if !netns::enabled(test) {
        return;
    }
    let _timed = Timed::new(test);
    let (hub_ns, spoke_ns, _veth) = namespaces();
    let (hub_if, spoke_if) = (unique_ifname("cw"), unique_ifname("cw"));
    let (hub_key, spoke_key) = (Keypair::generate(), Keypair::generate());
    let dir = TempDir::new("mt");
    let names = dir.write(
        "hub.conf",
        &format!(
            "[Interface]\nPrivateKey = x\n\n[Peer]\n# Name = spoke-one\nPublicKey = {}\nAllowedIPs = 10.0.0.2/32\n",
            spoke_key.public
        ),
    );
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let names = names.display().to_string();
    let _hub = hub_up(
        &hub_ns,
        &hub_if,
        &hub_key,
        &spoke_key.public,
        &["--metrics", &metrics, "--metrics-peers", "all"],
        &[("COREWIRE_PEER_NAMES", &names)],
    );
    let port = PORT.to_string();
    let first = spoke_up(&spoke_ns, &spoke_if, &spoke_key, &hub_key.public);

    let s0 = scrape(&hub_ns);
    assert_eq!(s0.get("corewire_workers{}"), 2.0);
    assert_eq!(s0.get("corewire_peers{}"), 1.0);
    assert_eq!(s0.sum("corewire_handshakes_completed_total", ""), 0.0);

    // Handshake 1 (the spoke initiates), then traffic scraped while it flows.
    let stats = ping(&spoke_ns, "10.0.0.1", 3, Duration::from_secs(10));
    assert!(stats.all_received(), "{}", stats.output);
    let flood = spoke_ns.spawn(
        "ping",
        &["-q", "-i", "0.01", "-c", "300", "-s", "1000", "10.0.0.1"],
        &[],
    );
    let mut last = scrape(&hub_ns);
    counters_only_grow(&s0, &last);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let s = scrape(&hub_ns);
        counters_only_grow(&last, &s);
        last = s;
    }
    assert!(netns::finish(flood, "the ping flood", Duration::from_secs(30)).contains("rtt"));

    // Byte counters: per peer as `wg show dump` has them, once traffic stopped.
    std::thread::sleep(Duration::from_millis(300));
    let s1 = scrape(&hub_ns);
    counters_only_grow(&last, &s1);
    let dump = wg_show_dump(&hub_ns, &hub_if);
    let peer = dump.peer(&spoke_key.public).expect("spoke in wg show");
    let labels = format!("{{name=\"spoke-one\",peer=\"{}\"}}", spoke_key.public);
    assert_eq!(
        s1.get(&format!("corewire_peer_received_bytes_total{labels}")),
        peer.rx_bytes as f64
    );
    assert_eq!(
        s1.get(&format!("corewire_peer_sent_bytes_total{labels}")),
        peer.tx_bytes as f64
    );
    assert_eq!(
        s1.get(&format!("corewire_peer_last_handshake_seconds{labels}")),
        peer.latest_handshake as f64
    );
    assert!(s1.sum("corewire_worker_udp_received_datagrams_total", "") >= 303.0);
    assert!(s1.sum("corewire_worker_tun_writes_total", "") >= 1.0);

    // Crafted bad datagrams: each reason grows by exactly what was sent.
    let (bad_mac, junk, unknown_index) = (40u32, 30u32, 20u32);
    let crafted = spoke_ns.spawn(
        PYTHON,
        &[
            "-c",
            CRAFT,
            "10.97.0.1",
            &port,
            &bad_mac.to_string(),
            &junk.to_string(),
            &unknown_index.to_string(),
        ],
        &[],
    );
    netns::finish(crafted, "the crafted datagrams", Duration::from_secs(30));
    let grown = |s: &Scrape, reason: &str| {
        s.sum(
            "corewire_worker_dropped_total",
            &format!("reason=\"{reason}\""),
        ) - s1.sum(
            "corewire_worker_dropped_total",
            &format!("reason=\"{reason}\""),
        )
    };
    let all_in = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let s = scrape(&hub_ns);
        grown(&s, "bad_mac1") + grown(&s, "malformed") + grown(&s, "unknown_index")
            >= f64::from(bad_mac + junk + unknown_index)
    });
    assert!(all_in, "the crafted datagrams were not all counted");
    let s2 = scrape(&hub_ns);
    counters_only_grow(&s1, &s2);
    assert_eq!(grown(&s2, "bad_mac1"), f64::from(bad_mac));
    assert_eq!(grown(&s2, "malformed"), f64::from(junk));
    assert_eq!(grown(&s2, "unknown_index"), f64::from(unknown_index));
    let failures = |s: &Scrape| s.get("corewire_handshake_failures_total{cause=\"bad_mac1\"}");
    assert_eq!(failures(&s2) - failures(&s1), f64::from(bad_mac));
    let received = |s: &Scrape| s.get("corewire_handshakes_received_total{type=\"initiation\"}");
    assert_eq!(received(&s2) - received(&s1), f64::from(bad_mac));

    // Handshake 2: a new spoke daemon (same key, no session) initiates again.
    drop(first);
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        !spoke_ns.link_exists(&spoke_if)
    });
    assert!(gone);
    let spoke2_if = unique_ifname("cw");
    let _second = spoke_up(&spoke_ns, &spoke2_if, &spoke_key, &hub_key.public);
    let stats = ping(&spoke_ns, "10.0.0.1", 3, Duration::from_secs(10));
    assert!(stats.all_received(), "{}", stats.output);
    let s3 = scrape(&hub_ns);
    counters_only_grow(&s2, &s3);
    let completed = |s: &Scrape, role: &str| {
        s.get(&format!(
            "corewire_handshakes_completed_total{{role=\"{role}\"}}"
        ))
    };
    assert_eq!(
        completed(&s3, "responder"),
        2.0,
        "two handshakes, the spoke initiated both"
    );
    assert_eq!(completed(&s3, "initiator"), 0.0);
    assert_eq!(received(&s3) - received(&s2), 1.0);
    assert_eq!(
        s3.get("corewire_handshakes_sent_total{type=\"response\"}"),
        2.0
    );
    assert_eq!(
        s3.sum("corewire_handshake_failures_total", "unknown_key"),
        0.0
    );

    // corewire stats, as JSON and as tables, against the running daemon.
    let json: Json =
        serde_json::from_str(&corewire_stats(&["--json", "--peers", "all", &hub_if])).unwrap();
    let counter = |name: &str| {
        json["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no counter {name}"))["total"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(counter("completed_responder"), 2);
    assert!(counter("failed_bad_mac1") >= u64::from(bad_mac));
    assert_eq!(json["workers"], 2);
    assert_eq!(json["peers"][0]["name"], "spoke-one");
    assert_eq!(json["peers"][0]["public_key"], spoke_key.public.as_str());
    let table = corewire_stats(&[&hub_if]);
    assert!(
        table.starts_with(&format!("interface: {hub_if}")),
        "{table}"
    );
    assert!(
        table.contains("handshakes_completed_total {role=responder}"),
        "{table}"
    );
    assert!(table.contains("spoke-one"), "{table}");
    println!("{table}");
}

/// The sum of the `xdp_verdicts` samples with `verdict`.
fn verdict(s: &Scrape, verdict: &str) -> f64 {
    s.get(&format!(
        "corewire_xdp_verdicts_total{{verdict=\"{verdict}\"}}"
    ))
}

#[test]
fn steering_counters_follow_traffic_and_xdp_drops() {
    let test = "steering_counters_follow_traffic_and_xdp_drops";
    if !netns::enabled(test) {
        return;
    }
    let _timed = Timed::new(test);
    let (hub_ns, spoke_ns, veth) = namespaces();
    let (hub_if, spoke_if) = (unique_ifname("cw"), unique_ifname("cw"));
    let (hub_key, spoke_key) = (Keypair::generate(), Keypair::generate());
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    // Two workers (the tests' default), eBPF steering (the default).
    let _hub = hub_up(
        &hub_ns,
        &hub_if,
        &hub_key,
        &spoke_key.public,
        &["--metrics", &metrics, "--xdp", veth.name_a()],
        &[],
    );
    let _spoke = spoke_up(&spoke_ns, &spoke_if, &spoke_key, &hub_key.public);

    let s0 = scrape(&hub_ns);
    let info = s0
        .samples
        .keys()
        .find(|k| k.starts_with("corewire_steering_info{"))
        .expect("corewire_steering_info")
        .clone();
    assert!(
        info.contains("tun=\"ebpf\"")
            && info.contains("udp=\"ebpf\"")
            && !info.contains("xdp=\"off\""),
        "{info}"
    );
    assert_eq!(s0.get(&info), 1.0);

    // Traffic: every echo request is a transport datagram steer_udp puts
    // on its index's worker, the guard passes as live, and every reply a
    // TUN packet steer_tun puts on its owner's queue.
    let pings = 200u32;
    let stats = ping(&spoke_ns, "10.0.0.1", 3, Duration::from_secs(10));
    assert!(stats.all_received(), "{}", stats.output);
    let s1 = scrape(&hub_ns);
    counters_only_grow(&s0, &s1);
    let flood = spoke_ns.spawn(
        "ping",
        &["-q", "-i", "0.005", "-c", &pings.to_string(), "10.0.0.1"],
        &[],
    );
    assert!(netns::finish(flood, "the ping flood", Duration::from_secs(30)).contains("rtt"));
    let tun_hits = |s: &Scrape| s.get("corewire_tun_steering_total{result=\"hit\"}");
    let udp_by_index = |s: &Scrape| s.get("corewire_udp_steered_total{by=\"index\"}");
    let mut s2 = scrape(&hub_ns);
    wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        s2 = scrape(&hub_ns);
        tun_hits(&s2) - tun_hits(&s1) >= f64::from(pings)
    });
    counters_only_grow(&s1, &s2);
    assert!(
        udp_by_index(&s2) - udp_by_index(&s1) >= f64::from(pings),
        "{s2:?}"
    );
    assert!(tun_hits(&s2) - tun_hits(&s1) >= f64::from(pings), "{s2:?}");
    assert!(verdict(&s2, "pass_data") - verdict(&s1, "pass_data") >= f64::from(pings));
    assert_eq!(
        s2.sum("corewire_udp_steering_fallbacks_total", "")
            - s1.sum("corewire_udp_steering_fallbacks_total", ""),
        0.0,
        "every datagram of the tunnel carries a live index"
    );

    // Crafted datagrams: the guard drops the junk (bad type) and the
    // unknown-index transport messages, exactly as many as were sent, before
    // any worker sees them; the initiations (bad mac1) pass to the workers.
    let (bad_mac, junk, unknown_index) = (10u32, 30u32, 20u32);
    let port = PORT.to_string();
    let crafted = spoke_ns.spawn(
        PYTHON,
        &[
            "-c",
            CRAFT,
            "10.97.0.1",
            &port,
            &bad_mac.to_string(),
            &junk.to_string(),
            &unknown_index.to_string(),
        ],
        &[],
    );
    netns::finish(crafted, "the crafted datagrams", Duration::from_secs(30));
    let bad_mac1 = |s: &Scrape| s.sum("corewire_worker_dropped_total", "reason=\"bad_mac1\"");
    let mut s3 = scrape(&hub_ns);
    let all_in = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        s3 = scrape(&hub_ns);
        bad_mac1(&s3) - bad_mac1(&s2) >= f64::from(bad_mac)
    });
    assert!(all_in, "the crafted initiations were not all counted");
    counters_only_grow(&s2, &s3);
    let grown = |v: &str| verdict(&s3, v) - verdict(&s2, v);
    assert_eq!(grown("drop_bad_type"), f64::from(junk));
    assert_eq!(grown("drop_unknown_index"), f64::from(unknown_index));
    assert_eq!(grown("drop_bad_length"), 0.0);
    assert_eq!(grown("pass_initiation"), f64::from(bad_mac));
    assert_eq!(bad_mac1(&s3) - bad_mac1(&s2), f64::from(bad_mac));
    for reason in ["malformed", "unknown_index"] {
        let with = format!("reason=\"{reason}\"");
        assert_eq!(
            s3.sum("corewire_worker_dropped_total", &with)
                - s2.sum("corewire_worker_dropped_total", &with),
            0.0,
            "the guard dropped them: no worker saw a {reason} datagram"
        );
    }

    // corewire stats: the same figures as JSON and in the table.
    let json: Json = serde_json::from_str(&corewire_stats(&["--json", &hub_if])).unwrap();
    let steering = &json["steering"];
    assert_eq!(steering["udp"], "ebpf");
    assert_eq!(steering["tun"], "ebpf");
    assert_ne!(steering["xdp"], "off");
    let value = |name: &str| {
        steering["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no steering counter {name}"))["value"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} has no value"))
    };
    assert_eq!(
        value("xdp_drop_bad_type") as f64,
        verdict(&s3, "drop_bad_type")
    );
    assert_eq!(
        value("xdp_drop_unknown_index") as f64,
        verdict(&s3, "drop_unknown_index")
    );
    assert!(value("tun_hits") as f64 >= tun_hits(&s3));
    assert!(value("udp_by_index") as f64 >= udp_by_index(&s3));
    let table = corewire_stats(&[&hub_if]);
    assert!(
        table.contains("steering: datagrams ebpf, TUN packets ebpf"),
        "{table}"
    );
    assert!(
        table.contains("xdp_verdicts_total {verdict=drop_bad_type}"),
        "{table}"
    );
    println!("{table}");
}

#[test]
fn failed_handshakes_are_logged_with_cause_and_source_after_detaching() {
    let test = "failed_handshakes_are_logged_with_cause_and_source_after_detaching";
    if !netns::enabled(test) {
        return;
    }
    let _timed = Timed::new(test);
    let (hub_ns, spoke_ns, _veth) = namespaces();
    let (hub_if, stranger_if, confused_if) = (
        unique_ifname("cw"),
        unique_ifname("cw"),
        unique_ifname("cw"),
    );
    let (hub_key, stranger_key, confused_key, other) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let dir = TempDir::new("mt");
    let log = dir.path().join("hub.log");

    // The hub daemonizes as under wg-quick, LOG_LEVEL set: its stderr (a
    // file here, the journal under wg-quick@) must keep the log.
    let mut cmd = hub_ns.command(WgImpl::Corewire.binary(), &[&hub_if]);
    let file = std::fs::File::create(&log).unwrap();
    cmd.env("LOG_LEVEL", "verbose")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let mut launcher = cmd.spawn().expect("launch corewire");
    let mut status = None;
    wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
        status = launcher.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = launcher.kill();
        let _ = launcher.wait();
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "launcher failed ({status:?}): {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _hub = WgDevice::adopt(WgImpl::Corewire, &hub_ns, &hub_if);
    let port = PORT.to_string();
    wg_set_private_key(&hub_ns, &hub_if, &hub_key.private, &["listen-port", &port]);

    // One spoke the hub does not know (unknown key), one that has the
    // hub's public key wrong (its mac1 is for another key).
    let endpoint = format!("10.97.0.1:{PORT}");
    let mut spokes = Vec::new();
    for (ifname, key, peer, listen) in [
        (&stranger_if, &stranger_key, &hub_key.public, "41001"),
        (&confused_if, &confused_key, &other.public, "41002"),
    ] {
        spokes.push(start(&spoke_ns, ifname, &[], &[]));
        wg_set_private_key(
            &spoke_ns,
            ifname,
            &key.private,
            &[
                "listen-port",
                listen,
                "peer",
                peer,
                "endpoint",
                &endpoint,
                "allowed-ips",
                "10.0.0.0/24",
                "persistent-keepalive",
                "1",
            ],
        );
    }
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let logged = |cause: &str, from: &str| {
        text().lines().any(|l| {
            l.contains("handshake failed")
                && l.contains(cause)
                && l.contains(&format!("from={from}"))
        })
    };
    let both = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        logged("unknown_key", "10.97.0.2:41001") && logged("bad_mac1", "10.97.0.2:41002")
    });
    assert!(both, "no log lines for both failed handshakes:\n{}", text());
    let log_text = text();
    assert!(
        !log_text.contains(&hub_key.private),
        "a private key was logged"
    );
    for line in log_text
        .lines()
        .filter(|l| l.contains("handshake failed"))
        .take(2)
    {
        println!("{line}");
    }
    drop(spokes);
    let _ = wg(&hub_ns, &["show", &hub_if]);
}
