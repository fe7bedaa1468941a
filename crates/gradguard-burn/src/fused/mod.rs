//! A guarded optimizer whose step measures itself: the update rule ([`FusedRule`]: SGD, Adam,
//! AdamW) writes each parameter's new weights over its gradient (read in the same pass, not
//! needed after it) and its new moments into spare buffers, and the update bound's norms are
//! read from the weights and the new weights slice by slice, while they are in cache. Nothing is
//! cloned before the step and nothing is undone after it: a step the guard reverts is dropped, a
//! bounded one is rescaled in its buffers, and an accepted one is committed by handing the
//! buffers over (the new weights become the parameters' tensors, the new moments the state).
//!
//! On the host (Burn's `flex` CPU backend, f32 parameters) weights and gradients are read where
//! they lie. On a CubeCL device (wgpu, CUDA, ROCm; f32 parameters) the rule is one queued kernel
//! (`device.rs`, [`crate::cube`]) that writes new weights and moments into new buffers and takes
//! the block statistics of the weights and of the update in the same pass. Elsewhere (f16 or
//! bf16 parameters, a distributed parameter, the device placement on the CPU backend)
//! [`crate::GuardedOptimizer`] steps the equivalent Burn optimizer ([`FusedRule::to_burn`]) and
//! measures its update as it does for any optimizer.

mod buffers;
mod device;
mod record;
mod rule;

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use gradguard::kernel::{BLOCK, UpdateSums};
use gradguard::{UnitLayout, UnitSpan, UpdateCheck, UpdateMeasure, UpdateNorms};

pub use rule::{AdamMoments, FusedRule};

pub(crate) use buffers::map_values;
use buffers::{HostValues, Pool, replace_values};
#[cfg(feature = "cube")]
pub(crate) use device::{Afters, cube_inputs};
pub(crate) use device::{DevicePending, DeviceStep};
use rayon::prelude::*;

/// One parameter's optimizer state: the step count and Adam's two moments (empty for SGD), with
/// the parameter's shape and module path for its record.
#[derive(Debug, Clone)]
pub(crate) struct Moments {
    pub time: usize,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub dims: Vec<usize>,
    pub path: String,
}

/// An optimizer for [`crate::GuardedOptimizer::fused`]: Burn's SGD, Adam or AdamW, step for step
/// (bit for bit on the CPU backend), with the guard's update bound measured in the same pass as
/// the update instead of from a copy of the model kept before it.
///
/// Its state is saved and loaded in Burn's own optimizer record format
/// ([`FusedOptimizer::into_bytes`]): a checkpoint of the fused optimizer loads into Burn's
/// optimizer of the same rule and back.
#[derive(Debug)]
pub struct FusedOptimizer {
    rule: FusedRule,
    /// States on the host (the CPU backend's steps, or a loaded record not stepped since).
    states: HashMap<ParamId, Moments>,
    /// States on a CubeCL device (its steps).
    device: HashMap<ParamId, device::DeviceState>,
    /// Moment buffers of finished steps, reused by the next (no allocation per step).
    pool: Pool,
}

impl Clone for FusedOptimizer {
    /// The rule and the state; the spare buffers stay with the original.
    fn clone(&self) -> Self {
        FusedOptimizer {
            rule: self.rule,
            states: self.states.clone(),
            device: self.device.clone(),
            pool: Pool::default(),
        }
    }
}

/// What the fused step left to decide: per parameter with a gradient, its new moments and its
/// new weights (in what was its gradient's buffer), not yet in the module or the optimizer.
#[derive(Debug)]
pub(crate) struct Pending {
    steps: HashMap<ParamId, ParamStep>,
    afters: HashMap<ParamId, TensorData>,
}

/// The steps [`FusedOptimizer::prepare`] computed, before their weights' buffers join them.
#[derive(Debug)]
pub(crate) struct Prepared(HashMap<ParamId, ParamStep>);

impl Prepared {
    /// The pending step, with the new weights in `afters` (the gradient buffers the step wrote).
    pub fn with_weights(self, afters: HashMap<ParamId, TensorData>) -> Pending {
        Pending {
            steps: self.0,
            afters,
        }
    }
}

