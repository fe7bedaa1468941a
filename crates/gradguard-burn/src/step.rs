//! The guarded optimizer step: the guard decides, the optimizer steps — or does not.

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use gradguard::{Decision, Guard, GuardError, StepReport, UnitLayout};

use crate::update::Updates;
use crate::view::{BurnGradients, Placement};

/// The module and optimizer state after a good step, to roll back to.
///
/// Burn tensors are reference-counted and write in place only into buffers nobody else holds, so a
/// snapshot is a clone of handles: it costs no copy when taken, and the next optimizer step copies
/// what it changes instead of touching the snapshot. It keeps one extra version of the weights and
/// of the optimizer state alive until the next snapshot replaces it: the model's size plus its
/// optimizer state (for Adam, two moments per weight).
#[derive(Clone)]
struct Snapshot<M> {
    step: u64,
    module: M,
    optimizer: ModuleOptimizer,
}

/// The guard stopped training; the module comes back unchanged with the error.
#[derive(Debug)]
pub struct Stopped<M> {
    /// The module as it was before the failed step.
    pub module: M,
    /// Why the guard stopped.
    pub error: GuardError,
}

impl<M: std::fmt::Debug> std::fmt::Display for Stopped<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<M: std::fmt::Debug> std::error::Error for Stopped<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The guard's side of a guarded step, for any owner of the optimizer: the guard, the last
/// snapshot, the batches still to skip after a rollback, and where the statistics run.
pub(crate) struct GuardCore<M> {
    pub guard: Guard,
    snapshot: Option<Snapshot<M>>,
    batches_to_skip: u32,
    pub placement: Placement,
}

impl<M: Module + Clone> GuardCore<M> {
    pub fn new(guard: Guard) -> Self {
        GuardCore {
            guard,
            snapshot: None,
            batches_to_skip: 0,
            placement: Placement::Auto,
        }
    }

    pub fn skip_batch(&mut self) -> bool {
        if self.batches_to_skip > 0 {
            self.batches_to_skip -= 1;
            true
        } else {
            false
        }
    }

    pub fn snapshot_step(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.step)
    }

    pub fn set_snapshot(&mut self, step: u64, module: M, optimizer: &ModuleOptimizer) {
        self.snapshot = Some(Snapshot {
            step,
            module,
            optimizer: optimizer.clone(),
        });
    }

    /// Runs the guard on `grads`, then steps `optimizer` at `lr · lr_multiplier`, or skips, or
    /// restores the snapshot into `module` and `optimizer`.
    pub fn step(
        &mut self,
        optimizer: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        module: M,
        mut grads: GradientsParams,
        loss: Option<Tensor<1>>,
    ) -> Result<GuardedStep<M>, Box<Stopped<M>>> {
        let with_values = self.guard.chain().needs_parameters();
        let mut view =
            BurnGradients::collect_with(&module, &mut grads, loss, with_values, self.placement);
        let loss = view.loss();
        let mut host_reads = 0;
        let mut report = match self.guard.step(&mut view, loss) {
            Ok(r) => r,
            Err(error) => return Err(Box::new(Stopped { module, error })),
        };
        if matches!(report.decision, Decision::Rollback { .. }) && self.snapshot.is_none() {
            // A guard restored from a checkpoint may name a snapshot this process never took.
            report.decision = Decision::Skip;
            report
                .reasons
                .push("no snapshot in this process: skipped instead of rolling back".into());
        }
        let module = match report.decision {
            Decision::Apply => {
                let on_host = view.on_host();
                host_reads += view.host_reads();
                let grads = view.into_gradients_params(&module);
                // With one rate for all parameters the multiplier scales it; per-group rates are
                // passed through untouched while the multiplier is 1.
                let stepped_at = report.effective_lr(lr.base());
                let lr = if report.lr_multiplier == 1.0 {
                    lr
                } else {
                    stepped_at.into()
                };
                let bound = self.guard.config().update_bound;
                let before = bound.map(|b| (b, module.clone(), optimizer.clone()));
                let mut module = optimizer.step(lr, module, grads);
                if let Some((bound, old, old_optimizer)) = before {
                    // Burn's weights are `[in, out]`: input-first unless the bound says otherwise.
                    let layout = bound.unit_layout.unwrap_or(UnitLayout::InputFirst);
                    let units = self.guard.update_needs_units().then_some(layout);
                    let updates = Updates::measure(&old, &module, on_host, units);
                    host_reads += u32::from(!on_host);
                    let check = match self.guard.check_update(&updates.norms, stepped_at) {
                        Ok(check) => check.expect("the bound is configured"),
                        Err(error) => {
                            *optimizer = old_optimizer;
                            return Err(Box::new(Stopped { module: old, error }));
                        }
                    };
                    if check.revert {
                        report.reasons.push(format!(
                            "the optimizer's update of '{}' is not finite: step undone",
                            check.largest_tensor.as_deref().unwrap_or("?")
                        ));
                        report.decision = Decision::Skip;
                        report.take_snapshot = false;
                        *optimizer = old_optimizer;
                        module = old;
                    } else if check.bounded > 0 {
                        report.reasons.push(format!(
                            "update bounded in {} tensors ({} units): ratio {:.3e} over the \
                             model, {:.3e} in '{}'; bound {:.3e}",
                            check.bounded,
                            check.bounded_units,
                            check.global_ratio,
                            check.largest_ratio,
                            check.largest_tensor.as_deref().unwrap_or("?"),
                            check.max_ratio
                        ));
                        module = updates.scale(module, &check.scales, &check.unit_scales);
                    }
                    report.consecutive_bad = self.guard.counters().consecutive_bad;
                    report.update = Some(check);
                }
                if report.take_snapshot {
                    self.snapshot = Some(Snapshot {
                        step: report.step,
                        module: module.clone(),
                        optimizer: optimizer.clone(),
                    });
                }
                module
            }
            Decision::Skip => {
                host_reads += view.host_reads();
                module
            }
            Decision::Rollback { skip_batches, .. } => {
                host_reads += view.host_reads();
                let snap = self.snapshot.clone().expect("checked above");
                *optimizer = snap.optimizer;
                self.batches_to_skip = skip_batches;
                snap.module
            }
        };
        Ok(GuardedStep {
            module,
            report,
            host_reads,
        })
    }
}

