//! Medians, ranges and ratios over the repeated measurements.

use super::cases::{Case, Metric};
use super::impls::Impl;
use super::runner::Measurement;

/// One metric of one (case, implementation) over its successful runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Runs that produced the metric.
    pub n: usize,
    /// Of those, runs flagged noisy.
    pub noisy: usize,
}

/// The median of the values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Summarises `metric` for `case` and `imp` over `measurements`.
pub fn summarize(
    measurements: &[Measurement],
    case: Case,
    imp: Impl,
    metric: &Metric,
) -> Option<Summary> {
    let runs: Vec<(f64, bool)> = measurements
        .iter()
        .filter(|m| m.case == case && m.imp == imp && m.error.is_none())
        .filter_map(|m| {
            let v = *m.metrics.get(metric.key)?;
            v.is_finite()
                .then(|| (v, m.noise.as_ref().is_some_and(|n| n.noisy)))
        })
        .collect();
    let values: Vec<f64> = runs.iter().map(|(v, _)| *v).collect();
    let median = median(&values)?;
    Some(Summary {
        median,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n: values.len(),
        noisy: runs.iter().filter(|(_, noisy)| *noisy).count(),
    })
}

/// `ours / theirs`, when both are usable.
pub fn ratio(ours: f64, theirs: f64) -> Option<f64> {
    let r = ours / theirs;
    (theirs != 0.0 && r.is_finite()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(2.0, 4.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
    }
}
