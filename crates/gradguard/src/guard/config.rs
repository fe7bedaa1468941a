//! What the guard does on trouble.

use serde::{Deserialize, Serialize};

use crate::detect::SpikeConfig;
use crate::error::{GuardError, Result};

/// What to do with NaN or ±inf in the gradients (or the loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Stop with [`GuardError::NonFiniteGradient`] naming the first tensor and index.
    Error,
    /// Skip the optimizer step (the default): weights and optimizer state stay as they were.
    #[default]
    Skip,
    /// Replace the non-finite gradient values by 0 and go on. A non-finite loss is still skipped.
    Zero,
    /// Let the step through unchanged: the rules and spike detectors sit out that step and the
    /// optimizer receives the non-finite values — what an unprotected loop does. For measuring a
    /// baseline (the lab's `none` runs); never a protection.
    Apply,
}

impl std::str::FromStr for NonFinitePolicy {
    type Err = GuardError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "error" => Ok(NonFinitePolicy::Error),
            "skip" => Ok(NonFinitePolicy::Skip),
            "zero" => Ok(NonFinitePolicy::Zero),
            "apply" => Ok(NonFinitePolicy::Apply),
            other => Err(GuardError::InvalidConfig(format!(
                "non-finite policy must be error, skip, zero or apply, got '{other}'"
            ))),
        }
    }
}

/// What to do when a spike is detected in the gradient norm or the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum SpikeAction {
    /// Record it and back off the learning rate, but apply the step.
    Ignore,
    /// Skip this step (the default).
    #[default]
    Skip,
    /// Restore the last snapshot and skip the next `skip_batches` batches (as PaLM did).
    Rollback {
        /// Batches to skip after restoring.
        skip_batches: u32,
    },
    /// Stop with [`GuardError::GradientSpike`].
    Stop,
}

/// The learning-rate multiplier: backs off on trouble, recovers after calm.
///
/// On a bad step (skipped, rolled back, or a spike under `Ignore`): `m ← max(m · backoff, min)`.
/// After `recover_after` good steps in a row: `m ← min(m · recover, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LrBackoff {
    /// Factor on trouble, in (0, 1]; 1 disables back-off.
    pub backoff: f64,
    /// The floor of the multiplier, in (0, 1].
    pub min: f64,
    /// Good steps in a row before recovering one notch.
    pub recover_after: u32,
    /// Factor per recovery, ≥ 1.
    pub recover: f64,
}

impl Default for LrBackoff {
    fn default() -> Self {
        LrBackoff {
            backoff: 0.5,
            min: 1.0 / 64.0,
            recover_after: 50,
            recover: 2.0,
        }
    }
}

/// The guard's configuration. Defaults: skip non-finite steps, detect spikes in the gradient norm
/// and in the loss and skip them, back off the LR, snapshot every 100 good steps, and give up
/// after 20 bad steps in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardConfig {
    /// Policy for non-finite gradients and loss.
    pub non_finite: NonFinitePolicy,
    /// Spike detection on the global L2 gradient norm (before clipping); `None` disables it.
    pub grad_spike: Option<SpikeConfig>,
    /// Spike detection on the loss; `None` disables it.
    pub loss_spike: Option<SpikeConfig>,
    /// What a spike does.
    pub on_spike: SpikeAction,
    /// Learning-rate back-off.
    pub lr: LrBackoff,
    /// Good steps between rollback snapshots (the report says when to take one).
    pub snapshot_every: u64,
    /// Consecutive bad steps after which the guard stops with [`GuardError::TooManyBadSteps`].
    pub max_consecutive_bad: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            non_finite: NonFinitePolicy::Skip,
            grad_spike: Some(SpikeConfig::default()),
            loss_spike: Some(SpikeConfig::default()),
            on_spike: SpikeAction::Skip,
            lr: LrBackoff::default(),
            snapshot_every: 100,
            max_consecutive_bad: 20,
        }
    }
}

impl GuardConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let lr = &self.lr;
        if !(lr.backoff > 0.0 && lr.backoff <= 1.0 && lr.min > 0.0 && lr.min <= 1.0) {
            return Err(GuardError::InvalidConfig(format!(
                "lr backoff and min must be in (0, 1], got {} and {}",
                lr.backoff, lr.min
            )));
        }
        if !(lr.recover >= 1.0) || lr.recover_after == 0 {
            return Err(GuardError::InvalidConfig(format!(
                "lr recover must be >= 1 and recover_after >= 1, got {} and {}",
                lr.recover, lr.recover_after
            )));
        }
        if self.max_consecutive_bad == 0 {
            return Err(GuardError::InvalidConfig(
                "max_consecutive_bad must be at least 1".into(),
            ));
        }
        if self.snapshot_every == 0 {
            return Err(GuardError::InvalidConfig(
                "snapshot_every must be at least 1".into(),
            ));
        }
        for spike in [&self.grad_spike, &self.loss_spike].into_iter().flatten() {
            spike.validate()?;
        }
        Ok(())
    }
}
