//! The probe on your own model: before the first training step, will its gradients explode at
//! the rate you chose, and which rate is safe?
//!
//! [`probe_model`] takes any Burn module on an autodiff device, a loss closure that draws batch
//! `i` and returns its loss, and the optimizer you will train with. On copies (your module and
//! optimizer are untouched) it measures:
//!
//! - the **gradient depth profile** at initialization over a few batches: per-layer gradient
//!   norms in module order, their growth per layer going back, where growth starts;
//! - the **first steps** at your rate: each tensor's ‖Δw‖/‖w‖ after the first step, and the loss
//!   and ‖Δθ‖/‖θ‖ over a few steps, with a **butterfly** — a second copy moved by a relative ε,
//!   trained on the same batches, and how fast the two separate;
//! - the **largest safe rate** for that optimizer: a few steps per rate, bracketed and bisected
//!   ([`gradguard::probe::search_safe_rate`]), with the bracket as its uncertainty;
//! - a **verdict** (explodes / vanishes / healthy) with its reason in one line.
//!
//! No layer structure is assumed: everything is measured through the loss, the gradients and
//! the optimizer's own steps, so the probe sees normalization, residual paths, attention and
//! the optimizer's normalization as training will.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::AdamConfig;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use gradguard_burn::probe::{ProbeSettings, probe_model};
//!
//! let device = Device::flex().autodiff();
//! let model: Linear = LinearConfig::new(8, 1).init(&device);
//! let x = Tensor::<2>::random([32, 8], Distribution::Default, &device);
//! let y = x.clone().sum_dim(1);
//! let loss = |m: &Linear, _batch: usize| (m.forward(x.clone()) - y.clone()).square().mean();
//! let probe = probe_model(&model, &AdamConfig::new().init(), &ProbeSettings::at_rate(1e-3), loss)?;
//! println!("{}: {}", probe.verdict.health, probe.verdict.reason);
//! assert!(probe.safe_rate.rate.is_some());
//! # Ok::<(), gradguard::GuardError>(())
//! ```

mod trial;
mod weights;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use gradguard::detect::depth_profile;
use gradguard::probe::{
    Butterfly, ModelVerdict, ProfileSummary, RateSearch, RateTrial, SafeRate, search_safe_rate,
    verdict,
};
use gradguard::{Gradients, GuardError};
use serde::{Deserialize, Serialize};

use crate::view::BurnGradients;
use trial::run_trial;

/// What [`probe_model`] measures, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// The learning rate you will train with.
    pub rate: f64,
    /// Batches of the gradient depth profile (batches `0 … n−1`).
    pub profile_batches: usize,
    /// Optimizer steps of each trial (batch `i` at step `i`); the loss of batch 0 before and
    /// after them decides whether the trial diverged.
    pub trial_steps: usize,
    /// Where and how finely the safe rate is searched.
    pub search: RateSearch,
    /// The butterfly copy's relative perturbation.
    pub butterfly_epsilon: f64,
    /// A layer "grows" the gradient when it multiplies its norm by more than `1 + tolerance`.
    pub growth_tolerance: f64,
    /// Seed of the butterfly's perturbation.
    pub seed: u64,
}

impl ProbeSettings {
    /// The defaults at `rate`: a 4-batch profile, 10-step trials over 1e-6 … 10 bisected to √2,
    /// a butterfly at ε = 1e-4.
    pub fn at_rate(rate: f64) -> Self {
        ProbeSettings {
            rate,
            profile_batches: 4,
            trial_steps: 10,
            search: RateSearch::default(),
            butterfly_epsilon: 1e-4,
            growth_tolerance: 0.1,
            seed: 0,
        }
    }

