//! The fused optimizer's step on a CubeCL device ([`super::step_kernel`]), queued on Burn's fusion
//! stream as one operation (the pattern of [`super::queued`]): every parameter's weights,
//! gradient and moments are its inputs, the new weights and moments its outputs — views of one
//! buffer per group of parameters, one launch per group — with the pair block statistics of the
//! weights and the update (what the update bound reads), and nothing blocks.

use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::custom::{
    CustomOpIr, HandleContainer, Operation, OperationIr, StreamId, TensorIr,
};
use burn_fusion::{ExecutionError, FusionRuntime};
use cubecl::prelude::*;

use super::kernel::{BLOCK, STATS};
use super::queued::{Fused, fused};
use super::step_kernel::{ADAM, ADAMW, SGD};
use super::{MAX_GROUP, grid, groups};
use crate::fused::FusedRule;

/// The scalars of one step, as the kernel takes them (see [`super::step_kernel::fused_step`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepSettings {
    rule: u32,
    decay: bool,
    lr: f32,
    beta_1: f32,
    beta_2: f32,
    one_minus_beta_1: f32,
    one_minus_beta_2: f32,
    penalty: f32,
    keep: f32,
    epsilon: f32,
}

impl StepSettings {
    /// `rule`'s settings at rate `lr`, in the f32 (and, for AdamW's `1 − ηλ`, f64) arithmetic of
    /// [`FusedRule::step_into`].
    pub fn new(rule: FusedRule, lr: f64) -> Self {
        let mut s = StepSettings {
            rule: SGD,
            decay: false,
            lr: lr as f32,
            beta_1: 0.0,
            beta_2: 0.0,
            one_minus_beta_1: 0.0,
            one_minus_beta_2: 0.0,
            penalty: 0.0,
            keep: 1.0,
            epsilon: 0.0,
        };
        let moments = |m: crate::AdamMoments, s: &mut StepSettings| {
            s.beta_1 = m.beta_1;
            s.beta_2 = m.beta_2;
            s.one_minus_beta_1 = 1.0 - m.beta_1;
            s.one_minus_beta_2 = 1.0 - m.beta_2;
            s.epsilon = m.epsilon;
        };
        match rule {
            FusedRule::Sgd { weight_decay } => {
                s.decay = weight_decay.is_some();
                s.penalty = weight_decay.unwrap_or(0.0);
            }
            FusedRule::Adam {
                moments: m,
                weight_decay,
            } => {
                s.rule = ADAM;
                moments(m, &mut s);
                s.decay = weight_decay.is_some();
                s.penalty = weight_decay.unwrap_or(0.0);
            }
            FusedRule::AdamW {
                moments: m,
                weight_decay,
            } => {
                s.rule = ADAMW;
                moments(m, &mut s);
                let decay_rate = lr * f64::from(weight_decay);
                s.decay = decay_rate != 0.0;
                s.keep = (1.0 - decay_rate) as f32;
            }
        }
        s
    }

    /// Whether the rule keeps moments.
    fn has_moments(&self) -> bool {
        self.rule != SGD
    }
}

/// A parameter's two per-step corrections at its step count `time` (see
/// [`super::step_kernel`]): Adam `(√(1−β₂ᵗ)/(1−β₁ᵗ), ε√(1−β₂ᵗ))`, AdamW `(1−β₁ᵗ, 1−β₂ᵗ)`, SGD
/// none (zeros).
pub(crate) fn corrections(rule: FusedRule, time: usize) -> [f32; 2] {
    let t = time as i32;
    match rule {
        FusedRule::Sgd { .. } => [0.0, 0.0],
        FusedRule::Adam { moments, .. } => {
            let bias_correction2_sqrt = (1.0 - moments.beta_2.powi(t)).sqrt();
            let combined = bias_correction2_sqrt / (1.0 - moments.beta_1.powi(t));
            [combined, moments.epsilon * bias_correction2_sqrt]
        }
        FusedRule::AdamW { moments, .. } => {
            [1f32 - moments.beta_1.powi(t), 1f32 - moments.beta_2.powi(t)]
        }
    }
}

/// What one step of the kernel gives back, per parameter in the order given: the new weights
/// and (Adam, AdamW) the new moments, flat; and the pair block statistics of the weights and
/// the update over every block of every parameter in that order (the layout of
/// [`super::block_statistics`]'s pair form), `None` when no parameter has a value.
pub(crate) struct Stepped {
    pub weights: Vec<Tensor<1>>,
    pub m: Vec<Tensor<1>>,
    pub v: Vec<Tensor<1>>,
    pub stats: Option<Tensor<1>>,
}

