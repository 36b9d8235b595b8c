//! Live counters of a running daemon, read from outside: the Prometheus
//! endpoint scraped during traffic and parsed by a real Prometheus text
//! parser (the `prometheus_client` Python package, Debian's
//! python3-prometheus-client, installed by scripts/test.sh), `corewire
//! stats` and its `--json`, the event log of failed handshakes (read from
//! the daemon's stderr after it detached, with LOG_LEVEL set), and what
//! reading every peer's stats at 100,000 peers does to a tunnel's ping
//! (printed, never asserted).
//!
//! ```text
//!  +------------- namespace mt<..> (hub) ---------+      +------ namespace mt<..> (spoke) ------+
//!  | corewire HUB, 2 workers, UDP 51820            |      | corewire SPOKE 10.0.0.2              |
//!  | tunnel 10.0.0.1/24                            |      |   (plus, in the log test, two        |
//!  | --metrics 127.0.0.1:9586 (the hub's own lo)   | veth |   spokes the hub refuses)            |
//!  | /var/run/wireguard/HUB.stats <- corewire stats|------| 10.97.0.2/24; crafted datagrams      |
//!  | 10.97.0.1/24                                  |      |   from python3 to 10.97.0.1:51820    |
//!  +-----------------------------------------------+      +--------------------------------------+
//! ```
//!
//! Needs root and the tools scripts/test.sh installs;
//! `COREWIRE_SKIP_NETNS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns::{
    ping, run, run_ok, unique_ifname, wait_until, wg, wg_set_private_key, wg_show_dump, Json,
    Keypair, Netns, Proc, TempDir, Timed, Veth, WgDevice, WgImpl, WgStart,
};

const PORT: u16 = 51820;
const METRICS_PORT: u16 = 9586;
/// The parser: Debian's python3 (where python3-prometheus-client lives),
/// whatever other python3 comes first on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// Fetches the endpoint, parses it with prometheus_client, checks that
/// every family has HELP and a TYPE, and prints every sample as JSON
/// (`name{label="v",...}` -> value, labels sorted) plus each family's type.
const SCRAPE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
body = urllib.request.urlopen(sys.argv[1], timeout=20).read().decode()
samples, types, bad = {}, {}, []
for fam in text_string_to_metric_families(body):
    if not fam.documentation or fam.type not in ("counter", "gauge", "histogram"):
        bad.append((fam.name, fam.type, fam.documentation))
    types[fam.name] = fam.type
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        samples["%s{%s}" % (s.name, labels)] = s.value
        types.setdefault(s.name, fam.type)
        types["%s{%s}" % (s.name, labels)] = fam.type
if bad:
    sys.exit("families without HELP or TYPE: %r" % bad)
print(json.dumps({"samples": samples, "types": types}))
"#;

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

#[derive(Debug)]
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}"))
    }

    /// The sum of every sample of `name` whose labels include `with`.
    fn sum(&self, name: &str, with: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(with))
            .map(|(_, v)| v)
            .sum()
    }
}

fn scrape(ns: &Netns) -> Scrape {
    let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
    let out = ns.exec(PYTHON, &["-c", SCRAPE, &url]);
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Json = serde_json::from_slice(&out.stdout).expect("scraper JSON");
    let samples = v["samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let types = v["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    Scrape { samples, types }
}

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

/// Starts corewire in the foreground on `ifname` in `ns` with `args`
/// (before the name) and `env`; returns once its UAPI socket answers.
fn start(ns: &Netns, ifname: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let bin = WgImpl::Corewire.binary();
    let mut all = vec!["-f", "--threads", "2"];
    all.extend_from_slice(args);
    all.push(ifname);
    let p = ns.spawn(&bin, &all, env);
    let up = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
        netns::uapi_get(ifname).is_some()
    });
    assert!(up, "corewire {ifname} did not start: {}", p.log());
    p
}

/// The hub: corewire with `args` and `env` on `ifname`, its key, port
/// [`PORT`], `spoke` as its peer (10.0.0.2/32), tunnel 10.0.0.1/24 up.
fn hub_up(
    ns: &Netns,
    ifname: &str,
    key: &Keypair,
    spoke: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let p = start(ns, ifname, args, env);
    let port = PORT.to_string();
    let peer = [
        "listen-port",
        &port,
        "peer",
        spoke,
        "allowed-ips",
        "10.0.0.2/32",
    ];
    wg_set_private_key(ns, ifname, &key.private, &peer);
    ns.ip_ok(&["addr", "add", "10.0.0.1/24", "dev", ifname]);
    ns.ip_ok(&["link", "set", ifname, "up"]);
    p
}

/// A spoke: corewire on `ifname`, its key, the hub (`hub`) as its peer at
/// 10.97.0.1:[`PORT`], tunnel 10.0.0.2/24 up.
fn spoke_up(ns: &Netns, ifname: &str, key: &Keypair, hub: &str) -> Proc {
    let p = start(ns, ifname, &[], &[]);
    let endpoint = format!("10.97.0.1:{PORT}");
    let peer = [
        "peer",
        hub,
        "endpoint",
        &endpoint,
        "allowed-ips",
        "10.0.0.0/24",
    ];
    wg_set_private_key(ns, ifname, &key.private, &peer);
    ns.ip_ok(&["addr", "add", "10.0.0.2/24", "dev", ifname]);
    ns.ip_ok(&["link", "set", ifname, "up"]);
    p
}

/// The hub's and the spoke's namespaces and the veth between them (hub
/// 10.97.0.1, spoke 10.97.0.2); drop the veth first.
fn namespaces() -> (Netns, Netns, Veth) {
    let (hub, spoke) = (Netns::new("mt"), Netns::new("mt"));
    let veth = Veth::pair(&hub, &spoke, &["10.97.0.1/24"], &["10.97.0.2/24"]);
    (hub, spoke, veth)
}

