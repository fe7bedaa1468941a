//! One training run: build the model and the guard from the plan, train, log every step,
//! checkpoint, resume, and summarize what happened.

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Device;
use gradguard::Decision;
use gradguard_burn::GuardedOptimizer;
use gradguard_report::{
    JsonlSink, METRICS_FILE, MetricsRecord, RunSummary, SUMMARY_FILE, Sink, Sinks, TensorBoardSink,
    write_atomic,
};

use crate::checkpoint::{self, Checkpoint, CheckpointHeader};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::lr_find::range_test;
use crate::models::Net;
use crate::objective::{constrain, data_loss, evaluate, l2_penalty};
use crate::plan::{Plan, build_net};
use crate::run_dir::{TENSORBOARD_DIR, io_err, prepare_dir, truncate_metrics};
use crate::tasks::TaskData;

/// Non-finite losses in a row after which an unguarded run is over (its weights are NaN).
const DEAD_AFTER: usize = 5;
/// Steps averaged for the final training loss and for reaching the target.
const WINDOW: usize = 10;

/// How a run is carried out (not what it computes).
#[derive(Default)]
pub struct TrainOptions<'a> {
    /// The run directory; `None` trains in memory without files.
    pub out: Option<PathBuf>,
    /// Stop after this many batches in this process, as if killed (for tests of resuming).
    pub interrupt_after: Option<u64>,
    /// Called after each batch with the batch count so far.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Faults to inject (tests of what the guard promises).
    pub faults: Vec<crate::faults::Fault>,
}

impl std::fmt::Debug for TrainOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("out", &self.out)
            .field("interrupt_after", &self.interrupt_after)
            .field("progress", &self.progress.is_some())
            .field("faults", &self.faults)
            .finish()
    }
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// The run is complete (now, or already before this call).
    Finished(Box<RunSummary>),
    /// `interrupt_after` was reached; the same call resumes from the last checkpoint.
    Interrupted {
        /// The batch the next call would start from without a checkpoint in between.
        next_batch: u64,
    },
}

fn fresh_optimizer(plan: &Plan) -> ModuleOptimizer {
    if plan.adam {
        AdamConfig::new().init()
    } else {
        SgdConfig::new().init()
    }
}

/// Checks `config` completely — ranges, and remedies against the task — without training.
pub fn check(config: &RunConfig) -> Result<(), LabError> {
    let data = TaskData::new(config.task, config.seq_len, config.seed)?;
    Plan::new(config, &data).map(|_| ())
}

/// Everything a run accumulates besides the tensors.
struct Progress {
    next_batch: u64,
    losses: Vec<Option<f64>>,
    lr: f64,
    largest_stable_lr: Option<f64>,
    wall_before: f64,
    stopped: Option<String>,
    initial_eval: Option<f64>,
}

