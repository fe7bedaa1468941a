//! Scaling the optimizer's updates back on a CubeCL device in one launch per group of tensors
//! ([`super::apply_kernel`]) instead of tensor ops per tensor, and handing the results back to
//! Burn as lazy tensors (views into one buffer per group).

use burn::tensor::{Tensor, TensorData};
use burn_cubecl::fusion::CubeFusionHandle;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{Cube, CubeBackend};
use burn_fusion::NoOp;
use burn_fusion::custom::OperationOutput;
use burn_fusion::stream::StreamId;
use burn_ir::{InitOperationIr, OperationIr};
use cubecl::prelude::*;
use gradguard::UnitSpan;

use super::kernel::BLOCK;
use super::{MAX_GROUP, grid, groups, resolve};

/// A CubeCL buffer as a Burn tensor on its device, registered with Burn's fusion layer the way
/// Burn registers a tensor made from data (an `Init` operation over an existing handle).
fn into_burn(t: CubeTensor) -> Tensor<1> {
    let client = burn_fusion::get_client::<CubeBackend>(&t.device);
    let shape = t.meta.shape.clone();
    let dtype = t.dtype;
    let handle: CubeFusionHandle = t.into();
    let init = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    let fused = client
        .register(
            StreamId::current(),
            OperationIr::Init(init),
            NoOp::<CubeBackend>::new(),
        )
        .output();
    Tensor::from_primitive::<Cube>(fused)
}

/// For every tensor t: `before[t] + f·(after[t] − before[t])`, f = `factors[t][unit]` by
/// `spans[t]` (one factor: the tensor as a whole), flat, in t's dtype; the tensors live on
/// `device`. `None` when a factor list does not match its span or the factors cannot be placed
/// on the device.
pub(crate) fn apply_scales(
    device: &burn::tensor::Device,
    before: &[CubeTensor],
    after: &[CubeTensor],
    spans: &[UnitSpan],
    factors: &[Vec<f32>],
) -> Option<Vec<Tensor<1>>> {
    let head = before.first()?;
    if spans.iter().zip(factors).any(|(s, f)| s.units() != f.len()) {
        return None;
    }
    let client = head.client.clone();
    let lens: Vec<usize> = before.iter().map(|t| t.meta.num_elements()).collect();
    let mut first_factor = Vec::with_capacity(factors.len());
    let mut all = Vec::new();
    for f in factors {
        first_factor.push(all.len());
        all.extend_from_slice(f);
    }
    // One upload of every factor.
    let count = all.len();
    let factors_on_device = resolve(&Tensor::<1>::from_data(
        TensorData::new(all, [count]),
        &device.clone().inner(),
    ))?;
    // The factors' buffer is one more binding than the two sequences and the output.
    let bindings = client.properties().hardware.max_bindings as usize;
    let group = (bindings.saturating_sub(3) / 2).clamp(1, MAX_GROUP);
    let blocks: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK)).collect();

    let mut results: Vec<Option<Tensor<1>>> = vec![None; before.len()];
    for members in groups(before, &blocks, group) {
        let dtype = before[members[0]].dtype;
        let total: usize = members.iter().map(|&t| lens[t]).sum();
        let out = burn_cubecl::ops::numeric::empty_device_dtype(
            client.clone(),
            head.device.clone(),
            [total].into(),
            dtype,
        );
        let mut starts = Vec::with_capacity(members.len() + 1);
        let mut offsets = Vec::with_capacity(members.len());
        let (mut block, mut offset) = (0u32, 0usize);
        for &t in &members {
            starts.push(block);
            offsets.push(offset);
            block += blocks[t] as u32;
            offset += lens[t];
        }
        starts.push(block);
        let field = |f: &dyn Fn(usize) -> usize| -> SequenceArg<_> {
            members.iter().map(|&t| f(t) as u32).collect()
        };
        let tensors = |ts: &[CubeTensor]| -> SequenceArg<_> {
            members
                .iter()
                .map(|&t| ts[t].clone().into_tensor_arg())
                .collect()
        };
        let (x, y) = grid(block as usize);
        super::apply_kernel::apply_scales::launch(
            &client,
            CubeCount::Static(x, y, 1),
            CubeDim::new_1d(super::kernel::UNITS as u32),
            tensors(before),
            tensors(after),
            factors_on_device.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            starts.into_iter().collect(),
            offsets.iter().map(|&o| o as u32).collect(),
            field(&|t| first_factor[t]),
            field(&|t| spans[t].cols.max(1)),
            field(&|t| usize::from(spans[t].units_are_columns)),
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
        let buffer = into_burn(out);
        for (&t, &o) in members.iter().zip(&offsets) {
            results[t] = Some(buffer.clone().narrow(0, o, lens[t]));
        }
    }
    // Empty tensors have no blocks: they stay as they are (nothing to scale).
    Some(
        results
            .into_iter()
            .zip(after)
            .map(|(r, a)| r.unwrap_or_else(|| into_burn(a.clone())))
            .collect(),
    )
}