#[derive(Debug)]
struct ParamStep {
    /// Position in the step's norms.
    index: usize,
    span: Option<UnitSpan>,
    dims: Vec<usize>,
    path: String,
    time: usize,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl FusedOptimizer {
    /// An optimizer with `rule` and no state yet.
    pub fn new(rule: FusedRule) -> Self {
        FusedOptimizer {
            rule,
            states: HashMap::new(),
            device: HashMap::new(),
            pool: Pool::default(),
        }
    }

    /// An optimizer with `rule` and `states` (a record's, or a non-blocking optimizer's read
    /// back).
    pub(crate) fn with_states(rule: FusedRule, states: HashMap<ParamId, Moments>) -> Self {
        FusedOptimizer {
            rule,
            states,
            device: HashMap::new(),
            pool: Pool::default(),
        }
    }

    /// The per-parameter states (a device's read back).
    pub(crate) fn into_states(self) -> HashMap<ParamId, Moments> {
        self.host_states()
    }

    /// The update rule.
    pub fn rule(&self) -> FusedRule {
        self.rule
    }

    /// Whether any parameter has stepped (or a record was loaded).
    pub fn has_state(&self) -> bool {
        !self.states.is_empty() || !self.device.is_empty()
    }

    /// Computes the step of every parameter of `module` that has a gradient in `grads` at rate
    /// `lr` — the new weights over the gradient, the new moments into spare buffers — and
    /// measures what `measure` asks (every float parameter, in module order, as
    /// [`crate::GuardedOptimizer`] measures any optimizer's step; with `spread`, each update's
    /// ℓ1 and ℓ∞ norms too). Parameters are stepped on all cores, each one slice after another,
    /// so the result does not depend on the number of cores. `None`, with nothing written, when
    /// a parameter is not a contiguous f32 tensor of the CPU backend or is distributed.
    pub(crate) fn prepare<M: Module>(
        &mut self,
        module: &M,
        mut grads: HashMap<ParamId, &mut [f32]>,
        lr: f64,
        measure: UpdateMeasure,
        spread: bool,
    ) -> Option<(Prepared, Vec<UpdateNorms>)> {
        let layout = match measure {
            UpdateMeasure::Units(layout) => Some(layout),
            _ => None,
        };
        let measure = measure != UpdateMeasure::Nothing;
        let mut reads = Reads {
            path: Vec::new(),
            all: measure,
            grads: &grads,
            layout,
            params: Vec::new(),
            missing: false,
        };
        module.visit(&mut reads);
        if reads.missing {
            return None;
        }
        let (rule, states) = (self.rule, &self.states);
        let jobs: Vec<(Read, Option<Buffers>)> = reads
            .params
            .into_iter()
            .map(|read| {
                let buffers = grads.remove(&read.id).map(|grad| {
                    let len = read.values.values().len();
                    let moments = rule.has_moments();
                    let mut take = |on: bool| if on { self.pool.take(len) } else { Vec::new() };
                    Buffers {
                        grad,
                        m: take(moments),
                        v: take(moments),
                    }
                });
                (read, buffers)
            })
            .collect();
        let done: Vec<(ParamId, Option<ParamStep>, Option<UpdateNorms>)> = jobs
            .into_par_iter()
            .map(|(read, buffers)| {
                let state = states.get(&read.id);
                let job = ParamJob {
                    rule,
                    lr,
                    measure,
                    spread,
                };
                let (step, norms) = job.run(&read, state, buffers);
                (read.id, step, norms)
            })
            .collect();
        let mut steps = HashMap::new();
        let mut norms = Vec::new();
        for (id, step, measured) in done {
            if let Some(mut step) = step {
                step.index = norms.len();
                steps.insert(id, step);
            }
            norms.extend(measured);
        }
        Some((Prepared(steps), norms))
    }

    /// Puts a prepared step into `module` and the optimizer's state.
    pub(crate) fn commit<M: Module>(&mut self, module: M, pending: Pending) -> M {
        let mut commit = Commit {
            steps: pending.steps,
            afters: pending.afters,
            states: &mut self.states,
            pool: &mut self.pool,
        };
        module.map(&mut commit)
    }

    /// Drops a prepared step: the module and the state stay as they were.
    pub(crate) fn discard(&mut self, pending: Pending) {
        for (_, step) in pending.steps {
            self.pool.give(step.m);
            self.pool.give(step.v);
        }
    }

    /// Scales a prepared step's updates by the update bound's factors:
    /// `w ← w_before + s·(w_after − w_before)`, per tensor or per unit, in f32 (as
    /// [`crate::GuardedOptimizer`] scales any optimizer's update). The moments stay as stepped.
    pub(crate) fn scale<M: Module>(&self, module: &M, pending: &mut Pending, check: &UpdateCheck) {
        module.visit(&mut Scale {
            steps: &pending.steps,
            afters: &mut pending.afters,
            check,
        });
    }
}

/// Values stepped and measured at a time: four of the norms' blocks (16 KB per buffer), so the
/// six buffers of an Adam slice (weights, gradient then new weights, two moments and two new
/// ones) stay in cache between the step and its measurement.
const SLICE: usize = 4 * BLOCK;

/// One parameter to step or measure: its id, path name, units and values.
struct Read {
    id: ParamId,
    name: String,
    dims: Vec<usize>,
    span: Option<UnitSpan>,
    values: HostValues,
}

/// Collects the parameters to read, in module order: those with a gradient, and with `all` every
/// float parameter (the bound measures them all).
struct Reads<'a> {
    path: Vec<String>,
    all: bool,
    grads: &'a HashMap<ParamId, &'a mut [f32]>,
    layout: Option<UnitLayout>,
    params: Vec<Read>,
    /// A parameter is not readable on the host.
    missing: bool,
}

