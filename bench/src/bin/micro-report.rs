//! Reads criterion's estimates from `target/criterion` and prints the
//! figures corewire tracks: session seal/open throughput as a ratio of raw
//! `ring` AEAD on the same bytes, handshakes per second per core, and the
//! worker's whole encrypt and decrypt paths as shipped (the engine's
//! `Shard`: TUN offload, routing, sealing or opening, GSO/GRO batching;
//! `benches/worker_path.rs`) as a ratio of raw `ring` on the same packets,
//! with what their parts cost.
//!
//! Run after `cargo bench -p corewire-bench`:
//! `cargo run -p corewire-bench --bin micro-report [CRITERION_DIR]`.
//! A section whose benchmarks have not been run is skipped with a note on
//! stderr, and the exit status is then 1.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Median time per iteration in nanoseconds of one benchmark.
fn median_ns(dir: &Path, group: &str, bench: &str) -> Result<f64> {
    let path = dir.join(group).join(bench).join("new/estimates.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (run `cargo bench -p corewire-bench` first)",
            path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).context("parsing estimates")?;
    v["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no median in {}", path.display()))
}

/// Prints one part of the report from the estimates under the directory.
type Section = fn(&Path) -> Result<()>;

/// Bytes per iteration that a benchmark declared as its throughput.
fn throughput_bytes(dir: &Path, group: &str, bench: &str) -> Result<f64> {
    let path = dir.join(group).join(bench).join("new/benchmark.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run the benchmark first)", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("parsing benchmark.json")?;
    v["throughput"]["Bytes"]
        .as_f64()
        .with_context(|| format!("no byte throughput in {}", path.display()))
}

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let mut complete = true;
    let sections: [(&str, Section); 2] = [
        ("session and handshake", session_and_handshake),
        ("worker path", worker_path),
    ];
    for (i, (name, section)) in sections.into_iter().enumerate() {
        if i > 0 {
            println!();
        }
        if let Err(e) = section(&dir) {
            eprintln!("{name}: skipped: {e:#}");
            complete = false;
        }
    }
    if !complete {
        std::process::exit(1);
    }
    Ok(())
}

/// The worker path benchmarks: each row's `path` against its `ring`
/// reference, then the parts measured alone.
fn worker_path(dir: &Path) -> Result<()> {
    let rows = [
        (
            "worker_encrypt_64k",
            "encrypt",
            "64 KiB TCP super-packet read: 47 × 1420 B",
        ),
        ("worker_encrypt_1420", "encrypt", "one 1420 B packet read"),
        (
            "worker_decrypt_64k",
            "decrypt",
            "47 × 1420 B packets in 2 GRO receives",
        ),
    ];
    let mut lines = Vec::new();
    for (group, op, input) in rows {
        let bytes = throughput_bytes(dir, group, "path")?;
        let path = median_ns(dir, group, "path")?;
        let ring = median_ns(dir, group, "ring")?;
        let gbps = |ns: f64| bytes * 8.0 / ns;
        lines.push(format!(
            "| {op} | {input} | {:.2} | {:.2} | {:.3} |",
            gbps(path),
            gbps(ring),
            ring / path
        ));
    }
    let part = |group: &str, bench: &str| -> Result<(f64, f64)> {
        let ns = median_ns(dir, group, bench)?;
        Ok((ns, ns / median_ns(dir, group, "ring")?))
    };
    let parts = [
        (
            "worker_encrypt_64k",
            "split",
            "encrypt 64 KiB: parse_read + 47 segment writes (copy, checksums)",
        ),
        (
            "worker_encrypt_64k",
            "memcpy",
            "encrypt 64 KiB: the same bytes copied, nothing else",
        ),
        (
            "worker_encrypt_1420",
            "parse",
            "encrypt 1420 B: parse_read (completes the TCP checksum)",
        ),
        (
            "worker_decrypt_64k",
            "receive",
            "decrypt: Shard::udp_received for 2 GRO receives (split, 47 opened)",
        ),
        (
            "worker_decrypt_64k",
            "plan",
            "decrypt: Shard::flush + execute (coalescing, the write's parts)",
        ),
    ];
    let mut part_lines = Vec::new();
    for (group, bench, what) in parts {
        let (ns, of_ring) = part(group, bench)?;
        let time = if ns < 1000.0 {
            format!("{ns:.0} ns")
        } else {
            format!("{:.2} µs", ns / 1000.0)
        };
        part_lines.push(format!("| {what} | {time} | {of_ring:.3} |"));
    }
    println!("| worker path | input | path Gbit/s | ring Gbit/s | ratio |");
    println!("|---|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
    println!();
    println!("| part, alone | time per iteration | ÷ ring time |");
    println!("|---|---|---|");
    for l in part_lines {
        println!("{l}");
    }
    Ok(())
}

/// Session seal/open against raw `ring`, and handshakes per second. Every
/// figure is read before anything is printed, so a missing one prints
/// nothing of the section.
fn session_and_handshake(dir: &Path) -> Result<()> {
    let batch = corewire_bench::BATCH as f64;
    let mut lines = Vec::new();
    for op in ["seal", "open"] {
        for len in [1420usize, 64] {
            let group = format!("{op}_{len}");
            let s = median_ns(dir, &group, "session")?;
            let r = median_ns(dir, &group, "ring")?;
            let gbps = |ns: f64| batch * len as f64 * 8.0 / ns;
            lines.push(format!(
                "| {op} | {len} B | {:.2} | {:.2} | {:.3} |",
                gbps(s),
                gbps(r),
                r / s
            ));
        }
    }
    let full = median_ns(dir, "handshake", "full")?;
    let respond = median_ns(dir, "handshake", "respond")?;
    println!("| path | packet | session Gbit/s | ring Gbit/s | ratio |");
    println!("|---|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
    println!();
    println!("| handshake | per second, one core |");
    println!("|---|---|");
    println!(
        "| full (initiate + respond + complete) | {:.0} |",
        1e9 / full
    );
    println!(
        "| responder: initiation in, response out | {:.0} |",
        1e9 / respond
    );
    Ok(())
}
