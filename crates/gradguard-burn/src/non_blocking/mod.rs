//! The non-blocking guarded step: the step's decision is made on the device from device values,
//! and its report is read one step late — no host read before the optimizer is queued.
//!
//! [`NonBlockingOptimizer`] queues, in order and without reading anything: the block statistics
//! of every gradient (the fused kernel on a CubeCL device, Burn's tensor ops elsewhere), the
//! decision from them and the loss (`decision`: skip on a non-finite value or loss, or on a
//! skip rule; the clips' factor; one kernel on a CubeCL device), and the fused rule's step over
//! every parameter, which takes that factor and keeps weights, moments and step count where the
//! step is skipped (the fused optimizer's step kernel on a CubeCL device with f32 parameters,
//! `kernel_step`; Burn's tensor ops elsewhere, `device_step`). Then it reads the *previous*
//! step's statistics and loss, whose copy was queued behind that step's kernels, and runs the
//! guard's own judgement on them (`replay`) for the report and the guard's counters — the same
//! decision the device took from the same numbers. The design is OLMo-core's skip step (a 0/1 step factor on the device) for the rules
//! whose decision is a function of the step's own statistics ([`Guard::device_plan`]).

mod decision;
mod device_step;
#[cfg(feature = "cube")]
mod kernel_step;
mod read;
mod replay;

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::store::RecordError;
use burn::tensor::{Bytes, Tensor};
use gradguard::{DevicePlan, Guard, GuardError, StepReport};

use crate::collect::{Collector, Entry};
use crate::fused::{FusedOptimizer, FusedRule, Moments, map_values};
use crate::on_device::DeviceGradients;
use crate::padded::f32_of;
use crate::step::Stopped;
use decision::decide;
use device_step::{Corrections, DeviceMoments, Picked, StepInputs, Views};
use read::PendingRead;
use replay::Replay;

/// A step queued on the device whose statistics are not read yet.
struct PendingStep {
    entries: Vec<Entry>,
    /// Its gradients, kept to locate a non-finite value when the statistics count one.
    grads: DeviceGradients,
    read: Option<PendingRead>,
    /// Values of the read that are block statistics (the loss follows when there is one).
    stats_len: usize,
    has_loss: bool,
    /// The device's decision (`[1]`: 1 applied, 0 skipped), for the step counts of the
    /// parameters it stepped.
    accept: Option<Tensor<1>>,
}

/// One non-blocking step's result.
#[derive(Debug)]
pub struct NonBlockingStep<M> {
    /// The module after this step (applied or skipped, as the device decided).
    pub module: M,
    /// The report of the **previous** step (`None` on the first): the guard's judgement of its
    /// statistics, read after this step's optimizer was queued. Its decision is the one the
    /// device took.
    pub report: Option<StepReport>,
    /// Host reads before this step's optimizer was queued: none.
    pub reads_before_optimizer: u32,
    /// Host reads in this call: the previous step's statistics and loss (one), and one more when
    /// they held a non-finite value, to locate it.
    pub host_reads: u32,
}