    /// Checks every range.
    pub fn validate(&self) -> Result<(), GuardError> {
        let bad = |what: String| Err(GuardError::InvalidConfig(what));
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return bad(format!("the rate must be positive, got {}", self.rate));
        }
        if self.profile_batches == 0 || self.trial_steps == 0 {
            return bad("the profile and the trials need at least one batch".into());
        }
        if !(self.butterfly_epsilon > 0.0 && self.butterfly_epsilon < 1.0) {
            return bad(format!(
                "the butterfly's ε must be in (0, 1), got {}",
                self.butterfly_epsilon
            ));
        }
        if !(self.growth_tolerance >= 0.0 && self.growth_tolerance.is_finite()) {
            return bad(format!(
                "the growth tolerance must be ≥ 0, got {}",
                self.growth_tolerance
            ));
        }
        self.search.validate()
    }
}

/// One parameter tensor after the first step at the probed rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorUpdate {
    /// The parameter's module path.
    pub name: String,
    /// ‖w‖₂ before the step.
    pub weight_norm: f64,
    /// ‖Δw‖₂ of the step.
    pub update_norm: f64,
}

impl TensorUpdate {
    /// ‖Δw‖/‖w‖ (`None` where `w` is zero or either norm is not finite).
    pub fn ratio(&self) -> Option<f64> {
        let r = self.update_norm / self.weight_norm;
        r.is_finite().then_some(r)
    }
}

/// Everything [`probe_model`] measured, and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelProbe {
    /// The settings it ran with.
    pub settings: ProbeSettings,
    /// The gradient depth profile at initialization.
    pub profile: ProfileSummary,
    /// Each tensor's first step at the probed rate, in module order.
    pub first_step: Vec<TensorUpdate>,
    /// The trial at the probed rate.
    pub at_rate: RateTrial,
    /// The butterfly at the probed rate.
    pub butterfly: Butterfly,
    /// The largest safe rate and every trial that found it.
    pub safe_rate: SafeRate,
    /// The verdict at the probed rate.
    pub verdict: ModelVerdict,
}

/// Probes `model` (on an autodiff device) for training with `optimizer` at `settings.rate`;
/// `loss(model, i)` returns the loss of batch `i` (draw it from a fixed seed, so every trial
/// sees the same batches). `model` and `optimizer` are not changed: every step runs on copies
/// (Burn's tensors are copied on write, so a copy costs nothing until it is stepped).
///
/// Cost: `profile_batches` backward passes, then `trial_steps` steps for the butterfly and
/// for each trial of the search (about six from a rate within a decade of the safe one).
pub fn probe_model<M, L>(
    model: &M,
    optimizer: &ModuleOptimizer,
    settings: &ProbeSettings,
    mut loss: L,
) -> Result<ModelProbe, GuardError>
where
    M: Module + Clone,
    L: FnMut(&M, usize) -> Tensor<1>,
{
    settings.validate()?;
    let profiles: Vec<_> = (0..settings.profile_batches)
        .map(|batch| {
            let value = loss(model, batch);
            let mut grads = GradientsParams::from_grads(value.backward(), model);
            let view = BurnGradients::collect(model, &mut grads, None, false);
            let names: Vec<&str> = (0..view.tensor_count()).map(|i| view.name(i)).collect();
            depth_profile(&names, &view.stats(), settings.growth_tolerance)
        })
        .collect();
    let profile = ProfileSummary::combine(&profiles, settings.growth_tolerance);

    let walked = run_trial(model, optimizer, settings, settings.rate, &mut loss, true);
    let at_rate = walked.trial;
    let butterfly = walked.butterfly.expect("asked for a butterfly");
    let first_step = walked.first_step;

    let safe_rate = search_safe_rate(settings.rate, &settings.search, |rate| {
        if rate == at_rate.rate {
            at_rate.clone()
        } else {
            run_trial(model, optimizer, settings, rate, &mut loss, false).trial
        }
    })?;
    let verdict = verdict(settings.rate, &profile, &at_rate, &safe_rate);
    Ok(ModelProbe {
        settings: *settings,
        profile,
        first_step,
        at_rate,
        butterfly,
        safe_rate,
        verdict,
    })
}
