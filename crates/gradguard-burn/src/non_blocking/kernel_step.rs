//! The non-blocking step on a CubeCL device as one queued kernel: the fused optimizer's step
//! kernel ([`crate::cube::step`]) with the step's decision as device inputs — the gradients'
//! factor and the 0/1 accept — instead of Burn's tensor ops, about 1.3 launches per parameter
//! ([`super::device_step`]). The arithmetic and the state are the same: each parameter's step
//! count is the host's known count plus the steps not read yet, Adam's corrections for those
//! counts picked on the device once per class of parameters that share them; where the step is
//! not accepted the kernel writes the weights and moments as they were.

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ParamId};
use burn::tensor::{DType, Tensor, TensorData};

use super::device_step::{Corrections, DeviceMoments, StepInputs};
use crate::collect::Entry;
use crate::cube::step::{Control, DeviceDecision, StepInput, StepSettings, fused_step};
use crate::fused::{Afters, Moments, cube_inputs};
use crate::on_device::DeviceGradients;

/// The optimizer state the kernel reads and writes, by parameter.
pub(super) struct KernelState<'a> {
    pub moments: &'a mut HashMap<ParamId, DeviceMoments>,
    pub loaded: &'a mut HashMap<ParamId, Moments>,
    pub known: &'a HashMap<ParamId, usize>,
    /// The previous step's decision and the parameters it stepped (its report is not read).
    pub previous: Option<&'a (Tensor<1>, HashSet<ParamId>)>,
}

/// `module` after the step of every parameter with a gradient in `grads` (flat, in the order of
/// `entries`), queued as one operation; the state updated. `None`, with nothing changed, where
/// the kernel cannot step it: a gradient not f32, a parameter not on a CubeCL device, a
/// distributed parameter.
pub(super) fn step_by_kernel<M: Module>(
    module: &M,
    entries: &[Entry],
    grads: &DeviceGradients,
    state: KernelState<'_>,
    inputs: StepInputs<'_>,
) -> Option<M> {
    if entries.iter().any(|e| e.dtype != DType::F32) {
        return None;
    }
    let by_id: HashMap<ParamId, Tensor<1>> = entries
        .iter()
        .zip(grads.tensors())
        .map(|(e, g)| (e.id, g.clone()))
        .collect();
    let found = cube_inputs(module, &by_id)?.found;
    let device = found.first()?.w.device();
    let rule = inputs.rule;
    // One class per (known count, stepped by the previous step): its two corrections in `table`.
    let mut classes: HashMap<(usize, bool), u32> = HashMap::new();
    let mut table = Vec::new();
    let mut class_of = Vec::with_capacity(found.len());
    let mut steps = Vec::with_capacity(found.len());
    for f in &found {
        let known = state.known.get(&f.id).copied().unwrap_or(0);
        let last = state
            .previous
            .filter(|(_, ids)| ids.contains(&f.id))
            .map(|(accept, _)| accept);
        // SGD reads no corrections: every parameter is of class 0 (of a table it never reads).
        let next = classes.len() as u32;
        let class = if rule.has_moments() {
            *classes.entry((known, last.is_some())).or_insert_with(|| {
                let corrections =
                    Corrections::new(rule, known, &device).expect("a rule with moments");
                // The steps not read yet: this one's and, if it stepped this parameter, the last.
                let offset = match last {
                    Some(last) => inputs.accept.clone() + last.clone(),
                    None => inputs.accept.clone(),
                };
                let (first, second) = corrections.pick(&offset);
                table.extend([first, second]);
                next
            })
        } else {
            0
        };
        class_of.push(class);
        let moments = rule.has_moments().then(|| {
            state
                .moments
                .get(&f.id)
                .and_then(DeviceMoments::flat_moments)
                .or_else(|| {
                    let host = state.loaded.get(&f.id)?;
                    (!host.m.is_empty() && host.dims == f.dims).then(|| {
                        let flat = |v: &Vec<f32>| {
                            Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device)
                        };
                        (flat(&host.m), flat(&host.v))
                    })
                })
                .unwrap_or_else(|| (f.w.zeros_like(), f.w.zeros_like()))
        });
        steps.push(StepInput {
            w: f.w.clone(),
            g: f.g.clone(),
            moments,
        });
    }
    let control = match inputs.control {
        Some(control) => control.clone(),
        None => Tensor::cat(vec![inputs.factor.clone(), inputs.accept.clone()], 0),
    };
    let table = if table.is_empty() {
        control.clone()
    } else {
        Tensor::cat(table, 0)
    };
    let stepped = fused_step(
        steps,
        StepSettings::new(rule, inputs.lr),
        Control::Device(Box::new(DeviceDecision {
            table,
            classes: class_of,
            control,
        })),
    )?;
    let (mut m, mut v) = (stepped.m.into_iter(), stepped.v.into_iter());
    let mut afters = HashMap::with_capacity(found.len());
    for (f, w) in found.into_iter().zip(stepped.weights) {
        let moments = rule.has_moments().then(|| {
            (
                m.next().expect("one per step"),
                v.next().expect("one per step"),
            )
        });
        state
            .moments
            .insert(f.id, DeviceMoments::flat(moments, f.dims, f.path));
        state.loaded.remove(&f.id);
        afters.insert(f.id, w);
    }
    Some(module.clone().map(&mut Afters(afters)))
}
