//! The record of one guarded step.

use serde::{Deserialize, Serialize};

use crate::detect::SpikeCheck;
use crate::rules::RuleOutcome;

use super::update_bound::UpdateCheck;

/// What the training loop must do with this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decision {
    /// Step the optimizer with the (already clipped) gradients, at `lr · lr_multiplier`.
    Apply,
    /// Do not step: weights and optimizer state stay as they are.
    Skip,
    /// Do not step; restore the snapshot taken after step `to_step`, then skip `skip_batches`.
    Rollback {
        /// The step whose snapshot to restore.
        to_step: u64,
        /// Batches to skip after restoring.
        skip_batches: u32,
    },
}

/// One tensor's statistics before and after the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// ‖g‖₂ before the rules (NaN/inf when non-finite values are present).
    pub norm_before: f64,
    /// ‖g‖₂ after the rules.
    pub norm_after: f64,
    /// max |g| over finite values, before the rules.
    pub max_abs_before: f64,
    /// NaN and ±inf values before the rules.
    pub non_finite: u64,
}

/// Everything the guard measured and decided on one step; the unit of telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step index, from 0.
    pub step: u64,
    /// The loss given for this step.
    pub loss: Option<f64>,
    /// Global ‖g‖₂ before the rules.
    pub norm_before: f64,
    /// Global ‖g‖₂ after the rules.
    pub norm_after: f64,
    /// Per-tensor statistics, in model order.
    pub tensors: Vec<TensorReport>,
    /// What each rule did (empty when the step was judged bad before the rules ran).
    pub rules: Vec<RuleOutcome>,
    /// Gradient-norm spike check, when enabled and reached.
    pub grad_spike: Option<SpikeCheck>,
    /// Loss spike check, when enabled and reached.
    pub loss_spike: Option<SpikeCheck>,
    /// The decision.
    pub decision: Decision,
    /// Why the step was not a plain apply, in words.
    pub reasons: Vec<String>,
    /// Multiply the learning rate by this for this step.
    pub lr_multiplier: f64,
    /// Take a rollback snapshot after applying this step.
    pub take_snapshot: bool,
    /// Bad steps in a row, this one included.
    pub consecutive_bad: u32,
    /// What the update bound found after the optimizer step (filled in by the adapter that ran
    /// the step; `None` when the bound is off or the step was not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateCheck>,
    /// The loss scaler's move this step, when the guard has one ([`crate::LossScaler`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::ScaleUpdate>,
}

impl StepReport {
    /// The learning rate this step runs at for a base rate `lr`: `lr · lr_multiplier`. The one
    /// place it is computed (the adapter's optimizer step, telemetry and the lab use it).
    pub fn effective_lr(&self, lr: f64) -> f64 {
        lr * self.lr_multiplier
    }
}
