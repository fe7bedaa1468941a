//! The model probe on a Candle model: before the first training step, will its gradients
//! explode at the rate you chose, and which rate is safe?
//!
//! [`probe_varmap`] takes the model's `VarMap`, the configuration of the `candle_nn` optimizer
//! you will train with, and a loss closure that draws batch `i` and returns its loss from the
//! model's current weights. It runs the core's protocol ([`gradguard::probe::run_probe`]): the
//! gradient depth profile at initialization, the first steps at your rate with a butterfly,
//! the largest safe rate bracketed by short trials, and a verdict. Candle's vars are mutable,
//! so each trial steps the vars themselves with a fresh optimizer and puts every value back
//! afterwards, whatever happened: when it returns, the model is as it was, bit for bit.
//! [`probe_varmap_along`] also reads a gradient path the parameters do not show (through time
//! in a recurrent net).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{AdamW, Linear, Module, ParamsAdamW, VarBuilder, VarMap};
//! use gradguard::probe::ProbeSettings;
//! use gradguard_candle::probe::probe_varmap;
//!
//! let device = Device::Cpu;
//! let varmap = VarMap::new();
//! let layer: Linear = candle_nn::linear(8, 1, VarBuilder::from_varmap(&varmap, DType::F32, &device).pp("head"))?;
//! let x = Tensor::randn(0f32, 1.0, (32, 8), &device)?;
//! let y = x.sum_keepdim(1)?;
//! let loss = |_batch: usize| (layer.forward(&x)? - &y)?.sqr()?.mean_all();
//! let probe = probe_varmap::<AdamW>(&varmap, ParamsAdamW::default(), &ProbeSettings::at_rate(1e-3), loss)?;
//! println!("{}: {}", probe.verdict.health, probe.verdict.reason);
//! assert!(probe.safe_rate.rate.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{DType, Tensor, Var};
use candle_nn::{Optimizer, VarMap};
use gradguard::Gradients;
use gradguard::detect::{DepthProfile, depth_profile};
use gradguard::probe::{
    ModelProbe, ProbeSettings, TensorUpdate, TrialRun, TrialStep, path_ratio, relative_update,
    run_probe_along,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::CandleGuardError;
use crate::step::{copy_weights, named_vars, restore};
use crate::view::CandleGradients;

type Vars = [(String, Var)];

/// Probes the model whose trainable weights are `varmap`'s for training with the `O` optimizer
/// built from `config` at `settings.rate`; `loss(i)` returns the loss of batch `i` computed
/// from the vars' current values (draw the batches once, so every trial sees the same ones).
///
/// The vars are put back after every trial, so the model ends as it started; your own
/// optimizer is never touched (each trial builds its own from `config`).
///
/// # Errors
/// Bad settings, or the first Candle error of a loss, backward pass or step.
pub fn probe_varmap<O>(
    varmap: &VarMap,
    config: O::Config,
    settings: &ProbeSettings,
    loss: impl FnMut(usize) -> candle_core::Result<Tensor>,
) -> Result<ModelProbe, CandleGuardError>
where
    O: Optimizer,
    O::Config: Clone,
{
    probe_varmap_along::<O>(varmap, config, settings, loss, "point", |_| Ok(None))
}

/// [`probe_varmap`] with a gradient path the parameters do not show: `path(i)` returns the
/// gradient norms along it for batch `i` from the vars' current values, input side first — for
/// a recurrent net ‖∂L/∂h_t‖ for t = 1 … T, on its own backward pass (`None`: no reading);
/// `point` names one point of it for the verdict's sentence (`"time step"`). The
/// probe reads it on the profile's batches at initialization and on the reference batch after
/// the trial at `settings.rate`; the verdict calls a start-to-end ratio below
/// [`gradguard::probe::STALLING_RATIO`] *vanishes* ([`gradguard::probe::PathReading`]).
///
/// # Errors
/// As [`probe_varmap`], and the first error `path` returns.
pub fn probe_varmap_along<O>(
    varmap: &VarMap,
    config: O::Config,
    settings: &ProbeSettings,
    mut loss: impl FnMut(usize) -> candle_core::Result<Tensor>,
    point: &str,
    mut path: impl FnMut(usize) -> candle_core::Result<Option<Vec<f64>>>,
) -> Result<ModelProbe, CandleGuardError>
where
    O: Optimizer,
    O::Config: Clone,
{
    settings.validate()?;
    let vars = named_vars(varmap);
    let mut profiles = Vec::with_capacity(settings.profile_batches);
    let mut along = Some(Vec::with_capacity(settings.profile_batches));
    for batch in 0..settings.profile_batches {
        profiles.push(gradient_profile(&vars, &loss(batch)?, settings)?);
        let norms = path(batch)?;
        along = along.zip(norms).map(|(mut all, n)| {
            all.push(n);
            all
        });
    }
    let path_at_init = along.as_deref().and_then(path_ratio);
    let start = copy_weights(&vars)?;
    run_probe_along(
        settings,
        &profiles,
        point,
        path_at_init,
        |rate, twin| -> Result<_, CandleGuardError> {
            let run = trial::<O>(
                &vars,
                &start,
                config.clone(),
                settings,
                rate,
                twin,
                &mut loss,
                &mut path,
            );
            // Whatever the trial did, the model ends where it started.
            restore(&vars, &start)?;
            run
        },
    )
}

/// The gradient depth profile of the vars' current values on one loss (one backward pass).
fn gradient_profile(
    vars: &Vars,
    loss: &Tensor,
    settings: &ProbeSettings,
) -> Result<DepthProfile, CandleGuardError> {
    let grads = loss.backward()?;
    let view = CandleGradients::collect(&grads, vars, false)?;
    let names: Vec<&str> = (0..view.tensor_count()).map(|i| view.name(i)).collect();
    Ok(depth_profile(
        &names,
        &view.stats(),
        settings.growth_tolerance,
    ))
}

/// ‖a‖ (`weight_norm`) and ‖b − a‖ (`update_norm`) per var, in f32, read in one transfer.
fn pair_norms(vars: &Vars, a: &[Tensor], b: &[Tensor]) -> candle_core::Result<Vec<TensorUpdate>> {
    if a.is_empty() {
        return Ok(Vec::new());
    }
    let mut sums = Vec::with_capacity(2 * a.len());
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.to_dtype(DType::F32)?, y.to_dtype(DType::F32)?);
        sums.push(x.sqr()?.sum_all()?);
        sums.push((y - &x)?.sqr()?.sum_all()?);
    }
    let sums = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?;
    Ok(vars
        .iter()
        .zip(sums.chunks(2))
        .map(|((name, _), s)| TensorUpdate {
            name: name.clone(),
            weight_norm: f64::from(s[0]).sqrt(),
            update_norm: f64::from(s[1]).sqrt(),
        })
        .collect())
}