/// Trains one run. With `options.out`, writes the run directory (`config.json`, `metrics.jsonl`,
/// `tensorboard/`, `checkpoint.ggck`, `summary.json`) and resumes from its last checkpoint.
pub fn train(config: &RunConfig, options: &TrainOptions) -> Result<TrainOutcome, LabError> {
    config.validate()?;
    let data = TaskData::new(config.task, config.seq_len, config.seed)?;
    let plan = Plan::new(config, &data)?;
    if let Some(dir) = &options.out
        && let Some(done) = prepare_dir(dir, config)?
    {
        return Ok(TrainOutcome::Finished(Box::new(done)));
    }
    let device = Device::flex().autodiff();
    let started = Instant::now();

    let mut net = build_net(&plan, &data, config.seed, &device)?;
    let mut optim = GuardedOptimizer::new(fresh_optimizer(&plan), plan.build_guard()?);
    let mut progress = Progress {
        next_batch: 0,
        losses: Vec::new(),
        lr: plan.lr,
        largest_stable_lr: None,
        wall_before: 0.0,
        stopped: None,
        initial_eval: None,
    };

    let resumed = match &options.out {
        Some(dir) => checkpoint::load_latest(dir),
        None => (None, Vec::new()),
    };
    for warning in &resumed.1 {
        tracing::warn!("{warning}; using the previous checkpoint");
    }
    if let Some((ckpt, path)) = resumed.0 {
        let h = &ckpt.header;
        if &h.config != config {
            return Err(LabError::Checkpoint {
                path: path.display().to_string(),
                reason: "written by a run with another configuration".into(),
            });
        }
        net = ckpt.load_model(net, &path)?;
        let loaded = ckpt.load_optimizer(optim.optimizer().clone(), &path)?;
        optim.set_optimizer(loaded);
        optim.guard_mut().restore(&h.guard)?;
        if h.is_snapshot
            && let Some(step) = h.guard.counters.snapshot_step
        {
            optim.set_snapshot(step, net.clone());
        }
        progress = Progress {
            next_batch: h.next_batch,
            losses: h.losses.clone(),
            lr: h.lr,
            largest_stable_lr: h.largest_stable_lr,
            wall_before: h.wall_time_s,
            stopped: h.stopped.clone(),
            initial_eval: h.initial_loss,
        };
    } else if plan.lr_find {
        let probe = build_net(&plan, &data, config.seed, &device)?;
        let range = range_test(
            probe,
            fresh_optimizer(&plan),
            &data,
            config.batch,
            config.seed,
            &device,
            plan.precision,
        );
        progress.largest_stable_lr = Some(range.largest_stable);
        progress.lr = plan.lr.min(range.largest_stable / 10.0);
        net = build_net(&plan, &data, config.seed, &device)?;
    }

    let mut sinks = Sinks::new();
    if let Some(dir) = &options.out {
        let metrics = dir.join(METRICS_FILE);
        truncate_metrics(&metrics, progress.losses.len() as u64)?;
        sinks = sinks.with(JsonlSink::append(&metrics)?);
        let tb = dir.join(TENSORBOARD_DIR);
        std::fs::create_dir_all(&tb).map_err(|e| io_err(&tb, e))?;
        sinks = sinks.with(TensorBoardSink::create(&tb)?);
    }

    let test = data.test_batch(config.seed);
    if progress.next_batch == 0 {
        progress.initial_eval = evaluate(&net, &test, &device, plan.precision).loss;
    }
    // Only the measuring guard of an unremedied or clip-only run lets NaN reach the weights.
    let guarded = plan.guard.non_finite != gradguard::NonFinitePolicy::Apply;
    let mut in_this_process = 0u64;
    let snapshot_header =
        |progress: &Progress, optim: &GuardedOptimizer<Net>, is_snapshot| CheckpointHeader {
            config: config.clone(),
            next_batch: progress.next_batch,
            is_snapshot,
            guard: optim.guard().state(),
            losses: progress.losses.clone(),
            lr: progress.lr,
            largest_stable_lr: progress.largest_stable_lr,
            wall_time_s: progress.wall_before + started.elapsed().as_secs_f64(),
            stopped: progress.stopped.clone(),
            initial_loss: progress.initial_eval,
        };

    while progress.next_batch < config.steps && progress.stopped.is_none() {
        if options.interrupt_after == Some(in_this_process) {
            return Ok(TrainOutcome::Interrupted {
                next_batch: progress.next_batch,
            });
        }
        let index = progress.next_batch;
        progress.next_batch += 1;
        in_this_process += 1;
        if let Some(report) = options.progress {
            report(progress.next_batch);
        }
        if optim.skip_batch() {
            continue;
        }
        let mut batch = data.train_batch(index, config.batch, config.seed);
        if options.faults.iter().any(|f| f.nan_batch_at(index)) {
            batch.inputs[0] = f32::NAN;
        }
        let mut loss = data_loss(&net, &batch, &device, plan.precision);
        if plan.l2 > 0.0
            && let Some(penalty) = l2_penalty(&net, plan.l2)
        {
            loss = loss + penalty;
        }
        for fault in &options.faults {
            if let Some(factor) = fault.spike_at(index) {
                loss = loss * factor;
            }
            if fault.nan_loss_at(index) {
                loss = loss * f32::NAN;
            }
        }
        let value = f64::from(loss.clone().into_scalar::<f32>());
        // With a loss scaler the backward pass sees `scale · loss`; the guard divides it out.
        let loss = optim.scale_loss(loss);
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        for fault in &options.faults {
            if let Some((tensor, kind)) = fault.gradient_at(index)
                && !gradguard_burn::faults::inject(&net, &mut grads, tensor, kind)
            {
                return Err(LabError::Config(format!(
                    "fault injection: no parameter named '{tensor}'"
                )));
            }
        }
        let step_index = optim.guard().counters().step;
        let lr = plan.lr_at(progress.lr, step_index);
        progress.losses.push(value.is_finite().then_some(value));
        let step = match optim.step(lr, net, grads, Some(loss)) {
            Ok(step) => step,
            Err(stopped) => {
                progress.stopped = Some(stopped.error.to_string());
                net = stopped.module;
                break;
            }
        };
        net = step.module;
        let report = step.report;
        if report.decision == Decision::Apply {
            let effective = report.effective_lr(lr);
            let decay = (plan.weight_decay > 0.0).then_some(1.0 - effective * plan.weight_decay);
            net = constrain(net, decay, plan.weight_max_norm);
            if report.take_snapshot && (decay.is_some() || plan.weight_max_norm.is_some()) {
                optim.set_snapshot(report.step, net.clone());
            }
        }
        sinks.write(&MetricsRecord::from_report(&report, lr))?;
        if report.take_snapshot
            && let Some(dir) = &options.out
        {
            sinks.flush()?;
            let header = snapshot_header(&progress, &optim, true);
            checkpoint::save(dir, &Checkpoint::capture(header, &net, optim.optimizer())?)?;
        }
        let dead = !guarded
            && progress.losses.len() >= DEAD_AFTER
            && progress.losses[progress.losses.len() - DEAD_AFTER..]
                .iter()
                .all(Option::is_none);
        if dead {
            break;
        }
    }
    sinks.flush()?;

    let eval = evaluate(&net, &test, &device, plan.precision);
    let mut summary = summarize(config, &progress, optim.guard(), eval, &started);
    summary.trivial_loss = Some(test.trivial_loss(data.outputs()));
    if let Some(dir) = &options.out {
        let header = snapshot_header(&progress, &optim, false);
        checkpoint::save(dir, &Checkpoint::capture(header, &net, optim.optimizer())?)?;
        let path = dir.join(SUMMARY_FILE);
        let text = serde_json::to_vec_pretty(&summary).expect("summaries serialize");
        write_atomic(&path, &text).map_err(|e| io_err(&path, e))?;
    }
    Ok(TrainOutcome::Finished(Box::new(summary)))
}

