//! The fused rules' step on a parameter's device by Burn's tensor ops, taking its decision from
//! device values: the gradient is multiplied by the step's factor, and where the step is not
//! accepted the weights and the moments stay as they were (selected, so a NaN gradient of a
//! skipped step reaches nothing). Burn queues it all; nothing is read.
//!
//! The arithmetic is [`FusedRule::step_into`]'s (Burn's `Sgd`, `Adam`, `AdamW`). The step count t
//! of a parameter is the count the host has read (`known`) plus the accepted steps it has not:
//! 0, 1 or 2 (the previous step's, whose report is read after this one is queued, and this
//! one's). Adam's bias corrections for those three counts are computed on the host in f32 as
//! Burn computes them (`βᵗ` by `powi`; a device's `pow` is not exact enough:
//! docs/measurements/2026-12-07-non-blocking-step.md) and selected on the device ([`Corrections`]), once per step for all the
//! parameters that share a count — so a parameter's step is one elementwise chain.

use std::any::Any;
use std::collections::HashMap;

use burn::tensor::{Bool, DType, Tensor, TensorData};

use crate::fused::{AdamMoments, FusedRule, Moments};

/// A moment as the step that made it left it: in its parameter's shape, whatever the rank (Burn's
/// tensor ops: the next step reads it without a reshape, which would end Burn's fusion block),
/// or flat (the step kernel's output: the next kernel reads it as it is).
pub(crate) enum Shaped {
    /// In the parameter's shape.
    Ranked(Box<dyn ShapedTensor>),
    /// Flat, with the parameter's shape.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    Flat(Box<Tensor<1>>, Vec<usize>),
}

/// A tensor of some rank behind [`Shaped`].
pub(crate) trait ShapedTensor: Send + Sync {
    fn any(&self) -> &dyn Any;
    fn read(&self) -> Vec<f32>;
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    fn flat(&self) -> Tensor<1>;
    fn boxed(&self) -> Box<dyn ShapedTensor>;
}

impl<const D: usize> ShapedTensor for Tensor<D> {
    fn any(&self) -> &dyn Any {
        self
    }

    fn read(&self) -> Vec<f32> {
        self.to_data()
            .convert_dtype(DType::F32)
            .try_into_vec::<f32>()
            .expect("f32 state")
    }

    fn flat(&self) -> Tensor<1> {
        self.clone().reshape([self.shape().num_elements()])
    }

    fn boxed(&self) -> Box<dyn ShapedTensor> {
        Box::new(self.clone())
    }
}

impl Shaped {
    fn of<const D: usize>(t: Tensor<D>) -> Self {
        Shaped::Ranked(Box::new(t))
    }

    /// The tensor in its parameter's shape, of rank `D`.
    fn get<const D: usize>(&self) -> Tensor<D> {
        match self {
            Shaped::Ranked(t) => t
                .any()
                .downcast_ref::<Tensor<D>>()
                .expect("a parameter keeps its rank")
                .clone(),
            Shaped::Flat(t, dims) => {
                let dims: [usize; D] = dims
                    .as_slice()
                    .try_into()
                    .expect("a parameter keeps its rank");
                (**t).clone().reshape(dims)
            }
        }
    }

    /// The tensor, flat.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub fn flat(&self) -> Tensor<1> {
        match self {
            Shaped::Ranked(t) => t.flat(),
            Shaped::Flat(t, _) => (**t).clone(),
        }
    }

    fn read(&self) -> Vec<f32> {
        match self {
            Shaped::Ranked(t) => t.read(),
            Shaped::Flat(t, _) => t.as_ref().read(),
        }
    }
}

impl Clone for Shaped {
    fn clone(&self) -> Self {
        match self {
            Shaped::Ranked(t) => Shaped::Ranked(t.boxed()),
            Shaped::Flat(t, dims) => Shaped::Flat(t.clone(), dims.clone()),
        }
    }
}

impl std::fmt::Debug for Shaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shaped")
    }
}

/// One parameter's optimizer state on its device: for Adam and AdamW its two moments (in the
/// parameter's shape and dtype); its step count is kept on the host (see the module
/// documentation).
#[derive(Debug, Clone)]
pub(crate) struct DeviceMoments {
    m: Option<Shaped>,
    v: Option<Shaped>,
    dims: Vec<usize>,
    path: String,
}

impl DeviceMoments {
    /// The state read back to the host with step count `time`, in the fused optimizer's record
    /// form (blocking reads).
    pub fn to_host(&self, time: usize) -> Moments {
        let read = |t: &Shaped| t.read();
        Moments {
            time,
            m: self.m.as_ref().map(read).unwrap_or_default(),
            v: self.v.as_ref().map(read).unwrap_or_default(),
            dims: self.dims.clone(),
            path: self.path.clone(),
        }
    }

