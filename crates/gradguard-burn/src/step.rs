//! The guarded optimizer step: the guard decides, the optimizer steps — or does not.

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::RecordError;
use burn::tensor::{Bytes, Tensor};
use gradguard::{
    Gradients, Guard, GuardError, OptimizerStep, StepActions, StepReport, UnitLayout, UpdateCheck,
    UpdateMeasure, UpdateNorms,
};

use crate::device_ops::{Engine, QueuedUnitNorms};
use crate::fused::{DevicePending, DeviceStep, FusedOptimizer, FusedRule, Pending};
use crate::update::{Measuring, Updates};
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
    fused: Option<FusedOptimizer>,
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
/// snapshot, and where the statistics run.
pub(crate) struct GuardCore<M> {
    pub guard: Guard,
    snapshot: Option<Snapshot<M>>,
    pub placement: Placement,
}

impl<M> GuardCore<M> {
    pub fn snapshot_step(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.step)
    }
}

impl<M: Module + Clone> GuardCore<M> {
    pub fn new(guard: Guard) -> Self {
        GuardCore {
            guard,
            snapshot: None,
            placement: Placement::Auto,
        }
    }

    pub fn skip_batch(&mut self) -> bool {
        self.guard.skip_batch()
    }

    pub fn set_snapshot(
        &mut self,
        step: u64,
        module: M,
        optimizer: &ModuleOptimizer,
        fused: Option<&FusedOptimizer>,
    ) {
        self.snapshot = Some(Snapshot {
            step,
            module,
            optimizer: optimizer.clone(),
            fused: fused.cloned(),
        });
    }

    /// Runs the guard's step protocol ([`Guard::guarded_step`]) over `module` and `optimizer`:
    /// the optimizer steps at `lr · lr_multiplier`, or not, or both are restored from the
    /// snapshot. With `fused`, that optimizer steps where it can (the host path, a CubeCL
    /// device), `optimizer` elsewhere.
    pub fn step(
        &mut self,
        optimizer: &mut ModuleOptimizer,
        mut fused: Option<&mut FusedOptimizer>,
        lr: ModuleLearningRate,
        module: M,
        mut grads: GradientsParams,
        loss: Option<Tensor<1>>,
    ) -> Result<GuardedStep<M>, Box<Stopped<M>>> {
        let with_values = self.guard.chain().needs_parameters();
        let base_lr = lr.base();
        // The fused device step is queued before the statistics are read, where the guard would
        // step with the gradients as they are, so that its measurement comes back in the same
        // read (see `Ahead`): the kernel's own statistics where the bound reads whole tensors,
        // the unit kernel's over the weights and the step where it reads units (not on the
        // step that recognizes the optimizer, which measures the spread too).
        let planned = fused
            .as_ref()
            .and_then(|_| self.guard.step_ahead(base_lr, UnitLayout::InputFirst))
            .filter(|step| match step.measure {
                UpdateMeasure::Tensors => true,
                UpdateMeasure::Units(_) => !step.recognize,
                UpdateMeasure::Nothing => false,
            });
        let mut queued = None;
        let mut queued_units = None;
        let (view, pairs) = BurnGradients::collect_ahead(
            &module,
            &mut grads,
            loss,
            with_values,
            self.placement,
            |flat, engine| {
                let step = planned?;
                let whole = step.measure == UpdateMeasure::Tensors;
                let done = fused
                    .as_deref_mut()?
                    .step_device(&module, flat, step.lr, whole)?;
                let extra = match step.measure {
                    UpdateMeasure::Units(layout) => {
                        let measuring =
                            Measuring::collect(&module, &done.module, engine, Some(layout), false);
                        let mut units = measuring.queue_units()?;
                        let extra = units.tensor.take();
                        queued_units = Some((measuring, units));
                        extra
                    }
                    _ => done.statistics.clone(),
                };
                queued = Some(done);
                extra
            },
        );
        let ahead = queued.zip(planned).map(|(done, step)| Ahead {
            step,
            done,
            read: pairs,
            units: queued_units,
        });
        let loss = view.loss();
        let mut actions = BurnStep {
            optimizer,
            fused,
            ahead,
            pending: None,
            device_pending: None,
            snapshot: &mut self.snapshot,
            lr: Some(lr),
            module: Some(module),
            view: Some(view),
            before: None,
            host_reads: 0,
        };
        let result = self.guard.guarded_step(&mut actions, loss, base_lr);
        actions.commit_pending();
        let host_reads = actions.host_reads + actions.view.map_or(0, |v| v.host_reads());
        let module = actions.module.expect("every action leaves a module");
        match result {
            Ok(report) => Ok(GuardedStep {
                module,
                report,
                host_reads,
            }),
            Err(error) => Err(Box::new(Stopped { module, error })),
        }
    }
}

