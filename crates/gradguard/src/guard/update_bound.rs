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
//! r_u      = ‖Δw_u‖₂ / max(‖w_u‖₂, rms(θ)·√n_u)   each unit u (n_u values) of each tensor
//! Δw_u    ← Δw_u · min(1, τ_u·m / r_u)             τ_u = max_unit_ratio (first; AGC on the update)
//! R        = ‖Δθ‖₂ / ‖θ‖₂                        the step's size relative to the model
//! s        = min(1, τ·m / R)                       τ = max_ratio, m = the guard's LR multiplier
//! floor_t  = rms(θ) · √n_t                         rms(θ) = ‖θ‖₂ / √N
//! r_t      = ‖Δw_t‖₂ / max(‖w_t‖₂, floor_t)
//! scale_t  = s, or τ_t·m / r_t where s·r_t > τ_t·m  τ_t = max_tensor_ratio
//! w_t     ← w_t + scale_t · Δw_t                    (τ·m and τ_t·m never below min_ratio)
//! ```
//!
//! A step with s < 1 backs off m (see [`crate::Guard::guarded_step`]): the rate shrinks until the
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
//! The unit-wise bound is AGC (Brock et al. 2021) moved from the gradient onto the optimizer's
//! update: for plain SGD at rate η it is AGC with λ = τ_u/η (tested), for any other optimizer
//! the same cap on what the step does to each neuron. It is what the deep tanh nets at high
//! rates, where AGC beat every other rule, needed from the default (docs/library.md "The default guard").
//!
//! # Two families of optimizers, two sets of limits
//!
//! An optimizer whose update is the gradient times the rate (SGD, with or without momentum) moves
//! a unit by as much as its gradient says: there the unit-wise bound is AGC and the global bound
//! with its back-off catches an exploding gradient. An optimizer that normalizes each coordinate
//! (Adam, AdamW, Adagrad, Lion, …) moves every weight by about the rate whatever the gradient's
//! size, so the same limits become a cap on the rate itself — one that a healthy AdamW run at its
//! best rate can exceed on most units of every step. The bound therefore recognizes the family
//! from the first update it judges ([`UpdateFamily::recognize`]: a normalizing optimizer's first
//! step moves every unit by the rate per value, `‖Δw_u‖ = η·√n_u`) and applies its own limits to
//! normalizing optimizers ([`UpdateBound::normalized`]: by default no unit-wise bound, τ = 0.015,
//! and an LR multiplier that follows the steps), loose enough to leave a healthy run untouched,
//! tight enough to bring a rate tens of times too large down. The measurements that chose every
//! number are in `docs/measurements/`.

use serde::{Deserialize, Serialize};

use crate::error::{GuardError, Result};
use crate::gradients::UnitLayout;

/// The update bound's setting: the largest relative change a step may make to one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateBound {
    /// τ: the largest ‖Δθ‖ / ‖θ‖ of a step over the whole model.
    ///
    /// Default 0.01, chosen on the lab's MLP grid (docs/library.md "The default guard"; 162 cells of depth,
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
    /// τ_u: the largest ‖Δw_u‖ / max(‖w_u‖, rms(θ)·√n_u) of any unit u — an output neuron or
    /// channel of n_u values, the units of AGC in [`Self::unit_layout`] — times the LR
    /// multiplier m; `None` switches the unit-wise bound off. The floor is the per-tensor
    /// bound's: a unit of near-zero weights (a bias initialized to 0) gets the room of a typical
    /// unit of its size, where AGC's fixed ε = 1e-3 would hold it still (and is not scale-free).
    ///
    /// Default 0.005. This is AGC (Brock et al. 2021) moved from the gradient to the update the
    /// optimizer produced, so that it holds for any optimizer and any rate: for SGD at rate η it
    /// is AGC with λ = τ_u/η. Measured on the lab's grids (docs/library.md "The default guard"): with it
    /// the default guard is within 10% (+0.02) of the better of `clip-global` and `agc` in 135
    /// of 162 MLP cells on seeds 0–2 (122 without), 142 on the held-out seeds 3–5 (129), 90 of
    /// 108 at rates the grid never had (0.05, 0.25; seeds 6–8; 73 without), and 27 of 27 on each
    /// recurrent grid (seeds 3–5; 26 without). Chosen in AGC's form (λ = τ_u/η on the
    /// gradient, seeds 0–2): 0.005 scored 147, 0.01 125, 0.0025 129.
    /// For an optimizer that normalizes each coordinate (Adam, AdamW, …) this limit would cap the
    /// rate itself; [`Self::normalized`] holds the one used there.
    /// Rate-free, it is 5× looser than AGC's λ = 0.01 at η = 0.1, where AGC stays ahead on
    /// 40-layer tanh nets (docs/library.md).
    pub max_unit_ratio: Option<f64>,
    /// Which axis of a weight holds its units. `None` (the default): the framework's own, as its
    /// adapter knows it — Burn's `[in, out]` (input-first) in `gradguard-burn`, Candle's
    /// `[out, in]` (output-first, PyTorch's) in `gradguard-candle` — so that the units are
    /// output neurons either way.
    pub unit_layout: Option<UnitLayout>,
    /// The limits for an optimizer that normalizes each coordinate (Adam, AdamW, …), which
    /// replace `max_ratio` and `max_unit_ratio` when the bound judges such an optimizer's
    /// update. `max_tensor_ratio` and `min_ratio` are shared.
    pub normalized: NormalizedLimits,
    /// Which family the guarded optimizer belongs to. `None` (the default): recognized from the
    /// first update the bound judges ([`UpdateFamily::recognize`]); set it when the optimizer's
    /// first step is not its usual one (a run resumed with an optimizer state but a fresh guard,
    /// per-group learning rates).
    pub family: Option<UpdateFamily>,
}

