//! One run as a value, and the steps it is made of: start (fresh, resumed from a checkpoint, or
//! after a learning-rate range test), one batch, a checkpoint, the summary.
//!
//! The network is not kept inside [`Run`]: Burn's optimizer step takes the module by value and
//! gives it back, and a copy kept here would make every in-place update copy its buffer. The
//! driver ([`crate::train`]) holds it and lends it to each step.

use std::path::Path;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use gradguard::{Decision, NonFinitePolicy};
use gradguard_burn::GuardedOptimizer;
use gradguard_report::{
    JsonlSink, LogitPoint, METRICS_FILE, MetricsRecord, RunSummary, SUMMARY_FILE, Sink, Sinks,
    TensorBoardSink, TimeGradients, write_atomic,
};

use crate::checkpoint::{self, Checkpoint, CheckpointHeader};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::faults::{self, Fault};
use crate::lr_find::range_test;
use crate::models::Net;
use crate::objective::{constrain, evaluate, l2_penalty, log_partition, loss_of, z_loss};
use crate::plan::{Plan, build_net};
use crate::progress::Progress;
use crate::run_dir::{TENSORBOARD_DIR, io_err, truncate_metrics};
use crate::tasks::{HostBatch, TaskData};
use crate::through_time::hidden_gradient_norms;

/// A language model's logit telemetry of one step, read from the device.
struct StepLogits {
    /// Each layer's largest attention logit.
    attention: Vec<f64>,
    /// The batch's mean `log Z`.
    log_z_mean: f64,
    /// The batch's largest `log Z`.
    log_z_max: f64,
}

/// The loss's value and, for a language model, its logit telemetry, in one read from the device.
fn read_loss(
    loss: &Tensor<1>,
    attention: Option<Tensor<1>>,
    log_z: Option<Tensor<1>>,
) -> (f64, Option<StepLogits>) {
    let (Some(attention), Some(log_z)) = (attention, log_z) else {
        return (f64::from(loss.clone().into_scalar::<f32>()), None);
    };
    let layers = attention.dims()[0];
    let log_z = log_z.detach();
    let parts = vec![
        loss.clone().detach(),
        attention,
        log_z.clone().mean(),
        log_z.max(),
    ];
    let values: Vec<f64> = Tensor::cat(parts, 0)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect();
    if values.len() != layers + 3 {
        return (f64::NAN, None);
    }
    let logits = StepLogits {
        attention: values[1..=layers].to_vec(),
        log_z_mean: values[layers + 1],
        log_z_max: values[layers + 2],
    };
    (values[0], Some(logits))
}

/// Non-finite losses in a row after which an unguarded run is over (its weights are NaN).
const DEAD_AFTER: usize = 5;

/// Whether a run goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Take the next batch.
    Continue,
    /// The guard stopped the run, or an unguarded run's weights are dead.
    Over,
}

/// A run in progress: what it trains on, its optimizer and guard, what it accumulated, its sinks.
pub(crate) struct Run<'a> {
    config: &'a RunConfig,
    plan: &'a Plan,
    data: &'a TaskData,
    out: Option<&'a Path>,
    faults: &'a [Fault],
    device: Device,
    started: Instant,
    optim: GuardedOptimizer<Net>,
    progress: Progress,
    sinks: Sinks,
    test: HostBatch,
}

impl<'a> Run<'a> {
    /// Builds the network and the guarded optimizer, resumes from `out`'s last checkpoint (or runs
    /// the range test the plan asks for), opens the sinks and measures the held-out loss before
    /// the first step.
    pub fn start(
        config: &'a RunConfig,
        plan: &'a Plan,
        data: &'a TaskData,
        out: Option<&'a Path>,
        faults: &'a [Fault],
    ) -> Result<(Self, Net), LabError> {
        let device = Device::flex().autodiff();
        let started = Instant::now();
        let net = build_net(plan, data, config.seed, &device)?;
        // Burn's optimizer of the plan, step for step, with the update bound measured in its
        // update pass.
        let optim = GuardedOptimizer::fused(plan.optimizer.fused_rule(), plan.build_guard()?);
        let mut run = Run {
            config,
            plan,
            data,
            out,
            faults,
            device,
            started,
            optim,
            progress: Progress::new(plan.lr),
            sinks: Sinks::new(),
            test: data.test_batch(config.seed),
        };
        let (net, resumed) = run.resume(net)?;
        let net = if !resumed && plan.lr_find {
            run.find_rate()?
        } else {
            net
        };
        run.open_sinks()?;
        if run.progress.next_batch == 0 {
            run.progress.initial_eval = evaluate(&net, &run.test, &run.device, plan.precision).loss;
            run.measure_through_time(&net, 0);
        }
        Ok((run, net))
    }

