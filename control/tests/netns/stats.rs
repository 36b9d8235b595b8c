//! What the tests of the stats socket and the metrics endpoint share
//! (`metrics.rs`, `stats_at_scale.rs`): a hub and a spoke in two
//! namespaces, corewire started with extra options, scrapes parsed by a
//! real Prometheus text parser (`prometheus_client`, Debian's
//! python3-prometheus-client), and `corewire stats`.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use super::{
    run_ok, uapi_get, wait_until, wg_set_private_key, Json, Keypair, Netns, Proc, Veth, WgImpl,
    WgStart,
};

pub const PORT: u16 = 51820;
pub const METRICS_PORT: u16 = 9586;
/// The parser: Debian's python3 (where python3-prometheus-client lives),
/// whatever other python3 comes first on PATH.
pub const PYTHON: &str = "/usr/bin/python3";

/// Fetches the endpoint, parses it with prometheus_client, checks that
/// every family has HELP and a TYPE, and prints every sample as JSON
/// (`name{label="v",...}` -> value, labels sorted) plus each family's type.
pub const SCRAPE: &str = r#"
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

#[derive(Debug)]
pub struct Scrape {
    pub samples: HashMap<String, f64>,
    pub types: HashMap<String, String>,
}

impl Scrape {
    pub fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}"))
    }

    /// The sum of every sample of `name` whose labels include `with`.
    pub fn sum(&self, name: &str, with: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(with))
            .map(|(_, v)| v)
            .sum()
    }
}

pub fn scrape(ns: &Netns) -> Scrape {
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
        .expect("samples")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().expect("a number")))
        .collect();
    let types = v["types"]
        .as_object()
        .expect("types")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a type").to_owned()))
        .collect();
    Scrape { samples, types }
}

/// Starts corewire in the foreground on `ifname` in `ns` with `args`
/// (before the name) and `env`; returns once its UAPI socket answers.
pub fn start(ns: &Netns, ifname: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let bin = WgImpl::Corewire.binary();
    let mut all = vec!["-f", "--threads", "2"];
    all.extend_from_slice(args);
    all.push(ifname);
    let p = ns.spawn(&bin, &all, env);
    let up = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
        uapi_get(ifname).is_some()
    });
    assert!(up, "corewire {ifname} did not start: {}", p.log());
    p
}

/// The hub: corewire with `args` and `env` on `ifname`, its key, port
/// [`PORT`], `spoke` as its peer (10.0.0.2/32), tunnel 10.0.0.1/24 up.
pub fn hub_up(
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
pub fn spoke_up(ns: &Netns, ifname: &str, key: &Keypair, hub: &str) -> Proc {
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
pub fn namespaces() -> (Netns, Netns, Veth) {
    let (hub, spoke) = (Netns::new("mt"), Netns::new("mt"));
    let veth = Veth::pair(&hub, &spoke, &["10.97.0.1/24"], &["10.97.0.2/24"]);
    (hub, spoke, veth)
}

pub fn corewire_stats(args: &[&str]) -> String {
    let mut cmd = Command::new(WgImpl::Corewire.binary());
    cmd.arg("stats").args(args);
    run_ok(cmd, None)
}
