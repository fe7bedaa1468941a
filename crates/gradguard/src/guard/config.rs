//! What the guard does on trouble.

use serde::{Deserialize, Serialize};

use crate::detect::SpikeConfig;
use crate::error::{GuardError, Result};

use super::update_bound::UpdateBound;

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
    /// Skip this step.
    #[default]
    Skip,
    /// Restore the last snapshot and skip the next `skip_batches` batches (as PaLM did); the
    /// guard's default, with one batch.
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
///
/// A step skipped only because its loss or gradients were not finite backs the rate off only when
/// no [`UpdateBound`] is configured. With the bound the rate is judged by what it does to the
/// weights (an oversized or overflowing update backs off); a NaN batch says nothing about it, and
/// skipping is the whole remedy — backing off for it pinned the rate at its floor under frequent
/// bad batches (a corrupt batch in every 25 left m at 1/64, and a Candle digits run at 37% instead
/// of 93%).
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

/// The guard's configuration. The defaults are the guard that needs no tuning
/// (docs/library.md "The default guard", where the grid that chose them is measured):
///
/// - skip steps with non-finite gradients or loss;
/// - bound every update relative to the weights ([`UpdateBound`]: ‖Δθ‖/‖θ‖ ≤ 0.01, each tensor
///   ≤ 0.1 · m but never below 0.01), from step 0 and with no history — the protection against
///   the blow-up of a bad initialization, which spike detectors cannot see; an oversized step
///   backs off the LR multiplier m, so the rate shrinks until steps fit. An optimizer that
///   normalizes each coordinate (Adam, AdamW, …), recognized by its first step, is judged by
///   [`UpdateBound::normalized`] instead: no unit-wise bound, ‖Δθ‖/‖θ‖ ≤ 0.015, and an m that
///   follows its steps;
/// - detect spikes in the loss (after 20 steps of history) and roll back to the last snapshot,
///   skipping one batch; the rollback backs off m, so the same blow-up does not repeat (the
///   gradient-norm detector is off by default: the update bound covers it);
/// - recover m ×2 after 50 calm steps; snapshot every 100 good steps; give up after 20 bad steps
///   in a row.
///
/// Adapters without snapshots turn a rollback into a skip (and say so in the report).
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
    /// The bound on each tensor's relative update, checked after the optimizer step by the
    /// step protocol ([`crate::Guard::guarded_step`]); `None` disables it.
    pub update_bound: Option<UpdateBound>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            non_finite: NonFinitePolicy::Skip,
            // The update bound keeps an oversized gradient from reaching the weights; a spike
            // detector on the gradient norm fired on healthy growth and its rollbacks cost more
            // than they saved (docs/library.md "The default guard"). It stays available.
            grad_spike: None,
            loss_spike: Some(SpikeConfig::default()),
            on_spike: SpikeAction::Rollback { skip_batches: 1 },
            lr: LrBackoff::default(),
            snapshot_every: 100,
            max_consecutive_bad: 20,
            update_bound: Some(UpdateBound::default()),
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
        if let Some(bound) = &self.update_bound {
            bound.validate()?;
        }
        Ok(())
    }
}
