//! The non-blocking step's decision ([`super::decide_kernel`]) queued on Burn's fusion stream as
//! one operation (the pattern of [`super::queued`]): the block statistics and the loss in,
//! `[factor, accept]` out, nothing read.

use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::custom::{
    CustomOpIr, HandleContainer, Operation, OperationIr, OperationOutput, StreamId, TensorIr,
};
use burn_fusion::{ExecutionError, FusionRuntime};
use cubecl::prelude::*;
use gradguard::{DevicePlan, DeviceRule, NormType};

use super::decide_kernel::{CLIP, INF, L1, L2, SKIP};
use super::queued::{Fused, fused, input_buffers, into_tensor};

/// The plan's rules as the kernel takes them: (kind, norm, value) each.
#[derive(Debug, Clone)]
struct Rules {
    kinds: Vec<u32>,
    norms: Vec<u32>,
    values: Vec<f32>,
}

impl Rules {
    fn of(plan: &DevicePlan) -> Self {
        let mut rules = Rules {
            kinds: Vec::new(),
            norms: Vec::new(),
            values: Vec::new(),
        };
        for rule in &plan.rules {
            let (kind, value) = match *rule {
                DeviceRule::ClipGlobalNorm { max_norm, .. } => (CLIP, max_norm),
                DeviceRule::SkipAbove { limit, .. } => (SKIP, limit),
            };
            let norm = match rule.norm_type() {
                NormType::L1 => L1,
                NormType::Inf => INF,
                _ => L2,
            };
            rules.kinds.push(kind);
            rules.norms.push(norm);
            rules.values.push(value as f32);
        }
        rules
    }
}

/// Queues the decision of `plan` from the block statistics `stats` and the loss (`[1]` f32):
/// `[factor, accept]`, or `None` (nothing queued) when `stats` is not an f32 tensor of a CubeCL
/// device.
pub(crate) fn decide(
    plan: &DevicePlan,
    stats: &Tensor<1>,
    loss: Option<&Tensor<1>>,
) -> Option<Tensor<1>> {
    let stats = fused(stats).filter(|s| s.dtype == DType::F32)?;
    let loss = match loss {
        Some(l) => Some(fused(l).filter(|l| l.dtype == DType::F32)?),
        None => None,
    };
    let client = stats.client.clone();
    let output = TensorIr::uninit(client.create_empty_handle(), Shape::from([2]), DType::F32);
    let has_loss = loss.is_some();
    let inputs: Vec<TensorIr> = [stats]
        .into_iter()
        .chain(loss)
        .map(Fused::into_ir)
        .collect();
    let desc = CustomOpIr::new("gradguard::decide", &inputs, &[output]);
    let [out] = client
        .register(
            StreamId::current(),
            OperationIr::Custom(desc.clone()),
            QueuedDecision {
                desc,
                rules: Rules::of(plan),
                has_loss,
            },
        )
        .outputs();
    Some(into_tensor(out))
}

/// The queued decision: inputs the statistics (and the loss), one output.
#[derive(Debug)]
struct QueuedDecision {
    desc: CustomOpIr,
    rules: Rules,
    has_loss: bool,
}

impl Operation<FusionCubeRuntime> for QueuedDecision {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime as FusionRuntime>::FusionHandle>,
    ) -> Result<(), ExecutionError> {
        let inputs = input_buffers(&self.desc, handles);
        let stats = &inputs[0];
        let loss = inputs.get(1).unwrap_or(stats);
        let client = stats.client.clone();
        let out: CubeTensor = burn_cubecl::ops::numeric::empty_device_dtype(
            client.clone(),
            stats.device.clone(),
            [2].into(),
            DType::F32,
        );
        let units = super::units_per_cube(&client);
        super::decide_kernel::decide_step::launch(
            &client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(units as u32),
            stats.clone().into_tensor_arg(),
            loss.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            self.rules.kinds.iter().copied().collect(),
            self.rules.norms.iter().copied().collect(),
            self.rules.values.iter().copied().collect(),
            gradguard::rules::NORM_EPS as f32,
            self.has_loss,
            units,
        );
        handles.register_float_tensor::<CubeBackend>(&self.desc.outputs[0].id, out);
        Ok(())
    }
}
