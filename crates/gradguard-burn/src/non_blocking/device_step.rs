//! The fused rules' step on a parameter's device by Burn's tensor ops, taking its decision from
//! device values: the gradient is multiplied by the step's factor, and where the step is not
//! accepted the weights, the moments and the step count stay as they were (selected, so a NaN
//! gradient of a skipped step reaches nothing). Burn queues it all; nothing is read.
//!
//! The arithmetic is [`FusedRule::step_into`]'s (Burn's `Sgd`, `Adam`, `AdamW`), with the step
//! count t kept on the device (a skipped step does not count). The host knows t only up to the
//! steps whose reports it has read, so t is the known count plus 0, 1 or 2; Adam's bias
//! corrections for those three counts are computed on the host in f32 as Burn computes them
//! (`βᵗ` by `powi`; with llvmpipe's `pow` Adam's weights were more than 2e-6 off after two
//! steps) and the device
//! picks one ([`Corrections`]).

use burn::tensor::{DType, Tensor};

use crate::fused::{AdamMoments, FusedRule, Moments};

/// One parameter's optimizer state on its device: the step count (`[1]` f32) and, for Adam and
/// AdamW, the two moments (flat, f32).
#[derive(Debug, Clone)]
pub(crate) struct DeviceMoments {
    pub time: Tensor<1>,
    pub m: Option<Tensor<1>>,
    pub v: Option<Tensor<1>>,
    pub dims: Vec<usize>,
    pub path: String,
}

impl DeviceMoments {
    /// The state read back to the host, in the fused optimizer's record form (blocking reads).
    pub fn to_host(&self) -> Moments {
        let read = |t: &Tensor<1>| -> Vec<f32> {
            t.to_data()
                .convert_dtype(DType::F32)
                .try_into_vec::<f32>()
                .expect("f32 state")
        };
        let time = read(&self.time)[0].round().max(0.0) as usize;
        Moments {
            time,
            m: self.m.as_ref().map(read).unwrap_or_default(),
            v: self.v.as_ref().map(read).unwrap_or_default(),
            dims: self.dims.clone(),
            path: self.path.clone(),
        }
    }

    /// A host state uploaded to `device`.
    pub fn upload(state: &Moments, device: &burn::tensor::Device) -> Self {
        let flat =
            |v: &Vec<f32>| (!v.is_empty()).then(|| Tensor::<1>::from_floats(v.as_slice(), device));
        DeviceMoments {
            time: Tensor::<1>::from_floats([state.time as f32], device),
            m: flat(&state.m),
            v: flat(&state.v),
            dims: state.dims.clone(),
            path: state.path.clone(),
        }
    }
}

/// Adam's scalars for the step counts `known + j`, j = 0, 1, 2 (each `[3]`, f32): for Adam
/// `(√(1−β₂ᵗ)/(1−β₁ᵗ), ε·√(1−β₂ᵗ))`, for AdamW `(1−β₁ᵗ, 1−β₂ᵗ)`.
#[derive(Debug, Clone)]
pub(crate) struct Corrections {
    known: usize,
    first: Tensor<1>,
    second: Tensor<1>,
}

impl Corrections {
    /// The table for `rule` from the known count `known`, on `device` (`None` for SGD).
    pub fn new(rule: FusedRule, known: usize, device: &burn::tensor::Device) -> Option<Self> {
        let (moments, adam) = match rule {
            FusedRule::Sgd { .. } => return None,
            FusedRule::Adam { moments, .. } => (moments, true),
            FusedRule::AdamW { moments, .. } => (moments, false),
        };
        // t = 0 (a parameter whose steps were all skipped) is never applied: its entries stay
        // 1, so the one-hot pick multiplies no NaN.
        let (mut first, mut second) = ([1f32; 3], [1f32; 3]);
        for j in (0..3).filter(|j| known + j > 0) {
            let t = (known + j) as i32;
            let c1 = 1.0 - moments.beta_1.powi(t);
            let c2 = 1.0 - moments.beta_2.powi(t);
            (first[j], second[j]) = if adam {
                let bias_correction2_sqrt = c2.sqrt();
                (
                    bias_correction2_sqrt / c1,
                    moments.epsilon * bias_correction2_sqrt,
                )
            } else {
                (c1, c2)
            };
        }
        Some(Corrections {
            known,
            first: Tensor::<1>::from_floats(first, device),
            second: Tensor::<1>::from_floats(second, device),
        })
    }

    /// The two scalars (`[1]` each) for the step count `time` (`[1]`, known + 0, 1 or 2).
    fn pick(&self, time: &Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let device = time.device();
        let offsets = Tensor::<1, burn::tensor::Int>::arange(0..3, &device).float();
        let index = time.clone().sub_scalar(self.known as f32).expand([3]);
        let one_hot = offsets.equal(index).float();
        (
            (self.first.clone() * one_hot.clone()).sum(),
            (self.second.clone() * one_hot).sum(),
        )
    }
}

/// The step's inputs shared by every parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepInputs<'a> {
    pub rule: FusedRule,
    pub lr: f64,
    /// `[1]`: 1 to apply, 0 to skip.
    pub accept: &'a Tensor<1>,
    /// `[1]`: the gradients' factor.
    pub factor: &'a Tensor<1>,
}

/// A `[1]` tensor broadcast to `dims`.
fn spread<const D: usize>(t: &Tensor<1>, dims: [usize; D]) -> Tensor<D> {
    t.clone().reshape([1; D]).expand(dims)
}

impl StepInputs<'_> {
    /// The weights and state after one step of `w` with gradient `g` (its shape), from `state`
    /// (`None`: the parameter's first step).
    /// `corrections` is Adam's table from the parameter's known step count (`None` for SGD).
    pub fn step<const D: usize>(
        &self,
        w: Tensor<D>,
        g: Tensor<D>,
        state: Option<&DeviceMoments>,
        corrections: Option<&Corrections>,
        path: &str,
    ) -> (Tensor<D>, DeviceMoments) {
        let dims = w.dims();
        let device = w.device();
        let skip = spread(self.accept, dims).lower_elem(0.5);
        let g = g * spread(self.factor, dims);
        let time_before =
            state.map_or_else(|| Tensor::<1>::zeros([1], &device), |s| s.time.clone());
        let time = time_before.clone() + self.accept.clone();
        let lr = self.lr as f32;
        let flat = |t: Tensor<D>| {
            let n = t.shape().num_elements();
            t.reshape([n])
        };
        let shaped = |t: &Tensor<1>| t.clone().reshape(dims);
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
                let (combined, eps) = corrections.expect("Adam has corrections").pick(&time);
                let (combined, eps) = (spread(&combined, dims), spread(&eps, dims));
                let after = w.clone() - ((m.clone() * combined) / (v.clone().sqrt() + eps)) * lr;
                (after, Some(m), Some(v))
            }
            FusedRule::AdamW {
                moments,
                weight_decay,
            } => {
                let (m, v) = moments_after(moments, state, g, &shaped);
                let (c1, c2) = corrections.expect("AdamW has corrections").pick(&time);
                let (c1, c2) = (spread(&c1, dims), spread(&c2, dims));
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
            time,
            m: m.map(|m| flat(keep(m, old_m()))),
            v: v.map(|v| flat(keep(v, old_v()))),
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
    shaped: &impl Fn(&Tensor<1>) -> Tensor<D>,
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
