//! A guarded optimizer whose step measures itself: the update rule ([`FusedRule`]: SGD, Adam,
//! AdamW) computes each parameter's new weights and moments into spare buffers, and the update
//! bound's norms are read from the weights and those buffers while they are hot. Nothing is
//! cloned before the step and nothing is undone after it: a step the guard reverts is dropped, a
//! bounded one is rescaled in its buffers, and an accepted one is committed by swapping buffers.
//!
//! This is the host path (Burn's `flex` CPU backend, f32 parameters): weights and gradients are
//! read in place. Elsewhere [`crate::GuardedOptimizer`] steps the equivalent Burn optimizer
//! ([`FusedRule::to_burn`]) and measures its update as it does for any optimizer.

mod buffers;
mod rule;

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use gradguard::kernel::{BLOCK, UpdateSums};
use gradguard::{UnitLayout, UnitSpan, UpdateCheck, UpdateMeasure, UpdateNorms};

pub use rule::{AdamMoments, FusedRule};

use buffers::{Pool, replace_values, with_values};

/// One parameter's optimizer state: the step count and Adam's two moments (empty for SGD).
#[derive(Debug, Clone)]
pub(crate) struct Moments {
    pub time: usize,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// An optimizer for [`crate::GuardedOptimizer::fused`]: Burn's SGD, Adam or AdamW, step for step
/// (bit for bit on the CPU backend), with the guard's update bound measured in the same pass as
/// the update instead of from a copy of the model kept before it.
///
/// Its state is saved and loaded in Burn's own optimizer record format
/// ([`FusedOptimizer::to_record`]): a checkpoint of the fused optimizer loads into Burn's
/// optimizer of the same rule and back.
#[derive(Debug)]
pub struct FusedOptimizer {
    rule: FusedRule,
    states: HashMap<ParamId, Moments>,
    /// Buffers of finished steps, reused by the next (no allocation per step).
    pool: Pool,
}

impl Clone for FusedOptimizer {
    /// The rule and the state; the spare buffers stay with the original.
    fn clone(&self) -> Self {
        FusedOptimizer {
            rule: self.rule,
            states: self.states.clone(),
            pool: Pool::default(),
        }
    }
}

/// What the fused step left to decide: per parameter with a gradient, its new weights and
/// moments, not yet in the module or the optimizer.
#[derive(Debug)]
pub(crate) struct Pending {
    steps: HashMap<ParamId, ParamStep>,
}

#[derive(Debug)]
struct ParamStep {
    /// Position in the step's norms.
    index: usize,
    span: Option<UnitSpan>,
    time: usize,
    after: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl FusedOptimizer {
    /// An optimizer with `rule` and no state yet.
    pub fn new(rule: FusedRule) -> Self {
        FusedOptimizer {
            rule,
            states: HashMap::new(),
            pool: Pool::default(),
        }
    }

    /// The update rule.
    pub fn rule(&self) -> FusedRule {
        self.rule
    }

    /// Computes the step of every parameter of `module` that has a gradient in `grads` at rate
    /// `lr` into spare buffers, and measures what `measure` asks (every float parameter, in
    /// module order, as [`crate::GuardedOptimizer`] measures any optimizer's step; with
    /// `spread`, each update's ℓ1 and ℓ∞ norms too). The module comes back unchanged.
    pub(crate) fn prepare<M: Module>(
        &mut self,
        module: M,
        grads: &HashMap<ParamId, &[f32]>,
        lr: f64,
        measure: UpdateMeasure,
        spread: bool,
    ) -> (M, Pending, Vec<UpdateNorms>) {
        let layout = match measure {
            UpdateMeasure::Units(layout) => Some(layout),
            _ => None,
        };
        let mut prepare = Prepare {
            rule: self.rule,
            lr,
            states: &self.states,
            grads,
            pool: &mut self.pool,
            measure: measure != UpdateMeasure::Nothing,
            layout,
            spread,
            path: Vec::new(),
            norms: Vec::new(),
            steps: HashMap::new(),
        };
        let module = module.map(&mut prepare);
        let (norms, steps) = (prepare.norms, prepare.steps);
        (module, Pending { steps }, norms)
    }

    /// Puts a prepared step into `module` and the optimizer's state.
    pub(crate) fn commit<M: Module>(&mut self, module: M, pending: Pending) -> M {
        let mut commit = Commit {
            steps: pending.steps,
            states: &mut self.states,
            pool: &mut self.pool,
        };
        module.map(&mut commit)
    }

    /// Drops a prepared step: the module and the state stay as they were.
    pub(crate) fn discard(&mut self, pending: Pending) {
        for (_, step) in pending.steps {
            self.pool.give(step.after);
            self.pool.give(step.m);
            self.pool.give(step.v);
        }
    }

    /// Scales a prepared step's updates by the update bound's factors:
    /// `w ← w_before + s·(w_after − w_before)`, per tensor or per unit, in f32 (as
    /// [`crate::GuardedOptimizer`] scales any optimizer's update). The moments stay as stepped.
    pub(crate) fn scale<M: Module>(
        &mut self,
        module: M,
        pending: &mut Pending,
        check: &UpdateCheck,
    ) -> M {
        let mut scale = Scale {
            steps: &mut pending.steps,
            check,
        };
        module.map(&mut scale)
    }

    pub(crate) fn states(&self) -> &HashMap<ParamId, Moments> {
        &self.states
    }

    pub(crate) fn set_states(&mut self, states: HashMap<ParamId, Moments>) {
        self.states = states;
    }
}

/// Values stepped and measured at a time: four of the norms' blocks (16 KB per buffer), so the
/// seven buffers of an Adam slice stay in cache between the step and its measurement.
const SLICE: usize = 4 * BLOCK;

struct Prepare<'a> {
    rule: FusedRule,
    lr: f64,
    states: &'a HashMap<ParamId, Moments>,
    grads: &'a HashMap<ParamId, &'a [f32]>,
    pool: &'a mut Pool,
    measure: bool,
    layout: Option<UnitLayout>,
    spread: bool,
    path: Vec<String>,
    norms: Vec<UpdateNorms>,
    steps: HashMap<ParamId, ParamStep>,
}

impl Prepare<'_> {
    /// One parameter: its step into spare buffers (when it has a gradient) and its norms, slice
    /// by slice, each slice measured while it is in cache.
    fn parameter(&mut self, id: ParamId, dims: &[usize], w: &[f32]) {
        let grad = self.grads.get(&id).copied();
        let name = self.path.join(".");
        let span = self.layout.map(|layout| layout.span_or_whole(&name, dims));
        let mut sums = self.measure.then(|| UpdateSums::new(span));
        let step = grad.map(|g| {
            let state = self.states.get(&id);
            let (len, moments) = (w.len(), self.rule.has_moments());
            let mut after = self.pool.take(len);
            let (mut m, mut v) = if moments {
                (self.pool.take(len), self.pool.take(len))
            } else {
                (Vec::new(), Vec::new())
            };
            let time = state.map_or(1, |s| s.time + 1);
            let before = state.filter(|_| moments);
            for start in (0..len).step_by(SLICE) {
                let r = start..(start + SLICE).min(len);
                let moments = before.map(|s| (&s.m[r.clone()], &s.v[r.clone()]));
                // SGD keeps no moments: its buffers are empty.
                let (m, v) = (
                    m.get_mut(r.clone()).unwrap_or_default(),
                    v.get_mut(r.clone()).unwrap_or_default(),
                );
                let (w, after) = (&w[r.clone()], &mut after[r.clone()]);
                self.rule
                    .step_into(self.lr, time, w, &g[r.clone()], moments, after, m, v);
                if let Some(sums) = &mut sums {
                    sums.add(w, after);
                }
            }
            ParamStep {
                index: self.norms.len(),
                span,
                time,
                after,
                m,
                v,
            }
        });
        if let Some(mut sums) = sums {
            let after = step.as_ref().map_or(w, |s| s.after.as_slice());
            if step.is_none() {
                sums.add(w, w);
            }
            let ((weight, update), units) = sums.finish();
            let spread = self.spread.then(|| crate::update::spread_of(w, after));
            self.norms.push(UpdateNorms {
                name,
                len: w.len(),
                weight,
                update,
                units,
                spread,
            });
        }
        if let Some(step) = step {
            self.steps.insert(id, step);
        }
    }
}