/// A fused device step queued before the step's statistics were read, for the step the guard
/// would take with the gradients as they are ([`Guard::step_ahead`]): its update's pair
/// statistics came back in the statistics' read, so an applied step reads nothing more. Used
/// only where the guard asks for this very step and no rule rewrote the gradients; dropped
/// otherwise (its new weights and moments are in new buffers: nothing to undo).
struct Ahead<M> {
    step: OptimizerStep,
    done: DeviceStep<M>,
    /// What came back with the gradients' statistics: the kernel's pair statistics, or the unit
    /// norms' values where units are measured (`None` where nothing was measured: a float
    /// parameter without a gradient).
    read: Option<Vec<f32>>,
    /// Where units are measured: the update paired with the weights before it, and what decodes
    /// its unit norms from `read`.
    units: Option<(Measuring, QueuedUnitNorms)>,
}

/// The Burn side of one guarded step: what [`Guard::guarded_step`] asks of the module, the
/// optimizer and the snapshot. Burn steps by value, so the module is held while it is stepped.
struct BurnStep<'a, M> {
    optimizer: &'a mut ModuleOptimizer,
    /// The fused optimizer, when the step runs through one.
    fused: Option<&'a mut FusedOptimizer>,
    /// The fused device step queued ahead of the decision, if any.
    ahead: Option<Ahead<M>>,
    /// The fused optimizer's step, prepared and measured, not yet in the module.
    pending: Option<Pending>,
    /// The fused optimizer's device step: in the module, its state not yet in the optimizer.
    device_pending: Option<DevicePending>,
    snapshot: &'a mut Option<Snapshot<M>>,
    /// The caller's rates, taken by the optimizer's step.
    lr: Option<ModuleLearningRate>,
    /// The module; `None` only inside an action.
    module: Option<M>,
    /// The gradients; taken by the optimizer's step.
    view: Option<BurnGradients>,
    /// The module and optimizer before the step, and the update's measurement, when the update
    /// bound asked for them.
    before: Option<(Updates, M, ModuleOptimizer)>,
    host_reads: u32,
}