/// A fused SGD, Adam or AdamW ([`FusedRule`]) under a guard whose every decision the device can
/// make: it never waits for the device before queuing a step. The report of step t comes with
/// step t + 1 ([`NonBlockingStep::report`]; the last with [`NonBlockingOptimizer::finish`]).
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::optim::GradientsParams;
/// use burn::tensor::{Device, Distribution, Tensor};
/// use gradguard::rules::{Chain, ClipByGlobalNorm};
/// use gradguard::{Guard, GuardConfig};
/// use gradguard_burn::{FusedRule, NonBlockingOptimizer};
///
/// let device = Device::flex().autodiff();
/// let mut model = LinearConfig::new(4, 1).init(&device);
/// let config = GuardConfig { update_bound: None, loss_spike: None, ..GuardConfig::default() };
/// let clip = Chain::new(vec![Box::new(ClipByGlobalNorm::new(1.0)?)])?;
/// let mut optim = NonBlockingOptimizer::new(FusedRule::adamw(0.1), Guard::new(config, clip)?)?;
/// for _ in 0..3 {
///     let x = Tensor::<2>::random([8, 4], Distribution::Default, &device);
///     let loss = model.forward(x).square().mean();
///     let grads = GradientsParams::from_grads(loss.backward(), &model);
///     let step = optim.step(1e-3, model, grads, Some(loss)).expect("the guard did not stop");
///     assert_eq!(step.reads_before_optimizer, 0);
///     model = step.module; // step.report: the previous step's
/// }
/// let last = optim.finish()?.expect("three steps were taken");
/// assert_eq!(last.step, 2);
/// # Ok::<(), gradguard::GuardError>(())
/// ```
///
/// What it gives up against [`crate::GuardedOptimizer`]: the guard's policy must be one the
/// device can follow ([`Guard::device_plan`]: global-norm clips and skips with p = 1, 2 or ∞,
/// non-finite values skipped — no update bound, spike detector, adaptive clip or loss scaler);
/// a stop (a non-finite value under `NonFinitePolicy::Error`, too many bad steps) and a rate
/// back-off take effect a step late — the step that stops was itself skipped on the device, and
/// the [`Stopped`] module is the one after the next step; the first non-finite value is named a
/// step late too, and to name it the step's gradients are kept until then (memory for one more
/// set of gradients); it runs on one device (a parameter marked for Burn's distributed gradient
/// sync stops the step with `InvalidConfig`). On the CPU backend there is nothing to wait for
/// and the device-style step costs more than [`crate::GuardedOptimizer::fused`]'s host path
/// (docs/measurements/2026-12-07-non-blocking-step.md). The weights are those of
/// [`crate::GuardedOptimizer::fused`] under the same guard, step for step, as long as no
/// back-off is pending — within f32 rounding (tested to 2·10⁻⁶): the device computes the clip
/// factor in f32 where the host computes it in f64.
pub struct NonBlockingOptimizer {
    guard: Guard,
    plan: DevicePlan,
    rule: FusedRule,
    moments: HashMap<ParamId, DeviceMoments>,
    /// States loaded from a record, uploaded at each parameter's next step.
    loaded: HashMap<ParamId, Moments>,
    /// Per parameter, the steps it took as far as the reports read say (its device count is
    /// this plus the accepted steps not read yet).
    known: HashMap<ParamId, usize>,
    pending: Option<PendingStep>,
}

