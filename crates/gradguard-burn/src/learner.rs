//! The guard inside burn-train's `Learner`, through `TrainStep::optimize`.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use gradguard::{Guard, GuardCounters, GuardError, StepReport};

use crate::step::GuardCore;

type ReportHook = Box<dyn FnMut(&StepReport) + Send>;

struct Shared<M> {
    core: GuardCore<M>,
    loss: Option<f64>,
    error: Option<GuardError>,
    hook: Option<ReportHook>,
}

/// A guard shared between a model's `TrainStep::step` (which sees the loss) and its
/// `TrainStep::optimize` (which sees the gradients and the optimizer). Clone it into the model as
/// a `#[module(skip)]` field:
///
/// ```ignore
/// #[derive(Module, Debug)]
/// struct Model { layers: Vec<Linear>, #[module(skip)] guard: LearnerGuard<Model> }
///
/// impl TrainStep for Model {
///     fn step(&self, batch: Batch) -> TrainOutput<RegressionOutput> {
///         let out = self.forward_regression(batch);
///         self.guard.record_loss(out.loss.clone());
///         TrainOutput::new(self, out.loss.backward(), out)
///     }
///     fn optimize(self, optim: &mut ModuleOptimizer, lr: ModuleLearningRate,
///                 grads: GradientsParams) -> Self {
///         self.guard.clone().optimize(self, optim, lr, grads)
///     }
/// }
/// ```
/// (`examples/learner.rs` is the complete program; a test runs it.)
///
/// The Learner cannot be told to stop from `optimize`, so a stop (a `GuardError`) skips the step,
/// is kept for [`LearnerGuard::take_error`], and every later step is skipped too, leaving the
/// weights as they were when the guard stopped. Batches to skip after a rollback are skipped
/// steps here: the Learner still loads them, but they do not move the weights.
pub struct LearnerGuard<M> {
    shared: Arc<Mutex<Shared<M>>>,
}

impl<M> Clone for LearnerGuard<M> {
    fn clone(&self) -> Self {
        LearnerGuard {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M> std::fmt::Debug for LearnerGuard<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LearnerGuard")
    }
}

impl<M: Module + Clone> LearnerGuard<M> {
    /// Shares `guard` between the model's step and optimize hooks.
    pub fn new(guard: Guard) -> Self {
        LearnerGuard {
            shared: Arc::new(Mutex::new(Shared {
                core: GuardCore::new(guard),
                loss: None,
                error: None,
                hook: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<M>> {
        // A panic elsewhere while holding the lock leaves plain data; keep going with it.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `hook` with every step's report (telemetry sinks, logging).
    pub fn on_report(&self, hook: impl FnMut(&StepReport) + Send + 'static) {
        self.lock().hook = Some(Box::new(hook));
    }

    /// `loss` times the guard's loss scale (a guard built with
    /// [`Guard::with_loss_scaler`]; without one, `loss` as it is): call it in `TrainStep::step`
    /// and backpropagate — and [`LearnerGuard::record_loss`] — the scaled loss. The guard
    /// divides the gradients and the loss by the scale before it judges them.
    pub fn scale_loss(&self, loss: Tensor<1>) -> Tensor<1> {
        let scale = self.lock().core.guard.loss_scale();
        if scale == 1.0 {
            loss
        } else {
            loss.mul_scalar(scale)
        }
    }

    /// Records this step's loss (call from `TrainStep::step`; one host read of one value).
    pub fn record_loss(&self, loss: Tensor<1>) {
        let value = f64::from(loss.inner().into_scalar::<f32>());
        self.lock().loss = Some(value);
    }

    /// The guard's counters.
    pub fn counters(&self) -> GuardCounters {
        self.lock().core.guard.counters().clone()
    }

    /// The error that stopped the guard, if any (taking it does not resume training).
    pub fn take_error(&self) -> Option<GuardError> {
        self.lock().error.take()
    }

    /// Whether the guard has stopped.
    pub fn stopped(&self) -> bool {
        self.lock().error.is_some()
    }

    /// The body of `TrainStep::optimize`: guard, then step `optim` — or not.
    pub fn optimize(
        &self,
        module: M,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> M {
        let mut shared = self.lock();
        if shared.error.is_some() || shared.core.skip_batch() {
            return module;
        }
        let loss = shared.loss.take();
        let loss_tensor = loss.map(|l| {
            let device = module.devices().into_iter().next().unwrap_or_default();
            Tensor::<1>::from_floats([l as f32], &device)
        });
        match shared
            .core
            .step(optim, None, lr, module, grads, loss_tensor)
        {
            Ok(step) => {
                // Call the hook without the lock, so it may use this guard (e.g. `counters`).
                let mut hook = shared.hook.take();
                drop(shared);
                if let Some(h) = hook.as_mut() {
                    h(&step.report);
                }
                let mut shared = self.lock();
                if shared.hook.is_none() {
                    shared.hook = hook;
                }
                step.module
            }
            Err(stopped) => {
                let stopped = *stopped;
                shared.error = Some(stopped.error);
                stopped.module
            }
        }
    }
}
