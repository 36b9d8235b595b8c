//! The results of a run, summarised, and written three ways: JSON (every
//! measurement, for tools), Markdown (tables, for people and docs/) and SVG
//! (a bar chart, hand-written).

mod json;
mod markdown;
pub mod svg;

pub use json::load;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::cases::{Case, Metric};
use super::impls::Impl;
use super::machine::Machine;
use super::runner::{Measurement, Settings};
use super::stats::{self, Summary};

/// Everything a report shows.
#[derive(Debug)]
pub struct Report<'a> {
    pub machine: &'a Machine,
    /// The command line, as typed.
    pub command: String,
    pub started_utc: String,
    pub wall_s: f64,
    pub interrupted: bool,
    pub settings: &'a Settings,
    pub impls: &'a [Impl],
    pub cases: &'a [Case],
    pub measurements: &'a [Measurement],
}

/// One metric of one case across the implementations.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: Case,
    pub metric: Metric,
    pub cells: Vec<(Impl, Option<Summary>)>,
}

impl Row {
    pub fn get(&self, imp: Impl) -> Option<&Summary> {
        self.cells
            .iter()
            .find(|(i, _)| *i == imp)
            .and_then(|(_, s)| s.as_ref())
    }

    /// corewire's median divided by `other`'s.
    pub fn corewire_ratio(&self, other: Impl) -> Option<f64> {
        stats::ratio(self.get(Impl::Corewire)?.median, self.get(other)?.median)
    }
}

/// Where the files went.
#[derive(Debug)]
pub struct Written {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub svg: PathBuf,
}

impl Report<'_> {
    /// Every (case, metric) with its per-implementation summaries.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for &case in self.cases {
            for metric in case.metrics() {
                let cells = self
                    .impls
                    .iter()
                    .map(|&imp| {
                        let s = stats::summarize(self.measurements, case, imp, metric);
                        (imp, s)
                    })
                    .collect();
                rows.push(Row {
                    case,
                    metric: *metric,
                    cells,
                });
            }
        }
        rows
    }

    /// The implementations corewire is compared with (everything else run).
    pub fn peers(&self) -> Vec<Impl> {
        if !self.impls.contains(&Impl::Corewire) {
            return Vec::new();
        }
        self.impls
            .iter()
            .copied()
            .filter(|&i| i != Impl::Corewire)
            .collect()
    }

    pub fn noisy_count(&self) -> usize {
        self.measurements
            .iter()
            .filter(|m| m.noise.as_ref().is_some_and(|n| n.noisy))
            .count()
    }

    pub fn failed_count(&self) -> usize {
        self.measurements
            .iter()
            .filter(|m| m.error.is_some())
            .count()
    }

    /// Writes `results.json`, `results.md` and `results.svg` into `dir`
    /// (created if needed).
    pub fn write(&self, dir: &Path) -> Result<Written> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let written = self.write_views(dir)?;
        let json = serde_json::to_string_pretty(&json::render(self, &self.rows()))
            .context("serialise the JSON report")?;
        fs::write(&written.json, json + "\n")
            .with_context(|| format!("write {}", written.json.display()))?;
        Ok(written)
    }

    /// Writes only `results.md` and `results.svg` (the views of the JSON).
    pub fn write_views(&self, dir: &Path) -> Result<Written> {
        let rows = self.rows();
        let written = Written {
            json: dir.join("results.json"),
            markdown: dir.join("results.md"),
            svg: dir.join("results.svg"),
        };
        fs::write(&written.markdown, markdown::render(self, &rows))
            .with_context(|| format!("write {}", written.markdown.display()))?;
        fs::write(&written.svg, svg::render(self, &rows))
            .with_context(|| format!("write {}", written.svg.display()))?;
        Ok(written)
    }
}