impl std::fmt::Debug for NonBlockingOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonBlockingOptimizer")
            .field("rule", &self.rule)
            .field("plan", &self.plan)
            .field("parameters", &self.moments.len())
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl NonBlockingOptimizer {
    /// `rule` under `guard`, or [`GuardError::InvalidConfig`] naming the part of the guard's
    /// policy that needs the host ([`Guard::device_plan`]).
    pub fn new(rule: FusedRule, guard: Guard) -> Result<Self, GuardError> {
        Ok(NonBlockingOptimizer {
            plan: guard.device_plan()?,
            guard,
            rule,
            moments: HashMap::new(),
            loaded: HashMap::new(),
            known: HashMap::new(),
            pending: None,
        })
    }

    /// The guard (its counters count the steps whose reports were read).
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The update rule.
    pub fn rule(&self) -> FusedRule {
        self.rule
    }

    /// Guards and queues one step at `lr · lr_multiplier` (the multiplier as of the last report
    /// read), then reads the previous step's statistics and judges them. An error is the
    /// previous step's stop, returned with the module after this step.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
        loss: Option<Tensor<1>>,
    ) -> Result<NonBlockingStep<M>, Box<Stopped<M>>> {
        if let Some(path) = distributed_parameter(&module) {
            let error = GuardError::InvalidConfig(format!(
                "parameter '{path}' is distributed: the non-blocking step runs on one device \
                 (guard after the gradient sync with GuardedOptimizer)"
            ));
            return Err(Box::new(Stopped { module, error }));
        }
        let mut collector = Collector::new(&mut grads, false).keeping();
        module.visit(&mut collector);
        let entries = collector.entries;
        let flat = DeviceGradients::new(collector.flat_grads, Vec::new());
        let device = flat
            .tensors()
            .first()
            .map(Tensor::device)
            .or_else(|| loss.as_ref().map(Tensor::device))
            .or_else(|| module.devices().into_iter().next());
        let loss = loss.map(|l| f32_of(l.inner().reshape([1])));
        let stats = flat.queued_stats();
        let previous_accept = self.pending.as_ref().and_then(|p| {
            let ids: HashSet<ParamId> = p.entries.iter().map(|e| e.id).collect();
            p.accept.clone().map(|a| (a, ids))
        });
        let mut accept = None;
        let module = match &device {
            Some(device) => {
                let decision = decide(&self.plan, stats.clone(), loss.clone(), device);
                let skip = decision.accept.clone().lower_elem(0.5);
                let inputs = StepInputs {
                    rule: self.rule,
                    lr: lr * self.guard.lr_multiplier(),
                    accept: &decision.accept,
                    skip: &skip,
                    factor: &decision.factor,
                    control: decision.control.as_ref(),
                };
                #[cfg(feature = "cube")]
                let by_kernel = kernel_step::step_by_kernel(
                    &module,
                    &entries,
                    &flat,
                    kernel_step::KernelState {
                        moments: &mut self.moments,
                        loaded: &mut self.loaded,
                        known: &self.known,
                        previous: previous_accept.as_ref(),
                    },
                    inputs,
                );
                #[cfg(not(feature = "cube"))]
                let by_kernel: Option<M> = None;
                let module = match by_kernel {
                    Some(stepped) => stepped,
                    None => module.map(&mut Stepper {
                        grads: &mut grads,
                        names: entries.iter().map(|e| (e.id, e.name.clone())).collect(),
                        moments: &mut self.moments,
                        loaded: &mut self.loaded,
                        known: &self.known,
                        previous: previous_accept.as_ref(),
                        picked: HashMap::new(),
                        views: Views::default(),
                        inputs,
                    }),
                };
                accept = Some(decision.accept);
                module
            }
            None => module,
        };
        let reads_before_optimizer = flat.host_reads.get();
        let stats_len = stats.as_ref().map_or(0, |s| s.dims()[0]);
        let has_loss = loss.is_some();
        let read = PendingRead::start(stats.into_iter().chain(loss).collect());
        let previous = self.pending.replace(PendingStep {
            entries,
            grads: flat,
            read,
            stats_len,
            has_loss,
            accept,
        });
        let Some(previous) = previous else {
            return Ok(NonBlockingStep {
                module,
                report: None,
                reads_before_optimizer,
                host_reads: 0,
            });
        };
        match self.judge(previous) {
            Ok((report, host_reads)) => Ok(NonBlockingStep {
                module,
                report: Some(report),
                reads_before_optimizer,
                host_reads,
            }),
            Err(error) => Err(Box::new(Stopped { module, error })),
        }
    }

    /// Reads and judges the last step queued: its report (`None` when every report was read).
    /// Call it after the last step.
    pub fn finish(&mut self) -> Result<Option<StepReport>, GuardError> {
        match self.pending.take() {
            Some(pending) => self.judge(pending).map(|(report, _)| Some(report)),
            None => Ok(None),
        }
    }

    /// The guard's judgement of a queued step from its statistics, read now, and the host reads
    /// it took.
    fn judge(&mut self, step: PendingStep) -> Result<(StepReport, u32), GuardError> {
        let PendingStep {
            entries,
            mut grads,
            read,
            stats_len,
            has_loss,
            ..
        } = step;
        let values = read
            .map(PendingRead::finish)
            .transpose()?
            .unwrap_or_default();
        let before = grads.host_reads.get();
        grads.set_read_stats(&values[..stats_len.min(values.len())]);
        let loss = has_loss
            .then(|| values.get(stats_len).map(|&l| f64::from(l)))
            .flatten();
        let reads = u32::from(!values.is_empty()) + grads.host_reads.get() - before;
        let mut replay = Replay {
            entries: &entries,
            grads: &grads,
        };
        let report = self.guard.step(&mut replay, loss)?;
        if report.decision == gradguard::Decision::Apply {
            for e in &entries {
                *self.known.entry(e.id).or_default() += 1;
            }
        }
        Ok((report, reads))
    }

    /// The optimizer's state in Burn's optimizer record format (what
    /// [`crate::FusedOptimizer::into_bytes`] writes; read from the device). Call
    /// [`NonBlockingOptimizer::finish`] first for a state every report agrees with.
    pub fn optimizer_bytes(&self) -> Result<Bytes, RecordError> {
        // The step queued last, not read yet, counts for the parameters it stepped if the
        // device applied it (one small read).
        let unread = self.pending.as_ref().and_then(|p| {
            let applied = p.accept.clone()?.into_scalar::<f32>() > 0.5;
            applied.then(|| p.entries.iter().map(|e| e.id).collect::<HashSet<_>>())
        });
        let mut states = self.loaded.clone();
        states.extend(self.moments.iter().map(|(id, m)| {
            let time = self.known.get(id).copied().unwrap_or(0)
                + usize::from(unread.as_ref().is_some_and(|ids| ids.contains(id)));
            (*id, m.to_host(time))
        }));
        FusedOptimizer::with_states(self.rule, states).into_bytes()
    }

    /// Loads a state written by [`NonBlockingOptimizer::optimizer_bytes`],
    /// [`crate::FusedOptimizer::into_bytes`] or Burn's optimizer of the same rule; it moves to
    /// each parameter's device at its next step.
    pub fn load_optimizer_bytes(&mut self, bytes: Bytes) -> Result<(), RecordError> {
        self.loaded = FusedOptimizer::new(self.rule)
            .from_bytes(bytes)?
            .into_states();
        self.known = self.loaded.iter().map(|(id, s)| (*id, s.time)).collect();
        self.moments.clear();
        Ok(())
    }
}