/// One parameter's inputs: its weights, gradient and moments before the step (Adam, AdamW;
/// zeros on the first step), all flat f32 tensors on one CubeCL device.
pub(crate) struct StepInput {
    pub w: Tensor<1>,
    pub g: Tensor<1>,
    pub moments: Option<(Tensor<1>, Tensor<1>)>,
}

/// Who decides the step, and where its corrections come from.
pub(crate) enum Control {
    /// The host: the step is applied as computed.
    Host {
        /// Each input's two corrections (see [`corrections`]), in the order of the inputs.
        corrections: Vec<[f32; 2]>,
        /// Whether the kernel measures the step (the statistics of [`Stepped`]).
        measure: bool,
    },
    /// The device (the non-blocking step): nothing is measured.
    Device(Box<DeviceDecision>),
}

/// A step decided on the device, and its corrections there.
pub(crate) struct DeviceDecision {
    /// The corrections of each class of step counts, `[2·classes]` f32 on the device (any f32
    /// device tensor for SGD, which reads none).
    pub table: Tensor<1>,
    /// Each input's class.
    pub classes: Vec<u32>,
    /// `[factor, accept]`: the gradients' factor, and 0 to keep the weights and moments as they
    /// were.
    pub control: Tensor<1>,
}

/// Queues the step of every parameter in `inputs` as one operation. `None` (nothing queued) when
/// a tensor is not an f32 tensor of a CubeCL device, lengths differ, a rule with moments lacks
/// them, or `control` does not cover every input.
pub(crate) fn fused_step(
    inputs: Vec<StepInput>,
    settings: StepSettings,
    control: Control,
) -> Option<Stepped> {
    let head = inputs.first()?;
    let device = head.w.device();
    let moments = settings.has_moments();
    let (mut fw, mut fg, mut fm, mut fv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for input in &inputs {
        let len = input.w.shape().num_elements();
        let f32_of = |t: &Tensor<1>| {
            fused(t).filter(|f| f.dtype == DType::F32 && f.shape.num_elements() == len)
        };
        fw.push(f32_of(&input.w)?);
        fg.push(f32_of(&input.g)?);
        if moments {
            let (m, v) = input.moments.as_ref()?;
            fm.push(f32_of(m)?);
            fv.push(f32_of(v)?);
        }
    }
    let n = fw.len();
    let f32_on_device = |t: &Tensor<1>| fused(t).filter(|f| f.dtype == DType::F32);
    let (table, decision, classes, measure) = match control {
        Control::Host {
            corrections,
            measure,
        } => {
            if corrections.len() != n {
                return None;
            }
            let table: Vec<f32> = corrections.into_iter().flatten().collect();
            let count = table.len();
            let table = Tensor::<1>::from_data(TensorData::new(table, [count]), &device);
            (
                f32_on_device(&table)?,
                None,
                (0..n as u32).collect(),
                measure,
            )
        }
        Control::Device(decision) => {
            let DeviceDecision {
                table,
                classes,
                control,
            } = *decision;
            let control = f32_on_device(&control).filter(|c| c.shape.num_elements() == 2)?;
            let table = f32_on_device(&table)?;
            // Every class's corrections lie in the table (the kernel reads them unchecked; SGD
            // reads none).
            let rows = table.shape.num_elements() / 2;
            if classes.len() != n || (moments && classes.iter().any(|&c| c as usize >= rows)) {
                return None;
            }
            (table, Some(control), classes, false)
        }
    };
    let decided = decision.is_some();
    let client = fw[0].client.clone();
    let per_output = if moments { 3 } else { 1 };
    let blocks: usize = fw
        .iter()
        .map(|t| t.shape.num_elements().div_ceil(BLOCK))
        .sum();
    let uninit =
        |len: usize| TensorIr::uninit(client.create_empty_handle(), Shape::from([len]), DType::F32);
    let mut outputs: Vec<TensorIr> = (0..per_output)
        .flat_map(|_| fw.iter())
        .map(|t| uninit(t.shape.num_elements()))
        .collect();
    let measured = measure && blocks > 0;
    if measured {
        outputs.push(uninit(blocks * 2 * STATS));
    }
    let ins: Vec<TensorIr> = fw
        .into_iter()
        .chain(fg)
        .chain(fm)
        .chain(fv)
        .chain([table])
        .chain(decision)
        .map(Fused::into_ir)
        .collect();
    let desc = CustomOpIr::new("gradguard::fused_step", &ins, &outputs);
    let out = client.register(
        StreamId::current(),
        OperationIr::Custom(desc.clone()),
        QueuedStep {
            desc,
            settings,
            classes,
            decided,
            measured,
        },
    );
    let mut out: Vec<Tensor<1>> = out
        .into_iter()
        .map(Tensor::from_primitive::<burn_cubecl::Cube>)
        .collect();
    let stats = measured.then(|| out.pop().expect("the statistics are the last output"));
    let (v, m) = if moments {
        let v = out.split_off(2 * n);
        (v, out.split_off(n))
    } else {
        (Vec::new(), Vec::new())
    };
    Some(Stepped {
        weights: out,
        m,
        v,
        stats,
    })
}

/// The queued step: inputs the weights, gradients, moments (Adam, AdamW), the corrections and
/// (`decided`) the control; outputs the new weights, then the new moments, then (`measured`)
/// the statistics.
#[derive(Debug)]
struct QueuedStep {
    desc: CustomOpIr,
    settings: StepSettings,
    classes: Vec<u32>,
    decided: bool,
    measured: bool,
}

impl Operation<FusionCubeRuntime> for QueuedStep {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime as FusionRuntime>::FusionHandle>,
    ) -> Result<(), ExecutionError> {
        let mut inputs = super::queued::input_buffers(&self.desc, handles);
        let control = if self.decided { inputs.pop() } else { None };
        let table = inputs.pop().expect("the corrections follow the moments");
        let sequences = if self.settings.has_moments() { 4 } else { 2 };
        let n = inputs.len() / sequences;
        let (w, rest) = inputs.split_at(n);
        let (g, rest) = rest.split_at(n);
        let (m, v) = rest.split_at(rest.len() / 2);
        let decision = Decision {
            table: &table,
            control: control.as_ref(),
            classes: &self.classes,
            measure: self.measured,
        };
        let (results, stats) = launch(w, g, m, v, decision, &self.settings);
        for (ir, result) in self
            .desc
            .outputs
            .iter()
            .zip(results.into_iter().chain(stats))
        {
            handles.register_float_tensor::<CubeBackend>(&ir.id, result);
        }
        Ok(())
    }
}

