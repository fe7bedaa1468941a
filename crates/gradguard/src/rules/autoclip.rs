//! AutoClip: clip to a percentile of the gradient-norm history (Seetharaman et al. 2020).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::global_norm::scale_all_to;
use super::{Rule, RuleOutcome, parse_state};
use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::norm::{NormType, total_norm};
use crate::stats::TensorStats;

/// Clips the global L2 norm to the `percentile`-th percentile of the norms seen so far.
///
/// Source: Seetharaman, Wichern, Pardo, Le Roux, "AutoClip: Adaptive Gradient Clipping for Source
/// Separation Networks" (MLSP 2020). Each step: append the current norm ‖g‖₂ to the history, take
/// `threshold = percentile(history, p)` (linear interpolation, as `numpy.percentile`), then clip as
/// [`super::ClipByGlobalNorm`] with that threshold. The paper keeps the whole history; here it is a
/// window of the last `window` finite norms, so memory is bounded and the threshold can follow a
/// drifting scale. Non-finite norms never enter the history.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoClip {
    percentile: f64,
    window: usize,
    history: VecDeque<f64>,
}

#[derive(Serialize, Deserialize)]
struct AutoClipState {
    history: Vec<f64>,
}

impl AutoClip {
    /// AutoClip at `percentile` ∈ [0, 100] (the paper recommends 10) over the last `window` ≥ 1
    /// norms.
    pub fn new(percentile: f64, window: usize) -> Result<Self> {
        if !(0.0..=100.0).contains(&percentile) {
            return Err(GuardError::InvalidConfig(format!(
                "AutoClip percentile must be in [0, 100], got {percentile}"
            )));
        }
        if window == 0 {
            return Err(GuardError::InvalidConfig(
                "AutoClip window must be at least 1".into(),
            ));
        }
        Ok(AutoClip {
            percentile,
            window,
            history: VecDeque::with_capacity(window.min(1 << 16)),
        })
    }

    /// The norms in the window, oldest first.
    pub fn history(&self) -> impl Iterator<Item = f64> + '_ {
        self.history.iter().copied()
    }
}

impl Default for AutoClip {
    fn default() -> Self {
        AutoClip::new(10.0, 1000).expect("defaults are valid")
    }
}

/// The q-th percentile (0–100) of `values` with linear interpolation between closest ranks
/// (`numpy.percentile`'s default method). `values` must not be empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    let n = values.len();
    let rank = q / 100.0 * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (_, &mut lo_value, upper) = values.select_nth_unstable_by(lo, f64::total_cmp);
    if hi == lo {
        return lo_value;
    }
    // The next order statistic is the smallest of the upper part.
    let hi_value = upper.iter().copied().fold(f64::INFINITY, f64::min);
    lo_value + (hi_value - lo_value) * (rank - lo as f64)
}

impl Rule for AutoClip {
    fn name(&self) -> &'static str {
        "autoclip"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let total = total_norm(grads, stats, NormType::L2);
        if !total.is_finite() {
            return Ok(RuleOutcome::untouched(self.name(), total));
        }
        if self.history.len() == self.window {
            self.history.pop_front();
        }
        self.history.push_back(total);
        let mut scratch: Vec<f64> = self.history.iter().copied().collect();
        let threshold = percentile(&mut scratch, self.percentile);
        if threshold <= 0.0 {
            // Every norm so far was 0: there is nothing to clip and no scale to clip to.
            return Ok(RuleOutcome {
                threshold: Some(threshold),
                ..RuleOutcome::untouched(self.name(), total)
            });
        }
        Ok(scale_all_to(self.name(), grads, stats, total, threshold))
    }

    fn needs_finite_input(&self) -> bool {
        true
    }

    fn unique_in_chain(&self) -> bool {
        true
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(AutoClipState {
            history: self.history.iter().copied().collect(),
        })
        .expect("plain data serializes")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: AutoClipState = parse_state(self.name(), state)?;
        if s.history.len() > self.window || s.history.iter().any(|x| !x.is_finite()) {
            return Err(GuardError::BadState {
                what: self.name().into(),
                reason: format!(
                    "history of {} values does not fit a window of {} finite norms",
                    s.history.len(),
                    self.window
                ),
            });
        }
        self.history = s.history.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], q) for q = 0, 10, 50, 100 → 1.0, 1.3, 2.5, 4.0
        for (q, expected) in [(0.0, 1.0), (10.0, 1.3), (50.0, 2.5), (100.0, 4.0)] {
            let mut v = vec![4.0, 1.0, 3.0, 2.0];
            assert!((percentile(&mut v, q) - expected).abs() < 1e-12, "q={q}");
        }
    }
}