impl<M: Module + Clone> BurnStep<'_, M> {
    fn take_module(&mut self) -> M {
        self.module.take().expect("every action leaves a module")
    }

    /// Puts the fused optimizer's prepared step into the module, if one is pending.
    fn commit_pending(&mut self) {
        if let (Some(pending), Some(fused)) = (self.pending.take(), self.fused.as_deref_mut()) {
            let module = self.module.take().expect("every action leaves a module");
            self.module = Some(fused.commit(module, pending));
        }
        if let (Some(pending), Some(fused)) =
            (self.device_pending.take(), self.fused.as_deref_mut())
        {
            fused.commit_device(pending);
        }
    }

    /// The fused optimizer's step on the host path: prepared and measured, committed at once
    /// when nothing is measured. `None` where it cannot run (no fused optimizer, gradients on a
    /// device or not in f32, parameters not on the CPU backend): nothing is done then.
    fn step_fused(
        &mut self,
        view: &mut BurnGradients,
        step: OptimizerStep,
    ) -> Option<Vec<UpdateNorms>> {
        let fused = self.fused.as_deref_mut()?;
        let grads = view.host_values_mut()?;
        let module = self.module.as_ref().expect("every action leaves a module");
        let (prepared, norms) =
            fused.prepare(module, grads, step.lr, step.measure, step.recognize)?;
        self.pending = Some(prepared.with_weights(view.take_host_buffers()));
        if step.measure == UpdateMeasure::Nothing {
            self.commit_pending();
        }
        Some(norms)
    }

    /// The fused optimizer's step on a CubeCL device: queued as one kernel into new buffers, the
    /// module before it kept while the update is measured (as for any optimizer, but with no copy
    /// of the optimizer state). `None` where it cannot run: nothing is done then.
    fn step_fused_device(
        &mut self,
        view: &BurnGradients,
        step: OptimizerStep,
        engine: Engine,
    ) -> Option<Vec<UpdateNorms>> {
        let fused = self.fused.as_deref_mut()?;
        let ahead = self
            .ahead
            .take()
            .filter(|ahead| ahead.step == step && !view.rewritten());
        let (done, read_ahead, units_ahead) = match ahead {
            Some(ahead) => (ahead.done, ahead.read, ahead.units),
            None => {
                let grads = view.device_grads()?;
                let module = self.module.as_ref().expect("every action leaves a module");
                // The kernel measures the step where the bound reads whole tensors only.
                let measure = step.measure == UpdateMeasure::Tensors;
                (
                    fused.step_device(module, &grads, step.lr, measure)?,
                    None,
                    None,
                )
            }
        };
        self.device_pending = Some(done.pending);
        let units = match step.measure {
            UpdateMeasure::Nothing => {
                self.module = Some(done.module);
                self.commit_pending();
                return Some(Vec::new());
            }
            UpdateMeasure::Tensors => None,
            UpdateMeasure::Units(layout) => Some(layout),
        };
        let old = self.take_module();
        // The step's measurement came back with the gradients' statistics where it was queued
        // ahead: the unit norms, or the kernel's pair statistics.
        if let (Some((measuring, queued)), Some(read)) = (units_ahead, &read_ahead) {
            let norms = queued.decode(read);
            // (Read again, in one read, should they not have come back.)
            self.host_reads += u32::from(norms.is_none());
            let updates = measuring.finish(norms);
            return Some(self.keep(updates, old, done.module));
        }
        // Otherwise the kernel's pair statistics are read now, where it measured.
        let (pairs, reads) = match (units, read_ahead, done.statistics) {
            (None, Some(pairs), _) => (Some(pairs), 0),
            (None, None, Some(statistics)) => {
                let pairs = statistics
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap_or_default();
                (Some(pairs), 1)
            }
            _ => (None, 0),
        };
        let measured =
            pairs.and_then(|p| Updates::from_pair_statistics(&old, &p, engine, step.recognize));
        if let Some(updates) = measured {
            self.host_reads += reads;
            return Some(self.keep(updates, old, done.module));
        }
        Some(self.measure_update(old, done.module, engine, units, step.recognize))
    }

    /// Keeps the step's measurement, the module before it and the optimizer for the bound's
    /// decision; the module is `stepped` until then.
    fn keep(&mut self, updates: Updates, old: M, stepped: M) -> Vec<UpdateNorms> {
        let norms = updates.norms.clone();
        self.before = Some((updates, old, self.optimizer.clone()));
        self.module = Some(stepped);
        norms
    }

    /// Measures the step from `old` to `stepped` and keeps both (and the optimizer) for the
    /// bound's decision; the module is `stepped` until then.
    fn measure_update(
        &mut self,
        old: M,
        stepped: M,
        engine: Engine,
        units: Option<UnitLayout>,
        recognize: bool,
    ) -> Vec<UpdateNorms> {
        let updates = Updates::measure(&old, &stepped, engine, units, recognize);
        let device_reads = if units.is_some() && recognize { 2 } else { 1 };
        self.host_reads += u32::from(matches!(engine, Engine::Device(_))) * device_reads;
        self.keep(updates, old, stepped)
    }
}

