//! Changing many tensors on a CubeCL device in one launch per group of tensors
//! ([`super::rewrite_kernel`]) instead of tensor ops per tensor — a clip of the gradients
//! (clamp, zero non-finite values, per-unit factors) or the update bound's scaling of the
//! weights — and handing the results back to Burn as tensors that are views of one buffer per
//! group (no copy).

use burn::tensor::{Tensor, TensorData};
use burn_cubecl::fusion::CubeFusionHandle;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{Cube, CubeBackend};
use burn_fusion::NoOp;
use burn_fusion::custom::OperationOutput;
use burn_fusion::stream::StreamId;
use burn_ir::{InitOperationIr, OperationIr};
use cubecl::prelude::*;

use super::kernel::BLOCK;
use super::{MAX_GROUP, grid, groups, resolve};
use crate::device_ops::Rewrite;

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

/// `values` rewritten by `how` (see [`super::rewrite_kernel`] for the order), flat, relative to
/// `origin` (the CubeCL buffers of `how.origin`) when it has one; the tensors live on `device`. `None` when a factor list
/// does not match its span or the factors cannot be placed on the device.
pub(crate) fn rewrite(
    device: &burn::tensor::Device,
    values: &[CubeTensor],
    how: Rewrite<'_>,
    origin: Option<&[CubeTensor]>,
) -> Option<Vec<Tensor<1>>> {
    let head = values.first()?;
    let mismatched = how.spans.len() != values.len()
        || how.factors.len() != values.len()
        || origin.is_some_and(|o| o.len() != values.len())
        || how.origin.is_some() != origin.is_some()
        || how
            .spans
            .iter()
            .zip(how.factors)
            .any(|(s, f)| s.units() != f.len());
    if mismatched {
        return None;
    }
    let client = head.client.clone();
    let lens: Vec<usize> = values.iter().map(|t| t.meta.num_elements()).collect();
    let mut first_factor = Vec::with_capacity(how.factors.len());
    let mut all = Vec::new();
    for f in how.factors {
        first_factor.push(all.len());
        all.extend_from_slice(f);
    }
    // One upload of every factor.
    let count = all.len();
    let factors_on_device = resolve(&Tensor::<1>::from_data(
        TensorData::new(all, [count]),
        &device.clone().inner(),
    ))?;
    // Besides the sequences: the factors, the output and the runtime's metadata.
    let sequences = if origin.is_some() { 2 } else { 1 };
    let bindings = client.properties().hardware.max_bindings as usize;
    let group = (bindings.saturating_sub(3) / sequences).clamp(1, MAX_GROUP);
    let blocks: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK)).collect();

    let mut results: Vec<Option<Tensor<1>>> = vec![None; values.len()];
    for members in groups(values, &blocks, group) {
        let dtype = values[members[0]].dtype;
        let out_dtype = how.dtype.unwrap_or(dtype);
        // Each tensor starts at an offset the device can bind a buffer view at, so that its
        // result is a view of the group's buffer, not a copy (Burn's `narrow` copies a slice
        // whose ends are not both aligned).
        let align = (client.properties().memory.alignment as usize / out_dtype.size()).max(1);
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
        let out = burn_cubecl::ops::numeric::empty_device_dtype(
            client.clone(),
            head.device.clone(),
            [total].into(),
            out_dtype,
        );
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
        let storage = burn::backend::cubecl::dtype_to_storage_type;
        super::rewrite_kernel::rewrite::launch(
            &client,
            CubeCount::Static(x, y, 1),
            CubeDim::new_1d(super::rewrite_kernel::UNITS as u32),
            origin.map_or_else(SequenceArg::new, tensors),
            tensors(values),
            factors_on_device.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            starts.into_iter().collect(),
            offsets.iter().map(|&o| o as u32).collect(),
            field(&|t| first_factor[t]),
            field(&|t| how.spans[t].cols.max(1)),
            field(&|t| usize::from(how.spans[t].units_are_columns)),
            how.limit.unwrap_or(f32::INFINITY),
            origin.is_some(),
            how.zero_non_finite,
            [storage(dtype), storage(out_dtype)],
        );
        let bytes = out_dtype.size() as u64;
        for (&t, &o) in members.iter().zip(&offsets) {
            let handle = out
                .handle
                .clone()
                .offset_start(o as u64 * bytes)
                .offset_end((total - o - lens[t]) as u64 * bytes);
            results[t] = Some(into_burn(CubeTensor::new_contiguous(
                client.clone(),
                head.device.clone(),
                [lens[t]].into(),
                handle,
                out_dtype,
            )));
        }
    }
    // Empty tensors have no blocks: they stay as they are (nothing to change).
    Some(
        results
            .into_iter()
            .zip(values)
            .map(|(r, v)| r.unwrap_or_else(|| into_burn(v.clone())))
            .collect(),
    )
}