/// Steps every parameter that has a gradient on its device.
struct Stepper<'a> {
    /// The gradients, in their parameters' shapes.
    grads: &'a mut GradientsParams,
    /// Path names by parameter.
    names: HashMap<ParamId, String>,
    moments: &'a mut HashMap<ParamId, DeviceMoments>,
    loaded: &'a mut HashMap<ParamId, Moments>,
    known: &'a HashMap<ParamId, usize>,
    /// The previous step's decision and the parameters it stepped (its report is not read).
    previous: Option<&'a (Tensor<1>, HashSet<ParamId>)>,
    /// Adam's scalars per (known count, stepped by the previous step), selected once per step
    /// for every parameter that shares them.
    picked: HashMap<(usize, bool), Option<(Picked, usize)>>,
    views: Views,
    inputs: StepInputs<'a>,
}

impl ModuleMapper for Stepper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let g = g.inner();
        let path = self.names.get(&param.id).cloned().unwrap_or_default();
        let id = param.id;
        let known = self.known.get(&id).copied().unwrap_or(0);
        let previous = self
            .previous
            .filter(|(_, ids)| ids.contains(&id))
            .map(|(accept, _)| accept);
        let (moments, loaded, inputs) = (&mut *self.moments, &mut *self.loaded, self.inputs);
        let classes = self.picked.len();
        let picked = self
            .picked
            .entry((known, previous.is_some()))
            .or_insert_with(|| {
                let table = Corrections::new(inputs.rule, known, &g.device())?;
                // The steps not read yet: this one's and, if it stepped this parameter, the last.
                let offset = match previous {
                    Some(last) => inputs.accept.clone() + last.clone(),
                    None => inputs.accept.clone(),
                };
                Some((table.pick(&offset), classes))
            });
        let views = &mut self.views;
        param.map(|w| {
            map_values(w, |w| {
                let device = w.device();
                let state = moments.remove(&id).or_else(|| {
                    loaded
                        .remove(&id)
                        .filter(|s| !s.m.is_empty() && s.dims == w.dims())
                        .map(|s| DeviceMoments::upload(&s, w.dims(), &device))
                });
                let picked = picked.as_ref().map(|(p, class)| (p, *class));
                let (after, next) = inputs.step(w, g, state.as_ref(), picked, views, &path);
                moments.insert(id, next);
                after
            })
        })
    }
}

/// The module path of the first parameter marked for Burn's distributed gradient sync, if any.
fn distributed_parameter<M: Module>(module: &M) -> Option<String> {
    struct Find {
        path: Vec<String>,
        found: Option<String>,
    }
    impl ModuleVisitor for Find {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none() && param.val().is_distributed() {
                self.found = Some(self.path.join("."));
            }
        }
    }
    let mut find = Find {
        path: Vec::new(),
        found: None,
    };
    module.visit(&mut find);
    find.found
}
