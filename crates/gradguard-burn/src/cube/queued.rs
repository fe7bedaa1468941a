//! The statistics and unit-norms kernels queued on Burn's fusion stream as one operation each
//! (the rewrite kernel, in [`super::rewrite`], the same way),
//! so that reaching every tensor's buffer costs one trip to the stream's server rather than one
//! per tensor.
//!
//! Resolving a tensor to its CubeCL buffer ([`super::resolve`]) is a blocking call into the
//! fusion server's thread, one per tensor (a quarter of the statistics' time on llvmpipe:
//! docs/measurements/2026-12-07-statistics-kernel.md). Queued as a custom operation whose inputs
//! are every gradient, the kernel finds the buffers itself when the stream runs it, and only its
//! one output (and the loss) is resolved to be read.

use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{Cube, CubeBackend};
use burn_fusion::custom::{
    CustomOpIr, HandleContainer, Operation, OperationIr, OperationOutput, StreamId, TensorIr,
};
use burn_fusion::{ExecutionError, FusionRuntime, FusionTensor};
use gradguard::UnitSpan;

use super::kernel::{BLOCK, STATS};

/// A tensor behind Burn's fusion layer on a CubeCL device.
pub(crate) type Fused = FusionTensor<FusionCubeRuntime>;

/// Which kernel a queued operation runs.
#[derive(Debug)]
enum Kernel {
    /// [`super::block_statistics`].
    Blocks,
    /// [`super::units::unit_statistics`] with these spans.
    Units(Vec<UnitSpan>),
}

/// The queued operation: inputs a (and b, in the pair form), one output.
#[derive(Debug)]
struct QueuedStatistics {
    desc: CustomOpIr,
    pair: bool,
    kernel: Kernel,
}

impl Operation<FusionCubeRuntime> for QueuedStatistics {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime as FusionRuntime>::FusionHandle>,
    ) -> Result<(), ExecutionError> {
        let inputs = input_buffers(&self.desc, handles);
        let (a, b) = if self.pair {
            let (a, b) = inputs.split_at(inputs.len() / 2);
            (a, Some(b))
        } else {
            (&inputs[..], None)
        };
        let out = match &self.kernel {
            Kernel::Blocks => super::block_statistics(a, b),
            Kernel::Units(spans) => super::units::unit_statistics(a, b, spans),
        };
        let Some(out) = out else {
            return Err(ExecutionError::generic(
                "gradguard statistics queued with nothing to measure".to_string(),
            ));
        };
        handles.register_float_tensor::<CubeBackend>(&self.desc.outputs[0].id, out);
        Ok(())
    }
}

/// The CubeCL buffers of a queued operation's inputs, each made contiguous (a copy by Burn's
/// own kernel only where it is not).
pub(crate) fn input_buffers(
    desc: &CustomOpIr,
    handles: &mut HandleContainer<<FusionCubeRuntime as FusionRuntime>::FusionHandle>,
) -> Vec<CubeTensor> {
    desc.inputs
        .iter()
        .map(|ir| burn_cubecl::kernel::into_contiguous(handles.get_float_tensor::<CubeBackend>(ir)))
        .collect()
}

/// A tensor's fusion handle on a CubeCL device, or `None` elsewhere.
pub(crate) fn fused(t: &Tensor<1>) -> Option<Fused> {
    t.clone().try_into_primitive::<Cube>().ok()
}

/// What queueing found.
pub(crate) enum Queued {
    /// A tensor is not on a CubeCL device: the caller measures another way.
    Elsewhere,
    /// Nothing to measure (no tensor, or none with values or units).
    Empty,
    /// The statistics, in the layout of [`super::block_statistics`], computed when the stream
    /// runs (when they are resolved).
    Statistics(Fused),
}

/// Each tensor's fusion handle (a's, then b's), or `None` if one is not on a CubeCL device.
fn fused_all(a: &[Tensor<1>], b: Option<&[Tensor<1>]>) -> Option<(Vec<Fused>, Vec<Fused>)> {
    let fa = a.iter().map(fused).collect::<Option<Vec<_>>>()?;
    let fb = match b {
        Some(b) => b.iter().map(fused).collect::<Option<Vec<_>>>()?,
        None => Vec::new(),
    };
    Some((fa, fb))
}

/// Queues `kernel` over `fa` (and `fb`) with an output of `len` f32 values on the current stream.
fn queue(fa: Vec<Fused>, fb: Vec<Fused>, pair: bool, len: usize, kernel: Kernel) -> Queued {
    let Some(client) = fa.first().map(|t| t.client.clone()) else {
        return Queued::Empty;
    };
    if len == 0 {
        return Queued::Empty;
    }
    let output = TensorIr::uninit(client.create_empty_handle(), Shape::from([len]), DType::F32);
    let inputs: Vec<TensorIr> = fa.into_iter().chain(fb).map(Fused::into_ir).collect();
    let desc = CustomOpIr::new("gradguard::statistics", &inputs, &[output]);
    let [out] = client
        .register(
            StreamId::current(),
            OperationIr::Custom(desc.clone()),
            QueuedStatistics { desc, pair, kernel },
        )
        .outputs();
    Queued::Statistics(out)
}

/// Queues the block statistics of `a` (and of `b − a`) as one operation on the current stream.
pub(crate) fn block_statistics(a: &[Tensor<1>], b: Option<&[Tensor<1>]>) -> Queued {
    let Some((fa, fb)) = fused_all(a, b) else {
        return Queued::Elsewhere;
    };
    let blocks: usize = fa
        .iter()
        .map(|t| t.shape.num_elements().div_ceil(BLOCK))
        .sum();
    let pair = b.is_some();
    let per_block = if pair { 2 * STATS } else { STATS };
    queue(fa, fb, pair, blocks * per_block, Kernel::Blocks)
}

/// Queues the unit statistics of `a` split by `spans` (and of `b − a`) as one operation on the
/// current stream; [`super::units::unit_sums_of`] decodes them.
pub(crate) fn unit_statistics(
    a: &[Tensor<1>],
    b: Option<&[Tensor<1>]>,
    spans: &[UnitSpan],
) -> Queued {
    let Some((fa, fb)) = fused_all(a, b) else {
        return Queued::Elsewhere;
    };
    let lens: Vec<usize> = fa.iter().map(|t| t.shape.num_elements()).collect();
    let pair = b.is_some();
    let len = super::units::unit_statistics_len(spans, &lens, pair);
    queue(fa, fb, pair, len, Kernel::Units(spans.to_vec()))
}

/// A queued result as a Burn tensor, still queued (for further tensor ops on the stream).
pub(crate) fn into_tensor(t: Fused) -> Tensor<1> {
    Tensor::from_primitive::<Cube>(t)
}

/// The CubeCL buffer of a queued result: runs the stream up to it.
pub(crate) fn resolve(t: Fused) -> CubeTensor {
    let client = t.client.clone();
    client.resolve_tensor_float::<CubeBackend>(t)
}
