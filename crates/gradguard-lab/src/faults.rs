//! Faults a training run can be made to suffer, for testing what the guard promises: NaN and inf
//! in one layer's gradients, a NaN loss, a NaN in the input batch, a gradient spike, and a run of
//! bad steps longer than the guard's limit.

use serde::{Deserialize, Serialize};

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
