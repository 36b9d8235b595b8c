//! `results.md`: the medians with their ranges, corewire's ratios, and the
//! noise and failures, as Markdown tables.

use std::fmt::Write as _;

use super::{Report, Row};
use crate::harness::impls::Impl;
use crate::harness::runner::fmt_value;

/// A cell: `median (min–max)`, with the count of noisy runs if any.
fn cell(report: &Report<'_>, row: &Row, imp: Impl) -> String {
    if imp == Impl::Veth && row.metric.tunnel_only {
        return "n/a".to_owned();
    }
    match row.get(imp) {
        Some(s) => {
            let mut text = if s.n > 1 {
                format!(
                    "{} ({}–{})",
                    fmt_value(s.median),
                    fmt_value(s.min),
                    fmt_value(s.max)
                )
            } else {
                fmt_value(s.median)
            };
            if s.noisy > 0 {
                let _ = write!(text, " ⚠{}/{}", s.noisy, s.n);
            }
            text
        }
        None => {
            let failed = report
                .measurements
                .iter()
                .any(|m| m.case == row.case && m.imp == imp && m.error.is_some());
            if failed { "failed" } else { "–" }.to_owned()
        }
    }
}

/// The two tables (medians, ratios) without the run header: what
/// docs/benchmarks.md quotes.
pub fn tables(report: &Report<'_>, rows: &[Row]) -> String {
    let mut out = String::new();
    let runs = report.settings.runs;
    let _ = writeln!(
        out,
        "Medians over {runs} run(s), (min–max); ↑ higher is better, ↓ lower is better; \
         ⚠k/n: k of the n runs were noisy.\n"
    );
    let _ = write!(out, "| case | metric |");
    for imp in report.impls {
        let _ = write!(out, " {} |", imp.name());
    }
    let _ = write!(out, "\n|---|---|");
    for _ in report.impls {
        let _ = write!(out, "---|");
    }
    out.push('\n');
    for row in rows {
        let _ = write!(
            out,
            "| {} | {} {} {} |",
            row.case.name(),
            row.metric.label,
            row.metric.unit,
            row.metric.better.arrow()
        );
        for &imp in report.impls {
            let _ = write!(out, " {} |", cell(report, row, imp));
        }
        out.push('\n');
    }
    let peers = report.peers();
    if !peers.is_empty() {
        let _ = writeln!(
            out,
            "\ncorewire's median divided by each other median (for ↑ metrics above 1 \
             means corewire is better, for ↓ metrics below 1 does).\n"
        );
        let _ = write!(out, "| case | metric |");
        for peer in &peers {
            let _ = write!(out, " ÷ {} |", peer.name());
        }
        let _ = write!(out, "\n|---|---|");
        for _ in &peers {
            let _ = write!(out, "---|");
        }
        out.push('\n');
        for row in rows {
            let _ = write!(
                out,
                "| {} | {} {} |",
                row.case.name(),
                row.metric.label,
                row.metric.better.arrow()
            );
            for &peer in &peers {
                let text = match row.corewire_ratio(peer) {
                    Some(r) => format!("{r:.2}×"),
                    None if peer == Impl::Veth && row.metric.tunnel_only => "n/a".to_owned(),
                    None => "–".to_owned(),
                };
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
    }
    out
}

pub fn render(report: &Report<'_>, rows: &[Row]) -> String {
    let m = report.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# netbench results\n");
    let _ = writeln!(out, "- command: `{}`", report.command);
    let _ = writeln!(
        out,
        "- started {} (UTC), took {:.1} min{}",
        report.started_utc,
        report.wall_s / 60.0,
        if report.interrupted {
            "; INTERRUPTED, partial results"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "- machine: {} vCPUs ({}), {:.1} GiB RAM, kernel {}",
        m.nproc, m.cpu_model, m.mem_total_gib, m.kernel
    );
    for (name, version, path) in &m.tools {
        let _ = writeln!(out, "- {name}: {version} (`{path}`)");
    }
    let _ = writeln!(
        out,
        "- {} run(s) of {} s per case; noise threshold {:.2} cores; {} of {} measurements \
         noisy, {} failed{}\n",
        report.settings.runs,
        report.settings.seconds,
        report.settings.noise_threshold,
        report.noisy_count(),
        report.measurements.len(),
        report.failed_count(),
        if report.settings.corewire_xdp {
            "; corewire's ends run the XDP guard (`--corewire-xdp`)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "## Cases\n");
    for case in report.cases {
        let _ = writeln!(out, "- `{}`: {}", case.name(), case.describe());
    }
    let _ = writeln!(out, "\n## Results\n");
    out.push_str(&tables(report, rows));
    let noisy: Vec<_> = report
        .measurements
        .iter()
        .filter_map(|x| x.noise.as_ref().filter(|n| n.noisy).map(|n| (x, n)))
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            out,
            "\n## Noisy measurements\n\n| run | case | impl | other CPU (cores) | of which steal | other processes seen (cores) | busiest others |\n|---|---|---|---|---|---|---|"
        );
        for (x, n) in noisy {
            let top: Vec<String> = n.top.iter().map(|(c, s)| format!("{c} {s:.1} s")).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                x.round,
                x.case.name(),
                x.imp.name(),
                n.other_cores,
                n.steal_cores,
                n.others_seen_cores,
                top.join(", ")
            );
        }
    }
    let failed: Vec<_> = report
        .measurements
        .iter()
        .filter_map(|x| x.error.as_ref().map(|e| (x, e)))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\n## Failures\n");
        for (x, e) in failed {
            let first = e.lines().next().unwrap_or("");
            let _ = writeln!(
                out,
                "- run {} {} {}: {}",
                x.round,
                x.case.name(),
                x.imp.name(),
                first.replace('|', "\\|")
            );
        }
    }
    let _ = writeln!(out, "\n![chart](results.svg)");
    out
}
