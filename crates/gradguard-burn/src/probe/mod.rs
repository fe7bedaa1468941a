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
//! - a **verdict** (explodes / vanishes / healthy) with its reason in one line;
//! - with [`probe_model_along`], a gradient path the parameters do not show — through time in a
//!   recurrent net — at initialization and after the trial at your rate.
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
use burn::optim::ModuleOptimizer;
use burn::tensor::Tensor;
use gradguard::GuardError;
pub use gradguard::probe::{ModelProbe, ProbeSettings, TensorUpdate};
use gradguard::probe::{path_ratio, run_probe_along};

use trial::{gradient_profile, run_trial};

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
    loss: L,
) -> Result<ModelProbe, GuardError>
where
    M: Module + Clone,
    L: FnMut(&M, usize) -> Tensor<1>,
{
    probe_model_along(model, optimizer, settings, loss, "point", |_: &M, _| None)
}

/// [`probe_model`] with a gradient path the parameters do not show: `path(model, i)` returns
/// the gradient norms along it for batch `i`, input side first — for a recurrent net
/// ‖∂L/∂h_t‖ for t = 1 … T (backpropagation through time), measured on its own backward pass
/// (`None`: no reading for this model); `point` names one point of it for the verdict's
/// sentence (`"time step"`). The probe reads it on the profile's batches at
/// initialization and on the reference batch after the trial at `settings.rate`, and the verdict
/// calls a start-to-end ratio below [`gradguard::probe::STALLING_RATIO`] *vanishes*
/// ([`gradguard::probe::PathReading`]).
pub fn probe_model_along<M, L, P>(
    model: &M,
    optimizer: &ModuleOptimizer,
    settings: &ProbeSettings,
    mut loss: L,
    point: &str,
    mut path: P,
) -> Result<ModelProbe, GuardError>
where
    M: Module + Clone,
    L: FnMut(&M, usize) -> Tensor<1>,
    P: FnMut(&M, usize) -> Option<Vec<f64>>,
{
    settings.validate()?;
    let profiles: Vec<_> = (0..settings.profile_batches)
        .map(|batch| gradient_profile(model, loss(model, batch), settings))
        .collect();
    let along: Option<Vec<_>> = (0..settings.profile_batches)
        .map(|batch| path(model, batch))
        .collect();
    let path_at_init = along.as_deref().and_then(path_ratio);
    run_probe_along(settings, &profiles, point, path_at_init, |rate, twin| {
        let (run, end) = run_trial(model, optimizer, settings, rate, &mut loss, twin);
        // The path on the reference batch, where the trial at the user's rate kept its end.
        let end_path = end.and_then(|m| path(&m, 0)).and_then(|n| path_ratio(&[n]));
        Ok::<_, GuardError>(run.with_end_path(end_path))
    })
}