/// The update bound's limits for an optimizer that normalizes each coordinate.
///
/// Such an optimizer moves each weight by about its rate η whatever the gradient, so a unit of
/// values of typical size σ moves by r_u ≈ η/σ of its norm: a unit-wise limit is a limit on η/σ,
/// and scaling some units but not others turns the direction of the step. By default only the
/// global bound acts, as a controller of the rate: nothing happens while a step moves the model by
/// less than τ, and a rate far too large is brought down until its steps fit (m times the factor an
/// oversized step needed, back up by `recovery` per step within the bound, never down during a
/// warm-up). The designs measured and the grids that chose the numbers:
/// `docs/measurements/2026-12-04-normalized-update-bound.md`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NormalizedLimits {
    /// τ for a normalizing optimizer: the largest ‖Δθ‖/‖θ‖ of a step before the rate backs off.
    /// Default 0.015, about twice a healthy AdamW step of the lab's transformer at its best rate.
    pub max_ratio: f64,
    /// τ_u for a normalizing optimizer; `None` (the default) switches the unit-wise bound off
    /// for it.
    pub max_unit_ratio: Option<f64>,
    /// The factor by which each step within the bound raises the LR multiplier again (up to 1);
    /// an oversized step lowers it by the factor the step was scaled by. Default 1.05: a halved
    /// rate recovers in 15 calm steps. (Gradient descent keeps [`crate::LrBackoff`]'s halving
    /// and its recovery after 50 calm steps: its oversized steps are explosions, a normalizing
    /// optimizer's a rate near its edge, which the multiplier should track.)
    pub recovery: f64,
}

impl Default for NormalizedLimits {
    fn default() -> Self {
        NormalizedLimits {
            max_ratio: 0.015,
            max_unit_ratio: None,
            recovery: 1.05,
        }
    }
}

/// How an optimizer's update depends on the gradient, as far as the update bound is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateFamily {
    /// The update is the gradient (or a running sum of gradients) times the rate: SGD, momentum,
    /// Nesterov. The bound's own limits apply.
    Proportional,
    /// The update is normalized per coordinate, so each weight moves by about the rate: Adam,
    /// AdamW, Adagrad, Lion and their kin. [`UpdateBound::normalized`] applies.
    Normalized,
}

