//! The step guard: rules and detectors combined into one decision per step.

mod config;
mod deferred;
mod judge;
mod non_blocking;
mod protocol;
mod report;
mod update_bound;

pub use config::{GuardConfig, LrBackoff, NonFinitePolicy, SpikeAction};
pub use non_blocking::{DevicePlan, DeviceRule};
pub use protocol::{OptimizerStep, StepActions, UpdateMeasure};
pub use report::{Decision, StepReport, TensorReport};
pub use update_bound::{
    NormalizedLimits, UpdateBound, UpdateCheck, UpdateFamily, UpdateNorms, UpdateSpread,
    check_update,
};

use serde::{Deserialize, Serialize};

use crate::detect::SpikeDetector;
use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::loss_scale::{LossScaler, LossScalerState, ScaleUpdate};
use crate::rules::{Chain, RuleState};
use crate::stats::{TensorStats, combined};
use deferred::DeferredScale;
use judge::tensor_reports;

/// Counters the guard keeps; part of its saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardCounters {
    /// Steps seen.
    pub step: u64,
    /// Steps applied.
    pub applied: u64,
    /// Steps skipped.
    pub skipped: u64,
    /// Steps answered with a rollback.
    pub rolled_back: u64,
    /// Steps with non-finite gradients or loss.
    pub non_finite_steps: u64,
    /// Spikes detected (gradient norm or loss).
    pub spikes: u64,
    /// Bad steps in a row.
    pub consecutive_bad: u32,
    /// Good steps since the last bad one or the last LR recovery.
    pub calm_steps: u32,
    /// Good steps since the last snapshot.
    pub since_snapshot: u64,
    /// The step whose snapshot a rollback restores.
    pub snapshot_step: Option<u64>,
    /// The current learning-rate multiplier.
    pub lr_multiplier: f64,
    /// Applied steps whose update the update bound scaled down (as a whole or in some units).
    #[serde(default)]
    pub bounded_steps: u64,
    /// The schedule's rate (the rate stepped at over the multiplier) at the last step the update
    /// bound judged; 0 before the first. A rate above it is a warm-up.
    #[serde(default)]
    pub last_rate: f64,
    /// The optimizer family the update bound recognized on the first update it judged
    /// ([`UpdateFamily::recognize`]); `None` before that, or when the bound's setting names it.
    #[serde(default)]
    pub update_family: Option<UpdateFamily>,
}

impl GuardCounters {
    /// One notch of LR back-off: `m ← max(m · backoff, min)`, and the calm streak restarts.
    fn back_off(&mut self, lr: &LrBackoff) {
        self.lr_multiplier = (self.lr_multiplier * lr.backoff).max(lr.min);
        self.calm_steps = 0;
    }
}

impl Default for GuardCounters {
    fn default() -> Self {
        GuardCounters {
            step: 0,
            applied: 0,
            skipped: 0,
            rolled_back: 0,
            non_finite_steps: 0,
            spikes: 0,
            consecutive_bad: 0,
            calm_steps: 0,
            since_snapshot: 0,
            snapshot_step: None,
            lr_multiplier: 1.0,
            bounded_steps: 0,
            last_rate: 0.0,
            update_family: None,
        }
    }
}

/// The guard's whole state as plain data: save it with the checkpoint, and a guard built from the
/// same configuration and rules and restored from it decides exactly as the original would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// Counters and the LR multiplier.
    pub counters: GuardCounters,
    /// Window of the gradient-norm spike detector.
    pub grad_spike_window: Option<Vec<f64>>,
    /// Window of the loss spike detector.
    pub loss_spike_window: Option<Vec<f64>>,
    /// State of each rule of the chain.
    pub rules: Vec<RuleState>,
    /// The loss scaler's state, when the guard has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScalerState>,
}

/// Sits between `backward()` and the optimizer step and decides what the step does.
///
/// Per step: one statistics pass; the loss and gradients are checked for non-finite values (the
/// [`NonFinitePolicy`] decides); the pre-clip global norm and the loss go to the spike detectors
/// (the [`SpikeAction`] decides); the rule chain clips; then the decision, the counters and the
/// learning-rate multiplier are updated and a [`StepReport`] is returned. After
/// `max_consecutive_bad` bad steps in a row the guard stops with a typed error instead of
/// skipping forever.
#[derive(Debug)]
pub struct Guard {
    config: GuardConfig,
    chain: Chain,
    grad_spike: Option<SpikeDetector>,
    loss_spike: Option<SpikeDetector>,
    counters: GuardCounters,
    /// Bad steps in a row before the last step was applied, for the update check.
    bad_before_apply: u32,
    scaler: Option<LossScaler>,
    /// Batches still to skip after a rollback ([`Guard::skip_batch`]); not part of the saved
    /// state (a resumed run restarts from a checkpoint, not in the middle of a rollback).
    batches_to_skip: u32,
}

