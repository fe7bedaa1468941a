//! Changing many tensors on a CubeCL device in one launch per group of tensors
//! ([`super::rewrite_kernel`]) instead of tensor ops per tensor — a clip of the gradients
//! (clamp, zero non-finite values, per-unit factors) or the update bound's scaling of the
//! weights — and handing the results back to Burn as tensors that are views of one buffer per
//! group (no copy). Like the statistics, the rewrite is queued on Burn's fusion stream as one
//! operation ([`super::queued`]'s pattern): the values, the origin and the uploaded factors are
//! its inputs, one result per value its outputs, and nothing blocks until a result is read.

use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::custom::{
    CustomOpIr, HandleContainer, Operation, OperationIr, StreamId, TensorIr,
};
use burn_fusion::{ExecutionError, FusionRuntime};
use cubecl::prelude::*;
use gradguard::UnitSpan;

use super::kernel::BLOCK;
use super::queued::{Fused, fused};
use super::{MAX_GROUP, grid, groups};
use crate::device_ops::Rewrite;

/// What a rewrite does, owned (it is carried by a queued operation): see [`Rewrite`].
#[derive(Clone, Debug)]
struct Spec {
    zero_non_finite: bool,
    limit: Option<f32>,
    spans: Vec<UnitSpan>,
    /// Where each tensor's factors start in the one factor buffer.
    first_factor: Vec<usize>,
    dtype: Option<DType>,
}

/// The queued rewrite: inputs the values, the origin (when it has one) and the factors; one
/// output per value.
#[derive(Debug)]
struct QueuedRewrite {
    desc: CustomOpIr,
    spec: Spec,
    from_origin: bool,
}

impl Operation<FusionCubeRuntime> for QueuedRewrite {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime as FusionRuntime>::FusionHandle>,
    ) -> Result<(), ExecutionError> {
        let mut inputs = super::queued::input_buffers(&self.desc, handles);
        let factors = inputs.pop().expect("the factors are the last input");
        let n = self.desc.outputs.len();
        let (values, origin) = inputs.split_at(n);
        let origin = self.from_origin.then_some(origin);
        let results = launch(values, origin, &factors, &self.spec);
        for (ir, result) in self.desc.outputs.iter().zip(results) {
            handles.register_float_tensor::<CubeBackend>(&ir.id, result);
        }
        Ok(())
    }
}

/// `values` rewritten by `how` (see [`super::rewrite_kernel`] for the order), flat, relative to
/// `how.origin` when it has one, queued on Burn's fusion stream as one operation (no blocking
/// call per tensor). `None` when a tensor is not on a CubeCL device or a factor list does not
/// match its span.
pub(crate) fn rewrite(values: &[Tensor<1>], how: Rewrite<'_>) -> Option<Vec<Tensor<1>>> {
    let mismatched = how.spans.len() != values.len()
        || how.factors.len() != values.len()
        || how.origin.is_some_and(|o| o.len() != values.len())
        || how
            .spans
            .iter()
            .zip(how.factors)
            .any(|(s, f)| s.units() != f.len());
    if mismatched {
        return None;
    }
    let head = values.first()?;
    let fv = values.iter().map(fused).collect::<Option<Vec<_>>>()?;
    let fo = match how.origin {
        Some(o) => o.iter().map(fused).collect::<Option<Vec<_>>>()?,
        None => Vec::new(),
    };
    let mut first_factor = Vec::with_capacity(how.factors.len());
    let mut all = Vec::new();
    for f in how.factors {
        first_factor.push(all.len());
        all.extend_from_slice(f);
    }
    let count = all.len();
    // One upload of every factor, itself queued.
    let factors = fused(&Tensor::<1>::from_data(
        TensorData::new(all, [count]),
        &head.device().inner(),
    ))?;
    let client = fv[0].client.clone();
    let outputs: Vec<TensorIr> = fv
        .iter()
        .map(|t| {
            let len = t.shape.num_elements();
            let dtype = if len == 0 {
                t.dtype
            } else {
                how.dtype.unwrap_or(t.dtype)
            };
            TensorIr::uninit(client.create_empty_handle(), Shape::from([len]), dtype)
        })
        .collect();
    let inputs: Vec<TensorIr> = fv
        .into_iter()
        .chain(fo)
        .chain([factors])
        .map(Fused::into_ir)
        .collect();
    let desc = CustomOpIr::new("gradguard::rewrite", &inputs, &outputs);
    let spec = Spec {
        zero_non_finite: how.zero_non_finite,
        limit: how.limit,
        spans: how.spans.to_vec(),
        first_factor,
        dtype: how.dtype,
    };
    let out = client.register(
        StreamId::current(),
        OperationIr::Custom(desc.clone()),
        QueuedRewrite {
            desc,
            spec,
            from_origin: how.origin.is_some(),
        },
    );
    Some(
        out.into_iter()
            .map(Tensor::from_primitive::<burn_cubecl::Cube>)
            .collect(),
    )
}

/// `values` rewritten as `spec` says, relative to `origin` when given, with the factors in
/// `factors`: one launch per group of tensors, each tensor's result a view of its group's
/// buffer; an empty tensor's result is the tensor itself.
fn launch(
    values: &[CubeTensor],
    origin: Option<&[CubeTensor]>,
    factors: &CubeTensor,
    spec: &Spec,
) -> Vec<CubeTensor> {
    let Some(head) = values.first() else {
        return Vec::new();
    };
    let client = head.client.clone();
    let lens: Vec<usize> = values.iter().map(|t| t.meta.num_elements()).collect();
    // Besides the sequences: the factors, the output and the runtime's metadata.
    let sequences = if origin.is_some() { 2 } else { 1 };
    let bindings = client.properties().hardware.max_bindings as usize;
    let group = (bindings.saturating_sub(3) / sequences).clamp(1, MAX_GROUP);
    let blocks: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK)).collect();

    let mut results: Vec<Option<CubeTensor>> = vec![None; values.len()];
    for members in groups(values, &blocks, group) {
        let dtype = values[members[0]].dtype;
        let out_dtype = spec.dtype.unwrap_or(dtype);
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
            factors.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            starts.into_iter().collect(),
            offsets.iter().map(|&o| o as u32).collect(),
            field(&|t| spec.first_factor[t]),
            field(&|t| spec.spans[t].cols.max(1)),
            field(&|t| usize::from(spec.spans[t].units_are_columns)),
            spec.limit.unwrap_or(f32::INFINITY),
            origin.is_some(),
            spec.zero_non_finite,
            [storage(dtype), storage(out_dtype)],
        );
        let bytes = out_dtype.size() as u64;
        for (&t, &o) in members.iter().zip(&offsets) {
            let handle = out
                .handle
                .clone()
                .offset_start(o as u64 * bytes)
                .offset_end((total - o - lens[t]) as u64 * bytes);
            results[t] = Some(CubeTensor::new_contiguous(
                client.clone(),
                head.device.clone(),
                [lens[t]].into(),
                handle,
                out_dtype,
            ));
        }
    }
    // Empty tensors have no blocks: they stay as they are (nothing to change).
    results
        .into_iter()
        .zip(values)
        .map(|(r, v)| r.unwrap_or_else(|| v.clone()))
        .collect()
}
