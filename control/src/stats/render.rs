//! A [`Report`] as text: Prometheus text exposition format 0.0.4 (every
//! family with `# HELP` and `# TYPE`) and JSON (for `corewire stats` and
//! machines).

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use corewire_dataplane::engine::board::Gauge;
use corewire_dataplane::engine::counters::{
    CounterInfo, Counters, DropReason, Scope, BATCH_BUCKETS,
};
use corewire_dataplane::engine::steer::{SteeringStats, STEERING_COUNTERS};
use serde_json::{json, Value};

use super::report::{PeerRow, Report};

/// The media type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{a="x",b="y"}`, or nothing without labels.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn value(v: u64, scale: u64) -> String {
    if scale == 1 {
        v.to_string()
    } else {
        format!("{}", v as f64 / scale as f64)
    }
}

/// `infos` grouped by family (each with its index in `infos`), in order.
fn families<'a>(
    infos: impl Iterator<Item = &'a CounterInfo>,
) -> Vec<Vec<(usize, &'a CounterInfo)>> {
    let mut out: Vec<Vec<(usize, &CounterInfo)>> = Vec::new();
    for (i, info) in infos.enumerate() {
        match out.iter_mut().find(|f| f[0].1.family == info.family) {
            Some(f) => f.push((i, info)),
            None => out.push(vec![(i, info)]),
        }
    }
    out
}

/// Which steering runs, and the counters of the programs that run (a
/// program that does not run has no series).
fn steering(out: &mut String, s: &SteeringStats) {
    header(
        out,
        "corewire_steering_info",
        "gauge",
        "Always 1; labels say how datagrams (ebpf, classic, off) and TUN packets (ebpf, off) are steered and how the XDP guard runs (native, generic, off).",
    );
    let _ = writeln!(
        out,
        "corewire_steering_info{} 1",
        labels(&[
            ("udp", s.udp_label()),
            ("tun", s.tun_label()),
            ("xdp", s.xdp_label())
        ])
    );
    for fam in families(STEERING_COUNTERS.iter().map(|c| &c.info)) {
        let values: Vec<(&CounterInfo, u64)> = fam
            .iter()
            .filter_map(|(i, info)| (STEERING_COUNTERS[*i].value)(s).map(|v| (*info, v)))
            .collect();
        let Some((first, _)) = values.first() else {
            continue;
        };
        let name = format!("corewire_{}_total", first.family);
        header(out, &name, "counter", first.help);
        for (info, v) in &values {
            let label: Vec<(&str, &str)> = info.label.into_iter().collect();
            let _ = writeln!(out, "{name}{} {v}", labels(&label));
        }
    }
}