    /// The state the step kernel made: flat moments (Adam, AdamW) of a parameter of shape `dims`.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub fn flat(moments: Option<(Tensor<1>, Tensor<1>)>, dims: Vec<usize>, path: String) -> Self {
        let (m, v) = match moments {
            Some((m, v)) => (
                Some(Shaped::Flat(Box::new(m), dims.clone())),
                Some(Shaped::Flat(Box::new(v), dims.clone())),
            ),
            None => (None, None),
        };
        DeviceMoments { m, v, dims, path }
    }

    /// The two moments, flat, where the rule keeps them.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub fn flat_moments(&self) -> Option<(Tensor<1>, Tensor<1>)> {
        Some((self.m.as_ref()?.flat(), self.v.as_ref()?.flat()))
    }

    /// A host state uploaded to `device` as moments of shape `dims`.
    pub fn upload<const D: usize>(
        state: &Moments,
        dims: [usize; D],
        device: &burn::tensor::Device,
    ) -> Self {
        let shaped = |v: &Vec<f32>| {
            (!v.is_empty()).then(|| {
                Shaped::of(Tensor::<D>::from_data(
                    TensorData::new(v.clone(), dims),
                    device,
                ))
            })
        };
        DeviceMoments {
            m: shaped(&state.m),
            v: shaped(&state.v),
            dims: dims.to_vec(),
            path: state.path.clone(),
        }
    }
}

/// Adam's two scalars for the step counts `known + j`, j = 0, 1, 2 (`[1]` f32 tensors each): for
/// Adam `(√(1−β₂ᵗ)/(1−β₁ᵗ), ε·√(1−β₂ᵗ))`, for AdamW `(1−β₁ᵗ, 1−β₂ᵗ)`.
#[derive(Debug, Clone)]
pub(crate) struct Corrections {
    first: [Tensor<1>; 3],
    second: [Tensor<1>; 3],
}

/// The two scalars of one step count, selected on the device.
pub(crate) type Picked = (Tensor<1>, Tensor<1>);

impl Corrections {
    /// The table for `rule` from the known count `known`, on `device` (`None` for SGD).
    pub fn new(rule: FusedRule, known: usize, device: &burn::tensor::Device) -> Option<Self> {
        let (moments, adam) = match rule {
            FusedRule::Sgd { .. } => return None,
            FusedRule::Adam { moments, .. } => (moments, true),
            FusedRule::AdamW { moments, .. } => (moments, false),
        };
        // t = 0 (a parameter whose steps were all skipped) is never applied: its entries stay
        // 1, so no NaN or inf is computed from them.
        let value = |j: usize| -> (f32, f32) {
            if known + j == 0 {
                return (1.0, 1.0);
            }
            let t = (known + j) as i32;
            let c1 = 1.0 - moments.beta_1.powi(t);
            let c2 = 1.0 - moments.beta_2.powi(t);
            if adam {
                let bias_correction2_sqrt = c2.sqrt();
                (
                    bias_correction2_sqrt / c1,
                    moments.epsilon * bias_correction2_sqrt,
                )
            } else {
                (c1, c2)
            }
        };
        let scalar = |x: f32| Tensor::<1>::from_floats([x], device);
        let values = [value(0), value(1), value(2)];
        Some(Corrections {
            first: values.map(|(a, _)| scalar(a)),
            second: values.map(|(_, b)| scalar(b)),
        })
    }

    /// The scalars for `known + offset`, `offset` (`[1]`) being 0, 1 or 2: selected, so each is
    /// exactly the host's value.
    pub fn pick(&self, offset: &Tensor<1>) -> Picked {
        let select = |table: &[Tensor<1>; 3]| {
            table[0]
                .clone()
                .mask_where(offset.clone().equal_elem(1.0), table[1].clone())
                .mask_where(offset.clone().equal_elem(2.0), table[2].clone())
        };
        (select(&self.first), select(&self.second))
    }
}

/// The step's inputs shared by every parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepInputs<'a> {
    pub rule: FusedRule,
    pub lr: f64,
    /// `[1]`: 1 to apply, 0 to skip.
    pub accept: &'a Tensor<1>,
    /// `[1]`: `accept` is 0 (computed once a step, viewed in each parameter's rank).
    pub skip: &'a Tensor<1, burn::tensor::Bool>,
    /// `[1]`: the gradients' factor.
    pub factor: &'a Tensor<1>,
    /// `[factor, accept]` in one tensor, where the decision kernel made them so.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub control: Option<&'a Tensor<1>>,
}

/// The step's `[1]` scalars as rank-`D` tensors of one value (which Burn's elementwise
/// operations broadcast), each reshaped once a step per rank: a reshape queued between two
/// parameters' chains ends Burn's fusion block there, one more kernel per parameter.
#[derive(Default)]
pub(crate) struct Views {
    cache: HashMap<(usize, usize), Box<dyn Any + Send + Sync>>,
}