/// `values` each moved by a relative `epsilon`: plus `epsilon · rms · u`, `u` uniform with unit
/// variance, drawn from `seed`.
fn perturbed(values: &[Tensor], epsilon: f64, seed: u64) -> candle_core::Result<Vec<Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    values
        .iter()
        .map(|t| {
            let wide = t.to_dtype(DType::F32)?;
            let rms = f64::from(wide.sqr()?.mean_all()?.to_scalar::<f32>()?).sqrt();
            let scale = epsilon * rms * 3f64.sqrt();
            let shift: Vec<f32> = (0..t.elem_count())
                .map(|_| (scale * rng.random_range(-1.0..1.0)) as f32)
                .collect();
            let shift = Tensor::from_vec(shift, t.dims(), t.device())?;
            (wide + shift)?.to_dtype(t.dtype())
        })
        .collect()
}

/// A loss as a number (`None`: not finite).
fn value(loss: &Tensor) -> candle_core::Result<Option<f64>> {
    let v = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    Ok(v.is_finite().then_some(v))
}

/// One optimizer step of the vars on `batch`: the loss before it (`None`: not finite, and no
/// step taken).
fn step<O: Optimizer>(
    opt: &mut O,
    batch: usize,
    loss: &mut impl FnMut(usize) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Option<f64>> {
    let l = loss(batch)?;
    let Some(v) = value(&l)? else {
        return Ok(None);
    };
    opt.step(&l.backward()?)?;
    Ok(Some(v))
}

/// `settings.trial_steps` steps from `start` at `rate` with a fresh optimizer, batch `i` at step
/// `i`; with `twin`, a copy perturbed by `settings.butterfly_epsilon` takes the same steps with
/// its own optimizer (the vars hold each copy's values in turn). With `twin` (the trial at the
/// user's rate), the readings after the trial — the depth profile and `path` — are taken on the
/// trained copy. Leaves the vars wherever the trial ended: the caller restores them.
#[allow(clippy::too_many_arguments)]
fn trial<O>(
    vars: &Vars,
    start: &[Tensor],
    config: O::Config,
    settings: &ProbeSettings,
    rate: f64,
    twin: bool,
    loss: &mut impl FnMut(usize) -> candle_core::Result<Tensor>,
    path: &mut impl FnMut(usize) -> candle_core::Result<Option<Vec<f64>>>,
) -> Result<TrialRun, CandleGuardError>
where
    O: Optimizer,
    O::Config: Clone,
{
    let handles: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let fresh = |config: O::Config| -> candle_core::Result<O> {
        let mut opt = O::new(handles.clone(), config)?;
        opt.set_learning_rate(rate);
        Ok(opt)
    };
    restore(vars, start)?;
    let mut opt = fresh(config.clone())?;
    let mut twin = if twin {
        let values = perturbed(start, settings.butterfly_epsilon, settings.seed)?;
        Some((values, fresh(config)?))
    } else {
        None
    };
    let mut separation = Vec::new();
    if let Some((values, _)) = &twin {
        separation.push(relative_update(&pair_norms(vars, start, values)?));
    }
    let (mut steps, mut broke) = (Vec::new(), false);
    let (mut first_step, mut last_step) = (Vec::new(), Vec::new());
    // The vars' values before each step: `start`, then where the last step left them.
    let mut before = start.to_vec();
    for batch in 0..settings.trial_steps {
        let Some(current) = step(&mut opt, batch, loss)? else {
            steps.push(TrialStep {
                loss: None,
                update_ratio: None,
            });
            broke = true;
            break;
        };
        let after = copy_weights(vars)?;
        let moved = pair_norms(vars, &before, &after)?;
        steps.push(TrialStep {
            loss: Some(current),
            update_ratio: relative_update(&moved),
        });
        if batch == 0 {
            first_step = moved.clone();
        }
        last_step = moved;
        if let Some((values, t_opt)) = &mut twin {
            restore(vars, values)?;
            step(t_opt, batch, loss)?;
            *values = copy_weights(vars)?;
            restore(vars, &after)?;
            separation.push(relative_update(&pair_norms(vars, &after, values)?));
        }
        before = after;
    }
    let profile_end = twin.is_some();
    let end = if broke { None } else { Some(loss(0)?) };
    let end_loss = end.as_ref().map(value).transpose()?.flatten();
    let run = TrialRun::from_steps(
        rate,
        steps,
        end_loss,
        first_step,
        settings.butterfly_epsilon,
        separation,
    );
    // The trial at the user's rate (the one with a twin) also measures where the gradient
    // reaches after its steps; the vars hold the trial's own copy here.
    Ok(match end.filter(|_| profile_end && end_loss.is_some()) {
        Some(end) => {
            let end_path = path(0)?.and_then(|n| path_ratio(&[n]));
            run.with_end(gradient_profile(vars, &end, settings)?, last_step)
                .with_end_path(end_path)
        }
        None => run,
    })
}
