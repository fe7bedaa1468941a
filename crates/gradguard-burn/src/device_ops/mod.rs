//! The one seam between the guard and an accelerator: what the guard asks of a device, and the
//! implementation chosen once, when a step's gradients are collected.
//!
//! Three operations, each over a list of flat tensors and each ending in at most one host read:
//! block statistics (of the gradients, or of the weights and the update in the pair form),
//! per-unit norms (AGC's, the update bound's per neuron), and a rewrite (clamp, zero non-finite
//! values, per-unit factors, or the update bound's scaling relative to the weights before a
//! step). [`TensorOps`] does them with Burn's tensor ops on any backend (the statistics over one
//! padded buffer, [`crate::padded`]); with the `cube` feature, `CubeOps` does them on Burn's
//! CubeCL backends (wgpu, CUDA, ROCm) by fused kernels that read the tensors where they lie
//! ([`crate::cube`]). [`choose`] picks one; nothing after it branches between them.
//!
//! The host path — a CPU backend, whose memory is host memory — is not one of them: there the
//! guard owns the gradient buffers and runs the core's host kernels ([`Engine::Host`]).

#[cfg(feature = "cube")]
mod cube_ops;
mod tensor_ops;

use std::fmt::Debug;

use burn::tensor::{DType, Tensor};
use gradguard::UnitSpan;

#[cfg(feature = "cube")]
use cube_ops::CubeOps;
pub(crate) use tensor_ops::TensorOps;

/// What one statistics read brought back: [`crate::padded::PER_BLOCK`] values per block of
/// [`crate::padded::BLOCK`] values, blocks laid out as [`crate::padded::Padded::segments_of`].
#[derive(Debug, Default)]
pub(crate) struct BlockRead {
    /// The blocks of the tensors measured.
    pub values: Vec<f32>,
    /// Pair form: the blocks of `after − before`; empty otherwise.
    pub deltas: Vec<f32>,
    /// The loss, read in the same read.
    pub loss: Option<f64>,
    /// The values of the extra tensor read in the same read (a step queued ahead's statistics);
    /// empty without one.
    pub extra: Vec<f32>,
}

/// What [`DeviceOps::rewrite`] does to every value x of tensor t, in this order: with
/// `zero_non_finite` NaN and ±inf become 0; x is clamped to `[-limit, limit]`, NaN kept; then
/// f·x, or with an origin a (the weights before a step) a + f·(x − a), f one factor per unit of
/// `spans[t]` (one factor: the tensor as a whole). Computed in f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rewrite<'a> {
    /// NaN and ±inf become 0.
    pub zero_non_finite: bool,
    /// The clamp's limit, if any.
    pub limit: Option<f32>,
    /// Each tensor's units.
    pub spans: &'a [UnitSpan],
    /// Each tensor's factors, one per unit of its span.
    pub factors: &'a [Vec<f32>],
    /// The origin a, tensors of the lengths of the values.
    pub origin: Option<&'a [Tensor<1>]>,
    /// The results' dtype; `None`: each tensor's own.
    pub dtype: Option<DType>,
}

impl<'a> Rewrite<'a> {
    /// A rewrite that multiplies tensor t's units by `factors[t]`.
    pub fn by_units(spans: &'a [UnitSpan], factors: &'a [Vec<f32>]) -> Self {
        Rewrite {
            zero_non_finite: false,
            limit: None,
            spans,
            factors,
            origin: None,
            dtype: None,
        }
    }
}

/// Per tensor, per unit: (‖x_u‖, ‖after_u − x_u‖).
pub(crate) type UnitNorms = Vec<Vec<(f64, f64)>>;

/// What turns the values read back into [`UnitNorms`].
type DecodeUnitNorms = Box<dyn FnOnce(&[f32]) -> UnitNorms + Send>;

