//! The fused optimizer on a CubeCL device (wgpu, CUDA, ROCm): every parameter's step as one
//! queued kernel ([`crate::cube::step`]) writing the new weights and moments into new buffers,
//! so that the weights before the step stay as they were — the update bound measures the update
//! against them and, when it reverts the step, keeps them — without a copy of the model or of
//! the optimizer state kept beside Burn's optimizer (what [`crate::GuardedOptimizer::new`] must
//! keep, and what stops Burn's fusion from stepping in place).

use std::collections::HashMap;

use burn::module::ParamId;
use burn::tensor::Tensor;
#[cfg(feature = "cube")]
use {
    super::buffers::map_values,
    crate::cube::step::{Control, StepInput, StepSettings, corrections, fused_step},
    burn::module::{Module, ModuleMapper, ModuleVisitor, Param},
    burn::tensor::TensorData,
};

use super::{FusedOptimizer, Moments};

/// One parameter's state on its device: its step count and, for Adam and AdamW, its two moments
/// (flat f32).
#[derive(Debug, Clone)]
pub(crate) struct DeviceState {
    time: usize,
    moments: Option<(Tensor<1>, Tensor<1>)>,
    dims: Vec<usize>,
    path: String,
}

impl DeviceState {
    /// The state read back to the host, in the record's form (blocking reads).
    pub fn to_host(&self) -> Moments {
        let read = |t: &Tensor<1>| {
            t.to_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 moments")
        };
        let (m, v) = match &self.moments {
            Some((m, v)) => (read(m), read(v)),
            None => (Vec::new(), Vec::new()),
        };
        Moments {
            time: self.time,
            m,
            v,
            dims: self.dims.clone(),
            path: self.path.clone(),
        }
    }
}

/// A device step queued and not yet committed: each stepped parameter's new state.
#[derive(Debug)]
pub(crate) struct DevicePending(HashMap<ParamId, DeviceState>);

/// What [`FusedOptimizer::step_device`] queued.
pub(crate) struct DeviceStep<M> {
    /// The module with its new weights.
    pub module: M,
    /// The optimizer state to commit if the step stands.
    pub pending: DevicePending,
    /// The pair block statistics of every float parameter's weights and update, when every one
    /// was stepped.
    pub statistics: Option<Tensor<1>>,
}

#[cfg(feature = "cube")]
impl FusedOptimizer {
    /// Queues the step of every parameter of `module` with a gradient in `grads` (flat f32
    /// tensors on a CubeCL device) at rate `lr`: the module stepped (its parameters' new values,
    /// the module given left as it was), the state to commit, and — with `measure`, when every
    /// float parameter had a gradient — the pair block statistics of the weights and the update
    /// the kernel took (see [`crate::update::Updates::from_pair_statistics`]), queued. `None`, with nothing
    /// queued, where the kernel cannot run (a parameter or gradient not f32 on a CubeCL device, a
    /// distributed parameter).
    pub(crate) fn step_device<M: Module>(
        &mut self,
        module: &M,
        grads: &HashMap<ParamId, Tensor<1>>,
        lr: f64,
        measure: bool,
    ) -> Option<DeviceStep<M>> {
        let inputs = cube_inputs(module, grads)?;
        let (rule, every) = (self.rule, inputs.without_gradient == 0);
        let mut steps = Vec::with_capacity(inputs.found.len());
        let mut ids = Vec::with_capacity(inputs.found.len());
        for found in inputs.found {
            let state = self.device.get(&found.id).cloned().or_else(|| {
                self.states
                    .get(&found.id)
                    .map(|host| upload(host, &found.w.device()))
            });
            let time = state.as_ref().map_or(0, |s| s.time) + 1;
            let moments = rule.has_moments().then(|| {
                state.and_then(|s| s.moments).unwrap_or_else(|| {
                    let zeros = found.w.zeros_like();
                    (zeros.clone(), zeros)
                })
            });
            steps.push(StepInput {
                w: found.w,
                g: found.g,
                moments,
            });
            ids.push((found.id, time, found.dims, found.path));
        }
        let table = ids
            .iter()
            .map(|(_, time, ..)| corrections(rule, *time))
            .collect();
        let control = Control::Host {
            corrections: table,
            measure: measure && every,
        };
        let stepped = fused_step(steps, StepSettings::new(rule, lr), control)?;
        let mut afters = HashMap::with_capacity(ids.len());
        let mut pending = HashMap::with_capacity(ids.len());
        let mut m = stepped.m.into_iter();
        let mut v = stepped.v.into_iter();
        for ((id, time, dims, path), w) in ids.into_iter().zip(stepped.weights) {
            let moments = rule.has_moments().then(|| {
                (
                    m.next().expect("one per step"),
                    v.next().expect("one per step"),
                )
            });
            afters.insert(id, w);
            pending.insert(
                id,
                DeviceState {
                    time,
                    moments,
                    dims,
                    path,
                },
            );
        }
        let module = module.clone().map(&mut Afters(afters));
        Some(DeviceStep {
            module,
            pending: DevicePending(pending),
            statistics: stepped.stats,
        })
    }
}

