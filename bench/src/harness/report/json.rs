//! `results.json`: the machine, the settings, every measurement (with its
//! noise figures and errors) and the summaries with corewire's ratios; and
//! reading it back, so that a newer netbench can render an old run again.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};

use super::{Report, Row};
use crate::harness::cases::{Better, Case};
use crate::harness::cpu::Noise;
use crate::harness::impls::Impl;
use crate::harness::machine::Machine;
use crate::harness::runner::{Measurement, Settings};
use crate::harness::stats::Summary;

fn noise(n: &Noise) -> Value {
    json!({
        "wall_s": n.wall_s,
        "busy_cores": n.busy_cores,
        "ours_cores": n.ours_cores,
        "other_cores": n.other_cores,
        "others_seen_cores": n.others_seen_cores,
        "steal_cores": n.steal_cores,
        "kernel_threads_cores": n.kernel_threads_cores,
        "noisy": n.noisy,
        "top_other_processes": n.top.iter()
            .map(|(name, secs)| json!({ "name": name, "cpu_s": secs }))
            .collect::<Vec<_>>(),
    })
}

fn summary(s: &Summary) -> Value {
    json!({
        "median": s.median,
        "min": s.min,
        "max": s.max,
        "runs": s.n,
        "noisy_runs": s.noisy,
    })
}

pub fn render(report: &Report<'_>, rows: &[Row]) -> Value {
    let m = report.machine;
    let measurements: Vec<Value> = report
        .measurements
        .iter()
        .map(|x| {
            json!({
                "round": x.round,
                "case": x.case.name(),
                "impl": x.imp.name(),
                "metrics": x.metrics,
                "noise": x.noise.as_ref().map(noise),
                "error": x.error,
            })
        })
        .collect();
    let peers = report.peers();
    let summaries: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut results = Map::new();
            for (imp, s) in &row.cells {
                results.insert(imp.name().to_owned(), s.as_ref().map_or(Value::Null, summary));
            }
            let mut ratios = Map::new();
            for &peer in &peers {
                ratios.insert(
                    peer.name().to_owned(),
                    row.corewire_ratio(peer).map_or(Value::Null, Value::from),
                );
            }
            json!({
                "case": row.case.name(),
                "metric": row.metric.key,
                "label": row.metric.label,
                "unit": row.metric.unit,
                "better": match row.metric.better { Better::Higher => "higher", Better::Lower => "lower" },
                "results": results,
                "corewire_over": ratios,
            })
        })
        .collect();
    json!({
        "tool": "netbench",
        "command": report.command,
        "started_utc": report.started_utc,
        "wall_s": report.wall_s,
        "interrupted": report.interrupted,
        "machine": {
            "nproc": m.nproc,
            "cpu_model": m.cpu_model,
            "mem_total_gib": m.mem_total_gib,
            "kernel": m.kernel,
            "tools": m.tools.iter()
                .map(|(name, version, path)| json!({ "name": name, "version": version, "path": path }))
                .collect::<Vec<_>>(),
        },
        "settings": {
            "runs": report.settings.runs,
            "seconds": report.settings.seconds,
            "noise_threshold_cores": report.settings.noise_threshold,
            "rtt_interval_us": report.settings.rtt_interval.as_micros() as u64,
            "corewire_xdp": report.settings.corewire_xdp,
            "impls": report.impls.iter().map(|i| i.name()).collect::<Vec<_>>(),
            "cases": report.cases.iter().map(|c| c.name()).collect::<Vec<_>>(),
        },
        "measurements": measurements,
        "summary": summaries,
    })
}

/// The inputs of a report, read back from a `results.json` (to render its
/// Markdown and SVG again with a newer netbench).
#[derive(Debug)]
pub struct Loaded {
    pub machine: Machine,
    pub command: String,
    pub started_utc: String,
    pub wall_s: f64,
    pub interrupted: bool,
    pub settings: Settings,
    pub impls: Vec<Impl>,
    pub cases: Vec<Case>,
    pub measurements: Vec<Measurement>,
}

fn str_field<'v>(v: &'v Value, key: &str) -> Result<&'v str> {
    v.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("no string {key:?}"))
}

fn num_field(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number {key:?}"))
}

fn names<T>(v: &Value, key: &str, parse: fn(&str) -> Option<T>) -> Result<Vec<T>> {
    v.get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("no list {key:?}"))?
        .iter()
        .map(|n| {
            n.as_str()
                .and_then(parse)
                .with_context(|| format!("unknown name {n} in {key:?}"))
        })
        .collect()
}