/// Every unit's norms, queued: [`DeviceOps::queued_unit_norms`].
pub(crate) struct QueuedUnitNorms {
    /// The values to read; `None` when there is nothing to measure.
    pub tensor: Option<Tensor<1>>,
    /// How many values the tensor holds (0 without one).
    len: usize,
    /// Per tensor, per unit: (‖x_u‖, ‖after_u − x_u‖), from the values read.
    decode: DecodeUnitNorms,
}

impl QueuedUnitNorms {
    /// `tensor` to read and what decodes its values.
    pub fn new(
        tensor: Option<Tensor<1>>,
        decode: impl FnOnce(&[f32]) -> UnitNorms + Send + 'static,
    ) -> Self {
        let len = tensor.as_ref().map_or(0, |t| t.shape().num_elements());
        QueuedUnitNorms {
            tensor,
            len,
            decode: Box::new(decode),
        }
    }

    /// The norms from the values read; `None` when they are not the tensor's values (another
    /// length).
    pub fn decode(self, read: &[f32]) -> Option<UnitNorms> {
        (read.len() == self.len).then(|| (self.decode)(read))
    }
}

/// The guard's device operations; see the module documentation.
pub(crate) trait DeviceOps: Debug + Sync {
    /// The block statistics of `tensors` — and with `after` (tensors of the same lengths), of
    /// `after − tensors` — the one-element `loss` and the f32 tensor `extra` (already queued on
    /// the same device), in one host read (none when there is nothing to read). Non-finite values
    /// are counted, not located.
    fn block_statistics(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        loss: Option<Tensor<1>>,
        extra: Option<Tensor<1>>,
    ) -> BlockRead;

    /// The block statistics of `tensors`, queued and not read: [`crate::padded::PER_BLOCK`]
    /// values per block, blocks laid out as [`crate::padded::Padded::segments_of`] (`None`: no
    /// tensor has values). The non-blocking step decides from them on the device and reads them
    /// a step later.
    fn queued_statistics(&self, tensors: &[Tensor<1>]) -> Option<Tensor<1>>;

    /// Per tensor, per unit of `spans[t]`: (‖x_u‖, ‖after_u − x_u‖), the second 0 without
    /// `after`; NaN for a unit holding a NaN, inf for one holding an inf. One host read (none
    /// when no tensor has both values and units).
    fn unit_norms(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        spans: &[UnitSpan],
    ) -> Vec<Vec<(f64, f64)>>;

    /// [`Self::unit_norms`] queued and not read: the f32 tensor to read (`None`: nothing to
    /// measure) and what turns its values into the norms. A step queued ahead of the guard's
    /// decision reads it with the gradients' statistics ([`BlockRead::extra`]).
    fn queued_unit_norms(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        spans: &[UnitSpan],
    ) -> QueuedUnitNorms;

    /// `values` rewritten by `how` (flat, of the lengths they came in). The caller checks that
    /// every factor list matches its span.
    fn rewrite(&self, values: &[Tensor<1>], how: Rewrite<'_>) -> Vec<Tensor<1>>;
}

/// The implementation for `tensors` (all on one device): the fused kernels when it is a CubeCL
/// device, Burn's tensor ops otherwise.
pub(crate) fn choose(tensors: &[Tensor<1>]) -> &'static dyn DeviceOps {
    // A type check of the first tensor's handle: nothing is run or waited for (resolving it
    // would flush the backward pass's queued work to learn the same).
    #[cfg(feature = "cube")]
    if tensors
        .first()
        .and_then(crate::cube::queued::fused)
        .is_some()
    {
        return &CubeOps;
    }
    let _ = tensors;
    &TensorOps
}

/// Where a step's measurements run, chosen once when its gradients are collected.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Engine {
    /// The core's host kernels over the buffers themselves (a CPU backend).
    Host,
    /// Device operations, one host read each.
    Device(&'static dyn DeviceOps),
}

impl Engine {
    /// The operations that rewrite tensors: the device's, or Burn's tensor ops on the host.
    pub fn ops(self) -> &'static dyn DeviceOps {
        match self {
            Engine::Host => &TensorOps,
            Engine::Device(ops) => ops,
        }
    }
}