fn mean(window: &[Option<f64>]) -> Option<f64> {
    let sum = window.iter().copied().sum::<Option<f64>>()?;
    let m = sum / window.len().max(1) as f64;
    m.is_finite().then_some(m)
}

fn summarize(
    config: &RunConfig,
    progress: &Progress,
    guard: &gradguard::Guard,
    eval: crate::objective::Evaluation,
    started: &Instant,
) -> RunSummary {
    let losses = &progress.losses;
    let initial = losses.first().copied().flatten();
    let final_train = mean(&losses[losses.len().saturating_sub(WINDOW)..]);
    // Diverged: the held-out loss ends non-finite or not below where it started.
    let diverged = match (progress.initial_eval, eval.loss) {
        (Some(start), Some(end)) => !(end < start),
        (None, Some(_)) => false,
        (_, None) => true,
    };
    let diverged_at = diverged
        .then(|| {
            losses.iter().position(|l| match (l, initial) {
                (None, _) => true,
                (Some(l), Some(first)) => *l > 10.0 * first,
                _ => false,
            })
        })
        .flatten()
        .map(|i| i as u64);
    let steps_to_target = (WINDOW..=losses.len())
        .find(|&end| mean(&losses[end - WINDOW..end]).is_some_and(|m| m <= config.target_loss))
        .map(|end| end as u64);
    let counters = guard.counters();
    RunSummary {
        task: config.task.name().into(),
        remedy: config.remedy_name(),
        seed: config.seed,
        steps: progress.next_batch,
        final_loss: eval.loss,
        final_train_loss: final_train,
        initial_loss: progress.initial_eval,
        trivial_loss: None,
        accuracy: eval.accuracy,
        diverged,
        diverged_at,
        stopped: progress.stopped.clone(),
        skipped_steps: counters.skipped,
        rollbacks: counters.rolled_back,
        non_finite_steps: counters.non_finite_steps,
        target_loss: config.target_loss,
        steps_to_target,
        lr: progress.lr,
        largest_stable_lr: progress.largest_stable_lr,
        wall_time_s: progress.wall_before + started.elapsed().as_secs_f64(),
        config: serde_json::to_value(config).expect("configs serialize"),
    }
}