    /// Loads the last good checkpoint of the run directory, if there is one: the network, the
    /// optimizer, the guard (and its snapshot) and the progress. Returns the network (`net`
    /// itself when there is nothing to resume) and whether it resumed.
    fn resume(&mut self, net: Net) -> Result<(Net, bool), LabError> {
        let Some(dir) = self.out else {
            return Ok((net, false));
        };
        let (latest, warnings) = checkpoint::load_latest(dir);
        for warning in &warnings {
            tracing::warn!("{warning}; using the previous checkpoint");
        }
        let Some((ckpt, path)) = latest else {
            return Ok((net, false));
        };
        let h = &ckpt.header;
        if &h.config != self.config {
            return Err(LabError::Checkpoint {
                path: path.display().to_string(),
                reason: "written by a run with another configuration".into(),
            });
        }
        let net = ckpt.load_model(net, &path)?;
        ckpt.load_optimizer(&mut self.optim, &path)?;
        self.optim.guard_mut().restore(&h.guard)?;
        if h.is_snapshot
            && let Some(step) = h.guard.counters.snapshot_step
        {
            self.optim.set_snapshot(step, net.clone());
        }
        self.progress = Progress {
            next_batch: h.next_batch,
            losses: h.losses.clone(),
            lr: h.lr,
            largest_stable_lr: h.largest_stable_lr,
            wall_before: h.wall_time_s,
            stopped: h.stopped.clone(),
            initial_eval: h.initial_loss,
            time_gradients: h.time_gradients.clone(),
            logits: h.logits.clone(),
        };
        Ok((net, true))
    }

    /// The learning-rate range test on a throwaway copy of the network: the run trains at a tenth
    /// of the largest stable rate (at most the plan's), from a fresh network.
    fn find_rate(&mut self) -> Result<Net, LabError> {
        let (plan, config) = (self.plan, self.config);
        let probe = build_net(plan, self.data, config.seed, &self.device)?;
        let range = range_test(
            probe,
            plan.optimizer(),
            self.data,
            config.batch,
            config.seed,
            &self.device,
            plan.precision,
        );
        self.progress.largest_stable_lr = Some(range.largest_stable);
        self.progress.lr = plan.lr.min(range.largest_stable / 10.0);
        build_net(plan, self.data, config.seed, &self.device)
    }

    /// The metrics log (cut back to the checkpoint's position) and the TensorBoard events.
    fn open_sinks(&mut self) -> Result<(), LabError> {
        let Some(dir) = self.out else {
            return Ok(());
        };
        let metrics = dir.join(METRICS_FILE);
        truncate_metrics(&metrics, self.progress.losses.len() as u64)?;
        let tb = dir.join(TENSORBOARD_DIR);
        std::fs::create_dir_all(&tb).map_err(|e| io_err(&tb, e))?;
        self.sinks = Sinks::new()
            .with(JsonlSink::append(&metrics)?)
            .with(TensorBoardSink::create(&tb)?);
        Ok(())
    }

    /// Whether the run has taken all its batches or was stopped.
    pub fn is_over(&self) -> bool {
        self.progress.next_batch >= self.config.steps || self.progress.stopped.is_some()
    }

    /// The batch the run goes on from.
    pub fn next_batch(&self) -> u64 {
        self.progress.next_batch
    }