fn load_noise(v: &Value) -> Result<Noise> {
    let top = v
        .get("top_other_processes")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|p| {
                    Some((
                        str_field(p, "name").ok()?.to_owned(),
                        num_field(p, "cpu_s").ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Noise {
        wall_s: num_field(v, "wall_s")?,
        busy_cores: num_field(v, "busy_cores")?,
        ours_cores: num_field(v, "ours_cores")?,
        other_cores: num_field(v, "other_cores")?,
        others_seen_cores: num_field(v, "others_seen_cores")?,
        steal_cores: num_field(v, "steal_cores")?,
        kernel_threads_cores: num_field(v, "kernel_threads_cores")?,
        top,
        noisy: v
            .get("noisy")
            .and_then(Value::as_bool)
            .context("no boolean \"noisy\"")?,
    })
}

fn load_measurement(v: &Value) -> Result<Measurement> {
    let case = Case::parse(str_field(v, "case")?).context("unknown case")?;
    let imp = Impl::parse(str_field(v, "impl")?).context("unknown implementation")?;
    let values = v.get("metrics").context("no metrics")?;
    let mut metrics = BTreeMap::new();
    // Keys become the case's own (static) metric keys; unknown ones are dropped.
    for metric in case.metrics() {
        if let Some(x) = values.get(metric.key).and_then(Value::as_f64) {
            metrics.insert(metric.key, x);
        }
    }
    Ok(Measurement {
        round: u32::try_from(num_field(v, "round")? as u64).context("round")?,
        case,
        imp,
        metrics,
        noise: match v.get("noise") {
            Some(n) if !n.is_null() => Some(load_noise(n)?),
            _ => None,
        },
        error: v.get("error").and_then(Value::as_str).map(str::to_owned),
    })
}

/// Reads a `results.json` written by [`render`].
pub fn load(text: &str) -> Result<Loaded> {
    let v: Value = serde_json::from_str(text).context("not valid JSON")?;
    let m = v.get("machine").context("no machine")?;
    let s = v.get("settings").context("no settings")?;
    let tools = m
        .get("tools")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|t| {
                    Some((
                        str_field(t, "name").ok()?.to_owned(),
                        str_field(t, "version").ok()?.to_owned(),
                        str_field(t, "path").ok()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let measurements = v
        .get("measurements")
        .and_then(Value::as_array)
        .context("no measurements")?
        .iter()
        .enumerate()
        .map(|(i, x)| load_measurement(x).with_context(|| format!("measurement {i}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Loaded {
        machine: Machine {
            nproc: num_field(m, "nproc")? as usize,
            cpu_model: str_field(m, "cpu_model")?.to_owned(),
            mem_total_gib: num_field(m, "mem_total_gib")?,
            kernel: str_field(m, "kernel")?.to_owned(),
            tools,
        },
        command: str_field(&v, "command")?.to_owned(),
        started_utc: str_field(&v, "started_utc")?.to_owned(),
        wall_s: num_field(&v, "wall_s")?,
        interrupted: v
            .get("interrupted")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        settings: Settings {
            runs: num_field(s, "runs")? as u32,
            seconds: num_field(s, "seconds")? as u32,
            noise_threshold: num_field(s, "noise_threshold_cores")?,
            rtt_interval: Duration::from_micros(num_field(s, "rtt_interval_us")? as u64),
            // Absent from results written before the option existed.
            corewire_xdp: s
                .get("corewire_xdp")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        impls: names(s, "impls", Impl::parse)?,
        cases: names(s, "cases", Case::parse)?,
        measurements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let machine = Machine {
            nproc: 2,
            cpu_model: "cpu".into(),
            mem_total_gib: 1.5,
            kernel: "6.18".into(),
            tools: vec![("wg".into(), "v1".into(), "/usr/bin/wg".into())],
        };
        let settings = Settings {
            runs: 1,
            seconds: 5,
            noise_threshold: 0.1,
            rtt_interval: Duration::from_micros(500),
            corewire_xdp: true,
        };
        let noise = Noise {
            wall_s: 5.0,
            busy_cores: 1.0,
            ours_cores: 0.5,
            other_cores: 0.5,
            others_seen_cores: 0.4,
            steal_cores: 0.0,
            kernel_threads_cores: 0.0,
            top: vec![("rustc".into(), 2.0)],
            noisy: true,
        };
        let measurements = vec![
            Measurement {
                round: 1,
                case: Case::Tcp1,
                imp: Impl::Corewire,
                metrics: BTreeMap::from([("gbps", 1.5)]),
                noise: Some(noise),
                error: None,
            },
            Measurement {
                round: 1,
                case: Case::Tcp1,
                imp: Impl::Veth,
                metrics: BTreeMap::new(),
                noise: None,
                error: Some("boom".into()),
            },
        ];
        let impls = [Impl::Corewire, Impl::Veth];
        let cases = [Case::Tcp1];
        let report = Report {
            machine: &machine,
            command: "netbench".into(),
            started_utc: "2025-01-01 00:00:00".into(),
            wall_s: 12.0,
            interrupted: false,
            settings: &settings,
            impls: &impls,
            cases: &cases,
            measurements: &measurements,
        };
        let text = serde_json::to_string(&render(&report, &report.rows())).expect("serialises");
        let back = load(&text).expect("loads");
        assert_eq!(back.impls, impls);
        assert_eq!(back.cases, cases);
        assert_eq!(back.measurements.len(), 2);
        assert_eq!(back.measurements[0].metrics, measurements[0].metrics);
        assert_eq!(back.measurements[0].noise, measurements[0].noise);
        assert_eq!(back.measurements[1].error.as_deref(), Some("boom"));
        assert_eq!(back.settings.rtt_interval, settings.rtt_interval);
        assert!(back.settings.corewire_xdp);
        let rows = report.rows();
        assert_eq!(
            rows[0].get(Impl::Corewire),
            Some(&Summary {
                median: 1.5,
                min: 1.5,
                max: 1.5,
                n: 1,
                noisy: 1
            })
        );
    }
}