/// A Burn optimizer behind a gradguard [`Guard`].
///
/// ```ignore
/// let mut optim = GuardedOptimizer::new(AdamConfig::new().init(), guard);
/// for batch in batches {
///     if optim.skip_batch() { continue; }          // after a rollback
///     let loss = model.forward_loss(batch);
///     let grads = GradientsParams::from_grads(loss.backward(), &model);
///     let step = optim.step(lr, model, grads, Some(loss))?;
///     model = step.module;                          // step.report has the telemetry
/// }
/// ```
/// (`examples/plain_loop.rs` is the complete program; a test runs it.)
///
/// - `Apply`: the gradients (already clipped) go to the optimizer at `lr · lr_multiplier`.
/// - `Skip`: neither the module's weights nor the optimizer state change.
/// - `Rollback`: both are restored to the last snapshot, and [`GuardedOptimizer::skip_batch`]
///   answers `true` for the next `skip_batches` calls.
pub struct GuardedOptimizer<M> {
    optimizer: ModuleOptimizer,
    core: GuardCore<M>,
}

impl<M> std::fmt::Debug for GuardedOptimizer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedOptimizer")
            .field("guard", &self.core.guard)
            .field("batches_to_skip", &self.core.batches_to_skip)
            .finish_non_exhaustive()
    }
}

/// The result of one guarded step.
#[derive(Debug)]
pub struct GuardedStep<M> {
    /// The module after the step (unchanged when skipped, restored after a rollback).
    pub module: M,
    /// What the guard measured and decided.
    pub report: StepReport,
    /// Device-to-host reads this step made: on an accelerator one for the statistics and the loss,
    /// one for the update bound's norms, and one more only to locate a NaN or inf; on the host
    /// path none.
    pub host_reads: u32,
}

impl<M: Module + Clone> GuardedOptimizer<M> {
    /// Wraps any Burn optimizer (`SgdConfig::new().init()`, `AdamConfig::new().init()`, …).
    pub fn new(optimizer: impl Into<ModuleOptimizer>, guard: Guard) -> Self {
        GuardedOptimizer {
            optimizer: optimizer.into(),
            core: GuardCore::new(guard),
        }
    }

    /// The loss multiplied by the guard's loss scale (unchanged without a
    /// [`gradguard::LossScaler`]): call `backward()` on this, and pass it to
    /// [`GuardedOptimizer::step`] as the loss. The guard unscales the gradients and the loss it
    /// reports, and skips an overflow as normal scaling.
    pub fn scale_loss(&self, loss: Tensor<1>) -> Tensor<1> {
        let scale = self.core.guard.loss_scale();
        if scale == 1.0 {
            loss
        } else {
            loss.mul_scalar(scale)
        }
    }

    /// Where statistics and rules run (default [`Placement::Auto`]).
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.core.placement = placement;
        self
    }

    /// The guard (counters, state, configuration).
    pub fn guard(&self) -> &Guard {
        &self.core.guard
    }

    /// The guard, mutably (e.g. to restore its state from a checkpoint).
    pub fn guard_mut(&mut self) -> &mut Guard {
        &mut self.core.guard
    }

    /// The wrapped optimizer (e.g. to save its record).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optimizer
    }

    /// Replaces the wrapped optimizer (e.g. one loaded from a checkpoint).
    pub fn set_optimizer(&mut self, optimizer: ModuleOptimizer) {
        self.optimizer = optimizer;
    }

    /// The step of the snapshot a rollback would restore.
    pub fn snapshot_step(&self) -> Option<u64> {
        self.core.snapshot_step()
    }

    /// Makes `module`, with the wrapped optimizer's current state, the snapshot a rollback
    /// restores, as taken at `step`. A run resumed from a checkpoint written when the report said
    /// `take_snapshot` calls this with the loaded module, so it rolls back exactly as the
    /// uninterrupted run would have.
    pub fn set_snapshot(&mut self, step: u64, module: M) {
        self.core.set_snapshot(step, module, &self.optimizer);
    }

    /// Call once per batch before computing it: `true` while batches are being skipped after a
    /// rollback (and counts that batch as skipped).
    pub fn skip_batch(&mut self) -> bool {
        self.core.skip_batch()
    }

    /// Guards one step: reads the statistics and the loss (one host read on an accelerator),
    /// runs the rules where the gradients live, then steps the optimizer at
    /// `lr · lr_multiplier`, skips, or rolls back. A stop returns the module unchanged.
    pub fn step(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
        loss: Option<Tensor<1>>,
    ) -> Result<GuardedStep<M>, Box<Stopped<M>>> {
        self.core
            .step(&mut self.optimizer, lr.into(), module, grads, loss)
    }
}
