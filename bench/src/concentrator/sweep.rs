//! What one traffic step measured, and the sweep of offered rates up to
//! saturation.

use anyhow::Result;
use hdrhistogram::Histogram;

/// What one step measured.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub offered_pps: f64,
    /// Datagrams the sender handed to the kernel, and its rate.
    pub sent: u64,
    pub sent_pps: f64,
    /// Datagrams that arrived at the far side.
    pub delivered: u64,
    pub wall_s: f64,
    /// The sending thread's CPU seconds (the generator's, or the LAN's).
    pub sender_cpu_s: f64,
    /// The hub's CPU seconds during the step.
    pub hub_cpu_s: f64,
    /// Checked datagrams that were right and wrong.
    pub sample_ok: u64,
    pub sample_bad: u64,
    /// One-way delays in nanoseconds (fleet -> LAN only).
    pub latency_ns: Option<Histogram<u64>>,
}

impl Step {
    /// A step's counts and times (no sample, no latency yet).
    pub fn timed(
        offered_pps: f64,
        sent: u64,
        delivered: u64,
        wall_s: f64,
        sender_cpu_s: f64,
        hub_cpu_s: f64,
    ) -> Step {
        Step {
            offered_pps,
            sent,
            sent_pps: sent as f64 / wall_s.max(1e-6),
            delivered,
            wall_s,
            sender_cpu_s,
            hub_cpu_s,
            ..Step::default()
        }
    }

    pub fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.wall_s.max(1e-6)
    }

    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - (self.delivered as f64 / self.sent as f64).min(1.0)
    }

    /// The sender could not offer the rate: the sender, not the hub, was
    /// the limit.
    pub fn sender_bound(&self) -> bool {
        self.sent_pps < 0.9 * self.offered_pps
    }
}

/// A sweep of offered rates: `start`, then times `factor`, until the hub
/// loses more than `max_loss` or the sender cannot offer the rate, at most
/// `steps` steps.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    pub start_pps: f64,
    pub factor: f64,
    pub steps: usize,
    pub max_loss: f64,
}

impl Sweep {
    /// Runs steps through `step(rate)`; returns them all.
    pub fn run(&self, mut step: impl FnMut(f64) -> Result<Step>) -> Result<Vec<Step>> {
        let mut out: Vec<Step> = Vec::new();
        let mut rate = self.start_pps;
        for _ in 0..self.steps {
            let s = step(rate)?;
            let saturated = s.loss() > self.max_loss || s.sender_bound();
            out.push(s);
            if saturated {
                break;
            }
            rate *= self.factor;
        }
        Ok(out)
    }
}

/// The step with the most delivered packets per second.
pub fn best(steps: &[Step]) -> Option<&Step> {
    steps
        .iter()
        .max_by(|a, b| a.delivered_pps().total_cmp(&b.delivered_pps()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_stops_at_saturation() {
        let sweep = Sweep {
            start_pps: 10.0,
            factor: 2.0,
            steps: 10,
            max_loss: 0.05,
        };
        let steps = sweep
            .run(|rate| {
                let delivered = rate.min(35.0) as u64;
                Ok(Step {
                    offered_pps: rate,
                    sent: rate as u64,
                    sent_pps: rate,
                    delivered,
                    wall_s: 1.0,
                    ..Step::default()
                })
            })
            .expect("no error");
        let rates: Vec<f64> = steps.iter().map(|s| s.offered_pps).collect();
        assert_eq!(rates, [10.0, 20.0, 40.0]);
        assert_eq!(best(&steps).map(|s| s.delivered), Some(35));
    }
}
