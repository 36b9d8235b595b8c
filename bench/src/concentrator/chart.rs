//! `results.svg`: one line chart per charted metric (see `Metric::chart`),
//! the peer count K on the x axis (one evenly spaced tick per K measured),
//! the metric on a linear y axis from 0 with labelled grid lines, one line
//! per hub at its medians with min–max whiskers, labelled at its end so
//! that no legend lookup is needed. Plain SVG, no dependencies.

use std::fmt::Write as _;

use crate::harness::report::svg::escape;
use crate::harness::runner::fmt_value;

use super::hubs::Hub;
use super::report::{Report, Row};

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const COLUMNS: usize = 3;
const TOP: f64 = 60.0;

fn color(hub: Hub) -> &'static str {
    match hub {
        Hub::Corewire => "#d62728",
        Hub::Corewire1 => "#9467bd",
        Hub::WireguardGo => "#1f77b4",
        Hub::Boringtun => "#ff7f0e",
        Hub::Gotatun => "#2ca02c",
    }
}

/// A "nice" upper bound for the y axis: 1, 2 or 5 times a power of ten.
fn nice_top(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&t| t >= v)
        .unwrap_or(10.0 * p)
}

fn panel(out: &mut String, rows: &[&Row], hubs: &[Hub], ks: &[usize], x0: f64, y0: f64) {
    let Some(first) = rows.first() else { return };
    let m = first.metric;
    let title = format!(
        "{}: {} ({} {})",
        first.case.name(),
        m.label,
        m.unit,
        m.better.arrow()
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>"#,
        x0 + PANEL_W / 2.0,
        y0 + 16.0,
        escape(&title)
    );
    let (px, py, pw, ph) = (x0 + 62.0, y0 + 30.0, PANEL_W - 150.0, PANEL_H - 78.0);
    let highest = rows
        .iter()
        .flat_map(|r| {
            r.cells
                .iter()
                .filter_map(|(_, s)| s.as_ref().map(|s| s.max.max(s.median)))
        })
        .fold(0.0_f64, f64::max);
    if highest <= 0.0 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">no data</text>"#,
            px + pw / 2.0,
            py + ph / 2.0
        );
        return;
    }
    let top = nice_top(highest);
    let y = |v: f64| py + ph - (v / top) * ph;
    let x = |i: usize| {
        if ks.len() <= 1 {
            px + pw / 2.0
        } else {
            px + pw * i as f64 / (ks.len() - 1) as f64
        }
    };
    for g in 0..=4 {
        let v = top * g as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#dddddd"/><text x="{2:.1}" y="{3:.1}" font-size="10" text-anchor="end">{4}</text>"##,
            y(v),
            px + pw,
            px - 4.0,
            y(v) + 3.5,
            fmt_value(v)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{px:.1}" y1="{py:.1}" x2="{px:.1}" y2="{0:.1}" stroke="#444"/><line x1="{px:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#444"/>"##,
        py + ph,
        px + pw
    );
    for (i, k) in ks.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{k}</text>"#,
            x(i),
            py + ph + 13.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">peers (K)</text>"#,
        px + pw / 2.0,
        py + ph + 28.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 {0:.1} {1:.1})">{}</text>"#,
        x0 + 14.0,
        py + ph / 2.0,
        escape(m.unit)
    );
    let mut labels: Vec<(Hub, f64)> = Vec::new();
    for &hub in hubs {
        let points: Vec<(f64, f64, f64, f64)> = ks
            .iter()
            .enumerate()
            .filter_map(|(i, &k)| {
                let s = rows.iter().find(|r| r.peers == k)?.get(hub)?;
                Some((x(i), y(s.median), y(s.min), y(s.max)))
            })
            .collect();
        let Some(&(_, last_y, _, _)) = points.last() else {
            continue;
        };
        let c = color(hub);
        let path: String = points
            .iter()
            .enumerate()
            .map(|(i, (px, py, _, _))| format!("{}{px:.1} {py:.1}", if i == 0 { "M" } else { "L" }))
            .collect();
        let _ = writeln!(
            out,
            r#"<path d="{path}" stroke="{c}" stroke-width="2" fill="none"/>"#
        );
        for &(cx, cy, ymin, ymax) in &points {
            let _ = writeln!(
                out,
                r#"<path d="M{cx:.1} {ymin:.1}V{ymax:.1}" stroke="{c}" stroke-width="1"/><circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{c}"/>"#
            );
        }
        labels.push((hub, last_y));
    }
    // Each hub's name right of the plot at the height of its last point,
    // spread so that none overlap and all stay beside the plot.
    for (hub, ly) in spread(labels, LABEL_GAP, py, py + ph) {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{}">{}</text>"#,
            px + pw + 8.0,
            ly + 3.5,
            color(hub),
            hub.name()
        );
    }
}

