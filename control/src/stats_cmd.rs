//! `corewire stats IFNAME`: the live counters of a running corewire
//! interface, read from its stats socket (`/var/run/wireguard/IFNAME.stats`,
//! root only) as JSON, printed as tables or passed through (`--json`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cli::StatsArgs;
use crate::stats::{stats_path, IO_TIMEOUT};
use crate::uapi::server::SOCKET_DIR;

/// Biggest answer read (every peer of a very large device as JSON).
const MAX_ANSWER: u64 = 1 << 30;

/// Runs the command.
pub fn run(args: &StatsArgs) -> Result<()> {
    let path = stats_path(Path::new(SOCKET_DIR), &args.ifname);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach {} (is corewire serving {}, and are you root?)",
            path.display(),
            args.ifname
        )
    })?;
    s.set_read_timeout(Some(IO_TIMEOUT * 2))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    writeln!(s, "peers={}", args.peers)?;
    let mut text = String::new();
    s.take(MAX_ANSWER)
        .read_to_string(&mut text)
        .context("reading the answer")?;
    if args.json {
        // Passed through as the daemon wrote it (one line): at 100,000
        // peers, parsing and re-printing it would cost more than reading.
        print!("{text}");
        return Ok(());
    }
    let v: Value = serde_json::from_str(&text).context("the daemon's answer is not JSON")?;
    let mut out = String::new();
    table(&v, args.all, &mut out)?;
    print!("{out}");
    Ok(())
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The report as tables: device counters, per-worker counters and gauges,
/// the peers.
fn table(v: &Value, all: bool, out: &mut String) -> Result<()> {
    use std::fmt::Write as _;
    let Some(counters) = v["counters"].as_array() else {
        bail!("the daemon's answer has no counters");
    };
    let workers = num(&v["workers"]) as usize;
    let _ = writeln!(
        out,
        "interface: {}  (corewire {}, {} workers, {} peers)\n",
        v["interface"].as_str().unwrap_or("?"),
        v["version"].as_str().unwrap_or("?"),
        workers,
        num(&v["peers_total"])
    );
    let mut hidden = 0;
    let _ = writeln!(out, "device");
    for c in counters.iter().filter(|c| c["scope"] == "device") {
        let total = num(&c["total"]);
        if total == 0 && !all {
            hidden += 1;
            continue;
        }
        let name = match c["label"].as_str() {
            Some(l) => format!("{} {{{l}}}", c["family"].as_str().unwrap_or("")),
            None => c["family"].as_str().unwrap_or("").to_owned(),
        };
        let scale = num(&c["scale"]).max(1);
        let shown = if scale == 1 {
            total.to_string()
        } else {
            format!("{:.1}", total as f64 / scale as f64)
        };
        let _ = writeln!(
            out,
            "  {:<60} {shown:>14}",
            name.trim_start_matches("corewire_")
        );
    }
    hidden += steering(&v["steering"], all, out);
    let _ = write!(out, "\n{:<34}", "worker");
    for w in 0..workers {
        let _ = write!(out, " {:>14}", format!("w{w}"));
    }
    let _ = writeln!(out, " {:>14}", "total");
    let rows = counters
        .iter()
        .filter(|c| c["scope"] == "worker")
        .map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c))
        .chain(
            v["dropped"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| (format!("dropped: {}", d["name"].as_str().unwrap_or("")), d)),
        )
        .chain(v["gauges"].as_array().into_iter().flatten().map(|g| {
            let name = g["name"].as_str().unwrap_or("");
            (name.trim_start_matches("worker_").to_owned(), g)
        }));
    for (label, c) in rows {
        let total = num(&c["total"]);
        if total == 0 && !all {
            hidden += 1;
            continue;
        }
        let _ = write!(out, "{label:<34}");
        for x in c["workers"].as_array().into_iter().flatten() {
            let _ = write!(out, " {:>14}", num(x));
        }
        let _ = writeln!(out, " {total:>14}");
    }
    if hidden > 0 {
        let _ = writeln!(out, "({hidden} zero counters not shown; --all shows them)");
    }
    let peers = v["peers"].as_array().map_or(&[][..], Vec::as_slice);
    if !peers.is_empty() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = writeln!(
            out,
            "\npeers (the {} with most traffic{})",
            peers.len(),
            if v["peers_fresh"] == Value::Bool(true) {
                ""
            } else {
                "; some figures from the previous reading"
            }
        );
        let _ = writeln!(
            out,
            "{:<46} {:<24} {:>12} {:>12} {:>12} {:>8} {:>8}",
            "peer", "endpoint", "handshake", "received", "sent", "dropped", "hs fail"
        );
        for p in peers {
            let key = p["public_key"].as_str().unwrap_or("");
            let who = match p["name"].as_str() {
                Some(n) => format!("{n} ({}…)", &key[..key.len().min(8)]),
                None => key.to_owned(),
            };
            let hs = match p["last_handshake"].as_u64() {
                Some(t) => format!("{}s ago", now.saturating_sub(t)),
                None => "never".to_owned(),
            };
            let _ = writeln!(
                out,
                "{who:<46} {:<24} {hs:>12} {:>12} {:>12} {:>8} {:>8}",
                p["endpoint"].as_str().unwrap_or("(none)"),
                human_bytes(num(&p["rx_bytes"])),
                human_bytes(num(&p["tx_bytes"])),
                num(&p["dropped"]),
                num(&p["handshake_failures"]),
            );
        }
    }
    Ok(())
}

/// The steering section: which steering runs, then the counters of the
/// programs that run (zero ones only with `all`). Returns how many zero
/// counters it left out.
fn steering(s: &Value, all: bool, out: &mut String) -> usize {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\nsteering: datagrams {}, TUN packets {}, XDP guard {}",
        s["udp"].as_str().unwrap_or("?"),
        s["tun"].as_str().unwrap_or("?"),
        s["xdp"].as_str().unwrap_or("?")
    );
    let mut hidden = 0;
    for c in s["counters"].as_array().into_iter().flatten() {
        let Some(value) = c["value"].as_u64() else {
            continue;
        };
        if value == 0 && !all {
            hidden += 1;
            continue;
        }
        let family = c["family"].as_str().unwrap_or("");
        let name = match c["label"].as_str() {
            Some(l) => format!("{family} {{{l}}}"),
            None => family.to_owned(),
        };
        let _ = writeln!(
            out,
            "  {:<60} {value:>14}",
            name.trim_start_matches("corewire_")
        );
    }
    hidden
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::render;
    use crate::stats::report::{PeerLimit, Report};
    use corewire_dataplane::engine::board::Published;
    use corewire_dataplane::engine::steer::SteeringReader;

    #[test]
    fn the_table_shows_what_the_json_has() {
        let report = Report::gather(
            &Published::new(2),
            &SteeringReader::default(),
            "wg9",
            PeerLimit::Top(0),
            None,
        );
        let v: Value = serde_json::from_str(&render::json(&report)).expect("valid JSON");
        let mut out = String::new();
        table(&v, true, &mut out).expect("table");
        assert!(out.starts_with("interface: wg9"), "{out}");
        assert!(
            out.contains("handshake_failures_total {cause=bad_mac1}"),
            "{out}"
        );
        assert!(out.contains("dropped: bad_mac1"), "{out}");
        assert!(out.contains("udp_rx_datagrams"), "{out}");
        assert!(
            out.contains("steering: datagrams off, TUN packets off, XDP guard off"),
            "{out}"
        );
        let mut short = String::new();
        table(&v, false, &mut short).expect("table");
        assert!(short.contains("zero counters not shown"), "{short}");
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }
}
