//! The results of a concentrator run, summarised (medians with min–max per
//! K, hub, case and metric; corewire's medians as ratios to each other hub
//! of the same run) and written as `results.json` (everything, for tools),
//! `results.md` (tables, for people and docs/) and `results.svg` (line
//! charts over K, see [`chart`](super::chart)).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};

use crate::harness::cases::Metric;
use crate::harness::machine::Machine;
use crate::harness::report::Written;
use crate::harness::runner::fmt_value;
use crate::harness::stats::{self, Summary};

use super::cases::{Case, FLAG_UNIT};
use super::chart;
use super::hubs::Hub;
use super::runner::{Measurement, Settings};

/// Everything a report shows.
#[derive(Debug)]
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub command: String,
    pub started_utc: String,
    pub wall_s: f64,
    pub interrupted: bool,
    pub settings: &'a Settings,
    pub hubs: &'a [Hub],
    pub measurements: &'a [Measurement],
}

/// One metric of one case at one K across the hubs.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: Case,
    pub metric: Metric,
    pub peers: usize,
    pub cells: Vec<(Hub, Option<Summary>)>,
}

impl Row {
    pub fn get(&self, hub: Hub) -> Option<&Summary> {
        self.cells
            .iter()
            .find(|(h, _)| *h == hub)
            .and_then(|(_, s)| s.as_ref())
    }

    /// `ours`' median divided by `other`'s (none for a flag: a ratio of
    /// yes/no means nothing).
    pub fn ratio(&self, ours: Hub, other: Hub) -> Option<f64> {
        if self.metric.unit == FLAG_UNIT {
            return None;
        }
        stats::ratio(self.get(ours)?.median, self.get(other)?.median)
    }
}

/// Summarises `key` over the successful measurements of (K, hub, case).
pub fn summarize(
    ms: &[Measurement],
    peers: usize,
    hub: Hub,
    case: Case,
    key: &str,
) -> Option<Summary> {
    let runs: Vec<(f64, bool)> = ms
        .iter()
        .filter(|m| m.peers == peers && m.hub == hub && m.case == case && m.error.is_none())
        .filter_map(|m| {
            let v = *m.metrics.get(key)?;
            v.is_finite()
                .then(|| (v, m.noise.as_ref().is_some_and(|n| n.noisy)))
        })
        .collect();
    let values: Vec<f64> = runs.iter().map(|(v, _)| *v).collect();
    Some(Summary {
        median: stats::median(&values)?,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n: values.len(),
        noisy: runs.iter().filter(|(_, noisy)| *noisy).count(),
    })
}

fn summary_json(s: &Summary) -> Value {
    json!({ "median": s.median, "min": s.min, "max": s.max, "runs": s.n, "noisy_runs": s.noisy })
}

fn cell(s: Option<&Summary>) -> String {
    match s {
        None => "–".to_owned(),
        Some(s) if s.n > 1 && s.min != s.max => {
            format!(
                "{} ({}–{}){}",
                fmt_value(s.median),
                fmt_value(s.min),
                fmt_value(s.max),
                if s.noisy > 0 { "*" } else { "" }
            )
        }
        Some(s) => format!(
            "{}{}",
            fmt_value(s.median),
            if s.noisy > 0 { "*" } else { "" }
        ),
    }
}