#[cfg(not(feature = "cube"))]
impl FusedOptimizer {
    /// Built without CubeCL kernels, no device step runs: Burn's optimizer of the same rule
    /// steps instead.
    pub(crate) fn step_device<M: burn::module::Module>(
        &mut self,
        _module: &M,
        _grads: &HashMap<ParamId, Tensor<1>>,
        _lr: f64,
        _measure: bool,
    ) -> Option<DeviceStep<M>> {
        None
    }
}

impl FusedOptimizer {
    /// Puts a device step's state into the optimizer (its weights are in the module already).
    pub(crate) fn commit_device(&mut self, pending: DevicePending) {
        for (id, state) in pending.0 {
            self.states.remove(&id);
            self.device.insert(id, state);
        }
    }

    /// Every parameter's state on the host, the device's read back (blocking reads).
    pub(crate) fn host_states(&self) -> HashMap<ParamId, Moments> {
        let mut states = self.states.clone();
        states.extend(self.device.iter().map(|(id, s)| (*id, s.to_host())));
        states
    }
}

#[cfg(feature = "cube")]
/// A host state (a loaded record) on `device`, flat.
fn upload(host: &Moments, device: &burn::tensor::Device) -> DeviceState {
    let flat = |values: &Vec<f32>| {
        Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), device)
    };
    DeviceState {
        time: host.time,
        moments: (!host.m.is_empty()).then(|| (flat(&host.m), flat(&host.v))),
        dims: host.dims.clone(),
        path: host.path.clone(),
    }
}

#[cfg(feature = "cube")]
/// A parameter to step: its weights and gradient, flat.
pub(crate) struct Found {
    pub id: ParamId,
    pub w: Tensor<1>,
    pub g: Tensor<1>,
    pub dims: Vec<usize>,
    pub path: String,
}

#[cfg(feature = "cube")]
/// Collects the parameters with a gradient, in module order.
pub(crate) struct Inputs<'a> {
    path: Vec<String>,
    grads: &'a HashMap<ParamId, Tensor<1>>,
    pub found: Vec<Found>,
    /// Float parameters without a gradient.
    pub without_gradient: usize,
    /// A parameter the kernel does not step (distributed: Burn's optimizer's to step).
    refused: bool,
}

#[cfg(feature = "cube")]
/// The parameters of `module` with a gradient in `grads` (flat), in module order, for the step
/// kernel: `None` where it cannot step them (a distributed parameter, not a CubeCL device).
pub(crate) fn cube_inputs<'a, M: Module>(
    module: &M,
    grads: &'a HashMap<ParamId, Tensor<1>>,
) -> Option<Inputs<'a>> {
    let mut inputs = Inputs {
        path: Vec::new(),
        grads,
        found: Vec::new(),
        without_gradient: 0,
        refused: false,
    };
    module.visit(&mut inputs);
    let on_cube = inputs
        .found
        .first()
        .is_some_and(|f| crate::cube::queued::fused(&f.g).is_some());
    (!inputs.refused && on_cube).then_some(inputs)
}

#[cfg(feature = "cube")]
impl ModuleVisitor for Inputs<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.get(&param.id) else {
            self.without_gradient += 1;
            return;
        };
        let w = param.val();
        if w.is_distributed() {
            self.refused = true;
            return;
        }
        let dims = w.dims().to_vec();
        let w = if w.is_autodiff() { w.inner() } else { w };
        self.found.push(Found {
            id: param.id,
            w: w.reshape([dims.iter().product::<usize>()]),
            g: g.clone(),
            dims,
            path: self.path.join("."),
        });
    }
}

#[cfg(feature = "cube")]
/// Puts each stepped parameter's new values (flat) into the module, in its shape.
pub(crate) struct Afters(pub HashMap<ParamId, Tensor<1>>);

#[cfg(feature = "cube")]
impl ModuleMapper for Afters {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(after) = self.0.remove(&param.id) else {
            return param;
        };
        param.map(|w| {
            let dims: [usize; D] = w.dims();
            map_values(w, |_| after.reshape(dims))
        })
    }
}