/// Vertical distance between two line labels.
const LABEL_GAP: f64 = 11.0;

/// Label positions: sorted by height, pushed apart to `gap`, then moved up
/// as a block if the lowest fell below `bottom` (never above `top`).
fn spread(mut labels: Vec<(Hub, f64)>, gap: f64, top: f64, bottom: f64) -> Vec<(Hub, f64)> {
    labels.sort_by(|a, b| a.1.total_cmp(&b.1));
    for i in 1..labels.len() {
        labels[i].1 = labels[i].1.max(labels[i - 1].1 + gap);
    }
    if let Some(&(_, lowest)) = labels.last() {
        let shift = (lowest - bottom).max(0.0);
        for (i, l) in labels.iter_mut().enumerate() {
            l.1 = (l.1 - shift).max(top + gap * i as f64);
        }
    }
    labels
}

pub fn render(report: &Report<'_>, rows: &[Row]) -> String {
    let ks = report.peer_counts();
    // One panel per charted (case, metric), its rows over K.
    let mut panels: Vec<Vec<&Row>> = Vec::new();
    for row in rows.iter().filter(|r| r.metric.chart) {
        match panels.last_mut() {
            Some(p) if p[0].case == row.case && p[0].metric.key == row.metric.key => p.push(row),
            _ => panels.push(vec![row]),
        }
    }
    let width = PANEL_W * COLUMNS as f64;
    let height = TOP + PANEL_H * panels.len().div_ceil(COLUMNS).max(1) as f64 + 24.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let m = report.machine;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="22" font-size="15" font-weight="bold" text-anchor="middle">concentrator: a hub and K peers — {} vCPUs ({}), kernel {}</text>"#,
        width / 2.0,
        m.nproc,
        escape(&m.cpu_model),
        escape(&m.kernel)
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="42" font-size="12" text-anchor="middle">medians of {} round(s), whiskers min–max; each line is labelled with its hub at its right end</text>"#,
        width / 2.0,
        report.settings.runs
    );
    for (i, p) in panels.iter().enumerate() {
        let x0 = PANEL_W * (i % COLUMNS) as f64;
        let y0 = TOP + PANEL_H * (i / COLUMNS) as f64;
        panel(&mut out, p, report.hubs, &ks, x0, y0);
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">↑ higher is better, ↓ lower is better; corewire-1w is corewire with one worker</text>"#,
        width / 2.0,
        height - 8.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_never_overlap_and_stay_in_range() {
        let hubs = [
            (Hub::Corewire, 100.0),
            (Hub::Gotatun, 101.0),
            (Hub::Boringtun, 200.0),
            (Hub::WireguardGo, 199.0),
        ];
        let out = spread(hubs.to_vec(), 11.0, 0.0, 205.0);
        for w in out.windows(2) {
            assert!(w[1].1 - w[0].1 >= 11.0 - 1e-9);
        }
        assert!(out.iter().all(|(_, y)| (0.0..=205.0).contains(y)));
        assert_eq!(out[0].0, Hub::Corewire);
    }

    #[test]
    fn nice_tops() {
        assert_eq!(nice_top(0.0), 1.0);
        assert_eq!(nice_top(3.2), 5.0);
        assert_eq!(nice_top(120.0), 200.0);
        assert_eq!(nice_top(1000.0), 1000.0);
    }
}
