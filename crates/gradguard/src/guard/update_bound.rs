//! A bound on the relative size of each tensor's update: the guard's protection from step 0.
//!
//! Spike detectors need a history, so they cannot see the blow-up of a bad initialization in the
//! first steps, which is where most explosions happen. What can be judged without a history and
//! without a user-chosen threshold is the size of a step *relative to the weights it changes*:
//! a healthy step changes a tensor by a small fraction of its norm (typically 1e-4 to 1e-2), an
//! exploding one by orders of magnitude more. The bound is measured on the update the optimizer
//! actually produced, so it holds for SGD, momentum, Adam or any other optimizer, and it is
//! scale-free: multiplying every weight by c multiplies every allowed update by c.
//!
//! With θ all N weights of the model before the step, Δθ the optimizer's update, and for each
//! tensor t its weights w_t (n_t values) and update Δw_t:
//!
//! ```text
//! R        = ‖Δθ‖₂ / ‖θ‖₂                        the step's size relative to the model
//! s        = min(1, τ·m / R)                       τ = max_ratio, m = the guard's LR multiplier
//! floor_t  = rms(θ) · √n_t                         rms(θ) = ‖θ‖₂ / √N
//! r_t      = ‖Δw_t‖₂ / max(‖w_t‖₂, floor_t)
//! scale_t  = s, or τ_t·m / r_t where s·r_t > τ_t·m  τ_t = max_tensor_ratio
//! w_t     ← w_t + scale_t · Δw_t                    (τ·m and τ_t·m never below min_ratio)
//! ```
//!
//! A step with s < 1 backs off m (see [`crate::Guard::check_update`]): the rate shrinks until the
//! steps fit, and recovers after calm steps. τ·m and τ_t·m are floored at `min_ratio`; by default
//! that floor is τ itself, so only the per-tensor backstop tightens with m.
//!
//! The per-tensor ratio is the trust ratio of LARS (You et al. 2017) and LAMB (You et al. 2020),
//! used as a cap instead of a rescaling, on the optimizer's output rather than its input; the
//! global ratio is the update-to-weight ratio practitioners watch (≈ 1e-3 in healthy training).
//! The floor gives a
//! tensor whose weights are (near) zero — a bias initialized to 0 — the room a tensor of the
//! model's typical per-value size would have, instead of none (AGC's fixed ε = 1e-3 would freeze
//! such a bias for the first steps). After a rollback the LR multiplier is halved, so the run
//! does not take the same step into the same blow-up.
//!
//! Alternatives measured and rejected (README "The default guard" has the numbers): a per-tensor
//! bound alone at 0.1 — every layer moving 10% at once compounds over depth and collapsed a deep
//! net to the trivial predictor in 6 steps; a global bound without backing off the rate (106 of
//! 162 grid cells within target at 0.01, against 121 with it); a bound that shrinks with the rate
//! (88); the gradient-norm spike detector with rollback — it fired on the natural growth of the
//! gradient norm when a healthy deep net started learning, while the update bound already keeps
//! an oversized gradient from the weights. Measured later, against the default's 122 on seeds
//! 0–2: faster recovery of the rate (118), backing off only by the factor a step needed (122) or
//! only for steps twice the bound (120), and a per-tensor bound as tight as the global one
//! (0.01: 131), which did not hold on seeds 3–5 (129, as the default).

use serde::{Deserialize, Serialize};

use crate::error::{GuardError, Result};

/// The update bound's setting: the largest relative change a step may make to one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateBound {
    /// τ: the largest ‖Δθ‖ / ‖θ‖ of a step over the whole model.
    ///
    /// Default 0.01, chosen on the lab's MLP grid (README "The default guard"; 162 cells of depth,
    /// gain, rate and activation, 3 seeds each): healthy SGD steps there measured
    /// ‖Δθ‖/‖θ‖ ≈ 0.07 · lr (1e-4 to 0.1 from lr 0.01 to 0.5), an exploding initialization's first
    /// step 1 to 10⁵. Within 10% (+0.02) of the better of `clip-global` and `agc` in 121 cells at
    /// 0.01, against 113 at 0.005, 119 at 0.02 and 97 at 0.03 (each backing off the rate on an
    /// oversized step).
    pub max_ratio: f64,
    /// τ_t: the largest ratio for any one tensor, ‖Δw_t‖ / max(‖w_t‖, floor_t). Default 0.1: a
    /// backstop for one tensor exploding inside a model whose total barely moves.
    pub max_tensor_ratio: f64,
    /// The floor of τ·m and τ_t·m, however far the LR multiplier m has backed off. Default 0.01,
    /// equal to τ: the global bound stays put while the rate backs off. Letting it shrink with m
    /// (floor 0.002) did worse on the grid (88 cells against 121): the rate already shrinks, and
    /// a shrinking bound on top starved the runs that needed many bounded steps.
    pub min_ratio: f64,
}