impl ModuleMapper for Prepare<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        if !self.measure && !self.grads.contains_key(&id) {
            return param;
        }
        param.map(|w| {
            let dims = w.dims();
            with_values(w, |values| self.parameter(id, &dims, values))
        })
    }
}

struct Commit<'a> {
    steps: HashMap<ParamId, ParamStep>,
    states: &'a mut HashMap<ParamId, Moments>,
    pool: &'a mut Pool,
}

impl ModuleMapper for Commit<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(step) = self.steps.remove(&param.id) else {
            return param;
        };
        let id = param.id;
        let ParamStep {
            time, after, m, v, ..
        } = step;
        let mut old = None;
        let param = param.map(|w| {
            let dims = w.dims();
            let (w, before) = replace_values(w, TensorData::new(after, dims));
            old = Some(before);
            w
        });
        if let Some(before) = old {
            self.pool.give(before);
        }
        let state = Moments { time, m, v };
        if let Some(previous) = self.states.insert(id, state) {
            self.pool.give(previous.m);
            self.pool.give(previous.v);
        }
        param
    }
}

struct Scale<'a> {
    steps: &'a mut HashMap<ParamId, ParamStep>,
    check: &'a UpdateCheck,
}

impl ModuleMapper for Scale<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(step) = self.steps.get_mut(&param.id) else {
            return param;
        };
        let len = step.after.len();
        let factors = crate::update::factors_of(
            step.index,
            step.span,
            len,
            &self.check.scales,
            &self.check.unit_scales,
        );
        let Some((span, factors)) = factors else {
            return param;
        };
        param.map(|w| {
            with_values(w, |before| {
                let cols = span.cols.max(1);
                for (row, (b, a)) in before
                    .chunks(cols)
                    .zip(step.after.chunks_mut(cols))
                    .enumerate()
                {
                    for (col, (&b, a)) in b.iter().zip(a).enumerate() {
                        let f = factors[if span.units_are_columns { col } else { row }];
                        *a = b + f * (*a - b);
                    }
                }
            })
        })
    }
}