fn corewire_stats(args: &[&str]) -> String {
    let mut cmd = Command::new(WgImpl::Corewire.binary());
    cmd.arg("stats").args(args);
    run_ok(cmd, None)
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

/// Per-packet round-trip times from `ping` output, sorted (ms).
fn rtts(output: &str) -> Vec<f64> {
    let mut v: Vec<f64> = output
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Scrapes the endpoint in a loop until argv[2] seconds have passed, then
/// prints how many scrapes it made.
const SCRAPE_LOOP: &str = r#"
import sys, time, urllib.request
end, n = time.time() + float(sys.argv[2]), 0
while time.time() < end:
    urllib.request.urlopen(sys.argv[1], timeout=20).read()
    n += 1
print(n, flush=True)
"#;

/// `ping` every 10 ms through the tunnel, 800 times: sorted RTTs (ms).
fn ping_rtts(ns: &Netns) -> Vec<f64> {
    let args = ["-n", "-i", "0.01", "-c", "800", "-W", "1", "10.0.0.1"];
    let out = run(ns.command("ping", &args), None, Duration::from_secs(60));
    rtts(&String::from_utf8_lossy(&out.stdout))
}

fn summary(rtts: &[f64]) -> String {
    format!(
        "p50 {:.3} ms, p99 {:.3} ms ({} replies)",
        percentile(rtts, 0.5),
        percentile(rtts, 0.99),
        rtts.len()
    )
}

/// A wg-quick style file of `n` peers with random keys, one /32 each in
/// 10.128.0.0/9.
fn many_peers(n: usize) -> String {
    use base64::Engine;
    let mut raw = vec![0u8; 32 * n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut raw).unwrap();
    let mut conf = String::with_capacity(n * 120);
    for (i, k) in raw.chunks_exact(32).enumerate() {
        let key = base64::engine::general_purpose::STANDARD.encode(k);
        let ip = format!("10.{}.{}.{}", 128 + (i >> 16), (i >> 8) & 255, i & 255);
        conf.push_str(&format!(
            "[Peer]\nPublicKey = {key}\nAllowedIPs = {ip}/32\n"
        ));
    }
    conf
}

/// 100,000 peers on the hub (release or debug build, whichever the test
/// runs), a ping through the tunnel alone, then beside Prometheus scrapes
/// of the 50 busiest peers in a loop, then beside `corewire stats --json
/// --peers all` in a loop: the figures are printed (`--nocapture`), never
/// asserted.
#[test]
fn reading_stats_at_100k_peers_beside_a_pinging_tunnel() {
    let test = "reading_stats_at_100k_peers_beside_a_pinging_tunnel";
    if !netns::enabled(test) {
        return;
    }
    let _timed = Timed::new(test);
    let (hub_ns, spoke_ns, _veth) = namespaces();
    let (hub_if, spoke_if) = (unique_ifname("cw"), unique_ifname("cw"));
    let (hub_key, spoke_key) = (Keypair::generate(), Keypair::generate());
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let top = ["--metrics", &metrics, "--metrics-peers", "50"];
    let _hub = hub_up(&hub_ns, &hub_if, &hub_key, &spoke_key.public, &top, &[]);
    let _spoke = spoke_up(&spoke_ns, &spoke_if, &spoke_key, &hub_key.public);
    let dir = TempDir::new("mt");
    let file = dir.write("peers.conf", &many_peers(100_000));
    let file = file.display().to_string();
    let add = hub_ns.command("wg", &["addconf", &hub_if, &file]);
    let out = run(add, None, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "wg addconf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ping(&spoke_ns, "10.0.0.1", 3, Duration::from_secs(10)).all_received());

    // Three phases, twice over (A B C A B C), so that what else the
    // machine does at one moment is not taken for the readers' effect.
    let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
    let mut lines = Vec::new();
    for round in 1..=2 {
        let alone = ping_rtts(&spoke_ns);
        lines.push(format!("round {round}, alone: {}", summary(&alone)));

        let scraper = hub_ns.spawn(PYTHON, &["-c", SCRAPE_LOOP, &url, "8"], &[]);
        let scraped = ping_rtts(&spoke_ns);
        let scrapes = netns::finish(scraper, "the scrape loop", Duration::from_secs(60));
        lines.push(format!(
            "round {round}, beside {scrapes} Prometheus scrapes (top 50 peers): {}",
            summary(&scraped)
        ));

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (stop, hub_if) = (stop.clone(), hub_if.clone());
            std::thread::spawn(move || {
                let (mut reads, mut took) = (0u32, Duration::ZERO);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let t = Instant::now();
                    let out = corewire_stats(&["--json", "--peers", "all", &hub_if]);
                    assert!(out.len() > 100_000 * 100, "every peer in the answer");
                    took += t.elapsed();
                    reads += 1;
                }
                (reads, took)
            })
        };
        let read_all = ping_rtts(&spoke_ns);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (reads, took) = reader.join().unwrap();
        lines.push(format!(
            "round {round}, beside `corewire stats --json --peers all` in a loop ({reads} reads, {:.0} ms each): {}",
            took.as_secs_f64() * 1000.0 / f64::from(reads.max(1)),
            summary(&read_all)
        ));
    }
    for l in &lines {
        println!("[100k peers] ping RTT {l}");
    }
    let s = scrape(&hub_ns);
    assert_eq!(s.get("corewire_peers{}"), 100_001.0);
    assert_eq!(s.get("corewire_metrics_peers_exported{}"), 50.0);
}
