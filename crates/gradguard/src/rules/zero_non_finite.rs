//! Replacing NaN and ±inf gradient values by zero.

use super::{Rule, RuleAction, RuleOutcome};
use crate::error::Result;
use crate::gradients::Gradients;
use crate::stats::TensorStats;

/// Sets every NaN and ±inf gradient value to 0 and leaves finite values untouched.
///
/// Optax's `zero_nans` zeroes NaN only; this also zeroes ±inf, since an infinite gradient is no
/// more usable than a NaN. It belongs first in a chain: norm-based rules cannot act on a non-finite
/// norm, and [`super::Chain`] rejects it after them. Gradients are only written when the statistics
/// show a non-finite value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroNonFinite;

impl Rule for ZeroNonFinite {
    fn name(&self) -> &'static str {
        "zero-non-finite"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let bad = stats.iter().filter(|s| !s.is_finite()).count();
        let mut outcome = RuleOutcome::new(self.name(), RuleAction::Unchanged);
        outcome.norm = Some(stats.iter().map(|s| s.non_finite() as f64).sum());
        if bad > 0 {
            let fresh = grads.zero_non_finite();
            stats.copy_from_slice(&fresh);
            outcome.action = RuleAction::Zeroed;
            outcome.tensors_changed = bad;
        }
        Ok(outcome)
    }

    fn repairs_non_finite(&self) -> bool {
        true
    }

    fn unique_in_chain(&self) -> bool {
        true
    }
}