impl Default for Guard {
    /// The default guard: [`GuardConfig::default`] and no clipping rule — safe from step 0 through
    /// the update bound, with non-finite skips, spike rollbacks and LR back-off.
    fn default() -> Self {
        Guard::new(GuardConfig::default(), Chain::default()).expect("the defaults are valid")
    }
}

impl Guard {
    /// A guard with a checked configuration and a rule chain.
    pub fn new(config: GuardConfig, chain: Chain) -> Result<Self> {
        config.validate()?;
        Ok(Guard {
            grad_spike: config.grad_spike.map(SpikeDetector::new).transpose()?,
            loss_spike: config.loss_spike.map(SpikeDetector::new).transpose()?,
            config,
            chain,
            counters: GuardCounters::default(),
            bad_before_apply: 0,
            scaler: None,
            batches_to_skip: 0,
        })
    }

    /// The guard with dynamic loss scaling (mixed precision): the caller multiplies the loss by
    /// [`Guard::loss_scale`] before the backward pass and hands the guard the scaled gradients
    /// (and the scaled loss). The guard unscales both before anything else — the statistics
    /// arithmetically, the gradients in one scaling of every tensor — and an overflow is skipped as
    /// normal scaling: it halves the scale and does **not** count as a bad step or back off the
    /// rate. An overflow at the smallest scale is [`GuardError::ScaleUnderflow`].
    pub fn with_loss_scaler(mut self, scaler: LossScaler) -> Self {
        self.scaler = Some(scaler);
        self
    }

