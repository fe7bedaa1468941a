//! The update rules the fused optimizer applies, one value at a time, with the arithmetic of
//! Burn 0.22's own `Sgd`, `Adam` and `AdamW` (the same f32 operations in the same order, so a step
//! gives the same bits as Burn's tensor ops on the CPU backend).
//!
//! Adam (Kingma & Ba 2015, Algorithm 1, with Burn's folding of the bias corrections):
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `w ← w − η · (m·√(1−β₂ᵗ)/(1−β₁ᵗ)) / (√v + ε√(1−β₂ᵗ))`, weight decay coupled (`g ← g + λw`).
//! AdamW (Loshchilov & Hutter 2019): `w ← w(1 − ηλ) − η · m̂/(√v̂ + ε)`, `m̂ = m/(1−β₁ᵗ)`,
//! `v̂ = v/(1−β₂ᵗ)`. SGD: `w ← w − η(g + λw)`.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, SgdConfig};

/// Adam's moment settings; the defaults are Burn's (`β₁` 0.9, `β₂` 0.999, `ε` 1e-5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamMoments {
    /// β₁, the first moment's decay.
    pub beta_1: f32,
    /// β₂, the second moment's decay.
    pub beta_2: f32,
    /// ε, added to the root of the second moment.
    pub epsilon: f32,
}

impl Default for AdamMoments {
    fn default() -> Self {
        AdamMoments {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
        }
    }
}

/// The update rule of a [`crate::FusedOptimizer`]: each is Burn's optimizer of the same name and
/// settings ([`FusedRule::to_burn`] builds it), step for step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FusedRule {
    /// Stochastic gradient descent without momentum: `w ← w − η(g + λw)`.
    Sgd {
        /// λ, coupled weight decay (Burn's `SgdConfig::with_weight_decay`).
        weight_decay: Option<f32>,
    },
    /// Adam with coupled weight decay (Burn's `AdamConfig`, PyTorch's `Adam`).
    Adam {
        /// β₁, β₂, ε.
        moments: AdamMoments,
        /// λ, added to the gradient as `λw`.
        weight_decay: Option<f32>,
    },
    /// AdamW, weight decay decoupled (Burn's `AdamWConfig`, PyTorch's `AdamW`).
    AdamW {
        /// β₁, β₂, ε.
        moments: AdamMoments,
        /// λ: `w ← w(1 − ηλ)` before the update.
        weight_decay: f32,
    },
}

impl FusedRule {
    /// SGD without weight decay (Burn's `SgdConfig::new()`).
    pub fn sgd() -> Self {
        FusedRule::Sgd { weight_decay: None }
    }

    /// Adam with Burn's defaults (`AdamConfig::new()`: β₁ 0.9, β₂ 0.999, ε 1e-5, no weight
    /// decay).
    pub fn adam() -> Self {
        FusedRule::Adam {
            moments: AdamMoments::default(),
            weight_decay: None,
        }
    }

    /// AdamW with Burn's defaults and weight decay λ (`AdamWConfig::new().with_weight_decay(λ)`;
    /// language models commonly train with λ = 0.1 and β₂ = 0.95).
    pub fn adamw(weight_decay: f32) -> Self {
        FusedRule::AdamW {
            moments: AdamMoments::default(),
            weight_decay,
        }
    }

    /// Burn's own optimizer with the same rule and settings.
    pub fn to_burn(&self) -> ModuleOptimizer {
        let decay = |penalty: Option<f32>| penalty.map(WeightDecayConfig::new);
        match *self {
            FusedRule::Sgd { weight_decay } => SgdConfig::new()
                .with_weight_decay(decay(weight_decay))
                .init(),
            FusedRule::Adam {
                moments,
                weight_decay,
            } => AdamConfig::new()
                .with_beta_1(moments.beta_1)
                .with_beta_2(moments.beta_2)
                .with_epsilon(moments.epsilon)
                .with_weight_decay(decay(weight_decay))
                .init(),
            FusedRule::AdamW {
                moments,
                weight_decay,
            } => AdamWConfig::new()
                .with_beta_1(moments.beta_1)
                .with_beta_2(moments.beta_2)
                .with_epsilon(moments.epsilon)
                .with_weight_decay(weight_decay)
                .init(),
        }
    }

