//! A concentrator's daily load through the real `wg` and the real daemon
//! (the debug build): 100,000 peers with one /32 each, loaded with ONE
//! `wg addconf`, listed, one removed, the file synced again. Correctness
//! only: the timings are printed (`cargo test -- --nocapture`), never
//! asserted; scripts/peer-scale.sh measures speed and memory on a release
//! build (docs/peer-scale.md).
//!
//! ```text
//!  +-------------------------------------------+
//!  | cwt-many-*                                |
//!  |  lo                                       |
//!  |  corewire IF (TUN, down), 100,000 peers   |
//!  |  /var/run/wireguard/IF.sock <-- wg        |
//!  +-------------------------------------------+
//! ```
//!
//! Public keys are 32 random bytes (a peer that never answers needs no
//! private key). No peer has an endpoint, so nothing is ever sent.
//!
//! Needs root and wireguard-tools; `COREWIRE_SKIP_NETNS=1` skips.

// Helpers outside `#[test]` functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use base64::Engine;
use netns::{run, unique_ifname, wg, Netns, TempDir, Timed, WgImpl, WgStart};

/// 100,000 peers take a few seconds per step even in a debug build.
const PEERS: usize = 100_000;
/// Bound on one bulk `wg` command (debug build, busy machine).
const BULK_TIMEOUT: Duration = Duration::from_secs(300);

/// `n` distinct random public keys, base64.
fn random_keys(n: usize) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut raw = vec![0u8; 32 * n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .unwrap();
    let mut seen = HashSet::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for chunk in raw.chunks_exact(32) {
        let key = b64.encode(chunk);
        // A repeat of 256 random bits will not happen; keep the count exact anyway.
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
    assert_eq!(keys.len(), n);
    keys
}

/// Peer `i`'s one allowed IP: 10.x.y.z/32, distinct for i < 2^24.
fn address(i: usize) -> String {
    format!("10.{}.{}.{}/32", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    pid.and_then(corewire_testkit::rss_kib)
}

/// `wg args...` in `ns` bounded by [`BULK_TIMEOUT`]; stdout, and how long it took.
fn wg_timed(ns: &Netns, args: &[&str]) -> (String, Duration) {
    let start = Instant::now();
    let out = run(ns.command("wg", args), None, BULK_TIMEOUT);
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "wg {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8(out.stdout).unwrap(), took)
}

/// Checks a `wg show IF dump`: the interface line, then exactly `expected`
/// (public key, allowed IP) in that order (corewire keeps insertion order),
/// no endpoint, no handshake.
fn check_dump(dump: &str, expected: &[(&str, String)]) {
    let mut lines = dump.lines();
    let head = lines.next().unwrap_or_default();
    assert_eq!(head.split('\t').count(), 4, "interface line {head:?}");
    let mut n = 0;
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let Some((key, ip)) = expected.get(i) else {
            panic!("more peers than the {} expected: {line:?}", expected.len());
        };
        assert_eq!(f.len(), 8, "peer line {i}: {line:?}");
        assert_eq!((f[0], f[3]), (*key, ip.as_str()), "peer line {i}: {line:?}");
        assert_eq!(
            (f[1], f[2], f[4], f[7]),
            ("(none)", "(none)", "0", "off"),
            "peer line {i}: {line:?}"
        );
        n += 1;
    }
    assert_eq!(n, expected.len(), "peer lines in the dump");
}

#[test]
fn hundred_thousand_peers_in_one_addconf() {
    const TEST: &str = "hundred_thousand_peers_in_one_addconf";
    if !netns::enabled(TEST) {
        return;
    }
    let _timed = Timed::new(TEST);
    let ns = Netns::new("many");
    let ifname = unique_ifname("cw");
    let mut dev = WgImpl::Corewire.start(&ns, &ifname);
    let dir = TempDir::new("many");

    let start = Instant::now();
    let keys = random_keys(PEERS);
    let mut conf = String::with_capacity(PEERS * 90);
    for (i, key) in keys.iter().enumerate() {
        conf.push_str(&format!(
            "[Peer]\nPublicKey = {key}\nAllowedIPs = {}\n\n",
            address(i)
        ));
    }
    let file = dir.write("peers.conf", &conf);
    let file = file.to_str().unwrap();
    eprintln!(
        "[netns] {TEST}: {PEERS} peers, {} bytes of conf generated in {:?}",
        conf.len(),
        start.elapsed()
    );
    let mut expected: Vec<(&str, String)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), address(i)))
        .collect();

    // ONE addconf with every peer.
    let rss_before = rss_kib(dev.pid());
    let (_, took) = wg_timed(&ns, &["addconf", &ifname, file]);
    let rss_after = rss_kib(dev.pid());
    eprintln!(
        "[netns] {TEST}: wg addconf of {PEERS} peers: {took:?}; daemon RSS {rss_before:?} -> \
         {rss_after:?} KiB (debug build)"
    );

    let (dump, took) = wg_timed(&ns, &["show", &ifname, "dump"]);
    eprintln!("[netns] {TEST}: wg show dump: {took:?}");
    assert_eq!(dump.lines().count(), PEERS + 1, "1 interface line + peers");
    check_dump(&dump, &expected);

    // Remove one peer from the middle.
    let victim = PEERS / 2;
    let (victim_key, victim_ip) = expected.remove(victim);
    let (_, took) = wg_timed(&ns, &["set", &ifname, "peer", victim_key, "remove"]);
    eprintln!("[netns] {TEST}: wg set peer .. remove: {took:?}");
    let (dump, _) = wg_timed(&ns, &["show", &ifname, "dump"]);
    assert_eq!(
        dump.lines().count(),
        PEERS,
        "1 interface line + 99,999 peers"
    );
    assert!(
        !dump.contains(victim_key),
        "the removed peer is still listed"
    );
    check_dump(&dump, &expected);

    // Still responsive to small requests.
    let start = Instant::now();
    let port = wg(&ns, &["show", &ifname, "listen-port"]);
    eprintln!(
        "[netns] {TEST}: wg show listen-port: {:?} ({})",
        start.elapsed(),
        port.trim()
    );
    assert_ne!(port.trim().parse::<u16>().unwrap(), 0);

    // The next day: the whole file again with syncconf. The 99,999 peers
    // still there are unchanged and keep their places; the removed one comes
    // back at the end with its address.
    let (_, took) = wg_timed(&ns, &["syncconf", &ifname, file]);
    eprintln!("[netns] {TEST}: wg syncconf of the same {PEERS} peers: {took:?}");
    expected.push((victim_key, victim_ip));
    let (dump, _) = wg_timed(&ns, &["show", &ifname, "dump"]);
    assert_eq!(dump.lines().count(), PEERS + 1);
    check_dump(&dump, &expected);
    assert!(dev.is_running(), "the daemon died");
    eprintln!(
        "[netns] {TEST}: daemon RSS at the end {:?} KiB",
        rss_kib(dev.pid())
    );
}