impl<M: Module + Clone> StepActions for BurnStep<'_, M> {
    type Error = GuardError;
    const WEIGHT_LAYOUT: UnitLayout = UnitLayout::InputFirst;

    fn gradients(&mut self) -> &mut dyn Gradients {
        self.view
            .as_mut()
            .expect("the gradients are collected before the guard runs")
    }

    fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    fn step_optimizer(&mut self, step: OptimizerStep) -> Result<Vec<UpdateNorms>, GuardError> {
        let mut view = self
            .view
            .take()
            .expect("one optimizer step per guarded step");
        let engine = view.engine();
        self.host_reads += view.host_reads();
        if let Some(norms) = self.step_fused(&mut view, step) {
            return Ok(norms);
        }
        if let Some(norms) = self.step_fused_device(&view, step, engine) {
            return Ok(norms);
        }
        let module = self.take_module();
        let grads = view.into_gradients_params(&module);
        // With one rate for all parameters the multiplier scales it; per-group rates are passed
        // through untouched while the multiplier is 1.
        let caller_lr = self.lr.take().expect("one optimizer step per guarded step");
        let lr = if step.lr_multiplier == 1.0 {
            caller_lr
        } else {
            step.lr.into()
        };
        let units = match step.measure {
            UpdateMeasure::Nothing => {
                self.module = Some(self.optimizer.step(lr, module, grads));
                return Ok(Vec::new());
            }
            UpdateMeasure::Tensors => None,
            UpdateMeasure::Units(layout) => Some(layout),
        };
        let (old, old_optimizer) = (module.clone(), self.optimizer.clone());
        let stepped = self.optimizer.step(lr, module, grads);
        let norms = self.measure_update(old, stepped, engine, units, step.recognize);
        if let Some((_, _, kept)) = self.before.as_mut() {
            *kept = old_optimizer;
        }
        Ok(norms)
    }

    fn undo_step(&mut self) -> Result<(), GuardError> {
        self.device_pending = None;
        if let (Some(pending), Some(fused)) = (self.pending.take(), self.fused.as_deref_mut()) {
            fused.discard(pending);
            return Ok(());
        }
        let (_, old, old_optimizer) = self.before.take().expect("the step kept its before");
        *self.optimizer = old_optimizer;
        self.module = Some(old);
        Ok(())
    }

    fn scale_step(&mut self, check: &UpdateCheck) -> Result<(), GuardError> {
        if let (Some(pending), Some(fused)) = (self.pending.as_mut(), self.fused.as_deref_mut()) {
            let module = self.module.as_ref().expect("every action leaves a module");
            fused.scale(module, pending, check);
            return Ok(());
        }
        let (updates, _, _) = self.before.take().expect("the step kept its before");
        let stepped = self.take_module();
        self.module = Some(updates.scale(stepped, &check.scales, &check.unit_scales));
        Ok(())
    }

    fn take_snapshot(&mut self, step: u64) -> Result<(), GuardError> {
        self.commit_pending();
        *self.snapshot = Some(Snapshot {
            step,
            module: self.module.clone().expect("every action leaves a module"),
            optimizer: self.optimizer.clone(),
            fused: self.fused.as_deref().cloned(),
        });
        Ok(())
    }

    fn roll_back(&mut self) -> Result<(), GuardError> {
        let snapshot = self
            .snapshot
            .clone()
            .expect("the guard checked for a snapshot");
        self.device_pending = None;
        *self.optimizer = snapshot.optimizer;
        if let (Some(fused), Some(kept)) = (self.fused.as_deref_mut(), snapshot.fused) {
            *fused = kept;
        }
        self.module = Some(snapshot.module);
        Ok(())
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
    /// The fused optimizer ([`GuardedOptimizer::fused`]); `optimizer` is then Burn's optimizer of
    /// the same rule, for the steps the fused one cannot take.
    fused: Option<FusedOptimizer>,
    core: GuardCore<M>,
}