impl UpdateFamily {
    /// Recognizes the family from one update made at rate `lr`, by the first step's signature of
    /// a normalizing optimizer: every coordinate with a gradient moves by the rate (Adam's first
    /// step is `η·g/(|g| + ε)`, Adagrad's `η·g/√(g² + ε)`, Lion's `η·sign(·)`). A tensor is *at
    /// the rate* when either reading of its step says so:
    ///
    /// - its units: the largest `‖Δw_u‖ / √n_u` over its units lies within a factor 1.25 of η
    ///   (a unit all of whose values had a gradient moves by exactly η per value), and — where
    ///   the spread was measured — no value moved by more than 1.5 η (AdamW's decoupled decay
    ///   adds `η·λ·|w|` to a change, which stays under that for λ·|w| ≤ 0.5);
    /// - its spread ([`UpdateNorms::spread`], where measured): its largest change lies within a
    ///   factor 1.25 of η *and* the values that moved moved alike,
    ///   `‖Δw‖₂² / (‖Δw‖₁·‖Δw‖_∞) ≥ 0.8` ([`UpdateSpread::uniformity`]).
    ///
    /// The update is normalized when at least 90% of the values that moved lie in tensors at the
    /// rate. Gradient descent moves each value by η times its gradient, whose magnitudes spread.
    ///
    /// It is normalized too when every tensor's spread was measured, no value anywhere moved by
    /// more than 1.5 η, and of the values in tensors whose largest change reached 0.99 η (that
    /// press against the cap), at least half lie in tensors of at least 64 values at the rate by
    /// their spread. That is Adam where its ε outweighs the gradient of whole layers: in a deep
    /// net with vanishing gradients (Burn's ε = 1e-5, gradients of 1e-7 in the first layers)
    /// each value moves by `η·|g|/(|g| + ε)`, under η and spread, in most layers — no evidence
    /// either way, as gradient descent with small gradients moves by less than η too — while the
    /// last layers move alike by η. Between the two lie layers whose largest gradients outweigh
    /// ε and the rest do not: their largest change approaches η (0.8–0.98 η) while their values
    /// still spread, and they say nothing either (on Burn-initialized deep tanh MLPs they can hold
    /// as many values as the saturated layers). A layer whose largest change is
    /// within 1% of η is saturated at its largest gradient; Adam's such layers move alike.
    /// Gradient descent's changes spread (the uniformity of a Gaussian gradient is about 0.35),
    /// so a tensor of its that reaches η does so by one large value, not by all of them; a
    /// tensor of a few values says nothing about spread.
    ///
    /// Why two readings, each guarded: the unit reading alone misses a ReLU network (where a
    /// dead input feeds every unit of a layer, no unit has all its values moved, so every unit's
    /// step per value falls below η), and either reading alone can be met by a gradient under
    /// SGD by coincidence (a largest entry near 1; a unit of root-mean-square near 1). The unit
    /// reading still covers an AdamW step whose weight decay moves the embedding rows a batch did
    /// not use a little, and spreads the changes. The readings and grids that chose this:
    /// `docs/measurements/2026-12-06-optimizer-recognition.md`, and for the 0.99 η of the
    /// second reading `docs/measurements/2026-12-08-adam-epsilon-recognition.md`.
    ///
    /// `None` when `lr` is not positive and finite, an update is not finite, or nothing moved:
    /// nothing to recognize.
    pub fn recognize(norms: &[UpdateNorms], lr: f64) -> Option<UpdateFamily> {
        if !(lr > 0.0 && lr.is_finite()) {
            return None;
        }
        let near_rate = |step: f64| (0.8..=1.25).contains(&(step / lr));
        let unit_step = |n: &UpdateNorms| -> f64 {
            if n.units.is_empty() {
                n.update / (n.len.max(1) as f64).sqrt()
            } else {
                let unit_len = (n.len as f64 / n.units.len() as f64).max(1.0);
                n.units.iter().map(|&(_, u)| u).fold(0.0, f64::max) / unit_len.sqrt()
            }
        };
        let (mut moved, mut at_rate) = (0usize, 0usize);
        // Values in tensors whose largest change reached 0.99 η, and in those of them (of at
        // least 64 values) whose values moved alike.
        let (mut reached, mut alike_at_rate) = (0usize, 0usize);
        let (mut every_spread, mut none_beyond_anywhere) = (true, true);
        for n in norms {
            let step = unit_step(n);
            let largest = n.spread.map_or(0.0, |s| s.max_abs);
            if !(step.is_finite() && largest.is_finite()) {
                return None;
            }
            if step > 0.0 || largest > 0.0 {
                moved += n.len;
                let alike = n
                    .spread
                    .is_some_and(|s| near_rate(s.max_abs) && s.uniformity(n.update) >= 0.8);
                let none_beyond = n.spread.is_none_or(|s| s.max_abs <= 1.5 * lr);
                if (near_rate(step) && none_beyond) || alike {
                    at_rate += n.len;
                }
                if largest >= 0.99 * lr {
                    reached += n.len;
                    if alike && n.len >= 64 {
                        alike_at_rate += n.len;
                    }
                }
                every_spread &= n.spread.is_some();
                none_beyond_anywhere &= none_beyond;
            }
        }
        if moved == 0 {
            return None;
        }
        let saturating = every_spread && none_beyond_anywhere;
        Some(
            if at_rate as f64 >= 0.9 * moved as f64
                || (saturating && alike_at_rate > 0 && 2 * alike_at_rate >= reached)
            {
                UpdateFamily::Normalized
            } else {
                UpdateFamily::Proportional
            },
        )
    }
}

impl Default for UpdateBound {
    fn default() -> Self {
        UpdateBound {
            max_ratio: 0.01,
            max_tensor_ratio: 0.1,
            min_ratio: 0.01,
            max_unit_ratio: Some(0.005),
            unit_layout: None,
            normalized: NormalizedLimits::default(),
            family: None,
        }
    }
}

impl UpdateBound {
    /// Checks the setting: every ratio positive and finite.
    pub fn validate(&self) -> Result<()> {
        let unit = self.max_unit_ratio.map(|v| ("max_unit_ratio", v));
        let normalized_unit = self
            .normalized
            .max_unit_ratio
            .map(|v| ("normalized.max_unit_ratio", v));
        for (name, v) in [
            ("max_ratio", self.max_ratio),
            ("max_tensor_ratio", self.max_tensor_ratio),
            ("min_ratio", self.min_ratio),
            ("normalized.max_ratio", self.normalized.max_ratio),
        ]
        .into_iter()
        .chain(unit)
        .chain(normalized_unit)
        {
            if !(v > 0.0 && v.is_finite()) {
                return Err(GuardError::InvalidConfig(format!(
                    "update bound {name} must be positive and finite, got {v}"
                )));
            }
        }
        let recovery = self.normalized.recovery;
        if !(recovery >= 1.0 && recovery.is_finite()) {
            return Err(GuardError::InvalidConfig(format!(
                "update bound normalized.recovery must be ≥ 1 and finite, got {recovery}"
            )));
        }
        Ok(())
    }

