//! The guarded optimizer step for Candle: guard, then step any `candle_nn::Optimizer` — or not.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::{Optimizer, VarMap};
use gradguard::safetensors_io::natural_cmp;
use gradguard::{
    Gradients, Guard, OptimizerStep, StepActions, StepReport, UnitLayout, UnitSpan, UpdateCheck,
    UpdateMeasure, UpdateNorms, UpdateSpread,
};

use crate::error::CandleGuardError;
use crate::view::CandleGradients;

/// The named trainable variables of `varmap` (`layers.3.weight`, …), in natural name order.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    vars
}

/// The weights at a good step, to roll back to.
#[derive(Debug)]
struct Snapshot {
    step: u64,
    weights: Vec<Tensor>,
}

/// Copies of every var's values (Candle's vars are mutable: a snapshot is a copy).
pub(crate) fn copy_weights(vars: &[(String, Var)]) -> candle_core::Result<Vec<Tensor>> {
    vars.iter().map(|(_, v)| v.as_tensor().copy()).collect()
}

/// Sets every var to its value in `weights`.
pub(crate) fn restore(vars: &[(String, Var)], weights: &[Tensor]) -> candle_core::Result<()> {
    for ((_, v), w) in vars.iter().zip(weights) {
        v.set(w)?;
    }
    Ok(())
}

/// ‖t‖₂ in f64 (accumulated in f64 on the host: no overflow for finite f32 values).
fn norm(t: &Tensor) -> candle_core::Result<f64> {
    let s = gradguard::kernel::slice_stats(&host_f32(t)?);
    Ok(if s.is_finite() { s.l2() } else { f64::NAN })
}

/// ‖t‖₁ and ‖t‖_∞ (NaN for the largest when any value is non-finite).
fn spread(t: &Tensor) -> candle_core::Result<UpdateSpread> {
    let s = gradguard::kernel::slice_stats(&host_f32(t)?);
    Ok(UpdateSpread {
        sum_abs: s.sum_abs,
        max_abs: if s.is_finite() { s.max_abs } else { f64::NAN },
    })
}

/// A tensor's values as f32 on the host.
fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// `delta` with each unit of `span` multiplied by its factor.
fn scale_units(delta: &Tensor, span: UnitSpan, factors: &[f64]) -> candle_core::Result<Tensor> {
    let f: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
    let shape = if span.units_are_columns {
        (1, span.cols)
    } else {
        (span.rows, 1)
    };
    let f = Tensor::from_vec(f, shape, delta.device())?.to_dtype(delta.dtype())?;
    delta
        .reshape((span.rows, span.cols))?
        .broadcast_mul(&f)?
        .reshape(delta.shape())
}

/// A Candle optimizer behind a gradguard [`Guard`].
///
/// ```ignore
/// let mut optim = GuardedOptimizer::<AdamW>::new(&varmap, ParamsAdamW::default(), Guard::default())?;
/// for batch in batches {
///     if optim.skip_batch() { continue; }                  // after a rollback
///     let loss = model.forward(&batch.x)?.sub(&batch.y)?.sqr()?.mean_all()?;
///     let report = optim.step(&loss)?;                      // backward, guard, step — or not
/// }
/// ```
///
/// - `Apply`: the (clipped) gradients go to the optimizer at `lr · lr_multiplier`; with the
///   guard's update bound (the default guard's), the update the optimizer made is measured
///   against the weights before it and scaled down when oversized, or undone when not finite.
/// - `Skip`: the optimizer is not called: weights and optimizer state stay as they were.
/// - `Rollback`: the weights are restored from the last snapshot (a copy, taken every
///   `GuardConfig::snapshot_every` good steps), and [`GuardedOptimizer::skip_batch`] answers
///   `true` for the next batches. Candle's optimizers keep their state private, so a rollback —
///   and an undone step — restarts the optimizer from its configuration (Adam's moments and step
///   count from zero) rather than restoring it.
pub struct GuardedOptimizer<O: Optimizer> {
    optimizer: O,
    config: O::Config,
    vars: Vec<(String, Var)>,
    guard: Guard,
    base_lr: f64,
    snapshot: Option<Snapshot>,
    snapshot_seconds: f64,
}

