//! Clipping every gradient value into `[-limit, limit]`.

use serde::{Deserialize, Serialize};

use super::{Rule, RuleAction, RuleOutcome, check_positive};
use crate::error::Result;
use crate::gradients::Gradients;
use crate::stats::TensorStats;

/// Clamps every value to `[-limit, limit]`.
///
/// Formula: `g ← clamp(g, -limit, limit)` — PyTorch `clip_grad_value_(clip_value=limit)` and Optax
/// `clip(max_delta=limit)` agree here, including NaN staying NaN and ±inf becoming ±limit.
/// The gradients are only written when some |g| exceeds the limit (known from the statistics), so
/// below the limit they come back bit-for-bit unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipByValue {
    /// The largest allowed |g| (≥ 0; `inf` disables clipping).
    pub limit: f64,
}

impl ClipByValue {
    /// A value clip, checking `limit >= 0`.
    pub fn new(limit: f64) -> Result<Self> {
        check_positive("clip value", limit, true)?;
        Ok(ClipByValue { limit })
    }
}

impl Rule for ClipByValue {
    fn name(&self) -> &'static str {
        "clip-value"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let limit = grads.applied(self.limit);
        let mut outcome = RuleOutcome::new(self.name(), RuleAction::Unchanged);
        outcome.threshold = Some(self.limit);
        outcome.norm = stats.iter().map(|s| s.max_abs).reduce(f64::max);
        let exceeding = stats
            .iter()
            .filter(|s| s.max_abs > limit || s.inf_count > 0)
            .count();
        if exceeding > 0 {
            let fresh = grads.clamp(limit);
            stats.copy_from_slice(&fresh);
            outcome.action = RuleAction::Clamped;
            outcome.tensors_changed = exceeding;
        }
        Ok(outcome)
    }
}