/// The report in Prometheus text format 0.0.4.
pub fn prometheus(r: &Report) -> String {
    let mut out = String::with_capacity(16 << 10);
    let ifname = r.ifname.as_str();
    header(
        &mut out,
        "corewire_info",
        "gauge",
        "Always 1; labels name the interface and the version.",
    );
    let _ = writeln!(
        out,
        "corewire_info{} 1",
        labels(&[
            ("interface", ifname),
            ("version", env!("CARGO_PKG_VERSION"))
        ])
    );
    header(&mut out, "corewire_workers", "gauge", "Worker threads.");
    let _ = writeln!(out, "corewire_workers {}", r.workers.len());
    header(&mut out, "corewire_peers", "gauge", "Configured peers.");
    let _ = writeln!(out, "corewire_peers {}", r.peers_total);

    for fam in families(Counters::INFO.iter()) {
        let first = fam[0].1;
        let name = format!("corewire_{}_total", first.family);
        header(&mut out, &name, "counter", first.help);
        for (i, info) in &fam {
            let label: Vec<(&str, &str)> = info.label.into_iter().collect();
            match info.scope {
                Scope::Device => {
                    let sum: u64 = r.workers.iter().map(|w| w.counters[*i]).sum();
                    let _ = writeln!(out, "{name}{} {}", labels(&label), value(sum, info.scale));
                }
                Scope::Worker => {
                    for (w, snap) in r.workers.iter().enumerate() {
                        let id = w.to_string();
                        let mut l = vec![("worker", id.as_str())];
                        l.extend(label.iter().copied());
                        let _ = writeln!(
                            out,
                            "{name}{} {}",
                            labels(&l),
                            value(snap.counters[*i], info.scale)
                        );
                    }
                }
            }
        }
    }

    steering(&mut out, &r.steering);

    let name = "corewire_worker_dropped_total";
    header(
        &mut out,
        name,
        "counter",
        "Datagrams the worker dropped, by reason.",
    );
    for (w, snap) in r.workers.iter().enumerate() {
        let id = w.to_string();
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "{name}{} {}",
                labels(&[("worker", &id), ("reason", reason.label())]),
                snap.drops[reason as usize]
            );
        }
    }

    let name = "corewire_worker_loop_batch_size";
    header(
        &mut out,
        name,
        "histogram",
        "io_uring completions handled per loop turn.",
    );
    for (w, snap) in r.workers.iter().enumerate() {
        let id = w.to_string();
        let mut cumulative = 0;
        for (b, le) in BATCH_BUCKETS.iter().enumerate() {
            cumulative += snap.batch[b];
            let le = le.to_string();
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                labels(&[("worker", &id), ("le", &le)])
            );
        }
        cumulative += snap.batch[BATCH_BUCKETS.len()];
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            labels(&[("worker", &id), ("le", "+Inf")])
        );
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            labels(&[("worker", &id)]),
            snap.counter("completions")
        );
        let _ = writeln!(
            out,
            "{name}_count{} {cumulative}",
            labels(&[("worker", &id)])
        );
    }

    for g in Gauge::ALL {
        let name = format!("corewire_{}", g.name());
        header(&mut out, &name, "gauge", g.help());
        for (w, snap) in r.workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{} {}",
                labels(&[("worker", &w.to_string())]),
                snap.gauge(g)
            );
        }
    }

    header(
        &mut out,
        "corewire_metrics_peers_exported",
        "gauge",
        "Peers with per-peer series in this scrape (the busiest, see --metrics-peers).",
    );
    let _ = writeln!(out, "corewire_metrics_peers_exported {}", r.peers.len());
    if !r.peers.is_empty() {
        peer_families(&mut out, &r.peers);
    }
    out
}

fn peer_families(out: &mut String, peers: &[PeerRow]) {
    type Get = fn(&PeerRow) -> Option<String>;
    let fams: [(&str, &str, &str, Get); 5] = [
        ("corewire_peer_received_bytes_total", "counter", "Bytes received from the peer, as `wg show` counts them.", |p| Some(p.entry.rx_bytes.to_string())),
        ("corewire_peer_sent_bytes_total", "counter", "Bytes sent to the peer, as `wg show` counts them.", |p| Some(p.entry.tx_bytes.to_string())),
        ("corewire_peer_dropped_total", "counter", "Datagrams of the peer that were refused (replays, failed authentication, expired sessions, inner sources not allowed).", |p| Some(p.entry.dropped.to_string())),
        ("corewire_peer_handshake_failures_total", "counter", "Handshake messages of the peer that were refused.", |p| Some(p.entry.handshake_failures.to_string())),
        ("corewire_peer_last_handshake_seconds", "gauge", "Unix time of the peer's last handshake (absent: never).", |p| {
            p.entry.last_handshake.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs().to_string())
        }),
    ];
    for (name, kind, help, get) in fams {
        header(out, name, kind, help);
        for p in peers {
            if let Some(v) = get(p) {
                let key = p.entry.public_key.to_base64();
                let l = match &p.name {
                    Some(n) => labels(&[("peer", &key), ("name", n)]),
                    None => labels(&[("peer", &key)]),
                };
                let _ = writeln!(out, "{name}{l} {v}");
            }
        }
    }
}

/// One peer as JSON.
fn peer_json(p: &PeerRow) -> Value {
    json!({
        "public_key": p.entry.public_key.to_base64(),
        "name": p.name,
        "endpoint": p.entry.endpoint.map(|e| e.to_string()),
        "last_handshake": p.entry.last_handshake.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        "rx_bytes": p.entry.rx_bytes,
        "tx_bytes": p.entry.tx_bytes,
        "dropped": p.entry.dropped,
        "handshake_failures": p.entry.handshake_failures,
    })
}