    /// The loss scaler, if the guard has one.
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// The factor to multiply this step's loss by: the scaler's scale, or 1 without one.
    pub fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, LossScaler::scale)
    }

    /// The configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// The rule chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The counters so far.
    pub fn counters(&self) -> &GuardCounters {
        &self.counters
    }

    /// The learning-rate multiplier in force.
    pub fn lr_multiplier(&self) -> f64 {
        self.counters.lr_multiplier
    }

    /// The whole state, as plain serializable data.
    pub fn state(&self) -> GuardState {
        GuardState {
            counters: self.counters.clone(),
            grad_spike_window: self.grad_spike.as_ref().map(SpikeDetector::state),
            loss_spike_window: self.loss_spike.as_ref().map(SpikeDetector::state),
            rules: self.chain.state(),
            loss_scale: self.scaler.as_ref().map(LossScaler::state),
        }
    }

    /// Loads a state saved by [`Guard::state`] from a guard of the same configuration and rules.
    pub fn restore(&mut self, state: &GuardState) -> Result<()> {
        fn load(
            detector: &mut Option<SpikeDetector>,
            window: &Option<Vec<f64>>,
            what: &str,
        ) -> Result<()> {
            match (detector, window) {
                (Some(d), Some(w)) => d.restore(w),
                (None, None) => Ok(()),
                _ => Err(GuardError::BadState {
                    what: what.into(),
                    reason: "enabled in one of the configuration and the state, not both".into(),
                }),
            }
        }
        load(
            &mut self.grad_spike,
            &state.grad_spike_window,
            "gradient spike detector",
        )?;
        load(
            &mut self.loss_spike,
            &state.loss_spike_window,
            "loss spike detector",
        )?;
        self.chain.restore(&state.rules)?;
        match (&mut self.scaler, state.loss_scale) {
            (Some(scaler), Some(saved)) => scaler.restore(saved)?,
            (None, None) => {}
            _ => {
                return Err(GuardError::BadState {
                    what: "loss scaler".into(),
                    reason: "present in one of the guard and the state, not both".into(),
                });
            }
        }
        self.counters = state.counters.clone();
        Ok(())
    }

    /// Judges one step: reads the gradients once, may change them through the rules, and says
    /// what the optimizer must do. Errors are the stops the configuration asks for (and bad
    /// rule input such as AGC without parameters).
    pub fn step(&mut self, grads: &mut dyn Gradients, loss: Option<f64>) -> Result<StepReport> {
        let mut stats = grads.stats();
        let mut loss = loss;
        let mut loss_scale = None;
        if let Some(scaler) = self.scaler.as_mut() {
            let overflow =
                stats.iter().any(|s| !s.is_finite()) || loss.is_some_and(|l| !l.is_finite());
            let update = scaler.update(overflow)?;
            if update.skip {
                return Ok(self.overflow_skip(grads, &stats, loss, update));
            }
            let inverse = 1.0 / update.scale;
            if inverse != 1.0 {
                // The division by the scale rides on the first rule that scales (one pass).
                stats = stats.iter().map(|s| s.scaled(inverse)).collect();
                loss = loss.map(|l| l * inverse);
                let mut deferred = DeferredScale::new(grads, inverse);
                let judged = self.judge(&mut deferred, stats, loss, Some(update));
                deferred.flush();
                return judged;
            }
            loss_scale = Some(update);
        }
        self.judge(grads, stats, loss, loss_scale)
    }

    /// A step whose scaled gradients overflowed: skipped as part of normal loss scaling (counted
    /// as skipped, but neither a bad step nor a reason to back off the rate).
    fn overflow_skip(
        &mut self,
        grads: &dyn Gradients,
        stats: &[TensorStats],
        loss: Option<f64>,
        update: ScaleUpdate,
    ) -> StepReport {
        let c = &mut self.counters;
        let step = c.step;
        c.step += 1;
        c.skipped += 1;
        StepReport {
            step,
            loss: loss.map(|l| l / update.scale),
            norm_before: combined(stats).l2(),
            norm_after: combined(stats).l2(),
            tensors: tensor_reports(grads, stats, stats),
            rules: Vec::new(),
            grad_spike: None,
            loss_spike: None,
            decision: Decision::Skip,
            reasons: vec![format!(
                "loss scale overflow at scale {}: skipped, scale now {}",
                update.scale, update.next_scale
            )],
            lr_multiplier: c.lr_multiplier,
            take_snapshot: false,
            consecutive_bad: c.consecutive_bad,
            update: None,
            loss_scale: Some(update),
        }
    }

    /// Judges the update the optimizer produced for a step this guard decided to apply, under
    /// the configured [`UpdateBound`] (`None` when the bound is off), at the rate the optimizer
    /// stepped at (the schedule's rate times the LR multiplier). A `revert` (a non-finite weight
    /// or update: the optimizer overflowed) turns the step, already counted as applied, into a
    /// skipped bad step (backing off the LR, and stopping with [`GuardError::TooManyBadSteps`]
    /// past the limit, as any bad step). Bounding an update is not a bad step: it is how the
    /// guard lets a run with an oversized first gradient go on. [`Guard::guarded_step`] calls it.
    ///
    /// The first call recognizes the optimizer's family from its update at `lr`
    /// ([`UpdateFamily::recognize`]) unless the bound's setting names it, and keeps it in the
    /// counters (saved with the guard's state); until a family is known the bound's own limits
    /// (those of gradient descent) apply.
    fn check_update(&mut self, norms: &[UpdateNorms], lr: f64) -> Result<Option<UpdateCheck>> {
        let Some(bound) = self.config.update_bound else {
            return Ok(None);
        };
        if bound.family.is_none() && self.counters.update_family.is_none() {
            self.counters.update_family = UpdateFamily::recognize(norms, lr);
        }
        let family = bound
            .family
            .or(self.counters.update_family)
            .unwrap_or(UpdateFamily::Proportional);
        let check = check_update(&bound, family, self.counters.lr_multiplier, norms);
        self.counters.bounded_steps += u64::from(!check.revert && check.bounded > 0);
        // The schedule's rate, without the guard's multiplier: rising means a warm-up.
        let base = lr / self.counters.lr_multiplier;
        let warming_up = self.counters.last_rate > 0.0 && base > self.counters.last_rate;
        if base.is_finite() && base > 0.0 {
            self.counters.last_rate = base;
        }
        if !check.revert {
            match family {
                UpdateFamily::Proportional if check.global_scale < 1.0 => {
                    // An oversized step: the rate is too large for where the model is now. Back
                    // off the rate (and with it the bound) as after any trouble; calm steps
                    // bring both back.
                    self.counters.back_off(&self.config.lr);
                }
                UpdateFamily::Proportional => {}
                UpdateFamily::Normalized => follow_the_rate(
                    &mut self.counters,
                    &self.config.lr,
                    &bound,
                    &check,
                    warming_up,
                ),
            }
        }
        if check.revert {
            let c = &mut self.counters;
            let lr = &self.config.lr;
            c.applied = c.applied.saturating_sub(1);
            c.skipped += 1;
            c.non_finite_steps += 1;
            c.consecutive_bad = self.bad_before_apply + 1;
            c.back_off(lr);
            if c.consecutive_bad >= self.config.max_consecutive_bad {
                return Err(GuardError::TooManyBadSteps {
                    step: c.step.saturating_sub(1),
                    count: c.consecutive_bad,
                    reason: format!(
                        "the optimizer's update of '{}' is not finite",
                        check.largest_tensor.as_deref().unwrap_or("?")
                    ),
                });
            }
        }
        Ok(Some(check))
    }

    /// Whether the adapter must measure each unit's update norms for the update bound:
    /// the update bound is on and has a unit-wise limit for the optimizer's family, or the
    /// family is still to be recognized.
    fn update_needs_units(&self) -> bool {
        self.config
            .update_bound
            .is_some_and(|bound| bound.measures_units(bound.family.or(self.counters.update_family)))
    }

    /// Whether the update bound is on and still has to recognize the optimizer's family.
    fn recognizes_family(&self) -> bool {
        self.config
            .update_bound
            .is_some_and(|bound| bound.family.or(self.counters.update_family).is_none())
    }

    /// Updates counters and the LR multiplier; returns whether to snapshot after this step.
    fn account(
        &mut self,
        decision: Decision,
        spiked: bool,
        non_finite: bool,
        reasons: &[String],
    ) -> Result<bool> {
        self.bad_before_apply = self.counters.consecutive_bad;
        let c = &mut self.counters;
        let lr = &self.config.lr;
        let step = c.step;
        c.step += 1;
        c.non_finite_steps += u64::from(non_finite);
        c.spikes += u64::from(spiked);
        // A non-finite skip is data trouble, not rate trouble, when the update bound watches the
        // rate (`LrBackoff`'s doc comment).
        let data_only =
            non_finite && decision == Decision::Skip && self.config.update_bound.is_some();
        if (decision != Decision::Apply && !data_only) || spiked {
            c.back_off(lr);
        }
        if decision != Decision::Apply {
            match decision {
                Decision::Rollback { .. } => c.rolled_back += 1,
                _ => c.skipped += 1,
            }
            c.consecutive_bad += 1;
            if c.consecutive_bad >= self.config.max_consecutive_bad {
                return Err(GuardError::TooManyBadSteps {
                    step,
                    count: c.consecutive_bad,
                    reason: reasons.join("; "),
                });
            }
            return Ok(false);
        }
        c.applied += 1;
        c.consecutive_bad = 0;
        if !spiked {
            c.calm_steps += 1;
            if c.calm_steps >= lr.recover_after && c.lr_multiplier < 1.0 {
                c.lr_multiplier = (c.lr_multiplier * lr.recover).min(1.0);
                c.calm_steps = 0;
            }
        }
        c.since_snapshot += 1;
        let take = c.snapshot_step.is_none() || c.since_snapshot >= self.config.snapshot_every;
        if take {
            c.snapshot_step = Some(step);
            c.since_snapshot = 0;
        }
        Ok(take)
    }
}

/// The LR multiplier of a normalizing optimizer follows its steps (the update bound as a
/// controller of the rate): a step the global bound scaled by s < 1 multiplies m by s (floored at
/// the back-off's minimum), so the next steps fit; a step within the bound raises m by
/// [`NormalizedLimits::recovery`] up to 1. While the schedule's rate rises (a warm-up) an oversized
/// step is scaled but m stays: a normalizing optimizer's first steps move every weight by the
/// full rate before its moments average out, which is what a warm-up is for, not a sign that the
/// rate is too large.
fn follow_the_rate(
    counters: &mut GuardCounters,
    lr: &LrBackoff,
    bound: &UpdateBound,
    check: &UpdateCheck,
    warming_up: bool,
) {
    if check.global_scale < 1.0 {
        if !warming_up {
            counters.lr_multiplier = (counters.lr_multiplier * check.global_scale).max(lr.min);
            counters.calm_steps = 0;
        }
    } else {
        counters.lr_multiplier = (counters.lr_multiplier * bound.normalized.recovery).min(1.0);
    }
}