impl Views {
    /// `t` (the step's scalar number `key`) at rank `D`.
    fn float<const D: usize>(&mut self, key: usize, t: &Tensor<1>) -> Tensor<D> {
        self.cache
            .entry((D, key))
            .or_insert_with(|| Box::new(t.clone().reshape([1; D])))
            .downcast_ref::<Tensor<D>>()
            .expect("one rank per key")
            .clone()
    }

    /// The boolean `t` (number `key`) at rank `D`.
    fn boolean<const D: usize>(&mut self, key: usize, t: &Tensor<1, Bool>) -> Tensor<D, Bool> {
        self.cache
            .entry((D, key))
            .or_insert_with(|| Box::new(t.clone().reshape([1; D])))
            .downcast_ref::<Tensor<D, Bool>>()
            .expect("one rank per key")
            .clone()
    }
}

/// [`Views`] keys: the factor, the skip mask, then two per class of Adam's corrections.
const FACTOR: usize = 0;
const SKIP: usize = 1;
const PICKED: usize = 2;

impl StepInputs<'_> {
    /// The weights and state after one step of `w` with gradient `g` (its shape), from `state`
    /// (`None`: the parameter's first step); `picked` is Adam's two scalars for the parameter's
    /// step count and the number of their class (`None` for SGD).
    pub fn step<const D: usize>(
        &self,
        w: Tensor<D>,
        g: Tensor<D>,
        state: Option<&DeviceMoments>,
        picked: Option<(&Picked, usize)>,
        views: &mut Views,
        path: &str,
    ) -> (Tensor<D>, DeviceMoments) {
        let dims = w.dims();
        let device = w.device();
        let skip = views.boolean::<D>(SKIP, self.skip);
        let g = g * views.float::<D>(FACTOR, self.factor);
        let picked = |views: &mut Views| -> (Tensor<D>, Tensor<D>) {
            let ((a, b), class) = picked.expect("Adam's corrections");
            (
                views.float::<D>(PICKED + 2 * class, a),
                views.float::<D>(PICKED + 2 * class + 1, b),
            )
        };
        let lr = self.lr as f32;
        let shaped = |t: &Shaped| t.get::<D>();
        let (after, m, v) = match self.rule {
            FusedRule::Sgd { weight_decay } => {
                let g = match weight_decay {
                    Some(penalty) => w.clone() * penalty + g,
                    None => g,
                };
                (w.clone() - g * lr, None, None)
            }
            FusedRule::Adam {
                moments,
                weight_decay,
            } => {
                let g = match weight_decay {
                    Some(penalty) => w.clone() * penalty + g,
                    None => g,
                };
                let (m, v) = moments_after(moments, state, g, &shaped);
                let (combined, eps) = picked(views);
                let after = w.clone() - ((m.clone() * combined) / (v.clone().sqrt() + eps)) * lr;
                (after, Some(m), Some(v))
            }
            FusedRule::AdamW {
                moments,
                weight_decay,
            } => {
                let (m, v) = moments_after(moments, state, g, &shaped);
                let (c1, c2) = picked(views);
                let decay_rate = self.lr * f64::from(weight_decay);
                let decayed = if decay_rate == 0.0 {
                    w.clone()
                } else {
                    w.clone() * (1.0 - decay_rate) as f32
                };
                let after =
                    decayed - ((m.clone() / c1) / ((v.clone() / c2).sqrt() + moments.epsilon)) * lr;
                (after, Some(m), Some(v))
            }
        };
        let keep = |new: Tensor<D>, old: Tensor<D>| new.mask_where(skip.clone(), old);
        let zeros = || Tensor::<D>::zeros(dims, &device);
        let old_m = || state.and_then(|s| s.m.as_ref()).map_or_else(zeros, &shaped);
        let old_v = || state.and_then(|s| s.v.as_ref()).map_or_else(zeros, &shaped);
        let next = DeviceMoments {
            m: m.map(|m| Shaped::of(keep(m, old_m()))),
            v: v.map(|v| Shaped::of(keep(v, old_v()))),
            dims: dims.to_vec(),
            path: path.to_string(),
        };
        (keep(after, w), next)
    }
}

/// Adam's moments after a step with gradient `g`: `β·m + (1−β)·g` (and `·g²`), from zero on a
/// parameter's first step.
fn moments_after<const D: usize>(
    settings: AdamMoments,
    state: Option<&DeviceMoments>,
    g: Tensor<D>,
    shaped: &impl Fn(&Shaped) -> Tensor<D>,
) -> (Tensor<D>, Tensor<D>) {
    let (f1, f2) = (1.0 - settings.beta_1, 1.0 - settings.beta_2);
    let squared = g.clone() * g.clone();
    match state.and_then(|s| s.m.as_ref().zip(s.v.as_ref())) {
        Some((m, v)) => (
            shaped(m) * settings.beta_1 + g * f1,
            shaped(v) * settings.beta_2 + squared * f2,
        ),
        None => (g * f1, squared * f2),
    }
}
