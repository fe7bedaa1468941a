//! A trial: a few optimizer steps of a copy of the model at one rate, optionally beside a
//! perturbed twin (the butterfly).

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use gradguard::Gradients;
use gradguard::detect::{DepthProfile, depth_profile};
use gradguard::probe::{ProbeSettings, TrialRun, TrialStep, relative_update};

use crate::view::BurnGradients;

use super::weights::{pair_norms, perturbed};

/// A loss as a number (`None`: not finite), one host read.
fn value(loss: Tensor<1>) -> Option<f64> {
    let v = f64::from(loss.inner().into_scalar::<f32>());
    v.is_finite().then_some(v)
}

/// Trains a copy of `model` (and of `optimizer`) for `settings.trial_steps` steps at `rate`,
/// batch `i` at step `i`; with `twin`, a copy perturbed by `settings.butterfly_epsilon` takes
/// the same steps on the same batches with its own copy of the optimizer. Stops at the first
/// loss that is not finite. With `twin` (the trial at the user's rate), the trained copy comes
/// back too where its reference loss is finite, for the readings after the trial.
pub(super) fn run_trial<M, L>(
    model: &M,
    optimizer: &ModuleOptimizer,
    settings: &ProbeSettings,
    rate: f64,
    loss: &mut L,
    twin: bool,
) -> (TrialRun, Option<M>)
where
    M: Module + Clone,
    L: FnMut(&M, usize) -> Tensor<1>,
{
    let (mut m, mut opt) = (model.clone(), optimizer.clone());
    let mut twin = twin.then(|| {
        let copy = perturbed(model.clone(), settings.butterfly_epsilon, settings.seed);
        (copy, optimizer.clone())
    });
    let profile_end = twin.is_some();
    let mut separation = Vec::new();
    if let Some((t, _)) = &twin {
        separation.push(relative_update(&pair_norms(&m, t)));
    }
    let mut steps = Vec::with_capacity(settings.trial_steps);
    let (mut first_step, mut last_step) = (Vec::new(), Vec::new());
    let mut broke = false;
    for batch in 0..settings.trial_steps {
        let l = loss(&m, batch);
        let Some(current) = value(l.clone()) else {
            steps.push(TrialStep {
                loss: None,
                update_ratio: None,
            });
            broke = true;
            break;
        };
        let grads = GradientsParams::from_grads(l.backward(), &m);
        let before = m.clone();
        m = opt.step(rate, m, grads);
        let moved = pair_norms(&before, &m);
        steps.push(TrialStep {
            loss: Some(current),
            update_ratio: relative_update(&moved),
        });
        if batch == 0 {
            first_step = moved.clone();
        }
        last_step = moved;
        if let Some((t, mut t_opt)) = twin.take() {
            let grads = GradientsParams::from_grads(loss(&t, batch).backward(), &t);
            let t = t_opt.step(rate, t, grads);
            separation.push(relative_update(&pair_norms(&m, &t)));
            twin = Some((t, t_opt));
        }
    }
    let end = (!broke).then(|| loss(&m, 0));
    let end_loss = end.clone().and_then(value);
    let run = TrialRun::from_steps(
        rate,
        steps,
        end_loss,
        first_step,
        settings.butterfly_epsilon,
        separation,
    );
    match end.filter(|_| profile_end && end_loss.is_some()) {
        Some(end) => (
            run.with_end(gradient_profile(&m, end, settings), last_step),
            Some(m),
        ),
        None => (run, None),
    }
}

/// The gradient depth profile of `model` on one loss (one backward pass).
pub(super) fn gradient_profile<M: Module>(
    model: &M,
    loss: Tensor<1>,
    settings: &ProbeSettings,
) -> DepthProfile {
    let mut grads = GradientsParams::from_grads(loss.backward(), model);
    let view = BurnGradients::collect(model, &mut grads, None, false);
    let names: Vec<&str> = (0..view.tensor_count()).map(|i| view.name(i)).collect();
    depth_profile(&names, &view.stats(), settings.growth_tolerance)
}
