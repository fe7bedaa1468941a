//! Clipping each tensor by its own norm.

use serde::{Deserialize, Serialize};

use super::global_norm::scale_tensors;
use super::{Rule, RuleAction, RuleOutcome, check_positive, clip_coefficient};
use crate::error::Result;
use crate::gradients::Gradients;
use crate::norm::{NormType, tensor_norms};
use crate::stats::TensorStats;

/// Scales each tensor on its own so that its p-norm is at most `max_norm`.
///
/// Formula: for each tensor t, `coef_t = max_norm / (‖g_t‖_p + 1e-6)`, `g_t ← g_t · min(coef_t, 1)`
/// — PyTorch's `clip_grad_norm_` applied to one tensor at a time. This is what Burn's
/// `GradientClipping::Norm` does; note it is *not* a global norm: the direction of the full update
/// changes. A tensor whose norm is NaN or inf is left unchanged (the non-finite policy decides).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipPerTensorNorm {
    /// The largest allowed norm of any one tensor (> 0; `inf` disables clipping).
    pub max_norm: f64,
    /// Which p-norm.
    pub norm_type: NormType,
}

impl ClipPerTensorNorm {
    /// A per-tensor clip, checking `max_norm > 0`.
    pub fn new(max_norm: f64, norm_type: NormType) -> Result<Self> {
        check_positive("per-tensor max_norm", max_norm, false)?;
        Ok(ClipPerTensorNorm {
            max_norm,
            norm_type,
        })
    }
}

impl Rule for ClipPerTensorNorm {
    fn name(&self) -> &'static str {
        "clip-norm"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let norms = tensor_norms(grads, stats, self.norm_type);
        let factors: Vec<f64> = norms
            .iter()
            .map(|&n| clip_coefficient(n, self.max_norm).unwrap_or(1.0))
            .collect();
        let changed = factors.iter().filter(|&&f| f != 1.0).count();
        let mut outcome = RuleOutcome::new(self.name(), RuleAction::Unchanged);
        outcome.norm = norms.iter().copied().reduce(f64::max);
        outcome.threshold = Some(self.max_norm);
        if changed > 0 {
            scale_tensors(grads, stats, &factors);
            outcome.action = RuleAction::Scaled;
        }
        outcome.tensors_changed = changed;
        Ok(outcome)
    }

    fn needs_finite_input(&self) -> bool {
        true
    }
}
