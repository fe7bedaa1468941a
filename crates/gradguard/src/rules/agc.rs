//! Adaptive gradient clipping, unit-wise (Brock et al. 2021).

use serde::{Deserialize, Serialize};

use super::{Rule, RuleAction, RuleOutcome, check_positive};
use crate::error::Result;
use crate::gradients::{Gradients, Source, UnitLayout};
use crate::stats::TensorStats;

/// Guards the division when a unit's gradient norm is 0 (Optax's `div_eps`).
const DIV_EPS: f64 = 1e-6;

/// Clips each unit's gradient relative to the norm of the unit's weights.
///
/// Source: Brock, De, Smith, Simonyan, "High-Performance Large-Scale Image Recognition Without
/// Normalization" (NFNets, 2021), §4.1; formula and defaults as Optax's `adaptive_grad_clip`:
///
/// `max_u = λ · max(‖W_u‖, ε)`; if `‖G_u‖ < max_u` keep `G_u`, else
/// `G_u ← G_u · max_u / max(‖G_u‖, 1e-6)`,
///
/// where `u` runs over units (output neurons / channels, see [`UnitLayout`]), λ = `clipping` and
/// ε = `eps` (default 1e-3). NaN-safe where Optax is not: a unit whose gradient norm is NaN or inf
/// is left unchanged (Optax multiplies by NaN there); a non-finite weight is a broken model and
/// answers [`crate::GuardError::NonFiniteParameter`], naming the tensor and unit, for the guard's
/// non-finite policy to decide (Optax propagates the NaN into the gradients).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveGradClip {
    /// λ, the allowed ratio of gradient norm to weight norm per unit (NFNets used 0.01–0.16).
    pub clipping: f64,
    /// ε, the floor on weight norms so zero-initialised units can still move (default 1e-3).
    pub eps: f64,
    /// Which axis holds the units.
    pub layout: UnitLayout,
}

impl Default for AdaptiveGradClip {
    fn default() -> Self {
        AdaptiveGradClip {
            clipping: 0.01,
            eps: 1e-3,
            layout: UnitLayout::InputFirst,
        }
    }
}

impl AdaptiveGradClip {
    /// AGC with ratio λ = `clipping` and the default ε = 1e-3, checking both.
    pub fn new(clipping: f64) -> Result<Self> {
        AdaptiveGradClip {
            clipping,
            ..Default::default()
        }
        .validated()
    }

    /// Checks that λ > 0 and ε ≥ 0.
    pub fn validated(self) -> Result<Self> {
        check_positive("AGC clipping ratio", self.clipping, false)?;
        check_positive("AGC eps", self.eps, true)?;
        Ok(self)
    }

    /// The factor for one unit, or `None` to leave it unchanged.
    pub fn unit_factor(&self, grad_norm: f64, param_norm: f64) -> Option<f64> {
        let max_norm = self.clipping * param_norm.max(self.eps);
        if !grad_norm.is_finite() || !max_norm.is_finite() || grad_norm < max_norm {
            return None;
        }
        let factor = max_norm / grad_norm.max(DIV_EPS);
        (factor < 1.0).then_some(factor)
    }
}

impl Rule for AdaptiveGradClip {
    fn name(&self) -> &'static str {
        "agc"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let grad_norms = grads.unit_norms(Source::Gradient, self.layout)?;
        let param_norms = grads
            .unit_norms(Source::Parameter, self.layout)
            .map_err(|_| crate::GuardError::MissingParameters {
                rule: self.name().into(),
            })?;
        // A NaN weight would vanish in `max(‖W_u‖, ε)` (f64::max drops NaN) and clip the unit to
        // λ·ε: a broken model must be named instead, for the guard's non-finite policy.
        for (t, norms) in param_norms.iter().enumerate() {
            if let Some(unit) = norms.iter().position(|n| !n.is_finite()) {
                return Err(crate::GuardError::NonFiniteParameter {
                    step: 0,
                    rule: self.name().into(),
                    tensor: grads.name(t).to_string(),
                    unit,
                    value: if norms[unit].is_nan() { "NaN" } else { "inf" }.into(),
                });
            }
        }
        let factors: Vec<Option<Vec<f64>>> = grad_norms
            .iter()
            .zip(&param_norms)
            .map(|(g, p)| {
                let f: Vec<f64> = g
                    .iter()
                    .zip(p)
                    .map(|(&gn, &pn)| self.unit_factor(gn, pn).map_or(1.0, |f| grads.applied(f)))
                    .collect();
                f.iter().any(|&x| x != 1.0).then_some(f)
            })
            .collect();
        let mut outcome = RuleOutcome::new(self.name(), RuleAction::Unchanged);
        outcome.threshold = Some(self.clipping);
        outcome.tensors_changed = factors.iter().filter(|f| f.is_some()).count();
        if outcome.tensors_changed > 0 {
            let fresh = grads.scale_units(self.layout, &factors)?;
            for (s, new) in stats.iter_mut().zip(fresh) {
                if let Some(new) = new {
                    *s = new;
                }
            }
            outcome.action = RuleAction::Scaled;
        }
        Ok(outcome)
    }

    fn needs_finite_input(&self) -> bool {
        true
    }

    fn needs_parameters(&self) -> bool {
        true
    }
}
