//! One guarded step, owned by the core: the guard decides, the adapter acts, the guard accounts.
//!
//! An adapter (Burn, Candle, or a user's own framework) implements [`StepActions`] over its model
//! and optimizer — measure, step, undo, scale, snapshot, restore — and calls
//! [`Guard::guarded_step`]. Everything else lives here, once: the fallback when a rollback has no
//! snapshot in this process, the optimizer's rate, the update bound's measurement, revert and
//! scaling, the report's reasons, the snapshot cadence and the batches to skip after a rollback.

use crate::error::GuardError;
use crate::gradients::{Gradients, UnitLayout};

use super::Guard;
use super::report::{Decision, StepReport};
use super::update_bound::{UpdateCheck, UpdateNorms};

/// What the update bound needs measured of the optimizer's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMeasure {
    /// Nothing: the update bound is off. The adapter keeps nothing from before the step.
    Nothing,
    /// ‖w‖₂ before and ‖Δw‖₂ of each parameter as a whole.
    Tensors,
    /// The same, and per unit of the given layout ([`UpdateNorms::units`]).
    Units(UnitLayout),
}

/// How the optimizer steps: the schedule's rate, the guard's multiplier, what to measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerStep {
    /// The rate the optimizer steps at: the schedule's rate times the guard's multiplier.
    pub lr: f64,
    /// The guard's learning-rate multiplier (1 leaves per-group rates as the caller set them).
    pub lr_multiplier: f64,
    /// What the update bound needs measured; anything but [`UpdateMeasure::Nothing`] also asks
    /// the adapter to keep the weights and optimizer state from before the step, so that
    /// [`StepActions::undo_step`] and [`StepActions::scale_step`] can act on it.
    pub measure: UpdateMeasure,
    /// The bound is still to recognize the optimizer's family from this step's update: measure
    /// each update's ℓ1 and ℓ∞ norms too ([`crate::UpdateNorms::spread`]). Only the first judged
    /// step asks.
    pub recognize: bool,
}

/// What an adapter does to its model and optimizer for a step the guard decided.
///
/// Each method acts; none decides. [`Guard::guarded_step`] calls them in this order:
/// [`gradients`](StepActions::gradients) (measured and rewritten by the rules), then on
/// [`Decision::Apply`] [`step_optimizer`](StepActions::step_optimizer), then at most one of
/// [`undo_step`](StepActions::undo_step) and [`scale_step`](StepActions::scale_step), then
/// [`take_snapshot`](StepActions::take_snapshot) when the cadence says so; on
/// [`Decision::Rollback`] [`roll_back`](StepActions::roll_back); on [`Decision::Skip`] nothing.
pub trait StepActions {
    /// The adapter's error; a guard stop converts into it.
    type Error: From<GuardError>;

    /// The layout of the framework's weight matrices, whose units the update bound judges unless
    /// its setting names a layout: Burn and JAX store `[in, out]`
    /// ([`UnitLayout::InputFirst`]), PyTorch and Candle `[out, in]` ([`UnitLayout::OutputFirst`]).
    const WEIGHT_LAYOUT: UnitLayout;

    /// Whether undoing a step or rolling back restarts the optimizer from its configuration
    /// instead of restoring its state (an optimizer whose state the adapter cannot copy); the
    /// report says so.
    const RESTARTS_OPTIMIZER: bool = false;

    /// The step's gradients, for the guard to measure and the rules to rewrite.
    fn gradients(&mut self) -> &mut dyn Gradients;

    /// Whether this process holds a snapshot to roll back to (a guard restored from a checkpoint
    /// may name a snapshot the process never took).
    fn has_snapshot(&self) -> bool;

    /// Steps the optimizer with the (rewritten) gradients at `step.lr`. Returns, per parameter in
    /// the gradients' order, what `step.measure` asks for (empty for
    /// [`UpdateMeasure::Nothing`]).
    fn step_optimizer(&mut self, step: OptimizerStep) -> Result<Vec<UpdateNorms>, Self::Error>;

    /// Puts back the weights and optimizer state from before the step just taken.
    fn undo_step(&mut self) -> Result<(), Self::Error>;

    /// Replaces the update of parameter `i` by `check.scales[i] · Δw`, or unit by unit by
    /// `check.unit_scales[i]` where that is not empty: `w ← w_before + s · Δw`.
    fn scale_step(&mut self, check: &UpdateCheck) -> Result<(), Self::Error>;

    /// Keeps the model and the optimizer state as they are now as the snapshot of step `step`.
    fn take_snapshot(&mut self, step: u64) -> Result<(), Self::Error>;

    /// Restores the model and the optimizer state from the snapshot.
    fn roll_back(&mut self) -> Result<(), Self::Error>;
}

