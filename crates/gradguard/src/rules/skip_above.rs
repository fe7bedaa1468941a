//! Skipping updates whose global norm is too large.

use serde::{Deserialize, Serialize};

use super::{Rule, RuleAction, RuleOutcome, check_positive};
use crate::error::Result;
use crate::gradients::Gradients;
use crate::norm::{NormType, total_norm};
use crate::stats::TensorStats;

/// Asks the guard to skip the step when the global norm exceeds `limit` (or is not finite).
///
/// Source: Optax's `skip_large_updates` (with `apply_if_finite`-style skipping): an update whose
/// norm is above the limit is dropped whole rather than scaled, so one outlier batch cannot move the
/// weights at all. Gradients are never changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SkipIfNormAbove {
    /// The largest global norm that is still applied.
    pub limit: f64,
    /// Which p-norm.
    pub norm_type: NormType,
}

impl SkipIfNormAbove {
    /// A skip rule, checking `limit > 0`.
    pub fn new(limit: f64, norm_type: NormType) -> Result<Self> {
        check_positive("skip limit", limit, false)?;
        Ok(SkipIfNormAbove { limit, norm_type })
    }
}

impl Rule for SkipIfNormAbove {
    fn name(&self) -> &'static str {
        "skip-above"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let total = total_norm(grads, stats, self.norm_type);
        // NaN-safe: a NaN total is not "≤ limit", so it skips.
        let action = if total <= self.limit {
            RuleAction::Unchanged
        } else {
            RuleAction::Skip
        };
        let mut outcome = RuleOutcome::new(self.name(), action);
        outcome.norm = Some(total);
        outcome.threshold = Some(self.limit);
        Ok(outcome)
    }

    fn skip_limit(&self) -> Option<(NormType, f64)> {
        Some((self.norm_type, self.limit))
    }

    fn on_device(&self) -> Option<crate::guard::DeviceRule> {
        Some(crate::guard::DeviceRule::SkipAbove {
            limit: self.limit,
            norm_type: self.norm_type,
        })
    }
}