/// Parameters one launch of the step kernel steps on `client`: its bindings but the
/// corrections', the control's, the four outputs' and the runtime's metadata buffer's, over the
/// sequences each parameter takes (weights, gradient and, with `moments`, m and v), at most
/// [`MAX_GROUP`].
pub(crate) fn step_group_size(client: &cubecl::client::Client, moments: bool) -> usize {
    let sequences = if moments { 4 } else { 2 };
    let bindings = client.properties().hardware.max_bindings as usize;
    (bindings.saturating_sub(7) / sequences).clamp(1, MAX_GROUP)
}

/// The corrections and, when the device decides, the control of a launch; whether it measures.
struct Decision<'a> {
    table: &'a CubeTensor,
    control: Option<&'a CubeTensor>,
    classes: &'a [u32],
    measure: bool,
}

/// The step over `w`, `g`, `m`, `v` (the moments empty for SGD): one launch per group of
/// parameters; the results (new weights, then new moments) are views of the groups' buffers,
/// and the statistics of every block one buffer (`None` when there is no block or the device
/// decides).
fn launch(
    w: &[CubeTensor],
    g: &[CubeTensor],
    m: &[CubeTensor],
    v: &[CubeTensor],
    decision: Decision,
    s: &StepSettings,
) -> (Vec<CubeTensor>, Option<CubeTensor>) {
    let Some(head) = w.first() else {
        return (Vec::new(), None);
    };
    let client = head.client.clone();
    let moments = s.has_moments();
    let lens: Vec<usize> = w.iter().map(|t| t.meta.num_elements()).collect();
    let group = step_group_size(&client, moments);
    let blocks: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK)).collect();
    let all_blocks: usize = blocks.iter().sum();
    let mut results: Vec<Option<CubeTensor>> = vec![None; w.len() * if moments { 3 } else { 1 }];
    let empty = |len: usize| {
        burn_cubecl::ops::numeric::empty_device_dtype(
            client.clone(),
            head.device.clone(),
            [len].into(),
            DType::F32,
        )
    };
    let measure = decision.measure;
    let stats = (all_blocks > 0).then(|| empty(if measure { all_blocks * 2 * STATS } else { 1 }));
    let units = super::units_per_cube(&client);
    // Each tensor's first block in the whole set (the statistics' layout).
    let firsts: Vec<usize> = blocks
        .iter()
        .scan(0, |next, &b| {
            let first = *next;
            *next += b;
            Some(first)
        })
        .collect();
    let align = (client.properties().memory.alignment as usize / 4).max(1);
    for members in groups(w, &blocks, group) {
        // Whole vectors of every member, each starting on a vector of the outputs (the vector
        // and the alignment are powers of two, so an aligned offset starts a vector).
        let vector =
            super::vector_size(&client, DType::F32, members.iter().map(|&t| lens[t])).min(align);
        let mut starts = Vec::with_capacity(members.len() + 1);
        let mut offsets = Vec::with_capacity(members.len());
        let (mut block, mut offset) = (0u32, 0usize);
        for &t in &members {
            starts.push(block);
            offsets.push(offset);
            block += blocks[t] as u32;
            offset = (offset + lens[t]).div_ceil(align) * align;
        }
        starts.push(block);
        let total = offset;
        let out_w = empty(total);
        // SGD writes no moments: one-vector placeholders fill their bindings.
        let moment_len = if moments { total } else { vector };
        let (out_m, out_v) = (empty(moment_len), empty(moment_len));
        let tensors = |ts: &[CubeTensor]| -> SequenceArg<_> {
            if ts.is_empty() {
                return SequenceArg::new();
            }
            members
                .iter()
                .map(|&t| ts[t].clone().into_tensor_arg())
                .collect()
        };
        let (x, y) = grid(block as usize);
        let stats = stats.as_ref().expect("a group has blocks");
        // SAFETY: every index the kernel reads or writes is below its buffer's length: a unit
        // reads its tensor's vectors below the tensor's length and writes them at its offset in
        // buffers of `total` values, the statistics at its block of `stats` (every block of every
        // parameter), the corrections at classes checked against the table.
        unsafe {
            super::step_kernel::fused_step::launch_unchecked(
                &client,
                CubeCount::Static(x, y, 1),
                CubeDim::new_1d(units as u32),
                vector,
                tensors(w),
                tensors(g),
                tensors(m),
                tensors(v),
                decision.table.clone().into_tensor_arg(),
                decision
                    .control
                    .unwrap_or(decision.table)
                    .clone()
                    .into_tensor_arg(),
                out_w.clone().into_tensor_arg(),
                out_m.clone().into_tensor_arg(),
                out_v.clone().into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                starts.into_iter().collect(),
                offsets.iter().map(|&o| (o / vector) as u32).collect(),
                members.iter().map(|&t| decision.classes[t]).collect(),
                firsts[members[0]] as u32,
                s.lr,
                s.beta_1,
                s.beta_2,
                s.one_minus_beta_1,
                s.one_minus_beta_2,
                s.penalty,
                s.keep,
                s.epsilon,
                s.rule,
                s.decay,
                decision.control.is_some(),
                measure,
                units,
                vector,
            )
        };
        let view = |buffer: &CubeTensor, t: usize, o: usize| {
            let handle = buffer
                .handle
                .clone()
                .offset_start(o as u64 * 4)
                .offset_end((total - o - lens[t]) as u64 * 4);
            CubeTensor::new_contiguous(
                client.clone(),
                head.device.clone(),
                [lens[t]].into(),
                handle,
                DType::F32,
            )
        };
        let n = w.len();
        for (&t, &o) in members.iter().zip(&offsets) {
            results[t] = Some(view(&out_w, t, o));
            if moments {
                results[n + t] = Some(view(&out_m, t, o));
                results[2 * n + t] = Some(view(&out_v, t, o));
            }
        }
    }
    // An empty parameter has no blocks: its results are its (empty) inputs.
    let n = w.len();
    let results = results
        .into_iter()
        .enumerate()
        .map(|(k, r)| {
            r.unwrap_or_else(|| match k / n {
                0 => w[k].clone(),
                1 => m[k - n].clone(),
                _ => v[k - 2 * n].clone(),
            })
        })
        .collect();
    (results, stats.filter(|_| measure))
}