    /// Takes one batch: the loss (with the plan's penalty and any planned faults), the backward
    /// pass, the guarded step, the weight constraints, telemetry and, on a snapshot, a checkpoint.
    /// A batch the guard asked to skip is counted and not trained on.
    pub fn step(&mut self, net: Net) -> Result<(Net, Flow), LabError> {
        let index = self.progress.next_batch;
        self.progress.next_batch += 1;
        if self.optim.skip_batch() {
            return Ok((net, Flow::Continue));
        }
        let (config, plan) = (self.config, self.plan);
        let mut batch = self.data.train_batch(index, config.batch, config.seed);
        faults::corrupt_batch(self.faults, index, &mut batch);
        let (out, attention) = net.forward_observed(&batch, &self.device, plan.precision);
        let log_z = attention.is_some().then(|| log_partition(out.clone()));
        let mut loss = loss_of(out, &batch, &self.device);
        if plan.z_loss > 0.0
            && let Some(log_z) = &log_z
        {
            loss = loss + z_loss(log_z.clone(), plan.z_loss);
        }
        if plan.l2 > 0.0
            && let Some(penalty) = l2_penalty(&net, plan.l2)
        {
            loss = loss + penalty;
        }
        let loss = faults::corrupt_loss(self.faults, index, loss);
        let (value, logits) = read_loss(&loss, attention, log_z);
        // With a loss scaler the backward pass sees `scale · loss`; the guard divides it out.
        let loss = self.optim.scale_loss(loss);
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        faults::corrupt_gradients(self.faults, index, &net, &mut grads)?;

        let lr = plan.lr_at(self.progress.lr, self.optim.guard().counters().step);
        self.progress
            .losses
            .push(value.is_finite().then_some(value));
        let step = match self.optim.step(lr, net, grads, Some(loss)) {
            Ok(step) => step,
            Err(stopped) => {
                self.progress.stopped = Some(stopped.error.to_string());
                return Ok((stopped.module, Flow::Over));
            }
        };
        let report = step.report;
        let mut net = step.module;
        if report.decision == Decision::Apply {
            let decay = (plan.weight_decay > 0.0)
                .then_some(1.0 - report.effective_lr(lr) * plan.weight_decay);
            net = constrain(net, decay, plan.weight_max_norm);
            // The snapshot must hold the constrained weights the run goes on from.
            if report.take_snapshot && (decay.is_some() || plan.weight_max_norm.is_some()) {
                self.optim.set_snapshot(report.step, net.clone());
            }
        }
        let mut record = MetricsRecord::from_report(&report, lr);
        if let Some(logits) = &logits {
            record = record.with_logits(&logits.attention, logits.log_z_mean, logits.log_z_max);
            let peak = record.attention_logit_peak();
            self.progress.logits.push(LogitPoint {
                attention: peak,
                log_z: record.log_z_mean,
            });
        }
        self.sinks.write(&record)?;
        if report.take_snapshot && self.out.is_some() {
            self.sinks.flush()?;
            self.checkpoint(&net, true)?;
        }
        // Only the measuring guard of an unremedied or clip-only run lets NaN reach the weights.
        let unguarded = plan.guard.non_finite == NonFinitePolicy::Apply;
        let flow = if unguarded && self.progress.last_losses_dead(DEAD_AFTER) {
            Flow::Over
        } else {
            Flow::Continue
        };
        Ok((net, flow))
    }

    /// Writes a checkpoint of the run as it stands (`is_snapshot`: the weights are the guard's
    /// rollback snapshot). Without a run directory, nothing.
    fn checkpoint(&self, net: &Net, is_snapshot: bool) -> Result<(), LabError> {
        let Some(dir) = self.out else {
            return Ok(());
        };
        let p = &self.progress;
        let header = CheckpointHeader {
            config: self.config.clone(),
            next_batch: p.next_batch,
            is_snapshot,
            guard: self.optim.guard().state(),
            losses: p.losses.clone(),
            lr: p.lr,
            largest_stable_lr: p.largest_stable_lr,
            wall_time_s: p.wall_before + self.started.elapsed().as_secs_f64(),
            stopped: p.stopped.clone(),
            initial_loss: p.initial_eval,
            time_gradients: p.time_gradients.clone(),
            logits: p.logits.clone(),
        };
        checkpoint::save(dir, &Checkpoint::capture(header, net, &self.optim)?)
    }

    /// Records the gradients through time of `net` on the held-out batch at `step` (recurrent
    /// tasks only).
    fn measure_through_time(&mut self, net: &Net, step: u64) {
        let precision = self.plan.precision;
        if let Some(norms) = hidden_gradient_norms(net, &self.test, &self.device, precision) {
            self.progress
                .time_gradients
                .push(TimeGradients { step, norms });
        }
    }

    /// Ends the run: flushes telemetry, evaluates on the held-out batch, records the gradients
    /// through time after the last step, writes the final checkpoint and `summary.json`, and
    /// returns the summary.
    pub fn finish(mut self, net: Net) -> Result<RunSummary, LabError> {
        self.sinks.flush()?;
        let last = self.progress.next_batch;
        if self
            .progress
            .time_gradients
            .last()
            .is_none_or(|t| t.step < last)
        {
            self.measure_through_time(&net, last);
        }
        let eval = evaluate(&net, &self.test, &self.device, self.plan.precision);
        let wall = self.started.elapsed().as_secs_f64();
        let mut summary = self
            .progress
            .summarize(self.config, self.optim.guard(), eval, wall);
        summary.trivial_loss = Some(self.data.trivial_loss(&self.test));
        summary.rate_choice = Some(self.plan.rate_choice(self.progress.lr));
        if let Some(dir) = self.out {
            self.checkpoint(&net, false)?;
            let path = dir.join(SUMMARY_FILE);
            let text = serde_json::to_vec_pretty(&summary).expect("summaries serialize");
            write_atomic(&path, &text).map_err(|e| io_err(&path, e))?;
        }
        Ok(summary)
    }
}