impl ModuleVisitor for Reads<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.all && !self.grads.contains_key(&param.id) {
            return;
        }
        let w = param.val();
        // A distributed parameter is Burn's optimizer's to step (its sync marks stay on it).
        let values = HostValues::of(&w).filter(|_| !w.is_distributed());
        let Some(values) = values else {
            self.missing = true;
            return;
        };
        let (name, dims) = (self.path.join("."), w.dims().to_vec());
        let span = self.layout.map(|layout| layout.span_or_whole(&name, &dims));
        self.params.push(Read {
            id: param.id,
            name,
            dims,
            span,
            values,
        });
    }
}

/// A parameter's buffers for its step: its gradient, overwritten by its new weights, and for Adam
/// and AdamW spare buffers for its new moments.
struct Buffers<'a> {
    grad: &'a mut [f32],
    m: Vec<f32>,
    v: Vec<f32>,
}

/// What every parameter's step shares.
#[derive(Clone, Copy)]
struct ParamJob {
    rule: FusedRule,
    lr: f64,
    measure: bool,
    spread: bool,
}

impl ParamJob {
    /// One parameter: its step into `buffers` (when it has a gradient) and its norms, slice by
    /// slice, each slice measured while it is in cache.
    fn run(
        self,
        read: &Read,
        state: Option<&Moments>,
        buffers: Option<Buffers>,
    ) -> (Option<ParamStep>, Option<UpdateNorms>) {
        let w = read.values.values();
        let mut sums = self.measure.then(|| UpdateSums::new(read.span));
        let mut after: Option<&[f32]> = None;
        let step = buffers.map(|mut b| {
            let time = state.map_or(1, |s| s.time + 1);
            let before = state.filter(|_| self.rule.has_moments());
            for start in (0..w.len()).step_by(SLICE) {
                let r = start..(start + SLICE).min(w.len());
                let moments = before.map(|s| (&s.m[r.clone()], &s.v[r.clone()]));
                // SGD keeps no moments: its buffers are empty.
                let (m, v) = (
                    b.m.get_mut(r.clone()).unwrap_or_default(),
                    b.v.get_mut(r.clone()).unwrap_or_default(),
                );
                let (w, slot) = (&w[r.clone()], &mut b.grad[r.clone()]);
                self.rule.step_into(self.lr, time, w, slot, moments, m, v);
                if let Some(sums) = &mut sums {
                    sums.add(w, slot);
                }
            }
            after = Some(b.grad);
            ParamStep {
                index: 0,
                span: read.span,
                dims: read.dims.clone(),
                path: read.name.clone(),
                time,
                m: b.m,
                v: b.v,
            }
        });
        let norms = sums.map(|mut sums| {
            if after.is_none() {
                sums.add(w, w);
            }
            let after = after.unwrap_or(w);
            let ((weight, update), units) = sums.finish();
            UpdateNorms {
                name: read.name.clone(),
                len: w.len(),
                weight,
                update,
                units,
                spread: self.spread.then(|| crate::update::spread_of(w, after)),
            }
        });
        (step, norms)
    }
}

struct Commit<'a> {
    steps: HashMap<ParamId, ParamStep>,
    afters: HashMap<ParamId, TensorData>,
    states: &'a mut HashMap<ParamId, Moments>,
    pool: &'a mut Pool,
}

impl ModuleMapper for Commit<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(step) = self.steps.remove(&param.id) else {
            return param;
        };
        let Some(after) = self.afters.remove(&param.id) else {
            return param;
        };
        let id = param.id;
        let ParamStep {
            time,
            m,
            v,
            dims,
            path,
            ..
        } = step;
        let (bytes, _, dtype) = after.into_parts();
        let after = TensorData::from_bytes(bytes, dims.clone(), dtype);
        let param = param.map(|w| replace_values(w, after));
        let state = Moments {
            time,
            m,
            v,
            dims,
            path,
        };
        if let Some(previous) = self.states.insert(id, state) {
            self.pool.give(previous.m);
            self.pool.give(previous.v);
        }
        param
    }
}

struct Scale<'a> {
    steps: &'a HashMap<ParamId, ParamStep>,
    afters: &'a mut HashMap<ParamId, TensorData>,
    check: &'a UpdateCheck,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (Some(step), Some(after)) = (self.steps.get(&param.id), self.afters.get_mut(&param.id))
        else {
            return;
        };
        let after = after
            .as_mut_slice::<f32>()
            .expect("the step wrote f32 weights");
        let factors = crate::update::factors_of(
            step.index,
            step.span,
            after.len(),
            &self.check.scales,
            &self.check.unit_scales,
        );
        let Some((span, factors)) = factors else {
            return;
        };
        let values = HostValues::of(&param.val()).expect("read when the step was prepared");
        let cols = span.cols.max(1);
        let rows = values.values().chunks(cols).zip(after.chunks_mut(cols));
        for (row, (b, a)) in rows.enumerate() {
            for (col, (&b, a)) in b.iter().zip(a).enumerate() {
                let f = factors[if span.units_are_columns { col } else { row }];
                *a = b + f * (*a - b);
            }
        }
    }
}
