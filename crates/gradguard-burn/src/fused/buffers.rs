//! A parameter's values lent to the host as `[f32]`, and the spare buffers the fused step writes.
//!
//! On the CPU backend a tensor whose buffer nobody else holds leaves it without a copy
//! (`into_data`) and takes one back the same way (`from_data`); a shared buffer (the step after a
//! snapshot) is copied once.

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};

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

/// How Burn's optimizers leave a parameter: whether it requires a gradient, its checkpointing
/// strategy and whether it is distributed — restored on the tensor rebuilt from new values.
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

/// Lends `w`'s values to `read` as `[f32]` and gives back the same tensor (its own buffer when it
/// held it alone).
pub(crate) fn with_values<const D: usize>(w: Tensor<D>, read: impl FnOnce(&[f32])) -> Tensor<D> {
    let context = Context::capture(&w);
    let inner = if context.autodiff { w.inner() } else { w };
    let device = inner.device();
    let data = inner.into_data();
    read(
        data.as_slice::<f32>()
            .expect("the fused step runs on f32 parameters"),
    );
    context.restore(Tensor::from_data(data, &device))
}

/// `w` with its values replaced by `values` (of its shape), and its old values as a buffer.
pub(crate) fn replace_values<const D: usize>(
    w: Tensor<D>,
    values: TensorData,
) -> (Tensor<D>, Vec<f32>) {
    let context = Context::capture(&w);
    let inner = if context.autodiff { w.inner() } else { w };
    let device = inner.device();
    let old = inner
        .into_data()
        .try_into_vec::<f32>()
        .expect("the fused step runs on f32 parameters");
    (context.restore(Tensor::from_data(values, &device)), old)
}
