//! A parameter's values read as `[f32]` where they lie, and the spare buffers the fused step
//! writes.
//!
//! On the CPU backend a parameter's buffer is read through a handle of its own (no copy), and
//! its new values become its tensor without a copy (`from_data` of the buffer they were written
//! in). Spare buffers for the moments are kept from step to step.

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};
use burn_dispatch::backends::Flex;
use burn_dispatch::backends::flex::FlexTensor;

/// Buffers of finished steps by length, handed to the next step's parameters of that length.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
}

impl Pool {
    /// A buffer of `len` values (their content is left over from an earlier step).
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        self.free
            .get_mut(&len)
            .and_then(Vec::pop)
            .unwrap_or_else(|| vec![0.0; len])
    }

    /// Keeps `buffer` for a later step.
    pub fn give(&mut self, buffer: Vec<f32>) {
        if !buffer.is_empty() {
            self.free.entry(buffer.len()).or_default().push(buffer);
        }
    }
}

/// How Burn's optimizers leave a parameter: whether it requires a gradient and its checkpointing
/// strategy — restored on the tensor rebuilt from new values. (Distributed parameters never get
/// here: the fused step leaves them to Burn's optimizer.)
struct Context {
    autodiff: bool,
    require_grad: bool,
    checkpointing: Option<burn::tensor::GradientCheckpointingStrategy>,
}

impl Context {
    fn capture<const D: usize>(w: &Tensor<D>) -> Self {
        let autodiff = w.is_autodiff();
        Context {
            autodiff,
            require_grad: w.is_require_grad(),
            checkpointing: if autodiff {
                w.gradient_checkpointing_strategy()
            } else {
                None
            },
        }
    }

    fn restore<const D: usize>(self, inner: Tensor<D>) -> Tensor<D> {
        if !self.autodiff {
            return inner;
        }
        let mut w = Tensor::from_inner(inner);
        if let Some(strategy) = self.checkpointing {
            w = w.with_gradient_checkpointing_strategy(strategy);
        }
        if self.require_grad {
            w.require_grad()
        } else {
            w
        }
    }
}

/// A handle on a CPU-backend parameter's buffer, read as `[f32]` where it lies.
pub(crate) struct HostValues(FlexTensor);

impl HostValues {
    /// `w`'s buffer, or `None` when it is not a contiguous f32 tensor of the CPU backend.
    pub fn of<const D: usize>(w: &Tensor<D>) -> Option<Self> {
        let inner = if w.is_autodiff() {
            w.clone().inner()
        } else {
            w.clone()
        };
        let flex: FlexTensor = inner.try_into_primitive::<Flex>().ok()?;
        flex.as_slice::<f32>()?;
        Some(HostValues(flex))
    }

    /// The values.
    pub fn values(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("checked when the handle was taken")
    }
}

/// `w` with its values replaced by `values` (of its shape); its old buffer is released.
pub(crate) fn replace_values<const D: usize>(w: Tensor<D>, values: TensorData) -> Tensor<D> {
    map_values(w, |inner| {
        let device = inner.device();
        drop(inner);
        Tensor::from_data(values, &device)
    })
}

/// `w` with its values replaced by `next(values)`, computed off the autodiff graph, and left as
/// Burn's optimizers leave a parameter (requiring a gradient, with its checkpointing strategy).
pub(crate) fn map_values<const D: usize>(
    w: Tensor<D>,
    next: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let context = Context::capture(&w);
    let inner = if context.autodiff { w.inner() } else { w };
    context.restore(next(inner))
}
