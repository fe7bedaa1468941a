//! Clipping by the global norm of all gradients together.

use serde::{Deserialize, Serialize};

use super::{Rule, RuleAction, RuleOutcome, check_positive};
use crate::error::Result;
use crate::gradients::Gradients;
use crate::norm::{NormType, total_norm};
use crate::stats::TensorStats;

/// The ε PyTorch adds to the total norm in `clip_grad_norm_`.
pub const NORM_EPS: f64 = 1e-6;

/// PyTorch's clip coefficient: `min(max_norm / (total + 1e-6), 1)`, computed NaN-safely.
///
/// Returns `None` when nothing must change: the coefficient is ≥ 1 (below the threshold, or
/// `max_norm = inf`) or not a number (a NaN or infinite total). Gradients are never multiplied by
/// NaN or inf.
pub fn clip_coefficient(total: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (total + NORM_EPS);
    // NaN-safe: a NaN coefficient fails `coef < 1` and changes nothing.
    if coef < 1.0 && coef.is_finite() {
        Some(coef)
    } else {
        None
    }
}

/// Scales every gradient by one factor so that the global p-norm is at most `max_norm`.
///
/// Formula (PyTorch `torch.nn.utils.clip_grad_norm_`):
/// `total = ‖concat(g)‖_p`; `coef = max_norm / (total + 1e-6)`; `g ← g · min(coef, 1)`.
/// The pre-clip total is returned in the outcome's `norm`.
///
/// Differences, on purpose:
/// - Totals accumulate in f64, so finite gradients of 1e30 clip correctly; PyTorch and Optax
///   overflow to inf there and zero the gradients (PyTorch) or fill them with NaN (Optax).
/// - A NaN or infinite total changes nothing (the non-finite policy decides); PyTorch multiplies by
///   the NaN or zero coefficient. `max_norm = inf` leaves gradients unchanged.
/// - Optax's `clip_by_global_norm` has no ε and only handles p = 2:
///   `g ← g · max_norm / total` when `total ≥ max_norm`, so just above the threshold the two
///   differ by a relative ~1e-6/total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipByGlobalNorm {
    /// The largest allowed global norm (> 0; `inf` disables clipping).
    pub max_norm: f64,
    /// Which p-norm.
    pub norm_type: NormType,
}

impl ClipByGlobalNorm {
    /// A global-norm clip with p = 2, checking `max_norm > 0`.
    pub fn new(max_norm: f64) -> Result<Self> {
        Self::with_norm(max_norm, NormType::L2)
    }

    /// A global-norm clip with any p, checking `max_norm > 0`.
    pub fn with_norm(max_norm: f64, norm_type: NormType) -> Result<Self> {
        check_positive("global-norm max_norm", max_norm, false)?;
        Ok(ClipByGlobalNorm {
            max_norm,
            norm_type,
        })
    }
}

/// Below this, an f32 factor loses precision (f32 normals end at ~1.2e-38; 2⁻¹⁰⁰ leaves margin).
const SMALLEST_ONE_STEP_FACTOR: f64 = 7.888609052210118e-31;

/// Multiplies tensor t by `factors[t]` (1 leaves it untouched) and updates its statistics. A
/// factor too small for an accurate f32 (a total norm of ~1e31 or more) is applied in two steps
/// of √factor each, so clipping 3e38s does not go through a subnormal coefficient.
pub(crate) fn scale_tensors(grads: &mut dyn Gradients, stats: &mut [TensorStats], factors: &[f64]) {
    let first: Vec<f64> = factors
        .iter()
        .map(|&f| {
            if f < SMALLEST_ONE_STEP_FACTOR {
                f.sqrt()
            } else {
                f
            }
        })
        .collect();
    grads.scale(&first);
    let second: Vec<f64> = factors.iter().zip(&first).map(|(f, a)| f / a).collect();
    if second.iter().any(|&f| grads.applied(f) != 1.0) {
        grads.scale(&second);
    }
    for (s, (&a, &b)) in stats.iter_mut().zip(first.iter().zip(&second)) {
        *s = s.scaled(grads.applied(a) * grads.applied(b));
    }
}

/// Clips all tensors by one coefficient computed from `total`; shared by the adaptive rules.
pub(crate) fn scale_all_to(
    rule: &str,
    grads: &mut dyn Gradients,
    stats: &mut [TensorStats],
    total: f64,
    max_norm: f64,
) -> RuleOutcome {
    let mut outcome = RuleOutcome::new(rule, RuleAction::Unchanged);
    outcome.norm = Some(total);
    outcome.threshold = Some(max_norm);
    if !total.is_finite() {
        outcome.action = RuleAction::NonFinite;
        return outcome;
    }
    if let Some(coef) = clip_coefficient(total, max_norm) {
        scale_tensors(grads, stats, &vec![coef; stats.len()]);
        outcome.action = RuleAction::Scaled;
        outcome.scale = Some(coef);
        outcome.tensors_changed = stats.len();
    } else {
        outcome.scale = Some(1.0);
    }
    outcome
}

/// Scales every gradient by PyTorch's coefficient `min(max_norm / (total + 1e-6), 1)` for a total
/// norm computed elsewhere — PyTorch 2.6's `clip_grads_with_norm_`, the second half of
/// `clip_grad_norm_` split in two for pipeline- and tensor-parallel training, where each stage
/// holds part of the gradients and the total is reduced across stages first (sum the stages'
/// Σ|g|^p — [`crate::norm::total_norm`] of each, raised to p — then take the root, never add
/// norms). [`ClipByGlobalNorm`] is `total_norm` followed by this. A NaN or infinite `total`
/// changes nothing (the outcome says `NonFinite`); `stats` is updated to the scaled values.
pub fn clip_with_norm(
    grads: &mut dyn Gradients,
    stats: &mut [TensorStats],
    max_norm: f64,
    total: f64,
) -> RuleOutcome {
    scale_all_to("clip-global", grads, stats, total, max_norm)
}

impl Rule for ClipByGlobalNorm {
    fn name(&self) -> &'static str {
        "clip-global"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let total = total_norm(grads, stats, self.norm_type);
        Ok(clip_with_norm(grads, stats, self.max_norm, total))
    }

    fn needs_finite_input(&self) -> bool {
        true
    }

    fn global_norm_bound(&self) -> Option<(NormType, f64)> {
        Some((self.norm_type, self.max_norm))
    }

    fn on_device(&self) -> Option<crate::guard::DeviceRule> {
        Some(crate::guard::DeviceRule::ClipGlobalNorm {
            max_norm: self.max_norm,
            norm_type: self.norm_type,
        })
    }
}