impl Default for UpdateBound {
    fn default() -> Self {
        UpdateBound {
            max_ratio: 0.01,
            max_tensor_ratio: 0.1,
            min_ratio: 0.01,
        }
    }
}

impl UpdateBound {
    /// Checks the setting: τ must be positive and finite.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("max_ratio", self.max_ratio),
            ("max_tensor_ratio", self.max_tensor_ratio),
            ("min_ratio", self.min_ratio),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(GuardError::InvalidConfig(format!(
                    "update bound {name} must be positive and finite, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// One tensor's weights and update, measured by the adapter after the optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateNorms {
    /// The parameter's name.
    pub name: String,
    /// Number of values.
    pub len: usize,
    /// ‖w‖₂ before the step.
    pub weight: f64,
    /// ‖Δw‖₂ of the optimizer's update.
    pub update: f64,
}

/// What the update bound found and did on one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateCheck {
    /// τ·m, the bound in force on this step.
    pub max_ratio: f64,
    /// ‖Δθ‖ / ‖θ‖ over the whole model before the bound (NaN when non-finite).
    pub global_ratio: f64,
    /// The factor the global bound put on every update (1: untouched; 0 on `revert`).
    pub global_scale: f64,
    /// The largest ratio ‖Δw_t‖ / max(‖w_t‖, floor_t) over the tensors (NaN when an update or
    /// a weight is non-finite).
    pub largest_ratio: f64,
    /// The tensor with the largest ratio.
    pub largest_tensor: Option<String>,
    /// Per tensor, in the order given: the factor on its update (1: untouched).
    pub scales: Vec<f64>,
    /// Tensors whose update was scaled down.
    pub bounded: usize,
    /// A weight or an update is non-finite (an overflow in the optimizer): undo the whole step.
    pub revert: bool,
}

impl UpdateCheck {
    /// Whether the step must be changed at all.
    pub fn changes_anything(&self) -> bool {
        self.revert || self.bounded > 0
    }
}

/// Judges one step's update under `bound`, with the guard's current LR multiplier.
///
/// A model whose weights are all zero has no scale to be relative to: its updates pass.
pub fn check_update(bound: &UpdateBound, lr_multiplier: f64, norms: &[UpdateNorms]) -> UpdateCheck {
    let max_ratio = (bound.max_ratio * lr_multiplier).max(bound.min_ratio.min(bound.max_ratio));
    let max_tensor_ratio =
        (bound.max_tensor_ratio * lr_multiplier).max(bound.min_ratio.min(bound.max_tensor_ratio));
    let finite = norms
        .iter()
        .all(|n| n.weight.is_finite() && n.update.is_finite());
    if !finite {
        let culprit = norms
            .iter()
            .find(|n| !(n.weight.is_finite() && n.update.is_finite()));
        return UpdateCheck {
            max_ratio,
            global_ratio: f64::NAN,
            global_scale: 0.0,
            largest_ratio: f64::NAN,
            largest_tensor: culprit.map(|n| n.name.clone()),
            scales: vec![0.0; norms.len()],
            bounded: 0,
            revert: true,
        };
    }
    let weight_sq: f64 = norms.iter().map(|n| n.weight * n.weight).sum();
    let update_sq: f64 = norms.iter().map(|n| n.update * n.update).sum();
    let total_len: usize = norms.iter().map(|n| n.len).sum();
    let rms = if total_len == 0 {
        0.0
    } else {
        (weight_sq / total_len as f64).sqrt()
    };
    // ‖Δθ‖/‖θ‖; a model whose weights are all zero has no scale to be relative to.
    let global_ratio = if weight_sq > 0.0 {
        (update_sq / weight_sq).sqrt()
    } else {
        0.0
    };
    let global_scale = if global_ratio > max_ratio {
        max_ratio / global_ratio
    } else {
        1.0
    };
    let mut check = UpdateCheck {
        max_ratio,
        global_ratio,
        global_scale,
        largest_ratio: 0.0,
        largest_tensor: None,
        scales: Vec::with_capacity(norms.len()),
        bounded: 0,
        revert: false,
    };
    for n in norms {
        let reference = n.weight.max(rms * (n.len as f64).sqrt());
        let ratio = if reference > 0.0 {
            n.update / reference
        } else {
            0.0
        };
        if ratio > check.largest_ratio {
            check.largest_ratio = ratio;
            check.largest_tensor = Some(n.name.clone());
        }
        let after_global = ratio * global_scale;
        let scale = if after_global > max_tensor_ratio {
            max_tensor_ratio / ratio
        } else {
            global_scale
        };
        check.bounded += usize::from(scale < 1.0);
        check.scales.push(scale);
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    /// τ = τ_t = 0.1, round numbers for hand-checked cases.
    fn tenth() -> UpdateBound {
        UpdateBound {
            max_ratio: 0.1,
            max_tensor_ratio: 0.1,
            min_ratio: 0.002,
        }
    }

    fn norms(weight: f64, update: f64, len: usize) -> UpdateNorms {
        UpdateNorms {
            name: format!("t{len}"),
            len,
            weight,
            update,
        }
    }

    #[test]
    fn small_updates_pass_untouched() {
        let c = check_update(&tenth(), 1.0, &[norms(10.0, 0.5, 100), norms(2.0, 0.1, 4)]);
        assert_eq!(c.scales, vec![1.0, 1.0]);
        assert!(!c.changes_anything());
        assert!((c.largest_ratio - 0.05).abs() < 1e-12);
        assert!((c.global_ratio - (0.26f64 / 104.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn one_exploding_tensor_is_cut_on_its_own() {
        // Globally small (a big quiet tensor), but 4 values move by 5x their norm.
        let c = check_update(
            &tenth(),
            1.0,
            &[norms(1000.0, 0.0, 10_000), norms(1.0, 5.0, 4)],
        );
        assert_eq!(c.scales[0], 1.0);
        let rms = (1_000_001.0f64 / 10_004.0).sqrt();
        let ratio = 5.0 / (rms * 2.0);
        assert!((c.scales[1] - 0.1 / ratio).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn the_bound_never_falls_below_its_floor() {
        let c = check_update(&tenth(), 1e-6, &[norms(10.0, 1.0, 100)]);
        assert_eq!(c.max_ratio, tenth().min_ratio);
    }

    #[test]
    fn a_large_update_is_scaled_to_the_bound() {
        let c = check_update(&tenth(), 1.0, &[norms(10.0, 50.0, 100)]);
        assert_eq!(c.bounded, 1);
        // ratio 5, τ 0.1: the update becomes 1, a tenth of the weights' norm.
        assert!((c.scales[0] * 50.0 - 1.0).abs() < 1e-12);
        assert!((c.global_scale - 0.02).abs() < 1e-12);
    }

    #[test]
    fn a_zero_bias_gets_the_room_of_a_typical_tensor() {
        // 100 weights of norm 10 (rms ≈ 0.98 over 104 values), a zero bias of 4 values.
        let c = check_update(&tenth(), 1.0, &[norms(10.0, 0.0, 100), norms(0.0, 0.1, 4)]);
        let rms = (100.0f64 / 104.0).sqrt();
        assert!((c.largest_ratio - 0.1 / (rms * 2.0)).abs() < 1e-12);
        assert_eq!(c.bounded, 0);
    }

    #[test]
    fn the_multiplier_tightens_the_bound() {
        let c = check_update(&tenth(), 0.25, &[norms(10.0, 0.5, 100)]);
        assert_eq!(c.bounded, 1);
        assert!((c.scales[0] - 0.025 / 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_non_finite_update_reverts_the_step() {
        let c = check_update(
            &tenth(),
            1.0,
            &[norms(1.0, 0.1, 1), norms(1.0, f64::INFINITY, 1)],
        );
        assert!(c.revert);
        assert_eq!(c.largest_tensor.as_deref(), Some("t1"));
        let c = check_update(&tenth(), 1.0, &[norms(f64::NAN, 0.0, 1)]);
        assert!(c.revert);
    }

    #[test]
    fn all_zero_weights_pass() {
        let c = check_update(&tenth(), 1.0, &[norms(0.0, 3.0, 10)]);
        assert_eq!(c.scales, vec![1.0]);
    }

    #[test]
    fn bad_settings_are_refused() {
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let bound = UpdateBound {
                max_ratio: t,
                ..UpdateBound::default()
            };
            assert!(bound.validate().is_err());
        }
    }
}