impl Guard {
    /// One whole guarded step over an adapter's model and optimizer: the guard measures and
    /// judges the gradients ([`Guard::step`]); then the optimizer steps at `lr · multiplier`
    /// under the update bound, or the step is skipped, or the model is rolled back and the next
    /// batches are skipped ([`Guard::skip_batch`]). A stop is returned as an error after the
    /// model is put back as it was before the step.
    pub fn guarded_step<A: StepActions>(
        &mut self,
        actions: &mut A,
        loss: Option<f64>,
        lr: f64,
    ) -> Result<StepReport, A::Error> {
        let mut report = self.step(actions.gradients(), loss)?;
        if matches!(report.decision, Decision::Rollback { .. }) && !actions.has_snapshot() {
            // Counted as what it is: a skip.
            self.counters.rolled_back = self.counters.rolled_back.saturating_sub(1);
            self.counters.skipped += 1;
            report.decision = Decision::Skip;
            report
                .reasons
                .push("no snapshot in this process: skipped instead of rolling back".into());
        }
        match report.decision {
            Decision::Apply => self.apply(actions, &mut report, lr)?,
            Decision::Skip => {}
            Decision::Rollback {
                to_step,
                skip_batches,
            } => {
                actions.roll_back()?;
                self.batches_to_skip = skip_batches;
                if A::RESTARTS_OPTIMIZER {
                    report.reasons.push(format!(
                        "weights restored to step {to_step}; optimizer restarted"
                    ));
                }
            }
        }
        Ok(report)
    }

    /// The optimizer step an applied decision would take now at base rate `lr`, for an adapter
    /// of `layout` that queues the optimizer before the step's statistics are read (so that one
    /// read brings back the gradients' statistics and the update's): `None` where the rules could
    /// rewrite the gradients before the optimizer sees them — a rule that is not a skip (a clip,
    /// AGC, AutoClip, ZClip, …) or a loss scaler, whose unscaling rewrites them every step — and
    /// where the update bound is off (the step then needs no measurement, nothing to read).
    ///
    /// The step decided may still differ (the multiplier can move with this step's accounting, a
    /// non-finite policy can zero values): the adapter uses the step it queued ahead only where
    /// [`StepActions::step_optimizer`] asks for this very step and the gradients were not
    /// rewritten, and drops it otherwise (a skipped or rolled-back step drops it too).
    pub fn step_ahead(&self, lr: f64, layout: UnitLayout) -> Option<OptimizerStep> {
        let rewrites = self.scaler.is_some()
            || self
                .chain
                .rules()
                .iter()
                .any(|rule| rule.skip_limit().is_none());
        let measure = self.update_measure(layout);
        (!rewrites && measure != UpdateMeasure::Nothing).then(|| OptimizerStep {
            lr: lr * self.counters.lr_multiplier,
            lr_multiplier: self.counters.lr_multiplier,
            measure,
            recognize: self.recognizes_family(),
        })
    }

    /// Call once per batch before computing it: `true` while batches are being skipped after a
    /// rollback (and counts that batch as skipped).
    pub fn skip_batch(&mut self) -> bool {
        let skip = self.batches_to_skip > 0;
        self.batches_to_skip = self.batches_to_skip.saturating_sub(1);
        skip
    }

    /// What the update bound needs measured of this step, for an adapter of `layout`.
    fn update_measure(&self, layout: UnitLayout) -> UpdateMeasure {
        match self.config.update_bound {
            None => UpdateMeasure::Nothing,
            Some(bound) if self.update_needs_units() => {
                UpdateMeasure::Units(bound.unit_layout.unwrap_or(layout))
            }
            Some(_) => UpdateMeasure::Tensors,
        }
    }

    /// The optimizer's step of an applied decision, under the update bound, and the snapshot.
    fn apply<A: StepActions>(
        &mut self,
        actions: &mut A,
        report: &mut StepReport,
        lr: f64,
    ) -> Result<(), A::Error> {
        let step = OptimizerStep {
            lr: report.effective_lr(lr),
            lr_multiplier: report.lr_multiplier,
            measure: self.update_measure(A::WEIGHT_LAYOUT),
            recognize: self.recognizes_family(),
        };
        let norms = actions.step_optimizer(step)?;
        if step.measure != UpdateMeasure::Nothing {
            let check = match self.check_update(&norms, step.lr) {
                Ok(check) => check.expect("the bound is configured"),
                Err(error) => {
                    actions.undo_step()?;
                    return Err(error.into());
                }
            };
            if check.revert {
                let restarted = if A::RESTARTS_OPTIMIZER {
                    ", optimizer restarted"
                } else {
                    ""
                };
                report.reasons.push(format!(
                    "the optimizer's update of '{}' is not finite: step undone{restarted}",
                    check.largest_tensor.as_deref().unwrap_or("?")
                ));
                report.decision = Decision::Skip;
                report.take_snapshot = false;
                actions.undo_step()?;
            } else if check.bounded > 0 {
                report.reasons.push(bounded_reason(&check));
                actions.scale_step(&check)?;
            }
            report.consecutive_bad = self.counters.consecutive_bad;
            report.update = Some(check);
        }
        if report.take_snapshot {
            actions.take_snapshot(report.step)?;
        }
        Ok(())
    }
}

/// The report's line for a step whose update the bound scaled down.
fn bounded_reason(check: &UpdateCheck) -> String {
    format!(
        "update bounded in {} tensors ({} units): ratio {:.3e} over the model, {:.3e} in '{}'; \
         bound {:.3e}",
        check.bounded,
        check.bounded_units,
        check.global_ratio,
        check.largest_ratio,
        check.largest_tensor.as_deref().unwrap_or("?"),
        check.max_ratio
    )
}