impl<O: Optimizer> std::fmt::Debug for GuardedOptimizer<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedOptimizer")
            .field("vars", &self.vars.len())
            .field("base_lr", &self.base_lr)
            .field("guard", &self.guard.counters())
            .field("snapshot_step", &self.snapshot.as_ref().map(|s| s.step))
            .finish()
    }
}

impl<O> GuardedOptimizer<O>
where
    O: Optimizer,
    O::Config: Clone,
{
    /// Guards an optimizer of every var in `varmap`, built from `config`.
    pub fn new(varmap: &VarMap, config: O::Config, guard: Guard) -> Result<Self, CandleGuardError> {
        Self::from_vars(named_vars(varmap), config, guard)
    }

    /// Guards an optimizer of the named `vars`, built from `config`.
    pub fn from_vars(
        vars: Vec<(String, Var)>,
        config: O::Config,
        guard: Guard,
    ) -> Result<Self, CandleGuardError> {
        let optimizer = O::new(
            vars.iter().map(|(_, v)| v.clone()).collect(),
            config.clone(),
        )?;
        let base_lr = optimizer.learning_rate();
        Ok(GuardedOptimizer {
            optimizer,
            config,
            vars,
            guard,
            base_lr,
            snapshot: None,
            snapshot_seconds: 0.0,
        })
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &O {
        &self.optimizer
    }

    /// The named vars, in the order the guard reports them.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Sets the base learning rate (the guard's multiplier applies on top).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.base_lr = lr;
    }

    /// Seconds spent copying weights for snapshots so far (what the snapshot interval costs).
    pub fn snapshot_seconds(&self) -> f64 {
        self.snapshot_seconds
    }

    /// Whether to skip this batch (after a rollback); counts down.
    pub fn skip_batch(&mut self) -> bool {
        self.guard.skip_batch()
    }

    /// `loss` times the guard's loss scale ([`Guard::with_loss_scaler`]); pass the result to
    /// [`GuardedOptimizer::step`], which divides it out.
    pub fn scale_loss(&self, loss: &Tensor) -> candle_core::Result<Tensor> {
        let scale = self.guard.loss_scale();
        if scale == 1.0 {
            Ok(loss.clone())
        } else {
            loss.affine(scale, 0.0)
        }
    }

    /// One guarded step: the backward pass of the scalar `loss`, the guard's decision, and the
    /// optimizer's step when the decision is to apply ([`Guard::guarded_step`]). A guard stop is
    /// [`CandleGuardError::Guard`], with the weights as they were before the step.
    pub fn step(&mut self, loss: &Tensor) -> Result<StepReport, CandleGuardError> {
        let grads = loss.backward()?;
        let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        let with_values = self.guard.chain().needs_parameters();
        let view = CandleGradients::collect(&grads, &self.vars, with_values)?;
        let mut actions = CandleStep {
            optimizer: &mut self.optimizer,
            config: &self.config,
            vars: &self.vars,
            snapshot: &mut self.snapshot,
            snapshot_seconds: &mut self.snapshot_seconds,
            view,
            grads,
            before: None,
        };
        self.guard
            .guarded_step(&mut actions, Some(value), self.base_lr)
    }
}

/// The Candle side of one guarded step: what [`Guard::guarded_step`] asks of the vars, the
/// optimizer and the snapshot.
struct CandleStep<'a, O: Optimizer> {
    optimizer: &'a mut O,
    config: &'a O::Config,
    vars: &'a [(String, Var)],
    snapshot: &'a mut Option<Snapshot>,
    snapshot_seconds: &'a mut f64,
    view: CandleGradients,
    grads: GradStore,
    /// The weights before the step, each var's update and its unit span, when the update bound
    /// asked for them.
    before: Option<Before>,
}

/// What a step under the update bound keeps of the weights before it.
struct Before {
    weights: Vec<Tensor>,
    deltas: Vec<Tensor>,
    spans: Vec<Option<UnitSpan>>,
}

