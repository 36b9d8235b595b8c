//! `results.svg`: one small bar chart per charted metric (see
//! `Metric::chart`), one bar per implementation at its median with a
//! min–max whisker, in a grid, with a legend. Plain SVG, no dependencies.

use std::fmt::Write as _;

use super::{Report, Row};
use crate::harness::impls::Impl;
use crate::harness::runner::fmt_value;

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 210.0;
const COLUMNS: usize = 3;
const TOP: f64 = 70.0;
/// The veth bar is cut when it is this many times the highest tunnel.
const CLIP_FACTOR: f64 = 3.0;

fn color(imp: Impl) -> &'static str {
    match imp {
        Impl::Corewire => "#d62728",
        Impl::WireguardGo => "#1f77b4",
        Impl::Boringtun => "#ff7f0e",
        Impl::Gotatun => "#2ca02c",
        Impl::Veth => "#8c8c8c",
    }
}

/// Text made safe for SVG (XML) content and attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn panel(out: &mut String, row: &Row, impls: &[Impl], x0: f64, y0: f64) {
    let title = format!(
        "{}: {} ({} {})",
        row.case.name(),
        row.metric.label,
        row.metric.unit,
        row.metric.better.arrow()
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" font-weight="bold" text-anchor="middle">{}</text>"#,
        x0 + PANEL_W / 2.0,
        y0 + 16.0,
        escape(&title)
    );
    let (plot_x, plot_y, plot_w, plot_h) = (x0 + 20.0, y0 + 34.0, PANEL_W - 40.0, PANEL_H - 70.0);
    let base = plot_y + plot_h;
    let _ = writeln!(
        out,
        r##"<line x1="{plot_x:.1}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#444"/>"##,
        plot_x + plot_w
    );
    let highest = |veth: bool| {
        row.cells
            .iter()
            .filter(|(imp, _)| (*imp == Impl::Veth) == veth)
            .filter_map(|(_, s)| s.as_ref().map(|s| s.max.max(s.median)))
            .fold(0.0_f64, f64::max)
    };
    let (tunnels, veth) = (highest(false), highest(true));
    // A baseline far above every tunnel would flatten their bars: scale to
    // the tunnels and cut the veth bar (marked with a break).
    let clip_veth = tunnels > 0.0 && veth > CLIP_FACTOR * tunnels;
    let top = if clip_veth {
        tunnels
    } else {
        tunnels.max(veth)
    };
    if top <= 0.0 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">no data</text>"#,
            x0 + PANEL_W / 2.0,
            plot_y + plot_h / 2.0
        );
        return;
    }
    let scale = plot_h / (top * 1.12);
    let slot = plot_w / impls.len().max(1) as f64;
    let bar_w = slot * 0.6;
    for (i, &imp) in impls.iter().enumerate() {
        let cx = plot_x + slot * (i as f64 + 0.5);
        let Some(s) = row.get(imp) else {
            let label = if imp == Impl::Veth && row.metric.tunnel_only {
                "n/a"
            } else {
                "–"
            };
            let _ = writeln!(
                out,
                r#"<text x="{cx:.1}" y="{:.1}" font-size="10" text-anchor="middle">{label}</text>"#,
                base - 4.0
            );
            continue;
        };
        let clipped = clip_veth && imp == Impl::Veth;
        let full = plot_h * 1.02;
        let h = (s.median * scale).min(full);
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{}"><title>{}: {} (min {}, max {}, {} runs)</title></rect>"#,
            cx - bar_w / 2.0,
            base - h,
            color(imp),
            imp.name(),
            fmt_value(s.median),
            fmt_value(s.min),
            fmt_value(s.max),
            s.n
        );
        if clipped {
            // A white zigzag across the bar: the axis is broken here.
            let y = base - full * 0.75;
            let _ = writeln!(
                out,
                r##"<path d="M{:.1} {:.1}l{:.1} -6l{:.1} 6l{:.1} -6" stroke="#ffffff" stroke-width="3" fill="none"/>"##,
                cx - bar_w / 2.0 - 2.0,
                y + 3.0,
                bar_w / 3.0 + 1.0,
                bar_w / 3.0 + 1.0,
                bar_w / 3.0 + 1.0
            );
        } else if s.n > 1 {
            let (y_min, y_max) = (base - s.min * scale, base - s.max * scale);
            let _ = writeln!(
                out,
                r##"<path d="M{cx:.1} {y_min:.1}V{y_max:.1}M{:.1} {y_min:.1}h8M{:.1} {y_max:.1}h8" stroke="#222" fill="none"/>"##,
                cx - 4.0,
                cx - 4.0
            );
        }
        let label_y = if clipped {
            base - full - 4.0
        } else {
            (base - s.max.max(s.median) * scale - 4.0).max(plot_y - 2.0)
        };
        let noisy = if s.noisy > 0 { "*" } else { "" };
        let _ = writeln!(
            out,
            r#"<text x="{cx:.1}" y="{label_y:.1}" font-size="10" text-anchor="middle">{}{noisy}</text>"#,
            fmt_value(s.median)
        );
    }
}

pub fn render(report: &Report<'_>, rows: &[Row]) -> String {
    let charted: Vec<&Row> = rows.iter().filter(|r| r.metric.chart).collect();
    let panel_rows = charted.len().div_ceil(COLUMNS).max(1);
    let width = PANEL_W * COLUMNS as f64;
    let height = TOP + PANEL_H * panel_rows as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="22" font-size="15" font-weight="bold" text-anchor="middle">netbench: {} vCPUs ({}), kernel {} — medians of {} run(s) × {} s, whiskers min–max</text>"#,
        width / 2.0,
        report.machine.nproc,
        escape(&report.machine.cpu_model),
        escape(&report.machine.kernel),
        report.settings.runs,
        report.settings.seconds
    );
    let legend_w = 130.0;
    let legend_x0 = (width - legend_w * report.impls.len() as f64) / 2.0;
    for (i, &imp) in report.impls.iter().enumerate() {
        let x = legend_x0 + legend_w * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="36" width="12" height="12" fill="{}"/><text x="{:.1}" y="46" font-size="12">{}</text>"#,
            color(imp),
            x + 16.0,
            imp.name()
        );
    }
    for (i, row) in charted.iter().enumerate() {
        let x0 = PANEL_W * (i % COLUMNS) as f64;
        let y0 = TOP + PANEL_H * (i / COLUMNS) as f64;
        panel(&mut out, row, report.impls, x0, y0);
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">↑ higher is better, ↓ lower is better; * some runs were flagged noisy (another process took CPU); a broken bar is cut to fit</text>"#,
        width / 2.0,
        height - 10.0
    );
    out.push_str("</svg>\n");
    out
}
