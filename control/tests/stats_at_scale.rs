//! What reading stats costs a tunnel at 100,000 peers: the hub carries
//! 100,000 peers and a spoke pings through it every 10 ms, alone, beside
//! Prometheus scrapes of the 50 busiest peers, and beside `corewire stats
//! --json --peers all` back to back. The figures are printed
//! (`cargo test --release -p corewire --test stats_at_scale -- --nocapture`),
//! never asserted: timings on a shared machine are noise
//! (docs/operations.md has a run).
//!
//! ```text
//!  +---- namespace mt<..> (hub) ----------+      +---- namespace mt<..> (spoke) ----+
//!  | corewire HUB, 2 workers, 100,001     | veth | corewire SPOKE 10.0.0.2          |
//!  | peers, tunnel 10.0.0.1, --metrics    |------| ping -i 0.01 10.0.0.1            |
//!  | 10.97.0.1/24                         |      | 10.97.0.2/24                     |
//!  +--------------------------------------+      +----------------------------------+
//! ```
//!
//! Needs root and the tools scripts/test.sh installs;
//! `COREWIRE_SKIP_NETNS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::time::{Duration, Instant};

use netns::stats::{corewire_stats, hub_up, namespaces, scrape, spoke_up, METRICS_PORT, PYTHON};
use netns::{ping, run, unique_ifname, Keypair, Netns, TempDir, Timed};

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