impl<O> CandleStep<'_, O>
where
    O: Optimizer,
    O::Config: Clone,
{
    fn restart_optimizer(&mut self) -> candle_core::Result<()> {
        let vars = self.vars.iter().map(|(_, v)| v.clone()).collect();
        *self.optimizer = O::new(vars, self.config.clone())?;
        Ok(())
    }

    /// Measures the step just taken against `weights`, the values before it.
    /// With `spread_too`, each update's ℓ1 and ℓ∞ norms too.
    fn measure(
        &self,
        weights: Vec<Tensor>,
        layout: Option<UnitLayout>,
        spread_too: bool,
    ) -> candle_core::Result<(Vec<UpdateNorms>, Before)> {
        let mut deltas = Vec::with_capacity(weights.len());
        let mut spans = Vec::with_capacity(weights.len());
        let mut norms = Vec::with_capacity(weights.len());
        for ((name, var), old) in self.vars.iter().zip(&weights) {
            let delta = (var.as_tensor() - old)?;
            let span = layout.map(|l| l.span_or_whole(name, old.dims()));
            let (weight, update, units) = match span {
                // One read of each version; the tensor's norms are its units' (f64 sums).
                Some(span) => {
                    let (b, a) = (host_f32(old)?, host_f32(var.as_tensor())?);
                    let units = gradguard::kernel::unit_update_norms(&b, &a, span);
                    let (w, d) = gradguard::kernel::tensor_norms_of_units(&units);
                    (w, d, units)
                }
                None => (norm(old)?, norm(&delta)?, Vec::new()),
            };
            norms.push(UpdateNorms {
                name: name.clone(),
                len: old.elem_count(),
                weight,
                update,
                units,
                spread: if spread_too {
                    Some(spread(&delta)?)
                } else {
                    None
                },
            });
            deltas.push(delta);
            spans.push(span);
        }
        let before = Before {
            weights,
            deltas,
            spans,
        };
        Ok((norms, before))
    }
}

impl<O> StepActions for CandleStep<'_, O>
where
    O: Optimizer,
    O::Config: Clone,
{
    type Error = CandleGuardError;
    // Candle's weights are `[out, in]` (PyTorch's): the units are output neurons.
    const WEIGHT_LAYOUT: UnitLayout = UnitLayout::OutputFirst;
    // Candle's optimizers keep their state private: undoing restarts them.
    const RESTARTS_OPTIMIZER: bool = true;

    fn gradients(&mut self) -> &mut dyn Gradients {
        &mut self.view
    }

    fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    fn step_optimizer(&mut self, step: OptimizerStep) -> Result<Vec<UpdateNorms>, Self::Error> {
        self.view.write_back(&mut self.grads)?;
        self.optimizer.set_learning_rate(step.lr);
        let layout = match step.measure {
            UpdateMeasure::Nothing => {
                self.optimizer.step(&self.grads)?;
                return Ok(Vec::new());
            }
            UpdateMeasure::Tensors => None,
            UpdateMeasure::Units(layout) => Some(layout),
        };
        let weights = copy_weights(self.vars)?;
        self.optimizer.step(&self.grads)?;
        let (norms, before) = self.measure(weights, layout, step.recognize)?;
        self.before = Some(before);
        Ok(norms)
    }

    fn undo_step(&mut self) -> Result<(), Self::Error> {
        let before = self.before.take().expect("the step kept its before");
        restore(self.vars, &before.weights)?;
        self.restart_optimizer()?;
        Ok(())
    }

    fn scale_step(&mut self, check: &UpdateCheck) -> Result<(), Self::Error> {
        let before = self.before.take().expect("the step kept its before");
        for (i, ((_, var), old)) in self.vars.iter().zip(&before.weights).enumerate() {
            let delta = &before.deltas[i];
            let units = check.unit_scales.get(i).filter(|u| !u.is_empty());
            match (units, before.spans[i]) {
                (Some(factors), Some(span)) if factors.len() == span.units() => {
                    var.set(&(old + scale_units(delta, span, factors)?)?)?;
                }
                _ if check.scales[i] < 1.0 => {
                    var.set(&(old + delta.affine(check.scales[i], 0.0)?)?)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn take_snapshot(&mut self, step: u64) -> Result<(), Self::Error> {
        let started = Instant::now();
        *self.snapshot = Some(Snapshot {
            step,
            weights: copy_weights(self.vars)?,
        });
        *self.snapshot_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    fn roll_back(&mut self) -> Result<(), Self::Error> {
        let snapshot = self
            .snapshot
            .as_ref()
            .expect("the guard checked for a snapshot");
        restore(self.vars, &snapshot.weights)?;
        self.restart_optimizer()?;
        Ok(())
    }
}