    /// Whether the adapter must measure units for an optimizer of `family` (`None`: not yet
    /// known, and units make its recognition robust to embedding rows that did not move).
    pub fn measures_units(&self, family: Option<UpdateFamily>) -> bool {
        match family {
            Some(family) => self.limits(family).1.is_some(),
            None => true,
        }
    }

    /// (τ, τ_u) for an optimizer of `family`.
    pub fn limits(&self, family: UpdateFamily) -> (f64, Option<f64>) {
        match family {
            UpdateFamily::Proportional => (self.max_ratio, self.max_unit_ratio),
            UpdateFamily::Normalized => (self.normalized.max_ratio, self.normalized.max_unit_ratio),
        }
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
    /// Per unit (in [`UpdateBound::unit_layout`]): (‖w_u‖₂, ‖Δw_u‖₂). Empty when the adapter did
    /// not measure units (the unit-wise bound is off): the tensor is then judged as a whole.
    pub units: Vec<(f64, f64)>,
    /// How the update's values are spread, when the adapter measured it: it does on the steps
    /// that ask for it ([`crate::OptimizerStep::recognize`]), the ones from which the bound
    /// recognizes the optimizer's family. `None` otherwise.
    pub spread: Option<UpdateSpread>,
}

/// The ℓ1 and ℓ∞ norms of one tensor's update: with its ℓ2 norm, whether every value that moved
/// moved by the same amount — `‖Δw‖₂² = ‖Δw‖₁·‖Δw‖_∞` exactly when all nonzero |Δw_i| are
/// equal, and the ratio `‖Δw‖₂² / (‖Δw‖₁·‖Δw‖_∞)` falls below 1 as they spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateSpread {
    /// ‖Δw‖₁, the sum of the changes' magnitudes.
    pub sum_abs: f64,
    /// ‖Δw‖_∞, the largest change of one value.
    pub max_abs: f64,
}

impl UpdateSpread {
    /// `‖Δw‖₂² / (‖Δw‖₁·‖Δw‖_∞)` for an update of ℓ2 norm `update`: 1 when every value that
    /// moved moved by the same amount, 0 when nothing moved.
    pub fn uniformity(&self, update: f64) -> f64 {
        let denominator = self.sum_abs * self.max_abs;
        if denominator > 0.0 {
            update * update / denominator
        } else {
            0.0
        }
    }
}

/// What the update bound found and did on one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateCheck {
    /// The optimizer family whose limits were applied.
    #[serde(default = "proportional")]
    pub family: UpdateFamily,
    /// τ·m, the bound in force on this step.
    pub max_ratio: f64,
    /// ‖Δθ‖ / ‖θ‖ over the whole model, of the optimizer's own update before any bound (NaN when
    /// non-finite). The global bound judges the update the unit-wise bound left.
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
    /// Per tensor: empty where no unit was bounded, else each unit's factor on its update (the
    /// unit-wise bound's times the tensor's, which `scales` then holds only as a summary).
    pub unit_scales: Vec<Vec<f64>>,
    /// Units whose update the unit-wise bound scaled down, over the model.
    pub bounded_units: usize,
    /// Tensors whose update was scaled down (as a whole or in some of its units).
    pub bounded: usize,
    /// A weight or an update is non-finite (an overflow in the optimizer): undo the whole step.
    pub revert: bool,
}

fn proportional() -> UpdateFamily {
    UpdateFamily::Proportional
}

impl UpdateCheck {
    /// Whether the step must be changed at all.
    pub fn changes_anything(&self) -> bool {
        self.revert || self.bounded > 0
    }
}

/// Each unit's factor under the unit-wise bound `limit` (τ_u·m), or `None` when every unit fits:
/// s_u = limit / r_u where r_u = ‖Δw_u‖ / max(‖w_u‖, floor) exceeds it (0 for a non-finite r_u,
/// an update whose square overflowed where the tensor's own norm did not). A unit with no
/// reference (all weights of the model zero) passes.
fn unit_factors(units: &[(f64, f64)], limit: f64, floor: f64) -> Option<Vec<f64>> {
    let factor = |&(weight, update): &(f64, f64)| {
        let reference = weight.max(floor);
        if !(reference > 0.0) {
            return 1.0;
        }
        let ratio = update / reference;
        if ratio <= limit {
            1.0
        } else if ratio.is_finite() {
            limit / ratio
        } else {
            0.0
        }
    };
    let factors: Vec<f64> = units.iter().map(factor).collect();
    factors.iter().any(|&f| f < 1.0).then_some(factors)
}