    /// Whether the rule keeps two moments per value.
    pub(crate) fn has_moments(&self) -> bool {
        !matches!(self, FusedRule::Sgd { .. })
    }

    /// One parameter's step, the weights and the moments left as they were: from the weights
    /// `w`, the gradient in `grad_then_after` and the moments before the step (`None` on the
    /// parameter's first step), the weights after it into `grad_then_after` (each value where its
    /// gradient was) and, for Adam and AdamW, the moments after it into `m` and `v`. `time` is
    /// the step's count (1 on the first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step_into(
        &self,
        lr: f64,
        time: usize,
        w: &[f32],
        grad_then_after: &mut [f32],
        moments: Option<(&[f32], &[f32])>,
        m: &mut [f32],
        v: &mut [f32],
    ) {
        let after = grad_then_after;
        let lr32 = lr as f32;
        match *self {
            FusedRule::Sgd { weight_decay } => {
                for (a, &w) in after.iter_mut().zip(w) {
                    let g = match weight_decay {
                        Some(penalty) => w * penalty + *a,
                        None => *a,
                    };
                    *a = w - g * lr32;
                }
            }
            FusedRule::Adam {
                moments: settings,
                weight_decay,
            } => {
                let t = time as i32;
                let bias_correction2_sqrt = (1.0 - settings.beta_2.powi(t)).sqrt();
                let combined = bias_correction2_sqrt / (1.0 - settings.beta_1.powi(t));
                let eps = settings.epsilon * bias_correction2_sqrt;
                let decayed = |w: f32, g: f32| match weight_decay {
                    Some(penalty) => w * penalty + g,
                    None => g,
                };
                let next = |w: f32, m: f32, v: f32| w - ((m * combined) / (v.sqrt() + eps)) * lr32;
                adam_into(settings, moments, w, decayed, next, after, m, v);
            }
            FusedRule::AdamW {
                moments: settings,
                weight_decay,
            } => {
                let t = time as i32;
                let c1 = 1f32 - settings.beta_1.powi(t);
                let c2 = 1f32 - settings.beta_2.powi(t);
                let decay_rate = lr * f64::from(weight_decay);
                let keep = (1.0 - decay_rate) as f32;
                let next = |w: f32, m: f32, v: f32| {
                    let w = if decay_rate == 0.0 { w } else { w * keep };
                    w - ((m / c1) / ((v / c2).sqrt() + settings.epsilon)) * lr32
                };
                adam_into(settings, moments, w, |_, g| g, next, after, m, v);
            }
        }
    }
}

/// Adam's moments and weights after a step, in one pass, the moments as Burn computes them:
/// `β·m + (1−β)·g` on later steps, `(1−β)·g` on the first (no zero moment added, so the signs of
/// zeros match too); `gradient(w, g)` is the gradient the moments take, `next(w, m, v)` the weight
/// from the new moments, written where the gradient was in `grad_then_after`.
#[allow(clippy::too_many_arguments)]
fn adam_into(
    settings: AdamMoments,
    before: Option<(&[f32], &[f32])>,
    w: &[f32],
    gradient: impl Fn(f32, f32) -> f32,
    next: impl Fn(f32, f32, f32) -> f32,
    grad_then_after: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let (f1, f2) = (1.0 - settings.beta_1, 1.0 - settings.beta_2);
    let (b1, b2) = (settings.beta_1, settings.beta_2);
    let n = w.len();
    let (slot, m, v) = (&mut grad_then_after[..n], &mut m[..n], &mut v[..n]);
    match before {
        Some((m0, v0)) => {
            let (m0, v0) = (&m0[..n], &v0[..n]);
            for i in 0..n {
                let g = gradient(w[i], slot[i]);
                let (m1, v1) = (m0[i] * b1 + g * f1, v0[i] * b2 + (g * g) * f2);
                (m[i], v[i], slot[i]) = (m1, v1, next(w[i], m1, v1));
            }
        }
        None => {
            for i in 0..n {
                let g = gradient(w[i], slot[i]);
                let (m1, v1) = (g * f1, (g * g) * f2);
                (m[i], v[i], slot[i]) = (m1, v1, next(w[i], m1, v1));
            }
        }
    }
}