impl Report<'_> {
    /// The peer counts that have measurements, ascending.
    pub fn peer_counts(&self) -> Vec<usize> {
        let mut ks: Vec<usize> = self.measurements.iter().map(|m| m.peers).collect();
        ks.sort_unstable();
        ks.dedup();
        ks
    }

    /// Every (case, metric, K) with its per-hub summaries.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for &case in &self.settings.cases {
            for metric in case.metrics() {
                for k in self.peer_counts() {
                    let cells = self
                        .hubs
                        .iter()
                        .map(|&h| (h, summarize(self.measurements, k, h, case, metric.key)))
                        .collect();
                    rows.push(Row {
                        case,
                        metric: *metric,
                        peers: k,
                        cells,
                    });
                }
            }
        }
        rows
    }

    /// (corewire variant, other hub) pairs the ratios compare.
    pub fn pairs(&self) -> Vec<(Hub, Hub)> {
        let ours: Vec<Hub> = self
            .hubs
            .iter()
            .copied()
            .filter(|h| h.is_corewire())
            .collect();
        let theirs: Vec<Hub> = self
            .hubs
            .iter()
            .copied()
            .filter(|h| !h.is_corewire())
            .collect();
        ours.iter()
            .flat_map(|&o| theirs.iter().map(move |&t| (o, t)))
            .collect()
    }

    pub fn failed_count(&self) -> usize {
        self.measurements
            .iter()
            .filter(|m| m.error.is_some())
            .count()
    }

    pub fn write(&self, dir: &Path) -> Result<Written> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let rows = self.rows();
        let written = Written {
            json: dir.join("results.json"),
            markdown: dir.join("results.md"),
            svg: dir.join("results.svg"),
        };
        let json =
            serde_json::to_string_pretty(&self.json(&rows)).context("serialise the report")?;
        fs::write(&written.json, json + "\n")
            .with_context(|| format!("write {}", written.json.display()))?;
        fs::write(&written.markdown, self.markdown(&rows))
            .with_context(|| format!("write {}", written.markdown.display()))?;
        fs::write(&written.svg, chart::render(self, &rows))
            .with_context(|| format!("write {}", written.svg.display()))?;
        Ok(written)
    }

    fn json(&self, rows: &[Row]) -> Value {
        let m = self.machine;
        let s = self.settings;
        let measurements: Vec<Value> = self
            .measurements
            .iter()
            .map(|x| {
                json!({
                    "round": x.round, "peers": x.peers, "hub": x.hub.name(), "case": x.case.name(),
                    "metrics": x.metrics, "notes": x.notes,
                    "other_cores": x.noise.as_ref().map(|n| n.other_cores),
                    "error": x.error,
                })
            })
            .collect();
        let pairs = self.pairs();
        let summaries: Vec<Value> = rows
            .iter()
            .map(|row| {
                let mut results = Map::new();
                for (h, s) in &row.cells {
                    results.insert(h.name().to_owned(), s.as_ref().map_or(Value::Null, summary_json));
                }
                let mut ratios = Map::new();
                for &(o, t) in &pairs {
                    ratios.insert(format!("{}/{}", o.name(), t.name()), row.ratio(o, t).map_or(Value::Null, Value::from));
                }
                json!({
                    "case": row.case.name(), "metric": row.metric.key, "label": row.metric.label,
                    "unit": row.metric.unit, "higher_is_better": row.metric.better == crate::harness::cases::Better::Higher,
                    "peers": row.peers, "results": results, "ratios": ratios,
                })
            })
            .collect();
        json!({
            "benchmark": "concentrator",
            "command": self.command,
            "started_utc": self.started_utc,
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
            "machine": {
                "nproc": m.nproc, "cpu_model": m.cpu_model, "mem_total_gib": m.mem_total_gib, "kernel": m.kernel,
                "tools": m.tools.iter().map(|(n, v, p)| json!({ "name": n, "version": v, "path": p })).collect::<Vec<_>>(),
            },
            "settings": {
                "runs": s.runs, "peer_counts": s.peer_counts,
                "cases": s.cases.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "step_seconds": s.step_seconds, "sweep_start_pps": s.sweep.start_pps, "sweep_factor": s.sweep.factor,
                "sweep_steps": s.sweep.steps, "sweep_max_loss": s.sweep.max_loss, "gso": s.gso,
                "storm_limit_s": s.storm_limit.as_secs_f64(), "retry_s": s.retry.as_secs_f64(),
                "flood_rate": s.flood_rate, "noise_threshold": s.noise_threshold, "fd_limit": s.fd_limit,
            },
            "hubs": self.hubs.iter().map(|h| h.name()).collect::<Vec<_>>(),
            "summaries": summaries,
            "measurements": measurements,
        })
    }

    fn markdown(&self, rows: &[Row]) -> String {
        let m = self.machine;
        let s = self.settings;
        let mut out = String::new();
        let _ = writeln!(out, "# concentrator results\n");
        let _ = writeln!(
            out,
            "{} vCPUs ({}), {:.1} GiB, kernel {}; started {} UTC, {:.0} s{}.\n",
            m.nproc,
            m.cpu_model,
            m.mem_total_gib,
            m.kernel,
            self.started_utc,
            self.wall_s,
            if self.interrupted {
                ", INTERRUPTED"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let _ = writeln!(
            out,
            "{} round(s); K = {:?}; steps of {} s, offered rate from {} kpps ×{} up to {} steps (until loss > {}% or the sender is the limit); GSO bursts of {}; storm limit {} s, retry after {} s; flood {} initiations/s; hubs' open-file limit {}.\n",
            s.runs,
            s.peer_counts,
            s.step_seconds,
            s.sweep.start_pps / 1e3,
            s.sweep.factor,
            s.sweep.steps,
            s.sweep.max_loss * 100.0,
            s.gso,
            s.storm_limit.as_secs_f64(),
            s.retry.as_secs_f64(),
            s.flood_rate,
            s.fd_limit
        );
        let _ = writeln!(out, "| tool | version |\n| --- | --- |");
        for (name, version, _) in &m.tools {
            let _ = writeln!(out, "| {name} | {version} |");
        }
        let _ = writeln!(
            out,
            "\nCells: median (min–max) over the rounds; * = some runs noisy (other processes used CPU). \
             Ratios: corewire's median ÷ the other hub's (corewire-1w in parentheses); above 1 is better where ↑, below 1 where ↓.\n"
        );
        let pairs = self.pairs();
        let others: Vec<Hub> = self
            .hubs
            .iter()
            .copied()
            .filter(|h| !h.is_corewire())
            .collect();
        for &case in &s.cases {
            let _ = writeln!(out, "## {}\n\n{}.\n", case.name(), case.describe());
            let mut header = String::from("| metric | K |");
            let mut rule = String::from("| --- | ---: |");
            for h in self.hubs {
                let _ = write!(header, " {} |", h.name());
                rule.push_str(" ---: |");
            }
            if !pairs.is_empty() {
                for t in &others {
                    let _ = write!(header, " corewire ÷ {} |", t.name());
                    rule.push_str(" ---: |");
                }
            }
            let _ = writeln!(out, "{header}\n{rule}");
            for row in rows.iter().filter(|r| r.case == case) {
                let mut line = format!(
                    "| {} ({} {}) | {} |",
                    row.metric.label,
                    row.metric.unit,
                    row.metric.better.arrow(),
                    row.peers
                );
                for &h in self.hubs {
                    let _ = write!(line, " {} |", cell(row.get(h)));
                }
                if !pairs.is_empty() {
                    for &t in &others {
                        let r = |o: Hub| row.ratio(o, t).map(|r| format!("{r:.2}"));
                        let text = match (r(Hub::Corewire), r(Hub::Corewire1)) {
                            (Some(a), Some(b)) => format!("{a} ({b})"),
                            (Some(a), None) => a,
                            (None, Some(b)) => format!("– ({b})"),
                            (None, None) => "–".to_owned(),
                        };
                        let _ = write!(line, " {text} |");
                    }
                }
                let _ = writeln!(out, "{line}");
            }
            out.push('\n');
        }
        let flagged: Vec<&Measurement> = self
            .measurements
            .iter()
            .filter(|m| m.error.is_some() || !m.notes.is_empty())
            .collect();
        if !flagged.is_empty() {
            let _ = writeln!(out, "## Flags and failures\n");
            for m in flagged {
                let what = m.error.as_deref().map_or_else(
                    || m.notes.join("; "),
                    |e| format!("FAILED: {}", e.lines().next().unwrap_or("")),
                );
                let _ = writeln!(
                    out,
                    "- K={} run {} {} {}: {what}",
                    m.peers,
                    m.round,
                    m.case.name(),
                    m.hub.name()
                );
            }
            out.push('\n');
        }
        out
    }
}