/// Judges one step's update under `bound`'s limits for `family`, with the guard's current LR
/// multiplier.
///
/// The unit-wise bound comes first (as AGC would clip the gradient before the step); the global
/// and per-tensor bounds then judge the update it leaves. A model whose weights are all zero has
/// no scale to be relative to: its updates pass the global and per-tensor bounds.
pub fn check_update(
    bound: &UpdateBound,
    family: UpdateFamily,
    lr_multiplier: f64,
    norms: &[UpdateNorms],
) -> UpdateCheck {
    let (tau, tau_unit) = bound.limits(family);
    let max_ratio = (tau * lr_multiplier).max(bound.min_ratio.min(tau));
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
            family,
            max_ratio,
            global_ratio: f64::NAN,
            global_scale: 0.0,
            largest_ratio: f64::NAN,
            largest_tensor: culprit.map(|n| n.name.clone()),
            scales: vec![0.0; norms.len()],
            unit_scales: vec![Vec::new(); norms.len()],
            bounded_units: 0,
            bounded: 0,
            revert: true,
        };
    }
    let weight_sq: f64 = norms.iter().map(|n| n.weight * n.weight).sum();
    let total_len: usize = norms.iter().map(|n| n.len).sum();
    let rms = if total_len == 0 {
        0.0
    } else {
        (weight_sq / total_len as f64).sqrt()
    };
    // The unit-wise bound, and each tensor's update norm after it.
    let unit_limit = tau_unit.map(|t| t * lr_multiplier);
    let per_unit: Vec<Option<Vec<f64>>> = norms
        .iter()
        .map(|n| {
            let limit = unit_limit.filter(|_| !n.units.is_empty())?;
            let per_unit_len = n.len as f64 / n.units.len() as f64;
            unit_factors(&n.units, limit, rms * per_unit_len.sqrt())
        })
        .collect();
    let updates: Vec<f64> = norms
        .iter()
        .zip(&per_unit)
        .map(|(n, factors)| match factors {
            None => n.update,
            Some(f) => n
                .units
                .iter()
                .zip(f)
                .map(|(&(_, u), s)| (u * s) * (u * s))
                .sum::<f64>()
                .sqrt(),
        })
        .collect();
    let raw_update_sq: f64 = norms.iter().map(|n| n.update * n.update).sum();
    let update_sq: f64 = updates.iter().map(|u| u * u).sum();
    // ‖Δθ‖/‖θ‖; a model whose weights are all zero has no scale to be relative to.
    let relative = |sq: f64| {
        if weight_sq > 0.0 {
            (sq / weight_sq).sqrt()
        } else {
            0.0
        }
    };
    // Reported: the optimizer's own step; judged: what the unit-wise bound left of it.
    let global_ratio = relative(raw_update_sq);
    let after_units = relative(update_sq);
    let global_scale = if after_units > max_ratio {
        max_ratio / after_units
    } else {
        1.0
    };
    let mut check = UpdateCheck {
        family,
        max_ratio,
        global_ratio,
        global_scale,
        largest_ratio: 0.0,
        largest_tensor: None,
        scales: Vec::with_capacity(norms.len()),
        unit_scales: Vec::with_capacity(norms.len()),
        bounded_units: 0,
        bounded: 0,
        revert: false,
    };
    for ((n, &update), factors) in norms.iter().zip(&updates).zip(per_unit) {
        let reference = n.weight.max(rms * (n.len as f64).sqrt());
        let ratio = if reference > 0.0 {
            update / reference
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
        let units = factors.map_or_else(Vec::new, |f| {
            check.bounded_units += f.iter().filter(|&&s| s < 1.0).count();
            f.into_iter().map(|s| s * scale).collect()
        });
        check.bounded += usize::from(scale < 1.0 || !units.is_empty());
        check.scales.push(scale);
        check.unit_scales.push(units);
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: UpdateFamily = UpdateFamily::Proportional;

    /// τ = τ_t = 0.1, round numbers for hand-checked cases.
    fn tenth() -> UpdateBound {
        UpdateBound {
            max_ratio: 0.1,
            max_tensor_ratio: 0.1,
            min_ratio: 0.002,
            max_unit_ratio: None,
            ..UpdateBound::default()
        }
    }

    fn norms(weight: f64, update: f64, len: usize) -> UpdateNorms {
        UpdateNorms {
            name: format!("t{len}"),
            len,
            weight,
            update,
            units: Vec::new(),
            spread: None,
        }
    }

    #[test]
    fn small_updates_pass_untouched() {
        let c = check_update(
            &tenth(),
            P,
            1.0,
            &[norms(10.0, 0.5, 100), norms(2.0, 0.1, 4)],
        );
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
            P,
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
        let c = check_update(&tenth(), P, 1e-6, &[norms(10.0, 1.0, 100)]);
        assert_eq!(c.max_ratio, tenth().min_ratio);
    }

    #[test]
    fn a_large_update_is_scaled_to_the_bound() {
        let c = check_update(&tenth(), P, 1.0, &[norms(10.0, 50.0, 100)]);
        assert_eq!(c.bounded, 1);
        // ratio 5, τ 0.1: the update becomes 1, a tenth of the weights' norm.
        assert!((c.scales[0] * 50.0 - 1.0).abs() < 1e-12);
        assert!((c.global_scale - 0.02).abs() < 1e-12);
    }

    #[test]
    fn a_zero_bias_gets_the_room_of_a_typical_tensor() {
        // 100 weights of norm 10 (rms ≈ 0.98 over 104 values), a zero bias of 4 values.
        let c = check_update(
            &tenth(),
            P,
            1.0,
            &[norms(10.0, 0.0, 100), norms(0.0, 0.1, 4)],
        );
        let rms = (100.0f64 / 104.0).sqrt();
        assert!((c.largest_ratio - 0.1 / (rms * 2.0)).abs() < 1e-12);
        assert_eq!(c.bounded, 0);
    }

    #[test]
    fn the_multiplier_tightens_the_bound() {
        let c = check_update(&tenth(), P, 0.25, &[norms(10.0, 0.5, 100)]);
        assert_eq!(c.bounded, 1);
        assert!((c.scales[0] - 0.025 / 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_non_finite_update_reverts_the_step() {
        let c = check_update(
            &tenth(),
            P,
            1.0,
            &[norms(1.0, 0.1, 1), norms(1.0, f64::INFINITY, 1)],
        );
        assert!(c.revert);
        assert_eq!(c.largest_tensor.as_deref(), Some("t1"));
        let c = check_update(&tenth(), P, 1.0, &[norms(f64::NAN, 0.0, 1)]);
        assert!(c.revert);
    }

    #[test]
    fn all_zero_weights_pass() {
        let c = check_update(&tenth(), P, 1.0, &[norms(0.0, 3.0, 10)]);
        assert_eq!(c.scales, vec![1.0]);
    }

    #[test]
    fn the_unit_wise_bound_cuts_one_unit_and_the_model_sees_what_is_left() {
        // Two units of norm 1: one moves by 0.5 (ratio 0.5), the other by 0.001. τ_u = 0.01.
        let bound = UpdateBound {
            max_unit_ratio: Some(0.01),
            ..tenth()
        };
        let mut n = norms(2f64.sqrt(), (0.25f64 + 1e-6).sqrt(), 8);
        n.units = vec![(1.0, 0.5), (1.0, 0.001)];
        let c = check_update(&bound, P, 1.0, &[n.clone()]);
        assert_eq!(c.bounded_units, 1);
        assert_eq!(c.unit_scales[0], vec![0.02, 1.0]);
        // What is left, √(0.01² + 0.001²) over ‖θ‖ = √2, is inside the global bound of 0.1,
        // although the optimizer's own step (reported) was not.
        assert!((c.global_ratio - (0.25f64 + 1e-6).sqrt() / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(c.global_scale, 1.0);
        // The multiplier tightens it; off, nothing changes.
        let c = check_update(&bound, P, 0.5, &[n.clone()]);
        assert_eq!(c.unit_scales[0], vec![0.01, 1.0]);
        assert!(check_update(&tenth(), P, 1.0, &[n.clone()]).unit_scales[0].is_empty());
        // A unit of zero weights is judged against a typical unit of its size: rms(θ)·√n_u,
        // here √(1/8)·√4 = √0.5 (the model's ‖θ‖ = 1, 8 values, 2 units of 4).
        n.weight = 1.0;
        n.units = vec![(0.0, 0.02), (1.0, 0.001)];
        let c = check_update(&bound, P, 1.0, &[n]);
        let ratio = 0.02 / 0.5f64.sqrt();
        assert!((c.unit_scales[0][0] - 0.01 / ratio).abs() < 1e-12, "{c:?}");
    }

    /// One tensor of `units` units of `unit_len` values each, every unit moving by `step` per
    /// value (its update norm `step·√unit_len`), with unit weights of norm 1.
    fn moving(
        name: &str,
        units: usize,
        unit_len: usize,
        step: impl Fn(usize) -> f64,
    ) -> UpdateNorms {
        let units: Vec<(f64, f64)> = (0..units)
            .map(|u| (1.0, step(u) * (unit_len as f64).sqrt()))
            .collect();
        let (w, d) = units
            .iter()
            .fold((0.0, 0.0), |(w, d), &(a, b)| (w + a * a, d + b * b));
        UpdateNorms {
            name: name.into(),
            len: units.len() * unit_len,
            weight: w.sqrt(),
            update: d.sqrt(),
            units,
            spread: None,
        }
    }

    /// A tensor of 64 units of 64 values whose units move by `largest`·η per value or `low`
    /// times that, every other one, its largest change `largest`·η and its uniformity
    /// ‖Δw‖₂²/(‖Δw‖₁·‖Δw‖_∞) `uniformity`.
    fn spreading(name: &str, lr: f64, largest: f64, low: f64, uniformity: f64) -> UpdateNorms {
        let n = moving(name, 64, 64, |u| {
            lr * largest * (low + (1.0 - low) * (u % 2) as f64)
        });
        UpdateNorms {
            spread: Some(UpdateSpread {
                sum_abs: n.update * n.update / (uniformity * largest * lr),
                max_abs: largest * lr,
            }),
            ..n
        }
    }

    #[test]
    fn a_first_step_that_moves_every_value_by_the_rate_is_a_normalizing_optimizers() {
        let lr = 3e-3;
        // Adam's first step: every unit with a gradient moves by η per value; rows of an
        // embedding the batch did not use do not move; a bias whose gradient is below ε moves
        // less (a tiny tensor: it does not change the verdict).
        let adam = [
            moving("embedding", 100, 64, |u| if u % 3 == 0 { 0.0 } else { lr }),
            moving("linear", 64, 64, |_| lr * 1.02),
            moving("bias", 1, 64, |_| lr * 0.1),
        ];
        assert_eq!(
            UpdateFamily::recognize(&adam, lr),
            Some(UpdateFamily::Normalized)
        );
        // Gradient descent: each tensor moves by η times its gradient, which differs by layer.
        let sgd = [
            moving("layer0", 64, 64, |u| lr * 0.01 * (1 + u % 5) as f64),
            moving("layer1", 64, 64, |_| lr * 3.0),
            moving("layer2", 64, 64, |_| lr * 1.0),
        ];
        assert_eq!(
            UpdateFamily::recognize(&sgd, lr),
            Some(UpdateFamily::Proportional)
        );
        // Without units the tensor's own step per value is used.
        let whole = [norms(1.0, lr * 10.0, 100)];
        assert_eq!(
            UpdateFamily::recognize(&whole, lr),
            Some(UpdateFamily::Normalized)
        );
        // A ReLU network's first Adam step: dead inputs leave part of every unit still, so no
        // unit moves by η per value (here √(40/64) η ≈ 0.79 η), yet each value that moved did by
        // exactly η — the largest change says so.
        // 40 of each unit's 64 values moved, each by η: ‖Δw‖₁ = η·40·units, ‖Δw‖_∞ = η.
        let relu = |measured: bool| -> Vec<UpdateNorms> {
            (0..3)
                .map(|i| UpdateNorms {
                    spread: measured.then_some(UpdateSpread {
                        sum_abs: lr * 40.0 * 64.0,
                        max_abs: lr,
                    }),
                    ..moving(&format!("layer{i}"), 64, 64, |_| {
                        lr * (40.0f64 / 64.0).sqrt()
                    })
                })
                .collect()
        };
        assert_eq!(
            UpdateFamily::recognize(&relu(false), lr),
            Some(UpdateFamily::Proportional)
        );
        assert_eq!(
            UpdateFamily::recognize(&relu(true), lr),
            Some(UpdateFamily::Normalized)
        );
        // Gradient descent whose largest gradient value happens to be 1: its largest change is
        // η, but its changes spread (uniformity 0.3 here), so it stays gradient descent.
        let sgd_at_one: Vec<UpdateNorms> = relu(true)
            .into_iter()
            .map(|n| UpdateNorms {
                spread: Some(UpdateSpread {
                    sum_abs: n.update * n.update / (0.3 * lr),
                    max_abs: lr,
                }),
                ..n
            })
            .collect();
        assert_eq!(
            UpdateFamily::recognize(&sgd_at_one, lr),
            Some(UpdateFamily::Proportional)
        );
        // Gradient descent with a unit whose gradient has a root-mean-square near 1 (an LSTM's
        // recurrent weight): its unit reads as at the rate, but values moved by up to 2.3 η.
        let lstm = [UpdateNorms {
            spread: Some(UpdateSpread {
                sum_abs: 64.0 * 64.0 * lr * 0.5,
                max_abs: 2.3 * lr,
            }),
            ..moving("recurrent", 64, 64, |u| {
                if u == 0 { 1.2 * lr } else { 0.4 * lr }
            })
        }];
        assert_eq!(
            UpdateFamily::recognize(&lstm, lr),
            Some(UpdateFamily::Proportional)
        );
        let without_spread = [UpdateNorms {
            spread: None,
            ..lstm[0].clone()
        }];
        assert_eq!(
            UpdateFamily::recognize(&without_spread, lr),
            Some(UpdateFamily::Normalized),
            "the unit reading alone is fooled"
        );
        // Adam on a deep tanh net with vanishing gradients: where ε outweighs the gradient a
        // layer moves by η·|g|/(|g| + ε), well under η and spread (7 layers of 10 here), while
        // the last 3 layers move alike by η.
        let vanishing = |last: f64| -> Vec<UpdateNorms> {
            (0..10)
                .map(|i| {
                    let (largest, uniformity) = if i < 7 {
                        (0.05 * (i + 1) as f64, 0.3)
                    } else {
                        (last, 0.95)
                    };
                    spreading(&format!("layer{i}"), lr, largest, 0.4, uniformity)
                })
                .collect()
        };
        assert_eq!(
            UpdateFamily::recognize(&vanishing(1.0), lr),
            Some(UpdateFamily::Normalized)
        );
        // Between them, layers whose largest gradients outweigh ε and the rest do not: their
        // largest change approaches η (0.82–0.98 η) while their values spread. Measured so on
        // Burn-initialized deep tanh MLPs, where they held as many values as the saturated
        // layers, or more; they say nothing either way, and the saturated layers decide.
        let gradual: Vec<UpdateNorms> = (0..24)
            .map(|i| {
                let (largest, uniformity) = match i {
                    0..7 => (0.03 * (i + 1) as f64, 0.2),
                    7..16 => (0.82 + 0.02 * (i - 7) as f64, 0.5),
                    _ => (0.995, 0.9),
                };
                spreading(&format!("layer{i}"), lr, largest, 0.5, uniformity)
            })
            .collect();
        assert_eq!(
            UpdateFamily::recognize(&gradual, lr),
            Some(UpdateFamily::Normalized)
        );
        // The same shape with the last layers' values moving by 1.6 η: gradient descent.
        assert_eq!(
            UpdateFamily::recognize(&vanishing(1.6), lr),
            Some(UpdateFamily::Proportional)
        );
        // Gradient descent with small gradients everywhere and one small tensor whose values all
        // moved by η (a bias of 16 values): too few values to say normalized.
        let mut small = vanishing(0.3);
        small.push(UpdateNorms {
            spread: Some(UpdateSpread {
                sum_abs: lr * 16.0,
                max_abs: lr,
            }),
            ..moving("bias", 1, 16, |_| lr)
        });
        // Gradient descent whose gradients reach 1 in several layers, spread in all but one.
        let mut reaching = vanishing(1.0);
        for n in &mut reaching[5..9] {
            n.spread = n.spread.map(|_| UpdateSpread {
                sum_abs: n.update * n.update / (0.3 * lr),
                max_abs: lr,
            });
        }
        assert_eq!(
            UpdateFamily::recognize(&reaching, lr),
            Some(UpdateFamily::Proportional)
        );
        assert_eq!(
            UpdateFamily::recognize(&small, lr),
            Some(UpdateFamily::Proportional)
        );
        // Without every tensor's spread the second rule does not apply.
        let mut unmeasured = vanishing(1.0);
        unmeasured[0].spread = None;
        assert_eq!(
            UpdateFamily::recognize(&unmeasured, lr),
            Some(UpdateFamily::Proportional)
        );
        // Nothing to recognize: no rate, nothing moved, a non-finite update.
        assert_eq!(UpdateFamily::recognize(&adam, 0.0), None);
        assert_eq!(UpdateFamily::recognize(&adam, f64::NAN), None);
        assert_eq!(UpdateFamily::recognize(&[norms(1.0, 0.0, 10)], lr), None);
        assert_eq!(
            UpdateFamily::recognize(&[norms(1.0, f64::INFINITY, 10)], lr),
            None
        );
    }

    #[test]
    fn a_normalizing_optimizer_is_judged_by_its_own_limits() {
        let bound = UpdateBound::default();
        // Every unit moves by 0.8% of its norm: past gradient descent's τ_u = 0.005; a
        // normalizing optimizer has no unit-wise bound by default, and the model's 0.8% is inside
        // its τ.
        let step = [moving("linear", 16, 16, |_| 0.008 / 4.0)];
        let c = check_update(&bound, UpdateFamily::Normalized, 1.0, &step);
        assert!(!c.changes_anything(), "{c:?}");
        assert_eq!(c.family, UpdateFamily::Normalized);
        let c = check_update(&bound, P, 1.0, &step);
        assert_eq!(c.bounded_units, 16);
        // At 3% the whole step is scaled to τ = 1.5%, every unit alike.
        let step = [moving("linear", 16, 16, |_| 0.03 / 4.0)];
        let c = check_update(&bound, UpdateFamily::Normalized, 1.0, &step);
        assert_eq!((c.bounded_units, c.bounded), (0, 1));
        assert!((c.global_scale - 0.5).abs() < 1e-12, "{c:?}");
        assert_eq!(c.max_ratio, bound.normalized.max_ratio);
        // A unit-wise limit for the family, when set, applies to it.
        let bound = UpdateBound {
            normalized: NormalizedLimits {
                max_unit_ratio: Some(0.01),
                ..NormalizedLimits::default()
            },
            ..bound
        };
        let step = [moving("linear", 16, 16, |u| {
            if u == 0 { 0.03 / 4.0 } else { 0.0 }
        })];
        let c = check_update(&bound, UpdateFamily::Normalized, 1.0, &step);
        assert_eq!(c.bounded_units, 1);
        assert!((c.unit_scales[0][0] - 0.01 / 0.03).abs() < 1e-12, "{c:?}");
        assert!(bound.measures_units(Some(UpdateFamily::Normalized)));
        assert!(!UpdateBound::default().measures_units(Some(UpdateFamily::Normalized)));
        assert!(UpdateBound::default().measures_units(None));
    }

    #[test]
    fn bad_settings_are_refused() {
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let bound = UpdateBound {
                max_ratio: t,
                ..UpdateBound::default()
            };
            assert!(bound.validate().is_err());
            let bound = UpdateBound {
                max_unit_ratio: Some(t),
                ..UpdateBound::default()
            };
            assert!(bound.validate().is_err());
            let bound = UpdateBound {
                normalized: NormalizedLimits {
                    max_unit_ratio: Some(t),
                    ..NormalizedLimits::default()
                },
                ..UpdateBound::default()
            };
            assert!(bound.validate().is_err());
        }
    }
}
