//! Reads criterion's estimates from `target/criterion` and prints the
//! figures corewire tracks: session seal/open throughput as a ratio of raw
//! `ring` AEAD on the same bytes, and handshakes per second per core.
//!
//! Run after `cargo bench -p corewire-bench`:
//! `cargo run -p corewire-bench --bin micro-report [CRITERION_DIR]`.

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

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let batch = corewire_bench::BATCH as f64;
    println!("| path | packet | session Gbit/s | ring Gbit/s | ratio |");
    println!("|---|---|---|---|---|");
    for op in ["seal", "open"] {
        for len in [1420usize, 64] {
            let group = format!("{op}_{len}");
            let s = median_ns(&dir, &group, "session")?;
            let r = median_ns(&dir, &group, "ring")?;
            let gbps = |ns: f64| batch * len as f64 * 8.0 / ns;
            println!(
                "| {op} | {len} B | {:.2} | {:.2} | {:.3} |",
                gbps(s),
                gbps(r),
                r / s
            );
        }
    }
    let full = median_ns(&dir, "handshake", "full")?;
    let respond = median_ns(&dir, "handshake", "respond")?;
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
