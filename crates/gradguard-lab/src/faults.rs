//! Faults a training run can be made to suffer, for testing what the guard promises: NaN and inf
//! in one layer's gradients, a NaN loss, a NaN in the input batch, a gradient spike, and a run of
//! bad steps longer than the guard's limit.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::tasks::HostBatch;

/// One fault, at a batch index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Fault {
    /// The first value of tensor `tensor`'s gradient becomes NaN.
    NanGradient {
        /// The batch index.
        step: u64,
        /// The parameter's module path, e.g. `Mlp.layers.3.weight`.
        tensor: String,
    },
    /// The first value of tensor `tensor`'s gradient becomes +inf.
    InfGradient {
        /// The batch index.
        step: u64,
        /// The parameter's module path.
        tensor: String,
    },
    /// The loss is NaN (and so is every gradient).
    NanLoss {
        /// The batch index.
        step: u64,
    },
    /// One input value of the batch is NaN.
    NanBatch {
        /// The batch index.
        step: u64,
    },
    /// Every gradient is multiplied by `factor` (the loss is scaled, so it spikes too).
    Spike {
        /// The batch index.
        step: u64,
        /// The factor, e.g. 1e6.
        factor: f32,
    },
    /// The loss is NaN for `steps` consecutive batches from `from`.
    BadRun {
        /// The first batch index.
        from: u64,
        /// How many.
        steps: u64,
    },
}

impl Fault {
    /// Whether this fault makes the loss of batch `step` NaN.
    pub(crate) fn nan_loss_at(&self, step: u64) -> bool {
        match *self {
            Fault::NanLoss { step: s } => s == step,
            Fault::BadRun { from, steps } => (from..from.saturating_add(steps)).contains(&step),
            _ => false,
        }
    }

    /// The loss factor of a spike at batch `step`.
    pub(crate) fn spike_at(&self, step: u64) -> Option<f32> {
        match *self {
            Fault::Spike { step: s, factor } if s == step => Some(factor),
            _ => None,
        }
    }

    /// Whether batch `step`'s inputs get a NaN.
    pub(crate) fn nan_batch_at(&self, step: u64) -> bool {
        matches!(*self, Fault::NanBatch { step: s } if s == step)
    }

    /// The gradient fault at batch `step`, with its tensor.
    pub(crate) fn gradient_at(
        &self,
        step: u64,
    ) -> Option<(&str, gradguard_burn::faults::GradientFault)> {
        use gradguard_burn::faults::GradientFault;
        match self {
            Fault::NanGradient { step: s, tensor } if *s == step => {
                Some((tensor, GradientFault::Nan))
            }
            Fault::InfGradient { step: s, tensor } if *s == step => {
                Some((tensor, GradientFault::Inf))
            }
            _ => None,
        }
    }
}

/// Puts the faults planned for batch `index` into its inputs (a NaN as the first value).
pub(crate) fn corrupt_batch(faults: &[Fault], index: u64, batch: &mut HostBatch) {
    if faults.iter().any(|f| f.nan_batch_at(index))
        && let Some(first) = batch.inputs.first_mut()
    {
        *first = f32::NAN;
    }
}

/// Puts the faults planned for batch `index` into its loss: spikes multiply it, a NaN fault
/// makes it NaN.
pub(crate) fn corrupt_loss(faults: &[Fault], index: u64, mut loss: Tensor<1>) -> Tensor<1> {
    for fault in faults {
        if let Some(factor) = fault.spike_at(index) {
            loss = loss * factor;
        }
        if fault.nan_loss_at(index) {
            loss = loss * f32::NAN;
        }
    }
    loss
}

/// Puts the gradient faults planned for batch `index` into `grads`; a fault that names no
/// parameter of `module` is a configuration error.
pub(crate) fn corrupt_gradients<M: Module>(
    faults: &[Fault],
    index: u64,
    module: &M,
    grads: &mut GradientsParams,
) -> Result<(), LabError> {
    for fault in faults {
        if let Some((tensor, kind)) = fault.gradient_at(index)
            && !gradguard_burn::faults::inject(module, grads, tensor, kind)
        {
            return Err(LabError::Config(format!(
                "fault injection: no parameter named '{tensor}'"
            )));
        }
    }
    Ok(())
}