impl<M> std::fmt::Debug for GuardedOptimizer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedOptimizer")
            .field("guard", &self.core.guard)
            .field("snapshot_step", &self.core.snapshot_step())
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
    /// one for the update bound's norms (none where the fused step and its measurement were
    /// queued ahead and read with the statistics), and one more only to locate a NaN or inf; on
    /// the host path none.
    pub host_reads: u32,
}

impl<M: Module + Clone> GuardedOptimizer<M> {
    /// Wraps any Burn optimizer (`SgdConfig::new().init()`, `AdamConfig::new().init()`, …).
    pub fn new(optimizer: impl Into<ModuleOptimizer>, guard: Guard) -> Self {
        GuardedOptimizer {
            optimizer: optimizer.into(),
            fused: None,
            core: GuardCore::new(guard),
        }
    }

    /// Guards a [`FusedOptimizer`] of `rule` — Burn's SGD, Adam or AdamW, step for step — whose
    /// update bound is measured in the pass that computes the update: no copy of the model or
    /// of the optimizer state is kept for the bound, and a step where nothing fires gives the
    /// same bits as Burn's optimizer. With f32 parameters the fused step runs on the CPU
    /// backend (host kernels) and on CubeCL devices (one queued kernel that measures its own
    /// step; within 1e-6 of Burn's optimizer on wgpu); elsewhere Burn's optimizer of the same
    /// rule steps, guarded as [`GuardedOptimizer::new`] guards any optimizer. A run stays on one
    /// device: the two keep separate state.
    pub fn fused(rule: FusedRule, guard: Guard) -> Self {
        GuardedOptimizer {
            optimizer: rule.to_burn(),
            fused: Some(FusedOptimizer::new(rule)),
            core: GuardCore::new(guard),
        }
    }

    /// The fused optimizer, when built by [`GuardedOptimizer::fused`] (e.g. to save its record).
    pub fn fused_optimizer(&self) -> Option<&FusedOptimizer> {
        self.fused.as_ref()
    }

    /// Replaces the fused optimizer (e.g. one loaded from a checkpoint); no effect on an
    /// optimizer built by [`GuardedOptimizer::new`].
    pub fn set_fused_optimizer(&mut self, fused: FusedOptimizer) {
        if self.fused.is_some() {
            self.fused = Some(fused);
        }
    }

    /// The optimizer's state in Burn's optimizer record format, for a checkpoint: the fused
    /// optimizer's once it has stepped, else the wrapped Burn optimizer's.
    pub fn optimizer_bytes(&self) -> Result<Bytes, RecordError> {
        match &self.fused {
            Some(fused) if fused.has_state() => fused.into_bytes(),
            _ => self.optimizer.into_bytes(),
        }
    }

    /// Loads a state written by [`GuardedOptimizer::optimizer_bytes`] (or by Burn's optimizer
    /// of the same rule): into the wrapped optimizer, and into the fused one too (the format is
    /// the same), so whichever steps next continues from it.
    /// On an error both stay as they were.
    pub fn load_optimizer_bytes(&mut self, bytes: Bytes) -> Result<(), RecordError> {
        let fused = match &self.fused {
            Some(fused) => Some(FusedOptimizer::new(fused.rule()).from_bytes(bytes.clone())?),
            None => None,
        };
        self.optimizer = self.optimizer.clone().from_bytes(bytes)?;
        if fused.is_some() {
            self.fused = fused;
        }
        Ok(())
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

    /// The wrapped Burn optimizer. Under [`GuardedOptimizer::fused`] it holds no state on the
    /// CPU backend (the fused optimizer does): save a checkpoint with
    /// [`GuardedOptimizer::optimizer_bytes`], which is right for both.
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optimizer
    }

    /// Replaces the wrapped Burn optimizer (e.g. one loaded from a checkpoint; under
    /// [`GuardedOptimizer::fused`], load with [`GuardedOptimizer::load_optimizer_bytes`]).
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
        self.core
            .set_snapshot(step, module, &self.optimizer, self.fused.as_ref());
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
        self.core.step(
            &mut self.optimizer,
            self.fused.as_mut(),
            lr.into(),
            module,
            grads,
            loss,
        )
    }
}