/// The report as JSON text: counters (with their family, label, scope,
/// per worker and total), drops by reason, gauges, the batch-size
/// histogram, which steering runs and its programs' counters (`value`
/// null when the program does not run), and the peers asked for (written one at a time, so 100,000
/// peers never stand as one tree of values in memory).
pub fn json(r: &Report) -> String {
    let counters: Vec<Value> = Counters::INFO
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let per: Vec<u64> = r.workers.iter().map(|w| w.counters[i]).collect();
            json!({
                "name": info.field,
                "family": format!("corewire_{}_total", info.family),
                "label": info.label.map(|(k, v)| format!("{k}={v}")),
                "scope": match info.scope { Scope::Worker => "worker", Scope::Device => "device" },
                "scale": info.scale,
                "help": info.help,
                "total": per.iter().sum::<u64>(),
                "workers": per,
            })
        })
        .collect();
    let dropped: Vec<Value> = DropReason::ALL
        .iter()
        .map(|&reason| {
            let per: Vec<u64> = r.workers.iter().map(|w| w.drops[reason as usize]).collect();
            json!({"name": reason.label(), "total": per.iter().sum::<u64>(), "workers": per})
        })
        .collect();
    let gauges: Vec<Value> = Gauge::ALL
        .iter()
        .map(|&g| {
            let per: Vec<u64> = r.workers.iter().map(|w| w.gauge(g)).collect();
            json!({"name": g.name(), "help": g.help(), "total": per.iter().sum::<u64>(), "workers": per})
        })
        .collect();
    let steering: Vec<Value> = STEERING_COUNTERS
        .iter()
        .map(|c| {
            json!({
                "name": c.info.field,
                "family": format!("corewire_{}_total", c.info.family),
                "label": c.info.label.map(|(k, v)| format!("{k}={v}")),
                "help": c.info.help,
                "value": (c.value)(&r.steering),
            })
        })
        .collect();
    let head = json!({
        "interface": r.ifname,
        "version": env!("CARGO_PKG_VERSION"),
        "workers": r.workers.len(),
        "counters": counters,
        "dropped": dropped,
        "gauges": gauges,
        "steering": {
            "udp": r.steering.udp_label(),
            "tun": r.steering.tun_label(),
            "xdp": r.steering.xdp_label(),
            "counters": steering,
        },
        "batch_sizes": {
            "le": BATCH_BUCKETS,
            "workers": r.workers.iter().map(|w| w.batch.to_vec()).collect::<Vec<_>>(),
        },
        "peers_total": r.peers_total,
        "peers_fresh": r.peers_fresh,
    });
    let mut out = head.to_string();
    // The head is an object: reopen it for the peers.
    out.pop();
    out.push_str(",\"peers\":[");
    for (i, p) in r.peers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&peer_json(p).to_string());
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use corewire_dataplane::engine::board::Published;
    use corewire_dataplane::engine::steer::SteeringReader;

    #[test]
    fn every_family_has_help_and_type() {
        let published = Published::new(2);
        let report = Report::gather(
            &published,
            &SteeringReader::default(),
            "wg0",
            super::super::report::PeerLimit::Top(0),
            None,
        );
        let text = prometheus(&report);
        let mut typed = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(typed.insert(name.clone()), "{name} typed twice");
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "{name} has no # TYPE");
                assert!(helped.contains(family), "{name} has no # HELP");
            }
        }
        assert!(text.contains("corewire_handshake_failures_total{cause=\"bad_mac1\"} 0"));
        assert!(text.contains("corewire_worker_dropped_total{worker=\"1\",reason=\"bad_mac1\"} 0"));
        // Nothing steered: which steering runs, and no program series.
        assert!(text.contains("corewire_steering_info{udp=\"off\",tun=\"off\",xdp=\"off\"} 1"));
        assert!(!text.contains("corewire_xdp_verdicts_total"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("name", "a\"b\\c\nd")]),
            "{name=\"a\\\"b\\\\c\\nd\"}"
        );
    }
}
